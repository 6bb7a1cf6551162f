//! High availability (`high-availability.type: etcd`): JobManagers elect a leader
//! through an etcd lease; the leader keeps the submitted jobs and each job's latest
//! completed checkpoint there; TaskManagers and clients find the leader there.
//!
//! etcd is spoken to through its HTTP/JSON gateway (`/v3/...`, served on the client
//! port by every etcd since 3.4), so that the control plane needs no gRPC stack.
//!
//! Keys, under `/spate/<cluster-id>/`:
//! - `leader`: the leader's record (JSON), attached to its lease. Its create revision is
//!   the leader's **fencing token**: it grows with every election, TaskManagers register
//!   only with the JobManager whose token the key carries now, and every write the
//!   leader makes to the job store is a transaction that holds only while the key still
//!   has that revision, so a deposed leader cannot change what a new one recovers.
//! - `jobgraphs/<job-id>`: where the job's submission is stored (in
//!   `high-availability.storageDir`), and how often it was recovered.
//! - `checkpoints/<job-id>`: the path of its latest completed checkpoint.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What can go wrong talking to etcd or the job store.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// No endpoint answered.
    #[error("cannot reach etcd at {endpoints}: {message}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// The last error.
        message: String,
    },
    /// etcd answered with an error, or with something that is not etcd's JSON.
    #[error("etcd answered: {0}")]
    Answer(String),
    /// The job store's files.
    #[error("the job store at {path}: {message}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// A write was refused because this JobManager no longer holds the leader key.
    #[error("this JobManager is no longer the leader")]
    NotLeader,
}

/// One key-value pair as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: i64,
    /// The lease it is attached to (0: none).
    pub lease: i64,
}

/// A write in a fenced transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put a value.
    Put(String, Vec<u8>),
    /// Delete a key.
    Delete(String),
}

/// An etcd client over the v3 JSON gateway, trying its endpoints in turn.
#[derive(Debug)]
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last (tried first next time).
    current: AtomicUsize,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Result<Vec<u8>, HaError> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .map_err(|e| HaError::Answer(format!("bad base64 from etcd: {e}")))
}

/// etcd's JSON carries 64-bit integers as strings and leaves out zeros.
fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// A client for these endpoints (`host:port` or `http://host:port`); each request
    /// gives up on an endpoint after `timeout`.
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        Self {
            endpoints: endpoints
                .iter()
                .map(|e| {
                    let e = e.trim_end_matches('/');
                    if e.starts_with("http://") {
                        e.to_string()
                    } else {
                        format!("http://{e}")
                    }
                })
                .collect(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout(timeout)
                .build(),
            current: AtomicUsize::new(0),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, HaError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoints configured");
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_json(body.clone()) {
                Ok(resp) => {
                    self.current.store(at, Ordering::Relaxed);
                    return resp
                        .into_json()
                        .map_err(|e| HaError::Answer(format!("{url}: not JSON: {e}")));
                }
                // A member without a quorum or shutting down: another may serve.
                Err(ureq::Error::Status(code, resp)) if code >= 500 => {
                    last = format!("{url}: {code} {}", resp.into_string().unwrap_or_default());
                }
                Err(ureq::Error::Status(code, resp)) => {
                    return Err(HaError::Answer(format!(
                        "{url}: {code} {}",
                        resp.into_string().unwrap_or_default()
                    )))
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(HaError::Unreachable {
            endpoints: self.endpoints.join(","),
            message: last,
        })
    }

    fn kvs(v: &Value) -> Result<Vec<Kv>, HaError> {
        let Some(kvs) = v["kvs"].as_array() else {
            return Ok(Vec::new());
        };
        kvs.iter()
            .map(|kv| {
                Ok(Kv {
                    key: String::from_utf8_lossy(&unb64(&kv["key"])?).into_owned(),
                    value: unb64(&kv["value"])?,
                    create_revision: int(&kv["create_revision"]),
                    lease: int(&kv["lease"]),
                })
            })
            .collect()
    }

    /// A lease of `ttl` whole seconds; its id.
    pub fn grant(&self, ttl: Duration) -> Result<i64, HaError> {
        let v = self.post("/v3/lease/grant", &json!({ "TTL": ttl.as_secs().max(1) }))?;
        match int(&v["ID"]) {
            0 => Err(HaError::Answer(format!("no lease granted: {v}"))),
            id => Ok(id),
        }
    }

    /// Renews a lease; the seconds it has left (0: it has expired).
    pub fn keep_alive(&self, lease: i64) -> Result<i64, HaError> {
        let v = self.post("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        Ok(int(&v["result"]["TTL"]))
    }

    /// Revokes a lease (its keys go with it).
    pub fn revoke(&self, lease: i64) -> Result<(), HaError> {
        self.post("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .map(|_| ())
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, HaError> {
        let v = self.post("/v3/kv/range", &json!({ "key": b64(key.as_bytes()) }))?;
        Ok(Self::kvs(&v)?.into_iter().next())
    }

    /// Every key under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>, HaError> {
        let v = self.post(
            "/v3/kv/range",
            &json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix)) }),
        )?;
        Self::kvs(&v)
    }

    /// Creates `key` with `value` on `lease` unless it exists: the create revision, or
    /// `None` when another holds it.
    pub fn create(&self, key: &str, value: &[u8], lease: i64) -> Result<Option<i64>, HaError> {
        let k = b64(key.as_bytes());
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0" }],
                "success": [{ "request_put": { "key": k, "value": b64(value), "lease": lease.to_string() } }],
            }),
        )?;
        Ok((v["succeeded"] == true).then(|| int(&v["header"]["revision"])))
    }

    /// Deletes `key` if it is still the one created at `revision`.
    pub fn delete_if_created_at(&self, key: &str, revision: i64) -> Result<bool, HaError> {
        let k = b64(key.as_bytes());
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{ "key": k, "result": "EQUAL", "target": "CREATE", "create_revision": revision.to_string() }],
                "success": [{ "request_delete_range": { "key": k } }],
            }),
        )?;
        Ok(v["succeeded"] == true)
    }

    /// Applies `ops` only while `leader_key` still has create revision `token` (the
    /// writer still leads): false when it does not.
    pub fn fenced(&self, leader_key: &str, token: u64, ops: &[Op]) -> Result<bool, HaError> {
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => {
                    json!({ "request_put": { "key": b64(k.as_bytes()), "value": b64(v) } })
                }
                Op::Delete(k) => json!({ "request_delete_range": { "key": b64(k.as_bytes()) } }),
            })
            .collect();
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{
                    "key": b64(leader_key.as_bytes()),
                    "result": "EQUAL",
                    "target": "CREATE",
                    "create_revision": token.to_string(),
                }],
                "success": success,
            }),
        )?;
        Ok(v["succeeded"] == true)
    }
}

