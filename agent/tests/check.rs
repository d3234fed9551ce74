//! `flow-agent check`: each requirement with OK/FAIL and a fix, probes against real local
//! servers standing in for IMDS and the backend.

mod support;

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::{Command, Output},
    sync::mpsc,
};

/// A one-request HTTP server answering `status`; the request it got comes out of the channel.
fn server(status: &'static str) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
        let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 5\r\nconnection: close\r\n\r\ntoken");
    });
    (port, rx)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn check(prefix: &[&str], args: &[&str], imds_port: u16) -> (Output, String) {
    let agent = env!("CARGO_BIN_EXE_flow-agent");
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(agent);
            c
        }
        None => Command::new(agent),
    };
    let out = cmd
        .arg("check")
        .args(args)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://127.0.0.1:{imds_port}"))
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{out:?}");
    (out, stdout)
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines().find(|l| l[6..].starts_with(name)).unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

#[test]
fn all_ok_as_root_with_imds_and_backend_answering() {
    let Some(_g) = support::privileged("all_ok_as_root_with_imds_and_backend_answering") else { return };
    let lab = support::Lab::new();
    let (imds, imds_req) = server("200 OK");
    let (backend, backend_req) = server("404 Not Found");
    let endpoint = format!("http://127.0.0.1:{backend}/");
    let (out, stdout) = check(&[], &["--cgroup", lab.cgroup.to_str().unwrap(), "--endpoint", &endpoint], imds);
    assert!(out.status.success(), "{stdout}");
    for name in
        ["kernel version", "BTF", "cgroup v2", "tracepoints", "capabilities", "sock_ops attach", "IMDS", "backend"]
    {
        assert!(line(&stdout, name).starts_with("OK  "), "{name}:\n{stdout}");
    }
    let req = imds_req.recv().unwrap().to_ascii_lowercase();
    assert!(req.starts_with("put /latest/api/token http/1.1\r\n"), "{req}");
    assert!(req.contains("x-aws-ec2-metadata-token-ttl-seconds: "), "{req}");
    assert!(backend_req.recv().unwrap().starts_with("GET / HTTP/1.1\r\n"));
    assert!(line(&stdout, "backend").contains("HTTP 404"), "{stdout}");
    assert!(
        line(&stdout, "sock_ops attach").contains("the walk of open sockets runs in 1 network namespace"),
        "{stdout}"
    );
    assert!(line(&stdout, "walk_netns_all").starts_with("SKIP") && stdout.contains("off: "), "{stdout}");

    // With walk_netns_all: the lab's two namespaces (bound to /run/netns files) are among those
    // found, and the attach walks them.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "walk_netns_all = true\n").unwrap();
    let (out, stdout) =
        check(&[], &["--cgroup", lab.cgroup.to_str().unwrap(), "--config", config.to_str().unwrap()], closed_port());
    assert!(out.status.success(), "{stdout}");
    let all = line(&stdout, "walk_netns_all");
    let found: usize = all.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(all.starts_with("OK") && found >= 2, "{stdout}");
    let walked = line(&stdout, "sock_ops attach");
    assert!(!walked.contains("runs in 1 network namespace"), "the attach walked the namespaces found: {stdout}");
}

#[test]
fn off_ec2_is_a_warning_and_an_unreachable_backend_a_failure() {
    let Some(_g) = support::privileged("off_ec2_is_a_warning_and_an_unreachable_backend_a_failure") else { return };
    let lab = support::Lab::new();
    let cg = lab.cgroup.to_str().unwrap();
    let (out, stdout) = check(&[], &["--cgroup", cg], closed_port());
    assert!(out.status.success(), "{stdout}");
    assert!(line(&stdout, "IMDS").starts_with("WARN") && line(&stdout, "IMDS").contains("not on EC2"), "{stdout}");
    assert!(line(&stdout, "backend").starts_with("SKIP") && stdout.contains("not configured"), "{stdout}");

    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let (out, stdout) = check(&[], &["--cgroup", cg, "--endpoint", &endpoint], closed_port());
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(line(&stdout, "backend").starts_with("FAIL") && stdout.contains("refused"), "{stdout}");
    assert!(stdout.contains("fix: "), "{stdout}");

    // Without --endpoint, the one the agent's config ships to.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    let configured = format!("http://127.0.0.1:{}/publish", closed_port());
    std::fs::write(&config, format!("endpoint = \"{configured}\"\n")).unwrap();
    let (out, stdout) = check(&[], &["--cgroup", cg, "--config", config.to_str().unwrap()], closed_port());
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(line(&stdout, "backend").starts_with("FAIL") && stdout.contains(&configured), "{stdout}");

    let (out, stdout) = check(&[], &["--cgroup", cg, "--endpoint", "ftp://backend"], closed_port());
    assert_eq!(out.status.code(), Some(1));
    assert!(line(&stdout, "backend").contains("\"ftp://backend\" is not an http:// or https:// URL"), "{stdout}");
}

#[test]
fn without_privileges_each_failure_says_how_to_fix_it() {
    let Some(_g) = support::privileged("without_privileges_each_failure_says_how_to_fix_it") else { return };
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"];
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "walk_netns_all = true\n").unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (out, stdout) =
        check(&nobody, &["--cgroup", "/nonexistent/cg", "--config", config.to_str().unwrap()], closed_port());
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let caps = line(&stdout, "capabilities");
    assert!(caps.starts_with("FAIL") && caps.contains("CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"), "{stdout}");
    assert!(line(&stdout, "cgroup v2").starts_with("FAIL") && stdout.contains("/nonexistent/cg"), "{stdout}");
    assert!(line(&stdout, "sock_ops attach").contains("not tried"), "{stdout}");
    assert!(stdout.contains("AmbientCapabilities="), "{stdout}");
    let all = line(&stdout, "walk_netns_all");
    assert!(all.starts_with("WARN") && all.contains("CAP_SYS_ADMIN") && all.contains("CAP_SYS_PTRACE"), "{stdout}");
    assert!(
        all.contains("whose namespace could not be read: permission denied"),
        "root's processes, as nobody: {stdout}"
    );
    assert!(stdout.trim_end().ends_with("requirement(s) failed"), "{stdout}");
}
