//! The ProcessFunction of a non-keyed stream (Flink's `ProcessFunction`): per record,
//! any number of records out, to the main output or to side outputs, with the clocks
//! at hand. Timers and state need a key: see [`super::keyed`].

use super::side::{OutputTag, SideOutputs};
use super::{Barrier, Event, Operator, Output};

/// What a [`ProcessFunction`] sees besides the record.
pub struct ProcessContext<'a, O> {
    now_ns: u64,
    watermark: u64,
    out: &'a mut Vec<O>,
    sides: &'a mut SideOutputs,
}

impl<'a, O> ProcessContext<'a, O> {
    pub(crate) fn new(
        now_ns: u64,
        watermark: u64,
        out: &'a mut Vec<O>,
        sides: &'a mut SideOutputs,
    ) -> Self {
        Self {
            now_ns,
            watermark,
            out,
            sides,
        }
    }
    /// Emits a record.
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.out.push(record)
    }
    /// Emits a record to the side output `tag` (Flink's `ctx.output`).
    #[inline]
    pub fn output<S: 'static>(&mut self, tag: &OutputTag<S>, record: S) {
        self.sides.output(tag, record)
    }
    /// Processing time as of the task's last poll, ns.
    pub fn current_processing_time(&self) -> u64 {
        self.now_ns
    }
    /// The operator's current watermark (event time, ns; 0 before the first).
    pub fn current_watermark(&self) -> u64 {
        self.watermark
    }
}

/// Per-record logic on a stream. Each subtask runs its own clone.
pub trait ProcessFunction: Clone + Send + Sync + 'static {
    /// Input records.
    type In;
    /// Output records.
    type Out;
    /// One record.
    fn process_element(&mut self, value: Self::In, ctx: &mut ProcessContext<'_, Self::Out>);
    /// The input ended: emit what is left.
    fn on_end_of_input(&mut self, ctx: &mut ProcessContext<'_, Self::Out>) {
        let _ = ctx;
    }
}

/// Runs a [`ProcessFunction`].
pub struct Process<P> {
    f: P,
    sides: SideOutputs,
    now_ns: u64,
    watermark: u64,
}

impl<P: ProcessFunction> Process<P> {
    /// Runs `f`.
    pub fn new(f: P) -> Self {
        Self {
            f,
            sides: SideOutputs::default(),
            now_ns: 0,
            watermark: 0,
        }
    }

    /// Sends what the function passes to `ctx.output` to these side outputs.
    pub fn with_side_outputs(mut self, sides: SideOutputs) -> Self {
        self.sides = sides;
        self
    }
}

impl<P: ProcessFunction> Operator for Process<P>
where
    P::In: 'static,
    P::Out: 'static,
{
    type In = P::In;
    type Out = P::Out;

    #[inline]
    fn process(&mut self, batch: &mut Vec<P::In>, out: &mut Output<'_, P::Out>) {
        let mut ctx = ProcessContext {
            now_ns: self.now_ns,
            watermark: self.watermark,
            out: out.buffer(),
            sides: &mut self.sides,
        };
        for r in batch.drain(..) {
            self.f.process_element(r, &mut ctx);
        }
        self.sides.flush();
    }

    fn on_watermark(&mut self, watermark: u64, out: &mut Output<'_, P::Out>) {
        self.watermark = self.watermark.max(watermark);
        out.watermark(watermark);
        self.sides.event(Event::Watermark(watermark));
    }

    fn on_idle(&mut self, idle: bool, out: &mut Output<'_, P::Out>) {
        out.event(Event::Idle(idle));
        self.sides.event(Event::Idle(idle));
    }

    fn on_barrier(&mut self, barrier: Barrier, out: &mut Output<'_, P::Out>) {
        out.event(Event::Barrier(barrier));
        self.sides.event(Event::Barrier(barrier));
    }

    fn on_end_of_input(&mut self, out: &mut Output<'_, P::Out>) {
        let mut ctx = ProcessContext {
            now_ns: self.now_ns,
            watermark: self.watermark,
            out: out.buffer(),
            sides: &mut self.sides,
        };
        self.f.on_end_of_input(&mut ctx);
        self.sides.event(Event::EndOfInput);
    }

    fn on_tick(&mut self, now_ns: u64, _out: &mut Output<'_, P::Out>) {
        self.now_ns = now_ns;
    }
}
