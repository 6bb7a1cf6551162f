//! Operators: what a task's chain is made of, and the contract between them.
//!
//! # The operator contract
//!
//! Records move through a chain **a batch at a time**. Each link of a chain is an
//! [`Emit`]: the runtime's object-safe face of an operator, called through one
//! `Box<dyn Emit<T>>` per operator **per batch**, never per record. Behind that call an
//! operator runs a monomorphic loop over the batch with the user's function inlined
//! into it (`Filter<F>` is a `retain`, `Map<F>` an `extend(drain().map(f))`), and hands
//! its output batch, a buffer it owns and reuses, to the next link. In steady state no
//! batch is allocated: buffers keep their capacity from one batch to the next.
//!
//! **Control events travel in band**, in order with the records around them: a
//! watermark, a change of idleness, a checkpoint barrier and the end of input are
//! [`Event`]s, passed through the same chain, written to the same rings as frames of
//! their own types, and carried unchanged by the network agents. An operator that
//! emitted records before an event flushes them first, so downstream sees records and
//! events in the order they were produced.
//!
//! Operators are written against [`Operator`], whose hooks (one per event, plus a
//! processing-time tick) forward by default; [`Chained`] turns an `Operator` into an
//! `Emit` and owns its output batch. Which operators chain is decided at run time (from
//! parallelism), so an operator never knows whether its next link is another operator
//! or a ring output.
//!
//! Keyed exchanges carry the hash of each record's key beside the batch
//! ([`Emit::push_keyed`]), so a keyed operator after a key exchange looks its state up
//! with the hash the exchange computed instead of hashing again.

use crate::checkpoint::{StateError, StateSnapshot};

pub mod broadcast;
pub mod cow;
pub mod file_sink;
pub mod join;
pub mod keyed;
pub mod process;
pub mod side;
pub mod sink;
pub mod source;
pub mod watermark;
pub mod window;

/// Event time meaning "no watermark yet".
pub const NO_WATERMARK: u64 = 0;
/// Event time after every record: the watermark of an input that ended.
pub const END_OF_TIME: u64 = u64::MAX;

/// What a checkpoint barrier asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BarrierKind {
    /// A periodic checkpoint.
    Checkpoint = 0,
    /// A savepoint (user-triggered, kept until deleted).
    Savepoint = 1,
}

/// A checkpoint barrier: every record before it belongs to checkpoint `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Barrier {
    /// Checkpoint id, increasing.
    pub id: u64,
    /// When the checkpoint was triggered (ns since the Unix epoch).
    pub timestamp_ns: u64,
    /// Checkpoint or savepoint.
    pub kind: BarrierKind,
}

/// A control event, in band with records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// No record with an event time at or below this (ns) follows.
    Watermark(u64),
    /// The stream went idle (`true`: it holds back no watermark) or active again.
    Idle(bool),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The input ended: nothing follows. Delivered once, last.
    EndOfInput,
}

/// The downstream of an operator: the runtime's object-safe face of a chain link.
///
/// Performance contract: `push` is called once per batch and must take every record
/// out of `batch` (leaving it empty, its capacity kept for the caller's next batch);
/// it must not allocate or block in steady state. `event` delivers control events in
/// order with the batches around them; `tick` comes about once per task poll with the
/// current processing time.
pub trait Emit<T> {
    /// A batch of records, in order.
    fn push(&mut self, batch: &mut Vec<T>);
    /// A batch from a key exchange, with `hashes[i]` the hash of `batch[i]`'s key (as
    /// [`key_hash`] computes it). Both are left empty. Operators that do not look keys
    /// up ignore the hashes.
    #[inline]
    fn push_keyed(&mut self, batch: &mut Vec<T>, hashes: &mut Vec<u64>) {
        hashes.clear();
        self.push(batch);
    }
    /// A control event.
    fn event(&mut self, event: Event);
    /// Processing time advanced to `now_ns` (fires timers, flushes periodic state).
    fn tick(&mut self, now_ns: u64);
    /// Checkpoint `id` completed (and every one before it): two-phase-commit sinks
    /// commit what its barrier closed. Goes down the chain; ring outputs drop it (every
    /// task hears it from the coordinator).
    fn notify_checkpoint_complete(&mut self, id: u64) {
        let _ = id;
    }
}

