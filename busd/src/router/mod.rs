//! Routing: subject → the subscribers a message goes to. Pure logic: no
//! connections, no queues, no I/O; generic over the subscriber type `T`
//! (busd's is [`deliver::Target`](crate::deliver::Target)), so it is
//! tested with plain values.
//!
//! The [`sublist`] trie is the index. Each connection's reader keeps a
//! [`RouteCache`] of recent subjects (up to [`CACHE_MAX`], one evicted at
//! random when full), checked against a global generation
//! number, so a steady stream of publishes takes no lock at all. A
//! subscription change bumps the generation and is logged; a cache that
//! sees the generation move forgets only the subjects the changed
//! patterns match, and refills on demand.
//! The cache also remembers the head of the last publish (every byte before
//! its payload): a frame that begins with it is that subject again, found
//! by one compare without decoding ([`Router::repeated`]).

pub mod sublist;

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use libbus::{
    proto::{link::Interest, LEN_PREFIX},
    subject::RESERVED_PREFIX,
    wire::{self, RawPub},
};

use sublist::Sublist;

/// The subscribers of one subject.
#[derive(Debug)]
pub struct Routes<T> {
    /// Each gets the message.
    pub plain: Vec<T>,
    /// One member of each group gets the message: (group name, members,
    /// shared with the trie: finding them copies none).
    pub groups: Vec<(Box<str>, Arc<Vec<T>>)>,
    /// Round-robin position for choosing group members.
    next: AtomicUsize,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            groups: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }
}

impl<T: PartialEq> Routes<T> {
    /// True if `other` delivers to exactly the same subscriptions, so
    /// messages for either can share a `Run`: the same routes, or two
    /// subjects with the same plain subscribers (say, two subjects under one
    /// wildcard) and no queue groups, whose members are chosen per message.
    pub fn same_as(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
            || (self.groups.is_empty() && other.groups.is_empty() && self.plain == other.plain)
    }
}

impl<T> Routes<T> {
    /// True when nothing subscribes to the subject.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    /// Where to start looking for a group member with room, among `n`:
    /// round robin over the messages.
    pub fn group_start(&self, n: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % n.max(1)
    }
}

/// Entries a reader's cache holds; beyond it, one chosen at random makes
/// room for each new one. A publisher cycling through more subjects than
/// this still finds most of them (an LRU or FIFO cache would find none).
/// The cache grows only as a connection publishes to new subjects: at
/// most about 1 MiB for one cycling through this many.
pub const CACHE_MAX: usize = 8192;

/// Subject → its routes and its place in [`Entries::keys`].
type EntryMap<T> = HashMap<Box<[u8]>, (Arc<Routes<T>>, usize), foldhash::fast::RandomState>;

/// A reader's cached subjects, bounded by [`CACHE_MAX`].
#[derive(Debug)]
struct Entries<T> {
    map: EntryMap<T>,
    /// Every subject in `map`, to pick one at random in O(1).
    keys: Vec<Box<[u8]>>,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Self {
            map: HashMap::default(),
            keys: Vec::new(),
        }
    }
}

