//! Layout of the kernel maps. `#[repr(C)]`, no pointers, explicit padding: the eBPF object and the
//! daemon read and write the same bytes.

use crate::hist::HIST_BUCKETS;

/// Map names, as the eBPF object defines them. SOCKETS (`--max-sockets` entries) and FLOWS
/// (`--max-flows`) are sized by the daemon.
pub const SOCKETS_MAP: &str = "SOCKETS";
pub const FLOWS_MAP: &str = "FLOWS";
pub const LISTENERS_MAP: &str = "LISTENERS";
pub const STATS_MAP: &str = "STATS";
pub const WALKED_NETNS_MAP: &str = "WALKED_NETNS";
pub const WALKED_NETNS_LIST_MAP: &str = "WALKED_NETNS_LIST";
pub const WALK_FLOOR_MAP: &str = "WALK_FLOOR";

/// `WALK_FLOOR` slot 1: what the walk is. Any value but `REGULAR` marks the walk made at start,
/// before the sock_ops program attaches, when every socket that carries this agent's callback
/// flags was armed by an earlier run of the agent.
pub mod walk_kind {
    /// A walk at a window end.
    pub const REGULAR: u64 = 0;
    /// The walk at start in walk mode: the earlier run's sockets are counted from now on by the
    /// walk (those it folded by callbacks are handed to it).
    pub const START: u64 = 1;
    /// The walk at start with `--fold-mode callbacks`, which makes no other walk: the sockets an
    /// earlier run walked are counted from now on, and handed to callbacks.
    pub const START_FOR_CALLBACKS: u64 = 2;
}

/// Network namespaces the daemon walks at most, its own included (`--max-walked-netns`, the
/// WALKED_NETNS map's size), by default.
pub const DEFAULT_MAX_WALKED_NETNS: u32 = 256;

/// Walked namespaces the sock_ops program finds in a list (`WalkedNetns`) rather than in the
/// WALKED_NETNS hash.
pub const WALKED_NETNS_LISTED: usize = 8;

/// The walked namespaces' cookies as a list, the one value of WALKED_NETNS_LIST: the check a
/// connect or accept makes ("is this socket's namespace walked?") is then a few compares, with
/// no hash lookup. With more than `WALKED_NETNS_LISTED` namespaces `count` says so and the
/// WALKED_NETNS hash answers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalkedNetns {
    pub count: u64,
    pub cookies: [u64; WALKED_NETNS_LISTED],
}

impl WalkedNetns {
    /// The list of `cookies`; `count` above `WALKED_NETNS_LISTED` when they do not fit.
    pub fn of(cookies: &[u64]) -> WalkedNetns {
        let mut l = WalkedNetns { count: cookies.len() as u64, cookies: [0; WALKED_NETNS_LISTED] };
        if let Some(c) = cookies.get(..WALKED_NETNS_LISTED.min(cookies.len())) {
            l.cookies[..c.len()].copy_from_slice(c);
        }
        l
    }

    /// Whether namespace `cookie` is walked; `None` when the list does not hold every walked
    /// namespace (ask the hash).
    #[inline(always)]
    pub fn walked(&self, cookie: u64) -> Option<bool> {
        if self.count > WALKED_NETNS_LISTED as u64 {
            return None;
        }
        for i in 0..WALKED_NETNS_LISTED {
            if (i as u64) < self.count && self.cookies[i] == cookie {
                return Some(true);
            }
        }
        Some(false)
    }
}

/// Default map sizes (`--max-sockets`, `--max-flows`).
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;
pub const DEFAULT_MAX_FLOWS: u32 = 8_192;
/// LISTENERS is an array indexed by local port: one entry per port, so it cannot fill, and a
/// listen or a listener's close costs no hash-map operation (~1-2 µs each entered cold, as after
/// a bulk copy). 65,536 entries of 24 bytes: 1.5 MiB, where the SYN-ACK programs go by port; one
/// entry, unused, where they check the listener's cgroup (the default).
pub const LISTENER_PORTS: u32 = 65_536;

pub const ROLE_CLIENT: u8 = 1;
pub const ROLE_SERVER: u8 = 2;
pub const PROTO_TCP: u8 = 6;

