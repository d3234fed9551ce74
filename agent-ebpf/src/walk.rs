//! The walk of open sockets: a BPF iterator over the TCP sockets of a network namespace
//! (`iter/tcp`), which the daemon runs in each walked namespace at every window end. It folds
//! what each tracked, established socket did since its last fold into its flow, so that sockets
//! of walked namespaces need no per-segment callback: traffic on their established connections
//! runs no program at all.
//!
//! The kernel runs the program with the socket locked (`lock_sock`, which is why `iter/tcp`
//! programs may call `bpf_setsockopt`), as the socket's own callbacks run: the counters read here
//! are consistent, the fold is exact (`payload`), and it never runs at the same time as another
//! fold of the same socket.
//!
//! A socket the kernel has not stamped (`tcp_mstamp`) since the previous walk began, which the
//! daemon passes as `WALK_FLOOR`, moved nothing since that walk folded it: it costs one read, and
//! is counted in `stat::WALK_IDLE` (see the daemon's `capture::walk` for why that holds).

use agent_common::{
    fold::{armed_flags, cb, fin_flags, fold_step, payload, tcp_state, untracked_flags, was_established},
    maps::{
        Addr, FlowAgg, FlowKey, ROLE_CLIENT, ROLE_SERVER, SOCK_ATTEMPTED, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_FIN_SENT,
        SOCK_WALKED, SockCounters, SockState, flow_key, stat, v4_mapped, walk_kind,
    },
    record::{WalkItem, item},
};
use aya_ebpf::{
    helpers::{
        bpf_probe_read_kernel,
        generated::{bpf_get_socket_cookie, bpf_seq_write, bpf_setsockopt, bpf_skc_to_tcp_sock},
    },
    macros::map,
    maps::PerCpuArray,
};
use core::ffi::c_void;

use crate::{
    ctx::{AF_INET, AF_INET6},
    flows::{add, add_counters, flow, flush_rtt, fold_counters, record},
    maps::{SOCKETS, WALK_FLOOR, count},
    records,
    sock_ops::callbacks,
    sockets::{adopted, folded_none, insert_late, new_state},
};

// Offsets of `struct tcp_sock` fields, which the daemon reads from the kernel's BTF
// (/sys/kernel/btf/vmlinux) and rewrites at load time: eBPF written in Rust has no CO-RE.
#[unsafe(no_mangle)]
static TCP_OFF_BYTES_ACKED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_BYTES_RECEIVED: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_SEGS_OUT: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_SEGS_IN: u32 = 0;
/// `tcp_sock.tcp_mstamp`: when the kernel last handled a segment in or out of the socket (µs of
/// CLOCK_MONOTONIC, `tcp_mstamp_refresh`).
#[unsafe(no_mangle)]
static TCP_OFF_MSTAMP: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_TOTAL_RETRANS: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_SND_UNA: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_SND_NXT: u32 = 0;
#[unsafe(no_mangle)]
static TCP_OFF_SRTT_US: u32 = 0;
/// `sock_common.skc_state`, at the start of every socket.
#[unsafe(no_mangle)]
static TCP_OFF_STATE: u32 = 0;
/// `tcp_sock.bpf_sock_ops_cb_flags`.
#[unsafe(no_mangle)]
static TCP_OFF_CB_FLAGS: u32 = 0;
// `sock_common` addresses and ports (of a request socket too: `synack`).
#[unsafe(no_mangle)]
pub static TCP_OFF_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_DADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_V6_RCV_SADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_V6_DADDR: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_NUM: u32 = 0;
#[unsafe(no_mangle)]
pub static TCP_OFF_DPORT: u32 = 0;
/// `sock.sk_flags`, at the same offset in a `tcp_sock` (which starts with its `sock`); read by
/// sock_ops at the close of a walked socket (`ctx::fin_received`).
#[unsafe(no_mangle)]
pub static TCP_OFF_SK_FLAGS: u32 = 0;

