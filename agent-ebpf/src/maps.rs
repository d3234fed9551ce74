//! Map definitions. Sizes here are placeholders: the daemon sets `max_entries` from its config.

use agent_common::maps::{
    DEFAULT_MAX_WALKED_NETNS, FlowAgg, FlowKey, LISTENER_PORTS, Listener, RequestKey, SYNACK_TALLY_REQUESTS, SockState,
    WalkedNetns, stat,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};

/// Map update flags (the helper's `flags`): insert or replace; insert only if the key is absent.
pub const BPF_ANY: u64 = aya_ebpf::bindings::BPF_ANY as u64;
pub const BPF_NOEXIST: u64 = aya_ebpf::bindings::BPF_NOEXIST as u64;

/// Per-socket state of the tracked sockets, by socket cookie (preallocated; see `sockets`).
#[map(name = "SOCKETS")]
pub static SOCKETS: HashMap<u64, SockState> = HashMap::with_max_entries(1024, 0);

/// Cumulative counters per flow key.
#[map(name = "FLOWS")]
pub static FLOWS: HashMap<FlowKey, FlowAgg> = HashMap::with_max_entries(1024, 0);

/// Listening sockets of the monitored cgroup by local port (host order): `Listener::count` says
/// whether there are any (see `LISTENER_PORTS`).
#[map(name = "LISTENERS")]
pub static LISTENERS: Array<Listener> = Array::with_max_entries(LISTENER_PORTS, 0);

/// The listeners on local port `port`, if the cgroup has any.
#[inline(always)]
pub fn listener(port: u32) -> Option<*mut Listener> {
    let l = LISTENERS.get_ptr_mut(port)?;
    // SAFETY: LISTENERS value pointer (an array's values stay mapped).
    if unsafe { core::ptr::read_volatile(&raw const (*l).count) } == 0 { None } else { Some(l) }
}

/// The SYN-ACK retransmissions the SYN-ACK program counted, per request (`synack`), which
/// the accepted socket's inherited count is set against (`sock_ops::on_passive_established`).
#[map(name = "SYNACK_TALLY")]
pub static SYNACK_TALLY: LruHashMap<RequestKey, u32> = LruHashMap::with_max_entries(SYNACK_TALLY_REQUESTS, 0);

/// Network namespaces (by cookie) whose sockets the daemon walks (`walk.rs`): sockets there get
/// no per-segment callbacks.
#[map(name = "WALKED_NETNS")]
pub static WALKED_NETNS: HashMap<u64, u8> = HashMap::with_max_entries(DEFAULT_MAX_WALKED_NETNS, 0);

/// The same namespaces as a short list (`WalkedNetns`), which spares the hash lookup.
#[map(name = "WALKED_NETNS_LIST")]
pub static WALKED_NETNS_LIST: Array<WalkedNetns> = Array::with_max_entries(1, 0);

/// How many SOCKETS entries belong to sockets of walked namespaces (`SOCK_WALKED`), one shared
/// atomic counter (see `sockets::walked_entries`): while it is 0, as it is most of the time, the
/// close of such a socket knows without a lookup that it has no entry.
#[map(name = "WALKED_ENTRIES")]
pub static WALKED_ENTRIES: Array<u64> = Array::with_max_entries(1, 0);

/// Set by the daemon before each walk. Slot 0, the walk's idle floor: a socket whose
/// `tcp_mstamp` (µs of CLOCK_MONOTONIC) is below it sent and received nothing since the previous
/// walk began, and the walk passes it over without a SOCKETS lookup (0: visit every socket).
/// Slot 1: which walk this is (`maps::walk_kind`): one at a window end, or the walk made at
/// start, before the sock_ops program attaches, when every socket that carries this agent's
/// callback flags was armed by an earlier run (`walk::baseline`).
#[map(name = "WALK_FLOOR")]
pub static WALK_FLOOR: Array<u64> = Array::with_max_entries(2, 0);

/// Per-CPU counters of the programs' own health (see `agent_common::maps::stat`).
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// A zeroed `FlowAgg` to insert new keys from (it is too big for the 512-byte eBPF stack).
#[map(name = "ZERO_AGG")]
pub static ZERO_AGG: PerCpuArray<FlowAgg> = PerCpuArray::with_max_entries(1, 0);

/// Count one occurrence of a `stat` index on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    count_n(index, 1);
}

/// Count `n` occurrences of a `stat` index on this CPU.
#[inline(always)]
pub fn count_n(index: u32, n: u64) {
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot. Atomic all the same: a program in softirq (a segment's callback)
        // can interrupt one in process context (a connect, the walk) on the same CPU.
        unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, n) };
    }
}
