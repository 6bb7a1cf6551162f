//! The JobMaster of each job: its execution graph (subtasks, their slots, states and
//! metrics), scheduling and deployment, failover (full or by pipelined region) under
//! its restart strategy, and checkpoint coordination (the coordinator, savepoints,
//! stop and cancel).
//!
//! Its interface: [`JobManager::deploy`], [`JobManager::task_changed`] (what
//! TaskManagers report), [`JobManager::cancel`], [`JobManager::savepoint`],
//! [`JobManager::checkpoint_step`], and the periodic [`JobManager::poll_checkpoints`],
//! [`JobManager::restart_due_jobs`] and [`JobManager::restart_due_regions`].

use super::*;

/// Most operators a subtask's chain reports times for.
pub const MAX_CHAIN_OPERATORS: usize = 256;

/// Failures kept per job (`/jobs/:id/exceptions`).
pub const MAX_EXCEPTIONS: usize = 32;

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
    /// Its chain's operators' time per record, head first, as last reported (encoded).
    pub operators: Vec<(String, Option<Vec<u8>>)>,
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
    pub(super) strategy: Box<dyn RestartBackoffTimeStrategy>,
    /// The strategy already refused (a region failure): fail when the tasks have ended.
    pub(super) strategy_exhausted: bool,
    pub(super) restart_at: Option<Instant>,
    pub(super) group_offsets: Vec<(String, usize)>,
    pub(super) vertex_groups: Vec<String>,
    /// Pipelined regions: subtasks connected by edges (all of a vertex's subtasks when
    /// any of its edges is not forward; one pipeline per subtask index otherwise).
    pub regions: Vec<Vec<(u32, u32)>>,
    pub(super) region_of: HashMap<(u32, u32), usize>,
    /// Edges of the job graph: (from vertex, to vertex, forward).
    pub(super) edges: Vec<(u32, u32, bool)>,
    /// Failover strategy for this job.
    pub failover: FailoverStrategy,
    /// Regions being restarted, with the time their restart is due (once their tasks
    /// have all ended).
    pub(super) region_restarts: BTreeMap<usize, Option<Instant>>,
    /// What its deployments carry: the cluster's configuration with the job's own over it.
    pub(super) deploy_settings: DeploySettings,
    /// Since when a restart has been waiting for free slots.
    pub(super) waiting_for_slots_since: Option<Instant>,
    /// Its checkpoint coordinator.
    pub coord: CheckpointCoordinator,
    /// Savepoint requests (REST trigger ids) and the savepoints they triggered.
    pub savepoint_requests: HashMap<String, u64>,
    /// A stop (or cancel) with a savepoint: the savepoint, and the state the job ends
    /// in once it completed.
    pub(super) stop_with: Option<(u64, JobState)>,
    /// Cancelling after such a savepoint: the state to end in.
    pub(super) end_as: Option<JobState>,
    /// When the job last entered each state (Flink's `timestamps`, ms since the epoch).
    pub timestamps: BTreeMap<&'static str, u64>,
    /// The state `timestamps` last saw.
    pub(super) stamped: Option<JobState>,
    /// Key groups (`pipeline.max-parallelism`).
    pub max_parallelism: u32,
    /// Edges as the plan shows them: (from vertex, to vertex, Flink's ship strategy).
    pub plan_edges: Vec<(usize, usize, &'static str)>,
    /// Latencies recorded by deployments since replaced (restarts).
    pub(super) past_latency: Option<Vec<u8>>,
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
        crate::cluster::merge_latency(past.chain(live))
    }

    /// How long after their emission latency markers reached vertex `v`'s subtasks.
    pub fn vertex_marker_latency(&self, v: u32) -> Option<hdrhistogram::Histogram<u64>> {
        crate::cluster::merge_latency(
            self.tasks
                .iter()
                .filter(|((vertex, _), _)| *vertex == v)
                .filter_map(|(_, t)| t.markers.as_ref()),
        )
    }

    /// Vertex `v`'s operators, head first, with their time per record merged over its
    /// subtasks (ns; those not sampled yet left out).
    pub fn vertex_operator_times(&self, v: u32) -> Vec<(String, hdrhistogram::Histogram<u64>)> {
        let mut out: Vec<(String, Vec<&Vec<u8>>)> = Vec::new();
        for (_, t) in self.tasks.iter().filter(|((vertex, _), _)| *vertex == v) {
            for (i, (name, h)) in t.operators.iter().enumerate() {
                if out.len() <= i {
                    out.push((name.clone(), Vec::new()));
                }
                if let Some(h) = h {
                    out[i].1.push(h);
                }
            }
        }
        out.into_iter()
            .filter_map(|(name, hs)| Some((name, crate::cluster::merge_latency(hs.into_iter())?)))
            .collect()
    }

    /// The slot sharing group of vertex `v`.
    pub fn slot_sharing_group(&self, v: usize) -> &str {
        self.vertex_groups.get(v).map_or("default", String::as_str)
    }

    /// Notes the time the job entered its current state, if it changed.
    pub(super) fn stamp(&mut self, now_ms: u64) {
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
pub(super) struct DeploySettings {
    pub(super) default_parallelism: u32,
    pub(super) chaining: bool,
    pub(super) ring_size: u64,
    pub(super) same_host_tcp: bool,
    pub(super) latency_interval_ns: Option<u64>,
}

impl DeploySettings {
    pub(super) fn of(c: &Config) -> Self {
        Self {
            default_parallelism: c.default_parallelism as u32,
            chaining: c.chaining,
            ring_size: c.ring_size as u64,
            same_host_tcp: c.same_host_tcp,
            // Set for the cluster or the job: it travels with the deployment (as
            // Flink's latency tracking is a job's setting); else each TaskManager's own.
            latency_interval_ns: c
                .applied
                .contains_key("metrics.latency.interval")
                .then(|| u64::try_from(c.latency_interval.as_nanos()).unwrap_or(u64::MAX)),
        }
    }
}

impl JobEntry {
    /// Keeps the end-to-end latencies a subtask's deployment recorded in the job's,
    /// before that deployment is dropped (a restart).
    pub(super) fn keep_latency(&mut self, t: &TaskSlot) {
        if let Some(h) = t.latency.as_ref() {
            let merged = crate::cluster::merge_latency(self.past_latency.iter().chain(Some(h)));
            self.past_latency = merged.as_ref().and_then(crate::cluster::encode_latency);
        }
    }

    /// Drops every subtask's deployment (a full restart), keeping their latencies.
    pub(super) fn clear_tasks(&mut self) {
        for t in std::mem::take(&mut self.tasks).into_values() {
            self.keep_latency(&t);
        }
    }

    /// Places subtask `k` of deployment `attempt` on `at` (TaskManager, slot): records
    /// it as deploying and returns the deployment to send there.
    pub(super) fn place(
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
                operators: Vec::new(),
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
            latency_interval_ns: settings.latency_interval_ns,
        };
        (tm, d)
    }

    /// What subtask `k` of a new deployment takes part in checkpoints with: the mode,
    /// and its state from the latest completed checkpoint.
    pub(super) fn deploy_checkpointing(
        &self,
        k: (u32, u32),
    ) -> Option<crate::cluster::DeployCheckpointing> {
        // Always: savepoints are taken whether checkpoints are periodic or not.
        let latest = self.coord.latest();
        let parallelism = self
            .vertices
            .iter()
            .find(|v| v.id == k.0 as usize)
            .map_or(1, |v| v.parallelism as u32);
        Some(crate::cluster::DeployCheckpointing {
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
    pub(super) fn start_checkpoint_attempt(&mut self) {
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
    pub(super) fn wire_remote(
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
    pub(super) fn find(p: &mut [usize], mut x: usize) -> usize {
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

/// Why a deployment's restored states cannot be shipped, if one's are too large for an
/// RPC frame.
pub(super) fn oversized_restore(sends: &[(TaskManagerId, TaskDeployment)]) -> Option<String> {
    let limit = crate::rpc::MAX_FRAME - crate::cluster::STATE_FRAME_SLACK;
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
pub(super) fn fail_entry(j: &mut JobEntry, message: String) {
    tracing::error!(job = %j.id, %message, "job failed");
    push_exception(j, "JobMaster", message);
    j.state = JobState::Failed;
    j.end_epoch_ms = Some(epoch_ms());
}

pub(super) fn push_exception(j: &mut JobEntry, task: &str, message: String) {
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

impl JobManager {
    /// Notes when jobs entered their states (for the REST API's `timestamps`).
    pub(super) fn stamp_jobs(&mut self) {
        let now = epoch_ms();
        for j in lock(&self.state).jobs.values_mut() {
            j.stamp(now);
        }
    }

    /// Lets each running job's coordinator trigger checkpoints and expire old ones.
    pub(super) fn poll_checkpoints(&mut self) {
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
    pub(super) fn checkpoint_step(
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

    /// Whether `task` (that deployment of it) was placed on `tm`.
    pub(super) fn hosts(&self, tm: &TaskManagerId, task: &TaskKey) -> bool {
        let st = lock(&self.state);
        st.jobs
            .get(&task.job_id)
            .and_then(|j| j.tasks.get(&(task.vertex, task.subtask)))
            .is_some_and(|t| t.taskmanager == *tm && t.attempt == task.attempt)
    }

    pub(super) fn update_records(&self, records: &[TaskRecords]) {
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
                        match crate::cluster::decode_latency(bytes) {
                            Ok(_) => *field = Some(bytes.clone()),
                            Err(e) => {
                                tracing::warn!(task = ?r.task, "ignoring a {what} report: {e}")
                            }
                        }
                    }
                    // Operators' times: a chain has few (a peer's list is bounded), each
                    // histogram checked as the others.
                    if r.operators.len() <= MAX_CHAIN_OPERATORS
                        && r.operators.iter().all(|(name, h)| {
                            name.len() <= 1024
                                && h.as_ref()
                                    .is_none_or(|b| crate::cluster::decode_latency(b).is_ok())
                        })
                    {
                        t.operators = r.operators.clone();
                    } else {
                        tracing::warn!(task = ?r.task, "ignoring a malformed operator-time report");
                    }
                }
            }
        }
    }

    /// Deploys the job's current attempt; false if there are not enough slots.
    pub(super) fn deploy(&mut self, id: &str) -> bool {
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

    pub(super) fn cancel(&mut self, id: &str) -> Result<(), (u16, String)> {
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
    pub(super) fn savepoint(&mut self, req: SavepointRequest) -> Result<String, (u16, String)> {
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
        let request = crate::cluster::new_id();
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
    pub(super) fn send_cancel(&self, id: &str, region: Option<usize>) {
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

    pub(super) fn job_ended(&self, id: &str) {
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
    pub(super) fn task_changed(
        &mut self,
        job: &str,
        attempt: Option<u32>,
        v: u32,
        s: u32,
        state: TaskState,
    ) {
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
    pub(super) fn on_task_failed(&mut self, job: &str, v: u32, s: u32) {
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
    pub(super) fn evaluate(&mut self, id: &str) {
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
    pub(super) fn restart_due_regions(&mut self) {
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
    pub(super) fn restart_due_jobs(&mut self) {
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
}
