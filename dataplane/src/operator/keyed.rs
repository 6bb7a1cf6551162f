//! Keyed operators: per-key state (value, list, map), timers in processing and event
//! time, the KeyedProcessFunction, and rolling reduce.
//!
//! State is scoped to the current key as in Flink: a function declares its per-key state
//! as a struct of [`ValueState`], [`ListState`] and [`MapState`] fields (any
//! `Default` type works), and the operator hands it the current key's instance.
//!
//! The runtime owns the state ([`KeyedStates`]), never a closure: entries sit densely
//! in one vector, found through a hash table of indices probed with the key's hash,
//! which a key exchange computed once and carried with the record. Steady state is one
//! probe per record and no allocation (a new key allocates its slot).

use super::side::{OutputTag, SideOutputs};
use super::{key_hash, Barrier, Event, Operator, Output, TwoInputOperator};
use crate::checkpoint::{decode_state, encode_state, StateData, StateError};
use crate::record::Key;
use hashbrown::HashTable;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

/// One value per key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ValueState<V>(Option<V>);

impl<V> Default for ValueState<V> {
    fn default() -> Self {
        Self(None)
    }
}

impl<V> ValueState<V> {
    /// The value, if set.
    pub fn value(&self) -> Option<&V> {
        self.0.as_ref()
    }
    /// Mutable access to the value, if set.
    pub fn value_mut(&mut self) -> Option<&mut V> {
        self.0.as_mut()
    }
    /// The value, set to `init()` first if unset.
    pub fn get_or_insert_with(&mut self, init: impl FnOnce() -> V) -> &mut V {
        self.0.get_or_insert_with(init)
    }
    /// Sets the value.
    pub fn update(&mut self, v: V) {
        self.0 = Some(v);
    }
    /// Unsets the value.
    pub fn clear(&mut self) {
        self.0 = None;
    }
}

/// A list per key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListState<V>(Vec<V>);

impl<V> Default for ListState<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> ListState<V> {
    /// Appends.
    pub fn add(&mut self, v: V) {
        self.0.push(v);
    }
    /// The elements.
    pub fn get(&self) -> &[V] {
        &self.0
    }
    /// Replaces the elements.
    pub fn update(&mut self, values: Vec<V>) {
        self.0 = values;
    }
    /// Removes every element (keeping the capacity).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// A map per key.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "K: serde::Serialize + Eq + std::hash::Hash, V: serde::Serialize",
    deserialize = "K: serde::Deserialize<'de> + Eq + std::hash::Hash, V: serde::Deserialize<'de>"
))]
pub struct MapState<K, V>(FxHashMap<K, V>);

impl<K, V> Default for MapState<K, V> {
    fn default() -> Self {
        Self(FxHashMap::default())
    }
}

impl<K: std::hash::Hash + Eq, V> MapState<K, V> {
    /// The value under `k`.
    pub fn get(&self, k: &K) -> Option<&V> {
        self.0.get(k)
    }
    /// Mutable value under `k`.
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.0.get_mut(k)
    }
    /// Puts `v` under `k`, returning the old value.
    pub fn put(&mut self, k: K, v: V) -> Option<V> {
        self.0.insert(k, v)
    }
    /// Removes `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        self.0.remove(k)
    }
    /// Whether `k` is present.
    pub fn contains(&self, k: &K) -> bool {
        self.0.contains_key(k)
    }
    /// Entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter()
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Removes everything.
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Per-key state of one operator subtask: entries `(key, state)` stored densely, in
/// order of first appearance, and a table of their indices probed by key hash.
///
/// W1's 1000 symbols with 24-byte states take 32 KiB of entries and 8 KiB of index
/// table, so they stay in a 48 KiB L1 data cache.
#[derive(Debug)]
pub struct KeyedStates<K, S> {
    index: HashTable<u32>,
    entries: Vec<(K, S)>,
}

impl<K, S> Default for KeyedStates<K, S> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            entries: Vec::new(),
        }
    }
}

