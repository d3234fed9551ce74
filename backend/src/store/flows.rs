//! Reports and their flows: storing them once per `report_id`, and the aggregations queries
//! and the network health indicator are computed from.

use agent_common::report::{FlowMetrics, FlowRecord, LatencySummary, Report, Role};
use serde::Serialize;
use sqlx::Row;

use super::{Arg, Store, StoreError, bind_all};
use crate::model::{Metric, Resource};

/// Flow columns in insert order (see migrations/*/0001_initial.sql).
pub const FLOW_COLUMNS: [&str; 62] = [
    "report_id",
    "window_start",
    "window_end",
    "hostname",
    "protocol",
    "role",
    "local_ip",
    "remote_ip",
    "target_port",
    "destination_category",
    "local_instance_id",
    "local_instance_arn",
    "local_subnet_id",
    "local_subnet_arn",
    "local_vpc_id",
    "local_vpc_arn",
    "local_az",
    "local_region",
    "remote_instance_id",
    "remote_instance_arn",
    "remote_subnet_id",
    "remote_subnet_arn",
    "remote_vpc_id",
    "remote_vpc_arn",
    "remote_az",
    "remote_region",
    "snat_ip",
    "dnat_ip",
    "k8s_local_pod_name",
    "k8s_local_pod_namespace",
    "k8s_local_service_name",
    "k8s_remote_pod_name",
    "k8s_remote_pod_namespace",
    "k8s_remote_service_name",
    "conn_attempted",
    "conn_established",
    "conn_closed",
    "conn_failed",
    "conn_refused",
    "conn_timed_out",
    "conn_reset",
    "conn_active",
    "bytes_sent",
    "bytes_received",
    "segments_sent",
    "segments_received",
    "retransmissions",
    "timeouts",
    "rtt_count",
    "rtt_min",
    "rtt_max",
    "rtt_mean",
    "rtt_p50",
    "rtt_p90",
    "rtt_p99",
    "hs_count",
    "hs_min",
    "hs_max",
    "hs_mean",
    "hs_p50",
    "hs_p90",
    "hs_p99",
];

/// Rows per multi-row INSERT (62 binds each; well under SQLite's and PostgreSQL's limits).
const FLOWS_PER_STATEMENT: usize = 200;

/// Counters are u64 in the schema and BIGINT in the database; ingest rejects larger values
/// before they get here, so this only guards against misuse.
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn latency_args(out: &mut Vec<Arg>, l: &LatencySummary) {
    out.extend([Arg::I(i(l.count)), Arg::I(i(l.min)), Arg::I(i(l.max)), Arg::F(l.mean)]);
    out.extend([Arg::I(i(l.p50)), Arg::I(i(l.p90)), Arg::I(i(l.p99))]);
}

fn metric_args(out: &mut Vec<Arg>, m: &FlowMetrics) {
    let c = &m.connections;
    for v in [c.attempted, c.established, c.closed, c.failed, c.refused, c.timed_out, c.reset, c.active] {
        out.push(Arg::I(i(v)));
    }
    for v in [m.bytes_sent, m.bytes_received, m.segments_sent, m.segments_received, m.retransmissions, m.timeouts] {
        out.push(Arg::I(i(v)));
    }
    latency_args(out, &m.rtt_us);
    latency_args(out, &m.handshake_us);
}

fn text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn flow_args(out: &mut Vec<Arg>, r: &Report, f: &FlowRecord) {
    let e = &f.enrichment;
    let k = e.kubernetes.clone().unwrap_or_default();
    out.extend([
        Arg::S(r.report_id.clone()),
        Arg::I(r.window.start.timestamp()),
        Arg::I(r.window.end.timestamp()),
        Arg::S(r.agent.hostname.clone()),
        Arg::S(text(&f.protocol)),
        Arg::S(match f.role {
            Role::Client => "client".into(),
            Role::Server => "server".into(),
        }),
        Arg::S(f.local_ip.to_string()),
        Arg::S(f.remote_ip.to_string()),
        Arg::I(f.target_port as i64),
        Arg::S(e.destination_category.map(|c| text(&c)).unwrap_or_else(|| "UNCLASSIFIED".into())),
    ]);
    for v in [
        &e.local_instance_id,
        &e.local_instance_arn,
        &e.local_subnet_id,
        &e.local_subnet_arn,
        &e.local_vpc_id,
        &e.local_vpc_arn,
        &e.local_az,
        &e.local_region,
        &e.remote_instance_id,
        &e.remote_instance_arn,
        &e.remote_subnet_id,
        &e.remote_subnet_arn,
        &e.remote_vpc_id,
        &e.remote_vpc_arn,
        &e.remote_az,
        &e.remote_region,
        &e.snat_ip,
        &e.dnat_ip,
        &k.local_pod_name,
        &k.local_pod_namespace,
        &k.local_service_name,
        &k.remote_pod_name,
        &k.remote_pod_namespace,
        &k.remote_service_name,
    ] {
        out.push(Arg::N(v.clone()));
    }
    metric_args(out, &f.metrics);
}

