//! Kernel-side decisions as plain functions: what a socket adds to its flow since the last fold,
//! and how a connection ended. The eBPF programs call these; unit tests run them in userspace.

use crate::{
    hist::bucket_index,
    maps::{
        RTT_PENDING, RttPending, SOCK_ATTEMPTED, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_FIN_RCVD, SOCK_FIN_SENT,
        SOCK_RTO_EXPIRED, SOCK_WALKED, SockCounters,
    },
};

/// TCP states (include/net/tcp_states.h).
pub mod tcp_state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const TIME_WAIT: u32 = 6;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
}

/// What a socket's TCP state says of its FINs: `SOCK_FIN_SENT` once this side has sent its FIN
/// (FIN_WAIT1 and later, LAST_ACK, CLOSING), `SOCK_FIN_RCVD` once the peer's has arrived
/// (CLOSE_WAIT, LAST_ACK, CLOSING). A FIN that arrives in FIN_WAIT2 closes the socket without a
/// state of its own: that one is read from the socket's `SOCK_DONE` flag (walked sockets) or
/// seen by parsing incoming segments (`fin_seen_done`, `fin_seen`). Deriving the rest from the
/// state spares a callback a lookup per transition.
#[inline(always)]
pub fn fin_flags(state: u32) -> u32 {
    match state {
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 | tcp_state::TIME_WAIT => SOCK_FIN_SENT,
        tcp_state::CLOSE_WAIT => SOCK_FIN_RCVD,
        tcp_state::LAST_ACK | tcp_state::CLOSING => SOCK_FIN_SENT | SOCK_FIN_RCVD,
        _ => 0,
    }
}

/// sock_ops callbacks (`BPF_SOCK_OPS_*_CB`, uapi `linux/bpf.h`) that the program handles.
pub mod op {
    pub const TCP_CONNECT: u32 = 3;
    pub const ACTIVE_ESTABLISHED: u32 = 4;
    pub const PASSIVE_ESTABLISHED: u32 = 5;
    pub const RTO: u32 = 8;
    pub const RETRANS: u32 = 9;
    pub const STATE: u32 = 10;
    pub const TCP_LISTEN: u32 = 11;
    pub const RTT: u32 = 12;
    pub const PARSE_HDR_OPT: u32 = 13;
    pub const HDR_OPT_LEN: u32 = 14;

    /// `HDR_OPT_LEN` arg 1 when the kernel computes the current MSS (`tcp_current_mss`, 1-2
    /// times per data segment): no segment goes out.
    pub const WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;
}

/// Whether a sock_ops callback, from its op and first two arguments alone, may have work for
/// the program. Most callbacks have none: the kernel makes `TIMEOUT_INIT`, `RWND_INIT` and
/// `NEEDS_ECN` (two each per connection) for every socket of the cgroup whatever its flags, and
/// of the state changes only FIN_WAIT1 and CLOSE matter (a listener's only change is to CLOSE).
/// The program's entry answers this before it enters the handler, so a callback without work
/// runs a few instructions in one place: what it costs when the caches are cold (after a bulk
/// transfer) is the lines it touches.
#[inline(always)]
pub fn has_work(op: u32, arg0: u32, arg1: u32) -> bool {
    match op {
        op::STATE => arg1 == tcp_state::FIN_WAIT1 || arg1 == tcp_state::CLOSE,
        op::HDR_OPT_LEN => arg0 != op::WRITE_HDR_TCP_CURRENT_MSS,
        op::TCP_CONNECT
        | op::ACTIVE_ESTABLISHED
        | op::PASSIVE_ESTABLISHED
        | op::RTO
        | op::RETRANS
        | op::TCP_LISTEN
        | op::RTT
        | op::PARSE_HDR_OPT => true,
        _ => false,
    }
}