/// The agent's cgroup id (its directory's inode number), and where a socket's cgroup and its
/// ancestors' ids are (`struct cgroup`, `struct kernfs_node`): see `in_agent_cgroup`. An id of 0
/// (the daemon could not read them) checks nothing.
#[unsafe(no_mangle)]
static AGENT_CGROUP_ID: u64 = 0;
#[unsafe(no_mangle)]
static CG_OFF_SK_CGROUP: u32 = 0;
#[unsafe(no_mangle)]
static CG_OFF_LEVEL: u32 = 0;
#[unsafe(no_mangle)]
static CG_OFF_ANCESTORS: u32 = 0;
#[unsafe(no_mangle)]
static CG_OFF_KN: u32 = 0;
#[unsafe(no_mangle)]
static CG_OFF_KN_ID: u32 = 0;

/// Cgroups deeper than this below the agent's are not recognised as its own (their sockets are
/// left to callbacks' folds at their close, as any socket the walk does not take).
const MAX_CGROUP_DEPTH: i32 = 32;

/// The iterator's context (`struct bpf_iter__tcp`): one socket of the namespace (listening,
/// established, time-wait or request socket) and its owner's uid.
#[repr(C)]
pub struct TcpIterCtx {
    meta: *mut IterMeta,
    sk_common: *mut u8,
    uid: u32,
}

/// `struct bpf_iter_meta`: the output the daemon reads (`seq`).
#[repr(C)]
pub struct IterMeta {
    seq: *mut aya_ebpf::bindings::seq_file,
    session_id: u64,
    seq_num: u64,
}

