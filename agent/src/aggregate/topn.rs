//! Top-N: which flows are reported whole. Flows with trouble (failures, timeouts,
//! retransmissions) rank first by how much trouble, then by bytes, then by connections; the rest
//! are summed into `other` so that window totals are conserved.

use std::cmp::Reverse;

use super::FlowWindow;

pub struct TopN<K> {
    pub top: Vec<(K, FlowWindow)>,
    pub other: FlowWindow,
    pub other_flows: u64,
}

fn score(w: &FlowWindow) -> (u64, u64, u64) {
    let trouble = w.connections.failed + w.connections.reset + w.timeouts + w.retransmissions;
    (trouble, w.bytes_sent + w.bytes_received, w.connections.attempted + w.connections.active)
}

pub fn rank<K: Ord>(mut flows: Vec<(K, FlowWindow)>, n: usize) -> TopN<K> {
    // Ties broken by key so that output is deterministic.
    flows.sort_by(|(ka, a), (kb, b)| Reverse(score(a)).cmp(&Reverse(score(b))).then_with(|| ka.cmp(kb)));
    let rest = if flows.len() > n { flows.split_off(n) } else { Vec::new() };
    let mut other = FlowWindow::default();
    for (_, w) in &rest {
        other.merge(w);
    }
    TopN { top: flows, other, other_flows: rest.len() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(bytes: u64, retrans: u64) -> FlowWindow {
        let mut f = FlowWindow { bytes_sent: bytes, retransmissions: retrans, ..Default::default() };
        f.connections.attempted = 1;
        f.rtt_us.count = 1;
        f.rtt_us.sum = bytes;
        f.rtt_us.buckets[1] = 1;
        f
    }

    #[test]
    fn keeps_trouble_then_bytes_and_conserves_totals() {
        let flows: Vec<(u32, FlowWindow)> =
            (0..10).map(|i| (i, w(100 * i as u64, if i == 2 { 3 } else { 0 }))).collect();
        let mut total = FlowWindow::default();
        for (_, f) in &flows {
            total.merge(f);
        }
        let t = rank(flows, 3);
        let keys: Vec<u32> = t.top.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![2, 9, 8]);
        assert_eq!(t.other_flows, 7);
        let mut sum = t.other.clone();
        for (_, f) in &t.top {
            sum.merge(f);
        }
        assert_eq!(sum, total);
    }

    #[test]
    fn zero_puts_everything_in_other() {
        let t = rank(vec![(1u8, w(5, 0)), (2, w(7, 0))], 0);
        assert!(t.top.is_empty());
        assert_eq!(t.other_flows, 2);
        assert_eq!(t.other.bytes_sent, 12);
    }
}
