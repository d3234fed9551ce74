//! The Network Flow Monitor API (2023-04-19, REST-JSON): request extractors and helpers shared
//! by the handlers in the submodules.

pub mod health;
pub mod monitors;
pub mod queries;
pub mod scopes;
pub mod tags;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::errors::{ApiError, ApiResult};

/// A JSON request body; malformed bodies are ValidationExceptions. An empty body reads as `{}`.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::validation(format!("cannot read the request body: {}", e.body_text())))?;
        let slice: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        serde_json::from_slice(slice)
            .map(ApiJson)
            .map_err(|e| ApiError::validation(format!("invalid request body: {e}")))
    }
}

/// URI labels, percent-decoded.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::validation(format!("invalid URI: {}", e.body_text())))
    }
}

/// Query-string members, repeated keys kept (UntagResource sends `tagKeys` once per key).
pub struct QueryParams(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        Ok(QueryParams(form_urlencoded::parse(q.as_bytes()).into_owned().collect()))
    }
}

impl QueryParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.clone()).collect()
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        self.get(key).map(|v| crate::validate::parse_int(key, v)).transpose()
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Timestamps without a `timestampFormat` are epoch seconds in REST-JSON bodies.
pub fn epoch_seconds(ms: i64) -> serde_json::Value {
    serde_json::json!(ms as f64 / 1000.0)
}

/// Hash of the members of a create request, to tell a retry (same clientToken, same request)
/// from a conflicting reuse of the token.
pub fn request_hash(v: &serde_json::Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// Pagination tokens: opaque to callers, hex of the position.
pub fn encode_token(position: &str) -> String {
    hex::encode(position.as_bytes())
}

pub fn decode_token(token: Option<&str>) -> ApiResult<Option<String>> {
    token
        .map(|t| {
            hex::decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::validation(format!("nextToken '{t}' is not a token this service issued")))
        })
        .transpose()
}
