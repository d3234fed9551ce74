//! Connection records (`agent_common::record`): read from the kernel's per-CPU rings, folded
//! into flows here, and added to the kernel's FLOWS at each reading.
//!
//! The sock_ops program writes a record at the establishment and the close of a socket of a
//! walked namespace rather than folding it into FLOWS itself: a hash operation entered with cold
//! caches costs it ~1 µs. The daemon reads the rings every `READ_EVERY` while they hold records
//! (the wait doubles after each reading that finds none, up to `READ_IDLE_MAX`: `next_read_wait`)
//! and at each window end, in the thread that runs the walk, so a record is read after the walk that made the socket's
//! entry (the attempt it saw, a restart's baseline) and before the window's counters are read.
//!
//! With records on, the walk keeps nothing in the kernel for the walked sockets without an entry:
//! it hands their counters to the daemon (`record::item::SNAPSHOT`), which keeps what it folded
//! of each (`Held`), folds what moved, and folds the socket's close against the same.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    os::fd::AsFd,
    time::Duration,
};

use agent_common::{
    fold::fold_step,
    maps::{FlowAgg, FlowKey, SOCK_FLOW_LOST, SOCK_RTO_EXPIRED, SockCounters, SockState},
    record::{ConnRecord, REC_ENTRY, RingHead, SpillKey, WalkItem, apply, apply_moved, item, kind},
};
use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData, MapError};
// Flows by key: a seeded hash, since peers choose addresses and ports. With the standard
// library's SipHash for both, a record's three hash operations took 67-80 ns, with these 15-20
// (`docs/tools/record_hash`).
use foldhash::fast::RandomState as FlowHasher;
// Sockets by cookie, a number the kernel counts up: a plain multiplicative hash.
use rustc_hash::FxBuildHasher as CookieHasher;

use crate::sys::{self, SharedMapping};

/// How often the daemon reads the rings between window ends while they hold records. At the
/// storm's rate (~55,000 records per second per CPU) a ring of the default 4,096 slots holds
/// ~75 ms.
pub const READ_EVERY: Duration = Duration::from_millis(50);

/// The longest wait between two readings of the rings: reached after readings that found none,
/// so that an agent with nothing to capture wakes ~3 times a second for them, not 20 (~0.4% of a
/// core on this machine: docs/performance.md, "Results, 2026-12-07 (twelfth)"). A burst that
/// comes during the wait may fill a ring: its records are then folded in the kernel or
/// spilled, exact, and counted in `agent_stats.ring_full`.
pub const READ_IDLE_MAX: Duration = Duration::from_millis(400);

/// The wait before the next reading of the rings, after one that waited `last` and took `read`
/// records: `READ_EVERY` while there are records, twice as long after each reading without,
/// up to `READ_IDLE_MAX`.
pub fn next_read_wait(last: Duration, read: usize) -> Duration {
    if read > 0 { READ_EVERY } else { (last * 2).clamp(READ_EVERY, READ_IDLE_MAX) }
}

/// The rings as mapped into the daemon: `cpus` rings of `slots` records and their heads. The
/// daemon folds each record where it lies, copying none (so its memory does not follow the size
/// of a burst), and gives a slot back (the ring's tail, which is how the programs know there is
/// room) once the record in it is folded.
///
/// Each ring's records are read up to two ends: `first`, where a first pass over all rings
/// stopped, and `end`, where a second one did (`scan`). Its records up to `folded` were folded
/// but for closes; those up to its tail are done.
pub struct Rings {
    heads: SharedMapping,
    records: SharedMapping,
    cpus: usize,
    slots: u64,
    tails: Vec<u64>,
    folded: Vec<u64>,
    first: Vec<u64>,
    end: Vec<u64>,
}

impl Rings {
    /// The rings of `cpus` CPUs with `slots` records each (a power of two), in mappings at least
    /// that big.
    pub fn new(heads: SharedMapping, records: SharedMapping, cpus: usize, slots: u64) -> Result<Rings, String> {
        let need = cpus * slots as usize * size_of::<ConnRecord>();
        if !slots.is_power_of_two() || records.len() < need || heads.len() < cpus * size_of::<RingHead>() {
            return Err(format!(
                "mapped {} bytes of rings and {} of heads for {cpus} CPUs of {slots} records",
                records.len(),
                heads.len()
            ));
        }
        // The maps were made for this run: every ring starts at position 0.
        let at_zero = vec![0; cpus];
        Ok(Rings {
            heads,
            records,
            cpus,
            slots,
            tails: at_zero.clone(),
            folded: at_zero.clone(),
            first: at_zero.clone(),
            end: at_zero,
        })
    }

    fn head(&self, cpu: usize) -> *mut RingHead {
        self.heads.as_ptr().cast::<RingHead>().wrapping_add(cpu)
    }

    fn ring(&self, cpu: usize) -> *const ConnRecord {
        self.records.as_ptr().cast::<ConnRecord>().wrapping_add(cpu * self.slots as usize)
    }

