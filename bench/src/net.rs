//! `bench net`: channels between hosts — ping-pong latency of 64-byte frames and
//! one-way streaming rates (one channel, and 64 channels on one connection) between two
//! nodes' network agents over io_uring and over epoll, beside plain blocking sockets
//! with TCP_NODELAY, in the same run; over loopback, and over a veth pair between two
//! network namespaces that the benchmark creates (as root, with iproute2) and removes.
//!
//! Each side is one pinned thread that polls its agent and its rings (no agent thread:
//! two cores, two busy threads).

use crate::clock::{ticks, Clock};
use crate::report::{histogram, Row};
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use spate_dataplane::net::{AgentConfig, NetAgent, TransportKind, UringOptions};
use spate_dataplane::ring::{Consumer, FrameType, Producer, Ring};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Payload bytes per frame.
pub const FRAME: usize = 64;
const WARMUP: u64 = 1000;

fn pin(core: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// Where the two sides run.
#[derive(Clone)]
struct Hosts {
    /// Network namespace of each side (`None`: the caller's).
    ns: [Option<String>; 2],
    ip: [IpAddr; 2],
    name: &'static str,
    uring: UringOptions,
}

/// Moves the calling thread into network namespace `ns` (sockets it creates from now
/// on live there).
fn enter(ns: &Option<String>) -> Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("opening network namespace {ns}"))?;
    use std::os::fd::AsRawFd;
    // `f` is an open namespace file for the duration of the call; setns only changes
    // this thread's network namespace.
    // SAFETY: a valid open descriptor and a namespace type, as argued above.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        anyhow::bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

struct Side {
    agent: NetAgent,
    tx: Vec<Producer>,
    rx: Vec<Consumer>,
}

impl Side {
    fn send(&mut self, ch: usize, msg: &[u8]) {
        while self.tx[ch].try_send(FrameType::Data, msg).is_err() {
            self.agent.poll_once();
        }
        self.agent.poll_once();
    }

    /// Polls until frames arrive on any channel; returns how many arrived.
    fn recv_some(&mut self) -> usize {
        loop {
            self.agent.poll_once();
            let mut n = 0;
            for c in &mut self.rx {
                n += c.poll(256, |_| ()).unwrap_or(0);
            }
            if n > 0 {
                return n;
            }
        }
    }

    fn linger(&mut self, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            self.agent.poll_once();
        }
    }
}

/// Waits for both sides; side A's result.
fn join_sides<R>(
    ta: std::thread::JoinHandle<Result<R>>,
    tb: std::thread::JoinHandle<Result<()>>,
) -> Result<R> {
    let r = ta
        .join()
        .map_err(|_| anyhow::anyhow!("side A panicked"))??;
    tb.join()
        .map_err(|_| anyhow::anyhow!("side B panicked"))??;
    Ok(r)
}

/// Runs `a` and `b` as the two nodes (1 and 2) with `channels` channels each way, each
/// on its own pinned thread in its own namespace.
fn agents<A, B, R>(
    hosts: &Hosts,
    kind: TransportKind,
    channels: usize,
    cores: (usize, usize),
    a: A,
    b: B,
) -> Result<R>
where
    A: FnOnce(&mut Side) -> R + Send + 'static,
    B: FnOnce(&mut Side) + Send + 'static,
    R: Send + 'static,
{
    let uring = hosts.uring;
    let (to_a, from_b) = mpsc::channel::<SocketAddr>();
    let (to_b, from_a) = mpsc::channel::<SocketAddr>();
    let side = move |node: u64,
                     ns: Option<String>,
                     ip: IpAddr,
                     core: usize,
                     tell: mpsc::Sender<SocketAddr>,
                     hear: mpsc::Receiver<SocketAddr>|
          -> Result<Side> {
        enter(&ns)?;
        pin(core);
        let agent = NetAgent::bind(AgentConfig {
            node,
            listen: SocketAddr::new(ip, 0),
            transport: kind,
            uring,
            keepalive: Duration::from_secs(1),
            timeout: Duration::from_secs(30),
            mac: None,
        })?;
        let h = agent.handle();
        tell.send(h.local_addr())?;
        let peer_addr = hear.recv()?;
        let peer = 3 - node;
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for ch in 0..channels {
            let (p, c) = Ring::anonymous(1 << 16)?;
            h.open_out(peer, peer_addr, node * 1000 + ch as u64, c);
            tx.push(p);
            let (p, c) = Ring::anonymous(1 << 16)?;
            h.open_in(peer, peer_addr, peer * 1000 + ch as u64, p);
            rx.push(c);
        }
        Ok(Side { agent, tx, rx })
    };
    let (ns_b, ip_b) = (hosts.ns[1].clone(), hosts.ip[1]);
    let tb = std::thread::spawn(move || -> Result<()> {
        let mut s = side(2, ns_b, ip_b, cores.1, to_a, from_a)?;
        b(&mut s);
        Ok(())
    });
    let (ns_a, ip_a) = (hosts.ns[0].clone(), hosts.ip[0]);
    let ta = std::thread::spawn(move || -> Result<R> {
        let mut s = side(1, ns_a, ip_a, cores.0, to_b, from_b)?;
        Ok(a(&mut s))
    });
    join_sides(ta, tb)
}

