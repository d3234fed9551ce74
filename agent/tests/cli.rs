//! The agent's command line: bad input and missing privileges give a clear error and a non-zero
//! exit, never a panic.

mod support;

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flow-agent")).args(args).output().expect("run flow-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "flow-agent panicked:\n{stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn bad_flags_and_config_name_the_problem() {
    let (code, err) = agent(&["--dry-run", "--report-interval", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--report-interval") && err.contains("soon"), "{err}");

    let (code, err) = agent(&["--dry-run", "--report-interval", "1500ms"]);
    assert_ne!(code, 0);
    assert!(err.contains("multiple of aggregate_interval"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "max_flowz = 3\n").unwrap();
    let (code, err) = agent(&["--dry-run", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("max_flowz") && err.contains("agent.toml"), "{err}");

    let (code, err) = agent(&["--dry-run", "--max-sockets", "lots"]);
    assert_ne!(code, 0);
    assert!(err.contains("--max-sockets"), "{err}");

    // A negative duration or size is a bad value of its flag, not an unknown flag "-1".
    let (code, err) = agent(&["--dry-run", "--report-interval", "-1s"]);
    assert_ne!(code, 0);
    assert!(err.contains("--report-interval") && err.contains(r#"invalid duration "-1s""#), "{err}");
    let (code, err) = agent(&["--dry-run", "--spool-max-bytes", "-5MiB"]);
    assert_ne!(code, 0);
    assert!(err.contains("--spool-max-bytes") && err.contains("-5MiB"), "{err}");
}

#[test]
fn version_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_flow-agent")).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn without_privileges_it_says_which_are_missing() {
    let Some(_g) = support::privileged("without_privileges_it_says_which_are_missing") else { return };
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
        .arg(env!("CARGO_BIN_EXE_flow-agent"))
        .arg("--dry-run")
        .output()
        .expect("setpriv (util-linux) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without privileges:\n{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("CAP_NET_ADMIN"), "{err}");
}

#[test]
fn a_cgroup_that_is_not_cgroup2_is_refused() {
    let Some(_g) = support::privileged("a_cgroup_that_is_not_cgroup2_is_refused") else { return };
    let (code, err) = agent(&["--dry-run", "--cgroup", "/nonexistent/cg"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/cg"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = agent(&["--dry-run", "--cgroup", dir.path().to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("not in a cgroup v2 hierarchy"), "{err}");
}

#[test]
fn bad_shipping_settings_name_the_problem() {
    let (code, err) = agent(&["--endpoint", "ftp://backend/publish"]);
    assert_ne!(code, 0);
    assert!(err.contains("endpoint") && err.contains("ftp://backend/publish"), "{err}");
    let (code, err) = agent(&["--endpoint", "http://127.0.0.1:9/publish", "--spool-max-bytes", "12QB"]);
    assert_ne!(code, 0);
    assert!(err.contains("--spool-max-bytes") && err.contains("12QB"), "{err}");
    let (code, err) = agent(&["--endpoint", "http://127.0.0.1:9/publish", "--spool-max-bytes", "100"]);
    assert_ne!(code, 0);
    assert!(err.contains("spool_max_bytes") && err.contains("4096"), "{err}");
    let (code, err) = agent(&["--endpoint", "http://127.0.0.1:9/publish", "--spool-dir", "/proc/self/no-spool"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot open the report spool") && err.contains("/proc/self/no-spool"), "{err}");
}
