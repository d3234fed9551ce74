//! The sock_ops program: one entry point, one small handler per callback.

use agent_common::{
    fold::{classify_end, fold_due, fold_step, payload, rtt_push, tcp_state},
    maps::{
        FlowAgg, FlowKey, Listener, ROLE_CLIENT, ROLE_SERVER, RttPending, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_FIN_RCVD,
        SOCK_FIN_SENT, SOCK_RTO_EXPIRED, SockCounters, SockState, flow_key, stat,
    },
};
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB,
        BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB, BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};

use crate::{
    ctx,
    flows::{add, add_counters, add_end, add_rtt, add32, record, socket_flow},
    maps::{LISTENERS, count},
    sockets,
};

/// Minimum time between two folds of a socket's counters and RTT samples from the per-segment
/// callbacks (`HDR_OPT_LEN_CB` on every outgoing segment, `RTT_CB` on every RTT sample). 0
/// disables send-path folding and folds at every RTT sample. Set by the daemon.
#[unsafe(no_mangle)]
static FOLD_INTERVAL_NS: u64 = 100_000_000;

const BPF_ANY: u64 = 0;

#[inline(always)]
fn fold_interval_ns() -> u64 {
    // SAFETY: read of a global the loader may have rewritten; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&FOLD_INTERVAL_NS) }
}

/// Callbacks of a connecting socket: the send-path fold is armed once it is established (it has
/// nothing to fold before, and the SYN would only run it for nothing).
const CONNECTING_CALLBACKS: u32 =
    BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;

/// Callbacks of an established socket.
#[inline(always)]
fn callbacks() -> i32 {
    let mut f = CONNECTING_CALLBACKS;
    if fold_interval_ns() != 0 {
        f |= BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
    }
    f as i32
}

#[sock_ops]
pub fn flow_sock_ops(ctx: SockOpsContext) -> u32 {
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
    1
}

#[inline(always)]
fn key_of(ctx: &SockOpsContext, role: u8) -> Option<FlowKey> {
    let (local, remote) = ctx::addrs(ctx)?;
    Some(flow_key(local, remote, ctx::local_port(ctx), ctx::remote_port(ctx), role))
}

/// Start tracking a socket with the given callbacks. `None` when `--max-sockets` sockets are
/// tracked already (counted).
#[inline(always)]
fn track(ctx: &SockOpsContext, key: FlowKey, start_ns: u64, flags: u32, cb: i32) -> Option<&'static mut SockState> {
    let init = SockState {
        key,
        start_ns,
        last_fold_ns: ctx::now_coarse_ns(),
        folded: SockCounters::default(),
        flags,
        _pad: 0,
        rtt: RttPending::default(),
    };
    let st = sockets::track(ctx, &init)?;
    let _ = ctx.set_cb_flags(cb);
    Some(st)
}

#[inline(always)]
fn state(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    let st = sockets::get(ctx);
    if st.is_none() {
        count(stat::UNTRACKED_EVENTS);
    }
    st
}

/// Fold the socket's new payload bytes and segments, and its pending RTT samples, into its flow;
/// returns the flow.
#[inline(always)]
fn fold(ctx: &SockOpsContext, st: &mut SockState) -> Option<*mut FlowAgg> {
    fold_at(ctx, st, ctx::now_coarse_ns())
}

/// `fold` with the coarse clock already read.
#[inline(always)]
fn fold_at(ctx: &SockOpsContext, st: &mut SockState, now_coarse: u64) -> Option<*mut FlowAgg> {
    st.last_fold_ns = now_coarse;
    let pending = core::mem::take(&mut st.rtt);
    let agg = socket_flow(st)?;
    let (una, nxt) = ctx::snd_una_nxt(ctx);
    let cur = payload(&ctx::raw_counters(ctx), st.flags, una, nxt);
    let (delta, next) = fold_step(&st.folded, &cur);
    add_counters(agg, &delta);
    st.folded = next;
    if pending.count != 0 {
        // SAFETY: FLOWS value pointer.
        add_rtt(unsafe { &raw mut (*agg).rtt_us }, &pending);
    }
    Some(agg)
}

fn on_connect(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(key) = key_of(ctx, ROLE_CLIENT) else {
        return;
    };
    let Some(st) = track(ctx, key, ctx::now_ns(), SOCK_CLIENT, CONNECTING_CALLBACKS as i32) else {
        return;
    };
    if let Some(agg) = socket_flow(st) {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).attempted }, 1);
    }
}

fn on_active_established(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    let now = ctx::now_ns();
    st.flags |= SOCK_ESTABLISHED;
    let _ = ctx.set_cb_flags(callbacks());
    let start = st.start_ns;
    let Some(agg) = fold(ctx, st) else {
        return;
    };
    // SAFETY: FLOWS value pointer.
    unsafe {
        add(&raw mut (*agg).established, 1);
        add(&raw mut (*agg).open, 1);
        record(&raw mut (*agg).handshake_us, now.saturating_sub(start) / 1000);
    }
}

