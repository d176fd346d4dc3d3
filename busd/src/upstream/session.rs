//! The tasks of the NATS upstream: the client and its link events, the
//! writer that sends what [`Upstream::export`] queued, and the interest
//! task that keeps one upstream subscription per local pattern, each read
//! by a task of its own (`pump`).

use std::{
    collections::HashMap,
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};

use futures_util::StreamExt;
use libbus::proto::api;
use tokio_util::task::TaskTracker;

use super::{mapping, Upstream};
use crate::{acl::Action, deliver::Routes, registry::lock, state::State};

/// One upstream subscription: the local pattern (and queue group) it
/// serves, and the `import` pattern (by index) it was cut down to; or the
/// subscription to this daemon's replies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubKey {
    /// The local pattern.
    pub pattern: Box<str>,
    /// Its queue group.
    pub queue: Option<Box<str>>,
    /// Which `import` pattern it lies within.
    pub import: usize,
    /// True if an earlier `import` pattern overlaps it: a message it brings
    /// may also come through that one's subscription, which delivers it.
    pub shadowed: bool,
    /// True for `_BUSR.<node>.>`.
    pub reply: bool,
}

/// How often the interest task looks at local interest even without a
/// change being signalled.
const INTEREST_EVERY: Duration = Duration::from_millis(100);
/// Longest wait between two attempts to reach a server.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Keep-alive to the server.
const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Starts the upstream's tasks, if the daemon has one.
pub fn start(state: &Arc<State>, tracker: &TaskTracker) {
    let Some(up) = state.upstream.clone() else { return };
    tracker.spawn(run(state.clone(), up));
}

/// The client's options from `[upstream]` and the secrets read at start.
fn options(
    up: &Upstream,
    events: tokio::sync::mpsc::UnboundedSender<async_nats::Event>,
) -> Result<async_nats::ConnectOptions, String> {
    let (c, secrets) = (&up.config, &up.secrets);
    let mut o = async_nats::ConnectOptions::new();
    if let Some(creds) = &secrets.creds {
        o = o.credentials(creds).map_err(|e| e.to_string())?;
    }
    if let Some(token) = &secrets.token {
        o = o.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&c.user, &secrets.password) {
        o = o.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &c.ca {
        o = o.add_root_certificates(ca.clone());
    }
    Ok(o.no_echo()
        .retry_on_initial_connect()
        .name(format!("busd {}", up.node))
        .ping_interval(PING_INTERVAL)
        .reconnect_delay_callback(|attempts| {
            let ms = 100u64.saturating_mul(1 << attempts.min(10));
            Duration::from_millis(ms + fastrand::u64(..=ms / 4)).min(MAX_RECONNECT_DELAY)
        })
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        }))
}

/// Connects (retrying until a server answers), then runs the writer and
/// the interest task and follows the link's events until shutdown.
async fn run(state: Arc<State>, up: Arc<Upstream>) {
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let client = match options(&up, tx) {
        Ok(o) => o.connect(up.config.urls.clone()).await,
        Err(e) => {
            tracing::error!(error = %e, "upstream not started");
            return;
        }
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "upstream not started");
            return;
        }
    };
    let writer = tokio::spawn(write_loop(state.clone(), up.clone(), client.clone()));
    let interest = tokio::spawn(interest_loop(state.clone(), up.clone(), client.clone()));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => on_event(&state, &up, &client, e),
                None => break,
            },
        }
    }
    interest.abort();
    // The writer sends what is queued while the link is up, within the
    // shutdown grace.
    let grace = state.config().shutdown_grace;
    let _ = tokio::time::timeout(grace, async {
        let _ = writer.await;
        if up.is_up() {
            let _ = client.flush().await;
        }
    })
    .await;
}

fn on_event(state: &State, up: &Upstream, client: &async_nats::Client, e: async_nats::Event) {
    match e {
        async_nats::Event::Connected => {
            let info = client.server_info();
            *lock(&up.server) = (format!("{}:{}", info.host, info.port), info.server_name.clone());
            up.connects.fetch_add(1, Relaxed);
            *lock(&up.error_logged) = None;
            up.came_up();
            tracing::info!(server = %info.server_name, address = %format!("{}:{}", info.host, info.port), "upstream up");
            crate::api::event(state, api::EVENT_UPSTREAM_UP, || up.info());
        }
        async_nats::Event::Disconnected => {
            up.up.store(false, Relaxed);
            *lock(&up.server) = Default::default();
            tracing::warn!("upstream down; holding what goes up (upstream_buffer)");
            crate::api::event(state, api::EVENT_UPSTREAM_DOWN, || up.info());
        }
        async_nats::Event::SlowConsumer(_) => {
            // The client dropped a message for a subscription we read too
            // slowly.
            up.dropped.fetch_add(1, Relaxed);
        }
        async_nats::Event::ClientError(e) => {
            // Once per outage, then at most every ERROR_LOG_EVERY: a server
            // that stays away is retried every few seconds.
            let mut last = lock(&up.error_logged);
            if last.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
                *last = Some(std::time::Instant::now());
                tracing::warn!(urls = ?up.config.urls, error = %e, "upstream: cannot reach a server; retrying");
            }
        }
        e => tracing::warn!(event = %e, "upstream"),
    }
}

