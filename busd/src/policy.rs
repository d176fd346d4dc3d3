//! Who may connect and administer, per-user connection quotas, and the
//! counters of everything a limit or the policy refused.
//!
//! The Unix socket's peer credentials come from the kernel (`SO_PEERCRED`),
//! so they cannot be forged. By default only the daemon's own user and root
//! may connect; `allow_uid` / `allow_gid` widen that. State-changing admin
//! requests (`$BUS.api.kick`) are limited to the daemon's user and root.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use libbus::proto::api::Peer;

use crate::{config::Config, registry::lock};

/// The access policy and per-uid accounting of one daemon.
#[derive(Debug)]
pub struct Policy {
    /// The daemon's effective uid.
    pub daemon_uid: u32,
    allow_uid: Vec<u32>,
    allow_gid: Vec<u32>,
    max_per_uid: usize,
    per_uid: Mutex<HashMap<u32, usize>>,
    /// What was refused, by limit name.
    pub refused: Refusals,
}

impl Policy {
    /// The policy `config` describes, for a daemon running as `daemon_uid`.
    pub fn new(config: &Config, daemon_uid: u32) -> Self {
        Self {
            daemon_uid,
            allow_uid: config.allow_uid.clone(),
            allow_gid: config.allow_gid.clone(),
            max_per_uid: config.max_connections_per_uid,
            per_uid: Mutex::new(HashMap::new()),
            refused: Refusals::default(),
        }
    }

    /// May `peer` connect? The error is the message the peer gets.
    pub fn check_connect(&self, peer: &Peer) -> Result<(), String> {
        match *peer {
            Peer::Unix { uid, gid, .. } => {
                if uid == 0
                    || uid == self.daemon_uid
                    || self.allow_uid.contains(&uid)
                    || self.allow_gid.contains(&gid)
                {
                    Ok(())
                } else {
                    self.refused.count("permission_denied");
                    Err(format!("permission denied for uid {uid}"))
                }
            }
            // Network peers authenticate by other means.
            Peer::Net { .. } => Ok(()),
        }
    }

    /// May `peer` change daemon state (close other connections)?
    pub fn check_admin(&self, peer: &Peer) -> Result<(), String> {
        match *peer {
            Peer::Unix { uid, .. } if uid == 0 || uid == self.daemon_uid => Ok(()),
            Peer::Unix { uid, .. } => {
                self.refused.count("permission_denied");
                Err(format!(
                    "permission denied for uid {uid}: only uid {} and root may do this",
                    self.daemon_uid
                ))
            }
            Peer::Net { .. } => {
                self.refused.count("permission_denied");
                Err("permission denied: admin requests need a local connection".into())
            }
        }
    }

    /// Takes one of the peer's per-uid connection slots; released on drop.
    pub fn acquire_slot(self: &Arc<Self>, peer: &Peer) -> Result<UidSlot, String> {
        let Peer::Unix { uid, .. } = *peer else {
            return Ok(UidSlot(None));
        };
        let mut counts = lock(&self.per_uid);
        let n = counts.entry(uid).or_insert(0);
        if *n >= self.max_per_uid {
            drop(counts);
            self.refused.count("max_connections_per_uid");
            return Err(format!(
                "limit exceeded: max_connections_per_uid = {} (uid {uid})",
                self.max_per_uid
            ));
        }
        *n += 1;
        Ok(UidSlot(Some((self.clone(), uid))))
    }
}

/// A connection's slot in its user's quota.
#[derive(Debug)]
pub struct UidSlot(Option<(Arc<Policy>, u32)>);

impl Drop for UidSlot {
    fn drop(&mut self) {
        if let Some((policy, uid)) = self.0.take() {
            let mut counts = lock(&policy.per_uid);
            if let Some(n) = counts.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&uid);
                }
            }
        }
    }
}

/// How often each limit refused something. Refusals are rare, so one mutex
/// is cheaper than a field per limit.
#[derive(Debug, Default)]
pub struct Refusals(Mutex<BTreeMap<&'static str, u64>>);

impl Refusals {
    /// Counts one refusal by `limit`.
    pub fn count(&self, limit: &'static str) {
        *lock(&self.0).entry(limit).or_insert(0) += 1;
    }

    /// (limit, count) pairs, by name.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        lock(&self.0).iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::Unix { pid: 1, uid, gid }
    }

    #[test]
    fn default_policy_admits_own_uid_and_root_only() {
        let p = Policy::new(&Config::default(), 1000);
        assert!(p.check_connect(&unix(1000, 1000)).is_ok());
        assert!(p.check_connect(&unix(0, 0)).is_ok());
        assert_eq!(
            p.check_connect(&unix(1001, 1001)).unwrap_err(),
            "permission denied for uid 1001"
        );
        assert_eq!(p.refused.snapshot(), vec![("permission_denied".into(), 1)]);
    }

    #[test]
    fn allow_lists_widen_connect_but_not_admin() {
        let config = Config {
            allow_uid: vec![1001],
            allow_gid: vec![50],
            ..Config::default()
        };
        let p = Policy::new(&config, 1000);
        assert!(p.check_connect(&unix(1001, 1001)).is_ok());
        assert!(p.check_connect(&unix(1002, 50)).is_ok());
        assert!(p.check_connect(&unix(1002, 51)).is_err());
        assert!(p.check_admin(&unix(1001, 1001)).is_err());
        assert!(p.check_admin(&unix(1000, 1)).is_ok());
        assert!(p.check_admin(&unix(0, 0)).is_ok());
    }

    #[test]
    fn per_uid_slots_are_counted_and_released() {
        let config = Config {
            max_connections_per_uid: 2,
            ..Config::default()
        };
        let p = Arc::new(Policy::new(&config, 1000));
        let a = p.acquire_slot(&unix(7, 7)).unwrap();
        let _b = p.acquire_slot(&unix(7, 7)).unwrap();
        let e = p.acquire_slot(&unix(7, 7)).unwrap_err();
        assert!(e.contains("max_connections_per_uid = 2"), "{e}");
        assert!(p.acquire_slot(&unix(8, 8)).is_ok(), "other users are unaffected");
        drop(a);
        assert!(p.acquire_slot(&unix(7, 7)).is_ok());
    }
}
