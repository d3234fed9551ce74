//! Sinks: where reports go. Every sink implements `Sink`; network destinations sit behind one
//! `Remote` sink (see `remote`), which spools every report durably first (see `spool`).

mod backend;
mod credentials;
mod exported;
mod flow_log;
mod flow_log_files;
mod otlp;
pub mod prometheus;
pub mod remote;
pub mod spool;
mod stdout;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

pub use flow_log::FlowLog;
pub use remote::{Destination, Remote};
pub use stdout::Stdout;

use agent_common::report::Report;

use crate::{config::Config, flowlog::Meta};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing to {sink}: {source}")]
    Io { sink: &'static str, source: std::io::Error },
    #[error("spooling: {0}")]
    Spool(String),
}

pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn send(&mut self, report: &Report) -> Result<(), SinkError>;
    /// The sink needs every flow of a window whole (no top-N, no `other`), e.g. to log each flow.
    fn wants_all_flows(&self) -> bool {
        false
    }
    /// Called once at shutdown after the last report: write out anything held back.
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// At shutdown (before `close`): completes once everything sent has been delivered, if the
    /// sink delivers in the background. The daemon waits for it at most `--shutdown-timeout`.
    fn drained(&self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        None
    }
}

/// The network destinations the config enables.
fn destinations(cfg: &Config) -> anyhow::Result<Vec<Arc<dyn Destination>>> {
    let mut list: Vec<Arc<dyn Destination>> = Vec::new();
    if let Some(endpoint) = &cfg.endpoint {
        let creds = credentials::Provider::from_env();
        tracing::info!(endpoint, credentials = %creds.origin, "shipping reports to the backend");
        let b = backend::Backend::new(endpoint, &cfg.http_options(), creds, &cfg.signing_service, &cfg.signing_region)
            .map_err(|e| anyhow::anyhow!("endpoint: {e}"))?;
        list.push(Arc::new(b));
    }
    let http = cfg.http_options();
    if let Some(url) = &cfg.otlp_endpoint {
        let gzip = cfg.otlp_compression == crate::config::OtlpCompression::Gzip;
        list.push(Arc::new(otlp::Otlp::new(url, &cfg.otlp_header, gzip, &http)?));
    }
    if let Some(url) = &cfg.prometheus_remote_write_url {
        let auth = match (&cfg.prometheus_remote_write_bearer_token_file, &cfg.prometheus_remote_write_username) {
            (Some(f), _) => prometheus::Auth::BearerFile(f.clone()),
            (None, Some(u)) => prometheus::Auth::Basic {
                username: u.clone(),
                password_file: cfg.prometheus_remote_write_password_file.clone().unwrap_or_default(),
            },
            (None, None) => prometheus::Auth::None,
        };
        list.push(Arc::new(prometheus::RemoteWrite::new(url, &auth, &cfg.prometheus_remote_write_label, &http)?));
    }
    Ok(list)
}

/// Every sink the config enables (spawning delivery tasks on the current runtime).
pub fn build(cfg: &Config) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    // The spool first: a report printed (dry-run) has been spooled too.
    let remote = destinations(cfg)?;
    if !remote.is_empty() {
        let opts = remote::SpoolOptions { dir: cfg.spool_dir.clone(), max_bytes: cfg.spool_max_bytes };
        let r = Remote::new(remote, &opts).map_err(|e| {
            anyhow::anyhow!("cannot open the report spool (spool_dir {}): {e}", cfg.spool_dir.display())
        })?;
        sinks.push(Box::new(r));
    }
    if cfg.dry_run {
        sinks.push(Box::new(Stdout::new(cfg.format)));
    }
    if let Some(dest) = &cfg.flow_log_destination {
        let meta = Meta { account_id: cfg.flow_log_account_id.clone(), region: cfg.flow_log_region.clone() };
        let length = Duration::from_secs(cfg.flow_log_max_aggregation_interval.into());
        sinks.push(Box::new(FlowLog::new(cfg.flow_log_format.clone(), meta, length, dest.clone())));
    }
    if sinks.is_empty() {
        anyhow::bail!(
            "no report sink is configured: ship reports with --endpoint URL, run with --dry-run to print them to stdout, or write flow logs with --flow-log-destination"
        );
    }
    Ok(sinks)
}
