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
