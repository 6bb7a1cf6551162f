//! Slot runners: one named OS thread per task slot, pinned to its own core, running its
//! tasks round-robin, with the least timer slack (so that its idle parks are short).
//!
//! The duty cycle has one shape: take commands (only when the command counter says there
//! are some), poll every task once (each poll does a bounded amount of work and says how
//! much), then hand the total to the idle strategy, which idles only if it is zero.
//!
//! Tasks are built *on* the slot thread from a `Send` factory, so a task itself need not
//! be `Send` and keeps no atomics it does not need. A task that panics is caught and
//! reported as that task's failure, with its message; the slot and the process live on.

mod pinning;

pub use pinning::{
    available_cores, isolated_cores, not_isolated, parse_cpu_list, plan_cores, CorePlan,
};

use crate::idle::IdleStrategyKind;
use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// How busy a slot's thread is: the time it spent idle (rounds in which no task did
/// work), for its busy ratio. The slot thread reads the clock only when it goes from
/// working to idle and back, after the round's work is done: never on a record's way.
#[derive(Debug)]
pub struct SlotLoad {
    /// When the slot started (ns, the data plane's clock).
    started_ns: u64,
    /// A sequence lock over the two fields below: odd while the slot thread writes
    /// them, so that a reader takes the pair from one moment (and busy time, total
    /// minus idle, never goes backwards between readings).
    seq: AtomicU64,
    /// Idle time of the idle spells that ended (ns).
    idle_ns: AtomicU64,
    /// When the current idle spell began (ns; 0: the slot is working).
    idle_since_ns: AtomicU64,
    /// The most busy time a reader has been given.
    busy_seen: AtomicU64,
}

impl SlotLoad {
    fn new() -> Self {
        Self {
            started_ns: crate::clock::now_ns(),
            seq: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            idle_since_ns: AtomicU64::new(0),
            busy_seen: AtomicU64::new(0),
        }
    }

    /// Publishes (idle total, current spell's start). Slot thread only.
    fn publish(&self, idle_ns: u64, idle_since_ns: u64) {
        // Ordering: the sequence goes odd (Relaxed), then a Release fence keeps the
        // field stores after it; the final Release store of the even sequence keeps
        // them before it. A reader that sees the same even sequence before (Acquire)
        // and after (behind an Acquire fence) its field loads saw no write between.
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        self.idle_ns.store(idle_ns, Ordering::Relaxed);
        self.idle_since_ns.store(idle_since_ns, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// (time since the slot started, of which busy), now. The clock is read after the
    /// snapshot, so a spell the snapshot saw end never ends after "now".
    pub fn times(&self) -> (u64, u64) {
        let (since, mut idle) = loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let since = self.idle_since_ns.load(Ordering::Relaxed);
            let idle = self.idle_ns.load(Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                break (since, idle);
            }
        };
        let now_ns = crate::clock::now_ns();
        if since != 0 {
            idle += now_ns.saturating_sub(since);
        }
        let total = now_ns.saturating_sub(self.started_ns);
        let busy = total - idle.min(total);
        // Clocks of two cores can differ by a little (the host moves vCPUs): a spell
        // the slot thread ended "later" than a reader's now would make busy time step
        // back by that much. Readers see the most busy time any reader saw (Relaxed:
        // a maximum of figures, nothing else is read through it).
        let busy = self.busy_seen.fetch_max(busy, Ordering::Relaxed).max(busy);
        (total.max(busy), busy)
    }

    /// The share of time between two readings of [`Self::times`] (total, busy) the
    /// slot was working (0 when no time passed).
    pub fn busy_ratio(before: (u64, u64), after: (u64, u64)) -> f64 {
        let total = after.0.saturating_sub(before.0);
        if total == 0 {
            return 0.0;
        }
        let busy = after.1.saturating_sub(before.1);
        (busy as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// Identifies a task within a TaskManager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task-{}", self.0)
    }
}

/// What one poll of a task achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskPoll {
    /// Did this many units of work (0: found nothing to do).
    Worked(usize),
    /// The task is done and will not be polled again.
    Finished,
}

/// A task's failure, as the task itself reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskError(pub String);

/// A unit of work a slot polls.
///
/// Performance contract: `poll` returns after a bounded amount of work (so the slot's
/// other tasks are not starved) and never blocks; a poll that found nothing returns
/// `Worked(0)` quickly, since it runs in a busy loop.
pub trait Task {
    /// Name for logs and reports.
    fn name(&self) -> &str;
    /// Does a bounded amount of work.
    fn poll(&mut self) -> Result<TaskPoll, TaskError>;
    /// Called once when the task leaves the slot (finished, failed or cancelled).
    fn close(&mut self) {}
}

/// Builds a task on the slot thread.
pub type TaskFactory = Box<dyn FnOnce() -> Result<Box<dyn Task>, TaskError> + Send>;

/// What a slot reports about its tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotEvent {
    /// The task was built and is being polled.
    Running {
        /// Slot index.
        slot: usize,
        /// The task.
        task: TaskId,
    },
    /// The task returned `Finished`.
    Finished {
        /// Slot index.
        slot: usize,
        /// The task.
        task: TaskId,
    },
    /// The task failed, returned an error or panicked (while built or polled).
    Failed {
        /// Slot index.
        slot: usize,
        /// The task.
        task: TaskId,
        /// The error or panic message.
        message: String,
    },
    /// The task was cancelled, or the slot stopped while it ran.
    Cancelled {
        /// Slot index.
        slot: usize,
        /// The task.
        task: TaskId,
    },
    /// A task acknowledged a checkpoint (sent by the task, not the slot, on runners
    /// that take checkpoints).
    Checkpoint(crate::checkpoint::CheckpointAck),
    /// A task reached the end of its input and waits for its final checkpoint (sent
    /// by the task, through [`crate::checkpoint::CheckpointTrigger::on_task_ended`]):
    /// the runner triggers it now rather than at the next interval.
    TaskEnded,
}

