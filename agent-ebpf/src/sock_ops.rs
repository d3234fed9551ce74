//! The sock_ops program: one entry point, one small handler per callback.

use agent_common::{
    fold::{
        self, armed_flags, attempt_due_at_close, attempt_due_at_establishment, cb, classify_end, fin_flags, fin_seen,
        fin_seen_done, fold_due, fold_step, has_work, op, payload, rtt_push, tcp_state, untracked_flags,
        was_established,
    },
    maps::{
        FlowAgg, FlowKey, ROLE_CLIENT, ROLE_SERVER, RequestKey, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_FLOW_LOST,
        SOCK_RTO_EXPIRED, SOCK_WALKED, SockCounters, SockState, flow_key, stat,
    },
    record::{REC_ENTRY, kind},
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::{
    ctx,
    flows::{add, add_counters, add_end, add32, flow, flush_rtt, fold_counters, record, socket_flow},
    maps::{LISTENERS, WALKED_NETNS, WALKED_NETNS_LIST, count, count_n, listener},
    records::{self, pair},
    sockets::{self, folded_none, new_state},
    synack::{synack_by_cgroup, take_tally},
};

/// Sockets of a network namespace the daemon walks (`WALKED_NETNS`, see `walk.rs`) get no
/// per-segment callback: the walk folds them while they are open, and each fold that saw new
/// incoming segments takes one RTT sample, the socket's smoothed RTT. They have no state entry
/// until one is needed (`fold::untracked_flags`): a connection that opens and closes between two
/// walks costs no SOCKETS operation at all, and its close folds its counters whole. Other sockets
/// fold from
/// their per-segment callbacks (`RTT_CB` on every RTT measurement, each one a sample, and
/// `HDR_OPT_LEN_CB` on outgoing segments), at most once per `FOLD_INTERVAL_NS`: set by the
/// daemon; 0 disables send-path folding and folds at every RTT sample.
#[unsafe(no_mangle)]
static FOLD_INTERVAL_NS: u64 = 100_000_000;

#[inline(always)]
fn fold_interval_ns() -> u64 {
    // SAFETY: read of a global the loader may have rewritten; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&FOLD_INTERVAL_NS) }
}

/// Whether the socket's network namespace is walked: a few compares with the listed ones, the
/// hash only when there are too many to list.
#[inline(always)]
fn walked(ctx: &SockOpsContext) -> bool {
    let cookie = ctx::netns_cookie(ctx);
    if let Some(w) = WALKED_NETNS_LIST.get(0).and_then(|l| l.walked(cookie)) {
        return w;
    }
    // SAFETY: lookup in a map of plain integers.
    unsafe { WALKED_NETNS.get(cookie) }.is_some()
}

/// Callbacks of a connecting client folded by callbacks: state changes, retransmissions, RTOs,
/// RTT samples (sockets of walked namespaces: `cb::walked`; once established: `callbacks`).
const CONNECTING_CALLBACKS: u32 = cb::callbacks(false, false);

// The plain constants of `fold::cb` are the kernel's.
const _: () = assert!(
    cb::RTO == BPF_SOCK_OPS_RTO_CB_FLAG
        && cb::RETRANS == BPF_SOCK_OPS_RETRANS_CB_FLAG
        && cb::STATE == BPF_SOCK_OPS_STATE_CB_FLAG
        && cb::RTT == BPF_SOCK_OPS_RTT_CB_FLAG
        && cb::PARSE_ALL_HDR_OPT == BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG
        && cb::PARSE_UNKNOWN_HDR_OPT == BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG
        && cb::WRITE_HDR_OPT == BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG
);

/// Callbacks of an established socket folded by callbacks, with its role bit (`cb::callbacks`);
/// the send-path fold is armed only once it is established (it has nothing to fold before, and
/// the SYN would only run it for nothing).
#[inline(always)]
pub(crate) fn callbacks(server: bool) -> i32 {
    cb::callbacks(server, fold_interval_ns() != 0) as i32
}

// The plain constants of `fold::op` are the kernel's.
const _: () = assert!(
    op::TCP_CONNECT == BPF_SOCK_OPS_TCP_CONNECT_CB
        && op::ACTIVE_ESTABLISHED == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op::PASSIVE_ESTABLISHED == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op::RTO == BPF_SOCK_OPS_RTO_CB
        && op::RETRANS == BPF_SOCK_OPS_RETRANS_CB
        && op::STATE == BPF_SOCK_OPS_STATE_CB
        && op::TCP_LISTEN == BPF_SOCK_OPS_TCP_LISTEN_CB
        && op::RTT == BPF_SOCK_OPS_RTT_CB
        && op::PARSE_HDR_OPT == BPF_SOCK_OPS_PARSE_HDR_OPT_CB
        && op::HDR_OPT_LEN == BPF_SOCK_OPS_HDR_OPT_LEN_CB
);

/// The entry: callbacks without work (`fold::has_work`: 12 of a short connection's 17) return
/// here, in the entry's few instructions, without entering the handler and its ~36 KB of code
/// (entered cold, each line of it a call's path touches costs ~20 ns: docs/performance.md,
/// "Results, 2026-12-06 (seventh)"); so do those `none_here` answers.
#[sock_ops]
pub fn flow_sock_ops(ctx: SockOpsContext) -> u32 {
    let (op, arg1) = (ctx.op(), ctx.arg(1));
    if has_work(op, ctx.arg(0), arg1) && !none_here(&ctx, op, arg1) {
        handle(ctx);
    }
    1
}

/// Callbacks `has_work` lets through that have no work for this socket or this run, answered
/// here rather than in the handler (entered cold, as after a bulk copy, that costs ~200-400 ns
/// more than this):
/// - the FIN_WAIT1 of a socket of a walked namespace (`fold::untracked_flags`): its close reads
///   the FIN from the socket (`fin_arrived`);
/// - a listen, when the SYN-ACK programs check the listener's cgroup (`synack_by_cgroup`): the
///   listener is not noted, and gets no callback at its close either.
#[inline(always)]
fn none_here(ctx: &SockOpsContext, op: u32, arg1: u32) -> bool {
    match op {
        BPF_SOCK_OPS_STATE_CB => arg1 == tcp_state::FIN_WAIT1 && untracked_flags(ctx.cb_flags()).is_some(),
        BPF_SOCK_OPS_TCP_LISTEN_CB => synack_by_cgroup(),
        _ => false,
    }
}

/// One small handler per callback (a separate function: see `flow_sock_ops`).
#[inline(never)]
fn handle(ctx: SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_active_established(&ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_passive_established(&ctx),
        BPF_SOCK_OPS_RTT_CB => on_rtt(&ctx),
        BPF_SOCK_OPS_RETRANS_CB => on_retrans(&ctx),
        BPF_SOCK_OPS_RTO_CB => on_rto(&ctx),
        BPF_SOCK_OPS_STATE_CB => on_state(&ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => on_listen(&ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => on_send(&ctx),
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB => on_parse_hdr(&ctx),
        _ => {}
    }
}

#[inline(always)]
fn key_of(ctx: &SockOpsContext, role: u8) -> Option<FlowKey> {
    let (local, remote) = ctx::addrs(ctx)?;
    Some(flow_key(local, remote, ctx::local_port(ctx), ctx::remote_port(ctx), role))
}

/// Start tracking a socket with state `init` and callbacks `cb`. False when `--max-sockets`
/// sockets are tracked already (counted).
#[inline(always)]
fn track(ctx: &SockOpsContext, init: &SockState, cb: i32) -> bool {
    if !sockets::track(ctx, init) {
        return false;
    }
    let _ = ctx.set_cb_flags(cb);
    true
}

/// The flow of a socket just tracked under `key`. When FLOWS is full the loss is counted and
/// the socket marked (`SOCK_FLOW_LOST`) so that it is counted once: the one lookup of the
/// socket's state is on that path, not on every connection's.
#[inline(always)]
fn new_socket_flow(ctx: &SockOpsContext, key: &FlowKey) -> Option<*mut FlowAgg> {
    let agg = flow(key);
    if agg.is_none() {
        count(stat::FLOWS_FULL);
        if let Some(st) = sockets::get(ctx) {
            st.flags |= SOCK_FLOW_LOST;
        }
    }
    agg
}

/// The socket's state entry, or, for a socket armed by an earlier run of the agent, the one it
/// gets now (`adopt`).
#[inline(always)]
fn state(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    match sockets::get(ctx) {
        Some(st) => Some(st),
        None => adopt(ctx, ctx::state(ctx)),
    }
}

/// A socket with callbacks and no state entry, in TCP state `state`. This run sets callback flags
/// only on sockets it stores (or, in a walked namespace, marks as walked, which never come here),
/// so one with per-segment callbacks was armed by an earlier run of the agent, which counted it
/// up to that run's last fold (`fold::armed_flags`). It is stored now, with its role from its
/// callback flags and what it did so far as folded, and counted from here on: its close, not its
/// establishment (the earlier run's), unless it is still connecting. Any other socket, or one
/// that does not fit in SOCKETS (counted there), gets its callbacks switched off, is counted once
/// as untracked, and would otherwise run the program at every segment for its life.
#[inline(never)]
fn adopt(ctx: &SockOpsContext, state: u32) -> Option<&'static mut SockState> {
    let adopted = match armed_flags(ctx.cb_flags()) {
        Some(role) => {
            let flags = role | if was_established(state) { SOCK_ESTABLISHED } else { 0 };
            let key = key_of(ctx, if role & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER });
            key.is_some_and(|key| {
                let (una, nxt) = ctx::snd_una_nxt(ctx);
                let now = payload(&ctx::raw_counters(ctx), flags | fin_flags(state), una, nxt);
                sockets::track(ctx, &new_state(key, ctx::now_coarse_ns(), flags, now))
            })
        }
        None => false,
    };
    let st = if adopted { sockets::get(ctx) } else { None };
    if st.is_none() {
        count(stat::UNTRACKED_EVENTS);
        let _ = ctx.set_cb_flags(0);
    }
    st
}

/// Fold the socket's new payload bytes and segments, and its RTT samples, into its flow; returns
/// the flow. Exact: callbacks run under the socket's lock.
#[inline(always)]
fn fold(ctx: &SockOpsContext, st: &mut SockState) -> Option<*mut FlowAgg> {
    fold_at(ctx, st, fold_clock(st), ctx::state(ctx))
}

/// The coarse clock for a fold of a socket with per-segment callbacks (0 for a walked socket).
#[inline(always)]
fn fold_clock(st: &SockState) -> u64 {
    if st.flags & SOCK_WALKED != 0 { 0 } else { ctx::now_coarse_ns() }
}

/// `fold` with the coarse clock already read (unless the socket is walked: its folds are not
/// timed), for a socket in TCP state `state`.
#[inline(always)]
fn fold_at(ctx: &SockOpsContext, st: &mut SockState, now_coarse: u64, state: u32) -> Option<*mut FlowAgg> {
    st.last_fold_ns = now_coarse;
    let agg = socket_flow(st)?;
    let (una, nxt) = ctx::snd_una_nxt(ctx);
    let cur = payload(&ctx::raw_counters(ctx), st.flags | fin_flags(state), una, nxt);
    let delta = fold_counters(agg, &mut st.folded, &cur);
    if st.flags & SOCK_WALKED != 0 {
        if delta.segs_in != 0 {
            add_srtt(ctx, agg);
        }
    } else {
        flush_rtt(agg, &mut st.rtt);
    }
    Some(agg)
}

/// The handshake's round trip, as the kernel measured it into srtt just before establishment:
/// SYN to SYN-ACK on the connecting side, SYN-ACK to ACK on the accepting side (of the answered
/// SYN or SYN-ACK when one was retransmitted; the retransmissions are counted as such). None
/// when the kernel has no sample (a retransmitted handshake without timestamps, Karn's rule).
#[inline(always)]
fn handshake_us(ctx: &SockOpsContext) -> Option<u64> {
    let srtt8 = ctx::srtt_us_x8(ctx);
    if srtt8 == 0 { None } else { Some((srtt8 >> 3) as u64) }
}

/// An established connection on its flow: established (open is established - closed, see
/// `FlowAgg::open`), its handshake time.
#[inline(always)]
fn add_established(ctx: &SockOpsContext, agg: *mut FlowAgg) {
    // SAFETY: FLOWS value pointer.
    unsafe {
        add(&raw mut (*agg).established, 1);
        if let Some(hs) = handshake_us(ctx) {
            record(&raw mut (*agg).handshake_us, hs);
        }
    }
}

/// The flow of a socket of a walked namespace, without a state entry, with socket flags `flags`.
/// When FLOWS is full the socket gets an entry marked `SOCK_FLOW_LOST` (or its entry is marked),
/// so that the loss is counted once, as for any other socket.
#[inline(always)]
fn untracked_flow(ctx: &SockOpsContext, key: &FlowKey, flags: u32) -> Option<*mut FlowAgg> {
    let agg = flow(key);
    if agg.is_none() {
        flow_lost(ctx, key, flags);
    }
    agg
}

/// The rare path of `untracked_flow`.
#[inline(never)]
fn flow_lost(ctx: &SockOpsContext, key: &FlowKey, flags: u32) {
    if let Some(st) = sockets::get(ctx) {
        if st.flags & SOCK_FLOW_LOST == 0 {
            st.flags |= SOCK_FLOW_LOST;
            count(stat::FLOWS_FULL);
        }
        return;
    }
    count(stat::FLOWS_FULL);
    mark_entry(ctx);
    let _ = sockets::insert_late(ctx::cookie(ctx), &new_state(*key, 0, flags | SOCK_FLOW_LOST, folded_none(0)));
}

/// A walked socket that gets a SOCKETS entry from its callbacks: with records on, its callback
/// flags say so (`cb::ENTRY`), so that its records tell the daemon to look the entry up (the
/// walk's entries the daemon learns from the walk's output). Set before the entry is stored: a
/// mark without an entry costs the daemon a lookup that finds nothing, an entry without a mark
/// would be missed.
#[inline(always)]
fn mark_entry(ctx: &SockOpsContext) {
    if records::on() {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | cb::ENTRY) as i32);
    }
}

