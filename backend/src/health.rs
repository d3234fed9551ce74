//! The network health indicator (NHI) of a monitor, per minute.
//!
//! Definition (also in README.md):
//! * For every minute, the monitored flows are summed per host (agent hostname): segments sent,
//!   retransmissions, timeouts, flows, and the sample-weighted mean RTT.
//! * The monitor's baseline for a minute is the median, over the minutes with data in the
//!   preceding hour ([`BASELINE_MINUTES`]), of the monitor-wide retransmission ratio
//!   (retransmissions / segments sent), timeouts per flow and mean RTT. With fewer than
//!   [`MIN_BASELINE_MINUTES`] such minutes the status is `LEARNING`.
//! * A host is degraded in a minute when any of: retransmission ratio above
//!   max(3 x baseline, baseline + 0.5%) with at least 5 retransmissions; timeouts per flow above
//!   max(3 x baseline, baseline + 0.05) with at least 3 timeouts; mean RTT above
//!   max(2 x baseline, baseline + 2 ms).
//! * The minute is `DEGRADED` when at least [`MIN_DEGRADED_HOSTS`] hosts and at least
//!   [`MIN_DEGRADED_SHARE`] of the hosts reporting in that minute are degraded: trouble on one
//!   host is that host's problem, not the network's. Otherwise `HEALTHY`; `NO_DATA` when no
//!   monitored flow was reported.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::flows::HostMinute;

