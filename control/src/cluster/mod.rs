//! Cluster mode: a JobManager process (ResourceManager + Dispatcher + JobMaster) and
//! TaskManager processes, talking over [`crate::rpc`].

pub mod deploy;
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
    /// Time since its thread started, and of that the time it was working (ns): its
    /// busy ratio between two reports.
    #[serde(default)]
    pub times: (u64, u64),
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
        /// Address (`host:port`) its network agent listens on for other TaskManagers.
        data_address: String,
        /// Its slots.
        slots: Vec<SlotInfo>,
        /// CPU cores this process may use.
        cores: u32,
        /// Its network agent.
        network: NetworkInfo,
        /// Its build ([`crate::jobs::build_fingerprint`]): the JobManager refuses a
        /// TaskManager of another build.
        #[serde(default)]
        build: String,
        /// The jobs its binary registered (for the refusal's message).
        #[serde(default)]
        jobs: Vec<String>,
        /// Its clock domain ([`spate_dataplane::clock::clock_domain`]): one with the
        /// JobManager's reads the same clock, others estimate their offset to it.
        #[serde(default)]
        clock_domain: String,
    },
    /// Periodic, with the slot report and the running tasks' record counts.
    Heartbeat {
        /// Current slot occupancy.
        slots: Vec<SlotInfo>,
        /// Records in and out of each running task.
        tasks: Vec<TaskRecords>,
        /// The network agent's counters.
        network: NetworkReport,
        /// Its clock when it sent this (ns; 0: no probe): the JobManager answers with
        /// [`JmToTm::Clock`].
        #[serde(default)]
        clock_probe: u64,
        /// Its estimate of the offset to the cluster's clock, and that estimate's
        /// uncertainty (half the best round trip), ns.
        #[serde(default)]
        clock_offset: (i64, u64),
    },
    /// A deployed subtask changed state.
    TaskState {
        /// Which subtask.
        task: TaskKey,
        /// Its new state.
        state: TaskState,
        /// Its record counts at that moment.
        records: TaskRecords,
    },
    /// A subtask took part in a checkpoint: the barrier passed its whole chain, and
    /// these are its operators' states.
    AcknowledgeCheckpoint {
        /// Which subtask.
        task: TaskKey,
        /// The checkpoint.
        checkpoint_id: u64,
        /// Operator states by uid.
        states: Vec<(u32, Vec<u8>)>,
        /// Nanoseconds the barrier waited for alignment.
        alignment_ns: u64,
        /// Nanoseconds spent taking the states on the slot.
        sync_ns: u64,
        /// Nanoseconds spent encoding the frozen states off the slot.
        async_ns: u64,
    },
    /// Subtasks of a deployment reached the end of their input and wait for their
    /// final checkpoint (the JobManager triggers one without waiting for the interval).
    TasksEnded {
        /// The job.
        job_id: String,
        /// Its attempt.
        attempt: u32,
    },
    /// Rows a job's `SELECT` sinks wrote here, formatted, for the client.
    Results {
        /// The job.
        job_id: String,
        /// The rows, in the order written.
        lines: Vec<String>,
    },
    /// A subtask could not take part in a checkpoint (its state cannot be shipped).
    DeclineCheckpoint {
        /// Which subtask.
        task: TaskKey,
        /// The checkpoint.
        checkpoint_id: u64,
        /// Why.
        reason: String,
    },
}

/// How a deployed subtask takes part in checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployCheckpointing {
    /// Barriers aligned (exactly-once) or not (at-least-once).
    pub exactly_once: bool,
    /// The checkpoint its state comes from (0: none); its sources inject ids above it.
    pub restored_from: u64,
    /// Its operators' states from that checkpoint, by uid.
    pub restore: Vec<(u32, Vec<u8>)>,
    /// Checkpoints are periodic: a task whose input ended waits for a final one
    /// (see `TaskCheckpointing::final_checkpoint`).
    #[serde(default)]
    pub final_checkpoint: bool,
}

/// Room left in an RPC frame beside a subtask's states.
pub const STATE_FRAME_SLACK: usize = 64 << 10;

/// A TaskManager's network agent, as it registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInfo {
    /// The agent's node id (its peers' handshakes name it).
    pub node: u64,
    /// Which host (kernel and namespaces) it runs on: TaskManagers with the same key
    /// can share memory; others exchange records over the network.
    pub host_key: String,
    /// `io_uring` or `epoll`.
    pub transport: String,
}

/// A network agent's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkReport {
    /// Connections to other TaskManagers open now.
    pub connections: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Ring frames received.
    pub frames_in: u64,
    /// Ring frames sent.
    pub frames_out: u64,
    /// Connections lost, or peers given up.
    pub failures: u64,
    /// Connections on epoll because io_uring was refused.
    pub fallbacks: u64,
}

