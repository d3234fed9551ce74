//! Per-socket state in a hash keyed by socket cookie, preallocated at `--max-sockets` entries:
//! tracking a socket takes an entry off the map's free list, with no allocation, accounting or
//! RCU free per connection (what connection setup cost most with socket-local storage). A socket
//! that does not fit is counted in `stat::SOCKETS_FULL`.
//!
//! Sockets folded by callbacks have an entry from their connect or accept to their close.
//! Sockets of walked namespaces get one only when it is needed (`fold::untracked_flags`):
//! `insert_late`.

use agent_common::maps::{FlowKey, RttPending, SockCounters, SockState, stat};
use aya_ebpf::programs::SockOpsContext;

use crate::{
    ctx,
    maps::{SOCKETS, count},
};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// A new socket state: its flow, the time of its last fold (callback-folded sockets only), its
/// flags and the counters already folded (or, for retransmissions, counted elsewhere).
///
/// Its zero fields are written from an opaque zero: the optimizer would merge stores of a
/// constant 0 into a `memset` call, which in eBPF is a byte loop (five instructions a byte, ~50
/// bytes per socket here).
#[inline(always)]
pub fn new_state(key: FlowKey, last_fold_ns: u64, flags: u32, folded: SockCounters) -> SockState {
    let z = core::hint::black_box(0u64);
    let z32 = z as u32;
    SockState {
        key,
        last_fold_ns,
        folded,
        flags,
        _pad: z32,
        rtt: RttPending { sum: z, count: z32, _pad: z32, buckets: z.to_ne_bytes() },
    }
}

/// Counters with nothing folded yet but `total_retrans` (retransmissions counted elsewhere).
#[inline(always)]
pub fn folded_none(total_retrans: u32) -> SockCounters {
    let z = core::hint::black_box(0u64);
    let z32 = z as u32;
    SockCounters { bytes_acked: z, bytes_received: z, segs_out: z32, segs_in: z32, total_retrans, _pad: z32 }
}

/// The socket's state if it has one.
#[inline(always)]
pub fn get(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    let cookie = ctx::cookie(ctx);
    // SAFETY: a SOCKETS value pointer; callbacks of one socket run under its lock, and the
    // program does not keep the reference past this invocation.
    SOCKETS.get_ptr_mut(cookie).and_then(|p| unsafe { p.as_mut() })
}

/// Start tracking the socket with state `init`, stored as given and not read back (the caller
/// has everything it needs in `init`). False (counted in `SOCKETS_FULL`) when `--max-sockets`
/// sockets are tracked already. A socket tracked already (a second connect on one socket) starts
/// over from `init`.
#[inline(always)]
pub fn track(ctx: &SockOpsContext, init: &SockState) -> bool {
    let cookie = ctx::cookie(ctx);
    match SOCKETS.insert(cookie, init, BPF_NOEXIST) {
        Ok(()) => {
            count(stat::SOCKETS_INSERTED);
            true
        }
        // Replacing an entry takes no free one (the preallocated hash swaps in a spare).
        Err(e) if e == -EEXIST => SOCKETS.insert(cookie, init, BPF_ANY).is_ok(),
        Err(_) => {
            count(stat::SOCKETS_FULL);
            false
        }
    }
}

/// Give a socket already tracked without an entry (a walked one) its entry, the socket's cookie
/// given. False when it has one already or SOCKETS is full (counted).
#[inline(always)]
pub fn insert_late(cookie: u64, init: &SockState) -> bool {
    match SOCKETS.insert(cookie, init, BPF_NOEXIST) {
        Ok(()) => true,
        Err(e) if e == -EEXIST => false,
        Err(_) => {
            count(stat::SOCKETS_FULL);
            false
        }
    }
}

/// Stop tracking the socket (counted in `SOCKETS_REMOVED`).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext) {
    if SOCKETS.remove(ctx::cookie(ctx)).is_ok() {
        count(stat::SOCKETS_REMOVED);
    }
}
