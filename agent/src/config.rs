//! Settings: command-line flags and one TOML file with the same names. Flags win over the file,
//! the file over the defaults documented here and in `packaging/config.toml`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use agent_common::maps::{DEFAULT_MAX_FLOWS, DEFAULT_MAX_SOCKETS};
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
/// Default `--metrics-address`: where `/healthz` is served.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:9464";
/// Default `--flow-log-max-aggregation-interval`, in seconds (as flow logs: 60 or 600).
pub const DEFAULT_FLOW_LOG_MAX_AGGREGATION_INTERVAL: u32 = 600;
/// Default `--control-socket`: the flow-operations API.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/flow-agent/control.sock";

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

/// Flags of the agent itself (each has a TOML key of the same name with `_` for `-`).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML file with the same settings as the flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print reports to stdout instead of shipping them.
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
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub aggregate_interval: Option<Duration>,
    /// Report window, aligned to wall-clock multiples [default: 30s; 10s with --dry-run].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub report_interval: Option<Duration>,
    /// Flows reported whole per window; the rest are summed into `other` [default: 500].
    #[arg(long, value_name = "N")]
    pub top_flows: Option<usize>,
    /// Longest an open socket's bytes wait before they reach its flow; "0s" folds them only on
    /// RTT/retransmit/close events [default: 100ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
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
        self.validate_flow_log()?;
        self.validate_control()?;
        self.validate_kubernetes()?;
        Ok(())
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
