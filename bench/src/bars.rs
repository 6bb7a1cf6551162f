//! `bench bars`: workload W2 (one-second bars in event time) on the embedded
//! MiniCluster, as `spate run bars` runs it, beside the same workload on timely dataflow
//! ([`crate::timely_w2`]) at 1 and 2 workers on the same cores: throughput as fast as
//! possible (trades/s, interleaved repetitions, with one W1 run per repetition for the
//! W2/W1 ratio) and the firing latency at 1 M trades/s offered; then the figures the
//! project targets, and how much of the firing latency the schedule itself accounts
//! for (the wait for a trade whose event time carries the watermark past a window).
//!
//! spate runs on the MiniCluster as `bench vwap` runs W1 (busy-spinning slots pinned to
//! the two cores, as many as the parallelism). Unpaced, the job is `jobs::bars` itself;
//! its sink sees bars, so throughput is the trades a finished bounded run generated over
//! its time. Paced, it is the same job over a source that also records where its
//! schedule starts (`jobs::bars_of` over [`StartRecording`]), so that the schedule's
//! wait can be replayed for the very windows the run fired.

use crate::timely_w2;
use crate::vwap::{self, make_row, ratio, Outcome, Ratio, Row, SEED};
use anyhow::{bail, Result};
use serde::Serialize;
use spate::api::StreamExecutionEnvironment;
use spate::jobs::{self, Bar, BarsParams};
use spate_dataplane::operator::source::{Pace, Source, SourceStatus, Trade, TradeSource};
use spate_dataplane::operator::SubtaskInfo;
use spate_dataplane::slot::TaskError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The offered rate of the latency runs.
pub const RATE: f64 = 1e6;
/// W1's latency sampling in its unpaced run (as `bench vwap`'s).
const W1_SAMPLE: u32 = 16;

/// Sizes of the run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Trades per throughput run.
    pub events: u64,
    /// Throughput repetitions (interleaved; the median is reported).
    pub reps: usize,
    /// Seconds of each 1 M/s run.
    pub seconds: f64,
    /// Disorder bound (and watermark bound), ns.
    pub disorder_ns: u64,
    /// Window size, ns.
    pub window_ns: u64,
    /// Cores of the two slots (workers).
    pub cores: (usize, usize),
}

/// One implementation of W2.
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
}

/// One W2 run: its outcome, bars, and where its schedule started.
struct Run {
    o: Outcome,
    bars: u64,
    /// Paced runs: when each source subtask's schedule started (its first poll).
    starts: Vec<u64>,
    on: String,
}

/// spate's W2 source (a [`TradeSource`] with disorder), recording the clock reading of
/// its first poll: where its schedule starts, so that the wait for the watermark in the
/// schedule can be replayed for the very windows of a paced run. One branch per poll
/// beside the source's own work.
struct StartRecording {
    inner: TradeSource,
    start: Arc<AtomicU64>,
    started: bool,
}

impl Source<Trade> for StartRecording {
    #[inline]
    fn poll(
        &mut self,
        out: &mut Vec<Trade>,
        max: usize,
        now_ns: u64,
    ) -> Result<SourceStatus, TaskError> {
        if !self.started {
            self.started = true;
            // Relaxed: read after the job finished (the slot threads are joined).
            self.start.store(now_ns, Ordering::Relaxed);
        }
        self.inner.poll(out, max, now_ns)
    }
}