/// Socket callback flags (`BPF_SOCK_OPS_*_CB_FLAG`, uapi `linux/bpf.h`): which callbacks the
/// kernel makes for a socket. They live in the socket itself (`tcp_sock.bpf_sock_ops_cb_flags`),
/// so they are also the one per-socket memory that costs no map operation.
pub mod cb {
    pub const RTO: u32 = 1 << 0;
    pub const RETRANS: u32 = 1 << 1;
    pub const STATE: u32 = 1 << 2;
    pub const RTT: u32 = 1 << 3;
    /// A callback for every incoming segment, armed at FIN_WAIT1 to catch the peer's FIN
    /// (sockets folded by callbacks; walked ones read `SOCK_DONE` at close instead).
    pub const PARSE_ALL_HDR_OPT: u32 = 1 << 4;
    /// A callback for incoming segments with unknown TCP options. Every socket of ours uses it
    /// as its role bit (`SERVER`): segments with unknown options are rare, and the parse
    /// callback only looks at their FIN flag.
    pub const PARSE_UNKNOWN_HDR_OPT: u32 = 1 << 5;
    pub const WRITE_HDR_OPT: u32 = 1 << 6;

    /// With connection records (`record`), the mark of a walked socket that has a SOCKETS entry
    /// (its RTO gave up, its flow did not fit, an accept with SYN-ACK retransmissions to keep, or
    /// the walk made one: a restart's baseline, a socket handed over from callbacks, a client
    /// seen connecting): its records say so (`record::REC_ENTRY`), and the daemon looks the entry
    /// up. The walk folds such a socket into its entry; one without the mark it hands to the
    /// daemon (`record::item::SNAPSHOT`), with no map operation. Set before the entry is stored.
    /// Walked sockets need no retransmission callback otherwise, and the one this arms returns
    /// at once; these sockets are rare, so are their extra callbacks.
    pub const ENTRY: u32 = RETRANS;

    /// The role bit: set on the accepting side. The flags live in the socket, so they outlast
    /// the run of the agent that set them: the next run reads a socket's role here.
    pub const SERVER: u32 = PARSE_UNKNOWN_HDR_OPT;

    /// Callbacks of an established socket folded by callbacks: state changes, retransmissions,
    /// RTOs, RTT samples, the send path when `send_path` (a fold interval is set), and the role
    /// bit.
    #[inline(always)]
    pub const fn callbacks(server: bool, send_path: bool) -> u32 {
        RTO | RETRANS | STATE | RTT | if send_path { WRITE_HDR_OPT } else { 0 } | if server { SERVER } else { 0 }
    }

    /// Callbacks of a socket of a walked namespace: state changes (its close folds it) and RTOs
    /// (timeouts). Retransmissions need no callback: the walk and the close fold them from the
    /// socket's `total_retrans`. No RTT callback: that is what tells these sockets apart from
    /// the ones folded by callbacks, which always have it.
    #[inline(always)]
    pub fn walked(server: bool) -> u32 {
        STATE | RTO | if server { SERVER } else { 0 }
    }
}

/// `cb::PARSE_ALL_HDR_OPT`, as `fin_seen` reads it.
pub const PARSE_ALL_HDR_OPT_CB_FLAG: u32 = cb::PARSE_ALL_HDR_OPT;

/// The socket flags of a socket of a walked namespace from its callback flags (`cb::walked`):
/// `SOCK_WALKED`, plus `SOCK_CLIENT` unless it is the accepting side. `None` for a socket that
/// is not one of them (no flags of ours: a socket from before the agent started; or ours, folded
/// by callbacks).
///
/// Such a socket has no entry in SOCKETS until one is needed: the walk inserts one when it first
/// folds the socket, the RTO callback when the timer gives up, and a flow that did not fit marks
/// one (`SOCK_FLOW_LOST`). A connection that opens and closes between two walks, as most short
/// ones do, never has one: its close folds its counters whole.
#[inline(always)]
pub fn untracked_flags(cb_flags: u32) -> Option<u32> {
    if cb_flags & cb::STATE == 0 || cb_flags & cb::RTT != 0 {
        return None;
    }
    Some(SOCK_WALKED | if cb_flags & cb::SERVER != 0 { 0 } else { SOCK_CLIENT })
}

/// The socket flags of a socket armed with per-segment callbacks (`cb::callbacks`: it has the
/// RTT callback) that has no state entry: `SOCK_CLIENT` unless its role bit says it accepted,
/// and nothing else. `None` for any other socket.
///
/// This run stores a state entry for every socket it arms, before arming it, and removes it only
/// at the socket's close, after its last callback. So such a socket was armed by an earlier run
/// of the agent, which counted it up to that run's last fold: the next run stores it with what
/// it did so far (its payload counters now) as folded, and counts it from then on.
#[inline(always)]
pub fn armed_flags(cb_flags: u32) -> Option<u32> {
    if cb_flags & cb::RTT == 0 {
        return None;
    }
    Some(if cb_flags & cb::SERVER != 0 { 0 } else { SOCK_CLIENT })
}