    /// Reading `reading` begins: the programs put its number in the keys of the records they
    /// spill from now on (`RingHead::reading`).
    fn begin_reading(&mut self, reading: u64) {
        for cpu in 0..self.cpus {
            // SAFETY: as in `scan`.
            unsafe { std::ptr::write_volatile(&raw mut (*self.head(cpu)).reading, reading) };
        }
        // Before any record is read: a close spilled with an earlier number was written before
        // this, so its establishment was committed before the rings are read.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Find where each ring's committed records end, twice over all rings (`first`, then
    /// `end`). Returns how many records the rings hold that were not folded yet.
    fn scan(&mut self) -> usize {
        let mut new = 0;
        for pass in [0, 1] {
            for cpu in 0..self.cpus {
                let from = if pass == 0 { self.folded[cpu] } else { self.first[cpu] };
                // SAFETY: `head(cpu)` and the ring's `slots` records are inside the mappings
                // (checked in `new`), which live as long as `self`.
                let to = unsafe { committed_end(self.head(cpu), self.ring(cpu), self.slots, from) };
                if pass == 0 {
                    self.first[cpu] = to;
                } else {
                    self.end[cpu] = to;
                    new += to.wrapping_sub(self.folded[cpu]) as usize;
                }
            }
        }
        new
    }

    /// The positions of ring `cpu`'s records not folded yet, up to `end`.
    fn unfolded(&self, cpu: usize) -> std::ops::Range<u64> {
        self.folded[cpu]..self.end[cpu]
    }

    /// The records the programs put into the spill so far, all CPUs (`RingHead::spilled`).
    fn spilled(&self) -> u64 {
        let n = (0..self.cpus).fold(0u64, |n, cpu| {
            // SAFETY: as in `scan`; the count is the programs' (a plain load of an aligned word).
            n.wrapping_add(unsafe { std::ptr::read_volatile(&raw const (*self.head(cpu)).spilled) })
        });
        // The spill is swept after: every record counted here is in it by then.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        n
    }

    /// Every record up to `end` is folded, but for closes.
    fn all_folded(&mut self) {
        self.folded.copy_from_slice(&self.end);
    }

    /// The positions of ring `cpu`'s records to be done now: up to `first`, or `end` (`all`).
    fn to_finish(&self, cpu: usize, all: bool) -> std::ops::Range<u64> {
        self.tails[cpu]..if all { self.end[cpu] } else { self.first[cpu] }
    }

    /// The record at `pos` of ring `cpu`, a position `scan` found committed and not given back.
    fn record(&self, cpu: usize, pos: u64) -> ConnRecord {
        // SAFETY: as in `scan`; the slot's record was committed and stays until its tail passes.
        unsafe { record_at(self.ring(cpu), self.slots, pos) }
    }

    /// Give back every slot up to `first`, or `end` (`all`): their records are done.
    fn give_back(&mut self, all: bool) {
        for cpu in 0..self.cpus {
            let tail = if all { self.end[cpu] } else { self.first[cpu] };
            self.tails[cpu] = tail;
            // SAFETY: as in `scan`.
            unsafe { publish_tail(self.head(cpu), tail) };
        }
    }
}

/// Where ring `ring`'s committed records end, from position `from` (committed, or the tail): at
/// its head, or at the first record not committed yet (a program is writing it).
///
/// # Safety
/// `head` must point to the ring's `RingHead` and `ring` to its `slots` records, both valid for
/// reads and shared only with the kernel's writers of this protocol.
unsafe fn committed_end(head: *const RingHead, ring: *const ConnRecord, slots: u64, mut from: u64) -> u64 {
    use std::sync::atomic::{Ordering, fence};
    // SAFETY: as the caller promises.
    unsafe {
        let end = std::ptr::read_volatile(&raw const (*head).head);
        fence(Ordering::Acquire);
        while from != end {
            let slot = ring.add((from & (slots - 1)) as usize);
            let commit = std::ptr::read_volatile(&raw const (*slot).commit);
            // The record's other fields are read after its commit (`record_at`).
            fence(Ordering::Acquire);
            if commit != from.wrapping_add(1) {
                break;
            }
            from = from.wrapping_add(1);
        }
    }
    from
}

/// The record at position `pos` of a ring of `slots` records.
///
/// # Safety
/// As `committed_end`'s; `pos` must be a committed position not given back yet.
unsafe fn record_at(ring: *const ConnRecord, slots: u64, pos: u64) -> ConnRecord {
    // SAFETY: as the caller promises.
    unsafe { std::ptr::read_volatile(ring.add((pos & (slots - 1)) as usize)) }
}

/// Give the slots before `tail` back to the ring's writers.
///
/// # Safety
/// `head` must point to the ring's `RingHead`, valid for writes.
unsafe fn publish_tail(head: *mut RingHead, tail: u64) {
    use std::sync::atomic::{Ordering, fence};
    // The slots' records were read before: only then may they be written again.
    fence(Ordering::Release);
    // SAFETY: as the caller promises.
    unsafe { std::ptr::write_volatile(&raw mut (*head).tail, tail) };
}

/// Flows as records make them, cumulative like the kernel's FLOWS (the reading adds the two), at
/// most `max_flows` keys (`--max-flows`, as FLOWS). A record whose key finds no room is counted
/// in `flows_full`, once per socket (its close is not counted again once its establishment was).
pub struct RecordFlows {
    flows: HashMap<FlowKey, FlowAgg, FlowHasher>,
    max_flows: usize,
    /// Sockets whose establishment found no room, until their close.
    lost: HashSet<u64, CookieHasher>,
    max_lost: usize,
    flows_full: u64,
}

impl RecordFlows {
    pub fn new(max_flows: usize, max_sockets: usize) -> RecordFlows {
        RecordFlows {
            flows: HashMap::default(),
            max_flows,
            lost: HashSet::default(),
            max_lost: max_sockets,
            flows_full: 0,
        }
    }

    /// Fold what a walked socket moved (`d`, with its smoothed RTT) into its flow; a socket whose
    /// key finds no room is counted once in `flows_full`, as a record's.
    pub fn fold_moved(&mut self, cookie: u64, key: &FlowKey, d: &SockCounters, srtt_us: u32) {
        match self.flow_for(key) {
            Some(f) => apply_moved(d, srtt_us, f),
            None => {
                if !self.lost.contains(&cookie) {
                    self.flows_full += 1;
                    if self.lost.len() < self.max_lost {
                        self.lost.insert(cookie);
                    }
                }
            }
        }
    }

