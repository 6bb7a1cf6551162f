//! The checkpoint coordinator and checkpoint storage (Flink's `CheckpointCoordinator`
//! and file-system checkpoint storage).
//!
//! The coordinator triggers checkpoint `n` every `execution.checkpointing.interval`
//! (respecting `min-pause` and `max-concurrent-checkpoints`) through the job's
//! [`CheckpointTrigger`], which the source tasks read; it collects every task's
//! [`CheckpointAck`]; when all running tasks acknowledged, the checkpoint is complete
//! and is written, on the coordinator's thread (never a slot's), under
//! `state.checkpoints.dir/<job id>/chk-<n>/`: one file per subtask with its operators'
//! states, then `_metadata`, written last and atomically (a temporary file, synced,
//! renamed): a directory without `_metadata` is never taken for a checkpoint. Without a
//! directory, completed checkpoints are kept in memory (as Flink's JobManager storage),
//! enough to restore after a failure of the same run.
//!
//! A checkpoint not complete within `execution.checkpointing.timeout` is aborted; more
//! than `tolerable-failed-checkpoints` failures in a row fail the job.
//!
//! With periodic checkpoints, a task whose input ended waits for a final checkpoint
//! (see `TaskCheckpointing::final_checkpoint`), which the coordinator triggers as soon
//! as it hears of such a task (not only when the interval is up); once that checkpoint
//! completed the task finishes, and later checkpoints carry the state it had then
//! (as Flink's finished operators). Without periodic checkpoints, nothing is triggered
//! after a task finished (its state at the end is unknown).

use crate::config::CheckpointConfig;
use crate::graph::JobGraph;
use crate::storage;
use spate_dataplane::checkpoint::{CheckpointAck, CheckpointTrigger, OperatorState};
use spate_dataplane::operator::BarrierKind;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name of a checkpoint's metadata file (as Flink's).
pub const METADATA_FILE: &str = "_metadata";
/// Format tag in the metadata.
const FORMAT: &str = "spate-checkpoint-1";
/// Magic at the head of a subtask's state file.
const STATE_FILE_MAGIC: &[u8; 8] = b"SPATECK1";

/// Why a checkpoint could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a checkpoint, or a damaged one.
    #[error("{path}: {why}")]
    Corrupt {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A checkpoint of another job, or of this job with another shape.
    #[error("cannot restore {path}: {why}")]
    Incompatible {
        /// The checkpoint's path.
        path: PathBuf,
        /// What differs.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A vertex as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VertexMeta {
    /// Vertex id.
    pub id: u32,
    /// Its name (the chained operators').
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
}

/// One subtask's state file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateFileMeta {
    /// Vertex id.
    pub vertex: u32,
    /// Subtask index.
    pub subtask: u32,
    /// File name in the checkpoint's directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// CRC-32 of the file.
    pub crc32: u32,
}

/// A checkpoint's `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointMetadata {
    /// Format tag.
    pub format: String,
    /// The job's name.
    pub job_name: String,
    /// The job's id.
    pub job_id: String,
    /// Checkpoint id.
    pub checkpoint_id: u64,
    /// `CHECKPOINT` or `SAVEPOINT`.
    pub kind: String,
    /// When it was triggered (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Trigger to completion (ms).
    pub duration_ms: u64,
    /// The job's vertices.
    pub vertices: Vec<VertexMeta>,
    /// State files.
    pub files: Vec<StateFileMeta>,
    /// The job's max parallelism (key groups) when it was taken (0 in checkpoints
    /// written before it was recorded: the default, 128).
    #[serde(default)]
    pub max_parallelism: u32,
}

/// A completed checkpoint: its metadata and every subtask's operator states.
#[derive(Debug, Clone)]
pub struct CompletedCheckpoint {
    /// Where it is stored (`None`: in memory only).
    pub path: Option<PathBuf>,
    /// Its metadata.
    pub meta: CheckpointMetadata,
    /// Operator states by (vertex, subtask), then by operator uid.
    pub states: HashMap<(u32, u32), HashMap<u32, Vec<u8>>>,
    /// Bytes of state.
    pub size: u64,
}

impl CompletedCheckpoint {
    /// The max parallelism the checkpoint was taken under.
    pub fn max_parallelism(&self) -> u32 {
        match self.meta.max_parallelism {
            0 => spate_dataplane::checkpoint::DEFAULT_MAX_PARALLELISM,
            m => m,
        }
    }

    /// The states of subtask `subtask` of `vertex`, now at parallelism `parallelism`,
    /// by operator uid. At the checkpoint's parallelism, the subtask's own; at another,
    /// every old subtask's state of each operator, of which a keyed operator keeps the
    /// keys of the new subtask's key groups and a non-keyed one (a source, a file sink)
    /// the old subtasks' states assigned to it (see
    /// [`spate_dataplane::checkpoint::shares`]).
    pub fn subtask_states(
        &self,
        vertex: u32,
        subtask: u32,
        parallelism: u32,
    ) -> HashMap<u32, Vec<u8>> {
        let was = self
            .meta
            .vertices
            .iter()
            .find(|v| v.id == vertex)
            .map_or(parallelism, |v| v.parallelism);
        if was == parallelism {
            return self
                .states
                .get(&(vertex, subtask))
                .cloned()
                .unwrap_or_default();
        }
        // The old subtasks' states, in subtask order (only those the checkpoint holds).
        let old: BTreeMap<u32, &HashMap<u32, Vec<u8>>> = self
            .states
            .iter()
            .filter(|((v, _), _)| *v == vertex)
            .map(|((_, s), states)| (*s, states))
            .collect();
        let mut parts: BTreeMap<u32, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        for (s, states) in &old {
            for (uid, bytes) in *states {
                parts.entry(*uid).or_default().push((*s, bytes.clone()));
            }
        }
        let range = spate_dataplane::checkpoint::KeyGroupRange {
            subtask,
            parallelism,
            max_parallelism: self.max_parallelism(),
        };
        parts
            .into_iter()
            .map(|(uid, p)| {
                let state = spate_dataplane::checkpoint::redistributed_state(range, &p);
                (uid, state)
            })
            .collect()
    }

