//! The access policy per subject and per name: who may publish, subscribe,
//! own and call what. Pure logic: no connections, no I/O.
//!
//! A principal is who a connection is: for a local peer, its uid and every
//! group the kernel reports for it (`SO_PEERGROUPS`); a network peer is
//! `tcp`. Its rights are the `[[permissions]]` entries that name it (by
//! `uid`, or by `gid` among its groups), or, if none does, the `default`
//! entry (configured, or [`builtin_default`]). Within them a deny list
//! entry wins over any allow; otherwise something is allowed if an allow
//! list of any of them covers it. `{uid}` and `{user}` in a pattern stand
//! for the principal's uid and user name.
//!
//! The daemon's own uid and root have every right, as before there was a
//! policy. For everyone else some things are privileged whatever the lists
//! say, unless an entry naming them says `privileged = true`: a
//! subscription that could receive `$BUS.event.*` (`>`, `$BUS.event.>`,
//! `bus-cli monitor`), and one that could receive replies meant for
//! another user's requests ([`inbox_reach`]).

use std::{collections::HashMap, fmt, sync::Mutex};

use serde::{Deserialize, Serialize};

/// One `[[permissions]]` entry of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Permissions {
    /// Whom it names: a local user...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// ... or the members of a group (primary or supplementary) ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// ... or a network user of `[[users]]` ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// ... or every bridge link: `publish` is what links may bring in
    /// (messages published on other daemons, delivered here), `subscribe`
    /// what they may take out (messages sent on to other daemons) ...
    #[serde(skip_serializing_if = "is_false")]
    pub bridge: bool,
    /// ... or everyone no other entry names.
    #[serde(skip_serializing_if = "is_false")]
    pub default: bool,
    /// Subjects it may publish to (patterns).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Subjects it may not publish to, whatever `publish` says.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_deny: Vec<String>,
    /// Patterns it may subscribe to: a subscription must lie within one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// A subscription that could receive any of these is refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subscribe_deny: Vec<String>,
    /// Service names it may own (or queue for).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own: Vec<String>,
    /// Service names it may not own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub own_deny: Vec<String>,
    /// Service names it may call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub call: Vec<String>,
    /// Service names it may not call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub call_deny: Vec<String>,
    /// May watch everything: `>`, `$BUS.event.>`, other users' replies,
    /// and every connection's details in `bus-cli list`.
    #[serde(skip_serializing_if = "is_false")]
    pub privileged: bool,
}

fn is_false(b: &bool) -> bool {
    !b
}

/// The rights of a principal no entry names, when no entry says
/// `default = true`: publish, subscribe, own and call anything that is not
/// privileged (what every peer let in could do before there was a policy,
/// but watching others).
pub fn builtin_default() -> Permissions {
    let all = || vec![">".to_owned()];
    Permissions {
        default: true,
        publish: all(),
        subscribe: all(),
        own: all(),
        call: all(),
        ..Permissions::default()
    }
}

impl Permissions {
    /// How rules of this entry are named: `uid 1000`, `gid 100`, `default`.
    pub fn label(&self) -> String {
        match (self.uid, self.gid, &self.user) {
            (Some(uid), _, _) => format!("uid {uid}"),
            (None, Some(gid), _) => format!("gid {gid}"),
            (None, None, Some(user)) => format!("user {user}"),
            (None, None, None) if self.bridge => "bridge".into(),
            (None, None, None) => "default".into(),
        }
    }

    /// Checks the entry: whom it names, and every pattern (with `{uid}` and
    /// `{user}` standing for sample values).
    pub fn validate(&self) -> Result<(), String> {
        let named = usize::from(self.uid.is_some())
            + usize::from(self.gid.is_some())
            + usize::from(self.user.is_some())
            + usize::from(self.bridge)
            + usize::from(self.default);
        if named != 1 {
            return Err(
                "a [[permissions]] entry names exactly one of uid, gid, user, bridge = true or default = true".into(),
            );
        }
        let sample = Principal::local(1000, Vec::new(), Some("user".into()));
        for (list, patterns) in self.lists() {
            for p in patterns {
                let s = substitute(p, &sample).ok_or_else(|| {
                    format!(
                        "{} {list}: {p:?} has a placeholder other than {{uid}} and {{user}}",
                        self.label()
                    )
                })?;
                libbus::subject::validate_pattern(&s)
                    .map_err(|e| format!("{} {list}: {p:?}: {e}", self.label()))?;
            }
        }
        Ok(())
    }

