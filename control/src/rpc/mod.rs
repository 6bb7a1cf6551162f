//! RPC between JobManager and TaskManagers: a small, versioned binary protocol over TCP,
//! driven by mio on one thread per endpoint.
//!
//! ```text
//! handshake: three messages, each an 8-byte header and a body:
//!   0        4          6       7        8
//!   +--------+----------+-------+--------+
//!   | "SPRC" | version  | kind  | status |     kind: 1 hello (from the connecting side),
//!   +--------+----------+-------+--------+           2 ack (from the accepting side),
//!                                                    3 proof (from the connecting side)
//!                                               status: 0 ok, 1 version refused
//!   hello: header, nonce C (16 bytes)
//!   ack:   header, nonce S (16), HMAC-SHA256(secret, "spate-rpc-server", C, S)
//!   proof: header, HMAC-SHA256(secret, "spate-rpc-client", S, C)
//! then frames, both ways:
//!   +----------------+------------------------------+
//!   | length (u32 LE)| message (postcard, ≤ MAX_FRAME) |
//!   +----------------+------------------------------+
//! ```
//!
//! Each side proves that it holds the cluster's `security.internal.secret` (an empty key
//! without one) over both sides' fresh nonces, so neither trusts a peer that does not,
//! the secret never travels, and a recorded handshake cannot be replayed.
//!
//! A peer that sends another magic or version, a wrong proof, a frame longer than
//! [`MAX_FRAME`], bytes that do not decode as a message, or that closes mid-frame is
//! disconnected with an [`Event::Disconnected`] that says why; the endpoint and the
//! process live on.

mod endpoint;

pub use endpoint::{ConnId, Endpoint, Event};

/// Protocol magic.
pub const MAGIC: [u8; 4] = *b"SPRC";
/// Protocol version; a peer of another version is refused at the handshake.
pub const PROTOCOL_VERSION: u16 = 2;
/// Largest message, in bytes.
pub const MAX_FRAME: usize = 16 << 20;
/// A handshake message's header length.
pub const HANDSHAKE_LEN: usize = 8;
/// The hello's length.
pub const HELLO_LEN: usize = HANDSHAKE_LEN + NONCE_LEN;
/// The ack's length.
pub const ACK_LEN: usize = HANDSHAKE_LEN + NONCE_LEN + PROOF_LEN;
/// The proof's length.
pub const PROOF_MSG_LEN: usize = HANDSHAKE_LEN + PROOF_LEN;

use crate::security::{Secret, NONCE_LEN, PROOF_LEN};

const KIND_HELLO: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_PROOF: u8 = 3;
const SERVER_LABEL: &[u8] = b"spate-rpc-server";
const CLIENT_LABEL: &[u8] = b"spate-rpc-client";
const STATUS_OK: u8 = 0;
const STATUS_VERSION_REFUSED: u8 = 1;

/// Why a connection was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not our protocol.
    #[error("bad magic {0:02x?}: not a spate RPC peer")]
    BadMagic([u8; 4]),
    /// Another protocol version.
    #[error("protocol version {theirs} is not supported (this build speaks {PROTOCOL_VERSION})")]
    Version {
        /// The peer's version.
        theirs: u16,
    },
    /// The peer refused our version.
    #[error("the peer refused protocol version {PROTOCOL_VERSION}")]
    Refused,
    /// A handshake of the wrong kind.
    #[error("unexpected handshake kind {0}")]
    HandshakeKind(u8),
    /// The peer does not hold this process's secret.
    #[error(
        "authentication failed: the peer does not hold this cluster's \
         security.internal.secret (or one of the two has none)"
    )]
    Unauthenticated,
    /// A frame longer than allowed.
    #[error("oversized frame of {0} bytes (the limit is {MAX_FRAME})")]
    Oversized(usize),
    /// A message that does not decode.
    #[error("cannot decode a message: {0}")]
    Decode(String),
    /// The peer closed the connection in the middle of a frame or handshake.
    #[error("connection closed in the middle of a frame ({0} bytes pending)")]
    Truncated(usize),
}

/// A hello with nonce `nonce`.
fn hello(nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut h = handshake(KIND_HELLO, STATUS_OK).to_vec();
    h.extend_from_slice(nonce);
    h
}

/// The ack to a hello of nonce `theirs`, with our nonce `ours`.
fn ack(secret: &Secret, theirs: &[u8], ours: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut a = handshake(KIND_ACK, STATUS_OK).to_vec();
    a.extend_from_slice(ours);
    a.extend_from_slice(&secret.prove(&[SERVER_LABEL, theirs, ours]));
    a
}