/// Whether a walked socket in TCP state `state` (or leaving it for CLOSE) was established: any
/// synchronized state. A walked socket's state entry may have been made before its
/// establishment, which then did not look it up: this, not `SOCK_ESTABLISHED`, is what counts.
#[inline(always)]
pub fn was_established(state: u32) -> bool {
    matches!(
        state,
        tcp_state::ESTABLISHED
            | tcp_state::FIN_WAIT1
            | tcp_state::FIN_WAIT2
            | tcp_state::CLOSE_WAIT
            | tcp_state::LAST_ACK
            | tcp_state::CLOSING
    )
}

/// The connection attempt of a client socket of a walked namespace is counted once, by the
/// first of: the walk at a window end while the socket is still connecting (SYN_SENT; the state
/// entry it makes says `SOCK_ATTEMPTED`), the establishment, or a close without establishment.
/// So its connect costs no flow lookup, and every attempt still lands in the window it was made
/// in: the walk runs at every window end, before the window's counters are read.
///
/// At establishment, with the socket's state entry flags if it has an entry: whether the
/// attempt is still to be counted.
#[inline(always)]
pub fn attempt_due_at_establishment(entry_flags: Option<u32>) -> bool {
    entry_flags.is_none_or(|f| f & SOCK_ATTEMPTED == 0)
}

/// At the close of a socket with flags `flags` leaving `old_state` (see
/// `attempt_due_at_establishment`): whether its attempt is still to be counted. Only a walked
/// client that never got established and that the walk did not count.
#[inline(always)]
pub fn attempt_due_at_close(flags: u32, old_state: u32) -> bool {
    flags & (SOCK_WALKED | SOCK_CLIENT | SOCK_ATTEMPTED) == SOCK_WALKED | SOCK_CLIENT && !was_established(old_state)
}

/// Whether the peer's FIN arrived, for a socket that leaves `old_state` for CLOSE with callback
/// flags `cb_flags`: `SOCK_FIN_RCVD` or 0. From FIN_WAIT1 on, the socket parses incoming
/// segments (`PARSE_ALL_HDR_OPT_CB_FLAG`), and the parse callback disarms itself at the peer's
/// FIN: a socket leaving FIN_WAIT1 or FIN_WAIT2 disarmed got it, one still armed did not (a reset,
/// or the FIN_WAIT2 timeout). Later states say so themselves (`fin_flags`). The flag is the only
/// memory the parse callback needs, so it does no lookup.
///
/// Sockets of walked namespaces parse nothing: the kernel marks the socket itself when the FIN
/// arrives (`SOCK_DONE`, read at the close), which spares the FIN_WAIT1 callback its work and
/// the socket its parse callbacks: `fin_seen_done`.
#[inline(always)]
pub fn fin_seen(old_state: u32, cb_flags: u32) -> u32 {
    fin_seen_done(old_state, cb_flags & PARSE_ALL_HDR_OPT_CB_FLAG == 0)
}

/// `fin_seen` from whether the peer's FIN arrived (`done`: the socket's `SOCK_DONE`, or the
/// parse callback's disarmed flag), for a socket leaving `old_state` for CLOSE.
#[inline(always)]
pub fn fin_seen_done(old_state: u32, done: bool) -> u32 {
    match old_state {
        tcp_state::FIN_WAIT1 | tcp_state::FIN_WAIT2 if done => SOCK_FIN_RCVD,
        _ => 0,
    }
}