    /// True if a pattern of it says `{user}`.
    pub fn uses_user_name(&self) -> bool {
        self.lists()
            .iter()
            .any(|(_, l)| l.iter().any(|p| p.contains("{user}")))
    }

    fn lists(&self) -> [(&'static str, &Vec<String>); 8] {
        [
            ("publish", &self.publish),
            ("publish_deny", &self.publish_deny),
            ("subscribe", &self.subscribe),
            ("subscribe_deny", &self.subscribe_deny),
            ("own", &self.own),
            ("own_deny", &self.own_deny),
            ("call", &self.call),
            ("call_deny", &self.call_deny),
        ]
    }

    fn names(&self, who: &Principal) -> bool {
        match (self.uid, self.gid, &self.user) {
            _ if who.bridge => self.bridge,
            (Some(uid), _, _) => who.uid == uid && !who.network,
            (None, Some(gid), _) => who.gids.contains(&gid) && !who.network,
            (None, None, Some(user)) => who.network && who.user.as_ref() == Some(user),
            (None, None, None) => false,
        }
    }
}

/// Who a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Its uid (for a network peer, the daemon's: it has none of its own).
    pub uid: u32,
    /// Every group the kernel reports for it, the primary one first.
    pub gids: Vec<u32>,
    /// Its user name, if the system knows one (`{user}`).
    pub user: Option<String>,
    /// How denials name it: `uid 1000`, `user alice`, `tcp`.
    pub label: String,
    /// A network peer (its `user`, if any, is a `[[users]]` name).
    pub network: bool,
    /// The bridge links, together.
    pub bridge: bool,
}

impl Principal {
    /// A local peer.
    pub fn local(uid: u32, gids: Vec<u32>, user: Option<String>) -> Self {
        Self {
            uid,
            gids,
            user,
            label: format!("uid {uid}"),
            network: false,
            bridge: false,
        }
    }

    /// Every bridge link.
    pub fn bridges() -> Self {
        Self {
            uid: u32::MAX,
            gids: Vec::new(),
            user: None,
            label: "bridge".into(),
            network: true,
            bridge: true,
        }
    }

    /// A network peer: a `[[users]]` user by its own token, else `tcp`
    /// (the shared token, or none on an insecure listener).
    pub fn network(user: Option<String>) -> Self {
        Self {
            uid: u32::MAX,
            gids: Vec::new(),
            label: user
                .as_ref()
                .map_or_else(|| "tcp".into(), |u| format!("user {u}")),
            user,
            network: true,
            bridge: false,
        }
    }
}

/// What is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publishing to a subject.
    Publish,
    /// Subscribing to a pattern.
    Subscribe,
    /// Owning (or queueing for) a service name.
    Own,
    /// Calling a service name.
    Call,
}

impl Action {
    /// Its name, as in `$BUS.event.denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
            Self::Own => "own",
            Self::Call => "call",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A denial: the rule that denied it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `uid 1000 publish_deny "root.>"`, `default subscribe (no pattern
    /// covers it)`, `privileged: $BUS.event`.
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)
    }
}

/// One entry's lists for one principal, placeholders filled in.
#[derive(Debug)]
struct Compiled {
    label: String,
    /// Per action: (allow, deny).
    lists: [(Vec<String>, Vec<String>); 4],
}

/// What one connection may do, from the policy at its start (or at the
/// last reload).
#[derive(Debug)]
pub struct Rights {
    /// Who it is.
    pub principal: Principal,
    /// The daemon's uid or root: no check at all.
    pub all: bool,
    /// May watch everything (see the module's doc).
    pub privileged: bool,
    entries: Vec<Compiled>,
}

impl Rights {
    /// Every right (the daemon's uid and root).
    pub fn all(principal: Principal) -> Self {
        Self {
            principal,
            all: true,
            privileged: true,
            entries: Vec::new(),
        }
    }

    /// What bridge links may carry: `None` (everything) unless an entry
    /// says `bridge = true`.
    pub fn of_bridges(policy: &[Permissions]) -> Option<Self> {
        policy
            .iter()
            .any(|p| p.bridge)
            .then(|| Self::of(policy, Principal::bridges()))
    }