#[inline(always)]
pub fn off(v: &'static u32) -> usize {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// A field of the socket at a BTF offset: a plain load, no helper call. `tp` is the kernel's
/// own typed pointer to the socket (`bpf_skc_to_tcp_sock`), and the offset a load-time constant
/// the verifier knows (a frozen `.rodata` global), so the verifier checks the access against
/// `struct tcp_sock`'s layout and turns it into a fault-tolerant load.
#[inline(always)]
pub fn field<T>(tp: *const u8, offset: usize) -> Option<T> {
    // SAFETY: `tp` is the iterator's socket, held (and locked) for the duration of this
    // invocation; the verifier bounds the access by the field's BTF type.
    Some(unsafe { core::ptr::read_volatile(tp.wrapping_add(offset).cast::<T>()) })
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn flow_walk(ctx: *mut TcpIterCtx) -> i32 {
    // SAFETY: a context field at its fixed offset; the verifier types it from the iterator's BTF
    // prototype (null at the end of the walk).
    let sk = unsafe { (*ctx).sk_common };
    if !sk.is_null()
        && let Some(cookie) = visit(sk, ctx)
        && records::on()
    {
        // With connection records the daemon keeps the cookies of the walked sockets that have
        // an entry, to look it up at their establishment or close (`record::REC_ENTRY`); the
        // walk's output is how it learns them, in the thread that reads the records.
        if let Some(it) = item(cookie, item::ENTRY) {
            output(ctx, it);
        }
    }
    0
}

/// Where an item of the walk's output is made: a map value, not the stack, of which the verifier
/// allows a call chain 512 bytes.
#[map(name = "WALK_ITEM")]
static WALK_ITEM: PerCpuArray<WalkItem> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's item, with its cookie and kind set (and what an earlier item left in the rest).
#[inline(always)]
fn item(cookie: u64, kind: u32) -> Option<&'static mut WalkItem> {
    let it = WALK_ITEM.get_ptr_mut(0)?;
    // SAFETY: this CPU's value of an array map; the walk runs with preemption off, and nothing
    // else uses it.
    let it = unsafe { &mut *it };
    it.cookie = cookie;
    it.kind = kind;
    Some(it)
}

/// Write an item to the walk's output, which the daemon reads.
#[inline(always)]
fn output(ctx: *mut TcpIterCtx, it: &WalkItem) {
    // SAFETY: context fields at their fixed offsets, typed by the verifier from the iterator's
    // BTF prototype; the helper copies the item's bytes to the output.
    unsafe {
        let seq = (*(*ctx).meta).seq;
        let _ = bpf_seq_write(seq, (it as *const WalkItem).cast(), size_of::<WalkItem>() as u32);
    }
}

/// Visit one socket: fold it, hand it to the daemon, take it over, or pass it by. The socket's
/// cookie when it got a SOCKETS entry as a walked socket now (see `flow_walk`).
#[inline(always)]
fn visit(sk: *mut u8, ctx: *mut TcpIterCtx) -> Option<u64> {
    // SAFETY: the iterator's socket; the helper returns null unless it is a full TCP socket
    // (listening, time-wait and request sockets are skipped here, before any cookie is made).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return None;
    }
    // Every field is read through the typed pointer (see `field`).
    let sk = tp.cast::<u8>().cast_const();
    // Nothing moves a socket's counters but a segment in or out, and the kernel stamps the
    // socket as it handles one. A socket stamped before the floor (the previous walk's start)
    // was visited by that walk and has moved nothing since: no lookup. Otherwise its segment
    // counters, compared with those of its last fold, tell. The three loads go first, together:
    // they are on three cache lines, whose misses can then overlap.
    let stamp: u64 = field(sk, off(&TCP_OFF_MSTAMP))?;
    let (segs_out, segs_in): (u32, u32) = (field(sk, off(&TCP_OFF_SEGS_OUT))?, field(sk, off(&TCP_OFF_SEGS_IN))?);
    if stamp < floor() {
        count(stat::WALK_IDLE);
        return None;
    }
    // SAFETY: a full socket, as the helper checked.
    let cookie = unsafe { bpf_get_socket_cookie(tp.cast()) };
    if records::on() && kind() == walk_kind::REGULAR && snapshot(sk, ctx, cookie, segs_out, segs_in) {
        return None;
    }
    // SAFETY: a SOCKETS value pointer; the socket is locked while the program runs.
    match unsafe { SOCKETS.get_ptr_mut(cookie).and_then(|p| p.as_mut()) } {
        Some(st) => {
            if st.flags & SOCK_WALKED == 0 {
                // Tracked with per-segment callbacks: opened before its namespace was walked.
                return adopt(sk, st, segs_out, segs_in).then_some(cookie);
            }
            if segs_out == st.folded.segs_out && segs_in == st.folded.segs_in {
                return None;
            }
            let state: u8 = field(sk, off(&TCP_OFF_STATE))?;
            if !was_established(state as u32) {
                return None;
            }
            let agg = flow(&st.key)?;
            let now = counters(sk, st.flags | SOCK_ESTABLISHED, state, segs_out, segs_in)?;
            let d = fold_counters(agg, &mut st.folded, &now);
            let _ = finish(sk, agg, &d);
            None
        }
        None => untracked(sk, cookie, segs_out, segs_in).then_some(cookie),
    }
}

/// With connection records, a walked socket without a SOCKETS entry (its callback flags have no
/// `cb::ENTRY` mark) is the daemon's to fold: once established, its payload counters as they
/// are now go to the walk's output (`item::SNAPSHOT`), and the daemon folds what moved since the
/// last it had (`agent::capture::records`), and its close's record against the same. No map
/// operation: keeping what was folded in the kernel (a SOCKETS entry, or socket-local storage)
/// cost a visit of a busy socket ~400-500 ns more (docs/performance.md, "Results, 2026-12-07
/// (tenth)"). Sockets of other cgroups are passed by, and so are sockets that have moved no
/// payload yet (no byte acked or received, no retransmission): their close, or the first visit
/// after they move some, folds their segments too, and nothing of them is kept until then.
///
/// True when the socket was taken here; false when the visit goes on (an entry may hold it, or
/// it is not established: a client seen connecting gets one, `attempt_seen`).
#[inline(never)]
fn snapshot(sk: *const u8, ctx: *mut TcpIterCtx, cookie: u64, segs_out: u32, segs_in: u32) -> bool {
    let Some(cbf) = field::<u8>(sk, off(&TCP_OFF_CB_FLAGS)) else { return false };
    let Some(flags) = untracked_flags(cbf as u32) else { return false };
    if cbf as u32 & cb::ENTRY != 0 {
        return false;
    }
    let Some(state) = field::<u8>(sk, off(&TCP_OFF_STATE)) else { return false };
    if !was_established(state as u32) {
        return false;
    }
    if !ours(sk) {
        return true;
    }
    let flags = flags | SOCK_ESTABLISHED;
    let Some(key) = key_of(sk, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER }) else {
        return true;
    };
    let Some(counters) = counters(sk, flags, state, segs_out, segs_in) else { return true };
    if counters.bytes_acked == 0 && counters.bytes_received == 0 && counters.total_retrans == 0 {
        // No payload moved yet: left to its close (or a later visit), which folds it whole, so
        // that idle connections cost the daemon no memory.
        return true;
    }
    let Some(it) = item(cookie, item::SNAPSHOT) else { return true };
    it.key = key;
    it.counters = counters;
    it.flags = flags;
    it.srtt_us = field::<u32>(sk, off(&TCP_OFF_SRTT_US)).unwrap_or(0) >> 3;
    output(ctx, it);
    count(stat::EVENTS);
    true
}

