//! EC2 enrichment end to end: the real agent over real traffic, with a fake IMDS (real HTTP,
//! IMDSv2 tokens) describing the lab's addresses, the classification files in their published
//! formats, and real nftables NAT for conntrack. Root only, like the other kernel tests.

mod support;

use std::{
    collections::HashMap,
    net::TcpListener,
    path::Path,
    time::{Duration, Instant},
};

use agent_common::report::{DestinationCategory as Cat, Enrichment, FlowRecord, Report, Role};
use support::{
    Agent, Lab,
    fake_imds::{FakeImds, Identity, Interface},
    flow, privileged, sh, totals,
};

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name).to_str().unwrap().to_string()
}

/// The lab as one EC2 instance in us-east-1a: eth0 holds namespace a's addresses, eth1 b's.
fn lab_imds(lab: &Lab) -> FakeImds {
    assert_eq!((lab.a4, lab.b4, lab.a6, lab.b6), ("10.77.0.1", "10.77.0.2", "fd77::1", "fd77::2"));
    let id = Identity {
        account: "111122223333",
        region: "us-east-1",
        az: "us-east-1a",
        az_id: "use1-az4",
        instance_id: "i-0123456789abcdef0",
        instance_type: "m7i.large",
    };
    let eni = |mac, id, v4, v6| Interface {
        mac,
        interface_id: id,
        subnet_id: "subnet-0a1b2c3d4e5f6a7b8",
        vpc_id: "vpc-0a1b2c3d4e5f60718",
        ipv4s: vec![v4],
        ipv6s: vec![v6],
        subnet_ipv4: "10.77.0.0/24",
        subnet_ipv6s: vec!["fd77::/64"],
        vpc_ipv4s: vec!["10.77.0.0/16"],
        vpc_ipv6s: vec!["fd77::/56"],
    };
    FakeImds::start(FakeImds::instance(
        &id,
        &[
            eni("0e:11:22:33:44:01", "eni-0aaaaaaaaaaaaaaa1", "10.77.0.1", "fd77::1"),
            eni("0e:11:22:33:44:02", "eni-0aaaaaaaaaaaaaaa2", "10.77.0.2", "fd77::2"),
        ],
    ))
}

fn find<'a>(reports: &'a [Report], local: &str, remote: &str, port: u16, role: Role) -> &'a FlowRecord {
    every(reports, local, remote, port, role)[0]
}

