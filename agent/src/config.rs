//! Settings: command-line flags and one TOML file with the same names. Flags win over the file,
//! the file over the defaults documented here and in `packaging/config.toml`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use agent_common::{
    maps::{DEFAULT_MAX_FLOWS, DEFAULT_MAX_SOCKETS, DEFAULT_MAX_WALKED_NETNS},
    record::DEFAULT_RECORD_SLOTS,
};

/// `record_slots` at most: 128 MiB of rings per CPU.
const MAX_RECORD_SLOTS: u32 = 1 << 20;
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Default `--aggregate-interval`: how often the kernel maps are drained.
pub const DEFAULT_AGGREGATE_INTERVAL: Duration = Duration::from_secs(1);
/// Default `--report-interval` when shipping, and in dry-run.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_DRY_RUN_REPORT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TOP_FLOWS: usize = 500;
/// Default `--fold-interval`: how stale an open socket's byte counters may get in its flow.
pub const DEFAULT_FOLD_INTERVAL: Duration = Duration::from_millis(100);
pub const DEFAULT_WALK_FULL_INTERVAL: Duration = Duration::from_secs(300);
/// The largest `--max-walked-netns`: each walked namespace but the agent's own has a thread.
const MAX_MAX_WALKED_NETNS: u32 = 65_536;
/// Default `--metrics-address`: where `/healthz` is served.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";
/// Default `--flow-log-max-aggregation-interval`, in seconds (as flow logs: 60 or 600).
pub const DEFAULT_FLOW_LOG_MAX_AGGREGATION_INTERVAL: u32 = 600;
/// Default `--control-socket`: the flow-operations API.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/flow-agent/control.sock";
/// Default `--spool-dir`: where reports wait for their destinations.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flow-agent/spool";
/// Default `--spool-max-bytes`: 64 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default `--shutdown-timeout`: how long SIGTERM waits for deliveries.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--request-timeout`: one HTTP request to a destination.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--signing-service` and `--signing-region` (SigV4).
pub const DEFAULT_SIGNING_SERVICE: &str = "networkflowmonitor";
pub const DEFAULT_SIGNING_REGION: &str = "us-east-1";
/// Default `--metadata-refresh-interval`: how often EC2 instance metadata is read again.
pub const DEFAULT_METADATA_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Where flow-log records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowLogDestination {
    Stdout,
    /// gzip files laid out as flow logs are in S3, under this directory.
    Directory(PathBuf),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON report per line.
    Json,
    /// A readable table per window.
    Table,
}

/// How open sockets' counters reach their flows.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FoldMode {
    /// A BPF iterator walks the open sockets of this network namespace (and of `walk_netns`) at
    /// every window end: no program runs per packet of their established connections. Sockets
    /// of other namespaces fold from callbacks.
    #[default]
    Walk,
    /// Per-segment callbacks (each RTT measurement, each sent segment) fold every socket as it
    /// goes.
    Callbacks,
}

/// Which program counts the SYN-ACK retransmissions of request sockets (no sock_ops callback
/// sees them).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynackHook {
    /// A BTF tracepoint program (`tp_btf/tcp_retransmit_synack`), skipped by the kernel only
    /// while the same program runs on the CPU. Falls back to `tracepoint` (logged) where the
    /// kernel refuses it.
    #[default]
    Btf,
    /// The classic tracepoint `tcp:tcp_retransmit_synack` (through tracefs), which the kernel
    /// skips whenever any BPF program or BPF map system call holds the CPU; skipped runs are
    /// counted in `agent_stats.missed_runs`.
    Tracepoint,
}

/// How the SYN-ACK programs tell a listener of the monitored cgroup (the SYN-ACK retransmissions
/// of its requests are counted) from another's.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynackListeners {
    /// By the listener's own cgroup, read as the walk reads a socket's: every listener of the
    /// cgroup, those opened before the agent started included. Falls back to `port` (logged)
    /// where the kernel's cgroup layout is unknown to the agent (no BTF).
    #[default]
    Cgroup,
    /// By local port: the ports listeners of the cgroup listened on since the agent started
    /// (sock_ops notes them), shared by namespaces listening on the same port. A listener older
    /// than the agent is counted only through the connections it accepts.
    Port,
}

/// Compression of OTLP requests.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpCompression {
    #[default]
    Gzip,
    None,
}

