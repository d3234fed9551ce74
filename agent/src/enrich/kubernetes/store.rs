//! What enrichment keeps of the cluster: compact entries (names and addresses), never whole
//! objects. One index per watched kind, each keyed by `namespace/name` with reverse maps from
//! addresses; an update replaces the object's previous entry, a delete removes it, and a re-list
//! builds a fresh index that replaces the old one whole (nothing is appended).

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{
        Arc, RwLock, RwLockReadGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};

/// Most objects of one kind kept; beyond this new objects are ignored (and counted).
pub const MAX_OBJECTS: usize = 200_000;
/// Most addresses (or address/port pairs) one EndpointSlice contributes.
const MAX_SLICE_KEYS: usize = 10_000;
/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A watched kind as enrichment keeps it.
pub trait Index: Default + Send + Sync + 'static {
    type Object: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static;
    const KIND: &'static str;
    /// Add or replace the object's entry (or drop it when it no longer matters, e.g. a pod that
    /// finished). Returns false when the index is full and the object was not kept.
    fn apply(&mut self, obj: &Self::Object) -> bool;
    fn delete(&mut self, obj: &Self::Object);
    /// Objects kept.
    fn len(&self) -> usize;
    /// Entries in the reverse maps (addresses, address/port pairs): with `len`, the memory held.
    fn keys(&self) -> usize;
}

fn object_key<K: kube::Resource>(obj: &K) -> Option<String> {
    let m = obj.meta();
    Some(format!("{}/{}", m.namespace.as_deref().unwrap_or(""), m.name.as_deref()?))
}

/// A reverse map whose keys may be claimed by several objects at once (a pod IP reused while the
/// old pod terminates; a pod in two Services): each value is held once per claim, removed by
/// identity.
struct Multi<K, V: ?Sized> {
    map: HashMap<K, Vec<Arc<V>>>,
}

impl<K, V: ?Sized> Default for Multi<K, V> {
    fn default() -> Self {
        Multi { map: HashMap::new() }
    }
}

impl<K: Hash + Eq, V: ?Sized> Multi<K, V> {
    fn insert(&mut self, k: K, v: &Arc<V>) {
        self.map.entry(k).or_default().push(v.clone());
    }

    fn remove(&mut self, k: &K, v: &Arc<V>) {
        if let Some(vs) = self.map.get_mut(k) {
            if let Some(i) = vs.iter().position(|x| Arc::ptr_eq(x, v)) {
                vs.swap_remove(i);
            }
            if vs.is_empty() {
                self.map.remove(k);
            }
        }
    }

    fn get(&self, k: &K) -> &[Arc<V>] {
        self.map.get(k).map(Vec::as_slice).unwrap_or(&[])
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// A pod as enrichment names it.
#[derive(Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    pub namespace: String,
    /// Scheduled on this node (or no node name is known): may be the local end of a flow.
    pub on_node: bool,
    /// Ordering among pods claiming the same address: the newest claim wins.
    seq: u64,
}

struct PodEntry {
    ips: Vec<IpAddr>,
    pod: Arc<PodRef>,
}

/// Pod IP -> pod. Host-network pods (their IP is the node's) and finished pods are not kept.
#[derive(Default)]
pub struct Pods {
    node_name: Option<Arc<str>>,
    by_key: HashMap<String, PodEntry>,
    by_ip: Multi<IpAddr, PodRef>,
    seq: u64,
}

impl Pods {
    pub fn for_node(node_name: Option<Arc<str>>) -> Pods {
        Pods { node_name, ..Default::default() }
    }

    /// The pod holding `ip`; with `local`, only a pod on this node.
    pub fn get(&self, ip: &IpAddr, local: bool) -> Option<&PodRef> {
        self.by_ip.get(ip).iter().filter(|p| !local || p.on_node).max_by_key(|p| p.seq).map(|p| &**p)
    }

