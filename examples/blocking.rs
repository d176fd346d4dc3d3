//! The blocking client, in a program with no async runtime: a thread
//! answers requests on `demo.upper`, and the main thread calls it.
//!
//! Run (with `busd` running):
//!     cargo run -p bus-examples --example blocking

use libbus::blocking::Bus;

fn main() -> libbus::Result<()> {
    let bus = Bus::connect_default()?;
    let requests = bus.subscribe("demo.upper")?;
    let service = bus.clone();
    let worker = std::thread::spawn(move || {
        // Ends when the connection closes.
        for req in requests.iter() {
            let text = String::from_utf8_lossy(req.payload()).to_uppercase();
            if service.respond(&req, text).is_err() {
                break;
            }
        }
    });
    for word in ["hello", "from", "a", "plain", "thread"] {
        let reply = bus.request("demo.upper", word)?;
        println!("{word} -> {}", String::from_utf8_lossy(reply.payload()));
    }
    bus.close()?;
    let _ = worker.join();
    Ok(())
}
