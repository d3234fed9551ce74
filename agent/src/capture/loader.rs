//! Load the embedded eBPF object with the configured map sizes, attach it, and read its maps.

use std::{fs::File, os::fd::AsFd, time::Instant};

use agent_common::maps::{
    FLOWS_MAP, FlowAgg, FlowKey, LISTENERS_MAP, Listener, MAX_LISTENERS, SOCKETS_MAP, STATS_MAP, SockState,
    WALKED_NETNS_LIST_MAP, WALKED_NETNS_MAP, WalkedNetns, stat,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{CgroupAttachMode, Iter, SockOps, TracePoint},
};

use super::{
    CaptureError,
    btf::{Btf, TcpOffsets},
    cgroup, privileges,
    tracefs::{self, SynackOffsets},
    walk::Walk,
};
use crate::config::{Config, FoldMode};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf.o"));

/// One reading of the kernel maps.
pub struct Snapshot {
    /// Cumulative counters per flow key.
    pub flows: Vec<(FlowKey, FlowAgg)>,
    /// Cumulative program counters, summed over CPUs, indexed by `agent_common::maps::stat`.
    pub stats: [u64; stat::COUNT as usize],
}

/// The loaded, attached programs and their maps. Dropping it detaches everything.
pub struct Capture {
    _ebpf: Ebpf,
    flows: HashMap<MapData, FlowKey, FlowAgg>,
    stats: PerCpuArray<MapData, u64>,
    folding: Folding,
}

/// How open sockets are folded.
enum Folding {
    /// By the walk of open sockets in the walked namespaces.
    Walk(Walk),
    /// From per-segment callbacks, because walk mode is not available here (why).
    FellBack(String),
    /// From per-segment callbacks, as configured (`--fold-mode callbacks`).
    Callbacks,
}

/// Kernel memory of a preallocated hash map, approximately (element header + key + value).
fn htab_bytes(entries: u32, key: usize, value: usize) -> u64 {
    let round = |n: usize| n.div_ceil(8) * 8;
    entries as u64 * (48 + round(key) + round(value)) as u64
}

impl Capture {
    pub fn start(cfg: &Config) -> Result<Capture, CaptureError> {
        privileges::check()?;
        let cgroup = cgroup::resolve(cfg.cgroup.as_deref())?;
        let offsets = tracefs::synack_offsets()?;
        let tcp = match cfg.fold_mode {
            FoldMode::Walk => Btf::from_sys().and_then(|b| walk_btf(&b)).map(Some).map_err(|e| e.to_string()),
            FoldMode::Callbacks => Ok(None),
        };
        let mut ebpf = load(cfg, &offsets, tcp.as_ref().ok().and_then(Option::as_ref).map(|(t, _)| t))?;
        // Before the sock_ops program attaches, so that sockets of walked namespaces get no
        // per-segment callbacks from the start.
        let folding = match tcp {
            Ok(Some((_, iter_id))) => start_walk(&mut ebpf, cfg, iter_id).map_or_else(Folding::FellBack, Folding::Walk),
            Ok(None) => Folding::Callbacks,
            Err(reason) => Folding::FellBack(reason),
        };
        if let Folding::FellBack(reason) = &folding {
            tracing::warn!(
                "the walk of open sockets is not available ({reason}): every socket folds from per-segment \
                 callbacks, which costs more per packet"
            );
        }

        let sockets_mem = htab_bytes(cfg.max_sockets, 8, size_of::<SockState>());
        let flows_mem = htab_bytes(cfg.max_flows, size_of::<FlowKey>(), size_of::<FlowAgg>());
        let listeners_mem = htab_bytes(MAX_LISTENERS, 4, size_of::<Listener>());
        tracing::info!(
            max_sockets = cfg.max_sockets,
            sockets_mib = format_args!("{:.1}", sockets_mem as f64 / 1048576.0),
            max_flows = cfg.max_flows,
            flows_mib = format_args!("{:.1}", flows_mem as f64 / 1048576.0),
            total_mib = format_args!("{:.1}", (sockets_mem + flows_mem + listeners_mem) as f64 / 1048576.0),
            "kernel maps sized"
        );

        let cg = File::open(&cgroup).map_err(|source| CaptureError::OpenCgroup { path: cgroup.clone(), source })?;
        let prog: &mut SockOps = program(&mut ebpf, "flow_sock_ops")?;
        prog.load().map_err(|e| prog_err("loading sock_ops program", e, ""))?;
        // bpf_link attachments always coexist with other programs; the link API takes no mode flags.
        prog.attach(&cg, CgroupAttachMode::Single).map_err(|e| {
            prog_err(
                &format!("attaching sock_ops to cgroup {}", cgroup.display()),
                e,
                " (is it a cgroup v2 directory?)",
            )
        })?;
        let tp: &mut TracePoint = program(&mut ebpf, "flow_synack_retrans")?;
        tp.load().map_err(|e| prog_err("loading tracepoint program", e, ""))?;
        tp.attach("tcp", "tcp_retransmit_synack").map_err(|e| {
            prog_err("attaching tcp:tcp_retransmit_synack", e, " (is tracefs mounted at /sys/kernel/tracing?)")
        })?;
        tracing::info!(
            cgroup = %cgroup.display(),
            walked_namespaces = if let Folding::Walk(w) = &folding { w.namespaces() } else { 0 },
            "sock_ops and tcp:tcp_retransmit_synack attached"
        );

        let flows = HashMap::try_from(ebpf.take_map(FLOWS_MAP).ok_or(CaptureError::MissingMap(FLOWS_MAP))?)
            .map_err(|source| CaptureError::Map { name: FLOWS_MAP, source })?;
        let stats = PerCpuArray::try_from(ebpf.take_map(STATS_MAP).ok_or(CaptureError::MissingMap(STATS_MAP))?)
            .map_err(|source| CaptureError::Map { name: STATS_MAP, source })?;
        let _ = LISTENERS_MAP;
        Ok(Capture { _ebpf: ebpf, flows, stats, folding })
    }

