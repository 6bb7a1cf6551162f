//! `bench vwap`: workload W1 on the embedded MiniCluster — throughput as fast as possible
//! at parallelism 1 and 2, latency at fixed offered rates (scheduled-time timestamps, so
//! a stall is charged to latency), the highest rate each parallelism sustains, and a
//! picture of the latency percentile distributions — beside the same workload on timely
//! dataflow ([`crate::timely_w1`]) at 1 and 2 workers on the same cores, and the ratios
//! between the two that the project targets.

use crate::clock::Clock;
use crate::report::histogram;
use crate::timely_w1;
use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use serde::Serialize;
use spate::api::StreamExecutionEnvironment;
use spate::config::Config;
use spate::graph::JobGraph;
use spate::jobs::{self, VwapParams};
use spate::minicluster::{JobResult, JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use spate_dataplane::operator::source::Pace;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The generator seed of every run, spate's and timely's.
pub(crate) const SEED: u64 = 42;
/// Unpaced runs measure the latency of one record in this many.
const UNPACED_SAMPLE: u32 = 16;

/// Sizes of the run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Trades per throughput run.
    pub events: u64,
    /// Throughput repetitions (interleaved p=1, p=2; the median is reported).
    pub reps: usize,
    /// Seconds of each fixed-rate run.
    pub seconds: f64,
    /// Cores of the two slots.
    pub cores: (usize, usize),
    /// Where to write the SVG plot.
    pub plot: Option<PathBuf>,
}

/// One result row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `vwap` or `bars`.
    pub workload: String,
    /// `spate` or `timely`.
    #[serde(rename = "impl")]
    pub impl_: String,
    /// 1 or 2 (slots for spate, workers for timely).
    pub parallelism: usize,
    /// `unpaced`, `rate`, or `max_sustained`.
    pub mode: String,
    /// Offered rate (paced rows).
    pub offered_per_s: Option<f64>,
    /// Achieved rate.
    pub events_per_s: f64,
    /// Latency percentiles, ns.
    pub p50_ns: u64,
    /// p99.
    pub p99_ns: u64,
    /// p99.9.
    pub p999_ns: u64,
    /// p99.99.
    pub p9999_ns: u64,
    /// max.
    pub max_ns: u64,
    /// Latency was measured for one record in this many.
    pub latency_sample: u32,
    /// W2: bars through the sinks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bars: Option<u64>,
    /// W2: bars whose firing latency was measured (those whose ready time had passed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bars_measured: Option<u64>,
    /// W2: mean firing latency, ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_ns: Option<f64>,
    /// W2 paced: the mean wait, in the offered schedule, from a window's ready time to
    /// the send time of the first trade whose event time reaches it, over the windows
    /// this run fired on its watermark (part of the firing latency), ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule_wait_ns: Option<f64>,
    /// Rows with checkpoints on: checkpoints completed in the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<u64>,
    /// The last checkpoint's duration, trigger to completion, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms: Option<u64>,
    /// The last checkpoint's size, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_bytes: Option<u64>,
    /// The last checkpoint's longest time on a slot (states encoded), ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_sync_ns: Option<u64>,
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

/// What one run measured.
pub(crate) struct Outcome {
    /// Events per second.
    pub eps: f64,
    /// Latencies, ns.
    pub latency: Histogram<u64>,
    /// Checkpoints of the run (when they were on).
    pub checkpoints: Option<spate::checkpoint::CheckpointStats>,
}

