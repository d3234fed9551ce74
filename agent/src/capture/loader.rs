//! Load the embedded eBPF object with the configured map sizes, attach it, and read its maps.

use std::{
    fs::File,
    os::fd::AsFd,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    time::Instant,
};

use agent_common::{
    maps::{
        FLOWS_MAP, FlowAgg, FlowKey, LISTENER_PORTS, LISTENERS_MAP, Listener, RequestKey, SOCKETS_MAP, STATS_MAP,
        SYNACK_TALLY_REQUESTS, SockState, WALK_FLOOR_MAP, WALKED_NETNS_LIST_MAP, WALKED_NETNS_MAP, stat,
    },
    record::{ConnRecord, RECORD_HEADS_MAP, RECORD_SPILL_MAP, RECORDS_MAP, RingHead, SpillKey},
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray},
    programs::{BtfTracePoint, CgroupAttachMode, Iter, ProgramFd, SockOps, TracePoint},
};

use super::{
    CaptureError,
    btf::{Btf, CgroupOffsets, TcpOffsets},
    cgroup, peers,
    privileges::{self, KeptBy},
    records::{RecordFlows, Records, Rings},
    tracefs::{self, SynackOffsets},
    walk::{Registry, Walk},
};
use crate::{
    config::{Config, FoldMode, SynackHook, SynackListeners},
    sys,
};

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
    /// Connection records (walk mode on Linux 6.10 and later, unless `--record-slots 0`).
    records: Option<Records>,
    synack: Attached,
    /// The attached programs, whose skipped runs are read into `stat::MISSED_RUNS`.
    progs: Vec<ProgramFd>,
    /// Their skipped runs at the last reading that worked.
    missed_runs: AtomicU64,
    /// Whether a failed reading of them was logged (once is enough).
    missed_runs_failed: AtomicBool,
}

/// Which SYN-ACK program is attached.
pub enum Attached {
    /// The BTF tracepoint.
    Btf,
    /// The classic tracepoint: configured (`None`) or because the BTF one failed (why).
    Tracepoint(Option<String>),
}

impl std::fmt::Display for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attached::Btf => f.write_str("tp_btf/tcp_retransmit_synack"),
            Attached::Tracepoint(_) => f.write_str("tcp:tcp_retransmit_synack"),
        }
    }
}

/// What the kernel's BTF gives: the walk's offsets (which the SYN-ACK BTF program reads too),
/// the iterator's type id and the SYN-ACK tracepoint's; or why it gives nothing.
struct KernelTypes {
    tcp: Result<TcpOffsets, String>,
    /// Where a socket's cgroup is, for the walk to fold only the sockets of the agent's cgroup.
    cgroup: Result<CgroupOffsets, String>,
    iter_id: Result<u32, String>,
    synack_id: Result<u32, String>,
}

impl KernelTypes {
    fn read() -> KernelTypes {
        let btf = match Btf::from_sys() {
            Ok(b) => b,
            Err(e) => {
                let e = e.to_string();
                return KernelTypes {
                    tcp: Err(e.clone()),
                    cgroup: Err(e.clone()),
                    iter_id: Err(e.clone()),
                    synack_id: Err(e),
                };
            }
        };
        let tcp = TcpOffsets::from_btf(&btf).map_err(|e| e.to_string());
        let need = |id: Option<u32>, missing: &str| {
            let id = id.ok_or_else(|| format!("{missing} is not in the kernel's BTF"))?;
            tcp.as_ref().map(|_| id).map_err(Clone::clone)
        };
        // In callback mode too: the walk made at start (`Walk::run_for_callbacks`).
        let iter_id =
            need(btf.func_id(ITER_TARGET), &format!("function {ITER_TARGET} (this kernel has no such BPF iterator)"));
        let synack_id = need(btf.typedef_id(SYNACK_BTF_TYPE), &format!("tracepoint type {SYNACK_BTF_TYPE}"));
        let cgroup = CgroupOffsets::from_btf(&btf).map_err(|e| e.to_string());
        KernelTypes { tcp, cgroup, iter_id, synack_id }
    }
}