    /// Fold a record, with its socket's entry if it had one.
    pub fn fold(&mut self, rec: &ConnRecord, entry: Option<&SockState>) {
        let was_lost = rec.kind == kind::CLOSED && self.lost.remove(&rec.cookie);
        match self.flow_for(&rec.key) {
            Some(f) => apply(rec, entry, f),
            None => {
                if !was_lost && entry.is_none_or(|e| e.flags & SOCK_FLOW_LOST == 0) {
                    self.flows_full += 1;
                }
                // Bounded: a socket whose close never comes as a record (its ring was full) stays.
                if rec.kind == kind::ESTABLISHED && self.lost.len() < self.max_lost {
                    self.lost.insert(rec.cookie);
                }
            }
        }
    }

    /// The flow of `key`, made if there is room for it; `None` if there is not.
    fn flow_for(&mut self, key: &FlowKey) -> Option<&mut FlowAgg> {
        entry_within(&mut self.flows, *key, self.max_flows, FlowAgg::default)
    }

    /// Records that found no room, in all (`stat::FLOWS_FULL`).
    pub fn flows_full(&self) -> u64 {
        self.flows_full
    }

    /// Add these flows to a reading of the kernel's.
    pub fn add_to(&self, flows: &mut Vec<(FlowKey, FlowAgg)>) {
        if self.flows.is_empty() {
            return;
        }
        let mut mine: HashMap<&FlowKey, &FlowAgg, FlowHasher> = self.flows.iter().collect();
        for (k, v) in flows.iter_mut() {
            if let Some(m) = mine.remove(k) {
                *v = sum(v, m);
            }
        }
        flows.extend(mine.into_iter().map(|(k, v)| (*k, *v)));
    }

    /// Take a key out (an idle flow evicted): what it held.
    pub fn remove(&mut self, key: &FlowKey) -> Option<FlowAgg> {
        self.flows.remove(key)
    }
}

/// The value of `key` in `map`, made with `make` if the map holds fewer than `max` keys; `None`
/// if it does not hold `key` and has no room for it (the caller counts the refusal).
fn entry_within<K, V, S>(map: &mut HashMap<K, V, S>, key: K, max: usize, make: impl FnOnce() -> V) -> Option<&mut V>
where
    K: Eq + std::hash::Hash,
    S: std::hash::BuildHasher,
{
    let room = map.len() < max;
    match map.entry(key) {
        Entry::Occupied(e) => Some(e.into_mut()),
        Entry::Vacant(e) if room => Some(e.insert(make())),
        Entry::Vacant(_) => None,
    }
}

/// Spilled records taken at a time (`Records::take_spilled`): 36 KiB of buffers.
const SPILL_BATCH: usize = 256;

/// What a sweep of the spill did: the records it folded and took out, and those it left there
/// (not due yet, or that it could not take out).
#[derive(Debug, Default, Clone, Copy)]
struct Swept {
    taken: usize,
    left: usize,
}

/// Whether a reading must sweep the spill: the programs spilled records since the last sweep
/// (`spilled`, the rings' `RingHead::spilled` summed now, against `seen` then), or that sweep
/// left some. A sweep visits every bucket of the hash map, empty or not (65,536 at the default
/// `--max-sockets`); sweeping at every reading took a fifth of the daemon's CPU in the storm.
fn spill_pending(spilled: u64, seen: u64, left: usize) -> bool {
    spilled != seen || left != 0
}

/// Whether a spilled record is to be folded now, at reading `reading`, by the sweep of closes
/// (`closes`) or the one of the rest, which comes first. A close spilled during this reading
/// waits for the next (unless it is the last, `all`): its establishment may have been written
/// after the rings were read, as a second pass's close's may.
fn spill_due(k: &SpillKey, closes: bool, all: bool, reading: u64) -> bool {
    let close = k.record_kind() == kind::CLOSED;
    close == closes && (!close || all || !k.spilled_during(reading))
}

/// The fewest cookies in `Records::entries` at which those whose entry has gone are looked for.
const ENTRIES_CHECK_MIN: usize = 1024;

/// Where the next look for gone entries comes, after one that left `live` cookies: at twice as
/// many, so that the cookies left by closes folded in the kernel (a full ring) take at most
/// about as much memory as the live ones, and the lookups (one system call per cookie) cost
/// O(1) per cookie added; at least `ENTRIES_CHECK_MIN`, at most `max` (SOCKETS' size) if that
/// is more.
fn next_entries_check(live: usize, max: usize) -> usize {
    live.saturating_mul(2).clamp(ENTRIES_CHECK_MIN, max.max(ENTRIES_CHECK_MIN))
}

/// What a close is folded against: the socket's SOCKETS entry, the daemon's `Held`, or both. A
/// held snapshot is what the daemon folded, so it is the baseline; the flags of both count.
fn with_held(entry: Option<SockState>, held: Option<Held>, key: &FlowKey) -> Option<SockState> {
    match (entry, held) {
        (e, None) => e,
        (Some(mut e), Some(h)) => {
            e.flags |= h.flags;
            if h.shipped {
                e.folded = h.folded;
            }
            Some(e)
        }
        (None, Some(h)) => Some(SockState { key: *key, folded: h.folded, flags: h.flags, ..SockState::default() }),
    }
}

/// Two cumulative readings of one flow added up (the counters wrap as the kernel's do).
pub fn sum(a: &FlowAgg, b: &FlowAgg) -> FlowAgg {
    let mut s = *a;
    let w = |x: &mut u64, y: u64| *x = x.wrapping_add(y);
    w(&mut s.attempted, b.attempted);
    w(&mut s.established, b.established);
    w(&mut s.closed, b.closed);
    w(&mut s.failed, b.failed);
    w(&mut s.refused, b.refused);
    w(&mut s.timed_out, b.timed_out);
    w(&mut s.reset, b.reset);
    w(&mut s.bytes_sent, b.bytes_sent);
    w(&mut s.bytes_received, b.bytes_received);
    w(&mut s.segments_sent, b.segments_sent);
    w(&mut s.segments_received, b.segments_received);
    w(&mut s.retransmissions, b.retransmissions);
    w(&mut s.timeouts, b.timeouts);
    for (h, o) in [(&mut s.rtt_us, &b.rtt_us), (&mut s.handshake_us, &b.handshake_us)] {
        w(&mut h.sum, o.sum);
        for (x, y) in h.buckets.iter_mut().zip(o.buckets.iter()) {
            *x = x.wrapping_add(*y);
        }
    }
    s
}

/// What the daemon keeps of a walked socket without a SOCKETS entry: what it folded of it (from
/// the walk's snapshots), and its flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Held {
    folded: SockCounters,
    flags: u32,
    /// Whether `folded` is from a snapshot (not only a flag from a record).
    shipped: bool,
    /// The full walk that last saw it (`HeldSockets::full_walks`).
    seen: u32,
}