impl<T> Entries<T> {
    fn get(&self, subject: &[u8]) -> Option<&Arc<Routes<T>>> {
        self.map.get(subject).map(|(r, _)| r)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds `subject`, evicting one entry at random when full.
    fn insert(&mut self, subject: &[u8], routes: Arc<Routes<T>>) {
        if let Some(e) = self.map.get_mut(subject) {
            e.0 = routes;
            return;
        }
        if self.keys.len() >= CACHE_MAX {
            let i = fastrand::usize(..self.keys.len());
            self.map.remove(&self.keys[i]);
            self.remove_key_at(i);
        }
        self.keys.push(subject.into());
        self.map.insert(subject.into(), (routes, self.keys.len() - 1));
    }

    fn clear(&mut self) {
        self.map.clear();
        self.keys.clear();
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Forgets the subjects `pattern` matches: the one it names, or with a
    /// wildcard, every one it matches.
    fn forget(&mut self, pattern: &str) {
        if !pattern.split('.').any(|t| t == "*" || t == ">") {
            if let Some((_, i)) = self.map.remove(pattern.as_bytes()) {
                self.remove_key_at(i);
            }
            return;
        }
        let mut i = 0;
        while i < self.keys.len() {
            let subject = std::str::from_utf8(&self.keys[i]).unwrap_or_default();
            if libbus::subject::matches(pattern, subject) {
                self.map.remove(&self.keys[i]);
                self.remove_key_at(i);
            } else {
                i += 1;
            }
        }
    }

    /// Drops `keys[i]` (already out of `map`), moving the last key there.
    fn remove_key_at(&mut self, i: usize) {
        self.keys.swap_remove(i);
        if let Some(moved) = self.keys.get(i) {
            if let Some(e) = self.map.get_mut(moved) {
                e.1 = i;
            }
        }
    }
}

/// Recent subscription changes, so a reader's cache forgets only what they
/// can affect.
#[derive(Debug, Default)]
struct ChangeLog {
    /// (generation it made, pattern it touched), oldest first.
    changes: std::collections::VecDeque<(u64, Box<str>)>,
    /// The newest generation whose change fell out of `changes`: a cache
    /// older than it cannot tell what changed and starts over.
    forgotten: u64,
}

/// Changes [`ChangeLog`] keeps.
const CHANGE_LOG: usize = 256;

impl ChangeLog {
    fn push(&mut self, generation: u64, pattern: &str) {
        if self.changes.len() >= CHANGE_LOG {
            if let Some((g, _)) = self.changes.pop_front() {
                self.forgotten = g;
            }
        }
        self.changes.push_back((generation, pattern.into()));
    }
}

/// A reader task's private cache of recent lookups. Hashed with foldhash
/// (seeded per process, several times cheaper than SipHash on short keys).
/// The cache is private to one connection and bounded, so a client crafting
/// colliding subjects can only slow down itself.
#[derive(Debug)]
pub struct RouteCache<T> {
    generation: u64,
    /// Keyed by the subject's bytes, so a subject can be looked up straight
    /// from the frame, before (or instead of) checking its UTF-8.
    routes: Entries<T>,
    /// The last subject found and its routes, checked before hashing: a
    /// stream of publishes to one subject costs a compare per message.
    last: Option<Last<T>>,
    /// The routes the map answered with last (their address, never
    /// dereferenced): a subject becomes `last` when it is found twice in a
    /// row, so a stream cycling through many subjects does not copy each
    /// one into `last` only to replace it with the next.
    found: usize,
}

impl<T> Default for RouteCache<T> {
    fn default() -> Self {
        Self {
            generation: 0,
            routes: Entries::default(),
            last: None,
            found: 0,
        }
    }
}

/// The last subject a [`RouteCache`] answered for.
#[derive(Debug)]
struct Last<T> {
    subject: Vec<u8>,
    routes: Arc<Routes<T>>,
    /// The bytes of the last reply-less publish to it before its payload
    /// (length prefix, tag, subject, reply option, payload length; empty:
    /// none), and where the subject lies in them.
    head: Vec<u8>,
    subject_at: Range<usize>,
}

/// The shared subscription index.
#[derive(Debug)]
pub struct Router<T> {
    list: RwLock<Sublist<T>>,
    /// Bumped on every change, under `list`'s write lock, after the change
    /// is logged in `changes`; caches older than this catch up.
    generation: AtomicU64,
    changes: RwLock<ChangeLog>,
    /// Distinct (pattern, queue) of local subscriptions, with counts: the
    /// interest this daemon announces to bridged daemons.
    interest: Mutex<BTreeMap<Interest, usize>>,
    /// Bumped when the set of distinct interests changes.
    interest_version: AtomicU64,
}

impl<T: Clone + Eq + std::hash::Hash> Default for Router<T> {
    fn default() -> Self {
        Self {
            list: RwLock::new(Sublist::new()),
            generation: AtomicU64::new(0),
            changes: RwLock::default(),
            interest: Mutex::new(BTreeMap::new()),
            interest_version: AtomicU64::new(0),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Router<T> {
    /// Adds `target`'s subscription to `pattern`.
    pub fn subscribe(&self, pattern: &str, queue: Option<&str>, target: T) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        list.insert(pattern, queue, target);
        self.changed([pattern]);
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

    /// Removes subscriptions, each given as (pattern, queue, target), under
    /// one lock (all of a connection's when it closes).
    pub fn unsubscribe<'a>(&self, subs: impl IntoIterator<Item = (&'a str, Option<&'a str>, T)>) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let mut interest = self.interest.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = false;
        let mut removed = Vec::new();
        for (pattern, queue, target) in subs {
            if list.remove(pattern, queue, &target).is_none() {
                continue;
            }
            removed.push(pattern);
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
        self.changed(removed);
        if changed {
            self.interest_version.fetch_add(1, Ordering::Release);
        }
    }

    /// Logs that `patterns` changed and bumps the generation (the caller
    /// holds `list`'s write lock).
    fn changed<'p>(&self, patterns: impl IntoIterator<Item = &'p str>) {
        let next = self.generation.load(Ordering::Relaxed) + 1;
        let mut log = self.changes.write().unwrap_or_else(|e| e.into_inner());
        for p in patterns {
            log.push(next, p);
        }
        drop(log);
        self.generation.store(next, Ordering::Release);
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

    /// Empties every route cache (they refill on demand): what a publish
    /// may reach has changed without a subscription changing (a reloaded
    /// access policy).
    pub fn invalidate(&self) {
        let _list = self.list.write().unwrap_or_else(|e| e.into_inner());
        self.changed([">"]);
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.list.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The publish in `frame` (prefix included) and its routes, if the
    /// frame begins with the head of the last reply-less publish
    /// [`cached`](Self::cached) found and the cache is current: the same
    /// subject (validated when it was cached) and a payload as long, read
    /// without decoding.
    #[inline]
    pub fn repeated<'f, 'c>(
        &self,
        frame: &'f [u8],
        cache: &'c mut RouteCache<T>,
    ) -> Option<(RawPub<'f>, &'c Arc<Routes<T>>)> {
        self.catch_up(cache);
        let last = cache.last.as_ref().filter(|l| !l.head.is_empty())?;
        let (head, payload) = frame.split_at_checked(last.head.len())?;
        (head == last.head.as_slice()).then(|| {
            let p = RawPub {
                subject: head.get(last.subject_at.clone()).unwrap_or_default(),
                reply_to: None,
                payload,
                headers: None,
            };
            (p, &last.routes)
        })
    }

    /// The routes for `subject` if `cache` holds them and is current. Only
    /// subjects that passed validation are ever cached, so a hit also means
    /// the subject is valid. `head` is the frame's bytes before its payload
    /// for a reply-less publish (empty otherwise), remembered so that
    /// [`repeated`](Self::repeated) finds the next frame like it.
    #[inline]
    pub fn cached<'c>(
        &self,
        subject: &[u8],
        head: &[u8],
        cache: &'c mut RouteCache<T>,
    ) -> Option<&'c Arc<Routes<T>>> {
        self.catch_up(cache);
        let last = match cache.last.take() {
            Some(last) if last.subject == subject => last,
            other => {
                let Some(routes) = cache.routes.get(subject) else {
                    cache.last = other;
                    return None;
                };
                let address = Arc::as_ptr(routes) as usize;
                if address != cache.found {
                    cache.found = address;
                    cache.last = other;
                    return Some(routes);
                }
                let routes = routes.clone();
                // The allocations are reused from one subject to the next.
                let (mut key, head) = other.map(|l| (l.subject, l.head)).unwrap_or_default();
                key.clear();
                key.extend_from_slice(subject);
                Last {
                    subject: key,
                    routes,
                    head,
                    subject_at: 0..0,
                }
            }
        };
        let last = cache.last.insert(last);
        if last.head != head {
            last.head.clear();
            last.head.extend_from_slice(head);
            let at = LEN_PREFIX + 1 + wire::varint_len(subject.len() as u64);
            last.subject_at = at..at + subject.len();
        }
        Some(&last.routes)
    }

    /// Brings `cache` up to date if anything changed since it was: it
    /// forgets the subjects that the changed patterns match (all of them if
    /// it is older than the change log keeps).
    #[inline]
    fn catch_up(&self, cache: &mut RouteCache<T>) {
        let generation = self.generation.load(Ordering::Acquire);
        if cache.generation != generation {
            self.forget_changed(cache, generation);
        }
    }

    #[inline(never)]
    fn forget_changed(&self, cache: &mut RouteCache<T>, generation: u64) {
        let log = self.changes.read().unwrap_or_else(|e| e.into_inner());
        if log.forgotten > cache.generation {
            cache.routes.clear();
            cache.last = None;
        } else if !cache.routes.is_empty() || cache.last.is_some() {
            for (_, pattern) in log.changes.iter().filter(|(g, _)| *g > cache.generation) {
                cache.routes.forget(pattern);
                let last_matches = cache.last.as_ref().is_some_and(|l| {
                    libbus::subject::matches(pattern, std::str::from_utf8(&l.subject).unwrap_or_default())
                });
                if last_matches {
                    cache.last = None;
                }
            }
        }
        cache.generation = generation;
    }

    /// The routes for a validated `subject` that [`cached`](Self::cached)
    /// did not have: from the trie, remembered in `cache`.
    pub fn lookup(&self, subject: &str, cache: &mut RouteCache<T>) -> Arc<Routes<T>> {
        let routes = self.lookup_uncached(subject);
        cache.routes.insert(subject.as_bytes(), routes.clone());
        cache.found = Arc::as_ptr(&routes) as usize;
        routes
    }

    /// The subscribers of exactly `pattern` (and `queue`), not of the
    /// patterns that overlap it: where a message that came for that one
    /// pattern goes.
    pub fn lookup_exact(&self, pattern: &str, queue: Option<&str>) -> Arc<Routes<T>> {
        let m = self
            .list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .exact(pattern, queue);
        Arc::new(Routes {
            plain: m.plain,
            groups: m.groups,
            next: AtomicUsize::new(fastrand::usize(..)),
        })
    }

    /// Changes on every subscription change: routes found before it may be
    /// stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The routes for `subject`, straight from the trie.
    pub fn lookup_uncached(&self, subject: &str) -> Arc<Routes<T>> {
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

    /// A subscriber as the tests see it: (connection, sid).
    type Sub = (u64, u64);

    /// Subscription ids the cache answers for `subject`; `None` on a miss.
    fn cached_sids(router: &Router<Sub>, subject: &str, cache: &mut RouteCache<Sub>) -> Option<Vec<u64>> {
        let routes = router.cached(subject.as_bytes(), &[], cache)?;
        let mut sids: Vec<u64> = routes.plain.iter().map(|t| t.1).collect();
        sids.sort_unstable();
        Some(sids)
    }

    #[test]
    fn subjects_with_the_same_plain_subscribers_share_runs_groups_never() {
        let router = Router::default();
        router.subscribe("x.*", None, (1, 1));
        router.subscribe("x.*", None, (2, 2));
        router.subscribe("x.only", None, (2, 3));
        router.subscribe("q.*", Some("workers"), (1, 4));
        let routes = |s: &str| router.lookup_uncached(s);
        assert!(routes("x.a").same_as(&routes("x.b")));
        assert!(!routes("x.a").same_as(&routes("x.only")), "one more subscriber");
        assert!(!routes("x.a").same_as(&routes("y.a")), "none");
        let q = routes("q.a");
        assert!(q.same_as(&q), "the same routes always");
        assert!(!q.same_as(&routes("q.b")), "group members are chosen per message");
    }

    #[test]
    fn a_queue_group_is_found_without_copying_its_members() {
        let router: Router<Sub> = Router::default();
        for i in 0..1000 {
            router.subscribe("jobs.*", Some("w"), (1, i));
        }
        let (a, b) = (router.lookup_uncached("jobs.x"), router.lookup_uncached("jobs.y"));
        assert!(Arc::ptr_eq(&a.groups[0].1, &b.groups[0].1), "one list, shared");
        // A change copies it once for the routes still holding the old one,
        // which keep seeing it as it was.
        router.unsubscribe([("jobs.*", Some("w"), (1, 0))]);
        let c = router.lookup_uncached("jobs.x");
        assert_eq!((a.groups[0].1.len(), c.groups[0].1.len()), (1000, 999));
        assert!(!c.groups[0].1.contains(&(1, 0)));
    }

    #[test]
    fn a_full_cache_evicts_one_entry_at_a_time_and_keeps_answering() {
        let router: Router<Sub> = Router::default();
        router.subscribe("s.*", None, (1, 1));
        let mut cache = RouteCache::default();
        let n = CACHE_MAX + CACHE_MAX / 2;
        let subject = |i: usize| format!("s.{i}");
        for round in 0..3 {
            let mut hits = 0;
            for i in 0..n {
                match cached_sids(&router, &subject(i), &mut cache) {
                    Some(sids) => {
                        assert_eq!(sids, [1]);
                        hits += 1;
                    }
                    None => {
                        router.lookup(&subject(i), &mut cache);
                    }
                }
                assert!(cache.routes.len() <= CACHE_MAX);
                assert_eq!(cache.routes.map.len(), cache.routes.len(), "map and keys agree");
            }
            // Cycling through 1.5 times what it holds: an LRU cache would
            // find nothing; one that starts over when full, little.
            if round > 0 {
                assert!(hits > n / 3, "round {round}: {hits} hits of {n}");
            }
        }
        for (i, k) in cache.routes.keys.iter().enumerate() {
            assert_eq!(cache.routes.map.get(k).map(|e| e.1), Some(i), "index of {k:?}");
        }
    }

    #[test]
    fn the_cache_answers_alternating_subjects_and_forgets_what_changes_touch() {
        let router = Router::default();
        router.subscribe("a.b", None, (1, 1));
        router.subscribe("a.*", None, (1, 2));
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
        // A subscription elsewhere leaves every cached answer standing.
        router.subscribe("z.>", None, (1, 9));
        assert_eq!(cached_sids(&router, "a.b", &mut cache), Some(vec![1, 2]));
        assert_eq!(cached_sids(&router, "a.c", &mut cache), Some(vec![2]));
        // One to a.b makes that answer stale, the last one too; a.c stands.
        router.subscribe("a.b", None, (1, 3));
        assert_eq!(cached_sids(&router, "a.c", &mut cache), Some(vec![2]));
        assert_eq!(cached_sids(&router, "a.b", &mut cache), None);
        router.lookup("a.b", &mut cache);
        assert_eq!(cached_sids(&router, "a.b", &mut cache), Some(vec![1, 2, 3]));
        // Unsubscribing a wildcard forgets every subject it matches.
        router.unsubscribe([("a.*", None, (1, 2))]);
        assert_eq!(cached_sids(&router, "a.b", &mut cache), None);
        assert_eq!(cached_sids(&router, "a.c", &mut cache), None);
        router.lookup("a.b", &mut cache);
        assert_eq!(cached_sids(&router, "a.b", &mut cache), Some(vec![1, 3]));
        assert_eq!(router.len(), 3);
        // More changes than the log keeps: the cache starts over.
        for i in 0..CHANGE_LOG as u64 + 1 {
            router.subscribe("z.>", None, (2, i));
        }
        assert_eq!(cached_sids(&router, "a.b", &mut cache), None);
    }

    proptest::proptest! {
        /// Whatever changes come between lookups, a cached answer is the
        /// trie's answer now.
        #[test]
        fn a_cached_answer_is_always_the_current_one(
            ops in proptest::collection::vec(
                (0u8..4, "[ab](\\.[ab*>]){0,2}", "[ab](\\.[ab]){0,2}", proptest::option::of("[xy]")),
                1..200,
            ),
        ) {
            let router: Router<Sub> = Router::default();
            let mut cache = RouteCache::default();
            let mut live: Vec<(String, Option<String>, Sub)> = Vec::new();
            for (i, (op, pattern, subject, queue)) in ops.into_iter().enumerate() {
                let valid = libbus::subject::validate_pattern(&pattern).is_ok();
                match op {
                    0 if valid => {
                        router.subscribe(&pattern, queue.as_deref(), (1, i as u64));
                        live.push((pattern, queue, (1, i as u64)));
                    }
                    1 if !live.is_empty() => {
                        let (p, q, t) = live.swap_remove(i % live.len());
                        router.unsubscribe([(p.as_str(), q.as_deref(), t)]);
                    }
                    _ => {
                        let fresh = router.lookup_uncached(&subject);
                        let mut want: Vec<Sub> = fresh.plain.clone();
                        want.sort_unstable();
                        match router.cached(subject.as_bytes(), &[], &mut cache) {
                            Some(r) => {
                                let mut got = r.plain.clone();
                                got.sort_unstable();
                                proptest::prop_assert_eq!(&got, &want, "subject {}", subject);
                                let groups = |r: &Routes<Sub>| {
                                    let mut g: Vec<(String, Vec<Sub>)> =
                                        r.groups.iter().map(|(n, m)| (n.to_string(), m.to_vec())).collect();
                                    g.sort();
                                    g
                                };
                                proptest::prop_assert_eq!(groups(r), groups(&fresh));
                            }
                            None => {
                                router.lookup(&subject, &mut cache);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn interest_counts_distinct_patterns_outside_the_reserved_prefix() {
        let router = Router::default();
        router.subscribe("a.>", None, (1, 1));
        router.subscribe("a.>", None, (2, 1));
        router.subscribe("$BUS.event.>", None, (2, 2));
        let (v1, interest) = router.interest();
        assert_eq!(interest.len(), 1);
        router.unsubscribe([("a.>", None, (1, 1))]);
        assert_eq!(router.interest_version(), v1, "a.> is still wanted");
        router.unsubscribe([("a.>", None, (2, 1))]);
        assert_ne!(router.interest_version(), v1);
        assert!(router.interest().1.is_empty());
    }

    fn pub_frame(subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        let p = libbus::proto::Pub {
            subject,
            reply_to,
            payload,
        };
        wire::encode_pub(&p, &mut frame, u32::MAX).unwrap();
        frame
    }

    /// What [`Router::repeated`] reads from `frame`: subject and payload.
    fn repeated(
        router: &Router<Sub>,
        frame: &[u8],
        cache: &mut RouteCache<Sub>,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let (p, routes) = router.repeated(frame, cache)?;
        assert_eq!(p.reply_to, None);
        assert_eq!(routes.plain, [(1, 1)]);
        Some((p.subject.to_vec(), p.payload.to_vec()))
    }

    #[test]
    fn a_frame_with_the_last_head_is_read_without_decoding_and_nothing_else_is() {
        let router = Router::default();
        router.subscribe("a.b", None, (1, 1));
        let mut cache = RouteCache::default();
        let first = pub_frame("a.b", None, b"one");
        assert!(router.repeated(&first, &mut cache).is_none(), "no head yet");
        router.lookup("a.b", &mut cache);
        let payload_at = first.len() - 3;
        assert!(router.cached(b"a.b", &first[..payload_at], &mut cache).is_some());
        for payload in [&b"two"[..], b"six"] {
            let frame = pub_frame("a.b", None, payload);
            assert_eq!(
                repeated(&router, &frame, &mut cache),
                Some((b"a.b".to_vec(), payload.to_vec()))
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
        // A publish with a reply subject forgets the head.
        assert!(router.cached(b"a.b", &[], &mut cache).is_some());
        assert_eq!(
            repeated(&router, &pub_frame("a.b", None, b"two"), &mut cache),
            None
        );
        // As does any change of subscriptions.
        assert!(router.cached(b"a.b", &first[..payload_at], &mut cache).is_some());
        router.subscribe("a.*", None, (1, 2));
        assert_eq!(
            repeated(&router, &pub_frame("a.b", None, b"two"), &mut cache),
            None
        );
    }

    #[test]
    fn a_subject_is_remembered_as_the_last_once_found_twice_in_a_row() {
        let router = Router::default();
        router.subscribe("a.*", None, (1, 1));
        let mut cache = RouteCache::default();
        let (ab, ac) = (pub_frame("a.b", None, b"x"), pub_frame("a.c", None, b"x"));
        let head = ab.len() - 1;
        // As the daemon does: a miss, then a lookup.
        for (subject, frame) in [("a.b", &ab), ("a.c", &ac)] {
            assert!(router
                .cached(subject.as_bytes(), &frame[..head], &mut cache)
                .is_none());
            router.lookup(subject, &mut cache);
        }
        // Subjects taking turns are answered from the map, never copied
        // into the last one.
        for _ in 0..3 {
            assert!(router.cached(b"a.b", &ab[..head], &mut cache).is_some());
            assert_eq!(repeated(&router, &ab, &mut cache), None);
            assert!(router.cached(b"a.c", &ac[..head], &mut cache).is_some());
            assert_eq!(repeated(&router, &ac, &mut cache), None);
        }
        // Found twice in a row, it is.
        assert!(router.cached(b"a.c", &ac[..head], &mut cache).is_some());
        assert_eq!(
            repeated(&router, &ac, &mut cache),
            Some((b"a.c".to_vec(), b"x".to_vec()))
        );
    }
}
