//! The REST API of the JobManager (Flink's paths and JSON field names), served by axum
//! on its own thread. Malformed requests, unknown paths and wrong methods get a 4xx with
//! a JSON body `{"errors": [...]}`, as Flink's do.

use crate::checkpoint::SavepointStatus;
use crate::cluster::jobmanager::{
    epoch_ms, lock, JmCommand, JobEntry, JobState, SavepointRequest, SharedState, TaskSlot,
    VertexInfo,
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
use std::collections::{BTreeMap, HashMap};
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
    let api = Router::new()
        .route("/overview", get(overview))
        .route("/config", get(config))
        .route("/applications/overview", get(applications_overview))
        .route("/jobmanager/config", get(jobmanager_config))
        .route("/jobmanager/environment", get(jobmanager_environment))
        .route("/jobmanager/metrics", get(jobmanager_metrics))
        .route("/taskmanagers", get(taskmanagers))
        .route("/taskmanagers/metrics", get(taskmanagers_metrics))
        .route("/taskmanagers/{id}", get(taskmanager))
        .route("/taskmanagers/{id}/metrics", get(taskmanager_metrics))
        .route("/jobs/metrics", get(jobs_metrics))
        .route("/jobs", get(jobs).post(submit))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job).patch(patch_job))
        .route("/jobs/{id}/status", get(job_status))
        .route("/jobs/{id}/results", get(job_results))
        .route("/jobs/{id}/latency-histogram", get(latency_histogram))
        .route("/jobs/{id}/metrics", get(job_metrics))
        .route("/jobs/{id}/plan", get(job_plan))
        .route("/jobs/{id}/config", get(job_config))
        .route("/jobs/{id}/execution-result", get(execution_result))
        .route("/jobs/{id}/exceptions", get(exceptions))
        .route("/jobs/{id}/accumulators", get(accumulators))
        .route("/jobs/{id}/vertices/{vid}", get(vertex))
        .route("/jobs/{id}/vertices/{vid}/metrics", get(vertex_metrics))
        .route(
            "/jobs/{id}/vertices/{vid}/subtasks/metrics",
            get(subtasks_metrics),
        )
        .route("/jobs/{id}/vertices/{vid}/subtasktimes", get(subtask_times))
        .route("/jobs/{id}/vertices/{vid}/watermarks", get(watermarks))
        .route("/jobs/{id}/vertices/{vid}/backpressure", get(backpressure))
        .route(
            "/jobs/{id}/vertices/{vid}/taskmanagers",
            get(vertex_taskmanagers),
        )
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/checkpoints/config", get(checkpoints_config))
        .route(
            "/jobs/{id}/checkpoints/details/{cid}",
            get(checkpoint_details),
        )
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{rid}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop_job));
    let secret = crate::cluster::jobmanager::lock(&state)
        .config
        .rest_secret
        .clone();
    // Flink's clients call every path under /v1; its dashboard calls them bare.
    let router = Router::new()
        .route("/metrics", get(prometheus))
        .merge(api.clone())
        .nest("/v1", api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(App { state, commands });
    let router = if secret.is_set() {
        router.layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(secret),
            require_secret,
        ))
    } else {
        router
    };
    // The dashboard's page and assets load without the secret (they hold no data; the
    // page asks for the secret when the API refuses it).
    crate::web::routes().merge(router)
}

/// The cookie the web UI keeps `security.rest.secret` in.
pub const SECRET_COOKIE: &str = "spate-token";

/// With `security.rest.secret`: a request must carry it, as `Authorization: Bearer`
/// or in the web UI's cookie; else 401 (Flink's REST with SSL mutual authentication
/// refuses the connection instead).
async fn require_secret(
    State(secret): State<std::sync::Arc<crate::security::SecretBytes>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().as_bytes().to_vec());
    let cookie = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(SECRET_COOKIE)?.strip_prefix('='))
        .map(|v| percent_encoding::percent_decode_str(v).collect::<Vec<u8>>())
        .next();
    if bearer.or(cookie).is_some_and(|t| secret.matches(&t)) {
        return next.run(req).await;
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "this JobManager requires its REST secret (security.rest.secret) as \
         'Authorization: Bearer <secret>'",
    );
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"spate\""),
    );
    r
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

async fn jobs(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    Json(json!({
        "jobs": st.jobs.values().map(|j| json!({ "id": j.id, "status": j.state.name() })).collect::<Vec<_>>(),
    }))
}

async fn jobs_overview(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    Json(json!({ "jobs": st.jobs.values().map(job_summary).collect::<Vec<_>>() }))
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

/// Whether `id` is a job id as Flink writes them (32 hex digits).
fn is_flink_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The job `id`, or the response Flink gives: 400 for what is not a job id, 404 for
/// an unknown one.
fn find_job<'a>(
    st: &'a crate::cluster::jobmanager::ClusterState,
    id: &str,
) -> Result<&'a JobEntry, Box<Response>> {
    if !is_flink_id(id) {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            format!(
                "Bad request, could not parse parameters: Cannot resolve path parameter \
                 (jobid) from value \"{id}\"."
            ),
        )));
    }
    st.jobs
        .get(id)
        .ok_or_else(|| Box::new(error(StatusCode::NOT_FOUND, format!("Job {id} not found"))))
}

/// A 32-hex-digit id derived from `parts` (vertex and slot sharing group ids, stable
/// for a job).
fn derived_id(parts: &[&str]) -> String {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        // SipHash with fixed keys: the same id for the same parts, run after run.
        let mut h = std::hash::DefaultHasher::new();
        salt.hash(&mut h);
        parts.hash(&mut h);
        h.finish()
    };
    format!("{:016x}{:016x}", half(1), half(2))
}

/// Vertex `v` of job `jid` as Flink names vertices (32 hex digits).
fn vertex_id(jid: &str, v: usize) -> String {
    derived_id(&[jid, "vertex", &v.to_string()])
}

/// Job `id` and its vertex `vid`, or the response Flink gives (see [`find_job`]; 404
/// for an unknown vertex).
fn job_vertex<'a>(
    st: &'a crate::cluster::jobmanager::ClusterState,
    id: &str,
    vid: &str,
) -> Result<(&'a JobEntry, &'a VertexInfo), Box<Response>> {
    let j = find_job(st, id)?;
    let x = find_vertex(j, vid).ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            format!("JobVertex {vid} not found"),
        ))
    })?;
    Ok((j, x))
}