    /// The rights `policy` gives `principal`: the entries naming it, or
    /// the default.
    pub fn of(policy: &[Permissions], principal: Principal) -> Self {
        let mut named: Vec<&Permissions> = policy.iter().filter(|p| p.names(&principal)).collect();
        let builtin;
        if named.is_empty() {
            builtin = builtin_default();
            named.push(policy.iter().find(|p| p.default).unwrap_or(&builtin));
        }
        let entries = named
            .iter()
            .map(|p| {
                let fill = |v: &Vec<String>| -> Vec<String> {
                    // A pattern whose placeholder has no value here (no
                    // user name) can match nothing for this principal.
                    v.iter().filter_map(|s| substitute(s, &principal)).collect()
                };
                Compiled {
                    label: p.label(),
                    lists: [
                        (fill(&p.publish), fill(&p.publish_deny)),
                        (fill(&p.subscribe), fill(&p.subscribe_deny)),
                        (fill(&p.own), fill(&p.own_deny)),
                        (fill(&p.call), fill(&p.call_deny)),
                    ],
                }
            })
            .collect();
        Self {
            privileged: named.iter().any(|p| p.privileged),
            principal,
            all: false,
            entries,
        }
    }

    /// May it do `action` on `subject` (a subject, a name, or for
    /// [`Action::Subscribe`] a pattern)? A deny pattern wins; then an allow
    /// pattern must cover it. For a subscription, a deny pattern it could
    /// receive anything of refuses it, and an allow pattern must contain
    /// everything it could receive.
    pub fn check(&self, action: Action, subject: &str) -> Result<(), Denied> {
        if self.all {
            return Ok(());
        }
        let list = |allow: bool| match (action, allow) {
            (Action::Publish, true) => "publish",
            (Action::Publish, false) => "publish_deny",
            (Action::Subscribe, true) => "subscribe",
            (Action::Subscribe, false) => "subscribe_deny",
            (Action::Own, true) => "own",
            (Action::Own, false) => "own_deny",
            (Action::Call, true) => "call",
            (Action::Call, false) => "call_deny",
        };
        for e in &self.entries {
            let (_, deny) = &e.lists[action.index()];
            if let Some(p) = deny.iter().find(|p| intersects(subject, p)) {
                return Err(Denied {
                    rule: format!("{} {} {p:?}", e.label, list(false)),
                });
            }
        }
        let allowed = self.entries.iter().any(|e| {
            let (allow, _) = &e.lists[action.index()];
            allow.iter().any(|p| subset(subject, p))
        });
        if allowed {
            return Ok(());
        }
        let labels: Vec<&str> = self.entries.iter().map(|e| e.label.as_str()).collect();
        Err(Denied {
            rule: format!("{} {} (no pattern allows it)", labels.join(", "), list(true)),
        })
    }

    /// The privileged part of a subscription check: `Err` if `pattern`
    /// could receive daemon events and this principal may not watch.
    pub fn check_watch(&self, pattern: &str) -> Result<(), Denied> {
        if self.privileged || !intersects(pattern, EVENTS) {
            return Ok(());
        }
        Err(Denied {
            rule: format!("privileged: {EVENTS:?} (events, `>`, monitor)"),
        })
    }
}

/// Subjects a connection was allowed to publish to, so that a subject
/// missing the route cache (more subjects than it holds, or a
/// subscription change) is not checked against every pattern again. Kept
/// while the policy's generation is the same; emptied when it is full.
#[derive(Debug, Default)]
pub struct Allowed {
    generation: u64,
    subjects: std::collections::HashSet<Box<[u8]>, foldhash::fast::RandomState>,
}

/// Subjects an [`Allowed`] holds before it starts over.
pub const ALLOWED_MAX: usize = 8192;

impl Allowed {
    /// True if `subject` was allowed under policy `generation`.
    pub fn contains(&mut self, generation: u64, subject: &str) -> bool {
        if self.generation != generation {
            self.subjects.clear();
            self.generation = generation;
        }
        self.subjects.contains(subject.as_bytes())
    }

    /// Remembers that `subject` is allowed (under the generation of the
    /// last [`contains`](Self::contains)).
    pub fn insert(&mut self, subject: &str) {
        if self.subjects.len() >= ALLOWED_MAX {
            self.subjects.clear();
        }
        self.subjects.insert(subject.as_bytes().into());
    }
}

/// Every daemon event.
const EVENTS: &str = "$BUS.event.>";

/// Every reply subject of libbus's form, `_INBOX.<id>.<n>`.
const INBOXES: &str = "_INBOX.*.>";

