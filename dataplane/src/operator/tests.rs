#![allow(clippy::unwrap_used, clippy::panic)]
use super::keyed::*;
use super::*;
use std::cell::RefCell;
use std::rc::Rc;

/// Collects what reaches it (a test harness's output): records, and events in order
/// with them.
#[derive(Clone, Default)]
struct Out<T>(Rc<RefCell<Vec<T>>>, Rc<RefCell<Vec<(usize, Event)>>>);

impl<T: 'static> Emit<T> for Out<T> {
    fn push(&mut self, batch: &mut Vec<T>) {
        self.0.borrow_mut().append(batch);
    }
    fn event(&mut self, e: Event) {
        let at = self.0.borrow().len();
        self.1.borrow_mut().push((at, e));
    }
    fn tick(&mut self, _: u64) {}
}

impl<T: Clone> Out<T> {
    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
    fn events(&self) -> Vec<(usize, Event)> {
        std::mem::take(&mut *self.1.borrow_mut())
    }
}

/// Pushes one record as a batch of one.
fn one<T>(e: &mut impl Emit<T>, r: T) {
    let mut b = vec![r];
    e.push(&mut b);
    assert!(b.is_empty(), "the operator takes every record of its batch");
}

/// Counts per key in a ValueState, keeps a history in ListState and MapState, and
/// emits a summary from a processing-time timer 100 ns after the key's first event;
/// a "cancel" event deletes the pending timer.
#[derive(Clone)]
struct Session;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct SessionState {
    count: ValueState<u64>,
    seen: ListState<i64>,
    by_value: MapState<i64, u32>,
    timer: ValueState<u64>,
}

impl KeyedProcessFunction for Session {
    type Key = u32;
    type In = (u32, i64);
    type Out = String;
    type State = SessionState;

    fn process_element(
        &mut self,
        (k, v): (u32, i64),
        st: &mut SessionState,
        ctx: &mut Context<'_, u32, String>,
    ) {
        assert_eq!(*ctx.current_key(), k);
        if v < 0 {
            if let Some(&t) = st.timer.value() {
                ctx.delete_processing_time_timer(t);
                st.timer.clear();
                ctx.collect(format!("{k}: cancelled"));
            }
            return;
        }
        *st.count.get_or_insert_with(|| 0) += 1;
        st.seen.add(v);
        match st.by_value.get_mut(&v) {
            Some(c) => *c += 1,
            None => {
                st.by_value.put(v, 1);
            }
        }
        if st.timer.value().is_none() {
            let at = ctx.current_processing_time() + 100;
            ctx.register_processing_time_timer(at);
            ctx.register_processing_time_timer(at); // registering twice keeps one
            st.timer.update(at);
        }
    }

    fn on_timer(&mut self, ts: u64, st: &mut SessionState, ctx: &mut Context<'_, u32, String>) {
        let k = *ctx.current_key();
        ctx.collect(format!(
            "{k}@{ts}: count {} seen {:?} distinct {}",
            st.count.value().copied().unwrap_or(0),
            st.seen.get(),
            st.by_value.len()
        ));
        st.timer.clear();
        st.seen.clear();
    }
}

#[test]
fn process_function_state_and_timers_per_key() {
    let out = Out::<String>::default();
    let mut op = Chained::new(
        KeyedProcess::new(Session, |r: &(u32, i64)| r.0),
        Box::new(out.clone()),
    );
    op.tick(1_000);
    op.push(&mut vec![(1, 10), (2, 20), (1, 11)]);
    one(&mut op, (1, 10));
    assert_eq!(op.operator().key_count(), 2);
    op.tick(1_050);
    assert!(out.take().is_empty(), "no timer is due yet");
    one(&mut op, (2, -1)); // deletes key 2's timer
    assert_eq!(out.take(), ["2: cancelled"]);
    op.tick(1_100);
    assert_eq!(out.take(), ["1@1100: count 3 seen [10, 11, 10] distinct 2"]);
    op.tick(10_000);
    assert!(
        out.take().is_empty(),
        "fired timers and deleted ones stay gone"
    );
    // State survives the timer; a new event registers a new timer.
    op.tick(20_000);
    op.push_keyed(
        &mut vec![(1, 12), (3, 30)],
        &mut vec![key_hash(&1u32), key_hash(&3u32)],
    );
    op.tick(20_100);
    let mut fired = out.take();
    fired.sort();
    assert_eq!(
        fired,
        [
            "1@20100: count 4 seen [12] distinct 3",
            "3@20100: count 1 seen [30] distinct 1"
        ]
    );
    op.event(Event::EndOfInput);
    assert_eq!(
        out.events(),
        [(0, Event::EndOfInput)],
        "the end goes on once"
    );
}

