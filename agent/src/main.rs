//! flow-agent: per-flow TCP metrics from eBPF, in windowed reports.
//!
//! Data flows one way: kernel maps -> capture -> aggregate -> enrich -> sinks.

mod aggregate;
mod capture;
mod check;
mod config;
mod control;
mod daemon;
mod enrich;
mod flowlog;
mod health;
mod imds;
mod metrics;
mod notify;
mod report;
mod sink;
mod sys;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::{Config, RunArgs};

#[derive(Parser, Debug)]
#[command(
    name = "flow-agent",
    version,
    about = "eBPF flow-capture agent: per-flow RTT, retransmissions, timeouts and bytes"
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    /// Without a command, run the agent.
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every requirement (kernel, BTF, cgroup v2, tracepoints, capabilities, sock_ops attach,
    /// IMDS, backend) and print OK/FAIL with how to fix each; exits 1 if one fails.
    Check(check::CheckArgs),
    /// Flow operations on a running agent: capture or flush live flows, list and describe
    /// operations, and read their results.
    Flows(control::FlowsArgs),
}

fn main() -> std::process::ExitCode {
    sys::fix_mmap_threshold();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(Command::Check(args)) = &cli.command {
        return if check::run(args) { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::FAILURE };
    }
    if let Some(Command::Flows(args)) = cli.command {
        return match control::run_cli(args, &cli.run) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("flow-agent: error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result = Config::resolve(&cli.run).map_err(anyhow::Error::from).and_then(|cfg| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(daemon::run(cfg))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flow-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
