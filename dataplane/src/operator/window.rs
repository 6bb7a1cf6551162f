//! Windows on keyed streams: tumbling and sliding windows in event or processing time,
//! aggregated incrementally as records arrive and fired by timers (a watermark passing
//! the window's last instant, or the clock reaching it).
//!
//! State lives in the runtime's keyed structures: each key's open windows with their
//! accumulators in [`KeyedStates`], and one timer per (key, window end) in [`Timers`],
//! so that checkpoints can snapshot both.

use super::keyed::{KeyedStates, TimeDomain, Timers};
use super::watermark::TimestampsFn;
use super::{key_hash, Operator, Output};
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
            domain,
        })
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
        let slide = self.slide_ns;
        let last_start = ts - (ts.wrapping_sub(self.offset_ns).wrapping_add(slide) % slide);
        let mut start = last_start;
        loop {
            f(Window {
                start,
                end: start.saturating_add(self.size_ns),
            });
            // The earliest window containing ts starts after ts − size.
            match start.checked_sub(slide) {
                Some(s) if s + self.size_ns > ts => start = s,
                _ => break,
            }
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

/// Counters of a window operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowCounts {
    /// Records that arrived after their windows fired, dropped.
    pub late_records: u64,
    /// Windows fired.
    pub fired: u64,
}

/// A keyed window operator: assigns records to windows, aggregates them with `A`, and
/// when a window fires emits what `result(key, window, aggregate)` returns (if any).
pub struct WindowOperator<K, A: AggregateFunction, KS, WF> {
    assigner: WindowAssigner,
    agg: A,
    key: KS,
    timestamps: Option<TimestampsFn<A::In>>,
    result: WF,
    /// Each key's open windows and their accumulators.
    windows: KeyedStates<K, Vec<(Window, A::Acc)>>,
    timers: Timers<K>,
    /// Reused: the timestamps of the batch being processed.
    ts: Vec<u64>,
    watermark: u64,
    now_ns: u64,
    counts: WindowCounts,
}

impl<K, A, KS, WF, O> WindowOperator<K, A, KS, WF>
where
    K: Key,
    A: AggregateFunction,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, &Window, A::Out) -> Option<O> + 'static,
{
    /// Windows of `assigner` over records keyed by `key`, aggregated by `agg`, fired as
    /// `result(key, window, aggregate)`. Event-time windows need `timestamps`.
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
            ts: Vec::new(),
            watermark: 0,
            now_ns: 0,
            counts: WindowCounts::default(),
        }
    }

    /// Counters.
    pub fn counts(&self) -> WindowCounts {
        self.counts
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
        let now = self.current_time();
        let (agg, timers) = (&self.agg, &mut self.timers);
        let (key, open) = self.windows.get_or_insert(hash, key);
        let mut late = true;
        self.assigner.assign(ts, |w| {
            // Late: the time passed the window's end, so it fired already.
            if w.max_timestamp() <= now && now > 0 {
                return;
            }
            late = false;
            match open.iter_mut().find(|(ow, _)| *ow == w) {
                Some((_, acc)) => agg.add(value, acc),
                None => {
                    let mut acc = agg.create_accumulator();
                    agg.add(value, &mut acc);
                    open.push((w, acc));
                    timers.register(key, w.max_timestamp());
                }
            }
        });
        if late {
            self.counts.late_records += 1;
        }
    }

    /// Fires the windows whose timers are due at `time`.
    fn fire(&mut self, time: u64, out: &mut Vec<O>) {
        let mark = self.timers.mark();
        while let Some((at, key)) = self.timers.pop_due(time, mark) {
            let (key, open) = self.windows.get_or_insert(key_hash(&key), key);
            let mut i = 0;
            while i < open.len() {
                if open[i].0.max_timestamp() == at {
                    let (w, acc) = open.swap_remove(i);
                    out.extend((self.result)(key, &w, self.agg.get_result(&acc)));
                    self.counts.fired += 1;
                } else {
                    i += 1;
                }
            }
        }
    }
}

impl<K, A, KS, WF, O> Operator for WindowOperator<K, A, KS, WF>
where
    K: Key,
    A: AggregateFunction,
    A::In: 'static,
    A::Acc: 'static,
    KS: Fn(&A::In) -> K + 'static,
    WF: FnMut(&K, &Window, A::Out) -> Option<O> + 'static,
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
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, O>) {
        if watermark > self.watermark {
            self.watermark = watermark;
            if self.assigner.domain == TimeDomain::EventTime {
                self.fire(watermark, out.buffer());
            }
        }
        out.watermark(watermark);
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, O>) {
        self.now_ns = now_ns;
        if self.assigner.domain == TimeDomain::ProcessingTime
            && self.timers.next_time().is_some_and(|t| t <= now_ns)
        {
            self.fire(now_ns, out.buffer());
        }
    }

    fn on_end_of_input(&mut self, out: &mut Output<'_, O>) {
        // Processing-time windows still open fire at the end of input, as Flink's do
        // in a bounded job.
        if self.assigner.domain == TimeDomain::ProcessingTime {
            self.fire(u64::MAX, out.buffer());
        }
    }
}

impl<K, A: AggregateFunction, KS, WF> WindowOperator<K, A, KS, WF> {
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
        assert_eq!(windows_of(&s, 3), [(0, 10)], "no window starts before 0");
        let o = t.with_offset(Duration::from_nanos(3)).unwrap();
        assert_eq!(windows_of(&o, 12), [(3, 13)]);
        assert_eq!(windows_of(&o, 13), [(13, 23)]);
        assert!(WindowAssigner::tumbling_event_time(Duration::ZERO).is_err());
        assert!(t.with_offset(Duration::from_nanos(10)).is_err());
    }
}
