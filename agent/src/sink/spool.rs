//! The durable report spool: every report bound for a network destination is written here first,
//! and each destination delivers from it in order with its own cursor.
//!
//! Layout of `--spool-dir`:
//! - `<seq:020>-<report_id>.json`: one report each, written to `tmp/` then fsync'ed and renamed
//!   into place (and the directory fsync'ed), so a file in the spool is always whole. `seq` grows
//!   by one per report and gives the delivery order.
//! - `cursor.<destination>`: "`<next seq> <dropped>`": the first report that destination has not
//!   delivered, and how many reports were dropped (bound exceeded) since its last delivery, also
//!   replaced atomically. A crash between a delivery and its cursor update only repeats that
//!   delivery (the backend stores each `report_id` once).
//! - `quarantine/`: files that could not be read back (corrupt, renamed by hand) and cursors that
//!   did not parse; `rejected/`: copies of the last reports a destination refused for good.
//!
//! A report leaves the spool once every destination is past it. Beyond `max_bytes` the oldest
//! reports are removed and counted for every destination that had not delivered them.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::report::Report;
use tokio::sync::watch;

use crate::metrics::{DestinationMetrics, Metrics};

/// Copies of rejected reports kept in `rejected/` (the oldest are removed beyond this).
pub const KEEP_REJECTED: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot serialize report {0}: {1}")]
    Serialize(String, serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    next: u64,
    dropped: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    bytes: u64,
    name: String,
}

struct State {
    next_seq: u64,
    files: BTreeMap<u64, Entry>,
    bytes: u64,
    cursors: BTreeMap<&'static str, Cursor>,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    appended: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    dest_metrics: BTreeMap<&'static str, Arc<DestinationMetrics>>,
}

/// What a destination gets next.
pub enum Next {
    Report {
        seq: u64,
        /// With `agent_stats.spool_dropped_reports` set to the drops this destination has not
        /// reported yet.
        report: Box<Report>,
        /// That count (handed back to `ack`).
        carried: u64,
    },
    /// The file at `seq` could not be read back; quarantine it.
    Corrupt { seq: u64, problem: String },
}

fn file_name(seq: u64, report_id: &str) -> String {
    let id: String = report_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(64).collect();
    format!("{seq:020}-{id}.json")
}

fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".json")?;
    let (seq, _) = stem.split_at_checked(20)?;
    if !stem[20..].starts_with('-') {
        return None;
    }
    seq.parse().ok()
}

fn parse_cursor(text: &str) -> Option<Cursor> {
    let mut it = text.split_whitespace();
    let next = it.next()?.parse().ok()?;
    let dropped = it.next()?.parse().ok()?;
    it.next().is_none().then_some(Cursor { next, dropped })
}

fn fsync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Write `bytes` to `dir/name` atomically: `tmp/`, fsync, rename, fsync of `dir`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join("tmp").join(name);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io(&tmp))?;
    drop(f);
    let dest = dir.join(name);
    fs::rename(&tmp, &dest).map_err(io(&dest))?;
    fsync_dir(dir)
}

