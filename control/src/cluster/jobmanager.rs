//! The JobManager process: the ResourceManager's TaskManager registry (registration,
//! heartbeats both ways, slot reports), served over RPC, with the Dispatcher's REST API.

use super::heartbeat::HeartbeatMonitor;
use super::{
    JmToTm, NetworkInfo, NetworkReport, RemoteChannel, SlotInfo, TaskDeployment, TaskKey,
    TaskManagerId, TaskRecords, TaskState, TmToJm,
};
use crate::checkpoint::{
    CheckpointCoordinator, CoordinatorMessage, CoordinatorVerdict, SavepointStatus,
};
use crate::config::{Config, FailoverStrategy};
use crate::graph::JobGraph;
use crate::jobs::JobSpec;
use crate::rest::RestServer;
use crate::restart::{self, RestartBackoffTimeStrategy};
use crate::rpc::{ConnId, Endpoint, Event};
use spate_dataplane::slot::SlotLoad;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A registered TaskManager.
#[derive(Debug, Clone)]
pub struct TaskManagerEntry {
    /// Its id.
    pub id: TaskManagerId,
    /// Host.
    pub host: String,
    /// Data address.
    pub data_address: String,
    /// Its slots, as last reported.
    pub slots: Vec<SlotInfo>,
    /// CPU cores it may use.
    pub cores: u32,
    /// Its network agent.
    pub network: NetworkInfo,
    /// The agent's counters, as last reported.
    pub network_report: NetworkReport,
    /// Its RPC connection.
    pub conn: ConnId,
    /// When it was last heard from (ms since the JobManager started).
    pub last_heartbeat_ms: u64,
    /// Each slot's busy ratio between its last two reports, by slot index.
    pub slot_busy: BTreeMap<u32, f64>,
}

/// What the JobManager knows, shared with the REST server.
#[derive(Debug)]
pub struct ClusterState {
    /// This JobManager's session id.
    pub jobmanager_id: String,
    /// When it started.
    pub started: Instant,
    /// Wall-clock start, ms since the epoch.
    pub started_epoch_ms: u64,
    /// Registered TaskManagers.
    pub taskmanagers: BTreeMap<TaskManagerId, TaskManagerEntry>,
    /// The configuration it runs with.
    pub config: Config,
    /// Jobs, by id.
    pub jobs: BTreeMap<String, JobEntry>,
    /// Ended jobs not yet removed from the job store (high availability): retried.
    pub unstore_pending: Vec<String>,
}

/// Failures kept per job (`/jobs/:id/exceptions`).
pub const MAX_EXCEPTIONS: usize = 32;
/// Slots a TaskManager may register.
pub const MAX_SLOTS_PER_TASKMANAGER: usize = 1024;

/// A TaskManager's slot list as the JobManager keeps it: one entry per slot index, and
/// no more than [`MAX_SLOTS_PER_TASKMANAGER`] (a peer's list is not trusted).
fn bounded_slots(mut slots: Vec<super::SlotInfo>) -> Vec<super::SlotInfo> {
    slots.sort_by_key(|s| s.index);
    slots.dedup_by_key(|s| s.index);
    slots.truncate(MAX_SLOTS_PER_TASKMANAGER);
    slots
}
/// Ended jobs kept for the REST API.
pub const MAX_ENDED_JOBS: usize = 100;

/// A job's state (Flink's JobStatus names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Accepted, subtasks being deployed.
    Created,
    /// Every subtask is running.
    Running,
    /// A subtask failed; the others are being cancelled.
    Failing,
    /// Waiting out the restart strategy's backoff (or for slots).
    Restarting,
    /// Cancel requested; subtasks being cancelled.
    Cancelling,
    /// Cancelled.
    Canceled,
    /// Failed for good.
    Failed,
    /// Every subtask finished.
    Finished,
}

impl JobState {
    /// Flink's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Running => "RUNNING",
            Self::Failing => "FAILING",
            Self::Restarting => "RESTARTING",
            Self::Cancelling => "CANCELLING",
            Self::Canceled => "CANCELED",
            Self::Failed => "FAILED",
            Self::Finished => "FINISHED",
        }
    }

    /// Whether the job is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Canceled | Self::Failed | Self::Finished)
    }
}

/// A vertex of a job, for the REST API.
#[derive(Debug, Clone)]
pub struct VertexInfo {
    /// Vertex id.
    pub id: usize,
    /// Chained operators' names.
    pub name: String,
    /// Parallelism.
    pub parallelism: usize,
}

/// Where a subtask runs and how it is doing.
#[derive(Debug, Clone)]
pub struct TaskSlot {
    /// Its TaskManager.
    pub taskmanager: TaskManagerId,
    /// The slot there.
    pub slot: u32,
    /// `None` until the TaskManager reports it.
    pub state: Option<TaskState>,
    /// The deployment it belongs to (its rings carry it).
    pub attempt: u32,
    /// Its execution attempt, as Flink numbers them: 0 when first deployed, one more
    /// each time this subtask is deployed again (a region restart counts for the
    /// subtasks of that region only).
    pub execution: u32,
    /// Records read from its input rings, as last reported.
    pub records_in: u64,
    /// Records written to its output rings, as last reported.
    pub records_out: u64,
    /// When it was deployed (ms since the epoch).
    pub deployed_ms: u64,
    /// When its state last changed (ms since the epoch).
    pub state_since_ms: u64,
    /// Its inputs' combined watermark, as last reported (ns; 0: none).
    pub watermark: u64,
    /// Back-pressure samples as last reported: (rounds, rounds with outputs full).
    pub backpressure_samples: (u64, u64),
    /// Share of the samples between the last two reports with its outputs full.
    pub backpressure_ratio: f64,
    /// When that ratio was computed (ms since the epoch; 0: not yet).
    pub backpressure_at_ms: u64,
    /// The end-to-end latencies its latency sinks recorded, as last reported (kept
    /// encoded: a few KiB where a decoded histogram takes hundreds).
    pub latency: Option<Vec<u8>>,
    /// How long after their emission latency markers reached it, as last reported
    /// (encoded).
    pub markers: Option<Vec<u8>>,
}

impl TaskSlot {
    /// Its back-pressure ratio now: as last computed while it runs; none once it has
    /// ended (its outputs no longer fill).
    pub fn current_backpressure(&self) -> f64 {
        match &self.state {
            Some(s) if s.is_terminal() => 0.0,
            _ => self.backpressure_ratio,
        }
    }
}

/// A failure, for `/jobs/:id/exceptions`.
#[derive(Debug, Clone)]
pub struct ExceptionEntry {
    /// When (ms since the epoch).
    pub timestamp_ms: u64,
    /// The subtask (or TaskManager) that failed.
    pub task: String,
    /// Why.
    pub message: String,
    /// The failed subtask's name and the TaskManager it ran on, when a subtask failed.
    pub subtask: Option<(String, String)>,
}

/// A submitted job and its JobMaster's bookkeeping.
#[derive(Debug)]
pub struct JobEntry {
    /// Job id.
    pub id: String,
    /// What was submitted.
    pub spec: JobSpec,
    /// State.
    pub state: JobState,
    /// The latest deployment number (of the job or of one of its regions).
    pub attempt: u32,
    /// How often each subtask was deployed, less one (Flink's attempt numbers).
    pub executions: BTreeMap<(u32, u32), u32>,
    /// Restarts so far.
    pub restarts: u32,
    /// Submission time (ms since the epoch).
    pub start_epoch_ms: u64,
    /// End time (ms since the epoch).
    pub end_epoch_ms: Option<u64>,
    /// Vertices.
    pub vertices: Vec<VertexInfo>,
    /// Slots the job needs.
    pub slots_needed: usize,
    /// Subtasks of the current attempt, by (vertex, subtask).
    pub tasks: BTreeMap<(u32, u32), TaskSlot>,
    /// Failures, oldest first (the last [`MAX_EXCEPTIONS`]).
    pub exceptions: Vec<ExceptionEntry>,
    /// Whether older failures were dropped.
    pub exceptions_truncated: bool,
    /// Rows its `SELECT`s produced, for the client (the last
    /// [`crate::sql::results::HELD`]), and how many came before them.
    pub results: std::collections::VecDeque<String>,
    /// Rows dropped from the front of `results`.
    pub results_dropped: u64,
    /// Bytes of `results`.
    pub results_bytes: usize,
    strategy: Box<dyn RestartBackoffTimeStrategy>,
    /// The strategy already refused (a region failure): fail when the tasks have ended.
    strategy_exhausted: bool,
    restart_at: Option<Instant>,
    group_offsets: Vec<(String, usize)>,
    vertex_groups: Vec<String>,
    /// Pipelined regions: subtasks connected by edges (all of a vertex's subtasks when
    /// any of its edges is not forward; one pipeline per subtask index otherwise).
    pub regions: Vec<Vec<(u32, u32)>>,
    region_of: HashMap<(u32, u32), usize>,
    /// Edges of the job graph: (from vertex, to vertex, forward).
    edges: Vec<(u32, u32, bool)>,
    /// Failover strategy for this job.
    pub failover: FailoverStrategy,
    /// Regions being restarted, with the time their restart is due (once their tasks
    /// have all ended).
    region_restarts: BTreeMap<usize, Option<Instant>>,
    /// What its deployments carry: the cluster's configuration with the job's own over it.
    deploy_settings: DeploySettings,
    /// Since when a restart has been waiting for free slots.
    waiting_for_slots_since: Option<Instant>,
    /// Its checkpoint coordinator.
    pub coord: CheckpointCoordinator,
    /// Savepoint requests (REST trigger ids) and the savepoints they triggered.
    pub savepoint_requests: HashMap<String, u64>,
    /// A stop (or cancel) with a savepoint: the savepoint, and the state the job ends
    /// in once it completed.
    stop_with: Option<(u64, JobState)>,
    /// Cancelling after such a savepoint: the state to end in.
    end_as: Option<JobState>,
    /// When the job last entered each state (Flink's `timestamps`, ms since the epoch).
    pub timestamps: BTreeMap<&'static str, u64>,
    /// The state `timestamps` last saw.
    stamped: Option<JobState>,
    /// Key groups (`pipeline.max-parallelism`).
    pub max_parallelism: u32,
    /// Edges as the plan shows them: (from vertex, to vertex, Flink's ship strategy).
    pub plan_edges: Vec<(usize, usize, &'static str)>,
    /// Latencies recorded by deployments since replaced (restarts).
    past_latency: Option<Vec<u8>>,
}

impl JobEntry {
    /// The end-to-end latencies the job's sinks recorded, over all its deployments
    /// (`None`: none yet, or the job has no latency sink).
    pub fn latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        self.vertex_latency(None)
    }

