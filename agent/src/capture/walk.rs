//! Running the walk of open sockets (`agent-ebpf/src/walk.rs`, an `iter/tcp` iterator) in every
//! walked network namespace. An `iter/tcp` pass sees the sockets of the namespace of the thread
//! that starts it, so this process's own namespace is walked from the caller's thread, and each
//! namespace given with `--walk-netns` from a thread of its own that entered it at start (with
//! CAP_SYS_ADMIN, which it then drops with every other capability).
//!
//! With `--walk-netns-all` a finder thread (`Finder`, the one thread that keeps CAP_SYS_ADMIN and
//! CAP_SYS_PTRACE) looks for the host's namespaces every `SCAN_EVERY` (`netns::Scanner`) and
//! starts a walker in each new one; the sock_ops program learns each namespace's cookie
//! (`Registry`) and gives the sockets opened there from then on no per-segment callbacks. A
//! namespace no process is in or holds an open socket of, and no file is bound to, is left: its
//! walker thread ends, so the agent never keeps a namespace alive.
//!
//! The walk made at start, before the sock_ops program attaches, takes over the connections an
//! earlier run left open: in the walked namespaces, and once in every other namespace of the
//! host, where an earlier run may have walked (`Walk::run_elsewhere_at_start`).
//!
//! Before each walk the daemon sets the walk's idle floor (`WALK_FLOOR`, `Floor`): the start of
//! the last walk that completed, less a margin. The kernel stamps a socket (`tcp_mstamp`) as it
//! handles a segment in or out, under the socket's lock, which the walk's visit takes too; so a
//! socket stamped before that start was visited by that walk with everything it had done, and
//! has moved nothing since. The program passes it over with one read instead of a map lookup.
//! Once per `--walk-full-interval` the floor is 0 and the walk visits every socket, for the rare
//! segments the kernel counts without stamping the socket.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{self, Read},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::{
    maps::{WalkedNetns, walk_kind},
    record::WalkItem,
};
use aya::maps::{Array, HashMap, MapData, MapError};

use super::{
    netns::{self, NsId, TcpTable},
    privileges::{self, KeptBy},
};
use crate::sys;

/// Read retries of one pass: the kernel pauses an iterator (EAGAIN) after a million sockets
/// without output and resumes it at the next read.
const PASS_RETRIES: usize = 64;

/// Longest a pass in another namespace may take before the walk reports it as failed.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

/// How many unwalked namespaces the walk at start enters at once (`Walk::run_elsewhere_at_start`).
const START_WALKERS: usize = 32;

/// A shared TCP table of at least this many buckets is worth a note (`Walk::report_shared_tables`):
/// ~0.4 ms of CPU per namespace and walk.
const SHARED_TABLE_NOTED: u64 = 65_536;

/// How far below the last walk's start the idle floor sits: a segment the kernel sends shortly
/// after a stamp without stamping again (a compressed SACK's timer, within milliseconds) is
/// still covered, and so is any skew between the two readings of the clock.
const FLOOR_MARGIN_US: u64 = 1_000_000;

/// The walks' idle floors: a walk passes over sockets whose `tcp_mstamp` (µs of
/// CLOCK_MONOTONIC) is below its floor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Floor {
    /// Start of the last walk that completed.
    last_start_us: Option<u64>,
    /// Start of the last complete walk that visited every socket.
    last_full_us: Option<u64>,
}

impl Floor {
    /// The floor of a walk starting at `now_us`: 0 (visit every socket) for the first walk and
    /// when a full walk is due (`full_every` since the last one; always for 0), otherwise the
    /// last complete walk's start less the margin. A walk that failed does not move it, so a
    /// socket it missed is visited by the next.
    fn for_walk(&self, now_us: u64, full_every: Duration) -> u64 {
        let full_due = self.last_full_us.is_none_or(|f| now_us.saturating_sub(f) >= full_every.as_micros() as u64);
        match self.last_start_us {
            Some(start) if !full_due => start.saturating_sub(FLOOR_MARGIN_US),
            _ => 0,
        }
    }

    /// The walk that started at `now_us` completed; `full`: it visited every socket.
    fn completed(&mut self, now_us: u64, full: bool) {
        self.last_start_us = Some(now_us);
        if full {
            self.last_full_us = Some(now_us);
        }
    }
}

/// What one pass made, with connection records on (the program writes each as a `WalkItem` of
/// its output): the walked sockets that got a SOCKETS entry in it, and those it handed to the
/// daemon with their counters; and how it ended. The items read before an error are kept: the
/// entries exist either way, and the counters were read.
type PassResult = (Vec<WalkItem>, io::Result<()>);

/// One pass over the calling thread's namespace, its items in `items` (emptied first: a `Vec`
/// the walker got back from the last pass, so that its room is made once, not at every pass).
fn pass(link: BorrowedFd<'_>, mut items: Vec<WalkItem>) -> PassResult {
    items.clear();
    let end = pass_into(link, &mut items);
    (items, end)
}

