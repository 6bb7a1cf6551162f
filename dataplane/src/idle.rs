//! Idle strategies: what a pinned thread does after a duty cycle that found no work.
//!
//! The runner loop is `idle.idle(do_work())`: a thread that did work never idles, and
//! the strategy resets its escalation. Strategies are chosen by name from configuration
//! (`taskmanager.idle-strategy`), so a latency box can spin while a laptop or a 2-core CI
//! machine parks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// What to do when a duty cycle found no work.
pub trait IdleStrategy: Send + fmt::Debug {
    /// Called after every duty cycle with the work it did; idles only when it is zero.
    #[inline]
    fn idle(&mut self, work_count: usize) {
        if work_count > 0 {
            self.reset();
        } else {
            self.idle_once();
        }
    }

    /// Idles once, escalating if the strategy escalates.
    fn idle_once(&mut self);

    /// Work was found: start again from the cheapest step.
    fn reset(&mut self);

    /// The configuration name.
    fn name(&self) -> &'static str;
}

/// Spins on the CPU's pause hint: the lowest wake-up latency, one core burnt.
#[derive(Debug, Default, Clone, Copy)]
pub struct BusySpin;

impl IdleStrategy for BusySpin {
    #[inline]
    fn idle_once(&mut self) {
        std::hint::spin_loop();
    }
    fn reset(&mut self) {}
    fn name(&self) -> &'static str {
        "busy-spin"
    }
}

/// Does nothing at all between duty cycles.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOp;

impl IdleStrategy for NoOp {
    #[inline]
    fn idle_once(&mut self) {}
    fn reset(&mut self) {}
    fn name(&self) -> &'static str {
        "no-op"
    }
}

/// Yields the CPU to the scheduler (a syscall) each idle cycle.
#[derive(Debug, Default, Clone, Copy)]
pub struct Yield;

impl IdleStrategy for Yield {
    fn idle_once(&mut self) {
        std::thread::yield_now();
    }
    fn reset(&mut self) {}
    fn name(&self) -> &'static str {
        "yield"
    }
}

/// Parks the thread for a fixed time each idle cycle (woken early by an unpark).
///
/// A timed park ends up to the thread's timer slack late: 50 µs by default, which would
/// make a 10 µs park a 60 µs one. Threads that park lower their slack first
/// ([`crate::sys::set_timer_slack_ns`]; slot threads do when they start).
#[derive(Debug, Clone, Copy)]
pub struct Park {
    /// How long to park.
    pub duration: Duration,
}

impl Default for Park {
    fn default() -> Self {
        Self {
            duration: Duration::from_micros(100),
        }
    }
}

impl IdleStrategy for Park {
    fn idle_once(&mut self) {
        std::thread::park_timeout(self.duration);
    }
    fn reset(&mut self) {}
    fn name(&self) -> &'static str {
        "park"
    }
}

/// Spins, then yields, then parks with a doubling timeout, each step bounded; any work
/// found resets it to spinning. Its parks are as long as asked only with a low timer
/// slack (see [`Park`]).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Idle cycles spent spinning before yielding.
    pub max_spins: u32,
    /// Idle cycles spent yielding before parking.
    pub max_yields: u32,
    /// First park time.
    pub min_park: Duration,
    /// Longest park time.
    pub max_park: Duration,
    spins: u32,
    yields: u32,
    park: Duration,
}

impl Backoff {
    /// A backoff with these bounds.
    pub fn new(max_spins: u32, max_yields: u32, min_park: Duration, max_park: Duration) -> Self {
        Self {
            max_spins,
            max_yields,
            min_park,
            max_park: max_park.max(min_park),
            spins: 0,
            yields: 0,
            park: min_park,
        }
    }

    /// Which step the next idle cycle takes (for tests and metrics).
    pub fn phase(&self) -> BackoffPhase {
        if self.spins < self.max_spins {
            BackoffPhase::Spin
        } else if self.yields < self.max_yields {
            BackoffPhase::Yield
        } else {
            BackoffPhase::Park(self.park)
        }
    }
}

/// A step of [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffPhase {
    /// Spinning.
    Spin,
    /// Yielding.
    Yield,
    /// Parking for this long.
    Park(Duration),
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(100, 10, Duration::from_micros(1), Duration::from_millis(1))
    }
}

