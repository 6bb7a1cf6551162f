//! Tasks: a chain of operators with its head fed by a source or by input rings, and its
//! tail writing to output rings, polled by a slot.
//!
//! One poll: read the clock once; on a deadline, housekeeping (mark this side of every
//! ring alive, check on peers that went quiet); drain outputs that had to wait (and take
//! no input while any still waits); move a bounded amount of input through the chain,
//! a batch at a time, with control events in order; tick the chain with the clock
//! reading; report any failure an operator raised.
//!
//! A task with several inputs combines their control events: its watermark is the
//! minimum over the inputs that are not idle (an ended input holds nothing back); it is
//! idle when every open input is; a checkpoint barrier is *aligned*: an input that
//! delivered barrier `n` is not read again until every open input has, and then the
//! barrier goes down the chain once (exactly-once alignment, as Flink's).

use crate::checkpoint::{collect_states, put_state, CheckpointAck, TakenState, TaskCheckpointing};
use crate::clock;
use crate::exchange::{Backpressure, OutputControl};
use crate::frames;
use crate::operator::source::{Source, SourceStatus};
use crate::operator::{
    report_failure, take_failure, Barrier, BoxEmit, Event, END_OF_TIME, NO_WATERMARK,
};
use crate::record::Wire;
use crate::ring::{Consumer, FrameType, PeerState};
use crate::slot::{Task, TaskError, TaskPoll};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Records a source task takes from its source per poll at most.
pub const BATCH: usize = 256;

/// Frames an input task reads from each input per poll at most.
pub const FRAMES_PER_POLL: usize = 8;

/// How often a task does its housekeeping: ring heartbeats, peer checks (ns).
pub const HOUSEKEEPING_NS: u64 = 10_000_000;

/// Default time a ring's peer may go without a heartbeat before the task fails (ns).
pub const DEFAULT_PEER_TIMEOUT_NS: u64 = 30_000_000_000;

/// How a task runs, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSettings {
    /// A ring peer that has not written its heartbeat for this long (a stopped or hung
    /// process, or one in another pid namespace whose pid cannot be checked) fails the
    /// task. 0: never.
    pub peer_timeout_ns: u64,
    /// How often a source task sends a latency marker down its outputs (ns; 0: never;
    /// Flink's `metrics.latency.interval`).
    pub latency_interval_ns: u64,
}

impl Default for TaskSettings {
    fn default() -> Self {
        Self {
            peer_timeout_ns: DEFAULT_PEER_TIMEOUT_NS,
            latency_interval_ns: 0,
        }
    }
}

/// Records into and out of a task (its chain's head and its ring outputs), published
/// once per poll, read by whoever reports metrics.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
    /// The watermark the task's inputs combine to (ns; 0: none yet).
    input_watermark: AtomicU64,
    /// Housekeeping rounds (every [`HOUSEKEEPING_NS`]) and those that found the task's
    /// outputs full: the back-pressure ratio, sampled.
    samples: AtomicU64,
    backpressured: AtomicU64,
    /// How long after their emission latency markers reached the task's inputs.
    markers: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
    /// The time per record of each operator of its chain, head first (sampled once per
    /// latency-marker interval).
    operators: std::sync::Mutex<Vec<Arc<crate::operator::OperatorTimes>>>,
}

impl TaskMetrics {
    /// Records read from the task's input rings.
    pub fn records_in(&self) -> u64 {
        // Relaxed: counters for reports; nothing else is read through them.
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records written to the task's output rings.
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }

    /// The watermark of the task's inputs combined (event time, ns; 0 before the
    /// first, [`crate::operator::END_OF_TIME`] at the end of input; source tasks
    /// have none).
    pub fn input_watermark(&self) -> u64 {
        self.input_watermark.load(Ordering::Relaxed)
    }

    /// How long after their sources emitted them latency markers reached this task
    /// (`None`: none has; markers are off unless `metrics.latency.interval` is set).
    pub fn marker_latency(&self) -> Option<hdrhistogram::Histogram<u64>> {
        match self.markers.lock() {
            Ok(m) => m.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The timers of its chain's operators, head first.
    pub fn set_operator_times(&self, timers: Vec<Arc<crate::operator::OperatorTimes>>) {
        match self.operators.lock() {
            Ok(mut o) => *o = timers,
            Err(p) => *p.into_inner() = timers,
        }
    }

    /// Each operator of its chain, head first, with its time per record on sampled
    /// batches (ns; `None`: none sampled yet).
    pub fn operator_times(&self) -> Vec<(String, Option<hdrhistogram::Histogram<u64>>)> {
        let o = match self.operators.lock() {
            Ok(o) => o.clone(),
            Err(p) => p.into_inner().clone(),
        };
        o.iter()
            .map(|t| (t.name().to_string(), t.histogram()))
            .collect()
    }

    /// Notes a marker's age on arrival. On the slot thread, a few times a second: it
    /// never waits for a reader (a sample that meets one is dropped).
    fn note_marker(&self, age_ns: u64) {
        if let Ok(mut m) = self.markers.try_lock() {
            let h = m.get_or_insert_with(crate::operator::sink::new_histogram);
            let _ = h.record(age_ns.max(1));
        }
    }

    /// Back-pressure samples so far: (rounds, rounds that found the outputs full).
    /// Taken every [`HOUSEKEEPING_NS`], off the per-record path.
    pub fn backpressure_samples(&self) -> (u64, u64) {
        (
            self.samples.load(Ordering::Relaxed),
            self.backpressured.load(Ordering::Relaxed),
        )
    }
}

/// The outputs of a task, their shared backpressure flag, and the task's metrics.
pub struct Outputs {
    outputs: Vec<Rc<RefCell<dyn OutputControl>>>,
    backpressure: Backpressure,
    metrics: Arc<TaskMetrics>,
    settings: TaskSettings,
    next_housekeeping: u64,
    checkpointing: Option<TaskCheckpointing>,
    /// Acknowledgements handed to the snapshot writer and not sent yet: the task does
    /// not finish before they are, so that its acknowledgement reaches the
    /// coordinator before its end does.
    acks_in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Outputs {
    /// Over these outputs, all of which set `backpressure` when records wait.
    pub fn new(outputs: Vec<Rc<RefCell<dyn OutputControl>>>, backpressure: Backpressure) -> Self {
        Self {
            outputs,
            backpressure,
            metrics: Arc::default(),
            settings: TaskSettings::default(),
            next_housekeeping: 0,
            checkpointing: None,
            acks_in_flight: Arc::default(),
        }
    }

    /// Takes part in checkpoints: a source task injects the barriers `cp.trigger` asks
    /// for, and every task acknowledges each barrier that left its chain.
    pub fn with_checkpointing(mut self, cp: TaskCheckpointing) -> Self {
        self.checkpointing = Some(cp);
        self
    }

    /// Whether a task whose input ended waits for a final checkpoint.
    fn final_checkpoint(&self) -> bool {
        self.checkpointing
            .as_ref()
            .is_some_and(|cp| cp.final_checkpoint)
    }

    /// Sends the end of input down `head`'s chain, then, when a final checkpoint
    /// follows, tells the coordinator the task waits for it.
    fn end_input(&self, pass: impl FnOnce()) {
        let fin = self.final_checkpoint();
        crate::checkpoint::end_of_input(fin, pass);
        if let (true, Some(cp)) = (fin, &self.checkpointing) {
            cp.trigger.task_ended();
        }
    }

    /// The latest completed checkpoint, if the task has not heard of it yet.
    #[inline]
    fn completed_since(&self, notified: u64) -> Option<u64> {
        self.checkpointing
            .as_ref()
            .and_then(|cp| cp.trigger.completed_since(notified))
    }

    /// Sends the acknowledgement of barrier `b`, which just left the chain with
    /// `states`: at once when they are all written, else from the snapshot writer
    /// thread once it encoded the frozen ones (off the slot's core).
    fn acknowledge(&self, b: &Barrier, states: Vec<TakenState>, align_ns: u64, sync_ns: u64) {
        let Some(cp) = &self.checkpointing else {
            return;
        };
        let ack = CheckpointAck {
            checkpoint_id: b.id,
            vertex: cp.vertex,
            subtask: cp.subtask,
            states: Vec::new(),
            alignment_ns: align_ns,
            sync_ns,
            async_ns: 0,
            declined: None,
        };
        let written = states.iter().all(|s| s.1.is_written());
        let finish = move |mut ack: CheckpointAck| {
            match crate::checkpoint::finish_states(states) {
                Ok(states) => ack.states = states,
                Err(e) => ack.declined = Some(format!("a state could not be written: {e}")),
            }
            ack
        };
        if written {
            return (cp.acks)(finish(ack));
        }
        let acks = cp.acks.clone();
        let in_flight = self.acks_in_flight.clone();
        // Relaxed: the count is only read back by this task's thread (see `finished`),
        // which orders itself with the decrement below.
        in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::checkpoint::on_snapshot_writer(move || {
            let t0 = clock::now_ns();
            let (id, vertex, subtask) = (ack.checkpoint_id, ack.vertex, ack.subtask);
            // A state whose encoding panics (user serde code) declines the checkpoint.
            let mut ack = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(ack)))
                .unwrap_or_else(|_| CheckpointAck {
                    checkpoint_id: id,
                    vertex,
                    subtask,
                    states: Vec::new(),
                    alignment_ns: 0,
                    sync_ns: 0,
                    async_ns: 0,
                    declined: Some("encoding a state panicked".into()),
                });
            ack.async_ns = clock::now_ns().saturating_sub(t0);
            acks(ack);
            // Release: the acknowledgement was sent before the count drops; the task's
            // Acquire load in `finished` then orders its end after it.
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::Release);
        });
    }

