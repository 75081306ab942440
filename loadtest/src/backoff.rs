//! Backoff arithmetic, pure (no I/O, no clock, no randomness of its own: callers pass the
//! jitter): the reconnect budget of one socket, and the bounded retry schedule of socket
//! commands and REST calls that the hub answered with "try again".

use std::time::Duration;

/// A session that stayed up this long after `auth` and `subscribe` succeeded counts as
/// *stable*: losing it starts the reconnect budget afresh. Long enough that a hub which accepts
/// sockets and drops them again within seconds (a crash loop, 4408/4409 flapping) still spends
/// the budget and the socket gives up; short next to any real run.
pub const STABLE_SESSION: Duration = Duration::from_secs(10);
/// First reconnect delay; it doubles per consecutive failure.
const RECONNECT_BASE: Duration = Duration::from_millis(500);
/// Largest reconnect delay before jitter (the protocol's advice).
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// `base × 2^(n-1)`, at most `cap`, times `jitter` (the callers draw it from 0.5..1.5).
pub fn exp_delay(base: Duration, cap: Duration, n: u32, jitter: f64) -> Duration {
    let doubled = base.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    doubled.min(cap).mul_f64(jitter.max(0.0))
}

/// Reconnect policy of one socket: exponential backoff with jitter, at most `max` consecutive
/// failed attempts. An attempt fails when the socket cannot connect, authenticate and
/// subscribe, or when the session it opened is lost before it was [stable](STABLE_SESSION).
/// Losing a stable session is a failure too (the socket has to reconnect), but the count
/// before it is forgotten: `max` bounds consecutive failures, not the reconnects of a run.
#[derive(Debug, Clone)]
pub struct Reconnect {
    max: u32,
    failures: u32,
}

impl Reconnect {
    pub fn new(max: u32) -> Self {
        Reconnect { max, failures: 0 }
    }

    /// A session that had authenticated and subscribed ended after `lasted`. Returns whether
    /// it was stable (and so reset the budget).
    pub fn session_ended(&mut self, lasted: Duration) -> bool {
        let stable = lasted >= STABLE_SESSION;
        if stable {
            self.failures = 0;
        }
        stable
    }

    /// One more failure: the wait before the next attempt, or `None` when `max` consecutive
    /// failures are spent and the socket should give up. A `Retry-After` the hub sent (a 503
    /// on the upgrade) is a floor for the wait.
    pub fn failed(&mut self, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
        self.failures += 1;
        if self.failures > self.max {
            return None;
        }
        let d = exp_delay(RECONNECT_BASE, RECONNECT_CAP, self.failures, jitter);
        Some(retry_after.map_or(d, |r| d.max(r)))
    }
}

/// How often, and how patiently, one call is retried after a "try again" answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Retries after the first attempt.
    pub retries: u32,
    /// Wait before the first retry when the hub did not say how long; doubles per retry.
    pub base: Duration,
    /// Largest such wait (before jitter).
    pub cap: Duration,
    /// A `Retry-After` longer than this is not waited for: the call fails as it is.
    pub longest_wait: Duration,
}

impl Retry {
    /// Setup calls (account creation, logins, products).
    pub const SETUP: Retry = Retry {
        retries: 3,
        base: Duration::from_millis(500),
        cap: Duration::from_secs(4),
        longest_wait: Duration::from_secs(10),
    };
    /// `POST /api/orders` in the load phase (the same `Idempotency-Key` on every attempt).
    /// Five retries span about 8 s (4–12 s with jitter) without a `Retry-After`: long enough
    /// to ride out a hub restart or a short database outage.
    pub const ORDER: Retry = Retry {
        retries: 5,
        base: Duration::from_millis(250),
        cap: Duration::from_secs(4),
        longest_wait: Duration::from_secs(10),
    };
    /// `GET /api/orders/{id}` in the drain's check.
    pub const CHECK: Retry = Retry {
        retries: 3,
        base: Duration::from_millis(250),
        cap: Duration::from_secs(2),
        longest_wait: Duration::from_secs(5),
    };
    /// A socket `transition` answered with `unavailable` or `internal`; as patient as
    /// [`Retry::ORDER`].
    pub const COMMAND: Retry = Retry {
        retries: 5,
        base: Duration::from_millis(250),
        cap: Duration::from_secs(4),
        longest_wait: Duration::from_secs(10),
    };

