//! StartQuery / GetQueryStatus / GetQueryResults / StopQuery for MonitorTopContributors,
//! WorkloadInsightsTopContributors and WorkloadInsightsTopContributorsData.
//!
//! A query is stored (so any replica can answer its status and results), then computed by a
//! background task of the replica that started it.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, QueryParams, now_ms};
use crate::errors::{ApiError, ApiResult};
use crate::model::{
    QUERY_CANCELED, QUERY_FAILED, QUERY_QUEUED, QUERY_RUNNING, QUERY_SUCCEEDED, QueryKind, QueryParams as Params,
    QueryRecord,
};
use crate::server::SharedState;
use crate::validate;

/// Rows per GetQueryResults page when `maxResults` is not given.
pub const DEFAULT_PAGE: usize = 100;
/// `limit` when a start request gives none.
pub const DEFAULT_LIMIT: u32 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartQueryInput {
    start_time: Option<Value>,
    end_time: Option<Value>,
    metric_name: Option<String>,
    destination_category: Option<String>,
    limit: Option<i64>,
}

fn owner_word(kind: QueryKind) -> &'static str {
    match kind {
        QueryKind::MonitorTopContributors => "monitor",
        _ => "scope",
    }
}

async fn start(st: SharedState, kind: QueryKind, owner: String, input: StartQueryInput) -> ApiResult<Json<Value>> {
    let start = validate::timestamp("startTime", &validate::required("startTime", input.start_time)?)?;
    let end = validate::timestamp("endTime", &validate::required("endTime", input.end_time)?)?;
    validate::time_range(start, end)?;
    let metric_name = validate::required("metricName", input.metric_name)?;
    let metric = validate::metric(&metric_name, kind != QueryKind::MonitorTopContributors)?;
    let category = validate::required("destinationCategory", input.destination_category)?;
    validate::destination_category(&category)?;
    let limit = match (kind, input.limit) {
        (QueryKind::WorkloadInsightsTopContributorsData, _) => DEFAULT_LIMIT,
        (_, Some(l)) => validate::limit(l)?,
        (_, None) => DEFAULT_LIMIT,
    };
    st.advance_lifecycle().await?;
    match kind {
        QueryKind::MonitorTopContributors => {
            validate::resource_name("monitorName", &owner)?;
            match st.store.get_monitor(&owner).await? {
                Some(m) if m.status == "DELETING" => {
                    return Err(ApiError::validation(format!("monitor {owner} is being deleted")));
                }
                Some(_) => {}
                None => {
                    return Err(ApiError::validation(format!("monitor {owner} does not exist")));
                }
            }
        }
        _ => match st.store.get_scope(&owner).await? {
            Some(s) if s.status == "DEACTIVATING" => {
                return Err(ApiError::validation(format!("scope {owner} is being deleted")));
            }
            Some(_) => {}
            None => {
                return Err(ApiError::validation(format!("scope {owner} does not exist")));
            }
        },
    }
    // Timestamps are kept to the second; reports are windowed in seconds.
    let params = Params {
        kind,
        owner,
        start_s: start.timestamp(),
        end_s: end.timestamp().max(start.timestamp() + 1),
        metric,
        destination_category: category,
        limit,
    };
    let id = uuid::Uuid::new_v4().to_string();
    st.store.insert_query(&id, &params, now_ms()).await?;
    let task_state = st.clone();
    let task_id = id.clone();
    tokio::spawn(async move { execute(task_state, task_id, params).await });
    Ok(Json(json!({ "queryId": id })))
}

async fn execute(st: SharedState, id: String, params: Params) {
    let store = &st.store;
    match store.transition_query(&id, &[QUERY_QUEUED], QUERY_RUNNING, None, None, None, now_ms()).await {
        Ok(true) => {}
        Ok(false) => return, // canceled before it ran
        Err(e) => {
            tracing::error!(query = %id, error = %e, "cannot start query");
            return;
        }
    }
    let outcome = crate::query_engine::run(store, &params, &st.config.account_id).await;
    let r = match outcome {
        Ok((unit, rows)) => {
            let rows = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
            store
                .transition_query(&id, &[QUERY_RUNNING], QUERY_SUCCEEDED, Some(&unit), Some(rows), None, now_ms())
                .await
        }
        Err(e) => {
            tracing::warn!(query = %id, error = %e, "query failed");
            store.transition_query(&id, &[QUERY_RUNNING], QUERY_FAILED, None, None, Some(e.to_string()), now_ms()).await
        }
    };
    if let Err(e) = r {
        tracing::error!(query = %id, error = %e, "cannot record query outcome");
    }
}

/// A query still QUEUED or RUNNING this long after its last change was abandoned (the replica
/// computing it stopped); it is reported FAILED.
pub const ABANDONED_AFTER_MS: i64 = 10 * 60 * 1000;

/// The query with this id, if it was started for this kind and owner.
async fn lookup(st: &SharedState, kind: QueryKind, owner: &str, query_id: &str) -> ApiResult<Option<QueryRecord>> {
    let Some(mut q) = st.store.get_query(query_id).await?.filter(|q| q.params.kind == kind && q.params.owner == owner)
    else {
        return Ok(None);
    };
    let now = now_ms();
    if (q.status == QUERY_QUEUED || q.status == QUERY_RUNNING) && now - q.updated_at_ms > ABANDONED_AFTER_MS {
        let error = "abandoned: the server computing it stopped; start the query again".to_string();
        st.store
            .transition_query(
                query_id,
                &[QUERY_QUEUED, QUERY_RUNNING],
                QUERY_FAILED,
                None,
                None,
                Some(error.clone()),
                now,
            )
            .await?;
        q.status = QUERY_FAILED.into();
        q.error = Some(error);
    }
    Ok(Some(q))
}

