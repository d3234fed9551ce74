//! The AWS Signature Version 4 core shared by the backend (verification) and the agent (signing):
//! canonical request, string to sign, key derivation and signature. Transport-neutral: headers
//! are given as (name, value) pairs.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

const UNRESERVED: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
const UNRESERVED_AND_SLASH: &percent_encoding::AsciiSet = &UNRESERVED.remove(b'/');

fn encode(s: &str, set: &'static percent_encoding::AsciiSet) -> String {
    percent_encoding::utf8_percent_encode(s, set).to_string()
}

/// The canonical URI of a non-S3 service: the path as sent, URI-encoded once more.
pub fn canonical_uri(raw_path: &str) -> String {
    if raw_path.is_empty() { "/".into() } else { encode(raw_path, UNRESERVED_AND_SLASH) }
}

/// The canonical query string: pairs decoded, re-encoded strictly and sorted.
pub fn canonical_query(raw_query: Option<&str>) -> String {
    let Some(q) = raw_query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', "%20")).decode_utf8_lossy().into_owned();
            (encode(&dec(k), UNRESERVED), encode(&dec(v), UNRESERVED))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// One canonical header line's value: the values of every occurrence, whitespace runs folded,
/// joined with commas.
pub fn canonical_header_value<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> String {
    values
        .into_iter()
        .map(|v| String::from_utf8_lossy(v).split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a signature covers. `headers`: (lowercase name, canonical value) for each signed header,
/// in the order of `signed_headers`.
pub struct Canonical<'a> {
    pub method: &'a str,
    /// The path as sent (still percent-encoded).
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body, or the `x-amz-content-sha256` value sent.
    pub payload_hash: &'a str,
}

impl Canonical<'_> {
    pub fn request(&self) -> String {
        let mut canonical_headers = String::new();
        for (name, value) in self.headers {
            canonical_headers.push_str(&format!("{}:{}\n", name.to_ascii_lowercase(), value));
        }
        let signed: Vec<String> = self.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            canonical_uri(self.raw_path),
            canonical_query(self.raw_query),
            canonical_headers,
            signed.join(";"),
            self.payload_hash
        )
    }

    pub fn signed_headers(&self) -> String {
        self.headers.iter().map(|(n, _)| n.to_ascii_lowercase()).collect::<Vec<_>>().join(";")
    }
}

/// `date/region/service/aws4_request`.
pub fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()))
}

/// The derived signing key for one day, Region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// Hex signature of `string_to_sign`.
pub fn signature(secret: &str, date: &str, region: &str, service: &str, string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(&signing_key(secret, date, region, service), string_to_sign.as_bytes()))
}

/// The `Authorization` header value for a canonical request signed at `amz_date`
/// (`YYYYMMDDTHHMMSSZ`).
pub fn authorization(
    c: &Canonical<'_>,
    amz_date: &str,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> String {
    let date = amz_date.get(..8).unwrap_or_default();
    let scope = scope(date, region, service);
    let sts = string_to_sign(amz_date, &scope, &c.request());
    let sig = signature(secret, date, region, service, &sts);
    format!("{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={sig}", c.signed_headers())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `get-vanilla` from the AWS SigV4 test suite.
    #[test]
    fn matches_the_aws_test_suite_vector() {
        let headers = [
            ("host".to_string(), "example.amazonaws.com".to_string()),
            ("x-amz-date".to_string(), "20150830T123600Z".to_string()),
        ];
        let empty = sha256_hex(b"");
        let c = Canonical { method: "GET", raw_path: "/", raw_query: None, headers: &headers, payload_hash: &empty };
        let auth = authorization(
            &c,
            "20150830T123600Z",
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "service",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canonical_uri("/tags/arn%3Aaws"), "/tags/arn%253Aaws");
        assert_eq!(canonical_query(Some("tagKeys=b&tagKeys=a&maxResults=5")), "maxResults=5&tagKeys=a&tagKeys=b");
        assert_eq!(canonical_query(Some("k=a%20b")), "k=a%20b");
        assert_eq!(canonical_header_value([&b"a   b "[..], b"c"]), "a b,c");
    }
}
