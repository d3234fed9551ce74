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

/// Start tracking the socket with state `init`. `None` (counted in `SOCKETS_FULL`) when
/// `--max-sockets` sockets are tracked already. A socket tracked already starts over from
/// `init`.
#[inline(always)]
pub fn track(ctx: &SockOpsContext, init: &SockState) -> Option<&'static mut SockState> {
    let cookie = ctx::cookie(ctx);
    let fresh = match SOCKETS.insert(&cookie, init, BPF_NOEXIST) {
        Ok(()) => true,
        // Tracked already (a second connect on one socket): it starts over.
        Err(e) if e == -EEXIST => false,
        Err(_) => {
            count(stat::SOCKETS_FULL);
            return None;
        }
    };
    // SAFETY: as in `get`.
    let st = SOCKETS.get_ptr_mut(&cookie).and_then(|p| unsafe { p.as_mut() })?;
    if fresh {
        count(stat::SOCKETS_INSERTED);
    } else {
        *st = *init;
    }
    Some(st)
}

/// Stop tracking the socket (counted in `SOCKETS_REMOVED`).
#[inline(always)]
pub fn forget(ctx: &SockOpsContext) {
    if SOCKETS.remove(&ctx::cookie(ctx)).is_ok() {
        count(stat::SOCKETS_REMOVED);
    }
}
