//! Event time: where a stream's timestamps and watermarks come from.
//!
//! A [`WatermarkStrategy`] says how to read a record's event time (its timestamp
//! assigner) and how far records may arrive out of order; the
//! [`TimestampsAndWatermarks`] operator, placed after a source, tracks the largest
//! timestamp seen and emits the watermark `max − bound − 1` (as Flink's
//! `BoundedOutOfOrderness` does) **as soon as it advances**, right behind the batch that
//! advanced it, rather than on a periodic timer: the watermark is what fires windows,
//! so its delay is latency. A source that falls silent for the strategy's idleness
//! timeout is marked idle, so that it holds back no downstream watermark, and active
//! again with its next record.

use super::{Event, Operator, Output, END_OF_TIME};
use std::marker::PhantomData;
use std::sync::Arc;

/// Event times of a batch: clears `out` and pushes one timestamp (ns) per record. One
/// dynamic call per batch; the assigner is inlined in the loop inside.
pub type TimestampsFn<T> = Arc<dyn Fn(&[T], &mut Vec<u64>) + Send + Sync>;

/// A strategy without a timestamp assigner yet (see
/// [`WatermarkStrategy::with_timestamp_assigner`]).
#[derive(Debug, Clone, Copy)]
pub struct NoAssigner;

/// How a stream's event time is read and its watermarks generated (Flink's
/// `WatermarkStrategy`).
#[derive(Debug, Clone)]
pub struct WatermarkStrategy<T, F = NoAssigner> {
    assigner: F,
    /// How far (ns) a record may be behind the largest timestamp seen.
    pub out_of_orderness_ns: u64,
    /// After this long (ns, processing time) without a record, the stream is idle.
    pub idle_timeout_ns: Option<u64>,
    _t: PhantomData<fn(&T)>,
}

impl<T> WatermarkStrategy<T, NoAssigner> {
    /// Records arrive at most `bound` behind the largest timestamp seen so far.
    pub fn for_bounded_out_of_orderness(bound: std::time::Duration) -> Self {
        Self {
            assigner: NoAssigner,
            out_of_orderness_ns: u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX),
            idle_timeout_ns: None,
            _t: PhantomData,
        }
    }

    /// Timestamps never decrease.
    pub fn for_monotonous_timestamps() -> Self {
        Self::for_bounded_out_of_orderness(std::time::Duration::ZERO)
    }
}

impl<T, F> WatermarkStrategy<T, F> {
    /// Reads each record's event time (ns) with `f`.
    pub fn with_timestamp_assigner<G>(self, f: G) -> WatermarkStrategy<T, G>
    where
        G: Fn(&T) -> u64 + Clone + Send + Sync + 'static,
    {
        WatermarkStrategy {
            assigner: f,
            out_of_orderness_ns: self.out_of_orderness_ns,
            idle_timeout_ns: self.idle_timeout_ns,
            _t: PhantomData,
        }
    }

    /// Marks the stream idle after `timeout` without a record.
    pub fn with_idleness(mut self, timeout: std::time::Duration) -> Self {
        self.idle_timeout_ns = Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        self
    }
}

impl<T: 'static, F: Fn(&T) -> u64 + Clone + Send + Sync + 'static> WatermarkStrategy<T, F> {
    /// The timestamp assigner.
    pub fn assigner(&self) -> &F {
        &self.assigner
    }

    /// The assigner as a per-batch function.
    pub fn timestamps_fn(&self) -> TimestampsFn<T> {
        let f = self.assigner.clone();
        Arc::new(move |batch: &[T], out: &mut Vec<u64>| {
            out.clear();
            out.extend(batch.iter().map(&f));
        })
    }

    /// The operator that generates this strategy's watermarks; `enabled` false (an
    /// auto-watermark interval of 0, as in Flink) passes records without watermarks.
    pub fn generator(&self, enabled: bool) -> TimestampsAndWatermarks<T, F> {
        TimestampsAndWatermarks {
            assigner: self.assigner.clone(),
            bound_ns: self.out_of_orderness_ns,
            idle_timeout_ns: self.idle_timeout_ns,
            enabled,
            max_ts: None,
            emitted: 0,
            idle: false,
            last_record_ns: None,
            now_ns: 0,
            _t: PhantomData,
        }
    }
}

/// Generates watermarks from the timestamps of the records passing through.
pub struct TimestampsAndWatermarks<T, F> {
    assigner: F,
    bound_ns: u64,
    idle_timeout_ns: Option<u64>,
    enabled: bool,
    max_ts: Option<u64>,
    /// The last watermark sent.
    emitted: u64,
    idle: bool,
    /// Processing time of the last batch seen.
    last_record_ns: Option<u64>,
    now_ns: u64,
    _t: PhantomData<fn(&T)>,
}

