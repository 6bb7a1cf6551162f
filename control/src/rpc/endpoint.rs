//! An RPC endpoint: one mio event loop thread owning a listener (optional) and any number
//! of connections, talking to its owner through channels.

use super::{
    ack, answer_ack, check_handshake, check_proof, encode_frame, handshake, hello, split_frames,
    ProtocolError, ACK_LEN, HANDSHAKE_LEN, HELLO_LEN, KIND_ACK, KIND_HELLO, KIND_PROOF,
    PROOF_MSG_LEN, STATUS_VERSION_REFUSED,
};
use crate::security::Secret;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// Connections an endpoint holds at most; more are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a connection has to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes queued for a peer that does not read before it is dropped.
pub const MAX_PENDING_WRITE: usize = 64 << 20;

/// Identifies a connection of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    fn token(self) -> Token {
        Token(self.0 as usize + 2)
    }
}

/// What an endpoint reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<In> {
    /// A connection finished its handshake.
    Connected {
        /// The connection.
        conn: ConnId,
        /// The peer's address.
        peer: SocketAddr,
    },
    /// A message arrived.
    Message {
        /// From which connection.
        conn: ConnId,
        /// The message.
        msg: In,
    },
    /// A connection ended (or never came up); `reason` says why.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
}

enum Command<Out> {
    Connect(ConnId, SocketAddr),
    Send(ConnId, Out),
    Close(ConnId),
    Shutdown,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Outgoing: TCP connect in progress, hello queued.
    Connecting,
    /// Outgoing: hello sent, waiting for the ack.
    AwaitAck,
    /// Incoming: waiting for the hello.
    AwaitHello,
    /// Incoming: ack sent, waiting for the peer's proof.
    AwaitProof,
    /// Handshaken.
    Open,
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    state: State,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    writable_interest: bool,
    /// Bytes of our hello still to write (outgoing connections); nothing else is
    /// written before the peer's ack.
    hello_pending: usize,
    /// Close once the write buffer has drained (after a refusal).
    close_after_flush: Option<String>,
    /// When the connection was opened (for the handshake deadline).
    opened: std::time::Instant,
    /// Our handshake nonce, and the peer's once heard.
    nonce: [u8; crate::security::NONCE_LEN],
    peer_nonce: [u8; crate::security::NONCE_LEN],
}

/// An RPC endpoint sending `Out` and receiving `In` messages.
pub struct Endpoint<In, Out> {
    commands: Sender<Command<Out>>,
    waker: Arc<Waker>,
    events: Receiver<Event<In>>,
    local: Option<SocketAddr>,
    next_conn: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl<In, Out> std::fmt::Debug for Endpoint<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local", &self.local)
            .finish()
    }
}

