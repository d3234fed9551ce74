//! The report schema: what the agent prints in dry-run and ships to the backend. JSON, snake_case.
//! Shared by `agent` (producer) and `backend` (consumer); `SCHEMA_VERSION` changes on breaking edits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

/// One report: everything the agent saw in one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Unique per report (UUID v4); the backend stores a report once per id.
    pub report_id: String,
    pub schema_version: u32,
    pub window: Window,
    pub agent: AgentInfo,
    /// The flows that matter most (`--top-flows`), whole.
    pub flows: Vec<FlowRecord>,
    /// Everything else, summed, so that window totals are conserved.
    pub other: OtherFlows,
    pub agent_stats: AgentStats,
}

/// A window `[start, end)`, aligned to wall-clock multiples of the report interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentInfo {
    pub version: String,
    pub hostname: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// This host opened the connection.
    Client,
    /// This host accepted the connection.
    Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
}

/// Destination category, as the Network Flow Monitor API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DestinationCategory {
    IntraAz,
    InterAz,
    InterVpc,
    InterRegion,
    AmazonS3,
    AmazonDynamodb,
    Unclassified,
}

/// One flow: the key, where it runs (enrichment; absent until known) and its counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub protocol: Protocol,
    pub local_ip: std::net::IpAddr,
    pub remote_ip: std::net::IpAddr,
    /// Client flows: the remote port. Server flows: the local port.
    pub target_port: u16,
    pub role: Role,
    #[serde(flatten)]
    pub enrichment: Enrichment,
    #[serde(flatten)]
    pub metrics: FlowMetrics,
}

/// Where a flow runs and what it talks to, in the terms of MonitorTopContributorsRow.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_instance_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_subnet_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_vpc_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_az: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_instance_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_subnet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_subnet_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_vpc_arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_az: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_category: Option<DestinationCategory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnat_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesMetadata>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_service_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_service_name: Option<String>,
}

/// Counters of one flow (or of the `other` bucket) over one window. Long-lived sockets contribute
/// their per-window deltas.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowMetrics {
    pub connections: Connections,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub rtt_us: LatencySummary,
    pub handshake_us: LatencySummary,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// Connects started (client) or connections accepted (server).
    pub attempted: u64,
    pub established: u64,
    /// Established connections that ended in this window.
    pub closed: u64,
    /// Connections that ended before being established.
    pub failed: u64,
    /// Of `failed`: refused by a RST.
    pub refused: u64,
    /// Of `failed` and `closed`: ended because retransmissions timed out.
    pub timed_out: u64,
    /// Of `closed`: ended by a reset.
    pub reset: u64,
    /// Established connections open at the end of the window.
    pub active: u64,
}

/// Summary of latency samples in microseconds. Percentiles and min/max come from log-linear
/// buckets (each at most 25% wide, see `hist`); `mean` is exact.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    /// The non-empty histogram buckets the summary was computed from, by increasing bound (for
    /// exporters that ship histograms: OTLP, Prometheus). Absent in reports of older agents.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<LatencyBucket>,
}

/// One histogram bucket: `count` samples of at most `le` microseconds and above the previous
/// bucket's bound (the kernel's log-linear buckets, see `hist`). `le` absent: no upper bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBucket {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub le: Option<u64>,
    pub count: u64,
}

/// The flows beyond `--top-flows`, summed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OtherFlows {
    /// How many flows were folded in here.
    pub flows: u64,
    #[serde(flatten)]
    pub metrics: FlowMetrics,
}

