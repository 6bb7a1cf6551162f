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

use super::cow::{Chunks, Frozen};
use super::side::{OutputTag, SideOutputs};
use super::{key_hash, Barrier, Event, Operator, Output, TwoInputOperator};
use crate::checkpoint::{decode_state, encode_state, StateData, StateError, StateSnapshot};
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
/// order of first appearance, in chunks of [`CHUNK`], and a table of their indices
/// probed by key hash.
///
/// A checkpoint freezes the state in O(chunks) ([`KeyedStates::freeze`]: one reference
/// per 1024 keys): the snapshot shares the chunks, the first write to a chunk after
/// the freeze copies it, and the snapshot is encoded off the slot's core.
///
/// Integer keys below [`DIRECT_KEYS`] find their entry by position instead of by
/// hash: W1's 1000 symbols with 24-byte states take 32 KiB of entries and 4 KiB of
/// positions, so they stay in a 48 KiB L1 data cache, and a record costs one load to
/// find its state, no hash table probe.
#[derive(Debug)]
pub struct KeyedStates<K, S> {
    index: HashTable<u32>,
    /// Keys that are small integers (below [`DIRECT_KEYS`], such as W1's and W2's
    /// symbols) skip the hash table: `direct[k]` is their entry's index plus one (0:
    /// none yet). Such a key is never in `index`.
    direct: Vec<u32>,
    entries: Chunks<(K, S)>,
}

impl<K, S> Default for KeyedStates<K, S> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            direct: Vec::new(),
            entries: Chunks::default(),
        }
    }
}

/// Integer keys below this find their entries by position (16 KiB of positions at
/// the most), not by hash.
pub const DIRECT_KEYS: usize = 4096;

/// `key` as a position in [`KeyedStates::direct`], if it is an integer below
/// [`DIRECT_KEYS`]. The type tests resolve when the code is generated: for other key
/// types this is `None` and costs nothing.
#[inline(always)]
fn direct_position<K: 'static>(key: &K) -> Option<usize> {
    let any = key as &dyn std::any::Any;
    let v = if let Some(&k) = any.downcast_ref::<u32>() {
        u64::from(k)
    } else if let Some(&k) = any.downcast_ref::<u64>() {
        k
    } else if let Some(&k) = any.downcast_ref::<i32>() {
        u64::try_from(k).ok()?
    } else if let Some(&k) = any.downcast_ref::<i64>() {
        u64::try_from(k).ok()?
    } else if let Some(&k) = any.downcast_ref::<u16>() {
        u64::from(k)
    } else {
        return None;
    };
    usize::try_from(v).ok().filter(|&v| v < DIRECT_KEYS)
}

