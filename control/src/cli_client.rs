//! The CLI's side of a cluster: submit, list, cancel, savepoint and stop jobs through
//! the JobManager's REST API.

use crate::config::Config;
use crate::jobs::JobSpec;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::time::Duration;

/// `-m`, or the configuration's `jobmanager.rpc.address:rest.port`.
pub(crate) fn address(m: Option<String>, c: &Config) -> String {
    m.unwrap_or_else(|| format!("{}:{}", c.jobmanager_address, c.rest_port))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build()
}

/// Calls the API; a 4xx/5xx becomes an error carrying the server's message.
fn call(req: ureq::Request, body: Option<Value>) -> Result<Value> {
    let url = req.url().to_string();
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

/// Submits `spec`; without `detached`, follows the job to its end.
pub(crate) fn run(m: &str, spec: &JobSpec, detached: bool) -> Result<bool> {
    let body = serde_json::to_value(spec)?;
    let v = call(agent().post(&format!("http://{m}/jobs")), Some(body))?;
    let id = v["jobid"]
        .as_str()
        .ok_or_else(|| anyhow!("the JobManager returned no job id"))?
        .to_string();
    println!("Job has been submitted with JobID {id}");
    if detached {
        return Ok(true);
    }
    let mut last = String::new();
    loop {
        let v = call(agent().get(&format!("http://{m}/jobs/{id}")), None)?;
        let state = v["state"].as_str().unwrap_or("UNKNOWN").to_string();
        if state != last {
            eprintln!("job {id}: {state}");
            last = state.clone();
        }
        if matches!(state.as_str(), "FINISHED" | "CANCELED" | "FAILED") {
            print_checkpoints(m, &id);
        }
        match state.as_str() {
            "FINISHED" | "CANCELED" => return Ok(true),
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
                return Ok(false);
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
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
