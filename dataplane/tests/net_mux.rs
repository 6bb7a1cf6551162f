//! Channels multiplexed over one TCP connection (loopback): every byte of every frame
//! of many interleaved channels arrives once and in per-channel order; a stalled
//! consumer holds up only its own channel; a vanished or foreign peer is an error.
#![allow(clippy::unwrap_used, clippy::panic)]

use spate_dataplane::net::{Mux, MuxError, NetStream, TransportKind};
use spate_dataplane::ring::{Consumer, FrameType, Producer, Ring};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    for s in [&a, &b] {
        s.set_nonblocking(true).unwrap();
        s.set_nodelay(true).unwrap();
    }
    (a, b)
}

fn streams(kind: TransportKind) -> (NetStream, NetStream) {
    let (a, b) = pair();
    let (a, b) = (
        NetStream::new(a, kind).unwrap(),
        NetStream::new(b, kind).unwrap(),
    );
    assert_eq!(a.kind(), kind, "io_uring works on this machine");
    if let NetStream::IoUring(u) = &a {
        let single = std::env::var_os("SPATE_IO_URING_NO_MULTISHOT").is_some();
        assert_eq!(
            u.multishot(),
            !single,
            "multishot receives into provided buffers"
        );
    }
    (a, b)
}

fn rings(n: usize, cap: usize) -> (Vec<Producer>, Vec<Consumer>) {
    (0..n).map(|_| Ring::anonymous(cap).unwrap()).unzip()
}

/// Mostly data, with watermark and barrier frames among them: all cross unchanged.
fn frame_type(seq: u64) -> FrameType {
    match seq % 13 {
        3 => FrameType::Watermark,
        8 => FrameType::Barrier,
        _ => FrameType::Data,
    }
}

fn payload(ch: usize, seq: u64) -> Vec<u8> {
    let len = ((seq * 7 + ch as u64 * 13) % 200) as usize + 8;
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64 + seq + ch as u64) as u8)
        .collect();
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v
}

