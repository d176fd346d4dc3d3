//! Well-known names, as D-Bus has them: a connection asks for a name
//! ([`Bus::request_name`]), owns it or waits in its queue, and receives the
//! calls addressed to it ([`Bus::call`]) while it owns it. Names are per
//! daemon: a call does not cross a bridge.
//!
//! ```no_run
//! # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
//! use libbus::{NameFlags, NameReply};
//!
//! // The service: one instance owns the name; a second one waits.
//! let mut name = bus.request_name("org.example.clock", NameFlags::NONE).await?;
//! assert_eq!(name.reply(), NameReply::PrimaryOwner);
//! tokio::spawn(async move {
//!     while let Some(call) = name.next_call().await {
//!         // Calls always carry their sender, stamped by the daemon.
//!         let who = call.sender().map(|s| s.conn_id).unwrap_or_default();
//!         let _ = call.respond(format!("{} asked for {}", who, call.subject())).await;
//!     }
//! });
//!
//! // A client: the call goes to the owner only, not by subject.
//! let reply = bus.call("org.example.clock", "now", "").await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tokio::sync::mpsc;

pub use crate::proto::{api::NameOwner, NameReply, NameState};
use crate::{
    proto::{self, name_flags, ClientFrame},
    subject, Bus, Error, Headers, Message, Result, Subscription,
};

/// How to ask for a name: D-Bus's `RequestName` flags, combined with `|`.
///
/// ```
/// use libbus::NameFlags;
/// let flags = NameFlags::ALLOW_REPLACEMENT | NameFlags::DO_NOT_QUEUE;
/// assert_eq!(flags.bits(), 0x5);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameFlags(u8);

impl NameFlags {
    /// Own it if it is free, else wait in its queue; keep it until released.
    pub const NONE: Self = Self(0);
    /// A later request with [`REPLACE_EXISTING`](Self::REPLACE_EXISTING)
    /// may take the name from this connection.
    pub const ALLOW_REPLACEMENT: Self = Self(name_flags::ALLOW_REPLACEMENT);
    /// Take the name from its owner, if the owner allowed replacement.
    pub const REPLACE_EXISTING: Self = Self(name_flags::REPLACE_EXISTING);
    /// Never wait in the queue: own it now or get [`NameReply::Exists`];
    /// once replaced, lose it rather than wait.
    pub const DO_NOT_QUEUE: Self = Self(name_flags::DO_NOT_QUEUE);

    /// The flags as the wire carries them.
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for NameFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A well-known name this connection asked for: the calls addressed to it
/// while this connection owns it, and the changes of its standing
/// ([`NameState`]). Dropping it releases the name (the next in its queue
/// owns it then).
///
/// If the connection to the daemon drops and comes back, the name is lost
/// ([`NameState::Lost`]) and asked for again with the same flags; what
/// that brings comes as the next state.
#[derive(Debug)]
pub struct Name {
    name: String,
    reply: NameReply,
    calls: Subscription,
    states: mpsc::UnboundedReceiver<NameState>,
}

impl Name {
    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the request got: [`NameReply::PrimaryOwner`],
    /// [`InQueue`](NameReply::InQueue), [`Exists`](NameReply::Exists) (the
    /// handle then holds nothing) or [`AlreadyOwner`](NameReply::AlreadyOwner).
    /// A connection that asks again for a name it holds keeps its place
    /// with the new flags, and the newest handle takes over its calls
    /// (the older one hears [`NameState::Lost`]).
    pub fn reply(&self) -> NameReply {
        self.reply
    }

    /// The next call to the name: a request whose [`subject`](Message::subject)
    /// is the method called and whose [`sender`](Message::sender) is the
    /// caller. Answer it with [`Message::respond`] or
    /// [`Message::respond_error`]. `None` once the connection is closed.
    pub async fn next_call(&mut self) -> Option<Message> {
        self.calls.next().await
    }

    /// The next change of this connection's standing with the name, starting
    /// with the one the request made: [`NameState::Primary`] when it owns
    /// it (at once, or when the owner before it leaves),
    /// [`Queued`](NameState::Queued), or [`Lost`](NameState::Lost).
    /// `None` once the connection is closed.
    pub async fn next_state(&mut self) -> Option<NameState> {
        self.states.recv().await
    }

    /// The next call or change of standing, whichever comes first (changes
    /// first when both are there): for a service that answers calls and
    /// reports whether it owns the name in one loop.
    ///
    /// ```no_run
    /// # async fn f(mut name: libbus::Name) {
    /// use libbus::names::NameEvent;
    /// while let Some(event) = name.next_event().await {
    ///     match event {
    ///         NameEvent::Call(call) => { let _ = call.respond("ok").await; }
    ///         NameEvent::State(state) => eprintln!("{}: {state:?}", name.name()),
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next_event(&mut self) -> Option<NameEvent> {
        use std::{future::Future, task::Poll};
        // Changes first; a closed state channel leaves only the calls.
        let mut calls = std::pin::pin!(self.calls.next());
        let states = &mut self.states;
        let mut states_open = true;
        std::future::poll_fn(|cx| {
            if states_open {
                match states.poll_recv(cx) {
                    Poll::Ready(Some(state)) => return Poll::Ready(Some(NameEvent::State(state))),
                    Poll::Ready(None) => states_open = false,
                    Poll::Pending => {}
                }
            }
            calls.as_mut().poll(cx).map(|call| call.map(NameEvent::Call))
        })
        .await
    }