/// The agent's own health over the window; counters are per window, gauges at window end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentStats {
    /// Kernel program invocations that did work.
    pub events: u64,
    pub ringbuf_drops: u64,
    /// Failed map inserts (map full), per map. Never silent.
    pub map_full: MapFull,
    /// Events on sockets the agent could not track (SOCKETS was full when they opened).
    pub untracked_events: u64,
    /// Runs of the agent's kernel programs that the kernel skipped, because another BPF program
    /// or a BPF system call held the CPU (the programs' `recursion_misses`): what they would
    /// have counted is missing. Absent in reports of older agents.
    #[serde(default)]
    pub missed_runs: u64,
    /// Open sockets the window's walks passed over as idle: nothing sent or received since the
    /// walk before (walk mode; see `--walk-full-interval`). Absent in reports of older agents.
    #[serde(default)]
    pub walk_idle_sockets: u64,
    /// Connection records that found their CPU's ring full (walk mode, `--record-slots`): those
    /// events were folded in the kernel instead, so nothing is missing, but the agent is not
    /// reading the rings fast enough. Absent in reports of older agents.
    #[serde(default)]
    pub ring_full: u64,
    /// Connection records of walked sockets that found their ring full and no room to spill
    /// either (`--record-slots`): folded in the kernel, where bytes the walk handed the agent
    /// before may count twice. 0 unless the agent stops reading the rings. Absent in reports of
    /// older agents.
    #[serde(default)]
    pub records_spill_full: u64,
    /// SYN-ACK retransmissions of completed handshakes that the kernel made without running the
    /// agent's SYN-ACK program for them (a skipped run, in `missed_runs` too, or no run at all):
    /// counted all the same, from the accepted socket, which inherits its request's count.
    /// Included in the flows' retransmissions. Absent in reports of older agents.
    #[serde(default)]
    pub synack_retransmissions_recovered: u64,
    /// Flow keys in the kernel map at window end.
    pub flows_tracked: u64,
    /// Open sockets in the kernel map at window end.
    pub sockets_tracked: u64,
    /// Agent CPU time (user + system) spent in the window.
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    /// Reports the agent's spool dropped (oldest first, beyond `--spool-max-bytes`) before this
    /// report's destination could deliver them, since the last report it delivered. Absent in
    /// reports of older agents.
    #[serde(default)]
    pub spool_dropped_reports: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFull {
    pub sockets: u64,
    pub flows: u64,
    pub listeners: u64,
}

impl MapFull {
    pub fn total(&self) -> u64 {
        self.sockets + self.flows + self.listeners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_fields() {
        let r = Report {
            report_id: "5f0c6f5e-1a51-4f55-9d0c-2b8f0a1c9e11".into(),
            schema_version: SCHEMA_VERSION,
            window: Window {
                start: "2026-11-22T10:00:00Z".parse().unwrap(),
                end: "2026-11-22T10:00:30Z".parse().unwrap(),
            },
            agent: AgentInfo { version: "0.1.0".into(), hostname: "h".into() },
            flows: vec![FlowRecord {
                protocol: Protocol::Tcp,
                local_ip: "10.0.0.1".parse().unwrap(),
                remote_ip: "10.0.0.2".parse().unwrap(),
                target_port: 443,
                role: Role::Client,
                enrichment: Enrichment {
                    destination_category: Some(DestinationCategory::IntraAz),
                    ..Default::default()
                },
                metrics: FlowMetrics {
                    bytes_sent: 10,
                    rtt_us: LatencySummary {
                        count: 3,
                        buckets: vec![LatencyBucket { le: Some(111), count: 1 }, LatencyBucket { le: None, count: 2 }],
                        ..Default::default()
                    },
                    ..Default::default()
                },
            }],
            other: OtherFlows::default(),
            agent_stats: AgentStats::default(),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"destination_category\":\"INTRA_AZ\""), "{s}");
        assert!(s.contains("\"role\":\"client\""), "{s}");
        assert!(s.contains("\"buckets\":[{\"le\":111,\"count\":1},{\"count\":2}]"), "{s}");
        let back: Report = serde_json::from_str(&s).unwrap();
        assert_eq!(back, r);
        // Reports without buckets (older agents) still parse.
        let old = s.replace(",\"buckets\":[{\"le\":111,\"count\":1},{\"count\":2}]", "");
        assert!(!old.contains("buckets"));
        assert!(serde_json::from_str::<Report>(&old).unwrap().flows[0].metrics.rtt_us.buckets.is_empty());
        // A misspelt counter is a missing field (flattened structs) or an unknown one.
        let bad = s.replacen("\"bytes_sent\"", "\"bytes_snet\"", 1);
        let err = serde_json::from_str::<Report>(&bad).unwrap_err().to_string();
        assert!(err.contains("bytes_sent"), "{err}");
        // Reports of agents without the spool field still parse.
        let old = s.replacen(",\"spool_dropped_reports\":0", "", 1);
        assert_ne!(old, s);
        assert_eq!(serde_json::from_str::<Report>(&old).unwrap(), r);
        let bad = s.replacen("\"attempted\"", "\"attemptd\"", 1);
        let err = serde_json::from_str::<Report>(&bad).unwrap_err().to_string();
        assert!(err.contains("attemptd"), "{err}");
    }
}
