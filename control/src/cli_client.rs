//! The CLI's side of a cluster: submit, list, cancel, savepoint and stop jobs through
//! the JobManager's REST API.

use crate::config::Config;
use crate::jobs::JobSpec;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::io::IsTerminal;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// `-m`; or with `high-availability.type: etcd`, the leader's REST address as etcd
/// names it; or the configuration's `jobmanager.rpc.address:rest.port`.
pub(crate) fn address(m: Option<String>, c: &Config) -> Result<String> {
    if let Some(m) = m {
        return Ok(m);
    }
    if c.ha.etcd {
        return crate::ha::current_leader(&c.ha)
            .map(|l| l.rest)
            .map_err(|e| anyhow!("cannot find the leading JobManager: {e}"));
    }
    Ok(format!("{}:{}", c.jobmanager_address, c.rest_port))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// `security.rest.secret` of the configuration the CLI loaded (or `SPATE_REST_SECRET`).
static REST_SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sends `security.rest.secret` (from `c`, else the `SPATE_REST_SECRET` variable) with
/// every request of this process.
pub(crate) fn use_secret_of(c: &Config) {
    let from_env = std::env::var("SPATE_REST_SECRET").unwrap_or_default();
    let s = if c.rest_secret.is_set() {
        String::from_utf8_lossy(&c.rest_secret.0).into_owned()
    } else {
        from_env
    };
    if !s.is_empty() {
        let _ = REST_SECRET.set(s);
    }
}

/// Calls the API; a 4xx/5xx becomes an error carrying the server's message.
fn call(req: ureq::Request, body: Option<Value>) -> Result<Value> {
    let url = req.url().to_string();
    let req = match REST_SECRET.get() {
        Some(s) => req.set("Authorization", &format!("Bearer {s}")),
        None => req,
    };
    let r = match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => Ok(resp.into_json().unwrap_or(Value::Null)),
        Err(ureq::Error::Status(code, resp)) => {
            let v: Value = resp.into_json().unwrap_or(Value::Null);
            let msg = v["errors"][0].as_str().unwrap_or("no message").to_string();
            bail!("the JobManager answered {code}: {msg}")
        }
        Err(e) => Err(anyhow!("cannot reach the JobManager at {url}: {e}")),
    }
}

/// Submits `spec`; without `detached`, follows the job to its end, printing the rows
/// its `SELECT`s produce as they come.
pub(crate) fn run(
    m: &str,
    spec: &JobSpec,
    detached: bool,
    hlog: Option<&std::path::Path>,
) -> Result<bool> {
    crate::cli::with_interval_log(hlog.filter(|_| !detached), &spec.job, |write| {
        run_following(m, spec, detached, &mut |at, h| write(h, at))
    })
    .map(|(ok, _)| ok)
}

/// The job's end-to-end latency as the JobManager merged it (`None`: none yet, or a
/// histogram that is not one).
fn latency_histogram(m: &str, id: &str) -> Option<hdrhistogram::Histogram<u64>> {
    use base64::Engine as _;
    let v = call(
        agent().get(&format!("http://{m}/jobs/{id}/latency-histogram")),
        None,
    )
    .ok()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["histogram"].as_str()?)
        .ok()?;
    crate::cluster::decode_latency(&bytes).ok()
}

/// Prints the job's `SELECT` rows from number `*next` on; true when it has them all
/// (as far as the JobManager holds them now).
fn print_results(m: &str, id: &str, next: &mut u64, rows: &mut u64) -> Result<bool> {
    let v = call(
        agent().get(&format!("http://{m}/jobs/{id}/results?from={next}")),
        None,
    )?;
    let from = v["from"].as_u64().unwrap_or(*next);
    if from > *next {
        eprintln!(
            "spate: {} result rows were dropped (the JobManager holds the last {})",
            from - *next,
            crate::sql::results::HELD
        );
    }
    let mut out = std::io::stdout().lock();
    if let Some(lines) = v["lines"].as_array() {
        for l in lines {
            let _ = writeln!(out, "{}", l.as_str().unwrap_or_default());
            *rows += 1;
        }
    }
    let _ = out.flush();
    *next = v["next"].as_u64().unwrap_or(from);
    Ok(*next >= v["end"].as_u64().unwrap_or(0))
}

/// As [`run`]; also the number of result rows printed.
pub(crate) fn run_counting(m: &str, spec: &JobSpec, detached: bool) -> Result<(bool, u64)> {
    run_following(m, spec, detached, &mut |_, _| {})
}

