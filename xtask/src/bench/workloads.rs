//! The workloads: each sets up its namespaces, cgroup and servers once, then runs its load
//! generator once per benchmark run and says what the generator achieved.
//!
//! * storm: nginx (own config, one worker) on loopback in a netns, wrk with `Connection: close`,
//!   one wrk thread per CPU (`Env::wrk_threads`);
//!   storm-server: the same with only nginx in the monitored cgroup (a server host's view: one
//!   monitored socket per connection instead of two);
//! * keepalive: the same with keep-alive connections;
//! * bulk: iperf3 through a veth pair between two namespaces, 1 or 16 streams;
//! * idle: 100,000 established loopback connections held open, spread over 8 client and 8
//!   server processes (the per-process open-file limit is 20,000), made by this binary's own
//!   `__idle-server` / `__idle-client` helpers.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::sandbox::{Cgroup, Netns, Proc, VethPair, command_in, wait_for};

const NGINX_PORT: u16 = 8080;
const WRK_CONNECTIONS: u32 = 64;
const IDLE_CONNECTIONS: u32 = 100_000;
const IDLE_PROCESSES: u32 = 8;
const IDLE_BASE_PORT: u16 = 9000;

/// wrk's threads per copy in the twin runs: the two copies share the CPUs, and the threads of the
/// load alone (at least one each).
pub fn twin_wrk_threads(alone: usize) -> usize {
    (alone / 2).max(1)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Storm,
    /// The storm with wrk outside the monitored cgroup.
    StormServer,
    KeepAlive,
    Bulk(u32),
    Idle,
}

impl Kind {
    /// Every workload, in the order `bench` runs them by default.
    pub const ALL: [Kind; 6] =
        [Kind::Storm, Kind::StormServer, Kind::KeepAlive, Kind::Bulk(1), Kind::Bulk(16), Kind::Idle];

    pub fn name(self) -> String {
        match self {
            Kind::Storm => "connection storm".into(),
            Kind::StormServer => "connection storm, server side only".into(),
            Kind::KeepAlive => "keep-alive requests".into(),
            Kind::Bulk(1) => "bulk, 1 stream".into(),
            Kind::Bulk(n) => format!("bulk, {n} streams"),
            Kind::Idle => "idle sockets".into(),
        }
    }

    pub fn id(self) -> String {
        match self {
            Kind::Storm => "storm".into(),
            Kind::StormServer => "storm-server".into(),
            Kind::KeepAlive => "keepalive".into(),
            Kind::Bulk(n) => format!("bulk{n}"),
            Kind::Idle => "idle".into(),
        }
    }

    /// Whether the connecting side is in the monitored cgroup too.
    pub fn client_monitored(self) -> bool {
        self != Kind::StormServer
    }

    /// Whether the workload also runs as twins (`Env::new`, `twin`): two copies at once, one
    /// monitored. Not the idle sockets: their figure is memory, not throughput.
    pub fn twinned(self) -> bool {
        self != Kind::Idle
    }

    /// Whether the twins' copies are pinned to a half of the CPUs each (`bench::twins`).
    pub fn pinned_twins(self) -> bool {
        matches!(self, Kind::Bulk(_))
    }

    /// SOCKETS map size for the agent: both ends of every idle connection are in the cgroup.
    pub fn max_sockets(self) -> u32 {
        match self {
            Kind::Idle => 262_144,
            _ => 65_536,
        }
    }
}

/// What the load generator achieved in one run.
#[derive(Clone, Debug, Default)]
pub struct Load {
    pub throughput: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: u64,
}

/// One workload's fixed parts. Fields drop in order: servers, then cgroups, then namespaces.
pub struct Env {
    pub kind: Kind,
    servers: Vec<Proc>,
    /// The monitored cgroup.
    pub cgroup: Cgroup,
    /// Where load generators run when they are not monitored.
    unmonitored: Cgroup,
    ns: Vec<Netns>,
    dir: PathBuf,
    /// The bulk server's address (the veth pair's `b` end).
    server_ip: String,
    /// CPUs the load is pinned to (a `taskset` list), if any: see `pin`.
    cpus: Option<String>,
    /// wrk's threads (`-t`): by default one per CPU for a workload alone, so that the storm runs at
    /// the machine's maximum rate. One thread leaves a CPU ~40% idle and makes 25-30% fewer
    /// requests than two, the agent's per-request work then landing on that thread's CPU alone
    /// (docs/performance.md, "The storm at the machine's maximum rate").
    pub wrk_threads: usize,
}

