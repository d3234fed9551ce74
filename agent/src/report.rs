//! Building a report from a closed window.

use std::net::{IpAddr, Ipv6Addr};

use agent_common::{
    maps::{Addr, FlowKey, ROLE_SERVER, stat},
    report::{
        AgentInfo, AgentStats, Enrichment, FlowMetrics, FlowRecord, MapFull, OtherFlows, Protocol, Report, Role,
        SCHEMA_VERSION, Window,
    },
};
use chrono::{DateTime, Utc};

use crate::aggregate::{ClosedWindow, FlowWindow, rank, summarize};

/// An address as reported: v4-mapped IPv6 shown as IPv4.
pub fn ip(addr: &Addr) -> IpAddr {
    let mut b = [0u8; 16];
    for (chunk, w) in b.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn metrics(w: &FlowWindow) -> FlowMetrics {
    FlowMetrics {
        connections: w.connections,
        bytes_sent: w.bytes_sent,
        bytes_received: w.bytes_received,
        segments_sent: w.segments_sent,
        segments_received: w.segments_received,
        retransmissions: w.retransmissions,
        timeouts: w.timeouts,
        rtt_us: summarize(&w.rtt_us),
        handshake_us: summarize(&w.handshake_us),
    }
}

fn record(key: &FlowKey, w: &FlowWindow) -> FlowRecord {
    FlowRecord {
        protocol: Protocol::Tcp,
        local_ip: ip(&key.local_ip),
        remote_ip: ip(&key.remote_ip),
        target_port: key.target_port,
        role: if key.role == ROLE_SERVER { Role::Server } else { Role::Client },
        enrichment: Enrichment::default(),
        metrics: metrics(w),
    }
}

/// Process usage to put in `agent_stats`.
pub struct Usage {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

pub fn build(window: (DateTime<Utc>, DateTime<Utc>), closed: ClosedWindow, top_flows: usize, usage: Usage) -> Report {
    let s = |i: u32| closed.stats[i as usize];
    let top = rank(closed.flows, top_flows);
    Report {
        report_id: uuid::Uuid::new_v4().to_string(),
        schema_version: SCHEMA_VERSION,
        window: Window { start: window.0, end: window.1 },
        agent: AgentInfo { version: env!("CARGO_PKG_VERSION").to_string(), hostname: crate::sys::hostname() },
        flows: top.top.iter().map(|(k, w)| record(k, w)).collect(),
        other: OtherFlows { flows: top.other_flows, metrics: metrics(&top.other) },
        agent_stats: AgentStats {
            events: s(stat::EVENTS),
            ringbuf_drops: s(stat::RINGBUF_DROPS),
            map_full: MapFull {
                sockets: s(stat::SOCKETS_FULL),
                flows: s(stat::FLOWS_FULL),
                listeners: s(stat::LISTENERS_FULL),
            },
            untracked_events: s(stat::UNTRACKED_EVENTS),
            missed_runs: s(stat::MISSED_RUNS),
            walk_idle_sockets: s(stat::WALK_IDLE),
            ring_full: s(stat::RING_FULL),
            records_spill_full: s(stat::SPILL_FULL),
            synack_retransmissions_recovered: s(stat::SYNACK_RECOVERED),
            flows_tracked: closed.flows_tracked,
            sockets_tracked: closed.sockets_tracked,
            cpu_seconds: usage.cpu_seconds,
            rss_bytes: usage.rss_bytes,
            // Filled in per destination when the report leaves the spool.
            spool_dropped_reports: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::maps::v4_mapped;

    #[test]
    fn v4_mapped_reads_as_v4() {
        assert_eq!(ip(&v4_mapped(u32::from_ne_bytes([10, 1, 2, 3]))).to_string(), "10.1.2.3");
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        let o = v6.octets();
        let a: Addr = std::array::from_fn(|i| u32::from_ne_bytes(o[i * 4..i * 4 + 4].try_into().unwrap()));
        assert_eq!(ip(&a).to_string(), "fd00::1");
    }
}
