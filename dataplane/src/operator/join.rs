//! Joins of two keyed streams in event time.
//!
//! The interval join (Flink's `intervalJoin(..).between(lower, upper)`): a record `a` of
//! the first stream meets every record `b` of the second with the same key whose event
//! time lies in `[a.ts + lower, a.ts + upper]`. Each side's records wait in keyed state
//! until the watermark says no partner can come any more (an event-time timer per key
//! sweeps them), and records behind the watermark are dropped as late.
//!
//! Outer interval joins (SQL's `LEFT | RIGHT | FULL JOIN` with time bounds, as Flink's
//! `TimeIntervalJoin`): a side that keeps its unmatched records hands each record that
//! met no partner to its padding function once no partner can come any more (when the
//! watermark passes the end of its interval, at the latest at the end of input); a late
//! record of such a side still meets the waiting records of the other side, and goes
//! padded at once if it met none.

use super::keyed::{FrozenEntries, KeyedStates, Timers};
use super::watermark::TimestampsFn;
use super::{key_hash, Output, TwoInputOperator};
use crate::checkpoint::{
    decode_state, encode_state, StateError, StateSnapshot, WireRef, WireState,
};
use crate::record::{Key, Wire};

/// A waiting record: its event time, whether it met a partner, the record.
#[derive(Clone)]
struct Held<T> {
    ts: u64,
    matched: bool,
    value: T,
}

impl<T> Held<T> {
    fn new(ts: u64, matched: bool, value: T) -> Self {
        Self { ts, matched, value }
    }
}

/// Each key's waiting records of both sides.
#[derive(Clone)]
struct Buffers<A, B> {
    left: Vec<Held<A>>,
    right: Vec<Held<B>>,
}