/// The hash the table probes with: the key hash remixed, because the exchange picks a
/// key's subtask from the hash's top bits, which are also where the table takes its
/// 7-bit tags from; without the remix, a subtask's keys would share their tags' top
/// bits at high parallelism.
#[inline(always)]
fn table_hash(hash: u64) -> u64 {
    (hash ^ (hash >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl<K: Key, S: Default> KeyedStates<K, S> {
    /// The state of `key`, whose hash is `hash` (as [`key_hash`] computes it), created
    /// with `S::default()` on the key's first record.
    #[inline(always)]
    pub fn get_or_insert(&mut self, hash: u64, key: K) -> (&K, &mut S) {
        let (_, k, s) = self.get_or_insert_at(hash, key);
        (k, s)
    }

    /// As [`Self::get_or_insert`], with the entry's index (entries keep their index
    /// until one is removed; a new key's is the number of keys before it).
    #[inline(always)]
    pub fn get_or_insert_at(&mut self, hash: u64, key: K) -> (usize, &K, &mut S) {
        let hash = table_hash(hash);
        let entries = &mut self.entries;
        let found = self
            .index
            .find(hash, |&i| {
                entries.get(i as usize).is_some_and(|e| e.0 == key)
            })
            .copied();
        let i = match found {
            Some(i) => i as usize,
            None => {
                let i = entries.len();
                entries.push((key, S::default()));
                self.index.insert_unique(hash, i as u32, |&j| {
                    table_hash(key_hash(&entries[j as usize].0))
                });
                i
            }
        };
        let (k, s) = &mut self.entries[i];
        (i, k, s)
    }

    /// Removes `key` (whose hash is `hash`) and its state; the last entry moves into
    /// its place.
    pub fn remove(&mut self, hash: u64, key: &K) -> Option<S> {
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(table_hash(hash), |&i| {
                entries.get(i as usize).is_some_and(|e| &e.0 == key)
            })
            .ok()?;
        let (i, _) = found.remove();
        let i = i as usize;
        let last = self.entries.len() - 1;
        let (_, state) = self.entries.swap_remove(i);
        if i != last {
            // The entry that was last now sits at `i`: repoint its index slot.
            let moved = table_hash(key_hash(&self.entries[i].0));
            if let Some(slot) = self.index.find_mut(moved, |&j| j as usize == last) {
                *slot = i as u32;
            }
        }
        Some(state)
    }

    /// The state of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<&S> {
        let i = self.index.find(table_hash(key_hash(key)), |&i| {
            self.entries.get(i as usize).is_some_and(|e| &e.0 == key)
        })?;
        self.entries.get(*i as usize).map(|e| &e.1)
    }

    /// Keys with state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every key, keeping the capacity.
    pub fn clear(&mut self) {
        self.index.clear();
        self.entries.clear();
    }

    /// Every key's state, in order of first appearance (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.entries.iter().map(|(k, s)| (k, s))
    }

    /// Every key's state, mutable, in order of first appearance.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut S)> {
        self.entries.iter_mut().map(|(k, s)| (&*k, s))
    }

    /// The entries as they are stored (for snapshots).
    pub fn entries(&self) -> &[(K, S)] {
        &self.entries
    }

    /// Adds `entries` from a snapshot (a key given twice keeps its last state); when
    /// the state is being redistributed to another parallelism, only the keys of this
    /// subtask's key groups (see [`crate::checkpoint::restore_filter`]).
    pub fn restore(&mut self, entries: Vec<(K, S)>) {
        let keep = crate::checkpoint::restore_filter();
        self.entries.reserve(entries.len());
        let existing = &self.entries;
        self.index.reserve(entries.len(), |&j| {
            table_hash(key_hash(&existing[j as usize].0))
        });
        for (k, st) in entries {
            let h = key_hash(&k);
            if keep.is_some_and(|r| !r.owns(h)) {
                continue;
            }
            let (_, slot) = self.get_or_insert(h, k);
            *slot = st;
        }
    }
}

