//! Enforcing the access policy ([`acl`](crate::acl)) on live connections:
//! the checks on publish, subscribe, own and call, what a denial does
//! (counted per principal and rule, `$BUS.event.denied`, a log line at a
//! bounded rate, and an answer to the peer), private reply inboxes, and
//! taking a reloaded policy.
//!
//! A publish is checked when its subject misses the connection's route
//! cache, and cached with its routes; an allowed subject is also kept in
//! the connection's allowed set, so a route cache that empties itself
//! does not mean checking again. A reload empties both.

use std::sync::Arc;

use libbus::proto::{api, ErrorCode, ServerFrame};

use crate::{
    acl::{inbox_reach, Action, Denied, InboxReach},
    api as admin, control,
    deliver::Target,
    registry::{lock, Conn},
    state::State,
};

/// Records a denial: counted, published as `$BUS.event.denied`, logged
/// at a bounded rate.
fn denied(state: &State, conn: &Conn, action: Action, subject: &str, d: &Denied) {
    let principal = conn.rights.load().principal.label.clone();
    state.policy.count_denial(&principal, &d.rule);
    if let Some(held_back) = state.refusal_log.allow(state.clock.now_ms()) {
        tracing::info!(id = conn.id, principal, action = action.as_str(), subject, rule = %d, held_back, "denied");
    }
    admin::event(state, api::EVENT_DENIED, || api::DeniedEvent {
        conn_id: conn.id,
        principal,
        action: action.as_str().into(),
        subject: subject.into(),
        rule: d.rule.clone(),
    });
}

/// The message a denied peer gets.
fn message(action: Action, subject: &str, d: &Denied) -> String {
    format!("permission denied: {} {subject:?} (rule: {d})", action.as_str())
}

/// May `conn` publish to `subject` (valid, outside `$BUS.`)? A denial is
/// answered with an `Error` frame naming the rule; the connection stays.
/// A reply to a request it received and has not answered is allowed
/// whatever its publish rules say (NATS's `allow_responses`); `owed`
/// then tells the caller not to cache the subject.
pub fn publish(state: &State, conn: &Conn, subject: &str) -> Verdict {
    // The generation first: a reload bumps it after every connection has
    // its new rights, so rights read after it are at least as new.
    let generation = state.policy.generation();
    let rights = conn.rights.load();
    if rights.all {
        return Verdict::Allowed;
    }
    let mut allowed = lock(&conn.allowed);
    if allowed.contains(generation, subject) {
        return Verdict::Allowed;
    }
    let checked = rights.check(Action::Publish, subject);
    if checked.is_ok() {
        allowed.insert(subject);
    }
    drop(allowed);
    match checked {
        Ok(()) => Verdict::Allowed,
        Err(_) if conn.owed.owes(subject) => Verdict::Reply,
        Err(d) => {
            denied(state, conn, Action::Publish, subject, &d);
            conn.outbox.push_frame(&control::error(
                ErrorCode::PermissionDenied,
                &message(Action::Publish, subject, &d),
            ));
            Verdict::Denied
        }
    }
}

/// What [`publish`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed by the rules: route, and cache the routes.
    Allowed,
    /// A reply it owes: route this once, without caching.
    Reply,
    /// Denied, and answered.
    Denied,
}

/// May `conn` subscribe to `pattern` (valid)? The error is the message of
/// the `SubRefused` it gets. An allowed subscription that reaches one
/// reply inbox claims it for the connection's user. A subscription to
/// one inbox and nothing else (`_INBOX.<id>.…`, what a client makes for
/// its requests' replies) needs no subscribe rule, only that no other user
/// holds the inbox.
pub fn subscribe(state: &State, conn: &Conn, pattern: &str) -> Result<(), String> {
    let rights = conn.rights.load();
    if rights.all {
        return Ok(());
    }
    let reach = inbox_reach(pattern);
    let own_inbox = pattern.starts_with(libbus::subject::INBOX_PREFIX) && matches!(reach, InboxReach::One(_));
    let checked = (if own_inbox {
        Ok(())
    } else {
        rights.check(Action::Subscribe, pattern)
    })
    .and_then(|()| rights.check_watch(pattern))
    .and_then(|()| match (rights.privileged, reach) {
        (true, _) | (_, InboxReach::None) => Ok(()),
        (false, InboxReach::All) => Err(Denied {
            rule: "privileged: other users' replies (_INBOX)".into(),
        }),
        (false, InboxReach::One(id)) if state.inboxes.claim(&id, &rights.principal.label) => Ok(()),
        (false, InboxReach::One(_)) => Err(Denied {
            rule: "private: another user's reply inbox".into(),
        }),
    });
    checked.map_err(|d| {
        denied(state, conn, Action::Subscribe, pattern, &d);
        message(Action::Subscribe, pattern, &d)
    })
}