/// A boxed downstream.
pub type BoxEmit<T> = Box<dyn Emit<T>>;

impl<T> Emit<T> for BoxEmit<T> {
    #[inline(always)]
    fn push(&mut self, batch: &mut Vec<T>) {
        (**self).push(batch)
    }
    #[inline(always)]
    fn push_keyed(&mut self, batch: &mut Vec<T>, hashes: &mut Vec<u64>) {
        (**self).push_keyed(batch, hashes)
    }
    fn event(&mut self, event: Event) {
        (**self).event(event)
    }
    fn tick(&mut self, now_ns: u64) {
        (**self).tick(now_ns)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        (**self).notify_checkpoint_complete(id)
    }
}

/// The hash of a key, as key exchanges and keyed state compute it (FxHash: a few
/// cycles for an integer key).
#[inline(always)]
pub fn key_hash<K: std::hash::Hash + ?Sized>(key: &K) -> u64 {
    use std::hash::Hasher;
    let mut h = rustc_hash::FxHasher::default();
    key.hash(&mut h);
    h.finish()
}

/// What a subtask knows about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// This subtask's index, `0..parallelism`.
    pub index: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
}

/// Where an [`Operator`] puts its output: a batch it fills, and the next link, to which
/// the batch goes when the operator returns (or before an event it forwards).
pub struct Output<'a, O> {
    buf: &'a mut Vec<O>,
    next: &'a mut dyn Emit<O>,
}

impl<'a, O> Output<'a, O> {
    /// Over `buf`, flushing into `next`.
    pub fn new(buf: &'a mut Vec<O>, next: &'a mut dyn Emit<O>) -> Self {
        Self { buf, next }
    }

    /// Emits one record (into the output batch).
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.buf.push(record);
    }

    /// Emits the records of an iterator (into the output batch).
    #[inline(always)]
    pub fn extend(&mut self, records: impl IntoIterator<Item = O>) {
        self.buf.extend(records);
    }

    /// Hands a whole batch downstream after what was collected so far (for operators
    /// that work in place, such as a filter's `retain`); leaves `batch` empty.
    #[inline]
    pub fn forward(&mut self, batch: &mut Vec<O>) {
        self.flush();
        if !batch.is_empty() {
            self.next.push(batch);
            batch.clear();
        }
    }

    /// As [`Output::forward`], for a batch with its key hashes.
    #[inline]
    pub fn forward_keyed(&mut self, batch: &mut Vec<O>, hashes: &mut Vec<u64>) {
        self.flush();
        if !batch.is_empty() {
            self.next.push_keyed(batch, hashes);
        }
        hashes.clear();
    }

    /// Sends what was collected so far downstream.
    #[inline]
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.next.push(self.buf);
            // The next link takes every record; should one not, nothing goes twice.
            self.buf.clear();
        }
    }

    /// Emits a control event, after what was collected so far.
    pub fn event(&mut self, event: Event) {
        self.flush();
        self.next.event(event);
    }

    /// Emits a watermark.
    pub fn watermark(&mut self, watermark: u64) {
        self.event(Event::Watermark(watermark));
    }

    /// The output batch itself (for operators that hand it to code which collects).
    #[inline(always)]
    pub fn buffer(&mut self) -> &mut Vec<O> {
        self.buf
    }

    /// Records collected and not yet sent.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// An operator with one input: what users and built-in operators implement.
