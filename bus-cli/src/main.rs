//! `bus-cli`: inspect and drive a live bus. Every command is plain libbus:
//! `list` and `info` are requests to `$BUS.api.*`, `monitor` a subscription.

/// `println!` for command output: when stdout's reader has gone away
/// (`bus-cli sub x | head -1`), the process ends quietly instead of
/// panicking on the failed write.
macro_rules! outln {
    () => {
        $crate::render::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::render::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::render::write_stdout(format_args!($($arg)*))
    };
}

/// mimalloc, as in busd: a subscriber's receive buffers (64 KiB each) are
/// allocated by the reader and freed by the consumer, often on another
/// thread; glibc malloc returned them to the kernel and took them back
/// (page faults) many times a second in `bench pubsub`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "bench")]
mod bench;
mod info;
mod list;
mod pubsub;
mod render;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use libbus::{subject, Address, Bus, ConnectOptions, NameFlags};

/// Inspect and drive a live bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Daemon address (unix:/path or a path, tcp://host:port, tls://host:port). Default: $BUS_ADDRESS, else
    /// $XDG_RUNTIME_DIR/bus/busd.sock, else /tmp/bus-$UID/busd.sock.
    #[arg(long, global = true, value_name = "ADDRESS")]
    address: Option<String>,
    /// CA certificate (PEM) that a tls:// daemon's certificate must chain to.
    /// The token for tcp:// and tls:// comes from $BUS_TOKEN.
    #[arg(long, global = true, value_name = "PEM", env = "BUS_CA")]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present to a tls:// daemon that asks for
    /// one (mTLS; with --key).
    #[arg(long, global = true, value_name = "PEM", env = "BUS_CERT", requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, value_name = "PEM", env = "BUS_KEY", requires = "cert")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Live connections: id, name, peer credentials, counters.
    List {
        /// Show this one connection in full (live, or among the closed).
        id: Option<u64>,
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
        /// The connections that closed (the last `max_closed`), with why.
        #[arg(long)]
        closed: bool,
        /// Order the live connections by this column (counters, age and idle
        /// largest first; id and name ascending).
        #[arg(long, value_enum, default_value = "id")]
        sort: list::SortBy,
    },
    /// Publish one message.
    Send {
        /// Subject to publish to.
        subject: String,
        /// Payload; read from stdin when absent or "-".
        payload: Option<String>,
        /// A header, NAME=VALUE (repeatable, kept in order).
        #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = pubsub::parse_header)]
        headers: Vec<(String, String)>,
        /// Publish each line of stdin as a message (without its newline).
        #[arg(long, conflicts_with = "payload")]
        lines: bool,
        /// Attach this file, opened read-only, to the message (repeatable;
        /// Unix socket connections only).
        #[arg(long = "fd", value_name = "PATH", conflicts_with = "lines")]
        fds: Vec<std::path::PathBuf>,
    },
    /// Print messages matching a pattern (`*` = one token, `>` = the rest).
    Sub {
        /// Subject pattern.
        pattern: String,
        /// Join this queue group (each message goes to one member).
        #[arg(long, value_name = "GROUP")]
        queue: Option<String>,
        /// Print each message's headers, one `  Name: value` line each, under it.
        #[arg(long)]
        headers: bool,
        /// Print only each payload, as it came, one per line.
        #[arg(long, conflicts_with_all = ["headers", "json"])]
        raw: bool,
        /// Print one JSON object per message: subject, reply, headers, and
        /// the payload as text, or as base64 when it is not UTF-8.
        #[arg(long, conflicts_with = "headers")]
        json: bool,
        /// Start each line with the time the message arrived (RFC 3339).
        #[arg(long)]
        timestamps: bool,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// If no daemon is running yet, wait for one (retrying with
        /// backoff) instead of failing.
        #[arg(long)]
        wait: bool,
        /// Lossless: when this subscriber falls behind, the daemon holds
        /// its publishers back instead of dropping messages (for at most
        /// its `max_stall`).
        #[arg(long)]
        lossless: bool,
    },
    /// Send a request and print the reply.
    Request {
        /// Subject to send the request to.
        subject: String,
        /// Payload; read from stdin when absent or "-".
        payload: Option<String>,
        /// How long to wait for the reply (e.g. 500ms, 2s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
        /// A header, NAME=VALUE (repeatable, kept in order).
        #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = pubsub::parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Print every message and lifecycle event as it happens.
    Monitor {
        // The help text is an attribute, not a doc comment: rustdoc would
        // read its "[default: >]" as a link.
        #[arg(
            long = "match",
            value_name = "PATTERN",
            help = "Only subjects matching this pattern (repeatable; a message that matches two is printed twice) [default: >]"
        )]
        patterns: Vec<String>,
    },
    /// Serve requests from the shell: answer each one on SUBJECT, or each
    /// call to the well-known name given with --name.
    #[command(group(clap::ArgGroup::new("answer").required(true).args(["echo", "command"])))]
    #[command(group(clap::ArgGroup::new("serve").required(true).args(["subject", "name"])))]
    Reply {
        /// Subject (or pattern) to serve.
        subject: Option<String>,
        /// Serve the calls to this well-known name instead: ask for it, wait
        /// in its queue while another connection owns it, and answer while
        /// this one does (its changes are reported on stderr).
        #[arg(long, value_name = "NAME", conflicts_with = "queue")]
        name: Option<String>,
        /// With --name: take the name over from an owner that allows it.
        #[arg(long, requires = "name")]
        replace: bool,
        /// With --name: let a later `--replace` take the name from this one.
        #[arg(long, requires = "name")]
        allow_replacement: bool,
        /// Join this queue group (each request goes to one member).
        #[arg(long, value_name = "GROUP")]
        queue: Option<String>,
        /// Answer with the request's own payload.
        #[arg(long)]
        echo: bool,
        /// Answer with what this shell command prints, given the request's
        /// payload on its standard input; a non-zero exit answers with an
        /// error (its status and standard error).
        #[arg(long, value_name = "CMD")]
        command: Option<String>,
        /// Exit after answering this many requests.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Call METHOD on the owner of the well-known name NAME and print the
    /// reply (exit 1 on an error reply, or if nobody owns NAME).
    Call {
        /// The well-known name.
        name: String,
        /// The method (a subject, which the owner sees as the message's).
        method: String,
        /// Payload; read from stdin when absent or "-".
        payload: Option<String>,
        /// How long to wait for the reply (e.g. 500ms, 2s).
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "5s")]
        timeout: Duration,
        /// A header, NAME=VALUE (repeatable, kept in order).
        #[arg(short = 'H', long = "header", value_name = "NAME=VALUE", value_parser = pubsub::parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Well-known names: each one's owner (id, client, pid) and queue.
    Names {
        /// Print the records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput and latency, optionally against a raw-socket baseline.
    ///
    /// Starts its own daemon in-process unless --address is given.
    #[cfg(feature = "bench")]
    Bench(bench::BenchArgs),
    /// One process of `bench --processes` (started by the bench).
    #[cfg(feature = "bench")]
    #[command(hide = true)]
    BenchWorker {
        /// What to do, as JSON.
        spec: String,
    },
    /// Daemon version, uptime, socket, totals and limits.
    Info {
        /// Print the record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Close another connection (by its ID from `list`). Only the daemon's
    /// user and root may.
    Kick {
        /// Connection id.
        id: u64,
    },
    /// Print a completion script for SHELL (e.g. `bus-cli completions bash
    /// > /etc/bash_completion.d/bus-cli`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print bus-cli's man page (roff; `bus-cli manpage > bus-cli.1`).
    Manpage,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> libbus::Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "bus-cli", &mut std::io::stdout());
            return Ok(());
        }
        Command::Manpage => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(libbus::Error::from);
        }
        _ => {}
    }
    #[cfg(feature = "bench")]
    if let Command::BenchWorker { spec } = &cli.command {
        return bench::procs::worker(spec).await;
    }
    #[cfg(feature = "bench")]
    if let Command::Bench(args) = cli.command {
        let address = cli.address.map(|a| a.parse()).transpose()?;
        return bench::run(args, address).await;
    }
    // A subject the daemon would refuse is refused before connecting, so
    // the error names the subject even when no daemon is running.
    match &cli.command {
        Command::Send { subject, .. } | Command::Request { subject, .. } => {
            subject::validate_publish(subject)?
        }
        Command::Sub { pattern, .. }
        | Command::Reply {
            subject: Some(pattern),
            ..
        } => subject::validate_pattern(pattern)?,
        Command::Reply { name: Some(name), .. } => subject::validate_subject(name)?,
        Command::Call { name, method, .. } => {
            subject::validate_subject(name)?;
            subject::validate_subject(method)?
        }
        Command::Monitor { patterns } => {
            for p in patterns {
                subject::validate_pattern(p)?;
            }
        }
        _ => {}
    }
    let address = match cli.address {
        Some(a) => a.parse()?,
        None => Address::from_env()?,
    };
    // Long-running commands ride out a daemon restart; one-shot ones fail fast.
    let long_running = matches!(
        cli.command,
        Command::Sub { .. } | Command::Monitor { .. } | Command::Reply { .. }
    );
    let mut opts = ConnectOptions::default().name("bus-cli");
    if let Some(ca) = cli.ca {
        opts = opts.ca_file(ca);
    }
    if let (Some(cert), Some(key)) = (cli.cert, cli.key) {
        opts = opts.client_cert(cert, key);
    }
    if !long_running {
        opts = opts.reconnect(None);
    }
    if matches!(cli.command, Command::Sub { wait: true, .. }) {
        opts = opts.retry_on_initial_connect();
    }
    let bus = Bus::connect_with(&address, opts).await?;
    let result = match cli.command {
        Command::List {
            id: Some(id), json, ..
        } => list::one(&bus, id, json).await,
        Command::List {
            id: None,
            json,
            closed,
            sort,
        } => list::run(&bus, json, closed, sort).await,
        Command::Send {
            subject,
            payload,
            headers,
            lines,
            fds,
        } => {
            let headers = headers.into_iter().collect();
            if lines {
                pubsub::send_lines(&bus, &subject, headers).await
            } else {
                pubsub::send(&bus, &subject, payload, headers, &fds).await
            }
        }
        Command::Sub {
            pattern,
            queue,
            headers,
            raw,
            json,
            timestamps,
            count,
            wait: _,
            lossless,
        } => {
            let format = pubsub::Format {
                headers,
                raw,
                json,
                timestamps,
            };
            let mut opts = libbus::SubscribeOptions::new();
            if let Some(q) = queue {
                opts = opts.queue(q);
            }
            if json {
                // JSON records say who sent each message.
                opts = opts.with_sender();
            }
            if lossless {
                opts = opts.lossless();
            }
            pubsub::sub(&bus, &pattern, opts, format, count).await
        }
        Command::Reply {
            subject,
            name,
            replace,
            allow_replacement,
            queue,
            echo: _,
            command,
            count,
        } => {
            let serve = match (subject, name) {
                (_, Some(name)) => {
                    let mut flags = NameFlags::NONE;
                    if replace {
                        flags = flags | NameFlags::REPLACE_EXISTING;
                    }
                    if allow_replacement {
                        flags = flags | NameFlags::ALLOW_REPLACEMENT;
                    }
                    pubsub::Serve::Name(name, flags)
                }
                (Some(subject), None) => pubsub::Serve::Subject(subject, queue),
                (None, None) => unreachable!("clap requires SUBJECT or --name"),
            };
            pubsub::reply(&bus, serve, command.as_deref(), count).await
        }
        Command::Call {
            name,
            method,
            payload,
            timeout,
            headers,
        } => {
            pubsub::call(
                &bus,
                &name,
                &method,
                payload,
                timeout,
                headers.into_iter().collect(),
            )
            .await
        }
        Command::Names { json } => list::names(&bus, json).await,
        Command::Request {
            subject,
            payload,
            timeout,
            headers,
        } => pubsub::request(&bus, &subject, payload, timeout, headers.into_iter().collect()).await,
        Command::Monitor { patterns } => pubsub::monitor(&bus, patterns).await,
        Command::Info { json } => info::run(&bus, &address, json).await,
        Command::Kick { id } => info::kick(&bus, id).await,
        // Handled above, without a connection of their own.
        #[cfg(feature = "bench")]
        Command::Bench(_) | Command::BenchWorker { .. } => Ok(()),
        Command::Completions { .. } | Command::Manpage => Ok(()),
    };
    let closed = bus.close().await;
    result.and(closed)
}
