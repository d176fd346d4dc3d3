//! Byte streams under the protocol, shared by the client and the daemon:
//! Unix sockets, TCP, and TLS over TCP (rustls), each split into a
//! [`Reader`] and a [`Writer`] so that a reader task and a writer task can
//! own one each.
//!
//! interprocess implements `AsyncRead`/`AsyncWrite` for `&Stream`, so a Unix
//! stream is shared through an `Arc` (no lock); TCP uses tokio's owned halves
//! (no lock); TLS keeps one session, so its halves share it through
//! `tokio::io::split`.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use interprocess::local_socket::{tokio::prelude::*, ConnectOptions, GenericFilePath};
use interprocess::os::unix::uds_local_socket::tokio as uds;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

/// A connected Unix stream socket, from [`connect_unix`] or
/// [`UnixListener::accept`]. (interprocess's stream inside; which crate
/// provides it is not part of the API.)
#[derive(Debug)]
pub struct UnixStream(uds::Stream);

impl AsFd for UnixStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// A listening Unix stream socket that accepts [`UnixStream`]s (the
/// daemon's side; it binds the socket itself, with the permissions it
/// wants, and hands it over).
#[derive(Debug)]
pub struct UnixListener(uds::Listener);

impl UnixListener {
    /// Serves `fd`: a bound, listening, non-blocking Unix stream socket.
    /// Must run inside a tokio runtime.
    pub fn from_fd(fd: OwnedFd) -> io::Result<UnixListener> {
        uds::Listener::try_from(fd)
            .map(UnixListener)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Waits for the next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        use interprocess::local_socket::traits::tokio::Listener as _;
        self.0.accept().await.map(UnixStream)
    }
}

/// How often an idle TCP connection is probed by the kernel (keep-alive).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// The receiving side of a connection.
pub struct Reader(Box<dyn AsyncRead + Send + Unpin>);

/// The sending side of a connection.
pub struct Writer {
    inner: Box<dyn AsyncWrite + Send + Unpin>,
    /// The socket, for shutting down both directions; open while `inner` lives.
    fd: RawFd,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reader")
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("fd", &self.fd).finish()
    }
}

/// Shares a Unix stream between the two halves.
struct SharedUnix(Arc<uds::Stream>);

impl AsyncRead for SharedUnix {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedUnix {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut &*self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut &*self.0).poll_shutdown(cx)
    }
}

/// Splits a Unix stream.
pub fn split_unix(stream: UnixStream) -> (Reader, Writer) {
    let fd = stream.as_fd().as_raw_fd();
    let s = Arc::new(stream.0);
    (
        Reader(Box::new(SharedUnix(s.clone()))),
        Writer {
            inner: Box::new(SharedUnix(s)),
            fd,
        },
    )
}

/// Splits a TCP stream (after [`configure_tcp`]).
pub fn split_tcp(stream: TcpStream) -> (Reader, Writer) {
    let fd = stream.as_raw_fd();
    let (r, w) = stream.into_split();
    (
        Reader(Box::new(r)),
        Writer {
            inner: Box::new(w),
            fd,
        },
    )
}

/// Splits a stream layered over the socket `fd` (TLS).
pub fn split_layered<S>(stream: S, fd: RawFd) -> (Reader, Writer)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    (
        Reader(Box::new(r)),
        Writer {
            inner: Box::new(w),
            fd,
        },
    )
}

/// Sets TCP_NODELAY (frames are already batched) and kernel keep-alive.
pub fn configure_tcp(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE / 3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Default send buffer (`SO_SNDBUF`) of local connections, both the
/// client's and the daemon's side: 1 MiB. The kernel's default (about
/// 208 KiB) let a publisher, the daemon and a subscriber stall one another
/// often enough to cost 1 -> 1 streams of 128 B messages about 15% of their
/// rate.
pub const DEFAULT_SOCKET_BUFFER: usize = 1 << 20;

/// Sets the send buffer (`SO_SNDBUF`) of socket `fd` to `bytes`: how much
/// may be in flight towards the peer before writes wait. 0 leaves the
/// system default. The kernel caps it at `net.core.wmem_max` (and doubles
/// it for its bookkeeping). Best effort: a failure is logged, not returned.
pub fn set_send_buffer(fd: impl AsFd, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let bytes = bytes.min(i32::MAX as usize / 2);
    if let Err(e) = nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBuf, &bytes) {
        tracing::debug!("setting SO_SNDBUF to {bytes}: {e}");
    }
}

/// The uid of the process at the other end of a Unix socket, from the
/// kernel (`SO_PEERCRED`).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}

/// Connects to a Unix socket path through interprocess.
pub async fn connect_unix(path: &Path) -> io::Result<UnixStream> {
    let name = path.to_fs_name::<GenericFilePath>()?;
    ConnectOptions::new()
        .name(name)
        .connect_tokio_as::<uds::Stream>()
        .await
        .map(UnixStream)
}

impl Writer {
    /// Shuts down both directions of the socket, so the reader's pending read
    /// ends too (used when a write fails).
    pub fn shutdown_both(&self) {
        // Fails only if the socket is already disconnected, which is the goal.
        let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Writer {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