/// Payload bytes from the kernel's sequence-space counters. `bytes_acked` counts the client's SYN
/// and an acknowledged FIN, `bytes_received` counts the peer's FIN; each takes one sequence
/// number but carries no data. `snd_una == snd_nxt` after our FIN was sent means it was acked.
#[inline(always)]
pub fn payload(raw: &SockCounters, flags: u32, snd_una: u32, snd_nxt: u32) -> SockCounters {
    let syn = (flags & SOCK_CLIENT != 0 && flags & SOCK_ESTABLISHED != 0) as u64;
    let fin_acked = (flags & SOCK_FIN_SENT != 0 && snd_una == snd_nxt) as u64;
    let fin_rcvd = (flags & SOCK_FIN_RCVD != 0) as u64;
    SockCounters {
        bytes_acked: raw.bytes_acked.saturating_sub(syn + fin_acked),
        bytes_received: raw.bytes_received.saturating_sub(fin_rcvd),
        ..*raw
    }
}

/// What a socket adds to its flow since its counters were last folded, and the new folded
/// values. Folding is monotonic: a reading below the folded value (the FIN correction in
/// `payload` applied a moment before the FIN itself is counted) adds nothing and is remembered
/// as the old value, so nothing is counted twice. One fold of a socket runs at a time: its
/// callbacks and the walk (`iter/tcp`) all run with the socket locked.
#[inline(always)]
pub fn fold_step(folded: &SockCounters, now: &SockCounters) -> (SockCounters, SockCounters) {
    let delta = SockCounters {
        bytes_acked: now.bytes_acked.saturating_sub(folded.bytes_acked),
        bytes_received: now.bytes_received.saturating_sub(folded.bytes_received),
        segs_out: now.segs_out.saturating_sub(folded.segs_out),
        segs_in: now.segs_in.saturating_sub(folded.segs_in),
        total_retrans: now.total_retrans.saturating_sub(folded.total_retrans),
        _pad: 0,
    };
    let next = SockCounters {
        bytes_acked: folded.bytes_acked + delta.bytes_acked,
        bytes_received: folded.bytes_received + delta.bytes_received,
        segs_out: folded.segs_out + delta.segs_out,
        segs_in: folded.segs_in + delta.segs_in,
        total_retrans: folded.total_retrans + delta.total_retrans,
        _pad: 0,
    };
    (delta, next)
}

/// An accepted socket's `inherited` SYN-ACK retransmissions (its `total_retrans` at
/// establishment), of which the SYN-ACK program counted `tallied` for its request: (the base
/// the socket folds from, the retransmissions the socket counts because the program never ran
/// for them). A retransmission the program counted while the socket was being created may be
/// in the tally and not in the socket's count: the base is at most `inherited`.
#[inline(always)]
pub fn synack_base(tallied: u32, inherited: u32) -> (u32, u32) {
    let base = tallied.min(inherited);
    (base, inherited - base)
}

/// Whether a socket's counters are due to be folded: `interval` since the last fold (0: always).
#[inline(always)]
pub fn fold_due(now: u64, last_fold: u64, interval: u64) -> bool {
    now.wrapping_sub(last_fold) >= interval
}

/// Keep one RTT sample (microseconds) in the socket until its next fold. Returns true when the
/// socket now holds `RTT_PENDING` samples and must be folded before it can take another.
#[inline(always)]
pub fn rtt_push(p: &mut RttPending, us: u64) -> bool {
    let n = p.count as usize;
    if let Some(slot) = p.buckets.get_mut(n) {
        *slot = bucket_index(us) as u8;
        p.sum += us;
        p.count += 1;
    }
    p.count as usize >= RTT_PENDING
}

/// How a tracked connection ended, as counter increments on its flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct End {
    pub closed: u64,
    pub failed: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub reset: u64,
}