/// An address as 16 bytes in network order; IPv4 is stored v4-mapped (`::ffff:a.b.c.d`) so that
/// v4-mapped IPv6 sockets and IPv4 sockets of the same peer share one key.
pub type Addr = [u32; 4];

/// The second-to-last word of a v4-mapped address (`0000:ffff` in network order).
pub const V4_MAPPED_PREFIX_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The v4-mapped form of an IPv4 address given as a network-order u32.
#[inline(always)]
pub fn v4_mapped(ip4_be: u32) -> Addr {
    [0, 0, V4_MAPPED_PREFIX_WORD, ip4_be]
}

/// Flow key: (protocol, local ip, remote ip, target port, role). The ephemeral port is collapsed:
/// client flows keep the remote port, server flows keep the local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub local_ip: Addr,
    pub remote_ip: Addr,
    /// Host byte order.
    pub target_port: u16,
    pub protocol: u8,
    pub role: u8,
    pub _pad: u32,
}

/// Build a flow key from both ports (host order) and the role.
#[inline(always)]
pub fn flow_key(local_ip: Addr, remote_ip: Addr, local_port: u16, remote_port: u16, role: u8) -> FlowKey {
    FlowKey {
        local_ip,
        remote_ip,
        target_port: if role == ROLE_SERVER { local_port } else { remote_port },
        protocol: PROTO_TCP,
        role,
        _pad: 0,
    }
}

/// A latency histogram in the kernel: cumulative sum and per-bucket counts. No count of its own:
/// it is the sum of the buckets, one atomic add less per sample in the kernel (the daemon counts
/// a window's samples from the bucket deltas, which stay exact when a u32 bucket wraps).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Hist {
    pub sum: u64,
    pub buckets: [u32; HIST_BUCKETS],
}

impl Default for Hist {
    fn default() -> Self {
        Hist { sum: 0, buckets: [0; HIST_BUCKETS] }
    }
}

/// Per-flow-key counters, cumulative since the key was inserted. Updated by the kernel with atomic
/// adds (many CPUs may fold sockets of one key at once); the daemon reads them every tick and
/// keeps the previous reading to compute deltas, so it never writes this map except to evict.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowAgg {
    pub attempted: u64,
    pub established: u64,
    /// Established connections that ended, however they ended.
    pub closed: u64,
    /// Connections that ended before being established (refused, timed out, aborted).
    pub failed: u64,
    pub refused: u64,
    pub timed_out: u64,
    /// Established connections ended by a reset.
    pub reset: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub retransmissions: u64,
    pub timeouts: u64,
    pub rtt_us: Hist,
    pub handshake_us: Hist,
}

impl FlowAgg {
    /// Connections open now: established minus closed (the kernel counts a close as `closed`
    /// exactly when it was established, so no gauge of its own is kept). 0 when more closed than
    /// were counted established: connections established before the key was last inserted (by
    /// an earlier agent run, or before an eviction) that closed since.
    pub fn open(&self) -> u64 {
        self.established.saturating_sub(self.closed)
    }
}

/// RTT samples a socket holds between two folds (see `fold::rtt_push`).
pub const RTT_PENDING: usize = 8;

/// Per-socket state, in SOCKETS by socket cookie (removed when the socket closes).
/// Holds the socket's flow key, the counter values last folded into its flow, so each fold adds
/// only what is new, and the RTT samples taken since the last fold. Sockets folded by callbacks
/// have one from their connect or accept on; sockets of walked namespaces only once one is
/// needed (`fold::untracked_flags`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SockState {
    pub key: FlowKey,
    /// `bpf_ktime_get_coarse_ns` at the last fold.
    pub last_fold_ns: u64,
    pub folded: SockCounters,
    pub flags: u32,
    pub _pad: u32,
    pub rtt: RttPending,
}

// Bucket indices are kept in a byte.
const _: () = assert!(HIST_BUCKETS <= 256);

/// RTT samples not yet added to the flow's histogram: their sum and bucket indices.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RttPending {
    pub sum: u64,
    pub count: u32,
    pub _pad: u32,
    /// Bucket index of each sample (`hist::bucket_index`, < 256), the first `count` valid.
    pub buckets: [u8; RTT_PENDING],
}

