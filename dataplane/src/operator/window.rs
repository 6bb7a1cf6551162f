//! Windows on keyed streams: tumbling, sliding and session windows in event or
//! processing time, aggregated incrementally as records arrive and fired by timers (a
//! watermark passing the window's last instant, or the clock reaching it); and count
//! windows, which fire every `n` records of a key.
//!
//! State lives in the runtime's keyed structures: each key's open windows with their
//! accumulators in [`KeyedStates`], and one timer per (key, window end) in [`Timers`],
//! so that checkpoints can snapshot both.

use super::keyed::{KeyedStates, TimeDomain, Timers};
use super::watermark::TimestampsFn;
use super::{key_hash, Barrier, BoxEmit, Event, Operator, Output};
use crate::checkpoint::{
    decode_state, encode_state, StateData, StateError, StateSnapshot, WireState,
};
use crate::record::{Key, Wire};

/// A window: the event times `start..end` (end exclusive).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Window {
    /// First instant, ns.
    pub start: u64,
    /// One past the last instant, ns.
    pub end: u64,
}

impl Window {
    /// The last instant that belongs to the window (when it fires).
    pub fn max_timestamp(&self) -> u64 {
        self.end - 1
    }
}

/// Why a window specification cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// A size or slide of zero.
    #[error("a window's {0} must be positive")]
    NotPositive(&'static str),
    /// A cumulating window whose step does not divide its size.
    #[error("a cumulating window's step ({step} ns) must divide its size ({size} ns)")]
    Step {
        /// The size.
        size: u64,
        /// The step.
        step: u64,
    },
    /// An offset not smaller than the slide.
    #[error("a window's offset ({offset} ns) must be smaller than its slide ({slide} ns)")]
    Offset {
        /// The offset.
        offset: u64,
        /// The slide (the size, for tumbling windows).
        slide: u64,
    },
}

/// Which windows a record belongs to (Flink's window assigners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAssigner {
    size_ns: u64,
    slide_ns: u64,
    offset_ns: u64,
    /// Session windows: the gap that closes a session (0: not sessions).
    gap_ns: u64,
    /// Cumulating windows (Flink SQL's `CUMULATE`): windows of `size_ns` start
    /// every `size_ns`, and each grows by `slide_ns` steps, one window per step.
    cumulative: bool,
    domain: TimeDomain,
}

fn ns(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl WindowAssigner {
    fn new(size: u64, slide: u64, offset: u64, domain: TimeDomain) -> Result<Self, WindowError> {
        if size == 0 {
            return Err(WindowError::NotPositive("size"));
        }
        if slide == 0 {
            return Err(WindowError::NotPositive("slide"));
        }
        if offset >= slide {
            return Err(WindowError::Offset { offset, slide });
        }
        Ok(Self {
            size_ns: size,
            slide_ns: slide,
            offset_ns: offset,
            gap_ns: 0,
            cumulative: false,
            domain,
        })
    }

    fn cumulate(size: u64, step: u64, domain: TimeDomain) -> Result<Self, WindowError> {
        if step == 0 {
            return Err(WindowError::NotPositive("step"));
        }
        if !size.is_multiple_of(step) {
            return Err(WindowError::Step { size, step });
        }
        let mut a = Self::new(size, size, 0, domain)?;
        a.slide_ns = step;
        a.cumulative = step != size;
        Ok(a)
    }

    /// Cumulating event-time windows (Flink SQL's `CUMULATE`): a window of `size`
    /// starts every `size`; within it, windows `[start, start + k * step)` for k = 1 ..
    /// size / step fire as each step ends (`step` divides `size`).
    pub fn cumulative_event_time(
        size: std::time::Duration,
        step: std::time::Duration,
    ) -> Result<Self, WindowError> {
        Self::cumulate(ns(size), ns(step), TimeDomain::EventTime)
    }

    /// Cumulating processing-time windows.
    pub fn cumulative_processing_time(
        size: std::time::Duration,
        step: std::time::Duration,
    ) -> Result<Self, WindowError> {
        Self::cumulate(ns(size), ns(step), TimeDomain::ProcessingTime)
    }

    fn session(gap: std::time::Duration, domain: TimeDomain) -> Result<Self, WindowError> {
        let gap = ns(gap);
        if gap == 0 {
            return Err(WindowError::NotPositive("session gap"));
        }
        Ok(Self {
            size_ns: gap,
            slide_ns: gap,
            offset_ns: 0,
            gap_ns: gap,
            cumulative: false,
            domain,
        })
    }

    /// Session windows in event time: a key's records less than `gap` apart belong to
    /// one window, which closes `gap` after its last record.
    pub fn event_time_session(gap: std::time::Duration) -> Result<Self, WindowError> {
        Self::session(gap, TimeDomain::EventTime)
    }

    /// Session windows in processing time.
    pub fn processing_time_session(gap: std::time::Duration) -> Result<Self, WindowError> {
        Self::session(gap, TimeDomain::ProcessingTime)
    }

    /// Whether windows merge (sessions).
    pub fn is_merging(&self) -> bool {
        self.gap_ns > 0
    }

    /// Tumbling event-time windows of `size`.
    pub fn tumbling_event_time(size: std::time::Duration) -> Result<Self, WindowError> {
        Self::new(ns(size), ns(size), 0, TimeDomain::EventTime)
    }

    /// Sliding event-time windows of `size`, one starting every `slide`.
    pub fn sliding_event_time(
        size: std::time::Duration,
        slide: std::time::Duration,
    ) -> Result<Self, WindowError> {
        Self::new(ns(size), ns(slide), 0, TimeDomain::EventTime)
    }

    /// Tumbling processing-time windows of `size`.
    pub fn tumbling_processing_time(size: std::time::Duration) -> Result<Self, WindowError> {
        Self::new(ns(size), ns(size), 0, TimeDomain::ProcessingTime)
    }

    /// Sliding processing-time windows of `size`, one starting every `slide`.
    pub fn sliding_processing_time(
        size: std::time::Duration,
        slide: std::time::Duration,
    ) -> Result<Self, WindowError> {
        Self::new(ns(size), ns(slide), 0, TimeDomain::ProcessingTime)
    }

    /// Windows shifted by `offset` (smaller than the slide), e.g. for time zones.
    pub fn with_offset(self, offset: std::time::Duration) -> Result<Self, WindowError> {
        if self.is_merging() {
            return Ok(self);
        }
        if self.cumulative {
            let offset = ns(offset);
            if offset >= self.size_ns {
                return Err(WindowError::Offset {
                    offset,
                    slide: self.size_ns,
                });
            }
            return Ok(Self {
                offset_ns: offset,
                ..self
            });
        }
        Self::new(self.size_ns, self.slide_ns, ns(offset), self.domain)
    }

    /// Which clock the windows follow.
    pub fn domain(&self) -> TimeDomain {
        self.domain
    }

    /// Calls `f` with each window that contains `ts`, latest first (as Flink's
    /// `TimeWindow.getWindowStartWithOffset`).
    #[inline]
    pub fn assign(&self, ts: u64, mut f: impl FnMut(Window)) {
        if self.is_merging() {
            return f(Window {
                start: ts,
                end: ts.saturating_add(self.gap_ns),
            });
        }
        if self.cumulative {
            // The window of `size` holding ts, then its steps that end after ts,
            // latest end first.
            let (size, step) = (i128::from(self.size_ns), i128::from(self.slide_ns));
            let ts_i = i128::from(ts);
            let start = ts_i - (ts_i - i128::from(self.offset_ns)).rem_euclid(size);
            let mut end = start + size;
            while end > ts_i {
                f(Window {
                    start: start.max(0) as u64,
                    end: end.min(i128::from(u64::MAX)) as u64,
                });
                end -= step;
            }
            return;
        }
        // Signed arithmetic, as Flink's: a window may start before 0 (a timestamp below
        // the offset); such a start is clamped to 0, its end kept.
        let (ts_i, slide, size) = (
            i128::from(ts),
            i128::from(self.slide_ns),
            i128::from(self.size_ns),
        );
        let mut start = if ts >= self.offset_ns {
            // The common case in 64 bits (a 128-bit remainder costs far more).
            i128::from(ts - (ts - self.offset_ns) % self.slide_ns)
        } else {
            ts_i - (ts_i - i128::from(self.offset_ns) + slide).rem_euclid(slide)
        };
        // The earliest window containing ts starts after ts − size.
        while start + size > ts_i {
            let end = (start + size).min(i128::from(u64::MAX)) as u64;
            f(Window {
                start: start.max(0) as u64,
                end,
            });
            start -= slide;
        }
    }
}

/// An incremental aggregation (Flink's `AggregateFunction`): records are added to an
/// accumulator as they arrive; the result is read when the window fires.
pub trait AggregateFunction: Clone + Send + Sync + 'static {
    /// Input records.
    type In;
    /// The accumulator (window contents in checkpoints: derive serde's `Serialize` and
    /// `Deserialize` for one of your own).
    type Acc: StateData;
    /// The result.
    type Out;
    /// A new, empty accumulator.
    fn create_accumulator(&self) -> Self::Acc;
    /// Adds a record.
    fn add(&self, value: &Self::In, acc: &mut Self::Acc);
    /// The result of an accumulator.
    fn get_result(&self, acc: &Self::Acc) -> Self::Out;
    /// Two accumulators as one (for merging windows).
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
}

