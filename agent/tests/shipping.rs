//! Shipping against the real flow-backend (SQLite in a temp dir) and a loopback server of the
//! test's own: backend outages, kill -9 of the agent, the spool bound, Retry-After, SigV4, and
//! /metrics. The agent runs in dry-run too, so stdout lists every report it emitted (and spooled,
//! which happens first): the oracle for what the backend must hold, once each, in order.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::report::{AgentStats, Report};
use support::{Agent, Lab};

const DELIVERIES: &str = "flow_agent_deliveries_total{destination=\"backend\"}";
const FAILURES: &str = "flow_agent_delivery_failures_total{destination=\"backend\"}";
const SPOOL_REPORTS: &str = "flow_agent_spool_reports";
const SPOOL_DROPPED: &str = "flow_agent_spool_dropped_reports_total";
const BACKEND_DROPPED: &str = "flow_agent_destination_dropped_reports_total{destination=\"backend\"}";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The flow-backend binary of this workspace, built (once, no-op when fresh) with the profile
/// and target directory these tests were built with.
fn backend_bin() -> PathBuf {
    static BIN: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut bin = BIN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = &*bin {
        return b.clone();
    }
    // target/<profile>/deps/shipping-<hash>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "-p", "flow-backend", "--target-dir"]).arg(target_dir);
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build -p flow-backend");
    assert!(out.status.success(), "cargo build -p flow-backend failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let path = profile_dir.join("flow-backend");
    assert!(path.exists(), "{} is missing after cargo build", path.display());
    *bin = Some(path.clone());
    path
}

/// A running flow-backend on a fixed port (so that the agent can be pointed at it before it runs).
struct Backend {
    child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn start(port: u16, db: &Path, extra: &[&str]) -> Backend {
        let mut child = Command::new(backend_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database"])
            .arg(db)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn flow-backend");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("flow-backend listening on "), "flow-backend did not start: {line:?}");
        Backend { child }
    }

    /// SIGKILL: the backend goes down.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Reports stored in the backend's SQLite file, in the order they were inserted.
fn stored(db: &Path) -> Vec<(String, AgentStats)> {
    use sqlx::{Connection, Row};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}?mode=ro", db.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.expect("open the backend's database");
        let rows = sqlx::query("SELECT report_id, agent_stats_json FROM reports ORDER BY rowid")
            .fetch_all(&mut c)
            .await
            .expect("query reports");
        rows.iter()
            .map(|r| {
                let stats: String = r.get(1);
                (r.get::<String, _>(0), serde_json::from_str(&stats).expect("agent_stats parse"))
            })
            .collect()
    })
}

fn ids(lines: &[String]) -> Vec<String> {
    support::reports(lines).into_iter().map(|r| r.report_id).collect()
}

/// Poll `cond` until it holds; fails naming `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

const LONG: Duration = Duration::from_secs(60);

fn agent(lab: &Lab, endpoint: &str, spool: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
    let mut args = vec!["--endpoint", endpoint, "--spool-dir", spool.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("AWS_EC2_METADATA_DISABLED", "true"));
    Agent::start_env(lab, &["--dry-run"], &args, &env)
}

/// Ongoing TCP between the lab's namespaces, so that reports carry flows. Start it after the
/// agent: a connection opened before the programs attached is never seen. (Client first: it is
/// dropped, and killed, before the server.)
fn traffic(lab: &Lab, port: &str) -> (support::Traffic, support::Traffic) {
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", port, "--conns", "1", "--echo"]);
    let client = lab.traffic(&lab.a, &["pingpong", "--addr", lab.b4, "--port", port, "--secs", "120"]);
    (client, server)
}

