//! A Kubernetes API server for tests, on loopback: real HTTP, the real list/watch protocol and
//! real object JSON for Pods, EndpointSlices and Services. Lists carry the collection's
//! resourceVersion; watches replay events after the requested resourceVersion, then stream new
//! ones (chunked JSON lines), with BOOKMARK events when asked for. `expire` plays an etcd
//! compaction: open watches get a 410 "too old resource version" ERROR and so does any watch from
//! before it, which forces clients to re-list. `restart` drops every connection and serves again
//! on the same port. Requests need the bearer token of `kubeconfig`.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Query, State as AxState},
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

pub const TOKEN: &str = "fake-api-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    EndpointSlices,
    Services,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Pods => "/api/v1/pods",
            Kind::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
            Kind::Services => "/api/v1/services",
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Pods => ("v1", "PodList"),
            Kind::EndpointSlices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Kind::Services => ("v1", "ServiceList"),
        }
    }

    fn of_path(path: &str) -> Option<Kind> {
        [Kind::Pods, Kind::EndpointSlices, Kind::Services].into_iter().find(|k| k.path() == path)
    }
}

#[derive(Clone, Debug)]
enum Msg {
    Event {
        rv: u64,
        kind: Kind,
        kind_type: &'static str,
        object: Value,
    },
    Bookmark {
        rv: u64,
    },
    /// etcd compacted: open watches end with 410.
    Expire,
    /// Server stopping: open watches end.
    Drop,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    min_rv: u64,
    objects: BTreeMap<(Kind, String), Value>,
    log: Vec<(u64, Kind, &'static str, Value)>,
    /// "GET path?query" of every request, in order.
    requests: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    tx: broadcast::Sender<Msg>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    stop: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
}

fn key_of(obj: &Value) -> String {
    format!("{}/{}", obj["metadata"]["namespace"].as_str().unwrap_or(""), obj["metadata"]["name"].as_str().unwrap())
}

impl FakeApi {
    pub fn start() -> FakeApi {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (tx, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared { state: Mutex::new(State { rv: 100, ..Default::default() }), tx });
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut api = FakeApi { addr, shared, rt, stop: None };
        api.serve(listener);
        api
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = Router::new().fallback(handle).with_state(self.shared.clone());
        let task = self.rt.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        self.stop = Some((stop_tx, task));
    }

