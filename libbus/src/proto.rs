//! The wire protocol: every frame the client and the daemon exchange.
//!
//! A frame on the socket is a 4-byte little-endian length followed by that many
//! bytes of a postcard-encoded [`ClientFrame`] (client → daemon) or
//! [`ServerFrame`] (daemon → client). Frames borrow their strings and payloads
//! from the receive buffer, so decoding allocates nothing.
//!
//! postcard is not self-describing: variants are only ever appended, never
//! reordered, and [`PROTOCOL_VERSION`] is bumped on any incompatible change.
//! The handshake is `Hello` → `Welcome` (or `Error` and close); nothing else is
//! accepted before it.

use serde::{Deserialize, Serialize};

/// Version spoken by this build. Version 3 added [`ServerFrame::Run`];
/// version 4 added headers ([`ClientFrame::HPub`], [`ServerFrame::HMsg`]),
/// senders ([`ClientFrame::SubWith`], [`ServerFrame::SMsg`]), service names
/// ([`ClientFrame::RequestName`], [`ClientFrame::Call`], ...),
/// [`ServerFrame::ResponderGone`] and, on bridge links,
/// [`link::LinkFrame::Closing`] and [`link::LinkFrame::Closed`]; version 5
/// added subscription flags ([`ClientFrame::SubFlags`]: lossless
/// subscriptions); version 6, file descriptors ([`ClientFrame::PubFds`],
/// [`ServerFrame::MsgFds`]).
pub const PROTOCOL_VERSION: u16 = 6;

/// First version that sends and reads messages with file descriptors.
pub const FDS_VERSION: u16 = 6;

/// First version whose daemons read [`ClientFrame::SubFlags`].
pub const FLAGS_VERSION: u16 = 5;

/// First version whose clients read [`ServerFrame::Run`].
pub const RUN_VERSION: u16 = 3;

/// First version that sends [`ClientFrame::HPub`] and reads
/// [`ServerFrame::HMsg`]; older clients get messages without headers.
pub const HEADERS_VERSION: u16 = 4;

/// First version whose clients read [`ServerFrame::ResponderGone`] (older
/// ones get `NoResponders` in its place) and whose bridge links speak
/// [`link::LinkFrame::Closing`].
pub const GONE_VERSION: u16 = 4;

/// Oldest version the daemon still accepts in a `Hello`. A version 2 client
/// gets every delivery as a `Msg`, never a `Run`.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// Default largest frame body, in bytes (`--max-frame`).
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Bytes of the length prefix in front of every frame.
pub const LEN_PREFIX: usize = 4;

/// What kind of peer is connecting. Only appended to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An application (or `bus-cli`).
    Client,
    /// Another daemon opening a bridge link; `Hello.name` is its node id.
    /// After `Welcome` both sides speak [`link::LinkFrame`].
    Bridge,
}

/// First frame from a client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The client's [`PROTOCOL_VERSION`]; the daemon accepts
    /// [`MIN_PROTOCOL_VERSION`] up to its own.
    pub version: u16,
    /// Free-form client name, shown by `bus-cli list`.
    pub name: &'a str,
    /// Kind of peer.
    pub role: Role,
    /// Credential for transports that need one (TCP); `None` on the Unix socket.
    pub auth: Option<&'a str>,
}

/// Publish a message.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Pub<'a> {
    /// Literal subject (no wildcards).
    pub subject: &'a str,
    /// Where responders should reply, for requests.
    pub reply_to: Option<&'a str>,
    /// Opaque message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// Subscribe `sid` to a pattern, optionally as a member of a queue group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sub<'a> {
    /// Client-chosen subscription id, echoed in every `Msg`.
    pub sid: u64,
    /// Subject pattern (`*` and `>` allowed).
    pub pattern: &'a str,
    /// Queue group: each message goes to one member of the group.
    pub queue: Option<&'a str>,
}

