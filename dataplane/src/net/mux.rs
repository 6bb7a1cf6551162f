//! The multiplexer: local rings on one side, a byte stream on the other.

use super::{
    CLOSE_BY_CONSUMER, CLOSE_BY_PRODUCER, FRAME_HEADER, HANDSHAKE_LEN, KIND_CLOSE, KIND_CREDIT,
    KIND_DATA, KIND_PING, MAGIC, MAX_PAYLOAD, PROOF_LEN, VERSION,
};
use crate::clock;
use crate::ring::{frame_size, ClaimError, Consumer, FrameType, PeerState, Producer, RingError};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

/// Why a connection failed. The data plane is fail-stop: the affected channels end.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// The socket failed.
    #[error("connection to node {peer}: {source}")]
    Io {
        /// The peer's node id (0 before the handshake).
        peer: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("node {0} closed the connection")]
    Closed(u64),
    /// Nothing arrived from the peer for longer than the timeout (not even a keepalive).
    #[error("node {peer} sent nothing for {silent:?} (timeout {timeout:?})")]
    Timeout {
        /// The peer's node id.
        peer: u64,
        /// How long it has been silent.
        silent: Duration,
        /// The limit.
        timeout: Duration,
    },
    /// The peer broke the protocol.
    #[error("node {peer} broke the protocol: {reason}")]
    Protocol {
        /// The peer's node id.
        peer: u64,
        /// What it did.
        reason: String,
    },
    /// A channel id was added twice.
    #[error("channel {0} is already open on this connection")]
    DuplicateChannel(u64),
    /// A local ring failed.
    #[error("ring of channel {channel}: {source}")]
    Ring {
        /// The channel.
        channel: u64,
        /// The error.
        source: RingError,
    },
}

struct Out {
    id: u64,
    rx: Consumer,
    /// Ring bytes the receiver still accepts on this channel.
    credit: u64,
}

struct In {
    tx: Producer,
    /// Ring bytes granted to the sender so far, and received so far.
    granted: u64,
    received: u64,
}

/// A frame header: channel id split in two halves around kind, side and length.
fn frame_header(channel: u64, kind: u8, sub: u8, len: usize) -> [u8; FRAME_HEADER] {
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&(channel as u32).to_le_bytes());
    h[4] = kind;
    h[5] = sub;
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&((channel >> 32) as u32).to_le_bytes());
    h
}

/// Byte and frame counts of one connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxStats {
    /// Bytes read from the stream.
    pub bytes_in: u64,
    /// Bytes written to the stream.
    pub bytes_out: u64,
    /// Ring frames delivered into local rings.
    pub frames_in: u64,
    /// Ring frames sent from local rings.
    pub frames_out: u64,
}

/// Channel ids of ended channels remembered (so late frames for them are dropped, not
/// taken for a protocol error).
const RETIRED_KEPT: usize = 1 << 16;
/// Credit for channels this side has not opened yet, held until they open.
const PENDING_CREDIT_MAX: usize = 1 << 16;
/// Bytes buffered from the stream before they are processed, at most (plus one read).
const READ_BUDGET: usize = 1 << 20;
/// The receive buffer's size (it grows for a frame larger than this).
const RBUF: usize = 256 * 1024;
/// Room a read is given at least.
const MIN_READ: usize = 64 * 1024;
/// How often a channel's local peer is checked for having gone away.
const LIVENESS_CHECK_NS: u64 = 1_000_000;

