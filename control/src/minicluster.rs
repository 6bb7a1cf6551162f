//! The embedded MiniCluster: a JobManager and a TaskManager in one process. It starts
//! `taskmanager.numberOfTaskSlots` pinned slot threads, places a job's subtasks into
//! slots (one subtask of each vertex per slot within a slot sharing group), connects
//! them with rings, and watches them to the end.

use crate::checkpoint::{CheckpointCoordinator, CoordinatorVerdict, SavepointStatus};
use crate::config::Config;
use crate::graph::{AnyBox, Build, EdgePartition, JobGraph, Node, TypeOps};
use crate::restart;
use hdrhistogram::Histogram;
use spate_dataplane::checkpoint::{RestoreScope, TaskCheckpointing};
use spate_dataplane::exchange::Backpressure;
use spate_dataplane::operator::SubtaskInfo;
use spate_dataplane::ring::{Consumer, Producer, Ring, RingError};
use spate_dataplane::slot::{
    available_cores, plan_cores, Slot, SlotConfig, SlotEvent, Task, TaskError, TaskFactory, TaskId,
};
use spate_dataplane::task::{Outputs, TaskMetrics, TaskSettings};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the watching thread blocks between looks at the cancel flag. Kept long:
/// on a machine whose cores all run busy-spinning slots, every wake-up of this thread
/// preempts a slot.
const EVENT_WAIT: Duration = Duration::from_millis(100);

/// Why a job could not run.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// More slots needed than configured.
    #[error("the job needs {needed} task slots but the cluster has {available} (set taskmanager.numberOfTaskSlots or lower the parallelism)")]
    NotEnoughSlots {
        /// Slots the job needs.
        needed: usize,
        /// Slots there are.
        available: usize,
    },
    /// A ring could not be created.
    #[error("creating a ring: {0}")]
    Ring(#[from] RingError),
    /// A slot thread could not be started.
    #[error("starting slot thread: {0}")]
    Spawn(std::io::Error),
    /// A slot stopped unexpectedly.
    #[error("slot {0} has stopped")]
    SlotGone(usize),
    /// The checkpoint to resume from cannot be used.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    /// Every task finished.
    Finished,
    /// A task failed; the message says which and why.
    Failed(String),
    /// Cancelled (Ctrl-C or a request).
    Canceled,
}

/// Figures of a running or finished job.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Since deployment.
    pub elapsed: Duration,
    /// Records seen by the sinks.
    pub records: u64,
    /// Latencies recorded by latency sinks (ns).
    pub latency: Histogram<u64>,
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// How it ended.
    pub status: JobStatus,
    /// Final figures (over all attempts).
    pub progress: Progress,
    /// Times the job was restarted.
    pub restarts: u32,
    /// The failures, oldest first (the last one ended the job if it failed).
    pub exceptions: Vec<String>,
    /// Its checkpoints.
    pub checkpoints: crate::checkpoint::CheckpointStats,
    /// Its id (names its checkpoint directory).
    pub job_id: String,
    /// The savepoint it was stopped with (cancelled with `state.savepoints.dir` set).
    pub savepoint: Option<std::path::PathBuf>,
    /// Per vertex that latency markers reached (`metrics.latency.interval`), in the
    /// job graph's order: its name and how long after their emission they got there.
    pub from_source: Vec<(String, Histogram<u64>)>,
    /// Each chained operator (with latency markers on), in the job graph's order: its
    /// own time per record on the batches its tasks sampled (ns).
    pub operators: Vec<(String, Histogram<u64>)>,
}

/// Starts `taskmanager.numberOfTaskSlots` slot threads pinned per
/// `taskmanager.cpu.cores` (warning where cores must be shared), reporting to one channel.
pub fn start_slots(
    config: &Config,
    name: &str,
) -> Result<(Vec<Slot>, Receiver<SlotEvent>), ClusterError> {
    let (slots, _, rx) = start_slots_with_sender(config, name)?;
    Ok((slots, rx))
}

