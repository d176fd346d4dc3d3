//! Who may connect and administer, the connection budgets, and the
//! counters of everything a limit or the policy refused.
//!
//! Budgets are taken when a connection is accepted, before its handshake
//! (the kernel says at once who a Unix peer is), and given back when it
//! ends ([`Ticket`]): `max_connections` in all, of which
//! `reserved_connections` only the daemon's uid and root may use, so an
//! administrator can always connect and kick; `max_connections_per_uid`
//! per local user; `max_tcp_connections` for network peers together, so
//! they can never lock out local ones; and `max_pending_handshakes` for
//! network connections that have not completed their handshake and token
//! check, so unauthenticated sockets cannot starve authenticated peers. A
//! local user's connections, handshaken or not, are bounded by its quota.
//!
//! The Unix socket's peer credentials come from the kernel (`SO_PEERCRED`,
//! and `SO_PEERGROUPS` for every group), so they cannot be forged. By
//! default only the daemon's own user and root may connect; `allow_uid` /
//! `allow_gid` (any of the peer's groups), and the users and groups a
//! `[[permissions]]` entry names, widen that. What each may do once
//! connected is [`acl`](crate::acl)'s: [`Policy::rights`]. State-changing
//! admin requests (`$BUS.api.kick`) are limited to the daemon's user and
//! root.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use libbus::proto::api::{Denial, Peer};

use crate::{
    acl::{Permissions, Principal, Rights},
    config::Config,
    registry::lock,
};

/// The access policy and per-uid accounting of one daemon.
#[derive(Debug)]
pub struct Policy {
    /// The daemon's effective uid.
    pub daemon_uid: u32,
    /// Who may connect, and the connection budgets; replaced whole by a
    /// reload.
    rules: arc_swap::ArcSwap<Rules>,
    per_uid: Mutex<HashMap<u32, usize>>,
    /// Connections in all, network ones, and network ones still in their
    /// handshake.
    counts: Mutex<Counts>,
    /// What was refused, by limit name.
    pub refused: Refusals,
    /// What the access policy denied, by (principal, rule).
    denials: Mutex<BTreeMap<(String, String), u64>>,
    /// Bumped when connections' rights change: cached verdicts are stale.
    generation: std::sync::atomic::AtomicU64,
    /// Each principal's queued bytes and subscriptions, by label.
    budgets: Mutex<HashMap<String, Arc<crate::outbox::Budget>>>,
}

/// The settings of a [`Policy`] that a reload may change.
#[derive(Debug)]
struct Rules {
    allow_uid: Vec<u32>,
    allow_gid: Vec<u32>,
    max_per_uid: usize,
    max_connections: usize,
    reserved: usize,
    max_tcp: usize,
    max_pending: usize,
    max_pending_per_uid: usize,
    permissions: Vec<Permissions>,
}

impl Rules {
    fn of(config: &Config) -> Self {
        Self {
            allow_uid: config.allow_uid.clone(),
            allow_gid: config.allow_gid.clone(),
            max_per_uid: config.max_connections_per_uid,
            max_connections: config.max_connections,
            reserved: config.reserved_connections,
            max_tcp: config.max_tcp_connections,
            max_pending: config.max_pending_handshakes,
            max_pending_per_uid: config.max_pending_per_uid,
            permissions: config.permissions.clone(),
        }
    }
}

impl Policy {
    /// The policy `config` describes, for a daemon running as `daemon_uid`.
    pub fn new(config: &Config, daemon_uid: u32) -> Self {
        Self {
            daemon_uid,
            rules: arc_swap::ArcSwap::from_pointee(Rules::of(config)),
            per_uid: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
            refused: Refusals::default(),
            denials: Mutex::default(),
            generation: Default::default(),
            budgets: Mutex::default(),
        }
    }

    /// The budget every connection of `principal` (a label: `uid 1000`,
    /// `user alice`, `tcp`) shares.
    pub fn budget(&self, principal: &str) -> Arc<crate::outbox::Budget> {
        let limit = self.rules.load().max_pending_per_uid;
        lock(&self.budgets)
            .entry(principal.to_owned())
            .or_insert_with(|| Arc::new(crate::outbox::Budget::new(limit)))
            .clone()
    }

