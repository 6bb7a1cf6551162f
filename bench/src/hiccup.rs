//! The platform's own hiccups: a pinned thread that does nothing but read the clock,
//! recording every gap between two readings. Whatever stalls it (timer interrupts, the
//! hypervisor taking the vCPU, other threads) stalls a pinned slot alike, so these gaps
//! are the floor under any pipeline's latency tail on this machine.

use crate::clock::{ticks, Clock};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// What a hiccup run saw.
#[derive(Debug, Clone)]
pub struct Hiccups {
    /// Seconds measured.
    pub seconds: f64,
    /// Fraction of the time spent in gaps of 1 µs or more.
    pub stalled_fraction: f64,
    /// Gaps of 10 µs or more, per second.
    pub gaps_over_10us_per_s: f64,
    /// Gaps of 1 µs or more, ns.
    pub gaps: Histogram<u64>,
}

/// Spins on `core` for `dur`, recording gaps of 1 µs or more.
pub fn measure(core: usize, dur: Duration) -> Hiccups {
    let clock = Clock::calibrate();
    let core_id = core_affinity::CoreId { id: core };
    std::thread::spawn(move || {
        let _ = core_affinity::set_for_current(core_id);
        let mut gaps = crate::report::histogram();
        let start = Instant::now();
        let mut last = ticks();
        let mut stalled_ns = 0u64;
        let mut over_10us = 0u64;
        let mut n = 0u32;
        loop {
            let now = ticks();
            let gap = clock.ns(now.wrapping_sub(last));
            last = now;
            if gap >= 1_000 {
                let _ = gaps.record(gap);
                stalled_ns += gap;
                over_10us += u64::from(gap >= 10_000);
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(4096) && start.elapsed() >= dur {
                break;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Hiccups {
            seconds,
            stalled_fraction: stalled_ns as f64 / (seconds * 1e9),
            gaps_over_10us_per_s: over_10us as f64 / seconds,
            gaps,
        }
    })
    .join()
    .unwrap_or_else(|_| Hiccups {
        seconds: 0.0,
        stalled_fraction: 0.0,
        gaps_over_10us_per_s: 0.0,
        gaps: crate::report::histogram(),
    })
}

impl std::fmt::Display for Hiccups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |x| {
            if self.gaps.is_empty() {
                0.0
            } else {
                self.gaps.value_at_quantile(x) as f64 / 1e3
            }
        };
        write!(
            f,
            "stalled {:.2}% of {:.1} s; {:.0} gaps ≥10 µs per second; gaps ≥1 µs: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
            self.stalled_fraction * 100.0,
            self.seconds,
            self.gaps_over_10us_per_s,
            q(0.5),
            q(0.99),
            if self.gaps.is_empty() { 0.0 } else { self.gaps.max() as f64 / 1e3 }
        )
    }
}
