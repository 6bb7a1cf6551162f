//! Restart strategies, with Flink's names and semantics: after each failure the
//! strategy is told (`notify_failure`), then says whether the job may restart and how
//! long to wait first. Time is injected (`now_ms`), so the timing is tested without
//! sleeping.

use crate::config::{Config, RestartStrategyType};
use std::collections::VecDeque;
use std::time::Duration;

/// Decides whether and when a failed job restarts (Flink's RestartBackoffTimeStrategy).
pub trait RestartBackoffTimeStrategy: Send + std::fmt::Debug {
    /// A failure happened at `now_ms` (any monotonic millisecond clock).
    fn notify_failure(&mut self, now_ms: u64);
    /// Whether the job may restart after the failures notified so far.
    fn can_restart(&self) -> bool;
    /// How long to wait before restarting.
    fn backoff_time(&self) -> Duration;
}

/// Never restart.
#[derive(Debug, Default)]
pub struct NoRestart;

impl RestartBackoffTimeStrategy for NoRestart {
    fn notify_failure(&mut self, _: u64) {}
    fn can_restart(&self) -> bool {
        false
    }
    fn backoff_time(&self) -> Duration {
        Duration::ZERO
    }
}

/// Restart up to `attempts` times, waiting `delay` each time.
#[derive(Debug)]
pub struct FixedDelay {
    attempts: u32,
    delay: Duration,
    failures: u32,
}

impl FixedDelay {
    /// `restart-strategy.fixed-delay.attempts` / `.delay`.
    pub fn new(attempts: u32, delay: Duration) -> Self {
        Self {
            attempts,
            delay,
            failures: 0,
        }
    }
}

impl RestartBackoffTimeStrategy for FixedDelay {
    fn notify_failure(&mut self, _: u64) {
        self.failures = self.failures.saturating_add(1);
    }
    fn can_restart(&self) -> bool {
        self.failures <= self.attempts
    }
    fn backoff_time(&self) -> Duration {
        self.delay
    }
}

/// Restart while at most `max_failures` failures fall within any `interval`, waiting
/// `delay` each time.
#[derive(Debug)]
pub struct FailureRate {
    max_failures: u32,
    interval_ms: u64,
    delay: Duration,
    failures: VecDeque<u64>,
}

impl FailureRate {
    /// `restart-strategy.failure-rate.max-failures-per-interval` /
    /// `.failure-rate-interval` / `.delay`.
    pub fn new(max_failures: u32, interval: Duration, delay: Duration) -> Self {
        Self {
            max_failures,
            interval_ms: interval.as_millis() as u64,
            delay,
            failures: VecDeque::new(),
        }
    }
}

impl RestartBackoffTimeStrategy for FailureRate {
    fn notify_failure(&mut self, now_ms: u64) {
        self.failures.push_back(now_ms);
        while let Some(&t) = self.failures.front() {
            if now_ms.saturating_sub(t) >= self.interval_ms {
                self.failures.pop_front();
            } else {
                break;
            }
        }
    }
    fn can_restart(&self) -> bool {
        self.failures.len() <= self.max_failures as usize
    }
    fn backoff_time(&self) -> Duration {
        self.delay
    }
}

/// Exponential backoff with jitter: the first failure waits `initial`, each further one
/// `multiplier` times longer, up to `max`. A job that ran without failing for
/// `reset_threshold` (plus the last backoff) starts again from `initial`. At most
/// `attempts_before_reset` restarts between resets. Failures while a restart is
/// pending count once.
#[derive(Debug)]
pub struct ExponentialDelay {
    initial_ms: f64,
    max_ms: f64,
    multiplier: f64,
    reset_threshold_ms: u64,
    jitter: f64,
    attempts_before_reset: u32,
    current_ms: Option<f64>,
    jittered_ms: u64,
    last_failure_ms: Option<u64>,
    attempts: u32,
    rng: u64,
}

