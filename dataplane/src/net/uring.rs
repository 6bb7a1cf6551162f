//! A TCP stream driven by io_uring: receives and sends are submitted to the kernel's
//! queues and their completions reaped by polling, never by blocking; the [`Mux`]
//! drives it through `Read`/`Write` like a non-blocking socket.
//!
//! The buffers the kernel reads into and writes from are owned by the stream, boxed
//! (never moved) and kept until their operation's completion has been reaped: `Drop`
//! shuts the socket down and waits for every operation in flight before freeing them.
//!
//! [`Mux`]: super::Mux
#![allow(unsafe_code)]

use io_uring::{opcode, types, IoUring};
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

const RECV: u64 = 1;
const SEND: u64 = 2;
const BUF: usize = 256 * 1024;

/// A connected TCP stream whose I/O goes through an io_uring.
pub struct UringStream {
    ring: IoUring,
    stream: TcpStream,
    /// Receive buffer; the kernel writes `rbuf[..]` while `recv_inflight`.
    rbuf: Box<[u8]>,
    r_start: usize,
    r_end: usize,
    recv_inflight: bool,
    eof: bool,
    error: Option<io::Error>,
    /// Send buffer; the kernel reads `wbuf[w_start..w_end]` while `send_inflight`.
    wbuf: Box<[u8]>,
    w_start: usize,
    w_end: usize,
    send_inflight: bool,
}

impl std::fmt::Debug for UringStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringStream").finish_non_exhaustive()
    }
}

impl UringStream {
    /// Drives `stream` through a new io_uring. Fails where io_uring cannot be set up
    /// (an old kernel, seccomp): the caller then uses the plain socket.
    pub fn new(stream: TcpStream) -> io::Result<Self> {
        // Cooperative task running with the TASKRUN flag: the kernel does not interrupt
        // us to post completions, and says in the SQ ring when an enter would post some,
        // so a busy-polling reader enters only then (see `reap`). Kernels before 5.19
        // lack these flags: plain setup there.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(8)
            .or_else(|_| IoUring::new(8))?;
        Ok(Self {
            ring,
            stream,
            rbuf: vec![0u8; BUF].into_boxed_slice(),
            r_start: 0,
            r_end: 0,
            recv_inflight: false,
            eof: false,
            error: None,
            wbuf: vec![0u8; BUF].into_boxed_slice(),
            w_start: 0,
            w_end: 0,
            send_inflight: false,
        })
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        // Every entry pushed points into `rbuf` or `wbuf`: boxed (stable addresses), owned
        // by `self`, untouched by us while the operation is in flight (`recv_inflight` /
        // `send_inflight`), and freed only after its completion is reaped (`Drop` waits).
        // SAFETY: the buffers outlive the operation, as argued above.
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::new(ErrorKind::WouldBlock, "submission queue full"))?;
        self.ring.submit()?;
        Ok(())
    }

    fn submit_recv(&mut self) -> io::Result<()> {
        if self.recv_inflight || self.eof || self.error.is_some() {
            return Ok(());
        }
        let e = opcode::Recv::new(
            types::Fd(self.stream.as_raw_fd()),
            self.rbuf.as_mut_ptr(),
            self.rbuf.len() as u32,
        )
        .build()
        .user_data(RECV);
        self.push(&e)?;
        self.recv_inflight = true;
        Ok(())
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
        Ok(())
    }

    /// Takes the completions that have arrived (entering the kernel only when it says
    /// completions wait to be posted).
    fn reap(&mut self) {
        if self.ring.submission().taskrun() {
            let _ = self.ring.submit();
        }
        // Completions are handled as they are popped (no collection: nothing allocates).
        for c in self.ring.completion() {
            let res = c.result();
            match c.user_data() {
                RECV => {
                    self.recv_inflight = false;
                    if res > 0 {
                        self.r_start = 0;
                        self.r_end = res as usize;
                    } else if res == 0 {
                        self.eof = true;
                    } else {
                        self.error = Some(io::Error::from_raw_os_error(-res));
                    }
                }
                SEND => {
                    self.send_inflight = false;
                    if res >= 0 {
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
}

impl Read for UringStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reap();
        // A send that completed short goes on from here even when nothing new is
        // written (the multiplexer reads on every poll).
        self.submit_send()?;
        if self.r_start < self.r_end {
            let n = out.len().min(self.r_end - self.r_start);
            out[..n].copy_from_slice(&self.rbuf[self.r_start..self.r_start + n]);
            self.r_start += n;
            if self.r_start == self.r_end {
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
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
    }
}