/// The rows a query reads: a time range, a destination category and a monitor's resources.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    /// `[start_s, end_s)` on the report window start, epoch seconds.
    pub start_s: i64,
    pub end_s: i64,
    pub destination_category: Option<String>,
    /// Flows whose local side is in any of these (empty: no restriction).
    pub local: Vec<Resource>,
    /// Flows whose remote side is in any of these (empty: no restriction).
    pub remote: Vec<Resource>,
    /// Only flows whose `local_region` is one of these.
    pub local_regions: Option<Vec<String>>,
}

/// `vpc-0abc` from `arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0abc`; anything else unchanged.
pub fn id_from_arn(identifier: &str) -> &str {
    if identifier.starts_with("arn:") { identifier.rsplit('/').next().unwrap_or(identifier) } else { identifier }
}

fn resource_condition(side: &str, r: &Resource, args: &mut Vec<Arg>) -> String {
    let id = r.identifier.clone();
    let short = id_from_arn(&id).to_string();
    match r.kind.as_str() {
        "AWS::EC2::VPC" => {
            args.extend([Arg::S(id), Arg::S(short)]);
            format!("({side}_vpc_arn = ? OR {side}_vpc_id = ?)")
        }
        "AWS::EC2::Subnet" => {
            args.extend([Arg::S(id), Arg::S(short)]);
            format!("({side}_subnet_arn = ? OR {side}_subnet_id = ?)")
        }
        "AWS::AvailabilityZone" => {
            args.push(Arg::S(id));
            format!("{side}_az = ?")
        }
        "AWS::Region" => {
            args.push(Arg::S(id));
            format!("{side}_region = ?")
        }
        // The report schema names no cluster: an EKS cluster resource selects the flows that
        // carry Kubernetes metadata.
        "AWS::EKS::Cluster" => "(k8s_local_pod_name IS NOT NULL OR k8s_local_service_name IS NOT NULL)".to_string(),
        "AWS::AWSService" => {
            let cat = if id.eq_ignore_ascii_case("dynamodb") { "AMAZON_DYNAMODB" } else { "AMAZON_S3" };
            args.push(Arg::S(cat.into()));
            "destination_category = ?".to_string()
        }
        _ => "1 = 0".to_string(),
    }
}

impl FlowFilter {
    pub fn where_clause(&self, args: &mut Vec<Arg>) -> String {
        let mut conds = vec!["window_start >= ?".to_string(), "window_start < ?".to_string()];
        args.extend([Arg::I(self.start_s), Arg::I(self.end_s)]);
        if let Some(c) = &self.destination_category {
            conds.push("destination_category = ?".into());
            args.push(Arg::S(c.clone()));
        }
        for (side, rs) in [("local", &self.local), ("remote", &self.remote)] {
            if !rs.is_empty() {
                let any: Vec<String> = rs.iter().map(|r| resource_condition(side, r, args)).collect();
                conds.push(format!("({})", any.join(" OR ")));
            }
        }
        if let Some(regions) = &self.local_regions {
            if regions.is_empty() {
                conds.push("1 = 0".into());
            } else {
                conds.push(format!("local_region IN ({})", vec!["?"; regions.len()].join(", ")));
                args.extend(regions.iter().map(|r| Arg::S(r.clone())));
            }
        }
        conds.join(" AND ")
    }
}

/// `MonitorTopContributorsRow`, in the API's member names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitorTopContributorsRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snat_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_vpc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_az: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_subnet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_vpc_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_az: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_subnet_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_instance_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnat_ip: Option<String>,
    pub value: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_metadata: Option<KubernetesMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_instance_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_subnet_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_vpc_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_instance_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_subnet_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_vpc_arn: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesMetadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_pod_namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_service_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_pod_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_pod_namespace: Option<String>,
}

