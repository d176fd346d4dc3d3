//! Routing: subject → the subscribers a message goes to.
//!
//! The [`sublist`] trie is the index. Each connection's reader keeps a small
//! [`RouteCache`] of recent subjects, checked against a global generation
//! number, so a steady stream of publishes takes no lock at all; any
//! subscription change bumps the generation and caches refill on demand.

pub mod sublist;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use libbus::{proto::link::Interest, subject::RESERVED_PREFIX};

use bytes::Bytes;

use crate::{
    outbox::{PubFrame, RunSpan},
    registry::Conn,
};
use sublist::Sublist;

/// One subscription of one connection.
#[derive(Debug, Clone)]
pub struct Target {
    /// The subscribing connection.
    pub conn: Arc<Conn>,
    /// Its subscription id.
    pub sid: u64,
}

/// The subscribers of one subject, ready to deliver to.
#[derive(Debug, Default)]
pub struct Routes {
    /// Each gets the message.
    pub plain: Vec<Target>,
    /// One member of each group gets the message: (group name, members).
    pub groups: Vec<(Box<str>, Vec<Target>)>,
    /// Round-robin position for choosing group members.
    next: AtomicUsize,
}

impl Routes {
    /// True if `other` delivers to exactly the same subscriptions, so
    /// messages for either can share a `Run`: the same routes, or two
    /// subjects with the same plain subscribers (say, two subjects under one
    /// wildcard) and no queue groups, whose members are chosen per message.
    fn same_as(&self, other: &Routes) -> bool {
        std::ptr::eq(self, other)
            || (self.groups.is_empty()
                && other.groups.is_empty()
                && self.plain.len() == other.plain.len()
                && self
                    .plain
                    .iter()
                    .zip(&other.plain)
                    .all(|(a, b)| a.sid == b.sid && Arc::ptr_eq(&a.conn, &b.conn)))
    }

    /// True when nothing subscribes to the subject.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// Queues `msg` for every plain subscriber and one member per group. A
    /// subscriber whose queue is full gets a drop counted instead; within a
    /// group, the next member with room is tried first. Never waits.
    pub fn deliver(&self, msg: PubFrame<'_>) {
        self.deliver_filtered(msg, |_| true);
    }

    /// [`deliver`](Self::deliver) for consecutive messages: each plain
    /// subscriber's queue is locked once for all of them, and gets them as
    /// one `Run` frame if they lie together in one read (`run`).
    fn deliver_run(&self, msgs: &[PubFrame<'_>], run: Option<&RunSpan<'_>>) {
        for t in &self.plain {
            t.conn.outbox.push_many(t.sid, msgs, run);
        }
        if !self.groups.is_empty() {
            for msg in msgs {
                self.deliver_groups(*msg, |_| true);
            }
        }
    }

    /// [`deliver`](Self::deliver), but only to the groups `group_here` accepts
    /// (a message from another node names the node whose member gets it).
    pub fn deliver_filtered(&self, msg: PubFrame<'_>, group_here: impl Fn(&str) -> bool) {
        for t in &self.plain {
            if !t.conn.outbox.try_push(t.sid, msg) {
                t.conn.outbox.record_drop(t.sid);
            }
        }
        self.deliver_groups(msg, group_here);
    }

    /// Queues `msg` for one member of each group `group_here` accepts.
    fn deliver_groups(&self, msg: PubFrame<'_>, group_here: impl Fn(&str) -> bool) {
        for (group, members) in &self.groups {
            if !group_here(group) {
                continue;
            }
            let n = members.len();
            let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
            let taken = (0..n).any(|i| {
                let t = &members[(start + i) % n];
                t.conn.outbox.try_push(t.sid, msg)
            });
            if !taken {
                let t = &members[start];
                t.conn.outbox.record_drop(t.sid);
            }
        }
    }
}

/// Publishes a reader has routed but not yet queued: delivered together, so
/// that a run of messages to the same subscribers takes each subscriber's
/// queue lock once rather than once per message, and, when they came back to
/// back in one read, is forwarded as they came (one `Run` frame). The reader
/// delivers them before it handles any other kind of frame and before it
/// waits for input, so effects stay in the order the frames came in.
#[derive(Debug)]
pub struct Deliveries<'a> {
    /// The read the messages are in.
    read: &'a Bytes,
    /// Most bytes of frames in one `Run`.
    max_run: usize,
    /// Runs of consecutive messages with the same routes.
    runs: Vec<Run>,
    /// The messages, in order.
    msgs: Vec<PubFrame<'a>>,
}

