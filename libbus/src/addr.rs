//! Bus addresses and the default socket path.
//!
//! `unix:/path/to.sock` or a bare path name a Unix socket. The default is
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
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(Error::InvalidAddress(format!(
                "{s:?}: transport {scheme:?} is not supported (use unix:/path/to.sock)"
            )));
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
        assert_eq!(Address::Unix("/x".into()).to_string(), "unix:/x");
    }
}
