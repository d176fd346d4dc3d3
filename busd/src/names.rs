//! Well-known names (D-Bus `RequestName`): who owns each name, and who
//! waits for it, in order.
//!
//! Only the table lives here: each operation changes it and returns the
//! [`Effects`] (which connections' standing changed, which names changed
//! owner) for `service.rs` to announce. Callers hold the table's lock
//! while they announce, so that owner changes are published in the order
//! they happened.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use libbus::proto::{api, name_flags, NameReply, NameState};

use crate::registry::{lock, Conn};

/// One connection's claim on a name.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The claiming connection.
    pub conn: Arc<Conn>,
    /// The sid its calls and state changes go to.
    pub sid: u64,
    /// The [`name_flags`] it asked with.
    pub flags: u8,
}

impl Claim {
    fn allows(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn is(&self, conn: &Conn) -> bool {
        self.conn.id == conn.id
    }

    /// The claim as the admin API reports it.
    pub fn owner(&self) -> api::NameOwner {
        api::NameOwner {
            conn_id: self.conn.id,
            client: self.conn.name.clone(),
            peer: self.conn.peer.clone(),
            flags: self.flags,
        }
    }
}

/// A connection's claim asked for again: new flags, and the new sid takes
/// over (the old one hears `Lost`, the new one where it stands).
fn supersede(held: &mut Claim, claim: Claim, name: &str, standing: NameState, fx: &mut Effects) {
    let old = std::mem::replace(held, claim.clone());
    if old.sid != claim.sid {
        fx.states.push((old, name.into(), NameState::Lost));
        fx.states.push((claim, name.into(), standing));
    }
}

/// What an operation changed, to announce.
#[derive(Debug, Default)]
pub struct Effects {
    /// Connections whose standing with a name changed: (claim, name, state).
    pub states: Vec<(Claim, String, NameState)>,
    /// Names whose primary owner changed: (name, old, new).
    pub owners: Vec<(String, Option<Claim>, Option<Claim>)>,
}

/// The names table, behind one lock.
#[derive(Debug, Default)]
pub struct Names(Mutex<Table>);

impl Names {
    /// The table, locked: hold it while announcing what an operation did.
    pub fn lock(&self) -> MutexGuard<'_, Table> {
        lock(&self.0)
    }
}

/// Every name's claims (the primary owner first, then the queue), and how
/// many claims each connection holds.
#[derive(Debug, Default)]
pub struct Table {
    names: BTreeMap<String, VecDeque<Claim>>,
    per_conn: HashMap<u64, usize>,
}

impl Table {
    /// Claims (owned or queued) held by connection `id`.
    pub fn held_by(&self, id: u64) -> usize {
        self.per_conn.get(&id).copied().unwrap_or(0)
    }

    /// True if connection `id` owns or waits for `name`.
    pub fn claimed_by(&self, name: &str, id: u64) -> bool {
        self.names
            .get(name)
            .is_some_and(|q| q.iter().any(|c| c.conn.id == id))
    }

    /// Names with an owner.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no name is owned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The primary owner of `name`.
    pub fn owner(&self, name: &str) -> Option<&Claim> {
        self.names.get(name).and_then(|q| q.front())
    }

