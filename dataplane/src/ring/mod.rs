//! The frame ring: one producer, one consumer, variable-length frames, in memory that may
//! be shared between threads or processes.
//!
//! # Layout (version 1)
//!
//! A ring is one mapping: a 512-byte header, then `capacity` data bytes (a power of two).
//! Every header field is a little-endian 64-bit word. The producer's and the consumer's
//! fields sit on their own 128-byte sections (two cache lines, so the adjacent-line
//! prefetcher does not couple them either).
//!
//! ```text
//!   0 +---------------------------------------------------------------+
//!     | magic "SPATERNG" (stored last, with release, by the creator)   |
//!   8 | layout version                                                 |
//!  16 | capacity (data bytes, power of two)                            |
//!  24 | frame alignment (8)                                            |
//!  32 | header length (512)                                            |
//!  40 | (reserved to 128)                                              |
//! 128 +--- producer section, written only by the producer -----------+
//!     | tail: bytes published so far (monitoring; not read on the hot path)
//! 136 | producer state: 0 vacant, 1 attached, 2 closed, 3 broken       |
//! 144 | producer pid                                                   |
//! 152 | producer heartbeat (CLOCK_MONOTONIC ns; 0 = does not beat)     |
//! 256 +--- consumer section, written only by the consumer -----------+
//!     | head: bytes released so far                                    |
//! 264 | consumer state                                                 |
//! 272 | consumer pid                                                   |
//! 280 | consumer heartbeat                                             |
//! 384 +--- reserved ----------------------------------------------------+
//! 512 +--- data: capacity bytes of frames -----------------------------+
//! ```
//!
//! A frame is an 8-byte header word followed by its payload, padded to a multiple of 8:
//!
//! ```text
//!  0               32        40                      64
//!  +----------------+---------+-----------------------+----------------------+
//!  | payload length | type    | zero                  | payload ... | pad to 8 |
//!  +----------------+---------+-----------------------+----------------------+
//! ```
//!
//! Types: 1 data, 2 watermark, 3 checkpoint barrier, 4 end of stream, 5 padding (fills
//! the bytes up to the end of the data area when the next frame does not fit there).
//! A header word is never zero; zero means "nothing published here yet".
//!
//! # Protocol
//!
//! Positions (`tail`, `head`) count bytes since the ring was created and never wrap;
//! the byte offset of a position is `position & (capacity - 1)`. Invariant:
//! `head <= published <= tail <= head + capacity`.
//!
//! - The consumer polls the **header word at its read position**, not the producer's
//!   position: when the frame is there, its header and its first bytes arrive in one
//!   cache-line transfer. A non-zero header read with *acquire* makes the payload (and
//!   every frame of the same batch) visible.
//! - The producer keeps the word at its tail zero ("zero ahead"): each frame, before it is
//!   published, stores zero into the header word just past its end. So the consumer never
//!   reads a stale header from the previous lap. This is why a frame needs 8 bytes of
//!   free space beyond its own size.
//! - A batch of frames is published with **one release store**: the header words of all
//!   frames but the first are stored relaxed as they are committed; the first frame's
//!   header is held back and stored with release by `publish`.
//! - The consumer releases everything it has read with **one release store** of `head`;
//!   the producer loads `head` with acquire only when its cached copy says the ring is
//!   full, so the common case touches no line the consumer writes.
//! - Frames never straddle the end of the data area; the largest frame (header included)
//!   is `capacity / 2`, so a frame always fits into an empty ring.
//!
//! Nothing the peer writes is trusted: a header word or position that breaks the
//! invariants is reported as [`RingError::Corrupt`], never followed.
//!
//! # Trust boundary
//!
//! A ring is shared only between processes of one user: ring files are created with mode
//! 0600 and refused on attach when another user owns them ([`RingError::ForeignOwner`]),
//! and a memfd ring is reached through `/proc/<pid>/fd/<fd>`, which only the creator's
//! user (or root) may open. Within that boundary the other side is not trusted
//! to be correct. A peer with write access to the mapping, buggy or hostile,
//!
//! - **can** corrupt what the ring carries: payloads (even while they are read, so a
//!   payload is decoded as untrusted input that may change under its reader), frame
//!   headers, both positions, and the state, pid and heartbeat words. What breaks the
//!   ring's invariants is reported, never followed: a frame header, or the positions a
//!   half starts from, as [`RingError::Corrupt`]; a consumer position out of range, to
//!   the producer, as [`ClaimError::Corrupt`]. A well-formed forged frame is delivered as
//!   data: the ring moves bytes, it does not authenticate them. The peer can also stall
//!   (backpressure without end) or claim to be alive or closed when it is not.
//! - **cannot** make the safe API read or write outside the mapping: every data offset
//!   is a position masked into the data area; every length read from the peer is checked
//!   against the room before the end of the data area, without arithmetic that could
//!   wrap, before a slice is formed; and positions are checked (aligned, in range, far
//!   from overflow) before a half starts from them.
//!
//! One way out is left to a peer, for rings in a named file (`/dev/shm`): truncating the
//! file. An access to the mapping past the file's new end is a SIGBUS, which ends the
//! process. The file's length is checked against header + capacity on attach, and
//! [`Ring::open_shm`] removes the name as soon as both sides have the ring mapped, so only
//! a process that opened the file while it had a name can still truncate it. It is not
//! checked again later: an `fstat` on the cold paths (liveness checks) would cost a
//! descriptor per ring and still lose the race against the hot path, which touches the
//! mapping every poll. memfd rings are sealed against shrinking and growing once sized
//! (see `Region::memfd`): no one can truncate them.
#![allow(unsafe_code)]

