//! The ResourceManager: the registry of TaskManagers (registration, who holds which
//! slots, heartbeats both ways, losing a TaskManager) and the slot pool jobs are
//! placed on.
//!
//! Its interface to the rest of the JobManager: [`JobManager::register_taskmanager`],
//! [`JobManager::lose`], [`JobManager::free_slots`],
//! [`JobManager::close_silent_connections`], and the heartbeat monitor.

use super::*;

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
    /// It reads the JobManager's clock (same clock domain): no offset to estimate.
    pub same_clock: bool,
    /// Its estimate of the offset from its clock to the cluster's, and the estimate's
    /// uncertainty, ns (as last reported).
    pub clock_offset: (i64, u64),
}

/// Slots a TaskManager may register.
pub const MAX_SLOTS_PER_TASKMANAGER: usize = 1024;

/// A TaskManager's slot list as the JobManager keeps it: one entry per slot index, and
/// no more than [`MAX_SLOTS_PER_TASKMANAGER`] (a peer's list is not trusted).
pub(super) fn bounded_slots(
    mut slots: Vec<crate::cluster::SlotInfo>,
) -> Vec<crate::cluster::SlotInfo> {
    slots.sort_by_key(|s| s.index);
    slots.dedup_by_key(|s| s.index);
    slots.truncate(MAX_SLOTS_PER_TASKMANAGER);
    slots
}

/// The longest TaskManager id taken.
pub(super) const MAX_TASKMANAGER_ID: usize = 256;

/// Whether a TaskManager's id is one a TaskManager makes (`HOST:PID-SUFFIX`, the host
/// a name or an address): ids end up in logs, metrics labels, URLs and the web UI, so
/// a peer's id is held to that alphabet.
pub(super) fn valid_taskmanager_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TASKMANAGER_ID
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:-_[]".contains(c))
}

/// Each TaskManager's agent: node id, host key, data address.
pub(super) type Peers = HashMap<TaskManagerId, (u64, String, String)>;

pub(super) fn peers_of(st: &ClusterState) -> Peers {
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

impl JobManager {
    pub(super) fn lose(&mut self, id: &TaskManagerId, reason: &str) {
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

    /// Free slots, TaskManagers in id order.
    pub(super) fn free_slots(&self) -> Vec<(TaskManagerId, u32)> {
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

    /// Closes connections that completed the handshake but have not registered within
    /// `heartbeat.timeout` (a peer that holds a connection open and says nothing).
    pub(super) fn close_silent_connections(&mut self) {
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
}

impl JobManager {
    /// A TaskManager registers (or registers again): checked (its id, its build, the
    /// connection's owner), then entered in the registry and answered with the
    /// heartbeat interval and the leader's fencing token.
    pub(super) fn register_taskmanager(&mut self, conn: ConnId, msg: TmToJm) {
        let TmToJm::Register {
            id,
            host,
            data_address,
            slots,
            cores,
            network,
            build,
            jobs,
            clock_domain,
        } = msg
        else {
            return;
        };
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
                same_clock: clock_domain == spate_dataplane::clock::clock_domain(),
                clock_offset: (0, 0),
            },
        );
        self.monitor.heard(id.clone(), now);
        self.unregistered.remove(&conn);
        self.conns.insert(conn, id);
        self.endpoint.send(
            conn,
            JmToTm::Registered {
                jobmanager_id: jm_id,
                heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
                fencing_token: self.leading.unwrap_or(0),
            },
        );
    }
}