/// Least time between two log lines about failing to reach the upstream.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Sends what [`Upstream::export`] queued, in order, while the link is up.
async fn write_loop(state: Arc<State>, up: Arc<Upstream>, client: async_nats::Client) {
    loop {
        let closing = state.shutdown.is_cancelled();
        if let Some(until) = up.held_until().filter(|_| !closing) {
            tokio::select! {
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = state.shutdown.cancelled() => {}
            }
            continue;
        }
        let mut batch = if up.is_up() { up.take() } else { Default::default() };
        if batch.is_empty() {
            if closing {
                return;
            }
            tokio::select! {
                _ = up.wake.notified() => {}
                _ = state.shutdown.cancelled() => {}
            }
            continue;
        }
        while let Some(o) = batch.pop_front() {
            if !up.is_up() {
                batch.push_front(o);
                break;
            }
            let sent = match o.reply {
                Some(reply) => {
                    client
                        .publish_with_reply_and_headers(o.subject, reply, o.headers, o.payload)
                        .await
                }
                None => client.publish_with_headers(o.subject, o.headers, o.payload).await,
            };
            match sent {
                Ok(()) => up.msgs_out.fetch_add(1, Relaxed),
                Err(e) => {
                    tracing::debug!(error = %e, "upstream refused a message");
                    up.dropped.fetch_add(1, Relaxed)
                }
            };
        }
        if !batch.is_empty() {
            up.put_back(batch);
        }
    }
}

/// Keeps one upstream subscription per distinct local interest within
/// `import`, plus one for replies, each read by a `pump`.
async fn interest_loop(state: Arc<State>, up: Arc<Upstream>, client: async_nats::Client) {
    let mut current: HashMap<SubKey, tokio::task::JoinHandle<()>> = HashMap::new();
    let replies = SubKey {
        pattern: format!("{}>", up.own).into(),
        queue: None,
        import: 0,
        shadowed: false,
        reply: true,
    };
    match client.subscribe(replies.pattern.to_string()).await {
        Ok(sub) => {
            let task = tokio::spawn(pump(state.clone(), up.clone(), replies.clone(), sub));
            current.insert(replies, task);
            up.subscriptions.store(1, Relaxed);
        }
        Err(e) => tracing::error!(error = %e, "upstream: cannot subscribe to replies"),
    }
    let mut seen = None;
    let mut tick = tokio::time::interval(INTEREST_EVERY);
    loop {
        tokio::select! {
            _ = up.interest.notified() => {}
            _ = tick.tick() => {}
            _ = state.shutdown.cancelled() => break,
        }
        if seen == Some(state.router.interest_version()) {
            continue;
        }
        let (version, interest) = state.router.interest();
        seen = Some(version);
        let mut wanted: HashMap<SubKey, String> = HashMap::new();
        for i in &interest {
            if mapping::is_reply_interest(&i.pattern) {
                continue;
            }
            for (k, import) in up.config.import.iter().enumerate() {
                let Some(subject) = mapping::meet(&i.pattern, import) else {
                    continue;
                };
                let key = SubKey {
                    pattern: i.pattern.as_str().into(),
                    queue: i.queue.as_deref().map(Into::into),
                    import: k,
                    shadowed: up.config.import[..k]
                        .iter()
                        .any(|e| mapping::meet(e, &subject).is_some()),
                    reply: false,
                };
                wanted.insert(key, subject);
            }
        }
        current.retain(|key, task| {
            let keep = key.reply || wanted.contains_key(key);
            if !keep {
                // Dropping its subscriber unsubscribes upstream.
                task.abort();
            }
            keep
        });
        for (key, subject) in wanted {
            if current.contains_key(&key) {
                continue;
            }
            let sub = match &key.queue {
                Some(q) => client.queue_subscribe(subject, q.to_string()).await,
                None => client.subscribe(subject).await,
            };
            match sub {
                Ok(sub) => {
                    let task = tokio::spawn(pump(state.clone(), up.clone(), key.clone(), sub));
                    current.insert(key, task);
                }
                Err(e) => tracing::warn!(error = %e, pattern = %key.pattern, "upstream: cannot subscribe"),
            }
        }
        up.subscriptions.store(current.len() as u64, Relaxed);
    }
    for task in current.values() {
        task.abort();
    }
}

/// Reads one upstream subscription and delivers what it brings.
async fn pump(state: Arc<State>, up: Arc<Upstream>, key: SubKey, mut sub: async_nats::Subscriber) {
    // The exact routes of its pattern, found again when subscriptions change.
    let mut routes: (u64, Arc<Routes>) = (u64::MAX, Arc::default());
    let mut senders = super::SenderCache::default();
    loop {
        let m = tokio::select! {
            m = sub.next() => m,
            _ = state.shutdown.cancelled() => None,
        };
        let Some(m) = m else { break };
        if !key.reply && !state.cluster.allows(Action::Publish, m.subject.as_str()) {
            continue;
        }
        if !key.reply {
            let generation = state.router.generation();
            if routes.0 != generation {
                routes = (
                    generation,
                    state.router.lookup_exact(&key.pattern, key.queue.as_deref()),
                );
            }
        }
        up.receive(&state.router, &key, &routes.1, &mut senders, &m);
    }
}