impl<A, B> Default for Buffers<A, B> {
    fn default() -> Self {
        Self {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

/// What an outer side does with a record that met no partner: emits it padded.
pub type PadFn<T, O> = std::sync::Arc<dyn Fn(&T, &mut Vec<O>) + Send + Sync>;

/// The interval join of two keyed streams; `f(a, b, out)` emits for each pair and says
/// whether they met (an outer join's condition beyond the key and the interval).
pub struct IntervalJoin<K, A, B, KA, KB, F, O> {
    lower_ns: i64,
    upper_ns: i64,
    key_a: KA,
    key_b: KB,
    ts_a: TimestampsFn<A>,
    ts_b: TimestampsFn<B>,
    f: F,
    pad_a: Option<PadFn<A, O>>,
    pad_b: Option<PadFn<B, O>>,
    state: KeyedStates<K, Buffers<A, B>>,
    timers: Timers<K>,
    ts: Vec<u64>,
    watermark: u64,
    late: u64,
    _o: std::marker::PhantomData<fn() -> O>,
}

/// `t + d`, clamped to the u64 range.
fn shift(t: u64, d: i64) -> u64 {
    (i128::from(t) + i128::from(d)).clamp(0, i128::from(u64::MAX)) as u64
}

impl<K, A, B, KA, KB, F, O> IntervalJoin<K, A, B, KA, KB, F, O>
where
    K: Key,
    A: Clone + 'static,
    B: Clone + 'static,
    KA: Fn(&A) -> K + 'static,
    KB: Fn(&B) -> K + 'static,
    F: FnMut(&A, &B, &mut Vec<O>) -> bool + 'static,
{
    /// Joins `a` with the `b`s of its key in `[a.ts + lower_ns, a.ts + upper_ns]`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lower_ns: i64,
        upper_ns: i64,
        key_a: KA,
        key_b: KB,
        ts_a: TimestampsFn<A>,
        ts_b: TimestampsFn<B>,
        f: F,
    ) -> Self {
        Self {
            lower_ns,
            upper_ns,
            key_a,
            key_b,
            ts_a,
            ts_b,
            f,
            pad_a: None,
            pad_b: None,
            state: KeyedStates::default(),
            timers: Timers::default(),
            ts: Vec::new(),
            watermark: 0,
            late: 0,
            _o: std::marker::PhantomData,
        }
    }

    /// An outer join: `pad_a` emits a left record that met no right one, `pad_b` a
    /// right record that met no left one (`None`: that side's unmatched records go).
    pub fn outer(mut self, pad_a: Option<PadFn<A, O>>, pad_b: Option<PadFn<B, O>>) -> Self {
        self.pad_a = pad_a;
        self.pad_b = pad_b;
        self
    }

    /// Records waiting for partners (left, right).
    pub fn buffered(&self) -> (usize, usize) {
        self.state.iter().fold((0, 0), |(l, r), (_, b)| {
            (l + b.left.len(), r + b.right.len())
        })
    }

    /// Records dropped because they arrived behind the watermark.
    pub fn late_records(&self) -> u64 {
        self.late
    }

    /// Behind the watermark (as Flink: strictly before it).
    fn is_late(&self, ts: u64) -> bool {
        ts < self.watermark
    }
}

impl<K, A, B, KA, KB, F, O> TwoInputOperator for IntervalJoin<K, A, B, KA, KB, F, O>
where
    K: Key,
    A: Clone + Wire,
    B: Clone + Wire,
    KA: Fn(&A) -> K + 'static,
    KB: Fn(&B) -> K + 'static,
    F: FnMut(&A, &B, &mut Vec<O>) -> bool + 'static,
    O: 'static,
{
    type In1 = A;
    type In2 = B;
    type Out = O;

    fn process1(&mut self, batch: &mut Vec<A>, hashes: &mut Vec<u64>, out: &mut Output<'_, O>) {
        (self.ts_a)(batch, &mut self.ts);
        let buf = out.buffer();
        let keyed = hashes.len() == batch.len();
        for (i, a) in batch.drain(..).enumerate() {
            let ta = self.ts[i];
            let late = self.is_late(ta);
            if late && self.pad_a.is_none() {
                self.late += 1;
                continue;
            }
            let key = (self.key_a)(&a);
            let h = if keyed { hashes[i] } else { key_hash(&key) };
            let (lo, hi) = (shift(ta, self.lower_ns), shift(ta, self.upper_ns));
            let (key, b) = self.state.get_or_insert(h, key);
            let mut matched = false;
            for rb in &mut b.right {
                if (lo..=hi).contains(&rb.ts) && (self.f)(&a, &rb.value, buf) {
                    rb.matched = true;
                    matched = true;
                }
            }
            if hi <= self.watermark {
                // (An outer side's late record:) no right record can come for it.
                if !matched {
                    if let Some(pad) = &self.pad_a {
                        pad(&a, buf);
                    }
                }
                continue;
            }
            // It can meet right records until the watermark passes ta + upper.
            self.timers.register(key, hi);
            b.left.push(Held::new(ta, matched, a));
        }
        hashes.clear();
    }

    fn process2(&mut self, batch: &mut Vec<B>, hashes: &mut Vec<u64>, out: &mut Output<'_, O>) {
        (self.ts_b)(batch, &mut self.ts);
        let buf = out.buffer();
        let keyed = hashes.len() == batch.len();
        for (i, rb) in batch.drain(..).enumerate() {
            let tb = self.ts[i];
            let late = self.is_late(tb);
            if late && self.pad_b.is_none() {
                self.late += 1;
                continue;
            }
            let key = (self.key_b)(&rb);
            let h = if keyed { hashes[i] } else { key_hash(&key) };
            let (key, b) = self.state.get_or_insert(h, key);
            let mut matched = false;
            for a in &mut b.left {
                let (lo, hi) = (shift(a.ts, self.lower_ns), shift(a.ts, self.upper_ns));
                if (lo..=hi).contains(&tb) && (self.f)(&a.value, &rb, buf) {
                    a.matched = true;
                    matched = true;
                }
            }
            // It can meet left records with ts ≥ tb − upper, ..., until the watermark
            // passes tb − lower.
            let until = shift(tb, self.lower_ns.saturating_neg());
            if until <= self.watermark {
                if !matched {
                    if let Some(pad) = &self.pad_b {
                        pad(&rb, buf);
                    }
                }
                continue;
            }
            self.timers.register(key, until);
            b.right.push(Held::new(tb, matched, rb));
        }
        hashes.clear();
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, O>) {
        if watermark > self.watermark {
            self.watermark = watermark;
            let mark = self.timers.mark();
            let (lower, upper) = (self.lower_ns, self.upper_ns);
            let buf = out.buffer();
            while let Some((_, key)) = self.timers.pop_due(watermark, mark) {
                let hash = key_hash(&key);
                let (key, b) = self.state.get_or_insert(hash, key);
                // The records no partner can reach any more go; an outer side's
                // unmatched ones go padded.
                b.left.retain(|a| {
                    let keep = shift(a.ts, upper) > watermark;
                    if !keep && !a.matched {
                        if let Some(pad) = &self.pad_a {
                            pad(&a.value, buf);
                        }
                    }
                    keep
                });
                b.right.retain(|r| {
                    let keep = shift(r.ts, lower.saturating_neg()) > watermark;
                    if !keep && !r.matched {
                        if let Some(pad) = &self.pad_b {
                            pad(&r.value, buf);
                        }
                    }
                    keep
                });
                if b.left.is_empty() && b.right.is_empty() {
                    let key = key.clone();
                    self.state.remove(hash, &key);
                }
            }
        }
        out.watermark(watermark);
    }

    fn snapshot_state(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        self.freeze_state()?.map(StateSnapshot::finish).transpose()
    }

    fn freeze_state(&mut self) -> Result<Option<StateSnapshot>, StateError> {
        /// The buffered records through their wire encoding, then (after the timers)
        /// whether each met a partner, in the same order.
        struct Wired<K, A, B>(FrozenEntries<K, Buffers<A, B>>);
        impl<K: serde::Serialize, A: Wire, B: Wire> serde::Serialize for Wired<K, A, B> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                type Side<'a, T> = Vec<(u64, WireRef<'a, T>)>;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (k, b) in self.0.iter() {
                    let left: Side<'_, A> =
                        b.left.iter().map(|a| (a.ts, WireRef(&a.value))).collect();
                    let right: Side<'_, B> =
                        b.right.iter().map(|r| (r.ts, WireRef(&r.value))).collect();
                    seq.serialize_element(&(k, left, right))?;
                }
                seq.end()
            }
        }
        struct Matched<K, A, B>(FrozenEntries<K, Buffers<A, B>>);
        impl<K, A, B> serde::Serialize for Matched<K, A, B> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (_, b) in self.0.iter() {
                    let left: Vec<bool> = b.left.iter().map(|a| a.matched).collect();
                    let right: Vec<bool> = b.right.iter().map(|r| r.matched).collect();
                    seq.serialize_element(&(left, right))?;
                }
                seq.end()
            }
        }
        let frozen = self.state.freeze();
        let (entries, matched) = (Wired(frozen.clone()), Matched(frozen));
        let timers = self.timers.to_vec();
        Ok(Some(StateSnapshot::frozen(move || {
            encode_state(&(entries, timers, matched))
        })))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        type Side<T> = Vec<(u64, WireState<T>)>;
        type Entries<K, A, B> = Vec<(K, Side<A>, Side<B>)>;
        type Flags = Vec<(Vec<bool>, Vec<bool>)>;
        type Snap<K, A, B> = (Entries<K, A, B>, Vec<(u64, K)>, Flags);
        // The state of an older version has no flags: its records count as unmatched.
        let (entries, timers, flags): Snap<K, A, B> = match decode_state(state) {
            Ok(v) => v,
            Err(e) => match decode_state::<(Entries<K, A, B>, Vec<(u64, K)>)>(state) {
                Ok((entries, timers)) => (entries, timers, Vec::new()),
                Err(_) => return Err(e),
            },
        };
        let mut flags = flags.into_iter();
        let mut restored = Vec::with_capacity(entries.len());
        for (k, l, r) in entries {
            let (fl, fr) = flags.next().unwrap_or_default();
            let flag = |f: &[bool], i: usize| f.get(i).copied().unwrap_or(false);
            let buffers = Buffers {
                left: l
                    .into_iter()
                    .enumerate()
                    .map(|(i, (t, w))| Held::new(t, flag(&fl, i), w.0))
                    .collect(),
                right: r
                    .into_iter()
                    .enumerate()
                    .map(|(i, (t, w))| Held::new(t, flag(&fr, i), w.0))
                    .collect(),
            };
            restored.push((k, buffers));
        }
        self.state.restore(restored);
        self.timers.restore(timers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::{BoxEmit, Chained2, Emit, Emit2, Event};
    use std::sync::Arc;

    struct Sink(std::rc::Rc<std::cell::RefCell<Vec<(u64, u64)>>>);
    impl Emit<(u64, u64)> for Sink {
        fn push(&mut self, b: &mut Vec<(u64, u64)>) {
            self.0.borrow_mut().append(b);
        }
        fn event(&mut self, _: Event) {}
        fn tick(&mut self, _: u64) {}
    }

    type KeyFn = fn(&u64) -> u8;
    type PairFn = fn(&u64, &u64, &mut Vec<(u64, u64)>) -> bool;
    type Join = IntervalJoin<u8, u64, u64, KeyFn, KeyFn, PairFn, (u64, u64)>;

    /// Records that are their own event times.
    fn times_are_values() -> TimestampsFn<u64> {
        Arc::new(|b: &[u64], out: &mut Vec<u64>| {
            out.clear();
            out.extend_from_slice(b);
        })
    }

    /// One key for every record.
    fn key(_: &u64) -> u8 {
        0
    }

    fn op_buffered(op: &Chained2<Join>) -> (usize, usize) {
        op.operator().buffered()
    }

    #[test]
    fn waiting_records_go_once_no_partner_can_come_and_late_ones_are_dropped() {
        let ts = times_are_values();
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        fn pair(a: &u64, b: &u64, out: &mut Vec<(u64, u64)>) -> bool {
            out.push((*a, *b));
            true
        }
        let join = IntervalJoin::new(
            -10,
            20,
            key as fn(&u64) -> u8,
            key as fn(&u64) -> u8,
            ts.clone(),
            ts,
            pair as PairFn,
        );
        let mut op = Chained2::new(join, Box::new(Sink(got.clone())) as BoxEmit<(u64, u64)>);
        op.push1(&mut vec![100, 200], &mut Vec::new());
        op.push2(&mut vec![95, 115, 125, 185], &mut Vec::new());
        // Left 100 meets [90, 120]; left 200 meets [190, 220].
        assert_eq!(*got.borrow(), [(100, 95), (100, 115)]);
        // Left 100 can meet rights up to 120, left 200 up to 220; right 95 lefts up to
        // 105, 115 up to 125, 125 up to 135, 185 up to 195. At watermark 130:
        op.event(Event::Watermark(130));
        assert_eq!(op_buffered(&op), (1, 2), "left 200; rights 125 and 185");
        op.push1(&mut vec![120], &mut Vec::new()); // behind the watermark: dropped
        op.push1(&mut vec![170], &mut Vec::new()); // meets [160, 190]: 185
        assert_eq!(got.borrow().last(), Some(&(170, 185)));
        assert_eq!(got.borrow().len(), 3);
        op.event(Event::Watermark(1_000));
        assert_eq!(
            op_buffered(&op),
            (0, 0),
            "nothing can meet anything any more"
        );
    }

    #[test]
    fn outer_sides_hand_on_unmatched_records_once_no_partner_can_come() {
        let ts = times_are_values();
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        // Pairs meet when their times differ by an even amount (a condition beyond
        // the key and the interval, as SQL's other ON terms).
        fn pair(a: &u64, b: &u64, out: &mut Vec<(u64, u64)>) -> bool {
            let even = (a + b).is_multiple_of(2);
            if even {
                out.push((*a, *b));
            }
            even
        }
        // Unmatched left records go as (a, 0), unmatched right ones as (0, b).
        let pad_a: PadFn<u64, (u64, u64)> = Arc::new(|a: &u64, out| out.push((*a, 0)));
        let pad_b: PadFn<u64, (u64, u64)> = Arc::new(|b: &u64, out| out.push((0, *b)));
        let new_join = || {
            IntervalJoin::new(
                -10,
                20,
                key as fn(&u64) -> u8,
                key as fn(&u64) -> u8,
                ts.clone(),
                ts.clone(),
                pair as PairFn,
            )
            .outer(Some(pad_a.clone()), Some(pad_b.clone()))
        };
        let mut first = Chained2::new(
            new_join(),
            Box::new(Sink(got.clone())) as BoxEmit<(u64, u64)>,
        );
        first.push1(&mut vec![100, 200, 301], &mut Vec::new());
        first.push2(&mut vec![96, 115, 124, 300], &mut Vec::new());
        // 100 meets 96 (and not 115: odd); 301 meets no right one in [291, 321]
        // (300 is odd against it).
        assert_eq!(*got.borrow(), [(100, 96)]);
        got.borrow_mut().clear();
        // The rest runs on a join restored from a snapshot: whether each waiting
        // record met a partner is part of the state.
        let state = first.operator_mut().snapshot_state().unwrap().unwrap();
        let mut restored = new_join();
        restored.restore_state(&state).unwrap();
        assert_eq!(restored.buffered(), (3, 4));
        let mut op = Chained2::new(restored, Box::new(Sink(got.clone())) as BoxEmit<(u64, u64)>);
        // At 195: left 100 is done (matched: it goes quietly); right 96 (matched),
        // 115 and 124 (unmatched) are done.
        op.event(Event::Watermark(195));
        assert_eq!(*got.borrow(), [(0, 115), (0, 124)]);
        got.borrow_mut().clear();
        // A late right record meets a waiting left one (192 in 200's [190, 220]); a
        // late one that no left record can meet any more goes padded at once.
        op.push2(&mut vec![192, 105], &mut Vec::new());
        assert_eq!(*got.borrow(), [(200, 192), (0, 105)]);
        got.borrow_mut().clear();
        // The end of input: every waiting record is done.
        op.event(Event::Watermark(u64::MAX));
        let mut rest = got.borrow().clone();
        rest.sort_unstable();
        assert_eq!(rest, [(0, 300), (301, 0)]);
        assert_eq!(op_buffered(&op), (0, 0));
        assert_eq!(
            op.operator().late_records(),
            0,
            "an outer side drops nothing"
        );
    }
}
