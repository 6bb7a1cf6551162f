//! Shared by the network tests: a node's agent with channels to one peer in both
//! directions, whose frames are numbered and checked byte for byte on arrival.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use spate_dataplane::net::{AgentConfig, NetAgent, TransportKind};
use spate_dataplane::ring::{Consumer, FrameType, Producer, Ring};
use std::net::SocketAddr;
use std::time::Duration;

/// Frame `seq` of channel `ch`: 8 to 307 bytes, its sequence number first.
pub fn payload(ch: usize, seq: u64) -> Vec<u8> {
    let len = ((seq * 11 + ch as u64 * 5) % 300) as usize + 8;
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u64 * 3 + seq + ch as u64) as u8)
        .collect();
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v
}

/// The type of frame `seq`: mostly data, with watermark and barrier frames among them,
/// which the agents must carry in order and unchanged like any other.
pub fn frame_type(seq: u64) -> FrameType {
    match seq % 13 {
        3 => FrameType::Watermark,
        8 => FrameType::Barrier,
        _ => FrameType::Data,
    }
}

/// An agent of node `node` listening on `listen`.
pub fn agent(node: u64, listen: &str, kind: TransportKind, timeout: Duration) -> NetAgent {
    NetAgent::bind(AgentConfig {
        node,
        listen: listen.parse().unwrap(),
        transport: kind,
        uring: Default::default(),
        keepalive: timeout / 4,
        timeout,
        mac: None,
    })
    .unwrap()
}

/// The channel id of `node`'s channel `ch` towards its peer (both halves of the id
/// in use).
pub fn channel_id(node: u64, ch: usize) -> u64 {
    (node << 40) | (0xabc0_0000 + ch as u64)
}

/// One node's end of `n` channels each way to its peer.
pub struct Side {
    pub agent: NetAgent,
    pub tx: Vec<Producer>,
    pub rx: Vec<Consumer>,
    pub next: Vec<u64>,
    pub seq: Vec<u64>,
    pub ended: Vec<bool>,
    /// Inbound channels not read (stalled consumers).
    pub stalled: Vec<bool>,
}

impl Side {
    pub fn new(agent: NetAgent, peer: u64, peer_addr: SocketAddr, n: usize, ring: usize) -> Self {
        let h = agent.handle();
        let node = h.node();
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        for ch in 0..n {
            let (p, c) = Ring::anonymous(ring).unwrap();
            assert!(h.open_out(peer, peer_addr, channel_id(node, ch), c));
            tx.push(p);
            let (p, c) = Ring::anonymous(ring).unwrap();
            assert!(h.open_in(peer, peer_addr, channel_id(peer, ch), p));
            rx.push(c);
        }
        Self {
            agent,
            tx,
            rx,
            next: vec![0; n],
            seq: vec![0; n],
            ended: vec![false; n],
            stalled: vec![false; n],
        }
    }

    /// Writes what fits of `frames` per channel (then end of stream), polls the agent,
    /// reads and checks what arrived. Returns whether anything happened.
    pub fn step(&mut self, frames: u64) -> bool {
        let mut busy = false;
        for (ch, p) in self.tx.iter_mut().enumerate() {
            while self.next[ch] < frames
                && p.try_send(frame_type(self.next[ch]), &payload(ch, self.next[ch]))
                    .is_ok()
            {
                self.next[ch] += 1;
                busy = true;
            }
            if self.next[ch] == frames && p.try_send(FrameType::EndOfStream, &[]).is_ok() {
                self.next[ch] += 1;
            }
        }
        busy |= self.agent.poll_once() > 0;
        for (ch, c) in self.rx.iter_mut().enumerate() {
            if self.stalled[ch] {
                continue;
            }
            let (seq, ended) = (&mut self.seq[ch], &mut self.ended[ch]);
            let n = c
                .poll(64, |f| match f.frame_type() {
                    FrameType::Data | FrameType::Watermark | FrameType::Barrier => {
                        assert_eq!(f.frame_type(), frame_type(*seq), "channel {ch} frame {seq}");
                        assert_eq!(
                            f.payload(),
                            &payload(ch, *seq)[..],
                            "channel {ch} frame {seq}"
                        );
                        *seq += 1;
                    }
                    FrameType::EndOfStream => *ended = true,
                    t => panic!("{t:?}"),
                })
                .unwrap();
            busy |= n > 0;
        }
        busy
    }

    /// Everything sent (end of stream written) and received.
    pub fn done(&self, frames: u64) -> bool {
        self.next.iter().all(|&n| n > frames)
            && self.ended.iter().all(|&e| e)
            && self.seq.iter().all(|&s| s == frames)
    }
}