/// Flags of the agent itself (each has a TOML key of the same name with `_` for `-`).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML file with the same settings as the flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print reports to stdout (with --endpoint as well, they are also shipped).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of dry-run reports [default: json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// cgroup v2 directory to attach to [default: the cgroup2 mount, found in /proc/self/mountinfo].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Open sockets tracked at once (kernel map size) [default: 65536].
    #[arg(long, value_name = "N")]
    pub max_sockets: Option<u32>,
    /// Flow keys tracked at once (kernel map size) [default: 8192].
    #[arg(long, value_name = "N")]
    pub max_flows: Option<u32>,
    /// How often the kernel maps are drained, e.g. "1s" [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub aggregate_interval: Option<Duration>,
    /// Report window, aligned to wall-clock multiples [default: 30s; 10s with --dry-run].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub report_interval: Option<Duration>,
    /// Flows reported whole per window; the rest are summed into `other` [default: 500].
    #[arg(long, value_name = "N")]
    pub top_flows: Option<usize>,
    /// How open sockets' counters reach their flows: "walk" (a BPF iterator over the sockets of
    /// this network namespace and --walk-netns ones at every window end, no per-packet program;
    /// other namespaces, or a kernel that refuses the iterator, fold from callbacks) or
    /// "callbacks" (per-segment callbacks everywhere, an RTT sample per measurement) [default: walk].
    #[arg(long, value_enum)]
    pub fold_mode: Option<FoldMode>,
    /// Walk mode: another network namespace to walk (a file such as /run/netns/NAME or
    /// /proc/PID/ns/net; entered at start, which needs CAP_SYS_ADMIN). Repeatable [default: none].
    #[arg(long, value_name = "PATH")]
    pub walk_netns: Vec<PathBuf>,
    /// Walk mode: walk every network namespace of the host (a pod's, a container's), not only
    /// this one and --walk-netns ones: namespaces a process is in (/proc/PID/ns/net, so in a
    /// container it needs the host's PID namespace) or a file is bound to (/run/netns/NAME),
    /// looked for every 2 s. Sockets a namespace opens once it is found run no per-packet
    /// program (those opened before fold from callbacks). A namespace is left, and so not kept
    /// alive by the agent, once no process is in it or holds one of its open sockets and no file
    /// is bound to it. One thread keeps CAP_SYS_ADMIN (to enter namespaces) and CAP_SYS_PTRACE
    /// (to see which namespace another user's process is in) for the agent's life; the rest of
    /// the process drops every capability [default: off].
    #[arg(long)]
    pub walk_netns_all: bool,
    /// Walk mode: network namespaces walked at most, the agent's own included (a kernel map's
    /// size). Namespaces beyond it (given with --walk-netns, or found by --walk-netns-all) are
    /// logged and fold from per-segment callbacks. Each walked namespace but the agent's own has
    /// a thread of the agent in it [default: 256].
    #[arg(long, value_name = "N")]
    pub max_walked_netns: Option<u32>,
    /// Walk mode: connection records per CPU (0 turns them off, or a power of two up to 1048576;
    /// 128 bytes each). The establishment and close of a socket of a walked namespace go to the
    /// agent as a record in a ring of the CPU's own, which the agent reads every 50 ms and folds
    /// into the flow, rather than being folded in the kernel, where a flow lookup entered with
    /// cold caches (after bulk transfers) costs ~1 µs. The agent's CPU grows with the connection
    /// rate then (~0.5% of a core at 80,000 records/s: 20,000 connections/s with both ends on
    /// the host, two records each end). The walk then hands the agent the counters of walked
    /// sockets that moved, and the agent keeps what it folded of each (~60 bytes per open
    /// socket, at most --max-sockets sockets: beyond, a socket is folded whole at its close,
    /// counted in agent_stats.map_full.sockets), instead of a kernel map entry per socket. A
    /// record that finds its ring full is folded in the kernel instead (counted in
    /// agent_stats.ring_full), or spilled to a map the agent empties where the agent holds its
    /// socket (agent_stats.records_spill_full counts those that find it full too). Linux 6.10
    /// and later; on older kernels the programs fold every event themselves [default: 4096,
    /// 512 KiB per CPU].
    #[arg(long, value_name = "N")]
    pub record_slots: Option<u32>,
    /// Walk mode: how often a walk visits every open socket. The walks in between pass over
    /// sockets that sent and received nothing since the previous walk began (one read each, no
    /// map lookup). A few rare segments leave no such mark (a window update sent as the
    /// application reads old data, a segment dropped from a full backlog); they reach their flow
    /// at the socket's next segment, its close or the next full walk, whichever comes first.
    /// "0s": every walk visits every socket [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub walk_full_interval: Option<Duration>,
    /// Program for SYN-ACK retransmissions: "btf" (a BTF tracepoint, falling back to "tracepoint"
    /// where the kernel refuses it) or "tracepoint" (the classic tracepoint, which the kernel skips
    /// while another BPF program or BPF system call holds the CPU; counted as missed_runs)
    /// [default: btf].
    #[arg(long, value_enum)]
    pub synack_hook: Option<SynackHook>,
    /// How the SYN-ACK programs match a request's listener to the monitored cgroup: "cgroup" (the
    /// listener's own cgroup; "port" where the kernel's cgroup layout is unknown) or "port" (the
    /// local ports the cgroup's listeners listened on since the agent started) [default: cgroup].
    #[arg(long, value_enum)]
    pub synack_listeners: Option<SynackListeners>,
    /// Callback mode: longest an open socket's bytes wait before they reach its flow; "0s" folds
    /// them only on RTT/retransmit/close events [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub fold_interval: Option<Duration>,
    /// Address of the HTTP endpoint serving /healthz (200 once capturing) [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR")]
    pub metrics_address: Option<SocketAddr>,
    /// Write flow-log records: "stdout", or a directory for gzip files laid out as flow logs are
    /// in S3 [default: no flow logs].
    #[arg(long, value_name = "stdout|DIR")]
    pub flow_log_destination: Option<String>,
    /// Flow-log record fields, in order, as `${field-id}` separated by spaces [default: the
    /// version 2 fields].
    #[arg(long, value_name = "FORMAT")]
    pub flow_log_format: Option<String>,
    /// Seconds aggregated into one flow-log record and file: 60 or 600 [default: 600].
    #[arg(long, value_name = "SECONDS")]
    pub flow_log_max_aggregation_interval: Option<u32>,
    /// Account id for flow-log records (`${account-id}`) and file paths [default: unknown].
    #[arg(long, value_name = "ID")]
    pub flow_log_account_id: Option<String>,
    /// Region for flow-log records (`${region}`) and file paths [default: unknown].
    #[arg(long, value_name = "REGION")]
    pub flow_log_region: Option<String>,
    /// Unix socket of the flow-operations API [default: /run/flow-agent/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Group (name or gid) whose members may also use the control socket [default: root only].
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// Also serve the flow-operations API over HTTP on this loopback address [default: off].
    #[arg(long, value_name = "ADDR")]
    pub control_http: Option<SocketAddr>,
    /// Ship reports to this URL (the flow-backend's /publish, or any compatible endpoint), JSON
    /// with gzip [default: not shipped].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Directory of the durable report spool [default: /var/lib/flow-agent/spool].
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Disk bound of the spool, e.g. "64MiB"; beyond it the oldest reports are dropped and
    /// counted [default: 64MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, allow_hyphen_values = true)]
    pub spool_max_bytes: Option<u64>,
    /// On SIGTERM, how long to keep delivering spooled reports before exiting [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub shutdown_timeout: Option<Duration>,
    /// Timeout of one HTTP request to a destination [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub request_timeout: Option<Duration>,
    /// Proxy URL for every request to destinations (http://, https:// or socks5://) [default: none].
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// SigV4 signing service of --endpoint requests [default: networkflowmonitor].
    #[arg(long, value_name = "NAME")]
    pub signing_service: Option<String>,
    /// SigV4 signing Region of --endpoint requests [default: us-east-1].
    #[arg(long, value_name = "REGION")]
    pub signing_region: Option<String>,
    /// How often EC2 instance metadata (interfaces, subnets, VPCs) is read again from IMDS
    /// [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub metadata_refresh_interval: Option<Duration>,
    /// Use IMDSv1 (no session token) when IMDS refuses a token [default: off].
    #[arg(long)]
    pub imds_v1_fallback: bool,
    /// Subnet map for destination categories: the JSON `aws ec2 describe-subnets` prints
    /// [default: none].
    #[arg(long, value_name = "FILE")]
    pub subnet_map: Option<PathBuf>,
    /// AWS's ip-ranges.json, for AMAZON_S3, AMAZON_DYNAMODB and INTER_REGION [default: none].
    #[arg(long, value_name = "FILE")]
    pub ip_ranges: Option<PathBuf>,
    /// Follow conntrack to report SNAT/DNAT and classify by the real remote [default: true].
    #[arg(long, value_name = "true|false")]
    pub conntrack: Option<bool>,
    /// Send OpenTelemetry metrics over OTLP/HTTP protobuf to this URL, e.g.
    /// http://collector:4318/v1/metrics [default: off].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Extra header NAME=VALUE on every OTLP request (repeatable), e.g. an API key.
    #[arg(long, value_name = "NAME=VALUE")]
    pub otlp_header: Vec<String>,
    /// Compression of OTLP requests: gzip or none [default: gzip].
    #[arg(long, value_enum, value_name = "gzip|none")]
    pub otlp_compression: Option<OtlpCompression>,
    /// Send Prometheus remote-write v1 samples to this URL, e.g. http://prometheus:9090/api/v1/write
    /// [default: off].
    #[arg(long, value_name = "URL")]
    pub prometheus_remote_write_url: Option<String>,
    /// Extra label NAME=VALUE on every remote-written series (repeatable).
    #[arg(long, value_name = "NAME=VALUE")]
    pub prometheus_remote_write_label: Vec<String>,
    /// File holding a bearer token for remote write.
    #[arg(long, value_name = "FILE")]
    pub prometheus_remote_write_bearer_token_file: Option<PathBuf>,
    /// Basic-auth user for remote write (with --prometheus-remote-write-password-file).
    #[arg(long, value_name = "USER")]
    pub prometheus_remote_write_username: Option<String>,
    /// File holding the basic-auth password for remote write.
    #[arg(long, value_name = "FILE")]
    pub prometheus_remote_write_password_file: Option<PathBuf>,
    /// Name the pods and Services at both ends of each flow from the Kubernetes API;
    /// "--kubernetes=false" keeps it off [default: on when running in a pod (KUBERNETES_SERVICE_HOST
    /// set and a service-account token mounted) or when --kubeconfig is set, off otherwise].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub kubernetes: Option<bool>,
    /// kubeconfig file for reaching the Kubernetes API from outside the cluster [default: the
    /// in-cluster service account, or KUBECONFIG / ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: only pods scheduled on it can be the local end of a flow [default: the
    /// NODE_NAME environment variable; unset, any pod].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
}

