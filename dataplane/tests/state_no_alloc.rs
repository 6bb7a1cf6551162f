//! Keyed state allocates nothing per record in steady state, with no checkpoint in
//! flight and after one: a frozen snapshot costs one copy per chunk it shares (on the
//! first write to the chunk after the freeze), never one per record. Proved with a
//! counting global allocator.
#![allow(clippy::unwrap_used, clippy::panic)]

mod counting;

use counting::{counting, ALLOCS};
use spate_dataplane::checkpoint::encode_state;
use spate_dataplane::operator::key_hash;
use spate_dataplane::operator::keyed::KeyedStates;
use std::sync::atomic::Ordering::Relaxed;

const KEYS: u64 = 5000;
/// Entries per copy-on-write chunk.
const CHUNK: u64 = 1024;

fn update_all(t: &mut KeyedStates<u64, (u64, i64)>, rounds: u64) {
    for r in 0..rounds {
        for k in 0..KEYS {
            let (_, s) = t.get_or_insert(key_hash(&k), k);
            s.0 += 1;
            s.1 -= r as i64;
        }
    }
}

fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.load(Relaxed);
    counting(f);
    ALLOCS.load(Relaxed) - before
}

#[test]
fn keyed_state_allocates_nothing_per_record_with_or_without_a_snapshot() {
    let mut t = KeyedStates::<u64, (u64, i64)>::default();
    update_all(&mut t, 1);

    // Steady state, no checkpoint: nothing.
    assert_eq!(allocations(|| update_all(&mut t, 20)), 0);

    // A snapshot holds every chunk: the first write to each copies it, once.
    let frozen = t.freeze();
    let chunks = KEYS.div_ceil(CHUNK);
    let first = allocations(|| update_all(&mut t, 1));
    assert!(
        first <= chunks,
        "{first} allocations for {chunks} chunks after a freeze"
    );
    assert!(
        first > 0,
        "a write after a freeze must copy the chunk it touches"
    );
    // Then nothing again, while the snapshot is still alive.
    assert_eq!(allocations(|| update_all(&mut t, 20)), 0);

    // The snapshot is still the state at the freeze.
    let bytes = encode_state(&frozen).unwrap();
    let entries: Vec<(u64, (u64, i64))> =
        spate_dataplane::checkpoint::decode_state(&bytes).unwrap();
    assert_eq!(entries.len() as u64, KEYS);
    assert!(
        entries.iter().all(|(_, s)| s.0 == 21),
        "the counts at the freeze"
    );
    drop(frozen);

    // A freeze whose snapshot was already dropped copies nothing.
    drop(t.freeze());
    assert_eq!(allocations(|| update_all(&mut t, 2)), 0);
}