/// Frames a client sends. Variants are only appended, never reordered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Handshake; must be the first frame.
    #[serde(borrow)]
    Hello(Hello<'a>),
    /// Publish.
    #[serde(borrow)]
    Pub(Pub<'a>),
    /// Subscribe.
    #[serde(borrow)]
    Sub(Sub<'a>),
    /// Remove subscription `sid`.
    Unsub {
        /// The subscription id given in `Sub`.
        sid: u64,
    },
    /// Liveness probe; the daemon answers `Pong` after processing all earlier frames.
    Ping,
    /// Answer to the daemon's `Ping`.
    Pong,
    /// Publish with headers (version 4).
    #[serde(borrow)]
    HPub(HPub<'a>),
    /// Subscribe with options (version 4).
    #[serde(borrow)]
    SubWith(SubWith<'a>),
    /// Ask for a well-known name (version 4); answered by `NameReply` or
    /// `NameRefused` with the same serial.
    #[serde(borrow)]
    RequestName(RequestName<'a>),
    /// Give up a name, owned or queued for (version 4); answered by
    /// `NameReply` (`Released`, `NonExistent` or `NotOwner`) with the same
    /// serial (0: no answer wanted).
    ReleaseName {
        /// Client-chosen, echoed in the answer.
        serial: u64,
        /// The name.
        name: &'a str,
        /// Only the claim made with this `RequestName` sid (0: this
        /// connection's claim, whichever sid it was made with).
        sid: u64,
    },
    /// A call: a request delivered to the primary owner of a name, not
    /// routed by subject (version 4).
    #[serde(borrow)]
    Call(Call<'a>),
    /// Subscribe with [`sub_flags`] (version 5). A daemon refuses
    /// (`SubRefused`) a flag it does not know.
    #[serde(borrow)]
    SubFlags(SubFlags<'a>),
    /// Publish with file descriptors (version 6, Unix sockets): `fds` of
    /// them were sent with this frame's bytes (`SCM_RIGHTS`).
    #[serde(borrow)]
    PubFds(PubFds<'a>),
}

/// A message with file descriptors: a publish ([`ClientFrame::PubFds`]) or,
/// with the subscription's `sid`, a delivery ([`ServerFrame::MsgFds`]).
/// The descriptors travel beside the frame (`SCM_RIGHTS` with its bytes);
/// `fds` says how many are its own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PubFds<'a> {
    /// The subscription a delivery is for (0 in a publish).
    pub sid: u64,
    /// Subject.
    pub subject: &'a str,
    /// Reply subject, for requests.
    pub reply_to: Option<&'a str>,
    /// The encoded header block (empty: none).
    #[serde(with = "serde_bytes")]
    pub headers: &'a [u8],
    /// Message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
    /// How many descriptors came with it.
    pub fds: u8,
}

/// Flags of [`RequestName`], as D-Bus's `RequestName`: bit values, or-ed.
pub mod name_flags {
    /// Another connection asking with `REPLACE_EXISTING` may take the name
    /// from this one.
    pub const ALLOW_REPLACEMENT: u8 = 0x1;
    /// Take the name from its owner if that owner allowed replacement.
    pub const REPLACE_EXISTING: u8 = 0x2;
    /// Do not wait in the name's queue: own it now or not at all (and,
    /// once replaced, lose it rather than queue).
    pub const DO_NOT_QUEUE: u8 = 0x4;
}

/// Ask for a well-known name (D-Bus `RequestName`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RequestName<'a> {
    /// Client-chosen, echoed in the answer.
    pub serial: u64,
    /// Calls to the name, while this connection owns it, are delivered to
    /// this subscription id (as `SMsg`, with their sender); its changes of
    /// state come as `NameState` with it.
    pub sid: u64,
    /// The name: subject syntax, no wildcards.
    pub name: &'a str,
    /// [`name_flags`], or-ed.
    pub flags: u8,
}

/// A call to the owner of a name: a request with a destination.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    /// The well-known name called.
    pub name: &'a str,
    /// The method: a literal subject, which the owner sees as the
    /// message's subject.
    pub subject: &'a str,
    /// Where the owner replies.
    pub reply_to: Option<&'a str>,
    /// Header block, as in `HPub` (empty: none).
    #[serde(with = "serde_bytes")]
    pub headers: &'a [u8],
    /// Opaque body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// The answer to `RequestName` or `ReleaseName`, D-Bus's results.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameReply {
    /// `RequestName`: this connection is now the primary owner.
    PrimaryOwner,
    /// `RequestName`: another connection owns it; this one waits in its queue.
    InQueue,
    /// `RequestName`: another connection owns it and this one asked not to
    /// queue.
    Exists,
    /// `RequestName`: this connection already owns it.
    AlreadyOwner,
    /// `ReleaseName`: released (or left the queue).
    Released,
    /// `ReleaseName`: nobody owns the name.
    NonExistent,
    /// `ReleaseName`: this connection neither owns it nor waits for it.
    NotOwner,
}

/// A connection's standing with a name it asked for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameState {
    /// It owns the name: calls come to it.
    Primary,
    /// It waits in the name's queue.
    Queued,
    /// It neither owns nor waits for the name any more (replaced without
    /// queueing, released, or disconnected).
    Lost,
}

/// `Sub` with options (version 4).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SubWith<'a> {
    /// Client-chosen subscription id.
    pub sid: u64,
    /// Subject pattern (`*` and `>` allowed).
    pub pattern: &'a str,
    /// Queue group, if any.
    pub queue: Option<&'a str>,
    /// Deliver each message with its [`Sender`] (as `SMsg`).
    pub sender: bool,
}

/// `Sub` with flags (version 5).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SubFlags<'a> {
    /// Client-chosen subscription id.
    pub sid: u64,
    /// Subject pattern (`*` and `>` allowed).
    pub pattern: &'a str,
    /// Queue group, if any.
    pub queue: Option<&'a str>,
    /// [`sub_flags`], or-ed.
    pub flags: u32,
}

/// Flags of [`SubFlags`]: bit values, or-ed.
pub mod sub_flags {
    /// Deliver each message with its [`Sender`](super::Sender) (as `SMsg`).
    pub const SENDER: u32 = 0x1;
    /// Lossless: when the subscription's queue is full, the daemon stops
    /// reading from the local publishers that feed it rather than drop
    /// (for at most `max_stall`, then the subscriber is disconnected).
    pub const LOSSLESS: u32 = 0x2;
    /// Every flag this version knows.
    pub const KNOWN: u32 = SENDER | LOSSLESS;
}

/// Who sent a message, as the daemon stamps it: a client cannot set it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Sender {
    /// The node (daemon) the sender is connected to.
    pub node: String,
    /// Its connection id on that node (0: the daemon itself, or not known).
    pub conn_id: u64,
    /// Its client name.
    pub name: String,
    /// For a local peer: its process id, from the kernel.
    pub pid: Option<i32>,
    /// For a local peer: its user id, from the kernel (for a message from
    /// across a bridge: as its node reports it).
    pub uid: Option<u32>,
    /// For a local peer: its group id, from the kernel.
    pub gid: Option<u32>,
    /// For a network peer: its address.
    pub addr: Option<String>,
}

/// A publish with headers: `Pub` with an encoded [`Headers`](crate::Headers)
/// block before the payload. The daemon checks the block once and forwards
/// it as it came.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HPub<'a> {
    /// Literal subject (no wildcards).
    pub subject: &'a str,
    /// Where responders should reply, for requests.
    pub reply_to: Option<&'a str>,
    /// The headers, as [`Headers::encode`](crate::Headers) writes them.
    #[serde(with = "serde_bytes")]
    pub headers: &'a [u8],
    /// Opaque message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// A delivery with headers (version 4): `Msg` with the publisher's header
/// block, as it came.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HMsg<'a> {
    /// The subscription this delivery is for.
    pub sid: u64,
    /// Subject the message was published to.
    pub subject: &'a str,
    /// Reply subject, for requests.
    pub reply_to: Option<&'a str>,
    /// The headers, as [`Headers::encode`](crate::Headers) writes them.
    #[serde(with = "serde_bytes")]
    pub headers: &'a [u8],
    /// Message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// Successful handshake answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome<'a> {
    /// Protocol version of the daemon.
    pub version: u16,
    /// This connection's id, as shown by `bus-cli list`.
    pub conn_id: u64,
    /// Random id of the daemon instance.
    pub server_id: &'a str,
    /// Largest frame body the daemon accepts.
    pub max_frame: u32,
}