impl Env {
    /// The workload's namespaces, cgroups and servers. A `twin` is a second copy with names,
    /// addresses and files of its own, to run at the same time as the first (`bench::twins`).
    pub fn new(kind: Kind, dir: &Path, twin: bool, wrk_threads: usize) -> Result<Env> {
        let tag = if twin { "twin" } else { "" };
        let cgroup = Cgroup::new(tag)?;
        let unmonitored = Cgroup::new(&format!("{tag}-load"))?;
        let dir = if twin { dir.join("twin") } else { dir.to_path_buf() };
        fs::create_dir_all(&dir)?;
        let mut server_ip = String::new();
        let ns = match kind {
            Kind::Bulk(_) => {
                let p = if twin { VethPair::new("t", 1)? } else { VethPair::new("", 0)? };
                server_ip = p.server;
                vec![p.a, p.b]
            }
            _ => vec![Netns::new(&format!("{}{tag}", kind.id()))?],
        };
        let mut env =
            Env { kind, servers: Vec::new(), cgroup, unmonitored, ns, dir, server_ip, cpus: None, wrk_threads };
        match kind {
            Kind::Storm | Kind::StormServer | Kind::KeepAlive => {
                let conf = nginx_conf(&env.dir)?;
                let nginx = command_in(&env.ns[0], &env.cgroup, "nginx", &["-p", &path(&env.dir), "-c", &path(&conf)]);
                env.servers.push(Proc::quiet(nginx, "nginx")?);
                env.wait_port(&env.ns[0], NGINX_PORT)?;
            }
            Kind::Bulk(_) => {
                let iperf = command_in(&env.ns[1], &env.cgroup, "iperf3", &["-s", "-B", &env.server_ip, "-p", "5201"]);
                env.servers.push(Proc::quiet(iperf, "iperf3 -s")?);
                env.wait_port(&env.ns[1], 5201)?;
            }
            Kind::Idle => {}
        }
        Ok(env)
    }

