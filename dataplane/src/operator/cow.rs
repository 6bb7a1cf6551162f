//! Copy-on-write storage for keyed state: entries in chunks that a checkpoint shares
//! with the table it froze; the first write to a chunk after the freeze copies it.
//!
//! No unsafe code and no atomic operation on the write path: a chunk the table owns is
//! a plain `Vec`; freezing moves it into an `Arc` that the snapshot shares, and the
//! first write after that takes it back (if the snapshot was written and dropped
//! meanwhile) or copies it.

use std::sync::Arc;

/// Entries per chunk: the unit of copy-on-write while a snapshot holds the state
/// (1024 entries of W1's 32 bytes: a 32 KiB copy, a few µs).
pub const CHUNK_BITS: u32 = 10;
/// Entries per chunk.
pub const CHUNK: usize = 1 << CHUNK_BITS;
const CHUNK_MASK: usize = CHUNK - 1;

/// Up to [`CHUNK`] entries: owned, or frozen (shared with snapshots).
#[derive(Debug)]
struct Chunk<T> {
    /// The entries, while no snapshot shares them.
    own: Vec<T>,
    /// The entries, while snapshots share them (`own` is then empty).
    frozen: Option<Arc<Vec<T>>>,
}

impl<T> Default for Chunk<T> {
    fn default() -> Self {
        Self {
            own: Vec::new(),
            frozen: None,
        }
    }
}

impl<T: Clone> Chunk<T> {
    #[inline(always)]
    fn data(&self) -> &[T] {
        match &self.frozen {
            None => &self.own,
            Some(f) => f,
        }
    }

    /// The entries, writable (unfrozen first).
    #[inline(always)]
    fn get_mut(&mut self) -> &mut Vec<T> {
        if self.frozen.is_some() {
            self.thaw();
        }
        &mut self.own
    }

    /// Takes the entries back from the snapshots: without a copy if none holds them
    /// any more, else as a copy (once per chunk and checkpoint).
    #[cold]
    #[inline(never)]
    fn thaw(&mut self) {
        if let Some(f) = self.frozen.take() {
            self.own = Arc::try_unwrap(f).unwrap_or_else(|shared| {
                // Keep the capacity: a chunk still filling up must not reallocate on
                // its next key.
                let mut own = Vec::with_capacity(shared.capacity());
                own.extend_from_slice(&shared);
                own
            });
        }
    }

    /// A reference to the entries for a snapshot.
    fn share(&mut self) -> Arc<Vec<T>> {
        let frozen = self
            .frozen
            .get_or_insert_with(|| Arc::new(std::mem::take(&mut self.own)));
        Arc::clone(frozen)
    }
}

