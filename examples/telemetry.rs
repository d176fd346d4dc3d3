//! Metrics publishers and a wildcard aggregator.
//!
//! Run (with `busd` running):
//!     cargo run -p bus-examples --example telemetry -- aggregate
//!     cargo run -p bus-examples --example telemetry -- publish web1
//!     cargo run -p bus-examples --example telemetry -- publish web2
//!
//! Publishers send `telemetry.<host>.<metric>` with a postcard-encoded
//! `Sample`; the aggregator subscribes to `telemetry.>` and prints per-metric
//! averages every two seconds. An optional count bounds the run:
//! `publish web1 20` sends 20 rounds and exits.

use std::{collections::BTreeMap, time::Duration};

use libbus::{Bus, ConnectOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Sample {
    value: f64,
    unix_ms: u64,
}

#[tokio::main]
async fn main() -> libbus::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = libbus::Address::from_env()?;
    match args.first().map(String::as_str) {
        Some("publish") => {
            let host = args.get(1).cloned().unwrap_or_else(|| "host1".into());
            let rounds: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(u64::MAX);
            let bus = Bus::connect_with(
                &address,
                ConnectOptions::default().name(format!("telemetry:{host}")),
            )
            .await?;
            for round in 0..rounds {
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let cpu = 20.0 + (round % 10) as f64 * 3.0;
                let mem = 512.0 + (round % 7) as f64 * 16.0;
                bus.publish_value(&format!("telemetry.{host}.cpu"), &Sample { value: cpu, unix_ms })
                    .await?;
                bus.publish_value(&format!("telemetry.{host}.mem"), &Sample { value: mem, unix_ms })
                    .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            bus.close().await
        }
        Some("aggregate") => {
            let bus =
                Bus::connect_with(&address, ConnectOptions::default().name("telemetry:aggregator")).await?;
            let mut samples = bus.subscribe("telemetry.>").await?;
            let mut window: BTreeMap<String, (f64, u64)> = BTreeMap::new();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tokio::select! {
                    m = samples.next() => {
                        let Some(m) = m else { return Err(bus.disconnected_error()) };
                        let Ok(s) = m.decode::<Sample>() else { continue };
                        let e = window.entry(m.subject().to_owned()).or_default();
                        e.0 += s.value;
                        e.1 += 1;
                    }
                    _ = tick.tick() => {
                        for (subject, (sum, n)) in std::mem::take(&mut window) {
                            println!("{subject:<28} avg {:>8.2} over {n} samples", sum / n as f64);
                        }
                        println!("--");
                    }
                }
            }
        }
        _ => {
            eprintln!("usage: telemetry publish HOST [ROUNDS] | telemetry aggregate");
            std::process::exit(2);
        }
    }
}
