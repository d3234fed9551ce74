//! Per-socket state in a hash keyed by socket cookie, preallocated at `--max-sockets` entries:
//! tracking a socket takes an entry off the map's free list, with no allocation, accounting or
//! RCU free per connection (what connection setup cost most with socket-local storage). A socket
//! that does not fit is counted in `stat::SOCKETS_FULL`.
//!
//! Sockets folded by callbacks have an entry from their connect or accept to their close.
//! Sockets of walked namespaces get one only when it is needed (`fold::untracked_flags`):
//! `insert_late`. Those entries are counted in `WALKED_ENTRIES`, so that the close of a walked
//! socket skips the lookup (and the socket cookie) while no walked socket has one.

use agent_common::maps::{FlowKey, RttPending, SOCK_WALKED, SockCounters, SockState, stat};
use aya_ebpf::programs::SockOpsContext;

use crate::{
    ctx,
    maps::{BPF_ANY, BPF_NOEXIST, SOCKETS, WALKED_ENTRIES, count},
};

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
            if init.flags & SOCK_WALKED != 0 {
                walked_entry(1);
            }
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

/// Give a socket already tracked without an entry (a walked one, or one an earlier run of the
/// agent armed) its entry, the socket's cookie given. False when it has one already or SOCKETS
/// is full (counted).
#[inline(always)]
pub fn insert_late(cookie: u64, init: &SockState) -> bool {
    match SOCKETS.insert(cookie, init, BPF_NOEXIST) {
        Ok(()) => {
            if init.flags & SOCK_WALKED != 0 {
                walked_entry(1);
            }
            true
        }
        Err(e) if e == -EEXIST => false,
        Err(_) => {
            count(stat::SOCKETS_FULL);
            false
        }
    }
}

/// Stop tracking the socket, whose state has flags `flags` (counted in `SOCKETS_REMOVED`).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext, flags: u32) {
    if SOCKETS.remove(ctx::cookie(ctx)).is_ok() {
        count(stat::SOCKETS_REMOVED);
        if flags & SOCK_WALKED != 0 {
            walked_entry(u64::MAX);
        }
    }
}

/// A socket tracked with per-segment callbacks whose entry the walk now marks `SOCK_WALKED`
/// (`walk::adopt`): its entry counts among the walked ones from now on.
#[inline(always)]
pub fn adopted() {
    walked_entry(1);
}

/// Add `delta` (wrapping: `u64::MAX` is -1) to the count of SOCKETS entries of walked sockets.
///
/// The count only has to be right for the socket that reads it: an entry is inserted and later
/// looked for at the socket's close, both while the socket is locked (its callbacks and the walk
/// all run so), and the lock orders them, so the close sees the count of every insert made for
/// its own socket. Added after an insert and taken off after a removal, the count is too high
/// at worst, which costs a lookup, never a missed entry.
#[inline(always)]
fn walked_entry(delta: u64) {
    if let Some(p) = WALKED_ENTRIES.get_ptr_mut(0) {
        // SAFETY: the one value of an array map; atomic, every CPU shares it.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, delta) };
    }
}

/// Whether any socket of a walked namespace may have a SOCKETS entry. When false, a walked
/// socket (`fold::untracked_flags`) has none, and its close needs no lookup.
#[inline(always)]
pub fn walked_entries() -> bool {
    match WALKED_ENTRIES.get_ptr(0) {
        // SAFETY: the one value of an array map; a plain load (see `walked_entry`).
        Some(p) => (unsafe { core::ptr::read_volatile(p) }) != 0,
        None => true,
    }
}
