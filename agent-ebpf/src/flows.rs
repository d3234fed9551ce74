//! Updating per-flow aggregates: find or create the key's entry, then atomic adds (several CPUs
//! fold sockets of the same key at once; the daemon only reads).

use agent_common::{
    fold::{End, fold_step},
    hist::bucket_index,
    maps::{FlowAgg, FlowKey, Hist, RTT_PENDING, RttPending, SOCK_FLOW_LOST, SockCounters, SockState, stat},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::maps::{BPF_NOEXIST, FLOWS, ZERO_AGG, count};

/// The key's aggregate, inserting a zeroed one if needed. `None` when FLOWS is full; the caller
/// counts the loss (once per socket, see `SOCK_FLOW_LOST`).
#[inline(always)]
pub fn flow(key: &FlowKey) -> Option<*mut FlowAgg> {
    if let Some(p) = FLOWS.get_ptr_mut(key) {
        return Some(p);
    }
    let zero = ZERO_AGG.get(0)?;
    // EEXIST (another CPU inserted first) is fine: look it up again.
    let _ = FLOWS.insert(key, zero, BPF_NOEXIST);
    FLOWS.get_ptr_mut(key)
}

/// `flow` for a tracked socket: a failed insert is counted the first time it hits this socket.
#[inline(always)]
pub fn socket_flow(st: &mut SockState) -> Option<*mut FlowAgg> {
    let agg = flow(&st.key);
    if agg.is_none() && st.flags & SOCK_FLOW_LOST == 0 {
        st.flags |= SOCK_FLOW_LOST;
        count(stat::FLOWS_FULL);
    }
    agg
}

/// Atomic add, skipped when there is nothing to add.
#[inline(always)]
pub fn add(field: *mut u64, v: u64) {
    if v != 0 {
        // SAFETY: `field` points into a FLOWS value, which stays mapped while the program runs;
        // the add is atomic because other CPUs may add to the same key.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, v) };
    }
}

#[inline(always)]
pub fn record(h: *mut Hist, v: u64) {
    // The optimizer can prove `i` in range along each branch of `bucket_index` but then drops the
    // check the verifier needs on the register actually used; `black_box` keeps one explicit
    // bounds check on the final index.
    let i = core::hint::black_box(bucket_index(v));
    // SAFETY: as in `add`; `get_mut` bounds-checks `i`.
    unsafe {
        add(&raw mut (*h).sum, v);
        if let Some(b) = (*h).buckets.get_mut(i) {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(b, 1);
        }
    }
}

/// Add a socket's pending RTT samples to a histogram.
#[inline(always)]
fn add_rtt(h: *mut Hist, p: &RttPending) {
    // SAFETY: as in `add`; `get_mut` bounds-checks every index.
    unsafe {
        add(&raw mut (*h).sum, p.sum);
        for i in 0..RTT_PENDING {
            if i as u32 >= p.count {
                break;
            }
            let b = core::hint::black_box(p.buckets[i] as usize);
            if let Some(slot) = (*h).buckets.get_mut(b) {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(slot, 1);
            }
        }
    }
}

/// Add a socket's pending RTT samples to its flow's histogram and empty them. Only the first
/// `count` buckets are read: resetting count and sum empties it (a whole-struct reset would be a
/// byte-loop `memset`, see `sockets::new_state`).
#[inline(always)]
pub fn flush_rtt(agg: *mut FlowAgg, p: &mut RttPending) {
    if p.count != 0 {
        // SAFETY: `agg` is a FLOWS value pointer.
        add_rtt(unsafe { &raw mut (*agg).rtt_us }, p);
        p.count = 0;
        p.sum = 0;
    }
}

/// Fold `now` into the socket's folded counters (`fold::fold_step`) and add what is new to the
/// flow; returns what was added.
#[inline(always)]
pub fn fold_counters(agg: *mut FlowAgg, folded: &mut SockCounters, now: &SockCounters) -> SockCounters {
    let (delta, next) = fold_step(folded, now);
    add_counters(agg, &delta);
    *folded = next;
    delta
}

/// Add a socket's counter delta to its flow.
#[inline(always)]
pub fn add_counters(agg: *mut FlowAgg, d: &SockCounters) {
    // SAFETY: `agg` is a FLOWS value pointer.
    unsafe {
        add(&raw mut (*agg).bytes_sent, d.bytes_acked);
        add(&raw mut (*agg).bytes_received, d.bytes_received);
        add(&raw mut (*agg).segments_sent, d.segs_out as u64);
        add(&raw mut (*agg).segments_received, d.segs_in as u64);
        add(&raw mut (*agg).retransmissions, d.total_retrans as u64);
    }
}

#[inline(always)]
pub fn add_end(agg: *mut FlowAgg, e: &End) {
    // SAFETY: `agg` is a FLOWS value pointer.
    unsafe {
        add(&raw mut (*agg).closed, e.closed);
        add(&raw mut (*agg).failed, e.failed);
        add(&raw mut (*agg).refused, e.refused);
        add(&raw mut (*agg).timed_out, e.timed_out);
        add(&raw mut (*agg).reset, e.reset);
    }
}

/// Atomic add on a 32-bit field; returns the previous value.
///
/// SeqCst, not Relaxed: LLVM's BPF backend lowers a relaxed fetch-add to the plain `lock add`,
/// which returns nothing, and then uses the addend register as if it held the previous value.
#[inline(always)]
pub fn add32(field: *mut u32, v: u32) -> u32 {
    // SAFETY: `field` points into a map value that stays mapped while the program runs.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::SeqCst }>(field, v) }
}
