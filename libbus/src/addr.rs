//! Bus addresses and the default socket path.
//!
//! `unix:/path/to.sock` or a bare path name a Unix socket; `tcp://host:port`
//! and `tls://host:port` a remote daemon (token from `BUS_TOKEN`, CA for TLS
//! from `BUS_CA`). The default is
//! `$BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus/busd.sock`, else
//! `/tmp/bus-$UID/busd.sock`; `busd` and `bus-cli` share it, so `busd &` then
//! `bus-cli list` just works.

use std::{fmt, path::PathBuf, str::FromStr};

use crate::Error;

/// Environment variable that overrides the default address.
pub const ENV_ADDRESS: &str = "BUS_ADDRESS";

/// Where a daemon listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A Unix domain socket at this path.
    Unix(PathBuf),
    /// A daemon's TCP listener, `host:port`.
    Tcp(String),
    /// A daemon's TLS listener, `host:port` (the host is the name checked in
    /// its certificate).
    Tls(String),
}

impl Address {
    /// The default address: `$BUS_ADDRESS` if set and valid, else the default socket path.
    pub fn from_env() -> Result<Address, Error> {
        match std::env::var(ENV_ADDRESS) {
            Ok(s) if !s.is_empty() => s.parse(),
            _ => Ok(Address::Unix(default_socket_path())),
        }
    }

    /// The socket path, for Unix addresses.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        match self {
            Address::Unix(p) => Some(p),
            Address::Tcp(_) | Address::Tls(_) => None,
        }
    }
}

/// `$XDG_RUNTIME_DIR/bus/busd.sock`, else `/tmp/bus-$UID/busd.sock`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("bus").join("busd.sock"),
        _ => PathBuf::from(format!("/tmp/bus-{}", nix::unistd::getuid())).join("busd.sock"),
    }
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(Error::InvalidAddress(format!("{s:?}: empty socket path")));
            }
            return Ok(Address::Unix(path.into()));
        }
        if let Some((scheme, rest)) = s.split_once("://") {
            let host_port = || -> Result<String, Error> {
                match rest.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                        Ok(rest.to_owned())
                    }
                    _ => Err(Error::InvalidAddress(format!(
                        "{s:?}: expected {scheme}://host:port"
                    ))),
                }
            };
            return match scheme {
                "tcp" => Ok(Address::Tcp(host_port()?)),
                "tls" => Ok(Address::Tls(host_port()?)),
                _ => Err(Error::InvalidAddress(format!(
                    "{s:?}: transport {scheme:?} is not supported (use unix:/path, tcp://host:port or tls://host:port)"
                ))),
            };
        }
        if s.is_empty() {
            return Err(Error::InvalidAddress("empty address".into()));
        }
        Ok(Address::Unix(s.into()))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Tls(a) => write!(f, "tls://{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(
            "unix:/a/b.sock".parse::<Address>().unwrap(),
            Address::Unix("/a/b.sock".into())
        );
        assert_eq!(
            "unix:///a/b.sock".parse::<Address>().unwrap(),
            Address::Unix("/a/b.sock".into())
        );
        assert_eq!(
            "/a/b.sock".parse::<Address>().unwrap(),
            Address::Unix("/a/b.sock".into())
        );
        assert!("unix:".parse::<Address>().is_err());
        assert!("ftp://x".parse::<Address>().is_err());
        assert_eq!(
            "tcp://127.0.0.1:7420".parse::<Address>().unwrap(),
            Address::Tcp("127.0.0.1:7420".into())
        );
        assert_eq!(
            "tls://bus.example:7420".parse::<Address>().unwrap().to_string(),
            "tls://bus.example:7420"
        );
        assert_eq!(
            "tcp://[::1]:9".parse::<Address>().unwrap(),
            Address::Tcp("[::1]:9".into())
        );
        assert!("tcp://nohost".parse::<Address>().is_err());
        assert!("tcp://:80".parse::<Address>().is_err());
        assert_eq!(Address::Unix("/x".into()).to_string(), "unix:/x");
    }
}
