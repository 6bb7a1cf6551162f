#![allow(clippy::unwrap_used, clippy::panic)]
//! Model check of the ring's position protocol under loom (`--cfg loom`):
//! `RUSTFLAGS="--cfg loom" cargo test -p spate-dataplane --release --lib ring::loom_tests`.
//!
//! Payload bytes live in loom atomics written and read relaxed, so if any release/acquire
//! edge of the protocol were missing (batch publish, zero-ahead, head release), loom
//! would find an execution in which the consumer reads a stale payload or header.
use super::*;
use loom::thread;

fn pattern(seq: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq * 16 + i + 1) as u8).collect()
}

fn run(lens: &'static [usize], batch: usize) {
    loom::model(move || {
        let (mut p, mut c) = Ring::model(64).unwrap();
        let producer = thread::spawn(move || {
            for (seq, &len) in lens.iter().enumerate() {
                loop {
                    match p.try_claim(len, FrameType::Data) {
                        Ok(mut claim) => {
                            claim.write(0, &pattern(seq, len));
                            claim.commit();
                            break;
                        }
                        Err(ClaimError::Full) => {
                            p.publish();
                            thread::yield_now();
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                if (seq + 1) % batch == 0 {
                    p.publish();
                }
            }
            p.publish();
        });
        let mut seq = 0;
        while seq < lens.len() {
            match c.try_read().unwrap() {
                Some(f) => {
                    let mut buf = vec![0u8; f.len()];
                    f.copy_to(&mut buf);
                    assert_eq!(buf, pattern(seq, lens[seq]), "frame {seq}");
                    seq += 1;
                }
                None => {
                    c.release();
                    thread::yield_now();
                }
            }
        }
        c.release();
        assert!(c.try_read().unwrap().is_none());
        producer.join().unwrap();
    });
}

/// Single-frame publishes that wrap the 64-byte ring (with a padding frame).
#[test]
fn single_frames_wrap_intact() {
    run(&[16, 8, 16, 8], 1);
}

/// Batches of two published with one release store, wrapping.
#[test]
fn batches_wrap_intact() {
    run(&[8, 16, 8, 16], 2);
}