pub(crate) mod mem;
#[cfg(not(loom))]
mod region;

#[cfg(not(loom))]
pub use region::{Region, RegionKind, SHM_DIR};

use mem::{range_within, RingMem};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// "SPATERNG" as a little-endian word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SPATERNG");
/// Layout version; a ring of another version is refused on attach.
pub const LAYOUT_VERSION: u64 = 1;
/// Frames start at multiples of this many bytes.
pub const FRAME_ALIGN: usize = 8;
/// Bytes of the frame header word.
pub const FRAME_HEADER_LEN: usize = 8;
/// Bytes of the ring header that precedes the data area.
pub const HEADER_LEN: usize = 512;
/// Smallest data capacity.
pub const MIN_CAPACITY: usize = 64;
/// Largest data capacity (4 GiB): every frame length fits the header's 32-bit field.
pub const MAX_CAPACITY: usize = 1 << 32;

const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_CAPACITY: usize = 16;
const OFF_ALIGN: usize = 24;
const OFF_HEADER_LEN: usize = 32;
const OFF_PRODUCER: usize = 128;
const OFF_CONSUMER: usize = 256;
// Within a role's section:
const ROLE_POSITION: usize = 0;
const ROLE_STATE: usize = 8;
const ROLE_PID: usize = 16;
const ROLE_HEARTBEAT: usize = 24;
const SECTION_LEN: usize = 128;

const _: () = {
    assert!(OFF_HEADER_LEN + 8 <= OFF_PRODUCER);
    assert!(OFF_PRODUCER.is_multiple_of(SECTION_LEN) && OFF_CONSUMER.is_multiple_of(SECTION_LEN));
    assert!(OFF_CONSUMER - OFF_PRODUCER >= SECTION_LEN);
    assert!(OFF_CONSUMER + SECTION_LEN < HEADER_LEN);
    assert!(ROLE_HEARTBEAT + 8 <= SECTION_LEN);
    assert!(HEADER_LEN.is_multiple_of(SECTION_LEN));
    assert!(FRAME_HEADER_LEN == FRAME_ALIGN);
    assert!(MIN_CAPACITY.is_power_of_two() && MAX_CAPACITY.is_power_of_two());
};

const STATE_VACANT: u64 = 0;
const STATE_ATTACHED: u64 = 1;
const STATE_CLOSED: u64 = 2;
/// Closed by the transport carrying the other half's frames between hosts, because
/// its connection failed (see `Producer::break_off`).
const STATE_BROKEN: u64 = 3;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Records.
    Data = 1,
    /// An event-time watermark.
    Watermark = 2,
    /// A checkpoint barrier.
    Barrier = 3,
    /// The producer will send nothing more.
    EndOfStream = 4,
    /// Filler up to the end of the data area; consumers never see it.
    Padding = 5,
}

impl FrameType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Watermark,
            3 => Self::Barrier,
            4 => Self::EndOfStream,
            5 => Self::Padding,
            _ => return None,
        })
    }
}

/// Which half of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The writing half.
    Producer,
    /// The reading half.
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

/// Why a ring could not be created, attached or read.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The operating system refused.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A ring name that is not a plain file name.
    #[error("invalid ring name {0:?}: use a non-empty file name without '/'")]
    InvalidName(String),
    /// Capacity not a power of two.
    #[error("ring capacity {0} is not a power of two")]
    CapacityNotPowerOfTwo(u64),
    /// Capacity outside `MIN_CAPACITY..=MAX_CAPACITY`.
    #[error("ring capacity {0} is outside {MIN_CAPACITY}..={MAX_CAPACITY}")]
    CapacityOutOfRange(u64),
    /// The file belongs to another user: rings are shared between processes of one user.
    #[error(
        "ring file is owned by uid {owner}, not by this process's user (uid {euid}); rings \
         are shared only between processes of one user"
    )]
    ForeignOwner {
        /// The file's owner.
        owner: u32,
        /// This process's effective user id.
        euid: u32,
    },
    /// The file is shorter than a ring header.
    #[error("not a ring: file is {len} bytes, shorter than the {HEADER_LEN}-byte ring header")]
    Truncated {
        /// The file's length.
        len: u64,
    },
    /// The magic number is wrong (a foreign or uninitialised file).
    #[error("not a ring: magic is {found:#018x}, expected {MAGIC:#018x} (\"SPATERNG\")")]
    BadMagic {
        /// What the file holds.
        found: u64,
    },
    /// Another layout version.
    #[error(
        "ring layout version {found} is not supported (this build reads version {LAYOUT_VERSION})"
    )]
    Version {
        /// The file's version.
        found: u64,
    },
    /// A header field other than the above is inconsistent.
    #[error("ring header field {field} is {found}, expected {expected}")]
    BadHeader {
        /// The field.
        field: &'static str,
        /// What the file holds.
        found: u64,
        /// What it must be.
        expected: u64,
    },
    /// The file's size does not match header + capacity.
    #[error("ring file is {len} bytes, but its header says {expected} ({HEADER_LEN} + capacity)")]
    SizeMismatch {
        /// The file's length.
        len: u64,
        /// header + capacity.
        expected: u64,
    },
    /// That half of the ring is already taken (by this or another process).
    #[error("the ring's {0} is already attached or was closed")]
    AlreadyAttached(Role),
    /// The peer wrote something that breaks the ring's invariants.
    #[error("ring corrupt at position {position}: {reason}")]
    Corrupt {
        /// Position where it was seen.
        position: u64,
        /// What was wrong.
        reason: &'static str,
    },
}

