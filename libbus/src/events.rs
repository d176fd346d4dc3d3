//! Connection events: what happened to a [`Bus`](crate::Bus)'s link to the
//! daemon, as a stream (like the `connect` / `close` / `error` events of a
//! Node.js socket).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::broadcast;
use tokio_util::sync::ReusableBoxFuture;

/// Something that happened to the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Connected (the first event of a stream made while connected).
    Connected {
        /// Connection id in the daemon.
        conn_id: u64,
    },
    /// The link to the daemon was lost; libbus is reconnecting (if enabled).
    /// In-flight requests have failed; publishes are buffered.
    Disconnected {
        /// What ended the link.
        reason: String,
    },
    /// The link is back and every live subscription was re-sent.
    Reconnected {
        /// The new connection id.
        conn_id: u64,
        /// Connection attempts it took.
        attempts: u32,
    },
    /// The daemon dropped messages for a subscription that fell behind.
    Lagged {
        /// The subscription's pattern.
        subject: String,
        /// Messages dropped since the last notice.
        dropped: u64,
    },
    /// The daemon reported an error: a refusal that leaves the connection
    /// open (a publish or subscription the access policy denies, a limit;
    /// a subscription a reloaded policy denies ends with this), or the
    /// reason it is about to close it (then `Disconnected` or `Closed`
    /// follows).
    Error {
        /// What kind of error.
        code: crate::proto::ErrorCode,
        /// The daemon's message: what was refused, and by which rule or limit.
        message: String,
    },
    /// The connection ended for good (closed, reconnecting disabled or given
    /// up, or refused permanently). The last event of every stream.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Events of one [`Bus`](crate::Bus), from [`Bus::events`](crate::Bus::events).
///
/// It starts with the state at the time it was made (`Connected`,
/// `Disconnected` or `Closed`), then yields every change. It ends after
/// `Closed`. A stream that falls more than 256 events behind skips the
/// oldest ones (logged).
pub struct Events {
    first: Option<Event>,
    next: ReusableBoxFuture<'static, (Option<Event>, broadcast::Receiver<Event>)>,
    ended: bool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").field("ended", &self.ended).finish()
    }
}

async fn recv(mut rx: broadcast::Receiver<Event>) -> (Option<Event>, broadcast::Receiver<Event>) {
    loop {
        match rx.recv().await {
            Ok(e) => return (Some(e), rx),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(skipped = n, "bus event stream fell behind");
            }
            Err(broadcast::error::RecvError::Closed) => return (None, rx),
        }
    }
}

impl Events {
    pub(crate) fn new(current: Event, rx: broadcast::Receiver<Event>) -> Self {
        let ended = false;
        Self {
            first: Some(current),
            next: ReusableBoxFuture::new(recv(rx)),
            ended,
        }
    }

    /// The next event; `None` after `Closed`.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let event = match self.first.take() {
            Some(e) => Some(e),
            None => {
                let (event, rx) = std::task::ready!(self.next.poll(cx));
                self.next.set(recv(rx));
                event
            }
        };
        if matches!(event, None | Some(Event::Closed { .. })) {
            self.ended = true;
        }
        Poll::Ready(event)
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}