/// Timers per key in one time domain: registering the same (key, time) twice keeps
/// one; timers fire in order of their time, and timers of equal time in the order
/// they were registered (as Flink fires them).
#[derive(Debug)]
pub struct Timers<K> {
    /// (time, registration number) → key.
    queue: BTreeMap<(u64, u64), K>,
    /// (key, time) → registration number.
    registered: FxHashMap<(K, u64), u64>,
    next_seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            queue: BTreeMap::new(),
            registered: FxHashMap::default(),
            next_seq: 0,
        }
    }
}

impl<K: Key> Timers<K> {
    pub(crate) fn register(&mut self, key: &K, at_ns: u64) {
        let id = (key.clone(), at_ns);
        if self.registered.contains_key(&id) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.registered.insert(id, seq);
        self.queue.insert((at_ns, seq), key.clone());
    }

    pub(crate) fn delete(&mut self, key: &K, at_ns: u64) {
        if let Some(seq) = self.registered.remove(&(key.clone(), at_ns)) {
            self.queue.remove(&(at_ns, seq));
        }
    }

    /// The registration number the next timer gets: timers registered from now on
    /// have this number or a higher one.
    pub(crate) fn mark(&self) -> u64 {
        self.next_seq
    }

    /// The earliest timer due at `now_ns`, removed, if it was registered before
    /// `mark` (a timer registered while timers fire waits for the next round, so a
    /// function that re-arms its timer for a time already past cannot keep the task
    /// from returning).
    pub(crate) fn pop_due(&mut self, now_ns: u64, mark: u64) -> Option<(u64, K)> {
        let entry = self.queue.first_entry()?;
        let (at, seq) = *entry.key();
        if at > now_ns || seq >= mark {
            return None;
        }
        let key = entry.remove();
        self.registered.remove(&(key.clone(), at));
        Some((at, key))
    }

    /// Every timer as (time, key), in the order they fire (for snapshots).
    pub fn snapshot(&self) -> Vec<(u64, &K)> {
        self.queue.iter().map(|((at, _), k)| (*at, k)).collect()
    }

    /// Registers `timers` from a snapshot, in their order; when the state is being
    /// redistributed, only those of this subtask's key groups.
    pub fn restore(&mut self, timers: Vec<(u64, K)>) {
        let keep = crate::checkpoint::restore_filter();
        for (at, k) in timers {
            if keep.is_some_and(|r| !r.owns(key_hash(&k))) {
                continue;
            }
            self.register(&k, at);
        }
    }

    /// Time of the earliest timer.
    pub fn next_time(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(k, _)| k.0)
    }

    /// Number of registered timers.
    pub fn len(&self) -> usize {
        self.registered.len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.registered.is_empty()
    }
}

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    /// Processing time (the data plane's clock).
    ProcessingTime,
    /// Event time (watermarks).
    EventTime,
}

/// What a [`KeyedProcessFunction`] sees besides the record and its state.
pub struct Context<'a, K: Key, O> {
    key: &'a K,
    now_ns: u64,
    watermark: u64,
    domain: Option<TimeDomain>,
    processing: &'a mut Timers<K>,
    event: &'a mut Timers<K>,
    out: &'a mut Vec<O>,
    sides: &'a mut SideOutputs,
}