#[cfg(not(loom))]
fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RingError {
    let what = what.into();
    move |source| RingError::Io { what, source }
}

/// Why a claim did not succeed. `Full` is the ordinary backpressure result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// Not enough free space now: try again after the consumer has released frames.
    #[error("ring full")]
    Full,
    /// The frame can never fit in this ring.
    #[error("frame payload of {len} bytes exceeds the ring's maximum of {max}")]
    TooLarge {
        /// Requested payload bytes.
        len: usize,
        /// Largest payload this ring takes.
        max: usize,
    },
    /// The consumer's position breaks the ring's invariants.
    #[error("ring corrupt: consumer position {head} outside the published range")]
    Corrupt {
        /// The position read.
        head: u64,
    },
}

/// How the other half of a ring is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// No one has taken that half yet.
    NotAttached,
    /// Attached, and alive (its process exists; its heartbeat, if it beats, is fresh).
    Active,
    /// Attached and its process exists, but its heartbeat is older than the timeout: slow,
    /// stopped or hung.
    Unresponsive {
        /// Age of the last heartbeat.
        age_ns: u64,
    },
    /// Dropped its half cleanly.
    Closed,
    /// Its process no longer exists: it died without closing.
    Gone,
    /// Closed by the network transport that carried it between hosts: the connection
    /// to the host at the other end failed.
    Broken,
}

