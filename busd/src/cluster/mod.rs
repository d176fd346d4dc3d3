//! Bridging daemons: links to other busd nodes, the flooded link-state
//! database, and routing of messages across links.
//!
//! Every node announces a versioned [`NodeState`] (its links and the distinct
//! interests of its local subscribers); states are flooded over every link
//! and the newest per node wins, so all nodes converge on the same topology
//! and interest. A message published here goes to the local subscribers and,
//! along the shortest-path tree rooted here ([`routing`]), to the links whose
//! subtree has interest. A message arriving over a link is delivered locally
//! and passed on along the same tree. Queue groups prefer a local member; the
//! origin otherwise names one node whose member gets the message.
//!
//! State changes are announced before the next message is forwarded, and
//! links are FIFO, so a new subscription (a request's reply inbox, say) is
//! known along a path before messages that depend on it.
//!
//! Loss is never silent. A link that is down holds what it is given (up to
//! `bridge_buffer`, for `bridge_hold` once back). A node that drops out of
//! reach (the node between is restarting, say) is remembered for
//! `bridge_hold` as a [`Ghost`]: messages for its interest are parked on
//! the link that led to it until it is back. Whatever is given up is counted
//! in the link's `dropped`. A daemon that shuts down sends `Closing` on its
//! links and reads until each answers `Closed`, so nothing written to it is
//! lost on the way out.

pub mod link;
pub mod routing;
pub mod session;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use libbus::proto::{
    api::BridgeInfo,
    link::{LinkFrame, NodeState, Origin, Routed},
};

use crate::{
    control,
    deliver::{Router, Routes},
    outbox::Published,
    registry::lock,
};
use link::Link;
pub use routing::Ghost;
use routing::Routing;

/// The bridging side of one daemon.
#[derive(Debug)]
pub struct Cluster {
    /// This daemon's node id.
    pub node_id: String,
    /// True once any bridge link exists (skips all bridging work otherwise).
    active: AtomicBool,
    /// Set when the daemon starts shutting down: its clients leaving must
    /// not read as interest withdrawn, so peers hold messages for it.
    closing: AtomicBool,
    inner: Mutex<Inner>,
    /// Interest version last announced.
    announced_interest: AtomicU64,
    /// Bumped whenever routing may have changed; link writers holding a
    /// backlog wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// `bridge_hold`: how long a node out of reach is held for.
    hold: Duration,
    /// What links may carry in and out (`[[permissions]] bridge = true`);
    /// `None`: everything.
    rights: arc_swap::ArcSwapOption<crate::acl::Rights>,
    /// Where denials are counted.
    policy: std::sync::OnceLock<Arc<crate::policy::Policy>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Newest state of every other node.
    states: HashMap<String, NodeState>,
    /// Our last announced state.
    own: Option<NodeState>,
    links: Vec<Arc<Link>>,
    routing: Option<Arc<Routing>>,
    /// The routing computed last (kept when `routing` is invalidated), to
    /// see who drops out of reach.
    last: Option<Arc<Routing>>,
    /// Nodes out of reach that messages are held for.
    ghosts: HashMap<String, Ghost>,
    /// Round robin per queue group, for choosing a remote member's node.
    rr: HashMap<Box<str>, usize>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The node ids of our links that count for routing.
fn topology_links(inner: &Inner) -> Vec<String> {
    inner
        .links
        .iter()
        .filter(|l| l.in_topology())
        .map(|l| l.node())
        .collect()
}

impl Cluster {
    /// A cluster member named `node_id`, holding for nodes out of reach
    /// for `hold` (`bridge_hold`).
    pub fn new(node_id: String, hold: Duration) -> Self {
        Self {
            hold,
            node_id,
            active: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            announced_interest: AtomicU64::new(u64::MAX),
            changed: tokio::sync::watch::channel(0).0,
            rights: Default::default(),
            policy: Default::default(),
        }
    }

    /// Takes what links may carry (from the policy's `bridge = true`
    /// entry; `None`: everything), counting denials in `policy`.
    pub fn set_access(&self, rights: Option<crate::acl::Rights>, policy: &Arc<crate::policy::Policy>) {
        let _ = self.policy.set(policy.clone());
        self.rights.store(rights.map(Arc::new));
    }

