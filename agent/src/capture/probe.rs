//! Read-only versions of what `Capture::start` needs, for `flow-agent check`: each returns what
//! it found, or what is wrong and how to fix it.

use std::path::{Path, PathBuf};

use super::{
    Attached, Capture,
    btf::Btf,
    cgroup,
    netns::{NsId, Scanner},
    privileges, tracefs,
};
use crate::config::Config;

/// A failed requirement: what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub problem: String,
    pub fix: String,
}

fn failure(problem: impl Into<String>, fix: impl Into<String>) -> Failure {
    Failure { problem: problem.into(), fix: fix.into() }
}

/// Effective capabilities enough to load and attach the programs.
pub fn capabilities() -> Result<String, Failure> {
    let missing = privileges::missing();
    if missing.is_empty() {
        return Ok(format!("effective set {:#x} allows loading and attaching", privileges::effective_caps()));
    }
    Err(failure(
        format!("missing {}", missing.join(", ")),
        "run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (systemd: AmbientCapabilities=; \
         Kubernetes: securityContext.capabilities.add; a binary: `setcap cap_bpf,cap_perfmon,cap_net_admin+ep`)",
    ))
}

/// What `--walk-netns-all` needs, CAP_SYS_ADMIN (to enter namespaces) and CAP_SYS_PTRACE (to
/// see which namespace another user's process is in), and how many namespaces it would find now.
pub fn walk_netns_all() -> Result<String, Failure> {
    let caps = privileges::effective_caps();
    let missing: Vec<&str> = [
        (privileges::CAP_SYS_ADMIN, "CAP_SYS_ADMIN (to enter namespaces)"),
        (privileges::CAP_SYS_PTRACE, "CAP_SYS_PTRACE (to see which namespace another user's process is in)"),
    ]
    .into_iter()
    .filter(|(c, _)| caps & (1u64 << c) == 0)
    .map(|(_, n)| n)
    .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut scanner = Scanner::default();
    let found = NsId::of(Path::new("/proc/self/ns/net"))
        .map(|own| scanner.scan(Path::new("/proc"), &mountinfo, own).len())
        .unwrap_or(0);
    let denied = match scanner.denied() {
        0 => String::new(),
        n => format!(" ({n} process(es) whose namespace could not be read: permission denied)"),
    };
    if missing.is_empty() {
        // Some may stay unreadable with both capabilities (a process with capabilities the agent
        // lacks, under some LSMs): the agent logs it once; a namespace they share with another
        // process is found through that one.
        return Ok(format!(
            "{found} network namespace(s) besides the agent's found now{denied}, each walked once found"
        ));
    }
    Err(failure(
        format!(
            "missing {}{denied}: namespaces it cannot find or enter fold from per-segment callbacks",
            missing.join(", ")
        ),
        "grant CAP_SYS_ADMIN and CAP_SYS_PTRACE (Kubernetes: securityContext.capabilities.add, with hostPID: true; \
         systemd: AmbientCapabilities= and CapabilityBoundingSet=, with RestrictNamespaces=net), or set \
         walk_netns_all = false",
    ))
}

/// The cgroup v2 directory the agent would attach to, without mounting anything.
pub fn cgroup2(explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            cgroup::find_cgroup2_mount(&mountinfo).ok_or_else(|| {
                failure(
                    "no cgroup v2 hierarchy is mounted (the agent would try to mount one at /run/flow-agent/cgroup2, which needs CAP_SYS_ADMIN)",
                    "mount one: `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup; in a container, mount the host's with a hostPath volume",
                )
            })?
        }
    };
    if !crate::sys::is_cgroup2(&path) || !path.join("cgroup.procs").exists() {
        return Err(failure(
            format!("{} is not a directory of a cgroup v2 hierarchy", path.display()),
            "pass --cgroup with a cgroup v2 directory (see `grep cgroup2 /proc/self/mountinfo`)",
        ));
    }
    Ok(path)
}

