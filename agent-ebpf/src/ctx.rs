//! The few unsafe reads of kernel contexts, each a plain field access or a helper call.

use agent_common::maps::{Addr, SockCounters, v4_mapped};
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_ktime_get_coarse_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
    },
    programs::SockOpsContext,
};

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// The monotonic clock at tick resolution: no clock source read, for fold intervals.
#[inline(always)]
pub fn now_coarse_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The socket's cookie (unique while the host runs): the key of its state.
#[inline(always)]
pub fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper taking the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The socket's TCP state (`tcp_state`); in a state-change callback, the state it is leaving.
#[inline(always)]
pub fn state(ctx: &SockOpsContext) -> u32 {
    // SAFETY: plain read of a `bpf_sock_ops` field, rewritten by the verifier into a safe load.
    unsafe { (*ctx.ops).state }
}

/// Cookie of the socket's network namespace.
#[inline(always)]
pub fn netns_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: helper taking the program's own context.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// Local and remote address, IPv4 in v4-mapped form. `None` for other families.
///
/// Every field is read unconditionally, with volatile loads at constant offsets: the verifier
/// rejects context loads through a computed pointer, which is what the optimizer makes of two
/// branches that each read a different field.
#[inline(always)]
pub fn addrs(ctx: &SockOpsContext) -> Option<(Addr, Addr)> {
    // SAFETY: plain reads of `bpf_sock_ops` fields (rewritten by the verifier into safe loads).
    let (family, l4, r4, l6, r6) = unsafe {
        let o = ctx.ops;
        (
            core::ptr::read_volatile(&raw const (*o).family),
            core::ptr::read_volatile(&raw const (*o).local_ip4),
            core::ptr::read_volatile(&raw const (*o).remote_ip4),
            [
                core::ptr::read_volatile(&raw const (*o).local_ip6[0]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[1]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[2]),
                core::ptr::read_volatile(&raw const (*o).local_ip6[3]),
            ],
            [
                core::ptr::read_volatile(&raw const (*o).remote_ip6[0]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[1]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[2]),
                core::ptr::read_volatile(&raw const (*o).remote_ip6[3]),
            ],
        )
    };
    match family {
        AF_INET => Some((v4_mapped(l4), v4_mapped(r4))),
        AF_INET6 => Some((l6, r6)),
        _ => None,
    }
}

/// Whether the socket is IPv4 or IPv6 (what `addrs` reads addresses of).
#[inline(always)]
pub fn is_inet(ctx: &SockOpsContext) -> bool {
    // SAFETY: plain read of a `bpf_sock_ops` field (rewritten by the verifier into a safe load).
    let family = unsafe { (*ctx.ops).family };
    family == AF_INET || family == AF_INET6
}

#[inline(always)]
pub fn local_port(ctx: &SockOpsContext) -> u16 {
    ctx.local_port() as u16
}

/// `remote_port` is stored in network order in the upper half (see `bpf_ntohl` in kernel samples).
#[inline(always)]
pub fn remote_port(ctx: &SockOpsContext) -> u16 {
    u32::from_be(ctx.remote_port()) as u16
}

/// Smoothed RTT in microseconds (the kernel keeps it scaled by 8).
#[inline(always)]
pub fn srtt_us(ctx: &SockOpsContext) -> u32 {
    srtt_us_x8(ctx) >> 3
}

/// Smoothed RTT as the kernel keeps it: microseconds times 8, 0 before the first sample.
#[inline(always)]
pub fn srtt_us_x8(ctx: &SockOpsContext) -> u32 {
    // SAFETY: plain read of a `bpf_sock_ops` field; the verifier rewrites it into a safe load
    // (0 when the socket is not a full socket).
    unsafe { (*ctx.ops).srtt_us }
}

/// The socket's cumulative byte and segment counters (sequence space: SYN and FIN included).
#[inline(always)]
pub fn raw_counters(ctx: &SockOpsContext) -> SockCounters {
    // SAFETY: as in `srtt_us`: rewritten context loads.
    unsafe {
        let o = &*ctx.ops;
        SockCounters {
            bytes_acked: o.bytes_acked,
            bytes_received: o.bytes_received,
            segs_out: o.segs_out,
            segs_in: o.segs_in,
            total_retrans: o.total_retrans,
            _pad: 0,
        }
    }
}

/// (snd_una, snd_nxt): equal once everything sent, FIN included, is acknowledged.
#[inline(always)]
pub fn snd_una_nxt(ctx: &SockOpsContext) -> (u32, u32) {
    // SAFETY: as in `srtt_us`.
    unsafe { ((*ctx.ops).snd_una, (*ctx.ops).snd_nxt) }
}

/// TCP flags of the segment being parsed (PARSE_HDR_OPT_CB only; 0 elsewhere).
#[inline(always)]
pub fn skb_tcp_flags(ctx: &SockOpsContext) -> u32 {
    // SAFETY: as in `srtt_us`.
    unsafe { (*ctx.ops).skb_tcp_flags }
}

/// `SOCK_DONE` in `sock.sk_flags` (`enum sock_flags`, include/net/sock.h: `SOCK_DEAD`, then
/// `SOCK_DONE`): TCP sets it in `tcp_fin`, when the peer's FIN arrives, and nowhere else.
const SOCK_DONE_BIT: u64 = 1 << 1;

/// Whether the peer's FIN arrived (`SOCK_DONE`), read through the kernel's typed socket pointer
/// at the BTF offset the daemon loaded (`walk::TCP_OFF_SK_FLAGS`; walked sockets only: the walk,
/// and so the offset, exists wherever they do). `None` when there is no full TCP socket.
#[inline(always)]
pub fn fin_received(ctx: &SockOpsContext) -> Option<bool> {
    // SAFETY: a `bpf_sock_ops` field: the socket, null unless a full socket (the verifier
    // requires the check before the helper takes it).
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket; the helper returns null unless it is a TCP socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return None;
    }
    let flags: u64 =
        crate::walk::field(tp.cast::<u8>().cast_const(), crate::walk::off(&crate::walk::TCP_OFF_SK_FLAGS))?;
    Some(flags & SOCK_DONE_BIT != 0)
}
