//! The run loop: drain the kernel maps every aggregate interval, close windows on wall-clock
//! boundaries, enrich, and hand reports to the sinks. SIGINT/SIGTERM flush the partial window, then
//! give background deliveries up to `--shutdown-timeout`.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::Aggregator,
    capture::{self, Capture},
    config::Config,
    control,
    enrich::{self, Enricher},
    health::Health,
    notify::Notifier,
    report::{self, Usage},
    sink::{self, Sink},
    sys,
};

/// Idle flow keys (nothing open, nothing new) leave the kernel map after this long.
const EVICT_IDLE_AFTER: Duration = Duration::from_secs(120);

/// The multiple of `step` at or before `t`.
pub fn align_down(t: DateTime<Utc>, step: Duration) -> DateTime<Utc> {
    let step_ms = step.as_millis().max(1) as i64;
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(step_ms)).unwrap_or(t)
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

struct Pipeline {
    capture: Capture,
    aggregator: Aggregator,
    enricher: Box<dyn Enricher>,
    sinks: Vec<Box<dyn Sink>>,
    top_flows: usize,
    cpu_at_window_start: f64,
}

impl Pipeline {
    /// Bring open sockets' counters into their flows (walk mode), before a window closes.
    fn walk(&mut self) {
        if let Err(e) = self.capture.walk() {
            tracing::error!("{e}");
        }
    }

    fn drain(&mut self) {
        let snap = match self.capture.read() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reading kernel maps: {e}");
                return;
            }
        };
        for key in self.aggregator.ingest(snap) {
            match self.capture.evict(&key) {
                Ok(last) => self.aggregator.account_evicted(&key, last),
                Err(e) => tracing::warn!("evicting an idle flow: {e}"),
            }
        }
    }

    fn emit(&mut self, start: DateTime<Utc>, end: DateTime<Utc>) {
        let (cpu, rss) = sys::process_usage();
        let usage = Usage { cpu_seconds: (cpu - self.cpu_at_window_start).max(0.0), rss_bytes: rss };
        self.cpu_at_window_start = cpu;
        let closed = self.aggregator.close_window();
        // Sinks that log every flow (flow logs) get the window whole, without top-N.
        let mut whole = self.sinks.iter().any(|s| s.wants_all_flows()).then(|| {
            let usage = Usage { cpu_seconds: usage.cpu_seconds, rss_bytes: usage.rss_bytes };
            report::build((start, end), closed.clone(), usize::MAX, usage)
        });
        let mut report = report::build((start, end), closed, self.top_flows, usage);
        crate::metrics::global().observe_report(&report);
        self.enricher.enrich(&mut report);
        if let Some(whole) = &mut whole {
            self.enricher.enrich(whole);
        }
        for sink in &mut self.sinks {
            let report = match &whole {
                Some(whole) if sink.wants_all_flows() => whole,
                _ => &report,
            };
            if let Err(e) = sink.send(report) {
                tracing::error!(sink = sink.name(), "report {} not delivered: {e}", report.report_id);
            }
        }
    }
}