impl<K: Key, O> Context<'_, K, O> {
    /// The key of the record (or timer) being processed.
    pub fn current_key(&self) -> &K {
        self.key
    }
    /// Processing time as of the task's last poll, ns.
    pub fn current_processing_time(&self) -> u64 {
        self.now_ns
    }
    /// The operator's current watermark (event time, ns; 0 before the first).
    pub fn current_watermark(&self) -> u64 {
        self.watermark
    }
    /// In `on_timer`: the domain of the timer that fired.
    pub fn time_domain(&self) -> Option<TimeDomain> {
        self.domain
    }
    /// Emits a record.
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.out.push(record)
    }
    /// Emits a record to the side output `tag` (Flink's `ctx.output`); read it with
    /// `get_side_output(&tag)` on this operator's stream.
    #[inline]
    pub fn output<S: 'static>(&mut self, tag: &OutputTag<S>, record: S) {
        self.sides.output(tag, record)
    }
    /// Calls `on_timer` for the current key once processing time reaches `at_ns`.
    pub fn register_processing_time_timer(&mut self, at_ns: u64) {
        self.processing.register(self.key, at_ns);
    }
    /// Deletes a processing-time timer of the current key registered for `at_ns`.
    pub fn delete_processing_time_timer(&mut self, at_ns: u64) {
        self.processing.delete(self.key, at_ns);
    }
    /// Calls `on_timer` for the current key once the watermark reaches `at_ns`.
    pub fn register_event_time_timer(&mut self, at_ns: u64) {
        self.event.register(self.key, at_ns);
    }
    /// Deletes an event-time timer of the current key registered for `at_ns`.
    pub fn delete_event_time_timer(&mut self, at_ns: u64) {
        self.event.delete(self.key, at_ns);
    }
}

/// Per-event logic on a keyed stream, with per-key state and timers.
/// Each subtask runs its own clone of the function.
pub trait KeyedProcessFunction: Clone + Send + Sync + 'static {
    /// The key type.
    type Key: Key;
    /// Input records.
    type In;
    /// Output records.
    type Out;
    /// Per-key state.
    type State: Default + StateData;

    /// One record of the current key.
    fn process_element(
        &mut self,
        value: Self::In,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    );

    /// A timer of the current key fired at `timestamp_ns` (`ctx.time_domain()` says
    /// which clock it followed).
    fn on_timer(
        &mut self,
        timestamp_ns: u64,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    ) {
        let _ = (timestamp_ns, state, ctx);
    }
}

/// What keyed process operators share: per-key state, timers in both domains, and the
/// operator's clocks.
pub(crate) struct KeyedCore<K, S> {
    pub(crate) states: KeyedStates<K, S>,
    pub(crate) processing: Timers<K>,
    pub(crate) event: Timers<K>,
    pub(crate) now_ns: u64,
    pub(crate) watermark: u64,
    pub(crate) sides: SideOutputs,
}

impl<K: Key, S: Default> KeyedCore<K, S> {
    pub(crate) fn new() -> Self {
        Self {
            states: KeyedStates::default(),
            processing: Timers::default(),
            event: Timers::default(),
            now_ns: 0,
            watermark: 0,
            sides: SideOutputs::default(),
        }
    }

    /// The per-key states and timers, encoded for a checkpoint.
    pub(crate) fn snapshot(&self) -> Result<Vec<u8>, StateError>
    where
        S: StateData,
    {
        encode_state(&(
            self.states.entries(),
            self.processing.snapshot(),
            self.event.snapshot(),
        ))
    }

    /// Takes back what [`Self::snapshot`] wrote.
    pub(crate) fn restore(&mut self, bytes: &[u8]) -> Result<(), StateError>
    where
        S: StateData,
    {
        type Snap<K, S> = (Vec<(K, S)>, Vec<(u64, K)>, Vec<(u64, K)>);
        let (entries, processing, event): Snap<K, S> = decode_state(bytes)?;
        self.states.restore(entries);
        self.processing.restore(processing);
        self.event.restore(event);
        Ok(())
    }

    /// Side-output records go out (after a batch), then `event` if any, on each.
    pub(crate) fn flush_sides(&mut self, event: Option<Event>) {
        match event {
            Some(e) => self.sides.event(e),
            None => self.sides.flush(),
        }
    }

