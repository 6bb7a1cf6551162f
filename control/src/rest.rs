//! The REST API of the JobManager (Flink's paths and JSON field names), served by axum
//! on its own thread. Malformed requests, unknown paths and wrong methods get a 4xx with
//! a JSON body `{"errors": [...]}`, as Flink's do.

use crate::checkpoint::SavepointStatus;
use crate::cluster::jobmanager::{
    lock, JmCommand, JobEntry, JobState, SavepointRequest, SharedState,
};
use crate::cluster::{TaskManagerId, TaskState};
use crate::jobs::JobSpec;
use axum::body::Bytes;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/checkpoints/config", get(checkpoints_config))
        .route(
            "/jobs/{id}/checkpoints/details/{cid}",
            get(checkpoint_details),
        )
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{rid}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop_job))
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
    match ask(&app, |tx| JmCommand::Submit(Box::new(spec), tx)).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({ "jobid": id }))).into_response(),
        Err(r) => *r,
    }
}

/// Sends the JobManager the command `cmd` makes with a reply channel, and awaits the
/// reply; an error reply or a JobManager that is gone is the response to give.
async fn ask<T>(
    app: &App,
    cmd: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, (u16, String)>>) -> JmCommand,
) -> Result<T, Box<Response>> {
    let gone = || {
        Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the JobManager is shutting down",
        ))
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if app.commands.send(cmd(tx)).is_err() {
        return Err(gone());
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(reply_error(e))),
        Err(_) => Err(gone()),
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
    match ask(&app, |tx| JmCommand::Cancel(id, tx)).await {
        Ok(()) => (StatusCode::ACCEPTED, Json(json!({}))).into_response(),
        Err(r) => *r,
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

/// One checkpoint as Flink's `CheckpointStatistics` names its fields.
fn checkpoint_json(h: &crate::checkpoint::CheckpointRecord) -> Value {
    let class = match h.status {
        "COMPLETED" => ".CompletedCheckpointStatistics",
        "FAILED" => ".FailedCheckpointStatistics",
        _ => ".PendingCheckpointStatistics",
    };
    let mut v = json!({
        "className": class,
        "id": h.id,
        "status": h.status,
        "is_savepoint": h.savepoint,
        "savepointFormat": if h.savepoint { json!("CANONICAL") } else { Value::Null },
        "trigger_timestamp": h.trigger_ms,
        "latest_ack_timestamp": if h.latest_ack_ms == 0 { -1i64 } else { h.latest_ack_ms as i64 },
        "checkpointed_size": h.size,
        "state_size": h.size,
        "end_to_end_duration": h.duration_ms,
        "alignment_buffered": 0,
        "processed_data": 0,
        "persisted_data": 0,
        "num_subtasks": h.num_subtasks,
        "num_acknowledged_subtasks": h.acknowledged,
        "checkpoint_type": if h.savepoint { "SAVEPOINT" } else { "CHECKPOINT" },
        "tasks": {},
        "alignment_ns": h.alignment_ns,
    });
    match h.status {
        "COMPLETED" => {
            v["external_path"] = json!(h
                .path
                .clone()
                .unwrap_or_else(|| "<checkpoint-not-externally-addressable>".into()));
            v["discarded"] = json!(false);
        }
        "FAILED" => {
            v["failure_timestamp"] = json!(h.trigger_ms + h.duration_ms);
            v["failure_message"] = json!(h.failure);
        }
        _ => {}
    }
    v
}

/// Flink's min/max/avg/percentile summary of `xs` (`"NaN"` percentiles when empty).
fn stats_summary(xs: &[u64]) -> Value {
    let mut xs = xs.to_vec();
    xs.sort_unstable();
    let q = |p: f64| -> Value {
        if xs.is_empty() {
            return json!("NaN");
        }
        let i = ((p * xs.len() as f64).ceil() as usize).clamp(1, xs.len()) - 1;
        json!(xs[i] as f64)
    };
    let avg = if xs.is_empty() {
        0
    } else {
        xs.iter().sum::<u64>() / xs.len() as u64
    };
    json!({
        "min": xs.first().copied().unwrap_or(0),
        "max": xs.last().copied().unwrap_or(0),
        "avg": avg,
        "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999),
    })
}

async fn checkpoints(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let s = j.coord.stats();
    let done: Vec<&crate::checkpoint::CheckpointRecord> = s
        .history
        .iter()
        .filter(|h| h.status == "COMPLETED")
        .collect();
    let sizes: Vec<u64> = done.iter().map(|h| h.size).collect();
    let durations: Vec<u64> = done.iter().map(|h| h.duration_ms).collect();
    let zeros: Vec<u64> = done.iter().map(|_| 0).collect();
    let latest = |f: &dyn Fn(&crate::checkpoint::CheckpointRecord) -> bool| {
        s.history
            .iter()
            .find(|h| f(h))
            .map_or(Value::Null, checkpoint_json)
    };
    let restored = match s.restored_id {
        Some(rid) => json!({
            "id": rid,
            "restore_timestamp": s.restored_ms,
            "is_savepoint": false,
            "external_path": j.coord.latest().and_then(|c| c.path.clone()).map(|p| p.display().to_string()),
        }),
        None => Value::Null,
    };
    Json(json!({
        "counts": {
            "restored": u64::from(s.restored_id.is_some()),
            "total": s.triggered,
            "in_progress": j.coord.in_progress(),
            "completed": s.completed,
            "failed": s.failed + s.aborted,
        },
        "summary": {
            "checkpointed_size": stats_summary(&sizes),
            "state_size": stats_summary(&sizes),
            "end_to_end_duration": stats_summary(&durations),
            "alignment_buffered": stats_summary(&zeros),
            "processed_data": stats_summary(&zeros),
            "persisted_data": stats_summary(&zeros),
        },
        "latest": {
            "completed": latest(&|h| h.status == "COMPLETED" && !h.savepoint),
            "savepoint": latest(&|h| h.status == "COMPLETED" && h.savepoint),
            "failed": latest(&|h| h.status == "FAILED"),
            "restored": restored,
        },
        "history": s.history.iter().map(checkpoint_json).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn checkpoints_config(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let c = j.coord.config();
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Json(json!({
        "mode": if c.exactly_once { "exactly_once" } else { "at_least_once" },
        // Flink's value for "periodic checkpoints off".
        "interval": c.interval.map_or(i64::MAX, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        "timeout": ms(c.timeout),
        "min_pause": ms(c.min_pause),
        "max_concurrent": c.max_concurrent,
        "externalization": {
            "enabled": c.dir.is_some(),
            "delete_on_cancellation": false,
        },
        "state_backend": "HashMapStateBackend",
        "checkpoint_storage": if c.dir.is_some() { "FileSystemCheckpointStorage" } else { "JobManagerCheckpointStorage" },
        "unaligned_checkpoints": c.unaligned,
        "tolerable_failed_checkpoints": c.tolerable_failures.map_or(i64::from(i32::MAX), i64::from),
        "aligned_checkpoint_timeout": 0,
        // Final checkpoints are taken whenever checkpoints are periodic.
        "checkpoints_after_tasks_finish": c.interval.is_some(),
        "state_changelog_enabled": false,
        "changelog_periodic_materialization_interval": 600000,
        "changelog_storage": "memory",
    }))
    .into_response()
}

async fn checkpoint_details(
    State(st): State<SharedState>,
    Path((id, cid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let Ok(cid) = cid.parse::<u64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{cid:?} is not a checkpoint id"),
        );
    };
    match j.coord.stats().history.iter().find(|h| h.id == cid) {
        Some(h) => Json(checkpoint_json(h)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Could not find checkpointing statistics for checkpoint {cid}."),
        ),
    }
}

/// `POST /jobs/:id/savepoints` (Flink's body: `target-directory`, `cancel-job`).
async fn trigger_savepoint(
    State(app): State<App>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(rename = "target-directory")]
        target: Option<String>,
        #[serde(rename = "cancel-job", default)]
        cancel: bool,
        #[serde(rename = "formatType")]
        _format: Option<String>,
        #[serde(rename = "triggerId")]
        _trigger: Option<String>,
    }
    let b: Body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let then = b.cancel.then_some(JobState::Canceled);
    savepoint_request(&app, id, b.target, then).await
}

/// `POST /jobs/:id/stop` (Flink's body: `targetDirectory`, `drain`): a savepoint, then
/// the job ends FINISHED.
async fn stop_job(State(app): State<App>, Path(id): Path<String>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        #[serde(rename = "targetDirectory")]
        target: Option<String>,
        #[serde(default)]
        drain: bool,
        #[serde(rename = "formatType")]
        _format: Option<String>,
        #[serde(rename = "triggerId")]
        _trigger: Option<String>,
    }
    let b: Body = match parse_body(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if b.drain {
        return error(
            StatusCode::BAD_REQUEST,
            "drain is not supported: a stop takes a savepoint and ends the job without \
             advancing event time to the end",
        );
    }
    savepoint_request(&app, id, b.target, Some(JobState::Finished)).await
}

/// An empty body is `{}`; a malformed one is a 400 that says what was expected.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Box<Response>> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        Box::new(error(
            StatusCode::BAD_REQUEST,
            format!("Request body is not valid: {e}"),
        ))
    })
}

