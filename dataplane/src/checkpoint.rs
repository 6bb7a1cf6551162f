//! Checkpoints in the data plane: how a barrier enters at the sources, how the state
//! of each operator it passes is taken, and how a task acknowledges it.
//!
//! # The flow (Flink's asynchronous barrier snapshots)
//!
//! The coordinator asks for checkpoint `n` through a [`CheckpointTrigger`] that every
//! source task of the job reads once per poll (one atomic load: no per-record cost).
//! A source task that sees a new id writes its source's position, then sends barrier
//! `n` down its chain, in band, behind the records it emitted before. Each chained
//! operator the barrier reaches writes its state ([`crate::operator::Operator::snapshot_state`])
//! before it forwards the barrier; a task with several inputs aligns the barrier first
//! (see [`crate::task`]). Once the barrier has left the task's chain, the task sends a
//! [`CheckpointAck`] with the states it collected to its [`AckSink`]; storing them is
//! the coordinator's work, on a thread off the pinned cores.
//!
//! States are collected on the task's own thread: while a task passes a barrier down
//! its chain, [`collect_states`] gathers what each operator writes with
//! [`put_state`]. Operators know their id (`uid`, stable for the same program) from
//! their chain link; restored state reaches an operator when its task is built, through
//! [`RestoreScope`].

