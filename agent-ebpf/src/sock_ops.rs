//! The sock_ops program: one entry point, one small handler per callback.

use agent_common::{
    fold::{classify_end, fold_step, payload, tcp_state},
    maps::{
        FlowAgg, FlowKey, Listener, ROLE_CLIENT, ROLE_SERVER, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_FIN_RCVD,
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
    flows::{add, add_counters, add_end, add32, record, socket_flow},
    maps::{LISTENERS, SOCKETS, count},
};

/// Minimum time between two folds of a socket's byte counters from the send path
/// (`HDR_OPT_LEN_CB`, every outgoing segment). 0 disables send-path folding. Set by the daemon.
#[unsafe(no_mangle)]
static FOLD_INTERVAL_NS: u64 = 100_000_000;

const BPF_ANY: u64 = 0;

#[inline(always)]
fn fold_interval_ns() -> u64 {
    // SAFETY: read of a global the loader may have rewritten; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&FOLD_INTERVAL_NS) }
}

#[inline(always)]
fn callbacks() -> i32 {
    let mut f =
        BPF_SOCK_OPS_RTO_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG;
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

/// Start tracking a socket. `None` when SOCKETS is full (counted).
#[inline(always)]
fn track(ctx: &SockOpsContext, key: FlowKey, now: u64, flags: u32) -> Option<*mut SockState> {
    let cookie = ctx::cookie(ctx);
    let st = SockState { key, start_ns: now, last_fold_ns: now, folded: SockCounters::default(), flags, _pad: 0 };
    if SOCKETS.insert(cookie, st, BPF_ANY).is_err() {
        count(stat::SOCKETS_FULL);
        return None;
    }
    count(stat::SOCKETS_INSERTED);
    let _ = ctx.set_cb_flags(callbacks());
    SOCKETS.get_ptr_mut(cookie)
}

#[inline(always)]
fn state(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    match SOCKETS.get_ptr_mut(ctx::cookie(ctx)) {
        // SAFETY: this socket's own SOCKETS value; callbacks of one socket run under its lock,
        // and the program does not keep the reference past this invocation.
        Some(p) => Some(unsafe { &mut *p }),
        None => {
            count(stat::UNTRACKED_EVENTS);
            None
        }
    }
}

/// Fold the socket's new payload bytes and segments into its flow; returns the flow.
#[inline(always)]
fn fold(ctx: &SockOpsContext, st: &mut SockState, now: u64) -> Option<*mut FlowAgg> {
    let agg = socket_flow(st)?;
    let (una, nxt) = ctx::snd_una_nxt(ctx);
    let cur = payload(&ctx::raw_counters(ctx), st.flags, una, nxt);
    let (delta, next) = fold_step(&st.folded, &cur);
    add_counters(agg, &delta);
    st.folded = next;
    st.last_fold_ns = now;
    Some(agg)
}

fn on_connect(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(key) = key_of(ctx, ROLE_CLIENT) else {
        return;
    };
    let Some(st) = track(ctx, key, ctx::now_ns(), SOCK_CLIENT) else {
        return;
    };
    // SAFETY: the entry just inserted for this socket.
    if let Some(agg) = socket_flow(unsafe { &mut *st }) {
        // SAFETY: FLOWS value pointer.
        add(unsafe { &raw mut (*agg).attempted }, 1);
    }
}

fn on_active_established(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    let now = ctx::now_ns();
    st.flags |= SOCK_ESTABLISHED;
    let start = st.start_ns;
    let Some(agg) = fold(ctx, st, now) else {
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
    let now = ctx::now_ns();
    let Some(st) = track(ctx, key, now, SOCK_ESTABLISHED) else {
        return;
    };
    // SAFETY: the entry just inserted for this socket.
    let st = unsafe { &mut *st };
    // The socket inherits its request socket's SYN-ACK retransmissions in total_retrans. When the
    // listener is one of ours, the tracepoint has counted them already: start from there.
    if LISTENERS.get_ptr(ctx::local_port(ctx) as u32).is_some() {
        st.folded.total_retrans = ctx::raw_counters(ctx).total_retrans;
    }
    let Some(agg) = fold(ctx, st, now) else {
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

fn on_rtt(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    let Some(agg) = fold(ctx, st, ctx::now_ns()) else {
        return;
    };
    // Arg 1: the measured RTT of this sample (mrtt), microseconds.
    // SAFETY: FLOWS value pointer.
    unsafe { record(&raw mut (*agg).rtt_us, ctx.arg(0) as u64) };
}

fn on_retrans(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    // The count itself comes from the socket's total_retrans (folded like bytes), which the kernel
    // bumps where it bumps TcpRetransSegs; this callback only makes the fold timely.
    let Some(st) = state(ctx) else { return };
    let _ = fold(ctx, st, ctx::now_ns());
}

fn on_rto(ctx: &SockOpsContext) {
    count(stat::EVENTS);
    let Some(st) = state(ctx) else { return };
    // Arg 3: whether the retransmission timer gave up on this socket.
    if ctx.arg(2) != 0 {
        st.flags |= SOCK_RTO_EXPIRED;
    }
    let Some(agg) = fold(ctx, st, ctx::now_ns()) else {
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
    if let Some(agg) = fold(ctx, st, ctx::now_ns()) {
        add_end(agg, &classify_end(old, flags));
        if flags & SOCK_ESTABLISHED != 0 {
            // SAFETY: FLOWS value pointer. Wrapping add of -1: the open gauge goes down.
            add(unsafe { &raw mut (*agg).open }, u64::MAX);
        }
    }
    if SOCKETS.remove(ctx::cookie(ctx)).is_ok() {
        count(stat::SOCKETS_REMOVED);
    }
}

fn on_parse_hdr(ctx: &SockOpsContext) {
    const TCP_FIN: u32 = 0x01;
    if ctx::skb_tcp_flags(ctx) & TCP_FIN == 0 {
        return;
    }
    if let Some(st) = SOCKETS.get_ptr_mut(ctx::cookie(ctx)) {
        // SAFETY: this socket's own state.
        unsafe { (*st).flags |= SOCK_FIN_RCVD };
    }
}

fn on_send(ctx: &SockOpsContext) {
    let interval = fold_interval_ns();
    if interval == 0 {
        return;
    }
    let Some(st) = SOCKETS.get_ptr_mut(ctx::cookie(ctx)) else {
        return;
    };
    // SAFETY: this socket's own state.
    let st = unsafe { &mut *st };
    let now = ctx::now_ns();
    if now.wrapping_sub(st.last_fold_ns) < interval {
        return;
    }
    count(stat::EVENTS);
    let _ = fold(ctx, st, now);
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
