//! Sinks: the ends of a pipeline.

use super::{report_failure, Emit, Event, SubtaskInfo};
use hdrhistogram::Histogram;
use std::fmt::Debug;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How often sinks publish their counters (ns).
pub const PUBLISH_INTERVAL_NS: u64 = 50_000_000;

/// What sinks publish for progress reports and summaries: records seen and, for latency
/// sinks, the latency histogram. Sinks add to these on a deadline, not per record.
///
/// Latency histograms change hands rather than being merged on the sink's thread: the
/// sink swaps its filled histogram for an empty spare (a pointer swap under an
/// uncontended lock) and the reader merges and clears it on its own thread. NB: merging
/// a 3-digit, 1 ns..1000 s histogram touches ~40 k counters (tens of µs), which on the
/// slot thread showed up as W1's p99.9 at a fixed rate.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    records: AtomicU64,
    latency: Mutex<Latency>,
}

#[derive(Debug)]
struct Latency {
    merged: Histogram<u64>,
    /// Filled histograms handed over by sinks, not yet merged.
    handed: Vec<Histogram<u64>>,
    /// Cleared histograms for sinks to swap in.
    spares: Vec<Histogram<u64>>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            merged: new_histogram(),
            handed: Vec::new(),
            spares: Vec::new(),
        }
    }
}

/// A latency histogram: 1 ns to 1000 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 1_000_000_000_000, 3).unwrap()
}

impl SinkMetrics {
    /// Records seen by all sinks sharing these metrics.
    pub fn records(&self) -> u64 {
        // Relaxed: a progress figure; no other data is read through it.
        self.records.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Latency> {
        match self.latency.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        }
    }

    /// The merged latency histogram (merging what sinks handed over since last time).
    pub fn latency(&self) -> Histogram<u64> {
        let mut l = self.lock();
        let Latency {
            merged,
            handed,
            spares,
        } = &mut *l;
        for mut h in handed.drain(..) {
            let _ = merged.add(&h);
            h.reset();
            spares.push(h);
        }
        merged.clone()
    }

    /// Gives a sink a spare to swap with (at build time, off the hot path).
    fn add_spare(&self) {
        self.lock().spares.push(new_histogram());
    }

    fn add(&self, records: u64, h: Option<&mut Histogram<u64>>, last: bool) {
        self.records.fetch_add(records, Ordering::Relaxed);
        let Some(h) = h else { return };
        if h.is_empty() {
            return;
        }
        let mut l = self.lock();
        if last {
            let full = std::mem::replace(h, new_histogram_empty_shell());
            l.handed.push(full);
        } else if let Some(spare) = l.spares.pop() {
            let full = std::mem::replace(h, spare);
            l.handed.push(full);
        }
        // No spare yet (the reader has not run): keep recording; nothing is lost.
    }
}

/// A histogram with the smallest footprint, to leave behind in a finished sink.
fn new_histogram_empty_shell() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 2, 1).unwrap()
}

/// Counts records and, on a deadline, publishes the count.
#[derive(Debug)]
pub(crate) struct Counter {
    pub(crate) unpublished: u64,
    next_publish_ns: u64,
    metrics: Arc<SinkMetrics>,
}

impl Counter {
    pub(crate) fn new(metrics: Arc<SinkMetrics>) -> Self {
        Self {
            unpublished: 0,
            next_publish_ns: 0,
            metrics,
        }
    }

    pub(crate) fn due(&mut self, now_ns: u64) -> bool {
        if now_ns >= self.next_publish_ns {
            self.next_publish_ns = now_ns + PUBLISH_INTERVAL_NS;
            true
        } else {
            false
        }
    }

    pub(crate) fn publish(&mut self, h: Option<&mut Histogram<u64>>, last: bool) {
        self.metrics
            .add(std::mem::take(&mut self.unpublished), h, last);
    }
}

/// Drops records, counting them.
#[derive(Debug)]
pub struct DiscardSink {
    counter: Counter,
}

impl DiscardSink {
    /// Counts into `metrics`.
    pub fn new(metrics: Arc<SinkMetrics>) -> Self {
        Self {
            counter: Counter::new(metrics),
        }
    }
}

