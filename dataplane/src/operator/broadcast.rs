//! Broadcast state (Flink's broadcast state pattern): a low-volume stream — rules,
//! thresholds, reference data — goes to every subtask of an operator, which keeps what
//! it says in *broadcast state*, the same in every subtask, and reads it while
//! processing the main stream. The main stream may be keyed
//! ([`KeyedBroadcastProcessFunction`], with keyed state and timers) or not
//! ([`BroadcastProcessFunction`]).
//!
//! As in Flink, the broadcast side may change broadcast state and the main side may
//! only read it, so that every subtask's copy stays equal: each sees the same broadcast
//! records in the same order. Records of the two inputs have no order between them.

use super::keyed::{Context, KeyedCore, KeyedStates};
use super::process::ProcessContext;
use super::side::{OutputTag, SideOutputs};
use super::{key_hash, Barrier, Event, Output, TwoInputOperator};
use crate::checkpoint::{decode_state, encode_state, StateData, StateError, StateSnapshot};
use crate::record::Key;

/// Main-stream records with read-only broadcast state, and broadcast records that
/// update it (Flink's `BroadcastProcessFunction`). Each subtask runs its own clone.
pub trait BroadcastProcessFunction: Clone + Send + Sync + 'static {
    /// Main-stream records.
    type In;
    /// Broadcast records.
    type Broadcast;
    /// Output records.
    type Out;
    /// The broadcast state (the same in every subtask).
    type State: Default + StateData;
    /// One main-stream record.
    fn process_element(
        &mut self,
        value: Self::In,
        state: &Self::State,
        ctx: &mut ProcessContext<'_, Self::Out>,
    );
    /// One broadcast record.
    fn process_broadcast_element(
        &mut self,
        value: Self::Broadcast,
        state: &mut Self::State,
        ctx: &mut ProcessContext<'_, Self::Out>,
    );
}

/// Runs a [`BroadcastProcessFunction`]: input 1 is the main stream, input 2 the
/// broadcast stream.
pub struct BroadcastProcess<P: BroadcastProcessFunction> {
    f: P,
    state: P::State,
    sides: SideOutputs,
    now_ns: u64,
    watermark: u64,
}

impl<P: BroadcastProcessFunction> BroadcastProcess<P> {
    /// Runs `f` with empty broadcast state.
    pub fn new(f: P) -> Self {
        Self {
            f,
            state: P::State::default(),
            sides: SideOutputs::default(),
            now_ns: 0,
            watermark: 0,
        }
    }

    /// Sends what the function passes to `ctx.output` to these side outputs.
    pub fn with_side_outputs(mut self, sides: SideOutputs) -> Self {
        self.sides = sides;
        self
    }

    /// The broadcast state.
    pub fn state(&self) -> &P::State {
        &self.state
    }
}

impl<P: BroadcastProcessFunction> TwoInputOperator for BroadcastProcess<P>
where
    P::In: 'static,
    P::Broadcast: 'static,
    P::Out: 'static,
{
    type In1 = P::In;
    type In2 = P::Broadcast;
    type Out = P::Out;

    fn process1(
        &mut self,
        batch: &mut Vec<P::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        hashes.clear();
        let mut ctx =
            ProcessContext::new(self.now_ns, self.watermark, out.buffer(), &mut self.sides);
        for r in batch.drain(..) {
            self.f.process_element(r, &self.state, &mut ctx);
        }
        self.sides.flush();
    }

    fn process2(
        &mut self,
        batch: &mut Vec<P::Broadcast>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        hashes.clear();
        let mut ctx =
            ProcessContext::new(self.now_ns, self.watermark, out.buffer(), &mut self.sides);
        for r in batch.drain(..) {
            self.f
                .process_broadcast_element(r, &mut self.state, &mut ctx);
        }
        self.sides.flush();
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, P::Out>) {
        self.watermark = self.watermark.max(watermark);
        out.watermark(watermark);
        self.sides.event(Event::Watermark(watermark));
    }

    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, P::Out>) {
        out.event(Event::Idle(idle));
        self.sides.event(Event::Idle(idle));
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, P::Out>) {
        out.event(Event::Barrier(barrier));
        self.sides.event(Event::Barrier(barrier));
    }

    fn on_end_of_input(&mut self, _out: &mut Output<'_, P::Out>) {
        self.sides.event(Event::EndOfInput);
    }

    /// Every subtask writes its copy of the broadcast state (equal in all of them).
    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&self.state).map(Some)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        // Equal in every subtask: any old subtask's copy serves at any parallelism.
        crate::checkpoint::restore_replicated();
        self.state = decode_state(state)?;
        Ok(())
    }

    fn on_tick(&mut self, now_ns: u64, _out: &mut Output<'_, P::Out>) {
        self.now_ns = now_ns;
    }
}

/// What a [`KeyedBroadcastProcessFunction`] sees for a broadcast record: the clocks,
/// the outputs, and every key's state (Flink's `applyToKeyedState`).
pub struct BroadcastContext<'a, K, S, O> {
    states: &'a mut KeyedStates<K, S>,
    now_ns: u64,
    watermark: u64,
    out: &'a mut Vec<O>,
    sides: &'a mut SideOutputs,
}

impl<K: Key, S: Default + Clone, O> BroadcastContext<'_, K, S, O> {
    /// Emits a record.
    #[inline]
    pub fn collect(&mut self, record: O) {
        self.out.push(record)
    }
    /// Emits a record to the side output `tag`.
    pub fn output<T: 'static>(&mut self, tag: &OutputTag<T>, record: T) {
        self.sides.output(tag, record)
    }
    /// Calls `f` with every key that has state in this subtask, and its state.
    pub fn apply_to_keyed_state(&mut self, mut f: impl FnMut(&K, &mut S)) {
        for (k, s) in self.states.iter_mut() {
            f(k, s);
        }
    }
    /// Processing time as of the task's last poll, ns.
    pub fn current_processing_time(&self) -> u64 {
        self.now_ns
    }
    /// The operator's current watermark.
    pub fn current_watermark(&self) -> u64 {
        self.watermark
    }
}

