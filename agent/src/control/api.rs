//! The control API server: HTTP/1.1 with JSON bodies, on a Unix socket (mode 0600, or 0660 for
//! `control_group`) and optionally on a loopback TCP address.
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /flow-operations/capture` `{"FlowFilters": [...]}` | `FlowOperationId`, `FlowOperationStatus` |
//! | `POST /flow-operations/flush` `{"FlowFilters": [...]}` | same |
//! | `GET /flow-operations?FlowOperationType=&MaxResults=&NextToken=` | `FlowOperations`, `NextToken` |
//! | `GET /flow-operations/{id}` | the operation, with its filters |
//! | `GET /flow-operations/{id}/results?MaxResults=&NextToken=` | its `Flows`, `NextToken` |
//!
//! Errors: `{"Code": "InvalidRequestException" | "ResourceNotFoundException" | ..., "Message": ...}`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path as UrlPath, Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{
    Job, Outcome,
    filter::{FlowFilter, compile_all},
    operations::{Operation, OperationType, Operations},
};
use crate::config::{Config, DEFAULT_CONTROL_SOCKET};

/// Longest an operation waits for the pipeline (it runs between ticks; normally milliseconds).
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LIST_RESULTS: usize = 100;
const MAX_FLOW_RESULTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("control_group {group:?}: {message}")]
    Group { group: String, message: String },
    #[error("cannot serve the control API on {addr} (control_http): {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
}

/// The running API. Dropping it removes the socket file.
pub struct Server {
    socket: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[derive(Clone)]
struct AppState {
    ops: Arc<Mutex<Operations>>,
    jobs: mpsc::Sender<Job>,
}

impl AppState {
    fn ops(&self) -> MutexGuard<'_, Operations> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"Code": self.code, "Message": self.message}))).into_response()
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, code: "InvalidRequestException", message: message.into() }
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "ResourceNotFoundException",
        message: format!("no flow operation {id:?} (operations are kept in memory until the agent restarts)"),
    }
}

impl Server {
    /// `start`, except that when the socket is the default one and cannot be bound (e.g. a
    /// non-root agent without /run/flow-agent), the agent runs on without the API, saying so.
    /// A control_socket set to another path, control_group and control_http must work.
    pub async fn start_or_degrade(cfg: &Config) -> Result<(Option<Server>, mpsc::Receiver<Job>), ControlError> {
        match Server::start(cfg).await {
            Ok((server, jobs)) => Ok((Some(server), jobs)),
            Err(e @ ControlError::Socket { .. }) if cfg.control_socket == Path::new(DEFAULT_CONTROL_SOCKET) => {
                tracing::warn!(
                    "flow operations API unavailable: {e}; set control_socket to a path this user may create"
                );
                // A channel whose sender is gone: the run loop never gets a job.
                Ok((None, mpsc::channel(1).1))
            }
            Err(e) => Err(e),
        }
    }

    /// Bind the socket (and the loopback address, if configured) and serve on the current runtime.
    /// Returns the jobs the pipeline must run.
    pub async fn start(cfg: &Config) -> Result<(Server, mpsc::Receiver<Job>), ControlError> {
        let gid = cfg
            .control_group
            .as_deref()
            .map(|g| resolve_group(g).map_err(|message| ControlError::Group { group: g.to_string(), message }))
            .transpose()?;
        let (tx, rx) = mpsc::channel(16);
        let state = AppState { ops: Arc::new(Mutex::new(Operations::default())), jobs: tx };
        let app = Router::new()
            .route("/flow-operations/capture", post(capture))
            .route("/flow-operations/flush", post(flush))
            .route("/flow-operations", get(list))
            .route("/flow-operations/{id}", get(describe))
            .route("/flow-operations/{id}/results", get(results))
            .fallback(unknown_route)
            .method_not_allowed_fallback(unknown_route)
            .with_state(state);

        let path = cfg.control_socket.clone();
        let std_listener =
            bind_socket(&path, gid).map_err(|message| ControlError::Socket { path: path.clone(), message })?;
        let server = Server { socket: path.clone() };
        let listener = tokio::net::UnixListener::from_std(std_listener)
            .map_err(|e| ControlError::Socket { path: path.clone(), message: e.to_string() })?;
        let unix_app = app.clone();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, unix_app).await {
                tracing::error!("control socket server stopped: {e}");
            }
        });
        tracing::info!(socket = %path.display(), group = ?cfg.control_group, "flow operations API listening");
        if let Some(addr) = cfg.control_http {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| ControlError::Http { addr, source })?;
            let local = listener.local_addr().map_err(|source| ControlError::Http { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!("control HTTP server stopped: {e}");
                }
            });
            tracing::info!(address = %local, "flow operations API listening on loopback HTTP");
        }
        Ok((server, rx))
    }
}

/// A gid from a number or a name in /etc/group.
fn resolve_group(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|e| format!("reading /etc/group: {e}"))?;
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(group)).then(|| f.nth(1).and_then(|g| g.parse().ok())).flatten()
        })
        .ok_or_else(|| "no such group in /etc/group".to_string())
}

fn bind_socket(path: &Path, gid: Option<u32>) -> Result<std::os::unix::net::UnixListener, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err("exists and is not a socket; remove it or choose another control_socket".into());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err("another flow-agent is serving on it; stop it or choose another control_socket".into());
        }
        std::fs::remove_file(path).map_err(|e| format!("removing the stale socket: {e}"))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| e.to_string())?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("chmod: {e}"))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| format!("chown to group {gid}: {e}"))?;
    }
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct StartRequest {
    flow_filters: Vec<FlowFilter>,
}

async fn capture(State(st): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    start(st, OperationType::FlowCapture, body).await
}

async fn flush(State(st): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    start(st, OperationType::FlowFlush, body).await
}

async fn start(st: AppState, kind: OperationType, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: StartRequest = serde_json::from_slice(&body).map_err(|e| {
        invalid(format!(
            "the request body must be JSON like {{\"FlowFilters\": [{{\"DestinationPort\": \"443\"}}]}}: {e}"
        ))
    })?;
    let matchers = compile_all(&req.flow_filters).map_err(invalid)?;
    let id = st.ops().start(kind, req.flow_filters);
    let (reply, answer) = oneshot::channel();
    let outcome = match st.jobs.send(Job { kind, matchers, reply }).await {
        Err(_) => Outcome::failed("the capture pipeline has stopped"),
        Ok(()) => match tokio::time::timeout(PIPELINE_TIMEOUT, answer).await {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => Outcome::failed("the capture pipeline dropped the operation"),
            Err(_) => Outcome::failed(format!("no answer from the capture pipeline within {PIPELINE_TIMEOUT:?}")),
        },
    };
    let status = outcome.status;
    st.ops().finish(&id, status, outcome.message, outcome.flows);
    Ok(Json(json!({"FlowOperationId": id, "FlowOperationStatus": status})))
}

/// `MaxResults` (1..=max, default max) and `NextToken` from a query; any other parameter is an
/// error unless listed in `also`.
fn paging(q: &HashMap<String, String>, max: usize, also: &[&str]) -> Result<(usize, Option<String>), ApiError> {
    if let Some(k) =
        q.keys().find(|k| !["MaxResults", "NextToken"].contains(&k.as_str()) && !also.contains(&k.as_str()))
    {
        let mut known = vec!["MaxResults", "NextToken"];
        known.extend_from_slice(also);
        return Err(invalid(format!("unknown query parameter {k:?}; known: {}", known.join(", "))));
    }
    let n = match q.get("MaxResults") {
        None => max,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| invalid(format!("MaxResults {v:?} must be a number from 1 to {max}")))?,
    };
    Ok((n, q.get("NextToken").cloned()))
}

fn summary(o: &Operation) -> Value {
    json!({
        "FlowOperationId": o.id,
        "FlowOperationType": o.kind,
        "FlowRequestTimestamp": o.requested.to_rfc3339(),
        "FlowOperationStatus": o.status,
    })
}

type QueryParams = Result<Query<HashMap<String, String>>, QueryRejection>;

async fn list(State(st): State<AppState>, q: QueryParams) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| invalid(format!("bad query string: {e}")))?;
    let (max, next) = paging(&q, MAX_LIST_RESULTS, &["FlowOperationType"])?;
    let kind = q.get("FlowOperationType").map(|t| OperationType::parse(t)).transpose().map_err(invalid)?;
    let ops = st.ops();
    let page = ops.list(kind, max, next.as_deref()).map_err(invalid)?;
    let mut out = json!({"FlowOperations": page.items.iter().map(|o| summary(o)).collect::<Vec<_>>()});
    if let Some(t) = page.next_token {
        out["NextToken"] = t.into();
    }
    Ok(Json(out))
}

async fn describe(State(st): State<AppState>, UrlPath(id): UrlPath<String>) -> Result<Json<Value>, ApiError> {
    let ops = st.ops();
    let o = ops.get(&id).ok_or_else(|| not_found(&id))?;
    let mut out = summary(o);
    out["FlowOperation"] = json!({"FlowFilters": o.filters});
    if let Some(m) = &o.message {
        out["StatusMessage"] = m.clone().into();
    }
    Ok(Json(out))
}

async fn results(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| invalid(format!("bad query string: {e}")))?;
    let (max, next) = paging(&q, MAX_FLOW_RESULTS, &[])?;
    let ops = st.ops();
    let o = ops.get(&id).ok_or_else(|| not_found(&id))?;
    let page = Operations::results(o, max, next.as_deref()).map_err(invalid)?;
    let mut out = summary(o);
    out["Flows"] = json!(page.items);
    if let Some(m) = &o.message {
        out["StatusMessage"] = m.clone().into();
    }
    if let Some(t) = page.next_token {
        out["NextToken"] = t.into();
    }
    Ok(Json(out))
}

async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "UnknownOperationException",
        message: format!(
            "no {method} {}; known: POST /flow-operations/capture, POST /flow-operations/flush, GET /flow-operations, \
             GET /flow-operations/{{id}}, GET /flow-operations/{{id}}/results",
            uri.path()
        ),
    }
}
