//! The ring side of an edge between tasks: partitioning batches onto the rings of the
//! downstream subtasks, one frame per batch per channel, and backpressure when a ring
//! is full.
//!
//! A batch is split by channel with one counting sort (no allocation: the index buffers
//! are kept), and each channel's share is encoded straight into a frame claimed in its
//! ring and published at once, so a consumer that waits gets the batch without delay
//! and a busy one finds whole batches. Key exchanges write each record's key hash into
//! the frame, for the keyed operator downstream to use.
//!
//! A full ring never blocks the slot thread (the consumer may run on the same thread):
//! the frame is encoded into a spare buffer and queued, the task is marked backpressured
//! and takes no new input until the queue has drained into the ring. Buffers are
//! recycled, so steady state allocates nothing.

use crate::frames::{self, BATCH_HEADER_LEN, MAX_EVENT_LEN};
use crate::operator::{report_failure, Emit, Event};
use crate::record::Wire;
use crate::ring::{ClaimError, FrameType, PeerState, Producer};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

/// Hashes the keys of a batch: clears the vector and pushes one hash per record (as
/// [`crate::operator::key_hash`] computes it). One dynamic call per batch; the loop
/// inside is the key selector's, inlined.
pub type KeyHashFn<T> = Arc<dyn Fn(&[T], &mut Vec<u64>) + Send + Sync>;

/// Largest batch frame written (bytes of payload); larger batches are split.
pub const MAX_BATCH_FRAME: usize = 256 << 10;

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
    /// Moves waiting frames into rings; returns whether none are left waiting.
    fn drain(&mut self) -> bool;
    /// Publishes committed frames.
    fn publish(&mut self);
    /// Records written since the last call.
    fn take_records(&mut self) -> u64;
    /// Housekeeping on a deadline: marks this side of every ring alive at `now_ns` and,
    /// while frames wait, checks that the consumers they wait for are still there
    /// (failing after `peer_timeout_ns` without a sign of life; 0: never).
    fn housekeeping(&mut self, now_ns: u64, peer_timeout_ns: u64) -> Result<(), String>;
}

/// Shared flag: some output of this task has frames waiting.
pub type Backpressure = Rc<Cell<bool>>;

/// A frame waiting for ring space.
struct Waiting {
    ch: usize,
    ty: FrameType,
    bytes: Vec<u8>,
}