/// Consecutive messages with the same routes, back to back in the read.
#[derive(Debug)]
struct Run {
    routes: Arc<Routes>,
    /// How many.
    len: usize,
    /// Their frames' bytes.
    bytes: usize,
}

/// Publishes a reader gathers before delivering them.
const DELIVERIES_MAX: usize = 256;

/// Most bytes of frames forwarded in one `Run` (a single larger frame makes
/// a run of its own). Measured against runs as long as the whole read: the
/// daemon's CPU per 128 B message was the same, and 1 -> 1 with 16 KiB
/// payloads ran faster (the subscriber reassembles smaller frames).
const RUN_MAX: usize = 16 << 10;

impl<'a> Deliveries<'a> {
    /// Deliveries of messages that all lie in `read`, forwarded in runs of
    /// at most [`RUN_MAX`] bytes of frames, and no more than `max_frame`
    /// (the daemon's, which its clients accept).
    pub fn in_read(read: &'a Bytes, max_frame: u32) -> Self {
        Self {
            read,
            max_run: RUN_MAX.min(max_frame as usize),
            runs: Vec::new(),
            msgs: Vec::new(),
        }
    }

    /// Adds a message for `routes` (shared only when a new run starts);
    /// delivers everything once enough gathered.
    pub fn push(&mut self, routes: &Arc<Routes>, msg: PubFrame<'a>) {
        let size = msg.frame.len();
        match (self.runs.last_mut(), self.msgs.last()) {
            (Some(run), Some(prev))
                if run.routes.same_as(routes)
                    && prev.frame.as_ptr_range().end == msg.frame.as_ptr()
                    && run.bytes + size <= self.max_run =>
            {
                run.len += 1;
                run.bytes += size;
            }
            _ => self.runs.push(Run {
                routes: routes.clone(),
                len: 1,
                bytes: size,
            }),
        }
        self.msgs.push(msg);
        if self.msgs.len() >= DELIVERIES_MAX {
            self.deliver();
        }
    }

    /// Queues everything gathered, in order.
    pub fn deliver(&mut self) {
        let mut rest = &self.msgs[..];
        for run in self.runs.drain(..) {
            let (msgs, after) = rest.split_at(run.len);
            let span = span(self.read, msgs, run.routes.plain.len() > 1);
            run.routes.deliver_run(msgs, span.as_ref());
            rest = after;
        }
        self.msgs.clear();
    }
}

