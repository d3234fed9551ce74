//! The dry-run sink: one JSON report per line, or a readable table.

use std::io::Write;

use agent_common::report::{FlowMetrics, Report, Role};

use super::{Sink, SinkError};
use crate::config::Format;

pub struct Stdout {
    format: Format,
}

impl Stdout {
    pub fn new(format: Format) -> Self {
        Stdout { format }
    }
}

impl Sink for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn send(&mut self, report: &Report) -> Result<(), SinkError> {
        let text = match self.format {
            Format::Json => {
                let mut s = serde_json::to_string(report).expect("a report always serializes");
                s.push('\n');
                s
            }
            Format::Table => table(report),
        };
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|source| SinkError::Io { sink: "stdout", source })
    }
}

fn row(flow: &str, m: &FlowMetrics) -> String {
    let c = &m.connections;
    format!(
        "{flow:<56} {:>5} {:>5} {:>5} {:>5} {:>12} {:>12} {:>7} {:>5} {:>9.0}\n",
        c.attempted,
        c.established,
        c.failed,
        c.active,
        m.bytes_sent,
        m.bytes_received,
        m.retransmissions,
        m.timeouts,
        m.rtt_us.mean
    )
}

pub fn table(r: &Report) -> String {
    let mut s = format!(
        "window {} .. {}  flows {} (+{} in other)  events {}  map_full {}/{}/{}\n",
        r.window.start.format("%H:%M:%S"),
        r.window.end.format("%H:%M:%S"),
        r.flows.len(),
        r.other.flows,
        r.agent_stats.events,
        r.agent_stats.map_full.sockets,
        r.agent_stats.map_full.flows,
        r.agent_stats.map_full.listeners,
    );
    s.push_str(&format!(
        "{:<56} {:>5} {:>5} {:>5} {:>5} {:>12} {:>12} {:>7} {:>5} {:>9}\n",
        "flow", "att", "est", "fail", "open", "bytes_out", "bytes_in", "retrans", "rto", "rtt_us"
    ));
    for f in &r.flows {
        let arrow = match f.role {
            Role::Client => format!("{} -> {}:{}", f.local_ip, f.remote_ip, f.target_port),
            Role::Server => format!("{}:{} <- {}", f.local_ip, f.target_port, f.remote_ip),
        };
        s.push_str(&row(&arrow, &f.metrics));
    }
    if r.other.flows > 0 {
        s.push_str(&row(&format!("other ({} flows)", r.other.flows), &r.other.metrics));
    }
    s.push('\n');
    s
}