    /// The latencies recorded by the subtasks of vertex `v` (all vertices: `None`),
    /// including, for the whole job, those of deployments since replaced.
    pub fn vertex_latency(&self, v: Option<u32>) -> Option<hdrhistogram::Histogram<u64>> {
        let past = self.past_latency.iter().filter(|_| v.is_none());
        let live = self
            .tasks
            .iter()
            .filter(|((vertex, _), _)| v.is_none_or(|v| v == *vertex))
            .filter_map(|(_, t)| t.latency.as_ref());
        super::merge_latency(past.chain(live))
    }

    /// How long after their emission latency markers reached vertex `v`'s subtasks.
    pub fn vertex_marker_latency(&self, v: u32) -> Option<hdrhistogram::Histogram<u64>> {
        super::merge_latency(
            self.tasks
                .iter()
                .filter(|((vertex, _), _)| *vertex == v)
                .filter_map(|(_, t)| t.markers.as_ref()),
        )
    }

    /// The slot sharing group of vertex `v`.
    pub fn slot_sharing_group(&self, v: usize) -> &str {
        self.vertex_groups.get(v).map_or("default", String::as_str)
    }

    /// Notes the time the job entered its current state, if it changed.
    fn stamp(&mut self, now_ms: u64) {
        if self.stamped != Some(self.state) {
            self.stamped = Some(self.state);
            self.timestamps.insert(self.state.name(), now_ms);
        }
    }

    /// When anything about the job last changed (ms since the epoch).
    pub fn last_modification_ms(&self) -> u64 {
        let tasks = self.tasks.values().map(|t| t.state_since_ms);
        let states = self.timestamps.values().copied();
        tasks.chain(states).max().unwrap_or(self.start_epoch_ms)
    }
}

/// What every deployment carries from the JobManager's configuration.
#[derive(Debug, Clone, Copy)]
struct DeploySettings {
    default_parallelism: u32,
    chaining: bool,
    ring_size: u64,
    same_host_tcp: bool,
}

impl DeploySettings {
    fn of(c: &Config) -> Self {
        Self {
            default_parallelism: c.default_parallelism as u32,
            chaining: c.chaining,
            ring_size: c.ring_size as u64,
            same_host_tcp: c.same_host_tcp,
        }
    }
}

impl JobEntry {
    /// Keeps the end-to-end latencies a subtask's deployment recorded in the job's,
    /// before that deployment is dropped (a restart).
    fn keep_latency(&mut self, t: &TaskSlot) {
        if let Some(h) = t.latency.as_ref() {
            let merged = super::merge_latency(self.past_latency.iter().chain(Some(h)));
            self.past_latency = merged.as_ref().and_then(super::encode_latency);
        }
    }

    /// Drops every subtask's deployment (a full restart), keeping their latencies.
    fn clear_tasks(&mut self) {
        for t in std::mem::take(&mut self.tasks).into_values() {
            self.keep_latency(&t);
        }
    }

    /// Places subtask `k` of deployment `attempt` on `at` (TaskManager, slot): records
    /// it as deploying and returns the deployment to send there.
    fn place(
        &mut self,
        k: (u32, u32),
        at: (TaskManagerId, u32),
        attempt: u32,
        settings: DeploySettings,
    ) -> (TaskManagerId, TaskDeployment) {
        let (tm, slot) = at;
        // The latencies of a deployment being replaced stay in the job's.
        if let Some(old) = self.tasks.remove(&k) {
            self.keep_latency(&old);
        }
        let execution = *self
            .executions
            .entry(k)
            .and_modify(|n| *n = n.saturating_add(1))
            .or_insert(0);
        self.tasks.insert(
            k,
            TaskSlot {
                taskmanager: tm.clone(),
                slot,
                state: None,
                attempt,
                execution,
                records_in: 0,
                records_out: 0,
                deployed_ms: epoch_ms(),
                state_since_ms: epoch_ms(),
                watermark: 0,
                backpressure_samples: (0, 0),
                backpressure_ratio: 0.0,
                backpressure_at_ms: 0,
                latency: None,
                markers: None,
            },
        );
        let d = TaskDeployment {
            task: TaskKey {
                job_id: self.id.clone(),
                attempt,
                vertex: k.0,
                subtask: k.1,
            },
            spec: self.spec.clone(),
            slot,
            ring_size: settings.ring_size,
            default_parallelism: settings.default_parallelism,
            chaining: settings.chaining,
            remote: Vec::new(),
            checkpointing: self.deploy_checkpointing(k),
        };
        (tm, d)
    }

