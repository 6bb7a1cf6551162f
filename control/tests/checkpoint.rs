//! Checkpoints on the MiniCluster: a job that fails resumes from its latest completed
//! checkpoint with its keyed state and its sources' positions, so that its state is
//! exactly once; checkpoints on disk are complete or absent; a checkpoint of another
//! job or a damaged one is refused with a clear error; a full disk fails checkpoints
//! cleanly and keeps the last complete one.
#![allow(clippy::unwrap_used, clippy::panic)]

#[path = "../../tests/support/s3.rs"]
mod s3;
use s3::S3Server;
use spate::api::StreamExecutionEnvironment;
use spate::config::{CheckpointConfig, Config, RestartStrategyType};
use spate::graph::JobGraph;
use spate::minicluster::{JobResult, JobStatus, MiniCluster};
use spate_dataplane::idle::IdleStrategyKind;
use spate_dataplane::operator::keyed::{Context, KeyedProcessFunction, ValueState};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Running sum per key: emits (key, sum so far) for every record.
#[derive(Clone)]
struct RunningSum;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Sum {
    total: ValueState<u64>,
}

impl KeyedProcessFunction for RunningSum {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64);
    type State = Sum;

    fn process_element(
        &mut self,
        (k, v): (u64, u64),
        st: &mut Sum,
        ctx: &mut Context<'_, u64, (u64, u64)>,
    ) {
        let t = st.total.get_or_insert_with(|| 0);
        *t += v;
        ctx.collect((k, *t));
    }
}

type Out = Arc<Mutex<Vec<(u64, u64)>>>;

const RECORDS: u64 = 6_000;
const KEYS: u64 = 40;

/// Records through a slow map (so that checkpoints complete while the job runs) that
/// fails once at record `fail_at`, keyed into running sums at parallelism `p`.
fn job(p: usize, fail_at: Option<u64>) -> (StreamExecutionEnvironment, Out) {
    job_keys(p, fail_at, KEYS)
}

/// [`job`] over `keys` keys.
fn job_keys(p: usize, fail_at: Option<u64>, keys: u64) -> (StreamExecutionEnvironment, Out) {
    let failures = Arc::new(AtomicU32::new(0));
    let env = StreamExecutionEnvironment::new("sums");
    let out = Arc::new(Mutex::new(Vec::new()));
    env.from_collection((0..RECORDS).collect::<Vec<_>>())
        .map(move |x| {
            std::thread::sleep(Duration::from_micros(40));
            if Some(x) == fail_at && failures.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("injected failure at record {x}");
            }
            (x % keys, x)
        })
        .name("Slow Map")
        .key_by(|r: &(u64, u64)| r.0)
        .process(RunningSum)
        .name("Sums")
        .set_parallelism(p)
        .collect(out.clone());
    (env, out)
}

fn reference() -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for x in 0..RECORDS {
        *m.entry(x % KEYS).or_insert(0) += x;
    }
    m
}

fn config(cp: CheckpointConfig) -> Config {
    Config {
        slots: 2,
        idle: IdleStrategyKind::Backoff,
        ring_size: 1 << 16,
        restart_strategy: RestartStrategyType::FixedDelay,
        restart_attempts: 3,
        restart_delay: Duration::from_millis(10),
        checkpointing: cp,
        ..Config::default()
    }
}

fn every(ms: u64) -> CheckpointConfig {
    CheckpointConfig {
        interval: Some(Duration::from_millis(ms)),
        ..CheckpointConfig::default()
    }
}

fn execute(
    env: &StreamExecutionEnvironment,
    cfg: &Config,
    restore: Option<&std::path::Path>,
) -> JobResult {
    let mut graph = JobGraph::build(env.stream_graph(), None, 1, true).unwrap();
    graph.restore_from = restore.map(Into::into);
    let mut mc = MiniCluster::start(cfg).unwrap();
    mc.execute(
        &graph,
        &AtomicBool::new(false),
        Duration::from_secs(60),
        &mut |_| {},
    )
    .unwrap()
}

/// The distinct records in `v`.
fn set<T: Ord + Copy>(v: &Mutex<Vec<T>>) -> std::collections::BTreeSet<T> {
    v.lock().unwrap().iter().copied().collect()
}

