//! Configuration: `conf/config.yaml` with Flink's key names plus spate's own, and `-D`
//! overrides. Keys may be written flat (`taskmanager.numberOfTaskSlots: 2`) or nested
//! (`taskmanager: {numberOfTaskSlots: 2}`). An unknown key or a bad value is an error
//! that names it.

use spate_dataplane::idle::IdleStrategyKind;
use std::path::{Path, PathBuf};
use std::time::Duration;
use yaml_rust2::{Yaml, YamlLoader};

/// A configuration problem, naming the key (and file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not YAML.
    #[error("{path}: not valid YAML: {message}")]
    Yaml {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// A key spate does not know.
    #[error("{origin}: unknown configuration key '{key}'")]
    UnknownKey {
        /// File or `-D`.
        origin: String,
        /// The key.
        key: String,
    },
    /// A value that does not fit its key.
    #[error("{origin}: invalid value '{value}' for '{key}': {expected}")]
    BadValue {
        /// File or `-D`.
        origin: String,
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What the key takes.
        expected: String,
    },
    /// A `-D` argument without `=`.
    #[error("-D {0}: expected key=value")]
    BadOverride(String),
}

/// Restart strategy names (Flink's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartStrategyType {
    /// Never restart.
    None,
    /// A fixed number of attempts with a fixed delay.
    FixedDelay,
    /// Restart while failures per interval stay under a limit.
    FailureRate,
    /// Exponentially growing delays.
    ExponentialDelay,
}

/// Which tasks restart after a failure (`jobmanager.execution.failover-strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverStrategy {
    /// Every task of the job.
    Full,
    /// The failed task's pipelined region only.
    Region,
}

/// The configuration, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `jobmanager.rpc.address`
    pub jobmanager_address: String,
    /// `jobmanager.rpc.port`
    pub jobmanager_port: u16,
    /// `rest.port`
    pub rest_port: u16,
    /// `metrics.reporter.prom.port`: where a TaskManager serves its metrics (a port,
    /// or the first free one of a range); unset, it serves none.
    pub prom_ports: Option<Vec<u16>>,
    /// `taskmanager.host`: how other processes reach this TaskManager.
    pub taskmanager_host: String,
    /// `taskmanager.numberOfTaskSlots`
    pub slots: usize,
    /// `taskmanager.cpu.cores` (spate)
    pub cores: Vec<usize>,
    /// `taskmanager.idle-strategy` (spate)
    pub idle: IdleStrategyKind,
    /// `taskmanager.memory.ring-size` (spate), bytes
    pub ring_size: usize,
    /// `taskmanager.ring.peer-timeout` (spate): a task fails when the other side of one
    /// of its rings has not marked itself alive for this long (0: never).
    pub ring_peer_timeout: Duration,
    /// `pipeline.auto-watermark-interval`: the longest a watermark waits to go out once
    /// it advanced (spate sends it with the batch that advanced it, so any positive
    /// value behaves alike); 0 turns watermark generation off, as in Flink.
    pub auto_watermark_interval: Duration,
    /// `parallelism.default`
    pub default_parallelism: usize,
    /// `pipeline.max-parallelism`: the number of key groups keyed state is kept in,
    /// and so the highest parallelism a savepoint of the job can be restored at
    /// (default: Flink's, 1.5 × the largest parallelism rounded up to a power of two,
    /// at least 128).
    pub max_parallelism: Option<u32>,
    /// `execution.runtime-mode`: STREAMING or BATCH.
    pub runtime_mode: crate::api::RuntimeMode,
    /// Keys of Flink's that spate accepts but does not use, each with where it was
    /// read: reported as warnings, never errors (a Flink `config.yaml` loads as is).
    pub ignored_keys: Vec<String>,
    /// `pipeline.operator-chaining.enabled`
    pub chaining: bool,
    /// `restart-strategy.type`
    pub restart_strategy: RestartStrategyType,
    /// `restart-strategy.fixed-delay.attempts`
    pub restart_attempts: u32,
    /// `restart-strategy.fixed-delay.delay`
    pub restart_delay: Duration,
    /// `restart-strategy.failure-rate.max-failures-per-interval`
    pub failure_rate_max_failures: u32,
    /// `restart-strategy.failure-rate.failure-rate-interval`
    pub failure_rate_interval: Duration,
    /// `restart-strategy.failure-rate.delay`
    pub failure_rate_delay: Duration,
    /// `restart-strategy.exponential-delay.*`
    pub exponential_delay: crate::restart::ExponentialDelayParams,
    /// `jobmanager.execution.failover-strategy`
    pub failover_strategy: FailoverStrategy,
    /// `heartbeat.interval`
    pub heartbeat_interval: Duration,
    /// `metrics.fetcher.update-interval`: how often a TaskManager reports its tasks'
    /// metrics (records, back-pressure, watermarks, latency) to the JobManager, for the
    /// REST API and the web UI (at least once per heartbeat).
    pub metrics_update_interval: Duration,
    /// `metrics.latency.interval`: how often sources send latency markers, which
    /// measure how long records take to reach each task (zero: off, Flink's default).
    pub latency_interval: Duration,
    /// `heartbeat.timeout`
    pub heartbeat_timeout: Duration,
    /// `task.cancellation.timeout`: a task that has not stopped this long after it
    /// was cancelled (its user code never returns) is a fatal error of its
    /// TaskManager, which exits so that its slots come back (0: never; Flink's 3 min).
    pub task_cancellation_timeout: Duration,
    /// `slot.request.timeout`: how long a restarting job waits for the slots it needs
    /// before it fails.
    pub slot_request_timeout: Duration,
    /// `taskmanager.data.port`: where the TaskManager's network agent listens for its
    /// peers (0: any free port).
    pub data_port: u16,
    /// `taskmanager.network.transport` (spate): io_uring or epoll.
    pub transport: spate_dataplane::net::TransportKind,
    /// `taskmanager.network.agent` (spate): the agent on a thread of its own, or polled
    /// by the first slot (sharing its core).
    pub agent: AgentMode,
    /// `taskmanager.network.agent-core` (spate): the agent thread's core.
    pub agent_core: AgentCore,
    /// `taskmanager.network.idle-strategy` (spate): how the agent thread idles.
    pub agent_idle: IdleStrategyKind,
    /// `taskmanager.network.io-uring.sqpoll` and `.multishot` (spate).
    pub uring: spate_dataplane::net::UringOptions,
    /// `taskmanager.network.same-host` (spate): channels between TaskManagers on one
    /// host go through shared memory (`shm`) or through the network agents (`tcp`).
    pub same_host_tcp: bool,
    /// `execution.checkpointing.*`, `state.checkpoints.*`: checkpoints.
    pub checkpointing: CheckpointConfig,
    /// `s3.*`: how checkpoints and savepoints under `s3://` reach their store.
    pub s3: crate::storage::S3Settings,
    /// `high-availability.*`: leader election and the job store (off by default).
    pub ha: HaConfig,
    /// `security.internal.secret` (or `-file`, spate): JobManagers and TaskManagers
    /// prove to each other that they hold it on every RPC and data connection.
    pub internal_secret: crate::security::SecretBytes,
    /// `security.rest.secret` (or `-file`, spate): REST requests carry it as a bearer
    /// token.
    pub rest_secret: crate::security::SecretBytes,
    /// `security.job.allowed-dirs` (spate): the only directories (or object-store
    /// prefixes) that jobs submitted to the cluster may read or write; `None`: any.
    pub job_allowed_dirs: Option<Vec<String>>,
    /// The keys the configuration file set, with their values, in order (what
    /// `spate run -m --config-dir DIR` sends with a job, see [`Self::job_settings`]).
    pub file_keys: Vec<(String, String)>,
    /// Every key set (file, `-D`), with its value as given: what the REST API's
    /// `/jobmanager/config` shows.
    pub applied: std::collections::BTreeMap<String, String>,
}