/// Writes batches of `T` to the rings of one edge.
pub struct RingOutput<T> {
    producers: Vec<Producer>,
    partition: Partition<T>,
    next: usize,
    rng: u64,
    /// Per record of the batch being written: its key hash, its channel.
    hashes: Vec<u64>,
    chan: Vec<u32>,
    /// Record indices grouped by channel, and where each channel's group starts.
    order: Vec<u32>,
    starts: Vec<usize>,
    /// Frames waiting for ring space, in order, and spare buffers for them.
    waiting: VecDeque<Waiting>,
    spare: Vec<Vec<u8>>,
    backpressure: Backpressure,
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
        let n = producers.len();
        Self {
            producers,
            partition,
            next: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            hashes: Vec::new(),
            chan: Vec::new(),
            order: Vec::new(),
            starts: vec![0; n + 1],
            waiting: VecDeque::new(),
            spare: Vec::new(),
            backpressure,
            written: 0,
        }
    }

    /// Wraps it for a chain (as `Emit`) and for its task (as `OutputControl`).
    pub fn into_shared(self) -> (SharedOutput<T>, Rc<RefCell<dyn OutputControl>>) {
        let rc = Rc::new(RefCell::new(self));
        (SharedOutput(rc.clone()), rc)
    }

    /// Writes one frame of `len` payload bytes to channel `ch`, filled by `fill`: into
    /// the ring if nothing waits and it fits, else into the waiting queue.
    #[inline]
    fn write_frame(&mut self, ch: usize, ty: FrameType, len: usize, fill: impl FnOnce(&mut [u8])) {
        let Some(p) = self.producers.get_mut(ch) else {
            return;
        };
        if self.waiting.is_empty() {
            match p.try_claim(len, ty) {
                Ok(mut claim) => {
                    fill(claim.payload_mut());
                    claim.commit();
                    // At once: a consumer waiting on an empty ring should not wait for
                    // more; one that is busy finds whole batches either way.
                    p.publish();
                    return;
                }
                Err(ClaimError::Full) => {
                    // Let the consumer see what is there before we wait for it.
                    p.publish();
                }
                Err(e) => {
                    report_failure(format!("writing to output channel {ch}: {e}"));
                    return;
                }
            }
        }
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        bytes.resize(len, 0);
        fill(&mut bytes);
        self.waiting.push_back(Waiting { ch, ty, bytes });
        self.backpressure.set(true);
    }

    /// Writes the records `batch[i]` for `i` in `sel` (all of `batch` when `None`) to
    /// channel `ch`, as one frame or, past [`MAX_BATCH_FRAME`], several.
    fn write_records(&mut self, ch: usize, batch: &[T], sel: Option<&[u32]>, with_hashes: bool) {
        let count = sel.map_or(batch.len(), <[u32]>::len);
        let idx = |k: usize| sel.map_or(k, |s| s[k] as usize);
        let limit = self
            .producers
            .get(ch)
            .map_or(0, |p| p.max_payload().min(MAX_BATCH_FRAME));
        let mut k = 0;
        while k < count {
            // As many records as fit in one frame (at least one).
            let mut len = BATCH_HEADER_LEN;
            let mut end = k;
            while end < count {
                let r = frames::record_len(&batch[idx(end)], with_hashes);
                if end > k && len + r > limit {
                    break;
                }
                len += r;
                end += 1;
            }
            let hashes = &self.hashes;
            let records = (k..end).map(|j| {
                let i = idx(j);
                (&batch[i], if with_hashes { hashes[i] } else { 0 })
            });
            let mut bytes = self.spare.pop().unwrap_or_default();
            let direct = self.waiting.is_empty();
            if direct {
                if let Some(p) = self.producers.get_mut(ch) {
                    match p.try_claim(len, FrameType::Data) {
                        Ok(mut claim) => {
                            frames::encode_batch(
                                claim.payload_mut(),
                                end - k,
                                records,
                                with_hashes,
                            );
                            claim.commit();
                            p.publish();
                            self.spare.push(bytes);
                            k = end;
                            continue;
                        }
                        Err(ClaimError::Full) => p.publish(),
                        Err(e) => {
                            report_failure(format!("writing to output channel {ch}: {e}"));
                            self.spare.push(bytes);
                            k = end;
                            continue;
                        }
                    }
                }
            }
            bytes.clear();
            bytes.resize(len, 0);
            frames::encode_batch(&mut bytes, end - k, records, with_hashes);
            self.waiting.push_back(Waiting {
                ch,
                ty: FrameType::Data,
                bytes,
            });
            self.backpressure.set(true);
            k = end;
        }
    }

    fn send_batch(&mut self, batch: &mut Vec<T>) {
        let n = self.producers.len();
        let len = batch.len();
        if len == 0 || n == 0 {
            batch.clear();
            return;
        }
        let mut with_hashes = false;
        match &self.partition {
            Partition::Forward => {
                self.written += len as u64;
                self.write_records(0, batch, None, false);
                batch.clear();
                return;
            }
            Partition::Broadcast => {
                for ch in 0..n {
                    self.write_records(ch, batch, None, false);
                }
                self.written += (len * n) as u64;
                batch.clear();
                return;
            }
            Partition::Hash(f) => {
                f(batch, &mut self.hashes);
                if self.hashes.len() != len {
                    report_failure("internal: the key hasher returned the wrong count");
                    batch.clear();
                    return;
                }
                self.chan.clear();
                self.chan
                    .extend(self.hashes.iter().map(|&h| channel_for_hash(h, n) as u32));
                with_hashes = true;
            }
            Partition::Rebalance => {
                let start = self.next;
                self.chan.clear();
                self.chan.extend((0..len).map(|i| ((start + i) % n) as u32));
                self.next = (start + len) % n;
            }
            Partition::Shuffle => {
                let mut x = self.rng;
                self.chan.clear();
                self.chan.extend((0..len).map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    channel_for_hash(x, n) as u32
                }));
                self.rng = x;
            }
        }
        // Counting sort of record indices by channel.
        self.starts.clear();
        self.starts.resize(n + 1, 0);
        for &c in &self.chan {
            self.starts[c as usize + 1] += 1;
        }
        for c in 0..n {
            self.starts[c + 1] += self.starts[c];
        }
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.resize(len, 0);
        {
            // `cursor[c]`: the next free place of channel c's group.
            let mut cursor = std::mem::take(&mut self.starts);
            for (i, &c) in self.chan.iter().enumerate() {
                let at = &mut cursor[c as usize];
                order[*at] = i as u32;
                *at += 1;
            }
            // `cursor[c]` is now the end of channel c's group, i.e. the start of c + 1.
            cursor.rotate_right(1);
            cursor[0] = 0;
            self.starts = cursor;
        }
        for ch in 0..n {
            let (a, b) = (self.starts[ch], self.starts[ch + 1]);
            if a < b {
                self.write_records(ch, batch, Some(&order[a..b]), with_hashes);
            }
        }
        self.order = order;
        self.written += len as u64;
        batch.clear();
    }

    fn send_event(&mut self, event: &Event) {
        let mut buf = [0u8; MAX_EVENT_LEN];
        let (ty, len) = frames::encode_event(event, &mut buf);
        for ch in 0..self.producers.len() {
            self.write_frame(ch, ty, len, |dst| dst.copy_from_slice(&buf[..len]));
        }
    }
}