/// Whether a walked socket may have a SOCKETS entry, where the program folds it itself: with
/// records on, always (the daemon knows the walk's entries, the program does not; it folds only
/// when a ring is full); without, while any walked socket has one.
#[inline(always)]
fn may_have_entry() -> bool {
    records::on() || sockets::walked_entries()
}

/// `REC_ENTRY` for a socket with callback flags `cbf` (see `may_have_entry`).
#[inline(always)]
fn entry_bit(cbf: u32) -> u32 {
    if cbf & cb::ENTRY != 0 { REC_ENTRY } else { 0 }
}

/// A record of a walked socket's event for the daemon (`records::push`): `what` is its kind
/// and flags, `when` the state it left and the RTT (`records::pair`). False when the CPU's
/// ring is full, and the caller folds the event itself. A function of its own (five arguments
/// at most): inlined, its stack would add to every handler's.
#[inline(never)]
fn push_record(ctx: &SockOpsContext, key: &FlowKey, what: u64, when: u64, counters: &SockCounters) -> bool {
    records::push(ctx::cookie(ctx), key, counters, what, when)
}

/// A record of a walked socket without a SOCKETS entry (no `cb::ENTRY`) that found its ring full:
/// the daemon may hold its baseline (the walk hands it such sockets' counters, `walk::snapshot`),
/// so the program cannot fold the event exactly; it goes to the spill (`records::spill`). False
/// when the spill is full too, and the caller folds it.
#[inline(never)]
fn spill_record(ctx: &SockOpsContext, key: &FlowKey, what: u64, when: u64, counters: &SockCounters) -> bool {
    records::spill(ctx::cookie(ctx), key, counters, what, when)
}

