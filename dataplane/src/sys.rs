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

/// Lets the calling thread run on every CPU the process's main thread may use (undoing
/// the pin a thread inherits when a pinned slot thread spawned it).
pub fn unpin_current() -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty CPU set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // The main thread's mask (getpid() names it), copied by the kernel into `set`.
    // SAFETY: `set` is a writable cpu_set_t of `size` bytes.
    if unsafe { libc::sched_getaffinity(libc::getpid(), size, &mut set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `set` was filled by the kernel above; 0 names the calling thread.
    if unsafe { libc::sched_setaffinity(0, size, &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The timer slack for threads that park between duty cycles: 1 ns, the least the kernel
/// takes (0 would mean "back to the default").
pub const PARKING_TIMER_SLACK_NS: u64 = 1;

/// Sets the calling thread's timer slack: how much later than asked the kernel may end
/// the thread's timed sleeps, to batch wake-ups. The default, 50 µs, makes every short
/// park (an idle strategy's `park` or `backoff`) last at least that long. Threads that
/// poll and park (slot threads, the network agent's) set [`PARKING_TIMER_SLACK_NS`].
/// `ns` must be at least 1: the kernel takes 0 as "restore the default".
pub fn set_timer_slack_ns(ns: u64) -> std::io::Result<()> {
    if ns == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a timer slack of 0 restores the default; the least is 1 ns",
        ));
    }
    let ns = libc::c_ulong::try_from(ns)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "slack too large"))?;
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long and changes only the calling
    // thread's timer slack; the unused arguments are passed as zero.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0 as libc::c_ulong, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's timer slack in nanoseconds.
pub fn timer_slack_ns() -> std::io::Result<u64> {
    // SAFETY: PR_GET_TIMERSLACK takes no argument and only reads the calling thread's
    // timer slack, which it returns.
    let rc = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0 as libc::c_ulong, 0, 0, 0) };
    u64::try_from(rc).map_err(|_| std::io::Error::last_os_error())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_slack_is_set_per_thread_and_read_back() {
        let (before, after, refused) = std::thread::spawn(|| {
            let before = timer_slack_ns().unwrap();
            set_timer_slack_ns(PARKING_TIMER_SLACK_NS).unwrap();
            let after = timer_slack_ns().unwrap();
            let refused = set_timer_slack_ns(0).is_err();
            (before, after, refused)
        })
        .join()
        .unwrap();
        assert_eq!(after, PARKING_TIMER_SLACK_NS, "was {before} ns");
        assert!(refused, "0 would restore the default, not set none");
        // Other threads keep their own.
        assert_eq!(timer_slack_ns().unwrap(), before);
    }
}
