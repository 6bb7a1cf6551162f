//! The data plane's clock: nanoseconds on the host's `CLOCK_MONOTONIC` scale, read from
//! the timestamp counter where it is usable (a few ns, no vDSO call), so that a source can
//! stamp and a sink can age every record.
//!
//! The TSC is calibrated once per process against `CLOCK_MONOTONIC` and offset onto it, so
//! timestamps from two processes on one host compare (to within the calibration error).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy)]
struct Calibration {
    tsc0: u64,
    mono0: u64,
    /// Nanoseconds per tick, as a 32.32 fixed-point number.
    ns_per_tick_q32: u64,
}

static CAL: OnceLock<Option<Calibration>> = OnceLock::new();

#[inline(always)]
fn rdtsc() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86_64.
        Some(unsafe { core::arch::x86_64::_rdtsc() })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

fn tsc_usable() -> bool {
    // An invariant TSC runs at a constant rate across P-states and is synchronised
    // across cores; without the flag, fall back to the monotonic clock.
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.contains(" constant_tsc") && s.contains(" nonstop_tsc"))
        .unwrap_or(false)
}

fn calibrate() -> Option<Calibration> {
    if !tsc_usable() {
        return None;
    }
    let t0 = rdtsc()?;
    let m0 = crate::sys::monotonic_ns();
    let spin_until = m0 + 20_000_000;
    while crate::sys::monotonic_ns() < spin_until {
        std::hint::spin_loop();
    }
    let t1 = rdtsc()?;
    let m1 = crate::sys::monotonic_ns();
    let ticks = t1.checked_sub(t0).filter(|&t| t > 0)?;
    let q = (((m1 - m0) as u128) << 32) / ticks as u128;
    Some(Calibration {
        tsc0: t1,
        mono0: skewed(m1),
        ns_per_tick_q32: u64::try_from(q).ok()?,
    })
}

/// Calibrates now (20 ms) rather than on the first [`now_ns`] call.
pub fn init() {
    CAL.get_or_init(calibrate);
}

/// Now, in nanoseconds on the `CLOCK_MONOTONIC` scale.
#[inline(always)]
pub fn now_ns() -> u64 {
    match CAL.get_or_init(calibrate) {
        Some(c) => match rdtsc() {
            Some(t) => {
                // Signed: another core's counter may read a little behind the calibration.
                let dt = t.wrapping_sub(c.tsc0) as i64 as i128;
                let ns = (dt * c.ns_per_tick_q32 as i128) >> 32;
                (c.mono0 as i128 + ns).max(0) as u64
            }
            None => skewed(crate::sys::monotonic_ns()),
        },
        None => skewed(crate::sys::monotonic_ns()),
    }
}

/// `SPATE_CLOCK_SKEW_NS`: added to every reading of this process's clock, as if it ran
/// on a host whose monotonic clock counts from another boot (tests of the cluster
/// clock use it; 0 without the variable).
fn skew_ns() -> i64 {
    static SKEW: OnceLock<i64> = OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("SPATE_CLOCK_SKEW_NS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    })
}

#[inline]
fn skewed(mono: u64) -> u64 {
    mono.saturating_add_signed(skew_ns())
}

/// The clock this process reads: processes with the same domain read one
/// `CLOCK_MONOTONIC` (one kernel since its boot), so their timestamps compare as they
/// are; across domains they need the cluster offset ([`cluster_ns`]).
pub fn clock_domain() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    match skew_ns() {
        0 => boot,
        s => format!("{boot}+{s}"),
    }
}

/// What to add to this process's [`now_ns`] for the cluster's clock: the leading
/// JobManager's monotonic clock, as this process's TaskManager estimates it from
/// heartbeat round trips (0 where the two share a clock, and in a MiniCluster).
/// Relaxed: one value, read with no other data depending on it.
static CLUSTER_OFFSET_NS: AtomicI64 = AtomicI64::new(0);

/// Sets the offset to the cluster's clock.
pub fn set_cluster_offset(ns: i64) {
    CLUSTER_OFFSET_NS.store(ns, Ordering::Relaxed);
}

/// The offset to the cluster's clock.
pub fn cluster_offset() -> i64 {
    CLUSTER_OFFSET_NS.load(Ordering::Relaxed)
}

/// A [`now_ns`] reading on the cluster's clock: what sources stamp records and latency
/// markers with and what sinks and tasks age them by, so that latencies between hosts
/// compare.
#[inline(always)]
pub fn cluster_ns(local: u64) -> u64 {
    local.saturating_add_signed(CLUSTER_OFFSET_NS.load(Ordering::Relaxed))
}

static WALL_OFFSET: OnceLock<u64> = OnceLock::new();

/// What to add to a [`now_ns`] reading for the wall clock (ns since the Unix epoch),
/// read once per process.
fn wall_offset() -> u64 {
    *WALL_OFFSET.get_or_init(|| {
        let mono = now_ns();
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        wall.saturating_sub(mono)
    })
}

/// A [`now_ns`] reading as processing time: ns since the Unix epoch, as Flink's
/// processing time is (so that processing-time windows align to the wall clock and
/// their bounds read as dates). Steps of the wall clock after the first call do not
/// move it: it advances with the monotonic clock.
#[inline]
pub fn processing_time(now: u64) -> u64 {
    now.saturating_add(wall_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_time_reads_as_the_wall_clock() {
        let p = processing_time(now_ns());
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        assert!(p.abs_diff(wall) < 1_000_000_000, "{p} {wall}");
    }

    #[test]
    fn tracks_the_monotonic_clock() {
        init();
        for _ in 0..5 {
            let a = crate::sys::monotonic_ns();
            let b = now_ns();
            let c = crate::sys::monotonic_ns();
            // Within 1 ms of the monotonic reading around it (calibration error).
            assert!(b + 1_000_000 >= a && b <= c + 1_000_000, "{a} {b} {c}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let x = now_ns();
        assert!(now_ns() >= x);
    }
}
