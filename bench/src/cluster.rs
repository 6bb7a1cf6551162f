//! `bench cluster`: the control plane's reaction times with the real binaries on
//! loopback — submission to the first record at the sink, and a TaskManager's death to
//! the job RUNNING again, detected by its closed connection (SIGKILL) or by the
//! heartbeat timeout (SIGSTOP).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Settings.
#[derive(Debug, Clone)]
pub struct Params {
    /// Repetitions of each measurement.
    pub reps: usize,
    /// `heartbeat.interval`, ms.
    pub heartbeat_interval_ms: u64,
    /// `heartbeat.timeout`, ms.
    pub heartbeat_timeout_ms: u64,
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spate_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .ok_or_else(|| anyhow!("no directory"))?
        .join("spate");
    if !p.exists() {
        bail!(
            "{} not found: build it with cargo build --release -p spate",
            p.display()
        );
    }
    Ok(p)
}

struct Cluster {
    bin: PathBuf,
    defines: Vec<String>,
    rest: String,
    _jm: Proc,
    tms: Vec<Proc>,
    conf: tempfile_dir::Dir,
}

/// A throwaway configuration directory (empty: defaults plus -D).
mod tempfile_dir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> std::io::Result<Self> {
            let p = std::env::temp_dir().join(format!(
                "spate-bench-cluster-{}-{}",
                std::process::id(),
                super::now_ns()
            ));
            std::fs::create_dir_all(&p)?;
            Ok(Self(p))
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Cluster {
    fn start(p: &Params) -> Result<Self> {
        let bin = spate_binary()?;
        let (rpc, rest) = (free_port()?, free_port()?);
        let defines = vec![
            "jobmanager.rpc.address=127.0.0.1".to_string(),
            format!("jobmanager.rpc.port={rpc}"),
            format!("rest.port={rest}"),
            "taskmanager.numberOfTaskSlots=1".into(),
            "taskmanager.idle-strategy=backoff".into(),
            format!("heartbeat.interval={} ms", p.heartbeat_interval_ms),
            format!("heartbeat.timeout={} ms", p.heartbeat_timeout_ms),
            "restart-strategy.type=fixed-delay".into(),
            "restart-strategy.fixed-delay.attempts=1000".into(),
            "restart-strategy.fixed-delay.delay=0 ms".into(),
            "jobmanager.execution.failover-strategy=full".into(),
        ];
        let conf = tempfile_dir::Dir::new()?;
        let jm = spawn(&bin, "jobmanager", &defines, &conf.0)?;
        let mut c = Self {
            bin,
            defines,
            rest: format!("127.0.0.1:{rest}"),
            _jm: jm,
            tms: Vec::new(),
            conf,
        };
        for _ in 0..3 {
            c.add_taskmanager()?;
        }
        c.wait_taskmanagers(3)?;
        Ok(c)
    }

    fn add_taskmanager(&mut self) -> Result<()> {
        self.tms.push(spawn(
            &self.bin,
            "taskmanager",
            &self.defines,
            &self.conf.0,
        )?);
        Ok(())
    }

    fn get(&self, path: &str) -> Result<Value> {
        Ok(ureq::get(&format!("http://{}{path}", self.rest))
            .timeout(Duration::from_secs(5))
            .call()?
            .into_json()?)
    }

    fn wait_taskmanagers(&self, n: usize) -> Result<()> {
        wait(Duration::from_secs(20), "TaskManagers to register", || {
            Ok(self
                .get("/taskmanagers")
                .ok()
                .and_then(|v| v["taskmanagers"].as_array().map(Vec::len))
                == Some(n))
        })
    }

    fn submit(&self, body: Value) -> Result<String> {
        let v: Value = ureq::post(&format!("http://{}/jobs", self.rest))
            .send_json(body)?
            .into_json()?;
        v["jobid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no job id"))
    }

    fn state(&self, id: &str) -> Result<(String, u64)> {
        let v = self.get(&format!("/jobs/{id}"))?;
        Ok((
            v["state"].as_str().unwrap_or("").to_string(),
            v["restarts"].as_u64().unwrap_or(0),
        ))
    }

    fn cancel(&self, id: &str) -> Result<()> {
        ureq::request(
            "PATCH",
            &format!("http://{}/jobs/{id}?mode=cancel", self.rest),
        )
        .call()?;
        wait(Duration::from_secs(20), "the job to cancel", || {
            Ok(self.state(id)?.0 == "CANCELED")
        })
    }

    /// The pid of a TaskManager running one of the job's subtasks.
    fn hosting_pid(&self, id: &str) -> Result<u32> {
        let v = self.get(&format!("/jobs/{id}"))?;
        let tm = v["vertices"][0]["subtasks"][0]["taskmanager-id"]
            .as_str()
            .ok_or_else(|| anyhow!("no subtask placement"))?
            .to_string();
        // Ids are HOST:PID-SUFFIX.
        let pid = tm
            .rsplit_once(':')
            .and_then(|(_, r)| r.split_once('-'))
            .and_then(|(p, _)| p.parse().ok())
            .ok_or_else(|| anyhow!("cannot read a pid from {tm}"))?;
        Ok(pid)
    }

