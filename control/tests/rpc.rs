//! The RPC endpoint over loopback: messages both ways, and rogue peers that are
//! disconnected with the reason while the endpoint lives on.
#![allow(clippy::unwrap_used, clippy::panic)]

use serde::{Deserialize, Serialize};
use spate::rpc::{handshake_blocking, ConnId, Endpoint, Event, MAGIC, PROTOCOL_VERSION};
use spate::security::Secret;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Text(String),
    Blob(Vec<u8>),
}

type Ep = Endpoint<Msg, Msg>;

fn server() -> (Ep, SocketAddr) {
    let ep = Ep::listen(
        "127.0.0.1:0".parse().unwrap(),
        "test-server",
        Secret::none(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

fn next(ep: &Ep) -> Event<Msg> {
    ep.recv_timeout(Duration::from_secs(10))
        .expect("an event within 10 s")
}

fn connected(ep: &Ep) -> ConnId {
    match next(ep) {
        Event::Connected { conn, .. } => conn,
        e => panic!("expected Connected, got {e:?}"),
    }
}

fn disconnect_reason(ep: &Ep) -> String {
    loop {
        match next(ep) {
            Event::Disconnected { reason, .. } => return reason,
            Event::Connected { .. } => continue,
            e => panic!("expected Disconnected, got {e:?}"),
        }
    }
}

#[test]
fn messages_flow_both_ways_in_order() {
    let (srv, addr) = server();
    let cli = Ep::client("test-client", Secret::none()).unwrap();
    let c = cli.connect(addr);
    // Queued before the handshake completes: delivered after it, in order.
    for i in 0..100 {
        cli.send(c, Msg::Ping(i));
    }
    cli.send(c, Msg::Blob(vec![7; 1 << 20]));
    assert_eq!(connected(&cli), c);
    let s = connected(&srv);
    for i in 0..100 {
        assert_eq!(
            next(&srv),
            Event::Message {
                conn: s,
                msg: Msg::Ping(i)
            }
        );
    }
    match next(&srv) {
        Event::Message {
            msg: Msg::Blob(b), ..
        } => assert_eq!(b, vec![7; 1 << 20]),
        e => panic!("{e:?}"),
    }
    srv.send(s, Msg::Text("pong".into()));
    assert_eq!(
        next(&cli),
        Event::Message {
            conn: c,
            msg: Msg::Text("pong".into())
        }
    );
    drop(srv);
    assert_eq!(disconnect_reason(&cli), "peer closed the connection");
}

fn raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    s
}

/// A raw connection that completed the handshake, then sent `bytes`.
fn handshaken_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    handshake_blocking(&mut s, &Secret::none()).unwrap();
    s.write_all(bytes).unwrap();
    s
}

fn hello(version: u16) -> Vec<u8> {
    let v = version.to_le_bytes();
    vec![MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 1, 0]
}

#[test]
fn rogue_peers_are_dropped_with_the_reason_and_the_endpoint_lives_on() {
    let (srv, addr) = server();

    let _s = raw(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(disconnect_reason(&srv).contains("bad magic"));

    let mut s = raw(addr, &hello(PROTOCOL_VERSION + 8));
    let reason = disconnect_reason(&srv);
    assert!(
        reason.contains(&format!("version {}", PROTOCOL_VERSION + 8)),
        "{reason}"
    );
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).unwrap();
    assert_eq!(&ack[..4], &MAGIC);
    assert_eq!(ack[7], 1, "the refusal says so");

    let _s = handshaken_raw(addr, &u32::MAX.to_le_bytes());
    let reason = disconnect_reason(&srv);
    assert!(reason.contains("oversized frame"), "{reason}");

    let mut garbage = 3u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    let _s = handshaken_raw(addr, &garbage);
    let reason = disconnect_reason(&srv);
    assert!(reason.contains("cannot decode"), "{reason}");

    let mut half = 100u32.to_le_bytes().to_vec();
    half.extend_from_slice(&[1, 2, 3]);
    drop(handshaken_raw(addr, &half));
    let reason = disconnect_reason(&srv);
    assert!(
        reason.contains("closed in the middle of a frame"),
        "{reason}"
    );

    drop(raw(addr, &hello(PROTOCOL_VERSION)[..5]));
    let reason = disconnect_reason(&srv);
    assert!(reason.contains("closed in the middle"), "{reason}");

    // Still serving.
    let cli = Ep::client("good", Secret::none()).unwrap();
    let c = cli.connect(addr);
    connected(&cli);
    let s = connected(&srv);
    cli.send(c, Msg::Ping(42));
    assert_eq!(
        next(&srv),
        Event::Message {
            conn: s,
            msg: Msg::Ping(42)
        }
    );
}

#[test]
fn a_client_refused_by_version_or_unreachable_says_why() {
    // A fake server that refuses every version.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut h = [0u8; 8];
        s.read_exact(&mut h).unwrap();
        let mut ack = hello(PROTOCOL_VERSION);
        ack[6] = 2;
        ack[7] = 1;
        s.write_all(&ack).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let cli = Ep::client("refused", Secret::none()).unwrap();
    cli.connect(addr);
    assert!(disconnect_reason(&cli).contains("refused protocol version"));
    t.join().unwrap();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    cli.connect(addr);
    let reason = disconnect_reason(&cli);
    assert!(reason.contains("cannot connect"), "{reason}");
}

#[test]
fn a_peer_that_never_completes_its_handshake_is_dropped() {
    let (srv, addr) = server();
    let _silent = TcpStream::connect(addr).unwrap();
    let start = std::time::Instant::now();
    let reason = disconnect_reason(&srv);
    assert!(reason.contains("no handshake within"), "{reason}");
    assert!(
        start.elapsed() >= Duration::from_secs(4),
        "not before the deadline"
    );
}

/// Under a secret, an endpoint with another secret (or none) fails the handshake on
/// its own check of the server's proof, and a raw client that answers with a forged
/// proof is dropped by the server with the reason; one with the secret connects.
#[test]
fn peers_must_prove_the_same_secret() {
    let srv = Ep::listen(
        "127.0.0.1:0".parse().unwrap(),
        "secret-server",
        Secret::new(b"s3cret"),
    )
    .unwrap();
    let addr = srv.local_addr().unwrap();
    for other in [Secret::new(b"guess"), Secret::none()] {
        let cli = Ep::client("outsider", other).unwrap();
        cli.connect(addr);
        let reason = disconnect_reason(&cli);
        assert!(reason.contains("authentication failed"), "{reason}");
        assert!(!matches!(
            srv.recv_timeout(Duration::from_millis(200)),
            Some(Event::Connected { .. })
        ));
    }
    // A forged proof (zeros) after a well-formed hello.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut h = hello(PROTOCOL_VERSION);
    h.extend_from_slice(&[9; 16]);
    s.write_all(&h).unwrap();
    let mut ack = [0u8; 56];
    s.read_exact(&mut ack).unwrap();
    let mut proof = hello(PROTOCOL_VERSION);
    proof[6] = 3;
    proof.extend_from_slice(&[0; 32]);
    s.write_all(&proof).unwrap();
    loop {
        match next(&srv) {
            Event::Disconnected { reason, .. } => {
                if reason.contains("authentication failed") {
                    break;
                }
            }
            Event::Connected { .. } => panic!("a forged proof was taken"),
            Event::Message { .. } => panic!("a message from an unauthenticated peer"),
        }
    }
    let cli = Ep::client("insider", Secret::new(b"s3cret")).unwrap();
    let c = cli.connect(addr);
    assert_eq!(connected(&cli), c);
    connected(&srv);
}