fn on_connect(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    if !ctx::is_inet(ctx) {
        return;
    }
    if walked(ctx) {
        // No flow lookup: the attempt is counted by the walk, the establishment or the close,
        // whichever comes first (`fold::attempt_due_at_close`).
        let _ = ctx.set_cb_flags(cb::walked(false) as i32);
        count(stat::SOCKETS_INSERTED);
        return;
    }
    let Some(key) = key_of(ctx, ROLE_CLIENT) else {
        return;
    };
    let init = new_state(key, ctx::now_coarse_ns(), SOCK_CLIENT, folded_none(0));
    if !track(ctx, &init, CONNECTING_CALLBACKS as i32) {
        return;
    }
    if let Some(agg) = new_socket_flow(ctx, &key) {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).attempted }, 1);
    }
}

fn on_active_established(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let cbf = ctx.cb_flags();
    if untracked_flags(cbf).is_some() {
        // A walked socket: its handshake segments wait for the walk or the close. Its attempt
        // is counted now, unless the walk found it connecting (then it has a state entry).
        let Some(key) = key_of(ctx, ROLE_CLIENT) else {
            return;
        };
        let what = pair(kind::ESTABLISHED, SOCK_CLIENT | SOCK_WALKED | entry_bit(cbf));
        if records::on() && push_record(ctx, &key, what, pair(0, ctx::srtt_us_x8(ctx)), &folded_none(0)) {
            return;
        }
        let entry = if may_have_entry() { sockets::get(ctx).map(|st| st.flags) } else { None };
        if let Some(agg) = untracked_flow(ctx, &key, SOCK_CLIENT | SOCK_WALKED) {
            if attempt_due_at_establishment(entry) {
                // SAFETY: FLOWS value pointer.
                add(unsafe { &raw mut (*agg).attempted }, 1);
            }
            add_established(ctx, agg);
        }
        return;
    }
    let Some(st) = state(ctx) else { return };
    st.flags |= SOCK_ESTABLISHED;
    let _ = ctx.set_cb_flags(callbacks(false));
    if let Some(agg) = fold(ctx, st) {
        add_established(ctx, agg);
    }
}

