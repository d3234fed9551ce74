//! `flow-agent flows ...`: drive the flow-operations API of a running agent and print its JSON
//! answers.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::{
    client::{Target, encode, request},
    filter::{AddressDefinition, FlowFilter, MAX_FILTERS},
};
use crate::config::{Config, RunArgs};

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// Control socket of the running agent [default: control_socket of --config, or
    /// /run/flow-agent/control.sock].
    #[arg(long, value_name = "PATH", global = true)]
    control_socket: Option<PathBuf>,
    /// Use the agent's loopback HTTP API (its control_http) instead of the socket.
    #[arg(long, value_name = "ADDR", global = true)]
    control_http: Option<SocketAddr>,
    #[command(subcommand)]
    command: FlowsCommand,
}

#[derive(Subcommand, Debug)]
enum FlowsCommand {
    /// Start a FLOW_CAPTURE: the live flows matching the filters, with their current counters.
    Capture(FilterArgs),
    /// Start a FLOW_FLUSH: stop tracking the matching flows (counted again from their next event).
    Flush(FilterArgs),
    /// List flow operations, newest first.
    List {
        /// Only operations of this type.
        #[arg(long = "type", value_name = "FLOW_CAPTURE|FLOW_FLUSH")]
        kind: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// One operation: type, status, request time and filters.
    Describe {
        /// FlowOperationId.
        id: String,
    },
    /// The flows an operation returned.
    Results {
        /// FlowOperationId.
        id: String,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Args, Debug)]
struct PageArgs {
    /// At most this many items; a NextToken is returned when there are more.
    #[arg(long, value_name = "N")]
    max_results: Option<u32>,
    /// Resume from the NextToken of a previous answer.
    #[arg(long, value_name = "TOKEN")]
    next_token: Option<String>,
}

#[derive(Args, Debug)]
struct FilterArgs {
    /// A filter: comma-separated conditions, all of which must hold: `src=CIDR`, `dst=CIDR`,
    /// `dport=PORT` or `dport=FROM:TO`, `sport=...`, `proto=TCP` (repeatable). Repeat --filter
    /// (up to 20) to select flows matching any. Without --filter: every flow.
    #[arg(long = "filter", value_name = "FILTER")]
    filters: Vec<String>,
}

fn parse_filter(s: &str) -> Result<FlowFilter> {
    let mut f = FlowFilter::default();
    for cond in s.split(',').map(str::trim).filter(|c| !c.is_empty() && *c != "all") {
        let Some((k, v)) = cond.split_once('=') else {
            bail!("filter condition {cond:?} is not KEY=VALUE (keys: src, dst, sport, dport, proto)")
        };
        let v = v.trim().to_string();
        match k.trim() {
            "src" => f.source_address = Some(AddressDefinition { address_definition: v }),
            "dst" => f.destination_address = Some(AddressDefinition { address_definition: v }),
            "sport" => f.source_port = Some(v),
            "dport" => f.destination_port = Some(v),
            "proto" => f.protocols.push(v),
            other => bail!("unknown filter key {other:?} in {s:?} (keys: src, dst, sport, dport, proto)"),
        }
    }
    Ok(f)
}

fn query(pairs: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v)))).collect();
    if q.is_empty() { String::new() } else { format!("?{}", q.join("&")) }
}

fn page_query(p: &PageArgs, extra: Option<(&str, Option<String>)>) -> String {
    let mut pairs = vec![("MaxResults", p.max_results.map(|n| n.to_string())), ("NextToken", p.next_token.clone())];
    pairs.extend(extra);
    query(&pairs)
}

pub fn run(args: FlowsArgs, run: &RunArgs) -> Result<()> {
    let target = match (args.control_http, args.control_socket) {
        (Some(a), _) => Target::Http(a),
        (None, Some(p)) => Target::Unix(p),
        (None, None) => Target::Unix(Config::resolve(run)?.control_socket),
    };
    let (method, path, body) = match &args.command {
        FlowsCommand::Capture(f) | FlowsCommand::Flush(f) => {
            if f.filters.len() > MAX_FILTERS {
                bail!("{} filters given: at most {MAX_FILTERS} are allowed", f.filters.len());
            }
            let filters = if f.filters.is_empty() {
                vec![FlowFilter::default()]
            } else {
                f.filters.iter().map(|s| parse_filter(s)).collect::<Result<_>>()?
            };
            let kind = if matches!(args.command, FlowsCommand::Capture(_)) { "capture" } else { "flush" };
            let body = serde_json::json!({ "FlowFilters": filters }).to_string();
            ("POST", format!("/flow-operations/{kind}"), Some(body))
        }
        FlowsCommand::List { kind, page } => {
            ("GET", format!("/flow-operations{}", page_query(page, Some(("FlowOperationType", kind.clone())))), None)
        }
        FlowsCommand::Describe { id } => ("GET", format!("/flow-operations/{}", encode(id)), None),
        FlowsCommand::Results { id, page } => {
            ("GET", format!("/flow-operations/{}/results{}", encode(id), page_query(page, None)), None)
        }
    };
    let resp = request(&target, method, &path, body.as_deref())?;
    let json: Option<Value> = serde_json::from_str(&resp.body).ok();
    if !(200..300).contains(&resp.status) {
        let (code, msg) = match &json {
            Some(v) => (
                v["Code"].as_str().unwrap_or("Error").to_string(),
                v["Message"].as_str().map(str::to_string).unwrap_or_else(|| resp.body.clone()),
            ),
            None => (format!("HTTP {}", resp.status), resp.body.trim().to_string()),
        };
        bail!("{code}: {msg}");
    }
    let json = json.with_context(|| format!("the agent answered with non-JSON: {:?}", resp.body))?;
    println!("{}", serde_json::to_string_pretty(&json).expect("JSON values serialize"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_from_the_command_line() {
        let f = parse_filter("src=10.0.0.0/8, dport=80:90,proto=TCP").unwrap();
        assert_eq!(f.source_address.unwrap().address_definition, "10.0.0.0/8");
        assert_eq!(f.destination_port.as_deref(), Some("80:90"));
        assert_eq!(f.protocols, vec!["TCP"]);
        assert_eq!(parse_filter("all").unwrap(), FlowFilter::default());
        assert!(parse_filter("port=80").unwrap_err().to_string().contains("unknown filter key \"port\""));
        assert!(parse_filter("dport").unwrap_err().to_string().contains("KEY=VALUE"));
    }
}
