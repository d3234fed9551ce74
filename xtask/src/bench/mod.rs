//! `cargo xtask bench`: the agent's overhead and coverage under load, and the backend benchmark.
//!
//! Each agent workload runs with the agent off and on, alternating (A B A B ...) so machine drift
//! cancels; every load process lives in a cgroup of the benchmark's own, which is what the agent
//! attaches to, inside network namespaces the benchmark creates. Figures are printed as a
//! markdown table and written to `target/bench/agent.json`; targets are judged there, not in tests.
//!
//! On a VM whose speed drifts by several percent from one run to the next, alternating runs cannot
//! resolve a 1% cost. So each throughput workload also runs as twins (`twins`): two identical
//! copies at the same time, sharing the CPUs, with the agent on one of them, the other one in
//! turn. Drift then hits both copies alike, and the monitored copy's share of the throughput says
//! what the agent costs it.

mod measure;
mod report;
mod sandbox;
mod workloads;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use measure::{Agent, ProgStat, Reports};
use workloads::{Env, Kind, Load};

pub use workloads::idle_helper;

/// `storm` runs both storm variants: both ends monitored, and the server side only.
pub const USAGE: &str = "bench [storm|storm-both|storm-server|keepalive|bulk|bulk1|bulk16|idle|backend|all]... [--quick] [--pairs=N] [--twins=N] [--secs=N] [--wrk-threads=N] [--soak]";

/// The agents' report window in the bench's runs (the walk runs at each window end).
const WINDOW: &str = "10s";

/// The report window of the bpf_stats run: short enough that a run of a few seconds always
/// contains walks, whose run time it measures (with 10-s windows a 5-s run often had none).
const STATS_WINDOW: &str = "2s";

/// Debian packages the agent workloads use (installed by `bench`, not by `setup`).
const BENCH_APT: &[&str] = &["nginx-light", "wrk", "iperf3", "iproute2", "procps"];
const SOAK_SECS: u64 = 600;

/// One run of a workload with the agent off or on.
pub struct Run {
    pub load: Load,
    pub secs: f64,
    /// Connections the load made: (TcpActiveOpens, TcpPassiveOpens) over its namespaces.
    pub opens: (u64, u64),
    pub agent: Option<AgentRun>,
    /// Run with `kernel.bpf_stats_enabled=1`: the one run per workload whose eBPF run times are
    /// figures, and which is left out of the throughput comparison (the kernel then reads the
    /// clock twice per program invocation, a cost the agent does not have in production).
    pub ebpf_stats: bool,
}

/// One twin run (`twins`): both copies' throughput, the monitored one's first.
pub struct Twin {
    pub monitored: f64,
    pub unmonitored: f64,
    /// The agent's CPU, percent of one core (in an A/B of two builds, less the baseline agent's,
    /// which watched the other copy).
    pub agent_cpu_pct: f64,
}

/// What the agent cost and saw during one run.
pub struct AgentRun {
    pub cpu_pct: f64,
    pub rss_peak: u64,
    pub progs: Vec<ProgStat>,
    pub map_bytes: u64,
    pub logged_map_mib: Option<f64>,
    pub reports: Reports,
}

/// The 10-minute storm with the agent on: RSS over time.
pub struct Soak {
    pub secs: u64,
    pub samples: Vec<(f64, u64)>,
    pub load: Load,
    pub cpu_pct: f64,
    pub coverage: f64,
}

