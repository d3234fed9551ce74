//! Other flow-agents whose sock_ops program already runs for the sockets this one would attach
//! to. Two agents on the same sockets share each socket's callback flags, where a socket keeps
//! whether it is walked and its role: each takes the other's sockets for ones an earlier run of
//! its own armed, the walk at start and the hand-overs change flags the other set, and where
//! their settings differ (the namespaces they walk, the fold mode) one's counts lose what the
//! other's flags hid from it. So the daemon does not start beside one (`flow-agent check`, which
//! changes no socket's flags, does).

use std::{
    fs::{self, File},
    io,
    os::fd::AsFd,
    path::Path,
};

use crate::sys;

/// The sock_ops program's name as the kernel keeps it (`flow_sock_ops`, agent-ebpf's
/// `sock_ops.rs`; at most 15 bytes).
const PROGRAM: &str = "flow_sock_ops";

/// Another agent's sock_ops program on the cgroup's sockets, and the processes holding it.
#[derive(Debug, PartialEq)]
pub struct Peer {
    pub prog_id: u32,
    pub pids: Vec<u32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pids.as_slice() {
            [] => write!(f, "program id {}, held by no process this one can see (pinned?)", self.prog_id),
            pids => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(f, "program id {}, held by pid {}", self.prog_id, pids.join(", "))
            }
        }
    }
}

/// The sock_ops programs that run for sockets of a cgroup.
#[derive(Debug, Default)]
pub struct Attached {
    /// Other flow-agents'.
    pub agents: Vec<Peer>,
    /// Programs whose name could not be read (it takes CAP_SYS_ADMIN, which the packaged systemd
    /// unit does not give): ids.
    pub unnamed: Vec<u32>,
}

impl Attached {
    /// The other flow-agents, each as `Peer` shows it, or None when there are none.
    pub fn agents_running(&self) -> Option<String> {
        let agents: Vec<String> = self.agents.iter().map(ToString::to_string).collect();
        (!agents.is_empty()).then(|| agents.join("; "))
    }
}

/// The sock_ops programs that run for sockets of `cgroup` (its own and those it inherits from
/// its ancestors; not those of its descendants), other flow-agents' and those whose name could not
/// be read. Needs CAP_NET_ADMIN (or CAP_SYS_ADMIN).
pub fn attached(cgroup: &File) -> io::Result<Attached> {
    let mut found = Attached::default();
    let mut agents = Vec::new();
    for id in sys::cgroup_sock_ops_programs(cgroup.as_fd())? {
        match sys::prog_name(id) {
            Ok(name) if name == PROGRAM => agents.push(id),
            Ok(_) => {}
            Err(_) => found.unnamed.push(id),
        }
    }
    if agents.is_empty() {
        return Ok(found);
    }
    let held = holders(Path::new("/proc"), &agents);
    found.agents = agents
        .into_iter()
        .map(|prog_id| Peer {
            prog_id,
            pids: held.iter().filter(|(id, _)| *id == prog_id).map(|&(_, pid)| pid).collect(),
        })
        .collect();
    Ok(found)
}

/// (program id, pid) for each process under `proc` holding a BPF link or program of `ids`, from
/// the `prog_id:` line the kernel shows in their fds' fdinfo. Processes that end meanwhile, or
/// whose fds cannot be read, are passed over.
fn holders(proc: &Path, ids: &[u32]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let Ok(procs) = fs::read_dir(proc) else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else { continue };
        let mut held: Vec<u32> = fds
            .flatten()
            .filter(|fd| fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().starts_with("anon_inode:bpf")))
            .filter_map(|fd| fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).ok())
            .filter_map(|info| prog_id(&info))
            .filter(|id| ids.contains(id))
            .collect();
        held.sort_unstable();
        held.dedup();
        out.extend(held.into_iter().map(|id| (id, pid)));
    }
    out
}

/// The `prog_id:` of a BPF link's or program's fdinfo.
fn prog_id(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_id_is_read_from_a_link_fdinfo_and_a_program_fdinfo() {
        let link = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nlink_type:\tcgroup\nlink_id:\t7\n\
                    prog_tag:\t4d1a2c9b2d3f6e11\nprog_id:\t42\ncgroup_id:\t1\nattach_type:\t3\n";
        assert_eq!(prog_id(link), Some(42));
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t13\nprog_jited:\t1\nprog_tag:\tab\nmemlock:\t4096\n\
                    prog_id:\t9\nrun_time_ns:\t0\nrun_cnt:\t0\n";
        assert_eq!(prog_id(prog), Some(9));
        assert_eq!(prog_id("pos:\t0\nflags:\t02\nmap_type:\t1\nmap_id:\t3\n"), None);
    }

    #[test]
    fn a_peer_names_its_program_and_the_processes_holding_it() {
        assert_eq!(Peer { prog_id: 42, pids: vec![7, 9] }.to_string(), "program id 42, held by pid 7, 9");
        assert_eq!(
            Peer { prog_id: 42, pids: vec![] }.to_string(),
            "program id 42, held by no process this one can see (pinned?)"
        );
    }
}