impl<In, Out> Endpoint<In, Out>
where
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
{
    /// An endpoint that accepts connections on `addr` (port 0 picks one) from peers
    /// that hold `secret`.
    pub fn listen(addr: SocketAddr, name: &str, secret: Secret) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        Self::start(Some(listener), name, secret)
    }

    /// An endpoint that only connects out, to peers that hold `secret`.
    pub fn client(name: &str, secret: Secret) -> std::io::Result<Self> {
        Self::start(None, name, secret)
    }

    fn start(listener: Option<TcpListener>, name: &str, secret: Secret) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let local = match &listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let (ctx, crx) = channel();
        let (etx, erx) = channel();
        let next_conn = Arc::new(AtomicU64::new(0));
        let nc = next_conn.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-rpc"))
            .spawn(move || {
                let mut lp = Loop {
                    poll,
                    listener,
                    conns: HashMap::new(),
                    commands: crx,
                    events: etx,
                    next_conn: nc,
                    secret,
                };
                if let Err(e) = lp.run() {
                    tracing::error!(error = %e, "RPC event loop stopped");
                }
            })?;
        Ok(Self {
            commands: ctx,
            waker,
            events: erx,
            local,
            next_conn,
            thread: Some(thread),
        })
    }

    /// The listening address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }

    fn command(&self, c: Command<Out>) {
        if self.commands.send(c).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Starts connecting to `addr`; `Connected` or `Disconnected` follows.
    pub fn connect(&self, addr: SocketAddr) -> ConnId {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        self.command(Command::Connect(id, addr));
        id
    }

    /// Queues a message (sent after the handshake if it is still under way).
    pub fn send(&self, conn: ConnId, msg: Out) {
        self.command(Command::Send(conn, msg));
    }

    /// Closes a connection.
    pub fn close(&self, conn: ConnId) {
        self.command(Command::Close(conn));
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event<In>> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event<In>> {
        self.events.try_recv().ok()
    }
}

impl<In, Out> Drop for Endpoint<In, Out> {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Loop<In, Out> {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: HashMap<ConnId, Conn>,
    commands: Receiver<Command<Out>>,
    events: Sender<Event<In>>,
    next_conn: Arc<AtomicU64>,
    secret: Secret,
}

impl<In: DeserializeOwned, Out: Serialize> Loop<In, Out> {
    fn run(&mut self) -> std::io::Result<()> {
        if let Some(l) = &mut self.listener {
            self.poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)?;
        }
        let mut events = Events::with_capacity(256);
        loop {
            self.expire_handshakes();
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_secs(1))) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {
                        if !self.take_commands() {
                            return Ok(());
                        }
                    }
                    Token(t) => {
                        let id = ConnId(t as u64 - 2);
                        if ev.is_writable() {
                            self.on_writable(id);
                        }
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(id);
                        }
                    }
                }
            }
        }
    }

    fn emit(&self, e: Event<In>) {
        let _ = self.events.send(e);
    }

    fn drop_conn(&mut self, id: ConnId, reason: String) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            tracing::warn!(peer = %c.peer, %reason, "RPC connection dropped");
            self.emit(Event::Disconnected { conn: id, reason });
        }
    }

    /// Drops connections that did not complete their handshake in time.
    fn expire_handshakes(&mut self) {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state != State::Open && c.opened.elapsed() > HANDSHAKE_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.drop_conn(
                id,
                format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
            );
        }
    }

    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((_, peer)) if self.conns.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(%peer, "too many RPC connections; closing the new one");
                }
                Ok((mut stream, peer)) => {
                    let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
                    let _ = stream.set_nodelay(true);
                    if let Err(e) =
                        self.poll
                            .registry()
                            .register(&mut stream, id.token(), Interest::READABLE)
                    {
                        tracing::warn!(%peer, error = %e, "cannot register connection");
                        continue;
                    }
                    self.conns.insert(
                        id,
                        Conn {
                            stream,
                            peer,
                            state: State::AwaitHello,
                            rbuf: Vec::new(),
                            wbuf: Vec::new(),
                            writable_interest: false,
                            hello_pending: 0,
                            close_after_flush: None,
                            opened: std::time::Instant::now(),
                            nonce: crate::security::nonce(),
                            peer_nonce: [0; crate::security::NONCE_LEN],
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // Out of descriptors, say: the backlog waits for the next readiness.
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Returns false on shutdown.
    fn take_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Shutdown => return false,
                Command::Connect(id, addr) => match TcpStream::connect(addr) {
                    Ok(mut stream) => {
                        let _ = stream.set_nodelay(true);
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        if let Err(e) =
                            self.poll
                                .registry()
                                .register(&mut stream, id.token(), interest)
                        {
                            self.emit(Event::Disconnected {
                                conn: id,
                                reason: format!("cannot register connection: {e}"),
                            });
                            continue;
                        }
                        let nonce = crate::security::nonce();
                        self.conns.insert(
                            id,
                            Conn {
                                stream,
                                peer: addr,
                                state: State::Connecting,
                                rbuf: Vec::new(),
                                wbuf: hello(&nonce),
                                writable_interest: true,
                                hello_pending: HELLO_LEN,
                                close_after_flush: None,
                                opened: std::time::Instant::now(),
                                nonce,
                                peer_nonce: [0; crate::security::NONCE_LEN],
                            },
                        );
                    }
                    Err(e) => self.emit(Event::Disconnected {
                        conn: id,
                        reason: format!("cannot connect to {addr}: {e}"),
                    }),
                },
                Command::Send(id, msg) => {
                    let frame = match encode_frame(&msg) {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot encode an RPC message");
                            continue;
                        }
                    };
                    if let Some(c) = self.conns.get_mut(&id) {
                        if c.wbuf.len() + frame.len() > MAX_PENDING_WRITE {
                            self.drop_conn(
                                id,
                                format!(
                                    "the peer does not read ({MAX_PENDING_WRITE} bytes queued)"
                                ),
                            );
                            continue;
                        }
                        c.wbuf.extend_from_slice(&frame);
                        if c.state == State::Open {
                            self.on_writable(id);
                        }
                    }
                }
                Command::Close(id) => self.drop_conn(id, "closed locally".into()),
            }
        }
        true
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.state == State::Connecting {
            match c.stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    let reason = format!("cannot connect to {}: {e}", c.peer);
                    self.drop_conn(id, reason);
                    return;
                }
            }
            if c.stream.peer_addr().is_err() {
                return; // not connected yet
            }
            c.state = State::AwaitAck;
        }
        // Before the handshake completes on an outgoing connection only the hello goes.
        let limit = match c.state {
            State::AwaitAck => c.hello_pending.min(c.wbuf.len()),
            _ => c.wbuf.len(),
        };
        let mut written = 0;
        let mut failure = None;
        while written < limit {
            match c.stream.write(&c.wbuf[written..limit]) {
                Ok(0) => {
                    failure = Some("connection closed while writing".to_string());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(format!("write failed: {e}"));
                    break;
                }
            }
        }
        c.wbuf.drain(..written);
        if c.state == State::AwaitAck {
            c.hello_pending -= written;
        }
        if let Some(f) = failure {
            self.drop_conn(id, f);
            return;
        }
        if c.wbuf.is_empty() {
            if let Some(reason) = c.close_after_flush.take() {
                self.drop_conn(id, reason);
                return;
            }
        }
        let want = match c.state {
            State::AwaitAck => c.hello_pending > 0,
            _ => !c.wbuf.is_empty(),
        };
        if want != c.writable_interest {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = self
                .poll
                .registry()
                .reregister(&mut c.stream, id.token(), interest);
            c.writable_interest = want;
        }
    }

    fn on_readable(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut chunk = [0u8; 16 * 1024];
        let mut eof = false;
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // A peer that closes with our bytes unread resets instead: same end.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    eof = true;
                    break;
                }
                Err(e) => {
                    let reason = format!("read failed: {e}");
                    self.drop_conn(id, reason);
                    return;
                }
            }
        }
        if let Err(e) = self.process(id) {
            self.drop_conn(id, e.to_string());
            return;
        }
        if eof {
            let pending = self.conns.get(&id).map_or(0, |c| c.rbuf.len());
            let reason = if pending > 0 {
                ProtocolError::Truncated(pending).to_string()
            } else {
                "peer closed the connection".to_string()
            };
            self.drop_conn(id, reason);
        }
    }

    fn process(&mut self, id: ConnId) -> Result<(), ProtocolError> {
        let Some(mut c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        // The handshake: hello → ack (the server's proof) → proof (the client's).
        while matches!(
            c.state,
            State::AwaitHello | State::AwaitAck | State::AwaitProof
        ) {
            if c.rbuf.len() < HANDSHAKE_LEN {
                return Ok(());
            }
            let mut h = [0u8; HANDSHAKE_LEN];
            h.copy_from_slice(&c.rbuf[..HANDSHAKE_LEN]);
            let (expected, len) = match c.state {
                State::AwaitHello => (KIND_HELLO, HELLO_LEN),
                State::AwaitAck => (KIND_ACK, ACK_LEN),
                _ => (KIND_PROOF, PROOF_MSG_LEN),
            };
            match check_handshake(&h, expected) {
                Ok(()) => {}
                Err(e @ ProtocolError::Version { .. }) if c.state == State::AwaitHello => {
                    // Tell the peer, then close.
                    c.wbuf = handshake(KIND_ACK, STATUS_VERSION_REFUSED).to_vec();
                    c.close_after_flush = Some(e.to_string());
                    c.state = State::Open;
                    c.rbuf.clear();
                    self.on_writable(id);
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            if c.rbuf.len() < len {
                return Ok(());
            }
            let msg: Vec<u8> = c.rbuf.drain(..len).collect();
            match c.state {
                State::AwaitHello => {
                    c.peer_nonce.copy_from_slice(&msg[HANDSHAKE_LEN..]);
                    let mut out = ack(&self.secret, &c.peer_nonce, &c.nonce);
                    out.append(&mut c.wbuf);
                    c.wbuf = out;
                    c.state = State::AwaitProof;
                    self.on_writable(id);
                }
                State::AwaitAck => {
                    let mut out = answer_ack(&self.secret, &msg, &c.nonce)?;
                    out.append(&mut c.wbuf);
                    c.wbuf = out;
                    c.state = State::Open;
                    let peer = c.peer;
                    self.emit(Event::Connected { conn: id, peer });
                    self.on_writable(id);
                }
                _ => {
                    check_proof(&self.secret, &msg, &c.nonce, &c.peer_nonce)?;
                    c.state = State::Open;
                    let peer = c.peer;
                    self.emit(Event::Connected { conn: id, peer });
                }
            }
            let Some(next) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            c = next;
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        if c.state != State::Open || c.close_after_flush.is_some() {
            return Ok(());
        }
        let (frames, used) = split_frames(&c.rbuf)?;
        let mut msgs = Vec::with_capacity(frames.len());
        for r in frames {
            let msg = postcard::from_bytes::<In>(&c.rbuf[r])
                .map_err(|e| ProtocolError::Decode(e.to_string()))?;
            msgs.push(msg);
        }
        c.rbuf.drain(..used);
        for msg in msgs {
            self.emit(Event::Message { conn: id, msg });
        }
        Ok(())
    }
}
