//! A connection's bounded outbound queue.
//!
//! The queue is a chain of byte chunks holding encoded frames ([`Frames`]): a
//! delivery is written into it as the `Msg` frame the subscriber will read
//! (its `Pub` frame with the subscription id spliced in), straight from the
//! publisher's receive buffer. No per-message allocation, reference count or
//! queue node; the writer swaps the whole chain out and sends it with
//! vectored writes.
//!
//! Publishers' reader tasks push into it and never wait: when the queued bytes
//! (including the batch the writer is still sending) would exceed
//! `max_pending`, the message is dropped and counted per subscription. A
//! `Lagged` notice for a subscription is queued in front of its next message,
//! or as soon as the queue drains, so loss is never silent and the count is
//! exact.

use std::{
    collections::VecDeque,
    io::IoSlice,
    sync::{Mutex, MutexGuard},
};

use bytes::Buf;
use libbus::{codec, proto::ServerFrame};
use tokio::sync::Notify;

/// One published message to deliver: its validated `Pub` frame body (without
/// length prefix), usually borrowed from the publisher's receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct PubFrame<'a> {
    /// The `Pub` frame body.
    pub body: &'a [u8],
    /// Payload bytes within `body`, for the byte counters.
    pub payload_len: u32,
}

impl<'a> PubFrame<'a> {
    /// A validated `Pub` body carrying `payload_len` payload bytes.
    pub fn new(body: &'a [u8], payload_len: usize) -> Self {
        Self {
            body,
            payload_len: payload_len as u32,
        }
    }

    /// Bytes of the `Msg` frame it becomes for `sid`, charged against
    /// `max_pending` while queued.
    pub fn cost(&self, sid: u64) -> usize {
        libbus::proto::msg_from_pub_len(self.body, sid)
    }
}

/// A message that did not arrive as a `Pub` frame (from the daemon itself, or
/// over a bridge), encoded as one.
#[derive(Debug, Clone)]
pub struct Published {
    body: Vec<u8>,
    payload_len: usize,
}

impl Published {
    /// Encodes a message from the daemon itself (events, API replies).
    pub fn from_daemon(subject: &str, payload: &[u8]) -> Self {
        Self::encode(subject, None, payload)
    }

    /// Encodes a message as a `Pub` frame body.
    pub fn encode(subject: &str, reply_to: Option<&str>, payload: &[u8]) -> Self {
        let mut frame = Vec::new();
        let p = libbus::proto::Pub {
            subject,
            reply_to,
            payload,
        };
        if let Err(e) = codec::encode_pub(&p, &mut frame, u32::MAX) {
            tracing::error!("encoding a daemon message on {subject}: {e}");
        }
        frame.drain(..frame.len().min(libbus::proto::LEN_PREFIX));
        Self {
            body: frame,
            payload_len: payload.len(),
        }
    }

    /// The message as a frame to deliver.
    pub fn frame(&self) -> PubFrame<'_> {
        PubFrame::new(&self.body, self.payload_len)
    }
}

/// Slack above `max_pending` for control frames, which are never dropped.
const CONTROL_SLACK: usize = 64 << 10;

/// First chunk of a queue; each next one doubles, up to [`CHUNK`].
const FIRST_CHUNK: usize = 1 << 10;
/// Largest chunk (a larger frame gets a chunk of its own size).
const CHUNK: usize = 64 << 10;

/// Encoded frames in order, in chunks of up to 64 KiB (`CHUNK`), so that a
/// long queue grows without reallocating and copying what it holds, and never
/// holds more than one partly used chunk beyond its contents. As a [`Buf`] it
/// is what the writer sends (several chunks per `writev`).
#[derive(Debug, Default)]
pub struct Frames {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already consumed.
    head: usize,
    /// Bytes not yet consumed.
    len: usize,
    /// One consumed chunk kept for reuse.
    spare: Option<Vec<u8>>,
}

