//! # libbus
//!
//! The client library of **bus**, a local message bus, and the one definition
//! of its wire protocol (which `busd` uses too).
//!
//! ## Layout
//! - [`proto`]: every frame (`Hello`, `Pub`, `Sub`, `Msg`, `Run`, `Lagged`,
//!   ...) as serde types, and the admin/event records ([`proto::api`]).
//! - [`wire`]: every hand-written encoding and decoding of the hot path,
//!   pinned to postcard; [`codec`]: framing only (length prefix, whole
//!   frames, the reader; limits checked before allocating).
//! - [`client`]: [`Bus`], the public API; [`ConnectOptions`] and
//!   [`Reconnect`] say how it behaves; [`blocking`]: the same, for
//!   programs without an async runtime.
//! - `output`: the buffer every call encodes into, and the writer task;
//!   `input`: the reader task and delivery; [`session`]: dial, handshake,
//!   reconnect ([`events`] reports it).
//! - [`message`]: [`Message`], [`Messages`], [`MessageRef`];
//!   [`Subscription`]: a `Stream` of messages that unsubscribes on drop.
//! - [`names`]: well-known names ([`Bus::request_name`], [`Name`]) and
//!   calls to their owners ([`Bus::call`]).
//! - [`subject`]: subject and pattern validation (NATS conventions);
//!   [`addr`], [`transport`], [`tls`]: addresses and sockets; `sys`:
//!   libbus's only `unsafe` (`recvmsg` with the descriptors sent along,
//!   and mapping a sealed memfd payload read-only).
//!
//! ## The path of one message
//! 1. `client.rs` [`Bus::publish`] → `output.rs` `Output::publish` →
//!    `Output::put`, which validates the subject and encodes the `Pub` frame
//!    into the output buffer (`wire.rs` `Encoder::encode`, [`wire::encode_pub`]);
//!    `output.rs` `write_loop` sends the whole buffer in one `write` (a
//!    request or reply that finds the output idle is written by its
//!    caller, in `Output::buffer`).
//! 2. The daemon routes it and writes it to each subscriber's socket, within
//!    a `Run` of publishes forwarded as they came, or as a `Msg`.
//! 3. `input.rs` `read_loop` → `handle_frame` finds the `Run`
//!    ([`wire::raw_run`]) or `Msg` ([`wire::raw_msg`]) in the receive buffer,
//!    and `Input::deliver_all` hands each subscription one batch per read.
//! 4. `subscription.rs` [`Subscription::next`] → `message.rs`
//!    `Messages::take` decodes the next frame and `Message::found_in` makes
//!    the [`Message`], a slice of the receive buffer (no copy).
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
pub mod blocking;
pub mod client;
pub mod codec;
pub mod error;
pub mod events;
pub mod headers;
mod input;
pub mod message;
pub mod names;
mod options;
mod output;
pub mod proto;
pub mod session;
pub mod subject;
pub mod subscription;
mod sync;
pub(crate) mod sys;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport;
pub mod wire;

/// The batch types' first home; they live in [`message`] now.
pub mod batch {
    pub use crate::message::{Iter, MessageRef, Messages};
}

pub use addr::Address;
pub use bytes::Bytes;
pub use client::{Bus, SubscribeOptions};
pub use error::{Error, Result};
pub use events::{Event, Events};
pub use headers::Headers;
pub use message::{Delivery, Message};
pub use message::{MessageRef, Messages};
pub use names::{Name, NameFlags, NameReply, NameState};
pub use options::ConnectOptions;
pub use options::Reconnect;
pub use subscription::Subscription;