use crate::operator::{Barrier, BarrierKind};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the coordinator asks the sources of a job for a checkpoint.
#[derive(Default)]
pub struct CheckpointTrigger {
    /// The checkpoint asked for last (0: none yet), with its kind in the low bits:
    /// `id << 2 | stop << 1 | savepoint` (a stop: sources emit nothing after its
    /// barrier, see [`CheckpointTrigger::request_stop`]).
    requested: AtomicU64,
    /// The latest stop savepoint that failed: sources stopped for it go on.
    aborted: AtomicU64,
    /// When it was asked for (ns since the Unix epoch).
    timestamp_ns: AtomicU64,
    /// The latest checkpoint known complete (0: none).
    completed: AtomicU64,
    /// Tasks that reached the end of their input and wait for their final checkpoint.
    ended: AtomicU64,
    /// Called when a task reached the end of its input (wakes the coordinator).
    on_ended: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for CheckpointTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointTrigger")
            .field("requested", &self.requested)
            .field("completed", &self.completed)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl CheckpointTrigger {
    /// A trigger that has asked for nothing.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Asks every source for barrier `id` (ids increase; a lower one is ignored by
    /// sources that injected a higher one).
    pub fn request(&self, id: u64, timestamp_ns: u64, kind: BarrierKind) {
        // Relaxed: the timestamp is informative; a source that reads the id of a later
        // request with this timestamp reports a slightly early time, nothing more.
        self.timestamp_ns.store(timestamp_ns, Ordering::Relaxed);
        // Release: pairs with the Acquire in `pending`, so that a source which sees the
        // id also sees the timestamp stored before it.
        self.requested.store(
            id << 2 | u64::from(kind == BarrierKind::Savepoint),
            Ordering::Release,
        );
    }

    /// Asks every source for the barrier of savepoint `id` of a stop (Flink's
    /// synchronous savepoint): a source emits nothing after it, so that the savepoint
    /// holds everything the job's sinks saw when the job is cancelled on its
    /// completion. If it fails, [`Self::abort_stop`] lets the sources go on.
    pub fn request_stop(&self, id: u64, timestamp_ns: u64) {
        // Relaxed and Release: as in `request`.
        self.timestamp_ns.store(timestamp_ns, Ordering::Relaxed);
        self.requested.store(id << 2 | 0b11, Ordering::Release);
    }

    /// Whether barrier `id` (just injected) is the one of a stop.
    pub fn is_stop(&self, id: u64) -> bool {
        // Relaxed: read right after `pending` read the same word with Acquire.
        let r = self.requested.load(Ordering::Relaxed);
        r >> 2 == id && r & 0b10 != 0
    }

    /// The stop savepoint `id` failed: sources that stopped for it go on.
    pub fn abort_stop(&self, id: u64) {
        // Relaxed: a flag sources poll while stopped; nothing is published with it.
        self.aborted.fetch_max(id, Ordering::Relaxed);
    }

    /// Whether sources stopped for stop savepoint `id` go on (it failed).
    pub fn stop_aborted(&self, id: u64) -> bool {
        // Relaxed: see `abort_stop`.
        self.aborted.load(Ordering::Relaxed) >= id
    }

    /// Tells every task that checkpoint `id` (and every one before it) completed.
    pub fn complete(&self, id: u64) {
        // Release: a task that reads the id sees what the coordinator did before (it
        // wrote the checkpoint), though tasks only act on the id itself.
        self.completed.fetch_max(id, Ordering::Release);
    }

    /// A task reached the end of its input and waits for a checkpoint to complete
    /// before it finishes (see [`TaskCheckpointing::final_checkpoint`]).
    pub fn task_ended(&self) {
        // Relaxed: a counter the coordinator polls to trigger the final checkpoint
        // early; nothing is published through it.
        self.ended.fetch_add(1, Ordering::Relaxed);
        if let Some(wake) = self.on_ended.get() {
            wake();
        }
    }

    /// Calls `wake` (once set; later calls are ignored) whenever a task reaches the
    /// end of its input, so that a coordinator asleep until the next interval
    /// triggers the final checkpoint at once. It runs on the task's thread, once per
    /// task: it must not block.
    pub fn on_task_ended(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_ended.set(Box::new(wake));
    }

    /// How many tasks reached the end of their input so far.
    pub fn ended(&self) -> u64 {
        self.ended.load(Ordering::Relaxed)
    }

    /// The latest checkpoint known complete, if above `notified`.
    #[inline(always)]
    pub fn completed_since(&self, notified: u64) -> Option<u64> {
        // Acquire: see `complete`.
        let c = self.completed.load(Ordering::Acquire);
        (c > notified).then_some(c)
    }

    /// The barrier asked for, if its id is above `injected` (the last one a source
    /// sent).
    #[inline(always)]
    pub fn pending(&self, injected: u64) -> Option<Barrier> {
        // Acquire: see `request`.
        let r = self.requested.load(Ordering::Acquire);
        let id = r >> 2;
        if id <= injected {
            return None;
        }
        Some(Barrier {
            id,
            timestamp_ns: self.timestamp_ns.load(Ordering::Relaxed),
            kind: if r & 1 == 1 {
                BarrierKind::Savepoint
            } else {
                BarrierKind::Checkpoint
            },
        })
    }
}

/// The state one operator wrote for a checkpoint: its uid and its bytes.
pub type OperatorState = (u32, Vec<u8>);

/// An operator's state for one checkpoint as the barrier leaves it: written already,
/// or frozen (a copy-on-write view, see [`crate::operator::keyed::KeyedStates::freeze`])
/// and encoded later by the snapshot writer thread, off the slot's core.
pub enum StateSnapshot {
    /// The encoded state.
    Written(Vec<u8>),
    /// Encodes the frozen state.
    Frozen(Box<dyn FnOnce() -> Result<Vec<u8>, StateError> + Send>),
}

impl StateSnapshot {
    /// A state frozen at the barrier, encoded by `encode` off the slot.
    pub fn frozen(encode: impl FnOnce() -> Result<Vec<u8>, StateError> + Send + 'static) -> Self {
        Self::Frozen(Box::new(encode))
    }
    /// The encoded state (encoding a frozen one now).
    pub fn finish(self) -> Result<Vec<u8>, StateError> {
        match self {
            Self::Written(b) => Ok(b),
            Self::Frozen(f) => f(),
        }
    }
    /// Whether it is encoded already.
    pub fn is_written(&self) -> bool {
        matches!(self, Self::Written(_))
    }
}

impl std::fmt::Debug for StateSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Written(b) => write!(f, "Written({} bytes)", b.len()),
            Self::Frozen(_) => f.write_str("Frozen"),
        }
    }
}

/// A state taken as a barrier passed: the operator's uid and its snapshot.
pub type TakenState = (u32, StateSnapshot);

/// Encodes the frozen ones of `states` now (on the calling thread).
pub fn finish_states(states: Vec<TakenState>) -> Result<Vec<OperatorState>, StateError> {
    states
        .into_iter()
        .map(|(uid, s)| Ok((uid, s.finish()?)))
        .collect()
}

type WriterJob = Box<dyn FnOnce() + Send>;

