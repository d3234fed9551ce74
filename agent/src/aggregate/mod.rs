//! From cumulative kernel counters to per-window flows: deltas per tick, windows aligned to the
//! wall clock, latency summaries, and top-N with an `other` entry that conserves totals.

mod delta;
mod summary;
mod topn;
mod window;

pub use delta::{FlowWindow, HistAcc};
pub use summary::summarize;
pub use topn::rank;
pub use window::{Aggregator, ClosedWindow};