#[test]
fn backend_outage_loses_nothing_and_metrics_count_deliveries() {
    let Some(_g) = support::privileged("backend_outage_loses_nothing_and_metrics_count_deliveries") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (db, spool) = (dir.path().join("backend.db"), dir.path().join("spool"));
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/publish");
    let a = agent(&lab, &endpoint, &spool, &[], &[]);
    let _t = traffic(&lab, "5401");
    // Down for several windows: every attempt fails, reports pile up in the spool.
    wait_for("3 failed deliveries and 3 spooled reports", LONG, || {
        let m = a.metrics();
        support::metric_value(&m, FAILURES) >= 3.0 && support::metric_value(&m, SPOOL_REPORTS) >= 3.0
    });
    assert_eq!(a.metric(DELIVERIES), 0.0);
    let backend = Backend::start(port, &db, &[]);
    wait_for("the spool to drain", LONG, || a.metric(SPOOL_REPORTS) == 0.0 && a.metric(DELIVERIES) >= 4.0);
    // Down again; once the agent has seen it fail, nothing more can reach the database, and what
    // the agent counts as delivered is what the backend stored.
    backend.kill();
    let failures = a.metric(FAILURES);
    wait_for("a failure after the backend went down", LONG, || a.metric(FAILURES) > failures);
    let m = a.metrics();
    let delivered = support::metric_value(&m, DELIVERIES);
    assert_eq!(delivered as usize, stored(&db).len(), "deliveries_total vs reports stored:\n{m}");
    assert!(support::metric_value(&m, "flow_agent_report_windows_total") >= delivered, "{m}");
    assert!(support::metric_value(&m, "flow_agent_last_success_timestamp_seconds{destination=\"backend\"}") > 1.7e9);
    assert!(support::metric_value(&m, "flow_agent_events_total") > 0.0, "{m}");
    assert_eq!(support::metric_value(&m, "flow_agent_rejections_total{destination=\"backend\"}"), 0.0);
    // Up again, then SIGTERM: the partial window is spooled and delivered before the agent exits.
    let _backend = Backend::start(port, &db, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let (lines, log) = a.stop_with_log();
    let emitted = ids(&lines);
    let got = stored(&db);
    let got_ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    assert!(emitted.len() >= 6, "{emitted:?}");
    assert_eq!(got_ids, emitted, "every report stored once, in the order emitted\n{log}");
    assert!(got.iter().all(|(_, s)| s.spool_dropped_reports == 0));
    assert!(log.contains("retrying in"), "{log}");
    assert_eq!(
        std::fs::read_dir(&spool)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count(),
        0
    );
}

#[test]
fn kill_9_with_the_backend_down_loses_nothing() {
    let Some(_g) = support::privileged("kill_9_with_the_backend_down_loses_nothing") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (db, spool) = (dir.path().join("backend.db"), dir.path().join("spool"));
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/publish");
    let a = agent(&lab, &endpoint, &spool, &[], &[]);
    let _t = traffic(&lab, "5402");
    wait_for("4 spooled reports", LONG, || a.metric(SPOOL_REPORTS) >= 4.0 && a.metric(FAILURES) >= 2.0);
    let first = ids(&a.kill9());
    let files = std::fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert!(files >= first.len(), "{files} spool files for {} reports printed", first.len());
    let _backend = Backend::start(port, &db, &[]);
    let b = agent(&lab, &endpoint, &spool, &[], &[]);
    let n = first.len() as f64;
    wait_for("the first run's reports delivered", LONG, || b.metric(DELIVERIES) >= n + 1.0);
    let (lines, log) = b.stop_with_log();
    let mut emitted = first.clone();
    emitted.extend(ids(&lines));
    let got: Vec<String> = stored(&db).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, emitted, "both runs' reports stored once, in order\n{log}");
}

#[test]
fn beyond_the_spool_bound_the_oldest_are_dropped_and_counted() {
    let Some(_g) = support::privileged("beyond_the_spool_bound_the_oldest_are_dropped_and_counted") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (db, spool) = (dir.path().join("backend.db"), dir.path().join("spool"));
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/publish");
    let a = agent(&lab, &endpoint, &spool, &["--spool-max-bytes", "4096"], &[]);
    let _t = traffic(&lab, "5403");
    wait_for("3 reports dropped from the spool", LONG, || a.metric(SPOOL_DROPPED) >= 3.0);
    let _backend = Backend::start(port, &db, &[]);
    wait_for("the spool to drain", LONG, || a.metric(SPOOL_REPORTS) == 0.0 && a.metric(DELIVERIES) >= 2.0);
    let dropped_metric = a.metric(BACKEND_DROPPED);
    assert!(a.metric(SPOOL_DROPPED) >= dropped_metric);
    let (lines, log) = a.stop_with_log();
    let emitted = ids(&lines);
    let got = stored(&db);
    let got_ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
    let dropped: Vec<&String> = emitted.iter().filter(|id| !got_ids.contains(id)).collect();
    // The oldest went, the rest arrived in order.
    assert_eq!(dropped.len() as f64, dropped_metric, "{log}");
    assert!(dropped.len() >= 3);
    assert_eq!(emitted[..dropped.len()].iter().collect::<Vec<_>>(), dropped, "the oldest are the ones dropped");
    assert_eq!(got_ids, emitted[dropped.len()..], "{log}");
    // Counted exactly, in the first report delivered after the drops.
    let counts: Vec<u64> = got.iter().map(|(_, s)| s.spool_dropped_reports).collect();
    assert_eq!(counts.iter().sum::<u64>(), dropped.len() as u64, "{counts:?}");
    assert_eq!(counts[0], dropped.len() as u64, "{counts:?}");
    assert!(log.contains("spool full"), "{log}");
}