/// Whose replies a subscription to `pattern` could receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxReach {
    /// No reply subject at all.
    None,
    /// Those of the inbox `_INBOX.<id>.` only.
    One(String),
    /// Any inbox's.
    All,
}

/// Whose replies a subscription to `pattern` could receive: an inbox is
/// `_INBOX.<id>.`, and its replies `_INBOX.<id>.<anything>`.
pub fn inbox_reach(pattern: &str) -> InboxReach {
    if !intersects(pattern, INBOXES) {
        return InboxReach::None;
    }
    let mut tokens = pattern.split('.');
    match (tokens.next(), tokens.next()) {
        (Some(">"), _) | (_, Some("*" | ">")) | (_, None) => InboxReach::All,
        (_, Some(id)) => InboxReach::One(id.to_owned()),
    }
}

/// Who holds each reply inbox (`_INBOX.<id>.`): the principal (by its
/// label: `uid 1000`, `user alice`, `tcp`) whose connections subscribed to
/// it first, and how many of its subscriptions do now. No other
/// principal's subscription may reach it.
#[derive(Debug, Default)]
pub struct Inboxes(Mutex<HashMap<String, (String, usize)>>);

impl Inboxes {
    /// Claims inbox `id` for `owner`: false if another principal holds it.
    pub fn claim(&self, id: &str, owner: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.entry(id.to_owned()).or_insert_with(|| (owner.to_owned(), 0));
        if entry.0 != owner {
            return false;
        }
        entry.1 += 1;
        true
    }

    /// Gives back one claim of inbox `id` by `owner`.
    pub fn release(&self, id: &str, owner: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(id).filter(|e| e.0 == owner) {
            entry.1 = entry.1.saturating_sub(1);
            if entry.1 == 0 {
                map.remove(id);
            }
        }
    }
}

/// `pattern` with `{uid}` and `{user}` filled in for `who`; `None` if it
/// has another placeholder, or `{user}` and `who` has no user name.
pub fn substitute(pattern: &str, who: &Principal) -> Option<String> {
    if !pattern.contains('{') {
        return Some(pattern.to_owned());
    }
    let mut out = pattern.replace("{uid}", &who.uid.to_string());
    if out.contains("{user}") {
        out = out.replace("{user}", who.user.as_deref()?);
    }
    (!out.contains('{') && !out.contains('}')).then_some(out)
}

/// True if every subject `a` matches, `b` matches too (`a` and `b` are
/// patterns; a subject is a pattern without wildcards).
pub fn subset(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            // `>` takes one or more tokens: `a` has at least one here.
            (Some(_), Some(">")) => return true,
            (Some(">"), _) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(x), Some(y)) if x == y => {}
            _ => return false,
        }
    }
}

