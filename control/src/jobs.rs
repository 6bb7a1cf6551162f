//! The built-in jobs the stock `spate` binary runs: `vwap` (workload W1), `bars`
//! (workload W2) and `wordcount`.

use crate::api::{DataStreamSink, StreamExecutionEnvironment};
use spate_dataplane::operator::keyed::{Context, KeyedProcessFunction};
use spate_dataplane::operator::source::{Pace, Trade, TradeGenerator};
use spate_dataplane::operator::watermark::WatermarkStrategy;
use spate_dataplane::operator::window::{AggregateFunction, Window, WindowAssigner};
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

/// Running sums of one symbol: 24 bytes, 8-byte aligned (Σprice·qty is a 128-bit sum
/// kept as two words, so that a symbol's entry with its key takes 32 bytes and W1's
/// 1000 symbols fit in L1).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VwapState {
    /// Σprice·qty, low and high 64 bits of a two's-complement 128-bit sum.
    price_qty: [u64; 2],
    /// Σqty.
    pub qty: u64,
}

impl VwapState {
    /// Σprice·qty.
    #[inline(always)]
    pub fn price_qty(&self) -> i128 {
        ((u128::from(self.price_qty[1]) << 64) | u128::from(self.price_qty[0])) as i128
    }

    /// Adds another state's sums.
    pub fn merge(&mut self, other: &VwapState) {
        let pq = self.price_qty() + other.price_qty();
        self.price_qty = [pq as u64, ((pq as u128) >> 64) as u64];
        self.qty += other.qty;
    }

    /// Adds a trade and returns the new VWAP.
    #[inline(always)]
    pub fn add(&mut self, t: &Trade) -> i64 {
        let pq = self.price_qty() + i128::from(t.price) * i128::from(t.qty);
        self.price_qty = [pq as u64, ((pq as u128) >> 64) as u64];
        self.qty += u64::from(t.qty);
        let q = self.qty.max(1);
        match u64::try_from(pq) {
            // The common case: a non-negative sum below 2^64 divides in 64 bits.
            Ok(pq) => (pq / q) as i64,
            Err(_) => (pq / i128::from(q)) as i64,
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
        .latency_sink_sampled(|v| v.ts_ns, p.latency_sample)
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

/// Reads what W1 committed with `output: DIR` (part files of the exactly-once file
/// sink, one `(symbol, vwap)` line per result): every symbol's VWAP sequence, in order,
/// comparable with [`vwap_reference`].
pub fn read_vwap_output(dir: &std::path::Path) -> std::io::Result<HashMap<u32, Vec<i64>>> {
    let mut got: HashMap<u32, Vec<i64>> = HashMap::new();
    let lines = spate_dataplane::operator::file_sink::read_committed(dir)?;
    for (n, line) in lines.iter().enumerate() {
        let bad = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: line {}: not a (symbol, vwap) line: {line:?}",
                    dir.display(),
                    n + 1
                ),
            )
        };
        let (s, v) = line
            .trim_matches(|c| c == '(' || c == ')')
            .split_once(", ")
            .ok_or_else(bad)?;
        let s: u32 = s.parse().map_err(|_| bad())?;
        let v: i64 = v.parse().map_err(|_| bad())?;
        got.entry(s).or_default().push(v);
    }
    Ok(got)
}

/// W2's output: one symbol's bar for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Bar {
    /// The window's first instant (event time, ns).
    pub window_start: u64,
    /// One past its last instant.
    pub window_end: u64,
    /// Price of the window's earliest trade (by event time; ties: the first to arrive).
    pub open: i64,
    /// Highest price.
    pub high: i64,
    /// Lowest price.
    pub low: i64,
    /// Price of the window's latest trade (by event time; ties: the last to arrive).
    pub close: i64,
    /// Σqty.
    pub volume: u64,
    /// Σprice·qty / Σqty, fixed point (rounded down).
    pub vwap: i64,
    /// Trades.
    pub count: u64,
    /// When the watermark could first pass the window's end: the window's end plus the
    /// disorder bound (what the firing latency is measured from).
    pub ready_ns: u64,
    /// Symbol.
    pub symbol: u32,
    /// Padding (zero).
    pub pad: u32,
}

