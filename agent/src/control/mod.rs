//! Flow operations: a local control API (HTTP over a Unix socket, optionally on loopback TCP) and
//! the `flow-agent flows ...` client. Capture returns the live flows matching up to 20 filters from
//! the kernel table with their current counters; flush removes them from tracking. The API server
//! runs on the daemon's runtime and hands each operation to the pipeline through a channel
//! (`Job`); the pipeline runs it between ticks (`execute`), so the kernel maps and the aggregator
//! stay owned by the run loop.

mod api;
mod cli;
mod client;
mod execute;
mod filter;
mod operations;

pub use api::Server;
pub use cli::{FlowsArgs, run as run_cli};
pub use execute::execute;

use tokio::sync::oneshot;

use filter::Matcher;
use operations::{Flow, OperationStatus, OperationType};

/// An operation for the pipeline to run.
pub struct Job {
    kind: OperationType,
    matchers: Vec<Matcher>,
    reply: oneshot::Sender<Outcome>,
}

/// What the pipeline did.
pub struct Outcome {
    status: OperationStatus,
    message: Option<String>,
    flows: Vec<Flow>,
}

impl Outcome {
    fn failed(message: impl Into<String>) -> Outcome {
        Outcome { status: OperationStatus::Failed, message: Some(message.into()), flows: Vec::new() }
    }
}
