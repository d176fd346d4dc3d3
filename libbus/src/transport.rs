//! Byte streams under the protocol, shared by the client and the daemon:
//! Unix sockets, TCP, and TLS over TCP (rustls), each split into a
//! [`Reader`] and a [`Writer`] so that a reader task and a writer task can
//! own one each.
//!
//! interprocess implements `AsyncRead`/`AsyncWrite` for `&Stream`, so a Unix
//! stream is shared through an `Arc` (no lock); TCP uses tokio's owned halves
//! (no lock); TLS keeps one session, so its halves share it through
//! `tokio::io::split`.
//!
//! A Unix stream is read with `recvmsg` (`sys::recv_with_fds`):
//! file descriptors sent with the bytes (`SCM_RIGHTS`, by
//! [`Writer::send_with_fds`]) wait in the reader's [`ReceivedFds`] for the
//! frame that claims them. (A plain `read` would have the kernel close them.)

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::Duration,
};

use interprocess::local_socket::{tokio::prelude::*, ConnectOptions, GenericFilePath};
use interprocess::os::unix::uds_local_socket::tokio as uds;
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// A connected Unix stream socket, from [`connect_unix`] or
/// [`UnixListener::accept`]. (interprocess's stream inside; which crate
/// provides it is not part of the API.)
#[derive(Debug)]
pub struct UnixStream(uds::Stream);

impl UnixStream {
    /// A connected pair: ours, and the peer's end as a plain blocking
    /// socket (for tests of what goes over the wire). Needs a runtime.
    #[cfg(test)]
    pub(crate) fn pair() -> io::Result<(UnixStream, std::os::unix::net::UnixStream)> {
        let (ours, peer) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        Ok((UnixStream(uds::Stream::try_from(OwnedFd::from(ours))?), peer))
    }
}

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
pub struct Reader {
    inner: Box<dyn AsyncRead + Send + Unpin>,
    /// Descriptors received with the bytes (Unix sockets only).
    fds: Option<ReceivedFds>,
}

/// The sending side of a connection.
pub struct Writer {
    inner: Box<dyn AsyncWrite + Send + Unpin>,
    /// The socket, for shutting down both directions; open while `inner` lives.
    fd: RawFd,
    /// The Unix socket, for sending descriptors.
    unix: Option<Arc<uds::Stream>>,
}

/// File descriptors a Unix connection received, in the order they came,
/// until the frames that carry them claim them ([`take`](Self::take)).
/// What no frame claims is closed with it. At most
/// [`set_limit`](Self::set_limit) may wait (0 unless raised: a peer
/// that sends descriptors where none are expected ends its connection with
/// a read error, and the descriptors are closed at once).
#[derive(Debug, Clone, Default)]
pub struct ReceivedFds(Arc<FdQueue>);

#[derive(Debug, Default)]
struct FdQueue {
    fds: Mutex<VecDeque<OwnedFd>>,
    /// How many `fds` holds, readable without the lock.
    count: std::sync::atomic::AtomicUsize,
    limit: std::sync::atomic::AtomicUsize,
}

impl ReceivedFds {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<OwnedFd>> {
        self.0.fds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next `n` descriptors, or `None` (taking none) if fewer came.
    pub fn take(&self, n: usize) -> Option<Vec<OwnedFd>> {
        let mut q = self.lock();
        let taken = (q.len() >= n).then(|| q.drain(..n).collect());
        self.0.count.store(q.len(), std::sync::atomic::Ordering::Relaxed);
        taken
    }

    /// Lets up to `n` descriptors wait for their frames.
    pub fn set_limit(&self, n: usize) {
        self.0.limit.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Queues what a read brought; an error (and every descriptor closed)
    /// if that makes more than the limit wait.
    fn add(&self, got: &mut VecDeque<OwnedFd>) -> io::Result<()> {
        let mut q = self.lock();
        q.extend(got.drain(..));
        self.0.count.store(q.len(), std::sync::atomic::Ordering::Relaxed);
        let limit = self.0.limit.load(std::sync::atomic::Ordering::Relaxed);
        if q.len() > limit {
            let n = q.len();
            q.clear();
            self.0.count.store(0, std::sync::atomic::Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{n} file descriptors received that no frame carries (at most {limit} may wait)"),
            ));
        }
        Ok(())
    }