/// One pass over the calling thread's namespace: reading the iterator runs the program on every
/// TCP socket, and the read ends at end of file. Its items are added to `items`.
fn pass_into(link: BorrowedFd<'_>, items: &mut Vec<WalkItem>) -> io::Result<()> {
    const ITEM: usize = size_of::<WalkItem>();
    let mut f = File::from(sys::bpf_iter_create(link)?);
    let mut buf = [0u8; 4096];
    let mut have = 0;
    let mut retries = 0;
    loop {
        match f.read(&mut buf[have..]) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                have += n;
                let whole = have - have % ITEM;
                // SAFETY: `WalkItem` is plain integers (every bit pattern valid), read unaligned
                // from whole items of the buffer.
                items.extend(
                    buf[..whole]
                        .chunks_exact(ITEM)
                        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<WalkItem>()) }),
                );
                buf.copy_within(whole..have, 0);
                have -= whole;
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && retries < PASS_RETRIES => retries += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A thread of its own: it sets itself up and says how once, then answers each request sent to
/// it until its request channel closes, which dropping this does (and joins the thread). The
/// walkers and the finder are such threads.
struct Worker<Q, A> {
    ask: Option<mpsc::Sender<Q>>,
    answers: mpsc::Receiver<A>,
    thread: Option<JoinHandle<()>>,
}

/// Why a `Worker` did not start.
enum WorkerError<E> {
    /// The thread could not be created.
    Start(io::Error),
    /// It ended before saying how its setup went.
    Ended,
    /// Its setup failed.
    Setup(E),
}

impl<Q: Send + 'static, A: Send + 'static> Worker<Q, A> {
    /// Start thread `name`: `setup` runs in it first, and on success gives what to report here
    /// (`R`) and the state (`S`) that `serve` then answers every request with.
    fn spawn<R: Send + 'static, S, E: Send + 'static>(
        name: &str,
        setup: impl FnOnce() -> Result<(R, S), E> + Send + 'static,
        mut serve: impl FnMut(&mut S, Q) -> A + Send + 'static,
    ) -> Result<(Worker<Q, A>, R), WorkerError<E>> {
        let (ask_tx, ask_rx) = mpsc::channel::<Q>();
        let (answer_tx, answer_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let mut state = match setup() {
                    Ok((report, state)) => {
                        let _ = ready_tx.send(Ok(report));
                        state
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(q) = ask_rx.recv() {
                    if answer_tx.send(serve(&mut state, q)).is_err() {
                        return;
                    }
                }
            })
            .map_err(WorkerError::Start)?;
        let report = ready_rx.recv().map_err(|_| WorkerError::Ended)?.map_err(WorkerError::Setup)?;
        Ok((Worker { ask: Some(ask_tx), answers: answer_rx, thread: Some(thread) }, report))
    }

    /// Send a request; false if the thread has stopped. A late answer to an earlier request
    /// (one that timed out) is dropped first: it is not this one's.
    fn ask(&self, q: Q) -> bool {
        while self.answers.try_recv().is_ok() {}
        self.ask.as_ref().is_some_and(|a| a.send(q).is_ok())
    }

    /// The answer to the last request, if it comes within `timeout`.
    fn answer(&self, timeout: Duration) -> Option<A> {
        self.answers.recv_timeout(timeout).ok()
    }
}

impl<Q, A> Drop for Worker<Q, A> {
    fn drop(&mut self) {
        // Closing the request channel ends the thread (a walker's leaves its namespace).
        self.ask.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A thread inside another network namespace, running a pass when asked.
struct NetnsWalker {
    path: PathBuf,
    /// The namespace's cookie (what the sock_ops program reads, `bpf_get_netns_cookie`).
    cookie: u64,
    /// The thread's id: its /proc/self/task/TID/net shows the namespace.
    tid: i32,
    /// The namespace's TCP table, which each pass scans whole (`netns::tcp_table`).
    table: Option<TcpTable>,
    /// The `Vec` the last pass's items came in, emptied: the next request takes it back.
    spare: Cell<Vec<WalkItem>>,
    worker: Worker<Vec<WalkItem>, PassResult>,
}

/// What a walker's thread learns once it has entered its namespace.
struct Entered {
    cookie: u64,
    tid: i32,
    table: Option<TcpTable>,
}

impl NetnsWalker {
    /// Start the thread: it enters the namespace at `path` (which must still be `expect`, if
    /// given: a /proc/PID path may have gone to another process), learns the namespace's cookie
    /// and drops its capabilities, then serves passes.
    fn spawn(path: &Path, link: Arc<OwnedFd>, expect: Option<NsId>) -> Result<NetnsWalker, String> {
        let p = path.to_path_buf();
        let setup = move || -> io::Result<(Entered, Arc<OwnedFd>)> {
            let step = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
            let ns = File::open(&p).map_err(step("opening it"))?;
            if expect.is_some_and(|id| NsId::of_file(&ns).ok() != Some(id)) {
                return Err(io::Error::other("it is another namespace than the one found there"));
            }
            sys::setns_net(ns.as_fd()).map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::new(e.kind(), "it is not a network namespace"),
                Some(libc::EPERM) => io::Error::new(e.kind(), "entering a namespace needs CAP_SYS_ADMIN"),
                _ => step("setns")(e),
            })?;
            let cookie = sys::netns_cookie().map_err(step("reading its cookie (SO_NETNS_COOKIE)"))?;
            // Its capabilities were needed to enter; not after.
            privileges::keep_only(0).map_err(io::Error::other)?;
            Ok((Entered { cookie, tid: sys::gettid(), table: netns::tcp_table() }, link))
        };
        let serve = |link: &mut Arc<OwnedFd>, items| pass(link.as_fd(), items);
        match Worker::spawn("walk-netns", setup, serve) {
            Ok((worker, Entered { cookie, tid, table })) => {
                Ok(NetnsWalker { path: path.to_path_buf(), cookie, tid, table, spare: Cell::default(), worker })
            }
            Err(WorkerError::Start(e)) => Err(format!("starting a thread for {}: {e}", path.display())),
            Err(WorkerError::Ended) => Err(format!("the thread for {} ended before entering it", path.display())),
            Err(WorkerError::Setup(e)) => Err(format!("entering {}: {e}", path.display())),
        }
    }

