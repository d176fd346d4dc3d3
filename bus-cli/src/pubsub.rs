//! `send`, `sub`, `request`, `reply`, `call` and `monitor`.

use std::{io::Read, time::Duration};

use libbus::{
    names::NameEvent,
    proto::api::{self, ConnEvent},
    Bus, Delivery, Event, Headers, Message, Name, NameFlags, NameReply, NameState, Subscription,
};

use crate::render;

/// The payload argument, or stdin when it is absent or "-".
fn payload(arg: Option<String>) -> libbus::Result<Vec<u8>> {
    match arg.as_deref() {
        Some(p) if p != "-" => Ok(p.as_bytes().to_vec()),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            Ok(buf)
        }
    }
}

/// `-H NAME=VALUE`, split at the first `=`.
pub fn parse_header(arg: &str) -> Result<(String, String), String> {
    let (name, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=VALUE, got {arg:?}"))?;
    // Checked here, so a bad one is named before anything is sent.
    Headers::from_iter([(name, value)])
        .encode()
        .map_err(|e| e.to_string())?;
    Ok((name.to_owned(), value.to_owned()))
}

/// Publishes one message; with `fds`, those files opened read-only go with it.
pub async fn send(
    bus: &Bus,
    subject: &str,
    arg: Option<String>,
    headers: Headers,
    fds: &[std::path::PathBuf],
) -> libbus::Result<()> {
    let mut events = bus.events();
    if fds.is_empty() {
        bus.publish_with_headers(subject, &headers, payload(arg)?).await?;
    } else {
        let files = fds
            .iter()
            .map(|path| {
                std::fs::File::open(path)
                    .map(std::os::fd::OwnedFd::from)
                    .map_err(|e| {
                        libbus::Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
                    })
            })
            .collect::<libbus::Result<Vec<_>>>()?;
        bus.publish_with_headers_and_fds(subject, &headers, payload(arg)?, files)
            .await?;
    }
    refused(bus, &mut events).await
}

/// After publishing: a round trip to the daemon, which answers in order,
/// so an error it reported for what was published (a denied subject, a
/// limit) has arrived; that error, if any.
async fn refused(bus: &Bus, events: &mut libbus::Events) -> libbus::Result<()> {
    // A flush waits for the daemon's answer to a ping.
    bus.flush().await?;
    match last_error(events).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The last error the daemon reported among the events already there.
async fn last_error(events: &mut libbus::Events) -> Option<libbus::Error> {
    let mut last = None;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::ZERO, events.next()).await {
        if let libbus::Event::Error { code, message } = event {
            last = Some(libbus::Error::Server { code, message });
        }
    }
    last
}

pub async fn request(
    bus: &Bus,
    subject: &str,
    arg: Option<String>,
    timeout: Duration,
    headers: Headers,
) -> libbus::Result<()> {
    let reply = bus
        .request_with_headers(subject, &headers, payload(arg)?, timeout)
        .await?;
    outln!("{}", render::payload(reply.payload()));
    Ok(())
}

/// Publishes each line of stdin (without its newline) as a message.
pub async fn send_lines(bus: &Bus, subject: &str, headers: Headers) -> libbus::Result<()> {
    use std::io::BufRead;
    // Lines of bytes: a payload need not be UTF-8.
    let mut events = bus.events();
    for line in std::io::stdin().lock().split(b'\n') {
        bus.publish_with_headers(subject, &headers, line?).await?;
    }
    refused(bus, &mut events).await
}

/// How `sub` prints each message.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format {
    /// Headers under the message line.
    pub headers: bool,
    /// Payload only, as it came.
    pub raw: bool,
    /// One JSON object per message.
    pub json: bool,
    /// Arrival time first.
    pub timestamps: bool,
}

