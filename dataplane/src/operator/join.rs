//! Joins of two keyed streams in event time.
//!
//! The interval join (Flink's `intervalJoin(..).between(lower, upper)`): a record `a` of
//! the first stream meets every record `b` of the second with the same key whose event
//! time lies in `[a.ts + lower, a.ts + upper]`. Each side's records wait in keyed state
//! until the watermark says no partner can come any more (an event-time timer per key
//! sweeps them), and records behind the watermark are dropped as late.

use super::keyed::{FrozenEntries, KeyedStates, Timers};
use super::watermark::TimestampsFn;
use super::{key_hash, Output, TwoInputOperator};
use crate::checkpoint::{
    decode_state, encode_state, StateError, StateSnapshot, WireRef, WireState,
};
use crate::record::{Key, Wire};

/// Each key's waiting records of both sides, with their event times.
#[derive(Clone)]
struct Buffers<A, B> {
    left: Vec<(u64, A)>,
    right: Vec<(u64, B)>,
}

impl<A, B> Default for Buffers<A, B> {
    fn default() -> Self {
        Self {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

/// The interval join of two keyed streams; `f(a, b, out)` emits for each pair.
pub struct IntervalJoin<K, A, B, KA, KB, F, O> {
    lower_ns: i64,
    upper_ns: i64,
    key_a: KA,
    key_b: KB,
    ts_a: TimestampsFn<A>,
    ts_b: TimestampsFn<B>,
    f: F,
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
    F: FnMut(&A, &B, &mut Vec<O>) + 'static,
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
            state: KeyedStates::default(),
            timers: Timers::default(),
            ts: Vec::new(),
            watermark: 0,
            late: 0,
            _o: std::marker::PhantomData,
        }
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
    F: FnMut(&A, &B, &mut Vec<O>) + 'static,
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
            if self.is_late(ta) {
                self.late += 1;
                continue;
            }
            let key = (self.key_a)(&a);
            let h = if keyed { hashes[i] } else { key_hash(&key) };
            let (lo, hi) = (shift(ta, self.lower_ns), shift(ta, self.upper_ns));
            let (key, b) = self.state.get_or_insert(h, key);
            for (tb, rb) in &b.right {
                if (lo..=hi).contains(tb) {
                    (self.f)(&a, rb, buf);
                }
            }
            // It can meet right records until the watermark passes ta + upper.
            self.timers.register(key, hi);
            b.left.push((ta, a));
        }
        hashes.clear();
    }

    fn process2(&mut self, batch: &mut Vec<B>, hashes: &mut Vec<u64>, out: &mut Output<'_, O>) {
        (self.ts_b)(batch, &mut self.ts);
        let buf = out.buffer();
        let keyed = hashes.len() == batch.len();
        for (i, rb) in batch.drain(..).enumerate() {
            let tb = self.ts[i];
            if self.is_late(tb) {
                self.late += 1;
                continue;
            }
            let key = (self.key_b)(&rb);
            let h = if keyed { hashes[i] } else { key_hash(&key) };
            let (key, b) = self.state.get_or_insert(h, key);
            for (ta, a) in &b.left {
                let (lo, hi) = (shift(*ta, self.lower_ns), shift(*ta, self.upper_ns));
                if (lo..=hi).contains(&tb) {
                    (self.f)(a, &rb, buf);
                }
            }
            // It can meet left records with ts ≥ tb − upper, ..., until the watermark
            // passes tb − lower.
            self.timers
                .register(key, shift(tb, self.lower_ns.saturating_neg()));
            b.right.push((tb, rb));
        }
        hashes.clear();
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, O>) {
        if watermark > self.watermark {
            self.watermark = watermark;
            let mark = self.timers.mark();
            let (lower, upper) = (self.lower_ns, self.upper_ns);
            while let Some((_, key)) = self.timers.pop_due(watermark, mark) {
                let hash = key_hash(&key);
                let (key, b) = self.state.get_or_insert(hash, key);
                b.left.retain(|(ta, _)| shift(*ta, upper) > watermark);
                b.right
                    .retain(|(tb, _)| shift(*tb, lower.saturating_neg()) > watermark);
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
        /// The buffered records through their wire encoding.
        struct Wired<K, A, B>(FrozenEntries<K, Buffers<A, B>>);
        impl<K: serde::Serialize, A: Wire, B: Wire> serde::Serialize for Wired<K, A, B> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                type Side<'a, T> = Vec<(u64, WireRef<'a, T>)>;
                let mut seq = s.serialize_seq(Some(self.0.len()))?;
                for (k, b) in self.0.iter() {
                    let left: Side<'_, A> = b.left.iter().map(|(t, a)| (*t, WireRef(a))).collect();
                    let right: Side<'_, B> =
                        b.right.iter().map(|(t, r)| (*t, WireRef(r))).collect();
                    seq.serialize_element(&(k, left, right))?;
                }
                seq.end()
            }
        }
        let entries = Wired(self.state.freeze());
        let timers = self.timers.to_vec();
        Ok(Some(StateSnapshot::frozen(move || {
            encode_state(&(entries, timers))
        })))
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        type Side<T> = Vec<(u64, WireState<T>)>;
        type Snap<K, A, B> = (Vec<(K, Side<A>, Side<B>)>, Vec<(u64, K)>);
        let (entries, timers): Snap<K, A, B> = decode_state(state)?;
        self.state.restore(
            entries
                .into_iter()
                .map(|(k, l, r)| {
                    let buffers = Buffers {
                        left: l.into_iter().map(|(t, w)| (t, w.0)).collect(),
                        right: r.into_iter().map(|(t, w)| (t, w.0)).collect(),
                    };
                    (k, buffers)
                })
                .collect(),
        );
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
    type PairFn = fn(&u64, &u64, &mut Vec<(u64, u64)>);
    type Join = IntervalJoin<u8, u64, u64, KeyFn, KeyFn, PairFn, (u64, u64)>;

    fn op_buffered(op: &Chained2<Join>) -> (usize, usize) {
        op.operator().buffered()
    }

    #[test]
    fn waiting_records_go_once_no_partner_can_come_and_late_ones_are_dropped() {
        let ts: TimestampsFn<u64> = Arc::new(|b: &[u64], out: &mut Vec<u64>| {
            out.clear();
            out.extend_from_slice(b);
        });
        let got = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        fn key(_: &u64) -> u8 {
            0
        }
        fn pair(a: &u64, b: &u64, out: &mut Vec<(u64, u64)>) {
            out.push((*a, *b));
        }
        let join = IntervalJoin::new(
            -10,
            20,
            key as fn(&u64) -> u8,
            key as fn(&u64) -> u8,
            ts.clone(),
            ts,
            pair as fn(&u64, &u64, &mut Vec<(u64, u64)>),
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
}
