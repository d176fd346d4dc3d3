//! The daemon's log, on stderr through `tracing`, in the form its reader
//! wants (`log_format`): text with ANSI colours only when stderr is a
//! terminal and `NO_COLOR` is unset; for systemd's journal (stderr is the
//! stream `JOURNAL_STREAM` names) no timestamp of our own and the level as
//! a syslog priority prefix (`<6>`), which journald reads; or JSON, one
//! object per line. The level filter is `RUST_LOG` (default `info`, and `warn` for the NATS
//! client, whose link events busd logs itself).

use std::{fmt, io::IsTerminal};

use busd::config::LogFormat;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text if to_journal() => builder
            .with_ansi(false)
            .event_format(Journald(
                tracing_subscriber::fmt::format().without_time().with_level(false),
            ))
            .init(),
        LogFormat::Text => builder.with_ansi(colour()).init(),
    }
}

/// Colours: stderr is a terminal, and `NO_COLOR` is unset or empty.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// True if stderr is the journal stream systemd set up (`JOURNAL_STREAM`
/// holds its device and inode, as `sd_journal_stream_fd` documents): not
/// just inherited by a program whose stderr went elsewhere.
fn to_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().is_ok_and(|d| d == stat.st_dev) && ino.parse::<u64>().is_ok_and(|i| i == stat.st_ino)
}

/// Each line prefixed with the event's syslog priority (`<3>` error,
/// `<4>` warning, `<6>` info, `<7>` debug and trace), then as `F` writes it.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