/// A reduce function as an aggregation: the accumulator is the reduced record (`None`
/// until the first).
#[derive(Clone)]
pub struct ReduceAggregate<T, R> {
    reduce: R,
    _t: std::marker::PhantomData<fn(T) -> T>,
}

impl<T, R> ReduceAggregate<T, R> {
    /// Reduces with `reduce(accumulated, new)`.
    pub fn new(reduce: R) -> Self {
        Self {
            reduce,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T, R> AggregateFunction for ReduceAggregate<T, R>
where
    T: Clone + Wire + Sync,
    R: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    type In = T;
    /// The record, checkpointed with its wire encoding.
    type Acc = Option<WireState<T>>;
    type Out = Option<T>;
    fn create_accumulator(&self) -> Self::Acc {
        None
    }
    fn add(&self, value: &T, acc: &mut Self::Acc) {
        *acc = Some(WireState(match acc.take() {
            Some(a) => (self.reduce)(a.0, value.clone()),
            None => value.clone(),
        }));
    }
    fn get_result(&self, acc: &Self::Acc) -> Option<T> {
        acc.as_ref().map(|a| a.0.clone())
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc {
        match (a, b) {
            (Some(a), Some(b)) => Some(WireState((self.reduce)(a.0, b.0))),
            (a, b) => a.or(b),
        }
    }
}

/// Collects a window's records, for a function that needs all of them at once (Flink's
/// `ProcessWindowFunction`): the accumulator is the list of records.
pub struct CollectAll<T>(std::marker::PhantomData<fn(T)>);

impl<T> Clone for CollectAll<T> {
    fn clone(&self) -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T> Default for CollectAll<T> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T: Clone + Wire + Sync> AggregateFunction for CollectAll<T> {
    type In = T;
    /// The records, checkpointed with their wire encoding.
    type Acc = Vec<WireState<T>>;
    type Out = Vec<T>;
    fn create_accumulator(&self) -> Self::Acc {
        Vec::new()
    }
    fn add(&self, value: &T, acc: &mut Self::Acc) {
        acc.push(WireState(value.clone()));
    }
    fn get_result(&self, acc: &Self::Acc) -> Vec<T> {
        acc.iter().map(|w| w.0.clone()).collect()
    }
    fn merge(&self, mut a: Self::Acc, mut b: Self::Acc) -> Self::Acc {
        a.append(&mut b);
        a
    }
}

/// Count windows (Flink's `countWindow(n)`): every `n` records of a key form a window,
/// which fires as its `n`-th record arrives and starts afresh.
pub struct CountWindowOperator<K, A: AggregateFunction, KS, WF, O> {
    size: u64,
    agg: A,
    key: KS,
    result: WF,
    /// Each key's records so far in its current window, and their accumulator.
    states: KeyedStates<K, (u64, Option<A::Acc>)>,
    _o: std::marker::PhantomData<fn() -> O>,
}

impl<K, A, KS, WF, O> CountWindowOperator<K, A, KS, WF, O>
where
    K: Key,
    A: AggregateFunction,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, A::Out, &mut Vec<O>) + 'static,
{
    /// Windows of `size` records (at least 1) per key.
    pub fn new(size: u64, agg: A, key: KS, result: WF) -> Self {
        Self {
            size: size.max(1),
            agg,
            key,
            result,
            states: KeyedStates::default(),
            _o: std::marker::PhantomData,
        }
    }

    #[inline]
    fn one(&mut self, hash: u64, key: K, value: &A::In, out: &mut Vec<O>) {
        let (key, (n, acc)) = self.states.get_or_insert(hash, key);
        let a = acc.get_or_insert_with(|| self.agg.create_accumulator());
        self.agg.add(value, a);
        *n += 1;
        if *n >= self.size {
            if let Some(a) = acc.take() {
                (self.result)(key, self.agg.get_result(&a), out);
            }
            *n = 0;
        }
    }
}

impl<K, A, KS, WF, O> Operator for CountWindowOperator<K, A, KS, WF, O>
where
    K: Key,
    A: AggregateFunction,
    A::In: 'static,
    A::Acc: 'static,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, A::Out, &mut Vec<O>) + 'static,
    O: 'static,
{
    type In = A::In;
    type Out = O;

    #[inline]
    fn process(&mut self, batch: &mut Vec<A::In>, out: &mut Output<'_, O>) {
        let buf = out.buffer();
        for r in batch.drain(..) {
            let key = (self.key)(&r);
            self.one(key_hash(&key), key, &r, buf);
        }
    }

    #[inline]
    fn process_keyed(
        &mut self,
        batch: &mut Vec<A::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, O>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
            return self.process(batch, out);
        }
        let buf = out.buffer();
        for (r, h) in batch.drain(..).zip(hashes.drain(..)) {
            let key = (self.key)(&r);
            self.one(h, key, &r, buf);
        }
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.freeze_state()?.map(StateSnapshot::finish).transpose()
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        let frozen = self.states.freeze();
        Ok(Some(StateSnapshot::frozen(move || encode_state(&frozen))))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.states.restore(decode_state(state)?);
        Ok(())
    }
}

/// When a window emits its result (Flink's `Trigger`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// The assigner's own: event-time windows fire when the watermark passes their
    /// end, processing-time windows when the clock does.
    Default,
    /// When the watermark passes the window's end, and again for each record that
    /// arrives later but within the allowed lateness (Flink's `EventTimeTrigger`).
    EventTime,
    /// When the clock passes the window's end (Flink's `ProcessingTimeTrigger`).
    ProcessingTime,
    /// Each time a key's window has gathered this many records since it last fired
    /// (Flink's `CountTrigger`); the window's end does not fire it.
    Count(u64),
    /// Every interval of event time, aligned to multiples of it, from a key's first
    /// record, and at the window's end (Flink's `ContinuousEventTimeTrigger`).
    ContinuousEventTime(u64),
    /// Every interval of processing time, likewise
    /// (Flink's `ContinuousProcessingTimeTrigger`).
    ContinuousProcessingTime(u64),
}

/// A trigger: when a window fires, and whether firing clears its contents
/// (Flink's `PurgingTrigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    kind: TriggerKind,
    purging: bool,
}

impl Default for Trigger {
    fn default() -> Self {
        Self {
            kind: TriggerKind::Default,
            purging: false,
        }
    }
}

impl Trigger {
    fn of(kind: TriggerKind) -> Self {
        Self {
            kind,
            purging: false,
        }
    }
    /// Fires when the watermark passes the window's end.
    pub fn event_time() -> Self {
        Self::of(TriggerKind::EventTime)
    }
    /// Fires when the clock passes the window's end.
    pub fn processing_time() -> Self {
        Self::of(TriggerKind::ProcessingTime)
    }
    /// Fires a key's window every `n` records.
    pub fn count(n: u64) -> Result<Self, WindowError> {
        if n == 0 {
            return Err(WindowError::NotPositive("trigger count"));
        }
        Ok(Self::of(TriggerKind::Count(n)))
    }
    /// Fires every `interval` of event time and at the window's end.
    pub fn continuous_event_time(interval: std::time::Duration) -> Result<Self, WindowError> {
        match ns(interval) {
            0 => Err(WindowError::NotPositive("trigger interval")),
            i => Ok(Self::of(TriggerKind::ContinuousEventTime(i))),
        }
    }
    /// Fires every `interval` of processing time and at the window's end.
    pub fn continuous_processing_time(interval: std::time::Duration) -> Result<Self, WindowError> {
        match ns(interval) {
            0 => Err(WindowError::NotPositive("trigger interval")),
            i => Ok(Self::of(TriggerKind::ContinuousProcessingTime(i))),
        }
    }
    /// The same trigger, clearing the window's contents each time it fires.
    pub fn purging(self) -> Self {
        Self {
            purging: true,
            ..self
        }
    }
    /// Its kind.
    pub fn kind(&self) -> TriggerKind {
        self.kind
    }
    /// Whether firing clears the window.
    pub fn is_purging(&self) -> bool {
        self.purging
    }

