//! The `spate` command line: one binary that runs as client, JobManager or
//! TaskManager. An application-mode program registers its own jobs
//! ([`crate::jobs::register`]) and then calls [`main`], so that the same binary runs
//! every role.

use crate::cli_client as client;

use crate::config::Config;
use crate::graph::JobGraph;
use crate::jobs::JobSpec;
use crate::minicluster::{JobStatus, MiniCluster, Progress};
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "spate",
    version,
    about = "spate: a low-latency stream processor with Flink's model"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug, Clone)]
struct JobArgs {
    /// Parallelism (client level: below operator and job settings, above parallelism.default).
    #[arg(short = 'p', long)]
    parallelism: Option<usize>,
    /// Trades to generate (vwap); 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 50_000_000)]
    events: u64,
    /// Offered rate in events/s (vwap); events are stamped with their scheduled send time.
    /// Without it, the source runs as fast as the pipeline takes events.
    #[arg(long, allow_negative_numbers = true)]
    rate: Option<f64>,
    /// Measure the latency of one record in N (default: every record when --rate is
    /// given, 1 in 16 when unpaced, where reading the clock would dominate the cost).
    #[arg(long, value_name = "N")]
    latency_sample: Option<u32>,
    /// Seed of the trade generator (vwap).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Override a configuration key (repeatable), e.g. -D taskmanager.idle-strategy=busy-spin.
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    defines: Vec<String>,
    /// Configuration directory (default: $SPATE_CONF_DIR, else ./conf).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// vwap: write (symbol, vwap) lines to PATH (PATH.N per subtask) instead of
    /// measuring latency.
    #[arg(long, value_name = "PATH")]
    output: Option<String>,
    /// bars: how far a trade's event time may lag its send time, and the watermark
    /// bound (default 5 ms).
    #[arg(long, value_name = "DURATION")]
    disorder: Option<String>,
    /// bars: window size (default 1 s).
    #[arg(long, value_name = "DURATION")]
    window: Option<String>,
    /// Resume from a checkpoint or savepoint: a `chk-N` directory, its `_metadata`
    /// file, or a job's checkpoint directory (its latest complete checkpoint).
    #[arg(short = 's', long = "fromSavepoint", value_name = "PATH", value_parser = savepoint_arg)]
    from_savepoint: Option<PathBuf>,
    /// Run the SQL statements of this file as one job: its INSERTs with their sinks,
    /// its SELECTs printed (instead of a built-in JOB).
    #[arg(
        short = 'f',
        long = "file",
        value_name = "SQL_FILE",
        conflicts_with = "job_name"
    )]
    file: Option<PathBuf>,
    /// With -f: SQL files to run first, in the same session (table and view
    /// definitions), as the SQL client's -i.
    #[arg(short = 'i', long = "init", value_name = "SQL_FILE", requires = "file")]
    init: Vec<PathBuf>,
    /// Built-in job: vwap | bars | wordcount FILE (or -f SQL_FILE).
    #[arg(id = "job_name", value_name = "JOB", required_unless_present = "file")]
    job_name: Option<String>,
    /// The job's arguments.
    args: Vec<String>,
    /// The job to run (JOB, or `sql` for -f).
    #[arg(skip)]
    job: String,
}

