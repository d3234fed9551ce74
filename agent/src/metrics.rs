//! The agent's own metrics, served in Prometheus text format on `/metrics` (see `health`).
//! Counters are cumulative since start; gauges hold the latest value.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use agent_common::report::Report;

/// Per destination delivery counters.
#[derive(Debug, Default)]
pub struct DestinationMetrics {
    pub deliveries: AtomicU64,
    pub failures: AtomicU64,
    pub rejections: AtomicU64,
    /// Unix seconds of the last successful delivery (0: none yet).
    pub last_success: AtomicU64,
    /// Reports dropped from the spool before this destination delivered them.
    pub dropped: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub windows: AtomicU64,
    pub events: AtomicU64,
    pub ringbuf_drops: AtomicU64,
    pub map_full_sockets: AtomicU64,
    pub map_full_flows: AtomicU64,
    pub map_full_listeners: AtomicU64,
    pub untracked_events: AtomicU64,
    pub missed_runs: AtomicU64,
    pub walk_idle_sockets: AtomicU64,
    pub ring_full: AtomicU64,
    pub records_spill_full: AtomicU64,
    pub synack_retransmissions_recovered: AtomicU64,
    pub flows_tracked: AtomicU64,
    pub sockets_tracked: AtomicU64,
    /// Network namespaces the walk covers (the agent's own included; 0 without the walk).
    pub walked_namespaces: AtomicU64,
    pub spool_reports: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_dropped: AtomicU64,
    pub spool_quarantined: AtomicU64,
    destinations: Mutex<BTreeMap<&'static str, Arc<DestinationMetrics>>>,
}

/// The process-wide metrics.
pub fn global() -> Arc<Metrics> {
    static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Metrics::default())).clone()
}

impl Metrics {
    /// Counts a report window the pipeline emitted (its agent_stats are per window).
    pub fn observe_report(&self, r: &Report) {
        let s = &r.agent_stats;
        self.windows.fetch_add(1, Relaxed);
        self.events.fetch_add(s.events, Relaxed);
        self.ringbuf_drops.fetch_add(s.ringbuf_drops, Relaxed);
        self.map_full_sockets.fetch_add(s.map_full.sockets, Relaxed);
        self.map_full_flows.fetch_add(s.map_full.flows, Relaxed);
        self.map_full_listeners.fetch_add(s.map_full.listeners, Relaxed);
        self.untracked_events.fetch_add(s.untracked_events, Relaxed);
        self.missed_runs.fetch_add(s.missed_runs, Relaxed);
        self.walk_idle_sockets.fetch_add(s.walk_idle_sockets, Relaxed);
        self.ring_full.fetch_add(s.ring_full, Relaxed);
        self.records_spill_full.fetch_add(s.records_spill_full, Relaxed);
        self.synack_retransmissions_recovered.fetch_add(s.synack_retransmissions_recovered, Relaxed);
        self.flows_tracked.store(s.flows_tracked, Relaxed);
        self.sockets_tracked.store(s.sockets_tracked, Relaxed);
    }