/// The vertex whose id is `vid` (its Flink id, or its index).
fn find_vertex<'a>(j: &'a JobEntry, vid: &str) -> Option<&'a VertexInfo> {
    j.vertices
        .iter()
        .find(|x| vertex_id(&j.id, x.id) == vid || x.id.to_string() == vid)
}

/// Flink's ExecutionState name of a subtask.
fn task_status(t: &TaskSlot) -> &'static str {
    match &t.state {
        None => "DEPLOYING",
        Some(TaskState::Running) => "RUNNING",
        Some(TaskState::Finished) => "FINISHED",
        Some(TaskState::Failed(_)) => "FAILED",
        Some(TaskState::Canceled) => "CANCELED",
    }
}

/// Every ExecutionState Flink counts.
const EXECUTION_STATES: [&str; 10] = [
    "CREATED",
    "SCHEDULED",
    "DEPLOYING",
    "INITIALIZING",
    "RUNNING",
    "FINISHED",
    "CANCELING",
    "CANCELED",
    "FAILED",
    "RECONCILING",
];

/// Subtasks per ExecutionState (upper case, as `status-counts` and a vertex's
/// `tasks`; lower case, as `/jobs/overview`'s `tasks`, with `total`).
fn state_counts<'a>(tasks: impl Iterator<Item = &'a TaskSlot>, lower: bool) -> Value {
    let mut counts: BTreeMap<&str, usize> = EXECUTION_STATES.iter().map(|s| (*s, 0)).collect();
    let mut total = 0;
    for t in tasks {
        *counts.entry(task_status(t)).or_default() += 1;
        total += 1;
    }
    let mut v = serde_json::Map::new();
    for (k, n) in counts {
        let k = if lower {
            k.to_ascii_lowercase()
        } else {
            k.to_string()
        };
        v.insert(k, json!(n));
    }
    if lower {
        v.insert("total".into(), json!(total));
    }
    Value::Object(v)
}

fn tasks_of(j: &JobEntry, v: usize) -> impl Iterator<Item = (&(u32, u32), &TaskSlot)> + Clone {
    j.tasks.iter().filter(move |(k, _)| k.0 as usize == v)
}

/// Flink's I/O metrics of a vertex or subtask. spate counts records, not bytes nor
/// busy and back-pressured time (yet): those read 0, with bytes marked incomplete.
fn io_metrics(records_in: u64, records_out: u64) -> Value {
    json!({
        "read-bytes": 0,
        "read-bytes-complete": false,
        "write-bytes": 0,
        "write-bytes-complete": false,
        "read-records": records_in,
        "read-records-complete": true,
        "write-records": records_out,
        "write-records-complete": true,
        "accumulated-backpressured-time": 0,
        "accumulated-idle-time": 0,
        "accumulated-busy-time": 0.0,
    })
}

/// A vertex's status from its subtasks' (Flink's aggregation: any failed, else any
/// running, else all finished or canceled).
fn vertex_status<'a>(tasks: impl Iterator<Item = &'a TaskSlot>) -> &'static str {
    let states: Vec<&str> = tasks.map(task_status).collect();
    let any = |s: &str| states.contains(&s);
    if states.is_empty() {
        "CREATED"
    } else if any("FAILED") {
        "FAILED"
    } else if any("RUNNING") {
        "RUNNING"
    } else if any("DEPLOYING") {
        "DEPLOYING"
    } else if any("CANCELED") {
        "CANCELED"
    } else {
        "FINISHED"
    }
}

/// Start, end (-1 while running) and duration of a vertex's or subtask's execution.
fn times<'a>(tasks: impl Iterator<Item = &'a TaskSlot> + Clone, now: u64) -> (u64, i64, u64) {
    let start = tasks.clone().map(|t| t.deployed_ms).min().unwrap_or(now);
    let ended = tasks
        .clone()
        .all(|t| t.state.as_ref().is_some_and(TaskState::is_terminal));
    let end = tasks.map(|t| t.state_since_ms).max().filter(|_| ended);
    let duration = end.unwrap_or(now).saturating_sub(start);
    (start, end.map_or(-1, |e| e as i64), duration)
}

fn job_summary(j: &JobEntry) -> Value {
    json!({
        "jid": j.id,
        "name": j.spec.job,
        "jobType": "STREAMING",
        "schedulerType": "Default",
        "state": j.state.name(),
        "start-time": j.start_epoch_ms,
        "end-time": j.end_epoch_ms.map_or(-1, |e| e as i64),
        "duration": duration(j),
        "last-modification": j.last_modification_ms(),
        "tasks": state_counts(j.tasks.values(), true),
        "pending-operators": 0,
    })
}

/// The job's dataflow plan as Flink's `plan`: a node per vertex with its inputs
/// (none for sources), sinks first as Flink lists them.
fn plan(j: &JobEntry) -> Value {
    let nodes: Vec<Value> = j
        .vertices
        .iter()
        .rev()
        .map(|x| {
            let inputs: Vec<Value> = j
                .plan_edges
                .iter()
                .filter(|e| e.1 == x.id)
                .enumerate()
                .map(|(num, e)| {
                    json!({
                        "num": num,
                        "id": vertex_id(&j.id, e.0),
                        "ship_strategy": e.2,
                        "exchange": "pipelined_bounded",
                    })
                })
                .collect();
            let mut node = json!({
                "id": vertex_id(&j.id, x.id),
                "parallelism": x.parallelism,
                "operator": "",
                "operator_strategy": "",
                "description": x.name,
                "optimizer_properties": {},
            });
            if !inputs.is_empty() {
                node["inputs"] = json!(inputs);
            }
            node
        })
        .collect();
    json!({ "jid": j.id, "name": j.spec.job, "type": "STREAMING", "nodes": nodes })
}

fn subtask_json(k: &(u32, u32), t: &TaskSlot, now: u64) -> Value {
    let (start, end, duration) = times(std::iter::once(t), now);
    let mut status_duration = serde_json::Map::new();
    for s in [
        "CREATED",
        "SCHEDULED",
        "DEPLOYING",
        "INITIALIZING",
        "RUNNING",
    ] {
        status_duration.insert(s.into(), json!(0));
    }
    status_duration.insert(
        task_status(t).into(),
        json!(now.saturating_sub(t.state_since_ms)),
    );
    json!({
        "subtask": k.1,
        "status": task_status(t),
        "attempt": t.execution,
        "endpoint": t.taskmanager.0,
        "start-time": start,
        "start_time": start,
        "end-time": end,
        "duration": duration,
        "metrics": io_metrics(t.records_in, t.records_out),
        "taskmanager-id": t.taskmanager.0,
        "slot": t.slot,
        "status-duration": status_duration,
    })
}