const SYNACK_TRACEPOINT: &str = "tcp_retransmit_synack";
pub(super) const SYNACK_BTF_TYPE: &str = "btf_trace_tcp_retransmit_synack";

/// How open sockets are folded.
enum Folding {
    /// By the walk of open sockets in the walked namespaces.
    Walk(Box<Walk>),
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
    /// Load and attach the programs, and take over the connections an earlier run of the agent
    /// left open (the walk at start): the daemon.
    pub fn start(cfg: &Config) -> Result<Capture, CaptureError> {
        Self::start_as(cfg, true)
    }

    /// `start` without the walk at start, which changes the callback flags of open sockets:
    /// `flow-agent check`, which may run beside a running agent whose sockets those are.
    pub fn start_for_check(cfg: &Config) -> Result<Capture, CaptureError> {
        Self::start_as(cfg, false)
    }

    fn start_as(cfg: &Config, take_over: bool) -> Result<Capture, CaptureError> {
        privileges::check()?;
        let cgroup = cgroup::resolve(cfg.cgroup.as_deref())?;
        if take_over {
            refuse_beside_another_agent(&cgroup)?;
        }
        let kernel = KernelTypes::read();
        // Needed only if the classic tracepoint is attached; read (and tracefs mounted) up front,
        // as the offsets are set when the object loads.
        let tracepoint = match (tracefs::synack_offsets(), cfg.synack_hook) {
            (Err(e), SynackHook::Tracepoint) => return Err(e),
            (r, _) => r,
        };
        let agent_cgroup = agent_cgroup(&cgroup, &kernel.cgroup);
        let rings = record_rings(cfg);
        let mut ebpf = load(cfg, tracepoint.as_ref().ok(), kernel.tcp.as_ref().ok(), agent_cgroup, rings)?;
        // Before the sock_ops program attaches, so that sockets of walked namespaces get no
        // per-segment callbacks from the start.
        let mut folding = match (&kernel.iter_id, cfg.fold_mode) {
            (Ok(id), FoldMode::Callbacks) if take_over => {
                // Connections an earlier run in walk mode left open: counted from now on.
                match start_walk(&mut ebpf, cfg, *id) {
                    Ok(w) => w.run_for_callbacks().map_err(CaptureError::Walk)?,
                    Err(e) => tracing::warn!(
                        "the walk at start is not available ({e}): connections an earlier run of the agent walked \
                         and left open are counted whole at their close"
                    ),
                }
                Folding::Callbacks
            }
            (_, FoldMode::Callbacks) => Folding::Callbacks,
            (Ok(id), FoldMode::Walk) => {
                start_walk(&mut ebpf, cfg, *id).map_or_else(Folding::FellBack, |w| Folding::Walk(Box::new(w)))
            }
            (Err(reason), FoldMode::Walk) => Folding::FellBack(reason.clone()),
        };
        if let Folding::FellBack(reason) = &folding {
            tracing::warn!(
                "the walk of open sockets is not available ({reason}): every socket folds from per-segment \
                 callbacks, which costs more per packet"
            );
        }

        // Before the sock_ops program attaches, every socket with this agent's callback flags is
        // an earlier run's: the walk at start counts them from now on rather than whole again
        // (or not at all), and hands those with per-segment callbacks to the walk.
        if let Folding::Walk(w) = &mut folding
            && take_over
        {
            w.run_at_start().map_err(CaptureError::Walk)?;
        }

        let sockets_mem = htab_bytes(cfg.max_sockets, 8, size_of::<SockState>());
        let flows_mem = htab_bytes(cfg.max_flows, size_of::<FlowKey>(), size_of::<FlowAgg>());
        // As `load` derived it from the same settings.
        let by_cgroup = synack_by_cgroup(cfg, agent_cgroup.is_some());
        let listeners_mem = listener_slots(by_cgroup) as u64 * size_of::<Listener>() as u64;
        // LRU: preallocated, a fixed size (`SYNACK_TALLY_REQUESTS`).
        let synack_tally_mem = htab_bytes(SYNACK_TALLY_REQUESTS, size_of::<RequestKey>(), size_of::<u32>());
        let records_mem = rings.map_or(0, |(cpus, slots)| {
            (cpus as u64) * (slots * size_of::<ConnRecord>() as u64 + size_of::<RingHead>() as u64)
        });
        tracing::info!(
            max_sockets = cfg.max_sockets,
            sockets_mib = format_args!("{:.1}", sockets_mem as f64 / 1048576.0),
            max_flows = cfg.max_flows,
            flows_mib = format_args!("{:.1}", flows_mem as f64 / 1048576.0),
            record_rings = rings.map_or(0, |(cpus, _)| cpus),
            record_slots = rings.map_or(0, |(_, slots)| slots),
            records_mib = format_args!("{:.1}", records_mem as f64 / 1048576.0),
            synack_tally_mib = format_args!("{:.1}", synack_tally_mem as f64 / 1048576.0),
            // Not preallocated: memory only for records spilled while a ring is full.
            records_spill_at_most_mib = format_args!(
                "{:.1}",
                rings.map_or(0, |_| htab_bytes(cfg.max_sockets, size_of::<SpillKey>(), size_of::<ConnRecord>())) as f64
                    / 1048576.0
            ),
            total_mib = format_args!(
                "{:.1}",
                (sockets_mem + flows_mem + listeners_mem + synack_tally_mem + records_mem) as f64 / 1048576.0
            ),
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
        let mut progs = vec![
            prog.fd()
                .map_err(|e| prog_err("sock_ops program", e, ""))?
                .try_clone()
                .map_err(CaptureError::DupProgram)?,
        ];
        let synack = match cfg.synack_hook {
            SynackHook::Btf => match attach_synack_btf(&mut ebpf, &kernel.synack_id) {
                Ok(fd) => {
                    progs.push(fd);
                    Attached::Btf
                }
                Err(reason) => {
                    tracing::warn!(
                        "the BTF tracepoint for SYN-ACK retransmissions is not available ({reason}): using the classic \
                         tracepoint, which the kernel skips while another BPF program or BPF system call holds the \
                         CPU (counted in agent_stats.missed_runs)"
                    );
                    tracepoint?;
                    progs.push(attach_synack_tracepoint(&mut ebpf)?);
                    Attached::Tracepoint(Some(reason))
                }
            },
            SynackHook::Tracepoint => {
                progs.push(attach_synack_tracepoint(&mut ebpf)?);
                Attached::Tracepoint(None)
            }
        };
        if let Folding::Walk(_) = &folding {
            let walk: &mut Iter = program(&mut ebpf, "flow_walk")?;
            progs.push(
                walk.fd()
                    .map_err(|e| prog_err("walk program", e, ""))?
                    .try_clone()
                    .map_err(CaptureError::DupProgram)?,
            );
        }
        let listeners = if by_cgroup { "cgroup" } else { "port" };
        tracing::info!(
            cgroup = %cgroup.display(),
            walked_namespaces = if let Folding::Walk(w) = &folding { w.namespaces() } else { 0 },
            synack_listeners = %listeners,
            "sock_ops and {synack} attached"
        );

        let flows = HashMap::try_from(ebpf.take_map(FLOWS_MAP).ok_or(CaptureError::MissingMap(FLOWS_MAP))?)
            .map_err(|source| CaptureError::Map { name: FLOWS_MAP, source })?;
        let stats = PerCpuArray::try_from(ebpf.take_map(STATS_MAP).ok_or(CaptureError::MissingMap(STATS_MAP))?)
            .map_err(|source| CaptureError::Map { name: STATS_MAP, source })?;
        let mut records = match rings {
            Some((cpus, slots)) => Some(open_records(&mut ebpf, cfg, cpus, slots)?),
            None => None,
        };
        // The entries of the walk at start.
        if let Folding::Walk(w) = &mut folding {
            let items = w.drain_items();
            if let Some(r) = &mut records {
                r.note_walk(items, false);
            }
        }
        Ok(Capture {
            _ebpf: ebpf,
            flows,
            stats,
            folding,
            records,
            synack,
            progs,
            missed_runs: AtomicU64::new(0),
            missed_runs_failed: AtomicBool::new(false),
        })
    }

    /// Which SYN-ACK program is attached.
    pub fn synack(&self) -> &Attached {
        &self.synack
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

    /// The thread that keeps capabilities after the rest of the process dropped them
    /// (`--walk-netns-all`), if any: for `drop_privileges`.
    pub fn kept_privileges(&self) -> Option<KeptBy> {
        match &self.folding {
            Folding::Walk(w) => w.kept(),
            _ => None,
        }
    }

    /// With `--walk-netns-all`: walk the network namespaces that appeared, stop walking those
    /// that went (see `Walk::refresh`). No-op otherwise.
    pub fn refresh_namespaces(&mut self) {
        let Folding::Walk(walk) = &mut self.folding else { return };
        if let Err(e) = walk.refresh() {
            tracing::warn!("looking for network namespaces to walk: {e}");
        }
    }

    /// Run the walk of open sockets: every established socket of a walked namespace has its new
    /// bytes, segments and retransmissions (and an RTT sample) in its flow now. No-op in
    /// callback mode.
    pub fn walk(&mut self) -> Result<(), CaptureError> {
        let Folding::Walk(walk) = &mut self.folding else { return Ok(()) };
        let started = Instant::now();
        let walked = walk.run();
        // What the walk made, whatever its end: records of its sockets refer to it.
        let full = walk.last_was_full();
        let items = walk.drain_items();
        if let Some(r) = &mut self.records {
            r.note_walk(items, full);
        }
        walked.map_err(CaptureError::Walk)?;
        tracing::trace!(elapsed = ?started.elapsed(), "walked the open sockets");
        Ok(())
    }

    /// Whether the programs write connection records (`--record-slots`, walk mode), which
    /// `read_records` must then read (`records::next_read_wait`).
    pub fn has_records(&self) -> bool {
        self.records.is_some()
    }

    /// Fold the connection records the programs wrote since the last reading (walk mode): often
    /// enough that the rings do not fill (`records::next_read_wait`). Returns how many it read.
    pub fn read_records(&mut self) -> usize {
        self.records.as_mut().map_or(0, |r| r.read())
    }

    /// The agent is stopping: the readings from now on fold every connection record they read
    /// (`records::Records::finish`).
    pub fn finish_records(&mut self) {
        if let Some(r) = &mut self.records {
            r.finish();
        }
    }

    /// Read every flow and the program counters, connection records folded first.
    pub fn read(&mut self) -> Result<Snapshot, CaptureError> {
        self.read_records();
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
        // The programs never write this slot: the kernel counts their skipped runs itself.
        stats[stat::MISSED_RUNS as usize] = self.missed_runs();
        if let Some(r) = &self.records {
            r.flows().add_to(&mut flows);
            let full = &mut stats[stat::FLOWS_FULL as usize];
            *full = full.wrapping_add(r.flows().flows_full());
            let full = &mut stats[stat::SOCKETS_FULL as usize];
            *full = full.wrapping_add(r.sockets_full());
        }
        Ok(Snapshot { flows, stats })
    }

    /// Runs of the attached programs that the kernel skipped, in all. If the kernel will not say
    /// (logged), the last count stands and the flows are read all the same.
    fn missed_runs(&self) -> u64 {
        let mut n = 0u64;
        for p in &self.progs {
            match sys::prog_recursion_misses(p.as_fd()) {
                Ok(m) => n = n.wrapping_add(m),
                Err(e) => {
                    if !self.missed_runs_failed.swap(true, Relaxed) {
                        tracing::warn!(
                            "cannot read how many program runs the kernel skipped (BPF_OBJ_GET_INFO_BY_FD: {e}): \
                             agent_stats.missed_runs stays at its last count"
                        );
                    }
                    return self.missed_runs.load(Relaxed);
                }
            }
        }
        self.missed_runs.store(n, Relaxed);
        n
    }

    /// Remove an idle flow key. Returns the value it held at removal if it changed since `seen`
    /// (a socket folded into it in between), so the caller can account for the difference.
    /// The key's records' flow (`records::RecordFlows`) goes with it: the value returned is
    /// the two added up, as `read` gives them.
    pub fn evict(&mut self, key: &FlowKey) -> Result<Option<FlowAgg>, CaptureError> {
        let kernel = self.evict_kernel(key)?;
        let mine = self.records.as_mut().and_then(|r| r.flows_mut().remove(key));
        Ok(match (kernel, mine) {
            (Some(k), Some(m)) => Some(super::records::sum(&k, &m)),
            (k, m) => k.or(m),
        })
    }

    fn evict_kernel(&mut self, key: &FlowKey) -> Result<Option<FlowAgg>, CaptureError> {
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

/// LISTENERS' entries: one per port (1.5 MiB) where the SYN-ACK programs go by port, and the
/// least an array can have where they check the listener's cgroup (`by_cgroup`: the agent's
/// cgroup is known, `load`) and nothing uses it: listens are not noted, and a lookup past its end
/// finds no listener.
fn listener_slots(by_cgroup: bool) -> u32 {
    if by_cgroup { 1 } else { LISTENER_PORTS }
}

/// Whether the SYN-ACK programs check a listener's cgroup (`synack.rs`): as configured
/// (`--synack-listeners`), where the agent's cgroup is known (`known`, see `agent_cgroup`);
/// otherwise they go by port.
fn synack_by_cgroup(cfg: &Config, known: bool) -> bool {
    known && cfg.synack_listeners == SynackListeners::Cgroup
}

/// The agent's cgroup as the walk checks a socket's against it (`walk::in_agent_cgroup`): its
/// id (its directory's inode number) and where the kernel keeps a socket's. `None`, with a
/// warning, when either is unknown: the walk then folds every socket armed as walked in its
/// namespaces, another agent's on a sibling cgroup too.
fn agent_cgroup(path: &std::path::Path, offsets: &Result<CgroupOffsets, String>) -> Option<(u64, CgroupOffsets)> {
    use std::os::unix::fs::MetadataExt;
    let id = std::fs::metadata(path).map(|m| m.ino()).map_err(|e| e.to_string());
    match id.and_then(|id| offsets.clone().map(|o| (id, o))) {
        Ok(found) => Some(found),
        Err(e) => {
            tracing::warn!(
                cgroup = %path.display(),
                "the walk cannot tell this cgroup's sockets from another agent's ({e}): run one agent per host; \
                 SYN-ACK retransmissions are matched to listeners by port"
            );
            None
        }
    }
}

/// The rings of connection records to make, as (CPUs, records per CPU): in walk mode, unless
/// `--record-slots 0`, on Linux 6.10 and later. (The gate dates from a first design in which the
/// walk marked its sockets with `bpf_setsockopt`, which the iterator has from 6.10; the design
/// kept needs nothing newer than the walk itself, but it is tested on 6.18 only.) `None`
/// otherwise (said why).
fn record_rings(cfg: &Config) -> Option<(usize, u64)> {
    use aya::util::KernelVersion;
    if cfg.fold_mode != FoldMode::Walk || cfg.record_slots == 0 {
        return None;
    }
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 10, 0) => {}
        Ok(v) => {
            tracing::info!(
                "connection records need Linux 6.10 (this is {v}): the programs fold connection events themselves"
            );
            return None;
        }
        Err(e) => {
            tracing::warn!("the kernel's version is unknown ({e}): the programs fold connection events themselves");
            return None;
        }
    }
    match aya::util::nr_cpus() {
        Ok(n) => Some((n, cfg.record_slots as u64)),
        Err((path, e)) => {
            tracing::warn!(
                "the number of possible CPUs is unknown ({path}: {e}): the programs fold connection events themselves"
            );
            None
        }
    }
}

/// Map the rings (`records::Rings`) and take the SOCKETS map, whose entries records refer to.
fn open_records(ebpf: &mut Ebpf, cfg: &Config, cpus: usize, slots: u64) -> Result<Records, CaptureError> {
    // The mapping holds the map: its fd may close.
    let mut mapped = |name: &'static str, len: usize| -> Result<sys::SharedMapping, CaptureError> {
        let Some(Map::Array(data)) = ebpf.take_map(name) else {
            return Err(CaptureError::MissingMap(name));
        };
        sys::SharedMapping::new(data.fd().as_fd(), len)
            .map_err(|e| CaptureError::Records(format!("mapping {name} into memory: {e}")))
    };
    let heads = mapped(RECORD_HEADS_MAP, cpus * size_of::<RingHead>())?;
    let records = mapped(RECORDS_MAP, cpus * slots as usize * size_of::<ConnRecord>())?;
    let rings = Rings::new(heads, records, cpus, slots).map_err(CaptureError::Records)?;
    let sockets = HashMap::try_from(ebpf.take_map(SOCKETS_MAP).ok_or(CaptureError::MissingMap(SOCKETS_MAP))?)
        .map_err(|source| CaptureError::Map { name: SOCKETS_MAP, source })?;
    let spill = HashMap::try_from(ebpf.take_map(RECORD_SPILL_MAP).ok_or(CaptureError::MissingMap(RECORD_SPILL_MAP))?)
        .map_err(|source| CaptureError::Map { name: RECORD_SPILL_MAP, source })?;
    let flows = RecordFlows::new(cfg.max_flows as usize, cfg.max_sockets as usize);
    Ok(Records::new(rings, flows, sockets, spill, cfg.max_sockets as usize))
}

/// Load the eBPF object: map sizes, settings and offsets as globals (`tcp`: those of the walk and
/// of the SYN-ACK BTF program, neither of which starts without them; `synack`: the classic
/// tracepoint's, which is not attached without them; `agent_cgroup`: see `agent_cgroup`, and
/// where it is known the SYN-ACK programs count by the listener's cgroup unless configured to go
/// by port, `synack_by_cgroup`).
fn load(
    cfg: &Config,
    synack: Option<&SynackOffsets>,
    tcp: Option<&TcpOffsets>,
    agent_cgroup: Option<(u64, CgroupOffsets)>,
    rings: Option<(usize, u64)>,
) -> Result<Ebpf, CaptureError> {
    let fold_ns = cfg.fold_interval.as_nanos().min(u64::MAX as u128) as u64;
    // Without records, the smallest arrays (the programs' global says there are none).
    let (cpus, slots) = rings.unwrap_or((1, 0));
    let (cgroup_id, cg) = agent_cgroup.unwrap_or_default();
    let t = tcp.copied().unwrap_or_default();
    let synack = synack.copied().unwrap_or_default();
    let by_cgroup = synack_by_cgroup(cfg, agent_cgroup.is_some());
    let synack_by_cgroup = by_cgroup as u32;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(LISTENERS_MAP, listener_slots(by_cgroup))
        .map_max_entries(FLOWS_MAP, cfg.max_flows)
        .map_max_entries(SOCKETS_MAP, cfg.max_sockets)
        .map_max_entries(WALKED_NETNS_MAP, cfg.max_walked_netns)
        .map_max_entries(RECORDS_MAP, (cpus as u64 * slots.max(1)) as u32)
        .map_max_entries(RECORD_HEADS_MAP, cpus as u32)
        .map_max_entries(RECORD_SPILL_MAP, if slots == 0 { 1 } else { cfg.max_sockets })
        .override_global("RECORD_SLOTS", &slots, true)
        .override_global("FOLD_INTERVAL_NS", &fold_ns, true)
        .override_global("TCP_OFF_BYTES_ACKED", &t.bytes_acked, true)
        .override_global("TCP_OFF_BYTES_RECEIVED", &t.bytes_received, true)
        .override_global("TCP_OFF_SEGS_OUT", &t.segs_out, true)
        .override_global("TCP_OFF_SEGS_IN", &t.segs_in, true)
        .override_global("TCP_OFF_MSTAMP", &t.mstamp, true)
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
        .override_global("AGENT_CGROUP_ID", &cgroup_id, true)
        .override_global("CG_OFF_SK_CGROUP", &cg.sk_cgroup, true)
        .override_global("CG_OFF_LEVEL", &cg.level, true)
        .override_global("CG_OFF_ANCESTORS", &cg.ancestors, true)
        .override_global("CG_OFF_KN", &cg.kn, true)
        .override_global("CG_OFF_KN_ID", &cg.kn_id, true)
        .override_global("SYNACK_BY_CGROUP", &synack_by_cgroup, true)
        .override_global("SYNACK_OFF_SKADDR", &synack.skaddr, true)
        .override_global("SYNACK_OFF_SPORT", &synack.sport, true)
        .override_global("SYNACK_OFF_DPORT", &synack.dport, true)
        .override_global("SYNACK_OFF_FAMILY", &synack.family, true)
        .override_global("SYNACK_OFF_SADDR", &synack.saddr, true)
        .override_global("SYNACK_OFF_DADDR", &synack.daddr, true)
        .override_global("SYNACK_OFF_SADDR_V6", &synack.saddr_v6, true)
        .override_global("SYNACK_OFF_DADDR_V6", &synack.daddr_v6, true);
    loader.load(EBPF_OBJECT).map_err(CaptureError::Load)
}

/// Load and attach the SYN-ACK BTF tracepoint program (the tracepoint's BTF type has id `id`).
/// The error says why it is unavailable.
fn attach_synack_btf(ebpf: &mut Ebpf, id: &Result<u32, String>) -> Result<ProgramFd, String> {
    let id = id.clone()?;
    let btf = aya::Btf::parse(&super::btf::stand_in_for_typedef(id, SYNACK_BTF_TYPE), aya::Endianness::default())
        .map_err(|e| format!("building the tracepoint's BTF stand-in: {e}"))?;
    let prog: &mut BtfTracePoint = program(ebpf, "flow_synack_retrans_btf").map_err(|e| e.to_string())?;
    prog.load(SYNACK_TRACEPOINT, &btf).map_err(|e| format!("loading: {}", error_chain(&e)))?;
    prog.attach().map_err(|e| format!("attaching: {}", error_chain(&e)))?;
    prog.fd().map_err(|e| e.to_string())?.try_clone().map_err(|e| e.to_string())
}

/// Load and attach the classic SYN-ACK tracepoint program.
fn attach_synack_tracepoint(ebpf: &mut Ebpf) -> Result<ProgramFd, CaptureError> {
    let tp: &mut TracePoint = program(ebpf, "flow_synack_retrans")?;
    tp.load().map_err(|e| prog_err("loading tracepoint program", e, ""))?;
    tp.attach("tcp", SYNACK_TRACEPOINT).map_err(|e| {
        prog_err("attaching tcp:tcp_retransmit_synack", e, " (is tracefs mounted at /sys/kernel/tracing?)")
    })?;
    tp.fd().map_err(|e| prog_err("tracepoint program", e, ""))?.try_clone().map_err(CaptureError::DupProgram)
}

const ITER_TARGET: &str = "bpf_iter_tcp";

/// An error if another flow-agent's sock_ops program already runs for the sockets of `cgroup`
/// (`peers`): before anything of this run touches a socket. Programs this one cannot name, or a
/// failed look, are a warning.
fn refuse_beside_another_agent(cgroup: &Path) -> Result<(), CaptureError> {
    let file = File::open(cgroup).map_err(|source| CaptureError::OpenCgroup { path: cgroup.to_path_buf(), source })?;
    let found = match peers::attached(&file) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                cgroup = %cgroup.display(),
                "looking for another flow-agent on these sockets (BPF_PROG_QUERY): {e}; were one running, the two \
                 would change each other's counts"
            );
            return Ok(());
        }
    };
    if let Some(peers) = found.agents_running() {
        return Err(CaptureError::OtherAgent { cgroup: cgroup.to_path_buf(), peers });
    }
    if !found.unnamed.is_empty() {
        tracing::warn!(
            cgroup = %cgroup.display(),
            programs = ?found.unnamed,
            "sock_ops programs already run for these sockets, whose names this agent cannot read (that takes \
             CAP_SYS_ADMIN); if one is another flow-agent's, the two change each other's counts: run one agent per host"
        );
    }
    Ok(())
}

