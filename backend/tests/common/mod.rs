//! Shared by the integration tests: the databases to run against (a temporary SQLite file and,
//! unless skipped explicitly, a fresh database on the PostgreSQL server named by
//! FLOW_BACKEND_TEST_POSTGRES_URL) and report builders.

#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{Value, json};

pub const PG_ENV: &str = "FLOW_BACKEND_TEST_POSTGRES_URL";
pub const SKIP_ENV: &str = "FLOW_SKIP_POSTGRES";

/// A database for one test; a PostgreSQL one is dropped when this is.
pub struct TestDb {
    pub label: &'static str,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin_url, name)) = self.pg_admin.take() {
            // Own runtime on its own thread: Drop may run inside a test's runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async {
                    use sqlx::Connection;
                    let mut c = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await.ok()
                })
            })
            .join();
        }
    }
}

pub fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: PathBuf = dir.path().join("flow-backend.db");
    TestDb { label: "sqlite", url: path.display().to_string(), _dir: Some(dir), pg_admin: None }
}

/// A fresh PostgreSQL database, or None when FLOW_SKIP_POSTGRES=1. Panics (failing the test)
/// when neither the URL nor the explicit skip is set.
pub async fn postgres_db() -> Option<TestDb> {
    let Ok(url) = std::env::var(PG_ENV) else {
        if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
            // Straight to stderr: the test harness swallows eprintln! output of passing tests.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{SKIP_ENV}=1: skipping the PostgreSQL half of this test");
            return None;
        }
        panic!(
            "{PG_ENV} is not set. Point it at a PostgreSQL server whose role may CREATE DATABASE, e.g. \
             `cargo xtask setup` then {PG_ENV}=postgres://flow:flow@127.0.0.1:5432/flow_backend_test \
             (or set {SKIP_ENV}=1 to skip the PostgreSQL runs explicitly)"
        );
    };
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| panic!("connecting to {PG_ENV}: {e}"));
    let name = format!("flow_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.expect("CREATE DATABASE");
    let base = url.split('?').next().unwrap_or(&url);
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database");
    Some(TestDb { label: "postgres", url: format!("{prefix}/{name}"), _dir: None, pg_admin: Some((url.clone(), name)) })
}

/// SQLite always, PostgreSQL unless skipped explicitly.
pub async fn all_dbs() -> Vec<TestDb> {
    let mut v = vec![sqlite_db()];
    v.extend(postgres_db().await);
    v
}

pub fn zero_latency() -> Value {
    json!({"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0})
}

pub fn connections() -> Value {
    json!({"attempted": 1, "established": 1, "closed": 0, "failed": 0, "refused": 0, "timed_out": 0, "reset": 0, "active": 1})
}

/// A flow with enrichment; `extra` overrides or adds fields.
pub fn flow(local_ip: &str, remote_ip: &str, port: u16, extra: Value) -> Value {
    let mut f = json!({
        "protocol": "TCP", "local_ip": local_ip, "remote_ip": remote_ip, "target_port": port, "role": "client",
        "local_vpc_id": "vpc-0a0a0a0a", "local_vpc_arn": "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0a0a0a0a",
        "local_subnet_id": "subnet-0a0a0a01", "local_subnet_arn": "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-0a0a0a01",
        "local_az": "us-east-1a", "local_region": "us-east-1",
        "remote_vpc_id": "vpc-0a0a0a0a", "remote_subnet_id": "subnet-0b0b0b01", "remote_az": "us-east-1b",
        "remote_region": "us-east-1", "destination_category": "INTER_AZ",
        "connections": connections(),
        "bytes_sent": 0, "bytes_received": 0, "segments_sent": 100, "segments_received": 100,
        "retransmissions": 0, "timeouts": 0,
        "rtt_us": zero_latency(), "handshake_us": zero_latency(),
    });
    if let (Some(o), Some(e)) = (f.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    f
}

pub fn rtt(count: u64, mean: f64) -> Value {
    json!({"count": count, "min": 1, "max": (mean * 2.0) as u64, "mean": mean, "p50": mean as u64, "p90": mean as u64, "p99": mean as u64})
}

pub fn report(id: &str, start: &str, end: &str, host: &str, flows: Vec<Value>) -> Value {
    json!({
        "report_id": id, "schema_version": agent_common::report::SCHEMA_VERSION,
        "window": {"start": start, "end": end},
        "agent": {"version": "test", "hostname": host},
        "flows": flows,
        "other": {"flows": 0, "connections": {"attempted":0,"established":0,"closed":0,"failed":0,"refused":0,"timed_out":0,"reset":0,"active":0},
            "bytes_sent": 0, "bytes_received": 0, "segments_sent": 0, "segments_received": 0, "retransmissions": 0, "timeouts": 0,
            "rtt_us": zero_latency(), "handshake_us": zero_latency()},
        "agent_stats": {"events": 1, "ringbuf_drops": 0, "map_full": {"sockets": 0, "flows": 0, "listeners": 0},
            "untracked_events": 0, "flows_tracked": 1, "sockets_tracked": 1, "cpu_seconds": 0.0, "rss_bytes": 0}
    })
}

pub fn parse(v: &Value) -> agent_common::report::Report {
    serde_json::from_value(v.clone()).expect("test report matches the schema")
}
