//! xtask support for `backend/` (flow-backend): test prerequisites and the benchmark.
//!
//! * `setup()` installs PostgreSQL (Debian's package) and boto3 when missing, starts the
//!   cluster and creates the test role and database. Idempotent.
//! * `postgres_url()` is what `FLOW_BACKEND_TEST_POSTGRES_URL` should hold.
//! * `bench()` runs the ingest and query benchmark against a release build and returns a
//!   markdown section with the figures.
//!
//! Uses only std and anyhow.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::output;

const PG_ROLE: &str = "flow";
const PG_PASSWORD: &str = "flow";
const PG_DATABASE: &str = "flow_backend_test";

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    if root.join("backend/Cargo.toml").exists() { root } else { std::env::current_dir().unwrap_or(root) }
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

/// `(version, port, online)` of the first cluster `pg_lsclusters` lists.
fn cluster() -> Option<(String, u16, bool)> {
    let out = Command::new("pg_lsclusters").arg("--no-header").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 4 {
        return None;
    }
    Some((f[0].to_string(), f[2].parse().ok()?, f[3].starts_with("online")))
}

fn psql(sql: &str) -> anyhow::Result<String> {
    output(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        "psql",
        "-X",
        "-q",
        "-t",
        "-A",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]))
}

/// Installs and starts what the backend tests need. Safe to run again.
pub fn setup() -> anyhow::Result<()> {
    let have_pg = succeeds(Command::new("sh").args(["-c", "ls /usr/lib/postgresql/*/bin/postgres"]));
    if !have_pg {
        eprintln!("backend setup: installing postgresql (apt)");
        output(Command::new("apt-get").arg("update"))?;
        output(Command::new("apt-get").args(["install", "-y", "postgresql"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let boto3_ok = succeeds(Command::new("python3").args([
        "-c",
        "import boto3; boto3.client('networkflowmonitor', region_name='us-east-1', endpoint_url='http://x', \
         aws_access_key_id='a', aws_secret_access_key='b')",
    ]));
    if !boto3_ok {
        eprintln!("backend setup: installing boto3 (pip)");
        let pip = ["-m", "pip", "install", "--quiet", "--upgrade", "boto3"];
        if output(Command::new("python3").args(pip)).is_err() {
            // Debian's own python refuses pip installs (PEP 668) unless told otherwise; its
            // python3-boto3 package predates the networkflowmonitor service model.
            output(Command::new("python3").args(pip).arg("--break-system-packages"))?;
        }
    }
    match cluster() {
        None => {
            let ver = output(Command::new("sh").args(["-c", "ls /usr/lib/postgresql | sort -n | tail -1"]))?;
            output(Command::new("pg_createcluster").args([ver.trim(), "main", "--start"]))?;
        }
        Some((ver, _, false)) => {
            output(Command::new("pg_ctlcluster").args([ver.as_str(), "main", "start"]))?;
        }
        Some(_) => {}
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !succeeds(Command::new("runuser").args(["-u", "postgres", "--", "pg_isready", "-q"])) {
        if Instant::now() > deadline {
            bail!("PostgreSQL did not become ready within 30 s; see /var/log/postgresql/");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    psql(&format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PG_ROLE}') THEN \
         CREATE ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'; END IF; END $$;"
    ))?;
    // Tests create a database each, so the role must keep these rights even if it pre-existed.
    psql(&format!("ALTER ROLE {PG_ROLE} LOGIN CREATEDB PASSWORD '{PG_PASSWORD}'"))?;
    let exists = psql(&format!("SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"))?;
    if exists.trim() != "1" {
        psql(&format!("CREATE DATABASE {PG_DATABASE} OWNER {PG_ROLE}"))?;
    }
    eprintln!("backend setup: PostgreSQL ready at {}", postgres_url());
    Ok(())
}

/// The URL the backend tests should use (export it as FLOW_BACKEND_TEST_POSTGRES_URL). The
/// role may create databases: tests make one each.
pub fn postgres_url() -> String {
    let port = cluster().map(|c| c.1).unwrap_or(5432);
    format!("postgres://{PG_ROLE}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DATABASE}")
}

// ---------------------------------------------------------------------------------------------
// Benchmark

/// Benchmark scale: AGENTS agents, FLOWS flows per report, one report per agent per WINDOW_S,
/// for WINDOWS windows (WINDOWS * WINDOW_S = 1 hour).
const AGENTS: usize = 200;
const FLOWS: usize = 500;
const WINDOW_S: i64 = 300;
const WINDOWS: usize = 12;
const CLIENT_THREADS: usize = 4;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &Path, database: &str) -> anyhow::Result<Server> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database, "--lifecycle-delay-ms", "0"])
        .env("RUST_LOG", "warn,sqlx::query=error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("flow-backend listening on http://")
        .with_context(|| format!("unexpected first line from flow-backend: {line:?}"))?
        .to_string();
    Ok(Server { child, addr })
}

/// A minimal HTTP/1.1 client on one keep-alive connection.
struct Http {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Http {
    fn connect(addr: &str) -> anyhow::Result<Http> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        Ok(Http { stream: BufReader::new(s), addr: addr.to_string() })
    }

    fn request(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line)?;
        let status: u16 =
            status_line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("bad status line")?;
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            self.stream.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.stream.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }

    fn ok(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let (status, text) = self.request(method, path, body.as_bytes())?;
        if status != 200 {
            bail!("{method} {path} -> {status}: {text}");
        }
        Ok(text)
    }
}

fn iso(t: i64) -> String {
    // Civil-from-days (Howard Hinnant), enough for an ISO 8601 UTC timestamp without chrono.
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, (secs / 60) % 60, secs % 60)
}