/// Sums per key until its timer, then emits the sum and drops the key's state.
#[derive(Clone)]
struct SumUntil;

impl KeyedProcessFunction for SumUntil {
    type Key = u32;
    type In = (u32, i64);
    type Out = (u32, i64);
    type State = i64;

    fn process_element(
        &mut self,
        (_, v): (u32, i64),
        st: &mut i64,
        ctx: &mut Context<'_, u32, (u32, i64)>,
    ) {
        *st += v;
        let at = ctx.current_processing_time() + 100;
        ctx.register_processing_time_timer(at);
        if v < 0 {
            // Cleared from a record too.
            ctx.clear_state();
        }
    }

    fn on_timer(&mut self, _: u64, st: &mut i64, ctx: &mut Context<'_, u32, (u32, i64)>) {
        let k = *ctx.current_key();
        ctx.collect((k, *st));
        ctx.clear_state();
    }
}

#[test]
fn cleared_state_leaves_the_key() {
    let out = Out::<(u32, i64)>::default();
    let mut op = Chained::new(
        KeyedProcess::new(SumUntil, |r: &(u32, i64)| r.0),
        Box::new(out.clone()),
    );
    op.tick(1_000);
    op.push(&mut vec![(1, 1), (2, 2), (1, 3), (3, -1)]);
    assert_eq!(op.operator().key_count(), 2, "key 3 cleared as it came");
    op.tick(1_100);
    let mut fired = out.take();
    fired.sort();
    assert_eq!(fired, [(1, 4), (2, 2), (3, 0)]);
    assert_eq!(
        op.operator().key_count(),
        0,
        "every key cleared on its timer"
    );
    op.push(&mut vec![(1, 5)]);
    op.tick(1_300);
    assert_eq!(out.take(), [(1, 5)], "a cleared key starts afresh");
}

/// A running sum per key that emits once per key and batch, at the batch's end.
#[derive(Clone)]
struct BatchedSum;

impl KeyedProcessFunction for BatchedSum {
    type Key = u32;
    type In = (u32, i64);
    type Out = (u32, i64);
    /// (sum, deferred in this batch)
    type State = (i64, bool);

    fn process_element(
        &mut self,
        (_, v): (u32, i64),
        st: &mut (i64, bool),
        ctx: &mut Context<'_, u32, (u32, i64)>,
    ) {
        st.0 += v;
        if !st.1 {
            st.1 = true;
            ctx.defer_to_batch_end();
        }
    }

    fn on_batch_end(&mut self, st: &mut (i64, bool), ctx: &mut Context<'_, u32, (u32, i64)>) {
        st.1 = false;
        let k = *ctx.current_key();
        ctx.collect((k, st.0));
        if st.0 == 0 {
            ctx.clear_state();
        }
    }
}

#[test]
fn deferred_keys_get_one_call_at_the_end_of_their_batch() {
    let out = Out::<(u32, i64)>::default();
    let mut op = Chained::new(
        KeyedProcess::new(BatchedSum, |r: &(u32, i64)| r.0),
        Box::new(out.clone()),
    );
    op.push(&mut vec![(1, 1), (2, 2), (1, 3), (3, 4), (1, -1), (3, -4)]);
    // In the order the keys were first seen, each once, with the batch's total.
    assert_eq!(out.take(), [(1, 3), (2, 2), (3, 0)]);
    assert_eq!(
        op.operator().key_count(),
        2,
        "key 3 cleared at the batch's end"
    );
    // Before what follows the batch.
    op.push(&mut vec![(2, 5)]);
    op.event(Event::Watermark(10));
    assert_eq!(out.take(), [(2, 7)]);
    assert_eq!(out.events(), [(1, Event::Watermark(10))]);
}

