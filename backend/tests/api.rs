//! The HTTP surface on a real listening server (SQLite file and PostgreSQL): error shapes,
//! ingest outcomes, quotas, throttling.

mod common;

use std::io::Write;

use common::{all_dbs, flow, report, sqlite_db};
use flow_backend::server::{self, AppState, Config};
use flow_backend::store::Store;
use serde_json::{Value, json};

async fn serve(db: &str, config: Config) -> String {
    let store = Store::open(db).await.expect("open store");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(listener, AppState::new(store, config)));
    format!("http://{addr}")
}

async fn call(c: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, String, Value) {
    let mut rb = c.request(method, url);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let ty = r.headers().get("x-amzn-errortype").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, ty, body)
}

fn targets() -> Value {
    json!([{"region": "us-east-1", "targetIdentifier": {"targetId": {"accountId": "123456789012"}, "targetType": "ACCOUNT"}}])
}

#[tokio::test]
async fn errors_ingest_and_quotas() {
    use reqwest::Method;
    for db in all_dbs().await {
        let label = db.label;
        let config = Config { max_scopes: 1, max_monitors: 1, lifecycle_delay_ms: 0, ..Config::default() };
        let base = serve(&db.url, config).await;
        let c = reqwest::Client::new();

        // Ingest: stored once, duplicates acknowledged, malformed refused with a reason.
        let r = report(
            "api-r1",
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:01:00Z",
            "h",
            vec![flow("10.0.0.1", "10.0.0.2", 80, json!({}))],
        );
        let (s, _, b) = call(&c, Method::POST, format!("{base}/publish"), Some(r.clone())).await;
        assert_eq!((s, &b["stored"], &b["flows"]), (200, &json!(true), &json!(1)), "[{label}] {b}");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(serde_json::to_string(&r).unwrap().as_bytes()).unwrap();
        let resp = c
            .post(format!("{base}/publish"))
            .header("content-encoding", "gzip")
            .body(gz.finish().unwrap())
            .send()
            .await
            .unwrap();
        let b: Value = resp.json().await.unwrap();
        assert_eq!((&b["stored"], &b["duplicate"]), (&json!(false), &json!(true)), "[{label}] {b}");
        let mut bad = r.clone();
        bad["report_id"] = "api-r2".into();
        bad["window"]["end"] = "2026-11-22T09:00:00Z".into();
        let (s, ty, b) = call(&c, Method::POST, format!("{base}/publish"), Some(bad)).await;
        assert_eq!((s, ty.as_str()), (400, "ValidationException"), "[{label}]");
        assert!(b["message"].as_str().unwrap().contains("window.end"), "{b}");
        let mut bad = r.clone();
        bad["report_id"] = "api-r3".into();
        bad["flows"][0]["target_port"] = 70000.into();
        let (s, _, b) = call(&c, Method::POST, format!("{base}/publish"), Some(bad)).await;
        assert_eq!(s, 400, "[{label}] out-of-range port accepted: {b}");
        let store = Store::open(&db.url).await.unwrap();
        assert_eq!(store.report_count().await.unwrap(), (1, 1), "[{label}] malformed reports stored nothing");

        // Required members and their messages.
        let (s, ty, b) = call(&c, Method::POST, format!("{base}/monitors"), Some(json!({}))).await;
        assert_eq!((s, ty.as_str()), (400, "ValidationException"));
        assert_eq!(b["message"], "monitorName is required");
        let (s, ty, b) = call(&c, Method::POST, format!("{base}/scopes"), Some(json!({"targets": "x"}))).await;
        assert_eq!((s, ty.as_str()), (400, "ValidationException"), "{b}");
        // Quotas.
        let (s, _, scope) = call(&c, Method::POST, format!("{base}/scopes"), Some(json!({"targets": targets()}))).await;
        assert_eq!(s, 200, "{scope}");
        let (s, ty, _) = call(&c, Method::POST, format!("{base}/scopes"), Some(json!({"targets": targets()}))).await;
        assert_eq!((s, ty.as_str()), (402, "ServiceQuotaExceededException"), "[{label}]");
        let m = |name: &str| json!({"monitorName": name, "scopeArn": scope["scopeArn"], "localResources": [{"type": "AWS::Region", "identifier": "us-east-1"}]});
        let (s, _, b) = call(&c, Method::POST, format!("{base}/monitors"), Some(m("one"))).await;
        assert_eq!((s, &b["monitorStatus"]), (200, &json!("ACTIVE")), "{b}");
        let (s, ty, _) = call(&c, Method::POST, format!("{base}/monitors"), Some(m("two"))).await;
        assert_eq!((s, ty.as_str()), (402, "ServiceQuotaExceededException"));
        // Scope in use.
        let sid = scope["scopeId"].as_str().unwrap();
        let (s, ty, _) = call(&c, Method::DELETE, format!("{base}/scopes/{sid}"), None).await;
        assert_eq!((s, ty.as_str()), (409, "ConflictException"));
        // Unknown operation; results of a query that does not exist.
        let (s, ty, _) = call(&c, Method::GET, format!("{base}/nothing/here"), None).await;
        assert_eq!((s, ty.as_str()), (404, "UnknownOperationException"));
        let (s, ty, _) =
            call(&c, Method::GET, format!("{base}/monitors/one/topContributorsQueries/nope/results"), None).await;
        assert_eq!((s, ty.as_str()), (404, "ResourceNotFoundException"));
        // A query left RUNNING by a server that went away is reported FAILED.
        let params = flow_backend::model::QueryParams {
            kind: flow_backend::model::QueryKind::MonitorTopContributors,
            owner: "one".into(),
            start_s: 0,
            end_s: 60,
            metric: flow_backend::model::Metric::Timeouts,
            destination_category: "INTRA_AZ".into(),
            limit: 5,
        };
        store.insert_query("stale", &params, 1).await.unwrap();
        store.transition_query("stale", &["QUEUED"], "RUNNING", None, None, None, 2).await.unwrap();
        let (s, _, b) =
            call(&c, Method::GET, format!("{base}/monitors/one/topContributorsQueries/stale/status"), None).await;
        assert_eq!((s, &b["status"]), (200, &json!("FAILED")), "[{label}] {b}");
        let (s, ty, b) =
            call(&c, Method::GET, format!("{base}/monitors/one/topContributorsQueries/stale/results"), None).await;
        assert_eq!((s, ty.as_str()), (400, "ValidationException"));
        assert!(b["message"].as_str().unwrap().contains("abandoned"), "{b}");
        // Health endpoint validates its range.
        let (s, ty, _) = call(
            &c,
            Method::GET,
            format!("{base}/monitors/one/networkHealth?startTime=2026-11-20T00:00:00Z&endTime=2026-11-22T00:00:00Z"),
            None,
        )
        .await;
        assert_eq!((s, ty.as_str()), (400, "ValidationException"));
        let (s, _, b) = call(&c, Method::GET, format!("{base}/monitors/one/networkHealth"), None).await;
        assert_eq!((s, b["minutes"].as_array().map(Vec::len)), (200, Some(60)), "{b}");
    }
}

#[tokio::test]
async fn throttles_past_the_rate_limit() {
    let db = sqlite_db();
    let base = serve(&db.url, Config { rate_limit: 2.0, ..Config::default() }).await;
    let c = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (s, ty, _) = call(&c, reqwest::Method::GET, format!("{base}/monitors"), None).await;
        statuses.push((s, ty));
    }
    assert_eq!(statuses[0].0, 200);
    assert!(statuses.iter().any(|(s, ty)| *s == 429 && ty == "ThrottlingException"), "{statuses:?}");
    // Ingest is not throttled.
    let r = report("thr", "2026-11-22T10:00:00Z", "2026-11-22T10:01:00Z", "h", vec![]);
    let (s, _, _) = call(&c, reqwest::Method::POST, format!("{base}/publish"), Some(r)).await;
    assert_eq!(s, 200);
}
