//! The JobManager process: the ResourceManager's TaskManager registry (registration,
//! heartbeats both ways, slot reports), served over RPC, with the Dispatcher's REST API.

use super::heartbeat::HeartbeatMonitor;
use super::{JmToTm, SlotInfo, TaskManagerId, TmToJm};
use crate::config::Config;
use crate::rest::RestServer;
use crate::rpc::{ConnId, Endpoint, Event};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Its RPC connection.
    pub conn: ConnId,
    /// When it was last heard from (ms since the JobManager started).
    pub last_heartbeat_ms: u64,
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
        let rpc = resolve(&config.jobmanager_address, config.jobmanager_port)?;
        let endpoint = Endpoint::listen(rpc, "jobmanager")
            .map_err(|e| anyhow::anyhow!("cannot listen for RPC on {rpc}: {e}"))?;
        let state = Arc::new(Mutex::new(ClusterState {
            jobmanager_id: super::new_id(),
            started: Instant::now(),
            started_epoch_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            taskmanagers: BTreeMap::new(),
            config: config.clone(),
        }));
        let rest_addr = resolve(&config.jobmanager_address, config.rest_port)?;
        let rest = RestServer::start(rest_addr, state.clone())?;
        tracing::info!(rpc = ?endpoint.local_addr(), rest = %rest.local_addr(), "JobManager started");
        Ok(Self {
            config: config.clone(),
            endpoint,
            state,
            rest,
            monitor: HeartbeatMonitor::new(config.heartbeat_timeout.as_millis() as u64),
            conns: HashMap::new(),
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
            if let Some(ev) = self.endpoint.recv_timeout(Duration::from_millis(20)) {
                self.on_event(ev);
            }
            let now = lock(&self.state).now_ms();
            for id in self.monitor.expire(now) {
                self.lose(&id, "heartbeat timed out");
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + self.config.heartbeat_interval;
                for conn in self.conns.keys() {
                    self.endpoint.send(*conn, JmToTm::Heartbeat);
                }
            }
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
    }

    fn on_event(&mut self, ev: Event<TmToJm>) {
        match ev {
            Event::Connected { .. } => {}
            Event::Message { conn, msg } => match msg {
                TmToJm::Register {
                    id,
                    host,
                    data_address,
                    slots,
                    cores,
                } => {
                    // A TaskManager that registers again (after a reconnect) replaces itself.
                    if let Some(old) = lock(&self.state).taskmanagers.get(&id).map(|e| e.conn) {
                        if old != conn {
                            self.conns.remove(&old);
                            self.endpoint.close(old);
                        }
                    }
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
                            conn,
                            last_heartbeat_ms: now,
                        },
                    );
                    self.monitor.heard(id.clone(), now);
                    self.conns.insert(conn, id);
                    self.endpoint.send(
                        conn,
                        JmToTm::Registered {
                            jobmanager_id: jm_id,
                            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis()
                                as u64,
                        },
                    );
                }
                TmToJm::Heartbeat { slots } => {
                    let Some(id) = self.conns.get(&conn).cloned() else {
                        self.endpoint.send(
                            conn,
                            JmToTm::Refused {
                                reason: "heartbeat before registration".into(),
                            },
                        );
                        return;
                    };
                    let mut st = lock(&self.state);
                    let now = st.now_ms();
                    if let Some(e) = st.taskmanagers.get_mut(&id) {
                        e.slots = slots;
                        e.last_heartbeat_ms = now;
                    }
                    drop(st);
                    self.monitor.heard(id, now);
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