spate_dataplane::pod_wire!(Bar);

/// A bar being built: the window's trades so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarAcc {
    open_ts: u64,
    /// Opening price.
    pub open: i64,
    close_ts: u64,
    /// Closing price.
    pub close: i64,
    /// Highest price.
    pub high: i64,
    /// Lowest price.
    pub low: i64,
    /// Volume and VWAP arithmetic (the same as W1's).
    pub sums: VwapState,
    /// Trades.
    pub count: u64,
}

impl Default for BarAcc {
    fn default() -> Self {
        Self {
            open_ts: u64::MAX,
            open: 0,
            close_ts: 0,
            close: 0,
            high: i64::MIN,
            low: i64::MAX,
            sums: VwapState::default(),
            count: 0,
        }
    }
}

impl BarAcc {
    /// Adds a trade.
    #[inline(always)]
    pub fn add(&mut self, t: &Trade) {
        if t.ts_ns < self.open_ts {
            self.open_ts = t.ts_ns;
            self.open = t.price;
        }
        if t.ts_ns >= self.close_ts {
            self.close_ts = t.ts_ns;
            self.close = t.price;
        }
        self.high = self.high.max(t.price);
        self.low = self.low.min(t.price);
        self.sums.add(t);
        self.count += 1;
    }

    /// The VWAP so far.
    pub fn vwap(&self) -> i64 {
        let q = self.sums.qty.max(1);
        (self.sums.price_qty() / i128::from(q)) as i64
    }
}

/// W2's aggregation: open, high, low, close, volume, VWAP and count.
#[derive(Debug, Clone, Copy, Default)]
pub struct BarAggregate;

impl AggregateFunction for BarAggregate {
    type In = Trade;
    type Acc = BarAcc;
    type Out = BarAcc;
    fn create_accumulator(&self) -> BarAcc {
        BarAcc::default()
    }
    #[inline(always)]
    fn add(&self, t: &Trade, acc: &mut BarAcc) {
        acc.add(t);
    }
    fn get_result(&self, acc: &BarAcc) -> BarAcc {
        *acc
    }
    fn merge(&self, a: BarAcc, b: BarAcc) -> BarAcc {
        let (first, last) = if a.open_ts <= b.open_ts {
            (a, b)
        } else {
            (b, a)
        };
        let closer = if b.close_ts >= a.close_ts { b } else { a };
        let mut sums = first.sums;
        sums.merge(&last.sums);
        BarAcc {
            open_ts: first.open_ts,
            open: first.open,
            close_ts: closer.close_ts,
            close: closer.close,
            high: a.high.max(b.high),
            low: a.low.min(b.low),
            sums,
            count: a.count + b.count,
        }
    }
}

/// Parameters of W2.
#[derive(Debug, Clone, Copy)]
pub struct BarsParams {
    /// Generator seed.
    pub seed: u64,
    /// Total trades (`None`: until cancelled).
    pub events: Option<u64>,
    /// Unpaced, or a fixed offered rate.
    pub pace: Pace,
    /// Largest delay of a trade's event time behind its send time, and the watermark
    /// bound (ns).
    pub disorder_ns: u64,
    /// Window size (ns).
    pub window_ns: u64,
}

/// Declares W2: disordered trades → watermarks (bounded by the disorder) → key_by(symbol)
/// → tumbling event-time window → bar → latency sink (firing latency).
pub fn bars(env: &StreamExecutionEnvironment, p: BarsParams) -> Result<DataStreamSink, String> {
    Ok(bars_stream(env, p)?
        .latency_sink_sampled(|b: &Bar| b.ready_ns, 1)
        .name("Latency Sink"))
}