    /// The counters of one destination (created on first use).
    pub fn destination(&self, name: &'static str) -> Arc<DestinationMetrics> {
        let mut d = self.destinations.lock().unwrap_or_else(|e| e.into_inner());
        d.entry(name).or_default().clone()
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP flow_agent_{name} {help}\n# TYPE flow_agent_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "flow_agent_{name}{labels} {v}");
            }
        };
        let g = |a: &AtomicU64| a.load(Relaxed);
        metric("report_windows_total", "counter", "Report windows emitted.", &[("", g(&self.windows))]);
        metric("events_total", "counter", "Kernel program invocations that did work.", &[("", g(&self.events))]);
        metric("ringbuf_drops_total", "counter", "Ring buffer drops.", &[("", g(&self.ringbuf_drops))]);
        metric(
            "map_full_total",
            "counter",
            "Failed kernel map inserts (map full), per map.",
            &[
                ("{map=\"sockets\"}", g(&self.map_full_sockets)),
                ("{map=\"flows\"}", g(&self.map_full_flows)),
                ("{map=\"listeners\"}", g(&self.map_full_listeners)),
            ],
        );
        metric(
            "untracked_events_total",
            "counter",
            "Events on sockets the agent could not track.",
            &[("", g(&self.untracked_events))],
        );
        metric(
            "missed_runs_total",
            "counter",
            "Kernel program runs the kernel skipped (another BPF program or BPF syscall held the CPU).",
            &[("", g(&self.missed_runs))],
        );
        metric(
            "walk_idle_sockets_total",
            "counter",
            "Open sockets the walks passed over as idle (nothing sent or received since the walk before).",
            &[("", g(&self.walk_idle_sockets))],
        );
        metric(
            "ring_full_total",
            "counter",
            "Connection records that found their CPU's ring full (--record-slots) and were folded in the kernel instead.",
            &[("", g(&self.ring_full))],
        );
        metric(
            "records_spill_full_total",
            "counter",
            "Connection records that found their ring full and no room to spill (--record-slots): folded in the kernel, where walked bytes may count twice.",
            &[("", g(&self.records_spill_full))],
        );
        metric(
            "synack_retransmissions_recovered_total",
            "counter",
            "SYN-ACK retransmissions of completed handshakes the kernel made without running the SYN-ACK program: counted from the accepted socket.",
            &[("", g(&self.synack_retransmissions_recovered))],
        );
        metric(
            "flows_tracked",
            "gauge",
            "Flow keys in the kernel map at the last window end.",
            &[("", g(&self.flows_tracked))],
        );
        metric(
            "sockets_tracked",
            "gauge",
            "Open sockets in the kernel map at the last window end.",
            &[("", g(&self.sockets_tracked))],
        );
        metric(
            "walked_namespaces",
            "gauge",
            "Network namespaces whose open sockets the walk folds (the agent's own, --walk-netns ones, and those \
             --walk-netns-all found); 0 without the walk.",
            &[("", g(&self.walked_namespaces))],
        );
        metric(
            "spool_reports",
            "gauge",
            "Reports in the spool not yet delivered to every destination.",
            &[("", g(&self.spool_reports))],
        );
        metric("spool_bytes", "gauge", "Bytes of the reports in the spool.", &[("", g(&self.spool_bytes))]);
        metric(
            "spool_dropped_reports_total",
            "counter",
            "Reports dropped from the spool (oldest first) to stay within spool_max_bytes.",
            &[("", g(&self.spool_dropped))],
        );
        metric(
            "spool_quarantined_total",
            "counter",
            "Spool files that could not be read back and were moved to quarantine/.",
            &[("", g(&self.spool_quarantined))],
        );
        let dests: Vec<(&'static str, Arc<DestinationMetrics>)> =
            self.destinations.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (*k, v.clone())).collect();
        let per = |f: &dyn Fn(&DestinationMetrics) -> u64| -> Vec<(String, u64)> {
            dests.iter().map(|(n, d)| (format!("{{destination=\"{n}\"}}"), f(d))).collect()
        };
        let table = [
            ("deliveries_total", "counter", "Reports delivered.", per(&|d| g(&d.deliveries))),
            ("delivery_failures_total", "counter", "Failed delivery attempts (retried).", per(&|d| g(&d.failures))),
            (
                "rejections_total",
                "counter",
                "Reports the destination refused for good (not retried).",
                per(&|d| g(&d.rejections)),
            ),
            (
                "last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last successful delivery (0: none yet).",
                per(&|d| g(&d.last_success)),
            ),
            (
                "destination_dropped_reports_total",
                "counter",
                "Reports dropped from the spool before this destination delivered them.",
                per(&|d| g(&d.dropped)),
            ),
        ];
        for (name, kind, help, samples) in &table {
            let samples: Vec<(&str, u64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
            metric(name, kind, help, &samples);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.destination("backend").deliveries.fetch_add(3, Relaxed);
        m.spool_bytes.store(1234, Relaxed);
        m.ring_full.store(5, Relaxed);
        let t = m.render();
        assert!(
            t.contains(
                "# TYPE flow_agent_deliveries_total counter\nflow_agent_deliveries_total{destination=\"backend\"} 3\n"
            ),
            "{t}"
        );
        assert!(t.contains("\nflow_agent_spool_bytes 1234\n"), "{t}");
        assert!(t.contains("\nflow_agent_ring_full_total 5\n"), "{t}");
        assert!(t.contains("flow_agent_map_full_total{map=\"flows\"} 0\n"), "{t}");
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("flow_agent_") && value.parse::<u64>().is_ok(), "{line}");
        }
    }
}