/// The kernfs id of the last cgroup `ours` found to be the agent's or below it, this CPU's.
#[map(name = "WALK_CGROUP_SEEN")]
static WALK_CGROUP_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `in_agent_cgroup` for a visit of every moved socket: a socket of the cgroup the last check
/// found, the usual case, is known by its cgroup's id without the chase up its ancestors. The
/// check still costs ~60 ns per visit of a busy socket (measured), mostly the miss on the
/// socket's line that holds its cgroup pointer.
#[inline(always)]
fn ours(sk: *const u8) -> bool {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    if unsafe { core::ptr::read_volatile(&AGENT_CGROUP_ID) } == 0 {
        return true;
    }
    let Some(cgroup) = field::<u64>(sk, off(&CG_OFF_SK_CGROUP)) else { return false };
    let kn: u64 = if cgroup == 0 { 0 } else { kernel(cgroup, off(&CG_OFF_KN)) };
    let id: u64 = if kn == 0 { 0 } else { kernel(kn, off(&CG_OFF_KN_ID)) };
    let seen = WALK_CGROUP_SEEN.get_ptr_mut(0);
    // SAFETY: this CPU's value of an array map; the walk runs with preemption off.
    if id != 0 && seen.is_some_and(|p| unsafe { *p } == id) {
        return true;
    }
    if !in_agent_cgroup(sk) {
        return false;
    }
    if let Some(p) = seen {
        // SAFETY: as above.
        unsafe { *p = id };
    }
    true
}

/// `cb::ENTRY` with connection records on: set on a walked socket before it gets a SOCKETS
/// entry, so that the walk folds it there (not `snapshot`) and its records say so.
#[inline(always)]
fn entry_mark() -> u32 {
    if records::on() { cb::ENTRY } else { 0 }
}

/// `setsockopt` level and option that set a socket's sock_ops callback flags (Linux 6.10).
const SOL_TCP: i32 = 6;
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;

/// A socket of this namespace tracked with per-segment callbacks (`st` without `SOCK_WALKED`):
/// one opened before the daemon found its namespace, or before it was given. Once established it
/// is handed to the walk: its callbacks become a walked socket's (`cb::walked`: no per-segment
/// ones) and its entry `SOCK_WALKED`, after one last fold with its pending RTT samples. The
/// callbacks and this run under the socket's lock, so no fold of it is lost between the two
/// ways. Where the kernel refuses to set the flags (before 6.10) it keeps its callbacks.
///
/// True once it is a walked socket.
#[inline(never)]
fn adopt(sk: *const u8, st: &mut SockState, segs_out: u32, segs_in: u32) -> bool {
    let Some(state) = field::<u8>(sk, off(&TCP_OFF_STATE)) else { return false };
    if state as u32 != tcp_state::ESTABLISHED {
        // From FIN_WAIT1 on its close may read the parse callback's flag (`fold::fin_seen`).
        return false;
    }
    if !set_callbacks(sk, cb::walked(st.flags & SOCK_CLIENT == 0) | entry_mark()) {
        return false;
    }
    st.flags |= SOCK_WALKED | SOCK_ESTABLISHED;
    adopted();
    count(stat::EVENTS);
    if let Some(agg) = flow(&st.key) {
        flush_rtt(agg, &mut st.rtt);
        if let Some(now) = counters(sk, st.flags, state, segs_out, segs_in) {
            let _ = fold_counters(agg, &mut st.folded, &now);
        }
    }
    true
}

