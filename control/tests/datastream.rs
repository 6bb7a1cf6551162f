//! The DataStream API on the MiniCluster: results against plain computations.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate::api::{
    BroadcastContext, BroadcastProcessFunction, KeyedBroadcastProcessFunction, OutputTag,
    ProcessContext, ProcessFunction, RuntimeMode, StreamExecutionEnvironment,
};
use spate::config::Config;
use spate::graph::{GraphError, JobGraph};
use spate::jobs::{self, Bar, BarAcc, Vwap, VwapParams};
use spate::minicluster::{JobResult, JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use spate_dataplane::operator::keyed::{
    Context, KeyedCoProcessFunction, KeyedProcessFunction, TimeDomain, ValueState,
};
use spate_dataplane::operator::source::{Pace, Trade};
use spate_dataplane::operator::watermark::WatermarkStrategy;
use spate_dataplane::operator::window::{AggregateFunction, Trigger, Window, WindowAssigner};
use spate_dataplane::operator::{CoProcessFunction, Operator, Output};
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(slots: usize) -> Config {
    Config {
        slots,
        idle: IdleStrategyKind::Backoff,
        ring_size: 1 << 16,
        ..Config::default()
    }
}

fn run(env: &StreamExecutionEnvironment, p: Option<usize>, slots: usize) -> JobResult {
    let graph = JobGraph::build(env.stream_graph(), p, 1, true).unwrap();
    execute(&graph, &config(slots))
}

/// Runs `graph` to its end on a MiniCluster configured by `cfg`.
fn execute(graph: &JobGraph, cfg: &Config) -> JobResult {
    let mut mc = MiniCluster::start(cfg).unwrap();
    mc.execute(
        graph,
        &AtomicBool::new(false),
        Duration::from_secs(60),
        &mut |_| {},
    )
    .unwrap()
}

#[test]
fn vwap_equals_the_single_threaded_computation_per_symbol_in_order() {
    for p in [1usize, 2] {
        let events = 300_000;
        let env = StreamExecutionEnvironment::new("vwap");
        let out = Arc::new(Mutex::new(Vec::<Vwap>::new()));
        let params = VwapParams {
            seed: 7,
            events: Some(events),
            pace: Pace::Unpaced,
            latency_sample: 1,
        };
        jobs::vwap_stream(&env, params).collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got: HashMap<u32, Vec<i64>> = HashMap::new();
        for v in out.lock().unwrap().iter() {
            got.entry(v.symbol).or_default().push(v.vwap);
        }
        let want = jobs::vwap_reference(7, events, p);
        assert_eq!(got.len(), want.len());
        assert_eq!(got, want, "parallelism {p}");
        assert_eq!(r.progress.records, events);
    }
}

/// Regression: W1 measured every record whatever `latency_sample` said, while the CLI
/// and the benchmark printed "1 in 16".
#[test]
fn w1_measures_the_latency_of_one_record_in_latency_sample() {
    for (sample, p) in [(16u32, 1usize), (1, 1), (16, 2)] {
        let events = 100_000u64;
        let env = StreamExecutionEnvironment::new("vwap");
        jobs::vwap(
            &env,
            VwapParams {
                seed: 3,
                events: Some(events),
                pace: Pace::Unpaced,
                latency_sample: sample,
            },
        );
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        assert_eq!(r.progress.records, events);
        // Each sink subtask measures records 0, n, 2n, ... of what it receives.
        let measured = r.progress.latency.len();
        let per_sink = events / p as u64;
        let want = p as u64 * per_sink.div_ceil(u64::from(sample));
        assert!(
            measured.abs_diff(want) <= p as u64,
            "1 in {sample} at p={p}: {measured} latencies for {events} records"
        );
    }
}

/// Latency markers (`metrics.latency.interval`) go from the sources through every
/// ring of W1 with chaining off (source, filter, VWAP, sink: three hops) at p=2 and
/// back: every marker that reached the first hop reaches each later one (one marker
/// stays one across key exchanges), each vertex has their ages, and the records are
/// untouched by them.
#[test]
fn latency_markers_reach_every_vertex_once_each_beside_the_records() {
    let events = 400_000u64;
    let env = StreamExecutionEnvironment::new("vwap");
    let out = Arc::new(Mutex::new(Vec::<Vwap>::new()));
    let params = VwapParams {
        seed: 11,
        events: Some(events),
        pace: Pace::Rate(400_000.0),
        latency_sample: 1,
    };
    jobs::vwap_stream(&env, params).collect(out.clone());
    let graph = JobGraph::build(env.stream_graph(), Some(2), 1, false).unwrap();
    let cfg = Config {
        latency_interval: Duration::from_millis(1),
        ..config(2)
    };
    let r = execute(&graph, &cfg);
    assert_eq!(r.status, JobStatus::Finished);
    let names: Vec<&str> = r.from_source.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 3, "every vertex but the sources: {names:?}");
    let counts: Vec<u64> = r.from_source.iter().map(|(_, h)| h.len()).collect();
    assert!(
        counts[0] > 10,
        "markers every ms for about a second: {counts:?}"
    );
    assert!(
        counts.iter().all(|&c| c == counts[0]),
        "each marker reaches every hop once: {counts:?}"
    );
    // Each operator's own time per record, on the batches after a marker.
    let ops: Vec<&str> = r.operators.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        ops.iter().any(|n| n.starts_with("Filter")) && ops.contains(&"VWAP"),
        "{ops:?}"
    );
    assert!(r.operators.iter().all(|(_, h)| !h.is_empty()), "{ops:?}");
    // The records are the computation's, markers or not.
    let mut got: HashMap<u32, Vec<i64>> = HashMap::new();
    for v in out.lock().unwrap().iter() {
        got.entry(v.symbol).or_default().push(v.vwap);
    }
    assert_eq!(got, jobs::vwap_reference(11, events, 2));
    // Off by default: no markers, nothing reported.
    let env = StreamExecutionEnvironment::new("vwap");
    jobs::vwap_stream(
        &env,
        VwapParams {
            seed: 11,
            events: Some(10_000),
            pace: Pace::Unpaced,
            latency_sample: 1,
        },
    )
    .discard();
    let r = run(&env, Some(2), 2);
    assert!(r.from_source.is_empty());
    assert!(
        r.operators.is_empty(),
        "operators are timed only with markers on"
    );
}

/// Registers an event-time timer at each record's value and emits it when it fires.
#[derive(Clone)]
struct FireAt;

impl KeyedProcessFunction for FireAt {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ();

    fn process_element(&mut self, v: u64, _: &mut (), ctx: &mut Context<'_, u64, u64>) {
        ctx.register_event_time_timer(v);
    }

    fn on_timer(&mut self, ts: u64, _: &mut (), ctx: &mut Context<'_, u64, u64>) {
        assert_eq!(ctx.time_domain(), Some(TimeDomain::EventTime));
        ctx.collect(ts);
    }
}