/// One connection's channels, in both directions. A channel id names one direction:
/// the sender's outbound ring and the receiver's inbound ring; both sides agree on ids
/// at deployment and may open channels at any time while the connection lives.
///
/// A channel ends by its end-of-stream frame (both sides then forget it), by a close
/// frame when a local side went away without end of stream (the other side's ring is
/// then closed, and its task fails as if a local peer had), or with the connection.
/// Dropping the multiplexer closes every local ring it holds.
pub struct Mux<S> {
    stream: S,
    /// This node's id (proven in the handshake).
    node: u64,
    peer: u64,
    outs: Vec<Out>,
    ins: FxHashMap<u64, In>,
    pending_credit: FxHashMap<u64, u64>,
    retired: FxHashSet<u64>,
    retired_order: VecDeque<u64>,
    /// Received bytes; `rbuf[r_start..r_end]` are not processed yet.
    rbuf: Vec<u8>,
    r_start: usize,
    r_end: usize,
    /// The stream ended or failed after bytes that are still to be processed.
    read_error: Option<MuxError>,
    wbuf: Vec<u8>,
    /// The peer's hello arrived (its proof follows).
    hello_seen: bool,
    /// The peer's proof checked out: frames flow.
    handshaken: bool,
    /// Proves and checks the cluster's secret (`None`: proofs are zeros).
    mac: Option<super::Mac>,
    /// This end dialed the connection.
    dialed: bool,
    nonce: [u8; NONCE_LEN],
    peer_nonce: [u8; NONCE_LEN],
    next_out: usize,
    /// Write whatever is queued once it reaches this size, or when nothing else is
    /// ready (small frames coalesce while there is a backlog).
    coalesce: usize,
    keepalive_ns: u64,
    timeout_ns: u64,
    last_heard: u64,
    last_sent: u64,
    next_liveness: u64,
    stats: MuxStats,
}

/// The labels of data connections' proofs, by the prover's role.
const DIALER_LABEL: &[u8] = b"spate-data-dialer";
const ACCEPTOR_LABEL: &[u8] = b"spate-data-acceptor";
/// Bytes of a handshake nonce.
const NONCE_LEN: usize = 16;

