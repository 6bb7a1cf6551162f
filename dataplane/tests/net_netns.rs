//! Channels between two "hosts": network namespaces joined by veth pairs on a bridge
//! (scripts/netns-cluster.sh, on a private subnet this test creates), for io_uring and
//! for plain sockets. A receiver process listens in one namespace, a sender process
//! connects from the other; every byte of every frame of interleaved channels must
//! arrive once, in per-channel order. Skipped where it cannot run (not root, no ip).
#![allow(clippy::unwrap_used, clippy::panic)]

use spate_dataplane::net::{Mux, NetStream, TransportKind};
use spate_dataplane::ring::{FrameType, Ring};
use std::process::Command;
use std::time::{Duration, Instant};

const FRAMES: u64 = 20_000;
const CHANNELS: usize = 6;

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-cluster.sh")
}

fn payload(ch: usize, seq: u64) -> Vec<u8> {
    let len = ((seq * 11 + ch as u64 * 5) % 300) as usize + 8;
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64 * 3 + seq + ch as u64) as u8)
        .collect();
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v
}

fn kind(s: &str) -> TransportKind {
    if s == "io_uring" {
        TransportKind::IoUring
    } else {
        TransportKind::Socket
    }
}

/// The child's part: `recv ADDR KIND` or `send ADDR KIND`.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var("SPATE_NETNS_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let (role, addr, k) = (parts[0], parts[1], kind(parts[2]));
    let deadline = Instant::now() + Duration::from_secs(60);
    if role == "recv" {
        let l = std::net::TcpListener::bind(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        let s = NetStream::new(s, k).unwrap();
        assert_eq!(s.kind(), k);
        let (prods, mut cons): (Vec<_>, Vec<_>) = (0..CHANNELS)
            .map(|_| Ring::anonymous(1 << 14).unwrap())
            .unzip();
        let mut mux = Mux::new(s, 2, Vec::new(), prods);
        let mut seq = [0u64; CHANNELS];
        let mut ended = [false; CHANNELS];
        while ended.iter().any(|e| !e) {
            mux.poll().unwrap();
            for (ch, c) in cons.iter_mut().enumerate() {
                c.poll(64, |f| match f.frame_type() {
                    FrameType::Data => {
                        assert_eq!(f.payload(), &payload(ch, seq[ch])[..]);
                        seq[ch] += 1;
                    }
                    _ => ended[ch] = true,
                })
                .unwrap();
            }
            assert!(Instant::now() < deadline, "receiver stuck at {seq:?}");
        }
        assert!(seq.iter().all(|&s| s == FRAMES), "{seq:?}");
    } else {
        let start = Instant::now();
        let s = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("connect {addr}: {e}"),
            }
        };
        let s = NetStream::new(s, k).unwrap();
        assert_eq!(s.kind(), k);
        let (mut prods, cons): (Vec<_>, Vec<_>) = (0..CHANNELS)
            .map(|_| Ring::anonymous(1 << 14).unwrap())
            .unzip();
        let mut mux = Mux::new(s, 1, cons, Vec::new());
        let mut next = [0u64; CHANNELS];
        loop {
            for (ch, p) in prods.iter_mut().enumerate() {
                while next[ch] < FRAMES
                    && p.try_send(FrameType::Data, &payload(ch, next[ch])).is_ok()
                {
                    next[ch] += 1;
                }
                if next[ch] == FRAMES && p.try_send(FrameType::EndOfStream, &[]).is_ok() {
                    next[ch] += 1;
                }
            }
            match mux.poll() {
                Ok(_) => {}
                Err(_) if next.iter().all(|&n| n > FRAMES) => break, // receiver done
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "sender stuck at {next:?}");
        }
    }
}

struct Hosts(String);

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &self.0])
            .status();
    }
}

#[test]
fn channels_cross_a_veth_network_intact_with_both_transports() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root
        || !Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: needs root and iproute2 for network namespaces");
        return;
    }
    let prefix = format!("sn{}h", std::process::id() % 100_000);
    let _hosts = Hosts(prefix.clone());
    let out = Command::new("bash")
        .arg(script())
        .args(["up", "3", &prefix])
        .output()
        .unwrap();
    assert!(out.status.success());
    // "hosts PREFIX0..PREFIX2 on 10.77.N.0/24"
    let text = String::from_utf8_lossy(&out.stdout);
    let net = text
        .split("10.77.")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    for (i, k) in ["io_uring", "socket"].iter().enumerate() {
        let addr = format!("10.77.{net}.2:{}", 17100 + i);
        let exe = std::env::current_exe().unwrap();
        let child = |ns: &str, role: &str| {
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&exe)
                .args(["child_entry", "--exact", "--nocapture"])
                .env("SPATE_NETNS_CHILD", format!("{role} {addr} {k}"))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut recv = child(&format!("{prefix}1"), "recv");
        std::thread::sleep(Duration::from_millis(100));
        let mut send = child(&format!("{prefix}2"), "send");
        assert!(recv.wait().unwrap().success(), "{k} receiver");
        assert!(send.wait().unwrap().success(), "{k} sender");
    }
}