    /// How many network namespaces the walk covers, or why there is no walk (`None` with
    /// `--fold-mode callbacks`).
    pub fn walk_status(&self) -> Option<Result<usize, String>> {
        match &self.folding {
            Folding::Walk(w) => Some(Ok(w.namespaces())),
            Folding::FellBack(reason) => Some(Err(reason.clone())),
            Folding::Callbacks => None,
        }
    }

    /// Run the walk of open sockets: every established socket of a walked namespace has its new
    /// bytes, segments and retransmissions (and an RTT sample) in its flow now. No-op in
    /// callback mode.
    pub fn walk(&self) -> Result<(), CaptureError> {
        let Folding::Walk(walk) = &self.folding else { return Ok(()) };
        let started = Instant::now();
        walk.run().map_err(CaptureError::Walk)?;
        tracing::trace!(elapsed = ?started.elapsed(), "walked the open sockets");
        Ok(())
    }

    /// Read every flow and the program counters.
    pub fn read(&self) -> Result<Snapshot, CaptureError> {
        let map_err = |source| CaptureError::Map { name: FLOWS_MAP, source };
        let mut flows = Vec::new();
        for item in self.flows.iter() {
            match item {
                Ok(kv) => flows.push(kv),
                // A key deleted between get_next_key and lookup (eviction) is not an error.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(e)),
            }
        }
        let mut stats = [0u64; stat::COUNT as usize];
        for (i, slot) in stats.iter_mut().enumerate() {
            let v = self.stats.get(&(i as u32), 0).map_err(|source| CaptureError::Map { name: STATS_MAP, source })?;
            *slot = v.iter().copied().fold(0u64, u64::wrapping_add);
        }
        Ok(Snapshot { flows, stats })
    }

    /// Remove an idle flow key. Returns the value it held at removal if it changed since `seen`
    /// (a socket folded into it in between), so the caller can account for the difference.
    pub fn evict(&mut self, key: &FlowKey) -> Result<Option<FlowAgg>, CaptureError> {
        let last = match self.flows.get(key, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(source) => {
                return Err(CaptureError::Map { name: FLOWS_MAP, source });
            }
        };
        match self.flows.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(Some(last)),
            Err(source) => Err(CaptureError::Map { name: FLOWS_MAP, source }),
        }
    }
}

