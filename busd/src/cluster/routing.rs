//! Pure routing over the link-state database: which nodes are reachable,
//! who wants a subject, and the shortest-path tree a message from a given
//! origin follows. Every node computes the same trees from the same states
//! (breadth-first, neighbours in node-id order), so a message reaches each
//! interested node exactly once, whatever the topology.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use libbus::proto::link::NodeState;

use crate::router::sublist::Sublist;

/// Our children in one origin's tree, each with the nodes of its subtree.
pub type Children = std::sync::Arc<Vec<(String, HashSet<String>)>>;

/// Remote nodes with plain interest, and queue groups with their nodes.
pub type Interested = (Vec<String>, Vec<(Box<str>, Vec<String>)>);

/// A node that was reachable and no longer is, remembered for
/// `bridge_hold`: most often the node between us and it is restarting, and
/// it is about to return. Messages for its interest are held (parked on the
/// link that led to it) rather than lost without a count.
#[derive(Debug, Clone)]
pub struct Ghost {
    /// Our link that led to it.
    pub via: String,
    /// When to stop holding for it.
    pub until: std::time::Instant,
}

/// Routing facts derived from one version of the database.
#[derive(Debug, Default)]
pub struct Routing {
    me: String,
    /// Every node reachable from here (not us).
    reachable: HashSet<String>,
    /// Interest of the nodes we hold messages for ([`Ghost`]s).
    held: Sublist<String>,
    /// Those nodes: the link that led to each, and until when.
    ghosts: HashMap<String, Ghost>,
    /// Undirected edges both ends agree on, as adjacency (sorted).
    adjacency: BTreeMap<String, BTreeSet<String>>,
    /// Interest of every node reachable from here (not ours).
    remote: Sublist<String>,
    /// Cache: origin → (child of ours → nodes in its subtree).
    trees: std::sync::Mutex<HashMap<String, Children>>,
}

impl Routing {
    /// Routing for node `me` with links `my_links`, given the other nodes' states.
    pub fn new(me: &str, my_links: &[String], states: &HashMap<String, NodeState>) -> Self {
        let claims = |n: &str| -> Option<&[String]> {
            if n == me {
                Some(my_links)
            } else {
                states.get(n).map(|s| s.links.as_slice())
            }
        };
        let mut adjacency: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let nodes = std::iter::once(me).chain(states.keys().map(String::as_str));
        for a in nodes {
            for b in claims(a).unwrap_or_default() {
                // An edge counts only if both ends list it (stale claims do not route).
                if a != b && claims(b).is_some_and(|l| l.iter().any(|x| x == a)) {
                    adjacency.entry(a.to_owned()).or_default().insert(b.clone());
                }
            }
        }
        let mut routing = Routing {
            me: me.to_owned(),
            adjacency,
            ..Routing::default()
        };
        routing.reachable = routing.bfs(me).into_keys().filter(|n| n != me).collect();
        for node in &routing.reachable {
            if let Some(s) = states.get(node) {
                for i in &s.interest {
                    routing
                        .remote
                        .insert(&i.pattern, i.queue.as_deref(), node.clone());
                }
            }
        }
        routing
    }

    /// Adds the nodes to hold messages for: `ghosts` (those not reachable),
    /// with the plain interest their last `states` announced.
    pub fn hold_for(mut self, ghosts: &HashMap<String, Ghost>, states: &HashMap<String, NodeState>) -> Self {
        for (node, ghost) in ghosts {
            let Some(s) = states.get(node).filter(|_| !self.reachable.contains(node)) else {
                continue;
            };
            for i in s.interest.iter().filter(|i| i.queue.is_none()) {
                self.held.insert(&i.pattern, None, node.clone());
            }
            self.ghosts.insert(node.clone(), ghost.clone());
        }
        self
    }

    /// Every node reachable from here.
    pub fn reachable(&self) -> impl Iterator<Item = &String> {
        self.reachable.iter()
    }

    /// Our link on the way to `node`.
    pub fn first_hop(&self, node: &str) -> Option<String> {
        self.children(&self.me)
            .iter()
            .find(|(_, subtree)| subtree.contains(node))
            .map(|(child, _)| child.clone())
    }

    /// The held-for nodes interested in `subject`, still held for at
    /// `now`, with the link that led to each: (link, node).
    pub fn held_for(&self, subject: &str, now: std::time::Instant) -> Vec<(&str, &str)> {
        if self.ghosts.is_empty() {
            return Vec::new();
        }
        let mut nodes = self.held.matches(subject).plain;
        nodes.sort_unstable();
        nodes.dedup();
        nodes
            .into_iter()
            .filter_map(|n| {
                let (node, g) = self.ghosts.get_key_value(&n)?;
                (g.until > now).then_some((g.via.as_str(), node.as_str()))
            })
            .collect()
    }