type SlotsWithSender = (Vec<Slot>, Sender<SlotEvent>, Receiver<SlotEvent>);

/// As [`start_slots`], also returning a sender into the slots' event channel (for
/// tasks' checkpoint acknowledgements).
fn start_slots_with_sender(config: &Config, name: &str) -> Result<SlotsWithSender, ClusterError> {
    let plan = plan_cores(&config.cores, &available_cores(), config.slots);
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let (tx, rx) = channel();
    let mut slots = Vec::with_capacity(config.slots);
    for (index, core) in plan.cores.iter().enumerate() {
        let slot = Slot::spawn(
            SlotConfig {
                index,
                core: *core,
                idle: config.idle,
                name: name.into(),
            },
            tx.clone(),
        )
        .map_err(ClusterError::Spawn)?;
        slots.push(slot);
    }
    Ok((slots, tx, rx))
}

/// An embedded cluster.
#[derive(Debug)]
pub struct MiniCluster {
    config: Config,
    slots: Vec<Slot>,
    events: Receiver<SlotEvent>,
    /// Where tasks send checkpoint acknowledgements (into `events`).
    acks: Sender<SlotEvent>,
    next_task: u64,
    /// The savepoint the running job was stopped with.
    stopped_with: Option<std::path::PathBuf>,
    /// The running job's tasks' metrics (every attempt's), by vertex: their latency
    /// markers' ages for the summary.
    task_metrics: Vec<(usize, Arc<TaskMetrics>)>,
}

impl MiniCluster {
    /// Starts the slots: pinned per `taskmanager.cpu.cores`, idling per
    /// `taskmanager.idle-strategy`.
    pub fn start(config: &Config) -> Result<Self, ClusterError> {
        // The store's settings are the process's: a MiniCluster whose configuration
        // names none (e.g. one of several in a test process) leaves those of another.
        if config.s3.is_set() {
            crate::storage::configure(&config.s3);
        }
        spate_dataplane::checkpoint::start_snapshot_writer();
        let (slots, acks, events) = start_slots_with_sender(config, "spate-slot")?;
        tracing::info!(slots = slots.len(), idle = %config.idle, "MiniCluster started");
        Ok(Self {
            config: config.clone(),
            slots,
            stopped_with: None,
            task_metrics: Vec::new(),
            events,
            acks,
            next_task: 0,
        })
    }

    /// The core each slot is pinned to.
    pub fn slot_cores(&self) -> Vec<Option<usize>> {
        self.slots.iter().map(Slot::core).collect()
    }

    /// Drops what an earlier job's tasks left: acknowledgements the snapshot writer
    /// still held when that job ended (its tasks were cancelled or failed), which would
    /// otherwise count toward this job's checkpoints of the same ids.
    fn drop_stale_acknowledgements(&mut self) {
        if !spate_dataplane::checkpoint::flush_snapshot_writer(Duration::from_secs(60)) {
            tracing::warn!("the snapshot writer did not drain within 60 s");
        }
        while self.events.try_recv().is_ok() {}
    }

