//! The optional TCP listener (`--tcp ADDR`), plain or TLS (`--tls-cert`,
//! `--tls-key`), for remote clients. Network peers must present the shared
//! token in their `Hello` (checked in constant time by [`token_matches`]).

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    time::Duration,
};

use libbus::transport::{self, Reader, Writer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::{config::Config, Error};

/// A bound TCP listener.
pub struct TcpEndpoint {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    /// `tcp://IP:PORT` or `tls://IP:PORT`, with the port actually bound.
    pub address: String,
}

impl std::fmt::Debug for TcpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEndpoint")
            .field("address", &self.address)
            .finish()
    }
}

/// Binds and listens on `addr` (`IP:PORT`, or a name that resolves).
fn listen(addr: &str, backlog: u32) -> Result<TcpListener, Error> {
    let io_err = |what: &str| {
        let what = format!("{what} {addr}");
        move |source| Error::Io { what, source }
    };
    let sock_addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .and_then(|mut a| a.next().ok_or_else(|| io::Error::other("no address")))
        .map_err(io_err("resolving"))?;
    let socket = if sock_addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(io_err("creating a socket for"))?;
    socket.set_reuseaddr(true).map_err(io_err("configuring"))?;
    socket.bind(sock_addr).map_err(io_err("binding TCP"))?;
    socket.listen(backlog).map_err(io_err("listening on"))
}

impl TcpEndpoint {
    /// Binds `config.tcp` if set, or serves `inherited` (a listening TCP
    /// socket from systemd) if given. Must run inside a tokio runtime.
    pub fn bind(config: &Config, inherited: Option<OwnedFd>) -> Result<Option<TcpEndpoint>, Error> {
        if config.tcp.is_none() && inherited.is_none() {
            return Ok(None);
        }
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(
                libbus::tls::server_config(cert, key, config.tls_client_ca.as_deref())
                    .map_err(|e| Error::Config(e.to_string()))?,
            )),
            (None, None) => None,
            _ => return Err(Error::Config("--tls-cert and --tls-key go together".into())),
        };
        let listener = match (inherited, &config.tcp) {
            (Some(fd), _) => {
                let std_listener = std::net::TcpListener::from(fd);
                std_listener
                    .set_nonblocking(true)
                    .and_then(|()| TcpListener::from_std(std_listener))
                    .map_err(|source| Error::Io {
                        what: "serving the TCP socket systemd passed".into(),
                        source,
                    })?
            }
            (None, Some(addr)) => listen(addr, config.tcp_backlog)?,
            (None, None) => return Ok(None),
        };
        let io_err = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Io { what, source }
        };
        let local = listener
            .local_addr()
            .map_err(io_err("reading the bound address of the TCP listener"))?;
        let scheme = if tls.is_some() { "tls" } else { "tcp" };
        Ok(Some(TcpEndpoint {
            listener,
            tls,
            address: format!("{scheme}://{local}"),
        }))
    }

    /// The next TCP connection (before any TLS handshake).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        self.listener.accept().await
    }

    /// A handle for finishing accepted connections in their own tasks.
    pub fn acceptor(&self) -> Acceptor {
        Acceptor(self.tls.clone())
    }
}

/// Finishes an accepted TCP connection: socket options and, for TLS, the
/// TLS handshake (bounded by `timeout`).
#[derive(Clone)]
pub struct Acceptor(Option<TlsAcceptor>);

impl Acceptor {
    /// The transport name shown by `bus-cli list`.
    pub fn transport(&self) -> &'static str {
        if self.0.is_some() {
            "tls"
        } else {
            "tcp"
        }
    }

    /// Turns an accepted stream into a reader and writer, with the DNS
    /// names of the client certificate it verified (mTLS; else none).
    pub async fn establish(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<(Reader, Writer, Vec<String>)> {
        transport::configure_tcp(&stream)?;
        match &self.0 {
            None => {
                let (r, w) = transport::split_tcp(stream);
                Ok((r, w, Vec::new()))
            }
            Some(tls) => {
                let fd = stream.as_raw_fd();
                let accepted = tokio::time::timeout(timeout, tls.accept(stream))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                let names = accepted
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(libbus::tls::dns_names)
                    .unwrap_or_default();
                let (r, w) = transport::split_layered(accepted, fd);
                Ok((r, w, names))
            }
        }
    }
}

