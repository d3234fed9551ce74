//! Running as a service: sd_notify READY/WATCHDOG/STOPPING on a real datagram socket, /healthz,
//! every capability dropped once the programs are attached, and a non-root run with only the
//! capabilities the systemd unit grants.

mod support;

use std::{
    io::{BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The capabilities the unit file grants a non-root flow-agent (setpriv spelling).
const UNIT_CAPS: &str = "+bpf,+perfmon,+net_admin,+dac_read_search";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field} in status")).trim().into()
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

struct Service {
    child: Child,
    notify: UnixDatagram,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// Start the agent under `prefix` (e.g. setpriv) with an abstract NOTIFY_SOCKET (no file
    /// permissions involved, so a non-root agent can reach it) and a 400 ms watchdog.
    fn start(lab: &support::Lab, prefix: &[&str]) -> Service {
        let name = format!("flow-agent-test-{}-{}", std::process::id(), free_port());
        let notify = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let port = free_port();
        let agent = env!("CARGO_BIN_EXE_flow-agent");
        let (program, args): (&str, Vec<&str>) = match prefix.split_first() {
            Some((p, rest)) => (p, rest.iter().copied().chain([agent]).collect()),
            None => (agent, vec![]),
        };
        let child = Command::new(program)
            .args(args)
            .args(["--dry-run", "--metrics-address", &format!("127.0.0.1:{port}"), "--cgroup"])
            .arg(&lab.cgroup)
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .env("WATCHDOG_USEC", "400000")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flow-agent");
        Service { child, notify, port }
    }

    fn recv(&self) -> String {
        let mut buf = [0u8; 512];
        match self.notify.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no notification from flow-agent ({e})"),
        }
    }

    /// SIGTERM; expects STOPPING=1 and a clean exit; returns the log.
    fn stop(mut self) -> String {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut got = self.recv();
        while got == "WATCHDOG=1" {
            got = self.recv();
        }
        assert_eq!(got, "STOPPING=1");
        let status = self.child.wait().unwrap();
        let mut log = String::new();
        BufReader::new(self.child.stderr.take().unwrap()).read_to_string(&mut log).unwrap();
        assert!(status.success(), "flow-agent exited with {status}:\n{log}");
        log
    }
}

#[test]
fn ready_watchdog_health_and_no_capabilities_once_attached() {
    let Some(_g) = support::privileged("ready_watchdog_health_and_no_capabilities_once_attached") else { return };
    let lab = support::Lab::new();
    let svc = Service::start(&lab, &[]);
    assert_eq!(svc.recv(), "READY=1\nSTATUS=capturing");
    let pid = svc.child.id();
    for field in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:", "CapBnd:"] {
        assert_eq!(status_field(pid, field), "0000000000000000", "{field} of the running agent");
    }
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // Capabilities are per thread: every thread of the agent, not only the main one.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        assert!(status.contains("CapEff:\t0000000000000000\n"), "{status}");
    }
    // WATCHDOG_USEC=400000: a ping every 200 ms.
    assert_eq!(svc.recv(), "WATCHDOG=1");
    assert_eq!(svc.recv(), "WATCHDOG=1");
    let r = http_get(svc.port, "/healthz");
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    svc.stop();
}

#[test]
fn runs_as_non_root_with_the_unit_capabilities() {
    let Some(_g) = support::privileged("runs_as_non_root_with_the_unit_capabilities") else { return };
    let lab = support::Lab::new();
    let caps_inh = format!("--inh-caps={UNIT_CAPS}");
    let caps_amb = format!("--ambient-caps={UNIT_CAPS}");
    let svc =
        Service::start(&lab, &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", &caps_inh, &caps_amb]);
    assert_eq!(svc.recv(), "READY=1\nSTATUS=capturing");
    let pid = svc.child.id();
    assert_eq!(status_field(pid, "Uid:").split_whitespace().next(), Some("65534"));
    assert_eq!(status_field(pid, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(pid, "CapAmb:"), "0000000000000000");
    let r = http_get(svc.port, "/healthz");
    assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    let log = svc.stop();
    // The BTF tracepoint for SYN-ACKs too, not its fallback, with only the unit's capabilities.
    assert!(support::strip_ansi(&log).contains("sock_ops and tp_btf/tcp_retransmit_synack attached"), "{log}");
    assert!(!log.contains("not available"), "{log}");
    // Without CAP_SYS_ADMIN the walk at start enters no other namespace (the lab's two are
    // there), and says nothing of failing to.
    let warnings: Vec<String> =
        log.lines().map(support::strip_ansi).filter(|l| l.contains(" WARN ") && l.contains("namespace")).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn non_root_without_capabilities_is_refused_before_ready() {
    let Some(_g) = support::privileged("non_root_without_capabilities_is_refused_before_ready") else { return };
    let lab = support::Lab::new();
    let mut svc = Service::start(&lab, &["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]);
    let status = svc.child.wait().unwrap();
    let mut log = String::new();
    BufReader::new(svc.child.stderr.take().unwrap()).read_to_string(&mut log).unwrap();
    assert!(!status.success());
    assert!(log.contains("CAP_BPF"), "{log}");
    svc.notify.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(svc.notify.recv(&mut buf).is_err(), "READY must not be sent when capture cannot start");
}
