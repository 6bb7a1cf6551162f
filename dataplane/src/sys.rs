//! Thin, safe wrappers over the few kernel calls the data plane makes off the hot path.
#![allow(unsafe_code)]

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process on the host, so a
/// heartbeat written by one process can be aged by another. A vDSO call, not a syscall.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// The CPU the calling thread runs on now, or `None` if the kernel does not say.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads the calling thread's state.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// The effective user id of this process: the owner of the files it creates.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail, and only reads process state.
    unsafe { libc::geteuid() }
}

/// This process's id.
pub fn pid() -> u32 {
    std::process::id()
}

/// Whether a process with this id exists (it may be a zombie). Uses `kill(pid, 0)`, which
/// sends nothing; a process we may not signal (EPERM) still exists.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 performs only the existence and permission checks.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
