//! The ring side of an edge between tasks: partitioning records onto the rings of the
//! downstream subtasks, and backpressure when a ring is full.
//!
//! A full ring never blocks the slot thread (the consumer may run on the same thread):
//! the record waits in a small overflow queue, the task is marked backpressured and
//! takes no new input until the queue has drained into the ring. The queue is bounded by
//! what one poll emits and keeps its capacity, so steady state allocates nothing.

use crate::operator::{report_failure, Emit};
use crate::record::Wire;
use crate::ring::{ClaimError, FrameType, PeerState, Producer};

/// Full drains between checks that a stalled output's consumer still exists.
const STALL_CHECK: u32 = 1024;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// Hashes a record's key.
pub type KeyHashFn<T> = Arc<dyn Fn(&T) -> u64 + Send + Sync>;

/// How an edge picks the downstream subtask(s) of a record.
pub enum Partition<T> {
    /// To the one downstream subtask with the same index (one ring).
    Forward,
    /// Round-robin.
    Rebalance,
    /// Pseudo-random.
    Shuffle,
    /// To every downstream subtask.
    Broadcast,
    /// By key hash: the same key always goes to the same subtask.
    Hash(KeyHashFn<T>),
}

impl<T> Clone for Partition<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Forward => Self::Forward,
            Self::Rebalance => Self::Rebalance,
            Self::Shuffle => Self::Shuffle,
            Self::Broadcast => Self::Broadcast,
            Self::Hash(f) => Self::Hash(f.clone()),
        }
    }
}

impl<T> std::fmt::Debug for Partition<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Forward => "FORWARD",
            Self::Rebalance => "REBALANCE",
            Self::Shuffle => "SHUFFLE",
            Self::Broadcast => "BROADCAST",
            Self::Hash(_) => "HASH",
        })
    }
}

/// Which of `n` subtasks owns a key hash.
#[inline(always)]
pub fn channel_for_hash(hash: u64, n: usize) -> usize {
    // Multiply-shift: uniform for any n, no division.
    ((u128::from(hash) * n as u128) >> 64) as usize
}

/// What a task needs of its ring outputs.
pub trait OutputControl {
    /// Moves waiting records into rings; returns whether none are left waiting.
    fn drain(&mut self) -> bool;
    /// Publishes committed frames.
    fn publish(&mut self);
    /// Records written since the last call.
    fn take_records(&mut self) -> u64;
}

/// Shared flag: some output of this task has records waiting.
pub type Backpressure = Rc<Cell<bool>>;

/// Writes records of type `T` to the rings of one edge.
pub struct RingOutput<T> {
    producers: Vec<Producer>,
    partition: Partition<T>,
    next: usize,
    rng: u64,
    /// Records (or end-of-stream, `None`) waiting for ring space, with their ring.
    waiting: VecDeque<(usize, Option<T>)>,
    backpressure: Backpressure,
    /// Publish early once this many bytes are committed.
    publish_threshold: u64,
    /// Drains that found the ring still full, in a row.
    stalled: u32,
    /// Records written since `take_records`.
    written: u64,
}

impl<T: Wire + Clone> RingOutput<T> {
    /// Writes to `producers` (one per downstream subtask; one in all for `Forward`).
    pub fn new(
        producers: Vec<Producer>,
        partition: Partition<T>,
        backpressure: Backpressure,
    ) -> Self {
        let publish_threshold = producers
            .iter()
            .map(|p| p.capacity() as u64 / 4)
            .min()
            .unwrap_or(0);
        Self {
            producers,
            partition,
            next: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            waiting: VecDeque::new(),
            backpressure,
            publish_threshold,
            stalled: 0,
            written: 0,
        }
    }

    /// Wraps it for a chain (as `Emit`) and for its task (as `OutputControl`).
    pub fn into_shared(self) -> (SharedOutput<T>, Rc<RefCell<dyn OutputControl>>) {
        let rc = Rc::new(RefCell::new(self));
        (SharedOutput(rc.clone()), rc)
    }