    /// Checks that `job` can resume from this checkpoint: the same vertices (by name,
    /// in order) at the same parallelism.
    pub fn check_compatible(&self, job: &JobGraph) -> Result<(), CheckpointError> {
        let path = self.path.clone().unwrap_or_default();
        let bad = |why: String| CheckpointError::Incompatible {
            path: path.clone(),
            why,
        };
        let now = vertices_of(job);
        if self.meta.vertices.len() != now.len()
            || self
                .meta
                .vertices
                .iter()
                .zip(&now)
                .any(|(a, b)| a.name != b.name)
        {
            let ops = |v: &[VertexMeta]| -> Vec<String> {
                v.iter()
                    .flat_map(|v| v.name.split(" -> ").map(String::from))
                    .collect()
            };
            if ops(&self.meta.vertices) == ops(&now) {
                return Err(bad(format!(
                    "its operators are chained as [{}] and this job's as [{}] (at parallelism \
                     1 keyed operators chain): resume at a parallelism that keeps the chains, \
                     or disable chaining in both runs",
                    names(&self.meta.vertices),
                    names(&now)
                )));
            }
            return Err(bad(format!(
                "it is a checkpoint of job '{}' with operators [{}], not of this job's [{}]",
                self.meta.job_name,
                names(&self.meta.vertices),
                names(&now)
            )));
        }
        // Keyed state is kept and routed by key group: it redistributes to any
        // parallelism under the same number of key groups, and to none under another
        // (keys would reach other subtasks than the ones holding their state).
        if self.max_parallelism() != job.max_parallelism {
            return Err(bad(format!(
                "it was taken with max parallelism {} and the job now has {} (set \
                 pipeline.max-parallelism to {})",
                self.max_parallelism(),
                job.max_parallelism,
                self.max_parallelism()
            )));
        }
        Ok(())
    }
}

fn names(v: &[VertexMeta]) -> String {
    v.iter()
        .map(|v| v.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The job's vertices as a checkpoint records them.
pub fn vertices_of(job: &JobGraph) -> Vec<VertexMeta> {
    job.vertices
        .iter()
        .map(|v| VertexMeta {
            id: v.id as u32,
            name: v.name.clone(),
            parallelism: v.parallelism as u32,
        })
        .collect()
}

/// Writes a completed checkpoint under `job_dir` (`chk-<id>/`), metadata last.
pub fn write_checkpoint(
    job_dir: &Path,
    meta: &mut CheckpointMetadata,
    states: &HashMap<(u32, u32), HashMap<u32, Vec<u8>>>,
) -> Result<PathBuf, CheckpointError> {
    write_snapshot(
        &job_dir.join(format!("chk-{}", meta.checkpoint_id)),
        meta,
        states,
    )
}

/// Writes a checkpoint or savepoint into `dir` (created): the subtasks' state files,
/// then `_metadata`, last and atomically.
pub fn write_snapshot(
    dir: &Path,
    meta: &mut CheckpointMetadata,
    states: &HashMap<(u32, u32), HashMap<u32, Vec<u8>>>,
) -> Result<PathBuf, CheckpointError> {
    let dir = dir.to_path_buf();
    storage::create_dir_all(&dir).map_err(io(&dir))?;
    let mut keys: Vec<&(u32, u32)> = states.keys().collect();
    keys.sort_unstable();
    meta.files.clear();
    for &(v, s) in keys {
        let mut ops: Vec<(&u32, &Vec<u8>)> = states[&(v, s)].iter().collect();
        ops.sort_unstable_by_key(|(uid, _)| **uid);
        let mut bytes = STATE_FILE_MAGIC.to_vec();
        postcard::to_io(&ops, &mut bytes).map_err(|e| CheckpointError::Corrupt {
            path: dir.clone(),
            why: format!("encoding subtask state: {e}"),
        })?;
        let file = format!("v{v}-s{s}.state");
        let path = dir.join(&file);
        storage::write(&path, &bytes).map_err(io(&path))?;
        meta.files.push(StateFileMeta {
            vertex: v,
            subtask: s,
            file,
            size: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        });
    }
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| CheckpointError::Corrupt {
        path: dir.clone(),
        why: e.to_string(),
    })?;
    let fin = dir.join(METADATA_FILE);
    storage::write_atomic(&fin, &json).map_err(io(&fin))?;
    Ok(dir)
}

/// Reads the checkpoint at `path`: a `chk-<n>` directory, its `_metadata` file, or a
/// job's checkpoint directory (its latest complete checkpoint).
pub fn read_checkpoint(path: &Path) -> Result<CompletedCheckpoint, CheckpointError> {
    let meta_path = if path.file_name().is_some_and(|n| n == METADATA_FILE)
        || (!storage::is_remote(path) && path.is_file())
    {
        path.to_path_buf()
    } else if storage::exists(&path.join(METADATA_FILE)) {
        path.join(METADATA_FILE)
    } else {
        match latest_in(path)? {
            Some(p) => p.join(METADATA_FILE),
            None => {
                return Err(CheckpointError::Corrupt {
                    path: path.into(),
                    why: "no complete checkpoint here (no chk-*/_metadata)".into(),
                })
            }
        }
    };
    let dir = meta_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let raw = storage::read(&meta_path).map_err(io(&meta_path))?;
    let meta: CheckpointMetadata =
        serde_json::from_slice(&raw).map_err(|e| CheckpointError::Corrupt {
            path: meta_path.clone(),
            why: format!("not a spate checkpoint's metadata: {e}"),
        })?;
    if meta.format != FORMAT {
        return Err(CheckpointError::Corrupt {
            path: meta_path,
            why: format!("format '{}', expected '{FORMAT}'", meta.format),
        });
    }
    let mut states = HashMap::new();
    let mut size = 0;
    for f in &meta.files {
        if f.file.contains('/') || f.file.contains("..") {
            return Err(CheckpointError::Corrupt {
                path: meta_path,
                why: format!("state file name '{}' leaves the checkpoint", f.file),
            });
        }
        let p = dir.join(&f.file);
        let bytes = storage::read(&p).map_err(io(&p))?;
        let corrupt = |why: String| CheckpointError::Corrupt {
            path: p.clone(),
            why,
        };
        if bytes.len() as u64 != f.size || crc32fast::hash(&bytes) != f.crc32 {
            return Err(corrupt(format!(
                "{} bytes with CRC {:08x}; the metadata says {} bytes with CRC {:08x} \
                 (truncated or damaged)",
                bytes.len(),
                crc32fast::hash(&bytes),
                f.size,
                f.crc32
            )));
        }
        let body = bytes
            .strip_prefix(STATE_FILE_MAGIC)
            .ok_or_else(|| corrupt("not a spate state file".into()))?;
        let ops: Vec<OperatorState> =
            postcard::from_bytes(body).map_err(|e| corrupt(format!("decoding: {e}")))?;
        size += f.size;
        states.insert((f.vertex, f.subtask), ops.into_iter().collect());
    }
    Ok(CompletedCheckpoint {
        path: Some(dir),
        meta,
        states,
        size,
    })
}

/// The `chk-<n>` directories under `job_dir` that have a `_metadata`, highest first.
fn complete_in(job_dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    for name in storage::list(job_dir).map_err(io(job_dir))? {
        let Some(n) = name
            .strip_prefix("chk-")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let p = job_dir.join(&name);
        if storage::exists(&p.join(METADATA_FILE)) {
            found.push((n, p));
        }
    }
    found.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
    Ok(found)
}

/// The latest complete checkpoint under `job_dir`.
fn latest_in(job_dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    Ok(complete_in(job_dir)?.into_iter().next().map(|(_, p)| p))
}

/// Figures of a job's checkpoints (for the summary and the REST API).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointStats {
    /// Checkpoints triggered.
    pub triggered: u64,
    /// Completed.
    pub completed: u64,
    /// Failed (timed out, or could not be written).
    pub failed: u64,
    /// Aborted without counting as failures (a task finished or the job restarted).
    pub aborted: u64,
    /// The last completed checkpoint: id.
    pub last_id: u64,
    /// Its duration, trigger to completion (ms).
    pub last_duration_ms: u64,
    /// Its size (bytes of state).
    pub last_size: u64,
    /// Its longest barrier alignment in a task (ns).
    pub last_alignment_ns: u64,
    /// Its longest synchronous part in a task (ns): the states taken on a slot
    /// (written, or frozen for keyed state).
    pub last_sync_ns: u64,
    /// Its longest asynchronous part in a task (ns): frozen states encoded by the
    /// snapshot writer, off the slots' cores.
    pub last_async_ns: u64,
    /// Where it was written (empty: in memory).
    pub last_path: String,
    /// The checkpoint the job restored from last, if any.
    pub restored_id: Option<u64>,
    /// When it restored from it (ms since the epoch).
    pub restored_ms: u64,
    /// The most recent checkpoints, newest first (at most [`HISTORY`]).
    pub history: Vec<CheckpointRecord>,
}