pub const BASELINE_MINUTES: i64 = 60;
pub const MIN_BASELINE_MINUTES: usize = 5;
pub const MIN_DEGRADED_HOSTS: usize = 2;
pub const MIN_DEGRADED_SHARE: f64 = 0.25;

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Levels {
    pub retransmission_ratio: f64,
    pub timeouts_per_flow: f64,
    pub round_trip_time_us: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MinuteHealth {
    /// Minute start, epoch seconds.
    #[serde(skip)]
    pub minute: i64,
    pub timestamp: String,
    /// HEALTHY, DEGRADED, NO_DATA or LEARNING.
    pub status: &'static str,
    pub hosts: usize,
    pub degraded_hosts: usize,
    pub flows: i64,
    pub observed: Option<Levels>,
    pub baseline: Option<Levels>,
}

#[derive(Clone, Copy, Default)]
struct Sums {
    flows: i64,
    segments: i64,
    retx: i64,
    timeouts: i64,
    rtt_sum: f64,
    rtt_n: i64,
}

impl Sums {
    fn add(&mut self, h: &HostMinute) {
        self.flows += h.flows;
        self.segments += h.segments_sent;
        self.retx += h.retransmissions;
        self.timeouts += h.timeouts;
        self.rtt_sum += h.rtt_sum_us;
        self.rtt_n += h.rtt_count;
    }

    fn levels(&self) -> Levels {
        Levels {
            retransmission_ratio: if self.segments > 0 { self.retx as f64 / self.segments as f64 } else { 0.0 },
            timeouts_per_flow: if self.flows > 0 { self.timeouts as f64 / self.flows as f64 } else { 0.0 },
            round_trip_time_us: if self.rtt_n > 0 { self.rtt_sum / self.rtt_n as f64 } else { 0.0 },
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn host_degraded(h: &Sums, base: &Levels) -> bool {
    let l = h.levels();
    let retx = h.retx >= 5
        && l.retransmission_ratio > (3.0 * base.retransmission_ratio).max(base.retransmission_ratio + 0.005);
    let timeouts =
        h.timeouts >= 3 && l.timeouts_per_flow > (3.0 * base.timeouts_per_flow).max(base.timeouts_per_flow + 0.05);
    let rtt =
        h.rtt_n > 0 && l.round_trip_time_us > (2.0 * base.round_trip_time_us).max(base.round_trip_time_us + 2000.0);
    retx || timeouts || rtt
}

/// Health of every minute in `[start_s, end_s)` (minute-aligned) from per-host sums covering
/// at least `[start_s - BASELINE_MINUTES minutes, end_s)`.
pub fn evaluate(rows: &[HostMinute], start_s: i64, end_s: i64) -> Vec<MinuteHealth> {
    let mut by_minute: BTreeMap<i64, BTreeMap<&str, Sums>> = BTreeMap::new();
    for r in rows {
        by_minute.entry(r.minute).or_default().entry(r.hostname.as_str()).or_default().add(r);
    }
    let totals: BTreeMap<i64, Levels> = by_minute
        .iter()
        .map(|(m, hosts)| {
            let mut s = Sums::default();
            for h in hosts.values() {
                s.flows += h.flows;
                s.segments += h.segments;
                s.retx += h.retx;
                s.timeouts += h.timeouts;
                s.rtt_sum += h.rtt_sum;
                s.rtt_n += h.rtt_n;
            }
            (*m, s.levels())
        })
        .collect();
    let first = start_s.div_euclid(60) * 60;
    let mut out = Vec::new();
    let mut m = first;
    while m < end_s {
        let timestamp = chrono::DateTime::from_timestamp(m, 0)
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default();
        let history: Vec<&Levels> = totals.range(m - BASELINE_MINUTES * 60..m).map(|(_, l)| l).collect();
        let baseline = (history.len() >= MIN_BASELINE_MINUTES).then(|| Levels {
            retransmission_ratio: median(history.iter().map(|l| l.retransmission_ratio).collect()),
            timeouts_per_flow: median(history.iter().map(|l| l.timeouts_per_flow).collect()),
            round_trip_time_us: median(history.iter().map(|l| l.round_trip_time_us).collect()),
        });
        let entry = match by_minute.get(&m) {
            None => MinuteHealth {
                minute: m,
                timestamp,
                status: "NO_DATA",
                hosts: 0,
                degraded_hosts: 0,
                flows: 0,
                observed: None,
                baseline,
            },
            Some(hosts) => {
                let degraded = baseline.map(|b| hosts.values().filter(|h| host_degraded(h, &b)).count()).unwrap_or(0);
                let status = match baseline {
                    None => "LEARNING",
                    Some(_)
                        if degraded >= MIN_DEGRADED_HOSTS
                            && degraded as f64 >= MIN_DEGRADED_SHARE * hosts.len() as f64 =>
                    {
                        "DEGRADED"
                    }
                    Some(_) => "HEALTHY",
                };
                MinuteHealth {
                    minute: m,
                    timestamp,
                    status,
                    hosts: hosts.len(),
                    degraded_hosts: degraded,
                    flows: hosts.values().map(|h| h.flows).sum(),
                    observed: totals.get(&m).copied(),
                    baseline,
                }
            }
        };
        out.push(entry);
        m += 60;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(minute: i64, host: &str, retx: i64, rtt: f64) -> HostMinute {
        HostMinute {
            minute,
            hostname: host.into(),
            flows: 10,
            segments_sent: 1000,
            retransmissions: retx,
            timeouts: 0,
            rtt_sum_us: rtt * 100.0,
            rtt_count: 100,
        }
    }

    #[test]
    fn many_degraded_hosts_degrade_a_minute_but_one_does_not() {
        let mut rows = Vec::new();
        for m in 0..20 {
            for h in 0..8 {
                let host = format!("h{h}");
                // Minute 15: one host retransmits a lot. Minute 18: six of eight do.
                let retx = if (m == 15 && h == 0) || (m == 18 && h < 6) { 100 } else { 1 };
                let rtt = if m == 19 && h < 4 { 9000.0 } else { 500.0 };
                rows.push(hm(m * 60, &host, retx, rtt));
            }
        }
        let out = evaluate(&rows, 0, 21 * 60);
        assert_eq!(out.len(), 21);
        assert_eq!(out[0].status, "LEARNING");
        assert_eq!(out[10].status, "HEALTHY");
        assert_eq!(out[15].status, "HEALTHY");
        assert_eq!(out[15].degraded_hosts, 1);
        assert_eq!(out[18].status, "DEGRADED");
        assert_eq!(out[18].degraded_hosts, 6);
        assert_eq!(out[19].status, "DEGRADED", "RTT doubling on half the hosts");
        assert_eq!(out[20].status, "NO_DATA");
    }
}
