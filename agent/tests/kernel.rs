//! Kernel integration tests: the real agent, the real eBPF programs, real TCP between two network
//! namespaces, checked against what the traffic generator moved and the kernel's own counters.
//! They need root; FLOW_AGENT_SKIP_PRIVILEGED=1 skips them explicitly.

mod support;

use std::time::Duration;

use agent_common::report::{Report, Role};
use serde_json::Value;
use support::{Agent, Lab, clock, delta, flow, local, privileged, totals};

/// The agent's flags for callback mode (per-segment callbacks instead of the walk).
const CALLBACKS: &[&str] = &["--fold-mode", "callbacks"];

fn bytes_and_opens(v6: bool, mode: &[&str]) {
    let lab = Lab::new();
    let (ca, sb) = if v6 { (lab.a6, lab.b6) } else { (lab.a4, lab.b4) };
    let agent = Agent::start(&lab, mode);
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server = lab.traffic(&lab.b, &["serve", "--addr", sb, "--port", "5001", "--conns", "20", "--reply", "50000"]);
    let client =
        lab.traffic(&lab.a, &["connect", "--addr", sb, "--port", "5001", "--conns", "20", "--send", "100000"]).result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let reports = agent.stop();

    assert_eq!(client["ok"], 20, "client: {client}");
    let c = totals(&reports, flow(ca, sb, 5001, Role::Client));
    let s = totals(&reports, flow(sb, ca, 5001, Role::Server));
    eprintln!("client flow {c:?}\nserver flow {s:?}");
    // Bytes: exactly what each side wrote and read.
    assert_eq!(c.bytes_sent, client["sent"].as_u64().unwrap());
    assert_eq!(c.bytes_received, client["received"].as_u64().unwrap());
    assert_eq!(s.bytes_received, server["received"].as_u64().unwrap());
    assert_eq!(s.bytes_sent, server["sent"].as_u64().unwrap());
    assert_eq!(c.bytes_sent, 2_000_000);
    assert_eq!(c.bytes_received, 1_000_000);
    // Connections: what the kernel counted as opens in each namespace.
    assert_eq!(c.attempted, delta(&na0, &na1, "TcpActiveOpens"));
    assert_eq!(s.established, delta(&nb0, &nb1, "TcpPassiveOpens"));
    assert_eq!((c.attempted, c.established, c.closed, c.failed), (20, 20, 20, 0));
    assert_eq!((s.attempted, s.established, s.closed, s.failed), (20, 20, 20, 0));
    assert_eq!(c.handshake_count, 20);
    assert!(c.rtt_count > 0 && s.rtt_count > 0, "RTT samples on both sides");
    // Every flow the agent reported in this cgroup is one of the two.
    let all = totals(&reports, |_| true);
    assert_eq!(all.attempted, c.attempted + s.attempted);
    // Windows are contiguous and aligned to whole report intervals (the last one is the partial
    // window flushed at SIGTERM).
    for w in reports.windows(2) {
        assert_eq!(w[0].window.end, w[1].window.start);
    }
    for r in &reports[..reports.len() - 1] {
        assert_eq!(r.window.start.timestamp_subsec_nanos(), 0, "{:?}", r.window);
        assert_eq!((r.window.end - r.window.start).num_milliseconds(), 1000, "{:?}", r.window);
    }
}

/// The server closes first, as an HTTP server with "Connection: close" does, and the client
/// closes a moment later: the server's socket, closed by its application, leaves FIN_WAIT2 for
/// CLOSE when the client acknowledges its FIN, before the client's FIN exists (that one reaches
/// the time-wait socket). Its bytes_received holds no FIN then, unlike a socket that leaves
/// FIN_WAIT2 because the FIN arrived; both sides still count exactly the bytes moved. Walk mode
/// (the FIN read from the socket's SOCK_DONE) and callback mode (from parsing the segments).
fn server_closing_first_is_counted_exactly(mode: &[&str]) {
    let lab = Lab::new();
    let agent = Agent::start(&lab, mode);
    let (ca, sb) = (lab.a4, lab.b4);
    let server = lab.traffic(
        &lab.b,
        &["serve", "--addr", sb, "--port", "5008", "--conns", "10", "--expect", "700", "--reply", "3000"],
    );
    let client = lab
        .traffic(
            &lab.a,
            &["connect", "--addr", sb, "--port", "5008", "--conns", "10", "--send", "700", "--server-closes", "0.2"],
        )
        .result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    assert_eq!(client["ok"], 10, "client: {client}");
    let c = totals(&reports, flow(ca, sb, 5008, Role::Client));
    let s = totals(&reports, flow(sb, ca, 5008, Role::Server));
    eprintln!("client flow {c:?}\nserver flow {s:?}");
    assert_eq!((s.bytes_received, s.bytes_sent), (7000, 30000), "server: {server}");
    assert_eq!((c.bytes_sent, c.bytes_received), (7000, 30000), "client: {client}");
    assert_eq!((c.established, c.closed, c.reset, s.established, s.closed, s.reset), (10, 10, 0, 10, 10, 0));
}

#[test]
fn server_closing_first_is_counted_exactly_in_walk_mode() {
    let Some(_g) = privileged("server_closing_first_is_counted_exactly_in_walk_mode") else { return };
    server_closing_first_is_counted_exactly(&[]);
}

#[test]
fn server_closing_first_is_counted_exactly_in_callback_mode() {
    let Some(_g) = privileged("server_closing_first_is_counted_exactly_in_callback_mode") else { return };
    server_closing_first_is_counted_exactly(CALLBACKS);
}

/// An IPv6 socket talking to an IPv4 peer through a v4-mapped address is the IPv4 flow.
#[test]
fn v4_mapped_ipv6_sockets_are_reported_as_ipv4() {
    let Some(_g) = privileged("v4_mapped_ipv6_sockets_are_reported_as_ipv4") else { return };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &[]);
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5007", "--conns", "2", "--reply", "321"]);
    let client = lab
        .traffic(&lab.a, &["connect", "--addr", "::ffff:10.77.0.2", "--port", "5007", "--conns", "2", "--send", "123"])
        .result();
    server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    assert_eq!(client["ok"], 2);
    let c = totals(&reports, flow(lab.a4, lab.b4, 5007, Role::Client));
    assert_eq!((c.attempted, c.established, c.bytes_sent, c.bytes_received), (2, 2, 246, 642), "{c:?}");
    assert!(reports.iter().flat_map(|r| &r.flows).all(|f| f.local_ip.is_ipv4() && f.remote_ip.is_ipv4()));
}

#[test]
fn bytes_and_opens_match_the_traffic_ipv4() {
    let Some(_g) = privileged("bytes_and_opens_match_the_traffic_ipv4") else { return };
    bytes_and_opens(false, &[]);
}

#[test]
fn bytes_and_opens_match_the_traffic_ipv6() {
    let Some(_g) = privileged("bytes_and_opens_match_the_traffic_ipv6") else { return };
    bytes_and_opens(true, &[]);
}

/// Connection records off (`--record-slots 0`; they are on by default): the programs fold the
/// establishments and closes of the walked sockets themselves, and the walk keeps a SOCKETS entry
/// for each socket it folds.
const NO_RECORDS: &[&str] = &["--record-slots", "0"];

#[test]
fn bytes_and_opens_match_the_traffic_without_connection_records() {
    let Some(_g) = privileged("bytes_and_opens_match_the_traffic_without_connection_records") else { return };
    bytes_and_opens(false, NO_RECORDS);
}

#[test]
fn bytes_and_opens_match_the_traffic_ipv6_without_connection_records() {
    let Some(_g) = privileged("bytes_and_opens_match_the_traffic_ipv6_without_connection_records") else { return };
    bytes_and_opens(true, NO_RECORDS);
}

/// Rings of 16 records per CPU (8 usable) against 300 connections made as fast as they go: most
/// events find their ring full and are folded in the kernel instead, the rest go as records,
/// and the totals are exact all the same.
#[test]
fn connection_records_that_find_their_ring_full_are_folded_in_the_kernel_exactly() {
    let Some(_g) = privileged("connection_records_that_find_their_ring_full_are_folded_in_the_kernel_exactly") else {
        return;
    };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &["--record-slots", "16"]);
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server =
        lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5024", "--conns", "300", "--reply", "700"]);
    let client = lab
        .traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5024", "--conns", "300", "--send", "1000"])
        .result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let reports = agent.stop();

    let ring_full: u64 = reports.iter().map(|r| r.agent_stats.ring_full).sum();
    let c = totals(&reports, flow(lab.a4, lab.b4, 5024, Role::Client));
    let s = totals(&reports, flow(lab.b4, lab.a4, 5024, Role::Server));
    eprintln!("ring_full {ring_full}\nclient flow {c:?}\nserver flow {s:?}");
    assert!(ring_full > 0, "no record found its ring full: the test did not test the fallback");
    assert!(ring_full < 4 * 300, "every event found its ring full ({ring_full}): none went as a record");
    assert_eq!(client["ok"], 300, "client: {client}");
    assert_eq!((c.bytes_sent, c.bytes_received), (300_000, 210_000));
    assert_eq!(
        (s.bytes_received, s.bytes_sent),
        (server["received"].as_u64().unwrap(), server["sent"].as_u64().unwrap())
    );
    assert_eq!((s.bytes_received, s.bytes_sent), (300_000, 210_000));
    assert_eq!(c.attempted, delta(&na0, &na1, "TcpActiveOpens"));
    assert_eq!(s.established, delta(&nb0, &nb1, "TcpPassiveOpens"));
    assert_eq!((c.attempted, c.established, c.closed, c.failed, c.reset), (300, 300, 300, 0, 0));
    assert_eq!((s.attempted, s.established, s.closed, s.failed, s.reset), (300, 300, 300, 0, 0));
    assert_eq!(c.handshake_count, 300);
    let last = reports.last().unwrap();
    assert_eq!(last.agent_stats.sockets_tracked, 0, "{:?}", last.agent_stats);
}