pub const SOCK_ESTABLISHED: u32 = 1;
pub const SOCK_RTO_EXPIRED: u32 = 2;
/// This host opened the connection (its SYN is in `bytes_acked`).
pub const SOCK_CLIENT: u32 = 4;
/// This host sent its FIN (entered FIN_WAIT1 or LAST_ACK).
pub const SOCK_FIN_SENT: u32 = 8;
/// The peer's FIN arrived (it is in `bytes_received`): from the state (`fold::fin_flags`), or at
/// close from the parse callback's flag (`fold::fin_seen`); never stored.
pub const SOCK_FIN_RCVD: u32 = 16;
/// The socket's flow could not be inserted (FLOWS full); counted once per socket.
pub const SOCK_FLOW_LOST: u32 = 32;
/// The socket's network namespace is walked (`WALKED_NETNS`): it has no per-segment callbacks,
/// the walk folds it while open, and its RTT samples are its smoothed RTT at each fold.
pub const SOCK_WALKED: u32 = 64;
/// A walked client's connection attempt is counted (by the walk, which found it still
/// connecting at a window end); see `fold::attempt_due_at_close`.
pub const SOCK_ATTEMPTED: u32 = 128;

/// The cumulative per-socket counters the kernel exposes in `bpf_sock_ops`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct SockCounters {
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub segs_in: u32,
    /// Segments retransmitted; the kernel adds to it exactly where it adds to TcpRetransSegs
    /// (an accepted socket starts with its request socket's SYN-ACK retransmissions).
    pub total_retrans: u32,
    pub _pad: u32,
}

/// The listening sockets of the monitored cgroup on one local port (LISTENERS, indexed by port),
/// so SYN-ACK retransmissions (which happen before a full socket exists) can be attributed to the
/// server flow.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Bound address (all zero for a wildcard bind, or when the port's listeners differ),
    /// v4-mapped for IPv4; meaningful while `count` is not 0.
    pub addr: Addr,
    /// How many listening sockets of the cgroup have the port: 0, none.
    pub count: u32,
    pub _pad: u32,
}

/// One handshake's request (SYNACK_TALLY's key): both addresses (v4-mapped for IPv4) and both
/// ports (host order) of the accepting side.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct RequestKey {
    pub local_ip: Addr,
    pub remote_ip: Addr,
    pub local_port: u16,
    pub remote_port: u16,
}

/// Requests SYNACK_TALLY holds at once (an LRU map): the SYN-ACK retransmissions the SYN-ACK
/// program counted per request, which the accepted socket's inherited count is set against. The
/// least recently retransmitted go first: those of requests that died unanswered, whose
/// SYN-ACKs are counted already and need no tally.
pub const SYNACK_TALLY_REQUESTS: u32 = 8192;