/// W2 up to its bar stream (so tests can attach their own sink).
pub fn bars_stream(
    env: &StreamExecutionEnvironment,
    p: BarsParams,
) -> Result<crate::api::DataStream<Bar>, String> {
    let trades = env
        .disordered_trades(p.seed, p.events, p.pace, p.disorder_ns)
        .name("Trade Source");
    bars_of(&trades, p.disorder_ns, p.window_ns)
}

/// W2 over a stream of trades: watermarks bounded by `disorder_ns`, one bar per symbol
/// and window of `window_ns`.
pub fn bars_of(
    trades: &crate::api::DataStream<Trade>,
    disorder_ns: u64,
    window_ns: u64,
) -> Result<crate::api::DataStream<Bar>, String> {
    let window = WindowAssigner::tumbling_event_time(std::time::Duration::from_nanos(window_ns))
        .map_err(|e| e.to_string())?;
    let bound = disorder_ns;
    Ok(trades
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_bounded_out_of_orderness(std::time::Duration::from_nanos(bound))
                .with_timestamp_assigner(|t: &Trade| t.ts_ns),
        )
        .key_by(|t: &Trade| t.symbol)
        .window(window)
        .aggregate_with(
            BarAggregate,
            move |symbol: &u32, w: &Window, acc: BarAcc| {
                Some(Bar {
                    window_start: w.start,
                    window_end: w.end,
                    open: acc.open,
                    high: acc.high,
                    low: acc.low,
                    close: acc.close,
                    volume: acc.sums.qty,
                    vwap: acc.vwap(),
                    count: acc.count,
                    ready_ns: w.end.saturating_add(bound),
                    symbol: *symbol,
                    pad: 0,
                })
            },
        )
        .name("One-second bars"))
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

/// Declares an application's job on an environment, from its spec (arguments,
/// parallelism, ...). Errors say what is wrong with the spec.
pub type JobBuilder = fn(&StreamExecutionEnvironment, &JobSpec) -> Result<(), String>;

fn registry() -> &'static std::sync::RwLock<std::collections::BTreeMap<String, JobBuilder>> {
    static REGISTRY: std::sync::OnceLock<
        std::sync::RwLock<std::collections::BTreeMap<String, JobBuilder>>,
    > = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers an application's job under `name` (application mode): a program that
/// links spate registers its jobs, then calls [`crate::cli::main`], so that the same
/// binary runs them as client, JobManager and TaskManager alike.
pub fn register(name: &str, build: JobBuilder) {
    let mut r = match registry().write() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    r.insert(name.to_string(), build);
}

fn registered(name: &str) -> Option<JobBuilder> {
    match registry().read() {
        Ok(r) => r.get(name).copied(),
        Err(p) => p.into_inner().get(name).copied(),
    }
}

/// What identifies the build a process runs, for the JobManager and its TaskManagers
/// to refuse each other when they differ (a TaskManager of the stock `spate` binary
/// cannot run an application binary's jobs, nor one of another version run the
/// messages and jobs of this one): spate's version, the jobs the binary registered,
/// and the size of the executable.
pub fn build_fingerprint() -> String {
    let exe_len = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map_or(0, |m| m.len());
    fingerprint_of(exe_len, &registered_names())
}

