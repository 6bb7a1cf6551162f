//! The Dispatcher: takes submissions (REST and CLI), builds their job graphs off the
//! event loop, admits them as jobs with a JobMaster each, answers REST commands, and
//! keeps the job store that a new leader recovers jobs from (with high availability).
//!
//! Its interface: [`JobManager::on_command`] (what REST sends), [`JobManager::admit`],
//! and the job store: [`JobManager::recover_jobs`], [`JobManager::store_job`],
//! [`JobManager::store_checkpoint`], [`JobManager::unstore_job`].

use super::*;

/// Ended jobs kept for the REST API.
pub const MAX_ENDED_JOBS: usize = 100;

/// What the REST server asks of the JobManager thread.
#[derive(Debug)]
pub enum JmCommand {
    /// Submit a job; the reply is its id or (HTTP status, message).
    Submit(
        Box<JobSpec>,
        tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ),
    /// Cancel a job.
    Cancel(
        String,
        tokio::sync::oneshot::Sender<Result<(), (u16, String)>>,
    ),
    /// Trigger a savepoint; the reply is the request's id.
    Savepoint(
        SavepointRequest,
        tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ),
    /// A submission whose job graph was built off the event loop (sent by the
    /// JobManager's builder threads to itself).
    Built(Box<BuiltSubmission>),
}

/// A job's graph (and the checkpoint it resumes from), built on a thread of its own:
/// the builder is user code, whose slowness must not stall the JobManager's event loop
/// (heartbeats, other jobs, REST answers).
pub struct BuiltSubmission {
    pub(super) spec: JobSpec,
    pub(super) config: Config,
    pub(super) recovery: Option<Recovery>,
    pub(super) built:
        Result<(JobGraph, Option<crate::checkpoint::CompletedCheckpoint>), (u16, String)>,
    pub(super) reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
}

impl std::fmt::Debug for BuiltSubmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltSubmission")
            .field("job", &self.spec.job)
            .field("ok", &self.built.is_ok())
            .finish()
    }
}

/// A job a new leader recovers from the job store: its id stays, and its deployments
/// count on from `attempt` (above any its old leader can have made, so that no ring
/// of those is taken for one of these).
#[derive(Debug, Clone)]
pub(super) struct Recovery {
    pub(super) id: String,
    pub(super) attempt: u32,
    /// The leader term (fencing token) that recovers it: a build that completes in a
    /// later term is dropped (that term recovers the job itself).
    pub(super) token: u64,
}

/// Builds a submitted job's graph and reads the checkpoint it resumes from (on a
/// builder thread).
pub(super) fn build_submission(
    spec: &JobSpec,
    jc: &Config,
) -> Result<(JobGraph, Option<crate::checkpoint::CompletedCheckpoint>), (u16, String)> {
    let graph = spec
        .job_graph(jc.default_parallelism, jc.chaining)
        .map_err(|e| (400, e))?;
    let restore = match &spec.savepoint_path {
        Some(path) => {
            crate::security::check_job_path(std::path::Path::new(path), "the savepoint")
                .map_err(|e| (400, e))?;
            let cp = crate::checkpoint::read_checkpoint(std::path::Path::new(path))
                .map_err(|e| (400, e.to_string()))?;
            cp.check_compatible(&graph)
                .map_err(|e| (400, e.to_string()))?;
            Some(cp)
        }
        None => None,
    };
    Ok((graph, restore))
}

/// A savepoint asked for (REST `POST /jobs/:id/savepoints` or `/stop`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavepointRequest {
    /// The job.
    pub job_id: String,
    /// Where it goes (`None`: `state.savepoints.dir`).
    pub target: Option<String>,
    /// Once it completed, the job ends in this state (FINISHED for a stop, CANCELED
    /// for a cancel with a savepoint); `None`: it runs on.
    pub then: Option<JobState>,
}

