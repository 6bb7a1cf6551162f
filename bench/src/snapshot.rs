//! `bench snapshot`: what a checkpoint costs a slot per key. W1's keyed operator
//! (`KeyedProcess` running the VWAP function) holds 1 K, 100 K or 1 M symbols; each rep
//! times with the TSC `freeze_state` (what runs on the slot when a barrier passes: the
//! copy-on-write freeze), the encoding of the frozen state (what the snapshot writer
//! thread does, off the slot), one record for every key right after the freeze (each
//! first write to a chunk copies it) beside the same without a freeze, and
//! `restore_state`; beside two references on the same entries: a plain copy of them
//! (what a copy-at-barrier design would pay on the slot) and serde_json (a
//! self-describing encoding a user might write by hand).

use crate::clock::{ticks, Clock};
use crate::report::histogram;
use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;
use spate::jobs::{VwapFunction, VwapState};
use spate_dataplane::operator::keyed::KeyedProcess;
use spate_dataplane::operator::sink::{DiscardSink, SinkMetrics};
use spate_dataplane::operator::source::Trade;
use spate_dataplane::operator::{Emit, Operator, Output};
use std::sync::Arc;

/// One row: a way of taking the state of `keys` keys.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `freeze (slot)`, `encode (writer)`, `all keys, no snapshot`, `all keys, after
    /// freeze`, `restore`, `copy at barrier` or `serde_json`.
    pub what: String,
    /// Keys in the state.
    pub keys: u64,
    /// Reps measured.
    pub reps: u64,
    /// Time per whole state, ns.
    pub p50_ns: u64,
    /// p99.
    pub p99_ns: u64,
    /// max.
    pub max_ns: u64,
    /// p50 per key, ns.
    pub ns_per_key: f64,
    /// Bytes per key written (0 for the copy).
    pub bytes_per_key: f64,
}

fn operator(keys: u32) -> KeyedProcess<VwapFunction, fn(&Trade) -> u32> {
    let key: fn(&Trade) -> u32 = |t| t.symbol;
    let mut op = KeyedProcess::new(VwapFunction, key);
    feed(&mut op, keys, 0);
    op
}

/// One trade for each of `keys` symbols.
fn feed(op: &mut KeyedProcess<VwapFunction, fn(&Trade) -> u32>, keys: u32, round: u64) {
    let mut sink = DiscardSink::new(Arc::new(SinkMetrics::default()));
    let mut out_buf = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(256);
    for s in 0..keys {
        batch.push(Trade {
            ts_ns: u64::from(s) + round,
            price: 1_000_000 + i64::from(s % 977),
            symbol: s,
            qty: 1 + s % 100,
        });
        if batch.len() == 256 || s + 1 == keys {
            let mut out = Output::new(&mut out_buf, &mut sink as &mut dyn Emit<_>);
            op.process(&mut batch, &mut out);
            out.flush();
        }
    }
}

fn row(what: &str, keys: u64, h: &Histogram<u64>, bytes: usize) -> Row {
    let p50 = h.value_at_quantile(0.5);
    Row {
        what: what.into(),
        keys,
        reps: h.len(),
        p50_ns: p50,
        p99_ns: h.value_at_quantile(0.99),
        max_ns: h.max(),
        ns_per_key: p50 as f64 / keys as f64,
        bytes_per_key: bytes as f64 / keys as f64,
    }
}

/// Measures snapshot and restore at each size.
pub fn run(sizes: &[u32], reps: u64) -> Result<Vec<Row>> {
    let clock = Clock::calibrate();
    let mut rows = Vec::new();
    for &keys in sizes {
        let mut op = operator(keys);
        let entries: Vec<(u32, VwapState)> = (0..keys).map(|s| (s, VwapState::default())).collect();
        // Fewer reps for the big states (each takes milliseconds).
        let reps = if keys >= 1_000_000 {
            reps.min(10)
        } else {
            reps
        };
        let mut h: [Histogram<u64>; 7] = std::array::from_fn(|_| histogram());
        let (mut bytes, mut json_bytes) = (0, 0);
        let mut time = |i: usize, f: &mut dyn FnMut()| -> Result<()> {
            let t0 = ticks();
            f();
            let t1 = ticks();
            h[i].record(clock.ns(t1 - t0).max(1))?;
            Ok(())
        };
        for rep in 0..reps {
            let mut frozen = Ok(None);
            time(0, &mut || frozen = op.freeze_state())?;
            let mut frozen = frozen?;
            // One record per key while the snapshot holds the state (copies), then
            // the same once it is written (no snapshot holds anything).
            time(2, &mut || feed(&mut op, keys, rep))?;
            let mut state = Ok(Vec::new());
            time(1, &mut || {
                state = match frozen.take() {
                    Some(f) => f.finish(),
                    None => Ok(Vec::new()),
                }
            })?;
            let state = state?;
            time(3, &mut || feed(&mut op, keys, rep))?;
            bytes = state.len();
            let mut fresh = operator(0);
            let mut restored = Ok(());
            time(4, &mut || restored = fresh.restore_state(&state))?;
            restored?;
            assert_eq!(fresh.key_count(), keys as usize, "restore lost keys");
            time(5, &mut || drop(std::hint::black_box(entries.clone())))?;
            let mut j = Ok(Vec::new());
            time(6, &mut || j = serde_json::to_vec(&entries))?;
            json_bytes = j?.len();
        }
        let k = u64::from(keys);
        rows.push(row("freeze (slot)", k, &h[0], 0));
        rows.push(row("encode (writer)", k, &h[1], bytes));
        rows.push(row("keys after freeze", k, &h[2], 0));
        rows.push(row("keys, no snapshot", k, &h[3], 0));
        rows.push(row("restore", k, &h[4], bytes));
        rows.push(row("copy at barrier", k, &h[5], 0));
        rows.push(row("serde_json", k, &h[6], json_bytes));
    }
    Ok(rows)
}

/// Prints the rows.
pub fn print(rows: &[Row]) {
    println!(
        "{:<18} {:>9} {:>5} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "what", "keys", "reps", "p50", "p99", "max", "ns/key", "B/key"
    );
    let t = |ns: u64| format!("{:.1}µs", ns as f64 / 1e3);
    for r in rows {
        println!(
            "{:<18} {:>9} {:>5} {:>12} {:>12} {:>12} {:>9.1} {:>9.1}",
            r.what,
            r.keys,
            r.reps,
            t(r.p50_ns),
            t(r.p99_ns),
            t(r.max_ns),
            r.ns_per_key,
            r.bytes_per_key
        );
    }
}