/// Every record of one flow key, one per window it appeared in (connections of one test may
/// straddle a window end: the tests run 1-s windows); at least one.
fn every<'a>(reports: &'a [Report], local: &str, remote: &str, port: u16, role: Role) -> Vec<&'a FlowRecord> {
    let key = flow(local, remote, port, role);
    let found: Vec<_> = reports.iter().flat_map(|r| &r.flows).filter(|f| key(f)).collect();
    assert!(!found.is_empty(), "no {role:?} flow {local} -> {remote}:{port} in {reports:#?}");
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Every category from real traffic: the remotes are addresses of namespace b that the subnet map
/// and ip-ranges.json place in another AZ, another VPC, another region, S3 and DynamoDB.
#[test]
fn reports_carry_ec2_metadata_and_destination_categories() {
    let Some(_g) = privileged("reports_carry_ec2_metadata_and_destination_categories") else { return };
    let lab = Lab::new();
    let imds = lab_imds(&lab);
    let (a, b) = (&lab.a, &lab.b);
    let dev_b = sh(&format!("ip -n {b} -o link show type veth | awk -F'[ @:]+' '{{print $2}}'"));
    let dev_b = dev_b.trim();
    let remotes = [
        ("10.77.0.2", Cat::IntraAz),
        ("fd77::2", Cat::IntraAz),
        ("10.77.1.2", Cat::InterAz),
        ("fd77:0:0:1::2", Cat::InterAz),
        ("10.78.0.2", Cat::InterVpc),
        ("10.79.0.2", Cat::InterRegion),
        ("3.34.1.9", Cat::InterRegion),
        ("52.216.10.1", Cat::AmazonS3),
        ("3.218.180.7", Cat::AmazonDynamodb),
        ("198.51.100.7", Cat::Unclassified),
    ];
    for (ip, _) in &remotes[2..] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let plen = if ip.is_ipv4() { 32 } else { 128 };
        sh(&format!(
            "ip -n {b} addr add {ip}/{plen} dev {dev_b} nodad 2>/dev/null || ip -n {b} addr add {ip}/{plen} dev {dev_b}"
        ));
    }
    sh(&format!("ip -n {a} route add default via 10.77.0.2 && ip -n {a} -6 route add default via fd77::2"));
    let agent = Agent::start_full(
        &lab,
        None,
        &["--dry-run"],
        &["--subnet-map", &data("describe-subnets.json"), "--ip-ranges", &data("ip-ranges.json")],
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint())],
    );
    let port = 5401;
    let n6 = remotes.iter().filter(|(ip, _)| ip.contains(':')).count();
    let (n4, n6) = ((remotes.len() - n6).to_string(), n6.to_string());
    let server4 = lab.traffic(b, &["serve", "--addr", "0.0.0.0", "--port", "5401", "--conns", &n4, "--reply", "10"]);
    let server6 = lab.traffic(b, &["serve", "--addr", "::", "--port", "5402", "--conns", &n6, "--reply", "10"]);
    for (ip, _) in &remotes {
        let p = if ip.contains(':') { "5402" } else { "5401" };
        let r = lab.traffic(a, &["connect", "--addr", ip, "--port", p, "--conns", "1", "--send", "10"]).result();
        assert_eq!(r["ok"], 1, "{ip}: {r}");
    }
    server4.result();
    server6.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    assert!(imds.token_requests() >= 1 && imds.gets() > 0);

    for (ip, cat) in remotes {
        let p = if ip.contains(':') { 5402 } else { port };
        let local = if ip.contains(':') { lab.a6 } else { lab.a4 };
        let f = find(&reports, local, ip, p, Role::Client);
        let e = &f.enrichment;
        eprintln!("{ip}: {e:?}");
        assert_eq!(e.destination_category, Some(cat), "{ip}: {e:?}");
        assert_eq!(e.local_instance_id.as_deref(), Some("i-0123456789abcdef0"), "{ip}");
        assert_eq!(
            e.local_instance_arn.as_deref(),
            Some("arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0")
        );
        assert_eq!(e.local_subnet_id.as_deref(), Some("subnet-0a1b2c3d4e5f6a7b8"));
        assert_eq!(
            e.local_subnet_arn.as_deref(),
            Some("arn:aws:ec2:us-east-1:111122223333:subnet/subnet-0a1b2c3d4e5f6a7b8")
        );
        assert_eq!(e.local_vpc_id.as_deref(), Some("vpc-0a1b2c3d4e5f60718"));
        assert_eq!(e.local_vpc_arn.as_deref(), Some("arn:aws:ec2:us-east-1:111122223333:vpc/vpc-0a1b2c3d4e5f60718"));
        assert_eq!((e.local_az.as_deref(), e.local_region.as_deref()), (Some("us-east-1a"), Some("us-east-1")));
        assert_eq!((e.snat_ip.as_deref(), e.dnat_ip.as_deref()), (None, None), "no NAT here");
    }
    let remote = |ip| find(&reports, lab.a4, ip, port, Role::Client).enrichment.clone();
    // The remote is this instance's other interface.
    let e = remote("10.77.0.2");
    assert_eq!(e.remote_instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(
        (e.remote_subnet_id.as_deref(), e.remote_az.as_deref()),
        (Some("subnet-0a1b2c3d4e5f6a7b8"), Some("us-east-1a"))
    );
    let e = remote("10.77.1.2");
    assert_eq!(
        (e.remote_subnet_id.as_deref(), e.remote_az.as_deref()),
        (Some("subnet-0b1c2d3e4f5a6b7c8"), Some("us-east-1b"))
    );
    assert_eq!(e.remote_vpc_id.as_deref(), Some("vpc-0a1b2c3d4e5f60718"));
    let e = remote("10.78.0.2");
    assert_eq!(e.remote_vpc_arn.as_deref(), Some("arn:aws:ec2:us-east-1:444455556666:vpc/vpc-0f9e8d7c6b5a43210"));
    assert_eq!(remote("10.79.0.2").remote_region.as_deref(), Some("us-west-2"));
    assert_eq!(remote("3.34.1.9").remote_region.as_deref(), Some("ap-northeast-2"));
    assert_eq!(remote("52.216.10.1").remote_region.as_deref(), Some("us-east-1"));
    assert_eq!(
        remote("198.51.100.7"),
        Enrichment { destination_category: Some(Cat::Unclassified), ..local_only(&reports, lab.a4) }
    );
    // The server side of the first flow: local address on eth1.
    let s = find(&reports, lab.b4, lab.a4, port, Role::Server);
    assert_eq!(s.enrichment.local_instance_id.as_deref(), Some("i-0123456789abcdef0"));
    assert_eq!(s.enrichment.destination_category, Some(Cat::IntraAz));
}