/// The leader as it publishes itself under the `leader` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// Its session id (`/jobmanager` shows the same).
    pub id: String,
    /// Its RPC address (`host:port`), where TaskManagers register.
    pub rpc: String,
    /// Its REST address (`host:port`).
    pub rest: String,
    /// Its fencing token (the key's create revision; not stored in the value).
    #[serde(skip)]
    pub token: u64,
}

/// The cluster's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    /// The keys of cluster `cluster_id`.
    pub fn new(cluster_id: &str) -> Self {
        Self {
            root: format!("/spate/{cluster_id}/"),
        }
    }

    /// The leader's record.
    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// Where submitted jobs are listed.
    pub fn jobgraphs(&self) -> String {
        format!("{}jobgraphs/", self.root)
    }

    /// A job's latest completed checkpoint.
    pub fn checkpoint(&self, job: &str) -> String {
        format!("{}checkpoints/{job}", self.root)
    }
}

fn read_leader(etcd: &Etcd, keys: &Keys) -> Result<Option<LeaderRecord>, HaError> {
    let Some(kv) = etcd.get(&keys.leader())? else {
        return Ok(None);
    };
    if kv.lease == 0 {
        // Every leader writes the key on its lease: one without is not a leader's
        // (written by hand, or by another program) and would block every election for
        // good. Removed, unless a leader took the key meanwhile.
        tracing::warn!(key = %kv.key, "the leader key has no lease: not a leader's; removing it");
        etcd.delete_if_created_at(&kv.key, kv.create_revision)?;
        return Ok(None);
    }
    let mut rec: LeaderRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| HaError::Answer(format!("the leader key holds no leader record: {e}")))?;
    rec.token = u64::try_from(kv.create_revision).unwrap_or(0);
    Ok(Some(rec))
}