/// The snapshot writer's queue, started on first use.
fn snapshot_writer() -> &'static std::sync::mpsc::Sender<WriterJob> {
    static WRITER: std::sync::OnceLock<std::sync::mpsc::Sender<WriterJob>> =
        std::sync::OnceLock::new();
    WRITER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<WriterJob>();
        let spawned = std::thread::Builder::new()
            .name("spate-snapshot".into())
            .spawn(move || {
                // A thread spawned from a pinned slot thread inherits its pin.
                if let Err(e) = crate::sys::unpin_current() {
                    tracing::warn!(error = %e, "snapshot writer could not unpin itself");
                }
                for job in rx {
                    // A job catches its own panics (see `Outputs::acknowledge`); this
                    // keeps the writer alive for the others should one escape.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "no snapshot writer thread; states are encoded in place");
        }
        tx
    })
}

/// Starts the snapshot writer (one thread per process, not pinned) if it is not
/// running: MiniClusters and TaskManagers start it before their slots, so that no slot
/// pays for the spawn at its first barrier.
pub fn start_snapshot_writer() {
    snapshot_writer();
}

/// Runs `job` on the snapshot writer, which encodes frozen states (see
/// [`StateSnapshot::Frozen`]) so that the slots' cores do not. Jobs run in the order
/// they were given.
pub fn on_snapshot_writer(job: impl FnOnce() + Send + 'static) {
    // One send per acknowledgement with frozen states (not per record).
    let sent = snapshot_writer().send(Box::new(job));
    // No writer thread (it could not be spawned): run here rather than lose the ack.
    if let Err(std::sync::mpsc::SendError(job)) = sent {
        job();
    }
}

/// Waits until the snapshot writer ran every job given to it so far (at most
/// `timeout`): their acknowledgements have then been sent.
pub fn flush_snapshot_writer(timeout: std::time::Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    on_snapshot_writer(move || {
        let _ = tx.send(());
    });
    rx.recv_timeout(timeout).is_ok()
}

/// A task's acknowledgement of a checkpoint: the barrier went through its whole chain,
/// and these are the states of its operators at that point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointAck {
    /// The checkpoint.
    pub checkpoint_id: u64,
    /// The task's vertex and subtask (as the coordinator's deployment named it).
    pub vertex: u32,
    /// Subtask index.
    pub subtask: u32,
    /// Operator states, by uid.
    pub states: Vec<OperatorState>,
    /// Nanoseconds the barrier waited for alignment in this task (0 for sources).
    pub alignment_ns: u64,
    /// Nanoseconds the task spent taking its operators' states at the barrier (the
    /// synchronous part: writing small states, freezing keyed ones).
    pub sync_ns: u64,
    /// Nanoseconds the snapshot writer spent encoding the frozen states (the
    /// asynchronous part, off the slot's core).
    pub async_ns: u64,
    /// Why the task could not take part (a state that failed to encode): the
    /// coordinator declines the checkpoint instead of completing it.
    pub declined: Option<String>,
}

/// Where a task sends its acknowledgements (a channel to the coordinator).
pub type AckSink = Arc<dyn Fn(CheckpointAck) + Send + Sync>;

/// What a task needs to take part in checkpoints.
#[derive(Clone)]
pub struct TaskCheckpointing {
    /// The job's trigger (read by source tasks).
    pub trigger: Arc<CheckpointTrigger>,
    /// Where acknowledgements go.
    pub acks: AckSink,
    /// The task's vertex.
    pub vertex: u32,
    /// The task's subtask index.
    pub subtask: u32,
    /// Exactly-once (barriers aligned) or at-least-once (barriers counted, inputs never
    /// held back).
    pub exactly_once: bool,
    /// The last checkpoint the restored state belongs to (0: none): sources resume
    /// their ids above it.
    pub restored_from: u64,
    /// Flink's final checkpoint (checkpoints are periodic): a task whose input ended
    /// takes part in one more checkpoint, triggered at it directly, and finishes only
    /// once a checkpoint it took after its end completed. Two-phase-commit sinks thus
    /// commit their last records on a completed checkpoint, never at the end of input:
    /// a failure elsewhere in the job after one sink ended cannot make the restarted job
    /// write those records twice.
    pub final_checkpoint: bool,
}

