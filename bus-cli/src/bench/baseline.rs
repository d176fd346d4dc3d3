//! The physical-limit reference: the same frames over a raw Unix socket
//! between two threads, no daemon. One stream through a 64 KiB buffered writer
//! read as fast as the reader drains it, and one frame bounced back and forth;
//! each also through a relay thread, the floor of any brokered path.
//! The sockets get the send buffer the bus's own sockets get
//! ([`SOCKET_BUFFER`]), so the bus gains nothing the baseline lacks.

use std::{
    io::{BufReader, BufWriter, Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use super::Latency;

/// Buffer of each raw writer and reader.
pub(super) const BUF: usize = 64 << 10;

/// The send buffer of every raw socket: libbus's and busd's default.
pub(super) const SOCKET_BUFFER: usize = libbus::transport::DEFAULT_SOCKET_BUFFER;

/// A connected pair of Unix sockets with [`SOCKET_BUFFER`].
fn pair() -> std::io::Result<(UnixStream, UnixStream)> {
    let (a, b) = UnixStream::pair()?;
    libbus::transport::set_send_buffer(&a, SOCKET_BUFFER);
    libbus::transport::set_send_buffer(&b, SOCKET_BUFFER);
    Ok((a, b))
}

/// Reads one length-prefixed frame into `body`; false at end of stream.
pub(super) fn read_frame(r: &mut impl Read, body: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(false)
        } else {
            Err(e)
        };
    }
    body.resize(u32::from_le_bytes(len) as usize, 0);
    r.read_exact(body)?;
    Ok(true)
}

/// Counts the frames arriving on `rx` until end of stream, on a new thread.
fn spawn_counter(rx: UnixStream) -> std::thread::JoinHandle<std::io::Result<u64>> {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(BUF, rx);
        let mut body = Vec::new();
        let mut n = 0;
        while read_frame(&mut r, &mut body)? {
            n += 1;
        }
        Ok(n)
    })
}

/// Writes `count` copies of `frame` through a 64 KiB buffer, then closes `tx`.
fn write_frames(tx: UnixStream, frame: &[u8], count: u64) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(BUF, tx);
    for _ in 0..count {
        w.write_all(frame)?;
    }
    w.flush()
}

pub(super) fn join<T>(h: std::thread::JoinHandle<std::io::Result<T>>, what: &str) -> std::io::Result<T> {
    h.join()
        .map_err(|_| std::io::Error::other(format!("{what} thread panicked")))?
}

fn check_count(got: u64, count: u64, what: &str) -> std::io::Result<()> {
    if got == count {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{what} delivered {got} of {count} frames"
        )))
    }
}

/// Streams `count` copies of `frame` (length prefix included) from one thread
/// to another; returns the elapsed time until the reader has them all.
pub fn stream(frame: &[u8], count: u64) -> std::io::Result<Duration> {
    let (tx, rx) = pair()?;
    let start = Instant::now();
    let reader = spawn_counter(rx);
    write_frames(tx, frame, count)?;
    check_count(join(reader, "reader")?, count, "raw stream")?;
    Ok(start.elapsed())
}

/// Like [`stream`], but through a relay thread that forwards the bytes
/// unparsed (writer → relay → reader): two socket transits per frame, as
/// through any broker, with no work done in between. The floor of a brokered
/// path on this machine.
pub fn relay(frame: &[u8], count: u64) -> std::io::Result<Duration> {
    let (tx, mut relay_in) = pair()?;
    let (mut relay_out, rx) = pair()?;
    let start = Instant::now();
    let relay = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; BUF];
        loop {
            let n = relay_in.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            relay_out.write_all(&buf[..n])?;
        }
    });
    let reader = spawn_counter(rx);
    write_frames(tx, frame, count)?;
    join(relay, "relay")?;
    check_count(join(reader, "reader")?, count, "relay")?;
    Ok(start.elapsed())
}

/// Runs `run` (a stream) with growing counts until one run lasts at least `min`
/// (at most 2^30 frames). Returns that run's frame count and elapsed time,
/// and the frames of all runs (for CPU time per frame). The first run
/// moves about 64 MiB (10 to 100,000 frames), so large frames start small.
pub fn long_enough(
    run: impl Fn(&[u8], u64) -> std::io::Result<Duration>,
    frame: &[u8],
    min: Duration,
) -> std::io::Result<(u64, Duration, u64)> {
    let mut count = ((64 << 20) / frame.len().max(1) as u64).clamp(10, 100_000);
    let mut total = 0;
    loop {
        let elapsed = run(frame, count)?;
        total += count;
        if elapsed >= min || count >= 1 << 30 {
            return Ok((count, elapsed, total));
        }
        // Aim past `min` next time, growing at least 2x.
        let scale = (min.as_secs_f64() * 1.5 / elapsed.as_secs_f64().max(1e-6)).max(2.0);
        count = ((count as f64 * scale) as u64).min(1 << 30);
    }
}

/// Bounces `frame` between two threads `count` times; returns the round
/// trips. Two socket transits per round trip.
pub fn ping_pong(frame: &[u8], count: u64) -> std::io::Result<(Duration, Latency)> {
    let (a, b) = pair()?;
    let echo = std::thread::spawn(move || echo(b));
    let result = bounce(a, frame, count);
    join(echo, "echo")?;
    result
}

/// Like [`ping_pong`], but through a relay that forwards the bytes unparsed
/// both ways (requester → relay → echo → relay → requester): the four socket
/// transits any brokered round trip needs, with no work in between.
pub fn relay_ping_pong(frame: &[u8], count: u64) -> std::io::Result<(Duration, Latency)> {
    let (a, relay_near) = pair()?;
    let (relay_far, b) = pair()?;
    let forward = |from: UnixStream, to: UnixStream| {
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut from, mut to) = (from, to);
            let mut buf = vec![0u8; BUF];
            loop {
                let n = from.read(&mut buf)?;
                if n == 0 {
                    // Pass the end on; the other side may be gone already.
                    let _ = to.shutdown(std::net::Shutdown::Write);
                    return Ok(());
                }
                to.write_all(&buf[..n])?;
            }
        })
    };
    let there = forward(relay_near.try_clone()?, relay_far.try_clone()?);
    let back = forward(relay_far, relay_near);
    let echo = std::thread::spawn(move || echo(b));
    let result = bounce(a, frame, count);
    join(there, "relay")?;
    join(echo, "echo")?;
    join(back, "relay")?;
    result
}

/// Answers every frame on `b` with the same frame, in one write, until the
/// other side closes.
fn echo(b: UnixStream) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(BUF, b.try_clone()?);
    let mut w = b;
    let mut body = Vec::new();
    let mut out = Vec::new();
    while read_frame(&mut r, &mut body)? {
        out.clear();
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        w.write_all(&out)?;
    }
    Ok(())
}

/// Sends `frame` on `a` and waits for it to come back, `count` times, then
/// closes `a`; returns the elapsed time and the round trips.
fn bounce(a: UnixStream, frame: &[u8], count: u64) -> std::io::Result<(Duration, Latency)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(std::io::Error::other)?;
    let mut r = BufReader::with_capacity(BUF, a.try_clone()?);
    let mut w = a;
    let mut body = Vec::new();
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        w.write_all(frame)?;
        if !read_frame(&mut r, &mut body)? {
            return Err(std::io::Error::other("echo closed early"));
        }
        let _ = hist.record(t.elapsed().as_nanos().max(1) as u64);
    }
    let elapsed = start.elapsed();
    w.shutdown(std::net::Shutdown::Both)?;
    Ok((elapsed, Latency::from(&hist)))
}