impl<T, F> TimestampsAndWatermarks<T, F> {
    /// The largest timestamp seen.
    pub fn max_timestamp(&self) -> Option<u64> {
        self.max_ts
    }
}

impl<T: 'static, F: Fn(&T) -> u64 + 'static> Operator for TimestampsAndWatermarks<T, F> {
    type In = T;
    type Out = T;

    #[inline]
    fn process(&mut self, batch: &mut Vec<T>, out: &mut Output<'_, T>) {
        if batch.is_empty() {
            return;
        }
        let max = batch.iter().map(&self.assigner).max();
        self.max_ts = self.max_ts.max(max);
        self.last_record_ns = Some(self.now_ns);
        if self.enabled && self.idle {
            // Active again before its records go out.
            self.idle = false;
            out.event(Event::Idle(false));
        }
        out.forward(batch);
        if !self.enabled {
            return;
        }
        if let Some(m) = self.max_ts {
            let wm = m.saturating_sub(self.bound_ns).saturating_sub(1);
            if wm > self.emitted {
                self.emitted = wm;
                out.watermark(wm);
            }
        }
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, T>) {
        // Watermarks from upstream are replaced by this strategy's, except the end of
        // time that ends a bounded input (as in Flink).
        if watermark == END_OF_TIME && self.emitted < END_OF_TIME {
            self.emitted = END_OF_TIME;
            out.watermark(END_OF_TIME);
        }
    }

    fn on_idle(&mut self, _idle: bool, _out: &mut Output<'_, T>) {
        // This operator decides the stream's idleness from its own records.
    }

    fn on_tick(&mut self, now_ns: u64, out: &mut Output<'_, T>) {
        self.now_ns = now_ns;
        let last = *self.last_record_ns.get_or_insert(now_ns);
        if let Some(timeout) = self.idle_timeout_ns {
            if self.enabled && !self.idle && now_ns.saturating_sub(last) >= timeout {
                self.idle = true;
                out.event(Event::Idle(true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::{BoxEmit, Chained, Emit};
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Seen(Rc<RefCell<Vec<String>>>);

    impl Emit<u64> for Seen {
        fn push(&mut self, batch: &mut Vec<u64>) {
            self.0.borrow_mut().push(format!("{batch:?}"));
            batch.clear();
        }
        fn event(&mut self, e: Event) {
            self.0.borrow_mut().push(format!("{e:?}"));
        }
        fn tick(&mut self, _: u64) {}
    }

    type Generator<F> = Chained<TimestampsAndWatermarks<u64, F>>;

    fn generator<F>(strategy: WatermarkStrategy<u64, F>) -> (Generator<F>, Seen)
    where
        F: Fn(&u64) -> u64 + Clone + Send + Sync + 'static,
    {
        let seen = Seen::default();
        (
            Chained::new(
                strategy.generator(true),
                Box::new(seen.clone()) as BoxEmit<u64>,
            ),
            seen,
        )
    }

    #[test]
    fn the_watermark_trails_the_largest_timestamp_by_the_bound_and_follows_each_batch() {
        let (mut g, seen) = generator(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(10))
                .with_timestamp_assigner(|x: &u64| *x),
        );
        g.push(&mut vec![100, 105, 103]);
        g.push(&mut vec![104]); // behind the maximum: no new watermark
        g.push(&mut vec![120]);
        g.event(Event::Watermark(1_000)); // from upstream: replaced by the strategy's
        g.event(Event::Watermark(END_OF_TIME)); // the end of a bounded input goes on
        assert_eq!(
            *seen.0.borrow(),
            [
                "[100, 105, 103]",
                "Watermark(94)",
                "[104]",
                "[120]",
                "Watermark(109)",
                &format!("Watermark({END_OF_TIME})")
            ]
        );
    }

    #[test]
    fn a_silent_source_goes_idle_after_the_timeout_and_active_with_its_next_record() {
        let (mut g, seen) = generator(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|x: &u64| *x)
                .with_idleness(Duration::from_nanos(1_000)),
        );
        g.tick(10_000);
        g.push(&mut vec![50]);
        g.tick(10_500);
        assert!(!seen.0.borrow().iter().any(|e| e.starts_with("Idle")));
        g.tick(11_001);
        g.tick(12_000); // once
        g.push(&mut vec![60]);
        assert_eq!(
            *seen.0.borrow(),
            [
                "[50]",
                "Watermark(49)",
                "Idle(true)",
                "Idle(false)",
                "[60]",
                "Watermark(59)"
            ]
        );
    }
}
