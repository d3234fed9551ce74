//! The optional classification inputs, in the formats AWS publishes them: a subnet map as
//! `aws ec2 describe-subnets` prints it, and `ip-ranges.json`. Both are parsed into prefix tables
//! once per (re)load.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use ipnet::IpNet;
use serde::Deserialize;

use super::prefix::PrefixTable;

/// ip-ranges.json is about 2 MB; anything far beyond is not what we think it is.
const MAX_FILE: u64 = 64 * 1024 * 1024;
/// How often the files are checked for changes (modification time and size).
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {path} is {size} bytes, more than the {MAX_FILE} allowed")]
    TooLarge { what: &'static str, path: PathBuf, size: u64 },
    #[error("invalid {what} {path}: {message}")]
    Invalid { what: &'static str, path: PathBuf, message: String },
}

/// A subnet from the subnet map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSubnet {
    pub subnet_id: String,
    pub subnet_arn: Option<String>,
    pub vpc_id: String,
    pub vpc_arn: Option<String>,
    pub az: String,
    pub region: String,
}

#[derive(Default)]
pub struct SubnetMap {
    pub table: PrefixTable<Arc<RemoteSubnet>>,
    pub subnets: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribeSubnets {
    subnets: Vec<Subnet>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Subnet {
    availability_zone: String,
    cidr_block: Option<String>,
    #[serde(default)]
    ipv6_cidr_block_association_set: Vec<Ipv6Association>,
    subnet_id: String,
    vpc_id: String,
    owner_id: Option<String>,
    subnet_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv6Association {
    ipv6_cidr_block: String,
    ipv6_cidr_block_state: Option<Ipv6State>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv6State {
    state: String,
}

/// "arn:aws:ec2:us-east-1:123:subnet/subnet-1" -> ("aws", "us-east-1").
fn arn_partition_region(arn: &str) -> Option<(&str, &str)> {
    let mut p = arn.split(':');
    (p.next()? == "arn").then_some(())?;
    let partition = p.next()?;
    p.next()?;
    Some((partition, p.next()?)).filter(|(_, r)| !r.is_empty())
}

/// "us-east-1a" -> "us-east-1" (used only when the subnet has no ARN).
fn region_of_az(az: &str) -> String {
    az.trim_end_matches(|c: char| c.is_ascii_lowercase()).to_string()
}

impl SubnetMap {
    pub fn parse(text: &str) -> Result<SubnetMap, String> {
        let doc: DescribeSubnets = serde_json::from_str(text).map_err(|e| {
            format!("{e} (expected the JSON `aws ec2 describe-subnets --output json` prints: {{\"Subnets\": [...]}})")
        })?;
        let mut map = SubnetMap::default();
        for s in doc.subnets {
            let (partition, region) = match s.subnet_arn.as_deref().and_then(arn_partition_region) {
                Some((p, r)) => (p.to_string(), r.to_string()),
                None => ("aws".to_string(), region_of_az(&s.availability_zone)),
            };
            let vpc_arn = s.owner_id.as_ref().map(|o| format!("arn:{partition}:ec2:{region}:{o}:vpc/{}", s.vpc_id));
            let subnet = Arc::new(RemoteSubnet {
                subnet_id: s.subnet_id.clone(),
                subnet_arn: s.subnet_arn.clone(),
                vpc_id: s.vpc_id,
                vpc_arn,
                az: s.availability_zone,
                region,
            });
            let mut cidrs = Vec::new();
            if let Some(c) = &s.cidr_block {
                cidrs.push(c.clone());
            }
            cidrs.extend(
                s.ipv6_cidr_block_association_set
                    .into_iter()
                    .filter(|a| a.ipv6_cidr_block_state.as_ref().is_none_or(|st| st.state == "associated"))
                    .map(|a| a.ipv6_cidr_block),
            );
            for c in cidrs {
                let net: IpNet = c.parse().map_err(|e| format!("subnet {}: CIDR {c:?}: {e}", s.subnet_id))?;
                map.table.insert(net.trunc(), subnet.clone());
            }
            map.subnets += 1;
        }
        Ok(map)
    }
}

/// AWS's published address ranges: which prefixes are S3, DynamoDB, and in which region.
#[derive(Default)]
pub struct IpRanges {
    pub s3: PrefixTable<String>,
    pub dynamodb: PrefixTable<String>,
    /// Any service's prefix with a real region (not "GLOBAL").
    pub region: PrefixTable<String>,
    pub sync_token: String,
}

#[derive(Deserialize)]
struct IpRangesDoc {
    #[serde(rename = "syncToken")]
    sync_token: String,
    #[serde(rename = "createDate")]
    #[allow(dead_code)]
    create_date: String,
    prefixes: Vec<V4Prefix>,
    ipv6_prefixes: Vec<V6Prefix>,
}

#[derive(Deserialize)]
struct V4Prefix {
    ip_prefix: String,
    region: String,
    service: String,
}

#[derive(Deserialize)]
struct V6Prefix {
    ipv6_prefix: String,
    region: String,
    service: String,
}

impl IpRanges {
    pub fn parse(text: &str) -> Result<IpRanges, String> {
        let doc: IpRangesDoc = serde_json::from_str(text).map_err(|e| {
            format!("{e} (expected AWS's ip-ranges.json: syncToken, createDate, prefixes, ipv6_prefixes)")
        })?;
        let mut r = IpRanges { sync_token: doc.sync_token, ..Default::default() };
        let v4 = doc.prefixes.into_iter().map(|p| (p.ip_prefix, p.region, p.service));
        let v6 = doc.ipv6_prefixes.into_iter().map(|p| (p.ipv6_prefix, p.region, p.service));
        for (prefix, region, service) in v4.chain(v6) {
            let net: IpNet = prefix.parse().map_err(|e| format!("prefix {prefix:?} ({service}, {region}): {e}"))?;
            let net = net.trunc();
            match service.as_str() {
                "S3" => r.s3.insert(net, region.clone()),
                "DYNAMODB" => r.dynamodb.insert(net, region.clone()),
                _ => {}
            }
            if region != "GLOBAL" {
                r.region.insert(net, region);
            }
        }
        Ok(r)
    }
}

/// One file, its parsed content, and what it looked like when read (to notice changes).
pub struct Watched<T> {
    what: &'static str,
    path: PathBuf,
    parse: fn(&str) -> Result<T, String>,
    stamp: Option<(SystemTime, u64)>,
    pub current: Arc<RwLock<Arc<T>>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn load<T>(what: &'static str, path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<T, FileError> {
    let size = std::fs::metadata(path).map_err(|source| FileError::Read { what, path: path.into(), source })?.len();
    if size > MAX_FILE {
        return Err(FileError::TooLarge { what, path: path.into(), size });
    }
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { what, path: path.into(), source })?;
    parse(&text).map_err(|message| FileError::Invalid { what, path: path.into(), message })
}

impl<T> Watched<T> {
    /// Reads and parses the file now: any problem is an error naming the file.
    pub fn open(
        what: &'static str,
        path: &Path,
        parse: fn(&str) -> Result<T, String>,
    ) -> Result<Watched<T>, FileError> {
        let st = stamp(path);
        let v = load(what, path, parse)?;
        Ok(Watched { what, path: path.into(), parse, stamp: st, current: Arc::new(RwLock::new(Arc::new(v))) })
    }

    /// Reloads when the file changed; a bad new version is logged and the old one kept.
    pub fn reload_if_changed(&mut self) {
        let st = stamp(&self.path);
        if st == self.stamp {
            return;
        }
        self.stamp = st;
        match load(self.what, &self.path, self.parse) {
            Ok(v) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(v);
                tracing::info!(path = %self.path.display(), "reloaded {}", self.what);
            }
            Err(e) => tracing::warn!("{e}; keeping the previous version"),
        }
    }
}

pub fn spawn_reload(mut subnets: Option<Watched<SubnetMap>>, mut ranges: Option<Watched<IpRanges>>) {
    if subnets.is_none() && ranges.is_none() {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RELOAD_CHECK).await;
            if let Some(w) = &mut subnets {
                w.reload_if_changed();
            }
            if let Some(w) = &mut ranges {
                w.reload_if_changed();
            }
        }
    });
}

