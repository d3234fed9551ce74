//! This instance and its network interfaces, read from IMDS by a background task into a snapshot
//! that enrichment reads without waiting.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::imds::{self, ImdsError};

/// More interfaces than any instance type supports: a bound on what a bad IMDS can make us fetch.
const MAX_INTERFACES: usize = 64;
/// First retries after a failure come quicker than the refresh period.
const RETRY_MIN: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub region: String,
    pub az: String,
    pub az_id: Option<String>,
    pub account: String,
    pub partition: String,
}

impl Instance {
    pub fn arn(&self, kind: &str, id: &str) -> String {
        format!("arn:{}:ec2:{}:{}:{kind}/{id}", self.partition, self.region, self.account)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    pub mac: String,
    pub id: Option<String>,
    pub local_ips: Vec<IpAddr>,
    pub subnet_id: Option<String>,
    pub subnet_cidrs: Vec<IpNet>,
    pub vpc_id: Option<String>,
    pub vpc_cidrs: Vec<IpNet>,
}

/// What IMDS said at the last successful refresh (empty before, and off EC2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub instance: Option<Instance>,
    pub interfaces: Vec<Interface>,
}

impl Snapshot {
    /// The interface that owns `ip`.
    pub fn interface_of(&self, ip: IpAddr) -> Option<&Interface> {
        self.interfaces.iter().find(|i| i.local_ips.contains(&ip))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument {
    account_id: String,
    availability_zone: String,
    instance_id: String,
    instance_type: String,
    region: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("IMDS has no {0}")]
    Missing(&'static str),
    #[error("invalid instance identity document from IMDS: {0}")]
    Identity(serde_json::Error),
}

/// Shared, swapped whole by the refresh task.
#[derive(Clone, Default)]
pub struct Shared(Arc<RwLock<Arc<Snapshot>>>);

impl Shared {
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, s: Snapshot) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }
}

/// Lines of a list value; each parsed, the bad ones skipped with a warning.
fn parse_list<T: std::str::FromStr>(text: Option<String>, what: &str, mac: &str) -> Vec<T> {
    let text = text.unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|l| match l.parse() {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(mac, "IMDS gave an invalid {what} {l:?}; ignored");
                None
            }
        })
        .collect()
}

pub async fn fetch(c: &imds::Client) -> Result<Snapshot, FetchError> {
    let doc = c
        .get("/latest/dynamic/instance-identity/document")
        .await?
        .ok_or(FetchError::Missing("instance identity document"))?;
    let doc: IdentityDocument = serde_json::from_str(&doc).map_err(FetchError::Identity)?;
    let az_id = c.get("/latest/meta-data/placement/availability-zone-id").await?.map(|s| s.trim().to_string());
    let partition = c
        .get("/latest/meta-data/services/partition")
        .await?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "aws".into());
    let instance = Instance {
        id: doc.instance_id,
        instance_type: doc.instance_type,
        region: doc.region,
        az: doc.availability_zone,
        az_id,
        account: doc.account_id,
        partition,
    };
    let macs = c.get("/latest/meta-data/network/interfaces/macs/").await?.unwrap_or_default();
    let mut interfaces = Vec::new();
    for mac in macs.lines().map(|l| l.trim().trim_end_matches('/')).filter(|l| !l.is_empty()).take(MAX_INTERFACES) {
        let base = format!("/latest/meta-data/network/interfaces/macs/{mac}");
        let one = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let mut local_ips: Vec<IpAddr> = parse_list(c.get(&format!("{base}/local-ipv4s")).await?, "IPv4 address", mac);
        local_ips.extend(parse_list::<IpAddr>(c.get(&format!("{base}/ipv6s")).await?, "IPv6 address", mac));
        let mut subnet_cidrs: Vec<IpNet> =
            parse_list(c.get(&format!("{base}/subnet-ipv4-cidr-block")).await?, "subnet CIDR", mac);
        subnet_cidrs.extend(parse_list::<IpNet>(
            c.get(&format!("{base}/subnet-ipv6-cidr-blocks")).await?,
            "subnet IPv6 CIDR",
            mac,
        ));
        let mut vpc_cidrs: Vec<IpNet> =
            parse_list(c.get(&format!("{base}/vpc-ipv4-cidr-blocks")).await?, "VPC CIDR", mac);
        vpc_cidrs.extend(parse_list::<IpNet>(
            c.get(&format!("{base}/vpc-ipv6-cidr-blocks")).await?,
            "VPC IPv6 CIDR",
            mac,
        ));
        interfaces.push(Interface {
            mac: mac.to_string(),
            id: one(c.get(&format!("{base}/interface-id")).await?),
            local_ips,
            subnet_id: one(c.get(&format!("{base}/subnet-id")).await?),
            subnet_cidrs,
            vpc_id: one(c.get(&format!("{base}/vpc-id")).await?),
            vpc_cidrs,
        });
    }
    Ok(Snapshot { instance: Some(instance), interfaces })
}

/// Refresh `shared` from IMDS now and every `period`; after a failure, retry sooner (doubling from
/// 5 s up to the period) and keep the last good snapshot.
pub fn spawn_refresh(client: imds::Client, period: Duration, shared: Shared) {
    tokio::spawn(async move {
        let mut ever_ok = false;
        let mut complained = false;
        let mut retry = RETRY_MIN.min(period);
        loop {
            let wait = match fetch(&client).await {
                Ok(s) => {
                    if shared.get().as_ref() != &s {
                        tracing::info!(
                            instance = s.instance.as_ref().map(|i| i.id.as_str()).unwrap_or("-"),
                            interfaces = s.interfaces.len(),
                            "EC2 instance metadata read from {}",
                            client.endpoint()
                        );
                    }
                    shared.set(s);
                    (ever_ok, complained, retry) = (true, false, RETRY_MIN.min(period));
                    period
                }
                Err(e) => {
                    if !complained && ever_ok {
                        tracing::warn!("refreshing EC2 instance metadata failed ({e}); keeping what was read before");
                    } else if !complained {
                        tracing::info!(
                            "no EC2 instance metadata ({e}); flows carry no local_* fields until it answers"
                        );
                    } else {
                        tracing::debug!("EC2 instance metadata still unavailable: {e}");
                    }
                    complained = true;
                    let w = retry;
                    retry = (retry * 2).min(period);
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
}

#[cfg(test)]
impl Shared {
    pub fn set_for_test(&self, s: Snapshot) {
        self.set(s)
    }
}
