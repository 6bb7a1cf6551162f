//! Sources: where records enter a pipeline, including the W1 trade generator.

use super::SubtaskInfo;
use crate::checkpoint::{decode_state, encode_state, Share, StateError};
use crate::slot::TaskError;
use std::io::{BufRead, Read};

/// What one poll of a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Emitted this many records (0: nothing available now).
    Emitted(usize),
    /// The source is exhausted (bounded sources only).
    Done,
    /// Nothing now and nothing ever: an unbounded source's subtask without splits
    /// (after a restore at a higher parallelism than its splits). Its stream goes
    /// idle, holding back no watermark, and the task keeps running (as Flink's
    /// source readers without splits).
    Idle,
}

/// A source of records.
///
/// Performance contract: `poll` appends at most `max` records to `out` (a batch the
/// task reuses) and never blocks.
pub trait Source<T> {
    /// Appends up to `max` records to `out`; `now_ns` is the task's clock reading for
    /// this poll.
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        now_ns: u64,
    ) -> Result<SourceStatus, TaskError>;

    /// The source's position, for a checkpoint (`None`: it cannot be replayed, as a
    /// socket cannot; after a restore it starts over). Encode with
    /// [`crate::checkpoint::encode_state`].
    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        Ok(None)
    }

    /// Resumes from a position [`Self::snapshot_position`] wrote: called once, before
    /// the first poll.
    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let _ = state;
        Err(StateError::Decode(
            "the checkpoint holds a position for a source that keeps none".into(),
        ))
    }

    /// Resumes as subtask `now` at another parallelism than the checkpoint's: `shares`
    /// are the positions every old subtask wrote (see [`crate::checkpoint::shares`]),
    /// of which it takes its part. Called once, before the first poll, instead of
    /// [`Self::restore_position`]. A source whose subtasks read *splits* (parts of the
    /// input fixed when the job first ran) spreads them over the new subtasks, as
    /// Flink reassigns source splits: split `i` to new subtask `i mod p`. By default a
    /// source cannot be rescaled.
    fn restore_shares(&mut self, now: SubtaskInfo, shares: &[Share<'_>]) -> Result<(), StateError> {
        let _ = (now, shares);
        Err(StateError::Decode(
            "this source's position cannot be redistributed to another parallelism (keep \
             the source's parallelism: set_parallelism on it)"
                .into(),
        ))
    }
}

/// Emits the items of an iterator.
///
/// Its position is the number of items it emitted: a restored source makes its iterator
/// anew (from the same collection or generator) and skips that many, so it replays
/// exactly when the iterator yields the same items each time.
pub struct IterSource<I> {
    iter: I,
    emitted: u64,
}

impl<I> IterSource<I> {
    /// Over `iter`.
    pub fn new(iter: I) -> Self {
        Self { iter, emitted: 0 }
    }
}

impl<T, I: Iterator<Item = T>> Source<T> for IterSource<I> {
    fn poll(&mut self, out: &mut Vec<T>, max: usize, _: u64) -> Result<SourceStatus, TaskError> {
        for n in 0..max {
            match self.iter.next() {
                Some(x) => {
                    self.emitted += 1;
                    out.push(x)
                }
                None if n == 0 => return Ok(SourceStatus::Done),
                None => return Ok(SourceStatus::Emitted(n)),
            }
        }
        Ok(SourceStatus::Emitted(max))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&self.emitted).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let n: u64 = decode_state(state)?;
        for _ in 0..n {
            if self.iter.next().is_none() {
                return Err(StateError::Decode(format!(
                    "the checkpoint's position ({n} items) is past the source's end"
                )));
            }
        }
        self.emitted = n;
        Ok(())
    }
}

/// A W1 trade: `price` is fixed-point with [`PRICE_SCALE`] units per currency unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Trade {
    /// Event time: when the trade was (scheduled to be) sent, ns on the data plane clock.
    pub ts_ns: u64,
    /// Price, fixed point.
    pub price: i64,
    /// Symbol id, 0..SYMBOLS.
    pub symbol: u32,
    /// Quantity, 1..=100.
    pub qty: u32,
}

crate::pod_wire!(Trade);

/// Symbols in W1.
pub const SYMBOLS: u32 = 1000;
/// Fixed-point scale of prices (4 decimals).
pub const PRICE_SCALE: i64 = 10_000;

/// The seeded W1 trade generator of one source subtask. Subtask `i` of `p` generates the
/// symbols `s` with `s % p == i`, so that each symbol's trades come from one subtask in
/// generation order (a feed partitioned by symbol), and the same seed gives the same
/// per-symbol sequence in any run.
#[derive(Debug, Clone)]
pub struct TradeGenerator {
    state: u64,
    subtask: u32,
    parallelism: u32,
    /// Symbols this subtask owns.
    owned: u32,
}