/// One group of a workload-insights aggregation, before scope filtering and ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadGroup {
    pub local_subnet_id: Option<String>,
    pub local_subnet_arn: Option<String>,
    pub local_vpc_id: Option<String>,
    pub local_vpc_arn: Option<String>,
    pub local_instance_arn: Option<String>,
    pub local_az: Option<String>,
    pub local_region: Option<String>,
    pub remote_identifier: String,
    /// Bucket start (epoch seconds) when bucketed.
    pub bucket: Option<i64>,
    pub value: i64,
}

/// Per-minute, per-host sums the health indicator is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct HostMinute {
    pub minute: i64,
    pub hostname: String,
    pub flows: i64,
    pub segments_sent: i64,
    pub retransmissions: i64,
    pub timeouts: i64,
    pub rtt_sum_us: f64,
    pub rtt_count: i64,
}

/// SQL for the value a metric ranks by. RTT is the sample-count-weighted mean of the flows'
/// mean RTT (microseconds); the others are sums.
fn value_expr(metric: Metric) -> &'static str {
    match metric {
        Metric::RoundTripTime => {
            "CAST(SUM(rtt_mean * rtt_count) / CAST(NULLIF(SUM(rtt_count), 0) AS DOUBLE PRECISION) AS DOUBLE PRECISION)"
        }
        Metric::Timeouts => "CAST(SUM(timeouts) AS BIGINT)",
        Metric::Retransmissions => "CAST(SUM(retransmissions) AS BIGINT)",
        Metric::DataTransferred => "CAST(SUM(bytes_sent + bytes_received) AS BIGINT)",
    }
}

/// How a workload-insights row names the remote side: the AWS service for S3/DynamoDB, the
/// Region for inter-Region flows, the VPC for inter-VPC flows, otherwise the most specific of
/// subnet, VPC, AZ, Region; the remote IP when none is known.
const REMOTE_IDENTIFIER: &str = "CASE destination_category \
    WHEN 'AMAZON_S3' THEN 'S3' \
    WHEN 'AMAZON_DYNAMODB' THEN 'DynamoDB' \
    WHEN 'INTER_REGION' THEN COALESCE(remote_region, remote_vpc_arn, remote_vpc_id, remote_ip) \
    WHEN 'INTER_VPC' THEN COALESCE(remote_vpc_arn, remote_vpc_id, remote_subnet_arn, remote_subnet_id, remote_region, remote_ip) \
    ELSE COALESCE(remote_subnet_arn, remote_subnet_id, remote_vpc_arn, remote_vpc_id, remote_az, remote_region, remote_ip) END";

pub struct IngestOutcome {
    /// False when a report with this id was already stored (nothing was written).
    pub stored: bool,
    pub flows: usize,
}

