//! Flow operations: the `flow-agent flows ...` CLI against a running agent with real traffic
//! between two network namespaces. Captured counters are checked against the bytes the traffic
//! generator moved; a flush is checked by what the flows count afterwards and by the reports,
//! which must still add up to all the traffic.

mod support;

use std::{
    io::{Read, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    process::Command,
    time::Duration,
};

use agent_common::report::Role;
use serde_json::Value;
use support::{Agent, Lab, flow, privileged, totals};

const BIN: &str = env!("CARGO_BIN_EXE_flow-agent");

/// `flow-agent flows --control-socket <agent's> ARGS`: the JSON answer, or the error text.
fn flows(agent: &Agent, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(BIN).arg("flows").arg("--control-socket").arg(agent.control_socket()).args(args).output();
    let out = out.expect("run flow-agent flows");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "flow-agent panicked:\n{stderr}");
    if out.status.success() { Ok(serde_json::from_slice(&out.stdout).expect("flows prints JSON")) } else { Err(stderr) }
}

fn ok(agent: &Agent, args: &[&str]) -> Value {
    flows(agent, args).unwrap_or_else(|e| panic!("flows {args:?} failed: {e}"))
}

/// Start an operation; it must complete. Returns its id.
fn start(agent: &Agent, args: &[&str]) -> String {
    let v = ok(agent, args);
    assert_eq!(v["FlowOperationStatus"], "COMPLETED", "{v}");
    v["FlowOperationId"].as_str().unwrap().to_string()
}

fn results(agent: &Agent, id: &str) -> Vec<Value> {
    let v = ok(agent, &["results", id]);
    assert!(v.get("NextToken").is_none(), "{v}");
    v["Flows"].as_array().unwrap().clone()
}

fn observed<'a>(flows: &'a [Value], at: &str) -> &'a Value {
    let f: Vec<&Value> = flows.iter().filter(|f| f["ObservedAt"] == at).collect();
    assert_eq!(f.len(), 1, "one flow observed at the {at}: {flows:?}");
    f[0]
}

fn counters(f: &Value) -> (u64, u64, u64, u64) {
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
    (n("BytesSent"), n("BytesReceived"), n("ConnectionsAttempted"), n("ConnectionsEstablished"))
}

fn exchange(lab: &Lab, port: &str, conns: &str, send: &str, reply: &str) -> (Value, Value) {
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", port, "--conns", conns, "--reply", reply]);
    let client =
        lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", port, "--conns", conns, "--send", send]).result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    (client, server)
}