    fn forget(&mut self, pid: u32) {
        self.tms.retain(|p| p.0.id() != pid);
    }
}

fn spawn(bin: &Path, role: &str, defines: &[String], conf: &Path) -> Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg(role).arg("--config-dir").arg(conf);
    for d in defines {
        cmd.arg("-D").arg(d);
    }
    let child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Proc(child))
}

fn wait(timeout: Duration, what: &str, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    while !ok().unwrap_or(false) {
        if start.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Ok(())
}

fn signal(pid: u32, sig: i32) -> Result<()> {
    let pid = libc::pid_t::try_from(pid)?;
    #[allow(unsafe_code)]
    // SAFETY: kill only sends a signal to a process we started; no memory is involved.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc != 0 {
        bail!("kill failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One measurement's figures, ms.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// What was measured.
    pub measurement: String,
    /// Each repetition, ms.
    pub samples_ms: Vec<f64>,
}

/// Runs the measurements.
pub fn run(p: &Params) -> Result<Vec<Row>> {
    let mut c = Cluster::start(p)?;
    let mut first = Vec::new();
    let mut restart_closed = Vec::new();
    let mut detect_closed = Vec::new();
    let mut restart_hb = Vec::new();
    let mut detect_hb = Vec::new();
    let out = c.conf.0.join("out");
    for rep in 0..p.reps {
        // Submission to the first record at the sink: the exactly-once file sink opens
        // its first (hidden, in-progress) part when its first records arrive.
        let path = out.with_extension(rep.to_string());
        let t0 = Instant::now();
        let id = c.submit(json!({
            "job": "vwap", "parallelism": 2, "events": 0, "rate": 100000.0,
            "output": path.display().to_string(),
        }))?;
        wait(Duration::from_secs(20), "the first record", || {
            Ok(std::fs::read_dir(&path).is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with(".part-") || n.starts_with("part-")
                    })
                })
            }))
        })?;
        first.push(ms(t0.elapsed()));
        wait(Duration::from_secs(20), "RUNNING", || {
            Ok(c.state(&id)?.0 == "RUNNING")
        })?;

        // SIGKILL a hosting TaskManager: the closed connection tells at once.
        for (sig, detect, restart) in [
            (libc::SIGKILL, &mut detect_closed, &mut restart_closed),
            (libc::SIGSTOP, &mut detect_hb, &mut restart_hb),
        ] {
            let (_, restarts) = c.state(&id)?;
            let pid = c.hosting_pid(&id)?;
            let t0 = Instant::now();
            signal(pid, sig)?;
            // Detected: the job left RUNNING, or already restarted (a restart without
            // delay can go RESTARTING → RUNNING between two polls of a loaded host).
            wait(Duration::from_secs(30), "the failure", || {
                let (s, r) = c.state(&id)?;
                Ok(s != "RUNNING" || r > restarts)
            })?;
            detect.push(ms(t0.elapsed()));
            wait(Duration::from_secs(30), "RUNNING again", || {
                let (s, r) = c.state(&id)?;
                Ok(s == "RUNNING" && r > restarts)
            })?;
            restart.push(ms(t0.elapsed()));
            if sig == libc::SIGSTOP {
                signal(pid, libc::SIGKILL)?;
            }
            c.forget(pid);
            c.add_taskmanager()?;
            c.wait_taskmanagers(3)?;
        }
        c.cancel(&id)?;
        eprintln!("rep {}/{}: done", rep + 1, p.reps);
    }
    Ok(vec![
        Row {
            measurement: "submit_to_first_record".into(),
            samples_ms: first,
        },
        Row {
            measurement: "sigkill_to_detected".into(),
            samples_ms: detect_closed,
        },
        Row {
            measurement: "sigkill_to_running".into(),
            samples_ms: restart_closed,
        },
        Row {
            measurement: "sigstop_to_detected".into(),
            samples_ms: detect_hb,
        },
        Row {
            measurement: "sigstop_to_running".into(),
            samples_ms: restart_hb,
        },
    ])
}

/// Prints the rows.
pub fn print(rows: &[Row], p: &Params) {
    println!(
        "heartbeat.interval {} ms, heartbeat.timeout {} ms, fixed-delay restarts with 0 ms delay",
        p.heartbeat_interval_ms, p.heartbeat_timeout_ms
    );
    println!(
        "{:<26} {:>9} {:>9} {:>9}",
        "measurement", "min ms", "median", "max ms"
    );
    for r in rows {
        let mut v = r.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        println!(
            "{:<26} {:>9.1} {:>9.1} {:>9.1}",
            r.measurement,
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
}