/// Checkpoints in the rows that have them on: every second, kept in memory (the
/// coordinator's thread writing files is not on the slots' cores' critical path either,
/// but a disk's speed would make rows incomparable between machines).
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Latency markers in the rows that have metrics on: every 10 ms (Flink's documentation
/// warns that markers cost throughput; a user who turns them on picks an interval about
/// this short to see hops at µs resolution).
const METRICS_INTERVAL: Duration = Duration::from_millis(10);

/// Runs the job declared on `env` on a MiniCluster as every spate run of these
/// benchmarks does (parallelism `p`, as many busy-spinning slots pinned to `cores`),
/// and requires it to finish.
pub(crate) fn execute(
    env: &StreamExecutionEnvironment,
    p: usize,
    cores: (usize, usize),
) -> Result<JobResult> {
    execute_with(env, p, cores, Extras::default())
}

/// What a run may have on beyond the plain job.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Extras {
    /// Checkpoints this often.
    pub checkpoint: Option<Duration>,
    /// Latency markers (and the per-operator timing of a sampled batch) this often
    /// (`metrics.latency.interval`; zero: off).
    pub latency_interval: Duration,
}

/// As [`execute`], with checkpoints and latency markers as `extras` say.
pub(crate) fn execute_with(
    env: &StreamExecutionEnvironment,
    p: usize,
    cores: (usize, usize),
    extras: Extras,
) -> Result<JobResult> {
    let stream = env.stream_graph();
    let name = stream.job_name.clone();
    let graph = JobGraph::build(stream, Some(p), 1, true)?;
    // As many slots as the job needs: an idle busy-spinning slot would take the core
    // the rest of the process (and the OS) needs.
    let config = Config {
        slots: p,
        cores: vec![cores.0, cores.1],
        idle: IdleStrategyKind::BusySpin,
        ring_size: 1 << 20,
        checkpointing: spate::config::CheckpointConfig {
            interval: extras.checkpoint,
            ..Default::default()
        },
        latency_interval: extras.latency_interval,
        ..Config::default()
    };
    let mut mc = MiniCluster::start(&config)?;
    let r = mc.execute(
        &graph,
        &AtomicBool::new(false),
        Duration::from_secs(3600),
        &mut |_| {},
    )?;
    if r.status != JobStatus::Finished {
        bail!("{name} run ended {:?}", r.status);
    }
    Ok(r)
}

/// W1 on spate at parallelism `p`, measuring one record in `sample`.
pub(crate) fn run_once(
    p: usize,
    pace: Pace,
    events: u64,
    sample: u32,
    cores: (usize, usize),
) -> Result<Outcome> {
    run_with(p, pace, events, sample, cores, Extras::default())
}

/// As [`run_once`], with checkpoints and latency markers as `extras` say.
pub(crate) fn run_with(
    p: usize,
    pace: Pace,
    events: u64,
    sample: u32,
    cores: (usize, usize),
    extras: Extras,
) -> Result<Outcome> {
    let env = StreamExecutionEnvironment::new("vwap");
    // W1 with its latency sink measuring one record in `sample` (`jobs::vwap` measures
    // every record, whatever `latency_sample` says).
    jobs::vwap_stream(
        &env,
        VwapParams {
            seed: SEED,
            events: Some(events),
            pace,
            latency_sample: sample,
        },
    )
    .latency_sink_sampled(|v| v.ts_ns, sample)
    .name("Latency Sink");
    let r = execute_with(&env, p, cores, extras)?;
    Ok(Outcome {
        eps: r.progress.records as f64 / r.progress.elapsed.as_secs_f64().max(1e-9),
        latency: r.progress.latency,
        checkpoints: extras.checkpoint.map(|_| r.checkpoints),
    })
}

