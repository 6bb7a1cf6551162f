//! Word-level access to a ring's memory: the one seam where raw pointers meet atomics,
//! and where the loom model checker substitutes its own memory (`--cfg loom`).
//!
//! Every header field is a 64-bit word; the data area is accessed as 64-bit atomic words
//! for frame headers and as plain bytes for payloads. Which side may touch which bytes,
//! and when, is the ring protocol's business (`ring/mod.rs`); this module only guarantees
//! that every access is in bounds and aligned.
#![allow(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicU64;
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::AtomicU64;

/// Whether the byte range `at..at + len` lies within `0..bound`, decided without
/// overflow: the naive `at + len <= bound` wraps for a huge `at` or `len` (in release
/// builds, which do not check arithmetic) and then passes.
#[inline(always)]
pub(crate) const fn range_within(at: usize, len: usize, bound: usize) -> bool {
    len <= bound && at <= bound - len
}

#[cfg(not(loom))]
pub(crate) use real::RingMem;

#[cfg(loom)]
pub(crate) use model::RingMem;

#[cfg(not(loom))]
mod real {
    use super::AtomicU64;
    use crate::ring::region::Region;
    use crate::ring::HEADER_LEN;
    use std::sync::Arc;

    /// A validated ring mapping: `HEADER_LEN` header bytes followed by `capacity` data bytes.
    #[derive(Debug, Clone)]
    pub(crate) struct RingMem {
        region: Arc<Region>,
        base: *mut u8,
        capacity: usize,
    }

    // SAFETY: the mapping is shared memory designed for concurrent access from two
    // threads or processes; all shared mutable state is accessed through atomics or under
    // the ring protocol's exclusive-ownership rules for byte ranges.
    unsafe impl Send for RingMem {}
    // SAFETY: as above; `&RingMem` hands out only atomics and protocol-guarded ranges.
    unsafe impl Sync for RingMem {}

    impl RingMem {
        /// `region` must hold at least `HEADER_LEN + capacity` bytes, 128-byte aligned
        /// (mappings are page aligned).
        pub(crate) fn new(region: Arc<Region>, capacity: usize) -> Self {
            assert!(
                HEADER_LEN
                    .checked_add(capacity)
                    .is_some_and(|need| region.len() >= need),
                "ring region too small"
            );
            let base = region.as_ptr();
            assert_eq!(base as usize % 128, 0, "ring region not cache-line aligned");
            Self {
                region,
                base,
                capacity,
            }
        }

        /// A view of the header only, for validating a region before trusting its capacity.
        pub(crate) fn new_header_only(region: Arc<Region>) -> Self {
            Self::new(region, 0)
        }

        /// Data bytes.
        pub(crate) fn capacity(&self) -> usize {
            self.capacity
        }

        pub(crate) fn region(&self) -> &Arc<Region> {
            &self.region
        }

        /// The header word at byte offset `off` (a multiple of 8 below `HEADER_LEN`).
        ///
        /// Checked in every build: callers pass named constants, so the check folds away.
        #[inline(always)]
        pub(crate) fn header(&self, off: usize) -> &AtomicU64 {
            assert!(
                off.is_multiple_of(8) && off < HEADER_LEN,
                "header offset {off}"
            );
            // SAFETY: `off` is 8-aligned and inside the header, the base is page aligned, so
            // the pointer is aligned and in bounds for a u64; AtomicU64 has u64's layout; the
            // mapping lives as long as `self.region`.
            unsafe { &*(self.base.add(off) as *const AtomicU64) }
        }

        /// The data word at data offset `off` (a multiple of 8 below `capacity`).
        ///
        /// On the hot path, so checked in debug builds only. Every caller passes a
        /// position masked with `capacity - 1` (so below `capacity`), and positions are
        /// multiples of 8: frame sizes are, and the positions a half starts from are
        /// checked when it is taken (`Ring::take`), never trusted from the peer.
        #[inline(always)]
        pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
            debug_assert!(off.is_multiple_of(8) && off < self.capacity);
            // SAFETY: as for `header`, with `HEADER_LEN + off < HEADER_LEN + capacity`, which
            // the callers' masking guarantees (argued above).
            unsafe { &*(self.base.add(HEADER_LEN + off) as *const AtomicU64) }
        }

