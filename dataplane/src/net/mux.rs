//! The multiplexer: local rings on one side, a byte stream on the other.

use super::{FRAME_HEADER, HANDSHAKE_LEN, KIND_CREDIT, KIND_DATA, MAGIC, MAX_PAYLOAD, VERSION};
use crate::ring::{frame_size, ClaimError, Consumer, FrameType, Producer, RingError};
use std::io::{ErrorKind, Read, Write};

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
    /// The peer broke the protocol.
    #[error("node {peer} broke the protocol: {reason}")]
    Protocol {
        /// The peer's node id.
        peer: u64,
        /// What it did.
        reason: String,
    },
    /// A local ring failed.
    #[error("ring of channel {channel}: {source}")]
    Ring {
        /// The channel.
        channel: u32,
        /// The error.
        source: RingError,
    },
}

struct Out {
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

/// One connection's channels. Channel ids are the indexes of `outs` on the sending
/// side and of `ins` on the receiving side; both sides agree on them at deployment.
pub struct Mux<S> {
    stream: S,
    peer: u64,
    outs: Vec<Out>,
    ins: Vec<In>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    handshaken: bool,
    next_out: usize,
    /// Write whatever is queued once it reaches this size, or when nothing else is
    /// ready (small frames coalesce while there is a backlog).
    coalesce: usize,
}

impl<S: Read + Write> Mux<S> {
    /// Over a non-blocking `stream`; `outs[i]` feeds channel i to the peer, `ins[i]`
    /// receives the peer's channel i.
    pub fn new(stream: S, node: u64, outs: Vec<Consumer>, ins: Vec<Producer>) -> Self {
        let mut wbuf = Vec::with_capacity(1 << 16);
        wbuf.extend_from_slice(&MAGIC);
        wbuf.extend_from_slice(&VERSION.to_le_bytes());
        wbuf.extend_from_slice(&[0, 0]);
        wbuf.extend_from_slice(&node.to_le_bytes());
        Self {
            stream,
            peer: 0,
            outs: outs.into_iter().map(|rx| Out { rx, credit: 0 }).collect(),
            ins: ins
                .into_iter()
                .map(|tx| In {
                    tx,
                    granted: 0,
                    received: 0,
                })
                .collect(),
            rbuf: Vec::with_capacity(1 << 16),
            wbuf,
            handshaken: false,
            next_out: 0,
            coalesce: 32 * 1024,
        }
    }

    /// The peer's node id (0 before the handshake).
    pub fn peer(&self) -> u64 {
        self.peer
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
        work += self.write()?;
        Ok(work)
    }

    fn read(&mut self) -> Result<usize, MuxError> {
        let mut chunk = [0u8; 64 * 1024];
        let mut n = 0;
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(MuxError::Closed(self.peer)),
                Ok(k) => {
                    self.rbuf.extend_from_slice(&chunk[..k]);
                    n += k;
                    if k < chunk.len() {
                        return Ok(usize::from(n > 0));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(usize::from(n > 0)),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(MuxError::Io {
                        peer: self.peer,
                        source,
                    })
                }
            }
        }
    }

    fn process(&mut self) -> Result<usize, MuxError> {
        let mut at = 0;
        let mut work = 0;
        if !self.handshaken {
            if self.rbuf.len() < HANDSHAKE_LEN {
                return Ok(0);
            }
            let h = &self.rbuf[..HANDSHAKE_LEN];
            if h[..4] != MAGIC {
                return Err(self.protocol(format!("bad magic {:02x?}", &h[..4])));
            }
            let v = u16::from_le_bytes([h[4], h[5]]);
            if v != VERSION {
                return Err(self.protocol(format!("version {v}, this node speaks {VERSION}")));
            }
            let mut id = [0u8; 8];
            id.copy_from_slice(&h[8..16]);
            self.peer = u64::from_le_bytes(id);
            self.handshaken = true;
            at = HANDSHAKE_LEN;
            work += 1;
        }
        while self.rbuf.len() >= at + FRAME_HEADER {
            let h = &self.rbuf[at..at + FRAME_HEADER];
            let channel = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let kind = h[4];
            let ring_type = h[5];
            let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(self.protocol(format!("frame of {len} bytes")));
            }
            if self.rbuf.len() < at + FRAME_HEADER + len {
                break;
            }
            let body = at + FRAME_HEADER..at + FRAME_HEADER + len;
            match kind {
                KIND_DATA => {
                    let ty = match ring_type {
                        1 => FrameType::Data,
                        2 => FrameType::Watermark,
                        3 => FrameType::Barrier,
                        4 => FrameType::EndOfStream,
                        t => return Err(self.protocol(format!("ring frame type {t}"))),
                    };
                    let Some(inc) = self.ins.get_mut(channel as usize) else {
                        return Err(self.protocol(format!("unknown channel {channel}")));
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
                }
                KIND_CREDIT => {
                    let Some(out) = self.outs.get_mut(channel as usize) else {
                        return Err(self.protocol(format!("credit for unknown channel {channel}")));
                    };
                    if len != 8 {
                        return Err(self.protocol("credit frame of the wrong length"));
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.rbuf[body]);
                    out.credit = out.credit.saturating_add(u64::from_le_bytes(b));
                }
                k => return Err(self.protocol(format!("frame kind {k}"))),
            }
            at += FRAME_HEADER + len;
            work += 1;
        }
        self.rbuf.drain(..at);
        Ok(work)
    }

    fn put_header(&mut self, channel: u32, kind: u8, ring_type: u8, len: usize) {
        let mut h = [0u8; FRAME_HEADER];
        h[..4].copy_from_slice(&channel.to_le_bytes());
        h[4] = kind;
        h[5] = ring_type;
        h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        self.wbuf.extend_from_slice(&h);
    }

    /// Grants each inbound channel the ring space its consumer freed, in chunks of at
    /// least a quarter ring. Room for one frame's padding is held back, since a frame
    /// that wraps needs more ring bytes than its size.
    fn grant(&mut self) -> usize {
        let mut work = 0;
        for ch in 0..self.ins.len() {
            let inc = &mut self.ins[ch];
            let cap = inc.tx.capacity() as u64;
            let reserve = (inc.tx.max_payload() + 16) as u64;
            let free = match inc.tx.free_bytes(true) {
                Ok(f) => f,
                Err(_) => continue,
            };
            let outstanding = inc.granted - inc.received;
            let can = free.saturating_sub(reserve).saturating_sub(outstanding);
            if can >= cap / 4 || (inc.granted == 0 && can > 0) {
                inc.granted += can;
                self.put_header(ch as u32, KIND_CREDIT, 0, 8);
                self.wbuf.extend_from_slice(&can.to_le_bytes());
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
                let (ty, payload) = (frame.frame_type() as u8, frame.payload());
                let mut h = [0u8; FRAME_HEADER];
                h[..4].copy_from_slice(&(ch as u32).to_le_bytes());
                h[4] = KIND_DATA;
                h[5] = ty;
                h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
                self.wbuf.extend_from_slice(&h);
                self.wbuf.extend_from_slice(payload);
                moved += 1;
            }
            self.outs[ch].rx.release();
            work += moved;
        }
        self.next_out = (self.next_out + 1) % n.max(1);
        work
    }

    fn write(&mut self) -> Result<usize, MuxError> {
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
        self.wbuf.drain(..written);
        Ok(usize::from(written > 0))
    }
}
