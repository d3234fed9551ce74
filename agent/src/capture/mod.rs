//! Kernel side, seen from userspace: find the cgroup and tracefs, load and attach the eBPF
//! programs, and read their maps. Produces `Snapshot`s for `aggregate`.

mod btf;
mod cgroup;
mod error;
mod loader;
mod netns;
mod peers;
mod privileges;
pub mod probe;
mod records;
mod tracefs;
mod walk;

pub use error::CaptureError;
pub use loader::{Attached, Capture, Snapshot};
pub use privileges::drop_all as drop_privileges;
pub use records::{READ_EVERY as READ_RECORDS_EVERY, next_read_wait as next_records_read_wait};
