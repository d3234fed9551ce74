//! Runs the real `flow-backend` binary and drives it with boto3 (`tests/e2e_boto3.py`):
//! once on a temporary SQLite file with SigV4 verification on, once on PostgreSQL.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e_boto3.py");
const ACCESS_KEY: &str = "AKIDE2ETEST";
const SECRET_KEY: &str = "e2e-dummy-secret";

/// The server process; killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(database: &str, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flow-backend"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database", database, "--lifecycle-delay-ms", "1500"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn flow-backend");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read the listening line");
    let endpoint = line
        .trim()
        .strip_prefix("flow-backend listening on ")
        .unwrap_or_else(|| panic!("flow-backend did not start; first line: {line:?}"))
        .to_string();
    Server { child, endpoint }
}

fn run_script(server: &Server, extra: &[&str]) {
    let t = Instant::now();
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(["--endpoint", &server.endpoint, "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .args(extra)
        .output()
        .expect("python3 must be installed (with boto3: `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "e2e_boto3.py failed ({}) against {}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        server.endpoint
    );
    assert!(stdout.contains("checks passed"), "unexpected output: {stdout}");
    eprintln!("{} ({:.1} s)", stdout.trim(), t.elapsed().as_secs_f64());
}

fn wait_reachable(server: &Server) {
    let addr = server.endpoint.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "flow-backend at {addr} never accepted a connection");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn boto3_end_to_end_sqlite_with_sigv4() {
    let db = common::sqlite_db();
    let creds = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        creds.path(),
        format!("[e2e]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )
    .expect("write credentials");
    let creds_path = creds.path().display().to_string();
    let server = start(&db.url, &["--auth", "sigv4", "--credentials", &creds_path]);
    wait_reachable(&server);
    run_script(&server, &["--expect-auth"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn boto3_end_to_end_postgres() {
    let Some(db) = common::postgres_db().await else { return };
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let server = start(&url, &[]);
        wait_reachable(&server);
        run_script(&server, &[]);
    })
    .await
    .expect("e2e run");
    drop(db);
}
