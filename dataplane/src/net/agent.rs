//! The network agent: one per node (TaskManager). It owns the node's data listener and
//! one connection per peer node, and moves frames between local rings and sockets.
//!
//! Tasks never see it: a deployment that finds a channel's other end on another host
//! makes an in-process ring, gives the task its usual half and hands the other half to
//! the agent ([`NetHandle::open_out`] / [`NetHandle::open_in`]) with the channel id and
//! the peer. The agent dials the peer if its node id is the smaller of the two (else it
//! waits for the peer to dial), and opens the channel on that connection once the
//! handshake has named the peer. A peer that does not connect within the timeout, a
//! connection that fails or falls silent (keepalives stop) ends every channel on it:
//! their local rings are closed, so the tasks fail as if a local peer had gone.
//!
//! The agent is polled: by its own thread (pinned, with an idle strategy) or as a task
//! of a slot. With the epoll transport every poll asks epoll (zero timeout) which
//! sockets are ready; with io_uring, epoll is asked only every millisecond, for new
//! connections.

use super::{Mux, MuxError, MuxStats, NetStream, TransportKind, UringOptions};
use crate::clock;
use crate::idle::IdleStrategyKind;
use crate::ring::{Consumer, Producer};
use crate::slot::{Task, TaskError, TaskPoll};
use mio::net::{TcpListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use rustc_hash::FxHashMap;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

const LISTENER: Token = Token(0);
/// Accepted connections that have not yet said who they are, at most.
const MAX_UNNAMED: usize = 256;
/// How often a refused dial is tried again.
const REDIAL_NS: u64 = 50_000_000;
/// How often, with io_uring, epoll is asked about the listener and dials.
const MIO_EVERY_NS: u64 = 1_000_000;
/// How long a connection may take to say who it is (at most; less if the peer timeout
/// is shorter).
const HANDSHAKE_TIMEOUT_NS: u64 = 5_000_000_000;

/// A node's network settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's id (not 0), as its peers will know it.
    pub node: u64,
    /// Where to listen for peers (port 0: any free port).
    pub listen: SocketAddr,
    /// io_uring (falls back to epoll where refused) or epoll.
    pub transport: TransportKind,
    /// How io_uring connections are set up (SQPOLL, multishot receives).
    pub uring: UringOptions,
    /// A keepalive goes out after this long without sending.
    pub keepalive: Duration,
    /// A peer silent this long, or not connected this long after a channel to it was
    /// opened, is given up: its channels fail.
    pub timeout: Duration,
    /// Proves and checks the cluster's secret in each connection's handshake (`None`:
    /// no secret; a peer with one is refused).
    pub mac: Option<super::Mac>,
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data port could not be bound.
    #[error("binding the data port {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// epoll could not be set up.
    #[error("setting up epoll: {0}")]
    Poll(io::Error),
    /// Node id 0 means "not known yet" in the handshake.
    #[error("node id 0 is reserved")]
    ZeroNode,
    /// The agent's thread could not start.
    #[error("starting the network agent thread: {0}")]
    Spawn(io::Error),
}

enum End {
    Out(Consumer),
    In(Producer),
}

struct Open {
    peer: u64,
    addr: SocketAddr,
    channel: u64,
    end: End,
}

/// Totals over the agent's connections, for reports.
#[derive(Debug, Default)]
pub struct NetStats {
    connections: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    failures: AtomicU64,
    fallbacks: AtomicU64,
}

impl NetStats {
    /// Connections open now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// Bytes received so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }
    /// Bytes sent so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }
    /// Ring frames received so far.
    pub fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }
    /// Ring frames sent so far.
    pub fn frames_out(&self) -> u64 {
        self.frames_out.load(Ordering::Relaxed)
    }
    /// Connections that asked for io_uring and run on epoll (io_uring refused here).
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }
    /// Connections that failed (or peers that never connected).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}

