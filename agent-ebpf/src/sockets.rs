//! Per-socket state in socket-local storage: no cookie and no hash lookup per callback, and the
//! kernel frees it with the socket. `--max-sockets` is enforced here with a global count of
//! tracked sockets, refused sockets counted in `stat::SOCKETS_FULL` as a full hash map was.

use agent_common::{
    fold::admit,
    maps::{SockState, stat},
};
use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    programs::SockOpsContext,
};
use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use crate::{
    ctx,
    maps::{LIVE_SOCKETS, SOCKETS, count},
};

/// Upper bound on tracked sockets (`--max-sockets`). Set by the daemon.
#[unsafe(no_mangle)]
static MAX_SOCKETS: u64 = 65_536;

#[inline(always)]
fn max_sockets() -> u64 {
    // SAFETY: read of a global the loader may have rewritten; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&MAX_SOCKETS) }
}

#[inline(always)]
fn map() -> *mut c_void {
    core::ptr::from_ref(&SOCKETS).cast_mut().cast()
}

/// Add `v` (wrapping) to the tracked-socket count; returns the count before. SeqCst: see
/// `flows::add32`.
#[inline(always)]
fn live_add(v: u64) -> Option<u64> {
    let p = LIVE_SOCKETS.get_ptr_mut(0)?;
    // SAFETY: the single slot of an array map, which stays mapped; other CPUs add to it too.
    Some(unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) })
}

/// The socket's state if it is tracked.
#[inline(always)]
pub fn get(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    let sk = ctx::sk(ctx);
    if sk.is_null() {
        return None;
    }
    // SAFETY: a full socket from the context and the program's own SK_STORAGE map.
    let p = unsafe { bpf_sk_storage_get(map(), sk, core::ptr::null_mut(), 0) }.cast::<SockState>();
    // SAFETY: this socket's own storage; callbacks of one socket run under its lock, and the
    // program does not keep the reference past this invocation.
    unsafe { p.as_mut() }
}

/// Start tracking the socket with state `init`, within the `--max-sockets` bound. `None` (counted
/// in `SOCKETS_FULL`) when that many sockets are tracked already or the kernel could not allocate
/// the storage. A socket tracked already starts over from `init`.
#[inline(always)]
pub fn track(ctx: &SockOpsContext, init: &SockState) -> Option<&'static mut SockState> {
    if let Some(st) = get(ctx) {
        *st = *init;
        return Some(st);
    }
    let sk = ctx::sk(ctx);
    if sk.is_null() {
        return None;
    }
    let before = live_add(1)?;
    if !admit(before, max_sockets()) {
        live_add(u64::MAX);
        count(stat::SOCKETS_FULL);
        return None;
    }
    let mut value = *init;
    // SAFETY: as in `get`; with F_CREATE the helper copies `value` into new storage.
    let p = unsafe { bpf_sk_storage_get(map(), sk, (&raw mut value).cast(), BPF_SK_STORAGE_GET_F_CREATE as u64) }
        .cast::<SockState>();
    // SAFETY: as in `get`.
    match unsafe { p.as_mut() } {
        Some(st) => {
            count(stat::SOCKETS_INSERTED);
            Some(st)
        }
        None => {
            live_add(u64::MAX);
            count(stat::SOCKETS_FULL);
            None
        }
    }
}

/// Stop tracking the socket (counted in `SOCKETS_REMOVED`).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext) {
    let sk = ctx::sk(ctx);
    if sk.is_null() {
        return;
    }
    // SAFETY: as in `get`.
    if unsafe { bpf_sk_storage_delete(map(), sk) } == 0 {
        live_add(u64::MAX);
        count(stat::SOCKETS_REMOVED);
    }
}
