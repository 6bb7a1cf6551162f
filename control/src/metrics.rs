//! Metrics in the Prometheus text exposition format (version 0.0.4): what the
//! JobManager serves at `/metrics` on its REST port, and every TaskManager on a port
//! of its own (`metrics.reporter.prom.port`, Flink's key; a port or a range such as
//! `9249-9260`, of which the first free one is taken).
//!
//! Names are spate's, in Prometheus's conventions (snake case, counters ending in
//! `_total`, units in the name), so that `promtool check metrics` finds nothing to
//! say; the labels carry what Flink's reporter puts in its scope (job id and name,
//! vertex, subtask, TaskManager).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Metric families being written, in the order they were first given.
#[derive(Debug, Default)]
pub struct Exposition {
    order: Vec<String>,
    families: BTreeMap<String, Family>,
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: &'static str,
    /// (name suffix, labels, value).
    samples: Vec<(&'static str, String, String)>,
}

/// Escapes a label value (backslash, double quote, line feed), as the format asks.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn sample(
        &mut self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: String,
    ) {
        self.sample_suffixed(name, "", help, kind, labels, value);
    }

    fn sample_suffixed(
        &mut self,
        name: &str,
        suffix: &'static str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: String,
    ) {
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
        }
        let family = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                samples: Vec::new(),
            });
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        family.samples.push((suffix, labels, value));
    }

    /// A counter sample (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.sample(name, help, "counter", labels, value.to_string());
    }

    /// A counter sample of a quantity that is not a count (seconds).
    pub fn counter_f64(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, "counter", labels, float(value));
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        self.sample(name, help, "gauge", labels, float(value));
    }

    /// A summary: quantiles (`quantile`, value) with the sum and count of what was
    /// observed.
    pub fn summary(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        quantiles: &[(f64, f64)],
        sum: f64,
        count: u64,
    ) {
        for (q, v) in quantiles {
            let q = q.to_string();
            let mut l = labels.to_vec();
            l.push(("quantile", q.as_str()));
            self.sample_suffixed(name, "", help, "summary", &l, float(*v));
        }
        self.sample_suffixed(name, "_sum", help, "summary", labels, float(sum));
        self.sample_suffixed(name, "_count", help, "summary", labels, count.to_string());
    }

    /// The text, each family with its `# HELP` and `# TYPE` lines.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let Some(f) = self.families.get(name) else {
                continue;
            };
            let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (suffix, labels, v) in &f.samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name}{suffix} {v}");
                } else {
                    let _ = writeln!(out, "{name}{suffix}{{{labels}}} {v}");
                }
            }
        }
        out
    }
}

/// A latency histogram (ns) as the summary `spate_..._latency_seconds`: p50, p99,
/// p99.9 and p99.99, with the sum and count.
pub fn latency_summary(
    e: &mut Exposition,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    h: &hdrhistogram::Histogram<u64>,
) {
    let quantiles = [0.5, 0.99, 0.999, 0.9999].map(|q| (q, h.value_at_quantile(q) as f64 / 1e9));
    let sum = h.mean() * h.len() as f64 / 1e9;
    e.summary(name, help, labels, &quantiles, sum, h.len());
}

/// Each chained operator's own time per sampled record as the summary
/// `spate_operator_time_per_record_seconds`, labelled with `labels` and the operator's
/// name and place in its chain (`(name, histogram)` in chain order; those not sampled
/// yet `None`).
pub fn operator_times<'a, H: std::borrow::Borrow<hdrhistogram::Histogram<u64>>>(
    e: &mut Exposition,
    labels: &[(&str, &str)],
    measured: &str,
    operators: impl IntoIterator<Item = (&'a str, Option<H>)>,
) {
    for (i, (name, h)) in operators.into_iter().enumerate() {
        let Some(h) = h else { continue };
        let index = i.to_string();
        let mut l = labels.to_vec();
        l.push(("operator", name));
        l.push(("operator_index", index.as_str()));
        latency_summary(
            e,
            "spate_operator_time_per_record_seconds",
            &format!("A chained operator's own time per sampled record ({measured}), its downstream operators' time excluded."),
            &l,
            h.borrow(),
        );
    }
}

/// A sample value as the format writes it.
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "NaN".to_string()
    }
}

/// A network agent's counters (`r`), labelled `labels`: what the JobManager (as last
/// reported) and a TaskManager (its own) both expose.
pub fn network(e: &mut Exposition, labels: &[(&str, &str)], r: &crate::cluster::NetworkReport) {
    e.gauge(
        "spate_taskmanager_network_connections",
        "Connections of the network agent to other TaskManagers.",
        labels,
        r.connections as f64,
    );
    for (name, help, v) in [
        (
            "spate_taskmanager_network_received_bytes_total",
            "Bytes the network agent received.",
            r.bytes_in,
        ),
        (
            "spate_taskmanager_network_sent_bytes_total",
            "Bytes the network agent sent.",
            r.bytes_out,
        ),
        (
            "spate_taskmanager_network_received_frames_total",
            "Ring frames the network agent received.",
            r.frames_in,
        ),
        (
            "spate_taskmanager_network_sent_frames_total",
            "Ring frames the network agent sent.",
            r.frames_out,
        ),
        (
            "spate_taskmanager_network_failures_total",
            "Connections lost or peers given up.",
            r.failures,
        ),
    ] {
        e.counter(name, help, labels, v);
    }
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Ports to try for `metrics.reporter.prom.port`: `9249` or a range `9249-9260`.
pub fn parse_ports(v: &str) -> Option<Vec<u16>> {
    let v = v.trim();
    match v.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
            (a <= b).then(|| (a..=b).collect())
        }
        None => Some(vec![v.parse::<u16>().ok()?]),
    }
}

/// Serves `/metrics` from `text` (kept current by its owner) on the first of `ports`
/// that is free, on `host`.
pub fn serve(
    host: &str,
    ports: &[u16],
    text: Arc<Mutex<String>>,
) -> anyhow::Result<crate::rest::RestServer> {
    use axum::routing::get;
    let mut last = None;
    for &port in ports {
        let addr: SocketAddr = match format!("{host}:{port}").parse() {
            Ok(a) => a,
            Err(e) => anyhow::bail!("metrics.reporter.prom.host {host}: {e}"),
        };
        let text = text.clone();
        let router = axum::Router::new().route(
            "/metrics",
            get(move || {
                let body = text.lock().map(|t| t.clone()).unwrap_or_default();
                async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], body) }
            }),
        );
        match crate::rest::RestServer::serve(addr, router, "taskmanager-metrics") {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("metrics.reporter.prom.port names no port")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn families_are_grouped_with_help_and_type_and_labels_escaped() {
        let mut e = Exposition::new();
        e.counter("x_total", "X.", &[("a", "1")], 3);
        e.gauge("y", "Y.", &[], 0.5);
        e.counter("x_total", "X.", &[("a", "q\"\\\n")], 4);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n\
             x_total{a=\"q\\\"\\\\\\n\"} 4\n# HELP y Y.\n# TYPE y gauge\ny 0.5\n"
        );
    }

    #[test]
    fn ports_are_one_or_a_range() {
        assert_eq!(parse_ports("9249"), Some(vec![9249]));
        assert_eq!(parse_ports("9249-9251"), Some(vec![9249, 9250, 9251]));
        assert_eq!(parse_ports("9251-9249"), None);
        assert_eq!(parse_ports("x"), None);
    }
}
