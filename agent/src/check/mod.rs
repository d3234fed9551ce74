//! `flow-agent check`: every requirement with OK or FAIL and how to fix it. Exits non-zero when
//! a requirement for capturing fails; IMDS off EC2 is a warning, not a failure.

mod http;
mod kernel;
mod remote;

use std::path::PathBuf;

use clap::Args;

use crate::{
    capture::probe,
    config::{Config, RunArgs},
};

#[derive(Args, Debug, Clone, Default)]
pub struct CheckArgs {
    /// The agent's TOML file (for `cgroup` and map sizes).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// cgroup v2 directory to test attaching to [default: the cgroup2 mount].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Backend URL to test reaching (http:// or https://) [default: `endpoint` of the config].
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Fail,
    Warn,
    Skip,
}

/// One requirement's result.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Item {
    fn new(name: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Item {
        Item { name, status, detail: detail.into(), fix }
    }
    pub fn ok(name: &'static str, detail: impl Into<String>) -> Item {
        Item::new(name, Status::Ok, detail, None)
    }
    pub fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Item {
        Item::new(name, Status::Fail, detail, Some(fix.into()))
    }
    pub fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Item {
        Item::new(name, Status::Warn, detail, Some(fix.into()))
    }
    pub fn skip(name: &'static str, detail: impl Into<String>) -> Item {
        Item::new(name, Status::Skip, detail, None)
    }

    fn from_probe(name: &'static str, r: Result<String, probe::Failure>) -> Item {
        match r {
            Ok(d) => Item::ok(name, d),
            Err(f) => Item::fail(name, f.problem, f.fix),
        }
    }
}

/// Run every check, in order; later ones that depend on a failed one say so.
pub fn items(args: &CheckArgs) -> Vec<Item> {
    let mut items = vec![kernel::version(), kernel::btf()];
    let run = RunArgs { config: args.config.clone(), cgroup: args.cgroup.clone(), ..RunArgs::default() };
    let cfg = match Config::resolve(&run) {
        Ok(c) => Some(c),
        Err(e) => {
            items.push(Item::fail("configuration", e.to_string(), "fix the file or flag named"));
            None
        }
    };
    let cgroup = probe::cgroup2(cfg.as_ref().and_then(|c| c.cgroup.as_deref()));
    items.push(Item::from_probe("cgroup v2", cgroup.clone().map(|p| format!("{} is cgroup v2", p.display()))));
    items.push(Item::from_probe("tracepoints", probe::tracepoint()));
    items.push(Item::from_probe("capabilities", probe::capabilities()));
    let blocked: Vec<&str> = items.iter().filter(|i| i.status == Status::Fail).map(|i| i.name).collect();
    match (&cfg, cgroup) {
        (Some(cfg), Ok(path)) if blocked.is_empty() => {
            let cfg = Config { cgroup: Some(path), ..cfg.clone() };
            items.push(Item::from_probe("sock_ops attach", probe::attach(&cfg)));
        }
        _ => items.push(Item::fail(
            "sock_ops attach",
            format!("not tried: {} failed", blocked.join(", ")),
            "fix the items above",
        )),
    }
    items.push(match cfg.as_ref().map(|c| c.walk_netns_all) {
        Some(true) => match probe::walk_netns_all() {
            Ok(d) => Item::ok("walk_netns_all", d),
            Err(f) => Item::warn("walk_netns_all", f.problem, f.fix),
        },
        _ => Item::skip(
            "walk_netns_all",
            "off: network namespaces but the agent's and walk_netns ones fold from per-segment callbacks",
        ),
    });
    items.push(remote::imds());
    // --endpoint given to check, else the one the agent's config ships to.
    let endpoint = args.endpoint.clone().or_else(|| cfg.as_ref().and_then(|c| c.endpoint.clone()));
    items.push(remote::backend(endpoint.as_deref()));
    items
}

/// Print the items; true when nothing failed.
pub fn run(args: &CheckArgs) -> bool {
    let items = items(args);
    let width = items.iter().map(|i| i.name.len()).max().unwrap_or(0);
    for i in &items {
        let tag = match i.status {
            Status::Ok => "OK",
            Status::Fail => "FAIL",
            Status::Warn => "WARN",
            Status::Skip => "SKIP",
        };
        println!("{tag:<4}  {:<width$}  {}", i.name, i.detail);
        if let Some(fix) = i.fix.as_deref().filter(|_| i.status != Status::Ok) {
            println!("      {:<width$}  fix: {fix}", "");
        }
    }
    let failed = items.iter().filter(|i| i.status == Status::Fail).count();
    if failed == 0 {
        println!("flow-agent can capture on this host");
    } else {
        println!("flow-agent cannot run here: {failed} requirement(s) failed");
    }
    failed == 0
}