    /// The default resolved against `assigner`.
    fn resolve(self, assigner: &WindowAssigner) -> Self {
        match (self.kind, assigner.domain) {
            (TriggerKind::Default, TimeDomain::EventTime) => Self {
                kind: TriggerKind::EventTime,
                ..self
            },
            (TriggerKind::Default, TimeDomain::ProcessingTime) => Self {
                kind: TriggerKind::ProcessingTime,
                ..self
            },
            _ => self,
        }
    }

    /// Whether spate can run this trigger on `assigner`'s windows: session windows
    /// take the time triggers of their own domain and count triggers.
    pub fn check(&self, assigner: &WindowAssigner) -> Result<(), String> {
        let t = self.resolve(assigner);
        if !assigner.is_merging() {
            return Ok(());
        }
        match (t.kind, assigner.domain) {
            (TriggerKind::Count(_), _)
            | (TriggerKind::EventTime, TimeDomain::EventTime)
            | (TriggerKind::ProcessingTime, TimeDomain::ProcessingTime) => Ok(()),
            (kind, domain) => Err(format!(
                "session windows in {domain:?} do not take the trigger {kind:?} \
                 (spate's session windows take count triggers and the time trigger \
                 of their own domain)"
            )),
        }
    }

    /// The clock the trigger follows, and the interval of a continuous one.
    fn clock(&self) -> Option<(TimeDomain, u64)> {
        match self.kind {
            TriggerKind::EventTime => Some((TimeDomain::EventTime, 0)),
            TriggerKind::ProcessingTime => Some((TimeDomain::ProcessingTime, 0)),
            TriggerKind::ContinuousEventTime(i) => Some((TimeDomain::EventTime, i)),
            TriggerKind::ContinuousProcessingTime(i) => Some((TimeDomain::ProcessingTime, i)),
            TriggerKind::Default | TriggerKind::Count(_) => None,
        }
    }
}

/// A key's session: its accumulator (none after a purge) and its count since the last
/// firing (count triggers).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WindowSlot<Acc> {
    acc: Option<Acc>,
    count: u64,
}

impl<Acc> Default for WindowSlot<Acc> {
    fn default() -> Self {
        Self {
            acc: None,
            count: 0,
        }
    }
}

/// One window's keys and their accumulators (none before a key's first record and
/// after a purge).
type PaneTable<K, Acc> = KeyedStates<K, Option<Acc>>;

/// A tumbling or sliding window open in one subtask.
struct Pane<K, Acc> {
    window: Window,
    table: PaneTable<K, Acc>,
    /// Trigger state per key, by the key's entry index in `table` (both grow together;
    /// a table's entries leave only all at once): a count trigger's records since the
    /// last firing, or a continuous trigger's next firing (0: none yet; `u64::MAX`:
    /// none left). Empty under the default triggers, which keep no state per key, so
    /// that their entries stay as small as the accumulator.
    trig: Vec<u64>,
    /// Whether the window's end fired it (it stays open through the allowed lateness).
    fired: bool,
    /// The earliest `next_fire` of its keys (continuous triggers).
    next_fire: u64,
}

/// The trigger state of the key at entry `i`.
#[inline]
fn trig_at(trig: &mut Vec<u64>, i: usize) -> &mut u64 {
    if trig.len() <= i {
        trig.resize(i + 1, 0);
    }
    &mut trig[i]
}

/// Results a firing window end hands downstream at a time.
const FIRE_BATCH: usize = 256;

/// Counters of a window operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Records that arrived after their windows' allowed lateness, not added to any.
    pub late_records: u64,
    /// Results emitted (a window fired for a key).
    pub fired: u64,
}

/// A key's open sessions and their contents.
type Sessions<Acc> = Vec<(Window, WindowSlot<Acc>)>;

/// Per-record session gaps (Flink's `withDynamicGap`), in ns.
pub type SessionGapFn<T> = std::sync::Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// A keyed window operator: assigns records to windows, aggregates them with `A`, and
/// when its trigger fires a key's window calls `result(key, window, aggregate, out)`,
/// which emits into `out`. A window's state is kept until the watermark (or the clock,
/// for processing-time windows) passes its end plus the allowed lateness.
pub struct WindowOperator<K, A: AggregateFunction, KS, WF, O> {
    assigner: WindowAssigner,
    trigger: Trigger,
    lateness_ns: u64,
    /// Tumbling windows under a time trigger: records may take the fast path.
    fast: bool,
    agg: A,
    key: KS,
    timestamps: Option<TimestampsFn<A::In>>,
    gap: Option<SessionGapFn<A::In>>,
    result: WF,
    /// Sessions (merging windows): each key's open sessions and their contents, fired
    /// and cleaned up by timers per (key, time) in the assigner's domain.
    windows: KeyedStates<K, Sessions<A::Acc>>,
    timers: Timers<K>,
    /// Tumbling and sliding windows, by end: the open windows (a few at a time), each
    /// with its keys' contents inline in one dense table. A record costs one probe into
    /// its window's table; a window fires by walking its table, with no per-key timer.
    panes: Vec<Pane<K, A::Acc>>,
    /// Closed windows' tables, kept for their capacity.
    spare: Vec<PaneTable<K, A::Acc>>,
    /// The pane the last record went to (tumbling windows try it first).
    last_pane: Option<usize>,
    /// Where late records go (a side output), if anywhere; and the batch for it.
    late: Option<BoxEmit<A::In>>,
    late_buf: Vec<A::In>,
    /// Reused: the timestamps of the batch being processed.
    ts: Vec<u64>,
    /// Reused: the table entry of each record of a batch on the fast path.
    at: Vec<usize>,
    watermark: u64,
    now_ns: u64,
    counts: WindowCounts,
    _o: std::marker::PhantomData<fn() -> O>,
}

/// Emits `key`'s result for window `w` if it has contents; purges them if asked.
#[inline]
// The operator's fields are passed one by one: they are borrowed apart from the table
// the slot lives in.
#[allow(clippy::too_many_arguments)]
fn fire_slot<K, A: AggregateFunction, O>(
    agg: &A,
    result: &mut impl FnMut(&K, &Window, A::Out, &mut Vec<O>),
    counts: &mut WindowCounts,
    purging: bool,
    key: &K,
    w: &Window,
    acc: &mut Option<A::Acc>,
    out: &mut Vec<O>,
) {
    if let Some(a) = acc {
        result(key, w, agg.get_result(a), out);
        counts.fired += 1;
        if purging {
            *acc = None;
        }
    }
}

