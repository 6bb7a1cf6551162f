//! `bench snapshot`: what a checkpoint costs a slot per key. W1's keyed operator
//! (`KeyedProcess` running the VWAP function) holds 1 K, 100 K or 1 M symbols; each rep
//! times `snapshot_state` (the encoding that runs on the slot when a barrier passes)
//! and `restore_state` with the TSC, beside two references on the same entries: a plain
//! copy of them (the floor a copy-at-barrier or copy-on-write design pays) and
//! serde_json (a self-describing encoding a user might write by hand).

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
    /// `spate snapshot`, `spate restore`, `copy (floor)` or `serde_json`.
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
    let mut sink = DiscardSink::new(Arc::new(SinkMetrics::default()));
    let mut out_buf = Vec::new();
    let mut batch = Vec::with_capacity(256);
    for s in 0..keys {
        batch.push(Trade {
            ts_ns: u64::from(s),
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
    op
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
        let (mut snap, mut rest, mut copy, mut json) =
            (histogram(), histogram(), histogram(), histogram());
        let (mut bytes, mut json_bytes) = (0, 0);
        for _ in 0..reps {
            let t0 = ticks();
            let state = op.snapshot_state()?.unwrap_or_default();
            let t1 = ticks();
            bytes = state.len();
            snap.record(clock.ns(t1 - t0).max(1))?;
            let mut fresh = operator(0);
            let t0 = ticks();
            fresh.restore_state(&state)?;
            let t1 = ticks();
            rest.record(clock.ns(t1 - t0).max(1))?;
            assert_eq!(fresh.key_count(), keys as usize, "restore lost keys");
            let t0 = ticks();
            let c = std::hint::black_box(entries.clone());
            let t1 = ticks();
            copy.record(clock.ns(t1 - t0).max(1))?;
            drop(c);
            let t0 = ticks();
            let j = serde_json::to_vec(&entries)?;
            let t1 = ticks();
            json_bytes = j.len();
            json.record(clock.ns(t1 - t0).max(1))?;
        }
        let k = u64::from(keys);
        rows.push(row("spate snapshot", k, &snap, bytes));
        rows.push(row("spate restore", k, &rest, bytes));
        rows.push(row("copy (floor)", k, &copy, 0));
        rows.push(row("serde_json", k, &json, json_bytes));
    }
    Ok(rows)
}

/// Prints the rows.
pub fn print(rows: &[Row]) {
    println!(
        "{:<16} {:>9} {:>5} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "what", "keys", "reps", "p50", "p99", "max", "ns/key", "B/key"
    );
    let t = |ns: u64| format!("{:.1}µs", ns as f64 / 1e3);
    for r in rows {
        println!(
            "{:<16} {:>9} {:>5} {:>12} {:>12} {:>12} {:>9.1} {:>9.1}",
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