impl Format {
    fn print(&self, m: &Message) {
        let stamp = || humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        if self.raw {
            if self.timestamps {
                render::write_stdout(format_args!("{} ", stamp()));
            }
            render::write_bytes(m.payload());
            render::write_stdout(format_args!("\n"));
        } else if self.json {
            let mut record = serde_json::json!({
                "subject": m.subject(),
                "reply": m.reply_to(),
                "headers": m.headers().iter().collect::<Vec<_>>(),
            });
            match std::str::from_utf8(m.payload()) {
                Ok(text) => record["payload"] = text.into(),
                Err(_) => {
                    use base64::Engine;
                    record["payload_base64"] = base64::engine::general_purpose::STANDARD
                        .encode(m.payload())
                        .into();
                }
            }
            if let Some(sender) = m.sender() {
                record["sender"] = serde_json::to_value(sender).unwrap_or_default();
            }
            if m.fd_count() > 0 {
                record["fds"] = m.fd_count().into();
            }
            if self.timestamps {
                record["time"] = stamp().into();
            }
            outln!("{record}");
        } else {
            match self.timestamps {
                true => outln!("{} {}", stamp(), line(m)),
                false => outln!("{}", line(m)),
            }
            if self.headers {
                for (name, value) in m.headers().iter() {
                    outln!("  {name}: {value}");
                }
            }
            if m.fd_count() > 0 {
                outln!("  fd: {} attached", m.fd_count());
            }
        }
    }
}

/// Serves requests on `subject`: each answered with its own payload
/// (`command` unset) or with what `command` prints given the payload on its
/// stdin; a failing command answers with an error.
/// What `reply` serves.
pub enum Serve {
    /// Requests on a subject (or pattern), optionally in a queue group.
    Subject(String, Option<String>),
    /// Calls to a well-known name, asked for with these flags.
    Name(String, NameFlags),
}

pub async fn reply(bus: &Bus, serve: Serve, command: Option<&str>, count: Option<u64>) -> libbus::Result<()> {
    let mut source = match serve {
        Serve::Subject(subject, queue) => {
            let sub = match queue {
                Some(q) => bus.queue_subscribe(&subject, &q).await?,
                None => bus.subscribe(&subject).await?,
            };
            eprintln!("serving requests on {subject} (Ctrl-C to stop)");
            Requests::Subject(sub)
        }
        Serve::Name(name, flags) => {
            // Where it stands comes as its first change of state.
            let owned = bus.request_name(&name, flags).await?;
            let reply = owned.reply();
            if !matches!(reply, NameReply::PrimaryOwner | NameReply::InQueue) {
                return Err(libbus::Error::Protocol(format!("cannot serve {name}: {reply:?}")));
            }
            Requests::Name(owned)
        }
    };
    report_link_changes(bus);
    let mut served = 0;
    while count.is_none_or(|n| served < n) {
        let Some(req) = source.next().await else {
            return Err(bus.disconnected_error());
        };
        if req.reply_to().is_none() {
            continue; // a plain message: nothing to answer
        }
        match command {
            None => req.respond_with_headers(&req.headers(), req.payload()).await?,
            Some(cmd) => match run_command(cmd, req.payload()).await {
                Ok(out) => req.respond(out).await?,
                Err((code, text)) => req.respond_error(code, &text).await?,
            },
        }
        served += 1;
    }
    Ok(())
}

/// Where `reply` takes requests from.
enum Requests {
    Subject(Subscription),
    Name(Name),
}

impl Requests {
    /// The next request; changes of a name's standing are reported on
    /// stderr meanwhile.
    async fn next(&mut self) -> Option<Message> {
        match self {
            Self::Subject(sub) => sub.next().await,
            Self::Name(name) => loop {
                match name.next_event().await? {
                    NameEvent::Call(call) => return Some(call),
                    NameEvent::State(state) => {
                        let n = name.name();
                        match state {
                            NameState::Primary => {
                                eprintln!("owner of {n}: serving its calls (Ctrl-C to stop)")
                            }
                            NameState::Queued => {
                                eprintln!("queued for {n}: serving its calls once it is ours")
                            }
                            NameState::Lost => eprintln!("lost {n}"),
                        }
                    }
                }
            },
        }
    }
}

/// `bus-cli call`: a call to a well-known name's owner.
pub async fn call(
    bus: &Bus,
    name: &str,
    method: &str,
    arg: Option<String>,
    timeout: Duration,
    headers: Headers,
) -> libbus::Result<()> {
    let reply = bus
        .call_with_headers(name, method, &headers, payload(arg)?, timeout)
        .await?;
    outln!("{}", render::payload(reply.payload()));
    Ok(())
}