struct Options {
    kinds: Vec<Kind>,
    backend: bool,
    quick: bool,
    /// Off/on pairs per workload (default 3; 1 with --quick).
    pairs: Option<usize>,
    /// Twin runs per throughput workload, an even number (default 6; 2 with --quick; 0: none).
    twins: Option<usize>,
    /// Seconds per run (default 10; 5 with --quick).
    secs: Option<u64>,
    /// wrk's threads in a storm or keep-alive load alone (default: one per CPU); twins split them
    /// between their two copies.
    wrk_threads: Option<usize>,
    soak: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options {
        kinds: Vec::new(),
        backend: false,
        quick: false,
        pairs: None,
        twins: None,
        secs: None,
        wrk_threads: None,
        soak: false,
    };
    let mut any = false;
    for a in args {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--soak" => o.soak = true,
            p if p.starts_with("--pairs=") => {
                let n: usize = p["--pairs=".len()..]
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow::anyhow!("{p:?}: --pairs takes a positive number, e.g. --pairs=5"))?;
                o.pairs = Some(n);
            }
            p if p.starts_with("--twins=") => {
                let n: usize = p["--twins=".len()..].parse().ok().filter(|n| n % 2 == 0).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{p:?}: --twins takes an even number of twin runs (they pair up, one with the agent \
                         on each copy; 0 for none), e.g. --twins=6"
                    )
                })?;
                o.twins = Some(n);
            }
            p if p.starts_with("--secs=") => {
                let n: u64 = p["--secs=".len()..].parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    anyhow::anyhow!("{p:?}: --secs takes a positive number of seconds, e.g. --secs=4")
                })?;
                o.secs = Some(n);
            }
            p if p.starts_with("--wrk-threads=") => {
                let n: usize = p["--wrk-threads=".len()..].parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    anyhow::anyhow!("{p:?}: --wrk-threads takes a positive number of threads, e.g. --wrk-threads=1")
                })?;
                o.wrk_threads = Some(n);
            }
            // The groups; `storm` is also the id of its first variant.
            "storm" => o.kinds.extend([Kind::Storm, Kind::StormServer]),
            // The both-ends variant alone (its id, `storm`, names the group).
            "storm-both" => o.kinds.push(Kind::Storm),
            "bulk" => o.kinds.extend([Kind::Bulk(1), Kind::Bulk(16)]),
            "backend" => o.backend = true,
            "all" => {
                o.kinds.extend(Kind::ALL);
                o.backend = true;
            }
            // One workload by its id (as in the JSON): keepalive, idle, or one variant alone.
            other => match Kind::ALL.into_iter().find(|k| k.id() == other) {
                Some(k) => o.kinds.push(k),
                None => bail!("unknown bench argument {other:?}; usage: cargo xtask {USAGE}"),
            },
        }
        any |= !a.starts_with("--");
    }
    if !any && !o.soak {
        o.kinds = Kind::ALL.to_vec();
        o.backend = true;
    }
    let mut seen = Vec::new();
    o.kinds.retain(|k| {
        let new = !seen.contains(k);
        seen.push(*k);
        new
    });
    Ok(o)
}

pub fn main(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let mut md = String::new();
    if !o.kinds.is_empty() || o.soak {
        md.push_str(&agent_bench(&o)?);
    }
    if o.backend {
        crate::setup::all()?;
        md.push_str(&crate::backend::bench()?);
    }
    println!("{md}");
    Ok(())
}