pub async fn run(cfg: Config) -> Result<()> {
    let sinks = sink::build(&cfg)?;
    let notifier = Notifier::from_env()?;
    let health = Health::serve(cfg.metrics_address)
        .await
        .with_context(|| format!("cannot serve /healthz on {} (metrics_address)", cfg.metrics_address))?;
    tracing::info!(address = %health.local_addr(), "health endpoint listening");
    let capture = Capture::start(&cfg).context("cannot start capture")?;
    sys::release_free_memory();
    // Bound before the capabilities go (the socket's group is set with CAP_CHOWN); starts no thread.
    let (_control, mut jobs) = control::Server::start_or_degrade(&cfg).await.context("cannot serve flow operations")?;
    // Enrichers subscribe to conntrack with CAP_NET_ADMIN; no await between here and the drop, so
    // their background tasks first run without capabilities.
    let privileged_enrichers = enrich::build_privileged(&cfg)?;
    // Attached: nothing later needs a capability (map fds are already open), but for the thread
    // that enters the network namespaces it finds, with --walk-netns-all.
    capture::drop_privileges(capture.kept_privileges()).context("after attaching")?;
    // Enrichers that start threads (Kubernetes watchers) come after the drop.
    let enricher = enrich::build(&cfg, privileged_enrichers)?;
    let ticks_to_evict = (EVICT_IDLE_AFTER.as_millis().max(cfg.report_interval.as_millis() * 2)
        / cfg.aggregate_interval.as_millis()) as u32;
    let mut p = Pipeline {
        capture,
        aggregator: Aggregator::new(ticks_to_evict),
        enricher,
        sinks,
        top_flows: cfg.top_flows,
        cpu_at_window_start: sys::process_usage().0,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    // Half of WatchdogSec (systemd); without a watchdog the ticks send nothing.
    let mut watchdog = tokio::time::interval(notifier.watchdog_period().unwrap_or(Duration::from_secs(3600)));
    // Connection records are read in this task, between walks and readings, never beside them;
    // without records the task does not wake for them, and with records it wakes less often
    // while they find none (`capture::next_records_read_wait`).
    let has_records = p.capture.has_records();
    let mut records_wait = capture::READ_RECORDS_EVERY;
    let records = tokio::time::sleep(records_wait);
    tokio::pin!(records);
    health.set_ready();
    notifier.ready();

    let mut window_start = align_down(Utc::now(), cfg.report_interval);
    let mut window_end = window_start + delta(cfg.report_interval);
    tracing::info!(
        aggregate_interval = ?cfg.aggregate_interval,
        report_interval = ?cfg.report_interval,
        "capturing; first window ends at {}",
        window_end.to_rfc3339()
    );
    loop {
        let now = Utc::now();
        let tick = align_down(now, cfg.aggregate_interval) + delta(cfg.aggregate_interval);
        let wait = (tick - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            Some(job) = jobs.recv() => {
                control::execute(job, &mut p.capture, &mut p.aggregator);
                continue;
            }
            _ = watchdog.tick() => {
                notifier.watchdog();
                continue;
            }
            _ = &mut records, if has_records => {
                records_wait = capture::next_records_read_wait(records_wait, p.capture.read_records());
                records.as_mut().reset(tokio::time::Instant::now() + records_wait);
                continue;
            }
        }
        p.capture.refresh_namespaces();
        let walked = p.capture.walk_status().and_then(Result::ok).unwrap_or(0);
        crate::metrics::global().walked_namespaces.store(walked as u64, std::sync::atomic::Ordering::Relaxed);
        if tick >= window_end {
            p.walk();
        }
        p.drain();
        if tick >= window_end {
            p.emit(window_start, window_end);
            // After a stall (suspend, overload) skip to the current window rather than emit empties.
            window_start = align_down(tick, cfg.report_interval);
            window_end = window_start + delta(cfg.report_interval);
        }
    }
    notifier.stopping();
    tracing::info!("shutting down: flushing the partial window");
    p.capture.finish_records();
    p.walk();
    p.drain();
    p.emit(window_start, Utc::now());
    // Sinks that deliver in the background (the spool's destinations) get until the timeout;
    // what is left stays in the spool for the next start.
    let drained: Vec<_> = p.sinks.iter().filter_map(|s| s.drained()).collect();
    if !drained.is_empty() {
        tracing::info!(timeout = ?cfg.shutdown_timeout, "delivering what is spooled before exiting");
        let all = async {
            for d in drained {
                d.await;
            }
        };
        if tokio::time::timeout(cfg.shutdown_timeout, all).await.is_err() {
            tracing::warn!("shutdown_timeout ({:?}) reached with reports still undelivered", cfg.shutdown_timeout);
        }
    }
    for sink in &mut p.sinks {
        if let Err(e) = sink.close() {
            tracing::error!(sink = sink.name(), "closing: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_to_wall_clock() {
        let t: DateTime<Utc> = "2026-11-22T10:00:47.250Z".parse().unwrap();
        assert_eq!(align_down(t, Duration::from_secs(30)).to_rfc3339(), "2026-11-22T10:00:30+00:00");
        assert_eq!(align_down(t, Duration::from_secs(10)).to_rfc3339(), "2026-11-22T10:00:40+00:00");
        assert_eq!(align_down(t, Duration::from_millis(500)).timestamp_millis(), t.timestamp_millis() - 250);
    }
}