/// The hash the table probes with: the key hash remixed, because the exchange picks a
/// key's subtask from the hash's top bits, which are also where the table takes its
/// 7-bit tags from; without the remix, a subtask's keys would share their tags' top
/// bits at high parallelism.
#[inline(always)]
fn table_hash(hash: u64) -> u64 {
    (hash ^ (hash >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl<K: Key, S: Default + Clone> KeyedStates<K, S> {
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
        let i = self.index_or_insert(hash, key);
        // `index_or_insert` gives only indices of entries.
        let (k, s) = &mut self.entries[i];
        (i, &*k, s)
    }

    /// The index of `key`'s entry (created with `S::default()` on its first record),
    /// without touching the entry of a key found by position.
    #[inline(always)]
    pub fn index_or_insert(&mut self, hash: u64, key: K) -> usize {
        if let Some(d) = direct_position(&key) {
            return self.index_by_position(d, key);
        }
        let hash = table_hash(hash);
        let entries = &mut self.entries;
        let found = self
            .index
            .find(hash, |&i| {
                entries.get(i as usize).is_some_and(|e| e.0 == key)
            })
            .copied();
        match found {
            Some(i) => i as usize,
            None => {
                let i = entries.len();
                entries.push((key, S::default()));
                self.index.insert_unique(hash, i as u32, |&j| {
                    entries
                        .get(j as usize)
                        .map_or(0, |e| table_hash(key_hash(&e.0)))
                });
                i
            }
        }
    }

    /// Whether keys of type `K` are integers that may find their entries by position
    /// (known when the code is generated).
    #[inline(always)]
    pub fn by_position() -> bool {
        let t = std::any::TypeId::of::<K>();
        [
            std::any::TypeId::of::<u32>(),
            std::any::TypeId::of::<u64>(),
            std::any::TypeId::of::<i32>(),
            std::any::TypeId::of::<i64>(),
            std::any::TypeId::of::<u16>(),
        ]
        .contains(&t)
    }

    /// The index of the entry of `key`, found by position `d` (created on its first
    /// record).
    #[inline(always)]
    fn index_by_position(&mut self, d: usize, key: K) -> usize {
        if let Some(&n) = self.direct.get(d) {
            if n > 0 {
                return n as usize - 1;
            }
        }
        let i = self.entries.len();
        self.entries.push((key, S::default()));
        if self.direct.len() <= d {
            self.direct.resize(d + 1, 0);
        }
        self.direct[d] = i as u32 + 1;
        i
    }

    /// Calls `f(state, record)` for the records in order, each with the state of
    /// `key_of(record)` (created with `S::default()` on the key's first record), as
    /// [`Self::get_or_insert`] would, for as long as the keys are found by position
    /// (integers below [`DIRECT_KEYS`]) and the entries sit in one chunk: one loop, a
    /// record costs one load to find its state. Returns how many records it took: all
    /// of them, unless it met a key found by hash or the table grew past one chunk
    /// (the caller goes on from there its own way). Keys of other types: none.
    #[inline(always)]
    pub fn update_by_position<R>(
        &mut self,
        records: &[R],
        key_of: impl Fn(&R) -> K,
        mut f: impl FnMut(&mut S, &R),
    ) -> usize {
        if !Self::by_position() {
            return 0;
        }
        let mut j = 0;
        loop {
            let Some(entries) = self.entries.single_mut() else {
                return j;
            };
            let direct = self.direct.as_slice();
            while let Some(r) = records.get(j) {
                let key = key_of(r);
                let Some(e) = direct_position(&key)
                    .and_then(|d| direct.get(d))
                    .and_then(|&n| (n as usize).checked_sub(1))
                    .and_then(|i| entries.get_mut(i))
                else {
                    break;
                };
                f(&mut e.1, r);
                j += 1;
            }
            let Some(r) = records.get(j) else {
                return j;
            };
            // A key found by hash (the caller's), or a new key found by position: its
            // entry first, then on.
            let key = key_of(r);
            let Some(d) = direct_position(&key) else {
                return j;
            };
            let i = self.index_by_position(d, key);
            let e = self.entries.get_mut(i);
            debug_assert!(e.is_some(), "a new entry is missing");
            if let Some(e) = e {
                f(&mut e.1, r);
            }
            j += 1;
        }
    }

    /// Every entry, writable, as one slice indexed as [`Self::get_or_insert_at`]
    /// numbers them, when there are at most 1024 (one chunk); else `None`.
    #[inline(always)]
    pub fn entries_mut(&mut self) -> Option<&mut [(K, S)]> {
        self.entries.single_mut()
    }

    /// The entry at index `i` (as [`Self::get_or_insert_at`] gave it), writable.
    #[inline(always)]
    pub fn at_mut(&mut self, i: usize) -> Option<(&K, &mut S)> {
        self.entries.get_mut(i).map(|(k, s)| (&*k, s))
    }

    /// Removes `key` (whose hash is `hash`) and its state; the last entry moves into
    /// its place.
    pub fn remove(&mut self, hash: u64, key: &K) -> Option<S> {
        let i = match direct_position(key) {
            Some(d) => {
                let n = self.direct.get_mut(d).filter(|n| **n > 0)?;
                let i = *n as usize - 1;
                *n = 0;
                i
            }
            None => {
                let entries = &self.entries;
                let found = self
                    .index
                    .find_entry(table_hash(hash), |&i| {
                        entries.get(i as usize).is_some_and(|e| &e.0 == key)
                    })
                    .ok()?;
                found.remove().0 as usize
            }
        };
        let last = self.entries.len() - 1;
        let tail = self.entries.pop()?;
        if i == last {
            return Some(tail.1);
        }
        // The entry that was last now sits at `i`: repoint its position or index slot.
        let moved = direct_position(&tail.0).ok_or_else(|| table_hash(key_hash(&tail.0)));
        let (_, state) = std::mem::replace(self.entries.get_mut(i)?, tail);
        match moved {
            Ok(d) => {
                if let Some(n) = self.direct.get_mut(d) {
                    *n = i as u32 + 1;
                }
            }
            Err(h) => {
                if let Some(slot) = self.index.find_mut(h, |&j| j as usize == last) {
                    *slot = i as u32;
                }
            }
        }
        Some(state)
    }

    /// The state of `key`, if it has one.
    pub fn get(&self, key: &K) -> Option<&S> {
        let i = match direct_position(key) {
            Some(d) => (*self.direct.get(d)? as usize).checked_sub(1)?,
            None => *self.index.find(table_hash(key_hash(key)), |&i| {
                self.entries.get(i as usize).is_some_and(|e| &e.0 == key)
            })? as usize,
        };
        self.entries.get(i).map(|e| &e.1)
    }

    /// Keys with state.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every key, keeping the capacity (of the first 1024 entries, unless a
    /// snapshot holds them).
    pub fn clear(&mut self) {
        self.index.clear();
        self.direct.clear();
        self.entries.clear();
    }

    /// Every key's state, in order of first appearance.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.entries.iter().map(|(k, s)| (k, s))
    }

    /// Every key's state, mutable, in order of first appearance (copying the chunks a
    /// snapshot holds).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut S)> {
        self.entries.iter_mut().map(|(k, s)| (&*k, s))
    }

    /// The entries as they are now, frozen for a snapshot in O(keys / 1024): later
    /// writes copy the chunks they touch instead of changing the snapshot's.
    pub fn freeze(&mut self) -> FrozenEntries<K, S> {
        self.entries.freeze()
    }

    /// Adds `entries` from a snapshot (a key given twice keeps its last state); when
    /// the state is being redistributed to another parallelism, only the keys of this
    /// subtask's key groups (see [`crate::checkpoint::restore_filter`]).
    pub fn restore(&mut self, entries: Vec<(K, S)>) {
        let keep = crate::checkpoint::restore_filter();
        let existing = &self.entries;
        self.index.reserve(entries.len(), |&j| {
            existing
                .get(j as usize)
                .map_or(0, |e| table_hash(key_hash(&e.0)))
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

/// A [`KeyedStates`]' entries as they were at a freeze, shared with the table until
/// it writes them; encoded (as a sequence of `(key, state)`, as a slice of the entries
/// would be) off the slot's core.
pub type FrozenEntries<K, S> = Frozen<(K, S)>;

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

    /// As [`Self::snapshot`], with the keys copied (for a snapshot encoded later).
    pub fn to_vec(&self) -> Vec<(u64, K)> {
        self.queue
            .iter()
            .map(|((at, _), k)| (*at, k.clone()))
            .collect()
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
    /// The key's hash (for deferral).
    hash: u64,
    /// Where keys deferred to the end of the batch go (`None` where the operator
    /// offers no such call: timers, co-process and broadcast functions).
    deferred: Option<&'a mut Vec<(u64, K)>>,
    now_ns: u64,
    watermark: u64,
    domain: Option<TimeDomain>,
    processing: &'a mut Timers<K>,
    event: &'a mut Timers<K>,
    out: &'a mut Vec<O>,
    sides: &'a mut SideOutputs,
    clear: bool,
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
    /// Drops the current key's state once this call returns (Flink's
    /// `state.clear()`): the key holds no memory until it is seen again. Its timers
    /// stay registered.
    pub fn clear_state(&mut self) {
        self.clear = true;
    }
    /// In [`KeyedProcessFunction::process_element`]: calls
    /// [`KeyedProcessFunction::on_batch_end`] for the current key once the operator
    /// has taken the whole batch this record came in (before anything after the
    /// batch, such as a watermark or a barrier). Call it once per key and batch (the
    /// state can say whether it was): each call is one `on_batch_end`. Elsewhere
    /// (timers, co-process and broadcast functions) it does nothing.
    pub fn defer_to_batch_end(&mut self) {
        if let Some(d) = self.deferred.as_deref_mut() {
            d.push((self.hash, self.key.clone()));
        }
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

    /// After a batch of records: once for each time a record's call asked for it with
    /// [`Context::defer_to_batch_end`] (for example to emit one update per key and
    /// batch instead of one per record).
    fn on_batch_end(
        &mut self,
        state: &mut Self::State,
        ctx: &mut Context<'_, Self::Key, Self::Out>,
    ) {
        let _ = (state, ctx);
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
    /// Keys deferred to the end of the batch (reused: no allocation per batch).
    pub(crate) deferred: Vec<(u64, K)>,
}

impl<K: Key, S: Default + Clone> KeyedCore<K, S> {
    pub(crate) fn new() -> Self {
        Self {
            states: KeyedStates::default(),
            processing: Timers::default(),
            event: Timers::default(),
            now_ns: 0,
            watermark: 0,
            sides: SideOutputs::default(),
            deferred: Vec::new(),
        }
    }

    /// The per-key states and timers, frozen for a checkpoint (the states in
    /// O(chunks), the timers copied) and encoded later by the snapshot writer.
    pub(crate) fn freeze(&mut self) -> StateSnapshot
    where
        S: StateData,
    {
        let entries = self.states.freeze();
        let processing = self.processing.to_vec();
        let event = self.event.to_vec();
        StateSnapshot::frozen(move || encode_state(&(entries, processing, event)))
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
        self.with_key_deferring(hash, key, out, false, f)
    }

    /// As [`Self::with_key`]; with `defer`, the context takes
    /// [`Context::defer_to_batch_end`].
    #[inline(always)]
    pub(crate) fn with_key_deferring<O>(
        &mut self,
        hash: u64,
        key: K,
        out: &mut Vec<O>,
        defer: bool,
        f: impl FnOnce(&mut S, &mut Context<'_, K, O>),
    ) {
        let (key, state) = self.states.get_or_insert(hash, key);
        let mut ctx = Context {
            key,
            hash,
            deferred: if defer {
                Some(&mut self.deferred)
            } else {
                None
            },
            now_ns: self.now_ns,
            watermark: self.watermark,
            domain: None,
            processing: &mut self.processing,
            event: &mut self.event,
            out,
            sides: &mut self.sides,
            clear: false,
        };
        f(state, &mut ctx);
        if ctx.clear {
            let key = key.clone();
            self.states.remove(hash, &key);
        }
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
            let hash = key_hash(&key);
            let (key, state) = self.states.get_or_insert(hash, key);
            let mut ctx = Context {
                key,
                hash,
                deferred: None,
                now_ns: self.now_ns,
                watermark: self.watermark,
                domain: Some(domain),
                processing: &mut self.processing,
                event: &mut self.event,
                out,
                sides: &mut self.sides,
                clear: false,
            };
            on_timer(at, state, &mut ctx);
            if ctx.clear {
                let key = key.clone();
                self.states.remove(hash, &key);
            }
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
        self.core
            .with_key_deferring(hash, key, out, true, |state, ctx| {
                f.process_element(record, state, ctx)
            });
    }

    /// The batch is in: `on_batch_end` for the keys deferred to it, in the order they
    /// were deferred.
    fn end_batch(&mut self, out: &mut Vec<P::Out>) {
        while !self.core.deferred.is_empty() {
            let mut keys = std::mem::take(&mut self.core.deferred);
            for (hash, key) in keys.drain(..) {
                let f = &mut self.f;
                self.core
                    .with_key(hash, key, out, |state, ctx| f.on_batch_end(state, ctx));
            }
            // (Keep the list's memory for the next batch.)
            if self.core.deferred.is_empty() {
                self.core.deferred = keys;
            }
        }
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
        self.end_batch(buf);
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
        self.end_batch(buf);
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
        self.core.freeze().finish().map(Some)
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        Ok(Some(self.core.freeze()))
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
        self.freeze_state()?.map(StateSnapshot::finish).transpose()
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        /// The aggregates through their wire encoding (as records are kept in state).
        struct Wired<K, T>(FrozenEntries<K, Option<T>>);
        impl<K: serde::Serialize, T: crate::record::Wire> serde::Serialize for Wired<K, T> {
            fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (k, v) in self.0.iter() {
                    seq.serialize_element(&(k, v.as_ref().map(crate::checkpoint::WireRef)))?;
                }
                seq.end()
            }
        }
        let frozen = Wired(self.acc.freeze());
        Ok(Some(StateSnapshot::frozen(move || encode_state(&frozen))))
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
        self.core.freeze().finish().map(Some)
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        Ok(Some(self.core.freeze()))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.core.restore(state)
    }
}

#[cfg(test)]
mod cow_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    type Table = KeyedStates<u64, Vec<u64>>;
    type Model = BTreeMap<u64, Vec<u64>>;
    /// A snapshot and the state it must hold.
    type Held = (FrozenEntries<u64, Vec<u64>>, Model);

    fn put(t: &mut Table, k: u64, v: u64) {
        t.get_or_insert(key_hash(&k), k).1.push(v);
    }

    fn decoded(f: &FrozenEntries<u64, Vec<u64>>) -> BTreeMap<u64, Vec<u64>> {
        let bytes = encode_state(f).unwrap();
        let v: Vec<(u64, Vec<u64>)> = decode_state(&bytes).unwrap();
        assert_eq!(v.len(), f.len());
        v.into_iter().collect()
    }

    fn live(t: &Table) -> BTreeMap<u64, Vec<u64>> {
        t.iter().map(|(k, s)| (*k, s.clone())).collect()
    }

    #[test]
    fn a_frozen_state_stays_as_it_was_while_the_table_moves_on() {
        let mut t = Table::default();
        for k in 0..3000 {
            put(&mut t, k, k);
        }
        let before = live(&t);
        let frozen = t.freeze();
        // Writes to every chunk, new keys (a new chunk), removals (entries move).
        for k in (0..3000).step_by(7) {
            put(&mut t, k, 1);
        }
        for k in 3000..4100 {
            put(&mut t, k, k);
        }
        for k in (0..4100).step_by(3) {
            t.remove(key_hash(&k), &k);
        }
        let second = t.freeze();
        put(&mut t, 1, 99);
        assert_eq!(decoded(&frozen), before);
        let mut expected = before.clone();
        for k in (0..3000).step_by(7) {
            expected.get_mut(&k).unwrap().push(1);
        }
        for k in 3000..4100 {
            expected.insert(k, vec![k]);
        }
        for k in (0..4100).step_by(3) {
            expected.remove(&k);
        }
        assert_eq!(decoded(&second), expected);
        expected.get_mut(&1).unwrap().push(99);
        assert_eq!(live(&t), expected);
        for (k, v) in &expected {
            assert_eq!(t.get(k), Some(v));
        }
    }

    #[test]
    fn the_encoding_of_a_frozen_state_is_that_of_its_entries() {
        let mut t = Table::default();
        for k in 0..1500 {
            put(&mut t, k * 31, k);
        }
        let entries: Vec<(u64, Vec<u64>)> = t.iter().map(|(k, s)| (*k, s.clone())).collect();
        let frozen = t.freeze();
        assert_eq!(
            encode_state(&frozen).unwrap(),
            encode_state(&entries).unwrap()
        );
    }

    #[test]
    fn clear_drops_only_what_no_snapshot_holds() {
        let mut t = Table::default();
        for k in 0..2000 {
            put(&mut t, k, k);
        }
        let frozen = t.freeze();
        t.clear();
        assert!(t.is_empty());
        put(&mut t, 5, 5);
        assert_eq!(live(&t), BTreeMap::from([(5, vec![5])]));
        assert_eq!(decoded(&frozen).len(), 2000);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u64, u64),
        Remove(u64),
        Freeze,
        Drop,
        Clear,
        TouchAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            20 => (0u64..3000, any::<u64>()).prop_map(|(k, v)| Op::Put(k, v)),
            6 => (0u64..3000).prop_map(Op::Remove),
            2 => Just(Op::Freeze),
            1 => Just(Op::Drop),
            1 => Just(Op::TouchAll),
            1 => Just(Op::Clear),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a plain map: every snapshot equals the map at its freeze, however
        /// the table changed after it, and the table equals the map at the end.
        #[test]
        fn snapshots_match_a_reference_map(ops in proptest::collection::vec(op(), 1..3000)) {
            let mut t = Table::default();
            let mut model: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
            let mut held: Vec<Held> = Vec::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        put(&mut t, k, v);
                        model.entry(k).or_default().push(v);
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(t.remove(key_hash(&k), &k), model.remove(&k));
                    }
                    Op::Freeze => held.push((t.freeze(), model.clone())),
                    Op::Drop => {
                        if let Some((f, m)) = held.pop() {
                            prop_assert_eq!(decoded(&f), m);
                        }
                    }
                    Op::Clear => {
                        t.clear();
                        model.clear();
                    }
                    Op::TouchAll => {
                        for (_, s) in t.iter_mut() {
                            s.push(0);
                        }
                        for s in model.values_mut() {
                            s.push(0);
                        }
                    }
                }
            }
            for (f, m) in &held {
                prop_assert_eq!(&decoded(f), m);
            }
            prop_assert_eq!(live(&t), model.clone());
            prop_assert_eq!(t.len(), model.len());
        }
    }

    /// Across threads: one thread writes the table and freezes it now and then, as a
    /// slot does; another encodes each snapshot while the writes go on, as the
    /// snapshot writer does. Each snapshot must equal the state at its freeze.
    #[test]
    fn snapshots_encoded_on_another_thread_while_the_table_changes() {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Held>(4);
        let checker = std::thread::spawn(move || {
            let mut n = 0;
            for (frozen, expected) in rx {
                assert_eq!(decoded(&frozen), expected);
                n += 1;
            }
            n
        });
        let mut t = Table::default();
        let mut model: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..200u64 {
            for _ in 0..2000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = x % 5000;
                if x.is_multiple_of(11) {
                    assert_eq!(t.remove(key_hash(&k), &k), model.remove(&k));
                } else {
                    put(&mut t, k, round);
                    let s = model.entry(k).or_default();
                    s.push(round);
                    // Keep states short: the test is about sharing, not size.
                    if s.len() > 4 {
                        s.remove(0);
                        t.get_or_insert(key_hash(&k), k).1.remove(0);
                    }
                }
            }
            tx.send((t.freeze(), model.clone())).unwrap();
        }
        drop(tx);
        assert_eq!(checker.join().unwrap(), 200);
    }
}
