//! Flow operations: what was asked, when, its status and the flows it returned, kept in memory
//! (the most recent `KEEP`), listed newest first with `MaxResults`/`NextToken` paging.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::filter::FlowFilter;

/// Operations remembered; older ones are forgotten.
pub const KEEP: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    FlowCapture,
    FlowFlush,
}

impl OperationType {
    pub fn parse(s: &str) -> Result<OperationType, String> {
        match s {
            "FLOW_CAPTURE" => Ok(OperationType::FlowCapture),
            "FLOW_FLUSH" => Ok(OperationType::FlowFlush),
            _ => Err(format!("FlowOperationType {s:?} is not FLOW_CAPTURE or FLOW_FLUSH")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationStatus {
    InProgress,
    Completed,
    Failed,
    CompletedWithErrors,
}

/// A flow as an operation returns it, with its counters since it entered the kernel table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Flow {
    pub source_address: super::filter::AddressDefinition,
    pub destination_address: super::filter::AddressDefinition,
    pub destination_port: String,
    pub protocol: String,
    /// Which side's sockets these counters come from: "client" (the source) or "server".
    pub observed_at: String,
    pub packet_count: u64,
    pub byte_count: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub segments_sent: u64,
    pub segments_received: u64,
    pub connections_attempted: u64,
    pub connections_established: u64,
    pub connections_open: u64,
}

#[derive(Clone, Debug)]
pub struct Operation {
    pub id: String,
    seq: u64,
    pub kind: OperationType,
    pub requested: DateTime<Utc>,
    pub status: OperationStatus,
    pub message: Option<String>,
    pub filters: Vec<FlowFilter>,
    pub flows: Vec<Flow>,
}

/// One page of a list and the token for the next, if any.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

#[derive(Default)]
pub struct Operations {
    ops: VecDeque<Operation>,
    next_seq: u64,
}

fn token(s: Option<&str>) -> Result<Option<u64>, String> {
    s.map(|t| t.parse::<u64>().map_err(|_| format!("NextToken {t:?} is not a token this agent returned"))).transpose()
}

impl Operations {
    /// Record a new operation, IN_PROGRESS. Returns its id.
    pub fn start(&mut self, kind: OperationType, filters: Vec<FlowFilter>) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.next_seq += 1;
        self.ops.push_back(Operation {
            id: id.clone(),
            seq: self.next_seq,
            kind,
            requested: Utc::now(),
            status: OperationStatus::InProgress,
            message: None,
            filters,
            flows: Vec::new(),
        });
        if self.ops.len() > KEEP {
            self.ops.pop_front();
        }
        id
    }

    pub fn finish(&mut self, id: &str, status: OperationStatus, message: Option<String>, flows: Vec<Flow>) {
        if let Some(op) = self.ops.iter_mut().find(|o| o.id == id) {
            op.status = status;
            op.message = message;
            op.flows = flows;
        }
    }

    pub fn get(&self, id: &str) -> Option<&Operation> {
        self.ops.iter().find(|o| o.id == id)
    }

    /// Newest first, of `kind` if given. The token is the sequence number to resume at.
    pub fn list(
        &self,
        kind: Option<OperationType>,
        max: usize,
        next: Option<&str>,
    ) -> Result<Page<&Operation>, String> {
        let from = token(next)?.unwrap_or(u64::MAX);
        let mut matching =
            self.ops.iter().rev().filter(|o| o.seq <= from && kind.is_none_or(|k| o.kind == k)).take(max + 1);
        let items: Vec<&Operation> = matching.by_ref().take(max).collect();
        let next_token = matching.next().map(|o| o.seq.to_string());
        Ok(Page { items, next_token })
    }

    /// A page of an operation's flows. The token is the offset to resume at.
    pub fn results<'a>(op: &'a Operation, max: usize, next: Option<&str>) -> Result<Page<&'a Flow>, String> {
        let from = token(next)?.unwrap_or(0) as usize;
        if from > op.flows.len() {
            return Err(format!("NextToken {:?} is past the end of the results", next.unwrap_or("")));
        }
        let items: Vec<&Flow> = op.flows[from..].iter().take(max).collect();
        let end = from + items.len();
        Ok(Page { items, next_token: (end < op.flows.len()).then(|| end.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_page_newest_first_with_a_type_filter() {
        let mut ops = Operations::default();
        let ids: Vec<String> = (0..5)
            .map(|i| ops.start(if i % 2 == 0 { OperationType::FlowCapture } else { OperationType::FlowFlush }, vec![]))
            .collect();
        let p1 = ops.list(None, 2, None).unwrap();
        assert_eq!(p1.items.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), vec![ids[4].clone(), ids[3].clone()]);
        let p2 = ops.list(None, 2, p1.next_token.as_deref()).unwrap();
        assert_eq!(p2.items[0].id, ids[2]);
        let p3 = ops.list(None, 2, p2.next_token.as_deref()).unwrap();
        assert_eq!((p3.items.len(), p3.next_token), (1, None));
        let flushes = ops.list(Some(OperationType::FlowFlush), 10, None).unwrap();
        assert_eq!(flushes.items.len(), 2);
        assert!(flushes.next_token.is_none());
        assert!(ops.list(None, 2, Some("abc")).unwrap_err().contains("abc"));
    }
}