/// Where adjacent frames `msgs` lie in `read`, as a run to forward.
fn span<'a>(read: &'a Bytes, msgs: &[PubFrame<'_>], fan_out: bool) -> Option<RunSpan<'a>> {
    let base = read.as_ptr() as usize;
    let start = (msgs.first()?.frame.as_ptr() as usize).checked_sub(base)?;
    let end = (msgs.last()?.frame.as_ptr_range().end as usize).checked_sub(base)?;
    (end <= read.len()).then(|| RunSpan {
        read,
        range: start..end,
        msgs: msgs.len() as u64,
        payload: msgs.iter().map(|m| u64::from(m.payload_len)).sum(),
        fan_out,
    })
}

/// Entries a reader's cache holds before it starts over.
const CACHE_MAX: usize = 1024;

/// A reader task's private cache of recent lookups. Hashed with foldhash
/// (seeded per process, several times cheaper than SipHash on short keys;
/// SipHash was ~10% of the daemon's time under a 128 B publish stream). The
/// cache is private to one connection and bounded, so a client crafting
/// colliding subjects can only slow down itself.
#[derive(Debug, Default)]
pub struct RouteCache {
    generation: u64,
    /// Keyed by the subject's bytes, so the hot path can look a subject up
    /// straight from the frame, before (or instead of) checking its UTF-8.
    routes: HashMap<Box<[u8]>, Arc<Routes>, foldhash::fast::RandomState>,
    /// The last subject found and its routes, checked before hashing: a
    /// stream of publishes to one subject costs a compare per message (the
    /// hash lookup was ~12% of the daemon's time under a 128 B stream).
    last: Option<Last>,
}

/// The last subject a [`RouteCache`] answered for.
#[derive(Debug)]
struct Last {
    subject: Vec<u8>,
    routes: Arc<Routes>,
    /// The bytes of the last reply-less publish to it before its payload
    /// (length prefix, tag, subject, reply option, payload length; empty:
    /// none). A frame that starts with the same bytes is a publish to the
    /// same subject with as long a payload: no decoding, one compare.
    head: Vec<u8>,
}

/// The shared subscription index.
#[derive(Debug, Default)]
pub struct Router {
    list: RwLock<Sublist<Target>>,
    /// Bumped on every change; caches older than this are stale.
    generation: AtomicU64,
    /// Distinct (pattern, queue) of local subscriptions, with counts: the
    /// interest this daemon announces to bridged daemons.
    interest: Mutex<BTreeMap<Interest, usize>>,
    /// Bumped when the set of distinct interests changes.
    interest_version: AtomicU64,
}

impl Router {
    /// Adds subscription `sid` of `conn`.
    pub fn subscribe(&self, conn: &Arc<Conn>, sid: u64, pattern: &str, queue: Option<&str>) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.insert(
            pattern,
            queue,
            Target {
                conn: conn.clone(),
                sid,
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
        drop(list);
        if !pattern.starts_with(RESERVED_PREFIX) {
            let key = Interest {
                pattern: pattern.into(),
                queue: queue.map(Into::into),
            };
            let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
            let n = interest.entry(key).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.interest_version.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Removes subscription `sid` of connection `conn_id`.
    pub fn unsubscribe(&self, conn_id: u64, sid: u64, pattern: &str, queue: Option<&str>) {
        self.unsubscribe_all(conn_id, [(sid, pattern, queue)]);
    }

    /// Removes several of a connection's subscriptions under one lock (all of
    /// them when it closes).
    pub fn unsubscribe_all<'a>(
        &self,
        conn_id: u64,
        subs: impl IntoIterator<Item = (u64, &'a str, Option<&'a str>)>,
    ) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        for (sid, pattern, queue) in subs {
            if list
                .remove(pattern, queue, |t| t.conn.id == conn_id && t.sid == sid)
                .is_none()
            {
                continue;
            }
            let key = Interest {
                pattern: pattern.into(),
                queue: queue.map(Into::into),
            };
            if let Some(n) = interest.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    interest.remove(&key);
                    changed = true;
                }
            }
        }
        self.generation.fetch_add(1, Ordering::Release);
        if changed {
            self.interest_version.fetch_add(1, Ordering::Release);
        }
    }

    /// The distinct interests of local subscribers (outside `$BUS.`), and
    /// the version of that set.
    pub fn interest(&self) -> (u64, Vec<Interest>) {
        let interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let version = self.interest_version.load(Ordering::Acquire);
        (version, interest.keys().cloned().collect())
    }

    /// Changes whenever [`interest`](Self::interest) would.
    pub fn interest_version(&self) -> u64 {
        self.interest_version.load(Ordering::Acquire)
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.list.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The routes for `subject` if `cache` holds them and is current. Only
    /// subjects that passed validation are ever cached, so a hit also means
    /// the subject is valid.
    pub fn cached<'c>(&self, subject: &[u8], cache: &'c mut RouteCache) -> Option<&'c Arc<Routes>> {
        self.cached_with_head(subject, &[], cache)
    }

    /// [`cached`](Self::cached) for a reply-less publish whose frame begins
    /// with `head` (every byte before its payload), remembered so that the
    /// next frame with the same head is found by [`repeated`](Self::repeated).
    pub fn cached_with_head<'c>(
        &self,
        subject: &[u8],
        head: &[u8],
        cache: &'c mut RouteCache,
    ) -> Option<&'c Arc<Routes>> {
        if !self.is_current(cache) {
            return None;
        }
        let last = match cache.last.take() {
            Some(last) if last.subject == subject => last,
            other => {
                let Some(routes) = cache.routes.get(subject).cloned() else {
                    cache.last = other;
                    return None;
                };
                // The allocations are reused from one subject to the next.
                let (mut key, head) = other.map(|l| (l.subject, l.head)).unwrap_or_default();
                key.clear();
                key.extend_from_slice(subject);
                Last {
                    subject: key,
                    routes,
                    head,
                }
            }
        };
        let last = cache.last.insert(last);
        last.head.clear();
        last.head.extend_from_slice(head);
        Some(&last.routes)
    }

    /// The routes of the whole frame `frame` (prefix included) and its
    /// payload, if it begins with the head of the last reply-less publish
    /// [`cached_with_head`](Self::cached_with_head) found and the cache is
    /// current: the same subject, and a payload as long, found without
    /// decoding the frame.
    pub fn repeated<'c, 'f>(
        &self,
        frame: &'f [u8],
        cache: &'c mut RouteCache,
    ) -> Option<(&'c Arc<Routes>, &'f [u8])> {
        if !self.is_current(cache) {
            return None;
        }
        let last = cache.last.as_ref().filter(|l| !l.head.is_empty())?;
        let (head, payload) = frame.split_at_checked(last.head.len())?;
        (head == last.head.as_slice()).then_some((&last.routes, payload))
    }

    /// True if nothing changed since `cache` was filled; else empties it.
    #[inline]
    fn is_current(&self, cache: &mut RouteCache) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation {
            cache.routes.clear();
            cache.last = None;
            cache.generation = generation;
            return false;
        }
        true
    }

    /// The routes for a validated `subject` that [`cached`](Self::cached)
    /// did not have: from the trie, remembered in `cache`.
    pub fn lookup(&self, subject: &str, cache: &mut RouteCache) -> Arc<Routes> {
        let routes = self.lookup_uncached(subject);
        if cache.routes.len() >= CACHE_MAX {
            cache.routes.clear();
        }
        cache.routes.insert(subject.as_bytes().into(), routes.clone());
        routes
    }

    /// The routes for `subject`, straight from the trie.
    pub fn lookup_uncached(&self, subject: &str) -> Arc<Routes> {
        let m = self
            .list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .matches(subject);
        Arc::new(Routes {
            plain: m.plain,
            groups: m.groups,
            next: AtomicUsize::new(fastrand::usize(..)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Stats;
    use libbus::proto::api::Peer;

    fn conn(id: u64) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            name: format!("c{id}"),
            transport: "unix",
            peer: Peer::Unix {
                pid: 1,
                uid: 0,
                gid: 0,
            },
            connected_at: std::time::SystemTime::now(),
            outbox: crate::outbox::Outbox::new(1 << 20, true),
            stats: Stats::default(),
            subs: Mutex::new(Default::default()),
            kick: Default::default(),
        })
    }

    /// Subscription ids the cache answers for `subject`; `None` on a miss.
    fn cached_sids(router: &Router, subject: &str, cache: &mut RouteCache) -> Option<Vec<u64>> {
        let routes = router.cached(subject.as_bytes(), cache)?;
        let mut sids: Vec<u64> = routes.plain.iter().map(|t| t.sid).collect();
        sids.sort_unstable();
        Some(sids)
    }

    #[test]
    fn subjects_with_the_same_plain_subscribers_share_runs_groups_never() {
        let router = Router::default();
        let (a, b) = (conn(1), conn(2));
        router.subscribe(&a, 1, "x.*", None);
        router.subscribe(&b, 2, "x.*", None);
        router.subscribe(&b, 3, "x.only", None);
        router.subscribe(&a, 4, "q.*", Some("workers"));
        let routes = |s: &str| router.lookup_uncached(s);
        assert!(routes("x.a").same_as(&routes("x.b")));
        assert!(!routes("x.a").same_as(&routes("x.only")), "one more subscriber");
        assert!(!routes("x.a").same_as(&routes("y.a")), "none");
        let q = routes("q.a");
        assert!(q.same_as(&q), "the same routes always");
        assert!(!q.same_as(&routes("q.b")), "group members are chosen per message");
    }

    #[test]
    fn the_cache_answers_alternating_subjects_and_forgets_on_any_change() {
        let router = Router::default();
        let c = conn(1);
        router.subscribe(&c, 1, "a.b", None);
        router.subscribe(&c, 2, "a.*", None);
        let mut cache = RouteCache::default();
        assert_eq!(cached_sids(&router, "a.b", &mut cache), None);
        router.lookup("a.b", &mut cache);
        router.lookup("a.c", &mut cache);
        // The same subject twice (the last-subject path), then switching.
        for subject in ["a.b", "a.b", "a.c", "a.c", "a.b", "a.c"] {
            let want = if subject == "a.b" { vec![1, 2] } else { vec![2] };
            assert_eq!(cached_sids(&router, subject, &mut cache), Some(want), "{subject}");
        }
        assert_eq!(cached_sids(&router, "a.d", &mut cache), None);
        // A new subscription makes every cached answer stale, the last one too.
        router.subscribe(&c, 3, "a.b", None);
        assert_eq!(cached_sids(&router, "a.b", &mut cache), None);
        router.lookup("a.b", &mut cache);
        assert_eq!(cached_sids(&router, "a.b", &mut cache), Some(vec![1, 2, 3]));
        assert_eq!(cached_sids(&router, "a.b", &mut cache), Some(vec![1, 2, 3]));
    }

    fn pub_frame(subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        let p = libbus::proto::Pub {
            subject,
            reply_to,
            payload,
        };
        libbus::wire::encode_pub(&p, &mut frame, u32::MAX).unwrap();
        frame
    }

    /// Subscription ids and payload [`Router::repeated`] finds for `frame`.
    fn repeated(router: &Router, frame: &[u8], cache: &mut RouteCache) -> Option<(Vec<u64>, Vec<u8>)> {
        let (routes, payload) = router.repeated(frame, cache)?;
        Some((routes.plain.iter().map(|t| t.sid).collect(), payload.to_vec()))
    }

    #[test]
    fn a_frame_with_the_last_head_is_found_without_decoding_and_nothing_else_is() {
        let router = Router::default();
        let c = conn(1);
        router.subscribe(&c, 1, "a.b", None);
        let mut cache = RouteCache::default();
        let first = pub_frame("a.b", None, b"one");
        assert!(router.repeated(&first, &mut cache).is_none(), "no head yet");
        router.lookup("a.b", &mut cache);
        let payload_at = first.len() - 3;
        assert!(router
            .cached_with_head(b"a.b", &first[..payload_at], &mut cache)
            .is_some());
        for payload in [&b"two"[..], b"six"] {
            let frame = pub_frame("a.b", None, payload);
            assert_eq!(
                repeated(&router, &frame, &mut cache),
                Some((vec![1], payload.to_vec()))
            );
        }
        // Another length, subject, or a reply subject: decoded as usual.
        for frame in [
            pub_frame("a.b", None, b"four"),
            pub_frame("a.c", None, b"two"),
            pub_frame("a.b", Some("r"), b"two"),
            pub_frame("a.b", None, b"tw"),
        ] {
            assert_eq!(repeated(&router, &frame, &mut cache), None, "{frame:?}");
        }
        // The general path (a request, say) forgets the head.
        assert!(router.cached(b"a.b", &mut cache).is_some());
        assert_eq!(
            repeated(&router, &pub_frame("a.b", None, b"two"), &mut cache),
            None
        );
        // As does any change of subscriptions.
        assert!(router
            .cached_with_head(b"a.b", &first[..payload_at], &mut cache)
            .is_some());
        router.subscribe(&c, 2, "a.*", None);
        assert_eq!(
            repeated(&router, &pub_frame("a.b", None, b"two"), &mut cache),
            None
        );
    }
}
