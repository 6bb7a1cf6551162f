//! `bench ring`: the frame ring against the hardware floor, crossbeam's ArrayQueue and
//! rtrb, between two pinned threads and between two processes.
//!
//! Ping-pong: one round trip of a 64-byte frame, timed with the TSC; one-way = RTT / 2.
//! Variants run interleaved in rounds so that a change in the host's core-to-core time
//! (the vCPUs move) hits them all alike. Streaming: 64-byte frames one way, first send to
//! last receive.
//!
//! Timed windows hold steady state only: the clock is calibrated before the first one;
//! every thread and process is started, pinned and attached before one opens (threads
//! meet at a spinning barrier; a child process proves it by answering); and ping-pong
//! first makes untimed round trips over a whole lap of its buffer, so that page faults
//! and cold lines stay out of the max column.
//!
//! Park: how long a 10 µs `park_timeout` really sleeps with the kernel's
//! default timer slack and with the slack slot threads set (the p50 column is the sleep).
#![allow(unsafe_code)]

use crate::clock::{ticks, Clock};
use crate::report::{histogram, Row};
use anyhow::{anyhow, bail, Context, Result};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use spate_dataplane::ring::{ClaimError, Consumer, FrameType, Producer, Region, Ring};
use std::hint::spin_loop;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload bytes per frame.
pub const FRAME: usize = 64;
type Msg = [u8; FRAME];
/// Ring bytes for streaming (and slots of the same bytes for the queues).
const RING_BYTES: usize = 1 << 18;
const QUEUE_SLOTS: usize = RING_BYTES / FRAME;
/// Ping-pong keeps one frame in flight: a ring small enough to stay in L1 (the same bytes
/// for every implementation).
const PINGPONG_BYTES: usize = 1 << 14;
const PINGPONG_SLOTS: usize = PINGPONG_BYTES / FRAME;
const BATCH: usize = 64;

/// Benchmark sizes.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Round trips per ping-pong variant (split over `rounds`).
    pub round_trips: u64,
    /// Frames per streaming variant (split over `rounds`).
    pub frames: u64,
    /// Interleaved rounds.
    pub rounds: u64,
    /// The two cores to pin to.
    pub cores: (usize, usize),
}

fn pin(core: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn spawn_pinned<T: Send + 'static>(
    core: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        pin(core);
        f()
    })
}

/// A one-use barrier whose parties spin: none of them is asleep (and still waking up)
/// when another leaves it and opens a timed window, as with `std::sync::Barrier`.
struct SpinBarrier {
    arrived: CachePadded<AtomicU64>,
    parties: u64,
}

impl SpinBarrier {
    fn new(parties: u64) -> Arc<Self> {
        Arc::new(Self {
            arrived: CachePadded::new(AtomicU64::new(0)),
            parties,
        })
    }

    /// Arrives and spins until every party has.
    fn wait(&self) {
        // AcqRel/Acquire: what each party did before arriving (pinning, setting up)
        // happens before any party leaves.
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < self.parties {
            spin_loop();
        }
    }

    /// As `wait`, for the side that spawned `other`: fails instead of spinning for ever
    /// if `other` ended (panicked) before arriving.
    fn wait_for<T>(&self, other: &std::thread::JoinHandle<T>) -> Result<()> {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        while self.arrived.load(Ordering::Acquire) < self.parties {
            if other.is_finished() {
                bail!("benchmark thread ended before reaching the barrier");
            }
            spin_loop();
        }
        Ok(())
    }
}

/// Runs `f` on a thread pinned to `core` once the caller has met it, pinned and running,
/// at a barrier.
fn spawn_pinned_and_meet<T: Send + 'static>(
    core: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>> {
    let barrier = SpinBarrier::new(2);
    let b2 = barrier.clone();
    let handle = spawn_pinned(core, move || {
        b2.wait();
        f()
    });
    barrier.wait_for(&handle)?;
    Ok(handle)
}

/// Untimed round trips before the timed ones: two laps of every implementation's
/// ping-pong buffer (PINGPONG_SLOTS slots, or the same bytes of ring), so that its pages
/// are faulted in and its lines are warm; for a child process, the first of them is also
/// what shows that it has started, pinned itself and attached.
const WARMUP_ROUND_TRIPS: u64 = 2 * PINGPONG_SLOTS as u64;

