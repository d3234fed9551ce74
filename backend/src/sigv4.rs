//! AWS Signature Version 4 verification (`--auth sigv4`), as the SDKs and CLI sign requests to
//! a REST-JSON service: `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=...,
//! Signature=...` plus `X-Amz-Date`. Access keys come from an AWS-style credentials file.

use std::collections::HashMap;
use std::path::Path;

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::errors::ApiError;

/// Requests whose `X-Amz-Date` is further than this from the server clock are refused.
pub const MAX_SKEW_SECONDS: i64 = 15 * 60;
pub const SERVICE: &str = "networkflowmonitor";

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("credentials file line {0}: {1}")]
    Syntax(usize, String),
    #[error("credentials file section [{0}] needs both aws_access_key_id and aws_secret_access_key")]
    Incomplete(String),
    #[error("the credentials file holds no access keys")]
    Empty,
}

/// Access key id -> secret access key.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    keys: HashMap<String, String>,
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Read(path.display().to_string(), e))?;
        Credentials::parse(&text)
    }

    /// The INI format of `~/.aws/credentials`: `[profile]` sections holding
    /// `aws_access_key_id` and `aws_secret_access_key`.
    pub fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        let mut keys = HashMap::new();
        let mut section: Option<(String, Option<String>, Option<String>)> = None;
        let mut finish = |s: Option<(String, Option<String>, Option<String>)>| -> Result<(), CredentialsError> {
            if let Some((name, id, secret)) = s {
                match (id, secret) {
                    (Some(id), Some(secret)) => {
                        keys.insert(id, secret);
                    }
                    _ => return Err(CredentialsError::Incomplete(name)),
                }
            }
            Ok(())
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                finish(section.take())?;
                section = Some((name.trim().to_string(), None, None));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(CredentialsError::Syntax(n + 1, format!("expected key = value, got '{line}'")));
            };
            let Some(s) = section.as_mut() else {
                return Err(CredentialsError::Syntax(n + 1, "key outside of a [section]".into()));
            };
            match k.trim() {
                "aws_access_key_id" => s.1 = Some(v.trim().to_string()),
                "aws_secret_access_key" => s.2 = Some(v.trim().to_string()),
                _ => {}
            }
        }
        finish(section.take())?;
        if keys.is_empty() {
            return Err(CredentialsError::Empty);
        }
        Ok(Credentials { keys })
    }

    pub fn secret(&self, access_key_id: &str) -> Option<&str> {
        self.keys.get(access_key_id).map(String::as_str)
    }
}

/// What a signature covers.
pub struct RequestParts<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

fn sig_error(code: &'static str, status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::Signature { code, status, message: message.into() }
}

fn incomplete(msg: impl Into<String>) -> ApiError {
    sig_error("IncompleteSignature", StatusCode::FORBIDDEN, msg)
}

use agent_common::sigv4::{self as core, Canonical};
pub use agent_common::sigv4::{canonical_query, canonical_uri, sha256_hex};

/// The parsed `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(h: &str) -> Result<Authorization<'_>, ApiError> {
    let rest = h
        .strip_prefix("AWS4-HMAC-SHA256")
        .ok_or_else(|| incomplete("Authorization must use the AWS4-HMAC-SHA256 algorithm"))?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let cred = cred.ok_or_else(|| incomplete("Authorization lacks Credential="))?;
    let signed = signed.ok_or_else(|| incomplete("Authorization lacks SignedHeaders="))?;
    let signature = sig.ok_or_else(|| incomplete("Authorization lacks Signature="))?;
    let c: Vec<&str> = cred.split('/').collect();
    if c.len() != 5 || c[4] != "aws4_request" {
        return Err(incomplete(format!("Credential must be KEY/DATE/REGION/SERVICE/aws4_request, got '{cred}'")));
    }
    Ok(Authorization {
        access_key_id: c[0],
        date: c[1],
        region: c[2],
        service: c[3],
        signed_headers: signed.split(';').collect(),
        signature,
    })
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn string_to_sign(req: &RequestParts<'_>, signed_headers: &[&str], amz_date: &str, scope: &str) -> String {
    let headers: Vec<(String, String)> = signed_headers
        .iter()
        .map(|name| {
            let values = req.headers.get_all(*name).iter().map(|v| v.as_bytes());
            (name.to_ascii_lowercase(), core::canonical_header_value(values))
        })
        .collect();
    let payload_hash = match header_str(req.headers, "x-amz-content-sha256") {
        Some(h) => h.to_string(),
        None => sha256_hex(req.body),
    };
    let canonical = Canonical {
        method: req.method,
        raw_path: req.raw_path,
        raw_query: req.raw_query,
        headers: &headers,
        payload_hash: &payload_hash,
    };
    core::string_to_sign(amz_date, scope, &canonical.request())
}