/// The base an accepted socket with `inherited` SYN-ACK retransmissions folds from: what the
/// SYN-ACK program counted of them (`fold::synack_base`); the rest is counted as recovered.
#[inline(always)]
fn synack_base(ctx: &SockOpsContext, key: &FlowKey, inherited: u32) -> u32 {
    let request = RequestKey {
        local_ip: key.local_ip,
        remote_ip: key.remote_ip,
        local_port: ctx::local_port(ctx),
        remote_port: ctx::remote_port(ctx),
    };
    let (base, recovered) = fold::synack_base(take_tally(&request), inherited);
    if recovered != 0 {
        count_n(stat::SYNACK_RECOVERED, recovered as u64);
    }
    base
}

fn on_passive_established(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(key) = key_of(ctx, ROLE_SERVER) else {
        return;
    };
    // The socket inherits its request socket's SYN-ACK retransmissions in total_retrans. When the
    // SYN-ACK program counts its listener's (its listener is of the cgroup, as the socket is, or
    // its port in LISTENERS: `synack`), it has counted those it ran for, as tallied for the
    // request: start from there (in the state it is created with, which the walk may read at
    // once), so that the socket counts the rest, which the kernel sent without running the
    // program. Without any (nearly every connection) there is nothing to look up.
    let inherited = ctx::raw_counters(ctx).total_retrans;
    let counted = || synack_by_cgroup() || listener(ctx::local_port(ctx) as u32).is_some();
    let base = if inherited != 0 && counted() { synack_base(ctx, &key, inherited) } else { 0 };
    let walked = walked(ctx);
    let agg = if walked && base == 0 {
        // No state entry: the handshake segments wait for the walk or the close.
        let _ = ctx.set_cb_flags(cb::walked(true) as i32);
        count(stat::SOCKETS_INSERTED);
        let what = pair(kind::ESTABLISHED, SOCK_ESTABLISHED | SOCK_WALKED);
        if records::on() && push_record(ctx, &key, what, pair(0, ctx::srtt_us_x8(ctx)), &folded_none(0)) {
            return;
        }
        untracked_flow(ctx, &key, SOCK_ESTABLISHED | SOCK_WALKED)
    } else if walked {
        // With a retransmission base to keep, a state entry from the start (marked, `mark_entry`).
        let cbf = cb::walked(true) | if records::on() { cb::ENTRY } else { 0 };
        if !track(ctx, &new_state(key, 0, SOCK_ESTABLISHED | SOCK_WALKED, folded_none(base)), cbf as i32) {
            return;
        }
        new_socket_flow(ctx, &key)
    } else {
        // Folded by callbacks: the handshake segments now, into the state as it is stored.
        let (una, nxt) = ctx::snd_una_nxt(ctx);
        let cur = payload(&ctx::raw_counters(ctx), SOCK_ESTABLISHED, una, nxt);
        let (delta, folded) = fold_step(&folded_none(base), &cur);
        if !track(ctx, &new_state(key, ctx::now_coarse_ns(), SOCK_ESTABLISHED, folded), callbacks(true)) {
            return;
        }
        let agg = new_socket_flow(ctx, &key);
        if let Some(agg) = agg {
            add_counters(agg, &delta);
        }
        agg
    };
    if let Some(agg) = agg {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).attempted }, 1);
        add_established(ctx, agg);
    }
}

