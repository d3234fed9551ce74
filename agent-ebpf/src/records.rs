//! Connection records into a ring per CPU (`agent_common::record`), read by the daemon through a
//! shared mapping of the two arrays below.

use agent_common::{
    maps::{FlowKey, SockCounters, stat},
    record::{ConnRecord, RingHead, SpillKey, has_room, spill_kind},
};
use aya_ebpf::{
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::maps::count;

/// `BPF_F_MMAPABLE`: the daemon maps the array's values into its memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The rings, one after the other: CPU `c`'s ring is entries `c * slots ..`. Sized by the daemon.
#[map(name = "RECORDS")]
pub static RECORDS: Array<ConnRecord> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Each CPU's ring positions.
#[map(name = "RECORD_HEADS")]
pub static RECORD_HEADS: Array<RingHead> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// `BPF_F_NO_PREALLOC`: the spill takes memory only while it holds records.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Records that found their ring full, of walked sockets whose baseline the daemon may hold
/// (`record::item::SNAPSHOT`), which the kernel therefore cannot fold exactly; the daemon takes
/// them out at each reading. Sized by the daemon (`--max-sockets`).
#[map(name = "RECORD_SPILL")]
pub static RECORD_SPILL: HashMap<SpillKey, ConnRecord> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// Where a spilled record is made (a record does not fit on the handlers' stack).
#[map(name = "RECORD_SCRATCH")]
static RECORD_SCRATCH: PerCpuArray<ConnRecord> = PerCpuArray::with_max_entries(1, 0);

/// Records per CPU (a power of two), set by the daemon; 0: no records, the programs fold every
/// event in the kernel.
#[unsafe(no_mangle)]
static RECORD_SLOTS: u64 = 0;

#[inline(always)]
fn slots() -> u64 {
    // SAFETY: read of a global the loader may have rewritten; volatile so it is not constant-folded.
    unsafe { core::ptr::read_volatile(&RECORD_SLOTS) }
}

/// Whether connection events go to the daemon as records.
#[inline(always)]
pub fn on() -> bool {
    slots() != 0
}

/// Write a record into this CPU's ring (`ConnRecord`'s fields, given one by one so that no
/// record is built on the stack, which the handlers' call chain has little of left; `what` is
/// `kind` and `flags` in one word, `when` `old_state` and `rtt`, as `pair` makes them). False when
/// records are off or the ring is full (counted in `stat::RING_FULL`): the caller folds the
/// event itself.
#[inline(always)]
pub fn push(cookie: u64, key: &FlowKey, counters: &SockCounters, what: u64, when: u64) -> bool {
    let slots = slots();
    if slots == 0 {
        return false;
    }
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(h) = RECORD_HEADS.get_ptr_mut(cpu) else {
        return false;
    };
    // SAFETY: `h` is this CPU's value of an array map, mapped for the program's run. The tail is
    // the daemon's (a plain load); the head is taken by an atomic add, since a program in
    // softirq can interrupt one in process context on this CPU (`RING_NESTING`). SeqCst: LLVM
    // lowers a relaxed fetch-add to an add that returns nothing (see `flows::add32`).
    let pos = unsafe {
        let head = core::ptr::read_volatile(&raw const (*h).head);
        let tail = core::ptr::read_volatile(&raw const (*h).tail);
        if !has_room(head, tail, slots) {
            count(stat::RING_FULL);
            return false;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*h).head, 1)
    };
    let index = (cpu as u64) * slots + (pos & (slots - 1));
    let Some(slot) = RECORDS.get_ptr_mut(index as u32) else {
        // Not with the sizes the daemon sets (possible CPUs x slots); the slot would stay
        // uncommitted and stop the daemon's reading of this ring, so it is never taken here.
        return false;
    };
    // SAFETY: `slot` is a whole record of the array, which no other writer holds (its position
    // was taken above) and the daemon does not read before its commit word, written last;
    // volatile keeps the stores in this order (and x86 keeps it for the other CPU).
    unsafe {
        fill(slot, cookie, key, counters, what, when);
        core::ptr::write_volatile(slot.cast::<u64>(), pos + 1);
    }
    true
}

