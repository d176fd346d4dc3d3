//! Test harness: a real `busd` on a real socket in a temp dir, stopped and
//! cleaned up on drop, plus a raw-socket client for protocol abuse. Every wait
//! goes through [`within`], so no test can hang.

use std::{collections::VecDeque, path::PathBuf};

use busd::{Config, Daemon};
use libbus::{
    codec,
    proto::{self, ClientFrame, ErrorCode, ServerFrame},
    Address, Bus, ConnectOptions,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

pub mod nats;

pub use bus_test_support::{until, until_answered, within, WAIT};

/// A daemon in its own temp dir.
pub struct TestBus {
    daemon: Option<Daemon>,
    config: Config,
    dir: tempfile::TempDir,
}

impl TestBus {
    /// A daemon with the default configuration.
    pub fn start() -> Self {
        Self::with_config(|_| {})
    }

    /// A daemon with the default configuration adjusted by `f`.
    pub fn with_config(f: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::with_socket(dir.path().join("busd.sock"));
        // Two workers whatever the machine, so connections really run in
        // parallel and the tests can meet races.
        config.workers = 2;
        f(&mut config);
        let daemon = Daemon::start(config.clone()).expect("daemon starts");
        Self {
            daemon: Some(daemon),
            config,
            dir,
        }
    }

    /// Starts the daemon again (same configuration, same socket) after [`stop`](Self::stop).
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "stop the daemon first");
        self.daemon = Some(Daemon::start(self.config.clone()).expect("daemon restarts"));
    }

    /// Where clients connect (also while the daemon is stopped).
    pub fn address(&self) -> Address {
        Address::Unix(self.socket())
    }

    /// The TCP or TLS address (with the bound port), if the config set `tcp`.
    pub fn tcp_address(&self) -> Address {
        self.daemon
            .as_ref()
            .and_then(|d| d.tcp_address().cloned())
            .expect("daemon listens on TCP")
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("busd.sock")
    }

    /// A libbus client named `name`.
    pub async fn client(&self, name: &str) -> Bus {
        self.client_with(ConnectOptions::default().name(name)).await
    }

    /// A libbus client with explicit options.
    pub async fn client_with(&self, opts: ConnectOptions) -> Bus {
        within("connect", Bus::connect_with(&self.address(), opts))
            .await
            .expect("connect")
    }

    /// A raw socket, no handshake.
    pub async fn raw(&self) -> Raw {
        let s = within("raw connect", UnixStream::connect(self.socket()))
            .await
            .expect("raw connect");
        Raw {
            stream: s,
            queued: VecDeque::new(),
            runs: 0,
        }
    }

    /// Stops the daemon now (also done on drop). A TCP listener bound to
    /// port 0 gets the same port again on [`restart`](Self::restart), so
    /// daemons bridged to it find it.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            if let Some(Address::Tcp(a) | Address::Tls(a)) = d.tcp_address() {
                self.config.tcp = Some(a.clone());
            }
            d.stop();
        }
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server frame, owned, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// Welcome with the connection id.
    Welcome(u64),
    /// A delivery.
    Msg {
        /// sid
        sid: u64,
        /// subject
        subject: String,
        /// payload
        payload: Vec<u8>,
    },
    /// Loss notice.
    Lagged(u64, u64),
    /// No responders for this reply subject.
    NoResponders(String),
    /// `ResponderGone` for this reply subject.
    ResponderGone(String),
    /// A delivery with its sender.
    SMsg {
        /// Subscription id.
        sid: u64,
        /// Who sent it, as the daemon stamped it.
        sender: libbus::proto::Sender,
        /// Subject.
        subject: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// The answer to a name request: (serial, reply).
    NameReply(u64, libbus::NameReply),
    /// A name request refused: (serial, code, message).
    NameRefused(u64, ErrorCode, String),
    /// A name's standing changed: (sid, name, state).
    NameState(u64, String, libbus::NameState),
    /// A delivery with headers (its encoded block).
    HMsg {
        /// Subscription id.
        sid: u64,
        /// Subject.
        subject: String,
        /// The header block as the daemon forwarded it.
        headers: Vec<u8>,
        /// Payload.
        payload: Vec<u8>,
    },
    /// Error frame.
    Error(ErrorCode, String),
    /// Ping.
    Ping,
    /// Pong.
    Pong,
    /// A refused subscription.
    SubRefused(u64, ErrorCode, String),
    /// A delivery with file descriptors (a raw reader does not keep them).
    MsgFds {
        /// Subscription id.
        sid: u64,
        /// How many it says came.
        fds: u8,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// A raw protocol connection for feeding the daemon bad input. The
/// deliveries of a `Run` frame come out one `Got::Msg` at a time.
pub struct Raw {
    /// The socket.
    pub stream: UnixStream,
    /// Deliveries of a `Run` not yet returned.
    queued: VecDeque<Got>,
    /// `Run` frames received so far.
    pub runs: usize,
}

impl Raw {
    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, b: &[u8]) {
        // The daemon may already have closed on us: ignore write errors.
        let _ = self.stream.write_all(b).await;
    }

    /// Sends one well-formed frame.
    pub async fn send(&mut self, f: &ClientFrame<'_>) {
        let mut buf = Vec::new();
        codec::encode_into(f, &mut buf, u32::MAX).expect("encode");
        self.send_bytes(&buf).await;
    }

    /// Sends `Hello` and expects `Welcome`.
    pub async fn handshake(&mut self) -> u64 {
        self.handshake_as(proto::PROTOCOL_VERSION).await
    }

    /// [`handshake`](Self::handshake) speaking protocol `version`.
    pub async fn handshake_as(&mut self, version: u16) -> u64 {
        self.send(&ClientFrame::Hello(proto::Hello {
            version,
            name: "raw",
            role: proto::Role::Client,
            auth: None,
        }))
        .await;
        match self.next().await {
            Some(Got::Welcome(id)) => id,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The next frame other than the daemon's pings (one follows
    /// `Welcome`, to measure the round trip), or `None` at end of stream.
    pub async fn next(&mut self) -> Option<Got> {
        loop {
            match self.next_any().await {
                Some(Got::Ping) => continue,
                other => return other,
            }
        }
    }

    /// The next frame, pings included, or `None` at end of stream.
    pub async fn next_any(&mut self) -> Option<Got> {
        within("a frame from the daemon", self.read_frame()).await
    }

    async fn read_frame(&mut self) -> Option<Got> {
        if let Some(got) = self.queued.pop_front() {
            return Some(got);
        }
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.stream.read_exact(&mut body).await.ok()?;
        let f: ServerFrame = codec::decode(&body).expect("daemon sends valid frames");
        Some(match f {
            ServerFrame::Welcome(w) => Got::Welcome(w.conn_id),
            ServerFrame::Msg(m) => Got::Msg {
                sid: m.sid,
                subject: m.subject.into(),
                payload: m.payload.into(),
            },
            ServerFrame::Run { sid, frames } => {
                let mut inner = codec::whole_frames(frames);
                for (_, body) in &mut inner {
                    self.queued.push_back(match codec::decode(body) {
                        Ok(ClientFrame::Pub(p)) => Got::Msg {
                            sid,
                            subject: p.subject.into(),
                            payload: p.payload.into(),
                        },
                        Ok(ClientFrame::HPub(p)) => Got::HMsg {
                            sid,
                            subject: p.subject.into(),
                            headers: p.headers.into(),
                            payload: p.payload.into(),
                        },
                        _ => panic!("a Run holds Pub and HPub frames, got {body:?}"),
                    });
                }
                assert_eq!(inner.end(), frames.len(), "a Run holds whole frames");
                self.runs += 1;
                return self.queued.pop_front();
            }
            ServerFrame::Lagged { sid, dropped } => Got::Lagged(sid, dropped),
            ServerFrame::NoResponders { reply_to } => Got::NoResponders(reply_to.into()),
            ServerFrame::ResponderGone { reply_to } => Got::ResponderGone(reply_to.into()),
            ServerFrame::SMsg { sid, sender, publish } => {
                let p = libbus::wire::run_msg(publish).expect("an SMsg holds a Pub or HPub");
                Got::SMsg {
                    sid,
                    sender: postcard::from_bytes(sender).expect("an encoded Sender"),
                    subject: String::from_utf8_lossy(p.subject).into(),
                    payload: p.payload.into(),
                }
            }
            ServerFrame::HMsg(m) => Got::HMsg {
                sid: m.sid,
                subject: m.subject.into(),
                headers: m.headers.into(),
                payload: m.payload.into(),
            },
            ServerFrame::MsgFds(m) => Got::MsgFds {
                sid: m.sid,
                fds: m.fds,
                payload: m.payload.into(),
            },
            ServerFrame::Error { code, message } => Got::Error(code, message.into()),
            ServerFrame::Ping => Got::Ping,
            ServerFrame::Pong => Got::Pong,
            ServerFrame::SubRefused { sid, code, message } => Got::SubRefused(sid, code, message.into()),
            ServerFrame::NameReply { serial, reply } => Got::NameReply(serial, reply),
            ServerFrame::NameRefused {
                serial,
                code,
                message,
            } => Got::NameRefused(serial, code, message.into()),
            ServerFrame::NameState { sid, name, state } => Got::NameState(sid, name.into(), state),
        })
    }

    /// Expects an `Error` frame (skipping pings and pongs) followed by the
    /// end of the stream.
    pub async fn expect_error_then_close(&mut self) -> (ErrorCode, String) {
        let err = loop {
            match self.next().await {
                Some(Got::Error(code, msg)) => break (code, msg),
                Some(Got::Ping | Got::Pong | Got::Welcome(_)) => continue,
                other => panic!("expected an Error frame, got {other:?}"),
            }
        };
        assert_eq!(self.next().await, None, "connection should close after {err:?}");
        err
    }
}

/// Checks that the bus still works for ordinary clients.
pub async fn assert_serving(bus: &TestBus) {
    let a = bus.client("probe-sub").await;
    let b = bus.client("probe-pub").await;
    let mut sub = within("subscribe", a.subscribe("probe.ok"))
        .await
        .expect("subscribe");
    within("publish", b.publish("probe.ok", "still here"))
        .await
        .expect("publish");
    let m = within("probe message", sub.next()).await.expect("message");
    assert_eq!(m.payload(), b"still here");
}

/// A throwaway PKI generated at run time: a CA, and a server certificate it
/// signed for `localhost` and `127.0.0.1`. Nothing secret is committed.
pub struct TestPki {
    /// The CA certificate (PEM) clients trust.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
    /// A client certificate (PEM) for [`CLIENT_NAME`], signed by the CA.
    pub client_cert: PathBuf,
    /// Its private key (PEM).
    pub client_key: PathBuf,
}

/// The DNS name of [`TestPki::client_cert`].
pub const CLIENT_NAME: &str = "client.test";

impl TestPki {
    /// Writes `ca.pem`, `cert.pem` and `key.pem` into `dir`, with a CA named `ca_name`.
    pub fn generate(dir: &std::path::Path, ca_name: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &issuer).expect("server cert");
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(vec![CLIENT_NAME.to_owned()]).expect("params");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params
            .signed_by(&client_key, &issuer)
            .expect("client cert");
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        Self {
            ca: write(&format!("{ca_name}-ca.pem"), ca_cert.pem()),
            cert: write(&format!("{ca_name}-cert.pem"), cert.pem()),
            key: write(&format!("{ca_name}-key.pem"), key.serialize_pem()),
            client_cert: write(&format!("{ca_name}-client.pem"), client_cert.pem()),
            client_key: write(&format!("{ca_name}-client-key.pem"), client_key.serialize_pem()),
        }
    }
}

/// What the daemon's access policy denied, as (principal, rule) pairs
/// (`$BUS.api.denials` through `bus`).
pub async fn denials(bus: &Bus) -> Vec<(String, String)> {
    let denials: Vec<proto::api::Denial> = within("denials", bus.request(proto::api::DENIALS, []))
        .await
        .expect("denials request")
        .decode()
        .expect("denials decode");
    denials.into_iter().map(|d| (d.principal, d.rule)).collect()
}

/// `$BUS.api.info` through `bus`.
pub use bus_test_support::info as server_info;