    /// May a link carry `subject` in (`Action::Publish`: published on
    /// another daemon) or out (`Action::Subscribe`: to another daemon)?
    /// A denial is counted (principal `bridge`).
    pub fn allows(&self, action: crate::acl::Action, subject: &str) -> bool {
        let rights = self.rights.load();
        let Some(rights) = rights.as_ref() else {
            return true;
        };
        match rights.check(action, subject) {
            Ok(()) => true,
            Err(d) => {
                if let Some(p) = self.policy.get() {
                    p.count_denial("bridge", &d.rule);
                }
                tracing::debug!(subject, rule = %d, "a bridge may not carry this");
                false
            }
        }
    }

    /// True if this daemon has any bridge link.
    pub fn is_active(&self) -> bool {
        self.active.load(Relaxed)
    }

    /// Adds a link (configured or accepted).
    pub fn add_link(&self, link: Arc<Link>) {
        lock(&self.inner).links.push(link);
        self.active.store(true, Relaxed);
    }

    /// The link to `node`, if any.
    pub fn link_to(&self, node: &str) -> Option<Arc<Link>> {
        lock(&self.inner).links.iter().find(|l| l.node() == node).cloned()
    }

    /// Forgets an accepted link that stayed down past its hold time.
    pub fn remove_link(&self, router: &Router, link: &Arc<Link>) {
        lock(&self.inner).links.retain(|l| !Arc::ptr_eq(l, link));
        self.topology_changed(router);
    }

    /// Snapshots of every link, for `bus-cli info` and `list`.
    pub fn bridges(&self) -> Vec<BridgeInfo> {
        // Not under the cluster lock: a link's writer holds its queue lock
        // while asking the cluster about routes.
        let links = lock(&self.inner).links.clone();
        links.iter().map(|l| l.info()).collect()
    }

    fn routing(&self, inner: &mut Inner) -> Arc<Routing> {
        if let Some(r) = &inner.routing {
            return r.clone();
        }
        let links = topology_links(inner);
        let fresh = Routing::new(&self.node_id, &links, &inner.states);
        let now = Instant::now();
        if let Some(last) = inner.last.take() {
            for node in last.reachable().filter(|n| !fresh.reaches(n)) {
                if let Some(via) = last.first_hop(node).filter(|_| !inner.ghosts.contains_key(node)) {
                    tracing::info!(node, via, hold = ?self.hold, "bridged node out of reach; holding messages for it");
                    let until = now + self.hold;
                    inner.ghosts.insert(node.clone(), Ghost { via, until });
                }
            }
        }
        inner
            .ghosts
            .retain(|n, g| g.until > now && !fresh.reaches(n) && links.contains(&g.via));
        let r = Arc::new(fresh.hold_for(&inner.ghosts, &inner.states));
        inner.routing = Some(r.clone());
        inner.last = Some(r.clone());
        r
    }

    /// Current routing (recomputed after changes).
    pub fn current_routing(&self) -> Arc<Routing> {
        let mut inner = lock(&self.inner);
        self.routing(&mut inner)
    }

    fn invalidate(&self, inner: &mut Inner) {
        inner.routing = None;
        self.changed.send_modify(|v| *v += 1);
    }

    /// Our links changed (up, down, added, removed): re-announce.
    pub fn topology_changed(&self, router: &Router) {
        let mut inner = lock(&self.inner);
        self.invalidate(&mut inner);
        self.announce(router, &mut inner);
    }

    /// Announces our state if the local interest changed since last time.
    /// Called before forwarding any message and by a ticker.
    pub fn announce_if_changed(&self, router: &Router) {
        if !self.is_active() || self.announced_interest.load(Relaxed) == router.interest_version() {
            return;
        }
        let mut inner = lock(&self.inner);
        self.announce(router, &mut inner);
    }

    /// Stops announcing: called as shutdown begins, so to the other nodes a
    /// restart (planned or a crash) looks the same: the link drops with our
    /// interest still known, and they hold messages for us (`bridge_hold`).
    pub fn close(&self) {
        self.closing.store(true, Relaxed);
    }

