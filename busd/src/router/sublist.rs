//! The subject trie: one level per token, with separate `*` and `>` children.
//!
//! Pure data structure, no I/O. Matching walks at most three branches per token
//! (the literal child, `*`, `>`), so its cost depends on the subject's depth and
//! the number of *matching* subscriptions, not on how many exist.

use std::{collections::HashMap, hash::Hash, sync::Arc};

/// Subscribers of one pattern (or one queue group of it). Past
/// [`INDEX_FROM`] of them, an index finds the one to remove in O(1), so
/// removing K subscriptions to one pattern costs O(K), not O(K²).
#[derive(Debug)]
struct Members<T> {
    /// Shared with the routes found for a queue group, so finding them
    /// never copies the members (a change copies them only while some
    /// routes still hold the old list).
    list: Arc<Vec<T>>,
    /// Where each is in `list` (built once it is long enough).
    at: Option<HashMap<T, usize, foldhash::fast::RandomState>>,
}

/// Members a list holds before it keeps an index.
const INDEX_FROM: usize = 32;

impl<T> Default for Members<T> {
    fn default() -> Self {
        Self {
            list: Arc::default(),
            at: None,
        }
    }
}

impl<T: Clone + Eq + Hash> Members<T> {
    fn push(&mut self, item: T) {
        if let Some(at) = &mut self.at {
            at.insert(item.clone(), self.list.len());
        }
        Arc::make_mut(&mut self.list).push(item);
        if self.at.is_none() && self.list.len() > INDEX_FROM {
            self.at = Some(
                self.list
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, t)| (t, i))
                    .collect(),
            );
        }
    }

    /// Removes one member equal to `item`; the last one takes its place.
    fn remove(&mut self, item: &T) -> Option<T> {
        let i = match self.at.as_ref().and_then(|at| at.get(item)) {
            Some(&i) if self.list.get(i) == Some(item) => i,
            // Not indexed (short, or a duplicate the index does not hold).
            _ => self.list.iter().position(|t| t == item)?,
        };
        let removed = Arc::make_mut(&mut self.list).swap_remove(i);
        if let Some(at) = &mut self.at {
            if at.get(&removed) == Some(&i) {
                at.remove(&removed);
            }
            if let Some(moved) = self.list.get(i) {
                at.insert(moved.clone(), i);
            }
            if self.list.len() < INDEX_FROM / 2 {
                self.at = None;
            }
        }
        Some(removed)
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// Subscriptions indexed by pattern. `T` identifies a subscriber.
#[derive(Debug)]
pub struct Sublist<T> {
    root: Level<T>,
    len: usize,
}

#[derive(Debug)]
struct Level<T> {
    /// foldhash, like the route cache: a level can hold many thousands of
    /// tokens, and each uncached lookup hashes one token per level.
    literal: HashMap<Box<str>, Node<T>, foldhash::fast::RandomState>,
    star: Option<Box<Node<T>>>,
    full: Option<Box<Node<T>>>,
}

#[derive(Debug)]
struct Node<T> {
    next: Level<T>,
    plain: Members<T>,
    groups: Vec<(Box<str>, Members<T>)>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::default(),
            star: None,
            full: None,
        }
    }
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            next: Level::default(),
            plain: Members::default(),
            groups: Vec::new(),
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.star.is_none() && self.full.is_none()
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.list.is_empty() && self.groups.is_empty() && self.next.is_empty()
    }
}

/// Everything a subject matched: plain subscribers, and the members of each
/// queue group (merged by group name), of which one should receive it.
#[derive(Debug)]
pub struct Matches<T> {
    /// Each gets a copy.
    pub plain: Vec<T>,
    /// One member of each group gets a copy (the members as the trie
    /// holds them, shared).
    pub groups: Vec<(Box<str>, Arc<Vec<T>>)>,
}

impl<T> Default for Matches<T> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            groups: Vec::new(),
        }
    }
}

impl<T> Matches<T> {
    /// True when nobody matched.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }
}

fn split_first(s: &str) -> (&str, Option<&str>) {
    match s.split_once('.') {
        Some((tok, rest)) => (tok, Some(rest)),
        None => (s, None),
    }
}