async fn job(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let now = epoch_ms();
    let mut v = job_summary(j);
    let o = v.as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut v = serde_json::Map::new();
    for (k, x) in o {
        // Flink's details name the job type `job-type`, its overview `jobType`.
        let k = if k == "jobType" { "job-type".into() } else { k };
        v.insert(k, x);
    }
    let mut v = Value::Object(v);
    v["application-id"] = json!(j.id);
    v["isStoppable"] = json!(false);
    v["maxParallelism"] = json!(j.max_parallelism);
    v["now"] = json!(now);
    let mut stamps = serde_json::Map::new();
    for s in [
        "INITIALIZING",
        "CREATED",
        "RUNNING",
        "FAILING",
        "CANCELLING",
        "CANCELED",
        "FAILED",
        "FINISHED",
        "RESTARTING",
        "SUSPENDED",
        "RECONCILING",
    ] {
        let at = match s {
            "INITIALIZING" => Some(j.start_epoch_ms),
            _ => j.timestamps.get(s).copied(),
        };
        stamps.insert(s.into(), json!(at.unwrap_or(0)));
    }
    v["timestamps"] = Value::Object(stamps);
    v["status-counts"] = state_counts(j.tasks.values(), false);
    v["plan"] = plan(j);
    v["restarts"] = json!(j.restarts);
    v["attempt"] = json!(j.attempt);
    v["vertices"] = json!(j
        .vertices
        .iter()
        .map(|x| {
            let tasks = tasks_of(j, x.id).map(|(_, t)| t);
            let (rin, rout) = tasks.clone().fold((0u64, 0u64), |a, t| {
                (a.0 + t.records_in, a.1 + t.records_out)
            });
            let (start, end, duration) = times(tasks.clone(), now);
            let subtasks: Vec<Value> = tasks_of(j, x.id)
                .map(|(k, t)| subtask_json(k, t, now))
                .collect();
            json!({
                "id": vertex_id(&j.id, x.id),
                "index": x.id,
                "slotSharingGroupId": derived_id(&[&j.id, "group", j.slot_sharing_group(x.id)]),
                "name": x.name,
                "maxParallelism": j.max_parallelism,
                "parallelism": x.parallelism,
                "status": vertex_status(tasks.clone()),
                "start-time": start,
                "end-time": end,
                "duration": duration,
                "tasks": state_counts(tasks, false),
                "metrics": io_metrics(rin, rout),
                "subtasks": subtasks,
            })
        })
        .collect::<Vec<_>>());
    Json(v).into_response()
}

/// Min, max, sum, average and percentiles of `values` (Flink's `aggregated`).
fn aggregate(mut values: Vec<u64>) -> Value {
    values.sort_unstable();
    let at = |q: f64| {
        values
            .get(((values.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let sum: u64 = values.iter().sum();
    json!({
        "min": values.first().copied().unwrap_or(0),
        "max": values.last().copied().unwrap_or(0),
        "sum": sum,
        "avg": if values.is_empty() { 0 } else { sum / values.len() as u64 },
        "median": at(0.5),
        "p25": at(0.25),
        "p75": at(0.75),
        "p95": at(0.95),
    })
}

/// Flink's `aggregated` block: the subtasks' I/O metrics and time in each state, as
/// statistics over `tasks`.
fn aggregated_of(tasks: &[&TaskSlot], now: u64) -> Value {
    let of = |f: &dyn Fn(&TaskSlot) -> u64| aggregate(tasks.iter().map(|t| f(t)).collect());
    let zero = |_: &TaskSlot| 0;
    let mut status_duration = serde_json::Map::new();
    for s in [
        "CREATED",
        "SCHEDULED",
        "DEPLOYING",
        "INITIALIZING",
        "RUNNING",
    ] {
        let d = |t: &TaskSlot| {
            if task_status(t) == s {
                now.saturating_sub(t.state_since_ms)
            } else {
                0
            }
        };
        status_duration.insert(s.into(), of(&d));
    }
    json!({
        "metrics": {
            "read-records": of(&|t| t.records_in),
            "write-records": of(&|t| t.records_out),
            "read-bytes": of(&zero),
            "write-bytes": of(&zero),
            "accumulated-backpressured-time": of(&zero),
            "accumulated-idle-time": of(&zero),
            "accumulated-busy-time": of(&zero),
        },
        "status-duration": status_duration,
    })
}

/// `GET /jobs/:id/vertices/:vid`: a vertex with its subtasks (Flink's
/// JobVertexDetailsInfo).
async fn vertex(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let now = epoch_ms();
    let subtasks: Vec<Value> = tasks_of(j, x.id)
        .map(|(k, t)| subtask_json(k, t, now))
        .collect();
    Json(json!({
        "id": vertex_id(&j.id, x.id),
        "name": x.name,
        "parallelism": x.parallelism,
        "maxParallelism": j.max_parallelism,
        "now": now,
        "subtasks": subtasks,
        "aggregated": aggregated_of(&tasks_of(j, x.id).map(|(_, t)| t).collect::<Vec<_>>(), now),
    }))
    .into_response()
}

async fn job_status(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    match find_job(&st, &id) {
        Ok(j) => Json(json!({ "status": j.state.name() })).into_response(),
        Err(r) => *r,
    }
}

/// A job's `SELECT` rows from number `from` on (spate's own endpoint: what `spate
/// run` and `spate sql` show of a query on a cluster): at most 10 000 per answer,
/// with the number to ask from next and how many rows the JobManager no longer holds.
async fn job_results(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let from = match q.get("from").map(|f| f.parse::<u64>()) {
        None => 0,
        Some(Ok(f)) => f,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "'from' takes a row number (0 or more)".to_string(),
            )
        }
    };
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let first = j.results_dropped;
    let end = first + j.results.len() as u64;
    let start = from.clamp(first, end);
    let lines: Vec<&String> = j
        .results
        .iter()
        .skip((start - first) as usize)
        .take(10_000)
        .collect();
    let next = start + lines.len() as u64;
    Json(json!({
        "from": start,
        "next": next,
        "dropped": first,
        "end": end,
        "lines": lines,
    }))
    .into_response()
}

async fn job_plan(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    match find_job(&st, &id) {
        Ok(j) => Json(json!({ "plan": plan(j) })).into_response(),
        Err(r) => *r,
    }
}

async fn job_config(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let user: serde_json::Map<String, Value> = j
        .spec
        .args
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("arg{i}"), json!(a)))
        .collect();
    Json(json!({
        "jid": j.id,
        "name": j.spec.job,
        "execution-config": {
            "restart-strategy": "Cluster level default restart strategy",
            "job-parallelism": j.vertices.iter().map(|v| v.parallelism).max().unwrap_or(1),
            "object-reuse-mode": false,
            "user-config": user,
        },
    }))
    .into_response()
}

