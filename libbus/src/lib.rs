//! # libbus
//!
//! The client library of **bus**, a local message bus, and the one definition
//! of its wire protocol (which `busd` uses too).
//!
//! ## Layout
//! - [`proto`]: every frame (`Hello`, `Pub`, `Sub`, `Msg`, `Lagged`, ...) and the
//!   admin/event records ([`proto::api`]).
//! - [`codec`]: 4-byte little-endian length + postcard body; limits checked
//!   before allocating.
//! - [`subject`]: subject and pattern validation (NATS conventions) and the
//!   reference matcher.
//! - [`addr`]: `unix:`, `tcp://` and `tls://` addresses and the default socket path.
//! - [`transport`]: Unix, TCP and TLS streams split into reader and writer; [`tls`]: rustls setup.
//! - [`client`]: [`Bus`], a cheap `Clone` handle over one connection, served by a
//!   driver (reader) task and a batching writer task.
//! - [`session`]: the handshake, each link's reader and writer, and
//!   reconnecting with backoff ([`Reconnect`]); [`events`] reports it.
//! - [`Subscription`]: a `Stream` of [`Message`]s that unsubscribes on drop;
//!   [`batch`]: taking all it has received at once, read in place.
//!
//! ## The path of one message
//! `bus.publish()` encodes a `Pub` frame into the connection's output buffer and
//! wakes the writer, which sends everything buffered in one `write`. The daemon
//! routes it and writes it to each subscriber's socket (a `Msg` frame, or
//! within a `Run` of publishes forwarded as they came); that client's
//! reader locates it in the receive buffer and hands the read's messages to
//! the subscription's channel in one batch; the [`Subscription`] makes each
//! [`Message`] (a slice of the buffer, no copy) as the application takes it.
//!
//! ## Example
//! ```no_run
//! use libbus::Bus;
//!
//! # async fn demo() -> libbus::Result<()> {
//! let bus = Bus::connect_default().await?;
//!
//! // A service: answer requests on "echo".
//! let mut service = bus.subscribe("echo").await?;
//! tokio::spawn(async move {
//!     while let Some(req) = service.next().await {
//!         let _ = req.respond(req.payload()).await;
//!     }
//! });
//!
//! // Publish / subscribe with wildcards.
//! let mut temps = bus.subscribe("sensors.*.temp").await?;
//! bus.publish("sensors.kitchen.temp", "21.5").await?;
//! let msg = temps.next().await.expect("connection open");
//! assert_eq!(msg.subject(), "sensors.kitchen.temp");
//!
//! // Request / reply.
//! let reply = bus.request("echo", "hello").await?;
//! assert_eq!(reply.payload(), b"hello");
//! bus.close().await?;
//! # Ok(()) }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod addr;
pub mod client;
pub mod codec;
pub mod error;
pub mod events;
mod input;
pub mod message;
mod options;
mod output;
pub mod proto;
mod same_head;
pub mod session;
pub mod subject;
pub mod subscription;
mod sync;
pub mod tls;
pub mod transport;
pub mod wire;

/// The batch types' first home; they live in [`message`] now.
pub mod batch {
    pub use crate::message::{Iter, MessageRef, Messages};
}

pub use addr::Address;
pub use bytes::Bytes;
pub use client::Bus;
pub use error::{Error, Result};
pub use events::{Event, Events};
pub use message::{Delivery, Message};
pub use message::{MessageRef, Messages};
pub use options::ConnectOptions;
pub use options::Reconnect;
pub use subscription::Subscription;
