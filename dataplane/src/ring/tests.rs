#![allow(clippy::unwrap_used, clippy::panic)]
use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

fn pattern(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seq.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

fn read_one(c: &mut Consumer) -> Option<(FrameType, Vec<u8>)> {
    let f = c.try_read().unwrap()?;
    Some((f.frame_type(), f.payload().to_vec()))
}

fn unique(name: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "spate-test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Relaxed)
    )
}

/// Moves both positions forward by `bytes` (a multiple of 8) with filler frames.
fn advance(p: &mut Producer, c: &mut Consumer, mut bytes: usize) {
    while bytes > 0 {
        let size = bytes.min(p.capacity() / 2);
        p.try_send(FrameType::Data, &vec![9; size - 8]).unwrap();
        read_one(c).unwrap();
        c.release();
        bytes -= size;
    }
}

#[test]
fn a_frame_goes_through_in_place() {
    let (mut p, mut c) = Ring::anonymous(1024).unwrap();
    assert!(c.try_read().unwrap().is_none());
    let mut claim = p.try_claim(5, FrameType::Data).unwrap();
    claim.payload_mut().copy_from_slice(b"hello");
    claim.commit();
    assert!(c.try_read().unwrap().is_none(), "visible before publish");
    p.publish();
    assert_eq!(read_one(&mut c), Some((FrameType::Data, b"hello".to_vec())));
    assert!(c.try_read().unwrap().is_none());
    p.try_send(FrameType::Watermark, &42u64.to_le_bytes())
        .unwrap();
    p.try_send(FrameType::Barrier, &[]).unwrap();
    p.try_send(FrameType::EndOfStream, &[]).unwrap();
    let types: Vec<_> = std::iter::from_fn(|| read_one(&mut c).map(|f| f.0)).collect();
    assert_eq!(
        types,
        [
            FrameType::Watermark,
            FrameType::Barrier,
            FrameType::EndOfStream
        ]
    );
}

#[test]
fn a_batch_appears_at_once_on_publish() {
    let (mut p, mut c) = Ring::anonymous(1024).unwrap();
    for i in 0..10u8 {
        p.try_push(FrameType::Data, &[i; 3]).unwrap();
    }
    assert_eq!(p.unpublished_bytes(), 160);
    assert!(c.try_read().unwrap().is_none());
    p.publish();
    let mut got = Vec::new();
    assert_eq!(c.poll(100, |f| got.push(f.payload()[0])).unwrap(), 10);
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[test]
fn full_is_a_result_and_release_frees_space() {
    let (mut p, mut c) = Ring::anonymous(64).unwrap();
    // 64 bytes: frames of 16 bytes, one 8-byte word reserved for zero-ahead.
    for i in 0..3u8 {
        p.try_send(FrameType::Data, &[i; 8]).unwrap();
    }
    assert_eq!(
        p.try_claim(8, FrameType::Data).err(),
        Some(ClaimError::Full)
    );
    assert_eq!(read_one(&mut c).unwrap().1, [0; 8]);
    assert_eq!(
        p.try_claim(8, FrameType::Data).err(),
        Some(ClaimError::Full),
        "not released"
    );
    c.release();
    p.try_send(FrameType::Data, &[3; 8]).unwrap();
    let rest: Vec<u8> = std::iter::from_fn(|| read_one(&mut c).map(|f| f.1[0])).collect();
    assert_eq!(rest, [1, 2, 3]);
}

#[test]
fn oversize_frames_are_refused_and_the_largest_fits_at_every_offset() {
    for cap in [64usize, 256, 4096] {
        let (mut p, mut c) = Ring::anonymous(cap).unwrap();
        let max = p.max_payload();
        assert_eq!(max, cap / 2 - 8);
        assert_eq!(
            p.try_claim(max + 1, FrameType::Data).err(),
            Some(ClaimError::TooLarge { len: max + 1, max })
        );
        for step in 0..(cap / 8) {
            // From offset 0 (the big frame ends at cap/2, then wraps), move 8*step on.
            advance(&mut p, &mut c, step * 8);
            let big = pattern(step as u64, max);
            p.try_send(FrameType::Data, &big).unwrap();
            assert_eq!(read_one(&mut c).unwrap().1, big);
            c.release();
        }
    }
}

#[test]
fn wrap_at_every_offset_with_every_size() {
    let cap = 256;
    for start in (0..cap).step_by(8) {
        for len in 0..=max_payload(cap) {
            let (mut p, mut c) = Ring::anonymous(cap).unwrap();
            advance(&mut p, &mut c, start);
            for seq in 0..3 {
                let data = pattern(seq, len);
                p.try_send(FrameType::Data, &data).unwrap();
                let (ty, got) = read_one(&mut c).unwrap();
                assert_eq!(ty, FrameType::Data);
                assert_eq!(got, data, "start {start} len {len} seq {seq}");
                c.release();
            }
        }
    }
}

#[test]
fn capacity_must_be_a_power_of_two_in_range() {
    assert!(matches!(
        Ring::anonymous(1000),
        Err(RingError::CapacityNotPowerOfTwo(1000))
    ));
    assert!(matches!(
        Ring::anonymous(32),
        Err(RingError::CapacityOutOfRange(32))
    ));
    assert!(matches!(
        Ring::anonymous(0),
        Err(RingError::CapacityNotPowerOfTwo(0))
    ));
}

#[test]
fn each_half_is_taken_once() {
    let name = unique("halves");
    let ring = Ring::create_shm(&name, 4096).unwrap();
    let _p = ring.producer().unwrap();
    let other = Ring::attach_shm(&name).unwrap();
    assert!(matches!(
        other.producer(),
        Err(RingError::AlreadyAttached(Role::Producer))
    ));
    let c = other.consumer().unwrap();
    drop(c);
    assert!(matches!(
        ring.consumer(),
        Err(RingError::AlreadyAttached(Role::Consumer))
    ));
}

fn write_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = Ring::shm_path(name).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

struct Unlink(std::path::PathBuf);
impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn good_header(cap: u64) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN + cap as usize];
    h[0..8].copy_from_slice(&MAGIC.to_le_bytes());
    h[8..16].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&cap.to_le_bytes());
    h[24..32].copy_from_slice(&8u64.to_le_bytes());
    h[32..40].copy_from_slice(&(HEADER_LEN as u64).to_le_bytes());
    h
}

