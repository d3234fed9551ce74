//! The flow-log records of one aggregation interval.
//!
//! A flow key (local ip, remote ip, target port, role) becomes two unidirectional records, as flow
//! logs record traffic: `egress` (local -> remote: segments and payload bytes sent) and `ingress`
//! (remote -> local: received). The port of the connection's server side is the target port; the
//! client's ephemeral port is not kept by the agent and prints `-`. `start`/`end` are the bounds of
//! the first and last report window of the interval in which the direction carried segments.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use agent_common::report::{Enrichment, FlowRecord, Report, Role};
use chrono::{DateTime, Utc};

use super::{Format, fields::Field};

/// Settings the records need that no flow carries.
#[derive(Clone, Debug, Default)]
pub struct Meta {
    pub account_id: Option<String>,
    pub region: Option<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Direction {
    Egress,
    Ingress,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RecordKey {
    local: IpAddr,
    remote: IpAddr,
    target_port: u16,
    role: Role,
    direction: Direction,
}

#[derive(Clone, Debug)]
struct Acc {
    packets: u64,
    bytes: u64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    enrichment: Enrichment,
}

/// Records of one interval `[start, start + length)`, aligned to wall-clock multiples of length.
pub struct Interval {
    pub start: DateTime<Utc>,
    length: Duration,
    /// End of the last window added.
    last_end: DateTime<Utc>,
    records: BTreeMap<RecordKey, Acc>,
}

impl Interval {
    pub fn new(start: DateTime<Utc>, length: Duration) -> Self {
        Interval { start, length, last_end: start, records: BTreeMap::new() }
    }

    /// The nominal end of the interval.
    pub fn end(&self) -> DateTime<Utc> {
        self.start + chrono::TimeDelta::from_std(self.length).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// Add every flow of a report (whose window lies within the interval).
    pub fn add(&mut self, report: &Report) {
        self.last_end = self.last_end.max(report.window.end);
        for f in &report.flows {
            let m = &f.metrics;
            self.add_direction(f, Direction::Egress, m.segments_sent, m.bytes_sent, report);
            self.add_direction(f, Direction::Ingress, m.segments_received, m.bytes_received, report);
        }
    }

    fn add_direction(&mut self, f: &FlowRecord, direction: Direction, packets: u64, bytes: u64, report: &Report) {
        if packets == 0 && bytes == 0 {
            return;
        }
        let key =
            RecordKey { local: f.local_ip, remote: f.remote_ip, target_port: f.target_port, role: f.role, direction };
        let (ws, we) = (report.window.start, report.window.end);
        let acc = self.records.entry(key).or_insert_with(|| Acc {
            packets: 0,
            bytes: 0,
            start: ws,
            end: we,
            enrichment: f.enrichment.clone(),
        });
        acc.packets += packets;
        acc.bytes += bytes;
        acc.start = acc.start.min(ws);
        acc.end = acc.end.max(we);
    }

    /// One line per record, fields in the format's order; a single NODATA record when no traffic
    /// was seen in the interval.
    pub fn render(&self, format: &Format, meta: &Meta) -> Vec<String> {
        if self.records.is_empty() {
            let line: Vec<String> = format.fields.iter().map(|f| self.nodata_value(*f, format, meta)).collect();
            return vec![line.join(" ")];
        }
        self.records
            .iter()
            .map(|(k, a)| {
                let line: Vec<String> = format.fields.iter().map(|f| value(*f, k, a, format, meta)).collect();
                line.join(" ")
            })
            .collect()
    }

    fn nodata_value(&self, field: Field, format: &Format, meta: &Meta) -> String {
        match field {
            Field::Version => format.version().to_string(),
            Field::AccountId => or_dash(meta.account_id.as_deref()),
            Field::Region => or_dash(meta.region.as_deref()),
            Field::Start => unix(self.start),
            Field::End => unix(self.last_end),
            Field::LogStatus => "NODATA".into(),
            _ => "-".into(),
        }
    }
}

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

fn unix(t: DateTime<Utc>) -> String {
    t.timestamp().to_string()
}

fn value(field: Field, k: &RecordKey, a: &Acc, format: &Format, meta: &Meta) -> String {
    let egress = k.direction == Direction::Egress;
    let (src, dst) = if egress { (k.local, k.remote) } else { (k.remote, k.local) };
    // The server side's port is the target port; the client's ephemeral port is not known.
    let src_is_server = egress == (k.role == Role::Server);
    let port = |is_server: bool| if is_server { k.target_port.to_string() } else { "-".to_string() };
    let e = &a.enrichment;
    match field {
        Field::Version => format.version().to_string(),
        Field::AccountId => or_dash(meta.account_id.as_deref()),
        Field::SrcAddr | Field::PktSrcAddr => src.to_string(),
        Field::DstAddr | Field::PktDstAddr => dst.to_string(),
        Field::SrcPort => port(src_is_server),
        Field::DstPort => port(!src_is_server),
        Field::Protocol => "6".into(),
        Field::Packets => a.packets.to_string(),
        Field::Bytes => a.bytes.to_string(),
        Field::Start => unix(a.start),
        Field::End => unix(a.end),
        Field::Action => "ACCEPT".into(),
        Field::LogStatus => "OK".into(),
        Field::VpcId => or_dash(e.local_vpc_id.as_deref()),
        Field::SubnetId => or_dash(e.local_subnet_id.as_deref()),
        Field::InstanceId => or_dash(e.local_instance_id.as_deref()),
        Field::Region => or_dash(e.local_region.as_deref().or(meta.region.as_deref())),
        Field::AzId => or_dash(e.local_az.as_deref()),
        Field::Type => if src.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
        Field::FlowDirection => if egress { "egress" } else { "ingress" }.into(),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::report::{AgentInfo, AgentStats, FlowMetrics, OtherFlows, Protocol, Window};

    fn report(start: &str, end: &str, flows: Vec<FlowRecord>) -> Report {
        Report {
            report_id: "r".into(),
            schema_version: 1,
            window: Window { start: start.parse().unwrap(), end: end.parse().unwrap() },
            agent: AgentInfo { version: "0".into(), hostname: "h".into() },
            flows,
            other: OtherFlows::default(),
            agent_stats: AgentStats::default(),
        }
    }

    fn flow(role: Role, sent: u64, received: u64) -> FlowRecord {
        FlowRecord {
            protocol: Protocol::Tcp,
            local_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.2".parse().unwrap(),
            target_port: 443,
            role,
            enrichment: Enrichment::default(),
            metrics: FlowMetrics {
                bytes_sent: sent,
                bytes_received: received,
                segments_sent: sent.div_ceil(100),
                segments_received: received.div_ceil(100),
                ..Default::default()
            },
        }
    }

    fn interval() -> Interval {
        Interval::new("2026-11-22T10:00:00Z".parse().unwrap(), Duration::from_secs(60))
    }

    #[test]
    fn a_flow_key_is_two_directional_records_summed_over_windows() {
        let mut i = interval();
        i.add(&report("2026-11-22T10:00:10Z", "2026-11-22T10:00:20Z", vec![flow(Role::Client, 1000, 300)]));
        i.add(&report("2026-11-22T10:00:20Z", "2026-11-22T10:00:30Z", vec![flow(Role::Client, 500, 0)]));
        let fmt = Format::parse(
            "${srcaddr} ${srcport} ${dstaddr} ${dstport} ${packets} ${bytes} ${start} ${end} ${flow-direction} ${type} ${vpc-id}",
        )
        .unwrap();
        assert_eq!(
            i.render(&fmt, &Meta::default()),
            vec![
                "10.0.0.1 - 10.0.0.2 443 15 1500 1795341610 1795341630 egress IPv4 -",
                "10.0.0.2 443 10.0.0.1 - 3 300 1795341610 1795341620 ingress IPv4 -",
            ]
        );
    }

    #[test]
    fn server_flows_put_the_port_on_the_local_side() {
        let mut i = interval();
        i.add(&report("2026-11-22T10:00:10Z", "2026-11-22T10:00:20Z", vec![flow(Role::Server, 10, 20)]));
        let fmt = Format::parse("${srcport} ${dstport} ${flow-direction}").unwrap();
        assert_eq!(i.render(&fmt, &Meta::default()), vec!["443 - egress", "- 443 ingress"]);
    }

    #[test]
    fn an_interval_without_traffic_is_one_nodata_record() {
        let mut i = interval();
        i.add(&report("2026-11-22T10:00:50Z", "2026-11-22T10:01:00Z", vec![]));
        let meta = Meta { account_id: Some("123456789012".into()), region: None };
        assert_eq!(
            i.render(&Format::default(), &meta),
            vec!["2 123456789012 - - - - - - - - 1795341600 1795341660 - NODATA"]
        );
    }
}
