//! Settings: command-line flags and one TOML file with the same names. Flags win over the file,
//! the file over the defaults documented here and in `packaging/config.toml`.

use std::{path::PathBuf, time::Duration};

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
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn parse_file(path: &std::path::Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
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
    fn bad_input_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_flow = 10\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path.clone()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("max_flow") && e.contains("c.toml"), "{e}");
        std::fs::write(&path, "report_interval = \"soon\"\n").unwrap();
        let e = Config::resolve(&RunArgs { config: Some(path), ..args() }).unwrap_err().to_string();
        assert!(e.contains("report_interval") && e.contains("soon"), "{e}");
        let e = Config::resolve(&RunArgs { report_interval: Some(Duration::from_millis(1500)), ..args() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of aggregate_interval"), "{e}");
        let e = Config::resolve(&RunArgs { max_sockets: Some(0), ..args() }).unwrap_err().to_string();
        assert!(e.contains("max_sockets"), "{e}");
        let e =
            Config::resolve(&RunArgs { config: Some("/nonexistent/x.toml".into()), ..args() }).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }
}