#[cfg(test)]
pub mod fixtures {
    /// `aws ec2 describe-subnets` output (trimmed to four subnets, fields as the CLI prints them).
    pub const DESCRIBE_SUBNETS: &str = include_str!("../../tests/data/describe-subnets.json");
    /// A slice of ip-ranges.json in its published format.
    pub const IP_RANGES: &str = include_str!("../../tests/data/ip-ranges.json");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_subnets_output_parses() {
        let m = SubnetMap::parse(fixtures::DESCRIBE_SUBNETS).unwrap();
        assert_eq!(m.subnets, 4);
        let s = m.table.lookup("10.77.1.9".parse().unwrap()).unwrap();
        assert_eq!(s.subnet_id, "subnet-0b1c2d3e4f5a6b7c8");
        assert_eq!(s.az, "us-east-1b");
        assert_eq!(s.region, "us-east-1");
        assert_eq!(s.vpc_arn.as_deref(), Some("arn:aws:ec2:us-east-1:111122223333:vpc/vpc-0a1b2c3d4e5f60718"));
        let s6 = m.table.lookup("fd77:0:0:1::5".parse().unwrap()).unwrap();
        assert_eq!(s6.subnet_id, "subnet-0b1c2d3e4f5a6b7c8");
        assert!(m.table.lookup("192.0.2.1".parse().unwrap()).is_none());
    }