impl<T: Clone + Eq + Hash> Sublist<T> {
    /// An empty trie.
    pub fn new() -> Self {
        Self {
            root: Level::default(),
            len: 0,
        }
    }

    /// Number of subscriptions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item` under a validated `pattern`, in queue group `queue` if given.
    pub fn insert(&mut self, pattern: &str, queue: Option<&str>, item: T) {
        let node = Self::node_mut(&mut self.root, pattern);
        match queue {
            None => node.plain.push(item),
            Some(q) => match node.groups.iter_mut().find(|(name, _)| &**name == q) {
                Some((_, members)) => members.push(item),
                None => {
                    let mut members = Members::default();
                    members.push(item);
                    node.groups.push((q.into(), members));
                }
            },
        }
        self.len += 1;
    }

    fn node_mut<'a>(level: &'a mut Level<T>, pattern: &str) -> &'a mut Node<T> {
        let (tok, rest) = split_first(pattern);
        let node: &mut Node<T> = match tok {
            "*" => level.star.get_or_insert_with(Box::default),
            ">" => level.full.get_or_insert_with(Box::default),
            _ => level.literal.entry(tok.into()).or_default(),
        };
        match rest {
            None => node,
            Some(rest) => Self::node_mut(&mut node.next, rest),
        }
    }

    /// Removes one item equal to `item` under `pattern`/`queue`, pruning
    /// emptied nodes. Returns it, or `None` if there was none. O(1) in the
    /// number of subscribers the pattern has.
    pub fn remove(&mut self, pattern: &str, queue: Option<&str>, item: &T) -> Option<T> {
        let removed = Self::remove_in(&mut self.root, pattern, queue, item);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(level: &mut Level<T>, pattern: &str, queue: Option<&str>, item: &T) -> Option<T> {
        let (tok, rest) = split_first(pattern);
        let node: &mut Node<T> = match tok {
            "*" => level.star.as_deref_mut()?,
            ">" => level.full.as_deref_mut()?,
            _ => level.literal.get_mut(tok)?,
        };
        let removed = match rest {
            Some(rest) => Self::remove_in(&mut node.next, rest, queue, item),
            None => match queue {
                None => node.plain.remove(item),
                Some(q) => {
                    let g = node.groups.iter().position(|(name, _)| &**name == q)?;
                    let members = &mut node.groups[g].1;
                    let removed = members.remove(item);
                    if members.is_empty() {
                        node.groups.swap_remove(g);
                    }
                    removed
                }
            },
        };
        if removed.is_some() && node.is_empty() {
            match tok {
                "*" => level.star = None,
                ">" => level.full = None,
                _ => {
                    level.literal.remove(tok);
                    // Give memory back after a burst of subscriptions ends.
                    if level.literal.capacity() > 64 && level.literal.len() < level.literal.capacity() / 4 {
                        level.literal.shrink_to_fit();
                    }
                }
            }
        }
        removed
    }

    /// The subscribers of exactly `pattern` (not of other patterns that
    /// overlap it): its plain ones, or with `queue` that group's members.
    pub fn exact(&self, pattern: &str, queue: Option<&str>) -> Matches<T> {
        let mut out = Matches::default();
        let mut level = &self.root;
        let mut rest = Some(pattern);
        let mut node = None;
        while let Some(r) = rest {
            let (tok, next) = split_first(r);
            let found = match tok {
                "*" => level.star.as_deref(),
                ">" => level.full.as_deref(),
                _ => level.literal.get(tok),
            };
            let Some(n) = found else { return out };
            node = Some(n);
            level = &n.next;
            rest = next;
        }
        let Some(node) = node else { return out };
        match queue {
            None => out.plain = node.plain.list.to_vec(),
            Some(q) => out.groups.extend(
                node.groups
                    .iter()
                    .filter(|(g, _)| &**g == q)
                    .map(|(g, m)| (g.clone(), m.list.clone())),
            ),
        }
        out
    }

    /// Everything that matches the literal `subject`.
    pub fn matches(&self, subject: &str) -> Matches<T> {
        let mut out = Matches::default();
        Self::collect(&self.root, subject, &mut out);
        out
    }

    fn collect(level: &Level<T>, subject: &str, out: &mut Matches<T>) {
        let (tok, rest) = split_first(subject);
        if let Some(full) = &level.full {
            // `>` takes this token and everything after it.
            Self::add(full, out);
        }
        if let Some(star) = &level.star {
            Self::visit(star, rest, out);
        }
        if let Some(node) = level.literal.get(tok) {
            Self::visit(node, rest, out);
        }
    }

    fn visit(node: &Node<T>, rest: Option<&str>, out: &mut Matches<T>) {
        match rest {
            None => Self::add(node, out),
            Some(rest) => Self::collect(&node.next, rest, out),
        }
    }

    fn add(node: &Node<T>, out: &mut Matches<T>) {
        out.plain.extend(node.plain.list.iter().cloned());
        for (name, members) in &node.groups {
            match out.groups.iter_mut().find(|(n, _)| n == name) {
                // A group spread over several patterns: merged in a copy.
                Some((_, all)) => Arc::make_mut(all).extend(members.list.iter().cloned()),
                None => out.groups.push((name.clone(), Arc::clone(&members.list))),
            }
        }
    }
}

