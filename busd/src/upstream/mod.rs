//! The NATS upstream: this daemon joins a NATS server or cluster, so that a
//! fleet of hosts shares one bus through it. Local clients still talk to
//! the local daemon only.
//!
//! - **Up.** A local publish whose subject `export` matches is handed to
//!   [`Upstream::export`] from the publish path (`conn.rs` `route`): one
//!   copy, queued in a bounded buffer (`upstream_buffer`) that the writer
//!   task ([`session`]) sends through async-nats while the link is up, in
//!   order. Beyond the bound it is dropped and counted.
//! - **Down.** Local interest drives upstream subscriptions: each distinct
//!   local pattern (with its queue group) within an `import` pattern is one
//!   upstream subscription, and what it brings is delivered only to the
//!   local subscribers of that pattern ([`Upstream::receive`]), so
//!   overlapping patterns never deliver twice.
//! - **No loops.** The client connects with no-echo, and nothing that came
//!   down goes back up. An upstream and busd's own bridges are refused
//!   together (`Config::validate`).
//! - **Queue groups.** A group with a member here gets a local publish
//!   here; it goes up naming the groups it was given to
//!   (`Bus-Queue-Handled`), and another host's member that NATS picks for
//!   it lets it pass. A group with no member here gets it through NATS,
//!   which picks one member among all hosts.
//! - **Requests** go up with a reply subject under this daemon's prefix
//!   ([`mapping`]); "no responders" from NATS fails the request here only
//!   if no local responder took it.

pub mod mapping;
pub mod session;

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use libbus::proto::{self, api::UpstreamInfo, link::Origin, ServerFrame};

use crate::{
    cluster::Message,
    config::UpstreamConfig,
    control,
    deliver::{Router, Routes},
    outbox::Published,
    registry::lock,
};

/// One message on its way up.
#[derive(Debug)]
struct Out {
    subject: String,
    reply: Option<String>,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    /// What it counts against `upstream_buffer`.
    size: usize,
}

/// The bounded buffer between the publish path and the writer task.
#[derive(Debug, Default)]
struct Queue {
    msgs: VecDeque<Out>,
    bytes: usize,
}

/// What the upstream logs in with, read at start.
#[derive(Default)]
struct Secrets {
    token: Option<String>,
    password: Option<String>,
    /// A credentials file's text (JWT and NKey seed).
    creds: Option<String>,
}

/// Never printed.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

/// The upstream side of one daemon (see the module docs).
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    secrets: Secrets,
    node: String,
    /// `_BUSR.<node>.`: where replies to requests from here come back.
    own: String,
    buffer_limit: usize,
    /// `upstream_settle`.
    settle: std::time::Duration,
    /// Until when what is queued waits after the link came back.
    hold_until: Mutex<Option<std::time::Instant>>,
    queue: Mutex<Queue>,
    /// Wakes the writer: something was queued, or the link came up.
    wake: tokio::sync::Notify,
    /// Wakes the interest task: local subscriptions changed.
    interest: tokio::sync::Notify,
    up: AtomicBool,
    /// The server connected to and its name.
    server: Mutex<(String, String)>,
    /// When a failure to reach a server was last logged.
    error_logged: Mutex<Option<std::time::Instant>>,
    msgs_in: AtomicU64,
    msgs_out: AtomicU64,
    dropped: AtomicU64,
    subscriptions: AtomicU64,
    connects: AtomicU64,
}