    /// `spawn` for namespace `id`, which a scan found at `path`: none (no error) if the process
    /// there went, or moved to another namespace, since the scan.
    fn enter_found(path: &Path, id: NsId, link: Arc<OwnedFd>) -> Result<Option<NetnsWalker>, String> {
        match NetnsWalker::spawn(path, link, Some(id)) {
            Ok(w) => Ok(Some(w)),
            Err(_) if NsId::of(path).ok() != Some(id) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn ask(&self) -> bool {
        self.worker.ask(self.spare.take())
    }

    /// The pass's end, its items added to `items`.
    fn wait(&self, items: &mut Vec<WalkItem>) -> Result<(), String> {
        match self.worker.answer(PASS_TIMEOUT) {
            Some((mut made, r)) => {
                items.append(&mut made);
                self.spare.set(made);
                r.map_err(|e| format!("walking {}: {e}", self.path.display()))
            }
            None => Err(format!("walking {}: no answer within {PASS_TIMEOUT:?}", self.path.display())),
        }
    }
}

/// Ask each walker for a pass; the ones whose thread has stopped (it can only have panicked)
/// are errors naming their namespace, whose open sockets then reach their flows only at their
/// close, so every walk says so.
fn ask_all<'a>(walkers: impl IntoIterator<Item = &'a NetnsWalker>, errors: &mut Vec<String>) -> Vec<&'a NetnsWalker> {
    let mut asked = Vec::new();
    for w in walkers {
        if w.ask() {
            asked.push(w);
        } else {
            errors.push(format!("walking {}: its thread has stopped", w.path.display()));
        }
    }
    asked
}

/// Capabilities the finder keeps (`--walk-netns-all`): CAP_SYS_ADMIN to enter namespaces
/// (setns), CAP_SYS_PTRACE to see which namespace another user's process is in.
const FINDER_CAPS: u64 = (1 << privileges::CAP_SYS_ADMIN) | (1 << privileges::CAP_SYS_PTRACE);

/// How often the finder looks for namespaces that came or went.
const SCAN_EVERY: Duration = Duration::from_secs(2);

/// What one look for namespaces found.
#[derive(Default)]
struct Found {
    /// Namespaces not known before, each entered by a walker of its own.
    new: Vec<(NsId, NetnsWalker)>,
    /// Known namespaces that no process is in and no file is bound to any more.
    gone: Vec<NsId>,
    /// Namespaces that could not be entered, and why (each once: not offered again).
    failed: Vec<String>,
    /// Processes whose namespace could not be read (`netns::Scanner::denied`).
    denied: usize,
}

/// The thread that finds the host's network namespaces (`--walk-netns-all`) and starts a walker
/// in each new one. It alone keeps capabilities (`FINDER_CAPS`) once the rest of the process
/// has dropped them: a walker it starts inherits them, enters its namespace and drops them.
struct Finder {
    worker: Worker<HashSet<NsId>, Found>,
    kept: KeptBy,
}

/// What the finder keeps between looks.
struct FinderState {
    link: Arc<OwnedFd>,
    /// This process's namespace, never offered.
    own: NsId,
    /// Namespaces that could not be entered: not offered again while they last.
    failed: HashSet<NsId>,
    scanner: netns::Scanner,
}

impl Finder {
    fn spawn(link: Arc<OwnedFd>) -> Result<Finder, String> {
        let setup = move || -> Result<(KeptBy, FinderState), String> {
            let caps = privileges::keep_only(FINDER_CAPS).map_err(|e| e.to_string())?;
            if caps & (1 << privileges::CAP_SYS_ADMIN) == 0 {
                return Err("it needs CAP_SYS_ADMIN to enter namespaces".into());
            }
            if caps & (1 << privileges::CAP_SYS_PTRACE) == 0 {
                tracing::warn!(
                    "--walk-netns-all without CAP_SYS_PTRACE: namespaces that only other users' processes are in are \
                     not found"
                );
            }
            let own = NsId::of(Path::new("/proc/thread-self/ns/net"))
                .map_err(|e| format!("reading this thread's namespace: {e}"))?;
            let state = FinderState { link, own, failed: HashSet::new(), scanner: netns::Scanner::default() };
            Ok((KeptBy { tid: sys::gettid(), caps }, state))
        };
        match Worker::spawn("walk-netns-all", setup, FinderState::look) {
            Ok((worker, kept)) => Ok(Finder { worker, kept }),
            Err(WorkerError::Start(e)) => Err(format!("starting the namespace finder: {e}")),
            Err(WorkerError::Ended) => Err("the namespace finder ended before starting".into()),
            Err(WorkerError::Setup(e)) => Err(format!("--walk-netns-all: {e}")),
        }
    }

