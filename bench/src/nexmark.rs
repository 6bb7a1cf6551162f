//! `bench nexmark`: the Nexmark queries spate runs (`nexmark/q*.sql` over
//! `nexmark/ddl.sql`), each on the embedded MiniCluster as `spate run -i
//! nexmark/ddl.sql -f nexmark/qN.sql` runs it, with busy-spinning slots pinned to
//! cores.
//!
//! Two runs per query and parallelism:
//! - throughput: `events` events generated as fast as the query takes them; events/s
//!   is the generated events (all three kinds, as Nexmark counts them) over the job's
//!   wall time, and per core divides by the parallelism (one pinned slot per subtask);
//! - latency: the source paced at `latency_load` of the throughput run's rate (at most
//!   `latency_rate` events/s) for `latency_seconds`, with
//!   operator chaining off so that the sink is a vertex of its own, and latency markers
//!   every millisecond: a marker's time from leaving its source to reaching the sink
//!   (it waits in every queue a record waits in). Percentiles over all markers.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use spate::config::Config;
use spate::jobs::JobSpec;
use spate::minicluster::{JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// The queries that run, in the suite's order.
pub const QUERIES: &[&str] = &[
    "q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q9", "q10", "q11", "q12", "q13", "q14", "q15",
    "q16", "q17", "q18", "q19", "q20", "q21", "q22",
];

/// What to run.
pub struct Params {
    /// Events per throughput run.
    pub events: u64,
    /// Queries (`q0` ...).
    pub queries: Vec<String>,
    /// Parallelisms.
    pub parallelism: Vec<usize>,
    /// Offered rate of the latency runs (events/s, all subtasks).
    pub latency_rate: u64,
    /// Seconds of each latency run.
    pub latency_seconds: f64,
    /// The latency runs' rate as a fraction of the throughput run's (at most
    /// `latency_rate`).
    pub latency_load: f64,
    /// Cores to pin the slots to.
    pub cores: (usize, usize),
}

/// One row of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// The query.
    pub query: String,
    /// Its parallelism.
    pub parallelism: usize,
    /// Events generated in the throughput run.
    pub events: u64,
    /// The throughput run's wall time.
    pub seconds: f64,
    /// Events per second.
    pub events_per_s: f64,
    /// Events per second per core (slot).
    pub events_per_s_per_core: f64,
    /// The latency run's offered rate.
    pub latency_rate: u64,
    /// Marker latency percentiles, source to sink (ns).
    pub p50_ns: u64,
    /// p99.
    pub p99_ns: u64,
    /// p99.9.
    pub p999_ns: u64,
    /// Maximum.
    pub max_ns: u64,
    /// Markers measured.
    pub markers: u64,
}

fn nexmark_file(name: &str) -> Result<String> {
    let dir = format!("{}/../nexmark", env!("CARGO_MANIFEST_DIR"));
    let path = format!("{dir}/{name}.sql");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // q13's side input, wherever the bench runs from; q10's output in a scratch
    // directory (removed after each run).
    Ok(text
        .replace(
            "'nexmark/side_input.txt'",
            &format!("'{dir}/side_input.txt'"),
        )
        .replace(
            "'nexmark-output/q10'",
            &format!("'{}'", scratch_dir().display()),
        ))
}

/// Where q10 writes.
fn scratch_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("spate-bench-q10-{}", std::process::id()))
}

/// The suite's DDL with `events` events and the given extra options.
fn ddl(events: u64, extra: &str) -> Result<String> {
    let d = nexmark_file("ddl")?;
    let events_opt = "'events.num' = '10000000'";
    if !d.contains(events_opt) {
        bail!("nexmark/ddl.sql no longer holds {events_opt}");
    }
    // Mini-batch aggregation on, as in the configuration of Flink's published runs
    // (spate's never waits: a key's updates within one input batch go out as one).
    Ok(format!(
        "SET 'table.exec.mini-batch.enabled' = 'true';\n{}",
        d.replace(events_opt, &format!("'events.num' = '{events}'{extra}"))
    ))
}

fn run(
    scripts: Vec<String>,
    p: usize,
    chaining: bool,
    markers: bool,
    cores: (usize, usize),
) -> Result<spate::minicluster::JobResult> {
    let mut spec = JobSpec::new("sql");
    spec.args = scripts;
    spec.parallelism = Some(p);
    let graph = spec.job_graph(1, chaining).map_err(anyhow::Error::msg)?;
    let config = Config {
        slots: p,
        cores: vec![cores.0, cores.1],
        idle: IdleStrategyKind::BusySpin,
        ring_size: 1 << 20,
        latency_interval: if markers {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        },
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
        bail!("the run ended {:?}", r.status);
    }
    Ok(r)
}

