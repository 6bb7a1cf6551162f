//! The TaskManager process: registers its slots with the JobManager's ResourceManager,
//! heartbeats both ways, and re-registers when the JobManager comes back.

use super::heartbeat::HeartbeatMonitor;
use super::{
    JmToTm, NetworkInfo, NetworkReport, SlotInfo, TaskDeployment, TaskKey, TaskManagerId,
    TaskRecords, TaskState, TmToJm,
};
use crate::config::{AgentCore, AgentMode, Config};
use crate::minicluster::start_slots;
use crate::rpc::{ConnId, Endpoint, Event};
use spate_dataplane::checkpoint::{CheckpointAck, CheckpointTrigger, TaskCheckpointing};
use spate_dataplane::net::{AgentConfig, AgentThread, NetAgent, NetHandle};
use spate_dataplane::operator::BarrierKind;
use spate_dataplane::slot::{Slot, SlotEvent, Task, TaskId};
use spate_dataplane::task::TaskMetrics;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The slot-local id of the network agent when a slot polls it.
const AGENT_TASK: TaskId = TaskId(u64::MAX);

/// How long to wait before connecting again after losing the JobManager.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// How often the Prometheus endpoint's text is rewritten.
const METRICS_REFRESH: Duration = Duration::from_millis(500);

enum Link {
    Down { retry_at: Instant },
    Connecting(ConnId),
    Registered { conn: ConnId, jobmanager_id: String },
}

/// A deployment built off the control thread: the request, and its tasks' chain with
/// its sinks' metrics (or why it could not be built).
type Built = (
    Box<TaskDeployment>,
    Result<
        (
            crate::minicluster::Deployment,
            Arc<spate_dataplane::operator::sink::SinkMetrics>,
        ),
        String,
    >,
);

/// Estimates the offset from this host's clock to the JobManager's from heartbeat
/// round trips, as NTP does: a probe sent at `t1`, answered with the JobManager's
/// `t2`, back at `t3`, says the offset is `t2 - (t1 + t3) / 2` to within half the
/// round trip; of the last [`ClockSync::WINDOW`] probes, the one with the shortest
/// round trip is taken (queueing only lengthens a trip, and makes it lopsided).
#[derive(Debug, Default)]
struct ClockSync {
    /// (round trip, offset), newest last.
    samples: std::collections::VecDeque<(u64, i64)>,
    /// The JobManager reads this very clock.
    same: bool,
}

impl ClockSync {
    const WINDOW: usize = 16;

    /// Takes one probe's answer; the estimate it leads to, or `None` for an answer
    /// that cannot be one (a probe from the future, a clock beyond `i64`).
    fn sample(&mut self, t1: u64, t2: u64, t3: u64, same: bool) -> Option<(i64, u64)> {
        self.same = same;
        if same {
            self.samples.clear();
            return Some((0, 0));
        }
        let rtt = t3.checked_sub(t1)?;
        let mid = i128::from(t1) + i128::from(rtt / 2);
        let offset = i64::try_from(i128::from(t2) - mid).ok()?;
        if self.samples.len() == Self::WINDOW {
            self.samples.pop_front();
        }
        self.samples.push_back((rtt, offset));
        Some(self.estimate())
    }

    /// Whether an offset is known (one clock, or a probe answered).
    fn known(&self) -> bool {
        self.same || !self.samples.is_empty()
    }

    /// The offset (ns to add to this clock) and its uncertainty (ns).
    fn estimate(&self) -> (i64, u64) {
        if self.same {
            return (0, 0);
        }
        self.samples
            .iter()
            .min_by_key(|(rtt, _)| *rtt)
            .map_or((0, 0), |&(rtt, offset)| (offset, rtt / 2))
    }
}

/// A running TaskManager.
#[derive(Debug)]
pub struct TaskManager {
    id: TaskManagerId,
    config: Config,
    slots: Vec<Slot>,
    events: Receiver<SlotEvent>,
    endpoint: Endpoint<JmToTm, TmToJm>,
    /// Tasks running here: slot-local id → (subtask, slot).
    tasks: HashMap<TaskId, (TaskKey, usize)>,
    /// Their record counters.
    metrics: HashMap<TaskId, Arc<TaskMetrics>>,
    /// What their sinks publish (records, latency histograms).
    sinks: HashMap<TaskId, Arc<spate_dataplane::operator::sink::SinkMetrics>>,
    /// Task names, for the metrics' labels.
    task_names: HashMap<TaskId, String>,
    /// The Prometheus endpoint (`metrics.reporter.prom.port`) and the text it serves,
    /// rewritten every [`METRICS_REFRESH`].
    prom: Option<(crate::rest::RestServer, Arc<std::sync::Mutex<String>>)>,
    next_metrics: Instant,
    next_task: u64,
    /// The JobManager connection state reports go to.
    jm: Option<ConnId>,
    /// The session id of the JobManager last registered with.
    last_jobmanager: Option<String>,
    /// With high availability: the leader as etcd names it (where to register).
    leader: Option<crate::ha::LeaderRetrieval>,
    /// The fencing token of the JobManager registered with (0: none, or no HA).
    jm_token: u64,
    /// The offset from this host's clock to the JobManager's.
    clock: ClockSync,
    /// Deployments that arrived before the offset was known.
    held: Vec<TaskDeployment>,
    /// The token of the leader etcd named when the current connection was dialed.
    dialed_token: u64,
    /// The network agent (channels to TaskManagers on other hosts).
    net: NetHandle,
    network: NetworkInfo,
    data_address: String,
    /// Its thread, when it has one (stopped when the TaskManager is dropped).
    _agent: Option<AgentThread>,
    /// The checkpoint trigger of each deployment (job, attempt) with tasks here: the
    /// JobManager's coordinator asks through it, sources read it.
    triggers: HashMap<(String, u32), Arc<CheckpointTrigger>>,
    /// Per deployment, how many of its tasks the JobManager heard reached their end.
    ended_reported: HashMap<(String, u32), u64>,
    /// Tasks cancelled and not yet stopped, with when they were first cancelled
    /// (`task.cancellation.timeout` watches them).
    cancelled: HashMap<TaskId, Instant>,
    /// Deployments being built on builder threads (the job's builder is user code, and
    /// opening rings can wait for peers: neither may stall this thread's heartbeats),
    /// with whether they were cancelled meanwhile.
    building: HashMap<TaskKey, bool>,
    /// Where builder threads send what they built.
    built_tx: Sender<Built>,
    built: Receiver<Built>,
    /// Tasks' checkpoint acknowledgements, on their way to the JobManager.
    acks_tx: Sender<(TaskKey, CheckpointAck)>,
    acks: Receiver<(TaskKey, CheckpointAck)>,
}

