//! Flow-log records: the VPC flow log record syntax (`fields`) and the records of one aggregation
//! interval built from the agent's windows (`interval`). The sink that writes them is
//! `sink::FlowLog`.

mod fields;
mod interval;

pub use fields::Format;
pub use interval::{Interval, Meta};
