//! The enricher over a fake IMDS (real HTTP) and the fixture files, and its cost per window.

use std::{
    net::IpAddr,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use agent_common::report::{DestinationCategory as Cat, FlowRecord, Protocol, Report, Role};

use super::Ec2Enricher;
use crate::{
    enrich::{
        Enricher,
        aws_files::{IpRanges, SubnetMap, fixtures},
        conntrack::{Conn, Table, Tuple},
        instance,
    },
    imds::{
        self,
        fake::{FakeImds, Identity, Interface},
    },
};

pub fn lab_imds() -> FakeImds {
    let id = Identity {
        account: "111122223333",
        region: "us-east-1",
        az: "us-east-1a",
        az_id: "use1-az4",
        instance_id: "i-0123456789abcdef0",
        instance_type: "m7i.large",
    };
    let eth0 = Interface {
        mac: "0e:11:22:33:44:01",
        interface_id: "eni-0123456789abcdef0",
        subnet_id: "subnet-0a1b2c3d4e5f6a7b8",
        vpc_id: "vpc-0a1b2c3d4e5f60718",
        ipv4s: vec!["10.77.0.1"],
        ipv6s: vec!["fd77::1"],
        subnet_ipv4: "10.77.0.0/24",
        subnet_ipv6s: vec!["fd77::/64"],
        vpc_ipv4s: vec!["10.77.0.0/16"],
        vpc_ipv6s: vec!["fd77::/56"],
    };
    FakeImds::start(FakeImds::instance(&id, &[eth0]))
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn flow(local: &str, remote: &str, port: u16, role: Role) -> FlowRecord {
    FlowRecord {
        protocol: Protocol::Tcp,
        local_ip: local.parse().unwrap(),
        remote_ip: remote.parse().unwrap(),
        target_port: port,
        role,
        enrichment: Default::default(),
        metrics: Default::default(),
    }
}

fn report(flows: Vec<FlowRecord>) -> Report {
    Report {
        report_id: "r".into(),
        schema_version: agent_common::report::SCHEMA_VERSION,
        window: agent_common::report::Window {
            start: "2026-11-22T10:00:00Z".parse().unwrap(),
            end: "2026-11-22T10:00:30Z".parse().unwrap(),
        },
        agent: agent_common::report::AgentInfo { version: "t".into(), hostname: "h".into() },
        flows,
        other: Default::default(),
        agent_stats: Default::default(),
    }
}

type Shared<T> = Arc<RwLock<Arc<T>>>;

fn files() -> (Shared<SubnetMap>, Shared<IpRanges>) {
    (
        Arc::new(RwLock::new(Arc::new(SubnetMap::parse(fixtures::DESCRIBE_SUBNETS).unwrap()))),
        Arc::new(RwLock::new(Arc::new(IpRanges::parse(fixtures::IP_RANGES).unwrap()))),
    )
}

#[test]
fn snapshot_from_imds() {
    let f = lab_imds();
    let s = rt().block_on(instance::fetch(&imds::Client::new(&f.endpoint()))).unwrap();
    let i = s.instance.as_ref().unwrap();
    assert_eq!((i.id.as_str(), i.instance_type.as_str()), ("i-0123456789abcdef0", "m7i.large"));
    assert_eq!((i.region.as_str(), i.az.as_str(), i.az_id.as_deref()), ("us-east-1", "us-east-1a", Some("use1-az4")));
    assert_eq!(i.account, "111122223333");
    let eth0 = s.interface_of("fd77::1".parse().unwrap()).unwrap();
    assert_eq!(eth0.id.as_deref(), Some("eni-0123456789abcdef0"));
    assert_eq!(eth0.local_ips, ["10.77.0.1".parse::<IpAddr>().unwrap(), "fd77::1".parse().unwrap()]);
    assert_eq!(eth0.subnet_cidrs.len(), 2);
    assert_eq!(eth0.vpc_cidrs.len(), 2);
    assert_eq!(f.token_requests(), 1, "one session for the whole refresh");
}

#[test]
fn refresh_survives_a_failing_imds_and_keeps_the_last_snapshot() {
    let f = lab_imds();
    let shared = instance::Shared::default();
    rt().block_on(async {
        instance::spawn_refresh(imds::Client::new(&f.endpoint()), Duration::from_millis(200), shared.clone());
        for _ in 0..50 {
            if shared.get().instance.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(shared.get().instance.is_some());
        f.set_get_status(Some(500));
        let gets = f.gets();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(f.gets() > gets, "kept refreshing");
        assert!(shared.get().instance.is_some(), "kept the last good snapshot");
    });
}

#[test]
fn flows_get_local_and_remote_fields_and_categories() {
    let f = lab_imds();
    let snap = rt().block_on(instance::fetch(&imds::Client::new(&f.endpoint()))).unwrap();
    let shared = instance::Shared::default();
    shared.set_for_test(snap);
    let (sm, ir) = files();
    let nat = Table::default();
    // 10.77.0.1 dials a "service" 10.96.0.10:80, DNATed to 10.78.0.5 (another VPC).
    let t = |s: &str, d: &str, sp, dp| Tuple { src: s.parse().unwrap(), dst: d.parse().unwrap(), sport: sp, dport: dp };
    nat.insert_for_test(Conn {
        id: 1,
        orig: t("10.77.0.1", "10.96.0.10", 40000, 80),
        reply: t("10.78.0.5", "10.77.0.1", 80, 40000),
    });
    let e = Ec2Enricher::new(Some(shared), Some(sm), Some(ir), Some(nat));
    let mut r = report(vec![
        flow("10.77.0.1", "10.77.0.9", 443, Role::Client),
        flow("10.77.0.1", "10.77.1.9", 443, Role::Client),
        flow("fd77::1", "2600:1fa0:80::1", 443, Role::Client),
        flow("10.77.0.1", "10.96.0.10", 80, Role::Client),
        flow("192.168.9.9", "10.77.1.9", 443, Role::Client),
        flow("10.77.0.1", "198.51.100.1", 443, Role::Client),
    ]);
    e.enrich(&mut r);
    let cats: Vec<_> = r.flows.iter().map(|f| f.enrichment.destination_category.unwrap()).collect();
    assert_eq!(cats, [Cat::IntraAz, Cat::InterAz, Cat::AmazonS3, Cat::InterVpc, Cat::Unclassified, Cat::Unclassified]);
    let l = &r.flows[0].enrichment;
    assert_eq!(l.local_instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(
        l.local_instance_arn.as_deref(),
        Some("arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0")
    );
    assert_eq!(
        l.local_subnet_arn.as_deref(),
        Some("arn:aws:ec2:us-east-1:111122223333:subnet/subnet-0a1b2c3d4e5f6a7b8")
    );
    assert_eq!(l.local_vpc_arn.as_deref(), Some("arn:aws:ec2:us-east-1:111122223333:vpc/vpc-0a1b2c3d4e5f60718"));
    assert_eq!((l.local_az.as_deref(), l.local_region.as_deref()), (Some("us-east-1a"), Some("us-east-1")));
    assert_eq!(l.remote_subnet_id.as_deref(), Some("subnet-0a1b2c3d4e5f6a7b8"));
    assert_eq!(
        r.flows[2].enrichment.local_subnet_id.as_deref(),
        Some("subnet-0a1b2c3d4e5f6a7b8"),
        "by the IPv6 address"
    );
    let natted = &r.flows[3].enrichment;
    assert_eq!((natted.dnat_ip.as_deref(), natted.snat_ip.as_deref()), (Some("10.78.0.5"), None));
    assert_eq!(natted.remote_vpc_id.as_deref(), Some("vpc-0f9e8d7c6b5a43210"));
    // No interface owns 192.168.9.9: no local fields, and not classified relative to nothing.
    assert_eq!(r.flows[4].enrichment.local_instance_id, None);
    assert_eq!(r.flows[4].enrichment.remote_subnet_id.as_deref(), Some("subnet-0b1c2d3e4f5a6b7c8"));
    let counts: Vec<u64> = e.unclassified.iter().map(|n| n.load(std::sync::atomic::Ordering::Relaxed)).collect();
    assert_eq!(counts, [1, 0, 0, 1], "one without local metadata, one unknown remote");
}

/// Cost of enriching one report window of 500 flows with everything on: a large subnet map,
/// an ip-ranges table of real size, and a conntrack table. `cargo xtask bench enrich` runs it
/// in release mode and prints the figure.
#[test]
#[ignore = "benchmark: cargo xtask bench enrich"]
fn bench_enrich_500_flows() {
    let f = lab_imds();
    let snap = rt().block_on(instance::fetch(&imds::Client::new(&f.endpoint()))).unwrap();
    let shared = instance::Shared::default();
    shared.set_for_test(snap);
    // 2,000 subnets and 12,000 ip-ranges prefixes (ip-ranges.json has about 10,000).
    let subnets: Vec<String> = (0..2000)
        .map(|i| {
            format!(
                r#"{{"AvailabilityZone":"us-east-1{}","CidrBlock":"10.{}.{}.0/24","SubnetId":"subnet-{i:017x}","VpcId":"vpc-{:017x}","OwnerId":"111122223333","SubnetArn":"arn:aws:ec2:us-east-1:111122223333:subnet/subnet-{i:017x}","Ipv6CidrBlockAssociationSet":[]}}"#,
                ["a", "b", "c"][i % 3],
                78 + i / 256,
                i % 256,
                i / 100
            )
        })
        .collect();
    let sm = SubnetMap::parse(&format!(r#"{{"Subnets":[{}]}}"#, subnets.join(","))).unwrap();
    let prefixes: Vec<String> = (0..10000)
        .map(|i| {
            let (service, region) = [("S3", "us-east-1"), ("EC2", "eu-west-1"), ("AMAZON", "us-west-2"), ("DYNAMODB", "us-east-1")][i % 4];
            format!(
                r#"{{"ip_prefix":"{}.{}.{}.0/{}","region":"{region}","service":"{service}","network_border_group":"{region}"}}"#,
                3 + i % 50,
                (i / 50) % 256,
                (i * 7) % 256,
                [16, 20, 22, 24][i % 4]
            )
        })
        .collect();
    let v6: Vec<String> = (0..2000)
        .map(|i| format!(r#"{{"ipv6_prefix":"2600:{:x}::/{}","region":"us-east-1","service":"EC2","network_border_group":"us-east-1"}}"#, 0x1f00 + i, [32, 40, 48, 56][i % 4]))
        .collect();
    let ir = IpRanges::parse(&format!(
        r#"{{"syncToken":"1","createDate":"2026-11-21-23-53-07","prefixes":[{}],"ipv6_prefixes":[{}]}}"#,
        prefixes.join(","),
        v6.join(",")
    ))
    .unwrap();
    let nat = Table::default();
    let t =
        |s: String, d: String, sp, dp| Tuple { src: s.parse().unwrap(), dst: d.parse().unwrap(), sport: sp, dport: dp };
    for i in 0..5000u32 {
        nat.insert_for_test(Conn {
            id: i,
            orig: t("10.77.0.1".into(), format!("10.96.{}.{}", i / 256, i % 256), 30000 + i as u16, 80),
            reply: t(format!("10.78.{}.{}", i / 256 % 8, i % 256), "10.77.0.1".into(), 80, 30000 + i as u16),
        });
    }
    let e = Ec2Enricher::new(
        Some(shared),
        Some(Arc::new(RwLock::new(Arc::new(sm)))),
        Some(Arc::new(RwLock::new(Arc::new(ir)))),
        Some(nat),
    );
    let flows: Vec<FlowRecord> = (0..500u32)
        .map(|i| match i % 5 {
            0 => flow("10.77.0.1", &format!("10.{}.{}.9", 78 + i % 7, i % 256), 443, Role::Client),
            1 => flow("10.77.0.1", &format!("10.96.{}.{}", i / 256, i % 256), 80, Role::Client),
            2 => flow("10.77.0.1", &format!("{}.{}.{}.1", 3 + i % 50, i % 256, (i * 3) % 256), 443, Role::Client),
            3 => flow("fd77::1", &format!("2600:{:x}::1", 0x1f00 + i), 443, Role::Client),
            _ => flow("10.77.0.1", &format!("198.51.100.{}", i % 256), 8080 + i as u16, Role::Server),
        })
        .collect();
    let template = report(flows);
    let rounds = 200;
    let mut reports: Vec<Report> = (0..rounds).map(|_| template.clone()).collect();
    let start = Instant::now();
    for r in &mut reports {
        e.enrich(r);
    }
    let per = start.elapsed() / rounds as u32;
    let classified =
        reports[0].flows.iter().filter(|f| f.enrichment.destination_category != Some(Cat::Unclassified)).count();
    println!(
        "enrich: {per:?} per report window of 500 flows ({:.2} us per flow; {classified}/500 classified; 2000 subnets, 12000 prefixes, 5000 NAT entries)",
        per.as_secs_f64() * 1e6 / 500.0
    );
}