#[test]
fn foreign_truncated_and_other_version_files_are_refused() {
    let attach = |bytes: &[u8]| {
        let name = unique("bad");
        let _g = Unlink(write_file(&name, bytes));
        Ring::attach_shm(&name).map(|_| ())
    };
    // The good header attaches.
    attach(&good_header(1024)).unwrap();
    // Empty and truncated.
    assert!(matches!(attach(&[]), Err(RingError::Truncated { len: 0 })));
    assert!(matches!(
        attach(&[1; 100]),
        Err(RingError::Truncated { len: 100 })
    ));
    // Foreign content.
    let mut foreign = vec![0x7fu8; 4096];
    foreign[..4].copy_from_slice(b"\x7fELF");
    let e = attach(&foreign).unwrap_err();
    assert!(matches!(e, RingError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("not a ring"));
    // Another version.
    let mut v = good_header(1024);
    v[8..16].copy_from_slice(&2u64.to_le_bytes());
    assert!(matches!(attach(&v), Err(RingError::Version { found: 2 })));
    // Capacity not a power of two (and file sized to match it).
    let mut c = good_header(1024);
    c[16..24].copy_from_slice(&1000u64.to_le_bytes());
    c.truncate(HEADER_LEN + 1000);
    assert!(matches!(
        attach(&c),
        Err(RingError::CapacityNotPowerOfTwo(1000))
    ));
    // Size does not match the capacity.
    let mut s = good_header(1024);
    s.truncate(HEADER_LEN + 512);
    assert!(matches!(attach(&s), Err(RingError::SizeMismatch { .. })));
    // Bad alignment field.
    let mut a = good_header(1024);
    a[24..32].copy_from_slice(&16u64.to_le_bytes());
    assert!(matches!(
        attach(&a),
        Err(RingError::BadHeader {
            field: "frame alignment",
            ..
        })
    ));
    // Positions that break the invariant.
    let mut pos = good_header(1024);
    pos[256..264].copy_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(attach(&pos), Err(RingError::Corrupt { .. })));
    // Missing file.
    assert!(matches!(
        Ring::attach_shm(&unique("missing")),
        Err(RingError::Io { .. })
    ));
    assert!(matches!(
        Ring::attach_shm("a/b"),
        Err(RingError::InvalidName(_))
    ));
}