impl IdleStrategy for Backoff {
    fn idle_once(&mut self) {
        match self.phase() {
            BackoffPhase::Spin => {
                self.spins += 1;
                std::hint::spin_loop();
            }
            BackoffPhase::Yield => {
                self.yields += 1;
                std::thread::yield_now();
            }
            BackoffPhase::Park(d) => {
                std::thread::park_timeout(d);
                self.park = (self.park * 2).min(self.max_park);
            }
        }
    }

    fn reset(&mut self) {
        self.spins = 0;
        self.yields = 0;
        self.park = self.min_park;
    }

    fn name(&self) -> &'static str {
        "backoff"
    }
}

/// An idle strategy by configuration name: `busy-spin`, `yield`, `backoff`, `park`,
/// `no-op`; `park` takes an optional duration, as `park:50us` (units ns, us, ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStrategyKind {
    /// [`BusySpin`].
    BusySpin,
    /// [`Yield`].
    Yield,
    /// [`Backoff`] with its defaults.
    Backoff,
    /// [`Park`] for this long.
    Park(Duration),
    /// [`NoOp`].
    NoOp,
}

impl IdleStrategyKind {
    /// A fresh strategy of this kind.
    pub fn build(&self) -> Box<dyn IdleStrategy> {
        match *self {
            Self::BusySpin => Box::new(BusySpin),
            Self::Yield => Box::new(Yield),
            Self::Backoff => Box::new(Backoff::default()),
            Self::Park(duration) => Box::new(Park { duration }),
            Self::NoOp => Box::new(NoOp),
        }
    }

    /// Whether a thread with this strategy keeps its core busy while idle.
    pub fn spins(&self) -> bool {
        matches!(self, Self::BusySpin | Self::NoOp)
    }
}

impl fmt::Display for IdleStrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BusySpin => f.write_str("busy-spin"),
            Self::Yield => f.write_str("yield"),
            Self::Backoff => f.write_str("backoff"),
            Self::Park(d) => write!(f, "park:{}us", d.as_micros()),
            Self::NoOp => f.write_str("no-op"),
        }
    }
}

/// An unknown idle strategy name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown idle strategy {0:?}: expected busy-spin, yield, backoff, park[:DURATION] or no-op"
)]
pub struct UnknownIdleStrategy(pub String);

impl FromStr for IdleStrategyKind {
    type Err = UnknownIdleStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnknownIdleStrategy(s.to_string());
        Ok(match s.trim() {
            "busy-spin" | "busy_spin" | "spin" => Self::BusySpin,
            "yield" => Self::Yield,
            "backoff" => Self::Backoff,
            "park" | "sleep" => Self::Park(Park::default().duration),
            "no-op" | "noop" => Self::NoOp,
            other => {
                let d = other
                    .strip_prefix("park:")
                    .or_else(|| other.strip_prefix("sleep:"))
                    .ok_or_else(err)?;
                Self::Park(parse_short_duration(d).ok_or_else(err)?)
            }
        })
    }
}

fn parse_short_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit {
        "ns" => Duration::from_nanos(n),
        "us" | "µs" => Duration::from_micros(n),
        "ms" => Duration::from_millis(n),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ["busy-spin", "yield", "backoff", "no-op", "park:250us"] {
            let kind: IdleStrategyKind = name.parse().unwrap();
            assert_eq!(kind.to_string(), name);
            assert_eq!(kind.build().name(), name.split(':').next().unwrap());
        }
        assert_eq!(
            "park:2ms".parse::<IdleStrategyKind>().unwrap(),
            IdleStrategyKind::Park(Duration::from_millis(2))
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        for bad in [
            "",
            "spinny",
            "park:",
            "park:0us",
            "park:10parsecs",
            "park:-1ms",
        ] {
            let e = bad.parse::<IdleStrategyKind>().unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn backoff_escalates_within_bounds_and_resets_on_work() {
        let mut b = Backoff::new(3, 2, Duration::from_nanos(100), Duration::from_nanos(400));
        let mut phases = Vec::new();
        for _ in 0..9 {
            phases.push(b.phase());
            b.idle(0);
        }
        use BackoffPhase::*;
        let ns = Duration::from_nanos;
        assert_eq!(
            phases,
            [
                Spin,
                Spin,
                Spin,
                Yield,
                Yield,
                Park(ns(100)),
                Park(ns(200)),
                Park(ns(400)),
                Park(ns(400))
            ]
        );
        b.idle(5);
        assert_eq!(b.phase(), Spin);
    }
}
