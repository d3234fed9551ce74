//! Destination category and remote side of one flow, from what is known: this instance's
//! interfaces (IMDS), the subnet map, and ip-ranges.json. Nothing is guessed: without the
//! inputs that decide it, a flow is UNCLASSIFIED and the reason is counted.

use std::net::IpAddr;

use agent_common::report::{DestinationCategory as Cat, Enrichment};

use super::{
    aws_files::{IpRanges, RemoteSubnet, SubnetMap},
    instance::{Interface, Snapshot},
};

/// Why a flow is UNCLASSIFIED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unclassified {
    /// The remote is known, but not this side (no EC2 metadata for the local address).
    NoLocalMetadata,
    /// In this instance's VPC, but in no known subnet: its AZ is unknown (add the subnet map).
    LocalVpcUnknownSubnet,
    /// An AWS address of this region outside the known VPCs (e.g. another VPC's public IP).
    SameRegionAws,
    /// Nothing known about the remote address.
    UnknownRemote,
}

impl Unclassified {
    pub const ALL: [Unclassified; 4] = [
        Unclassified::NoLocalMetadata,
        Unclassified::LocalVpcUnknownSubnet,
        Unclassified::SameRegionAws,
        Unclassified::UnknownRemote,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Unclassified::NoLocalMetadata => "no EC2 metadata for the local address",
            Unclassified::LocalVpcUnknownSubnet => "remote in the local VPC but in no known subnet (give a subnet map)",
            Unclassified::SameRegionAws => "AWS address of this region outside the known VPCs",
            Unclassified::UnknownRemote => "remote not in the local VPC, the subnet map or ip-ranges.json",
        }
    }
}

/// The local side of a flow, when IMDS knows the local address.
pub struct Local<'a> {
    pub snapshot: &'a Snapshot,
    pub iface: &'a Interface,
}

fn fill_remote_subnet(e: &mut Enrichment, s: &RemoteSubnet) {
    e.remote_subnet_id = Some(s.subnet_id.clone());
    e.remote_subnet_arn = s.subnet_arn.clone();
    e.remote_vpc_id = Some(s.vpc_id.clone());
    e.remote_vpc_arn = s.vpc_arn.clone();
    e.remote_az = Some(s.az.clone());
    e.remote_region = Some(s.region.clone());
}

