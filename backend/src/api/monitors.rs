//! CreateMonitor, GetMonitor, ListMonitors, UpdateMonitor, DeleteMonitor.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, QueryParams, decode_token, encode_token, epoch_seconds, now_ms, request_hash};
use crate::errors::{ApiError, ApiResult};
use crate::model::{Monitor, Resource, Tags};
use crate::server::SharedState;
use crate::store::StoreError;
use crate::validate;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMonitorInput {
    monitor_name: Option<String>,
    local_resources: Option<Vec<Resource>>,
    remote_resources: Option<Vec<Resource>>,
    scope_arn: Option<String>,
    client_token: Option<String>,
    tags: Option<Tags>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateMonitorInput {
    local_resources_to_add: Option<Vec<Resource>>,
    local_resources_to_remove: Option<Vec<Resource>>,
    remote_resources_to_add: Option<Vec<Resource>>,
    remote_resources_to_remove: Option<Vec<Resource>>,
    client_token: Option<String>,
}

pub fn describe(m: &Monitor) -> Value {
    json!({
        "monitorArn": m.monitor_arn,
        "monitorName": m.monitor_name,
        "monitorStatus": m.status,
        "localResources": m.local_resources,
        "remoteResources": m.remote_resources,
        "createdAt": epoch_seconds(m.created_at_ms),
        "modifiedAt": epoch_seconds(m.modified_at_ms),
        "tags": m.tags,
    })
}

fn dedup(mut v: Vec<Resource>) -> Vec<Resource> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|r| seen.insert(r.clone()));
    v
}

