//! Computes query results from stored flows: top contributors of a monitor, workload insights
//! of a scope and their time series. Results are ranked highest first.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use crate::model::{Monitor, QueryKind, QueryParams, Scope};
use crate::store::flows::{FlowFilter, WorkloadGroup};
use crate::store::{Store, StoreError};

/// How many series a WorkloadInsightsTopContributorsData query returns (the action takes no
/// `limit`).
pub const DATA_SERIES: usize = 10;
/// At most this many points per series; buckets widen (in whole minutes) to stay under it.
pub const MAX_POINTS: i64 = 360;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0} no longer exists")]
    Gone(String),
}

/// The account a flow's local side belongs to: from its subnet, VPC or instance ARN, else the
/// service's own account.
pub fn account_of(g: &WorkloadGroup, default_account: &str) -> String {
    for arn in [&g.local_subnet_arn, &g.local_vpc_arn, &g.local_instance_arn].into_iter().flatten() {
        if let Some(acct) = arn.split(':').nth(4).filter(|a| a.len() == 12) {
            return acct.to_string();
        }
    }
    default_account.to_string()
}

/// A workload-insights row's local side, for series labels.
fn local_label(g: &WorkloadGroup) -> String {
    g.local_subnet_id
        .clone()
        .or_else(|| g.local_vpc_id.clone())
        .or_else(|| g.local_az.clone())
        .or_else(|| g.local_region.clone())
        .unwrap_or_else(|| "unknown".into())
}

fn in_scope(scope: &Scope, default_account: &str, groups: Vec<WorkloadGroup>) -> Vec<(String, WorkloadGroup)> {
    let targets: HashSet<(String, String)> =
        scope.targets.iter().map(|t| (t.target_identifier.target_id.account_id.clone(), t.region.clone())).collect();
    groups
        .into_iter()
        .filter_map(|g| {
            let acct = account_of(&g, default_account);
            let region = g.local_region.clone().unwrap_or_default();
            targets.contains(&(acct.clone(), region)).then_some((acct, g))
        })
        .collect()
}

fn scope_filter(scope: &Scope, p: &QueryParams) -> FlowFilter {
    let mut regions: Vec<String> = scope.targets.iter().map(|t| t.region.clone()).collect();
    regions.sort();
    regions.dedup();
    FlowFilter {
        start_s: p.start_s,
        end_s: p.end_s,
        destination_category: Some(p.destination_category.clone()),
        local_regions: Some(regions),
        ..Default::default()
    }
}

/// Bucket width for a time series over `[start, end)`: whole minutes, at most MAX_POINTS.
pub fn bucket_seconds(start_s: i64, end_s: i64) -> i64 {
    let span = (end_s - start_s).max(1);
    let per_point = (span + MAX_POINTS - 1) / MAX_POINTS;
    ((per_point + 59) / 60).max(1) * 60
}