fn pingpong_agents(
    hosts: &Hosts,
    kind: TransportKind,
    n: u64,
    cores: (usize, usize),
    clock: &Clock,
) -> Result<Histogram<u64>> {
    let clock = *clock;
    agents(
        hosts,
        kind,
        1,
        cores,
        move |a| {
            let msg = [1u8; FRAME];
            let mut h = histogram();
            for i in 0..WARMUP + n {
                let t0 = ticks();
                a.send(0, &msg);
                a.recv_some();
                if i >= WARMUP {
                    let _ = h.record(clock.ns(ticks() - t0) / 2);
                }
            }
            a.linger(Duration::from_millis(20));
            h
        },
        move |b| {
            let msg = [2u8; FRAME];
            for _ in 0..WARMUP + n {
                b.recv_some();
                b.send(0, &msg);
            }
            b.linger(Duration::from_millis(50));
        },
    )
}

fn stream_agents(
    hosts: &Hosts,
    kind: TransportKind,
    channels: usize,
    n: u64,
    cores: (usize, usize),
) -> Result<f64> {
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    agents(
        hosts,
        kind,
        channels,
        cores,
        move |a| {
            let msg = [3u8; FRAME];
            // Connect first: the rate is of frames, not of the handshake.
            a.send(0, &msg);
            let start = Instant::now();
            let mut sent = 1u64;
            while sent < n {
                for ch in 0..channels {
                    while sent < n && a.tx[ch].try_push(FrameType::Data, &msg).is_ok() {
                        sent += 1;
                    }
                    a.tx[ch].publish();
                }
                a.agent.poll_once();
            }
            // Acquire: pairs with the receiver's release store once it has every frame.
            while !done.load(Ordering::Acquire) {
                a.agent.poll_once();
            }
            n as f64 / start.elapsed().as_secs_f64()
        },
        move |b| {
            let mut got = 0u64;
            while got < n {
                got += b.recv_some() as u64;
            }
            flag.store(true, Ordering::Release);
            b.linger(Duration::from_millis(20));
        },
    )
}

