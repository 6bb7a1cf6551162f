//! Zero heap allocations per frame through two nodes' network agents in steady state (io_uring
//! and epoll), proved with a counting global allocator.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{agent, Side};
use spate_dataplane::net::TransportKind;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
thread_local! {
    static COUNT_HERE: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT_HERE.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT_HERE.with(|c| c.get()) {
            ALLOCS.fetch_add(1, Relaxed);
        }
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn counting<R>(f: impl FnOnce() -> R) -> R {
    COUNT_HERE.with(|c| c.set(true));
    let r = f();
    COUNT_HERE.with(|c| c.set(false));
    r
}

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