/// Classify the end of a connection from the state it left for CLOSE and what we saw of it.
///
/// - Never established: if the retransmission timer gave up (RTO callback said "expired") it timed
///   out; from SYN_SENT otherwise it was refused (a RST answered the SYN); anything else (the
///   application closed a connecting socket) is a plain failure.
/// - Established: `closed`; additionally `timed_out` if the RTO gave up, or `reset` if it went to
///   CLOSE straight from a synchronized state (a RST was received or sent: an orderly close always
///   passes through FIN_WAIT/CLOSING/LAST_ACK first).
#[inline(always)]
pub fn classify_end(old_state: u32, flags: u32) -> End {
    let mut e = End::default();
    let expired = flags & SOCK_RTO_EXPIRED != 0;
    if flags & SOCK_ESTABLISHED == 0 {
        e.failed = 1;
        if expired {
            e.timed_out = 1;
        } else if old_state == tcp_state::SYN_SENT {
            e.refused = 1;
        }
        return e;
    }
    e.closed = 1;
    if expired {
        e.timed_out = 1;
    } else if old_state == tcp_state::ESTABLISHED
        || old_state == tcp_state::CLOSE_WAIT
        || old_state == tcp_state::SYN_RECV
    {
        e.reset = 1;
    }
    e
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::tcp_state::*;
    use super::*;

    #[test]
    fn an_accepted_socket_counts_the_synacks_the_program_missed() {
        assert_eq!(synack_base(3, 3), (3, 0), "all counted by the program");
        assert_eq!(synack_base(1, 3), (1, 2), "two retransmitted without a run: the socket counts them");
        assert_eq!(synack_base(0, 2), (0, 2), "no run at all (or no tally left)");
        assert_eq!(synack_base(4, 3), (3, 0), "one counted as the socket was created, not in its count");
        assert_eq!(synack_base(0, 0), (0, 0));
    }

    #[test]
    fn only_callbacks_with_work_enter_the_handler() {
        const TIMEOUT_INIT: u32 = 1;
        const RWND_INIT: u32 = 2;
        const NEEDS_ECN: u32 = 6;
        const BASE_RTT: u32 = 7;
        for o in [TIMEOUT_INIT, RWND_INIT, NEEDS_ECN, BASE_RTT, 15, 16, 99] {
            assert!(!has_work(o, 0, 0), "op {o}");
        }
        for o in [
            op::TCP_CONNECT,
            op::ACTIVE_ESTABLISHED,
            op::PASSIVE_ESTABLISHED,
            op::RTO,
            op::RETRANS,
            op::TCP_LISTEN,
            op::RTT,
            op::PARSE_HDR_OPT,
        ] {
            assert!(has_work(o, 0, 0), "op {o}");
        }
        // State changes: FIN_WAIT1 (arms the FIN parse) and CLOSE (the fold), from any state,
        // a listener's too; nothing else.
        for old in [ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, LISTEN, CLOSING] {
            assert!(has_work(op::STATE, old, CLOSE), "{old} -> CLOSE");
        }
        assert!(has_work(op::STATE, ESTABLISHED, FIN_WAIT1));
        for (old, new) in [
            (SYN_SENT, ESTABLISHED),
            (SYN_RECV, ESTABLISHED),
            (FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT1, CLOSING),
            (ESTABLISHED, CLOSE_WAIT),
            (CLOSE_WAIT, LAST_ACK),
            (FIN_WAIT2, TIME_WAIT),
        ] {
            assert!(!has_work(op::STATE, old, new), "{old} -> {new}");
        }
        // Outgoing segments, not MSS computations.
        assert!(has_work(op::HDR_OPT_LEN, 0, 0));
        assert!(has_work(op::HDR_OPT_LEN, 2, 0));
        assert!(!has_work(op::HDR_OPT_LEN, op::WRITE_HDR_TCP_CURRENT_MSS, 0));
    }

    #[test]
    fn a_walked_clients_attempt_is_counted_once() {
        use crate::maps::SOCK_FLOW_LOST;
        let walked_client = SOCK_WALKED | SOCK_CLIENT;
        // Established before any walk saw it: counted at establishment, never at close.
        assert!(attempt_due_at_establishment(None));
        for old in [ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING] {
            assert!(!attempt_due_at_close(walked_client, old), "{old}");
            assert!(!attempt_due_at_close(walked_client | SOCK_ESTABLISHED, old), "{old}");
        }
        // Seen connecting by the walk: counted there, neither at establishment nor at close.
        assert!(!attempt_due_at_establishment(Some(walked_client | SOCK_ATTEMPTED)));
        assert!(!attempt_due_at_close(walked_client | SOCK_ATTEMPTED, SYN_SENT));
        // An entry for another reason (the RTO gave up, the flow did not fit): still due.
        assert!(attempt_due_at_establishment(Some(walked_client | SOCK_RTO_EXPIRED)));
        assert!(attempt_due_at_close(walked_client | SOCK_RTO_EXPIRED, SYN_SENT));
        assert!(attempt_due_at_close(walked_client | SOCK_FLOW_LOST, SYN_SENT));
        // Never established, not seen by a walk: counted at close.
        assert!(attempt_due_at_close(walked_client, SYN_SENT));
        // Servers, and clients folded by callbacks, count theirs at accept and connect.
        assert!(!attempt_due_at_close(SOCK_WALKED, SYN_RECV));
        assert!(!attempt_due_at_close(SOCK_CLIENT, SYN_SENT));
    }

    #[test]
    fn fold_adds_what_is_new_and_never_goes_back() {
        let a =
            SockCounters { bytes_acked: 100, bytes_received: 50, segs_out: 3, segs_in: 2, total_retrans: 1, _pad: 0 };
        let b =
            SockCounters { bytes_acked: 1100, bytes_received: 50, segs_out: 10, segs_in: 4, total_retrans: 3, _pad: 0 };
        let (d, next) = fold_step(&a, &b);
        assert_eq!(
            d,
            SockCounters { bytes_acked: 1000, bytes_received: 0, segs_out: 7, segs_in: 2, total_retrans: 2, _pad: 0 }
        );
        assert_eq!(next, b);
        // A dip (FIN correction before the FIN is counted) adds nothing and keeps the high mark.
        let dip = SockCounters { bytes_acked: 1099, ..b };
        let (d, next) = fold_step(&b, &dip);
        assert_eq!(d.bytes_acked, 0);
        assert_eq!(next.bytes_acked, 1100);
        let (d, _) = fold_step(&next, &SockCounters { bytes_acked: 1100, ..b });
        assert_eq!(d.bytes_acked, 0, "the FIN itself is not payload");
    }

    #[test]
    fn payload_excludes_syn_and_fin() {
        use crate::maps::{SOCK_CLIENT, SOCK_FIN_RCVD, SOCK_FIN_SENT};
        // Client wrote 12345 and read 5000: the kernel shows 12347 acked (SYN, FIN) and 5001 received (FIN).
        let raw =
            SockCounters { bytes_acked: 12347, bytes_received: 5001, segs_out: 6, segs_in: 5, ..Default::default() };
        let flags = SOCK_CLIENT | SOCK_ESTABLISHED | SOCK_FIN_SENT | SOCK_FIN_RCVD;
        let p = payload(&raw, flags, 7, 7);
        assert_eq!((p.bytes_acked, p.bytes_received), (12345, 5000));
        // Server wrote 5000, read 12345: 5001 acked (FIN), 12346 received (FIN).
        let raw = SockCounters { bytes_acked: 5001, bytes_received: 12346, ..Default::default() };
        let p = payload(&raw, SOCK_ESTABLISHED | SOCK_FIN_SENT | SOCK_FIN_RCVD, 9, 9);
        assert_eq!((p.bytes_acked, p.bytes_received), (5000, 12345));
        // FIN sent but not yet acked: nothing to take off.
        let p =
            payload(&SockCounters { bytes_acked: 5000, ..Default::default() }, SOCK_ESTABLISHED | SOCK_FIN_SENT, 3, 4);
        assert_eq!(p.bytes_acked, 5000);
        // A connect that never completed has nothing to subtract from.
        let p = payload(&SockCounters::default(), SOCK_CLIENT, 0, 1);
        assert_eq!(p.bytes_acked, 0);
    }

    #[test]
    fn fins_follow_from_the_state() {
        use crate::maps::{SOCK_FIN_RCVD, SOCK_FIN_SENT};
        for (state, flags) in [
            (ESTABLISHED, 0),
            (SYN_SENT, 0),
            (SYN_RECV, 0),
            (FIN_WAIT1, SOCK_FIN_SENT),
            (FIN_WAIT2, SOCK_FIN_SENT),
            (CLOSE_WAIT, SOCK_FIN_RCVD),
            (LAST_ACK, SOCK_FIN_SENT | SOCK_FIN_RCVD),
            (CLOSING, SOCK_FIN_SENT | SOCK_FIN_RCVD),
            (CLOSE, 0),
            (LISTEN, 0),
        ] {
            assert_eq!(fin_flags(state), flags, "state {state}");
        }
        // The client of the payload test, closed from LAST_ACK: both FINs off.
        let raw = SockCounters { bytes_acked: 12347, bytes_received: 5001, ..Default::default() };
        let p = payload(&raw, SOCK_CLIENT | SOCK_ESTABLISHED | fin_flags(LAST_ACK), 7, 7);
        assert_eq!((p.bytes_acked, p.bytes_received), (12345, 5000));
    }

    #[test]
    fn a_walked_sockets_fin_is_seen_from_sock_done() {
        use crate::maps::SOCK_FIN_RCVD;
        assert_eq!(fin_seen_done(FIN_WAIT2, true), SOCK_FIN_RCVD);
        assert_eq!(fin_seen_done(FIN_WAIT1, true), SOCK_FIN_RCVD);
        assert_eq!((fin_seen_done(FIN_WAIT2, false), fin_seen_done(FIN_WAIT1, false)), (0, 0));
        // Elsewhere the state says it (`fin_flags`), whatever the flag.
        for old in [ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT, LAST_ACK, CLOSING] {
            assert_eq!(fin_seen_done(old, true), 0, "state {old}");
        }
    }

    #[test]
    fn a_fin_in_fin_wait_is_seen_from_the_disarmed_parse_callback() {
        use crate::maps::SOCK_FIN_RCVD;
        const RTO_RETRANS_STATE: u32 = 1 | 2 | 4;
        let armed = RTO_RETRANS_STATE | PARSE_ALL_HDR_OPT_CB_FLAG;
        // The FIN arrived in FIN_WAIT2 (or with the ACK of ours, in FIN_WAIT1): disarmed.
        assert_eq!(fin_seen(FIN_WAIT2, RTO_RETRANS_STATE), SOCK_FIN_RCVD);
        assert_eq!(fin_seen(FIN_WAIT1, RTO_RETRANS_STATE), SOCK_FIN_RCVD);
        // A reset or the FIN_WAIT2 timeout: still armed, no FIN.
        assert_eq!(fin_seen(FIN_WAIT2, armed), 0);
        assert_eq!(fin_seen(FIN_WAIT1, armed), 0);
        // Other states never arm it; their FINs follow from the state.
        for old in [ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT, LAST_ACK, CLOSING] {
            assert_eq!(fin_seen(old, RTO_RETRANS_STATE), 0, "state {old}");
        }
        // A server that sent 5000 bytes and read 12345, closed from FIN_WAIT2 after the peer's FIN.
        let raw = SockCounters { bytes_acked: 5001, bytes_received: 12346, ..Default::default() };
        let flags = SOCK_ESTABLISHED | fin_flags(FIN_WAIT2) | fin_seen(FIN_WAIT2, RTO_RETRANS_STATE);
        let p = payload(&raw, flags, 9, 9);
        assert_eq!((p.bytes_acked, p.bytes_received), (5000, 12345));
    }

    #[test]
    fn rtt_samples_wait_for_the_fold_and_none_is_lost() {
        let mut p = RttPending::default();
        for i in 0..RTT_PENDING as u64 - 1 {
            assert!(!rtt_push(&mut p, 100 + i), "sample {i}");
        }
        assert!(rtt_push(&mut p, 70_000), "the last slot asks for a fold");
        assert_eq!(p.count as usize, RTT_PENDING);
        assert_eq!(p.sum, (100..100 + RTT_PENDING as u64 - 1).sum::<u64>() + 70_000);
        assert_eq!(p.buckets[0] as usize, bucket_index(100));
        assert_eq!(p.buckets[RTT_PENDING - 1] as usize, bucket_index(70_000));
        // A full buffer takes nothing more (the caller folds first) and keeps asking.
        let before = p;
        assert!(rtt_push(&mut p, 5));
        assert_eq!(p, before);
        // Bucket indices fit a byte, also for the largest values.
        let mut q = RttPending::default();
        rtt_push(&mut q, u64::MAX);
        assert_eq!(q.buckets[0] as usize, crate::hist::HIST_BUCKETS - 1);
    }

    #[test]
    fn due_folds() {
        assert!(fold_due(100, 0, 100));
        assert!(!fold_due(99, 0, 100));
        assert!(fold_due(5, 5, 0), "interval 0: every callback folds");
    }

    #[test]
    fn untracked_sockets_are_told_by_their_callback_flags() {
        // Walked: role from the role bit.
        assert_eq!(untracked_flags(cb::walked(false)), Some(SOCK_WALKED | SOCK_CLIENT));
        assert_eq!(untracked_flags(cb::walked(true)), Some(SOCK_WALKED));
        // The parse callback armed at FIN_WAIT1 (and disarmed at the FIN) changes nothing.
        assert_eq!(untracked_flags(cb::walked(true) | cb::PARSE_ALL_HDR_OPT), Some(SOCK_WALKED));
        assert_eq!(untracked_flags(cb::walked(false) | cb::PARSE_ALL_HDR_OPT), Some(SOCK_WALKED | SOCK_CLIENT));
        // Not ours (no flags: from before the agent, or not tracked) or folded by callbacks (RTT).
        assert_eq!(untracked_flags(0), None);
        assert_eq!(untracked_flags(cb::RTO | cb::RETRANS | cb::STATE | cb::RTT), None);
        assert_eq!(untracked_flags(cb::RTO | cb::RETRANS | cb::STATE | cb::RTT | cb::WRITE_HDR_OPT), None);
        // The role bit is the only one of the two sets that differs; RTT never in a walked set.
        assert_eq!(cb::walked(true) ^ cb::walked(false), cb::SERVER);
        assert_eq!(cb::walked(true) & (cb::RTT | cb::RETRANS | cb::WRITE_HDR_OPT), 0);
    }

    #[test]
    fn sockets_armed_by_callbacks_keep_their_role_in_their_flags() {
        for send_path in [false, true] {
            let (client, server) = (cb::callbacks(false, send_path), cb::callbacks(true, send_path));
            assert_eq!(armed_flags(client), Some(SOCK_CLIENT));
            assert_eq!(armed_flags(server), Some(0));
            // The parse callback armed at FIN_WAIT1 (and disarmed at the FIN) changes nothing.
            assert_eq!(armed_flags(client | cb::PARSE_ALL_HDR_OPT), Some(SOCK_CLIENT));
            assert_eq!(armed_flags(server | cb::PARSE_ALL_HDR_OPT), Some(0));
            // Never taken for walked sockets, nor walked ones for these.
            assert_eq!(untracked_flags(client), None);
            assert_eq!(untracked_flags(server), None);
            assert_eq!(client ^ server, cb::SERVER);
            assert_eq!(client & cb::WRITE_HDR_OPT != 0, send_path);
        }
        // A client armed at its connect, before its send path is.
        assert_eq!(armed_flags(cb::RTO | cb::RETRANS | cb::STATE | cb::RTT), Some(SOCK_CLIENT));
        // Walked sockets, listeners (STATE only) and sockets of no run of ours.
        assert_eq!(armed_flags(cb::walked(false)), None);
        assert_eq!(armed_flags(cb::walked(true)), None);
        assert_eq!(armed_flags(cb::STATE), None);
        assert_eq!(armed_flags(0), None);
    }

    #[test]
    fn established_is_any_synchronized_state() {
        for s in [ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING] {
            assert!(was_established(s), "{s}");
        }
        for s in [SYN_SENT, SYN_RECV, TIME_WAIT, CLOSE, LISTEN] {
            assert!(!was_established(s), "{s}");
        }
    }

    #[test]
    fn ends() {
        assert_eq!(classify_end(SYN_SENT, 0), End { failed: 1, refused: 1, ..Default::default() });
        assert_eq!(classify_end(SYN_SENT, SOCK_RTO_EXPIRED), End { failed: 1, timed_out: 1, ..Default::default() });
        assert_eq!(classify_end(FIN_WAIT2, SOCK_ESTABLISHED), End { closed: 1, ..Default::default() });
        assert_eq!(classify_end(LAST_ACK, SOCK_ESTABLISHED), End { closed: 1, ..Default::default() });
        assert_eq!(classify_end(ESTABLISHED, SOCK_ESTABLISHED), End { closed: 1, reset: 1, ..Default::default() });
        assert_eq!(
            classify_end(ESTABLISHED, SOCK_ESTABLISHED | SOCK_RTO_EXPIRED),
            End { closed: 1, timed_out: 1, ..Default::default() }
        );
        assert_eq!(classify_end(CLOSE, 0), End { failed: 1, ..Default::default() });
    }
}
