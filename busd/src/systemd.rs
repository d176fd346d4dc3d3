//! Running under systemd: the listening sockets it passes (socket
//! activation) and what busd tells it (`sd_notify`): `READY=1` once it
//! accepts connections, `STATUS=` with the connection count, `STOPPING=1`
//! on shutdown, and `WATCHDOG=1` when the unit sets `WatchdogSec`.
//!
//! Taking ownership of the passed descriptors needs `unsafe`; the `busd`
//! binary does it (in its `sys.rs`) and hands them here as `OwnedFd`s.
//! Everything here is a no-op when busd was not started by systemd.

use std::{os::fd::OwnedFd, time::Duration};

use nix::sys::socket::{
    getsockname, getsockopt, sockopt, AddressFamily, SockType, SockaddrLike, SockaddrStorage,
};
use sd_notify::NotifyState;

use crate::Error;

/// Listening sockets inherited from systemd.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The Unix socket busd serves instead of binding its own.
    pub unix: Option<OwnedFd>,
    /// A TCP socket busd serves instead of binding `tcp` (TLS settings
    /// still apply).
    pub tcp: Option<OwnedFd>,
}

impl Inherited {
    /// Sorts the descriptors systemd passed, with their names
    /// (`FileDescriptorName=`), by address family: a Unix socket and an
    /// IPv4 or IPv6 one, at most one of each.
    pub fn sort(fds: Vec<(OwnedFd, String)>) -> Result<Self, Error> {
        let mut inherited = Self::default();
        for (fd, name) in fds {
            let family = getsockname::<SockaddrStorage>(std::os::fd::AsRawFd::as_raw_fd(&fd))
                .ok()
                .and_then(|a| a.family());
            let stream = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == SockType::Stream);
            let slot = match family {
                Some(AddressFamily::Unix) if stream => &mut inherited.unix,
                Some(AddressFamily::Inet | AddressFamily::Inet6) if stream => &mut inherited.tcp,
                other => {
                    return Err(Error::Config(format!(
                        "systemd passed a socket busd cannot serve (fd name {name:?}, family {other:?}, \
                         stream: {stream}): it takes a Unix stream socket and a TCP one"
                    )))
                }
            };
            if slot.replace(fd).is_some() {
                return Err(Error::Config(format!(
                    "systemd passed two sockets of one kind (the second named {name:?}); busd serves one Unix and one TCP socket"
                )));
            }
        }
        Ok(inherited)
    }
}

/// Tells systemd (if it started us) that busd accepts connections.
pub fn ready(connections: usize) {
    send(&[NotifyState::Ready, NotifyState::Status(&status(connections))]);
}

/// Tells systemd the current connection count (`STATUS=`).
pub fn report(connections: usize) {
    send(&[NotifyState::Status(&status(connections))]);
}

/// Tells systemd that busd is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Pets the watchdog.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to pet the watchdog: half its interval, if the unit set
/// `WatchdogSec` for this process.
pub fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn status(connections: usize) -> String {
    let s = if connections == 1 { "" } else { "s" };
    format!("serving {connections} connection{s}")
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!("telling systemd {state:?}: {e}");
    }
}
