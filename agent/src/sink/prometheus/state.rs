//! Cumulative series for Prometheus: reports carry per-window deltas, Prometheus wants counters
//! that only grow (for `rate()`), so totals are kept in memory since agent start.
//!
//! Bounded: at most `max_flows` flows have series of their own; further flows are summed into
//! the `other` series (their totals are not lost, only their identity). A flow absent from
//! `stale_after` reports in a row is dropped, with a staleness marker, so that memory follows the
//! live flows. A new series starts with a 0 sample at its window's start, so that `increase()`
//! sees its first window whole.

use std::collections::{BTreeMap, HashMap};

use agent_common::report::{FlowMetrics, LatencySummary, Report};

use super::wire::{Label, MetricMetadata, MetricType, STALE_NAN, Sample, TimeSeries};
use crate::sink::exported::{
    ACTIVE, AGENT_COUNTERS, FLOW_COUNTERS, LATENCIES, OTHER_FLOWS, OTHER_LABEL, agent_counters, agent_gauges,
    flow_labels, sum_seconds,
};

/// Histogram bucket bounds (`le`) in microseconds: every power of two from 32 us to 33.5 s.
/// The kernel's buckets are half-open `[lo, hi)` with these among their edges, so bucket `le=B`
/// counts the samples below B us (one at exactly B us counts in the next bucket).
pub const LE_US: [u64; 21] = {
    let mut b = [0u64; 21];
    let mut i = 0;
    while i < 21 {
        b[i] = 1 << (i + 5);
        i += 1;
    }
    b
};

type FlowKey = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Default)]
struct CumHist {
    count: u64,
    sum: f64,
    /// Samples below each `LE_US` bound.
    below: [u64; LE_US.len()],
}