#[test]
fn a_corrupt_frame_header_is_reported_not_followed() {
    let name = unique("corrupt");
    let ring = Ring::create_shm(&name, 1024).unwrap();
    let mut c = ring.consumer().unwrap();
    let path = Ring::shm_path(&name).unwrap();
    let poke = |off: usize, word: u64| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&word.to_le_bytes(), (HEADER_LEN + off) as u64)
            .unwrap();
    };
    poke(0, (1u64 << 32) | 5000); // data frame longer than the ring
    assert!(matches!(
        c.try_read(),
        Err(RingError::Corrupt { position: 0, .. })
    ));
    poke(0, (9u64 << 32) | 8); // unknown type
    let e = c.try_read().unwrap_err();
    assert!(e.to_string().contains("unknown frame type"), "{e}");
    poke(0, (5u64 << 32) | 8); // padding that does not reach the end
    assert!(c.try_read().unwrap_err().to_string().contains("padding"));
    poke(0, (1u64 << 50) | (1u64 << 32));
    assert!(c.try_read().unwrap_err().to_string().contains("reserved"));
}

#[test]
fn a_consumer_position_out_of_range_is_corruption_for_the_producer() {
    let name = unique("head");
    let ring = Ring::create_shm(&name, 64).unwrap();
    let mut p = ring.producer().unwrap();
    for _ in 0..3 {
        p.try_send(FrameType::Data, &[0; 8]).unwrap();
    }
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(Ring::shm_path(&name).unwrap())
        .unwrap();
    f.write_all_at(&9999u64.to_le_bytes(), 256).unwrap();
    assert_eq!(
        p.try_claim(8, FrameType::Data).err(),
        Some(ClaimError::Corrupt { head: 9999 })
    );
}

#[test]
fn peer_states_tell_gone_from_slow_from_closed() {
    let ring_name = unique("peer");
    let ring = Ring::create_shm(&ring_name, 1024).unwrap();
    assert_eq!(
        ring.peer_state(Role::Producer, 0, 0),
        PeerState::NotAttached
    );
    let p = ring.producer().unwrap();
    let c = ring.consumer().unwrap();
    // Not beating: alive by its process alone.
    assert_eq!(c.producer_state(1_000, 100), PeerState::Active);
    p.heartbeat(1_000);
    assert_eq!(c.producer_state(1_050, 100), PeerState::Active);
    assert_eq!(
        c.producer_state(2_000, 100),
        PeerState::Unresponsive { age_ns: 1_000 }
    );
    drop(p);
    assert_eq!(c.producer_state(2_000, 100), PeerState::Closed);
    // A half whose process is gone: forge a dead pid into the consumer's section.
    ring.mem
        .header(OFF_CONSUMER + ROLE_PID)
        .store(u64::from(u32::MAX - 7), Relaxed);
    assert_eq!(ring.peer_state(Role::Consumer, 0, 0), PeerState::Gone);
    drop(c);
}

#[test]
fn shm_file_is_removed_with_the_creator() {
    let name = unique("unlink");
    let path = Ring::shm_path(&name).unwrap();
    let ring = Ring::create_shm(&name, 1024).unwrap();
    assert!(path.exists());
    assert!(matches!(
        Ring::create_shm(&name, 1024),
        Err(RingError::Io { .. })
    ));
    let (p, c) = (ring.producer().unwrap(), ring.consumer().unwrap());
    drop(ring);
    assert!(path.exists(), "halves keep the mapping");
    drop((p, c));
    assert!(!path.exists());
}

