//! Network destinations (backend, OTLP, Prometheus remote-write) and how reports reach them.
//!
//! A `Destination` knows one wire format and one endpoint; it delivers one report per call and
//! says whether a failure is worth retrying. `Remote` is the `Sink` that writes each report to the
//! durable spool (`spool`) and runs one delivery task per destination, each reading the spool in
//! order with its own cursor and backing off on failure, so that a slow or dead destination never
//! blocks capture or the other destinations.

use std::{
    future::Future,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use agent_common::report::Report;

use super::{
    Sink, SinkError,
    spool::{Next, Spool, SpoolError},
};
use crate::metrics::{DestinationMetrics, Metrics};

pub type DeliveryFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// One remote endpoint in one wire format.
pub trait Destination: Send + Sync + 'static {
    /// Short name for logs and metrics: "backend", "otlp", "prometheus-remote-write".
    fn name(&self) -> &'static str;
    /// Deliver one report. Must be idempotent per `report.report_id` as far as the far side allows.
    fn deliver<'a>(&'a self, report: &'a Report) -> DeliveryFuture<'a>;
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again later: network error, timeout, 408, 429, 5xx. `retry_after` is what the
    /// server asked for (Retry-After), if anything.
    #[error("{reason}")]
    Retry { reason: String, retry_after: Option<Duration> },
    /// Will never succeed as sent (other 4xx, a report the format cannot carry).
    #[error("{reason}")]
    Reject { reason: String },
}

impl DeliveryError {
    /// Classify a non-2xx HTTP answer. `body` is a short excerpt for the log.
    pub fn from_status(status: u16, retry_after: Option<&str>, body: &str) -> DeliveryError {
        let excerpt: String = body.chars().take(300).collect();
        let reason = format!("HTTP {status}: {excerpt}");
        if status == 408 || status == 429 || status >= 500 {
            DeliveryError::Retry { reason, retry_after: retry_after.and_then(parse_retry_after) }
        } else {
            DeliveryError::Reject { reason }
        }
    }
}

/// Retry-After: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().ok()
}

/// Settings every HTTP destination shares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpOptions {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Proxy URL for every request (otherwise none: the environment's proxy variables are ignored).
    pub proxy: Option<String>,
}

/// A reqwest client with rustls, the timeout and the proxy.
pub fn http_client(opts: &HttpOptions) -> Result<reqwest::Client, reqwest::Error> {
    let mut b = reqwest::Client::builder().timeout(opts.timeout).no_proxy();
    if let Some(p) = &opts.proxy {
        b = b.proxy(reqwest::Proxy::all(p)?);
    }
    b.build()
}

/// Where and how big the spool is.
#[derive(Clone, Debug)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// Exponential backoff with jitter: the n-th wait is uniform in [b/2, b] with b = 500 ms * 2^n,
/// capped at 60 s. A server's Retry-After replaces it (capped at 15 minutes).
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
}

pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(15 * 60);

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt; `random` in [0, 1).
    pub fn next_wait(&mut self, retry_after: Option<Duration>, random: f64) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(RETRY_AFTER_MAX);
        }
        let b = BACKOFF_BASE.saturating_mul(1u32 << self.attempt.min(16)).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        b.mul_f64(0.5 + 0.5 * random.clamp(0.0, 1.0))
    }
}

fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() as u64 >> 11) as f64 / (1u64 << 53) as f64
}

/// Writes every report to the spool; one delivery task per destination reads it back.
pub struct Remote {
    spool: Arc<Spool>,
    names: Vec<&'static str>,
    /// Set at shutdown: retry now instead of finishing a long backoff.
    hurry: tokio::sync::watch::Sender<bool>,
}

/// While shutting down, waits between attempts are at most this (unless Retry-After says more).
const SHUTDOWN_RETRY: Duration = Duration::from_millis(500);

impl Remote {
    /// Opens the spool and spawns one delivery task per destination on the current runtime.
    pub fn new(destinations: Vec<Arc<dyn Destination>>, opts: &SpoolOptions) -> Result<Remote, SpoolError> {
        Remote::with_metrics(destinations, opts, crate::metrics::global())
    }