    /// `Finished`, once every acknowledgement handed to the snapshot writer was sent;
    /// until then the task waits (a finished task's end must not overtake its
    /// acknowledgement on the way to the coordinator).
    fn finished(&self) -> TaskPoll {
        // Acquire: pairs with the writer's Release decrement.
        if self
            .acks_in_flight
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            TaskPoll::Finished
        } else {
            TaskPoll::Worked(0)
        }
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<TaskMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs with `settings`.
    pub fn with_settings(mut self, settings: TaskSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sends a latency marker emitted at `emitted_ns` down one channel of every out
    /// edge, behind what the task wrote so far.
    fn forward_latency_marker(&self, emitted_ns: u64) {
        for o in &self.outputs {
            o.borrow_mut().send_latency_marker(emitted_ns);
        }
    }

    /// Drains waiting frames; true if the task may take input.
    fn drain(&mut self) -> bool {
        if !self.backpressure.get() {
            return true;
        }
        let mut clear = true;
        for o in &self.outputs {
            clear &= o.borrow_mut().drain();
        }
        if clear {
            self.backpressure.set(false);
        }
        clear
    }

    /// Whether the task may take input now; if not, publishes what did go out.
    fn ready(&mut self) -> bool {
        if self.drain() {
            return true;
        }
        self.publish();
        false
    }

    fn blocked(&self) -> bool {
        self.backpressure.get()
    }

    /// The task's inputs combined to watermark `wm` (for reports; once per watermark).
    fn note_watermark(&self, wm: u64) {
        // Relaxed: a value for reports, read alone.
        self.metrics.input_watermark.store(wm, Ordering::Relaxed);
    }

    fn publish(&mut self) {
        let mut out = 0;
        for o in &self.outputs {
            let mut o = o.borrow_mut();
            o.publish();
            out += o.take_records();
        }
        if out > 0 {
            self.metrics.records_out.fetch_add(out, Ordering::Relaxed);
        }
    }

    /// Whether housekeeping is due at `now`; if so, does the outputs' part of it.
    fn housekeeping(&mut self, now: u64) -> Result<bool, TaskError> {
        if now < self.next_housekeeping {
            return Ok(false);
        }
        self.next_housekeeping = now + HOUSEKEEPING_NS;
        // Relaxed: counters for reports (single writer: this task's thread).
        self.metrics.samples.fetch_add(1, Ordering::Relaxed);
        if self.backpressure.get() {
            self.metrics.backpressured.fetch_add(1, Ordering::Relaxed);
        }
        for o in &self.outputs {
            o.borrow_mut()
                .housekeeping(now, self.settings.peer_timeout_ns)
                .map_err(TaskError)?;
        }
        Ok(true)
    }
}

fn check_failure() -> Result<(), TaskError> {
    match take_failure() {
        Some(m) => Err(TaskError(m)),
        None => Ok(()),
    }
}

/// A source and the chain it feeds.
pub struct SourceTask<T> {
    name: String,
    source: Box<dyn Source<T>>,
    head: BoxEmit<T>,
    outputs: Outputs,
    batch: Vec<T>,
    done: bool,
    /// The source's id in checkpoints.
    source_uid: u32,
    /// The last barrier this task injected.
    injected: u64,
    /// The last completed checkpoint the chain heard of.
    notified: u64,
    /// The last barrier injected before the input ended: the task finishes once a
    /// later checkpoint completed (its final checkpoint), when it waits for one.
    ended_at: u64,
    /// The stop savepoint whose barrier it injected last (0: none): it emits nothing
    /// more unless that savepoint fails.
    stopped_at: u64,
    /// When the next latency marker is due (ns; with markers on).
    next_marker_ns: u64,
    /// Whether the source said it is idle for good (and the chain heard so).
    idle: bool,
}

impl<T> SourceTask<T> {
    /// `head` is the chain after the source.
    pub fn new(
        name: String,
        source: Box<dyn Source<T>>,
        head: BoxEmit<T>,
        outputs: Outputs,
    ) -> Self {
        let injected = outputs
            .checkpointing
            .as_ref()
            .map_or(0, |cp| cp.restored_from);
        Self {
            name,
            source,
            head,
            outputs,
            batch: Vec::with_capacity(BATCH),
            done: false,
            source_uid: u32::MAX,
            injected,
            notified: 0,
            ended_at: 0,
            stopped_at: 0,
            next_marker_ns: 0,
            idle: false,
        }
    }