/// One implementation at one parallelism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Spate,
    Timely,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Spate => "spate",
            Impl::Timely => "timely",
        }
    }

    /// Runs W1 at parallelism `p` on `cores`, saying which cores it ran on.
    fn run(
        self,
        p: usize,
        pace: Pace,
        events: u64,
        sample: u32,
        cores: (usize, usize),
    ) -> Result<(Outcome, String)> {
        match self {
            Impl::Spate => {
                let o = run_once(p, pace, events, sample, cores)?;
                let on = [cores.0, cores.1][..p.min(2)]
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                Ok((o, format!("slots on cores {on}")))
            }
            Impl::Timely => {
                let o = timely_w1::run(SEED, p, pace, events, sample, cores, false)?;
                // Every generated trade has qty ≥ 1, so all of them reach the sinks.
                if o.records != events {
                    bail!("timely W1 delivered {} of {events} records", o.records);
                }
                let on = o
                    .cores
                    .iter()
                    .map(|c| c.map_or("unpinned".into(), |c| c.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let o = Outcome {
                    eps: o.eps,
                    latency: o.latency,
                    checkpoints: None,
                };
                Ok((o, format!("workers on cores {on}")))
            }
        }
    }
}

fn row(imp: Impl, p: usize, mode: &str, offered: Option<f64>, o: &Outcome, sample: u32) -> Row {
    make_row("vwap", imp.name(), p, mode, offered, o, sample)
}

/// A result row of `workload` from an outcome.
pub(crate) fn make_row(
    workload: &str,
    impl_: &str,
    p: usize,
    mode: &str,
    offered: Option<f64>,
    o: &Outcome,
    sample: u32,
) -> Row {
    let h = &o.latency;
    let q = |x| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    Row {
        workload: workload.into(),
        impl_: impl_.into(),
        parallelism: p,
        mode: mode.into(),
        offered_per_s: offered,
        events_per_s: o.eps,
        p50_ns: q(0.5),
        p99_ns: q(0.99),
        p999_ns: q(0.999),
        p9999_ns: q(0.9999),
        max_ns: if h.is_empty() { 0 } else { h.max() },
        latency_sample: sample,
        bars: None,
        bars_measured: None,
        mean_ns: None,
        schedule_wait_ns: None,
        checkpoints: o.checkpoints.as_ref().map(|c| c.completed),
        checkpoint_ms: o.checkpoints.as_ref().map(|c| c.last_duration_ms),
        checkpoint_bytes: o.checkpoints.as_ref().map(|c| c.last_size),
        checkpoint_sync_ns: o.checkpoints.as_ref().map(|c| c.last_sync_ns),
        hist: Some(h.clone()),
    }
}

/// Measures the core-to-core one-way time (floor ping-pong p50, ns).
pub fn core_to_core(cores: (usize, usize)) -> u64 {
    let clock = Clock::calibrate();
    let p = crate::ring::Params {
        round_trips: 200_000,
        frames: 0,
        rounds: 1,
        cores,
    };
    let mut h = histogram();
    crate::ring::floor_pingpong(200_000, &p, &clock, &mut h);
    h.value_at_quantile(0.5)
}

/// A ratio the project targets, computed from one run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is divided by what.
    pub what: String,
    /// The ratio (`None`: a row it needs is missing or zero).
    pub value: Option<f64>,
    /// The target, e.g. `>= 1.5`.
    pub target: String,
    /// Whether the value meets the target.
    pub met: bool,
}

/// The whole result: rows, then the targeted ratios computed from them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One row per (impl, parallelism, mode, offered rate).
    pub rows: Vec<Row>,
    /// Each under a stable name, in this order (a JSON object).
    #[serde(serialize_with = "in_order")]
    pub ratios: Vec<(String, Ratio)>,
}

pub(crate) fn in_order<S: serde::Serializer>(
    v: &[(String, Ratio)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, r)| (k, r)))
}

/// A targeted figure: `value` against `target`, at least (`>=`) or at most (`<=`).
pub(crate) fn ratio(what: String, value: Option<f64>, at_least: bool, target: f64) -> Ratio {
    let value = value.filter(|v| v.is_finite());
    let met = value.is_some_and(|v| if at_least { v >= target } else { v <= target });
    let target = format!("{} {target}", if at_least { ">=" } else { "<=" });
    Ratio {
        what,
        value,
        target,
        met,
    }
}

