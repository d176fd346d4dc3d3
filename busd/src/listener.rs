//! The Unix socket: safe creation, the stale-file check, peer credentials.
//!
//! The directory is created 0700, or must already be safe: not a symlink,
//! owned by the daemon's uid or root, and writable by no one else (unless
//! sticky, as `/tmp` is), so no other user can remove the socket and listen
//! in its place. Exactly one daemon serves a path: each takes an exclusive
//! lock on `PATH.lock` beside the socket, held for its life, before it
//! probes, removes or binds anything. The socket gets its mode (0600 by
//! default) through `fchmod` before `bind` (narrowed by the umask), then
//! exactly its mode after `bind`, and only then listens: it is never
//! reachable with other permissions than its own. An existing socket file
//! is probed with a connect: if a daemon answers, we refuse to start; if
//! nothing listens, the stale file is replaced.

use std::{
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use libbus::{proto::api::Peer, transport::UnixStream};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::{
    socket::{
        self, getsockopt, sockopt::PeerCredentials, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    },
    stat::{fchmod, Mode},
};

use crate::Error;

type Inner = libbus::transport::UnixListener;

/// A bound Unix socket listener. Removes its socket file when dropped (if the
/// file is still the one it created).
#[derive(Debug)]
pub struct UnixListener {
    inner: Inner,
    path: PathBuf,
    /// The socket file we created, (device, inode), and the exclusive lock
    /// on `PATH.lock`, held while this daemon lives (the lock file stays
    /// behind: removing it would let two daemons lock two different
    /// files). `None` for a socket inherited from systemd, which owns its
    /// file.
    created: Option<((u64, u64), Flock<File>)>,
}

/// Binds a listening socket at `path` whose file has exactly `mode` by the
/// time anyone can connect: the socket's own mode is set before `bind`
/// (the file bind creates has at most those bits, narrowed by the umask),
/// the file's exact mode after it, and only then does it `listen`. Until
/// then a connect is refused, never let in under a narrower or wider mode.
fn bind_exact(path: &Path, mode: u32) -> io::Result<Inner> {
    let addr = UnixAddr::new(path)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    fchmod(&fd, Mode::from_bits_truncate(mode))?;
    socket::bind(fd.as_raw_fd(), &addr)?;
    let listening = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .and_then(|()| socket::listen(&fd, Backlog::MAXCONN).map_err(io::Error::from))
        .and_then(|()| Inner::from_fd(fd));
    if listening.is_err() {
        // The file is ours (bind created it); do not leave it behind.
        let _ = std::fs::remove_file(path);
    }
    listening
}

/// Refuses a socket directory another user could use to take the socket
/// over: a symlink, one owned by another uid than ours or root's, or one
/// that others may write to without the sticky bit.
fn check_directory(dir: &Path) -> Result<(), Error> {
    let unsafe_dir = |why: String| Error::UnsafeDirectory {
        dir: dir.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|source| Error::Io {
        what: format!("inspecting {}", dir.display()),
        source,
    })?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symlink".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this daemon's uid {me} or root",
            meta.uid()
        )));
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return Err(unsafe_dir(format!(
            "others may write to it (mode {:o}) and it is not sticky",
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Takes the exclusive lock that makes this daemon the only one to serve
/// `path`: another daemon holding it means one already serves (or is
/// starting to serve) the path.
fn lock_path(path: &Path) -> Result<Flock<File>, Error> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_file = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&lock_file)
        .map_err(|source| Error::Io {
            what: format!("opening the lock file {}", lock_file.display()),
            source,
        })?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => Error::AlreadyRunning(path.to_owned()),
        e => Error::Io {
            what: format!("locking {}", lock_file.display()),
            source: e.into(),
        },
    })
}

impl UnixListener {
    /// Prepares the directory, takes the path's lock, clears a stale
    /// socket, binds and listens.
    pub fn bind(path: &Path, mode: u32) -> Result<Self, Error> {
        let io_err = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| Error::Io { what, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io_err("creating the directory of"))?;
            }
            check_directory(dir)?;
        }
        let lock = lock_path(path)?;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(Error::AlreadyRunning(path.to_owned())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing stale socket file");
                    std::fs::remove_file(path).map_err(io_err("removing stale socket"))?;
                }
                Err(e) => return Err(io_err("probing existing socket")(e)),
            },
            Ok(_) => return Err(Error::NotASocket(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("inspecting")(e)),
        }
        let inner = bind_exact(path, mode).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => Error::AlreadyRunning(path.to_owned()),
            _ => io_err("binding")(e),
        })?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err("inspecting"))?;
        Ok(Self {
            inner,
            path: path.to_owned(),
            created: Some(((meta.dev(), meta.ino()), lock)),
        })
    }

    /// A listening Unix stream socket inherited from systemd (socket
    /// activation): served as it is, never re-bound, and its file never
    /// removed (systemd owns it).
    pub fn inherited(fd: std::os::fd::OwnedFd) -> Result<Self, Error> {
        let bad = |why: String| Error::Config(format!("the inherited Unix socket {why}"));
        let addr = socket::getsockname::<UnixAddr>(fd.as_raw_fd())
            .map_err(|e| bad(format!("has no Unix address: {e}")))?;
        let path = addr
            .path()
            .map(Path::to_owned)
            .ok_or_else(|| bad("is not bound to a path".into()))?;
        if getsockopt(&fd, socket::sockopt::SockType).map_err(|e| bad(e.to_string()))? != SockType::Stream {
            return Err(bad("is not a stream socket".into()));
        }
        if !getsockopt(&fd, socket::sockopt::AcceptConn).map_err(|e| bad(e.to_string()))? {
            return Err(bad("is not listening".into()));
        }
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::F_GETFL).map_err(|e| bad(e.to_string()))?;
        let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&fd, nix::fcntl::F_SETFL(nonblocking)).map_err(|e| bad(e.to_string()))?;
        let inner = Inner::from_fd(fd).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            inner,
            path,
            created: None,
        })
    }

    /// True if the socket came from systemd rather than being bound here.
    pub fn is_inherited(&self) -> bool {
        self.created.is_none()
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection and reads its credentials from the
    /// kernel: the peer, and every group it is in (the primary one first).
    pub async fn accept(&self) -> io::Result<(UnixStream, Peer, Vec<u32>)> {
        let stream = self.inner.accept().await?;
        let cred = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        let peer = Peer::Unix {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        let mut groups = vec![cred.gid()];
        match crate::sys::peer_groups(std::os::fd::AsFd::as_fd(&stream)) {
            Ok(more) => groups.extend(more.into_iter().filter(|g| *g != cred.gid())),
            // Before Linux 4.13: the primary group only.
            Err(e) => tracing::debug!("SO_PEERGROUPS: {e}"),
        }
        Ok((stream, peer, groups))
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        // Only remove the file if we created it and it is still ours (not
        // a successor's).
        let Some((ident, _)) = &self.created else {
            return;
        };
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == *ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
