//! Sinks: where reports go. Every sink implements `Sink`.

mod flow_log;
mod flow_log_files;
mod stdout;

pub use flow_log::FlowLog;
pub use stdout::Stdout;

use agent_common::report::Report;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing to {sink}: {source}")]
    Io { sink: &'static str, source: std::io::Error },
}

pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn send(&mut self, report: &Report) -> Result<(), SinkError>;
    /// The sink needs every flow of a window whole (no top-N, no `other`), e.g. to log each flow.
    fn wants_all_flows(&self) -> bool {
        false
    }
    /// Called once at shutdown after the last report: write out anything held back.
    fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