    /// Builds a new own state and queues it on every up link.
    fn announce(&self, router: &Router, inner: &mut Inner) {
        if self.closing.load(Relaxed) {
            return;
        }
        let (iv, interest) = router.interest();
        let links = topology_links(inner);
        let prev = inner.own.as_ref().map_or(0, |s| s.version);
        let own = NodeState {
            node: self.node_id.clone(),
            version: now_us().max(prev + 1),
            links,
            interest,
        };
        let frame = control::link(&LinkFrame::State(own.clone()));
        for l in &inner.links {
            l.send_control(frame.clone());
        }
        inner.own = Some(own);
        self.announced_interest.store(iv, Relaxed);
    }

    /// A link came up: send it our state and everything we know.
    pub fn sync_link(&self, router: &Router, link: &Link) {
        let mut inner = lock(&self.inner);
        self.invalidate(&mut inner);
        self.announce(router, &mut inner);
        for s in inner.states.values() {
            link.send_control(control::link(&LinkFrame::State(s.clone())));
        }
    }

    /// A node state arrived over `from`: keep it if newer and flood it on.
    pub fn merge(&self, router: &Router, from: &Link, incoming: NodeState) {
        let mut inner = lock(&self.inner);
        if incoming.node == self.node_id {
            // An old state of ours (from before a restart): outdo it.
            if inner.own.as_ref().is_none_or(|o| o.version <= incoming.version) {
                let bumped = NodeState {
                    version: incoming.version + 1,
                    ..inner.own.clone().unwrap_or(incoming)
                };
                inner.own = Some(bumped);
                self.announce(router, &mut inner);
            }
            return;
        }
        if inner
            .states
            .get(&incoming.node)
            .is_some_and(|known| known.version >= incoming.version)
        {
            return;
        }
        let frame = control::link(&LinkFrame::State(incoming.clone()));
        for l in &inner.links {
            if !std::ptr::eq(Arc::as_ptr(l), from) {
                l.send_control(frame.clone());
            }
        }
        inner.states.insert(incoming.node.clone(), incoming);
        self.invalidate(&mut inner);
    }

    /// True if a node across a link wants messages on `subject`.
    pub fn wants(&self, subject: &str) -> bool {
        if !self.is_active() {
            return false;
        }
        let (plain, groups) = self.current_routing().interested(subject);
        !plain.is_empty() || !groups.is_empty()
    }

    /// A message was published here. Forwards it to the links whose
    /// subtrees want it; returns true if any remote node wants it.
    pub fn publish(&self, router: &Router, msg: Message<'_>, local: &Routes) -> bool {
        if !self.is_active() {
            return false;
        }
        self.announce_if_changed(router);
        let routing = self.current_routing();
        let (plain, groups) = routing.interested(msg.subject);
        let wanted = !plain.is_empty() || !groups.is_empty();
        if wanted && !self.allows(crate::acl::Action::Subscribe, msg.subject) {
            return false; // not for the links: as if no one there wanted it
        }
        let mut routed = Routed {
            origin: &self.node_id,
            subject: msg.subject,
            reply_to: msg.reply_to,
            payload: msg.payload,
            queue_targets: Vec::new(),
        };
        if plain.is_empty() && groups.is_empty() {
            if routing.held_for(msg.subject, Instant::now()).is_empty() {
                return false;
            }
            // Only nodes out of reach want it: parked for them.
            self.forward(&routing, &routed, msg.from, msg.headers, &plain, None);
            return true;
        }
        // Queue groups with a member here are served here (local preferred);
        // for the others, one node is named, in turn.
        let mut targets: Vec<(Box<str>, String)> = Vec::new();
        if !groups.is_empty() {
            let mut inner = lock(&self.inner);
            for (group, nodes) in groups {
                if local.groups.iter().any(|(g, _)| *g == group) || nodes.is_empty() {
                    continue;
                }
                let n = inner.rr.entry(group.clone()).or_insert(0);
                let node = nodes[*n % nodes.len()].clone();
                *n = n.wrapping_add(1);
                targets.push((group, node));
            }
        }
        if plain.is_empty() && targets.is_empty() {
            // Remote interest, but only in groups served here.
            return true;
        }
        routed.queue_targets = targets.iter().map(|(g, n)| (&**g, n.as_str())).collect();
        self.forward(&routing, &routed, msg.from, msg.headers, &plain, None);
        true
    }