fn on_passive_established(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(key) = key_of(ctx, ROLE_SERVER) else {
        return;
    };
    let Some(st) = track(ctx, key, 0, SOCK_ESTABLISHED, callbacks()) else {
        return;
    };
    // The socket inherits its request socket's SYN-ACK retransmissions in total_retrans. When the
    // listener is one of ours, the tracepoint has counted them already: start from there.
    if LISTENERS.get_ptr(ctx::local_port(ctx) as u32).is_some() {
        st.folded.total_retrans = ctx::raw_counters(ctx).total_retrans;
    }
    let Some(agg) = fold(ctx, st) else {
        return;
    };
    // The accepting side's handshake time is its SYN-ACK -> ACK round trip, which the kernel has
    // just measured into srtt.
    let hs = ctx::srtt_us(ctx) as u64;
    // SAFETY: FLOWS value pointer.
    unsafe {
        add(&raw mut (*agg).attempted, 1);
        add(&raw mut (*agg).established, 1);
        add(&raw mut (*agg).open, 1);
        if hs != 0 {
            record(&raw mut (*agg).handshake_us, hs);
        }
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
        let _ = fold_at(ctx, st, now);
    }
}

fn on_retrans(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    // The count itself comes from the socket's total_retrans (folded like bytes), which the kernel
    // bumps where it bumps TcpRetransSegs; this callback only makes the fold timely.
    let Some(st) = state(ctx) else { return };
    let _ = fold(ctx, st);
}

fn on_rto(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    // Arg 3: whether the retransmission timer gave up on this socket.
    if ctx.arg(2) != 0 {
        st.flags |= SOCK_RTO_EXPIRED;
    }
    let Some(agg) = fold(ctx, st) else {
        return;
    };
    // SAFETY: FLOWS value pointer.
    add(unsafe { &raw mut (*agg).timeouts }, 1);
}

fn on_state(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let (old, new) = (ctx.arg(0), ctx.arg(1));
    if old == tcp_state::LISTEN {
        if new == tcp_state::CLOSE {
            forget_listener(ctx);
        }
        return;
    }
    // Only these transitions need the socket's state.
    if !matches!(
        new,
        tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK | tcp_state::CLOSE_WAIT | tcp_state::CLOSING | tcp_state::CLOSE
    ) {
        return;
    }
    let Some(st) = state(ctx) else { return };
    match new {
        tcp_state::FIN_WAIT1 => {
            st.flags |= SOCK_FIN_SENT;
            // From here the peer's FIN may close the socket straight from FIN_WAIT2; parsing the
            // incoming segments' flags is how we know it arrived (it is one byte of bytes_received).
            let _ = ctx.set_cb_flags(callbacks() | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG as i32);
        }
        tcp_state::LAST_ACK => st.flags |= SOCK_FIN_SENT,
        tcp_state::CLOSE_WAIT | tcp_state::CLOSING => st.flags |= SOCK_FIN_RCVD,
        tcp_state::CLOSE => close(ctx, st, old),
        _ => {}
    }
}

fn close(ctx: &SockOpsContext, st: &mut SockState, old: u32) {
    let flags = st.flags;
    if let Some(agg) = fold(ctx, st) {
        add_end(agg, &classify_end(old, flags));
        if flags & SOCK_ESTABLISHED != 0 {
            // SAFETY: FLOWS value pointer. Wrapping add of -1: the open gauge goes down.
            add(unsafe { &raw mut (*agg).open }, u64::MAX);
        }
    }
    sockets::forget(ctx);
}

fn on_parse_hdr(ctx: &SockOpsContext) {
    const TCP_FIN: u32 = 0x01;
    if ctx::skb_tcp_flags(ctx) & TCP_FIN == 0 {
        return;
    }
    if let Some(st) = sockets::get(ctx) {
        st.flags |= SOCK_FIN_RCVD;
    }
}

/// `HDR_OPT_LEN_CB`: every outgoing segment, and every MSS computation (`tcp_current_mss`, 1-2
/// per data segment, arg 1 = `BPF_WRITE_HDR_TCP_CURRENT_MSS`, no segment), which is skipped.
fn on_send(ctx: &SockOpsContext) {
    const BPF_WRITE_HDR_TCP_CURRENT_MSS: u32 = 1;
    let interval = fold_interval_ns();
    if interval == 0 || ctx.arg(0) == BPF_WRITE_HDR_TCP_CURRENT_MSS {
        return;
    }
    let Some(st) = sockets::get(ctx) else {
        return;
    };
    let now = ctx::now_coarse_ns();
    if !fold_due(now, st.last_fold_ns, interval) {
        return;
    }
    count(stat::EVENTS);
    let _ = fold_at(ctx, st, now);
}

fn on_listen(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some((local, _)) = ctx::addrs(ctx) else {
        return;
    };
    let port = ctx::local_port(ctx) as u32;
    match LISTENERS.get_ptr_mut(port) {
        // SAFETY: LISTENERS value pointer; listen() runs under the socket lock, but two sockets
        // may share a port (SO_REUSEPORT), so the count is atomic.
        Some(l) => unsafe {
            add32(&raw mut (*l).count, 1);
            if (*l).addr != local {
                (*l).addr = [0; 4];
            }
        },
        None => {
            let l = Listener { addr: local, count: 1, _pad: 0 };
            if LISTENERS.insert(port, l, BPF_ANY).is_err() {
                count(stat::LISTENERS_FULL);
                return;
            }
        }
    }
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
}

fn forget_listener(ctx: &SockOpsContext) {
    let port = ctx::local_port(ctx) as u32;
    if let Some(l) = LISTENERS.get_ptr_mut(port) {
        // SAFETY: LISTENERS value pointer.
        let left = add32(unsafe { &raw mut (*l).count }, u32::MAX);
        if left <= 1 {
            let _ = LISTENERS.remove(port);
        }
    }
}
