//! Services the agent talks to: the EC2 instance metadata service and the report backend.

use std::time::Duration;

use super::{Item, http::Url};

const IMDS_DEFAULT: &str = "http://169.254.169.254";
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);
const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// IMDSv2: ask for a session token (PUT /latest/api/token). Never fatal: off EC2 it is expected.
pub fn imds() -> Item {
    const NAME: &str = "IMDS (EC2 metadata)";
    if std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
        return Item::skip(NAME, "disabled by AWS_EC2_METADATA_DISABLED=true");
    }
    let endpoint = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|_| IMDS_DEFAULT.into());
    let url = match Url::parse(&endpoint) {
        Ok(u) => Url { path: "/latest/api/token".into(), ..u },
        Err(e) => {
            return Item::warn(
                NAME,
                format!("AWS_EC2_METADATA_SERVICE_ENDPOINT: {e}"),
                "set it to e.g. http://169.254.169.254",
            );
        }
    };
    let fix = "only needed on EC2 (for instance metadata); there, allow IMDSv2 with a hop limit of 2 for containers";
    match super::http::request(&url, "PUT", &[("x-aws-ec2-metadata-token-ttl-seconds", "60")], IMDS_TIMEOUT) {
        Ok(200) => Item::ok(NAME, format!("{endpoint} issued a session token")),
        Ok(code) => Item::warn(NAME, format!("{endpoint} answered HTTP {code} to the token request"), fix),
        Err(e) => Item::warn(NAME, format!("not on EC2: no answer from {endpoint} within 1 s ({e})"), fix),
    }
}

/// The backend: a TCP connection and, for plain HTTP, any HTTP response.
pub fn backend(endpoint: Option<&str>) -> Item {
    const NAME: &str = "backend";
    let Some(endpoint) = endpoint else {
        return Item::skip(NAME, "not configured (pass --endpoint URL to test one)");
    };
    let url = match Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => return Item::fail(NAME, e, "give --endpoint as http://host:port or https://host"),
    };
    let fix = "check the URL, DNS, routes and firewalls between this host and the backend";
    if url.https {
        return match url.connect(BACKEND_TIMEOUT) {
            Ok(_) => {
                Item::ok(NAME, format!("TCP connection to {}:{} established (TLS not checked)", url.host, url.port))
            }
            Err(e) => Item::fail(NAME, format!("cannot connect to {endpoint}: {e}"), fix),
        };
    }
    match super::http::request(&url, "GET", &[], BACKEND_TIMEOUT) {
        Ok(code) => Item::ok(NAME, format!("{endpoint} answered HTTP {code}")),
        Err(e) => Item::fail(NAME, format!("{endpoint}: {e}"), fix),
    }
}