#[test]
fn memfd_rings_attach_by_proc_path() {
    let ring = Ring::memfd("spate-test", 4096).unwrap();
    let path = ring.memfd_path().unwrap();
    let other = Ring::attach_file(&path).unwrap();
    let mut p = ring.producer().unwrap();
    let mut c = other.consumer().unwrap();
    p.try_send(FrameType::Data, b"through a memfd").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"through a memfd");
    assert_eq!(ring.occupancy(), 24);
    c.release();
    assert_eq!(ring.occupancy(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Push(usize),
    Publish,
    Read(usize),
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..=120).prop_map(Op::Push),
        1 => Just(Op::Publish),
        3 => (1usize..6).prop_map(Op::Read),
        1 => Just(Op::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Against a queue model: every published frame comes out once, in order, intact;
    /// Full happens exactly when the model says the space is not there.
    #[test]
    fn framing_matches_a_queue_model(cap_log in 6u32..10, ops in proptest::collection::vec(op(), 1..300)) {
        let cap = 1usize << cap_log;
        let (mut p, mut c) = Ring::anonymous(cap).unwrap();
        let mut seq = 0u64;
        let mut staged: VecDeque<(u64, usize)> = VecDeque::new();
        let mut published: VecDeque<(u64, usize)> = VecDeque::new();
        // Model of positions.
        let (mut tail, mut head, mut read) = (0usize, 0usize, 0usize);
        for op in ops {
            match op {
                Op::Push(len) => {
                    let r = p.try_claim(len, FrameType::Data);
                    if len > max_payload(cap) {
                        prop_assert_eq!(r.err(), Some(ClaimError::TooLarge { len, max: max_payload(cap) }));
                        continue;
                    }
                    let size = frame_size(len);
                    let off = tail % cap;
                    let pad = if size > cap - off { cap - off } else { 0 };
                    let fits = tail + pad + size + 8 - head <= cap;
                    match r {
                        Ok(mut claim) => {
                            prop_assert!(fits);
                            claim.write(0, &pattern(seq, len));
                            claim.commit();
                            staged.push_back((seq, len));
                            seq += 1;
                            tail += pad + size;
                        }
                        Err(e) => {
                            prop_assert_eq!(e, ClaimError::Full);
                            prop_assert!(!fits);
                        }
                    }
                }
                Op::Publish => {
                    p.publish();
                    published.extend(staged.drain(..));
                }
                Op::Read(n) => {
                    for _ in 0..n {
                        match c.try_read().unwrap() {
                            Some(f) => {
                                let (s, len) = published.pop_front().expect("frame not published");
                                prop_assert_eq!(f.payload(), &pattern(s, len)[..]);
                                let size = frame_size(len);
                                let off = read % cap;
                                read += if size > cap - off { cap - off } else { 0 } + size;
                            }
                            None => prop_assert!(published.is_empty()),
                        }
                    }
                }
                Op::Release => {
                    c.release();
                    head = read;
                }
            }
        }
    }
}

#[test]
fn open_shm_creates_or_attaches_and_leaves_nothing_behind() {
    let name = unique("open");
    let path = Ring::shm_path(&name).unwrap();
    let t = std::time::Duration::from_secs(2);
    let a = Ring::open_shm(&name, 4096, t).unwrap();
    assert!(matches!(
        Ring::open_shm(&name, 8192, t),
        Err(RingError::BadHeader {
            field: "capacity",
            ..
        })
    ));
    let b = Ring::open_shm(&name, 4096, t).unwrap();
    // Both sides are mapped: the name is gone already.
    assert!(!path.exists());
    let mut p = b.producer().unwrap();
    let mut c = a.consumer().unwrap();
    p.try_send(FrameType::Data, b"x").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"x");
    drop((a, p));
    drop((b, c));
    assert!(!path.exists());
}

/// Regression: a producer that finished before its consumer opened the ring removed
/// the name with its frames; the consumer then made a new, empty ring under the same
/// name and waited on it for ever (short cluster jobs that never finished).
#[test]
fn a_side_that_finishes_before_the_other_opens_leaves_its_frames_to_it() {
    let name = unique("early");
    let path = Ring::shm_path(&name).unwrap();
    let _g = Unlink(path.clone());
    let t = std::time::Duration::from_secs(2);
    {
        let a = Ring::open_shm(&name, 4096, t).unwrap();
        let mut p = a.producer().unwrap();
        p.try_send(FrameType::Data, b"last words").unwrap();
        p.try_send(FrameType::EndOfStream, &[]).unwrap();
    }
    assert!(path.exists(), "the creator left before its peer came");
    let b = Ring::open_shm(&name, 4096, t).unwrap();
    assert!(!path.exists());
    let mut c = b.consumer().unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"last words");
    assert_eq!(read_one(&mut c).unwrap().0, FrameType::EndOfStream);
    assert_eq!(c.producer_state(0, 0), PeerState::Closed);
}