    /// What subtask `k` of a new deployment takes part in checkpoints with: the mode,
    /// and its state from the latest completed checkpoint.
    fn deploy_checkpointing(&self, k: (u32, u32)) -> Option<super::DeployCheckpointing> {
        // Always: savepoints are taken whether checkpoints are periodic or not.
        let latest = self.coord.latest();
        let parallelism = self
            .vertices
            .iter()
            .find(|v| v.id == k.0 as usize)
            .map_or(1, |v| v.parallelism as u32);
        Some(super::DeployCheckpointing {
            exactly_once: self.coord.exactly_once(),
            final_checkpoint: self.coord.periodic(),
            restored_from: latest.as_ref().map_or(0, |c| c.meta.checkpoint_id),
            restore: latest
                .map(|c| {
                    c.subtask_states(k.0, k.1, parallelism)
                        .into_iter()
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// A new deployment (of the job or of a region) starts: checkpoints in flight are
    /// aborted, and subtasks that finished stay finished for the coordinator.
    fn start_checkpoint_attempt(&mut self) {
        let all: Vec<(u32, u32)> = self
            .vertices
            .iter()
            .flat_map(|v| (0..v.parallelism as u32).map(move |s| (v.id as u32, s)))
            .collect();
        self.coord.start_attempt(all);
        for (k, t) in &self.tasks {
            if matches!(t.state, Some(TaskState::Finished)) {
                // Nothing is in flight to complete (the attempt just started).
                let _ = self.coord.task_finished(k.0, k.1);
            }
        }
    }

    /// Gives every deployment in `sends` its channels to subtasks on other hosts (or on
    /// other TaskManagers, with `same_host_tcp`), each channel one id for both ends.
    fn wire_remote(
        &self,
        peers: &Peers,
        same_host_tcp: bool,
        next_channel: &mut u64,
        sends: &mut [(TaskManagerId, TaskDeployment)],
    ) {
        let mut ids: HashMap<(u32, u32, u32), u64> = HashMap::new();
        let parallelism = |v: u32| {
            self.vertices
                .get(v as usize)
                .map_or(0, |x| x.parallelism as u32)
        };
        for (tm, d) in sends.iter_mut() {
            let (v, s) = (d.task.vertex, d.task.subtask);
            for (ei, &(from, to, forward)) in self.edges.iter().enumerate() {
                let ei = ei as u32;
                // (up, down, the other end's vertex and subtask)
                let mut ends: Vec<(u32, u32, (u32, u32))> = Vec::new();
                if from == v {
                    let targets = if forward {
                        s..s + 1
                    } else {
                        0..parallelism(to)
                    };
                    ends.extend(targets.map(|t| (s, t, (to, t))));
                }
                if to == v {
                    let sources = if forward {
                        s..s + 1
                    } else {
                        0..parallelism(from)
                    };
                    ends.extend(sources.map(|u| (u, s, (from, u))));
                }
                for (up, down, other) in ends {
                    let Some(other_tm) = self.tasks.get(&other).map(|t| &t.taskmanager) else {
                        continue;
                    };
                    if other_tm == tm {
                        continue;
                    }
                    let (Some(mine), Some(theirs)) = (peers.get(tm), peers.get(other_tm)) else {
                        continue;
                    };
                    if mine.1 == theirs.1 && !same_host_tcp {
                        continue; // one host: shared memory
                    }
                    let channel = *ids.entry((ei, up, down)).or_insert_with(|| {
                        *next_channel = next_channel.wrapping_add(1);
                        *next_channel
                    });
                    d.remote.push(RemoteChannel {
                        edge: ei,
                        up,
                        down,
                        channel,
                        peer_node: theirs.0,
                        peer_address: theirs.2.clone(),
                    });
                }
            }
        }
    }
}

/// Each TaskManager's agent: node id, host key, data address.
type Peers = HashMap<TaskManagerId, (u64, String, String)>;

fn peers_of(st: &ClusterState) -> Peers {
    st.taskmanagers
        .values()
        .map(|t| {
            (
                t.id.clone(),
                (
                    t.network.node,
                    t.network.host_key.clone(),
                    t.data_address.clone(),
                ),
            )
        })
        .collect()
}

/// Computes the pipelined regions of a job graph (union-find over subtasks).
pub fn pipelined_regions(graph: &crate::graph::JobGraph) -> Vec<Vec<(u32, u32)>> {
    let mut ids: Vec<(u32, u32)> = Vec::new();
    let mut index: HashMap<(u32, u32), usize> = HashMap::new();
    for v in &graph.vertices {
        for s in 0..v.parallelism {
            index.insert((v.id as u32, s as u32), ids.len());
            ids.push((v.id as u32, s as u32));
        }
    }
    let mut parent: Vec<usize> = (0..ids.len()).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let union = |p: &mut Vec<usize>, a: usize, b: usize| {
        let (ra, rb) = (find(p, a), find(p, b));
        if ra != rb {
            p[ra] = rb;
        }
    };
    for e in &graph.edges {
        let up = &graph.vertices[e.from];
        let down = &graph.vertices[e.to];
        let forward = matches!(e.partition, crate::graph::EdgePartition::Forward);
        for s in 0..up.parallelism {
            let targets: Vec<usize> = if forward {
                vec![s]
            } else {
                (0..down.parallelism).collect()
            };
            for t in targets {
                let a = index[&(e.from as u32, s as u32)];
                let b = index[&(e.to as u32, t as u32)];
                union(&mut parent, a, b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<(u32, u32)>> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push(*id);
    }
    groups.into_values().collect()
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a deployment's restored states cannot be shipped, if one's are too large for an
/// RPC frame.
fn oversized_restore(sends: &[(TaskManagerId, TaskDeployment)]) -> Option<String> {
    let limit = crate::rpc::MAX_FRAME - super::STATE_FRAME_SLACK;
    sends.iter().find_map(|(_, d)| {
        let size: usize = d
            .checkpointing
            .as_ref()
            .map_or(0, |c| c.restore.iter().map(|s| s.1.len()).sum());
        (size > limit).then(|| {
            format!(
                "the state of subtask {} of vertex {} is {size} bytes, more than a cluster \
                 deployment ships ({limit} bytes)",
                d.task.subtask, d.task.vertex
            )
        })
    })
}

/// Fails a job for good with `message` (no restart can help).
fn fail_entry(j: &mut JobEntry, message: String) {
    tracing::error!(job = %j.id, %message, "job failed");
    push_exception(j, "JobMaster", message);
    j.state = JobState::Failed;
    j.end_epoch_ms = Some(epoch_ms());
}

fn push_exception(j: &mut JobEntry, task: &str, message: String) {
    if j.exceptions.len() >= MAX_EXCEPTIONS {
        j.exceptions.remove(0);
        j.exceptions_truncated = true;
    }
    j.exceptions.push(ExceptionEntry {
        timestamp_ms: epoch_ms(),
        task: task.into(),
        message,
        subtask: None,
    });
}

/// What the REST server asks of the JobManager thread.
#[derive(Debug)]
pub enum JmCommand {
    /// Submit a job; the reply is its id or (HTTP status, message).
    Submit(
        Box<JobSpec>,
        tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ),
    /// Cancel a job.
    Cancel(
        String,
        tokio::sync::oneshot::Sender<Result<(), (u16, String)>>,
    ),
    /// Trigger a savepoint; the reply is the request's id.
    Savepoint(
        SavepointRequest,
        tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ),
    /// A submission whose job graph was built off the event loop (sent by the
    /// JobManager's builder threads to itself).
    Built(Box<BuiltSubmission>),
}

/// The longest TaskManager id taken.
const MAX_TASKMANAGER_ID: usize = 256;

/// Whether a TaskManager's id is one a TaskManager makes (`HOST:PID-SUFFIX`, the host
/// a name or an address): ids end up in logs, metrics labels, URLs and the web UI, so
/// a peer's id is held to that alphabet.
fn valid_taskmanager_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASKMANAGER_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:-_[]".contains(c))
}

/// A job's graph (and the checkpoint it resumes from), built on a thread of its own:
/// the builder is user code, whose slowness must not stall the JobManager's event loop
/// (heartbeats, other jobs, REST answers).
pub struct BuiltSubmission {
    spec: JobSpec,
    config: Config,
    recovery: Option<Recovery>,
    built: Result<(JobGraph, Option<crate::checkpoint::CompletedCheckpoint>), (u16, String)>,
    reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
}

impl std::fmt::Debug for BuiltSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltSubmission")
            .field("job", &self.spec.job)
            .field("ok", &self.built.is_ok())
            .finish()
    }
}

/// A job a new leader recovers from the job store: its id stays, and its deployments
/// count on from `attempt` (above any its old leader can have made, so that no ring
/// of those is taken for one of these).
#[derive(Debug, Clone)]
struct Recovery {
    id: String,
    attempt: u32,
    /// The leader term (fencing token) that recovers it: a build that completes in a
    /// later term is dropped (that term recovers the job itself).
    token: u64,
}

/// Builds a submitted job's graph and reads the checkpoint it resumes from (on a
/// builder thread).
fn build_submission(
    spec: &JobSpec,
    jc: &Config,
) -> Result<(JobGraph, Option<crate::checkpoint::CompletedCheckpoint>), (u16, String)> {
    let graph = spec
        .job_graph(jc.default_parallelism, jc.chaining)
        .map_err(|e| (400, e))?;
    let restore = match &spec.savepoint_path {
        Some(path) => {
            crate::security::check_job_path(std::path::Path::new(path), "the savepoint")
                .map_err(|e| (400, e))?;
            let cp = crate::checkpoint::read_checkpoint(std::path::Path::new(path))
                .map_err(|e| (400, e.to_string()))?;
            cp.check_compatible(&graph)
                .map_err(|e| (400, e.to_string()))?;
            Some(cp)
        }
        None => None,
    };
    Ok((graph, restore))
}

/// A savepoint asked for (REST `POST /jobs/:id/savepoints` or `/stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointRequest {
    /// The job.
    pub job_id: String,
    /// Where it goes (`None`: `state.savepoints.dir`).
    pub target: Option<String>,
    /// Once it completed, the job ends in this state (FINISHED for a stop, CANCELED
    /// for a cancel with a savepoint); `None`: it runs on.
    pub then: Option<JobState>,
}

impl ClusterState {
    /// Milliseconds since the JobManager started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// Shared cluster state.
pub type SharedState = Arc<Mutex<ClusterState>>;

/// Locks the state, surviving a poisoned lock (a panicked REST handler).
pub fn lock(state: &SharedState) -> MutexGuard<'_, ClusterState> {
    match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// A running JobManager.
#[derive(Debug)]
pub struct JobManager {
    config: Config,
    endpoint: Endpoint<TmToJm, JmToTm>,
    state: SharedState,
    rest: RestServer,
    monitor: HeartbeatMonitor<TaskManagerId>,
    conns: HashMap<ConnId, TaskManagerId>,
    /// Connections that finished the handshake and have not registered yet, with when
    /// they came up: closed after `heartbeat.timeout` of silence.
    unregistered: HashMap<ConnId, Instant>,
    commands: Receiver<JmCommand>,
    /// Where builder threads send what they built.
    own_commands: std::sync::mpsc::Sender<JmCommand>,
    /// The last channel id given to a channel between TaskManagers: the high half is
    /// random per JobManager session, so that ids never repeat on connections that
    /// outlive a JobManager restart.
    next_channel: u64,
    /// `high-availability.type: etcd`: this JobManager's part in the election.
    ha: Option<crate::ha::LeaderElection>,
    /// The fencing token while it leads (always `Some(0)` without high availability).
    leading: Option<u64>,
    /// When ended jobs whose removal from the job store failed are tried again.
    next_unstore_retry: Instant,
}

fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{host}:{port} resolves to no address"))
}

impl JobManager {
    /// Binds the RPC port (`jobmanager.rpc.*`) and the REST port (`rest.port`).
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        crate::storage::configure(&config.s3);
        config.confine_job_paths();
        let rpc = resolve(&config.jobmanager_address, config.jobmanager_port)?;
        let secret = crate::security::Secret::new(&config.internal_secret.0);
        let endpoint = Endpoint::listen(rpc, "jobmanager", secret)
            .map_err(|e| anyhow::anyhow!("cannot listen for RPC on {rpc}: {e}"))?;
        let state = Arc::new(Mutex::new(ClusterState {
            jobmanager_id: super::new_id(),
            started: Instant::now(),
            started_epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            taskmanagers: BTreeMap::new(),
            config: config.clone(),
            jobs: BTreeMap::new(),
            unstore_pending: Vec::new(),
        }));
        let rest_addr = resolve(&config.jobmanager_address, config.rest_port)?;
        let (tx, commands) = channel();
        let own_commands = tx.clone();
        let rest = RestServer::start(rest_addr, state.clone(), tx)?;
        tracing::info!(rpc = ?endpoint.local_addr(), rest = %rest.local_addr(), "JobManager started");
        let ha = if config.ha.etcd {
            if config.ha.endpoints.is_empty() {
                anyhow::bail!(
                    "high-availability.type is etcd: set high-availability.etcd.endpoints"
                );
            }
            if config.ha.storage_dir.is_none() {
                anyhow::bail!("high-availability.type is etcd: set high-availability.storageDir (a directory every JobManager shares)");
            }
            let rpc_port = endpoint
                .local_addr()
                .map_or(config.jobmanager_port, |a| a.port());
            let me = crate::ha::LeaderRecord {
                id: lock(&state).jobmanager_id.clone(),
                rpc: format!("{}:{rpc_port}", config.jobmanager_address),
                rest: format!("{}:{}", config.jobmanager_address, rest.local_addr().port()),
                token: 0,
            };
            tracing::info!(cluster = %config.ha.cluster_id, endpoints = ?config.ha.endpoints, "high availability through etcd: joining the leader election");
            Some(crate::ha::LeaderElection::start(&config.ha, me)?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            endpoint,
            state,
            rest,
            monitor: HeartbeatMonitor::new(config.heartbeat_timeout.as_millis() as u64),
            conns: HashMap::new(),
            unregistered: HashMap::new(),
            commands,
            own_commands,
            next_channel: u64::from_str_radix(&super::new_id()[..8], 16).unwrap_or(1) << 32,
            leading: if ha.is_some() { None } else { Some(0) },
            next_unstore_retry: Instant::now(),
            ha,
        })
    }

    /// The RPC address.
    pub fn rpc_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The REST address.
    pub fn rest_addr(&self) -> SocketAddr {
        self.rest.local_addr()
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut next_beat = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.follow_leadership();
            if self.leading.is_none() {
                self.standby();
                continue;
            }
            if let Some(ev) = self.endpoint.recv_timeout(Duration::from_millis(20)) {
                self.on_event(ev);
            }
            while let Ok(cmd) = self.commands.try_recv() {
                self.on_command(cmd);
            }
            let now = lock(&self.state).now_ms();
            for id in self.monitor.expire(now) {
                self.lose(&id, "heartbeat timed out");
            }
            self.close_silent_connections();
            self.restart_due_jobs();
            self.restart_due_regions();
            self.poll_checkpoints();
            self.stamp_jobs();
            self.retry_unstore();
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + self.config.heartbeat_interval;
                for conn in self.conns.keys() {
                    self.endpoint.send(*conn, JmToTm::Heartbeat);
                }
            }
        }
    }

    /// Follows the election: a JobManager that became the leader recovers the stored
    /// jobs; one that lost leadership stops acting at once.
    fn follow_leadership(&mut self) {
        let Some(ha) = &self.ha else { return };
        let now = ha.leading();
        if now == self.leading {
            return;
        }
        if self.leading.is_some() {
            self.step_down();
        }
        if let Some(token) = now {
            self.leading = Some(token);
            self.recover_jobs(token);
        }
    }

    /// Leadership is lost: drop the cluster's view (TaskManagers, jobs) and every
    /// connection; the new leader recovers the jobs, and this JobManager waits as a
    /// standby.
    fn step_down(&mut self) {
        tracing::error!(
            "this JobManager no longer leads the cluster; it stops acting and stands by"
        );
        self.leading = None;
        for conn in self.conns.keys().chain(self.unregistered.keys()) {
            self.endpoint.close(*conn);
        }
        self.conns.clear();
        self.unregistered.clear();
        self.monitor = HeartbeatMonitor::new(self.config.heartbeat_timeout.as_millis() as u64);
        let mut st = lock(&self.state);
        st.jobs.clear();
        st.taskmanagers.clear();
        st.unstore_pending.clear();
    }

    /// A standby's round: TaskManagers are sent to the leader, REST actions refused.
    fn standby(&mut self) {
        let leader = self.ha.as_ref().and_then(crate::ha::LeaderElection::leader);
        let why = match &leader {
            Some(l) => format!(
                "this JobManager is a standby; the leader's REST address is {}",
                l.rest
            ),
            None => "this JobManager is a standby; no JobManager leads the cluster now".into(),
        };
        if let Some(Event::Message {
            conn,
            msg: TmToJm::Register { .. },
        }) = self.endpoint.recv_timeout(Duration::from_millis(20))
        {
            self.endpoint.send(
                conn,
                JmToTm::Refused {
                    reason: why.clone(),
                    fatal: false,
                },
            );
        }
        while let Ok(cmd) = self.commands.try_recv() {
            let refused = Err((503, why.clone()));
            match cmd {
                JmCommand::Submit(_, reply) | JmCommand::Savepoint(_, reply) => {
                    let _ = reply.send(refused);
                }
                JmCommand::Cancel(_, reply) => {
                    let _ = reply.send(Err((503, why.clone())));
                }
                JmCommand::Built(b) => {
                    let _ = b.reply.send(refused);
                }
            }
        }
    }

    /// A new leader takes the stored jobs up again, each from its latest completed
    /// checkpoint.
    fn recover_jobs(&mut self, token: u64) {
        let Some(ha) = &self.ha else { return };
        let stored = match ha.list(&ha.keys().jobgraphs()) {
            Ok(kvs) => kvs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job store; giving leadership up");
                ha.resign();
                return;
            }
        };
        let mut recovered = Vec::new();
        for kv in stored {
            let id = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            let entry: crate::ha::StoredJob = match serde_json::from_slice(&kv.value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "a malformed job store entry; skipped");
                    continue;
                }
            };
            let mut spec = match crate::ha::read_job(std::path::Path::new(&entry.path)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot read a stored job; skipped");
                    continue;
                }
            };
            let pointer = match ha.get(&ha.keys().checkpoint(&id)) {
                Ok(kv) => kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the job store; giving leadership up");
                    ha.resign();
                    return;
                }
            };
            let Some(recoveries) = entry.recoveries.checked_add(1).filter(|r| *r < 1 << 16) else {
                tracing::error!(job = %id, recoveries = entry.recoveries, "a job store entry recovered too often; skipped");
                continue;
            };
            let next = crate::ha::StoredJob {
                path: entry.path.clone(),
                recoveries,
            };
            let put = crate::ha::Op::Put(
                kv.key.clone(),
                serde_json::to_vec(&next).unwrap_or_default(),
            );
            if let Err(e) = ha.write(token, &[put]) {
                tracing::error!(error = %e, "cannot update the job store; giving leadership up");
                ha.resign();
                return;
            }
            if let Some(p) = pointer {
                tracing::info!(job = %id, checkpoint = %p, "recovering the job from its latest completed checkpoint");
                spec.savepoint_path = Some(p);
            } else {
                tracing::info!(job = %id, "recovering the job (no completed checkpoint: from its start)");
            }
            // 65 536 deployments per leader before attempts could meet an older one's.
            let attempt = next.recoveries.saturating_mul(1 << 16);
            recovered.push((spec, Recovery { id, attempt, token }));
        }
        for (spec, recovery) in recovered {
            let (reply, _) = tokio::sync::oneshot::channel();
            self.submit_as(spec, reply, Some(recovery));
        }
    }

    /// Stores a submitted job (with high availability) before it is deployed: its
    /// spec in the storage directory, a pointer in etcd.
    fn store_job(&self, id: &str, spec: &JobSpec) -> Result<(), (u16, String)> {
        let (Some(ha), Some(token), Some(dir)) =
            (&self.ha, self.leading, &self.config.ha.storage_dir)
        else {
            return Ok(());
        };
        let path = crate::ha::job_file(dir, &self.config.ha.cluster_id, id);
        let unavailable =
            |e: crate::ha::HaError| (503, format!("cannot store the job for recovery: {e}"));
        crate::ha::write_job(&path, spec).map_err(unavailable)?;
        let entry = crate::ha::StoredJob {
            path: path.display().to_string(),
            recoveries: 0,
        };
        let key = format!("{}{id}", ha.keys().jobgraphs());
        ha.write(
            token,
            &[crate::ha::Op::Put(
                key,
                serde_json::to_vec(&entry).unwrap_or_default(),
            )],
        )
        .map_err(unavailable)
    }

    /// Records a job's latest completed checkpoint in etcd (with high availability);
    /// false when it could not be: its sinks must not commit what a new leader would
    /// not restore.
    fn store_checkpoint(&self, id: &str, path: &std::path::Path) -> bool {
        let (Some(ha), Some(token)) = (&self.ha, self.leading) else {
            return true;
        };
        let put = crate::ha::Op::Put(
            ha.keys().checkpoint(id),
            path.display().to_string().into_bytes(),
        );
        match ha.write(token, &[put]) {
            Ok(()) => true,
            Err(e) => {
                // The sinks must not commit it, and no restart of ours may restore it
                // (a later leader would restore an older one): give leadership up.
                tracing::error!(job = %id, error = %e, "cannot record the completed checkpoint in etcd; its sinks do not commit, and this JobManager gives leadership up");
                ha.resign();
                false
            }
        }
    }

    /// Removes an ended job from the job store (with high availability).
    fn unstore_job(&self, id: &str) {
        let (Some(ha), Some(token), Some(dir)) =
            (&self.ha, self.leading, &self.config.ha.storage_dir)
        else {
            return;
        };
        let ops = [
            crate::ha::Op::Delete(format!("{}{id}", ha.keys().jobgraphs())),
            crate::ha::Op::Delete(ha.keys().checkpoint(id)),
        ];
        match ha.write(token, &ops) {
            Ok(()) => {
                let path = crate::ha::job_file(dir, &self.config.ha.cluster_id, id);
                let _ = std::fs::remove_file(path);
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot remove the ended job from the job store; retrying");
                lock(&self.state).unstore_pending.push(id.to_string());
            }
        }
    }

    /// Retries removing ended jobs from the job store (at most once a second).
    fn retry_unstore(&mut self) {
        if self.next_unstore_retry > Instant::now() {
            return;
        }
        self.next_unstore_retry = Instant::now() + Duration::from_secs(1);
        let pending = std::mem::take(&mut lock(&self.state).unstore_pending);
        for id in pending {
            self.unstore_job(&id);
        }
    }

    /// Notes when jobs entered their states (for the REST API's `timestamps`).
    fn stamp_jobs(&mut self) {
        let now = epoch_ms();
        for j in lock(&self.state).jobs.values_mut() {
            j.stamp(now);
        }
    }

    /// Lets each running job's coordinator trigger checkpoints and expire old ones.
    fn poll_checkpoints(&mut self) {
        let due: Vec<String> = lock(&self.state)
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running && j.region_restarts.is_empty())
            .filter(|j| j.coord.periodic() || j.coord.in_progress() > 0)
            .map(|j| j.id.clone())
            .collect();
        let now = Instant::now();
        for id in due {
            self.checkpoint_step(&id, |c| c.poll(now));
        }
    }

    /// Runs `f` on job `id`'s coordinator, sends what it has for the TaskManagers, and
    /// fails the job over when it says so.
    fn checkpoint_step(
        &mut self,
        id: &str,
        f: impl FnOnce(&mut CheckpointCoordinator) -> CoordinatorVerdict,
    ) {
        let mut st = lock(&self.state);
        let Some(j) = st.jobs.get_mut(id) else { return };
        if j.state.is_terminal() {
            return;
        }
        let verdict = f(&mut j.coord);
        let messages = j.coord.take_messages();
        let hosts: std::collections::BTreeSet<TaskManagerId> = j
            .tasks
            .values()
            .filter(|t| !t.state.as_ref().is_some_and(TaskState::is_terminal))
            .map(|t| t.taskmanager.clone())
            .collect();
        let fail = match verdict {
            CoordinatorVerdict::FailJob(m)
                if matches!(j.state, JobState::Created | JobState::Running) =>
            {
                tracing::error!(job = %id, message = %m, "failing the job over");
                push_exception(j, "CheckpointCoordinator", m);
                j.coord.abort_pending("the job failed");
                j.state = JobState::Failing;
                j.region_restarts.clear();
                true
            }
            _ => false,
        };
        // A stop with a savepoint: once the savepoint completed, the job's tasks are
        // cancelled (after they heard of its completion: the messages go first) and the
        // job ends as asked; a failed savepoint leaves the job running.
        let mut stop = false;
        if let Some((sid, end)) = j.stop_with {
            match j.coord.savepoint_status(sid) {
                Some(SavepointStatus::InProgress) => {}
                Some(SavepointStatus::Completed(path)) => {
                    tracing::info!(job = %id, path = %path.display(), "savepoint taken; stopping the job");
                    j.stop_with = None;
                    if matches!(j.state, JobState::Created | JobState::Running) {
                        j.end_as = Some(end);
                        j.state = JobState::Cancelling;
                        j.region_restarts.clear();
                        stop = true;
                    }
                }
                other => {
                    tracing::warn!(job = %id, status = ?other, "the savepoint of a stop failed; the job runs on");
                    j.stop_with = None;
                }
            }
        }
        let latest = j
            .coord
            .latest()
            .and_then(|cp| Some((cp.meta.checkpoint_id, cp.path.clone()?)));
        let conns: Vec<ConnId> = hosts
            .iter()
            .filter_map(|tm| st.taskmanagers.get(tm).map(|t| t.conn))
            .collect();
        drop(st);
        if !self.still_leading() {
            return;
        }
        for m in messages {
            if let CoordinatorMessage::Completed { id: done } = &m {
                if let Some((_, path)) = latest.as_ref().filter(|(l, _)| l == done) {
                    if !self.store_checkpoint(id, path) {
                        continue;
                    }
                }
            }
            let msg = match m {
                CoordinatorMessage::Trigger {
                    id: checkpoint_id,
                    timestamp_ns,
                    kind,
                    stop,
                } => JmToTm::TriggerCheckpoint {
                    job_id: id.to_string(),
                    checkpoint_id,
                    timestamp_ns,
                    savepoint: kind == spate_dataplane::operator::BarrierKind::Savepoint,
                    stop,
                },
                CoordinatorMessage::StopAborted { id: checkpoint_id } => JmToTm::StopAborted {
                    job_id: id.to_string(),
                    checkpoint_id,
                },
                CoordinatorMessage::Completed { id: checkpoint_id } => JmToTm::CheckpointComplete {
                    job_id: id.to_string(),
                    checkpoint_id,
                },
            };
            for c in &conns {
                self.endpoint.send(*c, msg.clone());
            }
        }
        if fail || stop {
            self.send_cancel(id, None);
            self.evaluate(id);
        }
    }

    fn lose(&mut self, id: &TaskManagerId, reason: &str) {
        let entry = lock(&self.state).taskmanagers.remove(id);
        self.monitor.remove(id);
        if let Some(e) = entry {
            tracing::warn!(taskmanager = %id, %reason, "TaskManager lost");
            self.conns.remove(&e.conn);
            self.endpoint.close(e.conn);
        }
        // Its subtasks have failed with it.
        let affected: Vec<(String, Vec<(u32, u32)>)> = lock(&self.state)
            .jobs
            .values()
            .filter(|j| !j.state.is_terminal())
            .map(|j| {
                let lost = j
                    .tasks
                    .iter()
                    .filter(|(_, t)| {
                        t.taskmanager == *id
                            && !t.state.as_ref().is_some_and(TaskState::is_terminal)
                    })
                    .map(|(k, _)| *k)
                    .collect();
                (j.id.clone(), lost)
            })
            .collect();
        for (job, lost) in affected {
            for (v, s) in lost {
                let message = format!("TaskManager {id} was lost: {reason}");
                self.task_changed(&job, None, v, s, TaskState::Failed(message));
            }
        }
    }

    /// Whether `task` (that deployment of it) was placed on `tm`.
    fn hosts(&self, tm: &TaskManagerId, task: &TaskKey) -> bool {
        let st = lock(&self.state);
        st.jobs
            .get(&task.job_id)
            .and_then(|j| j.tasks.get(&(task.vertex, task.subtask)))
            .is_some_and(|t| t.taskmanager == *tm && t.attempt == task.attempt)
    }

    fn update_records(&self, records: &[TaskRecords]) {
        let mut st = lock(&self.state);
        for r in records {
            let Some(j) = st.jobs.get_mut(&r.task.job_id) else {
                continue;
            };
            // Each subtask's own deployment counts: after a region failover the regions
            // that kept running report an older attempt than the job's latest.
            if let Some(t) = j.tasks.get_mut(&(r.task.vertex, r.task.subtask)) {
                if t.attempt == r.task.attempt {
                    t.records_in = r.records_in;
                    t.records_out = r.records_out;
                    t.watermark = r.watermark;
                    // The ratio over the samples since the last report.
                    let (n, hits) = r.backpressure;
                    let (dn, dh) = (
                        n.saturating_sub(t.backpressure_samples.0),
                        hits.saturating_sub(t.backpressure_samples.1),
                    );
                    if dn > 0 {
                        t.backpressure_ratio = dh as f64 / dn as f64;
                        t.backpressure_at_ms = epoch_ms();
                    }
                    t.backpressure_samples = (n, hits);
                    // Kept encoded, once checked; a bad one leaves the last good one.
                    for (field, bytes, what) in [
                        (&mut t.markers, &r.markers, "latency marker"),
                        (&mut t.latency, &r.latency, "latency"),
                    ] {
                        let Some(bytes) = bytes else { continue };
                        match super::decode_latency(bytes) {
                            Ok(_) => *field = Some(bytes.clone()),
                            Err(e) => {
                                tracing::warn!(task = ?r.task, "ignoring a {what} report: {e}")
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: JmCommand) {
        match cmd {
            JmCommand::Submit(spec, reply) => self.submit(*spec, reply),
            JmCommand::Built(b) => {
                let BuiltSubmission {
                    spec,
                    config,
                    recovery,
                    built,
                    reply,
                } = *b;
                if recovery
                    .as_ref()
                    .is_some_and(|r| Some(r.token) != self.leading)
                {
                    // Built for an earlier term of leadership: that term is over.
                    return;
                }
                let recovered = recovery.as_ref().map(|r| r.id.clone());
                let result = built.and_then(|(graph, restore)| {
                    self.admit(spec, &config, graph, restore, recovery)
                });
                if let (Some(id), Err((_, why))) = (recovered, &result) {
                    tracing::error!(job = %id, %why, "cannot recover the job; it stays in the job store");
                }
                let _ = reply.send(result);
            }
            JmCommand::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(&id));
            }
            JmCommand::Savepoint(req, reply) => {
                let _ = reply.send(self.savepoint(req));
            }
        }
    }

    /// Takes a submission: checks its configuration here, builds its graph on a thread
    /// of its own, and admits it when that is done ([`JmCommand::Built`]).
    fn submit(
        &mut self,
        spec: JobSpec,
        reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ) {
        self.submit_as(spec, reply, None);
    }

    /// [`Self::submit`], or the recovery of a stored job.
    fn submit_as(
        &mut self,
        mut spec: JobSpec,
        reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
        recovery: Option<Recovery>,
    ) {
        // The job's own settings over the cluster's (Flink's `run -D`).
        let mut jc = self.config.clone();
        if let Err(e) = jc.apply_overrides(&spec.config) {
            let _ = reply.send(Err((400, format!("the job's configuration: {e}"))));
            return;
        }
        // Directories the job names for its checkpoints and savepoints (the cluster's
        // own are trusted).
        for (dir, ours, what) in [
            (
                &jc.checkpointing.dir,
                &self.config.checkpointing.dir,
                "the checkpoint directory",
            ),
            (
                &jc.checkpointing.savepoint_dir,
                &self.config.checkpointing.savepoint_dir,
                "the savepoint directory",
            ),
        ] {
            if let Some(d) = dir.as_ref().filter(|d| Some(*d) != ours.as_ref()) {
                if let Err(e) = crate::security::check_job_path(d, what) {
                    let _ = reply.send(Err((400, e)));
                    return;
                }
            }
        }
        // The job's mode travels with it, so that every TaskManager builds it alike.
        spec.runtime_mode.get_or_insert(jc.runtime_mode);
        spec.auto_watermark_interval_ns.get_or_insert(
            u64::try_from(jc.auto_watermark_interval.as_nanos()).unwrap_or(u64::MAX),
        );
        if spec.max_parallelism.is_none() {
            spec.max_parallelism = jc.max_parallelism;
        }
        let tx = self.own_commands.clone();
        let spawned = std::thread::Builder::new()
            .name("job-builder".into())
            .spawn(move || {
                let mut built = build_submission(&spec, &jc);
                if let (Err((_, why)), Some(r)) = (&built, &recovery) {
                    // The checkpoint etcd points to may be gone (retention removed it
                    // after a newer one completed, and the leader died before it moved
                    // the pointer): the newest complete checkpoint of the job's
                    // directory is as good (its sinks committed no further).
                    if let Some(dir) = jc.checkpointing.dir.as_ref().map(|d| d.join(&r.id)) {
                        tracing::warn!(job = %r.id, %why, dir = %dir.display(), "resuming from the newest complete checkpoint of the job's directory instead");
                        spec.savepoint_path = Some(dir.display().to_string());
                        built = build_submission(&spec, &jc);
                    }
                }
                // A closed channel: the JobManager is stopping.
                let _ = tx.send(JmCommand::Built(Box::new(BuiltSubmission {
                    spec,
                    config: jc,
                    recovery,
                    built,
                    reply,
                })));
            });
        if let Err(e) = spawned {
            // The closure (and the reply in it) is gone: the REST request sees the
            // JobManager unable to answer, and the log says why.
            tracing::error!(error = %e, "cannot start a job builder thread");
        }
    }

    /// Admits a job whose graph was built: places it, or says why not.
    fn admit(
        &mut self,
        spec: JobSpec,
        jc: &Config,
        graph: JobGraph,
        restore: Option<crate::checkpoint::CompletedCheckpoint>,
        recovery: Option<Recovery>,
    ) -> Result<String, (u16, String)> {
        let (group_offsets, needed) = graph.group_offsets();
        let free = self.free_slots().len();
        if needed > free && recovery.is_none() {
            return Err((
                400,
                format!("the job needs {needed} task slots; {free} are free in the cluster"),
            ));
        }
        let id = match &recovery {
            Some(r) => r.id.clone(),
            None => super::new_id(),
        };
        if recovery.is_none() {
            if self.ha.is_some()
                && jc.checkpointing.interval.is_some()
                && jc.checkpointing.dir.is_none()
            {
                return Err((
                    400,
                    "with high availability, a job's checkpoints must outlive its \
                     JobManager: set state.checkpoints.dir"
                        .into(),
                ));
            }
            self.store_job(&id, &spec)?;
        }
        let mut coord =
            CheckpointCoordinator::new(&jc.checkpointing, &graph, &id).with_remote_tasks();
        if let Some(cp) = restore {
            let path = spec.savepoint_path.as_deref().unwrap_or("");
            tracing::info!(job = %id, %path, checkpoint = cp.meta.checkpoint_id, "resuming from a checkpoint");
            coord.restore_from(Arc::new(cp));
        }
        let regions = pipelined_regions(&graph);
        let region_of = regions
            .iter()
            .enumerate()
            .flat_map(|(r, ts)| ts.iter().map(move |t| (*t, r)))
            .collect();
        let job = JobEntry {
            id: id.clone(),
            spec,
            state: JobState::Created,
            attempt: 0,
            executions: BTreeMap::new(),
            restarts: 0,
            start_epoch_ms: epoch_ms(),
            end_epoch_ms: None,
            vertices: graph
                .vertices
                .iter()
                .map(|v| VertexInfo {
                    id: v.id,
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                })
                .collect(),
            slots_needed: needed,
            tasks: BTreeMap::new(),
            past_latency: None,
            exceptions: Vec::new(),
            exceptions_truncated: false,
            results: std::collections::VecDeque::new(),
            results_dropped: 0,
            results_bytes: 0,
            strategy: restart::from_config(jc),
            strategy_exhausted: false,
            restart_at: None,
            group_offsets,
            vertex_groups: graph
                .vertices
                .iter()
                .map(|v| v.slot_sharing_group.clone())
                .collect(),
            regions,
            region_of,
            edges: graph
                .edges
                .iter()
                .map(|e| {
                    let forward = matches!(e.partition, crate::graph::EdgePartition::Forward);
                    (e.from as u32, e.to as u32, forward)
                })
                .collect(),
            failover: jc.failover_strategy,
            region_restarts: BTreeMap::new(),
            deploy_settings: DeploySettings::of(jc),
            waiting_for_slots_since: None,
            coord,
            savepoint_requests: HashMap::new(),
            stop_with: None,
            end_as: None,
            timestamps: BTreeMap::new(),
            stamped: None,
            max_parallelism: graph.max_parallelism,
            plan_edges: graph
                .edges
                .iter()
                .map(|e| (e.from, e.to, e.partition.name()))
                .collect(),
        };
        let mut job = job;
        if let Some(r) = &recovery {
            tracing::info!(job = %id, name = %job.spec.job, attempt = r.attempt, "job recovered from the job store");
            job.attempt = r.attempt;
            if needed > free {
                // The TaskManagers have not all registered with this leader yet: wait
                // for slots as a restart does (at most `slot.request.timeout`).
                job.attempt = r.attempt - 1;
                job.state = JobState::Restarting;
                job.restart_at = Some(Instant::now());
            }
        } else {
            tracing::info!(job = %id, name = %job.spec.job, slots = needed, "job submitted");
        }
        let mut st = lock(&self.state);
        let mut ended: Vec<(u64, String)> = st
            .jobs
            .values()
            .filter(|j| j.state.is_terminal())
            .map(|j| (j.end_epoch_ms.unwrap_or(0), j.id.clone()))
            .collect();
        if ended.len() >= MAX_ENDED_JOBS {
            ended.sort();
            for (_, old) in ended.iter().take(ended.len() + 1 - MAX_ENDED_JOBS) {
                st.jobs.remove(old);
            }
        }
        let waits = job.state == JobState::Restarting;
        st.jobs.insert(id.clone(), job);
        drop(st);
        if !waits && !self.deploy(&id) {
            return Err((500, "could not deploy the job".into()));
        }
        Ok(id)
    }

    /// Free slots, TaskManagers in id order.
    fn free_slots(&self) -> Vec<(TaskManagerId, u32)> {
        let st = lock(&self.state);
        let mut used = std::collections::HashSet::new();
        for j in st.jobs.values().filter(|j| !j.state.is_terminal()) {
            for t in j.tasks.values() {
                used.insert((t.taskmanager.clone(), t.slot));
            }
        }
        st.taskmanagers
            .values()
            .flat_map(|t| t.slots.iter().map(move |s| (t.id.clone(), s.index)))
            .filter(|k| !used.contains(k))
            .collect()
    }

    /// Deploys the job's current attempt; false if there are not enough slots.
    fn deploy(&mut self, id: &str) -> bool {
        if !self.still_leading() {
            return false;
        }
        let free = self.free_slots();
        let mut st = lock(&self.state);
        let settings = st
            .jobs
            .get(id)
            .map_or_else(|| DeploySettings::of(&st.config), |j| j.deploy_settings);
        let peers = peers_of(&st);
        let Some(job) = st.jobs.get_mut(id) else {
            return false;
        };
        if free.len() < job.slots_needed {
            return false;
        }
        job.clear_tasks();
        let mut sends = Vec::new();
        let mut placements = Vec::new();
        for v in &job.vertices {
            let group = &job.vertex_groups[v.id];
            let offset = job
                .group_offsets
                .iter()
                .find(|g| &g.0 == group)
                .map_or(0, |g| g.1);
            for s in 0..v.parallelism {
                placements.push(((v.id as u32, s as u32), free[offset + s].clone()));
            }
        }
        let attempt = job.attempt;
        for (k, at) in placements {
            sends.push(job.place(k, at, attempt, settings));
        }
        job.start_checkpoint_attempt();
        if let Some(m) = oversized_restore(&sends) {
            fail_entry(job, m);
            drop(st);
            self.job_ended(id);
            return true;
        }
        job.wire_remote(
            &peers,
            settings.same_host_tcp,
            &mut self.next_channel,
            &mut sends,
        );
        // A first deployment is CREATED until every subtask reports; a restarted job goes
        // RESTARTING → RUNNING, as in Flink.
        job.state = if job.restarts == 0 {
            JobState::Created
        } else {
            JobState::Running
        };
        job.waiting_for_slots_since = None;
        let conns: HashMap<TaskManagerId, ConnId> = st
            .taskmanagers
            .values()
            .map(|t| (t.id.clone(), t.conn))
            .collect();
        drop(st);
        for (tm, d) in sends {
            if let Some(conn) = conns.get(&tm) {
                self.endpoint.send(*conn, JmToTm::Deploy(Box::new(d)));
            }
        }
        true
    }

    fn cancel(&mut self, id: &str) -> Result<(), (u16, String)> {
        let mut st = lock(&self.state);
        let Some(job) = st.jobs.get_mut(id) else {
            return Err((404, format!("Job {id} not found")));
        };
        match job.state {
            JobState::Created | JobState::Running | JobState::Failing => {
                job.state = JobState::Cancelling;
                job.region_restarts.clear();
                drop(st);
                self.send_cancel(id, None);
                self.evaluate(id);
            }
            JobState::Restarting => {
                job.state = JobState::Canceled;
                job.end_epoch_ms = Some(epoch_ms());
                drop(st);
                self.job_ended(id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Triggers a savepoint of a running job; returns the request's id.
    fn savepoint(&mut self, req: SavepointRequest) -> Result<String, (u16, String)> {
        let target = {
            let mut st = lock(&self.state);
            let Some(j) = st.jobs.get_mut(&req.job_id) else {
                return Err((404, format!("Job {} not found", req.job_id)));
            };
            if j.state != JobState::Running || !j.region_restarts.is_empty() {
                return Err((
                    409,
                    format!(
                        "Job {} is {} (a savepoint needs all its tasks running)",
                        req.job_id,
                        j.state.name()
                    ),
                ));
            }
            // A stop whose savepoint ended without completing (aborted by a restart,
            // say) no longer stands.
            if let Some((sid, _)) = j.stop_with {
                if j.coord.savepoint_status(sid) == Some(SavepointStatus::InProgress) {
                    return Err((409, format!("Job {} is being stopped", req.job_id)));
                }
                j.stop_with = None;
            }
            match req.target.as_deref() {
                Some(t) => {
                    let p = std::path::PathBuf::from(t.strip_prefix("file://").unwrap_or(t));
                    crate::security::check_job_path(&p, "the savepoint directory")
                        .map_err(|e| (400, e))?;
                    p
                }
                None => j.coord.config().savepoint_dir.clone().ok_or((
                    400,
                    "no savepoint directory: give one (target-directory), or set \
                     state.savepoints.dir"
                        .to_string(),
                ))?,
            }
        };
        let mut result = None;
        self.checkpoint_step(&req.job_id, |c| {
            result = Some(c.trigger_savepoint(&target, req.then.is_some(), Instant::now()));
            CoordinatorVerdict::Continue
        });
        let sid = match result {
            Some(Ok(sid)) => sid,
            Some(Err(e)) => return Err((400, e)),
            None => return Err((409, format!("Job {} has ended", req.job_id))),
        };
        let request = super::new_id();
        let mut st = lock(&self.state);
        if let Some(j) = st.jobs.get_mut(&req.job_id) {
            j.savepoint_requests.insert(request.clone(), sid);
            if let Some(end) = req.then {
                j.stop_with = Some((sid, end));
            }
        }
        Ok(request)
    }

    /// Cancels the job's tasks in `region` (or all of them), on their TaskManagers.
    fn send_cancel(&self, id: &str, region: Option<usize>) {
        let st = lock(&self.state);
        let Some(job) = st.jobs.get(id) else { return };
        let mut by_tm: BTreeMap<&TaskManagerId, Vec<TaskKey>> = BTreeMap::new();
        for ((v, s), t) in &job.tasks {
            if region.is_some_and(|r| job.region_of.get(&(*v, *s)) != Some(&r)) {
                continue;
            }
            by_tm.entry(&t.taskmanager).or_default().push(TaskKey {
                job_id: id.to_string(),
                attempt: t.attempt,
                vertex: *v,
                subtask: *s,
            });
        }
        for (tm, keys) in by_tm {
            if let Some(t) = st.taskmanagers.get(tm) {
                self.endpoint.send(
                    t.conn,
                    JmToTm::Cancel {
                        job_id: id.to_string(),
                        tasks: region.map(|_| keys),
                    },
                );
            }
        }
    }

    fn job_ended(&self, id: &str) {
        self.unstore_job(id);
        let st = lock(&self.state);
        if let Some(job) = st.jobs.get(id) {
            tracing::info!(job = %id, state = job.state.name(), restarts = job.restarts, "job ended");
        }
        for t in st.taskmanagers.values() {
            self.endpoint.send(
                t.conn,
                JmToTm::JobEnded {
                    job_id: id.to_string(),
                },
            );
        }
    }

    /// A subtask of `job` changed state (`attempt` None: whatever deployment it is in).
    fn task_changed(&mut self, job: &str, attempt: Option<u32>, v: u32, s: u32, state: TaskState) {
        {
            let mut st = lock(&self.state);
            let Some(j) = st.jobs.get_mut(job) else {
                return;
            };
            if j.state.is_terminal() {
                return;
            }
            let name = j
                .vertices
                .get(v as usize)
                .map(|x| format!("{} ({}/{})", x.name, s.saturating_add(1), x.parallelism))
                .unwrap_or_default();
            let Some(t) = j.tasks.get_mut(&(v, s)) else {
                return;
            };
            if attempt.is_some_and(|a| a != t.attempt)
                || t.state.as_ref().is_some_and(TaskState::is_terminal)
            {
                return;
            }
            if let TaskState::Failed(m) = &state {
                if j.exceptions.len() >= MAX_EXCEPTIONS {
                    j.exceptions.remove(0);
                    j.exceptions_truncated = true;
                }
                j.exceptions.push(ExceptionEntry {
                    timestamp_ms: epoch_ms(),
                    task: format!("{name} on {}", t.taskmanager),
                    message: m.clone(),
                    subtask: Some((name.clone(), t.taskmanager.0.clone())),
                });
            }
            if t.state.as_ref() != Some(&state) {
                t.state_since_ms = epoch_ms();
            }
            t.state = Some(state.clone());
            if matches!(state, TaskState::Failed(_) | TaskState::Canceled) {
                j.coord.abort_pending("a subtask failed");
            }
        }
        if state == TaskState::Finished {
            // Checkpoints in flight take its final state; one may complete now.
            self.checkpoint_step(job, |c| c.task_finished(v, s));
        }
        if matches!(state, TaskState::Failed(_)) {
            self.on_task_failed(job, v, s);
        }
        self.evaluate(job);
    }

    /// Region failover restarts the failed task's pipelined region (when the job has
    /// more than one); full failover, or a strategy that allows no more restarts,
    /// cancels the whole job.
    fn on_task_failed(&mut self, job: &str, v: u32, s: u32) {
        let now_ms = lock(&self.state).now_ms();
        let mut st = lock(&self.state);
        let Some(j) = st.jobs.get_mut(job) else {
            return;
        };
        if !matches!(j.state, JobState::Created | JobState::Running) {
            return;
        }
        let region = j.region_of.get(&(v, s)).copied();
        if j.failover == FailoverStrategy::Region && j.regions.len() > 1 {
            if let Some(r) = region {
                if j.region_restarts.contains_key(&r) {
                    return; // that region is restarting already
                }
                j.strategy.notify_failure(now_ms);
                if j.strategy.can_restart() {
                    tracing::warn!(job = %job, region = r, "restarting a pipelined region");
                    j.region_restarts.insert(r, None);
                    drop(st);
                    self.send_cancel(job, Some(r));
                    return;
                }
                j.state = JobState::Failing;
                j.region_restarts.clear();
                j.strategy_exhausted = true;
                drop(st);
                self.send_cancel(job, None);
                return;
            }
        }
        j.state = JobState::Failing;
        drop(st);
        self.send_cancel(job, None);
    }

    /// Moves the job along its state machine after a subtask changed.
    fn evaluate(&mut self, id: &str) {
        let mut ended = false;
        let now_ms = lock(&self.state).now_ms();
        {
            let mut st = lock(&self.state);
            let Some(j) = st.jobs.get_mut(id) else { return };
            let all =
                |f: &dyn Fn(&Option<TaskState>) -> bool| j.tasks.values().all(|t| f(&t.state));
            let all_terminal = all(&|s| s.as_ref().is_some_and(TaskState::is_terminal));
            match j.state {
                JobState::Created | JobState::Running
                    if j.region_restarts.is_empty()
                        && all(&|s| matches!(s, Some(TaskState::Finished))) =>
                {
                    j.state = JobState::Finished;
                    j.end_epoch_ms = Some(epoch_ms());
                    ended = true;
                }
                JobState::Created if all(&|s| s.is_some()) => j.state = JobState::Running,
                JobState::Cancelling if all_terminal => {
                    // A stop with a savepoint ends FINISHED (as Flink's).
                    j.state = j.end_as.take().unwrap_or(JobState::Canceled);
                    j.end_epoch_ms = Some(epoch_ms());
                    ended = true;
                }
                JobState::Failing if all_terminal => {
                    if !j.strategy_exhausted {
                        j.strategy.notify_failure(now_ms);
                    }
                    if !j.strategy_exhausted && j.strategy.can_restart() {
                        let backoff = j.strategy.backoff_time();
                        tracing::warn!(job = %id, ?backoff, "restarting the job");
                        j.state = JobState::Restarting;
                        j.restart_at = Some(Instant::now() + backoff);
                    } else {
                        j.state = JobState::Failed;
                        j.end_epoch_ms = Some(epoch_ms());
                        ended = true;
                    }
                }
                _ => {}
            }
            // Regions whose tasks have all ended wait out the backoff, then restart.
            let backoff = j.strategy.backoff_time();
            let pending: Vec<usize> = j
                .region_restarts
                .iter()
                .filter(|(_, at)| at.is_none())
                .map(|(r, _)| *r)
                .collect();
            for r in pending {
                let done = j.regions[r].iter().all(|k| {
                    j.tasks
                        .get(k)
                        .is_none_or(|t| t.state.as_ref().is_some_and(TaskState::is_terminal))
                });
                if done {
                    j.region_restarts.insert(r, Some(Instant::now() + backoff));
                }
            }
        }
        // Rings of ended deployments are removed by their tasks; what a dead process
        // left is swept when the job ends (not on a restart: a sweep by job prefix could
        // catch the new deployment's rings).
        if ended {
            self.job_ended(id);
        }
    }

    /// Redeploys the regions whose backoff has passed, on their old slots where the
    /// TaskManager lives, else on free ones.
    fn restart_due_regions(&mut self) {
        let due: Vec<(String, usize)> = lock(&self.state)
            .jobs
            .values()
            .filter(|j| j.state == JobState::Running || j.state == JobState::Created)
            .flat_map(|j| {
                j.region_restarts
                    .iter()
                    .filter(|(_, at)| at.is_some_and(|t| Instant::now() >= t))
                    .map(|(r, _)| (j.id.clone(), *r))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, r) in due {
            let mut free = self.free_slots().into_iter();
            let mut st = lock(&self.state);
            let live: std::collections::HashSet<TaskManagerId> =
                st.taskmanagers.keys().cloned().collect();
            let conns: HashMap<TaskManagerId, ConnId> = st
                .taskmanagers
                .values()
                .map(|t| (t.id.clone(), t.conn))
                .collect();
            let settings = st
                .jobs
                .get(&id)
                .map_or_else(|| DeploySettings::of(&st.config), |j| j.deploy_settings);
            let peers = peers_of(&st);
            let Some(j) = st.jobs.get_mut(&id) else {
                continue;
            };
            // Keep slots on live TaskManagers; move the others, keeping slot sharing.
            let mut moved: HashMap<(TaskManagerId, u32), (TaskManagerId, u32)> = HashMap::new();
            let mut placement = Vec::new();
            let mut enough = true;
            for k in &j.regions[r] {
                let Some(t) = j.tasks.get(k) else { continue };
                let old = (t.taskmanager.clone(), t.slot);
                let new = if live.contains(&old.0) {
                    old
                } else if let Some(n) = moved.get(&old) {
                    n.clone()
                } else if let Some(n) = free.next() {
                    moved.insert(old, n.clone());
                    n
                } else {
                    enough = false;
                    break;
                };
                placement.push((*k, new));
            }
            if !enough {
                // No slot for it yet (a TaskManager is being replaced): try again soon.
                j.region_restarts
                    .insert(r, Some(Instant::now() + Duration::from_millis(100)));
                continue;
            }
            j.attempt += 1;
            j.restarts += 1;
            j.region_restarts.remove(&r);
            let attempt = j.attempt;
            let mut sends = Vec::new();
            for (k, at) in placement {
                sends.push(j.place(k, at, attempt, settings));
            }
            j.start_checkpoint_attempt();
            if let Some(m) = oversized_restore(&sends) {
                fail_entry(j, m);
                drop(st);
                self.send_cancel(&id, None);
                self.job_ended(&id);
                continue;
            }
            j.wire_remote(
                &peers,
                settings.same_host_tcp,
                &mut self.next_channel,
                &mut sends,
            );
            drop(st);
            tracing::warn!(job = %id, region = r, attempt, "redeploying a pipelined region");
            for (tm, d) in sends {
                if let Some(conn) = conns.get(&tm) {
                    self.endpoint.send(*conn, JmToTm::Deploy(Box::new(d)));
                }
            }
        }
    }

    /// Redeploys jobs whose restart backoff has passed (when slots are free).
    fn restart_due_jobs(&mut self) {
        let due: Vec<String> = lock(&self.state)
            .jobs
            .values()
            .filter(|j| j.state == JobState::Restarting)
            .filter(|j| j.restart_at.is_some_and(|t| Instant::now() >= t))
            .map(|j| j.id.clone())
            .collect();
        for id in due {
            {
                let mut st = lock(&self.state);
                let Some(j) = st.jobs.get_mut(&id) else {
                    continue;
                };
                j.attempt += 1;
                j.restarts += 1;
                j.clear_tasks();
            }
            if !self.deploy(&id) {
                // Not enough slots yet (a TaskManager is being replaced): try again soon,
                // for at most `slot.request.timeout` (then the job fails, as in Flink).
                let timeout = self.config.slot_request_timeout;
                let mut failed = false;
                {
                    let mut st = lock(&self.state);
                    if let Some(j) = st.jobs.get_mut(&id) {
                        j.attempt -= 1;
                        j.restarts -= 1;
                        let since = *j.waiting_for_slots_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= timeout {
                            let message = format!(
                                "could not get the {} task slots the job needs within \
                                 slot.request.timeout ({} ms)",
                                j.slots_needed,
                                timeout.as_millis()
                            );
                            tracing::error!(job = %id, %message, "job failed");
                            if j.exceptions.len() >= MAX_EXCEPTIONS {
                                j.exceptions.remove(0);
                                j.exceptions_truncated = true;
                            }
                            j.exceptions.push(ExceptionEntry {
                                timestamp_ms: epoch_ms(),
                                task: "JobMaster".into(),
                                message,
                                subtask: None,
                            });
                            j.state = JobState::Failed;
                            j.end_epoch_ms = Some(epoch_ms());
                            failed = true;
                        } else {
                            j.state = JobState::Restarting;
                            j.restart_at = Some(Instant::now() + Duration::from_millis(100));
                        }
                    }
                }
                if failed {
                    self.job_ended(&id);
                }
            }
        }
    }

    /// Closes connections that completed the handshake but have not registered within
    /// `heartbeat.timeout` (a peer that holds a connection open and says nothing).
    fn close_silent_connections(&mut self) {
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<ConnId> = self
            .unregistered
            .iter()
            .filter(|(_, since)| since.elapsed() >= timeout)
            .map(|(c, _)| *c)
            .collect();
        for conn in silent {
            self.unregistered.remove(&conn);
            tracing::warn!(
                ?conn,
                ?timeout,
                "a peer connected and did not register in time; closed"
            );
            self.endpoint.close(conn);
        }
    }

    /// Whether this JobManager still leads, by the election's clock now (between two
    /// rounds of the loop, a paused leader may have woken with its lease over).
    fn still_leading(&self) -> bool {
        self.ha.as_ref().is_none_or(|h| h.leading() == self.leading)
    }

    fn on_event(&mut self, ev: Event<TmToJm>) {
        if !self.still_leading() {
            return;
        }
        if let Event::Disconnected { conn, .. } = &ev {
            self.unregistered.remove(conn);
        }
        match ev {
            Event::Connected { conn, .. } => {
                self.unregistered.insert(conn, Instant::now());
            }
            Event::Message { conn, msg } => match msg {
                TmToJm::Register {
                    id,
                    host,
                    data_address,
                    slots,
                    cores,
                    network,
                    build,
                    jobs,
                } => {
                    if !valid_taskmanager_id(&id.0) {
                        tracing::error!(taskmanager = ?id.0, "a TaskManager with a malformed id tried to register; refused");
                        self.endpoint.send(
                            conn,
                            JmToTm::Refused {
                                reason: format!(
                                    "malformed TaskManager id {:?}: at most {MAX_TASKMANAGER_ID} \
                                     characters among letters, digits and . : - _ [ ] \
                                     (check taskmanager.host)",
                                    id.0.chars().take(MAX_TASKMANAGER_ID).collect::<String>()
                                ),
                                fatal: true,
                            },
                        );
                        return;
                    }
                    let ours = crate::jobs::build_fingerprint();
                    if build != ours {
                        tracing::error!(taskmanager = %id, theirs = %build, %ours, "a TaskManager of another build tried to register; refused");
                        self.endpoint.send(
                            conn,
                            JmToTm::Refused {
                                reason: format!(
                                    "it was built from another binary or job registry than \
                                     the JobManager (build {build}, jobs {jobs:?}; the \
                                     JobManager's build {ours}, jobs {:?}): start both from \
                                     the same binary",
                                    crate::jobs::registered_names()
                                ),
                                fatal: true,
                            },
                        );
                        return;
                    }
                    if let Some(other) = self.conns.get(&conn) {
                        if *other != id {
                            self.endpoint.send(
                                conn,
                                JmToTm::Refused {
                                    reason: format!("this connection is registered as {other}"),
                                    fatal: false,
                                },
                            );
                            return;
                        }
                    }
                    // An id registered on another connection that is still open belongs to
                    // that TaskManager: another peer cannot take it over (the owner, if it
                    // reconnects, registers again once its old connection is gone).
                    let old = lock(&self.state).taskmanagers.get(&id).map(|e| e.conn);
                    if let Some(old) = old.filter(|&old| old != conn) {
                        if self.conns.get(&old) == Some(&id) {
                            tracing::warn!(taskmanager = %id, "a peer tried to register under a live TaskManager's id; refused");
                            self.endpoint.send(
                                conn,
                                JmToTm::Refused {
                                    reason: format!(
                                        "TaskManager {id} is registered on another open connection"
                                    ),
                                    fatal: false,
                                },
                            );
                            return;
                        }
                        // A TaskManager that registers again (after a reconnect) starts
                        // afresh: what it ran under its old registration has failed.
                        self.lose(&id, "registered again");
                    }
                    let slots = bounded_slots(slots);
                    let (now, jm_id) = {
                        let st = lock(&self.state);
                        (st.now_ms(), st.jobmanager_id.clone())
                    };
                    tracing::info!(taskmanager = %id, %host, slots = slots.len(), "TaskManager registered");
                    lock(&self.state).taskmanagers.insert(
                        id.clone(),
                        TaskManagerEntry {
                            id: id.clone(),
                            host,
                            data_address,
                            slots,
                            cores,
                            network,
                            network_report: NetworkReport::default(),
                            conn,
                            last_heartbeat_ms: now,
                            slot_busy: BTreeMap::new(),
                        },
                    );
                    self.monitor.heard(id.clone(), now);
                    self.unregistered.remove(&conn);
                    self.conns.insert(conn, id);
                    self.endpoint.send(
                        conn,
                        JmToTm::Registered {
                            jobmanager_id: jm_id,
                            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis()
                                as u64,
                            fencing_token: self.leading.unwrap_or(0),
                        },
                    );
                }
                TmToJm::Heartbeat {
                    slots,
                    tasks,
                    network,
                } => {
                    if let Some(from) = self.conns.get(&conn).cloned() {
                        let own: Vec<TaskRecords> = tasks
                            .into_iter()
                            .filter(|t| self.hosts(&from, &t.task))
                            .collect();
                        self.update_records(&own);
                    }
                    let Some(id) = self.conns.get(&conn).cloned() else {
                        self.endpoint.send(
                            conn,
                            JmToTm::Refused {
                                reason: "heartbeat before registration".into(),
                                fatal: false,
                            },
                        );
                        self.endpoint.close(conn);
                        return;
                    };
                    let mut st = lock(&self.state);
                    let now = st.now_ms();
                    if let Some(e) = st.taskmanagers.get_mut(&id) {
                        let slots = bounded_slots(slots);
                        for s in &slots {
                            if let Some(old) = e.slots.iter().find(|o| o.index == s.index) {
                                if s.times.0 > old.times.0 {
                                    let ratio = SlotLoad::busy_ratio(old.times, s.times);
                                    e.slot_busy.insert(s.index, ratio);
                                }
                            }
                        }
                        e.slots = slots;
                        e.network_report = network;
                        e.last_heartbeat_ms = now;
                    }
                    drop(st);
                    self.monitor.heard(id, now);
                }
                TmToJm::TaskState {
                    task,
                    state,
                    records,
                } => {
                    // Only the TaskManager a task was deployed to speaks for it.
                    let Some(from) = self.conns.get(&conn).cloned() else {
                        return;
                    };
                    if !self.hosts(&from, &task) {
                        tracing::warn!(taskmanager = %from, ?task, "state report for a task it does not run; ignored");
                        return;
                    }
                    self.update_records(std::slice::from_ref(&records));
                    self.task_changed(
                        &task.job_id,
                        Some(task.attempt),
                        task.vertex,
                        task.subtask,
                        state,
                    );
                }
                TmToJm::AcknowledgeCheckpoint {
                    task,
                    checkpoint_id,
                    states,
                    alignment_ns,
                    sync_ns,
                    async_ns,
                } => {
                    let Some(from) = self.conns.get(&conn).cloned() else {
                        return;
                    };
                    if !self.hosts(&from, &task) {
                        return; // an ended deployment's, or not its to give
                    }
                    let ack = spate_dataplane::checkpoint::CheckpointAck {
                        checkpoint_id,
                        vertex: task.vertex,
                        subtask: task.subtask,
                        states,
                        alignment_ns,
                        sync_ns,
                        async_ns,
                        declined: None,
                    };
                    self.checkpoint_step(&task.job_id, |c| c.acknowledge(ack));
                }
                TmToJm::TasksEnded { job_id, attempt } => {
                    let Some(from) = self.conns.get(&conn).cloned() else {
                        return;
                    };
                    let ours = lock(&self.state).jobs.get(&job_id).is_some_and(|j| {
                        j.tasks
                            .values()
                            .any(|t| t.taskmanager == from && t.attempt == attempt)
                    });
                    if ours {
                        // The next poll triggers the final checkpoint.
                        self.checkpoint_step(&job_id, |c| {
                            c.task_ended();
                            CoordinatorVerdict::Continue
                        });
                    }
                }
                TmToJm::Results { job_id, lines } => {
                    // Only a registered TaskManager's; kept with the job.
                    if !self.conns.contains_key(&conn) {
                        return;
                    }
                    let mut st = lock(&self.state);
                    if let Some(j) = st.jobs.get_mut(&job_id) {
                        for l in lines {
                            j.results_bytes += l.len();
                            j.results.push_back(l);
                        }
                        // The last rows, as many as fit in the count and the bytes.
                        while j.results.len() > crate::sql::results::HELD
                            || j.results_bytes > crate::sql::results::HELD_BYTES
                        {
                            let Some(old) = j.results.pop_front() else {
                                break;
                            };
                            j.results_bytes -= old.len();
                            j.results_dropped += 1;
                        }
                    }
                }
                TmToJm::DeclineCheckpoint {
                    task,
                    checkpoint_id,
                    reason,
                } => {
                    let Some(from) = self.conns.get(&conn).cloned() else {
                        return;
                    };
                    if !self.hosts(&from, &task) {
                        return;
                    }
                    self.checkpoint_step(&task.job_id, |c| {
                        c.decline(checkpoint_id, task.vertex, task.subtask, &reason)
                    });
                }
            },
            Event::Disconnected { conn, reason } => {
                if let Some(id) = self.conns.remove(&conn) {
                    self.lose(&id, &format!("connection closed ({reason})"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taskmanager_ids_are_held_to_what_taskmanagers_make() {
        for ok in [
            "localhost:7249-cd8bde",
            "10.0.0.2:1234-ab",
            "[::1]:99-x",
            "rogue-2",
        ] {
            assert!(valid_taskmanager_id(ok), "{ok}");
        }
        let long = "a".repeat(MAX_TASKMANAGER_ID + 1);
        for bad in [
            "",
            "x'onclick=alert(1)",
            "a b",
            "<script>",
            "tm\n2",
            long.as_str(),
        ] {
            assert!(!valid_taskmanager_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_ended_task_is_not_back_pressured() {
        let mut t = TaskSlot {
            taskmanager: TaskManagerId("tm".into()),
            slot: 0,
            state: Some(TaskState::Running),
            attempt: 0,
            execution: 0,
            records_in: 0,
            records_out: 0,
            deployed_ms: 0,
            state_since_ms: 0,
            watermark: 0,
            backpressure_samples: (100, 90),
            backpressure_ratio: 0.9,
            backpressure_at_ms: 1,
            latency: None,
            markers: None,
        };
        assert_eq!(t.current_backpressure(), 0.9);
        for ended in [
            TaskState::Finished,
            TaskState::Canceled,
            TaskState::Failed("x".into()),
        ] {
            t.state = Some(ended);
            assert_eq!(t.current_backpressure(), 0.0);
        }
    }
}