///
/// `process` takes a batch and emits into `out`; the hooks for control events forward
/// them unchanged by default, so an operator overrides only those it cares about.
///
/// Performance contract: `process` is called once per batch through one dynamic call;
/// loop over the batch inside it, so the compiler inlines the per-record work.
pub trait Operator: 'static {
    /// Input records.
    type In;
    /// Output records.
    type Out;

    /// A batch of records: take all of them (leave `batch` empty).
    fn process(&mut self, batch: &mut Vec<Self::In>, out: &mut Output<'_, Self::Out>);

    /// A batch from a key exchange with its key hashes (see [`Emit::push_keyed`]).
    fn process_keyed(
        &mut self,
        batch: &mut Vec<Self::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, Self::Out>,
    ) {
        hashes.clear();
        self.process(batch, out);
    }

    /// The input's watermark advanced (forwarded by default).
    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, Self::Out>) {
        out.watermark(watermark);
    }

    /// The input went idle or active again (forwarded by default).
    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, Self::Out>) {
        out.event(Event::Idle(idle));
    }

    /// A checkpoint barrier: every record before it has been processed (forwarded by
    /// default; operators with state snapshot it here).
    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, Self::Out>) {
        out.event(Event::Barrier(barrier));
    }

    /// The input ended: emit what is left. The runtime forwards the end afterwards.
    fn on_end_of_input(&mut self, out: &mut Output<'_, Self::Out>) {
        let _ = out;
    }

    /// Processing time advanced to `now_ns`.
    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, Self::Out>) {
        let _ = (now_ns, out);
    }

    /// Writes the operator's state for the checkpoint whose barrier reached it, before
    /// `on_barrier` (`None`: it keeps no state). Encode with
    /// [`crate::checkpoint::encode_state`].
    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(None)
    }

    /// Takes the operator's state for the checkpoint whose barrier reached it, as the
    /// runtime calls it: keyed operators freeze their state here in O(chunks) and leave
    /// its encoding to the snapshot writer thread
    /// ([`crate::checkpoint::StateSnapshot::frozen`]); the default writes it now with
    /// [`Self::snapshot_state`].
    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        Ok(self.snapshot_state()?.map(StateSnapshot::Written))
    }

    /// Takes back a state `snapshot_state` wrote: called once, as the task is built
    /// to resume from a checkpoint, before any record or event.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let _ = state;
        Err(StateError::Decode(
            "the checkpoint holds state for an operator that keeps none".into(),
        ))
    }
    /// Checkpoint `id` completed (and every one before it): a function that keeps
    /// effects pending on checkpoints (a two-phase commit) makes them final here.
    fn notify_checkpoint_complete(&mut self, id: u64) {
        let _ = id;
    }
}