/// One RTT sample per acknowledgment that measured one: kept in the socket, folded with its
/// counters once the fold interval has passed or the socket holds `RTT_PENDING` samples.
fn on_rtt(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    // Arg 1: the measured RTT of this sample (mrtt), microseconds.
    let full = rtt_push(&mut st.rtt, ctx.arg(0) as u64);
    let now = ctx::now_coarse_ns();
    if full || fold_due(now, st.last_fold_ns, fold_interval_ns()) {
        let _ = fold_at(ctx, st, now, ctx::state(ctx));
    }
}

fn on_retrans(ctx: &SockOpsContext) {
    // The count itself comes from the socket's total_retrans (folded like bytes), which the kernel
    // bumps where it bumps TcpRetransSegs; this callback only makes the fold timely (sockets of
    // walked namespaces do not have it, but for the mark of one with an entry, `cb::ENTRY`).
    if untracked_flags(ctx.cb_flags()).is_some() {
        return;
    }
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    let _ = fold(ctx, st);
}

fn on_rto(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    // Arg 3: whether the retransmission timer gave up on this socket.
    let expired = ctx.arg(2) != 0;
    let untracked = untracked_flags(ctx.cb_flags());
    let st = if untracked.is_some() { sockets::get(ctx) } else { state(ctx) };
    let agg = match st {
        Some(st) => {
            if expired {
                st.flags |= SOCK_RTO_EXPIRED;
            }
            fold(ctx, st)
        }
        None => {
            let Some(flags) = untracked else {
                return;
            };
            let Some(key) = key_of(ctx, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER }) else {
                return;
            };
            if expired && records::on() {
                // The close that follows must know, and the daemon may hold what was folded of
                // the socket (`walk::snapshot`): a record tells it, and it keeps the flag for the
                // close.
                let what = pair(kind::RTO_EXPIRED, flags | SOCK_RTO_EXPIRED);
                let none = folded_none(0);
                if !push_record(ctx, &key, what, 0, &none) && !spill_record(ctx, &key, what, 0, &none) {
                    expired_entry(ctx, &key, flags);
                }
            } else if expired {
                expired_entry(ctx, &key, flags);
            }
            untracked_flow(ctx, &key, flags)
        }
    };
    if let Some(agg) = agg {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).timeouts }, 1);
    }
}

