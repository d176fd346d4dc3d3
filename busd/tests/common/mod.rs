//! Shared by the tests that run the `busd` binary: bounded waits and
//! bus-level probes. Each test file uses a subset.
#![allow(dead_code)]

use std::{future::Future, time::Duration};

use libbus::{proto::api, Bus, Error};

/// The daemon binary under test.
pub const BUSD: &str = env!("CARGO_BIN_EXE_busd");

/// Upper bound for any single wait.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The daemon's `$BUS.api.info`.
pub async fn info(bus: &Bus) -> api::ServerInfo {
    within("info", bus.request(api::INFO, []))
        .await
        .expect("info")
        .decode()
        .expect("decode info")
}

/// Waits (bounded) until a request on `subject` from `bus` is answered:
/// across bridges, that means routes and interest have converged.
pub async fn until_answered(bus: &Bus, subject: &str) {
    within("a responder on the other side", async {
        loop {
            match bus
                .request_with_timeout(subject, "", Duration::from_millis(500))
                .await
            {
                Ok(_) => break,
                Err(Error::NoResponders { .. } | Error::Timeout(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("request {subject}: {e}"),
            }
        }
    })
    .await;
}
