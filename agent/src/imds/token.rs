//! The IMDSv2 session token, kept until shortly before its TTL runs out.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Renew this long before expiry (or at half the TTL for short TTLs).
const RENEW_MARGIN: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct TokenCache(Mutex<Option<(String, Instant)>>);

impl TokenCache {
    /// The cached token if it is not about to expire.
    pub fn get(&self) -> Option<String> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|(_, renew_at)| Instant::now() < *renew_at).map(|(t, _)| t.clone())
    }

    pub fn set(&self, token: String, ttl: Duration) {
        let margin = RENEW_MARGIN.min(ttl / 2);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, Instant::now() + ttl - margin));
    }

    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