/// A message delivered to subscription `sid`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The subscription this delivery is for.
    pub sid: u64,
    /// Subject the message was published to.
    pub subject: &'a str,
    /// Reply subject, for requests.
    pub reply_to: Option<&'a str>,
    /// Message body.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

/// Machine-readable error class in an `Error` frame. Only appended to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or unexpected frame; the connection is closed.
    Protocol,
    /// Frame length above `max_frame`; the connection is closed.
    FrameTooLarge,
    /// `Hello.version` differs from the daemon's.
    VersionMismatch,
    /// No `Hello` within the handshake timeout.
    HandshakeTimeout,
    /// Subject or pattern failed validation.
    InvalidSubject,
    /// Publish under the daemon's reserved `$BUS.` prefix.
    Reserved,
    /// A configured limit was hit; the message names it.
    LimitExceeded,
    /// Not allowed by policy.
    PermissionDenied,
    /// The connection missed too many pings.
    PingTimeout,
    /// An administrator closed the connection (`bus-cli kick`).
    Kicked,
    /// A network peer presented a wrong or no token.
    AuthenticationFailed,
    /// A lossless subscription held a publisher back longer than the
    /// daemon's `max_stall` (version 5); the connection is closed.
    SlowConsumer,
    /// File descriptors could not go where a message went (version 6): a
    /// network or older subscriber, a bridge, the NATS upstream, or the
    /// daemon near its descriptor limit. The message went everywhere else.
    FdsNotPassed,
}