/// Opens channels on a running agent, from any thread.
#[derive(Debug, Clone)]
pub struct NetHandle {
    tx: Sender<Open>,
    node: u64,
    addr: SocketAddr,
    transport: TransportKind,
    stats: Arc<NetStats>,
}

impl NetHandle {
    /// Sends what `rx` reads to node `peer` (listening at `addr`) as channel `channel`.
    /// False if the agent has stopped.
    pub fn open_out(&self, peer: u64, addr: SocketAddr, channel: u64, rx: Consumer) -> bool {
        self.open(peer, addr, channel, End::Out(rx))
    }

    /// Writes what node `peer` sends as channel `channel` into `tx`. False if the agent
    /// has stopped.
    pub fn open_in(&self, peer: u64, addr: SocketAddr, channel: u64, tx: Producer) -> bool {
        self.open(peer, addr, channel, End::In(tx))
    }

    fn open(&self, peer: u64, addr: SocketAddr, channel: u64, end: End) -> bool {
        self.tx
            .send(Open {
                peer,
                addr,
                channel,
                end,
            })
            .is_ok()
    }

    /// This node's id.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The address the agent listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The transport asked for (connections fall back to epoll where io_uring is
    /// refused, and log it).
    pub fn transport(&self) -> TransportKind {
        self.transport
    }

    /// Counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }
}

enum ConnState {
    /// Dialed, not yet connected.
    Connecting(MioStream),
    /// Connected; handshake sent.
    Open(Box<Mux<NetStream>>),
}

struct Conn {
    state: ConnState,
    /// Whom it was dialed to reach (accepted connections learn it from the handshake).
    expect: Option<u64>,
    remote: SocketAddr,
    /// Joined to its peer (the handshake has arrived and was accepted).
    named: bool,
    /// When it was dialed or accepted.
    since: u64,
}

struct Peer {
    addr: SocketAddr,
    conn: Option<usize>,
    waiting: Vec<(u64, End)>,
    /// Since when channels wait for a connection.
    waiting_since: u64,
    next_dial: u64,
}

/// A node's network agent (see the module documentation).
pub struct NetAgent {
    cfg: AgentConfig,
    poll: Poll,
    events: Events,
    listener: TcpListener,
    rx: Receiver<Open>,
    handle: NetHandle,
    peers: FxHashMap<u64, Peer>,
    conns: FxHashMap<usize, Conn>,
    next_token: usize,
    next_mio: u64,
    next_housekeeping: u64,
    /// Counters of connections already dropped.
    closed: MuxStats,
    failed: Vec<(usize, MuxError)>,
    named: Vec<usize>,
    /// Connections on epoll (asked about every poll, even with the io_uring transport,
    /// where they are fallbacks).
    epoll_conns: usize,
    /// An accept failed (say, out of file descriptors): try again at the next poll of
    /// epoll, since the edge-triggered listener will not report the waiting ones again.
    accept_again: bool,
}

impl std::fmt::Debug for NetAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetAgent")
            .field("node", &self.cfg.node)
            .field("listen", &self.handle.addr)
            .finish_non_exhaustive()
    }
}

impl NetAgent {
    /// Binds the data port. Channels can be opened through [`NetAgent::handle`] at once;
    /// nothing moves until the agent is polled.
    pub fn bind(cfg: AgentConfig) -> Result<Self, AgentError> {
        if cfg.node == 0 {
            return Err(AgentError::ZeroNode);
        }
        let bind = |source| AgentError::Bind {
            addr: cfg.listen,
            source,
        };
        let std_listener = std::net::TcpListener::bind(cfg.listen).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let addr = std_listener.local_addr().map_err(bind)?;
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new().map_err(AgentError::Poll)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(AgentError::Poll)?;
        let (tx, rx) = channel();
        let handle = NetHandle {
            tx,
            node: cfg.node,
            addr,
            transport: cfg.transport,
            stats: Arc::default(),
        };
        tracing::info!(node = cfg.node, %addr, transport = %cfg.transport, "network agent listening");
        Ok(Self {
            cfg,
            poll,
            events: Events::with_capacity(256),
            listener,
            rx,
            handle,
            peers: FxHashMap::default(),
            conns: FxHashMap::default(),
            next_token: 1,
            next_mio: 0,
            next_housekeeping: 0,
            closed: MuxStats::default(),
            failed: Vec::new(),
            named: Vec::new(),
            epoll_conns: 0,
            accept_again: false,
        })
    }