impl std::fmt::Debug for TaskCheckpointing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCheckpointing")
            .field("vertex", &self.vertex)
            .field("subtask", &self.subtask)
            .field("exactly_once", &self.exactly_once)
            .field("final_checkpoint", &self.final_checkpoint)
            .finish()
    }
}

thread_local! {
    /// The states gathered while a barrier passes through the current task's chain.
    static COLLECTING: RefCell<Option<Vec<TakenState>>> = const { RefCell::new(None) };
    /// Whether the end of input passing now will be followed by a final checkpoint.
    static FINAL_FOLLOWS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Restored states of the task being built, by operator uid.
    static RESTORING: RefCell<Option<HashMap<u32, Vec<u8>>>> = const { RefCell::new(None) };
    /// While a redistributed state is restored: the key groups the subtask owns.
    static KEY_FILTER: std::cell::Cell<Option<KeyGroupRange>> = const { std::cell::Cell::new(None) };
    /// Whether the operator being restored asked for [`restore_filter`].
    static FILTER_ASKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `pipeline.max-parallelism` when not set (Flink's lower bound for its default).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// The largest `pipeline.max-parallelism` (Flink's).
pub const UPPER_MAX_PARALLELISM: u32 = 32_768;

/// Flink's default max parallelism for a job whose largest operator parallelism is
/// `p`: 1.5 p rounded up to a power of two, within [128, 32768].
pub fn default_max_parallelism(p: usize) -> u32 {
    let want = (p + p.div_ceil(2)).next_power_of_two();
    (want as u32).clamp(DEFAULT_MAX_PARALLELISM, UPPER_MAX_PARALLELISM)
}

/// The key group of a key hash, of `max` (the max parallelism): keyed state is kept and
/// redistributed by key group, so that a job can resume at any parallelism up to `max`.
#[inline(always)]
pub fn key_group(hash: u64, max: u32) -> u32 {
    // Multiply-shift: uniform over the hash's high bits, no division.
    ((u128::from(hash) * u128::from(max)) >> 64) as u32
}

/// Which of `n` subtasks owns key group `kg` of `max` (Flink's
/// `computeOperatorIndexForKeyGroup`): contiguous ranges of key groups per subtask.
#[inline(always)]
pub fn subtask_of_key_group(kg: u32, n: u32, max: u32) -> u32 {
    (u64::from(kg) * u64::from(n) / u64::from(max.max(1))) as u32
}

/// The key groups one subtask of `parallelism` owns, of `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyGroupRange {
    /// The subtask.
    pub subtask: u32,
    /// The operator's parallelism.
    pub parallelism: u32,
    /// The max parallelism (number of key groups).
    pub max_parallelism: u32,
}

impl KeyGroupRange {
    /// Whether the subtask owns the key of hash `hash`.
    #[inline]
    pub fn owns(&self, hash: u64) -> bool {
        let kg = key_group(hash, self.max_parallelism);
        subtask_of_key_group(kg, self.parallelism, self.max_parallelism) == self.subtask
    }
}

/// Magic at the head of a redistributed state (see [`redistributed_state`]).
const REDISTRIBUTED_MAGIC: [u8; 4] = *b"SPR2";

/// The state of one operator for a subtask that resumes at another parallelism than
/// the checkpoint's: the states the old subtasks wrote (`parts`, each with its old
/// subtask's index), of which a keyed operator keeps the keys in `range` (see
/// [`restore_with`]) and a non-keyed one its part of the [`shares`]. Laid out as
/// the magic, the range (three little-endian u32), then each part as its old subtask
/// (a little-endian u32), a little-endian u64 length and its bytes. Built when a task
/// is deployed, never stored.
pub fn redistributed_state(range: KeyGroupRange, parts: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let len = parts.iter().map(|(_, p)| p.len() + 12).sum::<usize>();
    let mut out = Vec::with_capacity(16 + len);
    out.extend_from_slice(&REDISTRIBUTED_MAGIC);
    for v in [range.subtask, range.parallelism, range.max_parallelism] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (subtask, p) in parts {
        out.extend_from_slice(&subtask.to_le_bytes());
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Whether `state` is a redistributed one (see [`redistributed_state`]).
pub fn is_redistributed(state: &[u8]) -> bool {
    state.starts_with(&REDISTRIBUTED_MAGIC)
}

/// One old subtask's state of an operator whose state is not keyed, handed to a new
/// subtask when a job resumes at another parallelism (see [`shares`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share<'a> {
    /// The old subtask that wrote it.
    pub subtask: u32,
    /// Its bytes (what the operator's snapshot wrote).
    pub bytes: &'a [u8],
}

impl Share<'_> {
    /// Whether new subtask `range.subtask` of `range.parallelism` takes this share
    /// whole: old subtask `i`'s goes to new subtask `i mod p`, so that a new subtask
    /// `j` takes old subtask `j`'s own and the others' only where the old subtask no
    /// longer exists (file names that carry a subtask index are never written by two
    /// new subtasks). Each share goes to exactly one new subtask; at a higher
    /// parallelism some take none. (Sources instead spread the splits inside the
    /// shares one by one; see `Source::restore_shares`.)
    pub fn taken_by(&self, range: KeyGroupRange) -> bool {
        self.subtask % range.parallelism.max(1) == range.subtask
    }
}

