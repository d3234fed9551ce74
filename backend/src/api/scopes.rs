//! CreateScope, GetScope, ListScopes, UpdateScope, DeleteScope.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, QueryParams, decode_token, encode_token, now_ms, request_hash};
use crate::errors::{ApiError, ApiResult};
use crate::model::{Scope, Tags, TargetResource};
use crate::server::SharedState;
use crate::store::StoreError;
use crate::validate;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateScopeInput {
    targets: Option<Vec<TargetResource>>,
    client_token: Option<String>,
    tags: Option<Tags>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateScopeInput {
    resources_to_add: Option<Vec<TargetResource>>,
    resources_to_delete: Option<Vec<TargetResource>>,
}

fn summary(s: &Scope) -> Value {
    json!({ "scopeId": s.scope_id, "status": s.status, "scopeArn": s.scope_arn, "tags": s.tags })
}

pub async fn create(
    State(st): State<SharedState>,
    ApiJson(input): ApiJson<CreateScopeInput>,
) -> ApiResult<Json<Value>> {
    let targets = validate::required("targets", input.targets)?;
    validate::target_resources("targets", &targets, 1, 100)?;
    let tags = input.tags.unwrap_or_default();
    validate::tags("tags", &tags)?;
    if let Some(t) = &input.client_token {
        validate::client_token(t)?;
    }
    let hash = request_hash(&json!({ "targets": targets, "tags": tags }));
    if let Some(t) = &input.client_token
        && let Some(existing) = st.store.get_scope_by_token(t).await?
    {
        if existing.request_hash == hash {
            return Ok(Json(summary(&existing)));
        }
        return Err(ApiError::Conflict(format!(
            "clientToken {t} was already used for a different CreateScope request (scope {})",
            existing.scope_id
        )));
    }
    st.advance_lifecycle().await?;
    let n = st.store.count_scopes().await?;
    if n >= st.config.max_scopes {
        return Err(ApiError::QuotaExceeded(format!(
            "this account already has {n} scopes, the most allowed ({})",
            st.config.max_scopes
        )));
    }
    let scope_id = uuid::Uuid::new_v4().to_string();
    let now = now_ms();
    let scope = Scope {
        scope_arn: st.scope_arn(&scope_id),
        scope_id,
        status: if st.config.lifecycle_delay_ms > 0 { "IN_PROGRESS".into() } else { "SUCCEEDED".into() },
        targets,
        tags,
        client_token: input.client_token,
        request_hash: hash,
        created_at_ms: now,
    };
    match st.store.insert_scope(&scope).await {
        Ok(()) => Ok(Json(summary(&scope))),
        Err(StoreError::Duplicate) => {
            Err(ApiError::Conflict("a scope with this clientToken was created concurrently".into()))
        }
        Err(e) => Err(e.into()),
    }
}

async fn find(st: &SharedState, scope_id: &str) -> ApiResult<Scope> {
    if scope_id.is_empty() {
        return Err(ApiError::validation("scopeId must be at least 1 character long"));
    }
    st.advance_lifecycle().await?;
    st.store.get_scope(scope_id).await?.ok_or_else(|| ApiError::NotFound(format!("scope {scope_id} does not exist")))
}

pub async fn get(State(st): State<SharedState>, ApiPath(scope_id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let s = find(&st, &scope_id).await?;
    Ok(Json(json!({
        "scopeId": s.scope_id, "status": s.status, "scopeArn": s.scope_arn, "targets": s.targets, "tags": s.tags,
    })))
}

pub async fn list(State(st): State<SharedState>, q: QueryParams) -> ApiResult<Json<Value>> {
    let max = q.int("maxResults")?.map(validate::list_max_results).transpose()?.unwrap_or(25);
    let after = decode_token(q.get("nextToken"))?;
    st.advance_lifecycle().await?;
    let mut scopes = st.store.list_scopes(after.as_deref(), max + 1).await?;
    let next = if scopes.len() > max as usize {
        scopes.truncate(max as usize);
        scopes.last().map(|s| encode_token(&s.scope_id))
    } else {
        None
    };
    let items: Vec<Value> =
        scopes.iter().map(|s| json!({"scopeId": s.scope_id, "status": s.status, "scopeArn": s.scope_arn})).collect();
    let mut out = json!({ "scopes": items });
    if let Some(n) = next {
        out["nextToken"] = n.into();
    }
    Ok(Json(out))
}

pub async fn update(
    State(st): State<SharedState>,
    ApiPath(scope_id): ApiPath<String>,
    ApiJson(input): ApiJson<UpdateScopeInput>,
) -> ApiResult<Json<Value>> {
    if let Some(a) = &input.resources_to_add {
        validate::target_resources("resourcesToAdd", a, 1, 99)?;
    }
    if let Some(d) = &input.resources_to_delete {
        validate::target_resources("resourcesToDelete", d, 1, 99)?;
    }
    let mut s = find(&st, &scope_id).await?;
    if s.status == "DEACTIVATING" || s.status == "DEACTIVATED" {
        return Err(ApiError::Conflict(format!("scope {scope_id} is {}", s.status)));
    }
    if let Some(d) = &input.resources_to_delete {
        s.targets.retain(|t| !d.contains(t));
    }
    for t in input.resources_to_add.unwrap_or_default() {
        if !s.targets.contains(&t) {
            s.targets.push(t);
        }
    }
    if s.targets.is_empty() {
        return Err(ApiError::validation("a scope must keep at least one target; delete the scope instead"));
    }
    if s.targets.len() > 100 {
        return Err(ApiError::validation(format!(
            "a scope may hold at most 100 targets, this update makes {}",
            s.targets.len()
        )));
    }
    st.store.update_scope_targets(&s).await?;
    Ok(Json(summary(&s)))
}

pub async fn delete(State(st): State<SharedState>, ApiPath(scope_id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let s = find(&st, &scope_id).await?;
    let users = st.store.count_monitors_in_scope(&s.scope_arn).await?;
    if users > 0 {
        return Err(ApiError::Conflict(format!("scope {scope_id} is used by {users} monitor(s); delete them first")));
    }
    st.store.deactivate_scope(&scope_id, now_ms()).await?;
    Ok(Json(json!({})))
}