/// High availability, with Flink's keys where Flink has them.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    /// `high-availability.type`: `none` (Flink's `NONE`) or `etcd` (spate's analogue of
    /// Flink's `zookeeper` and `kubernetes` types).
    pub etcd: bool,
    /// `high-availability.etcd.endpoints`: etcd's client URLs (`http://host:port` or
    /// `host:port`), comma-separated.
    pub endpoints: Vec<String>,
    /// `high-availability.cluster-id`: the cluster's keys in etcd and its directory in
    /// the storage directory (several clusters can share one etcd).
    pub cluster_id: String,
    /// `high-availability.storageDir`: where submitted jobs are written (etcd holds
    /// pointers to them).
    pub storage_dir: Option<PathBuf>,
    /// `high-availability.etcd.lease-duration` (spate): the leader's lease; a standby
    /// takes over this long after the leader stopped renewing it (whole seconds).
    pub lease_duration: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        Self {
            etcd: false,
            endpoints: Vec::new(),
            cluster_id: "default".into(),
            storage_dir: None,
            lease_duration: Duration::from_secs(10),
        }
    }
}

/// Checkpointing, with Flink's keys.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointConfig {
    /// `execution.checkpointing.interval` (`None`: checkpoints are off, Flink's default).
    pub interval: Option<Duration>,
    /// `execution.checkpointing.timeout`: a checkpoint not complete by then is aborted.
    pub timeout: Duration,
    /// `execution.checkpointing.min-pause`: the least time from the end of one
    /// checkpoint to the start of the next.
    pub min_pause: Duration,
    /// `execution.checkpointing.max-concurrent-checkpoints`.
    pub max_concurrent: usize,
    /// `execution.checkpointing.tolerable-failed-checkpoints`: consecutive failed
    /// checkpoints the job tolerates before it fails (`None`: any number, as Flink's
    /// default).
    pub tolerable_failures: Option<u32>,
    /// `execution.checkpointing.mode`: exactly-once (aligned barriers) or at-least-once.
    pub exactly_once: bool,
    /// `execution.checkpointing.unaligned.enabled`: accepted; only `false` is supported.
    pub unaligned: bool,
    /// `state.checkpoints.dir`: where completed checkpoints are written.
    pub dir: Option<std::path::PathBuf>,
    /// `state.checkpoints.num-retained`: completed checkpoints kept per job.
    pub num_retained: usize,
    /// `state.savepoints.dir`: where savepoints go when a request names no directory.
    pub savepoint_dir: Option<std::path::PathBuf>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: None,
            exactly_once: true,
            unaligned: false,
            dir: None,
            num_retained: 1,
            savepoint_dir: None,
        }
    }
}

/// The agent thread's core (`taskmanager.network.agent-core`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCore {
    /// A usable core no slot is pinned to, if there is one; else unpinned.
    Auto,
    /// Not pinned.
    Unpinned,
    /// This core.
    Core(usize),
}

/// Where the network agent runs (`taskmanager.network.agent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentMode {
    /// A thread of its own.
    Dedicated,
    /// A task of the first slot.
    Shared,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            jobmanager_address: "localhost".into(),
            jobmanager_port: 6123,
            rest_port: 8081,
            taskmanager_host: "localhost".into(),
            slots: 2,
            cores: Vec::new(),
            idle: IdleStrategyKind::Backoff,
            ring_size: 1 << 20,
            ring_peer_timeout: Duration::from_secs(30),
            auto_watermark_interval: Duration::from_millis(200),
            runtime_mode: crate::api::RuntimeMode::Streaming,
            ignored_keys: Vec::new(),
            default_parallelism: 1,
            max_parallelism: None,
            chaining: true,
            restart_strategy: RestartStrategyType::None,
            restart_attempts: 1,
            restart_delay: Duration::from_secs(1),
            failure_rate_max_failures: 1,
            failure_rate_interval: Duration::from_secs(60),
            failure_rate_delay: Duration::from_secs(1),
            exponential_delay: crate::restart::ExponentialDelayParams::default(),
            failover_strategy: FailoverStrategy::Region,
            heartbeat_interval: Duration::from_secs(10),
            metrics_update_interval: Duration::from_secs(1),
            latency_interval: Duration::ZERO,
            heartbeat_timeout: Duration::from_secs(50),
            slot_request_timeout: Duration::from_secs(300),
            task_cancellation_timeout: Duration::from_secs(180),
            data_port: 0,
            transport: spate_dataplane::net::TransportKind::IoUring,
            agent: AgentMode::Dedicated,
            agent_core: AgentCore::Auto,
            agent_idle: IdleStrategyKind::Backoff,
            uring: spate_dataplane::net::UringOptions::default(),
            same_host_tcp: false,
            checkpointing: CheckpointConfig::default(),
            s3: crate::storage::S3Settings::default(),
            ha: HaConfig::default(),
            internal_secret: Default::default(),
            rest_secret: Default::default(),
            job_allowed_dirs: None,
            prom_ports: None,
            file_keys: Vec::new(),
            applied: std::collections::BTreeMap::new(),
        }
    }
}

