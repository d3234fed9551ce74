//! EC2 instance metadata service (IMDSv2) client: session token, then GETs with the token.
//! Shared by enrichment (instance, interfaces) and credentials (instance role).

use std::time::Duration;

/// Default IMDS endpoint; `AWS_EC2_METADATA_SERVICE_ENDPOINT` overrides it as in the AWS SDKs.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_TTL_SECONDS: u32 = 21600;
const TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS at {endpoint}: {source}")]
    Http { endpoint: String, source: reqwest::Error },
    #[error("IMDS at {endpoint} answered HTTP {status} for {path}")]
    Status { endpoint: String, path: String, status: u16 },
}

pub struct Client {
    endpoint: String,
    http: reqwest::Client,
}

impl Client {
    /// None when `AWS_EC2_METADATA_DISABLED=true`.
    pub fn from_env() -> Option<Client> {
        if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return None;
        }
        let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
        Some(Client::new(&endpoint))
    }

    pub fn new(endpoint: &str) -> Client {
        let http = reqwest::Client::builder().timeout(TIMEOUT).no_proxy().build().expect("a plain HTTP client builds");
        Client { endpoint: endpoint.trim_end_matches('/').to_string(), http }
    }

    /// GET `path` (e.g. "/latest/meta-data/instance-id"); `Ok(None)` when IMDS answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let http = |source| ImdsError::Http { endpoint: self.endpoint.clone(), source };
        let token = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header("x-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS.to_string())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(http)?
            .text()
            .await
            .map_err(http)?;
        let resp = self
            .http
            .get(format!("{}{path}", self.endpoint))
            .header("x-aws-ec2-metadata-token", token)
            .send()
            .await
            .map_err(http)?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp.text().await.map_err(http)?)),
            404 => Ok(None),
            status => Err(ImdsError::Status { endpoint: self.endpoint.clone(), path: path.into(), status }),
        }
    }
}
