//! TagResource, UntagResource, ListTagsForResource on monitor and scope ARNs.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiJson, ApiPath, QueryParams};
use crate::errors::{ApiError, ApiResult};
use crate::model::Tags;
use crate::server::SharedState;
use crate::validate;

#[derive(Deserialize)]
pub struct TagResourceInput {
    tags: Option<Tags>,
}

async fn current_tags(st: &SharedState, arn: &str) -> ApiResult<Tags> {
    validate::arn("resourceArn", arn, 2048)?;
    st.advance_lifecycle().await?;
    if let Some(m) = st.store.get_monitor_by_arn(arn).await? {
        return Ok(m.tags);
    }
    if let Some(s) = st.store.get_scope_by_arn(arn).await? {
        return Ok(s.tags);
    }
    Err(ApiError::NotFound(format!("no monitor or scope has the ARN {arn}")))
}

async fn store_tags(st: &SharedState, arn: &str, tags: &Tags) -> ApiResult<()> {
    if st.store.set_tags(arn, tags).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no monitor or scope has the ARN {arn}")))
    }
}

pub async fn list(State(st): State<SharedState>, ApiPath(arn): ApiPath<String>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "tags": current_tags(&st, &arn).await? })))
}

pub async fn tag(
    State(st): State<SharedState>,
    ApiPath(arn): ApiPath<String>,
    ApiJson(input): ApiJson<TagResourceInput>,
) -> ApiResult<Json<Value>> {
    let add = validate::required("tags", input.tags)?;
    validate::tags("tags", &add)?;
    let mut tags = current_tags(&st, &arn).await?;
    tags.extend(add);
    if tags.len() > 200 {
        return Err(ApiError::validation(format!(
            "a resource may hold at most 200 tags; this would make {}",
            tags.len()
        )));
    }
    store_tags(&st, &arn, &tags).await?;
    Ok(Json(json!({})))
}

pub async fn untag(
    State(st): State<SharedState>,
    ApiPath(arn): ApiPath<String>,
    q: QueryParams,
) -> ApiResult<Json<Value>> {
    let keys = q.all("tagKeys");
    if q.get("tagKeys").is_none() {
        return Err(ApiError::validation("tagKeys is required"));
    }
    if keys.len() > 200 {
        return Err(ApiError::validation(format!("tagKeys may hold at most 200 keys, got {}", keys.len())));
    }
    for k in &keys {
        validate::tag_key(k)?;
    }
    let mut tags = current_tags(&st, &arn).await?;
    for k in &keys {
        tags.remove(k);
    }
    store_tags(&st, &arn, &tags).await?;
    Ok(Json(json!({})))
}