/// The walked sockets the walk hands the daemon (`record::item::SNAPSHOT`), by cookie, until
/// their close's record; at most `max` (`--max-sockets`, as SOCKETS), so the daemon's memory is
/// bounded whatever the number of open sockets. A socket that finds no room is not folded: its
/// close folds it whole (nothing was folded of it), as a walked socket that found SOCKETS full
/// is, and each snapshot so refused is counted in `full` (`stat::SOCKETS_FULL`).
struct HeldSockets {
    held: HashMap<u64, Held, CookieHasher>,
    max: usize,
    /// Snapshots that found no room, in all.
    full: u64,
    /// Full walks noted so far: a held socket no full walk saw for two of them has gone without
    /// a record (its close found the ring and the spill full, `stat::SPILL_FULL`).
    full_walks: u32,
}

impl HeldSockets {
    fn new(max: usize) -> HeldSockets {
        HeldSockets { held: HashMap::default(), max, full: 0, full_walks: 0 }
    }

    /// A walk begins to be noted (`full`: it visited every socket).
    fn walk(&mut self, full: bool) {
        if full {
            self.full_walks = self.full_walks.wrapping_add(1);
        }
    }

    /// A snapshot of a walked socket from the walk being noted: what moved since the last, or
    /// `None` when the socket is not held and there is no room to (counted).
    fn snapshot(&mut self, it: &WalkItem, full: bool) -> Option<SockCounters> {
        let seen = self.full_walks;
        let Some(h) = entry_within(&mut self.held, it.cookie, self.max, || Held { seen, ..Held::default() }) else {
            self.full = self.full.wrapping_add(1);
            return None;
        };
        let (d, folded) = fold_step(&h.folded, &it.counters);
        h.folded = folded;
        h.flags |= it.flags;
        h.shipped = true;
        if full {
            h.seen = seen;
        }
        Some(d)
    }

    /// The walk being noted was full: drop the sockets neither it nor the full walk before saw.
    fn prune(&mut self) {
        let now = self.full_walks;
        self.held.retain(|_, h| now.wrapping_sub(h.seen) < 2);
    }

    /// The socket's retransmission timer gave up (a record said so): its close is to know. Kept
    /// even beyond `max`: such a socket is about to close (or is dropped by `prune`).
    fn rto_expired(&mut self, cookie: u64) {
        let seen = self.full_walks;
        self.held.entry(cookie).or_insert(Held { seen, ..Held::default() }).flags |= SOCK_RTO_EXPIRED;
    }

    /// The socket closed: what was kept of it.
    fn close(&mut self, cookie: u64) -> Option<Held> {
        self.held.remove(&cookie)
    }
}

/// The rings, the flows they make, and the SOCKETS map, whose entries records may refer to.
pub struct Records {
    rings: Rings,
    flows: RecordFlows,
    sockets: BpfHashMap<MapData, u64, SockState>,
    /// Records that found their ring full (`record::SpillKey`), taken out at each reading.
    spill: BpfHashMap<MapData, SpillKey, ConnRecord>,
    /// Walked sockets the walk hands the daemon.
    held: HeldSockets,
    /// Cookies of walked sockets the walk gave a SOCKETS entry (its output, `note_walk`),
    /// until their close's record. The program cannot tell those from the others without a
    /// lookup; sockets that got theirs from a callback say so themselves (`REC_ENTRY`).
    entries: HashSet<u64, CookieHasher>,
    /// `entries` beyond which the cookies whose entry has gone (their close folded in the
    /// kernel, when the ring was full) are looked for and dropped (`next_entries_check`).
    entries_check_at: usize,
    /// The most `entries_check_at` can be: SOCKETS' size.
    max_entries: usize,
    /// The readings so far (`RingHead::reading`).
    reading: u64,
    /// Buffers of `take_spilled`, `SPILL_BATCH` long.
    spill_keys: Vec<SpillKey>,
    spill_values: Vec<ConnRecord>,
    spill_done: Vec<SpillKey>,
    /// The rings' `RingHead::spilled` summed when the spill was last swept, and how many records
    /// that sweep left in it (`spill_pending`).
    spill_seen: u64,
    spill_left: usize,
    /// Whether a failed batch reading of the spill was logged (once is enough).
    batch_failed: bool,
    /// Whether a failed lookup of an entry was logged (once is enough).
    lookup_failed: bool,
    /// Set by `finish`.
    finishing: bool,
    /// What `log_growth` logged last.
    room: [usize; 4],
}

