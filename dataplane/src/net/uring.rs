//! A TCP stream driven by io_uring: receives and sends are submitted to the kernel's
//! queues and their completions reaped by polling, never by blocking; the [`Mux`]
//! drives it through `Read`/`Write` like a non-blocking socket.
//!
//! Receiving uses one multishot receive over a ring of provided buffers (kernel 6.0
//! and later): the kernel picks a free buffer for each arrival and posts a completion
//! naming it, with no new submission per receive; a buffer goes back to the kernel
//! when its bytes have been read. Where the kernel refuses provided-buffer rings, a
//! single receive into one owned buffer is submitted again after each completion.
//!
//! The buffers the kernel reads into and writes from are owned by the stream, never
//! moved while registered or in flight, and kept until their operations' completions
//! have been reaped: `Drop` shuts the socket down and waits for every operation in
//! flight before anything is freed.
//!
//! [`Mux`]: super::Mux
#![allow(unsafe_code)]

use io_uring::{cqueue, opcode, types, IoUring};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

const RECV: u64 = 1;
const SEND: u64 = 2;
const BUF: usize = 256 * 1024;
/// Provided buffers: this many of this size.
const PBUF_COUNT: u16 = 32;
const PBUF_SIZE: usize = 16 * 1024;
const PBUF_GROUP: u16 = 0;
/// Bytes of one provided-buffer ring entry (`struct io_uring_buf`).
const ENTRY: usize = 16;
const _: () = assert!(std::mem::size_of::<types::BufRingEntry>() == ENTRY);
/// Completion queue entries: room for a completion per provided buffer, and sends.
const CQ_ENTRIES: u32 = 2 * PBUF_COUNT as u32 + 8;

/// How a connection's io_uring is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringOptions {
    /// A kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`), idling after
    /// this many milliseconds without work. Off by default: beside busy-polling threads
    /// on few cores it makes round trips take milliseconds.
    pub sqpoll_idle_ms: Option<u32>,
    /// Multishot receive into provided buffers (falls back to single receives where
    /// the kernel lacks them).
    pub multishot: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            sqpoll_idle_ms: None,
            multishot: true,
        }
    }
}

/// A ring of provided buffers registered with one io_uring: `PBUF_COUNT` entries
/// (page-aligned, as the kernel requires) pointing into one allocation of buffers.
/// Both are reached through raw pointers only: the kernel reads the entries and writes
/// the buffers while we hold them, so no Rust reference may cover them.
struct BufRing {
    /// Keeps the entries' mapping alive.
    _map: memmap2::MmapMut,
    entries: *mut u8,
    /// `PBUF_COUNT * PBUF_SIZE` bytes from `Box::into_raw`, freed on drop.
    bufs: *mut u8,
    /// Our copy of the tail: entries before it belong to the kernel.
    tail: u16,
}

// SAFETY: the pointers refer to allocations this value owns (the mapping and the buffer
// block) and move with it; nothing else in this process refers to them.
unsafe impl Send for BufRing {}

const PBUF_BYTES: usize = PBUF_COUNT as usize * PBUF_SIZE;

impl BufRing {
    fn new() -> io::Result<Self> {
        let mut map = memmap2::MmapMut::map_anon(PBUF_COUNT as usize * ENTRY)?;
        let entries = map.as_mut_ptr();
        let bufs = Box::into_raw(vec![0u8; PBUF_BYTES].into_boxed_slice()).cast::<u8>();
        Ok(Self {
            _map: map,
            entries,
            bufs,
            tail: 0,
        })
    }