thread_local! {
    /// Set by a task around the one batch it samples (per latency-marker interval):
    /// the chain links it passes through time themselves.
    static SAMPLING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The time the timed calls nested in the current one took (ns): what a link
    /// subtracts from its own so that its operator's time is its own.
    static NESTED_NS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Turns the timing of chain links on (for the batches pushed until it is turned off).
pub fn set_sampling(on: bool) {
    SAMPLING.with(|s| s.set(on));
}

/// The time per record one operator of a chain takes by itself (not what it calls
/// downstream), measured on the batches its task samples: where a chain's
/// microseconds go. The last operator's time includes writing its output (to rings, or
/// into a sink).
#[derive(Debug)]
pub struct OperatorTimes {
    name: String,
    hist: std::sync::Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl OperatorTimes {
    /// For the operator `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            hist: std::sync::Mutex::new(None),
        }
    }

    /// The operator's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Nanoseconds per record, per sampled batch (`None`: none sampled yet).
    pub fn histogram(&self) -> Option<hdrhistogram::Histogram<u64>> {
        match self.hist.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// On the slot thread, once per sampled batch: never waits for a reader (a sample
    /// that meets one is dropped).
    fn record(&self, ns_per_record: u64) {
        if let Ok(mut h) = self.hist.try_lock() {
            let h = h.get_or_insert_with(sink::new_histogram);
            let _ = h.record(ns_per_record.max(1));
        }
    }
}

/// An [`Operator`] as a chain link: it owns the operator's output batch and its
/// downstream, and sends the batch on after each call.
pub struct Chained<Op: Operator> {
    op: Op,
    buf: Vec<Op::Out>,
    next: BoxEmit<Op::Out>,
    /// The operator's id in checkpoints (`None`: it takes no part).
    uid: Option<u32>,
    /// Its time per record on sampled batches (`None`: not measured).
    timer: Option<std::sync::Arc<OperatorTimes>>,
}

impl<Op: Operator> Chained<Op> {
    /// `op`, emitting to `next`.
    pub fn new(op: Op, next: BoxEmit<Op::Out>) -> Self {
        Self {
            op,
            buf: Vec::new(),
            next,
            uid: None,
            timer: None,
        }
    }

    /// Measures the operator's time per record on the batches its task samples.
    pub fn timed(mut self, timer: std::sync::Arc<OperatorTimes>) -> Self {
        self.timer = Some(timer);
        self
    }

    /// Runs `f` (this link's work on a batch of `n`) timed, keeping the time of the
    /// timed links it calls apart.
    #[cold]
    #[inline(never)]
    fn timed_call(&mut self, n: usize, f: impl FnOnce(&mut Self)) {
        let outer = NESTED_NS.with(|c| c.replace(0));
        let t0 = crate::clock::now_ns();
        f(self);
        let took = crate::clock::now_ns().saturating_sub(t0);
        let nested = NESTED_NS.with(|c| c.replace(outer.saturating_add(took)));
        if let (Some(t), Some(n)) = (&self.timer, std::num::NonZeroU64::new(n as u64)) {
            t.record(took.saturating_sub(nested) / n);
        }
    }

    #[inline(always)]
    fn sampled(&self) -> bool {
        self.timer.is_some() && SAMPLING.with(std::cell::Cell::get)
    }

    /// `op` as operator `uid` of its job: its state goes into checkpoints under that
    /// id, and the state a checkpoint holds under it (if the task being built restores
    /// one, see [`crate::checkpoint::RestoreScope`]) is given back to it now.
    pub fn with_uid(mut op: Op, next: BoxEmit<Op::Out>, uid: u32) -> Result<Self, StateError> {
        if let Some(state) = crate::checkpoint::take_restored(uid) {
            crate::checkpoint::restore_with(&state, |b| op.restore_state(b))?;
        }
        Ok(Self {
            op,
            buf: Vec::new(),
            next,
            uid: Some(uid),
            timer: None,
        })
    }

    /// The operator.
    pub fn operator(&self) -> &Op {
        &self.op
    }

    #[inline(always)]
    fn with_out(&mut self, f: impl FnOnce(&mut Op, &mut Output<'_, Op::Out>)) {
        let mut out = Output::new(&mut self.buf, &mut *self.next);
        f(&mut self.op, &mut out);
        out.flush();
    }
}

impl<Op: Operator> Emit<Op::In> for Chained<Op> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<Op::In>) {
        if self.sampled() {
            let n = batch.len();
            return self.timed_call(n, |s| s.with_out(|op, out| op.process(batch, out)));
        }
        self.with_out(|op, out| op.process(batch, out));
    }
    #[inline]
    fn push_keyed(&mut self, batch: &mut Vec<Op::In>, hashes: &mut Vec<u64>) {
        if self.sampled() {
            let n = batch.len();
            return self.timed_call(n, |s| {
                s.with_out(|op, out| op.process_keyed(batch, hashes, out))
            });
        }
        self.with_out(|op, out| op.process_keyed(batch, hashes, out));
    }
    fn event(&mut self, event: Event) {
        match event {
            Event::Watermark(wm) => self.with_out(|op, out| op.on_watermark(wm, out)),
            Event::Idle(idle) => self.with_out(|op, out| op.on_idle(idle, out)),
            Event::Barrier(b) => {
                if let Some(uid) = self.uid {
                    snapshot(uid, || self.op.freeze_state());
                }
                self.with_out(|op, out| op.on_barrier(b, out))
            }
            Event::EndOfInput => {
                self.with_out(|op, out| op.on_end_of_input(out));
                self.next.event(Event::EndOfInput);
            }
        }
    }
    fn tick(&mut self, now_ns: u64) {
        self.with_out(|op, out| op.on_tick(now_ns, out));
        self.next.tick(now_ns);
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.op.notify_checkpoint_complete(id);
        self.next.notify_checkpoint_complete(id);
    }
}

