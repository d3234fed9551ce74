//! Running the walk of open sockets (`agent-ebpf/src/walk.rs`, an `iter/tcp` iterator) in every
//! walked network namespace. An `iter/tcp` pass sees the sockets of the namespace of the thread
//! that starts it, so this process's own namespace is walked from the caller's thread, and each
//! namespace given with `--walk-netns` from a thread of its own that entered it at start (with
//! CAP_SYS_ADMIN, which it then drops with every other capability).
//!
//! Before each walk the daemon sets the walk's idle floor (`WALK_FLOOR`, `Floor`): the start of
//! the last walk that completed, less a margin. The kernel stamps a socket (`tcp_mstamp`) as it
//! handles a segment in or out, under the socket's lock, which the walk's visit takes too; so a
//! socket stamped before that start was visited by that walk with everything it had done, and
//! has moved nothing since. The program passes it over with one read instead of a map lookup.
//! Once per `--walk-full-interval` the floor is 0 and the walk visits every socket, for the rare
//! segments the kernel counts without stamping the socket.

use std::{
    fs::File,
    io::{self, Read},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, MapData};

use crate::sys;

/// Read retries of one pass: the kernel pauses an iterator (EAGAIN) after a million sockets
/// without output and resumes it at the next read.
const PASS_RETRIES: usize = 64;

/// Longest a pass in another namespace may take before the walk reports it as failed.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One pass over the calling thread's namespace: reading the iterator runs the program on every
/// TCP socket; it writes nothing, so the read ends at end of file.
fn pass(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut f = File::from(sys::bpf_iter_create(link)?);
    let mut buf = [0u8; 64];
    let mut retries = 0;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && retries < PASS_RETRIES => retries += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A thread inside another network namespace, running a pass when asked.
struct NetnsWalker {
    path: PathBuf,
    ask: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for NetnsWalker {
    fn drop(&mut self) {
        // Closing the request channel ends the thread.
        self.ask.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Give up this thread's capabilities (they are per thread) after it entered its namespace.
fn drop_thread_caps() -> io::Result<()> {
    sys::set_no_new_privs()?;
    sys::clear_ambient_caps()?;
    sys::capset(0)
}

impl NetnsWalker {
    /// Start the thread: it enters the namespace at `path`, reports the namespace's cookie once
    /// it has dropped its capabilities, then serves passes.
    fn spawn(path: &Path, link: Arc<OwnedFd>) -> Result<(NetnsWalker, u64), String> {
        let (ask_tx, ask_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let p = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("walk-netns".into())
            .spawn(move || {
                let setup = || -> io::Result<u64> {
                    let ns = File::open(&p)?;
                    sys::setns_net(ns.as_fd())?;
                    let cookie = sys::netns_cookie()?;
                    drop_thread_caps()?;
                    Ok(cookie)
                };
                let cookie = setup();
                let ok = cookie.is_ok();
                let _ = ready_tx.send(cookie);
                if !ok {
                    return;
                }
                while ask_rx.recv().is_ok() {
                    if done_tx.send(pass(link.as_fd())).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| format!("starting a thread for {}: {e}", path.display()))?;
        let cookie = ready_rx
            .recv()
            .map_err(|_| format!("the thread for {} ended before entering it", path.display()))
            .and_then(|r| r.map_err(|e| format!("entering {} (needs CAP_SYS_ADMIN): {e}", path.display())));
        let w = NetnsWalker { path: path.to_path_buf(), ask: Some(ask_tx), done: done_rx, thread: Some(thread) };
        cookie.map(|c| (w, c))
    }

    fn ask(&self) -> bool {
        // A late answer to a pass that timed out is not this pass's.
        while self.done.try_recv().is_ok() {}
        self.ask.as_ref().is_some_and(|a| a.send(()).is_ok())
    }

    fn wait(&self) -> Result<(), String> {
        match self.done.recv_timeout(PASS_TIMEOUT) {
            Ok(r) => r.map_err(|e| format!("walking {}: {e}", self.path.display())),
            Err(_) => Err(format!("walking {}: no answer within {PASS_TIMEOUT:?}", self.path.display())),
        }
    }
}

/// The walk: its iterator link, the threads in the other walked namespaces, and the idle floor
/// (the program's `WALK_FLOOR` map and what it is set from).
pub struct Walk {
    link: Arc<OwnedFd>,
    others: Vec<NetnsWalker>,
    floor_map: Array<MapData, u64>,
    floor: Floor,
    full_every: Duration,
}

impl Walk {
    /// Link the loaded walk program and enter the namespaces in `others`. Returns the walk and
    /// the cookies of the namespaces it walks (this process's own first); a namespace that
    /// cannot be entered is left out with a warning, its sockets fold from callbacks.
    /// `floor_map` is the program's `WALK_FLOOR`; every `full_every` a walk visits every socket.
    pub fn start(
        prog: BorrowedFd<'_>,
        others: &[PathBuf],
        floor_map: Array<MapData, u64>,
        full_every: Duration,
    ) -> Result<(Walk, Vec<u64>), String> {
        let own = sys::netns_cookie().map_err(|e| format!("reading this namespace's cookie (SO_NETNS_COOKIE): {e}"))?;
        let link = Arc::new(sys::bpf_iter_link(prog).map_err(|e| format!("linking the walk program: {e}"))?);
        let mut cookies = vec![own];
        let mut walkers = Vec::new();
        for path in others {
            match NetnsWalker::spawn(path, link.clone()) {
                Ok((w, cookie)) if !cookies.contains(&cookie) => {
                    cookies.push(cookie);
                    walkers.push(w);
                }
                Ok(_) => tracing::info!(netns = %path.display(), "walked already (the same namespace as another)"),
                Err(e) => tracing::warn!("{e}: its sockets fold from per-segment callbacks"),
            }
        }
        Ok((Walk { link, others: walkers, floor_map, floor: Floor::default(), full_every }, cookies))
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
        let asked: Vec<&NetnsWalker> = self.others.iter().filter(|w| w.ask()).collect();
        let mut errors = Vec::new();
        if let Err(e) = pass(self.link.as_fd()) {
            errors.push(format!("walking this process's namespace: {e}"));
        }
        for w in asked {
            if let Err(e) = w.wait() {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.floor.completed(now_us, full);
        Ok(())
    }

    pub fn namespaces(&self) -> usize {
        1 + self.others.len()
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

    #[test]
    fn zero_makes_every_walk_a_full_one() {
        let mut f = Floor::default();
        f.completed(100 * S, true);
        assert_eq!(f.for_walk(100 * S + 1, Duration::ZERO), 0);
    }
}
