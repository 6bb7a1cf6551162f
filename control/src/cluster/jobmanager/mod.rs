//! The JobManager process, as Flink's: a [`resource_manager`] (TaskManager registry, slot
//! pool, heartbeats), a [`dispatcher`] (submissions, the job store, REST commands) and a
//! [`job_master`] per job (execution graph, scheduling, failover, checkpoints), with the
//! leader election service ([`crate::ha`]) beside them. They share one event loop
//! ([`JobManager::run`]) and one [`ClusterState`], which the REST API reads.

mod dispatcher;
mod job_master;
mod resource_manager;

pub use dispatcher::{BuiltSubmission, JmCommand, SavepointRequest, MAX_ENDED_JOBS};
use job_master::*;
pub use job_master::{
    pipelined_regions, ExceptionEntry, JobEntry, JobState, TaskSlot, VertexInfo, MAX_EXCEPTIONS,
};
use resource_manager::*;
pub use resource_manager::{TaskManagerEntry, MAX_SLOTS_PER_TASKMANAGER};

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

/// Milliseconds since the Unix epoch.
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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
                msg @ TmToJm::Register { .. } => self.register_taskmanager(conn, msg),
                TmToJm::Heartbeat {
                    slots,
                    tasks,
                    network,
                    clock_probe,
                    clock_offset,
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
                        e.clock_offset = clock_offset;
                        if clock_probe != 0 {
                            // At once, so that the round trip is the network's.
                            self.endpoint.send(
                                conn,
                                JmToTm::Clock {
                                    probe: clock_probe,
                                    jobmanager_ns: spate_dataplane::clock::now_ns(),
                                    same_clock: e.same_clock,
                                },
                            );
                        }
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
            operators: Vec::new(),
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