impl Records {
    pub fn new(
        rings: Rings,
        flows: RecordFlows,
        sockets: BpfHashMap<MapData, u64, SockState>,
        spill: BpfHashMap<MapData, SpillKey, ConnRecord>,
        max_sockets: usize,
    ) -> Records {
        Records {
            rings,
            flows,
            sockets,
            spill,
            held: HeldSockets::new(max_sockets),
            entries: HashSet::default(),
            entries_check_at: ENTRIES_CHECK_MIN,
            max_entries: max_sockets,
            reading: 0,
            spill_keys: vec![SpillKey::default(); SPILL_BATCH],
            spill_values: vec![ConnRecord::default(); SPILL_BATCH],
            spill_done: Vec::with_capacity(SPILL_BATCH),
            spill_seen: 0,
            spill_left: 0,
            batch_failed: false,
            lookup_failed: false,
            finishing: false,
            room: [0; 4],
        }
    }

    /// What a walk wrote (`full`: it visited every socket): the walked sockets it gave a SOCKETS
    /// entry, whose records are to look it up, and those it handed over with their counters,
    /// whose moves are folded now.
    pub fn note_walk(&mut self, items: impl IntoIterator<Item = WalkItem>, full: bool) {
        self.held.walk(full);
        for it in items {
            match it.kind {
                item::ENTRY => {
                    self.entries.insert(it.cookie);
                }
                item::SNAPSHOT => {
                    if let Some(d) = self.held.snapshot(&it, full) {
                        self.flows.fold_moved(it.cookie, &it.key, &d, it.srtt_us);
                    }
                }
                _ => {}
            }
        }
        if full {
            self.held.prune();
            self.log_growth();
        }
        if self.entries.len() > self.entries_check_at {
            let sockets = &self.sockets;
            self.entries.retain(|c| !matches!(sockets.get(c, 0), Err(MapError::KeyNotFound)));
            self.entries_check_at = next_entries_check(self.entries.len(), self.max_entries);
            tracing::debug!(
                entries = self.entries.len(),
                "dropped the cookies of sockets folded in the kernel at their close"
            );
        }
    }

    /// Read the rings and fold what they hold. A record of a socket that may have a SOCKETS entry
    /// (the walk made one, or the record says so: `REC_ENTRY`) gets it looked up, and at the
    /// close deleted: the close was the last of the socket, and the entry is the daemon's to
    /// free from then on.
    ///
    /// A socket's establishment and close may be in the rings of two CPUs, and a close must be
    /// folded after its establishment (which may need the entry the close deletes, and says
    /// whether its flow was lost). So the rings are read twice (`Rings::scan`): a record read in
    /// the first pass was written after every record written before it was committed, and
    /// those are all read by the end of the second. Establishments of both passes are folded,
    /// then the spill's, then closes of the first pass (and those left from the last reading)
    /// and the spill's closes of earlier readings. The second's closes stay in the rings, and
    /// the spill's of this reading in the spill, for the next reading, unless this is the last
    /// (`finish`). Returns how many records it took.
    pub fn read(&mut self) -> usize {
        let all = self.finishing;
        self.reading = self.reading.wrapping_add(1);
        self.rings.begin_reading(self.reading);
        let mut taken = self.rings.scan();
        for cpu in 0..self.rings.cpus {
            for pos in self.rings.unfolded(cpu) {
                let rec = self.rings.record(cpu, pos);
                if rec.kind != kind::CLOSED {
                    self.fold(&rec);
                }
            }
        }
        self.rings.all_folded();
        // Read after the rings: a record spilled before any record folded here is counted by now.
        let spilled = self.rings.spilled();
        if spill_pending(spilled, self.spill_seen, self.spill_left) {
            self.spill_seen = spilled;
            taken += self.take_spilled(false, all).taken;
            let closes = self.take_spilled(true, all);
            taken += closes.taken;
            self.spill_left = closes.left;
        }
        for cpu in 0..self.rings.cpus {
            for pos in self.rings.to_finish(cpu, all) {
                let rec = self.rings.record(cpu, pos);
                if rec.kind == kind::CLOSED {
                    self.fold(&rec);
                }
            }
        }
        self.rings.give_back(all);
        taken
    }

    /// From now on every record read is folded at once (the agent is stopping: no later reading
    /// would fold what is held).
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    fn fold(&mut self, rec: &ConnRecord) {
        if rec.kind == kind::RTO_EXPIRED {
            // The close is to know; the timeout itself the kernel counted.
            self.held.rto_expired(rec.cookie);
            return;
        }
        let walk_entry = if rec.kind == kind::CLOSED {
            self.entries.remove(&rec.cookie)
        } else {
            self.entries.contains(&rec.cookie)
        };
        let entry = if walk_entry || rec.flags & REC_ENTRY != 0 { self.entry(rec) } else { None };
        let held = if rec.kind == kind::CLOSED { self.held.close(rec.cookie) } else { None };
        let entry = with_held(entry, held, &rec.key);
        self.flows.fold(rec, entry.as_ref());
    }

    fn entry(&mut self, rec: &ConnRecord) -> Option<SockState> {
        match self.sockets.get(&rec.cookie, 0) {
            Ok(st) => {
                if rec.kind == kind::CLOSED {
                    match self.sockets.remove(&rec.cookie) {
                        Ok(()) | Err(MapError::KeyNotFound) => {}
                        Err(e) => self.log_failure(&e),
                    }
                }
                Some(st)
            }
            Err(MapError::KeyNotFound) => None,
            Err(e) => {
                self.log_failure(&e);
                None
            }
        }
    }