impl TradeGenerator {
    /// The generator of subtask `info.index` for `seed`.
    pub fn new(seed: u64, info: SubtaskInfo) -> Self {
        let p = info.parallelism.max(1) as u32;
        let i = info.index as u32 % p;
        // Callers keep parallelism ≤ SYMBOLS (see `TradeSource::new`); stay in range anyway.
        let owned = SYMBOLS.saturating_sub(i).div_ceil(p).max(1);
        let state = seed ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            state,
            subtask: i,
            parallelism: p,
            owned,
        }
    }

    /// The next trade, stamped `ts_ns`.
    #[inline(always)]
    pub fn next_trade(&mut self, ts_ns: u64) -> Trade {
        let r = wyrand(&mut self.state);
        // Each field from bits of its own, scaled by multiply-shift (no division): the
        // symbol from the top 20 bits, the price from the 24 below them, the quantity
        // from the 16 below those.
        let symbol =
            self.subtask + self.parallelism * (((r >> 44) * u64::from(self.owned)) >> 20) as u32;
        let qty = 1 + ((((r >> 4) & 0xFFFF) * 100) >> 16) as u32;
        // Prices around 100.0000 ± 50.0000.
        let price = 50 * PRICE_SCALE
            + ((((r >> 20) & 0xFF_FFFF) * (100 * PRICE_SCALE as u64)) >> 24) as i64;
        Trade {
            ts_ns,
            price,
            symbol,
            qty,
        }
    }

    /// Appends the next `n` trades, stamped `ts_ns`, each through `wrap` (as `next_trade`
    /// `n` times, with the generator's state in a register for the whole loop).
    #[inline(always)]
    pub fn fill<T: Default + Clone>(
        &mut self,
        out: &mut Vec<T>,
        n: usize,
        ts_ns: u64,
        wrap: impl Fn(Trade) -> T,
    ) {
        let mut g = self.clone();
        fill_slots(out, n, |slot| *slot = wrap(g.next_trade(ts_ns)));
        self.state = g.state;
    }

    /// As [`TradeGenerator::fill`], each trade's event time `ts_ns` less a delay uniform
    /// in `0..=disorder_ns` drawn from the delays' own generator state `delays`.
    #[inline(always)]
    pub fn fill_disordered(
        &mut self,
        out: &mut Vec<Trade>,
        n: usize,
        ts_ns: u64,
        delays: &mut u64,
        disorder_ns: u64,
    ) {
        let (mut g, mut rng) = (self.clone(), *delays);
        fill_slots(out, n, |slot| {
            let mut t = g.next_trade(ts_ns);
            t.ts_ns = t.ts_ns.saturating_sub(next_delay(&mut rng, disorder_ns));
            *slot = t;
        });
        self.state = g.state;
        *delays = rng;
    }
}

/// Appends `n` values to `out`, each set by `write` in place: one plain loop, so that
/// a caller's generator state (a local the loop body captures) stays in registers
/// instead of going through memory per value, as it does in `extend` over a mapped
/// iterator (whose loop is not inlined into the caller). The slots are zeroed first
/// (a vectorized fill, cheaper than the state's trips through memory).
#[inline(always)]
fn fill_slots<T: Default + Clone>(out: &mut Vec<T>, n: usize, mut write: impl FnMut(&mut T)) {
    let len = out.len();
    out.resize(len + n, T::default());
    for slot in &mut out[len..] {
        write(slot);
    }
}

/// How fast a trade source emits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as the pipeline takes them; each trade is stamped when generated.
    Unpaced,
    /// This many trades per second in all (split evenly over subtasks); each trade is
    /// stamped with its *scheduled* send time, so a stall is charged to latency.
    Rate(f64),
}

/// One split of the trade feed: what subtask `subtask` of `parallelism` generates
/// (see [`TradeGenerator`]), fixed when the job first ran. A job resumed at another
/// parallelism carries its splits over, so that every symbol's trades stay the same.
#[derive(Debug, Clone)]
struct TradeSplit {
    gen: TradeGenerator,
    remaining: Option<u64>,
    /// The delays' own generator state (W1's trades stay the same with disorder off).
    delay_rng: u64,
    /// Paced: ns between two trades of this split, trades sent since `start_ns`.
    interval_ns: f64,
    start_ns: u64,
    sent: u64,
}

impl TradeSplit {
    /// When its next trade is due (paced).
    #[inline(always)]
    fn due(&self) -> u64 {
        self.start_ns + (self.sent as f64 * self.interval_ns) as u64
    }
}

/// Tag of a trade source position with its splits, of the wyrand generator.
const TRADE_SPLITS_TAG: u64 = 0x5350_4154_5253_5033;

/// Tag of the positions builds of the xorshift64* generator wrote (the trades from
/// such a position on are not the ones that build would have generated).
const XORSHIFT_SPLITS_TAG: u64 = 0x5350_4154_5253_5032;

/// One split in a trade source's position: subtask, parallelism, generator state,
/// trades left, delay state.
type SplitPosition = (u32, u32, u64, Option<u64>, u64);

/// The W1 source (and W2's, with disorder).
///
/// Each subtask reads one split of the feed, the one its index names (see
/// [`TradeGenerator`]); resumed at another parallelism (see [`Source::restore_shares`])
/// new subtask `j` of `p` reads the splits `i` with `i mod p = j`, in turns, or none
/// (then it ends if bounded, or goes idle).
#[derive(Debug)]
pub struct TradeSource {
    splits: Vec<TradeSplit>,
    /// The split the next unpaced poll reads.
    next: usize,
    pace: Pace,
    /// W2: each trade's event time is its send time minus a delay up to this (ns).
    disorder_ns: u64,
    /// Whether the feed has an end (`events` was given).
    bounded: bool,
}