/// The end of a bounded input is the end of event time: its watermark travels in band
/// through chains, rings and key exchanges, and fires every event-time timer.
#[test]
fn the_final_watermark_crosses_rings_and_fires_event_time_timers() {
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("timers");
        let out = Arc::new(Mutex::new(Vec::new()));
        env.from_collection((1..=1000u64).collect())
            .rebalance()
            .map(|x: u64| x * 2)
            .key_by(|x: &u64| *x % 17)
            .process(FireAt)
            .collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(
            got,
            (1..=1000u64).map(|x| x * 2).collect::<Vec<_>>(),
            "p={p}"
        );
    }
}

/// An operator of a user's own: scales records, and counts the watermarks it saw,
/// emitting the count at the end of input.
#[derive(Clone)]
struct ScaleAndCount {
    factor: u64,
    watermarks: u64,
}

impl Operator for ScaleAndCount {
    type In = u64;
    type Out = u64;
    fn process(&mut self, batch: &mut Vec<u64>, out: &mut Output<'_, u64>) {
        out.extend(batch.drain(..).map(|x| x * self.factor));
    }
    fn on_watermark(&mut self, wm: u64, out: &mut Output<'_, u64>) {
        self.watermarks += 1;
        out.watermark(wm);
    }
    fn on_end_of_input(&mut self, out: &mut Output<'_, u64>) {
        out.collect(1_000_000 + self.watermarks);
    }
}

#[test]
fn transform_runs_an_operator_of_ones_own_with_its_hooks() {
    let env = StreamExecutionEnvironment::new("transform");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection((1..=5u64).collect())
        .transform(
            "Scale",
            ScaleAndCount {
                factor: 10,
                watermarks: 0,
            },
        )
        .collect(out.clone());
    let r = run(&env, None, 1);
    assert_eq!(r.status, JobStatus::Finished);
    // One watermark (the end of time) reached it before the end of input.
    assert_eq!(*out.lock().unwrap(), [10, 20, 30, 40, 50, 1_000_001]);
}

/// `pipeline.auto-watermark-interval` 0 turns watermark generation off, as in Flink:
/// only the end of input's watermark passes; with the default, watermarks follow the
/// records.
#[test]
fn an_auto_watermark_interval_of_zero_turns_watermarks_off() {
    for (interval, only_the_end) in [(Duration::ZERO, true), (Duration::from_millis(200), false)] {
        let env = StreamExecutionEnvironment::new("no watermarks");
        env.set_auto_watermark_interval(interval);
        let out = Arc::new(Mutex::new(Vec::new()));
        env.from_collection((1..=3_000u64).collect())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|x: &u64| *x),
            )
            .transform(
                "Count",
                ScaleAndCount {
                    factor: 1,
                    watermarks: 0,
                },
            )
            .collect(out.clone());
        let r = run(&env, None, 1);
        assert_eq!(r.status, JobStatus::Finished);
        let seen = out.lock().unwrap().last().copied().unwrap() - 1_000_000;
        if only_the_end {
            assert_eq!(seen, 1, "{interval:?}");
        } else {
            assert!(seen > 1, "{interval:?}: {seen}");
        }
    }
}

/// (key, event time, value), in arrival order: event times advance by up to 40 ns a
/// record and arrive up to `disorder` ns late.
fn disordered(seed: u64, n: usize, disorder: u64) -> Vec<(u32, u64, u64)> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = 1_000u64;
    (0..n)
        .map(|i| {
            t += rnd() % 40;
            let late = if disorder == 0 {
                0
            } else {
                rnd() % (disorder + 1)
            };
            ((rnd() % 7) as u32, t - late.min(t), i as u64)
        })
        .collect()
}

/// Per (key, window start): Σvalue and count, computed plainly.
fn windows_reference(
    input: &[(u32, u64, u64)],
    size: u64,
    slide: u64,
) -> Vec<(u32, u64, u64, u64)> {
    let mut m: std::collections::BTreeMap<(u32, u64), (u64, u64)> = Default::default();
    for &(k, ts, v) in input {
        let last = ts - ts % slide;
        let mut start = last as i64;
        while start >= 0 && start as u64 + size > ts {
            let e = m.entry((k, start as u64)).or_default();
            e.0 += v;
            e.1 += 1;
            start -= slide as i64;
        }
    }
    m.into_iter()
        .map(|((k, s), (sum, n))| (k, s, sum, n))
        .collect()
}

#[derive(Clone)]
struct SumCount;

impl AggregateFunction for SumCount {
    type In = (u32, u64, u64);
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, v: &(u32, u64, u64), acc: &mut (u64, u64)) {
        acc.0 += v.2;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// Tumbling and sliding event-time windows with random disorder within the watermark
/// bound, at parallelism 1 and 2 (a key exchange between two slots), equal a plain
/// computation: every record counted in each of its windows, each window fired once.
#[test]
fn event_time_windows_equal_a_plain_computation_under_disorder() {
    for seed in [1u64, 7, 42] {
        let input = disordered(seed, 3_000, 200);
        for (size, slide) in [(500u64, 500u64), (1_000, 250)] {
            for p in [1usize, 2] {
                let env = StreamExecutionEnvironment::new("windows");
                let out = Arc::new(Mutex::new(Vec::new()));
                let assigner = if size == slide {
                    WindowAssigner::tumbling_event_time(Duration::from_nanos(size)).unwrap()
                } else {
                    WindowAssigner::sliding_event_time(
                        Duration::from_nanos(size),
                        Duration::from_nanos(slide),
                    )
                    .unwrap()
                };
                env.from_collection(input.clone())
                    .assign_timestamps_and_watermarks(
                        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(200))
                            .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
                    )
                    .rebalance()
                    .key_by(|r: &(u32, u64, u64)| r.0)
                    .window(assigner)
                    .aggregate_with(SumCount, |k: &u32, w: &Window, (sum, n)| {
                        Some((*k, w.start, sum, n))
                    })
                    .collect(out.clone());
                let r = run(&env, Some(p), 2);
                assert_eq!(r.status, JobStatus::Finished);
                let mut got = out.lock().unwrap().clone();
                got.sort_unstable();
                assert_eq!(
                    got,
                    windows_reference(&input, size, slide),
                    "seed {seed}, size {size}, slide {slide}, p={p}"
                );
            }
        }
    }
}

/// A record that arrives after the watermark passed its window is dropped (the window
/// fired already); the window's result stands.
#[test]
fn records_behind_the_watermark_miss_their_fired_windows() {
    // 300 in-order records fill the first batch of 256 and part of a second; the last
    // one is far behind the watermark the first batch raised.
    let mut input: Vec<(u32, u64, u64)> = (0..299).map(|i| (1, 1_000 + i * 10, 1)).collect();
    input.push((1, 1_005, 1_000));
    let env = StreamExecutionEnvironment::new("late");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection(input)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap())
        .reduce(|a: (u32, u64, u64), b| (a.0, a.1.max(b.1), a.2 + b.2))
        .collect(out.clone());
    let r = run(&env, None, 1);
    assert_eq!(r.status, JobStatus::Finished);
    let got = out.lock().unwrap().clone();
    // Window [1000, 1100) has its ten records, without the late one's 1000.
    assert_eq!(got.iter().find(|w| w.1 < 1_100).map(|w| w.2), Some(10));
    assert_eq!(got.iter().map(|w| w.2).sum::<u64>(), 299);
}