impl<T: Clone + Eq + Hash> Default for Sublist<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbus::subject::matches as reference;

    #[test]
    fn exact_finds_one_pattern_only() {
        let mut l = Sublist::new();
        l.insert("a.*", None, 1);
        l.insert("a.>", None, 2);
        l.insert("a.*", Some("g"), 3);
        l.insert("a.*", Some("h"), 4);
        l.insert("a.b", None, 5);
        assert_eq!(l.exact("a.*", None).plain, [1]);
        assert!(l.exact("a.*", None).groups.is_empty());
        assert_eq!(l.exact("a.>", None).plain, [2]);
        let g = l.exact("a.*", Some("g"));
        assert!(g.plain.is_empty());
        assert_eq!(g.groups, [("g".into(), Arc::new(vec![3]))]);
        assert!(l.exact("a", None).is_empty());
        assert!(l.exact("a.c", None).is_empty());
        assert!(l.exact("x.>", None).is_empty());
    }

    fn plain(list: &Sublist<u32>, subject: &str) -> Vec<u32> {
        let mut v = list.matches(subject).plain;
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcard_matrix_agrees_with_reference() {
        let patterns = [
            "a", "a.b", "a.*", "a.>", "*", ">", "*.b", "a.*.c", "*.*.*", "a.b.>", "b.>",
        ];
        let subjects = [
            "a", "b", "a.b", "a.c", "b.b", "a.b.c", "a.x.c", "a.b.c.d", "x.y.z",
        ];
        let mut list = Sublist::new();
        for (i, p) in patterns.iter().enumerate() {
            list.insert(p, None, i as u32);
        }
        for s in subjects {
            let want: Vec<u32> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| reference(p, s))
                .map(|(i, _)| i as u32)
                .collect();
            assert_eq!(plain(&list, s), want, "subject {s}");
        }
    }

    #[test]
    fn remove_prunes() {
        let mut list = Sublist::new();
        list.insert("a.b.c", None, 1);
        list.insert("a.*", None, 2);
        assert_eq!(list.len(), 2);
        assert_eq!(list.remove("a.b.c", None, &1), Some(1));
        assert_eq!(list.remove("a.b.c", None, &1), None);
        assert!(plain(&list, "a.b.c").is_empty());
        assert_eq!(list.remove("a.*", None, &2), Some(2));
        assert!(list.root.is_empty());
        assert!(list.is_empty());
    }

    #[test]
    fn queue_groups_merge_by_name() {
        let mut list = Sublist::new();
        list.insert("jobs.*", Some("w"), 1);
        list.insert("jobs.>", Some("w"), 2);
        list.insert("jobs.a", Some("other"), 3);
        list.insert("jobs.a", None, 4);
        let m = list.matches("jobs.a");
        assert_eq!(m.plain, vec![4]);
        assert_eq!(m.groups.len(), 2);
        let w = &m.groups.iter().find(|(n, _)| &**n == "w").unwrap().1;
        assert_eq!(w.len(), 2);
        assert_eq!(list.remove("jobs.*", Some("w"), &1), Some(1));
        assert_eq!(list.remove("jobs.*", Some("w"), &1), None);
        assert_eq!(list.matches("jobs.a").groups.len(), 2);
    }

    #[test]
    fn many_subscribers_of_one_pattern_come_and_go_through_the_index() {
        let mut list = Sublist::new();
        let mut model: Vec<(Option<&str>, u32)> = Vec::new();
        let mut rng = fastrand::Rng::with_seed(7);
        for round in 0..3 {
            for i in 0..500u32 {
                let q = [None, Some("w")][(i % 2) as usize];
                // Some duplicates, which the index does not hold twice.
                let item = if i % 50 == 0 { 0 } else { round * 1000 + i };
                list.insert("jobs.*", q, item);
                model.push((q, item));
            }
            // Remove two thirds in random order.
            for _ in 0..model.len() * 2 / 3 {
                let (q, item) = model.swap_remove(rng.usize(..model.len()));
                assert_eq!(list.remove("jobs.*", q, &item), Some(item));
            }
            let m = list.matches("jobs.x");
            let sorted = |mut v: Vec<u32>| {
                v.sort_unstable();
                v
            };
            let want = |grouped: bool| {
                sorted(
                    model
                        .iter()
                        .filter(|(q, _)| q.is_some() == grouped)
                        .map(|(_, i)| *i)
                        .collect(),
                )
            };
            assert_eq!(sorted(m.plain.clone()), want(false), "round {round}");
            let members = m.groups.iter().flat_map(|(_, v)| v.to_vec()).collect();
            assert_eq!(sorted(members), want(true), "round {round}");
            assert_eq!(list.len(), model.len());
        }
        for (q, item) in model.drain(..) {
            assert_eq!(list.remove("jobs.*", q, &item), Some(item));
        }
        assert!(list.is_empty() && list.matches("jobs.x").is_empty());
        assert!(list.root.is_empty(), "emptied nodes are pruned");
    }

    #[test]
    fn duplicates_are_kept_separately() {
        let mut list = Sublist::new();
        list.insert("a", None, 7);
        list.insert("a", None, 7);
        assert_eq!(plain(&list, "a"), vec![7, 7]);
        list.remove("a", None, &7);
        assert_eq!(plain(&list, "a"), vec![7]);
    }

    fn pattern() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (
            prop::collection::vec(prop_oneof!["a", "b", Just("*".to_owned())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(mut t, tail)| {
                if tail || t.is_empty() {
                    t.push(">".into());
                }
                t.join(".")
            })
    }

    proptest::proptest! {
        /// The trie agrees with the reference matcher on random patterns,
        /// queue groups and subjects, also after removing some of them.
        #[test]
        fn trie_agrees_with_reference(
            subs in proptest::collection::vec((pattern(), proptest::option::of("[xy]")), 0..24),
            subjects in proptest::collection::vec("[ab](\\.[abc]){0,4}", 1..8),
            remove_every in 1usize..4,
        ) {
            let mut list = Sublist::new();
            for (i, (p, q)) in subs.iter().enumerate() {
                list.insert(p, q.as_deref(), i as u32);
            }
            let mut live: Vec<bool> = vec![true; subs.len()];
            for (i, (p, q)) in subs.iter().enumerate().step_by(remove_every).skip(1) {
                proptest::prop_assert_eq!(list.remove(p, q.as_deref(), &(i as u32)), Some(i as u32));
                live[i] = false;
            }
            proptest::prop_assert_eq!(list.len(), live.iter().filter(|l| **l).count());
            for s in &subjects {
                let m = list.matches(s);
                let mut plain = m.plain.clone();
                plain.sort_unstable();
                let mut groups: Vec<(String, Vec<u32>)> = m
                    .groups
                    .iter()
                    .map(|(g, v)| {
                        let mut v = v.to_vec();
                        v.sort_unstable();
                        (g.to_string(), v)
                    })
                    .collect();
                groups.sort();
                let mut want_plain = Vec::new();
                let mut want_groups: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
                for (i, (p, q)) in subs.iter().enumerate() {
                    if live[i] && reference(p, s) {
                        match q {
                            None => want_plain.push(i as u32),
                            Some(g) => want_groups.entry(g.clone()).or_default().push(i as u32),
                        }
                    }
                }
                proptest::prop_assert_eq!(&plain, &want_plain, "subject {}", s);
                proptest::prop_assert_eq!(groups, want_groups.into_iter().collect::<Vec<_>>(), "subject {}", s);
            }
        }
    }
}