impl ErrorCode {
    /// True for refusals that retrying cannot fix (a reconnecting client gives up).
    pub fn is_permanent(self) -> bool {
        matches!(
            self,
            Self::VersionMismatch | Self::PermissionDenied | Self::Kicked | Self::AuthenticationFailed
        )
    }
}

/// Frames the daemon sends. Variants are only appended, never reordered.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// Handshake accepted.
    #[serde(borrow)]
    Welcome(Welcome<'a>),
    /// A delivery.
    #[serde(borrow)]
    Msg(Msg<'a>),
    /// `dropped` messages for `sid` were discarded because this connection fell
    /// behind; sent before the next delivery (or as soon as the queue drains).
    Lagged {
        /// Affected subscription.
        sid: u64,
        /// Messages dropped since the last notice.
        dropped: u64,
    },
    /// A request to `reply_to` found no subscriber at all.
    NoResponders {
        /// The reply subject of the failed request.
        reply_to: &'a str,
    },
    /// Something went wrong; fatal codes are followed by a close.
    Error {
        /// Class of error.
        code: ErrorCode,
        /// Human-readable explanation, naming the limit or value involved.
        message: &'a str,
    },
    /// Liveness probe; answer with `Pong`.
    Ping,
    /// Answer to the client's `Ping`.
    Pong,
    /// `Sub` for `sid` was refused (a limit, an invalid pattern); the
    /// connection stays open and the subscription does not exist.
    SubRefused {
        /// The refused subscription id.
        sid: u64,
        /// Class of error.
        code: ErrorCode,
        /// Explanation naming the limit and its value.
        message: &'a str,
    },
    /// Consecutive deliveries for `sid` (version 3): the `Pub` frames as
    /// their publisher sent them, each with its length prefix, in order. The
    /// daemon forwards a run of publishes verbatim, often without copying
    /// it; each inner `Pub` is one message, as if it had come as a `Msg`.
    Run {
        /// The subscription these deliveries are for.
        sid: u64,
        /// Whole `ClientFrame::Pub` frames, back to back.
        #[serde(with = "serde_bytes")]
        frames: &'a [u8],
    },
    /// Every connection a request to `reply_to` was delivered to closed
    /// without replying (version 4): the request will get no answer.
    ResponderGone {
        /// The reply subject of the request.
        reply_to: &'a str,
    },
    /// A delivery with headers (version 4; older clients get a `Msg`
    /// without them).
    #[serde(borrow)]
    HMsg(HMsg<'a>),
    /// A delivery with its sender, for a subscription made with
    /// `SubWith { sender: true }` (version 4): the encoded [`Sender`], and
    /// the publish (`Pub` or `HPub` body) as it came.
    SMsg {
        /// The subscription this delivery is for.
        sid: u64,
        /// postcard-encoded [`Sender`].
        #[serde(with = "serde_bytes")]
        sender: &'a [u8],
        /// The `Pub` or `HPub` frame body.
        #[serde(with = "serde_bytes")]
        publish: &'a [u8],
    },
    /// The answer to a `RequestName` or `ReleaseName` (version 4).
    NameReply {
        /// The request's serial.
        serial: u64,
        /// The result.
        reply: NameReply,
    },
    /// A `RequestName` was refused (a limit, a reserved name); the
    /// connection stays open (version 4).
    NameRefused {
        /// The request's serial.
        serial: u64,
        /// Class of error.
        code: ErrorCode,
        /// Explanation naming the limit or the problem.
        message: &'a str,
    },
    /// This connection's standing with `name`, asked for with `sid`,
    /// changed (version 4): sent on every change, its own requests included.
    NameState {
        /// The `RequestName`'s sid.
        sid: u64,
        /// The name.
        name: &'a str,
        /// Where it stands now.
        state: NameState,
    },
    /// A delivery with file descriptors (version 6): `fds` of them came
    /// with this frame's bytes (`SCM_RIGHTS`).
    #[serde(borrow)]
    MsgFds(PubFds<'a>),
}

/// Records returned by the admin API (`$BUS.api.*`) and lifecycle events
/// (`$BUS.event.*`). Payloads are postcard-encoded; field order is the wire
/// format, so fields are only appended.
pub mod api {
    use serde::{Deserialize, Serialize};

    /// Admin request: list live connections. Reply: `Vec<ConnInfo>`, by id,
    /// one page at a time: the payload is a [`Page`] (empty: the first page),
    /// and a page holds what fits well within `max_frame`. Ask again after
    /// the last id received until a page comes back empty.
    pub const LIST: &str = "$BUS.api.list";

    /// Which page of a listing (`$BUS.api.list`, `$BUS.api.closed`) to send.
    #[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Page {
        /// `$BUS.api.list`: only connections with an id above this one.
        /// `$BUS.api.closed`: skip this many records (the ones already had).
        pub after: u64,
        /// At most this many records (0: as many as fit).
        pub limit: u32,
    }
    /// Admin request: daemon facts and totals. Reply: [`ServerInfo`].
    pub const INFO: &str = "$BUS.api.info";
    /// Admin request: close the connection whose id is the payload (a
    /// postcard `u64`). Only the daemon's own user and root may. Reply:
    /// [`AdminReply`].
    pub const KICK: &str = "$BUS.api.kick";

    /// Reply to a state-changing admin request: what was done, or the error
    /// class and why not.
    pub type AdminReply = Result<String, (super::ErrorCode, String)>;
    /// Event: a connection completed its handshake. Payload: [`ConnEvent`].
    pub const EVENT_CONN_OPEN: &str = "$BUS.event.conn.open";
    /// Event: a connection ended. Payload: [`ConnEvent`] with a reason.
    pub const EVENT_CONN_CLOSE: &str = "$BUS.event.conn.close";
    /// Event: a connection was refused at its handshake (wrong token,
    /// access policy). Payload: [`RefusedEvent`].
    pub const EVENT_CONN_REFUSED: &str = "$BUS.event.conn.refused";

    /// Payload of `$BUS.event.conn.refused`.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct RefusedEvent {
        /// Who tried.
        pub peer: Peer,
        /// `unix`, `tcp` or `tls`.
        pub transport: String,
        /// What they were told.
        pub reason: String,
    }

    /// Who is on the other end of a connection.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum Peer {
        /// Unix socket peer, credentials from the kernel (SO_PEERCRED).
        Unix {
            /// Process id.
            pid: i32,
            /// User id.
            uid: u32,
            /// Group id.
            gid: u32,
        },
        /// Network peer.
        Net {
            /// Remote socket address.
            addr: String,
        },
    }

    /// One subscription of a connection.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct SubInfo {
        /// Client-chosen id.
        pub sid: u64,
        /// Pattern.
        pub pattern: String,
        /// Queue group, if any.
        pub queue: Option<String>,
    }

    /// A live connection, as `bus-cli list` shows it.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct ConnInfo {
        /// Connection id.
        pub id: u64,
        /// Name from the client's `Hello`.
        pub name: String,
        /// `unix` (later: `tcp`, `tls`, `bridge`).
        pub transport: String,
        /// Peer identity.
        pub peer: Peer,
        /// Connection time, milliseconds since the Unix epoch.
        pub connected_at_ms: u64,
        /// Last application frame received (a publish, subscribe or
        /// unsubscribe; not a ping or pong), milliseconds since the Unix
        /// epoch; never before `connected_at_ms`.
        pub last_activity_ms: u64,
        /// Subscriptions, by sid.
        pub subs: Vec<SubInfo>,
        /// Messages published by this connection.
        pub msgs_in: u64,
        /// Payload bytes published by this connection.
        pub bytes_in: u64,
        /// Messages delivered to this connection.
        pub msgs_out: u64,
        /// Payload bytes delivered to this connection.
        pub bytes_out: u64,
        /// Bytes queued for this connection, not yet written to its socket.
        pub pending_bytes: u64,
        /// Messages dropped because this connection fell behind.
        pub dropped: u64,
    }

    /// Admin request: each live connection's round trip, as the daemon's
    /// pings measure it (one right after the handshake, then one every
    /// `ping_interval`). Reply: `Vec<ConnRtt>`, by id, paged as
    /// `$BUS.api.list` is. (A record of its own: `ConnInfo`'s fields are
    /// its wire format, and older clients read it.)
    pub const RTT: &str = "$BUS.api.rtt";

    /// One connection's round trip.
    #[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ConnRtt {
        /// Connection id.
        pub id: u64,
        /// Microseconds from the daemon's last answered ping to its pong
        /// (0: none answered yet). It includes what was queued ahead of
        /// the ping for that connection.
        pub rtt_us: u64,
    }

    /// Admin request: where the daemon's configuration came from. Reply:
    /// [`ConfigSource`].
    pub const CONFIG: &str = "$BUS.api.config";

    /// Where the running configuration came from, and when.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
    pub struct ConfigSource {
        /// The file read (`None`: the embedded defaults), before the flags.
        pub file: Option<String>,
        /// When it was read, milliseconds since the Unix epoch.
        pub loaded_at_ms: u64,
        /// Reloads (SIGHUP) taken since start.
        pub reloads: u64,
        /// Settings a reload changed in the file that take effect only at
        /// the next start (the running values stay).
        pub pending_restart: Vec<String>,
        /// Where Prometheus scrapes the daemon's metrics
        /// (`http://ADDR/metrics`, with the bound port; `None`: off).
        pub metrics: Option<String>,
    }

    /// Admin request: the most recently closed connections, oldest first
    /// (at most the daemon's `max_closed`). Reply: `Vec<ClosedConn>`, paged
    /// as `$BUS.api.list` is ([`Page::after`] counts records here).
    pub const CLOSED: &str = "$BUS.api.closed";

    /// A connection that has closed: what `list` showed of it last, when
    /// and why it ended (NATS `connz?state=closed`).
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct ClosedConn {
        /// The connection as it was when it closed (subscriptions included).
        pub conn: ConnInfo,
        /// When it closed, milliseconds since the Unix epoch.
        pub closed_at_ms: u64,
        /// Why.
        pub reason: CloseReason,
    }

    /// Admin request: the well-known names, by name, each with its owner
    /// and queue. Reply: `Vec<NameInfo>`, paged as `$BUS.api.closed` is.
    pub const NAMES: &str = "$BUS.api.names";
    /// Admin request: who owns the name that is the payload (a postcard
    /// string) now. Reply: [`NameOwnerReply`].
    pub const NAME_OWNER: &str = "$BUS.api.name_owner";
    /// Event: the primary owner of a name changed. Payload:
    /// [`NameOwnerChanged`]. Published for every change, in order.
    pub const EVENT_NAME_OWNER: &str = "$BUS.event.name.owner";

    /// Admin request: what the access policy denied since start, by
    /// principal and rule. Reply: `Vec<Denial>`.
    pub const DENIALS: &str = "$BUS.api.denials";
    /// Event (privileged): the access policy denied something. Payload:
    /// [`DeniedEvent`].
    pub const EVENT_DENIED: &str = "$BUS.event.denied";

    /// How often one rule denied one principal something.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct Denial {
        /// Who was denied: `uid 1000`, `tcp`, ...
        pub principal: String,
        /// The rule: the `[[permissions]]` entry, the list and the pattern
        /// (`uid 1000 publish_deny "root.>"`), or a built-in one.
        pub rule: String,
        /// Times since start.
        pub count: u64,
    }

    /// Payload of `$BUS.event.denied`.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct DeniedEvent {
        /// The connection denied.
        pub conn_id: u64,
        /// Who it is.
        pub principal: String,
        /// `publish`, `subscribe`, `own` or `call`.
        pub action: String,
        /// The subject, pattern or name.
        pub subject: String,
        /// The rule that denied it.
        pub rule: String,
    }

    /// Reply to `$BUS.api.name_owner`: the owner (`None`: nobody), or why
    /// the name could not be looked up.
    pub type NameOwnerReply = Result<Option<NameOwner>, (super::ErrorCode, String)>;

    /// A connection that owns, or waits for, a name.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct NameOwner {
        /// Its connection id.
        pub conn_id: u64,
        /// Its client name.
        pub client: String,
        /// Who it is.
        pub peer: Peer,
        /// The [`name_flags`](super::name_flags) it asked with.
        pub flags: u8,
    }

    /// A well-known name: its primary owner and the connections queued
    /// for it, in the order they will own it.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct NameInfo {
        /// The name.
        pub name: String,
        /// The primary owner.
        pub owner: NameOwner,
        /// Waiting, next first.
        pub queue: Vec<NameOwner>,
    }

    /// Payload of `$BUS.event.name.owner` (D-Bus `NameOwnerChanged`).
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct NameOwnerChanged {
        /// The name.
        pub name: String,
        /// Who owned it (`None`: nobody; the name is new).
        pub old: Option<NameOwner>,
        /// Who owns it now (`None`: nobody; the name is gone).
        pub new: Option<NameOwner>,
    }

    /// Daemon facts and totals, as `bus-cli info` shows them.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct ServerInfo {
        /// busd version.
        pub version: String,
        /// Protocol version.
        pub protocol: u16,
        /// Random id of this daemon instance.
        pub server_id: String,
        /// Listening addresses.
        pub listen: Vec<String>,
        /// Process id of the daemon.
        pub pid: i32,
        /// Milliseconds since start.
        pub uptime_ms: u64,
        /// Live connections.
        pub connections: u64,
        /// Connections accepted since start.
        pub total_connections: u64,
        /// Live subscriptions.
        pub subscriptions: u64,
        /// Messages published since start.
        pub msgs_in: u64,
        /// Messages delivered since start.
        pub msgs_out: u64,
        /// Payload bytes published since start.
        pub bytes_in: u64,
        /// Payload bytes delivered since start.
        pub bytes_out: u64,
        /// Messages dropped for slow consumers since start.
        pub dropped: u64,
        /// Effective limits, as (name, value) pairs.
        pub limits: Vec<(String, u64)>,
        /// Resident memory of the daemon process, in bytes (0 if unknown).
        pub rss_bytes: u64,
        /// Times each limit or policy refused something since start, as
        /// (limit name, count); `permission_denied` counts policy refusals.
        pub refused: Vec<(String, u64)>,
        /// This daemon's node id (bridging).
        pub node_id: String,
        /// Bridge links, configured or accepted.
        pub bridges: Vec<BridgeInfo>,
        /// CPU time the daemon process has used since start, user + system,
        /// in microseconds (0 if unknown). `bus-cli bench` divides its growth
        /// by the messages a run delivered.
        pub cpu_us: u64,
        /// The NATS upstream, if one is configured.
        pub upstream: Option<UpstreamInfo>,
    }

    /// The NATS upstream link: its configuration, state and counters.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
    pub struct UpstreamInfo {
        /// The servers configured (`[upstream] urls`, `--upstream`).
        pub urls: Vec<String>,
        /// The server connected to now (`host:port`; empty while down).
        pub server: String,
        /// The connected server's name, as it reports it.
        pub server_name: String,
        /// `up`, `connecting` or `down`.
        pub state: String,
        /// Patterns of local subjects that go up.
        pub export: Vec<String>,
        /// Patterns of upstream subjects that may come down.
        pub import: Vec<String>,
        /// `upstream_buffer`: bytes held for the upstream before drops.
        pub buffer_limit: u64,
        /// Messages received from the upstream and delivered here.
        pub msgs_in: u64,
        /// Messages sent up.
        pub msgs_out: u64,
        /// Bytes of messages waiting to go up.
        pub buffered_bytes: u64,
        /// Messages given up: the buffer was full, the server refused one
        /// (too large), or the client fell behind the server.
        pub dropped: u64,
        /// Upstream subscriptions: one per distinct local pattern (and
        /// queue group) within `import`, plus one for replies.
        pub subscriptions: u64,
        /// Times the link came up.
        pub connects: u64,
    }

    /// Event: the upstream link came up. Payload: [`UpstreamInfo`].
    pub const EVENT_UPSTREAM_UP: &str = "$BUS.event.upstream.up";
    /// Event: the upstream link went down. Payload: [`UpstreamInfo`].
    pub const EVENT_UPSTREAM_DOWN: &str = "$BUS.event.upstream.down";

    /// One bridge link to another daemon.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct BridgeInfo {
        /// The remote daemon's node id (empty until first connected).
        pub node: String,
        /// The remote address this side dials, or the peer address it accepted.
        pub address: String,
        /// `up`, `connecting` or `down`.
        pub state: String,
        /// True if this side dials (`--bridge`), false if it accepted.
        pub outbound: bool,
        /// Messages received over the link.
        pub msgs_in: u64,
        /// Messages sent over the link.
        pub msgs_out: u64,
        /// Bytes of messages waiting for the link (held while it is down).
        pub buffered_bytes: u64,
        /// Messages dropped for this link (buffer full or held too long).
        pub dropped: u64,
    }

    /// Event: a bridge link came up. Payload: [`BridgeInfo`].
    pub const EVENT_BRIDGE_UP: &str = "$BUS.event.bridge.up";
    /// Event: a bridge link went down. Payload: [`BridgeInfo`].
    pub const EVENT_BRIDGE_DOWN: &str = "$BUS.event.bridge.down";

    /// Why a connection ended.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum CloseReason {
        /// The client closed its end.
        End,
        /// A protocol or I/O error.
        Error(String),
        /// Handshake timeout or missed pings.
        Timeout,
        /// Missed pings while output was stuck behind an unread socket.
        SlowConsumer,
        /// The daemon is shutting down.
        Shutdown,
        /// Closed by an administrator's `$BUS.api.kick` from connection `by`.
        Kicked {
            /// Connection id that sent the kick.
            by: u64,
        },
    }

    impl std::fmt::Display for CloseReason {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::End => f.write_str("end"),
                Self::Error(e) => write!(f, "error: {e}"),
                Self::Timeout => f.write_str("timeout"),
                Self::SlowConsumer => f.write_str("slow consumer"),
                Self::Shutdown => f.write_str("daemon shutdown"),
                Self::Kicked { by } => write!(f, "kicked by connection {by}"),
            }
        }
    }

    /// Payload of `$BUS.event.conn.open` / `.close`.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct ConnEvent {
        /// The connection as it was at the event.
        pub conn: ConnInfo,
        /// Set on close.
        pub reason: Option<CloseReason>,
    }
}

