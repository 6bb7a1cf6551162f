//! Channels between hosts: many ring-to-ring channels multiplexed over one TCP
//! connection, with credit-based flow control per channel.
//!
//! A task writes to a local ring as always; the sending side of a [`Mux`] moves that
//! ring's frames onto the connection, within the credit the receiver granted for the
//! channel; the receiving side writes them into the destination ring and grants credit
//! for the space its consumer frees. A stalled consumer therefore stops only its own
//! channel: the others keep the connection. Tasks never know where their peer is.
//!
//! ```text
//! connection: handshake (16 bytes each way), then frames
//!   0      4      6      8              16
//!   +------+------+------+---------------+
//!   |"SPNT"| ver  | zero | node id (u64) |          handshake
//!   +------+------+------+---------------+
//!   0          4      5        6      8          12          16
//!   +----------+------+--------+------+----------+-----------+---------+
//!   | channel  | kind | ring   | zero | length   | zero      | payload |  frame
//!   | (u32 LE) |      | type   |      | (u32 LE) |           | (data)  |
//!   +----------+------+--------+------+----------+-----------+---------+
//!   kind 1: a ring frame of `ring type` with `length` payload bytes;
//!   kind 2: credit, payload u64 LE: more ring bytes the sender may use.
//! ```
//!
//! This module is the transport's logic over any non-blocking byte stream; it is
//! driven by whoever polls it (a slot, or a network agent).

mod mux;

pub use mux::{Mux, MuxError};

/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"SPNT";
/// Protocol version.
pub const VERSION: u16 = 1;
/// Handshake bytes.
pub const HANDSHAKE_LEN: usize = 16;
/// Frame header bytes.
pub const FRAME_HEADER: usize = 16;
/// Largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 16 << 20;

const KIND_DATA: u8 = 1;
const KIND_CREDIT: u8 = 2;