/// Every key spate knows.
pub const KEYS: &[&str] = &[
    "jobmanager.rpc.address",
    "jobmanager.rpc.port",
    "rest.port",
    "metrics.reporter.prom.port",
    "taskmanager.host",
    "taskmanager.numberOfTaskSlots",
    "taskmanager.cpu.cores",
    "taskmanager.idle-strategy",
    "taskmanager.memory.ring-size",
    "taskmanager.ring.peer-timeout",
    "parallelism.default",
    "pipeline.max-parallelism",
    "execution.runtime-mode",
    "pipeline.auto-watermark-interval",
    "pipeline.operator-chaining.enabled",
    "restart-strategy.type",
    "restart-strategy.fixed-delay.attempts",
    "restart-strategy.fixed-delay.delay",
    "restart-strategy.failure-rate.max-failures-per-interval",
    "restart-strategy.failure-rate.failure-rate-interval",
    "restart-strategy.failure-rate.delay",
    "restart-strategy.exponential-delay.initial-backoff",
    "restart-strategy.exponential-delay.max-backoff",
    "restart-strategy.exponential-delay.backoff-multiplier",
    "restart-strategy.exponential-delay.reset-backoff-threshold",
    "restart-strategy.exponential-delay.jitter-factor",
    "restart-strategy.exponential-delay.attempts-before-reset-backoff",
    "jobmanager.execution.failover-strategy",
    "heartbeat.interval",
    "heartbeat.timeout",
    "metrics.fetcher.update-interval",
    "metrics.latency.interval",
    "slot.request.timeout",
    "task.cancellation.timeout",
    "taskmanager.data.port",
    "taskmanager.network.transport",
    "taskmanager.network.agent",
    "taskmanager.network.agent-core",
    "taskmanager.network.idle-strategy",
    "taskmanager.network.io-uring.sqpoll",
    "taskmanager.network.io-uring.multishot",
    "taskmanager.network.same-host",
    "execution.checkpointing.interval",
    "execution.checkpointing.timeout",
    "execution.checkpointing.min-pause",
    "execution.checkpointing.max-concurrent-checkpoints",
    "execution.checkpointing.tolerable-failed-checkpoints",
    "execution.checkpointing.mode",
    "execution.checkpointing.unaligned.enabled",
    "state.checkpoints.dir",
    "state.checkpoints.num-retained",
    "state.savepoints.dir",
    "s3.endpoint",
    "s3.access-key",
    "s3.secret-key",
    "s3.region",
    "s3.path.style.access",
    "high-availability.type",
    "high-availability.etcd.endpoints",
    "high-availability.cluster-id",
    "high-availability.storageDir",
    "high-availability.etcd.lease-duration",
    "security.internal.secret",
    "security.internal.secret-file",
    "security.rest.secret",
    "security.rest.secret-file",
    "security.job.allowed-dirs",
];

fn scalar(y: &Yaml) -> Option<String> {
    Some(match y {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => String::new(),
        _ => return None,
    })
}

/// Keys of Flink's stock `config.yaml` (and of a Flink cluster's effective
/// configuration) that spate does not use: the JVM's memory and options, bind hosts,
/// blob and web settings. They are accepted with a warning so that a Flink user's
/// configuration directory loads as it is.
pub const FLINK_KEYS_IGNORED: &[&str] = &[
    "env.java.opts.all",
    "env.java.opts.jobmanager",
    "env.java.opts.taskmanager",
    "env.log.dir",
    "env.pid.dir",
    "jobmanager.bind-host",
    "jobmanager.memory.process.size",
    "jobmanager.memory.flink.size",
    "jobmanager.memory.heap.size",
    "jobmanager.memory.off-heap.size",
    "jobmanager.memory.jvm-metaspace.size",
    "taskmanager.bind-host",
    "taskmanager.memory.process.size",
    "taskmanager.memory.flink.size",
    "taskmanager.memory.managed.size",
    "taskmanager.memory.network.fraction",
    "taskmanager.memory.network.min",
    "taskmanager.memory.network.max",
    "taskmanager.memory.task.heap.size",
    "taskmanager.memory.jvm-metaspace.size",
    "rest.address",
    "rest.bind-address",
    "blob.server.port",
    "web.tmpdir",
    "web.submit.enable",
    "web.cancel.enable",
    "web.upload.dir",
    "io.tmp.dirs",
    "classloader.resolve-order",
    "state.backend.type",
];

/// What a sensitive key's value shows as.
const MASK: &str = "******";

/// Whether a key holds a secret (its value is masked wherever keys are shown, as
/// Flink masks them).
fn sensitive(key: &str) -> bool {
    const SENSITIVE: &[&str] = &["password", "secret", "token", "apikey", "auth"];
    let k = key.to_ascii_lowercase();
    SENSITIVE.iter().any(|s| k.contains(s))
}