impl CheckpointStats {
    fn record(&mut self, r: CheckpointRecord) {
        match self.history.iter_mut().find(|h| h.id == r.id) {
            Some(h) => *h = r,
            None => {
                self.history.insert(0, r);
                self.history.truncate(HISTORY);
            }
        }
    }

    fn update(&mut self, id: u64, f: impl FnOnce(&mut CheckpointRecord)) {
        if let Some(h) = self.history.iter_mut().find(|h| h.id == id) {
            f(h);
        }
    }
}

/// A checkpoint in flight.
#[derive(Debug)]
struct Pending {
    kind: BarrierKind,
    started: Instant,
    timestamp_ms: u64,
    awaiting: BTreeSet<(u32, u32)>,
    states: HashMap<(u32, u32), HashMap<u32, Vec<u8>>>,
    alignment_ns: u64,
    sync_ns: u64,
    async_ns: u64,
    /// A savepoint's target directory.
    target: Option<PathBuf>,
}

/// Checkpoints that may fail in a row while tasks wait for their final checkpoint,
/// when `tolerable-failed-checkpoints` is not set.
pub const FINAL_CHECKPOINT_ATTEMPTS: u32 = 3;

/// Where a savepoint stands (Flink's asynchronous operation result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointStatus {
    /// Its barrier is on its way.
    InProgress,
    /// Written to this directory.
    Completed(PathBuf),
    /// It failed, for this reason.
    Failed(String),
}

/// What the coordinator asks to be sent to tasks in other processes (a cluster's
/// TaskManagers); in one process, tasks read the shared trigger instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorMessage {
    /// Sources inject barrier `id`.
    Trigger {
        /// Checkpoint id.
        id: u64,
        /// Trigger time, ns since the Unix epoch.
        timestamp_ns: u64,
        /// Checkpoint or savepoint.
        kind: BarrierKind,
        /// The savepoint of a stop: sources emit nothing after its barrier.
        stop: bool,
    },
    /// Checkpoint `id` completed (two-phase-commit sinks commit).
    Completed {
        /// Checkpoint id.
        id: u64,
    },
    /// The stop savepoint `id` failed: sources go on.
    StopAborted {
        /// Savepoint id.
        id: u64,
    },
}

/// One checkpoint in the history (`/jobs/:id/checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRecord {
    /// Id.
    pub id: u64,
    /// `IN_PROGRESS`, `COMPLETED` or `FAILED`.
    pub status: &'static str,
    /// A savepoint.
    pub savepoint: bool,
    /// Trigger time, ms since the epoch.
    pub trigger_ms: u64,
    /// Latest acknowledgement, ms since the epoch (0: none yet).
    pub latest_ack_ms: u64,
    /// Bytes of state.
    pub size: u64,
    /// Trigger to completion (or failure), ms.
    pub duration_ms: u64,
    /// Subtasks of the job.
    pub num_subtasks: u64,
    /// Subtasks that acknowledged.
    pub acknowledged: u64,
    /// Longest alignment in a task, ns.
    pub alignment_ns: u64,
    /// Where it was written.
    pub path: Option<String>,
    /// Why it failed.
    pub failure: Option<String>,
}

/// Checkpoints kept in the history.
pub const HISTORY: usize = 10;

/// What the coordinator asks of the job's runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorVerdict {
    /// Go on.
    Continue,
    /// Too many checkpoints failed in a row: fail the job with this message.
    FailJob(String),
}

/// The checkpoint coordinator of one job.
pub struct CheckpointCoordinator {
    cfg: CheckpointConfig,
    job_name: String,
    job_id: String,
    vertices: Vec<VertexMeta>,
    trigger: Arc<CheckpointTrigger>,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    /// The running attempt's tasks.
    tasks: BTreeSet<(u32, u32)>,
    /// Tasks of the attempt that finished, with their states at the end (carried into
    /// every later checkpoint).
    finished: HashMap<(u32, u32), HashMap<u32, Vec<u8>>>,
    /// Without periodic checkpoints: a task finished, so none can be taken.
    any_finished: bool,
    /// Tasks that reached their end of input as last seen (see `CheckpointTrigger::ended`).
    ended_seen: u64,
    last_trigger: Option<Instant>,
    last_completion: Option<Instant>,
    consecutive_failures: u32,
    latest: Option<Arc<CompletedCheckpoint>>,
    stats: CheckpointStats,
    /// Messages for remote tasks (`None`: every task reads the trigger in-process).
    outbox: Option<Vec<CoordinatorMessage>>,
    /// How savepoints ended: their directory, or why they failed.
    savepoints: BTreeMap<u64, Result<PathBuf, String>>,
    /// The job's max parallelism (recorded in every checkpoint).
    max_parallelism: u32,
    /// The savepoint of a stop in flight: its sources emit nothing after its barrier.
    stop_savepoint: Option<u64>,
}

