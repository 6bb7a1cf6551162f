//! The REST API of the JobManager (Flink's paths and JSON field names), served by axum
//! on its own thread. Malformed requests, unknown paths and wrong methods get a 4xx with
//! a JSON body `{"errors": [...]}`, as Flink's do.

use crate::cluster::jobmanager::{lock, SharedState};
use crate::cluster::TaskManagerId;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::thread::JoinHandle;

/// The REST server's thread.
#[derive(Debug)]
pub struct RestServer {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A JSON error response.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "errors": [message.into()] }))).into_response()
}

fn router(state: SharedState) -> Router {
    Router::new()
        .route("/overview", get(overview))
        .route("/config", get(config))
        .route("/taskmanagers", get(taskmanagers))
        .route("/taskmanagers/{id}", get(taskmanager))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn not_found(uri: Uri) -> Response {
    error(StatusCode::NOT_FOUND, format!("Not found: {}", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("Method not allowed on {}", uri.path()),
    )
}

fn version() -> String {
    format!("spate {}", env!("CARGO_PKG_VERSION"))
}

async fn overview(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    let total: usize = st.taskmanagers.values().map(|t| t.slots.len()).sum();
    let used: usize = st
        .taskmanagers
        .values()
        .flat_map(|t| &t.slots)
        .filter(|s| s.job.is_some())
        .count();
    Json(json!({
        "taskmanagers": st.taskmanagers.len(),
        "slots-total": total,
        "slots-available": total - used,
        "jobs-running": 0,
        "jobs-finished": 0,
        "jobs-cancelled": 0,
        "jobs-failed": 0,
        "flink-version": version(),
        "flink-commit": "",
    }))
}

async fn config(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    Json(json!({
        "refresh-interval": 3000,
        "timezone-name": "UTC",
        "timezone-offset": 0,
        "flink-version": version(),
        "flink-revision": "",
        "features": { "web-submit": false, "web-cancel": true },
        "jobmanager-id": st.jobmanager_id,
    }))
}

fn tm_json(t: &crate::cluster::jobmanager::TaskManagerEntry, now_ms: u64) -> Value {
    let free = t.slots.iter().filter(|s| s.job.is_none()).count();
    json!({
        "id": t.id.0,
        "path": format!("spate://{}/{}", t.host, t.id.0),
        "dataAddress": t.data_address,
        "timeSinceLastHeartbeat": now_ms.saturating_sub(t.last_heartbeat_ms),
        "slotsNumber": t.slots.len(),
        "freeSlots": free,
        "hardware": { "cpuCores": t.cores },
        "slots": t.slots.iter().map(|s| json!({
            "index": s.index, "core": s.core, "job": s.job,
        })).collect::<Vec<_>>(),
    })
}

async fn taskmanagers(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    let now = st.now_ms();
    Json(json!({
        "taskmanagers": st.taskmanagers.values().map(|t| tm_json(t, now)).collect::<Vec<_>>(),
    }))
}

async fn taskmanager(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let now = st.now_ms();
    match st.taskmanagers.get(&TaskManagerId(id.clone())) {
        Some(t) => Json(tm_json(t, now)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("TaskManager {id} does not exist"),
        ),
    }
}

impl RestServer {
    /// Serves the API on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr, state: SharedState) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen for REST on {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("jobmanager-rest".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the REST runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serve REST");
                            return;
                        }
                    };
                    let serve =
                        axum::serve(listener, router(state)).with_graceful_shutdown(async {
                            let _ = rx.await;
                        });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "REST server stopped");
                    }
                });
            })?;
        Ok(Self {
            addr: local,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
