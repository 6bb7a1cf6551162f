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

/// Which of `n` channels a hash picks, uniformly (multiply-shift).
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
    /// Sends a latency marker (emitted at `emitted_ns`) down one of the edge's
    /// channels, the next in turn, behind everything written to it so far.
    fn send_latency_marker(&mut self, emitted_ns: u64);
}

/// Shared flag: some output of this task has frames waiting.
pub type Backpressure = Rc<Cell<bool>>;

/// A frame waiting for ring space.
struct Waiting {
    ch: usize,
    ty: FrameType,
    bytes: Vec<u8>,
}

/// The rings of an edge and the frames waiting for room in them.
struct Writer {
    producers: Vec<Producer>,
    /// Frames waiting for ring space, in order, and spare buffers for them.
    waiting: VecDeque<Waiting>,
    spare: Vec<Vec<u8>>,
    backpressure: Backpressure,
}

impl Writer {
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
}

/// Writes batches of `T` to the rings of one edge.
pub struct RingOutput<T> {
    w: Writer,
    partition: Partition<T>,
    next: usize,
    rng: u64,
    /// Per record of the batch being written: its key hash, its channel.
    hashes: Vec<u64>,
    /// The channel of each key group of the job's max parallelism (its length): one
    /// multiply and one load per record.
    key_group_channel: Vec<u32>,
    chan: Vec<u32>,
    /// Record indices grouped by channel, and where each channel's group starts.
    order: Vec<u32>,
    starts: Vec<usize>,
    /// Records written since `take_records`.
    written: u64,
    /// The end of input went out: what follows it (the barrier of a task's final
    /// checkpoint, which its consumers take on their own) is not sent.
    ended: bool,
    /// The channel the next latency marker takes (round robin: one marker stays one,
    /// however many channels it crosses).
    next_marker: usize,
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
            w: Writer {
                producers,
                waiting: VecDeque::new(),
                spare: Vec::new(),
                backpressure,
            },
            partition,
            next: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            hashes: Vec::new(),
            key_group_channel: Vec::new(),
            chan: Vec::new(),
            order: Vec::new(),
            starts: vec![0; n + 1],
            written: 0,
            ended: false,
            next_marker: 0,
        }
        .with_max_parallelism(crate::checkpoint::DEFAULT_MAX_PARALLELISM)
    }

    /// Routes keys by key group of `max` (the job's max parallelism, see
    /// [`crate::checkpoint::key_group`]); [`crate::checkpoint::DEFAULT_MAX_PARALLELISM`]
    /// when not called.
    pub fn with_max_parallelism(mut self, max: u32) -> Self {
        let n = self.w.producers.len();
        let max = max.max(1);
        self.key_group_channel = (0..max)
            .map(|kg| crate::checkpoint::subtask_of_key_group(kg, n as u32, max))
            .collect();
        self
    }

    /// Wraps it for a chain (as `Emit`) and for its task (as `OutputControl`).
    pub fn into_shared(self) -> (SharedOutput<T>, Rc<RefCell<dyn OutputControl>>) {
        let rc = Rc::new(RefCell::new(self));
        (SharedOutput(rc.clone()), rc)
    }

    /// Writes the records `batch[i]` for `i` in `sel` (all of `batch` when `None`) to
    /// channel `ch`, as one frame or, past [`MAX_BATCH_FRAME`], several.
    fn write_records(&mut self, ch: usize, batch: &[T], sel: Option<&[u32]>, with_hashes: bool) {
        let count = sel.map_or(batch.len(), <[u32]>::len);
        let limit = self
            .w
            .producers
            .get(ch)
            .map_or(0, |p| p.max_payload().min(MAX_BATCH_FRAME));
        let hashes = with_hashes.then_some(&self.hashes[..]);
        let mut k = 0;
        while k < count {
            // As many records as fit in one frame (at least one).
            let end = match T::FIXED_LEN {
                Some(n) => {
                    let per = n + if with_hashes { 8 } else { 0 };
                    let fit = (limit.saturating_sub(BATCH_HEADER_LEN) / per.max(1))
                        .clamp(1, frames::MAX_BATCH_RECORDS);
                    count.min(k + fit)
                }
                None => {
                    let mut len = BATCH_HEADER_LEN;
                    let mut end = k;
                    while end < count {
                        let i = sel.map_or(end, |s| s[end] as usize);
                        let r = frames::record_len(&batch[i], with_hashes);
                        if end > k && len + r > limit {
                            break;
                        }
                        len += r;
                        end += 1;
                    }
                    end
                }
            };
            let (part, sel_part, hash_part) = match sel {
                Some(s) => (batch, Some(&s[k..end]), hashes),
                None => (&batch[k..end], None, hashes.map(|h| &h[k..end])),
            };
            let len = frames::batch_len(part, sel_part, with_hashes);
            self.w.write_frame(ch, FrameType::Data, len, |buf| {
                frames::encode_batch(buf, part, sel_part, hash_part)
            });
            k = end;
        }
    }

    fn send_batch(&mut self, batch: &mut Vec<T>) {
        let n = self.w.producers.len();
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
                let table = &self.key_group_channel;
                let max = table.len() as u32;
                self.chan.clear();
                self.chan.extend(self.hashes.iter().map(|&h| {
                    // In range: key_group(h, max) < max = table.len().
                    table[crate::checkpoint::key_group(h, max) as usize]
                }));
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
        if self.ended {
            return;
        }
        self.ended = matches!(event, Event::EndOfInput);
        let mut buf = [0u8; MAX_EVENT_LEN];
        let (ty, len) = frames::encode_event(event, &mut buf);
        for ch in 0..self.w.producers.len() {
            self.w
                .write_frame(ch, ty, len, |dst| dst.copy_from_slice(&buf[..len]));
        }
    }
}