    /// Changes whenever connections' rights do ([`rights_changed`](Self::rights_changed)).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every connection's rights were worked out again: what was allowed
    /// before must be checked anew.
    pub fn rights_changed(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Takes the access rules and budgets of a reloaded `config`: they
    /// apply to connections accepted from now on (those already admitted
    /// stay).
    pub fn reconfigure(&self, config: &Config) {
        self.rules.store(Arc::new(Rules::of(config)));
        for b in lock(&self.budgets).values() {
            b.set_limit(config.max_pending_per_uid);
        }
    }

    /// May `peer`, a member of `groups`, connect? The error is the
    /// message the peer gets.
    pub fn check_connect(&self, peer: &Peer, groups: &[u32]) -> Result<(), String> {
        let rules = self.rules.load();
        match *peer {
            Peer::Unix { uid, .. } => {
                let named =
                    |p: &Permissions| p.uid == Some(uid) || p.gid.is_some_and(|g| groups.contains(&g));
                if uid == 0
                    || uid == self.daemon_uid
                    || rules.allow_uid.contains(&uid)
                    || rules.allow_gid.iter().any(|g| groups.contains(g))
                    || rules.permissions.iter().any(named)
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

    /// What `peer`, a member of `groups` (a network peer: `user` of
    /// `[[users]]`, if it presented that user's token), may do: everything
    /// for the daemon's uid and root, else what the `[[permissions]]` give
    /// it.
    pub fn rights(&self, peer: &Peer, groups: &[u32], user: Option<&str>) -> Rights {
        match *peer {
            Peer::Unix { uid, .. } if uid == 0 || uid == self.daemon_uid => {
                Rights::all(Principal::local(uid, groups.to_vec(), None))
            }
            Peer::Unix { uid, .. } => {
                let rules = self.rules.load();
                // The user database is asked (which may mean NSS, even LDAP)
                // only when a pattern needs the name.
                let wanted = rules.permissions.iter().any(Permissions::uses_user_name);
                let user = wanted
                    .then(|| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)))
                    .and_then(|u| u.ok().flatten())
                    .map(|u| u.name);
                Rights::of(&rules.permissions, Principal::local(uid, groups.to_vec(), user))
            }
            Peer::Net { .. } => Rights::of(
                &self.rules.load().permissions,
                Principal::network(user.map(str::to_owned)),
            ),
        }
    }

    /// Counts a denial of `principal` by `rule`.
    pub fn count_denial(&self, principal: &str, rule: &str) {
        self.refused.count("permission_denied");
        *lock(&self.denials)
            .entry((principal.to_owned(), rule.to_owned()))
            .or_default() += 1;
    }

    /// Every denial since start, by principal and rule.
    pub fn denials(&self) -> Vec<Denial> {
        lock(&self.denials)
            .iter()
            .map(|((principal, rule), count)| Denial {
                principal: principal.clone(),
                rule: rule.clone(),
                count: *count,
            })
            .collect()
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

    /// True for the peers the reserve is for: the daemon's uid and root,
    /// on the Unix socket.
    pub fn is_privileged(&self, peer: &Peer) -> bool {
        matches!(*peer, Peer::Unix { uid, .. } if uid == 0 || uid == self.daemon_uid)
    }

    /// Takes what a newly accepted connection of `peer` needs from every
    /// budget, or names the limit that refuses it (counted). The ticket
    /// gives it all back when dropped.
    pub fn admit(self: &Arc<Self>, peer: &Peer) -> Result<Ticket, String> {
        let privileged = self.is_privileged(peer);
        let tcp = matches!(peer, Peer::Net { .. });
        let r = self.rules.load();
        let refuse = |limit: &'static str, value: usize, whose: String| {
            self.refused.count(limit);
            Err(format!("limit exceeded: {limit} = {value}{whose}"))
        };
        let mut counts = lock(&self.counts);
        // The peer's own budgets first, then the daemon's.
        if tcp && counts.tcp >= r.max_tcp {
            drop(counts);
            return refuse("max_tcp_connections", r.max_tcp, String::new());
        }
        if tcp && counts.pending >= r.max_pending {
            drop(counts);
            return refuse("max_pending_handshakes", r.max_pending, String::new());
        }
        let room = if privileged {
            r.max_connections
        } else {
            r.max_connections.saturating_sub(r.reserved)
        };
        let mut per_uid = lock(&self.per_uid);
        if let Peer::Unix { uid, .. } = *peer {
            if per_uid.get(&uid).is_some_and(|n| *n >= r.max_per_uid) {
                drop((per_uid, counts));
                return refuse("max_connections_per_uid", r.max_per_uid, format!(" (uid {uid})"));
            }
        }
        if counts.live >= room {
            drop((per_uid, counts));
            return refuse("max_connections", r.max_connections, String::new());
        }
        let uid = match *peer {
            Peer::Unix { uid, .. } => {
                *per_uid.entry(uid).or_insert(0) += 1;
                Some(uid)
            }
            Peer::Net { .. } => None,
        };
        drop(per_uid);
        counts.live += 1;
        counts.tcp += usize::from(tcp);
        counts.pending += usize::from(tcp);
        Ok(Ticket {
            policy: self.clone(),
            uid,
            tcp,
            pending: tcp,
        })
    }
}

/// What the budgets hold in all.
#[derive(Debug, Default)]
struct Counts {
    live: usize,
    tcp: usize,
    pending: usize,
}

/// A connection's share of the budgets, from its accept to its end.
#[derive(Debug)]
pub struct Ticket {
    policy: Arc<Policy>,
    uid: Option<u32>,
    tcp: bool,
    /// Still counted against `max_pending_handshakes`.
    pending: bool,
}

impl Ticket {
    /// The handshake is done: the connection no longer counts as pending.
    pub fn handshaken(&mut self) {
        if std::mem::take(&mut self.pending) {
            lock(&self.policy.counts).pending -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let policy = &self.policy;
        {
            let mut counts = lock(&policy.counts);
            counts.live -= 1;
            counts.tcp -= usize::from(self.tcp);
            counts.pending -= usize::from(self.pending);
        }
        if let Some(uid) = self.uid {
            let mut per_uid = lock(&policy.per_uid);
            if let Some(n) = per_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    per_uid.remove(&uid);
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
        assert!(p.check_connect(&unix(1000, 1000), &[1000]).is_ok());
        assert!(p.check_connect(&unix(0, 0), &[0]).is_ok());
        assert_eq!(
            p.check_connect(&unix(1001, 1001), &[1001]).unwrap_err(),
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
        assert!(p.check_connect(&unix(1001, 1001), &[1001]).is_ok());
        assert!(p.check_connect(&unix(1002, 50), &[50]).is_ok());
        assert!(p.check_connect(&unix(1002, 51), &[51]).is_err());
        // A supplementary group counts as the primary one does.
        assert!(p.check_connect(&unix(1003, 1003), &[1003, 50]).is_ok());
        assert!(p.check_admin(&unix(1001, 1001)).is_err());
        assert!(p.check_admin(&unix(1000, 1)).is_ok());
        assert!(p.check_admin(&unix(0, 0)).is_ok());
    }

    #[test]
    fn permissions_entries_admit_whom_they_name() {
        let config = Config {
            permissions: vec![
                crate::acl::Permissions {
                    uid: Some(1001),
                    ..Default::default()
                },
                crate::acl::Permissions {
                    gid: Some(60),
                    ..Default::default()
                },
            ],
            ..Config::default()
        };
        let p = Policy::new(&config, 1000);
        assert!(p.check_connect(&unix(1001, 1001), &[1001]).is_ok());
        assert!(p.check_connect(&unix(1002, 1002), &[1002, 60]).is_ok());
        assert!(p.check_connect(&unix(1003, 1003), &[1003]).is_err());
        assert!(p.rights(&unix(1000, 1000), &[1000], None).all);
        assert!(!p.rights(&unix(1001, 1001), &[1001], None).all);
    }

    #[test]
    fn budgets_are_taken_at_accept_and_given_back() {
        let config = Config {
            max_connections: 8,
            reserved_connections: 2,
            max_connections_per_uid: 2,
            max_tcp_connections: 3,
            max_pending_handshakes: 2,
            ..Config::default()
        };
        let p = Arc::new(Policy::new(&config, 1000));
        let net = Peer::Net {
            addr: "127.0.0.1:1".into(),
        };
        let refused = |peer: &Peer, limit: &str| {
            let e = p.admit(peer).unwrap_err();
            assert!(e.contains(limit), "{e}");
        };
        // Per uid, from accept.
        let a = p.admit(&unix(7, 7)).unwrap();
        let _b = p.admit(&unix(7, 7)).unwrap();
        refused(&unix(7, 7), "max_connections_per_uid = 2 (uid 7)");
        // Network peers in their handshake: two at most; local peers are
        // not held up by them.
        let mut c = p.admit(&net).unwrap();
        let _d = p.admit(&net).unwrap();
        refused(&net, "max_pending_handshakes = 2");
        let e8 = p.admit(&unix(8, 8)).unwrap();
        let _e9 = p.admit(&unix(9, 9)).unwrap();
        // Six live: the rest is the daemon's uid's and root's.
        refused(&unix(10, 10), "max_connections = 8");
        let root = p.admit(&unix(0, 0)).unwrap();
        let _own = p.admit(&unix(1000, 1)).unwrap();
        refused(&unix(0, 0), "max_connections = 8");
        // Giving back.
        drop((a, root, e8));
        refused(&net, "max_pending_handshakes");
        c.handshaken();
        let _f = p.admit(&net).unwrap();
        refused(&net, "max_tcp_connections = 3");
        refused(&unix(9, 9), "max_connections = 8");
        drop(c);
        let _g = p.admit(&unix(9, 9)).unwrap();
    }

    #[test]
    fn network_peers_have_their_own_budget() {
        let config = Config {
            max_tcp_connections: 2,
            ..Config::default()
        };
        let p = Arc::new(Policy::new(&config, 1000));
        let net = Peer::Net {
            addr: "127.0.0.1:1".into(),
        };
        let mut held = vec![p.admit(&net).unwrap(), p.admit(&net).unwrap()];
        for t in &mut held {
            t.handshaken();
        }
        let e = p.admit(&net).unwrap_err();
        assert!(e.contains("max_tcp_connections = 2"), "{e}");
        assert!(p.admit(&unix(8, 8)).is_ok(), "local peers are not in it");
    }
}
