//! Keyed operators: per-key state (value, list, map), processing-time timers, the
//! KeyedProcessFunction, and rolling reduce.
//!
//! State is scoped to the current key as in Flink: a function declares its per-key state
//! as a struct of [`ValueState`], [`ListState`] and [`MapState`] fields (any
//! `Default` type works), and the operator hands it the current key's instance. Steady
//! state is one hash lookup per record and no allocation (a new key allocates its slot).

use super::{BoxEmit, Emit};
use crate::record::Key;
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One value per key.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone)]
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

/// Processing-time timers per key: registering the same (key, time) twice keeps one.
#[derive(Debug)]
pub struct Timers<K> {
    by_time: BTreeMap<u64, Vec<K>>,
    set: FxHashSet<(K, u64)>,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            by_time: BTreeMap::new(),
            set: FxHashSet::default(),
        }
    }
}

impl<K: Key> Timers<K> {
    fn register(&mut self, key: &K, at_ns: u64) {
        if self.set.insert((key.clone(), at_ns)) {
            self.by_time.entry(at_ns).or_default().push(key.clone());
        }
    }

    fn delete(&mut self, key: &K, at_ns: u64) {
        if self.set.remove(&(key.clone(), at_ns)) {
            if let Some(keys) = self.by_time.get_mut(&at_ns) {
                keys.retain(|k| k != key);
                if keys.is_empty() {
                    self.by_time.remove(&at_ns);
                }
            }
        }
    }

    /// The earliest timer due at `now_ns`, removed.
    fn pop_due(&mut self, now_ns: u64) -> Option<(u64, K)> {
        let mut entry = self.by_time.first_entry()?;
        if *entry.key() > now_ns {
            return None;
        }
        let at = *entry.key();
        let key = entry.get_mut().pop()?;
        if entry.get().is_empty() {
            entry.remove();
        }
        self.set.remove(&(key.clone(), at));
        Some((at, key))
    }

    /// Number of registered timers.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// What a [`KeyedProcessFunction`] sees besides the record and its state.
pub struct Context<'a, K: Key, O> {
    key: &'a K,
    now_ns: u64,
    timers: &'a mut Timers<K>,
    out: &'a mut dyn Emit<O>,
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
    /// Emits a record.
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.out.emit(record)
    }
    /// Calls `on_timer` for the current key once processing time reaches `at_ns`.
    pub fn register_processing_time_timer(&mut self, at_ns: u64) {
        self.timers.register(self.key, at_ns);
    }
    /// Deletes a timer of the current key registered for `at_ns`.
    pub fn delete_processing_time_timer(&mut self, at_ns: u64) {
        self.timers.delete(self.key, at_ns);
    }
}

/// Per-event logic on a keyed stream, with per-key state and processing-time timers.
/// Each subtask runs its own clone of the function.
pub trait KeyedProcessFunction: Clone + Send + Sync + 'static {
    /// The key type.
    type Key: Key;
    /// Input records.
    type In;
    /// Output records.
    type Out;
    /// Per-key state.
    type State: Default + 'static;

    /// One record of the current key.
    fn process_element(
        &mut self,
        value: Self::In,
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

/// Extracts a record's key.
pub type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// Runs a [`KeyedProcessFunction`].
pub struct KeyedProcess<P: KeyedProcessFunction> {
    f: P,
    key: KeyFn<P::In, P::Key>,
    states: FxHashMap<P::Key, P::State>,
    timers: Timers<P::Key>,
    /// Timers being fired (kept for its capacity).
    due: Vec<(u64, P::Key)>,
    now_ns: u64,
    out: BoxEmit<P::Out>,
}

impl<P: KeyedProcessFunction> KeyedProcess<P> {
    /// Runs `f` on records keyed by `key`, emitting to `out`.
    pub fn new(f: P, key: KeyFn<P::In, P::Key>, out: BoxEmit<P::Out>) -> Self {
        Self {
            f,
            key,
            states: FxHashMap::default(),
            timers: Timers::default(),
            due: Vec::new(),
            now_ns: 0,
            out,
        }
    }

    /// Keys with state.
    pub fn key_count(&self) -> usize {
        self.states.len()
    }
}

impl<P: KeyedProcessFunction> Emit<P::In> for KeyedProcess<P> {
    #[inline]
    fn emit(&mut self, record: P::In) {
        let key = (self.key)(&record);
        // One lookup in steady state; a new key takes a second (and its allocation).
        let state = match self.states.get_mut(&key) {
            Some(s) => s,
            None => self.states.entry(key.clone()).or_default(),
        };
        let mut ctx = Context {
            key: &key,
            now_ns: self.now_ns,
            timers: &mut self.timers,
            out: &mut *self.out,
        };
        self.f.process_element(record, state, &mut ctx);
    }

    fn tick(&mut self, now_ns: u64) {
        self.now_ns = now_ns;
        // Take the due timers first, then fire them: a timer registered while firing
        // (even for a time already past) waits for the next tick, so a function that
        // re-arms its timer cannot keep this loop from returning.
        let mut due = std::mem::take(&mut self.due);
        while let Some(t) = self.timers.pop_due(now_ns) {
            due.push(t);
        }
        for (at, key) in due.drain(..) {
            let state = self.states.entry(key.clone()).or_default();
            let mut ctx = Context {
                key: &key,
                now_ns,
                timers: &mut self.timers,
                out: &mut *self.out,
            };
            self.f.on_timer(at, state, &mut ctx);
        }
        self.due = due;
        self.out.tick(now_ns);
    }

    fn finish(&mut self) {
        self.out.finish();
    }
}

/// Rolling reduce on a keyed stream: emits the new aggregate after every record.
pub struct KeyedReduce<T, K, F> {
    f: F,
    key: KeyFn<T, K>,
    /// `None` only while the reduce function runs.
    acc: FxHashMap<K, Option<T>>,
    out: BoxEmit<T>,
}

impl<T, K, F> KeyedReduce<T, K, F> {
    /// Reduces records of each key with `f(accumulated, new)`.
    pub fn new(f: F, key: KeyFn<T, K>, out: BoxEmit<T>) -> Self {
        Self {
            f,
            key,
            acc: FxHashMap::default(),
            out,
        }
    }
}

impl<T: Clone, K: Key, F: FnMut(T, T) -> T> Emit<T> for KeyedReduce<T, K, F> {
    #[inline]
    fn emit(&mut self, record: T) {
        let key = (self.key)(&record);
        // One clone per record: the aggregate is both kept and emitted.
        match self.acc.get_mut(&key) {
            Some(slot) => {
                let next = match slot.take() {
                    Some(acc) => (self.f)(acc, record),
                    None => record,
                };
                *slot = Some(next.clone());
                self.out.emit(next);
            }
            None => {
                self.acc.insert(key, Some(record.clone()));
                self.out.emit(record);
            }
        }
    }
    fn tick(&mut self, now_ns: u64) {
        self.out.tick(now_ns)
    }
    fn finish(&mut self) {
        self.out.finish()
    }
}