/// How to start a slot.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    /// Slot index within the TaskManager.
    pub index: usize,
    /// Core to pin the thread to (`None`: not pinned).
    pub core: Option<usize>,
    /// What to do when no task did work.
    pub idle: IdleStrategyKind,
    /// Thread name prefix (the thread is called `{name}-{index}`).
    pub name: String,
}

enum Command {
    Submit(TaskId, TaskFactory),
    Cancel(TaskId),
}

/// A running slot thread. Dropping it stops the thread (after cancelling its tasks).
pub struct Slot {
    index: usize,
    core: Option<usize>,
    commands: Sender<Command>,
    /// Commands sent and not yet taken; lets the duty cycle skip the channel when zero.
    pending: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    load: Arc<SlotLoad>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("core", &self.core)
            .finish()
    }
}

impl Slot {
    /// Starts the slot's thread, pinned as configured. Task events go to `events`.
    pub fn spawn(config: SlotConfig, events: Sender<SlotEvent>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let pending = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let load = Arc::new(SlotLoad::new());
        let (p, s, l) = (pending.clone(), stop.clone(), load.clone());
        let (index, core, idle) = (config.index, config.core, config.idle);
        let thread = std::thread::Builder::new()
            .name(format!("{}-{}", config.name, config.index))
            .spawn(move || {
                // Built here: the task list never leaves the slot thread.
                Runner {
                    index,
                    core,
                    idle,
                    commands: rx,
                    pending: p,
                    stop: s,
                    events,
                    tasks: Vec::new(),
                    load: l,
                    idle_since: 0,
                    idle_total: 0,
                }
                .run()
            })?;
        Ok(Self {
            index: config.index,
            core: config.core,
            commands: tx,
            pending,
            stop,
            load,
            thread: Some(thread),
        })
    }

    /// Slot index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The core the slot is pinned to.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    /// How busy the slot's thread is.
    pub fn load(&self) -> &SlotLoad {
        &self.load
    }

    fn send(&self, cmd: Command) -> bool {
        if self.commands.send(cmd).is_err() {
            return false;
        }
        // Relaxed suffices: the counter is only a hint to look at the channel, which
        // carries its own synchronisation; a late-seen increment delays by one cycle.
        self.pending.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
        true
    }

    /// Builds the task on the slot thread and polls it from then on. Returns false if the
    /// slot has stopped.
    pub fn submit(&self, id: TaskId, factory: TaskFactory) -> bool {
        self.send(Command::Submit(id, factory))
    }

    /// Removes the task (reported as `Cancelled`). Returns false if the slot has stopped.
    pub fn cancel(&self, id: TaskId) -> bool {
        self.send(Command::Cancel(id))
    }

    /// Stops the thread after cancelling its tasks, and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Relaxed: the join below synchronises with everything the thread did.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Entry {
    id: TaskId,
    task: Box<dyn Task>,
}

struct Runner {
    index: usize,
    core: Option<usize>,
    idle: IdleStrategyKind,
    commands: Receiver<Command>,
    pending: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    events: Sender<SlotEvent>,
    /// Only touched by the slot thread.
    tasks: Vec<Entry>,
    load: Arc<SlotLoad>,
    /// When the current idle spell began (0: working); the slot thread's own copies
    /// of what it publishes in `load`.
    idle_since: u64,
    idle_total: u64,
}

