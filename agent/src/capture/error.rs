use std::path::PathBuf;

/// Why capture could not start or read. Each names what is missing and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("missing privileges: {0}")]
    Privileges(String),
    #[error(
        "no cgroup v2 hierarchy is mounted and mounting one at {path} failed: {source} (mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup)"
    )]
    MountCgroup { path: PathBuf, source: std::io::Error },
    #[error("cgroup {path} cannot be opened: {source} (it must be a directory of a cgroup v2 hierarchy)")]
    OpenCgroup { path: PathBuf, source: std::io::Error },
    #[error("{path} is not in a cgroup v2 hierarchy (sock_ops programs attach only to cgroup v2)")]
    NotCgroup2 { path: PathBuf },
    #[error(
        "tracefs is not mounted and mounting it at {path} failed: {source} (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)"
    )]
    MountTracefs { path: PathBuf, source: std::io::Error },
    #[error("tracepoint tcp:tcp_retransmit_synack: {0}")]
    TracepointFormat(String),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("{what} failed: {source}{hint}")]
    Program { what: String, source: aya::programs::ProgramError, hint: &'static str },
    #[error("eBPF map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("the walk of open sockets: {0}")]
    Walk(String),
    #[error("duplicating a loaded program's file descriptor: {0}")]
    DupProgram(#[source] std::io::Error),
    #[error(
        "another flow-agent already runs for the sockets of cgroup {cgroup} ({peers}): two agents on the same sockets share each socket's callback flags and change each other's counts; stop it first (systemctl stop flow-agent), or give this one --cgroup of a cgroup outside its cgroup"
    )]
    OtherAgent { cgroup: PathBuf, peers: String },
    #[error("connection records: {0}")]
    Records(String),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
}