/// The build fingerprint of an executable of `exe_len` bytes that registered `jobs`
/// (sorted), as [`build_fingerprint`] computes it for the running one.
pub fn fingerprint_of(exe_len: u64, jobs: &[String]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    jobs.hash(&mut h);
    exe_len.hash(&mut h);
    format!("{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish())
}

/// The names of the jobs this binary registered (application mode), sorted.
pub fn registered_names() -> Vec<String> {
    match registry().read() {
        Ok(r) => r.keys().cloned().collect(),
        Err(p) => p.into_inner().keys().cloned().collect(),
    }
}

/// A built-in job and its parameters: what `spate run` and `POST /jobs` name, and what
/// every TaskManager rebuilds its part of the job from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    /// `vwap`, `bars`, `wordcount` or a registered job.
    pub job: String,
    /// The job's arguments (`wordcount FILE`).
    #[serde(default)]
    pub args: Vec<String>,
    /// Client-level parallelism.
    #[serde(default)]
    pub parallelism: Option<usize>,
    /// vwap: trades in all; 0 runs until cancelled.
    #[serde(default = "default_events")]
    pub events: u64,
    /// vwap: offered rate, events/s (unpaced when absent).
    #[serde(default)]
    pub rate: Option<f64>,
    /// vwap: generator seed.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// vwap: measure one record in this many (default: 1 when paced, 16 unpaced).
    #[serde(default)]
    pub latency_sample: Option<u32>,
    /// vwap: write `(symbol, vwap)` lines into part files under this directory
    /// through the exactly-once file sink, instead of measuring latency.
    #[serde(default)]
    pub output: Option<String>,
    /// bars: how far a trade's event time may be behind its send time, and the
    /// watermark bound (a duration such as `5 ms`; default 5 ms).
    #[serde(default)]
    pub disorder: Option<String>,
    /// bars (and jobs of ones own that take a window): the window size (a duration
    /// such as `1 s`; bars: default 1 s).
    #[serde(default)]
    pub window: Option<String>,
    /// STREAMING or BATCH (`execution.runtime-mode`; default: the configuration's).
    #[serde(default)]
    pub runtime_mode: Option<crate::api::RuntimeMode>,
    /// `pipeline.auto-watermark-interval` in ns (0: no watermarks; default: the
    /// configuration's).
    #[serde(default)]
    pub auto_watermark_interval_ns: Option<u64>,
    /// `pipeline.max-parallelism` (default: the configuration's, else Flink's rule).
    #[serde(default)]
    pub max_parallelism: Option<u32>,
    /// The job's own configuration (`key=value`, as `spate run -m ... -D key=value`):
    /// applied over the cluster's for this job alone (restart strategy, failover,
    /// parallelism, chaining, runtime mode).
    #[serde(default)]
    pub config: Vec<String>,
    /// Resume from this checkpoint or savepoint (a `chk-N` directory, its `_metadata`
    /// file, or a job's checkpoint directory), as `spate run -s PATH`.
    #[serde(default, alias = "savepointPath")]
    pub savepoint_path: Option<String>,
}

fn default_events() -> u64 {
    50_000_000
}

fn default_seed() -> u64 {
    42
}

impl JobSpec {
    /// A spec with the defaults for `job`.
    pub fn new(job: &str) -> Self {
        Self {
            job: job.to_string(),
            args: Vec::new(),
            parallelism: None,
            events: default_events(),
            rate: None,
            seed: default_seed(),
            latency_sample: None,
            output: None,
            disorder: None,
            window: None,
            runtime_mode: None,
            auto_watermark_interval_ns: None,
            max_parallelism: None,
            config: Vec::new(),
            savepoint_path: None,
        }
    }

    /// bars: the disorder bound and the window size, ns.
    pub fn bars_times(&self) -> Result<(u64, u64), String> {
        let parse = |what: &str, v: &Option<String>, default: u64| match v {
            None => Ok(default),
            Some(s) => crate::config::parse_duration(s)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .ok_or_else(|| {
                    format!("--{what} must be a duration such as '5 ms' or '1 s', not {s:?}")
                }),
        };
        let disorder = parse("disorder", &self.disorder, 5_000_000)?;
        let window = parse("window", &self.window, 1_000_000_000)?;
        if window == 0 {
            return Err("--window must be positive".into());
        }
        Ok((disorder, window))
    }

    fn pace(&self) -> Result<Pace, String> {
        match self.rate {
            Some(r) if r.is_finite() && r > 0.0 => Ok(Pace::Rate(r)),
            Some(r) => Err(format!(
                "--rate must be a positive number of events per second, not {r}"
            )),
            None => Ok(Pace::Unpaced),
        }
    }