const AZS: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const CATEGORIES: [&str; 4] = ["INTRA_AZ", "INTER_AZ", "INTER_VPC", "AMAZON_S3"];

/// One agent's report for one window: FLOWS flows with enrichment and varied counters.
fn report(agent: usize, window: usize, t0: i64) -> String {
    let start = t0 + window as i64 * WINDOW_S;
    let az = AZS[agent % 3];
    let subnet = format!("subnet-{:08x}", agent % 12);
    let mut flows = Vec::with_capacity(FLOWS);
    for f in 0..FLOWS {
        let h = (agent * 7919 + f * 104729 + window * 31) as u64;
        let cat = CATEGORIES[f % CATEGORIES.len()];
        let remote_az = AZS[(agent + f) % 3];
        flows.push(format!(
            r#"{{"protocol":"TCP","local_ip":"10.{}.{}.{}","remote_ip":"10.200.{}.{}","target_port":{},"role":"client",
"local_instance_id":"i-{:017x}","local_subnet_id":"{subnet}","local_subnet_arn":"arn:aws:ec2:us-east-1:123456789012:subnet/{subnet}",
"local_vpc_id":"vpc-0000bench","local_vpc_arn":"arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0000bench","local_az":"{az}","local_region":"us-east-1",
"remote_subnet_id":"subnet-{:08x}","remote_vpc_id":"vpc-0000bench","remote_az":"{remote_az}","remote_region":"us-east-1","destination_category":"{cat}",
"connections":{{"attempted":{},"established":{},"closed":1,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":1}},
"bytes_sent":{},"bytes_received":{},"segments_sent":{},"segments_received":{},"retransmissions":{},"timeouts":{},
"rtt_us":{{"count":{},"min":100,"max":{},"mean":{}.5,"p50":{},"p90":{},"p99":{}}},
"handshake_us":{{"count":1,"min":200,"max":200,"mean":200.0,"p50":200,"p90":200,"p99":200}}}}"#,
            agent / 250,
            agent % 250,
            f % 250 + 1,
            f / 250,
            f % 250 + 1,
            [443, 5432, 6379, 8080][f % 4],
            agent * 1000 + f,
            (agent + f) % 40,
            1 + h % 5,
            1 + h % 5,
            1000 + h % 1_000_000,
            500 + h % 2_000_000,
            10 + h % 1000,
            10 + h % 900,
            h % 17,
            h % 3,
            10 + h % 50,
            500 + h % 20000,
            300 + h % 5000,
            300 + h % 5000,
            400 + h % 9000,
            500 + h % 15000,
        ));
    }
    format!(
        r#"{{"report_id":"bench-{agent}-{window}-{t0}","schema_version":1,"window":{{"start":"{}","end":"{}"}},
"agent":{{"version":"bench","hostname":"host-{agent}"}},"flows":[{}],
"other":{{"flows":0,"connections":{{"attempted":0,"established":0,"closed":0,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":0}},
"bytes_sent":0,"bytes_received":0,"segments_sent":0,"segments_received":0,"retransmissions":0,"timeouts":0,
"rtt_us":{{"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0}},"handshake_us":{{"count":0,"min":0,"max":0,"mean":0.0,"p50":0,"p90":0,"p99":0}}}},
"agent_stats":{{"events":1,"ringbuf_drops":0,"map_full":{{"sockets":0,"flows":0,"listeners":0}},"untracked_events":0,"flows_tracked":{FLOWS},"sockets_tracked":1,"cpu_seconds":0.1,"rss_bytes":1}}}}"#,
        iso(start),
        iso(start + WINDOW_S),
        flows.join(",")
    )
}

struct Figures {
    backend: &'static str,
    reports: usize,
    rows: usize,
    ingest_s: f64,
    queries: Vec<(String, f64)>,
}

fn json_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("\"{key}\":\"");
    let i = text.find(&k)? + k.len();
    let j = text[i..].find('"')? + i;
    Some(&text[i..j])
}

fn run_query(http: &mut Http, base: &str, body: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let started = http.ok("POST", base, body)?;
    let id = json_field(&started, "queryId").context("no queryId")?.to_string();
    loop {
        let s = http.ok("GET", &format!("{base}/{id}/status"), "")?;
        match json_field(&s, "status") {
            Some("SUCCEEDED") => break,
            Some("FAILED") | Some("CANCELED") => bail!("query {id} ended: {s}"),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    http.ok("GET", &format!("{base}/{id}/results?maxResults=100"), "")?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn bench_one(bin: &Path, backend: &'static str, database: &str) -> anyhow::Result<Figures> {
    let server = start_server(bin, database)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let t0 = (now / 3600) * 3600 - 2 * 3600;
    eprintln!("bench[{backend}]: generating {} reports", AGENTS * WINDOWS);
    let bodies: Vec<String> =
        (0..WINDOWS).flat_map(|w| (0..AGENTS).map(move |a| (a, w))).map(|(a, w)| report(a, w, t0)).collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    eprintln!("bench[{backend}]: ingesting with {CLIENT_THREADS} client threads");
    let t = Instant::now();
    let handles: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (bodies, next, errors, addr) = (bodies.clone(), next.clone(), errors.clone(), server.addr.clone());
            std::thread::spawn(move || {
                let mut http = match Http::connect(&addr) {
                    Ok(h) => h,
                    Err(e) => return errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()),
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = bodies.get(i) else { break };
                    if let Err(e) = http.ok("POST", "/publish", b) {
                        errors.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string());
                        break;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let ingest_s = t.elapsed().as_secs_f64();
    if let Some(e) = errors.lock().unwrap_or_else(|p| p.into_inner()).first() {
        bail!("ingest failed: {e}");
    }
    let mut http = Http::connect(&server.addr)?;
    let scope = http.ok(
        "POST",
        "/scopes",
        r#"{"targets":[{"region":"us-east-1","targetIdentifier":{"targetId":{"accountId":"123456789012"},"targetType":"ACCOUNT"}}]}"#,
    )?;
    let scope_id = json_field(&scope, "scopeId").context("no scopeId")?.to_string();
    let scope_arn = json_field(&scope, "scopeArn").context("no scopeArn")?.to_string();
    http.ok(
        "POST",
        "/monitors",
        &format!(
            r#"{{"monitorName":"bench","scopeArn":"{scope_arn}","localResources":[{{"type":"AWS::EC2::VPC","identifier":"arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0000bench"}}]}}"#
        ),
    )?;
    let http_range = format!(r#""startTime":"{}","endTime":"{}""#, iso(t0), iso(t0 + WINDOWS as i64 * WINDOW_S));
    let mut queries = Vec::new();
    for metric in ["ROUND_TRIP_TIME", "RETRANSMISSIONS", "DATA_TRANSFERRED"] {
        let body = format!(r#"{{{http_range},"metricName":"{metric}","destinationCategory":"INTER_AZ","limit":500}}"#);
        let ms = run_query(&mut http, "/monitors/bench/topContributorsQueries", &body)?;
        queries.push((format!("MonitorTopContributors {metric} (limit 500)"), ms));
    }
    let body =
        format!(r#"{{{http_range},"metricName":"DATA_TRANSFERRED","destinationCategory":"INTRA_AZ","limit":100}}"#);
    let ms = run_query(&mut http, &format!("/workloadInsights/{scope_id}/topContributorsQueries"), &body)?;
    queries.push(("WorkloadInsightsTopContributors DATA_TRANSFERRED".into(), ms));
    let body = format!(r#"{{{http_range},"metricName":"RETRANSMISSIONS","destinationCategory":"INTER_AZ"}}"#);
    let ms = run_query(&mut http, &format!("/workloadInsights/{scope_id}/topContributorsDataQueries"), &body)?;
    queries.push(("WorkloadInsightsTopContributorsData RETRANSMISSIONS".into(), ms));
    let t = Instant::now();
    http.ok(
        "GET",
        &format!("/monitors/bench/networkHealth?startTime={}&endTime={}", iso(t0), iso(t0 + WINDOWS as i64 * WINDOW_S)),
        "",
    )?;
    queries.push(("Network health, 60 minutes".into(), t.elapsed().as_secs_f64() * 1000.0));
    drop(server);
    Ok(Figures { backend, reports: AGENTS * WINDOWS, rows: AGENTS * WINDOWS * FLOWS, ingest_s, queries })
}

/// Runs the benchmark (release build) against SQLite, and against PostgreSQL when
/// FLOW_BACKEND_TEST_POSTGRES_URL is set; returns a markdown section.
pub fn bench() -> anyhow::Result<String> {
    let root = workspace_root();
    output(Command::new("cargo").current_dir(&root).args(["build", "--release", "-p", "flow-backend"]))?;
    let bin = root.join("target/release/flow-backend");
    let dir = std::env::temp_dir().join(format!("flow-backend-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut results = vec![bench_one(&bin, "SQLite", &dir.join("bench.db").display().to_string())];
    // `setup()` (run by `cargo xtask bench` first) has a PostgreSQL server ready; an explicit
    // FLOW_BACKEND_TEST_POSTGRES_URL points the benchmark elsewhere.
    let url = std::env::var("FLOW_BACKEND_TEST_POSTGRES_URL").unwrap_or_else(|_| postgres_url());
    {
        let db = format!("flow_bench_{}", std::process::id());
        psql(&format!("CREATE DATABASE {db} OWNER {PG_ROLE}"))?;
        let pg_url = match url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => bail!("FLOW_BACKEND_TEST_POSTGRES_URL has no database part: {url}"),
        };
        results.push(bench_one(&bin, "PostgreSQL", &pg_url));
        let _ = psql(&format!("DROP DATABASE IF EXISTS {db}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut md = String::from("## flow-backend benchmark\n\n");
    md.push_str(&format!(
        "Scale: {AGENTS} agents x {FLOWS} flows, one report per agent every {WINDOW_S} s for 1 hour \
         ({} reports, {} flow rows); {CLIENT_THREADS} client threads posting uncompressed JSON to /publish on the same host \
         ({} cores). Query latency is start -> SUCCEEDED -> first results page, over the whole hour.\n\n",
        AGENTS * WINDOWS,
        AGENTS * WINDOWS * FLOWS,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    ));
    for r in results {
        let f = r?;
        md.push_str(&format!(
            "### {}\n\n| ingest | value |\n|---|---|\n| reports/s | {:.0} |\n| rows/s | {:.0} |\n| total | {:.1} s |\n\n\
             | query | latency (ms) |\n|---|---|\n",
            f.backend,
            f.reports as f64 / f.ingest_s,
            f.rows as f64 / f.ingest_s,
            f.ingest_s
        ));
        for (q, ms) in f.queries {
            md.push_str(&format!("| {q} | {ms:.0} |\n"));
        }
        md.push('\n');
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        assert_eq!(super::iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::iso(1795341600), "2026-11-22T10:00:00Z");
    }
}