/// A byte count: a plain number or one with a unit (B, KB, MB, GB, KiB, MiB, GiB).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}; use e.g. \"64MiB\" or 1048576"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// A size in the TOML file: a number of bytes or a string with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileBytes {
    Number(u64),
    Text(String),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. \"1s\", \"500ms\""))
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    dry_run: Option<bool>,
    format: Option<Format>,
    cgroup: Option<PathBuf>,
    max_sockets: Option<u32>,
    max_flows: Option<u32>,
    aggregate_interval: Option<String>,
    report_interval: Option<String>,
    top_flows: Option<usize>,
    fold_mode: Option<FoldMode>,
    walk_netns: Option<Vec<PathBuf>>,
    walk_netns_all: Option<bool>,
    max_walked_netns: Option<u32>,
    record_slots: Option<u32>,
    walk_full_interval: Option<String>,
    synack_hook: Option<SynackHook>,
    synack_listeners: Option<SynackListeners>,
    fold_interval: Option<String>,
    metrics_address: Option<String>,
    flow_log_destination: Option<String>,
    flow_log_format: Option<String>,
    flow_log_max_aggregation_interval: Option<u32>,
    flow_log_account_id: Option<String>,
    flow_log_region: Option<String>,
    control_socket: Option<PathBuf>,
    control_group: Option<String>,
    control_http: Option<String>,
    endpoint: Option<String>,
    spool_dir: Option<PathBuf>,
    spool_max_bytes: Option<FileBytes>,
    shutdown_timeout: Option<String>,
    request_timeout: Option<String>,
    proxy: Option<String>,
    signing_service: Option<String>,
    signing_region: Option<String>,
    metadata_refresh_interval: Option<String>,
    imds_v1_fallback: Option<bool>,
    subnet_map: Option<PathBuf>,
    ip_ranges: Option<PathBuf>,
    conntrack: Option<bool>,
    otlp_endpoint: Option<String>,
    otlp_header: Option<Vec<String>>,
    otlp_compression: Option<OtlpCompression>,
    prometheus_remote_write_url: Option<String>,
    prometheus_remote_write_label: Option<Vec<String>>,
    prometheus_remote_write_bearer_token_file: Option<PathBuf>,
    prometheus_remote_write_username: Option<String>,
    prometheus_remote_write_password_file: Option<PathBuf>,
    kubernetes: Option<bool>,
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub dry_run: bool,
    pub format: Format,
    pub cgroup: Option<PathBuf>,
    pub max_sockets: u32,
    pub max_flows: u32,
    pub aggregate_interval: Duration,
    pub report_interval: Duration,
    pub top_flows: usize,
    pub fold_mode: FoldMode,
    pub walk_netns: Vec<PathBuf>,
    pub walk_netns_all: bool,
    pub max_walked_netns: u32,
    pub record_slots: u32,
    pub walk_full_interval: Duration,
    pub synack_hook: SynackHook,
    pub synack_listeners: SynackListeners,
    pub fold_interval: Duration,
    pub metrics_address: SocketAddr,
    pub flow_log_destination: Option<FlowLogDestination>,
    pub flow_log_format: crate::flowlog::Format,
    /// Seconds.
    pub flow_log_max_aggregation_interval: u32,
    pub flow_log_account_id: Option<String>,
    pub flow_log_region: Option<String>,
    pub control_socket: PathBuf,
    pub control_group: Option<String>,
    pub control_http: Option<SocketAddr>,
    pub endpoint: Option<String>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub proxy: Option<String>,
    pub signing_service: String,
    pub signing_region: String,
    pub metadata_refresh_interval: Duration,
    pub imds_v1_fallback: bool,
    pub subnet_map: Option<PathBuf>,
    pub ip_ranges: Option<PathBuf>,
    pub conntrack: bool,
    pub otlp_endpoint: Option<String>,
    pub otlp_header: Vec<String>,
    pub otlp_compression: OtlpCompression,
    pub prometheus_remote_write_url: Option<String>,
    pub prometheus_remote_write_label: Vec<String>,
    pub prometheus_remote_write_bearer_token_file: Option<PathBuf>,
    pub prometheus_remote_write_username: Option<String>,
    pub prometheus_remote_write_password_file: Option<PathBuf>,
    /// `None`: on when running in a pod or with `kubeconfig` (see `enrich::kubernetes::enabled`).
    pub kubernetes: Option<bool>,
    pub kubeconfig: Option<PathBuf>,
    pub node_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid {setting}: {message}")]
    Invalid { setting: &'static str, message: String },
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting, message: message.into() }
}