impl Upstream {
    /// The upstream `config` names (`[upstream]`, `upstream_buffer`,
    /// `upstream_settle`), if it names any server, with its secrets read:
    /// a file that cannot be read is an error now, not a link that never
    /// comes up.
    pub fn new(config: &crate::Config, node: &str) -> Result<Option<Self>, crate::Error> {
        let (buffer_limit, settle) = (config.upstream_buffer, config.upstream_settle);
        let config = &config.upstream;
        if config.urls.is_empty() {
            return Ok(None);
        }
        let read = |p: &Option<std::path::PathBuf>| p.as_deref().map(crate::tcp::read_token_file).transpose();
        let secrets = Secrets {
            token: read(&config.token_file)?,
            password: read(&config.password_file)?,
            creds: match &config.creds_file {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|source| crate::Error::Io {
                        what: format!("reading the NATS credentials file {}", path.display()),
                        source,
                    })?;
                    async_nats::ConnectOptions::with_credentials(&text).map_err(|e| {
                        crate::Error::Config(format!("the NATS credentials file {}: {e}", path.display()))
                    })?;
                    Some(text)
                }
            },
        };
        let mut config = config.clone();
        config.import = mapping::without_covered(&config.import);
        Ok(Some(Self {
            config,
            secrets,
            node: node.to_owned(),
            own: mapping::reply_root(node),
            buffer_limit,
            settle,
            hold_until: Mutex::new(None),
            queue: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            interest: tokio::sync::Notify::new(),
            up: AtomicBool::new(false),
            server: Mutex::default(),
            error_logged: Mutex::new(None),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }))
    }

    /// True while connected to a server.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Local subscriptions changed: the interest task compares them with
    /// the upstream subscriptions.
    pub fn interest_changed(&self) {
        self.interest.notify_one();
    }

    /// True if a publish to `subject` would go up (`export`).
    pub fn exports(&self, subject: &str) -> bool {
        mapping::export_subject(subject, &self.config.export, &self.own).is_some()
    }

    /// Hands a local publish to the upstream if it goes up (`export`, or an
    /// answer to a request that came down). `sender` keeps its publisher's
    /// `Bus-Sender` value once made; `local` are its local routes. Returns
    /// true if the upstream took it: then a request that no local responder
    /// took waits for NATS's answer instead of failing here.
    pub fn export(&self, msg: Message<'_>, sender: &std::sync::OnceLock<String>, local: &Routes) -> bool {
        let Some(subject) = mapping::export_subject(msg.subject, &self.config.export, &self.own) else {
            return false;
        };
        if msg.reply_to.is_some() && local.is_empty() && !self.is_up() {
            // Nobody here, and nobody reachable to ask: fail it now.
            return false;
        }
        let handled: Vec<&str> = local.groups.iter().map(|(g, _)| &**g).collect();
        let sender = sender.get_or_init(|| mapping::sender_value(&self.node, msg.from));
        let headers = mapping::to_nats(msg.headers, sender, &handled);
        let reply = msg
            .reply_to
            .map(|r| mapping::outbound_reply(r, &self.own, !local.is_empty()));
        let size = subject.len()
            + reply.as_ref().map_or(0, String::len)
            + msg.payload.len()
            + msg.headers.map_or(0, <[u8]>::len)
            + sender.len();
        let mut q = lock(&self.queue);
        if q.bytes + size > self.buffer_limit {
            drop(q);
            self.dropped.fetch_add(1, Relaxed);
            return true;
        }
        q.bytes += size;
        q.msgs.push_back(Out {
            subject: subject.to_owned(),
            reply,
            headers,
            payload: Bytes::copy_from_slice(msg.payload),
            size,
        });
        drop(q);
        self.wake.notify_one();
        true
    }

    /// The link is up again: if messages are held, they wait `settle`
    /// for the other hosts to subscribe again.
    fn came_up(&self) {
        let held = !lock(&self.queue).msgs.is_empty();
        *lock(&self.hold_until) =
            (held && !self.settle.is_zero()).then(|| std::time::Instant::now() + self.settle);
        self.up.store(true, Relaxed);
        self.wake.notify_one();
    }

    /// Until when the writer waits before sending, if it must.
    fn held_until(&self) -> Option<std::time::Instant> {
        let mut until = lock(&self.hold_until);
        match *until {
            Some(t) if t > std::time::Instant::now() => Some(t),
            _ => {
                *until = None;
                None
            }
        }
    }

    /// Takes everything queued, for the writer.
    fn take(&self) -> VecDeque<Out> {
        let mut q = lock(&self.queue);
        q.bytes = 0;
        std::mem::take(&mut q.msgs)
    }

    /// Puts back what the writer could not send yet, ahead of what came
    /// since, in order.
    fn put_back(&self, mut rest: VecDeque<Out>) {
        let mut q = lock(&self.queue);
        q.bytes += rest.iter().map(|o| o.size).sum::<usize>();
        rest.append(&mut q.msgs);
        q.msgs = rest;
    }

    /// A message from upstream subscription `sub`: to the local subscribers
    /// of its pattern (and group), or for a reply to a request from here, to
    /// its requester.
    pub fn receive(
        &self,
        router: &Router,
        sub: &session::SubKey,
        routes: &Routes,
        senders: &mut SenderCache,
        m: &async_nats::Message,
    ) {
        let subject = m.subject.as_str();
        if libbus::subject::validate_subject(subject).is_err()
            || subject.starts_with(libbus::subject::RESERVED_PREFIX)
        {
            return;
        }
        if sub.reply {
            self.receive_reply(router, senders, m);
            return;
        }
        // With several import patterns, a subject that matches two of them
        // comes once per pattern: the first one delivers it.
        if sub.shadowed
            && self.config.import[..sub.import]
                .iter()
                .any(|p| libbus::subject::matches(p, subject))
        {
            return;
        }
        let inbound = mapping::from_nats(m.headers.as_ref());
        if let Some(q) = &sub.queue {
            if inbound.handled.contains(&&**q) {
                return; // its origin's member had it
            }
        }
        let reply = m.reply.as_ref().map(|r| mapping::alias_reply(r.as_str()));
        self.deliver(routes, subject, reply.as_deref(), inbound, senders, &m.payload);
    }

    /// A message that came back under this daemon's reply prefix.
    fn receive_reply(&self, router: &Router, senders: &mut SenderCache, m: &async_nats::Message) {
        let Some((local, had_local)) = mapping::inbound_reply(m.subject.as_str(), &self.own) else {
            return;
        };
        if libbus::subject::validate_subject(local).is_err() {
            return;
        }
        let routes = router.lookup_uncached(local);
        if m.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            // Upstream had nobody; if nobody here took it either, it failed.
            if !had_local {
                let frame = control::server(&ServerFrame::NoResponders { reply_to: local });
                for t in &routes.plain {
                    t.conn.outbox.push_frame(&frame);
                }
            }
            return;
        }
        if m.status.is_some_and(|s| s != async_nats::StatusCode::OK) {
            return; // a status without a message (timeouts, flow control)
        }
        let inbound = mapping::from_nats(m.headers.as_ref());
        let reply = m.reply.as_ref().map(|r| mapping::alias_reply(r.as_str()));
        self.deliver(&routes, local, reply.as_deref(), inbound, senders, &m.payload);
    }

    fn deliver(
        &self,
        routes: &Routes,
        subject: &str,
        reply: Option<&str>,
        inbound: mapping::Inbound<'_>,
        senders: &mut SenderCache,
        payload: &[u8],
    ) {
        if routes.is_empty() {
            return;
        }
        let msg = Published::with_headers(subject, reply, inbound.block.as_deref(), payload)
            .sent_by(senders.encoded(inbound.sender).to_vec());
        routes.deliver(msg.frame());
        self.msgs_in.fetch_add(1, Relaxed);
    }

    /// What `bus-cli list` and `info` show.
    pub fn info(&self) -> UpstreamInfo {
        let (server, server_name) = lock(&self.server).clone();
        UpstreamInfo {
            urls: self.config.urls.clone(),
            server,
            server_name,
            state: if self.is_up() {
                "up"
            } else if self.connects.load(Relaxed) == 0 {
                "connecting"
            } else {
                "down"
            }
            .into(),
            export: self.config.export.clone(),
            import: self.config.import.clone(),
            buffer_limit: self.buffer_limit as u64,
            msgs_in: self.msgs_in.load(Relaxed),
            msgs_out: self.msgs_out.load(Relaxed),
            buffered_bytes: lock(&self.queue).bytes as u64,
            dropped: self.dropped.load(Relaxed),
            subscriptions: self.subscriptions.load(Relaxed),
            connects: self.connects.load(Relaxed),
        }
    }
}

/// The last sender a subscription's reader saw, encoded: a stream from one
/// publisher reads and encodes its sender once.
#[derive(Debug, Default)]
pub struct SenderCache {
    /// The `Bus-Sender` value it was made from (`None`: none came).
    last: Option<Option<String>>,
    encoded: Vec<u8>,
}

impl SenderCache {
    /// A `Bus-Sender` value (`None`, or one that does not read: a native
    /// NATS client, node `nats`) as an encoded `proto::Sender`.
    fn encoded(&mut self, value: Option<&str>) -> &[u8] {
        if self.last.as_ref().map(Option::as_deref) != Some(value) {
            let (node, from) = value
                .and_then(mapping::parse_sender)
                .unwrap_or(("nats", Origin::default()));
            let s = proto::Sender {
                node: node.to_owned(),
                conn_id: from.conn_id,
                uid: from.uid,
                ..Default::default()
            };
            self.encoded = postcard::to_allocvec(&s).unwrap_or_default();
            self.last = Some(value.map(str::to_owned));
        }
        &self.encoded
    }
}

/// The upstream as every connection reaches it: `None` without one.
pub type Shared = Option<Arc<Upstream>>;