/// A keyed main stream with keyed state and timers, read-only broadcast state, and
/// broadcast records that update it (Flink's `KeyedBroadcastProcessFunction`).
pub trait KeyedBroadcastProcessFunction: Clone + Send + Sync + 'static {
    /// The main stream's key.
    type Key: Key;
    /// Main-stream records.
    type In;
    /// Broadcast records.
    type Broadcast;
    /// Output records.
    type Out;
    /// Per-key state.
    type State: Default + StateData;
    /// The broadcast state (the same in every subtask).
    type BroadcastState: Default + StateData;
    /// One main-stream record of the current key.
    fn process_element(
        &mut self,
        value: Self::In,
        state: &mut Self::State,
        broadcast: &Self::BroadcastState,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    );
    /// One broadcast record.
    fn process_broadcast_element(
        &mut self,
        value: Self::Broadcast,
        broadcast: &mut Self::BroadcastState,
        ctx: &mut BroadcastContext<'_, Self::Key, Self::State, Self::Out>,
    );
    /// A timer of the current key fired at `timestamp_ns`.
    fn on_timer(
        &mut self,
        timestamp_ns: u64,
        state: &mut Self::State,
        broadcast: &Self::BroadcastState,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    ) {
        let _ = (timestamp_ns, state, broadcast, ctx);
    }
}

/// Runs a [`KeyedBroadcastProcessFunction`] with the main stream's key selector `KS`:
/// input 1 is the keyed main stream, input 2 the broadcast stream.
pub struct KeyedBroadcastProcess<P: KeyedBroadcastProcessFunction, KS> {
    f: P,
    key: KS,
    core: KeyedCore<P::Key, P::State>,
    broadcast: P::BroadcastState,
}

impl<P: KeyedBroadcastProcessFunction, KS> KeyedBroadcastProcess<P, KS>
where
    KS: Fn(&P::In) -> P::Key + 'static,
{
    /// Runs `f` on main-stream records keyed by `key`.
    pub fn new(f: P, key: KS) -> Self {
        Self {
            f,
            key,
            core: KeyedCore::new(),
            broadcast: P::BroadcastState::default(),
        }
    }

    /// Sends what the function passes to `ctx.output` to these side outputs.
    pub fn with_side_outputs(mut self, sides: SideOutputs) -> Self {
        self.core.sides = sides;
        self
    }
}

impl<P: KeyedBroadcastProcessFunction, KS> TwoInputOperator for KeyedBroadcastProcess<P, KS>
where
    KS: Fn(&P::In) -> P::Key + 'static,
    P::In: 'static,
    P::Broadcast: 'static,
    P::Out: 'static,
{
    type In1 = P::In;
    type In2 = P::Broadcast;
    type Out = P::Out;

    fn process1(
        &mut self,
        batch: &mut Vec<P::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
        }
        let buf = out.buffer();
        for (i, r) in batch.drain(..).enumerate() {
            let key = (self.key)(&r);
            let hash = hashes.get(i).copied().unwrap_or_else(|| key_hash(&key));
            let (f, b) = (&mut self.f, &self.broadcast);
            self.core
                .with_key(hash, key, buf, |st, ctx| f.process_element(r, st, b, ctx));
        }
        hashes.clear();
        self.core.flush_sides(None);
    }

    fn process2(
        &mut self,
        batch: &mut Vec<P::Broadcast>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        hashes.clear();
        let core = &mut self.core;
        let mut ctx = BroadcastContext {
            states: &mut core.states,
            now_ns: core.now_ns,
            watermark: core.watermark,
            out: out.buffer(),
            sides: &mut core.sides,
        };
        for r in batch.drain(..) {
            self.f
                .process_broadcast_element(r, &mut self.broadcast, &mut ctx);
        }
        self.core.flush_sides(None);
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, P::Out>) {
        let (f, b) = (&mut self.f, &self.broadcast);
        self.core
            .advance_watermark(watermark, out.buffer(), |at, st, ctx| {
                f.on_timer(at, st, b, ctx)
            });
        out.watermark(watermark);
        self.core.flush_sides(Some(Event::Watermark(watermark)));
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, P::Out>) {
        let (f, b) = (&mut self.f, &self.broadcast);
        self.core.advance_time(now_ns, out.buffer(), |at, st, ctx| {
            f.on_timer(at, st, b, ctx)
        });
        self.core.flush_sides(None);
    }

    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, P::Out>) {
        out.event(Event::Idle(idle));
        self.core.flush_sides(Some(Event::Idle(idle)));
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, P::Out>) {
        out.event(Event::Barrier(barrier));
        self.core.flush_sides(Some(Event::Barrier(barrier)));
    }

    fn on_end_of_input(&mut self, _out: &mut Output<'_, P::Out>) {
        self.core.flush_sides(Some(Event::EndOfInput));
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.freeze_state()?.map(StateSnapshot::finish).transpose()
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        // The keyed state freezes in O(chunks); the broadcast state (small, by
        // design: every subtask holds all of it) is copied.
        let keyed = self.core.freeze();
        let broadcast = self.broadcast.clone();
        Ok(Some(StateSnapshot::frozen(move || {
            encode_state(&(keyed.finish()?, broadcast))
        })))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (keyed, broadcast): (Vec<u8>, P::BroadcastState) = decode_state(state)?;
        self.core.restore(&keyed)?;
        self.broadcast = broadcast;
        Ok(())
    }
}