/// Runs `cmd` with `sh -c`, `input` on its stdin: its stdout, or its exit
/// status and stderr.
async fn run_command(cmd: &str, input: &[u8]) -> Result<Vec<u8>, (u32, String)> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| (127, format!("running {cmd:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is not an error.
        let _ = stdin.write_all(input).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| (127, format!("running {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let code = out.status.code().map_or(128, |c| c as u32);
        Err((code, String::from_utf8_lossy(&out.stderr).trim_end().to_owned()))
    }
}

pub async fn sub(
    bus: &Bus,
    pattern: &str,
    opts: libbus::SubscribeOptions,
    format: Format,
    count: Option<u64>,
) -> libbus::Result<()> {
    let mut events = bus.events();
    let mut sub = bus.subscribe_with(pattern, opts).await?;
    report_link_changes(bus);
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        match sub.next_delivery().await {
            Some(Delivery::Message(m)) => {
                format.print(&m);
                seen += 1;
            }
            Some(Delivery::Lagged(n)) => {
                eprintln!("warning: {n} messages dropped (this subscriber fell behind)")
            }
            // Ended by the daemon (a reloaded policy denies it), or by
            // the connection's end.
            None => {
                return Err(last_error(&mut events)
                    .await
                    .unwrap_or_else(|| bus.disconnected_error()))
            }
        }
    }
    Ok(())
}

/// Prints every message on `patterns` (all subjects when none) and every
/// lifecycle event, as they happen.
pub async fn monitor(bus: &Bus, patterns: Vec<String>) -> libbus::Result<()> {
    let patterns = if patterns.is_empty() {
        vec![">".to_owned()]
    } else {
        patterns
    };
    // One subscription per pattern, merged in arrival order.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    for p in &patterns {
        let mut sub = bus.subscribe(p).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next_delivery().await {
                if tx.send(d).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    eprintln!("monitoring {} (Ctrl-C to stop)", patterns.join(", "));
    report_link_changes(bus);
    while let Some(d) = rx.recv().await {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        match d {
            Delivery::Message(m) => outln!("{now} {}", line(&m)),
            Delivery::Lagged(n) => outln!("{now} !! monitor fell behind: {n} messages dropped"),
        }
    }
    Err(bus.disconnected_error())
}

/// Tells the user on stderr when the daemon goes away and comes back (the
/// subscription carries on after a reconnect).
fn report_link_changes(bus: &Bus) {
    let mut events = bus.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            match e {
                Event::Disconnected { reason } => eprintln!("bus-cli: {reason}; reconnecting"),
                Event::Reconnected { attempts, .. } => {
                    eprintln!("bus-cli: reconnected after {attempts} attempt(s)")
                }
                _ => {}
            }
        }
    });
}

/// One message as a line: `subject payload`, with lifecycle events decoded.
fn line(m: &Message) -> String {
    let subject = m.subject();
    if subject == api::EVENT_CONN_OPEN || subject == api::EVENT_CONN_CLOSE {
        if let Ok(ev) = m.decode::<ConnEvent>() {
            let c = &ev.conn;
            let reason = ev.reason.map(|r| format!(" reason={r}")).unwrap_or_default();
            return format!(
                "{subject} id={} name={} peer=\"{}\" msgs_in={} msgs_out={} dropped={}{reason}",
                c.id,
                c.name,
                render::peer(&c.peer),
                c.msgs_in,
                c.msgs_out,
                c.dropped
            );
        }
    }
    if subject == api::EVENT_BRIDGE_UP || subject == api::EVENT_BRIDGE_DOWN {
        if let Ok(b) = m.decode::<api::BridgeInfo>() {
            return format!(
                "{subject} node={} address={} state={} buffered={} dropped={}",
                b.node, b.address, b.state, b.buffered_bytes, b.dropped
            );
        }
    }
    if subject == api::EVENT_UPSTREAM_UP || subject == api::EVENT_UPSTREAM_DOWN {
        if let Ok(u) = m.decode::<api::UpstreamInfo>() {
            let server = if u.server.is_empty() {
                u.urls.join(",")
            } else {
                format!("{} ({})", u.server, u.server_name)
            };
            return format!(
                "{subject} server={server} state={} buffered={} dropped={}",
                u.state, u.buffered_bytes, u.dropped
            );
        }
    }
    if subject == api::EVENT_CONN_REFUSED {
        if let Ok(r) = m.decode::<api::RefusedEvent>() {
            return format!(
                "{subject} peer=\"{}\" transport={} reason=\"{}\"",
                render::peer(&r.peer),
                r.transport,
                r.reason
            );
        }
    }
    match m.reply_to() {
        Some(r) => format!("{subject} (reply to {r}) {}", render::payload(m.payload())),
        None => format!("{subject} {}", render::payload(m.payload())),
    }
}
