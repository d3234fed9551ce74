//! `GET /monitors/{monitorName}/networkHealth?startTime=&endTime=`: GetMonitor's companion, the
//! network health indicator per minute (see `crate::health` for the definition).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{ApiPath, QueryParams};
use crate::errors::{ApiError, ApiResult};
use crate::health::{self, BASELINE_MINUTES};
use crate::server::SharedState;
use crate::store::flows::FlowFilter;
use crate::validate;

/// Longest range one request may cover.
pub const MAX_RANGE_S: i64 = 24 * 3600;

pub async fn get(
    State(st): State<SharedState>,
    ApiPath(name): ApiPath<String>,
    q: QueryParams,
) -> ApiResult<Json<Value>> {
    let m = super::monitors::find(&st, &name).await?;
    let now = chrono::Utc::now();
    let end = match q.get("endTime") {
        Some(v) => validate::timestamp("endTime", &json_value(v))?,
        // The last complete minutes by default.
        None => chrono::DateTime::from_timestamp(now.timestamp().div_euclid(60) * 60, 0).unwrap_or(now),
    };
    let start = match q.get("startTime") {
        Some(v) => validate::timestamp("startTime", &json_value(v))?,
        None => end - chrono::Duration::hours(1),
    };
    validate::time_range(start, end)?;
    let (start_s, end_s) = (start.timestamp(), end.timestamp());
    if end_s - start_s > MAX_RANGE_S {
        return Err(ApiError::validation(format!(
            "the range from startTime to endTime must be at most {MAX_RANGE_S} seconds, got {}",
            end_s - start_s
        )));
    }
    let filter = FlowFilter {
        start_s: start_s.div_euclid(60) * 60 - BASELINE_MINUTES * 60,
        end_s,
        destination_category: None,
        local: m.local_resources.clone(),
        remote: m.remote_resources.clone(),
        local_regions: None,
    };
    let rows = st.store.host_minutes(&filter).await?;
    let minutes = health::evaluate(&rows, start_s, end_s);
    let overall = if minutes.iter().any(|x| x.status == "DEGRADED") {
        "DEGRADED"
    } else if minutes.iter().any(|x| x.status == "HEALTHY") {
        "HEALTHY"
    } else if minutes.iter().any(|x| x.status == "LEARNING") {
        "LEARNING"
    } else {
        "NO_DATA"
    };
    Ok(Json(json!({
        "monitorName": m.monitor_name,
        "monitorArn": m.monitor_arn,
        "startTime": start.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "endTime": end.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "networkHealthIndicator": overall,
        "minutes": minutes,
    })))
}

/// Query-string timestamps: ISO 8601, or epoch seconds.
fn json_value(v: &str) -> Value {
    match v.parse::<f64>() {
        Ok(n) => json!(n),
        Err(_) => Value::String(v.to_string()),
    }
}