/// The old subtasks' states of an operator whose state is not keyed (a source's
/// splits and positions, a file sink's pending parts), when its subtask resumes at
/// another parallelism, with the new subtask and parallelism (in the range); the
/// operator takes its part of them (see [`Share::taken_by`]). `None`: `state` is not
/// redistributed (the subtask's own, at the same parallelism).
pub fn shares(state: &[u8]) -> Result<Option<(KeyGroupRange, Vec<Share<'_>>)>, StateError> {
    let Some(body) = state.strip_prefix(&REDISTRIBUTED_MAGIC) else {
        return Ok(None);
    };
    read_redistributed(body).map(Some)
}

/// Reads what [`redistributed_state`] wrote (after the magic).
fn read_redistributed(mut b: &[u8]) -> Result<(KeyGroupRange, Vec<Share<'_>>), StateError> {
    let bad = || StateError::Decode("a redistributed state that is cut short".into());
    let mut u32s = [0u32; 3];
    for v in &mut u32s {
        let (head, rest) = b.split_first_chunk::<4>().ok_or_else(bad)?;
        *v = u32::from_le_bytes(*head);
        b = rest;
    }
    let range = KeyGroupRange {
        subtask: u32s[0],
        parallelism: u32s[1],
        max_parallelism: u32s[2],
    };
    if range.max_parallelism == 0 || range.subtask >= range.parallelism {
        return Err(StateError::Decode(format!(
            "a redistributed state for an impossible subtask: {range:?}"
        )));
    }
    let mut parts = Vec::new();
    while !b.is_empty() {
        let (sub, rest) = b.split_first_chunk::<4>().ok_or_else(bad)?;
        let (head, rest) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
        let n = usize::try_from(u64::from_le_bytes(*head)).map_err(|_| bad())?;
        if rest.len() < n {
            return Err(bad());
        }
        let (part, rest) = rest.split_at(n);
        parts.push(Share {
            subtask: u32::from_le_bytes(*sub),
            bytes: part,
        });
        b = rest;
    }
    Ok((range, parts))
}

/// Restores `state` through `restore` (an operator's `restore_state`): once, or, for a
/// redistributed state, once per old subtask's part with [`restore_filter`] giving the
/// key groups to keep. An operator whose state is not keyed must take its [`shares`]
/// instead: through here it is an error naming why.
pub fn restore_with(
    state: &[u8],
    mut restore: impl FnMut(&[u8]) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let Some(body) = state.strip_prefix(&REDISTRIBUTED_MAGIC) else {
        return restore(state);
    };
    let (range, parts) = read_redistributed(body)?;
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            KEY_FILTER.with(|f| f.set(None));
            FILTER_ASKED.with(|f| f.set(false));
        }
    }
    let _reset = Reset;
    KEY_FILTER.with(|f| f.set(Some(range)));
    FILTER_ASKED.with(|f| f.set(false));
    for part in parts {
        restore(part.bytes)?;
        if !FILTER_ASKED.with(std::cell::Cell::get) {
            return Err(StateError::Decode(format!(
                "the operator's state is not keyed and it does not take shares of it, so \
                 it cannot be redistributed to parallelism {} (keep this operator's \
                 parallelism)",
                range.parallelism
            )));
        }
    }
    Ok(())
}