/// With records on the walk hands the daemon the counters of the walked sockets and keeps nothing
/// of them in the kernel (`record::item::SNAPSHOT`), so the kernel cannot fold such a socket's
/// close exactly when the close finds its ring full: it goes to the spill (`RECORD_SPILL`), which
/// the daemon reads. Here the agent is stopped (SIGSTOP) once its walks have handed it four
/// long-lived connections; a burst of short connections fills the rings of 16 records, then the
/// long ones close. After the agent goes on, the totals are exact: the bytes the walks handed it
/// are not counted again at the close.
#[test]
fn walked_closes_that_find_their_ring_full_are_spilled_and_exact_with_connection_records() {
    let Some(_g) = privileged("walked_closes_that_find_their_ring_full_are_spilled_and_exact_with_connection_records")
    else {
        return;
    };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &["--record-slots", "16"]);
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5043", "--conns", "4", "--echo"]);
    let pingpong =
        ["pingpong", "--addr", lab.b4, "--port", "5043", "--secs", "6", "--size", "20000", "--interval-ms", "5"];
    let clients: Vec<_> = (0..4).map(|_| lab.traffic(&lab.a, &pingpong)).collect();
    // The walks at the window ends (every second) hand the daemon the moving connections.
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: a signal to the agent's process, which the test started and still holds.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGSTOP) }, 0);
    let burst_server =
        lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5044", "--conns", "100", "--reply", "10"]);
    let burst = lab
        .traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5044", "--conns", "100", "--send", "10"])
        .result();
    burst_server.result();
    let clients: Vec<_> = clients.into_iter().map(|c| c.result()).collect();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(30));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGCONT) }, 0);
    let reports = agent.stop();

    let sum = |k: &str| clients.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    let c = totals(&reports, flow(lab.a4, lab.b4, 5043, Role::Client));
    let s = totals(&reports, flow(lab.b4, lab.a4, 5043, Role::Server));
    let ring_full: u64 = reports.iter().map(|r| r.agent_stats.ring_full).sum();
    let spill_full: u64 = reports.iter().map(|r| r.agent_stats.records_spill_full).sum();
    let long = flow(lab.a4, lab.b4, 5043, Role::Client);
    let moving = |r: &Report| r.flows.iter().any(|f| long(f) && f.metrics.bytes_sent > 0);
    eprintln!("ring_full {ring_full} spill_full {spill_full}\nclient {c:?}\nserver {s:?}\nburst {burst}");
    assert!(
        reports.iter().filter(|r| moving(r)).count() >= 2,
        "the walks did not fold the open connections before the stop"
    );
    assert!(ring_full > 0, "no record found its ring full: the test did not test the spill");
    assert_eq!(spill_full, 0, "no spilled record may find the spill full");
    assert_eq!((c.bytes_sent, c.bytes_received), (sum("sent"), sum("received")));
    assert_eq!(
        (s.bytes_received, s.bytes_sent),
        (server["received"].as_u64().unwrap(), server["sent"].as_u64().unwrap())
    );
    assert_eq!((c.attempted, c.established, c.closed), (4, 4, 4));
    assert_eq!((s.established, s.closed), (4, 4));
    assert_eq!(burst["ok"], 100, "burst: {burst}");
    let b = totals(&reports, flow(lab.a4, lab.b4, 5044, Role::Client));
    assert_eq!((b.attempted, b.established, b.closed, b.bytes_sent, b.bytes_received), (100, 100, 100, 1000, 1000));
}

#[test]
fn bytes_and_opens_match_the_traffic_in_callback_mode() {
    let Some(_g) = privileged("bytes_and_opens_match_the_traffic_in_callback_mode") else { return };
    bytes_and_opens(false, CALLBACKS);
}

/// Long-lived connections under 5% loss, both ways, while the walk folds them every window: each
/// window while they are open carries their traffic (no program runs per packet, so that is the
/// walk's doing), and the totals equal the bytes moved and the kernel's retransmission and
/// timeout counters exactly, although the walk and the sockets' own retransmission callbacks
/// fold the same sockets concurrently.
#[test]
fn open_connections_are_folded_every_window_and_exactly() {
    let Some(_g) = privileged("open_connections_are_folded_every_window_and_exactly") else { return };
    open_connections_folded(false, &[]);
}

#[test]
fn open_connections_are_folded_every_window_and_exactly_without_connection_records() {
    let Some(_g) = privileged("open_connections_are_folded_every_window_and_exactly_without_connection_records") else {
        return;
    };
    open_connections_folded(false, NO_RECORDS);
}

/// The same over IPv6: the walk's first fold of a socket builds its flow key from the socket
/// itself, which must be the key its connect or accept counted on.
#[test]
fn open_ipv6_connections_are_folded_every_window_and_exactly() {
    let Some(_g) = privileged("open_ipv6_connections_are_folded_every_window_and_exactly") else { return };
    open_connections_folded(true, &[]);
}

fn open_connections_folded(v6: bool, extra: &[&str]) {
    let lab = Lab::new();
    let (ca, sb) = if v6 { (lab.a6, lab.b6) } else { (lab.a4, lab.b4) };
    lab.lose_data_segments_both_ways(5);
    let agent = Agent::start(&lab, extra);
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server = lab.traffic(&lab.b, &["serve", "--addr", sb, "--port", "5031", "--conns", "6", "--echo"]);
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let args =
                ["pingpong", "--addr", sb, "--port", "5031", "--secs", "4", "--size", "30000", "--interval-ms", "5"];
            lab.traffic(&lab.a, &args)
        })
        .collect();
    let clients: Vec<_> = clients.into_iter().map(|c| c.result()).collect();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(30));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let reports = agent.stop();

    let sum = |k: &str| clients.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    let c = totals(&reports, flow(ca, sb, 5031, Role::Client));
    let s = totals(&reports, flow(sb, ca, 5031, Role::Server));
    eprintln!("client {c:?}\nserver {s:?}");
    assert_eq!((c.bytes_sent, c.bytes_received), (sum("sent"), sum("received")));
    assert_eq!(
        (s.bytes_received, s.bytes_sent),
        (server["received"].as_u64().unwrap(), server["sent"].as_u64().unwrap())
    );
    assert!(c.retransmissions + s.retransmissions > 0, "5% loss must cause retransmissions");
    assert_eq!(c.retransmissions, delta(&na0, &na1, "TcpRetransSegs"));
    assert_eq!(s.retransmissions, delta(&nb0, &nb1, "TcpRetransSegs"));
    assert_eq!(c.timeouts, delta(&na0, &na1, "TcpExtTCPTimeouts"));
    assert_eq!(s.timeouts, delta(&nb0, &nb1, "TcpExtTCPTimeouts"));
    assert_eq!((c.established, c.closed, s.established, s.closed), (6, 6, 6, 6));
    // Windows in which the connections were open and none closed: traffic on both sides.
    let open_windows: Vec<_> = reports
        .iter()
        .filter(|r| {
            let w = |pred: &dyn Fn(&agent_common::report::FlowRecord) -> bool| {
                r.flows.iter().filter(|f| pred(f)).map(|f| f.metrics.clone()).collect::<Vec<_>>()
            };
            let cw = w(&flow(ca, sb, 5031, Role::Client));
            let sw = w(&flow(sb, ca, 5031, Role::Server));
            !cw.is_empty()
                && cw.iter().all(|m| m.connections.closed == 0 && m.connections.active == 6 && m.bytes_sent > 0)
                && sw.iter().all(|m| m.connections.closed == 0 && m.bytes_received > 0 && m.bytes_sent > 0)
        })
        .collect();
    assert!(open_windows.len() >= 2, "{} windows with the connections open and traffic", open_windows.len());
    assert!(open_windows.iter().all(|r| r.agent_stats.events > 0));
}

/// Connections that go quiet for several windows and then move again: the walks in between pass
/// over their sockets as idle (reported), the first walk after they move folds them again, and
/// the totals equal the bytes moved exactly.
#[test]
fn idle_open_connections_are_passed_over_and_counted_exactly_when_they_move_again() {
    let Some(_g) = privileged("idle_open_connections_are_passed_over_and_counted_exactly_when_they_move_again") else {
        return;
    };
    let (reports, quiet) = idle_then_busy(&[], 5031);
    let idle: Vec<u64> = reports.iter().map(|r| r.agent_stats.walk_idle_sockets).collect();
    eprintln!("walk_idle_sockets per window: {idle:?}");
    let busy = idle[..quiet.start].iter().max().copied().unwrap_or(0);
    let quiet_max = idle[quiet].iter().max().copied().unwrap_or(0);
    assert!(quiet_max >= busy + 8, "a walk while the connections were quiet passed over their 8 sockets: {idle:?}");
}

/// The same with `--walk-full-interval 0s`: every walk visits every socket, none is passed over.
#[test]
fn every_walk_visits_every_socket_with_a_full_interval_of_zero() {
    let Some(_g) = privileged("every_walk_visits_every_socket_with_a_full_interval_of_zero") else { return };
    let (reports, _) = idle_then_busy(&["--walk-full-interval", "0s"], 5032);
    assert!(reports.iter().all(|r| r.agent_stats.walk_idle_sockets == 0));
}

/// Four connections that exchange data for 2 s, stay quiet for 4.5 s, exchange again for 2 s and
/// close: their totals match what moved, and in a window after the quiet spell, before any
/// closed, the walk folded their new traffic. Returns the reports and the quiet windows.
fn idle_then_busy(extra: &[&str], port: u16) -> (Vec<Report>, std::ops::Range<usize>) {
    let lab = Lab::new();
    // Inside the server's namespace, so that the walks cover the lab's sockets only (and the
    // idle counts are theirs).
    let agent = Agent::start_full(&lab, Some(&lab.b), &["--dry-run"], extra, &[]);
    let (ca, sb) = (lab.a4, lab.b4);
    let p = port.to_string();
    let server = lab.traffic(&lab.b, &["serve", "--addr", sb, "--port", &p, "--conns", "4", "--echo"]);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let args = [
                "pingpong",
                "--addr",
                sb,
                "--port",
                &p,
                "--secs",
                "2",
                "--idle-secs",
                "4.5",
                "--size",
                "2000",
                "--interval-ms",
                "20",
            ];
            lab.traffic(&lab.a, &args)
        })
        .collect();
    let clients: Vec<_> = clients.into_iter().map(|c| c.result()).collect();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(30));
    let reports = agent.stop();

    let sum = |k: &str| clients.iter().map(|c| c[k].as_u64().unwrap()).sum::<u64>();
    let c = totals(&reports, flow(ca, sb, port, Role::Client));
    let s = totals(&reports, flow(sb, ca, port, Role::Server));
    eprintln!("client {c:?}\nserver {s:?}");
    assert_eq!((c.bytes_sent, c.bytes_received), (sum("sent"), sum("received")));
    assert_eq!(
        (s.bytes_received, s.bytes_sent),
        (server["received"].as_u64().unwrap(), server["sent"].as_u64().unwrap())
    );
    assert_eq!((c.established, c.closed, s.established, s.closed), (4, 4, 4, 4));
    // Per window: did the client's connections move, and were they all open?
    let windows: Vec<(bool, bool)> = reports
        .iter()
        .map(|r| {
            let m: Vec<_> =
                r.flows.iter().filter(|f| flow(ca, sb, port, Role::Client)(f)).map(|f| &f.metrics).collect();
            let moved = m.iter().any(|m| m.bytes_sent > 0);
            let open = !m.is_empty() && m.iter().all(|m| m.connections.active == 4 && m.connections.closed == 0);
            (moved, open)
        })
        .collect();
    eprintln!("windows (moved, open): {windows:?}");
    // Traffic, then at least three windows with none, then traffic again with all still open.
    let first = windows.iter().position(|w| w.0).expect("a window with traffic");
    let quiet = windows[first..].iter().position(|w| !w.0).map(|i| first + i).expect("a quiet window");
    let again = windows[quiet..].iter().position(|w| w.0).map(|i| quiet + i).expect("traffic after the quiet spell");
    assert!(again - quiet >= 3, "{windows:?}");
    assert!(windows[again].1, "the first window of the second round folded open connections: {windows:?}");
    (reports, quiet..again)
}