impl<T> Emit<T> for DiscardSink {
    #[inline]
    fn push(&mut self, batch: &mut Vec<T>) {
        self.counter.unpublished += batch.len() as u64;
        batch.clear();
    }
    fn event(&mut self, event: Event) {
        if event == Event::EndOfInput {
            self.counter.publish(None, false);
        }
    }
    fn tick(&mut self, now_ns: u64) {
        if self.counter.due(now_ns) {
            self.counter.publish(None, false);
        }
    }
}

/// Records `now − event timestamp` into an HdrHistogram, for every record or for one in
/// `sample_every` (a uniform sample: recording costs more than the rest of a simple
/// record's way, so throughput runs sample).
///
/// The clock is read once per batch, when the batch reaches the sink: every record of
/// a batch arrives at that moment.
pub struct LatencySink<T> {
    ts: fn(&T) -> u64,
    hist: Histogram<u64>,
    counter: Counter,
    sample_every: u32,
    countdown: u32,
}

impl<T> LatencySink<T> {
    /// `ts` gives a record's event timestamp (ns, on the data plane's clock); one record
    /// in `sample_every` (at least 1) is measured.
    pub fn new(ts: fn(&T) -> u64, metrics: Arc<SinkMetrics>, sample_every: u32) -> Self {
        metrics.add_spare();
        Self {
            ts,
            hist: new_histogram(),
            counter: Counter::new(metrics),
            sample_every: sample_every.max(1),
            countdown: 0,
        }
    }

    /// Latencies recorded so far and not yet published.
    pub fn recorded(&self) -> u64 {
        self.hist.len()
    }
}

impl<T> Emit<T> for LatencySink<T> {
    #[inline]
    fn push(&mut self, batch: &mut Vec<T>) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        let now = crate::clock::cluster_ns(crate::clock::now_ns());
        // Records `countdown`, `countdown + every`, ... of this batch are measured.
        let every = self.sample_every as usize;
        let mut i = self.countdown as usize;
        while i < n {
            // A record stamped after now (a window fired early, at the end of a bounded
            // input) has no latency to measure; it is counted all the same.
            let ts = (self.ts)(&batch[i]);
            if ts <= now {
                let _ = self.hist.record((now - ts).max(1));
            }
            i += every;
        }
        self.countdown = (i - n) as u32;
        self.counter.unpublished += n as u64;
        batch.clear();
    }
    fn event(&mut self, event: Event) {
        if event == Event::EndOfInput {
            self.counter.publish(Some(&mut self.hist), true);
        }
    }
    fn tick(&mut self, now_ns: u64) {
        if self.counter.due(now_ns) {
            self.counter.publish(Some(&mut self.hist), false);
        }
    }
}

/// Writes each record's `Debug` form as a line, buffered, flushed on a deadline.
pub struct WriterSink<W: Write> {
    w: std::io::BufWriter<W>,
    prefix: String,
    what: String,
    counter: Counter,
    failed: bool,
}

impl<W: Write> WriterSink<W> {
    fn new(w: W, prefix: String, what: String, metrics: Arc<SinkMetrics>) -> Self {
        Self {
            w: std::io::BufWriter::with_capacity(1 << 16, w),
            prefix,
            what,
            counter: Counter::new(metrics),
            failed: false,
        }
    }

    fn check(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r {
            if !self.failed {
                self.failed = true;
                report_failure(format!("writing to {}: {e}", self.what));
            }
        }
    }
}

/// Prints records to stdout (`index> record` when the sink is parallel, as Flink does).
pub fn print_sink(info: SubtaskInfo, metrics: Arc<SinkMetrics>) -> WriterSink<std::io::Stdout> {
    let prefix = if info.parallelism > 1 {
        format!("{}> ", info.index + 1)
    } else {
        String::new()
    };
    WriterSink::new(std::io::stdout(), prefix, "stdout".into(), metrics)
}

/// Writes records to a file: `path` itself at parallelism 1, `path.N` for subtask N
/// otherwise.
pub fn file_sink(
    path: &std::path::Path,
    info: SubtaskInfo,
    metrics: Arc<SinkMetrics>,
) -> std::io::Result<WriterSink<std::fs::File>> {
    let path = if info.parallelism > 1 {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{}", info.index));
        std::path::PathBuf::from(p)
    } else {
        path.to_path_buf()
    };
    let f = std::fs::File::create(&path)?;
    Ok(WriterSink::new(
        f,
        String::new(),
        path.display().to_string(),
        metrics,
    ))
}

