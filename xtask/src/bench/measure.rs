//! Running the agent for one benchmark run and reading what it cost: CPU and RSS from /proc,
//! eBPF run time and map memory from the fdinfo of its program and map fds (with
//! `kernel.bpf_stats_enabled`), and events, drops and connection counts from its JSON reports.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::sandbox::{Cgroup, Proc, wait_for};

/// A running `flow-agent --dry-run` attached to the benchmark's cgroup.
pub struct Agent {
    proc: Proc,
    stdout: Option<JoinHandle<String>>,
    log: PathBuf,
}

/// Per-program eBPF run statistics (cumulative since load).
#[derive(Clone, Debug, Default)]
pub struct ProgStat {
    pub name: &'static str,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// What the agent's reports add up to over one run.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    pub events: u64,
    pub map_full: u64,
    pub untracked: u64,
    pub ringbuf_drops: u64,
    pub missed_runs: u64,
    pub attempted_client: u64,
    pub attempted_server: u64,
    pub sockets_tracked_max: u64,
}

impl Agent {
    /// Start `bin` on `cgroup`, walking the namespaces `netns` (by name, /run/netns/NAME) when
    /// the binary knows `--walk-netns` (a baseline build may not), with report windows of
    /// `window` (the walk runs at each window end).
    pub fn start(
        bin: &Path,
        cgroup: &Cgroup,
        netns: &[String],
        max_sockets: u32,
        dir: &Path,
        window: &str,
    ) -> Result<Agent> {
        let log = unique(dir);
        let mut cmd = Command::new(bin);
        let help = Command::new(bin).arg("--help").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        // Extra agent flags for comparisons, e.g. FLOW_BENCH_AGENT_ARGS="--fold-interval 0s"; a
        // --report-interval among them replaces the bench's `window`, a --walk-netns-all the
        // list of the bench's namespaces (the agent finds them, as on a node with pods).
        let extra = std::env::var("FLOW_BENCH_AGENT_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        if help.is_ok_and(|h| h.contains("--walk-netns")) && !extra.contains(&"--walk-netns-all") {
            for n in netns {
                cmd.arg("--walk-netns").arg(format!("/run/netns/{n}"));
            }
        }
        if !extra.iter().any(|a| a.starts_with("--report-interval")) {
            cmd.args(["--report-interval", window]);
        }
        cmd.args(["--dry-run", "--metrics-address", "127.0.0.1:0", "--top-flows", "10000"])
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            .arg("--cgroup")
            .arg(&cgroup.path)
            .args(["--max-sockets", &max_sockets.to_string()])
            .args(&extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log)?);
        let mut proc = Proc::spawn(cmd, "flow-agent")?;
        let mut out = proc.child.stdout.take().context("no agent stdout")?;
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let mut agent = Agent { proc, stdout: Some(stdout), log };
        let log = agent.log.clone();
        let mut dead = false;
        wait_for("the agent to attach", Duration::from_secs(30), || {
            dead = !agent.proc.alive();
            dead || fs::read_to_string(&log).is_ok_and(|s| s.contains("capturing; first window"))
        })?;
        if dead {
            bail!("flow-agent exited at start: {}", fs::read_to_string(&agent.log).unwrap_or_default());
        }
        Ok(agent)
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Total kernel map memory the agent logged at start (MiB), as it states it.
    pub fn logged_map_mib(&self) -> Option<f64> {
        let log = fs::read_to_string(&self.log).ok()?;
        let line = log.lines().find(|l| l.contains("kernel maps sized"))?;
        let v = line.split_whitespace().find_map(|w| strip_ansi(w).strip_prefix("total_mib=").map(str::to_string))?;
        v.parse().ok()
    }

    /// CPU time so far, seconds, over all its threads (`/proc/PID/task/*/schedstat`: nanoseconds
    /// on CPU, without the 10 ms granularity of utime/stime).
    pub fn cpu_seconds(&self) -> Result<f64> {
        let mut ns = 0u64;
        for t in fs::read_dir(format!("/proc/{}/task", self.pid()))?.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("schedstat")) {
                ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok(ns as f64 / 1e9)
    }