/// W2 at parallelism `p` on spate or timely.
fn run_bars(imp: Impl, p: usize, pace: Pace, events: u64, params: &Params) -> Result<Run> {
    let cores = params.cores;
    match imp {
        Impl::Spate => {
            let env = StreamExecutionEnvironment::new("bars");
            let (disorder_ns, window_ns) = (params.disorder_ns, params.window_ns);
            let starts: Arc<Vec<Arc<AtomicU64>>> =
                Arc::new((0..p).map(|_| Arc::new(AtomicU64::new(0))).collect());
            if pace == Pace::Unpaced {
                // Exactly the job `spate run bars` runs.
                jobs::bars(
                    &env,
                    BarsParams {
                        seed: SEED,
                        events: Some(events),
                        pace,
                        disorder_ns,
                        window_ns,
                    },
                )
                .map_err(anyhow::Error::msg)?;
            } else {
                // The same job with its source recording where its schedule starts.
                let starts = starts.clone();
                let trades = env
                    .add_source("Trade Source", false, move |info: SubtaskInfo| {
                        let start = starts
                            .get(info.index)
                            .cloned()
                            .ok_or_else(|| format!("no start slot for subtask {}", info.index))?;
                        Ok(StartRecording {
                            inner: TradeSource::try_new(SEED, Some(events), pace, info)?
                                .with_disorder(disorder_ns),
                            start,
                            started: false,
                        })
                    })
                    .name("Trade Source");
                jobs::bars_of(&trades, disorder_ns, window_ns)
                    .map_err(anyhow::Error::msg)?
                    .latency_sink_sampled(|b: &Bar| b.ready_ns, 1)
                    .name("Latency Sink");
            }
            let r = vwap::execute(&env, p, cores)?;
            // The sink sees bars; a finished bounded run generated every trade.
            let secs = r.progress.elapsed.as_secs_f64().max(1e-9);
            let on = [cores.0, cores.1][..p.min(2)]
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Run {
                o: Outcome {
                    eps: events as f64 / secs,
                    latency: r.progress.latency,
                    checkpoints: None,
                },
                bars: r.progress.records,
                starts: starts.iter().map(|s| s.load(Ordering::Relaxed)).collect(),
                on: format!("slots on cores {on}"),
            })
        }
        Impl::Timely => {
            let o = timely_w2::run(timely_w2::Params {
                seed: SEED,
                workers: p,
                pace,
                events,
                disorder_ns: params.disorder_ns,
                window_ns: params.window_ns,
                cores,
                verify: false,
                park: false,
            })?;
            if o.trades != events || o.late != 0 {
                bail!(
                    "timely W2's bars hold {} of {events} trades ({} late)",
                    o.trades,
                    o.late
                );
            }
            let on = o
                .cores
                .iter()
                .map(|c| c.map_or("unpinned".into(), |c| c.to_string()))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Run {
                o: Outcome {
                    eps: o.eps,
                    latency: o.latency,
                    checkpoints: None,
                },
                bars: o.bars,
                starts: o.starts,
                on: format!("workers on cores {on}"),
            })
        }
    }
}

fn bars_row(imp: Impl, p: usize, mode: &str, offered: Option<f64>, r: &Run) -> Row {
    let mut row = make_row("bars", imp.name(), p, mode, offered, &r.o, 1);
    row.bars = Some(r.bars);
    row.bars_measured = Some(r.o.latency.len());
    row.mean_ns = (!r.o.latency.is_empty()).then(|| r.o.latency.mean());
    row
}

/// How long a window waits, in the offered schedule alone, for the watermark to be able
/// to pass its end: from its ready time (end + disorder) to the scheduled send time of
/// the first trade whose event time reaches the ready time (on the slowest source
/// subtask, since a window sees the least watermark of its inputs). Part of every
/// firing latency; no implementation can fire earlier.
#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    /// Source subtasks (workers).
    pub parallelism: usize,
    /// Offered rate, trades/s.
    pub offered_per_s: f64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Median, ns.
    pub p50_ns: u64,
    /// p99, ns.
    pub p99_ns: u64,
    /// Largest, ns.
    pub max_ns: u64,
    /// Ready times sampled (uniformly over the run's schedule, i.e. over the phase of
    /// the window's end against the sends).
    pub samples: usize,
}

