//! Cluster mode with the real binaries on loopback: TaskManagers register with the
//! JobManager, are dropped when they die or fall silent, and register again after a
//! JobManager restart; the REST API answers bad requests with JSON errors.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "support/s3.rs"]
mod s3;
#[path = "support/webdriver.rs"]
mod webdriver;
use s3::S3Server;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ports {
    rpc: u16,
    rest: u16,
}

fn spate(role: &str, ports: &Ports, extra: &[&str]) -> Proc {
    spawn(env!("CARGO_BIN_EXE_spate").as_ref(), role, ports, extra)
}

/// The application-mode example binary (cargo builds examples for `cargo test`).
fn example_binary() -> std::path::PathBuf {
    let deps = std::env::current_exe().unwrap();
    let dir = deps.parent().unwrap().parent().unwrap();
    dir.join("examples").join("price_highs")
}

fn spawn(bin: &std::path::Path, role: &str, ports: &Ports, extra: &[&str]) -> Proc {
    spawn_env(bin, role, ports, extra, &[])
}

fn spawn_env(
    bin: &std::path::Path,
    role: &str,
    ports: &Ports,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let conf = tempfile::tempdir().unwrap();
    let mut args = vec![
        role.to_string(),
        "--config-dir".into(),
        conf.path().display().to_string(),
    ];
    for d in [
        "jobmanager.rpc.address=127.0.0.1".to_string(),
        format!("jobmanager.rpc.port={}", ports.rpc),
        format!("rest.port={}", ports.rest),
        "taskmanager.numberOfTaskSlots=1".into(),
        "taskmanager.idle-strategy=park".into(),
        "heartbeat.interval=100 ms".into(),
        "heartbeat.timeout=1 s".into(),
    ] {
        args.push("-D".into());
        args.push(d);
    }
    for e in extra {
        args.push((*e).into());
    }
    let child = Command::new(bin)
        .args(&args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// A plain HTTP/1.1 request; returns the status and the body parsed as JSON.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn taskmanager_count(rest: u16) -> Option<usize> {
    let (status, v) = http(rest, "GET", "/taskmanagers", "")?;
    (status == 200).then(|| v["taskmanagers"].as_array().map_or(0, Vec::len))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn signal(p: &Proc, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn taskmanagers_register_die_time_out_and_come_back() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate("jobmanager", &ports, &[]);
    let tm1 = spate("taskmanager", &ports, &[]);
    let tm2 = spate("taskmanager", &ports, &[]);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    let (_, overview) = http(ports.rest, "GET", "/overview", "").unwrap();
    assert_eq!(overview["taskmanagers"], 2);
    assert_eq!(overview["slots-total"], 2);
    let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
    let id = tms["taskmanagers"][0]["id"].as_str().unwrap().to_string();
    let (status, one) = http(ports.rest, "GET", &format!("/taskmanagers/{id}"), "").unwrap();
    assert_eq!(status, 200);
    assert_eq!(one["slotsNumber"], 1);

    // SIGKILL: the closed connection tells at once (well within the heartbeat timeout).
    let killed_at = Instant::now();
    drop(tm1);
    wait_for(
        "the killed TaskManager to go",
        Duration::from_secs(5),
        || taskmanager_count(ports.rest) == Some(1),
    );
    assert!(
        killed_at.elapsed() < Duration::from_millis(900),
        "{:?}",
        killed_at.elapsed()
    );

    // SIGSTOP: the connection stays up, the heartbeats stop: dropped after the timeout.
    signal(&tm2, "-STOP");
    let stopped_at = Instant::now();
    wait_for(
        "the silent TaskManager to time out",
        Duration::from_secs(10),
        || taskmanager_count(ports.rest) == Some(0),
    );
    // The timeout runs from the last heartbeat, which a loaded host may have sent a
    // little more than one interval before the stop: "not at once" is what tells a
    // timeout from a closed connection (which drops it within milliseconds).
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(500),
        "not before the timeout: {:?}",
        stopped_at.elapsed()
    );
    signal(&tm2, "-CONT");
    wait_for(
        "the TaskManager to register again",
        Duration::from_secs(10),
        || taskmanager_count(ports.rest) == Some(1),
    );
}

#[test]
fn taskmanagers_register_again_after_a_jobmanager_restart() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let jm = spate("jobmanager", &ports, &[]);
    let _tm1 = spate("taskmanager", &ports, &[]);
    let _tm2 = spate("taskmanager", &ports, &[]);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    let (_, before) = http(ports.rest, "GET", "/config", "").unwrap();
    drop(jm);
    let _jm2 = spate("jobmanager", &ports, &[]);
    wait_for(
        "both to register with the new JobManager",
        Duration::from_secs(15),
        || taskmanager_count(ports.rest) == Some(2),
    );
    let (_, after) = http(ports.rest, "GET", "/config", "").unwrap();
    assert_ne!(before["jobmanager-id"], after["jobmanager-id"]);
}