fn find<'a>(
    rows: &'a [Row],
    imp: Impl,
    p: usize,
    mode: &str,
    offered: Option<f64>,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.impl_ == imp.name() && r.parallelism == p && r.mode == mode && r.offered_per_s == offered
    })
}

/// The ratios the project targets: spate p=1 over timely 1 worker unpaced (≥ 1.5), spate
/// p=2 over spate p=1 unpaced (≥ 1.7), and at 1 M/s spate's p50 and p99 over timely's at
/// the same parallelism (≤ 0.5).
pub fn ratios(rows: &[Row]) -> Vec<(String, Ratio)> {
    let mut out = Vec::new();
    let mut put = |key: String, what: String, value: Option<f64>, at_least: bool, target: f64| {
        out.push((key, ratio(what, value, at_least, target)));
    };
    let eps = |imp, p| find(rows, imp, p, "unpaced", None).map(|r| r.events_per_s);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    put(
        "unpaced_spate_p1_over_timely_w1".into(),
        "unpaced events/s, spate p=1 / timely 1 worker".into(),
        div(eps(Impl::Spate, 1), eps(Impl::Timely, 1)),
        true,
        1.5,
    );
    put(
        "unpaced_spate_p2_over_spate_p1".into(),
        "unpaced events/s, spate p=2 / spate p=1".into(),
        div(eps(Impl::Spate, 2), eps(Impl::Spate, 1)),
        true,
        1.7,
    );
    for p in [1usize, 2] {
        let s = find(rows, Impl::Spate, p, "rate", Some(1e6));
        let t = find(rows, Impl::Timely, p, "rate", Some(1e6));
        for (q, get) in [
            ("p50", (|r: &Row| r.p50_ns) as fn(&Row) -> u64),
            ("p99", |r: &Row| r.p99_ns),
        ] {
            put(
                format!("rate_1m_p{p}_{q}_spate_over_timely"),
                format!("{q} latency at 1 M/s, p={p}: spate / timely"),
                div(s.map(|r| get(r) as f64), t.map(|r| get(r) as f64)),
                false,
                0.5,
            );
        }
    }
    put(
        "metrics_on_p1_throughput_over_off".into(),
        format!(
            "unpaced events/s, p=1: latency markers and operator timing every {METRICS_INTERVAL:?} / off"
        ),
        div(
            find(rows, Impl::Spate, 1, "unpaced_metrics_on", None).map(|r| r.events_per_s),
            find(rows, Impl::Spate, 1, "unpaced_metrics_off", None).map(|r| r.events_per_s),
        ),
        true,
        0.97,
    );
    for p in [1usize, 2] {
        let with = find(rows, Impl::Spate, p, "unpaced_ckpt", None);
        let without = find(rows, Impl::Spate, p, "unpaced_long", None);
        put(
            format!("checkpointed_p{p}_throughput_over_plain"),
            format!("unpaced events/s, p={p}: checkpoints every 1 s / none"),
            div(
                with.map(|r| r.events_per_s),
                without.map(|r| r.events_per_s),
            ),
            true,
            0.95,
        );
        let with = find(rows, Impl::Spate, p, "rate_ckpt", Some(1e6));
        let without = find(rows, Impl::Spate, p, "rate_plain", Some(1e6));
        put(
            format!("checkpointed_p{p}_p99_at_1m_over_plain"),
            format!("p99 at 1 M/s, p={p}: checkpoints every 1 s / none"),
            div(
                with.map(|r| r.p99_ns as f64),
                without.map(|r| r.p99_ns as f64),
            ),
            false,
            1.2,
        );
    }
    out
}

/// Runs `run` for the two variants alternately (`[a, b]`, `reps` times over) and returns
/// each one's outcomes.
fn alternate<V: Copy>(
    reps: usize,
    variants: [V; 2],
    mut run: impl FnMut(V, usize) -> Result<Outcome>,
) -> Result<[Vec<Outcome>; 2]> {
    let mut out = [Vec::new(), Vec::new()];
    for rep in 0..reps {
        for (i, v) in variants.into_iter().enumerate() {
            out[i].push(run(v, rep)?);
        }
    }
    Ok(out)
}