/// Plain blocking sockets with TCP_NODELAY: B listens, A connects.
fn blocking<A, B, R>(hosts: &Hosts, cores: (usize, usize), a: A, b: B) -> Result<R>
where
    A: FnOnce(TcpStream) -> Result<R> + Send + 'static,
    B: FnOnce(TcpStream) + Send + 'static,
    R: Send + 'static,
{
    let (tell, hear) = mpsc::channel::<SocketAddr>();
    let (ns_b, ip_b) = (hosts.ns[1].clone(), hosts.ip[1]);
    let tb = std::thread::spawn(move || -> Result<()> {
        enter(&ns_b)?;
        pin(cores.1);
        let l = TcpListener::bind(SocketAddr::new(ip_b, 0))?;
        tell.send(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        s.set_nodelay(true)?;
        b(s);
        Ok(())
    });
    let ns_a = hosts.ns[0].clone();
    let ta = std::thread::spawn(move || -> Result<R> {
        enter(&ns_a)?;
        pin(cores.0);
        let s = TcpStream::connect(hear.recv()?)?;
        s.set_nodelay(true)?;
        a(s)
    });
    join_sides(ta, tb)
}

fn pingpong_blocking(
    hosts: &Hosts,
    n: u64,
    cores: (usize, usize),
    clock: &Clock,
) -> Result<Histogram<u64>> {
    let clock = *clock;
    blocking(
        hosts,
        cores,
        move |mut a| {
            let mut buf = [1u8; FRAME];
            let mut h = histogram();
            for i in 0..WARMUP + n {
                let t0 = ticks();
                a.write_all(&buf)?;
                a.read_exact(&mut buf)?;
                if i >= WARMUP {
                    let _ = h.record(clock.ns(ticks() - t0) / 2);
                }
            }
            Ok(h)
        },
        move |mut b| {
            let mut buf = [0u8; FRAME];
            for _ in 0..WARMUP + n {
                if b.read_exact(&mut buf).is_err() || b.write_all(&buf).is_err() {
                    return;
                }
            }
        },
    )
}

fn stream_blocking(hosts: &Hosts, n: u64, cores: (usize, usize)) -> Result<f64> {
    let total = n as usize * FRAME;
    let done = Arc::new(AtomicBool::new(false));
    let flag = done.clone();
    blocking(
        hosts,
        cores,
        move |mut a| {
            let msg = [3u8; FRAME];
            let start = Instant::now();
            for _ in 0..n {
                a.write_all(&msg)?;
            }
            // Acquire: pairs with the receiver's release store.
            while !done.load(Ordering::Acquire) {
                std::thread::yield_now();
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        },
        move |mut b| {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < total {
                match b.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got += k,
                }
            }
            flag.store(true, Ordering::Release);
        },
    )
}

/// Two namespaces joined by a veth pair on a private /30, removed on drop.
struct Veth {
    ns: [String; 2],
}

impl Veth {
    fn create() -> Result<Self> {
        let id = std::process::id() % 100_000;
        let ns = [format!("spb{id}a"), format!("spb{id}b")];
        let v = Self { ns: ns.clone() };
        let ip = |args: &[&str]| -> Result<()> {
            let st = std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .context("running ip")?;
            anyhow::ensure!(st.success(), "ip {} failed", args.join(" "));
            Ok(())
        };
        ip(&["netns", "add", &ns[0]])?;
        ip(&["netns", "add", &ns[1]])?;
        ip(&[
            "link", "add", "spbveth0", "netns", &ns[0], "type", "veth", "peer", "name", "spbveth1",
            "netns", &ns[1],
        ])?;
        for (i, n) in ns.iter().enumerate() {
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("10.78.0.{}/30", i + 1),
                "dev",
                &format!("spbveth{i}"),
            ])?;
            ip(&["-n", n, "link", "set", &format!("spbveth{i}"), "up"])?;
            ip(&["-n", n, "link", "set", "lo", "up"])?;
        }
        Ok(v)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", n])
                .status();
        }
    }
}

const IMPLS: [(&str, TransportKind); 2] = [
    ("io_uring", TransportKind::IoUring),
    ("epoll", TransportKind::Epoll),
];

/// Runs every variant over loopback, and over veth where namespaces can be made.
pub fn run(
    round_trips: u64,
    frames: u64,
    cores: (usize, usize),
    uring: UringOptions,
) -> Result<Vec<Row>> {
    let clock = Clock::calibrate();
    let mut rows = Vec::new();
    let loopback = Hosts {
        ns: [None, None],
        ip: [IpAddr::from([127, 0, 0, 1]); 2],
        name: "loopback",
        uring,
    };
    let veth = match Veth::create() {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("net: no veth rows ({e:#}); they need root and iproute2");
            None
        }
    };
    let mut topologies = vec![loopback.clone()];
    if let Some(v) = &veth {
        topologies.push(Hosts {
            ns: [Some(v.ns[0].clone()), Some(v.ns[1].clone())],
            ip: [IpAddr::from([10, 78, 0, 1]), IpAddr::from([10, 78, 0, 2])],
            name: "veth",
            uring,
        });
    }
    for hosts in &topologies {
        let t = |what: &str| format!("{what}_{}", hosts.name);
        for (name, kind) in IMPLS {
            let h = pingpong_agents(hosts, kind, round_trips, cores, &clock)?;
            rows.push(Row::latency(&t("pingpong"), name, &h));
        }
        let h = pingpong_blocking(hosts, round_trips, cores, &clock)?;
        rows.push(Row::latency(&t("pingpong"), "blocking", &h));
        for (name, kind) in IMPLS {
            let rate = stream_agents(hosts, kind, 1, frames, cores)?;
            rows.push(Row::rate(&t("stream"), name, rate));
        }
        rows.push(Row::rate(
            &t("stream"),
            "blocking",
            stream_blocking(hosts, frames, cores)?,
        ));
    }
    for (name, kind) in IMPLS {
        let rate = stream_agents(&loopback, kind, 64, frames, cores)?;
        rows.push(Row::rate("stream_64ch_loopback", name, rate));
    }
    drop(veth);
    Ok(rows)
}