/// `GET /jobs/:id/execution-result`: IN_PROGRESS until the job ended, then its
/// result (Flink's JobExecutionResultResponseBody).
async fn execution_result(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    if !j.state.is_terminal() {
        return Json(json!({ "status": { "id": "IN_PROGRESS" } })).into_response();
    }
    let mut result = json!({
        "id": j.id,
        "application-status": j.state.name(),
        "accumulator-results": {},
        "net-runtime": duration(j),
    });
    if j.state == JobState::Failed {
        let why = j
            .exceptions
            .last()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        result["failure-cause"] = json!({
            "class": "spate::JobFailed",
            "stack-trace": why,
            "serialized-throwable": null,
        });
    }
    Json(json!({ "status": { "id": "COMPLETED" }, "job-execution-result": result })).into_response()
}

async fn exceptions(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    let root = j.exceptions.last();
    // Newest first, as Flink's exception history lists them.
    let entries: Vec<Value> = j
        .exceptions
        .iter()
        .rev()
        .map(|e| {
            let (name, tm) = e.subtask.clone().unzip();
            json!({
                "exceptionName": "spate::TaskFailure",
                "stacktrace": e.message,
                "timestamp": e.timestamp_ms,
                "failureLabels": {},
                "taskName": name.unwrap_or_else(|| e.task.clone()),
                "endpoint": tm.clone(),
                "taskManagerId": tm,
                "concurrentExceptions": [],
            })
        })
        .collect();
    Json(json!({
        "exceptionHistory": { "entries": entries, "truncated": j.exceptions_truncated },
        "root-exception": root.map(|e| e.message.clone()),
        "timestamp": root.map(|e| e.timestamp_ms),
        "all-exceptions": j.exceptions.iter().map(|e| json!({
            "exception": e.message, "task": e.task, "timestamp": e.timestamp_ms,
        })).collect::<Vec<_>>(),
        "truncated": j.exceptions_truncated,
    }))
    .into_response()
}

/// `GET /applications/overview`: each job is an application of its own (as a job
/// submitted to a Flink 2.3 session cluster is).
async fn applications_overview(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    let apps: Vec<Value> = st
        .jobs
        .values()
        .map(|j| {
            json!({
                "id": j.id,
                "name": j.spec.job,
                "start-time": j.start_epoch_ms,
                "end-time": j.end_epoch_ms.map_or(-1, |e| e as i64),
                "duration": duration(j),
                "status": j.state.name(),
                "jobs": { j.state.name(): 1 },
            })
        })
        .collect();
    Json(json!({ "applications": apps }))
}

/// `GET /jobmanager/config`: the keys set (configuration file and `-D`), sensitive
/// values masked.
async fn jobmanager_config(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    let mut keys: BTreeMap<String, String> = st.config.shown().into_iter().collect();
    // The ports it serves on, whether set or taken by default.
    keys.entry("rest.port".into())
        .or_insert_with(|| st.config.rest_port.to_string());
    keys.entry("jobmanager.rpc.port".into())
        .or_insert_with(|| st.config.jobmanager_port.to_string());
    Json(json!(keys
        .into_iter()
        .map(|(k, v)| json!({ "key": k, "value": v }))
        .collect::<Vec<_>>()))
}

/// `GET /jobmanager/environment`: Flink shows its JVM; spate shows its build, the
/// machine's architecture and the JobManager's command line.
async fn jobmanager_environment() -> Json<Value> {
    Json(json!({
        "jvm": {
            "version": version(),
            "arch": std::env::consts::ARCH,
            "options": std::env::args().collect::<Vec<_>>(),
        },
        "classpath": [],
    }))
}

