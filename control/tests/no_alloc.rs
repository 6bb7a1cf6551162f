//! No heap allocation per record in steady state, on the chained hot path (W1 and W2
//! at parallelism 1, one chain) and across rings (at parallelism 2, a key exchange):
//! the allocations of a run must not grow with the number of events.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate::api::StreamExecutionEnvironment;
use spate::config::Config;
use spate::graph::JobGraph;
use spate::jobs::{self, BarsParams, VwapParams};
use spate::minicluster::{JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use spate_dataplane::operator::source::Pace;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The two jobs measured.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// W1: keyed VWAP per trade.
    Vwap,
    /// W2: a tumbling event-time window per symbol over disordered trades (one window
    /// of a day, so that the runs fire the same windows: at their end).
    Bars,
}

/// Allocations made while the MiniCluster runs `job` with `events` trades.
fn allocations(job: Job, parallelism: usize, events: u64) -> u64 {
    let env = StreamExecutionEnvironment::new("no-alloc");
    match job {
        Job::Vwap => {
            jobs::vwap(
                &env,
                VwapParams {
                    seed: 1,
                    events: Some(events),
                    pace: Pace::Unpaced,
                    latency_sample: 1,
                },
            );
        }
        Job::Bars => {
            jobs::bars(
                &env,
                BarsParams {
                    seed: 1,
                    events: Some(events),
                    pace: Pace::Unpaced,
                    disorder_ns: 5_000_000,
                    window_ns: 86_400_000_000_000,
                },
            )
            .unwrap();
        }
    }
    let graph = JobGraph::build(env.stream_graph(), Some(parallelism), 1, true).unwrap();
    let config = Config {
        slots: 2,
        idle: IdleStrategyKind::Backoff,
        ring_size: 1 << 16,
        ..Config::default()
    };
    spate_dataplane::clock::init();
    let mut mc = MiniCluster::start(&config).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let before = ALLOCS.load(Relaxed);
    let r = mc
        .execute(&graph, &cancel, Duration::from_secs(3600), &mut |_| {})
        .unwrap();
    let n = ALLOCS.load(Relaxed) - before;
    assert_eq!(r.status, JobStatus::Finished);
    if let Job::Vwap = job {
        assert_eq!(r.progress.records, events);
    }
    n
}

#[test]
fn allocations_do_not_grow_with_events() {
    for job in [Job::Vwap, Job::Bars] {
        for p in [1, 2] {
            // Warm-up run: lazily initialised statics (clock, thread locals) allocate once.
            allocations(job, p, 10_000);
            let small = allocations(job, p, 100_000);
            let large = allocations(job, p, 2_000_000);
            eprintln!(
                "{job:?} at parallelism {p}: {small} allocations for 100k events, {large} for 2M"
            );
            // 1.9M more records; deployment and per-key state are the same in both runs.
            // Slack covers timing-dependent growth of an overflow queue and of the number
            // of metric publications (neither allocates per record).
            assert!(
                large <= small + 64,
                "{job:?} at parallelism {p}: {small} allocations for 100k events, {large} for 2M"
            );
        }
    }
}