/// The runtime's face of a two-input operator, the head of its task's chain (two-input
/// operators never chain behind another operator). `hashes` holds the key hash of each
/// record when its input crossed a key exchange, and is empty otherwise.
pub trait Emit2<A, B> {
    /// A batch of the first input.
    fn push1(&mut self, batch: &mut Vec<A>, hashes: &mut Vec<u64>);
    /// A batch of the second input.
    fn push2(&mut self, batch: &mut Vec<B>, hashes: &mut Vec<u64>);
    /// A control event, combined over both inputs by the task.
    fn event(&mut self, event: Event);
    /// Processing time advanced to `now_ns`.
    fn tick(&mut self, now_ns: u64);
    /// Checkpoint `id` completed (see [`Emit::notify_checkpoint_complete`]).
    fn notify_checkpoint_complete(&mut self, id: u64) {
        let _ = id;
    }
}

/// An operator with two inputs of possibly different types (Flink's
/// `TwoInputStreamOperator`): `connect`ed streams. Watermarks, idleness and barriers
/// reach it combined over both inputs (the minimum watermark; barriers aligned).
pub trait TwoInputOperator: 'static {
    /// Records of the first input.
    type In1;
    /// Records of the second input.
    type In2;
    /// Output records.
    type Out;
    /// A batch of the first input (`hashes` as in [`Emit2`]).
    fn process1(
        &mut self,
        batch: &mut Vec<Self::In1>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, Self::Out>,
    );
    /// A batch of the second input.
    fn process2(
        &mut self,
        batch: &mut Vec<Self::In2>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, Self::Out>,
    );
    /// The combined watermark advanced (forwarded by default).
    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, Self::Out>) {
        out.watermark(watermark);
    }
    /// Both inputs went idle, or one came back (forwarded by default).
    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, Self::Out>) {
        out.event(Event::Idle(idle));
    }
    /// A checkpoint barrier, aligned over both inputs (forwarded by default).
    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, Self::Out>) {
        out.event(Event::Barrier(barrier));
    }
    /// Both inputs ended. The runtime forwards the end afterwards.
    fn on_end_of_input(&mut self, out: &mut Output<'_, Self::Out>) {
        let _ = out;
    }
    /// Processing time advanced to `now_ns`.
    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, Self::Out>) {
        let _ = (now_ns, out);
    }

    /// Writes the operator's state for the checkpoint whose barrier reached it, before
    /// `on_barrier` (`None`: it keeps no state). Encode with
    /// [`crate::checkpoint::encode_state`].
    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(None)
    }

    /// Takes the operator's state for the checkpoint whose barrier reached it, as the
    /// runtime calls it: keyed operators freeze their state here in O(chunks) and leave
    /// its encoding to the snapshot writer thread
    /// ([`crate::checkpoint::StateSnapshot::frozen`]); the default writes it now with
    /// [`Self::snapshot_state`].
    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        Ok(self.snapshot_state()?.map(StateSnapshot::Written))
    }

    /// Takes back a state `snapshot_state` wrote: called once, as the task is built
    /// to resume from a checkpoint, before any record or event.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let _ = state;
        Err(StateError::Decode(
            "the checkpoint holds state for an operator that keeps none".into(),
        ))
    }
    /// Checkpoint `id` completed (and every one before it): a function that keeps
    /// effects pending on checkpoints (a two-phase commit) makes them final here.
    fn notify_checkpoint_complete(&mut self, id: u64) {
        let _ = id;
    }
}

/// A [`TwoInputOperator`] as the head of a chain.
pub struct Chained2<Op: TwoInputOperator> {
    op: Op,
    buf: Vec<Op::Out>,
    next: BoxEmit<Op::Out>,
    uid: Option<u32>,
}

impl<Op: TwoInputOperator> Chained2<Op> {
    /// `op`, emitting to `next`.
    pub fn new(op: Op, next: BoxEmit<Op::Out>) -> Self {
        Self {
            op,
            buf: Vec::new(),
            next,
            uid: None,
        }
    }

    /// As [`Chained::with_uid`].
    pub fn with_uid(mut op: Op, next: BoxEmit<Op::Out>, uid: u32) -> Result<Self, StateError> {
        if let Some(state) = crate::checkpoint::take_restored(uid) {
            crate::checkpoint::restore_with(&state, |b| op.restore_state(b))?;
        }
        Ok(Self {
            op,
            buf: Vec::new(),
            next,
            uid: Some(uid),
        })
    }

    /// The operator.
    pub fn operator(&self) -> &Op {
        &self.op
    }

