//! Where busd meets the system through `unsafe`, its only place that does
//! (libbus's is `libbus::sys`, reading sockets with their descriptors):
//! the allocator, the sockets systemd passes, and a peer's groups.
//!
//! ## The allocator
//!
//! mimalloc (the `busd` binary's global allocator), and handing back what
//! closed connections leave behind.
//! Every published message is one allocation made by the publisher's
//! reader and freed by the subscribers' writers, often on another thread;
//! glibc malloc spent ~15% of the daemon's time on that in `bus-cli bench
//! pubsub` (perf), mimalloc a fraction of it.
//!
//! mimalloc keeps the pages a thread freed until that same thread does
//! more allocator work, so a worker that goes quiet after many connections
//! close (each had a 64 KiB read buffer, say) would hold their memory
//! forever: 300 such connections left 24 MiB behind. Each worker thread
//! therefore collects its heap when it parks (runs out of work), at most
//! once per `COLLECT_EVERY`; RSS then returns to where it was before
//! (the faults test bounds it). Purging every freed page at once
//! (`MIMALLOC_PURGE_DELAY=0`) would do it too, at 0.45-0.76x the
//! throughput of the standard workloads.

use std::{
    cell::Cell,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

/// Least time between two collections by one worker thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by each worker thread as it parks: at most once per
/// `COLLECT_EVERY`, returns the thread's free pages to the system.
pub fn on_idle() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| {
        let due = last.get().is_none_or(|t| now.duration_since(t) >= COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        collect();
    }
}

/// Frees the calling thread's empty mimalloc pages back to the system.
#[allow(unsafe_code)]
fn collect() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions: it
    // walks the calling thread's own heap (mimalloc's, the global allocator
    // above) and returns pages that hold no live allocation; `force =
    // false` leaves abandoned pages of other threads alone. It is
    // thread-safe, and nothing of ours points into a free page.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

/// The listening sockets systemd passed to this process (socket
/// activation: `LISTEN_FDS` and `LISTEN_PID` naming this process), with
/// their names (`LISTEN_FDNAMES`), each owned here once. The variables are
/// then removed, so that no child takes the sockets for its own. Call it
/// first thing in `main`, before any other thread exists.
#[allow(unsafe_code)]
pub fn inherited_sockets() -> std::io::Result<Vec<(OwnedFd, String)>> {
    let passed = sd_notify::listen_fds_with_names()?;
    let owned = passed
        .map(|(fd, name)| {
            // SAFETY: `listen_fds_with_names` yields descriptors 3 up to
            // 3 + LISTEN_FDS only when LISTEN_PID names this process: the
            // ones systemd (or systemd-socket-activate) opened and passed
            // to us, open at exec and not otherwise used by this program,
            // which has opened nothing yet (this runs first in `main`).
            // Each is yielded once, so each gets exactly one owner, and
            // `OwnedFd` closes it exactly once.
            (unsafe { OwnedFd::from_raw_fd(fd) }, name)
        })
        .collect();
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    Ok(owned)
}

/// Most groups a peer can have (Linux's `NGROUPS_MAX`).
const MAX_GROUPS: usize = 65536;

/// The supplementary groups of the process at the other end of the Unix
/// socket `fd`, as the kernel recorded them when it connected
/// (`SO_PEERGROUPS`, Linux 4.13 and later). Unlike `/proc/PID/status`,
/// this cannot be raced by the peer exiting and its pid being reused.
#[allow(unsafe_code)]
pub fn peer_groups(fd: BorrowedFd<'_>) -> std::io::Result<Vec<u32>> {
    use nix::libc;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: `fd` is a valid open descriptor for the call (borrowed);
        // `groups` is an initialized buffer of exactly `len` bytes that
        // lives across the call, and the kernel writes at most `len` bytes
        // into it (and stores the length it needs, or wrote, in `len`).
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / GID;
        if r == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || needed <= groups.len() || needed > MAX_GROUPS {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    #[test]
    fn a_peer_has_this_process_groups() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut groups = super::peer_groups(a.as_fd()).unwrap();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        groups.sort_unstable();
        ours.sort_unstable();
        assert_eq!(groups, ours);
    }
}