/// The idle floor the daemon set for this walk (`WALK_FLOOR`; 0: visit every socket).
#[inline(always)]
fn floor() -> u64 {
    WALK_FLOOR.get(0).copied().unwrap_or(0)
}

/// A socket of this namespace with no state entry: one of ours if its callback flags say so
/// (`fold::untracked_flags`), folded for the first time once established, or its attempt
/// counted while it connects. (Two frames of their own, not nested: the verifier limits the
/// stack of a call chain to 512 bytes.)
///
/// True when it got an entry as a walked socket.
#[inline(always)]
fn untracked(sk: *const u8, cookie: u64, segs_out: u32, segs_in: u32) -> bool {
    let Some(cb) = field::<u8>(sk, off(&TCP_OFF_CB_FLAGS)) else { return false };
    let (walked, armed) = (untracked_flags(cb as u32), armed_flags(cb as u32));
    if (walked.is_some() || armed.is_some()) && !in_agent_cgroup(sk) {
        // Armed by another agent, on a sibling cgroup: its sockets are not this one's to fold.
        return false;
    }
    let Some(flags) = walked else {
        if let Some(role) = armed
            && kind() != walk_kind::START_FOR_CALLBACKS
        {
            return hand_over(sk, cookie, role, segs_out, segs_in);
        }
        // Folded by callbacks, and this run does so too: sock_ops stores it at its next
        // callback (`sock_ops::adopt`).
        return false;
    };
    let Some(state) = field::<u8>(sk, off(&TCP_OFF_STATE)) else { return false };
    if state as u32 == tcp_state::SYN_SENT && flags & SOCK_CLIENT != 0 {
        return attempt_seen(sk, cookie, flags);
    }
    if !was_established(state as u32) {
        return false;
    }
    if kind() != walk_kind::REGULAR {
        return baseline(sk, cookie, flags | SOCK_ESTABLISHED, segs_out, segs_in);
    }
    first_fold(sk, cookie, flags | SOCK_ESTABLISHED, segs_out, segs_in)
}

/// A `T` of kernel memory at `addr + offset` (0 if the read faults).
#[inline(always)]
fn kernel<T: Default>(addr: u64, offset: usize) -> T {
    // SAFETY: a fault-tolerant read of kernel memory into the returned value.
    unsafe { bpf_probe_read_kernel((addr as usize + offset) as *const T) }.unwrap_or_default()
}

/// Whether the socket's cgroup is the agent's or below it: the id of one of its ancestors
/// (`cgroup.ancestors[]`, itself included) is the agent's. Sockets of other cgroups in a walked
/// namespace are not the agent's to fold, even when another agent armed them as walked. Only
/// sockets the walk has no entry for come here (entries are made only for the agent's), so the
/// chase of a few pointers is paid once per socket at most. Reads the cgroup by its BTF offsets
/// through `bpf_probe_read_kernel`, since the ancestor's index varies.
#[inline(never)]
fn in_agent_cgroup(sk: *const u8) -> bool {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    let agent = unsafe { core::ptr::read_volatile(&AGENT_CGROUP_ID) };
    if agent == 0 {
        return true;
    }
    let Some(cgroup) = field::<u64>(sk, off(&CG_OFF_SK_CGROUP)) else { return false };
    descends_from(cgroup, agent)
}

