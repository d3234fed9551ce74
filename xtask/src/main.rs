//! Project tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! `setup` is idempotent and installs everything a fresh Debian machine lacks: apt packages the
//! tests use, rust-src, and bpf-linker linked against this toolchain's own libLLVM.

mod backend;
mod bench;
mod package;
mod setup;

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// `cargo xtask help`; the bench's synopsis is `bench::USAGE`, the one its errors print.
fn usage() -> String {
    format!(
        "usage: cargo xtask <command>

commands:
  setup            install what builds and tests need (idempotent)
  build            build flow-agent (release), eBPF programs included
  run [ARGS...]    setup, build, then run `flow-agent --dry-run ARGS...` (needs root)
  test             setup, then every test: fmt, clippy, unit and kernel integration tests,
                   backend tests against SQLite and PostgreSQL, boto3 end to end
                   (FLOW_AGENT_SKIP_PRIVILEGED=1 skips the tests that need root, explicitly)
  {}
                   benchmarks, printed as markdown (agent figures also in target/bench/agent.json):
                   the agent off/on under each workload (root), alternating, then as twins (two
                   copies at once, the agent on one, then on the other: --twins=N is even), and
                   the backend; default all but the soak;
                   --quick: one short off/on pair and two twin runs each; --soak: a 10-minute
                   storm (RSS) (60 s with --quick); see docs/performance.md
  bench enrich     enrichment cost per report window of 500 flows (release-mode unit test)
  package [--smoke] .deb and .rpm in target/package/ (installs cargo-deb, cargo-generate-rpm);
                   --smoke: then install the .deb, run and verify it, remove and purge (root)",
        bench::USAGE
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::all(),
        Some("build") => setup::toolchain().and_then(|_| build()),
        Some("run") => run(&args[1..]),
        Some("test") => test(),
        Some("bench") if args.get(1).is_some_and(|a| a == "enrich") => bench_enrich(),
        Some("bench") => bench::main(&args[1..]),
        Some("__idle-server" | "__idle-client") => bench::idle_helper(&args),
        Some("package") => package::build().and_then(|p| match args.get(1).map(String::as_str) {
            Some("--smoke") => package::smoke(&p),
            _ => Ok(()),
        }),
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command {other:?}\n\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Enrichment cost per report window: an ignored release-mode unit test prints the figure.
fn bench_enrich() -> Result<()> {
    run_cmd(cargo().args([
        "test",
        "--release",
        "-p",
        "flow-agent",
        "--bin",
        "flow-agent",
        "enrich::ec2::tests::bench_enrich_500_flows",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
    ]))
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_path_buf()
}

/// Run a command to completion, failing with its command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("+ {line}");
    let status = cmd.status().with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// Run a command to completion and return its stdout, failing with its command line and both
/// output streams if it fails.
pub fn output(cmd: &mut Command) -> Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("cannot start {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed with {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> Result<()> {
    run_cmd(cargo().args(["build", "--release", "-p", "flow-agent"]))
}

fn run(args: &[String]) -> Result<()> {
    // `cargo xtask run -- --format table`: the separator is for cargo, not for the agent.
    let args = args.strip_prefix(&["--".to_string()]).unwrap_or(args);
    setup::toolchain()?;
    setup::apt(&["iproute2"])?;
    build()?;
    let bin = root().join("target/release/flow-agent");
    let mut cmd = Command::new(&bin);
    cmd.arg("--dry-run").args(args);
    if !setup::is_root() {
        bail!(
            "flow-agent loads eBPF programs and needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): run `sudo {}`",
            bin.display()
        );
    }
    run_cmd(&mut cmd)
}

fn test() -> Result<()> {
    setup::all()?;
    let skip_privileged = std::env::var("FLOW_AGENT_SKIP_PRIVILEGED").is_ok_and(|v| v == "1");
    if !skip_privileged && !setup::is_root() {
        bail!(
            "the kernel integration tests need root; run as root, or set FLOW_AGENT_SKIP_PRIVILEGED=1 to skip them explicitly"
        );
    }
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run_cmd(cargo().current_dir(root().join("agent-ebpf")).args(["fmt", "--", "--check"]))?;
    run_cmd(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    let mut t = cargo();
    t.args(["test", "--workspace", "--all-targets"]).env("FLOW_BACKEND_TEST_POSTGRES_URL", backend::postgres_url());
    run_cmd(&mut t)?;
    // Packages: build both, install the .deb, run it, verify the unit, remove and purge (root).
    if skip_privileged {
        eprintln!("SKIPPED the package smoke test (dpkg -i): FLOW_AGENT_SKIP_PRIVILEGED=1");
        return Ok(());
    }
    package::smoke(&package::build()?)
}
