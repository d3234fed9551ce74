//! Test hosts for the kernel tests: two network namespaces joined by a veth pair, a cgroup of
//! their own (so the agent under test sees exactly this test's sockets), traffic from
//! `traffic.py`, and the kernel's own per-namespace counters as the oracle.
#![allow(dead_code)]

pub mod fake_imds;
pub mod prometheus;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use agent_common::report::{FlowMetrics, FlowRecord, Report, Role};

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Gate for tests that need root. Skips (saying so) only with FLOW_AGENT_SKIP_PRIVILEGED=1;
/// otherwise fails when not root. The guard serializes the kernel tests: timing-sensitive
/// checks (RTT) are not run against each other on a 2-core machine.
pub fn privileged(test: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var("FLOW_AGENT_SKIP_PRIVILEGED").is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: FLOW_AGENT_SKIP_PRIVILEGED=1");
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{test} needs root (network namespaces, eBPF); run as root or set FLOW_AGENT_SKIP_PRIVILEGED=1"
    );
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(cmd).output().expect("bash runs");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    agent_common::mountinfo::find_cgroup2_mount(&mi).expect("a cgroup v2 hierarchy is mounted")
}

pub struct Lab {
    pub a: String,
    pub b: String,
    pub cgroup: PathBuf,
    pub a4: &'static str,
    pub b4: &'static str,
    pub a6: &'static str,
    pub b6: &'static str,
}

