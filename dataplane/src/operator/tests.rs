#![allow(clippy::unwrap_used, clippy::panic)]
use super::keyed::*;
use super::*;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

/// Collects what reaches it (a test harness's output).
#[derive(Clone, Default)]
struct Out<T>(Rc<RefCell<Vec<T>>>, Rc<RefCell<u32>>);

impl<T: 'static> Emit<T> for Out<T> {
    fn emit(&mut self, r: T) {
        self.0.borrow_mut().push(r);
    }
    fn finish(&mut self) {
        *self.1.borrow_mut() += 1;
    }
}

impl<T: Clone> Out<T> {
    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

/// Counts per key in a ValueState, keeps a history in ListState and MapState, and
/// emits a summary from a processing-time timer 100 ns after the key's first event;
/// a "cancel" event deletes the pending timer.
#[derive(Clone)]
struct Session;

#[derive(Default)]
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
    let mut op = KeyedProcess::new(
        Session,
        Arc::new(|r: &(u32, i64)| r.0),
        Box::new(out.clone()),
    );
    op.tick(1_000);
    op.emit((1, 10));
    op.emit((2, 20));
    op.emit((1, 11));
    op.emit((1, 10));
    assert_eq!(op.key_count(), 2);
    op.tick(1_050);
    assert!(out.take().is_empty(), "no timer is due yet");
    op.emit((2, -1)); // deletes key 2's timer
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
    op.emit((1, 12));
    op.emit((3, 30));
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
    op.finish();
    assert_eq!(*out.1.borrow(), 1, "finish propagates once");
}

#[test]
fn rolling_reduce_keeps_one_aggregate_per_key() {
    let out = Out::<(u32, u64)>::default();
    let mut op = KeyedReduce::new(
        |a: (u32, u64), b: (u32, u64)| (a.0, a.1 + b.1),
        Arc::new(|r: &(u32, u64)| r.0),
        Box::new(out.clone()),
    );
    for r in [(1, 5), (2, 1), (1, 2), (2, 3), (1, 1)] {
        op.emit(r);
    }
    assert_eq!(out.take(), [(1, 5), (2, 1), (1, 7), (2, 4), (1, 8)]);
}

#[test]
fn chained_operators_call_through() {
    let out = Out::<u64>::default();
    let tail: BoxEmit<u64> = Box::new(out.clone());
    let flat = FlatMap::new(
        |x: u64, c: &mut Collector<'_, u64>| {
            c.collect(x);
            c.collect(x + 100);
        },
        tail,
    );
    let filter = Filter::new(
        |x: &u64| x.is_multiple_of(2),
        Box::new(flat) as BoxEmit<u64>,
    );
    let mut map = Map::new(|x: u64| x * 3, Box::new(filter) as BoxEmit<u64>);
    for x in 0..5 {
        map.emit(x);
    }
    assert_eq!(out.take(), [0, 100, 6, 106, 12, 112]);
    let mut tee = Tee::new(vec![
        Box::new(out.clone()) as BoxEmit<u64>,
        Box::new(out.clone()),
    ]);
    tee.emit(9);
    assert_eq!(out.take(), [9, 9]);
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
    let mut op = KeyedProcess::new(Rearm, Arc::new(|k: &u32| *k), Box::new(out.clone()));
    op.emit(7);
    op.tick(100);
    assert_eq!(out.take(), [0], "fired once, re-armed for the next tick");
    op.tick(200);
    assert_eq!(out.take(), [0]);
}