/// With random loss of data segments in both directions, retransmissions and timeouts summed over
/// a namespace's flows equal that namespace's TcpRetransSegs and TcpExtTCPTimeouts.
#[test]
fn retransmissions_and_timeouts_equal_kernel_counters() {
    let Some(_g) = privileged("retransmissions_and_timeouts_equal_kernel_counters") else { return };
    retransmissions_and_timeouts_equal_kernel_counters_with(&[]);
}

#[test]
fn retransmissions_and_timeouts_equal_kernel_counters_without_connection_records() {
    let Some(_g) = privileged("retransmissions_and_timeouts_equal_kernel_counters_without_connection_records") else {
        return;
    };
    retransmissions_and_timeouts_equal_kernel_counters_with(NO_RECORDS);
}

fn retransmissions_and_timeouts_equal_kernel_counters_with(extra: &[&str]) {
    let lab = Lab::new();
    lab.lose_data_segments_both_ways(5);
    let agent = Agent::start(&lab, extra);
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server =
        lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5001", "--conns", "30", "--reply", "100000"]);
    let client = lab
        .traffic(
            &lab.a,
            &["connect", "--addr", lab.b4, "--port", "5001", "--conns", "30", "--send", "300000", "--parallel"],
        )
        .result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(60));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let reports = agent.stop();

    assert_eq!(client["ok"], 30, "client: {client}");
    let a = totals(&reports, local(lab.a4));
    let b = totals(&reports, local(lab.b4));
    let oracle = |n0, n1, k| delta(n0, n1, k);
    eprintln!(
        "ns a: agent retrans {} timeouts {} | kernel {} {}",
        a.retransmissions,
        a.timeouts,
        oracle(&na0, &na1, "TcpRetransSegs"),
        oracle(&na0, &na1, "TcpExtTCPTimeouts")
    );
    eprintln!(
        "ns b: agent retrans {} timeouts {} | kernel {} {}",
        b.retransmissions,
        b.timeouts,
        oracle(&nb0, &nb1, "TcpRetransSegs"),
        oracle(&nb0, &nb1, "TcpExtTCPTimeouts")
    );
    assert!(a.retransmissions + b.retransmissions > 0, "5% loss must cause retransmissions");
    assert_eq!(a.retransmissions, oracle(&na0, &na1, "TcpRetransSegs"));
    assert_eq!(b.retransmissions, oracle(&nb0, &nb1, "TcpRetransSegs"));
    assert_eq!(a.timeouts, oracle(&na0, &na1, "TcpExtTCPTimeouts"));
    assert_eq!(b.timeouts, oracle(&nb0, &nb1, "TcpExtTCPTimeouts"));
    assert_eq!(a.attempted, oracle(&na0, &na1, "TcpActiveOpens"));
    assert_eq!(b.established, oracle(&nb0, &nb1, "TcpPassiveOpens"));
    // Loss does not change the bytes.
    assert_eq!(a.bytes_sent, client["sent"].as_u64().unwrap());
    assert_eq!(b.bytes_received, server["received"].as_u64().unwrap());
    assert_eq!(a.bytes_received, client["received"].as_u64().unwrap());
}

/// When `lost_synacks`'s server listens: once the agent runs; before the agent starts; or once
/// the agent runs, after a first server on the port served a connection and closed (the port's
/// listener count in LISTENERS goes to 0 and back to 1).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listen {
    Once,
    BeforeTheAgent,
    Again,
}

/// What `lost_synacks` counted: the agent's totals of each side's flow, the kernel's counters
/// per side (ns a connects, ns b accepts), the agent's skipped program runs and SYN-ACK
/// retransmissions recovered from the accepted sockets, and how often the kernel ran the SYN-ACK
/// program.
struct Handshake {
    a: support::Totals,
    b: support::Totals,
    kernel_a: (u64, u64),
    kernel_b: u64,
    missed_runs: u64,
    recovered: u64,
    synack: SynackRuns,
}

/// The kernel's own count of the SYN-ACK retransmissions of the accepting namespace
/// (TcpExtTCPSynRetrans), and of the runs and skipped runs of the agent's SYN-ACK program
/// (`support::prog_runs`).
#[derive(Debug)]
struct SynackRuns {
    retransmitted: u64,
    runs: u64,
    skipped: u64,
}

impl SynackRuns {
    /// The kernel ran the program, or counted a skipped run, for every SYN-ACK retransmission.
    /// It nearly always does; in about one CI run in four on 2026-12-07, in one of the eight
    /// SYN-ACK tests, it ran the BTF tracepoint program for fewer than it retransmitted and
    /// counted no skipped run (README, Known limits).
    fn every_time(&self) -> bool {
        self.runs + self.skipped >= self.retransmitted
    }

    /// What the kernel ran the program for, and what the accepted sockets brought that it did
    /// not (`recovered`), is what the agent counted.
    fn assert_counted_every_run(&self, agent: u64, recovered: u64, what: &str) {
        assert_eq!(
            agent,
            self.runs + recovered,
            "{what}: every run of the SYN-ACK program is counted, and {recovered} recovered ({self:?})"
        );
    }
}

/// Three connections (over IPv6 if `v6`) whose SYN-ACKs are lost for 1.5 s, so that both sides
/// retransmit, with the agent started with `extra`, and BPF system calls holding every CPU if
/// `load`. `listener` says when the server listens.
fn lost_synacks(v6: bool, extra: &[&str], load: bool, listener: Listen) -> Handshake {
    let lab = Lab::new();
    let (ca, sb) = if v6 { (lab.a6, lab.b6) } else { (lab.a4, lab.b4) };
    let serve = || lab.traffic(&lab.b, &["serve", "--addr", sb, "--port", "5021", "--conns", "3", "--reply", "10"]);
    let early = (listener == Listen::BeforeTheAgent).then(serve);
    let stats = support::BpfRunStats::enable();
    let agent = Agent::start(&lab, extra);
    let relisten = listener == Listen::Again;
    if relisten {
        let first = lab.traffic(&lab.b, &["serve", "--addr", sb, "--port", "5021", "--conns", "1", "--reply", "10"]);
        let c =
            lab.traffic(&lab.a, &["connect", "--addr", sb, "--port", "5021", "--conns", "1", "--send", "10"]).result();
        assert_eq!(c["ok"], 1, "client before: {c}");
        first.result();
    }
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server = early.unwrap_or_else(serve);
    let load = load.then(support::BpfSyscallLoad::start);
    lab.nft_input_rule(&lab.a, "synack", "tcp flags & (syn|ack) == syn|ack drop");
    let started = clock();
    let client =
        lab.traffic(&lab.a, &["connect", "--addr", sb, "--port", "5021", "--conns", "3", "--send", "10", "--parallel"]);
    std::thread::sleep(Duration::from_millis(1500));
    support::sh(&format!("ip netns exec {} nft delete table inet synack", lab.a));
    let let_through = clock();
    let client = client.result();
    server.result();
    if let Some(load) = load {
        let scans = load.stop();
        eprintln!("BPF map scans per CPU: {scans:?}");
        assert!(scans.iter().all(|&n| n > 100), "the load must have run on every CPU: {scans:?}");
    }
    lab.wait_sockets_closed(Duration::from_secs(20));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    agent.settle();
    let (runs, skipped) = support::prog_runs(agent.pid(), "flow_synack_retrans");
    drop(stats);
    let (reports, log) = agent.stop_reports_with_log();
    assert_synack_hook(&log, extra);
    assert_eq!(client["ok"], 3, "client: {client}");
    // Everything on the one flow key of each side: the SYN-ACK program read the addresses and
    // ports of the request right.
    assert_eq!(totals(&reports, local(ca)), totals(&reports, flow(ca, sb, 5021, Role::Client)));
    assert_eq!(totals(&reports, local(sb)), totals(&reports, flow(sb, ca, 5021, Role::Server)));
    let h = Handshake {
        a: totals(&reports, local(ca)),
        b: totals(&reports, local(sb)),
        kernel_a: (delta(&na0, &na1, "TcpRetransSegs"), delta(&na0, &na1, "TcpExtTCPTimeouts")),
        kernel_b: delta(&nb0, &nb1, "TcpRetransSegs"),
        missed_runs: reports.iter().map(|r| r.agent_stats.missed_runs).sum(),
        recovered: recovered(&reports),
        synack: SynackRuns { retransmitted: delta(&nb0, &nb1, "TcpExtTCPSynRetrans"), runs, skipped },
    };
    eprintln!(
        "client retrans {} (kernel {}), server retrans {} (kernel {}), missed runs {}, recovered {}",
        h.a.retransmissions, h.kernel_a.0, h.b.retransmissions, h.kernel_b, h.missed_runs, h.recovered
    );
    eprintln!("client started {started}, SYN-ACKs let through from {let_through}; {:?}", h.synack);
    eprint!("server side, each window:\n{}", support::window_view(&reports, local(sb)));
    if h.b.retransmissions != h.kernel_b {
        eprintln!("the agent's log:\n{log}");
    }
    assert!(h.kernel_b > 0, "the server must have retransmitted SYN-ACKs");
    let n = 3 + relisten as u64;
    assert_eq!((h.a.attempted, h.a.established, h.b.established), (n, n, n));
    h.synack.assert_counted_every_run(h.b.retransmissions, h.recovered, "lost SYN-ACKs");
    h
}

/// The SYN-ACK retransmissions the reports say were recovered from accepted sockets.
fn recovered(reports: &[Report]) -> u64 {
    reports.iter().map(|r| r.agent_stats.synack_retransmissions_recovered).sum()
}

/// The agent attached the SYN-ACK program `extra` asks for (the BTF one unless it says
/// `--synack-hook tracepoint`), not the other as a fallback.
fn assert_synack_hook(log: &str, extra: &[&str]) {
    let want = if extra.contains(&"tracepoint") { "tcp:tcp_retransmit_synack" } else { "tp_btf/tcp_retransmit_synack" };
    assert!(log.contains(&format!("sock_ops and {want} attached")), "{want} must be attached:\n{log}");
}