impl Store {
    /// Stores a report and its flows in one transaction, unless a report with the same
    /// `report_id` is already stored.
    pub async fn insert_report(&self, r: &Report, received_at_ms: i64) -> Result<IngestOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        let sql = self.sql(
            "INSERT INTO reports (report_id, received_at_ms, window_start, window_end, hostname, agent_version, flow_count, other_json, agent_stats_json) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (report_id) DO NOTHING",
        );
        let inserted = sqlx::query(&sql)
            .bind(r.report_id.clone())
            .bind(received_at_ms)
            .bind(r.window.start.timestamp())
            .bind(r.window.end.timestamp())
            .bind(r.agent.hostname.clone())
            .bind(r.agent.version.clone())
            .bind(r.flows.len() as i64)
            .bind(serde_json::to_string(&r.other).unwrap_or_default())
            .bind(serde_json::to_string(&r.agent_stats).unwrap_or_default())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(IngestOutcome { stored: false, flows: 0 });
        }
        let cols = FLOW_COLUMNS.join(", ");
        let row = format!("({})", vec!["?"; FLOW_COLUMNS.len()].join(", "));
        let mut args = Vec::with_capacity(FLOWS_PER_STATEMENT * FLOW_COLUMNS.len());
        for chunk in r.flows.chunks(FLOWS_PER_STATEMENT) {
            args.clear();
            for f in chunk {
                flow_args(&mut args, r, f);
            }
            let sql =
                self.sql(&format!("INSERT INTO flows ({cols}) VALUES {}", vec![row.as_str(); chunk.len()].join(", ")));
            bind_all(sqlx::query(&sql), &args).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(IngestOutcome { stored: true, flows: r.flows.len() })
    }

    pub async fn report_count(&self) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query("SELECT (SELECT COUNT(*) FROM reports) AS r, (SELECT COUNT(*) FROM flows) AS f")
            .fetch_one(&self.pool)
            .await?;
        Ok((r.try_get("r")?, r.try_get("f")?))
    }

    /// Flows grouped by (local IP, remote IP, target port), ranked by `metric` (highest
    /// first), at most `limit`.
    pub async fn monitor_top_contributors(
        &self,
        filter: &FlowFilter,
        metric: Metric,
        limit: u32,
    ) -> Result<Vec<MonitorTopContributorsRow>, StoreError> {
        let mut args = Vec::new();
        let wh = filter.where_clause(&mut args);
        let text_cols = [
            "destination_category",
            "snat_ip",
            "dnat_ip",
            "local_instance_id",
            "local_instance_arn",
            "local_subnet_id",
            "local_subnet_arn",
            "local_vpc_id",
            "local_vpc_arn",
            "local_az",
            "local_region",
            "remote_instance_id",
            "remote_instance_arn",
            "remote_subnet_id",
            "remote_subnet_arn",
            "remote_vpc_id",
            "remote_vpc_arn",
            "remote_az",
            "remote_region",
            "k8s_local_pod_name",
            "k8s_local_pod_namespace",
            "k8s_local_service_name",
            "k8s_remote_pod_name",
            "k8s_remote_pod_namespace",
            "k8s_remote_service_name",
        ];
        let maxes: Vec<String> = text_cols.iter().map(|c| format!("MAX({c}) AS {c}")).collect();
        let having = if metric == Metric::RoundTripTime { "HAVING SUM(rtt_count) > 0" } else { "" };
        let sql = format!(
            "SELECT local_ip, remote_ip, target_port, {}, {} AS value FROM flows WHERE {wh} \
             GROUP BY local_ip, remote_ip, target_port {having} \
             ORDER BY value DESC, local_ip, remote_ip, target_port LIMIT ?",
            maxes.join(", "),
            value_expr(metric)
        );
        args.push(Arg::I(limit as i64));
        let sql = self.sql(&sql);
        let rows = bind_all(sqlx::query(&sql), &args).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let value = if metric == Metric::RoundTripTime {
                r.try_get::<Option<f64>, _>("value")?.unwrap_or(0.0).round() as i64
            } else {
                r.try_get::<Option<i64>, _>("value")?.unwrap_or(0)
            };
            let g = |c: &str| r.try_get::<Option<String>, _>(c);
            let k = KubernetesMetadata {
                local_pod_name: g("k8s_local_pod_name")?,
                local_pod_namespace: g("k8s_local_pod_namespace")?,
                local_service_name: g("k8s_local_service_name")?,
                remote_pod_name: g("k8s_remote_pod_name")?,
                remote_pod_namespace: g("k8s_remote_pod_namespace")?,
                remote_service_name: g("k8s_remote_service_name")?,
            };
            out.push(MonitorTopContributorsRow {
                local_ip: Some(r.try_get("local_ip")?),
                remote_ip: Some(r.try_get("remote_ip")?),
                target_port: Some(r.try_get("target_port")?),
                destination_category: g("destination_category")?,
                snat_ip: g("snat_ip")?,
                dnat_ip: g("dnat_ip")?,
                local_instance_id: g("local_instance_id")?,
                local_instance_arn: g("local_instance_arn")?,
                local_subnet_id: g("local_subnet_id")?,
                local_subnet_arn: g("local_subnet_arn")?,
                local_vpc_id: g("local_vpc_id")?,
                local_vpc_arn: g("local_vpc_arn")?,
                local_az: g("local_az")?,
                local_region: g("local_region")?,
                remote_instance_id: g("remote_instance_id")?,
                remote_instance_arn: g("remote_instance_arn")?,
                remote_subnet_id: g("remote_subnet_id")?,
                remote_subnet_arn: g("remote_subnet_arn")?,
                remote_vpc_id: g("remote_vpc_id")?,
                remote_vpc_arn: g("remote_vpc_arn")?,
                remote_az: g("remote_az")?,
                remote_region: g("remote_region")?,
                value,
                kubernetes_metadata: if k == KubernetesMetadata::default() { None } else { Some(k) },
            });
        }
        Ok(out)
    }

    /// Sums of a (non-RTT) metric grouped by local subnet/VPC/AZ/Region and remote identifier,
    /// optionally per time bucket of `bucket_s` seconds.
    pub async fn workload_groups(
        &self,
        filter: &FlowFilter,
        metric: Metric,
        bucket_s: Option<i64>,
    ) -> Result<Vec<WorkloadGroup>, StoreError> {
        let mut args = Vec::new();
        let wh = filter.where_clause(&mut args);
        // A constant in GROUP BY would name an output column, so the unbucketed form groups
        // by the columns alone.
        let (bucket, group_bucket) = match bucket_s {
            Some(b) => (format!("(window_start / {b}) * {b}"), format!(", (window_start / {b}) * {b}")),
            None => ("0".to_string(), String::new()),
        };
        let sql = format!(
            "SELECT local_subnet_id, MAX(local_subnet_arn) AS local_subnet_arn, local_vpc_id, MAX(local_vpc_arn) AS local_vpc_arn, \
             MAX(local_instance_arn) AS local_instance_arn, local_az, local_region, {REMOTE_IDENTIFIER} AS remote_identifier, \
             CAST({bucket} AS BIGINT) AS bucket, {} AS value FROM flows WHERE {wh} \
             GROUP BY local_subnet_id, local_vpc_id, local_az, local_region, {REMOTE_IDENTIFIER}{group_bucket}",
            value_expr(metric)
        );
        let sql = self.sql(&sql);
        let rows = bind_all(sqlx::query(&sql), &args).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let g = |c: &str| r.try_get::<Option<String>, _>(c);
            out.push(WorkloadGroup {
                local_subnet_id: g("local_subnet_id")?,
                local_subnet_arn: g("local_subnet_arn")?,
                local_vpc_id: g("local_vpc_id")?,
                local_vpc_arn: g("local_vpc_arn")?,
                local_instance_arn: g("local_instance_arn")?,
                local_az: g("local_az")?,
                local_region: g("local_region")?,
                remote_identifier: g("remote_identifier")?.unwrap_or_default(),
                bucket: bucket_s.map(|_| r.try_get::<i64, _>("bucket")).transpose()?,
                value: r.try_get::<Option<i64>, _>("value")?.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Per-minute, per-host sums of the monitored flows.
    pub async fn host_minutes(&self, filter: &FlowFilter) -> Result<Vec<HostMinute>, StoreError> {
        let mut args = Vec::new();
        let wh = filter.where_clause(&mut args);
        let sql = format!(
            "SELECT CAST((window_start / 60) * 60 AS BIGINT) AS minute, hostname, CAST(COUNT(*) AS BIGINT) AS flows, \
             CAST(SUM(segments_sent) AS BIGINT) AS segments_sent, CAST(SUM(retransmissions) AS BIGINT) AS retransmissions, \
             CAST(SUM(timeouts) AS BIGINT) AS timeouts, CAST(SUM(rtt_mean * rtt_count) AS DOUBLE PRECISION) AS rtt_sum, \
             CAST(SUM(rtt_count) AS BIGINT) AS rtt_count FROM flows WHERE {wh} \
             GROUP BY (window_start / 60) * 60, hostname ORDER BY minute, hostname"
        );
        let sql = self.sql(&sql);
        let rows = bind_all(sqlx::query(&sql), &args).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(HostMinute {
                    minute: r.try_get("minute")?,
                    hostname: r.try_get("hostname")?,
                    flows: r.try_get("flows")?,
                    segments_sent: r.try_get::<Option<i64>, _>("segments_sent")?.unwrap_or(0),
                    retransmissions: r.try_get::<Option<i64>, _>("retransmissions")?.unwrap_or(0),
                    timeouts: r.try_get::<Option<i64>, _>("timeouts")?.unwrap_or(0),
                    rtt_sum_us: r.try_get::<Option<f64>, _>("rtt_sum")?.unwrap_or(0.0),
                    rtt_count: r.try_get::<Option<i64>, _>("rtt_count")?.unwrap_or(0),
                })
            })
            .collect()
    }
}