impl Frames {
    /// Appends with `write`, which adds about `need` bytes, to the last chunk
    /// or to a new one if it has no room.
    fn append(&mut self, need: usize, write: impl FnOnce(&mut Vec<u8>)) {
        let fits = self.chunks.back().is_some_and(|c| c.capacity() - c.len() >= need);
        if !fits {
            let size = self
                .chunks
                .back()
                .map_or(FIRST_CHUNK, |c| c.capacity().saturating_mul(2))
                .clamp(FIRST_CHUNK, CHUNK)
                .max(need);
            let chunk = match self.spare.take() {
                Some(spare) if spare.capacity() >= size => spare,
                _ => Vec::with_capacity(size),
            };
            self.chunks.push_back(chunk);
        }
        let last = self.chunks.len() - 1;
        let chunk = &mut self.chunks[last];
        let before = chunk.len();
        write(chunk);
        self.len += chunk.len() - before;
        if chunk.is_empty() {
            // Nothing was written: no empty chunk in the chain.
            self.chunks.pop_back();
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.len
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| &c[self.head..])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.len, "advance past the end of the queue");
        self.len -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front() else { break };
            let rest = front.len() - self.head;
            if cnt < rest {
                self.head += cnt;
                break;
            }
            cnt -= rest;
            self.head = 0;
            if let Some(mut done) = self.chunks.pop_front() {
                if done.capacity() <= CHUNK {
                    done.clear();
                    self.spare = Some(done);
                }
            }
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            let Some(slot) = dst.get_mut(n) else { break };
            let from = if i == 0 { self.head } else { 0 };
            *slot = IoSlice::new(&c[from..]);
            n += 1;
        }
        n
    }
}

/// What the writer took: messages and payload bytes in the batch, for the
/// connection's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// `Msg` frames in the batch.
    pub msgs: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Encoded frames, in order. Allocated on first use.
    frames: Frames,
    /// Counters for the messages in `buf`.
    taken: Taken,
    /// Bytes of the batch the writer took that the socket has not taken yet.
    in_flight: usize,
    /// Drops not yet reported, by sid (few entries; usually none).
    lag: Vec<(u64, u64)>,
    /// Messages dropped over the connection's life.
    dropped_total: u64,
    /// No more items are accepted; the writer exits once drained.
    closed: bool,
}

impl State {
    fn pending(&self) -> usize {
        self.frames.len + self.in_flight
    }

    /// Queues `msg` for `sid` (after any unreported loss of `sid`) if it fits
    /// under `max_pending`; false if it does not.
    fn push_msg(&mut self, sid: u64, msg: PubFrame<'_>, max_pending: usize) -> bool {
        let cost = msg.cost(sid);
        if self.pending() + cost > max_pending {
            return false;
        }
        if let Some(i) = self.lag.iter().position(|(s, _)| *s == sid) {
            let (_, dropped) = self.lag.swap_remove(i);
            self.push_lagged(sid, dropped);
        }
        self.frames.append(cost, |buf| {
            libbus::proto::encode_msg_from_pub(msg.body, sid, buf);
        });
        self.taken.msgs += 1;
        self.taken.bytes += u64::from(msg.payload_len);
        true
    }

    fn push_lagged(&mut self, sid: u64, dropped: u64) {
        self.frames.append(32, |buf| {
            // A small frame of plain integers: encoding cannot fail.
            let _ = codec::encode_into(&ServerFrame::Lagged { sid, dropped }, buf, u32::MAX);
        });
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
    pub fn try_push(&self, sid: u64, msg: PubFrame<'_>) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        let was_empty = st.frames.is_empty();
        let fits = st.push_msg(sid, msg, self.max_pending);
        drop(st);
        if fits && was_empty {
            self.ready.notify_one();
        }
        fits
    }

    /// [`try_push`](Self::try_push) for several messages to `sid` under one
    /// lock; those that do not fit are counted as dropped.
    pub fn push_many<'a>(&self, sid: u64, msgs: impl Iterator<Item = PubFrame<'a>>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        let was_empty = st.frames.is_empty();
        for msg in msgs {
            if !st.push_msg(sid, msg, self.max_pending) {
                st.count_drop(sid);
            }
        }
        let notify = was_empty && !st.frames.is_empty();
        drop(st);
        if notify {
            self.ready.notify_one();
        }
    }