#[test]
fn rolling_reduce_keeps_one_aggregate_per_key() {
    let out = Out::<(u32, u64)>::default();
    let mut op = Chained::new(
        KeyedReduce::new(
            |a: (u32, u64), b: (u32, u64)| (a.0, a.1 + b.1),
            |r: &(u32, u64)| r.0,
        ),
        Box::new(out.clone()),
    );
    op.push(&mut vec![(1, 5), (2, 1), (1, 2)]);
    op.push(&mut vec![(2, 3), (1, 1)]);
    assert_eq!(out.take(), [(1, 5), (2, 1), (1, 7), (2, 4), (1, 8)]);
}

#[test]
fn chained_operators_call_through_a_batch_at_a_time() {
    let out = Out::<u64>::default();
    let tail: BoxEmit<u64> = Box::new(out.clone());
    let flat = Chained::new(
        FlatMap::new(|x: u64, c: &mut Collector<'_, '_, u64>| {
            c.collect(x);
            c.collect(x + 100);
        }),
        tail,
    );
    let filter = Chained::new(
        Filter::new(|x: &u64| x.is_multiple_of(2)),
        Box::new(flat) as BoxEmit<u64>,
    );
    let mut map = Chained::new(Map::new(|x: u64| x * 3), Box::new(filter) as BoxEmit<u64>);
    let mut batch: Vec<u64> = (0..5).collect();
    map.push(&mut batch);
    assert!(batch.is_empty());
    assert_eq!(out.take(), [0, 100, 6, 106, 12, 112]);
    let mut tee = Tee::new(vec![
        Box::new(out.clone()) as BoxEmit<u64>,
        Box::new(out.clone()),
    ]);
    one(&mut tee, 9);
    tee.event(Event::Watermark(5));
    assert_eq!(out.take(), [9, 9]);
    assert_eq!(
        out.events(),
        [(2, Event::Watermark(5)), (2, Event::Watermark(5))]
    );
}

#[test]
fn events_pass_every_operator_in_order_with_the_records_around_them() {
    let out = Out::<u64>::default();
    let filter = Chained::new(
        Filter::new(|x: &u64| *x != 3),
        Box::new(out.clone()) as BoxEmit<u64>,
    );
    let mut map = Chained::new(Map::new(|x: u64| x + 1), Box::new(filter) as BoxEmit<u64>);
    let b = Barrier {
        id: 4,
        timestamp_ns: 1,
        kind: BarrierKind::Checkpoint,
    };
    map.push(&mut vec![1, 2]);
    map.event(Event::Watermark(10));
    map.push(&mut vec![3]);
    map.event(Event::Barrier(b));
    map.event(Event::Idle(true));
    map.event(Event::EndOfInput);
    assert_eq!(out.take(), [2, 4]);
    assert_eq!(
        out.events(),
        [
            (1, Event::Watermark(10)),
            (2, Event::Barrier(b)),
            (2, Event::Idle(true)),
            (2, Event::EndOfInput)
        ]
    );
}

#[test]
fn a_filter_keeps_each_records_key_hash_beside_it() {
    struct Keyed(Rc<RefCell<Vec<(u64, u64)>>>);
    impl Emit<u64> for Keyed {
        fn push(&mut self, _: &mut Vec<u64>) {
            panic!("hashes were dropped");
        }
        fn push_keyed(&mut self, batch: &mut Vec<u64>, hashes: &mut Vec<u64>) {
            let mut v = self.0.borrow_mut();
            v.extend(batch.drain(..).zip(hashes.drain(..)));
        }
        fn event(&mut self, _: Event) {}
        fn tick(&mut self, _: u64) {}
    }
    let got = Rc::new(RefCell::new(Vec::new()));
    let mut f = Chained::new(
        Filter::new(|x: &u64| x % 2 == 1),
        Box::new(Keyed(got.clone())) as BoxEmit<u64>,
    );
    let mut hashes = vec![10, 20, 30, 40, 50];
    f.push_keyed(&mut vec![1, 2, 3, 4, 5], &mut hashes);
    assert!(hashes.is_empty());
    assert_eq!(*got.borrow(), [(1, 10), (3, 30), (5, 50)]);
}