impl JobArgs {
    /// Resolves JOB or -f into the job and its arguments (a SQL file's text is the
    /// `sql` job's argument, so that a cluster declares the same job from it).
    fn resolve(mut self) -> Result<Self> {
        match &self.file {
            Some(path) => {
                if !self.args.is_empty() {
                    anyhow::bail!("-f takes no job arguments (got {:?})", self.args);
                }
                // Check each file here, so that an error names its file.
                let env = crate::api::StreamExecutionEnvironment::new("check");
                let mut session = crate::sql::Session::new();
                let mut texts = Vec::new();
                for p in self.init.iter().chain(std::iter::once(path)) {
                    let text = std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?;
                    let statements = crate::sql::parse::script(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                    for s in &statements {
                        session
                            .execute(&env, s)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
                    }
                    texts.push(text);
                }
                self.job = "sql".into();
                self.args = texts;
            }
            None => self.job = self.job_name.clone().unwrap_or_default(),
        }
        Ok(self)
    }
}

#[derive(Args, Debug, Clone)]
struct ConfArgs {
    /// Override a configuration key (repeatable), e.g. -D rest.port=8082.
    #[arg(short = 'D', value_name = "KEY=VALUE")]
    defines: Vec<String>,
    /// Configuration directory (default: $SPATE_CONF_DIR, else ./conf).
    #[arg(long)]
    config_dir: Option<PathBuf>,
}

impl ConfArgs {
    fn load(&self) -> Result<Config> {
        Ok(Config::load(
            &Config::dir(self.config_dir.as_deref()),
            &self.defines,
        )?)
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a JobManager: the ResourceManager for TaskManagers (RPC on
    /// jobmanager.rpc.port) and the REST API (rest.port).
    Jobmanager {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Start a TaskManager: pinned slots registered with the JobManager at
    /// jobmanager.rpc.address:jobmanager.rpc.port.
    Taskmanager {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Start a whole cluster in this process: a JobManager (with its REST API) and one
    /// TaskManager, for jobs submitted with `spate run -m`.
    Local {
        #[command(flatten)]
        conf: ConfArgs,
    },
    /// Run a job: on an embedded MiniCluster (printing its throughput and latency), or
    /// with -m on a cluster's JobManager.
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Submit to the JobManager's REST API at HOST:PORT instead of running locally.
        #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        /// With -m: return once the job is submitted.
        #[arg(short = 'd', long)]
        detached: bool,
        /// Also write the summary as a JSON object to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the latency as an HdrHistogram interval log (one histogram per second,
        /// in ns) to this file: HdrHistogram's own tools read it (HistogramLogProcessor,
        /// HdrHistogram's log analyzers).
        #[arg(long, value_name = "FILE")]
        hlog: Option<PathBuf>,
    },
    /// List the cluster's jobs.
    List {
        #[command(flatten)]
        conf: ConfArgs,
        /// The JobManager's REST address (default: jobmanager.rpc.address:rest.port).
        #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
        jobmanager: Option<String>,
    },
    /// Cancel a job on the cluster.
    Cancel {
        #[command(flatten)]
        conf: ConfArgs,
        /// The JobManager's REST address (default: jobmanager.rpc.address:rest.port).
        #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        /// The job's id.
        id: String,
    },
    /// Take a savepoint of a running job on the cluster (it runs on).
    Savepoint {
        #[command(flatten)]
        conf: ConfArgs,
        /// The JobManager's REST address (default: jobmanager.rpc.address:rest.port).
        #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        /// The job's id.
        id: String,
        /// Where the savepoint goes (default: state.savepoints.dir).
        target: Option<PathBuf>,
    },
    /// Stop a job on the cluster with a savepoint: the job ends FINISHED, and `spate
    /// run -s <savepoint>` resumes it.
    Stop {
        #[command(flatten)]
        conf: ConfArgs,
        /// The JobManager's REST address (default: jobmanager.rpc.address:rest.port).
        #[arg(short = 'm', long = "jobmanager", value_name = "HOST:PORT")]
        jobmanager: Option<String>,
        /// Where the savepoint goes (default: state.savepoints.dir).
        #[arg(short = 'p', long = "savepointPath", value_name = "DIR")]
        savepoint_path: Option<PathBuf>,
        /// The job's id.
        id: String,
    },
    /// The SQL client: runs the statements of -f FILE, or of standard input (an
    /// interactive session on a terminal), on an embedded MiniCluster or with -m on a
    /// cluster.
    Sql(crate::sql_client::SqlArgs),
    /// Print a job's graph: vertices, chained operators, parallelism, slot sharing groups, edges.
    Info {
        #[command(flatten)]
        job: JobArgs,
    },
}

/// A path, a `file:` URI (as `spate savepoint` prints a savepoint's location), or an
/// `s3://` location.
fn savepoint_arg(s: &str) -> Result<PathBuf, String> {
    if s.starts_with(crate::storage::S3_SCHEME) {
        return Ok(PathBuf::from(s));
    }
    let p = s
        .strip_prefix("file://")
        .or_else(|| s.strip_prefix("file:"))
        .unwrap_or(s);
    if p.is_empty() || p.contains("://") {
        return Err(format!(
            "{s:?} is not a path, a file: URI or an s3:// location"
        ));
    }
    Ok(PathBuf::from(p))
}

fn spec(a: &JobArgs) -> JobSpec {
    JobSpec {
        job: a.job.clone(),
        args: a.args.clone(),
        parallelism: a.parallelism,
        events: a.events,
        rate: a.rate,
        seed: a.seed,
        latency_sample: a.latency_sample,
        output: a.output.clone(),
        disorder: a.disorder.clone(),
        window: a.window.clone(),
        runtime_mode: None,
        auto_watermark_interval_ns: None,
        max_parallelism: None,
        config: Vec::new(),
        // The JobManager reads it: an absolute path (on a filesystem it shares).
        savepoint_path: a.from_savepoint.as_ref().map(|p| {
            if crate::storage::is_remote(p) {
                return p.display().to_string();
            }
            std::path::absolute(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string()
        }),
    }
}

fn prepare(a: &JobArgs) -> Result<(Config, JobGraph)> {
    let dir = Config::dir(a.config_dir.as_deref());
    let config = Config::load(&dir, &a.defines)?;
    let mut spec = spec(a);
    spec.runtime_mode = Some(config.runtime_mode);
    spec.auto_watermark_interval_ns = Some(interval_ns(&config));
    spec.max_parallelism = config.max_parallelism;
    let mut graph = spec
        .job_graph(config.default_parallelism, config.chaining)
        .map_err(|e| anyhow::anyhow!(e))?;
    graph.restore_from = a.from_savepoint.clone();
    Ok((config, graph))
}

fn interval_ns(config: &Config) -> u64 {
    u64::try_from(config.auto_watermark_interval.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn us(ns: u64) -> String {
    if ns >= 1_000_000 {
        format!("{:.2} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} µs", ns as f64 / 1e3)
    }
}

pub(crate) fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Runs `body` with a function that writes latency into the HdrHistogram interval log
/// at `path` (when there is one): given the cumulative histogram and the time since
/// the start, it writes what was recorded since the previous call as one interval.
pub(crate) fn with_interval_log<R>(
    path: Option<&std::path::Path>,
    job: &str,
    body: impl FnOnce(&mut dyn FnMut(&hdrhistogram::Histogram<u64>, Duration)) -> Result<R>,
) -> Result<R> {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut file = match path {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let started = std::time::SystemTime::now();
    let mut log = match file.as_mut() {
        Some(f) => Some(
            IntervalLogWriterBuilder::new()
                .add_comment(&format!("spate run {job} (latency in ns)"))
                .with_start_time(started)
                .with_base_time(started)
                .with_max_value_divisor(1e6)
                .begin_log_with(f, &mut serializer)
                .context("writing the interval log")?,
        ),
        None => None,
    };
    let mut logged: Option<hdrhistogram::Histogram<u64>> = None;
    let mut logged_at = Duration::ZERO;
    let mut write_interval = |latency: &hdrhistogram::Histogram<u64>, at: Duration| {
        let Some(log) = log.as_mut() else { return };
        let mut interval = latency.clone();
        if let Some(prev) = &logged {
            if interval.subtract(prev).is_err() {
                return;
            }
        }
        let tag = Tag::new("latency");
        if let Err(e) = log.write_histogram(&interval, logged_at, at.saturating_sub(logged_at), tag)
        {
            tracing::warn!(error = %e, "could not write the interval log");
        }
        logged = Some(latency.clone());
        logged_at = at;
    };
    let r = body(&mut write_interval)?;
    drop(log);
    if let (Some(mut f), Some(p)) = (file, path) {
        use std::io::Write as _;
        f.flush()
            .with_context(|| format!("writing {}", p.display()))?;
        eprintln!("spate: latency interval log in {}", p.display());
    }
    Ok(r)
}

fn run(a: JobArgs, json: Option<PathBuf>, hlog: Option<PathBuf>) -> Result<bool> {
    let (config, graph) = prepare(&a)?;
    spate_dataplane::clock::init();
    let mut cluster = MiniCluster::start(&config)?;
    let cores: Vec<String> = cluster
        .slot_cores()
        .iter()
        .map(|c| c.map_or("unpinned".into(), |c| c.to_string()))
        .collect();
    let parallelism = graph
        .vertices
        .iter()
        .map(|v| v.parallelism)
        .max()
        .unwrap_or(1);
    eprintln!(
        "spate: running '{}' at parallelism {} on a MiniCluster of {} slot(s) (cores {}), idle strategy {}",
        a.job,
        parallelism,
        cores.len(),
        cores.join(", "),
        config.idle
    );
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    ctrlc::set_handler(move || c2.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    let tty = std::io::stderr().is_terminal();
    let mut last = (Duration::ZERO, 0u64);
    let job_name = a.job.clone();
    let result = with_interval_log(hlog.as_deref(), &job_name, |write_interval| {
        let mut on_progress = |p: &Progress| {
            write_interval(&p.latency, p.elapsed);
            let dt = (p.elapsed - last.0).as_secs_f64().max(1e-9);
            let r = (p.records - last.1) as f64 / dt;
            last = (p.elapsed, p.records);
            let p99 = if p.latency.is_empty() {
                "-".into()
            } else {
                us(p.latency.value_at_quantile(0.99))
            };
            let line = format!(
                "[{:6.1}s] events {:>10}  rate {:>8}/s  p99 {}",
                p.elapsed.as_secs_f64(),
                p.records,
                rate(r),
                p99
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        };
        let result = cluster.execute(&graph, &cancel, Duration::from_secs(1), &mut on_progress)?;
        if tty {
            eprintln!();
        }
        write_interval(&result.progress.latency, result.progress.elapsed);
        Ok(result)
    })?;
    let p = &result.progress;
    let secs = p.elapsed.as_secs_f64();
    // W2's sink sees bars; its throughput is the trades that made them (all of them,
    // once a bounded run finished).
    let bars = (a.job == "bars").then_some(p.records);
    let events = match bars {
        Some(_) if result.status == crate::minicluster::JobStatus::Finished && a.events > 0 => {
            a.events
        }
        _ => p.records,
    };
    let eps = events as f64 / secs.max(1e-9);
    let h = &p.latency;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "job          {}", a.job)?;
    writeln!(out, "status       {:?}", result.status)?;
    if let Some(sp) = &result.savepoint {
        writeln!(
            out,
            "savepoint    {} (resume with: spate run -s {} ...)",
            sp.display(),
            sp.display()
        )?;
    }
    writeln!(out, "parallelism  {parallelism}")?;
    if result.restarts > 0 {
        writeln!(out, "restarts     {}", result.restarts)?;
        for (i, e) in result.exceptions.iter().enumerate() {
            writeln!(out, "failure {}    {e}", i + 1)?;
        }
    }
    let c = &result.checkpoints;
    if let Some(id) = c.restored_id {
        writeln!(out, "restored     from checkpoint {id}")?;
    }
    if c.triggered > 0 {
        writeln!(
            out,
            "checkpoints  {} completed, {} failed, {} aborted",
            c.completed, c.failed, c.aborted
        )?;
        if c.completed > 0 {
            writeln!(
                out,
                "last checkpoint  #{}: {} ms, {} bytes, alignment {}, sync {}, async {}, {}",
                c.last_id,
                c.last_duration_ms,
                c.last_size,
                us(c.last_alignment_ns),
                us(c.last_sync_ns),
                us(c.last_async_ns),
                if c.last_path.is_empty() {
                    "in memory (set state.checkpoints.dir to keep it)"
                } else {
                    c.last_path.as_str()
                }
            )?;
        }
    }
    writeln!(out, "events       {events}")?;
    if let Some(b) = bars {
        writeln!(out, "bars         {b}")?;
    }
    writeln!(out, "seconds      {secs:.3}")?;
    writeln!(out, "events/s     {}", rate(eps))?;
    if !h.is_empty() {
        if a.job == "bars" {
            writeln!(
                out,
                "latency of   every bar, firing latency: from the window's end plus the disorder bound (when the watermark could first pass it) to the sink"
            )?;
        } else {
            let sample = match spec(&a).latency_sample() {
                1 => "every record".to_string(),
                n => format!("1 in {n} records"),
            };
            writeln!(
                out,
                "latency of   {sample}, from the event timestamp to the sink"
            )?;
        }
        writeln!(
            out,
            "latency      p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            us(q(0.5)),
            us(q(0.99)),
            us(q(0.999)),
            us(q(0.9999)),
            us(h.max())
        )?;
    }
    if !result.from_source.is_empty() {
        writeln!(
            out,
            "per hop      latency markers (every {:?}): how long after its source emitted one it reached each vertex",
            config.latency_interval
        )?;
        let width = result
            .from_source
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        for (name, m) in &result.from_source {
            writeln!(
                out,
                "  {name:<width$}  p50 {}  p99 {}  p99.9 {}  max {}  ({} markers)",
                us(m.value_at_quantile(0.5)),
                us(m.value_at_quantile(0.99)),
                us(m.value_at_quantile(0.999)),
                us(m.max()),
                m.len()
            )?;
        }
    }
    if !result.operators.is_empty() {
        writeln!(
            out,
            "per operator time per record in each chained operator, by itself (one batch per marker)"
        )?;
        let width = result
            .operators
            .iter()
            .map(|(n, _)| n.chars().count())
            .max()
            .unwrap_or(0);
        for (name, h) in &result.operators {
            writeln!(
                out,
                "  {name:<width$}  p50 {}  p99 {}  max {}  ({} batches)",
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.max()),
                h.len()
            )?;
        }
    }
    if let Some(path) = json {
        let v = serde_json::json!({
            "job": a.job,
            "parallelism": parallelism,
            "events": events,
            "seconds": secs,
            "events_per_s": eps,
            "p50_ns": q(0.5),
            "p99_ns": q(0.99),
            "p999_ns": q(0.999),
            "p9999_ns": q(0.9999),
            "max_ns": if h.is_empty() { 0 } else { h.max() },
            "checkpoints": {
                "completed": c.completed,
                "failed": c.failed,
                "last_duration_ms": c.last_duration_ms,
                "last_size": c.last_size,
                "last_alignment_ns": c.last_alignment_ns,
                "last_sync_ns": c.last_sync_ns,
                "last_async_ns": c.last_async_ns,
            },
        });
        std::fs::write(&path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match result.status {
        JobStatus::Failed(m) => {
            eprintln!("spate: job failed: {m}");
            Ok(false)
        }
        _ => Ok(true),
    }
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    ctrlc::set_handler(move || s2.store(true, Ordering::Relaxed))
        .context("installing the signal handler")?;
    Ok(stop)
}

fn jobmanager(conf: &ConfArgs) -> Result<bool> {
    let config = conf.load()?;
    let stop = stop_flag()?;
    let mut jm = crate::cluster::jobmanager::JobManager::start(&config)?;
    eprintln!(
        "spate: JobManager listening for TaskManagers on {} and for REST on http://{}",
        jm.rpc_addr().map_or("?".into(), |a| a.to_string()),
        jm.rest_addr()
    );
    jm.run(&stop);
    Ok(true)
}

fn local(conf: &ConfArgs) -> Result<bool> {
    let mut config = conf.load()?;
    let stop = stop_flag()?;
    let mut jm = crate::cluster::jobmanager::JobManager::start(&config)?;
    if let Some(rpc) = jm.rpc_addr() {
        config.jobmanager_port = rpc.port();
    }
    eprintln!(
        "spate: local cluster with {} slot(s); REST on http://{}",
        config.slots,
        jm.rest_addr()
    );
    let s2 = stop.clone();
    let jm_thread = std::thread::Builder::new()
        .name("jobmanager".into())
        .spawn(move || jm.run(&s2))?;
    let mut tm = crate::cluster::taskmanager::TaskManager::start(&config)?;
    if let Err(why) = tm.run(&stop) {
        fatal(&why);
    }
    let _ = jm_thread.join();
    Ok(true)
}

fn taskmanager(conf: &ConfArgs) -> Result<bool> {
    let config = conf.load()?;
    let stop = stop_flag()?;
    let mut tm = crate::cluster::taskmanager::TaskManager::start(&config)?;
    eprintln!(
        "spate: TaskManager {} with {} slot(s), data connections on {}, registering with {}:{}",
        tm.id(),
        config.slots,
        tm.data_address(),
        config.jobmanager_address,
        config.jobmanager_port
    );
    if let Some(addr) = tm.metrics_addr() {
        eprintln!("spate: metrics at http://{addr}/metrics");
    }
    if let Err(why) = tm.run(&stop) {
        fatal(&why);
    }
    Ok(true)
}

/// A fatal TaskManager error: exits at once, without waiting for slot threads that
/// may never return (their tasks are what is stuck), as Flink's TaskManager does.
fn fatal(why: &str) -> ! {
    eprintln!("spate: fatal: {why}");
    std::process::exit(70)
}

/// Parses the command line and runs the command; exits the process with its code.
pub fn main() {
    crate::sql::nexmark::register_functions();
    let cli = Cli::parse();
    // Daemons log their lifecycle; a client run logs only what went wrong.
    let default_level = match cli.cmd {
        Cmd::Jobmanager { .. } | Cmd::Taskmanager { .. } | Cmd::Local { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let r = match cli.cmd {
        Cmd::Jobmanager { conf } => jobmanager(&conf),
        Cmd::Taskmanager { conf } => taskmanager(&conf),
        Cmd::Local { conf } => local(&conf),
        Cmd::Run {
            job,
            json,
            jobmanager: Some(m),
            detached,
            hlog,
        } => job.resolve().and_then(|job| {
            if json.is_some() || (detached && hlog.is_some()) {
                eprintln!("spate: error: --json applies to local runs (a cluster job's figures are on its REST API), and --hlog to runs the client follows (not -d)");
                std::process::exit(2);
            }
            // -D travels with the job, as with Flink's `run -D`: the JobManager applies
            // it over its own configuration for this job alone; so do the job-level
            // keys of --config-dir's config.yaml, under the -D ones.
            let mut spec = spec(&job);
            let from_dir = match &job.config_dir {
                Some(d) => Config::load(d, &[]).map(|c| {
                    client::use_secret_of(&c);
                    c.job_settings()
                }),
                None => {
                    client::use_secret_of(&Config::default());
                    Ok(Vec::new())
                }
            };
            from_dir
                .map_err(anyhow::Error::from)
                .and_then(|mut settings| {
                    settings.extend(job.defines.iter().cloned());
                    spec.config = settings;
                    client::run(&m, &spec, detached, hlog.as_deref())
                })
        }),
        Cmd::Run {
            job, json, hlog, ..
        } => job.resolve().and_then(|job| run(job, json, hlog)),
        Cmd::Sql(a) => crate::sql_client::main(a),
        Cmd::List { conf, jobmanager } => conf
            .load()
            .and_then(|c| {
                client::use_secret_of(&c);
                client::list(&client::address(jobmanager, &c)?)
            }),
        Cmd::Cancel {
            conf,
            jobmanager,
            id,
        } => conf
            .load()
            .and_then(|c| {
                client::use_secret_of(&c);
                client::cancel(&client::address(jobmanager, &c)?, &id)
            }),
        Cmd::Savepoint {
            conf,
            jobmanager,
            id,
            target,
        } => conf
            .load()
            .and_then(|c| {
                client::use_secret_of(&c);
                client::savepoint(&client::address(jobmanager, &c)?, &id, target, false)
            }),
        Cmd::Stop {
            conf,
            jobmanager,
            savepoint_path,
            id,
        } => conf.load().and_then(|c| {
            client::use_secret_of(&c);
            client::savepoint(&client::address(jobmanager, &c)?, &id, savepoint_path, true)
        }),
        Cmd::Info { job } => job
            .resolve()
            .and_then(|job| prepare(&job))
            .map(|(_, g)| {
                print!("{}", g.describe());
                true
            }),
    };
    match r {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("spate: error: {e:#}");
            std::process::exit(2);
        }
    }
}