impl Spool {
    /// Open (creating) the spool for these destinations: clean `tmp/`, index the reports, recover
    /// the cursors, and remove reports every destination has delivered.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        destinations: &[&'static str],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Spool>, SpoolError> {
        for sub in ["", "tmp", "quarantine", "rejected"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io(&p))?;
        }
        // Files in tmp/ never reached the spool (a crash before their rename).
        let tmp = dir.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            tracing::warn!("spool: removing {} left unfinished by a previous run", e.path().display());
            let _ = fs::remove_file(e.path());
        }
        let mut files = BTreeMap::new();
        let mut cursors_found: BTreeMap<String, PathBuf> = BTreeMap::new();
        for e in fs::read_dir(dir).map_err(io(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            if let Some(dest) = name.strip_prefix("cursor.") {
                cursors_found.insert(dest.to_string(), e.path());
            } else if let Some(seq) = parse_name(&name) {
                files.insert(seq, Entry { bytes: meta.len(), name });
            } else if !name.ends_with(".tmp") {
                quarantine_file(dir, &e.path(), "not a spool file name");
            }
        }
        let oldest = files.keys().next().copied();
        let mut next_seq = files.keys().next_back().map_or(0, |s| s + 1);
        let mut cursors = BTreeMap::new();
        for d in destinations {
            let cursor = match cursors_found.get(*d) {
                Some(path) => match fs::read_to_string(path).ok().as_deref().and_then(parse_cursor) {
                    Some(c) => c,
                    None => {
                        quarantine_file(dir, path, "unreadable cursor; delivering from the oldest report");
                        Cursor { next: oldest.unwrap_or(next_seq), dropped: 0 }
                    }
                },
                None => Cursor { next: oldest.unwrap_or(0), dropped: 0 },
            };
            next_seq = next_seq.max(cursor.next);
            cursors.insert(*d, cursor);
        }
        let (appended, _) = watch::channel(next_seq);
        let dest_metrics = destinations.iter().map(|d| (*d, metrics.destination(d))).collect();
        let bytes = files.values().map(|e: &Entry| e.bytes).sum();
        let spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(State { next_seq, files, bytes, cursors }),
            appended,
            metrics,
            dest_metrics,
        };
        {
            let mut st = spool.lock();
            let done: Vec<u64> = st.files.keys().copied().filter(|s| spool.delivered_by_all(&st, *s)).collect();
            for seq in done {
                spool.remove(&mut st, seq);
            }
            tracing::info!(
                dir = %dir.display(),
                reports = st.files.len(),
                bytes = st.bytes,
                "spool opened; next report is number {}",
                st.next_seq
            );
            spool.update_gauges(&st);
        }
        Ok(Arc::new(spool))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, st: &State) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.spool_reports.store(st.files.len() as u64, Relaxed);
        self.metrics.spool_bytes.store(st.bytes, Relaxed);
    }

    fn delivered_by_all(&self, st: &State, seq: u64) -> bool {
        st.cursors.values().all(|c| c.next > seq)
    }

    fn remove(&self, st: &mut State, seq: u64) {
        if let Some(e) = st.files.remove(&seq) {
            st.bytes -= e.bytes;
            let p = self.dir.join(&e.name);
            if let Err(err) = fs::remove_file(&p)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("spool: cannot remove {}: {err}", p.display());
            }
        }
    }

    fn save_cursor(&self, name: &str, c: Cursor) {
        let file = format!("cursor.{name}");
        let text = format!("{} {}\n", c.next, c.dropped);
        if let Err(e) = write_atomic(&self.dir, &file, text.as_bytes()) {
            // Not fatal: the previous cursor only repeats deliveries.
            tracing::error!(destination = name, "cannot save the spool cursor: {e}");
        }
    }

    /// Wakes up when reports are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Reports not yet delivered by every destination.
    pub fn len(&self) -> usize {
        self.lock().files.len()
    }

    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.lock().files.contains_key(&seq)
    }

    /// Write a report durably; returns its sequence number. Drops the oldest reports first when
    /// it would not fit in `max_bytes`.
    pub fn append(&self, report: &Report) -> Result<u64, SpoolError> {
        let json = serde_json::to_vec(report).map_err(|e| SpoolError::Serialize(report.report_id.clone(), e))?;
        let mut st = self.lock();
        while st.bytes + json.len() as u64 > self.max_bytes
            && let Some((&oldest, entry)) = st.files.first_key_value()
        {
            let name = entry.name.clone();
            self.drop_oldest(&mut st, oldest, &name);
        }
        if json.len() as u64 > self.max_bytes {
            tracing::warn!(
                "report {} alone ({} bytes) exceeds spool_max_bytes ({}); spooled anyway",
                report.report_id,
                json.len(),
                self.max_bytes
            );
        }
        let seq = st.next_seq;
        let name = file_name(seq, &report.report_id);
        write_atomic(&self.dir, &name, &json)?;
        st.next_seq += 1;
        st.bytes += json.len() as u64;
        st.files.insert(seq, Entry { bytes: json.len() as u64, name });
        tracing::debug!(seq, bytes = json.len(), "spooled report {}", report.report_id);
        self.update_gauges(&st);
        drop(st);
        self.appended.send_replace(seq);
        Ok(seq)
    }

    fn drop_oldest(&self, st: &mut State, seq: u64, name: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut owed = Vec::new();
        for (d, c) in st.cursors.iter_mut() {
            if c.next <= seq {
                c.next = seq + 1;
                c.dropped += 1;
                owed.push((*d, *c));
            }
        }
        for (d, c) in owed {
            self.save_cursor(d, c);
            if let Some(m) = self.dest_metrics.get(d) {
                m.dropped.fetch_add(1, Relaxed);
            }
        }
        self.metrics.spool_dropped.fetch_add(1, Relaxed);
        tracing::warn!(
            "spool full (spool_max_bytes {}): dropped the oldest report {name}; the count goes out in the next delivered report",
            self.max_bytes
        );
        self.remove(st, seq);
    }

    /// The next report for `dest` (None when it has delivered everything).
    pub fn next_for(&self, dest: &'static str) -> Option<Next> {
        loop {
            let (seq, name, carried) = {
                let st = self.lock();
                let c = *st.cursors.get(dest)?;
                let (seq, e) = st.files.range(c.next..).next()?;
                (*seq, e.name.clone(), c.dropped)
            };
            let path = self.dir.join(&name);
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                // Dropped meanwhile (bound exceeded): look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.contains(seq) => continue,
                Err(e) => return Some(Next::Corrupt { seq, problem: format!("cannot read {}: {e}", path.display()) }),
            };
            return Some(match serde_json::from_slice::<Report>(&bytes) {
                Ok(mut report) => {
                    report.agent_stats.spool_dropped_reports += carried;
                    Next::Report { seq, report: Box::new(report), carried }
                }
                Err(e) => Next::Corrupt { seq, problem: format!("{} is not a valid report: {e}", path.display()) },
            });
        }
    }

    /// Move `dest` past `seq`. `delivered`: the report (and the drops it carried) reached it.
    fn advance(&self, dest: &'static str, seq: u64, carried: u64, delivered: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut st = self.lock();
        let Some(c) = st.cursors.get_mut(dest) else { return };
        if delivered {
            c.dropped = c.dropped.saturating_sub(carried);
        }
        if c.next <= seq {
            c.next = seq + 1;
        } else if delivered {
            // Dropped (and counted) while in flight, yet delivered after all.
            c.dropped = c.dropped.saturating_sub(1);
            if let Some(m) = self.dest_metrics.get(dest) {
                m.dropped.fetch_sub(1, Relaxed);
            }
        }
        let c = *c;
        self.save_cursor(dest, c);
        if self.delivered_by_all(&st, seq) {
            self.remove(&mut st, seq);
        }
        self.update_gauges(&st);
    }

    /// `dest` delivered `seq`.
    pub fn ack(&self, dest: &'static str, seq: u64, carried: u64) {
        self.advance(dest, seq, carried, true);
    }

    /// `dest` refused `seq` for good: keep a copy in `rejected/` (bounded) and move on.
    pub fn reject(&self, dest: &'static str, seq: u64) {
        let name = self.lock().files.get(&seq).map(|e| e.name.clone());
        if let Some(name) = name {
            let rejected = self.dir.join("rejected");
            let copy = rejected.join(format!("{dest}.{name}"));
            if let Err(e) = fs::hard_link(self.dir.join(&name), &copy)
                .or_else(|_| fs::copy(self.dir.join(&name), &copy).map(|_| ()))
            {
                tracing::warn!("spool: cannot keep a copy of rejected report {name}: {e}");
            }
            prune_oldest(&rejected, KEEP_REJECTED);
        }
        self.advance(dest, seq, 0, false);
    }

    /// The file at `seq` cannot be read back: move it to `quarantine/` for every destination.
    pub fn quarantine(&self, seq: u64, problem: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut st = self.lock();
        if let Some(e) = st.files.remove(&seq) {
            st.bytes -= e.bytes;
            quarantine_file(&self.dir, &self.dir.join(&e.name), problem);
            self.metrics.spool_quarantined.fetch_add(1, Relaxed);
        }
        self.update_gauges(&st);
    }
}