    /// Fold and take out of RECORD_SPILL the records the programs spilled (their rings were
    /// full) that are due (`spill_due`): its establishments and expired RTOs (`closes` false), or
    /// its closes. A batch of `SPILL_BATCH` at a time, in buffers made once. Returns how many.
    ///
    /// A reading sweeps the spill twice (establishments, then closes), and a close spilled
    /// during it is left there until the next reading's second sweep: the kernel copies such a
    /// close out three times before it is folded. Kept so: holding the due closes of the first
    /// sweep in the daemon instead is the memory that followed the size of a burst (the
    /// thirteenth's soak, docs/performance.md), and spills come only from full rings (~9,500
    /// records at a window end of the storm at most seen: ~1.3 MB per copy).
    fn take_spilled(&mut self, closes: bool, all: bool) -> Swept {
        let reading = self.reading;
        let mut cursor = sys::BatchCursor::default();
        let mut swept = Swept::default();
        loop {
            let fd = self.spill.map().fd().as_fd();
            let (n, more) = match sys::map_lookup_batch(fd, &mut cursor, &mut self.spill_keys, &mut self.spill_values) {
                Ok(r) => r,
                Err(e) => {
                    if !std::mem::replace(&mut self.batch_failed, true) {
                        tracing::warn!(
                            "reading spilled connection records by batch (eBPF map RECORD_SPILL): {e}; read one by one \
                             (logged once)"
                        );
                    }
                    let rest = self.take_spilled_one_by_one(closes, all);
                    return Swept { taken: swept.taken + rest.taken, left: swept.left + rest.left };
                }
            };
            self.spill_done.clear();
            for i in 0..n {
                let (k, rec) = (self.spill_keys[i], self.spill_values[i]);
                if spill_due(&k, closes, all, reading) {
                    self.fold(&rec);
                    self.spill_done.push(k);
                }
            }
            swept.taken += self.spill_done.len();
            swept.left += n - self.spill_done.len();
            if let Err(e) = sys::map_delete_batch(self.spill.map().fd().as_fd(), &self.spill_done) {
                tracing::warn!("taking spilled connection records out (eBPF map RECORD_SPILL): {e}");
                // They may still be there: the next reading sweeps again.
                swept.left += self.spill_done.len();
            }
            if !more {
                return swept;
            }
        }
    }

