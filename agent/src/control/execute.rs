//! The pipeline's side of a flow operation: read or remove matching keys of the kernel flow table.
//! A flush goes through `Capture::evict` and `Aggregator::account_evicted`, exactly as idle-key
//! eviction does, so what the flows gained since the last tick is still reported and they are
//! counted from zero at their next event.

use agent_common::maps::{FlowAgg, FlowKey};

use super::{
    Job, Outcome,
    filter::{AddressDefinition, FlowView},
    operations::{Flow, OperationStatus, OperationType},
};
use crate::{aggregate::Aggregator, capture::Capture};

fn flow(key: &FlowKey, v: &FlowAgg) -> Flow {
    let view = FlowView::of(key);
    let host = |ip: std::net::IpAddr| AddressDefinition {
        address_definition: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
    };
    Flow {
        source_address: host(view.source),
        destination_address: host(view.destination),
        destination_port: view.destination_port.to_string(),
        protocol: view.protocol.to_string(),
        observed_at: if key.role == agent_common::maps::ROLE_SERVER { "server" } else { "client" }.to_string(),
        packet_count: v.segments_sent + v.segments_received,
        byte_count: v.bytes_sent + v.bytes_received,
        bytes_sent: v.bytes_sent,
        bytes_received: v.bytes_received,
        segments_sent: v.segments_sent,
        segments_received: v.segments_received,
        connections_attempted: v.attempted,
        connections_established: v.established,
        connections_open: v.open(),
    }
}

/// Run `job` and send its outcome back.
pub fn execute(job: Job, capture: &mut Capture, aggregator: &mut Aggregator) {
    let outcome = run(&job, capture, aggregator);
    // The requester may have given up waiting; the operation is recorded either way.
    let _ = job.reply.send(outcome);
}

fn run(job: &Job, capture: &mut Capture, aggregator: &mut Aggregator) -> Outcome {
    // Open sockets' counters up to now (walk mode).
    if let Err(e) = capture.walk() {
        return Outcome::failed(format!("bringing open sockets' counters into the flow table: {e}"));
    }
    let snap = match capture.read() {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("reading the kernel flow table: {e}")),
    };
    let matching = snap.flows.into_iter().filter(|(k, _)| job.matchers.iter().any(|m| m.matches(k)));
    match job.kind {
        OperationType::FlowCapture => Outcome {
            status: OperationStatus::Completed,
            message: None,
            flows: matching.map(|(k, v)| flow(&k, &v)).collect(),
        },
        OperationType::FlowFlush => {
            let (mut flows, mut errors) = (Vec::new(), Vec::new());
            for (key, _) in matching {
                match capture.evict(&key) {
                    Ok(last) => {
                        aggregator.account_evicted(&key, last);
                        flows.extend(last.map(|v| flow(&key, &v)));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if errors.is_empty() {
                Outcome { status: OperationStatus::Completed, message: None, flows }
            } else {
                let message = format!("{} matching flows could not be removed: {}", errors.len(), errors[0]);
                let status =
                    if flows.is_empty() { OperationStatus::Failed } else { OperationStatus::CompletedWithErrors };
                Outcome { status, message: Some(message), flows }
            }
        }
    }
}