/// The key groups to keep while a keyed operator restores its state (`None`: all of
/// them, the state is its own subtask's). Keyed state structures call it; an operator
/// whose state is the same in every subtask (broadcast state) calls
/// [`restore_replicated`] instead.
pub fn restore_filter() -> Option<KeyGroupRange> {
    FILTER_ASKED.with(|f| f.set(true));
    KEY_FILTER.with(std::cell::Cell::get)
}

/// Declares that the state being restored is replicated (equal in every subtask, as
/// broadcast state is), so that any old subtask's copy serves any new subtask.
pub fn restore_replicated() {
    FILTER_ASKED.with(|f| f.set(true));
}

/// Runs `pass` (which sends a barrier down a chain) and returns the states the chain's
/// operators wrote meanwhile with [`put_state`].
pub fn collect_states(pass: impl FnOnce()) -> Vec<TakenState> {
    let outer = COLLECTING.with(|c| c.borrow_mut().replace(Vec::new()));
    pass();
    let got = COLLECTING.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    got.unwrap_or_default()
}

/// Runs `pass` (which sends the end of input down a chain), telling the chain's
/// operators through [`final_checkpoint_follows`] whether a final checkpoint follows.
pub fn end_of_input(final_checkpoint: bool, pass: impl FnOnce()) {
    let outer = FINAL_FOLLOWS.with(|f| f.replace(final_checkpoint));
    pass();
    FINAL_FOLLOWS.with(|f| f.set(outer));
}

/// Whether the end of input passing now is followed by a checkpoint the task takes
/// before it finishes: a two-phase-commit sink leaves its last records to that
/// checkpoint's completion instead of committing them now.
pub fn final_checkpoint_follows() -> bool {
    FINAL_FOLLOWS.with(std::cell::Cell::get)
}

/// Whether a barrier is passing with states being collected (operators outside a
/// checkpointing task, such as in unit tests, skip their snapshot).
pub fn collecting() -> bool {
    COLLECTING.with(|c| c.borrow().is_some())
}

/// Records the state of operator `uid` for the barrier passing now (see
/// [`collect_states`]); ignored when no states are being collected.
pub fn put_state(uid: u32, bytes: Vec<u8>) {
    put_snapshot(uid, StateSnapshot::Written(bytes));
}

/// As [`put_state`], with a state that may be frozen for encoding later.
pub fn put_snapshot(uid: u32, state: StateSnapshot) {
    COLLECTING.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push((uid, state));
        }
    });
}

/// While alive, operators built on this thread find their restored state with
/// [`take_restored`]: the scope of one task's construction.
pub struct RestoreScope(());

impl RestoreScope {
    /// Makes `states` (by operator uid) available to the operators built until the
    /// scope is dropped.
    pub fn enter(states: HashMap<u32, Vec<u8>>) -> Self {
        RESTORING.with(|r| *r.borrow_mut() = Some(states));
        Self(())
    }

    /// The uids whose state no operator took (a program that no longer has the
    /// operator a checkpoint holds state for).
    pub fn unclaimed(&self) -> Vec<u32> {
        RESTORING.with(|r| {
            let mut v: Vec<u32> = r
                .borrow()
                .as_ref()
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default();
            v.sort_unstable();
            v
        })
    }
}

impl Drop for RestoreScope {
    fn drop(&mut self) {
        RESTORING.with(|r| *r.borrow_mut() = None);
    }
}

/// The restored state of operator `uid`, taken (once), if the task being built has one.
pub fn take_restored(uid: u32) -> Option<Vec<u8>> {
    RESTORING.with(|r| r.borrow_mut().as_mut().and_then(|m| m.remove(&uid)))
}

/// A type operator state can hold: anything serde can write and read back (derive
/// `Serialize` and `Deserialize`). Keys and per-key states of keyed functions are
/// `StateData`; records kept in state (windows, reduce) go through their
/// [`crate::record::Wire`] encoding instead, with [`WireState`].
pub trait StateData:
    serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static
{
}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static> StateData
    for T
{
}

/// A record held in state, written with its [`crate::record::Wire`] encoding (so that
/// records need no serde of their own).
#[derive(Debug, Clone, PartialEq)]
pub struct WireState<T>(pub T);

/// A borrowed record written with its wire encoding (see [`WireState`]).
pub struct WireRef<'a, T>(pub &'a T);

