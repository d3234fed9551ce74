//! A fake EC2 instance metadata service on loopback: real HTTP/1.1 over TCP, IMDSv2 session
//! semantics (PUT /latest/api/token with a TTL; GETs without a valid, unexpired token get 401),
//! and knobs for slow and failing answers. Shared by the agent's unit tests and the integration
//! tests (one thread per connection, `Connection: close`).
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

#[derive(Default)]
struct State {
    paths: HashMap<String, String>,
    tokens: HashMap<String, Instant>,
    next_token: u64,
    /// Answer GETs without a token (IMDSv1 allowed).
    allow_v1: bool,
    /// Answer token requests with this status instead of a token.
    token_status: Option<u16>,
    /// Answer every GET with this status.
    get_status: Option<u16>,
    delay: Duration,
    token_requests: u64,
    gets: u64,
    unauthorized: u64,
}

pub struct FakeImds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeImds {
    /// Serves `paths` (e.g. "/latest/meta-data/instance-id" -> "i-0123456789abcdef0").
    pub fn start(paths: HashMap<String, String>) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake IMDS");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State { paths, ..Default::default() }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        FakeImds { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    pub fn set_path(&self, path: &str, body: &str) {
        self.with(|s| s.paths.insert(path.into(), body.into()));
    }
    pub fn remove_path(&self, path: &str) {
        self.with(|s| s.paths.remove(path));
    }
    pub fn set_delay(&self, d: Duration) {
        self.with(|s| s.delay = d);
    }
    pub fn set_get_status(&self, status: Option<u16>) {
        self.with(|s| s.get_status = status);
    }
    pub fn set_token_status(&self, status: Option<u16>) {
        self.with(|s| s.token_status = status);
    }
    pub fn set_allow_v1(&self, on: bool) {
        self.with(|s| s.allow_v1 = on);
    }
    /// Forget every issued token (as after an IMDS restart).
    pub fn expire_tokens(&self) {
        self.with(|s| s.tokens.clear());
    }
    pub fn token_requests(&self) -> u64 {
        self.with(|s| s.token_requests)
    }
    pub fn gets(&self) -> u64 {
        self.with(|s| s.gets)
    }
    pub fn unauthorized(&self) -> u64 {
        self.with(|s| s.unauthorized)
    }

    /// The metadata of an instance with one interface per `(mac, interface)` entry, in the
    /// layout IMDS serves.
    pub fn instance(identity: &Identity, interfaces: &[Interface]) -> HashMap<String, String> {
        let mut p = HashMap::new();
        let mut put = |k: &str, v: &str| p.insert(k.to_string(), v.to_string());
        put(
            "/latest/dynamic/instance-identity/document",
            &format!(
                r#"{{
  "accountId" : "{}",
  "architecture" : "x86_64",
  "availabilityZone" : "{}",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "{}",
  "instanceType" : "{}",
  "kernelId" : null,
  "pendingTime" : "2026-11-20T08:12:44Z",
  "privateIp" : "{}",
  "ramdiskId" : null,
  "region" : "{}",
  "version" : "2017-09-30"
}}"#,
                identity.account,
                identity.az,
                identity.instance_id,
                identity.instance_type,
                interfaces.first().map(|i| i.ipv4s.first().copied().unwrap_or("")).unwrap_or(""),
                identity.region
            ),
        );
        put("/latest/meta-data/instance-id", identity.instance_id);
        put("/latest/meta-data/instance-type", identity.instance_type);
        put("/latest/meta-data/placement/availability-zone", identity.az);
        put("/latest/meta-data/placement/availability-zone-id", identity.az_id);
        put("/latest/meta-data/placement/region", identity.region);
        put("/latest/meta-data/services/partition", "aws");
        let macs: String = interfaces.iter().map(|i| format!("{}/\n", i.mac)).collect();
        put("/latest/meta-data/network/interfaces/macs/", macs.trim_end());
        for i in interfaces {
            let base = format!("/latest/meta-data/network/interfaces/macs/{}", i.mac);
            put(&format!("{base}/interface-id"), i.interface_id);
            put(&format!("{base}/subnet-id"), i.subnet_id);
            put(&format!("{base}/vpc-id"), i.vpc_id);
            put(&format!("{base}/local-ipv4s"), &i.ipv4s.join("\n"));
            put(&format!("{base}/subnet-ipv4-cidr-block"), i.subnet_ipv4);
            put(&format!("{base}/vpc-ipv4-cidr-blocks"), &i.vpc_ipv4s.join("\n"));
            if !i.ipv6s.is_empty() {
                put(&format!("{base}/ipv6s"), &i.ipv6s.join("\n"));
                put(&format!("{base}/subnet-ipv6-cidr-blocks"), &i.subnet_ipv6s.join("\n"));
                put(&format!("{base}/vpc-ipv6-cidr-blocks"), &i.vpc_ipv6s.join("\n"));
            }
        }
        p
    }
}

pub struct Identity {
    pub account: &'static str,
    pub region: &'static str,
    pub az: &'static str,
    pub az_id: &'static str,
    pub instance_id: &'static str,
    pub instance_type: &'static str,
}

pub struct Interface {
    pub mac: &'static str,
    pub interface_id: &'static str,
    pub subnet_id: &'static str,
    pub vpc_id: &'static str,
    pub ipv4s: Vec<&'static str>,
    pub ipv6s: Vec<&'static str>,
    pub subnet_ipv4: &'static str,
    pub subnet_ipv6s: Vec<&'static str>,
    pub vpc_ipv4s: Vec<&'static str>,
    pub vpc_ipv6s: Vec<&'static str>,
}

fn respond(conn: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let delay = {
        let mut s = state.lock().unwrap();
        match method.as_str() {
            "PUT" => s.token_requests += 1,
            "GET" => s.gets += 1,
            _ => {}
        }
        s.delay
    };
    std::thread::sleep(delay);
    let (status, body) = {
        let mut s = state.lock().unwrap();
        if method == "PUT" && path == "/latest/api/token" {
            if let Some(status) = s.token_status {
                (status, String::new())
            } else {
                match headers.get("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u64>().ok()) {
                    Some(ttl @ 1..=21600) => {
                        s.next_token += 1;
                        let token = format!("fake-token-{}", s.next_token);
                        s.tokens.insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
                        (200, token)
                    }
                    _ => (400, String::new()),
                }
            }
        } else if method == "GET" {
            let valid = headers
                .get("x-aws-ec2-metadata-token")
                .and_then(|t| s.tokens.get(t))
                .is_some_and(|exp| Instant::now() < *exp);
            let v1 = s.allow_v1 && !headers.contains_key("x-aws-ec2-metadata-token");
            if !valid && !v1 {
                s.unauthorized += 1;
                (401, String::new())
            } else if let Some(status) = s.get_status {
                (status, String::new())
            } else {
                match s.paths.get(&path) {
                    Some(b) => (200, b.clone()),
                    None => (404, String::new()),
                }
            }
        } else {
            (405, String::new())
        }
    };
    respond(&mut conn, status, &body)
}
