//! Tasks: a chain of operators with its head fed by a source or by input rings, and its
//! tail writing to output rings, polled by a slot.
//!
//! One poll: drain outputs that had to wait (and take no input while any still waits),
//! read the clock once, move a bounded batch of records through the chain, tick the
//! chain with the clock reading, publish the outputs' frames, and report any failure an
//! operator raised.

use crate::clock;
use crate::exchange::{Backpressure, OutputControl};
use crate::operator::source::{Source, SourceStatus};
use crate::operator::{take_failure, BoxEmit};
use crate::record::Wire;
use crate::ring::{Consumer, FrameType, PeerState};
use crate::slot::{Task, TaskError, TaskPoll};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Records a task moves per poll at most (per input, for input tasks).
pub const BATCH: usize = 256;

/// How often an idle input checks that its producer is still there (ns).
pub const PEER_CHECK_NS: u64 = 10_000_000;

/// Records into and out of a task (its chain's head and its ring outputs), published
/// once per poll, read by whoever reports metrics.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    records_in: AtomicU64,
    records_out: AtomicU64,
}

impl TaskMetrics {
    /// Records read from the task's input rings.
    pub fn records_in(&self) -> u64 {
        // Relaxed: counters for reports; nothing else is read through them.
        self.records_in.load(Ordering::Relaxed)
    }

    /// Records written to the task's output rings.
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }
}

/// The outputs of a task, their shared backpressure flag, and the task's metrics.
pub struct Outputs {
    outputs: Vec<Rc<RefCell<dyn OutputControl>>>,
    backpressure: Backpressure,
    metrics: Arc<TaskMetrics>,
}

impl Outputs {
    /// Over these outputs, all of which set `backpressure` when records wait.
    pub fn new(outputs: Vec<Rc<RefCell<dyn OutputControl>>>, backpressure: Backpressure) -> Self {
        Self {
            outputs,
            backpressure,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<TaskMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Drains waiting records; true if the task may take input.
    fn drain(&mut self) -> bool {
        if !self.backpressure.get() {
            return true;
        }
        let mut clear = true;
        for o in &self.outputs {
            clear &= o.borrow_mut().drain();
        }
        if clear {
            self.backpressure.set(false);
        }
        clear
    }

    /// Whether the task may take input now; if not, publishes what did go out.
    fn ready(&mut self) -> bool {
        if self.drain() {
            return true;
        }
        self.publish();
        false
    }

    fn blocked(&self) -> bool {
        self.backpressure.get()
    }

    fn publish(&mut self) {
        let mut out = 0;
        for o in &self.outputs {
            let mut o = o.borrow_mut();
            o.publish();
            out += o.take_records();
        }
        if out > 0 {
            self.metrics.records_out.fetch_add(out, Ordering::Relaxed);
        }
    }
}

fn check_failure() -> Result<(), TaskError> {
    match take_failure() {
        Some(m) => Err(TaskError(m)),
        None => Ok(()),
    }
}

/// A source and the chain it feeds.
pub struct SourceTask<T> {
    name: String,
    source: Box<dyn Source<T>>,
    head: BoxEmit<T>,
    outputs: Outputs,
    done: bool,
}

impl<T> SourceTask<T> {
    /// `head` is the chain after the source.
    pub fn new(
        name: String,
        source: Box<dyn Source<T>>,
        head: BoxEmit<T>,
        outputs: Outputs,
    ) -> Self {
        Self {
            name,
            source,
            head,
            outputs,
            done: false,
        }
    }
}

impl<T> Task for SourceTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if !self.outputs.ready() {
            return Ok(TaskPoll::Worked(0));
        }
        if self.done {
            return Ok(TaskPoll::Finished);
        }
        let now = clock::now_ns();
        let status = self.source.poll(&mut self.head, BATCH, now)?;
        self.head.tick(now);
        let work = match status {
            SourceStatus::Emitted(n) => n,
            SourceStatus::Done => {
                self.head.finish();
                self.done = true;
                1
            }
        };
        self.outputs.publish();
        check_failure()?;
        Ok(TaskPoll::Worked(work))
    }
}

/// Input rings and the chain they feed.
pub struct InputTask<T> {
    name: String,
    inputs: Vec<Consumer>,
    ended: Vec<bool>,
    open: usize,
    head: BoxEmit<T>,
    outputs: Outputs,
    finished: bool,
    /// When each input next checks its producer's liveness.
    next_peer_check: Vec<u64>,
}

