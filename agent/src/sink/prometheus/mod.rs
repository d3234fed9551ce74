//! The `prometheus-remote-write` destination: each report as Prometheus remote-write v1 samples
//! (snappy-compressed protobuf) to Prometheus (`--web.enable-remote-write-receiver`), Mimir,
//! Thanos, VictoriaMetrics or any compatible store.
//!
//! Counters are cumulative since agent start (see `state`), timestamped at the window end; a
//! retried report is sent again byte for byte, never folded twice.

mod state;
pub mod wire;

use std::{path::PathBuf, sync::Arc, sync::Mutex};

use agent_common::report::Report;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use state::State;
use wire::{WriteRequest, encode, valid_label_name};

use super::remote::{DeliveryError, DeliveryFuture, Destination, HttpOptions, http_client};

/// Flows with series of their own; more are summed into `other`.
pub const MAX_FLOWS: usize = 1000;
/// A flow absent from this many reports in a row loses its series.
pub const STALE_AFTER_REPORTS: u64 = 10;
/// Series per request; a report with more goes in several requests.
const SERIES_PER_REQUEST: usize = 2000;
/// Largest error body kept for the log.
const MAX_RESPONSE: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    None,
    /// Token read from this file at start.
    BearerFile(PathBuf),
    /// Password read from this file at start.
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("cannot read {setting} {path}: {source}")]
    Secret { setting: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{setting} {path} holds no usable value (empty, or not valid in an HTTP header)")]
    BadSecret { setting: &'static str, path: PathBuf },
    #[error("invalid prometheus_remote_write_label {0:?}: expected NAME=VALUE with NAME a valid label name")]
    Label(String),
    #[error("cannot build the remote-write HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

fn read_secret(setting: &'static str, path: &PathBuf) -> Result<String, RemoteWriteError> {
    let s = std::fs::read_to_string(path).map_err(|source| RemoteWriteError::Secret {
        setting,
        path: path.clone(),
        source,
    })?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(RemoteWriteError::BadSecret { setting, path: path.clone() });
    }
    Ok(s)
}

/// "name=value" pairs as labels, checked.
pub fn parse_labels(labels: &[String]) -> Result<Vec<(String, String)>, RemoteWriteError> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if valid_label_name(k) && k != "le" && !v.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(RemoteWriteError::Label(l.clone())),
        })
        .collect()
}

struct Inner {
    state: State,
    /// The last report's requests, for a retry of that same report.
    last: Option<(String, Arc<Vec<Vec<u8>>>)>,
}

pub struct RemoteWrite {
    client: reqwest::Client,
    url: String,
    authorization: Option<HeaderValue>,
    labels: Vec<(String, String)>,
    inner: Arc<Mutex<Inner>>,
}

impl RemoteWrite {
    pub fn new(url: &str, auth: &Auth, labels: &[String], http: &HttpOptions) -> Result<RemoteWrite, RemoteWriteError> {
        let header = |setting, path: &PathBuf, v: String| {
            HeaderValue::from_str(&v).map_err(|_| RemoteWriteError::BadSecret { setting, path: path.clone() })
        };
        let authorization = match auth {
            Auth::None => None,
            Auth::BearerFile(path) => {
                const S: &str = "prometheus_remote_write_bearer_token_file";
                let token = read_secret(S, path)?;
                Some(header(S, path, format!("Bearer {token}"))?)
            }
            Auth::Basic { username, password_file } => {
                const S: &str = "prometheus_remote_write_password_file";
                let password = read_secret(S, password_file)?;
                let creds = base64_encode(format!("{username}:{password}").as_bytes());
                Some(header(S, password_file, format!("Basic {creds}"))?)
            }
        };
        let mut authorization = authorization;
        if let Some(v) = &mut authorization {
            v.set_sensitive(true);
        }
        Ok(RemoteWrite {
            client: http_client(http)?,
            url: url.to_string(),
            authorization,
            labels: parse_labels(labels)?,
            inner: Arc::new(Mutex::new(Inner { state: State::new(MAX_FLOWS, STALE_AFTER_REPORTS), last: None })),
        })
    }

    /// The requests for a report: the same bytes again when it is a retry. Built on a blocking
    /// thread: a window of many flows takes tens of milliseconds, which the agent's one runtime
    /// thread (capture) must not wait for.
    async fn requests(&self, r: &Report) -> Result<Arc<Vec<Vec<u8>>>, DeliveryError> {
        {
            let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((id, bodies)) = &inner.last
                && *id == r.report_id
            {
                return Ok(bodies.clone());
            }
        }
        // Every series carries job and instance (the host), unless extra labels say otherwise.
        let mut base =
            vec![("instance".to_string(), r.agent.hostname.clone()), ("job".to_string(), "flow-agent".into())];
        base.extend(self.labels.iter().cloned());
        let (inner, report) = (self.inner.clone(), r.clone());
        tokio::task::spawn_blocking(move || {
            let mut inner = inner.lock().unwrap_or_else(|e| e.into_inner());
            let batch = inner.state.apply(&report, &base);
            let bodies = Arc::new(split(batch.series, batch.metadata));
            inner.last = Some((report.report_id.clone(), bodies.clone()));
            bodies
        })
        .await
        .map_err(|e| DeliveryError::Retry { reason: format!("encoding the report: {e}"), retry_after: None })
    }