impl TradeSource {
    /// Most subtasks W1's generator splits into (one symbol each at the most).
    pub const MAX_PARALLELISM: usize = SYMBOLS as usize;

    /// `events`: total over all subtasks (`None`: unbounded). Parallelism above
    /// [`Self::MAX_PARALLELISM`] is refused by [`TradeSource::try_new`].
    pub fn try_new(
        seed: u64,
        events: Option<u64>,
        pace: Pace,
        info: SubtaskInfo,
    ) -> Result<Self, String> {
        if info.parallelism > Self::MAX_PARALLELISM {
            return Err(format!(
                "the trade source runs at parallelism up to {} (one symbol per subtask), not {}",
                Self::MAX_PARALLELISM,
                info.parallelism
            ));
        }
        Ok(Self::new(seed, events, pace, info))
    }

    /// As [`TradeSource::try_new`], for parallelism known to be in range.
    pub fn new(seed: u64, events: Option<u64>, pace: Pace, info: SubtaskInfo) -> Self {
        let p = info.parallelism.max(1) as u64;
        let i = info.index as u64;
        let remaining = events.map(|n| n / p + u64::from(i < n % p));
        let split = TradeSplit {
            gen: TradeGenerator::new(seed, info),
            remaining,
            delay_rng: (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(2 * info.index as u64 + 1) | 1,
            interval_ns: interval_ns(pace, p),
            start_ns: 0,
            sent: 0,
        };
        Self {
            splits: vec![split],
            next: 0,
            pace,
            disorder_ns: 0,
            bounded: events.is_some(),
        }
    }

    /// Stamps each trade with an event time up to `disorder_ns` before its send time
    /// (a seeded, uniform delay): bounded disorder, as W2 has.
    pub fn with_disorder(mut self, disorder_ns: u64) -> Self {
        self.disorder_ns = disorder_ns;
        self
    }

    /// The splits this subtask reads, as `(subtask, parallelism)` of the run that first
    /// generated them.
    pub fn splits(&self) -> Vec<(u32, u32)> {
        self.splits
            .iter()
            .map(|s| (s.gen.subtask, s.gen.parallelism))
            .collect()
    }

    /// Paced: the trades due by `now_ns`, up to `n`, in the order of their send times
    /// across splits.
    fn poll_paced(&mut self, out: &mut Vec<Trade>, n: usize, now_ns: u64) -> usize {
        for s in &mut self.splits {
            if s.start_ns == 0 {
                s.start_ns = now_ns;
            }
        }
        let mut emitted = 0;
        while emitted < n {
            // The split whose next trade is due first (one split but after a rescale).
            let mut at = None;
            let mut first = u64::MAX;
            for (k, s) in self.splits.iter().enumerate() {
                if s.remaining != Some(0) && s.due() < first {
                    first = s.due();
                    at = Some(k);
                }
            }
            let Some(k) = at.filter(|_| first <= now_ns) else {
                break;
            };
            let d = self.disorder_ns;
            let s = &mut self.splits[k];
            let mut t = s.gen.next_trade(first);
            if d > 0 {
                t.ts_ns = t.ts_ns.saturating_sub(next_delay(&mut s.delay_rng, d));
            }
            out.push(t);
            s.sent += 1;
            if let Some(r) = &mut s.remaining {
                *r -= 1;
            }
            emitted += 1;
        }
        emitted
    }
}

/// ns between two trades of one split of `parallelism` splits at `pace`.
fn interval_ns(pace: Pace, parallelism: u64) -> f64 {
    match pace {
        Pace::Rate(r) if r > 0.0 => 1e9 * parallelism as f64 / r,
        _ => 0.0,
    }
}

impl Source<Trade> for TradeSource {
    #[inline]
    fn poll(
        &mut self,
        out: &mut Vec<Trade>,
        max: usize,
        now_ns: u64,
    ) -> Result<SourceStatus, TaskError> {
        if self.splits.len() > 1 || self.splits.first().is_some_and(|s| s.remaining == Some(0)) {
            // Splits that ended leave (rare: at their end, or several after a rescale).
            self.splits.retain(|s| s.remaining != Some(0));
            if self.next >= self.splits.len() {
                self.next = 0;
            }
        }
        if self.splits.is_empty() {
            return Ok(if self.bounded {
                SourceStatus::Done
            } else {
                SourceStatus::Idle
            });
        }
        if let Pace::Rate(_) = self.pace {
            return Ok(SourceStatus::Emitted(self.poll_paced(out, max, now_ns)));
        }
        // Unpaced: a whole poll from one split, the splits in turns.
        let k = self.next;
        self.next = if k + 1 < self.splits.len() { k + 1 } else { 0 };
        let d = self.disorder_ns;
        let Some(s) = self.splits.get_mut(k) else {
            return Ok(SourceStatus::Emitted(0));
        };
        let n = match s.remaining {
            Some(r) => (r.min(max as u64)) as usize,
            None => max,
        };
        if d == 0 {
            s.gen.fill(out, n, now_ns, |t| t);
        } else {
            s.gen.fill_disordered(out, n, now_ns, &mut s.delay_rng, d);
        }
        if let Some(r) = &mut s.remaining {
            *r -= n as u64;
        }
        Ok(SourceStatus::Emitted(n))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        let splits: Vec<SplitPosition> = self
            .splits
            .iter()
            .map(|s| {
                (
                    s.gen.subtask,
                    s.gen.parallelism,
                    s.gen.state,
                    s.remaining,
                    s.delay_rng,
                )
            })
            .collect();
        encode_state(&(TRADE_SPLITS_TAG, splits)).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let older = || {
            StateError::Decode(
                "this trade source position was written by an older build, whose trade \
                 generator (xorshift64*) this one no longer has: resuming from it would not \
                 continue the same trades; start the job afresh (or resume from a checkpoint \
                 or savepoint of this build)"
                    .into(),
            )
        };
        let positions = match decode_state::<(u64, Vec<SplitPosition>)>(state) {
            Ok((TRADE_SPLITS_TAG, v)) => v,
            Ok((XORSHIFT_SPLITS_TAG, _)) => return Err(older()),
            // A position of one split, as the first builds wrote: older still.
            _ if decode_state::<(u64, Option<u64>, u64)>(state).is_ok() => return Err(older()),
            Ok((tag, _)) => {
                return Err(StateError::Decode(format!(
                    "not a trade source position (tag {tag:#x})"
                )))
            }
            Err(e) => return Err(e),
        };
        let mut splits = Vec::with_capacity(positions.len());
        for (subtask, parallelism, gen, remaining, delay) in positions {
            if parallelism == 0
                || subtask >= parallelism
                || parallelism as usize > Self::MAX_PARALLELISM
            {
                return Err(StateError::Decode(format!(
                    "a trade source position for an impossible split {subtask} of {parallelism}"
                )));
            }
            let mut g = TradeGenerator::new(
                0,
                SubtaskInfo {
                    index: subtask as usize,
                    parallelism: parallelism as usize,
                },
            );
            g.state = gen;
            // Pacing starts over from the first poll after the restore.
            splits.push(TradeSplit {
                gen: g,
                remaining,
                delay_rng: delay,
                interval_ns: interval_ns(self.pace, u64::from(parallelism)),
                start_ns: 0,
                sent: 0,
            });
        }
        self.splits = splits;
        self.next = 0;
        Ok(())
    }

