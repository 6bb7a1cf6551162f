//! Side outputs of process functions (Flink's `OutputTag` and `ctx.output`): streams
//! beside an operator's main output, each of its own record type, carried over rings
//! of their own. Records gathered during a batch leave when the batch ends, and control
//! events (watermarks, barriers, the end of input) follow them in band, as on the main
//! output.

use super::{BoxEmit, Event};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

/// Names a side output of type `T` (Flink's `OutputTag`).
pub struct OutputTag<T> {
    id: Arc<str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> OutputTag<T> {
    /// A tag named `id` (unique within the job).
    pub fn new(id: &str) -> Self {
        Self {
            id: Arc::from(id),
            _t: PhantomData,
        }
    }

    /// Its name.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T> Clone for OutputTag<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for OutputTag<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputTag({})", self.id)
    }
}

trait Slot {
    fn flush(&mut self);
    fn event(&mut self, e: Event);
    fn as_any(&mut self) -> &mut dyn Any;
}

struct Typed<S> {
    buf: Vec<S>,
    emit: BoxEmit<S>,
}

impl<S: 'static> Slot for Typed<S> {
    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.emit.push(&mut self.buf);
            self.buf.clear();
        }
    }
    fn event(&mut self, e: Event) {
        self.flush();
        self.emit.event(e);
    }
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
}

/// An operator's side outputs, by tag.
#[derive(Default)]
pub struct SideOutputs {
    slots: Vec<(Arc<str>, Box<dyn Slot>)>,
}

impl std::fmt::Debug for SideOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.slots.iter().map(|(t, _)| t))
            .finish()
    }
}

impl SideOutputs {
    /// Adds the side output `id`, whose records go to `emit`.
    pub fn add<S: 'static>(&mut self, id: &str, emit: BoxEmit<S>) {
        self.slots.push((
            Arc::from(id),
            Box::new(Typed {
                buf: Vec::new(),
                emit,
            }),
        ));
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Sends `record` to the side output `tag`. A side output that no stream reads
    /// (or one declared with another type) drops it, as Flink's does.
    #[inline]
    pub fn output<S: 'static>(&mut self, tag: &OutputTag<S>, record: S) {
        for (id, slot) in &mut self.slots {
            if Arc::ptr_eq(id, &tag.id) || **id == *tag.id {
                if let Some(t) = slot.as_any().downcast_mut::<Typed<S>>() {
                    t.buf.push(record);
                }
                return;
            }
        }
    }

    /// Hands on the records gathered so far.
    pub fn flush(&mut self) {
        for (_, s) in &mut self.slots {
            s.flush();
        }
    }

    /// Hands on the records gathered so far, then `event`, on every side output.
    pub fn event(&mut self, event: Event) {
        for (_, s) in &mut self.slots {
            s.event(event);
        }
    }
}