    /// Every name with its claims, by name, starting after `skip` names.
    pub fn list(&self, skip: usize) -> impl Iterator<Item = api::NameInfo> + '_ {
        self.names.iter().skip(skip).filter_map(|(name, q)| {
            let mut claims = q.iter().map(Claim::owner);
            Some(api::NameInfo {
                name: name.clone(),
                owner: claims.next()?,
                queue: claims.collect(),
            })
        })
    }

    /// `RequestName` by `claim.conn`, with D-Bus's semantics: a free name
    /// is taken; an owned one is taken over if the request says
    /// `REPLACE_EXISTING` and the owner allowed replacement (the old owner
    /// then waits first in the queue, or loses the name if it asked not to
    /// queue); otherwise the request queues, or with `DO_NOT_QUEUE` gets
    /// `Exists`. A connection asking again for a name it holds keeps its
    /// place with the new flags, and the new request's sid takes over its
    /// calls (the old sid hears `Lost`).
    pub fn request(&mut self, name: &str, claim: Claim, fx: &mut Effects) -> NameReply {
        let queue = self.names.entry(name.to_owned()).or_default();
        let held = queue.iter().position(|c| c.is(&claim.conn));
        let Some(owner) = queue.front().cloned() else {
            queue.push_back(claim.clone());
            self.count(claim.conn.id, 1);
            fx.owners.push((name.into(), None, Some(claim.clone())));
            fx.states.push((claim, name.into(), NameState::Primary));
            return NameReply::PrimaryOwner;
        };
        if held == Some(0) {
            supersede(&mut queue[0], claim, name, NameState::Primary, fx);
            return NameReply::AlreadyOwner;
        }
        if claim.allows(name_flags::REPLACE_EXISTING) && owner.allows(name_flags::ALLOW_REPLACEMENT) {
            queue.pop_front();
            match held {
                Some(at) => {
                    if let Some(old) = queue.remove(at - 1) {
                        if old.sid != claim.sid {
                            fx.states.push((old, name.into(), NameState::Lost));
                        }
                    }
                }
                None => self.count(claim.conn.id, 1),
            }
            let queue = self.names.entry(name.to_owned()).or_default();
            let old_state = if owner.allows(name_flags::DO_NOT_QUEUE) {
                NameState::Lost
            } else {
                queue.push_front(owner.clone());
                NameState::Queued
            };
            queue.push_front(claim.clone());
            if old_state == NameState::Lost {
                self.count(owner.conn.id, -1);
            }
            fx.states.push((owner.clone(), name.into(), old_state));
            fx.owners.push((name.into(), Some(owner), Some(claim.clone())));
            fx.states.push((claim, name.into(), NameState::Primary));
            return NameReply::PrimaryOwner;
        }
        if claim.allows(name_flags::DO_NOT_QUEUE) {
            // Asking again not to queue leaves the queue (as D-Bus does).
            if let Some(left) = held.and_then(|at| queue.remove(at)) {
                self.count(left.conn.id, -1);
                fx.states.push((left, name.into(), NameState::Lost));
            }
            return NameReply::Exists;
        }
        match held {
            Some(at) => supersede(&mut queue[at], claim, name, NameState::Queued, fx),
            None => {
                queue.push_back(claim.clone());
                self.count(claim.conn.id, 1);
                fx.states.push((claim, name.into(), NameState::Queued));
            }
        }
        NameReply::InQueue
    }

    /// `ReleaseName` by `conn`: it leaves the name (owned or queued); if it
    /// owned it, the next in the queue owns it now. With `sid`, only the
    /// claim made with that sid is released (a handle that another
    /// request of the same connection took over releases nothing).
    pub fn release(&mut self, name: &str, conn: &Conn, sid: Option<u64>, fx: &mut Effects) -> NameReply {
        let Some(queue) = self.names.get(name) else {
            return NameReply::NonExistent;
        };
        let mine = |c: &Claim| c.is(conn) && sid.is_none_or(|s| s == c.sid);
        let Some(at) = queue.iter().position(mine) else {
            return NameReply::NotOwner;
        };
        self.remove_claim(name, at, fx);
        NameReply::Released
    }

    /// Connection `conn` ended: it leaves every name it owned or waited for,
    /// in name order.
    pub fn release_all(&mut self, conn: &Conn, fx: &mut Effects) {
        if self.held_by(conn.id) == 0 {
            return;
        }
        let held: Vec<(String, usize)> = self
            .names
            .iter()
            .filter_map(|(name, q)| Some((name.clone(), q.iter().position(|c| c.is(conn))?)))
            .collect();
        for (name, at) in held {
            self.remove_claim(&name, at, fx);
        }
    }

    /// Removes the claim at `at` in `name`'s queue; the next owns a name
    /// whose owner left, and a name nobody claims goes.
    fn remove_claim(&mut self, name: &str, at: usize, fx: &mut Effects) {
        let Some(queue) = self.names.get_mut(name) else {
            return;
        };
        let Some(left) = queue.remove(at) else {
            return;
        };
        let next = queue.front().cloned();
        if queue.is_empty() {
            self.names.remove(name);
        }
        self.count(left.conn.id, -1);
        fx.states.push((left.clone(), name.into(), NameState::Lost));
        if at == 0 {
            if let Some(next) = &next {
                fx.states.push((next.clone(), name.into(), NameState::Primary));
            }
            fx.owners.push((name.into(), Some(left), next));
        }
    }

    fn count(&mut self, id: u64, by: isize) {
        let n = self.per_conn.entry(id).or_default();
        *n = n.saturating_add_signed(by);
        if *n == 0 {
            self.per_conn.remove(&id);
        }
    }
}
