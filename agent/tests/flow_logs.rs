//! Flow-log records: the real agent writes VPC-flow-log-style records for real TCP between two
//! network namespaces; every record is parsed and checked against the bytes the traffic generator
//! moved and the namespaces' own segment counters. Bad settings are refused at start.

mod support;

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{Agent, Lab, delta, privileged};

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// (srcaddr, srcport, dstaddr, dstport, flow-direction) -> (packets, bytes, records)
type Sums = HashMap<(String, String, String, String, String), (u64, u64, u32)>;

/// Every record of a custom format on stdout: one flow of 4 connections seen from both ends.
#[test]
fn stdout_records_match_the_traffic() {
    let Some(_g) = privileged("stdout_records_match_the_traffic") else { return };
    let lab = Lab::new();
    let format = "${version} ${srcaddr} ${srcport} ${dstaddr} ${dstport} ${protocol} ${packets} ${bytes} ${start} \
                  ${end} ${action} ${log-status} ${flow-direction} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${vpc-id} \
                  ${instance-id} ${tcp-flags}";
    let t0 = now_secs();
    let agent = Agent::start_with(
        &lab,
        &[],
        &["--flow-log-destination", "stdout", "--flow-log-format", format, "--flow-log-max-aggregation-interval", "60"],
    );
    let (na0, nb0) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b4, "--port", "5301", "--conns", "4", "--reply", "7000"]);
    let client = lab
        .traffic(&lab.a, &["connect", "--addr", lab.b4, "--port", "5301", "--conns", "4", "--send", "20000"])
        .result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    let (na1, nb1) = (lab.nstat(&lab.a), lab.nstat(&lab.b));
    let lines = agent.stop_lines();
    let t1 = now_secs() + 1;
    assert_eq!(client["ok"], 4, "{client}");

    let mut sums = Sums::new();
    for line in &lines {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 19, "one value per field: {line:?}");
        assert_eq!(f[0], "5", "version: the highest of the fields (flow-direction is v5): {line}");
        let (start, end) = (f[8].parse::<i64>().unwrap(), f[9].parse::<i64>().unwrap());
        if f[11] == "NODATA" {
            // An interval boundary fell before or after the traffic: that interval saw none. It
            // starts where its interval does (a multiple of 60 s), before the run if the agent
            // started in it.
            assert!(start % 60 == 0 && start <= end && end <= t1, "{line}");
            assert!(f.iter().enumerate().all(|(i, v)| [0, 8, 9, 11].contains(&i) || *v == "-"), "{line}");
            continue;
        }
        assert!(t0 <= start && start <= end && end <= t1, "start/end within the run ({t0}..{t1}): {line}");
        assert_eq!((f[5], f[10], f[11], f[13]), ("6", "ACCEPT", "OK", "IPv4"), "{line}");
        assert_eq!((f[14], f[15]), (f[1], f[3]), "pkt-srcaddr/pkt-dstaddr are the addresses: {line}");
        assert_eq!((f[16], f[17], f[18]), ("-", "-", "-"), "unknown fields print '-': {line}");
        let s = sums.entry((f[1].into(), f[2].into(), f[3].into(), f[4].into(), f[12].into())).or_default();
        s.0 += f[6].parse::<u64>().unwrap();
        s.1 += f[7].parse::<u64>().unwrap();
        s.2 += 1;
    }
    eprintln!("{}", lines.join("\n"));
    let (a, b) = (lab.a4.to_string(), lab.b4.to_string());
    let k = |src: &str, sp: &str, dst: &str, dp: &str, dir: &str| {
        (src.to_string(), sp.to_string(), dst.to_string(), dp.to_string(), dir.to_string())
    };
    let client_out = k(&a, "-", &b, "5301", "egress");
    let client_in = k(&b, "5301", &a, "-", "ingress");
    let server_out = k(&b, "5301", &a, "-", "egress");
    let server_in = k(&a, "-", &b, "5301", "ingress");
    let mut keys: Vec<_> = sums.keys().cloned().collect();
    keys.sort();
    let mut expected = vec![client_out.clone(), client_in.clone(), server_out.clone(), server_in.clone()];
    expected.sort();
    assert_eq!(keys, expected, "exactly one flow, seen from both ends, both directions");
    let bytes = |k| sums[k].1;
    assert_eq!(bytes(&client_out), client["sent"].as_u64().unwrap());
    assert_eq!(bytes(&client_in), client["received"].as_u64().unwrap());
    assert_eq!(bytes(&server_out), server["sent"].as_u64().unwrap());
    assert_eq!(bytes(&server_in), server["received"].as_u64().unwrap());
    assert_eq!((bytes(&client_out), bytes(&client_in)), (80_000, 28_000));
    // Packets: at least the payload in full-size segments, at most every segment the sending
    // namespace's kernel sent (TcpOutSegs; only this flow's traffic runs between the two).
    for (key, sender) in [
        (&client_out, (&na0, &na1)),
        (&client_in, (&nb0, &nb1)),
        (&server_out, (&nb0, &nb1)),
        (&server_in, (&na0, &na1)),
    ] {
        let (packets, bytes, records) = sums[key];
        let kernel = delta(sender.0, sender.1, "TcpOutSegs");
        assert!(bytes.div_ceil(1460) <= packets && packets <= kernel, "{key:?}: {packets} packets, kernel {kernel}");
        assert!(records <= 2, "one record per interval: {key:?}");
    }
}

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// gzip files laid out as in S3, with the default (version 2) format, for IPv6 traffic.
#[test]
fn directory_files_are_laid_out_as_in_s3() {
    let Some(_g) = privileged("directory_files_are_laid_out_as_in_s3") else { return };
    let lab = Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let t0 = now_secs();
    let agent = Agent::start_with(
        &lab,
        &[],
        &[
            "--flow-log-destination",
            dir.path().to_str().unwrap(),
            "--flow-log-account-id",
            "123456789012",
            "--flow-log-region",
            "eu-west-1",
        ],
    );
    let server = lab.traffic(&lab.b, &["serve", "--addr", lab.b6, "--port", "5302", "--conns", "2", "--reply", "3000"]);
    let client = lab
        .traffic(&lab.a, &["connect", "--addr", lab.b6, "--port", "5302", "--conns", "2", "--send", "5000"])
        .result();
    let server = server.result();
    lab.wait_sockets_closed(Duration::from_secs(10));
    assert!(agent.stop_lines().is_empty(), "nothing on stdout without --dry-run");
    let t1 = now_secs() + 1;

    let files = files_under(dir.path());
    assert!(!files.is_empty(), "at least one file");
    let mut sums: HashMap<(String, String, String, String), u64> = HashMap::new();
    for path in &files {
        let rel = path.strip_prefix(dir.path()).unwrap().to_str().unwrap().to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 8, "{rel}");
        assert_eq!(&parts[..4], ["AWSLogs", "123456789012", "vpcflowlogs", "eu-west-1"], "{rel}");
        let name = parts[7];
        let stamp = format!("{}{}{}T", parts[4], parts[5], parts[6]);
        assert!(
            name.starts_with("123456789012_vpcflowlogs_eu-west-1_fl-")
                && name.contains(&format!("_{stamp}"))
                && name.ends_with(".log.gz"),
            "{rel}"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_string(&mut text)
            .unwrap_or_else(|e| panic!("{rel} is complete gzip: {e}"));
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
            )
        );
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!(f.len(), 14, "{line}");
            assert_eq!((f[0], f[1], f[2]), ("2", "123456789012", "-"), "{line}");
            let (start, end) = (f[10].parse::<i64>().unwrap(), f[11].parse::<i64>().unwrap());
            if f[13] == "NODATA" {
                // An interval without traffic: the run crossed a boundary of the 10-minute
                // intervals before its traffic began. Such a record starts where its interval
                // does, before the run.
                assert!(start % 600 == 0 && start <= end && end <= t1, "{line}");
                continue;
            }
            assert!(t0 <= start && start <= end && end <= t1, "{line}");
            assert_eq!((f[7], f[12], f[13]), ("6", "ACCEPT", "OK"), "{line}");
            assert!(f[8].parse::<u64>().unwrap() > 0, "{line}");
            *sums.entry((f[3].into(), f[5].into(), f[4].into(), f[6].into())).or_default() +=
                f[9].parse::<u64>().unwrap();
        }
    }
    // Without flow-direction, the client's egress and the server's ingress are the same tuple.
    let (a, b) = (lab.a6.to_string(), lab.b6.to_string());
    let mut expected = HashMap::new();
    expected.insert(
        (a.clone(), "-".to_string(), b.clone(), "5302".to_string()),
        client["sent"].as_u64().unwrap() + server["received"].as_u64().unwrap(),
    );
    expected.insert(
        (b, "5302".to_string(), a, "-".to_string()),
        client["received"].as_u64().unwrap() + server["sent"].as_u64().unwrap(),
    );
    assert_eq!(sums, expected);
    assert_eq!(client["sent"], 10_000);
}

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flow-agent")).args(args).output().expect("run flow-agent");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "flow-agent panicked:\n{stderr}");
    (out.status.success(), stderr)
}

