//! Well-known names on the wire: `RequestName`, `ReleaseName` and `Call`
//! from a connection (their strings already checked by `conn.rs`), and
//! what each change announces: a `NameReply` to the asker, a `NameState` to
//! every connection whose standing changed, and `$BUS.event.name.owner` for
//! every change of owner, in order.
//!
//! A call is a request with a destination: it goes to the primary owner of
//! the name as an `SMsg` (always with its sender) on the sid the owner
//! asked for the name with, with no subject routing; with no owner, the
//! caller gets `NoResponders` at once. Names are per daemon: a call does
//! not cross a bridge.

use std::sync::Arc;

use libbus::proto::{self, ErrorCode, ServerFrame};

use crate::{
    api, control,
    inflight::{Inflight, Owing},
    names::{Claim, Effects},
    outbox::Published,
    registry::Conn,
    state::State,
};

/// `RequestName`: answers `NameReply` (or `NameRefused` at
/// `max_names_per_connection`), then announces what changed.
pub fn request_name(state: &State, conn: &Arc<Conn>, r: &proto::RequestName<'_>) {
    let mut table = state.names.lock();
    let max = state.config().max_names_per_connection;
    if table.held_by(conn.id) >= max && !table.claimed_by(r.name, conn.id) {
        drop(table);
        state.policy.refused.count("max_names_per_connection");
        let message = format!("limit exceeded: max_names_per_connection = {max}");
        refuse(conn, r.serial, ErrorCode::LimitExceeded, &message);
        return;
    }
    let claim = Claim {
        conn: conn.clone(),
        sid: r.sid,
        flags: r.flags,
    };
    let mut fx = Effects::default();
    let reply = table.request(r.name, claim, &mut fx);
    answer(conn, r.serial, reply);
    // Under the table's lock: changes are announced in the order they happened.
    announce(state, fx);
}

/// `NameRefused` for request `serial`.
pub fn refuse(conn: &Conn, serial: u64, code: ErrorCode, message: &str) {
    conn.outbox
        .push_frame(&control::server(&ServerFrame::NameRefused {
            serial,
            code,
            message,
        }));
}

/// `ReleaseName` (of the claim made with `sid`, if not 0): answers
/// `NameReply` (unless `serial` is 0), then announces what changed.
pub fn release_name(state: &State, conn: &Arc<Conn>, serial: u64, name: &str, sid: u64) {
    let mut table = state.names.lock();
    let mut fx = Effects::default();
    let reply = table.release(name, conn, (sid != 0).then_some(sid), &mut fx);
    if serial != 0 {
        answer(conn, serial, reply);
    }
    announce(state, fx);
}

/// The connection ended: every name it owned passes to the next in line.
pub fn release_all(state: &State, conn: &Conn) {
    let mut table = state.names.lock();
    let mut fx = Effects::default();
    table.release_all(conn, &mut fx);
    // Not told itself: it has gone.
    fx.states.retain(|(claim, _, _)| claim.conn.id != conn.id);
    announce(state, fx);
}

fn answer(conn: &Conn, serial: u64, reply: proto::NameReply) {
    conn.outbox
        .push_frame(&control::server(&ServerFrame::NameReply { serial, reply }));
}

/// Tells each connection whose standing changed, and publishes each
/// change of owner.
fn announce(state: &State, fx: Effects) {
    for (claim, name, new) in &fx.states {
        let frame = ServerFrame::NameState {
            sid: claim.sid,
            name,
            state: *new,
        };
        claim.conn.outbox.push_frame(&control::server(&frame));
    }
    for (name, old, new) in fx.owners {
        let old = old.as_ref().map(Claim::owner);
        let new = new.as_ref().map(Claim::owner);
        tracing::debug!(name, ?old, ?new, "name owner changed");
        api::name_owner_event(state, name, old, new);
    }
}

/// A call (its strings and headers checked): delivered to the name's
/// primary owner with the caller as its sender, and tracked as a request
/// so that the caller hears at once if the owner goes without answering.
/// With no owner, the caller gets `NoResponders`; an owner whose queue is
/// full gets a drop counted (and a `Lagged` notice) and the caller waits
/// out its timeout, as for any request.
pub fn call(state: &State, conn: &Arc<Conn>, c: &proto::Call<'_>) {
    let owner = state.names.lock().owner(c.name).map(|o| (o.conn.clone(), o.sid));
    let Some((owner, sid)) = owner else {
        if let Some(reply_to) = c.reply_to {
            conn.outbox
                .push_frame(&control::server(&ServerFrame::NoResponders { reply_to }));
        }
        return;
    };
    let headers = (!c.headers.is_empty()).then_some(c.headers);
    let msg =
        Published::with_headers(c.subject, c.reply_to, headers, c.payload).sent_by(conn.sender.to_vec());
    if !owner.outbox.try_push(sid, true, msg.frame()) {
        owner.outbox.record_drop(sid);
        return;
    }
    if let Some(reply_to) = c.reply_to {
        let req = Inflight::new(reply_to, conn);
        let owing = owner.owed.owe(&req, state.config().max_replies_per_connection);
        if owing == Owing::Closed {
            req.tell_requester();
        }
    }
}