/// For each ready time of `ready` (ascending): the scheduled send time of the first trade
/// whose event time reaches it, on the later of the `p` source subtasks, subtask `i`'s
/// schedule starting at `starts[i]` (`None`: no trade reaches it). The sources are
/// spate's, with the seed, rate, count and disorder of the runs, replayed off the clock.
fn carried_at(
    rate: f64,
    events: u64,
    disorder_ns: u64,
    starts: &[u64],
    ready: &[u64],
) -> Result<Vec<Option<u64>>> {
    let p = starts.len().max(1);
    let interval_ns = 1e9 * p as f64 / rate;
    let mut first = vec![0u64; ready.len()];
    let mut found = vec![0usize; ready.len()];
    let mut buf = Vec::with_capacity(4096);
    for (index, &t0) in starts.iter().enumerate() {
        let mut src = TradeSource::new(
            SEED,
            Some(events),
            Pace::Rate(rate),
            SubtaskInfo {
                index,
                parallelism: p,
            },
        )
        .with_disorder(disorder_ns);
        let (mut k, mut max_ts, mut j) = (0u64, 0u64, 0usize);
        let mut now = t0;
        loop {
            buf.clear();
            if let SourceStatus::Done = src.poll(&mut buf, 4096, now)? {
                break;
            }
            // The first poll starts the schedule at t0; then every trade is due.
            now = u64::MAX / 2;
            for t in &buf {
                // The scheduled send time, as the source computes it.
                let send = t0 + (k as f64 * interval_ns) as u64;
                k += 1;
                max_ts = max_ts.max(t.ts_ns);
                while j < ready.len() && max_ts >= ready[j] {
                    first[j] = first[j].max(send);
                    found[j] += 1;
                    j += 1;
                }
            }
        }
    }
    Ok((0..ready.len())
        .map(|j| (found[j] == starts.len()).then_some(first[j]))
        .collect())
}

/// [`Wait`] from the generator's schedule: the same seeded sources (and delays) as the
/// runs at `p` and `rate` with `events` trades, every subtask starting at the same
/// instant, and ready times drawn uniformly over the schedule.
pub fn schedule_wait(p: usize, rate: f64, events: u64, disorder_ns: u64) -> Result<Option<Wait>> {
    const SAMPLES: usize = 20_000;
    let t0: u64 = 1 << 42;
    let span = ((events / p as u64) as f64 * 1e9 * p as f64 / rate) as u64;
    // Ready times from two disorders after the start to two before the end of the
    // sends (later ones may find no trade to carry them).
    let (lo, hi) = (
        t0 + 2 * disorder_ns,
        (t0 + span).saturating_sub(2 * disorder_ns),
    );
    let step = hi.saturating_sub(lo) / SAMPLES as u64;
    if step == 0 {
        return Ok(None);
    }
    // Jittered within each step, so that the samples do not share one phase of the sends.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let ready: Vec<u64> = (0..SAMPLES as u64)
        .map(|j| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + j * step + x % step
        })
        .collect();
    let carried = carried_at(rate, events, disorder_ns, &vec![t0; p], &ready)?;
    let mut waits: Vec<u64> = carried
        .iter()
        .zip(&ready)
        .filter_map(|(c, r)| c.map(|c| c - r))
        .collect();
    if waits.is_empty() {
        return Ok(None);
    }
    waits.sort_unstable();
    let q = |f: f64| waits[((waits.len() - 1) as f64 * f).round() as usize];
    Ok(Some(Wait {
        parallelism: p,
        offered_per_s: rate,
        mean_ns: waits.iter().map(|&w| w as f64).sum::<f64>() / waits.len() as f64,
        p50_ns: q(0.5),
        p99_ns: q(0.99),
        max_ns: q(1.0),
        samples: waits.len(),
    }))
}