/// The local_* fields of some flow from `local` (to compare a flow that has only those).
fn local_only(reports: &[Report], local: &str) -> Enrichment {
    let l = local.parse::<std::net::IpAddr>().unwrap();
    let e = &reports.iter().flat_map(|r| &r.flows).find(|f| f.local_ip == l).unwrap().enrichment;
    Enrichment {
        local_instance_id: e.local_instance_id.clone(),
        local_instance_arn: e.local_instance_arn.clone(),
        local_subnet_id: e.local_subnet_id.clone(),
        local_subnet_arn: e.local_subnet_arn.clone(),
        local_vpc_id: e.local_vpc_id.clone(),
        local_vpc_arn: e.local_vpc_arn.clone(),
        local_az: e.local_az.clone(),
        local_region: e.local_region.clone(),
        ..Default::default()
    }
}

/// Off EC2: IMDS accepts connections and never answers (or nothing listens). Capture starts and
/// reports flows while IMDS is still silent, without metadata.
#[test]
fn off_ec2_capture_does_not_wait_for_imds() {
    let Some(_g) = privileged("off_ec2_capture_does_not_wait_for_imds") else { return };
    let lab = Lab::new();
    let imds = FakeImds::start(HashMap::new());
    imds.set_delay(Duration::from_secs(60));
    let refused = format!("http://127.0.0.1:{}", free_port());
    for endpoint in [imds.endpoint(), refused] {
        let started = Instant::now();
        let agent =
            Agent::start_full(&lab, None, &["--dry-run"], &[], &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", &endpoint)]);
        let to_capture = started.elapsed();
        let server =
            lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5403", "--conns", "2", "--reply", "5"]);
        lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5403", "--conns", "2", "--send", "5"]).result();
        server.result();
        lab.wait_sockets_closed(Duration::from_secs(10));
        let reports = agent.stop();
        eprintln!("IMDS {endpoint}: {to_capture:?} from spawn to capturing");
        assert_eq!(totals(&reports, flow(lab.a4, lab.b4, 5403, Role::Client)).established, 2);
        for f in every(&reports, lab.a4, lab.b4, 5403, Role::Client) {
            assert_eq!(f.enrichment.local_instance_id, None);
            // Without metadata nothing is classified relative to this instance; never guessed.
            assert_eq!(f.enrichment.destination_category, Some(Cat::Unclassified));
        }
    }
    assert!(imds.token_requests() >= 1, "the agent did ask the silent IMDS");
    // AWS_EC2_METADATA_DISABLED=true and no other input: no enrichment at all.
    let agent = Agent::start_full(
        &lab,
        None,
        &["--dry-run"],
        &["--conntrack", "false"],
        &[("AWS_EC2_METADATA_DISABLED", "true"), ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint())],
    );
    let requests = imds.token_requests();
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5404", "--conns", "1", "--reply", "5"]);
    lab.traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5404", "--conns", "1", "--send", "5"]).result();
    server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    assert_eq!(find(&reports, lab.a4, lab.b4, 5404, Role::Client).enrichment, Enrichment::default());
    assert_eq!(imds.token_requests(), requests, "disabled means not asked");
}

