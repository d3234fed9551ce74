//! Kernel side of flow-agent: a sock_ops program that follows every TCP socket of a cgroup and
//! folds what each socket does into per-flow aggregates, and a tracepoint for SYN-ACK
//! retransmissions (they happen before a full socket exists).
//!
//! Data path: socket callbacks -> `SOCKETS` (per-socket state by socket cookie) -> `FLOWS`
//! (per-flow-key cumulative counters) <- read by the daemon every tick. Work in userspace grows with
//! flows, not with connections. Every failed insert is counted in `STATS`.
#![no_std]
#![no_main]
// Atomic adds: the bpfel target has no compare-and-swap, so `AtomicU64::fetch_add` is not
// exposed, but the kernel's atomic add instruction is what the intrinsic lowers to.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod ctx;
mod flows;
mod maps;
mod records;
mod sock_ops;
mod sockets;
mod synack;
mod walk;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
