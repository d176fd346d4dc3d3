//! How routing scales with the size of a queue group and with the
//! subscriptions one pattern has: the time of an uncached lookup (what a
//! publish costs after a subscription change, or for a subject no route
//! cache holds) and of removing every subscription, at 1,000 to 100,000.
//! A benchmark, not a test: run it in release and compare the rows.
//!
//! ```sh
//! cargo run --release -p busd --example router_scale
//! ```

use std::time::{Duration, Instant};

use busd::router::Router;

/// Lookups timed per size.
const LOOKUPS: u32 = 2000;

fn main() {
    println!(
        "{:>9}  {:>22}  {:>22}  {:>20}",
        "members", "group lookup (ns)", "plain lookup (ns)", "remove all (ms)"
    );
    for n in [1_000u64, 10_000, 100_000] {
        let router: Router<(u64, u64)> = Router::default();
        for i in 0..n {
            router.subscribe("jobs.*", Some("workers"), (1, i));
        }
        let group = time_lookups(&router);
        let plain_router: Router<(u64, u64)> = Router::default();
        for i in 0..n {
            plain_router.subscribe("jobs.*", None, (1, i));
        }
        let plain = time_lookups(&plain_router);
        let start = Instant::now();
        plain_router.unsubscribe((0..n).map(|i| ("jobs.*", None, (1, i))));
        let removed = start.elapsed();
        assert!(plain_router.is_empty());
        println!(
            "{n:>9}  {:>22.0}  {:>22.0}  {:>20.2}",
            ns(group),
            ns(plain),
            removed.as_secs_f64() * 1000.0
        );
    }
}

/// Mean time of one uncached lookup of a subject the group matches.
fn time_lookups(router: &Router<(u64, u64)>) -> Duration {
    let start = Instant::now();
    let mut members = 0;
    for i in 0..LOOKUPS {
        let routes = router.lookup_uncached(if i % 2 == 0 { "jobs.a" } else { "jobs.b" });
        members += routes.plain.len() + routes.groups.iter().map(|(_, m)| m.len()).sum::<usize>();
    }
    assert!(members > 0);
    start.elapsed() / LOOKUPS
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}