    #[test]
    fn ip_ranges_parse() {
        let r = IpRanges::parse(fixtures::IP_RANGES).unwrap();
        assert_eq!(r.s3.lookup("52.216.10.1".parse().unwrap()).map(String::as_str), Some("us-east-1"));
        assert_eq!(r.dynamodb.lookup("3.218.180.7".parse().unwrap()).map(String::as_str), Some("us-east-1"));
        assert_eq!(r.region.lookup("3.34.1.9".parse().unwrap()).map(String::as_str), Some("ap-northeast-2"));
        assert_eq!(r.s3.lookup("2600:1fa0:80::1".parse().unwrap()).map(String::as_str), Some("us-east-1"));
        // CloudFront is GLOBAL: no region.
        assert!(r.region.lookup("13.32.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subnets.json");
        std::fs::write(&p, r#"{"Subnets": [{"SubnetId": "subnet-1"}]}"#).unwrap();
        let e = Watched::open("subnet map", &p, SubnetMap::parse).err().unwrap().to_string();
        assert!(e.contains("subnets.json") && e.contains("AvailabilityZone"), "{e}");
        std::fs::write(&p, r#"{"Subnets": [{"SubnetId": "subnet-1", "VpcId": "vpc-1", "AvailabilityZone": "us-east-1a", "CidrBlock": "10.0.0.0/33"}]}"#).unwrap();
        let e = Watched::open("subnet map", &p, SubnetMap::parse).err().unwrap().to_string();
        assert!(e.contains("10.0.0.0/33") && e.contains("subnet-1"), "{e}");
        let e = Watched::open("ip ranges", &dir.path().join("none.json"), IpRanges::parse).err().unwrap().to_string();
        assert!(e.contains("none.json"), "{e}");
        std::fs::write(&p, r#"{"prefixes": []}"#).unwrap();
        let e = Watched::open("ip ranges", &p, IpRanges::parse).err().unwrap().to_string();
        assert!(e.contains("syncToken"), "{e}");
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_versions_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("subnets.json");
        std::fs::write(&p, fixtures::DESCRIBE_SUBNETS).unwrap();
        let mut w = Watched::open("subnet map", &p, SubnetMap::parse).unwrap();
        let count = |w: &Watched<SubnetMap>| w.current.read().unwrap().subnets;
        assert_eq!(count(&w), 4);
        std::fs::write(&p, r#"{"Subnets": []}"#).unwrap();
        w.reload_if_changed();
        assert_eq!(count(&w), 0);
        std::fs::write(&p, "not json at all, and longer").unwrap();
        w.reload_if_changed();
        assert_eq!(count(&w), 0, "the bad version is not taken");
    }
}