impl TaskManager {
    /// Starts the slots and the RPC client.
    pub fn start(config: &Config) -> anyhow::Result<Self> {
        spate_dataplane::checkpoint::start_snapshot_writer();
        // Rings left in /dev/shm by TaskManagers that died (SIGKILL leaves them behind).
        let swept = spate_dataplane::ring::sweep_dead_rings(
            std::path::Path::new(spate_dataplane::ring::SHM_DIR),
            super::deploy::RING_FILE_PREFIX,
            super::deploy::RING_OPEN_TIMEOUT * 2,
        );
        if swept > 0 {
            tracing::info!(files = swept, "removed ring files of processes that died");
        }
        config.confine_job_paths();
        let (slots, events) = start_slots(config, "spate-tm-slot")?;
        let id = TaskManagerId(format!(
            "{}:{}-{}",
            config.taskmanager_host,
            std::process::id(),
            &super::new_id()[..6]
        ));
        let secret = crate::security::Secret::new(&config.internal_secret.0);
        let endpoint = Endpoint::client("taskmanager", secret.clone())?;
        let node = u64::from_str_radix(&super::new_id()[..16], 16)
            .unwrap_or(1)
            .max(1);
        let agent = NetAgent::bind(AgentConfig {
            node,
            listen: SocketAddr::from(([0, 0, 0, 0], config.data_port)),
            transport: config.transport,
            uring: config.uring,
            keepalive: config.heartbeat_interval,
            timeout: config.heartbeat_timeout,
            mac: secret.is_set().then(|| secret.data_mac()),
        })?;
        let net = agent.handle();
        let data_address = format!("{}:{}", config.taskmanager_host, net.local_addr().port());
        if config.transport == spate_dataplane::net::TransportKind::IoUring
            && config.uring.sqpoll_idle_ms.is_some()
            && config.idle.spins()
            && slots.len() >= spate_dataplane::slot::available_cores().len()
        {
            tracing::warn!(
                "taskmanager.network.io-uring.sqpoll is on while busy-spinning slots take \
                 every core: the kernel's SQPOLL thread competes with them and round trips \
                 can take milliseconds"
            );
        }
        let loopback_host = matches!(
            config.taskmanager_host.as_str(),
            "localhost" | "127.0.0.1" | "::1"
        );
        let loopback_jm = matches!(
            config.jobmanager_address.as_str(),
            "localhost" | "127.0.0.1" | "::1"
        );
        if loopback_host && !loopback_jm {
            tracing::warn!(
                %data_address,
                "taskmanager.host is a loopback address while the JobManager is elsewhere: \
                 TaskManagers on other hosts cannot reach this one's data port; set \
                 taskmanager.host to an address they can reach"
            );
        }
        let agent_thread = match config.agent {
            AgentMode::Dedicated => {
                let core = match config.agent_core {
                    AgentCore::Core(c) => Some(c),
                    AgentCore::Unpinned => None,
                    AgentCore::Auto => {
                        let taken: Vec<usize> = slots.iter().filter_map(|s| s.core()).collect();
                        let free = spate_dataplane::slot::available_cores()
                            .into_iter()
                            .find(|c| !taken.contains(c));
                        if free.is_none() {
                            tracing::info!(
                                "no core left beside the slots: the network agent runs unpinned \
                                 (taskmanager.network.agent: shared polls it from slot 0 instead)"
                            );
                        }
                        free
                    }
                };
                tracing::info!(core = ?core, "network agent thread");
                Some(agent.spawn(core, config.agent_idle)?)
            }
            AgentMode::Shared => {
                let Some(slot) = slots.first() else {
                    anyhow::bail!("taskmanager.network.agent: shared needs a slot");
                };
                let factory = Box::new(move || Ok(Box::new(agent) as Box<dyn Task>));
                if !slot.submit(AGENT_TASK, factory) {
                    anyhow::bail!("slot 0 stopped before the network agent started");
                }
                None
            }
        };
        tracing::info!(%data_address, transport = %config.transport, agent = ?config.agent, "network agent started");
        let network = NetworkInfo {
            node,
            host_key: super::deploy::host_key(),
            transport: config.transport.to_string(),
        };
        let (acks_tx, acks) = std::sync::mpsc::channel();
        let (built_tx, built) = std::sync::mpsc::channel();
        let pinned: Vec<usize> = slots.iter().filter_map(|s| s.core()).collect();
        let open = spate_dataplane::slot::not_isolated(
            &pinned,
            &spate_dataplane::slot::isolated_cores().unwrap_or_default(),
        );
        if !open.is_empty() {
            tracing::warn!(
                cores = ?open,
                "slot cores are not isolated (isolcpus=): other threads and IRQs may run \
                 there; scripts/tune-host.sh --check says what to change"
            );
        }
        let prom = match &config.prom_ports {
            None => None,
            Some(ports) => {
                let text = Arc::new(std::sync::Mutex::new(String::new()));
                let server = crate::metrics::serve("0.0.0.0", ports, text.clone())?;
                tracing::info!(addr = %server.local_addr(), "metrics at /metrics");
                Some((server, text))
            }
        };
        Ok(Self {
            task_names: HashMap::new(),
            prom,
            next_metrics: Instant::now(),
            triggers: HashMap::new(),
            ended_reported: HashMap::new(),
            cancelled: HashMap::new(),
            building: HashMap::new(),
            built_tx,
            built,
            acks_tx,
            acks,
            id,
            config: config.clone(),
            slots,
            events,
            endpoint,
            tasks: HashMap::new(),
            metrics: HashMap::new(),
            sinks: HashMap::new(),
            next_task: 0,
            jm: None,
            last_jobmanager: None,
            leader: if config.ha.etcd {
                Some(crate::ha::LeaderRetrieval::start(
                    &config.ha,
                    (config.ha.lease_duration / 4).max(Duration::from_millis(200)),
                )?)
            } else {
                None
            },
            jm_token: 0,
            clock: ClockSync::default(),
            held: Vec::new(),
            dialed_token: 0,
            net,
            network,
            data_address,
            _agent: agent_thread,
        })
    }

