//! The watches against a Kubernetes API server on loopback (tests/support/kube_api.rs): initial
//! lists, watch events, bookmarks, 410 Gone re-lists and a server restart, through the real
//! client and the real enricher.

#[path = "../../../tests/support/kube_api.rs"]
mod kube_api;

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use agent_common::report::{FlowRecord, KubernetesMetadata, Report, Role};
use kube_api::{FakeApi, Kind, endpoint_slice, pod, service};

use super::{Kubernetes, store::Index};
use crate::{config::Config, enrich::Enricher};

const WAIT: Duration = Duration::from_secs(30);

fn start(api: &FakeApi, dir: &std::path::Path) -> Kubernetes {
    let cfg = Config::resolve(&crate::config::RunArgs {
        kubernetes: Some(true),
        kubeconfig: Some(api.kubeconfig(dir)),
        node_name: Some("lab-node".into()),
        ..Default::default()
    })
    .unwrap();
    Kubernetes::start(&cfg).unwrap().expect("enabled")
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn flow(local: &str, remote: &str, port: u16, role: Role) -> FlowRecord {
    let mut r: FlowRecord = serde_json::from_value(serde_json::json!({
        "protocol": "TCP", "local_ip": local, "remote_ip": remote, "target_port": port, "role": role,
        "connections": {"attempted": 1, "established": 1, "closed": 0, "failed": 0, "refused": 0,
                        "timed_out": 0, "reset": 0, "active": 1},
        "bytes_sent": 1, "bytes_received": 1, "segments_sent": 1, "segments_received": 1,
        "retransmissions": 0, "timeouts": 0,
        "rtt_us": {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0},
        "handshake_us": {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0}
    }))
    .unwrap();
    r.enrichment = Default::default();
    r
}

fn report(flows: Vec<FlowRecord>) -> Report {
    let mut report: Report = serde_json::from_value(serde_json::json!({
        "report_id": "r", "schema_version": 1,
        "window": {"start": "2026-11-22T10:00:00Z", "end": "2026-11-22T10:00:01Z"},
        "agent": {"version": "0", "hostname": "h"}, "flows": [],
        "other": {"flows": 0, "connections": {"attempted": 0, "established": 0, "closed": 0, "failed": 0,
                  "refused": 0, "timed_out": 0, "reset": 0, "active": 0},
                  "bytes_sent": 0, "bytes_received": 0, "segments_sent": 0, "segments_received": 0,
                  "retransmissions": 0, "timeouts": 0,
                  "rtt_us": {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0},
                  "handshake_us": {"count": 0, "min": 0, "max": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0}},
        "agent_stats": {"events": 0, "ringbuf_drops": 0, "map_full": {"sockets": 0, "flows": 0, "listeners": 0},
                        "untracked_events": 0, "flows_tracked": 0, "sockets_tracked": 0, "cpu_seconds": 0.0,
                        "rss_bytes": 0}
    }))
    .unwrap();
    report.flows = flows;
    report
}

fn enrich(k: &Kubernetes, flows: Vec<FlowRecord>) -> Vec<Option<KubernetesMetadata>> {
    let mut report = report(flows);
    k.enrich(&mut report);
    report.flows.into_iter().map(|f| f.enrichment.kubernetes).collect()
}

fn meta(fields: [Option<&str>; 6]) -> Option<KubernetesMetadata> {
    let s = |i: usize| fields[i].map(str::to_owned);
    Some(KubernetesMetadata {
        local_pod_name: s(0),
        local_pod_namespace: s(1),
        local_service_name: s(2),
        remote_pod_name: s(3),
        remote_pod_namespace: s(4),
        remote_service_name: s(5),
    })
}

fn seed(api: &FakeApi) {
    api.apply(Kind::Pods, pod("shop", "client-7d9f", "lab-node", &["10.77.0.1", "fd77::1"]));
    api.apply(Kind::Pods, pod("shop", "backend-5c6b", "lab-node", &["10.77.0.2", "fd77::2"]));
    api.apply(Kind::Pods, pod("db", "postgres-0", "other-node", &["10.78.0.9"]));
    api.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-x1", "backend", &["10.77.0.2"], 8080));
    api.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-x2", "backend", &["fd77::2"], 8080));
    api.apply(Kind::EndpointSlices, endpoint_slice("db", "postgres-a", "postgres", &["10.78.0.9"], 5432));
    api.apply(Kind::Services, service("shop", "backend", "172.20.0.10", 8080));
    api.apply(Kind::Services, service("db", "postgres-headless", "None", 5432));
}

fn lists(k: &Kubernetes) -> [u64; 3] {
    let s = &k.store;
    [&s.pods.stats.lists, &s.slices.stats.lists, &s.services.stats.lists].map(|c| c.load(Ordering::Relaxed))
}

fn sizes(k: &Kubernetes) -> [(usize, usize); 3] {
    let s = &k.store;
    let (p, e, v) = (s.pods.read(), s.slices.read(), s.services.read());
    [(p.len(), p.keys()), (e.len(), e.keys()), (v.len(), v.keys())]
}

#[test]
fn lists_watches_and_names_both_ends() {
    let api = FakeApi::start();
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let k = start(&api, dir.path());
    wait("the first lists", || lists(&k) == [1, 1, 1]);
    // Only what enrichment needs: 3 pods (5 addresses), 3 slices, 1 Service (headless skipped).
    assert_eq!(sizes(&k), [(3, 5), (3, 6), (1, 1)]);
    let reqs = api.requests();
    assert!(
        reqs.iter().any(|r| r.starts_with("GET /api/v1/pods?") && r.contains("fieldSelector=status.phase")),
        "{reqs:?}"
    );

    let got = enrich(
        &k,
        vec![
            flow("10.77.0.1", "10.77.0.2", 8080, Role::Client),
            flow("fd77::2", "fd77::1", 8080, Role::Server),
            flow("10.77.0.1", "172.20.0.10", 80, Role::Client),
            flow("10.77.0.2", "10.78.0.9", 5432, Role::Client),
            flow("10.78.0.9", "10.77.0.2", 5432, Role::Server),
            flow("192.168.1.1", "192.168.1.2", 22, Role::Client),
        ],
    );
    let (c, b, shop) = (Some("client-7d9f"), Some("backend-5c6b"), Some("shop"));
    assert_eq!(got[0], meta([c, shop, None, b, shop, Some("backend")]), "client flow to a backend pod");
    assert_eq!(got[1], meta([b, shop, Some("backend"), c, shop, None]), "server flow, IPv6");
    assert_eq!(got[2], meta([c, shop, None, None, None, Some("backend")]), "client flow to a ClusterIP");
    assert_eq!(
        got[3],
        meta([b, shop, Some("backend"), Some("postgres-0"), Some("db"), Some("postgres")]),
        "remote pod on another node"
    );
    assert_eq!(
        got[4],
        meta([None, None, Some("postgres"), b, shop, Some("backend")]),
        "a pod on another node is never the local end (its Service still is the endpoint's)"
    );
    assert_eq!(got[5], None, "nothing known: no kubernetes object");

    // Watch events: a pod goes, another comes, a slice changes.
    api.delete(Kind::Pods, "shop", "client-7d9f");
    api.apply(Kind::Pods, pod("shop", "client-new", "lab-node", &["10.77.0.1"]));
    api.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-x1", "backend-v2", &["10.77.0.2"], 9090));
    wait("the watch events", || k.store.pods.stats.events.load(Ordering::Relaxed) >= 2);
    wait("the slice event", || k.store.slices.stats.events.load(Ordering::Relaxed) >= 1);
    let got = enrich(&k, vec![flow("10.77.0.1", "10.77.0.2", 9090, Role::Client)]);
    assert_eq!(got[0], meta([Some("client-new"), shop, None, b, shop, Some("backend-v2")]));
    assert!(k.store.pods.read().get(&"fd77::1".parse().unwrap(), false).is_none(), "the deleted pod's IPv6 is gone");
    assert_eq!(lists(&k), [1, 1, 1], "events, not re-lists");
}

#[test]
fn bookmarks_are_where_watches_resume() {
    let api = FakeApi::start();
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let k = start(&api, dir.path());
    wait("the first watches", || {
        [Kind::Pods, Kind::EndpointSlices, Kind::Services].iter().all(|&x| api.counts(x).1 == 1)
    });
    let reqs = api.requests();
    assert!(
        reqs.iter().filter(|r| r.contains("watch=true")).all(|r| r.contains("allowWatchBookmarks=true")),
        "{reqs:?}"
    );
    let rv = api.bookmark();
    // The bookmark is consumed silently; give it time to arrive, then end the watches as the
    // server does at timeoutSeconds: each resumes from the bookmark, without a re-list.
    std::thread::sleep(Duration::from_millis(500));
    api.end_watches();
    api.wait_for("the resumed watches", WAIT, |a| a.counts(Kind::Pods).1 == 2 && a.counts(Kind::Services).1 == 2);
    let resumed: Vec<String> = api.requests().into_iter().filter(|r| r.contains("watch=true")).skip(3).collect();
    for r in &resumed {
        assert!(r.contains(&format!("resourceVersion={rv}")), "resumed from the bookmark {rv}: {r}");
    }
    assert_eq!(lists(&k), [1, 1, 1]);
}

#[test]
fn gone_relists_replace_the_store_and_memory_stays_flat() {
    let mut api = FakeApi::start();
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let k = start(&api, dir.path());
    wait("the first lists", || lists(&k) == [1, 1, 1]);
    let before = sizes(&k);

    // The backend pod is replaced while the agent cannot see events (compaction): only the
    // re-list after 410 Gone tells, and the old name must not linger.
    api.expire_with(|s| {
        s.delete(Kind::Pods, "shop", "backend-5c6b");
        s.apply(Kind::Pods, pod("shop", "backend-9z8y", "lab-node", &["10.77.0.2", "fd77::2"]));
    });
    wait("the re-lists after 410", || lists(&k) == [2, 2, 2]);
    let got = enrich(&k, vec![flow("10.77.0.2", "10.77.0.1", 8080, Role::Server)]);
    assert_eq!(got[0].as_ref().unwrap().local_pod_name.as_deref(), Some("backend-9z8y"));
    assert_eq!(sizes(&k), before);

    // Repeated compactions: each re-lists; the indexes hold the same, never more.
    for round in 3..=8 {
        api.expire();
        wait("another re-list", || lists(&k) == [round; 3]);
        assert_eq!(sizes(&k), before, "after re-list {round}");
    }
    // A watch started from before the compaction also gets 410 (here: right after a restart).
    api.restart();
    api.expire_with(|s| s.delete(Kind::Pods, "db", "postgres-0"));
    wait("the re-list after the restart", || lists(&k)[0] >= 9 && k.store.pods.read().len() == 2);
    assert!(k.store.pods.read().get(&"10.78.0.9".parse().unwrap(), false).is_none());
}

#[test]
fn survives_an_api_server_restart() {
    let mut api = FakeApi::start();
    seed(&api);
    let dir = tempfile::tempdir().unwrap();
    let k = start(&api, dir.path());
    wait("the first lists", || lists(&k) == [1, 1, 1]);
    api.stop();
    // While it is down the agent retries with backoff and keeps what it knew.
    std::thread::sleep(Duration::from_secs(2));
    let got = enrich(&k, vec![flow("10.77.0.1", "10.77.0.2", 8080, Role::Client)]);
    assert_eq!(got[0].as_ref().unwrap().remote_pod_name.as_deref(), Some("backend-5c6b"));
    // Changes while it is down reach the agent once it is back (watch resumes from its
    // resourceVersion: events replayed, no re-list).
    api.apply(Kind::Pods, pod("shop", "late-1", "lab-node", &["10.77.0.3"]));
    api.start_again();
    wait("the change made while down", || k.store.pods.read().get(&"10.77.0.3".parse().unwrap(), true).is_some());
    assert_eq!(lists(&k)[0], 1, "resumed, not re-listed");
}

/// 500 flows against a cluster of 20,000 pods and 5,000 Services: every flow named. Prints the
/// cost of one report window's enrichment (no timing assertion; figures go in the report).
#[test]
fn names_500_flows_in_a_large_cluster() {
    use super::store::{Services, Slices, Store};
    let store = Arc::new(Store::new(Some("lab-node")));
    let ip = |i: u32| std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let mut pods = store.fresh_pods();
    let mut slices = Slices::default();
    let mut services = Services::default();
    for i in 0..20_000u32 {
        let node = if i < 250 { "lab-node" } else { "other-node" };
        pods.apply(&serde_json::from_value(pod("ns", &format!("p{i}"), node, &[&ip(i).to_string()])).unwrap());
        if i % 4 == 0 {
            let addrs: Vec<String> = (i..i + 4).map(|j| ip(j).to_string()).collect();
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            let s = endpoint_slice("ns", &format!("s{i}"), &format!("svc{}", i / 4), &addrs, 8080);
            slices.apply(&serde_json::from_value(s).unwrap());
            let v =
                service("ns", &format!("svc{}", i / 4), &format!("172.20.{}.{}", (i / 4) >> 8, (i / 4) & 255), 8080);
            services.apply(&serde_json::from_value(v).unwrap());
        }
    }
    store.pods.replace(pods);
    store.slices.replace(slices);
    store.services.replace(services);
    let k = Kubernetes { store };
    let flows: Vec<FlowRecord> = (0..500u32)
        .map(|i| {
            let (local, remote) = (ip(i % 250).to_string(), ip(1000 + i * 7).to_string());
            flow(&local, &remote, 8080, if i % 2 == 0 { Role::Client } else { Role::Server })
        })
        .collect();
    let mut r = report(flows.clone());
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        // Each pass replaces what the previous one filled.
        k.enrich(&mut r);
    }
    let per_window = t.elapsed() / rounds;
    let got: Vec<_> = r.flows.into_iter().map(|f| f.enrichment.kubernetes).collect();
    for (f, m) in flows.iter().zip(&got) {
        let m = m.as_ref().unwrap_or_else(|| panic!("{f:?} named"));
        assert!(m.local_pod_name.is_some() && m.remote_pod_name.is_some() && m.remote_service_name.is_some(), "{m:?}");
    }
    eprintln!("kubernetes enrichment of 500 flows (20,000 pods, 5,000 Services): {per_window:?} per window");
}