impl Lab {
    pub fn new() -> Lab {
        let id = format!("{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::SeqCst));
        let (a, b) = (format!("fta{id}"), format!("ftb{id}"));
        let cgroup = cgroup2_root().join(format!("flow-agent-test-{id}"));
        std::fs::create_dir(&cgroup).expect("create test cgroup");
        let lab = Lab { a, b, cgroup, a4: "10.77.0.1", b4: "10.77.0.2", a6: "fd77::1", b6: "fd77::2" };
        let (a, b) = (&lab.a, &lab.b);
        sh(&format!(
            "set -e
             ip netns add {a}; ip netns add {b}
             ip link add va{id} netns {a} type veth peer name vb{id} netns {b}
             ip -n {a} link set lo up; ip -n {b} link set lo up
             ip -n {a} addr add 10.77.0.1/24 dev va{id}; ip -n {b} addr add 10.77.0.2/24 dev vb{id}
             ip -n {a} -6 addr add fd77::1/64 dev va{id} nodad; ip -n {b} -6 addr add fd77::2/64 dev vb{id} nodad
             ip -n {a} link set va{id} up; ip -n {b} link set vb{id} up"
        ));
        lab
    }

    /// A command run inside namespace `ns` and inside the test cgroup.
    pub fn cmd(&self, ns: &str, argv: &[&str]) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c")
            .arg(r#"echo $$ > "$CG/cgroup.procs" && exec ip netns exec "$NS" "$@""#)
            .arg("bash")
            .args(argv)
            .env("CG", &self.cgroup)
            .env("NS", ns);
        c
    }

    /// Start traffic.py in `ns`; for `serve`, returns once it is listening.
    pub fn traffic(&self, ns: &str, args: &[&str]) -> Traffic {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/traffic.py");
        let mut argv = vec!["python3", script.to_str().unwrap()];
        argv.extend_from_slice(args);
        let mut child = self.cmd(ns, &argv).stdout(Stdio::piped()).spawn().expect("spawn traffic.py");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        if args.first() == Some(&"serve") {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert!(line.contains("ready"), "server did not start: {line:?}");
        }
        Traffic { child, out }
    }

    /// The namespace's kernel counters (`nstat -asz`), e.g. "TcpRetransSegs".
    pub fn nstat(&self, ns: &str) -> HashMap<String, u64> {
        let out = sh(&format!("ip netns exec {ns} nstat -asz --json"));
        let v: serde_json::Value = serde_json::from_str(&out).expect("nstat json");
        v["kernel"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()
    }

    /// Add an input-hook table `table` with one rule to namespace `ns`.
    pub fn nft_input_rule(&self, ns: &str, table: &str, rule: &str) {
        let ruleset =
            format!("table inet {table} {{\n chain in {{\n  type filter hook input priority 0;\n  {rule}\n }}\n}}\n");
        let mut c =
            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(ruleset.as_bytes()).unwrap();
        assert!(c.wait().unwrap().success(), "nft failed for ruleset:\n{ruleset}");
    }

    /// Drop `percent`% of the segments that carry data (longer than any header-only segment), at
    /// random, on input in both namespaces: loss both ways, handshakes untouched.
    pub fn lose_data_segments_both_ways(&self, percent: u32) {
        let drop = format!("meta l4proto tcp meta length > 200 numgen random mod 100 < {percent} drop");
        self.nft_input_rule(&self.a, "loss", &drop);
        self.nft_input_rule(&self.b, "loss", &drop);
    }

    /// Wait until no TCP socket but listeners and TIME-WAIT is left in either namespace.
    pub fn wait_sockets_closed(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let busy: String = [&self.a, &self.b]
                .iter()
                .map(|ns| sh(&format!("ip netns exec {ns} ss -Htan | grep -v -e LISTEN -e TIME-WAIT || true")))
                .collect();
            if busy.trim().is_empty() {
                return;
            }
            assert!(start.elapsed() < timeout, "sockets still open after {timeout:?}:\n{busy}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

pub struct Traffic {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Drop for Traffic {
    /// A failed test must not leave its traffic running.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Traffic {
    /// Wait for the program's result line.
    pub fn result(mut self) -> serde_json::Value {
        let mut line = String::new();
        // The traffic is bounded by its own arguments; reading its one line blocks until done.
        self.out.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "traffic.py failed ({status}); output {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("traffic.py printed {line:?}: {e}"))
    }
}

pub fn delta(before: &HashMap<String, u64>, after: &HashMap<String, u64>, key: &str) -> u64 {
    after.get(key).copied().unwrap_or(0) - before.get(key).copied().unwrap_or(0)
}

/// A running `flow-agent --dry-run` attached to the lab's cgroup.
pub struct Agent {
    child: Child,
    stdout: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
    /// Holds this agent's control socket (so agents never share /run/flow-agent).
    control_dir: tempfile::TempDir,
    /// Where /healthz and /metrics are served (from the agent's log).
    metrics_addr: Option<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Agent {
    pub fn start(lab: &Lab, extra: &[&str]) -> Agent {
        Agent::start_with(lab, &["--dry-run"], extra)
    }

    /// `mode`: "--dry-run", or nothing when `extra` configures another sink (flow logs).
    pub fn start_with(lab: &Lab, mode: &[&str], extra: &[&str]) -> Agent {
        Agent::start_full(lab, None, mode, extra, &[])
    }

    /// `start_with`, with these environment variables set for the agent.
    pub fn start_env(lab: &Lab, mode: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_full(lab, None, mode, extra, env)
    }

    /// As `start_with`, inside network namespace `netns` (if any) and with extra environment
    /// variables (e.g. AWS_EC2_METADATA_SERVICE_ENDPOINT for a fake IMDS).
    pub fn start_full(lab: &Lab, netns: Option<&str>, mode: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_walking(lab, netns, mode, extra, env, true)
    }

    /// `start`, walking the agent's own namespace only: the lab's are not given with
    /// `--walk-netns`, so their sockets fold from callbacks.
    pub fn start_unwalked(lab: &Lab, extra: &[&str]) -> Agent {
        Agent::start_walking(lab, None, &["--dry-run"], extra, &[], false)
    }

    /// `start_full`; `walk_lab`: whether the lab's namespaces are given with `--walk-netns`.
    fn start_walking(
        lab: &Lab,
        netns: Option<&str>,
        mode: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
        walk_lab: bool,
    ) -> Agent {
        let control_dir = tempfile::tempdir().expect("control socket directory");
        // Traversable, so that tests can try the socket as other users.
        std::fs::set_permissions(control_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let bin = env!("CARGO_BIN_EXE_flow-agent");
        let mut cmd = match netns {
            // nsenter switches only the network namespace: `ip netns exec` would also remount
            // /sys, hiding the cgroup2 mount the lab's cgroup lives in.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .envs(env.iter().copied())
            .args(mode)
            .args(["--report-interval", "1s", "--aggregate-interval", "500ms"])
            // The lab's namespaces are walked (the default fold mode's fast path) unless the test
            // says otherwise; other sockets fold from callbacks.
            .args(
                [&lab.a, &lab.b]
                    .into_iter()
                    .filter(|_| walk_lab)
                    .flat_map(|ns| ["--walk-netns".to_string(), format!("/run/netns/{ns}")]),
            )
            .args(["--metrics-address", "127.0.0.1:0", "--cgroup"])
            .arg(&lab.cgroup)
            .arg("--control-socket")
            .arg(control_dir.path().join("control.sock"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flow-agent");
        let out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).collect());
        let err = child.stderr.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        let (no_walk_tx, no_walk_rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if line.contains("the walk of open sockets is not available") {
                    let _ = no_walk_tx.send(line.clone());
                }
                if line.contains("health endpoint listening")
                    && let Some(a) = line.split("address=").nth(1)
                {
                    let _ = addr_tx.send(a.split_whitespace().next().unwrap_or("").to_string());
                }
                if line.contains("capturing") {
                    let _ = ready_tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flow-agent did not start:\n{}", stderr.join().unwrap());
        }
        // A test of the walk that ran in callback mode (its program refused by the verifier, say)
        // would pass on callbacks' counts, which are exact too, and test nothing of the walk.
        if walk_lab && let Ok(line) = no_walk_rx.try_recv() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flow-agent fell back from the walk: {line}");
        }
        let metrics_addr = addr_rx.try_recv().ok();
        Agent { child, stdout: Some(stdout), stderr: Some(stderr), control_dir, metrics_addr }
    }

    /// GET /metrics: the Prometheus text.
    pub fn metrics(&self) -> String {
        use std::io::Read;
        let addr = self.metrics_addr.as_deref().expect("the agent logged its metrics address");
        let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
        out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
    }

    /// One sample of /metrics (`name{labels}` as printed); 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// SIGKILL: no flush, no shutdown; then every line it printed on stdout.
    pub fn kill9(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let _ = self.stderr.take().unwrap().join();
        self.stdout.take().unwrap().join().unwrap()
    }

    /// SIGTERM; stdout lines and the log. Fails if the agent did not exit 0.
    pub fn stop_with_log(mut self) -> (Vec<String>, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let lines = self.stdout.take().unwrap().join().unwrap();
        let log = self.stderr.take().unwrap().join().unwrap();
        assert!(status.success(), "flow-agent exited with {status}:\n{log}");
        (lines, log)
    }

    pub fn control_socket(&self) -> PathBuf {
        self.control_dir.path().join("control.sock")
    }

    /// Wait long enough for a tick (every 500 ms) to drain what the kernel folded at the very
    /// end, as every stop but `stop_with_log` and `stop_reports_with_log` does first.
    pub fn settle(&self) {
        std::thread::sleep(Duration::from_millis(700));
    }

    /// `settle`, SIGTERM, then every line it printed on stdout.
    pub fn stop_lines(self) -> Vec<String> {
        self.settle();
        self.stop_with_log().0
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `settle`, SIGTERM (which flushes the partial window), then every report it printed.
    pub fn stop(self) -> Vec<Report> {
        reports(&self.stop_lines())
    }

    /// SIGTERM (no `settle`), every report it printed and its log.
    pub fn stop_reports_with_log(self) -> (Vec<Report>, String) {
        let (lines, log) = self.stop_with_log();
        (reports(&lines), log)
    }
}

/// The reports in the agent's stdout lines.
pub fn reports(lines: &[String]) -> Vec<Report> {
    lines.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad report line {l:?}: {e}"))).collect()
}

/// The text without terminal colour escapes (`ESC [ ... m`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `series` (e.g. `flow_agent_deliveries_total{destination="backend"}`) in
/// Prometheus text; 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|e| panic!("{series} = {v:?}: {e}")))
        .unwrap_or(0.0)
}

/// Sum of the metrics of all flows (over all windows) that match.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Totals {
    pub attempted: u64,
    pub established: u64,
    pub closed: u64,
    pub failed: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub reset: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub rtt_count: u64,
    pub rtt_sum: f64,
    pub handshake_count: u64,
}

impl Totals {
    fn add(&mut self, m: &FlowMetrics) {
        let c = &m.connections;
        self.attempted += c.attempted;
        self.established += c.established;
        self.closed += c.closed;
        self.failed += c.failed;
        self.refused += c.refused;
        self.timed_out += c.timed_out;
        self.reset += c.reset;
        self.bytes_sent += m.bytes_sent;
        self.bytes_received += m.bytes_received;
        self.retransmissions += m.retransmissions;
        self.timeouts += m.timeouts;
        self.rtt_count += m.rtt_us.count;
        self.rtt_sum += m.rtt_us.mean * m.rtt_us.count as f64;
        self.handshake_count += m.handshake_us.count;
    }

    pub fn rtt_mean(&self) -> f64 {
        self.rtt_sum / self.rtt_count.max(1) as f64
    }
}

pub fn totals(reports: &[Report], pred: impl Fn(&FlowRecord) -> bool) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        assert_eq!(r.other.flows, 0, "the tests expect every flow reported whole");
        for f in r.flows.iter().filter(|f| pred(f)) {
            t.add(&f.metrics);
        }
    }
    t
}

/// How `clock` and `window_view` print a time (UTC, to the millisecond).
const CLOCK: &str = "%H:%M:%S%.3f";

/// The wall-clock time, to the millisecond: to place a test's steps among its windows.
pub fn clock() -> String {
    chrono::Utc::now().format(CLOCK).to_string()
}

/// Each window's view of the flows `pred` selects (their retransmissions and connections, the
/// window's program counters), one line per window: for a failed count to show when each part
/// came.
pub fn window_view(reports: &[Report], pred: impl Fn(&FlowRecord) -> bool) -> String {
    let mut out = String::new();
    let mut last_end = None;
    for r in reports {
        if last_end.is_some_and(|end| end != r.window.start) {
            out.push_str("(no report for the time between)\n");
        }
        last_end = Some(r.window.end);
        let t = totals(std::slice::from_ref(r), &pred);
        let s = &r.agent_stats;
        out.push_str(&format!(
            "window {}-{}: retransmissions {} attempted {} established {} failed {} | events {} missed_runs {} \
             map_full {:?} flows_tracked {}\n",
            r.window.start.format(CLOCK),
            r.window.end.format(CLOCK),
            t.retransmissions,
            t.attempted,
            t.established,
            t.failed,
            s.events,
            s.missed_runs,
            s.map_full,
            s.flows_tracked,
        ));
    }
    out
}

/// Matches one flow key.
pub fn flow(local: &str, remote: &str, port: u16, role: Role) -> impl Fn(&FlowRecord) -> bool {
    let (local, remote) = (local.parse::<std::net::IpAddr>().unwrap(), remote.parse::<std::net::IpAddr>().unwrap());
    move |f| f.local_ip == local && f.remote_ip == remote && f.target_port == port && f.role == role
}

pub fn local(ip: &str) -> impl Fn(&FlowRecord) -> bool {
    let ip = ip.parse::<std::net::IpAddr>().unwrap();
    move |f| f.local_ip == ip
}

/// Keeps every CPU inside BPF map system calls nearly all the time, as a busy BPF user of the
/// host would: one thread per CPU, pinned, scans an empty hash map of a million buckets with
/// BPF_MAP_LOOKUP_BATCH, which the kernel does in one section with BPF instrumentation disabled
/// (`bpf_prog_active` held). The kernel skips classic tracepoint programs on a CPU while that is
/// held. Stops when dropped; `stop` says how many scans ran.
pub struct BpfSyscallLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<std::io::Result<u64>>>,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;

/// `union bpf_attr` as BPF_MAP_CREATE reads it (the first five fields; the rest zero).
#[repr(C)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// `union bpf_attr` as BPF_MAP_*_BATCH reads it.
#[repr(C)]
struct Batch {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf_sys<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid `union bpf_attr` prefix of the given size, whose pointers (if
    // any) point at buffers that live for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, size_of::<T>() as libc::c_uint) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(r) }
}

/// `bpf_sys` for a command that returns a new fd: owned by the result.
fn bpf_sys_fd<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<std::os::fd::OwnedFd> {
    let fd = bpf_sys(cmd, attr)?;
    // SAFETY: a new fd the call returned, owned by no one else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

impl BpfSyscallLoad {
    pub fn start() -> BpfSyscallLoad {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = (0..cpus)
            .map(|cpu| {
                let stop = stop.clone();
                std::thread::spawn(move || -> std::io::Result<u64> {
                    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get a
                    // valid set of the size passed.
                    unsafe {
                        let mut set: libc::cpu_set_t = std::mem::zeroed();
                        libc::CPU_SET(cpu, &mut set);
                        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    let attr = MapCreate {
                        map_type: BPF_MAP_TYPE_HASH,
                        key_size: 4,
                        value_size: 4,
                        max_entries: 1 << 20,
                        map_flags: BPF_F_NO_PREALLOC,
                    };
                    let map = bpf_sys_fd(BPF_MAP_CREATE, &attr)?;
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&map);
                    let (mut out, mut keys, mut values) = (0u32, [0u32; 8], [0u32; 8]);
                    let mut scans = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let b = Batch {
                            in_batch: 0,
                            out_batch: &raw mut out as u64,
                            keys: keys.as_mut_ptr() as u64,
                            values: values.as_mut_ptr() as u64,
                            count: 8,
                            map_fd: fd as u32,
                            elem_flags: 0,
                            flags: 0,
                        };
                        // The map is empty: the whole scan ends in ENOENT.
                        match bpf_sys(BPF_MAP_LOOKUP_BATCH, &b) {
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => scans += 1,
                            Err(e) => return Err(e),
                            Ok(_) => panic!("an empty map returned elements"),
                        }
                    }
                    Ok(scans)
                })
            })
            .collect();
        BpfSyscallLoad { stop, threads }
    }

    /// Stop, and the number of scans each CPU ran.
    pub fn stop(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().expect("load thread").expect("BPF map system calls"))
            .collect()
    }
}

impl Drop for BpfSyscallLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// `union bpf_attr` as BPF_PROG_GET_FD_BY_ID reads it.
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct ObjInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// While held, the kernel counts every run of every BPF program (BPF_ENABLE_STATS): an oracle of
/// how often it ran the agent's programs, independent of what they counted (`prog_runs`).
pub struct BpfRunStats {
    _counting: std::os::fd::OwnedFd,
}

impl BpfRunStats {
    pub fn enable() -> BpfRunStats {
        // Closing the fd ends the counting.
        BpfRunStats { _counting: bpf_sys_fd(BPF_ENABLE_STATS, &BPF_STATS_RUN_TIME).expect("BPF_ENABLE_STATS") }
    }
}

/// The runs and skipped runs (`run_cnt`, `recursion_misses`), in all, of the programs process
/// `pid` holds whose name starts with `prefix` (the kernel keeps 15 bytes of it). Runs count only
/// while a `BpfRunStats` is held.
pub fn prog_runs(pid: u32, prefix: &str) -> (u64, u64) {
    let prefix = &prefix.as_bytes()[..prefix.len().min(15)];
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("the agent's fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let (mut runs, mut misses) = (0, 0);
    for id in ids {
        let Ok(fd) = bpf_sys_fd(BPF_PROG_GET_FD_BY_ID, &GetFdById { prog_id: id, next_id: 0, open_flags: 0 }) else {
            continue;
        };
        // SAFETY: a plain C struct of integers; all zeroes is valid.
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let attr = ObjInfo {
            bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
            info_len: size_of_val(&info) as u32,
            info: &raw mut info as u64,
        };
        bpf_sys(BPF_OBJ_GET_INFO_BY_FD, &attr).expect("BPF_OBJ_GET_INFO_BY_FD");
        let name: Vec<u8> = info.name.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
        if name.starts_with(prefix) {
            runs += info.run_cnt;
            misses += info.recursion_misses;
        }
    }
    (runs, misses)
}
