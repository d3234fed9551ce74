//! Address translation from the kernel's connection tracking (ctnetlink, in the agent's network
//! namespace): which TCP flows were SNATed or DNATed, and to what.
//!
//! ctnetlink answers dumps only to CAP_NET_ADMIN, which the agent gives up once attached. So
//! `Table::open` (called before the drop) dumps the table once and subscribes to the NEW and
//! DESTROY event groups; after that the events keep the table current with no capability. Only
//! translated connections are kept, at most `MAX_CONNS`, and a destroyed connection's entry
//! lives on for `RETAIN` so that the window it ended in still sees it.
//!
//! Flow keys drop the client's ephemeral port, so client flows match on (local ip, remote ip,
//! remote port) and server flows on (local ip, remote ip, local port).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use agent_common::report::Role;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
/// NFNLGRP_CONNTRACK_NEW (1) and NFNLGRP_CONNTRACK_DESTROY (3), as a bind(2) group mask.
const GROUPS_NEW_DESTROY: u32 = (1 << 0) | (1 << 2);
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;

/// Translated connections tracked at once; more are counted and skipped.
pub const MAX_CONNS: usize = 65536;
/// How long a destroyed connection's translation stays visible.
const RETAIN: Duration = Duration::from_secs(120);
const RECV_BUF: usize = 256 * 1024;

/// One direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub id: u32,
    pub orig: Tuple,
    pub reply: Tuple,
}

impl Conn {
    fn translated(&self) -> bool {
        self.reply.src != self.orig.dst || self.reply.dst != self.orig.src
    }
    fn nat(&self, real_remote: IpAddr) -> Nat {
        Nat {
            snat_ip: (self.reply.dst != self.orig.src).then_some(self.reply.dst),
            dnat_ip: (self.reply.src != self.orig.dst).then_some(self.reply.src),
            real_remote,
        }
    }
    /// (local, remote, port) of the client socket that opened it: the original direction.
    fn client_key(&self) -> Key {
        (self.orig.src, self.orig.dst, self.orig.dport)
    }
    /// ... and of the server socket that accepted it: the reply direction.
    fn server_key(&self) -> Key {
        (self.reply.src, self.reply.dst, self.reply.sport)
    }
}

/// What a flow's connection was translated to. `snat_ip`: the source address after SNAT;
/// `dnat_ip`: the destination address after DNAT (each only when translated). `real_remote`: the
/// peer beyond the translation (the DNAT target of a client flow, the pre-SNAT client of a
/// server flow).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nat {
    pub snat_ip: Option<IpAddr>,
    pub dnat_ip: Option<IpAddr>,
    pub real_remote: IpAddr,
}

type Key = (IpAddr, IpAddr, u16);

struct Entry {
    nat: Nat,
    live: u32,
    ended: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<u32, Conn>,
    client: HashMap<Key, Entry>,
    server: HashMap<Key, Entry>,
    skipped_full: u64,
    lost_events: u64,
    last_prune: Option<Instant>,
}

fn add(map: &mut HashMap<Key, Entry>, key: Key, nat: Nat) {
    let e = map.entry(key).or_insert(Entry { nat, live: 0, ended: None });
    // The latest connection's translation wins (a service may balance over several backends).
    e.nat = nat;
    e.live += 1;
    e.ended = None;
}

fn end(map: &mut HashMap<Key, Entry>, key: Key, now: Instant) {
    if let Some(e) = map.get_mut(&key) {
        e.live = e.live.saturating_sub(1);
        if e.live == 0 {
            e.ended = Some(now);
        }
    }
}

impl Inner {
    fn new_conn(&mut self, c: Conn) {
        if !c.translated() || self.conns.contains_key(&c.id) {
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            self.skipped_full += 1;
            return;
        }
        self.conns.insert(c.id, c);
        add(&mut self.client, c.client_key(), c.nat(c.reply.src));
        add(&mut self.server, c.server_key(), c.nat(c.orig.src));
    }

