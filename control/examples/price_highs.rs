//! Application mode: a program that links spate, defines its own job with its own
//! functions, and runs as client, JobManager or TaskManager from the same binary.
//!
//! ```text
//! cargo run --release -p spate --example price_highs -- run price-highs --events 1000000
//! target/release/examples/price_highs jobmanager
//! target/release/examples/price_highs taskmanager
//! target/release/examples/price_highs run -m localhost:8081 -p 2 price-highs
//! ```
//!
//! The jobs:
//! - `price-highs`: W1's trades, keyed by symbol; a KeyedProcessFunction keeps each
//!   symbol's highest price in ValueState and emits `(symbol, price)` whenever it is
//!   beaten.
//! - `price-ranges`: event time: the trades' timestamps with watermarks 1 ms behind,
//!   keyed by symbol, a tumbling window of `--window` (default 10 ms) aggregating each
//!   symbol's lowest and highest price and its trade count, emitted as
//!   `(symbol, window start, low, high, trades)` when the watermark passes the window.
//! - `windows KIND INPUT`: windows of every kind over records read from a file (the
//!   cluster tests compare them with a plain computation).
//! - `stuck`: a map whose code stops returning after 1000 trades (a user's bug): the
//!   task cannot be cancelled, and `task.cancellation.timeout` makes its TaskManager
//!   exit.
//! - `rescalable-highs`: `price-highs` (trade source, keyed function and sink at the
//!   job's parallelism) whose savepoint resumes at another parallelism: keyed state is
//!   redistributed by key group, the source's splits go on in the new subtasks, and
//!   the sink's pending parts are committed by them. `--output DIR` writes through the
//!   exactly-once file sink.

use spate::api::{OutputTag, StreamExecutionEnvironment};
use spate::dataplane::operator::keyed::{Context, KeyedProcessFunction, ValueState};
use spate::dataplane::operator::source::{Pace, Trade};
use spate::dataplane::operator::watermark::WatermarkStrategy;
use spate::dataplane::operator::window::{AggregateFunction, Trigger, Window, WindowAssigner};
use spate::dataplane::operator::Collector;
use spate::jobs::JobSpec;
use std::time::Duration;

/// A window's lowest and highest price and its trade count.
#[derive(Clone)]
struct Range;

impl AggregateFunction for Range {
    type In = Trade;
    type Acc = (i64, i64, u64);
    type Out = (i64, i64, u64);
    fn create_accumulator(&self) -> Self::Acc {
        (i64::MAX, i64::MIN, 0)
    }
    fn add(&self, t: &Trade, acc: &mut Self::Acc) {
        acc.0 = acc.0.min(t.price);
        acc.1 = acc.1.max(t.price);
        acc.2 += 1;
    }
    fn get_result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc {
        (a.0.min(b.0), a.1.max(b.1), a.2 + b.2)
    }
}

fn price_ranges(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let size = match &spec.window {
        Some(w) => spate::config::parse_duration(w)
            .ok_or_else(|| format!("--window must be a duration such as '10 ms', not {w:?}"))?,
        None => Duration::from_millis(10),
    };
    let window = WindowAssigner::tumbling_event_time(size).map_err(|e| e.to_string())?;
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    let ranges = env
        .trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(1))
                .with_timestamp_assigner(|t: &Trade| t.ts_ns),
        )
        .key_by(|t: &Trade| t.symbol)
        .window(window)
        .aggregate_with(Range, |symbol: &u32, w: &Window, (lo, hi, n)| {
            Some((*symbol, w.start, lo, hi, n))
        })
        .name("Price Ranges");
    match &spec.output {
        Some(path) => ranges.write_as_text(path),
        None => ranges.print(),
    };
    Ok(())
}

#[derive(Clone)]
struct NewHighs;

impl KeyedProcessFunction for NewHighs {
    type Key = u32;
    type In = Trade;
    type Out = (u32, i64);
    type State = ValueState<i64>;

    fn process_element(
        &mut self,
        t: Trade,
        high: &mut ValueState<i64>,
        ctx: &mut Context<'_, u32, (u32, i64)>,
    ) {
        if high.value().is_none_or(|h| t.price > *h) {
            high.update(t.price);
            ctx.collect((t.symbol, t.price));
        }
    }
}

fn price_highs(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    if !spec.args.is_empty() {
        return Err("price-highs takes no arguments".into());
    }
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    let highs = env
        .trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .key_by(|t: &Trade| t.symbol)
        .process(NewHighs)
        .name("New Highs");
    match &spec.output {
        Some(path) => highs.write_as_text(path),
        None => highs.print(),
    };
    Ok(())
}

fn rescalable_highs(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    if !spec.args.is_empty() {
        return Err("rescalable-highs takes no arguments".into());
    }
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    let highs = env
        .trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .key_by(|t: &Trade| t.symbol)
        .process(NewHighs)
        .name("New Highs");
    match &spec.output {
        Some(dir) => highs.sink_to_files(dir),
        None => highs.print(),
    };
    Ok(())
}

