//! What a report exports as metrics, shared by the OTLP and Prometheus remote-write destinations:
//! a flow's identity as labels, the per-flow counters and gauges, the agent's own stats, and the
//! latency histograms rebuilt from the report's buckets.

use agent_common::{
    hist::{HIST_BUCKETS, bucket_bounds},
    report::{AgentStats, FlowMetrics, FlowRecord, LatencySummary},
};

/// Label (attribute) marking the series that sums the flows beyond the top-N.
pub const OTHER_LABEL: (&str, &str) = ("other", "true");

/// A flow's identity: its key, then every enrichment field the report has (ARNs are left out:
/// the ids name the same things). Names are the report's field names, valid as Prometheus labels.
pub fn flow_labels(f: &FlowRecord) -> Vec<(&'static str, String)> {
    let mut l = vec![
        ("protocol", "TCP".to_string()),
        ("local_ip", f.local_ip.to_string()),
        ("remote_ip", f.remote_ip.to_string()),
        ("target_port", f.target_port.to_string()),
        ("role", serde_name(&f.role)),
    ];
    let e = &f.enrichment;
    let optional = [
        ("local_instance_id", &e.local_instance_id),
        ("local_subnet_id", &e.local_subnet_id),
        ("local_vpc_id", &e.local_vpc_id),
        ("local_az", &e.local_az),
        ("local_region", &e.local_region),
        ("remote_instance_id", &e.remote_instance_id),
        ("remote_subnet_id", &e.remote_subnet_id),
        ("remote_vpc_id", &e.remote_vpc_id),
        ("remote_az", &e.remote_az),
        ("remote_region", &e.remote_region),
        ("snat_ip", &e.snat_ip),
        ("dnat_ip", &e.dnat_ip),
    ];
    l.extend(optional.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
    if let Some(c) = &e.destination_category {
        l.push(("destination_category", serde_name(c)));
    }
    if let Some(k) = &e.kubernetes {
        let kube = [
            ("local_pod_name", &k.local_pod_name),
            ("local_pod_namespace", &k.local_pod_namespace),
            ("local_service_name", &k.local_service_name),
            ("remote_pod_name", &k.remote_pod_name),
            ("remote_pod_namespace", &k.remote_pod_namespace),
            ("remote_service_name", &k.remote_service_name),
        ];
        l.extend(kube.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))));
    }
    // Empty values mean "absent" to Prometheus; drop them everywhere for one identity.
    l.retain(|(_, v)| !v.is_empty());
    l
}

/// How an enum is spelt in the report (e.g. "client", "INTRA_AZ").
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One per-window counter of a flow.
pub struct Counter {
    /// OTLP metric name.
    pub otlp: &'static str,
    /// Prometheus metric name (cumulative, with `_total`).
    pub prom: &'static str,
    /// UCUM unit for OTLP.
    pub unit: &'static str,
    pub help: &'static str,
    pub get: fn(&FlowMetrics) -> u64,
}

