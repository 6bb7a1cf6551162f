//! `bench net`: channels between hosts over loopback — ping-pong latency of 64-byte
//! frames and one-way streaming rates (one channel, and 64 channels on one
//! connection) through the channel multiplexer over io_uring and over non-blocking
//! sockets, beside plain blocking sockets with TCP_NODELAY, in the same run.

use crate::clock::{ticks, Clock};
use crate::report::{histogram, Row};
use anyhow::Result;
use hdrhistogram::Histogram;
use spate_dataplane::net::{Mux, NetStream, TransportKind};
use spate_dataplane::ring::{Consumer, FrameType, Producer, Ring};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

/// Payload bytes per frame.
pub const FRAME: usize = 64;

fn pin(core: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

fn pair() -> Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let a = TcpStream::connect(l.local_addr()?)?;
    let (b, _) = l.accept()?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

fn muxes(kind: TransportKind, channels: usize) -> Result<(Side, Side)> {
    let (a, b) = pair()?;
    let (a, b) = (NetStream::new(a, kind)?, NetStream::new(b, kind)?);
    let mk = |s: NetStream, node| -> Result<Side> {
        let (out_p, out_c): (Vec<Producer>, Vec<Consumer>) = (0..channels)
            .map(|_| Ring::anonymous(1 << 16))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let (in_p, in_c): (Vec<Producer>, Vec<Consumer>) = (0..channels)
            .map(|_| Ring::anonymous(1 << 16))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        Ok(Side {
            mux: Mux::new(s, node, out_c, in_p),
            tx: out_p,
            rx: in_c,
        })
    };
    Ok((mk(a, 1)?, mk(b, 2)?))
}

struct Side {
    mux: Mux<NetStream>,
    tx: Vec<Producer>,
    rx: Vec<Consumer>,
}

impl Side {
    fn send(&mut self, ch: usize, msg: &[u8]) {
        while self.tx[ch].try_send(FrameType::Data, msg).is_err() {
            let _ = self.mux.poll();
        }
        let _ = self.mux.poll();
    }

    /// Polls until a frame arrives on any channel; returns how many arrived.
    fn recv_some(&mut self) -> usize {
        loop {
            let _ = self.mux.poll();
            let mut n = 0;
            for c in &mut self.rx {
                n += c.poll(256, |_| ()).unwrap_or(0);
            }
            if n > 0 {
                return n;
            }
        }
    }
}

fn pingpong_mux(
    kind: TransportKind,
    n: u64,
    cores: (usize, usize),
    clock: &Clock,
) -> Result<Histogram<u64>> {
    let (mut a, mut b) = muxes(kind, 1)?;
    let echo = std::thread::spawn(move || {
        pin(cores.1);
        let msg = [2u8; FRAME];
        for _ in 0..n {
            b.recv_some();
            b.send(0, &msg);
        }
        // Keep the connection up until the other side is done.
        for _ in 0..1000 {
            let _ = b.mux.poll();
        }
    });
    pin(cores.0);
    let msg = [1u8; FRAME];
    let mut h = histogram();
    for _ in 0..n {
        let t0 = ticks();
        a.send(0, &msg);
        a.recv_some();
        let _ = h.record(clock.ns(ticks() - t0) / 2);
    }
    let _ = echo.join();
    Ok(h)
}

fn pingpong_blocking(n: u64, cores: (usize, usize), clock: &Clock) -> Result<Histogram<u64>> {
    let (mut a, mut b) = pair()?;
    let echo = std::thread::spawn(move || {
        pin(cores.1);
        let mut buf = [0u8; FRAME];
        for _ in 0..n {
            if b.read_exact(&mut buf).is_err() || b.write_all(&buf).is_err() {
                return;
            }
        }
    });
    pin(cores.0);
    let mut buf = [1u8; FRAME];
    let mut h = histogram();
    for _ in 0..n {
        let t0 = ticks();
        a.write_all(&buf)?;
        a.read_exact(&mut buf)?;
        let _ = h.record(clock.ns(ticks() - t0) / 2);
    }
    let _ = echo.join();
    Ok(h)
}

fn stream_mux(kind: TransportKind, channels: usize, n: u64, cores: (usize, usize)) -> Result<f64> {
    let (mut a, mut b) = muxes(kind, channels)?;
    let sink = std::thread::spawn(move || {
        pin(cores.1);
        let mut got = 0u64;
        while got < n {
            got += b.recv_some() as u64;
        }
        for _ in 0..1000 {
            let _ = b.mux.poll();
        }
    });
    pin(cores.0);
    let msg = [3u8; FRAME];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < n {
        for ch in 0..channels {
            while sent < n && a.tx[ch].try_push(FrameType::Data, &msg).is_ok() {
                sent += 1;
            }
            a.tx[ch].publish();
        }
        let _ = a.mux.poll();
    }
    while !sink.is_finished() {
        let _ = a.mux.poll();
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = sink.join();
    Ok(n as f64 / secs)
}

fn stream_blocking(n: u64, cores: (usize, usize)) -> Result<f64> {
    let (mut a, mut b) = pair()?;
    let total = n as usize * FRAME;
    let sink = std::thread::spawn(move || {
        pin(cores.1);
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < total {
            match b.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(k) => got += k,
            }
        }
    });
    pin(cores.0);
    let msg = [3u8; FRAME];
    let start = Instant::now();
    for _ in 0..n {
        a.write_all(&msg)?;
    }
    let _ = sink.join();
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs every variant on loopback.
pub fn run(round_trips: u64, frames: u64, cores: (usize, usize)) -> Result<Vec<Row>> {
    let clock = Clock::calibrate();
    let mut rows = Vec::new();
    for (name, kind) in [
        ("io_uring", TransportKind::IoUring),
        ("epoll", TransportKind::Epoll),
    ] {
        let h = pingpong_mux(kind, round_trips, cores, &clock)?;
        rows.push(Row::latency("pingpong_loopback", name, &h));
    }
    let h = pingpong_blocking(round_trips, cores, &clock)?;
    rows.push(Row::latency("pingpong_loopback", "blocking", &h));
    for (name, kind) in [
        ("io_uring", TransportKind::IoUring),
        ("epoll", TransportKind::Epoll),
    ] {
        rows.push(Row::rate(
            "stream_loopback",
            name,
            stream_mux(kind, 1, frames, cores)?,
        ));
    }
    rows.push(Row::rate(
        "stream_loopback",
        "blocking",
        stream_blocking(frames, cores)?,
    ));
    for (name, kind) in [
        ("io_uring", TransportKind::IoUring),
        ("epoll", TransportKind::Epoll),
    ] {
        rows.push(Row::rate(
            "stream_64ch_loopback",
            name,
            stream_mux(kind, 64, frames, cores)?,
        ));
    }
    Ok(rows)
}