    fn restore_shares(&mut self, now: SubtaskInfo, shares: &[Share<'_>]) -> Result<(), StateError> {
        let mut splits = Vec::new();
        for share in shares {
            self.restore_position(share.bytes)?;
            splits.append(&mut self.splits);
        }
        // Split i of the first run goes to new subtask i mod p.
        let p = now.parallelism.max(1) as u32;
        splits.retain(|s| (s.gen.subtask % p) as usize == now.index);
        splits.sort_by_key(|s| s.gen.subtask);
        self.splits = splits;
        self.next = 0;
        Ok(())
    }
}

/// The next delay, uniform in `0..=disorder_ns`, from the delays' own generator state.
#[inline(always)]
fn next_delay(rng: &mut u64, disorder_ns: u64) -> u64 {
    // Multiply-shift into 0..=disorder_ns: no division. (The range's size in 64 bits,
    // so that the multiply is one instruction: a bound of u64::MAX draws up to MAX - 1.)
    let span = disorder_ns.saturating_add(1);
    ((u128::from(wyrand(rng)) * u128::from(span)) >> 64) as u64
}

/// wyrand: the next 64 random bits of the generator whose state is `state` (any value,
/// zero included). Its state advances by an addition alone, so successive draws do not
/// wait on each other (xorshift's chain of six dependent steps did): a loop of draws
/// runs at the rate of its multiplies.
#[inline(always)]
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xA076_1D64_78BD_642F);
    let t = u128::from(*state) * u128::from(*state ^ 0xE703_7ED1_A0B4_28DB);
    ((t >> 64) ^ t) as u64
}

/// Makes the source of one split (see [`SplitSource`]).
pub type MakeSplit<S> = std::sync::Arc<dyn Fn(SubtaskInfo) -> Result<S, String> + Send + Sync>;

/// Tag of a [`SplitSource`] position (its splits with theirs).
const SPLITS_TAG: u64 = 0x5350_4154_5350_4c31;

/// One split in a [`SplitSource`] position: subtask, parallelism, its source's position.
type SplitState = (u32, u32, Vec<u8>);

/// A rescalable parallel source: subtask `i` of `p` reads the *split* `make(i, p)`
/// builds (the part of the input that `(i, p)` and the source's position fix, as the
/// SQL generators' every `p`-th row from `i`). Its position holds each split's
/// `(i, p)` with the inner source's position, so a job resumed at another parallelism
/// goes on with the same splits: a subtask builds the splits it
/// gets (split `i` goes to new subtask `i mod p`, see [`Source::restore_shares`]) and
/// polls them in turns; left without one, it ends (bounded) or goes idle (see
/// [`SourceStatus::Idle`]).
pub struct SplitSource<S> {
    make: MakeSplit<S>,
    splits: Vec<(SubtaskInfo, S)>,
    next: usize,
    bounded: bool,
}

