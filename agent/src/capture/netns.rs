//! Finding the host's network namespaces for `--walk-netns-all`: every namespace a process is in
//! (/proc/PID/ns/net) or a file is bound to (an nsfs mount, such as the /run/netns/NAME of
//! `ip netns add`), each known by its nsfs inode.

use std::{
    collections::HashMap,
    fs::File,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// A namespace: the device and inode its nsfs file stats to, the same through every path to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    /// The namespace `path` refers to.
    pub fn of(path: &Path) -> io::Result<NsId> {
        let m = std::fs::metadata(path)?;
        Ok(NsId { dev: m.dev(), ino: m.ino() })
    }

    /// The namespace a /proc/PID/ns/net link names (`net:[inode]`), on the nsfs device `dev`
    /// (there is one): half the cost of following the link, which `scan` does for every process.
    fn of_link(path: &Path, dev: u64) -> io::Result<NsId> {
        let target = std::fs::read_link(path)?;
        let ino = target
            .to_str()
            .and_then(|t| t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok())
            .ok_or_else(|| io::Error::other(format!("{} links to {}", path.display(), target.display())))?;
        Ok(NsId { dev, ino })
    }

    /// The namespace an open namespace file refers to.
    pub fn of_file(f: &File) -> io::Result<NsId> {
        let m = f.metadata()?;
        Ok(NsId { dev: m.dev(), ino: m.ino() })
    }
}

/// A scan's reading of a process's namespace link after its first sightings: read again only
/// once every `RECHECK_EVERY` scans (a process seldom changes namespace after it starts; the few
/// that do, such as `unshare -n CMD`, do it at once).
const SETTLED_AFTER: u8 = 2;
const RECHECK_EVERY: u32 = 16;

/// What a scan knows of a process.
struct Seen {
    ns: Option<NsId>,
    times: u8,
    /// Its link could not be read: permission denied (CAP_SYS_PTRACE missing, or an LSM).
    denied: bool,
}

/// Finds namespaces, remembering which one each process is in (`SETTLED_AFTER`), so that a scan
/// of a node's thousand processes reads about a hundred links, not a thousand.
#[derive(Default)]
pub struct Scanner {
    procs: HashMap<u32, Seen>,
    scans: u32,
}

impl Scanner {
    /// The namespaces that processes are in (`proc`/PID/ns/net) or that the mounts of
    /// `mountinfo` bind to a file, with one path to each (a mount's before a process's: it does
    /// not go away with a process, nor change meaning when its PID is reused), except `own`. A
    /// process that exits during the scan, or that this process may not inspect (another
    /// user's, without CAP_SYS_PTRACE), is left out.
    pub fn scan(&mut self, proc: &Path, mountinfo: &str, own: NsId) -> HashMap<NsId, PathBuf> {
        self.scans = self.scans.wrapping_add(1);
        let mut found = HashMap::new();
        for path in agent_common::mountinfo::net_namespace_mounts(mountinfo) {
            if let Ok(id) = NsId::of(&path) {
                found.entry(id).or_insert(path);
            }
        }
        let Ok(entries) = std::fs::read_dir(proc) else {
            self.procs.clear();
            found.remove(&own);
            return found;
        };
        let mut alive = std::collections::HashSet::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            alive.insert(pid);
            let path = e.path().join("ns/net");
            let seen = self.procs.entry(pid).or_insert(Seen { ns: None, times: 0, denied: false });
            if seen.times < SETTLED_AFTER || pid.wrapping_add(self.scans) % RECHECK_EVERY == 0 {
                let r = NsId::of_link(&path, own.dev);
                seen.denied = matches!(&r, Err(e) if e.kind() == io::ErrorKind::PermissionDenied);
                seen.ns = r.ok();
                seen.times = seen.times.saturating_add(1);
            }
            if let Some(id) = seen.ns {
                found.entry(id).or_insert(path);
            }
        }
        self.procs.retain(|pid, _| alive.contains(pid));
        found.remove(&own);
        found
    }

    /// Processes whose namespace the last scan could not read (permission denied): their
    /// namespaces are found only through another process or a bound file.
    pub fn denied(&self) -> usize {
        self.procs.values().filter(|s| s.denied).count()
    }
}

/// Whether the network namespace of thread `tid` of this process has a TCP socket that some
/// process holds (in this namespace or another: a socket stays where it was made) and that
/// can carry data: one the walk may still have to fold. Listening sockets and sockets no file
/// refers to (time-wait, orphans closing) are not. From its /proc/net/tcp and tcp6, which show
/// the reading task's namespace; an unreadable file counts as such a socket, so the caller keeps
/// walking.
pub fn has_held_sockets(tid: i32) -> bool {
    ["tcp", "tcp6"].iter().any(|f| match std::fs::read_to_string(format!("/proc/self/task/{tid}/net/{f}")) {
        Ok(text) => text.lines().skip(1).any(held_socket),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    })
}

/// A network namespace's table of TCP sockets (`net.ipv4.tcp_ehash_entries`): a walk of the
/// namespace scans every bucket of it, empty or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTable {
    pub buckets: u64,
    /// The namespace shares the host's table (it was made while the host's
    /// `net.ipv4.tcp_child_ehash_entries` was 0, the default) rather than having one of its own.
    pub shared: bool,
}

/// The calling thread's namespace's table, or None where the kernel does not say (before 6.1).
pub fn tcp_table() -> Option<TcpTable> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_ehash_entries").ok().as_deref().and_then(parse_tcp_table)
}

/// `tcp_ehash_entries` as the kernel shows it: negative for a namespace that shares the host's.
fn parse_tcp_table(text: &str) -> Option<TcpTable> {
    let n: i64 = text.trim().parse().ok()?;
    Some(TcpTable { buckets: n.unsigned_abs(), shared: n < 0 })
}