impl<T: Wire + Clone> OutputControl for RingOutput<T> {
    fn drain(&mut self) -> bool {
        while let Some(w) = self.w.waiting.front() {
            let Some(p) = self.w.producers.get_mut(w.ch) else {
                self.w.waiting.pop_front();
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
            if let Some(w) = self.w.waiting.pop_front() {
                self.w.spare.push(w.bytes);
            }
        }
        true
    }

    fn publish(&mut self) {
        for p in &mut self.w.producers {
            p.publish();
        }
    }

    fn take_records(&mut self) -> u64 {
        std::mem::take(&mut self.written)
    }

    fn send_latency_marker(&mut self, emitted_ns: u64) {
        let n = self.w.producers.len();
        if self.ended || n == 0 {
            return;
        }
        let ch = self.next_marker % n;
        self.next_marker = self.next_marker.wrapping_add(1);
        let mut buf = [0u8; MAX_EVENT_LEN];
        let (ty, len) = frames::encode_latency_marker(emitted_ns, &mut buf);
        self.w
            .write_frame(ch, ty, len, |dst| dst.copy_from_slice(&buf[..len]));
    }

    fn housekeeping(&mut self, now_ns: u64, peer_timeout_ns: u64) -> Result<(), String> {
        for p in &self.w.producers {
            p.heartbeat(now_ns);
        }
        let Some(w) = self.w.waiting.front() else {
            return Ok(());
        };
        let ch = w.ch;
        let Some(p) = self.w.producers.get(ch) else {
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
        self.w.waiting.clear();
        self.w.backpressure.set(false);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::key_hash;
    use crate::ring::{Consumer, Ring};

    /// Reads everything a ring holds: records with their hashes, and events.
    fn read_all(c: &mut Consumer, recs: &mut Vec<(u64, u64)>, events: &mut Vec<Event>) {
        let (mut batch, mut hashes, mut scratch) = (Vec::<u64>::new(), Vec::new(), Vec::new());
        while let Some(f) = c.try_read().unwrap() {
            if f.frame_type() == FrameType::Data {
                let keyed =
                    frames::decode_batch(f.payload(), &mut batch, &mut hashes, &mut scratch)
                        .unwrap();
                assert!(keyed);
                recs.extend(batch.drain(..).zip(hashes.drain(..)));
            } else {
                events.push(
                    frames::decode_event(f.frame_type(), f.payload())
                        .unwrap()
                        .unwrap(),
                );
            }
        }
        c.release();
    }

    #[test]
    fn a_key_exchange_delivers_every_record_once_in_order_with_its_hash_through_full_rings() {
        let n = 3;
        let (producers, mut consumers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| Ring::anonymous(4096).unwrap()).unzip();
        let bp: Backpressure = Rc::new(Cell::new(false));
        let hasher: KeyHashFn<u64> = Arc::new(|b: &[u64], out: &mut Vec<u64>| {
            out.clear();
            out.extend(b.iter().map(|x| key_hash(&(x % 10))));
        });
        let (mut emit, ctl) =
            RingOutput::new(producers, Partition::Hash(hasher), bp.clone()).into_shared();
        let mut got: Vec<Vec<(u64, u64)>> = vec![Vec::new(); n];
        let mut events: Vec<Vec<Event>> = vec![Vec::new(); n];
        let mut next = 0u64;
        // Batches larger than a frame can hold (a 4 KiB ring carries 2 KiB frames), and
        // more than the rings hold: frames wait, in order, until the consumers read.
        for round in 0..20 {
            let mut batch: Vec<u64> = (next..next + 300).collect();
            next += 300;
            emit.push(&mut batch);
            assert!(batch.is_empty());
            if round % 5 == 4 {
                emit.event(Event::Watermark(round));
            }
            if round % 3 == 0 {
                for ch in 0..n {
                    read_all(&mut consumers[ch], &mut got[ch], &mut events[ch]);
                }
                ctl.borrow_mut().drain();
            }
        }
        emit.event(Event::EndOfInput);
        while bp.get() {
            for ch in 0..n {
                read_all(&mut consumers[ch], &mut got[ch], &mut events[ch]);
            }
            if ctl.borrow_mut().drain() {
                bp.set(false);
            }
        }
        for ch in 0..n {
            read_all(&mut consumers[ch], &mut got[ch], &mut events[ch]);
        }
        let mut all: Vec<u64> = Vec::new();
        for (ch, recs) in got.iter().enumerate() {
            for &(x, h) in recs {
                assert_eq!(h, key_hash(&(x % 10)), "the hash travels with its record");
                let owner = crate::checkpoint::KeyGroupRange {
                    subtask: ch as u32,
                    parallelism: n as u32,
                    max_parallelism: 128,
                };
                assert!(owner.owns(h), "a key goes to its channel");
            }
            // In order within the channel.
            assert!(recs.windows(2).all(|w| w[0].0 < w[1].0));
            all.extend(recs.iter().map(|r| r.0));
            let wm: Vec<Event> = (0..20)
                .filter(|r| r % 5 == 4)
                .map(Event::Watermark)
                .chain([Event::EndOfInput])
                .collect();
            assert_eq!(events[ch], wm, "every channel gets every event, in order");
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (0..next).collect::<Vec<_>>(),
            "every record exactly once"
        );
        assert_eq!(ctl.borrow_mut().take_records(), next);
    }

    #[test]
    fn events_stay_behind_the_records_before_them_on_every_channel() {
        let (producers, mut consumers): (Vec<_>, Vec<_>) =
            (0..2).map(|_| Ring::anonymous(1 << 16).unwrap()).unzip();
        let bp: Backpressure = Rc::new(Cell::new(false));
        let (mut emit, _ctl) =
            RingOutput::<u64>::new(producers, Partition::Rebalance, bp).into_shared();
        emit.push(&mut vec![1, 2, 3]);
        emit.event(Event::Watermark(7));
        emit.push(&mut vec![4]);
        for (ch, c) in consumers.iter_mut().enumerate() {
            let mut kinds = Vec::new();
            while let Some(f) = c.try_read().unwrap() {
                let mut b: Vec<u64> = Vec::new();
                match f.frame_type() {
                    FrameType::Data => {
                        frames::decode_batch(f.payload(), &mut b, &mut Vec::new(), &mut Vec::new())
                            .unwrap();
                        kinds.push(format!("{b:?}"));
                    }
                    t => kinds.push(format!("{t:?}")),
                }
            }
            // Round robin carries on from batch to batch: 1, 3 | 2, then 4.
            let expect: &[&str] = if ch == 0 {
                &["[1, 3]", "Watermark"]
            } else {
                &["[2]", "Watermark", "[4]"]
            };
            assert_eq!(kinds, expect, "channel {ch}");
        }
    }

    #[test]
    fn latency_markers_take_one_channel_each_in_turn_behind_the_records() {
        let (producers, mut consumers): (Vec<_>, Vec<_>) =
            (0..3).map(|_| Ring::anonymous(1 << 16).unwrap()).unzip();
        let bp: Backpressure = Rc::new(Cell::new(false));
        let (mut emit, ctl) =
            RingOutput::<u64>::new(producers, Partition::Rebalance, bp).into_shared();
        emit.push(&mut vec![1, 2, 3]);
        for t in [100, 101, 102, 103] {
            ctl.borrow_mut().send_latency_marker(t);
        }
        let mut seen = Vec::new();
        for (ch, c) in consumers.iter_mut().enumerate() {
            let mut data_first = false;
            while let Some(f) = c.try_read().unwrap() {
                match frames::latency_marker(f.frame_type(), f.payload()) {
                    Some(t) => {
                        assert!(data_first, "a marker overtook channel {ch}'s records");
                        seen.push((ch, t));
                    }
                    None => data_first = true,
                }
            }
        }
        seen.sort_by_key(|&(_, t)| t);
        assert_eq!(seen, vec![(0, 100), (1, 101), (2, 102), (0, 103)]);
        // After the end of input, none.
        emit.event(Event::EndOfInput);
        ctl.borrow_mut().send_latency_marker(104);
        for c in &mut consumers {
            while let Some(f) = c.try_read().unwrap() {
                assert_eq!(frames::latency_marker(f.frame_type(), f.payload()), None);
            }
        }
    }
}
