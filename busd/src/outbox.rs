//! A connection's bounded outbound queue.
//!
//! Publishers' reader tasks push into it and never wait: when the queued bytes
//! would exceed `max_pending`, the message is dropped and counted per
//! subscription. The connection's writer task takes batches out. A `Lagged`
//! notice for a subscription is queued in front of its next message, or as
//! soon as the queue drains, so loss is never silent and the count is exact.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use bytes::Bytes;
use tokio::sync::Notify;

/// One published message: an exact-size copy of its validated `Pub` frame
/// body, shared (one allocation, reference-counted) by every subscriber it is
/// delivered to. The writer turns it into a `Msg` frame by splicing in the
/// subscription id ([`libbus::proto::encode_msg_from_pub`]).
#[derive(Debug, Clone)]
pub struct Published {
    /// The `Pub` frame body, without length prefix.
    pub body: Arc<[u8]>,
    /// Payload bytes within `body`, for the byte counters.
    pub payload_len: u32,
}

impl Published {
    /// Copies a validated `Pub` body.
    pub fn new(body: &[u8], payload_len: usize) -> Self {
        Self {
            body: body.into(),
            payload_len: payload_len as u32,
        }
    }

    /// Encodes a message from the daemon itself (events, API replies).
    pub fn from_daemon(subject: &str, payload: &[u8]) -> Self {
        Self::encode(subject, None, payload)
    }

    /// Encodes a message that did not arrive as a `Pub` frame (from the
    /// daemon itself, or over a bridge).
    pub fn encode(subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Self {
        let mut frame = Vec::new();
        let p = libbus::proto::ClientFrame::Pub(libbus::proto::Pub {
            subject,
            reply_to,
            payload,
        });
        if let Err(e) = libbus::codec::encode_into(&p, &mut frame, u32::MAX) {
            tracing::error!("encoding a daemon message on {subject}: {e}");
        }
        Self::new(
            frame.get(libbus::proto::LEN_PREFIX..).unwrap_or_default(),
            payload.len(),
        )
    }

    /// Bytes charged against `max_pending` while queued: the frame it becomes.
    pub fn cost(&self) -> usize {
        self.body.len() + 16
    }
}

/// Something for the writer to send.
#[derive(Debug)]
pub enum OutItem {
    /// A delivery to subscription `sid`.
    Msg {
        /// Subscription id.
        sid: u64,
        /// The shared message.
        msg: Published,
    },
    /// `dropped` messages for `sid` were lost.
    Lagged {
        /// Subscription id.
        sid: u64,
        /// How many.
        dropped: u64,
    },
    /// An encoded control frame (Welcome, Ping, Pong, Error, NoResponders).
    Frame(Bytes),
}

impl OutItem {
    /// Bytes charged against `max_pending` while queued.
    fn cost(&self) -> usize {
        match self {
            OutItem::Msg { msg, .. } => msg.cost(),
            OutItem::Frame(f) => f.len(),
            OutItem::Lagged { .. } => 0,
        }
    }
}

/// Slack above `max_pending` for control frames, which are never dropped.
const CONTROL_SLACK: usize = 64 << 10;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<OutItem>,
    /// Bytes charged for `items`.
    bytes: usize,
    /// Drops not yet reported, by sid (few entries; usually none).
    lag: Vec<(u64, u64)>,
    /// Messages dropped over the connection's life.
    dropped_total: u64,
    /// No more items are accepted; the writer exits once drained.
    closed: bool,
}

impl State {
    /// Queues `msg` for `sid` (after any unreported loss of `sid`) if it fits
    /// under `max_pending`; false if it does not.
    fn push_msg(&mut self, sid: u64, msg: &Published, max_pending: usize) -> bool {
        let cost = msg.cost();
        if self.bytes + cost > max_pending {
            return false;
        }
        if let Some(i) = self.lag.iter().position(|(s, _)| *s == sid) {
            let (_, dropped) = self.lag.swap_remove(i);
            self.items.push_back(OutItem::Lagged { sid, dropped });
        }
        self.items.push_back(OutItem::Msg {
            sid,
            msg: msg.clone(),
        });
        self.bytes += cost;
        true
    }

    /// Counts one message for `sid` as dropped, to be reported.
    fn count_drop(&mut self, sid: u64) {
        self.dropped_total += 1;
        match self.lag.iter_mut().find(|(s, _)| *s == sid) {
            Some((_, n)) => *n += 1,
            None => self.lag.push((sid, 1)),
        }
    }
}

/// The queue. One per connection, shared by the router and the writer.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_pending: usize,
}

impl Outbox {
    /// An empty queue bounded at `max_pending` bytes.
    pub fn new(max_pending: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            max_pending,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a delivery unless that would pass the bound. Returns false when
    /// it did not fit (the caller decides whom to charge the drop to).
    pub fn try_push(&self, sid: u64, msg: &Published) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        let was_empty = st.items.is_empty();
        let fits = st.push_msg(sid, msg, self.max_pending);
        drop(st);
        if fits && was_empty {
            self.ready.notify_one();
        }
        fits
    }