fn agent_bench(o: &Options) -> Result<String> {
    if !crate::setup::is_root() {
        bail!("the agent benchmark loads eBPF programs and creates namespaces and cgroups: run it as root");
    }
    crate::setup::toolchain()?;
    crate::setup::apt(BENCH_APT)?;
    crate::run_cmd(crate::cargo().args(["build", "--release", "-p", "flow-agent"]))?;
    let bin = crate::root().join("target/release/flow-agent");
    // Another build of the agent to run on the "off" side instead of no agent (A/B of two builds).
    let baseline = std::env::var_os("FLOW_BENCH_BASELINE_BIN").map(std::path::PathBuf::from);
    sandbox::remove_leftovers();
    let dir = std::env::temp_dir().join(format!("flow-agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        // Off for the alternating pairs; on for one more agent run per workload (see `Run`).
        let _stats = sandbox::Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "0")?;
        let (pairs, twin_runs, secs) = if o.quick { (1, 2, 5) } else { (3, 6, 10) };
        let (pairs, twin_runs, secs) = (o.pairs.unwrap_or(pairs), o.twins.unwrap_or(twin_runs), o.secs.unwrap_or(secs));
        let wrk_threads = o.wrk_threads.unwrap_or_else(report::cpus);
        let mut results = Vec::new();
        for &kind in &o.kinds {
            eprintln!("bench: {} ({pairs} x off/on, {secs} s each)", kind.name());
            let mut env = Env::new(kind, &dir, false, wrk_threads)?;
            let mut runs = Vec::new();
            for i in 0..pairs {
                for on in [false, true] {
                    let agent_bin = if on { Some(bin.as_path()) } else { baseline.as_deref() };
                    let mut r = run_once(&mut env, agent_bin, secs, WINDOW)?;
                    eprintln!(
                        "bench:   {} {} #{}: {}",
                        kind.id(),
                        if on { "on " } else { "off" },
                        i + 1,
                        run_line(kind, &r)
                    );
                    if !on {
                        // A baseline agent's run is the "off" side of the comparison.
                        r.agent = None;
                    }
                    runs.push(r);
                }
            }
            // A closing "off" run: every "on" run then has one on either side (`report::bracketed`).
            let mut r = run_once(&mut env, baseline.as_deref(), secs, WINDOW)?;
            eprintln!("bench:   {} off #{}: {}", kind.id(), pairs + 1, run_line(kind, &r));
            r.agent = None;
            runs.push(r);
            let mut r = {
                let _stats = sandbox::Sysctl::set("/proc/sys/kernel/bpf_stats_enabled", "1")?;
                run_once(&mut env, Some(bin.as_path()), secs, STATS_WINDOW)?
            };
            r.ebpf_stats = true;
            eprintln!("bench:   {} on, bpf_stats: {}", kind.id(), run_line(kind, &r));
            runs.push(r);
            let twins = if kind.twinned() && twin_runs > 0 {
                twins(&mut env, &bin, baseline.as_deref(), &dir, twin_runs, secs)?
            } else {
                Vec::new()
            };
            results.push((kind, runs, twins));
        }
        let soak =
            if o.soak { Some(soak(&bin, &dir, if o.quick { 60 } else { SOAK_SECS }, wrk_threads)?) } else { None };
        let table = report::markdown(&results, soak.as_ref(), secs, pairs, wrk_threads);
        let json = report::json(&results, soak.as_ref(), wrk_threads);
        let out = crate::root().join("target/bench");
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("agent.json"), serde_json::to_string_pretty(&json)?)?;
        eprintln!("bench: figures written to {}", out.join("agent.json").display());
        Ok(table)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One run's figures, as printed when it finishes: throughput, and the agent's CPU and sock_ops
/// calls (their mean run time too when `bpf_stats` was on).
fn run_line(kind: Kind, r: &Run) -> String {
    let conns = (r.opens.0 + r.opens.1).max(1) as f64;
    let per_request = |cnt: u64| match kind {
        Kind::Storm | Kind::StormServer | Kind::KeepAlive => {
            format!(", {:.2}/req", cnt as f64 / (r.load.throughput * r.secs).max(1.0))
        }
        _ => String::new(),
    };
    let agent = r.agent.as_ref().map(|a| {
        let (cnt, ns) = a
            .progs
            .iter()
            .filter(|p| p.name == "sock_ops")
            .fold((0, 0), |(c, t), p| (c + p.run_cnt, t + p.run_time_ns));
        if cnt == 0 {
            format!(", agent {:.1}% CPU", a.cpu_pct)
        } else {
            format!(
                ", agent {:.1}% CPU, sock_ops {:.0} ns x {cnt} ({:.2}/conn{})",
                a.cpu_pct,
                ns as f64 / cnt as f64,
                cnt as f64 / conns,
                per_request(cnt)
            )
        }
    });
    format!("{:.1}{}", r.load.throughput, agent.unwrap_or_default())
}

/// `runs` twin runs of `env`'s workload: a second copy of it runs at the same time, and the agent
/// `bin` watches one copy, the first and the second in turn (so that a difference between the
/// copies cancels too). In an A/B of two builds the `baseline` agent watches the other copy;
/// without one the other copy runs no agent.
fn twins(env: &mut Env, bin: &Path, baseline: Option<&Path>, dir: &Path, runs: usize, secs: u64) -> Result<Vec<Twin>> {
    let kind = env.kind;
    let other_side = if baseline.is_some() { "the baseline agent on the other" } else { "no agent on the other" };
    eprintln!("bench: {} as twins ({runs} runs of {secs} s, agent on one copy, {other_side})", kind.name());
    let alone = env.wrk_threads;
    env.wrk_threads = workloads::twin_wrk_threads(alone);
    let mut twin = Env::new(kind, dir, true, env.wrk_threads)?;
    // Bulk copies are pinned, each to half of the CPUs. Unpinned, the scheduler moves the
    // streams' senders, receivers and softirqs between CPUs, and with 16 streams a pair of runs'
    // ratio (`report::TwinSummary`) varied by 3.4% (standard deviation, 2026-12-05); pinned, by
    // 1.1-1.8%. What one half of the CPUs has over the other (10-13% for one stream on this VM)
    // cancels in each pair. The nginx copies stay unpinned: wrk and nginx of one copy on one CPU
    // would be another workload than the storm they stand for.
    if kind.pinned_twins() {
        let n = report::cpus();
        if n >= 2 {
            let half = n / 2;
            env.pin(Some(&format!("0-{}", half - 1)))?;
            twin.pin(Some(&format!("{half}-{}", n - 1)))?;
        }
    }
    let mut out = Vec::new();
    for i in 0..runs {
        let (watched, other) = if i % 2 == 0 { (&mut *env, &mut twin) } else { (&mut twin, &mut *env) };
        let agent = Agent::start(bin, &watched.cgroup, &watched.netns(), kind.max_sockets(), watched.dir(), WINDOW)?;
        let base = match baseline {
            Some(b) => Some(Agent::start(b, &other.cgroup, &other.netns(), kind.max_sockets(), other.dir(), WINDOW)?),
            None => None,
        };
        let cpu0 = agent.cpu_seconds()?;
        let base_cpu0 = base.as_ref().map(Agent::cpu_seconds).transpose()?.unwrap_or(0.0);
        let t = Instant::now();
        let (a, b) = std::thread::scope(|s| {
            let h = s.spawn(|| watched.run(secs));
            let b = other.run(secs);
            (h.join(), b)
        });
        let elapsed = t.elapsed().as_secs_f64();
        // In an A/B the baseline's CPU comes out of the same CPUs: the difference is what counts.
        let base_cpu = match base {
            Some(b) => {
                let c = b.cpu_seconds()? - base_cpu0;
                b.stop()?;
                c
            }
            None => 0.0,
        };
        let cpu = agent.cpu_seconds()? - cpu0 - base_cpu;
        agent.stop()?;
        let a = a.map_err(|_| anyhow::anyhow!("the monitored copy's load thread panicked"))??;
        let r = Twin { monitored: a.throughput, unmonitored: b?.throughput, agent_cpu_pct: 100.0 * cpu / elapsed };
        eprintln!(
            "bench:   {} twin #{}: monitored {:.1}, other {:.1} ({:.4}), agent {:.1}% CPU{}",
            kind.id(),
            i + 1,
            r.monitored,
            r.unmonitored,
            r.monitored / r.unmonitored.max(1e-9),
            r.agent_cpu_pct,
            if baseline.is_some() { " more than the baseline's" } else { "" }
        );
        out.push(r);
    }
    env.pin(None)?;
    env.wrk_threads = alone;
    Ok(out)
}

fn run_once(env: &mut Env, agent_bin: Option<&Path>, secs: u64, window: &str) -> Result<Run> {
    let agent = match agent_bin {
        Some(bin) => Some(Agent::start(bin, &env.cgroup, &env.netns(), env.kind.max_sockets(), env.dir(), window)?),
        None => None,
    };
    let cpu0 = agent.as_ref().map(Agent::cpu_seconds).transpose()?;
    let opens0 = env.opens()?;
    let t = Instant::now();
    let load = env.run(secs)?;
    let elapsed = t.elapsed().as_secs_f64();
    let opens1 = env.opens()?;
    let opens = (opens1.0 - opens0.0, opens1.1 - opens0.1);
    let agent = match agent {
        None => None,
        Some(a) => {
            let cpu = a.cpu_seconds()? - cpu0.unwrap_or(0.0);
            let (progs, map_bytes) = a.bpf()?;
            let rss_peak = a.rss()?.1;
            let logged_map_mib = a.logged_map_mib();
            let reports = a.stop()?;
            Some(AgentRun { cpu_pct: 100.0 * cpu / elapsed, rss_peak, progs, map_bytes, logged_map_mib, reports })
        }
    };
    Ok(Run { load, secs: elapsed, opens, agent, ebpf_stats: false })
}

/// A long storm with the agent on, sampling its RSS every 10 s.
fn soak(bin: &Path, dir: &Path, secs: u64, wrk_threads: usize) -> Result<Soak> {
    eprintln!("bench: soak, connection storm for {secs} s with the agent on");
    let mut env = Env::new(Kind::Storm, dir, false, wrk_threads)?;
    let agent = Agent::start(bin, &env.cgroup, &env.netns(), Kind::Storm.max_sockets(), dir, WINDOW)?;
    let pid = agent.pid();
    let cpu0 = agent.cpu_seconds()?;
    let opens0 = env.opens()?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let mut samples = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss_of(pid) {
                    samples.push((t.elapsed().as_secs_f64(), rss));
                }
                let next = Duration::from_secs(samples.len() as u64 * 10);
                while !done.load(Ordering::Relaxed) && t.elapsed() < next {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            samples
        })
    };
    let t = Instant::now();
    let load = env.run(secs);
    let elapsed = t.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let samples = sampler.join().unwrap_or_default();
    let load = load?;
    let opens1 = env.opens()?;
    let cpu = agent.cpu_seconds()? - cpu0;
    let r = agent.stop()?;
    let made = (opens1.0 - opens0.0) + (opens1.1 - opens0.1); // both ends monitored
    Ok(Soak {
        secs,
        samples,
        load,
        cpu_pct: 100.0 * cpu / elapsed,
        coverage: (r.attempted_client + r.attempted_server) as f64 / made.max(1) as f64,
    })
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn wrk_threads_are_a_positive_number() {
        assert_eq!(parse(&args(&["storm"])).unwrap().wrk_threads, None, "default: one per CPU");
        assert_eq!(parse(&args(&["storm", "--wrk-threads=1"])).unwrap().wrk_threads, Some(1));
        for bad in ["--wrk-threads=0", "--wrk-threads=x", "--wrk-threads=-1"] {
            let e = parse(&args(&["storm", bad])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad) && e.contains("positive number of threads"), "{bad}: {e}");
        }
    }

    #[test]
    fn workloads_are_selected_by_group_or_alone_once_each() {
        let kinds = |a: &[&str]| parse(&args(a)).unwrap().kinds;
        assert_eq!(kinds(&["bulk"]), [Kind::Bulk(1), Kind::Bulk(16)]);
        assert_eq!(kinds(&["bulk1"]), [Kind::Bulk(1)]);
        assert_eq!(kinds(&["keepalive", "idle"]), [Kind::KeepAlive, Kind::Idle]);
        assert_eq!(kinds(&["storm"]), [Kind::Storm, Kind::StormServer], "storm: the group, not its first variant");
        for every in [&[][..], &["all"], &["--quick"]] {
            let o = parse(&args(every)).unwrap();
            assert!(o.kinds == Kind::ALL && o.backend, "{every:?}: {:?}", o.kinds);
        }
        assert_eq!(kinds(&["bulk16", "storm-server"]), [Kind::Bulk(16), Kind::StormServer]);
        assert_eq!(kinds(&["storm-both"]), [Kind::Storm], "the both-ends variant alone");
        assert_eq!(kinds(&["storm-both", "storm"]), [Kind::Storm, Kind::StormServer]);
        // A variant named again, alone or in its group, runs once, where it was first named.
        assert_eq!(kinds(&["bulk1", "storm", "bulk"]), [Kind::Bulk(1), Kind::Storm, Kind::StormServer, Kind::Bulk(16)]);
        let e = parse(&args(&["bulk2"])).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"bulk2\"") && e.contains("bulk1|bulk16"), "{e}");
    }

    #[test]
    fn twin_runs_come_in_pairs() {
        let o = parse(&args(&["storm", "--twins=8"])).unwrap();
        assert_eq!(o.twins, Some(8));
        assert_eq!(parse(&args(&["storm", "--twins=0"])).unwrap().twins, Some(0), "0: no twins");
        for bad in ["--twins=7", "--twins=x", "--twins=-2"] {
            let e = parse(&args(&["storm", bad])).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad) && e.contains("even number"), "{bad}: {e}");
        }
    }
}
