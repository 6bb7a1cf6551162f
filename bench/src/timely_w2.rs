//! Workload W2 on timely dataflow, the peer `bench bars` measures spate against.
//!
//! The same work as spate's W2 job: each worker drives spate's own W2 source (a
//! [`TradeSource`] with disorder: worker `i` of `n` generates subtask `i`'s partition of
//! the symbols, each trade's event time its send time minus a seeded delay up to the
//! disorder bound), polled 256 trades at a time as spate's source task polls it; an
//! exchange by spate's key hash of the symbol onto the worker spate's `key_by` would
//! pick; per window, each symbol's bar built with spate's [`BarAcc`] in an
//! `FxHashMap`; and a sink recording the firing latency `now − ready_ns` of every bar
//! whose ready time has passed, on spate's data plane clock into spate's histogram (one
//! clock reading per container, as spate's sink reads it once per batch).
//!
//! Event time is timely's time: each worker's input epoch is its watermark. spate's
//! watermark `max_ts − disorder − 1` says no record at or before it will come; in
//! timely's terms that is the input advancing to `max_ts − disorder`, so a window
//! `[start, end)` fires when the frontier at the window operator no longer contains
//! `end − 1`: with the same trade as spate's (at two workers, the least of both
//! workers' inputs, as spate's window sees the least watermark of its channels). The
//! window operator holds one capability per open window, at `end − 1`, and gives the
//! window's bars at that time when the frontier passes it. A record is never behind its
//! window: its event time is at least its worker's epoch when sent (a delay is at most
//! the bound), so it is counted as late (and dropped, as spate drops late records) only
//! if that reasoning breaks.
//!
//! Input: unpaced, each worker sends batches of [`BATCH`] trades (16 polls, stamped with
//! one clock reading per poll), advances its epoch to its watermark, and steps until the
//! batch sent [`IN_FLIGHT`] batches ago is retired. Paced, each worker sends every poll's
//! due trades as they come due (as spate's source emits each poll's batch) and advances
//! its epoch whenever its watermark does.

use crate::timely_w1::{key_hash, Tick};
use anyhow::{anyhow, bail, Result};
use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use spate::jobs::{Bar, BarAcc};
use spate_dataplane::clock::now_ns;
use spate_dataplane::exchange::channel_for_hash;
use spate_dataplane::operator::sink::new_histogram;
use spate_dataplane::operator::source::{Pace, Source, SourceStatus, Trade, TradeSource};
use spate_dataplane::operator::SubtaskInfo;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::{Capability, Input, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle};
use timely::synchronization::Barrier;

/// Unpaced: trades per input batch (as `timely_w1::BATCH`, timely's best for W1).
pub const BATCH: usize = crate::timely_w1::BATCH;
/// Unpaced: the most batches a worker lets run ahead of its probe.
pub const IN_FLIGHT: usize = crate::timely_w1::IN_FLIGHT as usize;

/// The event-time window of `ts` (spate's tumbling assigner without offset).
#[inline(always)]
fn window_of(ts: u64, window_ns: u64) -> (u64, u64) {
    let start = ts - ts % window_ns;
    (start, start.saturating_add(window_ns))
}

/// A bar as spate's W2 makes it from a window's accumulator.
#[inline]
pub fn bar(symbol: u32, start: u64, end: u64, acc: &BarAcc, disorder_ns: u64) -> Bar {
    Bar {
        window_start: start,
        window_end: end,
        open: acc.open,
        high: acc.high,
        low: acc.low,
        close: acc.close,
        volume: acc.sums.qty,
        vwap: acc.vwap(),
        count: acc.count,
        ready_ns: end.saturating_add(disorder_ns),
        symbol,
        pad: 0,
    }
}

/// One open window of one worker: its end, the capability its bars will be given
/// under (at `end − 1`), and each symbol's bar so far.
struct Open {
    end: u64,
    cap: Capability<u64>,
    accs: FxHashMap<u32, BarAcc>,
}

/// One step of a worker: busy (benchmarks) or parking while idle (tests).
#[inline]
fn step(worker: &mut timely::worker::Worker, park: bool) {
    if park {
        worker.step_or_park(Some(Duration::from_micros(100)));
    } else {
        worker.step();
    }
}