/// The mean wait for the watermark in the schedule over the windows a paced run fired
/// on its watermark (its sources having started at `starts`), and how many there were.
fn run_wait(
    rate: f64,
    events: u64,
    disorder_ns: u64,
    window_ns: u64,
    starts: &[u64],
) -> Result<Option<(f64, usize)>> {
    let (Some(&first), Some(&last)) = (starts.iter().min(), starts.iter().max()) else {
        return Ok(None);
    };
    if first == 0 {
        return Ok(None);
    }
    let span = ((events / starts.len() as u64) as f64 * 1e9 * starts.len() as f64 / rate) as u64;
    // Every window end after the first trade's event time, up to the last send.
    let mut ready = Vec::new();
    let mut end = first.saturating_sub(disorder_ns) / window_ns * window_ns + window_ns;
    while end + disorder_ns <= last + span {
        ready.push(end + disorder_ns);
        end += window_ns;
    }
    let waits: Vec<u64> = carried_at(rate, events, disorder_ns, starts, &ready)?
        .iter()
        .zip(&ready)
        .filter_map(|(c, r)| c.map(|c| c - r))
        .collect();
    if waits.is_empty() {
        return Ok(None);
    }
    let mean = waits.iter().map(|&w| w as f64).sum::<f64>() / waits.len() as f64;
    Ok(Some((mean, waits.len())))
}

/// The whole result: rows, the targeted figures computed from them, and the schedule's
/// share of the firing latency.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// One row per (workload, impl, parallelism, mode).
    pub rows: Vec<Row>,
    /// Each under a stable name, in this order (a JSON object).
    #[serde(serialize_with = "vwap::in_order")]
    pub ratios: Vec<(String, Ratio)>,
    /// The wait for the watermark in the offered schedule, at each parallelism.
    pub schedule_wait: Vec<Wait>,
}

fn find<'a>(rows: &'a [Row], workload: &str, imp: Impl, p: usize, mode: &str) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.workload == workload && r.impl_ == imp.name() && r.parallelism == p && r.mode == mode
    })
}

/// The figures the project targets for W2: spate p=1 over timely 1 worker unpaced
/// (≥ 1.5), spate W2 over spate W1 at p=1 unpaced (≥ 0.8), and spate's firing latency
/// at 1 M/s, p=1: p50 ≤ 10 µs, p99 ≤ 50 µs.
pub fn ratios(rows: &[Row]) -> Vec<(String, Ratio)> {
    let eps = |w, imp, p| find(rows, w, imp, p, "unpaced").map(|r| r.events_per_s);
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    // Only with bars measured (a run shorter than a window measures none).
    let paced =
        find(rows, "bars", Impl::Spate, 1, "rate").filter(|r| r.bars_measured.unwrap_or(0) > 0);
    vec![
        (
            "unpaced_spate_p1_over_timely_w2".into(),
            ratio(
                "unpaced trades/s, W2 spate p=1 / timely 1 worker".into(),
                div(eps("bars", Impl::Spate, 1), eps("bars", Impl::Timely, 1)),
                true,
                1.5,
            ),
        ),
        (
            "unpaced_w2_over_w1_spate_p1".into(),
            ratio(
                "unpaced trades/s, spate p=1: W2 / W1".into(),
                div(eps("bars", Impl::Spate, 1), eps("vwap", Impl::Spate, 1)),
                true,
                0.8,
            ),
        ),
        (
            "firing_1m_p1_p50_us".into(),
            ratio(
                "firing latency p50 at 1 M/s, spate p=1 (µs)".into(),
                paced.map(|r| r.p50_ns as f64 / 1e3),
                false,
                10.0,
            ),
        ),
        (
            "firing_1m_p1_p99_us".into(),
            ratio(
                "firing latency p99 at 1 M/s, spate p=1 (µs)".into(),
                paced.map(|r| r.p99_ns as f64 / 1e3),
                false,
                50.0,
            ),
        ),
    ]
}

