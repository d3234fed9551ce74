//! Summaries of the runs, judged against the targets: a markdown table and a JSON document.

use serde_json::{Value, json};

use super::{AgentRun, Run, Soak, Twin, workloads::Kind};

/// Targets (issue "Overhead and scale").
const STORM_COST_PCT: f64 = 3.0;
const STORM_CPU_PCT: f64 = 5.0;
const STEADY_COST_PCT: f64 = 1.0;
const EBPF_NS: f64 = 300.0;
const IDLE_RSS_MIB: f64 = 32.0;

const MIB: f64 = 1048576.0;

/// One workload's figures, averaged over its runs.
pub struct Summary {
    pub kind: Kind,
    pub off: Side,
    pub on: Side,
    pub cpu_pct: f64,
    pub rss_peak: u64,
    /// (program, mean ns per invocation, invocations per connection).
    pub progs: Vec<(&'static str, f64, f64, u64)>,
    pub map_bytes: u64,
    pub logged_map_mib: Option<f64>,
    pub events_per_s: f64,
    pub drops: u64,
    pub coverage: f64,
    pub connections: u64,
    /// Requests wrk completed in the bpf_stats run (storm and keep-alive; 0 otherwise), for
    /// program invocations per request.
    pub requests: f64,
    pub sockets_tracked_max: u64,
    /// Throughput on/off of each alternating pair: (mean, standard error of the mean).
    pub pair_ratio: Option<(f64, f64)>,
    /// Each "on" run against the "off" runs either side of it (`bracketed`): (mean, standard
    /// error). The throughput cost's figure when there is one.
    pub bracket_ratio: Option<(f64, f64)>,
    /// The twin runs (`bench::twins`), if any.
    pub twins: Option<TwinSummary>,
}

/// The twin runs of a workload: the monitored copy's throughput over the other's, and the
/// agent's CPU, which a twin's ratio does not show (the agent takes its CPU from both copies
/// alike): it is added to the cost as if all of it came out of the monitored copy's share.
///
/// The runs alternate the agent between the copies (`bench::twins`: the first copy in even
/// runs, the second in odd ones), and each such pair of runs gives one ratio, the geometric mean
/// of its two: a copy that is faster by a factor `s` for reasons of its own (a vCPU the host
/// serves better, a luckier placement) reads `s (1 - c)` in one run and `(1 - c) / s` in the
/// other, so the pair's figure is `1 - c` whatever `s` is, and the spread of `s` from copy to
/// copy leaves the estimate and its noise. (The mean of the single runs' ratios would keep
/// `(s + 1/s) / 2 - 1` of it, a bias towards a lower cost, and all of its spread.)
pub struct TwinSummary {
    /// Twin runs that went into the figure: both runs of every complete pair.
    pub runs: usize,
    /// Mean and standard error of the pairs' ratios.
    pub ratio: (f64, f64),
    /// Mean agent CPU, percent of one core.
    pub cpu_pct: f64,
    /// CPUs the two copies share.
    pub cpus: usize,
}

impl TwinSummary {
    pub fn of(twins: &[Twin], cpus: usize) -> Option<TwinSummary> {
        let ratio = |t: &Twin| (t.monitored > 0.0 && t.unmonitored > 0.0).then(|| t.monitored / t.unmonitored);
        let ratios: Vec<f64> =
            twins.chunks_exact(2).filter_map(|p| Some((ratio(&p[0])? * ratio(&p[1])?).sqrt())).collect();
        Some(TwinSummary {
            runs: 2 * ratios.len(),
            ratio: mean_se(&ratios)?,
            cpu_pct: mean(twins.iter().map(|t| t.agent_cpu_pct)),
            cpus: cpus.max(1),
        })
    }

    /// How much a pair's ratio varies, percent (standard deviation; infinite for one pair): the
    /// hour's noise, which moves from 0.8% on a calm day to 5-6% in the slowest hours seen
    /// (docs/performance.md, "Results, 2026-12-06 (ninth)").
    pub fn pair_sd_pct(&self) -> f64 {
        100.0 * self.ratio.1 * ((self.runs / 2) as f64).sqrt()
    }

    /// The agent's CPU as a percentage of what one copy has (half the CPUs).
    pub fn cpu_share_pct(&self) -> f64 {
        self.cpu_pct / (self.cpus as f64 / 2.0)
    }