/// Move a file into `quarantine/`, saying why.
fn quarantine_file(dir: &Path, path: &Path, problem: &str) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dest = dir.join("quarantine").join(format!("{}.{name}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")));
    match fs::rename(path, &dest) {
        Ok(()) => tracing::error!("spool: {problem}: moved {} to {}", path.display(), dest.display()),
        Err(e) => {
            tracing::error!("spool: {problem}: cannot move {} to quarantine ({e}); removing it", path.display());
            let _ = fs::remove_file(path);
        }
    }
    prune_oldest(&dir.join("quarantine"), KEEP_REJECTED);
}

/// Keep at most `keep` files in `dir`, removing the oldest names (they sort by time or sequence).
fn prune_oldest(dir: &Path, keep: usize) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    if names.len() <= keep {
        return;
    }
    names.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
    for p in &names[..names.len() - keep] {
        let _ = fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::report::{AgentInfo, AgentStats, OtherFlows, SCHEMA_VERSION, Window};

    fn report(n: u32) -> Report {
        Report {
            report_id: format!("00000000-0000-4000-8000-{n:012}"),
            schema_version: SCHEMA_VERSION,
            window: Window {
                start: "2026-11-22T10:00:00Z".parse().unwrap(),
                end: "2026-11-22T10:00:30Z".parse().unwrap(),
            },
            agent: AgentInfo { version: "t".into(), hostname: "h".into() },
            flows: vec![],
            other: OtherFlows::default(),
            agent_stats: AgentStats::default(),
        }
    }

    fn open(dir: &Path, max: u64, dests: &[&'static str]) -> Arc<Spool> {
        Spool::open(dir, max, dests, Arc::new(Metrics::default())).unwrap()
    }

    fn take(s: &Spool, d: &'static str) -> (u64, Report, u64) {
        match s.next_for(d) {
            Some(Next::Report { seq, report, carried }) => (seq, *report, carried),
            Some(Next::Corrupt { problem, .. }) => panic!("corrupt: {problem}"),
            None => panic!("nothing for {d}"),
        }
    }

    #[test]
    fn each_destination_delivers_in_order_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20, &["a", "b"]);
        for n in 0..3 {
            assert_eq!(s.append(&report(n)).unwrap(), u64::from(n));
        }
        let (seq, r, c) = take(&s, "a");
        assert_eq!((seq, r.report_id.as_str(), c), (0, report(0).report_id.as_str(), 0));
        s.ack("a", 0, 0);
        let (seq, _, _) = take(&s, "a");
        assert_eq!(seq, 1);
        assert_eq!(s.len(), 3, "b has delivered nothing");
        s.ack("b", 0, 0);
        assert_eq!(s.len(), 2, "report 0 is gone once both delivered it");
        drop(s);
        // Reopen: a resumes at 1, b at 1, numbering goes on.
        let s = open(dir.path(), 1 << 20, &["a", "b"]);
        assert_eq!(take(&s, "a").0, 1);
        assert_eq!(take(&s, "b").0, 1);
        assert_eq!(s.append(&report(9)).unwrap(), 3);
        for seq in 1..4 {
            assert_eq!(take(&s, "a").0, seq);
            s.ack("a", seq, 0);
            s.ack("b", seq, 0);
        }
        assert!(s.next_for("a").is_none() && s.len() == 0);
        drop(s);
        let s = open(dir.path(), 1 << 20, &["a", "b"]);
        assert_eq!(s.append(&report(10)).unwrap(), 4, "numbering survives an empty spool");
        // A new destination starts at the oldest report.
        drop(s);
        let s = open(dir.path(), 1 << 20, &["a", "c"]);
        assert_eq!(take(&s, "c").0, 4);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_them_once() {
        let dir = tempfile::tempdir().unwrap();
        let size = serde_json::to_vec(&report(0)).unwrap().len() as u64;
        let s = open(dir.path(), size * 3, &["a", "b"]);
        for n in 0..5 {
            s.append(&report(n)).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(s.bytes() <= size * 3);
        assert_eq!(s.metrics.spool_dropped.load(std::sync::atomic::Ordering::Relaxed), 2);
        let (seq, r, carried) = take(&s, "a");
        assert_eq!((seq, carried, r.agent_stats.spool_dropped_reports), (2, 2, 2));
        s.ack("a", seq, carried);
        let (_, r, carried) = take(&s, "a");
        assert_eq!((carried, r.agent_stats.spool_dropped_reports), (0, 0), "counted once");
        // The count survives a restart for b, which delivered nothing.
        drop(s);
        let s = open(dir.path(), size * 3, &["a", "b"]);
        let (seq, r, _) = take(&s, "b");
        assert_eq!((seq, r.agent_stats.spool_dropped_reports), (2, 2));
        // A report rejected does not clear the count: the next delivered one carries it.
        s.reject("b", seq);
        let (seq, r, carried) = take(&s, "b");
        assert_eq!((seq, r.agent_stats.spool_dropped_reports), (3, 2));
        s.ack("b", seq, carried);
        assert_eq!(take(&s, "b").2, 0);
        assert_eq!(fs::read_dir(dir.path().join("rejected")).unwrap().count(), 1);
    }

    #[test]
    fn dropped_while_in_flight_then_delivered_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let size = serde_json::to_vec(&report(0)).unwrap().len() as u64;
        let s = open(dir.path(), size * 2, &["a"]);
        s.append(&report(0)).unwrap();
        let (seq, _, carried) = take(&s, "a");
        s.append(&report(1)).unwrap();
        s.append(&report(2)).unwrap(); // drops report 0, in flight
        s.ack("a", seq, carried);
        let (seq, r, _) = take(&s, "a");
        assert_eq!((seq, r.agent_stats.spool_dropped_reports), (1, 0));
    }

    #[test]
    fn corrupt_files_and_cursors_are_quarantined_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 1 << 20, &["a"]);
        for n in 0..3 {
            s.append(&report(n)).unwrap();
        }
        s.ack("a", 0, 0);
        drop(s);
        // A torn report file, a leftover temp file, a cursor that does not parse, a stray file.
        let one = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("00000000000000000001-"))
            .unwrap();
        let text = fs::read(&one).unwrap();
        fs::write(&one, &text[..text.len() / 2]).unwrap();
        fs::write(dir.path().join("tmp/00000000000000000003-x.json"), b"{").unwrap();
        fs::write(dir.path().join("cursor.a"), b"garbage").unwrap();
        fs::write(dir.path().join("stray.txt"), b"x").unwrap();
        let s = open(dir.path(), 1 << 20, &["a"]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // The cursor is lost: delivery starts again at the oldest report (at least once).
        match s.next_for("a") {
            Some(Next::Corrupt { seq: 1, problem }) => {
                assert!(problem.contains("not a valid report"), "{problem}");
                s.quarantine(1, &problem);
            }
            _ => panic!("the torn file must come back as corrupt"),
        }
        let (seq, _, _) = take(&s, "a");
        assert_eq!(seq, 2);
        let quarantined = fs::read_dir(dir.path().join("quarantine")).unwrap().count();
        assert_eq!(quarantined, 3, "torn report, bad cursor, stray file");
        assert_eq!(s.append(&report(5)).unwrap(), 3);
    }
}
