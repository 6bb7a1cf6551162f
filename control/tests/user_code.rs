//! User code that panics is that job's failure: the JobManager that declared the job
//! serves on.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate::config::Config;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

#[test]
fn a_job_builder_that_panics_fails_its_submission_and_the_jobmanager_serves_on() {
    spate::jobs::register("panics", |_, spec| {
        // Reads an argument it was not given, as a careless builder would.
        let n: usize = spec.args[0].parse().unwrap_or(0);
        let _ = n;
        Ok(())
    });
    let config = Config {
        jobmanager_address: "127.0.0.1".into(),
        jobmanager_port: 0,
        rest_port: 0,
        ..Config::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let s = stop.clone();
    let jm = std::thread::spawn(move || {
        let mut jm = spate::cluster::jobmanager::JobManager::start(&config).unwrap();
        tx.send(jm.rest_addr()).unwrap();
        jm.run(&s);
    });
    let rest = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let (status, body) = http(rest, "POST", "/jobs", r#"{"job": "panics"}"#).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("builder of job 'panics' panicked"), "{body}");
    // Still there, and still taking jobs.
    let (status, _) = http(rest, "GET", "/overview", "").unwrap();
    assert_eq!(status, 200);
    let (status, body) = http(rest, "POST", "/jobs", r#"{"job": "panics"}"#).unwrap();
    assert_eq!(status, 400, "{body}");
    stop.store(true, Ordering::Relaxed);
    jm.join().unwrap();
}