        /// Pointer to data offset `off`. Computing it is safe for any `off` (the offset is
        /// added with wrapping arithmetic); dereferencing it is the caller's business and
        /// needs `off..off + len` within the data area (see [`range_within`]).
        ///
        /// [`range_within`]: super::range_within
        #[inline(always)]
        pub(crate) fn data_ptr(&self, off: usize) -> *mut u8 {
            debug_assert!(off <= self.capacity);
            // NB: `wrapping_add` keeps this function sound for any `off`; for offsets in
            // bounds (every caller's) it is the same address `add` would give.
            self.base.wrapping_add(HEADER_LEN).wrapping_add(off)
        }

        /// Copies `src` to data offset `off`.
        ///
        /// # Safety
        /// `off..off + src.len()` lies within the data area, and the caller owns it under
        /// the ring protocol: no other party reads or writes those bytes until ownership is
        /// handed over by a release store.
        #[inline(always)]
        pub(crate) unsafe fn write_bytes(&self, off: usize, src: &[u8]) {
            debug_assert!(super::range_within(off, src.len(), self.capacity));
            // SAFETY: in bounds (the caller's contract, checked above in debug builds), not
            // overlapping `src` (which is not in the data area we own), and
            // exclusively owned per the caller's contract.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data_ptr(off), src.len()) }
        }

        /// Copies data at `off` into `dst`.
        ///
        /// # Safety
        /// `off..off + dst.len()` lies within the data area, and its bytes were handed to
        /// the caller by an acquire load: no one writes them until the caller releases them.
        #[inline(always)]
        pub(crate) unsafe fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            debug_assert!(super::range_within(off, dst.len(), self.capacity));
            // SAFETY: in bounds and stable for the duration, per the caller's contract.
            unsafe {
                std::ptr::copy_nonoverlapping(self.data_ptr(off), dst.as_mut_ptr(), dst.len())
            }
        }
    }
}

#[cfg(loom)]
mod model {
    use super::AtomicU64;
    use crate::ring::HEADER_LEN;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    /// Ring memory as loom atomics, one per 64-bit word. Payload bytes are written and read
    /// as relaxed atomic words, so a missing release/acquire edge in the protocol shows up
    /// as a stale payload under the model checker.
    #[derive(Debug, Clone)]
    pub(crate) struct RingMem {
        inner: Arc<Words>,
    }

    #[derive(Debug)]
    struct Words {
        header: Box<[AtomicU64]>,
        data: Box<[AtomicU64]>,
    }

    impl RingMem {
        pub(crate) fn new_model(capacity: usize) -> Self {
            let header = (0..HEADER_LEN / 8).map(|_| AtomicU64::new(0)).collect();
            let data = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
            Self {
                inner: Arc::new(Words { header, data }),
            }
        }

        pub(crate) fn header(&self, off: usize) -> &AtomicU64 {
            &self.inner.header[off / 8]
        }

        pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
            &self.inner.data[off / 8]
        }

        pub(crate) unsafe fn write_bytes(&self, off: usize, src: &[u8]) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut w = [0u8; 8];
                w[..chunk.len()].copy_from_slice(chunk);
                self.word(off + i * 8).store(u64::from_le_bytes(w), Relaxed);
            }
        }

        pub(crate) unsafe fn read_bytes(&self, off: usize, dst: &mut [u8]) {
            for (i, chunk) in dst.chunks_mut(8).enumerate() {
                let w = self.word(off + i * 8).load(Relaxed).to_le_bytes();
                let n = chunk.len();
                chunk.copy_from_slice(&w[..n]);
            }
        }
    }
}