    /// Parent of each node reachable from `root` in its shortest-path tree.
    fn bfs(&self, root: &str) -> HashMap<String, Option<String>> {
        let mut parent = HashMap::from([(root.to_owned(), None)]);
        let mut queue = VecDeque::from([root.to_owned()]);
        while let Some(n) = queue.pop_front() {
            for next in self.adjacency.get(&n).into_iter().flatten() {
                if !parent.contains_key(next) {
                    parent.insert(next.clone(), Some(n.clone()));
                    queue.push_back(next.clone());
                }
            }
        }
        parent
    }

    /// Our children in the tree rooted at `origin`, each with its subtree.
    pub fn children(&self, origin: &str) -> Children {
        let mut trees = self.trees.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = trees.get(origin) {
            return t.clone();
        }
        let parent = self.bfs(origin);
        let mut children: BTreeMap<String, HashSet<String>> = BTreeMap::new();
        if parent.contains_key(&self.me) {
            for node in parent.keys() {
                // Walk up from `node`; if the path passes through us, the
                // node just below us is the child whose subtree holds it.
                let mut below = node.as_str();
                let mut at = node.as_str();
                while let Some(Some(up)) = parent.get(at) {
                    if up == &self.me {
                        children.entry(below.to_owned()).or_default().insert(node.clone());
                        break;
                    }
                    below = up;
                    at = up;
                }
            }
        }
        let t = std::sync::Arc::new(children.into_iter().collect::<Vec<_>>());
        trees.insert(origin.to_owned(), t.clone());
        t
    }

    /// Remote nodes interested in `subject`: plain interest, and queue
    /// groups with the nodes that have members.
    pub fn interested(&self, subject: &str) -> Interested {
        let m = self.remote.matches(subject);
        let mut plain = m.plain;
        plain.sort_unstable();
        plain.dedup();
        let groups = m
            .groups
            .into_iter()
            .map(|(g, nodes)| {
                let mut nodes = nodes.to_vec();
                nodes.sort_unstable();
                nodes.dedup();
                (g, nodes)
            })
            .collect();
        (plain, groups)
    }

    /// True if `node` can be reached from here.
    pub fn reaches(&self, node: &str) -> bool {
        node == self.me || self.reachable.contains(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbus::proto::link::Interest;

    fn state(node: &str, links: &[&str], patterns: &[&str]) -> (String, NodeState) {
        (
            node.into(),
            NodeState {
                node: node.into(),
                version: 1,
                links: links.iter().map(|s| s.to_string()).collect(),
                interest: patterns
                    .iter()
                    .map(|p| Interest {
                        pattern: p.to_string(),
                        queue: None,
                    })
                    .collect(),
            },
        )
    }

    fn links(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Simulates flooding a message from `origin`: returns how many times
    /// each node receives it.
    fn deliveries(all: &HashMap<String, NodeState>, origin: &str) -> HashMap<String, usize> {
        let mut got = HashMap::new();
        let mut queue = VecDeque::from([origin.to_owned()]);
        while let Some(at) = queue.pop_front() {
            *got.entry(at.clone()).or_insert(0) += 1;
            let mine = all[&at].links.clone();
            let others: HashMap<_, _> = all
                .iter()
                .filter(|(k, _)| **k != at)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let r = Routing::new(&at, &mine, &others);
            for (child, _) in r.children(origin).iter() {
                queue.push_back(child.clone());
            }
        }
        got
    }

    #[test]
    fn triangle_and_star_and_chain_deliver_once_each() {
        let topologies: Vec<Vec<(String, NodeState)>> = vec![
            vec![
                state("a", &["b", "c"], &[]),
                state("b", &["a", "c"], &[]),
                state("c", &["a", "b"], &[]),
            ],
            vec![
                state("hub", &["x", "y", "z"], &[]),
                state("x", &["hub"], &[]),
                state("y", &["hub"], &[]),
                state("z", &["hub"], &[]),
            ],
            vec![
                state("a", &["b"], &[]),
                state("b", &["a", "c"], &[]),
                state("c", &["b"], &[]),
            ],
            // A square with a diagonal.
            vec![
                state("a", &["b", "d", "c"], &[]),
                state("b", &["a", "c"], &[]),
                state("c", &["b", "d", "a"], &[]),
                state("d", &["c", "a"], &[]),
            ],
        ];
        for t in topologies {
            let all: HashMap<_, _> = t.into_iter().collect();
            for origin in all.keys() {
                let got = deliveries(&all, origin);
                assert_eq!(got.len(), all.len(), "from {origin}: {got:?}");
                assert!(got.values().all(|n| *n == 1), "from {origin}: {got:?}");
            }
        }
    }

    #[test]
    fn one_sided_links_do_not_route_and_interest_is_indexed() {
        let all: HashMap<_, _> = [state("b", &["a"], &["orders.>"]), state("c", &["a"], &["x"])].into();
        // a lists b but not c: c claims a, but a does not confirm.
        let r = Routing::new("a", &links(&["b"]), &all);
        assert!(r.reaches("b"));
        assert!(!r.reaches("c"));
        assert_eq!(r.interested("orders.new").0, vec!["b".to_owned()]);
        assert!(r.interested("x").0.is_empty(), "unreachable interest is ignored");
        let children = r.children("a");
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].0, "b");
    }
}
