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
mod uring;

pub use mux::{Mux, MuxError};
pub use uring::UringStream;

/// Which way a connection's bytes move (`taskmanager.network.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// io_uring submissions, completions reaped by polling.
    IoUring,
    /// Plain non-blocking socket calls.
    Socket,
}

/// A connection's byte stream: io_uring where it can be set up, else the plain socket
/// (which is logged, with the reason).
#[derive(Debug)]
pub enum NetStream {
    /// Through io_uring.
    IoUring(Box<UringStream>),
    /// Non-blocking socket calls.
    Socket(std::net::TcpStream),
}

impl NetStream {
    /// Wraps a connected stream (made non-blocking) as `want` asks, falling back from
    /// io_uring to the socket where io_uring is unavailable.
    pub fn new(stream: std::net::TcpStream, want: TransportKind) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        if want == TransportKind::IoUring {
            // SPATE_DISABLE_IO_URING simulates a kernel or sandbox that refuses io_uring.
            let refused = std::env::var_os("SPATE_DISABLE_IO_URING").map(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "disabled by SPATE_DISABLE_IO_URING",
                )
            });
            let uring = match refused {
                Some(e) => Err(e),
                None => stream.try_clone().and_then(UringStream::new),
            };
            match uring {
                Ok(u) => return Ok(Self::IoUring(Box::new(u))),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using non-blocking sockets");
                }
            }
        }
        Ok(Self::Socket(stream))
    }

    /// What it uses.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::IoUring(_) => TransportKind::IoUring,
            Self::Socket(_) => TransportKind::Socket,
        }
    }
}

impl std::io::Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::IoUring(s) => s.read(buf),
            Self::Socket(s) => s.read(buf),
        }
    }
}

impl std::io::Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::IoUring(s) => s.write(buf),
            Self::Socket(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
