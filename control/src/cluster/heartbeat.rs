//! Heartbeat bookkeeping with an injected clock (Flink's HeartbeatManager, reduced to
//! what the JobManager and TaskManager need): who was heard from when, and who has been
//! silent for longer than the timeout.

use std::collections::HashMap;
use std::hash::Hash;

/// Tracks when each target was last heard from.
#[derive(Debug)]
pub struct HeartbeatMonitor<K> {
    timeout_ms: u64,
    last_heard_ms: HashMap<K, u64>,
}

impl<K: Hash + Eq + Clone> HeartbeatMonitor<K> {
    /// Targets silent for longer than `timeout_ms` expire.
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            timeout_ms,
            last_heard_ms: HashMap::new(),
        }
    }

    /// `target` was heard from at `now_ms` (it is monitored from then on).
    pub fn heard(&mut self, target: K, now_ms: u64) {
        self.last_heard_ms.insert(target, now_ms);
    }

    /// Stops monitoring `target`.
    pub fn remove(&mut self, target: &K) {
        self.last_heard_ms.remove(target);
    }

    /// Whether `target` is monitored.
    pub fn contains(&self, target: &K) -> bool {
        self.last_heard_ms.contains_key(target)
    }

    /// Removes and returns the targets silent for longer than the timeout at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<K> {
        let dead: Vec<K> = self
            .last_heard_ms
            .iter()
            .filter(|(_, &t)| now_ms.saturating_sub(t) > self.timeout_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            self.last_heard_ms.remove(k);
        }
        dead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_targets_expire_after_the_timeout_and_only_then() {
        let mut m = HeartbeatMonitor::new(50);
        m.heard("tm-1", 0);
        m.heard("tm-2", 0);
        assert!(
            m.expire(50).is_empty(),
            "exactly the timeout is not yet late"
        );
        m.heard("tm-2", 40);
        assert_eq!(m.expire(51), vec!["tm-1"]);
        assert!(!m.contains(&"tm-1"));
        assert!(m.expire(90).is_empty());
        assert_eq!(m.expire(91), vec!["tm-2"]);
        m.heard("tm-3", 100);
        m.remove(&"tm-3");
        assert!(m.expire(1_000).is_empty());
    }
}