/// Writes records as lines to a TCP socket.
pub fn socket_sink(
    addr: &str,
    metrics: Arc<SinkMetrics>,
) -> std::io::Result<WriterSink<std::net::TcpStream>> {
    let s = std::net::TcpStream::connect(addr)?;
    let _ = s.set_nodelay(true);
    Ok(WriterSink::new(
        s,
        String::new(),
        format!("socket {addr}"),
        metrics,
    ))
}

impl<T: Debug, W: Write> Emit<T> for WriterSink<W> {
    fn push(&mut self, batch: &mut Vec<T>) {
        self.counter.unpublished += batch.len() as u64;
        if self.failed {
            batch.clear();
            return;
        }
        for record in batch.drain(..) {
            let r = writeln!(self.w, "{}{record:?}", self.prefix);
            if r.is_err() {
                self.check(r);
                break;
            }
        }
        batch.clear();
    }
    fn event(&mut self, event: Event) {
        if event == Event::EndOfInput {
            let r = self.w.flush();
            self.check(r);
            self.counter.publish(None, false);
        }
    }
    fn tick(&mut self, now_ns: u64) {
        if self.counter.due(now_ns) {
            let r = self.w.flush();
            self.check(r);
            self.counter.publish(None, false);
        }
    }
}

/// Collects records into a shared vector (tests, small results): at end of input,
/// and, with checkpoints, those before a checkpoint's barrier once it completed (a
/// two-phase commit: a failed attempt's uncommitted records are dropped with it and
/// come again from the checkpoint, so each shows once in exactly-once mode; a job
/// stopped with a savepoint shows exactly what the savepoint holds). With a final
/// checkpoint, the last records wait for it too. In at-least-once mode a record may
/// show twice after a restore, as the mode allows.
pub struct CollectSink<T> {
    local: Vec<T>,
    /// Records closed by a barrier, waiting for its checkpoint to complete.
    pending: Vec<(u64, Vec<T>)>,
    shared: Arc<Mutex<Vec<T>>>,
    counter: Counter,
}

impl<T> CollectSink<T> {
    /// Appends to `shared` when the input ends.
    pub fn new(shared: Arc<Mutex<Vec<T>>>, metrics: Arc<SinkMetrics>) -> Self {
        Self {
            local: Vec::new(),
            pending: Vec::new(),
            shared,
            counter: Counter::new(metrics),
        }
    }
}

impl<T> Emit<T> for CollectSink<T> {
    fn push(&mut self, batch: &mut Vec<T>) {
        self.counter.unpublished += batch.len() as u64;
        self.local.append(batch);
    }
    fn event(&mut self, event: Event) {
        match event {
            Event::Barrier(b) if !self.local.is_empty() => {
                self.pending.push((b.id, std::mem::take(&mut self.local)));
            }
            // With a final checkpoint to come, the last records wait for it (its
            // barrier files them, its completion publishes them): a failure elsewhere
            // before it completes restores a checkpoint that does not hold them.
            Event::EndOfInput if crate::checkpoint::final_checkpoint_follows() => {
                self.counter.publish(None, false);
            }
            Event::EndOfInput => {
                let mut s = match self.shared.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                for (_, mut part) in self.pending.drain(..) {
                    s.append(&mut part);
                }
                s.append(&mut self.local);
                self.counter.publish(None, false);
            }
            _ => {}
        }
    }
    fn tick(&mut self, now_ns: u64) {
        if self.counter.due(now_ns) {
            self.counter.publish(None, false);
        }
    }
    fn notify_checkpoint_complete(&mut self, id: u64) {
        if self.pending.first().is_none_or(|p| p.0 > id) {
            return;
        }
        let mut s = match self.shared.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let done = self.pending.iter().take_while(|p| p.0 <= id).count();
        for (_, mut part) in self.pending.drain(..done) {
            s.append(&mut part);
        }
    }
}
