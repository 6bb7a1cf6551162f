//! spate's data plane.
//!
//! A record's way from source to sink runs through this crate alone:
//!
//! - [`ring`]: the single-producer single-consumer frame ring in (possibly shared) memory
//!   that carries records between tasks, threads and processes;
//! - [`idle`]: what a pinned thread does when it found no work;
//! - [`slot`]: the pinned slot runner threads that poll tasks round-robin;
//! - [`record`]: how records become frame bytes ([`record::Wire`]);
//! - [`operator`]: chained operators, keyed state and timers, sources and sinks;
//! - [`exchange`]: partitioning batches onto the rings of an edge, with backpressure;
//! - [`frames`]: what a channel's frames carry: batches of records and control events;
//! - [`task`]: a chain fed by a source or input rings, as a slot's pollable task;
//! - [`checkpoint`]: barriers entering at the sources, operator states taken as they
//!   pass, acknowledgements to the coordinator;
//! - [`clock`]: the TSC-backed nanosecond clock that stamps and ages records.
//!
//! The crate knows nothing of the control plane. Unsafe code is fenced: it is denied here
//! and allowed only in the modules that map memory or call the kernel (`ring`, `sys`).
#![deny(unsafe_code)]
#![warn(missing_docs)]
// Under `--cfg loom` only the ring's protocol is built (against model-checked memory);
// the modules that read ring memory in place need the real mapping.

pub mod checkpoint;
pub mod clock;
#[cfg(not(loom))]
pub mod exchange;
#[cfg(not(loom))]
pub mod frames;
pub mod idle;
#[cfg(not(loom))]
pub mod net;
pub mod operator;
pub mod record;
pub mod ring;
pub mod slot;
pub mod sys;
#[cfg(not(loom))]
pub mod task;