/// A walked socket without a state entry whose retransmission timer gave up gets one, marked
/// `SOCK_RTO_EXPIRED`, for its close (`mark_entry`).
#[inline(never)]
fn expired_entry(ctx: &SockOpsContext, key: &FlowKey, flags: u32) {
    mark_entry(ctx);
    let _ = sockets::insert_late(ctx::cookie(ctx), &new_state(*key, 0, flags | SOCK_RTO_EXPIRED, folded_none(0)));
}

/// A tracked socket's change to FIN_WAIT1 or CLOSE, or a listener's close: the only state
/// changes with work, and the only ones the entry lets through (`fold::has_work`). The tests
/// of `new` below stay, so this does not depend on that filter.
fn on_state(ctx: &SockOpsContext) {
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    if old == tcp_state::LISTEN {
        if new == tcp_state::CLOSE {
            count(stat::EVENTS);
            forget_listener(ctx);
        }
        return;
    }
    match new {
        tcp_state::FIN_WAIT1 => {
            // From here the peer's FIN may close the socket straight from FIN_WAIT2; parsing the
            // incoming segments' flags is how we know it arrived (it is one byte of
            // bytes_received; see `fin_seen`). The other FINs follow from the states
            // (`fin_flags`), so no transition but this and CLOSE needs the socket's state.
            // A walked socket's close reads the FIN from the socket itself (`fin_arrived`).
            let cbf = ctx.cb_flags();
            if untracked_flags(cbf).is_none() {
                count(stat::EVENTS);
                let _ = ctx.set_cb_flags((cbf | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG) as i32);
            }
        }
        tcp_state::CLOSE => {
            count(stat::EVENTS);
            let cbf = ctx.cb_flags();
            match untracked_flags(cbf) {
                Some(flags) => {
                    if close_record(ctx, flags, cbf, old) {
                        return;
                    }
                    // A walked socket: an entry only if it may have one (`may_have_entry`).
                    if may_have_entry()
                        && let Some(st) = sockets::get(ctx)
                    {
                        return close(ctx, st, old);
                    }
                    close_untracked(ctx, flags, old)
                }
                None => match sockets::get(ctx) {
                    Some(st) => close(ctx, st, old),
                    None => close_armed(ctx),
                },
            }
        }
        _ => {}
    }
}

