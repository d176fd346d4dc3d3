//! Where the `busd` binary meets the system through `unsafe`, the only
//! place in the workspace that does: the allocator, and the sockets
//! systemd passes.
//!
//! ## The allocator
//!
//! mimalloc, and handing back what closed connections leave behind.
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
//! once per [`COLLECT_EVERY`]; RSS then returns to where it was before
//! (the faults test bounds it). Purging every freed page at once
//! (`MIMALLOC_PURGE_DELAY=0`) would do it too, at 0.45-0.76x the
//! throughput of the standard workloads.

use std::{
    cell::Cell,
    os::fd::{FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Least time between two collections by one worker thread.
const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by each worker thread as it parks: at most once per
/// [`COLLECT_EVERY`], returns the thread's free pages to the system.
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
