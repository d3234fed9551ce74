//! Per-key deltas between two readings of a flow's cumulative counters, accumulated per window.

use agent_common::{
    hist::HIST_BUCKETS,
    maps::{FlowAgg, Hist},
    report::Connections,
};

/// Histogram counts accumulated over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistAcc {
    pub count: u64,
    pub sum: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

impl Default for HistAcc {
    fn default() -> Self {
        HistAcc { count: 0, sum: 0, buckets: [0; HIST_BUCKETS] }
    }
}

impl HistAcc {
    /// Add what `cur` gained over `prev` (kernel counters only grow; u32 buckets may wrap). The
    /// count is the buckets' (the kernel keeps none, `Hist`).
    pub fn add_delta(&mut self, prev: &Hist, cur: &Hist) {
        self.sum += cur.sum.wrapping_sub(prev.sum);
        for (acc, (p, c)) in self.buckets.iter_mut().zip(prev.buckets.iter().zip(cur.buckets.iter())) {
            let n = c.wrapping_sub(*p) as u64;
            *acc += n;
            self.count += n;
        }
    }

    pub fn merge(&mut self, other: &HistAcc) {
        self.count += other.count;
        self.sum += other.sum;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }
}

/// One flow's counters over (part of) a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowWindow {
    pub connections: Connections,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub rtt_us: HistAcc,
    pub handshake_us: HistAcc,
}

impl FlowWindow {
    /// Add the change from `prev` to `cur`; `active` becomes `cur`'s open-connection gauge.
    pub fn add_delta(&mut self, prev: &FlowAgg, cur: &FlowAgg) {
        let d = |p: u64, c: u64| c.wrapping_sub(p);
        let c = &mut self.connections;
        c.attempted += d(prev.attempted, cur.attempted);
        c.established += d(prev.established, cur.established);
        c.closed += d(prev.closed, cur.closed);
        c.failed += d(prev.failed, cur.failed);
        c.refused += d(prev.refused, cur.refused);
        c.timed_out += d(prev.timed_out, cur.timed_out);
        c.reset += d(prev.reset, cur.reset);
        c.active = cur.open();
        self.bytes_sent += d(prev.bytes_sent, cur.bytes_sent);
        self.bytes_received += d(prev.bytes_received, cur.bytes_received);
        self.segments_sent += d(prev.segments_sent, cur.segments_sent);
        self.segments_received += d(prev.segments_received, cur.segments_received);
        self.retransmissions += d(prev.retransmissions, cur.retransmissions);
        self.timeouts += d(prev.timeouts, cur.timeouts);
        self.rtt_us.add_delta(&prev.rtt_us, &cur.rtt_us);
        self.handshake_us.add_delta(&prev.handshake_us, &cur.handshake_us);
    }

    /// Sum another flow into this one (for `other`). `active` adds up too.
    pub fn merge(&mut self, o: &FlowWindow) {
        let (c, oc) = (&mut self.connections, &o.connections);
        c.attempted += oc.attempted;
        c.established += oc.established;
        c.closed += oc.closed;
        c.failed += oc.failed;
        c.refused += oc.refused;
        c.timed_out += oc.timed_out;
        c.reset += oc.reset;
        c.active += oc.active;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.segments_sent += o.segments_sent;
        self.segments_received += o.segments_received;
        self.retransmissions += o.retransmissions;
        self.timeouts += o.timeouts;
        self.rtt_us.merge(&o.rtt_us);
        self.handshake_us.merge(&o.handshake_us);
    }

    /// Nothing happened and nothing is open: not worth reporting.
    pub fn is_idle(&self) -> bool {
        let c = &self.connections;
        c.attempted == 0
            && c.established == 0
            && c.closed == 0
            && c.failed == 0
            && c.active == 0
            && self.bytes_sent == 0
            && self.bytes_received == 0
            && self.segments_sent == 0
            && self.segments_received == 0
            && self.retransmissions == 0
            && self.timeouts == 0
            && self.rtt_us.count == 0
            && self.handshake_us.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::hist::bucket_index;

    fn agg(bytes: u64, rtts: &[u64], open: i64) -> FlowAgg {
        let (established, closed) = if open >= 0 { (open as u64, 0) } else { (0, open.unsigned_abs()) };
        let mut a = FlowAgg { bytes_sent: bytes, established, closed, ..Default::default() };
        for &r in rtts {
            a.rtt_us.sum += r;
            a.rtt_us.buckets[bucket_index(r)] += 1;
        }
        a
    }

    #[test]
    fn long_lived_socket_contributes_deltas_not_totals() {
        let t0 = FlowAgg::default();
        let t1 = agg(1000, &[100], 1);
        let t2 = agg(1500, &[100, 200], 1);
        let mut w1 = FlowWindow::default();
        w1.add_delta(&t0, &t1);
        let mut w2 = FlowWindow::default();
        w2.add_delta(&t1, &t2);
        assert_eq!(w1.bytes_sent, 1000);
        assert_eq!(w2.bytes_sent, 500);
        assert_eq!(w2.rtt_us.count, 1);
        assert_eq!(w2.rtt_us.sum, 200);
        assert_eq!(w2.rtt_us.buckets[bucket_index(200)], 1);
        assert_eq!(w2.connections.active, 1);
    }

    #[test]
    fn wrapped_bucket_counts_stay_exact() {
        let mut p = FlowAgg::default();
        p.rtt_us.buckets[3] = u32::MAX;
        let mut c = FlowAgg::default();
        c.rtt_us.buckets[3] = 4;
        let mut w = FlowWindow::default();
        w.add_delta(&p, &c);
        assert_eq!(w.rtt_us.buckets[3], 5);
        assert_eq!(w.rtt_us.count, 5, "the count is the buckets' deltas, wrapped ones too");
    }

    #[test]
    fn negative_open_gauge_reads_as_zero() {
        let mut w = FlowWindow::default();
        // One more close than establishments on the key (its establishment was counted before the
        // key was last inserted), in an earlier window: nothing new, nothing open.
        let (prev, cur) = (agg(0, &[], -1), agg(0, &[], -1));
        w.add_delta(&prev, &cur);
        assert_eq!(w.connections.active, 0);
        assert!(w.is_idle());
    }
}