    /// Throughput lost by the monitored copy, percent, with the agent's CPU share added, and two
    /// standard errors of it.
    pub fn cost_pct(&self) -> (f64, f64) {
        (100.0 * (1.0 - self.ratio.0) + self.cpu_share_pct(), 200.0 * self.ratio.1)
    }
}

/// How a figure compares with its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// The target lies within two standard errors of the estimate: the runs cannot tell.
    WithinNoise,
    /// An A/B of two builds (`FLOW_BENCH_BASELINE_BIN`): the "off" side ran an agent too, so the
    /// figure compares the builds and says nothing of the target.
    NotJudged,
}

impl Verdict {
    fn of(met: bool) -> Verdict {
        if met { Verdict::Met } else { Verdict::Missed }
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::Missed => "**no**",
            Verdict::WithinNoise => "within noise",
            Verdict::NotJudged => "not judged (A/B of two builds)",
        }
    }
}

/// Mean and standard error of the mean. One value has no error estimate: its standard error is
/// infinite, so that a figure from one pair of runs is never judged met or missed (it read "met"
/// at -8.7% ± 0.0 for one stream of bulk, whose pairs vary by 5%).
fn mean_se(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    if v.len() == 1 {
        return Some((v[0], f64::INFINITY));
    }
    let n = v.len() as f64;
    let m = mean(v.iter().copied());
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    Some((m, (var / n).sqrt()))
}

/// Each "on" run's throughput over the geometric mean of the "off" runs just before and just
/// after it, for runs in the order off, on, off, on, ..., off. A pair's own ratio (on / off) keeps
/// all of the drift from one run to the next; here drift that is linear over the three runs
/// cancels (to first order; exactly for drift by a constant factor per run). On this VM, 20
/// pairs of the storm read 4.42% ± 5.7 (standard deviation) as pairs and 4.39% ± 3.3
/// bracketed: much of the pairs' spread was drift.
pub fn bracketed(runs: &[&Run]) -> Vec<f64> {
    runs.windows(3)
        .step_by(2)
        .filter_map(|w| match w {
            [a, b, c]
                if a.agent.is_none()
                    && b.agent.is_some()
                    && c.agent.is_none()
                    && a.load.throughput > 0.0
                    && c.load.throughput > 0.0 =>
            {
                Some(b.load.throughput / (a.load.throughput * c.load.throughput).sqrt())
            }
            _ => None,
        })
        .collect()
}

/// Mean and standard error of a series whose neighbours may be correlated, as bracketed ratios
/// are (two share an "off" run): the variance of the mean takes in the lag-1 autocovariance
/// (when positive; a negative one is taken as none, which errs wide).
fn mean_se_lag1(v: &[f64]) -> Option<(f64, f64)> {
    let (m, se) = mean_se(v)?;
    if v.len() < 2 {
        return Some((m, se));
    }
    let n = v.len() as f64;
    let g1 = v.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / (n - 1.0);
    Some((m, (se * se + 2.0 * g1.max(0.0) / n).sqrt()))
}

#[derive(Default)]
pub struct Side {
    pub throughput: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = v.fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { s / n as f64 }
}