/// Longest duration a key takes (365 days): long enough for any timeout, short enough
/// that deadlines computed from it never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses a Flink duration: `500 ms`, `10 s`, `1 min`, `2 h`, or plain milliseconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit.trim() {
        "" | "ms" | "milli" | "millis" | "milliseconds" => Duration::from_millis(n),
        "us" | "µs" | "micro" | "micros" => Duration::from_micros(n),
        "ns" | "nanos" => Duration::from_nanos(n),
        "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
        "min" | "m" | "minute" | "minutes" => Duration::from_secs(n.checked_mul(60)?),
        "h" | "hour" | "hours" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
    .filter(|d| *d <= MAX_DURATION)
}

/// Parses a byte size: `1048576`, `64kb`, `1 mb`, `1m`.
pub fn parse_bytes(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Config {
    /// What the data plane's tasks take from this configuration.
    pub fn task_settings(&self) -> spate_dataplane::task::TaskSettings {
        spate_dataplane::task::TaskSettings {
            peer_timeout_ns: u64::try_from(self.ring_peer_timeout.as_nanos()).unwrap_or(u64::MAX),
            latency_interval_ns: u64::try_from(self.latency_interval.as_nanos())
                .unwrap_or(u64::MAX),
        }
    }

    /// The config directory: `--config-dir`, else `SPATE_CONF_DIR`, else `./conf`.
    pub fn dir(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SPATE_CONF_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("conf"))
    }

    /// Loads `DIR/config.yaml` (defaults if the directory has none) and applies `-D`
    /// overrides in order.
    pub fn load(dir: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let path = dir.join("config.yaml");
        let mut cfg = if path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            Self::from_yaml(&text, &path.display().to_string())?
        } else {
            Self::default()
        };
        cfg.apply_overrides(overrides)?;
        Ok(cfg)
    }

    /// Parses YAML text; `origin` names it in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let docs = YamlLoader::load_from_str(text).map_err(|e| ConfigError::Yaml {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let mut cfg = Self::default();
        if let Some(doc) = docs.first() {
            match doc {
                Yaml::Hash(_) => cfg.apply_node("", doc, origin)?,
                Yaml::Null => {}
                _ => {
                    return Err(ConfigError::Yaml {
                        path: origin.to_string(),
                        message: "the top level must be a mapping of keys to values".into(),
                    })
                }
            }
        }
        Ok(cfg)
    }

    /// Notes a Flink key spate does not use (and says so in the log).
    fn ignore(&mut self, key: &str, origin: &str) {
        tracing::warn!(%key, %origin, "a Flink configuration key spate does not use; ignored");
        self.ignored_keys.push(format!("{origin}: {key}"));
    }

    fn apply_node(&mut self, prefix: &str, node: &Yaml, origin: &str) -> Result<(), ConfigError> {
        match node {
            Yaml::Hash(h) => {
                for (k, v) in h {
                    let Some(k) = scalar(k) else {
                        return Err(ConfigError::Yaml {
                            path: origin.into(),
                            message: "keys must be scalars".into(),
                        });
                    };
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    if KEYS.contains(&key.as_str()) {
                        self.set_yaml(&key, v, origin)?;
                    } else if FLINK_KEYS_IGNORED.contains(&key.as_str()) {
                        self.ignore(&key, origin);
                    } else if matches!(v, Yaml::Hash(_)) {
                        self.apply_node(&key, v, origin)?;
                    } else {
                        return Err(ConfigError::UnknownKey {
                            origin: origin.into(),
                            key,
                        });
                    }
                }
                Ok(())
            }
            _ => Err(ConfigError::UnknownKey {
                origin: origin.into(),
                key: prefix.into(),
            }),
        }
    }

    fn set_yaml(&mut self, key: &str, v: &Yaml, origin: &str) -> Result<(), ConfigError> {
        let value = match v {
            Yaml::Array(items) => {
                let mut parts = Vec::new();
                for i in items {
                    parts.push(scalar(i).ok_or_else(|| ConfigError::BadValue {
                        origin: origin.into(),
                        key: key.into(),
                        value: format!("{i:?}"),
                        expected: "a list of scalars".into(),
                    })?);
                }
                parts.join(",")
            }
            other => scalar(other).ok_or_else(|| ConfigError::BadValue {
                origin: origin.into(),
                key: key.into(),
                value: format!("{other:?}"),
                expected: "a scalar value".into(),
            })?,
        };
        self.set(key, &value, origin)?;
        let value = if sensitive(key) { MASK.into() } else { value };
        self.file_keys.push((key.to_string(), value));
        Ok(())
    }

    /// The job-level settings the configuration file set (parallelism, pipeline,
    /// runtime mode, restart and failover strategies, checkpointing and state), as
    /// `key=value`: what a job submitted with `spate run -m --config-dir DIR` takes
    /// from `DIR/config.yaml`, as Flink's client applies its configuration to the
    /// jobs it submits. Cluster keys (ports, slots, cores) stay the cluster's.
    pub fn job_settings(&self) -> Vec<String> {
        const JOB_LEVEL: &[&str] = &[
            "parallelism.",
            "pipeline.",
            "execution.",
            "restart-strategy.",
            "jobmanager.execution.failover-strategy",
            "state.",
        ];
        self.file_keys
            .iter()
            .filter(|(k, _)| JOB_LEVEL.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    /// In a JobManager or TaskManager: with `security.job.allowed-dirs`, confines the
    /// paths submitted jobs name to those directories and the cluster's own checkpoint,
    /// savepoint and high-availability storage directories.
    pub fn confine_job_paths(&self) {
        if let Some(dirs) = &self.job_allowed_dirs {
            let mut roots = dirs.clone();
            for own in [
                &self.checkpointing.dir,
                &self.checkpointing.savepoint_dir,
                &self.ha.storage_dir,
            ]
            .into_iter()
            .flatten()
            {
                roots.push(own.display().to_string());
            }
            crate::security::confine_job_paths(roots);
        }
    }

    /// Applies `key=value` overrides.
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<(), ConfigError> {
        for o in overrides {
            let (k, v) = o
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(o.clone()))?;
            let v = v.trim();
            let v = v
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or(v);
            self.set(k.trim(), v, "-D")?;
        }
        Ok(())
    }

    /// Sets one key from its textual value.
    pub fn set(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        self.set_typed(key, value, origin)?;
        // Secrets are kept where they act, not among the keys shown or sent on.
        let shown = if sensitive(key) { MASK } else { value.trim() };
        self.applied
            .insert(key.trim().to_string(), shown.to_string());
        Ok(())
    }

    /// The keys set, with values of sensitive keys (secrets, passwords, tokens)
    /// masked as Flink masks them.
    pub fn shown(&self) -> Vec<(String, String)> {
        self.applied
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if sensitive(k) { MASK.into() } else { v.clone() },
                )
            })
            .collect()
    }

    fn set_typed(&mut self, key: &str, value: &str, origin: &str) -> Result<(), ConfigError> {
        let bad = |expected: &str| ConfigError::BadValue {
            origin: origin.into(),
            key: key.into(),
            value: value.into(),
            expected: expected.into(),
        };
        let v = value.trim();
        let port = || v.parse::<u16>().map_err(|_| bad("a port number 0..=65535"));
        let positive = || {
            v.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("a positive integer"))
        };
        let duration =
            || parse_duration(v).ok_or_else(|| bad("a duration such as '500 ms' or '10 s'"));
        match key {
            "jobmanager.rpc.address" => {
                if v.is_empty() {
                    return Err(bad("a host name or address"));
                }
                self.jobmanager_address = v.into();
            }
            "jobmanager.rpc.port" => self.jobmanager_port = port()?,
            "rest.port" => self.rest_port = port()?,
            "metrics.reporter.prom.port" => {
                self.prom_ports = Some(
                    crate::metrics::parse_ports(v)
                        .ok_or_else(|| bad("a port or a range of ports such as 9249-9260"))?,
                )
            }
            "taskmanager.host" => {
                if v.is_empty() {
                    return Err(bad("a host name or address"));
                }
                self.taskmanager_host = v.into();
            }
            "taskmanager.numberOfTaskSlots" => self.slots = positive()?,
            "taskmanager.data.port" => self.data_port = port()?,
            "taskmanager.network.transport" => {
                self.transport = v.parse().map_err(|_| bad("io_uring or epoll"))?
            }
            "taskmanager.network.agent" => {
                self.agent = match v {
                    "dedicated" | "thread" => AgentMode::Dedicated,
                    "shared" | "slot" => AgentMode::Shared,
                    _ => return Err(bad("dedicated or shared")),
                }
            }
            "taskmanager.network.agent-core" => {
                self.agent_core = match v {
                    "auto" => AgentCore::Auto,
                    "none" | "unpinned" => AgentCore::Unpinned,
                    n => {
                        AgentCore::Core(n.parse().map_err(|_| bad("auto, none, or a core number"))?)
                    }
                }
            }
            "taskmanager.network.idle-strategy" => {
                self.agent_idle = v
                    .parse()
                    .map_err(|e: spate_dataplane::idle::UnknownIdleStrategy| bad(&e.to_string()))?
            }
            "taskmanager.network.io-uring.sqpoll" => {
                self.uring.sqpoll_idle_ms = match v {
                    "off" | "false" | "none" => None,
                    d => Some(
                        parse_duration(d)
                            .and_then(|d| u32::try_from(d.as_millis()).ok())
                            .ok_or_else(|| {
                                bad("off, or the kernel thread's idle time, e.g. 10 ms")
                            })?,
                    ),
                }
            }
            "taskmanager.network.io-uring.multishot" => {
                self.uring.multishot = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "taskmanager.network.same-host" => {
                self.same_host_tcp = match v {
                    "shm" => false,
                    "tcp" => true,
                    _ => return Err(bad("shm or tcp")),
                }
            }
            "taskmanager.cpu.cores" => {
                let mut cores = Vec::new();
                for part in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    cores.push(
                        part.parse::<usize>()
                            .map_err(|_| bad("a list of core numbers, e.g. [0, 1]"))?,
                    );
                }
                self.cores = cores;
            }
            "taskmanager.idle-strategy" => {
                self.idle = v
                    .parse()
                    .map_err(|e: spate_dataplane::idle::UnknownIdleStrategy| bad(&e.to_string()))?
            }
            "taskmanager.memory.ring-size" => {
                self.ring_size = parse_bytes(v)
                    .filter(|n| {
                        n.is_power_of_two()
                            && *n >= 4096
                            && *n <= spate_dataplane::ring::MAX_CAPACITY
                    })
                    .ok_or_else(|| bad("a power of two of at least 4096 bytes, e.g. 1mb"))?
            }
            "taskmanager.ring.peer-timeout" => self.ring_peer_timeout = duration()?,
            "pipeline.auto-watermark-interval" => self.auto_watermark_interval = duration()?,
            "execution.checkpointing.interval" => {
                let d = duration()?;
                // Flink refuses intervals under 10 ms; 0 (or none) turns checkpoints off.
                if !d.is_zero() && d < Duration::from_millis(10) {
                    return Err(bad("a duration of at least 10 ms, or 0 for no checkpoints"));
                }
                self.checkpointing.interval = (!d.is_zero()).then_some(d);
            }
            "execution.checkpointing.timeout" => {
                let d = duration()?;
                if d.is_zero() {
                    return Err(bad("a positive duration"));
                }
                self.checkpointing.timeout = d;
            }
            "execution.checkpointing.min-pause" => self.checkpointing.min_pause = duration()?,
            "execution.checkpointing.max-concurrent-checkpoints" => {
                self.checkpointing.max_concurrent = positive()?
            }
            "execution.checkpointing.tolerable-failed-checkpoints" => {
                self.checkpointing.tolerable_failures =
                    Some(v.parse().map_err(|_| bad("a non-negative integer"))?)
            }
            "execution.checkpointing.mode" => {
                self.checkpointing.exactly_once = match v.to_ascii_uppercase().as_str() {
                    "EXACTLY_ONCE" => true,
                    "AT_LEAST_ONCE" => false,
                    _ => return Err(bad("EXACTLY_ONCE or AT_LEAST_ONCE")),
                }
            }
            "s3.endpoint" => {
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(bad("an http:// or https:// URL"));
                }
                self.s3.endpoint = Some(v.trim_end_matches('/').to_string());
            }
            "s3.access-key" => self.s3.access_key = Some(v.to_string()),
            "s3.secret-key" => self.s3.secret_key = Some(v.to_string()),
            "s3.region" => self.s3.region = Some(v.to_string()),
            "s3.path.style.access" => {
                self.s3.path_style = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "execution.checkpointing.unaligned.enabled" => {
                self.checkpointing.unaligned = match v {
                    "false" => false,
                    "true" => {
                        return Err(bad("false (unaligned checkpoints are not supported yet)"))
                    }
                    _ => return Err(bad("true or false")),
                }
            }
            "state.checkpoints.dir" => {
                let d = v.strip_prefix("file://").unwrap_or(v);
                if d.is_empty() {
                    return Err(bad("a directory path"));
                }
                if d.contains("://") && !d.starts_with(crate::storage::S3_SCHEME) {
                    return Err(bad(
                        "a local or shared filesystem path (file:// or none), or s3://BUCKET/PREFIX",
                    ));
                }
                self.checkpointing.dir = Some(d.into());
            }
            "state.savepoints.dir" => {
                let d = v.strip_prefix("file://").unwrap_or(v);
                let s3 = d.starts_with(crate::storage::S3_SCHEME);
                if d.is_empty() || (d.contains("://") && !s3) || !(s3 || d.starts_with('/')) {
                    return Err(bad(
                        "an absolute local or shared filesystem path, or s3://BUCKET/PREFIX",
                    ));
                }
                self.checkpointing.savepoint_dir = Some(d.into());
            }
            "state.checkpoints.num-retained" => self.checkpointing.num_retained = positive()?,
            "parallelism.default" => self.default_parallelism = positive()?,
            "pipeline.max-parallelism" => {
                let n = positive()?;
                let upper = spate_dataplane::checkpoint::UPPER_MAX_PARALLELISM;
                if n > upper as usize {
                    return Err(bad(&format!("an integer from 1 to {upper}")));
                }
                self.max_parallelism = Some(n as u32);
            }
            "execution.runtime-mode" => {
                self.runtime_mode = v.parse().map_err(|_| bad("STREAMING or BATCH"))?
            }
            "pipeline.operator-chaining.enabled" => {
                self.chaining = match v {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "restart-strategy.type" => {
                self.restart_strategy = match v {
                    "none" | "off" | "disable" => RestartStrategyType::None,
                    "fixed-delay" | "fixeddelay" => RestartStrategyType::FixedDelay,
                    "failure-rate" | "failurerate" => RestartStrategyType::FailureRate,
                    "exponential-delay" | "exponentialdelay" => {
                        RestartStrategyType::ExponentialDelay
                    }
                    _ => return Err(bad("none, fixed-delay, failure-rate or exponential-delay")),
                }
            }
            "restart-strategy.fixed-delay.attempts" => {
                self.restart_attempts = v.parse().map_err(|_| bad("a non-negative integer"))?
            }
            "restart-strategy.fixed-delay.delay" => self.restart_delay = duration()?,
            "restart-strategy.failure-rate.max-failures-per-interval" => {
                self.failure_rate_max_failures =
                    v.parse().map_err(|_| bad("a non-negative integer"))?
            }
            "restart-strategy.failure-rate.failure-rate-interval" => {
                self.failure_rate_interval = duration()?
            }
            "restart-strategy.failure-rate.delay" => self.failure_rate_delay = duration()?,
            "restart-strategy.exponential-delay.initial-backoff" => {
                self.exponential_delay.initial = duration()?
            }
            "restart-strategy.exponential-delay.max-backoff" => {
                self.exponential_delay.max = duration()?
            }
            "restart-strategy.exponential-delay.backoff-multiplier" => {
                self.exponential_delay.multiplier = v
                    .parse::<f64>()
                    .ok()
                    .filter(|m| m.is_finite() && *m >= 1.0)
                    .ok_or_else(|| bad("a number of at least 1.0"))?
            }
            "restart-strategy.exponential-delay.reset-backoff-threshold" => {
                self.exponential_delay.reset_threshold = duration()?
            }
            "restart-strategy.exponential-delay.jitter-factor" => {
                self.exponential_delay.jitter = v
                    .parse::<f64>()
                    .ok()
                    .filter(|j| (0.0..=1.0).contains(j))
                    .ok_or_else(|| bad("a number from 0.0 to 1.0"))?
            }
            "restart-strategy.exponential-delay.attempts-before-reset-backoff" => {
                self.exponential_delay.attempts_before_reset =
                    v.parse().map_err(|_| bad("a non-negative integer"))?
            }
            "jobmanager.execution.failover-strategy" => {
                self.failover_strategy = match v {
                    "full" => FailoverStrategy::Full,
                    "region" => FailoverStrategy::Region,
                    _ => return Err(bad("full or region")),
                }
            }
            "heartbeat.interval" => self.heartbeat_interval = duration()?,
            "heartbeat.timeout" => self.heartbeat_timeout = duration()?,
            "metrics.latency.interval" => self.latency_interval = duration()?,
            "metrics.fetcher.update-interval" => {
                let d = duration()?;
                if d.is_zero() {
                    return Err(bad("a positive duration"));
                }
                self.metrics_update_interval = d;
            }
            "slot.request.timeout" => self.slot_request_timeout = duration()?,
            "security.internal.secret" => {
                self.internal_secret = crate::security::SecretBytes(v.as_bytes().to_vec())
            }
            "security.rest.secret" => {
                self.rest_secret = crate::security::SecretBytes(v.as_bytes().to_vec())
            }
            "security.job.allowed-dirs" => {
                let dirs: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        d.strip_prefix("file://")
                            .unwrap_or(d)
                            .trim_end_matches('/')
                            .to_string()
                    })
                    .collect();
                if dirs.is_empty()
                    || dirs.iter().any(|d| {
                        !(d.starts_with('/') || d.starts_with(crate::storage::S3_SCHEME))
                            || d.split('/').any(|c| c == "..")
                    })
                {
                    return Err(bad("absolute directories (or s3://BUCKET/PREFIX), comma-separated, without '..'"));
                }
                self.job_allowed_dirs = Some(dirs);
            }
            "security.internal.secret-file" | "security.rest.secret-file" => {
                let bytes = crate::security::read_secret_file(Path::new(v))
                    .map_err(|e| bad(&format!("a readable file holding the secret ({e})")))?;
                if bytes.is_empty() {
                    return Err(bad("a file holding a secret (this one is empty)"));
                }
                let s = crate::security::SecretBytes(bytes);
                if key.starts_with("security.internal") {
                    self.internal_secret = s;
                } else {
                    self.rest_secret = s;
                }
            }
            "high-availability.type" => {
                self.ha.etcd = match v.to_ascii_lowercase().as_str() {
                    "none" => false,
                    "etcd" => true,
                    _ => return Err(bad("NONE or etcd")),
                }
            }
            "high-availability.etcd.endpoints" => {
                let eps: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
                if eps.is_empty()
                    || eps.iter().any(|e| {
                        e.starts_with("https://")
                            || e.contains(char::is_whitespace)
                            || !e.trim_start_matches("http://").contains(':')
                    })
                {
                    return Err(bad(
                        "etcd client addresses such as 'http://10.0.0.1:2379,10.0.0.2:2379' \
                         (host:port, plain HTTP)",
                    ));
                }
                self.ha.endpoints = eps;
            }
            "high-availability.cluster-id" => {
                let id = v.trim_matches('/');
                if id.is_empty()
                    || !id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(bad("a name of letters, digits, '-', '_' and '.'"));
                }
                self.ha.cluster_id = id.into();
            }
            "high-availability.storageDir" => {
                let d = v.strip_prefix("file://").unwrap_or(v);
                let s3 = d.starts_with(crate::storage::S3_SCHEME);
                if d.is_empty() || (d.contains("://") && !s3) || !(s3 || d.starts_with('/')) {
                    return Err(bad(
                        "an absolute path on a filesystem every JobManager shares, or s3://BUCKET/PREFIX",
                    ));
                }
                self.ha.storage_dir = Some(d.into());
            }
            "high-availability.etcd.lease-duration" => {
                let d = duration()?;
                if d < Duration::from_secs(2) {
                    return Err(bad("at least 2 s (etcd's leases take whole seconds)"));
                }
                self.ha.lease_duration = Duration::from_secs(d.as_secs_f64().ceil() as u64);
            }
            "task.cancellation.timeout" => self.task_cancellation_timeout = duration()?,
            k if FLINK_KEYS_IGNORED.contains(&k) => self.ignore(k, origin),
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.into(),
                    key: key.into(),
                })
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn high_availability_keys_parse_and_bad_values_are_named() {
        let mut c = Config::default();
        for (k, v) in [
            ("high-availability.type", "etcd"),
            (
                "high-availability.etcd.endpoints",
                "http://10.0.0.1:2379, 10.0.0.2:2379",
            ),
            ("high-availability.cluster-id", "/prod-1"),
            ("high-availability.storageDir", "file:///shared/ha"),
            ("high-availability.etcd.lease-duration", "2500 ms"),
        ] {
            c.set(k, v, "-D").unwrap();
        }
        assert!(c.ha.etcd);
        assert_eq!(c.ha.endpoints, ["http://10.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(c.ha.cluster_id, "prod-1");
        assert_eq!(c.ha.storage_dir.as_deref(), Some(Path::new("/shared/ha")));
        assert_eq!(c.ha.lease_duration, Duration::from_secs(3), "whole seconds");
        c.set("high-availability.type", "NONE", "-D").unwrap();
        assert!(!c.ha.etcd);
        for (k, v) in [
            ("high-availability.type", "zookeeper"),
            ("high-availability.etcd.endpoints", "https://10.0.0.1:2379"),
            ("high-availability.etcd.endpoints", "etcd-without-port"),
            ("high-availability.etcd.endpoints", " , "),
            ("high-availability.cluster-id", "a/b"),
            ("high-availability.storageDir", "relative/dir"),
            ("high-availability.etcd.lease-duration", "1 s"),
        ] {
            let e = c.set(k, v, "-D").unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(v.trim()), "{e}");
        }
    }

    #[test]
    fn secrets_are_read_inline_or_from_files_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("spate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("s");
        std::fs::write(&file, "from a file\n").unwrap();
        let mut c = Config::default();
        c.set("security.rest.secret", "inline", "-D").unwrap();
        c.set(
            "security.internal.secret-file",
            &file.display().to_string(),
            "-D",
        )
        .unwrap();
        assert_eq!(c.rest_secret.0, b"inline");
        assert_eq!(c.internal_secret.0, b"from a file");
        assert!(!format!("{c:?}").contains("inline"));
        assert!(c
            .shown()
            .iter()
            .all(|(k, v)| !k.contains("secret") || v == "******"));
        let e = c
            .set("security.rest.secret-file", "/no/such/file", "-D")
            .unwrap_err()
            .to_string();
        assert!(e.contains("security.rest.secret-file"), "{e}");
        std::fs::write(&file, "\n").unwrap();
        assert!(c
            .set(
                "security.internal.secret-file",
                &file.display().to_string(),
                "-D"
            )
            .is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_shipped_config_parses() {
        let text = include_str!("../../conf/config.yaml");
        let cfg = Config::from_yaml(text, "conf/config.yaml").unwrap();
        assert_eq!(cfg.slots, 2);
        assert_eq!(cfg.idle, IdleStrategyKind::Backoff);
        assert_eq!(cfg.heartbeat_timeout, Duration::from_secs(50));
    }

    /// Flink 2's stock `config.yaml` (nested keys), as a Flink user brings it.
    #[test]
    fn flinks_stock_configuration_loads_with_warnings_for_what_spate_does_not_use() {
        let flink = r#"
env:
  java:
    opts:
      all: --add-exports=java.base/sun.net.util=ALL-UNNAMED
jobmanager:
  bind-host: localhost
  rpc:
    address: localhost
    port: 6123
  memory:
    process:
      size: 1600m
  execution:
    failover-strategy: region
taskmanager:
  bind-host: localhost
  host: localhost
  numberOfTaskSlots: 1
  memory:
    process:
      size: 1728m
parallelism:
  default: 1
rest:
  address: localhost
  bind-address: localhost
"#;
        let cfg = Config::from_yaml(flink, "config.yaml").unwrap();
        assert_eq!(cfg.jobmanager_port, 6123);
        assert_eq!(cfg.slots, 1);
        let ignored: Vec<&str> = cfg
            .ignored_keys
            .iter()
            .map(|k| k.trim_start_matches("config.yaml: "))
            .collect();
        assert_eq!(
            ignored,
            [
                "env.java.opts.all",
                "jobmanager.bind-host",
                "jobmanager.memory.process.size",
                "taskmanager.bind-host",
                "taskmanager.memory.process.size",
                "rest.address",
                "rest.bind-address"
            ]
        );
        // As -D overrides too; a key neither spate's nor Flink's is still an error.
        let mut cfg = Config::default();
        cfg.apply_overrides(&["taskmanager.memory.process.size=2g".into()])
            .unwrap();
        assert_eq!(cfg.ignored_keys.len(), 1);
        assert!(cfg
            .apply_overrides(&["taskmanager.memory.procss.size=2g".into()])
            .is_err());
    }

    #[test]
    fn nested_and_flat_keys_and_overrides() {
        let mut cfg = Config::from_yaml(
            "taskmanager:\n  numberOfTaskSlots: 4\n  cpu.cores: [0, 1]\nparallelism.default: 2\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            (cfg.slots, cfg.cores.clone(), cfg.default_parallelism),
            (4, vec![0, 1], 2)
        );
        cfg.apply_overrides(&[
            "taskmanager.idle-strategy=busy-spin".into(),
            "taskmanager.cpu.cores=[1]".into(),
            "taskmanager.memory.ring-size=64kb".into(),
        ])
        .unwrap();
        assert_eq!(cfg.idle, IdleStrategyKind::BusySpin);
        assert_eq!(cfg.cores, vec![1]);
        assert_eq!(cfg.ring_size, 65536);
        assert_eq!(cfg.metrics_update_interval, Duration::from_secs(1));
        cfg.apply_overrides(&["metrics.fetcher.update-interval=250 ms".into()])
            .unwrap();
        assert_eq!(cfg.metrics_update_interval, Duration::from_millis(250));
        let e = cfg
            .apply_overrides(&["metrics.fetcher.update-interval=0 s".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("metrics.fetcher.update-interval"), "{e}");
    }

    #[test]
    fn network_keys() {
        let mut cfg = Config::default();
        cfg.apply_overrides(&[
            "taskmanager.data.port=7100".into(),
            "taskmanager.network.transport=epoll".into(),
            "taskmanager.network.agent=shared".into(),
            "taskmanager.network.agent-core=1".into(),
            "taskmanager.network.idle-strategy=park".into(),
            "taskmanager.network.io-uring.sqpoll=10 ms".into(),
            "taskmanager.network.io-uring.multishot=false".into(),
            "taskmanager.network.same-host=tcp".into(),
        ])
        .unwrap();
        assert_eq!(cfg.data_port, 7100);
        assert_eq!(cfg.transport, spate_dataplane::net::TransportKind::Epoll);
        assert_eq!(cfg.agent, AgentMode::Shared);
        assert_eq!(cfg.agent_core, AgentCore::Core(1));
        assert_eq!(cfg.uring.sqpoll_idle_ms, Some(10));
        assert!(!cfg.uring.multishot);
        assert!(cfg.same_host_tcp);
        for bad in [
            "taskmanager.network.transport=dpdk",
            "taskmanager.network.agent=elsewhere",
            "taskmanager.network.agent-core=first",
            "taskmanager.network.io-uring.sqpoll=sometimes",
            "taskmanager.network.same-host=pipe",
            "taskmanager.data.port=70000",
        ] {
            let e = Config::default()
                .apply_overrides(&[bad.into()])
                .unwrap_err()
                .to_string();
            let key = bad.split('=').next().unwrap();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_value() {
        let e =
            Config::from_yaml("taskmanager.numberOfSlots: 2\n", "conf/config.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            "conf/config.yaml: unknown configuration key 'taskmanager.numberOfSlots'"
        );
        let e = Config::from_yaml("parallelism.default: zero\n", "f").unwrap_err();
        assert!(
            e.to_string().contains("'zero' for 'parallelism.default'"),
            "{e}"
        );
        let e = Config::from_yaml("rest.port: 99999\n", "f").unwrap_err();
        assert!(e.to_string().contains("rest.port"), "{e}");
        let e = Config::from_yaml("a: [", "f").unwrap_err();
        assert!(e.to_string().contains("not valid YAML"), "{e}");
        let mut c = Config::default();
        assert!(matches!(
            c.apply_overrides(&["parallelism.default".into()]),
            Err(ConfigError::BadOverride(_))
        ));
        let e = c
            .apply_overrides(&["taskmanager.idle-strategy=spinny".into()])
            .unwrap_err();
        assert!(e.to_string().contains("spinny"), "{e}");
        let e = c
            .apply_overrides(&["taskmanager.memory.ring-size=1000".into()])
            .unwrap_err();
        assert!(e.to_string().contains("power of two"), "{e}");
        let e = c
            .apply_overrides(&["heartbeat.timeout=soon".into()])
            .unwrap_err();
        assert!(e.to_string().contains("heartbeat.timeout"), "{e}");
    }
}
