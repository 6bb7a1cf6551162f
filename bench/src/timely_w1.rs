//! Workload W1 on timely dataflow, the peer `bench vwap` measures spate against.
//!
//! The same work as spate's W1 job: trades from spate's own seeded generator (worker `i`
//! of `n` generates subtask `i`'s partition of the symbols, as spate's parallel sources
//! do), `filter(qty > 0)`, an exchange by spate's key hash of the symbol onto the worker
//! spate's `key_by` would pick, running Σprice·qty and Σqty per symbol in an
//! `FxHashMap` (spate's keyed state and arithmetic) emitting `(symbol, vwap, ts_ns)`,
//! and a sink recording `now − ts_ns` on spate's data plane clock into the same
//! HdrHistogram as spate's latency sink. Worker threads are pinned to the cores of
//! spate's slots and busy-poll `worker.step()`.
//!
//! Input goes in through an `InputHandle` in batches, one epoch each, and a probe behind
//! the sink says which epochs are retired. timely has no backpressure, so the input
//! side paces itself on the probe:
//! - unpaced, each worker sends batches of [`BATCH`] trades stamped when generated (one
//!   clock reading per 256, as spate's source reads it once per poll of 256), and steps
//!   until at most [`IN_FLIGHT`] of its epochs are unretired;
//! - paced, each worker, whenever its previous epoch is retired, sends every trade whose
//!   scheduled time (start + i·interval) has passed, stamped with that time, as the next
//!   epoch (the first technique of timely's `openloop` example). A trade that waits for
//!   its epoch is charged the wait. Sending what is due on every step instead, without
//!   waiting for the probe, ran well at 1 worker but at 2 workers at 1 M/s flooded one
//!   worker with one-record messages until its backlog reached seconds.

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use rustc_hash::{FxHashMap, FxHasher};
use serde::{Deserialize, Serialize};
use spate::jobs::{Vwap, VwapState};
use spate_dataplane::clock::now_ns;
use spate_dataplane::exchange::channel_for_hash;
use spate_dataplane::operator::sink::new_histogram;
use spate_dataplane::operator::source::{Pace, Trade, TradeGenerator};
use spate_dataplane::operator::SubtaskInfo;
use std::cell::{Cell, RefCell};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Filter;
use timely::dataflow::operators::{Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::synchronization::Barrier;

/// Unpaced: trades per input batch (one epoch). On the 2-core machine of the project,
/// batches of 256, 1024, 4096 and 16384 gave about 45, 64, 72 and 75 M trades/s at 1
/// worker, with the latency growing with the batch (p50 5, 13, 48 and 186 µs).
pub const BATCH: usize = 4096;
/// Unpaced: the most epochs a worker lets run ahead of its probe (1 to 8 made no clear
/// difference).
pub const IN_FLIGHT: u64 = 2;

/// Serde's view of [`Trade`]: exchanged records must be serializable (between
/// processes); between the threads of one process they are moved, never encoded.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Trade")]
struct TradeDef {
    ts_ns: u64,
    price: i64,
    symbol: u32,
    qty: u32,
}

/// A trade as a timely record.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Tick(#[serde(with = "TradeDef")] pub(crate) Trade);

/// spate's key hash of a symbol (`key_by` hashes the key with `FxHasher`).
#[inline(always)]
pub(crate) fn key_hash(symbol: u32) -> u64 {
    let mut h = FxHasher::default();
    symbol.hash(&mut h);
    h.finish()
}

/// What one run measured.
pub struct Outcome {
    /// Records through the sinks per second, from starting the workers to joining them.
    pub eps: f64,
    /// Latencies of all workers, merged.
    pub latency: Histogram<u64>,
    /// Records through the sinks.
    pub records: u64,
    /// The core each worker was pinned to (`None`: pinning failed).
    pub cores: Vec<Option<usize>>,
    /// With `verify`: the wrapping sum of every VWAP emitted.
    #[cfg_attr(not(test), allow(dead_code))] // the tests check it
    pub vwap_sum: Option<i64>,
}

struct WorkerOut {
    latency: Histogram<u64>,
    records: u64,
    core: Option<usize>,
    vwap_sum: i64,
}

/// Runs W1 on `workers` timely workers (1 or 2), worker `i` pinned to `cores[i]`:
/// `events` trades from `seed` in all, unpaced or at a fixed offered rate (split evenly
/// over the workers), measuring the latency of one record in `sample` at the sinks.
/// With `verify` the sinks also sum what they receive, for tests.
pub fn run(
    seed: u64,
    workers: usize,
    pace: Pace,
    events: u64,
    sample: u32,
    cores: (usize, usize),
    verify: bool,
) -> Result<Outcome> {
    let cores = [cores.0, cores.1];
    let sample = sample.max(1);
    let start = std::time::Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let core = cores[index % cores.len()];
        let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });

        let latency = Rc::new(RefCell::new(new_histogram()));
        let records = Rc::new(Cell::new(0u64));
        let vwap_sum = Rc::new(Cell::new(0i64));
        let mut input = InputHandleVec::<u64, Tick>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (latency, records, vwap_sum) = (latency.clone(), records.clone(), vwap_sum.clone());
            scope
                .input_from(&mut input)
                .filter(|t: &Tick| t.0.qty > 0)
                .unary(
                    Exchange::new(move |t: &Tick| {
                        channel_for_hash(key_hash(t.0.symbol), peers) as u64
                    }),
                    "VWAP",
                    |_, _| {
                        let mut state = FxHashMap::<u32, VwapState>::default();
                        move |input, output| {
                            input.for_each(|cap, data| {
                                let mut session = output.session(&cap);
                                for Tick(t) in data.drain(..) {
                                    let vwap = state.entry(t.symbol).or_default().add(&t);
                                    session.give(Vwap {
                                        ts_ns: t.ts_ns,
                                        vwap,
                                        symbol: t.symbol,
                                        pad: 0,
                                    });
                                }
                            });
                        }
                    },
                )
                .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Pipeline,
                    "Latency Sink",
                    move |_, _| {
                        let mut countdown = 0u32;
                        move |input, _output| {
                            input.for_each(|_, data: &mut Vec<Vwap>| {
                                let mut h = latency.borrow_mut();
                                for v in data.iter() {
                                    if countdown == 0 {
                                        countdown = sample - 1;
                                        let _ = h.record(now_ns().saturating_sub(v.ts_ns).max(1));
                                    } else {
                                        countdown -= 1;
                                    }
                                }
                                records.set(records.get() + data.len() as u64);
                                if verify {
                                    let sum = data.iter().fold(0i64, |a, v| a.wrapping_add(v.vwap));
                                    vwap_sum.set(vwap_sum.get().wrapping_add(sum));
                                }
                            });
                        }
                    },
                )
                .probe_with(&probe);
        });

        let mine = events / peers as u64 + u64::from((index as u64) < events % peers as u64);
        let mut gen = TradeGenerator::new(
            seed,
            SubtaskInfo {
                index,
                parallelism: peers,
            },
        );
        let mut batch: Vec<Tick> = Vec::with_capacity(BATCH);
        let mut epoch = 0u64;
        // All workers start together.
        Barrier::new(worker).wait();
        match pace {
            Pace::Unpaced => {
                let mut left = mine;
                while left > 0 {
                    let n = left.min(BATCH as u64) as usize;
                    batch.reserve_exact(n);
                    // Stamped as spate's source stamps: one clock reading per poll's worth.
                    while batch.len() < n {
                        let now = now_ns();
                        let m = (n - batch.len()).min(spate_dataplane::task::BATCH);
                        gen.fill(&mut batch, m, now, Tick);
                    }
                    input.send_batch(&mut batch);
                    batch.clear();
                    left -= n as u64;
                    epoch += 1;
                    input.advance_to(epoch);
                    worker.step();
                    while probe.less_than(&epoch.saturating_sub(IN_FLIGHT)) {
                        worker.step();
                    }
                }
            }
            Pace::Rate(rate) => {
                let interval_ns = 1e9 * peers as f64 / rate.max(1e-9);
                let t0 = now_ns();
                let mut sent = 0u64;
                while sent < mine {
                    // The previous epoch is retired: send what is due as the next one.
                    if !probe.less_than(input.time()) {
                        let now = now_ns();
                        while sent < mine {
                            let due = t0 + (sent as f64 * interval_ns) as u64;
                            if due > now {
                                break;
                            }
                            batch.push(Tick(gen.next_trade(due)));
                            sent += 1;
                        }
                        if !batch.is_empty() {
                            input.send_batch(&mut batch);
                            batch.clear();
                            epoch += 1;
                            input.advance_to(epoch);
                        }
                    }
                    worker.step();
                }
            }
        }
        drop(input);
        while !probe.done() {
            worker.step();
        }
        let latency = latency.replace(new_histogram());
        WorkerOut {
            latency,
            records: records.get(),
            vwap_sum: vwap_sum.get(),
            core: pinned.then_some(core),
        }
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;

    let results = guards.join();
    let seconds = start.elapsed().as_secs_f64();
    let mut latency = new_histogram();
    let mut records = 0;
    let mut cores = Vec::new();
    let mut vwap_sum = 0i64;
    for r in results {
        let w = r.map_err(|e| anyhow!("a timely worker failed: {e}"))?;
        latency
            .add(&w.latency)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
        records += w.records;
        vwap_sum = vwap_sum.wrapping_add(w.vwap_sum);
        cores.push(w.core);
    }
    Ok(Outcome {
        eps: records as f64 / seconds.max(1e-9),
        latency,
        records,
        cores,
        vwap_sum: verify.then_some(vwap_sum),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// timely's W1 computes what spate's single-threaded reference does, at 1 and 2
    /// workers, unpaced and paced.
    #[test]
    fn matches_the_reference() -> Result<()> {
        let cores = crate::two_cores()?;
        let events = 50_000;
        for workers in [1, 2] {
            let want = spate::jobs::vwap_reference(7, events, workers)
                .values()
                .flatten()
                .fold(0i64, |a, &v| a.wrapping_add(v));
            for pace in [Pace::Unpaced, Pace::Rate(2e6)] {
                let o = run(7, workers, pace, events, 1, cores, true)?;
                assert_eq!(o.records, events, "{workers} workers, {pace:?}");
                assert_eq!(o.vwap_sum, Some(want), "{workers} workers, {pace:?}");
                assert_eq!(o.latency.len(), events, "{workers} workers, {pace:?}");
            }
        }
        Ok(())
    }
}