    /// Runs `job` to its end: finished, failed, or cancelled when `cancel` is set.
    /// `on_progress` is called about every `interval`.
    ///
    /// With `state.savepoints.dir` set, `cancel` stops the job with a savepoint there
    /// instead (Flink's `stop --savepointPath`): the sources emit nothing after its
    /// barrier, the job ends FINISHED once it completed, and `JobResult::savepoint`
    /// says where it is (`spate run -s PATH` resumes from it). If the savepoint
    /// fails, the job is cancelled.
    ///
    /// A failed job restarts as `restart-strategy.*` allows. The MiniCluster restarts
    /// the whole job (full failover) from its latest completed checkpoint (with
    /// `execution.checkpointing.interval` set), or from `job.restore_from`, or else
    /// from the start of its sources.
    pub fn execute(
        &mut self,
        job: &JobGraph,
        cancel: &AtomicBool,
        interval: Duration,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<JobResult, ClusterError> {
        let (_, needed) = job.group_offsets();
        if needed > self.slots.len() {
            return Err(ClusterError::NotEnoughSlots {
                needed,
                available: self.slots.len(),
            });
        }
        self.drop_stale_acknowledgements();
        self.task_metrics.clear();
        let mut strategy = restart::from_config(&self.config);
        let job_id = crate::cluster::new_id();
        let mut coord = CheckpointCoordinator::new(&self.config.checkpointing, job, &job_id);
        if let Some(path) = &job.restore_from {
            let cp = crate::checkpoint::read_checkpoint(path)?;
            cp.check_compatible(job)?;
            tracing::info!(path = %path.display(), checkpoint = cp.meta.checkpoint_id, "resuming from a checkpoint");
            coord.restore_from(Arc::new(cp));
        }
        let start = Instant::now();
        let mut next_report = Instant::now() + interval;
        let mut exceptions = Vec::new();
        let mut restarts = 0;
        let status = loop {
            let status = self.run_attempt(
                job,
                &mut coord,
                cancel,
                start,
                interval,
                &mut next_report,
                on_progress,
            )?;
            let JobStatus::Failed(message) = &status else {
                break status;
            };
            exceptions.push(message.clone());
            strategy.notify_failure(start.elapsed().as_millis() as u64);
            if !strategy.can_restart() || cancel.load(Ordering::Relaxed) {
                break status;
            }
            let backoff = strategy.backoff_time();
            tracing::warn!(?backoff, restarts, "restarting the job after a failure");
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep((until - Instant::now()).min(Duration::from_millis(20)));
            }
            if cancel.load(Ordering::Relaxed) {
                break JobStatus::Canceled;
            }
            restarts += 1;
        };
        let metrics = &job.stream.metrics;
        let mut from_source: Vec<(String, Histogram<u64>)> = Vec::new();
        for v in &job.vertices {
            let merged = crate::cluster::merge_histograms(
                self.task_metrics
                    .iter()
                    .filter(|(id, _)| *id == v.id)
                    .filter_map(|(_, m)| m.marker_latency()),
            );
            if let Some(h) = merged {
                from_source.push((v.name.clone(), h));
            }
        }
        // Each chained operator's own time per record, merged over its subtasks.
        let mut operators: Vec<(String, Histogram<u64>)> = Vec::new();
        for v in &job.vertices {
            let mut per: Vec<(String, Vec<Histogram<u64>>)> = Vec::new();
            for (_, m) in self.task_metrics.iter().filter(|(id, _)| *id == v.id) {
                for (i, (name, h)) in m.operator_times().into_iter().enumerate() {
                    if per.len() <= i {
                        per.push((name, Vec::new()));
                    }
                    per[i].1.extend(h);
                }
            }
            for (name, hs) in per {
                if let Some(h) = crate::cluster::merge_histograms(hs.into_iter()) {
                    operators.push((name, h));
                }
            }
        }
        self.task_metrics.clear();
        Ok(JobResult {
            operators,
            status,
            progress: Progress {
                elapsed: start.elapsed(),
                records: metrics.records(),
                latency: metrics.latency(),
            },
            restarts,
            exceptions,
            checkpoints: coord.stats().clone(),
            job_id,
            savepoint: self.stopped_with.take(),
            from_source,
        })
    }