/// Every key registers a processing-time timer at 70 and an event-time timer at
/// 1000; key 1 also registers timers at 50 and 60, and its timer at 50 deletes the
/// one at 60.
#[derive(Clone)]
struct Order;

impl KeyedProcessFunction for Order {
    type Key = u32;
    type In = u32;
    type Out = (u32, u64);
    type State = ();

    fn process_element(&mut self, k: u32, _: &mut (), ctx: &mut Context<'_, u32, (u32, u64)>) {
        ctx.register_processing_time_timer(70);
        ctx.register_event_time_timer(1_000);
        if k == 1 {
            ctx.register_processing_time_timer(50);
            ctx.register_processing_time_timer(60);
        }
    }

    fn on_timer(&mut self, ts: u64, _: &mut (), ctx: &mut Context<'_, u32, (u32, u64)>) {
        ctx.collect((*ctx.current_key(), ts));
        if ts == 50 {
            // Due in this same tick: deleted now, it must not fire.
            ctx.delete_processing_time_timer(60);
        }
    }
}

#[test]
fn timers_fire_in_time_then_registration_order_and_deleted_ones_do_not() {
    let out = Out::<(u32, u64)>::default();
    let mut op = Chained::new(
        KeyedProcess::new(Order, |k: &u32| *k),
        Box::new(out.clone()),
    );
    op.push(&mut vec![1, 2, 3]);
    op.tick(100);
    assert_eq!(out.take(), [(1, 50), (1, 70), (2, 70), (3, 70)]);
    assert_eq!(op.operator().timer_count(), (0, 3));
    // Event time: the timers fire when the watermark passes them, before it goes on.
    op.event(Event::Watermark(999));
    assert!(out.take().is_empty());
    op.event(Event::Watermark(1_000));
    assert_eq!(out.take(), [(1, 1_000), (2, 1_000), (3, 1_000)]);
    assert_eq!(
        out.events(),
        [(0, Event::Watermark(999)), (3, Event::Watermark(1_000))]
    );
}

/// Re-arms its timer for a time already past, every time it fires.
#[derive(Clone)]
struct Rearm;

impl KeyedProcessFunction for Rearm {
    type Key = u32;
    type In = u32;
    type Out = u64;
    type State = ();

    fn process_element(&mut self, _: u32, _: &mut (), ctx: &mut Context<'_, u32, u64>) {
        ctx.register_processing_time_timer(0);
    }

    fn on_timer(&mut self, ts: u64, _: &mut (), ctx: &mut Context<'_, u32, u64>) {
        ctx.collect(ts);
        ctx.register_processing_time_timer(ts); // already due again
    }
}

#[test]
fn a_timer_that_rearms_itself_fires_once_per_tick() {
    let out = Out::<u64>::default();
    let mut op = Chained::new(
        KeyedProcess::new(Rearm, |k: &u32| *k),
        Box::new(out.clone()),
    );
    one(&mut op, 7);
    op.tick(100);
    assert_eq!(out.take(), [0], "fired once, re-armed for the next tick");
    op.tick(200);
    assert_eq!(out.take(), [0]);
}

#[test]
fn keyed_state_stays_consistent_through_inserts_and_removes() {
    let mut st: KeyedStates<u64, u64> = KeyedStates::default();
    for k in 0..1_000u64 {
        *st.get_or_insert(key_hash(&k), k).1 = k * 10;
    }
    for k in (0..1_000u64).filter(|k| k % 3 == 0) {
        assert_eq!(st.remove(key_hash(&k), &k), Some(k * 10));
        assert_eq!(st.remove(key_hash(&k), &k), None, "removed once");
    }
    assert_eq!(st.len(), 1_000 - 334);
    for k in 0..1_000u64 {
        let want = (k % 3 != 0).then_some(k * 10);
        assert_eq!(st.get(&k).copied(), want, "key {k}");
    }
    // Removed keys come back fresh.
    assert_eq!(*st.get_or_insert(key_hash(&3u64), 3).1, 0);
}