/// Whether the socket at `sk` (any kernel socket, read through `bpf_probe_read_kernel`) is of
/// the agent's cgroup or below it, as `in_agent_cgroup`; false when the agent's cgroup is not
/// known (`AGENT_CGROUP_ID` 0).
#[inline(never)]
pub fn sock_in_agent_cgroup(sk: u64) -> bool {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    let agent = unsafe { core::ptr::read_volatile(&AGENT_CGROUP_ID) };
    agent != 0 && descends_from(kernel(sk, off(&CG_OFF_SK_CGROUP)), agent)
}

/// Whether the cgroup at `cgroup` is the one with id `agent` or below it: the id of one of its
/// ancestors (itself included).
#[inline(always)]
fn descends_from(cgroup: u64, agent: u64) -> bool {
    if cgroup == 0 {
        return false;
    }
    let level: i32 = kernel(cgroup, off(&CG_OFF_LEVEL));
    let mut depth = 0;
    while depth <= MAX_CGROUP_DEPTH && depth <= level {
        let ancestor: u64 = kernel(cgroup, off(&CG_OFF_ANCESTORS) + 8 * (level - depth) as usize);
        let kn: u64 = if ancestor == 0 { 0 } else { kernel(ancestor, off(&CG_OFF_KN)) };
        if kn != 0 && kernel::<u64>(kn, off(&CG_OFF_KN_ID)) == agent {
            return true;
        }
        depth += 1;
    }
    false
}

/// Which walk this is (`WALK_FLOOR` slot 1, `maps::walk_kind`): one at a window end or the walk
/// made at start, before the sock_ops program attached.
#[inline(always)]
fn kind() -> u64 {
    WALK_FLOOR.get(1).copied().unwrap_or(walk_kind::REGULAR)
}

/// At start, an established walked socket with no state entry was armed by an earlier run of the
/// agent, which counted it up to its last walk. Its entry is stored with everything it did so far
/// as folded and nothing added (`store_as_folded`): this run counts it from now on, without
/// counting again what the earlier run did (what it did between that run's last walk and now is
/// not counted). Without room in SOCKETS (counted), its close would fold it whole.
///
/// With `--fold-mode callbacks` (`walk_kind::START_FOR_CALLBACKS`) nothing walks it again, so an
/// ESTABLISHED one is handed to callbacks (Linux 6.10): its callbacks become those of a socket
/// folded by callbacks (`sock_ops::callbacks`), under its role, and its entry is stored without
/// `SOCK_WALKED`. Flags first: if the kernel refuses them, it is stored as a walked socket and
/// its close folds what it did from now on; if the store fails (SOCKETS full), it is an armed
/// socket without an entry, which sock_ops stores at its next callback (`sock_ops::adopt`).
/// From FIN_WAIT1 on it stays a walked socket, whose close reads the FIN from the socket.
///
/// True when it is stored as a walked socket.
#[inline(never)]
fn baseline(sk: *const u8, cookie: u64, flags: u32, segs_out: u32, segs_in: u32) -> bool {
    let Some(state) = field::<u8>(sk, off(&TCP_OFF_STATE)) else { return false };
    let flags = if kind() == walk_kind::START_FOR_CALLBACKS
        && state as u32 == tcp_state::ESTABLISHED
        && set_callbacks(sk, callbacks(flags & SOCK_CLIENT == 0) as u32)
    {
        count(stat::EVENTS);
        flags & !SOCK_WALKED
    } else {
        // Marked (with records on): the walk folds it into its entry.
        let _ = mark(sk);
        flags
    };
    store_as_folded(sk, cookie, flags, state, segs_out, segs_in) && flags & SOCK_WALKED != 0
}