    /// Deploys every subtask once and watches them until all have ended.
    #[allow(clippy::too_many_arguments)]
    fn run_attempt(
        &mut self,
        job: &JobGraph,
        coord: &mut CheckpointCoordinator,
        cancel: &AtomicBool,
        start: Instant,
        interval: Duration,
        next_report: &mut Instant,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<JobStatus, ClusterError> {
        let (groups, _) = job.group_offsets();
        let mut deployments = self.connect(job)?;
        let restore = coord.latest();
        coord.start_attempt(
            deployments
                .iter()
                .map(|d| (d.vertex as u32, d.info.index as u32)),
        );
        let wake = self.acks.clone();
        coord.trigger().on_task_ended(move || {
            let _ = wake.send(SlotEvent::TaskEnded);
        });
        let acks = self.acks.clone();
        let sink: spate_dataplane::checkpoint::AckSink = Arc::new(move |ack| {
            // A closed channel means the MiniCluster is gone: nothing to acknowledge to.
            let _ = acks.send(SlotEvent::Checkpoint(ack));
        });
        for d in &mut deployments {
            let (v, s) = (d.vertex as u32, d.info.index as u32);
            d.checkpointing = Some(TaskCheckpointing {
                trigger: coord.trigger(),
                acks: sink.clone(),
                vertex: v,
                subtask: s,
                exactly_once: coord.exactly_once(),
                restored_from: restore.as_ref().map_or(0, |c| c.meta.checkpoint_id),
                final_checkpoint: coord.periodic(),
            });
            if let Some(cp) = &restore {
                d.restore = cp.subtask_states(v, s, d.info.parallelism as u32);
            }
        }
        let mut names = HashMap::new();
        let mut task_of: HashMap<TaskId, (u32, u32)> = HashMap::new();
        // Live tasks and the slot each runs in.
        let mut live: HashMap<TaskId, usize> = HashMap::new();
        for d in deployments {
            let offset = groups
                .iter()
                .find(|g| g.0 == job.vertices[d.vertex].slot_sharing_group)
                .map_or(0, |g| g.1);
            let slot = offset + d.info.index;
            let id = TaskId(self.next_task);
            self.next_task += 1;
            names.insert(id, d.name.clone());
            task_of.insert(id, (d.vertex as u32, d.info.index as u32));
            self.task_metrics.push((d.vertex, d.metrics.clone()));
            if !self.slots[slot].submit(id, d.into_factory()) {
                self.cancel_all(&mut live);
                return Err(ClusterError::SlotGone(slot));
            }
            live.insert(id, slot);
        }
        let metrics = job.stream.metrics.clone();
        let mut status = None;
        let mut cancelling = false;
        // A stop with a savepoint in flight (cancel with state.savepoints.dir set).
        let mut stopping: Option<u64> = None;
        while !live.is_empty() {
            let wait = coord
                .next_wakeup(Instant::now())
                .map_or(EVENT_WAIT, |w| w.min(EVENT_WAIT));
            let mut verdict = CoordinatorVerdict::Continue;
            match self.events.recv_timeout(wait) {
                Ok(SlotEvent::Finished { task, .. }) => {
                    live.remove(&task);
                    if let Some(&(v, s)) = task_of.get(&task) {
                        if !cancelling {
                            verdict = coord.task_finished(v, s);
                        }
                    }
                }
                Ok(SlotEvent::Cancelled { task, .. }) => {
                    live.remove(&task);
                }
                Ok(SlotEvent::Checkpoint(ack)) => {
                    if !cancelling {
                        verdict = coord.acknowledge(ack);
                    }
                }
                Ok(SlotEvent::Failed { task, message, .. }) => {
                    let was_live = live.remove(&task).is_some();
                    let name = names.get(&task).cloned().unwrap_or_default();
                    if was_live && status.is_none() {
                        tracing::error!(task = %name, %message, "task failed; cancelling the job");
                        status = Some(JobStatus::Failed(format!("{name}: {message}")));
                        cancelling = true;
                        self.cancel_all(&mut live);
                    }
                }
                Ok(SlotEvent::Running { .. } | SlotEvent::TaskEnded) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(ClusterError::SlotGone(0)),
            }
            if !cancelling {
                if verdict == CoordinatorVerdict::Continue {
                    verdict = coord.poll(Instant::now());
                }
                if let CoordinatorVerdict::FailJob(message) = verdict {
                    tracing::error!(%message, "failing the job");
                    status = Some(JobStatus::Failed(message));
                    cancelling = true;
                    self.cancel_all(&mut live);
                }
            }
            if stopping.is_some() && cancel.load(Ordering::Relaxed) {
                tracing::warn!("cancelled again: the job is cancelled without its savepoint");
                stopping = None;
                cancelling = true;
                status = Some(JobStatus::Canceled);
                self.cancel_all(&mut live);
            }
            if let Some(sid) = stopping {
                match coord.savepoint_status(sid) {
                    Some(SavepointStatus::InProgress) => {}
                    Some(SavepointStatus::Completed(path)) => {
                        tracing::info!(path = %path.display(), "savepoint taken; stopping the job");
                        self.stopped_with = Some(path);
                        stopping = None;
                        cancelling = true;
                        status = Some(JobStatus::Finished);
                        self.cancel_all(&mut live);
                    }
                    other => {
                        tracing::warn!(status = ?other, "the stop's savepoint failed; cancelling");
                        stopping = None;
                        cancelling = true;
                        status = Some(JobStatus::Canceled);
                        self.cancel_all(&mut live);
                    }
                }
            }
            if !cancelling && stopping.is_none() && cancel.load(Ordering::Relaxed) {
                let dir = self.config.checkpointing.savepoint_dir.clone();
                let stop = dir
                    .as_deref()
                    .map(|d| coord.trigger_savepoint(d, true, Instant::now()));
                match stop {
                    Some(Ok(sid)) => {
                        tracing::info!(savepoint = sid, "stopping the job with a savepoint");
                        stopping = Some(sid);
                        // A second cancel (Ctrl-C again) gives up the savepoint.
                        cancel.store(false, Ordering::Relaxed);
                    }
                    other => {
                        if let Some(Err(why)) = other {
                            tracing::warn!(%why, "no savepoint for the stop; cancelling");
                        }
                        cancelling = true;
                        status = Some(JobStatus::Canceled);
                        self.cancel_all(&mut live);
                    }
                }
            }
            if Instant::now() >= *next_report {
                // One report per interval; after a stall (a restart's backoff), the
                // next a full interval on, not a burst catching up.
                *next_report = (*next_report + interval).max(Instant::now() + interval / 2);
                on_progress(&Progress {
                    elapsed: start.elapsed(),
                    records: metrics.records(),
                    latency: metrics.latency(),
                });
            }
        }
        Ok(status.unwrap_or(JobStatus::Finished))
    }

    /// Asks each live task's slot to cancel it. A task whose slot has stopped will never
    /// report, so it leaves `live` here.
    fn cancel_all(&self, live: &mut HashMap<TaskId, usize>) {
        live.retain(|id, slot| self.slots.get(*slot).is_some_and(|s| s.cancel(*id)));
    }

    /// Creates the rings of every edge and describes every subtask's deployment.
    fn connect(&self, job: &JobGraph) -> Result<Vec<Deployment>, ClusterError> {
        let mut outs: HashMap<(usize, usize), EdgeOutputs> = HashMap::new();
        let mut ins: HashMap<(usize, usize), Vec<(usize, Consumer)>> = HashMap::new();
        for e in &job.edges {
            let up = &job.vertices[e.from];
            let dn = &job.vertices[e.to];
            for s in 0..up.parallelism {
                let targets: Vec<usize> = match e.partition {
                    EdgePartition::Forward => vec![s],
                    _ => (0..dn.parallelism).collect(),
                };
                let mut producers = Vec::with_capacity(targets.len());
                for t in targets {
                    let (p, c) = Ring::anonymous(self.config.ring_size)?;
                    producers.push(p);
                    ins.entry((e.to, t)).or_default().push((e.input, c));
                }
                outs.entry((e.from, s)).or_default().push((
                    e.partition.clone(),
                    e.side.clone(),
                    producers,
                ));
            }
        }
        let mut deployments = Vec::new();
        for v in &job.vertices {
            for s in 0..v.parallelism {
                let info = SubtaskInfo {
                    index: s,
                    parallelism: v.parallelism,
                };
                deployments.push(Deployment {
                    vertex: v.id,
                    name: format!("{} ({}/{})", v.name, s + 1, v.parallelism),
                    info,
                    chain: v
                        .nodes
                        .iter()
                        .map(|&n| job.stream.nodes[n].clone())
                        .collect(),
                    outputs: outs.remove(&(v.id, s)).unwrap_or_default(),
                    inputs: ins.remove(&(v.id, s)).unwrap_or_default(),
                    metrics: Arc::default(),
                    settings: self.config.task_settings(),
                    checkpointing: None,
                    restore: HashMap::new(),
                    max_parallelism: job.max_parallelism,
                });
            }
        }
        Ok(deployments)
    }
}

/// Output rings of a subtask, per out edge.
/// Output rings of a subtask, per out edge: its partitioning, the side output it
/// carries (`None`: the chain's main output), and the rings.
pub type EdgeOutputs = Vec<(EdgePartition, Option<String>, Vec<Producer>)>;

/// One subtask: its chain of operators and its rings.
pub struct Deployment {
    /// Vertex id.
    pub vertex: usize,
    /// "name (i/p)".
    pub name: String,
    /// Subtask index and parallelism.
    pub info: SubtaskInfo,
    /// The chain's nodes, head first.
    pub chain: Vec<Node>,
    /// Output rings per out edge, in downstream subtask order.
    pub outputs: EdgeOutputs,
    /// Input rings, each with the input of the head operator it feeds.
    pub inputs: Vec<(usize, Consumer)>,
    /// Where the task counts its records.
    pub metrics: Arc<TaskMetrics>,
    /// How the task runs (from the TaskManager's configuration).
    pub settings: TaskSettings,
    /// How it takes part in checkpoints (`None`: it does not).
    pub checkpointing: Option<TaskCheckpointing>,
    /// The operator states it resumes from, by operator uid (empty: none).
    pub restore: HashMap<u32, Vec<u8>>,
    /// The job's max parallelism (key groups its keyed edges route by).
    pub max_parallelism: u32,
}

impl Deployment {
    /// The factory that builds this subtask's task on its slot thread.
    pub fn into_factory(self) -> TaskFactory {
        Box::new(move || self.build().map_err(TaskError))
    }