    async fn send(&self, report: &Report) -> Result<(), DeliveryError> {
        let bodies = self.requests(report).await?;
        for (i, body) in bodies.iter().enumerate() {
            let mut req = self
                .client
                .post(&self.url)
                .header(CONTENT_TYPE, "application/x-protobuf")
                .header(CONTENT_ENCODING, "snappy")
                .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                .header(reqwest::header::USER_AGENT, concat!("flow-agent/", env!("CARGO_PKG_VERSION")));
            if let Some(a) = &self.authorization {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let resp = req
                .body(body.clone())
                .send()
                .await
                .map_err(|e| DeliveryError::Retry { reason: format!("POST {}: {e}", self.url), retry_after: None })?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                continue;
            }
            let retry_after = resp.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let text = read_capped(resp).await;
            if already_stored(status, &text) {
                tracing::info!(
                    sink = "prometheus-remote-write",
                    "report {} (request {}/{}): samples refused as already stored or too old, counted as delivered: {}",
                    report.report_id,
                    i + 1,
                    bodies.len(),
                    text.trim()
                );
                continue;
            }
            return Err(DeliveryError::from_status(status, retry_after.as_deref(), &text));
        }
        Ok(())
    }
}

/// Request bodies of at most `SERIES_PER_REQUEST` series each; the metadata goes in the first.
fn split(mut series: Vec<wire::TimeSeries>, metadata: Vec<wire::MetricMetadata>) -> Vec<Vec<u8>> {
    let mut bodies = Vec::with_capacity(series.len().div_ceil(SERIES_PER_REQUEST));
    let mut metadata = Some(metadata);
    while !series.is_empty() {
        let rest = if series.len() > SERIES_PER_REQUEST { series.split_off(SERIES_PER_REQUEST) } else { Vec::new() };
        bodies.push(encode(&WriteRequest { timeseries: series, metadata: metadata.take().unwrap_or_default() }));
        series = rest;
    }
    bodies
}

/// Prometheus (and Mimir, Cortex, Thanos) refuse samples at or before the newest timestamp of
/// their series with 400 (Thanos 409): out of order, duplicate timestamp, out of bounds, too old.
/// For this agent that means the samples are already there: a request retried after the store
/// accepted it but its answer was lost (the 0 samples at window start are then out of order), or
/// a report from before an agent restart. Sending it again can never succeed and would stop
/// delivery of every later report, so it counts as delivered.
pub fn already_stored(status: u16, body: &str) -> bool {
    if status != 400 && status != 409 {
        return false;
    }
    let b = body.to_ascii_lowercase();
    ["out of order", "out-of-order", "duplicate sample", "out of bounds", "too old"].iter().any(|m| b.contains(m))
}