/// The outcome of median `key` (the upper one of an even count).
fn median_by(mut v: Vec<Outcome>, key: impl Fn(&Outcome) -> f64) -> Outcome {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

/// Runs the whole W1 benchmark: spate and timely side by side.
pub fn run(params: &Params) -> Result<Report> {
    let c2c_start = core_to_core(params.cores);
    eprintln!("core-to-core one-way at start: {c2c_start} ns");
    let seconds = Duration::from_secs_f64(params.seconds.clamp(0.2, 2.0));
    eprintln!(
        "platform hiccups on core {}: {}",
        params.cores.0,
        crate::hiccup::measure(params.cores.0, seconds)
    );
    let mut rows = Vec::new();
    // Throughput, as fast as possible: spate p=1 and p=2 and timely at 1 and 2 workers,
    // interleaved; median of reps.
    let runs = [
        (Impl::Spate, 1usize),
        (Impl::Spate, 2),
        (Impl::Timely, 1),
        (Impl::Timely, 2),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut last: Vec<Option<Outcome>> = runs.iter().map(|_| None).collect();
    for rep in 0..params.reps.max(1) {
        for (i, &(imp, p)) in runs.iter().enumerate() {
            let (o, on) = imp.run(
                p,
                Pace::Unpaced,
                params.events,
                UNPACED_SAMPLE,
                params.cores,
            )?;
            eprintln!(
                "{} unpaced p={p} rep {}: {:.2}M events/s ({on})",
                imp.name(),
                rep + 1,
                o.eps / 1e6
            );
            rates[i].push(o.eps);
            last[i] = Some(o);
        }
    }
    for (i, &(imp, p)) in runs.iter().enumerate() {
        let mut v = rates[i].clone();
        v.sort_by(f64::total_cmp);
        if let Some(mut o) = last[i].take() {
            o.eps = v[v.len() / 2];
            rows.push(row(imp, p, "unpaced", None, &o, UNPACED_SAMPLE));
        }
    }
    // Latency at fixed offered rates, every record measured.
    for rate in [100_000.0, 1_000_000.0] {
        for &(imp, p) in &runs {
            let events = (rate * params.seconds) as u64;
            let (o, on) = imp.run(p, Pace::Rate(rate), events, 1, params.cores)?;
            eprintln!(
                "{} p={p} at {:.0}k/s: p50 {} ns, p99 {} ns ({on})",
                imp.name(),
                rate / 1e3,
                o.latency.value_at_quantile(0.5),
                o.latency.value_at_quantile(0.99)
            );
            rows.push(row(imp, p, "rate", Some(rate), &o, 1));
        }
    }
    // Checkpoints every second: unpaced runs long enough for several (five times the
    // throughput runs' trades), each beside a run of the same size without, interleaved;
    // and 1 M/s with checkpoints, beside the 1 M/s rows above.
    let long = params.events.saturating_mul(5);
    let reps = params.reps.max(1);
    let ck_name = |ck: Option<Duration>| {
        if ck.is_some() {
            "checkpoints every 1 s"
        } else {
            "no checkpoints"
        }
    };
    for p in [1usize, 2] {
        let [without, with] = alternate(reps, [None, Some(CHECKPOINT_INTERVAL)], |ck, rep| {
            let extras = Extras {
                checkpoint: ck,
                ..Extras::default()
            };
            let o = run_with(p, Pace::Unpaced, long, UNPACED_SAMPLE, params.cores, extras)?;
            eprintln!(
                "spate unpaced p={p} {} rep {}: {:.2}M events/s{}",
                ck_name(ck),
                rep + 1,
                o.eps / 1e6,
                o.checkpoints.as_ref().map_or(String::new(), |c| format!(
                    ", {} checkpoints, last {} ms, {} bytes",
                    c.completed, c.last_duration_ms, c.last_size
                ))
            );
            Ok(o)
        })?;
        for (mode, v) in [("unpaced_long", without), ("unpaced_ckpt", with)] {
            let o = median_by(v, |o| o.eps);
            rows.push(row(Impl::Spate, p, mode, None, &o, UNPACED_SAMPLE));
        }
        // At 1 M/s the tail on two busy cores swings from run to run: runs with and
        // without checkpoints alternate, and each row is the run of median p99.
        let events = (1e6 * params.seconds) as u64;
        let [without, with] = alternate(reps, [None, Some(CHECKPOINT_INTERVAL)], |ck, rep| {
            let extras = Extras {
                checkpoint: ck,
                ..Extras::default()
            };
            let o = run_with(p, Pace::Rate(1e6), events, 1, params.cores, extras)?;
            eprintln!(
                "spate p={p} at 1000k/s, {} rep {}: p50 {} ns, p99 {} ns",
                ck_name(ck),
                rep + 1,
                o.latency.value_at_quantile(0.5),
                o.latency.value_at_quantile(0.99)
            );
            Ok(o)
        })?;
        for (mode, v) in [("rate_plain", without), ("rate_ckpt", with)] {
            let o = median_by(v, |o| o.latency.value_at_quantile(0.99) as f64);
            rows.push(row(Impl::Spate, p, mode, Some(1e6), &o, 1));
        }
    }
    // Metrics on (latency markers and the per-operator timing of one batch every
    // METRICS_INTERVAL; counters and busy time are always on) against off: unpaced W1
    // at p=1, the two alternating, median of reps each.
    let [off, on] = alternate(reps, [Duration::ZERO, METRICS_INTERVAL], |interval, rep| {
        let extras = Extras {
            latency_interval: interval,
            ..Extras::default()
        };
        let o = run_with(
            1,
            Pace::Unpaced,
            params.events,
            UNPACED_SAMPLE,
            params.cores,
            extras,
        )?;
        eprintln!(
            "spate unpaced p=1 latency markers {} rep {}: {:.2}M events/s",
            if interval.is_zero() {
                "off".to_string()
            } else {
                format!("every {interval:?}")
            },
            rep + 1,
            o.eps / 1e6
        );
        Ok(o)
    })?;
    for (mode, v) in [("unpaced_metrics_off", off), ("unpaced_metrics_on", on)] {
        let o = median_by(v, |o| o.eps);
        rows.push(row(Impl::Spate, 1, mode, None, &o, UNPACED_SAMPLE));
    }
    // The highest offered rate each parallelism of spate sustains (achieves ≥ 99% of
    // it), by bisection between 1 M/s and its unpaced throughput.
    for (i, &(imp, p)) in runs.iter().enumerate() {
        if imp != Impl::Spate {
            continue;
        }
        let mut lo = 1e6;
        let mut hi = rates[i].iter().copied().fold(lo, f64::max);
        let mut best: Option<(f64, Outcome)> = None;
        for _ in 0..6 {
            let rate = (lo + hi) / 2.0;
            let events = (rate * params.seconds.min(2.0)) as u64;
            let o = run_once(p, Pace::Rate(rate), events, 1, params.cores)?;
            let ok = o.eps >= 0.99 * rate;
            eprintln!(
                "p={p} offered {:.2}M/s: achieved {:.2}M/s {}",
                rate / 1e6,
                o.eps / 1e6,
                if ok { "sustained" } else { "not sustained" }
            );
            if ok {
                lo = rate;
                best = Some((rate, o));
            } else {
                hi = rate;
            }
        }
        if let Some((rate, o)) = best {
            rows.push(row(imp, p, "max_sustained", Some(rate), &o, 1));
        }
    }
    eprintln!(
        "platform hiccups on core {} at end: {}",
        params.cores.0,
        crate::hiccup::measure(params.cores.0, seconds)
    );
    let c2c_end = core_to_core(params.cores);
    eprintln!("core-to-core one-way: {c2c_start} ns at start, {c2c_end} ns at end");
    if let Some(path) = &params.plot {
        plot(path, &rows)?;
        eprintln!("wrote {}", path.display());
    }
    let ratios = ratios(&rows);
    Ok(Report { rows, ratios })
}

/// Prints the rows, then the targeted ratios.
pub fn print(report: &Report) {
    println!(
        "{:<8} {:<6} {:>2} {:<14} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "workload",
        "impl",
        "p",
        "mode",
        "offered/s",
        "events/s",
        "p50",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "sample"
    );
    let us = |ns: u64| format!("{:.2}µs", ns as f64 / 1e3);
    for r in &report.rows {
        println!(
            "{:<8} {:<6} {:>2} {:<14} {:>10} {:>10.2}M {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r.workload,
            r.impl_,
            r.parallelism,
            r.mode,
            r.offered_per_s
                .map_or("-".into(), |o| format!("{:.2}M", o / 1e6)),
            r.events_per_s / 1e6,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.p999_ns),
            us(r.p9999_ns),
            us(r.max_ns),
            format!("1/{}", r.latency_sample)
        );
    }
    println!("\ntargeted ratios (this run)");
    for (_, r) in &report.ratios {
        println!(
            "  {:<48} {:>8}  target {:<6} {}",
            r.what,
            r.value.map_or("-".into(), |v| format!("{v:.2}")),
            r.target,
            if r.met { "met" } else { "not met" }
        );
    }
}

/// Latency percentile distributions of the paced rows, as an SVG: one colour per
/// (parallelism, mode, rate), spate solid and timely dashed.
fn plot(path: &Path, rows: &[Row]) -> Result<()> {
    let mut keys: Vec<(usize, &str, Option<f64>)> = Vec::new();
    // (label, points, colour, dashed)
    type Series = (String, Vec<(f64, f64)>, usize, bool);
    let series: Vec<Series> = rows
        .iter()
        .filter(|r| r.mode != "unpaced")
        .filter_map(|r| {
            let h = r.hist.as_ref()?;
            let pts: Vec<(f64, f64)> = (0..=50)
                .map(|i| {
                    // x: number of nines, 0 (p0) .. 5 (p99.999)
                    let nines = i as f64 / 10.0;
                    let q = 1.0 - 10f64.powf(-nines);
                    (nines, (h.value_at_quantile(q).max(1) as f64) / 1e3)
                })
                .collect();
            let key = (r.parallelism, r.mode.as_str(), r.offered_per_s);
            let color = keys.iter().position(|k| *k == key).unwrap_or_else(|| {
                keys.push(key);
                keys.len() - 1
            });
            Some((
                format!(
                    "{} p={} {} {:.2}M/s",
                    r.impl_,
                    r.parallelism,
                    r.mode,
                    r.offered_per_s.unwrap_or(0.0) / 1e6
                ),
                pts,
                color,
                r.impl_ != "spate",
            ))
        })
        .collect();
    let ymax = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "W1 (VWAP) latency by percentile, from scheduled send time to sink",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..5f64, (0.05f64..ymax * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(6)
        .x_label_formatter(&|x| {
            if (x - x.round()).abs() > 1e-9 {
                return String::new();
            }
            match x.round() as i64 {
                0 => "0".into(),
                1 => "90".into(),
                2 => "99".into(),
                3 => "99.9".into(),
                4 => "99.99".into(),
                _ => "99.999".into(),
            }
        })
        .draw()?;
    for (name, pts, color, dashed) in series {
        let style = Palette99::pick(color).to_rgba().stroke_width(2);
        if dashed {
            chart
                .draw_series(DashedLineSeries::new(pts, 6, 4, style))?
                .label(name)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(pts, style))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