/// Both sides' counts are the kernel's, whether or not the kernel ran the SYN-ACK program for
/// every SYN-ACK retransmission: what it did not run it for, the accepted sockets brought.
fn assert_exact(h: &Handshake) {
    assert_eq!(h.b.retransmissions, h.kernel_b, "{:?}, recovered {}", h.synack, h.recovered);
    assert_eq!((h.a.retransmissions, h.a.timeouts), h.kernel_a);
    assert_eq!(h.missed_runs, 0, "no program run may be skipped");
    if h.synack.every_time() {
        assert_eq!(h.recovered, 0, "nothing to recover: the kernel ran the program for every SYN-ACK retransmission");
    } else {
        eprintln!(
            "the kernel did not run the SYN-ACK program for every SYN-ACK retransmission: {} recovered",
            h.recovered
        );
    }
}

/// SYN-ACKs lost for a while: the accepting side's SYN-ACK retransmissions (which happen before
/// there is a socket) and the connecting side's SYN retransmissions match the kernel's counts.
#[test]
fn handshake_retransmissions_equal_kernel_counters() {
    let Some(_g) = privileged("handshake_retransmissions_equal_kernel_counters") else { return };
    assert_exact(&lost_synacks(false, &[], false, Listen::Once));
}

#[test]
fn handshake_retransmissions_equal_kernel_counters_ipv6() {
    let Some(_g) = privileged("handshake_retransmissions_equal_kernel_counters_ipv6") else { return };
    assert_exact(&lost_synacks(true, &[], false, Listen::Once));
}

/// The same on a port whose listener closed and was opened again: LISTENERS counts a port's
/// listeners (an array by port), and the second listener's SYN-ACKs are counted.
#[test]
fn handshake_retransmissions_of_a_port_listened_on_again_equal_kernel_counters() {
    let Some(_g) = privileged("handshake_retransmissions_of_a_port_listened_on_again_equal_kernel_counters") else {
        return;
    };
    assert_exact(&lost_synacks(false, &[], false, Listen::Again));
}

/// The same with a listener that was listening before the agent started (as after a restart or
/// an upgrade of the agent): the SYN-ACK program checks the listener's cgroup, not a list of the
/// listens it saw. (With `--synack-hook tracepoint` such a listener is not counted: README.)
#[test]
fn handshake_retransmissions_of_a_listener_older_than_the_agent_equal_kernel_counters() {
    let Some(_g) = privileged("handshake_retransmissions_of_a_listener_older_than_the_agent_equal_kernel_counters")
    else {
        return;
    };
    assert_exact(&lost_synacks(false, &[], false, Listen::BeforeTheAgent));
}

/// SYN-ACKs of handshakes that never complete, to a listener that was listening before the agent
/// started: the requests die with their retransmissions, which only the SYN-ACK program sees
/// (a completed handshake's socket inherits them, as the test above counts). The program checks
/// the listener's cgroup, so it counts them all (with `--synack-hook tracepoint` too).
#[test]
fn synack_retransmissions_of_unanswered_handshakes_to_a_listener_older_than_the_agent_equal_kernel_counters() {
    let Some(_g) = privileged(
        "synack_retransmissions_of_unanswered_handshakes_to_a_listener_older_than_the_agent_equal_kernel_counters",
    ) else {
        return;
    };
    for hook in ["btf", "tracepoint"] {
        let log = unanswered_synacks(5026, &["--synack-hook", hook], true);
        assert!(log.contains("synack_listeners=cgroup"), "{log}");
    }
}

/// The same, the programs going by port (`--synack-listeners port`, as where the kernel's cgroup
/// layout is unknown), to a listener on a port listened on before and closed since (its count of
/// listeners in LISTENERS goes 1, 0, 1), both SYN-ACK programs.
#[test]
fn synack_retransmissions_of_unanswered_handshakes_counted_by_port_equal_kernel_counters() {
    let Some(_g) = privileged("synack_retransmissions_of_unanswered_handshakes_counted_by_port_equal_kernel_counters")
    else {
        return;
    };
    for hook in ["btf", "tracepoint"] {
        let log = unanswered_synacks(5027, &["--synack-hook", hook, "--synack-listeners", "port"], false);
        assert!(log.contains("synack_listeners=port"), "{log}");
    }
}

/// Two handshakes to `port` whose SYN-ACKs are all dropped, with the agent started with `extra`,
/// its listener listening before the agent starts (`older`), or after a first listener on the
/// port served a connection and closed: the server's SYN-ACK retransmissions on its flow equal the
/// kernel's, in an attempt (at most three) where the kernel ran the SYN-ACK program for each: no
/// socket is accepted to recover those it did not run it for. The agent's log.
fn unanswered_synacks(port: u16, extra: &[&str], older: bool) -> String {
    let tag = extra.join(" ");
    let u = in_three_attempts(
        &format!("{tag}: the kernel runs the SYN-ACK program for every SYN-ACK retransmission"),
        || unanswered_synacks_once(port, extra, older, &tag),
        |u| u.synack.every_time(),
    );
    assert_eq!(u.agent, u.kernel, "{tag}");
    u.log
}

/// `attempt` until its result is `wanted`, at most three times: that result. `what` says what
/// is wanted.
fn in_three_attempts<T>(what: &str, attempt: impl Fn() -> T, wanted: impl Fn(&T) -> bool) -> T {
    for n in 1..=3 {
        let t = attempt();
        if wanted(&t) {
            return t;
        }
        eprintln!("attempt {n}: not so ({what}): again");
    }
    panic!("in 3 attempts, never so: {what}");
}

/// What `unanswered_synacks_once` counted: the server flow's retransmissions, the kernel's
/// (TcpRetransSegs of the accepting namespace), the SYN-ACK program's runs and the agent's log.
struct Unanswered {
    agent: u64,
    kernel: u64,
    synack: SynackRuns,
    log: String,
}

fn unanswered_synacks_once(port: u16, extra: &[&str], older: bool, tag: &str) -> Unanswered {
    let lab = Lab::new();
    let (port_n, port) = (port, port.to_string());
    // One SYN-ACK retransmission per request by its timer (and one per repeated SYN), then the
    // request is dropped; the client gives up after one SYN retransmission.
    support::sh(&format!("ip netns exec {} sysctl -q -w net.ipv4.tcp_synack_retries=1", lab.b));
    support::sh(&format!("ip netns exec {} sysctl -q -w net.ipv4.tcp_syn_retries=1", lab.a));
    let serve = |conns: &str| lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", &port, "--conns", conns]);
    let early = older.then(|| serve("1"));
    let stats = support::BpfRunStats::enable();
    let agent = Agent::start(&lab, extra);
    let server = early.unwrap_or_else(|| {
        let first = serve("1");
        let c = lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", &port, "--conns", "1"]).result();
        assert_eq!(c["ok"], 1, "client before: {c}");
        first.result();
        serve("1")
    });
    let nb0 = lab.nstat(&lab.b);
    lab.nft_input_rule(&lab.a, "synack", "tcp flags & (syn|ack) == syn|ack drop");
    let started = clock();
    let client =
        lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", &port, "--conns", "2", "--parallel"]).result();
    let requests_gone = || support::sh(&format!("ip netns exec {} ss -Htn state syn-recv", lab.b)).trim().is_empty();
    assert!(wait_until(20, requests_gone), "the requests must expire ({tag})");
    let nb1 = lab.nstat(&lab.b);
    let (runs, skipped) = support::prog_runs(agent.pid(), "flow_synack_retrans");
    drop(stats);
    let (reports, log) = agent.stop_reports_with_log();
    drop(server);
    assert_synack_hook(&log, extra);
    assert_eq!(client["errors"]["ETIMEDOUT"], 2, "{client}");
    let s = totals(&reports, flow(lab.b4, lab.a4, port_n, Role::Server));
    let kernel = delta(&nb0, &nb1, "TcpRetransSegs");
    let synack = SynackRuns { retransmitted: delta(&nb0, &nb1, "TcpExtTCPSynRetrans"), runs, skipped };
    eprintln!(
        "{tag}: SYN-ACK retransmissions {} (kernel {kernel}), client started {started}; {synack:?}",
        s.retransmissions
    );
    eprint!("{}", support::window_view(&reports, flow(lab.b4, lab.a4, port_n, Role::Server)));
    if s.retransmissions != kernel {
        eprintln!("the agent's log:\n{log}");
    }
    assert!(kernel >= 2, "the server must have retransmitted SYN-ACKs ({tag})");
    // The first listener's one connection, when there was one.
    let first = if older { 0 } else { 1 };
    assert_eq!(s.established, first, "{tag}");
    assert_eq!(recovered(&reports), 0, "no handshake completed to recover from ({tag})");
    synack.assert_counted_every_run(s.retransmissions, 0, tag);
    Unanswered { agent: s.retransmissions, kernel, synack, log }
}

/// The same while BPF map system calls hold every CPU (as the agent's own map reads do, or any
/// other BPF user's): the SYN-ACK program is a BTF tracepoint, which the kernel does not skip
/// then (the classic tracepoint it replaced missed a SYN-ACK timer that fired in such a moment).
#[test]
fn handshake_retransmissions_are_exact_while_bpf_system_calls_hold_the_cpus() {
    let Some(_g) = privileged("handshake_retransmissions_are_exact_while_bpf_system_calls_hold_the_cpus") else {
        return;
    };
    assert_exact(&lost_synacks(false, &[], true, Listen::Once));
}

/// The same without connection records. (With them, the default, a client the walk found
/// connecting, its attempt counted, has its establishment and close in the rings of two CPUs,
/// read in whatever order.)
#[test]
fn handshake_retransmissions_are_exact_while_bpf_system_calls_hold_the_cpus_without_connection_records() {
    let Some(_g) = privileged(
        "handshake_retransmissions_are_exact_while_bpf_system_calls_hold_the_cpus_without_connection_records",
    ) else {
        return;
    };
    assert_exact(&lost_synacks(false, NO_RECORDS, true, Listen::Once));
}

/// With the classic tracepoint (`--synack-hook tracepoint`, the fallback), the same load makes
/// the kernel skip SYN-ACK runs: they are reported as missed runs, never silent, and as the
/// handshakes complete, the accepted sockets bring what the program missed, so the count is
/// still the kernel's. (It also shows that the load does what the test above guards against,
/// and that what the kernel does not run the BTF program for is recovered the same way.)
#[test]
fn skipped_synack_runs_are_reported_and_recovered_from_the_accepted_sockets() {
    let Some(_g) = privileged("skipped_synack_runs_are_reported_and_recovered_from_the_accepted_sockets") else {
        return;
    };
    skipped_synack_runs_recovered(&[]);
}