/// `conn` no longer subscribes to `pattern`: gives back an inbox it
/// claimed.
pub fn unsubscribed(state: &State, conn: &Conn, pattern: &str) {
    let rights = conn.rights.load();
    if rights.all || rights.privileged {
        return;
    }
    if let InboxReach::One(id) = inbox_reach(pattern) {
        state.inboxes.release(&id, &rights.principal.label);
    }
}

/// One of `conn`'s subscriptions, to `pattern`, has ended: its inbox
/// claim and its place in the user's `max_subscriptions_per_uid` go.
pub fn ended(state: &State, conn: &Conn, pattern: &str) {
    unsubscribed(state, conn, pattern);
    if let Some(b) = conn.outbox.budget() {
        b.subs.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// May `conn` own (`Action::Own`) or call (`Action::Call`) `name`? The
/// error is the message it gets.
pub fn name(state: &State, conn: &Conn, action: Action, name: &str) -> Result<(), String> {
    let rights = conn.rights.load();
    rights.check(action, name).map_err(|d| {
        denied(state, conn, action, name, &d);
        message(action, name, &d)
    })
}

/// Answers a denied call with an error reply (code 403 and the message),
/// so the caller fails at once with `Error::Service` rather than at its
/// timeout.
pub fn refuse_call(state: &State, reply_to: &str, message: &str) {
    let mut h = libbus::Headers::new();
    h.append(libbus::headers::ERROR_CODE, "403");
    h.append(libbus::headers::ERROR_TEXT, message);
    let Ok(block) = h.encode() else { return };
    let msg = crate::outbox::Published::with_headers(reply_to, None, Some(&block), &[]);
    state.router.lookup_uncached(reply_to).deliver(msg.frame());
}

/// Takes a reloaded policy: every connection's rights are worked out
/// again, every route cache is emptied (publishes are checked anew), and
/// each subscription the new rights deny ends with a `SubRefused`.
pub fn reload(state: &State) {
    for conn in state.registry.snapshot() {
        refresh(state, &conn);
    }
    // After every connection has its new rights, so nothing is cached
    // under the old ones.
    state.policy.rights_changed();
    state.router.invalidate();
}

fn refresh(state: &State, conn: &Arc<Conn>) {
    // Inbox claims are given back and taken again under the new rights.
    let subs: Vec<(u64, String, Option<String>)> = lock(&conn.subs)
        .values()
        .map(|s| (s.sid, s.pattern.clone(), s.queue.clone()))
        .collect();
    for (_, pattern, _) in &subs {
        unsubscribed(state, conn, pattern);
    }
    conn.rights.store(Arc::new(state.policy.rights(
        &conn.peer,
        &conn.groups,
        conn.user.as_deref(),
    )));
    for (sid, pattern, queue) in subs {
        let Err(message) = subscribe(state, conn, &pattern) else {
            continue;
        };
        if lock(&conn.subs).remove(&sid).is_none() {
            continue;
        }
        if let Some(b) = conn.outbox.budget() {
            b.subs.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        state
            .router
            .unsubscribe([(pattern.as_str(), queue.as_deref(), Target::new(conn, sid))]);
        conn.outbox.push_frame(&control::server(&ServerFrame::SubRefused {
            sid,
            code: ErrorCode::PermissionDenied,
            message: &message,
        }));
    }
}