/// Sender: writes `frames` per channel into its local rings and polls its mux.
fn send_all<S: std::io::Read + std::io::Write>(
    mut mux: Mux<S>,
    mut local: Vec<Producer>,
    frames: u64,
) -> Mux<S> {
    let mut next = vec![0u64; local.len()];
    let start = Instant::now();
    while next.iter().any(|&n| n <= frames) {
        for (ch, p) in local.iter_mut().enumerate() {
            while next[ch] < frames {
                if p.try_send(frame_type(next[ch]), &payload(ch, next[ch]))
                    .is_err()
                {
                    break;
                }
                next[ch] += 1;
            }
            if next[ch] == frames && p.try_send(FrameType::EndOfStream, &[]).is_ok() {
                next[ch] += 1;
            }
        }
        mux.poll().unwrap();
        assert!(start.elapsed() < DEADLINE, "sender stuck at {next:?}");
        std::thread::yield_now();
    }
    // Keep flushing until the receiver has everything (it closes when done).
    while start.elapsed() < DEADLINE {
        match mux.poll() {
            Ok(_) => std::thread::yield_now(),
            Err(MuxError::Closed(_)) | Err(MuxError::Io { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    mux
}

/// Receiver: polls its mux and checks every frame; `stall` channels are not read
/// until the others have finished.
fn receive_all<S: std::io::Read + std::io::Write>(
    mut mux: Mux<S>,
    mut local: Vec<Consumer>,
    frames: u64,
    stall: Option<usize>,
) {
    let n = local.len();
    let mut seq = vec![0u64; n];
    let mut ended = vec![false; n];
    let start = Instant::now();
    let mut others_done_at = None;
    while ended.iter().any(|e| !e) {
        mux.poll().unwrap();
        let others_done = ended
            .iter()
            .enumerate()
            .all(|(i, e)| *e || Some(i) == stall);
        if others_done && others_done_at.is_none() {
            others_done_at = Some(Instant::now());
            if let Some(s) = stall {
                assert!(
                    seq[s] < frames,
                    "the stalled channel should still be behind"
                );
            }
        }
        for (ch, c) in local.iter_mut().enumerate() {
            if Some(ch) == stall && !others_done {
                continue;
            }
            c.poll(64, |f| match f.frame_type() {
                FrameType::Data | FrameType::Watermark | FrameType::Barrier => {
                    assert_eq!(f.frame_type(), frame_type(seq[ch]), "channel {ch}");
                    assert_eq!(
                        f.payload(),
                        &payload(ch, seq[ch])[..],
                        "channel {ch} frame {}",
                        seq[ch]
                    );
                    seq[ch] += 1;
                }
                FrameType::EndOfStream => ended[ch] = true,
                t => panic!("{t:?}"),
            })
            .unwrap();
        }
        assert!(start.elapsed() < DEADLINE, "receiver stuck at {seq:?}");
        std::thread::yield_now();
    }
    assert!(seq.iter().all(|&s| s == frames), "{seq:?}");
}

#[test]
fn many_channels_arrive_whole_and_in_order() {
    for kind in [TransportKind::Epoll, TransportKind::IoUring] {
        many_channels(kind);
    }
}

fn many_channels(kind: TransportKind) {
    let (a, b) = streams(kind);
    let (a_prod, a_cons) = rings(8, 1 << 14);
    let (b_prod, b_cons) = rings(8, 1 << 14);
    let sender = Mux::new(a, 1, a_cons, Vec::new());
    let receiver = Mux::new(b, 2, Vec::new(), b_prod);
    let t = std::thread::spawn(move || send_all(sender, a_prod, 20_000));
    receive_all(receiver, b_cons, 20_000, None);
    let mux = t.join().unwrap();
    assert_eq!(mux.peer(), 2);
}

#[test]
fn a_stalled_channel_does_not_hold_up_the_others() {
    for kind in [TransportKind::Epoll, TransportKind::IoUring] {
        stalled_channel(kind);
    }
}

fn stalled_channel(kind: TransportKind) {
    let (a, b) = streams(kind);
    let (a_prod, a_cons) = rings(4, 4096);
    let (b_prod, b_cons) = rings(4, 4096);
    let sender = Mux::new(a, 1, a_cons, Vec::new());
    let receiver = Mux::new(b, 2, Vec::new(), b_prod);
    let t = std::thread::spawn(move || send_all(sender, a_prod, 5_000));
    // Channel 0's consumer reads nothing until channels 1..3 have all 5000 frames
    // (far more than its 4 KiB ring holds): they must not wait for it.
    receive_all(receiver, b_cons, 5_000, Some(0));
    t.join().unwrap();
}

#[test]
fn a_vanished_peer_is_an_error_not_a_hang() {
    for kind in [TransportKind::Epoll, TransportKind::IoUring] {
        vanished_peer(kind);
    }
}

fn vanished_peer(kind: TransportKind) {
    let (a, b) = streams(kind);
    let (_p, c) = rings(1, 4096);
    let mut mux = Mux::new(a, 1, c, Vec::new());
    drop(b);
    let start = Instant::now();
    loop {
        match mux.poll() {
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(5), "no error"),
            Err(MuxError::Closed(_)) | Err(MuxError::Io { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_foreign_peer_is_refused() {
    use std::io::Write;
    let (a, mut b) = pair();
    let mut mux = Mux::new(a, 1, Vec::new(), Vec::new());
    b.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let start = Instant::now();
    loop {
        match mux.poll() {
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(5), "no error"),
            Err(MuxError::Protocol { reason, .. }) => {
                assert!(reason.contains("bad magic"), "{reason}");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn refused_io_uring_falls_back_to_sockets_and_still_works() {
    // The other tests of this binary assert that io_uring is used; the refusal is
    // simulated by an environment variable, so it runs in a child process of its own.
    if std::env::var_os("SPATE_NET_CHILD").is_none() {
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "refused_io_uring_falls_back_to_sockets_and_still_works",
                "--exact",
            ])
            .env("SPATE_NET_CHILD", "1")
            .env("SPATE_DISABLE_IO_URING", "1")
            .status()
            .unwrap();
        assert!(st.success());
        return;
    }
    let (a, b) = pair();
    let a = NetStream::new(a, TransportKind::IoUring).unwrap();
    let b = NetStream::new(b, TransportKind::IoUring).unwrap();
    assert_eq!(a.kind(), TransportKind::Epoll);
    let (a_prod, a_cons) = rings(2, 1 << 14);
    let (b_prod, b_cons) = rings(2, 1 << 14);
    let sender = Mux::new(a, 1, a_cons, Vec::new());
    let receiver = Mux::new(b, 2, Vec::new(), b_prod);
    let t = std::thread::spawn(move || send_all(sender, a_prod, 2_000));
    receive_all(receiver, b_cons, 2_000, None);
    t.join().unwrap();
}

#[test]
fn single_receives_work_where_multishot_is_unavailable() {
    // Simulated by an environment variable, in a child process of its own.
    if std::env::var_os("SPATE_NET_CHILD").is_none() {
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "single_receives_work_where_multishot_is_unavailable",
                "--exact",
            ])
            .env("SPATE_NET_CHILD", "1")
            .env("SPATE_IO_URING_NO_MULTISHOT", "1")
            .status()
            .unwrap();
        assert!(st.success());
        return;
    }
    many_channels(TransportKind::IoUring);
    stalled_channel(TransportKind::IoUring);
}

#[test]
fn a_frame_beyond_its_credit_is_refused_before_its_body_arrives() {
    use std::io::Write;
    let (a, mut b) = pair();
    let (prod, _cons) = rings(1, 1 << 12);
    let mut mux = Mux::new(a, 1, Vec::new(), prod);
    // A hello (version 2, node 2, a nonce) and the proof without a secret (zeros).
    let mut hello = b"SPNT\x02\x00\x00\x00".to_vec();
    hello.extend_from_slice(&2u64.to_le_bytes());
    hello.extend_from_slice(&[7; 16]);
    hello.extend_from_slice(&[0; 32]);
    b.write_all(&hello).unwrap();
    // A data frame header on channel 0 announcing 8 MiB (far beyond the ring's credit),
    // and then another on an unknown channel: the body never comes.
    for channel in [0u32, 9] {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&channel.to_le_bytes());
        h[4] = 1;
        h[5] = 1;
        h[8..12].copy_from_slice(&(8u32 << 20).to_le_bytes());
        let (a, mut b) = pair();
        let (prod, _cons) = rings(1, 1 << 12);
        let mut m = Mux::new(a, 1, Vec::new(), prod);
        b.write_all(&hello).unwrap();
        b.write_all(&h).unwrap();
        let start = Instant::now();
        loop {
            match m.poll() {
                Ok(_) => assert!(start.elapsed() < Duration::from_secs(5), "not refused"),
                Err(MuxError::Protocol { reason, .. }) => {
                    let want = if channel == 0 {
                        "exceeded its credit"
                    } else {
                        "unknown channel"
                    };
                    assert!(reason.contains(want), "{reason}");
                    break;
                }
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The first connection, which said hello only, is fine.
    assert!(mux.poll().is_ok());
}

/// A keyed proof for the tests (the control plane gives HMAC-SHA256): a hash of the
/// key and the parts, with the parts' lengths.
fn test_mac(key: u64) -> spate_dataplane::net::Mac {
    spate_dataplane::net::Mac(std::sync::Arc::new(move |parts: &[&[u8]]| {
        use std::hash::{Hash, Hasher};
        let mut out = [0u8; 32];
        for (i, chunk) in out.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (key, i).hash(&mut h);
            for p in parts {
                p.hash(&mut h);
            }
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        out
    }))
}

/// Both ends prove the cluster's secret over each other's nonces before a frame
/// flows: the same secret connects; another secret, or a secret against none, is an
/// authentication error on both sides and no frame gets through.
#[test]
fn data_connections_need_the_same_secret_on_both_ends() {
    for (a_key, b_key, ok) in [
        (Some(7), Some(7), true),
        (None, None, true),
        (Some(7), Some(8), false),
        (Some(7), None, false),
    ] {
        let (a, b) = pair();
        let (a_prod, a_cons) = rings(1, 1 << 12);
        let (b_prod, mut b_cons) = rings(1, 1 << 12);
        let mut sender = Mux::new(a, 1, a_cons, Vec::new());
        let mut receiver = Mux::new(b, 2, Vec::new(), b_prod);
        sender.set_mac(a_key.map(test_mac), true);
        receiver.set_mac(b_key.map(test_mac), false);
        let mut p = a_prod.into_iter().next().unwrap();
        p.try_send(FrameType::Data, b"hello").unwrap();
        let start = Instant::now();
        let (mut sent, mut received) = (Ok(0), Ok(0));
        let mut got = false;
        while start.elapsed() < Duration::from_secs(1) && !got {
            if sent.is_ok() {
                sent = sender.poll();
            }
            if received.is_ok() {
                received = receiver.poll();
            }
            got = got || b_cons[0].try_read().unwrap().is_some();
            if sent.is_err() || received.is_err() {
                // Give the other side a moment to read what is in flight.
                for _ in 0..20 {
                    if sent.is_ok() {
                        sent = sender.poll();
                    }
                    if received.is_ok() {
                        received = receiver.poll();
                    }
                    got = got || b_cons[0].try_read().unwrap().is_some();
                    std::thread::sleep(Duration::from_millis(1));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, ok, "keys {a_key:?} and {b_key:?}");
        // The side that checks a wrong proof first drops the connection (the other
        // then sees it closed, or times out in its agent).
        let failed: Vec<String> = [&sent, &received]
            .into_iter()
            .filter_map(|r| match r {
                Err(MuxError::Protocol { reason, .. }) => Some(reason.clone()),
                _ => None,
            })
            .collect();
        if ok {
            assert!(sent.is_ok() && received.is_ok(), "{sent:?} {received:?}");
        } else {
            assert!(
                !failed.is_empty() && failed.iter().all(|r| r.contains("authentication failed")),
                "keys {a_key:?}, {b_key:?}: {sent:?} {received:?}"
            );
        }
    }
}

/// An acceptor proves nothing to a peer that has not proven itself: a client that
/// sends a hello and no proof (or a wrong one) reads the acceptor's hello only, so no
/// node can be used to compute a proof for another connection.
#[test]
fn an_acceptor_proves_nothing_before_the_dialer_has() {
    use std::io::{Read, Write};
    for proof in [None, Some([0u8; 32])] {
        let (a, mut b) = pair();
        let mut acceptor = Mux::new(a, 2, Vec::new(), Vec::new());
        acceptor.set_mac(Some(test_mac(7)), false);
        let mut hello = b"SPNT\x02\x00\x00\x00".to_vec();
        hello.extend_from_slice(&1u64.to_le_bytes());
        hello.extend_from_slice(&[9; 16]);
        if let Some(p) = proof {
            hello.extend_from_slice(&p);
        }
        b.write_all(&hello).unwrap();
        let mut got = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            let failed = acceptor.poll().is_err();
            let mut buf = [0u8; 256];
            match b.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if failed {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Its hello at most (none when it failed the forged proof at once).
        if proof.is_none() {
            assert_eq!(
                got.len(),
                32,
                "the acceptor's hello and nothing else: {got:?}"
            );
        } else {
            assert!(got.len() <= 32, "{got:?}");
        }
    }
}
