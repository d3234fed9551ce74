//! Running the walk of open sockets (`agent-ebpf/src/walk.rs`, an `iter/tcp` iterator) in every
//! walked network namespace. An `iter/tcp` pass sees the sockets of the namespace of the thread
//! that starts it, so this process's own namespace is walked from the caller's thread, and each
//! namespace given with `--walk-netns` from a thread of its own that entered it at start (with
//! CAP_SYS_ADMIN, which it then drops with every other capability).

use std::{
    fs::File,
    io::{self, Read},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use crate::sys;

/// Read retries of one pass: the kernel pauses an iterator (EAGAIN) after a million sockets
/// without output and resumes it at the next read.
const PASS_RETRIES: usize = 64;

/// Longest a pass in another namespace may take before the walk reports it as failed.
const PASS_TIMEOUT: Duration = Duration::from_secs(10);

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

/// The walk: its iterator link, and the threads in the other walked namespaces.
pub struct Walk {
    link: Arc<OwnedFd>,
    others: Vec<NetnsWalker>,
}

impl Walk {
    /// Link the loaded walk program and enter the namespaces in `others`. Returns the walk and
    /// the cookies of the namespaces it walks (this process's own first); a namespace that
    /// cannot be entered is left out with a warning, its sockets fold from callbacks.
    pub fn start(prog: BorrowedFd<'_>, others: &[PathBuf]) -> Result<(Walk, Vec<u64>), String> {
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
        Ok((Walk { link, others: walkers }, cookies))
    }

    /// One pass over every walked namespace, the others in parallel with this thread's own.
    pub fn run(&self) -> Result<(), String> {
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
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    pub fn namespaces(&self) -> usize {
        1 + self.others.len()
    }
}