    /// Where its network agent listens (`host:port`).
    pub fn data_address(&self) -> &str {
        &self.data_address
    }

    /// Where its Prometheus endpoint listens, if it serves one.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.prom.as_ref().map(|(s, _)| s.local_addr())
    }

    /// Rewrites the text of the Prometheus endpoint: slots, each task's records, the
    /// network agent's counters.
    fn refresh_metrics(&self) {
        let Some((_, text)) = &self.prom else {
            return;
        };
        let mut e = crate::metrics::Exposition::new();
        let tm = [("taskmanager", self.id.0.as_str())];
        let busy = self
            .tasks
            .values()
            .map(|(_, slot)| *slot)
            .collect::<std::collections::BTreeSet<_>>();
        e.gauge(
            "spate_taskmanager_task_slots",
            "Task slots.",
            &tm,
            self.slots.len() as f64,
        );
        e.gauge(
            "spate_taskmanager_task_slots_busy",
            "Task slots running at least one task.",
            &tm,
            busy.len() as f64,
        );
        for s in &self.slots {
            let (total, busy) = s.load().times();
            let (index, core) = (
                s.index().to_string(),
                s.core().map_or("none".to_string(), |c| c.to_string()),
            );
            let l = [
                ("taskmanager", self.id.0.as_str()),
                ("slot", index.as_str()),
                ("core", core.as_str()),
            ];
            e.counter_f64(
                "spate_taskmanager_slot_seconds_total",
                "Time since the slot's thread started.",
                &l,
                total as f64 / 1e9,
            );
            e.counter_f64(
                "spate_taskmanager_slot_busy_seconds_total",
                "Time the slot's thread spent in rounds in which a task did work (rate() over the slot's seconds is its busy ratio).",
                &l,
                busy as f64 / 1e9,
            );
        }
        let r = self.network_report();
        crate::metrics::network(&mut e, &tm, &r);
        let mut tasks: Vec<_> = self.tasks.iter().collect();
        tasks.sort_by(|a, b| {
            (&a.1 .0.job_id, a.1 .0.vertex, a.1 .0.subtask).cmp(&(
                &b.1 .0.job_id,
                b.1 .0.vertex,
                b.1 .0.subtask,
            ))
        });
        for (id, (key, slot)) in tasks {
            let Some(m) = self.metrics.get(id) else {
                continue;
            };
            let (vertex, subtask, attempt, slot) = (
                key.vertex.to_string(),
                key.subtask.to_string(),
                key.attempt.to_string(),
                slot.to_string(),
            );
            let l = [
                ("taskmanager", self.id.0.as_str()),
                ("job_id", key.job_id.as_str()),
                ("vertex", vertex.as_str()),
                (
                    "task_name",
                    self.task_names.get(id).map_or("", String::as_str),
                ),
                ("subtask", subtask.as_str()),
                ("attempt", attempt.as_str()),
                ("slot", slot.as_str()),
            ];
            e.counter(
                "spate_task_records_in_total",
                "Records a subtask read from its input rings.",
                &l,
                m.records_in(),
            );
            e.counter(
                "spate_task_records_out_total",
                "Records a subtask wrote to its output rings.",
                &l,
                m.records_out(),
            );
            let (samples, full) = m.backpressure_samples();
            e.counter(
                "spate_task_backpressure_samples_total",
                "Back-pressure samples taken (every 10 ms).",
                &l,
                samples,
            );
            e.counter(
                "spate_task_backpressured_samples_total",
                "Samples that found the subtask's output rings full.",
                &l,
                full,
            );
            let wm = m.input_watermark();
            if wm != 0 && wm != spate_dataplane::operator::END_OF_TIME {
                e.gauge(
                    "spate_task_input_watermark_seconds",
                    "The subtask's inputs' combined watermark (event time).",
                    &l,
                    wm as f64 / 1e9,
                );
            }
            if let Some(h) = m.marker_latency() {
                crate::metrics::latency_summary(
                    &mut e,
                    "spate_task_marker_latency_seconds",
                    "How long after their sources emitted them latency markers reached the subtask (metrics.latency.interval).",
                    &l,
                    &h,
                );
            }
            let times = m.operator_times();
            crate::metrics::operator_times(
                &mut e,
                &l,
                "metrics.latency.interval",
                times.iter().map(|(name, h)| (name.as_str(), h.as_ref())),
            );
            if let Some(h) = self.sinks.get(id).map(|s| s.latency()) {
                if !h.is_empty() {
                    crate::metrics::latency_summary(
                        &mut e,
                        "spate_task_latency_seconds",
                        "End-to-end latency the subtask's latency sinks measured (source stamp to sink).",
                        &l,
                        &h,
                    );
                }
            }
        }
        let rendered = e.render();
        if let Ok(mut t) = text.lock() {
            *t = rendered;
        }
    }

    fn network_report(&self) -> NetworkReport {
        let s = self.net.stats();
        NetworkReport {
            connections: s.connections(),
            bytes_in: s.bytes_in(),
            bytes_out: s.bytes_out(),
            frames_in: s.frames_in(),
            frames_out: s.frames_out(),
            failures: s.failures(),
            fallbacks: s.fallbacks(),
        }
    }

    /// This TaskManager's id.
    pub fn id(&self) -> &TaskManagerId {
        &self.id
    }

    fn slot_report(&self) -> Vec<SlotInfo> {
        self.slots
            .iter()
            .map(|s| SlotInfo {
                times: s.load().times(),
                index: s.index() as u32,
                core: s.core().map(|c| c as u32),
                job: self
                    .tasks
                    .values()
                    .find(|(_, slot)| *slot == s.index())
                    .map(|(k, _)| k.job_id.clone()),
            })
            .collect()
    }

    fn jobmanager_addr(&mut self) -> Option<SocketAddr> {
        if let Some(retrieval) = &self.leader {
            // With high availability, the leader etcd names, and no other.
            let leader = retrieval.leader()?;
            self.dialed_token = leader.token;
            return match leader.rpc.to_socket_addrs() {
                Ok(mut addrs) => addrs.next(),
                Err(e) => {
                    tracing::warn!(address = %leader.rpc, error = %e, "cannot resolve the leading JobManager");
                    None
                }
            };
        }
        let target = (
            self.config.jobmanager_address.as_str(),
            self.config.jobmanager_port,
        );
        match target.to_socket_addrs() {
            Ok(mut addrs) => addrs.next(),
            Err(e) => {
                tracing::warn!(address = %self.config.jobmanager_address, error = %e, "cannot resolve the JobManager");
                None
            }
        }
    }

    /// Runs until `stop` is set; an error when a cancelled task did not stop within
    /// `task.cancellation.timeout` (a fatal error: the process should exit, as
    /// Flink's TaskManager does, so that its slots come back).
    pub fn run(&mut self, stop: &AtomicBool) -> Result<(), String> {
        let timeout = self.config.heartbeat_timeout.as_millis() as u64;
        // Heartbeats carry the tasks' metrics: they go at least every
        // `metrics.fetcher.update-interval`, so that the REST API and the web UI follow a
        // running job live (an earlier heartbeat is harmless to the JobManager's monitor).
        let interval = self
            .config
            .heartbeat_interval
            .min(self.config.metrics_update_interval);
        let start = Instant::now();
        let now_ms = || start.elapsed().as_millis() as u64;
        let mut jm_monitor: HeartbeatMonitor<ConnId> = HeartbeatMonitor::new(timeout);
        let mut link = Link::Down {
            retry_at: Instant::now(),
        };
        let mut next_beat = Instant::now();
        tracing::info!(id = %self.id, slots = self.slots.len(), "TaskManager started");
        while !stop.load(Ordering::Relaxed) {
            if let Link::Down { retry_at } = link {
                if Instant::now() >= retry_at {
                    link = match self.jobmanager_addr() {
                        Some(addr) => {
                            let conn = self.endpoint.connect(addr);
                            // A JobManager that accepts but never answers times out too.
                            jm_monitor.heard(conn, now_ms());
                            Link::Connecting(conn)
                        }
                        None => Link::Down {
                            retry_at: Instant::now() + RECONNECT_DELAY,
                        },
                    };
                }
            }
            if let Some(ev) = self.endpoint.recv_timeout(Duration::from_millis(20)) {
                match ev {
                    Event::Connected { conn, peer } => {
                        tracing::info!(%peer, "connected to the JobManager; registering");
                        jm_monitor.heard(conn, now_ms());
                        self.endpoint.send(
                            conn,
                            TmToJm::Register {
                                id: self.id.clone(),
                                host: self.config.taskmanager_host.clone(),
                                data_address: self.data_address.clone(),
                                slots: self.slot_report(),
                                cores: spate_dataplane::slot::available_cores().len() as u32,
                                network: self.network.clone(),
                                build: crate::jobs::build_fingerprint(),
                                jobs: crate::jobs::registered_names(),
                                clock_domain: spate_dataplane::clock::clock_domain(),
                            },
                        );
                    }
                    Event::Message { conn, msg } => {
                        // Only the JobManager connection of now speaks: messages still
                        // queued from one this TaskManager left are dropped.
                        let current = match &link {
                            Link::Connecting(c) | Link::Registered { conn: c, .. } => *c == conn,
                            Link::Down { .. } => false,
                        };
                        if !current {
                            continue;
                        }
                        jm_monitor.heard(conn, now_ms());
                        match msg {
                            JmToTm::Registered {
                                jobmanager_id,
                                fencing_token,
                                ..
                            } => {
                                // Fencing: only the JobManager that holds the leader
                                // key now (a deposed one may still answer).
                                let expected = self
                                    .leader
                                    .as_ref()
                                    .map(|l| l.leader().map_or(0, |r| r.token));
                                if let Some(expected) = expected {
                                    if fencing_token != expected || fencing_token == 0 {
                                        tracing::warn!(%jobmanager_id, fencing_token, expected, "a JobManager that does not lead the cluster accepted the registration; leaving it");
                                        self.endpoint.close(conn);
                                        link = Link::Down {
                                            retry_at: Instant::now() + RECONNECT_DELAY,
                                        };
                                        continue;
                                    }
                                }
                                self.jm_token = fencing_token;
                                // Another JobManager may read another clock: deployments
                                // wait for its offset (the first heartbeat goes now).
                                self.clock = ClockSync::default();
                                spate_dataplane::clock::set_cluster_offset(0);
                                next_beat = Instant::now();
                                tracing::info!(%jobmanager_id, fencing_token, "registered with the JobManager");
                                self.jm = Some(conn);
                                // A new JobManager knows nothing of the old one's jobs.
                                if self
                                    .last_jobmanager
                                    .as_ref()
                                    .is_some_and(|j| *j != jobmanager_id)
                                {
                                    self.cancel_all_tasks();
                                }
                                self.last_jobmanager = Some(jobmanager_id.clone());
                                link = Link::Registered {
                                    conn,
                                    jobmanager_id,
                                };
                            }
                            JmToTm::Refused { reason, fatal } => {
                                tracing::error!(%reason, "the JobManager refused registration");
                                self.endpoint.close(conn);
                                if fatal {
                                    return Err(format!(
                                        "the JobManager refused this TaskManager: {reason}"
                                    ));
                                }
                            }
                            JmToTm::Heartbeat => {}
                            // Held until the clock offset to this JobManager is known:
                            // sources pace and stamp on the cluster's clock, which must
                            // not jump under a running task.
                            JmToTm::Deploy(d) if !self.clock.known() => self.held.push(*d),
                            JmToTm::Deploy(d) => self.start_build(d),
                            JmToTm::Cancel { job_id, tasks } => {
                                let (cancelled, kept): (Vec<_>, Vec<_>) =
                                    std::mem::take(&mut self.held).into_iter().partition(|d| {
                                        d.task.job_id == job_id
                                            && tasks.as_ref().is_none_or(|t| t.contains(&d.task))
                                    });
                                self.held = kept;
                                for d in cancelled {
                                    self.report(None, d.task.clone(), TaskState::Canceled);
                                }
                                for (k, cancelled) in &mut self.building {
                                    if k.job_id == job_id
                                        && tasks.as_ref().is_none_or(|t| t.contains(k))
                                    {
                                        *cancelled = true;
                                    }
                                }
                                for (id, (k, slot)) in &self.tasks {
                                    let named = tasks.as_ref().is_none_or(|t| t.contains(k));
                                    if k.job_id == job_id && named {
                                        self.slots[*slot].cancel(*id);
                                        self.cancelled.entry(*id).or_insert_with(Instant::now);
                                    }
                                }
                            }
                            JmToTm::TriggerCheckpoint {
                                job_id,
                                checkpoint_id,
                                timestamp_ns,
                                savepoint,
                                stop,
                            } => {
                                let kind = if savepoint {
                                    BarrierKind::Savepoint
                                } else {
                                    BarrierKind::Checkpoint
                                };
                                for ((j, _), t) in &self.triggers {
                                    if *j == job_id {
                                        if stop {
                                            t.request_stop(checkpoint_id, timestamp_ns);
                                        } else {
                                            t.request(checkpoint_id, timestamp_ns, kind);
                                        }
                                    }
                                }
                            }
                            JmToTm::StopAborted {
                                job_id,
                                checkpoint_id,
                            } => {
                                for ((j, _), t) in &self.triggers {
                                    if *j == job_id {
                                        t.abort_stop(checkpoint_id);
                                    }
                                }
                            }
                            JmToTm::CheckpointComplete {
                                job_id,
                                checkpoint_id,
                            } => {
                                for ((j, _), t) in &self.triggers {
                                    if *j == job_id {
                                        t.complete(checkpoint_id);
                                    }
                                }
                            }
                            JmToTm::Clock {
                                probe,
                                jobmanager_ns,
                                same_clock,
                            } => {
                                let now = spate_dataplane::clock::now_ns();
                                if let Some((offset, _)) =
                                    self.clock.sample(probe, jobmanager_ns, now, same_clock)
                                {
                                    spate_dataplane::clock::set_cluster_offset(offset);
                                }
                            }
                            JmToTm::JobEnded { job_id } => {
                                let n = super::deploy::remove_rings(&job_id);
                                if n > 0 {
                                    tracing::info!(%job_id, files = n, "removed leftover rings");
                                }
                            }
                        }
                    }
                    Event::Disconnected { conn, reason } => {
                        jm_monitor.remove(&conn);
                        let ours = match &link {
                            Link::Connecting(c) => *c == conn,
                            Link::Registered {
                                conn: c,
                                jobmanager_id,
                            } => {
                                if *c == conn {
                                    tracing::warn!(%jobmanager_id, %reason, "lost the JobManager");
                                }
                                *c == conn
                            }
                            Link::Down { .. } => false,
                        };
                        if ours {
                            self.jm = None;
                            // The JobManager counts our tasks as failed; stop them.
                            self.cancel_all_tasks();
                            tracing::warn!(%reason, "reconnecting to the JobManager");
                            link = Link::Down {
                                retry_at: Instant::now() + RECONNECT_DELAY,
                            };
                        }
                    }
                }
            }
            // Acknowledgements first: a task's acknowledgement is sent (by its slot or
            // the snapshot writer) before it can finish, so draining them before each
            // slot event keeps that order on the way to the JobManager.
            while let Ok((task, ack)) = self.acks.try_recv() {
                self.send_ack(task, ack);
            }
            self.report_ended();
            if self.clock.known() && !self.held.is_empty() {
                for d in std::mem::take(&mut self.held) {
                    self.start_build(Box::new(d));
                }
            }
            while let Ok(b) = self.built.try_recv() {
                self.install(b);
            }
            while let Ok(ev) = self.events.try_recv() {
                while let Ok((task, ack)) = self.acks.try_recv() {
                    self.send_ack(task, ack);
                }
                self.on_slot_event(ev);
            }
            if Instant::now() >= self.next_metrics {
                self.next_metrics = Instant::now() + METRICS_REFRESH;
                self.refresh_metrics();
            }
            if let Some(why) = self.stuck_task() {
                tracing::error!(%why, "fatal: a cancelled task does not stop");
                return Err(why);
            }
            for conn in jm_monitor.expire(now_ms()) {
                tracing::warn!("JobManager heartbeat timed out; reconnecting");
                self.endpoint.close(conn);
                self.jm = None;
                self.cancel_all_tasks();
                link = Link::Down {
                    retry_at: Instant::now() + RECONNECT_DELAY,
                };
            }
            // With high availability, a new leader in etcd ends the old leader's
            // session at once (it may be paused, or deposed and not know it yet).
            let linked = match &link {
                Link::Registered { conn, .. } => Some((*conn, self.jm_token)),
                // Registering: with the leader of the moment it was dialed.
                Link::Connecting(conn) => Some((*conn, self.dialed_token)),
                Link::Down { .. } => None,
            };
            if let (Some((conn, token)), Some(l)) = (linked, &self.leader) {
                if let Some(now) = l.leader().filter(|r| r.token != token) {
                    tracing::warn!(leader = %now.id, token = now.token, "another JobManager leads the cluster now; registering with it");
                    self.endpoint.close(conn);
                    jm_monitor.remove(&conn);
                    self.jm = None;
                    self.cancel_all_tasks();
                    link = Link::Down {
                        retry_at: Instant::now(),
                    };
                }
            }
            if let Link::Registered { conn, .. } = &link {
                self.send_results();
                if Instant::now() >= next_beat {
                    next_beat = Instant::now() + interval;
                    let tasks = self
                        .tasks
                        .iter()
                        .map(|(id, (k, _))| self.records(*id, k.clone()))
                        .collect();
                    self.endpoint.send(
                        *conn,
                        TmToJm::Heartbeat {
                            slots: self.slot_report(),
                            tasks,
                            network: self.network_report(),
                            clock_probe: spate_dataplane::clock::now_ns().max(1),
                            clock_offset: self.clock.estimate(),
                        },
                    );
                }
            }
        }
        tracing::info!(id = %self.id, "TaskManager stopping");
        Ok(())
    }

    /// Tells the JobManager of deployments whose tasks reached the end of their input
    /// since last time (they wait for a final checkpoint).
    fn report_ended(&mut self) {
        let Some(conn) = self.jm else { return };
        for (k, t) in &self.triggers {
            let n = t.ended();
            let seen = self.ended_reported.entry(k.clone()).or_insert(0);
            if n > *seen {
                *seen = n;
                self.endpoint.send(
                    conn,
                    TmToJm::TasksEnded {
                        job_id: k.0.clone(),
                        attempt: k.1,
                    },
                );
            }
        }
    }

    fn cancel_all_tasks(&mut self) {
        for d in std::mem::take(&mut self.held) {
            self.report(None, d.task.clone(), TaskState::Canceled);
        }
        for cancelled in self.building.values_mut() {
            *cancelled = true;
        }
        for (id, (_, slot)) in &self.tasks {
            self.slots[*slot].cancel(*id);
            self.cancelled.entry(*id).or_insert_with(Instant::now);
        }
        // No checkpoint of theirs completes any more: a later JobManager's completion
        // of a checkpoint with the same id (a recovered job keeps its id) must not
        // reach their sinks.
        self.triggers.clear();
    }

    /// Flink's task cancellation watchdog: a task still there
    /// `task.cancellation.timeout` after it was cancelled (user code that never
    /// returns to the slot) holds its slot for good; the TaskManager gives up (its
    /// caller exits the process, and the JobManager reschedules elsewhere).
    fn stuck_task(&mut self) -> Option<String> {
        let timeout = self.config.task_cancellation_timeout;
        self.cancelled.retain(|id, _| self.tasks.contains_key(id));
        if timeout.is_zero() {
            return None;
        }
        let (id, since) = self
            .cancelled
            .iter()
            .find(|(_, t)| t.elapsed() >= timeout)?;
        let (key, slot) = self.tasks.get(id)?;
        Some(format!(
            "task {} (subtask {} of vertex {} of job {}) in slot {slot} has not stopped {:?} \
             after it was cancelled (task.cancellation.timeout {:?}): its code does not \
             return; the TaskManager exits so that its slots come back",
            id.0,
            key.subtask,
            key.vertex,
            key.job_id,
            since.elapsed(),
            timeout
        ))
    }

    fn records(&self, id: TaskId, task: TaskKey) -> TaskRecords {
        let m = self.metrics.get(&id);
        TaskRecords {
            task,
            records_in: m.map_or(0, |m| m.records_in()),
            records_out: m.map_or(0, |m| m.records_out()),
            watermark: m.map_or(0, |m| m.input_watermark()),
            backpressure: m.map_or((0, 0), |m| m.backpressure_samples()),
            latency: self
                .sinks
                .get(&id)
                .and_then(|s| super::encode_latency(&s.latency())),
            markers: m
                .and_then(|m| m.marker_latency())
                .and_then(|h| super::encode_latency(&h)),
            operators: m.map_or_else(Vec::new, |m| {
                m.operator_times()
                    .into_iter()
                    .map(|(name, h)| (name, h.and_then(|h| super::encode_latency(&h))))
                    .collect()
            }),
        }
    }

    /// Sends the rows `SELECT` sinks wrote since last time (before a task's state:
    /// the JobManager has a finished job's rows when it learns it finished).
    fn send_results(&self) {
        let Some(conn) = self.jm else { return };
        // Messages of at most about 1 MiB of rows (frames have a size limit), each row
        // at most 64 KiB (longer ones are cut, marked with an ellipsis).
        const CHUNK: usize = 1 << 20;
        const ROW: usize = 64 << 10;
        for (job_id, lines) in crate::sql::results::take() {
            let mut chunk: Vec<String> = Vec::new();
            let mut bytes = 0;
            for mut l in lines {
                if l.len() > ROW {
                    let mut cut = ROW;
                    while !l.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    l.truncate(cut);
                    l.push('…');
                }
                if bytes + l.len() > CHUNK && !chunk.is_empty() {
                    self.endpoint.send(
                        conn,
                        TmToJm::Results {
                            job_id: job_id.clone(),
                            lines: std::mem::take(&mut chunk),
                        },
                    );
                    bytes = 0;
                }
                bytes += l.len();
                chunk.push(l);
            }
            if !chunk.is_empty() {
                self.endpoint.send(
                    conn,
                    TmToJm::Results {
                        job_id,
                        lines: chunk,
                    },
                );
            }
        }
    }

    fn report(&self, id: Option<TaskId>, task: TaskKey, state: TaskState) {
        self.send_results();
        if let Some(conn) = self.jm {
            let records = match id {
                Some(id) => self.records(id, task.clone()),
                None => TaskRecords {
                    task: task.clone(),
                    records_in: 0,
                    records_out: 0,
                    watermark: 0,
                    backpressure: (0, 0),
                    latency: None,
                    markers: None,
                    operators: Vec::new(),
                },
            };
            self.endpoint.send(
                conn,
                TmToJm::TaskState {
                    task,
                    state,
                    records,
                },
            );
        }
    }

    /// Sends a task's acknowledgement, or declines when a state could not be encoded
    /// or the states cannot be shipped in one RPC frame.
    fn send_ack(&self, task: TaskKey, ack: CheckpointAck) {
        let Some(conn) = self.jm else { return };
        let size: usize = ack.states.iter().map(|s| s.1.len()).sum();
        let limit = crate::rpc::MAX_FRAME - super::STATE_FRAME_SLACK;
        let msg = if let Some(reason) = ack.declined {
            TmToJm::DeclineCheckpoint {
                task,
                checkpoint_id: ack.checkpoint_id,
                reason,
            }
        } else if size > limit {
            TmToJm::DeclineCheckpoint {
                task,
                checkpoint_id: ack.checkpoint_id,
                reason: format!(
                    "its state is {size} bytes, more than a cluster checkpoint ships per \
                     subtask ({limit} bytes)"
                ),
            }
        } else {
            TmToJm::AcknowledgeCheckpoint {
                task,
                checkpoint_id: ack.checkpoint_id,
                states: ack.states,
                alignment_ns: ack.alignment_ns,
                sync_ns: ack.sync_ns,
                async_ns: ack.async_ns,
            }
        };
        self.endpoint.send(conn, msg);
    }

    /// Builds a deployment on a thread of its own; [`Self::install`] takes it over
    /// when it is done.
    fn start_build(&mut self, d: Box<TaskDeployment>) {
        let key = d.task.clone();
        let slot = d.slot as usize;
        if slot >= self.slots.len() {
            let failed = TaskState::Failed(format!("no slot {slot} on {}", self.id));
            self.report(None, key, failed);
            return;
        }
        // The deployment's trigger exists from now on: a checkpoint asked for while it
        // builds reaches its sources.
        if d.checkpointing.is_some() {
            self.triggers
                .entry((key.job_id.clone(), key.attempt))
                .or_default();
        }
        let mut settings = self.config.task_settings();
        if let Some(ns) = d.latency_interval_ns {
            settings.latency_interval_ns = ns;
        }
        let (net, tx) = (self.net.clone(), self.built_tx.clone());
        self.building.insert(key.clone(), false);
        let spawned = std::thread::Builder::new()
            .name("task-builder".into())
            .spawn(move || {
                // A SELECT's sink keeps its rows for the client, by job.
                crate::sql::results::declaring_for(Some(d.task.job_id.clone()));
                let built = super::deploy::job_graph(&d).and_then(|g| {
                    let sinks = g.stream.metrics.clone();
                    super::deploy::build(&d, &g, &net, settings).map(|dep| (dep, sinks))
                });
                crate::sql::results::declaring_for(None);
                // A closed channel: the TaskManager is stopping.
                let _ = tx.send((d, built));
            });
        if let Err(e) = spawned {
            self.building.remove(&key);
            let failed = TaskState::Failed(format!("cannot start a task builder thread: {e}"));
            self.report(None, key, failed);
        }
    }

    /// Drops the checkpoint trigger and end count of `key`'s deployment once none of
    /// its tasks runs here or is being built.
    fn forget_if_done(&mut self, key: &TaskKey) {
        let deployment = (key.job_id.clone(), key.attempt);
        if !self.deployment_lives(&deployment) {
            self.triggers.remove(&deployment);
            self.ended_reported.remove(&deployment);
        }
    }

    /// Whether a task of deployment (job, attempt) runs here or is being built.
    fn deployment_lives(&self, (job, attempt): &(String, u32)) -> bool {
        let ours = |k: &TaskKey| (&k.job_id, k.attempt) == (job, *attempt);
        self.tasks.values().any(|(k, _)| ours(k)) || self.building.keys().any(ours)
    }

    /// Installs what a builder thread built in its slot, unless it was cancelled
    /// meanwhile.
    fn install(&mut self, (d, built): Built) {
        let key = d.task.clone();
        let slot = d.slot as usize;
        if self.building.remove(&key) != Some(false) {
            // Cancelled while it was being built (or by a JobManager since left).
            self.forget_if_done(&key);
            self.report(None, key, TaskState::Canceled);
            return;
        }
        match built {
            Ok((mut deployment, sinks)) => {
                if let Some(c) = &d.checkpointing {
                    let trigger = self
                        .triggers
                        .entry((key.job_id.clone(), key.attempt))
                        .or_default()
                        .clone();
                    let (tx, task) = (self.acks_tx.clone(), key.clone());
                    let acks: spate_dataplane::checkpoint::AckSink = Arc::new(move |ack| {
                        // A closed channel: the TaskManager is stopping.
                        let _ = tx.send((task.clone(), ack));
                    });
                    deployment.checkpointing = Some(TaskCheckpointing {
                        trigger,
                        acks,
                        vertex: key.vertex,
                        subtask: key.subtask,
                        exactly_once: c.exactly_once,
                        restored_from: c.restored_from,
                        final_checkpoint: c.final_checkpoint,
                    });
                    deployment.restore = c.restore.iter().cloned().collect();
                }
                let id = TaskId(self.next_task);
                self.next_task += 1;
                tracing::info!(task = %deployment.name, slot, "deploying");
                self.tasks.insert(id, (key.clone(), slot));
                self.metrics.insert(id, deployment.metrics.clone());
                self.sinks.insert(id, sinks);
                self.task_names.insert(id, deployment.name.clone());
                if !self.slots[slot].submit(id, deployment.into_factory()) {
                    self.tasks.remove(&id);
                    self.metrics.remove(&id);
                    self.sinks.remove(&id);
                    self.task_names.remove(&id);
                    let failed = TaskState::Failed(format!("slot {slot} has stopped"));
                    self.report(None, key, failed);
                }
            }
            Err(e) => {
                self.forget_if_done(&key);
                self.report(None, key, TaskState::Failed(e));
            }
        }
    }

    fn on_slot_event(&mut self, ev: SlotEvent) {
        let (id, state) = match ev {
            SlotEvent::Running { task, .. } => (task, TaskState::Running),
            SlotEvent::Finished { task, .. } => (task, TaskState::Finished),
            SlotEvent::Failed { task, message, .. } => (task, TaskState::Failed(message)),
            SlotEvent::Cancelled { task, .. } => (task, TaskState::Canceled),
            // Cluster tasks acknowledge through their own channel (with their key), and
            // the TaskManager reports ended tasks from its triggers' counts.
            SlotEvent::Checkpoint(_) | SlotEvent::TaskEnded => return,
        };
        let Some(key) = self.tasks.get(&id).map(|(k, _)| k.clone()) else {
            return;
        };
        self.report(Some(id), key.clone(), state.clone());
        if state.is_terminal() {
            self.tasks.remove(&id);
            self.metrics.remove(&id);
            self.sinks.remove(&id);
            self.task_names.remove(&id);
            self.forget_if_done(&key);
        }
    }
}