    pub fn with_metrics(
        destinations: Vec<Arc<dyn Destination>>,
        opts: &SpoolOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Remote, SpoolError> {
        let names: Vec<&'static str> = destinations.iter().map(|d| d.name()).collect();
        let spool = Spool::open(&opts.dir, opts.max_bytes, &names, metrics.clone())?;
        let (hurry, _) = tokio::sync::watch::channel(false);
        for d in destinations {
            let m = metrics.destination(d.name());
            tokio::spawn(deliver_in_order(spool.clone(), d.clone(), m, hurry.subscribe()));
        }
        Ok(Remote { spool, names, hurry })
    }
}

async fn deliver_in_order(
    spool: Arc<Spool>,
    d: Arc<dyn Destination>,
    m: Arc<DestinationMetrics>,
    mut hurry: tokio::sync::watch::Receiver<bool>,
) {
    let name = d.name();
    let mut appended = spool.subscribe();
    let mut backoff = Backoff::new();
    loop {
        appended.borrow_and_update();
        let (seq, report, carried) = match spool.next_for(name) {
            None => {
                if appended.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Some(Next::Corrupt { seq, problem }) => {
                spool.quarantine(seq, &problem);
                continue;
            }
            Some(Next::Report { seq, report, carried }) => (seq, report, carried),
        };
        loop {
            match d.deliver(&report).await {
                Ok(()) => {
                    spool.ack(name, seq, carried);
                    m.deliveries.fetch_add(1, Relaxed);
                    m.last_success.store(chrono::Utc::now().timestamp().max(0) as u64, Relaxed);
                    backoff.reset();
                    tracing::debug!(destination = name, seq, "delivered report {}", report.report_id);
                    break;
                }
                Err(DeliveryError::Reject { reason }) => {
                    m.rejections.fetch_add(1, Relaxed);
                    tracing::error!(
                        destination = name,
                        "report {} rejected, not retried (a copy is kept in the spool's rejected/): {reason}",
                        report.report_id
                    );
                    spool.reject(name, seq);
                    break;
                }
                Err(DeliveryError::Retry { reason, retry_after }) => {
                    m.failures.fetch_add(1, Relaxed);
                    let mut wait = backoff.next_wait(retry_after, random_unit());
                    if *hurry.borrow() && retry_after.is_none() {
                        wait = wait.min(SHUTDOWN_RETRY);
                    }
                    tracing::warn!(
                        destination = name,
                        "report {} not delivered, retrying in {wait:?}: {reason}",
                        report.report_id
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Shutting down: try again now, within --shutdown-timeout.
                        Ok(()) = hurry.changed() => {}
                    }
                    if !spool.contains(seq) {
                        // Dropped meanwhile to keep the spool in bounds (and counted).
                        break;
                    }
                }
            }
        }
    }
}

impl Sink for Remote {
    fn name(&self) -> &'static str {
        "remote"
    }

    fn send(&mut self, report: &Report) -> Result<(), SinkError> {
        self.spool.append(report).map_err(|e| SinkError::Spool(e.to_string()))?;
        Ok(())
    }

    fn drained(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        self.hurry.send_replace(true);
        let spool = self.spool.clone();
        Some(Box::pin(async move {
            while spool.len() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }))
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let left = self.spool.len();
        if left > 0 {
            tracing::warn!(
                destinations = ?self.names,
                "{left} report(s) ({} bytes) stay in the spool for the next start",
                self.spool.bytes()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it gets; `answer` decides each outcome by the call number.
    struct Fake {
        name: &'static str,
        got: Mutex<Vec<String>>,
        answer: fn(usize) -> Result<(), DeliveryError>,
    }

    impl Destination for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn deliver<'a>(&'a self, report: &'a Report) -> DeliveryFuture<'a> {
            let n = {
                let mut g = self.got.lock().unwrap();
                g.push(report.report_id.clone());
                g.len()
            };
            let answer = (self.answer)(n);
            Box::pin(async move { answer })
        }
    }

    fn report(n: u32) -> Report {
        let mut r: Report = serde_json::from_str(&format!(
            r#"{{"report_id":"r{n}","schema_version":1,"window":{{"start":"2026-11-22T10:00:00Z","end":"2026-11-22T10:00:30Z"}},
            "agent":{{"version":"t","hostname":"h"}},"flows":[],
            "other":{{"flows":0,"connections":{{"attempted":0,"established":0,"closed":0,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":0}},
            "bytes_sent":0,"bytes_received":0,"segments_sent":0,"segments_received":0,"retransmissions":0,"timeouts":0,
            "rtt_us":{{"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0}},"handshake_us":{{"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0}}}},
            "agent_stats":{{"events":0,"ringbuf_drops":0,"map_full":{{"sockets":0,"flows":0,"listeners":0}},"untracked_events":0,"flows_tracked":0,"sockets_tracked":0,"cpu_seconds":0.0,"rss_bytes":0}}}}"#
        ))
        .unwrap();
        r.agent_stats.events = u64::from(n);
        r
    }

    #[tokio::test]
    async fn a_dead_destination_blocks_neither_capture_nor_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let dead = Arc::new(Fake {
            name: "dead",
            got: Mutex::default(),
            answer: |_| {
                Err(DeliveryError::Retry { reason: "down".into(), retry_after: Some(Duration::from_secs(3600)) })
            },
        });
        // Rejects its 2nd report for good, takes the rest.
        let picky = Arc::new(Fake {
            name: "picky",
            got: Mutex::default(),
            answer: |n| if n == 2 { Err(DeliveryError::Reject { reason: "HTTP 400".into() }) } else { Ok(()) },
        });
        let metrics = Arc::new(Metrics::default());
        let opts = SpoolOptions { dir: dir.path().to_path_buf(), max_bytes: 1 << 20 };
        let mut remote = Remote::with_metrics(vec![dead.clone(), picky.clone()], &opts, metrics.clone()).unwrap();
        for n in 0..5 {
            remote.send(&report(n)).unwrap();
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while picky.got.lock().unwrap().len() < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the live destination delivers everything while the other is dead");
        assert_eq!(*picky.got.lock().unwrap(), ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(*dead.got.lock().unwrap(), ["r0"]);
        let m = metrics.destination("picky");
        assert_eq!((m.deliveries.load(Relaxed), m.rejections.load(Relaxed)), (4, 1));
        assert_eq!(metrics.destination("dead").failures.load(Relaxed), 1);
        // The dead one still needs all five: they stay spooled, and the drain does not finish.
        assert_eq!(remote.spool.len(), 5);
        let done = remote.drained().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(300), done).await.is_err());
        // Shutting down cut the hour-long wait short: one more attempt, then Retry-After holds.
        assert_eq!(*dead.got.lock().unwrap(), ["r0", "r0"]);
        assert_eq!(std::fs::read_dir(dir.path().join("rejected")).unwrap().count(), 1);
    }

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let mut b = Backoff::new();
        let w: Vec<Duration> = (0..10).map(|_| b.next_wait(None, 0.999)).collect();
        assert!(w[0] <= BACKOFF_BASE && w[0] >= BACKOFF_BASE / 2, "{w:?}");
        assert!(w.windows(2).all(|p| p[1] >= p[0]), "{w:?}");
        assert!(*w.last().unwrap() <= BACKOFF_MAX && *w.last().unwrap() > BACKOFF_MAX / 2, "{w:?}");
        let mut b = Backoff::new();
        assert_eq!(b.next_wait(None, 0.0), BACKOFF_BASE / 2, "jitter keeps at least half");
        assert_eq!(b.next_wait(Some(Duration::from_secs(7)), 0.5), Duration::from_secs(7));
        assert_eq!(b.next_wait(Some(Duration::from_secs(86400)), 0.5), RETRY_AFTER_MAX);
        b.reset();
        assert_eq!(b.next_wait(None, 0.0), BACKOFF_BASE / 2);
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            DeliveryError::from_status(429, Some("3"), ""),
            DeliveryError::Retry { retry_after: Some(d), .. } if d == Duration::from_secs(3)
        ));
        assert!(matches!(DeliveryError::from_status(503, None, ""), DeliveryError::Retry { retry_after: None, .. }));
        assert!(matches!(DeliveryError::from_status(400, None, "bad"), DeliveryError::Reject { .. }));
    }
}