/// With allowed lateness, the same late record joins its window, which fires again
/// (Flink's `allowedLateness` under the event-time trigger); nothing is late.
#[test]
fn allowed_lateness_fires_a_window_again_for_a_record_within_it() {
    let mut input: Vec<(u32, u64, u64)> = (0..299).map(|i| (1, 1_000 + i * 10, 1)).collect();
    input.push((1, 1_005, 1_000));
    let env = StreamExecutionEnvironment::new("lateness");
    let out = Arc::new(Mutex::new(Vec::new()));
    let late_tag = OutputTag::<(u32, u64, u64)>::new("late");
    let late = Arc::new(Mutex::new(Vec::new()));
    let windows = env
        .from_collection(input)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap())
        .allowed_lateness(Duration::from_micros(10))
        .side_output_late_data(&late_tag)
        .reduce(|a: (u32, u64, u64), b| (a.0, a.1.min(b.1), a.2 + b.2));
    windows.collect(out.clone());
    windows.get_side_output(&late_tag).collect(late.clone());
    let r = run(&env, None, 1);
    assert_eq!(r.status, JobStatus::Finished);
    let got = out.lock().unwrap().clone();
    let first: Vec<u64> = got.iter().filter(|w| w.1 < 1_100).map(|w| w.2).collect();
    assert_eq!(
        first,
        [10, 1_010],
        "fired at its end, then again with the late record"
    );
    assert!(late.lock().unwrap().is_empty());
}

/// A purging count trigger on tumbling windows: each key's window fires every three
/// records and starts afresh; what is left at the window's end is dropped (Flink's
/// `PurgingTrigger.of(CountTrigger.of(3))`).
#[test]
fn a_purging_count_trigger_fires_every_n_records_of_a_window() {
    // Key k has 10 + k records in each window of 100 ns.
    let mut input = Vec::new();
    for w in 0..5u64 {
        for k in 0..3u32 {
            for i in 0..(10 + u64::from(k)) {
                input.push((k, 1_000 + w * 100 + i, 1u64));
            }
        }
    }
    input.sort_by_key(|r| r.1);
    let env = StreamExecutionEnvironment::new("count trigger");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection(input)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap())
        .trigger(Trigger::count(3).unwrap().purging())
        .reduce(|a: (u32, u64, u64), b| (a.0, a.1, a.2 + b.2))
        .collect(out.clone());
    let r = run(&env, Some(2), 2);
    assert_eq!(r.status, JobStatus::Finished);
    let got = out.lock().unwrap().clone();
    assert!(
        got.iter().all(|r| r.2 == 3),
        "every firing holds three records"
    );
    for k in 0..3u32 {
        let n = got.iter().filter(|r| r.0 == k).count() as u64;
        assert_eq!(n, 5 * ((10 + u64::from(k)) / 3), "key {k}");
    }
}

/// A continuous trigger on a session window is refused when the job is built.
#[test]
fn a_trigger_session_windows_cannot_take_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("bad trigger");
    env.from_collection(vec![(1u32, 1u64, 1u64)])
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::event_time_session(Duration::from_nanos(100)).unwrap())
        .trigger(Trigger::continuous_event_time(Duration::from_nanos(10)).unwrap())
        .reduce(|a: (u32, u64, u64), _| a)
        .discard();
    let err = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(
        matches!(err, GraphError::Declaration(ref m) if m.contains("trigger")),
        "{err}"
    );
}

#[test]
fn an_event_time_window_without_timestamps_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("no timestamps");
    env.from_collection(vec![(1u32, 1u64, 1u64)])
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_secs(1)).unwrap())
        .aggregate(SumCount)
        .discard();
    let e = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(
        e.to_string().contains("assign_timestamps_and_watermarks"),
        "{e}"
    );
}

/// Processing-time windows fire on the clock, and what is open fires at the end of a
/// bounded input: every record is counted once.
#[test]
fn processing_time_windows_count_every_record_once() {
    let env = StreamExecutionEnvironment::new("processing time");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection(disordered(3, 5_000, 0))
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_processing_time(Duration::from_micros(50)).unwrap())
        .aggregate(SumCount)
        .collect(out.clone());
    let r = run(&env, None, 1);
    assert_eq!(r.status, JobStatus::Finished);
    let n: u64 = out.lock().unwrap().iter().map(|w| w.1).sum();
    assert_eq!(n, 5_000);
}

/// W2: every bar equals the plain computation over the very trades the source sent
/// (collected beside the pipeline), at parallelism 1 and 2.
#[test]
fn bars_equal_a_plain_computation_over_the_same_trades() {
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("bars");
        let sent = Arc::new(Mutex::new(Vec::<Trade>::new()));
        let out = Arc::new(Mutex::new(Vec::<Bar>::new()));
        let (disorder, window) = (200_000u64, 1_000_000u64);
        let trades = env.disordered_trades(9, Some(300_000), Pace::Unpaced, disorder);
        trades.collect(sent.clone());
        jobs::bars_of(&trades, disorder, window)
            .unwrap()
            .collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut want: std::collections::BTreeMap<(u32, u64), BarAcc> = Default::default();
        for t in sent.lock().unwrap().iter() {
            want.entry((t.symbol, t.ts_ns - t.ts_ns % window))
                .or_default()
                .add(t);
        }
        let got: std::collections::BTreeMap<(u32, u64), Bar> = out
            .lock()
            .unwrap()
            .iter()
            .map(|b| ((b.symbol, b.window_start), *b))
            .collect();
        assert_eq!(
            got.len(),
            want.len(),
            "p={p}: one bar per symbol and window"
        );
        assert!(want.len() > 1000, "several windows: {}", want.len());
        for (k, acc) in &want {
            let b = &got[k];
            assert_eq!(
                (b.open, b.high, b.low, b.close, b.volume, b.vwap, b.count),
                (
                    acc.open,
                    acc.high,
                    acc.low,
                    acc.close,
                    acc.sums.qty,
                    acc.vwap(),
                    acc.count
                ),
                "p={p}, bar {k:?}"
            );
            assert_eq!(b.window_end, k.1 + window);
            assert_eq!(b.ready_ns, k.1 + window + disorder);
        }
    }
}

/// Per key, sessions of records less than `gap` apart (touching windows merge, as in
/// Flink): (key, start, end, Σvalue, count).
fn sessions_reference(input: &[(u32, u64, u64)], gap: u64) -> Vec<(u32, u64, u64, u64, u64)> {
    let mut by_key: std::collections::BTreeMap<u32, Vec<(u64, u64)>> = Default::default();
    for &(k, ts, v) in input {
        by_key.entry(k).or_default().push((ts, v));
    }
    let mut out = Vec::new();
    for (k, mut recs) in by_key {
        recs.sort_unstable();
        let mut cur: Option<(u64, u64, u64, u64)> = None;
        for (ts, v) in recs {
            cur = match cur {
                Some((s, e, sum, n)) if ts <= e => Some((s, e.max(ts + gap), sum + v, n + 1)),
                Some((s, e, sum, n)) => {
                    out.push((k, s, e, sum, n));
                    Some((ts, ts + gap, v, 1))
                }
                None => Some((ts, ts + gap, v, 1)),
            };
        }
        if let Some((s, e, sum, n)) = cur {
            out.push((k, s, e, sum, n));
        }
    }
    out.sort_unstable();
    out
}