    /// The source is operator `uid` in checkpoints; if the task being built restores
    /// a checkpoint holding a position for it, the source resumes from there.
    pub fn with_source_uid(mut self, uid: u32) -> Result<Self, crate::checkpoint::StateError> {
        if let Some(pos) = crate::checkpoint::take_restored(uid) {
            match crate::checkpoint::shares(&pos)? {
                Some((range, shares)) => {
                    let now = crate::operator::SubtaskInfo {
                        index: range.subtask as usize,
                        parallelism: range.parallelism as usize,
                    };
                    self.source.restore_shares(now, &shares)?;
                }
                None => self.source.restore_position(&pos)?,
            }
        }
        self.source_uid = uid;
        Ok(self)
    }

    /// Sends barrier `b` down the chain, behind every record emitted so far, with the
    /// source's position and the chain's states taken as it passes.
    fn inject(&mut self, b: Barrier) {
        let t0 = clock::now_ns();
        let (source, head, uid) = (&mut self.source, &mut self.head, self.source_uid);
        let states = collect_states(|| {
            match source.snapshot_position() {
                Ok(Some(p)) => put_state(uid, p),
                Ok(None) => {}
                Err(e) => report_failure(format!("checkpoint of the source: {e}")),
            }
            head.event(Event::Barrier(b));
        });
        self.injected = b.id;
        let sync = clock::now_ns().saturating_sub(t0);
        self.outputs.acknowledge(&b, states, 0, sync);
    }
}

impl<T> Task for SourceTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn close(&mut self) {
        // A checkpoint that completed before the task was cancelled (a stop with a
        // savepoint: completion, then cancel) still commits what it closed.
        if let Some(c) = self.outputs.completed_since(self.notified) {
            self.notified = c;
            self.head.notify_checkpoint_complete(c);
        }
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        let now = clock::now_ns();
        self.outputs.housekeeping(now)?;
        if !self.outputs.ready() {
            return Ok(TaskPoll::Worked(0));
        }
        let waiting = self.done && self.outputs.final_checkpoint();
        if self.done && !waiting {
            return Ok(self.outputs.finished());
        }
        // One load per poll when no checkpoint is asked for.
        if let Some((b, stop)) = self.outputs.checkpointing.as_ref().and_then(|cp| {
            let b = cp.trigger.pending(self.injected)?;
            Some((b, cp.trigger.is_stop(b.id)))
        }) {
            if stop {
                self.stopped_at = b.id;
            }
            self.inject(b);
        }
        if let Some(c) = self.outputs.completed_since(self.notified) {
            self.notified = c;
            self.head.notify_checkpoint_complete(c);
        }
        if self.stopped_at != 0 {
            // Stopped with a savepoint: nothing after its barrier, until the job is
            // cancelled on its completion, or it failed and the job runs on.
            let aborted = self
                .outputs
                .checkpointing
                .as_ref()
                .is_none_or(|cp| cp.trigger.stop_aborted(self.stopped_at));
            if !aborted {
                self.outputs.publish();
                check_failure()?;
                return Ok(TaskPoll::Worked(0));
            }
            self.stopped_at = 0;
        }
        if waiting {
            // The input ended: only the final checkpoint is left to take part in.
            self.outputs.publish();
            check_failure()?;
            if self.notified > self.ended_at {
                return Ok(self.outputs.finished());
            }
            return Ok(TaskPoll::Worked(0));
        }
        // The chain learns this poll's time before its records: a first batch must not
        // run at time 0 (processing-time windows, timers and idleness would see it so).
        self.head.tick(clock::processing_time(now));
        // Records are stamped on the cluster's clock (the same as `now` but on hosts
        // whose clocks differ from the JobManager's), so that sinks elsewhere age them.
        let stamp = clock::cluster_ns(now);
        let status = self.source.poll(&mut self.batch, BATCH, stamp)?;
        let every = self.outputs.settings.latency_interval_ns;
        let marker_due = every != 0 && now >= self.next_marker_ns;
        if !self.batch.is_empty() {
            // The batch before a marker is timed through the chain, operator by operator.
            if marker_due {
                crate::operator::set_sampling(true);
            }
            self.head.push(&mut self.batch);
            if marker_due {
                crate::operator::set_sampling(false);
            }
            self.batch.clear();
        }
        if marker_due {
            // Behind this poll's records: a marker waits where they wait.
            self.next_marker_ns = now.saturating_add(every);
            self.outputs.forward_latency_marker(stamp);
        }
        let work = match status {
            SourceStatus::Emitted(n) => n,
            SourceStatus::Idle => {
                if !self.idle {
                    self.idle = true;
                    self.head.event(Event::Idle(true));
                }
                0
            }
            SourceStatus::Done => {
                // A bounded input ends at the end of time: event-time work completes.
                let head = &mut self.head;
                self.outputs.end_input(|| {
                    head.event(Event::Watermark(END_OF_TIME));
                    head.event(Event::EndOfInput);
                });
                self.done = true;
                self.ended_at = self.injected;
                1
            }
        };
        self.outputs.publish();
        check_failure()?;
        Ok(TaskPoll::Worked(work))
    }
}

/// One input ring of an [`InputTask`] and what its control events said.
struct Input {
    ring: Consumer,
    /// Which of the head's inputs it feeds (0, or 1 for a two-input operator's second).
    side: usize,
    ended: bool,
    watermark: u64,
    idle: bool,
    /// Delivered the barrier being aligned: not read until the alignment completes.
    blocked: bool,
}

/// What an input task feeds: the head of its chain, behind one input type or two.
/// Decoding happens here, so the task's loop over rings and control events is the same
/// for both.
pub trait InputHead {
    /// A data frame from an input of side `side`: decode it and push it down the chain.
    /// Returns the records it held.
    fn data(&mut self, side: usize, payload: &[u8]) -> Result<u64, crate::record::DecodeError>;
    /// A combined control event.
    fn event(&mut self, event: Event);
    /// Processing time advanced.
    fn tick(&mut self, now_ns: u64);
    /// Checkpoint `id` completed.
    fn notify_checkpoint_complete(&mut self, id: u64);
}

/// The head of a one-input chain.
pub struct OneInput<T> {
    head: BoxEmit<T>,
    /// Reused: the batch being decoded, its key hashes, and a private copy of a frame.
    batch: Vec<T>,
    hashes: Vec<u64>,
    scratch: Vec<u8>,
}