/// A record that found its ring full, into `RECORD_SPILL` (`push`'s arguments; `kind` is the
/// record's kind, also in `what`). False when the spill is full too (counted in
/// `stat::SPILL_FULL`): the caller folds the event itself.
#[inline(always)]
pub fn spill(cookie: u64, key: &FlowKey, counters: &SockCounters, what: u64, when: u64) -> bool {
    let Some(rec) = RECORD_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: helper without arguments. Called again rather than passed from `push` (a BPF
    // function takes five arguments at most): the verifier inlines it on x86-64 (Linux 6.10 on)
    // as one per-CPU load, and this is the rare path.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let h = RECORD_HEADS.get_ptr_mut(cpu);
    // SAFETY: this CPU's value of an array map; the reading number is the daemon's (a plain
    // load). Without it (not with the sizes the daemon sets), 0: folded at the next reading.
    let reading = h.map_or(0, |h| unsafe { core::ptr::read_volatile(&raw const (*h).reading) });
    // SAFETY: this CPU's scratch record; the program is not interrupted by another run of
    // itself on this CPU between the fill and the insert (the kernel does not nest a program
    // in itself), and a nested other program does not use it.
    let done = unsafe {
        fill(rec, cookie, key, counters, what, when);
        let k = SpillKey { cookie, kind: spill_kind(what, reading) };
        RECORD_SPILL.insert(&k, &*rec, 0).is_ok()
    };
    match h {
        // SAFETY: as above; an atomic add, since a program in softirq can interrupt one in
        // process context on this CPU (as `push` takes the head). After the insert: a daemon
        // that sees the count sees the record (`RingHead::spilled`).
        Some(h) if done => unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*h).spilled, 1);
        },
        _ => {}
    }
    if !done {
        count(stat::SPILL_FULL);
    }
    done
}

/// Write a record's fields but its commit word (the offsets are `ConnRecord`'s, checked below).
///
/// # Safety
/// `rec` valid for the writes of a whole record.
#[inline(always)]
unsafe fn fill(rec: *mut ConnRecord, cookie: u64, key: &FlowKey, counters: &SockCounters, what: u64, when: u64) {
    // SAFETY: as the caller promises.
    unsafe {
        let w = rec.cast::<u64>();
        core::ptr::write_volatile(w.add(1), cookie);
        copy_words(w.add(2), (key as *const FlowKey).cast(), size_of::<FlowKey>() / 8);
        copy_words(w.add(7), (counters as *const SockCounters).cast(), size_of::<SockCounters>() / 8);
        core::ptr::write_volatile(w.add(11), what);
        core::ptr::write_volatile(w.add(12), when);
    }
}

/// Two 32-bit fields of a record in the one word they share (the first at the lower address).
#[inline(always)]
pub fn pair(first: u32, second: u32) -> u64 {
    first as u64 | (second as u64) << 32
}

/// Copy `n` words with volatile stores.
///
/// # Safety
/// `dst` and `src` valid for `n` aligned words.
#[inline(always)]
unsafe fn copy_words(dst: *mut u64, src: *const u64, n: usize) {
    let mut i = 0;
    while i < n {
        // SAFETY: as the caller promises.
        unsafe { core::ptr::write_volatile(dst.add(i), core::ptr::read(src.add(i))) };
        i += 1;
    }
}

const _: () = assert!(
    core::mem::offset_of!(ConnRecord, cookie) == 8
        && core::mem::offset_of!(ConnRecord, key) == 16
        && core::mem::offset_of!(ConnRecord, counters) == 56
        && core::mem::offset_of!(ConnRecord, kind) == 88
        && core::mem::offset_of!(ConnRecord, flags) == 92
        && core::mem::offset_of!(ConnRecord, old_state) == 96
        && core::mem::offset_of!(ConnRecord, rtt) == 100
        && size_of::<FlowKey>() == 40
        && size_of::<SockCounters>() == 32
);
