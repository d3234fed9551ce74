//! What the benchmark creates on the host and must remove even on failure: network namespaces,
//! a cgroup holding every load process, child processes, and sysctl values it changed. Each is
//! a guard that undoes itself on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::output;

/// Prefix of every netns and cgroup the benchmark creates (left-overs of a killed run are removed
/// at the next start).
pub const PREFIX: &str = "flowbench";

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_root() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            post.starts_with("cgroup2 ").then(|| PathBuf::from(mount))
        })
        .context("no cgroup2 filesystem mounted")
}

/// Remove netns and cgroups a killed earlier run left behind.
pub fn remove_leftovers() {
    if let Ok(out) = output(Command::new("ip").args(["netns", "list"])) {
        for name in out.lines().filter_map(|l| l.split_whitespace().next()).filter(|n| n.starts_with(PREFIX)) {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
    if let Ok(root) = cgroup2_root()
        && let Ok(dir) = fs::read_dir(&root)
    {
        for e in dir.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(PREFIX)) {
            let _ = Cgroup { path: e.path() }.teardown();
        }
    }
}

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(suffix: &str) -> Result<Netns> {
        let name = format!("{PREFIX}-{suffix}-{}", std::process::id());
        output(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        // Room for a connection storm: the whole port range, and TIME_WAIT reuse on the client.
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])?;
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])?;
        ns.exec(&["sysctl", "-q", "-w", "net.core.somaxconn=65535"])?;
        ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_max_syn_backlog=65535"])?;
        Ok(ns)
    }

    pub fn exec(&self, args: &[&str]) -> Result<String> {
        output(Command::new("ip").args(["netns", "exec", &self.name]).args(args))
    }

    /// TcpActiveOpens and TcpPassiveOpens of this namespace (/proc/net/snmp).
    pub fn opens(&self) -> Result<(u64, u64)> {
        let snmp = self.exec(&["cat", "/proc/net/snmp"])?;
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().context("no Tcp header")?, tcp.next().context("no Tcp values")?);
        let field = |n: &str| -> Result<u64> {
            let i = names.split_whitespace().position(|f| f == n).with_context(|| format!("no {n} in snmp"))?;
            Ok(values.split_whitespace().nth(i).context("short Tcp line")?.parse()?)
        };
        Ok((field("ActiveOpens")?, field("PassiveOpens")?))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Two namespaces joined by a veth pair: `a` holds 10.201.N.1, `b` (the server) 10.201.N.2, where
/// N is the pair's `subnet` (a twin workload's pair is another one, see `Env::new`).
pub struct VethPair {
    pub a: Netns,
    pub b: Netns,
    /// `b`'s address.
    pub server: String,
}

impl VethPair {
    /// `tag` tells the names of a twin's pair apart (netns and devices), `subnet` its addresses.
    pub fn new(tag: &str, subnet: u8) -> Result<VethPair> {
        let (a, b) = (Netns::new(&format!("{tag}a"))?, Netns::new(&format!("{tag}b"))?);
        let pid = std::process::id();
        // Interface names have at most 15 bytes: "fb" + pid (<= 7 digits) + tag + 1.
        let (va, vb) = (format!("fb{pid}{tag}a"), format!("fb{pid}{tag}b"));
        output(Command::new("ip").args(["link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb]))?;
        output(Command::new("ip").args(["link", "set", &vb, "netns", &b.name]))?;
        let (ipa, ipb) = (format!("10.201.{subnet}.1"), format!("10.201.{subnet}.2"));
        for (ns, dev, ip) in [(&a, &va, &ipa), (&b, &vb, &ipb)] {
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            ns.exec(&["ip", "link", "set", dev, "up"])?;
        }
        Ok(VethPair { a, b, server: ipb })
    }
}

/// A cgroup v2 directory under the root; its processes are killed and it is removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new(suffix: &str) -> Result<Cgroup> {
        let path = cgroup2_root()?.join(format!("{PREFIX}-{}{suffix}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup { path })
    }

    fn teardown(&self) -> Result<()> {
        // Only processes the benchmark started live here.
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: cannot remove cgroup {}: {e}", self.path.display());
        }
    }
}

/// A command run inside `cgroup` and `ns`. The shell joins the cgroup first (`ip netns exec`
/// mounts a sysfs of the namespace's own, without the cgroup2 mount), then execs into the netns.
pub fn command_in(ns: &Netns, cgroup: &Cgroup, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@""#])
        .arg(&cgroup.path)
        .arg(&ns.name)
        .arg(program)
        .args(args);
    c
}

/// A child killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command, what: &str) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("starting {what}: {cmd:?}"))?;
        Ok(Proc { child })
    }

    pub fn quiet(mut cmd: Command, what: &str) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        Proc::spawn(cmd, what)
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A sysctl set for the benchmark, restored on drop.
pub struct Sysctl {
    path: PathBuf,
    old: String,
}

impl Sysctl {
    pub fn set(path: &str, value: &str) -> Result<Sysctl> {
        let path = Path::new(path).to_path_buf();
        let old = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        Ok(Sysctl { path, old })
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(&self.path, self.old.trim());
    }
}

/// Wait until `ready` holds, polling, or fail after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
