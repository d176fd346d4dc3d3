//! The Unix socket: safe creation, the stale-file check, peer credentials.
//!
//! The directory is created 0700; the socket gets its mode (0600 by default)
//! through `fchmod` before `bind` (narrowed by the umask), then exactly its
//! mode after `bind`, so it is never reachable with wider permissions. An existing socket file is probed with a connect: if a daemon
//! answers, we refuse to start; if nothing listens, the stale file is replaced.

use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use interprocess::{
    local_socket::{traits::tokio::Listener as _, GenericFilePath, ListenerOptions, ToFsName},
    os::unix::local_socket::ListenerOptionsExt,
};
use libbus::{proto::api::Peer, transport::UnixStream};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::Error;

type Inner = interprocess::os::unix::uds_local_socket::tokio::Listener;

/// A bound Unix socket listener. Removes its socket file when dropped (if the
/// file is still the one it created).
#[derive(Debug)]
pub struct UnixListener {
    inner: Inner,
    path: PathBuf,
    /// (device, inode) of the socket file we created.
    ident: (u64, u64),
}

impl UnixListener {
    /// Prepares the directory, clears a stale socket, binds and listens.
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
        }
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
        let name = path
            .to_fs_name::<GenericFilePath>()
            .map_err(io_err("socket name"))?;
        let inner = ListenerOptions::new()
            .name(name)
            .mode(mode)
            .reclaim_name(false)
            .try_overwrite(false)
            .create_tokio_as::<Inner>()
            .map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => Error::AlreadyRunning(path.to_owned()),
                _ => io_err("binding")(e),
            })?;
        // The kernel applies the umask to the file bind() creates, so the
        // fchmod above can only narrow the mode; set the exact mode now. Until
        // here the file had at most `mode`'s bits, never more.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io_err("setting the mode of"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err("inspecting"))?;
        Ok(Self {
            inner,
            path: path.to_owned(),
            ident: (meta.dev(), meta.ino()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection and reads its credentials from the kernel.
    pub async fn accept(&self) -> io::Result<(UnixStream, Peer)> {
        let stream = self.inner.accept().await?;
        let cred = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        let peer = Peer::Unix {
            pid: cred.pid(),
            uid: cred.uid(),
            gid: cred.gid(),
        };
        Ok((stream, peer))
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        // Only remove the file if it is still ours (not a successor's).
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}