    /// The wait before retry number `n` (1-based), or `None` when there is no such retry:
    /// the budget is spent, or the hub asked for a longer wait than `longest_wait`. With a
    /// `Retry-After` the wait is never shorter than it, and up to half again longer so that
    /// callers told the same thing do not all come back in the same instant.
    pub fn delay(&self, n: u32, jitter: f64, retry_after: Option<Duration>) -> Option<Duration> {
        if n == 0 || n > self.retries {
            return None;
        }
        match retry_after {
            Some(r) if r > self.longest_wait => None,
            Some(r) => Some(r + r.mul_f64(((jitter - 0.5) * 0.5).clamp(0.0, 0.5))),
            None => Some(exp_delay(self.base, self.cap, n, jitter)),
        }
    }
}

/// A random jitter factor in 0.5..1.5.
pub fn jitter() -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range(0.5..1.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn reconnect_delays_double_up_to_the_cap() {
        let mut r = Reconnect::new(10);
        let waits: Vec<Duration> = (0..8).map(|_| r.failed(1.0, None).unwrap()).collect();
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], S);
        assert_eq!(waits[2], 2 * S);
        assert_eq!(waits[6], 30 * S);
        assert_eq!(waits[7], 30 * S);
        let mut r = Reconnect::new(10);
        assert_eq!(r.failed(0.5, None), Some(Duration::from_millis(250)));
        assert_eq!(r.failed(1.5, None), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn reconnect_gives_up_after_max_consecutive_failures() {
        let mut r = Reconnect::new(3);
        assert!(r.failed(1.0, None).is_some());
        assert!(r.failed(1.0, None).is_some());
        assert!(r.failed(1.0, None).is_some());
        assert_eq!(r.failed(1.0, None), None);
        let mut r = Reconnect::new(0);
        assert_eq!(r.failed(1.0, None), None);
    }

    #[test]
    fn stable_session_resets_the_budget() {
        let mut r = Reconnect::new(3);
        // two failed connects, then a session that stayed up
        r.failed(1.0, None);
        r.failed(1.0, None);
        assert!(r.session_ended(STABLE_SESSION));
        // losing it starts again from the first delay, with the whole budget
        assert_eq!(r.failed(1.0, None), Some(Duration::from_millis(500)));
        assert!(r.failed(1.0, None).is_some());
        assert!(r.failed(1.0, None).is_some());
        assert_eq!(r.failed(1.0, None), None);
    }

    #[test]
    fn short_sessions_keep_counting() {
        // a hub that accepts and drops every socket within seconds must not keep it alive
        let mut r = Reconnect::new(3);
        let mut attempts = 0;
        loop {
            assert!(!r.session_ended(STABLE_SESSION - Duration::from_millis(1)));
            if r.failed(1.0, None).is_none() {
                break;
            }
            attempts += 1;
            assert!(attempts < 100);
        }
        assert_eq!(attempts, 3);
    }

    #[test]
    fn many_stable_sessions_never_give_up() {
        let mut r = Reconnect::new(2);
        for _ in 0..100 {
            r.session_ended(Duration::from_secs(60));
            assert!(r.failed(1.0, None).is_some());
            assert!(r.failed(1.0, None).is_some()); // one failed reconnect in between
        }
    }

    #[test]
    fn reconnect_honours_retry_after() {
        let mut r = Reconnect::new(5);
        assert_eq!(r.failed(1.0, Some(5 * S)), Some(5 * S));
        // a Retry-After shorter than the backoff does not shorten it
        assert_eq!(r.failed(1.0, Some(Duration::ZERO)), Some(S));
    }

    #[test]
    fn retry_schedule() {
        let p = Retry::COMMAND;
        assert_eq!(p.delay(0, 1.0, None), None);
        assert_eq!(p.delay(1, 1.0, None), Some(Duration::from_millis(250)));
        assert_eq!(p.delay(2, 1.0, None), Some(Duration::from_millis(500)));
        assert_eq!(p.delay(3, 1.0, None), Some(S));
        assert_eq!(p.delay(5, 1.0, None), Some(4 * S));
        assert_eq!(p.delay(6, 1.0, None), None);
        let capped = Retry { retries: 10, ..p };
        assert_eq!(capped.delay(8, 1.0, None), Some(4 * S));
    }

    #[test]
    fn retry_after_is_a_floor_and_bounded() {
        let p = Retry::ORDER;
        for j in [0.5, 0.7, 1.0, 1.2, 1.4999] {
            let d = p.delay(1, j, Some(2 * S)).unwrap();
            assert!(d >= 2 * S && d <= 3 * S, "{d:?}");
        }
        assert_eq!(p.delay(1, 0.5, Some(2 * S)), Some(2 * S));
        // longer than the policy is willing to wait: give up instead of retrying early
        assert_eq!(p.delay(1, 1.0, Some(60 * S)), None);
        assert_eq!(p.delay(p.retries + 1, 1.0, Some(S)), None);
    }
}