    /// Sends `routed` to our children in its origin's tree whose subtree
    /// holds an interested node (`plain` or a queue target), and parks it
    /// on the links that led to interested nodes now out of reach.
    fn forward(
        &self,
        routing: &Routing,
        routed: &Routed<'_>,
        from: Origin,
        headers: Option<&[u8]>,
        plain: &[String],
        via: Option<&Link>,
    ) {
        if !self.allows(crate::acl::Action::Subscribe, routed.subject) {
            return;
        }
        let children = routing.children(routed.origin);
        let now = Instant::now();
        let held = routing.held_for(routed.subject, now);
        // One encoding for links that carry headers and senders, one for
        // older ones.
        let mut frames: [Option<Bytes>; 2] = [None, None];
        for (child, subtree) in children.iter() {
            let wanted = plain.iter().any(|n| subtree.contains(n))
                || routed.queue_targets.iter().any(|(_, n)| subtree.contains(*n));
            let awaiting: Vec<String> = held
                .iter()
                .filter(|(via, _)| via == child)
                .map(|(_, n)| (*n).to_owned())
                .collect();
            if !wanted && awaiting.is_empty() {
                continue;
            }
            let Some(link) = self.link_to(child) else { continue };
            if via.is_some_and(|f| std::ptr::eq(f, Arc::as_ptr(&link))) {
                continue; // never back where it came from
            }
            let v4 = link.carries_headers();
            let frame = frames[usize::from(v4)]
                .get_or_insert_with(|| {
                    if v4 {
                        let headers = headers.unwrap_or_default();
                        control::link(&LinkFrame::Sent(from, headers, routed.clone()))
                    } else {
                        control::link(&LinkFrame::Msg(routed.clone()))
                    }
                })
                .clone();
            if wanted {
                link.send_msg(frame, routed.origin, routed.subject);
                // The nodes out of reach cannot get it later without the
                // others getting it twice: their share is lost, and counted.
                link.count_dropped(awaiting.len() as u64);
            } else {
                link.park(frame, routed.origin, routed.subject, awaiting, now + self.hold);
            }
        }
    }

    /// True if every node in `awaiting` is reachable through `link` again,
    /// for the message encoded in `frame` (a `LinkFrame::Msg` with its
    /// length prefix): a parked message can go.
    pub fn reaches_via(&self, link: &Link, frame: &[u8], awaiting: &[String]) -> bool {
        let Some(m) = routed_in(frame) else {
            return false;
        };
        let node = link.node();
        let children = self.current_routing().children(m.origin);
        children
            .iter()
            .find(|(c, _)| *c == node)
            .is_some_and(|(_, subtree)| awaiting.iter().all(|n| subtree.contains(n)))
    }