pub const FLOW_COUNTERS: &[Counter] = &[
    Counter {
        otlp: "flow.bytes.sent",
        prom: "flow_agent_bytes_sent_total",
        unit: "By",
        help: "TCP payload bytes sent",
        get: |m| m.bytes_sent,
    },
    Counter {
        otlp: "flow.bytes.received",
        prom: "flow_agent_bytes_received_total",
        unit: "By",
        help: "TCP payload bytes received",
        get: |m| m.bytes_received,
    },
    Counter {
        otlp: "flow.segments.sent",
        prom: "flow_agent_segments_sent_total",
        unit: "{segment}",
        help: "TCP segments sent",
        get: |m| m.segments_sent,
    },
    Counter {
        otlp: "flow.segments.received",
        prom: "flow_agent_segments_received_total",
        unit: "{segment}",
        help: "TCP segments received",
        get: |m| m.segments_received,
    },
    Counter {
        otlp: "flow.retransmissions",
        prom: "flow_agent_retransmissions_total",
        unit: "{segment}",
        help: "TCP segments retransmitted",
        get: |m| m.retransmissions,
    },
    Counter {
        otlp: "flow.timeouts",
        prom: "flow_agent_timeouts_total",
        unit: "{timeout}",
        help: "TCP retransmission timeouts",
        get: |m| m.timeouts,
    },
    Counter {
        otlp: "flow.connections.attempted",
        prom: "flow_agent_connections_attempted_total",
        unit: "{connection}",
        help: "Connects started (client) or connections accepted (server)",
        get: |m| m.connections.attempted,
    },
    Counter {
        otlp: "flow.connections.established",
        prom: "flow_agent_connections_established_total",
        unit: "{connection}",
        help: "Connections established",
        get: |m| m.connections.established,
    },
    Counter {
        otlp: "flow.connections.closed",
        prom: "flow_agent_connections_closed_total",
        unit: "{connection}",
        help: "Established connections that ended",
        get: |m| m.connections.closed,
    },
    Counter {
        otlp: "flow.connections.failed",
        prom: "flow_agent_connections_failed_total",
        unit: "{connection}",
        help: "Connections that ended before being established",
        get: |m| m.connections.failed,
    },
    Counter {
        otlp: "flow.connections.refused",
        prom: "flow_agent_connections_refused_total",
        unit: "{connection}",
        help: "Failed connections refused by a reset",
        get: |m| m.connections.refused,
    },
    Counter {
        otlp: "flow.connections.timed_out",
        prom: "flow_agent_connections_timed_out_total",
        unit: "{connection}",
        help: "Connections ended because retransmissions timed out",
        get: |m| m.connections.timed_out,
    },
    Counter {
        otlp: "flow.connections.reset",
        prom: "flow_agent_connections_reset_total",
        unit: "{connection}",
        help: "Established connections ended by a reset",
        get: |m| m.connections.reset,
    },
];

/// The open-connections gauge of a flow.
pub const ACTIVE: (&str, &str) = ("flow.connections.active", "flow_agent_connections_active");

/// A flow's latency histograms: (OTLP name, Prometheus base name, which summary).
pub type LatencyOf = fn(&FlowMetrics) -> &LatencySummary;
pub const LATENCIES: &[(&str, &str, LatencyOf)] = &[
    ("flow.rtt", "flow_agent_rtt_seconds", |m| &m.rtt_us),
    ("flow.handshake.duration", "flow_agent_handshake_seconds", |m| &m.handshake_us),
];

/// How many counters of the agent itself there are (`agent_counters`).
pub const AGENT_COUNTERS: usize = 12;

/// Counters of the agent itself (per window in the report): (OTLP name, Prometheus name, value).
pub fn agent_counters(s: &AgentStats) -> [(&'static str, &'static str, f64); AGENT_COUNTERS] {
    [
        ("flow_agent.events", "flow_agent_events_total", s.events as f64),
        ("flow_agent.ringbuf_drops", "flow_agent_ringbuf_drops_total", s.ringbuf_drops as f64),
        ("flow_agent.map_full.sockets", "flow_agent_map_full_sockets_total", s.map_full.sockets as f64),
        ("flow_agent.map_full.flows", "flow_agent_map_full_flows_total", s.map_full.flows as f64),
        ("flow_agent.map_full.listeners", "flow_agent_map_full_listeners_total", s.map_full.listeners as f64),
        ("flow_agent.untracked_events", "flow_agent_untracked_events_total", s.untracked_events as f64),
        ("flow_agent.missed_runs", "flow_agent_missed_runs_total", s.missed_runs as f64),
        ("flow_agent.walk.idle_sockets", "flow_agent_walk_idle_sockets_total", s.walk_idle_sockets as f64),
        ("flow_agent.records.ring_full", "flow_agent_ring_full_total", s.ring_full as f64),
        ("flow_agent.records.spill_full", "flow_agent_records_spill_full_total", s.records_spill_full as f64),
        (
            "flow_agent.synack.retransmissions_recovered",
            "flow_agent_synack_retransmissions_recovered_total",
            s.synack_retransmissions_recovered as f64,
        ),
        ("flow_agent.cpu.time", "flow_agent_cpu_seconds_total", s.cpu_seconds),
    ]
}

