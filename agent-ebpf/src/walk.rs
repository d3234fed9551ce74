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

use agent_common::{
    fold::{fin_flags, payload},
    maps::{SOCK_ESTABLISHED, SOCK_FIN_SENT, SOCK_WALKED, SockCounters, stat},
};
use aya_ebpf::helpers::{
    bpf_probe_read_kernel,
    generated::{bpf_get_socket_cookie, bpf_skc_to_tcp_sock},
};
use core::ffi::c_void;

use crate::{
    flows::{flow, fold_counters, record},
    maps::{SOCKETS, count},
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

/// The iterator's context (`struct bpf_iter__tcp`): one socket of the namespace (listening,
/// established, time-wait or request socket) and its owner's uid.
#[repr(C)]
pub struct TcpIterCtx {
    meta: *mut c_void,
    sk_common: *mut u8,
    uid: u32,
}

#[inline(always)]
fn off(v: &'static u32) -> usize {
    // SAFETY: read of a load-time global; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// A field of the socket at a BTF offset.
#[inline(always)]
fn field<T>(sk: *mut u8, offset: usize) -> Option<T> {
    // SAFETY: a bounded read through the kernel's fault-tolerant copy; `sk` is the iterator's
    // socket, held (and locked) for the duration of this invocation.
    unsafe { bpf_probe_read_kernel(sk.wrapping_add(offset).cast::<T>()).ok() }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn flow_walk(ctx: *mut TcpIterCtx) -> i32 {
    // SAFETY: a context field at its fixed offset; the verifier types it from the iterator's BTF
    // prototype (null at the end of the walk).
    let sk = unsafe { (*ctx).sk_common };
    if !sk.is_null() {
        let _ = visit(sk);
    }
    0
}

#[inline(always)]
fn visit(sk: *mut u8) -> Option<()> {
    // SAFETY: the iterator's socket; the helper returns null unless it is a full TCP socket
    // (listening, time-wait and request sockets are skipped here, before any cookie is made).
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) };
    if tp.is_null() {
        return None;
    }
    // SAFETY: a full socket, as the helper checked.
    let cookie = unsafe { bpf_get_socket_cookie(tp.cast()) };
    // SAFETY: a SOCKETS value pointer; the socket is locked while the program runs.
    let st = unsafe { SOCKETS.get_ptr_mut(&cookie)?.as_mut() }?;
    // Established sockets tracked as walked (a socket tracked before its namespace was
    // registered keeps its per-segment callbacks, and folds from them).
    if st.flags & (SOCK_ESTABLISHED | SOCK_WALKED) != SOCK_ESTABLISHED | SOCK_WALKED {
        return None;
    }
    // Nothing moves a socket's counters but a segment in or out: an idle socket costs two reads.
    let (segs_out, segs_in): (u32, u32) = (field(sk, off(&TCP_OFF_SEGS_OUT))?, field(sk, off(&TCP_OFF_SEGS_IN))?);
    if segs_out == st.folded.segs_out && segs_in == st.folded.segs_in {
        return None;
    }
    let raw = SockCounters {
        bytes_acked: field(sk, off(&TCP_OFF_BYTES_ACKED))?,
        bytes_received: field(sk, off(&TCP_OFF_BYTES_RECEIVED))?,
        segs_out,
        segs_in,
        total_retrans: field(sk, off(&TCP_OFF_TOTAL_RETRANS))?,
        _pad: 0,
    };
    let state: u8 = field(sk, off(&TCP_OFF_STATE))?;
    let fins = fin_flags(state as u32);
    // snd_una and snd_nxt only matter once our FIN is out (was it acked?).
    let (una, nxt): (u32, u32) = if fins & SOCK_FIN_SENT != 0 {
        (field(sk, off(&TCP_OFF_SND_UNA))?, field(sk, off(&TCP_OFF_SND_NXT))?)
    } else {
        (0, 0)
    };
    let now = payload(&raw, st.flags | fins, una, nxt);
    let agg = flow(&st.key)?;
    let d = fold_counters(agg, &mut st.folded, &now);
    if d.segs_in != 0 {
        let srtt: u32 = field(sk, off(&TCP_OFF_SRTT_US))?;
        if srtt >> 3 != 0 {
            // SAFETY: FLOWS value pointer.
            record(unsafe { &raw mut (*agg).rtt_us }, (srtt >> 3) as u64);
        }
    }
    if d != SockCounters::default() {
        count(stat::EVENTS);
    }
    Some(())
}
