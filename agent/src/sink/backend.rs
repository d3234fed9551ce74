//! The `backend` destination: POST each report as JSON (gzip) to `--endpoint`, the flow-backend's
//! `/publish` or any compatible URL, SigV4-signed when AWS credentials are available.

use std::{io::Write, sync::Arc};

use agent_common::{report::Report, sigv4};
use chrono::Utc;

use super::{
    credentials::{Credentials, Provider},
    remote::{DeliveryError, DeliveryFuture, Destination, HttpOptions, http_client},
};

pub struct Backend {
    url: reqwest::Url,
    /// The Host header as sent (and signed).
    host: String,
    http: reqwest::Client,
    credentials: Arc<Provider>,
    service: String,
    region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("invalid endpoint {0:?}: {1}")]
    Url(String, String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// Everything a signed request needs besides the body.
pub struct SignedHeaders {
    pub headers: Vec<(String, String)>,
}

/// The headers to send for `body` (gzip JSON), with `authorization` when `creds` are given.
pub fn request_headers(
    url: &reqwest::Url,
    host: &str,
    body: &[u8],
    creds: Option<&Credentials>,
    service: &str,
    region: &str,
    now: chrono::DateTime<Utc>,
) -> SignedHeaders {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let mut headers = vec![
        ("content-encoding".to_string(), "gzip".to_string()),
        ("content-type".to_string(), "application/json".to_string()),
        ("host".to_string(), host.to_string()),
    ];
    let Some(c) = creds else {
        return SignedHeaders { headers };
    };
    headers.push(("x-amz-content-sha256".into(), sigv4::sha256_hex(body)));
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(t) = &c.session_token {
        headers.push(("x-amz-security-token".into(), t.clone()));
    }
    let payload_hash = sigv4::sha256_hex(body);
    let canonical = sigv4::Canonical {
        method: "POST",
        raw_path: url.path(),
        raw_query: url.query(),
        headers: &headers,
        payload_hash: &payload_hash,
    };
    let auth = sigv4::authorization(&canonical, &amz_date, &c.access_key_id, &c.secret_access_key, region, service);
    headers.push(("authorization".into(), auth));
    SignedHeaders { headers }
}

fn host_header(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    Some(match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

impl Backend {
    pub fn new(
        endpoint: &str,
        http: &HttpOptions,
        credentials: Provider,
        service: &str,
        region: &str,
    ) -> Result<Backend, BackendError> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| BackendError::Url(endpoint.into(), e.to_string()))?;
        let host = host_header(&url).ok_or_else(|| BackendError::Url(endpoint.into(), "no host".into()))?;
        Ok(Backend {
            url,
            host,
            http: http_client(http)?,
            credentials: Arc::new(credentials),
            service: service.into(),
            region: region.into(),
        })
    }

    async fn post(&self, report: &Report) -> Result<(), DeliveryError> {
        let json = serde_json::to_vec(report)
            .map_err(|e| DeliveryError::Reject { reason: format!("cannot serialize the report: {e}") })?;
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(json.len() / 4), flate2::Compression::default());
        let body = gz
            .write_all(&json)
            .and_then(|()| gz.finish())
            .map_err(|e| DeliveryError::Retry { reason: format!("gzip: {e}"), retry_after: None })?;
        let creds = self.credentials.get().await.map_err(|e| DeliveryError::Retry {
            reason: format!("no credentials to sign with: {e}"),
            retry_after: None,
        })?;
        let signed =
            request_headers(&self.url, &self.host, &body, creds.as_ref(), &self.service, &self.region, Utc::now());
        let mut req = self.http.post(self.url.clone());
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        let resp = req.body(body).send().await.map_err(|e| DeliveryError::Retry {
            reason: format!("POST {}: {}", self.url, error_chain(&e)),
            retry_after: None,
        })?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = read_excerpt(resp).await;
        match status {
            // Credentials or clocks get fixed; keep the report (within the spool bound).
            401 | 403 => Err(DeliveryError::Retry {
                reason: format!(
                    "HTTP {status} (check the credentials, signing service/region and clock; signing with {}): {body}",
                    self.credentials.origin
                ),
                retry_after: None,
            }),
            _ => Err(DeliveryError::from_status(status, retry_after.as_deref(), &body)),
        }
    }
}

/// At most 4 KiB of a response body, for the log.
async fn read_excerpt(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while out.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(c)) => out.extend_from_slice(&c[..c.len().min(4096 - out.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

impl Destination for Backend {
    fn name(&self) -> &'static str {
        "backend"
    }

    fn deliver<'a>(&'a self, report: &'a Report) -> DeliveryFuture<'a> {
        Box::pin(self.post(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_headers_follow_sigv4() {
        let url = reqwest::Url::parse("http://127.0.0.1:8080/publish").unwrap();
        let now: chrono::DateTime<Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let c = Credentials {
            access_key_id: "AK".into(),
            secret_access_key: "s".into(),
            session_token: Some("tok".into()),
            expiration: None,
        };
        let h = request_headers(&url, "127.0.0.1:8080", b"body", Some(&c), "networkflowmonitor", "eu-west-1", now);
        let get = |k: &str| h.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get("x-amz-date"), "20261122T100000Z");
        assert_eq!(get("x-amz-security-token"), "tok");
        let auth = get("authorization");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AK/20261122/eu-west-1/networkflowmonitor/aws4_request, \
                 SignedHeaders=content-encoding;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
        let unsigned = request_headers(&url, "h", b"body", None, "s", "r", now);
        assert!(unsigned.headers.iter().all(|(n, _)| n != "authorization"));
        assert_eq!(host_header(&reqwest::Url::parse("https://x.example/publish").unwrap()).unwrap(), "x.example");
        assert_eq!(host_header(&url).unwrap(), "127.0.0.1:8080");
    }
}