fn side<'a>(runs: impl Iterator<Item = &'a Run> + Clone) -> Side {
    let opt = |f: fn(&Run) -> Option<f64>| {
        let v: Vec<f64> = runs.clone().filter_map(f).collect();
        (!v.is_empty()).then(|| mean(v.into_iter()))
    };
    Side {
        throughput: mean(runs.clone().map(|r| r.load.throughput)),
        p50_us: opt(|r| r.load.p50_us),
        p99_us: opt(|r| r.load.p99_us),
    }
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn summarize(kind: Kind, runs: &[Run], twins: &[Twin]) -> Summary {
    // The pairs give the throughput comparison; every agent run (the bpf_stats run too) gives
    // coverage, drops, CPU and memory; eBPF run times come from the bpf_stats run.
    let pairs: Vec<&Run> = runs.iter().filter(|r| !r.ebpf_stats).collect();
    let off = side(pairs.iter().copied().filter(|r| r.agent.is_none()));
    let on = side(pairs.iter().copied().filter(|r| r.agent.is_some()));
    let on_runs: Vec<(&Run, &AgentRun)> = runs.iter().filter_map(|r| Some((r, r.agent.as_ref()?))).collect();
    // Connections the monitored sockets took part in, counted once per monitored end.
    let monitored = |r: &Run| if kind.client_monitored() { r.opens.0 + r.opens.1 } else { r.opens.1 };
    let connections: u64 = on_runs.iter().map(|(r, _)| monitored(r)).sum();
    let stats_runs: Vec<(&Run, &AgentRun)> = on_runs.iter().copied().filter(|(r, _)| r.ebpf_stats).collect();
    let stats_connections: u64 = stats_runs.iter().map(|(r, _)| monitored(r)).sum();
    let mut progs: Vec<(&'static str, f64, f64, u64)> = Vec::new();
    for name in ["sock_ops", "tcp_retransmit_synack", "walk"] {
        let (cnt, ns) = stats_runs
            .iter()
            .flat_map(|(_, a)| a.progs.iter().filter(|p| p.name == name))
            .fold((0u64, 0u64), |(c, t), p| (c + p.run_cnt, t + p.run_time_ns));
        let per_ns = if cnt == 0 { 0.0 } else { ns as f64 / cnt as f64 };
        progs.push((name, per_ns, cnt as f64 / stats_connections.max(1) as f64, cnt));
    }
    let attempted: u64 = on_runs.iter().map(|(_, a)| a.reports.attempted_client + a.reports.attempted_server).sum();
    // Runs alternate off, on: each pair's own ratio, so drift between pairs cancels.
    let ratios: Vec<f64> = pairs
        .chunks(2)
        .filter_map(|p| match p {
            [off, on] if off.agent.is_none() && on.agent.is_some() && off.load.throughput > 0.0 => {
                Some(on.load.throughput / off.load.throughput)
            }
            _ => None,
        })
        .collect();
    Summary {
        kind,
        off,
        on,
        cpu_pct: mean(on_runs.iter().map(|(_, a)| a.cpu_pct)),
        rss_peak: on_runs.iter().map(|(_, a)| a.rss_peak).max().unwrap_or(0),
        progs,
        map_bytes: on_runs.iter().map(|(_, a)| a.map_bytes).max().unwrap_or(0),
        logged_map_mib: on_runs.iter().find_map(|(_, a)| a.logged_map_mib),
        events_per_s: on_runs.iter().map(|(_, a)| a.reports.events).sum::<u64>() as f64
            / on_runs.iter().map(|(r, _)| r.secs).sum::<f64>().max(1e-9),
        drops: on_runs
            .iter()
            .map(|(_, a)| a.reports.map_full + a.reports.untracked + a.reports.ringbuf_drops + a.reports.missed_runs)
            .sum(),
        coverage: attempted as f64 / connections.max(1) as f64,
        connections,
        requests: match kind {
            Kind::Storm | Kind::StormServer | Kind::KeepAlive => {
                stats_runs.iter().map(|(r, _)| r.load.throughput * r.secs).sum()
            }
            _ => 0.0,
        },
        sockets_tracked_max: on_runs.iter().map(|(_, a)| a.reports.sockets_tracked_max).max().unwrap_or(0),
        pair_ratio: mean_se(&ratios),
        bracket_ratio: mean_se_lag1(&bracketed(&pairs)),
        twins: TwinSummary::of(twins, cpus()),
    }
}

impl Summary {
    /// Invocations of a program per request (wrk workloads), if any requests were made.
    fn per_request(&self, invocations: u64) -> Option<f64> {
        (self.requests >= 1.0).then(|| invocations as f64 / self.requests)
    }

    /// Throughput lost with the agent on, percent (negative: faster with it on), from the mean
    /// of the bracketed ratios (of the pairs' ratios without a closing "off" run), and two
    /// standard errors of it.
    pub fn cost_pct(&self) -> (f64, f64) {
        match self.bracket_ratio.or(self.pair_ratio) {
            Some((m, se)) => (100.0 * (1.0 - m), 200.0 * se),
            None => (100.0 * (1.0 - self.on.throughput / self.off.throughput.max(1e-9)), f64::INFINITY),
        }
    }

    /// A throughput-cost target, judged with the runs' noise (not at all in an A/B of builds):
    /// by the alternating pairs (the workload alone, as it runs on a host), and by the twin runs
    /// when there are any (finer on a drifting machine, but with both CPUs saturated: a cost in
    /// CPU time, which is less than a load bound by one thread loses when the agent's work lands
    /// on that thread's CPU; see docs/performance.md).
    fn cost_targets(&self, limit: f64) -> Vec<(String, String, Verdict)> {
        let ab = std::env::var_os("FLOW_BENCH_BASELINE_BIN").is_some();
        let judge = |c, n| if ab { Verdict::NotJudged } else { judge_cost(c, n, limit) };
        let (cost, noise) = self.cost_pct();
        let mut t =
            vec![(format!("throughput cost <= {limit}%"), format!("{cost:.1}% ± {noise:.1}"), judge(cost, noise))];
        if let Some(tw) = &self.twins {
            let (c, n) = tw.cost_pct();
            t.push((
                format!("throughput cost <= {limit}%, twins (CPUs saturated)"),
                format!("{c:.1}% ± {n:.1}"),
                judge(c, n),
            ));
        }
        t
    }

    fn unit(&self) -> &'static str {
        match self.kind {
            Kind::Storm | Kind::StormServer | Kind::KeepAlive => "req/s",
            Kind::Bulk(_) => "Gbit/s",
            Kind::Idle => "conn/s (setup)",
        }
    }

    /// (target, figure, verdict).
    pub fn targets(&self) -> Vec<(String, String, Verdict)> {
        let mut t = Vec::new();
        match self.kind {
            Kind::Storm | Kind::StormServer => {
                t.push((
                    "coverage 100%, no sampling".into(),
                    pct(self.coverage * 100.0),
                    Verdict::of(self.coverage >= 1.0 && self.drops == 0),
                ));
                t.extend(self.cost_targets(STORM_COST_PCT));
                t.push((
                    format!("agent CPU <= {STORM_CPU_PCT}% of a core"),
                    pct(self.cpu_pct),
                    Verdict::of(self.cpu_pct <= STORM_CPU_PCT),
                ));
            }
            Kind::KeepAlive | Kind::Bulk(_) => t.extend(self.cost_targets(STEADY_COST_PCT)),
            Kind::Idle => {
                let mib = self.rss_peak as f64 / MIB;
                t.push((
                    format!(
                        "RSS <= {IDLE_RSS_MIB} MiB with 100,000 connections ({} sockets tracked)",
                        self.sockets_tracked_max
                    ),
                    format!("{mib:.1} MiB"),
                    Verdict::of(mib <= IDLE_RSS_MIB),
                ));
            }
        }
        for (name, ns, _, cnt) in &self.progs {
            if *cnt > 0 {
                t.push((
                    format!("eBPF {name} mean <= {EBPF_NS} ns"),
                    format!("{ns:.0} ns"),
                    Verdict::of(*ns <= EBPF_NS),
                ));
            }
        }
        t
    }
}

/// A cost of `cost` ± `noise` (two standard errors) against a limit: met only when the whole
/// interval is at or below it.
fn judge_cost(cost: f64, noise: f64, limit: f64) -> Verdict {
    if (cost - noise..=cost + noise).contains(&limit) { Verdict::WithinNoise } else { Verdict::of(cost <= limit) }
}

fn pct(v: f64) -> String {
    format!("{v:.1}%")
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| if v >= 1000.0 { format!("{:.2} ms", v / 1000.0) } else { format!("{v:.0} µs") }).unwrap_or("-".into())
}

