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
use crate::ring::{Consumer, FrameType};
use crate::slot::{Task, TaskError, TaskPoll};
use std::cell::RefCell;
use std::rc::Rc;

/// Records a task moves per poll at most (per input, for input tasks).
pub const BATCH: usize = 256;

/// The outputs of a task and their shared backpressure flag.
pub struct Outputs {
    outputs: Vec<Rc<RefCell<dyn OutputControl>>>,
    backpressure: Backpressure,
}

impl Outputs {
    /// Over these outputs, all of which set `backpressure` when records wait.
    pub fn new(outputs: Vec<Rc<RefCell<dyn OutputControl>>>, backpressure: Backpressure) -> Self {
        Self {
            outputs,
            backpressure,
        }
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

    fn blocked(&self) -> bool {
        self.backpressure.get()
    }

    fn publish(&mut self) {
        for o in &self.outputs {
            o.borrow_mut().publish();
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
        if !self.outputs.drain() {
            self.outputs.publish();
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
        }
    }
}

impl<T: Wire> Task for InputTask<T> {
    fn name(&self) -> &str {
        &self.name
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        if !self.outputs.drain() {
            self.outputs.publish();
            return Ok(TaskPoll::Worked(0));
        }
        if self.finished {
            return Ok(TaskPoll::Finished);
        }
        let now = clock::now_ns();
        let mut work = 0;
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
            work += n;
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