impl<K, A, KS, WF, O> WindowOperator<K, A, KS, WF, O>
where
    K: Key,
    A: AggregateFunction,
    A::In: Clone,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, &Window, A::Out, &mut Vec<O>) + 'static,
{
    /// Windows of `assigner` over records keyed by `key`, aggregated by `agg`, fired as
    /// `result(key, window, aggregate, out)`. Event-time windows need `timestamps`.
    pub fn new(
        assigner: WindowAssigner,
        agg: A,
        key: KS,
        timestamps: Option<TimestampsFn<A::In>>,
        result: WF,
    ) -> Self {
        Self {
            assigner,
            trigger: Trigger::default().resolve(&assigner),
            lateness_ns: 0,
            fast: !assigner.is_merging() && assigner.slide_ns == assigner.size_ns,
            agg,
            key,
            timestamps,
            gap: None,
            result,
            windows: KeyedStates::default(),
            timers: Timers::default(),
            panes: Vec::new(),
            spare: Vec::new(),
            last_pane: None,
            late: None,
            late_buf: Vec::new(),
            ts: Vec::new(),
            at: Vec::new(),
            watermark: 0,
            now_ns: 0,
            counts: WindowCounts::default(),
            _o: std::marker::PhantomData,
        }
    }

    /// Fires as `trigger` says instead of the assigner's default (see
    /// [`Trigger::check`] for what session windows take).
    pub fn with_trigger(mut self, trigger: Trigger) -> Self {
        self.trigger = trigger.resolve(&self.assigner);
        self.fast = !self.assigner.is_merging()
            && self.assigner.slide_ns == self.assigner.size_ns
            && matches!(
                self.trigger.kind,
                TriggerKind::EventTime | TriggerKind::ProcessingTime
            );
        self
    }

    /// Keeps event-time windows `lateness_ns` past their end (Flink's
    /// `allowedLateness`): a record arriving in that time is added and, under the
    /// event-time trigger, fires its window again.
    pub fn with_allowed_lateness(mut self, lateness_ns: u64) -> Self {
        if self.assigner.domain == TimeDomain::EventTime {
            self.lateness_ns = lateness_ns;
        }
        self
    }

    /// Session windows whose gap each record sets (Flink's `withDynamicGap`); a gap of
    /// 0 counts as 1 ns.
    pub fn with_dynamic_gap(mut self, gap: SessionGapFn<A::In>) -> Self {
        if self.assigner.is_merging() {
            self.gap = Some(gap);
        }
        self
    }

    /// Sends late records (behind the watermark by more than the allowed lateness
    /// when they arrive) to `late` instead of dropping them (Flink's
    /// `sideOutputLateData`).
    pub fn with_late_output(mut self, late: BoxEmit<A::In>) -> Self {
        self.late = Some(late);
        self
    }

    /// Counters.
    pub fn counts(&self) -> WindowCounts {
        self.counts
    }

    /// A late record: to the late output if there is one, else only counted.
    #[inline]
    fn on_late(&mut self, value: &A::In) {
        self.counts.late_records += 1;
        if self.late.is_some() {
            self.late_buf.push(value.clone());
        }
    }

    /// Hands the batch's late records on, and control events after them.
    fn flush_late(&mut self, event: Option<Event>) {
        if let Some(late) = &mut self.late {
            if !self.late_buf.is_empty() {
                late.push(&mut self.late_buf);
                self.late_buf.clear();
            }
            if let Some(e) = event {
                late.event(e);
            }
        }
    }

    /// A record: tumbling windows under a time trigger try the pane of the record
    /// before (a record almost always falls in the same window: no division, no scan);
    /// anything else takes the general path.
    #[inline(always)]
    fn add(&mut self, hash: u64, key: K, value: &A::In, ts: u64, out: &mut Vec<O>) {
        if self.fast {
            if let Some(p) = self.last_pane.and_then(|i| self.panes.get_mut(i)) {
                if (p.window.start..p.window.end).contains(&ts) && !p.fired {
                    let (_, acc) = p.table.get_or_insert(hash, key);
                    let agg = &self.agg;
                    agg.add(value, acc.get_or_insert_with(|| agg.create_accumulator()));
                    return;
                }
            }
        }
        self.add_slow(hash, key, value, ts, out)
    }

    /// A batch whose records all fall in the pane the last record went to (tumbling
    /// windows under a time trigger, between window ends): first each record's entry,
    /// then the accumulations. The probes do not depend on one another, so their cache
    /// misses overlap (1000 keys of W2's bars take 96 KiB of entries, past L1), where
    /// one loop would wait for each before the next record's probe. Whether it took
    /// the batch.
    #[inline(always)]
    fn add_to_last_pane(&mut self, batch: &[A::In], ts: &[u64], hashes: Option<&[u64]>) -> bool {
        if !self.fast {
            return false;
        }
        let Some(p) = self.last_pane.and_then(|i| self.panes.get_mut(i)) else {
            return false;
        };
        let (start, end) = (p.window.start, p.window.end);
        // `start <= t < end` as one unsigned compare (below `start`, `t - start`
        // wraps past the size), folded without an early exit, so that it vectorizes.
        let size = end.saturating_sub(start);
        if p.fired
            || !ts
                .iter()
                .fold(true, |ok, &t| ok & (t.wrapping_sub(start) < size))
        {
            return false;
        }
        let agg = &self.agg;
        let accumulate = |acc: &mut Option<A::Acc>, r: &A::In| {
            agg.add(r, acc.get_or_insert_with(|| agg.create_accumulator()));
        };
        // Integer keys: one loop, each record's entry found by position.
        let done = p.table.update_by_position(batch, &self.key, accumulate);
        if done == batch.len() {
            return true;
        }
        let (batch, hashes) = (&batch[done..], hashes.and_then(|h| h.get(done..)));
        // The rest (keys found by hash, or a table past one chunk): every record's
        // entry first, then the accumulators, so that the probes' cache misses overlap.
        let at = &mut self.at;
        at.clear();
        match hashes {
            Some(hashes) => {
                for (r, &h) in batch.iter().zip(hashes) {
                    at.push(p.table.index_or_insert(h, (self.key)(r)));
                }
            }
            None => {
                for r in batch {
                    let key = (self.key)(r);
                    at.push(p.table.index_or_insert(key_hash(&key), key));
                }
            }
        }
        // Phase one's indices stand: entries only move when one is removed.
        let accumulate = |acc: Option<&mut Option<A::Acc>>, r: &A::In| {
            debug_assert!(acc.is_some(), "an entry of a pane vanished");
            if let Some(acc) = acc {
                accumulate(acc, r);
            }
        };
        match p.table.entries_mut() {
            // Up to 1024 keys: one slice, no chunk to pick per record.
            Some(entries) => {
                for (r, &i) in batch.iter().zip(at.iter()) {
                    accumulate(entries.get_mut(i).map(|e| &mut e.1), r);
                }
            }
            None => {
                for (r, &i) in batch.iter().zip(at.iter()) {
                    accumulate(p.table.at_mut(i).map(|(_, s)| s), r);
                }
            }
        }
        true
    }

    #[inline(never)]
    fn add_slow(&mut self, hash: u64, key: K, value: &A::In, ts: u64, out: &mut Vec<O>) {
        if !self.assigner.is_merging() {
            return self.add_to_panes(hash, key, value, ts, out);
        }
        let gap = match &self.gap {
            Some(g) => g(value).max(1),
            None => self.assigner.gap_ns,
        };
        let w = Window {
            start: ts,
            end: ts.saturating_add(gap),
        };
        let (wm, lateness, trigger) = (self.watermark, self.lateness_ns, self.trigger);
        let event_time = self.assigner.domain == TimeDomain::EventTime;
        let late =
            |w: &Window| event_time && wm > 0 && w.max_timestamp().saturating_add(lateness) <= wm;
        if late(&w) && self.windows.get(&key).is_none() {
            return self.on_late(value);
        }
        let (agg, timers) = (&self.agg, &mut self.timers);
        let (key, open) = self.windows.get_or_insert(hash, key);
        // Merge with every open session the record's window overlaps or touches (as
        // Flink's `TimeWindow.intersects`), folding their contents into one.
        let mut merged = w;
        let mut slot = WindowSlot::<A::Acc>::default();
        let mut i = 0;
        while i < open.len() {
            let o = open[i].0;
            if o.start <= merged.end && o.end >= merged.start {
                // Its timers stay: timers are per (key, time), and another session of
                // the key may share one. One that finds no session due does nothing.
                let (ow, os) = open.swap_remove(i);
                merged = Window {
                    start: merged.start.min(ow.start),
                    end: merged.end.max(ow.end),
                };
                slot.count += os.count;
                slot.acc = match (slot.acc.take(), os.acc) {
                    (Some(a), Some(b)) => Some(agg.merge(a, b)),
                    (a, b) => a.or(b),
                };
            } else {
                i += 1;
            }
        }
        let max_ts = merged.max_timestamp();
        if late(&merged) {
            // As Flink's: the merged session is late, so the record is. (Its parts
            // were late too and are dropped at their cleanup time.)
            if slot.acc.is_some() || slot.count > 0 {
                timers.register(key, max_ts.saturating_add(lateness));
                open.push((merged, slot));
            } else if open.is_empty() {
                let key = key.clone();
                self.windows.remove(hash, &key);
            }
            return self.on_late(value);
        }
        let acc = slot.acc.get_or_insert_with(|| agg.create_accumulator());
        agg.add(value, acc);
        slot.count += 1;
        let mut fire = false;
        match trigger.kind {
            TriggerKind::Count(n) if slot.count >= n => {
                slot.count = 0;
                fire = true;
            }
            // A record within the allowed lateness of a fired session fires it again.
            TriggerKind::EventTime if event_time && wm > 0 && max_ts <= wm => fire = true,
            _ => {}
        }
        if fire {
            fire_slot(
                agg,
                &mut self.result,
                &mut self.counts,
                trigger.purging,
                key,
                &merged,
                &mut slot.acc,
                out,
            );
        }
        if matches!(
            trigger.kind,
            TriggerKind::EventTime | TriggerKind::ProcessingTime
        ) && !(event_time && wm > 0 && max_ts <= wm)
        {
            timers.register(key, max_ts);
        }
        timers.register(key, max_ts.saturating_add(lateness));
        open.push((merged, slot));
    }

    /// A record of a tumbling or sliding window.
    fn add_to_panes(&mut self, hash: u64, key: K, value: &A::In, ts: u64, out: &mut Vec<O>) {
        let (wm, lateness) = (self.watermark, self.lateness_ns);
        let event_time = self.assigner.domain == TimeDomain::EventTime;
        let mut last = None;
        let mut assigned = 0;
        let (agg, panes, spare) = (&self.agg, &mut self.panes, &mut self.spare);
        let (trigger, now) = (self.trigger, self.now_ns);
        let (result, counts) = (&mut self.result, &mut self.counts);
        let mut late = true;
        self.assigner.assign(ts, |w| {
            // Late (event time): the watermark passed the window's end and its allowed
            // lateness, so its state is gone. Processing time has no late records: each
            // goes to the window of the time it arrives at.
            if event_time && wm > 0 && w.max_timestamp().saturating_add(lateness) <= wm {
                return;
            }
            late = false;
            assigned += 1;
            let i = match panes.iter().position(|p| p.window == w) {
                Some(i) => i,
                None => {
                    // Panes stay ordered by end, so they fire in time order.
                    let i = panes
                        .partition_point(|p| (p.window.end, p.window.start) < (w.end, w.start));
                    panes.insert(
                        i,
                        Pane {
                            window: w,
                            table: spare.pop().unwrap_or_default(),
                            trig: Vec::new(),
                            // Opened within its allowed lateness: its end has passed,
                            // and the record fires it (below), not the next watermark.
                            fired: event_time && wm > 0 && w.max_timestamp() <= wm,
                            next_fire: u64::MAX,
                        },
                    );
                    i
                }
            };
            let pane = &mut panes[i];
            let (at, key, acc) = pane.table.get_or_insert_at(hash, key.clone());
            agg.add(value, acc.get_or_insert_with(|| agg.create_accumulator()));
            let max_ts = w.max_timestamp();
            let fire = match trigger.kind {
                TriggerKind::Count(n) => {
                    let c = trig_at(&mut pane.trig, at);
                    *c += 1;
                    let full = *c >= n;
                    if full {
                        *c = 0;
                    }
                    full
                }
                // Within the allowed lateness of a window that fired: again.
                TriggerKind::EventTime | TriggerKind::ContinuousEventTime(_)
                    if wm > 0 && max_ts <= wm =>
                {
                    true
                }
                TriggerKind::ContinuousEventTime(iv)
                | TriggerKind::ContinuousProcessingTime(iv) => {
                    let t = match trigger.kind {
                        TriggerKind::ContinuousEventTime(_) => ts,
                        _ => now,
                    };
                    let next = trig_at(&mut pane.trig, at);
                    if *next == 0 {
                        *next = (t - t % iv).saturating_add(iv).min(max_ts);
                        pane.next_fire = pane.next_fire.min(*next);
                    }
                    false
                }
                _ => false,
            };
            if fire {
                fire_slot(agg, result, counts, trigger.purging, key, &w, acc, out);
            }
            last = Some(i);
        });
        self.last_pane = if assigned == 1 { last } else { None };
        if late {
            self.on_late(value);
        }
    }

    /// The clock of `domain` reached `time`: fires what the trigger says is due, and
    /// drops the windows of that domain past their allowed lateness, earliest first.
    fn advance(&mut self, domain: TimeDomain, time: u64, out: &mut Output<'_, O>) {
        self.advance_panes(domain, time, out);
        if self.assigner.domain == domain && self.assigner.is_merging() {
            self.fire_sessions(time, out.buffer());
        }
    }

    fn advance_panes(&mut self, domain: TimeDomain, time: u64, out: &mut Output<'_, O>) {
        let clock = self.trigger.clock().filter(|(d, _)| *d == domain);
        let cleanup = self.assigner.domain == domain;
        let purging = self.trigger.purging;
        let mut i = 0;
        while i < self.panes.len() {
            let p = &mut self.panes[i];
            let w = p.window;
            let max_ts = w.max_timestamp();
            match clock {
                // Continuous: each key fires at its own times (the window's end the last).
                Some((_, iv)) if iv > 0 && p.next_fire <= time && p.next_fire != u64::MAX => {
                    let mut next = u64::MAX;
                    for (i, (key, acc)) in p.table.iter_mut().enumerate() {
                        let next_fire = trig_at(&mut p.trig, i);
                        while *next_fire > 0 && *next_fire != u64::MAX && *next_fire <= time {
                            fire_slot(
                                &self.agg,
                                &mut self.result,
                                &mut self.counts,
                                purging,
                                key,
                                &w,
                                acc,
                                out.buffer(),
                            );
                            *next_fire = if *next_fire >= max_ts {
                                u64::MAX
                            } else {
                                next_fire.saturating_add(iv).min(max_ts)
                            };
                        }
                        if *next_fire > 0 {
                            // (u64::MAX, none left, never comes due.)
                            next = next.min(*next_fire);
                        }
                        if out.pending() >= FIRE_BATCH {
                            out.flush();
                        }
                    }
                    p.next_fire = next;
                }
                // The window's end.
                Some((_, 0)) if !p.fired && max_ts <= time => {
                    p.fired = true;
                    for (key, acc) in p.table.iter_mut() {
                        fire_slot(
                            &self.agg,
                            &mut self.result,
                            &mut self.counts,
                            purging,
                            key,
                            &w,
                            acc,
                            out.buffer(),
                        );
                        // A window end fires every key at once: results leave in
                        // batches as they are made, so the first do not wait for the
                        // last.
                        if out.pending() >= FIRE_BATCH {
                            out.flush();
                        }
                    }
                }
                _ => {}
            }
            if cleanup && max_ts.saturating_add(self.lateness_ns) <= time {
                let mut p = self.panes.remove(i);
                p.table.clear();
                self.spare.push(p.table);
                // Indices moved: the cached pane is looked up again.
                self.last_pane = None;
                continue;
            }
            if max_ts > time && clock.is_none_or(|(_, iv)| iv == 0) && cleanup {
                // Later panes end later still: nothing more is due.
                break;
            }
            i += 1;
        }
    }

    /// Session timers due at `time`: a session's end fires it (under a time trigger),
    /// its end plus the allowed lateness drops it; a key left without sessions leaves
    /// the state.
    fn fire_sessions(&mut self, time: u64, out: &mut Vec<O>) {
        let end_fires = matches!(
            self.trigger.kind,
            TriggerKind::EventTime | TriggerKind::ProcessingTime
        );
        let mark = self.timers.mark();
        while let Some((at, key)) = self.timers.pop_due(time, mark) {
            let hash = key_hash(&key);
            let (key, open) = self.windows.get_or_insert(hash, key);
            let mut i = 0;
            while i < open.len() {
                let max_ts = open[i].0.max_timestamp();
                if end_fires && max_ts == at {
                    let (w, slot) = &mut open[i];
                    fire_slot(
                        &self.agg,
                        &mut self.result,
                        &mut self.counts,
                        self.trigger.purging,
                        key,
                        w,
                        &mut slot.acc,
                        out,
                    );
                }
                if max_ts.saturating_add(self.lateness_ns) <= at {
                    open.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if open.is_empty() {
                let key = key.clone();
                self.windows.remove(hash, &key);
            }
        }
    }

    /// Keys with open windows (counted once per window they are in).
    pub fn key_count(&self) -> usize {
        self.windows.len() + self.panes.iter().map(|p| p.table.len()).sum::<usize>()
    }
}

impl<K, A, KS, WF, O> Operator for WindowOperator<K, A, KS, WF, O>
where
    K: Key,
    A: AggregateFunction,
    A::In: Clone + 'static,
    A::Acc: 'static,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, &Window, A::Out, &mut Vec<O>) + 'static,
    O: 'static,
{
    type In = A::In;
    type Out = O;

    #[inline]
    fn process(&mut self, batch: &mut Vec<A::In>, out: &mut Output<'_, O>) {
        self.stamp(batch);
        let mut ts = std::mem::take(&mut self.ts);
        if !self.add_to_last_pane(batch, &ts, None) {
            let buf = out.buffer();
            for (r, &t) in batch.iter().zip(&ts) {
                let key = (self.key)(r);
                self.add(key_hash(&key), key, r, t, buf);
            }
        }
        ts.clear();
        self.ts = ts;
        batch.clear();
        self.flush_late(None);
    }

    #[inline]
    fn process_keyed(
        &mut self,
        batch: &mut Vec<A::In>,
        hashes: &mut Vec<u64>,
        out: &mut Output<'_, O>,
    ) {
        if hashes.len() != batch.len() {
            hashes.clear();
            return self.process(batch, out);
        }
        self.stamp(batch);
        let mut ts = std::mem::take(&mut self.ts);
        if !self.add_to_last_pane(batch, &ts, Some(hashes)) {
            let buf = out.buffer();
            for ((r, &t), &h) in batch.iter().zip(&ts).zip(hashes.iter()) {
                let key = (self.key)(r);
                self.add(h, key, r, t, buf);
            }
        }
        ts.clear();
        self.ts = ts;
        batch.clear();
        hashes.clear();
        self.flush_late(None);
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, O>) {
        if watermark > self.watermark {
            self.watermark = watermark;
            self.advance(TimeDomain::EventTime, watermark, out);
        }
        out.watermark(watermark);
        self.flush_late(Some(Event::Watermark(watermark)));
    }

    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, O>) {
        out.event(Event::Idle(idle));
        self.flush_late(Some(Event::Idle(idle)));
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, O>) {
        out.event(Event::Barrier(barrier));
        self.flush_late(Some(Event::Barrier(barrier)));
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, O>) {
        self.now_ns = now_ns;
        let by_trigger = self
            .trigger
            .clock()
            .is_some_and(|(d, _)| d == TimeDomain::ProcessingTime);
        let by_windows = self.assigner.domain == TimeDomain::ProcessingTime;
        if !by_trigger && !by_windows {
            return;
        }
        let due = by_windows && self.timers.next_time().is_some_and(|t| t <= now_ns)
            || self.panes.iter().any(|p| {
                let ended = p.window.max_timestamp() <= now_ns;
                by_trigger && (p.next_fire <= now_ns || !p.fired && ended) || by_windows && ended
            });
        if due {
            self.advance(TimeDomain::ProcessingTime, now_ns, out);
        }
    }

    fn on_end_of_input(&mut self, out: &mut Output<'_, O>) {
        // Processing-time windows still open fire at the end of input, as Flink's do
        // in a bounded job.
        if self.assigner.domain == TimeDomain::ProcessingTime
            || self
                .trigger
                .clock()
                .is_some_and(|(d, _)| d == TimeDomain::ProcessingTime)
        {
            self.advance(TimeDomain::ProcessingTime, u64::MAX, out);
        }
        // The late output is a stream of its own: it ends here too.
        self.flush_late(Some(Event::EndOfInput));
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.freeze_state()?.map(StateSnapshot::finish).transpose()
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        // Each pane's table and the sessions freeze in O(chunks); per-key trigger
        // state (count and continuous triggers only) and the timers are copied.
        let panes: Vec<_> = self
            .panes
            .iter_mut()
            .map(|p| {
                let table = p.table.freeze();
                (p.window, table, p.trig.clone(), p.fired, p.next_fire)
            })
            .collect();
        let sessions = self.windows.freeze();
        let timers = self.timers.to_vec();
        Ok(Some(StateSnapshot::frozen(move || {
            encode_state(&(panes, sessions, timers))
        })))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        type PaneOwned<K, Acc> = (Window, Vec<(K, Option<Acc>)>, Vec<u64>, bool, u64);
        type Snap<K, Acc> = (
            Vec<PaneOwned<K, Acc>>,
            Vec<(K, Sessions<Acc>)>,
            Vec<(u64, K)>,
        );
        let (panes, sessions, timers): Snap<K, A::Acc> = decode_state(state)?;
        // Panes of one window from several old subtasks (a state redistributed to
        // another parallelism) merge: each brings the keys of its own.
        let keep = crate::checkpoint::restore_filter();
        for (window, entries, trig, fired, next_fire) in panes {
            let at = match self.panes.iter().position(|p| p.window == window) {
                Some(i) => {
                    let p = &mut self.panes[i];
                    p.fired |= fired;
                    p.next_fire = p.next_fire.min(next_fire);
                    i
                }
                None => {
                    self.panes.push(Pane {
                        window,
                        table: PaneTable::default(),
                        trig: Vec::new(),
                        fired,
                        next_fire,
                    });
                    self.panes.len() - 1
                }
            };
            let pane = &mut self.panes[at];
            for (i, (k, acc)) in entries.into_iter().enumerate() {
                let h = key_hash(&k);
                if keep.is_some_and(|r| !r.owns(h)) {
                    continue;
                }
                let (j, _, slot) = pane.table.get_or_insert_at(h, k);
                *slot = acc;
                if let Some(&t) = trig.get(i) {
                    *trig_at(&mut pane.trig, j) = t;
                }
            }
        }
        self.panes.retain(|p| !p.table.is_empty());
        // Kept in order of their ends, as the operator keeps them.
        self.panes.sort_by_key(|p| p.window.end);
        self.last_pane = None;
        self.windows.restore(sessions);
        self.timers.restore(timers);
        Ok(())
    }
}

impl<K, A: AggregateFunction, KS, WF, O> WindowOperator<K, A, KS, WF, O> {
    /// Fills `self.ts` with the batch's timestamps in the assigner's domain.
    fn stamp(&mut self, batch: &[A::In]) {
        match (&self.timestamps, self.assigner.domain) {
            (Some(f), TimeDomain::EventTime) => f(batch, &mut self.ts),
            _ => {
                self.ts.clear();
                self.ts.resize(batch.len(), self.now_ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    fn windows_of(a: &WindowAssigner, ts: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        a.assign(ts, |w| v.push((w.start, w.end)));
        v.sort_unstable();
        v
    }

    #[test]
    fn cumulating_windows_grow_by_steps_within_their_size() {
        let c = WindowAssigner::cumulative_event_time(
            Duration::from_nanos(10),
            Duration::from_nanos(2),
        )
        .unwrap();
        assert_eq!(windows_of(&c, 0), [(0, 2), (0, 4), (0, 6), (0, 8), (0, 10)]);
        assert_eq!(windows_of(&c, 5), [(0, 6), (0, 8), (0, 10)]);
        assert_eq!(windows_of(&c, 9), [(0, 10)]);
        assert_eq!(windows_of(&c, 13), [(10, 14), (10, 16), (10, 18), (10, 20)]);
        assert!(WindowAssigner::cumulative_event_time(
            Duration::from_nanos(10),
            Duration::from_nanos(3)
        )
        .is_err());
        // A step equal to the size is a tumbling window.
        let t = WindowAssigner::cumulative_event_time(
            Duration::from_nanos(10),
            Duration::from_nanos(10),
        )
        .unwrap();
        assert_eq!(windows_of(&t, 13), [(10, 20)]);
    }

    #[test]
    fn assigners_place_records_as_flinks_do() {
        let t = WindowAssigner::tumbling_event_time(Duration::from_nanos(10)).unwrap();
        assert_eq!(windows_of(&t, 0), [(0, 10)]);
        assert_eq!(windows_of(&t, 9), [(0, 10)]);
        assert_eq!(windows_of(&t, 10), [(10, 20)]);
        let s =
            WindowAssigner::sliding_event_time(Duration::from_nanos(10), Duration::from_nanos(5))
                .unwrap();
        assert_eq!(windows_of(&s, 12), [(5, 15), (10, 20)]);
        // As Flink's: windows may start before 0 ([-5, 5) here), clamped to 0.
        assert_eq!(windows_of(&s, 3), [(0, 5), (0, 10)]);
        let sessions = WindowAssigner::event_time_session(Duration::from_nanos(10)).unwrap();
        assert_eq!(windows_of(&sessions, 42), [(42, 52)]);
        assert!(WindowAssigner::event_time_session(Duration::ZERO).is_err());
        let o = t.with_offset(Duration::from_nanos(3)).unwrap();
        // Regression (review): a timestamp below the offset underflowed.
        assert_eq!(windows_of(&o, 0), [(0, 3)], "the window [-7, 3), clamped");
        assert_eq!(windows_of(&o, 2), [(0, 3)]);
        assert_eq!(
            windows_of(&s.with_offset(Duration::from_nanos(2)).unwrap(), 1),
            [(0, 2), (0, 7)]
        );
        assert_eq!(windows_of(&o, 12), [(3, 13)]);
        assert_eq!(windows_of(&o, 13), [(13, 23)]);
        assert!(WindowAssigner::tumbling_event_time(Duration::ZERO).is_err());
        assert!(t.with_offset(Duration::from_nanos(10)).is_err());
    }
}

#[cfg(test)]
mod operator_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::{BoxEmit, Chained, Emit, Event};
    use std::sync::Arc;
    use std::time::Duration;

    struct Sink(std::rc::Rc<std::cell::RefCell<Vec<(u64, u64)>>>);
    impl Emit<(u64, u64)> for Sink {
        fn push(&mut self, b: &mut Vec<(u64, u64)>) {
            self.0.borrow_mut().append(b);
        }
        fn event(&mut self, _: Event) {}
        fn tick(&mut self, _: u64) {}
    }

    /// Regression (review): a key kept an empty entry for ever after its windows fired,
    /// so state grew with every key ever seen.
    #[test]
    fn keys_leave_the_state_when_their_last_window_fires() {
        let ts: TimestampsFn<u64> = Arc::new(|b: &[u64], out: &mut Vec<u64>| {
            out.clear();
            out.extend_from_slice(b);
        });
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let op = WindowOperator::new(
            WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap(),
            CollectAll::<u64>::default(),
            |t: &u64| *t,
            Some(ts),
            |k: &u64, w: &Window, all: Vec<u64>, out: &mut Vec<(u64, u64)>| {
                out.push((*k, w.start + all.len() as u64))
            },
        );
        let mut c = Chained::new(op, Box::new(Sink(got.clone())) as BoxEmit<(u64, u64)>);
        c.push(&mut (0..50u64).collect());
        assert_eq!(c.operator().key_count(), 50);
        c.event(Event::Watermark(99));
        assert_eq!(got.borrow().len(), 50);
        assert_eq!(
            c.operator().key_count(),
            0,
            "no key keeps state without a window"
        );
        c.push(&mut vec![150, 160]);
        assert_eq!(c.operator().key_count(), 2);
    }
}

/// Triggers, allowed lateness and sessions against plain simulations of Flink's
/// `WindowOperator` semantics, event by event.
#[cfg(test)]
mod trigger_tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::{BoxEmit, Chained, Emit, Event};
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    type Rec = (u32, u64, u64);
    /// (key, window start, window end, Σvalue, count).
    type Res = (u32, u64, u64, u64, u64);

    #[derive(Clone)]
    struct Sum;
    impl AggregateFunction for Sum {
        type In = Rec;
        type Acc = (u64, u64);
        type Out = (u64, u64);
        fn create_accumulator(&self) -> (u64, u64) {
            (0, 0)
        }
        fn add(&self, v: &Rec, a: &mut (u64, u64)) {
            a.0 += v.2;
            a.1 += 1;
        }
        fn get_result(&self, a: &(u64, u64)) -> (u64, u64) {
            *a
        }
        fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
            (a.0 + b.0, a.1 + b.1)
        }
    }

    struct Sink(Rc<RefCell<Vec<Res>>>);
    impl Emit<Res> for Sink {
        fn push(&mut self, b: &mut Vec<Res>) {
            self.0.borrow_mut().append(b);
        }
        fn event(&mut self, _: Event) {}
        fn tick(&mut self, _: u64) {}
    }

    #[derive(Debug, Clone)]
    enum Step {
        Record(Rec),
        Watermark(u64),
    }

    /// Records with event times that drift forward, and watermarks that advance by
    /// steps (some records fall behind them: late, or within the lateness).
    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec((0u32..3, 0u64..120, 1u64..5, 0u8..10), 1..160).prop_map(|v| {
            let (mut t, mut wm) = (10u64, 0u64);
            let mut out = Vec::new();
            for (k, back, val, kind) in v {
                t += 7;
                if kind == 0 {
                    wm = wm.max(t.saturating_sub(back)).max(1);
                    out.push(Step::Watermark(wm));
                } else {
                    out.push(Step::Record((k, t.saturating_sub(back), val)));
                }
            }
            out.push(Step::Watermark(u64::MAX));
            out
        })
    }

    fn run_op(
        assigner: WindowAssigner,
        trigger: Trigger,
        lateness: u64,
        steps: &[Step],
    ) -> (Vec<Res>, u64) {
        let ts: TimestampsFn<Rec> = Arc::new(|b: &[Rec], out: &mut Vec<u64>| {
            out.clear();
            out.extend(b.iter().map(|r| r.1));
        });
        let got = Rc::new(RefCell::new(Vec::new()));
        let op = WindowOperator::new(
            assigner,
            Sum,
            |r: &Rec| r.0,
            Some(ts),
            |k: &u32, w: &Window, (s, n): (u64, u64), out: &mut Vec<Res>| {
                out.push((*k, w.start, w.end, s, n))
            },
        )
        .with_trigger(trigger)
        .with_allowed_lateness(lateness);
        let mut c = Chained::new(op, Box::new(Sink(got.clone())) as BoxEmit<Res>);
        // Records go in batches of up to three between watermarks.
        let mut batch = Vec::new();
        for s in steps {
            match s {
                Step::Record(r) => {
                    batch.push(*r);
                    if batch.len() == 3 {
                        c.push(&mut batch);
                        batch.clear();
                    }
                }
                Step::Watermark(w) => {
                    if !batch.is_empty() {
                        c.push(&mut batch);
                        batch.clear();
                    }
                    c.event(Event::Watermark(*w));
                }
            }
        }
        let late = c.operator().counts().late_records;
        let mut v = got.borrow().clone();
        v.sort_unstable();
        (v, late)
    }

    #[derive(Default)]
    struct St {
        sum: u64,
        n: u64,
        count: u64,
        fire_ts: Option<u64>,
    }

    /// Flink's semantics, (key, window) by (key, window), with a timer set.
    fn reference(
        assigner: &WindowAssigner,
        trigger: Trigger,
        lateness: u64,
        steps: &[Step],
    ) -> (Vec<Res>, u64) {
        let mut state: BTreeMap<(u64, u64, u32), St> = BTreeMap::new();
        let mut timers: BTreeSet<(u64, u64, u64, u32)> = BTreeSet::new();
        let (mut out, mut late, mut wm) = (Vec::new(), 0u64, None::<u64>);
        let emit = |st: &mut St, k: u32, w: (u64, u64), out: &mut Vec<Res>| {
            if st.n > 0 {
                out.push((k, w.0, w.1, st.sum, st.n));
                if trigger.is_purging() {
                    st.sum = 0;
                    st.n = 0;
                }
            }
        };
        for s in steps {
            match *s {
                Step::Record((k, ts, v)) => {
                    let mut ws = Vec::new();
                    assigner.assign(ts, |w| ws.push((w.start, w.end)));
                    let mut any = false;
                    for w in ws {
                        let max_ts = w.1 - 1;
                        if wm.is_some_and(|wm| max_ts + lateness <= wm) {
                            continue;
                        }
                        any = true;
                        let st = state.entry((w.0, w.1, k)).or_default();
                        st.sum += v;
                        st.n += 1;
                        timers.insert((max_ts + lateness, w.0, w.1, k));
                        let passed = wm.is_some_and(|wm| max_ts <= wm);
                        let fire = match trigger.kind() {
                            TriggerKind::EventTime if passed => true,
                            TriggerKind::EventTime => {
                                timers.insert((max_ts, w.0, w.1, k));
                                false
                            }
                            TriggerKind::Count(c) => {
                                st.count += 1;
                                if st.count >= c {
                                    st.count = 0;
                                    true
                                } else {
                                    false
                                }
                            }
                            TriggerKind::ContinuousEventTime(_) if passed => true,
                            TriggerKind::ContinuousEventTime(iv) => {
                                timers.insert((max_ts, w.0, w.1, k));
                                if st.fire_ts.is_none() {
                                    let nf = (ts - ts % iv + iv).min(max_ts);
                                    st.fire_ts = Some(nf);
                                    timers.insert((nf, w.0, w.1, k));
                                }
                                false
                            }
                            other => panic!("not simulated: {other:?}"),
                        };
                        if fire {
                            emit(st, k, w, &mut out);
                        }
                    }
                    if !any {
                        late += 1;
                    }
                }
                Step::Watermark(w) => {
                    if wm.is_some_and(|wm| w <= wm) {
                        continue;
                    }
                    wm = Some(w);
                    while let Some(&t) = timers.iter().next().filter(|t| t.0 <= w) {
                        timers.remove(&t);
                        let (time, start, end, k) = t;
                        let max_ts = end - 1;
                        let Some(st) = state.get_mut(&(start, end, k)) else {
                            continue;
                        };
                        let fire = match trigger.kind() {
                            TriggerKind::EventTime => time == max_ts,
                            TriggerKind::ContinuousEventTime(iv) => {
                                if time == max_ts {
                                    true
                                } else if st.fire_ts == Some(time) {
                                    let nf = (time + iv).min(max_ts);
                                    st.fire_ts = Some(nf);
                                    timers.insert((nf, start, end, k));
                                    true
                                } else {
                                    false
                                }
                            }
                            _ => false,
                        };
                        if fire {
                            emit(st, k, (start, end), &mut out);
                        }
                        if time == max_ts.saturating_add(lateness) {
                            state.remove(&(start, end, k));
                            timers.retain(|t| (t.1, t.2, t.3) != (start, end, k));
                        }
                    }
                }
            }
        }
        out.sort_unstable();
        (out, late)
    }

    fn trigger_of(i: u8) -> Trigger {
        match i {
            0 => Trigger::default(),
            1 => Trigger::count(3).unwrap(),
            2 => Trigger::count(2).unwrap().purging(),
            3 => Trigger::continuous_event_time(Duration::from_nanos(15)).unwrap(),
            4 => Trigger::event_time().purging(),
            _ => Trigger::continuous_event_time(Duration::from_nanos(20))
                .unwrap()
                .purging(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Tumbling and sliding windows under every trigger, with and without allowed
        /// lateness, equal the simulation: the same results, as often, and the same
        /// records counted late.
        #[test]
        fn triggers_and_lateness_follow_flinks_semantics(
            steps in steps(),
            sliding in any::<bool>(),
            t in 0u8..6,
            lateness in prop::sample::select(vec![0u64, 30, 100]),
        ) {
            let assigner = if sliding {
                WindowAssigner::sliding_event_time(Duration::from_nanos(60), Duration::from_nanos(20)).unwrap()
            } else {
                WindowAssigner::tumbling_event_time(Duration::from_nanos(50)).unwrap()
            };
            let trigger = trigger_of(t);
            let expected = reference(&assigner, trigger.resolve(&assigner), lateness, &steps);
            prop_assert_eq!(run_op(assigner, trigger, lateness, &steps), expected);
        }

        /// Sessions with allowed lateness under the event-time and count triggers equal
        /// a plain simulation of merging sessions.
        #[test]
        fn sessions_with_lateness_and_count_triggers_follow_flinks_semantics(
            steps in steps(),
            count in any::<bool>(),
            purging in any::<bool>(),
            lateness in prop::sample::select(vec![0u64, 30, 100]),
        ) {
            let gap = 25u64;
            let assigner = WindowAssigner::event_time_session(Duration::from_nanos(gap)).unwrap();
            let mut trigger = if count { Trigger::count(2).unwrap() } else { Trigger::event_time() };
            if purging {
                trigger = trigger.purging();
            }
            // (start, end, sum, n, count, end-fire pending).
            type Session = (u64, u64, u64, u64, u64, bool);
            let mut open: BTreeMap<u32, Vec<Session>> = BTreeMap::new();
            let (mut out, mut late, mut wm) = (Vec::<Res>::new(), 0u64, None::<u64>);
            for s in &steps {
                match *s {
                    Step::Record((k, ts, v)) => {
                        let sessions = open.entry(k).or_default();
                        let (mut m, mut keep) = ((ts, ts + gap, 0, 0, 0, false), Vec::new());
                        for o in sessions.drain(..) {
                            if o.0 <= m.1 && o.1 >= m.0 {
                                m = (m.0.min(o.0), m.1.max(o.1), m.2 + o.2, m.3 + o.3, m.4 + o.4, false);
                            } else {
                                keep.push(o);
                            }
                        }
                        *sessions = keep;
                        let max_ts = m.1 - 1;
                        if wm.is_some_and(|wm| max_ts + lateness <= wm) {
                            late += 1;
                            continue;
                        }
                        m.2 += v;
                        m.3 += 1;
                        m.4 += 1;
                        let passed = wm.is_some_and(|wm| max_ts <= wm);
                        let fire = if count {
                            if m.4 >= 2 { m.4 = 0; true } else { false }
                        } else {
                            m.5 = !passed;
                            passed
                        };
                        if fire && m.3 > 0 {
                            out.push((k, m.0, m.1, m.2, m.3));
                            if purging { m.2 = 0; m.3 = 0; }
                        }
                        sessions.push(m);
                    }
                    Step::Watermark(w) => {
                        if wm.is_some_and(|wm| w <= wm) {
                            continue;
                        }
                        wm = Some(w);
                        for (k, sessions) in open.iter_mut() {
                            for m in sessions.iter_mut() {
                                if m.5 && m.1 - 1 <= w {
                                    m.5 = false;
                                    if m.3 > 0 {
                                        out.push((*k, m.0, m.1, m.2, m.3));
                                        if purging { m.2 = 0; m.3 = 0; }
                                    }
                                }
                            }
                            sessions.retain(|m| (m.1 - 1).saturating_add(lateness) > w);
                        }
                    }
                }
            }
            out.sort_unstable();
            prop_assert_eq!(run_op(assigner, trigger, lateness, &steps), (out, late));
        }
    }

    /// Dynamic gaps: each record's session closes its own gap after it.
    #[test]
    fn dynamic_session_gaps_close_each_session_after_its_records_gap() {
        let ts: TimestampsFn<Rec> = Arc::new(|b: &[Rec], out: &mut Vec<u64>| {
            out.clear();
            out.extend(b.iter().map(|r| r.1));
        });
        let got = Rc::new(RefCell::new(Vec::new()));
        let op = WindowOperator::new(
            WindowAssigner::event_time_session(Duration::from_nanos(10)).unwrap(),
            Sum,
            |r: &Rec| r.0,
            Some(ts),
            |k: &u32, w: &Window, (s, n): (u64, u64), out: &mut Vec<Res>| {
                out.push((*k, w.start, w.end, s, n))
            },
        )
        // The value is the gap.
        .with_dynamic_gap(Arc::new(|r: &Rec| r.2));
        let mut c = Chained::new(op, Box::new(Sink(got.clone())) as BoxEmit<Res>);
        // 100 (gap 50) reaches 140 (gap 5): one session [100, 150); 200 (gap 0 → 1 ns).
        c.push(&mut vec![(1, 100, 50), (1, 140, 5), (1, 200, 0)]);
        c.event(Event::Watermark(u64::MAX));
        let mut v = got.borrow().clone();
        v.sort_unstable();
        assert_eq!(v, [(1, 100, 150, 55, 2), (1, 200, 201, 0, 1)]);
    }

    #[test]
    fn session_windows_refuse_continuous_triggers() {
        let s = WindowAssigner::event_time_session(Duration::from_nanos(10)).unwrap();
        assert!(Trigger::continuous_event_time(Duration::from_nanos(5))
            .unwrap()
            .check(&s)
            .is_err());
        assert!(Trigger::processing_time().check(&s).is_err());
        assert!(Trigger::count(3).unwrap().check(&s).is_ok());
        assert!(Trigger::default().purging().check(&s).is_ok());
        assert!(Trigger::count(0).is_err());
        assert!(Trigger::continuous_event_time(Duration::ZERO).is_err());
    }
}
