//! Enrichment: where each flow runs and what it talks to. The capture core ships without
//! metadata sources; EC2 and Kubernetes enrichers plug in here.

use agent_common::report::Report;

pub trait Enricher: Send {
    fn enrich(&self, report: &mut Report);
}

/// No metadata: flows keep their enrichment fields absent.
pub struct NoMetadata;

impl Enricher for NoMetadata {
    fn enrich(&self, _report: &mut Report) {}
}