    /// How many wait.
    pub fn len(&self) -> usize {
        self.0.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// None wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every one waiting.
    pub fn clear(&self) {
        self.lock().clear();
        self.0.count.store(0, std::sync::atomic::Ordering::Relaxed);
    }
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

/// A Unix connection's socket, written without waiting: a caller that
/// finds the output idle sends its frame itself rather than wake the
/// writer task (one hand-over fewer on a request's path).
#[derive(Clone)]
pub struct DirectWriter(Arc<uds::Stream>);

impl DirectWriter {
    /// Writes what the socket takes of `bytes` now, without waiting
    /// (`WouldBlock` if nothing).
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.0.inner().try_write(bytes)
    }

    /// Waits until the runtime knows the socket writable (a try_write
    /// before that finds it not ready; the writer task's writes tell it).
    #[cfg(test)]
    pub(crate) async fn writable(&self) -> io::Result<()> {
        self.0.inner().writable().await
    }
}

impl std::fmt::Debug for DirectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectWriter")
    }
}

/// Reads a Unix stream with `recvmsg`, keeping the descriptors that come.
struct UnixReader {
    stream: Arc<uds::Stream>,
    /// Room for the control messages of one `recvmsg`.
    control: Vec<u64>,
    /// What came, shared with [`Reader::received_fds`].
    fds: ReceivedFds,
    /// Descriptors of the current read, moved to `fds` under one lock.
    got: VecDeque<OwnedFd>,
}

impl AsyncRead for UnixReader {
    /// Each read is one `recvmsg`; readiness is cleared only by one that
    /// finds nothing (`EAGAIN`), not after a short read as tokio's own
    /// sockets do: that measured slower round trips (docs/performance.md,
    /// "Busy-CPU latency").
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let tokio = this.stream.inner();
            let read = tokio.try_io(Interest::READABLE, || {
                crate::sys::recv_with_fds(tokio.as_fd(), buf, &mut this.control, &mut this.got)
            });
            if !this.got.is_empty() {
                this.fds.add(&mut this.got)?;
            }
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(tokio.poll_read_ready(cx))?,
                other => return Poll::Ready(other.map(|_| ())),
            }
        }
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
    let fds = ReceivedFds::default();
    (
        Reader {
            inner: Box::new(UnixReader {
                stream: s.clone(),
                control: crate::sys::control_room(),
                fds: fds.clone(),
                got: VecDeque::new(),
            }),
            fds: Some(fds),
        },
        Writer {
            inner: Box::new(SharedUnix(s.clone())),
            fd,
            unix: Some(s),
        },
    )
}