/// Indices into the per-CPU `STATS` array.
pub mod stat {
    /// Program invocations that did work.
    pub const EVENTS: u32 = 0;
    /// Failed inserts into SOCKETS (map full). A socket folded by callbacks is then not tracked;
    /// one of a walked namespace is folded whole at its close instead of at each walk. With
    /// connection records, the daemon adds the walk's snapshots it had no room to hold (at most
    /// `--max-sockets` sockets, as SOCKETS): those sockets too are folded whole at their close.
    pub const SOCKETS_FULL: u32 = 1;
    /// Sockets whose flow could not be inserted (FLOWS full): counted once per socket.
    pub const FLOWS_FULL: u32 = 2;
    /// Failed inserts into LISTENERS. Always 0 since LISTENERS is an array by port
    /// (`LISTENER_PORTS`); kept so that the reports and metrics keep their fields.
    pub const LISTENERS_FULL: u32 = 3;
    /// Events for sockets that had no state (they were not tracked because SOCKETS was full),
    /// and SYN-ACK retransmissions that found no room in SYNACK_TALLY (counted all the same; if
    /// their handshake completes, its socket may count them again).
    pub const UNTRACKED_EVENTS: u32 = 4;
    /// Sockets whose tracking began (connect or accept seen), with a SOCKETS entry or not.
    pub const SOCKETS_INSERTED: u32 = 5;
    /// Tracked sockets that closed.
    pub const SOCKETS_REMOVED: u32 = 6;
    /// Ring buffer reservations that failed (no ring buffer is used today; kept for the schema).
    pub const RINGBUF_DROPS: u32 = 7;
    /// Program runs the kernel skipped (each program's `recursion_misses`, which the daemon reads
    /// from the kernel's program info into this slot; the programs never write it): the events
    /// those runs would have counted are missing.
    pub const MISSED_RUNS: u32 = 8;
    /// Sockets the walk passed over as idle: nothing sent or received since the previous walk
    /// began (`WALK_FLOOR`), so nothing to fold.
    pub const WALK_IDLE: u32 = 9;
    /// Connection records that found their CPU's ring full (`record`): the program folded those
    /// events in the kernel instead, so nothing was lost, but the daemon is not keeping up.
    pub const RING_FULL: u32 = 10;
    /// Records that found their ring full and then no room in `RECORD_SPILL` either, of walked
    /// sockets whose baseline the daemon may hold (`record::item::SNAPSHOT`): folded in the
    /// kernel instead, where bytes the daemon folded before may count twice.
    pub const SPILL_FULL: u32 = 11;
    /// SYN-ACK retransmissions the kernel made without running the SYN-ACK program for them (a
    /// skipped run, or none at all), of handshakes that completed: the accepted socket inherits
    /// its request's count, and the part the program never saw (its count per request in
    /// SYNACK_TALLY) is counted from the socket. Included in the flows' retransmissions.
    pub const SYNACK_RECOVERED: u32 = 12;
    pub const COUNT: u32 = 13;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, contain only integers and arrays of integers, and
    // have explicit padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowAgg {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::Listener {}
    unsafe impl aya::Pod for super::WalkedNetns {}
    unsafe impl aya::Pod for crate::record::ConnRecord {}
    unsafe impl aya::Pod for crate::record::RingHead {}
    unsafe impl aya::Pod for crate::record::SpillKey {}
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 40);
        assert_eq!(core::mem::size_of::<RequestKey>(), 36);
        assert_eq!(core::mem::size_of::<SockCounters>(), 32);
        assert_eq!(core::mem::size_of::<RttPending>(), 16 + RTT_PENDING);
        assert_eq!(core::mem::size_of::<SockState>(), 40 + 8 + 32 + 8 + 16 + RTT_PENDING);
        assert_eq!(core::mem::size_of::<Hist>(), 8 + 4 * crate::hist::HIST_BUCKETS);
        assert_eq!(core::mem::size_of::<FlowAgg>(), 13 * 8 + 2 * core::mem::size_of::<Hist>());
    }

    #[test]
    fn walked_namespaces_are_found_in_the_list_or_sent_to_the_hash() {
        assert_eq!(WalkedNetns::default().walked(0), Some(false), "nothing walked, not even cookie 0");
        let l = WalkedNetns::of(&[7, 9]);
        assert_eq!(
            (l.walked(7), l.walked(9), l.walked(8), l.walked(0)),
            (Some(true), Some(true), Some(false), Some(false))
        );
        let full: Vec<u64> = (1..=WALKED_NETNS_LISTED as u64).collect();
        let l = WalkedNetns::of(&full);
        assert!(full.iter().all(|&c| l.walked(c) == Some(true)));
        assert_eq!(l.walked(0), Some(false));
        let over: Vec<u64> = (1..=WALKED_NETNS_LISTED as u64 + 1).collect();
        let l = WalkedNetns::of(&over);
        assert_eq!((l.walked(1), l.walked(100)), (None, None), "too many: the hash answers");
    }

    #[test]
    fn key_collapses_ephemeral_port() {
        let a = v4_mapped(u32::from_ne_bytes([10, 0, 0, 1]));
        let b = v4_mapped(u32::from_ne_bytes([10, 0, 0, 2]));
        let c1 = flow_key(a, b, 40000, 80, ROLE_CLIENT);
        let c2 = flow_key(a, b, 40001, 80, ROLE_CLIENT);
        assert_eq!(c1, c2);
        assert_eq!(c1.target_port, 80);
        let s1 = flow_key(b, a, 80, 40000, ROLE_SERVER);
        let s2 = flow_key(b, a, 80, 51234, ROLE_SERVER);
        assert_eq!(s1, s2);
        assert_eq!(s1.target_port, 80);
        assert_ne!(c1, flow_key(a, b, 40000, 80, ROLE_SERVER));
    }
}