/// Parameters of [`ExponentialDelay`] (Flink's `restart-strategy.exponential-delay.*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExponentialDelayParams {
    /// `initial-backoff`
    pub initial: Duration,
    /// `max-backoff`
    pub max: Duration,
    /// `backoff-multiplier` (≥ 1)
    pub multiplier: f64,
    /// `reset-backoff-threshold`
    pub reset_threshold: Duration,
    /// `jitter-factor` (0..=1): the backoff is drawn from ±factor around its value.
    pub jitter: f64,
    /// `attempts-before-reset-backoff`
    pub attempts_before_reset: u32,
}

impl Default for ExponentialDelayParams {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 1.5,
            reset_threshold: Duration::from_secs(3600),
            jitter: 0.1,
            attempts_before_reset: u32::MAX,
        }
    }
}

impl ExponentialDelay {
    /// With these parameters; `seed` drives the jitter.
    pub fn new(p: ExponentialDelayParams, seed: u64) -> Self {
        Self {
            initial_ms: p.initial.as_millis() as f64,
            max_ms: (p.max.as_millis() as f64).max(p.initial.as_millis() as f64),
            multiplier: p.multiplier.max(1.0),
            reset_threshold_ms: p.reset_threshold.as_millis() as u64,
            jitter: p.jitter.clamp(0.0, 1.0),
            attempts_before_reset: p.attempts_before_reset,
            current_ms: None,
            jittered_ms: 0,
            last_failure_ms: None,
            attempts: 0,
            rng: seed | 1,
        }
    }