/// A socket with per-segment callbacks and no state entry, `role` its `fold::armed_flags`: armed
/// by an earlier run of the agent (this one arms only sockets it stores, and removes the entry
/// only at the close, after the last callback), which counted it up to its last fold. Once
/// established it is handed to the walk, as `adopt` hands this run's: stored with everything it
/// did so far as folded (`store_as_folded`), so this run counts it from now on (its close, not
/// its establishment, and nothing twice), then its callbacks become a walked socket's. Not
/// established yet, or with no room in SOCKETS (counted), it keeps its callbacks, and sock_ops
/// stores it at its next callback (`sock_ops::adopt`).
///
/// True once it is a walked socket with its entry.
#[inline(never)]
fn hand_over(sk: *const u8, cookie: u64, role: u32, segs_out: u32, segs_in: u32) -> bool {
    let Some(state) = field::<u8>(sk, off(&TCP_OFF_STATE)) else { return false };
    if state as u32 != tcp_state::ESTABLISHED {
        return false;
    }
    if !store_as_folded(sk, cookie, role | SOCK_ESTABLISHED, state, segs_out, segs_in) {
        return false;
    }
    if !set_callbacks(sk, cb::walked(role & SOCK_CLIENT == 0) | entry_mark()) {
        // Before 6.10: it stays folded by its callbacks, from the entry just stored.
        return false;
    }
    // SAFETY: the SOCKETS value just stored; the socket is locked while the program runs.
    let Some(st) = (unsafe { SOCKETS.get_ptr_mut(cookie).and_then(|p| p.as_mut()) }) else { return true };
    st.flags |= SOCK_WALKED;
    adopted();
    count(stat::EVENTS);
    true
}

/// Store the entry of a socket an earlier run of the agent counted (flags `flags`, in TCP state
/// `state`), with what it did so far as folded and nothing added, and count it as tracked: its
/// close counts it removed. False when it has one already or SOCKETS is full (counted).
#[inline(always)]
fn store_as_folded(sk: *const u8, cookie: u64, flags: u32, state: u8, segs_out: u32, segs_in: u32) -> bool {
    let Some(key) = key_of(sk, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER }) else {
        return false;
    };
    let Some(now) = counters(sk, flags, state, segs_out, segs_in) else { return false };
    let (_, folded) = fold_step(&folded_none(0), &now);
    if !insert_late(cookie, &new_state(key, 0, flags, folded)) {
        return false;
    }
    count(stat::SOCKETS_INSERTED);
    true
}

/// Mark a walked socket that gets a SOCKETS entry now (`entry_mark`); false if the kernel
/// refuses. True without records (no mark).
#[inline(always)]
fn mark(sk: *const u8) -> bool {
    if !records::on() {
        return true;
    }
    let Some(cbf) = field::<u8>(sk, off(&TCP_OFF_CB_FLAGS)) else { return false };
    set_callbacks(sk, cbf as u32 | cb::ENTRY)
}

/// Set the socket's sock_ops callback flags; false if the kernel refuses (before 6.10).
#[inline(always)]
fn set_callbacks(sk: *const u8, flags: u32) -> bool {
    let mut v = flags as i32;
    // SAFETY: the iterator's socket, locked while the program runs; `v` lives on the stack for
    // the call.
    let r = unsafe {
        bpf_setsockopt(
            sk.cast_mut().cast(),
            SOL_TCP,
            TCP_BPF_SOCK_OPS_CB_FLAGS,
            (&raw mut v).cast(),
            size_of::<i32>() as i32,
        )
    };
    r == 0
}

/// The first fold of an established socket of ours with no state entry (flags `flags`) stores
/// its state, with everything it did so far folded; without room in SOCKETS (counted), it is
/// folded whole at its close instead.
///
/// True when it got its entry.
#[inline(never)]
fn first_fold(sk: *const u8, cookie: u64, flags: u32, segs_out: u32, segs_in: u32) -> bool {
    first_fold_flow(sk, cookie, flags, segs_out, segs_in).is_some_and(|(agg, d)| {
        let _ = finish(sk, agg, &d);
        true
    })
}

/// `first_fold` up to the entry: the flow and what was added to it.
#[inline(always)]
fn first_fold_flow(
    sk: *const u8,
    cookie: u64,
    flags: u32,
    segs_out: u32,
    segs_in: u32,
) -> Option<(*mut FlowAgg, SockCounters)> {
    // Read again rather than passed: a BPF function takes at most five arguments.
    let state: u8 = field(sk, off(&TCP_OFF_STATE))?;
    let key = key_of(sk, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER })?;
    let agg = flow(&key)?;
    let now = counters(sk, flags, state, segs_out, segs_in)?;
    let (d, folded) = fold_step(&folded_none(0), &now);
    if !insert_late(cookie, &new_state(key, 0, flags, folded)) {
        return None;
    }
    add_counters(agg, &d);
    Some((agg, d))
}