impl JobManager {
    /// A new leader takes the stored jobs up again, each from its latest completed
    /// checkpoint.
    pub(super) fn recover_jobs(&mut self, token: u64) {
        let Some(ha) = &self.ha else { return };
        let stored = match ha.list(&ha.keys().jobgraphs()) {
            Ok(kvs) => kvs,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the job store; giving leadership up");
                ha.resign();
                return;
            }
        };
        let mut recovered = Vec::new();
        for kv in stored {
            let id = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            let entry: crate::ha::StoredJob = match serde_json::from_slice(&kv.value) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "a malformed job store entry; skipped");
                    continue;
                }
            };
            let mut spec = match crate::ha::read_job(std::path::Path::new(&entry.path)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "cannot read a stored job; skipped");
                    continue;
                }
            };
            let pointer = match ha.get(&ha.keys().checkpoint(&id)) {
                Ok(kv) => kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the job store; giving leadership up");
                    ha.resign();
                    return;
                }
            };
            let Some(recoveries) = entry.recoveries.checked_add(1).filter(|r| *r < 1 << 16) else {
                tracing::error!(job = %id, recoveries = entry.recoveries, "a job store entry recovered too often; skipped");
                continue;
            };
            let next = crate::ha::StoredJob {
                path: entry.path.clone(),
                recoveries,
            };
            let put = crate::ha::Op::Put(
                kv.key.clone(),
                serde_json::to_vec(&next).unwrap_or_default(),
            );
            if let Err(e) = ha.write(token, &[put]) {
                tracing::error!(error = %e, "cannot update the job store; giving leadership up");
                ha.resign();
                return;
            }
            if let Some(p) = pointer {
                tracing::info!(job = %id, checkpoint = %p, "recovering the job from its latest completed checkpoint");
                spec.savepoint_path = Some(p);
            } else {
                tracing::info!(job = %id, "recovering the job (no completed checkpoint: from its start)");
            }
            // 65 536 deployments per leader before attempts could meet an older one's.
            let attempt = next.recoveries.saturating_mul(1 << 16);
            recovered.push((spec, Recovery { id, attempt, token }));
        }
        for (spec, recovery) in recovered {
            let (reply, _) = tokio::sync::oneshot::channel();
            self.submit_as(spec, reply, Some(recovery));
        }
    }

    /// Stores a submitted job (with high availability) before it is deployed: its
    /// spec in the storage directory, a pointer in etcd.
    pub(super) fn store_job(&self, id: &str, spec: &JobSpec) -> Result<(), (u16, String)> {
        let (Some(ha), Some(token), Some(dir)) =
            (&self.ha, self.leading, &self.config.ha.storage_dir)
        else {
            return Ok(());
        };
        let path = crate::ha::job_file(dir, &self.config.ha.cluster_id, id);
        let unavailable =
            |e: crate::ha::HaError| (503, format!("cannot store the job for recovery: {e}"));
        crate::ha::write_job(&path, spec).map_err(unavailable)?;
        let entry = crate::ha::StoredJob {
            path: path.display().to_string(),
            recoveries: 0,
        };
        let key = format!("{}{id}", ha.keys().jobgraphs());
        ha.write(
            token,
            &[crate::ha::Op::Put(
                key,
                serde_json::to_vec(&entry).unwrap_or_default(),
            )],
        )
        .map_err(unavailable)
    }

    /// Records a job's latest completed checkpoint in etcd (with high availability);
    /// false when it could not be: its sinks must not commit what a new leader would
    /// not restore.
    pub(super) fn store_checkpoint(&self, id: &str, path: &std::path::Path) -> bool {
        let (Some(ha), Some(token)) = (&self.ha, self.leading) else {
            return true;
        };
        let put = crate::ha::Op::Put(
            ha.keys().checkpoint(id),
            path.display().to_string().into_bytes(),
        );
        match ha.write(token, &[put]) {
            Ok(()) => true,
            Err(e) => {
                // The sinks must not commit it, and no restart of ours may restore it
                // (a later leader would restore an older one): give leadership up.
                tracing::error!(job = %id, error = %e, "cannot record the completed checkpoint in etcd; its sinks do not commit, and this JobManager gives leadership up");
                ha.resign();
                false
            }
        }
    }

    /// Removes an ended job from the job store (with high availability).
    pub(super) fn unstore_job(&self, id: &str) {
        let (Some(ha), Some(token), Some(dir)) =
            (&self.ha, self.leading, &self.config.ha.storage_dir)
        else {
            return;
        };
        let ops = [
            crate::ha::Op::Delete(format!("{}{id}", ha.keys().jobgraphs())),
            crate::ha::Op::Delete(ha.keys().checkpoint(id)),
        ];
        match ha.write(token, &ops) {
            Ok(()) => {
                let path = crate::ha::job_file(dir, &self.config.ha.cluster_id, id);
                if let Err(e) = crate::storage::remove_file(&path) {
                    tracing::warn!(job = %id, path = %path.display(), error = %e, "cannot remove the ended job's stored submission");
                }
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "cannot remove the ended job from the job store; retrying");
                lock(&self.state).unstore_pending.push(id.to_string());
            }
        }
    }

    /// Retries removing ended jobs from the job store (at most once a second).
    pub(super) fn retry_unstore(&mut self) {
        if self.next_unstore_retry > Instant::now() {
            return;
        }
        self.next_unstore_retry = Instant::now() + Duration::from_secs(1);
        let pending = std::mem::take(&mut lock(&self.state).unstore_pending);
        for id in pending {
            self.unstore_job(&id);
        }
    }

    pub(super) fn on_command(&mut self, cmd: JmCommand) {
        match cmd {
            JmCommand::Submit(spec, reply) => self.submit(*spec, reply),
            JmCommand::Built(b) => {
                let BuiltSubmission {
                    spec,
                    config,
                    recovery,
                    built,
                    reply,
                } = *b;
                if recovery
                    .as_ref()
                    .is_some_and(|r| Some(r.token) != self.leading)
                {
                    // Built for an earlier term of leadership: that term is over.
                    return;
                }
                let recovered = recovery.as_ref().map(|r| r.id.clone());
                let result = built.and_then(|(graph, restore)| {
                    self.admit(spec, &config, graph, restore, recovery)
                });
                if let (Some(id), Err((_, why))) = (recovered, &result) {
                    tracing::error!(job = %id, %why, "cannot recover the job; it stays in the job store");
                }
                let _ = reply.send(result);
            }
            JmCommand::Cancel(id, reply) => {
                let _ = reply.send(self.cancel(&id));
            }
            JmCommand::Savepoint(req, reply) => {
                let _ = reply.send(self.savepoint(req));
            }
        }
    }

    /// Takes a submission: checks its configuration here, builds its graph on a thread
    /// of its own, and admits it when that is done ([`JmCommand::Built`]).
    pub(super) fn submit(
        &mut self,
        spec: JobSpec,
        reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
    ) {
        self.submit_as(spec, reply, None);
    }

    /// [`Self::submit`], or the recovery of a stored job.
    pub(super) fn submit_as(
        &mut self,
        mut spec: JobSpec,
        reply: tokio::sync::oneshot::Sender<Result<String, (u16, String)>>,
        recovery: Option<Recovery>,
    ) {
        // The job's own settings over the cluster's (Flink's `run -D`).
        let mut jc = self.config.clone();
        if let Err(e) = jc.apply_overrides(&spec.config) {
            let _ = reply.send(Err((400, format!("the job's configuration: {e}"))));
            return;
        }
        // Directories the job names for its checkpoints and savepoints (the cluster's
        // own are trusted).
        for (dir, ours, what) in [
            (
                &jc.checkpointing.dir,
                &self.config.checkpointing.dir,
                "the checkpoint directory",
            ),
            (
                &jc.checkpointing.savepoint_dir,
                &self.config.checkpointing.savepoint_dir,
                "the savepoint directory",
            ),
        ] {
            if let Some(d) = dir.as_ref().filter(|d| Some(*d) != ours.as_ref()) {
                if let Err(e) = crate::security::check_job_path(d, what) {
                    let _ = reply.send(Err((400, e)));
                    return;
                }
            }
        }
        // The job's mode travels with it, so that every TaskManager builds it alike.
        spec.runtime_mode.get_or_insert(jc.runtime_mode);
        spec.auto_watermark_interval_ns.get_or_insert(
            u64::try_from(jc.auto_watermark_interval.as_nanos()).unwrap_or(u64::MAX),
        );
        if spec.max_parallelism.is_none() {
            spec.max_parallelism = jc.max_parallelism;
        }
        let tx = self.own_commands.clone();
        let spawned = std::thread::Builder::new()
            .name("job-builder".into())
            .spawn(move || {
                let mut built = build_submission(&spec, &jc);
                if let (Err((_, why)), Some(r)) = (&built, &recovery) {
                    // The checkpoint etcd points to may be gone (retention removed it
                    // after a newer one completed, and the leader died before it moved
                    // the pointer): the newest complete checkpoint of the job's
                    // directory is as good (its sinks committed no further).
                    if let Some(dir) = jc.checkpointing.dir.as_ref().map(|d| d.join(&r.id)) {
                        tracing::warn!(job = %r.id, %why, dir = %dir.display(), "resuming from the newest complete checkpoint of the job's directory instead");
                        spec.savepoint_path = Some(dir.display().to_string());
                        built = build_submission(&spec, &jc);
                    }
                }
                // A closed channel: the JobManager is stopping.
                let _ = tx.send(JmCommand::Built(Box::new(BuiltSubmission {
                    spec,
                    config: jc,
                    recovery,
                    built,
                    reply,
                })));
            });
        if let Err(e) = spawned {
            // The closure (and the reply in it) is gone: the REST request sees the
            // JobManager unable to answer, and the log says why.
            tracing::error!(error = %e, "cannot start a job builder thread");
        }
    }

    /// Admits a job whose graph was built: places it, or says why not.
    pub(super) fn admit(
        &mut self,
        spec: JobSpec,
        jc: &Config,
        graph: JobGraph,
        restore: Option<crate::checkpoint::CompletedCheckpoint>,
        recovery: Option<Recovery>,
    ) -> Result<String, (u16, String)> {
        let (group_offsets, needed) = graph.group_offsets();
        let free = self.free_slots().len();
        if needed > free && recovery.is_none() {
            return Err((
                400,
                format!("the job needs {needed} task slots; {free} are free in the cluster"),
            ));
        }
        let id = match &recovery {
            Some(r) => r.id.clone(),
            None => crate::cluster::new_id(),
        };
        if recovery.is_none() {
            if self.ha.is_some()
                && jc.checkpointing.interval.is_some()
                && jc.checkpointing.dir.is_none()
            {
                return Err((
                    400,
                    "with high availability, a job's checkpoints must outlive its \
                     JobManager: set state.checkpoints.dir"
                        .into(),
                ));
            }
            self.store_job(&id, &spec)?;
        }
        let mut coord =
            CheckpointCoordinator::new(&jc.checkpointing, &graph, &id).with_remote_tasks();
        if let Some(cp) = restore {
            let path = spec.savepoint_path.as_deref().unwrap_or("");
            tracing::info!(job = %id, %path, checkpoint = cp.meta.checkpoint_id, "resuming from a checkpoint");
            coord.restore_from(Arc::new(cp));
        }
        let regions = pipelined_regions(&graph);
        let region_of = regions
            .iter()
            .enumerate()
            .flat_map(|(r, ts)| ts.iter().map(move |t| (*t, r)))
            .collect();
        let job = JobEntry {
            id: id.clone(),
            spec,
            state: JobState::Created,
            attempt: 0,
            executions: BTreeMap::new(),
            restarts: 0,
            start_epoch_ms: epoch_ms(),
            end_epoch_ms: None,
            vertices: graph
                .vertices
                .iter()
                .map(|v| VertexInfo {
                    id: v.id,
                    name: v.name.clone(),
                    parallelism: v.parallelism,
                })
                .collect(),
            slots_needed: needed,
            tasks: BTreeMap::new(),
            past_latency: None,
            exceptions: Vec::new(),
            exceptions_truncated: false,
            results: std::collections::VecDeque::new(),
            results_dropped: 0,
            results_bytes: 0,
            strategy: restart::from_config(jc),
            strategy_exhausted: false,
            restart_at: None,
            group_offsets,
            vertex_groups: graph
                .vertices
                .iter()
                .map(|v| v.slot_sharing_group.clone())
                .collect(),
            regions,
            region_of,
            edges: graph
                .edges
                .iter()
                .map(|e| {
                    let forward = matches!(e.partition, crate::graph::EdgePartition::Forward);
                    (e.from as u32, e.to as u32, forward)
                })
                .collect(),
            failover: jc.failover_strategy,
            region_restarts: BTreeMap::new(),
            deploy_settings: DeploySettings::of(jc),
            waiting_for_slots_since: None,
            coord,
            savepoint_requests: HashMap::new(),
            stop_with: None,
            end_as: None,
            timestamps: BTreeMap::new(),
            stamped: None,
            max_parallelism: graph.max_parallelism,
            plan_edges: graph
                .edges
                .iter()
                .map(|e| (e.from, e.to, e.partition.name()))
                .collect(),
        };
        let mut job = job;
        if let Some(r) = &recovery {
            tracing::info!(job = %id, name = %job.spec.job, attempt = r.attempt, "job recovered from the job store");
            job.attempt = r.attempt;
            if needed > free {
                // The TaskManagers have not all registered with this leader yet: wait
                // for slots as a restart does (at most `slot.request.timeout`).
                job.attempt = r.attempt - 1;
                job.state = JobState::Restarting;
                job.restart_at = Some(Instant::now());
            }
        } else {
            tracing::info!(job = %id, name = %job.spec.job, slots = needed, "job submitted");
        }
        let mut st = lock(&self.state);
        let mut ended: Vec<(u64, String)> = st
            .jobs
            .values()
            .filter(|j| j.state.is_terminal())
            .map(|j| (j.end_epoch_ms.unwrap_or(0), j.id.clone()))
            .collect();
        if ended.len() >= MAX_ENDED_JOBS {
            ended.sort();
            for (_, old) in ended.iter().take(ended.len() + 1 - MAX_ENDED_JOBS) {
                st.jobs.remove(old);
            }
        }
        let waits = job.state == JobState::Restarting;
        st.jobs.insert(id.clone(), job);
        drop(st);
        if !waits && !self.deploy(&id) {
            return Err((500, "could not deploy the job".into()));
        }
        Ok(id)
    }
}
