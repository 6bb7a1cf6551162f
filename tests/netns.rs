//! A cluster across network namespaces ("hosts" on a private subnet this test creates),
//! set up and torn down by scripts/netns-cluster.sh: TaskManagers on two hosts register
//! with the JobManager on a third over the veth network, and W1 at parallelism 2 runs
//! with one slot on each: its key exchange crosses between the hosts over the network
//! agents' connection, and its results equal the single-threaded computation.
//! Skipped, with a message, where it cannot run (not root, no iproute2).
#![allow(clippy::unwrap_used, clippy::panic)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-cluster.sh")
}

struct Hosts(String);

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.0])
            .status();
    }
}

fn can_run() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    root && ip
}

fn net_of(prefix: &str) -> u32 {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{prefix}' | cksum | cut -d' ' -f1"))
        .output()
        .unwrap();
    let sum: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (sum % 200 + 20) as u32
}

fn get(addr: &str, path: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    serde_json::from_str(r.split_once("\r\n\r\n")?.1).ok()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn w1_across_two_hosts_equals_the_single_threaded_computation() {
    if !can_run() {
        eprintln!("skipped: needs root and iproute2 for network namespaces");
        return;
    }
    let prefix = format!("sp{}h", std::process::id() % 100_000);
    let hosts = Hosts(prefix.clone());
    let st = Command::new("bash")
        .arg(script())
        .args(["up", "3", &prefix])
        .status()
        .unwrap();
    assert!(st.success());
    let net = net_of(&prefix);
    let st = Command::new("bash")
        .arg(script())
        .args([
            "start",
            env!("CARGO_BIN_EXE_spate"),
            &prefix,
            "-D",
            "taskmanager.numberOfTaskSlots=1",
            "-D",
            "taskmanager.idle-strategy=park",
            "-D",
            "heartbeat.interval=100 ms",
            "-D",
            "heartbeat.timeout=1 s",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let rest = format!("10.77.{net}.1:8081");
    wait_for("TaskManagers on two hosts", Duration::from_secs(20), || {
        get(&rest, "/taskmanagers").and_then(|v| v["taskmanagers"].as_array().map(Vec::len))
            == Some(2)
    });
    let tms = get(&rest, "/taskmanagers").unwrap();
    let mut ids: Vec<String> = tms["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert!(ids[0].starts_with(&format!("10.77.{net}.2:")), "{ids:?}");
    assert!(ids[1].starts_with(&format!("10.77.{net}.3:")), "{ids:?}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vwap");
    let events = 200_000u64;
    let o = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "run",
            "-m",
            &rest,
            "-p",
            "2",
            "--events",
            &events.to_string(),
        ])
        .args(["--output", out.to_str().unwrap(), "vwap"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let jobs = get(&rest, "/jobs/overview").unwrap();
    assert_eq!(jobs["jobs"][0]["state"], "FINISHED", "{jobs}");
    // Results per symbol, in order, equal the plain computation.
    let got = spate::jobs::read_vwap_output(&out).unwrap();
    assert_eq!(got, spate::jobs::vwap_reference(42, events, 2));
    // Both TaskManagers sent frames over their one connection, on io_uring.
    wait_for("network counters", Duration::from_secs(5), || {
        let tms = get(&rest, "/taskmanagers").unwrap();
        tms["taskmanagers"].as_array().unwrap().iter().all(|t| {
            let n = &t["network"];
            n["connections"] == 1
                && n["framesOut"].as_u64().unwrap() > 0
                && n["transport"] == "io_uring"
                && n["fallbacks"] == 0
                && n["failures"] == 0
        })
    });
    drop(hosts);
    let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&left.stdout).contains(&prefix));
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(addr: &str, path: &str, body: &str) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    serde_json::from_str(r.split_once("\r\n\r\n")?.1).ok()
}

/// The cluster scripts over ssh, with high availability: three namespace hosts each
/// run sshd (a key of this test's own); etcd runs on the first. `start-cluster.sh`
/// reads `conf/masters` (a JobManager on each of the first two hosts) and
/// `conf/workers` (a TaskManager on the third) and starts them over ssh, each with its
/// log and pid file on its host. W1 runs with checkpoints into the exactly-once file
/// sink; the leading JobManager is SIGKILLed; the standby takes over through etcd and
/// the job finishes exactly once; `stop-cluster.sh` stops what is left over ssh.
#[test]
fn cluster_scripts_over_ssh_with_a_standby_jobmanager_that_takes_over() {
    if !can_run() {
        eprintln!("skipped: needs root and iproute2 for network namespaces");
        return;
    }
    let (sshd, etcd) = (
        std::path::Path::new("/usr/sbin/sshd"),
        Command::new("etcd").arg("--version").output(),
    );
    assert!(
        sshd.exists() && etcd.is_ok(),
        "needs sshd (openssh-server) and etcd (etcd-server)"
    );
    let prefix = format!("ss{}h", std::process::id() % 100_000);
    let hosts = Hosts(prefix.clone());
    let st = Command::new("bash")
        .arg(script())
        .args(["up", "3", &prefix])
        .status()
        .unwrap();
    assert!(st.success());
    let net = net_of(&prefix);
    let addr = |i: usize| format!("10.77.{net}.{}", i + 1);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |name: &str| {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(name))
            .status()
            .unwrap();
        assert!(st.success());
    };
    keygen("id");
    keygen("hostkey");
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    // sshd on each host; SetEnv gives each host its own pid and log directories (real
    // hosts have their own /tmp).
    let mut daemons = Vec::new();
    for i in 0..3 {
        let cfg = d.join(format!("sshd-{i}.conf"));
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress {}\nPort 22\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                 SetEnv SPATE_PID_DIR={} SPATE_LOG_DIR={}\n",
                addr(i),
                d.join("hostkey").display(),
                d.join(format!("sshd-{i}.pid")).display(),
                d.join("authorized_keys").display(),
                d.join(format!("run-{i}")).display(),
                d.join(format!("log-{i}")).display(),
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{prefix}{i}"),
                "/usr/sbin/sshd",
                "-D",
                "-e",
                "-f",
            ])
            .arg(&cfg)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        daemons.push(Child(child));
    }
    let ssh_opts = format!(
        "-i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=5",
        d.join("id").display()
    );
    for i in 0..3 {
        wait_for("sshd on every host", Duration::from_secs(20), || {
            Command::new("ssh")
                .args(ssh_opts.split(' '))
                .arg(format!("root@{}", addr(i)))
                .arg("true")
                .status()
                .is_ok_and(|s| s.success())
        });
    }
    // etcd on the first host.
    let etcd_url = format!("http://{}:2379", addr(0));
    let etcd = Child(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("{prefix}0"),
                "etcd",
                "--name",
                "e",
            ])
            .arg("--data-dir")
            .arg(d.join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "e=http://127.0.0.1:2380",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let etcd_addr = format!("{}:2379", addr(0));
    wait_for("etcd", Duration::from_secs(20), || {
        post(&etcd_addr, "/v3/kv/range", r#"{"key":"AA=="}"#).is_some()
    });
    let leader = || -> Option<String> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD;
        let body = format!(r#"{{"key":"{}"}}"#, b.encode("/spate/ssh-test/leader"));
        let v = post(&etcd_addr, "/v3/kv/range", &body)?;
        let value = b.decode(v["kvs"][0]["value"].as_str()?).ok()?;
        let rec: Value = serde_json::from_slice(&value).ok()?;
        Some(rec["rest"].as_str()?.to_string())
    };
    // The cluster's configuration directory.
    let conf = d.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("config.yaml"),
        format!(
            "jobmanager.rpc.port: 6123\nrest.port: 8081\n\
             taskmanager.numberOfTaskSlots: 2\ntaskmanager.idle-strategy: park\n\
             heartbeat.interval: 100 ms\nheartbeat.timeout: 1 s\n\
             restart-strategy.type: fixed-delay\nrestart-strategy.fixed-delay.attempts: 20\n\
             restart-strategy.fixed-delay.delay: 100 ms\n\
             execution.checkpointing.interval: 200 ms\nstate.checkpoints.dir: {}\n\
             high-availability.type: etcd\nhigh-availability.etcd.endpoints: {etcd_addr}\n\
             high-availability.cluster-id: ssh-test\nhigh-availability.storageDir: {}\n\
             high-availability.etcd.lease-duration: 3 s\n",
            d.join("checkpoints").display(),
            d.join("ha").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("masters"),
        format!("{}:8081\n{}:8081\n", addr(0), addr(1)),
    )
    .unwrap();
    std::fs::write(conf.join("workers"), format!("{}\n", addr(2))).unwrap();
    let cluster_script = |name: &str| {
        let o = Command::new("bash")
            .arg(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../scripts")
                    .join(name),
            )
            .env("SPATE_SSH_OPTS", &ssh_opts)
            .env("SPATE_BIN", env!("CARGO_BIN_EXE_spate"))
            .env("SPATE_CONF_DIR", &conf)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let started = cluster_script("start-cluster.sh");
    assert_eq!(
        started.matches("started jobmanager").count(),
        2,
        "{started}"
    );
    assert_eq!(
        started.matches("started taskmanager").count(),
        1,
        "{started}"
    );
    wait_for("a leader", Duration::from_secs(20), || leader().is_some());
    let first = leader().unwrap();
    wait_for(
        "the TaskManager at the leader",
        Duration::from_secs(20),
        || {
            get(&first, "/taskmanagers").and_then(|v| v["taskmanagers"].as_array().map(Vec::len))
                == Some(1)
        },
    );
    let out = d.join("out");
    let events = 200_000u64;
    let o = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["run", "-m", &first, "-d", "-p", "2", "--events"])
        .arg(events.to_string())
        .args(["--rate", "40000", "--output"])
        .arg(&out)
        .arg("vwap")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.contains("JobID"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string();
    wait_for("two completed checkpoints", Duration::from_secs(30), || {
        get(&first, &format!("/jobs/{id}/checkpoints"))
            .is_some_and(|v| v["counts"]["completed"].as_u64().unwrap_or(0) >= 2)
    });
    // SIGKILL the leader, found through its host's pid file.
    let i = (0..3).find(|i| first.starts_with(&addr(*i))).unwrap();
    let pids =
        std::fs::read_to_string(d.join(format!("run-{i}/spate-root-jobmanager.pid"))).unwrap();
    let st = Command::new("kill")
        .args(["-9", pids.trim()])
        .status()
        .unwrap();
    assert!(st.success());
    wait_for("the standby to lead", Duration::from_secs(20), || {
        leader().is_some_and(|l| l != first)
    });
    let second = leader().unwrap();
    wait_for(
        "the job FINISHED on the new leader",
        Duration::from_secs(90),
        || {
            let s = get(&second, &format!("/jobs/{id}"))
                .and_then(|v| v["state"].as_str().map(str::to_string))
                .unwrap_or_default();
            assert_ne!(s, "FAILED");
            s == "FINISHED"
        },
    );
    let got = spate::jobs::read_vwap_output(&out).unwrap();
    assert!(
        got == spate::jobs::vwap_reference(42, events, 2),
        "the committed output differs from the single-threaded computation"
    );
    // Each host logged into its own directory.
    for i in 0..3 {
        assert!(
            std::fs::read_dir(d.join(format!("log-{i}")))
                .unwrap()
                .count()
                >= 1,
            "host {i} has no log"
        );
    }
    let stopped = cluster_script("stop-cluster.sh");
    assert!(stopped.contains("stopped taskmanager"), "{stopped}");
    assert!(stopped.contains("stopped jobmanager"), "{stopped}");
    for i in 0..3 {
        for role in ["jobmanager", "taskmanager"] {
            let pidfile = d.join(format!("run-{i}/spate-root-{role}.pid"));
            assert!(!pidfile.exists(), "{} is left", pidfile.display());
        }
    }
    drop(etcd);
    drop(daemons);
    drop(hosts);
}
