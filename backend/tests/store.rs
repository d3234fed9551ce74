//! Storage and query ranking against a real SQLite file and a real PostgreSQL server.

mod common;

use common::{all_dbs, flow, parse, report, rtt};
use flow_backend::model::{
    Metric, Monitor, QueryKind, QueryParams, Resource, Scope, TargetId, TargetIdentifier, TargetResource,
};
use flow_backend::query_engine;
use flow_backend::store::flows::FlowFilter;
use flow_backend::store::{Store, StoreError};
use serde_json::json;

const T0: &str = "2026-11-22T10:00:00Z";
const T1: &str = "2026-11-22T10:01:00Z";
const T2: &str = "2026-11-22T10:02:00Z";
const S0: i64 = 1795341600; // T0

fn res(kind: &str, id: &str) -> Resource {
    Resource { kind: kind.into(), identifier: id.into() }
}

fn scope(id: &str, targets: &[(&str, &str)]) -> Scope {
    Scope {
        scope_id: id.into(),
        scope_arn: format!("arn:aws:networkflowmonitor:us-east-1:123456789012:scope/{id}"),
        status: "IN_PROGRESS".into(),
        targets: targets
            .iter()
            .map(|(acct, region)| TargetResource {
                target_identifier: TargetIdentifier {
                    target_id: TargetId { account_id: acct.to_string() },
                    target_type: "ACCOUNT".into(),
                },
                region: region.to_string(),
            })
            .collect(),
        tags: Default::default(),
        client_token: None,
        request_hash: "h".into(),
        created_at_ms: 1000,
    }
}

fn monitor(name: &str, scope_arn: &str, local: Vec<Resource>, remote: Vec<Resource>) -> Monitor {
    Monitor {
        monitor_name: name.into(),
        monitor_arn: format!("arn:aws:networkflowmonitor:us-east-1:123456789012:monitor/{name}"),
        status: "PENDING".into(),
        scope_arn: scope_arn.into(),
        local_resources: local,
        remote_resources: remote,
        tags: Default::default(),
        client_token: Some("0f8fad5b-d9cb-469f-a165-70867728950e".into()),
        request_hash: "h".into(),
        created_at_ms: 1000,
        modified_at_ms: 1000,
    }
}

/// Three flows over two windows and a fourth in another VPC:
/// - 10.0.0.1 -> 10.1.0.1:443  bytes 100+100 and 300+0, retx 5 and 5, rtt (10 x 1000) and (30 x 3000)
/// - 10.0.0.2 -> 10.1.0.2:443  bytes 1000,              retx 1,        rtt (10 x 9000)
/// - 10.0.0.3 -> 10.1.0.3:5432 bytes 50, INTRA_AZ,      retx 50
/// - 10.9.0.1 (vpc-0f0f0f0f) -> 10.1.0.9:443 bytes 99999 (excluded by the monitor's VPC)
async fn load(store: &Store) {
    let r1 = report(
        "r1",
        T0,
        T1,
        "h1",
        vec![
            flow(
                "10.0.0.1",
                "10.1.0.1",
                443,
                json!({"bytes_sent": 100, "bytes_received": 100, "retransmissions": 5, "rtt_us": rtt(10, 1000.0)}),
            ),
            flow(
                "10.0.0.2",
                "10.1.0.2",
                443,
                json!({"bytes_sent": 1000, "retransmissions": 1, "rtt_us": rtt(10, 9000.0)}),
            ),
            flow(
                "10.0.0.3",
                "10.1.0.3",
                5432,
                json!({"bytes_sent": 50, "retransmissions": 50, "destination_category": "INTRA_AZ"}),
            ),
        ],
    );
    let r2 = report(
        "r2",
        T1,
        T2,
        "h2",
        vec![
            flow(
                "10.0.0.1",
                "10.1.0.1",
                443,
                json!({"bytes_sent": 300, "retransmissions": 5, "rtt_us": rtt(30, 3000.0)}),
            ),
            flow(
                "10.9.0.1",
                "10.1.0.9",
                443,
                json!({"bytes_sent": 99999, "local_vpc_id": "vpc-0f0f0f0f", "local_vpc_arn": "arn:aws:ec2:us-east-1:999988887777:vpc/vpc-0f0f0f0f",
                       "local_subnet_arn": "arn:aws:ec2:us-east-1:999988887777:subnet/subnet-0f0f0f01", "local_subnet_id": "subnet-0f0f0f01"}),
            ),
        ],
    );
    for r in [&r1, &r2] {
        let o = store.insert_report(&parse(r), 1).await.unwrap();
        assert!(o.stored);
    }
}