    fn remove_key(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            for ip in &old.ips {
                self.by_ip.remove(ip, &old.pod);
            }
        }
    }
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else { return Vec::new() };
    let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    if finished || host_network {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = match &status.pod_ips {
        Some(list) if !list.is_empty() => list.iter().filter_map(|p| p.ip.parse().ok()).collect(),
        _ => status.pod_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    ips.sort();
    ips.dedup();
    ips.truncate(8);
    ips
}

impl Index for Pods {
    type Object = Pod;
    const KIND: &'static str = "pods";

    fn apply(&mut self, pod: &Pod) -> bool {
        let Some(key) = object_key(pod) else { return true };
        let ips = pod_ips(pod);
        if ips.is_empty() {
            self.remove_key(&key);
            return true;
        }
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_OBJECTS {
            return false;
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        let on_node = match &self.node_name {
            Some(n) => node == Some(&**n),
            None => true,
        };
        self.seq += 1;
        let entry = PodEntry {
            ips,
            pod: Arc::new(PodRef {
                name: pod.metadata.name.clone().unwrap_or_default(),
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                on_node,
                seq: self.seq,
            }),
        };
        self.remove_key(&key);
        for ip in &entry.ips {
            self.by_ip.insert(*ip, &entry.pod);
        }
        self.by_key.insert(key, entry);
        true
    }

    fn delete(&mut self, pod: &Pod) {
        if let Some(key) = object_key(pod) {
            self.remove_key(&key);
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn keys(&self) -> usize {
        self.by_ip.len()
    }
}

struct SliceEntry {
    service: Arc<str>,
    addrs: Vec<IpAddr>,
    targets: Vec<(IpAddr, u16)>,
}

/// Endpoint address (and TCP port) -> the Service an EndpointSlice says it backs.
#[derive(Default)]
pub struct Slices {
    by_key: HashMap<String, SliceEntry>,
    by_ip: Multi<IpAddr, str>,
    by_target: Multi<(IpAddr, u16), str>,
}

/// Of several Services, the first by name: stable whatever order they arrived in.
fn first(names: &[Arc<str>]) -> Option<&str> {
    names.iter().map(|s| &**s).min()
}

impl Slices {
    /// The Service with an endpoint at `ip` serving TCP `port`.
    pub fn by_target(&self, ip: IpAddr, port: u16) -> Option<&str> {
        first(self.by_target.get(&(ip, port)))
    }

    /// A Service with an endpoint at `ip`, whatever the port.
    pub fn by_ip(&self, ip: &IpAddr) -> Option<&str> {
        first(self.by_ip.get(ip))
    }

    fn remove_key(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            for a in &old.addrs {
                self.by_ip.remove(a, &old.service);
            }
            for t in &old.targets {
                self.by_target.remove(t, &old.service);
            }
        }
    }
}

fn slice_entry(slice: &EndpointSlice) -> Option<SliceEntry> {
    let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let mut addrs: Vec<IpAddr> =
        slice.endpoints.iter().flat_map(|e| e.addresses.iter()).filter_map(|a| a.parse().ok()).collect();
    addrs.sort();
    addrs.dedup();
    addrs.truncate(MAX_SLICE_KEYS);
    let mut ports: Vec<u16> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| p.port.and_then(|n| u16::try_from(n).ok()))
        .collect();
    ports.sort();
    ports.dedup();
    let targets = addrs.iter().flat_map(|a| ports.iter().map(|p| (*a, *p))).take(MAX_SLICE_KEYS).collect();
    (!addrs.is_empty()).then(|| SliceEntry { service: Arc::from(service.as_str()), addrs, targets })
}

impl Index for Slices {
    type Object = EndpointSlice;
    const KIND: &'static str = "endpointslices";

    fn apply(&mut self, slice: &EndpointSlice) -> bool {
        let Some(key) = object_key(slice) else { return true };
        let Some(entry) = slice_entry(slice) else {
            self.remove_key(&key);
            return true;
        };
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_OBJECTS {
            return false;
        }
        self.remove_key(&key);
        for a in &entry.addrs {
            self.by_ip.insert(*a, &entry.service);
        }
        for t in &entry.targets {
            self.by_target.insert(*t, &entry.service);
        }
        self.by_key.insert(key, entry);
        true
    }

    fn delete(&mut self, slice: &EndpointSlice) {
        if let Some(key) = object_key(slice) {
            self.remove_key(&key);
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn keys(&self) -> usize {
        self.by_ip.len() + self.by_target.len()
    }
}

struct ServiceEntry {
    name: Arc<str>,
    ips: Vec<IpAddr>,
}

/// ClusterIP -> Service: what a client connecting to a Service has as its remote address (the
/// socket keeps the virtual IP; kube-proxy translates packets, not sockets).
#[derive(Default)]
pub struct Services {
    by_key: HashMap<String, ServiceEntry>,
    by_ip: Multi<IpAddr, str>,
}

impl Services {
    pub fn by_cluster_ip(&self, ip: &IpAddr) -> Option<&str> {
        first(self.by_ip.get(ip))
    }

    fn remove_key(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            for ip in &old.ips {
                self.by_ip.remove(ip, &old.name);
            }
        }
    }
}

fn cluster_ips(svc: &Service) -> Vec<IpAddr> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let mut ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(list) if !list.is_empty() => list.iter().filter_map(|s| s.parse().ok()).collect(),
        // "None" (headless) does not parse.
        _ => spec.cluster_ip.iter().filter_map(|s| s.parse().ok()).collect(),
    };
    ips.sort();
    ips.dedup();
    ips.truncate(8);
    ips
}

impl Index for Services {
    type Object = Service;
    const KIND: &'static str = "services";

    fn apply(&mut self, svc: &Service) -> bool {
        let Some(key) = object_key(svc) else { return true };
        let ips = cluster_ips(svc);
        if ips.is_empty() {
            self.remove_key(&key);
            return true;
        }
        if !self.by_key.contains_key(&key) && self.by_key.len() >= MAX_OBJECTS {
            return false;
        }
        self.remove_key(&key);
        let entry = ServiceEntry { name: Arc::from(svc.metadata.name.as_deref().unwrap_or("")), ips };
        for ip in &entry.ips {
            self.by_ip.insert(*ip, &entry.name);
        }
        self.by_key.insert(key, entry);
        true
    }

    fn delete(&mut self, svc: &Service) {
        if let Some(key) = object_key(svc) {
            self.remove_key(&key);
        }
    }

    fn len(&self) -> usize {
        self.by_key.len()
    }

    fn keys(&self) -> usize {
        self.by_ip.len()
    }
}

/// Counters of one watched kind, for logs and tests.
#[derive(Default, Debug)]
pub struct KindStats {
    /// Complete lists applied (the first one and every re-list after a 410 or a restart).
    pub lists: AtomicU64,
    /// Watch events applied.
    pub events: AtomicU64,
    /// Objects not kept because the index was full.
    pub dropped: AtomicU64,
}

/// One index, shared between its watcher (writer) and the enricher (reader).
pub struct Shared<I> {
    index: RwLock<I>,
    pub stats: KindStats,
}

impl<I: Index> Shared<I> {
    pub fn new(index: I) -> Shared<I> {
        Shared { index: RwLock::new(index), stats: KindStats::default() }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, I> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update(&self, f: impl FnOnce(&mut I)) {
        f(&mut self.index.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// A complete list replaces the index whole; the old one is dropped after the lock is released.
    pub fn replace(&self, fresh: I) {
        let old = std::mem::replace(&mut *self.index.write().unwrap_or_else(|e| e.into_inner()), fresh);
        drop(old);
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything enrichment knows of the cluster.
pub struct Store {
    pub node_name: Option<Arc<str>>,
    pub pods: Arc<Shared<Pods>>,
    pub slices: Arc<Shared<Slices>>,
    pub services: Arc<Shared<Services>>,
}

impl Store {
    pub fn new(node_name: Option<&str>) -> Store {
        let node_name: Option<Arc<str>> = node_name.map(Arc::from);
        Store {
            pods: Arc::new(Shared::new(Pods::for_node(node_name.clone()))),
            node_name,
            slices: Arc::new(Shared::new(Slices::default())),
            services: Arc::new(Shared::new(Services::default())),
        }
    }

    /// A fresh, empty index for a re-list of pods (same node).
    pub fn fresh_pods(&self) -> Pods {
        Pods::for_node(self.node_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ips: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "1"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ips.first(), "podIPs": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>()}
        }))
        .unwrap()
    }

    fn slice(ns: &str, name: &str, service: &str, addrs: &[&str], ports: &[(i32, &str)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": addrs.iter().map(|a| serde_json::json!({"addresses": [a], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": ports.iter().map(|(p, proto)| serde_json::json!({"name": "p", "port": p, "protocol": proto})).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn pods_by_ip_follow_updates_deletes_and_reuse() {
        let mut p = Pods::for_node(Some(Arc::from("n1")));
        assert!(p.apply(&pod("shop", "web-1", "n1", &["10.0.0.5", "fd00::5"])));
        assert!(p.apply(&pod("shop", "db-1", "n2", &["10.0.1.9"])));
        assert_eq!(p.get(&ip("fd00::5"), true).unwrap().name, "web-1");
        assert_eq!(p.get(&ip("10.0.1.9"), false).unwrap().name, "db-1");
        assert!(p.get(&ip("10.0.1.9"), true).is_none(), "db-1 runs on another node: never a local end");
        // The pod moves to another IP: the old one is forgotten.
        p.apply(&pod("shop", "web-1", "n1", &["10.0.0.6"]));
        assert!(p.get(&ip("10.0.0.5"), false).is_none());
        assert!(p.get(&ip("fd00::5"), false).is_none());
        assert_eq!(p.get(&ip("10.0.0.6"), false).unwrap().name, "web-1");
        // IP reused by a new pod while the old one terminates: the newest wins, and the delete of
        // the old one leaves the new one in place.
        p.apply(&pod("shop", "web-2", "n1", &["10.0.0.6"]));
        assert_eq!(p.get(&ip("10.0.0.6"), false).unwrap().name, "web-2");
        p.delete(&pod("shop", "web-1", "n1", &["10.0.0.6"]));
        assert_eq!(p.get(&ip("10.0.0.6"), false).unwrap().name, "web-2");
        // Finished and host-network pods are not kept.
        let mut done = pod("shop", "web-2", "n1", &["10.0.0.6"]);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        p.apply(&done);
        assert!(p.get(&ip("10.0.0.6"), false).is_none());
        let mut host = pod("kube-system", "proxy", "n1", &["192.168.0.10"]);
        host.spec.as_mut().unwrap().host_network = Some(true);
        p.apply(&host);
        assert!(p.get(&ip("192.168.0.10"), false).is_none());
        assert_eq!((p.len(), p.keys()), (1, 1), "only db-1 is left");
        p.delete(&pod("shop", "db-1", "n2", &[]));
        assert_eq!((p.len(), p.keys()), (0, 0));
    }

    #[test]
    fn slices_map_targets_and_addresses_to_services() {
        let mut s = Slices::default();
        s.apply(&slice("shop", "web-abc", "web", &["10.0.0.5", "10.0.0.6"], &[(8080, "TCP"), (53, "UDP")]));
        s.apply(&slice("shop", "metrics-x", "metrics", &["10.0.0.5"], &[(9090, "TCP")]));
        assert_eq!(s.by_target(ip("10.0.0.5"), 8080), Some("web"));
        assert_eq!(s.by_target(ip("10.0.0.5"), 9090), Some("metrics"));
        assert_eq!(s.by_target(ip("10.0.0.5"), 53), None, "UDP ports are not TCP targets");
        assert_eq!(s.by_ip(&ip("10.0.0.5")), Some("metrics"), "several: the first by name");
        assert_eq!(s.by_ip(&ip("10.0.0.6")), Some("web"));
        // An update that drops an endpoint forgets it.
        s.apply(&slice("shop", "web-abc", "web", &["10.0.0.6"], &[(8080, "TCP")]));
        assert_eq!(s.by_target(ip("10.0.0.5"), 8080), None);
        assert_eq!(s.by_ip(&ip("10.0.0.5")), Some("metrics"));
        s.delete(&slice("shop", "metrics-x", "metrics", &[], &[]));
        assert_eq!(s.by_ip(&ip("10.0.0.5")), None);
        assert_eq!((s.len(), s.keys()), (1, 2));
        // A slice without the service-name label names nothing.
        let mut orphan = slice("shop", "o", "x", &["10.0.0.7"], &[(1, "TCP")]);
        orphan.metadata.labels = None;
        s.apply(&orphan);
        assert_eq!(s.by_ip(&ip("10.0.0.7")), None);
    }

    #[test]
    fn services_by_cluster_ip_skip_headless() {
        let svc = |name: &str, ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"port": 80}]}
            }))
            .unwrap()
        };
        let mut s = Services::default();
        s.apply(&svc("web", "172.20.0.10"));
        s.apply(&svc("headless", "None"));
        assert_eq!(s.by_cluster_ip(&ip("172.20.0.10")), Some("web"));
        assert_eq!((s.len(), s.keys()), (1, 1));
        s.delete(&svc("web", "172.20.0.10"));
        assert_eq!((s.len(), s.keys()), (0, 0));
    }

    #[test]
    fn replace_drops_the_old_index_and_counts_lists() {
        let store = Store::new(Some("n1"));
        for round in 0..5 {
            let mut fresh = store.fresh_pods();
            for i in 0..100 {
                fresh.apply(&pod("ns", &format!("p{i}"), "n1", &[&format!("10.1.{round}.{i}")]));
            }
            store.pods.replace(fresh);
            let r = store.pods.read();
            assert_eq!((r.len(), r.keys()), (100, 100), "round {round}: replaced, not appended");
            assert!(r.get(&ip(&format!("10.1.{round}.7")), true).is_some());
            assert!(round == 0 || r.get(&ip(&format!("10.1.{}.7", round - 1)), false).is_none());
        }
        assert_eq!(store.pods.stats.lists.load(Ordering::Relaxed), 5);
    }
}