    /// `take_spilled` a record at a time (a batch could not be read).
    fn take_spilled_one_by_one(&mut self, closes: bool, all: bool) -> Swept {
        let reading = self.reading;
        let mut swept = Swept::default();
        let keys: Vec<SpillKey> = self
            .spill
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let due = spill_due(k, closes, all, reading);
                swept.left += usize::from(!due);
                due
            })
            .collect();
        for k in keys {
            match self.spill.get(&k, 0) {
                Ok(rec) => {
                    self.fold(&rec);
                    swept.taken += 1;
                    if let Err(e) = self.spill.remove(&k) {
                        tracing::warn!("taking a spilled connection record out (eBPF map RECORD_SPILL): {e}");
                        swept.left += 1;
                    }
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    tracing::warn!("reading a spilled connection record (eBPF map RECORD_SPILL): {e}");
                    swept.left += 1;
                }
            }
        }
        swept
    }

    fn log_failure(&mut self, e: &MapError) {
        if !std::mem::replace(&mut self.lookup_failed, true) {
            tracing::error!(
                "the SOCKETS entry of a closed walked socket (eBPF map SOCKETS): {e}; its close is counted as if it \
                 had none (bytes the walk folded before may count twice)"
            );
        }
    }

    /// Log (debug) the room the daemon's tables take when it changed since the last call (a
    /// table keeps the room of its largest size until it is shrunk).
    fn log_growth(&mut self) {
        let room = [
            self.held.held.capacity() * size_of::<(u64, Held)>(),
            self.entries.capacity() * size_of::<u64>(),
            self.flows.flows.capacity() * size_of::<(FlowKey, FlowAgg)>(),
            self.flows.lost.capacity() * size_of::<u64>(),
        ];
        if room != self.room {
            tracing::debug!(
                held = room[0],
                entries = room[1],
                flows = room[2],
                lost = room[3],
                held_now = self.held.held.len(),
                entries_now = self.entries.len(),
                "connection records: bytes of room in the daemon's tables"
            );
            self.room = room;
        }
    }

    /// Snapshots of walked sockets the daemon had no room to hold (`stat::SOCKETS_FULL`).
    pub fn sockets_full(&self) -> u64 {
        self.held.full
    }

    pub fn flows(&self) -> &RecordFlows {
        &self.flows
    }

    pub fn flows_mut(&mut self) -> &mut RecordFlows {
        &mut self.flows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::{
        fold::tcp_state,
        maps::{SOCK_ATTEMPTED, SOCK_CLIENT, SOCK_ESTABLISHED, SOCK_WALKED, SockCounters},
    };

    /// A ring in ordinary memory, written as the kernel writes it.
    struct FakeRing {
        head: Box<RingHead>,
        slots: Vec<ConnRecord>,
    }

    impl FakeRing {
        fn new(slots: usize) -> FakeRing {
            FakeRing { head: Box::default(), slots: vec![ConnRecord::default(); slots] }
        }

        /// Take a position; commit it now or leave it being written.
        fn write(&mut self, cookie: u64, commit: bool) {
            let pos = self.head.head;
            self.head.head += 1;
            let n = self.slots.len() as u64;
            let slot = &mut self.slots[(pos & (n - 1)) as usize];
            slot.cookie = cookie;
            slot.commit = if commit { pos + 1 } else { slot.commit };
        }

        fn commit(&mut self, pos: u64) {
            let n = self.slots.len() as u64;
            self.slots[(pos & (n - 1)) as usize].commit = pos + 1;
        }

        /// Where its committed records end from `from`, and their cookies.
        fn read(&mut self, from: u64) -> (u64, Vec<u64>) {
            let n = self.slots.len() as u64;
            let ring = self.slots.as_ptr();
            // SAFETY: the head and the slots are owned by this test value; the positions read
            // are committed.
            unsafe {
                let end = committed_end(&*self.head, ring, n, from);
                (end, (from..end).map(|p| record_at(ring, n, p).cookie).collect())
            }
        }

        fn give_back(&mut self, tail: u64) {
            // SAFETY: the head is owned by this test value.
            unsafe { publish_tail(&mut *self.head, tail) }
        }
    }

    #[test]
    fn a_ring_is_read_in_order_up_to_a_record_not_committed_yet() {
        let mut r = FakeRing::new(4);
        r.write(10, true);
        r.write(11, false);
        r.write(12, true);
        assert_eq!(r.read(0), (1, vec![10]), "stops at the record being written");
        r.commit(1);
        assert_eq!(r.read(1), (3, vec![11, 12]));
        assert_eq!(r.read(0), (3, vec![10, 11, 12]), "a record stays until its slot is given back");
        r.give_back(3);
        assert_eq!(r.head.tail, 3, "the tail is published");
    }

    #[test]
    fn a_slot_of_an_earlier_lap_is_not_read_as_new() {
        let mut r = FakeRing::new(2);
        r.write(1, true);
        r.write(2, true);
        assert_eq!(r.read(0), (2, vec![1, 2]));
        r.give_back(2);
        r.write(3, true);
        r.write(4, false);
        assert_eq!(r.read(2), (3, vec![3]), "slot 1 still holds lap 0's commit");
    }

    fn key(port: u16) -> FlowKey {
        FlowKey { target_port: port, ..Default::default() }
    }

    fn rec(kind: u32, cookie: u64, port: u16) -> ConnRecord {
        let flags = SOCK_CLIENT | SOCK_WALKED | if kind == kind::CLOSED { SOCK_ESTABLISHED } else { 0 };
        ConnRecord {
            kind,
            cookie,
            key: key(port),
            flags,
            old_state: tcp_state::FIN_WAIT2,
            counters: SockCounters { bytes_acked: 5, ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn a_socket_whose_flow_finds_no_room_is_counted_once() {
        let mut f = RecordFlows::new(1, 100);
        f.fold(&rec(kind::ESTABLISHED, 1, 80), None);
        f.fold(&rec(kind::ESTABLISHED, 2, 81), None);
        f.fold(&rec(kind::CLOSED, 2, 81), None);
        f.fold(&rec(kind::CLOSED, 3, 82), None);
        assert_eq!(f.flows_full(), 2, "socket 2 once, socket 3 once");
        f.fold(&rec(kind::CLOSED, 1, 80), None);
        let mut flows = Vec::new();
        f.add_to(&mut flows);
        assert_eq!(flows.len(), 1);
        assert_eq!(
            (flows[0].1.attempted, flows[0].1.established, flows[0].1.closed, flows[0].1.bytes_sent),
            (1, 1, 1, 5)
        );
    }

    #[test]
    fn record_flows_add_to_the_kernels_and_leave_with_an_eviction() {
        let mut f = RecordFlows::new(10, 10);
        f.fold(&rec(kind::CLOSED, 1, 80), None);
        f.fold(&rec(kind::CLOSED, 2, 81), None);
        let kernel = FlowAgg { bytes_sent: 100, closed: 2, ..Default::default() };
        let mut flows = vec![(key(80), kernel)];
        f.add_to(&mut flows);
        flows.sort_by_key(|(k, _)| k.target_port);
        assert_eq!(flows.len(), 2);
        assert_eq!((flows[0].1.bytes_sent, flows[0].1.closed), (105, 3));
        assert_eq!((flows[1].1.bytes_sent, flows[1].1.closed), (5, 1));
        assert_eq!(f.remove(&key(81)).map(|a| a.bytes_sent), Some(5));
        assert!(f.remove(&key(81)).is_none());
    }

    fn snap(cookie: u64, port: u16, acked: u64, segs_in: u32) -> WalkItem {
        WalkItem {
            cookie,
            key: key(port),
            counters: SockCounters { bytes_acked: acked, segs_in, ..Default::default() },
            kind: item::SNAPSHOT,
            flags: SOCK_CLIENT | SOCK_WALKED | SOCK_ESTABLISHED,
            srtt_us: 100,
            _pad: 0,
        }
    }

    #[test]
    fn a_held_socket_is_folded_by_what_moved_and_closed_against_its_last_snapshot() {
        let mut held = HeldSockets::new(10);
        let mut f = RecordFlows::new(10, 10);
        for (acked, segs_in) in [(100, 2), (100, 2), (250, 5)] {
            held.walk(false);
            let it = snap(1, 80, acked, segs_in);
            let d = held.snapshot(&it, false).unwrap();
            f.fold_moved(1, &it.key, &d, it.srtt_us);
        }
        let mut close = rec(kind::CLOSED, 1, 80);
        close.counters = SockCounters { bytes_acked: 300, segs_in: 6, ..Default::default() };
        close.rtt = 90;
        let entry = with_held(None, held.close(1), &close.key);
        f.fold(&close, entry.as_ref());
        assert!(held.close(1).is_none(), "a close ends what is held");
        let mut flows = Vec::new();
        f.add_to(&mut flows);
        let a = &flows[0].1;
        assert_eq!((a.bytes_sent, a.segments_received, a.closed), (300, 6, 1));
        assert_eq!(a.rtt_us.sum, 100 + 100 + 90, "a sample per fold that saw segments come in");
    }

    #[test]
    fn a_close_keeps_an_entrys_baseline_unless_a_snapshot_came_and_the_flags_of_both() {
        let mut held = HeldSockets::new(10);
        held.rto_expired(7);
        let h = held.close(7).expect("an expired RTO is kept for the close");
        assert!(!h.shipped && h.flags & SOCK_RTO_EXPIRED != 0, "{h:?}");
        let kernel = SockState {
            folded: SockCounters { bytes_acked: 500, ..Default::default() },
            flags: SOCK_WALKED | SOCK_ATTEMPTED,
            ..Default::default()
        };
        let e = with_held(Some(kernel), Some(h), &key(1)).unwrap();
        assert_eq!(e.folded.bytes_acked, 500);
        assert_eq!(e.flags, SOCK_WALKED | SOCK_ATTEMPTED | SOCK_RTO_EXPIRED);
        let shipped = Held { folded: SockCounters { bytes_acked: 900, ..Default::default() }, shipped: true, ..h };
        assert_eq!(with_held(Some(kernel), Some(shipped), &key(1)).unwrap().folded.bytes_acked, 900);
        let alone = with_held(None, Some(shipped), &key(3)).unwrap();
        assert_eq!((alone.key, alone.folded.bytes_acked, alone.flags), (key(3), 900, SOCK_RTO_EXPIRED));
        assert!(with_held(None, None, &key(1)).is_none());
    }

    #[test]
    fn held_sockets_that_two_full_walks_did_not_see_are_dropped() {
        let mut held = HeldSockets::new(10);
        let mut full_walk = |cookies: &[u64]| {
            held.walk(true);
            for &c in cookies {
                held.snapshot(&snap(c, 80, 10, 1), true);
            }
            held.prune();
            let mut kept: Vec<u64> = held.held.keys().copied().collect();
            kept.sort();
            kept
        };
        assert_eq!(full_walk(&[1, 2]), [1, 2]);
        assert_eq!(full_walk(&[1]), [1, 2], "one full walk without it: its close's record may still come");
        assert_eq!(full_walk(&[1]), [1]);
    }

    #[test]
    fn sockets_beyond_the_bound_are_not_held_and_are_counted_at_each_refused_snapshot() {
        let mut held = HeldSockets::new(2);
        held.walk(false);
        assert!(held.snapshot(&snap(1, 80, 10, 1), false).is_some());
        assert!(held.snapshot(&snap(2, 80, 10, 1), false).is_some());
        assert!(held.snapshot(&snap(3, 80, 10, 1), false).is_none(), "no room");
        held.walk(false);
        let d = held.snapshot(&snap(1, 80, 30, 2), false).expect("a held socket is always folded");
        assert_eq!((d.bytes_acked, d.segs_in), (20, 1));
        assert!(held.snapshot(&snap(3, 80, 30, 2), false).is_none());
        assert_eq!(held.full, 2, "each refused snapshot");
        // Room again: the socket is held from zero, as nothing was folded of it.
        assert!(held.close(2).is_some());
        let d = held.snapshot(&snap(3, 80, 40, 3), false).unwrap();
        assert_eq!((d.bytes_acked, d.segs_in), (40, 3));
        held.rto_expired(4);
        assert_eq!(held.held.len(), 3, "an expired RTO is kept beyond the bound, for the close");
    }

    #[test]
    fn readings_without_records_wait_twice_as_long_up_to_the_idle_bound() {
        let mut w = READ_EVERY;
        let mut waits = Vec::new();
        for _ in 0..5 {
            w = next_read_wait(w, 0);
            waits.push(w.as_millis());
        }
        assert_eq!(waits, [100, 200, 400, 400, 400]);
        assert_eq!(next_read_wait(READ_IDLE_MAX, 1), READ_EVERY, "records: back to the short wait");
        assert_eq!(next_read_wait(READ_EVERY, 3), READ_EVERY);
    }

    #[test]
    fn the_spill_is_swept_only_when_records_were_spilled_since_the_last_sweep_or_it_left_some() {
        assert!(!spill_pending(0, 0, 0), "nothing ever spilled: no sweep");
        assert!(spill_pending(3, 0, 0), "three spilled since");
        assert!(spill_pending(3, 3, 2), "closes the last sweep left for this reading");
        assert!(!spill_pending(3, 3, 0), "all taken, none spilled since");
        assert!(spill_pending(1, u64::MAX, 0), "the count wrapped");
    }

    #[test]
    fn a_spilled_close_waits_for_the_reading_after_the_one_it_was_spilled_during() {
        let key = |kind: u32, reading: u64| SpillKey {
            cookie: 1,
            kind: agent_common::record::spill_kind(kind as u64, reading),
        };
        let (now, before) = (5, 4);
        for k in [key(kind::ESTABLISHED, now), key(kind::RTO_EXPIRED, now), key(kind::ESTABLISHED, before)] {
            assert!(spill_due(&k, false, false, now), "the rest first, whenever spilled: {k:?}");
            assert!(!spill_due(&k, true, false, now), "not by the sweep of closes: {k:?}");
        }
        assert!(!spill_due(&key(kind::CLOSED, now), false, false, now), "a close, not with the rest");
        assert!(!spill_due(&key(kind::CLOSED, now), true, false, now), "spilled during this reading: waits");
        assert!(spill_due(&key(kind::CLOSED, before), true, false, now), "spilled during an earlier one");
        assert!(spill_due(&key(kind::CLOSED, now), true, true, now), "the last reading takes every close");
    }

    #[test]
    fn gone_entries_are_looked_for_at_twice_the_live_ones_within_bounds() {
        assert_eq!(next_entries_check(0, 65_536), 1024);
        assert_eq!(next_entries_check(3_000, 65_536), 6_000);
        assert_eq!(next_entries_check(40_000, 65_536), 65_536, "at most SOCKETS' size");
        assert_eq!(next_entries_check(10, 16), 1024, "at least the minimum, whatever SOCKETS' size");
    }
}