/// `GET /metrics`: the cluster's metrics in Prometheus's text format (see
/// [`crate::metrics`]): TaskManagers and slots, jobs by state, and per job its
/// restarts, checkpoints and each subtask's records; per TaskManager its network
/// agent's counters and heartbeat age.
async fn prometheus(State(st): State<SharedState>) -> Response {
    use crate::metrics::Exposition;
    let st = lock(&st);
    let mut e = Exposition::new();
    let now = st.now_ms();
    let slots: usize = st.taskmanagers.values().map(|t| t.slots.len()).sum();
    let free: usize = st
        .taskmanagers
        .values()
        .flat_map(|t| &t.slots)
        .filter(|s| s.job.is_none())
        .count();
    e.gauge(
        "spate_jobmanager_taskmanagers",
        "TaskManagers registered.",
        &[],
        st.taskmanagers.len() as f64,
    );
    e.gauge(
        "spate_jobmanager_task_slots",
        "Task slots registered.",
        &[],
        slots as f64,
    );
    e.gauge(
        "spate_jobmanager_task_slots_available",
        "Task slots free.",
        &[],
        free as f64,
    );
    for s in [
        JobState::Created,
        JobState::Running,
        JobState::Failing,
        JobState::Restarting,
        JobState::Cancelling,
        JobState::Canceled,
        JobState::Failed,
        JobState::Finished,
    ] {
        let n = st.jobs.values().filter(|j| j.state == s).count();
        e.gauge(
            "spate_jobmanager_jobs",
            "Jobs by state.",
            &[("state", s.name())],
            n as f64,
        );
    }
    for t in st.taskmanagers.values() {
        let tm = [("taskmanager", t.id.0.as_str())];
        let r = &t.network_report;
        e.gauge(
            "spate_taskmanager_heartbeat_age_seconds",
            "Time since the TaskManager's last heartbeat.",
            &tm,
            now.saturating_sub(t.last_heartbeat_ms) as f64 / 1e3,
        );
        crate::metrics::network(&mut e, &tm, r);
        for (slot, ratio) in &t.slot_busy {
            let slot = slot.to_string();
            e.gauge(
                "spate_taskmanager_slot_busy_ratio",
                "Share of time the slot's thread was working, between the TaskManager's last two reports.",
                &[("taskmanager", t.id.0.as_str()), ("slot", slot.as_str())],
                *ratio,
            );
        }
    }
    for j in st.jobs.values() {
        let job = [("job_id", j.id.as_str()), ("job_name", j.spec.job.as_str())];
        e.counter(
            "spate_job_restarts_total",
            "Restarts of the job.",
            &job,
            u64::from(j.restarts),
        );
        let c = j.coord.stats();
        for (result, n) in [
            ("completed", c.completed),
            ("failed", c.failed),
            ("aborted", c.aborted),
        ] {
            let mut l = job.to_vec();
            l.push(("result", result));
            e.counter(
                "spate_job_checkpoints_total",
                "Checkpoints by how they ended.",
                &l,
                n,
            );
        }
        e.gauge(
            "spate_job_last_checkpoint_duration_seconds",
            "Trigger to completion of the last completed checkpoint.",
            &job,
            c.last_duration_ms as f64 / 1e3,
        );
        e.gauge(
            "spate_job_last_checkpoint_size_bytes",
            "State size of the last completed checkpoint.",
            &job,
            c.last_size as f64,
        );
        if let Some(h) = j.latency() {
            crate::metrics::latency_summary(
                &mut e,
                "spate_job_latency_seconds",
                "End-to-end latency the job's latency sinks measured (source stamp to sink), over its life.",
                &job,
                &h,
            );
        }
        for ((v, s), t) in &j.tasks {
            let vertex = j.vertices.get(*v as usize);
            let vid = vertex_id(&j.id, *v as usize);
            let sub = s.to_string();
            let l = [
                ("job_id", j.id.as_str()),
                ("job_name", j.spec.job.as_str()),
                ("vertex_id", vid.as_str()),
                ("vertex_name", vertex.map_or("", |x| x.name.as_str())),
                ("subtask", sub.as_str()),
                ("taskmanager", t.taskmanager.0.as_str()),
            ];
            e.counter(
                "spate_task_records_in_total",
                "Records a subtask read from its input rings (as last reported).",
                &l,
                t.records_in,
            );
            e.counter(
                "spate_task_records_out_total",
                "Records a subtask wrote to its output rings (as last reported).",
                &l,
                t.records_out,
            );
            e.gauge(
                "spate_task_backpressure_ratio",
                "Share of samples with the subtask's output rings full, between its last two reports.",
                &l,
                t.current_backpressure(),
            );
            if let Some(h) = t
                .markers
                .as_ref()
                .and_then(|b| crate::cluster::decode_latency(b).ok())
            {
                crate::metrics::latency_summary(
                    &mut e,
                    "spate_task_marker_latency_seconds",
                    "How long after their sources emitted them latency markers reached the subtask (as last reported).",
                    &l,
                    &h,
                );
            }
            if t.watermark != 0 && t.watermark != spate_dataplane::operator::END_OF_TIME {
                e.gauge(
                    "spate_task_input_watermark_seconds",
                    "The subtask's inputs' combined watermark (event time).",
                    &l,
                    t.watermark as f64 / 1e9,
                );
            }
            crate::metrics::operator_times(
                &mut e,
                &l,
                "as last reported",
                t.operators.iter().map(|(name, h)| {
                    (
                        name.as_str(),
                        h.as_ref()
                            .and_then(|b| crate::cluster::decode_latency(b).ok()),
                    )
                }),
            );
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        e.render(),
    )
        .into_response()
}

/// Flink's metric lists: without `get`, the ids there are (`[{"id": ..}]`); with
/// `get=a,b`, those of them that exist with their values as strings.
fn metric_reply(q: &HashMap<String, String>, available: Vec<(String, f64)>) -> Value {
    match q.get("get") {
        None => json!(available
            .iter()
            .map(|(id, _)| json!({ "id": id }))
            .collect::<Vec<_>>()),
        Some(want) => {
            let want: Vec<&str> = want.split(',').map(str::trim).collect();
            json!(available
                .iter()
                .filter(|(id, _)| want.contains(&id.as_str()))
                .map(|(id, v)| json!({ "id": id, "value": v.to_string() }))
                .collect::<Vec<_>>())
        }
    }
}

/// Flink's aggregated metrics (over subtasks, jobs or TaskManagers): without `get`
/// the ids, with `get` each as min, max, avg, sum and skew (`agg` picks some).
fn aggregated_reply(q: &HashMap<String, String>, available: Vec<(String, Vec<f64>)>) -> Value {
    let Some(want) = q.get("get") else {
        return json!(available
            .iter()
            .map(|(id, _)| json!({ "id": id }))
            .collect::<Vec<_>>());
    };
    let want: Vec<&str> = want.split(',').map(str::trim).collect();
    let aggs: Vec<String> = q
        .get("agg")
        .map(|a| a.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_else(|| {
            ["min", "max", "avg", "sum", "skew"]
                .map(String::from)
                .to_vec()
        });
    json!(available
        .iter()
        .filter(|(id, _)| want.contains(&id.as_str()))
        .map(|(id, vs)| {
            let n = vs.len().max(1) as f64;
            let sum: f64 = vs.iter().sum();
            let min = vs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let avg = sum / n;
            let mut o = serde_json::Map::new();
            o.insert("id".into(), json!(id));
            for a in &aggs {
                let v = match a.as_str() {
                    "min" if !vs.is_empty() => min,
                    "max" if !vs.is_empty() => max,
                    "avg" => avg,
                    "sum" => sum,
                    // Flink's skew: how far the largest is above the average, in %.
                    "skew" if avg > 0.0 => (max - avg) / avg * 100.0,
                    "skew" | "min" | "max" => 0.0,
                    _ => continue,
                };
                o.insert(a.clone(), json!(v));
            }
            Value::Object(o)
        })
        .collect::<Vec<_>>())
}

fn vertex_records(j: &JobEntry, v: usize) -> Vec<(u32, u64, u64)> {
    tasks_of(j, v)
        .map(|(k, t)| (k.1, t.records_in, t.records_out))
        .collect()
}

/// `GET /jobs/:id/vertices/:vid/metrics`: per subtask `N.numRecordsIn` and
/// `N.numRecordsOut` (as Flink names them).
async fn vertex_metrics(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let mut available = Vec::new();
    for (s, rin, rout) in vertex_records(j, x.id) {
        available.push((format!("{s}.numRecordsIn"), rin as f64));
        available.push((format!("{s}.numRecordsOut"), rout as f64));
    }
    if let Some(h) = j.vertex_latency(Some(x.id as u32)) {
        available.extend(latency_values(Some(&h)));
    }
    if let Some(h) = j.vertex_marker_latency(x.id as u32) {
        available.extend(
            latency_values(Some(&h))
                .into_iter()
                .map(|(n, v)| (n.replacen("latency_", "latencyFromSource_", 1), v)),
        );
    }
    // Each operator of the chain: its own time per record on sampled batches (ns),
    // as `OPERATOR.timePerRecord_p50` ... (operators named as in the plan).
    for (op, h) in j.vertex_operator_times(x.id as u32) {
        available.extend(latency_values(Some(&h)).into_iter().map(|(n, v)| {
            (
                n.replacen("latency_", &format!("{op}.timePerRecord_"), 1),
                v,
            )
        }));
    }
    Json(metric_reply(&q, available)).into_response()
}

/// `GET /jobs/:id/latency-histogram` (spate's): the job's end-to-end latency as its
/// sinks recorded it, merged, as an uncompressed V2 HdrHistogram in base64 (what `spate
/// run -m --hlog` turns into an interval log); `null` while there is none.
async fn latency_histogram(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    use base64::Engine as _;
    let st = lock(&st);
    let Some(j) = st.jobs.get(&id) else {
        return error(StatusCode::NOT_FOUND, format!("Job {id} not found"));
    };
    let h = j.latency();
    let encoded = h.as_ref().and_then(crate::cluster::encode_latency);
    Json(json!({
        "encoding": "hdrhistogram-v2",
        "count": h.as_ref().map_or(0, |h| h.len()),
        "histogram": encoded.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    }))
    .into_response()
}

/// `GET /jobs/:id/vertices/:vid/subtasks/metrics`: `numRecordsIn` and
/// `numRecordsOut` aggregated over the vertex's subtasks.
async fn subtasks_metrics(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let recs = vertex_records(j, x.id);
    let available = vec![
        (
            "numRecordsIn".to_string(),
            recs.iter().map(|r| r.1 as f64).collect(),
        ),
        (
            "numRecordsOut".to_string(),
            recs.iter().map(|r| r.2 as f64).collect(),
        ),
    ];
    Json(aggregated_reply(&q, available)).into_response()
}

/// `GET /jobs/:id/vertices/:vid/subtasktimes`: when each subtask entered its states
/// (spate knows its deployment and its last change).
async fn subtask_times(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let now = epoch_ms();
    let subtasks: Vec<Value> = tasks_of(j, x.id)
        .map(|(k, t)| {
            let mut stamps: serde_json::Map<String, Value> = EXECUTION_STATES
                .iter()
                .map(|s| (s.to_string(), json!(0)))
                .collect();
            stamps.insert("DEPLOYING".into(), json!(t.deployed_ms));
            stamps.insert(task_status(t).into(), json!(t.state_since_ms));
            json!({
                "subtask": k.1,
                "endpoint": t.taskmanager.0,
                "duration": times(std::iter::once(t), now).2,
                "timestamps": stamps,
            })
        })
        .collect();
    Json(json!({ "id": vertex_id(&j.id, x.id), "name": x.name, "now": now, "subtasks": subtasks }))
        .into_response()
}

/// `GET /jobs/:id/vertices/:vid/taskmanagers`: the vertex's subtasks grouped by the
/// TaskManager they run on.
async fn vertex_taskmanagers(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let now = epoch_ms();
    let mut by_tm: BTreeMap<&str, Vec<&TaskSlot>> = BTreeMap::new();
    for (_, t) in tasks_of(j, x.id) {
        by_tm.entry(t.taskmanager.0.as_str()).or_default().push(t);
    }
    let tms: Vec<Value> = by_tm
        .into_iter()
        .map(|(tm, ts)| {
            let (start, end, duration) = times(ts.iter().copied(), now);
            let (rin, rout) = ts
                .iter()
                .fold((0, 0), |a, t| (a.0 + t.records_in, a.1 + t.records_out));
            let endpoint = st
                .taskmanagers
                .get(&crate::cluster::TaskManagerId(tm.to_string()))
                .map_or(tm.to_string(), |e| e.data_address.clone());
            json!({
                "endpoint": endpoint,
                "status": vertex_status(ts.iter().copied()),
                "start-time": start,
                "end-time": end,
                "duration": duration,
                "metrics": io_metrics(rin, rout),
                "status-counts": state_counts(ts.iter().copied(), false),
                "taskmanager-id": tm,
                "aggregated": aggregated_of(&ts, now),
            })
        })
        .collect();
    Json(json!({ "id": vertex_id(&j.id, x.id), "name": x.name, "now": now, "taskmanagers": tms }))
        .into_response()
}

/// `GET /jobs/:id/accumulators`: spate has no user accumulators; the lists are empty.
async fn accumulators(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    match find_job(&st, &id) {
        Ok(_) => Json(json!({
            "job-accumulators": [],
            "user-task-accumulators": [],
            "serialized-user-task-accumulators": {},
        }))
        .into_response(),
        Err(r) => *r,
    }
}

/// `GET /jobmanager/metrics`: the cluster's counts, as Flink names them.
async fn jobmanager_metrics(
    State(st): State<SharedState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let st = lock(&st);
    let total: usize = st.taskmanagers.values().map(|t| t.slots.len()).sum();
    let free = st
        .taskmanagers
        .values()
        .flat_map(|t| &t.slots)
        .filter(|s| s.job.is_none())
        .count();
    let running = st
        .jobs
        .values()
        .filter(|j| j.state == JobState::Running)
        .count();
    Json(metric_reply(
        &q,
        vec![
            (
                "numRegisteredTaskManagers".into(),
                st.taskmanagers.len() as f64,
            ),
            ("taskSlotsTotal".into(), total as f64),
            ("taskSlotsAvailable".into(), free as f64),
            ("numRunningJobs".into(), running as f64),
        ],
    ))
}

/// Per-job metrics as Flink names them.
fn job_metric_values(j: &JobEntry) -> Vec<(String, f64)> {
    let c = j.coord.stats();
    vec![
        ("numRestarts".into(), f64::from(j.restarts)),
        ("numberOfCompletedCheckpoints".into(), c.completed as f64),
        ("numberOfFailedCheckpoints".into(), c.failed as f64),
        ("totalNumberOfCheckpoints".into(), c.triggered as f64),
        ("lastCompletedCheckpointId".into(), c.last_id as f64),
        ("lastCheckpointDuration".into(), c.last_duration_ms as f64),
        ("lastCheckpointSize".into(), c.last_size as f64),
        ("uptime".into(), duration(j) as f64),
    ]
    .into_iter()
    .chain(latency_values(j.latency().as_ref()))
    .collect()
}

/// The quantiles a latency histogram is shown by, with the suffixes Flink gives a
/// histogram metric's values.
const LATENCY_QUANTILES: [(&str, f64); 4] = [
    ("p50", 0.5),
    ("p99", 0.99),
    ("p999", 0.999),
    ("p9999", 0.9999),
];

/// A latency histogram as metric values (ns), named as Flink names a histogram's
/// (`latency_p99`, ...); zeros while there is none.
fn latency_values(h: Option<&hdrhistogram::Histogram<u64>>) -> Vec<(String, f64)> {
    let count = h.map_or(0, hdrhistogram::Histogram::len);
    let pick = |f: &dyn Fn(&hdrhistogram::Histogram<u64>) -> f64| match h {
        Some(h) if count > 0 => f(h),
        _ => 0.0,
    };
    let mut out = vec![
        ("latency_count".to_string(), count as f64),
        ("latency_min".to_string(), pick(&|h| h.min() as f64)),
        ("latency_mean".to_string(), pick(&|h| h.mean())),
    ];
    for (name, q) in LATENCY_QUANTILES {
        out.push((
            format!("latency_{name}"),
            pick(&|h| h.value_at_quantile(q) as f64),
        ));
    }
    out.push(("latency_max".to_string(), pick(&|h| h.max() as f64)));
    out
}

/// `GET /jobs/:id/metrics`: the job's metrics (restarts, checkpoints, uptime and the
/// end-to-end latency its sinks measured, in ns).
async fn job_metrics(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = lock(&st);
    let j = match find_job(&st, &id) {
        Ok(j) => j,
        Err(r) => return *r,
    };
    Json(metric_reply(&q, job_metric_values(j))).into_response()
}

/// `GET /jobs/metrics`: job metrics aggregated over the jobs (`jobs=a,b` picks them).
async fn jobs_metrics(
    State(st): State<SharedState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let st = lock(&st);
    let pick: Option<Vec<&str>> = q.get("jobs").map(|s| s.split(',').map(str::trim).collect());
    let jobs: Vec<&JobEntry> = st
        .jobs
        .values()
        .filter(|j| pick.as_ref().is_none_or(|p| p.contains(&j.id.as_str())))
        .collect();
    let mut by_id: Vec<(String, Vec<f64>)> = Vec::new();
    for j in &jobs {
        for (id, v) in job_metric_values(j) {
            match by_id.iter_mut().find(|e| e.0 == id) {
                Some(e) => e.1.push(v),
                None => by_id.push((id, vec![v])),
            }
        }
    }
    if by_id.is_empty() {
        by_id = job_metric_values_names()
            .into_iter()
            .map(|n| (n, Vec::new()))
            .collect();
    }
    Json(aggregated_reply(&q, by_id))
}

fn job_metric_values_names() -> Vec<String> {
    [
        "numRestarts",
        "numberOfCompletedCheckpoints",
        "numberOfFailedCheckpoints",
        "totalNumberOfCheckpoints",
        "lastCompletedCheckpointId",
        "lastCheckpointDuration",
        "lastCheckpointSize",
        "uptime",
    ]
    .map(String::from)
    .into_iter()
    .chain(latency_values(None).into_iter().map(|(n, _)| n))
    .collect()
}

/// A TaskManager's metrics: slots and its network agent's counters.
fn tm_metric_values(t: &crate::cluster::jobmanager::TaskManagerEntry) -> Vec<(String, f64)> {
    let r = &t.network_report;
    let busy = t.slots.iter().filter(|s| s.job.is_some()).count();
    vec![
        ("Status.Slots.Total".into(), t.slots.len() as f64),
        ("Status.Slots.Busy".into(), busy as f64),
        ("Status.Network.Connections".into(), r.connections as f64),
        ("Status.Network.BytesReceived".into(), r.bytes_in as f64),
        ("Status.Network.BytesSent".into(), r.bytes_out as f64),
        ("Status.Network.FramesReceived".into(), r.frames_in as f64),
        ("Status.Network.FramesSent".into(), r.frames_out as f64),
        ("Status.Network.Failures".into(), r.failures as f64),
    ]
}

/// `GET /taskmanagers/metrics`: TaskManager metrics aggregated over them
/// (`taskmanagers=a,b` picks them).
async fn taskmanagers_metrics(
    State(st): State<SharedState>,
    Query(q): Query<HashMap<String, String>>,
) -> Json<Value> {
    let st = lock(&st);
    let pick: Option<Vec<&str>> = q
        .get("taskmanagers")
        .map(|s| s.split(',').map(str::trim).collect());
    let mut by_id: Vec<(String, Vec<f64>)> = Vec::new();
    for t in st
        .taskmanagers
        .values()
        .filter(|t| pick.as_ref().is_none_or(|p| p.contains(&t.id.0.as_str())))
    {
        for (id, v) in tm_metric_values(t) {
            match by_id.iter_mut().find(|e| e.0 == id) {
                Some(e) => e.1.push(v),
                None => by_id.push((id, vec![v])),
            }
        }
    }
    Json(aggregated_reply(&q, by_id))
}

/// `GET /taskmanagers/:id/metrics`.
async fn taskmanager_metrics(
    State(st): State<SharedState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = lock(&st);
    match st
        .taskmanagers
        .get(&crate::cluster::TaskManagerId(id.clone()))
    {
        Some(t) => Json(metric_reply(&q, tm_metric_values(t))).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("TaskManager {id} does not exist"),
        ),
    }
}

/// Flink's watermark value: milliseconds, `Long.MIN_VALUE` before the first (and for
/// sources, which have no input), `Long.MAX_VALUE` at the end of input.
fn flink_watermark(ns: u64) -> i64 {
    match ns {
        0 => i64::MIN,
        spate_dataplane::operator::END_OF_TIME => i64::MAX,
        ns => (ns / 1_000_000) as i64,
    }
}

/// `GET /jobs/:id/vertices/:vid/watermarks`: each subtask's input watermark, as
/// Flink's `N.currentInputWatermark` metrics (milliseconds).
async fn watermarks(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    Json(json!(tasks_of(j, x.id)
        .map(|(k, t)| json!({
            "id": format!("{}.currentInputWatermark", k.1),
            "value": flink_watermark(t.watermark).to_string(),
        }))
        .collect::<Vec<_>>()))
    .into_response()
}

/// Flink's back-pressure level of a ratio: at most 10 % ok, at most 50 % low, else high.
fn backpressure_level(ratio: f64) -> &'static str {
    if ratio <= 0.10 {
        "ok"
    } else if ratio <= 0.5 {
        "low"
    } else {
        "high"
    }
}