fn stuck(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let mut seen = 0u64;
    env.trades(spec.seed, None, Pace::Rate(10_000.0))
        .map(move |t: Trade| {
            seen += 1;
            if seen > 1000 {
                // A bug: this never returns (and never looks at cancellation).
                loop {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            t
        })
        .discard();
    Ok(())
}

/// How long the slow builders think: `--window`, 2 s without it.
fn think_time(spec: &JobSpec) -> Result<Duration, String> {
    let (_, window) = spec.bars_times()?;
    Ok(if spec.window.is_some() {
        Duration::from_nanos(window)
    } else {
        Duration::from_secs(2)
    })
}

/// A builder that thinks for `--window` (default 2 s) and then refuses: a job whose
/// declaration is slow must not stall the JobManager (it builds jobs off its event loop).
fn slow_refusal(_env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let think = think_time(spec)?;
    std::thread::sleep(think);
    Err(format!("slow-refusal thought for {think:?} and refuses"))
}

/// A builder that thinks for `--window` (default 2 s) before it declares
/// `big-trades`: TaskManagers build deployments off their control thread, so their
/// heartbeats go on meanwhile.
fn slow_build(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    std::thread::sleep(think_time(spec)?);
    big_trades(env, spec)
}

/// Forward edges only: every parallel pipeline is its own region (for region failover).
fn big_trades(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    // The filter starts a chain of its own: each source subtask feeds its filter over a
    // forward ring, so every subtask pair is a pipelined region of its own.
    env.trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .filter(|t: &Trade| t.qty > 50)
        .start_new_chain()
        .discard();
    Ok(())
}

/// A window's Σvalue and record count.
#[derive(Clone)]
struct SumCount;

impl AggregateFunction for SumCount {
    type In = (u32, u64, u64);
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> Self::Acc {
        (0, 0)
    }
    fn add(&self, r: &(u32, u64, u64), acc: &mut Self::Acc) {
        acc.0 += r.2;
        acc.1 += 1;
    }
    fn get_result(&self, acc: &Self::Acc) -> Self::Out {
        *acc
    }
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// `windows KIND INPUT`: records `key event_time value` (one per line, event times in
/// ns, at most 200 ns out of order) from INPUT, keyed, in windows of KIND —
/// `tumbling` (500 ns), `sliding` (1000 ns every 250 ns), `session` (gap 60 ns),
/// `tumbling-process` (a process window function), `tumbling-count` (a purging count
/// trigger of 3) — each emitting `(key, start, end, Σvalue, count)`; late records go
/// to `OUTPUT-late`.
fn windows(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let [kind, input] = &spec.args[..] else {
        return Err("usage: windows KIND INPUT".into());
    };
    let ns = Duration::from_nanos;
    let assigner = match kind.as_str() {
        "tumbling" | "tumbling-process" | "tumbling-count" => {
            WindowAssigner::tumbling_event_time(ns(500))
        }
        "sliding" => WindowAssigner::sliding_event_time(ns(1_000), ns(250)),
        "session" => WindowAssigner::event_time_session(ns(60)),
        other => return Err(format!("unknown window kind {other:?}")),
    }
    .map_err(|e| e.to_string())?;
    let late = OutputTag::<(u32, u64, u64)>::new("late");
    let mut windowed = env
        .read_text_file(input)
        .flat_map(
            |line: String, out: &mut Collector<'_, '_, (u32, u64, u64)>| {
                let f: Vec<u64> = line
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect();
                if let [k, ts, v] = f[..] {
                    out.collect((k as u32, ts, v));
                }
            },
        )
        // One reader keeps the file's order, which a count trigger depends on.
        .set_parallelism(1)
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(ns(200))
                .with_timestamp_assigner(|r: &(u32, u64, u64)| r.1),
        )
        .set_parallelism(1)
        .key_by(|r: &(u32, u64, u64)| r.0)
        .window(assigner)
        .side_output_late_data(&late);
    if kind == "tumbling-count" {
        windowed = windowed.trigger(Trigger::count(3).map_err(|e| e.to_string())?.purging());
    }
    let results = if kind == "tumbling-process" {
        windowed.process(
            |k: &u32,
             w: &Window,
             rs: Vec<(u32, u64, u64)>,
             out: &mut Vec<(u32, u64, u64, u64, u64)>| {
                out.push((
                    *k,
                    w.start,
                    w.end,
                    rs.iter().map(|r| r.2).sum(),
                    rs.len() as u64,
                ))
            },
        )
    } else {
        windowed.aggregate_with(SumCount, |k: &u32, w: &Window, (sum, n)| {
            Some((*k, w.start, w.end, sum, n))
        })
    };
    let output = spec.output.as_deref().ok_or("windows needs --output")?;
    results.write_as_text(output);
    results
        .get_side_output(&late)
        .write_as_text(format!("{output}-late"));
    Ok(())
}

fn main() {
    spate::jobs::register("windows", windows);
    spate::jobs::register("price-highs", price_highs);
    spate::jobs::register("rescalable-highs", rescalable_highs);
    spate::jobs::register("stuck", stuck);
    spate::jobs::register("slow-refusal", slow_refusal);
    spate::jobs::register("slow-build", slow_build);
    spate::jobs::register("big-trades", big_trades);
    spate::jobs::register("price-ranges", price_ranges);
    spate::cli::main();
}
