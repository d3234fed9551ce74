//! EC2 instance metadata service (IMDSv2) client: session token, then GETs with the token.
//! Shared by enrichment (instance, interfaces) and credentials (instance role).
//!
//! The token is cached and renewed a minute before its TTL runs out, and fetched again when IMDS
//! answers 401 (it expired early, or IMDS restarted). IMDSv1 (GET without a token) is used only
//! when enabled with `with_v1_fallback` and the token request is refused. Every request is
//! bounded by `TIMEOUT`, responses by `MAX_BODY`: off EC2 a call fails within a second.

mod token;

use std::time::Duration;

use token::TokenCache;

/// Default IMDS endpoint; `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides it as in the AWS SDKs.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_TTL_SECONDS: u32 = 21600;
/// Whole request (connect, headers, body).
const TIMEOUT: Duration = Duration::from_secs(1);
/// Metadata values are small; the identity document is under 1 KiB.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS at {endpoint}: {source}")]
    Http { endpoint: String, source: reqwest::Error },
    #[error("IMDS at {endpoint} answered HTTP {status} for {path}")]
    Status { endpoint: String, path: String, status: u16 },
    #[error("IMDS at {endpoint} sent more than {MAX_BODY} bytes for {path}")]
    TooLarge { endpoint: String, path: String },
    #[error("IMDS at {endpoint} sent a response for {path} that is not UTF-8")]
    NotUtf8 { endpoint: String, path: String },
}

pub struct Client {
    endpoint: String,
    http: reqwest::Client,
    token_ttl: u32,
    v1_fallback: bool,
    token: TokenCache,
}

/// `AWS_EC2_METADATA_DISABLED` as the AWS SDKs read it.
pub fn disabled_by_env() -> bool {
    std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The endpoint the SDKs would use: `AWS_EC2_METADATA_SERVICE_ENDPOINT` or the default.
pub fn endpoint_from_env() -> String {
    std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
}

impl Client {
    /// None when `AWS_EC2_METADATA_DISABLED=true`.
    pub fn from_env() -> Option<Client> {
        if disabled_by_env() {
            return None;
        }
        Some(Client::new(&endpoint_from_env()))
    }

    pub fn new(endpoint: &str) -> Client {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        Client {
            endpoint: endpoint.trim().trim_end_matches('/').to_string(),
            http,
            token_ttl: TOKEN_TTL_SECONDS,
            v1_fallback: false,
            token: TokenCache::default(),
        }
    }

    /// Fall back to IMDSv1 (no token) when the token request is refused with an HTTP error.
    pub fn with_v1_fallback(mut self, on: bool) -> Client {
        self.v1_fallback = on;
        self
    }

    /// Token lifetime asked for (seconds, 1..=21600).
    #[cfg(test)]
    pub fn with_token_ttl(mut self, seconds: u32) -> Client {
        self.token_ttl = seconds.clamp(1, TOKEN_TTL_SECONDS);
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn http_err(&self) -> impl Fn(reqwest::Error) -> ImdsError + '_ {
        |source| ImdsError::Http { endpoint: self.endpoint.clone(), source }
    }

    /// A valid token, from the cache or a new session; `None` when IMDSv1 fallback applies.
    async fn token(&self) -> Result<Option<String>, ImdsError> {
        if let Some(t) = self.token.get() {
            return Ok(Some(t));
        }
        let path = "/latest/api/token";
        let resp = self
            .http
            .put(format!("{}{path}", self.endpoint))
            .header("x-aws-ec2-metadata-token-ttl-seconds", self.token_ttl.to_string())
            .send()
            .await
            .map_err(self.http_err())?;
        let status = resp.status().as_u16();
        if status != 200 {
            if self.v1_fallback && (403..=405).contains(&status) {
                tracing::debug!(status, "IMDS refused a session token; falling back to IMDSv1");
                return Ok(None);
            }
            return Err(ImdsError::Status { endpoint: self.endpoint.clone(), path: path.into(), status });
        }
        let token = self.body(resp, path).await?;
        self.token.set(token.trim().to_string(), Duration::from_secs(self.token_ttl.into()));
        Ok(Some(token.trim().to_string()))
    }

    async fn body(&self, mut resp: reqwest::Response, path: &str) -> Result<String, ImdsError> {
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(self.http_err())? {
            if buf.len() + chunk.len() > MAX_BODY {
                return Err(ImdsError::TooLarge { endpoint: self.endpoint.clone(), path: path.into() });
            }
            buf.extend_from_slice(&chunk);
        }
        String::from_utf8(buf).map_err(|_| ImdsError::NotUtf8 { endpoint: self.endpoint.clone(), path: path.into() })
    }

    /// GET `path` (e.g. "/latest/meta-data/instance-id"); `Ok(None)` when IMDS answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let mut retried = false;
        loop {
            let token = self.token().await?;
            let mut req = self.http.get(format!("{}{path}", self.endpoint));
            if let Some(t) = &token {
                req = req.header("x-aws-ec2-metadata-token", t);
            }
            let resp = req.send().await.map_err(self.http_err())?;
            match resp.status().as_u16() {
                200 => return Ok(Some(self.body(resp, path).await?)),
                404 => return Ok(None),
                // The token expired or IMDS forgot it: one new session, then give up.
                401 if token.is_some() && !retried => {
                    tracing::debug!(path, "IMDS rejected the session token; fetching a new one");
                    self.token.clear();
                    retried = true;
                }
                status => {
                    if status == 401 {
                        self.token.clear();
                    }
                    return Err(ImdsError::Status { endpoint: self.endpoint.clone(), path: path.into(), status });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "../../tests/support/fake_imds.rs"]
pub mod fake;

#[cfg(test)]
mod tests;