/// Session windows merge under random disorder into the sessions a plain computation
/// finds, at parallelism 1 and 2.
#[test]
fn session_windows_equal_a_plain_computation_under_disorder() {
    for seed in [3u64, 11] {
        // Sparse keys so that sessions open and close: 7 keys, ~20 ns between records.
        let input = disordered(seed, 2_000, 100);
        for gap in [60u64, 300] {
            for p in [1usize, 2] {
                let env = StreamExecutionEnvironment::new("sessions");
                let out = Arc::new(Mutex::new(Vec::new()));
                env.from_collection(input.clone())
                    .assign_timestamps_and_watermarks(
                        WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(100))
                            .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
                    )
                    .key_by(|r: &(u32, u64, u64)| r.0)
                    .window(WindowAssigner::event_time_session(Duration::from_nanos(gap)).unwrap())
                    .aggregate_with(SumCount, |k: &u32, w: &Window, (sum, n)| {
                        Some((*k, w.start, w.end, sum, n))
                    })
                    .collect(out.clone());
                let r = run(&env, Some(p), 2);
                assert_eq!(r.status, JobStatus::Finished);
                let mut got = out.lock().unwrap().clone();
                got.sort_unstable();
                assert_eq!(
                    got,
                    sessions_reference(&input, gap),
                    "seed {seed}, gap {gap}, p={p}"
                );
            }
        }
    }
}

/// `process` sees all of a window's records at once.
#[test]
fn process_window_functions_see_every_record_of_their_window() {
    let input = disordered(5, 1_000, 50);
    let env = StreamExecutionEnvironment::new("process");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection(input.clone())
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(50))
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(400)).unwrap())
        .process(
            |k: &u32,
             w: &Window,
             all: Vec<(u32, u64, u64)>,
             out: &mut Vec<(u32, u64, u64, u64)>| {
                // Two records per window: its sum and its count, from the full list.
                out.push((*k, w.start, 0, all.iter().map(|r| r.2).sum()));
                out.push((*k, w.start, 1, all.len() as u64));
            },
        )
        .collect(out.clone());
    let r = run(&env, Some(2), 2);
    assert_eq!(r.status, JobStatus::Finished);
    let mut got = out.lock().unwrap().clone();
    got.sort_unstable();
    let mut want = Vec::new();
    for (k, s, sum, n) in windows_reference(&input, 400, 400) {
        want.push((k, s, 0, sum));
        want.push((k, s, 1, n));
    }
    want.sort_unstable();
    assert_eq!(got, want);
}

/// Count windows fire every n records of a key, in the key's order; a last, incomplete
/// window does not fire.
#[test]
fn count_windows_fire_every_n_records_of_a_key() {
    let input: Vec<(u32, u64, u64)> = (0..1_000u64).map(|i| ((i % 3) as u32, i, i)).collect();
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("count");
        let out = Arc::new(Mutex::new(Vec::new()));
        env.from_collection(input.clone())
            .key_by(|r: &(u32, u64, u64)| r.0)
            .count_window(10)
            .aggregate_with(SumCount, |k: &u32, (sum, n)| Some((*k, sum, n)))
            .collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        let mut want = Vec::new();
        for k in 0..3u32 {
            let vals: Vec<u64> = input.iter().filter(|r| r.0 == k).map(|r| r.2).collect();
            for chunk in vals.chunks_exact(10) {
                want.push((k, chunk.iter().sum::<u64>(), 10));
            }
        }
        want.sort_unstable();
        assert_eq!(got, want, "p={p}");
    }
}

#[derive(Clone)]
struct Describe;

impl CoProcessFunction for Describe {
    type In1 = u64;
    type In2 = String;
    type Out = String;
    fn process_element1(&mut self, v: u64, out: &mut Vec<String>) {
        out.push(format!("number {v}"));
    }
    fn process_element2(&mut self, v: String, out: &mut Vec<String>) {
        out.push(format!("word {v}"));
    }
}

