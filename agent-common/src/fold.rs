//! Kernel-side decisions as plain functions: what a socket adds to its flow since the last fold,
//! and how a connection ended. The eBPF programs call these; unit tests run them in userspace.

use crate::maps::{SOCK_ESTABLISHED, SOCK_RTO_EXPIRED, SockCounters};

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

/// What the socket's cumulative counters add since the values last folded. Counters only grow
/// while a socket lives; wrapping subtraction keeps a (theoretical) wrap exact.
#[inline(always)]
pub fn counters_delta(folded: &SockCounters, now: &SockCounters) -> SockCounters {
    SockCounters {
        bytes_acked: now.bytes_acked.wrapping_sub(folded.bytes_acked),
        bytes_received: now.bytes_received.wrapping_sub(folded.bytes_received),
        segs_out: now.segs_out.wrapping_sub(folded.segs_out),
        segs_in: now.segs_in.wrapping_sub(folded.segs_in),
    }
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
    } else if old_state == tcp_state::ESTABLISHED || old_state == tcp_state::CLOSE_WAIT || old_state == tcp_state::SYN_RECV {
        e.reset = 1;
    }
    e
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::tcp_state::*;
    use super::*;

    #[test]
    fn delta_is_what_is_new() {
        let a = SockCounters { bytes_acked: 100, bytes_received: 50, segs_out: 3, segs_in: 2 };
        let b = SockCounters { bytes_acked: 1100, bytes_received: 50, segs_out: 10, segs_in: 4 };
        assert_eq!(counters_delta(&a, &b), SockCounters { bytes_acked: 1000, bytes_received: 0, segs_out: 7, segs_in: 2 });
        let wrap = SockCounters { segs_out: u32::MAX, ..Default::default() };
        let after = SockCounters { segs_out: 1, ..Default::default() };
        assert_eq!(counters_delta(&wrap, &after).segs_out, 2);
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