    /// The operator, to change (a snapshot, a restore).
    pub fn operator_mut(&mut self) -> &mut Op {
        &mut self.op
    }

    #[inline(always)]
    fn with_out(&mut self, f: impl FnOnce(&mut Op, &mut Output<'_, Op::Out>)) {
        let mut out = Output::new(&mut self.buf, &mut *self.next);
        f(&mut self.op, &mut out);
        out.flush();
    }
}

impl<Op: TwoInputOperator> Emit2<Op::In1, Op::In2> for Chained2<Op> {
    #[inline]
    fn push1(&mut self, batch: &mut Vec<Op::In1>, hashes: &mut Vec<u64>) {
        self.with_out(|op, out| op.process1(batch, hashes, out));
    }
    #[inline]
    fn push2(&mut self, batch: &mut Vec<Op::In2>, hashes: &mut Vec<u64>) {
        self.with_out(|op, out| op.process2(batch, hashes, out));
    }
    fn event(&mut self, event: Event) {
        match event {
            Event::Watermark(wm) => self.with_out(|op, out| op.on_watermark(wm, out)),
            Event::Idle(idle) => self.with_out(|op, out| op.on_idle(idle, out)),
            Event::Barrier(b) => {
                if let Some(uid) = self.uid {
                    snapshot(uid, || self.op.freeze_state());
                }
                self.with_out(|op, out| op.on_barrier(b, out))
            }
            Event::EndOfInput => {
                self.with_out(|op, out| op.on_end_of_input(out));
                self.next.event(Event::EndOfInput);
            }
        }
    }
    fn tick(&mut self, now_ns: u64) {
        self.with_out(|op, out| op.on_tick(now_ns, out));
        self.next.tick(now_ns);
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        self.op.notify_checkpoint_complete(id);
        self.next.notify_checkpoint_complete(id);
    }
}

/// Takes operator `uid`'s state for the barrier passing now, if states are being
/// collected; a state that cannot be written fails the task.
fn snapshot(uid: u32, take: impl FnOnce() -> Result<Option<StateSnapshot>, StateError>) {
    if !crate::checkpoint::collecting() {
        return;
    }
    match take() {
        Ok(Some(state)) => crate::checkpoint::put_snapshot(uid, state),
        Ok(None) => {}
        Err(e) => report_failure(format!("checkpoint of operator {uid}: {e}")),
    }
}

/// Per-record logic over two connected streams (Flink's `CoProcessFunction`).
pub trait CoProcessFunction: Clone + Send + Sync + 'static {
    /// Records of the first input.
    type In1;
    /// Records of the second input.
    type In2;
    /// Output records.
    type Out;
    /// One record of the first input.
    fn process_element1(&mut self, value: Self::In1, out: &mut Vec<Self::Out>);
    /// One record of the second input.
    fn process_element2(&mut self, value: Self::In2, out: &mut Vec<Self::Out>);
}

/// Runs a [`CoProcessFunction`].
pub struct CoProcess<F>(pub F);

impl<F: CoProcessFunction> TwoInputOperator for CoProcess<F>
where
    F::In1: 'static,
    F::In2: 'static,
    F::Out: 'static,
{
    type In1 = F::In1;
    type In2 = F::In2;
    type Out = F::Out;
    #[inline]
    fn process1(
        &mut self,
        batch: &mut Vec<F::In1>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, F::Out>,
    ) {
        hashes.clear();
        let buf = out.buffer();
        for r in batch.drain(..) {
            self.0.process_element1(r, buf);
        }
    }
    #[inline]
    fn process2(
        &mut self,
        batch: &mut Vec<F::In2>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, F::Out>,
    ) {
        hashes.clear();
        let buf = out.buffer();
        for r in batch.drain(..) {
            self.0.process_element2(r, buf);
        }
    }
}

/// `map`: one record in, one out.
pub struct Map<F, I, O> {
    f: F,
    _t: std::marker::PhantomData<fn(I) -> O>,
}

impl<F, I, O> Map<F, I, O> {
    /// Applies `f`.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<I: 'static, O: 'static, F: FnMut(I) -> O + 'static> Operator for Map<F, I, O> {
    type In = I;
    type Out = O;
    #[inline]
    fn process(&mut self, batch: &mut Vec<I>, out: &mut Output<'_, O>) {
        out.extend(batch.drain(..).map(&mut self.f));
    }
}

