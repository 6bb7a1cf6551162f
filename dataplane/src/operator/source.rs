//! Sources: where records enter a pipeline, including the W1 trade generator.

use super::SubtaskInfo;
use crate::checkpoint::{decode_state, encode_state, StateError};
use crate::slot::TaskError;
use std::io::{BufRead, Read};

/// What one poll of a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Emitted this many records (0: nothing available now).
    Emitted(usize),
    /// The source is exhausted (bounded sources only).
    Done,
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
        let mut state = seed ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if state == 0 {
            state = 0x2545_F491_4F6C_DD1D;
        }
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
        // xorshift64*
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let symbol = self.subtask + self.parallelism * ((r % u64::from(self.owned)) as u32);
        let qty = 1 + ((r >> 20) % 100) as u32;
        // Prices around 100.0000 ± 50.0000.
        let price = 50 * PRICE_SCALE + ((r >> 32) % (100 * PRICE_SCALE as u64)) as i64;
        Trade {
            ts_ns,
            price,
            symbol,
            qty,
        }
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

/// The W1 source (and W2's, with disorder).
#[derive(Debug)]
pub struct TradeSource {
    gen: TradeGenerator,
    remaining: Option<u64>,
    pace: Pace,
    interval_ns: f64,
    start_ns: u64,
    sent: u64,
    /// W2: each trade's event time is its send time minus a delay up to this (ns).
    disorder_ns: u64,
    /// The delays' own xorshift state (W1's trades stay the same with disorder off).
    delay_rng: u64,
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
        let interval_ns = match pace {
            Pace::Rate(r) if r > 0.0 => 1e9 * p as f64 / r,
            _ => 0.0,
        };
        Self {
            gen: TradeGenerator::new(seed, info),
            remaining,
            pace,
            interval_ns,
            start_ns: 0,
            sent: 0,
            disorder_ns: 0,
            delay_rng: (seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(2 * info.index as u64 + 1) | 1,
        }
    }

    /// Stamps each trade with an event time up to `disorder_ns` before its send time
    /// (a seeded, uniform delay): bounded disorder, as W2 has.
    pub fn with_disorder(mut self, disorder_ns: u64) -> Self {
        self.disorder_ns = disorder_ns;
        self
    }

    #[inline(always)]
    fn delayed(&mut self, mut t: Trade) -> Trade {
        if self.disorder_ns > 0 {
            t.ts_ns = t
                .ts_ns
                .saturating_sub(next_delay(&mut self.delay_rng, self.disorder_ns));
        }
        t
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
        let mut n = match self.remaining {
            Some(0) => return Ok(SourceStatus::Done),
            Some(r) => (r.min(max as u64)) as usize,
            None => max,
        };
        match self.pace {
            Pace::Unpaced if self.disorder_ns == 0 => {
                let gen = &mut self.gen;
                out.extend((0..n).map(|_| gen.next_trade(now_ns)));
            }
            Pace::Unpaced => {
                // One extend with the delay drawn in the same loop (no push per trade).
                let (gen, rng, d) = (&mut self.gen, &mut self.delay_rng, self.disorder_ns);
                out.extend((0..n).map(|_| {
                    let mut t = gen.next_trade(now_ns);
                    t.ts_ns = t.ts_ns.saturating_sub(next_delay(rng, d));
                    t
                }));
            }
            Pace::Rate(_) => {
                if self.start_ns == 0 {
                    self.start_ns = now_ns;
                }
                let mut emitted = 0;
                while emitted < n {
                    let due = self.start_ns + (self.sent as f64 * self.interval_ns) as u64;
                    if due > now_ns {
                        break;
                    }
                    let t = self.gen.next_trade(due);
                    out.push(self.delayed(t));
                    self.sent += 1;
                    emitted += 1;
                }
                n = emitted;
            }
        }
        if let Some(r) = &mut self.remaining {
            *r -= n as u64;
        }
        Ok(SourceStatus::Emitted(n))
    }

    fn snapshot_position(&mut self) -> Result<Option<Vec<u8>>, StateError> {
        encode_state(&(self.gen.state, self.remaining, self.delay_rng)).map(Some)
    }

    fn restore_position(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (gen, remaining, delay): (u64, Option<u64>, u64) = decode_state(state)?;
        if gen == 0 || delay == 0 {
            return Err(StateError::Decode(
                "a trade source position with a zero generator".into(),
            ));
        }
        self.gen.state = gen;
        self.remaining = remaining;
        self.delay_rng = delay;
        // Pacing starts over from the first poll after the restore.
        self.start_ns = 0;
        self.sent = 0;
        Ok(())
    }
}

/// The next delay, uniform in `0..=disorder_ns`, from the delays' xorshift state.
#[inline(always)]
fn next_delay(rng: &mut u64, disorder_ns: u64) -> u64 {
    let mut x = *rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *rng = x;
    // Multiply-shift into 0..=disorder_ns: no division.
    ((u128::from(x) * (u128::from(disorder_ns) + 1)) >> 64) as u64
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