/// The generator alone, on this thread: ns per event (all kinds, every column of the
/// suite's table), timed with the clock around `events` calls.
pub fn generator_ns(events: u64) -> Result<f64> {
    let env = spate::api::StreamExecutionEnvironment::new("generator");
    let mut session = spate::sql::Session::new();
    for s in spate::sql::parse::script(&ddl(events, ", 'base-time' = '2024-01-01 00:00:00'")?)
        .map_err(|e| anyhow::anyhow!("{e}"))?
    {
        session
            .execute(&env, &s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let gen = spate::sql::nexmark::Nexmark::from_table(&session.catalog.tables["nexmark"])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = std::time::Instant::now();
    let mut sum = 0usize;
    for n in 0..events {
        sum += std::hint::black_box(gen.row(n, 0)).values.len();
    }
    std::hint::black_box(sum);
    Ok(start.elapsed().as_nanos() as f64 / events as f64)
}

/// Runs every query at every parallelism.
pub fn run_all(params: &Params) -> Result<Vec<Row>> {
    spate::sql::nexmark::register_functions();
    let g = generator_ns(params.events.min(2_000_000))?;
    eprintln!(
        "the generator alone: {g:.0} ns per event ({:.2} M events/s on one core)",
        1e3 / g
    );
    let mut rows = Vec::new();
    for q in &params.queries {
        let query = nexmark_file(q)?;
        for &p in &params.parallelism {
            let r = run(
                vec![ddl(params.events, "")?, query.clone()],
                p,
                true,
                false,
                params.cores,
            )
            .with_context(|| format!("{q} at parallelism {p}"))?;
            // Best effort: a scratch directory left behind is only disk space.
            let _ = std::fs::remove_dir_all(scratch_dir());
            let seconds = r.progress.elapsed.as_secs_f64();
            let eps = params.events as f64 / seconds.max(1e-9);
            // Paced below what the query sustains, so that the latency is the engine's
            // and not a backlog's.
            let rate = (params.latency_rate as f64)
                .min(eps * params.latency_load)
                .max(1000.0) as u64;
            // No latency run when it would have no events (0 would mean "unbounded"
            // to the connector): the row's latency columns stay empty.
            let latency_events = (rate as f64 * params.latency_seconds) as u64;
            let h: Histogram<u64> = if latency_events == 0 {
                crate::report::histogram()
            } else {
                let paced = format!(", 'rate-limited' = 'true', 'next-event.rate' = '{rate}'");
                let d = ddl(latency_events, &paced)?.replace("'next-event.rate' = '10000000',", "");
                let l = run(vec![d, query.clone()], p, false, true, params.cores)
                    .with_context(|| format!("{q} at parallelism {p}, paced"))?;
                let _ = std::fs::remove_dir_all(scratch_dir());
                // The sink: the last vertex that measured markers.
                l.from_source
                    .iter()
                    .rev()
                    .find(|(n, _)| n.contains("Sink"))
                    .or(l.from_source.last())
                    .map(|(_, h)| h.clone())
                    .unwrap_or_else(crate::report::histogram)
            };
            let q_ = |x: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(x)
                }
            };
            let row = Row {
                query: q.clone(),
                parallelism: p,
                events: params.events,
                seconds,
                events_per_s: eps,
                events_per_s_per_core: eps / p as f64,
                latency_rate: rate,
                p50_ns: q_(0.5),
                p99_ns: q_(0.99),
                p999_ns: q_(0.999),
                max_ns: if h.is_empty() { 0 } else { h.max() },
                markers: h.len(),
            };
            eprintln!(
                "{:<4} p={} {:>7.2} M events/s ({:.2} M/s per core); at {} events/s: p50 {} p99 {} p99.9 {} max {} ({} markers)",
                row.query,
                p,
                eps / 1e6,
                row.events_per_s_per_core / 1e6,
                rate,
                us(row.p50_ns),
                us(row.p99_ns),
                us(row.p999_ns),
                us(row.max_ns),
                row.markers
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

/// Prints the rows as a table.
pub fn print(rows: &[Row]) {
    println!(
        "{:<5} {:>3} {:>12} {:>10} {:>14} {:>16} {:>10} {:>10} {:>10} {:>10}",
        "query",
        "p",
        "events",
        "seconds",
        "events/s",
        "events/s/core",
        "p50",
        "p99",
        "p99.9",
        "max"
    );
    for r in rows {
        println!(
            "{:<5} {:>3} {:>12} {:>10.3} {:>14.0} {:>16.0} {:>10} {:>10} {:>10} {:>10}",
            r.query,
            r.parallelism,
            r.events,
            r.seconds,
            r.events_per_s,
            r.events_per_s_per_core,
            us(r.p50_ns),
            us(r.p99_ns),
            us(r.p999_ns),
            us(r.max_ns)
        );
    }
}