/// Real NAT: namespace a (client, in the lab cgroup) reaches a service address 10.96.0.10:80
/// through namespace b, which DNATs it to namespace c (10.88.0.2:8080) and masquerades. The agent
/// runs in b, where the kernel tracks the connection, and reports the translation and the real
/// remote's subnet.
#[test]
fn conntrack_reports_dnat_and_snat_and_classifies_the_real_remote() {
    let Some(_g) = privileged("conntrack_reports_dnat_and_snat_and_classifies_the_real_remote") else { return };
    let lab = Lab::new();
    let (a, b) = (&lab.a, &lab.b);
    let c = format!("{}c", lab.a);
    let suffix = &lab.a[3..];
    let _cleanup = NetnsGuard(c.clone());
    sh(&format!(
        "set -e
         ip netns add {c}
         ip link add vn{suffix} netns {b} type veth peer name vc{suffix} netns {c}
         ip -n {c} link set lo up
         ip -n {b} addr add 10.88.0.1/24 dev vn{suffix}; ip -n {c} addr add 10.88.0.2/24 dev vc{suffix}
         ip -n {b} link set vn{suffix} up; ip -n {c} link set vc{suffix} up
         ip -n {a} route add default via 10.77.0.2
         ip netns exec {b} sysctl -qw net.ipv4.ip_forward=1"
    ));
    let ruleset = format!(
        "table ip ftnat {{
           chain pre {{ type nat hook prerouting priority dstnat; ip daddr 10.96.0.10 tcp dport 80 dnat to 10.88.0.2:8080; }}
           chain post {{ type nat hook postrouting priority srcnat; oifname \"vn{suffix}\" masquerade; }}
         }}"
    );
    let mut nft = std::process::Command::new("ip")
        .args(["netns", "exec", b, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), ruleset.as_bytes()).unwrap();
    assert!(nft.wait().unwrap().success(), "nft failed for:\n{ruleset}");
    let dir = tempfile::tempdir().unwrap();
    let subnets = dir.path().join("subnets.json");
    std::fs::write(
        &subnets,
        r#"{
    "Subnets": [
        {
            "AvailabilityZone": "us-east-1c",
            "AvailabilityZoneId": "use1-az2",
            "AvailableIpAddressCount": 250,
            "CidrBlock": "10.88.0.0/24",
            "DefaultForAz": false,
            "MapPublicIpOnLaunch": false,
            "State": "available",
            "SubnetId": "subnet-0e8e8e8e8e8e8e8e8",
            "VpcId": "vpc-0a1b2c3d4e5f60718",
            "OwnerId": "111122223333",
            "AssignIpv6AddressOnCreation": false,
            "Ipv6CidrBlockAssociationSet": [],
            "SubnetArn": "arn:aws:ec2:us-east-1:111122223333:subnet/subnet-0e8e8e8e8e8e8e8e8"
        }
    ]
}"#,
    )
    .unwrap();
    // The agent in b: IMDS is not reachable from there (disabled); the subnet map still names the
    // real remote's subnet.
    let agent = Agent::start_full(
        &lab,
        Some(b),
        &["--dry-run"],
        &["--subnet-map", subnets.to_str().unwrap()],
        &[("AWS_EC2_METADATA_DISABLED", "true")],
    );
    let server = {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/traffic.py");
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &c, "python3", script.to_str().unwrap()])
            .args(["serve", "--addr", "10.88.0.2", "--port", "8080", "--conns", "3", "--reply", "100"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.as_mut().unwrap()), &mut line).unwrap();
        assert!(line.contains("ready"), "{line}");
        child
    };
    let r =
        lab.traffic(a, &["connect", "--addr", "10.96.0.10", "--port", "80", "--conns", "3", "--send", "100"]).result();
    assert_eq!(r["ok"], 3, "{r}");
    let mut server = server;
    assert!(server.wait().unwrap().success());
    lab.wait_sockets_closed(Duration::from_secs(10));
    let reports = agent.stop();
    // The three connections may straddle a window end: every window's record is enriched.
    assert_eq!(totals(&reports, flow(lab.a4, "10.96.0.10", 80, Role::Client)).established, 3);
    for f in every(&reports, lab.a4, "10.96.0.10", 80, Role::Client) {
        let e = &f.enrichment;
        eprintln!("{e:?}");
        assert_eq!(e.dnat_ip.as_deref(), Some("10.88.0.2"), "{e:?}");
        assert_eq!(e.snat_ip.as_deref(), Some("10.88.0.1"), "{e:?}");
        assert_eq!(e.remote_subnet_id.as_deref(), Some("subnet-0e8e8e8e8e8e8e8e8"), "classified by the real remote");
        assert_eq!(e.remote_az.as_deref(), Some("us-east-1c"));
    }
}

struct NetnsGuard(String);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A classification file that is not in its format stops the agent at start, naming it.
#[test]
fn invalid_files_stop_the_agent_with_the_file_named() {
    let Some(_g) = privileged("invalid_files_stop_the_agent_with_the_file_named") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("subnets.json");
    // ip-ranges.json given as the subnet map.
    std::fs::copy(data("ip-ranges.json"), &bad).unwrap();
    for (flag, file) in [("--subnet-map", bad.to_str().unwrap()), ("--ip-ranges", &data("describe-subnets.json"))] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flow-agent"))
            .args(["--dry-run", "--metrics-address", "127.0.0.1:0", "--cgroup"])
            .arg(&lab.cgroup)
            .arg("--control-socket")
            .arg(dir.path().join("control.sock"))
            .args([flag, file])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: {err}");
        assert!(err.contains(file) && err.contains("invalid"), "{flag}: {err}");
    }
}
