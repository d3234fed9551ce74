//! SYN-ACK retransmissions of the accepting side. They happen on request sockets, before a full
//! socket exists, so sock_ops never sees them; the kernel's `tcp_retransmit_synack` tracepoint
//! fires once per successful retransmission, exactly where it counts TcpRetransSegs. Only those
//! of listeners of the monitored cgroup are counted: the programs check the listener's own
//! cgroup (`SYNACK_BY_CGROUP`), so listeners opened before the agent started count too, and a
//! listener of another cgroup on the same port does not. Where the agent's cgroup is not known,
//! they count the ports a listener of the cgroup listened on since the agent started (LISTENERS).
//!
//! Two programs for the one tracepoint, and the daemon attaches one of them:
//! - `flow_synack_retrans_btf` (`tp_btf`), preferred. A BTF tracepoint program is skipped only
//!   when the same program is already running on the CPU.
//! - `flow_synack_retrans` (classic `tcp:tcp_retransmit_synack`, through tracefs), the fallback
//!   where BTF tracepoints are not available. The kernel skips a classic tracepoint program
//!   whenever any BPF program or BPF map system call holds the CPU (`bpf_prog_active`), and a
//!   SYN-ACK timer that fires in such a moment goes uncounted. The daemon reports such skipped
//!   runs (`missed_runs`), so they are never silent.
//!
//! Either way the kernel may retransmit a SYN-ACK without running the program: a skipped run,
//! or (seen on 6.18 with the BTF program, rarely) none at all. When the handshake completes,
//! what the program missed is made up from the accepted socket, which inherits its request's
//! count: each counted retransmission is also tallied per request (SYNACK_TALLY), and the socket
//! counts the rest (`stat::SYNACK_RECOVERED`). Only the SYN-ACKs of requests that die unanswered
//! can go missing, and only as runs the kernel skipped (`missed_runs`) or never made.

use agent_common::maps::{Addr, ROLE_SERVER, RequestKey, flow_key, stat, v4_mapped};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    ctx::AF_INET,
    flows::{add, add32, flow},
    maps::{BPF_NOEXIST, SYNACK_TALLY, count, listener},
    walk::{
        TCP_OFF_DADDR, TCP_OFF_DPORT, TCP_OFF_FAMILY, TCP_OFF_NUM, TCP_OFF_RCV_SADDR, TCP_OFF_V6_DADDR,
        TCP_OFF_V6_RCV_SADDR, off, sock_in_agent_cgroup,
    },
};

/// 1 when the agent's cgroup is known (set by the daemon): the programs count a SYN-ACK
/// retransmission by its listener's cgroup, an accepted socket of the cgroup (whose listener is
/// of the cgroup too) starts from the retransmissions it inherits
/// (`sock_ops::on_passive_established`), and sock_ops keeps no LISTENERS. 0: by the ports in
/// LISTENERS.
#[unsafe(no_mangle)]
static SYNACK_BY_CGROUP: u32 = 0;

/// `SYNACK_BY_CGROUP` (see there).
#[inline(always)]
pub fn synack_by_cgroup() -> bool {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&SYNACK_BY_CGROUP) != 0 }
}

/// The address to count SYN-ACKs of local port `sport` for (all zero: any): with
/// `SYNACK_BY_CGROUP`, any if their listener (the kernel address `listener_sk` reads) is of the
/// cgroup; otherwise, if a listener of the cgroup listens on the port (LISTENERS), the address
/// the port's listeners are bound to. None: not ours.
#[inline(always)]
fn ours(sport: u16, listener_sk: impl FnOnce() -> Option<u64>) -> Option<Addr> {
    if synack_by_cgroup() {
        return if sock_in_agent_cgroup(listener_sk()?) { Some([0; 4]) } else { None };
    }
    let l = listener(sport as u32)?;
    // SAFETY: LISTENERS value pointer.
    Some(unsafe { (*l).addr })
}

// Field offsets in the tracepoint record. The daemon reads them from the tracepoint's `format`
// file and rewrites these globals at load time.
#[unsafe(no_mangle)]
static SYNACK_OFF_SKADDR: u32 = 8;
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
    let bound = ours(sport, || read(ctx, off(&SYNACK_OFF_SKADDR)))?;
    retransmitted(sport, bound, || {
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
    let bound = ours(sport, || Some(sk as u64))?;
    retransmitted(sport, bound, || {
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

/// One SYN-ACK retransmission from local port `sport` of a listener of the monitored cgroup
/// bound to `bound` (all zero: any address): counted on its flow if the request's local address
/// is that; `rest` reads the remote port and the local and remote addresses.
#[inline(always)]
fn retransmitted(sport: u16, bound: Addr, rest: impl FnOnce() -> Option<(u16, Addr, Addr)>) -> Option<()> {
    count(stat::EVENTS);
    let (dport, local, remote) = rest()?;
    if bound != [0; 4] && bound != local {
        return None;
    }
    let Some(agg) = flow(&flow_key(local, remote, sport, dport, ROLE_SERVER)) else {
        // FLOWS is full: the retransmission is lost, and counted as such (and recovered from the
        // socket if the handshake completes: it is not tallied).
        count(stat::FLOWS_FULL);
        return None;
    };
    let request = RequestKey { local_ip: local, remote_ip: remote, local_port: sport, remote_port: dport };
    if !tally(&request) {
        count(stat::UNTRACKED_EVENTS);
    }
    // SAFETY: FLOWS value pointer.
    add(unsafe { &raw mut (*agg).retransmissions }, 1);
    Some(())
}

/// One more SYN-ACK retransmission counted for `request`. False when SYNACK_TALLY had no room.
/// The add is atomic: the request's timer and a repeated SYN can retransmit on two CPUs at once.
#[inline(always)]
fn tally(request: &RequestKey) -> bool {
    if SYNACK_TALLY.get_ptr_mut(request).is_none() {
        // From the stack, not `&0`: a promoted constant may be merged with a global of the same
        // initial value that the daemon rewrites at load time (seen: the tally began at 1).
        let zero = 0u32;
        // EEXIST (another CPU inserted it first) is fine: look it up again.
        let _ = SYNACK_TALLY.insert(request, &zero, BPF_NOEXIST);
    }
    SYNACK_TALLY.get_ptr_mut(request).map(|n| add32(n, 1)).is_some()
}

/// The SYN-ACK retransmissions counted for `request` (0 if none), which is then forgotten: its
/// handshake completed.
#[inline(always)]
pub fn take_tally(request: &RequestKey) -> u32 {
    let Some(n) = SYNACK_TALLY.get_ptr(request) else { return 0 };
    // SAFETY: SYNACK_TALLY value pointer, read before the entry is removed.
    let n = unsafe { core::ptr::read_volatile(n) };
    let _ = SYNACK_TALLY.remove(request);
    n
}