#[test]
fn connected_streams_of_two_types_meet_in_one_operator() {
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("connect");
        let out = Arc::new(Mutex::new(Vec::new()));
        let numbers = env.from_collection((0..500u64).collect());
        let words = env.from_collection((0..300).map(|i| format!("w{i}")).collect());
        numbers
            .connect(&words)
            .process(Describe)
            .collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort();
        let mut want: Vec<String> = (0..500u64)
            .map(|v| format!("number {v}"))
            .chain((0..300).map(|i| format!("word w{i}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "p={p}");
    }
}

/// Sums both sides per key in state the two inputs share; emits when the end of time
/// fires the key's event-time timer.
#[derive(Clone)]
struct SumBoth;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Sums {
    first: ValueState<u64>,
    second: ValueState<u64>,
}

impl KeyedCoProcessFunction for SumBoth {
    type Key = u32;
    type In1 = (u32, u64);
    type In2 = (u32, u64, u64);
    type Out = (u32, u64, u64);
    type State = Sums;
    fn process_element1(
        &mut self,
        v: (u32, u64),
        st: &mut Sums,
        ctx: &mut Context<'_, u32, Self::Out>,
    ) {
        *st.first.get_or_insert_with(|| 0) += v.1;
        ctx.register_event_time_timer(u64::MAX - 1);
    }
    fn process_element2(
        &mut self,
        v: (u32, u64, u64),
        st: &mut Sums,
        ctx: &mut Context<'_, u32, Self::Out>,
    ) {
        *st.second.get_or_insert_with(|| 0) += v.2;
        ctx.register_event_time_timer(u64::MAX - 1);
    }
    fn on_timer(&mut self, _: u64, st: &mut Sums, ctx: &mut Context<'_, u32, Self::Out>) {
        let k = *ctx.current_key();
        let (a, b) = (st.first.value().copied(), st.second.value().copied());
        ctx.collect((k, a.unwrap_or(0), b.unwrap_or(0)));
    }
}

/// Keyed connected streams: both sides of a key meet in one subtask and share its state
/// (through two key exchanges at parallelism 2); the combined end-of-time watermark
/// fires the timers.
#[test]
fn keyed_connected_streams_share_state_per_key() {
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("keyed connect");
        let out = Arc::new(Mutex::new(Vec::new()));
        let first: Vec<(u32, u64)> = (0..2_000u64).map(|i| ((i % 13) as u32, i)).collect();
        let second: Vec<(u32, u64, u64)> =
            (0..1_000u64).map(|i| ((i % 17) as u32, 0, 2 * i)).collect();
        env.from_collection(first.clone())
            .connect(&env.from_collection(second.clone()))
            .key_by(|a: &(u32, u64)| a.0, |b: &(u32, u64, u64)| b.0)
            .process(SumBoth)
            .collect(out.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        let mut want: std::collections::BTreeMap<u32, (u64, u64)> = Default::default();
        for (k, v) in &first {
            want.entry(*k).or_default().0 += v;
        }
        for (k, _, v) in &second {
            want.entry(*k).or_default().1 += v;
        }
        let want: Vec<(u32, u64, u64)> = want.into_iter().map(|(k, (a, b))| (k, a, b)).collect();
        assert_eq!(got, want, "p={p}");
    }
}

/// BATCH mode: no watermark until the end of input, so windows fire at the end and no
/// record is late; results otherwise equal STREAMING's.
#[test]
fn batch_mode_gives_streamings_results_without_late_records() {
    let input = disordered(21, 3_000, 200);
    let mut results = Vec::new();
    for mode in [RuntimeMode::Streaming, RuntimeMode::Batch] {
        let env = StreamExecutionEnvironment::new("modes");
        env.set_runtime_mode(mode);
        let out = Arc::new(Mutex::new(Vec::new()));
        env.from_collection(input.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(200))
                    .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
            )
            .key_by(|r: &(u32, u64, u64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(500)).unwrap())
            .aggregate_with(SumCount, |k: &u32, w: &Window, (sum, n)| {
                Some((*k, w.start, sum, n))
            })
            .collect(out.clone());
        let r = run(&env, Some(2), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        results.push(got);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[1], windows_reference(&input, 500, 500));

    // A record far behind the watermark: late in STREAMING, not in BATCH.
    let mut late: Vec<(u32, u64, u64)> = (0..299).map(|i| (1, 1_000 + i * 10, 1)).collect();
    late.push((1, 1_005, 1_000));
    let mut sums = Vec::new();
    for mode in [RuntimeMode::Streaming, RuntimeMode::Batch] {
        let env = StreamExecutionEnvironment::new("late");
        env.set_runtime_mode(mode);
        let out = Arc::new(Mutex::new(Vec::new()));
        env.from_collection(late.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
            )
            .key_by(|r: &(u32, u64, u64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap())
            .aggregate(SumCount)
            .collect(out.clone());
        assert_eq!(run(&env, None, 1).status, JobStatus::Finished);
        sums.push(out.lock().unwrap().iter().map(|r| r.0).sum::<u64>());
    }
    assert_eq!(sums, [299, 1_299]);
}

#[test]
fn an_unbounded_source_in_batch_mode_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("unbounded");
    env.set_runtime_mode(RuntimeMode::Batch);
    env.trades(1, None, Pace::Unpaced).discard();
    let e = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(e.to_string().contains("unbounded"), "{e}");
    // Bounded, it runs.
    let env = StreamExecutionEnvironment::new("bounded");
    env.set_runtime_mode(RuntimeMode::Batch);
    env.trades(1, Some(1_000), Pace::Unpaced).discard();
    assert_eq!(run(&env, None, 1).status, JobStatus::Finished);
}

/// The interval join pairs exactly the records of a key whose event times lie within
/// the bounds, under disorder on both sides, at parallelism 1 and 2.
#[test]
fn interval_joins_pair_exactly_the_records_within_the_bounds() {
    let left = disordered(31, 1_500, 100);
    let right = disordered(47, 1_500, 100);
    let (lower, upper) = (-50i64, 120i64);
    let mut want = Vec::new();
    for a in &left {
        for b in &right {
            let d = b.1 as i64 - a.1 as i64;
            if a.0 == b.0 && (lower..=upper).contains(&d) {
                want.push((a.2, b.2));
            }
        }
    }
    want.sort_unstable();
    assert!(want.len() > 100, "{} pairs", want.len());
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("interval join");
        let out = Arc::new(Mutex::new(Vec::new()));
        let strategy = || {
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(100))
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1)
        };
        let l = env
            .from_collection(left.clone())
            .assign_timestamps_and_watermarks(strategy())
            .key_by(|r: &(u32, u64, u64)| r.0);
        let r = env
            .from_collection(right.clone())
            .assign_timestamps_and_watermarks(strategy())
            .key_by(|r: &(u32, u64, u64)| r.0);
        l.interval_join(&r)
            .between(lower, upper)
            .process(
                |a: &(u32, u64, u64), b: &(u32, u64, u64), out: &mut Vec<(u64, u64)>| {
                    out.push((a.2, b.2))
                },
            )
            .collect(out.clone());
        let res = run(&env, Some(p), 2);
        assert_eq!(res.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, want, "p={p}");
    }
}

#[test]
fn an_interval_join_without_timestamps_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("no timestamps");
    let l = env
        .from_collection(vec![(1u32, 1u64, 1u64)])
        .key_by(|r: &(u32, u64, u64)| r.0);
    let r = env
        .from_collection(vec![(1u32, 1u64, 1u64)])
        .key_by(|r: &(u32, u64, u64)| r.0);
    l.interval_join(&r)
        .between(0, 10)
        .process(|_: &(u32, u64, u64), _: &(u32, u64, u64), _: &mut Vec<u64>| {})
        .discard();
    let e = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(e.to_string().contains("timestamps"), "{e}");
}

/// Late records go to the side output the job asked for, never silently dropped: every
/// record is either in a fired window or in the late stream, at parallelism 1 and 2.
#[test]
fn late_records_go_to_the_side_output() {
    // In order but for a few records far behind, each in a later batch than the
    // watermark that passed them.
    let mut input: Vec<(u32, u64, u64)> = (0..2_000u64)
        .map(|i| ((i % 5) as u32, 1_000 + i * 10, 1))
        .collect();
    for (at, ts) in [(600usize, 1_200u64), (1_300, 2_000), (1_900, 5_000)] {
        input.insert(at, (1, ts, 1_000));
    }
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("late");
        let out = Arc::new(Mutex::new(Vec::new()));
        let late = Arc::new(Mutex::new(Vec::new()));
        let tag = OutputTag::<(u32, u64, u64)>::new("late");
        let windows = env
            .from_collection(input.clone())
            .assign_timestamps_and_watermarks(
                WatermarkStrategy::for_monotonous_timestamps()
                    .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
            )
            .key_by(|r: &(u32, u64, u64)| r.0)
            .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(100)).unwrap())
            .side_output_late_data(&tag)
            .aggregate(SumCount);
        windows.collect(out.clone());
        windows.get_side_output(&tag).collect(late.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let late = late.lock().unwrap().clone();
        assert!(!late.is_empty(), "p={p}: the far-behind records are late");
        assert!(
            late.iter().all(|r| r.2 == 1_000),
            "p={p}: only they: {late:?}"
        );
        let in_windows: u64 = out.lock().unwrap().iter().map(|w| w.1).sum();
        assert_eq!(
            in_windows + late.len() as u64,
            input.len() as u64,
            "p={p}: every record in a window or in the late stream"
        );
    }
}

#[derive(Clone)]
struct SplitBig {
    big: OutputTag<String>,
}

impl KeyedProcessFunction for SplitBig {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ValueState<u64>;
    fn process_element(
        &mut self,
        v: u64,
        seen: &mut ValueState<u64>,
        ctx: &mut Context<'_, u64, u64>,
    ) {
        *seen.get_or_insert_with(|| 0) += 1;
        if v >= 900 {
            ctx.output(&self.big, format!("big {v}"));
        } else {
            ctx.collect(v);
        }
    }
}

#[derive(Clone)]
struct EvenOdd {
    odd: OutputTag<(u64, bool)>,
}

impl ProcessFunction for EvenOdd {
    type In = u64;
    type Out = u64;
    fn process_element(&mut self, v: u64, ctx: &mut ProcessContext<'_, u64>) {
        if v & 1 == 0 {
            ctx.collect(v);
        } else {
            ctx.output(&self.odd, (v, true));
        }
    }
}

