//! The network agent on loopback: channels in both directions between two nodes over
//! the one connection the smaller node dials, for io_uring and epoll; dials that wait
//! for a late peer; peers that never come, are killed or stop answering; rogue clients.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{agent, Side};
use spate_dataplane::net::TransportKind;
use spate_dataplane::ring::{FrameType, PeerState, Ring};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);
const KINDS: [TransportKind; 2] = [TransportKind::IoUring, TransportKind::Epoll];

fn pair(kind: TransportKind, channels: usize, ring: usize) -> (Side, Side) {
    let a = agent(1, "127.0.0.1:0", kind, Duration::from_secs(10));
    let b = agent(2, "127.0.0.1:0", kind, Duration::from_secs(10));
    let (a_addr, b_addr) = (a.handle().local_addr(), b.handle().local_addr());
    (
        Side::new(a, 2, b_addr, channels, ring),
        Side::new(b, 1, a_addr, channels, ring),
    )
}

fn run_until(sides: &mut [&mut Side], frames: u64, mut until: impl FnMut(&[&mut Side]) -> bool) {
    let start = Instant::now();
    while !until(sides) {
        let mut busy = false;
        for s in sides.iter_mut() {
            busy |= s.step(frames);
        }
        if !busy {
            std::thread::yield_now();
        }
        let state: Vec<_> = sides
            .iter()
            .map(|s| (s.seq.clone(), s.next.clone()))
            .collect();
        assert!(start.elapsed() < DEADLINE, "stuck: {state:?}");
    }
}

#[test]
fn channels_both_ways_arrive_whole_and_in_order() {
    for kind in KINDS {
        let frames = 20_000;
        let (mut a, mut b) = pair(kind, 8, 1 << 14);
        run_until(&mut [&mut a, &mut b], frames, |s| {
            s.iter().all(|s| s.done(frames))
        });
        let (ha, hb) = (a.agent.handle(), b.agent.handle());
        // Flush the last counters.
        std::thread::sleep(Duration::from_millis(2));
        a.agent.poll_once();
        b.agent.poll_once();
        assert_eq!(ha.stats().connections(), 1, "{kind}: one connection");
        assert_eq!(hb.stats().connections(), 1, "{kind}: one connection");
        // Every data frame plus one end of stream per channel, each way.
        assert_eq!(ha.stats().frames_out(), 8 * (frames + 1), "{kind}");
        assert_eq!(hb.stats().frames_in(), 8 * (frames + 1), "{kind}");
        assert!(ha.stats().bytes_out() > 8 * frames * 8, "{kind}");
        assert_eq!(ha.stats().failures(), 0);
        assert_eq!(ha.stats().fallbacks() + hb.stats().fallbacks(), 0);
    }
}

#[test]
fn a_stalled_consumer_does_not_hold_up_the_other_channels() {
    for kind in KINDS {
        let frames = 5_000;
        let (mut a, mut b) = pair(kind, 4, 1 << 12);
        b.stalled[0] = true;
        // Every other channel completes while channel 0 is not read at all.
        run_until(&mut [&mut a, &mut b], frames, |s| {
            (1..4).all(|ch| s[1].ended[ch] && s[1].seq[ch] == frames)
        });
        assert!(
            b.seq[0] == 0 && a.next[0] < frames,
            "{kind}: channel 0 is held by its credit"
        );
        b.stalled[0] = false;
        run_until(&mut [&mut a, &mut b], frames, |s| {
            s.iter().all(|s| s.done(frames))
        });
    }
}

#[test]
fn a_peer_that_listens_late_is_dialed_again() {
    for kind in KINDS {
        // A free port, closed again: nothing listens there for a while.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let b_addr = format!("127.0.0.1:{port}");
        let a = agent(1, "127.0.0.1:0", kind, Duration::from_secs(10));
        let a_addr = a.handle().local_addr();
        let mut a = Side::new(a, 2, b_addr.parse().unwrap(), 2, 1 << 14);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(200) {
            a.step(100);
            std::thread::yield_now();
        }
        let b = agent(2, &b_addr, kind, Duration::from_secs(10));
        let mut b = Side::new(b, 1, a_addr, 2, 1 << 14);
        run_until(&mut [&mut a, &mut b], 100, |s| {
            s.iter().all(|s| s.done(100))
        });
    }
}