    /// Counts one message for `sid` as dropped.
    pub fn record_drop(&self, sid: u64) {
        self.lock().count_drop(sid);
    }

    /// Queues an encoded control frame. Returns false if even the slack above
    /// the bound is used up: the peer is not reading at all.
    pub fn push_frame(&self, frame: &[u8]) -> bool {
        let mut st = self.lock();
        if st.closed {
            return true;
        }
        if st.pending() + frame.len() > self.max_pending + CONTROL_SLACK {
            return false;
        }
        let was_empty = st.frames.is_empty();
        st.frames.append(frame.len(), |buf| buf.extend_from_slice(frame));
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Swaps everything queued into `batch` (which must be consumed), waiting
    /// while the queue is empty. The batch counts against the bound until
    /// [`sent`](Self::sent). Returns `None` once the queue is closed and drained.
    pub async fn take(&self, batch: &mut Frames) -> Option<Taken> {
        debug_assert!(batch.is_empty());
        loop {
            {
                let mut st = self.lock();
                if st.frames.is_empty() && !st.lag.is_empty() {
                    // Caught up after a gap: report it now rather than with
                    // the next message, which may never come.
                    for (sid, dropped) in std::mem::take(&mut st.lag) {
                        st.push_lagged(sid, dropped);
                    }
                }
                if !st.frames.is_empty() {
                    std::mem::swap(&mut st.frames, batch);
                    st.in_flight = batch.len;
                    return Some(std::mem::take(&mut st.taken));
                }
                if st.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    /// The socket took `n` more bytes of the batch being written: they no
    /// longer count against the bound. (Counting the whole batch until its
    /// last byte is out let a reader that keeps up see drops: with 16 KiB
    /// messages, `bench pubsub` lost a few dozen in 200,000.)
    pub fn wrote(&self, n: usize) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(n);
    }

    /// Stops accepting items; the writer drains what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Drops everything still queued (after the writer gave up).
    pub fn clear(&self) {
        let mut st = self.lock();
        st.frames = Frames::default();
        st.taken = Taken::default();
        st.in_flight = 0;
    }

    /// Bytes queued now, including the batch being written.
    pub fn pending_bytes(&self) -> usize {
        self.lock().pending()
    }

    /// Messages dropped so far.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbus::{codec::Next, proto::LEN_PREFIX};

    /// The rest of the batch being written went out.
    fn sent(ob: &Outbox) {
        ob.wrote(usize::MAX);
    }

    /// What a batch says, frame by frame: (sid, Some(dropped)) for a Lagged
    /// notice, (sid, None) for a message.
    fn frames(batch: &mut Frames) -> Vec<(u64, Option<u64>)> {
        let batch = batch.copy_to_bytes(batch.remaining());
        let mut at = 0;
        let mut out = Vec::new();
        while let Ok(Next::Frame(body)) = codec::next_frame(&batch[at..], u32::MAX) {
            at += LEN_PREFIX + body.len();
            match codec::decode::<ServerFrame>(body).unwrap() {
                ServerFrame::Msg(m) => out.push((m.sid, None)),
                ServerFrame::Lagged { sid, dropped } => out.push((sid, Some(dropped))),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(at, batch.len());
        out
    }

    fn msg(n: usize) -> Published {
        Published::encode("s", None, &vec![0; n])
    }

    #[tokio::test]
    async fn bound_drop_and_lag_in_order() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(1);
        let ob = Outbox::new(2 * cost + cost / 2);
        assert!(ob.try_push(1, m));
        assert!(ob.try_push(1, m));
        assert!(!ob.try_push(1, m));
        ob.record_drop(1);
        assert!(!ob.try_push(1, m));
        ob.record_drop(1);
        assert_eq!(ob.pending_bytes(), 2 * cost);
        assert_eq!(ob.dropped(), 2);

        let mut batch = Frames::default();
        let taken = ob.take(&mut batch).await.unwrap();
        assert_eq!(taken, Taken { msgs: 2, bytes: 60 });
        assert_eq!(frames(&mut batch), [(1, None), (1, None)]);
        // The batch being written still counts against the bound.
        assert!(!ob.try_push(1, m));
        ob.record_drop(1);
        sent(&ob);
        // Queue drained with unreported drops: the notice comes out on its own.
        assert_eq!(ob.take(&mut batch).await, Some(Taken::default()));
        assert_eq!(frames(&mut batch), [(1, Some(3))]);
        sent(&ob);

        // A later drop is reported in front of the next delivery.
        ob.record_drop(1);
        assert!(ob.try_push(1, m));
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(1, Some(1)), (1, None)]);
        sent(&ob);
        ob.close();
        assert_eq!(ob.take(&mut batch).await, None);
        assert_eq!(ob.pending_bytes(), 0);
    }

    #[tokio::test]
    async fn push_many_matches_one_at_a_time() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(7);
        let ob = Outbox::new(2 * cost + cost / 2);
        // Two fit, three are dropped and counted.
        ob.push_many(7, std::iter::repeat_n(m, 5));
        assert_eq!((ob.pending_bytes(), ob.dropped()), (2 * cost, 3));
        let mut batch = Frames::default();
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(7, None), (7, None)]);
        sent(&ob);
        // The loss is reported ahead of the next message that fits.
        ob.push_many(7, std::iter::once(m));
        ob.take(&mut batch).await.unwrap();
        assert_eq!(frames(&mut batch), [(7, Some(3)), (7, None)]);
    }

    #[tokio::test]
    async fn written_bytes_stop_counting_before_the_batch_is_done() {
        let m = msg(30);
        let m = m.frame();
        let cost = m.cost(1);
        let ob = Outbox::new(2 * cost);
        assert!(ob.try_push(1, m));
        assert!(ob.try_push(1, m));
        let mut batch = Frames::default();
        ob.take(&mut batch).await.unwrap();
        // All of it is being written: no room.
        assert!(!ob.try_push(1, m));
        // The socket took the first message: room for one.
        ob.wrote(cost);
        assert!(ob.try_push(1, m));
        assert!(!ob.try_push(1, m));
        assert_eq!(ob.pending_bytes(), 2 * cost);
        ob.wrote(cost);
        sent(&ob);
        assert_eq!(ob.pending_bytes(), cost);
    }

    #[test]
    fn frames_grow_in_chunks_and_read_back_in_order() {
        let mut f = Frames::default();
        let mut expected = Vec::new();
        for i in 0..5000u32 {
            let item = vec![(i % 251) as u8; 1 + (i as usize * 7) % 300];
            expected.extend_from_slice(&item);
            f.append(item.len(), |b| b.extend_from_slice(&item));
        }
        // One frame larger than a chunk gets its own.
        let big = vec![9u8; CHUNK + 1];
        expected.extend_from_slice(&big);
        f.append(big.len(), |b| b.extend_from_slice(&big));
        assert!(f.chunks.len() > 2);
        assert!(f.chunks.iter().all(|c| c.len() <= CHUNK + 1));
        assert_eq!(f.remaining(), expected.len());

        // Read back partly through vectored slices, then by chunk.
        let mut got = Vec::new();
        f.advance(0);
        let first = f.chunk().len() - 3;
        got.extend_from_slice(&f.chunk()[..first]);
        f.advance(first);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = f.chunks_vectored(&mut slices);
        assert_eq!(n, 4);
        let taken: usize = slices.iter().map(|s| s.len()).sum();
        for s in &slices {
            got.extend_from_slice(s);
        }
        f.advance(taken);
        while f.has_remaining() {
            let c = f.chunk().len();
            got.extend_from_slice(f.chunk());
            f.advance(c);
        }
        assert_eq!(got, expected);
        assert!(f.chunks.is_empty() && f.spare.is_some());
    }

    #[tokio::test]
    async fn control_frames_use_the_slack() {
        let m = msg(30);
        let ob = Outbox::new(m.frame().cost(1));
        assert!(ob.try_push(1, m.frame()));
        // Over the bound for messages, still room for a control frame.
        assert!(!ob.try_push(1, m.frame()));
        assert!(ob.push_frame(&[0; 100]));
        assert!(!ob.push_frame(&vec![0; CONTROL_SLACK]));
    }
}
