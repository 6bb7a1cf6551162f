//! The data plane's clock: nanoseconds on the host's `CLOCK_MONOTONIC` scale, read from
//! the timestamp counter where it is usable (a few ns, no vDSO call), so that a source can
//! stamp and a sink can age every record.
//!
//! The TSC is calibrated once per process against `CLOCK_MONOTONIC` and offset onto it, so
//! timestamps from two processes on one host compare (to within the calibration error).
#![allow(unsafe_code)]

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
        mono0: m1,
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
            None => crate::sys::monotonic_ns(),
        },
        None => crate::sys::monotonic_ns(),
    }
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
