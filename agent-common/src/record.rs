//! Connection records: what the sock_ops program hands the daemon at the establishment and the
//! close of a socket of a walked namespace, instead of folding it into FLOWS itself.
//!
//! A kernel hash operation entered with cold caches costs ~1 µs (after a bulk copy, say), and an
//! exact fold at those two events makes several (the flow, the socket's entry, its delete). A
//! record is written to a ring of the CPU's own in an mmapable array (`RECORDS`, one ring per
//! CPU, heads and tails in `RECORD_HEADS`): no lock, no lookup, a line or two written. The daemon
//! reads the rings (`agent::capture::records`) and folds each record into its flow with `apply`,
//! the same arithmetic the kernel's fold does (`fold`).
//!
//! A ring that is full takes no record: the program then folds in the kernel as it does without
//! records (counted in `stat::RING_FULL`), so nothing is lost either way.

use crate::{
    fold::{attempt_due_at_close, attempt_due_at_establishment, classify_end, fold_step},
    hist::bucket_index,
    maps::{FlowAgg, FlowKey, Hist, SOCK_CLIENT, SockCounters, SockState},
};

pub const RECORDS_MAP: &str = "RECORDS";
pub const RECORD_HEADS_MAP: &str = "RECORD_HEADS";
pub const RECORD_SPILL_MAP: &str = "RECORD_SPILL";

/// Records per CPU by default (`--record-slots`; a power of two; 0 turns records off): 512 KiB
/// of ring per CPU, ~1.5x what a CPU of this 2-CPU machine writes between two of the daemon's
/// 50-ms readings in the connection storm of a calm hour (~108,000 records/s); a record that
/// finds its ring full is spilled or folded in the kernel, never lost. On by default since
/// they halve the walk's cost on busy sockets and keep nothing in the kernel per walked socket,
/// for ~0.5% of a core of the daemon's in the storm with no cost to its throughput
/// (docs/performance.md, "Results, 2026-12-07 (twelfth)").
pub const DEFAULT_RECORD_SLOTS: u32 = 4096;

/// Slots a ring keeps free for programs that interrupt one another on its CPU (a segment's
/// callback in softirq over a connect in process context): the check for room and the taking of
/// a slot are two steps, so up to this many writers can pass the check together.
pub const RING_NESTING: u64 = 8;

/// What a record says happened.
pub mod kind {
    /// The connection was established (`flags`: `SOCK_CLIENT` on the connecting side).
    pub const ESTABLISHED: u32 = 1;
    /// The socket left `old_state` for CLOSE with the payload counters in `counters`.
    pub const CLOSED: u32 = 2;
    /// The retransmission timer gave up on a walked socket without a SOCKETS entry, whose
    /// baseline the daemon may hold (`WalkItem`): its close is to count it timed out.
    pub const RTO_EXPIRED: u32 = 3;
}

/// In a record's `flags`: the socket may have a SOCKETS entry (its callback flags carry
/// `fold::cb::ENTRY`), which the daemon looks up by `cookie`, applies and deletes.
pub const REC_ENTRY: u32 = 1 << 31;

/// One record, two cache lines. `commit` is written last: the slot's position in its ring plus
/// one, so a reader knows the rest is written (and of which lap).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub commit: u64,
    pub cookie: u64,
    pub key: FlowKey,
    /// At the close: the socket's payload counters (`fold::payload`, its FINs taken off).
    pub counters: SockCounters,
    pub kind: u32,
    /// Socket flags (`SOCK_*`) and `REC_ENTRY`.
    pub flags: u32,
    /// At the close: the TCP state the socket left for CLOSE.
    pub old_state: u32,
    /// At the establishment: the smoothed RTT as the kernel keeps it (µs x 8, 0 without a
    /// sample). At the close: the smoothed RTT in µs (0 without one).
    pub rtt: u32,
    pub _pad: [u64; 3],
}