/// The last (highest) running sum emitted per key.
fn finals(out: &Mutex<Vec<(u64, u64)>>) -> HashMap<u64, u64> {
    let mut m = HashMap::new();
    for &(k, s) in out.lock().unwrap().iter() {
        let e = m.entry(k).or_insert(0);
        *e = s.max(*e);
    }
    m
}

#[test]
fn a_failed_job_resumes_from_its_latest_checkpoint_with_exactly_once_state() {
    for p in [1, 2] {
        let (env, out) = job(p, Some(RECORDS * 3 / 4));
        let r = execute(&env, &config(every(20)), None);
        assert_eq!(r.status, JobStatus::Finished, "p={p}: {:?}", r.exceptions);
        assert_eq!(r.restarts, 1, "p={p}");
        assert!(r.checkpoints.completed >= 1, "p={p}: {:?}", r.checkpoints);
        // Resumed from a checkpoint, not from the start of the source...
        let restored = r.checkpoints.restored_id;
        assert!(restored.is_some(), "p={p}: {:?}", r.checkpoints);
        // ...with each key's sum as it was then, and the source where it was then:
        // replayed records count once, so every final sum is exact.
        assert_eq!(finals(&out), reference(), "p={p}");
        // The collecting sink commits on completed checkpoints: what the failed
        // attempt emitted before the restored checkpoint stays, what came after it is
        // dropped with the attempt and emitted again: every running sum exactly once.
        let n = out.lock().unwrap().len() as u64;
        assert_eq!(n, RECORDS, "p={p}");
        assert_eq!(set(&out).len() as u64, RECORDS, "p={p}: no duplicates");
    }
}

#[test]
fn without_checkpoints_a_restart_replays_from_the_start() {
    let (env, out) = job(1, Some(RECORDS / 2));
    let r = execute(&env, &config(CheckpointConfig::default()), None);
    assert_eq!(r.status, JobStatus::Finished);
    assert_eq!(r.restarts, 1);
    assert_eq!(r.checkpoints.completed, 0);
    assert_eq!(r.checkpoints.restored_id, None);
    assert_eq!(finals(&out), reference());
    // The last attempt emitted for every record.
    assert_eq!(out.lock().unwrap().len() as u64, RECORDS);
}

#[test]
fn checkpoints_on_disk_are_complete_retained_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let cp = CheckpointConfig {
        dir: Some(dir.path().to_path_buf()),
        num_retained: 2,
        ..every(20)
    };
    let (env, out) = job(2, Some(RECORDS / 2));
    let r = execute(&env, &config(cp.clone()), None);
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    assert_eq!(finals(&out), reference());
    let job_dir = dir.path().join(&r.job_id);
    let chks: Vec<_> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!chks.is_empty() && chks.len() <= 2, "{chks:?}");
    for c in &chks {
        assert!(c.join("_metadata").is_file(), "{c:?} has no metadata");
    }
    assert_eq!(
        r.checkpoints.last_path,
        job_dir
            .join(format!("chk-{}", r.checkpoints.last_id))
            .display()
            .to_string()
    );

    // The finished job's last checkpoint is its final one, taken after the end of its
    // input: a run resumed from it has nothing left to do.
    let last = std::path::PathBuf::from(&r.checkpoints.last_path);
    let (env3, out3) = job(2, None);
    let r3 = execute(&env3, &config(CheckpointConfig::default()), Some(&last));
    assert_eq!(r3.status, JobStatus::Finished, "{:?}", r3.exceptions);
    assert!(out3.lock().unwrap().is_empty());

    // A job that failed for good leaves its latest checkpoint behind; a run of the same
    // job from it resumes there: with the state it had, it emits only for the records
    // after it, and its final sums are exact.
    let dir2 = tempfile::tempdir().unwrap();
    let failing = Config {
        restart_attempts: 0,
        ..config(CheckpointConfig {
            dir: Some(dir2.path().to_path_buf()),
            ..every(20)
        })
    };
    let (envf, _) = job(2, Some(RECORDS / 2));
    let rf = execute(&envf, &failing, None);
    assert!(matches!(rf.status, JobStatus::Failed(_)), "{:?}", rf.status);
    assert!(rf.checkpoints.completed > 0);
    let latest = std::path::PathBuf::from(&rf.checkpoints.last_path);
    let (env2, out2) = job(2, None);
    let r2 = execute(&env2, &config(CheckpointConfig::default()), Some(&latest));
    assert_eq!(r2.status, JobStatus::Finished, "{:?}", r2.exceptions);
    assert_eq!(r2.checkpoints.restored_id, Some(rf.checkpoints.last_id));
    assert_eq!(finals(&out2), reference());
    assert!((out2.lock().unwrap().len() as u64) < RECORDS);

    // The checkpoint of another job is refused, naming both.
    let other = StreamExecutionEnvironment::new("other");
    other
        .from_collection(vec![1u64, 2, 3])
        .map(|x| x + 1)
        .collect(Arc::new(Mutex::new(Vec::new())));
    let graph = {
        let mut g = JobGraph::build(other.stream_graph(), None, 1, true).unwrap();
        g.restore_from = Some(latest.clone());
        g
    };
    let mut mc = MiniCluster::start(&config(CheckpointConfig::default())).unwrap();
    let e = mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(10),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("not of this job"), "{e}");

    // A damaged state file is refused; nothing runs from it.
    let state = std::fs::read_dir(&latest)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "state"))
        .unwrap();
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let (env3, out3) = job(2, None);
    let mut graph = JobGraph::build(env3.stream_graph(), None, 1, true).unwrap();
    graph.restore_from = Some(latest.clone());
    let e = mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(10),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated or damaged"), "{e}");
    assert!(out3.lock().unwrap().is_empty());

    // A missing path is an error too.
    let mut graph = JobGraph::build(env3.stream_graph(), None, 1, true).unwrap();
    graph.restore_from = Some(dir.path().join("nothing-here"));
    assert!(mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(10),
            &mut |_| {}
        )
        .is_err());
}

