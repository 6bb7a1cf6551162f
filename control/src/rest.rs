//! The REST API of the JobManager (Flink's paths and JSON field names), served by axum
//! on its own thread. Malformed requests, unknown paths and wrong methods get a 4xx with
//! a JSON body `{"errors": [...]}`, as Flink's do.

use crate::cluster::jobmanager::{lock, JmCommand, JobEntry, JobState, SharedState};
use crate::cluster::{TaskManagerId, TaskState};
use crate::jobs::JobSpec;
use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
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

/// What handlers share: the cluster state to read, a channel to the JobManager to act.
#[derive(Clone)]
struct App {
    state: SharedState,
    commands: Sender<JmCommand>,
}

impl FromRef<App> for SharedState {
    fn from_ref(app: &App) -> SharedState {
        app.state.clone()
    }
}

fn router(state: SharedState, commands: Sender<JmCommand>) -> Router {
    Router::new()
        .route("/overview", get(overview))
        .route("/config", get(config))
        .route("/taskmanagers", get(taskmanagers))
        .route("/taskmanagers/{id}", get(taskmanager))
        .route("/jobs", get(jobs).post(submit))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job).patch(patch_job))
        .route("/jobs/{id}/exceptions", get(exceptions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(App { state, commands })
}

fn reply_error((status, message): (u16, String)) -> Response {
    error(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        message,
    )
}

async fn submit(State(app): State<App>, body: Bytes) -> Response {
    let spec: JobSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("malformed job submission: {e}; expected {{\"job\": NAME, \"args\": [..], \"parallelism\": N}}"),
            )
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if app.commands.send(JmCommand::Submit(spec, tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JobManager is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(id)) => (StatusCode::ACCEPTED, Json(json!({ "jobid": id }))).into_response(),
        Ok(Err(e)) => reply_error(e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JobManager is shutting down",
        ),
    }
}

async fn patch_job(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match q.get("mode").map(String::as_str) {
        Some("cancel") | None => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unsupported mode '{other}': use mode=cancel"),
            )
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    if app.commands.send(JmCommand::Cancel(id, tx)).is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JobManager is shutting down",
        );
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::ACCEPTED, Json(json!({}))).into_response(),
        Ok(Err(e)) => reply_error(e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JobManager is shutting down",
        ),
    }
}

fn duration(j: &JobEntry) -> u64 {
    let end = j.end_epoch_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    });
    end.saturating_sub(j.start_epoch_ms)
}

fn task_counts(j: &JobEntry) -> Value {
    let mut c: HashMap<&str, usize> = HashMap::new();
    for t in j.tasks.values() {
        let k = match &t.state {
            None => "deploying",
            Some(TaskState::Running) => "running",
            Some(TaskState::Finished) => "finished",
            Some(TaskState::Failed(_)) => "failed",
            Some(TaskState::Canceled) => "canceled",
        };
        *c.entry(k).or_default() += 1;
    }
    json!({
        "total": j.tasks.len(),
        "deploying": c.get("deploying").copied().unwrap_or(0),
        "running": c.get("running").copied().unwrap_or(0),
        "finished": c.get("finished").copied().unwrap_or(0),
        "canceled": c.get("canceled").copied().unwrap_or(0),
        "failed": c.get("failed").copied().unwrap_or(0),
    })
}

async fn jobs(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    Json(json!({
        "jobs": st.jobs.values().map(|j| json!({ "id": j.id, "status": j.state.name() })).collect::<Vec<_>>(),
    }))
}

fn job_summary(j: &JobEntry) -> Value {
    json!({
        "jid": j.id,
        "name": j.spec.job,
        "state": j.state.name(),
        "start-time": j.start_epoch_ms,
        "end-time": j.end_epoch_ms.map_or(-1, |e| e as i64),
        "duration": duration(j),
        "tasks": task_counts(j),
    })
}

async fn jobs_overview(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    Json(json!({ "jobs": st.jobs.values().map(job_summary).collect::<Vec<_>>() }))
}

async fn job(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let mut v = job_summary(j);
    v["restarts"] = json!(j.restarts);
    v["attempt"] = json!(j.attempt);
    v["vertices"] = json!(j
        .vertices
        .iter()
        .map(|x| {
            let sub: Vec<Value> = j
                .tasks
                .iter()
                .filter(|(k, _)| k.0 as usize == x.id)
                .map(|(k, t)| {
                    json!({
                        "subtask": k.1,
                        "attempt": t.attempt,
                        "metrics": { "read-records": t.records_in, "write-records": t.records_out },
                        "taskmanager-id": t.taskmanager.0,
                        "slot": t.slot,
                        "status": match &t.state {
                            None => "DEPLOYING",
                            Some(TaskState::Running) => "RUNNING",
                            Some(TaskState::Finished) => "FINISHED",
                            Some(TaskState::Failed(_)) => "FAILED",
                            Some(TaskState::Canceled) => "CANCELED",
                        },
                    })
                })
                .collect();
            let (rin, rout) = j
                .tasks
                .iter()
                .filter(|(k, _)| k.0 as usize == x.id)
                .fold((0u64, 0u64), |a, (_, t)| {
                    (a.0 + t.records_in, a.1 + t.records_out)
                });
            json!({
                "id": x.id.to_string(),
                "name": x.name,
                "parallelism": x.parallelism,
                "metrics": { "read-records": rin, "write-records": rout },
                "subtasks": sub,
            })
        })
        .collect::<Vec<_>>());
    Json(v).into_response()
}

async fn exceptions(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let root = j.exceptions.last();
    Json(json!({
        "root-exception": root.map(|e| e.message.clone()),
        "timestamp": root.map(|e| e.timestamp_ms),
        "all-exceptions": j.exceptions.iter().map(|e| json!({
            "exception": e.message, "task": e.task, "timestamp": e.timestamp_ms,
        })).collect::<Vec<_>>(),
        "truncated": j.exceptions_truncated,
    }))
    .into_response()
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
    let count = |s: JobState| st.jobs.values().filter(|j| j.state == s).count();
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
        "jobs-running": st.jobs.values().filter(|j| !j.state.is_terminal()).count(),
        "jobs-finished": count(JobState::Finished),
        "jobs-cancelled": count(JobState::Canceled),
        "jobs-failed": count(JobState::Failed),
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
        "network": {
            "node": t.network.node.to_string(),
            "transport": t.network.transport,
            "connections": t.network_report.connections,
            "bytesIn": t.network_report.bytes_in,
            "bytesOut": t.network_report.bytes_out,
            "framesIn": t.network_report.frames_in,
            "framesOut": t.network_report.frames_out,
            "failures": t.network_report.failures,
            "fallbacks": t.network_report.fallbacks,
        },
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
    pub fn start(
        addr: SocketAddr,
        state: SharedState,
        commands: Sender<JmCommand>,
    ) -> anyhow::Result<Self> {
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
                    let serve = axum::serve(listener, router(state, commands))
                        .with_graceful_shutdown(async {
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