/// One channel of a subtask whose other end runs on another host: it goes through
/// the two TaskManagers' network agents instead of shared memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteChannel {
    /// Job graph edge.
    pub edge: u32,
    /// Upstream subtask.
    pub up: u32,
    /// Downstream subtask.
    pub down: u32,
    /// Channel id on the connection between the two TaskManagers: unique across
    /// JobManager sessions (a random session half and a counter).
    pub channel: u64,
    /// The other end's TaskManager: its agent's node id and data address.
    pub peer_node: u64,
    /// `host:port`.
    pub peer_address: String,
}

/// Identifies one attempt of one subtask of a job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    /// Job id.
    pub job_id: String,
    /// Deployment number within the job: 0 first, a new one for every (re)deployment of
    /// the job or of one of its pipelined regions; the rings of a deployment carry it.
    pub attempt: u32,
    /// Vertex id in the job graph.
    pub vertex: u32,
    /// Subtask index.
    pub subtask: u32,
}

/// Records into and out of one subtask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecords {
    /// Which subtask.
    pub task: TaskKey,
    /// Records read from its input rings.
    pub records_in: u64,
    /// Records written to its output rings.
    pub records_out: u64,
    /// Its inputs' combined watermark (event time, ns; 0: none).
    #[serde(default)]
    pub watermark: u64,
    /// Back-pressure samples: (rounds, rounds with the outputs full).
    #[serde(default)]
    pub backpressure: (u64, u64),
    /// The end-to-end latencies its latency sinks recorded since it started (an
    /// HdrHistogram in the V2 encoding; `None`: it has recorded none).
    #[serde(default)]
    pub latency: Option<Vec<u8>>,
    /// How long after their sources emitted them latency markers reached it (the same
    /// encoding; `None`: none has).
    #[serde(default)]
    pub markers: Option<Vec<u8>>,
    /// Each operator of its chain, head first, with its time per record on sampled
    /// batches (the same encoding; `None`: none sampled yet).
    #[serde(default)]
    pub operators: Vec<(String, Option<Vec<u8>>)>,
}

/// The V2 cookie of an uncompressed HdrHistogram encoding.
const HISTOGRAM_V2_COOKIE: u32 = 0x1c84_9313;

/// Encodes a latency histogram for a report (`None` when it is empty).
pub fn encode_latency(h: &hdrhistogram::Histogram<u64>) -> Option<Vec<u8>> {
    if h.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    hdrhistogram::serialization::Serializer::serialize(
        &mut hdrhistogram::serialization::V2Serializer::new(),
        h,
        &mut out,
    )
    .ok()?;
    Some(out)
}

/// Decodes a latency histogram from a peer's report, refusing (with the reason) what
/// a latency sink cannot have sent: another encoding, a payload length that is not
/// the frame's, or bounds beyond the data plane's histograms, any of which could make
/// the decoder allocate without limit.
pub fn decode_latency(bytes: &[u8]) -> Result<hdrhistogram::Histogram<u64>, String> {
    const HEADER: usize = 40;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    let long = |at: usize| -> Option<u64> {
        Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
    };
    if word(0) != Some(HISTOGRAM_V2_COOKIE) {
        return Err("not an uncompressed V2 HdrHistogram".into());
    }
    let payload = word(4).ok_or("truncated histogram header")? as usize;
    if Some(payload) != bytes.len().checked_sub(HEADER) {
        return Err(format!(
            "histogram payload of {payload} bytes in {} bytes",
            bytes.len()
        ));
    }
    // Exactly the data plane's latency histograms (1 ns to 1000 s, 3 digits): what a
    // TaskManager sends, and a bounded size for what a peer can make us allocate.
    let template = spate_dataplane::operator::sink::new_histogram();
    let digits = word(12).ok_or("truncated histogram header")?;
    let (low, high) = (
        long(16).ok_or("truncated histogram header")?,
        long(24).ok_or("truncated histogram header")?,
    );
    if u64::from(digits) != u64::from(template.sigfig())
        || low != template.low()
        || high != template.high()
    {
        return Err(format!(
            "histogram bounds are not a latency histogram's ({digits} digits, {low} to {high})"
        ));
    }
    // The decoder trusts its counts (a count that decodes to i64::MIN overflows in a
    // debug build): a peer's bytes must not take the process down.
    std::panic::catch_unwind(|| {
        hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
    })
    .map_err(|_| "malformed histogram (the decoder gave up)".to_string())?
    .map_err(|e| format!("malformed histogram: {e:?}"))
}

/// A subtask's state (Flink's ExecutionState, reduced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Deployed and being polled.
    Running,
    /// Done.
    Finished,
    /// Failed, with the reason.
    Failed(String),
    /// Cancelled.
    Canceled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, Self::Running)
    }
}