/// Bytes a frame with `len` payload bytes occupies.
#[inline(always)]
pub const fn frame_size(len: usize) -> usize {
    (FRAME_HEADER_LEN + len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// Largest payload a ring of `capacity` bytes carries.
pub const fn max_payload(capacity: usize) -> usize {
    capacity / 2 - FRAME_HEADER_LEN
}

#[inline(always)]
fn frame_header(ty: FrameType, len: usize) -> u64 {
    ((ty as u64) << 32) | len as u64
}

fn check_capacity(capacity: u64) -> Result<usize, RingError> {
    if !capacity.is_power_of_two() {
        return Err(RingError::CapacityNotPowerOfTwo(capacity));
    }
    if capacity < MIN_CAPACITY as u64 || capacity > MAX_CAPACITY as u64 {
        return Err(RingError::CapacityOutOfRange(capacity));
    }
    usize::try_from(capacity).map_err(|_| RingError::CapacityOutOfRange(capacity))
}

/// A ring's memory, validated: the handle from which its two halves are taken. Cloning it
/// shares the same memory.
#[derive(Debug, Clone)]
pub struct Ring {
    mem: RingMem,
    capacity: usize,
}

impl Ring {
    fn init(mem: RingMem, capacity: usize) -> Self {
        mem.header(OFF_VERSION).store(LAYOUT_VERSION, Relaxed);
        mem.header(OFF_CAPACITY).store(capacity as u64, Relaxed);
        mem.header(OFF_ALIGN).store(FRAME_ALIGN as u64, Relaxed);
        mem.header(OFF_HEADER_LEN).store(HEADER_LEN as u64, Relaxed);
        // Release: whoever reads the magic with acquire sees a complete header.
        mem.header(OFF_MAGIC).store(MAGIC, Release);
        Self { mem, capacity }
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Largest frame payload this ring carries.
    pub fn max_payload(&self) -> usize {
        max_payload(self.capacity)
    }

    /// Takes the producer half. Fails if it was taken before, here or in another process,
    /// or if the positions in the header break the ring's invariants.
    pub fn producer(&self) -> Result<Producer, RingError> {
        let (tail, head) = self.positions()?;
        self.take(Role::Producer)?;
        Ok(Producer {
            mem: self.mem.clone(),
            mask: self.capacity as u64 - 1,
            capacity: self.capacity as u64,
            max_payload: self.max_payload(),
            tail,
            published: tail,
            head_cache: head,
            pending_header: 0,
            pending_off: 0,
            broken: false,
            _not_sync: PhantomData,
        })
    }

    /// Takes the consumer half. Fails if it was taken before, here or in another process,
    /// or if the positions in the header break the ring's invariants.
    pub fn consumer(&self) -> Result<Consumer, RingError> {
        let (_, head) = self.positions()?;
        self.take(Role::Consumer)?;
        Ok(Consumer {
            mem: self.mem.clone(),
            mask: self.capacity as u64 - 1,
            capacity: self.capacity,
            head,
            read: head,
            last: head,
            broken: false,
            _not_sync: PhantomData,
        })
    }

    /// The producer's published position and the consumer's released one, each loaded
    /// once and checked (see [`check_positions`]): a half starts from them, and every
    /// offset it computes later derives from them, so they are never used unchecked.
    fn positions(&self) -> Result<(u64, u64), RingError> {
        // Acquire: the producer starts from this as its cached `head`; the consumer's reads
        // of the frames it released happen before the producer overwrites them (as in
        // `Producer::refresh_head`).
        let head = self.mem.header(OFF_CONSUMER + ROLE_POSITION).load(Acquire);
        // Relaxed: a position, not a hand-off; the consumer finds frames by their headers.
        let tail = self.mem.header(OFF_PRODUCER + ROLE_POSITION).load(Relaxed);
        check_positions(tail, head, self.capacity)?;
        Ok((tail, head))
    }

    fn take(&self, role: Role) -> Result<(), RingError> {
        let section = section(role);
        // AcqRel: a half is taken once; the winner's later stores follow the CAS.
        self.mem
            .header(section + ROLE_STATE)
            .compare_exchange(STATE_VACANT, STATE_ATTACHED, AcqRel, Acquire)
            .map_err(|_| RingError::AlreadyAttached(role))?;
        self.mem
            .header(section + ROLE_PID)
            .store(u64::from(crate::sys::pid()), Relaxed);
        Ok(())
    }

    /// Bytes published and not yet released: the ring's occupancy, for backpressure
    /// monitoring (both positions are read relaxed; the figure may be momentarily stale).
    pub fn occupancy(&self) -> u64 {
        let tail = self.mem.header(OFF_PRODUCER + ROLE_POSITION).load(Relaxed);
        let head = self.mem.header(OFF_CONSUMER + ROLE_POSITION).load(Relaxed);
        tail.saturating_sub(head)
    }

    /// State of one half as seen from outside (a monitor or the other half).
    pub fn peer_state(&self, role: Role, now_ns: u64, timeout_ns: u64) -> PeerState {
        peer_state(&self.mem, section(role), now_ns, timeout_ns)
    }
}

#[cfg(not(loom))]
impl Ring {
    /// A ring in anonymous memory, split at once: for tasks in one process.
    pub fn anonymous(capacity: usize) -> Result<(Producer, Consumer), RingError> {
        let cap = check_capacity(capacity as u64)?;
        let region =
            Region::anonymous(HEADER_LEN + cap).map_err(io_err("mapping anonymous ring"))?;
        let ring = Self::init(RingMem::new(std::sync::Arc::new(region), cap), cap);
        Ok((ring.producer()?, ring.consumer()?))
    }

    /// Path of the shared-memory ring called `name`.
    pub fn shm_path(name: &str) -> Result<std::path::PathBuf, RingError> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(RingError::InvalidName(name.to_string()));
        }
        Ok(std::path::Path::new(SHM_DIR).join(name))
    }

    /// Creates the ring `name` in /dev/shm. The file is removed when the last handle to
    /// this mapping in this process is dropped; processes that attached keep their mapping.
    pub fn create_shm(name: &str, capacity: usize) -> Result<Self, RingError> {
        Self::create_file(&Self::shm_path(name)?, capacity, true)
    }

    /// Attaches to the ring `name` in /dev/shm, validating its header.
    pub fn attach_shm(name: &str) -> Result<Self, RingError> {
        Self::attach_file(&Self::shm_path(name)?)
    }

    /// Creates a ring file at `path` (it must not exist).
    pub fn create_file(
        path: &std::path::Path,
        capacity: usize,
        unlink_on_drop: bool,
    ) -> Result<Self, RingError> {
        let cap = check_capacity(capacity as u64)?;
        let region = Region::create_file(path, HEADER_LEN + cap, unlink_on_drop)
            .map_err(io_err(format!("creating ring file {}", path.display())))?;
        Ok(Self::init(
            RingMem::new(std::sync::Arc::new(region), cap),
            cap,
        ))
    }

    /// Attaches to the ring file at `path`. A file that is not a ring of this layout
    /// version, or that another user owns, is refused with an error that says why; it is
    /// never read as one.
    pub fn attach_file(path: &std::path::Path) -> Result<Self, RingError> {
        let file = Self::open_ring_file(path)?;
        let region = Region::map_file(&file, path)
            .map_err(io_err(format!("mapping ring file {}", path.display())))?;
        Self::validate(std::sync::Arc::new(region))
    }

    /// Opens a ring file for attaching, after the checks that need no mapping: it is
    /// owned by this process's user (the trust boundary; a file another user placed
    /// under the name is refused) and holds at least a ring header.
    fn open_ring_file(path: &std::path::Path) -> Result<std::fs::File, RingError> {
        use std::os::unix::fs::MetadataExt;
        let what = || format!("opening ring file {}", path.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(what()))?;
        let meta = file.metadata().map_err(io_err(what()))?;
        let euid = crate::sys::euid();
        if meta.uid() != euid {
            return Err(RingError::ForeignOwner {
                owner: meta.uid(),
                euid,
            });
        }
        if meta.len() < HEADER_LEN as u64 {
            return Err(RingError::Truncated { len: meta.len() });
        }
        Ok(file)
    }

    /// The shared-memory ring `name`, created with `capacity` if it does not exist yet,
    /// else attached (waiting up to `timeout` for its creator to finish writing the
    /// header). Either side may come first, and either may finish before the other
    /// opens: the creator leaves the name in place, and the side that attaches removes
    /// it at once (both are mapped by then, so the name has served its purpose). A
    /// ring whose second side never came stays behind as a file, for its job's cleanup
    /// ([`sweep_dead_rings`] or a removal by name prefix) to remove.
    ///
    /// NB: the creator must not remove the name when it drops. A producer that ends at
    /// once (a short bounded source) would otherwise take the name, with its frames and
    /// end of stream, away before its consumer opened it; the consumer would then
    /// create a fresh, empty ring under the same name and wait on it for ever.
    pub fn open_shm(
        name: &str,
        capacity: usize,
        timeout: std::time::Duration,
    ) -> Result<Self, RingError> {
        let path = Self::shm_path(name)?;
        match Self::create_file(&path, capacity, false) {
            Ok(r) => return Ok(r),
            Err(RingError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let attempt = (|| {
                // The file may have gone since our create failed (its creator let go):
                // then it is ours to create.
                match Self::create_file(&path, capacity, false) {
                    Ok(r) => return Ok(r),
                    Err(RingError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                Self::attach_file(&path)
            })();
            match attempt {
                Ok(r) if r.capacity == capacity => {
                    // Both sides hold the mapping now: the name is no longer needed.
                    let _ = std::fs::remove_file(&path);
                    return Ok(r);
                }
                Ok(r) => {
                    return Err(RingError::BadHeader {
                        field: "capacity",
                        found: r.capacity as u64,
                        expected: capacity as u64,
                    })
                }
                // The creator is between creating the file and writing its magic, or the
                // file went between our create and our open.
                Err(RingError::Truncated { .. } | RingError::BadMagic { found: 0 })
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(RingError::Io { ref source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether some side of this ring is attached and its process is alive: a ring
    /// with no live side can no longer be read or written by anyone.
    pub fn has_live_side(&self) -> bool {
        [OFF_PRODUCER, OFF_CONSUMER].iter().any(|&section| {
            matches!(
                peer_state(&self.mem, section, 0, 0),
                PeerState::Active | PeerState::Unresponsive { .. }
            )
        })
    }

    /// A ring in a new memfd; share it with [`Ring::memfd_path`] or by passing the fd.
    pub fn memfd(name: &str, capacity: usize) -> Result<Self, RingError> {
        let cap = check_capacity(capacity as u64)?;
        let region = Region::memfd(name, HEADER_LEN + cap).map_err(io_err("creating memfd"))?;
        Ok(Self::init(
            RingMem::new(std::sync::Arc::new(region), cap),
            cap,
        ))
    }

    /// `/proc/<pid>/fd/<fd>`: a path by which another process can attach to this memfd
    /// ring with [`Ring::attach_file`] while this process keeps it open.
    pub fn memfd_path(&self) -> Option<std::path::PathBuf> {
        let fd = self.mem.region().memfd_raw()?;
        Some(format!("/proc/{}/fd/{}", crate::sys::pid(), fd).into())
    }

    /// The region this ring lives in.
    pub fn region(&self) -> &Region {
        self.mem.region()
    }

    fn validate(region: std::sync::Arc<Region>) -> Result<Self, RingError> {
        let len = region.len() as u64;
        let probe = RingMem::new_header_only(region.clone());
        let magic = probe.header(OFF_MAGIC).load(Acquire);
        if magic != MAGIC {
            return Err(RingError::BadMagic { found: magic });
        }
        let version = probe.header(OFF_VERSION).load(Relaxed);
        if version != LAYOUT_VERSION {
            return Err(RingError::Version { found: version });
        }
        let align = probe.header(OFF_ALIGN).load(Relaxed);
        if align != FRAME_ALIGN as u64 {
            return Err(RingError::BadHeader {
                field: "frame alignment",
                found: align,
                expected: FRAME_ALIGN as u64,
            });
        }
        let header_len = probe.header(OFF_HEADER_LEN).load(Relaxed);
        if header_len != HEADER_LEN as u64 {
            return Err(RingError::BadHeader {
                field: "header length",
                found: header_len,
                expected: HEADER_LEN as u64,
            });
        }
        let cap = check_capacity(probe.header(OFF_CAPACITY).load(Relaxed))?;
        let expected = (HEADER_LEN + cap) as u64;
        if len != expected {
            return Err(RingError::SizeMismatch { len, expected });
        }
        let tail = probe.header(OFF_PRODUCER + ROLE_POSITION).load(Relaxed);
        let head = probe.header(OFF_CONSUMER + ROLE_POSITION).load(Relaxed);
        check_positions(tail, head, cap)?;
        Ok(Self {
            mem: RingMem::new(region, cap),
            capacity: cap,
        })
    }
}

#[cfg(loom)]
impl Ring {
    /// A ring in model-checked memory (`--cfg loom` only).
    pub fn model(capacity: usize) -> Result<(Producer, Consumer), RingError> {
        let cap = check_capacity(capacity as u64)?;
        let ring = Self::init(RingMem::new_model(cap), cap);
        Ok((ring.producer()?, ring.consumer()?))
    }
}

/// Positions at or past this are corrupt: a ring would have to carry 2^63 bytes (years
/// at memory bandwidth) to get there. Keeping positions below it means the position
/// arithmetic of a half (always `position + frame size`) cannot overflow.
const MAX_POSITION: u64 = 1 << 63;

/// Checks a pair of positions read from the header, from any peer: both multiples of the
/// frame alignment (data words are read at `position & mask`, which must be aligned),
/// `head <= tail <= head + capacity`, and below [`MAX_POSITION`].
fn check_positions(tail: u64, head: u64, capacity: usize) -> Result<(), RingError> {
    let reason = if head > tail || tail - head > capacity as u64 {
        "consumer position outside the producer's range"
    } else if !tail.is_multiple_of(FRAME_ALIGN as u64) || !head.is_multiple_of(FRAME_ALIGN as u64) {
        "position not a multiple of the frame alignment"
    } else if tail >= MAX_POSITION {
        "position past the largest a ring reaches"
    } else {
        return Ok(());
    };
    Err(RingError::Corrupt {
        position: head,
        reason,
    })
}

fn section(role: Role) -> usize {
    match role {
        Role::Producer => OFF_PRODUCER,
        Role::Consumer => OFF_CONSUMER,
    }
}

fn peer_state(mem: &RingMem, section: usize, now_ns: u64, timeout_ns: u64) -> PeerState {
    match mem.header(section + ROLE_STATE).load(Acquire) {
        STATE_VACANT => PeerState::NotAttached,
        STATE_ATTACHED => {
            let pid = mem.header(section + ROLE_PID).load(Relaxed);
            // A pid that does not fit a pid is no process (not truncated into another's).
            if pid != 0 && !u32::try_from(pid).is_ok_and(crate::sys::pid_alive) {
                return PeerState::Gone;
            }
            let beat = mem.header(section + ROLE_HEARTBEAT).load(Relaxed);
            let age_ns = now_ns.saturating_sub(beat);
            if beat != 0 && timeout_ns != 0 && age_ns > timeout_ns {
                PeerState::Unresponsive { age_ns }
            } else {
                PeerState::Active
            }
        }
        STATE_BROKEN => PeerState::Broken,
        _ => PeerState::Closed,
    }
}

fn close(mem: &RingMem, section: usize, broken: bool) {
    let state = if broken { STATE_BROKEN } else { STATE_CLOSED };
    // Release: a peer that reads "closed" with acquire has seen everything published.
    mem.header(section + ROLE_STATE).store(state, Release);
}

/// The writing half of a ring. `Send`, not `Sync`: one thread writes at a time.
///
/// Performance contract: `try_claim` + `commit` touch only the producer's own cache lines
/// and the data lines being written, unless the cached consumer position says the ring
/// is full; `publish` is one release store (plus one relaxed store of the monitoring
/// position to the producer's own line). No allocation, no syscall.
#[derive(Debug)]
pub struct Producer {
    mem: RingMem,
    mask: u64,
    capacity: u64,
    max_payload: usize,
    /// Position after the last committed frame. Only touched by the producing thread.
    tail: u64,
    /// Position up to which frames are visible to the consumer.
    published: u64,
    /// Last `head` read from the consumer.
    head_cache: u64,
    /// Header of the first committed, unpublished frame (0 if none).
    pending_header: u64,
    /// Its data offset.
    pending_off: usize,
    /// Close as broken rather than closed (see `break_off`).
    broken: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl Producer {
    /// Largest payload a frame may have.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Reserves a frame of `len` payload bytes to be written in place.
    ///
    /// `Err(ClaimError::Full)` is backpressure: nothing changed, try again later.
    #[inline]
    pub fn try_claim(&mut self, len: usize, ty: FrameType) -> Result<Claim<'_>, ClaimError> {
        if len > self.max_payload {
            return Err(ClaimError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        let size = frame_size(len);
        let off = (self.tail & self.mask) as usize;
        let to_end = self.capacity as usize - off;
        let pad = if size > to_end { to_end } else { 0 };
        // The frame, the padding before it, and the zero-ahead word after it.
        let need = (pad + size + FRAME_HEADER_LEN) as u64;
        // Occupancy first: `head_cache <= published <= tail` (checked when the half was
        // taken and on every refresh), so nothing here wraps, whatever the positions.
        debug_assert!(self.head_cache <= self.tail);
        if self.tail - self.head_cache + need > self.capacity {
            self.refresh_head()?;
            if self.tail - self.head_cache + need > self.capacity {
                return Err(ClaimError::Full);
            }
        }
        if pad > 0 {
            self.put_header(
                off,
                frame_header(FrameType::Padding, pad - FRAME_HEADER_LEN),
            );
            // Zero ahead: the next header word (offset 0) must read as "nothing yet".
            self.mem.word(0).store(0, Relaxed);
            self.tail += pad as u64;
        }
        Ok(Claim {
            off: (self.tail & self.mask) as usize,
            producer: self,
            len,
            ty,
        })
    }

    #[cold]
    fn refresh_head(&mut self) -> Result<(), ClaimError> {
        // Acquire: the consumer's reads of released frames happen before we overwrite them.
        let head = self.mem.header(OFF_CONSUMER + ROLE_POSITION).load(Acquire);
        if head < self.head_cache || head > self.published {
            return Err(ClaimError::Corrupt { head });
        }
        self.head_cache = head;
        Ok(())
    }

    /// Stores a frame header, or holds it back if it heads the unpublished batch.
    #[inline(always)]
    fn put_header(&mut self, off: usize, header: u64) {
        if self.tail == self.published {
            self.pending_header = header;
            self.pending_off = off;
        } else {
            // Relaxed: made visible by the release store of the batch's first header.
            self.mem.word(off).store(header, Relaxed);
        }
    }

    /// Makes every committed frame visible to the consumer with one release store.
    #[inline]
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // Release: the payloads, the later headers of the batch and the zero-ahead words
        // written before this store are visible to a consumer that acquires this header.
        self.mem
            .word(self.pending_off)
            .store(self.pending_header, Release);
        // Monitoring only (occupancy); nobody reads data based on it.
        self.mem
            .header(OFF_PRODUCER + ROLE_POSITION)
            .store(self.tail, Relaxed);
        self.published = self.tail;
        self.pending_header = 0;
    }

    /// Claims, copies `payload`, commits and publishes: one frame, visible at once.
    #[inline]
    pub fn try_send(&mut self, ty: FrameType, payload: &[u8]) -> Result<(), ClaimError> {
        self.try_push(ty, payload)?;
        self.publish();
        Ok(())
    }

    /// Claims, copies `payload` and commits without publishing (for batches).
    #[inline]
    pub fn try_push(&mut self, ty: FrameType, payload: &[u8]) -> Result<(), ClaimError> {
        let mut claim = self.try_claim(payload.len(), ty)?;
        claim.write(0, payload);
        claim.commit();
        Ok(())
    }

    /// Bytes committed but not yet published.
    pub fn unpublished_bytes(&self) -> u64 {
        self.tail - self.published
    }

    /// Free bytes by the cached consumer position (a lower bound; refreshes the cache if
    /// `refresh`).
    pub fn free_bytes(&mut self, refresh: bool) -> Result<u64, ClaimError> {
        if refresh {
            self.refresh_head()?;
        }
        Ok(self.capacity - (self.tail - self.head_cache))
    }

    /// Records that this side is alive (CLOCK_MONOTONIC ns); call from housekeeping.
    pub fn heartbeat(&self, now_ns: u64) {
        self.mem
            .header(OFF_PRODUCER + ROLE_HEARTBEAT)
            .store(now_ns.max(1), Relaxed);
    }

    /// How the consumer is doing.
    pub fn consumer_state(&self, now_ns: u64, timeout_ns: u64) -> PeerState {
        peer_state(&self.mem, OFF_CONSUMER, now_ns, timeout_ns)
    }

    /// Closes this half as broken (what was published stays readable): for a network
    /// transport whose connection failed, so that the consumer sees
    /// [`PeerState::Broken`] and can say so.
    pub fn break_off(mut self) {
        self.broken = true;
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.publish();
        close(&self.mem, OFF_PRODUCER, self.broken);
    }
}

/// A frame being written in place. Dropping it without [`Claim::commit`] abandons it.
#[derive(Debug)]
pub struct Claim<'a> {
    producer: &'a mut Producer,
    off: usize,
    len: usize,
    ty: FrameType,
}

impl Claim<'_> {
    /// Payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `src` into the payload at `at`.
    ///
    /// # Panics
    /// If `at..at + src.len()` is not within the claimed length (a caller bug, not peer
    /// input). Decided without overflow: a huge `at` does not wrap into a passing check.
    #[inline(always)]
    pub fn write(&mut self, at: usize, src: &[u8]) {
        assert!(
            range_within(at, src.len(), self.len),
            "write past the claimed frame"
        );
        // SAFETY: the claimed range lies within [tail, tail + size), which the space check
        // in `try_claim` proved free: the consumer does not read it until it is published.
        unsafe {
            self.producer
                .mem
                .write_bytes(self.off + FRAME_HEADER_LEN + at, src)
        };
    }

    /// Shortens the frame to `len` payload bytes (for encoders that claim their maximum).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Commits the frame: it becomes visible with the next [`Producer::publish`].
    #[inline(always)]
    pub fn commit(self) {
        let p = self.producer;
        let size = frame_size(self.len) as u64;
        let next = p.tail + size;
        // Zero ahead: the consumer must find "nothing yet" at the next header position.
        // Relaxed: ordered before the consumer's read by the batch's release store.
        p.mem.word((next & p.mask) as usize).store(0, Relaxed);
        p.put_header(self.off, frame_header(self.ty, self.len));
        p.tail = next;
    }
}

#[cfg(not(loom))]
impl Claim<'_> {
    /// The payload, to be written in place.
    #[inline(always)]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let off = self.off + FRAME_HEADER_LEN;
        // `try_claim` placed the whole frame before the end of the data area.
        debug_assert!(range_within(off, self.len, self.producer.capacity()));
        // SAFETY: in bounds (argued above); as in `write`, the range is owned by the
        // producer until published, and the returned borrow ends before `commit` (which
        // consumes the claim).
        unsafe { std::slice::from_raw_parts_mut(self.producer.mem.data_ptr(off), self.len) }
    }
}

/// The reading half of a ring. `Send`, not `Sync`.
///
/// Performance contract: an empty poll is one acquire load of a data line; reading
/// touches only the data lines of the frames read; `release` is one release store.
#[derive(Debug)]
pub struct Consumer {
    mem: RingMem,
    mask: u64,
    capacity: usize,
    /// Position released to the producer.
    head: u64,
    /// Position after the last frame read. Only touched by the consuming thread.
    read: u64,
    /// Where the frame returned by the last `try_read` starts; `read` if it returned none.
    last: u64,
    /// Close as broken rather than closed (see `break_off`).
    broken: bool,
    _not_sync: PhantomData<Cell<()>>,
}

impl Consumer {
    /// Data capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The next frame, if one is published. The frame stays valid (its bytes are not
    /// overwritten) until [`Consumer::release`].
    #[inline]
    pub fn try_read(&mut self) -> Result<Option<Frame<'_>>, RingError> {
        loop {
            let off = (self.read & self.mask) as usize;
            // Acquire: pairs with the producer's release in `publish`.
            let header = self.mem.word(off).load(Acquire);
            if header == 0 {
                // Nothing was returned, so there is nothing for `unread` to put back.
                self.last = self.read;
                return Ok(None);
            }
            let len = (header & 0xffff_ffff) as usize;
            let size = frame_size(len);
            let ty = FrameType::from_u8((header >> 32) as u8);
            let corrupt = |reason| RingError::Corrupt {
                position: self.read,
                reason,
            };
            if header >> 40 != 0 {
                return Err(corrupt("reserved frame header bits set"));
            }
            // No frame the producer writes exceeds half the data area (padding included:
            // it is shorter than the frame that did not fit), so a larger one is corrupt;
            // this also keeps a forged frame from carrying `read` a whole lap.
            if size > self.capacity / 2 {
                return Err(corrupt("frame larger than half the data area"));
            }
            if size > self.capacity - off {
                return Err(corrupt("frame extends past the end of the data area"));
            }
            match ty {
                Some(FrameType::Padding) => {
                    if off + size != self.capacity {
                        return Err(corrupt("padding frame does not end at the data area's end"));
                    }
                    self.read += size as u64;
                }
                Some(ty) => {
                    self.last = self.read;
                    self.read += size as u64;
                    return Ok(Some(Frame {
                        mem: &self.mem,
                        off: off + FRAME_HEADER_LEN,
                        len,
                        ty,
                    }));
                }
                None => return Err(corrupt("unknown frame type")),
            }
        }
    }

    /// Puts back the frame the last `try_read` returned, so that the next `try_read`
    /// returns it again (for a reader that found it could not take it yet). Has no
    /// effect after a `try_read` that returned no frame, nor on frames already released.
    pub fn unread(&mut self) {
        self.read = self.last.max(self.head);
    }

    /// Whether a frame (or padding) is published at the read position, without reading it.
    pub fn has_frame(&self) -> bool {
        let off = (self.read & self.mask) as usize;
        // Acquire: as in `try_read`.
        self.mem.word(off).load(Acquire) != 0
    }

    /// Hands every frame read so far back to the producer with one release store.
    #[inline]
    pub fn release(&mut self) {
        if self.read != self.head {
            // Release: our reads of those frames happen before the producer reuses them.
            self.mem
                .header(OFF_CONSUMER + ROLE_POSITION)
                .store(self.read, Release);
            self.head = self.read;
        }
    }

    /// Reads up to `limit` frames, calling `f` on each, then releases them with one store.
    /// Returns how many frames were read.
    #[inline]
    pub fn poll<F: FnMut(Frame<'_>)>(
        &mut self,
        limit: usize,
        mut f: F,
    ) -> Result<usize, RingError> {
        let mut n = 0;
        while n < limit {
            match self.try_read()? {
                Some(frame) => {
                    f(frame);
                    n += 1;
                }
                None => break,
            }
        }
        self.release();
        Ok(n)
    }

    /// Records that this side is alive (CLOCK_MONOTONIC ns); call from housekeeping.
    pub fn heartbeat(&self, now_ns: u64) {
        self.mem
            .header(OFF_CONSUMER + ROLE_HEARTBEAT)
            .store(now_ns.max(1), Relaxed);
    }

    /// How the producer is doing. `Closed` with no frame left to read means the stream
    /// ended; `Gone` means the producer's process died.
    pub fn producer_state(&self, now_ns: u64, timeout_ns: u64) -> PeerState {
        peer_state(&self.mem, OFF_PRODUCER, now_ns, timeout_ns)
    }

    /// Closes this half as broken: for a network transport whose connection failed, so
    /// that the producer sees [`PeerState::Broken`] and can say so.
    pub fn break_off(mut self) {
        self.broken = true;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.release();
        close(&self.mem, OFF_CONSUMER, self.broken);
    }
}

/// A frame read in place.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    mem: &'a RingMem,
    off: usize,
    len: usize,
    ty: FrameType,
}

impl Frame<'_> {
    /// What the frame carries.
    pub fn frame_type(&self) -> FrameType {
        self.ty
    }

    /// Payload length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the payload's first `dst.len()` bytes into `dst`.
    pub fn copy_to(&self, dst: &mut [u8]) {
        let n = dst.len().min(self.len);
        // SAFETY: the frame was acquired and is not released while `self` borrows the
        // consumer, so the producer does not write these bytes.
        unsafe { self.mem.read_bytes(self.off, &mut dst[..n]) };
    }
}

#[cfg(not(loom))]
impl<'a> Frame<'a> {
    /// The payload, in place.
    #[inline(always)]
    pub fn payload(&self) -> &'a [u8] {
        // In bounds: `try_read` refused a frame reaching past the end of the data area.
        debug_assert!(range_within(self.off, self.len, self.mem.capacity()));
        // SAFETY: in bounds (argued above); the frame was acquired and is not released
        // while the consumer is borrowed for 'a, so the bytes are stable.
        unsafe { std::slice::from_raw_parts(self.mem.data_ptr(self.off), self.len) }
    }
}

/// Removes the ring files in `dir` whose names start with `prefix` and that no live
/// process uses any more: every side either never attached, closed, or belongs to a
/// process that died (a TaskManager that was SIGKILLed leaves its rings behind). Files
/// younger than `min_age` are left alone, so that a ring whose creator has already
/// finished but whose other side is still on its way to open it survives. Files that
/// are not rings of this layout are left alone too. Returns how many were removed.
#[cfg(not(loom))]
pub fn sweep_dead_rings(
    dir: &std::path::Path,
    prefix: &str,
    min_age: std::time::Duration,
) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let path = e.path();
        let old_enough = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= min_age);
        if !old_enough {
            continue;
        }
        let dead = match Ring::attach_file(&path) {
            Ok(r) => !r.has_live_side(),
            Err(_) => false,
        };
        if dead && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
