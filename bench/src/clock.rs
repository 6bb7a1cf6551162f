//! A cheap, calibrated cycle clock for timing individual round trips.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Converts timestamp-counter ticks to nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    ns_per_tick: f64,
}

impl Clock {
    /// Calibrates the tick rate against the monotonic clock over ~50 ms.
    pub fn calibrate() -> Self {
        let (t0, i0) = (ticks(), Instant::now());
        while i0.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let (t1, elapsed) = (ticks(), i0.elapsed());
        let dt = t1.wrapping_sub(t0).max(1);
        Self {
            ns_per_tick: elapsed.as_nanos() as f64 / dt as f64,
        }
    }

    /// Ticks to nanoseconds.
    #[inline(always)]
    pub fn ns(&self, ticks: u64) -> u64 {
        (ticks as f64 * self.ns_per_tick) as u64
    }
}

/// The timestamp counter (x86_64) or monotonic nanoseconds elsewhere.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // The TSC is invariant on the CPUs this runs on; calibration turns ticks into ns.
        // SAFETY: rdtsc has no preconditions on x86_64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}