/// `filter`: records for which the predicate holds pass, in place (a `retain`).
pub struct Filter<F, T> {
    f: F,
    _t: std::marker::PhantomData<fn(&T)>,
}

impl<F, T> Filter<F, T> {
    /// Passes the records for which `f` is true.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T: 'static, F: FnMut(&T) -> bool + 'static> Operator for Filter<F, T> {
    type In = T;
    type Out = T;
    #[inline]
    fn process(&mut self, batch: &mut Vec<T>, out: &mut Output<'_, T>) {
        batch.retain(&mut self.f);
        out.forward(batch);
    }
    #[inline]
    fn process_keyed(
        &mut self,
        batch: &mut Vec<T>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, T>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
            return self.process(batch, out);
        }
        // Compact records and their hashes in lockstep: the predicate runs once each.
        let mut kept = 0;
        for i in 0..batch.len() {
            if (self.f)(&batch[i]) {
                batch.swap(kept, i);
                hashes[kept] = hashes[i];
                kept += 1;
            }
        }
        batch.truncate(kept);
        hashes.truncate(kept);
        out.forward_keyed(batch, hashes);
    }
}

/// Hands a user function's outputs downstream.
pub struct Collector<'a, 'b, O> {
    out: &'a mut Output<'b, O>,
}

impl<O> Collector<'_, '_, O> {
    /// Emits one record.
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.out.collect(record)
    }
}

/// `flat_map`: zero or more records out per record in.
pub struct FlatMap<F, I, O> {
    f: F,
    _t: std::marker::PhantomData<fn(I) -> O>,
}

impl<F, I, O> FlatMap<F, I, O> {
    /// Calls `f` with a collector for each record.
    pub fn new(f: F) -> Self {
        Self {
            f,
            _t: std::marker::PhantomData,
        }
    }
}

impl<I: 'static, O: 'static, F> Operator for FlatMap<F, I, O>
where
    F: FnMut(I, &mut Collector<'_, '_, O>) + 'static,
{
    type In = I;
    type Out = O;
    #[inline]
    fn process(&mut self, batch: &mut Vec<I>, out: &mut Output<'_, O>) {
        let mut c = Collector { out };
        for r in batch.drain(..) {
            (self.f)(r, &mut c);
        }
    }
}

/// Sends every batch and event to several downstreams (an operator with several
/// consumers): the last gets the batch, the others a copy from a reused buffer.
pub struct Tee<T> {
    outs: Vec<BoxEmit<T>>,
    copy: Vec<T>,
}

impl<T> Tee<T> {
    /// Copies to each of `outs`.
    pub fn new(outs: Vec<BoxEmit<T>>) -> Self {
        Self {
            outs,
            copy: Vec::new(),
        }
    }
}

impl<T: Clone> Emit<T> for Tee<T> {
    fn push(&mut self, batch: &mut Vec<T>) {
        if let Some((last, rest)) = self.outs.split_last_mut() {
            for o in rest {
                self.copy.clone_from(batch);
                o.push(&mut self.copy);
                self.copy.clear();
            }
            last.push(batch);
        }
        batch.clear();
    }
    fn event(&mut self, event: Event) {
        for o in &mut self.outs {
            o.event(event);
        }
    }
    fn tick(&mut self, now_ns: u64) {
        for o in &mut self.outs {
            o.tick(now_ns);
        }
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        for o in &mut self.outs {
            o.notify_checkpoint_complete(id);
        }
    }
}

#[cfg(test)]
mod tests;

thread_local! {
    /// A failure an operator reported from inside a call that returns nothing, taken
    /// by the task after its poll. Chains run on one thread, one task poll at a time.
    static FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Reports that the running operator failed (an I/O error in a sink, say). The task
/// fails with this message after the current poll; the first report wins.
pub fn report_failure(message: impl Into<String>) {
    FAILURE.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = Some(message.into());
        }
    });
}

/// Takes the failure reported on this thread, if any.
pub fn take_failure() -> Option<String> {
    FAILURE.with(|f| f.borrow_mut().take())
}