/// A /proc/net/tcp line (`sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...`) of a
/// socket that a file refers to (inode not 0) and that is not listening (state 0A).
fn held_socket(line: &str) -> bool {
    let f: Vec<&str> = line.split_whitespace().take(10).collect();
    f.len() == 10 && f[3] != "0A" && f[9] != "0"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_table_size_is_the_hosts_shared() {
        assert_eq!(parse_tcp_table("-262144\n"), Some(TcpTable { buckets: 262_144, shared: true }));
        assert_eq!(parse_tcp_table("4096\n"), Some(TcpTable { buckets: 4096, shared: false }));
        assert_eq!(parse_tcp_table("many"), None);
    }

    #[test]
    fn this_threads_table_is_read() {
        // Every kernel this agent supports (6.1 on) has the sysctl.
        let t = tcp_table().expect("net.ipv4.tcp_ehash_entries");
        assert!(t.buckets > 0, "{t:?}");
    }

    /// A directory laid out like /proc: numbered entries whose `ns/net` links to `net:[inode]`.
    fn fake_proc(pids: &[(&str, u64)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, ino) in pids {
            std::fs::create_dir_all(d.path().join(p).join("ns")).unwrap();
            std::os::unix::fs::symlink(format!("net:[{ino}]"), d.path().join(p).join("ns/net")).unwrap();
        }
        d
    }

    #[test]
    fn every_numbered_entry_is_a_process_and_the_own_namespace_is_left_out() {
        let d = fake_proc(&[("1", 100), ("42", 200), ("43", 200), ("self", 300), ("sys", 400)]);
        std::fs::create_dir_all(d.path().join("7")).unwrap(); // exited: no ns/net
        std::fs::create_dir_all(d.path().join("8/ns")).unwrap();
        std::os::unix::fs::symlink("mnt:[5]", d.path().join("8/ns/net")).unwrap(); // not a net link
        let own = NsId { dev: 4, ino: 100 };
        let found = Scanner::default().scan(d.path(), "", own);
        assert_eq!(found.len(), 1, "{found:?}");
        let (id, path) = found.iter().next().unwrap();
        assert_eq!(*id, NsId { dev: 4, ino: 200 }, "on the own namespace's device");
        assert!(path.ends_with("42/ns/net") || path.ends_with("43/ns/net"), "{}", path.display());
    }

    #[test]
    fn a_namespace_is_found_once_by_a_bound_file_before_a_process() {
        let bound = tempfile::NamedTempFile::new().unwrap();
        let id = NsId::of(bound.path()).unwrap();
        let d = fake_proc(&[("5", id.ino)]);
        let mountinfo = format!("48 45 0:4 net:[4026532174] {} rw shared:2 - nsfs nsfs rw\n", bound.path().display());
        let own = NsId { dev: id.dev, ino: 1 };
        let found = Scanner::default().scan(d.path(), &mountinfo, own);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), [(id, bound.path().to_path_buf())]);
    }

    #[test]
    fn a_process_is_read_at_its_first_sightings_then_now_and_then_and_forgotten_when_it_exits() {
        let d = fake_proc(&[("16", 200)]);
        let own = NsId { dev: 4, ino: 100 };
        let link = d.path().join("16/ns/net");
        let relink = |ino: u64| {
            std::fs::remove_file(&link).unwrap();
            std::os::unix::fs::symlink(format!("net:[{ino}]"), &link).unwrap();
        };
        let ids = |f: HashMap<NsId, PathBuf>| f.into_keys().map(|k| k.ino).collect::<Vec<_>>();
        let mut s = Scanner::default();
        assert_eq!(ids(s.scan(d.path(), "", own)), [200]);
        relink(300); // it moved right after it started: the second sighting reads it
        assert_eq!(ids(s.scan(d.path(), "", own)), [300]);
        relink(400); // settled: not read again until (pid + scans) % RECHECK_EVERY == 0
        let mut seen = Vec::new();
        for _ in 0..RECHECK_EVERY {
            seen.push(ids(s.scan(d.path(), "", own)));
        }
        assert!(seen[0] == [300] && seen.last().unwrap() == &[400], "{seen:?}");
        std::fs::remove_dir_all(d.path().join("16")).unwrap();
        assert!(s.scan(d.path(), "", own).is_empty());
        assert!(s.procs.is_empty(), "an exited process is forgotten");
    }

    #[test]
    fn a_missing_proc_finds_only_mounts() {
        let found = Scanner::default().scan(Path::new("/nonexistent/proc"), "", NsId { dev: 0, ino: 0 });
        assert!(found.is_empty());
    }

    #[test]
    fn only_sockets_a_process_holds_and_that_can_carry_data_keep_a_namespace_walked() {
        let listen = "   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1318 1 000000005a81c638 100 0 0 10 0";
        let time_wait = "   1: 020200C0:A504 FEA9FEA9:0050 06 00000000:00000000 03:0000124B 00000000     0        0 0 3 00000000de00a998";
        let open = "   2: 0100007F:1389 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 52117 1 00000000c0ffee00 20 4 30 10 -1";
        let orphan = "   3: 0100007F:1389 0100007F:C351 04 00000001:00000000 01:00000014 00000000     0        0 0 2 00000000c0ffee01";
        assert!(!held_socket(listen));
        assert!(!held_socket(time_wait));
        assert!(held_socket(open));
        assert!(!held_socket(orphan));
        assert!(!held_socket("  sl  local_address rem_address   st"), "a short line");
    }

    #[test]
    fn this_threads_namespace_has_a_held_socket_once_a_connection_is_open() {
        let tid = crate::sys::gettid();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        assert!(has_held_sockets(tid));
    }
}