    /// A handle to open channels with.
    pub fn handle(&self) -> NetHandle {
        self.handle.clone()
    }

    /// Runs the agent on a thread of its own, pinned to `core` if given, idling with
    /// `idle` when a poll found nothing to do.
    pub fn spawn(
        mut self,
        core: Option<usize>,
        idle: IdleStrategyKind,
    ) -> Result<AgentThread, AgentError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("spate-net".into())
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        tracing::warn!(core, "could not pin the network agent; it runs unpinned");
                    }
                }
                // Parking sleeps about as long as asked, not the default 50 µs slack more.
                if let Err(e) = crate::sys::set_timer_slack_ns(crate::sys::PARKING_TIMER_SLACK_NS) {
                    tracing::debug!(%e, "could not lower the network agent's timer slack");
                }
                let mut idle = idle.build();
                // Relaxed: the flag carries no data; the join after setting it orders the rest.
                while !flag.load(Ordering::Relaxed) {
                    let work = self.poll_once();
                    idle.idle(work);
                }
            })
            .map_err(AgentError::Spawn)?;
        Ok(AgentThread {
            stop,
            thread: Some(thread),
        })
    }

    fn token(&mut self) -> usize {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    /// One duty cycle: new channels, readiness, every connection, dials, counters.
    /// Returns units of work done (0: idle).
    pub fn poll_once(&mut self) -> usize {
        let mut work = 0;
        while let Ok(open) = self.rx.try_recv() {
            self.open(open);
            work += 1;
        }
        let now = clock::now_ns();
        if self.cfg.transport == TransportKind::Epoll
            || self.epoll_conns > 0
            || now >= self.next_mio
        {
            self.next_mio = now + MIO_EVERY_NS;
            work += self.poll_mio();
        }
        for (&tok, conn) in self.conns.iter_mut() {
            if let ConnState::Open(mux) = &mut conn.state {
                match mux.poll() {
                    Ok(n) => work += n,
                    Err(e) => self.failed.push((tok, e)),
                }
                if !conn.named && mux.handshaken() {
                    self.named.push(tok);
                }
            }
        }
        while let Some((tok, e)) = self.failed.pop() {
            self.drop_conn(tok, &e.to_string());
        }
        while let Some(tok) = self.named.pop() {
            self.name_conn(tok);
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + MIO_EVERY_NS;
            self.dial_and_expire(now);
            self.publish_stats();
        }
        work
    }

    fn open(&mut self, o: Open) {
        let now = clock::now_ns();
        let peer = self.peers.entry(o.peer).or_insert_with(|| Peer {
            addr: o.addr,
            conn: None,
            waiting: Vec::new(),
            waiting_since: now,
            next_dial: now,
        });
        peer.addr = o.addr;
        if let Some(tok) = peer.conn {
            if let Some(Conn {
                state: ConnState::Open(mux),
                named: true,
                ..
            }) = self.conns.get_mut(&tok)
            {
                let r = match o.end {
                    End::Out(rx) => mux.add_out(o.channel, rx),
                    End::In(tx) => mux.add_in(o.channel, tx),
                };
                if let Err(e) = r {
                    tracing::error!(peer = o.peer, error = %e, "channel not opened");
                }
                return;
            }
        }
        if peer.waiting.is_empty() {
            peer.waiting_since = now;
        }
        peer.waiting.push((o.channel, o.end));
    }

    fn poll_mio(&mut self) -> usize {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!(error = %e, "epoll failed");
            }
            return 0;
        }
        let mut work = 0;
        if self.accept_again {
            self.accept_again = false;
            self.accept();
        }
        let events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        for ev in events.iter() {
            work += 1;
            if ev.token() == LISTENER {
                self.accept();
                continue;
            }
            let tok = ev.token().0;
            let Some(conn) = self.conns.get_mut(&tok) else {
                continue;
            };
            match &mut conn.state {
                ConnState::Open(mux) => {
                    if let NetStream::Epoll(s) = mux.stream_mut() {
                        s.ready(ev);
                    }
                }
                ConnState::Connecting(_) => self.connected(tok),
            }
        }
        self.events = events;
        work
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((sock, remote)) => {
                    let unnamed = self.conns.values().filter(|c| !c.named).count();
                    if unnamed >= MAX_UNNAMED {
                        tracing::warn!(%remote, "too many unnamed data connections; refused");
                        continue;
                    }
                    self.start_conn(std::net::TcpStream::from(sock), remote, None);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a data connection failed");
                    self.accept_again = true;
                    return;
                }
            }
        }
    }

    /// A connected socket becomes a multiplexed connection (handshake queued). Called
    /// for accepted sockets and for dials whose peer's `conn` the caller has cleared.
    fn start_conn(&mut self, sock: std::net::TcpStream, remote: SocketAddr, expect: Option<u64>) {
        let stream = match NetStream::with_options(sock, self.cfg.transport, self.cfg.uring) {
            Ok(s) => s,
            Err(e) => {
                // A dialed peer is dialed again: the caller cleared its `conn`.
                tracing::warn!(%remote, error = %e, "data connection not set up");
                return;
            }
        };
        if self.cfg.transport == TransportKind::IoUring && stream.kind() == TransportKind::Epoll {
            self.handle.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        let tok = self.token();
        let mut mux = Mux::empty(stream, self.cfg.node);
        mux.set_liveness(self.cfg.keepalive, self.cfg.timeout);
        mux.set_mac(self.cfg.mac.clone(), expect.is_some());
        if let NetStream::Epoll(s) = mux.stream_mut() {
            if let Err(e) = s.register(self.poll.registry(), Token(tok)) {
                tracing::warn!(%remote, error = %e, "data connection not registered with epoll");
                return;
            }
            self.epoll_conns += 1;
        }
        tracing::debug!(%remote, token = tok, "data connection open; handshaking");
        self.conns.insert(
            tok,
            Conn {
                state: ConnState::Open(Box::new(mux)),
                expect,
                remote,
                named: false,
                since: clock::now_ns(),
            },
        );
        if let Some(peer) = expect.and_then(|p| self.peers.get_mut(&p)) {
            peer.conn = Some(tok);
        }
    }

    /// A dial's socket reported readiness: connected, failed, or not yet.
    fn connected(&mut self, tok: usize) {
        let Some(conn) = self.conns.get_mut(&tok) else {
            return;
        };
        let ConnState::Connecting(sock) = &mut conn.state else {
            return;
        };
        let outcome = match sock.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match sock.peer_addr() {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(false) => {}
            Ok(true) => {
                let Some(conn) = self.conns.remove(&tok) else {
                    return;
                };
                if let ConnState::Connecting(mut sock) = conn.state {
                    let _ = self.poll.registry().deregister(&mut sock);
                    self.unlink_dial(tok, conn.expect);
                    self.start_conn(std::net::TcpStream::from(sock), conn.remote, conn.expect);
                }
            }
            Err(e) => {
                tracing::debug!(remote = %conn.remote, error = %e, "dial failed; trying again");
                self.drop_conn(tok, "dial failed");
            }
        }
    }

    /// The handshake arrived: join the connection to its peer and open what waits.
    fn name_conn(&mut self, tok: usize) {
        let Some(conn) = self.conns.get_mut(&tok) else {
            return;
        };
        let ConnState::Open(mux) = &conn.state else {
            return;
        };
        let peer_id = mux.peer();
        let remote = conn.remote;
        let why = if peer_id == 0 || peer_id == self.cfg.node {
            Some(format!("it names itself node {peer_id}"))
        } else if conn.expect.is_some_and(|e| e != peer_id) {
            Some(format!(
                "dialed node {} but node {peer_id} answered",
                conn.expect.unwrap_or(0)
            ))
        } else if conn.expect.is_none() && peer_id > self.cfg.node {
            Some(format!(
                "node {peer_id} dialed, but the smaller id ({}) dials",
                self.cfg.node
            ))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(%remote, "data connection dropped: {why}");
            self.drop_conn(tok, &why);
            return;
        }
        conn.named = true;
        let peer = self.peers.entry(peer_id).or_insert_with(|| Peer {
            addr: remote,
            conn: None,
            waiting: Vec::new(),
            waiting_since: 0,
            next_dial: 0,
        });
        if let Some(old) = peer.conn.filter(|&o| o != tok) {
            // The peer dialed again: the old connection is dead to it.
            peer.conn = Some(tok);
            self.drop_conn(old, "replaced by a new connection from the same node");
        }
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        peer.conn = Some(tok);
        let waiting = std::mem::take(&mut peer.waiting);
        let Some(Conn {
            state: ConnState::Open(mux),
            ..
        }) = self.conns.get_mut(&tok)
        else {
            return;
        };
        tracing::info!(peer = peer_id, %remote, transport = %mux.stream_mut().kind(), channels = waiting.len(), "data connection up");
        for (ch, end) in waiting {
            let r = match end {
                End::Out(rx) => mux.add_out(ch, rx),
                End::In(tx) => mux.add_in(ch, tx),
            };
            if let Err(e) = r {
                tracing::error!(peer = peer_id, error = %e, "channel not opened");
            }
        }
    }

    /// Ends a connection and every channel on it.
    fn drop_conn(&mut self, tok: usize, why: &str) {
        let Some(conn) = self.conns.remove(&tok) else {
            return;
        };
        match conn.state {
            ConnState::Open(mut mux) => {
                let s = mux.stats();
                self.closed.bytes_in += s.bytes_in;
                self.closed.bytes_out += s.bytes_out;
                self.closed.frames_in += s.frames_in;
                self.closed.frames_out += s.frames_out;
                let (outs, ins) = mux.channels();
                if let NetStream::Epoll(st) = mux.stream_mut() {
                    let _ = st.deregister(self.poll.registry());
                    self.epoll_conns = self.epoll_conns.saturating_sub(1);
                }
                // Its channels' tasks learn that the network failed them.
                mux.break_all();
                if conn.named {
                    self.handle.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = mux.peer(), remote = %conn.remote, outs, ins, "data connection lost: {why}");
                } else {
                    tracing::warn!(remote = %conn.remote, "data connection dropped: {why}");
                }
                if conn.named {
                    if self
                        .peers
                        .get(&mux.peer())
                        .is_some_and(|p| p.conn == Some(tok))
                    {
                        // Its channels end with it (dropping the multiplexer closes their
                        // rings); channels opened later get a new connection.
                        self.peers.remove(&mux.peer());
                    }
                } else {
                    self.unlink_dial(tok, conn.expect);
                }
            }
            ConnState::Connecting(mut sock) => {
                let _ = self.poll.registry().deregister(&mut sock);
                self.unlink_dial(tok, conn.expect);
            }
        }
    }

    /// A connection that never said who it is ended: its peer's channels still wait,
    /// and are dialed again.
    fn unlink_dial(&mut self, tok: usize, expect: Option<u64>) {
        if let Some(p) = expect.and_then(|p| self.peers.get_mut(&p)) {
            if p.conn == Some(tok) {
                p.conn = None;
            }
        }
    }

    /// Dials peers whose channels wait (when this node dials) and gives up on peers
    /// that have not connected within the timeout.
    fn dial_and_expire(&mut self, now: u64) {
        let timeout = self.cfg.timeout.as_nanos() as u64;
        let mut expired = Vec::new();
        let mut dial = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if p.waiting.is_empty() {
                continue;
            }
            if timeout > 0 && now.saturating_sub(p.waiting_since) > timeout {
                expired.push(id);
            } else if p.conn.is_none() && self.cfg.node < id && now >= p.next_dial {
                p.next_dial = now + REDIAL_NS;
                dial.push((id, p.addr));
            }
        }
        for id in expired {
            if let Some(p) = self.peers.remove(&id) {
                self.handle.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    peer = id,
                    addr = %p.addr,
                    channels = p.waiting.len(),
                    timeout = ?self.cfg.timeout,
                    "no data connection to the peer in time; its channels fail"
                );
                if let Some(tok) = p.conn {
                    self.drop_conn(tok, "peer given up");
                }
                for (_, end) in p.waiting {
                    match end {
                        End::Out(rx) => rx.break_off(),
                        End::In(tx) => tx.break_off(),
                    }
                }
            }
        }
        for (id, addr) in dial {
            match MioStream::connect(addr) {
                Ok(mut sock) => {
                    let tok = self.token();
                    if let Err(e) = self.poll.registry().register(
                        &mut sock,
                        Token(tok),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        tracing::warn!(%addr, error = %e, "dial not registered with epoll");
                        continue;
                    }
                    tracing::debug!(peer = id, %addr, "dialing");
                    self.conns.insert(
                        tok,
                        Conn {
                            state: ConnState::Connecting(sock),
                            expect: Some(id),
                            remote: addr,
                            named: false,
                            since: now,
                        },
                    );
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.conn = Some(tok);
                    }
                }
                Err(e) => tracing::debug!(peer = id, %addr, error = %e, "dial failed"),
            }
        }
        // Dials no longer needed, and connections that never said who they are.
        let handshake_timeout = match timeout {
            0 => HANDSHAKE_TIMEOUT_NS,
            t => t.min(HANDSHAKE_TIMEOUT_NS),
        };
        let stale: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.named)
            .filter(|(_, c)| {
                let unneeded = matches!(c.state, ConnState::Connecting(_))
                    && c.expect
                        .and_then(|p| self.peers.get(&p))
                        .is_none_or(|p| p.waiting.is_empty());
                unneeded || now.saturating_sub(c.since) > handshake_timeout
            })
            .map(|(&t, _)| t)
            .collect();
        for tok in stale {
            self.drop_conn(tok, "no handshake in time, or no longer needed");
        }
    }

    fn publish_stats(&self) {
        let mut t = self.closed;
        let mut open = 0;
        for c in self.conns.values() {
            if let ConnState::Open(mux) = &c.state {
                let s = mux.stats();
                t.bytes_in += s.bytes_in;
                t.bytes_out += s.bytes_out;
                t.frames_in += s.frames_in;
                t.frames_out += s.frames_out;
                open += u64::from(c.named);
            }
        }
        let st = &self.handle.stats;
        // Relaxed: counters for reports; nothing is ordered by them.
        st.connections.store(open, Ordering::Relaxed);
        st.bytes_in.store(t.bytes_in, Ordering::Relaxed);
        st.bytes_out.store(t.bytes_out, Ordering::Relaxed);
        st.frames_in.store(t.frames_in, Ordering::Relaxed);
        st.frames_out.store(t.frames_out, Ordering::Relaxed);
    }
}

/// The agent polled as a task of a slot (`taskmanager.network.agent: shared`): it
/// shares that slot's core and never finishes.
impl Task for NetAgent {
    fn name(&self) -> &str {
        "network agent"
    }

    fn poll(&mut self) -> Result<TaskPoll, TaskError> {
        Ok(TaskPoll::Worked(self.poll_once()))
    }
}

/// The agent's own thread; dropping it stops the agent (closing its connections).
#[derive(Debug)]
pub struct AgentThread {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentThread {
    /// Stops the agent and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AgentThread {
    fn drop(&mut self) {
        self.halt();
    }
}