proptest::proptest! {
    /// Keys found by position (small integers) and by hash (the rest) side by side,
    /// through inserts, removes (the last entry moving into the removed one's place,
    /// whichever way either is found) and clears, against a plain map.
    #[test]
    fn keyed_state_by_position_and_by_hash_agrees_with_a_map(
        ops in proptest::collection::vec((0u8..10, 0u64..64, proptest::bool::ANY), 1..400),
    ) {
        let mut st: KeyedStates<u64, u64> = KeyedStates::default();
        let mut want: std::collections::HashMap<u64, u64> = Default::default();
        for (op, k, big) in ops {
            // Small keys, keys just past the positions, and large ones.
            let k = if big { k * 1_000_003 + DIRECT_KEYS as u64 - 32 } else { k };
            match op {
                0..=5 => {
                    *st.get_or_insert(key_hash(&k), k).1 += k + 1;
                    *want.entry(k).or_default() += k + 1;
                }
                6..=8 => {
                    proptest::prop_assert_eq!(st.remove(key_hash(&k), &k), want.remove(&k));
                }
                _ => {
                    if k % 8 == 0 {
                        st.clear();
                        want.clear();
                    }
                }
            }
            proptest::prop_assert_eq!(st.len(), want.len());
        }
        for (k, v) in &want {
            proptest::prop_assert_eq!(st.get(k), Some(v));
        }
        let mut all: Vec<(u64, u64)> = st.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        let mut w: Vec<(u64, u64)> = want.into_iter().collect();
        w.sort_unstable();
        proptest::prop_assert_eq!(all, w);
    }
}

proptest::proptest! {
    /// `update_by_position` (one loop over a batch, keys found by position while they
    /// can be; the caller finishes the batch as it would without it) against a map:
    /// batches of small keys, keys past the positions and enough keys to spill out of
    /// the first chunk, between removes and clears, with snapshots frozen between
    /// steps that must keep the values they froze.
    #[test]
    fn update_by_position_agrees_with_a_map(
        steps in proptest::collection::vec(
            (
                0u8..10,
                proptest::collection::vec((0u64..1500, 0u8..4), 0..300),
                proptest::bool::ANY,
            ),
            1..16,
        ),
    ) {
        let mut st: KeyedStates<u64, u64> = KeyedStates::default();
        let mut strings: KeyedStates<String, u64> = KeyedStates::default();
        let mut want: std::collections::HashMap<u64, u64> = Default::default();
        for (op, batch, freeze) in steps {
            let keys: Vec<u64> = batch
                .iter()
                .map(|&(k, kind)| if kind == 0 { k * 1_000_003 + DIRECT_KEYS as u64 } else { k })
                .collect();
            let frozen = freeze.then(|| st.freeze());
            let before: Vec<(u64, u64)> =
                frozen.iter().flat_map(|f| f.iter().copied()).collect();
            match op {
                0..=6 => {
                    let done = st.update_by_position(&keys, |&k| k, |v, &k| *v += k + 1);
                    proptest::prop_assert!(done <= keys.len());
                    if keys.iter().all(|&k| k < DIRECT_KEYS as u64) && want.len() + keys.len() <= 1024 {
                        proptest::prop_assert_eq!(done, keys.len(), "small keys in one chunk stop nowhere");
                    }
                    // The rest as a caller does.
                    for &k in &keys[done..] {
                        *st.get_or_insert(key_hash(&k), k).1 += k + 1;
                    }
                    let named: Vec<String> = keys.iter().map(u64::to_string).collect();
                    let none = strings.update_by_position(&named, String::clone, |v, _| *v += 1);
                    proptest::prop_assert_eq!(none, 0, "string keys are not found by position");
                    for (k, name) in keys.iter().zip(named) {
                        *strings.get_or_insert(key_hash(&name), name).1 += k + 1;
                    }
                    for &k in &keys {
                        *want.entry(k).or_default() += k + 1;
                    }
                }
                7 | 8 => {
                    for &k in keys.iter().take(20) {
                        let name = k.to_string();
                        let w = want.remove(&k);
                        proptest::prop_assert_eq!(st.remove(key_hash(&k), &k), w);
                        proptest::prop_assert_eq!(strings.remove(key_hash(&name), &name), w);
                    }
                }
                _ => {
                    st.clear();
                    strings.clear();
                    want.clear();
                }
            }
            if let Some(f) = frozen {
                let after: Vec<(u64, u64)> = f.iter().copied().collect();
                proptest::prop_assert_eq!(after, before, "a snapshot changed under it");
            }
            proptest::prop_assert_eq!(st.len(), want.len());
        }
        proptest::prop_assert_eq!(strings.len(), want.len());
        for (k, v) in &want {
            proptest::prop_assert_eq!(st.get(k), Some(v));
            proptest::prop_assert_eq!(strings.get(&k.to_string()), Some(v));
        }
    }
}