/// The same with sockets folded by callbacks (no walk): the accepted socket's state starts
/// from what the program counted.
#[test]
fn skipped_synack_runs_are_recovered_from_sockets_folded_by_callbacks() {
    let Some(_g) = privileged("skipped_synack_runs_are_recovered_from_sockets_folded_by_callbacks") else {
        return;
    };
    skipped_synack_runs_recovered(&["--fold-mode", "callbacks"]);
}

fn skipped_synack_runs_recovered(extra: &[&str]) {
    let args = [&["--synack-hook", "tracepoint"], extra].concat();
    // The load makes a skip likely, not certain: a SYN-ACK timer may fire between two of its
    // system calls (seen once in CI: 6 of 6 counted).
    let h = in_three_attempts(
        "the load makes the classic tracepoint skip runs",
        || lost_synacks(false, &args, true, Listen::Once),
        |h| h.synack.skipped > 0,
    );
    // What the program ran for is counted (`lost_synacks`), the rest recovered: all of it.
    assert_eq!(h.b.retransmissions, h.kernel_b, "{:?}, recovered {}", h.synack, h.recovered);
    assert!(h.recovered >= h.synack.skipped, "the skipped runs are recovered: {} of {:?}", h.recovered, h.synack);
    assert!(h.missed_runs >= h.synack.skipped, "the skipped runs are reported: {} of {:?}", h.missed_runs, h.synack);
    assert_eq!((h.a.retransmissions, h.a.timeouts), h.kernel_a, "the connecting side has no tracepoint");
}

/// A refused connect and a connect whose SYNs time out are failed attempts on the right flow.
#[test]
fn refused_and_syn_timeouts_are_failed_connections() {
    let Some(_g) = privileged("refused_and_syn_timeouts_are_failed_connections") else { return };
    refused_and_syn_timeouts_are_failed_connections_with(&[]);
}

#[test]
fn refused_and_syn_timeouts_are_failed_connections_without_connection_records() {
    let Some(_g) = privileged("refused_and_syn_timeouts_are_failed_connections_without_connection_records") else {
        return;
    };
    refused_and_syn_timeouts_are_failed_connections_with(NO_RECORDS);
}

fn refused_and_syn_timeouts_are_failed_connections_with(extra: &[&str]) {
    let lab = Lab::new();
    support::sh(&format!("ip netns exec {} sysctl -q -w net.ipv4.tcp_syn_retries=1", lab.a));
    lab.nft_input_rule(&lab.b, "bh", "tcp dport 5003 drop");
    let agent = Agent::start(&lab, extra);
    let na0 = lab.nstat(&lab.a);
    let refused = lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5002", "--conns", "3"]).result();
    let timed_out = lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5003", "--conns", "1"]).result();
    let na1 = lab.nstat(&lab.a);
    let reports = agent.stop();
    assert_eq!(refused["errors"]["ECONNREFUSED"], 3, "{refused}");
    assert_eq!(timed_out["errors"]["ETIMEDOUT"], 1, "{timed_out}");

    let r = totals(&reports, flow(lab.a4, lab.b4, 5002, Role::Client));
    assert_eq!((r.attempted, r.established, r.failed, r.refused, r.timed_out), (3, 0, 3, 3, 0), "{r:?}");
    let t = totals(&reports, flow(lab.a4, lab.b4, 5003, Role::Client));
    assert_eq!((t.attempted, t.established, t.failed, t.refused, t.timed_out), (1, 0, 1, 0, 1), "{t:?}");
    // The attempt is in the window of its connect, seconds before its failure: the walk found
    // the socket connecting at that window's end (its connect made no flow update).
    // Each window's view of the flow, for a failure to show when each count came.
    for r in &reports {
        let f = r.flows.iter().find(|f| flow(lab.a4, lab.b4, 5003, Role::Client)(f));
        eprintln!("window {:?}-{:?}: {:?}", r.window.start, r.window.end, f.map(|f| &f.metrics.connections));
    }
    let first = reports.iter().flat_map(|r| &r.flows).find(|f| flow(lab.a4, lab.b4, 5003, Role::Client)(f));
    let c = &first.expect("the 5003 flow").metrics.connections;
    assert_eq!((c.attempted, c.failed), (1, 0), "the first window of the SYN-timed-out connection: {c:?}");
    // SYN retransmissions until the timer gave up (one more timeout than retransmissions), as
    // the kernel counted them.
    assert_eq!(t.retransmissions, delta(&na0, &na1, "TcpRetransSegs"));
    assert_eq!(t.timeouts, delta(&na0, &na1, "TcpExtTCPTimeouts"));
    assert!(t.retransmissions >= 1 && t.timeouts == t.retransmissions + 1, "{t:?}");
    assert_eq!(r.attempted + t.attempted, delta(&na0, &na1, "TcpActiveOpens"));
    assert_eq!(r.failed + t.failed, delta(&na0, &na1, "TcpAttemptFails"));
}

/// The agent's threads named `walk-netns`: one per walked namespace but its own.
fn walker_threads(agent: &Agent) -> usize {
    walked_namespaces(agent).len()
}

/// The network namespaces (inode numbers) the agent's `walk-netns` threads are in.
fn walked_namespaces(agent: &Agent) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap();
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == "walk-netns"))
        .filter_map(|t| std::fs::metadata(t.path().join("ns/net")).ok().map(|m| m.ino()))
        .collect()
}

/// The inode number of the named network namespace (`ip netns`).
fn netns_inode(name: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{name}")).unwrap().ino()
}

/// Wait up to `secs` for `done`.
fn wait_until(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done()
}

/// `--walk-netns-all`: two namespaces made after the agent started (as a node makes one per
/// pod) are found and walked: a request/response connection between them runs no per-segment
/// program, and its bytes are exact. Once they are deleted the agent leaves them (their walker
/// threads end), so it does not keep them alive.
#[test]
fn namespaces_made_after_start_are_walked_then_left_with_walk_netns_all() {
    let Some(_g) = privileged("namespaces_made_after_start_are_walked_then_left_with_walk_netns_all") else { return };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &["--walk-netns-all"]);
    assert!(wait_until(10, || walker_threads(&agent) >= 2), "the lab's two --walk-netns namespaces are walked");
    // Namespaces of other processes on the host (none in CI) are found too: count from what the
    // agent walks once its first looks are done.
    std::thread::sleep(Duration::from_secs(3));
    let before = walker_threads(&agent);
    let others = before - 2;
    let late = Lab::new();
    assert!(
        wait_until(10, || walker_threads(&agent) == before + 2),
        "the two new namespaces are walked within seconds: {} walkers, {before} before",
        walker_threads(&agent)
    );
    // The agent's own, the lab's two, the others, the two new ones (set at the tick after they
    // were found).
    assert!(
        wait_until(3, || agent.metric("flow_agent_walked_namespaces") == (before + 3) as f64),
        "walked_namespaces: {}, {before} walkers before",
        agent.metric("flow_agent_walked_namespaces")
    );
    // In the agent's cgroup (the first lab's), in the new namespaces.
    let client = pingpong_between(&lab, &late, 5009);
    drop(late);
    assert!(
        wait_until(15, || walker_threads(&agent) == before),
        "the deleted namespaces are left: {} walkers, {before} before",
        walker_threads(&agent)
    );
    assert!(wait_until(3, || agent.metric("flow_agent_walked_namespaces") == (before + 1) as f64));
    let (reports, log) = agent.stop_reports_with_log();
    assert_eq!(log.matches("walking a network namespace found").count(), 2 + others, "{log}");
    assert_eq!(log.matches("no longer walking a network namespace").count(), 2, "{log}");
    // The lab's namespaces share the host's table (made with tcp_child_ehash_entries 0): noted
    // once, at start, not again for the ones found later.
    let noted = log.matches("walked network namespaces share the host's TCP table").count();
    assert_eq!(noted, usize::from(host_table_worth_a_note()), "{log}");
    assert_walked_pingpong(&reports, &client, 5009);
}

/// A request/response connection of 3 s from `ns.a` to `ns.b` on `port`, in `lab`'s cgroup (the
/// agent's): what the client did.
fn pingpong_between(lab: &Lab, ns: &Lab, port: u16) -> Value {
    let port = port.to_string();
    let server = lab.traffic(&ns.b, &["serve", "--addr", ns.b4, "--port", &port, "--conns", "1", "--echo"]);
    let client =
        lab.traffic(&ns.a, &["pingpong", "--addr", ns.b4, "--port", &port, "--secs", "3", "--interval-ms", "10"]);
    let client = client.result();
    server.result();
    client
}

/// The connection of `pingpong_between` was walked: its requests ran no per-segment program,
/// and both ends' bytes are those the client sent.
fn assert_walked_pingpong(reports: &[Report], client: &Value, port: u16) {
    let c = totals(reports, flow("10.77.0.1", "10.77.0.2", port, Role::Client));
    let s = totals(reports, flow("10.77.0.2", "10.77.0.1", port, Role::Server));
    let rounds = client["rounds"].as_u64().unwrap();
    let events: u64 = reports.iter().map(|r| r.agent_stats.events).sum();
    eprintln!("{rounds} rounds, {events} program invocations did work");
    assert!(rounds >= 100, "{rounds} rounds");
    // Per-segment callbacks would do work at every round (an RTT sample per request at least).
    assert!(events < 60, "{events} program invocations for {rounds} requests: the sockets ran callbacks");
    assert_eq!(c.bytes_sent, client["sent"].as_u64().unwrap());
    assert_eq!(s.bytes_received, client["sent"].as_u64().unwrap());
    assert_eq!((c.established, s.established), (1, 1));
}