/// What one run measured.
pub struct Outcome {
    /// Trades per second, from starting the workers to joining them.
    pub eps: f64,
    /// Firing latencies of the bars whose ready time had passed, all workers merged.
    pub latency: Histogram<u64>,
    /// Bars through the sinks.
    pub bars: u64,
    /// Trades the bars were made of (Σ count).
    pub trades: u64,
    /// Trades dropped as behind their window (never, by construction).
    pub late: u64,
    /// The core each worker was pinned to (`None`: pinning failed).
    pub cores: Vec<Option<usize>>,
    /// The clock reading of each worker's first poll of its source (where a paced
    /// schedule starts), by worker index.
    pub starts: Vec<u64>,
    /// With `verify`: every trade sent.
    #[cfg_attr(not(test), allow(dead_code))] // the tests check them
    pub sent: Vec<Trade>,
    /// With `verify`: every bar received.
    #[cfg_attr(not(test), allow(dead_code))]
    pub got: Vec<Bar>,
}

struct WorkerOut {
    index: usize,
    start: u64,
    latency: Histogram<u64>,
    bars: u64,
    trades: u64,
    late: u64,
    core: Option<usize>,
    sent: Vec<Trade>,
    got: Vec<Bar>,
}

/// What a run does.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Generator seed.
    pub seed: u64,
    /// Workers (1 or 2).
    pub workers: usize,
    /// Unpaced or a fixed offered rate (in all, split over the workers).
    pub pace: Pace,
    /// Trades in all.
    pub events: u64,
    /// Disorder bound, ns.
    pub disorder_ns: u64,
    /// Window size, ns.
    pub window_ns: u64,
    /// Cores of the two workers.
    pub cores: (usize, usize),
    /// Keep every trade sent and bar received (tests).
    pub verify: bool,
    /// Park idle workers instead of busy-stepping (tests).
    pub park: bool,
}

