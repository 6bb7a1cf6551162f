//! Result rows: a printed table and the JSON array scripts compare.

use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured (topology, implementation) pair.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// e.g. `pingpong_threads`.
    pub topology: String,
    /// e.g. `spate`.
    #[serde(rename = "impl")]
    pub impl_: String,
    /// Latency percentiles (ping-pong rows), ns.
    pub p50_ns: Option<u64>,
    /// p99.
    pub p99_ns: Option<u64>,
    /// p99.9.
    pub p999_ns: Option<u64>,
    /// p99.99.
    pub p9999_ns: Option<u64>,
    /// max.
    pub max_ns: Option<u64>,
    /// Rate (streaming rows).
    pub msgs_per_s: Option<f64>,
}

impl Row {
    /// A latency row from a histogram of ns.
    pub fn latency(topology: &str, impl_: &str, h: &Histogram<u64>) -> Self {
        Self {
            topology: topology.into(),
            impl_: impl_.into(),
            p50_ns: Some(h.value_at_quantile(0.5)),
            p99_ns: Some(h.value_at_quantile(0.99)),
            p999_ns: Some(h.value_at_quantile(0.999)),
            p9999_ns: Some(h.value_at_quantile(0.9999)),
            max_ns: Some(h.max()),
            msgs_per_s: None,
        }
    }

    /// A throughput row.
    pub fn rate(topology: &str, impl_: &str, msgs_per_s: f64) -> Self {
        Self {
            topology: topology.into(),
            impl_: impl_.into(),
            p50_ns: None,
            p99_ns: None,
            p999_ns: None,
            p9999_ns: None,
            max_ns: None,
            msgs_per_s: Some(msgs_per_s),
        }
    }
}

/// A latency histogram from 1 ns to 100 s with 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 100_000_000_000, 3).unwrap()
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Prints the rows as a table, with each row's ratio to the row of `baseline` impl in
/// the same topology.
pub fn print_table(rows: &[Row], frame_bytes: usize) {
    println!(
        "{:<24} {:<11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14} {:>8}",
        "topology", "impl", "p50 ns", "p99 ns", "p99.9", "p99.99", "max ns", "msgs/s", "GB/s"
    );
    for r in rows {
        let (rate, gbs) = match r.msgs_per_s {
            Some(m) => (
                format!("{:.1}M", m / 1e6),
                format!("{:.2}", m * frame_bytes as f64 / 1e9),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<24} {:<11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>14} {:>8}",
            r.topology,
            r.impl_,
            opt(r.p50_ns),
            opt(r.p99_ns),
            opt(r.p999_ns),
            opt(r.p9999_ns),
            opt(r.max_ns),
            rate,
            gbs
        );
    }
}

/// Prints `impl_` against every other impl of the same topology, as ratios.
pub fn print_ratios(rows: &[Row], impl_: &str) {
    println!("\nratios ({impl_} / other; latency: lower is better, rate: higher is better)");
    for r in rows.iter().filter(|r| r.impl_ == impl_) {
        for o in rows
            .iter()
            .filter(|o| o.topology == r.topology && o.impl_ != impl_)
        {
            match (
                r.p50_ns,
                o.p50_ns,
                r.p999_ns,
                o.p999_ns,
                r.msgs_per_s,
                o.msgs_per_s,
            ) {
                (Some(a), Some(b), Some(a9), Some(b9), _, _) => println!(
                    "  {:<24} vs {:<11} p50 {:.2}x  p99.9 {:.2}x",
                    r.topology,
                    o.impl_,
                    a as f64 / b.max(1) as f64,
                    a9 as f64 / b9.max(1) as f64
                ),
                (_, _, _, _, Some(a), Some(b)) => {
                    println!("  {:<24} vs {:<11} rate {:.2}x", r.topology, o.impl_, a / b)
                }
                _ => {}
            }
        }
    }
}

/// Writes the rows as a JSON array.
pub fn write_json(path: &std::path::Path, rows: &[Row]) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(rows)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))
}