async fn read_capped(mut resp: reqwest::Response) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_RESPONSE - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_RESPONSE {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= c.len() {
                out.push(T[(n >> shift & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Destination for RemoteWrite {
    fn name(&self) -> &'static str {
        "prometheus-remote-write"
    }

    fn deliver<'a>(&'a self, report: &'a Report) -> DeliveryFuture<'a> {
        Box::pin(self.send(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("user:pw", "dXNlcjpwdw=="),
        ] {
            assert_eq!(base64_encode(i.as_bytes()), o, "{i}");
        }
    }

    #[test]
    fn only_already_stored_errors_count_as_delivered() {
        assert!(already_stored(400, "out of order sample"));
        assert!(already_stored(400, "duplicate sample for timestamp"));
        assert!(already_stored(409, "Out Of Order"));
        assert!(!already_stored(400, "invalid labels"));
        assert!(!already_stored(500, "out of order sample"));
    }

    #[test]
    fn labels_and_secrets_are_checked() {
        assert_eq!(parse_labels(&["env=prod".into()]).unwrap(), vec![("env".to_string(), "prod".to_string())]);
        for bad in ["env", "=x", "__name__=x", "le=1", "a-b=c", "env="] {
            assert!(parse_labels(&[bad.into()]).is_err(), "{bad}");
        }
        let http = HttpOptions { timeout: std::time::Duration::from_secs(1), proxy: None };
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = RemoteWrite::new("http://x", &Auth::BearerFile(missing), &[], &http).err().unwrap().to_string();
        assert!(e.contains("prometheus_remote_write_bearer_token_file") && e.contains("nope"), "{e}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let rw =
            RemoteWrite::new("http://x", &Auth::Basic { username: "u".into(), password_file: pw }, &[], &http).unwrap();
        assert_eq!(rw.authorization.unwrap().to_str().unwrap(), format!("Basic {}", base64_encode(b"u:secret")));
    }
}

#[cfg(test)]
#[path = "../../../tests/support/prometheus.rs"]
mod test_server;

/// Delivery against a real Prometheus (the Debian package, as in agent/tests/export.rs) and a
/// stand-in that answers what it is told.
#[cfg(test)]
mod delivery_tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        time::Duration,
    };

    use agent_common::report::{AgentInfo, AgentStats, FlowMetrics, FlowRecord, OtherFlows, Protocol, Role, Window};

    use super::{test_server::Prometheus, *};

    fn report(id: &str, n: i64, bytes: u64) -> Report {
        // Recent windows: within the 5 minutes an instant query looks back.
        let base = chrono::Utc::now().timestamp() - 120;
        let t = |s: i64| chrono::DateTime::from_timestamp(base + s, 0).unwrap();
        Report {
            report_id: id.into(),
            schema_version: 1,
            window: Window { start: t(n * 30), end: t(n * 30 + 30) },
            agent: AgentInfo { version: "0.1.0".into(), hostname: "h".into() },
            flows: vec![FlowRecord {
                protocol: Protocol::Tcp,
                local_ip: "10.0.0.1".parse().unwrap(),
                remote_ip: "10.0.0.2".parse().unwrap(),
                target_port: 443,
                role: Role::Client,
                enrichment: Default::default(),
                metrics: FlowMetrics { bytes_sent: bytes, ..Default::default() },
            }],
            other: OtherFlows::default(),
            agent_stats: AgentStats::default(),
        }
    }

    fn http() -> HttpOptions {
        HttpOptions { timeout: Duration::from_secs(10), proxy: None }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn retries_and_restarts_do_not_wedge_or_double_count() {
        let prom = Prometheus::start();
        let url = format!("http://{}/api/v1/write", prom.addr);
        let rw = RemoteWrite::new(&url, &Auth::None, &["t=retry".into()], &http()).unwrap();
        let sel = "flow_agent_bytes_sent_total{t=\"retry\",target_port=\"443\"}";
        let (a, b) = (report("a", 0, 100), report("b", 1, 50));
        rw.deliver(&a).await.unwrap();
        // The same report again, as after a lost answer: Prometheus refuses the 0 sample at the
        // window start (out of order); counted as delivered, and not added twice.
        rw.deliver(&a).await.unwrap();
        assert_eq!(prom.value(sel), Some(100.0));
        rw.deliver(&b).await.unwrap();
        assert_eq!(prom.value(sel), Some(150.0));
        // After a restart (fresh totals) a report from the spool that Prometheus already has:
        // refused as out of order / duplicate, and delivery goes on.
        let restarted = RemoteWrite::new(&url, &Auth::None, &["t=retry".into()], &http()).unwrap();
        restarted.deliver(&a).await.unwrap();
        restarted.deliver(&report("c", 2, 7)).await.unwrap();
        assert_eq!(prom.value(sel), Some(107.0), "a counter reset");
    }

    /// A server that answers every request with `response` and reports what it received.
    fn stand_in(response: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/write", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for mut c in l.incoming().map_while(Result::ok) {
                let mut buf = vec![0u8; 1 << 20];
                let mut got = Vec::new();
                // Headers, then the body by Content-Length.
                loop {
                    let n = c.read(&mut buf).unwrap_or(0);
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if n == 0 || body.len() >= len {
                            let _ = tx.send(head.to_string());
                            break;
                        }
                    }
                    if n == 0 {
                        break;
                    }
                }
                let _ = c.write_all(response.as_bytes());
            }
        });
        (url, rx)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn headers_and_answers() {
        let (url, rx) = stand_in(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        );
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let rw = RemoteWrite::new(&url, &Auth::BearerFile(token), &[], &http()).unwrap();
        match rw.deliver(&report("x", 0, 1)).await {
            Err(DeliveryError::Retry { retry_after, .. }) => assert_eq!(retry_after, Some(Duration::from_secs(7))),
            other => panic!("503 must be retried: {other:?}"),
        }
        let head = rx.recv().unwrap().to_ascii_lowercase();
        for h in [
            "content-encoding: snappy",
            "content-type: application/x-protobuf",
            "x-prometheus-remote-write-version: 0.1.0",
            "authorization: bearer s3cret",
        ] {
            assert!(head.contains(h), "{h} missing in {head}");
        }
        let (url, _rx) = stand_in("HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno");
        let rw = RemoteWrite::new(&url, &Auth::None, &[], &http()).unwrap();
        assert!(matches!(rw.deliver(&report("y", 0, 1)).await, Err(DeliveryError::Reject { .. })));
        let (url, _rx) =
            stand_in("HTTP/1.1 400 Bad Request\r\nContent-Length: 19\r\nConnection: close\r\n\r\nout of order sample");
        let rw = RemoteWrite::new(&url, &Auth::None, &[], &http()).unwrap();
        rw.deliver(&report("z", 0, 1)).await.expect("already stored counts as delivered");
    }
}
