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
use crate::record::Key;

/// A window: the event times `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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
            domain,
        })
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
    /// The accumulator.
    type Acc;
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
    T: Clone + Send + Sync + 'static,
    R: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    type In = T;
    type Acc = Option<T>;
    type Out = Option<T>;
    fn create_accumulator(&self) -> Option<T> {
        None
    }
    fn add(&self, value: &T, acc: &mut Option<T>) {
        *acc = Some(match acc.take() {
            Some(a) => (self.reduce)(a, value.clone()),
            None => value.clone(),
        });
    }
    fn get_result(&self, acc: &Option<T>) -> Option<T> {
        acc.clone()
    }
    fn merge(&self, a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some((self.reduce)(a, b)),
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

impl<T: Clone + Send + Sync + 'static> AggregateFunction for CollectAll<T> {
    type In = T;
    type Acc = Vec<T>;
    type Out = Vec<T>;
    fn create_accumulator(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, value: &T, acc: &mut Vec<T>) {
        acc.push(value.clone());
    }
    fn get_result(&self, acc: &Vec<T>) -> Vec<T> {
        acc.clone()
    }
    fn merge(&self, mut a: Vec<T>, mut b: Vec<T>) -> Vec<T> {
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
}

/// One window's keys and their accumulators.
type Pane<K, Acc> = KeyedStates<K, Option<Acc>>;

/// Results a firing window end hands downstream at a time.
const FIRE_BATCH: usize = 256;

/// Counters of a window operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Records that arrived after their windows fired, dropped.
    pub late_records: u64,
    /// Windows fired.
    pub fired: u64,
}

