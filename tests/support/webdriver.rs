//! A headless Chromium driven through ChromeDriver's W3C WebDriver protocol (plain
//! HTTP and JSON): what the web UI's tests load pages in and click with. Debian's
//! `chromium` and `chromium-driver` packages provide both (`.ci/run` installs them).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A ChromeDriver process and one browser session; both end on drop.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

fn find(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find(|n| {
            Command::new(n)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|n| (*n).to_string())
}

impl Browser {
    /// Starts ChromeDriver on a free port and opens a headless session.
    pub fn start() -> Browser {
        let driver_bin = find(&["chromedriver", "/usr/bin/chromedriver"]).unwrap_or_else(|| {
            panic!(
                "chromedriver is required (Debian's chromium-driver package; .ci/run installs it)"
            )
        });
        let chromium = find(&["chromium", "/usr/bin/chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("chromium is required (Debian's chromium package)"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let start = Instant::now();
        loop {
            let ready = ureq::get(&format!("{base}/status"))
                .timeout(Duration::from_secs(2))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "chromedriver did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium_path(&chromium),
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1400,1000",
                        format!("--user-data-dir={}", profile.path().display()),
                    ]
                }
            }}
        });
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let v = b.call("POST", "/session", Some(caps));
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let r = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        let v: Value = match r {
            Ok(resp) => resp.into_json().unwrap_or(Value::Null),
            Err(ureq::Error::Status(code, resp)) => {
                let v: Value = resp.into_json().unwrap_or(Value::Null);
                panic!("WebDriver {method} {path}: {code} {v}")
            }
            Err(e) => panic!("WebDriver {method} {path}: {e}"),
        };
        v["value"].clone()
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn js(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// The visible text of the first element `css` selects (`None`: there is none).
    pub fn text(&self, css: &str) -> Option<String> {
        let sel = serde_json::to_string(css).unwrap();
        self.js(&format!(
            "const e = document.querySelector({sel}); return e ? e.innerText : null;"
        ))
        .as_str()
        .map(str::to_string)
    }

    /// Clicks the first element `css` selects, as a user would. The dashboard redraws
    /// live parts of its pages every second: an element replaced between finding and
    /// clicking it (a stale reference) is found again.
    pub fn click(&self, css: &str) {
        for _ in 0..20 {
            let e = self.session_call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            );
            let id = e
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no element {css}: {e}"))
                .to_string();
            let url = format!("{}/session/{}/element/{id}/click", self.base, self.session);
            match ureq::post(&url)
                .timeout(Duration::from_secs(60))
                .send_json(json!({}))
            {
                Ok(_) => return,
                Err(ureq::Error::Status(_, resp)) => {
                    let v: Value = resp.into_json().unwrap_or(Value::Null);
                    if v["value"]["error"] != "stale element reference" {
                        panic!("clicking {css}: {v}");
                    }
                }
                Err(e) => panic!("clicking {css}: {e}"),
            }
        }
        panic!("{css} kept being replaced before it could be clicked");
    }

    /// Waits until `script` returns something other than null, false or an empty
    /// string, and returns it.
    pub fn wait_js(&self, what: &str, timeout: Duration, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            if !v.is_null() && v != Value::Bool(false) && v != Value::String(String::new()) {
                return v;
            }
            if start.elapsed() > timeout {
                let page = self.text("body").unwrap_or_default();
                panic!("timed out waiting for {what}; the page shows:\n{page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn chromium_path(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|f| f.is_file())
        })
        .map_or_else(|| name.to_string(), |p| p.display().to_string())
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session))
                .timeout(Duration::from_secs(10))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