/// `--walk-netns-all` with `--max-walked-netns` full: namespaces found then are refused (their
/// sockets fold from per-segment callbacks), and once walked ones are left, as many of the
/// refused ones are offered again and walked (before, a refused namespace was never offered again
/// while it lasted, and its sockets ran a program per segment for their life). A connection there
/// then runs no per-segment program, and its bytes are exact.
#[test]
fn namespaces_refused_for_lack_of_room_are_walked_once_room_frees() {
    let Some(_g) = privileged("namespaces_refused_for_lack_of_room_are_walked_once_room_frees") else { return };
    let lab = Lab::new();
    let spare = Lab::new();
    // How many namespaces the finder walks now (the lab's, the spare two, any others of the host):
    // the next run has room for those and its own, no more.
    let count = Agent::start_unwalked(&lab, &["--walk-netns-all"]);
    assert!(wait_until(10, || walker_threads(&count) >= 4), "the four namespaces are walked");
    std::thread::sleep(Duration::from_secs(3));
    let found = walker_threads(&count);
    count.stop();
    let max = (found + 1).to_string();
    let agent = Agent::start_unwalked(&lab, &["--walk-netns-all", "--max-walked-netns", &max]);
    assert!(wait_until(10, || walker_threads(&agent) == found), "{} walkers, {found} before", walker_threads(&agent));
    let late = Lab::new();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(walker_threads(&agent), found, "the late namespaces are refused: no room");
    assert!(!walked_namespaces(&agent).contains(&netns_inode(&late.a)));
    drop(spare);
    let late_inodes = [netns_inode(&late.a), netns_inode(&late.b)];
    assert!(
        wait_until(15, || {
            let walked = walked_namespaces(&agent);
            walked.len() == found && late_inodes.iter().all(|i| walked.contains(i))
        }),
        "the late namespaces take the spare ones' room: {} walkers, {found} before",
        walker_threads(&agent)
    );
    assert!(wait_until(3, || agent.metric("flow_agent_walked_namespaces") == (found + 1) as f64));
    let client = pingpong_between(&lab, &late, 5020);
    let (reports, log) = agent.stop_reports_with_log();
    let refusals = log.matches("network namespaces are walked already (--max-walked-netns)").count();
    assert_eq!(refusals, 2, "{log}");
    let late_walked = [&late.a, &late.b]
        .iter()
        .filter(|ns| {
            log.contains(&format!("walking a network namespace found (--walk-netns-all) netns=/run/netns/{ns}"))
        })
        .count();
    assert_eq!(late_walked, 2, "{log}");
    assert_eq!(log.matches("no longer walking a network namespace").count(), 2, "{log}");
    eprintln!("{found} namespaces found");
    assert_walked_pingpong(&reports, &client, 5020);
}

/// `flow-agent ARGS` on `cgroup`, with a control socket and metrics address of its own: its exit
/// status and log if it ends within `secs`, else None (it is then killed).
fn agent_exits_within(cgroup: &std::path::Path, args: &[&str], secs: u64) -> Option<(bool, String)> {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_flow-agent"))
        .args(args)
        .args(["--dry-run", "--metrics-address", "127.0.0.1:0", "--cgroup"])
        .arg(cgroup)
        .arg("--control-socket")
        .arg(dir.path().join("control.sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(secs, || child.try_wait().unwrap().is_some());
    if !ended {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    ended.then(|| (out.status.success(), support::strip_ansi(&String::from_utf8_lossy(&out.stderr))))
}

/// A second agent on sockets another one already runs for (the same cgroup, or one inside it) is
/// refused before it touches a socket, with an error naming the running one: the two would share
/// each socket's callback flags. Here the second is in callback mode, whose walk at start hands
/// the first's walked connections to per-segment callbacks (before, it ran: the first's
/// connection then ran a program per request, 514 invocations with work for 387 requests when the
/// second runs on a sibling cgroup, which is not detected). `check` reports the running agent
/// instead of attaching beside it. Once the first has stopped, the second starts.
#[test]
fn a_second_agent_on_the_same_sockets_is_refused_before_it_touches_them() {
    let Some(_g) = privileged("a_second_agent_on_the_same_sockets_is_refused_before_it_touches_them") else { return };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &[]);
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5021", "--conns", "1", "--echo"]);
    let client =
        lab.traffic(&lab.a, &["pingpong", "--addr", lab.b4, "--port", "5021", "--secs", "4", "--interval-ms", "10"]);
    std::thread::sleep(Duration::from_millis(1500));
    let running = format!("held by pid {}", agent.pid());
    let inner = lab.cgroup.join("inner");
    std::fs::create_dir(&inner).unwrap();
    for cgroup in [&lab.cgroup, &inner] {
        let refused = agent_exits_within(cgroup, CALLBACKS, 10);
        let Some((ok, log)) = refused else { panic!("a second agent on {} ran", cgroup.display()) };
        assert!(!ok, "{log}");
        let error = format!("another flow-agent already runs for the sockets of cgroup {}", cgroup.display());
        assert!(log.contains(&error) && log.contains(&running), "{log}");
    }
    std::fs::remove_dir(&inner).unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_flow-agent"))
        .args(["check", "--cgroup"])
        .arg(&lab.cgroup)
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout);
    let attach = check.lines().find(|l| l.contains("sock_ops attach")).unwrap_or_default();
    assert!(
        attach.starts_with("OK") && attach.contains("another flow-agent already runs") && attach.contains(&running),
        "{check}"
    );
    let client = client.result();
    server.result();
    let reports = agent.stop();
    let c = totals(&reports, flow(lab.a4, lab.b4, 5021, Role::Client));
    let s = totals(&reports, flow(lab.b4, lab.a4, 5021, Role::Server));
    let rounds = client["rounds"].as_u64().unwrap();
    let events: u64 = reports.iter().map(|r| r.agent_stats.events).sum();
    eprintln!("{rounds} rounds, {events} program invocations did work");
    assert!(rounds >= 200, "{rounds} rounds");
    assert!(events < 60, "{events} program invocations for {rounds} requests: the sockets ran callbacks");
    assert_eq!((c.bytes_sent, s.bytes_received), (client["sent"].as_u64().unwrap(), client["sent"].as_u64().unwrap()));
    // Once it has stopped, the next one starts.
    Agent::start(&lab, CALLBACKS).stop();
}

/// Two agents on sibling cgroups that walk the same namespaces (as two agents of one host both
/// walk its own): each reports its own cgroup's connection, exactly, and nothing of the other's.
/// A walk folds sockets armed as walked, and the other agent's look the same; it now checks that
/// a socket's cgroup descends from its agent's before it takes one (`walk::in_agent_cgroup`).
#[test]
fn agents_on_sibling_cgroups_walking_the_same_namespaces_report_only_their_own_connections() {
    let Some(_g) =
        privileged("agents_on_sibling_cgroups_walking_the_same_namespaces_report_only_their_own_connections")
    else {
        return;
    };
    let lab = Lab::new();
    let mut name = lab.cgroup.file_name().unwrap().to_os_string();
    name.push("-sibling");
    let sibling = lab.cgroup.with_file_name(name);
    std::fs::create_dir(&sibling).unwrap();
    // The same namespaces, the sibling cgroup (dropped first: it removes that cgroup).
    let other =
        Lab { a: lab.a.clone(), b: lab.b.clone(), cgroup: sibling, a4: lab.a4, b4: lab.b4, a6: lab.a6, b6: lab.b6 };
    let ours = Agent::start(&lab, &[]);
    let theirs = Agent::start(&other, &[]);
    let serve =
        |l: &Lab, port: &str| l.traffic(&l.b, &["serve", "--addr", l.b4, "--port", port, "--conns", "1", "--echo"]);
    let (s1, s2) = (serve(&lab, "5022"), serve(&other, "5023"));
    let pingpong = |l: &Lab, port: &str| {
        l.traffic(&l.a, &["pingpong", "--addr", l.b4, "--port", port, "--secs", "4", "--interval-ms", "10"])
    };
    // Over 4 s, several window ends: each agent walks both connections' sockets.
    let (c1, c2) = (pingpong(&lab, "5022"), pingpong(&other, "5023"));
    let (c1, c2) = (c1.result(), c2.result());
    s1.result();
    s2.result();
    let (r1, r2) = (ours.stop(), theirs.stop());
    for (reports, own, foreign, client) in [(&r1, 5022, 5023, &c1), (&r2, 5023, 5022, &c2)] {
        let sent = client["sent"].as_u64().unwrap();
        let c = totals(reports, flow(lab.a4, lab.b4, own, Role::Client));
        let s = totals(reports, flow(lab.b4, lab.a4, own, Role::Server));
        assert!(client["rounds"].as_u64().unwrap() >= 200, "{client}");
        assert_eq!((c.bytes_sent, s.bytes_received, c.closed, s.closed), (sent, sent, 1, 1), "port {own}");
        let taken: Vec<String> = reports
            .iter()
            .flat_map(|r| r.flows.iter())
            .filter(|f| f.target_port == foreign)
            .map(|f| format!("{} -> {} {:?}: {} bytes sent", f.local_ip, f.remote_ip, f.role, f.metrics.bytes_sent))
            .collect();
        assert!(taken.is_empty(), "the agent of port {own} reported the other agent's connection: {taken:?}");
    }
}

/// Whether namespaces made now share a host TCP table big enough for the agent to note that each
/// walk scans it whole (`SHARED_TABLE_NOTED` in `capture/walk.rs`).
fn host_table_worth_a_note() -> bool {
    let read = |f: &str| -> i64 {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}")).unwrap().trim().parse().unwrap()
    };
    read("tcp_child_ehash_entries") == 0 && read("tcp_ehash_entries") >= 65_536
}

/// Sets the host's `net.ipv4.tcp_child_ehash_entries` while it lives; the old value back on drop.
struct ChildTables(String);

impl ChildTables {
    fn set(buckets: u32) -> ChildTables {
        let old = support::sh("sysctl -n net.ipv4.tcp_child_ehash_entries").trim().to_string();
        support::sh(&format!("sysctl -qw net.ipv4.tcp_child_ehash_entries={buckets}"));
        ChildTables(old)
    }
}

impl Drop for ChildTables {
    fn drop(&mut self) {
        support::sh(&format!("sysctl -qw net.ipv4.tcp_child_ehash_entries={}", self.0));
    }
}

/// Namespaces made with `net.ipv4.tcp_child_ehash_entries` set have TCP tables of their own,
/// which a walk scans in microseconds: the agent reads each walked namespace's, and notes only
/// shared ones (the other case is `namespaces_made_after_start_are_walked_then_left_with_walk_netns_all`).
/// Counts stay exact either way.
#[test]
fn namespaces_with_tcp_tables_of_their_own_are_not_noted() {
    let Some(_g) = privileged("namespaces_with_tcp_tables_of_their_own_are_not_noted") else { return };
    let lab = {
        let _tables = ChildTables::set(4096);
        Lab::new()
    };
    let table = support::sh(&format!("ip netns exec {} sysctl -n net.ipv4.tcp_ehash_entries", lab.a));
    assert_eq!(table.trim(), "4096", "the lab's namespace has a table of its own");
    let agent = Agent::start(&lab, &[]);
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5012", "--conns", "1", "--echo"]);
    let client =
        lab.traffic(&lab.a, &["pingpong", "--addr", lab.b4, "--port", "5012", "--secs", "2", "--interval-ms", "10"]);
    let client = client.result();
    server.result();
    let (reports, log) = agent.stop_reports_with_log();
    assert_eq!(log.matches("share the host's TCP table").count(), 0, "{log}");
    let c = totals(&reports, flow(lab.a4, lab.b4, 5012, Role::Client));
    assert_eq!(c.bytes_sent, client["sent"].as_u64().unwrap());
    assert_eq!(c.established, 1);
}

