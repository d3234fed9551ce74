//! Kubernetes enrichment end to end: the real agent (`--kubernetes --kubeconfig`) watches a
//! Kubernetes API server on loopback (tests/support/kube_api.rs) in which the Lab's addresses are
//! pod IPs, and its reports name the pods and the Service at both ends of real TCP flows, over
//! IPv4 and IPv6 — also after a 410 Gone forced a re-list in which the server pod was replaced.

#[path = "support/kube_api.rs"]
mod kube_api;
mod support;

use std::time::Duration;

use agent_common::report::{KubernetesMetadata, Report, Role};
use kube_api::{FakeApi, Kind, endpoint_slice, pod, service};
use support::{Agent, Lab, privileged};

const WAIT: Duration = Duration::from_secs(30);

fn meta(local: (&str, Option<&str>), remote: (&str, Option<&str>)) -> KubernetesMetadata {
    KubernetesMetadata {
        local_pod_name: Some(local.0.into()),
        local_pod_namespace: Some("shop".into()),
        local_service_name: local.1.map(Into::into),
        remote_pod_name: Some(remote.0.into()),
        remote_pod_namespace: Some("shop".into()),
        remote_service_name: remote.1.map(Into::into),
    }
}

/// Every `kubernetes` object reported for one flow key, over all windows.
fn kubernetes_of(
    reports: &[Report],
    local: &str,
    remote: &str,
    port: u16,
    role: Role,
) -> Vec<Option<KubernetesMetadata>> {
    let key = support::flow(local, remote, port, role);
    reports.iter().flat_map(|r| r.flows.iter()).filter(|f| key(f)).map(|f| f.enrichment.kubernetes.clone()).collect()
}

fn exchange(lab: &Lab, server: &str, port: u16) {
    let port = port.to_string();
    let srv = lab.traffic(&lab.b, &["serve", "--addr", server, "--port", &port, "--conns", "2", "--reply", "2000"]);
    let client =
        lab.traffic(&lab.a, &["connect", "--addr", server, "--port", &port, "--conns", "2", "--send", "3000"]).result();
    assert_eq!(client["ok"], 2, "{client}");
    srv.result();
}

#[test]
fn reports_name_pods_and_services_across_a_relist() {
    let Some(_g) = privileged("reports_name_pods_and_services_across_a_relist") else { return };
    let lab = Lab::new();
    let api = FakeApi::start();
    api.apply(Kind::Pods, pod("shop", "client-7d9f", "lab-node", &[lab.a4, lab.a6]));
    api.apply(Kind::Pods, pod("shop", "backend-5c6b", "lab-node", &[lab.b4, lab.b6]));
    api.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-v4", "backend", &[lab.b4], 5401));
    api.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-v6", "backend", &[lab.b6], 5401));
    api.apply(Kind::Services, service("shop", "backend", "172.20.0.10", 5401));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig(dir.path());
    let agent = Agent::start_with(
        &lab,
        &["--dry-run"],
        &["--kubernetes", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", "lab-node"],
    );
    // A watch follows each complete list once it is in the agent's index.
    let watching = |n: usize| {
        move |a: &FakeApi| [Kind::Pods, Kind::EndpointSlices, Kind::Services].iter().all(|&k| a.counts(k).1 >= n)
    };
    api.wait_for("the agent's first lists", WAIT, watching(1));

    exchange(&lab, lab.b4, 5401);
    exchange(&lab, lab.b6, 5401);
    lab.wait_sockets_closed(Duration::from_secs(10));
    // Names are given when a window is reported: let those windows close first.
    std::thread::sleep(Duration::from_millis(2500));

    // The backend pod is replaced (same addresses) and its Service now targets 5402, while the
    // agent misses the events: only the re-list after 410 Gone tells.
    let lists_before = api.counts(Kind::Pods).0;
    api.expire_with(|s| {
        s.delete(Kind::Pods, "shop", "backend-5c6b");
        s.apply(Kind::Pods, pod("shop", "backend-9z8y", "lab-node", &[lab.b4, lab.b6]));
        s.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-v4", "backend", &[lab.b4], 5402));
        s.apply(Kind::EndpointSlices, endpoint_slice("shop", "backend-v6", "backend", &[lab.b6], 5402));
    });
    api.wait_for("the re-list after 410", WAIT, |a| a.counts(Kind::Pods).0 > lists_before);
    api.wait_for("the watches after the re-list", WAIT, watching(2));

    exchange(&lab, lab.b4, 5402);
    exchange(&lab, lab.b6, 5402);
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();

    let svc = Some("backend");
    for (a, b) in [(lab.a4, lab.b4), (lab.a6, lab.b6)] {
        for (port, backend) in [(5401, "backend-5c6b"), (5402, "backend-9z8y")] {
            let client = kubernetes_of(&reports, a, b, port, Role::Client);
            let server = kubernetes_of(&reports, b, a, port, Role::Server);
            assert!(!client.is_empty() && !server.is_empty(), "flows to {b}:{port} reported: {reports:#?}");
            for k in client {
                assert_eq!(k, Some(meta(("client-7d9f", None), (backend, svc))), "client flow {a} -> {b}:{port}");
            }
            for k in server {
                assert_eq!(k, Some(meta((backend, svc), ("client-7d9f", None))), "server flow {b}:{port} <- {a}");
            }
        }
    }
}