impl<S> SplitSource<S> {
    /// Subtask `info`'s split, built with `make` (which later builds the splits of
    /// other subtasks this one takes over).
    pub fn new(make: MakeSplit<S>, info: SubtaskInfo, bounded: bool) -> Result<Self, String> {
        let own = make(info)?;
        Ok(Self {
            make,
            splits: vec![(info, own)],
            next: 0,
            bounded,
        })
    }

    /// The splits this subtask reads, as `(subtask, parallelism)` of the run that first
    /// read them.
    pub fn splits(&self) -> Vec<(usize, usize)> {
        self.splits
            .iter()
            .map(|(i, _)| (i.index, i.parallelism))
            .collect()
    }

    fn build<T>(&self, positions: Vec<SplitState>) -> Result<Vec<(SubtaskInfo, S)>, StateError>
    where
        S: Source<T>,
    {
        let mut splits = Vec::with_capacity(positions.len());
        for (index, parallelism, bytes) in positions {
            if parallelism == 0 || index >= parallelism {
                return Err(StateError::Decode(format!(
                    "a source position for an impossible split {index} of {parallelism}"
                )));
            }
            let info = SubtaskInfo {
                index: index as usize,
                parallelism: parallelism as usize,
            };
            let mut src = (self.make)(info).map_err(StateError::Decode)?;
            src.restore_position(&bytes)?;
            splits.push((info, src));
        }
        Ok(splits)
    }
}

impl<T, S: Source<T>> Source<T> for SplitSource<S> {
    fn poll(
        &mut self,
        out: &mut Vec<T>,
        max: usize,
        now_ns: u64,
    ) -> Result<SourceStatus, TaskError> {
        // One split but after a rescale: a poll reads the splits in turns, from the
        // one after the split that gave records last, until one gives some.
        let mut tried = 0;
        while tried < self.splits.len() {
            let k = if self.next < self.splits.len() {
                self.next
            } else {
                0
            };
            let Some((_, src)) = self.splits.get_mut(k) else {
                break;
            };
            match src.poll(out, max, now_ns)? {
                SourceStatus::Emitted(0) | SourceStatus::Idle => {
                    tried += 1;
                    self.next = k + 1;
                }
                SourceStatus::Emitted(n) => {
                    if self.splits.len() > 1 {
                        self.next = k + 1;
                    }
                    return Ok(SourceStatus::Emitted(n));
                }
                SourceStatus::Done => {
                    self.splits.remove(k);
                    self.next = k;
                }
            }
        }
        Ok(if !self.splits.is_empty() {
            SourceStatus::Emitted(0)
        } else if self.bounded {
            SourceStatus::Done
        } else {
            SourceStatus::Idle
        })
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        let mut splits: Vec<SplitState> = Vec::with_capacity(self.splits.len());
        for (info, src) in &mut self.splits {
            let Some(p) = src.snapshot_position()? else {
                // A split that cannot be replayed: neither can the whole.
                return Ok(None);
            };
            splits.push((info.index as u32, info.parallelism as u32, p));
        }
        encode_state(&(SPLITS_TAG, splits)).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        match decode_state::<(u64, Vec<SplitState>)>(state) {
            Ok((SPLITS_TAG, positions)) => {
                self.splits = self.build(positions)?;
            }
            _ => {
                // The position of this subtask's own split alone, as older builds wrote.
                let Some((_, own)) = self.splits.first_mut() else {
                    return Err(StateError::Decode("a source without its split".into()));
                };
                own.restore_position(state)?;
                self.splits.truncate(1);
            }
        }
        self.next = 0;
        Ok(())
    }

    fn restore_shares(&mut self, now: SubtaskInfo, shares: &[Share<'_>]) -> Result<(), StateError> {
        let mut positions = Vec::new();
        for share in shares {
            match decode_state::<(u64, Vec<SplitState>)>(share.bytes) {
                Ok((SPLITS_TAG, mut p)) => positions.append(&mut p),
                _ => {
                    return Err(StateError::Decode(format!(
                        "subtask {}'s source position holds no splits (written by an older \
                         build): it resumes at its own parallelism only",
                        share.subtask
                    )))
                }
            }
        }
        // Split i of the first run goes to new subtask i mod p.
        let p = now.parallelism.max(1) as u32;
        positions.retain(|(i, _, _)| (i % p) as usize == now.index);
        positions.sort_by_key(|(i, _, _)| *i);
        self.splits = self.build(positions)?;
        self.next = 0;
        Ok(())
    }
}

/// Longest line the line sources accept (a peer cannot grow memory without bound).
pub const MAX_LINE: usize = 16 << 20;

/// Emits the lines of a reader (a file), without their line endings.
///
/// Its position is the byte offset of the next line: a restored source seeks there.
pub struct LinesSource<R> {
    reader: R,
    line: String,
    what: String,
    offset: u64,
}

impl LinesSource<std::io::BufReader<std::fs::File>> {
    /// The lines of the file at `path`.
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        let f = std::fs::File::open(path)?;
        Ok(Self {
            reader: std::io::BufReader::with_capacity(1 << 16, f),
            line: String::new(),
            what: path.display().to_string(),
            offset: 0,
        })
    }
}

