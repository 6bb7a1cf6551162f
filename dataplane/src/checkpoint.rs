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
#[derive(Debug, Default)]
pub struct CheckpointTrigger {
    /// The checkpoint asked for last (0: none yet), with its kind in the low bit:
    /// `id << 1 | savepoint`.
    requested: AtomicU64,
    /// When it was asked for (ns since the Unix epoch).
    timestamp_ns: AtomicU64,
    /// The latest checkpoint known complete (0: none).
    completed: AtomicU64,
    /// Tasks that reached the end of their input and wait for their final checkpoint.
    ended: AtomicU64,
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
            id << 1 | u64::from(kind == BarrierKind::Savepoint),
            Ordering::Release,
        );
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
        let id = r >> 1;
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
    /// Nanoseconds the task spent writing its operators' states.
    pub sync_ns: u64,
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
    static COLLECTING: RefCell<Option<Vec<OperatorState>>> = const { RefCell::new(None) };
    /// Whether the end of input passing now will be followed by a final checkpoint.
    static FINAL_FOLLOWS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Restored states of the task being built, by operator uid.
    static RESTORING: RefCell<Option<HashMap<u32, Vec<u8>>>> = const { RefCell::new(None) };
}

/// Runs `pass` (which sends a barrier down a chain) and returns the states the chain's
/// operators wrote meanwhile with [`put_state`].
pub fn collect_states(pass: impl FnOnce()) -> Vec<OperatorState> {
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
    COLLECTING.with(|c| {
        if let Some(v) = c.borrow_mut().as_mut() {
            v.push((uid, bytes));
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
pub trait StateData: serde::Serialize + serde::de::DeserializeOwned + 'static {}
impl<T: serde::Serialize + serde::de::DeserializeOwned + 'static> StateData for T {}

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
        assert_eq!(got, vec![(1, vec![1, 2]), (2, vec![3])]);
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
}
