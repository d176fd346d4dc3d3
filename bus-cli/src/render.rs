//! Text rendering shared by the commands.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libbus::proto::api::Peer;

/// A payload as text, or as hex when it is not UTF-8.
pub fn payload(p: &[u8]) -> String {
    match std::str::from_utf8(p) {
        Ok(s) => s.strip_suffix('\n').unwrap_or(s).to_owned(),
        Err(_) => {
            let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}")
        }
    }
}

/// `pid 123 uid 1000` for Unix peers, the address for network peers.
pub fn peer(p: &Peer) -> String {
    match p {
        Peer::Unix { pid, uid, .. } => format!("pid {pid} uid {uid}"),
        Peer::Net { addr } => addr.clone(),
    }
}

/// Time elapsed since `unix_ms`, rounded to seconds (`3m 12s`).
pub fn age(unix_ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    duration(Duration::from_secs(now.saturating_sub(unix_ms) / 1000))
}

/// A duration rounded to seconds (`1h 2m 3s`).
pub fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Microseconds as `85µs`, `1.2ms` or `1.5s`.
pub fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us}µs"),
        1_000..1_000_000 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.1}s", us as f64 / 1e6),
    }
}

/// Bytes in binary units (`8.0 MiB`).
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).to_string()
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// Writes command output to stdout. A closed stdout (the reader of a pipe
/// is gone) ends the process with success: the reader has what it wanted.
/// Any other write error ends it with failure.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    or_exit(out.write_fmt(args).and_then(|()| out.flush()));
}

/// Writes `bytes` to stdout as they are (as [`write_stdout`] does).
pub fn write_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    or_exit(out.write_all(bytes).and_then(|()| out.flush()));
}

fn or_exit(written: std::io::Result<()>) {
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}
