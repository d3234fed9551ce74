#![allow(dead_code)] // the destinations (issue 5) use all of this; remove once they land
//! Network destinations (backend, OTLP, Prometheus remote-write) and how reports reach them.
//!
//! A `Destination` knows one wire format and one endpoint; it delivers one report per call and
//! says whether a failure is worth retrying. `Remote` is the `Sink` that hands each report to
//! every destination and retries in the background, so that a slow or dead destination never
//! blocks capture or the other destinations.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use agent_common::report::Report;
use tokio::sync::mpsc;

use super::{Sink, SinkError};

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

/// Hands reports to destinations; each destination has its own queue and retry loop.
/// Not durable: the spool replaces the in-memory queue.
pub struct Remote {
    queues: Vec<(&'static str, mpsc::Sender<Report>)>,
}

const QUEUE: usize = 64;

impl Remote {
    /// Spawns one delivery task per destination on the current runtime.
    pub fn new(destinations: Vec<Arc<dyn Destination>>) -> Remote {
        let queues = destinations
            .into_iter()
            .map(|d| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let name = d.name();
                tokio::spawn(deliver_in_order(d, rx));
                (name, tx)
            })
            .collect();
        Remote { queues }
    }
}

async fn deliver_in_order(d: Arc<dyn Destination>, mut rx: mpsc::Receiver<Report>) {
    while let Some(report) = rx.recv().await {
        let mut backoff = Duration::from_millis(500);
        loop {
            match d.deliver(&report).await {
                Ok(()) => break,
                Err(DeliveryError::Reject { reason }) => {
                    tracing::error!(sink = d.name(), "report {} rejected: {reason}", report.report_id);
                    break;
                }
                Err(DeliveryError::Retry { reason, retry_after }) => {
                    let wait = retry_after.unwrap_or(backoff);
                    tracing::warn!(
                        sink = d.name(),
                        "report {} not delivered, retrying in {wait:?}: {reason}",
                        report.report_id
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
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
        for (name, q) in &self.queues {
            if q.try_send(report.clone()).is_err() {
                tracing::error!(sink = name, "queue full: report {} dropped", report.report_id);
            }
        }
        Ok(())
    }
}