/// The bridge protocol between daemons, spoken after a `Hello` with
/// [`Role::Bridge`] was welcomed. Both directions use [`LinkFrame`](link::LinkFrame).
///
/// Each daemon floods a versioned [`NodeState`](link::NodeState) (its links and the subject
/// interest of its local subscribers) to every node; each keeps the newest
/// state per node, so all agree on the topology and on who wants what.
/// A message travels from its origin along the shortest-path tree rooted at
/// the origin (computed identically everywhere), and only into subtrees with
/// interest: no loops and no duplicates in any topology.
pub mod link {
    use serde::{Deserialize, Serialize};

    /// A subscription interest: a pattern, optionally in a queue group.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Interest {
        /// Subject pattern.
        pub pattern: String,
        /// Queue group.
        pub queue: Option<String>,
    }

    /// What one node announces about itself; a newer `version` replaces an older one.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct NodeState {
        /// Node id.
        pub node: String,
        /// Increases with every change (microseconds since the epoch, so it
        /// also increases across restarts).
        pub version: u64,
        /// Node ids this node has bridge links with.
        pub links: Vec<String>,
        /// Distinct interests of its local subscribers.
        pub interest: Vec<Interest>,
    }

    /// A message crossing a link.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub struct Routed<'a> {
        /// Node where it was published (the root of its routing tree).
        pub origin: &'a str,
        /// Subject.
        pub subject: &'a str,
        /// Reply subject, for requests.
        pub reply_to: Option<&'a str>,
        /// Body.
        #[serde(with = "serde_bytes")]
        pub payload: &'a [u8],
        /// Queue groups without a member at the origin: (group, the node
        /// whose member gets it). Other nodes' members of these groups skip it.
        #[serde(borrow)]
        pub queue_targets: Vec<(&'a str, &'a str)>,
    }

    /// Frames on a bridge link, in both directions. Only appended to.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum LinkFrame<'a> {
        /// A node's state (flooded).
        State(NodeState),
        /// A routed message.
        #[serde(borrow)]
        Msg(Routed<'a>),
        /// Liveness probe.
        Ping,
        /// Answer to `Ping`.
        Pong,
        /// The sender is shutting down (version 4): send no more messages
        /// on this link (hold them as for a link that is down) and answer
        /// `Closed` after the last one written. The sender reads until
        /// then, so nothing written to it is lost.
        Closing,
        /// Answer to `Closing`: nothing more follows on this link.
        Closed,
        /// A routed message with headers (version 4): the header block as
        /// the publisher sent it, then the message. Read, no longer sent:
        /// `Sent` carries headers and the sender; builds of protocol 4
        /// before it sent this.
        HMsg(
            #[serde(with = "serde_bytes")] &'a [u8],
            #[serde(borrow)] Routed<'a>,
        ),
        /// `count` messages published on `origin` to `subject` were
        /// dropped on the way (a link that was down held no more): routed
        /// like such a message, it tells the subscribers it would have
        /// reached (`Lagged`, as for their own drops). Version 4.
        Lost {
            /// Node where they were published.
            origin: &'a str,
            /// Their subject.
            subject: &'a str,
            /// How many.
            count: u64,
        },
        /// A routed message with who published it at its origin, and its
        /// header block (empty: none); what a daemon of version 4 sends in
        /// place of `Msg` and `HMsg`.
        Sent(
            Origin,
            #[serde(with = "serde_bytes")] &'a [u8],
            #[serde(borrow)] Routed<'a>,
        ),
    }

    /// Who published a routed message, as the daemon it was published on
    /// (its `origin`) reports it.
    #[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Origin {
        /// The publisher's connection id on that daemon.
        pub conn_id: u64,
        /// Its user id, for a local peer there.
        pub uid: Option<u32>,
    }
}