#[test]
fn string_keys_are_found_by_hash() {
    let mut st: KeyedStates<String, u64> = KeyedStates::default();
    for k in 0..100u64 {
        let key = k.to_string();
        *st.get_or_insert(key_hash(&key), key).1 = k;
    }
    let gone = "7".to_string();
    assert_eq!(st.remove(key_hash(&gone), &gone), Some(7));
    for k in 0..100u64 {
        assert_eq!(st.get(&k.to_string()).copied(), (k != 7).then_some(k));
    }
}

/// Re-arms an event-time timer for the time that is firing.
#[derive(Clone)]
struct RearmEvent;

impl KeyedProcessFunction for RearmEvent {
    type Key = u32;
    type In = u32;
    type Out = u64;
    type State = ValueState<u32>;

    fn process_element(
        &mut self,
        _: u32,
        _: &mut ValueState<u32>,
        ctx: &mut Context<'_, u32, u64>,
    ) {
        ctx.register_event_time_timer(10);
    }

    fn on_timer(&mut self, ts: u64, n: &mut ValueState<u32>, ctx: &mut Context<'_, u32, u64>) {
        ctx.collect(ts);
        let fired = n.get_or_insert_with(|| 0);
        *fired += 1;
        if *fired < 3 {
            // Due already: in event time it fires within this same watermark.
            ctx.register_event_time_timer(ts + 1);
        }
    }
}

/// Regression (review): event-time timers registered while timers fired waited for a
/// later watermark, and after the end of time none came.
#[test]
fn event_time_timers_registered_while_firing_fire_within_the_same_watermark() {
    let out = Out::<u64>::default();
    let mut op = Chained::new(
        KeyedProcess::new(RearmEvent, |k: &u32| *k),
        Box::new(out.clone()),
    );
    one(&mut op, 1);
    op.event(Event::Watermark(u64::MAX));
    assert_eq!(out.take(), [10, 11, 12]);
}

/// On a sampled batch each chained operator's time is its own: the upstream link's
/// excludes what the downstream one took; off the sampled batches nothing is measured.
#[test]
fn chained_operators_are_timed_apart_on_sampled_batches() {
    fn spin(ns: u64) {
        let until = crate::clock::now_ns() + ns;
        while crate::clock::now_ns() < until {
            std::hint::spin_loop();
        }
    }
    let out = Out::<u64>::default();
    let (a_t, b_t) = (
        std::sync::Arc::new(OperatorTimes::new("a")),
        std::sync::Arc::new(OperatorTimes::new("b")),
    );
    let b = Chained::new(
        Map::new(|x: u64| {
            spin(2_000_000);
            x
        }),
        Box::new(out.clone()) as BoxEmit<u64>,
    )
    .timed(b_t.clone());
    let mut a = Chained::new(
        Map::new(|x: u64| {
            spin(200_000);
            x
        }),
        Box::new(b) as BoxEmit<u64>,
    )
    .timed(a_t.clone());
    a.push(&mut vec![1]);
    assert!(
        a_t.histogram().is_none() && b_t.histogram().is_none(),
        "not sampled"
    );
    set_sampling(true);
    a.push(&mut vec![2]);
    set_sampling(false);
    assert_eq!(out.take(), [1, 2]);
    let (a_ns, b_ns) = (
        a_t.histogram().unwrap().max(),
        b_t.histogram().unwrap().max(),
    );
    assert!(b_ns >= 1_900_000, "b: {b_ns}");
    // Without b's 2 ms taken out, a's would exceed b's.
    assert!(
        a_ns >= 150_000 && a_ns < b_ns,
        "a's own time, without b's: {a_ns} (b {b_ns})"
    );
}