    fn destroy(&mut self, id: u32, now: Instant) {
        if let Some(c) = self.conns.remove(&id) {
            end(&mut self.client, c.client_key(), now);
            end(&mut self.server, c.server_key(), now);
        }
    }

    fn prune(&mut self, now: Instant) {
        if self.last_prune.is_some_and(|t| now.duration_since(t) < Duration::from_secs(5)) {
            return;
        }
        self.last_prune = Some(now);
        let keep = |e: &mut Entry| e.ended.is_none_or(|t| now.duration_since(t) < RETAIN);
        self.client.retain(|_, e| keep(e));
        self.server.retain(|_, e| keep(e));
    }
}

/// The translated connections, shared between the event task and enrichment.
#[derive(Clone, Default)]
pub struct Table(Arc<Mutex<Inner>>);

impl Table {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The translation of a flow, if its connection was translated.
    pub fn lookup(&self, role: Role, local: IpAddr, remote: IpAddr, port: u16) -> Option<Nat> {
        self.with(|t| {
            let map = if role == Role::Client { &t.client } else { &t.server };
            map.get(&(local, remote, port)).map(|e| e.nat)
        })
    }

    /// (translated connections tracked, skipped because full, events lost to buffer overruns).
    pub fn stats(&self) -> (usize, u64, u64) {
        self.with(|t| (t.conns.len(), t.skipped_full, t.lost_events))
    }

    /// Dumps the current table and subscribes to its events. Needs CAP_NET_ADMIN (call before the
    /// capabilities are dropped) and a tokio runtime.
    pub fn open() -> io::Result<Table> {
        let events = socket(GROUPS_NEW_DESTROY)?;
        // Room for bursts; SO_RCVBUFFORCE passes rmem_max with CAP_NET_ADMIN.
        set_rcvbuf(&events, 8 << 20);
        let table = Table::default();
        let dump = socket(0)?;
        let conns = dump_all(&dump)?;
        table.with(|t| conns.into_iter().for_each(|c| t.new_conn(c)));
        // SAFETY: `events` is an open socket owned by the AsyncFd for its whole life.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(events) }.map_err(|e| io::Error::other(e.to_string()))?;
        let t = table.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; RECV_BUF];
            loop {
                let mut guard = match fd.readable().await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!("conntrack events: {e}; NAT information stops updating");
                        return;
                    }
                };
                loop {
                    match recv(fd.get_ref(), &mut buf) {
                        Ok(n) => {
                            let now = Instant::now();
                            t.with(|t| {
                                for_each_message(&buf[..n], |ty, payload| match ty & 0xff {
                                    IPCTNL_MSG_CT_NEW => {
                                        if let Some(c) = parse_conn(payload) {
                                            t.new_conn(c)
                                        }
                                    }
                                    IPCTNL_MSG_CT_DELETE => {
                                        if let Some(id) = parse_id(payload) {
                                            t.destroy(id, now)
                                        }
                                    }
                                    _ => {}
                                });
                                t.prune(now);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            guard.clear_ready();
                            break;
                        }
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            let lost = t.with(|t| {
                                t.lost_events += 1;
                                t.lost_events
                            });
                            if lost == 1 {
                                tracing::warn!(
                                    "conntrack events were lost (receive buffer full); some NAT translations may be missing"
                                );
                            }
                        }
                        Err(e) => {
                            tracing::warn!("reading conntrack events: {e}; NAT information stops updating");
                            return;
                        }
                    }
                }
            }
        });
        Ok(table)
    }

    #[cfg(test)]
    pub fn insert_for_test(&self, c: Conn) {
        self.with(|t| t.new_conn(c));
    }
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, NETLINK_NETFILTER)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: sa is a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn set_rcvbuf(fd: &OwnedFd, bytes: i32) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int option value.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &bytes as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as u32,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// One synchronous dump of the whole table (bounded: gives up after 2 s without data).
fn dump_all(fd: &OwnedFd) -> io::Result<Vec<Conn>> {
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC (every family), NFNETLINK_V0, res_id 0.
    req.extend_from_slice(&[0, 0, 0, 0]);
    // SAFETY: req is valid for its length.
    let rc = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr() as *const libc::c_void, req.len(), 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; RECV_BUF];
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let n = match recv(fd, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "conntrack dump did not finish"));
                }
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 200) };
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut done = None;
        for_each_message(&buf[..n], |ty, payload| match ty {
            NLMSG_DONE => done = Some(Ok(())),
            NLMSG_ERROR => {
                let errno = payload.get(..4).map(|b| i32::from_ne_bytes(b.try_into().unwrap())).unwrap_or(0);
                done = Some(if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) });
            }
            _ if ty & 0xff == IPCTNL_MSG_CT_NEW => out.extend(parse_conn(payload)),
            _ => {}
        });
        if let Some(r) = done {
            return r.map(|()| out);
        }
    }
}