/// Process functions send records of another type to side outputs with `ctx.output`
/// (Flink's `OutputTag`); each record goes exactly once to the main output or to its
/// side output, keyed across two slots and not keyed.
#[test]
fn process_functions_send_records_to_side_outputs() {
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("side outputs");
        let big = OutputTag::<String>::new("big");
        let odd = OutputTag::<(u64, bool)>::new("odd");
        let (main, bigs, odds) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        let keyed = env
            .from_collection((0..1_000u64).collect())
            .key_by(|v: &u64| v % 10)
            .process(SplitBig { big: big.clone() });
        keyed.get_side_output(&big).collect(bigs.clone());
        let split = keyed.process(EvenOdd { odd: odd.clone() });
        split.collect(main.clone());
        split.get_side_output(&odd).collect(odds.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished, "{:?}", r.status);
        let mut bigs = bigs.lock().unwrap().clone();
        bigs.sort_unstable();
        let mut want: Vec<String> = (900..1_000).map(|v| format!("big {v}")).collect();
        want.sort_unstable();
        assert_eq!(bigs, want, "p={p}");
        let mut main = main.lock().unwrap().clone();
        main.sort_unstable();
        assert_eq!(main, (0..900).step_by(2).collect::<Vec<u64>>());
        let mut odds = odds.lock().unwrap().clone();
        odds.sort_unstable();
        assert_eq!(
            odds,
            (1..900).step_by(2).map(|v| (v, true)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn one_tag_read_with_two_types_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("two types");
    let s = env.from_collection(vec![1u64]).process(EvenOdd {
        odd: OutputTag::new("odd"),
    });
    s.get_side_output(&OutputTag::<(u64, bool)>::new("odd"))
        .discard();
    s.get_side_output(&OutputTag::<String>::new("odd"))
        .discard();
    let err = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(matches!(err, GraphError::Declaration(_)), "{err}");
}

/// Main records wait in keyed state until a broadcast rule admits their key; then
/// they go out, and later ones of that key pass at once.
#[derive(Clone)]
struct Admit;

impl KeyedBroadcastProcessFunction for Admit {
    type Key = u64;
    type In = u64;
    type Broadcast = u64;
    type Out = u64;
    type State = Vec<u64>;
    type BroadcastState = std::collections::BTreeSet<u64>;
    fn process_element(
        &mut self,
        v: u64,
        waiting: &mut Vec<u64>,
        admitted: &Self::BroadcastState,
        ctx: &mut Context<'_, u64, u64>,
    ) {
        if admitted.contains(ctx.current_key()) {
            ctx.collect(v);
        } else {
            waiting.push(v);
        }
    }
    fn process_broadcast_element(
        &mut self,
        key: u64,
        admitted: &mut Self::BroadcastState,
        ctx: &mut BroadcastContext<'_, u64, Vec<u64>, u64>,
    ) {
        admitted.insert(key);
        let mut out = Vec::new();
        ctx.apply_to_keyed_state(|k, waiting| {
            if *k == key {
                out.append(waiting);
            }
        });
        for v in out {
            ctx.collect(v);
        }
    }
}

/// The same without keys: the function holds what waits.
#[derive(Clone)]
struct AdmitAll {
    waiting: Vec<u64>,
}

impl BroadcastProcessFunction for AdmitAll {
    type In = u64;
    type Broadcast = u64;
    type Out = u64;
    type State = std::collections::BTreeSet<u64>;
    fn process_element(
        &mut self,
        v: u64,
        admitted: &Self::State,
        ctx: &mut ProcessContext<'_, u64>,
    ) {
        if admitted.contains(&(v % 10)) {
            ctx.collect(v);
        } else {
            self.waiting.push(v);
        }
    }
    fn process_broadcast_element(
        &mut self,
        key: u64,
        admitted: &mut Self::State,
        ctx: &mut ProcessContext<'_, u64>,
    ) {
        admitted.insert(key);
        let (now, later): (Vec<u64>, Vec<u64>) = self
            .waiting
            .drain(..)
            .partition(|v| admitted.contains(&(v % 10)));
        self.waiting = later;
        for v in now {
            ctx.collect(v);
        }
    }
}

/// Broadcast state: every subtask of the operator (two slots) sees every broadcast
/// record, so each admits exactly the main records of the admitted keys, once, in
/// whichever order the two inputs arrive — keyed and not.
#[test]
fn broadcast_state_reaches_every_subtask() {
    let want: Vec<u64> = (0..2_000u64)
        .filter(|v| [1, 4, 7].contains(&(v % 10)))
        .collect();
    for keyed in [true, false] {
        let env = StreamExecutionEnvironment::new("broadcast");
        let out = Arc::new(Mutex::new(Vec::new()));
        let rules = env.from_collection(vec![1u64, 4, 7]).set_parallelism(1);
        let main = env.from_collection((0..2_000u64).collect());
        let admitted = if keyed {
            main.key_by(|v: &u64| v % 10)
                .connect_broadcast(&rules)
                .process(Admit)
        } else {
            main.rebalance()
                .connect_broadcast(&rules)
                .process(AdmitAll {
                    waiting: Vec::new(),
                })
        };
        admitted.collect(out.clone());
        let r = run(&env, Some(2), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, want, "keyed: {keyed}");
    }
}

/// Window joins pair exactly the records of equal keys in one window, and co-groups
/// see each key's records of both streams per window (one side possibly empty), under
/// disorder within the watermark bound, at parallelism 1 and 2.
#[test]
fn window_joins_and_co_groups_equal_a_plain_computation() {
    let size = 400u64;
    let a = disordered(3, 1_500, 100);
    let b: Vec<(u32, u64, u64)> = disordered(9, 700, 100)
        .into_iter()
        .map(|(k, t, v)| (k, t, v + 10_000))
        .collect();
    let mut pairs = Vec::new();
    for x in &a {
        for y in &b {
            if x.0 == y.0 && x.1 / size == y.1 / size {
                pairs.push((x.2, y.2));
            }
        }
    }
    pairs.sort_unstable();
    let mut groups: std::collections::BTreeMap<(u32, u64), (usize, usize)> = Default::default();
    for x in &a {
        groups.entry((x.0, x.1 / size * size)).or_default().0 += 1;
    }
    for y in &b {
        groups.entry((y.0, y.1 / size * size)).or_default().1 += 1;
    }
    let groups: Vec<(u32, u64, usize, usize)> = groups
        .into_iter()
        .map(|((k, w), (x, y))| (k, w, x, y))
        .collect();
    for p in [1usize, 2] {
        let env = StreamExecutionEnvironment::new("joins");
        let strategy = || {
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_nanos(100))
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1)
        };
        let sa = env
            .from_collection(a.clone())
            .assign_timestamps_and_watermarks(strategy());
        let sb = env
            .from_collection(b.clone())
            .assign_timestamps_and_watermarks(strategy());
        let window = WindowAssigner::tumbling_event_time(Duration::from_nanos(size)).unwrap();
        let (joined, grouped) = (
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(Mutex::new(Vec::new())),
        );
        sa.join(&sb)
            .where_(|r: &(u32, u64, u64)| r.0)
            .equal_to(|r: &(u32, u64, u64)| r.0)
            .window(window)
            .apply(|x: &(u32, u64, u64), y: &(u32, u64, u64)| (x.2, y.2))
            .collect(joined.clone());
        sa.co_group(&sb)
            .where_(|r: &(u32, u64, u64)| r.0)
            .equal_to(|r: &(u32, u64, u64)| r.0)
            .window(window)
            .apply_co_group(
                |k: &u32,
                 w: &Window,
                 xs: &[(u32, u64, u64)],
                 ys: &[(u32, u64, u64)],
                 out: &mut Vec<(u32, u64, usize, usize)>| {
                    out.push((*k, w.start, xs.len(), ys.len()))
                },
            )
            .collect(grouped.clone());
        let r = run(&env, Some(p), 2);
        assert_eq!(r.status, JobStatus::Finished);
        let mut got = joined.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got.len(), pairs.len(), "p={p}");
        assert_eq!(got, pairs, "p={p}");
        let mut got = grouped.lock().unwrap().clone();
        got.sort_unstable();
        assert_eq!(got, groups, "p={p}");
    }
}