/// Fills `e`'s remote_* fields (what is known) and returns the category, or why there is none.
pub fn classify(
    local: Option<&Local>,
    remote: IpAddr,
    subnets: Option<&SubnetMap>,
    ranges: Option<&IpRanges>,
    e: &mut Enrichment,
) -> Result<Cat, Unclassified> {
    // AWS service endpoints first: they decide the category on their own.
    if let Some(r) = ranges {
        if let Some(region) = r.s3.lookup(remote) {
            e.remote_region = Some(region.clone());
            return Ok(Cat::AmazonS3);
        }
        if let Some(region) = r.dynamodb.lookup(remote) {
            e.remote_region = Some(region.clone());
            return Ok(Cat::AmazonDynamodb);
        }
    }
    let instance = local.and_then(|l| l.snapshot.instance.as_ref());
    // The remote is this instance (another of its addresses).
    if let (Some(l), Some(inst)) = (local, instance)
        && let Some(other) = l.snapshot.interface_of(remote)
    {
        e.remote_instance_id = Some(inst.id.clone());
        e.remote_instance_arn = Some(inst.arn("instance", &inst.id));
        if let Some(s) = &other.subnet_id {
            e.remote_subnet_id = Some(s.clone());
            e.remote_subnet_arn = Some(inst.arn("subnet", s));
        }
        if let Some(v) = &other.vpc_id {
            e.remote_vpc_id = Some(v.clone());
            e.remote_vpc_arn = Some(inst.arn("vpc", v));
        }
        e.remote_az = Some(inst.az.clone());
        e.remote_region = Some(inst.region.clone());
        return Ok(if other.vpc_id == l.iface.vpc_id { Cat::IntraAz } else { Cat::InterVpc });
    }
    if let Some(s) = subnets.and_then(|m| m.table.lookup(remote)) {
        fill_remote_subnet(e, s);
        let (Some(l), Some(inst)) = (local, instance) else { return Err(Unclassified::NoLocalMetadata) };
        return Ok(if s.region != inst.region {
            Cat::InterRegion
        } else if l.iface.vpc_id.as_deref() != Some(s.vpc_id.as_str()) {
            Cat::InterVpc
        } else if s.az != inst.az {
            Cat::InterAz
        } else {
            Cat::IntraAz
        });
    }
    if let (Some(l), Some(inst)) = (local, instance) {
        // A subnet of one of this instance's interfaces: subnets live in one AZ, this one.
        if let Some(iface) = l.snapshot.interfaces.iter().find(|i| i.subnet_cidrs.iter().any(|c| c.contains(&remote))) {
            if let Some(s) = &iface.subnet_id {
                e.remote_subnet_id = Some(s.clone());
                e.remote_subnet_arn = Some(inst.arn("subnet", s));
            }
            if let Some(v) = &iface.vpc_id {
                e.remote_vpc_id = Some(v.clone());
                e.remote_vpc_arn = Some(inst.arn("vpc", v));
            }
            e.remote_az = Some(inst.az.clone());
            e.remote_region = Some(inst.region.clone());
            return Ok(if iface.vpc_id == l.iface.vpc_id { Cat::IntraAz } else { Cat::InterVpc });
        }
        if l.iface.vpc_cidrs.iter().any(|c| c.contains(&remote)) {
            if let Some(v) = &l.iface.vpc_id {
                e.remote_vpc_id = Some(v.clone());
                e.remote_vpc_arn = Some(inst.arn("vpc", v));
            }
            e.remote_region = Some(inst.region.clone());
            return Err(Unclassified::LocalVpcUnknownSubnet);
        }
    }
    if let Some(region) = ranges.and_then(|r| r.region.lookup(remote)) {
        e.remote_region = Some(region.clone());
        return match instance {
            Some(inst) if *region != inst.region => Ok(Cat::InterRegion),
            Some(_) => Err(Unclassified::SameRegionAws),
            None => Err(Unclassified::NoLocalMetadata),
        };
    }
    Err(if instance.is_none() { Unclassified::NoLocalMetadata } else { Unclassified::UnknownRemote })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{aws_files::fixtures, instance::Instance};

    fn snapshot() -> Snapshot {
        Snapshot {
            instance: Some(Instance {
                id: "i-0123456789abcdef0".into(),
                instance_type: "m7i.large".into(),
                region: "us-east-1".into(),
                az: "us-east-1a".into(),
                az_id: Some("use1-az4".into()),
                account: "111122223333".into(),
                partition: "aws".into(),
            }),
            interfaces: vec![Interface {
                mac: "0e:00:00:00:00:01".into(),
                id: Some("eni-0123456789abcdef0".into()),
                local_ips: vec!["10.77.0.1".parse().unwrap(), "fd77::1".parse().unwrap()],
                subnet_id: Some("subnet-0a1b2c3d4e5f6a7b8".into()),
                subnet_cidrs: vec!["10.77.0.0/24".parse().unwrap(), "fd77::/64".parse().unwrap()],
                vpc_id: Some("vpc-0a1b2c3d4e5f60718".into()),
                vpc_cidrs: vec!["10.77.0.0/16".parse().unwrap(), "fd77::/56".parse().unwrap()],
            }],
        }
    }

    fn run(snap: &Snapshot, remote: &str, subnets: bool, ranges: bool) -> (Result<Cat, Unclassified>, Enrichment) {
        let sm = SubnetMap::parse(fixtures::DESCRIBE_SUBNETS).unwrap();
        let ir = IpRanges::parse(fixtures::IP_RANGES).unwrap();
        let local = snap.interfaces.first().map(|iface| Local { snapshot: snap, iface });
        let mut e = Enrichment::default();
        let c =
            classify(local.as_ref(), remote.parse().unwrap(), subnets.then_some(&sm), ranges.then_some(&ir), &mut e);
        (c, e)
    }

    #[test]
    fn every_category_from_its_input() {
        let s = snapshot();
        let cat = |remote, sm, ir| run(&s, remote, sm, ir).0;
        // The local subnet (IMDS alone).
        assert_eq!(cat("10.77.0.9", false, false), Ok(Cat::IntraAz));
        assert_eq!(cat("fd77::9", false, false), Ok(Cat::IntraAz));
        // Elsewhere in the local VPC: the subnet map gives the AZ.
        assert_eq!(cat("10.77.1.9", false, false), Err(Unclassified::LocalVpcUnknownSubnet));
        assert_eq!(cat("10.77.1.9", true, false), Ok(Cat::InterAz));
        assert_eq!(cat("fd77:0:0:1::9", true, false), Ok(Cat::InterAz));
        assert_eq!(cat("10.78.0.9", true, false), Ok(Cat::InterVpc));
        assert_eq!(cat("10.79.0.9", true, false), Ok(Cat::InterRegion));
        // ip-ranges.json.
        assert_eq!(cat("52.216.10.1", false, true), Ok(Cat::AmazonS3));
        assert_eq!(cat("2600:1fa0:80::1", false, true), Ok(Cat::AmazonS3));
        assert_eq!(cat("3.218.180.7", false, true), Ok(Cat::AmazonDynamodb));
        assert_eq!(cat("3.34.1.9", false, true), Ok(Cat::InterRegion));
        assert_eq!(cat("2406:da12::1", false, true), Ok(Cat::InterRegion));
        assert_eq!(cat("44.200.0.1", false, true), Err(Unclassified::SameRegionAws));
        assert_eq!(cat("13.32.0.1", true, true), Err(Unclassified::UnknownRemote));
        assert_eq!(cat("3.34.1.9", false, false), Err(Unclassified::UnknownRemote));
        // Without local metadata nothing relative is decided; services still are.
        let off = Snapshot::default();
        assert_eq!(run(&off, "10.77.1.9", true, true).0, Err(Unclassified::NoLocalMetadata));
        assert_eq!(run(&off, "52.216.10.1", true, true).0, Ok(Cat::AmazonS3));
    }

    #[test]
    fn remote_fields_as_the_api_spells_them() {
        let s = snapshot();
        let (_, e) = run(&s, "10.78.0.9", true, false);
        assert_eq!(e.remote_subnet_id.as_deref(), Some("subnet-0c2d3e4f5a6b7c8d9"));
        assert_eq!(
            e.remote_subnet_arn.as_deref(),
            Some("arn:aws:ec2:us-east-1:444455556666:subnet/subnet-0c2d3e4f5a6b7c8d9")
        );
        assert_eq!(e.remote_vpc_id.as_deref(), Some("vpc-0f9e8d7c6b5a43210"));
        assert_eq!(e.remote_vpc_arn.as_deref(), Some("arn:aws:ec2:us-east-1:444455556666:vpc/vpc-0f9e8d7c6b5a43210"));
        assert_eq!((e.remote_az.as_deref(), e.remote_region.as_deref()), (Some("us-east-1a"), Some("us-east-1")));
        let (c, e) = run(&s, "10.77.0.1", false, false);
        assert_eq!(c, Ok(Cat::IntraAz));
        assert_eq!(e.remote_instance_id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(
            e.remote_instance_arn.as_deref(),
            Some("arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0")
        );
        let (_, e) = run(&s, "10.77.200.1", false, false);
        assert_eq!(e.remote_vpc_id.as_deref(), Some("vpc-0a1b2c3d4e5f60718"));
        assert_eq!(e.remote_az, None);
    }
}