    /// Look for namespaces: new ones (not in `known`) entered, known ones gone.
    fn find(&self, known: HashSet<NsId>) -> Result<Found, String> {
        if !self.worker.ask(known) {
            return Err("the namespace finder has stopped".into());
        }
        self.worker
            .answer(PASS_TIMEOUT)
            .ok_or_else(|| format!("the namespace finder: no answer within {PASS_TIMEOUT:?}"))
    }
}

impl FinderState {
    /// One look, in the finder's thread: scan, enter what is new (not in `known`), tell what of
    /// `known` is gone.
    fn look(&mut self, known: HashSet<NsId>) -> Found {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let scanned = self.scanner.scan(Path::new("/proc"), &mountinfo, self.own);
        self.failed.retain(|id| scanned.contains_key(id));
        let mut out = Found::default();
        for (id, path) in &scanned {
            if known.contains(id) || self.failed.contains(id) {
                continue;
            }
            match NetnsWalker::enter_found(path, *id, self.link.clone()) {
                Ok(Some(w)) => out.new.push((*id, w)),
                // Looked for again at the next scan.
                Ok(None) => {}
                Err(e) => {
                    self.failed.insert(*id);
                    out.failed.push(e);
                }
            }
        }
        out.gone = known.iter().filter(|id| !scanned.contains_key(id)).copied().collect();
        out.denied = self.scanner.denied();
        out
    }
}

/// Why `Registry::add` did not register a namespace.
#[derive(Debug, thiserror::Error)]
enum RegistryError {
    /// The hash holds `--max-walked-netns` namespaces already.
    #[error("{0} network namespaces are walked already (--max-walked-netns)")]
    Full(u32),
    #[error("registering a walked namespace: {0}")]
    Other(MapError),
}

/// Which namespaces the sock_ops program treats as walked: `WALKED_NETNS` (all of them) and
/// `WALKED_NETNS_LIST` (the first few, checked without a hash lookup).
pub struct Registry {
    hash: HashMap<MapData, u64, u8>,
    list: Array<MapData, WalkedNetns>,
    /// The hash's size (`--max-walked-netns`), for the error that says it is full.
    max: u32,
}

impl Registry {
    pub fn new(hash: HashMap<MapData, u64, u8>, list: Array<MapData, WalkedNetns>, max: u32) -> Registry {
        Registry { hash, list, max }
    }

    fn add(&mut self, cookie: u64) -> Result<(), RegistryError> {
        self.hash.insert(cookie, 1, 0).map_err(|e| match &e {
            // The kernel's answer for a full hash.
            MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                RegistryError::Full(self.max)
            }
            _ => RegistryError::Other(e),
        })
    }

    fn remove(&mut self, cookie: u64) {
        if let Err(e) = self.hash.remove(&cookie) {
            tracing::warn!("unregistering a walked namespace: {e}");
        }
    }

    fn list(&mut self, cookies: &[u64]) -> Result<(), String> {
        self.list.set(0, WalkedNetns::of(cookies), 0).map_err(|e| format!("listing the walked namespaces: {e}"))
    }
}

/// The walk: its iterator link, the threads in the other walked namespaces, and the idle floor
/// (the program's `WALK_FLOOR` map and what it is set from).
pub struct Walk {
    link: Arc<OwnedFd>,
    /// This process's namespace's cookie.
    own: u64,
    /// The `--walk-netns` namespaces, walked for the agent's life.
    others: Vec<NetnsWalker>,
    /// Their ids, never offered again by the finder.
    others_ids: HashSet<NsId>,
    /// With `--walk-netns-all`: the namespaces found, each walked while anything holds it.
    found: BTreeMap<NsId, NetnsWalker>,
    /// Namespaces found that were not entered or not registered (not offered again while they
    /// last, unless `waiting`).
    refused: HashSet<NsId>,
    /// Those of `refused` turned away for lack of room (`--max-walked-netns`), oldest first: as
    /// many as namespaces left are offered again at the next look.
    waiting: Vec<NsId>,
    finder: Option<Finder>,
    last_find: Option<Instant>,
    /// Whether processes whose namespace could not be read were reported (once).
    denied_reported: bool,
    /// Whether walked namespaces sharing the host's TCP table were reported (once).
    shared_tables_reported: bool,
    registry: Registry,
    floor_map: Array<MapData, u64>,
    floor: Floor,
    full_every: Duration,
    /// What the walks made since `drain_items` (see there).
    items: Vec<WalkItem>,
    /// Whether the last walk visited every socket (`Floor`).
    last_full: bool,
}