#[tokio::test]
async fn migrations_ingest_dedup_and_ranking() {
    for db in all_dbs().await {
        let label = db.label;
        let store = Store::open(&db.url).await.unwrap_or_else(|e| panic!("[{label}] open: {e}"));
        assert_eq!(store.schema_version().await.unwrap(), 1, "[{label}]");
        // Opening again (a restart, or a second replica) migrates nothing and keeps data.
        let again = Store::open(&db.url).await.unwrap();
        assert_eq!(again.schema_version().await.unwrap(), 1);

        load(&store).await;
        assert_eq!(store.report_count().await.unwrap(), (2, 5), "[{label}]");
        // The same report again stores nothing.
        let dup = report("r1", T0, T1, "h1", vec![flow("10.0.0.7", "10.1.0.7", 1, json!({}))]);
        let o = store.insert_report(&parse(&dup), 2).await.unwrap();
        assert!(!o.stored, "[{label}] duplicate stored");
        assert_eq!(store.report_count().await.unwrap(), (2, 5), "[{label}]");

        let vpc = res("AWS::EC2::VPC", "arn:aws:ec2:us-east-1:123456789012:vpc/vpc-0a0a0a0a");
        let filter = |cat: &str| FlowFilter {
            start_s: S0,
            end_s: S0 + 120,
            destination_category: Some(cat.into()),
            local: vec![vpc.clone()],
            remote: vec![],
            local_regions: None,
        };
        // DATA_TRANSFERRED sums both windows of a flow; the other VPC's flow is excluded.
        let rows = store.monitor_top_contributors(&filter("INTER_AZ"), Metric::DataTransferred, 10).await.unwrap();
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.local_ip.clone().unwrap(), r.value)).collect();
        assert_eq!(got, vec![("10.0.0.2".into(), 1000), ("10.0.0.1".into(), 500)], "[{label}]");
        assert_eq!(rows[0].target_port, Some(443));
        assert_eq!(rows[0].local_vpc_id.as_deref(), Some("vpc-0a0a0a0a"));
        assert_eq!(rows[0].remote_subnet_id.as_deref(), Some("subnet-0b0b0b01"));
        assert_eq!(rows[0].destination_category.as_deref(), Some("INTER_AZ"));
        // RTT: sample-weighted mean, (10*1000 + 30*3000) / 40 = 2500.
        let rows = store.monitor_top_contributors(&filter("INTER_AZ"), Metric::RoundTripTime, 10).await.unwrap();
        let got: Vec<i64> = rows.iter().map(|r| r.value).collect();
        assert_eq!(got, vec![9000, 2500], "[{label}]");
        // Limit and category.
        let rows = store.monitor_top_contributors(&filter("INTER_AZ"), Metric::Retransmissions, 1).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].local_ip.as_deref(), rows[0].value), (Some("10.0.0.1"), 10), "[{label}]");
        let rows = store.monitor_top_contributors(&filter("INTRA_AZ"), Metric::Retransmissions, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.value).collect::<Vec<_>>(), vec![50], "[{label}]");
        // Time range: only the first window.
        let mut f = filter("INTER_AZ");
        f.end_s = S0 + 60;
        let rows = store.monitor_top_contributors(&f, Metric::DataTransferred, 10).await.unwrap();
        let got: Vec<(String, i64)> = rows.iter().map(|r| (r.local_ip.clone().unwrap(), r.value)).collect();
        assert_eq!(got, vec![("10.0.0.2".into(), 1000), ("10.0.0.1".into(), 200)], "[{label}]");
        // Remote resource filter (subnet by id) and a VPC given by id rather than ARN.
        let f = FlowFilter {
            local: vec![res("AWS::EC2::VPC", "vpc-0a0a0a0a")],
            remote: vec![res("AWS::EC2::Subnet", "subnet-0b0b0b01")],
            ..filter("INTER_AZ")
        };
        assert_eq!(store.monitor_top_contributors(&f, Metric::DataTransferred, 10).await.unwrap().len(), 2);
        let f = FlowFilter { remote: vec![res("AWS::AvailabilityZone", "us-east-1c")], ..filter("INTER_AZ") };
        assert!(store.monitor_top_contributors(&f, Metric::DataTransferred, 10).await.unwrap().is_empty());

        // Workload insights: scope of account 123456789012 in us-east-1 excludes the other
        // account's VPC; rows are ranked and grouped by local subnet and remote identifier.
        let sc = scope("s1", &[("123456789012", "us-east-1")]);
        store.insert_scope(&sc).await.unwrap();
        let p = QueryParams {
            kind: QueryKind::WorkloadInsightsTopContributors,
            owner: "s1".into(),
            start_s: S0,
            end_s: S0 + 120,
            metric: Metric::DataTransferred,
            destination_category: "INTER_AZ".into(),
            limit: 10,
        };
        let (unit, rows) = query_engine::run(&store, &p, "123456789012").await.unwrap();
        assert_eq!(unit, "Bytes");
        assert_eq!(rows.len(), 1, "[{label}] {rows:?}");
        assert_eq!(rows[0]["value"], 1500);
        assert_eq!(rows[0]["accountId"], "123456789012");
        assert_eq!(rows[0]["localSubnetId"], "subnet-0a0a0a01");
        assert_eq!(rows[0]["remoteIdentifier"], "subnet-0b0b0b01");
        // The data variant: one series per label, one point per minute.
        let p = QueryParams { kind: QueryKind::WorkloadInsightsTopContributorsData, ..p };
        let (_, rows) = query_engine::run(&store, &p, "123456789012").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["label"], "subnet-0a0a0a01 -> subnet-0b0b0b01");
        assert_eq!(rows[0]["values"], json!([1200.0, 300.0]), "[{label}]");
        assert_eq!(rows[0]["timestamps"], json!([T0, T1]));
        // A scope over the other account sees only its flow.
        let sc2 = scope("s2", &[("999988887777", "us-east-1")]);
        store.insert_scope(&sc2).await.unwrap();
        let p = QueryParams { kind: QueryKind::WorkloadInsightsTopContributors, owner: "s2".into(), ..p };
        let (_, rows) = query_engine::run(&store, &p, "123456789012").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["value"], 99999, "[{label}]");

        // Health aggregates per minute and host.
        let hm = store
            .host_minutes(&FlowFilter {
                start_s: S0 - 3600,
                end_s: S0 + 120,
                local: vec![vpc.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(hm.len(), 2, "[{label}]");
        assert_eq!((hm[0].minute, hm[0].hostname.as_str(), hm[0].flows, hm[0].retransmissions), (S0, "h1", 3, 56));
        assert_eq!((hm[1].minute, hm[1].rtt_count), (S0 + 60, 30));
    }
}

#[tokio::test]
async fn scopes_monitors_lifecycle_tags_and_queries() {
    for db in all_dbs().await {
        let label = db.label;
        let store = Store::open(&db.url).await.unwrap();
        let sc = scope("sc-1", &[("123456789012", "us-east-1")]);
        store.insert_scope(&sc).await.unwrap();
        assert_eq!(store.get_scope("sc-1").await.unwrap().unwrap(), sc, "[{label}]");
        let m = monitor("m1", &sc.scope_arn, vec![res("AWS::Region", "us-east-1")], vec![]);
        store.insert_monitor(&m).await.unwrap();
        assert!(matches!(store.insert_monitor(&m).await, Err(StoreError::Duplicate)), "[{label}]");
        assert_eq!(
            store.get_monitor_by_token("0f8fad5b-d9cb-469f-a165-70867728950e").await.unwrap().unwrap().monitor_name,
            "m1"
        );
        for n in ["m2", "m3"] {
            let mut m = monitor(n, &sc.scope_arn, vec![res("AWS::Region", "us-east-1")], vec![]);
            m.client_token = None;
            store.insert_monitor(&m).await.unwrap();
        }
        // Lifecycle: PENDING until the delay passes.
        store.advance_lifecycle(1500, 1000).await.unwrap();
        assert_eq!(store.get_monitor("m1").await.unwrap().unwrap().status, "PENDING");
        store.advance_lifecycle(2000, 1000).await.unwrap();
        assert_eq!(store.get_monitor("m1").await.unwrap().unwrap().status, "ACTIVE", "[{label}]");
        assert_eq!(store.get_scope("sc-1").await.unwrap().unwrap().status, "SUCCEEDED");
        // Keyset pagination and the status filter.
        let page1 = store.list_monitors(None, None, 2).await.unwrap();
        assert_eq!(page1.iter().map(|m| m.monitor_name.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
        let page2 = store.list_monitors(None, Some("m2"), 2).await.unwrap();
        assert_eq!(page2.iter().map(|m| m.monitor_name.as_str()).collect::<Vec<_>>(), ["m3"]);
        assert!(store.list_monitors(Some("PENDING"), None, 10).await.unwrap().is_empty());
        assert_eq!(store.count_monitors_in_scope(&sc.scope_arn).await.unwrap(), 3);
        // Tags by ARN, for monitors and scopes.
        let tags: flow_backend::model::Tags = [("team".to_string(), "net".to_string())].into();
        assert!(store.set_tags(&m.monitor_arn, &tags).await.unwrap());
        assert!(store.set_tags(&sc.scope_arn, &tags).await.unwrap());
        assert!(!store.set_tags("arn:aws:networkflowmonitor:us-east-1:1:monitor/none", &tags).await.unwrap());
        assert_eq!(store.get_monitor_by_arn(&m.monitor_arn).await.unwrap().unwrap().tags, tags, "[{label}]");
        assert_eq!(store.get_scope_by_arn(&sc.scope_arn).await.unwrap().unwrap().tags, tags);
        // Delete: DELETING, then gone after the delay.
        assert!(store.mark_monitor_deleting("m1", 5000).await.unwrap());
        assert!(!store.mark_monitor_deleting("m1", 5000).await.unwrap());
        store.advance_lifecycle(5500, 1000).await.unwrap();
        assert_eq!(store.get_monitor("m1").await.unwrap().unwrap().status, "DELETING");
        store.advance_lifecycle(6000, 1000).await.unwrap();
        assert!(store.get_monitor("m1").await.unwrap().is_none(), "[{label}]");
        // Queries move QUEUED -> RUNNING -> SUCCEEDED; a canceled one cannot finish.
        let p = QueryParams {
            kind: QueryKind::MonitorTopContributors,
            owner: "m2".into(),
            start_s: 0,
            end_s: 60,
            metric: Metric::Timeouts,
            destination_category: "INTRA_AZ".into(),
            limit: 5,
        };
        store.insert_query("q1", &p, 1).await.unwrap();
        assert!(store.transition_query("q1", &["QUEUED"], "RUNNING", None, None, None, 2).await.unwrap());
        assert!(
            store
                .transition_query("q1", &["RUNNING"], "SUCCEEDED", Some("Count"), Some("[]".into()), None, 3)
                .await
                .unwrap()
        );
        let q = store.get_query("q1").await.unwrap().unwrap();
        assert_eq!(
            (q.status.as_str(), q.unit.as_deref(), q.params),
            ("SUCCEEDED", Some("Count"), p.clone()),
            "[{label}]"
        );
        store.insert_query("q2", &p, 1).await.unwrap();
        assert!(store.transition_query("q2", &["QUEUED", "RUNNING"], "CANCELED", None, None, None, 2).await.unwrap());
        assert!(!store.transition_query("q2", &["QUEUED"], "RUNNING", None, None, None, 3).await.unwrap());
        assert_eq!(store.expire_queries(10).await.unwrap(), 2);
    }
}
