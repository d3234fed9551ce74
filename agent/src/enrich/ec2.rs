//! The EC2 enricher: local_* fields from this instance's interface owning the flow's local
//! address (IMDS), snat_ip/dnat_ip from conntrack, and the remote side and destination category
//! of the real remote (after NAT). Reads snapshots only: background tasks keep them current.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use agent_common::report::{DestinationCategory, Enrichment, FlowRecord, Report};

use super::{
    Enricher,
    aws_files::{self, IpRanges, SubnetMap, Watched},
    classify::{self, Local, Unclassified},
    conntrack,
    instance::{self, Snapshot},
};
use crate::{config::Config, imds};

pub struct Ec2Enricher {
    pub metadata: Option<instance::Shared>,
    pub subnets: Option<Arc<RwLock<Arc<SubnetMap>>>>,
    pub ranges: Option<Arc<RwLock<Arc<IpRanges>>>>,
    pub nat: Option<conntrack::Table>,
    /// UNCLASSIFIED flows per reason (`Unclassified::ALL` order), since start.
    unclassified: [AtomicU64; 4],
}

fn read<T>(l: &Option<Arc<RwLock<Arc<T>>>>) -> Option<Arc<T>> {
    l.as_ref().map(|l| l.read().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Builds the enricher the config asks for; `None` when it has nothing to work from (IMDS
/// disabled, no files, no conntrack). Must run before capabilities are dropped (conntrack).
pub fn build(cfg: &Config) -> anyhow::Result<Option<Box<dyn Enricher>>> {
    let subnets = cfg.subnet_map.as_deref().map(|p| Watched::open("subnet map", p, SubnetMap::parse)).transpose()?;
    let ranges = cfg.ip_ranges.as_deref().map(|p| Watched::open("ip ranges", p, IpRanges::parse)).transpose()?;
    if let Some(w) = &subnets {
        let m = w.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::info!(subnets = m.subnets, cidrs = m.table.len(), "subnet map loaded");
    }
    if let Some(w) = &ranges {
        let r = w.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::info!(sync_token = %r.sync_token, regional_prefixes = r.region.len(), "ip ranges loaded");
    }
    let nat = if cfg.conntrack {
        match conntrack::Table::open() {
            Ok(t) => {
                tracing::info!(translated = t.stats().0, "following conntrack for SNAT/DNAT");
                Some(t)
            }
            Err(e) => {
                tracing::warn!("conntrack unavailable ({e}): flows get no snat_ip/dnat_ip");
                None
            }
        }
    } else {
        None
    };
    let metadata = match imds::Client::from_env() {
        Some(c) => {
            let shared = instance::Shared::default();
            instance::spawn_refresh(
                c.with_v1_fallback(cfg.imds_v1_fallback),
                cfg.metadata_refresh_interval,
                shared.clone(),
            );
            Some(shared)
        }
        None => {
            tracing::info!("EC2 instance metadata disabled by AWS_EC2_METADATA_DISABLED");
            None
        }
    };
    if metadata.is_none() && subnets.is_none() && ranges.is_none() && nat.is_none() {
        return Ok(None);
    }
    let e = Ec2Enricher::new(
        metadata,
        subnets.as_ref().map(|w| w.current.clone()),
        ranges.as_ref().map(|w| w.current.clone()),
        nat,
    );
    aws_files::spawn_reload(subnets, ranges);
    Ok(Some(Box::new(e)))
}

impl Ec2Enricher {
    pub fn new(
        metadata: Option<instance::Shared>,
        subnets: Option<Arc<RwLock<Arc<SubnetMap>>>>,
        ranges: Option<Arc<RwLock<Arc<IpRanges>>>>,
        nat: Option<conntrack::Table>,
    ) -> Ec2Enricher {
        Ec2Enricher { metadata, subnets, ranges, nat, unclassified: Default::default() }
    }

    fn enrich_flow(&self, f: &mut FlowRecord, w: &WindowInputs) {
        let e = &mut f.enrichment;
        let nat = self.nat.as_ref().and_then(|t| t.lookup(f.role, f.local_ip, f.remote_ip, f.target_port));
        let remote = nat.map_or(f.remote_ip, |n| n.real_remote);
        if let Some(n) = nat {
            e.snat_ip = n.snat_ip.map(|ip| ip.to_string());
            e.dnat_ip = n.dnat_ip.map(|ip| ip.to_string());
        }
        let snap = &*w.snapshot;
        let (subnets, ranges) = (w.subnets.as_deref(), w.ranges.as_deref());
        let i = snap.interfaces.iter().position(|i| i.local_ips.contains(&f.local_ip));
        let iface = i.map(|i| &snap.interfaces[i]);
        if let Some(l) = i.and_then(|i| w.locals.get(i)).filter(|l| l.local_instance_id.is_some()) {
            e.local_instance_id.clone_from(&l.local_instance_id);
            e.local_instance_arn.clone_from(&l.local_instance_arn);
            e.local_subnet_id.clone_from(&l.local_subnet_id);
            e.local_subnet_arn.clone_from(&l.local_subnet_arn);
            e.local_vpc_id.clone_from(&l.local_vpc_id);
            e.local_vpc_arn.clone_from(&l.local_vpc_arn);
            e.local_az.clone_from(&l.local_az);
            e.local_region.clone_from(&l.local_region);
        }
        let local = iface.map(|iface| Local { snapshot: snap, iface });
        e.destination_category = Some(match classify::classify(local.as_ref(), remote, subnets, ranges, e) {
            Ok(c) => c,
            Err(why) => {
                let i = Unclassified::ALL.iter().position(|w| *w == why).unwrap_or(0);
                self.unclassified[i].fetch_add(1, Ordering::Relaxed);
                DestinationCategory::Unclassified
            }
        });
    }
}

/// What one `enrich` call reads, taken once for all flows.
struct WindowInputs {
    snapshot: Arc<Snapshot>,
    locals: Vec<Enrichment>,
    subnets: Option<Arc<SubnetMap>>,
    ranges: Option<Arc<IpRanges>>,
}

fn local_fields(snap: &Snapshot, iface: &instance::Interface) -> Enrichment {
    let Some(inst) = &snap.instance else { return Enrichment::default() };
    Enrichment {
        local_instance_id: Some(inst.id.clone()),
        local_instance_arn: Some(inst.arn("instance", &inst.id)),
        local_subnet_id: iface.subnet_id.clone(),
        local_subnet_arn: iface.subnet_id.as_ref().map(|s| inst.arn("subnet", s)),
        local_vpc_id: iface.vpc_id.clone(),
        local_vpc_arn: iface.vpc_id.as_ref().map(|v| inst.arn("vpc", v)),
        local_az: Some(inst.az.clone()),
        local_region: Some(inst.region.clone()),
        ..Default::default()
    }
}

impl Enricher for Ec2Enricher {
    fn enrich(&self, report: &mut Report) {
        let started = Instant::now();
        let snapshot = self.metadata.as_ref().map(|m| m.get()).unwrap_or_default();
        // The local fields of each interface, ARNs included, built once per window.
        let locals = snapshot.interfaces.iter().map(|i| local_fields(&snapshot, i)).collect();
        let w = WindowInputs { locals, subnets: read(&self.subnets), ranges: read(&self.ranges), snapshot };
        for f in &mut report.flows {
            self.enrich_flow(f, &w);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let reasons: Vec<String> = Unclassified::ALL
                .iter()
                .zip(&self.unclassified)
                .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
                .map(|(w, n)| format!("{}: {}", w.describe(), n.load(Ordering::Relaxed)))
                .collect();
            let (translated, skipped, lost) = self.nat.as_ref().map(|t| t.stats()).unwrap_or_default();
            tracing::debug!(
                flows = report.flows.len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                nat_translated = translated,
                nat_skipped_full = skipped,
                nat_lost_events = lost,
                "enriched; UNCLASSIFIED since start by reason: [{}]",
                reasons.join("; ")
            );
        }
    }
}

#[cfg(test)]
mod tests;