    fn build(mut self) -> Result<Box<dyn Task>, String> {
        let restore = std::mem::take(&mut self.restore);
        let restoring = !restore.is_empty();
        let scope = RestoreScope::enter(restore);
        let task = self.build_chain()?;
        let left = scope.unclaimed();
        if restoring && !left.is_empty() {
            return Err(format!(
                "the checkpoint holds state for operators {left:?} that this task does not \
                 have (a checkpoint of another program?)"
            ));
        }
        Ok(task)
    }

    fn build_chain(self) -> Result<Box<dyn Task>, String> {
        let Self {
            name,
            info,
            chain,
            outputs,
            inputs,
            metrics,
            settings,
            checkpointing,
            max_parallelism,
            ..
        } = self;
        let (Some(head), Some(tail)) = (chain.first(), chain.last()) else {
            return Err("internal: empty chain".into());
        };
        let bp: Backpressure = Rc::new(Cell::new(false));
        let mut controls = Vec::new();
        let mut emits = Vec::new();
        // Side outputs, by the node that produces them.
        let mut sides: Vec<(usize, String, AnyBox, Arc<TypeOps>)> = Vec::new();
        for (partition, side, producers) in outputs {
            let (emit, ctl) = match &side {
                None => {
                    let ops = tail.out.as_ref().ok_or("internal: a sink with outputs")?;
                    ops.ring_output(producers, &partition, bp.clone(), max_parallelism)?
                }
                Some(tag) => {
                    let (at, ops) = chain
                        .iter()
                        .enumerate()
                        .find_map(|(i, n)| {
                            n.side_outputs
                                .iter()
                                .find(|(t, _)| t == tag)
                                .map(|(_, ops)| (i, ops.clone()))
                        })
                        .ok_or_else(|| format!("internal: no operator has side output '{tag}'"))?;
                    let (emit, ctl) =
                        ops.ring_output(producers, &partition, bp.clone(), max_parallelism)?;
                    // Several consumers of one side output share it through a tee.
                    match sides.iter().position(|(_, t, _, _)| t == tag) {
                        Some(j) => {
                            let (_, _, prev, _) = sides.swap_remove(j);
                            let both = ops.tee(vec![prev, emit])?;
                            sides.push((at, tag.clone(), both, ops));
                        }
                        None => sides.push((at, tag.clone(), emit, ops)),
                    }
                    controls.push(ctl);
                    continue;
                }
            };
            emits.push(emit);
            controls.push(ctl);
        }
        let mut cur: AnyBox = match &tail.build {
            Build::Sink(b) => {
                crate::graph::set_building_uid(Some(tail.id as u32));
                let built = b(info);
                crate::graph::set_building_uid(None);
                built.map_err(|e| format!("{}: {e}", tail.name))?
            }
            _ => tail
                .out
                .as_ref()
                .ok_or("internal: no output type")?
                .tee(emits)?,
        };
        // With latency markers on, each operator of the chain is timed on the batches
        // the task samples.
        let timing = settings.latency_interval_ns != 0;
        let mut timers: Vec<(usize, Arc<spate_dataplane::operator::OperatorTimes>)> = Vec::new();
        let task_metrics = metrics.clone();
        let mut outputs = Outputs::new(controls, bp)
            .with_metrics(metrics)
            .with_settings(settings);
        if let Some(cp) = checkpointing {
            outputs = outputs.with_checkpointing(cp);
        }
        let last = chain.len() - 1;
        for (i, node) in chain.iter().enumerate().rev() {
            match &node.build {
                Build::Sink(_) if i == last => {}
                Build::Sink(_) => return Err("internal: a sink inside a chain".into()),
                Build::Operator(b) => {
                    let (own, rest): (Vec<_>, Vec<_>) =
                        sides.drain(..).partition(|(at, _, _, _)| *at == i);
                    sides = rest;
                    crate::graph::set_side_outputs(
                        own.into_iter().map(|(_, t, e, o)| (t, e, o)).collect(),
                    );
                    crate::graph::set_building_uid(Some(node.id as u32));
                    if timing {
                        let t = Arc::new(spate_dataplane::operator::OperatorTimes::new(
                            node.name.clone(),
                        ));
                        timers.push((i, t.clone()));
                        crate::graph::set_building_timer(Some(t));
                    }
                    let built = b(info, cur);
                    crate::graph::set_building_uid(None);
                    crate::graph::set_building_timer(None);
                    crate::graph::set_side_outputs(Vec::new());
                    cur = built.map_err(|e| format!("{}: {e}", node.name))?;
                    timers.sort_by_key(|(at, _)| *at);
                    task_metrics
                        .set_operator_times(timers.iter().map(|(_, t)| t.clone()).collect());
                }
                Build::Union => {}
                Build::TwoInput { build, task } if i == 0 => {
                    crate::graph::set_building_uid(Some(node.id as u32));
                    let head = build(info, cur);
                    crate::graph::set_building_uid(None);
                    let head = head.map_err(|e| format!("{}: {e}", node.name))?;
                    return task(name, inputs, head, outputs);
                }
                Build::TwoInput { .. } => {
                    return Err("internal: a two-input operator inside a chain".into())
                }
                Build::Source(b) => {
                    let src = b(info).map_err(|e| format!("{}: {e}", node.name))?;
                    let ops = node.out.as_ref().ok_or("internal: source without a type")?;
                    return ops.source_task(name, src, cur, outputs, node.id as u32);
                }
            }
        }
        let ops = head
            .input
            .as_ref()
            .ok_or("internal: operator without an input type")?;
        ops.input_task(
            name,
            inputs.into_iter().map(|(_, c)| c).collect(),
            cur,
            outputs,
        )
    }
}