    /// Tries to write one frame; false if the ring is full.
    #[inline]
    fn try_write(&mut self, ch: usize, rec: Option<&T>) -> bool {
        let Some(p) = self.producers.get_mut(ch) else {
            return true;
        };
        let r = match rec {
            Some(rec) => match p.try_claim(rec.encoded_len(), FrameType::Data) {
                Ok(mut claim) => {
                    rec.encode(claim.payload_mut());
                    claim.commit();
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => p.try_send(FrameType::EndOfStream, &[]),
        };
        match r {
            Ok(()) => {
                if p.unpublished_bytes() > self.publish_threshold {
                    p.publish();
                }
                true
            }
            Err(ClaimError::Full) => {
                // Let the consumer see what is there before we wait for it.
                p.publish();
                false
            }
            Err(e) => {
                report_failure(format!("writing a record to its ring: {e}"));
                true
            }
        }
    }

    #[inline]
    fn send(&mut self, ch: usize, rec: T) {
        self.written += 1;
        if !self.waiting.is_empty() || !self.try_write(ch, Some(&rec)) {
            self.waiting.push_back((ch, Some(rec)));
            self.backpressure.set(true);
        }
    }
}

impl<T: Wire + Clone> OutputControl for RingOutput<T> {
    fn drain(&mut self) -> bool {
        while let Some((ch, rec)) = self.waiting.pop_front() {
            if !self.try_write(ch, rec.as_ref()) {
                self.waiting.push_front((ch, rec));
                self.stalled += 1;
                // Now and then (a syscall on the slow path): is the consumer still there?
                if self.stalled.is_multiple_of(STALL_CHECK) {
                    if let Some(p) = self.producers.get(ch) {
                        let why = match p.consumer_state(0, 0) {
                            PeerState::Closed => Some("closed its ring"),
                            PeerState::Gone => Some("process died"),
                            PeerState::Broken => {
                                Some("host is unreachable: the network connection to it failed")
                            }
                            _ => None,
                        };
                        if let Some(why) = why {
                            report_failure(format!(
                                "output channel {ch}: the downstream task's {why}"
                            ));
                            self.waiting.clear();
                            return true;
                        }
                    }
                }
                return false;
            }
        }
        self.stalled = 0;
        true
    }

    fn publish(&mut self) {
        for p in &mut self.producers {
            p.publish();
        }
    }

    fn take_records(&mut self) -> u64 {
        std::mem::take(&mut self.written)
    }
}

/// The chain's handle on a [`RingOutput`].
pub struct SharedOutput<T>(Rc<RefCell<RingOutput<T>>>);

impl<T: Wire + Clone> Emit<T> for SharedOutput<T> {
    #[inline]
    fn emit(&mut self, rec: T) {
        let mut o = self.0.borrow_mut();
        let n = o.producers.len();
        match &o.partition {
            Partition::Forward => o.send(0, rec),
            Partition::Rebalance => {
                let ch = o.next;
                o.next = if ch + 1 >= n { 0 } else { ch + 1 };
                o.send(ch, rec);
            }
            Partition::Shuffle => {
                let mut x = o.rng;
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                o.rng = x;
                o.send(channel_for_hash(x, n), rec);
            }
            Partition::Hash(f) => {
                let ch = channel_for_hash(f(&rec), n);
                o.send(ch, rec);
            }
            Partition::Broadcast => {
                for ch in 0..n {
                    o.send(ch, rec.clone());
                }
            }
        }
    }

    fn finish(&mut self) {
        let mut o = self.0.borrow_mut();
        for ch in 0..o.producers.len() {
            if !o.waiting.is_empty() || !o.try_write(ch, None) {
                o.waiting.push_back((ch, None));
                o.backpressure.set(true);
            }
        }
    }
}
