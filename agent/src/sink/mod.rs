//! Sinks: where reports go. Every sink implements `Sink`.

mod stdout;

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
}
