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
//! connection: hello (32 bytes each way), proof (32 bytes each way), then frames
//!   0      4      6      8              16              32
//!   +------+------+------+---------------+---------------+
//!   |"SPNT"| ver  | zero | node id (u64) | nonce (16)    |   hello
//!   +------+------+------+---------------+---------------+
//!   proof: MAC(secret; "spate-data", the peer's nonce, own nonce, own node id), which
//!   the peer checks before it accepts a frame: both nodes hold the cluster's secret
//!   ([`Mac`]), which never travels; fresh nonces make a recorded handshake useless.
//!   0          4      5        6      8          12           16
//!   +----------+------+--------+------+----------+------------+---------+
//!   | channel  | kind | ring   | zero | length   | channel    | payload |  frame
//!   | low u32  |      | type   |      | (u32 LE) | high u32   | (data)  |
//!   +----------+------+--------+------+----------+------------+---------+
//!   kind 1: a ring frame of `ring type` with `length` payload bytes;
//!   kind 2: credit, payload u64 LE: more ring bytes the sender may use;
//!   kind 3: close: the channel's end on the sending node (producer 1, consumer 2, in
//!           the `ring type` byte) went away without end of stream;
//!   kind 4: keepalive (channel 0, no payload), sent when nothing else was.
//! ```
//!
//! One connection joins a pair of nodes (TaskManagers) and carries channels in both
//! directions: the node with the smaller id dials, the other accepts; a channel id
//! (64 bits, never reused) names one direction of one ring-to-ring channel, agreed on
//! at deployment. A channel's receiving ring should be twice its sending ring: credit
//! holds back room for one wrapped frame's padding (see [`Mux`]).
//!
//! [`Mux`] is the transport's logic over any non-blocking byte stream; [`NetAgent`]
//! owns a node's listener and connections and is polled by its own thread or by a slot.

mod agent;
mod mux;
mod uring;

pub use agent::{AgentConfig, AgentError, AgentThread, NetAgent, NetHandle, NetStats};
pub use mux::{Mux, MuxError, MuxStats};
pub use uring::{UringOptions, UringStream};

use std::io::{ErrorKind, Read, Write};

/// Which way a connection's bytes move (`taskmanager.network.transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// io_uring submissions, completions reaped by polling.
    IoUring,
    /// Non-blocking sockets on mio (epoll readiness).
    Epoll,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "io_uring" | "io-uring" | "iouring" => Ok(Self::IoUring),
            "epoll" | "mio" => Ok(Self::Epoll),
            other => Err(format!("unknown transport {other:?} (io_uring or epoll)")),
        }
    }
}

/// A non-blocking socket on mio. Once registered with a [`mio::Poll`] (by the network
/// agent) it is *managed*: it reads only after epoll reported it readable and writes
/// only while writable (edge-triggered: a `WouldBlock` clears the flag until the next
/// event). Unmanaged, it simply tries the call.
#[derive(Debug)]
pub struct EpollStream {
    sock: mio::net::TcpStream,
    readable: bool,
    writable: bool,
    managed: bool,
}

impl EpollStream {
    fn new(sock: std::net::TcpStream) -> Self {
        Self {
            sock: mio::net::TcpStream::from_std(sock),
            readable: true,
            writable: true,
            managed: false,
        }
    }

    /// Registers with `registry` under `token`; from now on readiness comes from there.
    pub fn register(&mut self, registry: &mio::Registry, token: mio::Token) -> std::io::Result<()> {
        registry.register(
            &mut self.sock,
            token,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        self.managed = true;
        // Whatever arrived before registration is read by one speculative attempt.
        self.readable = true;
        self.writable = true;
        Ok(())
    }

    /// Leaves `registry`.
    pub fn deregister(&mut self, registry: &mio::Registry) -> std::io::Result<()> {
        self.managed = false;
        registry.deregister(&mut self.sock)
    }

    /// Records an event of its token.
    pub fn ready(&mut self, ev: &mio::event::Event) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
        }
    }
}

