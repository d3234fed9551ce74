//! flow-agent: per-flow TCP metrics from eBPF, in windowed reports.
//!
//! Data flows one way: kernel maps -> capture -> aggregate -> enrich -> sinks.

mod aggregate;
mod capture;
mod config;
mod daemon;
mod enrich;
mod report;
mod sink;
mod sys;

use clap::Parser;
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
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
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
