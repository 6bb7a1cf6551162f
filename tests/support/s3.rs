//! An S3-compatible server for tests: moto's (`pip install 'moto[s3,server]'`, which
//! `.ci/run` does), started on a free loopback port and stopped when dropped.

use std::time::{Duration, Instant};

/// A running S3-compatible server.
pub struct S3Server {
    child: std::process::Child,
    /// Its URL (`http://127.0.0.1:PORT`).
    pub endpoint: String,
}

impl S3Server {
    /// Starts one and waits (at most 30 s) until it answers.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start moto_server ({e}): pip install 'moto[s3,server]' (.ci/run does)"
                )
            });
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&server.endpoint).call().is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates bucket `name`.
    pub fn bucket(&self, name: &str) {
        if let Err(e) = ureq::put(&format!("{}/{name}", self.endpoint)).call() {
            panic!("creating bucket {name}: {e}");
        }
    }

    /// Whether the bucket's listing (S3's ListObjects) holds `key`.
    pub fn holds(&self, bucket: &str, key: &str) -> bool {
        let url = format!("{}/{bucket}?prefix={key}", self.endpoint);
        let body = match ureq::get(&url).call() {
            Ok(r) => r.into_string().unwrap_or_default(),
            Err(e) => panic!("{url}: {e}"),
        };
        body.contains(&format!("<Key>{key}</Key>"))
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