/// [`run_counting`], handing `latency` the job's cumulative latency histogram (and the
/// time since submission) once a second and at the end.
fn run_following(
    m: &str,
    spec: &JobSpec,
    detached: bool,
    on_latency: &mut dyn FnMut(Duration, &hdrhistogram::Histogram<u64>),
) -> Result<(bool, u64)> {
    let body = serde_json::to_value(spec)?;
    let v = call(agent().post(&format!("http://{m}/jobs")), Some(body))?;
    let id = v["jobid"]
        .as_str()
        .ok_or_else(|| anyhow!("the JobManager returned no job id"))?
        .to_string();
    println!("Job has been submitted with JobID {id}");
    if detached {
        return Ok((true, 0));
    }
    let (mut next_row, mut rows) = (0u64, 0u64);
    let mut last = String::new();
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut next_progress = started + PROGRESS_EVERY;
    let mut prev = (started, 0u64);
    loop {
        let v = call(agent().get(&format!("http://{m}/jobs/{id}")), None)?;
        let state = v["state"].as_str().unwrap_or("UNKNOWN").to_string();
        if state != last {
            if tty && !last.is_empty() {
                eprintln!();
            }
            eprintln!("job {id}: {state}");
            last = state.clone();
        }
        let ended = matches!(state.as_str(), "FINISHED" | "CANCELED" | "FAILED");
        // The rows so far; once it ended, all of them.
        while !print_results(m, &id, &mut next_row, &mut rows)? && ended {}
        if state == "RUNNING" && Instant::now() >= next_progress {
            next_progress = Instant::now() + PROGRESS_EVERY;
            if let Some(h) = latency_histogram(m, &id) {
                on_latency(started.elapsed(), &h);
            }
            let events = source_records(&v);
            let now = Instant::now();
            let r = (events - prev.1.min(events)) as f64
                / now.duration_since(prev.0).as_secs_f64().max(1e-9);
            prev = (now, events);
            let p99 = latency(m, &id)
                .filter(|l| l.count > 0)
                .map_or("-".into(), |l| crate::cli::us(l.p99 as u64));
            let line = format!(
                "[{:6.1}s] events {events:>10}  rate {:>8}/s  p99 {p99}",
                started.elapsed().as_secs_f64(),
                crate::cli::rate(r),
            );
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
        }
        if ended {
            if tty {
                eprintln!();
            }
            if let Some(h) = latency_histogram(m, &id) {
                on_latency(started.elapsed(), &h);
            }
            print_summary(m, &id, &v);
            print_checkpoints(m, &id);
        }
        match state.as_str() {
            "FINISHED" | "CANCELED" => return Ok((true, rows)),
            "FAILED" => {
                let e = call(
                    agent().get(&format!("http://{m}/jobs/{id}/exceptions")),
                    None,
                )?;
                eprintln!(
                    "spate: job failed: {}",
                    e["root-exception"]
                        .as_str()
                        .unwrap_or("no exception recorded")
                );
                return Ok((false, rows));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// How often a followed job's progress is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Records the job's sources wrote (its vertices with no inputs in the plan).
fn source_records(job: &Value) -> u64 {
    let sources: Vec<&str> = job["plan"]["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["inputs"].as_array().is_none_or(Vec::is_empty))
                .filter_map(|n| n["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    job["vertices"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["id"].as_str().is_some_and(|id| sources.contains(&id)))
                .filter_map(|v| v["metrics"]["write-records"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// A job's end-to-end latency as its metrics give it (ns).
struct Latency {
    count: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    p9999: f64,
    max: f64,
}

fn latency(m: &str, id: &str) -> Option<Latency> {
    let v = call(
        agent().get(&format!(
            "http://{m}/jobs/{id}/metrics?get=latency_count,latency_p50,latency_p99,latency_p999,latency_p9999,latency_max"
        )),
        None,
    )
    .ok()?;
    let get = |name: &str| -> f64 {
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == name))
            .and_then(|x| x["value"].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0)
    };
    Some(Latency {
        count: get("latency_count") as u64,
        p50: get("latency_p50"),
        p99: get("latency_p99"),
        p999: get("latency_p999"),
        p9999: get("latency_p9999"),
        max: get("latency_max"),
    })
}

/// The summary of a job that ended: events, time, rate and the latency its sinks
/// measured, as `spate run` prints for a MiniCluster job.
fn print_summary(m: &str, id: &str, job: &Value) {
    let events = source_records(job);
    let secs = job["duration"].as_u64().unwrap_or(0) as f64 / 1e3;
    println!("events       {events}");
    println!("seconds      {secs:.3}");
    println!(
        "events/s     {}",
        crate::cli::rate(events as f64 / secs.max(1e-9))
    );
    if let Some(l) = latency(m, id).filter(|l| l.count > 0) {
        let us = |x: f64| crate::cli::us(x as u64);
        println!(
            "latency of   {} sampled records, from the event timestamp to the sink",
            l.count
        );
        println!(
            "latency      p50 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            us(l.p50),
            us(l.p99),
            us(l.p999),
            us(l.p9999),
            us(l.max)
        );
    }
}

/// A line on the job's checkpoints, when it took any.
fn print_checkpoints(m: &str, id: &str) {
    let Ok(c) = call(
        agent().get(&format!("http://{m}/jobs/{id}/checkpoints")),
        None,
    ) else {
        return;
    };
    let n = &c["counts"];
    if n["total"].as_u64().unwrap_or(0) == 0 && n["restored"].as_u64().unwrap_or(0) == 0 {
        return;
    }
    let mut line = format!(
        "checkpoints: {} completed, {} failed or aborted",
        n["completed"], n["failed"]
    );
    let last = &c["latest"]["completed"];
    if !last.is_null() {
        line += &format!(
            "; last {} ({} bytes, {} ms)",
            last["id"], last["state_size"], last["end_to_end_duration"]
        );
    }
    let restored = &c["latest"]["restored"];
    if !restored.is_null() {
        line += &format!("; restored from {}", restored["id"]);
    }
    eprintln!("{line}");
}

/// Prints the cluster's jobs.
pub(crate) fn list(m: &str) -> Result<bool> {
    let v = call(agent().get(&format!("http://{m}/jobs/overview")), None)?;
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("No jobs.");
    }
    for j in jobs {
        println!(
            "{} : {} ({}) {} ms",
            j["jid"].as_str().unwrap_or("?"),
            j["name"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["duration"]
        );
    }
    Ok(true)
}

/// Cancels a job.
pub(crate) fn cancel(m: &str, id: &str) -> Result<bool> {
    call(
        agent().request("PATCH", &format!("http://{m}/jobs/{id}?mode=cancel")),
        None,
    )?;
    println!("Cancelled job {id}.");
    Ok(true)
}

/// Takes a savepoint of job `id` (under `target`, made absolute; else the cluster's
/// `state.savepoints.dir`) and waits for it; with `stop`, the job then ends FINISHED
/// (Flink's `stop --savepointPath`), and this waits for that too.
pub(crate) fn savepoint(
    m: &str,
    id: &str,
    target: Option<std::path::PathBuf>,
    stop: bool,
) -> Result<bool> {
    let target = match target {
        Some(t) if !crate::storage::is_absolute(&t) => Some(std::env::current_dir()?.join(t)),
        t => t,
    };
    let target = target.map(|t| t.display().to_string());
    let (path, body) = if stop {
        (
            "stop",
            serde_json::json!({ "targetDirectory": target, "drain": false }),
        )
    } else {
        (
            "savepoints",
            serde_json::json!({ "target-directory": target, "cancel-job": false }),
        )
    };
    let v = call(
        agent().post(&format!("http://{m}/jobs/{id}/{path}")),
        Some(body),
    )?;
    let rid = v["request-id"]
        .as_str()
        .ok_or_else(|| anyhow!("the JobManager returned no request id"))?
        .to_string();
    eprintln!(
        "{} job {id}; waiting for the savepoint (request {rid})",
        if stop {
            "Stopping"
        } else {
            "Triggering a savepoint of"
        }
    );
    let started = std::time::Instant::now();
    let location = loop {
        let v = call(
            agent().get(&format!("http://{m}/jobs/{id}/savepoints/{rid}")),
            None,
        )?;
        if v["status"]["id"] == "COMPLETED" {
            let op = &v["operation"];
            if let Some(l) = op["location"].as_str() {
                break l.to_string();
            }
            eprintln!(
                "spate: the savepoint failed: {}",
                op["failure-cause"]["stack-trace"]
                    .as_str()
                    .unwrap_or("no reason given")
            );
            return Ok(false);
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the savepoint did not complete within 10 minutes (request {rid})");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("Savepoint completed. Path: {location}");
    if stop {
        loop {
            let v = call(agent().get(&format!("http://{m}/jobs/{id}")), None)?;
            let state = v["state"].as_str().unwrap_or("UNKNOWN").to_string();
            if matches!(state.as_str(), "FINISHED" | "CANCELED" | "FAILED") {
                println!("Job {id} is {state}.");
                return Ok(state != "FAILED");
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("job {id} did not end after its savepoint ({state})");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(true)
}