/// A growable sequence of entries stored in copy-on-write chunks, indexed as one
/// vector. The first chunk is held inline, so that a table of up to [`CHUNK`] entries
/// reaches an entry through as many pointers as a `Vec` does.
#[derive(Debug)]
pub struct Chunks<T> {
    first: Chunk<T>,
    rest: Vec<Chunk<T>>,
    len: usize,
}

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Self {
            first: Chunk::default(),
            rest: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> Chunks<T> {
    #[inline(always)]
    fn chunk(&self, c: usize) -> Option<&Chunk<T>> {
        if c == 0 {
            Some(&self.first)
        } else {
            self.rest.get(c - 1)
        }
    }

    #[inline(always)]
    fn chunk_mut(&mut self, c: usize) -> Option<&mut Chunk<T>> {
        if c == 0 {
            Some(&mut self.first)
        } else {
            self.rest.get_mut(c - 1)
        }
    }

    /// Number of entries.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entry `i`.
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunk(i >> CHUNK_BITS)?.data().get(i & CHUNK_MASK)
    }

    /// Entry `i`, writable (its chunk copied first if a snapshot holds it).
    #[inline(always)]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunk_mut(i >> CHUNK_BITS)?
            .get_mut()
            .get_mut(i & CHUNK_MASK)
    }

    /// Every entry as one writable slice, when they all sit in the first chunk (up
    /// to [`CHUNK`] entries; copied first if a snapshot holds it).
    #[inline(always)]
    pub fn single_mut(&mut self) -> Option<&mut [T]> {
        if self.rest.is_empty() {
            Some(self.first.get_mut().as_mut_slice())
        } else {
            None
        }
    }

    /// Appends an entry.
    #[inline]
    pub fn push(&mut self, v: T) {
        let c = self.len >> CHUNK_BITS;
        if c > self.rest.len() {
            // Past the first chunk a table is big: its chunks fill up whole.
            self.rest.push(Chunk {
                own: Vec::with_capacity(CHUNK),
                frozen: None,
            });
        }
        if let Some(chunk) = self.chunk_mut(c) {
            chunk.get_mut().push(v);
            self.len += 1;
        }
    }

    /// Removes the last entry.
    pub fn pop(&mut self) -> Option<T> {
        let last = self.len.checked_sub(1)?;
        let c = last >> CHUNK_BITS;
        let v = self.chunk_mut(c)?.get_mut().pop()?;
        self.len = last;
        if c > 0 && last & CHUNK_MASK == 0 {
            self.rest.pop();
        }
        Some(v)
    }

    /// Removes every entry, keeping the first chunk's capacity unless a snapshot
    /// holds it.
    pub fn clear(&mut self) {
        self.rest.clear();
        if let Some(f) = self.first.frozen.take() {
            // Taken back if the snapshot is done with it (window panes are recycled
            // through `clear`: they keep their capacity), else left to the snapshot.
            self.first.own = Arc::try_unwrap(f).unwrap_or_default();
        }
        self.first.own.clear();
        self.len = 0;
    }

    /// The entries in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.first)
            .chain(self.rest.iter())
            .flat_map(|c| c.data().iter())
    }

    /// The entries in order, writable (copying the chunks snapshots hold).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        std::iter::once(&mut self.first)
            .chain(self.rest.iter_mut())
            .flat_map(|c| c.get_mut().iter_mut())
    }

    /// The entries as they are now, for a snapshot, in O(chunks): later writes copy
    /// the chunks they touch instead of changing the snapshot's.
    pub fn freeze(&mut self) -> Frozen<T> {
        let mut chunks = Vec::with_capacity(1 + self.rest.len());
        chunks.push(self.first.share());
        chunks.extend(self.rest.iter_mut().map(Chunk::share));
        Frozen {
            chunks,
            len: self.len,
        }
    }
}

impl<T: Clone> std::ops::Index<usize> for Chunks<T> {
    type Output = T;
    /// Entry `i`; panics if `i >= len` (as a `Vec` does).
    #[inline(always)]
    fn index(&self, i: usize) -> &T {
        let c = i >> CHUNK_BITS;
        let chunk = if c == 0 {
            &self.first
        } else {
            &self.rest[c - 1]
        };
        &chunk.data()[i & CHUNK_MASK]
    }
}

impl<T: Clone> std::ops::IndexMut<usize> for Chunks<T> {
    /// Entry `i`, writable (its chunk copied first if a snapshot holds it); panics if
    /// `i >= len` (as a `Vec` does).
    #[inline(always)]
    fn index_mut(&mut self, i: usize) -> &mut T {
        let c = i >> CHUNK_BITS;
        let chunk = if c == 0 {
            &mut self.first
        } else {
            &mut self.rest[c - 1]
        };
        &mut chunk.get_mut()[i & CHUNK_MASK]
    }
}

/// Entries as they were at a freeze, shared with the table until it writes them.
#[derive(Debug)]
pub struct Frozen<T> {
    chunks: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Frozen<T> {
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The entries, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

impl<T> Clone for Frozen<T> {
    /// Another handle on the same frozen chunks (no entry is copied).
    fn clone(&self) -> Self {
        Self {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T: serde::Serialize> serde::Serialize for Frozen<T> {
    /// As the entries' slice would serialize (a sequence of known length).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.len))?;
        for e in self.iter() {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn push_pop_across_chunks_and_freezes() {
        let mut c = Chunks::default();
        for i in 0..(3 * CHUNK + 5) {
            c.push(i);
        }
        let f = c.freeze();
        for _ in 0..(CHUNK + 10) {
            c.pop();
        }
        *c.get_mut(3).unwrap() = 99;
        assert_eq!(c.len(), 2 * CHUNK - 5);
        assert_eq!(c.get(3), Some(&99));
        assert_eq!(c.get(2 * CHUNK - 5), None);
        assert_eq!(f.len(), 3 * CHUNK + 5);
        assert!(f.iter().copied().eq(0..(3 * CHUNK + 5)));
        assert!(c.iter().count() == c.len());
        c.clear();
        assert!(c.is_empty() && c.get(0).is_none());
        c.push(7);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), vec![7]);
        assert!(f.iter().copied().eq(0..(3 * CHUNK + 5)));
    }
}