#[cfg(test)]
mod clock_tests {
    use super::ClockSync;

    #[test]
    fn the_offset_comes_from_the_shortest_round_trip() {
        let mut c = ClockSync::default();
        assert!(!c.known(), "no offset before the first answer");
        // This clock is 5 s behind the JobManager's; the trip out takes 10 µs, back 10 µs.
        let skew = 5_000_000_000i64;
        let jm = |t: u64| (t as i64 + skew) as u64;
        assert_eq!(
            c.sample(1_000, jm(11_000), 21_000, false),
            Some((skew, 10_000))
        );
        // A probe that waited 1 ms on the way back: lopsided, and not taken.
        let e = c.sample(100_000, jm(110_000), 1_120_000, false).unwrap();
        assert_eq!(e, (skew, 10_000));
        // A shorter, lopsided-by-1-µs trip: taken, off by 1 µs at most.
        let (o, u) = c.sample(200_000, jm(204_000), 206_000, false).unwrap();
        assert!((o - skew).abs() <= 1_000 && u == 3_000, "{o} {u}");
        // Answers that cannot be: no estimate from them.
        assert_eq!(c.sample(10, 5, 9, false), None, "back before it left");
        // One clock: exactly 0.
        assert_eq!(c.sample(1, 2, 3, true), Some((0, 0)));
        assert_eq!(c.estimate(), (0, 0));
    }
}