    /// Calls `f` with `key`'s state and a context for it.
    #[inline(always)]
    pub(crate) fn with_key<O>(
        &mut self,
        hash: u64,
        key: K,
        out: &mut Vec<O>,
        f: impl FnOnce(&mut S, &mut Context<'_, K, O>),
    ) {
        let (key, state) = self.states.get_or_insert(hash, key);
        let mut ctx = Context {
            key,
            now_ns: self.now_ns,
            watermark: self.watermark,
            domain: None,
            processing: &mut self.processing,
            event: &mut self.event,
            out,
            sides: &mut self.sides,
        };
        f(state, &mut ctx);
    }

    /// Fires the timers of `domain` due at `time` through `on_timer`. In event time,
    /// timers registered while firing for a time already passed fire too (as in Flink:
    /// there may be no later watermark, e.g. after the end of time); in processing time
    /// they wait for the next tick, so a function that re-arms its timer cannot hold the
    /// slot.
    pub(crate) fn fire<O>(
        &mut self,
        domain: TimeDomain,
        time: u64,
        out: &mut Vec<O>,
        mut on_timer: impl FnMut(u64, &mut S, &mut Context<'_, K, O>),
    ) {
        let mark = match domain {
            TimeDomain::ProcessingTime => self.processing.mark(),
            TimeDomain::EventTime => u64::MAX,
        };
        loop {
            let due = match domain {
                TimeDomain::ProcessingTime => self.processing.pop_due(time, mark),
                TimeDomain::EventTime => self.event.pop_due(time, mark),
            };
            let Some((at, key)) = due else { break };
            let (key, state) = self.states.get_or_insert(key_hash(&key), key);
            let mut ctx = Context {
                key,
                now_ns: self.now_ns,
                watermark: self.watermark,
                domain: Some(domain),
                processing: &mut self.processing,
                event: &mut self.event,
                out,
                sides: &mut self.sides,
            };
            on_timer(at, state, &mut ctx);
        }
    }

    /// The watermark advanced: event-time timers fire (before it goes on).
    pub(crate) fn advance_watermark<O>(
        &mut self,
        watermark: u64,
        out: &mut Vec<O>,
        on_timer: impl FnMut(u64, &mut S, &mut Context<'_, K, O>),
    ) {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.fire(TimeDomain::EventTime, watermark, out, on_timer);
        }
    }

    /// Processing time advanced: due processing-time timers fire.
    pub(crate) fn advance_time<O>(
        &mut self,
        now_ns: u64,
        out: &mut Vec<O>,
        on_timer: impl FnMut(u64, &mut S, &mut Context<'_, K, O>),
    ) {
        self.now_ns = now_ns;
        if self.processing.next_time().is_some_and(|t| t <= now_ns) {
            self.fire(TimeDomain::ProcessingTime, now_ns, out, on_timer);
        }
    }
}

/// Runs a [`KeyedProcessFunction`] on records keyed by a key selector `KS`.
pub struct KeyedProcess<P: KeyedProcessFunction, KS> {
    f: P,
    key: KS,
    core: KeyedCore<P::Key, P::State>,
}

impl<P: KeyedProcessFunction, KS> KeyedProcess<P, KS>
where
    KS: Fn(&P::In) -> P::Key + 'static,
{
    /// Runs `f` on records keyed by `key`.
    pub fn new(f: P, key: KS) -> Self {
        Self {
            f,
            key,
            core: KeyedCore::new(),
        }
    }

    /// Sends what the function passes to `ctx.output` to these side outputs.
    pub fn with_side_outputs(mut self, sides: SideOutputs) -> Self {
        self.core.sides = sides;
        self
    }

    /// Keys with state.
    pub fn key_count(&self) -> usize {
        self.core.states.len()
    }

    /// Pending timers (processing time, event time).
    pub fn timer_count(&self) -> (usize, usize) {
        (self.core.processing.len(), self.core.event.len())
    }

    #[inline(always)]
    fn one(&mut self, hash: u64, key: P::Key, record: P::In, out: &mut Vec<P::Out>) {
        let f = &mut self.f;
        self.core.with_key(hash, key, out, |state, ctx| {
            f.process_element(record, state, ctx)
        });
    }
}

impl<P: KeyedProcessFunction, KS> Operator for KeyedProcess<P, KS>
where
    KS: Fn(&P::In) -> P::Key + 'static,
    P::In: 'static,
    P::Out: 'static,
{
    type In = P::In;
    type Out = P::Out;

    #[inline]
    fn process(&mut self, batch: &mut Vec<P::In>, out: &mut Output<'_, P::Out>) {
        let buf = out.buffer();
        for record in batch.drain(..) {
            let key = (self.key)(&record);
            let hash = key_hash(&key);
            self.one(hash, key, record, buf);
        }
        self.core.flush_sides(None);
    }

    #[inline]
    fn process_keyed(
        &mut self,
        batch: &mut Vec<P::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
            return self.process(batch, out);
        }
        let buf = out.buffer();
        for (record, hash) in batch.drain(..).zip(hashes.drain(..)) {
            let key = (self.key)(&record);
            self.one(hash, key, record, buf);
        }
        self.core.flush_sides(None);
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, P::Out>) {
        let f = &mut self.f;
        self.core
            .advance_watermark(watermark, out.buffer(), |at, st, ctx| {
                f.on_timer(at, st, ctx)
            });
        out.watermark(watermark);
        self.core.flush_sides(Some(Event::Watermark(watermark)));
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, P::Out>) {
        let f = &mut self.f;
        self.core
            .advance_time(now_ns, out.buffer(), |at, st, ctx| f.on_timer(at, st, ctx));
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
        // Side outputs are streams of their own: they end here too.
        self.core.flush_sides(Some(Event::EndOfInput));
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.core.snapshot().map(Some)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.core.restore(state)
    }
}

/// Rolling reduce on a keyed stream: emits the new aggregate after every record.
pub struct KeyedReduce<T, K, F, KS> {
    f: F,
    key: KS,
    /// `None` only while the reduce function runs.
    acc: KeyedStates<K, Option<T>>,
}

impl<T, K: Key, F, KS> KeyedReduce<T, K, F, KS> {
    /// Reduces records of each key (as `key` selects it) with `f(accumulated, new)`.
    pub fn new(f: F, key: KS) -> Self {
        Self {
            f,
            key,
            acc: KeyedStates::default(),
        }
    }

    #[inline(always)]
    fn one(&mut self, hash: u64, key: K, record: T, out: &mut Vec<T>)
    where
        T: Clone,
        F: FnMut(T, T) -> T,
    {
        let (_, slot) = self.acc.get_or_insert(hash, key);
        // One clone per record: the aggregate is both kept and emitted.
        let next = match slot.take() {
            Some(acc) => (self.f)(acc, record),
            None => record,
        };
        out.push(next.clone());
        *slot = Some(next);
    }
}

impl<T, K, F, KS> Operator for KeyedReduce<T, K, F, KS>
where
    T: Clone + crate::record::Wire,
    K: Key,
    F: FnMut(T, T) -> T + 'static,
    KS: Fn(&T) -> K + 'static,
{
    type In = T;
    type Out = T;

    #[inline]
    fn process(&mut self, batch: &mut Vec<T>, out: &mut Output<'_, T>) {
        let buf = out.buffer();
        for record in batch.drain(..) {
            let key = (self.key)(&record);
            let hash = key_hash(&key);
            self.one(hash, key, record, buf);
        }
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
        let buf = out.buffer();
        for (record, hash) in batch.drain(..).zip(hashes.drain(..)) {
            let key = (self.key)(&record);
            self.one(hash, key, record, buf);
        }
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        let entries: Vec<(&K, Option<crate::checkpoint::WireRef<'_, T>>)> = self
            .acc
            .iter()
            .map(|(k, v)| (k, v.as_ref().map(crate::checkpoint::WireRef)))
            .collect();
        encode_state(&entries).map(Some)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let entries: Vec<(K, Option<crate::checkpoint::WireState<T>>)> = decode_state(state)?;
        self.acc.restore(
            entries
                .into_iter()
                .map(|(k, v)| (k, v.map(|w| w.0)))
                .collect(),
        );
        Ok(())
    }
}

/// Per-record logic over two connected, keyed streams with per-key state shared by
/// both sides and timers (Flink's `KeyedCoProcessFunction`): a record of either input
/// sees the state of its key.
pub trait KeyedCoProcessFunction: Clone + Send + Sync + 'static {
    /// The key type (both inputs are keyed by it).
    type Key: Key;
    /// Records of the first input.
    type In1;
    /// Records of the second input.
    type In2;
    /// Output records.
    type Out;
    /// Per-key state.
    type State: Default + StateData;

    /// One record of the first input.
    fn process_element1(
        &mut self,
        value: Self::In1,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    );

    /// One record of the second input.
    fn process_element2(
        &mut self,
        value: Self::In2,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    );

    /// A timer of the current key fired at `timestamp_ns`.
    fn on_timer(
        &mut self,
        timestamp_ns: u64,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    ) {
        let _ = (timestamp_ns, state, ctx);
    }
}

/// Runs a [`KeyedCoProcessFunction`] with key selectors `KS1` and `KS2`.
pub struct KeyedCoProcess<P: KeyedCoProcessFunction, KS1, KS2> {
    f: P,
    key1: KS1,
    key2: KS2,
    core: KeyedCore<P::Key, P::State>,
}

impl<P: KeyedCoProcessFunction, KS1, KS2> KeyedCoProcess<P, KS1, KS2>
where
    KS1: Fn(&P::In1) -> P::Key + 'static,
    KS2: Fn(&P::In2) -> P::Key + 'static,
{
    /// Runs `f`, keying the inputs with `key1` and `key2`.
    pub fn new(f: P, key1: KS1, key2: KS2) -> Self {
        Self {
            f,
            key1,
            key2,
            core: KeyedCore::new(),
        }
    }

    /// Sends what the function passes to `ctx.output` to these side outputs.
    pub fn with_side_outputs(mut self, sides: SideOutputs) -> Self {
        self.core.sides = sides;
        self
    }
}

/// The hash of each record's key: the exchange's, when it carried them.
#[inline(always)]
fn hash_at<K: Key>(hashes: &[u64], i: usize, key: &K) -> u64 {
    match hashes.get(i) {
        Some(&h) => h,
        None => key_hash(key),
    }
}

impl<P: KeyedCoProcessFunction, KS1, KS2> TwoInputOperator for KeyedCoProcess<P, KS1, KS2>
where
    KS1: Fn(&P::In1) -> P::Key + 'static,
    KS2: Fn(&P::In2) -> P::Key + 'static,
    P::In1: 'static,
    P::In2: 'static,
    P::Out: 'static,
{
    type In1 = P::In1;
    type In2 = P::In2;
    type Out = P::Out;

    fn process1(
        &mut self,
        batch: &mut Vec<P::In1>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
        }
        let buf = out.buffer();
        for (i, r) in batch.drain(..).enumerate() {
            let key = (self.key1)(&r);
            let hash = hash_at(hashes, i, &key);
            let f = &mut self.f;
            self.core
                .with_key(hash, key, buf, |st, ctx| f.process_element1(r, st, ctx));
        }
        hashes.clear();
        self.core.flush_sides(None);
    }

    fn process2(
        &mut self,
        batch: &mut Vec<P::In2>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, P::Out>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
        }
        let buf = out.buffer();
        for (i, r) in batch.drain(..).enumerate() {
            let key = (self.key2)(&r);
            let hash = hash_at(hashes, i, &key);
            let f = &mut self.f;
            self.core
                .with_key(hash, key, buf, |st, ctx| f.process_element2(r, st, ctx));
        }
        hashes.clear();
        self.core.flush_sides(None);
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, P::Out>) {
        let f = &mut self.f;
        self.core
            .advance_watermark(watermark, out.buffer(), |at, st, ctx| {
                f.on_timer(at, st, ctx)
            });
        out.watermark(watermark);
        self.core.flush_sides(Some(Event::Watermark(watermark)));
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, P::Out>) {
        let f = &mut self.f;
        self.core
            .advance_time(now_ns, out.buffer(), |at, st, ctx| f.on_timer(at, st, ctx));
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
        // Side outputs are streams of their own: they end here too.
        self.core.flush_sides(Some(Event::EndOfInput));
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.core.snapshot().map(Some)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.core.restore(state)
    }
}