/// The socket leaves `old` for CLOSE: its last fold (with the FINs `old` implies), how it ended.
fn close(ctx: &SockOpsContext, st: &mut SockState, old: u32) {
    st.flags |= fin_arrived(ctx, old);
    if st.flags & SOCK_WALKED != 0 && was_established(old) {
        st.flags |= SOCK_ESTABLISHED;
    }
    let flags = st.flags;
    if let Some(agg) = fold_at(ctx, st, fold_clock(st), old) {
        add_closed(agg, old, flags);
    }
    sockets::forget(ctx, flags);
}

/// The close of a socket with callbacks and no state entry: one an earlier run armed is stored
/// (`adopt`) and closed as any other, with nothing folded, so its close is counted.
#[inline(never)]
fn close_armed(ctx: &SockOpsContext) {
    let old = ctx.arg(0);
    if let Some(st) = adopt(ctx, old) {
        close(ctx, st, old);
    }
}

/// `SOCK_FIN_RCVD` if the peer's FIN arrived at a socket leaving `old` for CLOSE, where its state
/// does not say so (`fold::fin_seen_done`): a walked socket's own `SOCK_DONE` flag, or for a
/// socket folded by callbacks the parse callback's disarmed flag (`fold::fin_seen`).
#[inline(always)]
fn fin_arrived(ctx: &SockOpsContext, old: u32) -> u32 {
    if old != tcp_state::FIN_WAIT1 && old != tcp_state::FIN_WAIT2 {
        return 0;
    }
    let cbf = ctx.cb_flags();
    if untracked_flags(cbf).is_some() {
        fin_seen_done(old, ctx::fin_received(ctx).unwrap_or(false))
    } else {
        fin_seen(old, cbf)
    }
}

/// How the connection ended, on its flow (an established one's `closed` is what takes it off the
/// open count, `FlowAgg::open`). A walked client's attempt not counted yet is counted now
/// (`fold::attempt_due_at_close`).
#[inline(always)]
fn add_closed(agg: *mut FlowAgg, old: u32, flags: u32) {
    if attempt_due_at_close(flags, old) {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).attempted }, 1);
    }
    add_end(agg, &classify_end(old, flags));
}

/// The close of a walked socket (`flags` from `untracked_flags`, callback flags `cbf`) as a
/// record: its payload counters as `close_untracked` reads them, how it ended, and whether it
/// may have an entry, which the daemon then applies (`record::apply`). False when records are
/// off or the ring is full: the caller folds it.
#[inline(always)]
fn close_record(ctx: &SockOpsContext, mut flags: u32, cbf: u32, old: u32) -> bool {
    if !records::on() {
        return false;
    }
    flags |= fin_arrived(ctx, old);
    if was_established(old) {
        flags |= SOCK_ESTABLISHED;
    }
    let Some(key) = key_of(ctx, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER }) else {
        return false;
    };
    let (una, nxt) = ctx::snd_una_nxt(ctx);
    let cur = payload(&ctx::raw_counters(ctx), flags | fin_flags(old), una, nxt);
    let (what, when) = (pair(kind::CLOSED, flags | entry_bit(cbf)), pair(old, ctx::srtt_us(ctx)));
    // With a mark the socket's entry holds what was folded, and the program folds it exactly.
    if !push_record(ctx, &key, what, when, &cur) && (cbf & cb::ENTRY != 0 || !spill_record(ctx, &key, what, when, &cur))
    {
        return false;
    }
    count(stat::SOCKETS_REMOVED);
    true
}