fn ratio(on: Option<f64>, off: Option<f64>) -> String {
    match (on, off) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

/// The per-workload table and the targets table.
fn tables(sums: &[Summary], secs: u64, pairs: usize, wrk_threads: usize) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "{pairs} x (agent off, agent on) alternating runs of {secs} s per workload and a closing off run, with \
         kernel.bpf_stats_enabled=0; {} cores; means over runs. wrk (storm, keep-alive): {wrk_threads} thread(s) alone, \
         {} per copy in the twin runs. Throughput cost: each on run against the geometric mean \
         of the off runs before and after it, which cancels drift that is linear over the three. Coverage: connections in the agent's reports (attempted, client + server side) / \
         TcpActiveOpens + TcpPassiveOpens of the workload's namespaces. eBPF ns: run_time_ns / run_cnt of one more \
         agent-on run per workload with kernel.bpf_stats_enabled=1 and 2-s report windows, so that it always contains \
         walks (left out of the throughput figures: it reads the clock twice per program invocation), per invocation, with invocations per connection (and per request for wrk \
         workloads). Drops: map_full + untracked_events + ringbuf_drops + missed_runs.\n\n",
        cpus(),
        super::workloads::twin_wrk_threads(wrk_threads)
    ));
    if let Ok(base) = std::env::var("FLOW_BENCH_BASELINE_BIN") {
        md.push_str(&format!(
            "**A/B of two builds**: the \"off\" side runs the agent `{base}` (FLOW_BENCH_BASELINE_BIN), not no agent.\n\n"
        ));
    }
    if let Ok(extra) = std::env::var("FLOW_BENCH_AGENT_ARGS") {
        md.push_str(&format!("Extra agent flags (FLOW_BENCH_AGENT_ARGS): `{extra}`.\n\n"));
    }
    md.push_str(
        "| workload | unit | off | on | on/off | p50 off | p50 on | p50 ratio | p99 off | p99 on | p99 ratio | agent CPU | peak RSS | sock_ops ns (calls/conn) | synack ns (calls) | walk ns (sockets visited) | kernel maps | events/s | drops | coverage |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for s in sums {
        let (so, sy, wa) = (&s.progs[0], &s.progs[1], &s.progs[2]);
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {} | {} | {} | {} | {} | {} | {:.2}% | {:.1} MiB | {:.0} ({:.1}{}) | {} | {} | {:.1} MiB | {:.0} | {} | {:.2}% ({}) |\n",
            s.kind.name(),
            s.unit(),
            s.off.throughput,
            s.on.throughput,
            s.on.throughput / s.off.throughput.max(1e-9),
            opt(s.off.p50_us),
            opt(s.on.p50_us),
            ratio(s.on.p50_us, s.off.p50_us),
            opt(s.off.p99_us),
            opt(s.on.p99_us),
            ratio(s.on.p99_us, s.off.p99_us),
            s.cpu_pct,
            s.rss_peak as f64 / MIB,
            so.1,
            so.2,
            s.per_request(so.3).map(|r| format!("; {r:.2}/req")).unwrap_or_default(),
            if sy.3 == 0 { "- (0)".to_string() } else { format!("{:.0} ({})", sy.1, sy.3) },
            if wa.3 == 0 { "- (0)".to_string() } else { format!("{:.0} ({})", wa.1, wa.3) },
            s.map_bytes as f64 / MIB,
            s.events_per_s,
            s.drops,
            s.coverage * 100.0,
            s.connections,
        ));
    }
    if let Some(m) = sums.iter().find_map(|s| s.logged_map_mib.map(|m| (s.kind, m))) {
        md.push_str(&format!(
            "\nKernel maps: memlock of the agent's map fds (fdinfo); the agent states its own estimate at start \
             (`kernel maps sized ... total_mib`), e.g. {:.1} MiB for {}.\n",
            m.1,
            m.0.name()
        ));
    }
    if let Some(k) = sums.iter().find(|s| s.kind == Kind::Idle) {
        md.push_str(&format!(
            "Idle: --max-sockets {}, {} sockets tracked at peak.\n",
            Kind::Idle.max_sockets(),
            k.sockets_tracked_max
        ));
    }
    if sums.iter().any(|s| s.twins.is_some()) {
        md.push_str(
            "\n### Twin runs\n\nTwo copies of the workload at once (namespaces, cgroups, servers and load generators of \
             their own), sharing the CPUs; the agent watches one copy, the first and the second in turn. Cost: 1 - \
             monitored/other throughput (each pair of runs, one with the agent on each copy, gives the geometric \
             mean of its two ratios, which cancels whatever one copy has over the other), plus the agent's CPU as a share of one copy's half of the CPUs; ± two \
             standard errors. With both CPUs busy this is a cost in CPU time; a load bound by one thread (wrk with \
             --wrk-threads=1) can lose more alone when the agent's work lands on that thread's CPU, so the \
             alternating pairs stay the measure of the workload alone and the twins are judged on a row of their \
             own. Pair sd: how much a pair's ratio varies (standard deviation), the hour's noise (0.8% on a calm \
             day, 5-6% in the slowest hours seen).\n\n",
        );
        if std::env::var_os("FLOW_BENCH_BASELINE_BIN").is_some() {
            md.push_str(
                "A/B of two builds: the other copy runs the baseline agent, so \"cost\" is this build's over the \
                 baseline's, and \"agent CPU\" the difference of the two agents' CPU.\n\n",
            );
        }
        md.push_str(
            "| workload | runs (pairs) | monitored / other | pair sd | agent CPU | cost |\n|---|---|---|---|---|---|\n",
        );
        for s in sums {
            if let Some(t) = &s.twins {
                let (c, n) = t.cost_pct();
                md.push_str(&format!(
                    "| {} | {} ({}) | {:.4} ± {:.4} | {:.2}% | {:.2}% | {c:.2}% ± {n:.2} |\n",
                    s.kind.name(),
                    t.runs,
                    t.runs / 2,
                    t.ratio.0,
                    2.0 * t.ratio.1,
                    t.pair_sd_pct(),
                    t.cpu_pct
                ));
            }
        }
    }
    md.push_str("\n### Targets\n\n| workload | target | figure | met |\n|---|---|---|---|\n");
    for s in sums {
        for (t, v, verdict) in s.targets() {
            md.push_str(&format!("| {} | {t} | {v} | {} |\n", s.kind.name(), verdict.text()));
        }
    }
    md
}