impl<R: BufRead + std::io::Seek> Source<String> for LinesSource<R> {
    fn poll(
        &mut self,
        out: &mut Vec<String>,
        max: usize,
        _: u64,
    ) -> Result<SourceStatus, TaskError> {
        for n in 0..max {
            self.line.clear();
            // Bounded: a line longer than MAX_LINE is an error, not unbounded memory.
            match (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_line(&mut self.line)
            {
                Ok(0) if n == 0 => return Ok(SourceStatus::Done),
                Ok(0) => return Ok(SourceStatus::Emitted(n)),
                Ok(_) if self.line.len() > MAX_LINE => {
                    return Err(TaskError(format!(
                        "{}: a line longer than {MAX_LINE} bytes",
                        self.what
                    )))
                }
                Ok(k) => {
                    self.offset += k as u64;
                    let l = self.line.trim_end_matches(['\n', '\r']);
                    out.push(l.to_string());
                }
                Err(e) => return Err(TaskError(format!("reading {}: {e}", self.what))),
            }
        }
        Ok(SourceStatus::Emitted(max))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&self.offset).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let offset: u64 = decode_state(state)?;
        self.reader
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| StateError::Decode(format!("seeking {} to {offset}: {e}", self.what)))?;
        self.offset = offset;
        Ok(())
    }
}

/// Emits the lines received on a TCP connection (non-blocking); ends when the peer closes.
pub struct SocketSource {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
    start: usize,
    addr: String,
    eof: bool,
}

impl SocketSource {
    /// Connects to `addr` (host:port).
    pub fn connect(addr: &str) -> std::io::Result<Self> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(1 << 16),
            start: 0,
            addr: addr.to_string(),
            eof: false,
        })
    }
}