/// A connection opened in a namespace before the agent walks it (as a pod's first sockets may be,
/// before `--walk-netns-all` finds its namespace) folds from per-segment callbacks: a program run
/// per request. Once the namespace is found, the next walk hands the connection to the walk (its
/// callbacks become a walked socket's), and the rest of its requests run no program. Its bytes
/// stay exact across the change. traffic.py `hidden` makes such a namespace that nothing holds
/// (so the agent cannot find it), opens both ends there, runs requests for 3 s, then binds the
/// namespace to a file, which the agent finds within ~2 s, and runs 6 s more.
#[test]
fn sockets_opened_before_their_namespace_is_walked_are_handed_to_the_walk() {
    let Some(_g) = privileged("sockets_opened_before_their_namespace_is_walked_are_handed_to_the_walk") else { return };
    let lab = Lab::new();
    let agent = Agent::start(&lab, &["--walk-netns-all"]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/traffic.py");
    let bind = format!("/run/netns/ftadopt{}", std::process::id());
    // In the test cgroup, not under `ip netns exec`: the bind mount has to be in the agent's
    // mount namespace.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(r#"mkdir -p /run/netns && echo $$ > "$CG/cgroup.procs" && exec python3 "$@""#)
        .arg("bash")
        .arg(&script)
        .args(["hidden", "--port", "5013", "--secs", "3", "--after", "6", "--interval-ms", "10", "--bind", &bind])
        .env("CG", &lab.cgroup)
        .output()
        .unwrap();
    assert!(out.status.success(), "traffic.py hidden: {}", String::from_utf8_lossy(&out.stderr));
    let moved: Value = serde_json::from_slice(&out.stdout).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (reports, log) = agent.stop_reports_with_log();
    assert!(log.contains(&format!("walking a network namespace found (--walk-netns-all) netns={bind}")), "{log}");
    let sent = moved["sent"].as_u64().unwrap();
    let rounds: Vec<u64> = moved["rounds"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
    let client = flow("127.0.0.1", "127.0.0.1", 5013, Role::Client);
    let server = flow("127.0.0.1", "127.0.0.1", 5013, Role::Server);
    let (c, s) = (totals(&reports, &client), totals(&reports, &server));
    assert_eq!((c.bytes_sent, c.bytes_received, s.bytes_received, s.bytes_sent), (sent, sent, sent, sent));
    assert_eq!((c.established, s.established), (1, 1));
    // Program invocations that did work, per 1-s window with traffic on the connection.
    let busy: Vec<u64> = reports
        .iter()
        .filter(|r| totals(std::slice::from_ref(r), &client).bytes_sent > 0)
        .map(|r| r.agent_stats.events)
        .collect();
    eprintln!("rounds {rounds:?}; program invocations that did work, per window with traffic: {busy:?}");
    assert!(rounds.iter().all(|&n| n >= 100), "{rounds:?}");
    // Before the namespace is found: the RTT callbacks of both ends, about one per request each.
    let first = busy[1];
    assert!(first >= rounds[0] / 8, "per-segment callbacks before: {busy:?}");
    // The last whole windows of the second phase: the walk's folds only.
    let n = busy.len();
    assert!(n >= 6, "{busy:?}");
    assert!(busy[n - 3..n - 1].iter().all(|&e| e <= 6), "handed to the walk, no program per request: {busy:?}");
}

/// A connection still open when the agent restarts: the earlier run counted it up to its last
/// fold (at its shutdown); the next one stores it with what it did so far as folded and counts it
/// from then on, so nothing is counted twice. What the connection moved between the two runs is
/// counted by neither: at most the next run's start-up, well under 2 s of the ~100 requests per
/// second. The next run reports the close of both ends, not their establishment (the earlier
/// run's), each end under its role. Returns the next run's reports and the client's rounds.
fn open_across_a_restart(earlier: &[&str], next: &[&str], port: u16) -> (Vec<Report>, u64) {
    open_across_a_restart_with(earlier, |lab| Agent::start(lab, next), port)
}

/// `open_across_a_restart`, the next run started by `next`.
fn open_across_a_restart_with(earlier: &[&str], next: impl FnOnce(&Lab) -> Agent, port: u16) -> (Vec<Report>, u64) {
    let lab = Lab::new();
    let earlier = Agent::start(&lab, earlier);
    let p = port.to_string();
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", &p, "--conns", "1", "--echo"]);
    let client =
        lab.traffic(&lab.a, &["pingpong", "--addr", lab.b4, "--port", &p, "--secs", "6", "--interval-ms", "10"]);
    std::thread::sleep(Duration::from_secs(2));
    let before = earlier.stop();
    let agent = next(&lab);
    let client = client.result();
    server.result();
    let after = agent.stop();
    let (sent, rounds) = (client["sent"].as_u64().unwrap(), client["rounds"].as_u64().unwrap());
    let per_sec = sent / 6;
    let untracked: u64 = after.iter().map(|r| r.agent_stats.untracked_events).sum();
    for role in [Role::Client, Role::Server] {
        let key =
            if role == Role::Client { flow(lab.a4, lab.b4, port, role) } else { flow(lab.b4, lab.a4, port, role) };
        let (a, b) = (totals(&before, &key), totals(&after, &key));
        // What the client sent: the client's bytes sent, the server's received.
        let (a_n, b_n) =
            if role == Role::Client { (a.bytes_sent, b.bytes_sent) } else { (a.bytes_received, b.bytes_received) };
        eprintln!("{role:?}: sent {sent} in {rounds} rounds; earlier run {a_n} bytes, next run {b_n}");
        assert_eq!((a.established, a.closed), (1, 0), "{role:?}");
        assert_eq!((b.established, b.closed), (0, 1), "{role:?}: the next run reports the close only");
        assert!(b_n > 0, "{role:?}: the next run counts the connection");
        assert!(a_n + b_n <= sent, "{role:?}: counted twice: {a_n} + {b_n} > {sent}");
        assert!(a_n + b_n + 2 * per_sec >= sent, "{role:?}: {a_n} + {b_n} of {sent}");
    }
    assert_eq!(untracked, 0, "every end tracked by the next run");
    (after, rounds)
}

#[test]
fn walked_connections_open_across_a_restart_are_not_counted_twice() {
    let Some(_g) = privileged("walked_connections_open_across_a_restart_are_not_counted_twice") else { return };
    open_across_a_restart(&[], &[], 5015);
}

/// The same without connection records, in both runs. (With them, the default, the entries the
/// walk at start stores reach the daemon through the walk's output.)
#[test]
fn walked_connections_open_across_a_restart_are_not_counted_twice_without_connection_records() {
    let Some(_g) =
        privileged("walked_connections_open_across_a_restart_are_not_counted_twice_without_connection_records")
    else {
        return;
    };
    open_across_a_restart(NO_RECORDS, NO_RECORDS, 5025);
}

/// The earlier run walked the connection, the next one folds by callbacks and makes no walk but
/// the one at start, which stores each end with what it did so far as folded and hands it to
/// callbacks (before, the close counted each end whole again: ~6 s of requests, where the sum may
/// hold at most the 6 s sent). From there on the next run folds it at every RTT sample.
#[test]
fn walked_connections_open_across_a_restart_into_callback_mode_are_not_counted_twice() {
    let Some(_g) = privileged("walked_connections_open_across_a_restart_into_callback_mode_are_not_counted_twice")
    else {
        return;
    };
    let (after, rounds) = open_across_a_restart(&[], CALLBACKS, 5017);
    assert_handed_to_callbacks(&after, rounds);
}

/// The next run of `open_across_a_restart` (`after`, the client's `rounds`) folded the connection
/// by callbacks: it has ~4 of the 6 s of requests, an RTT callback per request and end.
fn assert_handed_to_callbacks(after: &[Report], rounds: u64) {
    let events: u64 = after.iter().map(|r| r.agent_stats.events).sum();
    eprintln!("{rounds} rounds; the next run: {events} program invocations that did work");
    assert!(rounds >= 300, "{rounds}");
    assert!(events >= rounds / 2, "handed to callbacks: {events} program invocations did work in {rounds} rounds");
}

/// The earlier run walked the connection's namespaces, the next one does not: it neither walks
/// nor names them. Its walk at start visits every namespace of the host, those it does not walk
/// with the kind that hands walked sockets to callbacks, so each end is stored with what it did
/// so far as folded and folded from then on at every RTT sample (before, the next run did not
/// visit them and their close counted each end whole again).
#[test]
fn walked_connections_open_across_a_restart_that_no_longer_walks_their_namespaces_are_not_counted_twice() {
    let Some(_g) = privileged(
        "walked_connections_open_across_a_restart_that_no_longer_walks_their_namespaces_are_not_counted_twice",
    ) else {
        return;
    };
    let (after, rounds) = open_across_a_restart_with(&[], |lab| Agent::start_unwalked(lab, &[]), 5018);
    assert_handed_to_callbacks(&after, rounds);
}

/// As above, with the next run finding the lab's namespaces (`--walk-netns-all`) but refusing
/// them: `--max-walked-netns 1` leaves room for its own namespace only, as a node with more pods
/// than the setting would for some. Refused namespaces are visited by the walk at start too
/// (before, they were left out with the walked ones, and their close counted each end whole
/// again).
#[test]
fn walked_connections_open_across_a_restart_whose_namespaces_no_longer_fit_are_not_counted_twice() {
    let Some(_g) =
        privileged("walked_connections_open_across_a_restart_whose_namespaces_no_longer_fit_are_not_counted_twice")
    else {
        return;
    };
    let next = |lab: &Lab| Agent::start_unwalked(lab, &["--walk-netns-all", "--max-walked-netns", "1"]);
    let (after, rounds) = open_across_a_restart_with(&[], next, 5019);
    assert_handed_to_callbacks(&after, rounds);
}

/// The earlier run folded the connection by callbacks (its namespace was not walked): its role
/// is in the socket's callback flags (`cb::SERVER`). In a namespace the next run walks, the walk
/// made at start hands it to the walk, so the rest of its requests run no program (before, its
/// callbacks were switched off and it was not counted: 2 untracked events).
#[test]
fn connections_folded_by_callbacks_open_across_a_restart_are_handed_to_the_walk() {
    let Some(_g) = privileged("connections_folded_by_callbacks_open_across_a_restart_are_handed_to_the_walk") else {
        return;
    };
    let (after, rounds) = open_across_a_restart(CALLBACKS, &[], 5014);
    let events: u64 = after.iter().map(|r| r.agent_stats.events).sum();
    eprintln!("{rounds} rounds; the next run: {events} program invocations that did work");
    assert!(rounds >= 300, "{rounds}");
    // The hand-over, a fold per end and window, the closes: not one per request.
    assert!(events <= rounds / 10, "{events} program invocations did work in {rounds} rounds");
}

/// As above, with the next run folding by callbacks too: each end is stored at its first
/// callback (before, its callbacks were switched off and it was not counted).
#[test]
fn connections_folded_by_callbacks_open_across_a_restart_are_counted_from_their_first_callback() {
    let Some(_g) =
        privileged("connections_folded_by_callbacks_open_across_a_restart_are_counted_from_their_first_callback")
    else {
        return;
    };
    open_across_a_restart(CALLBACKS, CALLBACKS, 5016);
}

/// RTT of a long-lived request/response connection agrees with the kernel's smoothed RTT as
/// `ss -ti` shows it: within 50% or 150 us, whichever is larger (veth RTTs are tens of
/// microseconds, where scheduling noise dominates). Walk mode takes the socket's smoothed RTT at
/// every window with traffic; callback mode every RTT measurement.
fn rtt_agrees_with_ss(mode: &[&str]) {
    let lab = Lab::new();
    let agent = Agent::start(&lab, mode);
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5004", "--conns", "1", "--echo"]);
    let client =
        lab.traffic(&lab.a, &["pingpong", "--addr", lab.b4, "--port", "5004", "--secs", "4", "--interval-ms", "10"]);
    let mut ss_rtts = Vec::new();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        let out = support::sh(&format!("ip netns exec {} ss -Htin dst {}:5004", lab.a, lab.b4));
        if let Some(v) = out.split_whitespace().find_map(|w| w.strip_prefix("rtt:")) {
            ss_rtts.push(v.split('/').next().unwrap().parse::<f64>().unwrap() * 1000.0);
        }
    }
    let client = client.result();
    server.result();
    let reports = agent.stop();
    assert!(ss_rtts.len() >= 3, "ss showed the connection: {ss_rtts:?}");
    let ss = ss_rtts.iter().sum::<f64>() / ss_rtts.len() as f64;
    let c = totals(&reports, flow(lab.a4, lab.b4, 5004, Role::Client));
    let rounds = client["rounds"].as_u64().unwrap();
    eprintln!(
        "agent rtt mean {:.1} us over {} samples; ss srtt {:.1} us; {} rounds",
        c.rtt_mean(),
        c.rtt_count,
        ss,
        rounds
    );
    // Program invocations that did work, over the whole run (both ends, every callback).
    let events: u64 = reports.iter().map(|r| r.agent_stats.events).sum();
    eprintln!("{events} program invocations did work");
    if mode == CALLBACKS {
        assert!(c.rtt_count >= rounds / 2, "one RTT sample per acknowledged request: {} of {rounds}", c.rtt_count);
        assert!(events >= rounds, "an RTT callback per request at least: {events} for {rounds} rounds");
    } else {
        // Four seconds of traffic in 1-second windows: one sample per window with traffic.
        assert!((3..=8).contains(&c.rtt_count), "one RTT sample per window with traffic: {}", c.rtt_count);
        // Walked sockets run no program per segment: connect, establishment, state changes and
        // a walk per window, however many requests.
        assert!(events < 60, "{events} program invocations for {rounds} requests: walked sockets ran callbacks");
    }
    let tolerance = (ss * 0.5).max(150.0);
    assert!(
        (c.rtt_mean() - ss).abs() <= tolerance,
        "agent {:.1} us vs ss {ss:.1} us (tolerance {tolerance:.1})",
        c.rtt_mean()
    );
    assert_eq!(c.bytes_sent, client["sent"].as_u64().unwrap());
}

#[test]
fn rtt_agrees_with_ss_in_walk_mode() {
    let Some(_g) = privileged("rtt_agrees_with_ss_in_walk_mode") else { return };
    rtt_agrees_with_ss(&[]);
}

#[test]
fn rtt_agrees_with_ss_in_callback_mode() {
    let Some(_g) = privileged("rtt_agrees_with_ss_in_callback_mode") else { return };
    rtt_agrees_with_ss(CALLBACKS);
}

/// Ten concurrent connections (20 sockets) held open for `hold_s` once each client has sent its
/// 10 bytes (so that both ends have moved payload while held), with a socket map of 4 entries;
/// then two more connections. Returns the reports, what the ten moved (client side) and what
/// the two did.
fn ten_held_connections_four_slots(lab: &Lab, mode: &[&str], hold_s: &str) -> (Vec<Report>, Value, Value) {
    let agent = Agent::start(lab, &[mode, &["--max-sockets", "4"]].concat());
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5005", "--conns", "10", "--reply", "10"]);
    let args = [
        "connect",
        "--addr",
        lab.b4,
        "--port",
        "5005",
        "--conns",
        "10",
        "--parallel",
        "--send-first",
        "--hold",
        hold_s,
    ];
    let client = lab.traffic(&lab.a, &[&args[..], &["--send", "10"]].concat()).result();
    server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    // After the storm: two connections.
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5006", "--conns", "2", "--reply", "777"]);
    let after = lab
        .traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5006", "--conns", "2", "--send", "1234"])
        .result();
    server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    assert_eq!(client["ok"], 10);
    (reports, client, after)
}

/// Folded by callbacks, with a socket map of 4 entries, 10 concurrent connections (20 sockets)
/// overflow it by exactly 16; the agent keeps running and counts later connections whole.
#[test]
fn full_socket_map_is_counted_exactly_and_capture_goes_on() {
    let Some(_g) = privileged("full_socket_map_is_counted_exactly_and_capture_goes_on") else { return };
    let lab = Lab::new();
    let (reports, _, after) = ten_held_connections_four_slots(&lab, CALLBACKS, "1");
    let full: u64 = reports.iter().map(|r| r.agent_stats.map_full.sockets).sum();
    let untracked: u64 = reports.iter().map(|r| r.agent_stats.untracked_events).sum();
    assert_eq!(full, 16, "20 sockets, 4 slots");
    assert!(untracked > 0);
    let c = totals(&reports, flow(lab.a4, lab.b4, 5006, Role::Client));
    assert_eq!((c.attempted, c.established, c.closed), (2, 2, 2));
    assert_eq!(
        (c.bytes_sent, c.bytes_received),
        (after["sent"].as_u64().unwrap(), after["received"].as_u64().unwrap())
    );
    assert!(reports.len() >= 3, "reports kept coming: {}", reports.len());
}

/// In a walked namespace a socket needs room only once the walk folds it: with 4 sockets' room
/// (`--max-sockets 4`) for 20 sockets held open across walks, the walk counts every socket it
/// could not keep (16 per walk that saw them move), and those are folded whole at their close:
/// nothing is lost, on either side. With connection records (the default) the room is the
/// daemon's (the sockets it holds), without it is SOCKETS.
#[test]
fn full_socket_map_loses_nothing_in_a_walked_namespace() {
    let Some(_g) = privileged("full_socket_map_loses_nothing_in_a_walked_namespace") else { return };
    full_socket_map_loses_nothing_in_a_walked_namespace_with(&[]);
}

#[test]
fn full_socket_map_loses_nothing_in_a_walked_namespace_without_connection_records() {
    let Some(_g) = privileged("full_socket_map_loses_nothing_in_a_walked_namespace_without_connection_records") else {
        return;
    };
    full_socket_map_loses_nothing_in_a_walked_namespace_with(NO_RECORDS);
}

fn full_socket_map_loses_nothing_in_a_walked_namespace_with(mode: &[&str]) {
    let lab = Lab::new();
    let (reports, client, after) = ten_held_connections_four_slots(&lab, mode, "2");
    let full: u64 = reports.iter().map(|r| r.agent_stats.map_full.sockets).sum();
    let untracked: u64 = reports.iter().map(|r| r.agent_stats.untracked_events).sum();
    assert!(full >= 16, "at least one walk while the 20 sockets were open: {full}");
    assert_eq!(untracked, 0);
    let c = totals(&reports, flow(lab.a4, lab.b4, 5005, Role::Client));
    let s = totals(&reports, flow(lab.b4, lab.a4, 5005, Role::Server));
    assert_eq!((c.attempted, c.established, c.closed, c.failed), (10, 10, 10, 0), "{c:?}");
    assert_eq!((s.attempted, s.established, s.closed, s.failed), (10, 10, 10, 0), "{s:?}");
    assert_eq!((c.bytes_sent, c.bytes_received), (100, 100), "{c:?}");
    assert_eq!((c.bytes_sent, c.bytes_received), (s.bytes_received, s.bytes_sent));
    assert_eq!(client["sent"], 100);
    let a = totals(&reports, flow(lab.a4, lab.b4, 5006, Role::Client));
    assert_eq!(
        (a.attempted, a.established, a.closed, a.bytes_sent, a.bytes_received),
        (2, 2, 2, after["sent"].as_u64().unwrap(), after["received"].as_u64().unwrap())
    );
    // Every socket's tracking ended: none left open.
    let last = reports.last().unwrap();
    assert_eq!(last.agent_stats.sockets_tracked, 0, "{:?}", last.agent_stats);
}

/// With a flow map of 2 entries, connections to three ports need six keys: the four sockets whose
/// flow could not be inserted are each counted once.
#[test]
fn full_flow_map_is_counted_exactly() {
    let Some(_g) = privileged("full_flow_map_is_counted_exactly") else { return };
    full_flow_map_is_counted_exactly_with(&[]);
}

#[test]
fn full_flow_map_is_counted_exactly_without_connection_records() {
    let Some(_g) = privileged("full_flow_map_is_counted_exactly_without_connection_records") else {
        return;
    };
    full_flow_map_is_counted_exactly_with(NO_RECORDS);
}

fn full_flow_map_is_counted_exactly_with(extra: &[&str]) {
    let lab = Lab::new();
    let agent = Agent::start(&lab, &[&["--max-flows", "2"], extra].concat());
    for port in ["5011", "5012", "5013"] {
        let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", port, "--conns", "1", "--reply", "5"]);
        lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", port, "--conns", "1", "--send", "5"]).result();
        server.result();
    }
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    let full: u64 = reports.iter().map(|r| r.agent_stats.map_full.flows).sum();
    assert_eq!(full, 4);
    let first = totals(&reports, flow(lab.a4, lab.b4, 5011, Role::Client));
    assert_eq!((first.attempted, first.bytes_sent), (1, 5));
    assert_eq!(totals(&reports, |f| f.target_port != 5011).attempted, 0);
}