/// `GET /jobs/:id/vertices/:vid/backpressure`: per subtask, the share of the time
/// its output rings were full between its last two reports (sampled every 10 ms on
/// the slot, off the per-record path), and Flink's level of it.
async fn backpressure(
    State(st): State<SharedState>,
    Path((id, vid)): Path<(String, String)>,
) -> Response {
    let st = lock(&st);
    let (j, x) = match job_vertex(&st, &id, &vid) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let subtasks: Vec<Value> = tasks_of(j, x.id)
        .map(|(k, t)| {
            json!({
                "subtask": k.1,
                "attempt-number": t.attempt,
                "backpressure-level": backpressure_level(t.current_backpressure()),
                "ratio": t.current_backpressure(),
            })
        })
        .collect();
    let worst = tasks_of(j, x.id)
        .map(|(_, t)| t.current_backpressure())
        .fold(0.0, f64::max);
    let end = tasks_of(j, x.id)
        .map(|(_, t)| t.backpressure_at_ms)
        .max()
        .unwrap_or(0);
    Json(json!({
        "status": "ok",
        "backpressure-level": backpressure_level(worst),
        "end-timestamp": end,
        "subtasks": subtasks,
    }))
    .into_response()
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
        "features": {
            "web-submit": false,
            "web-cancel": true,
            "web-rescale": false,
            "web-history": false,
        },
        "jobmanager-id": st.jobmanager_id,
    }))
}

