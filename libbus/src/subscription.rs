//! `Subscription`: a stream of messages that unsubscribes when dropped.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::mpsc;

use crate::{Bus, Delivery, Message};

/// Messages matching one pattern, in the order the daemon delivered them.
///
/// It is a [`Stream`](futures_core::Stream) of [`Message`]; [`next_delivery`](Self::next_delivery)
/// also shows [`Delivery::Lagged`] notices, which the stream only counts in
/// [`dropped`](Self::dropped). Dropping it unsubscribes (no task is spawned).
///
/// While a subscription's buffer (`ConnectOptions::subscription_capacity`) is
/// full, the connection stops reading: the daemon then queues for it up to its
/// `max_pending` bound and drops (and reports) beyond that.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) sid: u64,
    pub(crate) rx: mpsc::Receiver<Delivery>,
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
        let d = self.rx.recv().await;
        if let Some(Delivery::Lagged(n)) = d {
            self.dropped += n;
        }
        d
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Delivery::Message(m))) => return Poll::Ready(Some(m)),
                Poll::Ready(Some(Delivery::Lagged(n))) => {
                    self.dropped += n;
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
        self.bus.shared.unsubscribe(self.sid);
    }
}