/// Splits a TCP stream (after [`configure_tcp`]).
pub fn split_tcp(stream: TcpStream) -> (Reader, Writer) {
    let fd = stream.as_raw_fd();
    let (r, w) = stream.into_split();
    (
        Reader {
            inner: Box::new(r),
            fds: None,
        },
        Writer {
            inner: Box::new(w),
            fd,
            unix: None,
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
        Reader {
            inner: Box::new(r),
            fds: None,
        },
        Writer {
            inner: Box::new(w),
            fd,
            unix: None,
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

    /// The socket for writes that bypass this writer, on a Unix
    /// connection (see [`DirectWriter`]).
    pub fn direct(&self) -> Option<DirectWriter> {
        self.unix.clone().map(DirectWriter)
    }

    /// True if it can send file descriptors (a Unix socket).
    pub fn passes_fds(&self) -> bool {
        self.unix.is_some()
    }

    /// Sends a prefix of `bytes` (at least one byte), with `fds` attached
    /// to it (`SCM_RIGHTS`): the peer's reader receives them no later than
    /// that first byte. Returns how many bytes went; the caller writes the
    /// rest as usual. Anything written before must be flushed first. Only
    /// on a Unix socket (else `Unsupported`).
    pub async fn send_with_fds(&mut self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let Some(unix) = &self.unix else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "file descriptors pass only over Unix sockets",
            ));
        };
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let tokio = unix.inner();
        tokio
            .async_io(Interest::WRITABLE, || {
                let cmsg = [ControlMessage::ScmRights(&raw)];
                sendmsg::<()>(
                    tokio.as_raw_fd(),
                    &[io::IoSlice::new(bytes)],
                    &cmsg,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await
    }
}

impl Reader {
    /// Where the descriptors this connection receives wait (Unix sockets
    /// only).
    pub fn received_fds(&self) -> Option<ReceivedFds> {
        self.fds.clone()
    }
}

impl AsyncRead for Reader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pair() -> (UnixStream, UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let wrap = |s: std::os::unix::net::UnixStream| {
            s.set_nonblocking(true).unwrap();
            UnixStream(uds::Stream::try_from(OwnedFd::from(s)).unwrap())
        };
        (wrap(a), wrap(b))
    }

    /// A pipe holding `text`: its read end.
    fn pipe_with(text: &[u8]) -> OwnedFd {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, text).unwrap();
        r
    }

    fn read_all(fd: OwnedFd) -> Vec<u8> {
        let mut f = std::fs::File::from(fd);
        let mut out = vec![0u8; 64];
        let n = std::io::Read::read(&mut f, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[tokio::test]
    async fn descriptors_arrive_with_their_bytes_in_order() {
        let (a, b) = pair();
        let (_ar, mut aw) = split_unix(a);
        let (mut br, _bw) = split_unix(b);
        let fds = br.received_fds().unwrap();
        fds.set_limit(3);
        assert!(aw.passes_fds());
        let (one, two) = (pipe_with(b"one"), pipe_with(b"two"));
        assert_eq!(aw.send_with_fds(b"x", &[one.as_fd()]).await.unwrap(), 1);
        aw.write_all(b"plain").await.unwrap();
        assert_eq!(
            aw.send_with_fds(b"y", &[two.as_fd(), one.as_fd()]).await.unwrap(),
            1
        );
        drop((one, two));
        let mut got = Vec::new();
        while got.len() < 7 {
            let read = read_within(&mut br).await;
            assert!(!read.is_empty());
            got.extend(read);
        }
        assert_eq!(got, b"xplainy");
        assert_eq!(fds.len(), 3);
        assert!(fds.take(4).is_none(), "fewer than asked for: none taken");
        let first = fds.take(1).unwrap();
        let rest = fds.take(2).unwrap();
        assert!(fds.is_empty());
        assert_eq!(read_all(first.into_iter().next().unwrap()), b"one");
        let texts: Vec<Vec<u8>> = rest.into_iter().map(read_all).collect();
        // `one`'s pipe was read empty above; `two`'s still holds its text.
        assert_eq!(texts[0], b"two");
    }

    /// Reads into a buffer with room for more than is sent, so that every
    /// read is short; each must finish within a bound.
    async fn read_within(r: &mut Reader) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), r.read(&mut buf))
            .await
            .expect("a read waited for input that had already come")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn a_short_read_at_descriptors_does_not_wait_for_what_follows_them() {
        let (a, b) = pair();
        let (_ar, mut aw) = split_unix(a);
        let (mut br, _bw) = split_unix(b);
        br.received_fds().unwrap().set_limit(2);
        let (one, two) = (pipe_with(b"1"), pipe_with(b"2"));
        aw.send_with_fds(b"a", &[one.as_fd()]).await.unwrap();
        aw.write_all(b"bc").await.unwrap();
        aw.send_with_fds(b"d", &[two.as_fd()]).await.unwrap();
        aw.write_all(b"e").await.unwrap();
        // The kernel ends a read after each message's descriptors: a read
        // that stops short there must not wait for what is queued behind.
        let mut got = Vec::new();
        while got.len() < 5 {
            got.extend(read_within(&mut br).await);
        }
        assert_eq!(got, b"abcde");
        assert_eq!(br.received_fds().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn after_a_short_read_the_next_input_wakes_the_reader() {
        let (a, b) = pair();
        let (_ar, mut aw) = split_unix(a);
        let (mut br, _bw) = split_unix(b);
        for round in 0..100u8 {
            let write = async {
                tokio::task::yield_now().await;
                aw.write_all(&[round]).await.unwrap();
            };
            let (got, ()) = tokio::join!(read_within(&mut br), write);
            assert_eq!(got, [round]);
        }
    }

    #[tokio::test]
    async fn descriptors_beyond_the_limit_end_the_read() {
        let (a, b) = pair();
        let (_ar, mut aw) = split_unix(a);
        let (mut br, _bw) = split_unix(b);
        let fd = pipe_with(b"x");
        aw.send_with_fds(b"x", &[fd.as_fd()]).await.unwrap();
        let e = br.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("1 file descriptors"), "{e}");
        assert!(br.received_fds().unwrap().is_empty(), "closed at once");
    }

    #[tokio::test]
    async fn tcp_cannot_send_descriptors() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, _server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (r, mut w) = split_tcp(client.unwrap());
        assert!(r.received_fds().is_none());
        assert!(!w.passes_fds());
        let fd = pipe_with(b"x");
        let e = w.send_with_fds(b"x", &[fd.as_fd()]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
    }
}
