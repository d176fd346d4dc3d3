//! Rate-limited logging for lines an attacker or a storm can trigger at
//! will (failed accepts, refused handshakes): a flood of them must not
//! become its own outage.

use std::sync::Mutex;

use crate::registry::lock;

/// Lets at most `per_second` lines through in each second of the daemon's
/// clock, and counts the ones it holds back.
#[derive(Debug)]
pub struct LogLimit {
    per_second: u32,
    /// (the second of the last line, lines let through in it, lines held
    /// back since the last one let through).
    state: Mutex<(u64, u32, u64)>,
}

impl LogLimit {
    /// A limit of `per_second` lines a second.
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: Mutex::new((0, 0, 0)),
        }
    }

    /// Whether a line may be logged at `now_ms` (milliseconds of the
    /// daemon's clock): `Some(held back)`, with how many lines were held back
    /// since the last one let through, or `None` to drop this one.
    ///
    /// ```
    /// let limit = busd::loglimit::LogLimit::new(2);
    /// assert_eq!(limit.allow(1_000), Some(0));
    /// assert_eq!(limit.allow(1_100), Some(0));
    /// assert_eq!(limit.allow(1_200), None);
    /// assert_eq!(limit.allow(2_000), Some(1));
    /// ```
    pub fn allow(&self, now_ms: u64) -> Option<u64> {
        let mut s = lock(&self.state);
        let second = now_ms / 1000;
        if s.0 != second {
            s.0 = second;
            s.1 = 0;
        }
        if s.1 >= self.per_second {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}