#[test]
fn a_side_output_no_operator_declares_is_an_error_when_the_job_is_built() {
    let env = StreamExecutionEnvironment::new("no side output");
    let s = env.from_collection(vec![1u64, 2, 3]).map(|x: u64| x + 1);
    s.discard();
    s.get_side_output(&OutputTag::<u64>::new("nothing"))
        .discard();
    let e = JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err();
    assert!(e.to_string().contains("no side output 'nothing'"), "{e}");
}

#[test]
fn wordcount_equals_a_straightforward_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.txt");
    let mut text = String::new();
    for i in 0..2000 {
        text.push_str(&format!(
            "The quick brown fox {} jumps over the lazy dog, number {}!\n",
            i % 7,
            i % 13
        ));
    }
    std::fs::write(&path, &text).unwrap();
    for p in [1, 2] {
        let env = StreamExecutionEnvironment::new("wordcount");
        let out = Arc::new(Mutex::new(Vec::new()));
        jobs::wordcount(&env, &path, Some(out.clone()));
        assert_eq!(run(&env, Some(p), 2).status, JobStatus::Finished);
        let mut last: HashMap<String, u64> = HashMap::new();
        for (w, c) in out.lock().unwrap().iter() {
            let e = last.entry(w.clone()).or_default();
            assert!(*c == *e + 1, "rolling count of {w} went {e} -> {c}");
            *e = *c;
        }
        let want: HashMap<String, u64> = jobs::wordcount_reference(&text);
        assert_eq!(last, want);
    }
}