pub fn markdown(
    results: &[(Kind, Vec<Run>, Vec<Twin>)],
    soak: Option<&Soak>,
    secs: u64,
    pairs: usize,
    wrk_threads: usize,
) -> String {
    let sums: Vec<Summary> = results.iter().map(|(k, r, t)| summarize(*k, r, t)).collect();
    let mut md = String::from("## flow-agent overhead and coverage\n\n");
    if !sums.is_empty() {
        md.push_str(&tables(&sums, secs, pairs, wrk_threads));
    }
    if let Some(soak) = soak {
        let first = soak.samples.iter().find(|(t, _)| *t >= 10.0).or(soak.samples.first());
        let last = soak.samples.last();
        let max = soak.samples.iter().map(|s| s.1).max().unwrap_or(0);
        md.push_str(&format!(
            "\n### Soak: connection storm, {} s, agent on\n\n| | value |\n|---|---|\n| RSS (VmRSS) after warm-up ({:.0} s) | {:.1} MiB |\n\
             | RSS (VmRSS) at end ({:.0} s) | {:.1} MiB |\n| RSS max | {:.1} MiB |\n| throughput | {:.0} req/s |\n| agent CPU | {:.2}% |\n| coverage | {:.2}% |\n",
            soak.secs,
            first.map(|s| s.0).unwrap_or(0.0),
            first.map(|s| s.1).unwrap_or(0) as f64 / MIB,
            last.map(|s| s.0).unwrap_or(0.0),
            last.map(|s| s.1).unwrap_or(0) as f64 / MIB,
            max as f64 / MIB,
            soak.load.throughput,
            soak.cpu_pct,
            soak.coverage * 100.0
        ));
    }
    md.push('\n');
    md
}