    /// Pin the workload (its servers now, its load generators at each run) to the CPUs `cpus`
    /// (a `taskset` list), or let it run anywhere again (`None`).
    pub fn pin(&mut self, cpus: Option<&str>) -> Result<()> {
        let list = cpus.map_or_else(|| format!("0-{}", crate::bench::report::cpus() - 1), str::to_string);
        for s in &self.servers {
            let pid = s.child.id().to_string();
            let out =
                Command::new("taskset").args(["-a", "-p", "-c", &list, &pid]).output().context("running taskset")?;
            if !out.status.success() {
                bail!("taskset -a -p -c {list} {pid}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        self.cpus = cpus.map(str::to_string);
        Ok(())
    }

    /// `command_in`, pinned to `self.cpus` if set.
    fn load_command(&self, ns: &Netns, cgroup: &Cgroup, program: &str, args: &[&str]) -> Command {
        match &self.cpus {
            None => command_in(ns, cgroup, program, args),
            Some(c) => {
                let mut a = vec!["-c", c.as_str(), program];
                a.extend_from_slice(args);
                command_in(ns, cgroup, "taskset", &a)
            }
        }
    }

    /// Names of the workload's network namespaces.
    pub fn netns(&self) -> Vec<String> {
        self.ns.iter().map(|n| n.name.clone()).collect()
    }

    fn wait_port(&self, ns: &Netns, port: u16) -> Result<()> {
        wait_for(&format!("a listener on port {port}"), Duration::from_secs(10), || {
            ns.exec(&["ss", "-Htln", &format!("sport = :{port}")]).is_ok_and(|o| !o.trim().is_empty())
        })
    }

    /// (TcpActiveOpens, TcpPassiveOpens) summed over the workload's namespaces.
    pub fn opens(&self) -> Result<(u64, u64)> {
        let mut t = (0, 0);
        for ns in &self.ns {
            let (a, p) = ns.opens()?;
            t = (t.0 + a, t.1 + p);
        }
        Ok(t)
    }

    /// One run of the load generator, `secs` long (idle: held open that long).
    pub fn run(&mut self, secs: u64) -> Result<Load> {
        match self.kind {
            Kind::Storm | Kind::StormServer => self.wrk(secs, true),
            Kind::KeepAlive => self.wrk(secs, false),
            Kind::Bulk(streams) => self.iperf(secs, streams),
            Kind::Idle => self.idle(secs),
        }
    }

    fn wrk(&self, secs: u64, close: bool) -> Result<Load> {
        let mut args = vec![
            format!("-t{}", self.wrk_threads),
            format!("-c{WRK_CONNECTIONS}"),
            format!("-d{secs}s"),
            "--latency".into(),
        ];
        if close {
            args.extend(["-H".into(), "Connection: close".into()]);
        }
        args.push(format!("http://127.0.0.1:{NGINX_PORT}/"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cg = if self.kind.client_monitored() { &self.cgroup } else { &self.unmonitored };
        let out = self.load_command(&self.ns[0], cg, "wrk", &args).output().context("running wrk")?;
        if !out.status.success() {
            bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        parse_wrk(&String::from_utf8_lossy(&out.stdout))
    }

    fn iperf(&self, secs: u64, streams: u32) -> Result<Load> {
        let args = ["-c", &self.server_ip, "-p", "5201", "-t", &secs.to_string(), "-P", &streams.to_string(), "-J"];
        let out = self.load_command(&self.ns[0], &self.cgroup, "iperf3", &args).output().context("running iperf3")?;
        let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output is not JSON")?;
        if let Some(e) = v["error"].as_str() {
            bail!("iperf3: {e}");
        }
        let bps =
            v["end"]["sum_received"]["bits_per_second"].as_f64().context("no end.sum_received in iperf3 output")?;
        let retrans = v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
        Ok(Load { throughput: bps / 1e9, p50_us: None, p99_us: None, errors: retrans })
    }

    fn idle(&self, hold_secs: u64) -> Result<Load> {
        let exe = std::env::current_exe()?.display().to_string();
        let per = IDLE_CONNECTIONS / IDLE_PROCESSES;
        let ns = &self.ns[0];
        let mut servers = Vec::new();
        for i in 0..IDLE_PROCESSES {
            let port = (IDLE_BASE_PORT + i as u16).to_string();
            let mut cmd = command_in(ns, &self.cgroup, &exe, &["__idle-server", &port]);
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::inherit());
            servers.push(Proc::spawn(cmd, "idle server")?);
        }
        for i in 0..IDLE_PROCESSES {
            self.wait_port(ns, IDLE_BASE_PORT + i as u16)?;
        }
        let t = Instant::now();
        let mut clients = Vec::new();
        for i in 0..IDLE_PROCESSES {
            let port = (IDLE_BASE_PORT + i as u16).to_string();
            let mut cmd = command_in(ns, &self.cgroup, &exe, &["__idle-client", &port, &per.to_string()]);
            cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit());
            clients.push(Proc::spawn(cmd, "idle client")?);
        }
        for c in &mut clients {
            let out = c.child.stdout.take().context("no client stdout")?;
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line)?;
            if line.trim() != "ready" {
                bail!("idle client failed before opening its connections");
            }
        }
        let setup = t.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(hold_secs));
        // Servers first: the side that closes first keeps TIME_WAIT, and server ports are fixed.
        drop(servers);
        std::thread::sleep(Duration::from_millis(500));
        drop(clients);
        std::thread::sleep(Duration::from_secs(1));
        Ok(Load { throughput: (per * IDLE_PROCESSES) as f64 / setup, p50_us: None, p99_us: None, errors: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// nginx serving a 3-byte body on loopback: one worker, no master, no access log, everything
/// under `dir` (no system config, no system service).
fn nginx_conf(dir: &Path) -> Result<PathBuf> {
    let d = path(dir);
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\npid {d}/nginx.pid;\n\
         error_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; multi_accept on; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         keepalive_requests 100000000;\n  \
         server {{\n    listen 127.0.0.1:{NGINX_PORT} backlog=4096;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n"
    );
    let p = dir.join("nginx.conf");
    fs::write(&p, conf)?;
    Ok(p)
}

/// Requests/s, p50 and p99 (µs) and socket errors from `wrk --latency`.
pub fn parse_wrk(out: &str) -> Result<Load> {
    let mut load = Load::default();
    let mut in_dist = false;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            load.throughput = v.trim().parse().context("bad Requests/sec")?;
        } else if line.starts_with("Latency Distribution") {
            in_dist = true;
        } else if in_dist && let Some((pct, v)) = line.split_once(char::is_whitespace) {
            match pct {
                "50%" => load.p50_us = Some(duration_us(v.trim())?),
                "99%" => {
                    load.p99_us = Some(duration_us(v.trim())?);
                    in_dist = false;
                }
                _ => {}
            }
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            load.errors = v.split(',').filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
        }
    }
    if load.throughput == 0.0 {
        bail!("no Requests/sec in wrk output:\n{out}");
    }
    Ok(load)
}

fn duration_us(v: &str) -> Result<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {v:?}"))?;
    let n: f64 = v[..split].parse()?;
    Ok(match &v[split..] {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        u => bail!("unknown unit {u:?} in wrk output"),
    })
}

/// `xtask __idle-server PORT`: accept connections and hold them until killed.
/// `xtask __idle-client PORT N`: open N connections to 127.0.0.1:PORT, print "ready", hold them.
pub fn idle_helper(args: &[String]) -> Result<()> {
    let port: u16 = args.get(1).context("port")?.parse()?;
    match args.first().map(String::as_str) {
        Some("__idle-server") => {
            let l = TcpListener::bind(("127.0.0.1", port))?;
            let mut held = Vec::new();
            loop {
                held.push(l.accept()?.0);
            }
        }
        Some("__idle-client") => {
            let n: usize = args.get(2).context("count")?.parse()?;
            let mut held = Vec::with_capacity(n);
            for i in 0..n {
                held.push(TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connection {i}"))?);
            }
            let mut out = std::io::stdout();
            writeln!(out, "ready")?;
            out.flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => bail!("unknown helper"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output() {
        let out = "Running 5s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms    1.00ms  20.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    4.00ms
     90%    5.00ms
     99%    1.20s
  50000 requests in 5.00s, 7.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
Requests/sec:  10000.50
Transfer/sec:      1.40MB
";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.throughput, 10000.5);
        assert_eq!(l.p50_us, Some(850.0));
        assert_eq!(l.p99_us, Some(1.2e6));
        assert_eq!(l.errors, 5);
    }
}