#[test]
fn bad_flow_log_settings_are_refused_at_start() {
    let (ok, err) = agent(&["--flow-log-destination", "stdout", "--flow-log-format", "${srcaddr} ${colour}"]);
    assert!(!ok && err.contains("flow_log_format") && err.contains("\"colour\""), "{err}");
    assert!(err.contains("valid fields: version, account-id") && err.contains("flow-direction"), "{err}");
    let (ok, err) = agent(&["--flow-log-destination", "stdout", "--flow-log-format", " "]);
    assert!(!ok && err.contains("flow_log_format") && err.contains("empty"), "{err}");
    let (ok, err) = agent(&["--flow-log-destination", "stdout", "--flow-log-max-aggregation-interval", "30"]);
    assert!(!ok && err.contains("60 seconds (1 minute) or 600 seconds (10 minutes)"), "{err}");
    let (ok, err) = agent(&["--flow-log-max-aggregation-interval", "ten"]);
    assert!(!ok && err.contains("--flow-log-max-aggregation-interval"), "{err}");
    let (ok, err) = agent(&["--dry-run", "--flow-log-destination", "stdout"]);
    assert!(!ok && err.contains("flow_log_destination") && err.contains("dry_run"), "{err}");
    let (ok, err) = agent(&["--flow-log-destination", "/tmp/x", "--report-interval", "7s"]);
    assert!(!ok && err.contains("must divide flow_log_max_aggregation_interval"), "{err}");
    let (ok, err) = agent(&["--flow-log-destination", "/tmp/x", "--flow-log-account-id", "../etc"]);
    assert!(!ok && err.contains("flow_log_account_id"), "{err}");
    let (ok, err) = agent(&[]);
    assert!(!ok && err.contains("--flow-log-destination") && err.contains("--dry-run"), "{err}");
}
