//! Per-socket state in a hash keyed by socket cookie, preallocated at `--max-sockets` entries:
//! tracking a socket takes an entry off the map's free list, with no allocation, accounting or
//! RCU free per connection (what connection setup cost most with socket-local storage). A socket
//! that does not fit is counted in `stat::SOCKETS_FULL`.

use agent_common::maps::{SockState, stat};
use aya_ebpf::programs::SockOpsContext;

use crate::{
    ctx,
    maps::{SOCKETS, count},
};

const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

/// The socket's state if it is tracked.
#[inline(always)]
pub fn get(ctx: &SockOpsContext) -> Option<&'static mut SockState> {
    let cookie = ctx::cookie(ctx);
    // SAFETY: a SOCKETS value pointer; callbacks of one socket run under its lock, and the
    // program does not keep the reference past this invocation.
    SOCKETS.get_ptr_mut(&cookie).and_then(|p| unsafe { p.as_mut() })
}

/// Start tracking the socket with state `init`, stored as given and not read back (the caller
/// has everything it needs in `init`). False (counted in `SOCKETS_FULL`) when `--max-sockets`
/// sockets are tracked already. A socket tracked already (a second connect on one socket) starts
/// over from `init`.
#[inline(always)]
pub fn track(ctx: &SockOpsContext, init: &SockState) -> bool {
    let cookie = ctx::cookie(ctx);
    match SOCKETS.insert(&cookie, init, BPF_NOEXIST) {
        Ok(()) => {
            count(stat::SOCKETS_INSERTED);
            true
        }
        // Replacing an entry takes no free one (the preallocated hash swaps in a spare).
        Err(e) if e == -EEXIST => SOCKETS.insert(&cookie, init, BPF_ANY).is_ok(),
        Err(_) => {
            count(stat::SOCKETS_FULL);
            false
        }
    }
}

/// Stop tracking the socket (counted in `SOCKETS_REMOVED`).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext) {
    if SOCKETS.remove(&ctx::cookie(ctx)).is_ok() {
        count(stat::SOCKETS_REMOVED);
    }
}
