//! A Prometheus server of its own for tests: Debian's package (`cargo xtask setup`), temp
//! storage, a free loopback port, the remote-write receiver on. Used by agent/tests/export.rs and
//! by the remote-write destination's unit tests (included by path).
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    pub fn start() -> Prometheus {
        let help = Command::new("prometheus").arg("--help").output().unwrap_or_else(|e| {
            panic!("cannot run `prometheus` ({e}): install it with `cargo xtask setup` (Debian package prometheus)")
        });
        let help = String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
        // 2.33+ has the flag; older versions only the feature flag.
        let receiver = if help.contains("--web.enable-remote-write-receiver") {
            "--web.enable-remote-write-receiver"
        } else {
            "--enable-feature=remote-write-receiver"
        };
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 1h\nscrape_configs: []\n").unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(receiver)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, _dir: dir };
        let start = Instant::now();
        while http_get(&p.addr, "/-/ready").0 != 200 {
            assert!(start.elapsed() < Duration::from_secs(60), "prometheus not ready on {}", p.addr);
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// Instant query; the result vector.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let (status, body) = http_get(&self.addr, &format!("/api/v1/query?query={}", urlencode(q)));
        assert_eq!(status, 200, "query {q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that selects one series (None when it selects nothing).
    pub fn value(&self, q: &str) -> Option<f64> {
        let r = self.query(q);
        assert!(r.len() <= 1, "{q} selects several series: {r:?}");
        r.first().map(|s| s["value"][1].as_str().unwrap().parse().unwrap())
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over HTTP/1.0 (the answer ends with the connection): status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return (0, String::new());
    }
    let mut out = String::new();
    if s.read_to_string(&mut out).is_err() {
        return (0, String::new());
    }
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
