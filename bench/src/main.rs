//! spate's benchmark harnesses. `cargo run --release -p bench -- ring` and friends.
//!
//! Benchmarks pin their threads (the cores are printed) and may busy-spin: run them on a
//! quiet machine, and compare variants within one run, as ratios.
#![allow(clippy::unwrap_used, clippy::panic)]

mod bars;
mod clock;
mod cluster;
mod hiccup;
mod net;
mod nexmark;
mod report;
mod ring;
mod snapshot;
mod timely_w1;
mod timely_w2;
mod vwap;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "bench", about = "spate benchmark harnesses")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Ring latency and throughput against the atomic floor, ArrayQueue and rtrb.
    Ring {
        /// Round trips per ping-pong variant.
        #[arg(long, default_value_t = 1_000_000)]
        round_trips: u64,
        /// Frames per streaming variant.
        #[arg(long, default_value_t = 20_000_000)]
        frames: u64,
        /// Interleaved rounds the counts are split over.
        #[arg(long, default_value_t = 5)]
        rounds: u64,
        /// Write the rows as a JSON array to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Workload W1 (VWAP) on the MiniCluster beside timely dataflow: throughput at p=1
    /// and p=2, latency at fixed offered rates, spate's highest sustained rate, the
    /// targeted spate/timely ratios, and an SVG of the latency percentile distributions.
    Vwap {
        /// Trades per throughput run.
        #[arg(long, default_value_t = 50_000_000)]
        events: u64,
        /// Throughput repetitions (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds of each fixed-rate run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Write `{"rows": [...], "ratios": {...}}` as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the latency plot (SVG) to this file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// What a checkpoint costs: W1's keyed state of 1 K, 100 K and 1 M symbols frozen
    /// on the slot, encoded by the snapshot writer, written after the freeze (chunks
    /// copied) and restored, beside a copy at the barrier and serde_json.
    Snapshot {
        /// Reps per size (at most 10 for 1 M keys).
        #[arg(long, default_value_t = 50)]
        reps: u64,
        /// Sizes (keys), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        keys: Vec<u32>,
        /// Write the rows as a JSON array to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Workload W2 (one-second bars in event time) on the MiniCluster beside timely
    /// dataflow: throughput at p=1 and p=2 (with W1 at p=1 for reference), firing
    /// latency at 1 M trades/s, and the targeted figures.
    Bars {
        /// Trades per throughput run.
        #[arg(long, default_value_t = 20_000_000)]
        events: u64,
        /// Throughput repetitions (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Seconds of each 1 M/s run (one-second windows: a window fires per second).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// How far a trade's event time may lag its send time, and the watermark bound.
        #[arg(long, default_value = "5 ms")]
        disorder: String,
        /// Window size.
        #[arg(long, default_value = "1 s")]
        window: String,
        /// Write `{"rows": [...], "ratios": {...}, "schedule_wait": [...]}` as JSON to
        /// this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The Nexmark queries spate runs (nexmark/q*.sql), per parallelism: events/s and
    /// events/s per core as fast as possible, and marker latency at a paced rate.
    Nexmark {
        /// Events per throughput run.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Queries (default: every one that runs).
        #[arg(long, value_delimiter = ',')]
        queries: Vec<String>,
        /// Parallelisms.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        parallelism: Vec<usize>,
        /// Offered rate of the latency runs, events/s.
        #[arg(long, default_value_t = 200_000)]
        latency_rate: u64,
        /// Seconds of each latency run (0: no latency runs, throughput only).
        #[arg(long, default_value_t = 3.0)]
        latency_seconds: f64,
        /// The latency runs' offered rate as a fraction of the query's measured
        /// throughput (capped by --latency-rate).
        #[arg(long, default_value_t = 0.5)]
        latency_load: f64,
        /// Write the rows as a JSON array to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Control-plane reaction times on a loopback cluster of the real binaries:
    /// submission to first record, TaskManager death to RUNNING again.
    Cluster {
        /// Repetitions.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// heartbeat.interval, ms.
        #[arg(long, default_value_t = 100)]
        heartbeat_interval_ms: u64,
        /// heartbeat.timeout, ms.
        #[arg(long, default_value_t = 1000)]
        heartbeat_timeout_ms: u64,
        /// Write the rows as a JSON array to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Channels between hosts over loopback: ping-pong and streaming of 64-byte frames
    /// through the multiplexer on io_uring and on non-blocking sockets ("epoll"),
    /// beside blocking sockets.
    Net {
        /// Round trips per ping-pong variant.
        #[arg(long, default_value_t = 100_000)]
        round_trips: u64,
        /// Frames per streaming variant.
        #[arg(long, default_value_t = 5_000_000)]
        frames: u64,
        /// io_uring: single receives instead of multishot into provided buffers.
        #[arg(long)]
        single_recv: bool,
        /// io_uring: a kernel SQPOLL thread idling after this many ms (not with
        /// busy-polling threads on few cores).
        #[arg(long)]
        sqpoll_idle_ms: Option<u32>,
        /// Write the rows as a JSON array to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The platform's hiccups: a pinned thread reading the clock, recording its gaps
    /// (the floor under any latency tail on this machine).
    Hiccup {
        /// Seconds per core.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// (internal) the child process of the process benchmarks.
    #[command(hide = true)]
    RingChild {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn two_cores() -> Result<(usize, usize)> {
    let mut cores: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    cores.sort_unstable();
    match cores.as_slice() {
        [a, b, ..] => Ok((*a, *b)),
        [a] => {
            eprintln!("warning: only core {a} is available; both sides share it");
            Ok((*a, *a))
        }
        [] => bail!("no core is available to pin to"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Ring {
            round_trips,
            frames,
            rounds,
            json,
        } => {
            let cores = two_cores()?;
            eprintln!(
                "ring: {round_trips} round trips and {frames} frames of {} bytes per variant, \
                 {rounds} interleaved rounds, pinned to cores {} and {}",
                ring::FRAME,
                cores.0,
                cores.1
            );
            let rows = ring::run(&ring::Params {
                round_trips,
                frames,
                rounds,
                cores,
            })?;
            report::print_table(&rows, ring::FRAME);
            report::print_ratios(&rows, "spate");
            if let Some(path) = json {
                report::write_json(&path, &rows)?;
                eprintln!("wrote {}", path.display());
            }
        }
        Cmd::Vwap {
            events,
            reps,
            seconds,
            json,
            plot,
        } => {
            let cores = two_cores()?;
            eprintln!(
                "vwap: {events} trades per throughput run ({reps} reps), {seconds} s per paced run, \
                 spate's slots and timely's workers pinned to cores {} and {}, busy-spin/busy-poll",
                cores.0, cores.1
            );
            let report = vwap::run(&vwap::Params {
                events,
                reps,
                seconds,
                cores,
                plot,
            })?;
            vwap::print(&report);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
                eprintln!("wrote {}", path.display());
            }
        }
        Cmd::Snapshot { reps, keys, json } => {
            eprintln!(
                "snapshot: W1's keyed state at {keys:?} keys, {reps} reps (TSC-timed, one thread)"
            );
            let rows = snapshot::run(&keys, reps.max(1))?;
            snapshot::print(&rows);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
                eprintln!("wrote {}", path.display());
            }
        }
        Cmd::Bars {
            events,
            reps,
            seconds,
            disorder,
            window,
            json,
        } => {
            let mut spec = spate::jobs::JobSpec::new("bars");
            spec.disorder = Some(disorder);
            spec.window = Some(window);
            let (disorder_ns, window_ns) = spec.bars_times().map_err(anyhow::Error::msg)?;
            let cores = two_cores()?;
            eprintln!(
                "bars: {events} trades per throughput run ({reps} reps), {seconds} s per run at \
                 1 M/s, disorder {disorder_ns} ns, windows of {window_ns} ns, spate's slots and \
                 timely's workers pinned to cores {} and {}, busy-spin/busy-poll",
                cores.0, cores.1
            );
            let report = bars::run(&bars::Params {
                events,
                reps,
                seconds,
                disorder_ns,
                window_ns,
                cores,
            })?;
            bars::print(&report);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")?;
                eprintln!("wrote {}", path.display());
            }
        }
        Cmd::Nexmark {
            events,
            queries,
            parallelism,
            latency_rate,
            latency_seconds,
            latency_load,
            json,
        } => {
            let cores = two_cores()?;
            let queries = if queries.is_empty() {
                nexmark::QUERIES.iter().map(|q| q.to_string()).collect()
            } else {
                queries
            };
            if parallelism.iter().any(|p| *p == 0 || *p > 2) {
                bail!("--parallelism takes 1 or 2 (one pinned slot per core)");
            }
            // The connector reads 0 events as "unbounded": a run would never end.
            if events == 0 {
                bail!("--events takes a positive number of events");
            }
            if !(latency_seconds.is_finite() && latency_seconds >= 0.0) {
                bail!(
                    "--latency-seconds takes a duration in seconds, 0 or more (0: no latency runs)"
                );
            }
            if !(latency_load > 0.0 && latency_load <= 1.0) {
                bail!("--latency-load takes a fraction above 0 and at most 1");
            }
            eprintln!(
                "nexmark: {events} events per throughput run; latency runs of {latency_seconds} s at \
                 {latency_load} of each query's throughput (at most {latency_rate} events/s); \
                 slots pinned to cores {} and {}, busy-spin",
                cores.0, cores.1
            );
            let rows = nexmark::run_all(&nexmark::Params {
                events,
                queries,
                parallelism,
                latency_rate,
                latency_seconds,
                latency_load,
                cores,
            })?;
            nexmark::print(&rows);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
                eprintln!("wrote {}", path.display());
            }
        }
        Cmd::Cluster {
            reps,
            heartbeat_interval_ms,
            heartbeat_timeout_ms,
            json,
        } => {
            let p = cluster::Params {
                reps,
                heartbeat_interval_ms,
                heartbeat_timeout_ms,
            };
            let rows = cluster::run(&p)?;
            cluster::print(&rows, &p);
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
            }
        }
        Cmd::Net {
            round_trips,
            frames,
            single_recv,
            sqpoll_idle_ms,
            json,
        } => {
            let uring = spate_dataplane::net::UringOptions {
                sqpoll_idle_ms,
                multishot: !single_recv,
            };
            let cores = two_cores()?;
            eprintln!(
                "net: {round_trips} round trips and {frames} frames of {} bytes per variant, \
                 pinned to cores {} and {}, busy-polling",
                net::FRAME,
                cores.0,
                cores.1
            );
            let rows = net::run(round_trips, frames, cores, uring)?;
            report::print_table(&rows, net::FRAME);
            report::print_ratios(&rows, "io_uring");
            if let Some(path) = json {
                report::write_json(&path, &rows)?;
            }
        }
        Cmd::Hiccup { seconds } => {
            let cores = two_cores()?;
            for core in [cores.0, cores.1] {
                let h = hiccup::measure(core, std::time::Duration::from_secs_f64(seconds));
                println!("core {core}: {h}");
            }
        }
        Cmd::RingChild { args } => ring::child_main(&args)?,
    }
    Ok(())
}