/// Finds the current leader once (for clients).
pub fn current_leader(cfg: &crate::config::HaConfig) -> Result<LeaderRecord, HaError> {
    let etcd = Etcd::new(&cfg.endpoints, Duration::from_secs(5));
    read_leader(&etcd, &Keys::new(&cfg.cluster_id))?.ok_or_else(|| {
        HaError::Answer(format!(
            "no JobManager leads cluster '{}' now (no leader key)",
            cfg.cluster_id
        ))
    })
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Follows the leader key on a thread of its own (TaskManagers): the last leader it
/// read, kept while etcd cannot be reached.
#[derive(Debug)]
pub struct LeaderRetrieval {
    leader: Arc<Mutex<Option<LeaderRecord>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LeaderRetrieval {
    /// Starts following cluster `cfg.cluster_id`'s leader, reading it every `every`.
    pub fn start(cfg: &crate::config::HaConfig, every: Duration) -> std::io::Result<Self> {
        let etcd = Etcd::new(&cfg.endpoints, every.max(Duration::from_millis(500)));
        let keys = Keys::new(&cfg.cluster_id);
        let leader = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (leader.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("leader-retrieval".into())
            .spawn(move || {
                let mut warned = false;
                while !s.load(Ordering::Relaxed) {
                    match read_leader(&etcd, &keys) {
                        Ok(rec) => {
                            warned = false;
                            *locked(&l) = rec;
                        }
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(error = %e, "cannot read the leader from etcd; keeping the last one read");
                        }
                        Err(_) => {}
                    }
                    sleep_unless(&s, every);
                }
            })?;
        Ok(Self {
            leader,
            stop,
            thread: Some(thread),
        })
    }

    /// The leader, as last read.
    pub fn leader(&self) -> Option<LeaderRecord> {
        locked(&self.leader).clone()
    }
}

impl Drop for LeaderRetrieval {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Default)]
struct ElectionState {
    /// The fencing token while leading (0: not leading).
    token: u64,
    /// Until when leading holds by the local clock: the last renewal's send time plus
    /// the lease, less a margin. etcd cannot let the lease lapse before then (it
    /// counts from when the renewal arrived, which is later), so a leader that trusts
    /// this deadline stops before a standby can be elected, even after a pause.
    valid_until: Option<Instant>,
    /// Its lease.
    lease: i64,
    /// The leader as last read (this JobManager's own record while it leads).
    leader: Option<LeaderRecord>,
    /// A fenced write failed: give leadership up at the next round.
    resign: bool,
}

/// A JobManager's part in the leader election, run on a thread of its own.
#[derive(Debug)]
pub struct LeaderElection {
    state: Arc<Mutex<ElectionState>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    etcd: Arc<Etcd>,
    keys: Keys,
}

impl LeaderElection {
    /// Joins the election of cluster `cfg.cluster_id` as `me`.
    pub fn start(cfg: &crate::config::HaConfig, me: LeaderRecord) -> std::io::Result<Self> {
        let ttl = cfg.lease_duration;
        let round = ttl / 4;
        let etcd = Arc::new(Etcd::new(
            &cfg.endpoints,
            round.max(Duration::from_millis(200)),
        ));
        let keys = Keys::new(&cfg.cluster_id);
        let state = Arc::new(Mutex::new(ElectionState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, s, e, k) = (state.clone(), stop.clone(), etcd.clone(), keys.clone());
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name("leader-election".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    elect_round(&e, &k, &st, &value, ttl);
                    sleep_unless(&s, round);
                }
                // A clean shutdown hands leadership on at once.
                let lease = std::mem::take(&mut locked(&st).lease);
                if lease != 0 {
                    let _ = e.revoke(lease);
                }
            })?;
        // The JobManager's own calls (the job store) come from its event loop: each
        // endpoint gets at most a second, so that an unreachable etcd stalls heartbeats
        // for less than their timeout.
        let store = Arc::new(Etcd::new(
            &cfg.endpoints,
            round.clamp(Duration::from_millis(200), Duration::from_secs(1)),
        ));
        Ok(Self {
            state,
            stop,
            thread: Some(thread),
            etcd: store,
            keys,
        })
    }

    /// The fencing token while this JobManager leads (by the local clock).
    pub fn leading(&self) -> Option<u64> {
        let st = locked(&self.state);
        (st.token != 0 && !st.resign && st.valid_until.is_some_and(|t| Instant::now() < t))
            .then_some(st.token)
    }

    /// The leader as last read.
    pub fn leader(&self) -> Option<LeaderRecord> {
        locked(&self.state).leader.clone()
    }

    /// The cluster's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Applies `ops` if this JobManager still leads with `token`; a refusal makes it
    /// give leadership up.
    pub fn write(&self, token: u64, ops: &[Op]) -> Result<(), HaError> {
        if self.leading() != Some(token) {
            return Err(HaError::NotLeader);
        }
        if self.etcd.fenced(&self.keys.leader(), token, ops)? {
            Ok(())
        } else {
            locked(&self.state).resign = true;
            Err(HaError::NotLeader)
        }
    }

    /// Gives leadership up (at the next round): the job store could not be read.
    pub fn resign(&self) {
        locked(&self.state).resign = true;
    }

    /// Every key under `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<Kv>, HaError> {
        self.etcd.list(prefix)
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<Kv>, HaError> {
        self.etcd.get(key)
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One round: a leader renews its lease (or finds it gone); a standby reads the
/// leader and, when there is none, tries to become it.
fn elect_round(etcd: &Etcd, keys: &Keys, st: &Mutex<ElectionState>, me: &[u8], ttl: Duration) {
    let margin = ttl / 8;
    let (token, lease, resign) = {
        let s = locked(st);
        (s.token, s.lease, s.resign)
    };
    if token != 0 {
        let sent = Instant::now();
        let renewed = if resign {
            Ok(0)
        } else {
            etcd.keep_alive(lease)
        };
        let mut s = locked(st);
        match renewed {
            Ok(left) if left > 0 => {
                s.valid_until = Some(sent + ttl - margin);
                return;
            }
            Ok(_) => {
                tracing::error!(token, "leadership lost: the lease expired or was given up");
            }
            Err(e) if s.valid_until.is_some_and(|t| Instant::now() < t) => {
                tracing::warn!(error = %e, "cannot renew the leader's lease; retrying");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, token, "leadership lost: the lease could not be renewed in time");
            }
        }
        *s = ElectionState::default();
        drop(s);
        // Best effort: the key goes with the lease, so a standby need not wait for it.
        let _ = etcd.revoke(lease);
        return;
    }
    match read_leader(etcd, keys) {
        Ok(Some(rec)) => {
            locked(st).leader = Some(rec);
            return;
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the leader from etcd");
            return;
        }
    }
    let sent = Instant::now();
    let lease = match etcd.grant(ttl) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot take a lease from etcd");
            return;
        }
    };
    match etcd.create(&keys.leader(), me, lease) {
        Ok(Some(rev)) => {
            let token = u64::try_from(rev).unwrap_or(0);
            let mut rec: Option<LeaderRecord> = serde_json::from_slice(me).ok();
            if let Some(r) = rec.as_mut() {
                r.token = token;
            }
            tracing::info!(token, "this JobManager now leads the cluster");
            *locked(st) = ElectionState {
                token,
                valid_until: Some(sent + ttl - margin),
                lease,
                leader: rec,
                resign: false,
            };
        }
        Ok(None) => {
            let _ = etcd.revoke(lease);
        }
        Err(e) => {
            let _ = etcd.revoke(lease);
            tracing::warn!(error = %e, "cannot contend for leadership");
        }
    }
}

