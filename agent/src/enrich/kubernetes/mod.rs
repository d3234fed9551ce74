//! Kubernetes enrichment: pod and Service names for both ends of each flow, from Pods,
//! EndpointSlices and Services watched through the API server on a thread of their own (decoding
//! lists never delays the capture loop). `enrich` only reads the in-memory indexes.
//!
//! Enabled by `kubernetes = true`; unset, it turns itself on when running in a pod
//! (`KUBERNETES_SERVICE_HOST` set and a service-account token mounted) or when `kubeconfig` is
//! set; `kubernetes = false` keeps it off either way.

pub mod store;
mod watch;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::Duration,
};

use agent_common::report::{FlowRecord, KubernetesMetadata, Report, Role};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};

use self::store::{Pods, Services, Slices, Store};
use super::Enricher;
use crate::config::Config;

/// Where the in-cluster service-account token is mounted.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// How long start waits for the client to be configured (local files only, no network).
const CLIENT_SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Finished pods are of no use for addresses (theirs may already be reused).
const RUNNING_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig { path: PathBuf, source: kube::config::KubeconfigError },
    #[error("cannot configure the Kubernetes client: {0}")]
    Config(String),
    #[error("cannot start the Kubernetes watcher thread: {0}")]
    Thread(std::io::Error),
}

/// Running in a pod: the API server's address and a token are there.
pub fn in_pod() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
        && Path::new(SERVICE_ACCOUNT_TOKEN).is_file()
}

/// Whether the settings turn Kubernetes enrichment on (see the module doc for the precedence).
pub fn enabled(cfg: &Config) -> bool {
    cfg.kubernetes.unwrap_or_else(|| cfg.kubeconfig.is_some() || in_pod())
}

/// Fills `kubernetes` in each flow from the watched indexes.
pub struct Kubernetes {
    store: Arc<Store>,
}

impl Kubernetes {
    /// Starts the watches when the config enables them; `None` when it does not. Fails on a bad
    /// kubeconfig; when only auto-enabled, a client that cannot be configured is logged and skipped.
    pub fn start(cfg: &Config) -> Result<Option<Kubernetes>, KubernetesError> {
        if !enabled(cfg) {
            return Ok(None);
        }
        let kubeconfig = match &cfg.kubeconfig {
            Some(path) => Some(
                Kubeconfig::read_from(path)
                    .map_err(|source| KubernetesError::Kubeconfig { path: path.clone(), source })?,
            ),
            None => None,
        };
        let store = Arc::new(Store::new(cfg.node_name.as_deref()));
        match spawn(kubeconfig, store.clone()) {
            Ok(()) => {}
            Err(e) if cfg.kubernetes.is_none() && cfg.kubeconfig.is_none() => {
                tracing::warn!("kubernetes enrichment off (auto-enabled in a pod): {e}");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(node = cfg.node_name.as_deref().unwrap_or("(unknown)"), "kubernetes enrichment on");
        Ok(Some(Kubernetes { store }))
    }
}

async fn client(kubeconfig: Option<Kubeconfig>) -> Result<kube::Client, KubernetesError> {
    let config = match kubeconfig {
        Some(kc) => kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| KubernetesError::Config(e.to_string()))?,
        None => kube::Config::infer().await.map_err(|e| KubernetesError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubernetesError::Config(e.to_string()))
}

/// The watcher thread: its own single-threaded runtime, one task per kind.
fn spawn(kubeconfig: Option<Kubeconfig>, store: Arc<Store>) -> Result<(), KubernetesError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("kubernetes".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(KubernetesError::Thread(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match client(kubeconfig).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(client, store).await;
            });
        })
        .map_err(KubernetesError::Thread)?;
    match ready_rx.recv_timeout(CLIENT_SETUP_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Err(KubernetesError::Config(format!("not configured within {CLIENT_SETUP_TIMEOUT:?}"))),
    }
}

/// The three watches, forever.
pub async fn run(client: kube::Client, store: Arc<Store>) {
    let s = store.clone();
    let pods = watcher::Config::default().fields(RUNNING_PODS);
    tokio::join!(
        watch::run(client.clone(), store.pods.clone(), move || s.fresh_pods(), pods),
        watch::run(client.clone(), store.slices.clone(), Slices::default, watcher::Config::default()),
        watch::run(client, store.services.clone(), Services::default, watcher::Config::default()),
    );
}

impl Enricher for Kubernetes {
    fn enrich(&self, report: &mut Report) {
        let (pods, slices, services) = (self.store.pods.read(), self.store.slices.read(), self.store.services.read());
        for flow in &mut report.flows {
            let meta = describe(flow, &pods, &slices, &services);
            flow.enrichment.kubernetes = (meta != KubernetesMetadata::default()).then_some(meta);
        }
    }
}

/// Both ends of one flow. Pods by address (the local end only among this node's pods; the remote
/// end also by the DNAT address conntrack found, if an earlier enricher filled it). Services: the
/// end serving `target_port` (the local end of a server flow, the remote end of a client flow) by
/// ClusterIP, then by endpoint address and port, then by endpoint address alone; the other end by
/// endpoint address alone.
fn describe(flow: &FlowRecord, pods: &Pods, slices: &Slices, services: &Services) -> KubernetesMetadata {
    let port = flow.target_port;
    let dnat: Option<IpAddr> = flow.enrichment.dnat_ip.as_deref().and_then(|s| s.parse().ok());
    let local = pods.get(&flow.local_ip, true);
    let remote = pods.get(&flow.remote_ip, false).or_else(|| dnat.and_then(|ip| pods.get(&ip, false)));
    let serving =
        |ip: IpAddr| services.by_cluster_ip(&ip).or_else(|| slices.by_target(ip, port)).or_else(|| slices.by_ip(&ip));
    let (local_service, remote_service) = match flow.role {
        Role::Server => (serving(flow.local_ip), slices.by_ip(&flow.remote_ip)),
        Role::Client => (
            slices.by_ip(&flow.local_ip),
            serving(flow.remote_ip).or_else(|| dnat.and_then(|ip| slices.by_target(ip, port))),
        ),
    };
    KubernetesMetadata {
        local_pod_name: local.map(|p| p.name.clone()),
        local_pod_namespace: local.map(|p| p.namespace.clone()),
        local_service_name: local_service.map(str::to_owned),
        remote_pod_name: remote.map(|p| p.name.clone()),
        remote_pod_namespace: remote.map(|p| p.namespace.clone()),
        remote_service_name: remote_service.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests;
