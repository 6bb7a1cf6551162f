//! Memory regions a ring can live in: anonymous (one process), a named file in /dev/shm,
//! or a memfd (shared by passing the descriptor or its `/proc/<pid>/fd/<n>` path).
#![allow(unsafe_code)]

use memmap2::{MmapOptions, MmapRaw};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where shared-memory rings are created by name.
pub const SHM_DIR: &str = "/dev/shm";

/// A mapped memory region. The mapping is unmapped (and a created file unlinked, if it
/// was asked to be) when the last owner drops it.
#[derive(Debug)]
pub struct Region {
    map: MmapRaw,
    kind: RegionKind,
    /// The file to remove on drop, once armed.
    unlink: std::sync::OnceLock<PathBuf>,
}

/// What backs a [`Region`].
#[derive(Debug)]
pub enum RegionKind {
    /// Private anonymous memory: threads of one process only.
    Anonymous,
    /// A file (normally on the /dev/shm tmpfs) that other processes open by path. A
    /// process that opens it can truncate it under the mapping, and the next access past
    /// the new end is a SIGBUS (see the ring module's trust boundary).
    File(PathBuf),
    /// A memfd; other processes reach it through an inherited descriptor or
    /// `/proc/<pid>/fd/<fd>`. Sealed against resizing (see [`Region::memfd`]).
    Memfd(OwnedFd),
}

impl Region {
    /// Zeroed anonymous memory of `len` bytes.
    pub fn anonymous(len: usize) -> std::io::Result<Self> {
        let map = MmapOptions::new().len(len).map_anon()?;
        Ok(Self {
            map: MmapRaw::from(map),
            kind: RegionKind::Anonymous,
            unlink: std::sync::OnceLock::new(),
        })
    }

    /// Creates a new zero-filled file of `len` bytes at `path` (failing if it exists) and
    /// maps it shared. With `unlink_on_drop`, the file is removed when the region drops.
    pub fn create_file(path: &Path, len: usize, unlink_on_drop: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let region = (|| {
            file.set_len(len as u64)?;
            MmapOptions::new().len(len).map_raw(&file)
        })();
        match region {
            Ok(map) => Ok(Self {
                map,
                kind: RegionKind::File(path.to_path_buf()),
                unlink: {
                    let u = std::sync::OnceLock::new();
                    if unlink_on_drop {
                        let _ = u.set(path.to_path_buf());
                    }
                    u
                },
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Maps an already opened file whole, shared. Its contents are not trusted: callers
    /// validate them. An empty file is refused (mmap cannot map zero bytes).
    pub fn map_file(file: &File, path: &Path) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        let len = usize::try_from(len).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "file larger than memory")
        })?;
        if len == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "empty file cannot be mapped",
            ));
        }
        let map = MmapOptions::new().len(len).map_raw(file)?;
        Ok(Self {
            map,
            kind: RegionKind::File(path.to_path_buf()),
            unlink: std::sync::OnceLock::new(),
        })
    }

    /// A new zero-filled memfd of `len` bytes, named `name` (for /proc listings only).
    ///
    /// Sealed once sized (`F_SEAL_SHRINK | F_SEAL_GROW`, then `F_SEAL_SEAL`): no process
    /// that reaches it, through the descriptor or its `/proc` path, can change its size,
    /// so a mapping of it never runs past the end of the file (which would be a SIGBUS on
    /// access), and no one can add other seals afterwards.
    pub fn memfd(name: &str, len: usize) -> std::io::Result<Self> {
        let cname = std::ffi::CString::new(name)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in name"))?;
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // SAFETY: `cname` is a valid NUL-terminated string; flags are valid memfd flags.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let file = File::from(owned);
        file.set_len(len as u64)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an int argument and only changes the file's seals;
        // `file` is an open memfd created with MFD_ALLOW_SEALING.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Self {
            map,
            kind: RegionKind::Memfd(OwnedFd::from(file)),
            unlink: std::sync::OnceLock::new(),
        })
    }

    /// Removes the file when this region drops (for a shared ring whose either side may
    /// be the last to let go). Armed only once the file is known to be a valid ring, so a
    /// look at a half-created file never removes it from under its creator.
    pub fn arm_unlink(&self) {
        if let RegionKind::File(p) = &self.kind {
            let _ = self.unlink.set(p.clone());
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// What backs the region.
    pub fn kind(&self) -> &RegionKind {
        &self.kind
    }

    /// The memfd's descriptor, if the region is a memfd.
    pub fn memfd_raw(&self) -> Option<RawFd> {
        match &self.kind {
            RegionKind::Memfd(fd) => Some(fd.as_raw_fd()),
            _ => None,
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Some(path) = self.unlink.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}