/// Load the walk program (its iterator target has kernel type id `iter_id`), link it, enter the
/// walked namespaces and tell the sock_ops program which they are. The error says why the walk
/// is unavailable.
fn start_walk(ebpf: &mut Ebpf, cfg: &Config, iter_id: u32) -> Result<Walk, String> {
    let btf = aya::Btf::parse(&super::btf::stand_in_for_func(iter_id, ITER_TARGET), aya::Endianness::default())
        .map_err(|e| format!("building the iterator's BTF stand-in: {e}"))?;
    let floor = Array::try_from(
        ebpf.take_map(WALK_FLOOR_MAP).ok_or_else(|| format!("map {WALK_FLOOR_MAP} is missing from the object"))?,
    )
    .map_err(|e| format!("map {WALK_FLOOR_MAP}: {e}"))?;
    let hash = HashMap::try_from(Map::HashMap(map_handle(ebpf, WALKED_NETNS_MAP)?))
        .map_err(|e| format!("map {WALKED_NETNS_MAP}: {e}"))?;
    let list = Array::try_from(Map::Array(map_handle(ebpf, WALKED_NETNS_LIST_MAP)?))
        .map_err(|e| format!("map {WALKED_NETNS_LIST_MAP}: {e}"))?;
    let prog: &mut Iter = program(ebpf, "flow_walk").map_err(|e| e.to_string())?;
    prog.load("tcp", &btf).map_err(|e| format!("loading the walk program: {}", error_chain(&e)))?;
    let prog_fd = prog.fd().map_err(|e| e.to_string())?;
    Walk::start(
        prog_fd.as_fd(),
        &cfg.walk_netns,
        cfg.walk_netns_all,
        Registry::new(hash, list, cfg.max_walked_netns),
        floor,
        cfg.walk_full_interval,
    )
}

/// A handle of our own on map `name` of the object (a duplicate of its fd), which stays in the
/// object: the sock_ops program, loaded later, refers to it by the object's fd.
fn map_handle(ebpf: &Ebpf, name: &str) -> Result<MapData, String> {
    let data = match ebpf.map(name) {
        Some(Map::HashMap(m) | Map::Array(m)) => m,
        Some(_) => return Err(format!("map {name} is not a hash or an array")),
        None => return Err(format!("map {name} is missing from the object")),
    };
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| format!("map {name}: duplicating its fd: {e}"))?;
    MapData::from_fd(fd).map_err(|e| format!("map {name}: {e}"))
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
