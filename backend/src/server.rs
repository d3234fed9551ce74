//! The HTTP service: routes, shared state, authentication and throttling.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::HeaderMap;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::{health, monitors, queries, scopes, tags};
use crate::errors::ApiError;
use crate::ingest;
use crate::sigv4::{self, Credentials};
use crate::store::Store;

/// Largest request body accepted (reports of many flows; gzip or not).
pub const MAX_BODY_BYTES: usize = 64 << 20;

#[derive(Clone, Debug)]
pub struct Config {
    pub region: String,
    pub account_id: String,
    /// How long monitors stay PENDING / DELETING and scopes IN_PROGRESS / DEACTIVATING.
    pub lifecycle_delay_ms: i64,
    pub max_scopes: i64,
    pub max_monitors: i64,
    /// API requests per second before ThrottlingException (0: unlimited).
    pub rate_limit: f64,
    /// `Some` when SigV4 signatures are verified.
    pub credentials: Option<Credentials>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: "us-east-1".into(),
            account_id: "123456789012".into(),
            lifecycle_delay_ms: 1000,
            max_scopes: 10,
            max_monitors: 100,
            rate_limit: 0.0,
            credentials: None,
        }
    }
}

pub struct AppState {
    pub store: Store,
    pub config: Config,
    bucket: Mutex<(f64, Instant)>,
}

impl AppState {
    pub fn new(store: Store, config: Config) -> Arc<AppState> {
        let burst = config.rate_limit.max(1.0);
        Arc::new(AppState { store, config, bucket: Mutex::new((burst, Instant::now())) })
    }

    pub fn scope_arn(&self, scope_id: &str) -> String {
        format!("arn:aws:networkflowmonitor:{}:{}:scope/{scope_id}", self.config.region, self.config.account_id)
    }

    pub fn monitor_arn(&self, name: &str) -> String {
        format!("arn:aws:networkflowmonitor:{}:{}:monitor/{name}", self.config.region, self.config.account_id)
    }

    /// Token bucket: `rate_limit` tokens per second, as many in a burst.
    fn take_token(&self) -> bool {
        let rate = self.config.rate_limit;
        if rate <= 0.0 {
            return true;
        }
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate.max(1.0));
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Lifecycle transitions are applied lazily, before reads, so replicas need no scheduler.
    pub async fn advance_lifecycle(&self) -> Result<(), ApiError> {
        self.store.advance_lifecycle(crate::api::now_ms(), self.config.lifecycle_delay_ms).await?;
        Ok(())
    }
}

pub type SharedState = Arc<AppState>;

async fn authenticate(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let Some(creds) = &state.config.credentials else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::validation(format!("cannot read the request body: {e}")).into_response();
        }
    };
    let signed = sigv4::RequestParts {
        method: parts.method.as_str(),
        raw_path: parts.uri.path(),
        raw_query: parts.uri.query(),
        headers: &parts.headers,
        body: &bytes,
    };
    if let Err(e) = sigv4::verify(creds, &signed, chrono::Utc::now()) {
        tracing::info!(path = parts.uri.path(), error = %e, "refused an unauthenticated request");
        return e.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn throttle(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if !state.take_token() {
        return ApiError::Throttling(format!(
            "Rate exceeded: this service answers at most {} API requests per second",
            state.config.rate_limit
        ))
        .into_response();
    }
    next.run(req).await
}

async fn publish(State(state): State<SharedState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let report = match ingest::decode_body(&headers, &body).and_then(|json| ingest::parse_report(&json)) {
        Ok(r) => r,
        Err(e) => return ApiError::Validation(format!("malformed report: {e}")).into_response(),
    };
    match state.store.insert_report(&report, crate::api::now_ms()).await {
        Ok(o) => axum::Json(serde_json::json!({
            "reportId": report.report_id,
            "stored": o.stored,
            "duplicate": !o.stored,
            "flows": o.flows,
        }))
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn unknown_operation(req: Request) -> Response {
    ApiError::Signature {
        code: "UnknownOperationException",
        status: axum::http::StatusCode::NOT_FOUND,
        message: format!("no operation matches {} {}", req.method(), req.uri().path()),
    }
    .into_response()
}

pub fn router(state: SharedState) -> Router {
    let api = Router::new()
        .route("/scopes", post(scopes::create).get(scopes::list))
        .route("/scopes/{scope_id}", get(scopes::get).patch(scopes::update).delete(scopes::delete))
        .route("/monitors", post(monitors::create).get(monitors::list))
        .route("/monitors/{name}", get(monitors::get).patch(monitors::update).delete(monitors::delete))
        .route("/monitors/{name}/networkHealth", get(health::get))
        .route("/tags/{arn}", get(tags::list).post(tags::tag).delete(tags::untag))
        .route("/monitors/{name}/topContributorsQueries", post(queries::start_monitor))
        .route("/monitors/{name}/topContributorsQueries/{query_id}", axum::routing::delete(queries::stop_monitor))
        .route("/monitors/{name}/topContributorsQueries/{query_id}/status", get(queries::status_monitor))
        .route("/monitors/{name}/topContributorsQueries/{query_id}/results", get(queries::results_monitor))
        .route("/workloadInsights/{scope_id}/topContributorsQueries", post(queries::start_wi))
        .route(
            "/workloadInsights/{scope_id}/topContributorsQueries/{query_id}",
            axum::routing::delete(queries::stop_wi),
        )
        .route("/workloadInsights/{scope_id}/topContributorsQueries/{query_id}/status", get(queries::status_wi))
        .route("/workloadInsights/{scope_id}/topContributorsQueries/{query_id}/results", get(queries::results_wi))
        .route("/workloadInsights/{scope_id}/topContributorsDataQueries", post(queries::start_wid))
        .route(
            "/workloadInsights/{scope_id}/topContributorsDataQueries/{query_id}",
            axum::routing::delete(queries::stop_wid),
        )
        .route("/workloadInsights/{scope_id}/topContributorsDataQueries/{query_id}/status", get(queries::status_wid))
        .route("/workloadInsights/{scope_id}/topContributorsDataQueries/{query_id}/results", get(queries::results_wid))
        .layer(middleware::from_fn_with_state(state.clone(), throttle));
    Router::new()
        .merge(api)
        .route("/publish", post(publish))
        .route("/ping", get(|| async { "ok" }))
        .fallback(unknown_operation)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves until the process ends. Expired query results are dropped hourly.
pub async fn serve(listener: tokio::net::TcpListener, state: SharedState) -> std::io::Result<()> {
    let store = state.store.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) = store.expire_queries(crate::api::now_ms() - 24 * 3600 * 1000).await {
                tracing::warn!(error = %e, "could not expire old queries");
            }
        }
    });
    axum::serve(listener, router(state)).await
}