#[test]
fn at_least_once_mode_resumes_without_losing_records() {
    let cp = CheckpointConfig {
        exactly_once: false,
        ..every(20)
    };
    let (env, out) = job(2, Some(RECORDS * 3 / 4));
    let r = execute(&env, &config(cp), None);
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    assert!(r.checkpoints.restored_id.is_some(), "{:?}", r.checkpoints);
    // Nothing lost; with one source in front of the keyed operator nothing is counted
    // twice either (barriers of one input need no alignment).
    assert_eq!(finals(&out), reference());
}

const WINDOWS_N: u64 = 6_000;
/// key, event time, value
type WinRec = (u64, u64, u64);
type Seen<T> = Arc<Mutex<Vec<T>>>;
type WindowsJob = (
    StreamExecutionEnvironment,
    Seen<WinRec>,
    Seen<(u64, u64, u64, u64)>,
);

/// Records of 7 keys through a slow map (failing once at 3/4 of the input if `fail`)
/// into a tumbling event-time window reduce and a sliding process window, at `p`.
fn windows_job(p: usize, fail: bool) -> WindowsJob {
    use spate_dataplane::operator::watermark::WatermarkStrategy;
    use spate_dataplane::operator::window::{Window, WindowAssigner};
    let input: Vec<WinRec> = (0..WINDOWS_N).map(|i| (i % 7, i * 10, i)).collect();
    let failures = Arc::new(AtomicU32::new(u32::from(!fail)));
    let env = StreamExecutionEnvironment::new("windows");
    let timed = env
        .from_collection(input)
        .map(move |r: WinRec| {
            std::thread::sleep(Duration::from_micros(40));
            if r.2 == WINDOWS_N * 3 / 4 && failures.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("injected failure at record {}", r.2);
            }
            r
        })
        .assign_timestamps_and_watermarks(
            WatermarkStrategy::for_monotonous_timestamps()
                .with_timestamp_assigner(|r: &WinRec| r.1),
        );
    let reduced = Arc::new(Mutex::new(Vec::new()));
    let seen = reduced.clone();
    timed
        .key_by(|r: &WinRec| r.0)
        .window(WindowAssigner::tumbling_event_time(Duration::from_nanos(1_000)).unwrap())
        .reduce(|a: WinRec, b: WinRec| (a.0, a.1.max(b.1), a.2 + b.2))
        .set_parallelism(p)
        .map(move |r: WinRec| {
            seen.lock().unwrap().push(r);
            r
        })
        .discard();
    let processed = Arc::new(Mutex::new(Vec::new()));
    let seen = processed.clone();
    timed
        .key_by(|r: &WinRec| r.0)
        .window(
            WindowAssigner::sliding_event_time(
                Duration::from_nanos(2_000),
                Duration::from_nanos(1_000),
            )
            .unwrap(),
        )
        .process(
            |k: &u64, w: &Window, rs: Vec<WinRec>, out: &mut Vec<(u64, u64, u64, u64)>| {
                out.push((*k, w.start, rs.len() as u64, rs.iter().map(|r| r.2).sum()));
            },
        )
        .set_parallelism(p)
        .map(move |r| {
            seen.lock().unwrap().push(r);
            r
        })
        .discard();
    (env, reduced, processed)
}

