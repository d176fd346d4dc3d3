//! A request/reply service in a queue group: run two copies and each request
//! is answered by exactly one of them.
//!
//! Run (with `busd` running), in two terminals:
//!     cargo run -p bus-examples --example echo_service
//! then:
//!     bus-cli request svc.echo hello

use libbus::{Bus, ConnectOptions};

#[tokio::main]
async fn main() -> libbus::Result<()> {
    let me = format!("echo-{}", std::process::id());
    let bus = Bus::connect_with(&libbus::Address::from_env()?, ConnectOptions::default().name(&me)).await?;
    let mut requests = bus.queue_subscribe("svc.echo", "echo").await?;
    println!("{me} serving svc.echo (queue group \"echo\"); Ctrl-C to stop");
    while let Some(req) = requests.next().await {
        let text = String::from_utf8_lossy(req.payload());
        println!("request: {text}");
        req.respond(format!("{me}: {text}")).await?;
    }
    Err(bus.disconnected_error())
}