/// Calls `f(type, payload)` for each netlink message in `buf` (payload after nlmsghdr).
fn for_each_message(mut buf: &[u8], mut f: impl FnMut(u16, &[u8])) {
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > buf.len() {
            return;
        }
        let ty = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        f(ty, &buf[16..len]);
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
    }
}

/// Attributes (type without flag bits, payload) in `buf`.
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(buf[0..2].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(buf[2..4].try_into().unwrap()) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = buf.get((len + 3) & !3..).unwrap_or(&[]);
        Some((ty, payload))
    })
}

fn parse_tuple(buf: &[u8]) -> Option<(Tuple, u8)> {
    let (mut src, mut dst, mut sport, mut dport, mut proto) = (None, None, None, None, None);
    for (ty, p) in attrs(buf) {
        match ty {
            CTA_TUPLE_IP => {
                for (ty, a) in attrs(p) {
                    let ip = match (ty, a.len()) {
                        (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(a).ok()?)),
                        (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(a).ok()?))
                        }
                        _ => continue,
                    };
                    if ty == CTA_IP_V4_SRC || ty == CTA_IP_V6_SRC {
                        src = Some(ip);
                    } else {
                        dst = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (ty, a) in attrs(p) {
                    match (ty, a.len()) {
                        (CTA_PROTO_NUM, 1) => proto = Some(a[0]),
                        (CTA_PROTO_SRC_PORT, 2) => sport = Some(u16::from_be_bytes([a[0], a[1]])),
                        (CTA_PROTO_DST_PORT, 2) => dport = Some(u16::from_be_bytes([a[0], a[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some((Tuple { src: src?, dst: dst?, sport: sport?, dport: dport? }, proto?))
}

/// A TCP connection from a ctnetlink message payload (nfgenmsg + attributes).
fn parse_conn(payload: &[u8]) -> Option<Conn> {
    let (mut orig, mut reply, mut id) = (None, None, None);
    for (ty, p) in attrs(payload.get(4..)?) {
        match ty {
            CTA_TUPLE_ORIG => orig = parse_tuple(p),
            CTA_TUPLE_REPLY => reply = parse_tuple(p),
            CTA_ID if p.len() == 4 => id = Some(u32::from_be_bytes(p.try_into().ok()?)),
            _ => {}
        }
    }
    let (orig, proto) = orig?;
    let (reply, _) = reply?;
    (proto == IPPROTO_TCP).then_some(Conn { id: id?, orig, reply })
}

fn parse_id(payload: &[u8]) -> Option<u32> {
    attrs(payload.get(4..)?)
        .find(|(ty, p)| *ty == CTA_ID && p.len() == 4)
        .map(|(_, p)| u32::from_be_bytes(p.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: u32, orig: (&str, &str, u16, u16), reply: (&str, &str, u16, u16)) -> Conn {
        let t = |(s, d, sp, dp): (&str, &str, u16, u16)| Tuple {
            src: s.parse().unwrap(),
            dst: d.parse().unwrap(),
            sport: sp,
            dport: dp,
        };
        Conn { id, orig: t(orig), reply: t(reply) }
    }

    #[test]
    fn dnat_and_snat_are_matched_by_flow_key() {
        let t = Table::default();
        // A client dials a service IP, DNATed to a backend and SNATed (masquerade) on the way.
        t.insert_for_test(conn(1, ("10.0.0.5", "10.96.0.10", 40000, 80), ("10.1.0.7", "192.168.0.1", 8080, 40000)));
        // Not translated: not kept.
        t.insert_for_test(conn(2, ("10.0.0.5", "10.0.0.6", 40001, 22), ("10.0.0.6", "10.0.0.5", 22, 40001)));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = t.lookup(Role::Client, ip("10.0.0.5"), ip("10.96.0.10"), 80).unwrap();
        assert_eq!(c.dnat_ip, Some(ip("10.1.0.7")));
        assert_eq!(c.snat_ip, Some(ip("192.168.0.1")));
        assert_eq!(c.real_remote, ip("10.1.0.7"));
        let s = t.lookup(Role::Server, ip("10.1.0.7"), ip("192.168.0.1"), 8080).unwrap();
        assert_eq!(s.real_remote, ip("10.0.0.5"));
        assert!(t.lookup(Role::Client, ip("10.0.0.5"), ip("10.0.0.6"), 22).is_none());
        assert_eq!(t.stats().0, 1);
        // Destroyed: still visible for the window it ended in, then pruned.
        let later = Instant::now() + RETAIN + Duration::from_secs(1);
        t.with(|i| i.destroy(1, Instant::now()));
        assert!(t.lookup(Role::Client, ip("10.0.0.5"), ip("10.96.0.10"), 80).is_some());
        t.with(|i| i.prune(later));
        assert!(t.lookup(Role::Client, ip("10.0.0.5"), ip("10.96.0.10"), 80).is_none());
    }

    /// A ctnetlink NEW message as the kernel builds it (nested attributes with NLA_F_NESTED).
    #[test]
    fn parses_a_kernel_message() {
        fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
            let mut v = Vec::new();
            v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(payload);
            while v.len() % 4 != 0 {
                v.push(0);
            }
            v
        }
        let nested = |ty: u16, parts: &[Vec<u8>]| attr(ty | 0x8000, &parts.concat());
        let tuple = |ty, s: [u8; 4], d: [u8; 4], sp: u16, dp: u16| {
            nested(
                ty,
                &[
                    nested(CTA_TUPLE_IP, &[attr(CTA_IP_V4_SRC, &s), attr(CTA_IP_V4_DST, &d)]),
                    nested(
                        CTA_TUPLE_PROTO,
                        &[
                            attr(CTA_PROTO_NUM, &[6]),
                            attr(CTA_PROTO_SRC_PORT, &sp.to_be_bytes()),
                            attr(CTA_PROTO_DST_PORT, &dp.to_be_bytes()),
                        ],
                    ),
                ],
            )
        };
        let mut body = vec![2, 0, 0, 0];
        body.extend(tuple(CTA_TUPLE_ORIG, [10, 0, 0, 5], [10, 96, 0, 10], 40000, 80));
        body.extend(tuple(CTA_TUPLE_REPLY, [10, 1, 0, 7], [10, 0, 0, 5], 8080, 40000));
        body.extend(attr(CTA_ID, &7u32.to_be_bytes()));
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&(NFNL_SUBSYS_CTNETLINK << 8).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend(body);
        let mut seen = Vec::new();
        for_each_message(&msg, |ty, p| seen.push((ty, parse_conn(p))));
        assert_eq!(seen.len(), 1);
        let c = seen[0].1.unwrap();
        assert_eq!((c.id, c.orig.dport, c.reply.sport), (7, 80, 8080));
        assert_eq!(c.reply.src, "10.1.0.7".parse::<IpAddr>().unwrap());
        assert!(c.translated() && c.nat(c.reply.src).snat_ip.is_none());
        // Truncated input is ignored, not a panic.
        for cut in 0..msg.len() {
            for_each_message(&msg[..cut], |_, p| {
                let _ = parse_conn(p);
            });
        }
    }
}
