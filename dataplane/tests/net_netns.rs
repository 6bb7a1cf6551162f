//! Channels between two "hosts": network namespaces joined by veth pairs on a bridge
//! (scripts/netns-cluster.sh, on a private subnet this test creates), for io_uring and
//! for epoll. A node's agent runs in each namespace, with channels both ways over the
//! one connection between them; every byte of every frame of the interleaved channels
//! must arrive once, in per-channel order. Skipped where it cannot run (not root, no ip).
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{agent, Side};
use spate_dataplane::net::TransportKind;
use std::process::Command;
use std::time::{Duration, Instant};

const FRAMES: u64 = 20_000;
const CHANNELS: usize = 6;

fn script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/netns-cluster.sh")
}

/// The child's part: `NODE LISTEN PEER PEER_ADDR KIND`: a node's agent with CHANNELS
/// channels each way to its peer, sending FRAMES frames on each and checking every
/// frame that arrives.
#[test]
fn child_entry() {
    let Ok(spec) = std::env::var("SPATE_NETNS_CHILD") else {
        return;
    };
    let p: Vec<&str> = spec.split(' ').collect();
    let kind: TransportKind = p[4].parse().unwrap();
    let node: u64 = p[0].parse().unwrap();
    let a = agent(node, p[1], kind, Duration::from_secs(20));
    let h = a.handle();
    let mut side = Side::new(
        a,
        p[2].parse().unwrap(),
        p[3].parse().unwrap(),
        CHANNELS,
        1 << 14,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !side.done(FRAMES) {
        if !side.step(FRAMES) {
            std::thread::yield_now();
        }
        assert!(
            Instant::now() < deadline,
            "stuck: received {:?}, sent {:?}",
            side.seq,
            side.next
        );
    }
    // Let the last frames leave before the process (and its socket) ends.
    let linger = Instant::now();
    while linger.elapsed() < Duration::from_millis(300) {
        side.step(FRAMES);
        std::thread::yield_now();
    }
    assert_eq!(h.stats().fallbacks(), 0, "{kind} in use");
    println!("{kind}: node {node} done");
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
    for (i, k) in ["io_uring", "epoll"].iter().enumerate() {
        let (a_addr, b_addr) = (
            format!("10.77.{net}.2:{}", 17100 + i),
            format!("10.77.{net}.3:{}", 17100 + i),
        );
        let exe = std::env::current_exe().unwrap();
        let child = |ns: &str, spec: String| {
            Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&exe)
                .args(["child_entry", "--exact", "--nocapture"])
                .env("SPATE_NETNS_CHILD", spec)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        // Node 1 dials node 2; either may start first.
        let mut b = child(&format!("{prefix}2"), format!("2 {b_addr} 1 {a_addr} {k}"));
        let mut a = child(&format!("{prefix}1"), format!("1 {a_addr} 2 {b_addr} {k}"));
        assert!(a.wait().unwrap().success(), "{k}: node 1");
        assert!(b.wait().unwrap().success(), "{k}: node 2");
    }
}