fn signature(secret: &str, date: &str, region: &str, service: &str, string_to_sign: &str) -> String {
    core::signature(secret, date, region, service, string_to_sign)
}

/// Computes the `Authorization` header value for a request (the headers must already hold
/// `host` and `x-amz-date`). Used by tests and the benchmark's client.
pub fn authorization(
    req: &RequestParts<'_>,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    signed_headers: &[&str],
) -> String {
    let amz_date = header_str(req.headers, "x-amz-date").unwrap_or_default();
    let date = amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let sts = string_to_sign(req, signed_headers, amz_date, &scope);
    let sig = signature(secret, date, region, service, &sts);
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={sig}",
        signed_headers.join(";")
    )
}

/// Verifies a request's signature; returns the access key id it was signed with.
pub fn verify(creds: &Credentials, req: &RequestParts<'_>, now: DateTime<Utc>) -> Result<String, ApiError> {
    let Some(auth) = header_str(req.headers, "authorization") else {
        return Err(ApiError::AccessDenied(
            "Missing Authentication Token: requests must be signed with AWS Signature Version 4".into(),
        ));
    };
    let a = parse_authorization(auth)?;
    if a.service != SERVICE {
        return Err(incomplete(format!("Credential should be scoped to service '{SERVICE}', not '{}'", a.service)));
    }
    if !a.signed_headers.contains(&"host") {
        return Err(incomplete("SignedHeaders must include host"));
    }
    let amz_date =
        header_str(req.headers, "x-amz-date").ok_or_else(|| incomplete("the request lacks an X-Amz-Date header"))?;
    let t = NaiveDateTime::parse_from_str(amz_date, "%Y%m%dT%H%M%SZ")
        .map_err(|_| incomplete(format!("X-Amz-Date must look like 20250101T000000Z, got '{amz_date}'")))?
        .and_utc();
    if !amz_date.starts_with(a.date) || a.date.len() != 8 {
        return Err(incomplete(format!("Credential date {} does not match X-Amz-Date {amz_date}", a.date)));
    }
    let skew = (now - t).num_seconds();
    if skew.abs() > MAX_SKEW_SECONDS {
        return Err(sig_error(
            "RequestExpired",
            StatusCode::BAD_REQUEST,
            format!(
                "Signature expired: X-Amz-Date {amz_date} is more than 15 minutes from the server time {}",
                now.format("%Y%m%dT%H%M%SZ")
            ),
        ));
    }
    let secret = creds.secret(a.access_key_id).ok_or_else(|| {
        sig_error(
            "UnrecognizedClientException",
            StatusCode::FORBIDDEN,
            format!(
                "The security token included in the request is invalid: unknown access key id '{}'",
                a.access_key_id
            ),
        )
    })?;
    if let Some(claimed) = header_str(req.headers, "x-amz-content-sha256")
        && claimed != "UNSIGNED-PAYLOAD"
        && !claimed.eq_ignore_ascii_case(&sha256_hex(req.body))
    {
        return Err(ApiError::AccessDenied(
            "The provided x-amz-content-sha256 header does not match the SHA-256 of the request body".into(),
        ));
    }
    let scope = format!("{}/{}/{}/aws4_request", a.date, a.region, a.service);
    let sts = string_to_sign(req, &a.signed_headers, amz_date, &scope);
    let expected = signature(secret, a.date, a.region, a.service, &sts);
    if !constant_time_eq(expected.as_bytes(), a.signature.as_bytes()) {
        return Err(ApiError::AccessDenied(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.".into(),
        ));
    }
    Ok(a.access_key_id.to_string())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    /// `get-vanilla` from the AWS SigV4 test suite.
    #[test]
    fn matches_the_aws_test_suite_vector() {
        let h = headers(&[("host", "example.amazonaws.com"), ("x-amz-date", "20150830T123600Z")]);
        let req = RequestParts { method: "GET", raw_path: "/", raw_query: None, headers: &h, body: b"" };
        let auth = authorization(
            &req,
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "service",
            &["host", "x-amz-date"],
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn verifies_good_signatures_and_names_bad_ones() {
        let creds = Credentials::parse("[default]\naws_access_key_id = AK1\naws_secret_access_key = s3cret\n").unwrap();
        let now: DateTime<Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut h = headers(&[("host", "127.0.0.1:8080"), ("x-amz-date", "20261122T100000Z")]);
        let body = br#"{"targets":[]}"#;
        let path = "/tags/arn%3Aaws%3Anetworkflowmonitor%3Aus-east-1%3A123456789012%3Amonitor%2Fm";
        let req = RequestParts { method: "POST", raw_path: path, raw_query: Some("b=2&a=1"), headers: &h, body };
        let auth = authorization(&req, "AK1", "s3cret", "us-east-1", SERVICE, &["host", "x-amz-date"]);
        h.insert("authorization", auth.parse().unwrap());
        let req = RequestParts { method: "POST", raw_path: path, raw_query: Some("b=2&a=1"), headers: &h, body };
        assert_eq!(verify(&creds, &req, now).unwrap(), "AK1");
        // Tampered body.
        let bad = RequestParts { body: b"{}", ..req };
        assert_eq!(verify(&creds, &bad, now).unwrap_err().error_type(), "AccessDeniedException");
        // Clock far off.
        let req = RequestParts { method: "POST", raw_path: path, raw_query: Some("b=2&a=1"), headers: &h, body };
        let later = now + chrono::Duration::minutes(16);
        assert_eq!(verify(&creds, &req, later).unwrap_err().error_type(), "RequestExpired");
        // A payload hash header that does not match the body.
        let mut h3 = h.clone();
        h3.insert("x-amz-content-sha256", sha256_hex(b"other").parse().unwrap());
        let req = RequestParts { method: "POST", raw_path: path, raw_query: Some("b=2&a=1"), headers: &h3, body };
        assert_eq!(verify(&creds, &req, now).unwrap_err().error_type(), "AccessDeniedException");
        let req = RequestParts { method: "POST", raw_path: path, raw_query: Some("b=2&a=1"), headers: &h, body };
        // Unknown key.
        let other = Credentials::parse("[x]\naws_access_key_id = AK2\naws_secret_access_key = s\n").unwrap();
        assert_eq!(verify(&other, &req, now).unwrap_err().error_type(), "UnrecognizedClientException");
        // No signature at all.
        let h2 = headers(&[("host", "h")]);
        let req = RequestParts { method: "GET", raw_path: "/", raw_query: None, headers: &h2, body: b"" };
        assert_eq!(verify(&creds, &req, now).unwrap_err().error_type(), "AccessDeniedException");
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/tags/arn%3Aaws"), "/tags/arn%253Aaws");
        assert_eq!(canonical_query(Some("tagKeys=b&tagKeys=a&maxResults=5")), "maxResults=5&tagKeys=a&tagKeys=b");
        assert_eq!(canonical_query(Some("k=a%20b")), "k=a%20b");
    }

    #[test]
    fn credentials_files_are_checked() {
        assert!(matches!(Credentials::parse(""), Err(CredentialsError::Empty)));
        assert!(matches!(Credentials::parse("[a]\naws_access_key_id=x\n"), Err(CredentialsError::Incomplete(_))));
        assert!(matches!(Credentials::parse("aws_access_key_id=x\n"), Err(CredentialsError::Syntax(1, _))));
    }
}