impl std::fmt::Debug for CheckpointCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointCoordinator")
            .field("job_id", &self.job_id)
            .field("next_id", &self.next_id)
            .field("pending", &self.pending.len())
            .finish()
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CheckpointCoordinator {
    /// The coordinator of `job` (id `job_id`), under `cfg`.
    pub fn new(cfg: &CheckpointConfig, job: &JobGraph, job_id: &str) -> Self {
        let mut c = Self::of_vertices(cfg, &job.job_name, vertices_of(job), job_id);
        c.max_parallelism = job.max_parallelism;
        c
    }

    fn of_vertices(
        cfg: &CheckpointConfig,
        job_name: &str,
        vertices: Vec<VertexMeta>,
        job_id: &str,
    ) -> Self {
        Self {
            cfg: cfg.clone(),
            job_name: job_name.into(),
            job_id: job_id.into(),
            vertices,
            trigger: CheckpointTrigger::new(),
            next_id: 1,
            pending: BTreeMap::new(),
            tasks: BTreeSet::new(),
            finished: HashMap::new(),
            any_finished: false,
            ended_seen: 0,
            last_trigger: None,
            last_completion: None,
            consecutive_failures: 0,
            latest: None,
            stats: CheckpointStats::default(),
            outbox: None,
            savepoints: BTreeMap::new(),
            max_parallelism: spate_dataplane::checkpoint::DEFAULT_MAX_PARALLELISM,
            stop_savepoint: None,
        }
    }

    /// Keeps what tasks in other processes must hear (triggers and completions) for
    /// [`Self::take_messages`].
    pub fn with_remote_tasks(mut self) -> Self {
        self.outbox = Some(Vec::new());
        self
    }

    /// What to send to the tasks since the last call.
    pub fn take_messages(&mut self) -> Vec<CoordinatorMessage> {
        self.outbox.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn send(&mut self, m: CoordinatorMessage) {
        if let Some(o) = self.outbox.as_mut() {
            o.push(m);
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &CheckpointConfig {
        &self.cfg
    }

    /// Checkpoints in flight.
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }

    /// Whether periodic checkpoints are on.
    pub fn periodic(&self) -> bool {
        self.cfg.interval.is_some()
    }

    /// Whether barriers are aligned (exactly-once).
    pub fn exactly_once(&self) -> bool {
        self.cfg.exactly_once
    }

    /// Where this job's checkpoints go (`None`: memory).
    pub fn job_dir(&self) -> Option<PathBuf> {
        self.cfg.dir.as_ref().map(|d| d.join(&self.job_id))
    }

    /// Resumes from `cp` (a checkpoint or savepoint given by the user, or the latest):
    /// later ids are above its.
    pub fn restore_from(&mut self, cp: Arc<CompletedCheckpoint>) {
        self.next_id = self.next_id.max(cp.meta.checkpoint_id + 1);
        self.stats.restored_id = Some(cp.meta.checkpoint_id);
        self.stats.restored_ms = epoch_ms();
        self.latest = Some(cp);
    }

    /// The latest completed checkpoint (what a restart restores).
    pub fn latest(&self) -> Option<Arc<CompletedCheckpoint>> {
        self.latest.clone()
    }

    /// A new attempt of the job starts with these tasks: checkpoints in flight are
    /// aborted, and sources read a fresh trigger.
    pub fn start_attempt(&mut self, tasks: impl IntoIterator<Item = (u32, u32)>) {
        self.abort_pending("the job restarted");
        self.tasks = tasks.into_iter().collect();
        self.finished.clear();
        self.any_finished = false;
        self.trigger = CheckpointTrigger::new();
        self.ended_seen = 0;
        self.last_trigger = Some(Instant::now());
        if let Some(cp) = &self.latest {
            self.stats.restored_id = Some(cp.meta.checkpoint_id);
            self.stats.restored_ms = epoch_ms();
        }
    }

    /// Aborts the checkpoints in flight (they do not count as failures).
    pub fn abort_pending(&mut self, why: &str) {
        self.stats.aborted += self.pending.len() as u64;
        for (id, p) in std::mem::take(&mut self.pending) {
            let d = p.started.elapsed().as_millis() as u64;
            let why = format!("aborted: {why}");
            self.stats.update(id, |h| {
                h.status = "FAILED";
                h.duration_ms = d;
                h.failure = Some(why.clone());
            });
            if p.kind == BarrierKind::Savepoint {
                self.savepoint_failed(id, why);
            }
        }
    }

    /// Task `(vertex, subtask)` declined checkpoint `id` (it could not take part):
    /// the checkpoint fails.
    pub fn decline(&mut self, id: u64, vertex: u32, subtask: u32, why: &str) -> CoordinatorVerdict {
        let Some(p) = self.pending.remove(&id) else {
            return CoordinatorVerdict::Continue;
        };
        tracing::warn!(checkpoint = id, vertex, subtask, reason = %why, "checkpoint declined");
        let d = p.started.elapsed().as_millis() as u64;
        let why = format!("subtask {subtask} of vertex {vertex} declined: {why}");
        self.stats.update(id, |h| {
            h.status = "FAILED";
            h.duration_ms = d;
            h.failure = Some(why.clone());
        });
        self.failed(id, p.kind, &why)
    }

    /// The trigger the running attempt's sources read.
    pub fn trigger(&self) -> Arc<CheckpointTrigger> {
        self.trigger.clone()
    }

    /// The figures so far.
    pub fn stats(&self) -> &CheckpointStats {
        &self.stats
    }

    /// How long until the coordinator has something to do (a trigger or a timeout).
    pub fn next_wakeup(&self, now: Instant) -> Option<Duration> {
        let mut at: Option<Instant> = self
            .pending
            .values()
            .map(|p| p.started + self.cfg.timeout)
            .min();
        if let Some(due) = self.next_trigger_at(now) {
            at = Some(at.map_or(due, |a| a.min(due)));
        }
        at.map(|a| a.saturating_duration_since(now))
    }

    /// When the next periodic checkpoint is due, as of `now` (the caller's clock: a
    /// due time of "now" must compare as due with it).
    fn next_trigger_at(&self, now: Instant) -> Option<Instant> {
        let interval = self.cfg.interval?;
        if self.any_finished || self.pending.len() >= self.cfg.max_concurrent {
            return None;
        }
        // Sources read only the newest request: a checkpoint triggered now would make
        // those that have not yet injected a savepoint's barrier skip it, and the
        // savepoint could never complete.
        if self
            .pending
            .values()
            .any(|p| p.kind == BarrierKind::Savepoint)
        {
            return None;
        }
        let mut due = self.last_trigger.map_or(now, |t| t + interval);
        if self.trigger.ended() > self.ended_seen {
            // A task waits for its final checkpoint: the job's end is not held up by
            // the interval.
            due = due.min(now);
        }
        if let Some(c) = self.last_completion {
            due = due.max(c + self.cfg.min_pause);
        }
        Some(due)
    }

    /// Triggers a checkpoint when one is due and aborts those that timed out.
    pub fn poll(&mut self, now: Instant) -> CoordinatorVerdict {
        let timed_out: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= self.cfg.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            let d = self.cfg.timeout.as_millis() as u64;
            self.stats.update(id, |h| {
                h.status = "FAILED";
                h.duration_ms = d;
                h.failure = Some("expired before completing".into());
            });
            tracing::warn!(
                checkpoint = id,
                timeout = ?self.cfg.timeout,
                "checkpoint expired before completing"
            );
            if let CoordinatorVerdict::FailJob(m) = self.failed(id, p.kind, "it expired") {
                return CoordinatorVerdict::FailJob(m);
            }
        }
        if self.next_trigger_at(now).is_some_and(|due| due <= now) {
            self.trigger_now(BarrierKind::Checkpoint, now);
        }
        CoordinatorVerdict::Continue
    }

    /// Savepoint `id` failed (its first reason is kept for its status); if it was a
    /// stop's, the sources go on.
    fn savepoint_failed(&mut self, id: u64, why: String) {
        self.savepoints.entry(id).or_insert(Err(why));
        if self.stop_savepoint == Some(id) {
            self.stop_savepoint = None;
            self.trigger.abort_stop(id);
            self.send(CoordinatorMessage::StopAborted { id });
        }
    }

    /// Triggers checkpoint (or savepoint) now; returns its id, or `None` when no
    /// checkpoint can be taken (no running tasks, or one finished).
    pub fn trigger_now(&mut self, kind: BarrierKind, now: Instant) -> Option<u64> {
        self.trigger_with(kind, false, now)
    }

    fn trigger_with(&mut self, kind: BarrierKind, stop: bool, now: Instant) -> Option<u64> {
        if self.tasks.is_empty() || self.any_finished {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.last_trigger = Some(now);
        self.ended_seen = self.trigger.ended();
        let ts = epoch_ms();
        self.pending.insert(
            id,
            Pending {
                kind,
                started: now,
                timestamp_ms: ts,
                awaiting: self.tasks.clone(),
                states: self.finished.clone(),
                alignment_ns: 0,
                sync_ns: 0,
                async_ns: 0,
                target: None,
            },
        );
        self.stats.triggered += 1;
        self.stats.record(CheckpointRecord {
            id,
            status: "IN_PROGRESS",
            savepoint: kind == BarrierKind::Savepoint,
            trigger_ms: ts,
            latest_ack_ms: 0,
            size: 0,
            duration_ms: 0,
            num_subtasks: (self.tasks.len() + self.finished.len()) as u64,
            acknowledged: self.finished.len() as u64,
            alignment_ns: 0,
            path: None,
            failure: None,
        });
        let timestamp_ns = ts.saturating_mul(1_000_000);
        if stop {
            self.stop_savepoint = Some(id);
            self.trigger.request_stop(id, timestamp_ns);
        } else {
            self.trigger.request(id, timestamp_ns, kind);
        }
        self.send(CoordinatorMessage::Trigger {
            id,
            timestamp_ns,
            kind,
            stop,
        });
        tracing::debug!(checkpoint = id, "checkpoint triggered");
        Some(id)
    }

    /// A failed checkpoint: counts it, and fails the job past the tolerable number.
    /// A failed savepoint is the user's to retry and does not count (as in Flink).
    /// While tasks wait for their final checkpoint (the job is draining), at most
    /// [`FINAL_CHECKPOINT_ATTEMPTS`] may fail in a row even when no number is set:
    /// otherwise a job whose checkpoints cannot succeed would never end.
    fn failed(&mut self, id: u64, kind: BarrierKind, why: &str) -> CoordinatorVerdict {
        self.stats.failed += 1;
        if kind == BarrierKind::Savepoint {
            self.savepoint_failed(id, why.to_string());
            return CoordinatorVerdict::Continue;
        }
        self.consecutive_failures += 1;
        let draining = self.periodic() && self.trigger.ended() > 0 && !self.tasks.is_empty();
        match self.cfg.tolerable_failures {
            Some(n) if self.consecutive_failures > n => CoordinatorVerdict::FailJob(format!(
                "checkpoint {id} failed ({why}): {} checkpoints failed in a row, more than \
                 execution.checkpointing.tolerable-failed-checkpoints ({n})",
                self.consecutive_failures
            )),
            None if draining && self.consecutive_failures >= FINAL_CHECKPOINT_ATTEMPTS => {
                CoordinatorVerdict::FailJob(format!(
                    "checkpoint {id} failed ({why}): tasks that reached the end of their \
                     input wait for a final checkpoint, and {} checkpoints failed in a row",
                    self.consecutive_failures
                ))
            }
            _ => CoordinatorVerdict::Continue,
        }
    }

    /// Triggers a savepoint now, to be written under `target` as
    /// `savepoint-<job id prefix>-<random>` (as Flink names them); returns its id.
    /// With `stop` it is a stop's (Flink's synchronous savepoint): the sources emit
    /// nothing after its barrier, so that cancelling the job once it completed loses
    /// and repeats nothing; if it fails they go on.
    pub fn trigger_savepoint(
        &mut self,
        target: &Path,
        stop: bool,
        now: Instant,
    ) -> Result<u64, String> {
        if !storage::is_absolute(target) {
            return Err(format!(
                "the savepoint directory {} is not an absolute path",
                target.display()
            ));
        }
        if self.any_finished {
            return Err("a task of the job has finished: no savepoint can be taken".into());
        }
        let id = self
            .trigger_with(BarrierKind::Savepoint, stop, now)
            .ok_or("the job has no running tasks")?;
        if let Some(p) = self.pending.get_mut(&id) {
            p.target = Some(target.to_path_buf());
        }
        tracing::info!(savepoint = id, target = %target.display(), "savepoint triggered");
        Ok(id)
    }

    /// Where savepoint `id` stands (`None`: no savepoint of that id was triggered).
    pub fn savepoint_status(&self, id: u64) -> Option<SavepointStatus> {
        if let Some(p) = self.pending.get(&id) {
            return (p.kind == BarrierKind::Savepoint).then_some(SavepointStatus::InProgress);
        }
        if let Some(r) = self.savepoints.get(&id) {
            return Some(match r {
                Ok(p) => SavepointStatus::Completed(p.clone()),
                Err(e) => SavepointStatus::Failed(e.clone()),
            });
        }
        let h = self
            .stats
            .history
            .iter()
            .find(|h| h.id == id && h.savepoint)?;
        Some(SavepointStatus::Failed(
            h.failure
                .clone()
                .unwrap_or_else(|| "the savepoint was aborted".into()),
        ))
    }

    /// A task finished. With periodic checkpoints it did so once a checkpoint it took
    /// after its end of input completed: its state there is its final one, which
    /// checkpoints in flight and later ones take in place of its acknowledgement.
    /// Without, no checkpoint can complete or start from now on.
    pub fn task_finished(&mut self, vertex: u32, subtask: u32) -> CoordinatorVerdict {
        let task = (vertex, subtask);
        if !self.tasks.remove(&task) {
            return CoordinatorVerdict::Continue;
        }
        if !self.periodic() {
            self.any_finished = true;
            if !self.pending.is_empty() {
                tracing::debug!(
                    pending = self.pending.len(),
                    "checkpoints aborted: a task finished"
                );
            }
            self.abort_pending("a task finished");
            return CoordinatorVerdict::Continue;
        }
        let states = self
            .latest
            .as_ref()
            .and_then(|c| c.states.get(&task).cloned())
            .unwrap_or_default();
        let mut done = Vec::new();
        for (id, p) in &mut self.pending {
            if p.awaiting.remove(&task) {
                if !states.is_empty() {
                    p.states.insert(task, states.clone());
                }
                if p.awaiting.is_empty() {
                    done.push(*id);
                }
            }
        }
        if !states.is_empty() {
            self.finished.insert(task, states);
        }
        for id in done {
            if let Some(p) = self.pending.remove(&id) {
                if let CoordinatorVerdict::FailJob(m) = self.complete(id, p) {
                    return CoordinatorVerdict::FailJob(m);
                }
            }
        }
        CoordinatorVerdict::Continue
    }

    /// A task in another process reached its end of input and waits for its final
    /// checkpoint (one triggers without waiting for the interval).
    pub fn task_ended(&self) {
        self.trigger.task_ended();
    }

    /// A task acknowledged a checkpoint; when it was the last acknowledgement the
    /// checkpoint waited for, the checkpoint is written and tasks are told it
    /// completed. Returns the verdict on the job (a failed write counts as a failed
    /// checkpoint).
    pub fn acknowledge(&mut self, ack: CheckpointAck) -> CoordinatorVerdict {
        let task = (ack.vertex, ack.subtask);
        if let Some(why) = &ack.declined {
            let awaited = self
                .pending
                .get(&ack.checkpoint_id)
                .is_some_and(|p| p.awaiting.contains(&task));
            if !awaited {
                return CoordinatorVerdict::Continue; // of an aborted checkpoint
            }
            return self.decline(ack.checkpoint_id, ack.vertex, ack.subtask, why);
        }
        let Some(p) = self.pending.get_mut(&ack.checkpoint_id) else {
            return CoordinatorVerdict::Continue; // of an aborted checkpoint
        };
        if !p.awaiting.remove(&task) {
            return CoordinatorVerdict::Continue;
        }
        p.alignment_ns = p.alignment_ns.max(ack.alignment_ns);
        p.sync_ns = p.sync_ns.max(ack.sync_ns);
        p.async_ns = p.async_ns.max(ack.async_ns);
        let (size, alignment) = (
            ack.states.iter().map(|s| s.1.len() as u64).sum::<u64>(),
            p.alignment_ns,
        );
        self.stats.update(ack.checkpoint_id, |h| {
            h.acknowledged += 1;
            h.latest_ack_ms = epoch_ms();
            h.size += size;
            h.alignment_ns = alignment;
        });
        if !ack.states.is_empty() {
            p.states.insert(task, ack.states.into_iter().collect());
        }
        if !p.awaiting.is_empty() {
            return CoordinatorVerdict::Continue;
        }
        let id = ack.checkpoint_id;
        let Some(p) = self.pending.remove(&id) else {
            return CoordinatorVerdict::Continue;
        };
        self.complete(id, p)
    }

    fn complete(&mut self, id: u64, p: Pending) -> CoordinatorVerdict {
        let now = Instant::now();
        let duration = now.duration_since(p.started);
        let mut meta = CheckpointMetadata {
            format: FORMAT.into(),
            job_name: self.job_name.clone(),
            job_id: self.job_id.clone(),
            checkpoint_id: id,
            kind: match p.kind {
                BarrierKind::Checkpoint => "CHECKPOINT",
                BarrierKind::Savepoint => "SAVEPOINT",
            }
            .into(),
            timestamp_ms: p.timestamp_ms,
            duration_ms: duration.as_millis() as u64,
            vertices: self.vertices.clone(),
            files: Vec::new(),
            max_parallelism: self.max_parallelism,
        };
        let size: u64 = p
            .states
            .values()
            .flat_map(|m| m.values())
            .map(|b| b.len() as u64)
            .sum();
        let written = match (&p.target, self.job_dir()) {
            (Some(target), _) => {
                let name = format!(
                    "savepoint-{}-{}",
                    &self.job_id[..self.job_id.len().min(6)],
                    &crate::cluster::new_id()[..12]
                );
                let dir = target.join(name);
                let r = write_snapshot(&dir, &mut meta, &p.states);
                self.savepoints.insert(
                    id,
                    r.as_ref().map(Clone::clone).map_err(ToString::to_string),
                );
                Some((r, dir))
            }
            (None, Some(dir)) => {
                let r = write_checkpoint(&dir, &mut meta, &p.states);
                if r.is_ok() {
                    self.retain(&dir);
                }
                Some((r, dir.join(format!("chk-{id}"))))
            }
            (None, None) => None,
        };
        let path = match written {
            None => None,
            Some((Ok(path), _)) => Some(path),
            Some((Err(e), dir)) => {
                tracing::warn!(checkpoint = id, error = %e, "checkpoint could not be written");
                let _ = storage::remove_dir_all(&dir);
                let (d, why) = (duration.as_millis() as u64, e.to_string());
                self.stats.update(id, |h| {
                    h.status = "FAILED";
                    h.duration_ms = d;
                    h.failure = Some(why.clone());
                });
                return self.failed(id, p.kind, &why);
            }
        };
        // Older checkpoints still in flight are subsumed (savepoints are not: the user
        // waits for each).
        let older: Vec<u64> = self
            .pending
            .range(..id)
            .filter(|(_, p)| p.kind == BarrierKind::Checkpoint)
            .map(|(k, _)| *k)
            .collect();
        for k in older {
            self.pending.remove(&k);
            self.stats.aborted += 1;
            self.stats.update(k, |h| {
                h.status = "FAILED";
                h.failure = Some(format!("subsumed by checkpoint {id}"));
            });
        }
        self.consecutive_failures = 0;
        self.last_completion = Some(now);
        if self.stop_savepoint == Some(id) {
            self.stop_savepoint = None;
        }
        // Two-phase-commit sinks commit what this checkpoint's barrier closed.
        self.trigger.complete(id);
        self.send(CoordinatorMessage::Completed { id });
        let (d, path_s) = (
            duration.as_millis() as u64,
            path.as_ref().map(|p| p.display().to_string()),
        );
        self.stats.update(id, |h| {
            h.status = "COMPLETED";
            h.duration_ms = d;
            h.size = size;
            h.path = path_s;
        });
        self.stats.completed += 1;
        self.stats.last_id = id;
        self.stats.last_duration_ms = duration.as_millis() as u64;
        self.stats.last_size = size;
        self.stats.last_alignment_ns = p.alignment_ns;
        self.stats.last_sync_ns = p.sync_ns;
        self.stats.last_async_ns = p.async_ns;
        self.stats.last_path = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        tracing::info!(
            checkpoint = id,
            ms = duration.as_millis() as u64,
            bytes = size,
            "checkpoint completed"
        );
        self.latest = Some(Arc::new(CompletedCheckpoint {
            path,
            meta,
            states: p.states,
            size,
        }));
        CoordinatorVerdict::Continue
    }

    /// Keeps the `num-retained` newest complete checkpoints of the job, and removes
    /// incomplete ones older than the newest complete one.
    fn retain(&self, job_dir: &Path) {
        let Ok(complete) = complete_in(job_dir) else {
            return;
        };
        let newest = complete.first().map_or(0, |c| c.0);
        for (_, p) in complete.iter().skip(self.cfg.num_retained) {
            let _ = storage::remove_dir_all(p);
        }
        for name in storage::list(job_dir).unwrap_or_default() {
            if let Some(n) = name
                .strip_prefix("chk-")
                .and_then(|n| n.parse::<u64>().ok())
            {
                let p = job_dir.join(&name);
                if n < newest && !storage::exists(&p.join(METADATA_FILE)) {
                    let _ = storage::remove_dir_all(&p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta(id: u64) -> CheckpointMetadata {
        CheckpointMetadata {
            format: FORMAT.into(),
            job_name: "j".into(),
            job_id: "x".into(),
            checkpoint_id: id,
            kind: "CHECKPOINT".into(),
            timestamp_ms: 1,
            duration_ms: 2,
            vertices: vec![VertexMeta {
                id: 0,
                name: "v".into(),
                parallelism: 1,
            }],
            files: vec![],
            max_parallelism: 128,
        }
    }

    fn states() -> HashMap<(u32, u32), HashMap<u32, Vec<u8>>> {
        HashMap::from([((0, 0), HashMap::from([(1, vec![1, 2, 3]), (2, vec![4])]))])
    }

    fn coordinator(interval_ms: Option<u64>, tolerable: Option<u32>) -> CheckpointCoordinator {
        let cfg = CheckpointConfig {
            interval: interval_ms.map(Duration::from_millis),
            max_concurrent: 2,
            tolerable_failures: tolerable,
            ..CheckpointConfig::default()
        };
        let v = meta(1).vertices;
        let mut c = CheckpointCoordinator::of_vertices(&cfg, "j", v, "0123456789abcdef");
        c.start_attempt([(0, 0), (0, 1)]);
        c
    }

    fn ack(id: u64, subtask: u32) -> CheckpointAck {
        CheckpointAck {
            checkpoint_id: id,
            vertex: 0,
            subtask,
            states: vec![(1, vec![subtask as u8])],
            alignment_ns: 0,
            sync_ns: 0,
            async_ns: 0,
            declined: None,
        }
    }

    /// Regression (review): with two checkpoints allowed in flight, a periodic one
    /// triggered behind a savepoint made sources skip the savepoint's barrier, and
    /// its completion then subsumed the savepoint.
    #[test]
    fn a_savepoint_is_neither_overtaken_nor_subsumed_by_periodic_checkpoints() {
        let mut c = coordinator(Some(10), None);
        let d = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let sp = c.trigger_savepoint(d.path(), false, t0).unwrap();
        assert!(
            c.next_trigger_at(t0).is_none(),
            "no checkpoint behind a savepoint"
        );
        c.poll(t0 + Duration::from_millis(50));
        assert_eq!(c.in_progress(), 1);
        assert_eq!(c.trigger.pending(0).unwrap().id, sp);
        c.acknowledge(ack(sp, 0));
        c.acknowledge(ack(sp, 1));
        let Some(SavepointStatus::Completed(path)) = c.savepoint_status(sp) else {
            panic!("{:?}", c.savepoint_status(sp));
        };
        assert!(path.join(METADATA_FILE).exists());
        // A checkpoint in flight when a savepoint completes is subsumed; a savepoint
        // in flight when a checkpoint completes is not.
        let cp = c.trigger_now(BarrierKind::Checkpoint, t0).unwrap();
        let sp2 = c.trigger_savepoint(d.path(), false, t0).unwrap();
        c.acknowledge(ack(sp2, 0));
        c.acknowledge(ack(sp2, 1));
        assert!(matches!(
            c.savepoint_status(sp2),
            Some(SavepointStatus::Completed(_))
        ));
        assert_eq!(c.in_progress(), 0, "checkpoint {cp} subsumed");
    }

    #[test]
    fn failed_savepoints_do_not_count_toward_tolerable_failures_and_keep_their_status() {
        let mut c = coordinator(None, Some(0));
        let t0 = Instant::now();
        let sp = c
            .trigger_savepoint(Path::new("/nonexistent-root/x"), false, t0)
            .unwrap();
        assert_eq!(c.decline(sp, 0, 1, "no"), CoordinatorVerdict::Continue);
        assert!(matches!(
            c.savepoint_status(sp),
            Some(SavepointStatus::Failed(_))
        ));
        // A savepoint aborted by a restart reports so even when the history moved on.
        let sp = c.trigger_savepoint(Path::new("/tmp"), true, t0).unwrap();
        c.start_attempt([(0, 0), (0, 1)]);
        c.stats.history.clear();
        let Some(SavepointStatus::Failed(why)) = c.savepoint_status(sp) else {
            panic!("{:?}", c.savepoint_status(sp));
        };
        assert!(why.contains("restarted"), "{why}");
        // A checkpoint's failure does count.
        let cp = c.trigger_now(BarrierKind::Checkpoint, t0).unwrap();
        assert!(matches!(
            c.decline(cp, 0, 0, "no"),
            CoordinatorVerdict::FailJob(_)
        ));
    }

    #[test]
    fn a_failed_stop_savepoint_lets_the_sources_go_on() {
        let mut c = coordinator(None, None).with_remote_tasks();
        let t0 = Instant::now();
        let d = tempfile::tempdir().unwrap();
        let sp = c.trigger_savepoint(d.path(), true, t0).unwrap();
        let trigger = c.trigger();
        assert!(trigger.is_stop(sp) && !trigger.stop_aborted(sp));
        c.decline(sp, 0, 0, "no");
        assert!(trigger.stop_aborted(sp));
        let m = c.take_messages();
        assert!(
            m.contains(&CoordinatorMessage::StopAborted { id: sp }),
            "{m:?}"
        );
        // A completed one leaves them stopped (the job is cancelled next).
        let sp = c.trigger_savepoint(d.path(), true, t0).unwrap();
        c.acknowledge(ack(sp, 0));
        c.acknowledge(ack(sp, 1));
        assert!(matches!(
            c.savepoint_status(sp),
            Some(SavepointStatus::Completed(_))
        ));
        assert!(!trigger.stop_aborted(sp));
    }

    /// Regression: "due now" for a final checkpoint was taken from a clock read after
    /// the caller's, so it never compared as due, and a bounded job's end waited for
    /// the next interval (up to `execution.checkpointing.interval`).
    #[test]
    fn a_task_that_ended_gets_its_final_checkpoint_without_waiting_for_the_interval() {
        let mut c = coordinator(Some(60_000), None);
        let t0 = Instant::now();
        let first = c.trigger_now(BarrierKind::Checkpoint, t0).unwrap();
        c.acknowledge(ack(first, 0));
        c.acknowledge(ack(first, 1));
        assert_eq!(c.in_progress(), 0);
        let later = Instant::now();
        c.poll(later);
        assert_eq!(c.in_progress(), 0, "the interval is a minute");
        c.trigger().task_ended();
        c.poll(Instant::now());
        assert_eq!(
            c.in_progress(),
            1,
            "triggered at once for the task that ended"
        );
        assert_eq!(
            c.next_wakeup(Instant::now()).map(|d| d.as_secs() > 1),
            Some(true)
        );
    }

    /// Regression (review): a bounded job whose checkpoints kept failing waited for
    /// its final checkpoint forever when no tolerable number was set.
    #[test]
    fn a_draining_job_whose_checkpoints_keep_failing_fails_instead_of_waiting_forever() {
        let mut c = coordinator(Some(10), None);
        let t0 = Instant::now();
        for _ in 0..5 {
            let cp = c.trigger_now(BarrierKind::Checkpoint, t0).unwrap();
            assert_eq!(c.decline(cp, 0, 0, "too big"), CoordinatorVerdict::Continue);
        }
        c.trigger().task_ended();
        let mut verdicts = Vec::new();
        for _ in 0..FINAL_CHECKPOINT_ATTEMPTS {
            let cp = c.trigger_now(BarrierKind::Checkpoint, t0).unwrap();
            verdicts.push(c.decline(cp, 0, 0, "too big"));
        }
        assert!(
            matches!(verdicts.last(), Some(CoordinatorVerdict::FailJob(m)) if m.contains("final checkpoint")),
            "{verdicts:?}"
        );
    }

    #[test]
    fn a_written_checkpoint_reads_back_and_damage_is_detected() {
        let d = tempfile::tempdir().unwrap();
        let mut m = meta(3);
        let dir = write_checkpoint(d.path(), &mut m, &states()).unwrap();
        let cp = read_checkpoint(&dir).unwrap();
        assert_eq!(cp.meta, m);
        assert_eq!(cp.states, states());
        // The job directory reads as its latest checkpoint.
        assert_eq!(read_checkpoint(d.path()).unwrap().meta.checkpoint_id, 3);
        // Truncated state file.
        let f = dir.join("v0-s0.state");
        let bytes = std::fs::read(&f).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() - 1]).unwrap();
        let e = read_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains("truncated or damaged"), "{e}");
        // Flipped byte, same length.
        let mut flipped = bytes.clone();
        flipped[9] ^= 0xFF;
        std::fs::write(&f, &flipped).unwrap();
        assert!(read_checkpoint(&dir).is_err());
        // Metadata that is not ours.
        std::fs::write(dir.join(METADATA_FILE), b"{\"hello\": 1}").unwrap();
        let e = read_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains("not a spate checkpoint"), "{e}");
    }

    #[test]
    fn a_directory_without_metadata_is_not_a_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("chk-9")).unwrap();
        std::fs::write(d.path().join("chk-9/v0-s0.state"), b"x").unwrap();
        assert!(read_checkpoint(d.path()).is_err());
        let mut m = meta(4);
        write_checkpoint(d.path(), &mut m, &states()).unwrap();
        // chk-9 has no metadata: the latest complete one is 4.
        assert_eq!(read_checkpoint(d.path()).unwrap().meta.checkpoint_id, 4);
    }

    #[test]
    fn a_state_file_name_cannot_leave_the_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let mut m = meta(1);
        let dir = write_checkpoint(d.path(), &mut m, &states()).unwrap();
        m.files[0].file = "../../etc/passwd".into();
        std::fs::write(dir.join(METADATA_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
        let e = read_checkpoint(&dir).unwrap_err().to_string();
        assert!(e.contains("leaves the checkpoint"), "{e}");
    }
}
