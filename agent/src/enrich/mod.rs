//! Enrichment: where each flow runs and what it talks to. Each metadata source is an `Enricher`
//! that fills the fields it knows; `build` chains the ones the config enables. Enrichers read
//! snapshots kept fresh by background tasks: `enrich` never waits on the network.

mod aws_files;
mod classify;
mod conntrack;
pub mod ec2;
mod instance;
mod prefix;

use agent_common::report::Report;

use crate::config::Config;

pub mod kubernetes;

pub trait Enricher: Send {
    fn enrich(&self, report: &mut Report);
}

/// No metadata: flows keep their enrichment fields absent.
pub struct NoMetadata;

impl Enricher for NoMetadata {
    fn enrich(&self, _report: &mut Report) {}
}

/// Enrichers applied in order; later ones see what earlier ones filled.
pub struct Chain(pub Vec<Box<dyn Enricher>>);

impl Enricher for Chain {
    fn enrich(&self, report: &mut Report) {
        for e in &self.0 {
            e.enrich(report);
        }
    }
}

/// The enrichers that must start while the capabilities are still held (conntrack subscribes
/// with CAP_NET_ADMIN). They spawn tasks on the current runtime and must start no thread: the
/// capability drop that follows requires a single-threaded process.
pub fn build_privileged(cfg: &Config) -> anyhow::Result<Vec<Box<dyn Enricher>>> {
    let mut chain: Vec<Box<dyn Enricher>> = Vec::new();
    chain.extend(ec2::build(cfg)?);
    Ok(chain)
}

/// The whole chain the config enables: `privileged` (from `build_privileged`) then the enrichers
/// started after the capability drop (the Kubernetes watchers run on a thread of their own).
/// Must not block: metadata that is not there yet is simply absent.
pub fn build(cfg: &Config, privileged: Vec<Box<dyn Enricher>>) -> anyhow::Result<Box<dyn Enricher>> {
    let mut chain = privileged;
    // Last: it reads the DNAT address earlier enrichers may have filled.
    chain.extend(kubernetes::Kubernetes::start(cfg)?.map(|k| Box::new(k) as Box<dyn Enricher>));
    if chain.is_empty() {
        return Ok(Box::new(NoMetadata));
    }
    Ok(Box::new(Chain(chain)))
}
