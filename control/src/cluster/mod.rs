//! Cluster mode: a JobManager process (ResourceManager + Dispatcher + JobMaster) and
//! TaskManager processes, talking over [`crate::rpc`].

pub mod heartbeat;
pub mod jobmanager;
pub mod taskmanager;

use serde::{Deserialize, Serialize};

/// A TaskManager's id: stable for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskManagerId(pub String);

impl std::fmt::Display for TaskManagerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One slot as its TaskManager reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// Slot index within the TaskManager.
    pub index: u32,
    /// The core its thread is pinned to.
    pub core: Option<u32>,
    /// The job whose subtasks it holds, if any.
    pub job: Option<String>,
}

/// TaskManager → JobManager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TmToJm {
    /// First message on a connection.
    Register {
        /// Who.
        id: TaskManagerId,
        /// Host name or address.
        host: String,
        /// Address for data connections between hosts.
        data_address: String,
        /// Its slots.
        slots: Vec<SlotInfo>,
        /// CPU cores this process may use.
        cores: u32,
    },
    /// Periodic, with the slot report.
    Heartbeat {
        /// Current slot occupancy.
        slots: Vec<SlotInfo>,
    },
}

/// JobManager → TaskManager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JmToTm {
    /// Registration accepted.
    Registered {
        /// The JobManager's session id (changes when it restarts).
        jobmanager_id: String,
        /// How often to heartbeat, ms.
        heartbeat_interval_ms: u64,
    },
    /// Registration refused (the reason says why).
    Refused {
        /// Why.
        reason: String,
    },
    /// Periodic: the JobManager is alive.
    Heartbeat,
}

/// A fresh random-looking 32-hex-digit id (Flink's id format), from the clock and pid.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(spate_dataplane::sys::monotonic_ns());
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{:016x}{:016x}", a, h.finish())
}
