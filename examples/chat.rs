//! Terminal chat in rooms: messages on `chat.<room>`, join/leave from the
//! daemon's lifecycle events (`$BUS.event.conn.*`).
//!
//! Run (in several terminals, with `busd` running):
//!     cargo run -p bus-examples --example chat -- lobby alice
//!     cargo run -p bus-examples --example chat -- lobby bob

use libbus::{
    proto::api::{self, ConnEvent},
    Bus, ConnectOptions,
};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> libbus::Result<()> {
    let mut args = std::env::args().skip(1);
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let nick = args
        .next()
        .unwrap_or_else(|| format!("user{}", std::process::id()));
    let subject = format!("chat.{room}");

    // The client name carries room and nick, so others see who joins and leaves.
    let name = format!("chat:{room}:{nick}");
    let bus = Bus::connect_with(
        &libbus::Address::from_env()?,
        ConnectOptions::default().name(&name),
    )
    .await?;
    let mut messages = bus.subscribe(&subject).await?;
    let mut events = bus.subscribe("$BUS.event.conn.>").await?;
    bus.publish(&subject, format!("* {nick} is here")).await?;
    println!("joined #{room} as {nick}; type messages, Ctrl-D to leave");

    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line? {
                Some(text) if !text.trim().is_empty() => bus.publish(&subject, format!("{nick}: {text}")).await?,
                Some(_) => {}
                None => break,
            },
            Some(m) = messages.next() => println!("{}", String::from_utf8_lossy(m.payload())),
            Some(e) = events.next() => {
                let Ok(ev) = e.decode::<ConnEvent>() else { continue };
                let Some(rest) = ev.conn.name.strip_prefix(&format!("chat:{room}:")) else { continue };
                if rest == nick {
                    continue;
                }
                if e.subject() == api::EVENT_CONN_CLOSE {
                    println!("* {rest} left ({})", ev.reason.map(|r| r.to_string()).unwrap_or_default());
                } else {
                    println!("* {rest} joined");
                }
            }
        }
    }
    bus.close().await
}