impl<T: crate::record::Wire> serde::Serialize for WireRef<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = vec![0u8; self.0.encoded_len()];
        self.0.encode(&mut buf);
        s.serialize_bytes(&buf)
    }
}

impl<T: crate::record::Wire> serde::Serialize for WireState<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireRef(&self.0).serialize(s)
    }
}

impl<'de, T: crate::record::Wire> serde::Deserialize<'de> for WireState<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: crate::record::Wire> serde::de::Visitor<'_> for V<T> {
            type Value = WireState<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record's wire encoding")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
                T::decode(b).map(WireState).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, b: Vec<u8>) -> Result<Self::Value, E> {
                self.visit_bytes(&b)
            }
        }
        d.deserialize_bytes(V(std::marker::PhantomData))
    }
}

/// Why a state could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Encoding failed (a state type whose serialization fails).
    #[error("encoding state: {0}")]
    Encode(String),
    /// The bytes are not a state this operator wrote (corrupt, or of another program).
    #[error("decoding state: {0}")]
    Decode(String),
}

/// Magic and version at the head of every operator state (so a state of another kind
/// or format is refused, not misread).
const STATE_MAGIC: [u8; 4] = *b"SPS1";

/// Encodes `value` (with serde, compactly) as an operator state.
pub fn encode_state<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StateError> {
    let mut out = STATE_MAGIC.to_vec();
    postcard::to_io(value, &mut out).map_err(|e| StateError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes what [`encode_state`] wrote.
pub fn decode_state<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StateError> {
    let body = bytes
        .strip_prefix(&STATE_MAGIC)
        .ok_or_else(|| StateError::Decode("not a spate operator state (bad magic)".into()))?;
    let (v, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| {
        StateError::Decode(format!(
            "{e} (a state of another type or program, or corrupt)"
        ))
    })?;
    if !rest.is_empty() {
        return Err(StateError::Decode(format!(
            "{} bytes after the state (a state of another type or program)",
            rest.len()
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_trigger_hands_out_each_barrier_once_per_source() {
        let t = CheckpointTrigger::new();
        assert_eq!(t.pending(0), None);
        t.request(1, 77, BarrierKind::Checkpoint);
        let b = t.pending(0).unwrap();
        assert_eq!(
            (b.id, b.timestamp_ns, b.kind),
            (1, 77, BarrierKind::Checkpoint)
        );
        assert_eq!(t.pending(1), None);
        t.request(2, 78, BarrierKind::Savepoint);
        assert_eq!(t.pending(1).unwrap().kind, BarrierKind::Savepoint);
        assert_eq!(t.pending(5), None);
        assert_eq!(t.completed_since(0), None);
        t.complete(2);
        t.complete(1);
        assert_eq!(t.completed_since(0), Some(2));
        assert_eq!(t.completed_since(2), None);
    }

    #[test]
    fn states_are_collected_only_while_a_barrier_passes() {
        put_state(9, vec![1]);
        assert!(!collecting());
        let got = collect_states(|| {
            assert!(collecting());
            put_state(1, vec![1, 2]);
            put_state(2, vec![3]);
        });
        assert_eq!(
            finish_states(got).unwrap(),
            vec![(1, vec![1, 2]), (2, vec![3])]
        );
        assert!(collect_states(|| {}).is_empty());
    }

    #[test]
    fn restored_states_are_taken_once_within_their_scope() {
        let scope = RestoreScope::enter(HashMap::from([(3, vec![7]), (4, vec![8])]));
        assert_eq!(take_restored(3), Some(vec![7]));
        assert_eq!(take_restored(3), None);
        assert_eq!(scope.unclaimed(), vec![4]);
        drop(scope);
        assert_eq!(take_restored(4), None);
    }

    #[test]
    fn states_round_trip_and_foreign_bytes_are_refused() {
        let v: Vec<(u32, String)> = vec![(1, "a".into()), (2, "bc".into())];
        let b = encode_state(&v).unwrap();
        assert_eq!(decode_state::<Vec<(u32, String)>>(&b).unwrap(), v);
        assert!(decode_state::<Vec<(u32, String)>>(&b[4..]).is_err());
        assert!(decode_state::<Vec<(u32, String)>>(&b[..b.len() - 1]).is_err());
        let recs = vec![WireState((1u64, 2u32)), WireState((3, 4))];
        let b2 = encode_state(&recs).unwrap();
        assert_eq!(
            decode_state::<Vec<WireState<(u64, u32)>>>(&b2).unwrap(),
            recs
        );
        assert!(decode_state::<Vec<WireState<(u64, u64)>>>(&b2).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode_state::<Vec<(u32, String)>>(&longer).is_err());
    }

    #[test]
    fn key_groups_split_into_contiguous_ranges_and_every_key_has_one_owner() {
        assert_eq!(default_max_parallelism(1), 128);
        assert_eq!(default_max_parallelism(100), 256);
        assert_eq!(default_max_parallelism(100_000), UPPER_MAX_PARALLELISM);
        for n in [1u32, 2, 3, 7, 128] {
            let owners: Vec<u32> = (0..128)
                .map(|kg| subtask_of_key_group(kg, n, 128))
                .collect();
            assert!(owners.windows(2).all(|w| w[0] <= w[1] && w[1] - w[0] <= 1));
            assert_eq!((owners[0], owners[127]), (0, n - 1));
            for h in [0u64, 1, u64::MAX / 3, u64::MAX] {
                let r = |s| KeyGroupRange {
                    subtask: s,
                    parallelism: n,
                    max_parallelism: 128,
                };
                assert_eq!((0..n).filter(|&s| r(s).owns(h)).count(), 1);
            }
        }
    }

    #[test]
    fn a_redistributed_state_restores_each_part_and_only_keyed_state_may() {
        let range = KeyGroupRange {
            subtask: 1,
            parallelism: 3,
            max_parallelism: 128,
        };
        let state = redistributed_state(range, &[(0, vec![1, 2]), (1, vec![]), (2, vec![3])]);
        assert!(is_redistributed(&state));
        let mut seen = Vec::new();
        restore_with(&state, |b| {
            assert_eq!(restore_filter(), Some(range));
            seen.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [vec![1, 2], vec![], vec![3]]);
        assert_eq!(restore_filter(), None, "the filter ends with the restore");
        // A state that is not keyed (it never asks for the filter) is refused.
        let e = restore_with(&state, |_| Ok(())).unwrap_err().to_string();
        assert!(e.contains("not keyed"), "{e}");
        // A plain state restores once, with no filter.
        let mut calls = 0;
        restore_with(&[9, 9], |b| {
            assert_eq!((b, restore_filter()), (&[9u8, 9][..], None));
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(calls, 1);
        // Cut short, or for an impossible subtask: an error, not a panic.
        assert!(restore_with(&state[..state.len() - 1], |_| Ok(())).is_err());
        let bad = KeyGroupRange {
            subtask: 3,
            parallelism: 3,
            max_parallelism: 128,
        };
        assert!(restore_with(&redistributed_state(bad, &[]), |_| Ok(())).is_err());
    }

    #[test]
    fn every_old_share_goes_to_exactly_one_new_subtask() {
        for old in 1..6u32 {
            for new in 1..6u32 {
                let parts: Vec<(u32, Vec<u8>)> = (0..old).map(|i| (i, vec![i as u8])).collect();
                let mut taken = Vec::new();
                for j in 0..new {
                    let range = KeyGroupRange {
                        subtask: j,
                        parallelism: new,
                        max_parallelism: 128,
                    };
                    let state = redistributed_state(range, &parts);
                    let (r, all) = shares(&state).unwrap().unwrap();
                    assert_eq!(r, range);
                    assert_eq!(all.len(), old as usize);
                    for s in all.into_iter().filter(|s| s.taken_by(r)) {
                        assert_eq!(s.bytes, [s.subtask as u8]);
                        // A new subtask keeps its own old index where it had one.
                        assert!(s.subtask == j || s.subtask >= new, "{old}->{new}: {s:?}");
                        taken.push(s.subtask);
                    }
                }
                taken.sort_unstable();
                assert_eq!(taken, (0..old).collect::<Vec<_>>(), "{old}->{new}");
            }
        }
        // A subtask's own state has no shares; a cut one is an error.
        assert_eq!(shares(&[1, 2, 3]).unwrap(), None);
        let range = KeyGroupRange {
            subtask: 0,
            parallelism: 2,
            max_parallelism: 128,
        };
        let state = redistributed_state(range, &[(0, vec![1, 2, 3])]);
        assert!(shares(&state[..state.len() - 1]).is_err());
    }
}
