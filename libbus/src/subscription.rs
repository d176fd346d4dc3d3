//! `Subscription`: a stream of messages that unsubscribes when dropped.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use std::sync::Arc;

use tokio::sync::{mpsc, Semaphore};

use crate::{client::Batch, codec, message::Found, proto, Bus, Delivery, Message};

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
    /// Permits taken for `found`, returned once it is consumed.
    pub(crate) taken: usize,
    /// The chunk the messages of the last batch lie in (empty once consumed).
    pub(crate) chunk: bytes::Bytes,
    /// The messages of the last batch not yet taken.
    pub(crate) found: std::vec::IntoIter<Found>,
    /// The `Pub` frames of the last `Frames` batch (empty once consumed),
    /// and where the next one starts.
    pub(crate) frames: bytes::Bytes,
    pub(crate) at: usize,
    pub(crate) bus: Bus,
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

    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        loop {
            if let Some(found) = self.found.next() {
                let msg = Message::found_in(&self.chunk, found, &self.bus.shared);
                if self.found.len() == 0 {
                    // The batch is consumed: let go of its chunk (the reader
                    // can reuse it) and make room for the next ones.
                    self.chunk = bytes::Bytes::new();
                    self.space.add_permits(std::mem::take(&mut self.taken));
                }
                return Poll::Ready(Some(Delivery::Message(msg)));
            }
            if let Some(msg) = self.next_in_frames() {
                return Poll::Ready(Some(Delivery::Message(msg)));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Batch::Messages { chunk, found })) => {
                    self.taken = found.len();
                    self.chunk = chunk;
                    self.found = found.into_iter();
                }
                Poll::Ready(Some(Batch::Frames { frames, count })) => {
                    self.taken = count;
                    self.frames = frames;
                    self.at = 0;
                }
                Poll::Ready(Some(Batch::Lagged(n))) => {
                    self.dropped += n;
                    self.space.add_permits(1);
                    return Poll::Ready(Some(Delivery::Lagged(n)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Decodes the next message of the current `Frames` batch, if any; lets
    /// go of the batch once it is consumed.
    fn next_in_frames(&mut self) -> Option<Message> {
        loop {
            let (at, body) = codec::whole_frames(self.frames.get(self.at..)?).next()?;
            let start = self.at + at + proto::LEN_PREFIX;
            self.at = start + body.len();
            let msg = codec::run_msg(body).map(|p| {
                let found = Found::new(start, body, p.subject, p.reply_to, p.payload);
                Message::found_in(&self.frames, found, &self.bus.shared)
            });
            if self.at == self.frames.len() {
                self.frames = bytes::Bytes::new();
                self.at = 0;
                self.space.add_permits(std::mem::take(&mut self.taken));
            }
            match msg {
                Some(msg) => return Some(msg),
                // The daemon validated what it forwards; a frame that is not
                // a well-formed `Pub` is a daemon bug. Skip it, loudly.
                None => tracing::error!(
                    sid = self.sid,
                    "malformed message in a Run from the daemon; skipped"
                ),
            }
        }
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.poll_delivery(cx) {
                Poll::Ready(Some(Delivery::Message(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(Delivery::Lagged(n))) => {
                    tracing::warn!(
                        sid = self.sid,
                        dropped = n,
                        "subscription lagged: messages dropped"
                    );
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
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
        self.bus.shared.unsubscribe(self.sid);
    }
}