impl<T: Wire + Clone> OutputControl for RingOutput<T> {
    fn drain(&mut self) -> bool {
        while let Some(w) = self.waiting.front() {
            let Some(p) = self.producers.get_mut(w.ch) else {
                self.waiting.pop_front();
                continue;
            };
            match p.try_claim(w.bytes.len(), w.ty) {
                Ok(mut claim) => {
                    claim.payload_mut().copy_from_slice(&w.bytes);
                    claim.commit();
                    p.publish();
                }
                Err(ClaimError::Full) => {
                    p.publish();
                    return false;
                }
                Err(e) => report_failure(format!("writing to output channel {}: {e}", w.ch)),
            }
            if let Some(w) = self.waiting.pop_front() {
                self.spare.push(w.bytes);
            }
        }
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

    fn housekeeping(&mut self, now_ns: u64, peer_timeout_ns: u64) -> Result<(), String> {
        for p in &self.producers {
            p.heartbeat(now_ns);
        }
        let Some(w) = self.waiting.front() else {
            return Ok(());
        };
        let ch = w.ch;
        let Some(p) = self.producers.get(ch) else {
            return Ok(());
        };
        let why = match p.consumer_state(now_ns, peer_timeout_ns) {
            PeerState::Closed => "closed its ring".to_string(),
            PeerState::Gone => "process died".to_string(),
            PeerState::Broken => "host is unreachable: the network connection to it failed".into(),
            PeerState::Unresponsive { age_ns } => format!(
                "process has shown no sign of life for {:.1} s (stopped or hung)",
                age_ns as f64 / 1e9
            ),
            _ => return Ok(()),
        };
        self.waiting.clear();
        self.backpressure.set(false);
        Err(format!("output channel {ch}: the downstream task's {why}"))
    }
}

/// The chain's handle on a [`RingOutput`].
pub struct SharedOutput<T>(Rc<RefCell<RingOutput<T>>>);

impl<T: Wire + Clone> Emit<T> for SharedOutput<T> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<T>) {
        self.0.borrow_mut().send_batch(batch);
    }

    fn event(&mut self, event: Event) {
        self.0.borrow_mut().send_event(&event);
    }

    fn tick(&mut self, _now_ns: u64) {}
}
