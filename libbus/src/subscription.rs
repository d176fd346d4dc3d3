//! `Subscription`: a stream of messages that unsubscribes when dropped.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::{
    input::Batch,
    session::{Handle, Shared},
    Delivery, Message, Messages,
};

/// Messages matching one pattern, in the order the daemon delivered them.
///
/// It is a [`Stream`](futures_core::Stream) of [`Message`]; [`next_delivery`](Self::next_delivery)
/// also shows [`Delivery::Lagged`] notices, which the stream only counts in
/// [`dropped`](Self::dropped). Dropping it unsubscribes (no task is spawned).
///
/// Deliveries arrive in batches (one per socket read). While a subscription
/// holds `ConnectOptions::subscription_capacity` deliveries it has not
/// consumed, the connection stops reading: the daemon then queues for it up
/// to its `max_pending` bound and drops (and reports) beyond that.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) sid: u64,
    pub(crate) rx: mpsc::UnboundedReceiver<Batch>,
    /// Room for deliveries (see `SubEntry::space`).
    pub(crate) space: Arc<Semaphore>,
    /// Permits taken for `current`, returned once it is consumed.
    pub(crate) taken: usize,
    /// What is left of the last batch handed over.
    pub(crate) current: Messages,
    pub(crate) shared: Arc<Shared>,
    /// Keeps the connection open while the subscription lives.
    pub(crate) _handle: Arc<Handle>,
    pub(crate) dropped: u64,
}

impl Subscription {
    /// The subscription id on the wire, as shown by `bus-cli list`.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// Messages the daemon reported dropped for this subscription so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next message; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.poll_message(cx)).await
    }

    /// The next message or loss notice; `None` once the connection is closed.
    pub async fn next_delivery(&mut self) -> Option<Delivery> {
        std::future::poll_fn(|cx| self.poll_delivery(cx)).await
    }

    /// Everything received and not yet taken, at once (waiting for at least
    /// one message); `None` once the connection is closed. Loss notices are
    /// logged and counted in [`dropped`](Self::dropped), as with
    /// [`next`](Self::next).
    ///
    /// For consumers of many small messages: the batch takes one reference
    /// on the receive buffer, where [`next`](Self::next) takes one per
    /// message, and its messages are read in place ([`MessageRef`](crate::MessageRef)).
    ///
    /// A message with file descriptors comes as a batch of its own, without
    /// them (they are closed, and a warning logged): take such messages with
    /// [`next`](Self::next) to keep their descriptors.
    ///
    /// ```no_run
    /// # async fn f(mut sub: libbus::Subscription) {
    /// while let Some(batch) = sub.next_batch().await {
    ///     for msg in &batch {
    ///         println!("{}: {} bytes", msg.subject(), msg.payload().len());
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next_batch(&mut self) -> Option<Messages> {
        std::future::poll_fn(|cx| self.poll_batch(cx)).await
    }

    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Messages>> {
        loop {
            if !self.current.is_empty() {
                let batch = std::mem::take(&mut self.current);
                self.release();
                return Poll::Ready(Some(batch));
            }
            match ready!(self.poll_received(cx)) {
                Received::Batch => {}
                Received::One(m) => {
                    if m.fd_count() > 0 {
                        tracing::warn!(
                            sid = self.sid,
                            fds = m.fd_count(),
                            "a message with file descriptors taken by next_batch: its descriptors are closed"
                        );
                    }
                    return Poll::Ready(Some(m.as_batch()));
                }
                Received::Lagged(n) => self.warn_lagged(n),
                Received::Closed => return Poll::Ready(None),
            }
        }
    }

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if let Some(found) = self.current.take() {
                let msg = Message::found_in(self.current.chunk(), found, &self.shared.output);
                if self.current.is_empty() {
                    self.release();
                }
                return Poll::Ready(Some(Delivery::Message(msg)));
            }
            // Consumed (or only malformed frames were left).
            self.release();
            match ready!(self.poll_received(cx)) {
                Received::Batch => {}
                Received::One(m) => return Poll::Ready(Some(Delivery::Message(m))),
                Received::Lagged(n) => return Poll::Ready(Some(Delivery::Lagged(n))),
                Received::Closed => return Poll::Ready(None),
            }
        }
    }

    /// Takes what the reader handed over next: a batch becomes `current`.
    fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<Received> {
        Poll::Ready(match ready!(self.rx.poll_recv(cx)) {
            Some(Batch::Messages(m)) => {
                self.taken = m.len();
                self.current = m;
                Received::Batch
            }
            Some(Batch::One(m)) => {
                self.space.add_permits(1);
                Received::One(m)
            }
            Some(Batch::Lagged(n)) => {
                self.dropped += n;
                self.space.add_permits(1);
                Received::Lagged(n)
            }
            None => Received::Closed,
        })
    }

    /// Lets go of the consumed batch: makes room for the next ones.
    fn release(&mut self) {
        self.space.add_permits(std::mem::take(&mut self.taken));
    }

    fn warn_lagged(&self, dropped: u64) {
        tracing::warn!(sid = self.sid, dropped, "subscription lagged: messages dropped");
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.poll_delivery(cx) {
                Poll::Ready(Some(Delivery::Message(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(Delivery::Lagged(n))) => self.warn_lagged(n),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// What [`Subscription::poll_received`] took.
enum Received {
    /// A batch, now `current`.
    Batch,
    /// A message with file descriptors.
    One(Message),
    /// A loss notice (already counted).
    Lagged(u64),
    /// The connection is closed.
    Closed,
}

impl futures_core::Stream for Subscription {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_message(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A reader waiting for room gives up on this subscription.
        self.space.close();
        self.shared.input.unsubscribe(&self.shared.output, self.sid);
    }
}