#[test]
fn a_peer_that_never_connects_fails_its_channels_within_the_timeout() {
    let timeout = Duration::from_millis(300);
    for node in [1, 3] {
        // Node 1 dials (the peer is 2) and is refused; node 3 waits to be dialed.
        let mut a = agent(node, "127.0.0.1:0", TransportKind::Epoll, timeout);
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (p, c) = Ring::anonymous(1 << 12).unwrap();
        let (mut out_p, out_c) = Ring::anonymous(1 << 12).unwrap();
        assert!(a.handle().open_in(2, dead, 7, p));
        assert!(a.handle().open_out(2, dead, 8, out_c));
        let start = Instant::now();
        loop {
            a.poll_once();
            let inbound = c.producer_state(0, 0);
            let outbound = out_p.consumer_state(0, 0);
            if inbound == PeerState::Broken && outbound == PeerState::Broken {
                break;
            }
            assert!(
                start.elapsed() < timeout * 10,
                "node {node}: {inbound:?} {outbound:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(start.elapsed() >= timeout);
        assert!(
            out_p.try_send(FrameType::Data, b"x").is_ok(),
            "writing is not an error; the task sees the closed state"
        );
        assert_eq!(
            a.handle().stats().failures(),
            1,
            "the peer given up is counted"
        );
    }
}

/// Child: node 2 on `ADDR`, streaming forever to node 1 at `PEER` and receiving from it.
#[test]
fn child_streamer() {
    let Ok(spec) = std::env::var("SPATE_AGENT_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let b = agent(2, parts[0], TransportKind::IoUring, Duration::from_secs(30));
    let mut b = Side::new(b, 1, parts[1].parse().unwrap(), 2, 1 << 14);
    loop {
        if !b.step(u64::MAX - 1) {
            std::thread::yield_now();
        }
    }
}

fn spawn_streamer(a_addr: std::net::SocketAddr) -> (std::process::Child, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_streamer", "--exact", "--nocapture"])
        .env("SPATE_AGENT_CHILD", format!("{port} {a_addr}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    (child, port)
}

fn peer_fails_the_channels(signal: i32, timeout: Duration) -> Duration {
    let a = agent(1, "127.0.0.1:0", TransportKind::IoUring, timeout);
    let a_addr = a.handle().local_addr();
    let (mut child, b_addr) = spawn_streamer(a_addr);
    let mut a = Side::new(a, 2, b_addr, 2, 1 << 14);
    // Wait until frames flow both ways.
    let start = Instant::now();
    while a.seq.iter().any(|&s| s < 1000) {
        if !a.step(u64::MAX - 1) {
            std::thread::yield_now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stream from the child"
        );
    }
    // SAFETY: signalling our own child process, whose pid we hold.
    unsafe { libc::kill(child.id() as i32, signal) };
    let hit = Instant::now();
    loop {
        a.step(u64::MAX - 1);
        let closed =
            a.rx.iter()
                .all(|c| c.producer_state(0, 0) == PeerState::Broken)
                && a.tx
                    .iter()
                    .all(|p| p.consumer_state(0, 0) == PeerState::Broken);
        if closed {
            break;
        }
        assert!(
            hit.elapsed() < timeout * 5 + Duration::from_secs(2),
            "channels still open"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = hit.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    took
}

#[test]
fn a_killed_peer_fails_the_channels_at_once() {
    // The kernel closes a dead process's sockets: no need to wait for the timeout.
    let took = peer_fails_the_channels(libc::SIGKILL, Duration::from_secs(5));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_silent_peer_fails_the_channels_after_the_timeout() {
    // A stopped process keeps its sockets open: only its silence gives it away.
    let timeout = Duration::from_millis(500);
    let took = peer_fails_the_channels(libc::SIGSTOP, timeout);
    assert!(took >= timeout / 2, "{took:?}");
}

#[test]
fn rogue_clients_are_dropped_and_the_agent_serves_on() {
    for kind in KINDS {
        let (mut a, mut b) = pair(kind, 2, 1 << 14);
        let b_addr = b.agent.handle().local_addr();
        let mut handshake = Vec::new();
        handshake.extend_from_slice(b"SPNT");
        handshake.extend_from_slice(&99u16.to_le_bytes());
        handshake.extend_from_slice(&[0, 0]);
        handshake.extend_from_slice(&5u64.to_le_bytes());
        let rogues: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n\r\n", &handshake, &[0u8; 64]];
        for bytes in rogues {
            let mut s = std::net::TcpStream::connect(b_addr).unwrap();
            s.write_all(bytes).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let start = Instant::now();
            let mut got = Vec::new();
            loop {
                b.agent.poll_once();
                let mut buf = [0u8; 64];
                match s.read(&mut buf) {
                    Ok(0) => break, // dropped
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(_) => {}
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "{kind}: rogue not dropped"
                );
            }
        }
        // The real peer still gets its channels.
        run_until(&mut [&mut a, &mut b], 1000, |s| {
            s.iter().all(|s| s.done(1000))
        });
        assert_eq!(
            b.agent.handle().stats().failures(),
            0,
            "rogues are not peers"
        );
    }
}

#[test]
fn refused_io_uring_falls_back_to_epoll() {
    if std::env::var_os("SPATE_NET_CHILD").is_none() {
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["refused_io_uring_falls_back_to_epoll", "--exact"])
            .env("SPATE_NET_CHILD", "1")
            .env("SPATE_DISABLE_IO_URING", "1")
            .status()
            .unwrap();
        assert!(st.success());
        return;
    }
    let (mut a, mut b) = pair(TransportKind::IoUring, 3, 1 << 14);
    run_until(&mut [&mut a, &mut b], 3000, |s| {
        s.iter().all(|s| s.done(3000))
    });
    assert_eq!(
        a.agent.handle().stats().fallbacks(),
        1,
        "the connection runs on epoll"
    );
    assert_eq!(
        b.agent.handle().stats().fallbacks(),
        1,
        "the connection runs on epoll"
    );
}

#[test]
fn sqpoll_connections_carry_channels_too() {
    let opts = spate_dataplane::net::UringOptions {
        sqpoll_idle_ms: Some(10),
        multishot: true,
    };
    let mk = |node| {
        spate_dataplane::net::NetAgent::bind(spate_dataplane::net::AgentConfig {
            node,
            listen: "127.0.0.1:0".parse().unwrap(),
            transport: TransportKind::IoUring,
            uring: opts,
            keepalive: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
            mac: None,
        })
        .unwrap()
    };
    let (a, b) = (mk(1), mk(2));
    let (a_addr, b_addr) = (a.handle().local_addr(), b.handle().local_addr());
    let mut a = Side::new(a, 2, b_addr, 2, 1 << 14);
    let mut b = Side::new(b, 1, a_addr, 2, 1 << 14);
    run_until(&mut [&mut a, &mut b], 2000, |s| {
        s.iter().all(|s| s.done(2000))
    });
    assert_eq!(
        a.agent.handle().stats().fallbacks(),
        0,
        "SQPOLL rings were set up"
    );
}

#[test]
fn the_largest_frames_cross_when_the_receiving_ring_is_twice_the_sending_one() {
    // Frames of every size up to the sending ring's largest, including ones above a
    // quarter of the receiving ring, in both transports. (With a receiving ring the
    // size of the sending one, the largest frames would never get enough credit: room
    // for a wrapped frame's padding is held back.)
    for kind in KINDS {
        let cap = 1 << 13;
        let a = agent(1, "127.0.0.1:0", kind, Duration::from_secs(10));
        let b = agent(2, "127.0.0.1:0", kind, Duration::from_secs(10));
        let b_addr = b.handle().local_addr();
        let (mut tx, out) = Ring::anonymous(cap).unwrap();
        let (inp, mut rx) = Ring::anonymous(2 * cap).unwrap();
        assert!(a.handle().open_out(2, b_addr, 5 << 33, out));
        assert!(b.handle().open_in(1, a.handle().local_addr(), 5 << 33, inp));
        let (mut a, mut b) = (a, b);
        let max = tx.max_payload();
        let sizes: Vec<usize> = (0..400)
            .map(|i| [max, 1, max / 2 + 7, cap / 4 + 100, 64][i % 5])
            .collect();
        let (mut sent, mut got) = (0, 0);
        let start = Instant::now();
        while got < sizes.len() {
            while sent < sizes.len() {
                let body = vec![(sent % 251) as u8; sizes[sent]];
                if tx.try_send(FrameType::Data, &body).is_err() {
                    break;
                }
                sent += 1;
            }
            a.poll_once();
            b.poll_once();
            rx.poll(16, |f| {
                assert_eq!(f.payload().len(), sizes[got], "frame {got}");
                assert!(f.payload().iter().all(|&x| x == (got % 251) as u8));
                got += 1;
            })
            .unwrap();
            assert!(
                start.elapsed() < DEADLINE,
                "{kind}: stuck at {got} of {}",
                sizes.len()
            );
        }
    }
}

#[test]
fn a_channel_closed_by_the_peer_before_it_opens_here_closes_at_once() {
    let a = agent(
        1,
        "127.0.0.1:0",
        TransportKind::Epoll,
        Duration::from_secs(10),
    );
    let b = agent(
        2,
        "127.0.0.1:0",
        TransportKind::Epoll,
        Duration::from_secs(10),
    );
    let (a_addr, b_addr) = (a.handle().local_addr(), b.handle().local_addr());
    let (mut a, mut b) = (
        Side::new(a, 2, b_addr, 1, 1 << 12),
        Side::new(b, 1, a_addr, 1, 1 << 12),
    );
    run_until(&mut [&mut a, &mut b], 10, |s| s[1].seq[0] >= 10);
    // Node 2's end of channel 77 opens and its task goes away before node 1's opens.
    let (p, c) = Ring::anonymous(1 << 12).unwrap();
    assert!(b.agent.handle().open_in(1, a_addr, 77, p));
    drop(c);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(100) {
        a.agent.poll_once();
        b.agent.poll_once();
    }
    let (mut p, c) = Ring::anonymous(1 << 12).unwrap();
    assert!(a.agent.handle().open_out(2, b_addr, 77, c));
    let start = Instant::now();
    while p.consumer_state(0, 0) != PeerState::Closed {
        a.agent.poll_once();
        b.agent.poll_once();
        assert!(start.elapsed() < Duration::from_secs(10), "never closed");
    }
    assert!(p.try_send(FrameType::Data, b"late").is_ok());
}

#[test]
fn a_client_that_never_says_who_it_is_is_dropped() {
    let mut a = agent(
        1,
        "127.0.0.1:0",
        TransportKind::Epoll,
        Duration::from_millis(300),
    );
    let mut s = std::net::TcpStream::connect(a.handle().local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        a.poll_once();
        match s.read(&mut buf) {
            Ok(0) => break,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "silent client kept"
        );
    }
    assert!(start.elapsed() >= Duration::from_millis(300));
}