/// Window contents are state too: a tumbling event-time window reduce and a sliding
/// process window (which keeps the records themselves) resume with their open windows'
/// contents, so that every window's result is exact. Results are recorded as they are
/// emitted (not at the end of the last attempt), so the failed attempt's results are
/// there too: the set of distinct results must equal an uninterrupted run's.
#[test]
fn window_contents_resume_from_a_checkpoint() {
    let job = windows_job;
    const N: u64 = WINDOWS_N;
    for p in [1, 2] {
        let (env, want_reduce, want_process) = job(p, false);
        let r = execute(&env, &config(CheckpointConfig::default()), None);
        assert_eq!(r.status, JobStatus::Finished, "p={p}: {:?}", r.exceptions);
        let (env, reduced, processed) = job(p, true);
        let r = execute(&env, &config(every(20)), None);
        assert_eq!(r.status, JobStatus::Finished, "p={p}: {:?}", r.exceptions);
        assert_eq!(r.restarts, 1, "p={p}");
        assert!(
            r.checkpoints.restored_id.is_some(),
            "p={p}: {:?}",
            r.checkpoints
        );
        assert_eq!(set(&reduced), set(&want_reduce), "p={p}: reduce");
        assert_eq!(set(&processed), set(&want_process), "p={p}: process window");
        // The sums of the uninterrupted run are right: each key's windows add up to
        // its records.
        let total: u64 = set(&want_reduce).iter().map(|r| r.2).sum();
        assert_eq!(total, (0..N).sum::<u64>());
    }
}

/// Exactly-once output: W1 at p=2 writing through the exactly-once file sink, with
/// checkpoints every 30 ms, fails at several random moments; each time it resumes from
/// its latest checkpoint. At the end, the committed part files hold every symbol's VWAP
/// sequence exactly as the single-threaded computation gives it: nothing lost, nothing
/// twice, in order.
#[test]
fn exactly_once_file_output_survives_repeated_failures() {
    use spate::jobs::{self, Vwap, VwapParams};
    use spate_dataplane::operator::source::Pace;
    use std::sync::atomic::AtomicU64;
    let seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    const EVENTS: u64 = 300_000;
    // Four failures at random points of the run (counted over all attempts).
    let mut x = seed | 1;
    let mut at: Vec<u64> = (0..4)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            20_000 + x % (EVENTS - 40_000)
        })
        .collect();
    at.sort_unstable();
    eprintln!("failure seed {seed}: failures after {at:?} results");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vwap");
    let env = StreamExecutionEnvironment::new("vwap");
    let seen = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let thresholds = Arc::new(at);
    jobs::vwap_stream(
        &env,
        VwapParams {
            seed: 7,
            events: Some(EVENTS),
            pace: Pace::Rate(150_000.0),
            latency_sample: 1,
        },
    )
    .map(move |v: Vwap| {
        let n = seen.fetch_add(1, Ordering::Relaxed);
        let k = next.load(Ordering::Relaxed) as usize;
        // One subtask claims each failure: both subtasks can pass a threshold at
        // once, and two failures in one attempt are one restart.
        if thresholds.get(k).is_some_and(|&t| n >= t)
            && next
                .compare_exchange(k as u64, k as u64 + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            panic!("injected failure {} after {n} results", k + 1);
        }
        (v.symbol, v.vwap)
    })
    .sink_to_files(&out);
    let cfg = Config {
        restart_attempts: 10,
        ..config(every(30))
    };
    let mut graph = JobGraph::build(env.stream_graph(), Some(2), 1, true).unwrap();
    graph.restore_from = None;
    let mut mc = MiniCluster::start(&cfg).unwrap();
    let r = mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(
        r.status,
        JobStatus::Finished,
        "seed {seed}: {:?}",
        r.exceptions
    );
    assert_eq!(r.restarts, 4, "seed {seed}");
    assert!(
        r.checkpoints.completed >= 4,
        "seed {seed}: {:?}",
        r.checkpoints
    );
    let got = jobs::read_vwap_output(&out).unwrap();
    let want = jobs::vwap_reference(7, EVENTS, 2);
    assert_eq!(got.len(), want.len(), "seed {seed}: symbols");
    for (s, v) in &want {
        assert_eq!(got.get(s), Some(v), "seed {seed}: symbol {s}");
    }
    // Nothing hidden is left: every part was committed.
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// Subtask 0 of a pipeline (source → map → file sink, chained) ends early; subtask 1
/// fails after that, once. The job resumes from its latest checkpoint, and the records
/// of the subtask that had ended are in the output once: its sink committed them only
/// on a checkpoint taken after its end (its final checkpoint), never at the end itself.
#[test]
fn a_subtask_that_ended_is_not_written_twice_when_another_fails_after() {
    use spate_dataplane::operator::file_sink::read_committed;
    use spate_dataplane::operator::source::IterSource;
    const SHORT: u64 = 200;
    const LONG: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let env = StreamExecutionEnvironment::new("uneven");
    let failed = Arc::new(AtomicU32::new(0));
    env.add_bounded_source("Uneven Source", false, |info| {
        let n = if info.index == 0 { SHORT } else { LONG };
        let base = info.index as u64 * 1_000_000;
        Ok(IterSource::new(base..base + n))
    })
    .map(move |x: u64| {
        if x >= 1_000_000 {
            std::thread::sleep(Duration::from_micros(100));
            // Late in subtask 1's input: subtask 0 ended long before.
            if x == 1_000_000 + LONG - 100 && failed.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("injected failure at {x}");
            }
        }
        x
    })
    .sink_to_files(&out);
    let mut graph = JobGraph::build(env.stream_graph(), Some(2), 1, true).unwrap();
    graph.restore_from = None;
    let mut mc = MiniCluster::start(&config(every(20))).unwrap();
    let r = mc
        .execute(
            &graph,
            &AtomicBool::new(false),
            Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    assert_eq!(r.restarts, 1);
    let mut got: Vec<u64> = read_committed(&out)
        .unwrap()
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    got.sort_unstable();
    let mut want: Vec<u64> = (0..SHORT).chain(1_000_000..1_000_000 + LONG).collect();
    want.sort_unstable();
    assert_eq!(got.len(), want.len(), "records in the output");
    assert_eq!(got, want);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let d = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(d))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A full disk: checkpoints that do not fit fail with the file system's error, what