impl CumHist {
    fn add(&mut self, l: &LatencySummary) {
        self.count += l.count;
        self.sum += sum_seconds(l);
        // Without buckets (an older agent's report) only +Inf, _count and _sum grow.
        for b in &l.buckets {
            if let Some(le) = b.le {
                for (i, bound) in LE_US.iter().enumerate() {
                    if le < *bound {
                        self.below[i] += b.count;
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Totals {
    counters: [u64; FLOW_COUNTERS.len()],
    active: u64,
    latency: [CumHist; LATENCIES.len()],
    /// Report sequence number of the last change.
    seen: u64,
    /// Created by the current report: gets a 0 sample at window start.
    fresh: bool,
}

impl Totals {
    fn add(&mut self, m: &FlowMetrics) {
        for (t, c) in self.counters.iter_mut().zip(FLOW_COUNTERS) {
            *t = t.saturating_add((c.get)(m));
        }
        self.active = m.connections.active;
        for (h, (_, _, of)) in self.latency.iter_mut().zip(LATENCIES) {
            h.add(of(m));
        }
    }
}

pub struct State {
    max_flows: usize,
    stale_after: u64,
    seq: u64,
    flows: HashMap<FlowKey, Totals>,
    other: Totals,
    /// Flow-windows summed into `other` because `max_flows` was reached.
    folded: u64,
    agent: [f64; AGENT_COUNTERS],
}

/// The series of one report, ready to send.
pub struct Batch {
    pub series: Vec<TimeSeries>,
    pub metadata: Vec<MetricMetadata>,
}

impl State {
    pub fn new(max_flows: usize, stale_after: u64) -> State {
        State {
            max_flows,
            stale_after: stale_after.max(1),
            seq: 0,
            flows: HashMap::new(),
            other: Totals { fresh: true, ..Default::default() },
            folded: 0,
            agent: [0.0; AGENT_COUNTERS],
        }
    }

    #[cfg(test)]
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Fold one report into the totals and return every live series at the window's end.
    /// `base`: labels on every series (a series' own labels win over them).
    pub fn apply(&mut self, r: &Report, base: &[(String, String)]) -> Batch {
        self.seq += 1;
        let seq = self.seq;
        for t in self.flows.values_mut() {
            // Not in this report: nothing happened and nothing is open (or it is in `other`).
            t.active = 0;
        }
        // `active` of folded flows adds to that of `other`, as in the report's own `other`.
        let mut other_active = r.other.metrics.connections.active;
        for f in &r.flows {
            let key = flow_labels(f);
            if !self.flows.contains_key(&key) && self.flows.len() >= self.max_flows {
                self.folded += 1;
                other_active += f.metrics.connections.active;
                self.other.add(&f.metrics);
                continue;
            }
            let t = self.flows.entry(key).or_insert_with(|| Totals { fresh: true, ..Default::default() });
            t.add(&f.metrics);
            t.seen = seq;
        }
        self.other.add(&r.other.metrics);
        self.other.active = other_active;
        for (v, (_, _, d)) in self.agent.iter_mut().zip(agent_counters(&r.agent_stats)) {
            *v += d;
        }

        let start = r.window.start.timestamp_millis();
        let end = r.window.end.timestamp_millis();
        let mut out = Out { base, series: Vec::new() };
        let stale_after = self.stale_after;
        let stale: Vec<FlowKey> =
            self.flows.iter().filter(|(_, t)| seq - t.seen >= stale_after).map(|(k, _)| k.clone()).collect();
        for key in stale {
            if let Some(t) = self.flows.remove(&key) {
                // Marked just before the window end, so a flow back in the next window (with a 0
                // sample at its start) never shares a timestamp with the marker.
                out.flow(&key, &t, start, end - 1, true);
            }
        }
        for (key, t) in self.flows.iter_mut() {
            out.flow(key, t, start, end, false);
            t.fresh = false;
        }
        let other: FlowKey = vec![(OTHER_LABEL.0, OTHER_LABEL.1.to_string())];
        out.flow(&other, &self.other, start, end, false);
        self.other.fresh = false;
        let (other, none) = (out.common(&other), out.common(&[]));
        out.gauge(OTHER_FLOWS.1, &other, end, r.other.flows as f64);
        for (v, (_, name, _)) in self.agent.iter().zip(agent_counters(&r.agent_stats)) {
            out.counter(name, &none, start, end, *v, seq == 1);
        }
        out.counter("flow_agent_remote_write_folded_flows_total", &none, start, end, self.folded as f64, seq == 1);
        for (_, name, _, v) in agent_gauges(&r.agent_stats) {
            out.gauge(name, &none, end, v);
        }
        Batch { series: out.series, metadata: metadata() }
    }
}

struct Out<'a> {
    base: &'a [(String, String)],
    series: Vec<TimeSeries>,
}

impl Out<'_> {
    /// The labels every series of one flow shares: base labels, overridden by the flow's own,
    /// sorted by name (byte order, as Prometheus wants).
    fn common(&self, own: &[(&str, String)]) -> Vec<Label> {
        let mut m: BTreeMap<&str, &str> = self.base.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for (k, v) in own {
            m.insert(k, v);
        }
        m.into_iter().map(|(k, v)| Label { name: k.to_string(), value: v.to_string() }).collect()
    }

    /// `common` plus the metric name and an extra label (`le`), each at its sorted place.
    fn labels(common: &[Label], name: &str, extra: Option<(&str, String)>) -> Vec<Label> {
        let mut l = Vec::with_capacity(common.len() + 2);
        l.extend_from_slice(common);
        for (k, v) in [("__name__", name.to_string())].into_iter().chain(extra) {
            match l.binary_search_by(|x| x.name.as_str().cmp(k)) {
                Ok(i) => l[i].value = v,
                Err(i) => l.insert(i, Label { name: k.to_string(), value: v }),
            }
        }
        l
    }

    fn push(&mut self, labels: Vec<Label>, samples: Vec<Sample>) {
        self.series.push(TimeSeries { labels, samples });
    }

    /// A cumulative value; a series new in this window first gets a 0 at the window start.
    fn counter(&mut self, name: &str, own: &[Label], start: i64, end: i64, v: f64, fresh: bool) {
        self.labelled(name, own, None, start, end, v, fresh);
    }

    #[allow(clippy::too_many_arguments)]
    fn labelled(
        &mut self,
        name: &str,
        own: &[Label],
        extra: Option<(&str, String)>,
        start: i64,
        end: i64,
        v: f64,
        fresh: bool,
    ) {
        let mut samples = Vec::with_capacity(2);
        if fresh && start < end {
            samples.push(Sample { value: 0.0, timestamp: start });
        }
        samples.push(Sample { value: v, timestamp: end });
        self.push(Self::labels(own, name, extra), samples);
    }

    fn gauge(&mut self, name: &str, own: &[Label], end: i64, v: f64) {
        let labels = Self::labels(own, name, None);
        self.push(labels, vec![Sample { value: v, timestamp: end }]);
    }

    /// Every series of one flow; `stale`: a staleness marker instead of values.
    fn flow(&mut self, key: &[(&'static str, String)], t: &Totals, start: i64, end: i64, stale: bool) {
        let mark = |v: f64| if stale { f64::from_bits(STALE_NAN) } else { v };
        let key = &self.common(key);
        let fresh = t.fresh && !stale;
        for (c, v) in FLOW_COUNTERS.iter().zip(t.counters) {
            self.counter(c.prom, key, start, end, mark(v as f64), fresh);
        }
        self.gauge(ACTIVE.1, key, end, mark(t.active as f64));
        for ((_, base, _), h) in LATENCIES.iter().zip(&t.latency) {
            let bucket = format!("{base}_bucket");
            for (bound, below) in LE_US.iter().zip(h.below) {
                let le = format!("{}", *bound as f64 / 1e6);
                self.labelled(&bucket, key, Some(("le", le)), start, end, mark(below as f64), fresh);
            }
            self.labelled(&bucket, key, Some(("le", "+Inf".into())), start, end, mark(h.count as f64), fresh);
            self.counter(&format!("{base}_sum"), key, start, end, mark(h.sum), fresh);
            self.counter(&format!("{base}_count"), key, start, end, mark(h.count as f64), fresh);
        }
    }
}

fn metadata() -> Vec<MetricMetadata> {
    let md = |t: MetricType, name: &str, help: &str, unit: &str| MetricMetadata {
        r#type: t as i32,
        metric_family_name: name.to_string(),
        help: help.to_string(),
        unit: unit.to_string(),
    };
    let mut v: Vec<MetricMetadata> = FLOW_COUNTERS
        .iter()
        .map(|c| md(MetricType::Counter, c.prom, c.help, if c.unit == "By" { "bytes" } else { "" }))
        .collect();
    v.push(md(MetricType::Gauge, ACTIVE.1, "Established connections open at window end", ""));
    for (_, base, _) in LATENCIES {
        v.push(md(MetricType::Histogram, base, "Latency of the flow's samples", "seconds"));
    }
    v.push(md(MetricType::Gauge, OTHER_FLOWS.1, "Flows summed into the other series in the last window", ""));
    for (_, name, _) in agent_counters(&Default::default()) {
        v.push(md(MetricType::Counter, name, "flow-agent's own counter since agent start", ""));
    }
    for (_, name, _, _) in agent_gauges(&Default::default()) {
        v.push(md(MetricType::Gauge, name, "flow-agent's own gauge at window end", ""));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::prometheus::wire::valid_label_name;
    use crate::sink::prometheus::wire::valid_metric_name;
    use agent_common::report::{
        AgentInfo, AgentStats, Enrichment, FlowRecord, LatencyBucket, OtherFlows, Protocol, Role, Window,
    };

    fn flow(port: u16, bytes: u64) -> FlowRecord {
        FlowRecord {
            protocol: Protocol::Tcp,
            local_ip: "10.0.0.1".parse().unwrap(),
            remote_ip: "10.0.0.2".parse().unwrap(),
            target_port: port,
            role: Role::Client,
            enrichment: Enrichment::default(),
            metrics: FlowMetrics { bytes_sent: bytes, ..Default::default() },
        }
    }

    fn report(n: i64, flows: Vec<FlowRecord>) -> Report {
        let t = |s: i64| chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        Report {
            report_id: format!("r{n}"),
            schema_version: 1,
            window: Window { start: t(n * 30), end: t(n * 30 + 30) },
            agent: AgentInfo { version: "0.1.0".into(), hostname: "h".into() },
            flows,
            other: OtherFlows::default(),
            agent_stats: AgentStats { events: 10, ..Default::default() },
        }
    }

    fn find<'a>(b: &'a Batch, name: &str, port: Option<u16>) -> Option<&'a TimeSeries> {
        b.series.iter().find(|s| {
            s.labels.iter().any(|l| l.name == "__name__" && l.value == name)
                && match port {
                    Some(p) => s.labels.iter().any(|l| l.name == "target_port" && l.value == p.to_string()),
                    None => s.labels.iter().any(|l| l.name == "other"),
                }
        })
    }

    #[test]
    fn counters_accumulate_and_new_series_start_at_zero() {
        let mut s = State::new(10, 3);
        let base = vec![("job".to_string(), "flow-agent".to_string())];
        let b1 = s.apply(&report(0, vec![flow(80, 100)]), &base);
        let c = find(&b1, "flow_agent_bytes_sent_total", Some(80)).unwrap();
        assert_eq!(c.samples.len(), 2);
        assert_eq!((c.samples[0].value, c.samples[1].value), (0.0, 100.0));
        assert!(c.samples[0].timestamp < c.samples[1].timestamp);
        let b2 = s.apply(&report(1, vec![flow(80, 50)]), &base);
        let c = find(&b2, "flow_agent_bytes_sent_total", Some(80)).unwrap();
        assert_eq!(c.samples.len(), 1);
        assert_eq!(c.samples[0].value, 150.0);
        // Absent flows repeat their total until stale.
        let b3 = s.apply(&report(2, vec![]), &base);
        assert_eq!(find(&b3, "flow_agent_bytes_sent_total", Some(80)).unwrap().samples[0].value, 150.0);
        s.apply(&report(3, vec![]), &base);
        let b5 = s.apply(&report(4, vec![]), &base);
        let c = find(&b5, "flow_agent_bytes_sent_total", Some(80)).unwrap();
        assert_eq!(c.samples[0].value.to_bits(), STALE_NAN, "a staleness marker when dropped");
        assert_eq!(s.flows(), 0);
        let b6 = s.apply(&report(5, vec![]), &base);
        assert!(find(&b6, "flow_agent_bytes_sent_total", Some(80)).is_none());
        let ev = b6.series.iter().find(|s| s.labels.iter().any(|l| l.value == "flow_agent_events_total")).unwrap();
        assert_eq!(ev.samples.last().unwrap().value, 60.0);
    }

    #[test]
    fn every_agent_counter_is_sent() {
        let mut s = State::new(10, 3);
        let mut r = report(0, vec![]);
        r.agent_stats.cpu_seconds = 1.5;
        r.agent_stats.walk_idle_sockets = 7;
        r.agent_stats.ring_full = 3;
        let b = s.apply(&r, &[]);
        for (_, name, v) in agent_counters(&r.agent_stats) {
            let series = b.series.iter().find(|s| s.labels.iter().any(|l| l.name == "__name__" && l.value == name));
            let last = series.unwrap_or_else(|| panic!("{name} is not sent")).samples.last().unwrap().value;
            assert_eq!(last, v, "{name}");
        }
    }

    #[test]
    fn flows_beyond_the_cap_fold_into_other() {
        let mut s = State::new(2, 10);
        let b = s.apply(&report(0, vec![flow(1, 1), flow(2, 2), flow(3, 4), flow(4, 8)]), &[]);
        assert_eq!(s.flows(), 2);
        assert_eq!(find(&b, "flow_agent_bytes_sent_total", None).unwrap().samples.last().unwrap().value, 12.0);
        let total: f64 = b
            .series
            .iter()
            .filter(|s| s.labels.iter().any(|l| l.value == "flow_agent_bytes_sent_total"))
            .map(|s| s.samples.last().unwrap().value)
            .sum();
        assert_eq!(total, 15.0, "totals are conserved");
    }

    #[test]
    fn labels_sorted_unique_and_valid() {
        let mut s = State::new(10, 10);
        let base = vec![("zone".to_string(), "a".to_string()), ("role".to_string(), "overridden".to_string())];
        let mut f = flow(443, 5);
        f.metrics.rtt_us = LatencySummary {
            count: 2,
            mean: 150.0,
            buckets: vec![LatencyBucket { le: Some(111), count: 1 }, LatencyBucket { le: Some(191), count: 1 }],
            ..Default::default()
        };
        let b = s.apply(&report(0, vec![f]), &base);
        for ts in &b.series {
            let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
            assert!(names.windows(2).all(|w| w[0] < w[1]), "unsorted or duplicate: {names:?}");
            assert_eq!(names[0], "__name__");
            assert!(valid_metric_name(&ts.labels[0].value), "{}", ts.labels[0].value);
            assert!(names[1..].iter().all(|n| valid_label_name(n)), "{names:?}");
            assert!(ts.samples.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
            assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
        }
        let role = find(&b, "flow_agent_bytes_sent_total", Some(443)).unwrap();
        assert!(role.labels.iter().any(|l| l.name == "role" && l.value == "client"), "the flow's own label wins");
        let bucket = |le: &str| {
            b.series
                .iter()
                .find(|s| {
                    s.labels.iter().any(|l| l.value == "flow_agent_rtt_seconds_bucket")
                        && s.labels.iter().any(|l| l.name == "le" && l.value == le)
                        && s.labels.iter().any(|l| l.name == "target_port")
                })
                .unwrap_or_else(|| panic!("no bucket le={le}"))
                .samples
                .last()
                .unwrap()
                .value
        };
        assert_eq!(bucket("0.000064"), 0.0);
        assert_eq!(bucket("0.000128"), 1.0);
        assert_eq!(bucket("0.000256"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
    }
}
