//! The built-in jobs the stock `spate` binary runs: `vwap` (workload W1) and `wordcount`.

use crate::api::{DataStreamSink, StreamExecutionEnvironment};
use spate_dataplane::operator::keyed::{Context, KeyedProcessFunction};
use spate_dataplane::operator::source::{Pace, Trade, TradeGenerator};
use spate_dataplane::operator::SubtaskInfo;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// W1's output: a symbol's volume-weighted average price after a trade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Vwap {
    /// The trade's event time.
    pub ts_ns: u64,
    /// Σprice·qty / Σqty, in the trade price's fixed point (rounded down).
    pub vwap: i64,
    /// Symbol.
    pub symbol: u32,
    /// Padding (zero).
    pub pad: u32,
}

spate_dataplane::pod_wire!(Vwap);

/// Running sums of one symbol.
#[derive(Debug, Default, Clone, Copy)]
pub struct VwapState {
    /// Σprice·qty.
    pub price_qty: i128,
    /// Σqty.
    pub qty: u64,
}

impl VwapState {
    /// Adds a trade and returns the new VWAP.
    #[inline(always)]
    pub fn add(&mut self, t: &Trade) -> i64 {
        self.price_qty += i128::from(t.price) * i128::from(t.qty);
        self.qty += u64::from(t.qty);
        let q = self.qty.max(1);
        match u64::try_from(self.price_qty) {
            // The common case: a non-negative sum below 2^64 divides in 64 bits.
            Ok(pq) => (pq / q) as i64,
            Err(_) => (self.price_qty / i128::from(q)) as i64,
        }
    }
}

/// W1's keyed function: running Σprice·qty and Σqty per symbol.
#[derive(Debug, Clone, Copy, Default)]
pub struct VwapFunction;

impl KeyedProcessFunction for VwapFunction {
    type Key = u32;
    type In = Trade;
    type Out = Vwap;
    type State = VwapState;

    #[inline(always)]
    fn process_element(&mut self, t: Trade, st: &mut VwapState, ctx: &mut Context<'_, u32, Vwap>) {
        let vwap = st.add(&t);
        ctx.collect(Vwap {
            ts_ns: t.ts_ns,
            vwap,
            symbol: t.symbol,
            pad: 0,
        });
    }
}

/// Parameters of W1.
#[derive(Debug, Clone, Copy)]
pub struct VwapParams {
    /// Generator seed.
    pub seed: u64,
    /// Total trades (`None`: until cancelled).
    pub events: Option<u64>,
    /// Unpaced, or a fixed offered rate.
    pub pace: Pace,
    /// Measure the latency of one record in this many (1: every record).
    pub latency_sample: u32,
}

/// Declares W1: trades → filter(qty > 0) → key_by(symbol) → VWAP → latency sink.
/// At parallelism 1 it is one chain in one slot; at 2 the key exchange crosses rings.
pub fn vwap(env: &StreamExecutionEnvironment, p: VwapParams) -> DataStreamSink {
    vwap_stream(env, p)
        .latency_sink(|v| v.ts_ns)
        .name("Latency Sink")
}

/// W1 up to its VWAP stream (so tests can attach their own sink).
pub fn vwap_stream(
    env: &StreamExecutionEnvironment,
    p: VwapParams,
) -> crate::api::DataStream<Vwap> {
    env.trades(p.seed, p.events, p.pace)
        .name("Trade Source")
        .filter(|t: &Trade| t.qty > 0)
        .name("Filter qty>0")
        .key_by(|t: &Trade| t.symbol)
        .process(VwapFunction)
        .name("VWAP")
}

/// The single-threaded reference of W1: every symbol's VWAP sequence, computed over the
/// same seeded input as a run at `parallelism`.
pub fn vwap_reference(seed: u64, events: u64, parallelism: usize) -> HashMap<u32, Vec<i64>> {
    let mut state: HashMap<u32, VwapState> = HashMap::new();
    let mut out: HashMap<u32, Vec<i64>> = HashMap::new();
    for i in 0..parallelism {
        let info = SubtaskInfo {
            index: i,
            parallelism,
        };
        let n = events / parallelism as u64 + u64::from((i as u64) < events % parallelism as u64);
        let mut g = TradeGenerator::new(seed, info);
        for _ in 0..n {
            let t = g.next_trade(0);
            if t.qty > 0 {
                let v = state.entry(t.symbol).or_default().add(&t);
                out.entry(t.symbol).or_default().push(v);
            }
        }
    }
    out
}

/// Where a collected word count goes.
pub type WordCounts = Arc<Mutex<Vec<(String, u64)>>>;

/// Declares word count over a text file: lines → words → (word, 1) → key_by(word) →
/// rolling sum, printed (or collected into `into`).
pub fn wordcount(
    env: &StreamExecutionEnvironment,
    path: &std::path::Path,
    into: Option<WordCounts>,
) -> DataStreamSink {
    let counts = env
        .read_text_file(path)
        .flat_map(|line: String, out| {
            for w in line
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
            {
                out.collect((w.to_lowercase(), 1u64));
            }
        })
        .name("Tokenizer")
        .key_by(|wc: &(String, u64)| wc.0.clone())
        .sum(|wc: &mut (String, u64)| &mut wc.1);
    match into {
        Some(v) => counts.collect(v),
        None => counts.print(),
    }
}

/// Word count the plain way, for comparison.
pub fn wordcount_reference(text: &str) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *m.entry(w.to_lowercase()).or_insert(0) += 1;
    }
    m
}