impl<T: Wire> InputHead for OneInput<T> {
    #[inline]
    fn data(&mut self, _side: usize, payload: &[u8]) -> Result<u64, crate::record::DecodeError> {
        let head = &mut self.head;
        decode_into(
            payload,
            &mut self.batch,
            &mut self.hashes,
            &mut self.scratch,
            |b, h| {
                if h.is_empty() {
                    head.push(b);
                } else {
                    head.push_keyed(b, h);
                }
            },
        )
    }
    fn event(&mut self, event: Event) {
        self.head.event(event);
    }
    fn tick(&mut self, now_ns: u64) {
        self.head.tick(now_ns);
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.head.notify_checkpoint_complete(id);
    }
}

/// The head of a chain that starts with a two-input operator.
pub struct TwoInputs<A, B> {
    head: Box<dyn crate::operator::Emit2<A, B>>,
    a: Vec<A>,
    b: Vec<B>,
    hashes: Vec<u64>,
    scratch: Vec<u8>,
}

/// Decodes a batch frame into `batch` (and `hashes`, which stays empty when the frame
/// carries none) and hands it to `push`; returns the records.
#[inline]
fn decode_into<T: Wire>(
    payload: &[u8],
    batch: &mut Vec<T>,
    hashes: &mut Vec<u64>,
    scratch: &mut Vec<u8>,
    push: impl FnOnce(&mut Vec<T>, &mut Vec<u64>),
) -> Result<u64, crate::record::DecodeError> {
    let keyed = frames::decode_batch(payload, batch, hashes, scratch)?;
    let n = batch.len() as u64;
    if !keyed {
        hashes.clear();
    }
    push(batch, hashes);
    batch.clear();
    hashes.clear();
    Ok(n)
}

impl<A: Wire, B: Wire> InputHead for TwoInputs<A, B> {
    #[inline]
    fn data(&mut self, side: usize, payload: &[u8]) -> Result<u64, crate::record::DecodeError> {
        let head = &mut self.head;
        if side == 0 {
            decode_into(
                payload,
                &mut self.a,
                &mut self.hashes,
                &mut self.scratch,
                |b, h| head.push1(b, h),
            )
        } else {
            decode_into(
                payload,
                &mut self.b,
                &mut self.hashes,
                &mut self.scratch,
                |b, h| head.push2(b, h),
            )
        }
    }
    fn event(&mut self, event: Event) {
        self.head.event(event);
    }
    fn tick(&mut self, now_ns: u64) {
        self.head.tick(now_ns);
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.head.notify_checkpoint_complete(id);
    }
}

/// Input rings and the chain they feed.
pub struct InputTask<H> {
    name: String,
    inputs: Vec<Input>,
    open: usize,
    head: H,
    outputs: Outputs,
    finished: bool,
    /// The watermark and idleness last sent down the chain.
    watermark: u64,
    idle: bool,
    /// The barrier being aligned (the inputs that delivered it are `blocked`).
    aligning: Option<Barrier>,
    /// When its first input delivered it.
    aligning_since: u64,
    /// A latency marker arrived: the next data batch is timed through the chain.
    sample_next: bool,
    /// Exactly-once: an input that delivered the barrier is not read until all have.
    /// At-least-once: barriers are only counted.
    align: bool,
    /// The last barrier sent down the chain.
    last_barrier: Option<u64>,
    /// The last completed checkpoint the chain heard of.
    notified: u64,
    /// The last checkpoint taken before the input ended (see [`SourceTask`]).
    ended_at: u64,
}

impl<T: Wire> InputTask<OneInput<T>> {
    /// Reads `inputs` (all carrying `T`), feeding `head`.
    pub fn new(name: String, inputs: Vec<Consumer>, head: BoxEmit<T>, outputs: Outputs) -> Self {
        let head = OneInput {
            head,
            batch: Vec::new(),
            hashes: Vec::new(),
            scratch: Vec::new(),
        };
        Self::with_head(
            name,
            inputs.into_iter().map(|c| (0, c)).collect(),
            head,
            outputs,
        )
    }
}

impl<A: Wire, B: Wire> InputTask<TwoInputs<A, B>> {
    /// Reads `inputs`, each `(0, ring)` carrying `A` or `(1, ring)` carrying `B`, feeding
    /// a two-input operator.
    pub fn two_inputs(
        name: String,
        inputs: Vec<(usize, Consumer)>,
        head: Box<dyn crate::operator::Emit2<A, B>>,
        outputs: Outputs,
    ) -> Self {
        let head = TwoInputs {
            head,
            a: Vec::new(),
            b: Vec::new(),
            hashes: Vec::new(),
            scratch: Vec::new(),
        };
        Self::with_head(name, inputs, head, outputs)
    }
}

impl<H: InputHead> InputTask<H> {
    fn with_head(name: String, inputs: Vec<(usize, Consumer)>, head: H, outputs: Outputs) -> Self {
        let n = inputs.len();
        Self {
            name,
            inputs: inputs
                .into_iter()
                .map(|(side, ring)| Input {
                    ring,
                    side,
                    ended: false,
                    watermark: NO_WATERMARK,
                    idle: false,
                    blocked: false,
                })
                .collect(),
            open: n,
            head,
            outputs,
            finished: false,
            watermark: NO_WATERMARK,
            idle: false,
            aligning: None,
            aligning_since: 0,
            sample_next: false,
            align: true,
            last_barrier: None,
            notified: 0,
            ended_at: 0,
        }
        .with_mode()
    }

    fn with_mode(mut self) -> Self {
        self.align = self
            .outputs
            .checkpointing
            .as_ref()
            .is_none_or(|cp| cp.exactly_once);
        self
    }

    /// Sends the combined watermark and idleness down the chain when they changed.
    fn combine(&mut self) {
        let live = self.inputs.iter().filter(|i| !i.ended);
        let all_idle = self.open > 0 && live.clone().all(|i| i.idle);
        if all_idle != self.idle {
            if all_idle {
                // As Flink's valve: the highest watermark of the inputs goes out before
                // the task falls idle, so what it allows fires now, not when traffic
                // comes back.
                let max = live.map(|i| i.watermark).max().unwrap_or(NO_WATERMARK);
                if max > self.watermark {
                    self.watermark = max;
                    self.outputs.note_watermark(max);
                    self.head.event(Event::Watermark(max));
                }
            }
            self.idle = all_idle;
            self.head.event(Event::Idle(all_idle));
        }
        if all_idle {
            return;
        }
        let wm = self
            .inputs
            .iter()
            .filter(|i| !i.idle || i.ended)
            .map(|i| if i.ended { END_OF_TIME } else { i.watermark })
            .min()
            .unwrap_or(END_OF_TIME);
        if wm > self.watermark {
            self.watermark = wm;
            self.outputs.note_watermark(wm);
            self.head.event(Event::Watermark(wm));
        }
    }