    /// Stop serving: every watch ends, every connection closes, the port refuses connections.
    pub fn stop(&mut self) {
        if let Some((stop_tx, task)) = self.stop.take() {
            let _ = self.shared.tx.send(Msg::Drop);
            let _ = stop_tx.send(());
            let abort = task.abort_handle();
            if self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await }).is_err() {
                abort.abort();
            }
        }
    }

    /// Serve again on the same address, with the same objects and history (etcd survived).
    pub fn start_again(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match self.rt.block_on(tokio::net::TcpListener::bind(self.addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}", self.addr);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// A kubeconfig that points at this server.
    pub fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 users:\n- name: agent\n  user:\n    token: {TOKEN}\ncontexts:\n- name: fake\n  context:\n    \
                 cluster: fake\n    user: agent\ncurrent-context: fake\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, st: &mut State, kind: Kind, kind_type: &'static str, mut object: Value, silent: bool) {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = (kind, key_of(&object));
        if kind_type == "DELETED" {
            st.objects.remove(&key);
        } else {
            st.objects.insert(key, object.clone());
        }
        if !silent {
            st.log.push((st.rv, kind, kind_type, object.clone()));
            let _ = self.shared.tx.send(Msg::Event { rv: st.rv, kind, kind_type, object });
        }
    }

    /// Create or replace an object (ADDED or MODIFIED to watchers).
    pub fn apply(&self, kind: Kind, object: Value) {
        let mut st = self.lock();
        let t = if st.objects.contains_key(&(kind, key_of(&object))) { "MODIFIED" } else { "ADDED" };
        self.record(&mut st, kind, t, object, false);
    }

    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut st = self.lock();
        if let Some(obj) = st.objects.get(&(kind, format!("{namespace}/{name}"))).cloned() {
            self.record(&mut st, kind, "DELETED", obj, false);
        }
    }

    /// Change objects with no watch event (as happens across a compaction), then compact: clients
    /// only learn of the change by re-listing.
    pub fn expire_with(&self, changes: impl FnOnce(&mut Silent)) {
        let mut st = self.lock();
        let mut silent = Silent { changes: Vec::new() };
        changes(&mut silent);
        for (kind, t, obj) in silent.changes {
            self.record(&mut st, kind, t, obj, true);
        }
        // Compacted up to now: every resourceVersion handed out so far is too old.
        st.rv += 1;
        st.min_rv = st.rv;
        st.log.clear();
        let _ = self.shared.tx.send(Msg::Expire);
    }

    pub fn expire(&self) {
        self.expire_with(|_| {});
    }

    /// A BOOKMARK at the current resourceVersion to every watch that allows them.
    pub fn bookmark(&self) -> u64 {
        let mut st = self.lock();
        // Other kinds' writes move the resourceVersion on.
        st.rv += 3;
        let _ = self.shared.tx.send(Msg::Bookmark { rv: st.rv });
        st.rv
    }

    /// End every open watch cleanly (as the API server does at timeoutSeconds).
    pub fn end_watches(&self) {
        let _ = self.shared.tx.send(Msg::Drop);
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// (lists, watches) requested of `kind` so far.
    pub fn counts(&self, kind: Kind) -> (usize, usize) {
        let st = self.lock();
        let of_kind: Vec<&String> =
            st.requests.iter().filter(|r| r.split('?').next() == Some(&format!("GET {}", kind.path()))).collect();
        let watches = of_kind.iter().filter(|r| r.contains("watch=true")).count();
        (of_kind.len() - watches, watches)
    }

    /// Wait until `cond` holds for the request counts of every kind, or panic.
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&FakeApi) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; requests:\n{:#?}", self.requests());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Changes applied by `expire_with`.
pub struct Silent {
    changes: Vec<(Kind, &'static str, Value)>,
}

impl Silent {
    pub fn apply(&mut self, kind: Kind, object: Value) {
        self.changes.push((kind, "MODIFIED", object));
    }

    pub fn delete(&mut self, kind: Kind, namespace: &str, name: &str) {
        self.changes.push((kind, "DELETED", json!({"metadata": {"namespace": namespace, "name": name}})));
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).unwrap();
    s.push(b'\n');
    Bytes::from(s)
}

async fn handle(
    AxState(shared): AxState<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    st.requests.push(format!("GET {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("")));
    let json_response = |code: StatusCode, v: &Value| {
        (code, [(header::CONTENT_TYPE, "application/json")], serde_json::to_string(v).unwrap()).into_response()
    };
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {TOKEN}")) {
        return json_response(StatusCode::UNAUTHORIZED, &status(401, "Unauthorized", "Unauthorized"));
    }
    let Some(kind) = Kind::of_path(uri.path()) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", "the server could not find the resource"),
        );
    };
    if q.get("watch").map(String::as_str) != Some("true") {
        let (api_version, list_kind) = kind.list_kind();
        let items: Vec<Value> = st.objects.iter().filter(|((k, _), _)| *k == kind).map(|(_, v)| v.clone()).collect();
        return json_response(
            StatusCode::OK,
            &json!({"apiVersion": api_version, "kind": list_kind,
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
        );
    }
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let gone = |from: u64, min: u64| {
        line(&json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {from} ({min})"))}))
    };
    if from < st.min_rv {
        let _ = tx.try_send(gone(from, st.min_rv));
    } else {
        let mut sub = shared.tx.subscribe();
        let backlog: Vec<Bytes> = st
            .log
            .iter()
            .filter(|(rv, k, _, _)| *rv > from && *k == kind)
            .map(|(_, _, t, o)| line(&json!({"type": t, "object": o})))
            .collect();
        let min_rv = st.min_rv;
        tokio::spawn(async move {
            for b in backlog {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            let (api_version, _) = kind.list_kind();
            let object_kind = match kind {
                Kind::Pods => "Pod",
                Kind::EndpointSlices => "EndpointSlice",
                Kind::Services => "Service",
            };
            loop {
                let msg = match sub.recv().await {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(_)) => Msg::Expire,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let out = match msg {
                    Msg::Event { rv, kind: k, kind_type, object } if k == kind && rv > from => {
                        line(&json!({"type": kind_type, "object": object}))
                    }
                    Msg::Event { .. } => continue,
                    Msg::Bookmark { rv } if bookmarks => line(&json!({"type": "BOOKMARK", "object": {
                        "kind": object_kind, "apiVersion": api_version,
                        "metadata": {"resourceVersion": rv.to_string()}}})),
                    Msg::Bookmark { .. } => continue,
                    Msg::Expire => {
                        let _ = tx.send(gone(from, min_rv.max(from + 1))).await;
                        return;
                    }
                    Msg::Drop => return,
                };
                if tx.send(out).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(st);
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

/// A running pod as the API server returns it.
pub fn pod(namespace: &str, name: &str, node: &str, ips: &[&str]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("{:08x}-7d1c-4b8e-9f3a-1c2d3e4f5a6b", name.len() * 7919),
            "creationTimestamp": "2026-11-22T09:00:00Z",
            "labels": {"app": name.split('-').next().unwrap()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-rs"),
                                 "uid": "5b0c2f8e-0000-4000-8000-000000000001", "controller": true}]
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.example/app:1.2.3",
                            "ports": [{"containerPort": 8080, "protocol": "TCP"}]}],
            "serviceAccountName": "default"
        },
        "status": {
            "phase": "Running",
            "hostIP": "192.168.10.11",
            "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "conditions": [{"type": "Ready", "status": "True"}],
            "startTime": "2026-11-22T09:00:01Z"
        }
    })
}

/// An EndpointSlice of `service` (one address family) with one TCP port.
pub fn endpoint_slice(namespace: &str, name: &str, service: &str, addrs: &[&str], port: u16) -> Value {
    let family = if addrs.iter().any(|a| a.contains(':')) { "IPv6" } else { "IPv4" };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service,
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                 "uid": "5b0c2f8e-0000-4000-8000-000000000002"}]
        },
        "addressType": family,
        "endpoints": addrs.iter().map(|a| json!({
            "addresses": [a],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "nodeName": "lab-node",
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": "unknown"}
        })).collect::<Vec<_>>(),
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]
    })
}

/// A ClusterIP Service ("None": headless).
pub fn service(namespace: &str, name: &str, cluster_ip: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": "5b0c2f8e-0000-4000-8000-000000000003"},
        "spec": {
            "type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"], "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]
        }
    })
}