/// A keyed window operator: assigns records to windows, aggregates them with `A`, and
/// when a window fires calls `result(key, window, aggregate, out)`, which emits into
/// `out`.
pub struct WindowOperator<K, A: AggregateFunction, KS, WF, O> {
    assigner: WindowAssigner,
    agg: A,
    key: KS,
    timestamps: Option<TimestampsFn<A::In>>,
    result: WF,
    /// Sessions (merging windows): each key's open sessions and their accumulators,
    /// fired by a timer per (key, session end).
    windows: KeyedStates<K, Vec<(Window, A::Acc)>>,
    timers: Timers<K>,
    /// Tumbling and sliding windows: the open windows (a few at a time), each with its
    /// keys' accumulators inline in one dense table. A record costs one probe into
    /// its window's table; a window fires by walking its table, with no per-key timer.
    panes: Vec<(Window, Pane<K, A::Acc>)>,
    /// Fired windows' tables, kept for their capacity.
    spare: Vec<Pane<K, A::Acc>>,
    /// The pane the last record went to (tumbling windows try it first).
    last_pane: Option<usize>,
    /// Where late records go (a side output), if anywhere; and the batch for it.
    late: Option<BoxEmit<A::In>>,
    late_buf: Vec<A::In>,
    /// Reused: the timestamps of the batch being processed.
    ts: Vec<u64>,
    watermark: u64,
    now_ns: u64,
    counts: WindowCounts,
    _o: std::marker::PhantomData<fn() -> O>,
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
            agg,
            key,
            timestamps,
            result,
            windows: KeyedStates::default(),
            timers: Timers::default(),
            panes: Vec::new(),
            spare: Vec::new(),
            last_pane: None,
            late: None,
            late_buf: Vec::new(),
            ts: Vec::new(),
            watermark: 0,
            now_ns: 0,
            counts: WindowCounts::default(),
            _o: std::marker::PhantomData,
        }
    }

    /// Sends late records (behind the watermark when they arrive) to `late` instead of
    /// dropping them (Flink's `sideOutputLateData`).
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
    fn on_late(&mut self, value: &A::In)
    where
        A::In: Clone,
    {
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

    /// The current time of the assigner's domain.
    fn current_time(&self) -> u64 {
        match self.assigner.domain {
            TimeDomain::EventTime => self.watermark,
            TimeDomain::ProcessingTime => self.now_ns,
        }
    }

    #[inline]
    fn add(&mut self, hash: u64, key: K, value: &A::In, ts: u64) {
        if !self.assigner.is_merging() {
            return self.add_to_panes(hash, key, value, ts);
        }
        let now = self.current_time();
        let event_time = self.assigner.domain == TimeDomain::EventTime;
        let (agg, timers) = (&self.agg, &mut self.timers);
        // Sessions: merge with every open session the record's own window touches.
        let (key, open) = self.windows.get_or_insert(hash, key);
        let w = Window {
            start: ts,
            end: ts.saturating_add(self.assigner.gap_ns),
        };
        // Merge with every open session it overlaps or touches (as Flink's
        // `TimeWindow.intersects`), folding their accumulators into one.
        let mut merged = w;
        let mut acc: Option<A::Acc> = None;
        let mut i = 0;
        while i < open.len() {
            let o = open[i].0;
            if o.start <= merged.end && o.end >= merged.start {
                let (ow, oacc) = open.swap_remove(i);
                timers.delete(key, ow.max_timestamp());
                merged = Window {
                    start: merged.start.min(ow.start),
                    end: merged.end.max(ow.end),
                };
                acc = Some(match acc {
                    Some(a) => agg.merge(a, oacc),
                    None => oacc,
                });
            } else {
                i += 1;
            }
        }
        if event_time && merged.max_timestamp() <= now && now > 0 {
            // Late: the session would have fired already. Put back what was taken.
            if let Some(a) = acc {
                // Only a session that is not late itself can have been open, so a
                // late merge took nothing; keep whatever it took regardless.
                open.push((merged, a));
                timers.register(key, merged.max_timestamp());
            }
            self.on_late(value);
            return;
        }
        let mut acc = acc.unwrap_or_else(|| agg.create_accumulator());
        agg.add(value, &mut acc);
        open.push((merged, acc));
        timers.register(key, merged.max_timestamp());
    }

    /// A record of a tumbling or sliding window.
    #[inline]
    fn add_to_panes(&mut self, hash: u64, key: K, value: &A::In, ts: u64) {
        let now = self.current_time();
        let event_time = self.assigner.domain == TimeDomain::EventTime;
        // Tumbling windows: a record almost always falls in the window of the one before
        // it, so that window's pane is tried first (no division, no scan).
        if let Some(i) = self.last_pane {
            if let Some((w, pane)) = self.panes.get_mut(i) {
                if self.assigner.slide_ns == self.assigner.size_ns
                    && (w.start..w.end).contains(&ts)
                    && !(event_time && w.max_timestamp() <= now && now > 0)
                {
                    let (_, acc) = pane.get_or_insert(hash, key);
                    let agg = &self.agg;
                    agg.add(value, acc.get_or_insert_with(|| agg.create_accumulator()));
                    return;
                }
            }
        }
        let mut last = None;
        let (agg, panes, spare) = (&self.agg, &mut self.panes, &mut self.spare);
        let mut late = true;
        self.assigner.assign(ts, |w| {
            // Late (event time): the watermark passed the window's end, so it fired
            // already. Processing time has no late records: each goes to the window of
            // the time it arrives at.
            if event_time && w.max_timestamp() <= now && now > 0 {
                return;
            }
            late = false;
            let i = match panes.iter().position(|(pw, _)| *pw == w) {
                Some(i) => i,
                None => {
                    panes.push((w, spare.pop().unwrap_or_default()));
                    panes.len() - 1
                }
            };
            let (_, acc) = panes[i].1.get_or_insert(hash, key.clone());
            agg.add(value, acc.get_or_insert_with(|| agg.create_accumulator()));
            last = Some(i);
        });
        self.last_pane = last;
        if late {
            self.on_late(value);
        }
    }

    /// Fires the tumbling or sliding windows whose last instant is at or before `time`,
    /// earliest first.
    fn fire_panes(&mut self, time: u64, out: &mut Output<'_, O>) {
        loop {
            let due = self
                .panes
                .iter()
                .enumerate()
                .filter(|(_, (w, _))| w.max_timestamp() <= time)
                .min_by_key(|(_, (w, _))| (w.end, w.start))
                .map(|(i, _)| i);
            let Some(i) = due else { break };
            // Indices move: the cached pane is looked up again.
            self.last_pane = None;
            let (w, mut table) = self.panes.swap_remove(i);
            for (key, acc) in table.iter() {
                if let Some(acc) = acc {
                    (self.result)(key, &w, self.agg.get_result(acc), out.buffer());
                    self.counts.fired += 1;
                    // A window end fires every key at once: results leave in batches
                    // as they are made, so the first do not wait for the last.
                    if out.pending() >= FIRE_BATCH {
                        out.flush();
                    }
                }
            }
            table.clear();
            self.spare.push(table);
        }
    }

    /// Fires the windows whose timers are due at `time`; a key left without windows
    /// leaves the state.
    fn fire(&mut self, time: u64, out: &mut Output<'_, O>) {
        self.fire_panes(time, out);
        let out = out.buffer();
        let mark = self.timers.mark();
        while let Some((at, key)) = self.timers.pop_due(time, mark) {
            let hash = key_hash(&key);
            let (key, open) = self.windows.get_or_insert(hash, key);
            let mut i = 0;
            while i < open.len() {
                if open[i].0.max_timestamp() == at {
                    let (w, acc) = open.swap_remove(i);
                    (self.result)(key, &w, self.agg.get_result(&acc), out);
                    self.counts.fired += 1;
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
        self.windows.len() + self.panes.iter().map(|(_, t)| t.len()).sum::<usize>()
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
    fn process(&mut self, batch: &mut Vec<A::In>, _out: &mut Output<'_, O>) {
        self.stamp(batch);
        let mut ts = std::mem::take(&mut self.ts);
        for (r, &t) in batch.iter().zip(&ts) {
            let key = (self.key)(r);
            self.add(key_hash(&key), key, r, t);
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
        for ((r, &t), &h) in batch.iter().zip(&ts).zip(hashes.iter()) {
            let key = (self.key)(r);
            self.add(h, key, r, t);
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
            if self.assigner.domain == TimeDomain::EventTime {
                self.fire(watermark, out);
            }
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
        if self.assigner.domain == TimeDomain::ProcessingTime
            && (self.timers.next_time().is_some_and(|t| t <= now_ns)
                || self.panes.iter().any(|(w, _)| w.max_timestamp() <= now_ns))
        {
            self.fire(now_ns, out);
        }
    }

    fn on_end_of_input(&mut self, out: &mut Output<'_, O>) {
        // Processing-time windows still open fire at the end of input, as Flink's do
        // in a bounded job.
        if self.assigner.domain == TimeDomain::ProcessingTime {
            self.fire(u64::MAX, out);
        }
        // The late output is a stream of its own: it ends here too.
        self.flush_late(Some(Event::EndOfInput));
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