/// A client still connecting at a window end, whose connect did not count its attempt
/// (`fold::attempt_due_at_close`): it is counted in this window, and the state entry made for
/// it (`SOCK_ATTEMPTED`; marked with records on, `mark`) tells its establishment or close that
/// it was. Without room in SOCKETS (counted), or the mark, the establishment or close counts it
/// instead.
///
/// True when it got its entry.
#[inline(never)]
fn attempt_seen(sk: *const u8, cookie: u64, flags: u32) -> bool {
    let Some(key) = key_of(sk, ROLE_CLIENT) else { return false };
    let Some(agg) = flow(&key) else { return false };
    if !mark(sk) {
        return false;
    }
    if !insert_late(cookie, &new_state(key, 0, flags | SOCK_ATTEMPTED, folded_none(0))) {
        return false;
    }
    // SAFETY: FLOWS value pointer.
    add(unsafe { &raw mut (*agg).attempted }, 1);
    count(stat::EVENTS);
    true
}

/// The socket's payload counters (`fold::payload`) in TCP state `state`.
#[inline(always)]
fn counters(sk: *const u8, flags: u32, state: u8, segs_out: u32, segs_in: u32) -> Option<SockCounters> {
    let raw = SockCounters {
        bytes_acked: field(sk, off(&TCP_OFF_BYTES_ACKED))?,
        bytes_received: field(sk, off(&TCP_OFF_BYTES_RECEIVED))?,
        segs_out,
        segs_in,
        total_retrans: field(sk, off(&TCP_OFF_TOTAL_RETRANS))?,
        _pad: 0,
    };
    let fins = fin_flags(state as u32);
    // snd_una and snd_nxt only matter once our FIN is out (was it acked?).
    let (una, nxt): (u32, u32) = if fins & SOCK_FIN_SENT != 0 {
        (field(sk, off(&TCP_OFF_SND_UNA))?, field(sk, off(&TCP_OFF_SND_NXT))?)
    } else {
        (0, 0)
    };
    Some(payload(&raw, flags | fins, una, nxt))
}

/// After a fold that added `d`: an RTT sample if segments came in, and the event.
#[inline(always)]
fn finish(sk: *const u8, agg: *mut FlowAgg, d: &SockCounters) -> Option<()> {
    if d.segs_in != 0 {
        let srtt: u32 = field(sk, off(&TCP_OFF_SRTT_US))?;
        if srtt >> 3 != 0 {
            // SAFETY: FLOWS value pointer.
            record(unsafe { &raw mut (*agg).rtt_us }, (srtt >> 3) as u64);
        }
    }
    if *d != SockCounters::default() {
        count(stat::EVENTS);
    }
    Some(())
}

/// The socket's flow key, from its addresses and ports as `ctx::addrs` reads them in sock_ops
/// (IPv4 v4-mapped).
#[inline(always)]
fn key_of(sk: *const u8, role: u8) -> Option<FlowKey> {
    let family: u16 = field(sk, off(&TCP_OFF_FAMILY))?;
    let (local, remote) = match family as u32 {
        AF_INET => (v4_mapped(field(sk, off(&TCP_OFF_RCV_SADDR))?), v4_mapped(field(sk, off(&TCP_OFF_DADDR))?)),
        AF_INET6 => (field::<Addr>(sk, off(&TCP_OFF_V6_RCV_SADDR))?, field::<Addr>(sk, off(&TCP_OFF_V6_DADDR))?),
        _ => return None,
    };
    let local_port: u16 = field(sk, off(&TCP_OFF_NUM))?;
    let remote_port: u16 = field(sk, off(&TCP_OFF_DPORT))?;
    Some(flow_key(local, remote, local_port, u16::from_be(remote_port), role))
}