#[test]
fn the_sweep_removes_rings_no_live_process_uses_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let zero = std::time::Duration::ZERO;
    let mk = |n: &str| Ring::create_file(&dir.path().join(n), 4096, false).unwrap();
    // Closed on both sides, and never attached: dead.
    {
        let r = mk("spate-closed");
        drop((r.producer().unwrap(), r.consumer().unwrap()));
    }
    drop(mk("spate-vacant"));
    // A side owned by a process that is gone (a pid no process has).
    {
        let r = mk("spate-gone");
        let p = r.producer().unwrap();
        r.mem
            .header(OFF_PRODUCER + ROLE_PID)
            .store(u64::from(u32::MAX >> 1), Relaxed);
        std::mem::forget(p);
    }
    // Live: this process holds its consumer.
    let live = mk("spate-live");
    let _c = live.consumer().unwrap();
    // Not ours, and not a ring.
    std::fs::write(dir.path().join("spate-garbage"), b"not a ring").unwrap();
    std::fs::write(dir.path().join("other"), b"").unwrap();
    let young = mk("spate-young");
    drop(young);
    assert_eq!(
        sweep_dead_rings(dir.path(), "spate-", std::time::Duration::from_secs(3600)),
        0,
        "files younger than the minimum age stay"
    );
    assert_eq!(sweep_dead_rings(dir.path(), "spate-", zero), 4);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["other", "spate-garbage", "spate-live"]);
}

/// Regression: attaching while the creator had not yet written the magic removed the
/// file from under it (seen as a restarted cluster job failing to open its rings).
#[test]
fn attaching_to_a_half_created_ring_leaves_the_file_to_its_creator() {
    let name = unique("half");
    let path = Ring::shm_path(&name).unwrap();
    let _g = Unlink(path.clone());
    std::fs::write(&path, vec![0u8; HEADER_LEN + 4096]).unwrap();
    let r = Ring::open_shm(&name, 4096, std::time::Duration::from_millis(20));
    assert!(matches!(r, Err(RingError::BadMagic { found: 0 })), "{r:?}");
    assert!(path.exists(), "a look must not remove the creator's file");
}

#[test]
fn unread_puts_the_last_frame_back() {
    let (mut p, mut c) = Ring::anonymous(256).unwrap();
    p.try_send(FrameType::Data, b"one").unwrap();
    p.try_send(FrameType::Data, b"two").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"one");
    c.unread();
    assert_eq!(read_one(&mut c).unwrap().1, b"one");
    assert_eq!(read_one(&mut c).unwrap().1, b"two");
    c.release();
    c.unread(); // nothing released is ever read again
    assert!(c.try_read().unwrap().is_none());
}

/// Regression: `Claim::write` checked `at + src.len() <= len`, which wraps in release
/// builds (`at = usize::MAX` passed the check and wrote before the frame). The check must
/// reject the range itself, not rely on debug builds' overflow panic.
#[test]
#[should_panic(expected = "write past the claimed frame")]
fn a_claim_write_whose_range_wraps_is_refused() {
    let (mut p, _c) = Ring::anonymous(1024).unwrap();
    let mut claim = p.try_claim(16, FrameType::Data).unwrap();
    claim.write(usize::MAX, &[1, 2]);
}

#[test]
fn claim_write_takes_exactly_the_claimed_range() {
    let (mut p, mut c) = Ring::anonymous(1024).unwrap();
    let mut claim = p.try_claim(16, FrameType::Data).unwrap();
    claim.write(0, &[1; 8]);
    claim.write(8, &[2; 8]);
    claim.write(16, &[]);
    claim.commit();
    p.publish();
    let mut want = vec![1; 8];
    want.extend([2; 8]);
    assert_eq!(read_one(&mut c).unwrap().1, want);
    let past = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut claim = p.try_claim(16, FrameType::Data).unwrap();
        claim.write(9, &[3; 8]);
    }));
    assert!(past.is_err(), "a write one byte past the frame must panic");
}

/// A half starts from the positions in the header, which the peer (or whoever had the
/// file before) may have written: they are checked when the half is taken, so that no
/// data word is ever read at a misaligned offset and no position arithmetic wraps.
#[test]
fn halves_refuse_to_start_from_forged_positions() {
    let forge = |tail: u64, head: u64| {
        let ring = Ring::memfd("spate-test-positions", 1024).unwrap();
        ring.mem
            .header(OFF_PRODUCER + ROLE_POSITION)
            .store(tail, Relaxed);
        ring.mem
            .header(OFF_CONSUMER + ROLE_POSITION)
            .store(head, Relaxed);
        let attached = Ring::attach_file(&ring.memfd_path().unwrap()).map(|_| ());
        let p = ring.producer().map(|_| ());
        let c = ring.consumer().map(|_| ());
        (attached, p, c)
    };
    for (tail, head, why) in [
        (3, 0, "alignment"),
        (16, 12, "alignment"),
        (8, 16, "range"),
        (4096, 0, "range"),
        (1 << 63, 1 << 63, "largest"),
        (u64::MAX - 7, u64::MAX - 15, "largest"),
    ] {
        let (attached, p, c) = forge(tail, head);
        for r in [attached, p, c] {
            match r {
                Err(RingError::Corrupt { reason, .. }) => {
                    assert!(reason.contains(why), "{tail} {head}: {reason}")
                }
                other => panic!("tail {tail} head {head}: {other:?}"),
            }
        }
    }
    // Positions a live ring has are taken up where they are.
    let (attached, p, c) = forge(4096 + 64, 4096);
    assert!(attached.is_ok() && p.is_ok() && c.is_ok());
}

