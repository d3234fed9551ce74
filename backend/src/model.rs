//! The API's resources (scopes, monitors, queries) and enums, in the wire names of the
//! 2023-04-19 service model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Tags = BTreeMap<String, String>;

/// A monitor's local or remote resource (`MonitorLocalResource` / `MonitorRemoteResource`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    #[serde(rename = "type")]
    pub kind: String,
    pub identifier: String,
}

pub const LOCAL_RESOURCE_TYPES: [&str; 5] =
    ["AWS::EC2::VPC", "AWS::AvailabilityZone", "AWS::EC2::Subnet", "AWS::Region", "AWS::EKS::Cluster"];
pub const REMOTE_RESOURCE_TYPES: [&str; 5] =
    ["AWS::EC2::VPC", "AWS::AvailabilityZone", "AWS::EC2::Subnet", "AWS::AWSService", "AWS::Region"];
/// Identifiers of `AWS::AWSService` remote resources.
pub const AWS_SERVICES: [&str; 2] = ["S3", "DynamoDB"];

pub const MONITOR_STATUSES: [&str; 5] = ["PENDING", "ACTIVE", "INACTIVE", "ERROR", "DELETING"];
pub const DESTINATION_CATEGORIES: [&str; 7] =
    ["INTRA_AZ", "INTER_AZ", "INTER_VPC", "UNCLASSIFIED", "AMAZON_S3", "AMAZON_DYNAMODB", "INTER_REGION"];

/// `TargetResource`: a Region-account pair of a scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetResource {
    pub target_identifier: TargetIdentifier,
    pub region: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetIdentifier {
    pub target_id: TargetId,
    pub target_type: String,
}

/// `TargetId` is a union; its only member today is `accountId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetId {
    pub account_id: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    pub scope_id: String,
    pub scope_arn: String,
    pub status: String,
    pub targets: Vec<TargetResource>,
    pub tags: Tags,
    pub client_token: Option<String>,
    pub request_hash: String,
    pub created_at_ms: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Monitor {
    pub monitor_name: String,
    pub monitor_arn: String,
    pub status: String,
    pub scope_arn: String,
    pub local_resources: Vec<Resource>,
    pub remote_resources: Vec<Resource>,
    pub tags: Tags,
    pub client_token: Option<String>,
    pub request_hash: String,
    pub created_at_ms: i64,
    pub modified_at_ms: i64,
}

/// The metrics a query ranks by (`MonitorMetric`; `WorkloadInsightsMetric` lacks RTT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Metric {
    RoundTripTime,
    Timeouts,
    Retransmissions,
    DataTransferred,
}

impl Metric {
    pub const ALL: [Metric; 4] =
        [Metric::RoundTripTime, Metric::Timeouts, Metric::Retransmissions, Metric::DataTransferred];

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::RoundTripTime => "ROUND_TRIP_TIME",
            Metric::Timeouts => "TIMEOUTS",
            Metric::Retransmissions => "RETRANSMISSIONS",
            Metric::DataTransferred => "DATA_TRANSFERRED",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The `MetricUnit` of the values a query on this metric returns.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::RoundTripTime => "Microseconds",
            Metric::Timeouts | Metric::Retransmissions => "Count",
            Metric::DataTransferred => "Bytes",
        }
    }
}

/// The three query families of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryKind {
    MonitorTopContributors,
    WorkloadInsightsTopContributors,
    WorkloadInsightsTopContributorsData,
}

impl QueryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::MonitorTopContributors => "MonitorTopContributors",
            QueryKind::WorkloadInsightsTopContributors => "WorkloadInsightsTopContributors",
            QueryKind::WorkloadInsightsTopContributorsData => "WorkloadInsightsTopContributorsData",
        }
    }
}

/// What a query asks for; stored with the query so any replica can run or page it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueryParams {
    pub kind: QueryKind,
    /// Monitor name or scope id.
    pub owner: String,
    pub start_s: i64,
    pub end_s: i64,
    pub metric: Metric,
    pub destination_category: String,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueryRecord {
    pub query_id: String,
    pub params: QueryParams,
    pub status: String,
    pub unit: Option<String>,
    /// JSON array of result rows once SUCCEEDED.
    pub result_json: Option<String>,
    pub error: Option<String>,
    pub updated_at_ms: i64,
}

pub const QUERY_QUEUED: &str = "QUEUED";
pub const QUERY_RUNNING: &str = "RUNNING";
pub const QUERY_SUCCEEDED: &str = "SUCCEEDED";
pub const QUERY_FAILED: &str = "FAILED";
pub const QUERY_CANCELED: &str = "CANCELED";