    /// Shutting down: asks every link that understands it to stop sending
    /// (`Closing`), and waits, within `within`, until each has answered
    /// `Closed` or gone down. Everything they wrote before the answer has
    /// been read and passed on by then.
    pub async fn drain(&self, within: Duration) {
        let links: Vec<Arc<Link>> = lock(&self.inner)
            .links
            .iter()
            .filter(|l| l.is_up() && l.speaks_closing())
            .cloned()
            .collect();
        if links.is_empty() {
            return;
        }
        let closing = control::link(&LinkFrame::Closing);
        for l in &links {
            l.send_control(closing.clone());
        }
        let all_closed = async {
            for l in &links {
                while l.is_up() && !l.closed.load(Relaxed) {
                    // Polled as well as notified: a notification sent before
                    // this wait began is not missed.
                    tokio::select! {
                        _ = l.closed_notify.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        };
        if tokio::time::timeout(within, all_closed).await.is_err() {
            tracing::warn!(?within, "bridge links did not answer Closing in time");
        }
    }

    /// True if `link`'s subtree still wants the message encoded in `frame`
    /// (a `LinkFrame::Msg` or `Sent`, length prefix included), judged by its origin,
    /// subject and queue targets: used to release messages held while the
    /// link was down or routed before the other side's state arrived.
    pub fn still_wanted(&self, link: &Link, frame: &[u8]) -> bool {
        let Some(m) = routed_in(frame) else {
            return false;
        };
        let routing = self.current_routing();
        let node = link.node();
        let children = routing.children(m.origin);
        let Some((_, subtree)) = children.iter().find(|(c, _)| *c == node) else {
            return false;
        };
        let (plain, _) = routing.interested(m.subject);
        plain.iter().any(|n| subtree.contains(n)) || m.queue_targets.iter().any(|(_, n)| subtree.contains(*n))
    }

    /// A message arrived over `via` (with who published it at its origin,
    /// if told, and its header block, if any): deliver it here and pass it
    /// on.
    pub fn receive(
        &self,
        router: &Router,
        via: &Link,
        routed: Routed<'_>,
        from: Option<Origin>,
        headers: Option<&[u8]>,
    ) {
        if libbus::subject::validate_subject(routed.subject).is_err()
            || routed.subject.starts_with(libbus::subject::RESERVED_PREFIX)
        {
            tracing::warn!(
                subject = routed.subject,
                "dropping an invalid subject from a bridge"
            );
            return;
        }
        if !self.allows(crate::acl::Action::Publish, routed.subject) {
            return;
        }
        let local = router.lookup_uncached(routed.subject);
        if !local.is_empty() {
            let me = self.node_id.as_str();
            // Who sent it, as its origin reported (an older daemon: only
            // its node).
            let from = from.unwrap_or_default();
            let sender = libbus::proto::Sender {
                node: routed.origin.to_owned(),
                conn_id: from.conn_id,
                uid: from.uid,
                ..Default::default()
            };
            let msg = Published::with_headers(routed.subject, routed.reply_to, headers, routed.payload)
                .sent_by(postcard::to_allocvec(&sender).unwrap_or_default());
            local.deliver_filtered(msg.frame(), |group| {
                routed.queue_targets.iter().any(|(g, n)| *g == group && *n == me)
            });
        }
        self.announce_if_changed(router);
        let routing = self.current_routing();
        let (plain, _) = routing.interested(routed.subject);
        self.forward(
            &routing,
            &routed,
            from.unwrap_or_default(),
            headers,
            &plain,
            Some(via),
        );
    }

    /// `count` messages published on `origin` to `subject` were lost on
    /// their way here (`LinkFrame::Lost` over `via`): the local plain
    /// subscribers of `subject` get `Lagged` for them, and the notice goes
    /// on into the subtrees that wanted them, as the messages would have.
    /// (Which member of a queue group would have got one is not known:
    /// groups are not told.)
    pub fn receive_lost(&self, router: &Router, via: &Link, origin: &str, subject: &str, count: u64) {
        // Notices follow the messages: none for what links may not carry.
        if libbus::subject::validate_subject(subject).is_err()
            || !self.allows(crate::acl::Action::Publish, subject)
        {
            return;
        }
        for t in &router.lookup_uncached(subject).plain {
            t.conn.outbox.report_lost(t.sid, count);
        }
        if !self.allows(crate::acl::Action::Subscribe, subject) {
            return;
        }
        let routing = self.current_routing();
        let (plain, _) = routing.interested(subject);
        for (child, subtree) in routing.children(origin).iter() {
            if !plain.iter().any(|n| subtree.contains(n)) {
                continue;
            }
            let Some(link) = self.link_to(child) else { continue };
            if !std::ptr::eq(via, Arc::as_ptr(&link)) {
                link.send_lost(origin, subject, count);
            }
        }
    }
}

/// A message published on this daemon, as the cluster forwards it.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// Its reply subject, for a request.
    pub reply_to: Option<&'a str>,
    /// Its header block (checked), if any.
    pub headers: Option<&'a [u8]>,
    /// Its payload.
    pub payload: &'a [u8],
    /// Who published it here.
    pub from: Origin,
}

/// The routed message in a link frame (`Msg` or `HMsg`, length prefix
/// included).
fn routed_in(frame: &[u8]) -> Option<Routed<'_>> {
    let body = frame.get(libbus::proto::LEN_PREFIX..)?;
    match libbus::codec::decode::<LinkFrame>(body).ok()? {
        LinkFrame::Msg(m) | LinkFrame::HMsg(_, m) | LinkFrame::Sent(_, _, m) => Some(m),
        _ => None,
    }
}
