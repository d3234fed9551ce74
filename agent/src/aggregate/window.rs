//! The aggregator: turns successive snapshots into per-window flow deltas and program stats.

use std::collections::HashMap;

use agent_common::maps::{FlowAgg, FlowKey, stat};

use super::FlowWindow;
use crate::capture::Snapshot;

const NSTATS: usize = stat::COUNT as usize;

struct Tracked {
    last: Box<FlowAgg>,
    idle_ticks: u32,
}

/// What one window holds when it closes.
#[derive(Clone)]
pub struct ClosedWindow {
    pub flows: Vec<(FlowKey, FlowWindow)>,
    /// Program counters gained during the window.
    pub stats: [u64; NSTATS],
    /// Open sockets in the kernel map at window end.
    pub sockets_tracked: u64,
    /// Flow keys in the kernel map at window end.
    pub flows_tracked: u64,
}

pub struct Aggregator {
    tracked: HashMap<FlowKey, Tracked>,
    window: HashMap<FlowKey, FlowWindow>,
    stats_prev: [u64; NSTATS],
    stats_window: [u64; NSTATS],
    stats_now: [u64; NSTATS],
    evict_after_ticks: u32,
}

impl Aggregator {
    /// `evict_after_ticks`: a key with no open connection and no change for this many ticks is
    /// removed from the kernel map (so the map holds live flows, not history).
    pub fn new(evict_after_ticks: u32) -> Self {
        Aggregator {
            tracked: HashMap::new(),
            window: HashMap::new(),
            stats_prev: [0; NSTATS],
            stats_window: [0; NSTATS],
            stats_now: [0; NSTATS],
            evict_after_ticks: evict_after_ticks.max(1),
        }
    }

    /// Fold one snapshot into the current window. Returns the keys that have been idle long
    /// enough to evict; pass each evicted key's last value back through `account_evicted`.
    pub fn ingest(&mut self, snap: Snapshot) -> Vec<FlowKey> {
        for (i, v) in snap.stats.iter().enumerate() {
            self.stats_window[i] += v.wrapping_sub(self.stats_prev[i]);
        }
        self.stats_prev = snap.stats;
        self.stats_now = snap.stats;

        let zero = FlowAgg::default();
        let mut evict = Vec::new();
        for (key, cur) in snap.flows {
            let t = self.tracked.entry(key).or_insert_with(|| Tracked { last: Box::new(zero), idle_ticks: 0 });
            // A key that changed, or whose established and closed counts differ (connections
            // open, or closes of connections counted before the key was inserted, see
            // `FlowAgg::open`), is accounted and not evicted.
            let live = *t.last != cur || cur.established != cur.closed;
            if live {
                self.window.entry(key).or_default().add_delta(&t.last, &cur);
                t.idle_ticks = 0;
            } else {
                t.idle_ticks += 1;
                if t.idle_ticks >= self.evict_after_ticks {
                    evict.push(key);
                }
            }
            *t.last = cur;
        }
        evict
    }

    /// An evicted key's value at removal: count anything folded since the last snapshot (from
    /// zero for a key inserted since, e.g. when a flush removes it before any tick saw it).
    pub fn account_evicted(&mut self, key: &FlowKey, last: Option<FlowAgg>) {
        let prev = self.tracked.remove(key).map(|t| *t.last).unwrap_or_default();
        if let Some(last) = last
            && prev != last
        {
            self.window.entry(*key).or_default().add_delta(&prev, &last);
        }
    }

    pub fn close_window(&mut self) -> ClosedWindow {
        let flows = self.window.drain().filter(|(_, w)| !w.is_idle()).collect();
        let stats = std::mem::replace(&mut self.stats_window, [0; NSTATS]);
        let inserted = self.stats_now[stat::SOCKETS_INSERTED as usize];
        let removed = self.stats_now[stat::SOCKETS_REMOVED as usize];
        ClosedWindow {
            flows,
            stats,
            sockets_tracked: inserted.saturating_sub(removed),
            flows_tracked: self.tracked.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey { target_port: port, ..Default::default() }
    }

    fn snap(flows: Vec<(FlowKey, FlowAgg)>, events: u64) -> Snapshot {
        let mut stats = [0; NSTATS];
        stats[stat::EVENTS as usize] = events;
        Snapshot { flows, stats }
    }

    #[test]
    fn windows_get_deltas_and_stats() {
        let mut a = Aggregator::new(3);
        let f1 = FlowAgg { bytes_sent: 10, attempted: 1, ..Default::default() };
        let f2 = FlowAgg { bytes_sent: 25, attempted: 1, ..Default::default() };
        a.ingest(snap(vec![(key(80), f1)], 5));
        a.ingest(snap(vec![(key(80), f1)], 7));
        let w = a.close_window();
        assert_eq!(w.flows.len(), 1);
        assert_eq!(w.flows[0].1.bytes_sent, 10);
        assert_eq!(w.stats[stat::EVENTS as usize], 7);
        a.ingest(snap(vec![(key(80), f2)], 9));
        let w = a.close_window();
        assert_eq!(w.flows[0].1.bytes_sent, 15);
        assert_eq!(w.flows[0].1.connections.attempted, 0);
        assert_eq!(w.stats[stat::EVENTS as usize], 2);
        let w = a.close_window();
        assert!(w.flows.is_empty(), "no change, nothing open: nothing to report");
    }

    #[test]
    fn idle_keys_are_evicted_and_late_folds_counted() {
        let mut a = Aggregator::new(2);
        let f = FlowAgg { bytes_sent: 10, ..Default::default() };
        assert!(a.ingest(snap(vec![(key(1), f)], 0)).is_empty());
        assert!(a.ingest(snap(vec![(key(1), f)], 0)).is_empty());
        let ev = a.ingest(snap(vec![(key(1), f)], 0));
        assert_eq!(ev, vec![key(1)]);
        // A socket folded 5 more bytes between the last snapshot and the removal.
        a.account_evicted(&key(1), Some(FlowAgg { bytes_sent: 15, ..Default::default() }));
        let w = a.close_window();
        let total: u64 = w.flows.iter().map(|(_, f)| f.bytes_sent).sum();
        assert_eq!(total, 15);
        assert_eq!(w.flows_tracked, 0);
        // Re-inserted by the kernel from zero: counted from zero again.
        a.ingest(snap(vec![(key(1), FlowAgg { bytes_sent: 3, ..Default::default() })], 0));
        assert_eq!(a.close_window().flows[0].1.bytes_sent, 3);
    }

    #[test]
    fn keys_removed_before_any_tick_saw_them_are_counted_whole() {
        let mut a = Aggregator::new(5);
        a.account_evicted(&key(7), Some(FlowAgg { bytes_sent: 42, attempted: 1, ..Default::default() }));
        a.account_evicted(&key(8), None);
        let w = a.close_window();
        assert_eq!(w.flows.len(), 1);
        assert_eq!((w.flows[0].1.bytes_sent, w.flows[0].1.connections.attempted), (42, 1));
    }

    #[test]
    fn open_connections_stay_reported_while_quiet() {
        let mut a = Aggregator::new(1);
        let f = FlowAgg { established: 1, ..Default::default() };
        a.ingest(snap(vec![(key(9), f)], 0));
        a.close_window();
        assert!(a.ingest(snap(vec![(key(9), f)], 0)).is_empty(), "open keys are never evicted");
        let w = a.close_window();
        assert_eq!(w.flows.len(), 1);
        assert_eq!(w.flows[0].1.connections.active, 1);
        assert_eq!(w.flows[0].1.connections.established, 0);
    }
}