/// The message of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

impl Runner {
    fn run(mut self) {
        if let Some(core) = self.core {
            pinning::pin_current(self.index, core);
        }
        // A park (the `park` and `backoff` idle strategies) then ends about when asked,
        // not up to the default timer slack (50 µs) later. Failure costs latency only.
        if let Err(e) = crate::sys::set_timer_slack_ns(crate::sys::PARKING_TIMER_SLACK_NS) {
            tracing::warn!(slot = self.index, error = %e, "could not lower the slot thread's timer slack");
        }
        let mut idle = self.idle.build();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.pending.load(Ordering::Relaxed) != 0 {
                self.take_commands();
            }
            let work = self.poll_tasks();
            self.account(work);
            idle.idle(work);
        }
        for mut e in std::mem::take(&mut self.tasks) {
            Self::close(&mut e);
            self.emit(SlotEvent::Cancelled {
                slot: self.index,
                task: e.id,
            });
        }
    }

    /// Idle time: the clock is read when the slot goes idle and when it works again,
    /// after that round's work (so not on any record's way), never while it stays
    /// working or stays idle.
    #[inline]
    fn account(&mut self, work: usize) {
        if work == 0 {
            if self.idle_since == 0 {
                self.idle_since = crate::clock::now_ns().max(1);
                self.load.publish(self.idle_total, self.idle_since);
            }
        } else if self.idle_since != 0 {
            let now = crate::clock::now_ns();
            self.idle_total += now.saturating_sub(self.idle_since);
            self.idle_since = 0;
            self.load.publish(self.idle_total, 0);
        }
    }

    fn emit(&self, ev: SlotEvent) {
        // The receiver may be gone at shutdown; nothing to report to then.
        let _ = self.events.send(ev);
    }

    fn take_commands(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            self.pending.fetch_sub(1, Ordering::Relaxed);
            match cmd {
                Command::Submit(id, factory) => match catch_unwind(AssertUnwindSafe(factory)) {
                    Ok(Ok(task)) => {
                        self.tasks.push(Entry { id, task });
                        self.emit(SlotEvent::Running {
                            slot: self.index,
                            task: id,
                        });
                    }
                    Ok(Err(e)) => self.fail(id, e.0),
                    Err(p) => self.fail(id, format!("panicked: {}", panic_message(&*p))),
                },
                Command::Cancel(id) => {
                    if let Some(pos) = self.tasks.iter().position(|e| e.id == id) {
                        let mut e = self.tasks.remove(pos);
                        Self::close(&mut e);
                        self.emit(SlotEvent::Cancelled {
                            slot: self.index,
                            task: id,
                        });
                    }
                }
            }
        }
    }

    fn fail(&self, task: TaskId, message: String) {
        tracing::warn!(slot = self.index, %task, %message, "task failed");
        self.emit(SlotEvent::Failed {
            slot: self.index,
            task,
            message,
        });
    }

    fn close(e: &mut Entry) {
        // A panicking close must not take the slot down either.
        let _ = catch_unwind(AssertUnwindSafe(|| e.task.close()));
    }

    #[inline]
    fn poll_tasks(&mut self) -> usize {
        let mut work = 0;
        let mut i = 0;
        while i < self.tasks.len() {
            let entry = &mut self.tasks[i];
            let mut result = catch_unwind(AssertUnwindSafe(|| entry.task.poll()));
            // A failure an operator reported from inside a call that returns nothing
            // belongs to this task, whatever the poll returned; never to the next one.
            if let Some(m) = crate::operator::take_failure() {
                if matches!(result, Ok(Ok(_))) {
                    result = Ok(Err(TaskError(m)));
                }
            }
            match result {
                Ok(Ok(TaskPoll::Worked(n))) => {
                    work += n;
                    i += 1;
                }
                Ok(Ok(TaskPoll::Finished)) => {
                    let mut e = self.tasks.remove(i);
                    Self::close(&mut e);
                    self.emit(SlotEvent::Finished {
                        slot: self.index,
                        task: e.id,
                    });
                    work += 1;
                }
                Ok(Err(err)) => {
                    let mut e = self.tasks.remove(i);
                    Self::close(&mut e);
                    self.fail(e.id, err.0);
                    work += 1;
                }
                Err(p) => {
                    let mut e = self.tasks.remove(i);
                    let message = format!("{} panicked: {}", e.task.name(), panic_message(&*p));
                    Self::close(&mut e);
                    self.fail(e.id, message);
                    work += 1;
                }
            }
        }
        work
    }
}

#[cfg(test)]
mod tests;
