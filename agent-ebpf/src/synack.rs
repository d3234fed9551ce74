//! SYN-ACK retransmissions of the accepting side. They happen on request sockets, before a full
//! socket exists, so sock_ops never sees them; the `tcp:tcp_retransmit_synack` tracepoint fires
//! once per successful retransmission, exactly where the kernel counts TcpRetransSegs. Only ports
//! that a listener of the monitored cgroup listens on are counted.

use agent_common::maps::{Addr, ROLE_SERVER, flow_key, stat, v4_mapped};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    ctx::AF_INET,
    flows::{add, flow},
    maps::{LISTENERS, count},
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
fn off(v: &'static u32) -> usize {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(v) as usize }
}

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
    let l = LISTENERS.get_ptr(sport as u32)?;
    count(stat::EVENTS);
    let dport: u16 = read(ctx, off(&SYNACK_OFF_DPORT))?;
    let family: u16 = read(ctx, off(&SYNACK_OFF_FAMILY))?;
    let (local, remote): (Addr, Addr) = if family as u32 == AF_INET {
        (v4_mapped(read(ctx, off(&SYNACK_OFF_SADDR))?), v4_mapped(read(ctx, off(&SYNACK_OFF_DADDR))?))
    } else {
        (read(ctx, off(&SYNACK_OFF_SADDR_V6))?, read(ctx, off(&SYNACK_OFF_DADDR_V6))?)
    };
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
