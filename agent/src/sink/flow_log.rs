//! The flow-log sink: one record per flow and direction per aggregation interval
//! (`--flow-log-max-aggregation-interval`, aligned to wall-clock multiples), to stdout or to
//! gzip files laid out as in S3 (`flow_log_files`), one file per interval.

use std::{io::Write, time::Duration};

use agent_common::report::Report;
use chrono::{DateTime, Utc};

use super::{Sink, SinkError, flow_log_files::LogFile};
use crate::{
    config::FlowLogDestination,
    flowlog::{Format, Interval, Meta},
};

pub struct FlowLog {
    format: Format,
    meta: Meta,
    length: Duration,
    destination: FlowLogDestination,
    flow_log_id: String,
    current: Option<Interval>,
}

fn align_down(t: DateTime<Utc>, length: Duration) -> DateTime<Utc> {
    let step = length.as_secs().max(1) as i64;
    let s = t.timestamp();
    DateTime::from_timestamp(s - s.rem_euclid(step), 0).unwrap_or(t)
}

impl FlowLog {
    pub fn new(format: Format, meta: Meta, length: Duration, destination: FlowLogDestination) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        FlowLog { format, meta, length, destination, flow_log_id: format!("fl-{}", &id[..17]), current: None }
    }

    fn write(&mut self, interval: &Interval) -> Result<(), SinkError> {
        let lines = interval.render(&self.format, &self.meta);
        let io = |source| SinkError::Io { sink: "flow-log", source };
        match &self.destination {
            FlowLogDestination::Stdout => {
                let mut out = std::io::stdout().lock();
                lines.iter().try_for_each(|l| writeln!(out, "{l}")).and_then(|_| out.flush()).map_err(io)
            }
            FlowLogDestination::Directory(root) => {
                let file = LogFile {
                    account: self.meta.account_id.as_deref().unwrap_or("unknown"),
                    region: self.meta.region.as_deref().unwrap_or("unknown"),
                    flow_log_id: &self.flow_log_id,
                    start: interval.start,
                };
                let path = file.write(root, &self.format.header(), &lines).map_err(io)?;
                tracing::debug!(path = %path.display(), records = lines.len(), "flow-log file written");
                Ok(())
            }
        }
    }
}

impl Sink for FlowLog {
    fn name(&self) -> &'static str {
        "flow-log"
    }

    fn wants_all_flows(&self) -> bool {
        true
    }

    fn send(&mut self, report: &Report) -> Result<(), SinkError> {
        let start = align_down(report.window.start, self.length);
        if let Some(done) = self.current.take_if(|c| c.start != start) {
            self.write(&done)?;
        }
        let length = self.length;
        let current = self.current.get_or_insert_with(|| Interval::new(start, length));
        current.add(report);
        if report.window.end >= current.end()
            && let Some(done) = self.current.take()
        {
            self.write(&done)?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        match self.current.take() {
            Some(partial) => self.write(&partial),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::report::{AgentInfo, AgentStats, OtherFlows, Window};
    use std::path::{Path, PathBuf};

    fn report(start: &str, end: &str) -> Report {
        Report {
            report_id: "r".into(),
            schema_version: 1,
            window: Window { start: start.parse().unwrap(), end: end.parse().unwrap() },
            agent: AgentInfo { version: "0".into(), hostname: "h".into() },
            flows: vec![],
            other: OtherFlows::default(),
            agent_stats: AgentStats::default(),
        }
    }

    fn files(root: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![root.join("AWSLogs")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() { stack.push(e.path()) } else { out.push(e.path()) }
            }
        }
        out.sort();
        out
    }

    /// One file per interval: written when a window reaches the interval's end, and the partial
    /// interval at close.
    #[test]
    fn files_rotate_per_interval() {
        let root = tempfile::tempdir().unwrap();
        let meta = Meta { account_id: Some("123456789012".into()), region: Some("us-east-1".into()) };
        let dest = FlowLogDestination::Directory(root.path().to_path_buf());
        let mut s = FlowLog::new(Format::default(), meta, Duration::from_secs(60), dest);
        s.send(&report("2026-11-22T10:00:00Z", "2026-11-22T10:00:30Z")).unwrap();
        assert!(files(root.path()).is_empty(), "the interval is not over");
        s.send(&report("2026-11-22T10:00:30Z", "2026-11-22T10:01:00Z")).unwrap();
        assert_eq!(files(root.path()).len(), 1);
        s.send(&report("2026-11-22T10:01:00Z", "2026-11-22T10:01:30Z")).unwrap();
        s.send(&report("2026-11-22T10:02:00Z", "2026-11-22T10:02:30Z")).unwrap();
        assert_eq!(files(root.path()).len(), 2, "a window of a later interval closes the current one");
        s.close().unwrap();
        let names: Vec<String> =
            files(root.path()).iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names.len(), 3);
        for (n, stamp) in names.iter().zip(["20261122T1000Z", "20261122T1001Z", "20261122T1002Z"]) {
            assert!(n.starts_with("123456789012_vpcflowlogs_us-east-1_fl-") && n.contains(stamp), "{n}");
        }
    }
}