    /// Hands buffer `bid` to the kernel (visible at the next [`BufRing::publish`]).
    fn give(&mut self, bid: u16) {
        let idx = (self.tail & (PBUF_COUNT - 1)) as usize;
        let addr = self.bufs.wrapping_add(bid as usize * PBUF_SIZE) as u64;
        // An entry is `struct io_uring_buf { u64 addr; u32 len; u16 bid; u16 resv; }`; the
        // ring's tail is entry 0's `resv`, which the kernel reads at any time, so the
        // fields are written through raw pointers, never through a reference to the
        // whole entry.
        let entry = self.entries.wrapping_add(idx * ENTRY);
        // `idx < PBUF_COUNT`, so `entry..entry + 12` lies inside the mapping of
        // PBUF_COUNT entries (page-aligned, so each field is aligned); the entry at the
        // tail is ours until the tail moves past it (the kernel reads only entries
        // before the published tail). The tail word is not written here.
        // SAFETY: in bounds, aligned, and not read by the kernel yet, as argued above.
        unsafe {
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(PBUF_SIZE as u32);
            entry.add(12).cast::<u16>().write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Publishes the entries given so far.
    fn publish(&mut self) {
        let tail = self.entries.wrapping_add(14).cast::<u16>();
        // The tail (entry 0's `resv`, offset 14) is a naturally aligned u16 inside our
        // mapping, which outlives this call; only the kernel reads it besides us.
        // SAFETY: a valid, aligned, live u16 accessed only atomically, as argued above.
        let tail = unsafe { AtomicU16::from_ptr(tail) };
        // Release: the entries written by `give` are visible before the new tail.
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`, which the kernel has filled and handed
    /// back (its completion was reaped; it is not given again while this is borrowed).
    fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(PBUF_SIZE);
        let start = (bid % PBUF_COUNT) as usize * PBUF_SIZE;
        // `start + len <= PBUF_BYTES`; the kernel no longer writes this buffer (argued
        // above), so a shared view of it is sound for the borrow.
        // SAFETY: in bounds of the live buffer block and not written while borrowed.
        unsafe { std::slice::from_raw_parts(self.bufs.add(start), len) }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        let block = std::ptr::slice_from_raw_parts_mut(self.bufs, PBUF_BYTES);
        // `bufs` came from `Box::into_raw` of a boxed slice of PBUF_BYTES bytes and is
        // freed only here; the stream waited for the kernel to be done with it.
        // SAFETY: the allocation and its length are the boxed slice's, freed once.
        drop(unsafe { Box::from_raw(block) });
    }
}

enum Recv {
    /// One receive at a time into `rbuf`; the kernel writes it while in flight.
    Single {
        rbuf: Box<[u8]>,
        start: usize,
        end: usize,
    },
    /// One multishot receive into provided buffers; `ready` holds the filled ones
    /// (buffer id, length) in arrival order, `off` the bytes of the first already read.
    Multi {
        ring: BufRing,
        ready: VecDeque<(u16, usize)>,
        off: usize,
    },
}

/// A connected TCP stream whose I/O goes through an io_uring.
pub struct UringStream {
    // Declared first: dropped (closing the io_uring) before the buffers below.
    ring: IoUring,
    stream: TcpStream,
    recv: Recv,
    recv_inflight: bool,
    eof: bool,
    error: Option<io::Error>,
    /// Send buffer; the kernel reads `wbuf[w_start..w_end]` while `send_inflight`.
    wbuf: Box<[u8]>,
    w_start: usize,
    w_end: usize,
    send_inflight: bool,
    /// Whether any bytes have arrived.
    received_any: bool,
    /// The kernel refused the multishot receive: switch to single receives.
    downgrade: bool,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream")
            .field("multishot", &self.multishot())
            .finish_non_exhaustive()
    }
}

impl UringStream {
    /// Drives `stream` through a new io_uring with the default options. Fails where
    /// io_uring cannot be set up (an old kernel, seccomp): the caller then uses epoll.
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        Self::with_options(stream, UringOptions::default())
    }

    /// Drives `stream` through a new io_uring set up as `opts` asks.
    pub fn with_options(stream: TcpStream, opts: UringOptions) -> io::Result<Self> {
        let ring = match opts.sqpoll_idle_ms {
            Some(idle) => IoUring::builder()
                .setup_sqpoll(idle)
                .setup_cqsize(CQ_ENTRIES)
                .build(8)?,
            // Cooperative task running with the TASKRUN flag: the kernel does not
            // interrupt us to post completions, and says in the SQ ring when an enter
            // would post some, so a busy-polling reader enters only then (see `reap`).
            // Kernels before 5.19 lack these flags: plain setup there.
            None => IoUring::builder()
                .setup_coop_taskrun()
                .setup_taskrun_flag()
                .setup_cqsize(CQ_ENTRIES)
                .build(8)
                .or_else(|_| IoUring::builder().setup_cqsize(CQ_ENTRIES).build(8))?,
        };
        let no_multishot = std::env::var_os("SPATE_IO_URING_NO_MULTISHOT").is_some();
        let recv = if opts.multishot && !no_multishot {
            Self::provided_buffers(&ring).unwrap_or_else(|e| {
                tracing::info!(error = %e, "no provided-buffer rings; single receives");
                Self::single()
            })
        } else {
            Self::single()
        };
        Ok(Self {
            ring,
            stream,
            recv,
            recv_inflight: false,
            eof: false,
            error: None,
            wbuf: vec![0u8; BUF].into_boxed_slice(),
            w_start: 0,
            w_end: 0,
            send_inflight: false,
            received_any: false,
            downgrade: false,
        })
    }

    fn single() -> Recv {
        Recv::Single {
            rbuf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    fn provided_buffers(ring: &IoUring) -> io::Result<Recv> {
        let mut br = BufRing::new()?;
        let addr = br.entries as u64;
        // `addr` is a page-aligned mapping of PBUF_COUNT entries owned by the stream this
        // ring belongs to; the stream keeps it (and the buffers the entries point to)
        // until the ring is closed, and waits in `Drop` for the receive using them to end.
        // SAFETY: the ring memory outlives its registration, as argued above.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(addr, PBUF_COUNT, PBUF_GROUP, 0)?
        };
        for bid in 0..PBUF_COUNT {
            br.give(bid);
        }
        br.publish();
        Ok(Recv::Multi {
            ring: br,
            ready: VecDeque::with_capacity(PBUF_COUNT as usize),
            off: 0,
        })
    }

    /// Whether receives are multishot into provided buffers.
    pub fn multishot(&self) -> bool {
        matches!(self.recv, Recv::Multi { .. })
    }

    /// Queues `e`. Once this returns Ok the operation is the kernel's (the caller marks
    /// it in flight), even if submitting it fails now: it stays queued and goes with
    /// the next submission (`reap` submits whatever waits).
    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        // Every entry pushed points into the receive buffers or `wbuf`: owned by `self`,
        // never moved, untouched by us while the operation is in flight
        // (`recv_inflight` / `send_inflight`; provided buffers only once the kernel has
        // handed them back), and freed only after its completion is reaped (`Drop` waits).
        // SAFETY: the buffers outlive the operation, as argued above.
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::new(ErrorKind::WouldBlock, "submission queue full"))
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            // Transient: the entries stay queued for the next submission.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn submit_recv(&mut self) -> io::Result<()> {
        if self.recv_inflight || self.eof || self.error.is_some() {
            return Ok(());
        }
        if self.downgrade {
            self.downgrade = false;
            let _ = self.ring.submitter().unregister_buf_ring(PBUF_GROUP);
            self.recv = Self::single();
            tracing::info!("multishot receive refused by the kernel; single receives");
        }
        let fd = types::Fd(self.stream.as_raw_fd());
        let e = match &mut self.recv {
            Recv::Single { rbuf, .. } => {
                opcode::Recv::new(fd, rbuf.as_mut_ptr(), rbuf.len() as u32).build()
            }
            Recv::Multi { ready, .. } => {
                if ready.len() == PBUF_COUNT as usize {
                    return Ok(()); // every buffer is full: re-armed once one is read
                }
                opcode::RecvMulti::new(fd, PBUF_GROUP).build()
            }
        };
        self.push(&e.user_data(RECV))?;
        self.recv_inflight = true;
        self.submit()
    }

    fn submit_send(&mut self) -> io::Result<()> {
        if self.send_inflight || self.w_start == self.w_end {
            return Ok(());
        }
        let e = opcode::Send::new(
            types::Fd(self.stream.as_raw_fd()),
            self.wbuf[self.w_start..].as_ptr(),
            (self.w_end - self.w_start) as u32,
        )
        .build()
        .user_data(SEND);
        self.push(&e)?;
        self.send_inflight = true;
        self.submit()
    }

    /// Takes the completions that have arrived (entering the kernel only when it says
    /// completions wait to be posted).
    fn reap(&mut self) {
        // Enter when completions wait to be posted (TASKRUN), when some overflowed the
        // completion queue, or when queued entries were not submitted yet.
        let pending = {
            let sq = self.ring.submission();
            sq.taskrun() || sq.cq_overflow() || !sq.is_empty()
        };
        if pending {
            let _ = self.ring.submit();
        }
        // Completions are handled as they are popped (no collection: nothing allocates).
        for c in self.ring.completion() {
            let res = c.result();
            match c.user_data() {
                RECV => match &mut self.recv {
                    Recv::Single { rbuf, start, end } => {
                        self.recv_inflight = false;
                        if res > 0 && res as usize > rbuf.len() {
                            // Never from a sound kernel; refused rather than trusted as a
                            // length (as every length below).
                            self.error = Some(io::Error::other(
                                "a receive completed with more bytes than its buffer holds",
                            ));
                        } else if res > 0 {
                            *start = 0;
                            *end = res as usize;
                        } else if res == 0 {
                            self.eof = true;
                        } else {
                            self.error = Some(io::Error::from_raw_os_error(-res));
                        }
                    }
                    Recv::Multi { ready, .. } => {
                        if !cqueue::more(c.flags()) {
                            self.recv_inflight = false;
                        }
                        if res > 0 {
                            self.received_any = true;
                            match cqueue::buffer_select(c.flags()) {
                                Some(bid) if bid < PBUF_COUNT && res as usize <= PBUF_SIZE => {
                                    ready.push_back((bid, res as usize))
                                }
                                _ => {
                                    self.error = Some(io::Error::other(
                                        "a multishot receive completed without a valid buffer",
                                    ))
                                }
                            }
                        } else if res == 0 {
                            self.eof = true;
                        } else if -res == libc::EINVAL && !self.received_any {
                            // Provided-buffer rings without multishot receive (5.19).
                            self.downgrade = true;
                        } else if -res != libc::ENOBUFS {
                            // Out of buffers is not an error: re-armed when one is read.
                            self.error = Some(io::Error::from_raw_os_error(-res));
                        }
                    }
                },
                SEND => {
                    self.send_inflight = false;
                    if res > 0 && res as usize > self.w_end - self.w_start {
                        // More than was submitted: moving `w_start` past `w_end` would make
                        // the next send's length wrap and hand the kernel bytes past `wbuf`.
                        self.error = Some(io::Error::other(
                            "a send completed with more bytes than were submitted",
                        ));
                    } else if res >= 0 {
                        self.w_start += res as usize;
                        if self.w_start == self.w_end {
                            self.w_start = 0;
                            self.w_end = 0;
                        }
                    } else {
                        self.error = Some(io::Error::from_raw_os_error(-res));
                    }
                }
                _ => {}
            }
        }
    }

    fn take_error(&mut self) -> io::Result<()> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Copies received bytes into `out`; 0 when none are waiting.
    fn take_received(&mut self, out: &mut [u8]) -> usize {
        match &mut self.recv {
            Recv::Single { rbuf, start, end } => {
                let n = out.len().min(*end - *start);
                out[..n].copy_from_slice(&rbuf[*start..*start + n]);
                *start += n;
                n
            }
            Recv::Multi { ring, ready, off } => {
                let mut n = 0;
                while n < out.len() {
                    let Some(&(bid, len)) = ready.front() else {
                        break;
                    };
                    let k = (out.len() - n).min(len - *off);
                    out[n..n + k].copy_from_slice(&ring.buf(bid, len)[*off..*off + k]);
                    n += k;
                    *off += k;
                    if *off == len {
                        ready.pop_front();
                        *off = 0;
                        ring.give(bid);
                    }
                }
                if n > 0 {
                    ring.publish();
                }
                n
            }
        }
    }
}

impl Read for UringStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reap();
        // A send that completed short goes on from here even when nothing new is
        // written (the multiplexer reads on every poll).
        self.submit_send()?;
        let n = self.take_received(out);
        if n > 0 {
            // Single: the buffer is drained, so receive again; multishot: re-arm if it
            // ended for want of buffers.
            let drained = match &self.recv {
                Recv::Single { start, end, .. } => start == end,
                Recv::Multi { .. } => true,
            };
            if drained {
                self.submit_recv()?;
            }
            return Ok(n);
        }
        self.take_error()?;
        if self.eof {
            return Ok(0);
        }
        self.submit_recv()?;
        Err(ErrorKind::WouldBlock.into())
    }
}

impl Write for UringStream {
    fn write(&mut self, src: &[u8]) -> io::Result<usize> {
        self.reap();
        self.take_error()?;
        if self.send_inflight {
            self.submit_send()?;
            return Err(ErrorKind::WouldBlock.into());
        }
        // Nothing in flight: the whole buffer is ours to refill.
        if self.w_start > 0 {
            self.wbuf.copy_within(self.w_start..self.w_end, 0);
            self.w_end -= self.w_start;
            self.w_start = 0;
        }
        let n = src.len().min(self.wbuf.len() - self.w_end);
        if n == 0 {
            self.submit_send()?;
            return Err(ErrorKind::WouldBlock.into());
        }
        self.wbuf[self.w_end..self.w_end + n].copy_from_slice(&src[..n]);
        self.w_end += n;
        self.submit_send()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for UringStream {
    fn drop(&mut self) {
        // The buffers must outlive the operations that use them: end them, then wait.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        while self.recv_inflight || self.send_inflight {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    // Cannot wait for the kernel: leak the buffers rather than free
                    // memory it may still write.
                    tracing::error!(error = %e, "io_uring wait failed; leaking its buffers");
                    let recv = std::mem::replace(
                        &mut self.recv,
                        Recv::Single {
                            rbuf: Box::default(),
                            start: 0,
                            end: 0,
                        },
                    );
                    std::mem::forget(recv);
                    std::mem::forget(std::mem::take(&mut self.wbuf));
                    return;
                }
            }
            self.reap();
        }
        if matches!(self.recv, Recv::Multi { .. }) {
            let _ = self.ring.submitter().unregister_buf_ring(PBUF_GROUP);
        }
    }
}