impl Config {
    /// Merge flags over the file (if any) over defaults, and validate.
    pub fn resolve(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                Self::parse_file(path, &text)?
            }
            None => FileConfig::default(),
        };
        let file_duration = |name: &'static str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
            v.as_deref().map(|s| parse_duration(s).map_err(|m| invalid(name, m))).transpose()
        };
        let dry_run = args.dry_run || file.dry_run.unwrap_or(false);
        let default_report = if dry_run { DEFAULT_DRY_RUN_REPORT_INTERVAL } else { DEFAULT_REPORT_INTERVAL };
        let cfg = Config {
            dry_run,
            format: args.format.or(file.format).unwrap_or(Format::Json),
            cgroup: args.cgroup.clone().or(file.cgroup),
            max_sockets: args.max_sockets.or(file.max_sockets).unwrap_or(DEFAULT_MAX_SOCKETS),
            max_flows: args.max_flows.or(file.max_flows).unwrap_or(DEFAULT_MAX_FLOWS),
            aggregate_interval: args
                .aggregate_interval
                .or(file_duration("aggregate_interval", &file.aggregate_interval)?)
                .unwrap_or(DEFAULT_AGGREGATE_INTERVAL),
            report_interval: args
                .report_interval
                .or(file_duration("report_interval", &file.report_interval)?)
                .unwrap_or(default_report),
            top_flows: args.top_flows.or(file.top_flows).unwrap_or(DEFAULT_TOP_FLOWS),
            fold_mode: args.fold_mode.or(file.fold_mode).unwrap_or_default(),
            walk_netns: if args.walk_netns.is_empty() {
                file.walk_netns.unwrap_or_default()
            } else {
                args.walk_netns.clone()
            },
            walk_netns_all: args.walk_netns_all || file.walk_netns_all.unwrap_or(false),
            max_walked_netns: args.max_walked_netns.or(file.max_walked_netns).unwrap_or(DEFAULT_MAX_WALKED_NETNS),
            record_slots: args.record_slots.or(file.record_slots).unwrap_or(DEFAULT_RECORD_SLOTS),
            walk_full_interval: args
                .walk_full_interval
                .or(file_duration("walk_full_interval", &file.walk_full_interval)?)
                .unwrap_or(DEFAULT_WALK_FULL_INTERVAL),
            synack_hook: args.synack_hook.or(file.synack_hook).unwrap_or_default(),
            synack_listeners: args.synack_listeners.or(file.synack_listeners).unwrap_or_default(),
            fold_interval: args
                .fold_interval
                .or(file_duration("fold_interval", &file.fold_interval)?)
                .unwrap_or(DEFAULT_FOLD_INTERVAL),
            metrics_address: match (args.metrics_address, file.metrics_address.as_deref()) {
                (Some(a), _) => a,
                (None, Some(s)) => s.parse().map_err(|e| invalid("metrics_address", format!("{s:?}: {e}")))?,
                (None, None) => DEFAULT_METRICS_ADDRESS.parse().expect("the default address parses"),
            },
            flow_log_destination: match args.flow_log_destination.clone().or(file.flow_log_destination) {
                None => None,
                Some(d) if d == "stdout" => Some(FlowLogDestination::Stdout),
                Some(d) if d.trim().is_empty() => {
                    return Err(invalid("flow_log_destination", "is empty: use \"stdout\" or a directory"));
                }
                Some(d) => Some(FlowLogDestination::Directory(PathBuf::from(d))),
            },
            flow_log_format: match args.flow_log_format.as_deref().or(file.flow_log_format.as_deref()) {
                Some(f) => crate::flowlog::Format::parse(f).map_err(|m| invalid("flow_log_format", m))?,
                None => crate::flowlog::Format::default(),
            },
            flow_log_max_aggregation_interval: args
                .flow_log_max_aggregation_interval
                .or(file.flow_log_max_aggregation_interval)
                .unwrap_or(DEFAULT_FLOW_LOG_MAX_AGGREGATION_INTERVAL),
            flow_log_account_id: args.flow_log_account_id.clone().or(file.flow_log_account_id),
            flow_log_region: args.flow_log_region.clone().or(file.flow_log_region),
            control_socket: args
                .control_socket
                .clone()
                .or(file.control_socket)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            control_group: args.control_group.clone().or(file.control_group),
            control_http: match (args.control_http, file.control_http.as_deref()) {
                (Some(a), _) => Some(a),
                (None, Some(s)) => Some(s.parse().map_err(|e| invalid("control_http", format!("{s:?}: {e}")))?),
                (None, None) => None,
            },
            endpoint: args.endpoint.clone().or(file.endpoint),
            spool_dir: args.spool_dir.clone().or(file.spool_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
            spool_max_bytes: match (args.spool_max_bytes, file.spool_max_bytes) {
                (Some(n), _) | (None, Some(FileBytes::Number(n))) => n,
                (None, Some(FileBytes::Text(t))) => parse_bytes(&t).map_err(|m| invalid("spool_max_bytes", m))?,
                (None, None) => DEFAULT_SPOOL_MAX_BYTES,
            },
            shutdown_timeout: args
                .shutdown_timeout
                .or(file_duration("shutdown_timeout", &file.shutdown_timeout)?)
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            request_timeout: args
                .request_timeout
                .or(file_duration("request_timeout", &file.request_timeout)?)
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            proxy: args.proxy.clone().or(file.proxy),
            signing_service: args
                .signing_service
                .clone()
                .or(file.signing_service)
                .unwrap_or_else(|| DEFAULT_SIGNING_SERVICE.into()),
            signing_region: args
                .signing_region
                .clone()
                .or(file.signing_region)
                .unwrap_or_else(|| DEFAULT_SIGNING_REGION.into()),
            metadata_refresh_interval: args
                .metadata_refresh_interval
                .or(file_duration("metadata_refresh_interval", &file.metadata_refresh_interval)?)
                .unwrap_or(DEFAULT_METADATA_REFRESH_INTERVAL),
            imds_v1_fallback: args.imds_v1_fallback || file.imds_v1_fallback.unwrap_or(false),
            subnet_map: args.subnet_map.clone().or(file.subnet_map),
            ip_ranges: args.ip_ranges.clone().or(file.ip_ranges),
            conntrack: args.conntrack.or(file.conntrack).unwrap_or(true),
            otlp_endpoint: args.otlp_endpoint.clone().or(file.otlp_endpoint),
            otlp_header: if args.otlp_header.is_empty() {
                file.otlp_header.unwrap_or_default()
            } else {
                args.otlp_header.clone()
            },
            otlp_compression: args.otlp_compression.or(file.otlp_compression).unwrap_or_default(),
            prometheus_remote_write_url: args.prometheus_remote_write_url.clone().or(file.prometheus_remote_write_url),
            prometheus_remote_write_label: if args.prometheus_remote_write_label.is_empty() {
                file.prometheus_remote_write_label.unwrap_or_default()
            } else {
                args.prometheus_remote_write_label.clone()
            },
            prometheus_remote_write_bearer_token_file: args
                .prometheus_remote_write_bearer_token_file
                .clone()
                .or(file.prometheus_remote_write_bearer_token_file),
            prometheus_remote_write_username: args
                .prometheus_remote_write_username
                .clone()
                .or(file.prometheus_remote_write_username),
            prometheus_remote_write_password_file: args
                .prometheus_remote_write_password_file
                .clone()
                .or(file.prometheus_remote_write_password_file),
            kubernetes: args.kubernetes.or(file.kubernetes),
            kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            node_name: args
                .node_name
                .clone()
                .or(file.node_name)
                .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn parse_file(path: &std::path::Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    fn validate_flow_log(&self) -> Result<(), ConfigError> {
        let secs = self.flow_log_max_aggregation_interval;
        if secs != 60 && secs != 600 {
            return Err(invalid(
                "flow_log_max_aggregation_interval",
                format!(
                    "{secs} is not allowed: the maximum aggregation interval is 60 seconds (1 minute) or 600 seconds (10 minutes)"
                ),
            ));
        }
        for (setting, v) in
            [("flow_log_account_id", &self.flow_log_account_id), ("flow_log_region", &self.flow_log_region)]
        {
            if let Some(v) = v
                && (v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            {
                return Err(invalid(setting, format!("{v:?} must be letters, digits, '-' or '_'")));
            }
        }
        let Some(dest) = &self.flow_log_destination else { return Ok(()) };
        if self.dry_run && *dest == FlowLogDestination::Stdout {
            return Err(invalid(
                "flow_log_destination",
                "\"stdout\" cannot share stdout with dry_run reports: drop dry_run or write flow logs to a directory",
            ));
        }
        if !(u128::from(secs) * 1000).is_multiple_of(self.report_interval.as_millis()) {
            return Err(invalid(
                "report_interval",
                format!(
                    "{:?} must divide flow_log_max_aggregation_interval ({secs}s) so that each report window lies in one flow-log interval",
                    self.report_interval
                ),
            ));
        }
        Ok(())
    }

    fn validate_control(&self) -> Result<(), ConfigError> {
        if self.control_socket.as_os_str().is_empty() {
            return Err(invalid("control_socket", "is empty"));
        }
        if let Some(a) = self.control_http
            && !a.ip().is_loopback()
        {
            return Err(invalid(
                "control_http",
                format!("{a} is not a loopback address: the control API only serves this host"),
            ));
        }
        if self.control_group.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("control_group", "is empty"));
        }
        Ok(())
    }

    fn validate_kubernetes(&self) -> Result<(), ConfigError> {
        if self.kubeconfig.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return Err(invalid("kubeconfig", "is empty"));
        }
        if let Some(n) = &self.node_name
            && (n.is_empty() || n.len() > 253 || n.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(invalid("node_name", format!("{n:?} is not a Kubernetes node name")));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let agg = self.aggregate_interval.as_millis();
        let rep = self.report_interval.as_millis();
        if agg < 10 {
            return Err(invalid(
                "aggregate_interval",
                format!("{:?} is below the 10ms minimum", self.aggregate_interval),
            ));
        }
        if rep < agg || !rep.is_multiple_of(agg) {
            return Err(invalid(
                "report_interval",
                format!(
                    "{:?} must be a whole multiple of aggregate_interval ({:?})",
                    self.report_interval, self.aggregate_interval
                ),
            ));
        }
        if self.max_sockets == 0 {
            return Err(invalid("max_sockets", "must be at least 1"));
        }
        if self.max_flows == 0 {
            return Err(invalid("max_flows", "must be at least 1"));
        }
        if self.record_slots != 0 && (!self.record_slots.is_power_of_two() || self.record_slots > MAX_RECORD_SLOTS) {
            return Err(invalid(
                "record_slots",
                format!("{} is not 0 or a power of two up to {MAX_RECORD_SLOTS}", self.record_slots),
            ));
        }
        if self.max_walked_netns == 0 {
            return Err(invalid("max_walked_netns", "must be at least 1 (the agent's own namespace)"));
        }
        if self.max_walked_netns > MAX_MAX_WALKED_NETNS {
            return Err(invalid(
                "max_walked_netns",
                format!(
                    "{} is above {MAX_MAX_WALKED_NETNS} (each walked namespace has a thread)",
                    self.max_walked_netns
                ),
            ));
        }
        if self.metadata_refresh_interval < Duration::from_secs(1) {
            return Err(invalid(
                "metadata_refresh_interval",
                format!("{:?} is below the 1s minimum", self.metadata_refresh_interval),
            ));
        }
        self.validate_flow_log()?;
        self.validate_control()?;
        self.validate_shipping()?;
        self.validate_export()?;
        self.validate_kubernetes()?;
        Ok(())
    }

    fn validate_export(&self) -> Result<(), ConfigError> {
        for (setting, url) in
            [("otlp_endpoint", &self.otlp_endpoint), ("prometheus_remote_write_url", &self.prometheus_remote_write_url)]
        {
            if let Some(u) = url {
                match reqwest::Url::parse(u) {
                    Ok(p) if p.scheme() == "http" || p.scheme() == "https" => {}
                    Ok(_) => return Err(invalid(setting, format!("{u:?} is not an http:// or https:// URL"))),
                    Err(e) => return Err(invalid(setting, format!("{u:?}: {e}"))),
                }
            }
        }
        for h in &self.otlp_header {
            let ok = h.split_once('=').is_some_and(|(k, v)| {
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(v.trim()).is_ok()
            });
            if !ok {
                return Err(invalid("otlp_header", format!("{h:?} is not NAME=VALUE with a valid HTTP header name")));
            }
        }
        if let Err(e) = crate::sink::prometheus::parse_labels(&self.prometheus_remote_write_label) {
            return Err(invalid("prometheus_remote_write_label", e.to_string()));
        }
        let user = self.prometheus_remote_write_username.is_some();
        if user != self.prometheus_remote_write_password_file.is_some() {
            return Err(invalid(
                "prometheus_remote_write_username",
                "basic auth needs both prometheus_remote_write_username and prometheus_remote_write_password_file",
            ));
        }
        if user && self.prometheus_remote_write_bearer_token_file.is_some() {
            return Err(invalid(
                "prometheus_remote_write_bearer_token_file",
                "use either a bearer token or basic auth (prometheus_remote_write_username), not both",
            ));
        }
        Ok(())
    }

    fn validate_shipping(&self) -> Result<(), ConfigError> {
        if let Some(e) = &self.endpoint {
            let url = reqwest::Url::parse(e).map_err(|err| invalid("endpoint", format!("{e:?}: {err}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid("endpoint", format!("{e:?} must be an http:// or https:// URL with a host")));
            }
        }
        if let Some(p) = &self.proxy {
            reqwest::Proxy::all(p).map_err(|err| invalid("proxy", format!("{p:?}: {err}")))?;
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(invalid("spool_dir", "is empty"));
        }
        if self.spool_max_bytes < 4096 {
            return Err(invalid("spool_max_bytes", format!("{} is below the 4096-byte minimum", self.spool_max_bytes)));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be above 0s"));
        }
        for (setting, v) in [("signing_service", &self.signing_service), ("signing_region", &self.signing_region)] {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(invalid(setting, format!("{v:?} must be letters, digits, '-' or '_'")));
            }
        }
        Ok(())
    }

    /// The HTTP settings every destination shares.
    pub fn http_options(&self) -> crate::sink::remote::HttpOptions {
        crate::sink::remote::HttpOptions { timeout: self.request_timeout, proxy: self.proxy.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs::default()
    }

    #[test]
    fn defaults_depend_on_dry_run() {
        let c = Config::resolve(&args()).unwrap();
        assert_eq!(c.report_interval, DEFAULT_REPORT_INTERVAL);
        assert_eq!(c.max_sockets, DEFAULT_MAX_SOCKETS);
        let c = Config::resolve(&RunArgs { dry_run: true, ..args() }).unwrap();
        assert_eq!(c.report_interval, DEFAULT_DRY_RUN_REPORT_INTERVAL);
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_flows = 10\nreport_interval = \"5s\"\ntop_flows = 3\n").unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path), top_flows: Some(7), ..args() }).unwrap();
        assert_eq!(c.max_flows, 10);
        assert_eq!(c.report_interval, Duration::from_secs(5));
        assert_eq!(c.top_flows, 7);
    }

    /// Settings without a default, documented with an example value.
    const OPTIONAL_EXAMPLES: &[&str] = &[
        "flow_log_destination",
        "flow_log_account_id",
        "flow_log_region",
        "control_group",
        "control_http",
        "endpoint",
        "proxy",
        "subnet_map",
        "ip_ranges",
        "otlp_endpoint",
        "otlp_header",
        "prometheus_remote_write_url",
        "prometheus_remote_write_label",
        "prometheus_remote_write_bearer_token_file",
        "prometheus_remote_write_username",
        "prometheus_remote_write_password_file",
        "kubernetes",
        "kubeconfig",
        "node_name",
    ];

    /// packaging/config.toml documents every setting with its default: uncommented, it must parse
    /// and give exactly the built-in defaults.
    #[test]
    fn documented_defaults_are_the_defaults() {
        let doc = include_str!("../../packaging/config.toml");
        let active: String = doc
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_')))
            .filter(|l| !l.starts_with("cgroup ") && !l.starts_with("dry_run ") && !l.starts_with("report_interval "))
            .filter(|l| !OPTIONAL_EXAMPLES.iter().any(|k| l.starts_with(&format!("{k} "))))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(active.lines().count() >= 6, "settings found in the documented file:\n{active}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &active).unwrap();
        let from_file = Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap();
        assert_eq!(from_file, Config::resolve(&args()).unwrap());
        assert!(doc.contains(&format!("report_interval = \"{}s\"", DEFAULT_REPORT_INTERVAL.as_secs())));
    }

    #[test]
    fn record_slots_from_the_flag_or_the_file_a_power_of_two_or_0() {
        assert_eq!(Config::resolve(&args()).unwrap().record_slots, DEFAULT_RECORD_SLOTS);
        assert_eq!(Config::resolve(&RunArgs { record_slots: Some(16384), ..args() }).unwrap().record_slots, 16384);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "record_slots = 1024\n").unwrap();
        assert_eq!(Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap().record_slots, 1024);
        for n in [3, 1000, 1 << 21] {
            let e = Config::resolve(&RunArgs { record_slots: Some(n), ..args() }).unwrap_err().to_string();
            assert!(e.contains("record_slots") && e.contains("power of two"), "{e}");
        }
    }

    #[test]
    fn max_walked_netns_from_the_flag_or_the_file_within_its_bounds() {
        assert_eq!(Config::resolve(&args()).unwrap().max_walked_netns, DEFAULT_MAX_WALKED_NETNS);
        let c = Config::resolve(&RunArgs { max_walked_netns: Some(1024), ..args() }).unwrap();
        assert_eq!(c.max_walked_netns, 1024);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_walked_netns = 8\n").unwrap();
        assert_eq!(Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap().max_walked_netns, 8);
        for (n, says) in [(0, "at least 1"), (MAX_MAX_WALKED_NETNS + 1, "above 65536")] {
            let e = Config::resolve(&RunArgs { max_walked_netns: Some(n), ..args() }).unwrap_err().to_string();
            assert!(e.contains("max_walked_netns") && e.contains(says), "{e}");
        }
    }

    #[test]
    fn synack_listeners_from_the_flag_or_the_file() {
        assert_eq!(Config::resolve(&args()).unwrap().synack_listeners, SynackListeners::Cgroup);
        let c = Config::resolve(&RunArgs { synack_listeners: Some(SynackListeners::Port), ..args() }).unwrap();
        assert_eq!(c.synack_listeners, SynackListeners::Port);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "synack_listeners = \"port\"\n").unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap();
        assert_eq!(c.synack_listeners, SynackListeners::Port);
        std::fs::write(&path, "synack_listeners = \"pid\"\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap_err().to_string();
        assert!(e.contains("synack_listeners") && e.contains("pid"), "{e}");
    }

    #[test]
    fn walk_netns_all_from_the_flag_or_the_file() {
        assert!(!Config::resolve(&args()).unwrap().walk_netns_all, "off by default");
        assert!(Config::resolve(&RunArgs { walk_netns_all: true, ..args() }).unwrap().walk_netns_all);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "walk_netns_all = true\n").unwrap();
        assert!(Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap().walk_netns_all);
        std::fs::write(&path, "walk_netns_all = \"yes\"\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap_err().to_string();
        assert!(e.contains("walk_netns_all"), "{e}");
    }

    #[test]
    fn flow_log_and_control_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "flow_log_destination = \"/var/log/fl\"\nflow_log_format = \"${srcaddr} ${flow-direction}\"\n\
             flow_log_max_aggregation_interval = 60\ncontrol_http = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap();
        assert_eq!(c.flow_log_destination, Some(FlowLogDestination::Directory("/var/log/fl".into())));
        assert_eq!(c.flow_log_format.version(), 5);
        assert_eq!(c.flow_log_max_aggregation_interval, 60);
        assert_eq!(c.control_http, Some("127.0.0.1:9000".parse().unwrap()));
        let e = |a: RunArgs| Config::resolve(&a).unwrap_err().to_string();
        let err = e(RunArgs { flow_log_max_aggregation_interval: Some(120), ..args() });
        assert!(err.contains("flow_log_max_aggregation_interval") && err.contains("60 seconds (1 minute)"), "{err}");
        let err = e(RunArgs { flow_log_format: Some("${nope}".into()), ..args() });
        assert!(err.contains("flow_log_format") && err.contains("valid fields"), "{err}");
        let err = e(RunArgs { flow_log_destination: Some("stdout".into()), dry_run: true, ..args() });
        assert!(err.contains("dry_run"), "{err}");
        let err = e(RunArgs { control_http: Some("0.0.0.0:9000".parse().unwrap()), ..args() });
        assert!(err.contains("control_http") && err.contains("loopback"), "{err}");
        std::fs::write(&path, "control_http = \"localhost:80\"\n").unwrap();
        let err = e(RunArgs { config: Some(path), ..args() });
        assert!(err.contains("control_http") && err.contains("localhost:80"), "{err}");
    }

    #[test]
    fn enrichment_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "subnet_map = \"/etc/s.json\"\nip_ranges = \"/etc/r.json\"\nconntrack = false\n\
             imds_v1_fallback = true\nmetadata_refresh_interval = \"5m\"\n",
        )
        .unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path.clone()), conntrack: Some(true), ..args() }).unwrap();
        assert_eq!(
            (c.subnet_map.as_deref(), c.ip_ranges.as_deref()),
            (Some("/etc/s.json".as_ref()), Some("/etc/r.json".as_ref()))
        );
        assert!(c.conntrack && c.imds_v1_fallback, "the flag wins over the file");
        assert_eq!(c.metadata_refresh_interval, Duration::from_secs(300));
        let e = Config::resolve(&RunArgs { metadata_refresh_interval: Some(Duration::from_millis(10)), ..args() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("metadata_refresh_interval") && e.contains("10ms"), "{e}");
    }

    #[test]
    fn export_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "otlp_endpoint = \"http://c:4318/v1/metrics\"\notlp_header = [\"api-key=x\"]\notlp_compression = \"none\"\n\
             prometheus_remote_write_url = \"https://p/api/v1/write\"\nprometheus_remote_write_label = [\"env=prod\"]\n",
        )
        .unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4318/v1/metrics"));
        assert_eq!(c.otlp_header, vec!["api-key=x".to_string()]);
        assert_eq!(c.otlp_compression, OtlpCompression::None);
        assert_eq!(c.prometheus_remote_write_label, vec!["env=prod".to_string()]);
        let e = |a: RunArgs| Config::resolve(&a).unwrap_err().to_string();
        let err = e(RunArgs { otlp_endpoint: Some("collector:4318".into()), ..args() });
        assert!(err.contains("otlp_endpoint") && err.contains("collector:4318"), "{err}");
        let err = e(RunArgs { otlp_header: vec!["novalue".into()], ..args() });
        assert!(err.contains("otlp_header") && err.contains("novalue"), "{err}");
        let err = e(RunArgs { prometheus_remote_write_url: Some("ftp://x".into()), ..args() });
        assert!(err.contains("prometheus_remote_write_url"), "{err}");
        let err = e(RunArgs { prometheus_remote_write_label: vec!["bad-name=1".into()], ..args() });
        assert!(err.contains("prometheus_remote_write_label") && err.contains("bad-name"), "{err}");
        let err = e(RunArgs { prometheus_remote_write_username: Some("u".into()), ..args() });
        assert!(err.contains("prometheus_remote_write_password_file"), "{err}");
    }

    #[test]
    fn kubernetes_settings() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let parse = |argv: &[&str]| Cli::try_parse_from([&["flow-agent"], argv].concat()).map(|c| c.run);
        assert_eq!(parse(&[]).unwrap().kubernetes, None, "unset: auto");
        assert_eq!(parse(&["--kubernetes"]).unwrap().kubernetes, Some(true));
        assert_eq!(parse(&["--kubernetes=false"]).unwrap().kubernetes, Some(false));
        assert!(parse(&["--kubernetes=maybe"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "kubernetes = false\nkubeconfig = \"/etc/kc\"\nnode_name = \"ip-10-0-0-1\"\n").unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap();
        assert_eq!(c.kubernetes, Some(false));
        assert_eq!(c.kubeconfig, Some(PathBuf::from("/etc/kc")));
        assert_eq!(c.node_name.as_deref(), Some("ip-10-0-0-1"));
        let c = Config::resolve(&RunArgs { config: Some(path), kubernetes: Some(true), ..args() }).unwrap();
        assert_eq!(c.kubernetes, Some(true), "the flag wins over the file");
        let e = Config::resolve(&RunArgs { node_name: Some("a b".into()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("node_name") && e.contains("a b"), "{e}");
    }

    #[test]
    fn shipping_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "endpoint = \"https://b.example/publish\"\nspool_max_bytes = \"1MiB\"\nshutdown_timeout = \"3s\"\n\
             proxy = \"http://proxy:3128\"\nsigning_region = \"eu-west-1\"\n",
        )
        .unwrap();
        let c = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://b.example/publish"));
        assert_eq!((c.spool_max_bytes, c.shutdown_timeout), (1 << 20, Duration::from_secs(3)));
        assert_eq!(c.http_options().proxy.as_deref(), Some("http://proxy:3128"));
        assert_eq!((c.signing_service.as_str(), c.signing_region.as_str()), ("networkflowmonitor", "eu-west-1"));
        std::fs::write(&path, "spool_max_bytes = 8192\n").unwrap();
        assert_eq!(Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap().spool_max_bytes, 8192);
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("2 kb"), Ok(2000));
        assert!(parse_bytes("99999999999GiB").unwrap_err().contains("too large"));
        let e = |a: RunArgs| Config::resolve(&a).unwrap_err().to_string();
        let err = e(RunArgs { endpoint: Some("backend:8080".into()), ..args() });
        assert!(err.contains("endpoint") && err.contains("backend:8080"), "{err}");
        let err = e(RunArgs { signing_region: Some("eu west".into()), ..args() });
        assert!(err.contains("signing_region"), "{err}");
        let err = e(RunArgs { request_timeout: Some(Duration::ZERO), ..args() });
        assert!(err.contains("request_timeout"), "{err}");
        std::fs::write(&path, "spool_max_bytes = \"lots\"\n").unwrap();
        let err = e(RunArgs { config: Some(path), ..args() });
        assert!(err.contains("spool_max_bytes") && err.contains("lots"), "{err}");
    }

    #[test]
    fn bad_input_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_flow = 10\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("max_flow") && e.contains("c.toml"), "{e}");
        std::fs::write(&path, "report_interval = \"soon\"\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("report_interval") && e.contains("soon"), "{e}");
        let e = Config::resolve(&RunArgs { report_interval: Some(Duration::from_millis(1500)), ..args() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of aggregate_interval"), "{e}");
        let e = Config::resolve(&RunArgs { max_sockets: Some(0), ..args() }).unwrap_err().to_string();
        assert!(e.contains("max_sockets"), "{e}");
        std::fs::write(&path, "metrics_address = \"localhost\"\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("metrics_address") && e.contains("localhost"), "{e}");
        let e =
            Config::resolve(&RunArgs { config: Some("/nonexistent/x.toml".into()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
