//! `bench vwap`: workload W1 on the embedded MiniCluster — throughput as fast as possible
//! at parallelism 1 and 2, latency at fixed offered rates (scheduled-time timestamps, so
//! a stall is charged to latency), the highest rate each parallelism sustains, and a
//! picture of the latency percentile distributions.

use crate::clock::Clock;
use crate::report::histogram;
use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;
use spate::api::StreamExecutionEnvironment;
use spate::config::Config;
use spate::graph::JobGraph;
use spate::jobs::{self, VwapParams};
use spate::minicluster::{JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use spate_dataplane::operator::source::Pace;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

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
    /// `vwap`.
    pub workload: String,
    /// 1 or 2.
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
    #[serde(skip)]
    hist: Option<Histogram<u64>>,
}

struct Outcome {
    eps: f64,
    latency: Histogram<u64>,
}

fn run_once(
    p: usize,
    pace: Pace,
    events: u64,
    sample: u32,
    cores: (usize, usize),
) -> Result<Outcome> {
    let env = StreamExecutionEnvironment::new("vwap");
    // W1 with its latency sink measuring one record in `sample` (`jobs::vwap` measures
    // every record, whatever `latency_sample` says).
    jobs::vwap_stream(
        &env,
        VwapParams {
            seed: 42,
            events: Some(events),
            pace,
            latency_sample: sample,
        },
    )
    .latency_sink_sampled(|v| v.ts_ns, sample)
    .name("Latency Sink");
    let graph = JobGraph::build(env.stream_graph(), Some(p), 1, true)?;
    // As many slots as the job needs: an idle busy-spinning slot would take the core
    // the rest of the process (and the OS) needs.
    let config = Config {
        slots: p,
        cores: vec![cores.0, cores.1],
        idle: IdleStrategyKind::BusySpin,
        ring_size: 1 << 20,
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
        bail!("W1 run ended {:?}", r.status);
    }
    Ok(Outcome {
        eps: r.progress.records as f64 / r.progress.elapsed.as_secs_f64().max(1e-9),
        latency: r.progress.latency,
    })
}

fn row(p: usize, mode: &str, offered: Option<f64>, o: &Outcome, sample: u32) -> Row {
    let h = &o.latency;
    let q = |x| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    Row {
        workload: "vwap".into(),
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

/// Runs the whole W1 benchmark.
pub fn run(params: &Params) -> Result<Vec<Row>> {
    let c2c_start = core_to_core(params.cores);
    eprintln!("core-to-core one-way at start: {c2c_start} ns");
    let seconds = Duration::from_secs_f64(params.seconds.clamp(0.2, 2.0));
    eprintln!(
        "platform hiccups on core {}: {}",
        params.cores.0,
        crate::hiccup::measure(params.cores.0, seconds)
    );
    let mut rows = Vec::new();
    // Throughput, as fast as possible: p=1 and p=2 interleaved; median of reps.
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut last: [Option<Outcome>; 2] = [None, None];
    for rep in 0..params.reps.max(1) {
        for (i, p) in [1usize, 2].into_iter().enumerate() {
            let o = run_once(p, Pace::Unpaced, params.events, 16, params.cores)?;
            eprintln!(
                "unpaced p={p} rep {}: {:.2}M events/s",
                rep + 1,
                o.eps / 1e6
            );
            rates[i].push(o.eps);
            last[i] = Some(o);
        }
    }
    for (i, p) in [1usize, 2].into_iter().enumerate() {
        let mut v = rates[i].clone();
        v.sort_by(f64::total_cmp);
        if let Some(mut o) = last[i].take() {
            o.eps = v[v.len() / 2];
            rows.push(row(p, "unpaced", None, &o, 16));
        }
    }
    // Latency at fixed offered rates, every record measured.
    for rate in [100_000.0, 1_000_000.0] {
        for p in [1usize, 2] {
            let events = (rate * params.seconds) as u64;
            let o = run_once(p, Pace::Rate(rate), events, 1, params.cores)?;
            eprintln!(
                "p={p} at {:.0}k/s: p50 {} ns, p99 {} ns",
                rate / 1e3,
                o.latency.value_at_quantile(0.5),
                o.latency.value_at_quantile(0.99)
            );
            rows.push(row(p, "rate", Some(rate), &o, 1));
        }
    }
    // The highest offered rate each parallelism sustains (achieves ≥ 99% of it), by
    // bisection between 1 M/s and its unpaced throughput.
    for (i, p) in [1usize, 2].into_iter().enumerate() {
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
            rows.push(row(p, "max_sustained", Some(rate), &o, 1));
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
    Ok(rows)
}

/// Prints the rows.
pub fn print(rows: &[Row]) {
    println!(
        "{:<8} {:>2} {:<14} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "workload",
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
    for r in rows {
        println!(
            "{:<8} {:>2} {:<14} {:>10} {:>10.2}M {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            r.workload,
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
}

/// Latency percentile distributions of the paced rows, as an SVG.
fn plot(path: &Path, rows: &[Row]) -> Result<()> {
    let series: Vec<(String, Vec<(f64, f64)>)> = rows
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
            Some((
                format!(
                    "p={} {} {:.2}M/s",
                    r.parallelism,
                    r.mode,
                    r.offered_per_s.unwrap_or(0.0) / 1e6
                ),
                pts,
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
    for (i, (name, pts)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
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