impl Source<String> for SocketSource {
    fn poll(
        &mut self,
        out: &mut Vec<String>,
        max: usize,
        _: u64,
    ) -> Result<SourceStatus, TaskError> {
        if !self.eof {
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TaskError(format!("reading socket {}: {e}", self.addr))),
            }
        }
        let mut n = 0;
        while n < max {
            let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') else {
                if self.buf.len() - self.start > MAX_LINE {
                    return Err(TaskError(format!(
                        "socket {}: a line longer than {MAX_LINE} bytes",
                        self.addr
                    )));
                }
                break;
            };
            let line = &self.buf[self.start..self.start + pos];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.push(String::from_utf8_lossy(line).into_owned());
            self.start += pos + 1;
            n += 1;
        }
        if self.start > 0 && (self.start == self.buf.len() || self.start > 1 << 15) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if n == 0 && self.eof {
            if self.start < self.buf.len() {
                let rest = String::from_utf8_lossy(&self.buf[self.start..]).into_owned();
                self.buf.clear();
                self.start = 0;
                out.push(rest);
                return Ok(SourceStatus::Emitted(1));
            }
            return Ok(SourceStatus::Done);
        }
        Ok(SourceStatus::Emitted(n))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::checkpoint::{redistributed_state, shares, KeyGroupRange};
    use std::collections::HashMap;

    type BySymbol = HashMap<u32, Vec<(i64, u32, u64)>>;

    fn info(index: usize, parallelism: usize) -> SubtaskInfo {
        SubtaskInfo { index, parallelism }
    }

    /// Polls `src` to its end (or `polls` times), adding each trade under its symbol
    /// (price, quantity, and the delay below the poll's time).
    fn drain(src: &mut TradeSource, polls: Option<usize>, into: &mut BySymbol) -> SourceStatus {
        let mut buf = Vec::new();
        let mut k = 0;
        loop {
            if polls.is_some_and(|p| k == p) {
                return SourceStatus::Emitted(0);
            }
            k += 1;
            buf.clear();
            let now = 1_000_000_000;
            match src.poll(&mut buf, 7, now).unwrap() {
                SourceStatus::Emitted(n) => {
                    assert_eq!(n, buf.len());
                    for t in &buf {
                        into.entry(t.symbol)
                            .or_default()
                            .push((t.price, t.qty, now - t.ts_ns));
                    }
                }
                s => return s,
            }
        }
    }

    /// The states a job at `old` parallelism hands to subtask `j` of `new`.
    fn rescaled(states: &[Vec<u8>], j: usize, new: usize) -> Vec<u8> {
        let parts: Vec<(u32, Vec<u8>)> = states
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32, s.clone()))
            .collect();
        let range = KeyGroupRange {
            subtask: j as u32,
            parallelism: new as u32,
            max_parallelism: 128,
        };
        redistributed_state(range, &parts)
    }

    /// Resumed at another parallelism, the trade source's subtasks read the old
    /// subtasks' splits on: every symbol's trades (and their delays) are exactly an
    /// uninterrupted run's, through 2 -> 3 -> 1 -> 2, bounded and unbounded.
    #[test]
    fn splits_carry_over_to_any_parallelism() {
        const EVENTS: u64 = 1001;
        let make = |i, p, events| {
            TradeSource::new(9, events, Pace::Unpaced, info(i, p)).with_disorder(5_000)
        };
        for bounded in [true, false] {
            let events = bounded.then_some(EVENTS);
            // An uninterrupted run (unbounded: a longer run than the rescaled one's).
            let mut want = BySymbol::new();
            for i in 0..2 {
                let mut s = make(i, 2, events);
                let end = drain(&mut s, (!bounded).then_some(200), &mut want);
                assert_eq!(end == SourceStatus::Done, bounded);
            }
            let mut got = BySymbol::new();
            // Each step runs every subtask a few polls and takes its position.
            let mut states: Vec<Vec<u8>> = (0..2)
                .map(|i| {
                    let mut s = make(i, 2, events);
                    drain(&mut s, Some(5), &mut got);
                    s.snapshot_position().unwrap().unwrap()
                })
                .collect();
            for (new, polls) in [(3, 9), (1, 4), (2, usize::MAX)] {
                let mut next = Vec::new();
                for j in 0..new {
                    let mut s = make(j, new, events);
                    let state = rescaled(&states, j, new);
                    let (_, all) = shares(&state).unwrap().unwrap();
                    s.restore_shares(info(j, new), &all).unwrap();
                    let polls = (polls != usize::MAX || !bounded).then_some(polls.min(40));
                    let end = drain(&mut s, polls, &mut got);
                    if new == 3 && j == 2 {
                        // No split left for it: it ends, or goes idle for good.
                        assert!(s.splits().is_empty());
                        let want_end = if bounded {
                            SourceStatus::Done
                        } else {
                            SourceStatus::Idle
                        };
                        assert_eq!(end, want_end);
                    }
                    next.push(s.snapshot_position().unwrap().unwrap());
                }
                states = next;
            }
            if bounded {
                assert_eq!(got, want);
            } else {
                // Unbounded: each symbol's trades are a prefix of the longer run's.
                for (sym, v) in &got {
                    assert_eq!(&want[sym][..v.len()], &v[..], "symbol {sym}");
                }
                assert!(got.values().map(Vec::len).sum::<usize>() > 500);
            }
        }
    }

    /// Every `p`-th number from `i` below `n` (or without end), its position the
    /// numbers it emitted: a source whose split `(i, p)` fixes.
    struct Every {
        i: u64,
        p: u64,
        n: Option<u64>,
        emitted: u64,
    }

    impl Source<u64> for Every {
        fn poll(
            &mut self,
            out: &mut Vec<u64>,
            max: usize,
            _: u64,
        ) -> Result<SourceStatus, TaskError> {
            let mut k = 0;
            while k < max.min(3) {
                let v = self.i + self.emitted * self.p;
                if self.n.is_some_and(|n| v >= n) {
                    return Ok(if k == 0 {
                        SourceStatus::Done
                    } else {
                        SourceStatus::Emitted(k)
                    });
                }
                out.push(v);
                self.emitted += 1;
                k += 1;
            }
            Ok(SourceStatus::Emitted(k))
        }
        fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
            encode_state(&self.emitted).map(Some)
        }
        fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
            self.emitted = decode_state(state)?;
            Ok(())
        }
    }

    /// A split source keeps the splits of the run that first started through 2 -> 3
    /// -> 1 -> 2: together its subtasks emit every number once; a subtask left without
    /// a split ends (bounded) or goes idle; a position of one split alone (an older
    /// build's) resumes at its own parallelism only.
    #[test]
    fn split_sources_keep_their_splits_at_any_parallelism() {
        for n in [Some(200u64), None] {
            let make: MakeSplit<Every> = std::sync::Arc::new(move |info: SubtaskInfo| {
                Ok(Every {
                    i: info.index as u64,
                    p: info.parallelism as u64,
                    n,
                    emitted: 0,
                })
            });
            let mut got = Vec::new();
            let mut run = |src: &mut SplitSource<Every>, polls: usize| {
                let mut last = SourceStatus::Emitted(0);
                for _ in 0..polls {
                    last = src.poll(&mut got, 64, 0).unwrap();
                    if last == SourceStatus::Done {
                        break;
                    }
                }
                last
            };
            let mut states: Vec<Vec<u8>> = (0..2)
                .map(|i| {
                    let mut s = SplitSource::new(make.clone(), info(i, 2), n.is_some()).unwrap();
                    run(&mut s, 4);
                    s.snapshot_position().unwrap().unwrap()
                })
                .collect();
            for new in [3, 1, 2] {
                let mut next = Vec::new();
                for j in 0..new {
                    let mut s = SplitSource::new(make.clone(), info(j, new), n.is_some()).unwrap();
                    let state = rescaled(&states, j, new);
                    let (_, all) = shares(&state).unwrap().unwrap();
                    s.restore_shares(info(j, new), &all).unwrap();
                    // Through p=1 and back to p=2, each subtask reads a split again.
                    let want: &[(usize, usize)] = match (new, j) {
                        (1, _) => &[(0, 2), (1, 2)],
                        (3, 2) => &[],
                        (_, j) => &[(j, 2)],
                    };
                    assert_eq!(s.splits(), want);
                    let last = run(&mut s, if new == 2 && n.is_some() { 1000 } else { 5 });
                    if new == 3 && j == 2 {
                        let want = if n.is_some() {
                            SourceStatus::Done
                        } else {
                            SourceStatus::Idle
                        };
                        assert_eq!(last, want);
                    }
                    next.push(s.snapshot_position().unwrap().unwrap());
                }
                states = next;
            }
            got.sort_unstable();
            match n {
                Some(n) => assert_eq!(got, (0..n).collect::<Vec<_>>()),
                None => {
                    let mut dedup = got.clone();
                    dedup.dedup();
                    assert_eq!(dedup, got, "a number emitted twice");
                    // Polls of 3: 2 x 4, then 2 x 5 (p=3, one idle), 5 (p=1), 2 x 5 (p=2).
                    assert_eq!(got.len(), 3 * (8 + 10 + 5 + 10));
                }
            }
        }
        // An older build's position (one split's alone) restores in place only.
        let make: MakeSplit<Every> = std::sync::Arc::new(|info: SubtaskInfo| {
            Ok(Every {
                i: info.index as u64,
                p: info.parallelism as u64,
                n: None,
                emitted: 0,
            })
        });
        let mut s = SplitSource::new(make.clone(), info(1, 2), false).unwrap();
        let old = encode_state(&5u64).unwrap();
        s.restore_position(&old).unwrap();
        let mut out = Vec::new();
        s.poll(&mut out, 1, 0).unwrap();
        assert_eq!(out[0], 11);
        let state = rescaled(&[old.clone(), old], 0, 3);
        let (_, all) = shares(&state).unwrap().unwrap();
        let e = s.restore_shares(info(0, 3), &all).unwrap_err().to_string();
        assert!(e.contains("older build"), "{e}");
    }

    /// A position with several splits restores them all at the same parallelism; a
    /// position of an older build's generator, or for an impossible split, is an
    /// error.
    #[test]
    fn positions_restore_every_split_and_refuse_impossible_ones() {
        let mut a = TradeSource::new(3, Some(100), Pace::Unpaced, info(0, 3));
        let b = TradeSource::new(3, Some(100), Pace::Unpaced, info(2, 3));
        a.splits.extend(b.splits);
        let pos = a.snapshot_position().unwrap().unwrap();
        let mut c = TradeSource::new(3, Some(100), Pace::Unpaced, info(0, 2));
        c.restore_position(&pos).unwrap();
        assert_eq!(c.splits(), [(0, 3), (2, 3)]);

        // Positions of older builds' generator, in either of their formats: refused,
        // saying why.
        let mut d = TradeSource::new(3, Some(100), Pace::Unpaced, info(1, 2));
        let single = encode_state(&(77u64, Some(5u64), 3u64)).unwrap();
        let several = encode_state(&(
            XORSHIFT_SPLITS_TAG,
            vec![(1u32, 2u32, 77u64, Some(5u64), 3u64)],
        ))
        .unwrap();
        for old in [single, several] {
            let e = d.restore_position(&old).unwrap_err().to_string();
            assert!(e.contains("older build"), "{e}");
        }
        assert_eq!(d.splits(), [(1, 2)], "a refused position changes nothing");
        let foreign = encode_state(&(7u64, Vec::<SplitPosition>::new())).unwrap();
        let e = d.restore_position(&foreign).unwrap_err().to_string();
        assert!(e.contains("not a trade source position"), "{e}");

        let bad = encode_state(&(
            TRADE_SPLITS_TAG,
            vec![(3u32, 3u32, 1u64, None::<u64>, 1u64)],
        ))
        .unwrap();
        assert!(d.restore_position(&bad).is_err());
        let zero = encode_state(&(
            TRADE_SPLITS_TAG,
            vec![(0u32, 3u32, 0u64, None::<u64>, 1u64)],
        ))
        .unwrap();
        // Every state is one of the generator's (zero included).
        assert!(d.restore_position(&zero).is_ok());
        assert!(d.restore_position(b"garbage").is_err());
    }

    /// Paced, a subtask with two splits emits each at its own rate (the job's rate
    /// stays the same in all), in send-time order across them.
    #[test]
    fn paced_splits_interleave_in_send_time_order() {
        let rate = Pace::Rate(1_000_000.0);
        let mut a = TradeSource::new(1, None, rate, info(0, 2));
        let b = TradeSource::new(1, None, rate, info(1, 2));
        a.splits.extend(b.splits);
        let mut buf = Vec::new();
        assert_eq!(
            a.poll(&mut buf, 1000, 1_000).unwrap(),
            SourceStatus::Emitted(2)
        );
        buf.clear();
        // 100 µs later: 100 trades due at 2 µs each from two splits.
        let n = match a.poll(&mut buf, 1000, 101_000).unwrap() {
            SourceStatus::Emitted(n) => n,
            s => panic!("{s:?}"),
        };
        assert!((99..=101).contains(&n), "{n}");
        assert!(buf.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
        assert!(buf.iter().any(|t| t.symbol % 2 == 0) && buf.iter().any(|t| t.symbol % 2 == 1));
    }
}