/// was written of them is removed, the job fails over once more failed in a row than
/// tolerated, and the latest complete checkpoint stays readable and resumable.
#[test]
fn a_full_disk_fails_checkpoints_cleanly_and_keeps_the_last_complete_one() {
    // Root is needed to mount a tmpfs (CI runs as root).
    let Some(disk) = SmallDisk::mount("48k") else {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        assert!(!root, "cannot mount a tmpfs as root");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    const KEYS_BIG: u64 = 6_000;
    let cfg = Config {
        restart_attempts: 0,
        ..config(CheckpointConfig {
            dir: Some(disk.0.path().to_path_buf()),
            num_retained: 1,
            tolerable_failures: Some(2),
            ..every(20)
        })
    };
    let (env, _) = job_keys(2, None, KEYS_BIG);
    let r = execute(&env, &cfg, None);
    let JobStatus::Failed(why) = &r.status else {
        panic!("the job should fail over on the full disk: {:?}", r.status);
    };
    assert!(why.contains("tolerable-failed-checkpoints"), "{why}");
    assert!(
        r.exceptions.iter().any(|e| e.contains("No space left")) || why.contains("No space left"),
        "{why} {:?}",
        r.exceptions
    );
    assert!(r.checkpoints.completed > 0 && r.checkpoints.failed >= 3);
    // Only complete checkpoints are left: every chk- directory has its metadata.
    let job_dir = disk.0.path().join(&r.job_id);
    for e in std::fs::read_dir(&job_dir).unwrap() {
        let p = e.unwrap().path();
        assert!(p.join("_metadata").is_file(), "{p:?} is half-written");
    }
    let latest = spate::checkpoint::read_checkpoint(&job_dir).unwrap();
    assert_eq!(latest.meta.checkpoint_id, r.checkpoints.last_id);
    // Resumed from it (with room to run), the job emits the records after the
    // checkpoint once each: every key has one record, so each sum is its key.
    let (env2, out2) = job_keys(2, None, KEYS_BIG);
    let r2 = execute(&env2, &config(CheckpointConfig::default()), Some(&job_dir));
    assert_eq!(r2.status, JobStatus::Finished, "{:?}", r2.exceptions);
    assert_eq!(r2.checkpoints.restored_id, Some(r.checkpoints.last_id));
    let out2 = out2.lock().unwrap();
    assert!(
        !out2.is_empty() && (out2.len() as u64) < RECORDS,
        "{}",
        out2.len()
    );
    assert!(out2.iter().all(|(k, s)| k == s));
    let keys: std::collections::BTreeSet<u64> = out2.iter().map(|r| r.0).collect();
    assert_eq!(keys.len(), out2.len(), "no record twice");
    // The keys it emitted are exactly those the checkpoint had not seen.
    assert_eq!(keys.iter().next_back(), Some(&(KEYS_BIG - 1)));
    drop(disk);
}

/// Rescaling: a checkpoint taken at one parallelism resumes at another, with keyed
/// state (running sums; open windows' contents) redistributed by key group, so that
/// results are exact: the sums as in an uninterrupted run, every window's result as
/// in one.
#[test]
fn a_checkpoint_resumes_at_another_parallelism_with_keyed_state_redistributed() {
    // 2 -> 3 -> 2: a run fails for good at each step and the next resumes from its
    // latest checkpoint. Each subtask keeps only its key groups' state: a copy of a key
    // left in the wrong subtask would be stale in the next checkpoint, and the last
    // step would restore it over the right one.
    let mut from: Option<std::path::PathBuf> = None;
    let mut dirs = Vec::new();
    for (p, fail_at) in [
        (2, Some(RECORDS / 3)),
        (3, Some(RECORDS * 2 / 3)),
        (2, None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = failing_for_good(dir.path());
        let (env, out) = job(p, fail_at);
        let r = execute(&env, &cfg, from.as_deref());
        if fail_at.is_none() {
            assert_eq!(r.status, JobStatus::Finished, "p={p}: {:?}", r.exceptions);
            assert_eq!(finals(&out), reference());
            // It resumed (from the p=3 run's checkpoint, not from the start).
            assert!((out.lock().unwrap().len() as u64) < RECORDS);
            break;
        }
        assert!(matches!(r.status, JobStatus::Failed(_)), "{:?}", r.status);
        assert!(r.checkpoints.completed > 0);
        from = Some(std::path::PathBuf::from(&r.checkpoints.last_path));
        dirs.push(dir);
    }

    // Windows: a run at p=2 fails for good; resumed at p=3 from its latest checkpoint,
    // the distinct results of both runs are an uninterrupted run's.
    let (env, want_reduce, want_process) = windows_job(1, false);
    let r = execute(&env, &config(CheckpointConfig::default()), None);
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    let dir = tempfile::tempdir().unwrap();
    let failing = failing_for_good(dir.path());
    let (env, reduced, processed) = windows_job(2, true);
    let r = execute(&env, &failing, None);
    assert!(matches!(r.status, JobStatus::Failed(_)), "{:?}", r.status);
    let latest = std::path::PathBuf::from(&r.checkpoints.last_path);
    let (env2, reduced2, processed2) = windows_job(3, false);
    let resumed = Config {
        slots: 3,
        ..config(CheckpointConfig::default())
    };
    let r2 = execute(&env2, &resumed, Some(&latest));
    assert_eq!(r2.status, JobStatus::Finished, "{:?}", r2.exceptions);
    let both = |a: &Seen<WinRec>, b: &Seen<WinRec>| {
        let mut s = set(a);
        s.extend(set(b));
        s
    };
    assert_eq!(both(&reduced, &reduced2), set(&want_reduce), "reduce");
    let mut p = set(&processed);
    p.extend(set(&processed2));
    assert_eq!(p, set(&want_process), "process window");
}

/// Checkpoints in an S3-compatible object store (`state.checkpoints.dir: s3://...`,
/// Flink's `s3.*` keys): a failing job resumes from its latest checkpoint there with
/// exact state, retention removes older ones, a job resumes from the store's
/// location, and a damaged object is refused.
#[test]
fn checkpoints_in_an_s3_compatible_store_are_complete_retained_and_resumable() {
    use spate::storage;
    let s3 = S3Server::start();
    s3.bucket("spate-ckpt");
    let mut cfg = config(CheckpointConfig {
        dir: Some("s3://spate-ckpt/checkpoints".into()),
        num_retained: 2,
        ..every(20)
    });
    cfg.s3 = storage::S3Settings {
        endpoint: Some(s3.endpoint.clone()),
        access_key: Some("test".into()),
        secret_key: Some("test".into()),
        region: None,
        path_style: true,
    };
    let (env, out) = job(2, Some(RECORDS / 2));
    let r = execute(&env, &cfg, None);
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    assert_eq!(r.restarts, 1);
    assert!(r.checkpoints.restored_id.is_some(), "{:?}", r.checkpoints);
    assert_eq!(finals(&out), reference());
    let job_dir = std::path::PathBuf::from(format!("s3://spate-ckpt/checkpoints/{}", r.job_id));
    let chks = storage::list(&job_dir).unwrap();
    assert!(!chks.is_empty() && chks.len() <= 2, "{chks:?}");
    for c in &chks {
        // The object is where an S3 client finds it.
        let key = format!("checkpoints/{}/{c}/_metadata", r.job_id);
        assert!(s3.holds("spate-ckpt", &key), "{key}");
    }
    assert_eq!(
        r.checkpoints.last_path,
        job_dir
            .join(format!("chk-{}", r.checkpoints.last_id))
            .display()
            .to_string()
    );

    // Its final checkpoint, read back from the store: a run resumed from it (by the
    // job's location) has nothing left to do.
    let cp = spate::checkpoint::read_checkpoint(&job_dir).unwrap();
    assert_eq!(cp.meta.checkpoint_id, r.checkpoints.last_id);
    let (env2, out2) = job(2, None);
    let plain = Config {
        s3: cfg.s3.clone(),
        ..config(CheckpointConfig::default())
    };
    let r2 = execute(&env2, &plain, Some(&job_dir));
    assert_eq!(r2.status, JobStatus::Finished, "{:?}", r2.exceptions);
    assert_eq!(r2.checkpoints.restored_id, Some(r.checkpoints.last_id));
    assert!(out2.lock().unwrap().is_empty());

    // A damaged object is refused.
    let last = job_dir.join(format!("chk-{}", r.checkpoints.last_id));
    let f = &cp.meta.files[0].file;
    let bytes = storage::read(&last.join(f)).unwrap();
    storage::write(&last.join(f), &bytes[..bytes.len() - 1]).unwrap();
    let e = spate::checkpoint::read_checkpoint(&last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated or damaged"), "{e}");
    // So is a location with nothing there.
    let e = spate::checkpoint::read_checkpoint(std::path::Path::new("s3://spate-ckpt/nothing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no complete checkpoint"), "{e}");
}

/// Three slots, checkpoints every 20 ms into `dir`, and no restart: a failure ends the
/// job, leaving its checkpoints.
fn failing_for_good(dir: &std::path::Path) -> Config {
    Config {
        restart_attempts: 0,
        slots: 3,
        ..config(CheckpointConfig {
            dir: Some(dir.to_path_buf()),
            ..every(20)
        })
    }
}

/// A local run cancelled with `state.savepoints.dir` set stops with a savepoint there
/// (the sources emit nothing after its barrier) and ends FINISHED; resumed from it, the
/// job goes on where it stopped: together both runs emit every running sum exactly once.
#[test]
fn a_cancelled_local_run_stops_with_a_savepoint_and_resumes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(CheckpointConfig {
        savepoint_dir: Some(dir.path().to_path_buf()),
        ..CheckpointConfig::default()
    });
    let (env, out1) = job(2, None);
    let graph = JobGraph::build(env.stream_graph(), None, 1, true).unwrap();
    let mut mc = MiniCluster::start(&cfg).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let stopper = std::thread::spawn(move || {
        // The slow map takes about 240 ms for all records: stop about a third in.
        std::thread::sleep(Duration::from_millis(80));
        c2.store(true, Ordering::Relaxed);
    });
    let r = mc
        .execute(&graph, &cancel, Duration::from_secs(60), &mut |_| {})
        .unwrap();
    stopper.join().unwrap();
    assert_eq!(r.status, JobStatus::Finished, "{:?}", r.exceptions);
    let savepoint = r.savepoint.clone().unwrap_or_else(|| {
        panic!(
            "no savepoint: {:?} {:?}",
            r.checkpoints,
            out1.lock().unwrap().len()
        )
    });
    assert!(
        savepoint.join("_metadata").exists(),
        "{}",
        savepoint.display()
    );
    assert!(savepoint.starts_with(dir.path()));
    let first = out1.lock().unwrap().len();
    assert!(
        first > 0 && first < RECORDS as usize,
        "stopped in the middle, with what the savepoint holds committed: {first}"
    );

    let (env2, out2) = job(2, None);
    let r2 = execute(&env2, &cfg, Some(&savepoint));
    assert_eq!(r2.status, JobStatus::Finished, "{:?}", r2.exceptions);
    assert!(r2.savepoint.is_none());
    let (a, b) = (set(&out1), set(&out2));
    assert!(a.is_disjoint(&b), "records emitted twice across the stop");
    assert_eq!(
        a.len() + b.len(),
        RECORDS as usize,
        "records lost across the stop"
    );
    assert_eq!(finals(&out2), reference());
}

/// Rescaling what is not keyed: W1 at p=2 writing through the exactly-once file sink
/// fails for good a third of the way; resumed at p=3 from its latest checkpoint (the
/// trade source's two splits go on in two of the three source subtasks, the third
/// ends at once; each old sink subtask's pending parts are committed by one new one)
/// it fails for good again; resumed at p=2 it finishes. The committed output holds
/// every symbol's VWAP results exactly as the single-threaded computation gives them:
/// nothing lost, nothing twice.
#[test]
fn sources_and_file_sinks_resume_at_another_parallelism() {
    use spate::jobs::{self, Vwap, VwapParams};
    use spate_dataplane::operator::source::Pace;
    use std::sync::atomic::AtomicU64;
    const EVENTS: u64 = 150_000;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("vwap");
    let mut from: Option<std::path::PathBuf> = None;
    let mut dirs = Vec::new();
    for (p, fail_after) in [(2, Some(40_000)), (3, Some(40_000)), (2, None)] {
        let env = StreamExecutionEnvironment::new("vwap");
        let seen = Arc::new(AtomicU64::new(0));
        jobs::vwap_stream(
            &env,
            VwapParams {
                seed: 11,
                events: Some(EVENTS),
                pace: Pace::Rate(200_000.0),
                latency_sample: 1,
            },
        )
        .map(move |v: Vwap| {
            let n = seen.fetch_add(1, Ordering::Relaxed);
            if fail_after == Some(n) {
                panic!("injected failure after {n} results");
            }
            (v.symbol, v.vwap)
        })
        .sink_to_files(&out);
        let dir = tempfile::tempdir().unwrap();
        let cfg = failing_for_good(dir.path());
        let mut graph = JobGraph::build(env.stream_graph(), Some(p), 1, true).unwrap();
        graph.restore_from = from.clone();
        let mut mc = MiniCluster::start(&cfg).unwrap();
        let r = mc
            .execute(
                &graph,
                &AtomicBool::new(false),
                Duration::from_secs(60),
                &mut |_| {},
            )
            .unwrap();
        if fail_after.is_none() {
            assert_eq!(r.status, JobStatus::Finished, "p={p}: {:?}", r.exceptions);
            break;
        }
        assert!(matches!(r.status, JobStatus::Failed(_)), "{:?}", r.status);
        assert!(r.checkpoints.completed > 0, "p={p}: {:?}", r.checkpoints);
        from = Some(std::path::PathBuf::from(&r.checkpoints.last_path));
        dirs.push(dir);
    }
    // Parts of a symbol's results lie in several subtasks' files across the runs:
    // compare each symbol's results as a multiset (order within a part is checked by
    // the single-parallelism tests).
    let sorted = |m: std::collections::HashMap<u32, Vec<i64>>| {
        let mut v: Vec<(u32, Vec<i64>)> = m
            .into_iter()
            .map(|(s, mut r)| {
                r.sort_unstable();
                (s, r)
            })
            .collect();
        v.sort();
        v
    };
    let got = sorted(jobs::read_vwap_output(&out).unwrap());
    let want = sorted(jobs::vwap_reference(11, EVENTS, 2));
    assert_eq!(got.len(), want.len(), "symbols");
    assert!(
        got == want,
        "the committed results differ from the reference"
    );
    // Every part was committed: nothing hidden is left.
    let hidden: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
    // The p=3 run wrote through a third subtask.
    assert!(std::fs::read_dir(&out).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("part-2-")));
}
