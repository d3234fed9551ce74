//! The run loop: drain the kernel maps every aggregate interval, close windows on wall-clock
//! boundaries, enrich, and hand reports to the sinks. SIGINT/SIGTERM flush the partial window.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, TimeDelta, Utc};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    aggregate::Aggregator,
    capture::Capture,
    config::Config,
    enrich::{Enricher, NoMetadata},
    report::{self, Usage},
    sink::{Sink, Stdout},
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
        let mut report = report::build((start, end), closed, self.top_flows, usage);
        self.enricher.enrich(&mut report);
        for sink in &mut self.sinks {
            if let Err(e) = sink.send(&report) {
                tracing::error!(sink = sink.name(), "report {} not delivered: {e}", report.report_id);
            }
        }
    }
}

pub async fn run(cfg: Config) -> Result<()> {
    if !cfg.dry_run {
        anyhow::bail!("no report sink is configured: run with --dry-run to print reports to stdout");
    }
    let capture = Capture::start(&cfg).context("cannot start capture")?;
    let ticks_to_evict = (EVICT_IDLE_AFTER.as_millis().max(cfg.report_interval.as_millis() * 2)
        / cfg.aggregate_interval.as_millis()) as u32;
    let mut p = Pipeline {
        capture,
        aggregator: Aggregator::new(ticks_to_evict),
        enricher: Box::new(NoMetadata),
        sinks: vec![Box::new(Stdout::new(cfg.format))],
        top_flows: cfg.top_flows,
        cpu_at_window_start: sys::process_usage().0,
    };
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

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
        }
        p.drain();
        if tick >= window_end {
            p.emit(window_start, window_end);
            // After a stall (suspend, overload) skip to the current window rather than emit empties.
            window_start = align_down(tick, cfg.report_interval);
            window_end = window_start + delta(cfg.report_interval);
        }
    }
    tracing::info!("shutting down: flushing the partial window");
    p.drain();
    p.emit(window_start, Utc::now());
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