/// What the walk writes to its output for one socket, with records on.
pub mod item {
    /// The walk gave the socket a SOCKETS entry: its records are to look it up.
    pub const ENTRY: u32 = 1;
    /// An established walked socket without a SOCKETS entry that moved: its payload counters
    /// (`fold::payload`) as they are now. The daemon keeps what it folded of each (the walk keeps
    /// nothing in the kernel for it) and folds the difference; its close's record is folded
    /// against the same.
    pub const SNAPSHOT: u32 = 2;
}

/// One socket of the walk's output (records on; `item`), 96 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct WalkItem {
    pub cookie: u64,
    pub key: FlowKey,
    pub counters: SockCounters,
    pub kind: u32,
    /// Socket flags (`SOCK_*`).
    pub flags: u32,
    /// The smoothed RTT in µs (0 without a sample).
    pub srtt_us: u32,
    pub _pad: u32,
}

/// The key of a record spilled (`RECORD_SPILL`) when its ring was full: the socket's cookie, and
/// the record's kind (a socket may spill an RTO's record and its close's) with the daemon's
/// reading it was spilled during (`spill_kind`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Hash)]
pub struct SpillKey {
    pub cookie: u64,
    pub kind: u64,
}

/// `SpillKey::kind`: the record's kind in the low half, the low half of the reading the daemon
/// had begun (`RingHead::reading`) in the high half.
#[inline(always)]
pub fn spill_kind(kind: u64, reading: u64) -> u64 {
    (kind & 0xffff_ffff) | (reading << 32)
}

impl SpillKey {
    /// The record's kind (`kind`).
    pub fn record_kind(&self) -> u32 {
        self.kind as u32
    }

    /// Whether the record was spilled during reading `reading` (`RingHead::reading`).
    pub fn spilled_during(&self, reading: u64) -> bool {
        self.kind >> 32 == reading & 0xffff_ffff
    }
}

/// A ring's head (the next position a program takes, by an atomic add) and tail (the next one
/// the daemon reads, which it writes back as it reads), on lines of their own. With the tail,
/// the number of the daemon's reading under way, which a spilled record's key carries
/// (`spill_kind`): the daemon folds a spilled close at the reading after the one it was spilled
/// during, when its establishment is sure to be folded, and leaves it in the spill till then.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RingHead {
    pub head: u64,
    /// Records this CPU's programs put into `RECORD_SPILL`, counted after each insert (on the
    /// head's line, which they write anyway). The daemon sweeps the spill only while the sum over
    /// the CPUs is more than it took out: a sweep of the hash map visits every bucket, full or
    /// empty (`spill_pending`).
    pub spilled: u64,
    pub _pad: [u64; 6],
    pub tail: u64,
    pub reading: u64,
    pub _pad2: [u64; 6],
}

/// Whether a ring of `slots` with positions `head` and `tail` has room for one more record.
#[inline(always)]
pub fn has_room(head: u64, tail: u64, slots: u64) -> bool {
    head.wrapping_sub(tail) + RING_NESTING < slots
}

/// Add a sample to a histogram, as the kernel's `flows::record` does with atomics.
pub fn hist_add(h: &mut Hist, v: u64) {
    h.sum = h.sum.wrapping_add(v);
    let b = &mut h.buckets[bucket_index(v)];
    *b = b.wrapping_add(1);
}

/// Add what a walked socket did since the daemon's last fold of it (`d`, from a `WalkItem`) to
/// its flow, with an RTT sample if segments came in: what the walk's kernel fold adds.
pub fn apply_moved(d: &SockCounters, srtt_us: u32, agg: &mut FlowAgg) {
    let add = |f: &mut u64, v: u64| *f = f.wrapping_add(v);
    add(&mut agg.bytes_sent, d.bytes_acked);
    add(&mut agg.bytes_received, d.bytes_received);
    add(&mut agg.segments_sent, d.segs_out as u64);
    add(&mut agg.segments_received, d.segs_in as u64);
    add(&mut agg.retransmissions, d.total_retrans as u64);
    if d.segs_in != 0 && srtt_us != 0 {
        hist_add(&mut agg.rtt_us, srtt_us as u64);
    }
}

