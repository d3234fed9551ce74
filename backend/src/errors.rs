//! Errors in the shape the AWS SDKs parse for a REST-JSON service: the error type in the
//! `x-amzn-ErrorType` header and a JSON body `{"message": ...}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An error answered to an API caller. Each variant is one of the error shapes of the
/// Network Flow Monitor API reference (2023-04-19), or one of its common (signature) errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Throttling(String),
    #[error("{0}")]
    Internal(String),
    /// Common errors of SigV4 authentication (IncompleteSignature, UnrecognizedClientException,
    /// RequestExpired, ...).
    #[error("{message}")]
    Signature { code: &'static str, status: StatusCode, message: String },
}

impl ApiError {
    pub fn validation(msg: impl Into<String>) -> Self {
        ApiError::Validation(msg.into())
    }

    /// The error type as the SDKs name it.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "ValidationException",
            ApiError::AccessDenied(_) => "AccessDeniedException",
            ApiError::NotFound(_) => "ResourceNotFoundException",
            ApiError::Conflict(_) => "ConflictException",
            ApiError::QuotaExceeded(_) => "ServiceQuotaExceededException",
            ApiError::Throttling(_) => "ThrottlingException",
            ApiError::Internal(_) => "InternalServerException",
            ApiError::Signature { code, .. } => code,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::BAD_REQUEST,
            ApiError::AccessDenied(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::QuotaExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::Throttling(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Signature { status, .. } => *status,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!(error = %e, "storage error");
        ApiError::Internal(format!("storage error: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ty = self.error_type();
        let body = serde_json::json!({ "message": self.to_string() });
        let mut resp = (self.status(), axum::Json(body)).into_response();
        resp.headers_mut().insert("x-amzn-ErrorType", HeaderValue::from_static(ty));
        resp
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_types_and_statuses_match_the_reference() {
        let cases = [
            (ApiError::validation("x"), "ValidationException", 400),
            (ApiError::AccessDenied("x".into()), "AccessDeniedException", 403),
            (ApiError::NotFound("x".into()), "ResourceNotFoundException", 404),
            (ApiError::Conflict("x".into()), "ConflictException", 409),
            (ApiError::QuotaExceeded("x".into()), "ServiceQuotaExceededException", 402),
            (ApiError::Throttling("x".into()), "ThrottlingException", 429),
            (ApiError::Internal("x".into()), "InternalServerException", 500),
        ];
        for (e, ty, status) in cases {
            assert_eq!(e.error_type(), ty);
            assert_eq!(e.status().as_u16(), status);
            let resp = e.into_response();
            assert_eq!(resp.headers()["x-amzn-errortype"], ty);
        }
    }
}