/// What a TaskManager needs to run one subtask: it rebuilds the job graph from the spec
/// (the same code on every node) and takes its part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDeployment {
    /// Which subtask.
    pub task: TaskKey,
    /// The job.
    pub spec: crate::jobs::JobSpec,
    /// Slot index on the TaskManager.
    pub slot: u32,
    /// Bytes per ring.
    pub ring_size: u64,
    /// Default parallelism and chaining, as the JobManager resolved the graph.
    pub default_parallelism: u32,
    /// `pipeline.operator-chaining.enabled`.
    pub chaining: bool,
    /// The subtask's channels to other hosts.
    pub remote: Vec<RemoteChannel>,
    /// Checkpoints (`None`: the job takes none and restores nothing).
    pub checkpointing: Option<DeployCheckpointing>,
    /// `metrics.latency.interval` of the job (ns), when the cluster or the job set it;
    /// `None`: the TaskManager's own.
    #[serde(default)]
    pub latency_interval_ns: Option<u64>,
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
        /// With high availability, the leader's fencing token (0: none): a TaskManager
        /// stays only with the JobManager whose token the leader key carries.
        #[serde(default)]
        fencing_token: u64,
    },
    /// Registration refused (the reason says why).
    Refused {
        /// Why.
        reason: String,
        /// Retrying cannot help (another build): the TaskManager stops.
        #[serde(default)]
        fatal: bool,
    },
    /// Periodic: the JobManager is alive.
    Heartbeat,
    /// Run a subtask.
    Deploy(Box<TaskDeployment>),
    /// Cancel these tasks of the job (a pipelined region being restarted), or all of
    /// them (`None`).
    Cancel {
        /// Job id.
        job_id: String,
        /// The tasks, or every one.
        tasks: Option<Vec<TaskKey>>,
    },
    /// Sources of the job inject barrier `checkpoint_id`.
    TriggerCheckpoint {
        /// Job id.
        job_id: String,
        /// Checkpoint id.
        checkpoint_id: u64,
        /// Trigger time, ns since the Unix epoch.
        timestamp_ns: u64,
        /// A savepoint rather than a checkpoint.
        savepoint: bool,
        /// The savepoint of a stop: sources emit nothing after its barrier.
        #[serde(default)]
        stop: bool,
    },
    /// The stop savepoint `checkpoint_id` failed: the job's sources go on.
    StopAborted {
        /// Job id.
        job_id: String,
        /// Savepoint id.
        checkpoint_id: u64,
    },
    /// Checkpoint `checkpoint_id` of the job completed: sinks commit.
    CheckpointComplete {
        /// Job id.
        job_id: String,
        /// Checkpoint id.
        checkpoint_id: u64,
    },
    /// The job is over: remove whatever of it is left (shared-memory rings).
    JobEnded {
        /// Job id.
        job_id: String,
    },
    /// The answer to a heartbeat's clock probe.
    Clock {
        /// The probe (the TaskManager's clock when it sent the heartbeat).
        probe: u64,
        /// The JobManager's clock when it answered.
        jobmanager_ns: u64,
        /// The two read one clock (same domain): the offset is 0.
        same_clock: bool,
    },
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

/// Merges encoded latency histograms (each already checked by [`decode_latency`] when
/// it arrived); `None` when there are none.
pub fn merge_latency<'a>(
    encoded: impl Iterator<Item = &'a Vec<u8>>,
) -> Option<hdrhistogram::Histogram<u64>> {
    merge_histograms(encoded.filter_map(|b| decode_latency(b).ok()))
}

/// Merges latency histograms; `None` when there are none.
pub fn merge_histograms(
    histograms: impl Iterator<Item = hdrhistogram::Histogram<u64>>,
) -> Option<hdrhistogram::Histogram<u64>> {
    histograms.reduce(|mut a, b| {
        // Same bounds everywhere (the data plane's): adding cannot fail.
        let _ = a.add(&b);
        a
    })
}

#[cfg(test)]
mod latency_tests {
    use super::{decode_latency, encode_latency};

    #[test]
    fn latency_histograms_round_trip_and_foreign_bytes_are_refused() {
        let mut h = spate_dataplane::operator::sink::new_histogram();
        assert_eq!(encode_latency(&h), None, "an empty histogram is not sent");
        for v in [1_000u64, 2_000, 3_000, 1_000_000] {
            h.record(v).unwrap();
        }
        let bytes = encode_latency(&h).unwrap();
        let back = decode_latency(&bytes).unwrap();
        assert_eq!(back.len(), 4);
        assert_eq!(back.value_at_quantile(0.99), h.value_at_quantile(0.99));
        assert!(decode_latency(b"not a histogram at all, not even close.....").is_err());
        assert!(
            decode_latency(&bytes[..bytes.len() - 1]).is_err(),
            "truncated"
        );
        let mut long = bytes.clone();
        long[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(
            decode_latency(&long).is_err(),
            "a payload length beyond the frame"
        );
        let mut wide = bytes.clone();
        wide[24..32].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode_latency(&wide).is_err(), "bounds beyond a latency's");
        assert!(decode_latency(&[]).is_err());
    }
}