/// A nonce no earlier handshake of this process used: SipHash under the process's
/// random keys of the clock, the node and a counter.
fn fresh_nonce(node: u64) -> [u8; NONCE_LEN] {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Relaxed: only uniqueness of the fetched values matters.
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keys = std::collections::hash_map::RandomState::new();
    let mut out = [0u8; NONCE_LEN];
    for (i, half) in out.chunks_mut(8).enumerate() {
        let mut h = keys.build_hasher();
        h.write_u64(clock::now_ns());
        h.write_u64(node);
        h.write_u64(n);
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

impl<S: Read + Write> Mux<S> {
    /// Over a non-blocking `stream`; `outs[i]` feeds channel i to the peer, `ins[i]`
    /// receives the peer's channel i.
    pub fn new(stream: S, node: u64, outs: Vec<Consumer>, ins: Vec<Producer>) -> Self {
        let mut m = Self::empty(stream, node);
        for (i, rx) in outs.into_iter().enumerate() {
            m.outs.push(Out {
                id: i as u64,
                rx,
                credit: 0,
            });
        }
        for (i, tx) in ins.into_iter().enumerate() {
            m.ins.insert(
                i as u64,
                In {
                    tx,
                    granted: 0,
                    received: 0,
                },
            );
        }
        m
    }

    /// Over a non-blocking `stream`, with no channel yet.
    pub fn empty(stream: S, node: u64) -> Self {
        let nonce = fresh_nonce(node);
        let mut wbuf = Vec::with_capacity(1 << 16);
        wbuf.extend_from_slice(&MAGIC);
        wbuf.extend_from_slice(&VERSION.to_le_bytes());
        wbuf.extend_from_slice(&[0, 0]);
        wbuf.extend_from_slice(&node.to_le_bytes());
        wbuf.extend_from_slice(&nonce);
        let now = clock::now_ns();
        Self {
            stream,
            peer: 0,
            outs: Vec::new(),
            ins: FxHashMap::default(),
            pending_credit: FxHashMap::default(),
            retired: FxHashSet::default(),
            retired_order: VecDeque::new(),
            rbuf: vec![0; RBUF],
            r_start: 0,
            r_end: 0,
            read_error: None,
            wbuf,
            hello_seen: false,
            handshaken: false,
            mac: None,
            dialed: false,
            nonce,
            peer_nonce: [0; NONCE_LEN],
            node,
            next_out: 0,
            coalesce: 32 * 1024,
            keepalive_ns: 0,
            timeout_ns: 0,
            last_heard: now,
            last_sent: now,
            next_liveness: 0,
            stats: MuxStats::default(),
        }
    }

    /// Proves and checks the cluster's secret in the handshake (before the first poll).
    /// `dialed`: this end dialed the connection (else it accepted it). Proofs name the
    /// prover's role and both nodes, so that no node can be made to prove for another
    /// connection; the dialer proves first, and the acceptor proves only once it has
    /// checked the dialer's.
    pub fn set_mac(&mut self, mac: Option<super::Mac>, dialed: bool) {
        self.mac = mac;
        self.dialed = dialed;
    }

    /// The proof `prover` (dialer or acceptor) gives `verifier` over both nonces.
    fn proof(&self, dialer: bool, prover: (u64, &[u8]), verifier: (u64, &[u8])) -> [u8; PROOF_LEN] {
        match &self.mac {
            Some(m) => m.prove(&[
                if dialer { DIALER_LABEL } else { ACCEPTOR_LABEL },
                prover.1,
                verifier.1,
                &prover.0.to_le_bytes(),
                &verifier.0.to_le_bytes(),
            ]),
            None => [0; PROOF_LEN],
        }
    }

    /// This end's proof to the peer.
    fn own_proof(&self) -> [u8; PROOF_LEN] {
        self.proof(
            self.dialed,
            (self.node, &self.nonce),
            (self.peer, &self.peer_nonce),
        )
    }

    /// Sends a keepalive when nothing else was sent for `keepalive`, and fails the
    /// connection when nothing at all arrived for `timeout` (0: never). A peer whose
    /// host vanished without closing the connection is found this way.
    pub fn set_liveness(&mut self, keepalive: Duration, timeout: Duration) {
        self.keepalive_ns = keepalive.as_nanos() as u64;
        self.timeout_ns = timeout.as_nanos() as u64;
    }

    /// The peer's node id (0 before the handshake).
    pub fn peer(&self) -> u64 {
        self.peer
    }

    /// Whether the peer's handshake has arrived.
    pub fn handshaken(&self) -> bool {
        self.handshaken
    }

    /// Closes every channel's local ring as broken (the connection failed): their
    /// tasks see [`PeerState::Broken`].
    pub fn break_all(&mut self) {
        for o in self.outs.drain(..) {
            o.rx.break_off();
        }
        for (_, i) in self.ins.drain() {
            i.tx.break_off();
        }
    }

    /// Counters.
    pub fn stats(&self) -> MuxStats {
        self.stats
    }

    /// Open channels: (outbound, inbound).
    pub fn channels(&self) -> (usize, usize) {
        (self.outs.len(), self.ins.len())
    }

    /// The stream, for its owner's readiness bookkeeping.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Opens outbound channel `id`: the frames `rx` reads go to the peer. A channel the
    /// peer has already closed is closed at once (its ring's producer sees it closed).
    pub fn add_out(&mut self, id: u64, rx: Consumer) -> Result<(), MuxError> {
        if self.outs.iter().any(|o| o.id == id) {
            return Err(MuxError::DuplicateChannel(id));
        }
        if self.retired.contains(&id) {
            tracing::debug!(
                channel = id,
                peer = self.peer,
                "closed by the peer before it opened here"
            );
            drop(rx);
            return Ok(());
        }
        let credit = self.pending_credit.remove(&id).unwrap_or(0);
        self.outs.push(Out { id, rx, credit });
        Ok(())
    }

    /// Opens inbound channel `id`: the peer's frames on it go to `tx`. A channel the
    /// peer has already closed is closed at once (its ring's consumer sees it closed).
    pub fn add_in(&mut self, id: u64, tx: Producer) -> Result<(), MuxError> {
        if self.ins.contains_key(&id) {
            return Err(MuxError::DuplicateChannel(id));
        }
        if self.retired.contains(&id) {
            tracing::debug!(
                channel = id,
                peer = self.peer,
                "closed by the peer before it opened here"
            );
            drop(tx);
            return Ok(());
        }
        self.ins.insert(
            id,
            In {
                tx,
                granted: 0,
                received: 0,
            },
        );
        Ok(())
    }

    fn retire(&mut self, id: u64) {
        if self.retired.insert(id) {
            self.retired_order.push_back(id);
            if self.retired_order.len() > RETIRED_KEPT {
                if let Some(old) = self.retired_order.pop_front() {
                    self.retired.remove(&old);
                }
            }
        }
    }

    fn protocol(&self, reason: impl Into<String>) -> MuxError {
        MuxError::Protocol {
            peer: self.peer,
            reason: reason.into(),
        }
    }

    /// Does a bounded amount of work: reads what arrived, forwards what is sendable,
    /// grants credit, writes. Returns units of work done (0: idle).
    pub fn poll(&mut self) -> Result<usize, MuxError> {
        let mut work = self.read()?;
        work += self.process()?;
        if self.handshaken {
            work += self.grant();
            work += self.send();
        }
        let now = clock::now_ns();
        if now >= self.next_liveness {
            self.next_liveness = now + LIVENESS_CHECK_NS;
            self.check_local_peers();
            self.check_remote(now)?;
        }
        work += self.write(now)?;
        Ok(work)
    }

    fn check_remote(&mut self, now: u64) -> Result<(), MuxError> {
        let silent = now.saturating_sub(self.last_heard);
        if self.timeout_ns > 0 && silent > self.timeout_ns {
            return Err(MuxError::Timeout {
                peer: self.peer,
                silent: Duration::from_nanos(silent),
                timeout: Duration::from_nanos(self.timeout_ns),
            });
        }
        if self.handshaken
            && self.keepalive_ns > 0
            && self.wbuf.is_empty()
            && now.saturating_sub(self.last_sent) > self.keepalive_ns
        {
            self.put_header(0, KIND_PING, 0, 0);
        }
        Ok(())
    }

    /// Ends the channels whose local task went away without end of stream, telling the
    /// peer so that the other end closes too.
    fn check_local_peers(&mut self) {
        let mut i = 0;
        while i < self.outs.len() {
            let o = &self.outs[i];
            let gone = matches!(
                o.rx.producer_state(0, 0),
                PeerState::Closed | PeerState::Gone | PeerState::Broken
            ) && !o.rx.has_frame();
            if gone {
                let id = o.id;
                self.outs.swap_remove(i);
                self.put_header(id, KIND_CLOSE, CLOSE_BY_PRODUCER, 0);
                self.retire(id);
                tracing::debug!(channel = id, peer = self.peer, "outbound channel closed");
            } else {
                i += 1;
            }
        }
        let gone: Vec<u64> = self
            .ins
            .iter()
            .filter(|(_, c)| {
                matches!(
                    c.tx.consumer_state(0, 0),
                    PeerState::Closed | PeerState::Gone | PeerState::Broken
                )
            })
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            self.ins.remove(&id);
            self.put_header(id, KIND_CLOSE, CLOSE_BY_CONSUMER, 0);
            self.retire(id);
            tracing::debug!(channel = id, peer = self.peer, "inbound channel closed");
        }
    }

    /// Reads straight into the receive buffer (no intermediate copy): at most
    /// `READ_BUDGET` bytes are buffered before they are processed. An end of stream or
    /// an error after some bytes arrived is reported at the next poll, once those bytes
    /// (whole frames, perhaps ends of stream) have been processed.
    fn read(&mut self) -> Result<usize, MuxError> {
        if let Some(e) = self.read_error.take() {
            return Err(e);
        }
        if self.r_start == self.r_end && self.rbuf.len() > RBUF {
            // A large frame is through: give its room back.
            self.rbuf.truncate(RBUF);
            self.rbuf.shrink_to_fit();
        }
        let mut n = 0;
        loop {
            if self.rbuf.len() - self.r_end < MIN_READ {
                if n > 0 {
                    break; // process what arrived first
                }
                // Move the unprocessed tail (a partial frame) to the front; grow only for
                // a frame larger than the buffer.
                if self.r_start > 0 {
                    self.rbuf.copy_within(self.r_start..self.r_end, 0);
                    self.r_end -= self.r_start;
                    self.r_start = 0;
                }
                if self.rbuf.len() - self.r_end < MIN_READ {
                    let grown = (self.rbuf.len() * 2).max(self.r_end + MIN_READ);
                    self.rbuf.resize(grown, 0);
                }
            }
            let room = self.rbuf.len() - self.r_end;
            let failed = match self.stream.read(&mut self.rbuf[self.r_end..]) {
                Ok(0) => MuxError::Closed(self.peer),
                Ok(k) => {
                    self.r_end += k;
                    n += k;
                    // Bounded per poll: what arrived is processed before more is read.
                    if k < room || self.r_end - self.r_start >= READ_BUDGET {
                        break;
                    }
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => MuxError::Io {
                    peer: self.peer,
                    source,
                },
            };
            if n == 0 {
                return Err(failed);
            }
            self.read_error = Some(failed);
            break;
        }
        if n > 0 {
            self.stats.bytes_in += n as u64;
            self.last_heard = clock::now_ns();
        }
        Ok(usize::from(n > 0))
    }

    fn process(&mut self) -> Result<usize, MuxError> {
        let mut at = self.r_start;
        let mut work = 0;
        if !self.hello_seen {
            // A foreign peer is refused as soon as its first bytes show it.
            let h = &self.rbuf[at..self.r_end];
            if h.len() >= 4 && h[..4] != MAGIC {
                return Err(self.protocol(format!("bad magic {:02x?}", &h[..4])));
            }
            if h.len() >= 6 {
                let v = u16::from_le_bytes([h[4], h[5]]);
                if v != VERSION {
                    return Err(self.protocol(format!("version {v}, this node speaks {VERSION}")));
                }
            }
            if h.len() < HANDSHAKE_LEN {
                return Ok(0);
            }
            let h = &self.rbuf[at..at + HANDSHAKE_LEN];
            let mut id = [0u8; 8];
            id.copy_from_slice(&h[8..16]);
            self.peer_nonce.copy_from_slice(&h[16..32]);
            self.peer = u64::from_le_bytes(id);
            self.hello_seen = true;
            at += HANDSHAKE_LEN;
            work += 1;
            // The dialer's proof goes first: the acceptor checks it before it proves
            // anything itself (and before it takes a frame).
            // (Without a secret the proofs are zeros, and prove nothing to hold back.)
            if self.dialed || self.mac.is_none() {
                let proof = self.own_proof();
                self.wbuf.extend_from_slice(&proof);
            }
        }
        if !self.handshaken {
            if self.r_end - at < PROOF_LEN {
                self.r_start = at;
                return Ok(work);
            }
            let want = self.proof(
                !self.dialed,
                (self.peer, &self.peer_nonce),
                (self.node, &self.nonce),
            );
            let got = &self.rbuf[at..at + PROOF_LEN];
            // Constant time: how much of a forged proof matched stays unknown.
            let diff = want.iter().zip(got).fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff != 0 {
                return Err(self.protocol(
                    "authentication failed: the peer does not hold this cluster's secret \
                     (security.internal.secret), or one of the two has none",
                ));
            }
            self.handshaken = true;
            at += PROOF_LEN;
            work += 1;
            if !self.dialed && self.mac.is_some() {
                let proof = self.own_proof();
                self.wbuf.extend_from_slice(&proof);
            }
        }
        let result = self.frames(&mut at, &mut work);
        self.r_start = at;
        if self.r_start == self.r_end {
            self.r_start = 0;
            self.r_end = 0;
        }
        result.map(|()| work)
    }

    fn frames(&mut self, at: &mut usize, work: &mut usize) -> Result<(), MuxError> {
        while self.r_end >= *at + FRAME_HEADER {
            let h = &self.rbuf[*at..*at + FRAME_HEADER];
            let channel = u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
                | u64::from(u32::from_le_bytes([h[12], h[13], h[14], h[15]])) << 32;
            let kind = h[4];
            let sub = h[5];
            let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(self.protocol(format!("frame of {len} bytes")));
            }
            if self.r_end < *at + FRAME_HEADER + len {
                // Not all here yet. A data frame must fit its channel's credit: checked
                // now, so that no more is buffered than a channel may send.
                if kind == KIND_DATA {
                    if let Some(inc) = self.ins.get(&channel) {
                        if inc.received + frame_size(len) as u64 > inc.granted {
                            return Err(
                                self.protocol(format!("channel {channel} exceeded its credit"))
                            );
                        }
                    } else if !self.retired.contains(&channel) {
                        return Err(self.protocol(format!("data on unknown channel {channel}")));
                    }
                } else if len > 8 {
                    return Err(self.protocol(format!("control frame of {len} bytes")));
                }
                break;
            }
            let body = *at + FRAME_HEADER..*at + FRAME_HEADER + len;
            match kind {
                KIND_DATA => {
                    let ty = match sub {
                        1 => FrameType::Data,
                        2 => FrameType::Watermark,
                        3 => FrameType::Barrier,
                        4 => FrameType::EndOfStream,
                        t => return Err(self.protocol(format!("ring frame type {t}"))),
                    };
                    let Some(inc) = self.ins.get_mut(&channel) else {
                        if self.retired.contains(&channel) {
                            // In flight when the channel ended here: dropped.
                            *at += FRAME_HEADER + len;
                            continue;
                        }
                        return Err(self.protocol(format!("data on unknown channel {channel}")));
                    };
                    let size = frame_size(len) as u64;
                    if inc.received + size > inc.granted {
                        return Err(self.protocol(format!("channel {channel} exceeded its credit")));
                    }
                    match inc.tx.try_send(ty, &self.rbuf[body]) {
                        Ok(()) => inc.received += size,
                        Err(ClaimError::Full) => {
                            return Err(self.protocol(format!(
                                "channel {channel}: no ring space within the granted credit"
                            )))
                        }
                        Err(e) => {
                            return Err(self.protocol(format!("channel {channel}: {e}")));
                        }
                    }
                    self.stats.frames_in += 1;
                    if ty == FrameType::EndOfStream {
                        // The stream is complete: the ring's producer side closes.
                        self.ins.remove(&channel);
                        self.retire(channel);
                    }
                }
                KIND_CREDIT => {
                    if len != 8 {
                        return Err(self.protocol("credit frame of the wrong length"));
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.rbuf[body]);
                    let more = u64::from_le_bytes(b);
                    if let Some(out) = self.outs.iter_mut().find(|o| o.id == channel) {
                        out.credit = out.credit.saturating_add(more);
                    } else if !self.retired.contains(&channel) {
                        // The receiver opened its end first: kept until ours opens.
                        if self.pending_credit.len() >= PENDING_CREDIT_MAX
                            && !self.pending_credit.contains_key(&channel)
                        {
                            return Err(self.protocol("credit for too many unopened channels"));
                        }
                        let c = self.pending_credit.entry(channel).or_insert(0);
                        *c = c.saturating_add(more);
                    }
                }
                KIND_CLOSE => {
                    // The peer's end went away without end of stream: ours closes too.
                    // Its producer closed: our inbound channel; its consumer: our outbound.
                    let known = if sub == CLOSE_BY_CONSUMER {
                        let i = self.outs.iter().position(|o| o.id == channel);
                        i.map(|i| self.outs.swap_remove(i)).is_some()
                    } else if sub == CLOSE_BY_PRODUCER {
                        self.ins.remove(&channel).is_some()
                    } else {
                        return Err(self.protocol(format!("close frame of side {sub}")));
                    };
                    self.pending_credit.remove(&channel);
                    // Remembered: if our end opens later, it is closed at once.
                    self.retire(channel);
                    if known {
                        tracing::debug!(
                            channel,
                            peer = self.peer,
                            side = sub,
                            "channel closed by the peer"
                        );
                    }
                }
                KIND_PING => {}
                k => return Err(self.protocol(format!("frame kind {k}"))),
            }
            *at += FRAME_HEADER + len;
            *work += 1;
        }
        Ok(())
    }

    fn put_header(&mut self, channel: u64, kind: u8, sub: u8, len: usize) {
        self.wbuf
            .extend_from_slice(&frame_header(channel, kind, sub, len));
    }

    /// Grants each inbound channel the ring space its consumer freed, in chunks of at
    /// least a quarter ring. Room for one frame's padding is held back, since a frame
    /// that wraps needs more ring bytes than its size: so the largest frame a channel
    /// carries is `capacity - max_payload - 16` of its receiving ring, and a receiving
    /// ring twice the size of the sending one carries every frame the sender can write.
    fn grant(&mut self) -> usize {
        let mut work = 0;
        let wbuf = &mut self.wbuf;
        for (&ch, inc) in self.ins.iter_mut() {
            let cap = inc.tx.capacity() as u64;
            let reserve = (inc.tx.max_payload() + 16) as u64;
            let free = match inc.tx.free_bytes(true) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let outstanding = inc.granted - inc.received;
            let can = free.saturating_sub(reserve).saturating_sub(outstanding);
            // A quarter ring at a time; but everything once the consumer has drained the
            // ring, so that a sender holding less credit than its next (large) frame
            // needs is never left waiting for a quarter that cannot come.
            if can > 0 && (can >= cap / 4 || inc.granted == 0 || free == cap) {
                inc.granted += can;
                wbuf.extend_from_slice(&frame_header(ch, KIND_CREDIT, 0, 8));
                wbuf.extend_from_slice(&can.to_le_bytes());
                work += 1;
            }
        }
        work
    }

    /// Moves frames of the outbound rings to the write buffer within their credit,
    /// round-robin; a channel out of credit is skipped, not waited for.
    fn send(&mut self) -> usize {
        let mut work = 0;
        let n = self.outs.len();
        let mut ended = None;
        for i in 0..n {
            let ch = (self.next_out + i) % n;
            let mut moved = 0;
            loop {
                if self.wbuf.len() >= 4 * self.coalesce {
                    break;
                }
                let out = &mut self.outs[ch];
                let frame = match out.rx.try_read() {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(_) => break,
                };
                let size = frame_size(frame.len()) as u64;
                if size > out.credit {
                    // Put it back: not read until credit arrives (the ring keeps it).
                    out.rx.unread();
                    break;
                }
                out.credit -= size;
                let (ty, payload) = (frame.frame_type(), frame.payload());
                let h = frame_header(out.id, KIND_DATA, ty as u8, payload.len());
                self.wbuf.extend_from_slice(&h);
                self.wbuf.extend_from_slice(payload);
                moved += 1;
                if ty == FrameType::EndOfStream {
                    ended = Some(ch);
                    break;
                }
            }
            self.outs[ch].rx.release();
            work += moved;
            if ended.is_some() {
                break;
            }
        }
        self.stats.frames_out += work as u64;
        if let Some(ch) = ended {
            // Its stream is complete: nothing more will come from this ring.
            let id = self.outs.swap_remove(ch).id;
            self.retire(id);
        }
        self.next_out = (self.next_out + 1) % self.outs.len().max(1);
        work
    }

    fn write(&mut self, now: u64) -> Result<usize, MuxError> {
        let mut written = 0;
        while written < self.wbuf.len() {
            match self.stream.write(&self.wbuf[written..]) {
                Ok(0) => return Err(MuxError::Closed(self.peer)),
                Ok(k) => written += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MuxError::Io {
                        peer: self.peer,
                        source,
                    })
                }
            }
        }
        if written > 0 {
            self.wbuf.drain(..written);
            self.stats.bytes_out += written as u64;
            self.last_sent = now;
        }
        Ok(usize::from(written > 0))
    }
}
