//! Application mode: a program that links spate, defines its own job with its own
//! functions, and runs as client, JobManager or TaskManager from the same binary.
//!
//! ```text
//! cargo run --release -p spate --example price_highs -- run price-highs --events 1000000
//! target/release/examples/price_highs jobmanager
//! target/release/examples/price_highs taskmanager
//! target/release/examples/price_highs run -m localhost:8081 -p 2 price-highs
//! ```
//!
//! The job: W1's trades, keyed by symbol; a KeyedProcessFunction keeps each symbol's
//! highest price in ValueState and emits `(symbol, price)` whenever it is beaten.

use spate::api::StreamExecutionEnvironment;
use spate::dataplane::operator::keyed::{Context, KeyedProcessFunction, ValueState};
use spate::dataplane::operator::source::{Pace, Trade};
use spate::jobs::JobSpec;

#[derive(Clone)]
struct NewHighs;

impl KeyedProcessFunction for NewHighs {
    type Key = u32;
    type In = Trade;
    type Out = (u32, i64);
    type State = ValueState<i64>;

    fn process_element(
        &mut self,
        t: Trade,
        high: &mut ValueState<i64>,
        ctx: &mut Context<'_, u32, (u32, i64)>,
    ) {
        if high.value().is_none_or(|h| t.price > *h) {
            high.update(t.price);
            ctx.collect((t.symbol, t.price));
        }
    }
}

fn price_highs(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    if !spec.args.is_empty() {
        return Err("price-highs takes no arguments".into());
    }
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    let highs = env
        .trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .key_by(|t: &Trade| t.symbol)
        .process(NewHighs)
        .name("New Highs");
    match &spec.output {
        Some(path) => highs.write_as_text(path),
        None => highs.print(),
    };
    Ok(())
}

/// Forward edges only: every parallel pipeline is its own region (for region failover).
fn big_trades(env: &StreamExecutionEnvironment, spec: &JobSpec) -> Result<(), String> {
    let pace = spec.rate.map_or(Pace::Unpaced, Pace::Rate);
    // The filter starts a chain of its own: each source subtask feeds its filter over a
    // forward ring, so every subtask pair is a pipelined region of its own.
    env.trades(spec.seed, (spec.events > 0).then_some(spec.events), pace)
        .filter(|t: &Trade| t.qty > 50)
        .start_new_chain()
        .discard();
    Ok(())
}

fn main() {
    spate::jobs::register("price-highs", price_highs);
    spate::jobs::register("big-trades", big_trades);
    spate::cli::main();
}
