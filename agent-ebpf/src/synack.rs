//! SYN-ACK retransmissions of the accepting side. They happen on request sockets, before a full
//! socket exists, so sock_ops never sees them; the kernel's `tcp_retransmit_synack` tracepoint
//! fires once per successful retransmission, exactly where it counts TcpRetransSegs. Only ports
//! that a listener of the monitored cgroup listens on are counted.
//!
//! Two programs for the one tracepoint, and the daemon attaches one of them:
//! - `flow_synack_retrans_btf` (`tp_btf`), preferred. A BTF tracepoint program is skipped only
//!   when the same program is already running on the CPU.
//! - `flow_synack_retrans` (classic `tcp:tcp_retransmit_synack`, through tracefs), the fallback
//!   where BTF tracepoints are not available. The kernel skips a classic tracepoint program
//!   whenever any BPF program or BPF map system call holds the CPU (`bpf_prog_active`), and a
//!   SYN-ACK timer that fires in such a moment goes uncounted. The daemon reports such skipped
//!   runs (`missed_runs`), so they are never silent.

use agent_common::maps::{Addr, ROLE_SERVER, flow_key, stat, v4_mapped};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    ctx::AF_INET,
    flows::{add, flow},
    maps::{LISTENERS, count},
    walk::{
        TCP_OFF_DADDR, TCP_OFF_DPORT, TCP_OFF_FAMILY, TCP_OFF_NUM, TCP_OFF_RCV_SADDR, TCP_OFF_V6_DADDR,
        TCP_OFF_V6_RCV_SADDR, off,
    },
};

// Field offsets in the tracepoint record. The daemon reads them from the tracepoint's `format`
// file and rewrites these globals at load time.
#[unsafe(no_mangle)]
static SYNACK_OFF_SPORT: u32 = 24;
#[unsafe(no_mangle)]
static SYNACK_OFF_DPORT: u32 = 26;
#[unsafe(no_mangle)]
static SYNACK_OFF_FAMILY: u32 = 28;
#[unsafe(no_mangle)]
static SYNACK_OFF_SADDR: u32 = 30;
#[unsafe(no_mangle)]
static SYNACK_OFF_DADDR: u32 = 34;
#[unsafe(no_mangle)]
static SYNACK_OFF_SADDR_V6: u32 = 38;
#[unsafe(no_mangle)]
static SYNACK_OFF_DADDR_V6: u32 = 54;

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: bounded probe read of the tracepoint record at an offset from its format file.
    unsafe { ctx.read_at::<T>(offset).ok() }
}

#[tracepoint]
pub fn flow_synack_retrans(ctx: TracePointContext) -> u32 {
    let _ = on_synack_retrans(&ctx);
    0
}

fn on_synack_retrans(ctx: &TracePointContext) -> Option<()> {
    let sport: u16 = read(ctx, off(&SYNACK_OFF_SPORT))?;
    retransmitted(sport, || {
        let dport: u16 = read(ctx, off(&SYNACK_OFF_DPORT))?;
        let family: u16 = read(ctx, off(&SYNACK_OFF_FAMILY))?;
        let (local, remote): (Addr, Addr) = if family as u32 == AF_INET {
            (v4_mapped(read(ctx, off(&SYNACK_OFF_SADDR))?), v4_mapped(read(ctx, off(&SYNACK_OFF_DADDR))?))
        } else {
            (read(ctx, off(&SYNACK_OFF_SADDR_V6))?, read(ctx, off(&SYNACK_OFF_DADDR_V6))?)
        };
        Some((dport, local, remote))
    })
}

/// A field of a kernel socket at a BTF offset (`walk`'s `sock_common` offsets, which a request
/// socket starts with too).
#[inline(always)]
fn kread<T>(sk: *const u8, offset: usize) -> Option<T> {
    // SAFETY: a fault-tolerant read of kernel memory, `offset` bytes into a socket the
    // tracepoint hands us (alive for the duration of the call).
    unsafe { bpf_probe_read_kernel(sk.wrapping_add(offset).cast::<T>()).ok() }
}

/// `tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)`: `sk` is the
/// listener, `req` the request whose SYN-ACK went out again. The same fields as the classic
/// tracepoint's record: the listener's family, the request's ports and addresses.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn flow_synack_retrans_btf(ctx: BtfTracePointContext) -> i32 {
    let _ = on_synack_retrans_btf(&ctx);
    0
}

fn on_synack_retrans_btf(ctx: &BtfTracePointContext) -> Option<()> {
    let (sk, req): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    let sport: u16 = kread(req, off(&TCP_OFF_NUM))?;
    retransmitted(sport, || {
        let dport: u16 = u16::from_be(kread(req, off(&TCP_OFF_DPORT))?);
        let family: u16 = kread(sk, off(&TCP_OFF_FAMILY))?;
        let (local, remote): (Addr, Addr) = if family as u32 == AF_INET {
            (v4_mapped(kread(req, off(&TCP_OFF_RCV_SADDR))?), v4_mapped(kread(req, off(&TCP_OFF_DADDR))?))
        } else {
            (kread(req, off(&TCP_OFF_V6_RCV_SADDR))?, kread(req, off(&TCP_OFF_V6_DADDR))?)
        };
        Some((dport, local, remote))
    })
}

/// One SYN-ACK retransmission from local port `sport`: counted on its flow if a listener of the
/// monitored cgroup has the port (and the address); `rest` reads the remote port and the local
/// and remote addresses, only then.
#[inline(always)]
fn retransmitted(sport: u16, rest: impl FnOnce() -> Option<(u16, Addr, Addr)>) -> Option<()> {
    let l = LISTENERS.get_ptr(sport as u32)?;
    count(stat::EVENTS);
    let (dport, local, remote) = rest()?;
    // SAFETY: LISTENERS value pointer.
    let bound = unsafe { (*l).addr };
    if bound != [0; 4] && bound != local {
        return None;
    }
    let agg = flow(&flow_key(local, remote, sport, dport, ROLE_SERVER))?;
    // SAFETY: FLOWS value pointer.
    add(unsafe { &raw mut (*agg).retransmissions }, 1);
    Some(())
}