    /// Input `i` delivered barrier `b`.
    fn on_barrier(&mut self, i: usize, b: Barrier) {
        match self.aligning {
            _ if self.last_barrier.is_some_and(|l| b.id <= l) => return, // of a checkpoint done
            Some(cur) if b.id < cur.id => return,                        // of a checkpoint given up
            Some(cur) if b.id == cur.id => self.inputs[i].blocked = true,
            // None, or a newer checkpoint: the older alignment is given up.
            _ => {
                for input in &mut self.inputs {
                    input.blocked = false;
                }
                self.inputs[i].blocked = true;
                self.aligning = Some(b);
                self.aligning_since = clock::now_ns();
            }
        }
        self.complete_alignment();
    }

    /// Sends the barrier on once every open input delivered it.
    fn complete_alignment(&mut self) {
        let Some(b) = self.aligning else { return };
        // Only inputs still open count: in at-least-once mode a blocked input is read
        // on and may end after delivering the barrier; its barrier must not stand in
        // for one that another open input has yet to deliver.
        let n = self.inputs.iter().filter(|i| i.blocked && !i.ended).count();
        if n < self.open {
            return;
        }
        self.aligning = None;
        self.last_barrier = Some(b.id);
        for input in &mut self.inputs {
            input.blocked = false;
        }
        let t0 = clock::now_ns();
        let head = &mut self.head;
        let states = collect_states(|| head.event(Event::Barrier(b)));
        let t1 = clock::now_ns();
        self.outputs.acknowledge(
            &b,
            states,
            t0.saturating_sub(self.aligning_since),
            t1.saturating_sub(t0),
        );
    }

    /// The last checkpoint this task took part in (or restored).
    fn taken(&self) -> u64 {
        self.last_barrier.unwrap_or_else(|| {
            self.outputs
                .checkpointing
                .as_ref()
                .map_or(0, |cp| cp.restored_from)
        })
    }

    /// After the end of input: finished, or (with a final checkpoint) takes the
    /// checkpoints asked for at the task itself, since no barrier can come through
    /// its ended inputs, until one of them completed.
    fn await_final_checkpoint(&mut self) -> Result<TaskPoll, TaskError> {
        let Some(cp) = self
            .outputs
            .checkpointing
            .as_ref()
            .filter(|cp| cp.final_checkpoint)
        else {
            return Ok(self.outputs.finished());
        };
        if let Some(b) = cp.trigger.pending(self.taken()) {
            self.last_barrier = Some(b.id);
            let t0 = clock::now_ns();
            let head = &mut self.head;
            let states = collect_states(|| head.event(Event::Barrier(b)));
            let sync = clock::now_ns().saturating_sub(t0);
            self.outputs.acknowledge(&b, states, 0, sync);
        }
        if let Some(c) = self.outputs.completed_since(self.notified) {
            self.notified = c;
            self.head.notify_checkpoint_complete(c);
        }
        self.outputs.publish();
        check_failure()?;
        Ok(if self.notified > self.ended_at {
            self.outputs.finished()
        } else {
            TaskPoll::Worked(0)
        })
    }

    /// Reads up to [`FRAMES_PER_POLL`] frames of input `i`; returns frames and records.
    fn read_input(&mut self, i: usize) -> Result<(usize, u64), TaskError> {
        let mut frames_read = 0;
        let mut records = 0u64;
        while frames_read < FRAMES_PER_POLL
            && !self.outputs.blocked()
            && !(self.align && self.inputs[i].blocked)
        {
            let input = &mut self.inputs[i];
            let frame = match input.ring.try_read() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(TaskError(format!("input {i}: {e}"))),
            };
            frames_read += 1;
            let ty = frame.frame_type();
            if ty == FrameType::Data {
                // The batch after a marker is timed through the chain.
                let sample = std::mem::take(&mut self.sample_next);
                if sample {
                    crate::operator::set_sampling(true);
                }
                let read = self.head.data(input.side, frame.payload());
                if sample {
                    crate::operator::set_sampling(false);
                }
                records += read.map_err(|e| TaskError(format!("input {i}: {e}")))?;
                continue;
            }
            if let Some(emitted) = frames::latency_marker(ty, frame.payload()) {
                self.sample_next = true;
                // Its age here, then on to one downstream channel per out edge.
                let age = clock::cluster_ns(clock::now_ns()).saturating_sub(emitted);
                self.outputs.metrics.note_marker(age);
                self.outputs.forward_latency_marker(emitted);
                continue;
            }
            let event = frames::decode_event(ty, frame.payload())
                .map_err(|e| TaskError(format!("input {i}: {e}")))?;
            match event {
                Some(Event::Watermark(t)) => {
                    let input = &mut self.inputs[i];
                    input.watermark = input.watermark.max(t);
                    input.idle = false;
                    self.combine();
                }
                Some(Event::Idle(idle)) => {
                    self.inputs[i].idle = idle;
                    self.combine();
                }
                Some(Event::Barrier(b)) => self.on_barrier(i, b),
                Some(Event::EndOfInput) => {
                    self.inputs[i].ended = true;
                    self.open -= 1;
                    self.combine();
                    self.complete_alignment();
                    break;
                }
                None => {}
            }
        }
        self.inputs[i].ring.release();
        Ok((frames_read, records))
    }

    /// Marks this side of every input alive and fails an idle input whose producer is
    /// gone, closed without end of stream, cut off, or silent for too long.
    fn check_inputs(&mut self, now: u64) -> Result<(), TaskError> {
        let timeout = self.outputs.settings.peer_timeout_ns;
        for (i, input) in self.inputs.iter().enumerate() {
            if input.ended {
                continue;
            }
            input.ring.heartbeat(now);
            check_producer(i, &input.ring, now, timeout)?;
        }
        Ok(())
    }
}

/// Fails an idle input whose producer closed without end of stream, whose process
/// died or stopped beating; the data plane does not wait forever for a peer that is
/// gone.
fn check_producer(i: usize, input: &Consumer, now: u64, timeout_ns: u64) -> Result<(), TaskError> {
    let why = match input.producer_state(now, timeout_ns) {
        PeerState::Closed => "ring was closed without end of stream".to_string(),
        PeerState::Gone => "process died".to_string(),
        PeerState::Broken => "host is unreachable: the network connection to it failed".into(),
        PeerState::Unresponsive { age_ns } => format!(
            "process has shown no sign of life for {:.1} s (stopped or hung)",
            age_ns as f64 / 1e9
        ),
        _ => return Ok(()),
    };
    // What was published before the close is visible now; read it first.
    if input.has_frame() {
        return Ok(());
    }
    Err(TaskError(format!("input {i}: the upstream task's {why}")))
}