/// Checks an ack (the server's proof over our nonce `ours`) and makes our proof.
fn answer_ack(
    secret: &Secret,
    ack: &[u8],
    ours: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, ProtocolError> {
    let theirs = &ack[HANDSHAKE_LEN..HANDSHAKE_LEN + NONCE_LEN];
    let proof = &ack[HANDSHAKE_LEN + NONCE_LEN..ACK_LEN];
    if !secret.verify(&[SERVER_LABEL, ours, theirs], proof) {
        return Err(ProtocolError::Unauthenticated);
    }
    let mut p = handshake(KIND_PROOF, STATUS_OK).to_vec();
    p.extend_from_slice(&secret.prove(&[CLIENT_LABEL, theirs, ours]));
    Ok(p)
}

/// Checks a client's proof over our nonce `ours` and its nonce `theirs`.
fn check_proof(
    secret: &Secret,
    proof: &[u8],
    ours: &[u8],
    theirs: &[u8],
) -> Result<(), ProtocolError> {
    if secret.verify(&[CLIENT_LABEL, ours, theirs], &proof[HANDSHAKE_LEN..]) {
        Ok(())
    } else {
        Err(ProtocolError::Unauthenticated)
    }
}

/// Runs the connecting side's handshake on a blocking stream (for tools and tests that
/// speak the protocol by hand).
pub fn handshake_blocking(
    stream: &mut std::net::TcpStream,
    secret: &Secret,
) -> Result<(), ProtocolError> {
    use std::io::{Read, Write};
    let io = |e: std::io::Error| ProtocolError::Decode(format!("handshake: {e}"));
    let nonce = crate::security::nonce();
    stream.write_all(&hello(&nonce)).map_err(io)?;
    let mut a = [0u8; ACK_LEN];
    stream.read_exact(&mut a[..HANDSHAKE_LEN]).map_err(io)?;
    let mut h = [0u8; HANDSHAKE_LEN];
    h.copy_from_slice(&a[..HANDSHAKE_LEN]);
    check_handshake(&h, KIND_ACK)?;
    stream.read_exact(&mut a[HANDSHAKE_LEN..]).map_err(io)?;
    let proof = answer_ack(secret, &a, &nonce)?;
    stream.write_all(&proof).map_err(io)
}

fn handshake(kind: u8, status: u8) -> [u8; HANDSHAKE_LEN] {
    let v = PROTOCOL_VERSION.to_le_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], kind, status,
    ]
}

/// Checks a peer's handshake of `expected` kind.
fn check_handshake(b: &[u8; HANDSHAKE_LEN], expected: u8) -> Result<(), ProtocolError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    if b[6] != expected {
        return Err(ProtocolError::HandshakeKind(b[6]));
    }
    let theirs = u16::from_le_bytes([b[4], b[5]]);
    if b[7] == STATUS_VERSION_REFUSED {
        return Err(ProtocolError::Refused);
    }
    if theirs != PROTOCOL_VERSION {
        return Err(ProtocolError::Version { theirs });
    }
    Ok(())
}

/// Splits complete frames off the front of `buf`; returns their payload ranges and how
/// many bytes they used. An oversized length is an error at once (before its bytes).
fn split_frames(buf: &[u8]) -> Result<(Vec<std::ops::Range<usize>>, usize), ProtocolError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(len) = buf.get(at..at + 4) {
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::Oversized(len));
        }
        if buf.len() < at + 4 + len {
            break;
        }
        frames.push(at + 4..at + 4 + len);
        at += 4 + len;
    }
    Ok((frames, at))
}

/// Encodes a message as a frame.
pub fn encode_frame<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    let body = postcard::to_stdvec(msg).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(ProtocolError::Oversized(body.len()));
    }
    let mut f = Vec::with_capacity(4 + body.len());
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(&body);
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frames_split_at_their_boundaries() {
        let mut buf = encode_frame(&(1u32, String::from("a"))).unwrap();
        buf.extend(encode_frame(&(2u32, String::from("bb"))).unwrap());
        let whole = buf.len();
        buf.extend_from_slice(&[9, 0, 0]); // a partial length
        let (frames, used) = split_frames(&buf).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(used, whole);
        let m: (u32, String) = postcard::from_bytes(&buf[frames[1].clone()]).unwrap();
        assert_eq!(m, (2, "bb".into()));
        let big = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(
            split_frames(&big).unwrap_err(),
            ProtocolError::Oversized(MAX_FRAME + 1)
        );
    }

    #[test]
    fn proofs_hold_only_under_the_same_secret() {
        let (s, other) = (Secret::new(b"k"), Secret::new(b"j"));
        let (c, n) = (crate::security::nonce(), crate::security::nonce());
        let a = ack(&s, &c, &n);
        assert_eq!(a.len(), ACK_LEN);
        let p = answer_ack(&s, &a, &c).unwrap();
        assert_eq!(p.len(), PROOF_MSG_LEN);
        assert!(check_proof(&s, &p, &n, &c).is_ok());
        assert_eq!(
            check_proof(&other, &p, &n, &c),
            Err(ProtocolError::Unauthenticated)
        );
        assert_eq!(
            answer_ack(&other, &a, &c),
            Err(ProtocolError::Unauthenticated)
        );
        assert_eq!(
            answer_ack(&Secret::none(), &a, &c),
            Err(ProtocolError::Unauthenticated)
        );
        // A replayed ack answers another hello's nonce: refused.
        let c2 = crate::security::nonce();
        assert_eq!(answer_ack(&s, &a, &c2), Err(ProtocolError::Unauthenticated));
    }

    #[test]
    fn handshakes_are_checked() {
        assert!(check_handshake(&handshake(KIND_HELLO, STATUS_OK), KIND_HELLO).is_ok());
        let mut h = handshake(KIND_HELLO, STATUS_OK);
        h[0] = b'X';
        assert!(matches!(
            check_handshake(&h, KIND_HELLO),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut h = handshake(KIND_HELLO, STATUS_OK);
        h[4] = 9;
        assert_eq!(
            check_handshake(&h, KIND_HELLO),
            Err(ProtocolError::Version { theirs: 9 })
        );
        assert_eq!(
            check_handshake(&handshake(KIND_ACK, STATUS_OK), KIND_HELLO),
            Err(ProtocolError::HandshakeKind(KIND_ACK))
        );
        assert_eq!(
            check_handshake(&handshake(KIND_ACK, STATUS_VERSION_REFUSED), KIND_ACK),
            Err(ProtocolError::Refused)
        );
    }
}