impl Walk {
    /// Link the loaded walk program, enter the namespaces in `others` and, with `all`, start the
    /// finder of the host's other namespaces (`--walk-netns-all`) and enter those it finds;
    /// `registry` tells the sock_ops program which they are. A namespace that cannot be entered
    /// is left out with a warning: its sockets fold from callbacks. `floor_map` is the
    /// program's `WALK_FLOOR`; every `full_every` a walk visits every socket.
    pub fn start(
        prog: BorrowedFd<'_>,
        others: &[PathBuf],
        all: bool,
        registry: Registry,
        floor_map: Array<MapData, u64>,
        full_every: Duration,
    ) -> Result<Walk, String> {
        let own = sys::netns_cookie().map_err(|e| format!("reading this namespace's cookie (SO_NETNS_COOKIE): {e}"))?;
        let link = Arc::new(sys::bpf_iter_link(prog).map_err(|e| format!("linking the walk program: {e}"))?);
        let mut walk = Walk {
            link,
            own,
            others: Vec::new(),
            others_ids: HashSet::new(),
            found: BTreeMap::new(),
            refused: HashSet::new(),
            waiting: Vec::new(),
            finder: None,
            last_find: None,
            denied_reported: false,
            shared_tables_reported: false,
            registry,
            floor_map,
            floor: Floor::default(),
            full_every,
            items: Vec::new(),
            last_full: false,
        };
        walk.registry.add(own).map_err(|e| e.to_string())?;
        for path in others {
            match NetnsWalker::spawn(path, walk.link.clone(), None) {
                Ok(w) if !walk.cookies().contains(&w.cookie) => {
                    if let Err(e) = walk.registry.add(w.cookie) {
                        tracing::warn!(netns = %path.display(), "{e}: its sockets fold from per-segment callbacks");
                        continue;
                    }
                    if let Ok(id) = NsId::of(path) {
                        walk.others_ids.insert(id);
                    }
                    walk.others.push(w);
                }
                Ok(_) => tracing::info!(netns = %path.display(), "walked already (the same namespace as another)"),
                Err(e) => tracing::warn!("{e}: its sockets fold from per-segment callbacks"),
            }
        }
        walk.registry.list(&walk.cookies())?;
        walk.report_shared_tables();
        if all {
            match Finder::spawn(walk.link.clone()) {
                Ok(f) => {
                    walk.finder = Some(f);
                    // The namespaces there are now, before the sock_ops program attaches; a
                    // failed look is retried at the daemon's next tick.
                    if let Err(e) = walk.refresh() {
                        tracing::warn!("looking for network namespaces to walk: {e}");
                        walk.last_find = None;
                    }
                }
                Err(e) => tracing::warn!(
                    "{e}: only this namespace and the --walk-netns ones are walked, others fold from per-segment \
                     callbacks"
                ),
            }
        }
        Ok(walk)
    }

    /// The cookies of the walked namespaces, this process's own first.
    fn cookies(&self) -> Vec<u64> {
        let mut c = vec![self.own];
        c.extend(self.others.iter().map(|w| w.cookie));
        c.extend(self.found.values().map(|w| w.cookie));
        c
    }

    /// The thread that keeps capabilities for `--walk-netns-all`, if any.
    pub fn kept(&self) -> Option<KeptBy> {
        self.finder.as_ref().map(|f| f.kept)
    }

    /// With `--walk-netns-all`, at most every `SCAN_EVERY`: walk the namespaces that appeared
    /// from now on (their sockets opened from now on have no per-segment callbacks; those opened
    /// before keep theirs), and stop walking those that no process is in and no file is bound to
    /// once no process holds an open socket of theirs either (`netns::has_held_sockets`): the
    /// walker thread in it is then all that keeps it, and leaving frees it. Sockets of a
    /// namespace no longer walked that were walked fold whole at their close.
    pub fn refresh(&mut self) -> Result<(), String> {
        let Some(finder) = &self.finder else { return Ok(()) };
        // (A little early rather than a tick late: the daemon calls this at every tick.)
        if self.last_find.is_some_and(|t| t.elapsed() + Duration::from_millis(100) < SCAN_EVERY) {
            return Ok(());
        }
        let started = Instant::now();
        self.last_find = Some(started);
        let known: HashSet<NsId> =
            self.others_ids.iter().chain(self.refused.iter()).chain(self.found.keys()).copied().collect();
        let found = finder.find(known)?;
        tracing::debug!(
            elapsed = ?started.elapsed(),
            new = found.new.len(),
            gone = found.gone.len(),
            "looked for network namespaces"
        );
        for e in found.failed {
            tracing::warn!("--walk-netns-all: {e}: its sockets fold from per-segment callbacks");
        }
        if found.denied > 0 && !self.denied_reported {
            self.denied_reported = true;
            tracing::warn!(
                processes = found.denied,
                "--walk-netns-all: the network namespace of some processes could not be read (permission denied: \
                 CAP_SYS_PTRACE missing, or an LSM such as AppArmor forbids it); a namespace only they are in is not \
                 found, and its sockets fold from per-segment callbacks"
            );
        }
        let mut added = false;
        for (id, w) in found.new {
            if self.cookies().contains(&w.cookie) {
                self.refused.insert(id);
                continue;
            }
            match self.registry.add(w.cookie) {
                Ok(()) => {
                    tracing::info!(netns = %w.path.display(), "walking a network namespace found (--walk-netns-all)");
                    self.found.insert(id, w);
                    added = true;
                }
                Err(e @ RegistryError::Full(_)) => {
                    tracing::warn!(
                        netns = %w.path.display(),
                        "{e}: its sockets fold from per-segment callbacks until one of them is left"
                    );
                    self.refused.insert(id);
                    self.waiting.push(id);
                }
                Err(e @ RegistryError::Other(_)) => {
                    tracing::warn!(netns = %w.path.display(), "{e}: its sockets fold from per-segment callbacks");
                    self.refused.insert(id);
                }
            }
        }
        // New ones go into the hash before the list, gone ones out of the list before the hash:
        // the program never sees a list naming a namespace the hash does not hold.
        if added {
            self.registry.list(&self.cookies())?;
            self.report_shared_tables();
        }
        let mut left = Vec::new();
        for id in found.gone {
            self.refused.remove(&id);
            self.waiting.retain(|w| *w != id);
            let Some(w) = self.found.get(&id) else { continue };
            if netns::has_held_sockets(w.tid) {
                continue;
            }
            left.extend(self.found.remove(&id));
        }
        if !left.is_empty() {
            self.registry.list(&self.cookies())?;
            // Room for as many as leave: the namespaces waiting longest are offered again at the
            // next look (their sockets opened meanwhile are handed to the walk by its first pass
            // there, as a namespace's first sockets are).
            for id in self.waiting.drain(..left.len().min(self.waiting.len())) {
                self.refused.remove(&id);
            }
            for w in left {
                self.registry.remove(w.cookie);
                tracing::info!(
                    netns = %w.path.display(),
                    "no longer walking a network namespace: no process is in it or holds one of its open sockets, no \
                     file is bound to it"
                );
                // Dropped: its thread leaves the namespace.
            }
        }
        Ok(())
    }

