//! The ring across threads and across processes: every byte of every frame arrives once,
//! in order; a producer process that dies is told from one that is slow.
//!
//! Child processes are this test binary re-executed with `SPATE_RING_CHILD` set: the
//! `child_entry` test does the child's part then, and nothing otherwise.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate_dataplane::ring::{ClaimError, Consumer, FrameType, PeerState, Producer, Ring, Role};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SPATE_RING_CHILD";
const DEADLINE: Duration = Duration::from_secs(60);

/// Seeded lengths and contents both sides can regenerate.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn frame(&mut self, seq: u64, max: usize, buf: &mut Vec<u8>) {
        let len = (self.next() % (max as u64 + 1)) as usize;
        buf.clear();
        buf.extend((0..len).map(|i| (seq as usize * 131 + i * 17) as u8 ^ (len as u8)));
        if len >= 8 {
            buf[..8].copy_from_slice(&seq.to_le_bytes());
        }
    }
}

fn produce(p: &mut Producer, frames: u64, max: usize, seed: u64) {
    let mut g = Gen(seed);
    let mut batch = Gen(seed ^ 0x5555);
    let mut buf = Vec::new();
    let start = Instant::now();
    for seq in 0..frames {
        g.frame(seq, max, &mut buf);
        loop {
            match p.try_push(FrameType::Data, &buf) {
                Ok(()) => break,
                Err(ClaimError::Full) => {
                    p.publish();
                    assert!(start.elapsed() < DEADLINE, "producer stuck at frame {seq}");
                    std::thread::yield_now();
                }
                Err(e) => panic!("{e}"),
            }
        }
        // Publish at random batch boundaries (1..=16 frames).
        if batch.next().is_multiple_of(16) {
            p.publish();
        }
    }
    p.publish();
    while p.try_send(FrameType::EndOfStream, &[]).is_err() {
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
}

/// Returns the number of data frames, having checked each against the generator.
fn consume(c: &mut Consumer, max: usize, seed: u64) -> u64 {
    let mut g = Gen(seed);
    let mut expect = Vec::new();
    let mut seq = 0u64;
    let start = Instant::now();
    loop {
        let mut ended = false;
        let n = c
            .poll(64, |f| match f.frame_type() {
                FrameType::Data => {
                    g.frame(seq, max, &mut expect);
                    assert_eq!(f.payload(), &expect[..], "frame {seq}");
                    seq += 1;
                }
                FrameType::EndOfStream => ended = true,
                other => panic!("unexpected {other:?}"),
            })
            .unwrap();
        if ended {
            return seq;
        }
        if n == 0 {
            assert!(
                start.elapsed() < DEADLINE,
                "consumer stuck after frame {seq}"
            );
            std::thread::yield_now();
        }
    }
}

fn spawn_child(spec: String) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["child_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait(mut child: Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("child process timed out");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The child's side. Spec: `ROLE PATH FRAMES MAX SEED`.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let ring = Ring::attach_file(parts[1].as_ref()).unwrap();
    let frames: u64 = parts[2].parse().unwrap();
    let max: usize = parts[3].parse().unwrap();
    let seed: u64 = parts[4].parse().unwrap();
    match parts[0] {
        "consume" => {
            let mut c = ring.consumer().unwrap();
            assert_eq!(consume(&mut c, max, seed), frames);
        }
        "produce" => produce(&mut ring.producer().unwrap(), frames, max, seed),
        "produce-forever" => {
            let mut p = ring.producer().unwrap();
            let mut seq = 0u64;
            loop {
                if p.try_send(FrameType::Data, &seq.to_le_bytes()).is_ok() {
                    seq += 1;
                }
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

fn name(tag: &str) -> String {
    format!("spate-it-{tag}-{}", std::process::id())
}

#[test]
fn threads_every_byte_once_in_order() {
    let (mut p, mut c) = Ring::anonymous(1 << 14).unwrap();
    let max = 700;
    let t = std::thread::spawn(move || produce(&mut p, 300_000, max, 7));
    assert_eq!(consume(&mut c, max, 7), 300_000);
    t.join().unwrap();
}

#[test]
fn two_processes_through_dev_shm() {
    let n = name("shm");
    let ring = Ring::create_shm(&n, 1 << 16).unwrap();
    let path = Ring::shm_path(&n).unwrap();
    let child = spawn_child(format!("consume {} 200000 300 11", path.display()));
    produce(&mut ring.producer().unwrap(), 200_000, 300, 11);
    assert!(wait(child).success());
    drop(ring);
    assert!(!path.exists(), "the creator removes the ring file");
}

#[test]
fn two_processes_through_a_memfd() {
    let ring = Ring::memfd("spate-it", 1 << 12).unwrap();
    let path = ring.memfd_path().unwrap();
    let child = spawn_child(format!("produce {} 100000 500 3", path.display()));
    let mut c = ring.consumer().unwrap();
    assert_eq!(consume(&mut c, 500, 3), 100_000);
    assert!(wait(child).success());
    assert_eq!(c.producer_state(0, 0), PeerState::Closed);
}

#[test]
fn a_killed_producer_process_is_gone_not_slow() {
    let n = name("kill");
    let ring = Ring::create_shm(&n, 1 << 12).unwrap();
    let path = Ring::shm_path(&n).unwrap();
    let mut child = spawn_child(format!("produce-forever {} 0 0 0", path.display()));
    let mut c = ring.consumer().unwrap();
    let start = Instant::now();
    let mut seen = 0u64;
    while seen < 100 {
        seen += c.poll(64, |_| ()).unwrap() as u64;
        assert!(start.elapsed() < DEADLINE);
        std::thread::yield_now();
    }
    assert_eq!(c.producer_state(0, 0), PeerState::Active);
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever was published is still readable; then the ring stays empty and says why.
    while c.poll(64, |_| ()).unwrap() > 0 {}
    assert!(c.try_read().unwrap().is_none());
    assert_eq!(c.producer_state(0, 0), PeerState::Gone);
    assert_eq!(ring.peer_state(Role::Producer, 0, 0), PeerState::Gone);
}