/// A TaskManager as Flink's TaskManagerInfo, with spate's own fields beside Flink's:
/// each slot's core and job, and the network agent's counters. Memory figures Flink
/// takes from its JVM and memory model spate has none of (-1), nor a JMX port (-1).
fn tm_json(
    t: &crate::cluster::jobmanager::TaskManagerEntry,
    now_ms: u64,
    now_epoch_ms: u64,
    detail: bool,
) -> Value {
    let free = t.slots.iter().filter(|s| s.job.is_none()).count();
    let resource = |slots: usize| {
        json!({
            "cpuCores": slots as f64,
            "taskHeapMemory": -1,
            "taskOffHeapMemory": -1,
            "managedMemory": -1,
            "networkMemory": -1,
            "extendedResources": {},
        })
    };
    let data_port = t
        .data_address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .map_or(-1, i64::from);
    let mut v = json!({
        "id": t.id.0,
        "path": format!("spate://{}/{}", t.host, t.id.0),
        "dataPort": data_port,
        "jmxPort": -1,
        // Flink's name, but an epoch time: when the last heartbeat came.
        "timeSinceLastHeartbeat": now_epoch_ms.saturating_sub(now_ms.saturating_sub(t.last_heartbeat_ms)),
        "slotsNumber": t.slots.len(),
        "freeSlots": free,
        "assignedTasks": t.slots.len() - free,
        "totalResource": resource(t.slots.len()),
        "freeResource": resource(free),
        "hardware": {
            "cpuCores": t.cores,
            "physicalMemory": -1,
            "freeMemory": -1,
            "managedMemory": -1,
        },
        "memoryConfiguration": {
            "frameworkHeap": -1, "taskHeap": -1, "frameworkOffHeap": -1, "taskOffHeap": -1,
            "networkMemory": -1, "managedMemory": -1, "jvmMetaspace": -1, "jvmOverhead": -1,
            "totalFlinkMemory": -1, "totalProcessMemory": -1,
        },
        "dataAddress": t.data_address,
        // Its clock against the JobManager's (what latencies across hosts are
        // corrected by): the offset it estimates and that estimate's uncertainty.
        "clock": {
            "sameAsJobManager": t.same_clock,
            "offsetNs": t.clock_offset.0,
            "uncertaintyNs": t.clock_offset.1,
        },
        "slots": t.slots.iter().map(|s| json!({
            "index": s.index, "core": s.core, "job": s.job,
            "busyRatio": t.slot_busy.get(&s.index).copied(),
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
    });
    if detail {
        let mut jobs: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &t.slots {
            if let Some(j) = &s.job {
                *jobs.entry(j.as_str()).or_default() += 1;
            }
        }
        v["allocatedSlots"] = json!(jobs
            .into_iter()
            .map(|(j, n)| json!({ "jobId": j, "resource": resource(n), "assignedTasks": n }))
            .collect::<Vec<_>>());
    }
    v
}

async fn taskmanagers(State(st): State<SharedState>) -> Json<Value> {
    let st = lock(&st);
    let now = st.now_ms();
    let epoch = epoch_ms();
    Json(json!({
        "taskmanagers": st.taskmanagers.values().map(|t| tm_json(t, now, epoch, false)).collect::<Vec<_>>(),
    }))
}

async fn taskmanager(State(st): State<SharedState>, Path(id): Path<String>) -> Response {
    let st = lock(&st);
    let now = st.now_ms();
    match st.taskmanagers.get(&TaskManagerId(id.clone())) {
        Some(t) => Json(tm_json(t, now, epoch_ms(), true)).into_response(),
        // Flink answers an unknown TaskManager with 500.
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
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
        Self::serve(addr, router(state, commands), "jobmanager-rest")
    }

    /// Serves `router` on `addr` from a thread named `name` with a runtime of its own.
    pub fn serve(addr: SocketAddr, router: Router, name: &str) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the HTTP runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serve HTTP");
                            return;
                        }
                    };
                    let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                        let _ = rx.await;
                    });
                    if let Err(e) = serve.await {
                        tracing::error!(error = %e, "HTTP server stopped");
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