async fn savepoint_request(
    app: &App,
    job_id: String,
    target: Option<String>,
    then: Option<JobState>,
) -> Response {
    let req = SavepointRequest {
        job_id,
        target,
        then,
    };
    match ask(app, |tx| JmCommand::Savepoint(req, tx)).await {
        Ok(rid) => (StatusCode::ACCEPTED, Json(json!({ "request-id": rid }))).into_response(),
        Err(r) => *r,
    }
}

/// `GET /jobs/:id/savepoints/:request-id`: Flink's asynchronous operation result.
async fn savepoint_status(
    State(st): State<SharedState>,
    Path((id, rid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let status = j
        .savepoint_requests
        .get(&rid)
        .and_then(|sid| j.coord.savepoint_status(*sid));
    match status {
        None => error(
            StatusCode::NOT_FOUND,
            format!("There is no savepoint operation with triggerId={rid} for job {id}."),
        ),
        Some(SavepointStatus::InProgress) => {
            Json(json!({ "status": { "id": "IN_PROGRESS" }, "operation": null })).into_response()
        }
        Some(SavepointStatus::Completed(path)) => Json(json!({
            "status": { "id": "COMPLETED" },
            "operation": { "location": if crate::storage::is_remote(&path) {
                path.display().to_string()
            } else {
                format!("file:{}", path.display())
            } },
        }))
        .into_response(),
        Some(SavepointStatus::Failed(why)) => Json(json!({
            "status": { "id": "COMPLETED" },
            "operation": { "failure-cause": {
                "class": "spate::checkpoint::SavepointFailed",
                "stack-trace": why,
                "serialized-throwable": null,
            } },
        }))
        .into_response(),
    }
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