/// Runs W2 on `p.workers` timely workers, worker `i` pinned to `cores[i]`.
pub fn run(p: Params) -> Result<Outcome> {
    if p.window_ns == 0 {
        bail!("the window must be positive");
    }
    let Params {
        seed,
        workers,
        pace,
        events,
        disorder_ns,
        window_ns,
        verify,
        park,
        ..
    } = p;
    let cores = [p.cores.0, p.cores.1];
    let start = std::time::Instant::now();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let core = cores[index % cores.len()];
        let pinned = core_affinity::set_for_current(core_affinity::CoreId { id: core });

        let latency = Rc::new(RefCell::new(new_histogram()));
        let bars = Rc::new(Cell::new(0u64));
        let trades = Rc::new(Cell::new(0u64));
        let late = Rc::new(Cell::new(0u64));
        let got = Rc::new(RefCell::new(Vec::<Bar>::new()));
        let mut input = InputHandleVec::<u64, Tick>::new();
        let probe = ProbeHandle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let (latency, bars, trades, late, got) = (
                latency.clone(),
                bars.clone(),
                trades.clone(),
                late.clone(),
                got.clone(),
            );
            scope
                .input_from(&mut input)
                .unary_frontier::<CapacityContainerBuilder<Vec<Bar>>, _, _, _>(
                    Exchange::new(move |t: &Tick| {
                        channel_for_hash(key_hash(t.0.symbol), peers) as u64
                    }),
                    "One-second bars",
                    move |_, _| {
                        // Ascending by end; two at the most with a disorder below the window.
                        let mut open: Vec<Open> = Vec::new();
                        let mut spare: Vec<FxHashMap<u32, BarAcc>> = Vec::new();
                        move |(input, frontier), output| {
                            let port = output.output_index();
                            input.for_each(|cap, data| {
                                let Some(&time) = cap.least() else {
                                    late.set(late.get() + data.len() as u64);
                                    data.clear();
                                    return;
                                };
                                // The window of the last record, looked up once per change.
                                let mut last: Option<(u64, usize)> = None;
                                for Tick(t) in data.drain(..) {
                                    let (_, end) = window_of(t.ts_ns, window_ns);
                                    let i = match last {
                                        Some((e, i)) if e == end => i,
                                        _ => {
                                            if end - 1 < time {
                                                // Behind its window's firing (see above).
                                                late.set(late.get() + 1);
                                                continue;
                                            }
                                            let i = match open.iter().position(|o| o.end >= end) {
                                                Some(i) if open[i].end == end => i,
                                                at => {
                                                    let i = at.unwrap_or(open.len());
                                                    open.insert(
                                                        i,
                                                        Open {
                                                            end,
                                                            cap: cap.delayed(&(end - 1), port),
                                                            accs: spare.pop().unwrap_or_default(),
                                                        },
                                                    );
                                                    i
                                                }
                                            };
                                            last = Some((end, i));
                                            i
                                        }
                                    };
                                    open[i].accs.entry(t.symbol).or_default().add(&t);
                                }
                            });
                            // Fire every window whose end the frontier has passed.
                            while open
                                .first()
                                .is_some_and(|o| !frontier.less_equal(&(o.end - 1)))
                            {
                                let mut o = open.remove(0);
                                let (start, end) = (o.end - window_ns, o.end);
                                output.session(&o.cap).give_iterator(
                                    o.accs
                                        .drain()
                                        .map(|(s, acc)| bar(s, start, end, &acc, disorder_ns)),
                                );
                                spare.push(o.accs);
                            }
                        }
                    },
                )
                .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                    Pipeline,
                    "Latency Sink",
                    move |_, _| {
                        move |input, _output| {
                            input.for_each(|_, data: &mut Vec<Bar>| {
                                let now = now_ns();
                                let mut h = latency.borrow_mut();
                                let mut n = 0;
                                for b in data.iter() {
                                    // Bars stamped in the future (fired at the end of
                                    // input) are counted, not measured, as spate's sink.
                                    if b.ready_ns <= now {
                                        let _ = h.record((now - b.ready_ns).max(1));
                                    }
                                    n += b.count;
                                }
                                bars.set(bars.get() + data.len() as u64);
                                trades.set(trades.get() + n);
                                if verify {
                                    got.borrow_mut().extend_from_slice(data);
                                }
                                data.clear();
                            });
                        }
                    },
                )
                .probe_with(&probe);
        });

        let info = SubtaskInfo {
            index,
            parallelism: peers,
        };
        let mut source =
            TradeSource::new(seed, Some(events), pace, info).with_disorder(disorder_ns);
        let poll = spate_dataplane::task::BATCH;
        let mut polled: Vec<Trade> = Vec::with_capacity(BATCH);
        let mut batch: Vec<Tick> = Vec::with_capacity(BATCH);
        let mut sent: Vec<Trade> = Vec::new();
        let mut max_ts: Option<u64> = None;
        let mut start_ns = 0u64;
        // Sends what was polled at the current epoch and advances the epoch to the
        // watermark (in timely's terms: no record before `max_ts − disorder` will come).
        let mut send = |input: &mut InputHandleVec<u64, Tick>, polled: &mut Vec<Trade>| {
            max_ts = max_ts.max(polled.iter().map(|t| t.ts_ns).max());
            if verify {
                sent.extend_from_slice(polled);
            }
            batch.extend(polled.drain(..).map(Tick));
            input.send_batch(&mut batch);
            batch.clear();
            if let Some(m) = max_ts {
                let front = m.saturating_sub(disorder_ns);
                if front > *input.time() {
                    input.advance_to(front);
                }
            }
        };
        // All workers start together.
        Barrier::new(worker).wait();
        match pace {
            Pace::Unpaced => {
                let mut retired: VecDeque<u64> = VecDeque::with_capacity(IN_FLIGHT + 1);
                let mut done = false;
                while !done {
                    while polled.len() < BATCH {
                        let max = poll.min(BATCH - polled.len());
                        let now = now_ns();
                        if start_ns == 0 {
                            start_ns = now;
                        }
                        match source.poll(&mut polled, max, now) {
                            Ok(SourceStatus::Emitted(_) | SourceStatus::Idle) => {}
                            Ok(SourceStatus::Done) => {
                                done = true;
                                break;
                            }
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    if polled.is_empty() {
                        break;
                    }
                    send(&mut input, &mut polled);
                    retired.push_back(*input.time());
                    step(worker, park);
                    if retired.len() > IN_FLIGHT {
                        if let Some(e) = retired.pop_front() {
                            while probe.less_than(&e) {
                                step(worker, park);
                            }
                        }
                    }
                }
            }
            Pace::Rate(_) => loop {
                let now = now_ns();
                if start_ns == 0 {
                    start_ns = now;
                }
                let mut done = false;
                loop {
                    match source.poll(&mut polled, poll, now) {
                        Ok(SourceStatus::Emitted(n)) if n == poll => {}
                        Ok(SourceStatus::Emitted(_) | SourceStatus::Idle) => break,
                        Ok(SourceStatus::Done) => {
                            done = true;
                            break;
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if !polled.is_empty() {
                    send(&mut input, &mut polled);
                }
                if done {
                    break;
                }
                step(worker, park);
            },
        }
        drop(input);
        while !probe.done() {
            step(worker, park);
        }
        let latency = latency.replace(new_histogram());
        let got = got.take();
        Ok(WorkerOut {
            index,
            start: start_ns,
            latency,
            bars: bars.get(),
            trades: trades.get(),
            late: late.get(),
            core: pinned.then_some(core),
            sent,
            got,
        })
    })
    .map_err(|e| anyhow!("starting timely workers: {e}"))?;

    let results = guards.join();
    let seconds = start.elapsed().as_secs_f64();
    let mut out = Outcome {
        eps: 0.0,
        latency: new_histogram(),
        bars: 0,
        trades: 0,
        late: 0,
        cores: Vec::new(),
        starts: Vec::new(),
        sent: Vec::new(),
        got: Vec::new(),
    };
    let mut outs = Vec::new();
    for r in results {
        outs.push(
            r.map_err(|e| anyhow!("a timely worker failed: {e}"))?
                .map_err(|e| anyhow!("a timely worker's source failed: {e}"))?,
        );
    }
    outs.sort_by_key(|w| w.index);
    for w in outs {
        out.latency
            .add(&w.latency)
            .map_err(|e| anyhow!("merging latency histograms: {e}"))?;
        out.bars += w.bars;
        out.trades += w.trades;
        out.late += w.late;
        out.cores.push(w.core);
        out.starts.push(w.start);
        out.sent.extend(w.sent);
        out.got.extend(w.got);
    }
    out.eps = events as f64 / seconds.max(1e-9);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// timely's W2 gives, at 1 and 2 workers, unpaced and paced, exactly the bars of
    /// the plain computation over the very trades sent (as spate's W2 test checks
    /// spate's), and fires windows on its frontier before the input ends.
    #[test]
    fn matches_the_reference() -> Result<()> {
        let cores = crate::two_cores()?;
        let (disorder_ns, window_ns) = (200_000u64, 1_000_000u64);
        let events = 100_000;
        for workers in [1, 2] {
            for pace in [Pace::Unpaced, Pace::Rate(2e6)] {
                let o = run(Params {
                    seed: 9,
                    workers,
                    pace,
                    events,
                    disorder_ns,
                    window_ns,
                    cores,
                    verify: true,
                    park: true,
                })?;
                let what = format!("{workers} workers, {pace:?}");
                assert_eq!(o.sent.len() as u64, events, "{what}");
                assert_eq!(o.trades, events, "{what}");
                assert_eq!(o.late, 0, "{what}");
                let mut want: BTreeMap<(u32, u64), BarAcc> = BTreeMap::new();
                for t in &o.sent {
                    want.entry((t.symbol, t.ts_ns - t.ts_ns % window_ns))
                        .or_default()
                        .add(t);
                }
                let got: BTreeMap<(u32, u64), Bar> = o
                    .got
                    .iter()
                    .map(|b| ((b.symbol, b.window_start), *b))
                    .collect();
                assert_eq!(
                    got.len(),
                    o.got.len(),
                    "{what}: one bar per symbol and window"
                );
                assert_eq!(got.len() as u64, o.bars, "{what}");
                let want: BTreeMap<(u32, u64), Bar> = want
                    .iter()
                    .map(|(&(s, start), acc)| {
                        (
                            (s, start),
                            bar(s, start, start + window_ns, acc, disorder_ns),
                        )
                    })
                    .collect();
                assert_eq!(got, want, "{what}");
                if let Pace::Rate(_) = pace {
                    // 50 ms of 1 ms windows: most fire on the frontier, during the run.
                    assert!(o.latency.len() > o.bars / 2, "{what}: {}", o.latency.len());
                }
            }
        }
        Ok(())
    }
}