#[test]
fn settings_decide_and_bad_kubeconfigs_stop_the_start() {
    use super::enabled;
    let dir = tempfile::tempdir().unwrap();
    let cfg = |kubernetes: Option<bool>, kubeconfig: Option<std::path::PathBuf>| {
        Config::resolve(&crate::config::RunArgs { kubernetes, kubeconfig, ..Default::default() }).unwrap()
    };
    let kc = dir.path().join("kc");
    // Not in a pod here (no service-account token): off unless asked for or given a kubeconfig.
    assert!(!super::in_pod());
    assert!(!enabled(&cfg(None, None)));
    assert!(enabled(&cfg(None, Some(kc.clone()))));
    assert!(!enabled(&cfg(Some(false), Some(kc.clone()))), "false wins over a kubeconfig");
    assert!(enabled(&cfg(Some(true), None)));
    assert!(Kubernetes::start(&cfg(Some(false), Some(kc.clone()))).unwrap().is_none());

    let err = Kubernetes::start(&cfg(Some(true), Some(kc.clone()))).err().unwrap().to_string();
    assert!(err.contains("kubeconfig") && err.contains(kc.to_str().unwrap()), "{err}");
    std::fs::write(&kc, "clusters: [not: [valid").unwrap();
    let err = Kubernetes::start(&cfg(None, Some(kc.clone()))).err().unwrap().to_string();
    assert!(err.contains(kc.to_str().unwrap()), "{err}");
    // Parses, but names no cluster to talk to.
    std::fs::write(&kc, "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n").unwrap();
    let err = Kubernetes::start(&cfg(None, Some(kc))).err().unwrap().to_string();
    assert!(err.contains("Kubernetes client") && err.contains("nowhere"), "{err}");
}