/// True if some subject matches both patterns.
pub fn intersects(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(f: impl FnOnce(&mut Permissions)) -> Permissions {
        let mut p = Permissions::default();
        f(&mut p);
        p
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pattern_algebra() {
        assert!(subset("a.b", "a.*"));
        assert!(subset("a.b.c", "a.>"));
        assert!(subset("a.*", "a.>"));
        assert!(subset("a.>", "a.>"));
        assert!(!subset("a", "a.>"));
        assert!(!subset("a.>", "a.*"));
        assert!(!subset("a.*", "a.b"));
        assert!(!subset(">", "a.>"));
        assert!(subset("a.b", ">"));
        assert!(intersects("a.*", "*.b"));
        assert!(intersects(">", "$BUS.event.>"));
        assert!(intersects("*.>", "$BUS.event.conn.open"));
        assert!(!intersects("a", "a.>"));
        assert!(!intersects("a.b", "a.c"));
        assert!(!intersects("*.*", "_INBOX.*.>"));
    }

    #[test]
    fn inboxes() {
        assert_eq!(inbox_reach("sensors.>"), InboxReach::None);
        assert_eq!(inbox_reach("*.temp"), InboxReach::None);
        assert_eq!(inbox_reach(">"), InboxReach::All);
        assert_eq!(inbox_reach("_INBOX.>"), InboxReach::All);
        assert_eq!(inbox_reach("*.*.>"), InboxReach::All);
        assert_eq!(inbox_reach("_INBOX.ab12.>"), InboxReach::One("ab12".into()));
        assert_eq!(inbox_reach("*.ab12.*"), InboxReach::One("ab12".into()));
    }

    #[test]
    fn deny_wins_allow_covers_and_placeholders_fill_in() {
        let policy = vec![entry(|p| {
            p.uid = Some(1000);
            p.publish = v(&["{uid}.>", "sensors.>"]);
            p.publish_deny = v(&["sensors.secret.>"]);
            p.subscribe = v(&["sensors.>", "home.{user}.>"]);
            p.own = v(&["org.example.{user}"]);
        })];
        let r = Rights::of(&policy, Principal::local(1000, vec![1000], Some("ann".into())));
        assert!(r.check(Action::Publish, "1000.x").is_ok());
        assert!(r.check(Action::Publish, "sensors.kitchen").is_ok());
        let d = r.check(Action::Publish, "sensors.secret.key").unwrap_err();
        assert_eq!(d.rule, r#"uid 1000 publish_deny "sensors.secret.>""#);
        let d = r.check(Action::Publish, "1001.x").unwrap_err();
        assert_eq!(d.rule, "uid 1000 publish (no pattern allows it)");
        assert!(r.check(Action::Subscribe, "sensors.*.temp").is_ok());
        assert!(r.check(Action::Subscribe, "home.ann.>").is_ok());
        assert!(r.check(Action::Subscribe, "home.*.>").is_err());
        assert!(r.check(Action::Subscribe, ">").is_err());
        assert!(r.check(Action::Own, "org.example.ann").is_ok());
        assert!(r.check(Action::Own, "org.example.bob").is_err());
        assert!(r.check(Action::Call, "org.example.ann").is_err());
        // No user name: a {user} pattern matches nothing.
        let nameless = Rights::of(&policy, Principal::local(1000, vec![], None));
        assert!(nameless.check(Action::Subscribe, "home.ann.>").is_err());
    }

    #[test]
    fn groups_default_and_privilege() {
        let policy = vec![
            entry(|p| {
                p.gid = Some(50);
                p.subscribe = v(&["staff.>"]);
                p.subscribe_deny = v(&["staff.payroll.>"]);
            }),
            entry(|p| {
                p.gid = Some(60);
                p.subscribe = v(&[">"]);
                p.privileged = true;
            }),
            entry(|p| {
                p.default = true;
                p.subscribe = v(&["public.>"]);
            }),
        ];
        // A supplementary group names the entry; the default does not apply.
        let staff = Rights::of(&policy, Principal::local(1001, vec![1001, 50], None));
        assert!(staff.check(Action::Subscribe, "staff.news").is_ok());
        assert!(staff.check(Action::Subscribe, "public.x").is_err());
        // A subscription that could receive a denied subject is refused.
        assert!(staff.check(Action::Subscribe, "staff.>").is_err());
        assert!(staff.check_watch("staff.>").is_ok());
        assert!(staff.check_watch(">").is_err());
        assert!(!staff.privileged);
        // Two entries: deny in one wins over allow in the other.
        let both = Rights::of(&policy, Principal::local(1002, vec![50, 60], None));
        assert!(both.privileged);
        assert!(both.check(Action::Subscribe, "staff.payroll.x").is_err());
        assert!(both.check_watch(">").is_ok());
        let nobody = Rights::of(&policy, Principal::local(1003, vec![1003], None));
        assert!(nobody.check(Action::Subscribe, "public.x").is_ok());
        assert!(nobody.check(Action::Publish, "public.x").is_err());
        // Without a default entry, the built-in one: everything but watching.
        let open = Rights::of(&[], Principal::local(1003, vec![1003], None));
        assert!(open.check(Action::Publish, "a.b").is_ok());
        assert!(open.check(Action::Subscribe, ">").is_ok());
        assert!(open.check_watch(">").is_err());
        assert!(Rights::all(Principal::local(0, vec![0], None))
            .check(Action::Publish, "x")
            .is_ok());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = entry(|p| {
            p.uid = Some(5);
            p.gid = Some(5);
        });
        assert!(bad.validate().unwrap_err().contains("exactly one"));
        let bad = entry(|p| {
            p.uid = Some(5);
            p.publish = v(&["a.{pid}"]);
        });
        assert!(bad.validate().unwrap_err().contains("placeholder"));
        let bad = entry(|p| {
            p.default = true;
            p.subscribe = v(&["a..b"]);
        });
        assert!(bad.validate().unwrap_err().starts_with("default subscribe"));
        assert!(builtin_default().validate().is_ok());
    }
}