/// A submitted job as the job store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredJob {
    /// Where its submission (the job spec, JSON) is written.
    pub path: String,
    /// How often a new leader recovered it.
    pub recoveries: u32,
}

/// Where job `id`'s submission goes under the storage directory.
pub fn job_file(storage_dir: &Path, cluster_id: &str, id: &str) -> PathBuf {
    storage_dir
        .join(cluster_id)
        .join("jobgraphs")
        .join(format!("{id}.json"))
}

/// Writes a submission to the storage directory.
pub fn write_job(path: &Path, spec: &crate::jobs::JobSpec) -> Result<(), HaError> {
    let store = |e: String| HaError::Store {
        path: path.display().to_string(),
        message: e,
    };
    let bytes = serde_json::to_vec(spec).map_err(|e| store(e.to_string()))?;
    if let Some(dir) = path.parent() {
        crate::storage::create_dir_all(dir).map_err(|e| store(e.to_string()))?;
    }
    crate::storage::write_atomic(path, &bytes).map_err(|e| store(e.to_string()))
}

/// Reads a submission back.
pub fn read_job(path: &Path) -> Result<crate::jobs::JobSpec, HaError> {
    let store = |e: String| HaError::Store {
        path: path.display().to_string(),
        message: e,
    };
    let bytes = crate::storage::read(path).map_err(|e| store(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| store(format!("not a stored job: {e}")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn etcd_integers_and_prefix_ranges() {
        assert_eq!(int(&json!("42")), 42);
        assert_eq!(int(&json!(7)), 7);
        assert_eq!(int(&Value::Null), 0);
        assert_eq!(int(&json!("x")), 0);
        assert_eq!(prefix_end("/spate/a/"), b"/spate/a0".to_vec());
        assert_eq!(prefix_end("\u{7f}"), vec![0x80]);
        let k = Keys::new("c1");
        assert_eq!(k.leader(), "/spate/c1/leader");
        assert_eq!(k.checkpoint("j"), "/spate/c1/checkpoints/j");
        assert!(k.jobgraphs().starts_with("/spate/c1/"));
    }

    #[test]
    fn an_unreachable_etcd_is_a_typed_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let etcd = Etcd::new(&[format!("127.0.0.1:{port}")], Duration::from_millis(300));
        match etcd.get("/x") {
            Err(HaError::Unreachable { endpoints, .. }) => assert!(endpoints.contains("http://")),
            other => panic!("{other:?}"),
        }
    }
}
