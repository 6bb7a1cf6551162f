//! Zero heap allocations per frame through two nodes' network agents in steady state (io_uring
//! and epoll), proved with a counting global allocator.
#![allow(clippy::unwrap_used, clippy::panic)]

mod counting;

use counting::{counting, ALLOCS};

mod common;

use common::{agent, Side};
use spate_dataplane::net::TransportKind;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn allocations(kind: TransportKind, frames: u64) -> u64 {
    let a = agent(1, "127.0.0.1:0", kind, Duration::from_secs(30));
    let b = agent(2, "127.0.0.1:0", kind, Duration::from_secs(30));
    let (a_addr, b_addr) = (a.handle().local_addr(), b.handle().local_addr());
    let mut a = Side::new(a, 2, b_addr, 4, 1 << 14);
    let mut b = Side::new(b, 1, a_addr, 4, 1 << 14);
    // Warm up: connect, open the channels, grow the buffers.
    let warm = 20_000;
    while b.seq.iter().any(|&s| s < warm) || a.seq.iter().any(|&s| s < warm) {
        a.step(u64::MAX);
        b.step(u64::MAX);
    }
    // Steady state: count what the agents and rings allocate for `frames` more per
    // channel each way. (The test's own payload checks allocate; they run uncounted.)
    let before = ALLOCS.load(Relaxed);
    let target = warm + frames;
    let start = std::time::Instant::now();
    while b.seq.iter().any(|&s| s < target) || a.seq.iter().any(|&s| s < target) {
        counting(|| {
            a.agent.poll_once();
            b.agent.poll_once();
        });
        a.step(u64::MAX);
        b.step(u64::MAX);
        assert!(start.elapsed() < Duration::from_secs(60), "stuck");
    }
    ALLOCS.load(Relaxed) - before
}

#[test]
fn no_allocation_per_frame_through_the_agents() {
    for kind in [TransportKind::IoUring, TransportKind::Epoll] {
        let small = allocations(kind, 5_000);
        let large = allocations(kind, 50_000);
        assert_eq!(
            small, 0,
            "{kind}: {small} allocations for 5k frames per channel"
        );
        assert_eq!(
            large, 0,
            "{kind}: {large} allocations for 50k frames per channel"
        );
    }
}