impl<H: InputHead> Task for InputTask<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn close(&mut self) {
        // See `SourceTask::close`.
        if let Some(c) = self.outputs.completed_since(self.notified) {
            self.notified = c;
            self.head.notify_checkpoint_complete(c);
        }
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        let now = clock::now_ns();
        if self.outputs.housekeeping(now)? {
            self.check_inputs(now)?;
        }
        if !self.outputs.ready() {
            return Ok(TaskPoll::Worked(0));
        }
        if self.finished {
            return self.await_final_checkpoint();
        }
        // The chain learns this poll's time before its records (see `SourceTask`).
        self.head.tick(clock::processing_time(now));
        if let Some(c) = self.outputs.completed_since(self.notified) {
            self.notified = c;
            self.head.notify_checkpoint_complete(c);
        }
        let mut work = 0;
        let mut records = 0;
        for i in 0..self.inputs.len() {
            if self.inputs[i].ended {
                continue;
            }
            let (f, r) = self.read_input(i)?;
            work += f;
            records += r;
        }
        if records > 0 {
            self.outputs
                .metrics
                .records_in
                .fetch_add(records, Ordering::Relaxed);
        }
        if self.open == 0 {
            let head = &mut self.head;
            self.outputs.end_input(|| head.event(Event::EndOfInput));
            self.finished = true;
            self.ended_at = self.taken();
            work += 1;
        }
        self.outputs.publish();
        check_failure()?;
        Ok(TaskPoll::Worked(work))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::sink::{DiscardSink, SinkMetrics};
    use crate::operator::BarrierKind;
    use crate::ring::{Producer, Ring};
    use std::sync::Arc;

    fn input_task(inputs: Vec<Consumer>) -> InputTask<OneInput<u64>> {
        let head: BoxEmit<u64> = Box::new(DiscardSink::new(Arc::new(SinkMetrics::default())));
        input_task_with(inputs, head)
    }

