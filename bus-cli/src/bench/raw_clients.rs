//! The daemon's share of the bus path: the same frames as the raw stream,
//! sent through the real `busd` by a publisher and a subscriber that are
//! plain blocking threads (a 64 KiB buffered writer, a 64 KiB buffered
//! reader), not libbus. Set beside the bus figure, it splits the cost of the
//! bus between the daemon and the client library.

use std::{
    io::{BufReader, BufWriter, Write},
    os::unix::net::UnixStream,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use libbus::{
    codec,
    proto::{self, ClientFrame, ServerFrame},
    wire,
};

use super::baseline::{join, read_frame, BUF};

/// Bound on any wait for the daemon.
const TIMEOUT: Duration = Duration::from_secs(10);

fn other(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

fn encode(frame: &ClientFrame<'_>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    codec::encode_into(frame, &mut buf, proto::DEFAULT_MAX_FRAME).map_err(|e| other(e.to_string()))?;
    Ok(buf)
}

/// A handshaken connection to the daemon at `path`: the socket, and a
/// buffered reader on it.
fn connect(path: &Path, name: &str) -> std::io::Result<(UnixStream, BufReader<UnixStream>)> {
    let mut s = UnixStream::connect(path)?;
    libbus::transport::set_send_buffer(&s, super::baseline::SOCKET_BUFFER);
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(&encode(&ClientFrame::Hello(proto::Hello {
        version: proto::PROTOCOL_VERSION,
        name,
        role: proto::Role::Client,
        auth: None,
    }))?)?;
    let mut r = BufReader::with_capacity(BUF, s.try_clone()?);
    let mut body = Vec::new();
    if !read_frame(&mut r, &mut body)? {
        return Err(other("daemon closed the connection during the handshake"));
    }
    match codec::decode::<ServerFrame>(&body) {
        Ok(ServerFrame::Welcome(_)) => Ok((s, r)),
        other_frame => Err(other(format!("expected Welcome, got {other_frame:?}"))),
    }
}

/// Sends `count` copies of `frame` (a `Pub` to `subject`) through the daemon
/// at `path` to one subscriber, keeping at most `window` messages in flight
/// (as the bus workload does, so nothing is dropped). Returns the elapsed
/// time until the subscriber has them all.
pub fn through_daemon(
    path: &Path,
    subject: &str,
    frame: &[u8],
    count: u64,
    window: u64,
) -> std::io::Result<Duration> {
    let (mut sub, mut sub_rx) = connect(path, "bench-raw-sub")?;
    sub.write_all(&encode(&ClientFrame::Sub(proto::Sub {
        sid: 1,
        pattern: subject,
        queue: None,
    }))?)?;
    // The daemon answers a Ping after everything before it: subscribed.
    sub.write_all(&encode(&ClientFrame::Ping)?)?;
    let mut body = Vec::new();
    loop {
        if !read_frame(&mut sub_rx, &mut body)? {
            return Err(other("daemon closed the subscriber"));
        }
        if let Ok(ServerFrame::Pong) = codec::decode::<ServerFrame>(&body) {
            break;
        }
    }
    // The subscriber reports as often as the publisher checks.
    let every = super::workload::check_every(window);
    // Messages the subscriber has received or been told are lost.
    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut got, mut lost) = (0u64, 0u64);
        while got + lost < count {
            if !read_frame(&mut sub_rx, &mut body)? {
                return Err(other("daemon closed the subscriber"));
            }
            let n = match body.first() {
                Some(&wire::MSG_TAG) => 1,
                Some(&wire::RUN_TAG) => {
                    wire::raw_run(&body).map_or(0, |(_, frames)| codec::whole_frames(frames).count() as u64)
                }
                _ => 0,
            };
            if n > 0 {
                if (got + n) / every != got / every {
                    progress.store(got + n + lost, Relaxed);
                }
                got += n;
            } else if let Ok(ServerFrame::Lagged { dropped, .. }) = codec::decode::<ServerFrame>(&body) {
                lost += dropped;
                progress.store(got + lost, Relaxed);
            }
        }
        drop(sub);
        Ok(got)
    });

    let (publisher, _pub_rx) = connect(path, "bench-raw-pub")?;
    let mut w = BufWriter::with_capacity(BUF, publisher);
    let start = Instant::now();
    // A countdown rather than `n % every`: no division per message, as in
    // the bus workload's publisher.
    let mut until_check = 1;
    for n in 0..count {
        w.write_all(frame)?;
        until_check -= 1;
        if until_check > 0 {
            continue;
        }
        until_check = every;
        if n.saturating_sub(received.load(Relaxed)) > window {
            // What is still in our buffer must go out before we wait on it.
            w.flush()?;
            let deadline = Instant::now() + TIMEOUT;
            while n.saturating_sub(received.load(Relaxed)) > window {
                if Instant::now() >= deadline {
                    return Err(other("raw subscriber stopped making progress"));
                }
                std::thread::yield_now();
            }
        }
    }
    w.flush()?;
    let got = join(reader, "raw subscriber")?;
    if got != count {
        return Err(other(format!(
            "raw clients through the daemon: {got} of {count} delivered (raise max_pending)"
        )));
    }
    Ok(start.elapsed())
}