/// Load the eBPF object: map sizes, settings and offsets as globals (`tcp`: the walk's; without
/// them the walk is not started).
fn load(cfg: &Config, synack: &SynackOffsets, tcp: Option<&TcpOffsets>) -> Result<Ebpf, CaptureError> {
    let fold_ns = cfg.fold_interval.as_nanos().min(u64::MAX as u128) as u64;
    let t = tcp.copied().unwrap_or_default();
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(FLOWS_MAP, cfg.max_flows)
        .map_max_entries(SOCKETS_MAP, cfg.max_sockets)
        .override_global("FOLD_INTERVAL_NS", &fold_ns, true)
        .override_global("TCP_OFF_BYTES_ACKED", &t.bytes_acked, true)
        .override_global("TCP_OFF_BYTES_RECEIVED", &t.bytes_received, true)
        .override_global("TCP_OFF_SEGS_OUT", &t.segs_out, true)
        .override_global("TCP_OFF_SEGS_IN", &t.segs_in, true)
        .override_global("TCP_OFF_TOTAL_RETRANS", &t.total_retrans, true)
        .override_global("TCP_OFF_SND_UNA", &t.snd_una, true)
        .override_global("TCP_OFF_SND_NXT", &t.snd_nxt, true)
        .override_global("TCP_OFF_SRTT_US", &t.srtt_us, true)
        .override_global("TCP_OFF_STATE", &t.state, true)
        .override_global("TCP_OFF_CB_FLAGS", &t.cb_flags, true)
        .override_global("TCP_OFF_FAMILY", &t.family, true)
        .override_global("TCP_OFF_RCV_SADDR", &t.rcv_saddr, true)
        .override_global("TCP_OFF_DADDR", &t.daddr, true)
        .override_global("TCP_OFF_V6_RCV_SADDR", &t.v6_rcv_saddr, true)
        .override_global("TCP_OFF_V6_DADDR", &t.v6_daddr, true)
        .override_global("TCP_OFF_NUM", &t.num, true)
        .override_global("TCP_OFF_DPORT", &t.dport, true)
        .override_global("TCP_OFF_SK_FLAGS", &t.sk_flags, true)
        .override_global("SYNACK_OFF_SPORT", &synack.sport, true)
        .override_global("SYNACK_OFF_DPORT", &synack.dport, true)
        .override_global("SYNACK_OFF_FAMILY", &synack.family, true)
        .override_global("SYNACK_OFF_SADDR", &synack.saddr, true)
        .override_global("SYNACK_OFF_DADDR", &synack.daddr, true)
        .override_global("SYNACK_OFF_SADDR_V6", &synack.saddr_v6, true)
        .override_global("SYNACK_OFF_DADDR_V6", &synack.daddr_v6, true);
    loader.load(EBPF_OBJECT).map_err(CaptureError::Load)
}

/// What the walk needs of the kernel's BTF: the `tcp_sock` offsets and the type id of the
/// `iter/tcp` target.
fn walk_btf(btf: &Btf) -> Result<(TcpOffsets, u32), super::btf::BtfError> {
    let id = btf.func_id(ITER_TARGET).ok_or_else(|| super::btf::BtfError::NoFunc(ITER_TARGET.into()))?;
    Ok((TcpOffsets::from_btf(btf)?, id))
}

const ITER_TARGET: &str = "bpf_iter_tcp";

/// Load the walk program (its iterator target has kernel type id `iter_id`), link it, enter the
/// walked namespaces and tell the sock_ops program which they are. The error says why the walk
/// is unavailable.
fn start_walk(ebpf: &mut Ebpf, cfg: &Config, iter_id: u32) -> Result<Walk, String> {
    let btf = aya::Btf::parse(&super::btf::stand_in_for_func(iter_id, ITER_TARGET), aya::Endianness::default())
        .map_err(|e| format!("building the iterator's BTF stand-in: {e}"))?;
    let prog: &mut Iter = program(ebpf, "flow_walk").map_err(|e| e.to_string())?;
    prog.load("tcp", &btf).map_err(|e| format!("loading the walk program: {}", error_chain(&e)))?;
    let prog_fd = prog.fd().map_err(|e| e.to_string())?;
    let (walk, cookies) = Walk::start(prog_fd.as_fd(), &cfg.walk_netns)?;
    let mut walked: HashMap<&mut MapData, u64, u8> = HashMap::try_from(
        ebpf.map_mut(WALKED_NETNS_MAP).ok_or_else(|| format!("map {WALKED_NETNS_MAP} is missing from the object"))?,
    )
    .map_err(|e| format!("map {WALKED_NETNS_MAP}: {e}"))?;
    for &c in &cookies {
        walked.insert(c, 1, 0).map_err(|e| format!("registering a walked namespace: {e}"))?;
    }
    let mut list: Array<&mut MapData, WalkedNetns> = Array::try_from(
        ebpf.map_mut(WALKED_NETNS_LIST_MAP)
            .ok_or_else(|| format!("map {WALKED_NETNS_LIST_MAP} is missing from the object"))?,
    )
    .map_err(|e| format!("map {WALKED_NETNS_LIST_MAP}: {e}"))?;
    list.set(0, WalkedNetns::of(&cookies), 0).map_err(|e| format!("listing the walked namespaces: {e}"))?;
    Ok(walk)
}

/// An error and its sources, for the kernel verifier's log, which aya keeps in a source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| CaptureError::Program {
        what: format!("finding program {name}"),
        source: aya::programs::ProgramError::NotLoaded,
        hint: " (the embedded object is incomplete; rebuild)",
    })?;
    p.try_into().map_err(|e| prog_err(&format!("program {name}"), e, ""))
}

fn prog_err(what: &str, source: aya::programs::ProgramError, hint: &'static str) -> CaptureError {
    CaptureError::Program { what: what.to_string(), source, hint }
}
