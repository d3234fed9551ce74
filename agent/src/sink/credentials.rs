//! AWS credentials for signing requests, found as the SDKs find them: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the shared credentials
//! file (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
//! `default`), then the instance role from IMDS (refreshed before it expires).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::imds;

/// Instance-role credentials are renewed this long before they expire.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// After IMDS had no role (or did not answer), ask again after this long; meanwhile unsigned.
const RETRY_IMDS_AFTER: Duration = Duration::from_secs(60);
const ROLES_PATH: &str = "/latest/meta-data/iam/security-credentials/";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub expiration: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("instance role credentials from IMDS: {0}")]
    Imds(String),
}

enum Source {
    Static(Credentials),
    Imds(imds::Client),
    None,
}

pub struct Provider {
    source: Source,
    /// Where the credentials come from, for logs.
    pub origin: String,
    cached: tokio::sync::Mutex<Cached>,
}

#[derive(Default)]
struct Cached {
    creds: Option<Credentials>,
    /// No role found at this time: do not ask IMDS again before RETRY_IMDS_AFTER.
    none_since: Option<Instant>,
}

/// One profile of a shared credentials file (INI).
pub fn parse_profile(text: &str, profile: &str) -> Option<Credentials> {
    let (mut in_profile, mut id, mut secret, mut token) = (false, None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_profile = name == profile || name.strip_prefix("profile ").is_some_and(|n| n.trim() == profile);
            continue;
        }
        if !in_profile {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else { continue };
        let v = Some(v.trim().to_string()).filter(|v| !v.is_empty());
        match k.trim() {
            "aws_access_key_id" => id = v,
            "aws_secret_access_key" => secret = v,
            "aws_session_token" => token = v,
            _ => {}
        }
    }
    Some(Credentials { access_key_id: id?, secret_access_key: secret?, session_token: token, expiration: None })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<DateTime<Utc>>,
}

impl Provider {
    /// The first source that has credentials, in the SDKs' order.
    pub fn from_env() -> Provider {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            let c = Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
                expiration: None,
            };
            return Provider::fixed(c, "environment (AWS_ACCESS_KEY_ID)".into());
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        if let Some(path) = file
            && let Ok(text) = std::fs::read_to_string(&path)
        {
            match parse_profile(&text, &profile) {
                Some(c) => return Provider::fixed(c, format!("{} [{profile}]", path.display())),
                None => tracing::warn!(
                    "{} has no complete [{profile}] profile (aws_access_key_id and aws_secret_access_key); ignored",
                    path.display()
                ),
            }
        }
        match imds::Client::from_env() {
            Some(c) => {
                Provider { source: Source::Imds(c), origin: "instance role (IMDS)".into(), cached: Default::default() }
            }
            None => Provider::none(),
        }
    }

    pub fn fixed(c: Credentials, origin: String) -> Provider {
        Provider { source: Source::Static(c), origin, cached: Default::default() }
    }

    pub fn none() -> Provider {
        Provider { source: Source::None, origin: "none".into(), cached: Default::default() }
    }

    /// Credentials to sign with now; `Ok(None)`: none available, send unsigned.
    pub async fn get(&self) -> Result<Option<Credentials>, CredentialsError> {
        let client = match &self.source {
            Source::Static(c) => return Ok(Some(c.clone())),
            Source::None => return Ok(None),
            Source::Imds(client) => client,
        };
        let mut cached = self.cached.lock().await;
        if let Some(c) = &cached.creds {
            let fresh = c
                .expiration
                .is_none_or(|e| Utc::now() + chrono::TimeDelta::from_std(REFRESH_BEFORE).unwrap_or_default() < e);
            if fresh {
                return Ok(Some(c.clone()));
            }
        } else if cached.none_since.is_some_and(|t| t.elapsed() < RETRY_IMDS_AFTER) {
            return Ok(None);
        }
        match role_credentials(client).await {
            Ok(Some(c)) => {
                tracing::info!(access_key_id = %c.access_key_id, expiration = ?c.expiration, "instance role credentials");
                cached.creds = Some(c.clone());
                cached.none_since = None;
                Ok(Some(c))
            }
            Ok(None) => {
                cached.none_since = Some(Instant::now());
                Ok(None)
            }
            // Had credentials (on EC2 with a role) and cannot renew them: retry later, do not
            // send unsigned.
            Err(e) if cached.creds.is_some() => Err(e),
            Err(e) => {
                tracing::debug!("no instance role credentials: {e}");
                cached.none_since = Some(Instant::now());
                Ok(None)
            }
        }
    }
}

