//! Socket plumbing shared by the client and the daemon.
//!
//! interprocess implements `AsyncRead`/`AsyncWrite` for `&Stream`, so a reader
//! task and a writer task share one stream through an `Arc` instead of
//! splitting it. The socket closes when both halves are dropped.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use interprocess::local_socket::{tokio::prelude::*, ConnectOptions, GenericFilePath};
pub use interprocess::os::unix::uds_local_socket::tokio::Stream as UnixStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One direction of a shared Unix stream.
#[derive(Debug, Clone)]
pub struct Half(Arc<UnixStream>);

/// Splits `stream` into a read half and a write half.
pub fn split(stream: UnixStream) -> (Half, Half) {
    let s = Arc::new(stream);
    (Half(s.clone()), Half(s))
}

impl Half {
    /// Shuts down both directions of the socket, so the other half's pending
    /// read ends too (used when a write fails).
    pub fn shutdown_both(&self) {
        use std::os::fd::{AsFd, AsRawFd};
        let fd = self.0.as_fd().as_raw_fd();
        // Fails only if the socket is already disconnected, which is the goal.
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }
}

/// Connects to a Unix socket path through interprocess.
pub async fn connect_unix(path: &std::path::Path) -> io::Result<UnixStream> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    ConnectOptions::new().name(name).connect_tokio_as().await
}

impl AsyncRead for Half {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}