#[test]
fn unions_and_every_partitioning_deliver_each_record_exactly_once() {
    let n = 20_000u64;
    let kinds = ["forward", "rebalance", "shuffle", "hash", "broadcast"];
    for kind in kinds {
        let env = StreamExecutionEnvironment::new(kind);
        let a = env.from_collection((0..n).collect::<Vec<u64>>());
        let b = env.from_collection((n..2 * n).collect::<Vec<u64>>());
        let u = a.union(&[b]).map(|x| x).set_parallelism(1);
        let s = match kind {
            "forward" => u.forward().map(|x| x),
            "rebalance" => u.rebalance().map(|x| x).set_parallelism(2),
            "shuffle" => u.shuffle().map(|x| x).set_parallelism(2),
            "broadcast" => u.broadcast().map(|x| x).set_parallelism(2),
            _ => u.key_by(|x: &u64| *x).reduce(|_, b| b).set_parallelism(2),
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        s.collect(out.clone());
        assert_eq!(run(&env, None, 2).status, JobStatus::Finished, "{kind}");
        let mut got = out.lock().unwrap().clone();
        got.sort_unstable();
        let copies = if kind == "broadcast" { 2 } else { 1 };
        let want: Vec<u64> = (0..2 * n)
            .flat_map(|x| std::iter::repeat_n(x, copies))
            .collect();
        assert_eq!(got, want, "{kind}");
    }
}

#[test]
fn parallelism_precedence_at_four_levels() {
    let graph = |env_p: Option<usize>, op_p: Option<usize>, client: Option<usize>| {
        let env = StreamExecutionEnvironment::new("p");
        if let Some(p) = env_p {
            env.set_parallelism(p);
        }
        let s = env.trades(1, Some(10), Pace::Unpaced).map(|t| t.qty);
        let s = match op_p {
            Some(p) => s.set_parallelism(p),
            None => s,
        };
        s.discard();
        JobGraph::build(env.stream_graph(), client, 5, true).unwrap()
    };
    let par = |g: &JobGraph, name: &str| {
        g.vertices
            .iter()
            .find(|v| v.name.contains(name))
            .unwrap()
            .parallelism
    };
    let g = graph(None, None, None);
    assert_eq!(par(&g, "Map"), 5, "system default");
    let g = graph(None, None, Some(4));
    assert_eq!(par(&g, "Map"), 4, "client beats system");
    let g = graph(Some(3), None, Some(4));
    assert_eq!(par(&g, "Map"), 3, "environment beats client");
    let g = graph(Some(3), Some(2), Some(4));
    assert_eq!(par(&g, "Map"), 2, "operator beats environment");
    assert_eq!(par(&g, "Trade Source"), 3);
}

#[test]
fn chaining_controls_shape_the_job_graph() {
    let build = |f: &dyn Fn(&StreamExecutionEnvironment)| {
        let env = StreamExecutionEnvironment::new("c");
        f(&env);
        JobGraph::build(env.stream_graph(), Some(1), 1, true).unwrap()
    };
    let names = |g: &JobGraph| {
        g.vertices
            .iter()
            .map(|v| v.name.clone())
            .collect::<Vec<_>>()
    };
    let g = build(&|env| {
        env.from_collection(vec![1u64])
            .map(|x| x)
            .filter(|_| true)
            .discard();
    });
    assert_eq!(
        names(&g),
        ["Collection Source -> Map -> Filter -> Discarding Sink"]
    );
    let g = build(&|env| {
        env.from_collection(vec![1u64])
            .map(|x| x)
            .start_new_chain()
            .filter(|_| true)
            .discard();
    });
    assert_eq!(
        names(&g),
        ["Collection Source", "Map -> Filter -> Discarding Sink"]
    );
    let g = build(&|env| {
        env.from_collection(vec![1u64])
            .map(|x| x)
            .disable_chaining()
            .filter(|_| true)
            .discard();
    });
    assert_eq!(
        names(&g),
        ["Collection Source", "Map", "Filter -> Discarding Sink"]
    );
    let g = build(&|env| {
        env.disable_operator_chaining();
        env.from_collection(vec![1u64]).map(|x| x).discard();
    });
    assert_eq!(g.vertices.len(), 3);
    let g = build(&|env| {
        env.from_collection(vec![1u64])
            .map(|x| x)
            .slot_sharing_group("other")
            .discard();
    });
    assert_eq!(names(&g), ["Collection Source", "Map -> Discarding Sink"]);
    assert_eq!(g.slots_needed(), 2);
    // A union of inputs from two groups goes to "default", not to its first input's.
    let g = build(&|env| {
        let a = env.from_collection(vec![1u64]).slot_sharing_group("a");
        let b = env.from_collection(vec![2u64]).slot_sharing_group("b");
        a.union(&[b]).discard();
    });
    let union = g
        .vertices
        .iter()
        .find(|v| v.name.starts_with("Union"))
        .unwrap();
    assert_eq!(union.slot_sharing_group, "default");
    // Explicit forward across different parallelism is refused.
    let env = StreamExecutionEnvironment::new("bad");
    env.from_collection(vec![1u64])
        .forward()
        .map(|x| x)
        .set_parallelism(2)
        .discard();
    assert!(matches!(
        JobGraph::build(env.stream_graph(), None, 1, true),
        Err(GraphError::ForwardParallelism { .. })
    ));
    let env = StreamExecutionEnvironment::new("nosink");
    env.from_collection(vec![1u64]).map(|x| x);
    assert_eq!(
        JobGraph::build(env.stream_graph(), None, 1, true).unwrap_err(),
        GraphError::NoSink
    );
}

#[test]
fn a_failing_operator_fails_the_job_with_its_message() {
    let env = StreamExecutionEnvironment::new("fails");
    env.from_collection((0..1000u64).collect::<Vec<_>>())
        .map(|x| {
            if x == 500 {
                panic!("bad record {x}")
            } else {
                x
            }
        })
        .name("Fragile Map")
        .set_parallelism(1)
        .rebalance()
        .map(|x| x)
        .set_parallelism(2)
        .discard();
    let r = run(&env, None, 2);
    match r.status {
        JobStatus::Failed(m) => {
            assert!(m.contains("Fragile Map"), "{m}");
            assert!(m.contains("bad record 500"), "{m}");
        }
        s => panic!("{s:?}"),
    }
}

#[test]
fn unbounded_jobs_stop_on_cancel() {
    let env = StreamExecutionEnvironment::new("forever");
    env.trades(3, None, Pace::Rate(100_000.0)).discard();
    let graph = JobGraph::build(env.stream_graph(), Some(1), 1, true).unwrap();
    let mut mc = MiniCluster::start(&config(1)).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let r = mc
        .execute(&graph, &cancel, Duration::from_secs(60), &mut |_| {})
        .unwrap();
    t.join().unwrap();
    assert_eq!(r.status, JobStatus::Canceled);
    assert!(r.progress.records > 1000, "{}", r.progress.records);
}

#[test]
fn socket_source_and_socket_sink_carry_lines() {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    // The source's server: sends lines, then closes.
    let src = TcpListener::bind("127.0.0.1:0").unwrap();
    let src_addr = src.local_addr().unwrap().to_string();
    let feeder = std::thread::spawn(move || {
        let (mut s, _) = src.accept().unwrap();
        for i in 0..500 {
            writeln!(s, "line {i}").unwrap();
        }
        write!(s, "last without newline").unwrap();
    });
    // The sink's server: collects lines until the sink closes.
    let dst = TcpListener::bind("127.0.0.1:0").unwrap();
    let dst_addr = dst.local_addr().unwrap().to_string();
    let collector = std::thread::spawn(move || {
        let (s, _) = dst.accept().unwrap();
        BufReader::new(s)
            .lines()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let env = StreamExecutionEnvironment::new("sockets");
    env.socket_text_stream(&src_addr)
        .map(|l: String| l.to_uppercase())
        .write_to_socket(&dst_addr);
    assert_eq!(run(&env, Some(1), 1).status, JobStatus::Finished);
    feeder.join().unwrap();
    let got = collector.join().unwrap();
    assert_eq!(got.len(), 501);
    assert_eq!(got[0], "\"LINE 0\"");
    assert_eq!(got[500], "\"LAST WITHOUT NEWLINE\"");
}

#[test]
fn a_sink_that_cannot_connect_fails_the_job_with_the_reason() {
    let env = StreamExecutionEnvironment::new("nosink");
    env.from_collection(vec![1u64])
        .write_to_socket("127.0.0.1:1");
    match run(&env, Some(1), 1).status {
        JobStatus::Failed(m) => assert!(m.contains("cannot connect to 127.0.0.1:1"), "{m}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn file_sink_writes_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    let env = StreamExecutionEnvironment::new("file");
    env.from_collection((0..1000u64).collect::<Vec<_>>())
        .write_as_text(&path);
    assert_eq!(run(&env, Some(1), 1).status, JobStatus::Finished);
    let text = std::fs::read_to_string(&path).unwrap();
    let got: Vec<u64> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

fn run_with(env: &StreamExecutionEnvironment, config: &Config) -> JobResult {
    let graph = JobGraph::build(env.stream_graph(), Some(1), 1, true).unwrap();
    let mut mc = MiniCluster::start(config).unwrap();
    mc.execute(
        &graph,
        &AtomicBool::new(false),
        Duration::from_secs(60),
        &mut |_| {},
    )
    .unwrap()
}

/// A job whose map fails on record 500 the first `fail_times` times it sees it.
fn flaky_job(fail_times: u32) -> (StreamExecutionEnvironment, Arc<Mutex<Vec<u64>>>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    let failures = Arc::new(AtomicU32::new(0));
    let env = StreamExecutionEnvironment::new("flaky");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection((0..1000u64).collect::<Vec<_>>())
        .map(move |x| {
            if x == 500 && failures.fetch_add(1, Ordering::Relaxed) < fail_times {
                panic!("transient failure at {x}");
            }
            x
        })
        .name("Flaky Map")
        .rebalance()
        .map(|x| x)
        .set_parallelism(2)
        .collect(out.clone());
    (env, out)
}

#[test]
fn fixed_delay_restarts_a_failed_job_which_then_completes_once() {
    use spate::config::RestartStrategyType;
    let (env, out) = flaky_job(1);
    let cfg = Config {
        restart_strategy: RestartStrategyType::FixedDelay,
        restart_attempts: 1,
        restart_delay: Duration::from_millis(20),
        ..config(2)
    };
    let r = run_with(&env, &cfg);
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    assert_eq!(r.restarts, 1);
    assert!(
        r.exceptions[0].contains("transient failure at 500"),
        "{:?}",
        r.exceptions
    );
    // The failed attempt's collect sinks were cancelled before their end of input; the
    // replay from the start delivers every record once.
    let mut got = out.lock().unwrap().clone();
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_job_that_exhausts_its_restart_strategy_fails_with_every_exception() {
    use spate::config::RestartStrategyType;
    let (env, _) = flaky_job(u32::MAX);
    let cfg = Config {
        restart_strategy: RestartStrategyType::FixedDelay,
        restart_attempts: 2,
        restart_delay: Duration::from_millis(5),
        ..config(2)
    };
    let r = run_with(&env, &cfg);
    assert!(matches!(r.status, JobStatus::Failed(_)));
    assert_eq!(r.restarts, 2);
    assert_eq!(r.exceptions.len(), 3);
    let (env, _) = flaky_job(u32::MAX);
    let r = run_with(&env, &config(2));
    assert!(
        matches!(r.status, JobStatus::Failed(_)),
        "restart-strategy none"
    );
    assert_eq!((r.restarts, r.exceptions.len()), (0, 1));
}