    /// The latency sampling in effect.
    pub fn latency_sample(&self) -> u32 {
        self.latency_sample
            .unwrap_or(if self.rate.is_some() { 1 } else { 16 })
            .max(1)
    }

    /// Declares the job on `env`. Errors say what is wrong with the spec.
    pub fn declare(&self, env: &StreamExecutionEnvironment) -> Result<(), String> {
        match self.job.as_str() {
            "vwap" => {
                if !self.args.is_empty() {
                    return Err(format!("vwap takes no arguments (got {:?})", self.args));
                }
                let pace = self.pace()?;
                let params = VwapParams {
                    seed: self.seed,
                    events: (self.events > 0).then_some(self.events),
                    pace,
                    latency_sample: self.latency_sample(),
                };
                match &self.output {
                    Some(path) => {
                        vwap_stream(env, params)
                            .map(|v: Vwap| (v.symbol, v.vwap))
                            .sink_to_files(path);
                    }
                    None => {
                        vwap(env, params);
                    }
                }
            }
            "bars" => {
                if !self.args.is_empty() {
                    return Err(format!("bars takes no arguments (got {:?})", self.args));
                }
                let (disorder_ns, window_ns) = self.bars_times()?;
                bars(
                    env,
                    BarsParams {
                        seed: self.seed,
                        events: (self.events > 0).then_some(self.events),
                        pace: self.pace()?,
                        disorder_ns,
                        window_ns,
                    },
                )?;
            }
            "wordcount" => {
                let [file] = self.args.as_slice() else {
                    return Err("usage: spate run wordcount FILE".into());
                };
                let path = std::path::PathBuf::from(file);
                // Confined before anything is looked up (not even whether it exists).
                crate::security::check_job_path(&path, "the text file")?;
                std::fs::metadata(&path).map_err(|e| format!("cannot read {file}: {e}"))?;
                wordcount(env, &path, None);
            }
            "sql" => {
                if self.args.is_empty() {
                    return Err("the sql job takes its SQL scripts as arguments".into());
                }
                let scripts: Vec<&str> = self.args.iter().map(String::as_str).collect();
                crate::sql::Session::new()
                    .declare_scripts(env, &scripts)
                    .map_err(|e| e.to_string())?;
            }
            other => match registered(other) {
                Some(build) => build(env, self)?,
                None => {
                    let mut names = vec![
                        "vwap".to_string(),
                        "bars".to_string(),
                        "wordcount".to_string(),
                    ];
                    names.extend(registered_names());
                    return Err(format!(
                        "unknown job '{other}': the jobs of this binary are {}",
                        names.join(", ")
                    ));
                }
            },
        }
        Ok(())
    }

    /// Declares the job and resolves it into a job graph.
    pub fn job_graph(
        &self,
        default_parallelism: usize,
        chaining: bool,
    ) -> Result<crate::graph::JobGraph, String> {
        if self.parallelism == Some(0) {
            return Err("-p must be at least 1".into());
        }
        let env = StreamExecutionEnvironment::new(&self.job);
        if let Some(mode) = self.runtime_mode {
            env.set_runtime_mode(mode);
        }
        if let Some(ns) = self.auto_watermark_interval_ns {
            env.set_auto_watermark_interval(std::time::Duration::from_nanos(ns));
        }
        if let Some(m) = self.max_parallelism {
            env.set_max_parallelism(m);
        }
        // A job's builder is user code: its panic is this job's failure, never the
        // JobManager's or the TaskManager's.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.declare(&env))).map_err(
            |p| {
                format!(
                    "the builder of job '{}' panicked: {}",
                    self.job,
                    spate_dataplane::slot::panic_message(&*p)
                )
            },
        )??;
        crate::graph::JobGraph::build(
            env.stream_graph(),
            self.parallelism,
            default_parallelism,
            chaining,
        )
        .map_err(|e| e.to_string())
    }
}