/// What the loopback server saw: arrival time, headers (lowercase) and the gunzipped body.
type Seen = Arc<Mutex<Vec<(Instant, String, Report)>>>;

/// Answers 503 (Retry-After: 2), then 429 (Retry-After: 1), then 200 to everything.
fn throttling_server() -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let head_end = loop {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(p + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                let n = c.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let at = Instant::now();
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(&buf[head_end..]).read_to_end(&mut json).expect("a gzip body");
            let report: Report = serde_json::from_slice(&json).expect("a report");
            let n = {
                let mut s = s.lock().unwrap();
                s.push((at, head, report));
                s.len()
            };
            let answer = match n {
                1 => {
                    "HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy"
                }
                2 => {
                    "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 4\r\nconnection: close\r\n\r\nslow"
                }
                _ => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            };
            let _ = c.write_all(answer.as_bytes());
        }
    });
    (port, seen)
}

#[test]
fn retry_after_on_503_and_429_is_honoured() {
    let Some(_g) = support::privileged("retry_after_on_503_and_429_is_honoured") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (port, seen) = throttling_server();
    let endpoint = format!("http://127.0.0.1:{port}/publish");
    let a = agent(&lab, &endpoint, &dir.path().join("spool"), &[], &[]);
    wait_for("4 requests", LONG, || seen.lock().unwrap().len() >= 4);
    let m = a.metrics();
    let (lines, _) = a.stop_with_log();
    let emitted = ids(&lines);
    let seen = seen.lock().unwrap();
    let (t0, h0, r0) = &seen[0];
    assert!(h0.starts_with("post /publish http/1.1") && h0.contains("content-encoding: gzip"), "{h0}");
    // The same report until it is accepted, then the next one.
    assert_eq!(r0.report_id, emitted[0]);
    assert_eq!(seen[1].2.report_id, emitted[0]);
    assert_eq!(seen[2].2.report_id, emitted[0]);
    assert_eq!(seen[3].2.report_id, emitted[1]);
    assert!(seen[1].0 - *t0 >= Duration::from_secs(2), "503 Retry-After: 2 not honoured: {:?}", seen[1].0 - *t0);
    assert!(seen[2].0 - seen[1].0 >= Duration::from_secs(1), "429 Retry-After: 1 not honoured");
    assert_eq!(support::metric_value(&m, FAILURES), 2.0, "{m}");
}

#[test]
fn sigv4_signed_reports_are_accepted_by_a_backend_requiring_signatures() {
    let Some(_g) = support::privileged("sigv4_signed_reports_are_accepted_by_a_backend_requiring_signatures") else {
        return;
    };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let (db, spool) = (dir.path().join("backend.db"), dir.path().join("spool"));
    let keys = dir.path().join("backend-credentials");
    std::fs::write(&keys, "[agents]\naws_access_key_id = AKIAFLOWAGENTS\naws_secret_access_key = s3cret\n").unwrap();
    let port = free_port();
    let _backend = Backend::start(port, &db, &["--auth", "sigv4", "--credentials", keys.to_str().unwrap()]);
    let endpoint = format!("http://127.0.0.1:{port}/publish");
    // A wrong secret (from the environment): refused, kept and retried, nothing stored.
    let bad = [("AWS_ACCESS_KEY_ID", "AKIAFLOWAGENTS"), ("AWS_SECRET_ACCESS_KEY", "wrong")];
    let a = agent(&lab, &endpoint, &spool, &["--shutdown-timeout", "1s"], &bad);
    let _t = traffic(&lab, "5405");
    wait_for("2 refused deliveries", LONG, || a.metric(FAILURES) >= 2.0);
    assert_eq!(a.metric(DELIVERIES), 0.0);
    let (first, log) = a.stop_with_log();
    assert!(log.contains("HTTP 403"), "{log}");
    assert!(stored(&db).is_empty());
    // The right key from a shared credentials file: everything goes through, the refused ones too.
    let file = dir.path().join("agent-credentials");
    std::fs::write(&file, "[default]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = x\n[agents]\naws_access_key_id = AKIAFLOWAGENTS\naws_secret_access_key = s3cret\n").unwrap();
    let good = [("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()), ("AWS_PROFILE", "agents")];
    let b = agent(&lab, &endpoint, &spool, &[], &good);
    let n = first.len() as f64;
    wait_for("deliveries of both runs' reports", LONG, || b.metric(DELIVERIES) >= n + 2.0);
    let (lines, log) = b.stop_with_log();
    let mut emitted = ids(&first);
    emitted.extend(ids(&lines));
    let got: Vec<String> = stored(&db).into_iter().map(|(id, _)| id).collect();
    assert_eq!(got, emitted, "{log}");
}