    fn input_task_with(inputs: Vec<Consumer>, head: BoxEmit<u64>) -> InputTask<OneInput<u64>> {
        InputTask::new(
            "t".into(),
            inputs,
            head,
            Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false))),
        )
    }

    /// Writes a batch frame of `records` (with `hashes` if given).
    fn send(p: &mut Producer, records: &[u64], hashes: Option<&[u64]>) {
        let len = frames::batch_len(records, None, hashes.is_some());
        let mut c = p.try_claim(len, FrameType::Data).unwrap();
        frames::encode_batch(c.payload_mut(), records, None, hashes);
        c.commit();
        p.publish();
    }

    fn send_event(p: &mut Producer, e: Event) {
        let mut buf = [0u8; frames::MAX_EVENT_LEN];
        let (ty, n) = frames::encode_event(&e, &mut buf);
        p.try_send(ty, &buf[..n]).unwrap();
    }

    /// What reaches the chain's head: records (with whether they came keyed) and events.
    #[derive(Clone, Default)]
    struct Seen(Rc<RefCell<Vec<String>>>);

    impl crate::operator::Emit<u64> for Seen {
        fn push(&mut self, batch: &mut Vec<u64>) {
            self.0.borrow_mut().push(format!("{batch:?}"));
            batch.clear();
        }
        fn push_keyed(&mut self, batch: &mut Vec<u64>, hashes: &mut Vec<u64>) {
            self.0
                .borrow_mut()
                .push(format!("{batch:?} keyed {hashes:?}"));
            batch.clear();
            hashes.clear();
        }
        fn event(&mut self, e: Event) {
            self.0.borrow_mut().push(format!("{e:?}"));
        }
        fn tick(&mut self, _: u64) {}
    }

    impl crate::operator::Emit<crate::operator::source::Trade> for Seen {
        fn push(&mut self, batch: &mut Vec<crate::operator::source::Trade>) {
            self.0.borrow_mut().push(format!("{} trades", batch.len()));
            batch.clear();
        }
        fn event(&mut self, e: Event) {
            self.0.borrow_mut().push(format!("{e:?}"));
        }
        fn tick(&mut self, _: u64) {}
    }

    impl Seen {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.borrow_mut())
        }
    }

    #[test]
    fn an_upstream_that_closes_without_end_of_stream_fails_the_input() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        send(&mut p, &[7], None);
        assert_eq!(t.poll().unwrap(), TaskPoll::Worked(1));
        drop(p);
        // Housekeeping runs on a deadline: make it due.
        t.outputs.next_housekeeping = 0;
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("closed without end of stream"), "{e}");
    }

    #[test]
    fn an_upstream_cut_off_by_the_network_says_so() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        send(&mut p, &[7], None);
        p.break_off();
        // What arrived before the connection failed is read; then the input fails.
        assert_eq!(t.poll().unwrap(), TaskPoll::Worked(1));
        t.outputs.next_housekeeping = 0;
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("network connection to it failed"), "{e}");
    }

    #[test]
    fn an_upstream_that_stops_beating_fails_the_input_after_the_timeout() {
        let (p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        t.outputs.settings.peer_timeout_ns = 1_000_000;
        // The producer marked itself alive once, long ago (a stopped process).
        p.heartbeat(clock::now_ns().saturating_sub(2_000_000_000));
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("no sign of life"), "{e}");
        // A peer that beats is fine.
        let (p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        t.outputs.settings.peer_timeout_ns = 1_000_000_000;
        p.heartbeat(clock::now_ns());
        assert!(t.poll().is_ok());
    }

    #[test]
    fn a_task_marks_its_side_of_each_ring_alive() {
        let (p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        assert_eq!(p.consumer_state(clock::now_ns() + 10, 1), PeerState::Active);
        let _ = t.poll();
        // The consumer's heartbeat is now recent: a tight timeout still sees it alive,
        // and an age check far in the future does not.
        let now = clock::now_ns();
        assert_eq!(p.consumer_state(now, 5_000_000_000), PeerState::Active);
        assert!(matches!(
            p.consumer_state(now + 10_000_000_000, 1_000_000_000),
            PeerState::Unresponsive { .. }
        ));
    }

    #[test]
    fn frames_published_before_the_close_are_read_first() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        send(&mut p, &[7], None);
        send_event(&mut p, Event::EndOfInput);
        drop(p);
        // The first poll reads the record and the end of stream: no failure.
        assert!(matches!(t.poll().unwrap(), TaskPoll::Worked(_)));
        assert_eq!(t.poll().unwrap(), TaskPoll::Finished);
    }

    #[test]
    fn watermarks_combine_as_the_minimum_of_the_inputs_that_are_not_idle() {
        let (mut p0, c0) = Ring::anonymous(4096).unwrap();
        let (mut p1, c1) = Ring::anonymous(4096).unwrap();
        let seen = Seen::default();
        let mut t = input_task_with(vec![c0, c1], Box::new(seen.clone()));
        send_event(&mut p0, Event::Watermark(10));
        t.poll().unwrap();
        assert!(seen.take().is_empty(), "input 1 holds the watermark back");
        send_event(&mut p1, Event::Watermark(5));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["Watermark(5)"]);
        send_event(&mut p1, Event::Idle(true));
        t.poll().unwrap();
        assert_eq!(
            seen.take(),
            ["Watermark(10)"],
            "an idle input holds nothing back"
        );
        send_event(&mut p0, Event::Idle(true));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["Idle(true)"]);
        send_event(&mut p1, Event::Watermark(20));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["Idle(false)", "Watermark(20)"]);
        send_event(&mut p0, Event::EndOfInput);
        send_event(&mut p1, Event::EndOfInput);
        t.poll().unwrap();
        assert_eq!(
            seen.take(),
            [
                format!("Watermark({END_OF_TIME})"),
                "EndOfInput".to_string()
            ]
        );
    }

    /// Regression (review): when the last active input went idle, only `Idle(true)`
    /// went out, and windows the idle inputs' watermarks allowed stayed open until
    /// traffic came back.
    #[test]
    fn the_highest_watermark_goes_out_when_every_input_falls_idle() {
        let (mut a, ca) = Ring::anonymous(4096).unwrap();
        let (mut b, cb) = Ring::anonymous(4096).unwrap();
        let seen = Seen::default();
        let mut t = input_task_with(vec![ca, cb], Box::new(seen.clone()));
        send_event(&mut a, Event::Watermark(99));
        send_event(&mut b, Event::Watermark(50));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["Watermark(50)"]);
        send_event(&mut a, Event::Idle(true));
        t.poll().unwrap();
        assert!(seen.take().is_empty(), "b still holds the watermark at 50");
        send_event(&mut b, Event::Idle(true));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["Watermark(99)", "Idle(true)"]);
    }

    /// A source subtask without splits (an unbounded source resumed at a higher
    /// parallelism than its splits) tells its chain once that it is idle, so that it
    /// holds back no watermark, and keeps running.
    #[test]
    fn a_source_without_splits_goes_idle_once_and_keeps_running() {
        use crate::operator::source::{Pace, TradeSource};
        let seen = Seen::default();
        let mut src = TradeSource::new(
            1,
            None,
            Pace::Unpaced,
            crate::operator::SubtaskInfo {
                index: 2,
                parallelism: 3,
            },
        );
        src.restore_shares(
            crate::operator::SubtaskInfo {
                index: 2,
                parallelism: 3,
            },
            &[],
        )
        .unwrap();
        let mut t = SourceTask::new(
            "s".into(),
            Box::new(src),
            Box::new(seen.clone()),
            Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false))),
        );
        for _ in 0..3 {
            assert!(matches!(t.poll().unwrap(), TaskPoll::Worked(0)));
        }
        assert_eq!(seen.take(), ["Idle(true)"]);
    }

    /// Regression (review): the first batch ran before the chain's first tick, at
    /// processing time 0, so a timer set "a minute from now" fired at once.
    #[test]
    fn the_first_batch_already_knows_the_processing_time() {
        use crate::operator::keyed::{Context, KeyedProcess, KeyedProcessFunction};
        use crate::operator::source::IterSource;
        use crate::operator::Chained;
        #[derive(Clone)]
        struct InAMinute;
        impl KeyedProcessFunction for InAMinute {
            type Key = u64;
            type In = u64;
            type Out = u64;
            type State = ();
            fn process_element(&mut self, v: u64, _: &mut (), ctx: &mut Context<'_, u64, u64>) {
                assert!(ctx.current_processing_time() > 0);
                ctx.register_processing_time_timer(ctx.current_processing_time() + 60_000_000_000);
                let _ = v;
            }
            fn on_timer(&mut self, ts: u64, _: &mut (), ctx: &mut Context<'_, u64, u64>) {
                ctx.collect(ts);
            }
        }
        let seen = Seen::default();
        let head: BoxEmit<u64> = Box::new(Chained::new(
            KeyedProcess::new(InAMinute, |v: &u64| *v),
            Box::new(seen.clone()) as BoxEmit<u64>,
        ));
        let mut t = SourceTask::new(
            "s".into(),
            Box::new(IterSource::new(0..3u64)),
            head,
            Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false))),
        );
        t.poll().unwrap();
        t.poll().unwrap();
        let got = seen.take();
        assert!(
            got.iter().all(|e| !e.starts_with('[')),
            "no timer fired: {got:?}"
        );
    }

    #[test]
    fn barriers_are_aligned_across_inputs_and_go_on_once() {
        let (mut p0, c0) = Ring::anonymous(4096).unwrap();
        let (mut p1, c1) = Ring::anonymous(4096).unwrap();
        let seen = Seen::default();
        let mut t = input_task_with(vec![c0, c1], Box::new(seen.clone()));
        let b = |id| Barrier {
            id,
            timestamp_ns: 0,
            kind: BarrierKind::Checkpoint,
        };
        send(&mut p0, &[1], None);
        send_event(&mut p0, Event::Barrier(b(1)));
        send(&mut p0, &[2], None); // after the barrier: held back until it is aligned
        send(&mut p1, &[10], Some(&[99]));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["[1]", "[10] keyed [99]"]);
        t.poll().unwrap();
        assert!(seen.take().is_empty(), "input 0 waits for the alignment");
        send_event(&mut p1, Event::Barrier(b(1)));
        send(&mut p1, &[11], None);
        t.poll().unwrap();
        let got = seen.take();
        assert_eq!(got[0], format!("{:?}", Event::Barrier(b(1))));
        t.poll().unwrap();
        let mut rest: Vec<String> = got[1..].iter().cloned().chain(seen.take()).collect();
        rest.sort();
        assert_eq!(rest, ["[11]", "[2]"]);
        // A single input's barrier goes on at once; an ended input does not hold one up.
        send_event(&mut p0, Event::Barrier(b(2)));
        t.poll().unwrap();
        assert!(seen.take().is_empty());
        send_event(&mut p1, Event::EndOfInput);
        t.poll().unwrap();
        assert!(seen.take().contains(&format!("{:?}", Event::Barrier(b(2)))));
    }

    /// Regression (review): in at-least-once mode an input that delivered barrier 1
    /// and then ended still counted, so the barrier went on before the other input
    /// delivered it, and records that input sent before its barrier were left out
    /// of checkpoint 1 although its source position was past them.
    #[test]
    fn an_ended_input_does_not_stand_in_for_an_open_one_without_alignment() {
        let (mut p0, c0) = Ring::anonymous(4096).unwrap();
        let (mut p1, c1) = Ring::anonymous(4096).unwrap();
        let seen = Seen::default();
        let mut t = input_task_with(vec![c0, c1], Box::new(seen.clone()));
        t.align = false;
        let b1 = Barrier {
            id: 1,
            timestamp_ns: 0,
            kind: BarrierKind::Checkpoint,
        };
        send_event(&mut p0, Event::Barrier(b1));
        send_event(&mut p0, Event::EndOfInput);
        t.poll().unwrap();
        t.poll().unwrap();
        let barrier = format!("{:?}", Event::Barrier(b1));
        assert!(
            !seen.take().contains(&barrier),
            "input 1 has not delivered it"
        );
        send(&mut p1, &[5], None);
        send_event(&mut p1, Event::Barrier(b1));
        t.poll().unwrap();
        assert_eq!(seen.take(), ["[5]".to_string(), barrier]);
    }

    /// Back pressure is sampled at housekeeping (every 10 ms), not per record: the
    /// share of rounds that found the outputs full.
    #[test]
    fn backpressure_is_sampled_at_housekeeping() {
        let flag = Rc::new(std::cell::Cell::new(false));
        let metrics = Arc::new(TaskMetrics::default());
        let mut o = Outputs::new(Vec::new(), flag.clone()).with_metrics(metrics.clone());
        let mut now = 0;
        for i in 0..10 {
            flag.set(i % 4 == 0);
            assert!(o.housekeeping(now).unwrap());
            // Not due again within the period.
            assert!(!o.housekeeping(now + 1).unwrap());
            now += HOUSEKEEPING_NS;
        }
        assert_eq!(metrics.backpressure_samples(), (10, 3));
        o.note_watermark(42);
        assert_eq!(metrics.input_watermark(), 42);
    }

    /// Frozen states are encoded by the snapshot writer: the task acknowledges from
    /// there, does not finish before its acknowledgement went out, and a state whose
    /// encoding panics declines the checkpoint instead of losing the acknowledgement.
    #[test]
    fn frozen_states_are_acknowledged_from_the_writer_before_the_task_finishes() {
        use crate::checkpoint::{
            CheckpointAck, CheckpointTrigger, StateSnapshot, TaskCheckpointing,
        };
        use crate::operator::source::IterSource;
        use crate::operator::{Chained, Operator, Output};
        /// Passes records on; its state's encoding waits for `gate`, then panics on
        /// checkpoint 1 and writes `[id]` otherwise.
        struct Slow(Arc<std::sync::Barrier>, u64);
        impl Operator for Slow {
            type In = u64;
            type Out = u64;
            fn process(&mut self, batch: &mut Vec<u64>, out: &mut Output<'_, u64>) {
                for v in batch.drain(..) {
                    out.buffer().push(v);
                }
            }
            fn freeze_state(
                &mut self,
            ) -> Result<Option<StateSnapshot>, crate::checkpoint::StateError> {
                self.1 += 1;
                let (gate, id) = (self.0.clone(), self.1);
                Ok(Some(StateSnapshot::frozen(move || {
                    gate.wait();
                    assert!(id != 1, "a serializer that panics");
                    Ok(vec![id as u8])
                })))
            }
        }
        let gate = Arc::new(std::sync::Barrier::new(2));
        let trigger = CheckpointTrigger::new();
        let acks: Arc<std::sync::Mutex<Vec<CheckpointAck>>> = Arc::default();
        let sink = acks.clone();
        let outputs = Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false)))
            .with_checkpointing(TaskCheckpointing {
                trigger: trigger.clone(),
                acks: Arc::new(move |a: CheckpointAck| sink.lock().unwrap().push(a)),
                vertex: 0,
                subtask: 0,
                exactly_once: true,
                restored_from: 0,
                final_checkpoint: false,
            });
        let seen = Seen::default();
        let head: BoxEmit<u64> = Box::new(
            Chained::with_uid(
                Slow(gate.clone(), 0),
                Box::new(seen.clone()) as BoxEmit<u64>,
                7,
            )
            .unwrap(),
        );
        let mut t = SourceTask::new(
            "s".into(),
            Box::new(IterSource::new(0..10u64)),
            head,
            outputs,
        );
        let poll_until_ended = |t: &mut SourceTask<u64>| {
            for _ in 0..100 {
                if t.poll().unwrap() == TaskPoll::Finished {
                    return true;
                }
            }
            false
        };
        trigger.request(1, 0, BarrierKind::Checkpoint);
        // The source ends in its first polls; the writer still waits at the gate.
        assert!(
            !poll_until_ended(&mut t),
            "finished before its acknowledgement"
        );
        assert!(acks.lock().unwrap().is_empty());
        gate.wait();
        let mut ended = false;
        for _ in 0..2000 {
            if t.poll().unwrap() == TaskPoll::Finished {
                ended = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(ended, "the task finishes once the acknowledgement went out");
        let got = acks.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].checkpoint_id, 1);
        assert!(
            got[0]
                .declined
                .as_deref()
                .is_some_and(|d| d.contains("panicked")),
            "{got:?}"
        );
        assert!(got[0].states.is_empty());
    }

    /// A stop with a savepoint (Flink's synchronous savepoint): after the barrier of
    /// the stop's savepoint the source emits nothing, so that the cancel on its
    /// completion loses and repeats nothing; if the savepoint fails, it goes on.
    #[test]
    fn a_source_emits_nothing_after_a_stop_savepoint_until_it_fails() {
        use crate::checkpoint::{CheckpointTrigger, TaskCheckpointing};
        use crate::operator::source::IterSource;
        let trigger = CheckpointTrigger::new();
        let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = acks.clone();
        let seen = Seen::default();
        let outputs = Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false)))
            .with_checkpointing(TaskCheckpointing {
                trigger: trigger.clone(),
                acks: Arc::new(move |a: crate::checkpoint::CheckpointAck| {
                    sink.lock().unwrap().push(a.checkpoint_id);
                }),
                vertex: 0,
                subtask: 0,
                exactly_once: true,
                restored_from: 0,
                final_checkpoint: false,
            });
        let mut t = SourceTask::new(
            "s".into(),
            Box::new(IterSource::new(0..1_000_000u64)),
            Box::new(seen.clone()),
            outputs,
        );
        t.poll().unwrap();
        assert!(!seen.take().is_empty());
        trigger.request_stop(1, 0);
        for _ in 0..5 {
            t.poll().unwrap();
        }
        let got = seen.take();
        assert_eq!(got.len(), 1, "only the barrier after the stop: {got:?}");
        assert!(got[0].starts_with("Barrier"), "{got:?}");
        assert_eq!(*acks.lock().unwrap(), [1]);
        // A plain checkpoint's barrier does not stop it.
        trigger.abort_stop(1);
        t.poll().unwrap();
        assert!(
            seen.take().iter().any(|e| e.starts_with('[')),
            "records again"
        );
        trigger.request(2, 0, BarrierKind::Checkpoint);
        t.poll().unwrap();
        t.poll().unwrap();
        let got = seen.take();
        assert!(
            got.iter().filter(|e| e.starts_with('[')).count() >= 1,
            "{got:?}"
        );
    }

    #[test]
    fn malformed_frames_fail_the_task_with_what_was_wrong() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        p.try_send(FrameType::Data, &7u64.to_le_bytes()).unwrap();
        let e = t.poll().unwrap_err();
        assert!(
            e.0.contains("input 0") && e.0.contains("cannot decode"),
            "{e}"
        );
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        p.try_send(FrameType::Barrier, &[1, 2, 3]).unwrap();
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("barrier"), "{e}");
    }
}