#[test]
fn capture_and_flush_against_live_traffic() {
    let Some(_g) = privileged("capture_and_flush_against_live_traffic") else { return };
    let lab = Lab::new();
    let t0 = chrono::Utc::now();
    let agent = Agent::start(&lab, &[]);
    let (client, server) = exchange(&lab, "5401", "3", "4000", "1000");
    assert_eq!(client["ok"], 3);

    // Capture: both ends of the flow, with counters equal to what each side moved.
    let cap = start(&agent, &["capture", "--filter", "dst=10.77.0.2/32,dport=5401,proto=TCP"]);
    let captured = results(&agent, &cap);
    assert_eq!(captured.len(), 2, "{captured:?}");
    for f in &captured {
        assert_eq!(f["SourceAddress"]["AddressDefinition"], "10.77.0.1/32", "{f}");
        assert_eq!(f["DestinationAddress"]["AddressDefinition"], "10.77.0.2/32", "{f}");
        assert_eq!((&f["DestinationPort"], &f["Protocol"]), (&"5401".into(), &"TCP".into()), "{f}");
        let n = |k: &str| f[k].as_u64().unwrap();
        assert_eq!(n("ByteCount"), n("BytesSent") + n("BytesReceived"));
        assert_eq!(n("PacketCount"), n("SegmentsSent") + n("SegmentsReceived"));
        assert!(n("SegmentsSent") > 0 && n("ConnectionsOpen") == 0, "{f}");
    }
    let sent = |v: &Value| v["sent"].as_u64().unwrap();
    let received = |v: &Value| v["received"].as_u64().unwrap();
    assert_eq!(counters(observed(&captured, "client")), (sent(&client), received(&client), 3, 3));
    assert_eq!(counters(observed(&captured, "server")), (sent(&server), received(&server), 3, 3));

    // Filters: a miss, a range and CIDR, and several filters (any may match).
    let miss = start(&agent, &["capture", "--filter", "dport=5402"]);
    assert!(results(&agent, &miss).is_empty());
    let range = start(&agent, &["capture", "--filter", "src=10.77.0.0/24,dport=5400:5401"]);
    assert_eq!(results(&agent, &range).len(), 2);
    let any = start(&agent, &["capture", "--filter", "dport=9", "--filter", "src=10.77.0.1", "--filter", "proto=UDP"]);
    assert_eq!(results(&agent, &any).len(), 2);

    // Flush: returns the flows it removed, which are gone from the table afterwards.
    let flush = start(&agent, &["flush", "--filter", "dport=5401"]);
    let flushed = results(&agent, &flush);
    assert_eq!(counters(observed(&flushed, "client")), (sent(&client), received(&client), 3, 3));
    assert_eq!(counters(observed(&flushed, "server")), (sent(&server), received(&server), 3, 3));
    let gone = start(&agent, &["capture", "--filter", "dport=5401"]);
    assert!(results(&agent, &gone).is_empty(), "flushed flows are no longer tracked");

    // Counted again from their next event.
    let (client2, server2) = exchange(&lab, "5401", "1", "500", "100");
    let again = start(&agent, &["capture", "--filter", "dport=5401"]);
    let again_flows = results(&agent, &again);
    assert_eq!(counters(observed(&again_flows, "client")), (500, 100, 1, 1));
    assert_eq!(counters(observed(&again_flows, "server")), (sent(&server2), received(&server2), 1, 1));

    // Listing: newest first, by type, in pages.
    let all: Vec<String> = ok(&agent, &["list"])["FlowOperations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["FlowOperationId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all, [&again, &gone, &flush, &any, &range, &miss, &cap].map(|s| s.clone()));
    let flushes = ok(&agent, &["list", "--type", "FLOW_FLUSH"]);
    assert_eq!(flushes["FlowOperations"].as_array().unwrap().len(), 1);
    assert_eq!(flushes["FlowOperations"][0]["FlowOperationId"], flush.as_str());
    assert_eq!(flushes["FlowOperations"][0]["FlowOperationType"], "FLOW_FLUSH");
    let p1 = ok(&agent, &["list", "--max-results", "4"]);
    let token = p1["NextToken"].as_str().expect("a NextToken when more remain").to_string();
    let p2 = ok(&agent, &["list", "--max-results", "4", "--next-token", &token]);
    assert!(p2.get("NextToken").is_none(), "{p2}");
    let paged: Vec<String> = [p1, p2]
        .iter()
        .flat_map(|p| p["FlowOperations"].as_array().unwrap().clone())
        .map(|o| o["FlowOperationId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paged, all);

    // Describe: type, status, request time and the filters as given.
    let d = ok(&agent, &["describe", &flush]);
    assert_eq!((&d["FlowOperationType"], &d["FlowOperationStatus"]), (&"FLOW_FLUSH".into(), &"COMPLETED".into()));
    let at: chrono::DateTime<chrono::Utc> = d["FlowRequestTimestamp"].as_str().unwrap().parse().unwrap();
    assert!(t0 <= at && at <= chrono::Utc::now(), "{at}");
    assert_eq!(d["FlowOperation"]["FlowFilters"], serde_json::json!([{"DestinationPort": "5401"}]));
    // Results page too.
    let r1 = ok(&agent, &["results", &cap, "--max-results", "1"]);
    let r2 = ok(&agent, &["results", &cap, "--max-results", "1", "--next-token", r1["NextToken"].as_str().unwrap()]);
    assert_eq!((r1["Flows"].as_array().unwrap().len(), r2["Flows"].as_array().unwrap().len()), (1, 1));
    assert!(r2.get("NextToken").is_none());

    // The reports still hold all the traffic exactly once, across the flush.
    let reports = agent.stop();
    let c = totals(&reports, flow(lab.a4, lab.b4, 5401, Role::Client));
    assert_eq!((c.bytes_sent, c.bytes_received), (sent(&client) + sent(&client2), received(&client) + 100));
    assert_eq!((c.attempted, c.established, c.closed), (4, 4, 4));
    let s = totals(&reports, flow(lab.b4, lab.a4, 5401, Role::Server));
    assert_eq!((s.bytes_sent, s.bytes_received), (sent(&server) + sent(&server2), received(&server) + 500));
}

/// A raw HTTP request to the loopback API: (status, JSON body).
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON body: {e}: {raw}")))
}

#[test]
fn bad_requests_get_clear_errors() {
    let Some(_g) = privileged("bad_requests_get_clear_errors") else { return };
    let lab = Lab::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start(&lab, &["--control-http", &addr]);

    let err = |args: &[&str]| flows(&agent, args).expect_err("must fail");
    let e = err(&["capture", "--filter", "dst=10.0.0.300"]);
    assert!(e.contains("InvalidRequestException") && e.contains("DestinationAddress") && e.contains("10.0.0.300"));
    let e = err(&["capture", "--filter", "sport=1000"]);
    assert!(e.contains("SourcePort") && e.contains("ephemeral"), "{e}");
    let e = err(&["flush", "--filter", "dport=70000"]);
    assert!(e.contains("DestinationPort") && e.contains("70000"), "{e}");
    let e = err(&["capture", "--filter", "port=80"]);
    assert!(e.contains("unknown filter key \"port\""), "{e}");
    let e = err(&["describe", "no-such-operation"]);
    assert!(e.contains("ResourceNotFoundException") && e.contains("no-such-operation"), "{e}");
    let e = err(&["list", "--max-results", "0"]);
    assert!(e.contains("MaxResults") && e.contains("1 to 100"), "{e}");
    let e = err(&["list", "--next-token", "zzz"]);
    assert!(e.contains("NextToken") && e.contains("zzz"), "{e}");
    let e = err(&["list", "--type", "FLOW_DANCE"]);
    assert!(e.contains("FLOW_DANCE") && e.contains("FLOW_CAPTURE"), "{e}");
    let many: Vec<&str> = (0..21).flat_map(|_| ["--filter", "dport=1"]).collect();
    assert!(err(&[&["capture"], &many[..]].concat()).contains("at most 20"));

    // The same API on loopback HTTP; the server checks the limits itself.
    let body = serde_json::json!({ "FlowFilters": vec![serde_json::json!({}); 21] }).to_string();
    let (status, v) = http(&addr, "POST", "/flow-operations/capture", &body);
    assert_eq!(status, 400);
    assert!(v["Message"].as_str().unwrap().contains("at most 20"), "{v}");
    let (status, v) = http(&addr, "POST", "/flow-operations/flush", "{\"FlowFilters\": [{\"Port\": \"1\"}]}");
    assert_eq!((status, &v["Code"]), (400, &"InvalidRequestException".into()));
    assert!(v["Message"].as_str().unwrap().contains("Port"), "{v}");
    let (status, v) = http(&addr, "POST", "/flow-operations/capture", "not json");
    assert!(status == 400 && v["Message"].as_str().unwrap().contains("FlowFilters"), "{v}");
    let (status, v) = http(&addr, "POST", "/flow-operations/capture", "{\"FlowFilters\": []}");
    assert!(status == 400 && v["Message"].as_str().unwrap().contains("empty"), "{v}");
    let (status, v) = http(&addr, "GET", "/flow-operations?Colour=red", "");
    assert!(status == 400 && v["Message"].as_str().unwrap().contains("Colour"), "{v}");
    let (status, v) = http(&addr, "GET", "/nothing-here", "");
    assert!(status == 404 && v["Message"].as_str().unwrap().contains("/flow-operations"), "{v}");
    let (status, v) = http(&addr, "DELETE", "/flow-operations", "");
    assert!(status == 404 && v["Message"].as_str().unwrap().contains("no DELETE /flow-operations"), "{v}");
    // And the CLI over HTTP: nothing was started by the bad requests.
    let out = Command::new(BIN).args(["flows", "--control-http", &addr, "list"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["FlowOperations"], serde_json::json!([]));
    agent.stop();

    let out = Command::new(BIN).args(["flows", "--control-socket", "/nonexistent/c.sock", "list"]).output().unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("/nonexistent/c.sock") && e.contains("is flow-agent running"), "{e}");
}

fn gid_of(group: &str) -> u32 {
    let text = std::fs::read_to_string("/etc/group").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{group}:x:")))
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `flows list` as user nobody with the given primary group and no other.
fn list_as_nobody(agent: &Agent, gid: u32) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups", "--inh-caps=-all"])
        .arg(BIN)
        .args(["flows", "--control-socket"])
        .arg(agent.control_socket())
        .arg("list")
        .output()
        .expect("setpriv (util-linux) runs")
}

#[test]
fn control_socket_is_for_root_or_the_configured_group() {
    let Some(_g) = privileged("control_socket_is_for_root_or_the_configured_group") else { return };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &[]);
    let meta = std::fs::metadata(agent.control_socket()).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.uid()), (0o600, 0));
    let out = list_as_nobody(&agent, gid_of("nogroup"));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("Permission denied") && e.contains("control_group"), "{e}");
    assert!(ok(&agent, &["list"])["FlowOperations"].is_array(), "root may");
    agent.stop();

    let agent = Agent::start(&lab, &["--control-group", "nogroup"]);
    let meta = std::fs::metadata(agent.control_socket()).unwrap();
    assert_eq!((meta.permissions().mode() & 0o777, meta.gid()), (0o660, gid_of("nogroup")));
    let out = list_as_nobody(&agent, gid_of("nogroup"));
    assert!(out.status.success(), "a member of control_group may: {}", String::from_utf8_lossy(&out.stderr));
    let out = list_as_nobody(&agent, gid_of("users"));
    assert!(!out.status.success(), "others may not");
    let socket = agent.control_socket();
    agent.stop();
    assert!(!socket.exists(), "the socket is removed at exit");

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["--dry-run", "--metrics-address", "127.0.0.1:0", "--control-group", "no-such-group-x"])
        .arg("--cgroup")
        .arg(&lab.cgroup)
        .arg("--control-socket")
        .arg(dir.path().join("c.sock"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("control_group") && e.contains("no-such-group-x"), "{e}");
}