    /// (VmRSS, VmHWM) in bytes.
    pub fn rss(&self) -> Result<(u64, u64)> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kb = |k: &str| -> Result<u64> {
            let l = status.lines().find(|l| l.starts_with(k)).with_context(|| format!("no {k}"))?;
            Ok(l.split_whitespace().nth(1).context("bad status line")?.parse::<u64>()? * 1024)
        };
        Ok((kb("VmRSS:")?, kb("VmHWM:")?))
    }

    /// eBPF program run statistics and total map memory (memlock), from the fds' fdinfo.
    pub fn bpf(&self) -> Result<(Vec<ProgStat>, u64)> {
        let dir = format!("/proc/{}/fd", self.pid());
        // Keyed by prog_id / map_id: a program has both its own fd and its link's.
        let mut progs: Vec<(u64, ProgStat)> = Vec::new();
        let mut maps: Vec<(u64, u64)> = Vec::new();
        // The agent's BPF fds and their fdinfo, read once.
        let fds: Vec<(String, String)> = fs::read_dir(&dir)?
            .flatten()
            .filter_map(|e| {
                let target = fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
                target.starts_with("anon_inode:bpf").then(|| {
                    let fd = e.file_name().to_string_lossy().into_owned();
                    (target, fs::read_to_string(format!("/proc/{}/fdinfo/{fd}", self.pid())).unwrap_or_default())
                })
            })
            .collect();
        // Both the walk (an iterator) and the SYN-ACK program (a BTF tracepoint) are tracing
        // programs; their links tell them apart.
        let link_type = |id: u64| {
            fds.iter()
                .filter(|(t, _)| t == "anon_inode:bpf_link")
                .find(|(_, info)| field(info, "prog_id") == Some(id))
                .and_then(|(_, info)| text_field(info, "link_type"))
        };
        for (target, info) in &fds {
            if target == "anon_inode:bpf-prog" {
                let id = field(info, "prog_id").unwrap_or(0);
                let name = match field(info, "prog_type") {
                    Some(13) => "sock_ops",
                    Some(5) => "tcp_retransmit_synack",
                    Some(26) if link_type(id) == Some("iter") => "walk",
                    Some(26) => "tcp_retransmit_synack",
                    _ => "other",
                };
                let p = ProgStat {
                    name,
                    run_cnt: field(info, "run_cnt").unwrap_or(0),
                    run_time_ns: field(info, "run_time_ns").unwrap_or(0),
                };
                if !progs.iter().any(|(i, _)| *i == id) {
                    progs.push((id, p));
                }
            } else if target == "anon_inode:bpf-map" {
                let id = field(info, "map_id").unwrap_or(0);
                if !maps.iter().any(|(i, _)| *i == id) {
                    maps.push((id, field(info, "memlock").unwrap_or(0)));
                }
            }
        }
        progs.sort_by_key(|(_, p)| p.name);
        Ok((progs.into_iter().map(|(_, p)| p).collect(), maps.iter().map(|(_, m)| m).sum()))
    }

    /// SIGINT (the agent flushes its partial window), then sum its reports.
    pub fn stop(mut self) -> Result<Reports> {
        self.proc.signal("INT");
        let pid = self.pid();
        let mut exited = false;
        let _ = wait_for("the agent to exit", Duration::from_secs(20), || {
            exited = !self.proc.alive();
            exited
        });
        if !exited {
            bail!("flow-agent (pid {pid}) did not exit within 20 s of SIGINT");
        }
        let out = self.stdout.take().context("stdout already read")?.join().unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        sum_reports(&out)
    }
}

/// A fresh `agent-N.log` in `dir`.
fn unique(dir: &Path) -> PathBuf {
    let mut n = 0;
    loop {
        let c = dir.join(format!("agent-{n}.log"));
        if !c.exists() {
            return c;
        }
        n += 1;
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in s.chars() {
        match (esc, c) {
            (_, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// A `key:\tvalue` integer line of an fdinfo file.
fn field(info: &str, key: &str) -> Option<u64> {
    text_field(info, key)?.parse().ok()
}

fn text_field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// Sum the agent's JSON reports (one per line).
pub fn sum_reports(out: &str) -> Result<Reports> {
    let mut r = Reports::default();
    let mut n = 0;
    for line in out.lines().filter(|l| l.starts_with('{')) {
        let v: Value = serde_json::from_str(line).context("agent report is not JSON")?;
        n += 1;
        let u = |v: &Value| v.as_u64().unwrap_or(0);
        let s = &v["agent_stats"];
        r.events += u(&s["events"]);
        r.ringbuf_drops += u(&s["ringbuf_drops"]);
        r.untracked += u(&s["untracked_events"]);
        r.missed_runs += u(&s["missed_runs"]);
        r.map_full += ["sockets", "flows", "listeners"].iter().map(|k| u(&s["map_full"][k])).sum::<u64>();
        r.sockets_tracked_max = r.sockets_tracked_max.max(u(&s["sockets_tracked"]));
        for f in v["flows"].as_array().into_iter().flatten() {
            let a = u(&f["connections"]["attempted"]);
            match f["role"].as_str() {
                Some("client") => r.attempted_client += a,
                Some("server") => r.attempted_server += a,
                _ => {}
            }
        }
        if u(&v["other"]["flows"]) != 0 {
            bail!("flows were summed into `other`: raise --top-flows");
        }
    }
    if n == 0 {
        bail!("the agent printed no report");
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t13\nprog_id:\t42\nrun_time_ns:\t12345\nrun_cnt:\t7\n";
        assert_eq!(field(info, "prog_type"), Some(13));
        assert_eq!(field(info, "run_time_ns"), Some(12345));
        assert_eq!(field(info, "run_cnt"), Some(7));
        assert_eq!(field(info, "memlock"), None);
    }

    #[test]
    fn reports_add_up() {
        let line = r#"{"flows":[{"role":"client","connections":{"attempted":3}},{"role":"server","connections":{"attempted":2}}],
"other":{"flows":0},"agent_stats":{"events":10,"ringbuf_drops":0,"map_full":{"sockets":1,"flows":0,"listeners":0},"untracked_events":2,"sockets_tracked":5}}"#
            .replace('\n', "");
        let r = sum_reports(&format!("{line}\n{line}\n")).unwrap();
        assert_eq!((r.attempted_client, r.attempted_server, r.events, r.map_full, r.untracked), (6, 4, 20, 2, 4));
        assert_eq!(r.sockets_tracked_max, 5);
    }
}