pub fn json(results: &[(Kind, Vec<Run>, Vec<Twin>)], soak: Option<&Soak>, wrk_threads: usize) -> Value {
    let workloads: Vec<Value> = results
        .iter()
        .map(|(k, runs, twins)| {
            let s = summarize(*k, runs, twins);
            json!({
                "workload": k.id(),
                "off": {"throughput": s.off.throughput, "p50_us": s.off.p50_us, "p99_us": s.off.p99_us},
                "on": {"throughput": s.on.throughput, "p50_us": s.on.p50_us, "p99_us": s.on.p99_us},
                "throughput_cost_pct": s.cost_pct().0,
                "throughput_cost_two_se_pct": s.cost_pct().1,
                "agent_cpu_pct": s.cpu_pct,
                "peak_rss_bytes": s.rss_peak,
                "ebpf": s.progs.iter().map(|(n, ns, per, cnt)| json!({"program": n, "mean_ns": ns, "invocations": cnt, "invocations_per_connection": per, "invocations_per_request": s.per_request(*cnt)})).collect::<Vec<_>>(),
                "kernel_map_bytes": s.map_bytes,
                "logged_map_mib": s.logged_map_mib,
                "events_per_s": s.events_per_s,
                "drops": s.drops,
                "coverage": s.coverage,
                "connections": s.connections,
                "sockets_tracked_max": s.sockets_tracked_max,
                "targets": s.targets().into_iter().map(|(t, v, verdict)| json!({"target": t, "figure": v, "met": verdict.text().trim_matches('*')})).collect::<Vec<_>>(),
                "pair_ratio": s.pair_ratio.map(|(m, se)| json!({"mean": m, "standard_error": se})),
                "bracket_ratio": s.bracket_ratio.map(|(m, se)| json!({"mean": m, "standard_error": se})),
                "twins": s.twins.as_ref().map(|t| json!({
                    "runs": t.runs,
                    "ratio_mean": t.ratio.0,
                    "ratio_standard_error": t.ratio.1,
                    "pair_sd_pct": t.pair_sd_pct(),
                    "agent_cpu_pct": t.cpu_pct,
                    "throughput_cost_pct": t.cost_pct().0,
                    "throughput_cost_two_se_pct": t.cost_pct().1,
                    "runs_detail": twins.iter().map(|t| json!({"monitored": t.monitored, "other": t.unmonitored, "agent_cpu_pct": t.agent_cpu_pct})).collect::<Vec<_>>(),
                })),
                "runs": runs.iter().map(|r| json!({
                    "agent": r.agent.is_some(),
                    "throughput": r.load.throughput,
                    "p50_us": r.load.p50_us,
                    "p99_us": r.load.p99_us,
                    "load_errors": r.load.errors,
                    "secs": r.secs,
                    "active_opens": r.opens.0,
                    "passive_opens": r.opens.1,
                    "agent_cpu_pct": r.agent.as_ref().map(|a| a.cpu_pct),
                    "attempted_client": r.agent.as_ref().map(|a| a.reports.attempted_client),
                    "attempted_server": r.agent.as_ref().map(|a| a.reports.attempted_server),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "wrk_threads": wrk_threads,
        "workloads": workloads,
        "soak": soak.map(|s| json!({
            "secs": s.secs,
            "rss_samples": s.samples.iter().map(|(t, r)| json!([t, r])).collect::<Vec<_>>(),
            "throughput": s.load.throughput,
            "agent_cpu_pct": s.cpu_pct,
            "coverage": s.coverage,
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_noise_and_verdicts() {
        assert_eq!(mean_se(&[]), None);
        assert_eq!(mean_se(&[0.9]), Some((0.9, f64::INFINITY)), "one value: no error estimate");
        assert_eq!(judge_cost(-8.7, 200.0 * f64::INFINITY, 1.0), Verdict::WithinNoise, "one pair is not judged");
        let (m, se) = mean_se(&[0.9, 1.0, 1.1]).unwrap();
        assert!((m - 1.0).abs() < 1e-12 && (se - 0.1 / 3f64.sqrt()).abs() < 1e-12, "{m} {se}");
        assert_eq!(Verdict::of(true).text(), "yes");
        assert_eq!(Verdict::of(false).text(), "**no**");
        assert_eq!(Verdict::WithinNoise.text(), "within noise");
        assert_eq!(Verdict::NotJudged.text(), "not judged (A/B of two builds)");
    }

    fn run(throughput: f64, on: bool) -> Run {
        Run {
            load: super::super::workloads::Load { throughput, ..Default::default() },
            secs: 5.0,
            opens: (0, 0),
            agent: on.then(|| AgentRun {
                cpu_pct: 0.0,
                rss_peak: 0,
                progs: Vec::new(),
                map_bytes: 0,
                logged_map_mib: None,
                reports: Default::default(),
            }),
            ebpf_stats: false,
        }
    }

    #[test]
    fn bracketed_ratios_cancel_linear_drift_that_pairs_keep() {
        // The machine speeds up by 2% of the first run's throughput per run; the agent costs 3%.
        let runs: Vec<Run> =
            (0..=12).map(|i| run(0.97f64.powi(i % 2) * (100.0 + 2.0 * i as f64), i % 2 == 1)).collect();
        let refs: Vec<&Run> = runs.iter().collect();
        let b = bracketed(&refs);
        assert_eq!(b.len(), 6, "one per on run between two off runs");
        let (m, _) = mean_se_lag1(&b).unwrap();
        // Exact for drift by a constant factor per run; linear drift leaves a second-order rest.
        assert!((m - 0.97).abs() < 5e-4, "bracketed: {m}");
        let pairs: Vec<f64> =
            refs.chunks(2).filter(|p| p.len() == 2).map(|p| p[1].load.throughput / p[0].load.throughput).collect();
        let (pm, _) = mean_se(&pairs).unwrap();
        assert!(pm - 0.97 > 0.005, "a pair's ratio keeps the drift: {pm}");
        // Without the closing off run the last on run has no bracket.
        assert_eq!(bracketed(&refs[..12]).len(), 5);
    }

    #[test]
    fn neighbours_that_move_together_widen_the_error() {
        let (m, alternating) = mean_se_lag1(&[1.0, 2.0, 1.0, 2.0]).unwrap();
        assert_eq!(m, 1.5);
        assert_eq!(alternating, mean_se(&[1.0, 2.0, 1.0, 2.0]).unwrap().1, "a negative autocovariance counts as none");
        let (_, together) = mean_se_lag1(&[1.0, 1.0, 2.0, 2.0]).unwrap();
        assert!(together > alternating, "{together} > {alternating}");
        assert_eq!(mean_se_lag1(&[0.9]), Some((0.9, f64::INFINITY)));
        assert_eq!(mean_se_lag1(&[]), None);
    }

    #[test]
    fn twin_cost_adds_the_agents_cpu_share() {
        let twin = |m: f64, o: f64| Twin { monitored: m, unmonitored: o, agent_cpu_pct: 0.5 };
        assert!(TwinSummary::of(&[], 2).is_none());
        assert!(TwinSummary::of(&[twin(99.0, 100.0)], 2).is_none(), "one run is no pair");
        // Two pairs at 0.99 and 0.97: 2% lost; 0.5% of one core is 0.5% of one copy's half of 2 CPUs.
        let runs = [twin(99.0, 100.0), twin(99.0, 100.0), twin(97.0, 100.0), twin(97.0, 100.0)];
        let t = TwinSummary::of(&runs, 2).unwrap();
        assert_eq!(t.runs, 4);
        let (cost, noise) = t.cost_pct();
        assert!((cost - 2.5).abs() < 1e-9, "{cost}");
        assert!((noise - 2.0).abs() < 1e-9, "{noise}");
        // The two pairs' ratios, 0.99 and 0.97, vary by 1.414% (standard deviation).
        assert!((t.pair_sd_pct() - 2f64.sqrt()).abs() < 1e-9, "{}", t.pair_sd_pct());
        // On 8 CPUs one copy has 4: the same agent CPU is an eighth of a percent of it.
        let t8 = TwinSummary::of(&runs, 8).unwrap();
        assert!((t8.cost_pct().0 - 2.125).abs() < 1e-9);
        // A pair with a copy that did nothing has no ratio; an odd last run is left out.
        let t = TwinSummary::of(&[twin(99.0, 0.0), twin(97.0, 100.0), twin(98.0, 100.0), twin(98.0, 100.0)], 2);
        assert_eq!(t.unwrap().runs, 2);
        assert_eq!(TwinSummary::of(&runs[..3], 2).unwrap().runs, 2);
    }

    #[test]
    fn a_pair_of_twin_runs_cancels_what_one_copy_has_over_the_other() {
        // The first copy is 13% faster than the second in every run; the agent costs 2%.
        let (s, keep) = (1.13, 0.98);
        let pair = [
            Twin { monitored: 100.0 * s * keep, unmonitored: 100.0, agent_cpu_pct: 0.0 },
            Twin { monitored: 100.0 * keep, unmonitored: 100.0 * s, agent_cpu_pct: 0.0 },
        ];
        let runs: Vec<Twin> = pair.iter().chain(pair.iter()).map(|t| Twin { ..*t }).collect();
        let t = TwinSummary::of(&runs, 2).unwrap();
        let (cost, noise) = t.cost_pct();
        assert!((cost - 2.0).abs() < 1e-9 && noise.abs() < 1e-9, "{cost} ± {noise}");
        // The runs' own mean would read 1.3% with noise of its own.
        let single = mean(runs.iter().map(|t| t.monitored / t.unmonitored));
        assert!((100.0 * (1.0 - single) - 1.26).abs() < 0.01, "{single}");
    }

    #[test]
    fn a_cost_is_met_only_below_its_whole_interval() {
        assert_eq!(judge_cost(0.2, 0.5, 1.0), Verdict::Met);
        assert_eq!(judge_cost(0.8, 0.5, 1.0), Verdict::WithinNoise);
        assert_eq!(judge_cost(1.6, 0.5, 1.0), Verdict::Missed);
    }
}
