//! Zero heap allocations per frame on both sides of a ring in steady state, proved with a
//! counting global allocator (only the threads under test count).
#![allow(clippy::unwrap_used, clippy::panic)]

mod counting;

use counting::{counting, ALLOCS};

use spate_dataplane::ring::{FrameType, Ring};
use std::sync::atomic::Ordering::Relaxed;

#[test]
fn no_allocation_per_frame_in_steady_state() {
    const FRAMES: u64 = 200_000;
    let (mut p, mut c) = Ring::anonymous(1 << 12).unwrap();
    // Warm up outside the counted section (thread spawn, first touches).
    p.try_send(FrameType::Data, &[0; 64]).unwrap();
    c.poll(1, |_| ()).unwrap();

    let producer = std::thread::spawn(move || {
        counting(|| {
            let payload = [7u8; 64];
            let mut sent = 0u64;
            while sent < FRAMES {
                // Batched: claim in place, commit, publish every 8 frames or when full.
                match p.try_claim(64, FrameType::Data) {
                    Ok(mut claim) => {
                        claim.payload_mut().copy_from_slice(&payload);
                        claim.payload_mut()[..8].copy_from_slice(&sent.to_le_bytes());
                        claim.commit();
                        sent += 1;
                        if sent.is_multiple_of(8) {
                            p.publish();
                        }
                    }
                    Err(_) => {
                        p.publish();
                        std::thread::yield_now();
                    }
                }
            }
            p.publish();
        });
        p
    });
    let received = counting(|| {
        let mut n = 0u64;
        let mut sum = 0u64;
        while n < FRAMES {
            let got = c
                .poll(32, |f| {
                    let mut seq = [0u8; 8];
                    seq.copy_from_slice(&f.payload()[..8]);
                    sum = sum.wrapping_add(u64::from_le_bytes(seq));
                })
                .unwrap();
            n += got as u64;
            if got == 0 {
                std::thread::yield_now();
            }
        }
        (n, sum)
    });
    let p = producer.join().unwrap();
    assert_eq!(received, (FRAMES, FRAMES * (FRAMES - 1) / 2));
    assert_eq!(
        ALLOCS.load(Relaxed),
        0,
        "allocations on the ring's hot path"
    );
    drop(p);
}