/// Runs the whole W2 benchmark: spate and timely side by side.
pub fn run(params: &Params) -> Result<Report> {
    let c2c_start = vwap::core_to_core(params.cores);
    eprintln!("core-to-core one-way at start: {c2c_start} ns");
    let hiccup_for = Duration::from_secs_f64(params.seconds.clamp(0.2, 2.0));
    eprintln!(
        "platform hiccups on core {}: {}",
        params.cores.0,
        crate::hiccup::measure(params.cores.0, hiccup_for)
    );
    let mut rows = Vec::new();
    // Throughput as fast as possible, interleaved: W2 on spate p=1 and p=2 and on timely
    // at 1 and 2 workers, and W1 on spate p=1; median of reps.
    let runs = [
        (Some(Impl::Spate), 1usize),
        (Some(Impl::Spate), 2),
        (Some(Impl::Timely), 1),
        (Some(Impl::Timely), 2),
        (None, 1),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let mut last: Vec<Option<Run>> = runs.iter().map(|_| None).collect();
    for rep in 0..params.reps.max(1) {
        for (i, &(imp, p)) in runs.iter().enumerate() {
            let r = match imp {
                Some(imp) => run_bars(imp, p, Pace::Unpaced, params.events, params)?,
                None => Run {
                    o: vwap::run_once(p, Pace::Unpaced, params.events, W1_SAMPLE, params.cores)?,
                    bars: 0,
                    starts: Vec::new(),
                    on: format!("slot on core {}", params.cores.0),
                },
            };
            eprintln!(
                "{} {} unpaced p={p} rep {}: {:.2}M trades/s, {} bars ({})",
                if imp.is_some() { "bars" } else { "vwap" },
                imp.map_or("spate", Impl::name),
                rep + 1,
                r.o.eps / 1e6,
                r.bars,
                r.on
            );
            rates[i].push(r.o.eps);
            last[i] = Some(r);
        }
    }
    for (i, &(imp, p)) in runs.iter().enumerate() {
        let mut v = rates[i].clone();
        v.sort_by(f64::total_cmp);
        if let Some(mut r) = last[i].take() {
            r.o.eps = v[v.len() / 2];
            rows.push(match imp {
                Some(imp) => bars_row(imp, p, "unpaced", None, &r),
                None => make_row("vwap", "spate", p, "unpaced", None, &r.o, W1_SAMPLE),
            });
        }
    }
    // Firing latency at 1 M/s offered: every bar whose ready time has passed.
    let events = (RATE * params.seconds) as u64;
    for imp in [Impl::Spate, Impl::Timely] {
        for p in [1usize, 2] {
            let r = run_bars(imp, p, Pace::Rate(RATE), events, params)?;
            let q = |x| {
                if r.o.latency.is_empty() {
                    0
                } else {
                    r.o.latency.value_at_quantile(x)
                }
            };
            eprintln!(
                "bars {} p={p} at {:.0}k/s: {:.2}M trades/s, {} bars ({} measured), firing p50 {} ns, p99 {} ns ({})",
                imp.name(),
                RATE / 1e3,
                r.o.eps / 1e6,
                r.bars,
                r.o.latency.len(),
                q(0.5),
                q(0.99),
                r.on
            );
            let mut row = bars_row(imp, p, "rate", Some(RATE), &r);
            if let Some((mean, windows)) = run_wait(
                RATE,
                events,
                params.disorder_ns,
                params.window_ns,
                &r.starts,
            )? {
                eprintln!(
                    "  of which the schedule's wait for the watermark: mean {:.2} µs over {windows} windows",
                    mean / 1e3
                );
                row.schedule_wait_ns = Some(mean);
            }
            rows.push(row);
        }
    }
    let mut waits = Vec::new();
    for p in [1usize, 2] {
        if let Some(w) = schedule_wait(p, RATE, events, params.disorder_ns)? {
            waits.push(w);
        }
    }
    eprintln!(
        "platform hiccups on core {} at end: {}",
        params.cores.0,
        crate::hiccup::measure(params.cores.0, hiccup_for)
    );
    let c2c_end = vwap::core_to_core(params.cores);
    eprintln!("core-to-core one-way: {c2c_start} ns at start, {c2c_end} ns at end");
    let ratios = ratios(&rows);
    Ok(Report {
        rows,
        ratios,
        schedule_wait: waits,
    })
}

/// Prints the rows, the targeted figures and the schedule's wait.
pub fn print(report: &Report) {
    println!(
        "{:<8} {:<6} {:>2} {:<8} {:>9} {:>10} {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "workload",
        "impl",
        "p",
        "mode",
        "offered/s",
        "trades/s",
        "bars",
        "measured",
        "p50",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "sample"
    );
    let n = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    for r in &report.rows {
        // No latency to show when no bar's ready time had passed.
        let none = r.bars_measured == Some(0);
        let us = |ns: u64| {
            if none {
                "-".to_string()
            } else {
                format!("{:.2}µs", ns as f64 / 1e3)
            }
        };
        println!(
            "{:<8} {:<6} {:>2} {:<8} {:>9} {:>9.2}M {:>7} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}",
            r.workload,
            r.impl_,
            r.parallelism,
            r.mode,
            r.offered_per_s
                .map_or("-".into(), |o| format!("{:.2}M", o / 1e6)),
            r.events_per_s / 1e6,
            n(r.bars),
            n(r.bars_measured),
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.p999_ns),
            us(r.p9999_ns),
            us(r.max_ns),
            format!("1/{}", r.latency_sample)
        );
    }
    println!(
        "\nfiring latency at {:.2}M/s: mean, the schedule's own wait for the watermark (mean \
         over the windows of the run) and what is left (the implementation's)",
        RATE / 1e6
    );
    for r in report.rows.iter().filter(|r| r.mode == "rate") {
        let (Some(mean), Some(wait)) = (r.mean_ns, r.schedule_wait_ns) else {
            continue;
        };
        println!(
            "  {:<6} p={}: mean {:>9.2}µs = wait {:>9.2}µs + {:>9.2}µs",
            r.impl_,
            r.parallelism,
            mean / 1e3,
            wait / 1e3,
            (mean - wait) / 1e3
        );
    }
    println!("\ntargeted figures (this run)");
    for (_, r) in &report.ratios {
        println!(
            "  {:<52} {:>8}  target {:<6} {}",
            r.what,
            r.value.map_or("-".into(), |v| format!("{v:.2}")),
            r.target,
            if r.met { "met" } else { "not met" }
        );
    }
    println!(
        "\nincluded in every firing latency: the wait, in the offered schedule, from a window's \
         ready time to the send time of the first trade whose event time reaches it"
    );
    let us = |ns: u64| format!("{:.2}µs", ns as f64 / 1e3);
    for w in &report.schedule_wait {
        println!(
            "  p={} at {:.2}M/s: mean {:.2}µs, p50 {}, p99 {}, max {} ({} window phases)",
            w.parallelism,
            w.offered_per_s / 1e6,
            w.mean_ns / 1e3,
            us(w.p50_ns),
            us(w.p99_ns),
            us(w.max_ns),
            w.samples
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule's wait is what the arithmetic of uniform delays says: at one trade
    /// every µs and delays up to 5 ms, the first trade sent `w` µs after a ready time
    /// reaches it with probability ≈ w/5000, so the mean wait is ≈ √(π·5000/2) ≈ 89 µs.
    #[test]
    fn schedule_wait_is_that_of_uniform_delays() -> Result<()> {
        let w = schedule_wait(1, 1e6, 2_000_000, 5_000_000)?
            .ok_or_else(|| anyhow::anyhow!("no wait"))?;
        assert!(w.samples > 10_000, "{w:?}");
        assert!((70e3..110e3).contains(&w.mean_ns), "{w:?}");
        // Two sources each at half the rate, and the later of the two.
        let w2 = schedule_wait(2, 1e6, 2_000_000, 5_000_000)?
            .ok_or_else(|| anyhow::anyhow!("no wait"))?;
        assert!(w2.mean_ns > w.mean_ns, "{w2:?} against {w:?}");
        Ok(())
    }
}