impl<T: Wire> InputTask<T> {
    /// Reads `inputs` (all carrying `T`), feeding `head`.
    pub fn new(name: String, inputs: Vec<Consumer>, head: BoxEmit<T>, outputs: Outputs) -> Self {
        let n = inputs.len();
        Self {
            name,
            inputs,
            ended: vec![false; n],
            open: n,
            head,
            outputs,
            finished: false,
            next_peer_check: vec![0; n],
        }
    }
}

/// Fails an idle input whose producer closed without end of stream or whose process
/// died; the data plane does not wait forever for a peer that is gone.
fn check_producer(i: usize, input: &Consumer, now: u64) -> Result<(), TaskError> {
    let why = match input.producer_state(now, 0) {
        PeerState::Closed => "ring was closed without end of stream",
        PeerState::Gone => "process died",
        PeerState::Broken => "host is unreachable: the network connection to it failed",
        _ => return Ok(()),
    };
    // What was published before the close is visible now; read it first.
    if input.has_frame() {
        return Ok(());
    }
    Err(TaskError(format!("input {i}: the upstream task's {why}")))
}

impl<T: Wire> Task for InputTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if !self.outputs.ready() {
            return Ok(TaskPoll::Worked(0));
        }
        if self.finished {
            return Ok(TaskPoll::Finished);
        }
        let now = clock::now_ns();
        let mut work = 0;
        let mut records = 0u64;
        for (i, input) in self.inputs.iter_mut().enumerate() {
            if self.ended[i] {
                continue;
            }
            let mut n = 0;
            while n < BATCH && !self.outputs.blocked() {
                let frame = match input.try_read() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return Err(TaskError(format!("input {i}: {e}"))),
                };
                match frame.frame_type() {
                    FrameType::Data => {
                        let rec = T::decode(frame.payload())
                            .map_err(|e| TaskError(format!("input {i}: {e}")))?;
                        self.head.emit(rec);
                        records += 1;
                    }
                    FrameType::EndOfStream => {
                        self.ended[i] = true;
                        self.open -= 1;
                        n += 1;
                        break;
                    }
                    // Watermarks and barriers arrive with event time and checkpoints.
                    FrameType::Watermark | FrameType::Barrier | FrameType::Padding => {}
                }
                n += 1;
            }
            input.release();
            if n == 0 && now >= self.next_peer_check[i] {
                self.next_peer_check[i] = now + PEER_CHECK_NS;
                check_producer(i, input, now)?;
            }
            work += n;
        }
        if records > 0 {
            self.outputs
                .metrics
                .records_in
                .fetch_add(records, Ordering::Relaxed);
        }
        self.head.tick(now);
        if self.open == 0 {
            self.head.finish();
            self.finished = true;
            work += 1;
        }
        self.outputs.publish();
        check_failure()?;
        Ok(TaskPoll::Worked(work))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use crate::operator::sink::{DiscardSink, SinkMetrics};
    use crate::ring::Ring;
    use std::sync::Arc;

    fn input_task(inputs: Vec<Consumer>) -> InputTask<u64> {
        let head: BoxEmit<u64> = Box::new(DiscardSink::new(Arc::new(SinkMetrics::default())));
        InputTask::new(
            "t".into(),
            inputs,
            head,
            Outputs::new(Vec::new(), Rc::new(std::cell::Cell::new(false))),
        )
    }

    #[test]
    fn an_upstream_that_closes_without_end_of_stream_fails_the_input() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        p.try_send(FrameType::Data, &7u64.to_le_bytes()).unwrap();
        assert_eq!(t.poll().unwrap(), TaskPoll::Worked(1));
        drop(p);
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("closed without end of stream"), "{e}");
    }

    #[test]
    fn an_upstream_cut_off_by_the_network_says_so() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        p.try_send(FrameType::Data, &7u64.to_le_bytes()).unwrap();
        p.break_off();
        // What arrived before the connection failed is read; then the input fails.
        assert_eq!(t.poll().unwrap(), TaskPoll::Worked(1));
        let e = t.poll().unwrap_err();
        assert!(e.0.contains("network connection to it failed"), "{e}");
    }

    #[test]
    fn frames_published_before_the_close_are_read_first() {
        let (mut p, c) = Ring::anonymous(4096).unwrap();
        let mut t = input_task(vec![c]);
        p.try_send(FrameType::Data, &7u64.to_le_bytes()).unwrap();
        p.try_send(FrameType::EndOfStream, &[]).unwrap();
        drop(p);
        // The first poll reads the record and the end of stream: no failure.
        assert!(matches!(t.poll().unwrap(), TaskPoll::Worked(_)));
        assert_eq!(t.poll().unwrap(), TaskPoll::Finished);
    }
}