/// Runs a query; returns the unit and the result rows (JSON, as the API returns them).
pub async fn run(store: &Store, p: &QueryParams, default_account: &str) -> Result<(String, Vec<Value>), QueryError> {
    match p.kind {
        QueryKind::MonitorTopContributors => {
            let m: Monitor =
                store.get_monitor(&p.owner).await?.ok_or_else(|| QueryError::Gone(format!("monitor {}", p.owner)))?;
            let filter = FlowFilter {
                start_s: p.start_s,
                end_s: p.end_s,
                destination_category: Some(p.destination_category.clone()),
                local: m.local_resources.clone(),
                remote: m.remote_resources.clone(),
                local_regions: None,
            };
            let rows = store.monitor_top_contributors(&filter, p.metric, p.limit).await?;
            let rows = rows.into_iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).collect();
            Ok((p.metric.unit().to_string(), rows))
        }
        QueryKind::WorkloadInsightsTopContributors => {
            let scope =
                store.get_scope(&p.owner).await?.ok_or_else(|| QueryError::Gone(format!("scope {}", p.owner)))?;
            let groups = store.workload_groups(&scope_filter(&scope, p), p.metric, None).await?;
            let mut rows = in_scope(&scope, default_account, groups);
            rows.sort_by(|(_, a), (_, b)| {
                b.value
                    .cmp(&a.value)
                    .then_with(|| local_label(a).cmp(&local_label(b)))
                    .then_with(|| a.remote_identifier.cmp(&b.remote_identifier))
            });
            rows.truncate(p.limit as usize);
            let rows = rows
                .into_iter()
                .map(|(acct, g)| {
                    let mut v = json!({ "accountId": acct, "remoteIdentifier": g.remote_identifier, "value": g.value });
                    for (k, val) in [
                        ("localSubnetId", g.local_subnet_id),
                        ("localAz", g.local_az),
                        ("localVpcId", g.local_vpc_id),
                        ("localRegion", g.local_region),
                        ("localSubnetArn", g.local_subnet_arn),
                        ("localVpcArn", g.local_vpc_arn),
                    ] {
                        if let Some(val) = val {
                            v[k] = val.into();
                        }
                    }
                    v
                })
                .collect();
            Ok((p.metric.unit().to_string(), rows))
        }
        QueryKind::WorkloadInsightsTopContributorsData => {
            let scope =
                store.get_scope(&p.owner).await?.ok_or_else(|| QueryError::Gone(format!("scope {}", p.owner)))?;
            let b = bucket_seconds(p.start_s, p.end_s);
            let groups = store.workload_groups(&scope_filter(&scope, p), p.metric, Some(b)).await?;
            // label -> bucket -> value
            let mut series: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
            for (_, g) in in_scope(&scope, default_account, groups) {
                let label = format!("{} -> {}", local_label(&g), g.remote_identifier);
                *series.entry(label).or_default().entry(g.bucket.unwrap_or(0)).or_default() += g.value;
            }
            let mut ranked: Vec<(String, i64)> = series.iter().map(|(l, s)| (l.clone(), s.values().sum())).collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            ranked.truncate(DATA_SERIES);
            let first = p.start_s.div_euclid(b) * b;
            let buckets: Vec<i64> = (0..).map(|i| first + i * b).take_while(|t| *t < p.end_s).collect();
            let stamps: Vec<String> = buckets
                .iter()
                .map(|t| {
                    chrono::DateTime::from_timestamp(*t, 0)
                        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_default()
                })
                .collect();
            let rows = ranked
                .into_iter()
                .map(|(label, _)| {
                    let s = &series[&label];
                    let values: Vec<f64> = buckets.iter().map(|t| s.get(t).copied().unwrap_or(0) as f64).collect();
                    json!({ "label": label, "timestamps": stamps, "values": values })
                })
                .collect();
            Ok((p.metric.unit().to_string(), rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_minutes_and_bounded() {
        assert_eq!(bucket_seconds(0, 3600), 60);
        assert_eq!(bucket_seconds(0, 6 * 3600), 60);
        assert_eq!(bucket_seconds(0, 24 * 3600), 240);
        assert!((24 * 3600) / bucket_seconds(0, 24 * 3600) <= MAX_POINTS);
    }

    #[test]
    fn accounts_come_from_arns() {
        let g = WorkloadGroup {
            local_subnet_id: None,
            local_subnet_arn: Some("arn:aws:ec2:us-east-1:111122223333:subnet/subnet-1".into()),
            local_vpc_id: None,
            local_vpc_arn: None,
            local_instance_arn: None,
            local_az: None,
            local_region: Some("us-east-1".into()),
            remote_identifier: "x".into(),
            bucket: None,
            value: 1,
        };
        assert_eq!(account_of(&g, "123456789012"), "111122223333");
        let g2 = WorkloadGroup { local_subnet_arn: None, ..g };
        assert_eq!(account_of(&g2, "123456789012"), "123456789012");
    }
}
