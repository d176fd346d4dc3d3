//! What the test harnesses share: every wait is bounded by [`WAIT`]
//! ([`within`]), and waiting for a condition polls it ([`until`]) rather
//! than sleeping a fixed time. Plus the probes several suites need:
//! [`info`] and [`until_answered`].

use std::{future::Future, time::Duration};

use libbus::{proto::api, Bus, Error};

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(30);

/// How often [`until`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
///
/// ```no_run
/// # async fn f(bus: libbus::Bus) {
/// let reply = bus_test_support::within("echo", bus.request("echo", "hi")).await;
/// # }
/// ```
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` every [`POLL`] until it holds, failing the test after
/// [`WAIT`].
///
/// ```no_run
/// # async fn f(bus: libbus::Bus) {
/// bus_test_support::until("a second connection", || async {
///     bus_test_support::info(&bus).await.connections >= 2
/// })
/// .await;
/// # }
/// ```
pub async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !condition().await {
            tokio::time::sleep(POLL).await;
        }
    })
    .await;
}

/// The daemon's `$BUS.api.info`, through `bus`.
pub async fn info(bus: &Bus) -> api::ServerInfo {
    within("info", bus.request(api::INFO, []))
        .await
        .expect("info request")
        .decode()
        .expect("info decodes")
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
                Err(Error::NoResponders { .. } | Error::Timeout(_)) => tokio::time::sleep(POLL).await,
                Err(e) => panic!("request {subject}: {e}"),
            }
        }
    })
    .await;
}