/// Compares a presented token with the expected one in constant time.
pub fn token_matches(expected: &str, presented: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    let presented = presented.unwrap_or("").as_bytes();
    // ct_eq on slices of different lengths is false without comparing bytes;
    // the length of a token is not the secret.
    bool::from(expected.as_bytes().ct_eq(presented))
}

/// The token: `config.token` (set from `BUS_TOKEN`), else the first line of
/// `config.token_file`.
pub fn load_token(config: &Config) -> Result<Option<String>, Error> {
    if let Some(t) = config.token.clone().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    match &config.token_file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(None),
    }
}

/// A `[[users]]` entry, its token read from its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCred {
    /// The user's name.
    pub name: String,
    /// Its token, if it has one.
    pub token: Option<String>,
    /// The DNS name of its client certificate, if it has one.
    pub cert_name: Option<String>,
}

/// The `[[users]]` of `config`, their tokens read from their files.
pub fn load_users(config: &Config) -> Result<Vec<UserCred>, Error> {
    config
        .users
        .iter()
        .map(|u| {
            Ok(UserCred {
                name: u.name.clone(),
                token: u.token_file.as_deref().map(read_token_file).transpose()?,
                cert_name: u.cert_name.clone(),
            })
        })
        .collect()
}

/// Who a network peer is: `Some(Some(user))` for a `[[users]]` client
/// certificate name among `cert_names` (verified by the TLS handshake) or
/// token, `Some(None)` for the shared token (or any, when no token is set
/// at all), `None` for a wrong one. Every token is compared, in constant
/// time, whichever matches.
pub fn identify(
    shared: Option<&str>,
    users: &[UserCred],
    cert_names: &[String],
    auth: Option<&str>,
) -> Option<Option<String>> {
    let by_cert = users.iter().find(|u| {
        u.cert_name
            .as_ref()
            .is_some_and(|n| cert_names.iter().any(|c| c.eq_ignore_ascii_case(n)))
    });
    let mut by_token = None;
    for u in users {
        if let Some(token) = &u.token {
            if token_matches(token, auth) && by_token.is_none() {
                by_token = Some(u);
            }
        }
    }
    if let Some(u) = by_cert.or(by_token) {
        return Some(Some(u.name.clone()));
    }
    let shared_ok = match shared {
        Some(t) => token_matches(t, auth),
        None => users.is_empty(),
    };
    shared_ok.then_some(None)
}

/// The token bridges present: the first line of `config.bridge_token_file`,
/// else the daemon's own token (`own`).
pub fn load_bridge_token(config: &Config, own: Option<&str>) -> Result<Option<String>, Error> {
    match &config.bridge_token_file {
        Some(path) => read_token_file(path).map(Some),
        None => Ok(own.map(ToOwned::to_owned)),
    }
}

/// The first line of a token file, trimmed; an empty one is an error.
pub(crate) fn read_token_file(path: &std::path::Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        what: format!("reading the token file {}", path.display()),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Err(Error::Config(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", Some("s3cret")));
        assert!(!token_matches("s3cret", Some("s3cres")));
        assert!(!token_matches("s3cret", Some("s3cret ")));
        assert!(!token_matches("s3cret", None));
        assert!(!token_matches("s3cret", Some("")));
    }

    #[test]
    fn a_token_or_a_certificate_names_its_user() {
        let user = |name: &str, token: Option<&str>, cert: Option<&str>| UserCred {
            name: name.into(),
            token: token.map(Into::into),
            cert_name: cert.map(Into::into),
        };
        let users = vec![
            user("alice", Some("a"), None),
            user("bob", Some("b"), None),
            user("carol", None, Some("carol.example")),
        ];
        let none: &[String] = &[];
        assert_eq!(
            identify(Some("s"), &users, none, Some("b")),
            Some(Some("bob".into()))
        );
        assert_eq!(identify(Some("s"), &users, none, Some("s")), Some(None));
        assert_eq!(identify(Some("s"), &users, none, Some("x")), None);
        // A verified certificate's name is enough.
        let carol = ["Carol.Example".to_owned()];
        assert_eq!(
            identify(Some("s"), &users, &carol, None),
            Some(Some("carol".into()))
        );
        // Users but no shared token: only users get in.
        assert_eq!(identify(None, &users, none, Some("x")), None);
        assert_eq!(
            identify(None, &users, none, Some("a")),
            Some(Some("alice".into()))
        );
        // Neither (an insecure listener): anyone, as `tcp`.
        assert_eq!(identify(None, &[], none, None), Some(None));
    }
}