async fn role_credentials(client: &imds::Client) -> Result<Option<Credentials>, CredentialsError> {
    let err = |e: imds::ImdsError| CredentialsError::Imds(e.to_string());
    let Some(roles) = client.get(ROLES_PATH).await.map_err(err)? else { return Ok(None) };
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else { return Ok(None) };
    let Some(body) = client.get(&format!("{ROLES_PATH}{role}")).await.map_err(err)? else {
        return Err(CredentialsError::Imds(format!("role {role} listed but its credentials are not found")));
    };
    let r: RoleCredentials = serde_json::from_str(&body)
        .map_err(|e| CredentialsError::Imds(format!("role {role}: unexpected credentials document: {e}")))?;
    Ok(Some(Credentials {
        access_key_id: r.access_key_id,
        secret_access_key: r.secret_access_key,
        session_token: r.token,
        expiration: r.expiration,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    /// A loopback IMDS with one role whose credentials expire `expires_in` from now.
    async fn imds(expires_in: chrono::TimeDelta) -> (String, Arc<AtomicUsize>) {
        use axum::routing::{get, put};
        let fetched = Arc::new(AtomicUsize::new(0));
        let f = fetched.clone();
        let app = axum::Router::new()
            .route("/latest/api/token", put(|| async { "token" }))
            .route("/latest/meta-data/iam/security-credentials/", get(|| async { "agent-role\n" }))
            .route(
                "/latest/meta-data/iam/security-credentials/agent-role",
                get(move || {
                    let n = f.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let exp = (Utc::now() + expires_in).to_rfc3339();
                        format!(
                            r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"ASIA{n}","SecretAccessKey":"s","Token":"t","Expiration":"{exp}"}}"#
                        )
                    }
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}"), fetched)
    }

    fn from_imds(endpoint: &str) -> Provider {
        Provider {
            source: Source::Imds(imds::Client::new(endpoint)),
            origin: "test".into(),
            cached: Default::default(),
        }
    }

    #[tokio::test]
    async fn instance_role_credentials_are_cached_and_renewed_before_expiry() {
        let (endpoint, fetched) = imds(chrono::TimeDelta::hours(6)).await;
        let p = from_imds(&endpoint);
        let c = p.get().await.unwrap().unwrap();
        assert_eq!((c.access_key_id.as_str(), c.session_token.as_deref()), ("ASIA0", Some("t")));
        p.get().await.unwrap().unwrap();
        assert_eq!(fetched.load(Ordering::SeqCst), 1, "cached while far from expiry");
        // Expiring within REFRESH_BEFORE: fetched again at every use.
        let (endpoint, fetched) = imds(chrono::TimeDelta::minutes(2)).await;
        let p = from_imds(&endpoint);
        p.get().await.unwrap().unwrap();
        let c = p.get().await.unwrap().unwrap();
        assert_eq!((c.access_key_id.as_str(), fetched.load(Ordering::SeqCst)), ("ASIA1", 2));
        // No IMDS at all: unsigned, without asking again at once.
        let p = from_imds("http://127.0.0.1:9");
        assert!(p.get().await.unwrap().is_none());
        assert!(p.cached.lock().await.none_since.is_some());
    }

    #[test]
    fn shared_file_profiles() {
        let text = "[default]\naws_access_key_id = AK1\naws_secret_access_key = s1\n\
                    [profile ops]\naws_access_key_id=AK2\naws_secret_access_key=s2\naws_session_token = t2\n[half]\naws_access_key_id=x\n";
        let d = parse_profile(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str(), d.session_token.as_deref()),
            ("AK1", "s1", None)
        );
        let o = parse_profile(text, "ops").unwrap();
        assert_eq!(o.session_token.as_deref(), Some("t2"));
        assert!(parse_profile(text, "half").is_none());
        assert!(parse_profile(text, "missing").is_none());
        assert!(!format!("{d:?}").contains("s1"), "secrets stay out of logs");
    }
}