/// Makes the warm-up round trips, then `n` timed ones (one-way = round trip / 2).
/// `round_trip(i)` sends message `i` and waits for its echo; the echo side answers
/// `WARMUP_ROUND_TRIPS + n` messages.
fn round_trips(n: u64, clock: &Clock, h: &mut Histogram<u64>, mut round_trip: impl FnMut(u64)) {
    for i in 0..WARMUP_ROUND_TRIPS {
        round_trip(i);
    }
    for i in WARMUP_ROUND_TRIPS..WARMUP_ROUND_TRIPS + n {
        let t0 = ticks();
        round_trip(i);
        let _ = h.record(clock.ns(ticks() - t0) / 2);
    }
}

fn spin_send(p: &mut Producer, payload: &[u8]) {
    loop {
        match p.try_claim(payload.len(), FrameType::Data) {
            Ok(mut c) => {
                c.payload_mut().copy_from_slice(payload);
                c.commit();
                p.publish();
                return;
            }
            Err(ClaimError::Full) => spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
}

// ---------------------------------------------------------------- ping-pong, threads

/// One cache line bounced between the two pinned cores: the hardware floor.
///
/// # Panics
/// If the echo thread does (it cannot: it only spins on the line).
pub fn floor_pingpong(n: u64, p: &Params, clock: &Clock, h: &mut Histogram<u64>) {
    let line = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let l2 = line.clone();
    let total = WARMUP_ROUND_TRIPS + n;
    let echo = spawn_pinned_and_meet(p.cores.1, move || {
        for i in 0..total {
            // Acquire/Release: the "message" is the value itself; orderings mirror a
            // real hand-off so the floor costs what one would.
            while l2.load(Ordering::Acquire) != 2 * i + 1 {
                spin_loop();
            }
            l2.store(2 * i + 2, Ordering::Release);
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    round_trips(n, clock, h, |i| {
        line.store(2 * i + 1, Ordering::Release);
        while line.load(Ordering::Acquire) != 2 * i + 2 {
            spin_loop();
        }
    });
    if echo.join().is_err() {
        panic!("echo thread panicked");
    }
}

fn echo_ring(n: u64, rx: &mut Consumer, tx: &mut Producer) {
    for _ in 0..n {
        loop {
            match rx.try_read() {
                Ok(Some(f)) => {
                    let payload = f.payload();
                    loop {
                        match tx.try_claim(payload.len(), FrameType::Data) {
                            Ok(mut c) => {
                                c.payload_mut().copy_from_slice(payload);
                                c.commit();
                                tx.publish();
                                break;
                            }
                            Err(ClaimError::Full) => spin_loop(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    break;
                }
                Ok(None) => spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        rx.release();
    }
}

/// Sends message `i` on `tx` and waits for its echo on `rx`.
fn ring_round_trip(tx: &mut Producer, rx: &mut Consumer, i: u64) {
    let mut msg: Msg = [1; FRAME];
    msg[..8].copy_from_slice(&i.to_le_bytes());
    spin_send(tx, &msg);
    loop {
        match rx.try_read() {
            Ok(Some(_)) => break,
            Ok(None) => spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
    rx.release();
}

fn spate_pingpong(n: u64, p: &Params, clock: &Clock, h: &mut Histogram<u64>) -> Result<()> {
    let (mut a_tx, mut b_rx) = Ring::anonymous(PINGPONG_BYTES)?;
    let (mut b_tx, mut a_rx) = Ring::anonymous(PINGPONG_BYTES)?;
    let total = WARMUP_ROUND_TRIPS + n;
    let echo = spawn_pinned_and_meet(p.cores.1, move || echo_ring(total, &mut b_rx, &mut b_tx))?;
    round_trips(n, clock, h, |i| ring_round_trip(&mut a_tx, &mut a_rx, i));
    echo.join().map_err(|_| anyhow!("echo thread panicked"))
}

fn rtrb_pingpong(n: u64, p: &Params, clock: &Clock, h: &mut Histogram<u64>) -> Result<()> {
    let (mut a_tx, mut b_rx) = rtrb::RingBuffer::<Msg>::new(PINGPONG_SLOTS);
    let (mut b_tx, mut a_rx) = rtrb::RingBuffer::<Msg>::new(PINGPONG_SLOTS);
    let total = WARMUP_ROUND_TRIPS + n;
    let echo = spawn_pinned_and_meet(p.cores.1, move || {
        for _ in 0..total {
            let m = loop {
                if let Ok(m) = b_rx.pop() {
                    break m;
                }
                spin_loop();
            };
            while b_tx.push(m).is_err() {
                spin_loop();
            }
        }
    })?;
    let mut msg: Msg = [1; FRAME];
    round_trips(n, clock, h, |i| {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        while a_tx.push(msg).is_err() {
            spin_loop();
        }
        while a_rx.pop().is_err() {
            spin_loop();
        }
    });
    echo.join().map_err(|_| anyhow!("echo thread panicked"))
}

fn arrayqueue_pingpong(n: u64, p: &Params, clock: &Clock, h: &mut Histogram<u64>) -> Result<()> {
    let ab = Arc::new(ArrayQueue::<Msg>::new(PINGPONG_SLOTS));
    let ba = Arc::new(ArrayQueue::<Msg>::new(PINGPONG_SLOTS));
    let (ab2, ba2) = (ab.clone(), ba.clone());
    let total = WARMUP_ROUND_TRIPS + n;
    let echo = spawn_pinned_and_meet(p.cores.1, move || {
        for _ in 0..total {
            let m = loop {
                if let Some(m) = ab2.pop() {
                    break m;
                }
                spin_loop();
            };
            while ba2.push(m).is_err() {
                spin_loop();
            }
        }
    })?;
    let mut msg: Msg = [1; FRAME];
    round_trips(n, clock, h, |i| {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        while ab.push(msg).is_err() {
            spin_loop();
        }
        while ba.pop().is_none() {
            spin_loop();
        }
    });
    echo.join().map_err(|_| anyhow!("echo thread panicked"))
}

// ---------------------------------------------------------------- streaming, threads

/// Runs `produce` on the second core and `consume` here, timed from the barrier (both
/// threads pinned and spinning) to the consumer's last frame. Returns frames per second.
fn stream<P, C>(n: u64, p: &Params, produce: P, consume: C) -> Result<f64>
where
    P: FnOnce(u64) + Send + 'static,
    C: FnOnce(u64) -> u64,
{
    let producer = spawn_pinned_and_meet(p.cores.1, move || produce(n))?;
    let start = Instant::now();
    let got = consume(n);
    let secs = start.elapsed().as_secs_f64();
    producer
        .join()
        .map_err(|_| anyhow!("producer thread panicked"))?;
    assert_eq!(got, n);
    Ok(n as f64 / secs)
}

fn spate_produce(tx: &mut Producer, n: u64, batch: usize) {
    let mut msg: Msg = [3; FRAME];
    let mut staged = 0;
    for i in 0..n {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        loop {
            match tx.try_claim(FRAME, FrameType::Data) {
                Ok(mut c) => {
                    c.payload_mut().copy_from_slice(&msg);
                    c.commit();
                    break;
                }
                Err(ClaimError::Full) => {
                    tx.publish();
                    staged = 0;
                    spin_loop();
                }
                Err(e) => panic!("{e}"),
            }
        }
        staged += 1;
        if staged >= batch {
            tx.publish();
            staged = 0;
        }
    }
    tx.publish();
}

fn spate_consume(rx: &mut Consumer, n: u64) -> u64 {
    let mut got = 0u64;
    let mut sum = 0u64;
    while got < n {
        match rx.poll(256, |f| sum = sum.wrapping_add(u64::from(f.payload()[0]))) {
            Ok(0) => spin_loop(),
            Ok(k) => got += k as u64,
            Err(e) => panic!("{e}"),
        }
    }
    std::hint::black_box(sum);
    got
}

fn spate_stream(n: u64, p: &Params, batch: usize) -> Result<f64> {
    let (mut tx, mut rx) = Ring::anonymous(RING_BYTES)?;
    stream(
        n,
        p,
        move |n| spate_produce(&mut tx, n, batch),
        |n| spate_consume(&mut rx, n),
    )
}

fn rtrb_stream(n: u64, p: &Params) -> Result<f64> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Msg>::new(QUEUE_SLOTS);
    stream(
        n,
        p,
        move |n| {
            let mut msg: Msg = [3; FRAME];
            for i in 0..n {
                msg[..8].copy_from_slice(&i.to_le_bytes());
                while tx.push(msg).is_err() {
                    spin_loop();
                }
            }
        },
        |n| {
            let mut got = 0;
            let mut sum = 0u64;
            while got < n {
                match rx.pop() {
                    Ok(m) => {
                        sum = sum.wrapping_add(u64::from(m[0]));
                        got += 1;
                    }
                    Err(_) => spin_loop(),
                }
            }
            std::hint::black_box(sum);
            got
        },
    )
}

fn rtrb_stream_chunked(n: u64, p: &Params) -> Result<f64> {
    let (mut tx, mut rx) = rtrb::RingBuffer::<Msg>::new(QUEUE_SLOTS);
    stream(
        n,
        p,
        move |n| {
            let mut i = 0u64;
            while i < n {
                let want = (BATCH as u64).min(n - i) as usize;
                match tx.write_chunk_uninit(want) {
                    Ok(chunk) => {
                        let base = i;
                        let written = chunk.fill_from_iter((0..want as u64).map(|k| {
                            let mut m: Msg = [3; FRAME];
                            m[..8].copy_from_slice(&(base + k).to_le_bytes());
                            m
                        }));
                        i += written as u64;
                    }
                    Err(_) => spin_loop(),
                }
            }
        },
        |n| {
            let mut got = 0;
            let mut sum = 0u64;
            while got < n {
                let avail = rx.slots();
                if avail == 0 {
                    spin_loop();
                    continue;
                }
                if let Ok(chunk) = rx.read_chunk(avail.min(256)) {
                    let (a, b) = chunk.as_slices();
                    for m in a.iter().chain(b) {
                        sum = sum.wrapping_add(u64::from(m[0]));
                    }
                    got += chunk.len() as u64;
                    chunk.commit_all();
                }
            }
            std::hint::black_box(sum);
            got
        },
    )
}

fn arrayqueue_stream(n: u64, p: &Params) -> Result<f64> {
    let q = Arc::new(ArrayQueue::<Msg>::new(QUEUE_SLOTS));
    let q2 = q.clone();
    stream(
        n,
        p,
        move |n| {
            let mut msg: Msg = [3; FRAME];
            for i in 0..n {
                msg[..8].copy_from_slice(&i.to_le_bytes());
                while q2.push(msg).is_err() {
                    spin_loop();
                }
            }
        },
        |n| {
            let mut got = 0;
            let mut sum = 0u64;
            while got < n {
                match q.pop() {
                    Some(m) => {
                        sum = sum.wrapping_add(u64::from(m[0]));
                        got += 1;
                    }
                    None => spin_loop(),
                }
            }
            std::hint::black_box(sum);
            got
        },
    )
}

// ---------------------------------------------------------------- processes

fn shm_name(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "spate-bench-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn child(args: &[String]) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .arg("ring-child")
        .args(args)
        .spawn()
        .context("starting the benchmark's child process")
}

fn wait_child(mut c: Child) -> Result<()> {
    let st = c.wait()?;
    if !st.success() {
        bail!("benchmark child process failed: {st}");
    }
    Ok(())
}

/// The floor's cache line in a shared file.
struct SharedLine {
    region: Region,
}

impl SharedLine {
    fn word(&self) -> &AtomicU64 {
        // The region is at least one page, page aligned, and lives as long as `self`.
        // SAFETY: in bounds and aligned for a u64; AtomicU64 has u64's size and alignment.
        unsafe { &*(self.region.as_ptr() as *const AtomicU64) }
    }
}

fn floor_pingpong_processes(
    n: u64,
    p: &Params,
    clock: &Clock,
    h: &mut Histogram<u64>,
) -> Result<()> {
    let path = Ring::shm_path(&shm_name("floor"))?;
    let region = Region::create_file(&path, 4096, true)?;
    let line = SharedLine { region };
    let c = child(&[
        "floor-echo".into(),
        path.display().to_string(),
        (WARMUP_ROUND_TRIPS + n).to_string(),
        p.cores.1.to_string(),
    ])?;
    // The first warm-up round trip waits for the child to start, pin itself and map.
    round_trips(n, clock, h, |i| {
        line.word().store(2 * i + 1, Ordering::Release);
        while line.word().load(Ordering::Acquire) != 2 * i + 2 {
            spin_loop();
        }
    });
    wait_child(c)
}

fn spate_pingpong_processes(
    n: u64,
    p: &Params,
    clock: &Clock,
    h: &mut Histogram<u64>,
) -> Result<()> {
    let (ab, ba) = (shm_name("ab"), shm_name("ba"));
    let ring_ab = Ring::create_shm(&ab, PINGPONG_BYTES)?;
    let ring_ba = Ring::create_shm(&ba, PINGPONG_BYTES)?;
    let c = child(&[
        "ring-echo".into(),
        Ring::shm_path(&ab)?.display().to_string(),
        Ring::shm_path(&ba)?.display().to_string(),
        (WARMUP_ROUND_TRIPS + n).to_string(),
        p.cores.1.to_string(),
    ])?;
    let (mut tx, mut rx) = (ring_ab.producer()?, ring_ba.consumer()?);
    // The first warm-up round trip waits for the child to start, pin itself and attach.
    round_trips(n, clock, h, |i| ring_round_trip(&mut tx, &mut rx, i));
    wait_child(c)
}

fn spate_stream_processes(n: u64, p: &Params, batch: usize) -> Result<f64> {
    let (data, ack) = (shm_name("data"), shm_name("ack"));
    let ring_data = Ring::create_shm(&data, RING_BYTES)?;
    let ring_ack = Ring::create_shm(&ack, 4096)?;
    let c = child(&[
        "ring-sink".into(),
        Ring::shm_path(&data)?.display().to_string(),
        Ring::shm_path(&ack)?.display().to_string(),
        n.to_string(),
        p.cores.1.to_string(),
    ])?;
    let (mut tx, mut ack_rx) = (ring_data.producer()?, ring_ack.consumer()?);
    // The child says it is ready, then the clock starts.
    wait_frame(&mut ack_rx);
    let start = Instant::now();
    spate_produce(&mut tx, n, batch);
    wait_frame(&mut ack_rx);
    let secs = start.elapsed().as_secs_f64();
    wait_child(c)?;
    Ok(n as f64 / secs)
}

fn wait_frame(rx: &mut Consumer) {
    loop {
        match rx.try_read() {
            Ok(Some(_)) => break,
            Ok(None) => spin_loop(),
            Err(e) => panic!("{e}"),
        }
    }
    rx.release();
}

/// The child's side of the process benchmarks: `KIND PATH.. COUNT CORE`.
pub fn child_main(args: &[String]) -> Result<()> {
    let [kind, rest @ ..] = args else {
        bail!("ring-child needs a kind");
    };
    let num = |s: &String| -> Result<u64> { s.parse().context("bad number") };
    match (kind.as_str(), rest) {
        ("floor-echo", [path, n, core]) => {
            pin(num(core)? as usize);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            let line = SharedLine {
                region: Region::map_file(&file, Path::new(path))?,
            };
            for i in 0..num(n)? {
                while line.word().load(Ordering::Acquire) != 2 * i + 1 {
                    spin_loop();
                }
                line.word().store(2 * i + 2, Ordering::Release);
            }
        }
        ("ring-echo", [ab, ba, n, core]) => {
            pin(num(core)? as usize);
            let mut rx = Ring::attach_file(Path::new(ab))?.consumer()?;
            let mut tx = Ring::attach_file(Path::new(ba))?.producer()?;
            echo_ring(num(n)?, &mut rx, &mut tx);
        }
        ("ring-sink", [data, ack, n, core]) => {
            pin(num(core)? as usize);
            let mut rx = Ring::attach_file(Path::new(data))?.consumer()?;
            let mut tx = Ring::attach_file(Path::new(ack))?.producer()?;
            spin_send(&mut tx, &[0; 8]);
            spate_consume(&mut rx, num(n)?);
            spin_send(&mut tx, &[1; 8]);
        }
        _ => bail!("unknown ring-child invocation {args:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------- park

/// The park asked for: a short idle park, as `park:10us` or a backoff's first steps.
const PARK: Duration = Duration::from_micros(10);
/// Parks measured per slack per round.
const PARK_SAMPLES: u64 = 2_000;
/// The kernel's default timer slack.
const DEFAULT_TIMER_SLACK_NS: u64 = 50_000;

/// Records how long [`PARK`] really sleeps on a thread pinned to `core` whose timer slack
/// is `slack_ns`.
fn park_sleep(slack_ns: u64, core: usize, clock: &Clock, h: &mut Histogram<u64>) -> Result<()> {
    let clock = *clock;
    let sleeps = spawn_pinned(core, move || -> Result<Histogram<u64>> {
        spate_dataplane::sys::set_timer_slack_ns(slack_ns)?;
        let mut h = crate::report::histogram();
        for _ in 0..PARK_SAMPLES {
            let t0 = ticks();
            std::thread::park_timeout(PARK);
            let _ = h.record(clock.ns(ticks() - t0));
        }
        Ok(h)
    })
    .join()
    .map_err(|_| anyhow!("park thread panicked"))??;
    h.add(&sleeps)?;
    Ok(())
}

// ---------------------------------------------------------------- driver

/// Runs every variant and returns the rows.
pub fn run(p: &Params) -> Result<Vec<Row>> {
    pin(p.cores.0);
    // Before any timed window, on the core that times: no variant pays for it.
    let clock = Clock::calibrate();
    let rounds = p.rounds.max(1);
    let rt = (p.round_trips / rounds).max(1);
    let frames = (p.frames / rounds).max(1);

    let mut floor_t = histogram();
    let mut spate_t = histogram();
    let mut rtrb_t = histogram();
    let mut aq_t = histogram();
    let mut floor_p = histogram();
    let mut spate_p = histogram();
    let mut park_default = histogram();
    let mut park_least = histogram();
    let mut floor_first = histogram();
    let mut floor_last = histogram();
    let mut rates: Vec<(&str, &str, f64)> = Vec::new();
    let mut add = |topo: &'static str, imp: &'static str, r: f64| {
        if let Some(e) = rates.iter_mut().find(|e| e.0 == topo && e.1 == imp) {
            e.2 += r / rounds as f64;
        } else {
            rates.push((topo, imp, r / rounds as f64));
        }
    };
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        let mut f = histogram();
        floor_pingpong(rt, p, &clock, &mut f);
        if round == 0 {
            floor_first.add(&f)?;
        }
        if round == rounds - 1 {
            floor_last.add(&f)?;
        }
        floor_t.add(&f)?;
        spate_pingpong(rt, p, &clock, &mut spate_t)?;
        rtrb_pingpong(rt, p, &clock, &mut rtrb_t)?;
        arrayqueue_pingpong(rt, p, &clock, &mut aq_t)?;
        floor_pingpong_processes(rt, p, &clock, &mut floor_p)?;
        spate_pingpong_processes(rt, p, &clock, &mut spate_p)?;

        add("stream_threads", "spate", spate_stream(frames, p, 1)?);
        add("stream_threads", "rtrb", rtrb_stream(frames, p)?);
        add(
            "stream_threads",
            "arrayqueue",
            arrayqueue_stream(frames, p)?,
        );
        add(
            "stream_threads_batched",
            "spate",
            spate_stream(frames, p, BATCH)?,
        );
        add(
            "stream_threads_batched",
            "rtrb",
            rtrb_stream_chunked(frames, p)?,
        );
        add(
            "stream_processes",
            "spate",
            spate_stream_processes(frames, p, 1)?,
        );
        park_sleep(DEFAULT_TIMER_SLACK_NS, p.cores.1, &clock, &mut park_default)?;
        park_sleep(
            spate_dataplane::sys::PARKING_TIMER_SLACK_NS,
            p.cores.1,
            &clock,
            &mut park_least,
        )?;
    }
    eprintln!(
        "core-to-core one-way (floor p50): {} ns in the first round, {} ns in the last",
        floor_first.value_at_quantile(0.5),
        floor_last.value_at_quantile(0.5)
    );
    let mut rows = vec![
        Row::latency("pingpong_threads", "floor", &floor_t),
        Row::latency("pingpong_threads", "spate", &spate_t),
        Row::latency("pingpong_threads", "rtrb", &rtrb_t),
        Row::latency("pingpong_threads", "arrayqueue", &aq_t),
        Row::latency("pingpong_processes", "floor", &floor_p),
        Row::latency("pingpong_processes", "spate", &spate_p),
        Row::latency("park_10us", "slack_50us", &park_default),
        Row::latency("park_10us", "slack_1ns", &park_least),
    ];
    rows.extend(rates.into_iter().map(|(t, i, r)| Row::rate(t, i, r)));
    Ok(rows)
}