/// The SYN-ACK tracepoint: its BTF type (for the BTF tracepoint program), and the classic
/// tracepoint's format, readable and with the fields its program reads (tracefs is mounted
/// first if it is not, as the agent does at start, which needs CAP_SYS_ADMIN). Either is enough.
pub fn tracepoint() -> Result<String, Failure> {
    let btf = Btf::from_sys().ok().and_then(|b| b.typedef_id(super::loader::SYNACK_BTF_TYPE));
    match (btf, classic_tracepoint()) {
        (Some(_), Ok(c)) => Ok(format!("BTF tracepoint tcp_retransmit_synack found; fallback: {c}")),
        (Some(_), Err(f)) => Ok(format!(
            "BTF tracepoint tcp_retransmit_synack found; no fallback (tcp:tcp_retransmit_synack: {})",
            f.problem
        )),
        (None, Ok(c)) => Ok(format!(
            "{c}; no BTF tracepoint (its runs are skipped while another BPF program or BPF system call holds the CPU, \
             counted as missed_runs)"
        )),
        (None, Err(f)) => Err(f),
    }
}

fn classic_tracepoint() -> Result<String, Failure> {
    let mounted_before = Path::new(tracefs::TRACEFS).join("events").exists();
    let fix = "mount tracefs (`mount -t tracefs nodev /sys/kernel/tracing`; in a container, a hostPath volume) \
               and run as root or with CAP_DAC_READ_SEARCH";
    let o = tracefs::synack_offsets().map_err(|e| match e {
        super::CaptureError::TracepointFormat(m) if m.starts_with("cannot read") => failure(m, fix),
        super::CaptureError::TracepointFormat(m) => {
            failure(format!("tcp:tcp_retransmit_synack: {m}"), "this kernel's tracepoint layout is not supported")
        }
        other => failure(other.to_string(), fix),
    })?;
    let mounted = if mounted_before { "" } else { "; tracefs was not mounted: mounted it, as the agent does at start" };
    Ok(format!("tcp:tcp_retransmit_synack fields found (sport at offset {}){mounted}", o.sport))
}

/// Load the programs and attach them for a moment (detached again when this returns); not beside
/// another flow-agent on the same sockets, whose sockets' callback flags a program of ours would
/// change (`peers`), and which shows attaching works.
pub fn attach(cfg: &Config) -> Result<String, Failure> {
    if let Some(running) = another_agent(cfg) {
        return Ok(format!(
            "another flow-agent already runs for these sockets ({running}): attaching works here; not attached beside \
             it, which would change its sockets' callback flags"
        ));
    }
    let cfg = Config { max_sockets: 16, max_flows: 16, ..cfg.clone() };
    match Capture::start_for_check(&cfg) {
        Ok(capture) => {
            let walk = capture.walk_status();
            let synack = match capture.synack() {
                Attached::Tracepoint(Some(reason)) => {
                    format!("{} (the BTF tracepoint is NOT available: {reason})", capture.synack())
                }
                other => other.to_string(),
            };
            drop(capture);
            let walk = match walk {
                Some(Ok(n)) => format!("; the walk of open sockets runs in {n} network namespace(s)"),
                Some(Err(reason)) => format!(
                    "; the walk of open sockets is NOT available ({reason}): sockets fold from per-segment callbacks"
                ),
                None => "; fold_mode = callbacks".into(),
            };
            Ok(format!("sock_ops and {synack} loaded, attached and detached{walk}"))
        }
        Err(e) => Err(failure(e.to_string(), "fix the items above; the error names what the kernel refused")),
    }
}

/// Another flow-agent's sock_ops program on the sockets of the configured cgroup, if any (found
/// without mounting anything; None when it cannot be looked for).
fn another_agent(cfg: &Config) -> Option<String> {
    let cgroup = cgroup2(cfg.cgroup.as_deref()).ok()?;
    super::peers::attached(&std::fs::File::open(cgroup).ok()?).ok()?.agents_running()
}