pub async fn create(
    State(st): State<SharedState>,
    ApiJson(input): ApiJson<CreateMonitorInput>,
) -> ApiResult<Json<Value>> {
    let name = validate::required("monitorName", input.monitor_name)?;
    validate::resource_name("monitorName", &name)?;
    let local = validate::required("localResources", input.local_resources)?;
    if local.is_empty() {
        return Err(ApiError::validation("localResources must hold at least 1 item"));
    }
    validate::local_resources("localResources", &local)?;
    let remote = input.remote_resources.unwrap_or_default();
    validate::remote_resources("remoteResources", &remote)?;
    let scope_arn = validate::required("scopeArn", input.scope_arn)?;
    validate::arn("scopeArn", &scope_arn, 2048)?;
    if let Some(t) = &input.client_token {
        validate::client_token(t)?;
    }
    let tags = input.tags.unwrap_or_default();
    validate::tags("tags", &tags)?;
    validate::resource_regions(&local, &remote, &st.config.region)?;
    let (local, remote) = (dedup(local), dedup(remote));
    let hash = request_hash(&json!({
        "monitorName": name, "localResources": local, "remoteResources": remote, "scopeArn": scope_arn, "tags": tags,
    }));
    st.advance_lifecycle().await?;
    if let Some(t) = &input.client_token
        && let Some(existing) = st.store.get_monitor_by_token(t).await?
    {
        if existing.request_hash == hash {
            return Ok(Json(describe(&existing)));
        }
        return Err(ApiError::Conflict(format!(
            "clientToken {t} was already used for a different CreateMonitor request (monitor {})",
            existing.monitor_name
        )));
    }
    match st.store.get_scope_by_arn(&scope_arn).await? {
        Some(s) if s.status != "DEACTIVATING" => {}
        Some(_) => {
            return Err(ApiError::validation(format!("scope {scope_arn} is being deleted")));
        }
        None => {
            return Err(ApiError::validation(format!("scopeArn {scope_arn} does not name an existing scope")));
        }
    }
    if let Some(existing) = st.store.get_monitor(&name).await? {
        return Err(ApiError::Conflict(format!("a monitor named {name} already exists (status {})", existing.status)));
    }
    let n = st.store.count_monitors().await?;
    if n >= st.config.max_monitors {
        return Err(ApiError::QuotaExceeded(format!(
            "this account already has {n} monitors, the most allowed ({})",
            st.config.max_monitors
        )));
    }
    let now = now_ms();
    let m = Monitor {
        monitor_arn: st.monitor_arn(&name),
        monitor_name: name.clone(),
        status: if st.config.lifecycle_delay_ms > 0 { "PENDING".into() } else { "ACTIVE".into() },
        scope_arn,
        local_resources: local,
        remote_resources: remote,
        tags,
        client_token: input.client_token,
        request_hash: hash,
        created_at_ms: now,
        modified_at_ms: now,
    };
    match st.store.insert_monitor(&m).await {
        Ok(()) => Ok(Json(describe(&m))),
        Err(StoreError::Duplicate) => Err(ApiError::Conflict(format!("a monitor named {name} already exists"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn find(st: &SharedState, name: &str) -> ApiResult<Monitor> {
    validate::resource_name("monitorName", name)?;
    st.advance_lifecycle().await?;
    st.store.get_monitor(name).await?.ok_or_else(|| ApiError::NotFound(format!("monitor {name} does not exist")))
}

pub async fn get(State(st): State<SharedState>, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Value>> {
    Ok(Json(describe(&find(&st, &name).await?)))
}

pub async fn list(State(st): State<SharedState>, q: QueryParams) -> ApiResult<Json<Value>> {
    let max = q.int("maxResults")?.map(validate::list_max_results).transpose()?.unwrap_or(25);
    let status = q.get("monitorStatus");
    if let Some(s) = status {
        validate::monitor_status(s)?;
    }
    let after = decode_token(q.get("nextToken"))?;
    st.advance_lifecycle().await?;
    let mut ms = st.store.list_monitors(status, after.as_deref(), max + 1).await?;
    let next = if ms.len() > max as usize {
        ms.truncate(max as usize);
        ms.last().map(|m| encode_token(&m.monitor_name))
    } else {
        None
    };
    let items: Vec<Value> = ms
        .iter()
        .map(|m| json!({"monitorArn": m.monitor_arn, "monitorName": m.monitor_name, "monitorStatus": m.status}))
        .collect();
    let mut out = json!({ "monitors": items });
    if let Some(n) = next {
        out["nextToken"] = n.into();
    }
    Ok(Json(out))
}

pub async fn update(
    State(st): State<SharedState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(input): ApiJson<UpdateMonitorInput>,
) -> ApiResult<Json<Value>> {
    if let Some(t) = &input.client_token {
        validate::client_token(t)?;
    }
    for (field, rs) in [
        ("localResourcesToAdd", &input.local_resources_to_add),
        ("localResourcesToRemove", &input.local_resources_to_remove),
    ] {
        validate::local_resources(field, rs.as_deref().unwrap_or_default())?;
    }
    for (field, rs) in [
        ("remoteResourcesToAdd", &input.remote_resources_to_add),
        ("remoteResourcesToRemove", &input.remote_resources_to_remove),
    ] {
        validate::remote_resources(field, rs.as_deref().unwrap_or_default())?;
    }
    let mut m = find(&st, &name).await?;
    if m.status == "DELETING" {
        return Err(ApiError::validation(format!("monitor {name} is being deleted")));
    }
    let remove = |list: &mut Vec<Resource>, rm: &Option<Vec<Resource>>| {
        if let Some(rm) = rm {
            list.retain(|r| !rm.contains(r));
        }
    };
    remove(&mut m.local_resources, &input.local_resources_to_remove);
    remove(&mut m.remote_resources, &input.remote_resources_to_remove);
    m.local_resources.extend(input.local_resources_to_add.unwrap_or_default());
    m.remote_resources.extend(input.remote_resources_to_add.unwrap_or_default());
    m.local_resources = dedup(std::mem::take(&mut m.local_resources));
    m.remote_resources = dedup(std::mem::take(&mut m.remote_resources));
    if m.local_resources.is_empty() {
        return Err(ApiError::validation("a monitor must keep at least one local resource"));
    }
    validate::resource_regions(&m.local_resources, &m.remote_resources, &st.config.region)?;
    m.modified_at_ms = now_ms();
    st.store.update_monitor_resources(&m).await?;
    Ok(Json(describe(&m)))
}

pub async fn delete(State(st): State<SharedState>, ApiPath(name): ApiPath<String>) -> ApiResult<Json<Value>> {
    find(&st, &name).await?;
    st.store.mark_monitor_deleting(&name, now_ms()).await?;
    Ok(Json(json!({})))
}