impl Read for EpollStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.managed && !self.readable {
            return Err(ErrorKind::WouldBlock.into());
        }
        let r = self.sock.read(buf);
        if matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock) {
            self.readable = false;
        }
        r
    }
}

impl Write for EpollStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.managed && !self.writable {
            return Err(ErrorKind::WouldBlock.into());
        }
        let r = self.sock.write(buf);
        if matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock) {
            self.writable = false;
        }
        r
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A connection's byte stream: io_uring where it can be set up, else a non-blocking
/// socket on mio (which is logged, with the reason).
#[derive(Debug)]
pub enum NetStream {
    /// Through io_uring.
    IoUring(Box<UringStream>),
    /// Non-blocking socket calls on epoll readiness.
    Epoll(EpollStream),
}

/// Whether io_uring is refused here by `SPATE_DISABLE_IO_URING` (which simulates a
/// kernel or sandbox that refuses it).
fn io_uring_disabled() -> Option<std::io::Error> {
    std::env::var_os("SPATE_DISABLE_IO_URING").map(|_| {
        std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "disabled by SPATE_DISABLE_IO_URING",
        )
    })
}

impl NetStream {
    /// Wraps a connected stream (made non-blocking) as `want` asks, falling back from
    /// io_uring to epoll where io_uring is unavailable.
    pub fn new(stream: std::net::TcpStream, want: TransportKind) -> std::io::Result<Self> {
        Self::with_options(stream, want, UringOptions::default())
    }

    /// As [`NetStream::new`], with io_uring set up as `opts` asks.
    pub fn with_options(
        stream: std::net::TcpStream,
        want: TransportKind,
        opts: UringOptions,
    ) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        if want == TransportKind::IoUring {
            let uring = match io_uring_disabled() {
                Some(e) => Err(e),
                None => stream
                    .try_clone()
                    .and_then(|s| UringStream::with_options(s, opts)),
            };
            match uring {
                Ok(u) => return Ok(Self::IoUring(Box::new(u))),
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring unavailable; using epoll");
                }
            }
        }
        Ok(Self::Epoll(EpollStream::new(stream)))
    }

    /// What it uses.
    pub fn kind(&self) -> TransportKind {
        match self {
            Self::IoUring(_) => TransportKind::IoUring,
            Self::Epoll(_) => TransportKind::Epoll,
        }
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::IoUring(s) => s.read(buf),
            Self::Epoll(s) => s.read(buf),
        }
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::IoUring(s) => s.write(buf),
            Self::Epoll(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Proves that a node holds the cluster's secret over the given parts (a label, then
/// nonces and node ids): both ends of a data connection must compute the same (spate's
/// control plane gives HMAC-SHA256 under `security.internal.secret`). Without one, the
/// handshake's proofs are zeros, and a node with a secret refuses a node without.
#[derive(Clone)]
pub struct Mac(pub std::sync::Arc<MacFn>);

/// The function behind a [`Mac`].
pub type MacFn = dyn Fn(&[&[u8]]) -> [u8; PROOF_LEN] + Send + Sync;

impl std::fmt::Debug for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mac(..)")
    }
}

impl Mac {
    /// The proof over `parts`.
    pub fn prove(&self, parts: &[&[u8]]) -> [u8; PROOF_LEN] {
        (self.0)(parts)
    }
}

/// Handshake magic.
pub const MAGIC: [u8; 4] = *b"SPNT";
/// Protocol version.
pub const VERSION: u16 = 2;
/// Hello bytes (magic, version, node id, nonce).
pub const HANDSHAKE_LEN: usize = 32;
/// Proof bytes (after the peer's hello, each way).
pub const PROOF_LEN: usize = 32;
/// Frame header bytes.
pub const FRAME_HEADER: usize = 16;
/// Largest payload a frame carries.
pub const MAX_PAYLOAD: usize = 16 << 20;

const KIND_DATA: u8 = 1;
const KIND_CREDIT: u8 = 2;
const KIND_CLOSE: u8 = 3;
const KIND_PING: u8 = 4;
const CLOSE_BY_PRODUCER: u8 = 1;
const CLOSE_BY_CONSUMER: u8 = 2;