    /// Releases the name (or leaves its queue); the daemon's answer is
    /// [`NameReply::Released`].
    pub async fn release(self) -> Result<NameReply> {
        let shared = self.calls.shared.clone();
        // The handle's drop must not release it a second time.
        shared.input.forget(self.calls.sid);
        name_op(&shared, |serial| ClientFrame::ReleaseName {
            serial,
            name: &self.name,
            sid: self.calls.sid,
        })
        .await
    }
}

/// What [`Name::next_event`] yields.
#[derive(Debug)]
pub enum NameEvent {
    /// A call to the name.
    Call(Message),
    /// This connection's standing with the name changed.
    State(NameState),
}

/// Sends the name operation `frame` (given its serial) and waits for the
/// daemon's answer, bounded by the request timeout.
async fn name_op<'f>(
    shared: &crate::session::Shared,
    frame: impl FnOnce(u64) -> ClientFrame<'f>,
) -> Result<NameReply> {
    let (serial, rx, _guard) = shared.input.new_name_op();
    shared.output.send(&frame(serial)).await?;
    let t = shared.opts.request_timeout;
    match tokio::time::timeout(t, rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(shared.output.disconnected()),
        Err(_) => Err(Error::Timeout(t)),
    }
}

impl Bus {
    /// Asks for the well-known name `name` (subject syntax, no wildcards),
    /// as D-Bus's `RequestName`: owns it if it is free; takes it over with
    /// [`NameFlags::REPLACE_EXISTING`] if its owner allowed replacement;
    /// else waits in its queue, unless [`NameFlags::DO_NOT_QUEUE`]. See
    /// [`Name::reply`] for the outcomes. Fails with [`Error::Server`] at
    /// the daemon's `max_names_per_connection`, or for a name under `$BUS.`.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// use libbus::{NameFlags, NameState};
    /// let mut name = bus.request_name("org.example.db", NameFlags::NONE).await?;
    /// // Primary at once, or once the owner before it is gone.
    /// while name.next_state().await != Some(NameState::Primary) {}
    /// # Ok(()) }
    /// ```
    pub async fn request_name(&self, name: &str, flags: NameFlags) -> Result<Name> {
        subject::validate_subject(name)?;
        let shared = &self.shared;
        let (sid, receiver, states) = shared.input.register_name(name, flags.bits());
        // From here on, dropping `calls` releases the name.
        let calls = self.subscription(sid, receiver);
        let asked = name_op(shared, |serial| {
            ClientFrame::RequestName(proto::RequestName {
                serial,
                sid,
                name,
                flags: flags.bits(),
            })
        })
        .await;
        if !matches!(
            asked,
            Ok(NameReply::PrimaryOwner | NameReply::InQueue | NameReply::AlreadyOwner)
        ) {
            // Nothing to release when this handle goes.
            shared.input.forget(sid);
        }
        let reply = asked?;
        Ok(Name {
            name: name.to_owned(),
            reply,
            calls,
            states,
        })
    }

    /// Releases `name`, owned or queued for by this connection through
    /// any handle: [`NameReply::Released`], or
    /// [`NonExistent`](NameReply::NonExistent) if nobody owns it, or
    /// [`NotOwner`](NameReply::NotOwner) if this connection neither owns
    /// nor waits for it. Calls to it stop reaching the handle.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// assert_eq!(bus.release_name("org.example.db").await?, libbus::NameReply::NotOwner);
    /// # Ok(()) }
    /// ```
    pub async fn release_name(&self, name: &str) -> Result<NameReply> {
        subject::validate_subject(name)?;
        let frame = |serial| ClientFrame::ReleaseName { serial, name, sid: 0 };
        name_op(&self.shared, frame).await
    }

    /// Calls `method` on the owner of `name`, with the default request
    /// timeout: the request goes to the name's primary owner only, whatever
    /// subscribes to any subject. Fails at once with [`Error::NoResponders`]
    /// if nobody owns the name, with [`Error::ResponderGone`] if the owner
    /// goes without answering, and with [`Error::Service`] on an error reply.
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// let reply = bus.call("org.example.db", "get", "key").await?;
    /// # Ok(()) }
    /// ```
    pub async fn call(&self, name: &str, method: &str, payload: impl AsRef<[u8]>) -> Result<Message> {
        let timeout = self.shared.opts.request_timeout;
        self.call_with_headers(name, method, &Headers::new(), payload, timeout)
            .await
    }

    /// [`call`](Self::call) with headers and its own timeout.
    pub async fn call_with_headers(
        &self,
        name: &str,
        method: &str,
        headers: &Headers,
        payload: impl AsRef<[u8]>,
        timeout: Duration,
    ) -> Result<Message> {
        subject::validate_subject(name)?;
        subject::validate_subject(method)?;
        let headers = if headers.is_empty() {
            &[][..]
        } else {
            headers.encoded()?
        };
        let payload = payload.as_ref();
        let output = &self.shared.output;
        let send = async |reply_to: &str| {
            let call = ClientFrame::Call(proto::Call {
                name,
                subject: method,
                reply_to: Some(reply_to),
                headers,
                payload,
            });
            output.send(&call).await
        };
        self.request_via(name, timeout, send).await
    }

    /// Who owns `name` now (`None`: nobody), from the daemon
    /// (`$BUS.api.name_owner`).
    ///
    /// ```no_run
    /// # async fn f(bus: libbus::Bus) -> libbus::Result<()> {
    /// if let Some(owner) = bus.name_owner("org.example.db").await? {
    ///     println!("owned by connection {} ({})", owner.conn_id, owner.client);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn name_owner(&self, name: &str) -> Result<Option<NameOwner>> {
        subject::validate_subject(name)?;
        let reply: proto::api::NameOwnerReply = self.request_value(proto::api::NAME_OWNER, &name).await?;
        reply.map_err(|(code, message)| Error::Server { code, message })
    }
}
