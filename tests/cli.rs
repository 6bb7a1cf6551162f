//! The `spate` binary, run for real: built-in jobs, job graphs, and bad input that must
//! give a clear error and exit code, never a panic.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

fn spate(args: &[&str], conf: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(args)
        .env("SPATE_CONF_DIR", conf)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn conf_dir(yaml: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.yaml"), yaml).unwrap();
    d
}

const TEST_CONF: &str = "taskmanager.numberOfTaskSlots: 2\ntaskmanager.idle-strategy: backoff\ntaskmanager.memory.ring-size: 64kb\n";

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn vwap_runs_and_reports_figures_and_json() {
    let conf = conf_dir(TEST_CONF);
    let json = conf.path().join("summary.json");
    for p in ["1", "2"] {
        let o = spate(
            &[
                "run",
                "-p",
                p,
                "--events",
                "200000",
                "--json",
                json.to_str().unwrap(),
                "vwap",
            ],
            conf.path(),
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{out}\n{err}");
        assert!(out.contains("events       200000"), "{out}");
        assert!(out.contains("p99.99"), "{out}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["job"], "vwap");
        assert_eq!(v["events"], 200000);
        assert_eq!(v["parallelism"].to_string(), p);
        for k in [
            "seconds",
            "events_per_s",
            "p50_ns",
            "p99_ns",
            "p999_ns",
            "p9999_ns",
            "max_ns",
        ] {
            assert!(v[k].is_number(), "{k} in {v}");
        }
    }
}

#[test]
fn paced_vwap_charges_latency_from_the_scheduled_time() {
    let conf = conf_dir(TEST_CONF);
    let o = spate(
        &["run", "--events", "20000", "--rate", "100000", "vwap"],
        conf.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // 20k events at 100k/s take about 0.2 s.
    let secs: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("seconds"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(secs >= 0.19, "{out}");
}

#[test]
fn wordcount_prints_rolling_counts() {
    let conf = conf_dir(TEST_CONF);
    let input = conf.path().join("words.txt");
    std::fs::write(&input, "to be or not to be\nthat is the question\n").unwrap();
    let o = spate(&["run", "wordcount", input.to_str().unwrap()], conf.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("(\"to\", 2)"), "{out}");
    assert!(out.contains("(\"be\", 2)"), "{out}");
    assert!(out.contains("(\"question\", 1)"), "{out}");
}

#[test]
fn info_prints_the_job_graph_for_each_chaining_setting() {
    let conf = conf_dir(TEST_CONF);
    let o = spate(&["info", "-p", "1", "vwap"], conf.path());
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains("[0] Trade Source -> Filter qty>0 -> VWAP -> Latency Sink  (parallelism 1"),
        "{out}"
    );
    assert!(out.contains("(none: the whole job is one chain)"), "{out}");

    let o = spate(&["info", "-p", "2", "vwap"], conf.path());
    let (out, _) = text(&o);
    assert!(
        out.contains("[0] Trade Source -> Filter qty>0  (parallelism 2"),
        "{out}"
    );
    assert!(out.contains("Slots needed: 2"), "{out}");
    assert!(out.contains("--HASH--> [1] VWAP -> Latency Sink"), "{out}");

    let o = spate(
        &[
            "info",
            "-p",
            "1",
            "-D",
            "pipeline.operator-chaining.enabled=false",
            "vwap",
        ],
        conf.path(),
    );
    let (out, _) = text(&o);
    assert!(out.contains("[0] Trade Source  (parallelism 1"), "{out}");
    assert!(
        out.contains("[0] Trade Source --FORWARD--> [1] Filter qty>0"),
        "{out}"
    );
    assert!(
        out.contains("[1] Filter qty>0 --FORWARD--> [2] VWAP"),
        "{out}"
    );
    assert!(
        out.contains("[2] VWAP --FORWARD--> [3] Latency Sink"),
        "{out}"
    );
}

#[test]
fn system_and_client_parallelism() {
    let conf = conf_dir(&format!("{TEST_CONF}parallelism.default: 2\n"));
    let (out, _) = text(&spate(&["info", "vwap"], conf.path()));
    assert!(out.contains("(parallelism 2"), "{out}");
    let (out, _) = text(&spate(&["info", "-p", "1", "vwap"], conf.path()));
    assert!(out.contains("(parallelism 1"), "{out}");
}

fn fails_with(args: &[&str], conf: &Path, code: i32, needle: &str) {
    let o = spate(args, conf);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}\n{out}\n{err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected {needle:?} in\n{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let good = conf_dir(TEST_CONF);
    let p = good.path();
    fails_with(&["run", "nosuchjob"], p, 2, "unknown job 'nosuchjob'");
    fails_with(
        &[
            "run",
            "-D",
            "execution.runtime-mode=BATCH",
            "--events",
            "0",
            "vwap",
        ],
        p,
        2,
        "BATCH runtime mode needs every source to end",
    );
    fails_with(
        &["run", "-D", "execution.runtime-mode=SOMETIMES", "vwap"],
        p,
        2,
        "STREAMING or BATCH",
    );
    fails_with(
        &["run", "--window", "0 s", "bars"],
        p,
        2,
        "--window must be positive",
    );
    fails_with(
        &["run", "--disorder", "soon", "bars"],
        p,
        2,
        "--disorder must be a duration",
    );
    fails_with(
        &["run", "wordcount", "/no/such/file.txt"],
        p,
        2,
        "cannot read /no/such/file.txt",
    );
    fails_with(
        &["run", "wordcount"],
        p,
        2,
        "usage: spate run wordcount FILE",
    );
    fails_with(
        &["run", "-D", "parallelism.default", "vwap"],
        p,
        2,
        "expected key=value",
    );
    fails_with(
        &["run", "-D", "no.such.key=1", "vwap"],
        p,
        2,
        "unknown configuration key 'no.such.key'",
    );
    fails_with(
        &["run", "-D", "taskmanager.idle-strategy=sometimes", "vwap"],
        p,
        2,
        "'sometimes' for 'taskmanager.idle-strategy'",
    );
    fails_with(&["run", "-p", "0", "vwap"], p, 2, "-p must be at least 1");
    fails_with(
        &["run", "--rate", "-5", "vwap"],
        p,
        2,
        "--rate must be a positive",
    );
    fails_with(
        &["run", "-p", "3", "--events", "10", "vwap"],
        p,
        2,
        "needs 3 task slots but the cluster has 2",
    );
    let bad = conf_dir("taskmanager.numberOfSlots: 2\n");
    fails_with(
        &["run", "vwap"],
        bad.path(),
        2,
        "unknown configuration key 'taskmanager.numberOfSlots'",
    );
    let bad = conf_dir("rest.port: [1, 2\n");
    fails_with(&["run", "vwap"], bad.path(), 2, "not valid YAML");
    let o = spate(&["frobnicate"], p);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn every_command_has_help() {
    let conf = conf_dir(TEST_CONF);
    for args in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["info", "--help"],
        vec!["sql", "--help"],
    ] {
        let o = spate(&args, conf.path());
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage"));
    }
}

#[test]
fn ctrl_c_cancels_an_unbounded_job_and_still_prints_the_summary() {
    let conf = conf_dir(TEST_CONF);
    let child = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["run", "--events", "0", "--rate", "200000", "vwap"])
        .env("SPATE_CONF_DIR", conf.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("status       Canceled"), "{out}");
    assert!(out.contains("p99.99"), "{out}");
    assert!(err.contains("events"), "live progress on stderr: {err}");
}

/// `--hlog FILE` writes the latency as an HdrHistogram interval log: one histogram per
/// second, read back here with the HdrHistogram crate's own log reader and with the
/// HdrHistogram project's Python implementation (`hdrh`, PyPI's `hdrhistogram`, which
/// `.ci/run` installs); together they hold every record's latency (a paced run measures
/// each one), and both readers find the same percentiles.
#[test]
fn hlog_writes_an_interval_log_that_hdrhistogram_reads() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let conf = conf_dir(TEST_CONF);
    let log = conf.path().join("latency.hlog");
    let o = spate(
        &[
            "run",
            "--rate",
            "1000000",
            "--events",
            "2500000",
            "--hlog",
            log.to_str().unwrap(),
            "vwap",
        ],
        conf.path(),
    );
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("latency interval log in"), "{err}");
    let bytes = std::fs::read(&log).unwrap();
    let mut intervals = 0u64;
    let mut total = 0u64;
    let mut last_start = -1.0;
    let mut merged = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for entry in IntervalLogIterator::new(&bytes) {
        if let LogEntry::Interval(h) = entry.unwrap() {
            assert_eq!(h.tag().map(|t| t.as_str()), Some("latency"));
            let start = h.start_timestamp().as_secs_f64();
            assert!(start > last_start, "intervals in order");
            last_start = start;
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(h.encoded_histogram())
                .unwrap();
            let hist: hdrhistogram::Histogram<u64> = Deserializer::new()
                .deserialize(&mut raw.as_slice())
                .unwrap();
            total += hist.len();
            merged.add(&hist).unwrap();
            intervals += 1;
        }
    }
    assert!(intervals >= 2, "{intervals} intervals in a 2.5 s run");
    assert_eq!(total, 2_500_000, "every record's latency, once");
    // The Python implementation's log reader on the same file.
    const READ: &str = "import sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 3600 * 10**9, 3))
merged = HdrHistogram(1, 3600 * 10**9, 3)
n = 0
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    n += 1
    merged.add(h)
print(n, merged.get_total_count(), merged.get_value_at_percentile(50),
      merged.get_value_at_percentile(99), merged.get_max_value())
";
    let py = std::process::Command::new("python3")
        .args(["-c", READ, log.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("python3 is required: {e}"));
    assert!(
        py.status.success(),
        "the HdrHistogram Python reader (pip install hdrhistogram; .ci/run installs it): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let said = String::from_utf8_lossy(&py.stdout).to_string();
    let f: Vec<u64> = said
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(f.len(), 5, "{said}");
    assert_eq!((f[0], f[1]), (intervals, total), "{said}");
    // Both at three significant digits: the same values to within their precision.
    for (what, theirs, ours) in [
        ("p50", f[2], merged.value_at_quantile(0.5)),
        ("p99", f[3], merged.value_at_quantile(0.99)),
        ("max", f[4], merged.max()),
    ] {
        let tolerance = ours / 500 + 1;
        assert!(
            theirs.abs_diff(ours) <= tolerance,
            "{what}: Python reader {theirs} ns, Rust reader {ours} ns ({said})"
        );
    }
}

const SQL_DDL: &str = "CREATE TABLE bids (
  auction BIGINT,
  price   BIGINT,
  ts      TIMESTAMP(3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (
  'connector' = 'datagen',
  'rows-per-second' = '0',
  'number-of-rows' = '1000',
  'fields.auction.min' = '1', 'fields.auction.max' = '4',
  'fields.price.min' = '1', 'fields.price.max' = '100',
  'fields.ts.start' = '2024-01-01 00:00:00'
);
";

#[test]
fn sql_client_runs_a_script_and_shows_tableau_results() {
    let conf = conf_dir(TEST_CONF);
    let file = conf.path().join("script.sql");
    std::fs::write(
        &file,
        format!(
            "{SQL_DDL}SHOW TABLES;
SELECT window_start, auction, COUNT(*) AS n
FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '1' SECOND))
GROUP BY window_start, window_end, auction;
SELECT auction, COUNT(*) AS n FROM bids WHERE auction = 2 GROUP BY auction;
"
        ),
    )
    .unwrap();
    let o = spate(&["sql", "-f", file.to_str().unwrap()], conf.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("[INFO] Execute statement succeeded."), "{out}");
    assert!(out.contains("|       bids |"), "{out}");
    // 1000 rows, 1 ms apart: one window per auction, counting all of its rows.
    assert!(
        out.contains(
            "| op |            window_start |              auction |                    n |"
        ),
        "{out}"
    );
    let window_rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| +I | 2024-01-01 00:00:00.000 |"))
        .collect();
    assert_eq!(window_rows.len(), 4, "{out}");
    let total: u64 = window_rows
        .iter()
        .map(|l| l.rsplit('|').nth(1).unwrap().trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 1000, "{out}");
    // The unbounded GROUP BY: +I, then -U/+U pairs, ending at the same count as the
    // window's for auction 2.
    assert!(
        out.contains("| +I |                    2 |                    1 |"),
        "{out}"
    );
    assert!(
        out.contains("| -U |                    2 |                    1 |"),
        "{out}"
    );
    assert!(out.contains("Received a total of 4 rows"), "{out}");
}

#[test]
fn sql_client_table_mode_shows_the_result_the_changelog_leaves() {
    let conf = conf_dir(TEST_CONF);
    let file = conf.path().join("table.sql");
    std::fs::write(
        &file,
        format!(
            "{SQL_DDL}SET 'sql-client.execution.result-mode' = 'table';
SELECT auction, COUNT(*) AS n FROM bids GROUP BY auction;
"
        ),
    )
    .unwrap();
    let o = spate(&["sql", "-f", file.to_str().unwrap()], conf.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    // One row per auction (no -U/+U history), the counts adding up to every row.
    assert!(out.contains("| auction |   n |"), "{out}");
    let rows: Vec<(u64, u64)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            match f.as_slice() {
                ["", a, n, ""] => Some((a.parse().ok()?, n.parse().ok()?)),
                _ => None,
            }
        })
        .collect();
    let mut auctions: Vec<u64> = rows.iter().map(|r| r.0).collect();
    auctions.sort_unstable();
    assert_eq!(auctions, [1, 2, 3, 4], "{out}");
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 1000, "{out}");
    assert!(out.contains("4 rows in the result"), "{out}");
    // A mode that does not exist is named.
    std::fs::write(&file, "SET 'sql-client.execution.result-mode' = 'tabel';\n").unwrap();
    let o = spate(&["sql", "-f", file.to_str().unwrap()], conf.path());
    let (out, _) = text(&o);
    assert!(out.contains("'tabel' is not a result mode"), "{out}");
}

#[test]
fn run_f_runs_a_sql_file_as_a_job_and_bad_sql_is_a_positioned_error() {
    let conf = conf_dir(TEST_CONF);
    let file = conf.path().join("q.sql");
    std::fs::write(
        &file,
        format!("{SQL_DDL}SELECT auction, price FROM bids WHERE price > 98;\n"),
    )
    .unwrap();
    let o = spate(
        &["run", "-p", "2", "-f", file.to_str().unwrap()],
        conf.path(),
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("job          sql"), "{out}");
    // Print rows, prefixed by the subtask at parallelism 2.
    assert!(
        out.lines()
            .any(|l| l.starts_with("1> +I[") || l.starts_with("2> +I[")),
        "{out}"
    );
    // Errors: a typo in a column, a bad option; the client reports and exits 1.
    std::fs::write(
        &file,
        format!("{SQL_DDL}SELECT auction, prize FROM bids;\n"),
    )
    .unwrap();
    let o = spate(&["sql", "-f", file.to_str().unwrap()], conf.path());
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[ERROR] Could not execute SQL statement."),
        "{out}"
    );
    assert!(out.contains("Column 'prize' not found"), "{out}");
    assert!(out.contains("(at line 14, column 17)"), "{out}");
    let o = spate(&["run", "-f", file.to_str().unwrap()], conf.path());
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("Column 'prize' not found"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = spate(&["run", "-f", "/nonexistent/q.sql"], conf.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("reading /nonexistent/q.sql"));
}

/// The interactive client on a terminal (a pseudo-terminal from `script`): line
/// editing reads statements over several lines, runs them, reports an error and goes
/// on, and keeps the history in ~/.spate_sql_history.
#[test]
fn the_interactive_sql_client_runs_statements_typed_on_a_terminal() {
    let conf = conf_dir(TEST_CONF);
    let home = tempfile::tempdir().unwrap();
    let typed = [
        "CREATE TABLE t (x BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '0',",
        " 'number-of-rows' = '3', 'fields.x.kind' = 'sequence', 'fields.x.start' = '1', 'fields.x.end' = '3');",
        "SELECT x * 2 AS y FROM t;",
        "SELECT nope FROM t;",
        "QUIT;",
    ];
    let mut child = std::process::Command::new("script")
        .args([
            "-qfc",
            &format!("{} sql", env!("CARGO_BIN_EXE_spate")),
            "/dev/null",
        ])
        .env("HOME", home.path())
        .env("SPATE_CONF_DIR", conf.path())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        for line in typed {
            std::thread::sleep(std::time::Duration::from_millis(700));
            stdin.write_all(line.as_bytes()).unwrap();
            stdin.write_all(b"\r").unwrap();
            stdin.flush().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the client did not quit"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("[INFO] Execute statement succeeded."),
        "{text}"
    );
    assert!(text.contains("|                    6 |"), "{text}");
    assert!(text.contains("Received a total of 3 rows"), "{text}");
    assert!(text.contains("Column 'nope' not found"), "{text}");
    let history = std::fs::read_to_string(home.path().join(".spate_sql_history")).unwrap();
    assert!(history.contains("SELECT x * 2 AS y FROM t;"), "{history}");
}