/// `close` for a socket of a walked namespace that never had a state entry (`flags` from
/// `untracked_flags`): nothing of it was folded, so all of its counters are new.
fn close_untracked(ctx: &SockOpsContext, mut flags: u32, old: u32) {
    flags |= fin_arrived(ctx, old);
    if was_established(old) {
        flags |= SOCK_ESTABLISHED;
    }
    count(stat::SOCKETS_REMOVED);
    let Some(key) = key_of(ctx, if flags & SOCK_CLIENT != 0 { ROLE_CLIENT } else { ROLE_SERVER }) else {
        return;
    };
    let Some(agg) = flow(&key) else {
        count(stat::FLOWS_FULL);
        return;
    };
    let (una, nxt) = ctx::snd_una_nxt(ctx);
    let cur = payload(&ctx::raw_counters(ctx), flags | fin_flags(old), una, nxt);
    add_counters(agg, &cur);
    if cur.segs_in != 0 {
        add_srtt(ctx, agg);
    }
    add_closed(agg, old, flags);
}

/// A walked socket's RTT sample: its smoothed RTT, if it has one.
#[inline(always)]
fn add_srtt(ctx: &SockOpsContext, agg: *mut FlowAgg) {
    let srtt = ctx::srtt_us(ctx);
    if srtt != 0 {
        // SAFETY: FLOWS value pointer.
        record(unsafe { &raw mut (*agg).rtt_us }, srtt as u64);
    }
}

/// Incoming segments from FIN_WAIT1 on. At the peer's FIN the callback disarms itself: nothing
/// after it needs parsing, and `close` reads the disarmed flag as "the FIN arrived"
/// (`fold::fin_seen`), so the socket's state is not looked up here.
fn on_parse_hdr(ctx: &SockOpsContext) {
    const TCP_FIN: u32 = 0x01;
    // Not armed: a server's role bit (`cb::SERVER`) and an unknown option.
    if ctx::skb_tcp_flags(ctx) & TCP_FIN == 0 || ctx.cb_flags() & BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG == 0 {
        return;
    }
    count(stat::EVENTS);
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG) as i32);
}

/// `HDR_OPT_LEN_CB` for an outgoing segment (the MSS computations, `op::WRITE_HDR_TCP_CURRENT_MSS`,
/// return in the entry).
fn on_send(ctx: &SockOpsContext) {
    let interval = fold_interval_ns();
    if interval == 0 {
        return;
    }
    let Some(st) = state(ctx) else {
        return;
    };
    let now = ctx::now_coarse_ns();
    if !fold_due(now, st.last_fold_ns, interval) {
        return;
    }
    count(stat::EVENTS);
    let _ = fold_at(ctx, st, now, ctx::state(ctx));
}

/// A listen, where the SYN-ACK programs go by LISTENERS (`synack_by_cgroup` false; otherwise it
/// returns in the entry, `none_here`).
fn on_listen(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some((local, _)) = ctx::addrs(ctx) else {
        return;
    };
    let Some(l) = LISTENERS.get_ptr_mut(ctx::local_port(ctx) as u32) else {
        return;
    };
    // SAFETY: LISTENERS value pointer; listen() runs under the socket lock, but sockets of other
    // namespaces (or SO_REUSEPORT) may share the port, so the count is atomic. The address is
    // written after the count: no SYN-ACK of the port is retransmitted before its first listen.
    unsafe {
        if add32(&raw mut (*l).count, 1) == 0 {
            (*l).addr = local;
        } else if (*l).addr != local {
            // Wildcard. An opaque zero, not a byte-loop `memset` (see `sockets::new_state`).
            let z = core::hint::black_box(0u32);
            (*l).addr = [z, z, z, z];
        }
    }
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

/// A listener's close. One an earlier run armed, which this run never counted, finds the count 0
/// and leaves it there.
fn forget_listener(ctx: &SockOpsContext) {
    if let Some(l) = listener(ctx::local_port(ctx) as u32) {
        // SAFETY: LISTENERS value pointer.
        add32(unsafe { &raw mut (*l).count }, u32::MAX);
    }
}