#[test]
fn bad_requests_get_json_errors_and_garbage_rpc_is_shrugged_off() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate("jobmanager", &ports, &[]);
    wait_for("the REST API", Duration::from_secs(15), || {
        taskmanager_count(ports.rest).is_some()
    });
    let (status, v) = http(ports.rest, "GET", "/no/such/path", "").unwrap();
    assert_eq!(status, 404);
    assert!(v["errors"][0].as_str().unwrap().contains("/no/such/path"));
    // Flink answers an unknown TaskManager with 500 (as recorded).
    let (status, v) = http(ports.rest, "GET", "/taskmanagers/nobody", "").unwrap();
    assert_eq!(status, 500);
    assert!(v["errors"][0].as_str().unwrap().contains("nobody"));
    let (status, v) = http(ports.rest, "DELETE", "/overview", "").unwrap();
    assert_eq!(status, 405);
    assert!(v["errors"].is_array());

    // A rogue RPC client: garbage, then a wrong version.
    let mut s = TcpStream::connect(("127.0.0.1", ports.rpc)).unwrap();
    s.write_all(b"\x00\x01garbage that is not a handshake")
        .unwrap();
    let mut s2 = TcpStream::connect(("127.0.0.1", ports.rpc)).unwrap();
    s2.write_all(b"SPRC\x63\x00\x01\x00").unwrap();
    // A peer that completes the handshake and then says nothing is closed once
    // heartbeat.timeout (1 s here) has passed.
    let mut s3 = TcpStream::connect(("127.0.0.1", ports.rpc)).unwrap();
    s3.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    spate::rpc::handshake_blocking(&mut s3, &spate::security::Secret::none()).unwrap();
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let n = s3.read_to_end(&mut rest);
    assert!(
        n.is_ok() && t0.elapsed() >= Duration::from_millis(800),
        "{n:?} after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    // Still serving, and TaskManagers still register.
    let _tm = spate("taskmanager", &ports, &[]);
    wait_for("a TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
}

fn spate_cli(args: &[&str]) -> std::process::Output {
    cli_of(env!("CARGO_BIN_EXE_spate").as_ref(), args)
}

fn cli_of(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("spate {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn job_state(rest: u16, id: &str) -> String {
    http(rest, "GET", &format!("/jobs/{id}"), "")
        .map(|(_, v)| v["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn leftover_rings(id: &str) -> Vec<String> {
    let prefix = format!("spate-{}-", &id[..16]);
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// The job id `spate run -m` printed ("Job has been submitted with JobID ...").
fn submitted_id(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("JobID"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no job id in {text:?}"))
        .to_string()
}

#[test]
fn w1_across_two_taskmanagers_equals_the_single_threaded_computation() {
    // Through shared memory (one host), and through the network agents (as between
    // hosts) over io_uring with the agent on its own thread and over epoll with the
    // agent polled by a slot.
    w1_across_two_taskmanagers(&[], false);
    w1_across_two_taskmanagers(
        &[
            "-D",
            "taskmanager.network.same-host=tcp",
            "-D",
            "taskmanager.network.transport=io_uring",
        ],
        true,
    );
    w1_across_two_taskmanagers(
        &[
            "-D",
            "taskmanager.network.same-host=tcp",
            "-D",
            "taskmanager.network.transport=epoll",
            "-D",
            "taskmanager.network.agent=shared",
        ],
        true,
    );
}

fn w1_across_two_taskmanagers(extra: &[&str], tcp: bool) {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate("jobmanager", &ports, extra);
    let _tm1 = spate("taskmanager", &ports, extra);
    let _tm2 = spate("taskmanager", &ports, extra);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    if tcp {
        // Rogue clients on the TaskManagers' data ports (garbage, another protocol
        // version) are dropped; the TaskManagers serve the job regardless.
        let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
        for t in tms["taskmanagers"].as_array().unwrap() {
            let port = t["dataAddress"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap();
            let addr = format!("127.0.0.1:{port}");
            let mut wrong_version = b"SPNT\x63\x00\x00\x00".to_vec();
            wrong_version.extend_from_slice(&9u64.to_le_bytes());
            for bytes in [b"GET / HTTP/1.1\r\n\r\n".to_vec(), wrong_version] {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(&bytes).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = Vec::new();
                // The TaskManager sends its hello (no proof: the peer's hello was not
                // valid), then closes the connection.
                match s.read_to_end(&mut buf) {
                    Ok(_) => {}
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
                }
                assert!(buf.len() <= 32, "{buf:?}");
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vwap");
    let m = format!("127.0.0.1:{}", ports.rest);
    let events = 200_000u64;
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-p",
        "2",
        "--events",
        &events.to_string(),
        "--output",
        out.to_str().unwrap(),
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    assert_eq!(job_state(ports.rest, &id), "FINISHED");
    // The two subtasks of each vertex ran on the two TaskManagers.
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    let tms: std::collections::BTreeSet<String> = job["vertices"][1]["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["taskmanager-id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tms.len(), 2, "{job}");
    // Per-vertex records: every trade crossed the key exchange once.
    assert_eq!(
        job["vertices"][0]["metrics"]["write-records"], events,
        "{job}"
    );
    assert_eq!(
        job["vertices"][1]["metrics"]["read-records"], events,
        "{job}"
    );
    // Results per symbol, in order, equal the plain computation.
    let got = spate::jobs::read_vwap_output(&out).unwrap();
    assert_eq!(got, spate::jobs::vwap_reference(42, events, 2));
    wait_for("the job's rings to be gone", Duration::from_secs(5), || {
        leftover_rings(&id).is_empty()
    });
    // The key exchange crossed between the TaskManagers over their one connection (or
    // not at all over the network, through shared memory).
    wait_for("network counters", Duration::from_secs(5), || {
        let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
        tms["taskmanagers"].as_array().unwrap().iter().all(|t| {
            let n = &t["network"];
            let sent = n["framesOut"].as_u64().unwrap();
            if tcp {
                n["connections"] == 1 && sent > 0 && n["failures"] == 0
            } else {
                n["connections"] == 0 && sent == 0
            }
        })
    });
}

#[test]
fn a_killed_taskmanager_restarts_the_job_under_fixed_delay_or_fails_it_under_none() {
    // Through shared memory, and through the network agents (whose connection to the
    // killed TaskManager breaks).
    for (strategy, tcp) in [
        ("fixed-delay", false),
        ("none", false),
        ("fixed-delay", true),
    ] {
        let net: &[&str] = if tcp {
            &["-D", "taskmanager.network.same-host=tcp"]
        } else {
            &[]
        };
        let ports = Ports {
            rpc: free_port(),
            rest: free_port(),
        };
        let s = format!("restart-strategy.type={strategy}");
        let _jm = spate(
            "jobmanager",
            &ports,
            &[
                &[
                    "-D",
                    &s,
                    "-D",
                    "restart-strategy.fixed-delay.attempts=3",
                    "-D",
                    "restart-strategy.fixed-delay.delay=200 ms",
                ],
                net,
            ]
            .concat(),
        );
        let _tm1 = spate("taskmanager", &ports, net);
        let tm2 = spate("taskmanager", &ports, net);
        wait_for("two TaskManagers", Duration::from_secs(15), || {
            taskmanager_count(ports.rest) == Some(2)
        });
        let m = format!("127.0.0.1:{}", ports.rest);
        // Bounded (2 s at the offered rate), so that the restarted job can complete.
        let o = spate_cli(&[
            "run", "-m", &m, "-d", "-p", "2", "--events", "40000", "--rate", "20000", "vwap",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let id = submitted_id(&o);
        wait_for("RUNNING", Duration::from_secs(15), || {
            job_state(ports.rest, &id) == "RUNNING"
        });
        drop(tm2); // SIGKILL
        if strategy == "none" {
            wait_for("FAILED", Duration::from_secs(15), || {
                job_state(ports.rest, &id) == "FAILED"
            });
            let (_, ex) = http(ports.rest, "GET", &format!("/jobs/{id}/exceptions"), "").unwrap();
            let all = ex["all-exceptions"].to_string();
            assert!(all.contains("was lost"), "{ex}");
        } else {
            wait_for("RESTARTING", Duration::from_secs(15), || {
                job_state(ports.rest, &id) == "RESTARTING"
            });
            let _tm3 = spate("taskmanager", &ports, net);
            // RESTARTING → RUNNING, as in Flink: a restarted job is not CREATED again.
            let mut seen = Vec::new();
            wait_for("RUNNING again", Duration::from_secs(20), || {
                let st = job_state(ports.rest, &id);
                if seen.last() != Some(&st) {
                    seen.push(st.clone());
                }
                st == "RUNNING"
            });
            assert!(!seen.iter().any(|s| s == "CREATED"), "{seen:?}");
            let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
            let (_, ex) = http(ports.rest, "GET", &format!("/jobs/{id}/exceptions"), "").unwrap();
            assert_eq!(job["restarts"], 1, "{job}\n{ex}");
            // It replays its sources from the start and completes.
            wait_for("FINISHED", Duration::from_secs(30), || {
                job_state(ports.rest, &id) == "FINISHED"
            });
            let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
            assert_eq!(
                job["vertices"][1]["metrics"]["read-records"], 40000,
                "{job}"
            );
            let o = spate_cli(&["list", "-m", &m]);
            assert!(String::from_utf8_lossy(&o.stdout).contains("(FINISHED)"));
            if tcp {
                // The survivor lost its connection to the killed one, and the restarted
                // job ran over connections again.
                let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
                let nets: Vec<&Value> = tms["taskmanagers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| &t["network"])
                    .collect();
                assert!(
                    nets.iter().any(|n| n["failures"].as_u64() >= Some(1)),
                    "{tms}"
                );
                assert!(
                    nets.iter().all(|n| n["framesOut"].as_u64() > Some(0)),
                    "{tms}"
                );
            }
        }
        wait_for("the job's rings to be gone", Duration::from_secs(5), || {
            leftover_rings(&id).is_empty()
        });
    }
}

#[test]
fn an_application_mode_binary_runs_its_own_job_as_every_role() {
    use spate::dataplane::operator::source::TradeGenerator;
    use spate::dataplane::operator::SubtaskInfo;
    let bin = example_binary();
    assert!(bin.exists(), "{} (built by cargo test)", bin.display());
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let _tm1 = spawn(&bin, "taskmanager", &ports, &[]);
    let _tm2 = spawn(&bin, "taskmanager", &ports, &[]);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("highs");
    let m = format!("127.0.0.1:{}", ports.rest);
    let events = 100_000u64;
    let o = cli_of(
        &bin,
        &[
            "run",
            "-m",
            &m,
            "-p",
            "2",
            "--events",
            &events.to_string(),
            "--output",
            out.to_str().unwrap(),
            "price-highs",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Each symbol's highs rise, and the last one is the symbol's maximum price.
    let mut highs: std::collections::HashMap<u32, Vec<i64>> = Default::default();
    for part in 0..2 {
        let text = std::fs::read_to_string(format!("{}.{part}", out.display())).unwrap();
        for line in text.lines() {
            let (s, p) = line
                .trim_matches(|c| c == '(' || c == ')')
                .split_once(", ")
                .unwrap();
            highs
                .entry(s.parse().unwrap())
                .or_default()
                .push(p.parse().unwrap());
        }
    }
    let mut max: std::collections::HashMap<u32, i64> = Default::default();
    for i in 0..2 {
        let mut g = TradeGenerator::new(
            42,
            SubtaskInfo {
                index: i,
                parallelism: 2,
            },
        );
        for _ in 0..events / 2 {
            let t = g.next_trade(0);
            let m = max.entry(t.symbol).or_insert(i64::MIN);
            *m = (*m).max(t.price);
        }
    }
    assert_eq!(highs.len(), max.len());
    for (s, h) in &highs {
        assert!(h.windows(2).all(|w| w[0] < w[1]), "symbol {s}: {h:?}");
        assert_eq!(h.last(), max.get(s), "symbol {s}");
    }

    // The binary's own event-time job on the cluster: every trade is counted in one
    // window, and each symbol's overall range is the generator's.
    let out = dir.path().join("ranges");
    let o = cli_of(
        &bin,
        &[
            "run",
            "-m",
            &m,
            "-p",
            "2",
            "--events",
            &events.to_string(),
            "--window",
            "1 ms",
            "--output",
            out.to_str().unwrap(),
            "price-ranges",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut counted = 0u64;
    let mut highest: std::collections::HashMap<u32, i64> = Default::default();
    for part in 0..2 {
        let text = std::fs::read_to_string(format!("{}.{part}", out.display())).unwrap();
        for line in text.lines() {
            let f: Vec<i64> = line
                .trim_matches(|c| c == '(' || c == ')')
                .split(", ")
                .map(|x| x.parse().unwrap())
                .collect();
            let [symbol, _start, lo, hi, n] = f[..] else {
                panic!("{line}")
            };
            assert!(lo <= hi, "{line}");
            counted += n as u64;
            let e = highest.entry(symbol as u32).or_insert(i64::MIN);
            *e = (*e).max(hi);
        }
    }
    assert_eq!(counted, events, "every trade in exactly one window");
    assert_eq!(highest, max);
}

#[test]
fn spate_local_is_a_whole_cluster_in_one_process() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _local = spate("local", &ports, &["-D", "taskmanager.numberOfTaskSlots=2"]);
    wait_for("the local TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let dir = tempfile::tempdir().unwrap();
    let hlog = dir.path().join("latency.hlog");
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-p",
        "2",
        "--events",
        "100000",
        "--rate",
        "50000",
        "--hlog",
        hlog.to_str().unwrap(),
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    assert_eq!(job_state(ports.rest, &id), "FINISHED");
    // The interval log of a cluster run, read back with the HdrHistogram crate's own
    // reader: its intervals hold the job's latencies, as the JobManager merged them.
    let (_, lat) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/latency-histogram"),
        "",
    )
    .unwrap();
    let bytes = std::fs::read(&hlog).unwrap();
    let mut logged = 0u64;
    let mut intervals = 0;
    for entry in hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&bytes) {
        if let hdrhistogram::serialization::interval_log::LogEntry::Interval(h) = entry.unwrap() {
            let mut d = hdrhistogram::serialization::Deserializer::new();
            let h: hdrhistogram::Histogram<u64> = d
                .deserialize(&mut std::io::Cursor::new(base64_decode(
                    h.encoded_histogram(),
                )))
                .unwrap();
            logged += h.len();
            intervals += 1;
        }
    }
    assert!(
        intervals >= 1,
        "no interval in {}",
        String::from_utf8_lossy(&bytes)
    );
    assert_eq!(logged, lat["count"].as_u64().unwrap(), "{lat}");
    // The summary gives the events and the latency the cluster's sinks measured, as a
    // MiniCluster run does; the job's metrics hold the same histogram.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("events       100000"), "{out}");
    assert!(out.contains("latency      p50 "), "{out}");
    let (status, v) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/metrics?get=latency_count,latency_p50,latency_p99,latency_max"),
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
    let metric = |name: &str| -> f64 {
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == name))
            .and_then(|x| x["value"].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    // vwap samples one record in 16 for latency.
    assert!(metric("latency_count") > 1000.0, "{v}");
    assert!(metric("latency_p50") > 0.0, "{v}");
    assert!(metric("latency_p50") <= metric("latency_p99"), "{v}");
    assert!(metric("latency_p99") <= metric("latency_max"), "{v}");
    let (_, ids) = http(ports.rest, "GET", &format!("/v1/jobs/{id}/metrics"), "").unwrap();
    assert!(ids.to_string().contains("\"latency_p9999\""), "{ids}");
    // An unbounded job, cancelled from the CLI.
    let o = spate_cli(&[
        "run", "-m", &m, "-d", "--events", "0", "--rate", "10000", "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let o = spate_cli(&["cancel", "-m", &m, &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("CANCELED", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    let o = spate_cli(&["list", "-m", &m]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("(CANCELED)"));
    wait_for("the job's rings to be gone", Duration::from_secs(5), || {
        leftover_rings(&id).is_empty()
    });
}

fn subtask_attempts(rest: u16, id: &str) -> Vec<(u64, String)> {
    let (_, job) = http(rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    job["vertices"][0]["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["attempt"].as_u64().unwrap(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn region_failover_restarts_only_the_failed_pipeline() {
    let bin = example_binary();
    for failover in ["region", "full"] {
        let ports = Ports {
            rpc: free_port(),
            rest: free_port(),
        };
        let f = format!("jobmanager.execution.failover-strategy={failover}");
        let _jm = spawn(
            &bin,
            "jobmanager",
            &ports,
            &[
                "-D",
                &f,
                "-D",
                "restart-strategy.type=fixed-delay",
                "-D",
                "restart-strategy.fixed-delay.attempts=5",
                "-D",
                "restart-strategy.fixed-delay.delay=100 ms",
            ],
        );
        let _tm1 = spawn(&bin, "taskmanager", &ports, &[]);
        wait_for("one TaskManager", Duration::from_secs(15), || {
            taskmanager_count(ports.rest) == Some(1)
        });
        let tm2 = spawn(&bin, "taskmanager", &ports, &[]);
        wait_for("two TaskManagers", Duration::from_secs(15), || {
            taskmanager_count(ports.rest) == Some(2)
        });
        let m = format!("127.0.0.1:{}", ports.rest);
        let o = cli_of(
            &bin,
            &[
                "run",
                "-m",
                &m,
                "-d",
                "-p",
                "2",
                "--events",
                "0",
                "--rate",
                "20000",
                "big-trades",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let id = submitted_id(&o);
        wait_for("RUNNING", Duration::from_secs(15), || {
            job_state(ports.rest, &id) == "RUNNING"
        });
        // Subtask i runs in slot i of the TaskManagers in id order; find tm2's.
        let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
        let tm2_id = format!(":{}-", tm2.0.id());
        let on_tm2 = job["vertices"][0]["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .position(|s| s["taskmanager-id"].as_str().unwrap().contains(&tm2_id))
            .unwrap();
        let other = 1 - on_tm2;
        drop(tm2);
        let _tm3 = spawn(&bin, "taskmanager", &ports, &[]);
        wait_for(
            "the lost pipeline to run again",
            Duration::from_secs(20),
            || {
                let a = subtask_attempts(ports.rest, &id);
                a[on_tm2].0 > 0 && a.iter().all(|s| s.1 == "RUNNING")
            },
        );
        let a = subtask_attempts(ports.rest, &id);
        if failover == "region" {
            assert_eq!(a[other].0, 0, "the other pipeline was not restarted: {a:?}");
            // Regression: the pipeline that kept running reports its older attempt, and
            // its record counts froze at the failover.
            let written = || {
                let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
                job["vertices"][0]["subtasks"][other]["metrics"]["write-records"]
                    .as_u64()
                    .unwrap()
            };
            let before = written();
            wait_for(
                "the running pipeline's count to grow",
                Duration::from_secs(5),
                || written() > before,
            );
        } else {
            assert!(a[other].0 > 0, "full failover restarts every task: {a:?}");
        }
        wait_for("the job to run again", Duration::from_secs(10), || {
            job_state(ports.rest, &id) == "RUNNING"
        });
        let o = cli_of(&bin, &["cancel", "-m", &m, &id]);
        assert!(o.status.success());
        wait_for("CANCELED", Duration::from_secs(15), || {
            job_state(ports.rest, &id) == "CANCELED"
        });
    }
}

#[test]
fn a_rogue_taskmanager_cannot_speak_for_tasks_it_does_not_run() {
    use spate::cluster::{
        JmToTm, NetworkInfo, SlotInfo, TaskKey, TaskManagerId, TaskRecords, TaskState, TmToJm,
    };
    use spate::rpc::{Endpoint, Event};
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    // The stock binary's build, which the JobManager requires of a TaskManager.
    let exe = std::fs::metadata(env!("CARGO_BIN_EXE_spate"))
        .unwrap()
        .len();
    let build = spate::jobs::fingerprint_of(exe, &[]);
    let _jm = spate("jobmanager", &ports, &[]);
    let _tm1 = spate("taskmanager", &ports, &[]);
    wait_for("a TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    // Absurd parallelism is refused at once, before any planning.
    let (status, v) = http(
        ports.rest,
        "POST",
        "/jobs",
        r#"{"job": "vwap", "parallelism": 100000000}"#,
    )
    .unwrap();
    assert_eq!(status, 400, "{v}");
    let (status, v) = http(
        ports.rest,
        "POST",
        "/jobs",
        r#"{"job": "vwap", "parallelism": 1, "events": 0, "rate": 1000.0}"#,
    )
    .unwrap();
    assert_eq!(status, 202, "{v}");
    let id = v["jobid"].as_str().unwrap().to_string();
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    // A rogue peer registers, then claims the job's task failed, and re-registers as
    // another id on the same connection.
    let rogue: Endpoint<JmToTm, TmToJm> =
        Endpoint::client("rogue", spate::security::Secret::none()).unwrap();
    let conn = rogue.connect(format!("127.0.0.1:{}", ports.rpc).parse().unwrap());
    rogue.send(
        conn,
        TmToJm::Register {
            id: TaskManagerId("rogue".into()),
            host: "x".into(),
            data_address: "x".into(),
            slots: vec![],
            cores: 1,
            network: NetworkInfo {
                node: 7,
                host_key: "x".into(),
                transport: "epoll".into(),
            },
            build: build.clone(),
            jobs: vec![],
            clock_domain: String::new(),
        },
    );
    let task = TaskKey {
        job_id: id.clone(),
        attempt: 0,
        vertex: 0,
        subtask: 0,
    };
    rogue.send(
        conn,
        TmToJm::TaskState {
            task: task.clone(),
            state: TaskState::Failed("forged".into()),
            records: TaskRecords {
                task,
                records_in: 7,
                records_out: 7,
                watermark: 0,
                backpressure: (0, 0),
                latency: None,
                markers: None,
                operators: Vec::new(),
            },
        },
    );
    rogue.send(
        conn,
        TmToJm::Register {
            id: TaskManagerId("rogue-2".into()),
            host: "x".into(),
            data_address: "x".into(),
            slots: vec![SlotInfo {
                index: 0,
                core: None,
                job: None,
                times: (0, 0),
            }],
            cores: 1,
            network: NetworkInfo {
                node: 7,
                host_key: "x".into(),
                transport: "epoll".into(),
            },
            build: build.clone(),
            jobs: vec![],
            clock_domain: String::new(),
        },
    );
    let mut refused = false;
    let start = Instant::now();
    while !refused && start.elapsed() < Duration::from_secs(10) {
        if let Some(Event::Message {
            msg: JmToTm::Refused { reason, .. },
            ..
        }) = rogue.recv_timeout(Duration::from_millis(100))
        {
            assert!(reason.contains("registered as rogue"), "{reason}");
            refused = true;
        }
    }
    assert!(
        refused,
        "the second registration on one connection is refused"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        job_state(ports.rest, &id),
        "RUNNING",
        "the forged failure was ignored"
    );
    let (_, ex) = http(ports.rest, "GET", &format!("/jobs/{id}/exceptions"), "").unwrap();
    assert!(ex["all-exceptions"].as_array().unwrap().is_empty(), "{ex}");

    // Another peer registers under the real TaskManager's id: refused while the real
    // one's connection is open, and the real one keeps its registration and its job.
    let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
    let real = tms["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .find(|t| !t.starts_with("rogue"))
        .unwrap();
    let thief: Endpoint<JmToTm, TmToJm> =
        Endpoint::client("thief", spate::security::Secret::none()).unwrap();
    let tconn = thief.connect(format!("127.0.0.1:{}", ports.rpc).parse().unwrap());
    let network = NetworkInfo {
        node: 8,
        host_key: "y".into(),
        transport: "epoll".into(),
    };
    thief.send(
        tconn,
        TmToJm::Register {
            id: TaskManagerId(real.clone()),
            host: "y".into(),
            data_address: "y".into(),
            slots: vec![],
            cores: 1,
            network: network.clone(),
            build: build.clone(),
            jobs: vec![],
            clock_domain: String::new(),
        },
    );
    let mut refused = None;
    let start = Instant::now();
    while refused.is_none() && start.elapsed() < Duration::from_secs(10) {
        match thief.recv_timeout(Duration::from_millis(100)) {
            Some(Event::Message {
                msg: JmToTm::Refused { reason, .. },
                ..
            }) => refused = Some(reason),
            Some(Event::Message {
                msg: JmToTm::Registered { .. },
                ..
            }) => panic!("a peer took over a live TaskManager's id"),
            _ => {}
        }
    }
    let reason = refused.expect("the registration under a live id is refused");
    assert!(reason.contains("another open connection"), "{reason}");
    assert_eq!(job_state(ports.rest, &id), "RUNNING");

    // A heartbeat's slot list is bounded and deduplicated like a registration's.
    let many: Vec<SlotInfo> = (0..100_000u32)
        .map(|i| SlotInfo {
            index: i % 50_000,
            core: None,
            job: None,
            times: (0, 0),
        })
        .collect();
    rogue.send(
        conn,
        TmToJm::Heartbeat {
            slots: many,
            tasks: vec![],
            network: Default::default(),
            clock_probe: 0,
            clock_offset: (0, 0),
        },
    );
    wait_for("the rogue's heartbeat", Duration::from_secs(10), || {
        let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
        tms["taskmanagers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == "rogue")
            .is_some_and(|t| t["slotsNumber"].as_u64().unwrap_or(0) > 0)
    });
    let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
    let slots = tms["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "rogue")
        .unwrap()["slotsNumber"]
        .as_u64()
        .unwrap();
    assert_eq!(slots, 1024, "bounded to MAX_SLOTS_PER_TASKMANAGER");
}

/// A JobManager and one TaskManager with two slots, registered.
fn two_slot_cluster() -> (Ports, Proc, Proc) {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let jm = spate("jobmanager", &ports, &[]);
    let tm = spate(
        "taskmanager",
        &ports,
        &["-D", "taskmanager.numberOfTaskSlots=2"],
    );
    wait_for("the TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    (ports, jm, tm)
}

/// Regression: about one short job in four stayed RUNNING for good when a source ended
/// before its consumer had opened their ring (the ring's name went with the producer).
#[test]
fn a_hundred_short_jobs_back_to_back_all_finish() {
    let (ports, _jm, _tm) = two_slot_cluster();
    for n in 0..100 {
        let events = if n % 2 == 0 { 1000 } else { 100_000 };
        let body = format!(r#"{{"job": "vwap", "parallelism": 2, "events": {events}}}"#);
        let (status, v) = http(ports.rest, "POST", "/jobs", &body).unwrap();
        assert_eq!(status, 202, "job {n}: {v}");
        let id = v["jobid"].as_str().unwrap().to_string();
        let start = Instant::now();
        loop {
            let state = job_state(ports.rest, &id);
            if state == "FINISHED" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "job {n} ({events} events) is still {state} after 20 s; rings: {:?}",
                leftover_rings(&id)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_for("the job's rings to be gone", Duration::from_secs(5), || {
            leftover_rings(&id).is_empty()
        });
    }
}

/// W2 (event time, watermarks and windows across a key exchange) on a cluster: the
/// bars job submitted through REST with its own disorder and window finishes.
#[test]
fn the_bars_job_runs_on_a_cluster() {
    let (ports, _jm, _tm) = two_slot_cluster();
    let body = r#"{"job": "bars", "parallelism": 2, "events": 300000, "disorder": "1 ms", "window": "10 ms"}"#;
    let (status, v) = http(ports.rest, "POST", "/jobs", body).unwrap();
    assert_eq!(status, 202, "{v}");
    let id = v["jobid"].as_str().unwrap().to_string();
    wait_for("the bars job to finish", Duration::from_secs(30), || {
        job_state(ports.rest, &id) == "FINISHED"
    });
    // The windows' input watermark reached the end of time (Flink's Long.MAX_VALUE),
    // reported as Flink's currentInputWatermark.
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    let last = job["vertices"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, wms) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/vertices/{last}/watermarks"),
        "",
    )
    .unwrap();
    assert_eq!(status, 200, "{wms}");
    let end_of_time = i64::MAX.to_string();
    let wms = wms.as_array().unwrap();
    assert_eq!(wms.len(), 2, "one per subtask: {wms:?}");
    assert!(
        wms.iter().all(|w| w["value"] == end_of_time.as_str()),
        "{wms:?}"
    );
    let (status, v) = http(
        ports.rest,
        "POST",
        "/jobs",
        r#"{"job": "bars", "window": "0 s"}"#,
    )
    .unwrap();
    assert_eq!(status, 400, "a zero window is refused: {v}");
}

/// `spate run -m ... -D key=value` sets the job's own configuration, as Flink's `run
/// -D` does: here its default parallelism; a bad key refuses the submission.
#[test]
fn run_dash_d_on_a_cluster_configures_the_job() {
    let (ports, _jm, _tm) = two_slot_cluster();
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-D",
        "parallelism.default=2",
        "--events",
        "100000",
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    let pars: Vec<u64> = job["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["parallelism"].as_u64().unwrap())
        .collect();
    assert!(pars.iter().all(|&p| p == 2), "{pars:?}");
    // So do the job-level keys of --config-dir's config.yaml (not its cluster keys),
    // under -D.
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("config.yaml"),
        "parallelism.default: 2\nrest.port: 1\nexecution:\n  checkpointing:\n    interval: 100 ms\n",
    )
    .unwrap();
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "--config-dir",
        conf.path().to_str().unwrap(),
        "--events",
        "100000",
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    assert!(
        job["vertices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["parallelism"] == 2),
        "{job}"
    );
    let (_, cfg) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/checkpoints/config"),
        "",
    )
    .unwrap();
    assert_eq!(cfg["interval"], 100, "{cfg}");
    let o = spate_cli(&["run", "-m", &m, "-D", "no.such.key=1", "vwap"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no.such.key"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A restarting job that cannot get its slots fails after `slot.request.timeout`
/// (Flink's), rather than waiting for ever.
#[test]
fn a_restart_without_slots_fails_after_the_slot_request_timeout() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate(
        "jobmanager",
        &ports,
        &[
            "-D",
            "restart-strategy.type=fixed-delay",
            "-D",
            "restart-strategy.fixed-delay.attempts=100",
            "-D",
            "restart-strategy.fixed-delay.delay=50 ms",
            "-D",
            "slot.request.timeout=1 s",
        ],
    );
    let tm = spate("taskmanager", &ports, &[]);
    wait_for("a TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let body = r#"{"job": "vwap", "parallelism": 1, "events": 0, "rate": 1000.0}"#;
    let (status, v) = http(ports.rest, "POST", "/jobs", body).unwrap();
    assert_eq!(status, 202, "{v}");
    let id = v["jobid"].as_str().unwrap().to_string();
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    drop(tm); // and no TaskManager comes back
    wait_for("FAILED", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "FAILED"
    });
    let (_, ex) = http(ports.rest, "GET", &format!("/jobs/{id}/exceptions"), "").unwrap();
    assert!(
        ex["root-exception"]
            .as_str()
            .unwrap_or("")
            .contains("slot.request.timeout"),
        "{ex}"
    );
}

/// (key, event time, value) in arrival order: event times advance by up to 40 ns a
/// record and arrive up to 150 ns late (within the job's 200 ns watermark bound).
fn disordered_records(seed: u64, n: usize) -> Vec<(u32, u64, u64)> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut t = 1_000u64;
    (0..n)
        .map(|_| {
            t += rnd() % 40;
            let late = rnd() % 151;
            ((rnd() % 7) as u32, t - late, rnd() % 1_000)
        })
        .collect()
}

type WindowRow = (u32, u64, u64, u64, u64);

/// The windows of `kind` (as the example's `windows` job defines them), computed plainly.
fn windows_reference(kind: &str, input: &[(u32, u64, u64)]) -> Vec<WindowRow> {
    use std::collections::BTreeMap;
    let mut out = Vec::new();
    match kind {
        "session" => {
            let mut by_key: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
            for &(k, ts, v) in input {
                by_key.entry(k).or_default().push((ts, v));
            }
            for (k, mut recs) in by_key {
                recs.sort_unstable();
                let mut cur: Option<(u64, u64, u64, u64)> = None;
                for (ts, v) in recs {
                    cur = match cur {
                        Some((s, e, sum, n)) if ts <= e => {
                            Some((s, e.max(ts + 60), sum + v, n + 1))
                        }
                        Some((s, e, sum, n)) => {
                            out.push((k, s, e, sum, n));
                            Some((ts, ts + 60, v, 1))
                        }
                        None => Some((ts, ts + 60, v, 1)),
                    };
                }
                out.extend(cur.map(|(s, e, sum, n)| (k, s, e, sum, n)));
            }
        }
        "tumbling-count" => {
            // Per key and window, in arrival order: every third record fires and purges.
            let mut open: BTreeMap<(u32, u64), Vec<u64>> = BTreeMap::new();
            for &(k, ts, v) in input {
                let start = ts - ts % 500;
                let vs = open.entry((k, start)).or_default();
                vs.push(v);
                if vs.len() == 3 {
                    out.push((k, start, start + 500, vs.iter().sum(), 3));
                    vs.clear();
                }
            }
        }
        _ => {
            let (size, slide) = if kind == "sliding" {
                (1_000, 250)
            } else {
                (500, 500)
            };
            let mut m: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
            for &(k, ts, v) in input {
                let mut start = (ts - ts % slide) as i64;
                while start >= 0 && start as u64 + size > ts {
                    let e = m.entry((k, start as u64)).or_default();
                    e.0 += v;
                    e.1 += 1;
                    start -= slide as i64;
                }
            }
            out.extend(
                m.into_iter()
                    .map(|((k, s), (sum, n))| (k, s, s + size, sum, n)),
            );
        }
    }
    out.sort_unstable();
    out
}

fn read_rows(path: &std::path::Path) -> Vec<WindowRow> {
    let mut rows = Vec::new();
    for part in 0..2 {
        let Ok(text) = std::fs::read_to_string(format!("{}.{part}", path.display())) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<u64> = line
                .trim_matches(|c| c == '(' || c == ')')
                .split(", ")
                .map(|x| x.parse().unwrap())
                .collect();
            let [k, s, e, sum, n] = f[..] else {
                panic!("{line}")
            };
            rows.push((k as u32, s, e, sum, n));
        }
    }
    rows.sort_unstable();
    rows
}

/// Event-time windows of every kind and function (and a trigger) across two
/// TaskManagers, at parallelism 2, over random disorder: the results equal a plain
/// computation, and no record is late.
#[test]
fn windows_across_two_taskmanagers_equal_a_plain_computation() {
    let bin = example_binary();
    assert!(bin.exists(), "{} (built by cargo test)", bin.display());
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let _tm1 = spawn(&bin, "taskmanager", &ports, &[]);
    let _tm2 = spawn(&bin, "taskmanager", &ports, &[]);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    let dir = tempfile::tempdir().unwrap();
    let m = format!("127.0.0.1:{}", ports.rest);
    for seed in [5u64, 17] {
        let input = disordered_records(seed, 4_000);
        let path = dir.path().join(format!("input-{seed}"));
        let text: String = input
            .iter()
            .map(|(k, t, v)| format!("{k} {t} {v}\n"))
            .collect();
        std::fs::write(&path, text).unwrap();
        for kind in [
            "tumbling",
            "sliding",
            "session",
            "tumbling-process",
            "tumbling-count",
        ] {
            let out = dir.path().join(format!("{kind}-{seed}"));
            let o = cli_of(
                &bin,
                &[
                    "run",
                    "-m",
                    &m,
                    "-p",
                    "2",
                    "--output",
                    out.to_str().unwrap(),
                    "windows",
                    kind,
                    path.to_str().unwrap(),
                ],
            );
            assert!(
                o.status.success(),
                "{kind}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert_eq!(
                read_rows(&out),
                windows_reference(kind, &input),
                "{kind}, seed {seed}"
            );
            let late = dir.path().join(format!("{kind}-{seed}-late"));
            assert!(read_rows(&late).is_empty(), "{kind}: no record is late");
        }
    }
}

/// Whether `ours` has every field of `recorded` (a real Flink response) with the same
/// nesting and kind of value (a recorded null or "NaN" matches anything).
fn same_shape(recorded: &Value, ours: &Value, at: &str) -> Result<(), String> {
    match (recorded, ours) {
        (Value::Object(r), Value::Object(o)) => {
            for (k, rv) in r {
                let ov = o.get(k).ok_or_else(|| format!("{at}.{k} is missing"))?;
                same_shape(rv, ov, &format!("{at}.{k}"))?;
            }
            Ok(())
        }
        (Value::Null, _) => Ok(()),
        (Value::String(s), _) if s == "NaN" => Ok(()),
        (Value::Array(r), Value::Array(o)) => match (r.first(), o.first()) {
            (Some(r), Some(o)) => same_shape(r, o, &format!("{at}[0]")),
            _ => Ok(()),
        },
        (r, o) => {
            let kind = |v: &Value| match v {
                Value::Bool(_) => "bool",
                Value::Number(_) => "number",
                Value::String(_) => "string",
                Value::Array(_) => "array",
                Value::Object(_) => "object",
                Value::Null => "null",
            };
            if kind(r) == kind(o) {
                Ok(())
            } else {
                Err(format!(
                    "{at}: Flink has a {}, spate a {}",
                    kind(r),
                    kind(o)
                ))
            }
        }
    }
}

/// Every endpoint Flink 2.3 serves whose concept spate has answers in the shape of the
/// recorded response (field names, kinds of values, nesting), bare and under `/v1` as
/// Flink's clients call them; error codes are Flink's.
#[test]
fn rest_responses_take_the_shapes_of_flinks_and_are_served_under_v1() {
    let (ports, _jm, _tm) = two_slot_cluster();
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = spate_cli(&[
        "run", "-m", &m, "-d", "-p", "2", "--events", "0", "--rate", "10000", "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let get = |path: &str| {
        let (status, bare) = http(ports.rest, "GET", path, "").unwrap();
        let (v1_status, v1) = http(ports.rest, "GET", &format!("/v1{path}"), "").unwrap();
        assert_eq!((status, v1_status), (200, 200), "{path}: {bare}");
        assert_eq!(
            bare.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            v1.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            "{path} under /v1"
        );
        bare
    };
    let job = get(&format!("/jobs/{id}"));
    let vid = job["vertices"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(vid.len(), 32, "{vid}");
    assert!(
        job["vertices"][0]["tasks"]["RUNNING"].as_u64().unwrap() >= 1,
        "{job}"
    );
    let plan_nodes = job["plan"]["nodes"].as_array().unwrap();
    assert_eq!(plan_nodes.len(), job["vertices"].as_array().unwrap().len());
    let second = plan_nodes
        .iter()
        .find(|n| n["id"] == job["vertices"][1]["id"])
        .unwrap();
    assert!(
        second["inputs"][0]["id"] == job["vertices"][0]["id"],
        "the plan links the vertices: {job}"
    );
    assert!(job["timestamps"]["RUNNING"].as_u64().unwrap() >= job["start-time"].as_u64().unwrap());
    let tm = get("/taskmanagers")["taskmanagers"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let checks: Vec<(&str, String)> = vec![
        ("overview.200.json", "/overview".into()),
        ("config.200.json", "/config".into()),
        ("jobs.200.json", "/jobs".into()),
        ("jobs_overview.running.200.json", "/jobs/overview".into()),
        ("jobs_id.running.200.json", format!("/jobs/{id}")),
        (
            "jobs_id_status.running.200.json",
            format!("/jobs/{id}/status"),
        ),
        ("jobs_id_plan.200.json", format!("/jobs/{id}/plan")),
        ("jobs_id_config.200.json", format!("/jobs/{id}/config")),
        (
            "jobs_id_exceptions.empty.200.json",
            format!("/jobs/{id}/exceptions"),
        ),
        (
            "jobs_id_execution_result.200.json",
            format!("/jobs/{id}/execution-result"),
        ),
        (
            "jobs_id_vertices_vid0.200.json",
            format!("/jobs/{id}/vertices/{vid}"),
        ),
        (
            "jobs_id_checkpoints_config.200.json",
            format!("/jobs/{id}/checkpoints/config"),
        ),
        (
            "applications_overview.200.json",
            "/applications/overview".into(),
        ),
        ("jobmanager_config.200.json", "/jobmanager/config".into()),
        (
            "jobmanager_environment.200.json",
            "/jobmanager/environment".into(),
        ),
        ("taskmanagers.200.json", "/taskmanagers".into()),
        (
            "jobs_id_accumulators.200.json",
            format!("/jobs/{id}/accumulators"),
        ),
        (
            "jobs_id_vertices_vid0_subtasktimes.200.json",
            format!("/jobs/{id}/vertices/{vid}/subtasktimes"),
        ),
        (
            "jobs_id_vertices_vid0_taskmanagers.200.json",
            format!("/jobs/{id}/vertices/{vid}/taskmanagers"),
        ),
        (
            "jobs_id_vertices_vid0_metrics.200.json",
            format!("/jobs/{id}/vertices/{vid}/metrics"),
        ),
        (
            "jobs_id_vertices_vid0_watermarks.200.json",
            format!("/jobs/{id}/vertices/{vid}/watermarks"),
        ),
        (
            "jobs_id_vertices_vid1_subtasks_metrics.200.json",
            format!("/jobs/{id}/vertices/{vid}/subtasks/metrics"),
        ),
        ("jobmanager_metrics.200.json", "/jobmanager/metrics".into()),
        ("jobs_metrics.200.json", "/jobs/metrics".into()),
        (
            "taskmanagers_metrics.200.json",
            "/taskmanagers/metrics".into(),
        ),
        (
            "taskmanagers_id_metrics.200.json",
            format!("/taskmanagers/{tm}/metrics"),
        ),
    ];
    for (file, path) in &checks {
        let ours = get(path);
        if let Err(e) = same_shape(&recorded(file), &ours, path) {
            panic!("{e}\n{ours:#}");
        }
    }
    // Metric values as Flink's dashboard asks for them.
    wait_for(
        "records in the vertex metrics",
        Duration::from_secs(15),
        || {
            let v = get(&format!(
                "/jobs/{id}/vertices/{vid}/metrics?get=0.numRecordsOut,1.numRecordsOut"
            ));
            v.as_array().is_some_and(|a| {
                a.len() == 2
                    && a.iter().all(|m| {
                        m["value"]
                            .as_str()
                            .and_then(|s| s.parse::<f64>().ok())
                            .is_some_and(|x| x > 0.0)
                    })
            })
        },
    );
    let agg = get(&format!(
        "/jobs/{id}/vertices/{vid}/subtasks/metrics?get=numRecordsOut"
    ));
    assert!(
        agg[0]["sum"].as_f64().unwrap() >= agg[0]["max"].as_f64().unwrap(),
        "{agg}"
    );
    assert!(agg[0]["min"].as_f64().unwrap() > 0.0, "{agg}");
    let wms = get(&format!("/jobs/{id}/vertices/{vid}/watermarks"));
    let wms = wms.as_array().unwrap();
    assert_eq!(wms.len(), 2, "one per subtask: {wms:?}");
    assert_eq!(wms[0]["id"], "0.currentInputWatermark");
    // The sources have no input: Flink's Long.MIN_VALUE.
    assert_eq!(wms[0]["value"], i64::MIN.to_string());
    let bp = get(&format!("/jobs/{id}/vertices/{vid}/backpressure"));
    assert_eq!(bp["status"], "ok", "{bp}");
    assert_eq!(bp["subtasks"].as_array().unwrap().len(), 2, "{bp}");
    for s in bp["subtasks"].as_array().unwrap() {
        let r = s["ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&r), "{bp}");
        assert!(["ok", "low", "high"].contains(&s["backpressure-level"].as_str().unwrap()));
    }
    let jm = get("/jobmanager/metrics?get=taskSlotsTotal,numRegisteredTaskManagers");
    assert_eq!(
        jm,
        serde_json::json!([
            {"id": "numRegisteredTaskManagers", "value": "1"},
            {"id": "taskSlotsTotal", "value": "2"},
        ])
    );
    // A TaskManager's details: Flink's, but for the JVM metrics spate has no
    // concept of (heap, GC, Netty buffers).
    let mut flink_tm = recorded("taskmanagers_id.200.json");
    flink_tm.as_object_mut().unwrap().remove("metrics");
    same_shape(
        &flink_tm,
        &get(&format!("/taskmanagers/{tm}")),
        "/taskmanagers/:id",
    )
    .unwrap();

    // Errors as Flink's: a malformed job id is 400, an unknown one 404, an unknown
    // vertex 404, an unknown TaskManager 500, an unknown path 404 (bare or /v1).
    for (path, code) in [
        ("/jobs/notanid".to_string(), 400),
        ("/jobs/00000000000000000000000000000000".into(), 404),
        (
            format!("/jobs/{id}/vertices/00000000000000000000000000000000"),
            404,
        ),
        ("/taskmanagers/no-such-tm".into(), 500),
        ("/nonexistent".into(), 404),
        ("/v1/nonexistent".into(), 404),
        ("/v1/jobs/notanid".into(), 400),
    ] {
        let (status, v) = http(ports.rest, "GET", &path, "").unwrap();
        assert_eq!(status, code, "{path}: {v}");
        same_shape(&recorded("err_nonexistent.404.json"), &v, &path).unwrap();
    }

    // Cancelled through /v1, as Flink's CLI does it.
    let (status, v) = http(
        ports.rest,
        "PATCH",
        &format!("/v1/jobs/{id}?mode=cancel"),
        "",
    )
    .unwrap();
    assert_eq!(status, 202, "{v}");
    wait_for("CANCELED", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    for (file, path) in [
        ("jobs_id.canceled.200.json", format!("/jobs/{id}")),
        (
            "jobs_overview.after_cancel.200.json",
            "/jobs/overview".into(),
        ),
        ("overview.after_cancel.200.json", "/overview".into()),
    ] {
        same_shape(&recorded(file), &get(&path), &path).unwrap();
    }
    let job = get(&format!("/jobs/{id}"));
    assert!(job["timestamps"]["CANCELED"].as_u64().unwrap() > 0, "{job}");
    assert!(job["end-time"].as_i64().unwrap() > 0, "{job}");
    let result = get(&format!("/jobs/{id}/execution-result"));
    assert_eq!(result["status"]["id"], "COMPLETED", "{result}");
    assert_eq!(
        result["job-execution-result"]["application-status"],
        "CANCELED"
    );
}

/// A GET whose body is text: (status, content type, body).
fn http_text(port: u16, path: &str) -> Option<(u16, String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).to_string();
    let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    Some((status, ctype, body.to_string()))
}

/// The value of the first sample of `name` whose labels contain every one of `with`.
fn sample(text: &str, name: &str, with: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `promtool check metrics` on `text`: what it found to say (empty: nothing).
fn promtool_check(text: &str) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool is required (Debian's prometheus package; .ci/run installs it): {e}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_string()
    } else {
        format!("promtool failed: {said}")
    }
}

/// Prometheus's text format at /metrics on the JobManager (REST port) and on a
/// TaskManager (`metrics.reporter.prom.port`): the cluster, the job and each subtask's
/// records, accepted by promtool without a remark.
#[test]
fn prometheus_metrics_on_the_jobmanager_and_a_taskmanager_pass_promtool() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let prom = free_port();
    let _jm = spate("jobmanager", &ports, &[]);
    let prom_arg = format!("metrics.reporter.prom.port={prom}");
    let _tm = spate(
        "taskmanager",
        &ports,
        &[
            "-D",
            "taskmanager.numberOfTaskSlots=2",
            "-D",
            &prom_arg,
            "-D",
            "metrics.latency.interval=20 ms",
        ],
    );
    wait_for("the TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = spate_cli(&[
        "run", "-m", &m, "-d", "-p", "2", "--events", "0", "--rate", "20000", "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    let job_label = format!("job_id=\"{id}\"");
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let mut jm_text = String::new();
    wait_for(
        "records in the JobManager's metrics",
        Duration::from_secs(20),
        || {
            jm_text = http_text(ports.rest, "/metrics")
                .map(|r| r.2)
                .unwrap_or_default();
            sample(&jm_text, "spate_task_records_out_total", &[&job_label]).is_some_and(|v| v > 0.0)
                && sample(&jm_text, "spate_jobmanager_task_slots_available", &[]) == Some(0.0)
                && sample(&jm_text, "spate_job_latency_seconds_count", &[&job_label])
                    .is_some_and(|v| v > 0.0)
                && sample(
                    &jm_text,
                    "spate_operator_time_per_record_seconds_count",
                    &[&job_label, "operator=\"VWAP\""],
                )
                .is_some_and(|v| v > 0.0)
        },
    );
    let mut tm_text = String::new();
    wait_for(
        "records in the TaskManager's metrics",
        Duration::from_secs(20),
        || {
            tm_text = http_text(prom, "/metrics").map(|r| r.2).unwrap_or_default();
            sample(&tm_text, "spate_task_records_out_total", &[&job_label]).is_some_and(|v| v > 0.0)
                && sample(&tm_text, "spate_task_latency_seconds_count", &[&job_label])
                    .is_some_and(|v| v > 0.0)
                && sample(
                    &tm_text,
                    "spate_task_marker_latency_seconds_count",
                    &[&job_label],
                )
                .is_some_and(|v| v > 0.0)
                && sample(
                    &tm_text,
                    "spate_operator_time_per_record_seconds_count",
                    &[&job_label, "operator=\"VWAP\""],
                )
                .is_some_and(|v| v > 0.0)
        },
    );
    let (status, ctype, _) = http_text(ports.rest, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    assert_eq!(
        sample(&jm_text, "spate_jobmanager_taskmanagers", &[]),
        Some(1.0),
        "{jm_text}"
    );
    assert_eq!(
        sample(&jm_text, "spate_jobmanager_task_slots", &[]),
        Some(2.0),
        "{jm_text}"
    );
    assert_eq!(
        sample(&jm_text, "spate_jobmanager_jobs", &["state=\"RUNNING\""]),
        Some(1.0),
        "{jm_text}"
    );
    assert!(
        sample(&jm_text, "spate_job_restarts_total", &[&job_label]).is_some(),
        "{jm_text}"
    );
    assert_eq!(
        sample(&tm_text, "spate_taskmanager_task_slots", &[]),
        Some(2.0),
        "{tm_text}"
    );
    assert_eq!(
        sample(&tm_text, "spate_taskmanager_task_slots_busy", &[]),
        Some(2.0),
        "{tm_text}"
    );
    assert!(
        sample(
            &tm_text,
            "spate_task_backpressure_samples_total",
            &[&job_label]
        )
        .is_some_and(|v| v > 0.0),
        "{tm_text}"
    );
    // The job's latency as a summary: quantiles in order, within what was observed.
    let q = |text: &str, name: &str, quantile: &str| {
        sample(
            text,
            name,
            &[&job_label, &format!("quantile=\"{quantile}\"")],
        )
        .unwrap()
    };
    for (text, name) in [
        (&jm_text, "spate_job_latency_seconds"),
        (&tm_text, "spate_task_latency_seconds"),
    ] {
        let (p50, p99, p9999) = (
            q(text, name, "0.5"),
            q(text, name, "0.99"),
            q(text, name, "0.9999"),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= p9999, "{name}: {text}");
    }
    // Slots' busy time: counters on the TaskManager (busy within the total), a ratio
    // between reports on the JobManager.
    let slot0 = "slot=\"0\"";
    let total = sample(&tm_text, "spate_taskmanager_slot_seconds_total", &[slot0]).unwrap();
    let busy = sample(
        &tm_text,
        "spate_taskmanager_slot_busy_seconds_total",
        &[slot0],
    )
    .unwrap();
    assert!(total > 0.0 && busy > 0.0 && busy <= total, "{tm_text}");
    wait_for("slot busy ratios", Duration::from_secs(20), || {
        jm_text = http_text(ports.rest, "/metrics")
            .map(|r| r.2)
            .unwrap_or_default();
        sample(&jm_text, "spate_taskmanager_slot_busy_ratio", &[slot0])
            .is_some_and(|r| (0.0..=1.0).contains(&r))
    });
    for (who, text) in [("JobManager", &jm_text), ("TaskManager", &tm_text)] {
        let said = promtool_check(text);
        assert!(
            said.is_empty(),
            "promtool on the {who}'s metrics: {said}\n{text}"
        );
    }
    let (status, _) = http(ports.rest, "PATCH", &format!("/jobs/{id}?mode=cancel"), "").unwrap();
    assert_eq!(status, 202);
}

fn recorded(file: &str) -> Value {
    // The recorded responses sit beside the repository, in ../shared.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/flink-rest-2.3")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// W1 at p=2 on three TaskManagers, writing through the exactly-once file sink with a
/// checkpoint every 200 ms, while TaskManagers hosting it are SIGKILLed and replaced:
/// the committed output equals the single-threaded computation (nothing lost, nothing
/// twice), and the REST API reports the checkpoints as Flink's does.
#[test]
fn w1_with_checkpoints_survives_killed_taskmanagers_exactly_once() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoints");
    let ckpt_key = format!("state.checkpoints.dir={}", ckpt.display());
    let _jm = spate(
        "jobmanager",
        &ports,
        &[
            "-D",
            "restart-strategy.type=fixed-delay",
            "-D",
            "restart-strategy.fixed-delay.attempts=20",
            "-D",
            "restart-strategy.fixed-delay.delay=100 ms",
            "-D",
            "execution.checkpointing.interval=200 ms",
            "-D",
            &ckpt_key,
        ],
    );
    let mut tms: Vec<Proc> = (0..3).map(|_| spate("taskmanager", &ports, &[])).collect();
    wait_for("three TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(3)
    });
    let out = dir.path().join("out");
    let events = 300_000u64;
    let id = submit_vwap(ports.rest, &out, events);
    let completed = |rest: u16| {
        http(rest, "GET", &format!("/jobs/{id}/checkpoints"), "")
            .map_or(0, |(_, v)| v["counts"]["completed"].as_u64().unwrap_or(0))
    };
    // Kill a TaskManager that runs a subtask once a checkpoint has completed since the
    // last kill, three times; a fresh one takes its place.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    for round in 0..3 {
        let before = completed(ports.rest);
        wait_for("a completed checkpoint", Duration::from_secs(20), || {
            job_state(ports.rest, &id) == "RUNNING" && completed(ports.rest) > before
        });
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 300));
        let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
        let victim = job["vertices"][(round % 2) as usize]["subtasks"][0]["taskmanager-id"]
            .as_str()
            .unwrap()
            .to_string();
        let pid: u32 = victim
            .rsplit_once(':')
            .and_then(|(_, r)| r.split_once('-'))
            .and_then(|(p, _)| p.parse().ok())
            .unwrap();
        let i = tms.iter().position(|p| p.0.id() == pid).unwrap();
        drop(tms.remove(i)); // SIGKILL
        tms.push(spate("taskmanager", &ports, &[]));
    }
    wait_for("FINISHED", Duration::from_secs(60), || {
        let s = job_state(ports.rest, &id);
        assert_ne!(s, "FAILED", "the job failed");
        s == "FINISHED"
    });
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    assert!(job["restarts"].as_u64().unwrap() >= 3, "{job}");
    assert_exact_vwap(&out, events, "after three failures");
    // It resumed from checkpoints (not from the start of its sources), and says so as
    // Flink's REST API does.
    let (status, cps) = http(ports.rest, "GET", &format!("/jobs/{id}/checkpoints"), "").unwrap();
    assert_eq!(status, 200);
    same_shape(
        &recorded("jobs_id_checkpoints.200.json"),
        &cps,
        "checkpoints",
    )
    .unwrap();
    assert!(cps["counts"]["completed"].as_u64().unwrap() >= 3, "{cps}");
    assert_eq!(cps["counts"]["restored"], 1, "{cps}");
    assert!(
        cps["latest"]["restored"]["id"].as_u64().unwrap() >= 1,
        "{cps}"
    );
    let last = &cps["latest"]["completed"];
    assert!(
        last["external_path"].as_str().unwrap().contains("chk-"),
        "{cps}"
    );
    let cid = last["id"].as_u64().unwrap();
    let (status, one) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/checkpoints/details/{cid}"),
        "",
    )
    .unwrap();
    assert_eq!((status, &one["id"]), (200, &last["id"]), "{one}");
    let (status, cfg) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/checkpoints/config"),
        "",
    )
    .unwrap();
    assert_eq!(status, 200);
    same_shape(
        &recorded("jobs_id_checkpoints_config.200.json"),
        &cfg,
        "config",
    )
    .unwrap();
    assert_eq!(cfg["interval"], 200, "{cfg}");
    assert_eq!(cfg["mode"], "exactly_once", "{cfg}");
    // Retained checkpoints are on disk under the job's id.
    assert!(ckpt.join(&id).is_dir());
    let (status, _) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/checkpoints/details/notanumber"),
        "",
    )
    .unwrap();
    assert_eq!(status, 400);
}

/// `spate savepoint` takes a savepoint of a running job (it runs on); `spate stop`
/// stops it with another (it ends FINISHED); `spate run -s` resumes it from there on
/// the cluster, and the two runs' committed output is the single-threaded computation
/// of the whole input, each record once. Savepoint requests that cannot be served get
/// Flink's error statuses.
#[test]
fn stop_with_a_savepoint_and_resume_exactly_once() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let default_dir = dir.path().join("savepoints");
    let sp_key = format!("state.savepoints.dir={}", default_dir.display());
    // An S3-compatible store too (moto's server, which .ci/run installs).
    let s3 = S3Server::start();
    s3.bucket("spate-sp");
    let s3_keys = [
        format!("s3.endpoint={}", s3.endpoint),
        "s3.access-key=test".to_string(),
        "s3.secret-key=test".to_string(),
        "s3.path.style.access=true".to_string(),
    ];
    let mut jm_args = vec!["-D", &sp_key];
    for k in &s3_keys {
        jm_args.extend(["-D", k.as_str()]);
    }
    let _jm = spate("jobmanager", &ports, &jm_args);
    let _tms: Vec<Proc> = (0..2).map(|_| spate("taskmanager", &ports, &[])).collect();
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(2)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let out = dir.path().join("out");
    let events = 200_000u64;
    let run_args = |extra: &[&str]| {
        let mut a: Vec<String> = ["run", "-m", &m, "-d", "-p", "2", "--events"]
            .iter()
            .map(ToString::to_string)
            .collect();
        a.push(events.to_string());
        a.extend(["--rate", "40000", "--output"].map(String::from));
        a.push(out.display().to_string());
        a.extend(extra.iter().map(ToString::to_string));
        a.push("vwap".into());
        a
    };
    let args = run_args(&[]);
    let o = spate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    std::thread::sleep(Duration::from_millis(800));

    // A savepoint into state.savepoints.dir; the job runs on.
    let o = spate_cli(&["savepoint", "-m", &m, &id]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let first = text
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed. Path: file:"))
        .unwrap_or_else(|| panic!("no savepoint path in {text:?}"))
        .to_string();
    assert!(first.starts_with(default_dir.to_str().unwrap()), "{first}");
    assert!(std::path::Path::new(&first).join("_metadata").is_file());
    assert_eq!(job_state(ports.rest, &id), "RUNNING");

    // A savepoint into the object store: its location is the s3:// URL.
    let o = spate_cli(&["savepoint", "-m", &m, &id, "s3://spate-sp/savepoints"]);
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let in_s3 = text
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no savepoint path in {text:?}"))
        .to_string();
    assert!(
        in_s3.starts_with("s3://spate-sp/savepoints/savepoint-"),
        "{in_s3}"
    );
    let key = in_s3.trim_start_matches("s3://spate-sp/");
    assert!(
        s3.holds("spate-sp", &format!("{key}/_metadata")),
        "the savepoint's _metadata is in the store"
    );
    assert_eq!(job_state(ports.rest, &id), "RUNNING");

    // Requests that cannot be served.
    let (s, v) = http(
        ports.rest,
        "POST",
        "/jobs/00000000000000000000000000000000/savepoints",
        "{}",
    )
    .unwrap();
    assert_eq!(s, 404, "{v}");
    let (s, v) = http(
        ports.rest,
        "POST",
        &format!("/jobs/{id}/savepoints"),
        "{\"target-directory\": 7}",
    )
    .unwrap();
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().contains("not valid"),
        "{v}"
    );
    let (s, v) = http(
        ports.rest,
        "POST",
        &format!("/jobs/{id}/savepoints"),
        "{\"target-directory\": \"relative/dir\"}",
    )
    .unwrap();
    assert_eq!(s, 400, "{v}");
    let (s, v) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/savepoints/nosuchrequest"),
        "",
    )
    .unwrap();
    assert_eq!(s, 404, "{v}");
    let (s, v) = http(
        ports.rest,
        "POST",
        &format!("/jobs/{id}/stop"),
        "{\"drain\": true}",
    )
    .unwrap();
    assert_eq!(s, 400, "{v}");

    // Stop with a savepoint: FINISHED, part of the output written.
    std::thread::sleep(Duration::from_millis(800));
    let stop_dir = dir.path().join("stopped");
    let (location, text) =
        stop_with_savepoint(env!("CARGO_BIN_EXE_spate").as_ref(), &m, &stop_dir, &id);
    assert!(
        location.starts_with(&format!("file:{}", stop_dir.display())),
        "{location}"
    );
    assert!(text.contains(&format!("Job {id} is FINISHED.")), "{text}");
    let partial = spate::jobs::read_vwap_output(&out).unwrap();
    let want = spate::jobs::vwap_reference(42, events, 2);
    let (n_partial, n_want) = (
        partial.values().map(Vec::len).sum::<usize>(),
        want.values().map(Vec::len).sum::<usize>(),
    );
    assert!(
        n_partial > 0 && n_partial < n_want,
        "{n_partial} of {n_want}"
    );
    let (s, v) = http(ports.rest, "POST", &format!("/jobs/{id}/savepoints"), "{}").unwrap();
    assert_eq!(s, 409, "a savepoint of a finished job: {v}");

    // Resume from the stop's savepoint (as printed, a file: URI) on the cluster.
    let args = run_args(&["-s", &location]);
    let o = spate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id2 = submitted_id(&o);
    wait_for("the resumed job FINISHED", Duration::from_secs(60), || {
        let s = job_state(ports.rest, &id2);
        assert_ne!(s, "FAILED", "the resumed job failed");
        s == "FINISHED"
    });
    let got = spate::jobs::read_vwap_output(&out).unwrap();
    assert!(
        got == want,
        "the output of the stopped and the resumed run is not the whole computation once"
    );
    let (_, cps) = http(ports.rest, "GET", &format!("/jobs/{id2}/checkpoints"), "").unwrap();
    assert_eq!(cps["counts"]["restored"], 1, "{cps}");
}

/// The committed lines of the part files under `dir` (hidden files are in progress
/// or pending), sorted.
fn committed_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("part-") {
            let text = std::fs::read_to_string(e.path()).unwrap();
            lines.extend(text.lines().map(String::from));
        }
    }
    lines.sort();
    lines
}

/// Savepoint, stop, resume at another parallelism: `rescalable-highs` (trade source,
/// keyed function and exactly-once file sink all at the job's parallelism) runs on a
/// cluster at p=2, is stopped with a savepoint, and resumes from it at p=3: its keyed
/// state redistributed by key group, the source's two splits read on by two of the
/// three source subtasks, the old sink subtasks' pending parts committed by the new
/// ones. The committed output of both runs is an uninterrupted run's, line for line:
/// nothing lost, nothing twice.
#[test]
fn a_savepoint_resumes_at_another_parallelism_on_a_cluster() {
    let bin = example_binary();
    assert!(bin.exists(), "{} (built by cargo test)", bin.display());
    let dir = tempfile::tempdir().unwrap();
    let events = 150_000u64;
    // The uninterrupted run, on the binary's own MiniCluster.
    let whole = dir.path().join("whole");
    let o = cli_of(
        &bin,
        &[
            "run",
            "-p",
            "2",
            "--events",
            &events.to_string(),
            "--output",
            whole.to_str().unwrap(),
            "rescalable-highs",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want = committed_lines(&whole);
    assert!(want.len() > 1000, "{}", want.len());

    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let _tms: Vec<Proc> = (0..3)
        .map(|_| spawn(&bin, "taskmanager", &ports, &[]))
        .collect();
    wait_for("three TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(3)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let out = dir.path().join("out");
    let run = |p: &str, extra: &[&str]| {
        let mut a = vec![
            "run", "-m", &m, "-d", "-p", p, "--rate", "30000", "--output",
        ];
        a.push(out.to_str().unwrap());
        let ev = events.to_string();
        a.extend(["--events", ev.as_str()]);
        a.extend(extra);
        a.push("rescalable-highs");
        let o = cli_of(&bin, &a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        submitted_id(&o)
    };
    let id = run("2", &[]);
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    // Records under way (a loaded host can take a while to start the sources).
    wait_for("records from the sources", Duration::from_secs(30), || {
        http(ports.rest, "GET", &format!("/jobs/{id}"), "").is_some_and(|(_, j)| {
            j["vertices"][0]["metrics"]["write-records"]
                .as_u64()
                .unwrap_or(0)
                > 0
        })
    });
    std::thread::sleep(Duration::from_millis(1000));
    let sp_dir = dir.path().join("sp");
    let (location, _) = stop_with_savepoint(&bin, &m, &sp_dir, &id);
    let partial = committed_lines(&out);
    assert!(
        !partial.is_empty() && partial.len() < want.len(),
        "{} of {}",
        partial.len(),
        want.len()
    );

    // Resumed at p=3: the rest, exactly.
    let id2 = run("3", &["-s", &location]);
    wait_for("the resumed job FINISHED", Duration::from_secs(60), || {
        let s = job_state(ports.rest, &id2);
        assert_ne!(s, "FAILED", "the resumed job failed");
        s == "FINISHED"
    });
    let (_, v) = http(ports.rest, "GET", &format!("/jobs/{id2}"), "").unwrap();
    let ps: Vec<u64> = v["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["parallelism"].as_u64().unwrap())
        .collect();
    assert!(ps.contains(&3), "{v}");
    let got = committed_lines(&out);
    assert!(
        got == want,
        "stopped at p=2 and resumed at p=3: {} lines, an uninterrupted run has {}",
        got.len(),
        want.len()
    );
}

/// The committed W1 output under `out` (p=2, seed 42, `events` trades) equals the
/// single-threaded computation, symbol by symbol; else a panic says where it differs.
fn assert_exact_vwap(out: &std::path::Path, events: u64, what: &str) {
    let got = spate::jobs::read_vwap_output(out).unwrap();
    let want = spate::jobs::vwap_reference(42, events, 2);
    if got != want {
        let mut diff = Vec::new();
        for (sym, w) in &want {
            let g = got.get(sym).map_or(&[][..], Vec::as_slice);
            if g != w.as_slice() {
                let common = g.iter().zip(w).take_while(|(a, b)| a == b).count();
                diff.push(format!(
                    "symbol {sym}: {} lines, want {}, equal for the first {common}",
                    g.len(),
                    w.len()
                ));
            }
        }
        let mut files: Vec<String> = std::fs::read_dir(out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        panic!(
            "committed output {what} differs from the reference: {} of {} \
             symbols, e.g. {:?}; files {files:?}",
            diff.len(),
            want.len(),
            &diff[..diff.len().min(5)]
        );
    }
}

/// Chaos: W1 at p=2 over three TaskManagers with region failover, writing through the
/// exactly-once file sink with a checkpoint every 200 ms, while for 30 s (or
/// `SPATE_CHAOS_SECS`) a TaskManager running one of its subtasks is SIGKILLed at a
/// random moment every 0.4–1.6 s and replaced. The job is then cancelled, the
/// JobManager is restarted, and the job is submitted again from its retained
/// checkpoints (`-s` with the job's checkpoint directory): it finishes, and the
/// committed output of both runs is the single-threaded computation exactly.
#[test]
fn chaos_w1_survives_random_kills_and_a_jobmanager_restart_exactly_once() {
    let secs: u64 = std::env::var("SPATE_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("checkpoints");
    let ckpt_key = format!("state.checkpoints.dir={}", ckpt.display());
    let jm_args = [
        "-D",
        "restart-strategy.type=fixed-delay",
        "-D",
        "restart-strategy.fixed-delay.attempts=1000",
        "-D",
        "restart-strategy.fixed-delay.delay=100 ms",
        "-D",
        "jobmanager.execution.failover-strategy=region",
        "-D",
        "execution.checkpointing.interval=200 ms",
        "-D",
        &ckpt_key,
    ];
    let jm = spate("jobmanager", &ports, &jm_args);
    let mut tms: Vec<Proc> = (0..3).map(|_| spate("taskmanager", &ports, &[])).collect();
    wait_for("three TaskManagers", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(3)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let out = dir.path().join("out");
    // Input for the chaos and a few seconds more at 20 k trades/s (restarts replay
    // from checkpoints, so the job is still running when the chaos ends).
    let events = 20_000 * (secs + 5);
    let run_args = |extra: &[&str]| {
        let mut a: Vec<String> = ["run", "-m", &m, "-d", "-p", "2", "--rate", "20000"]
            .iter()
            .map(ToString::to_string)
            .collect();
        a.extend(["--events".to_string(), events.to_string()]);
        a.extend(["--output".to_string(), out.display().to_string()]);
        a.extend(extra.iter().map(ToString::to_string));
        a.push("vwap".into());
        a
    };
    let args = run_args(&[]);
    let o = spate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let until = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(400 + rand(1200)));
        let Some((_, job)) = http(ports.rest, "GET", &format!("/jobs/{id}"), "") else {
            continue;
        };
        assert_ne!(job["state"], "FAILED", "the job failed: {job}");
        // A TaskManager that runs a subtask now (any, while the job redeploys).
        let hosts: Vec<u32> = job["vertices"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| v["subtasks"].as_array().cloned().unwrap_or_default())
            .filter_map(|s| {
                s["taskmanager-id"]
                    .as_str()
                    .and_then(|t| t.rsplit_once(':'))
                    .and_then(|(_, r)| r.split_once('-'))
                    .and_then(|(p, _)| p.parse().ok())
            })
            .collect();
        let victim = if hosts.is_empty() {
            rand(tms.len() as u64) as usize
        } else {
            let pid = hosts[rand(hosts.len() as u64) as usize];
            match tms.iter().position(|p| p.0.id() == pid) {
                Some(i) => i,
                None => continue,
            }
        };
        drop(tms.remove(victim)); // SIGKILL
        tms.push(spate("taskmanager", &ports, &[]));
        kills += 1;
    }
    assert!(kills >= secs / 2, "{kills} kills in {secs} s");
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    assert!(job["restarts"].as_u64().unwrap() >= 1, "{job}");

    // Cancel it once it runs again and has checkpointed since; restart the JobManager.
    let completed = || {
        http(ports.rest, "GET", &format!("/jobs/{id}/checkpoints"), "")
            .map_or(0, |(_, v)| v["counts"]["completed"].as_u64().unwrap_or(0))
    };
    let before = completed();
    wait_for(
        "a checkpoint after the chaos",
        Duration::from_secs(30),
        || {
            let s = job_state(ports.rest, &id);
            s == "FINISHED" || (s == "RUNNING" && completed() > before)
        },
    );
    if job_state(ports.rest, &id) == "RUNNING" {
        let o = spate_cli(&["cancel", "-m", &m, &id]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        wait_for("CANCELED", Duration::from_secs(20), || {
            job_state(ports.rest, &id) == "CANCELED"
        });
    }
    drop(jm);
    let _jm2 = spate("jobmanager", &ports, &jm_args);
    wait_for(
        "the TaskManagers to register with the new JobManager",
        Duration::from_secs(20),
        || taskmanager_count(ports.rest) == Some(3),
    );
    // Its retained checkpoints survived: the job resumes from the latest of them.
    let job_dir = ckpt.join(&id);
    let args = run_args(&["-s", job_dir.to_str().unwrap()]);
    let o = spate_cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id2 = submitted_id(&o);
    wait_for("the resumed job FINISHED", Duration::from_secs(120), || {
        let s = job_state(ports.rest, &id2);
        assert_ne!(s, "FAILED", "the resumed job failed");
        s == "FINISHED"
    });
    let (_, cps) = http(ports.rest, "GET", &format!("/jobs/{id2}/checkpoints"), "").unwrap();
    assert_eq!(cps["counts"]["restored"], 1, "{cps}");
    assert_exact_vwap(
        &out,
        events,
        &format!("after {kills} kills in {secs} s, a cancel and a JobManager restart"),
    );
}

/// Flink's task cancellation watchdog: a task whose user code never returns cannot
/// be cancelled; `task.cancellation.timeout` after the cancel its TaskManager exits
/// with an error that says why (so that its slots come back), and the job ends.
#[test]
fn a_task_that_does_not_stop_when_cancelled_takes_its_taskmanager_down_after_the_timeout() {
    let bin = example_binary();
    assert!(bin.exists(), "{} (built by cargo test)", bin.display());
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let mut tm = spawn(
        &bin,
        "taskmanager",
        &ports,
        &["-D", "task.cancellation.timeout=1 s"],
    );
    wait_for("a TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = cli_of(&bin, &["run", "-m", &m, "-d", "stuck"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    // Past its 1000th trade (at 10 k/s) the map is stuck.
    std::thread::sleep(Duration::from_millis(500));
    let o = cli_of(&bin, &["cancel", "-m", &m, &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cancelled = Instant::now();
    let status = loop {
        if let Some(s) = tm.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            cancelled.elapsed() < Duration::from_secs(15),
            "the TaskManager still runs 15 s after the cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "it exits with an error: {status}");
    assert!(cancelled.elapsed() >= Duration::from_millis(900));
    wait_for("the job to end", Duration::from_secs(20), || {
        let s = job_state(ports.rest, &id);
        s == "CANCELED" || s == "FAILED"
    });
}

/// A TaskManager built from another binary (here the example application, whose job
/// registry differs from the stock binary's) is refused by the JobManager with a
/// message that says so, and stops rather than retrying for ever.
#[test]
fn a_taskmanager_of_another_build_is_refused_and_says_why() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate("jobmanager", &ports, &[]);
    wait_for("the JobManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(0)
    });
    let conf = tempfile::tempdir().unwrap();
    let o = cli_of(
        &example_binary(),
        &[
            "taskmanager",
            "--config-dir",
            conf.path().to_str().unwrap(),
            "-D",
            "jobmanager.rpc.address=127.0.0.1",
            "-D",
            &format!("jobmanager.rpc.port={}", ports.rpc),
            "-D",
            "taskmanager.idle-strategy=park",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("another binary or job registry") && err.contains("price-highs"),
        "{err}"
    );
    assert_eq!(taskmanager_count(ports.rest), Some(0));
}

/// `stop --savepointPath DIR ID` with `bin` against `m`: the savepoint's location as
/// printed, and all the command printed.
fn stop_with_savepoint(
    bin: &std::path::Path,
    m: &str,
    dir: &std::path::Path,
    id: &str,
) -> (String, String) {
    let o = cli_of(
        bin,
        &[
            "stop",
            "-m",
            m,
            "--savepointPath",
            dir.to_str().unwrap(),
            id,
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("Savepoint completed. Path: "))
        .unwrap_or_else(|| panic!("no savepoint path in {text:?}"))
        .to_string();
    (location, text)
}

/// Runs a script of `scripts/` with the deployment environment of `dir`.
fn script(name: &str, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::process::Command::new("bash")
        .arg(root.join("scripts").join(name))
        .args(args)
        .env("SPATE_HOME", &root)
        .env("SPATE_BIN", env!("CARGO_BIN_EXE_spate"))
        .env("SPATE_CONF_DIR", dir.join("conf"))
        .env("SPATE_LOG_DIR", dir.join("log"))
        .env("SPATE_PID_DIR", dir.join("pid"))
        .output()
        .unwrap()
}

/// Stops what the scripts started, whatever happened to the test.
struct ScriptCluster(std::path::PathBuf);

impl Drop for ScriptCluster {
    fn drop(&mut self) {
        let _ = script("stop-cluster.sh", &self.0, &[]);
    }
}

/// Bare-metal deployment as Flink's: start-cluster.sh reads conf/masters and
/// conf/workers and starts a JobManager and two TaskManagers (localhost twice) with
/// logs and pid files; a job runs on them; taskmanager.sh reports them; stop-cluster.sh
/// stops them all. tune-host.sh --check reports on the slot cores, and the systemd
/// units carry CPUAffinity= from taskmanager.cpu.cores.
#[test]
fn cluster_scripts_start_a_cluster_from_conf_and_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let (rpc, rest) = (free_port(), free_port());
    std::fs::write(
        conf.join("config.yaml"),
        format!(
            "jobmanager.rpc.address: 127.0.0.1\njobmanager.rpc.port: {rpc}\nrest.port: {rest}\n\
             taskmanager.numberOfTaskSlots: 1\ntaskmanager.idle-strategy: park\n\
             taskmanager.cpu.cores: [0]\nheartbeat.interval: 200 ms\nheartbeat.timeout: 2 s\n"
        ),
    )
    .unwrap();
    std::fs::write(conf.join("masters"), format!("localhost:{rest}\n")).unwrap();
    std::fs::write(
        conf.join("workers"),
        "# two TaskManagers here\nlocalhost\nlocalhost\n",
    )
    .unwrap();
    let _cluster = ScriptCluster(dir.path().to_path_buf());
    let o = script("start-cluster.sh", dir.path(), &[]);
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert_eq!(said.matches("started taskmanager").count(), 2, "{said}");
    wait_for("two TaskManagers", Duration::from_secs(20), || {
        taskmanager_count(rest) == Some(2)
    });
    let o = script("taskmanager.sh", dir.path(), &["status"]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout)
            .matches("taskmanager running")
            .count(),
        2
    );
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(logs.len(), 3, "{logs:?}");
    let m = format!("127.0.0.1:{rest}");
    let o = spate_cli(&["run", "-m", &m, "-p", "2", "--events", "100000", "vwap"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(job_state(rest, &submitted_id(&o)), "FINISHED");

    let o = script("stop-cluster.sh", dir.path(), &[]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{said}");
    assert_eq!(said.matches("stopped taskmanager").count(), 2, "{said}");
    assert_eq!(said.matches("stopped jobmanager").count(), 1, "{said}");
    assert!(
        http(rest, "GET", "/overview", "").is_none(),
        "the JobManager is gone"
    );
    assert!(!dir
        .path()
        .join("pid")
        .join(format!("spate-{}-taskmanager.pid", whoami()))
        .exists());
    let o = script("taskmanager.sh", dir.path(), &["status"]);
    assert_eq!(o.status.code(), Some(3), "none left");
    // A pid file whose pid now belongs to another program (the kernel reused it):
    // stop leaves that program alone, status counts it out.
    let mut other = Proc(Command::new("sleep").arg("60").spawn().unwrap());
    std::fs::write(
        dir.path()
            .join("pid")
            .join(format!("spate-{}-taskmanager.pid", whoami())),
        format!("{}\n", other.0.id()),
    )
    .unwrap();
    let o = script("taskmanager.sh", dir.path(), &["stop"]);
    assert!(o.status.success(), "{o:?}");
    assert!(
        other.0.try_wait().unwrap().is_none(),
        "a reused pid was signalled: {o:?}"
    );
    let o = script("taskmanager.sh", dir.path(), &["status"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "a reused pid is not a TaskManager"
    );

    // The host report names the slot cores and what to change.
    let o = script("tune-host.sh", dir.path(), &["--check"]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("slot cores: 0") && said.contains("core 0 "),
        "{said}"
    );
    // The nested form of the configuration (Flink 2's layout) names the same cores.
    std::fs::write(
        conf.join("config.yaml"),
        "taskmanager:\n  numberOfTaskSlots: 1\n  cpu.cores: [0]\n",
    )
    .unwrap();
    let said = String::from_utf8_lossy(&script("tune-host.sh", dir.path(), &["--check"]).stdout)
        .to_string();
    assert!(said.contains("slot cores: 0"), "{said}");

    // systemd units with the slot cores (and a control core) as CPUAffinity.
    let units = dir.path().join("units");
    let o = script("systemd-units.sh", dir.path(), &[units.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tm = std::fs::read_to_string(units.join("spate-taskmanager.service")).unwrap();
    assert!(tm.contains("CPUAffinity=0"), "{tm}");
    assert!(
        tm.contains(&format!("--config-dir {}", conf.display())),
        "{tm}"
    );
    if let Ok(v) = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("spate-taskmanager.service"))
        .arg(units.join("spate-jobmanager.service"))
        .output()
    {
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| {
        String::from_utf8_lossy(
            &std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .trim()
        .to_string()
    })
}

/// The web dashboard in a real headless browser against a running cluster: the
/// overview, the TaskManagers with the core of each slot, a job's graph with live
/// records, back-pressure and latency, its checkpoints, a graph of dozens of vertices
/// laid out without overlaps, and cancelling the job from the page.
#[test]
fn web_dashboard_in_a_headless_browser_follows_a_job_and_cancels_it() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spate("jobmanager", &ports, &[]);
    let _tm = spate(
        "taskmanager",
        &ports,
        &[
            "-D",
            "taskmanager.numberOfTaskSlots=2",
            "-D",
            "metrics.latency.interval=20 ms",
        ],
    );
    wait_for("the TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let chk = tempfile::tempdir().unwrap();
    let m = format!("127.0.0.1:{}", ports.rest);
    let chk_arg = format!("state.checkpoints.dir={}", chk.path().display());
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-d",
        "-p",
        "2",
        "--events",
        "0",
        "--rate",
        "20000",
        "-D",
        "execution.checkpointing.interval=300 ms",
        "-D",
        &chk_arg,
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let (_, tms) = http(ports.rest, "GET", "/taskmanagers", "").unwrap();
    let tm_id = tms["taskmanagers"][0]["id"].as_str().unwrap().to_string();
    let base = format!("http://127.0.0.1:{}", ports.rest);
    let b = webdriver::Browser::start();
    let long = Duration::from_secs(20);

    // The overview: one TaskManager, two slots, the job among the running ones.
    b.goto(&format!("{base}/"));
    b.wait_js(
        "the overview",
        long,
        "const c = document.querySelector('#card-taskmanagers .value'); \
         const r = document.querySelector('#running-jobs'); \
         return c && c.innerText === '1' && r && r.innerText.includes('vwap');",
    );
    assert_eq!(b.text("#card-slots .value").as_deref(), Some("2"));
    let row = b
        .text(&format!("#running-jobs tr[data-job='{id}']"))
        .unwrap();
    assert!(row.contains("RUNNING"), "{row}");

    // TaskManagers, and one TaskManager's slots with their cores and the job on them.
    b.goto(&format!("{base}/#/taskmanagers"));
    let listed = b.wait_js(
        "the TaskManagers",
        long,
        "const t = document.querySelector('#taskmanagers'); return t && t.innerText;",
    );
    let listed = listed.as_str().unwrap();
    assert!(listed.contains(&tm_id), "{listed}");
    assert!(
        listed.contains("core ") || listed.contains("unpinned"),
        "{listed}"
    );
    b.click(&format!("tr[data-tm='{tm_id}'] a"));
    b.wait_js(
        "the TaskManager's slots",
        long,
        "return document.querySelectorAll('#slots tr[data-slot]').length === 2 \
         && document.querySelectorAll('#slots a[href^=\"#/jobs/\"]').length > 0 \
         && [...document.querySelectorAll('#slots td[data-f=busy]')].every(t => /^\\d+%$/.test(t.innerText));",
    );

    // The job: its graph (a box per vertex, named as the REST API names them), live
    // record counts and rates, back-pressure and the sinks' latency.
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    let vertices: Vec<(String, String)> = job["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    b.goto(&format!("{base}/#/jobs/{id}"));
    b.wait_js(
        "the job graph",
        long,
        &format!(
            "return document.querySelectorAll('#job-graph .vertex').length === {};",
            vertices.len()
        ),
    );
    let graph = b.text("#job-graph").unwrap_or_default();
    for (vid, name) in &vertices {
        let title = b
            .js(&format!(
                "const g = document.querySelector('#job-graph .vertex[data-vertex=\"{vid}\"]'); \
                 return g && g.querySelector('title').textContent;"
            ))
            .as_str()
            .map(str::to_string);
        assert_eq!(title.as_deref(), Some(name.as_str()), "{graph}");
    }
    let source = &vertices[0].0;
    let records_out = |b: &webdriver::Browser| -> f64 {
        let t = b
            .text(&format!(
                "#vertices tr[data-vertex='{source}'] td[data-f=out]"
            ))
            .unwrap_or_default();
        let (n, mult) = match t.chars().last() {
            Some('k') => (&t[..t.len() - 1], 1e3),
            Some('M') => (&t[..t.len() - 1], 1e6),
            Some('G') => (&t[..t.len() - 1], 1e9),
            _ => (t.as_str(), 1.0),
        };
        n.parse::<f64>().map_or(-1.0, |x| x * mult)
    };
    wait_for("records in the page", long, || records_out(&b) > 0.0);
    let first = records_out(&b);
    wait_for("the page's records to grow", long, || {
        records_out(&b) > first
    });
    b.wait_js(
        "the job's latency",
        long,
        "const l = document.querySelector('#job-latency'); \
         return l && l.innerText.includes('p99.99');",
    );
    b.wait_js(
        "back-pressure and the sink's latency in the vertex table",
        long,
        "const rows = [...document.querySelectorAll('#vertices tr[data-vertex]')]; \
         return rows.length > 0 \
           && rows.every(r => /ok|low|high/.test(r.querySelector('td[data-f=backpressure]').innerText)) \
           && rows.some(r => /[µm]?s$/.test(r.querySelector('td[data-f=latency]').innerText));",
    );
    // The sink's box in the graph shows its end-to-end percentiles on a line of its own,
    // inside the box.
    b.wait_js(
        "the sink's end-to-end latency in the graph",
        long,
        "const e = [...document.querySelectorAll('#job-graph .vertex text[data-f=e2e]')] \
             .find(t => /^end to end p50 .*s p99 .*s$/.test(t.textContent)); \
         if (!e) return false; \
         const box = e.closest('.vertex').querySelector('rect').getBoundingClientRect(); \
         const r = e.getBoundingClientRect(); \
         return r.right <= box.right && r.bottom <= box.bottom;",
    );
    // Latency markers: how long after their emission they reached each vertex past
    // the sources, in the vertex table and the vertex's metrics.
    b.wait_js(
        "latency markers in the vertex table",
        long,
        "const rows = [...document.querySelectorAll('#vertices tr[data-vertex]')]; \
         return rows.length > 1 && rows.slice(1).every(r => / \\/ .*s$/.test(r.querySelector('td[data-f=from-source]').innerText));",
    );
    let sink = &vertices[vertices.len() - 1].0;
    let (_, m) = http(
        ports.rest,
        "GET",
        &format!(
            "/jobs/{id}/vertices/{sink}/metrics?get=latencyFromSource_count,latencyFromSource_p99"
        ),
        "",
    )
    .unwrap();
    let count = m
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == "latencyFromSource_count"))
        .and_then(|x| x["value"].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count > 0.0, "{m}");
    // A vertex's subtasks, chosen from the graph.
    b.click(&format!("#job-graph .vertex[data-vertex='{source}']"));
    b.wait_js(
        "the vertex's subtasks",
        long,
        "return document.querySelectorAll('#subtask-table tbody tr').length === 2;",
    );
    // Its chained operators' own time per record (sampled with the markers).
    b.wait_js(
        "the vertex's operators with their times",
        long,
        "const rows = [...document.querySelectorAll('#operator-table tbody tr')]; \
         return rows.length > 0 && rows.every(r => /s$/.test(r.children[1].innerText));",
    );

    // Checkpoints: completed ones counted, the latest shown.
    b.click("a[data-tab='checkpoints']");
    b.wait_js(
        "completed checkpoints",
        long,
        "const c = document.querySelector('#checkpoints-completed'); \
         return c && Number(c.innerText) > 0 && !!document.querySelector('#checkpoint-latest');",
    );
    b.click("a[data-tab='exceptions']");
    b.wait_js(
        "no exceptions",
        long,
        "const e = document.querySelector('#exceptions'); \
         return e && e.innerText.includes('No exceptions');",
    );

    // A job of dozens of vertices (a chain with fan-outs and a join): every vertex gets
    // a box, no two boxes overlap, and every edge is drawn.
    let laid_out = b.js(
        "const nodes = []; \
         for (let i = 0; i < 40; i++) { \
           const inputs = i === 0 ? [] : [{ id: 'v' + Math.floor((i - 1) / 2), ship_strategy: 'HASH' }]; \
           if (i === 39) inputs.push({ id: 'v38', ship_strategy: 'FORWARD' }); \
           nodes.push({ id: 'v' + i, description: 'Operator number ' + i, parallelism: 2, inputs }); \
         } \
         const box = document.createElement('div'); box.className = 'graph'; \
         box.innerHTML = graphSvg({ nodes }); document.body.appendChild(box); \
         const rects = [...box.querySelectorAll('.vertex')].map(g => g.getBoundingClientRect()); \
         let overlaps = 0; \
         for (let a = 0; a < rects.length; a++) for (let c = a + 1; c < rects.length; c++) { \
           const p = rects[a], q = rects[c]; \
           if (p.left < q.right && q.left < p.right && p.top < q.bottom && q.top < p.bottom) overlaps++; \
         } \
         const svg = box.querySelector('svg').getBoundingClientRect(); \
         const inside = rects.every(r => r.left >= svg.left && r.right <= svg.right + 0.5 \
           && r.top >= svg.top && r.bottom <= svg.bottom + 0.5); \
         const edges = box.querySelectorAll('path.edge').length; \
         box.remove(); \
         return { boxes: rects.length, overlaps, inside, edges };",
    );
    assert_eq!(laid_out["boxes"], 40, "{laid_out}");
    assert_eq!(laid_out["overlaps"], 0, "{laid_out}");
    assert_eq!(laid_out["inside"], true, "{laid_out}");
    assert_eq!(laid_out["edges"], 40, "{laid_out}");

    // A savepoint from the page, into the directory typed beside the button.
    b.click("a[data-tab='overview']");
    b.wait_js(
        "the cancel button",
        long,
        "return !!document.querySelector('#cancel-btn');",
    );
    let sp = tempfile::tempdir().unwrap();
    let sp_dir = serde_json::to_string(&sp.path().display().to_string()).unwrap();
    b.js(&format!(
        "document.querySelector('#savepoint-dir').value = {sp_dir};"
    ));
    b.click("#savepoint-btn");
    let said = b.wait_js(
        "the savepoint's location",
        Duration::from_secs(30),
        "const r = document.querySelector('#action-result');          return r && r.innerText.startsWith('Savepoint at') && r.innerText;",
    );
    let said = said.as_str().unwrap();
    assert!(said.contains(&sp.path().display().to_string()), "{said}");
    let written = std::fs::read_dir(sp.path()).unwrap().count();
    assert_eq!(
        written,
        1,
        "one savepoint directory in {}",
        sp.path().display()
    );

    // Cancel from the page: the first click arms the button, the second cancels.
    b.click("#cancel-btn");
    b.wait_js(
        "the armed cancel button",
        long,
        "return document.querySelector('#cancel-btn').innerText === 'Confirm cancel';",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(job_state(ports.rest, &id), "RUNNING", "one click only arms");
    b.click("#cancel-btn");
    wait_for("CANCELED", long, || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    b.wait_js(
        "the page to show the job CANCELED",
        long,
        "const s = document.querySelector('#job-state'); return s && s.innerText === 'CANCELED';",
    );
    b.goto(&format!("{base}/#/jobs/completed"));
    b.wait_js(
        "the job among the completed ones",
        long,
        &format!("return !!document.querySelector(\"#completed-jobs tr[data-job='{id}']\");"),
    );
}

/// A job whose builder (user code) is slow is built off the JobManager's event loop:
/// while it is being declared, the JobManager cancels another job at once; the slow
/// one is then refused with its builder's message.
#[test]
fn a_slow_job_builder_stalls_nothing_on_the_jobmanager() {
    let bin = example_binary();
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let _tm = spawn(
        &bin,
        "taskmanager",
        &ports,
        &["-D", "taskmanager.numberOfTaskSlots=2"],
    );
    wait_for("the TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = cli_of(
        &bin,
        &[
            "run",
            "-m",
            &m,
            "-d",
            "--events",
            "0",
            "--rate",
            "10000",
            "big-trades",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a2 = answered.clone();
    let rest = ports.rest;
    let slow = std::thread::spawn(move || {
        let r = http(
            rest,
            "POST",
            "/jobs",
            r#"{"job": "slow-refusal", "window": "3 s"}"#,
        );
        a2.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, _) = http(ports.rest, "PATCH", &format!("/jobs/{id}?mode=cancel"), "").unwrap();
    assert_eq!(status, 202);
    wait_for("CANCELED", Duration::from_secs(10), || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    assert!(
        !answered.load(std::sync::atomic::Ordering::SeqCst),
        "the cancel waited for the slow builder"
    );
    let (status, v) = slow.join().unwrap().unwrap();
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("slow-refusal thought for"), "{v}");
    assert_eq!(
        taskmanager_count(ports.rest),
        Some(1),
        "the TaskManager stayed"
    );
}

/// SQL on a cluster of the stock binary: `spate run -m ... -f FILE` submits the
/// script as the `sql` job, which the JobManager and TaskManagers declare from its
/// text; a window aggregate at parallelism 2 writes CSV files whose rows equal a
/// reference computation over the same generated rows.
#[test]
fn a_select_on_a_cluster_shows_its_rows_in_the_client() {
    let (ports, _jm, _tm) = two_slot_cluster();
    let dir = tempfile::tempdir().unwrap();
    let ddl = "CREATE TABLE bids (auction BIGINT, price BIGINT)
WITH ('connector' = 'datagen', 'rows-per-second' = '0', 'number-of-rows' = '300',
  'fields.auction.min' = '1', 'fields.auction.max' = '5',
  'fields.price.min' = '1', 'fields.price.max' = '100');";
    let m = format!("127.0.0.1:{}", ports.rest);
    // `spate sql -m`: the tableau rows, through the JobManager, in the client (few:
    // the output is read once the client ends).
    let file = dir.path().join("q.sql");
    std::fs::write(
        &file,
        format!("{ddl}\nSELECT auction, COUNT(*) AS n FROM bids GROUP BY auction;\n"),
    )
    .unwrap();
    let o = spate_cli(&["sql", "-m", &m, "-p", "2", "-f", file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let text = out.clone() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(
        out.contains("| op |              auction |                    n |"),
        "{text}"
    );
    // The changelog ends at each auction's count; the counts add up to every row.
    let mut last: std::collections::BTreeMap<i64, i64> = Default::default();
    for l in out.lines() {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        if let ["", op, a, n, ""] = f.as_slice() {
            let (Ok(a), Ok(n)) = (a.parse::<i64>(), n.parse::<i64>()) else {
                continue;
            };
            match *op {
                "+I" | "+U" => {
                    last.insert(a, n);
                }
                "-U" | "-D" => {
                    assert_eq!(last.remove(&a), Some(n), "{l}");
                }
                other => panic!("op {other} in {l}"),
            }
        }
    }
    assert_eq!(last.len(), 5, "{text}");
    assert_eq!(last.values().sum::<i64>(), 300, "{text}");
    assert!(out.contains("Received a total of"), "{text}");
    // `spate run -m -f`: Flink's print rows.
    std::fs::write(
        &file,
        format!("{ddl}\nSELECT price * 10 AS p FROM bids WHERE price < 20;\n"),
    )
    .unwrap();
    let o = spate_cli(&["run", "-m", &m, "-p", "2", "-f", file.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("+I[")).collect();
    assert!(!rows.is_empty(), "{out}");

    // The reference: as many as the generator makes at price 7.
    let mut session = spate::sql::Session::new();
    let env = spate::api::StreamExecutionEnvironment::new("reference");
    for s in spate::sql::parse::script(ddl).unwrap() {
        session.execute(&env, &s).unwrap();
    }
    let gen = spate::sql::connector::Datagen::from_table(&session.catalog.tables["bids"]).unwrap();
    let want = (0..300)
        .filter(|i| gen.row(*i, 0).values[1].as_i64().is_some_and(|p| p < 20))
        .count();
    assert_eq!(rows.len(), want, "{out}");
}

#[test]
fn a_sql_file_runs_on_a_cluster_and_equals_the_reference() {
    let (ports, _jm, _tm) = two_slot_cluster();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ddl = "CREATE TABLE bids (auction BIGINT, price BIGINT, ts TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '100' MILLISECOND
) WITH ('connector' = 'datagen', 'rows-per-second' = '0', 'number-of-rows' = '20000',
  'fields.auction.min' = '1', 'fields.auction.max' = '5',
  'fields.price.min' = '1', 'fields.price.max' = '100',
  'fields.ts.start' = '2024-01-01 00:00:00', 'fields.ts.max-past' = '50ms');";
    let script = format!(
        "{ddl}
CREATE TABLE per_second (ws TIMESTAMP(3), auction BIGINT, n BIGINT, total BIGINT)
  WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');
INSERT INTO per_second
SELECT window_start, auction, COUNT(*), SUM(price)
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY window_start, window_end, auction;
",
        out.display()
    );
    let file = dir.path().join("q.sql");
    std::fs::write(&file, &script).unwrap();
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = spate_cli(&["run", "-m", &m, "-p", "2", "-f", file.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    let id = submitted_id(&o);
    assert_eq!(job_state(ports.rest, &id), "FINISHED", "{text}");
    let mut got: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .flat_map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    got.sort();
    // The reference: the same rows, from the same generator.
    let mut session = spate::sql::Session::new();
    let env = spate::api::StreamExecutionEnvironment::new("reference");
    for s in spate::sql::parse::script(ddl).unwrap() {
        session.execute(&env, &s).unwrap();
    }
    let gen = spate::sql::connector::Datagen::from_table(&session.catalog.tables["bids"]).unwrap();
    let mut groups: std::collections::BTreeMap<(i64, i64), (i64, i64)> = Default::default();
    for i in 0..20_000 {
        let r = gen.row(i, 0);
        let (a, p, ts) = (
            r.values[0].as_i64().unwrap(),
            r.values[1].as_i64().unwrap(),
            r.values[2].as_i64().unwrap(),
        );
        let e = groups.entry((ts - ts.rem_euclid(1000), a)).or_default();
        e.0 += 1;
        e.1 += p;
    }
    let mut want: Vec<String> = groups
        .into_iter()
        .map(|((ws, a), (n, total))| {
            format!(
                "{},{a},{n},{total}",
                spate::sql::types::format_timestamp(ws)
            )
        })
        .collect();
    want.sort();
    assert!(want.len() > 50);
    assert_eq!(got, want);
}

/// A real etcd server (Debian's `etcd-server`) on loopback ports of its own, with its
/// data in a temporary directory; it can be restarted on the same data.
struct EtcdServer {
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
}

impl EtcdServer {
    fn start() -> Self {
        let mut e = Self {
            proc: None,
            dir: tempfile::tempdir().unwrap(),
            client: free_port(),
            peer: free_port(),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client);
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .args([
                "--name",
                "spate-test",
                "--data-dir",
                self.dir.path().join("data").to_str().unwrap(),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("spate-test={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server package) must be installed");
        self.proc = Some(Proc(child));
        wait_for("etcd to serve", Duration::from_secs(20), || {
            http(self.client, "POST", "/v3/kv/range", r#"{"key":"AA=="}"#)
                .is_some_and(|(s, _)| s == 200)
        });
    }

    /// Stops etcd (SIGKILL) and starts it again on the same data.
    fn restart(&mut self) {
        drop(self.proc.take());
        self.spawn();
    }

    /// The keys of one cluster id, for a JobManager or a TaskManager.
    fn ha_args(&self, storage: &std::path::Path) -> Vec<String> {
        [
            "high-availability.type=etcd".to_string(),
            format!("high-availability.etcd.endpoints=127.0.0.1:{}", self.client),
            "high-availability.cluster-id=ha-test".into(),
            format!("high-availability.storageDir={}", storage.display()),
            "high-availability.etcd.lease-duration=3 s".into(),
        ]
        .into_iter()
        .flat_map(|kv| ["-D".to_string(), kv])
        .collect()
    }

    /// Keys under `prefix`, with their values.
    fn list(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD;
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let body = format!(
            r#"{{"key":"{}","range_end":"{}"}}"#,
            b.encode(prefix),
            b.encode(&end)
        );
        let Some((200, v)) = http(self.client, "POST", "/v3/kv/range", &body) else {
            return Vec::new();
        };
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        let key = b.decode(kv["key"].as_str().unwrap()).unwrap();
                        let value = b.decode(kv["value"].as_str().unwrap_or("")).unwrap();
                        (String::from_utf8(key).unwrap(), value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The REST port of the JobManager etcd names as the leader.
    fn leader_rest_port(&self) -> Option<u16> {
        let (_, v) = self.list("/spate/ha-test/leader").into_iter().next()?;
        let rec: Value = serde_json::from_slice(&v).ok()?;
        rec["rest"].as_str()?.rsplit(':').next()?.parse().ok()
    }
}

/// Two JobManagers and a two-slot TaskManager with `high-availability.type: etcd`:
/// the first leads; the second stands by (TaskManagers and submissions are sent on).
struct HaCluster {
    jm1: Option<Proc>,
    _jm2: Proc,
    _tm: Proc,
    p1: Ports,
    p2: Ports,
    dir: tempfile::TempDir,
}

fn ha_cluster(etcd: &EtcdServer) -> HaCluster {
    let dir = tempfile::tempdir().unwrap();
    let ha = etcd.ha_args(&dir.path().join("ha"));
    let mut jm: Vec<String> = ha.clone();
    for kv in [
        "restart-strategy.type=fixed-delay".to_string(),
        "restart-strategy.fixed-delay.attempts=20".into(),
        "restart-strategy.fixed-delay.delay=100 ms".into(),
        "execution.checkpointing.interval=200 ms".into(),
        format!(
            "state.checkpoints.dir={}",
            dir.path().join("checkpoints").display()
        ),
    ] {
        jm.push("-D".into());
        jm.push(kv);
    }
    let jm: Vec<&str> = jm.iter().map(String::as_str).collect();
    let (p1, p2) = (
        Ports {
            rpc: free_port(),
            rest: free_port(),
        },
        Ports {
            rpc: free_port(),
            rest: free_port(),
        },
    );
    let jm1 = spate("jobmanager", &p1, &jm);
    wait_for(
        "the first JobManager to lead",
        Duration::from_secs(20),
        || etcd.leader_rest_port() == Some(p1.rest),
    );
    let jm2 = spate("jobmanager", &p2, &jm);
    let mut tm: Vec<&str> = ha.iter().map(String::as_str).collect();
    tm.extend(["-D", "taskmanager.numberOfTaskSlots=2"]);
    // The TaskManager is told no JobManager address: it finds the leader in etcd.
    let tm = spate("taskmanager", &Ports { rpc: 1, rest: 1 }, &tm);
    wait_for(
        "the TaskManager at the leader",
        Duration::from_secs(20),
        || taskmanager_count(p1.rest) == Some(1),
    );
    HaCluster {
        jm1: Some(jm1),
        _jm2: jm2,
        _tm: tm,
        p1,
        p2,
        dir,
    }
}

fn submit_vwap(rest: u16, out: &std::path::Path, events: u64) -> String {
    let o = spate_cli(&[
        "run",
        "-m",
        &format!("127.0.0.1:{rest}"),
        "-d",
        "-p",
        "2",
        "--events",
        &events.to_string(),
        "--rate",
        "40000",
        "--output",
        out.to_str().unwrap(),
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    submitted_id(&o)
}

fn completed_checkpoints(rest: u16, id: &str) -> u64 {
    http(rest, "GET", &format!("/jobs/{id}/checkpoints"), "")
        .map_or(0, |(_, v)| v["counts"]["completed"].as_u64().unwrap_or(0))
}

/// etcd high availability: the leading JobManager is SIGKILLed while W1 runs with
/// checkpoints into the exactly-once file sink; the standby takes over through etcd,
/// the TaskManager finds and registers with it, the job (same id) resumes from the
/// latest completed checkpoint etcd points to and finishes, and the committed output
/// is the single-threaded computation exactly. A standby refuses submissions and
/// names the leader; the CLI finds the leader through etcd; an ended job leaves the
/// job store.
#[test]
fn etcd_ha_a_standby_takes_over_from_a_killed_leader_exactly_once() {
    let etcd = EtcdServer::start();
    let mut c = ha_cluster(&etcd);
    // The standby has no TaskManager and sends submissions to the leader.
    assert_eq!(taskmanager_count(c.p2.rest), Some(0));
    let (status, v) = http(c.p2.rest, "POST", "/jobs", r#"{"job": "vwap"}"#).unwrap();
    assert_eq!(status, 503, "{v}");
    assert!(
        v.to_string().contains(&format!("127.0.0.1:{}", c.p1.rest)),
        "{v}"
    );
    let out = c.dir.path().join("out");
    let events = 200_000u64;
    let id = submit_vwap(c.p1.rest, &out, events);
    assert_eq!(
        etcd.list("/spate/ha-test/jobgraphs/").len(),
        1,
        "the job is stored"
    );
    wait_for("a completed checkpoint", Duration::from_secs(30), || {
        completed_checkpoints(c.p1.rest, &id) >= 2
    });
    drop(c.jm1.take()); // SIGKILL the leader
    wait_for("the standby to lead", Duration::from_secs(20), || {
        etcd.leader_rest_port() == Some(c.p2.rest)
    });
    wait_for(
        "the job FINISHED on the new leader",
        Duration::from_secs(90),
        || {
            let s = job_state(c.p2.rest, &id);
            assert_ne!(s, "FAILED", "the job failed");
            s == "FINISHED"
        },
    );
    assert_exact_vwap(&out, events, "after the leader was killed");
    let (_, cps) = http(c.p2.rest, "GET", &format!("/jobs/{id}/checkpoints"), "").unwrap();
    assert_eq!(
        cps["counts"]["restored"], 1,
        "resumed from a checkpoint: {cps}"
    );
    // At least the second: the leader completed two before it was killed.
    let restored = &cps["latest"]["restored"];
    assert!(restored["id"].as_u64().unwrap() >= 2, "{cps}");
    assert!(
        restored["external_path"]
            .as_str()
            .unwrap()
            .contains(&format!("{id}/chk-")),
        "{cps}"
    );
    wait_for("the job store to be empty", Duration::from_secs(5), || {
        etcd.list("/spate/ha-test/jobgraphs/").is_empty()
            && etcd.list("/spate/ha-test/checkpoints/").is_empty()
    });
    // The CLI, given the configuration and no -m, finds the leader through etcd.
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("config.yaml"),
        format!(
            "high-availability.type: etcd\nhigh-availability.etcd.endpoints: 127.0.0.1:{}\nhigh-availability.cluster-id: ha-test\n",
            etcd.client
        ),
    )
    .unwrap();
    let o = spate_cli(&["list", "--config-dir", conf.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
}

/// Fencing: the leading JobManager is paused (SIGSTOP) while W1 runs; its lease
/// lapses and the standby takes the job over. When the old leader wakes, it stops
/// acting at once (no jobs, no TaskManagers, submissions refused) instead of going on
/// with the job beside the new leader. Then etcd itself restarts (SIGKILL, same data).
/// The job finishes once, exactly.
#[test]
fn etcd_ha_a_paused_leader_that_wakes_is_fenced_and_etcd_can_restart() {
    let mut etcd = EtcdServer::start();
    let c = ha_cluster(&etcd);
    let out = c.dir.path().join("out");
    let events = 200_000u64;
    let id = submit_vwap(c.p1.rest, &out, events);
    wait_for("a completed checkpoint", Duration::from_secs(30), || {
        completed_checkpoints(c.p1.rest, &id) >= 2
    });
    let jm1 = c.jm1.as_ref().unwrap();
    signal(jm1, "-STOP");
    wait_for("the standby to lead", Duration::from_secs(20), || {
        etcd.leader_rest_port() == Some(c.p2.rest)
    });
    wait_for(
        "the job running on the new leader",
        Duration::from_secs(30),
        || job_state(c.p2.rest, &id) == "RUNNING",
    );
    signal(jm1, "-CONT");
    wait_for(
        "the woken leader to stand down",
        Duration::from_secs(10),
        || {
            http(c.p1.rest, "GET", "/jobs/overview", "")
                .is_some_and(|(_, v)| v["jobs"].as_array().is_some_and(Vec::is_empty))
                && taskmanager_count(c.p1.rest) == Some(0)
        },
    );
    let (status, _) = http(c.p1.rest, "POST", "/jobs", r#"{"job": "vwap"}"#).unwrap();
    assert_eq!(status, 503);
    assert_eq!(etcd.leader_rest_port(), Some(c.p2.rest));
    etcd.restart();
    // Whoever leads after etcd's restart (the lease survives a short outage), the job
    // finishes there.
    wait_for("the job FINISHED", Duration::from_secs(90), || {
        let Some(rest) = etcd.leader_rest_port() else {
            return false;
        };
        let s = job_state(rest, &id);
        assert_ne!(s, "FAILED", "the job failed");
        s == "FINISHED"
    });
    assert_exact_vwap(
        &out,
        events,
        "after a pause of the leader and an etcd restart",
    );
}

/// The election and fencing against a real etcd, through the library: one of two
/// candidates leads and writes under its token; when its leader key is deleted behind
/// its back (as when its lease lapsed unseen), the other leads with a larger token, and
/// the deposed leader's next write is refused by etcd's transaction and makes it give
/// leadership up, though its local lease clock had not run out.
#[test]
fn etcd_ha_a_deposed_leaders_writes_are_refused_by_etcd() {
    use spate::ha::{HaError, LeaderElection, LeaderRecord, Op};
    let etcd = EtcdServer::start();
    let mut cfg = spate::config::Config::default();
    for (k, v) in [
        ("high-availability.type", "etcd".to_string()),
        (
            "high-availability.etcd.endpoints",
            format!("127.0.0.1:{}", etcd.client),
        ),
        ("high-availability.cluster-id", "ha-test".into()),
        ("high-availability.etcd.lease-duration", "30 s".into()),
    ] {
        cfg.set(k, &v, "-D").unwrap();
    }
    let record = |id: &str, port: u16| LeaderRecord {
        id: id.into(),
        rpc: format!("127.0.0.1:{port}"),
        rest: format!("127.0.0.1:{port}"),
        token: 0,
    };
    // A leader key without a lease (written by hand) is no leader's: it is removed,
    // not waited for.
    http(
        etcd.client,
        "POST",
        "/v3/kv/put",
        r#"{"key":"L3NwYXRlL2hhLXRlc3QvbGVhZGVy","value":"Z2FyYmFnZQ=="}"#,
    )
    .unwrap();
    let a = LeaderElection::start(&cfg.ha, record("a", 1)).unwrap();
    wait_for("a to lead", Duration::from_secs(20), || {
        a.leading().is_some()
    });
    let b = LeaderElection::start(&cfg.ha, record("b", 2)).unwrap();
    let ta = a.leading().unwrap();
    a.write(
        ta,
        &[Op::Put("/spate/ha-test/x".into(), b"from a".to_vec())],
    )
    .unwrap();
    wait_for("b to see a lead", Duration::from_secs(20), || {
        b.leader().is_some_and(|l| l.id == "a" && l.token == ta)
    });
    assert_eq!(b.leading(), None);
    // Delete the leader key (its lease lives on: a still believes it leads).
    http(
        etcd.client,
        "POST",
        "/v3/kv/deleterange",
        r#"{"key":"L3NwYXRlL2hhLXRlc3QvbGVhZGVy"}"#,
    )
    .unwrap();
    wait_for("b to lead", Duration::from_secs(30), || {
        b.leading().is_some()
    });
    let tb = b.leading().unwrap();
    assert!(tb > ta, "tokens grow: {tb} after {ta}");
    assert_eq!(a.leading(), Some(ta), "a's own clock says it still leads");
    match a.write(ta, &[Op::Put("/spate/ha-test/x".into(), b"stale".to_vec())]) {
        Err(HaError::NotLeader) => {}
        other => panic!("a deposed leader's write went through: {other:?}"),
    }
    assert_eq!(a.leading(), None, "a refused write deposes at once");
    let x = etcd.list("/spate/ha-test/x");
    assert_eq!(x[0].1, b"from a", "the stale write left nothing");
    b.write(
        tb,
        &[Op::Put("/spate/ha-test/x".into(), b"from b".to_vec())],
    )
    .unwrap();
}

/// Shared secrets: with `security.internal.secret` set, a TaskManager without it (or
/// with another) never registers and an RPC client that does not hold it fails the
/// handshake, while TaskManagers that hold it register and run W1 across the data
/// ports (`same-host: tcp`, so records cross the authenticated data connections).
/// With `security.rest.secret`, the REST API answers 401 without the bearer token
/// (the web UI's page still loads), and the CLI sends it from its configuration.
#[test]
fn peers_and_clients_without_the_cluster_secrets_are_refused() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("internal-secret");
    std::fs::write(&secret_file, "correct horse battery staple\n").unwrap();
    let internal = format!("security.internal.secret-file={}", secret_file.display());
    let with_secret = ["-D", internal.as_str()];
    let _jm = spate(
        "jobmanager",
        &ports,
        &[
            "-D",
            internal.as_str(),
            "-D",
            "security.rest.secret=rest token",
            "-D",
            "taskmanager.network.same-host=tcp",
        ],
    );
    let authed = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", ports.rest)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer rest token\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status: u16 = resp.split(' ').nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n")?.1.to_string();
        Some((
            status,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        ))
    };
    wait_for("the REST API", Duration::from_secs(15), || {
        authed("/overview").is_some_and(|(s, _)| s == 200)
    });
    // REST: no token, a wrong one, then the cookie the web UI sets.
    let (status, v) = http(ports.rest, "GET", "/jobs/overview", "").unwrap();
    assert_eq!(status, 401, "{v}");
    assert!(v["errors"][0]
        .as_str()
        .unwrap()
        .contains("security.rest.secret"));
    let (status, _) = http(ports.rest, "POST", "/v1/jobs", r#"{"job": "vwap"}"#).unwrap();
    assert_eq!(status, 401, "a submission without the token");
    let raw = |req: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", ports.rest)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let wrong = raw("GET /overview HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nConnection: close\r\n\r\n");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(
        wrong
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{wrong}"
    );
    let cookie = raw("GET /overview HTTP/1.1\r\nHost: x\r\nCookie: theme=dark; spate-token=rest%20token\r\nConnection: close\r\n\r\n");
    assert!(cookie.starts_with("HTTP/1.1 200"), "{cookie}");
    let page = raw("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        page.starts_with("HTTP/1.1 200"),
        "the dashboard's page loads: {page}"
    );

    // RPC: a client without the secret fails the handshake on its own check of the
    // JobManager's proof; one with it completes it.
    let mut s = TcpStream::connect(("127.0.0.1", ports.rpc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let e = spate::rpc::handshake_blocking(&mut s, &spate::security::Secret::none()).unwrap_err();
    assert_eq!(e, spate::rpc::ProtocolError::Unauthenticated);
    let mut s = TcpStream::connect(("127.0.0.1", ports.rpc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let right = spate::security::Secret::new(b"correct horse battery staple");
    spate::rpc::handshake_blocking(&mut s, &right).unwrap();

    // TaskManagers: one without the secret and one with another never register.
    let _none = spate("taskmanager", &ports, &[]);
    let _other = spate(
        "taskmanager",
        &ports,
        &["-D", "security.internal.secret=guess"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let (_, tms) = authed("/taskmanagers").unwrap();
    assert_eq!(tms["taskmanagers"].as_array().unwrap().len(), 0, "{tms}");
    let _tm1 = spate("taskmanager", &ports, &with_secret);
    let _tm2 = spate("taskmanager", &ports, &with_secret);
    wait_for("two TaskManagers", Duration::from_secs(15), || {
        authed("/taskmanagers")
            .is_some_and(|(_, v)| v["taskmanagers"].as_array().is_some_and(|a| a.len() == 2))
    });

    // The CLI: refused without the token; with it from its configuration directory,
    // it submits W1 across both TaskManagers, which finishes.
    let m = format!("127.0.0.1:{}", ports.rest);
    let o = spate_cli(&["list", "-m", &m]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("config.yaml"),
        "security.rest.secret: rest token\n",
    )
    .unwrap();
    let conf_dir = conf.path().to_str().unwrap();
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "--config-dir",
        conf_dir,
        "-d",
        "-p",
        "2",
        "--events",
        "20000",
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("W1 FINISHED", Duration::from_secs(60), || {
        let s = authed(&format!("/jobs/{id}"))
            .map(|(_, v)| v["state"].as_str().unwrap_or("").to_string())
            .unwrap_or_default();
        assert_ne!(s, "FAILED");
        s == "FINISHED"
    });
    // Its records crossed the data connections between the two TaskManagers (network
    // counters come with heartbeats: the next ones show them).
    wait_for(
        "bytes received over the data connections",
        Duration::from_secs(10),
        || {
            authed("/taskmanagers").is_some_and(|(_, tms)| {
                tms["taskmanagers"].as_array().is_some_and(|a| {
                    a.iter()
                        .all(|t| t["network"]["bytesIn"].as_u64().unwrap_or(0) > 0)
                })
            })
        },
    );
    let o = spate_cli(&["list", "-m", &m, "--config-dir", conf_dir]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
}

/// `security.job.allowed-dirs`: a submission whose file sink, SQL table, savepoint to
/// restore or savepoint target lies outside the allowed directories (or escapes them
/// with '..') is refused with a message naming the path and the setting; one inside
/// them runs.
#[test]
fn submitted_jobs_cannot_name_paths_outside_the_allowed_directories() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let outside = dir.path().join("outside");
    let key = format!("security.job.allowed-dirs={}", allowed.display());
    let _jm = spate("jobmanager", &ports, &["-D", &key]);
    let _tm = spate("taskmanager", &ports, &["-D", &key]);
    wait_for("a TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let refused = |o: &std::process::Output, path: &str| {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{err}");
        assert!(
            err.contains("security.job.allowed-dirs") && err.contains(path),
            "{err}"
        );
    };
    let out = outside.join("out");
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-d",
        "--events",
        "1000",
        "--output",
        out.to_str().unwrap(),
        "vwap",
    ]);
    refused(&o, out.to_str().unwrap());
    let sneaky = format!("{}/../outside/out", allowed.display());
    let o = spate_cli(&[
        "run", "-m", &m, "-d", "--events", "1000", "--output", &sneaky, "vwap",
    ]);
    refused(&o, &sneaky);
    let o = spate_cli(&["run", "-m", &m, "-d", "-s", "/etc", "vwap"]);
    refused(&o, "/etc");
    // The file:// form of a path outside, and a text file read from outside.
    let scheme = format!("file://{}", out.display());
    let o = spate_cli(&[
        "run", "-m", &m, "-d", "--events", "1000", "--output", &scheme, "vwap",
    ]);
    refused(&o, out.to_str().unwrap());
    let o = spate_cli(&["run", "-m", &m, "-d", "wordcount", "/etc/hostname"]);
    refused(&o, "/etc/hostname");
    let sql = dir.path().join("q.sql");
    std::fs::write(
        &sql,
        format!(
            "CREATE TABLE src (a INT) WITH ('connector' = 'datagen', 'number-of-rows' = '10');\n\
             CREATE TABLE t (a INT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv');\n\
             INSERT INTO t SELECT a FROM src;\n",
            outside.join("table").display()
        ),
    )
    .unwrap();
    let o = spate_cli(&["run", "-m", &m, "-d", "-f", sql.to_str().unwrap()]);
    refused(&o, outside.join("table").to_str().unwrap());
    assert_eq!(
        http(ports.rest, "GET", "/jobs/overview", "").unwrap().1["jobs"]
            .as_array()
            .unwrap()
            .len(),
        0,
        "nothing ran"
    );
    // Inside: runs; a savepoint outside is refused, inside taken.
    let inside = allowed.join("out");
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-d",
        "--events",
        "100000000",
        "--rate",
        "10000",
        "--output",
        inside.to_str().unwrap(),
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    let target = outside.join("savepoints");
    let o = spate_cli(&["savepoint", "-m", &m, &id, target.to_str().unwrap()]);
    refused(&o, target.to_str().unwrap());
    let o = spate_cli(&["cancel", "-m", &m, &id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!outside.exists(), "nothing was written outside");
}

/// A job whose builder takes 3 s (three heartbeat timeouts here): the TaskManager
/// builds its deployments on builder threads, so its heartbeats go on, the
/// JobManager keeps it, and the job runs; a cancel that arrives while the
/// deployments are still being built ends them without running them.
#[test]
fn a_slow_job_builder_stalls_nothing_on_a_taskmanager() {
    let bin = example_binary();
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let _jm = spawn(&bin, "jobmanager", &ports, &[]);
    let tm_args = ["-D", "taskmanager.numberOfTaskSlots=2"];
    let _tm = spawn(&bin, "taskmanager", &ports, &tm_args);
    wait_for("the TaskManager", Duration::from_secs(15), || {
        taskmanager_count(ports.rest) == Some(1)
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    let submit = || {
        let o = cli_of(
            &bin,
            &[
                "run",
                "-m",
                &m,
                "-d",
                "--events",
                "0",
                "--rate",
                "10000",
                "--window",
                "3 s",
                "slow-build",
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        submitted_id(&o)
    };
    let tm_id = || {
        http(ports.rest, "GET", "/taskmanagers", "").unwrap().1["taskmanagers"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = tm_id();
    let id = submit();
    wait_for("RUNNING", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
    assert_eq!(tm_id(), first, "the TaskManager was never lost");
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    assert_eq!(job["restarts"], 0, "{job}");
    let o = cli_of(&bin, &["cancel", "-m", &m, &id]);
    assert!(o.status.success());
    wait_for("CANCELED", Duration::from_secs(10), || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    // Cancelled while its deployments build: they end CANCELED without running.
    let id = submit();
    std::thread::sleep(Duration::from_millis(500));
    let o = cli_of(&bin, &["cancel", "-m", &m, &id]);
    assert!(o.status.success());
    wait_for("CANCELED", Duration::from_secs(15), || {
        job_state(ports.rest, &id) == "CANCELED"
    });
    assert_eq!(tm_id(), first);
    // Its slots are free again: the next job gets them.
    let id = submit();
    wait_for("RUNNING again", Duration::from_secs(20), || {
        job_state(ports.rest, &id) == "RUNNING"
    });
}

/// Latency across hosts whose clocks differ: one TaskManager's clock runs 5 s ahead
/// (`SPATE_CLOCK_SKEW_NS`, as a host booted at another time). It estimates its offset to
/// the JobManager's clock from heartbeat round trips (shown in `/taskmanagers`), and
/// records and latency markers are stamped and aged on the cluster's clock: W1 across
/// the two, its records crossing between them over TCP, reports latencies of the
/// machine (well under a second), not the 5 s skew. Its latency markers are turned on
/// for this job alone (`run -D metrics.latency.interval`).
#[test]
fn latencies_across_hosts_with_different_clocks_are_measured_on_the_cluster_clock() {
    let ports = Ports {
        rpc: free_port(),
        rest: free_port(),
    };
    let common = ["-D", "taskmanager.network.same-host=tcp"];
    let _jm = spate("jobmanager", &ports, &common);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_spate"));
    let _tm1 = spawn_env(bin, "taskmanager", &ports, &common, &[]);
    let skew = 5_000_000_000i64;
    let _tm2 = spawn_env(
        bin,
        "taskmanager",
        &ports,
        &common,
        &[("SPATE_CLOCK_SKEW_NS", &skew.to_string())],
    );
    let clocks = || -> Vec<Value> {
        http(ports.rest, "GET", "/taskmanagers", "")
            .map(|(_, v)| v["taskmanagers"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
            .iter()
            .map(|t| t["clock"].clone())
            .collect()
    };
    wait_for("both clocks known", Duration::from_secs(20), || {
        let c = clocks();
        c.len() == 2
            && c.iter().any(|c| c["sameAsJobManager"] == true)
            && c.iter().any(|c| {
                c["sameAsJobManager"] == false
                    && (c["offsetNs"].as_i64().unwrap_or(0) + skew).abs() < 5_000_000
            })
    });
    let m = format!("127.0.0.1:{}", ports.rest);
    // Latency markers for this job alone (Flink's key, as a job's setting).
    let o = spate_cli(&[
        "run",
        "-m",
        &m,
        "-p",
        "2",
        "--events",
        "100000",
        "--rate",
        "50000",
        "-D",
        "metrics.latency.interval=20 ms",
        "vwap",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = submitted_id(&o);
    let (_, v) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/metrics?get=latency_count,latency_max"),
        "",
    )
    .unwrap();
    let metric = |v: &Value, name: &str| -> f64 {
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == name))
            .and_then(|x| x["value"].as_str())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    // Both directions were measured (records from the skewed host's sources too).
    assert!(metric(&v, "latency_count") > 5000.0, "{v}");
    assert!(
        metric(&v, "latency_max") < 1e9,
        "the skew leaked into latencies: {v}"
    );
    // Markers from the sources reached the sinks on both hosts, within the machine's
    // latency.
    let (_, job) = http(ports.rest, "GET", &format!("/jobs/{id}"), "").unwrap();
    let vertices = job["vertices"].as_array().unwrap();
    let sink = vertices[vertices.len() - 1]["id"].as_str().unwrap();
    let (_, mv) = http(
        ports.rest,
        "GET",
        &format!(
            "/jobs/{id}/vertices/{sink}/metrics?get=latencyFromSource_count,latencyFromSource_max"
        ),
        "",
    )
    .unwrap();
    assert!(metric(&mv, "latencyFromSource_count") > 0.0, "{mv}");
    assert!(metric(&mv, "latencyFromSource_max") < 1e9, "{mv}");
    // The chained VWAP operator's own time per record, sampled with the markers.
    let (_, ids) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/vertices/{sink}/metrics"),
        "",
    )
    .unwrap();
    assert!(
        ids.to_string().contains("\"VWAP.timePerRecord_p99\""),
        "{ids}"
    );
    let (_, ov) = http(
        ports.rest,
        "GET",
        &format!("/jobs/{id}/vertices/{sink}/metrics?get=VWAP.timePerRecord_count"),
        "",
    )
    .unwrap();
    assert!(metric(&ov, "VWAP.timePerRecord_count") > 0.0, "{ov}");
}