/// Gauges of the agent itself at window end: (OTLP name, Prometheus name, unit, value).
pub fn agent_gauges(s: &AgentStats) -> [(&'static str, &'static str, &'static str, f64); 3] {
    [
        ("flow_agent.flows_tracked", "flow_agent_flows_tracked", "{flow}", s.flows_tracked as f64),
        ("flow_agent.sockets_tracked", "flow_agent_sockets_tracked", "{socket}", s.sockets_tracked as f64),
        ("flow_agent.memory.rss", "flow_agent_rss_bytes", "By", s.rss_bytes as f64),
    ]
}

/// Gauge of how many flows the `other` series sums in a window.
pub const OTHER_FLOWS: (&str, &str) = ("flow.other.flows", "flow_agent_other_flows");

/// Every kernel bucket's count, in bucket order (the report lists only non-empty buckets, each by
/// its bound). `None` when the report carries no buckets (an older agent) but has samples.
pub fn kernel_buckets(l: &LatencySummary) -> Option<Vec<u64>> {
    if l.count > 0 && l.buckets.is_empty() {
        return None;
    }
    let mut counts = vec![0u64; HIST_BUCKETS];
    for b in &l.buckets {
        let idx = match b.le {
            // The bucket whose inclusive upper bound is `le`; a bound that is not one of ours
            // (another agent version) goes to the first bucket that holds it.
            Some(le) => (0..HIST_BUCKETS - 1).find(|&i| le < bucket_bounds(i).1).unwrap_or(HIST_BUCKETS - 1),
            None => HIST_BUCKETS - 1,
        };
        counts[idx] = counts[idx].saturating_add(b.count);
    }
    Some(counts)
}

/// Inclusive upper bounds of the kernel buckets but the last, in seconds (OTLP explicit bounds):
/// bucket `i` holds whole microseconds `v <= bound(i)`, so these bounds are exact.
pub fn kernel_bounds_seconds() -> Vec<f64> {
    (0..HIST_BUCKETS - 1).map(|i| (bucket_bounds(i).1 - 1) as f64 / 1e6).collect()
}

/// Sum of the samples in seconds (the mean is exact, so this is too, up to float rounding).
pub fn sum_seconds(l: &LatencySummary) -> f64 {
    (l.mean * l.count as f64).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{
        hist::bucket_index,
        report::{DestinationCategory, Enrichment, KubernetesMetadata, LatencyBucket, Protocol, Role},
    };

    pub fn record() -> FlowRecord {
        FlowRecord {
            protocol: Protocol::Tcp,
            local_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "fd00::2".parse().unwrap(),
            target_port: 443,
            role: Role::Client,
            enrichment: Enrichment {
                local_az: Some("use1-az1".into()),
                remote_vpc_id: Some(String::new()),
                destination_category: Some(DestinationCategory::InterAz),
                kubernetes: Some(KubernetesMetadata { local_pod_name: Some("web-0".into()), ..Default::default() }),
                ..Default::default()
            },
            metrics: FlowMetrics::default(),
        }
    }

    #[test]
    fn labels_name_the_flow_and_skip_empty_values() {
        let l = flow_labels(&record());
        let get = |k: &str| l.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("remote_ip"), Some("fd00::2"));
        assert_eq!(get("role"), Some("client"));
        assert_eq!(get("destination_category"), Some("INTER_AZ"));
        assert_eq!(get("local_pod_name"), Some("web-0"));
        assert_eq!(get("local_az"), Some("use1-az1"));
        assert_eq!(get("remote_vpc_id"), None);
    }

    #[test]
    fn buckets_rebuild_and_bounds_are_exact() {
        let values = [0u64, 5, 127, 128, 5000, 1 << 40];
        let mut counts = vec![0u64; HIST_BUCKETS];
        for v in values {
            counts[bucket_index(v)] += 1;
        }
        let bounds = kernel_bounds_seconds();
        let buckets: Vec<LatencyBucket> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| LatencyBucket { le: bounds.get(i).map(|b| (b * 1e6).round() as u64), count: *c })
            .collect();
        let l = LatencySummary { count: values.len() as u64, buckets, ..Default::default() };
        assert_eq!(kernel_buckets(&l).unwrap(), counts);
        // Each value is within its bucket's bound and above the previous one.
        for v in values {
            let i = bucket_index(v);
            let s = v as f64 / 1e6;
            assert!(i == HIST_BUCKETS - 1 || s <= bounds[i], "v={v}");
            assert!(i == 0 || s > bounds[i - 1], "v={v}");
        }
        assert_eq!(kernel_buckets(&LatencySummary { count: 3, ..Default::default() }), None);
    }
}