    /// [`try_push`](Self::try_push) for several messages to `sid` under one
    /// lock; those that do not fit are counted as dropped.
    pub fn push_many<'a>(&self, sid: u64, msgs: impl Iterator<Item = &'a Published>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let was_empty = st.items.is_empty();
        for msg in msgs {
            if !st.push_msg(sid, msg, self.max_pending) {
                st.count_drop(sid);
            }
        }
        let notify = was_empty && !st.items.is_empty();
        drop(st);
        if notify {
            self.ready.notify_one();
        }
    }

    /// Counts one message for `sid` as dropped.
    pub fn record_drop(&self, sid: u64) {
        self.lock().count_drop(sid);
    }

    /// Queues a control frame. Returns false if even the slack above the bound
    /// is used up: the peer is not reading at all.
    pub fn push_frame(&self, frame: Bytes) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        if st.bytes + frame.len() > self.max_pending + CONTROL_SLACK {
            return false;
        }
        let was_empty = st.items.is_empty();
        st.bytes += frame.len();
        st.items.push_back(OutItem::Frame(frame));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Moves up to about `max_bytes` worth of items into `batch`, waiting while
    /// the queue is empty. Returns false once the queue is closed and drained.
    pub async fn take_batch(&self, batch: &mut Vec<OutItem>, max_bytes: usize) -> bool {
        loop {
            {
                let mut st = self.lock();
                if st.items.is_empty() && !st.lag.is_empty() {
                    // Caught up after a gap: report it now rather than with
                    // the next message, which may never come.
                    let lag = std::mem::take(&mut st.lag);
                    st.items.extend(
                        lag.into_iter()
                            .map(|(sid, dropped)| OutItem::Lagged { sid, dropped }),
                    );
                }
                if !st.items.is_empty() {
                    let mut taken = 0;
                    while taken < max_bytes {
                        let Some(item) = st.items.pop_front() else { break };
                        let cost = item.cost();
                        st.bytes -= cost;
                        taken += cost.max(1);
                        batch.push(item);
                    }
                    return true;
                }
                if st.closed {
                    return false;
                }
            }
            self.ready.notified().await;
        }
    }

    /// Stops accepting items; the writer drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Drops everything still queued (after the writer gave up).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.items.clear();
        st.bytes = 0;
    }

    /// Bytes queued now.
    pub fn pending_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> Published {
        Published::new(&vec![0; n], n)
    }

    #[tokio::test]
    async fn bound_drop_and_lag_in_order() {
        let ob = Outbox::new(100);
        let m = msg(40 - 16); // cost 40
        assert!(ob.try_push(1, &m));
        assert!(ob.try_push(1, &m));
        assert!(!ob.try_push(1, &m));
        ob.record_drop(1);
        assert!(!ob.try_push(1, &m));
        ob.record_drop(1);
        assert_eq!(ob.pending_bytes(), 80);
        assert_eq!(ob.dropped(), 2);

        let mut batch = Vec::new();
        assert!(ob.take_batch(&mut batch, 1 << 20).await);
        assert_eq!(batch.len(), 2);
        batch.clear();
        // Queue drained with unreported drops: the notice comes out on its own.
        assert!(ob.take_batch(&mut batch, 1 << 20).await);
        assert!(matches!(batch[..], [OutItem::Lagged { sid: 1, dropped: 2 }]));
        batch.clear();

        // A later drop is reported in front of the next delivery.
        ob.record_drop(1);
        assert!(ob.try_push(1, &m));
        assert!(ob.take_batch(&mut batch, 1 << 20).await);
        assert!(matches!(
            batch[..],
            [
                OutItem::Lagged { sid: 1, dropped: 1 },
                OutItem::Msg { sid: 1, .. }
            ]
        ));
        ob.close();
        batch.clear();
        assert!(!ob.take_batch(&mut batch, 1 << 20).await);
    }

    #[tokio::test]
    async fn push_many_matches_one_at_a_time() {
        let m = msg(40 - 16); // cost 40
        let ob = Outbox::new(100);
        // Two fit, three are dropped and counted.
        ob.push_many(7, std::iter::repeat_n(&m, 5));
        assert_eq!((ob.pending_bytes(), ob.dropped()), (80, 3));
        let mut batch = Vec::new();
        assert!(ob.take_batch(&mut batch, 1 << 20).await);
        assert!(matches!(
            batch[..],
            [OutItem::Msg { sid: 7, .. }, OutItem::Msg { sid: 7, .. }]
        ));
        batch.clear();
        // The loss is reported ahead of the next message that fits.
        ob.push_many(7, std::iter::once(&m));
        assert!(ob.take_batch(&mut batch, 1 << 20).await);
        assert!(matches!(
            batch[..],
            [
                OutItem::Lagged { sid: 7, dropped: 3 },
                OutItem::Msg { sid: 7, .. }
            ]
        ));
    }
}