    /// Once: walked namespaces that share the host's TCP table (`netns::TcpTable`), which each
    /// of their passes scans whole, empty buckets included, and the host setting that gives the
    /// namespaces made after it tables of their own.
    fn report_shared_tables(&mut self) {
        if self.shared_tables_reported {
            return;
        }
        let walkers = self.others.iter().chain(self.found.values());
        let shared: Vec<u64> = walkers.filter_map(|w| w.table).filter(|t| t.shared).map(|t| t.buckets).collect();
        let Some(&buckets) = shared.iter().max() else { return };
        if buckets < SHARED_TABLE_NOTED {
            return;
        }
        self.shared_tables_reported = true;
        tracing::info!(
            namespaces = shared.len(),
            buckets,
            "walked network namespaces share the host's TCP table: each walk scans all of it in every one of them \
             (~1.7 ms of CPU per namespace at 262,144 buckets, docs/performance.md). Setting \
             net.ipv4.tcp_child_ehash_entries on the host (e.g. 4096) gives namespaces made from then on (new pods) \
             a table of their own, ~0.07 ms per walk"
        );
    }

    /// The walk made at start, before the sock_ops program attaches (`WALK_FLOOR` slot 1 set for
    /// it): every socket carrying this agent's callback flags was armed by an earlier run. They
    /// are stored with what they did so far as folded, so this run counts them from now on and
    /// not twice, and those with per-segment callbacks are handed to the walk (both in the walk
    /// program). A failed walk is logged (the first window's walk then counts the walked ones
    /// whole, as before); failing to clear the slot after it is an error, since every later walk
    /// would take this run's sockets for an earlier run's.
    pub fn run_at_start(&mut self) -> Result<(), String> {
        self.run_at_start_as(walk_kind::START)
    }

    /// The walk at start with `--fold-mode callbacks`, which makes no other walk: the sockets an
    /// earlier run in walk mode walked are stored with what they did so far as folded (or it
    /// would count them whole again at their close), and the established ones are handed to
    /// callbacks (both in the walk program, `walk_kind::START_FOR_CALLBACKS`). Then the walked
    /// namespaces are unregistered, so that the sock_ops program arms every new socket with
    /// callbacks; failing that is an error (their sockets would go uncounted until their close).
    pub fn run_for_callbacks(mut self) -> Result<(), String> {
        self.run_at_start_as(walk_kind::START_FOR_CALLBACKS)?;
        self.registry.list(&[])?;
        for cookie in self.cookies() {
            self.registry.remove(cookie);
        }
        Ok(())
    }

    /// The walk at start of kind `kind` (`WALK_FLOOR` slot 1 set for it) in the walked
    /// namespaces, then in the host's others (`run_elsewhere_at_start`).
    fn run_at_start_as(&mut self, kind: u64) -> Result<(), String> {
        if let Err(e) = self.floor_map.set(1, kind, 0) {
            tracing::warn!("the walk at start: {e}: open connections of an earlier run are counted whole");
            return Ok(());
        }
        if let Err(e) = self.run() {
            tracing::warn!("the walk at start: {e}");
        }
        self.run_elsewhere_at_start();
        self.floor_map.set(1, walk_kind::REGULAR, 0).map_err(|e| format!("ending the walk at start: {e}"))
    }