#[test]
fn range_checks_reject_ranges_that_wrap() {
    use super::mem::range_within;
    assert!(range_within(0, 16, 16));
    assert!(range_within(16, 0, 16));
    assert!(range_within(8, 8, 16));
    assert!(!range_within(9, 8, 16));
    assert!(!range_within(17, 0, 16));
    assert!(!range_within(0, 17, 16));
    // Each of these wraps to a small end in unchecked arithmetic.
    assert!(!range_within(usize::MAX, 2, 16));
    assert!(!range_within(2, usize::MAX, 16));
    assert!(!range_within(usize::MAX - 7, 16, 16));
    assert!(!range_within(usize::MAX, usize::MAX, usize::MAX));
}

/// Regression: `unread` after a `try_read` that found nothing put back the frame read
/// before it, which was then delivered twice.
#[test]
fn unread_after_an_empty_read_puts_nothing_back() {
    let (mut p, mut c) = Ring::anonymous(256).unwrap();
    p.try_send(FrameType::Data, b"one").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"one");
    assert!(c.try_read().unwrap().is_none());
    c.unread();
    assert!(
        c.try_read().unwrap().is_none(),
        "the frame before came back"
    );
    p.try_send(FrameType::Data, b"two").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"two");
    // Unread after a frame still puts that frame back, also across padding.
    c.unread();
    assert_eq!(read_one(&mut c).unwrap().1, b"two");
    c.release();
    advance(&mut p, &mut c, 256 - 48);
    p.try_send(FrameType::Data, &[7; 40]).unwrap(); // wraps: padding first
    assert_eq!(read_one(&mut c).unwrap().1, [7; 40]);
    assert!(c.try_read().unwrap().is_none());
    c.unread();
    assert!(c.try_read().unwrap().is_none());
}

/// A memfd ring cannot be resized once sized, by anyone holding it: truncating it after
/// the other side mapped it would make that side's next access a SIGBUS.
#[test]
fn memfd_rings_are_sealed_against_resizing() {
    let ring = Ring::memfd("spate-test-sealed", 4096).unwrap();
    let RegionKind::Memfd(fd) = ring.region().kind() else {
        panic!("not a memfd: {:?}", ring.region().kind());
    };
    let mine = std::fs::File::from(fd.try_clone().unwrap());
    // The way a peer reaches it: by the /proc path, opened for writing.
    let theirs = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ring.memfd_path().unwrap())
        .unwrap();
    let len = (HEADER_LEN + 4096) as u64;
    for f in [&mine, &theirs] {
        for to in [0, HEADER_LEN as u64, len - 1, len + 1, 2 * len] {
            let e = f.set_len(to).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EPERM),
                "ftruncate to {to}: {e}"
            );
        }
        assert_eq!(f.metadata().unwrap().len(), len);
    }
    // Still a ring, still attachable.
    let other = Ring::attach_file(&ring.memfd_path().unwrap()).unwrap();
    let mut p = ring.producer().unwrap();
    let mut c = other.consumer().unwrap();
    p.try_send(FrameType::Data, b"sealed").unwrap();
    assert_eq!(read_one(&mut c).unwrap().1, b"sealed");
}

/// Rings are shared between processes of one user: a ring file owned by another user
/// (one that user placed under the name first, say) is refused, not attached.
#[test]
fn a_ring_file_owned_by_another_user_is_refused() {
    if crate::sys::euid() != 0 {
        eprintln!("skipped: making a file owned by another user needs root");
        return;
    }
    let name = unique("foreign");
    let path = write_file(&name, &good_header(1024));
    let _g = Unlink(path.clone());
    Ring::attach_file(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    for r in [
        Ring::attach_file(&path),
        Ring::open_shm(&name, 1024, std::time::Duration::from_millis(20)),
    ] {
        match r {
            Err(e @ RingError::ForeignOwner { owner: 65534, .. }) => {
                assert!(e.to_string().contains("uid 65534"), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(path.exists(), "someone else's file is left alone");
}