/// Fold a record into its flow: what the kernel's fold adds at the same event. `entry` is the
/// socket's SOCKETS entry when the record says it may have one (`REC_ENTRY`) and it has: the walk
/// folded the socket before (its `folded` counters are not added again), and its flags say what
/// the callbacks and the walk saw (an attempt counted, a timer that gave up).
pub fn apply(rec: &ConnRecord, entry: Option<&SockState>, agg: &mut FlowAgg) {
    let entry_flags = entry.map(|e| e.flags);
    let add = |f: &mut u64, v: u64| *f = f.wrapping_add(v);
    match rec.kind {
        kind::ESTABLISHED => {
            let attempted = rec.flags & SOCK_CLIENT == 0 || attempt_due_at_establishment(entry_flags);
            add(&mut agg.attempted, attempted as u64);
            add(&mut agg.established, 1);
            if rec.rtt != 0 {
                hist_add(&mut agg.handshake_us, (rec.rtt >> 3) as u64);
            }
        }
        kind::CLOSED => {
            let flags = (rec.flags & !REC_ENTRY) | entry_flags.unwrap_or(0);
            let d = match entry {
                Some(e) => fold_step(&e.folded, &rec.counters).0,
                None => rec.counters,
            };
            apply_moved(&d, rec.rtt, agg);
            add(&mut agg.attempted, attempt_due_at_close(flags, rec.old_state) as u64);
            let e = classify_end(rec.old_state, flags);
            add(&mut agg.closed, e.closed);
            add(&mut agg.failed, e.failed);
            add(&mut agg.refused, e.refused);
            add(&mut agg.timed_out, e.timed_out);
            add(&mut agg.reset, e.reset);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fold::tcp_state,
        maps::{SOCK_ATTEMPTED, SOCK_ESTABLISHED, SOCK_RTO_EXPIRED, SOCK_WALKED},
    };

    fn closed(flags: u32, old: u32, counters: SockCounters, rtt: u32) -> ConnRecord {
        ConnRecord { kind: kind::CLOSED, flags, old_state: old, counters, rtt, ..Default::default() }
    }

    fn counters(acked: u64, received: u64, out: u32, inn: u32, retrans: u32) -> SockCounters {
        SockCounters {
            bytes_acked: acked,
            bytes_received: received,
            segs_out: out,
            segs_in: inn,
            total_retrans: retrans,
            _pad: 0,
        }
    }

    #[test]
    fn records_are_two_cache_lines_and_heads_keep_head_and_tail_apart() {
        assert_eq!(core::mem::size_of::<ConnRecord>(), 128);
        assert_eq!(core::mem::size_of::<RingHead>(), 128);
        assert_eq!(core::mem::offset_of!(RingHead, spilled), 8, "on the head's line");
        assert_eq!(core::mem::offset_of!(RingHead, tail), 64);
        assert_eq!(core::mem::offset_of!(RingHead, reading), 72, "on the tail's line");
    }

    #[test]
    fn a_spilled_records_key_says_its_kind_and_the_reading_it_was_spilled_during() {
        // `what` as the programs make it: the kind, and the flags in the high half.
        let what = kind::CLOSED as u64 | (0xdead_u64 << 32);
        let k = SpillKey { cookie: 9, kind: spill_kind(what, 7) };
        assert_eq!(k.record_kind(), kind::CLOSED, "the flags are not part of the key");
        assert!(k.spilled_during(7));
        assert!(!k.spilled_during(6) && !k.spilled_during(8));
        assert!(k.spilled_during(7 + (1 << 32)), "the low half of the reading's number");
        let wrapped = SpillKey { cookie: 9, kind: spill_kind(kind::ESTABLISHED as u64, u64::MAX) };
        assert_eq!(wrapped.record_kind(), kind::ESTABLISHED);
        assert!(wrapped.spilled_during(u64::MAX));
    }

    #[test]
    fn a_ring_keeps_room_for_nested_writers() {
        assert!(has_room(0, 0, 16));
        assert!(has_room(7, 0, 16));
        assert!(!has_room(8, 0, 16), "8 taken + 8 kept for nesting = 16");
        assert!(has_room(u64::MAX, u64::MAX - 3, 16), "positions wrap");
    }

    #[test]
    fn a_client_establishment_counts_its_attempt_unless_the_walk_did() {
        let rec = ConnRecord {
            kind: kind::ESTABLISHED,
            flags: SOCK_CLIENT | SOCK_WALKED,
            rtt: 8 * 120,
            ..Default::default()
        };
        let mut agg = FlowAgg::default();
        apply(&rec, None, &mut agg);
        assert_eq!((agg.attempted, agg.established, agg.handshake_us.sum), (1, 1, 120));
        let entry = SockState { flags: SOCK_CLIENT | SOCK_WALKED | SOCK_ATTEMPTED, ..Default::default() };
        apply(&rec, Some(&entry), &mut agg);
        assert_eq!((agg.attempted, agg.established), (1, 2), "the walk counted the second attempt");
        let server =
            ConnRecord { kind: kind::ESTABLISHED, flags: SOCK_WALKED | SOCK_ESTABLISHED, ..Default::default() };
        apply(&server, None, &mut agg);
        assert_eq!((agg.attempted, agg.established), (2, 3));
        assert_eq!(agg.handshake_us.buckets.iter().sum::<u32>(), 2, "no sample, no handshake time");
    }

    #[test]
    fn a_close_adds_what_the_walk_did_not_fold() {
        let flags = SOCK_CLIENT | SOCK_WALKED | SOCK_ESTABLISHED;
        let rec = closed(flags | REC_ENTRY, tcp_state::FIN_WAIT2, counters(1000, 300, 12, 9, 1), 250);
        let mut whole = FlowAgg::default();
        apply(&rec, None, &mut whole);
        assert_eq!(
            (
                whole.bytes_sent,
                whole.bytes_received,
                whole.segments_sent,
                whole.segments_received,
                whole.retransmissions
            ),
            (1000, 300, 12, 9, 1)
        );
        assert_eq!((whole.closed, whole.reset, whole.attempted, whole.rtt_us.sum), (1, 0, 0, 250));
        let entry = SockState { flags, folded: counters(1000, 200, 10, 9, 1), ..Default::default() };
        let mut rest = FlowAgg::default();
        apply(&rec, Some(&entry), &mut rest);
        assert_eq!((rest.bytes_sent, rest.bytes_received, rest.segments_sent, rest.segments_received), (0, 100, 2, 0));
        assert_eq!(rest.rtt_us.sum, 0, "no new segments in, no RTT sample");
        assert_eq!(rest.closed, 1);
    }

    #[test]
    fn a_close_reads_how_it_ended_from_the_entry_too() {
        let rec = closed(SOCK_CLIENT | SOCK_WALKED | REC_ENTRY, tcp_state::SYN_SENT, SockCounters::default(), 0);
        let mut agg = FlowAgg::default();
        apply(&rec, None, &mut agg);
        assert_eq!((agg.attempted, agg.failed, agg.refused, agg.timed_out), (1, 1, 1, 0));
        let entry =
            SockState { flags: SOCK_CLIENT | SOCK_WALKED | SOCK_ATTEMPTED | SOCK_RTO_EXPIRED, ..Default::default() };
        let mut agg = FlowAgg::default();
        apply(&rec, Some(&entry), &mut agg);
        assert_eq!((agg.attempted, agg.failed, agg.refused, agg.timed_out), (0, 1, 0, 1));
        let reset = closed(SOCK_WALKED | SOCK_ESTABLISHED, tcp_state::ESTABLISHED, counters(0, 5, 1, 2, 0), 0);
        let mut agg = FlowAgg::default();
        apply(&reset, None, &mut agg);
        assert_eq!((agg.closed, agg.reset, agg.bytes_received, agg.rtt_us.sum), (1, 1, 5, 0));
    }
}
