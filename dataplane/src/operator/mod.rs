//! Operators: what a chained task calls, record by record.
//!
//! Within a task, operators are *chained*: each holds its downstream as a
//! `Box<dyn Emit<Out>>` and calls it directly: no queue, no serialization, no allocation
//! per record. A chain is built back to front on the slot thread that runs it.

pub mod keyed;
pub mod sink;
pub mod source;

/// The downstream of an operator: where records go.
///
/// Performance contract: `emit` is called once per record and must not allocate or
/// block in steady state; `tick` is called about once per task poll with the current
/// processing time; `finish` once, at end of input, after which nothing is emitted.
pub trait Emit<T> {
    /// One record.
    fn emit(&mut self, record: T);
    /// Processing time advanced to `now_ns` (fires timers, flushes periodic state).
    fn tick(&mut self, now_ns: u64) {
        let _ = now_ns;
    }
    /// End of input: flush and propagate.
    fn finish(&mut self) {}
}

/// A boxed downstream.
pub type BoxEmit<T> = Box<dyn Emit<T>>;

impl<T> Emit<T> for BoxEmit<T> {
    #[inline(always)]
    fn emit(&mut self, record: T) {
        (**self).emit(record)
    }
    fn tick(&mut self, now_ns: u64) {
        (**self).tick(now_ns)
    }
    fn finish(&mut self) {
        (**self).finish()
    }
}

/// What a subtask knows about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// This subtask's index, `0..parallelism`.
    pub index: usize,
    /// The operator's parallelism.
    pub parallelism: usize,
}

/// `map`: one record in, one out.
pub struct Map<F, O> {
    f: F,
    out: BoxEmit<O>,
}

impl<F, O> Map<F, O> {
    /// Applies `f` and emits to `out`.
    pub fn new(f: F, out: BoxEmit<O>) -> Self {
        Self { f, out }
    }
}

impl<I, O, F: FnMut(I) -> O> Emit<I> for Map<F, O> {
    #[inline(always)]
    fn emit(&mut self, record: I) {
        self.out.emit((self.f)(record))
    }
    fn tick(&mut self, now_ns: u64) {
        self.out.tick(now_ns)
    }
    fn finish(&mut self) {
        self.out.finish()
    }
}

/// `filter`: records for which the predicate holds pass.
pub struct Filter<F, T> {
    f: F,
    out: BoxEmit<T>,
}

impl<F, T> Filter<F, T> {
    /// Passes records where `f` is true to `out`.
    pub fn new(f: F, out: BoxEmit<T>) -> Self {
        Self { f, out }
    }
}

impl<T, F: FnMut(&T) -> bool> Emit<T> for Filter<F, T> {
    #[inline(always)]
    fn emit(&mut self, record: T) {
        if (self.f)(&record) {
            self.out.emit(record)
        }
    }
    fn tick(&mut self, now_ns: u64) {
        self.out.tick(now_ns)
    }
    fn finish(&mut self) {
        self.out.finish()
    }
}

/// Hands a user function's outputs downstream.
pub struct Collector<'a, O> {
    out: &'a mut dyn Emit<O>,
}

impl<'a, O> Collector<'a, O> {
    /// Wraps a downstream.
    pub fn new(out: &'a mut dyn Emit<O>) -> Self {
        Self { out }
    }

    /// Emits one record.
    #[inline(always)]
    pub fn collect(&mut self, record: O) {
        self.out.emit(record)
    }
}

/// `flat_map`: zero or more records out per record in.
pub struct FlatMap<F, O> {
    f: F,
    out: BoxEmit<O>,
}

impl<F, O> FlatMap<F, O> {
    /// Calls `f` with a collector over `out`.
    pub fn new(f: F, out: BoxEmit<O>) -> Self {
        Self { f, out }
    }
}

impl<I, O, F: FnMut(I, &mut Collector<'_, O>)> Emit<I> for FlatMap<F, O> {
    #[inline(always)]
    fn emit(&mut self, record: I) {
        (self.f)(record, &mut Collector::new(&mut *self.out))
    }
    fn tick(&mut self, now_ns: u64) {
        self.out.tick(now_ns)
    }
    fn finish(&mut self) {
        self.out.finish()
    }
}

/// Sends every record to several downstreams (an operator with several consumers).
pub struct Tee<T> {
    outs: Vec<BoxEmit<T>>,
}

impl<T> Tee<T> {
    /// Copies to each of `outs`.
    pub fn new(outs: Vec<BoxEmit<T>>) -> Self {
        Self { outs }
    }
}

impl<T: Clone> Emit<T> for Tee<T> {
    fn emit(&mut self, record: T) {
        if let Some((last, rest)) = self.outs.split_last_mut() {
            for o in rest {
                o.emit(record.clone());
            }
            last.emit(record);
        }
    }
    fn tick(&mut self, now_ns: u64) {
        for o in &mut self.outs {
            o.tick(now_ns);
        }
    }
    fn finish(&mut self) {
        for o in &mut self.outs {
            o.finish();
        }
    }
}

#[cfg(test)]
mod tests;

thread_local! {
    /// A failure an operator reported from inside `emit` (which returns nothing), taken
    /// by the task after its poll. Chains run on one thread, one task poll at a time.
    static FAILURE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Reports that the running operator failed (an I/O error in a sink, say). The task
/// fails with this message after the current poll; the first report wins.
pub fn report_failure(message: impl Into<String>) {
    FAILURE.with(|f| {
        let mut f = f.borrow_mut();
        if f.is_none() {
            *f = Some(message.into());
        }
    });
}

/// Takes the failure reported on this thread, if any.
pub fn take_failure() -> Option<String> {
    FAILURE.with(|f| f.borrow_mut().take())
}
