#![allow(clippy::unwrap_used, clippy::panic)]
use super::*;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::channel;
use std::time::Duration;

struct Count {
    n: u64,
    limit: u64,
    seen: Arc<AtomicU64>,
}

impl Task for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if self.n == self.limit {
            return Ok(TaskPoll::Finished);
        }
        self.n += 1;
        self.seen.store(self.n, Ordering::Relaxed);
        Ok(TaskPoll::Worked(1))
    }
}

struct Boom {
    after: u32,
}

impl Task for Boom {
    fn name(&self) -> &str {
        "boom"
    }
    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if self.after == 0 {
            panic!("operator exploded on record 3");
        }
        self.after -= 1;
        Ok(TaskPoll::Worked(1))
    }
}

fn slot(events: Sender<SlotEvent>) -> Slot {
    Slot::spawn(
        SlotConfig {
            index: 0,
            core: available_cores().first().copied(),
            idle: IdleStrategyKind::Backoff,
            name: "test-slot".into(),
        },
        events,
    )
    .unwrap()
}

fn next(rx: &Receiver<SlotEvent>) -> SlotEvent {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("slot event")
}

#[test]
fn a_panicking_task_fails_alone_and_the_slot_lives_on() {
    let (tx, rx) = channel();
    let s = slot(tx);
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    s.submit(
        TaskId(1),
        Box::new(|| Ok(Box::new(Boom { after: 3 }) as Box<dyn Task>)),
    );
    s.submit(
        TaskId(2),
        Box::new(move || {
            Ok(Box::new(Count {
                n: 0,
                limit: 100_000,
                seen: seen2,
            }) as Box<dyn Task>)
        }),
    );
    let mut failed = None;
    let mut finished = false;
    while failed.is_none() || !finished {
        match next(&rx) {
            SlotEvent::Failed { task, message, .. } => failed = Some((task, message)),
            SlotEvent::Finished { task, .. } => {
                assert_eq!(task, TaskId(2));
                finished = true;
            }
            SlotEvent::Running { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let (task, message) = failed.unwrap();
    assert_eq!(task, TaskId(1));
    assert!(
        message.contains("boom panicked: operator exploded on record 3"),
        "{message}"
    );
    assert_eq!(seen.load(Ordering::Relaxed), 100_000);
    // The slot still takes work after the panic.
    let seen3 = Arc::new(AtomicU64::new(0));
    let s3 = seen3.clone();
    s.submit(
        TaskId(3),
        Box::new(move || {
            Ok(Box::new(Count {
                n: 0,
                limit: 10,
                seen: s3,
            }) as Box<dyn Task>)
        }),
    );
    assert_eq!(
        next(&rx),
        SlotEvent::Running {
            slot: 0,
            task: TaskId(3)
        }
    );
    assert_eq!(
        next(&rx),
        SlotEvent::Finished {
            slot: 0,
            task: TaskId(3)
        }
    );
    s.stop();
}

#[test]
fn factory_errors_and_panics_are_task_failures() {
    let (tx, rx) = channel();
    let s = slot(tx);
    s.submit(
        TaskId(1),
        Box::new(|| Err(TaskError("no such operator".into()))),
    );
    s.submit(TaskId(2), Box::new(|| panic!("factory blew up")));
    match next(&rx) {
        SlotEvent::Failed { task, message, .. } => {
            assert_eq!(task, TaskId(1));
            assert_eq!(message, "no such operator");
        }
        e => panic!("{e:?}"),
    }
    match next(&rx) {
        SlotEvent::Failed { task, message, .. } => {
            assert_eq!(task, TaskId(2));
            assert!(message.contains("factory blew up"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn cancel_and_stop_close_running_tasks() {
    let (tx, rx) = channel();
    let s = slot(tx);
    let forever = |id| -> TaskFactory {
        let seen = Arc::new(AtomicU64::new(0));
        let _ = id;
        Box::new(move || {
            Ok(Box::new(Count {
                n: 0,
                limit: u64::MAX,
                seen,
            }) as Box<dyn Task>)
        })
    };
    s.submit(TaskId(1), forever(1));
    s.submit(TaskId(2), forever(2));
    assert!(matches!(next(&rx), SlotEvent::Running { .. }));
    assert!(matches!(next(&rx), SlotEvent::Running { .. }));
    s.cancel(TaskId(1));
    assert_eq!(
        next(&rx),
        SlotEvent::Cancelled {
            slot: 0,
            task: TaskId(1)
        }
    );
    s.stop();
    assert_eq!(
        next(&rx),
        SlotEvent::Cancelled {
            slot: 0,
            task: TaskId(2)
        }
    );
}

/// Reports a failure from "inside an emit" (the thread-local), then says it finished.
struct ReportsThenFinishes;

impl Task for ReportsThenFinishes {
    fn name(&self) -> &str {
        "reports"
    }
    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        crate::operator::report_failure("sink write failed: broken pipe");
        Ok(TaskPoll::Finished)
    }
}

#[test]
fn a_failure_reported_inside_a_poll_fails_that_task_and_no_other() {
    let (tx, rx) = channel();
    let s = slot(tx);
    s.submit(
        TaskId(1),
        Box::new(|| Ok(Box::new(ReportsThenFinishes) as Box<dyn Task>)),
    );
    let seen = Arc::new(AtomicU64::new(0));
    let seen2 = seen.clone();
    s.submit(
        TaskId(2),
        Box::new(move || {
            Ok(Box::new(Count {
                n: 0,
                limit: 1000,
                seen: seen2,
            }) as Box<dyn Task>)
        }),
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        match next(&rx) {
            SlotEvent::Running { .. } => {}
            e => got.push(e),
        }
    }
    assert!(got.contains(&SlotEvent::Failed {
        slot: 0,
        task: TaskId(1),
        message: "sink write failed: broken pipe".into()
    }));
    assert!(got.contains(&SlotEvent::Finished {
        slot: 0,
        task: TaskId(2)
    }));
}

/// A slot thread lowers its timer slack, so that a short park (the `park` and `backoff`
/// idle strategies) ends about when asked, not the default 50 µs of slack later.
#[test]
fn slot_threads_run_with_the_least_timer_slack() {
    let (tx, _events) = channel();
    let s = slot(tx);
    let (slack_tx, slack_rx) = channel();
    assert!(s.submit(
        TaskId(1),
        Box::new(move || {
            // Read on the slot thread, where the task is built.
            let _ = slack_tx.send(crate::sys::timer_slack_ns().map_err(|e| e.to_string()));
            Ok(Box::new(Count {
                n: 0,
                limit: 0,
                seen: Arc::new(AtomicU64::new(0)),
            }) as Box<dyn Task>)
        }),
    ));
    let slack = slack_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(slack, Ok(crate::sys::PARKING_TIMER_SLACK_NS));
    s.stop();
}

/// Works (spins) for as long as its flag is up, then finishes.
struct Busy {
    on: Arc<AtomicBool>,
}

impl Task for Busy {
    fn name(&self) -> &str {
        "busy"
    }
    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if !self.on.load(Ordering::Relaxed) {
            return Ok(TaskPoll::Finished);
        }
        let until = crate::clock::now_ns() + 20_000;
        while crate::clock::now_ns() < until {
            std::hint::spin_loop();
        }
        Ok(TaskPoll::Worked(1))
    }
}

#[test]
fn a_slot_counts_its_busy_and_idle_time() {
    crate::clock::init();
    let (tx, rx) = channel();
    let s = Slot::spawn(
        SlotConfig {
            index: 0,
            core: None,
            idle: IdleStrategyKind::Park(Duration::from_micros(50)),
            name: "test-slot".into(),
        },
        tx,
    )
    .unwrap();
    // Idle: no task at all.
    let t0 = s.load().times();
    std::thread::sleep(Duration::from_millis(100));
    let t1 = s.load().times();
    let idle = SlotLoad::busy_ratio(t0, t1);
    assert!(idle < 0.2, "an empty slot is idle: busy {idle}");
    // Working: a task that always has work.
    let on = Arc::new(AtomicBool::new(true));
    let on2 = on.clone();
    s.submit(
        TaskId(1),
        Box::new(move || Ok(Box::new(Busy { on: on2 }) as Box<dyn Task>)),
    );
    assert!(matches!(next(&rx), SlotEvent::Running { .. }));
    let t2 = s.load().times();
    std::thread::sleep(Duration::from_millis(100));
    let t3 = s.load().times();
    let busy = SlotLoad::busy_ratio(t2, t3);
    assert!(busy > 0.8, "a slot whose task always works is busy: {busy}");
    on.store(false, Ordering::Relaxed);
    assert!(matches!(next(&rx), SlotEvent::Finished { .. }));
    // Idle again once the task is done; the totals only grow.
    let t4 = s.load().times();
    std::thread::sleep(Duration::from_millis(100));
    let t5 = s.load().times();
    assert!(SlotLoad::busy_ratio(t4, t5) < 0.2);
    assert!(t5.0 >= t3.0 && t5.1 >= t3.1 && t5.1 <= t5.0);
    s.stop();
}

/// The busy time a reader computes (total minus idle) never goes backwards, however
/// the slot thread's updates interleave with the reads.
#[test]
fn slot_busy_time_read_across_threads_never_goes_backwards() {
    crate::clock::init();
    let load = Arc::new(SlotLoad::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (l2, s2) = (load.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let (mut total, mut since) = (0u64, 0u64);
        let mut n = 0u64;
        while !s2.load(Ordering::Relaxed) {
            let now = crate::clock::now_ns();
            if since == 0 {
                since = now.max(1);
                l2.publish(total, since);
            } else {
                total += now.saturating_sub(since);
                since = 0;
                l2.publish(total, 0);
            }
            n += 1;
            if n.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    });
    let mut last_busy = 0u64;
    let start = std::time::Instant::now();
    let mut reads = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        let (total, busy) = load.times();
        assert!(busy <= total);
        assert!(busy >= last_busy, "busy went from {last_busy} to {busy}");
        last_busy = busy;
        reads += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(reads > 1000);
}