    /// The walk at start in the host's network namespaces that this run does not walk: an
    /// earlier run may have (`--walk-netns`, `--walk-netns-all`), and the walked connections it
    /// left open there carry no state entry of this run, so their close would count them whole
    /// again. Each namespace is entered by a walker of its own for one pass of kind
    /// `walk_kind::START_FOR_CALLBACKS` (every socket visited): a walked socket is stored with
    /// what it did so far as folded and, while established, handed to callbacks, which fold it
    /// from then on, as sockets of unwalked namespaces are. Sockets without this agent's
    /// callback flags are passed over. What cannot be done is logged: the connections there are
    /// then counted whole at their close, as before.
    fn run_elsewhere_at_start(&mut self) {
        if privileges::effective_caps() & (1 << privileges::CAP_SYS_ADMIN) == 0 {
            // As under the packaged systemd unit: no run with these capabilities walks another
            // namespace, so none left walked connections there.
            tracing::debug!("the walk at start does not enter other network namespaces: it needs CAP_SYS_ADMIN");
            return;
        }
        let own = match NsId::of(Path::new("/proc/thread-self/ns/net")) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("the walk at start in unwalked namespaces: reading this thread's namespace: {e}");
                return;
            }
        };
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut scanner = netns::Scanner::default();
        // Refused namespaces are not walked by this run, but may have been by an earlier one (one
        // whose --max-walked-netns left room for them): visited too. One refused as the same
        // namespace as a walked one is entered and then left out by its cookie.
        let known: HashSet<NsId> = self.others_ids.iter().chain(self.found.keys()).copied().collect();
        let unwalked: Vec<(NsId, PathBuf)> = scanner
            .scan(Path::new("/proc"), &mountinfo, own)
            .into_iter()
            .filter(|(id, _)| !known.contains(id))
            .collect();
        if scanner.denied() > 0 {
            // Not a warning: without CAP_SYS_PTRACE an earlier run with these capabilities could
            // walk such a namespace only if given it (`--walk-netns`), as this one is.
            tracing::info!(
                processes = scanner.denied(),
                "the walk at start: the network namespace of some processes could not be read (CAP_SYS_PTRACE \
                 missing, or an LSM forbids it); connections an earlier run walked in a namespace only they are in \
                 are counted whole at their close"
            );
        }
        if unwalked.is_empty() {
            return;
        }
        let walked = self.cookies();
        if let Err(e) =
            self.floor_map.set(1, walk_kind::START_FOR_CALLBACKS, 0).and_then(|()| self.floor_map.set(0, 0, 0))
        {
            tracing::warn!("the walk at start in unwalked namespaces: {e}");
            return;
        }
        let (mut visited, mut errors) = (0, Vec::new());
        for batch in unwalked.chunks(START_WALKERS) {
            let walkers: Vec<NetnsWalker> = batch
                .iter()
                .filter_map(|(id, path)| match NetnsWalker::enter_found(path, *id, self.link.clone()) {
                    Ok(w) => w.filter(|w| !walked.contains(&w.cookie)),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                })
                .collect();
            for w in ask_all(&walkers, &mut errors) {
                match w.wait(&mut self.items) {
                    Ok(()) => visited += 1,
                    Err(e) => errors.push(e),
                }
            }
            // Dropped: their threads leave the namespaces.
        }
        tracing::debug!(namespaces = visited, "the walk at start in unwalked namespaces");
        if !errors.is_empty() {
            tracing::warn!(
                namespaces = errors.len(),
                "the walk at start in unwalked namespaces: {}{}: connections an earlier run walked there and left open \
                 are counted whole at their close",
                errors[..errors.len().min(3)].join("; "),
                if errors.len() > 3 { "; ..." } else { "" }
            );
        }
    }

    /// One pass over every walked namespace, the others in parallel with this thread's own.
    pub fn run(&mut self) -> Result<(), String> {
        let now_us = sys::monotonic_us();
        let floor = self.floor.for_walk(now_us, self.full_every);
        let full = match self.floor_map.set(0, floor, 0) {
            Ok(()) => floor == 0,
            Err(e) => {
                // The map keeps the floor of an earlier walk, which is lower: this walk visits
                // more sockets, but it cannot count as a full one.
                tracing::warn!("setting the walk's idle floor: {e}");
                false
            }
        };
        let mut errors = Vec::new();
        let asked = ask_all(self.others.iter().chain(self.found.values()), &mut errors);
        if let Err(e) = pass_into(self.link.as_fd(), &mut self.items) {
            errors.push(format!("walking this process's namespace: {e}"));
        }
        for w in asked {
            if let Err(e) = w.wait(&mut self.items) {
                errors.push(e);
            }
        }
        self.last_full = errors.is_empty() && full;
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.floor.completed(now_us, full);
        Ok(())
    }

    /// What the walks since the last call wrote (with connection records on; see `records`),
    /// taken out of the walk's `Vec`, which keeps its room for the next walk.
    pub fn drain_items(&mut self) -> std::vec::Drain<'_, WalkItem> {
        self.items.drain(..)
    }

    /// Whether the last walk visited every socket of every walked namespace.
    pub fn last_was_full(&self) -> bool {
        self.last_full
    }

    pub fn namespaces(&self) -> usize {
        1 + self.others.len() + self.found.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;
    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn the_first_walk_visits_every_socket() {
        assert_eq!(Floor::default().for_walk(100 * S, FIVE_MIN), 0);
    }

    #[test]
    fn later_walks_pass_over_sockets_stamped_before_the_last_walk_began() {
        let mut f = Floor::default();
        f.completed(100 * S, true);
        assert_eq!(f.for_walk(130 * S, FIVE_MIN), 99 * S);
        f.completed(130 * S, false);
        assert_eq!(f.for_walk(160 * S, FIVE_MIN), 129 * S);
    }

    #[test]
    fn a_failed_walk_leaves_the_floor_where_it_was() {
        let mut f = Floor::default();
        f.completed(100 * S, true);
        // The walk at 130 s failed: not recorded, so the one at 160 s still visits every socket
        // stamped since 99 s.
        assert_eq!(f.for_walk(160 * S, FIVE_MIN), 99 * S);
    }

    #[test]
    fn a_full_walk_comes_once_per_interval() {
        let mut f = Floor::default();
        f.completed(100 * S, true);
        let mut t = 100 * S;
        let mut full = Vec::new();
        while t < 1000 * S {
            t += 30 * S;
            let floor = f.for_walk(t, FIVE_MIN);
            if floor == 0 {
                full.push(t / S);
            }
            f.completed(t, floor == 0);
        }
        assert_eq!(full, [400, 700, 1000]);
    }

    #[test]
    fn a_walk_that_could_not_set_its_floor_is_not_a_full_one() {
        let mut f = Floor::default();
        f.completed(100 * S, false);
        assert_eq!(f.last_full_us, None);
        assert_eq!(f.for_walk(130 * S, FIVE_MIN), 0);
    }

    /// A walker of namespace `path` whose passes succeed, or whose thread panics in its first.
    fn walker(path: &str, panics: bool) -> NetnsWalker {
        let serve = move |_: &mut (), mut items: Vec<WalkItem>| -> PassResult {
            assert!(!panics, "a pass that panics (a test's)");
            items.clear();
            items.push(WalkItem { cookie: 7, ..Default::default() });
            (items, Ok(()))
        };
        let Ok((worker, ())) = Worker::spawn("test-walker", || Ok::<_, ()>(((), ())), serve) else {
            panic!("a test thread did not start");
        };
        NetnsWalker { path: path.into(), cookie: 1, tid: 0, table: None, spare: Cell::default(), worker }
    }

    #[test]
    fn a_walker_whose_thread_stopped_is_an_error_naming_its_namespace_at_every_walk() {
        let walkers = [walker("/run/netns/a", false), walker("/run/netns/b", true), walker("/run/netns/c", false)];
        let names =
            |asked: Vec<&NetnsWalker>| -> Vec<String> { asked.iter().map(|w| w.path.display().to_string()).collect() };
        // The first walk: b's thread panics in its pass.
        let mut errors = Vec::new();
        let asked = ask_all(&walkers, &mut errors);
        assert_eq!(names(asked.clone()), ["/run/netns/a", "/run/netns/b", "/run/netns/c"]);
        assert!(errors.is_empty(), "{errors:?}");
        let mut made = Vec::new();
        let failed: Vec<String> = asked.iter().filter_map(|w| w.wait(&mut made).err()).collect();
        let cookies: Vec<u64> = made.iter().map(|i| i.cookie).collect();
        assert_eq!(cookies, [7, 7], "the passes that answered give their items");
        let spare = walkers[0].spare.take();
        assert!(spare.is_empty() && spare.capacity() > 0, "a pass's Vec comes back, emptied, for the next");
        walkers[0].spare.set(spare);
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].starts_with("walking /run/netns/b: no answer"), "{failed:?}");
        let b = walkers[1].worker.thread.as_ref().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !b.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Every walk after it: b is not asked, and says so.
        for _ in 0..2 {
            let mut errors = Vec::new();
            let asked = ask_all(&walkers, &mut errors);
            assert_eq!(names(asked.clone()), ["/run/netns/a", "/run/netns/c"]);
            assert_eq!(errors, ["walking /run/netns/b: its thread has stopped"]);
            assert!(asked.iter().all(|w| w.wait(&mut Vec::new()).is_ok()));
        }
    }

    #[test]
    fn a_namespace_path_that_cannot_be_entered_is_an_error_naming_the_path_and_why() {
        let link = Arc::new(OwnedFd::from(File::open("/dev/null").unwrap()));
        let entering = |path: &Path| match NetnsWalker::spawn(path, link.clone(), None) {
            Ok(_) => panic!("{} entered", path.display()),
            Err(e) => e,
        };
        let missing = entering(Path::new("/nonexistent/netns"));
        assert!(missing.starts_with("entering /nonexistent/netns: opening it: No such file"), "{missing}");
        let file = tempfile::NamedTempFile::new().unwrap();
        let plain = entering(file.path());
        assert_eq!(plain, format!("entering {}: it is not a network namespace", file.path().display()));
    }

    #[test]
    fn zero_makes_every_walk_a_full_one() {
        let mut f = Floor::default();
        f.completed(100 * S, true);
        assert_eq!(f.for_walk(100 * S + 1, Duration::ZERO), 0);
    }
}