    fn random_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl RestartBackoffTimeStrategy for ExponentialDelay {
    fn notify_failure(&mut self, now_ms: u64) {
        // A failure before the pending restart is due (another region of the same job
        // failing with it, say) is the same incident: it does not lengthen the backoff
        // or count as an attempt (as Flink's since FLIP-364).
        if let Some(last) = self.last_failure_ms {
            if now_ms < last.saturating_add(self.jittered_ms) {
                return;
            }
        }
        if let (Some(last), Some(cur)) = (self.last_failure_ms, self.current_ms) {
            if now_ms.saturating_sub(last) >= self.reset_threshold_ms + cur as u64 {
                self.current_ms = None;
                self.attempts = 0;
            }
        }
        let next = match self.current_ms {
            None => self.initial_ms,
            Some(c) => (c * self.multiplier).min(self.max_ms),
        };
        self.current_ms = Some(next);
        self.attempts = self.attempts.saturating_add(1);
        self.last_failure_ms = Some(now_ms);
        let spread = next * self.jitter;
        let r = self.random_unit() * 2.0 - 1.0;
        self.jittered_ms = (next + r * spread).clamp(0.0, self.max_ms) as u64;
    }
    fn can_restart(&self) -> bool {
        self.attempts <= self.attempts_before_reset
    }
    fn backoff_time(&self) -> Duration {
        Duration::from_millis(self.jittered_ms)
    }
}

/// The strategy the configuration names.
pub fn from_config(c: &Config) -> Box<dyn RestartBackoffTimeStrategy> {
    match c.restart_strategy {
        RestartStrategyType::None => Box::new(NoRestart),
        RestartStrategyType::FixedDelay => {
            Box::new(FixedDelay::new(c.restart_attempts, c.restart_delay))
        }
        RestartStrategyType::FailureRate => Box::new(FailureRate::new(
            c.failure_rate_max_failures,
            c.failure_rate_interval,
            c.failure_rate_delay,
        )),
        RestartStrategyType::ExponentialDelay => Box::new(ExponentialDelay::new(
            c.exponential_delay,
            crate::dataplane::sys::monotonic_ns(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn none_never_restarts() {
        let mut s = NoRestart;
        s.notify_failure(0);
        assert!(!s.can_restart());
    }

    #[test]
    fn fixed_delay_allows_its_attempts_then_stops() {
        let mut s = FixedDelay::new(2, ms(250));
        for t in [0, 10] {
            s.notify_failure(t);
            assert!(s.can_restart());
            assert_eq!(s.backoff_time(), ms(250));
        }
        s.notify_failure(20);
        assert!(!s.can_restart());
        let mut zero = FixedDelay::new(0, ms(1));
        zero.notify_failure(0);
        assert!(!zero.can_restart());
    }

    #[test]
    fn failure_rate_counts_failures_within_the_interval() {
        let mut s = FailureRate::new(2, ms(1000), ms(50));
        s.notify_failure(0);
        s.notify_failure(400);
        assert!(s.can_restart());
        assert_eq!(s.backoff_time(), ms(50));
        s.notify_failure(900); // three within 1 s
        assert!(!s.can_restart());
        // A failure long after: the old ones have left the window.
        let mut s = FailureRate::new(2, ms(1000), ms(50));
        for t in [0, 400, 1500, 2100] {
            s.notify_failure(t);
            assert!(s.can_restart(), "at {t}");
        }
        s.notify_failure(2200); // 1500, 2100, 2200 within 1 s
        assert!(!s.can_restart());
    }

    /// From 100 ms, doubling up to 1 s, reset after 5 s, no jitter.
    fn doubling() -> ExponentialDelayParams {
        ExponentialDelayParams {
            initial: ms(100),
            max: ms(1000),
            multiplier: 2.0,
            reset_threshold: ms(5000),
            jitter: 0.0,
            attempts_before_reset: u32::MAX,
        }
    }

    #[test]
    fn exponential_delay_grows_caps_and_resets() {
        let p = doubling();
        let mut s = ExponentialDelay::new(p, 1);
        let mut t = 0;
        let mut seen = Vec::new();
        for _ in 0..6 {
            s.notify_failure(t);
            assert!(s.can_restart());
            seen.push(s.backoff_time().as_millis());
            t += s.backoff_time().as_millis() as u64 + 10;
        }
        assert_eq!(seen, [100, 200, 400, 800, 1000, 1000]);
        // Quiet for reset threshold + the last backoff: back to the initial delay.
        t += 5000 + 1000;
        s.notify_failure(t);
        assert_eq!(s.backoff_time(), ms(100));
    }

    #[test]
    fn exponential_delay_counts_concurrent_failures_once() {
        let p = ExponentialDelayParams {
            attempts_before_reset: 2,
            ..doubling()
        };
        let mut s = ExponentialDelay::new(p, 1);
        // Three regions fail within one backoff: one attempt, the initial delay.
        for t in [0, 5, 60] {
            s.notify_failure(t);
        }
        assert_eq!(s.backoff_time(), ms(100));
        assert!(s.can_restart());
        // After the restart was due, a failure is a new incident.
        s.notify_failure(150);
        assert_eq!(s.backoff_time(), ms(200));
        s.notify_failure(200); // concurrent with that one
        assert!(s.can_restart(), "two incidents of attempts-before-reset 2");
        s.notify_failure(400);
        assert!(!s.can_restart());
    }

    #[test]
    fn exponential_delay_jitter_stays_within_its_factor_and_attempts_are_bounded() {
        let p = ExponentialDelayParams {
            initial: ms(1000),
            max: ms(10_000),
            multiplier: 1.0,
            reset_threshold: ms(1_000_000),
            jitter: 0.2,
            attempts_before_reset: 50,
        };
        let mut s = ExponentialDelay::new(p, 42);
        let mut distinct = std::collections::HashSet::new();
        for i in 0..50 {
            s.notify_failure(i * 2000);
            let b = s.backoff_time().as_millis();
            assert!((800..=1200).contains(&b), "{b}");
            distinct.insert(b);
            assert!(s.can_restart());
        }
        assert!(distinct.len() > 10, "jitter varies the delay");
        s.notify_failure(200_000);
        assert!(
            !s.can_restart(),
            "the 51st attempt exceeds attempts-before-reset-backoff"
        );
    }
}