fn no_such_query(kind: QueryKind, owner: &str, query_id: &str) -> String {
    format!("no {} query {query_id} exists for {} {owner}", kind.as_str(), owner_word(kind))
}

async fn status(st: SharedState, kind: QueryKind, owner: String, query_id: String) -> ApiResult<Json<Value>> {
    let q = lookup(&st, kind, &owner, &query_id)
        .await?
        .ok_or_else(|| ApiError::validation(no_such_query(kind, &owner, &query_id)))?;
    Ok(Json(json!({ "status": q.status })))
}

async fn stop(st: SharedState, kind: QueryKind, owner: String, query_id: String) -> ApiResult<Json<Value>> {
    lookup(&st, kind, &owner, &query_id)
        .await?
        .ok_or_else(|| ApiError::validation(no_such_query(kind, &owner, &query_id)))?;
    st.store
        .transition_query(&query_id, &[QUERY_QUEUED, QUERY_RUNNING], QUERY_CANCELED, None, None, None, now_ms())
        .await?;
    Ok(Json(json!({})))
}

async fn results(
    st: SharedState,
    kind: QueryKind,
    owner: String,
    query_id: String,
    q: QueryParams,
) -> ApiResult<Json<Value>> {
    let page = match q.int("maxResults")? {
        Some(n) if n < 1 => {
            return Err(ApiError::validation(format!("maxResults must be at least 1, got {n}")));
        }
        Some(n) => n.min(1000) as usize,
        None => DEFAULT_PAGE,
    };
    let offset = match q.get("nextToken") {
        None => 0,
        Some(t) => parse_offset(t, &query_id)?,
    };
    let rec = lookup(&st, kind, &owner, &query_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(no_such_query(kind, &owner, &query_id)))?;
    match rec.status.as_str() {
        QUERY_SUCCEEDED => {}
        QUERY_FAILED => {
            return Err(ApiError::validation(format!("query {query_id} FAILED: {}", rec.error.unwrap_or_default())));
        }
        s => {
            return Err(ApiError::validation(format!(
                "query {query_id} is {s}; results are available once GetQueryStatus reports SUCCEEDED"
            )));
        }
    }
    let rows: Vec<Value> = serde_json::from_str(rec.result_json.as_deref().unwrap_or("[]"))
        .map_err(|e| ApiError::Internal(format!("stored results of query {query_id} are corrupt: {e}")))?;
    let end = (offset + page).min(rows.len());
    let slice = rows.get(offset.min(rows.len())..end).unwrap_or_default().to_vec();
    let key = if kind == QueryKind::WorkloadInsightsTopContributorsData { "datapoints" } else { "topContributors" };
    let mut out = json!({ key: slice });
    if kind != QueryKind::WorkloadInsightsTopContributors {
        out["unit"] = rec.unit.unwrap_or_else(|| rec.params.metric.unit().to_string()).into();
    }
    if end < rows.len() {
        out["nextToken"] = format!("{query_id}:{end}").into();
    }
    Ok(Json(out))
}

fn parse_offset(token: &str, query_id: &str) -> ApiResult<usize> {
    token
        .strip_prefix(query_id)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| ApiError::validation(format!("nextToken '{token}' was not issued for query {query_id}")))
}

// ---- handlers ----

pub async fn start_monitor(
    State(st): State<SharedState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(input): ApiJson<StartQueryInput>,
) -> ApiResult<Json<Value>> {
    start(st, QueryKind::MonitorTopContributors, name, input).await
}

pub async fn start_wi(
    State(st): State<SharedState>,
    ApiPath(scope): ApiPath<String>,
    ApiJson(input): ApiJson<StartQueryInput>,
) -> ApiResult<Json<Value>> {
    start(st, QueryKind::WorkloadInsightsTopContributors, scope, input).await
}

pub async fn start_wid(
    State(st): State<SharedState>,
    ApiPath(scope): ApiPath<String>,
    ApiJson(input): ApiJson<StartQueryInput>,
) -> ApiResult<Json<Value>> {
    start(st, QueryKind::WorkloadInsightsTopContributorsData, scope, input).await
}

pub async fn status_monitor(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    status(st, QueryKind::MonitorTopContributors, o, q).await
}

pub async fn status_wi(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    status(st, QueryKind::WorkloadInsightsTopContributors, o, q).await
}

pub async fn status_wid(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    status(st, QueryKind::WorkloadInsightsTopContributorsData, o, q).await
}

pub async fn stop_monitor(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    stop(st, QueryKind::MonitorTopContributors, o, q).await
}

pub async fn stop_wi(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    stop(st, QueryKind::WorkloadInsightsTopContributors, o, q).await
}

pub async fn stop_wid(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    stop(st, QueryKind::WorkloadInsightsTopContributorsData, o, q).await
}

pub async fn results_monitor(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
    params: QueryParams,
) -> ApiResult<Json<Value>> {
    results(st, QueryKind::MonitorTopContributors, o, q, params).await
}

pub async fn results_wi(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
    params: QueryParams,
) -> ApiResult<Json<Value>> {
    results(st, QueryKind::WorkloadInsightsTopContributors, o, q, params).await
}

pub async fn results_wid(
    State(st): State<SharedState>,
    ApiPath((o, q)): ApiPath<(String, String)>,
    params: QueryParams,
) -> ApiResult<Json<Value>> {
    results(st, QueryKind::WorkloadInsightsTopContributorsData, o, q, params).await
}
