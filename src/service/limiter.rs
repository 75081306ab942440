//! The failed-login limiter: at most [`MAX_FAILURES`] failures per account and per client
//! address in a sliding [`WINDOW`].
//!
//! An attempt is registered *before* the code is checked and resolved afterwards. For an
//! account, failures plus attempts in progress may not exceed [`MAX_FAILURES`], so concurrent
//! guesses cannot slip past the count. For an address, at most [`ADDRESS_IN_FLIGHT`] attempts
//! may be in progress at once on top of its failures, so that many users behind one address can
//! log in together while a burst from one address is still bounded. An attempt that never
//! resolves (an error, or the client hanging up mid-check) counts as a failure.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::Error;

pub const MAX_FAILURES: usize = 5;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
pub const ADDRESS_IN_FLIGHT: usize = 32;
/// Expired keys are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Key {
    failures: VecDeque<Instant>,
    in_flight: usize,
}

impl Key {
    fn expire(&mut self, now: Instant) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.failures.pop_front();
        }
    }

    fn retry_after(&self, now: Instant) -> u64 {
        match self.failures.front() {
            Some(oldest) if self.failures.len() >= MAX_FAILURES => WINDOW
                .saturating_sub(now.duration_since(*oldest))
                .as_secs()
                .max(1),
            _ => 1, // only attempts in progress stand in the way
        }
    }
}

pub struct LoginLimiter {
    keys: Mutex<HashMap<String, Key>>,
    last_sweep: Mutex<Instant>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            last_sweep: Mutex::new(Instant::now()),
        }
    }
}

impl LoginLimiter {
    /// Registers an attempt, or refuses with `RateLimited` (registering nothing).
    pub fn begin(&self, account: String, address: String) -> Result<Attempt<'_>, Error> {
        let now = Instant::now();
        self.maybe_sweep(now);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let acc = keys.entry(account.clone()).or_default();
        acc.expire(now);
        if acc.failures.len() + acc.in_flight >= MAX_FAILURES {
            return Err(Error::RateLimited {
                retry_after_s: acc.retry_after(now),
            });
        }
        let addr = keys.entry(address.clone()).or_default();
        addr.expire(now);
        if addr.failures.len() >= MAX_FAILURES || addr.in_flight >= ADDRESS_IN_FLIGHT {
            return Err(Error::RateLimited {
                retry_after_s: addr.retry_after(now),
            });
        }
        addr.in_flight += 1;
        if let Some(acc) = keys.get_mut(&account) {
            acc.in_flight += 1;
        }
        Ok(Attempt {
            limiter: self,
            account,
            address,
            resolved: false,
        })
    }

    fn finish(&self, a: &Attempt<'_>, failed: bool) {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for k in [&a.account, &a.address] {
            let key = keys.entry(k.clone()).or_default();
            key.in_flight = key.in_flight.saturating_sub(1);
            if failed {
                key.failures.push_back(now);
            }
        }
    }

    fn maybe_sweep(&self, now: Instant) {
        let Ok(mut last) = self.last_sweep.try_lock() else {
            return;
        };
        if now.duration_since(*last) < SWEEP_EVERY {
            return;
        }
        *last = now;
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, k| {
            k.expire(now);
            k.in_flight > 0 || !k.failures.is_empty()
        });
    }
}

/// A login attempt in progress. Dropping it without [`Attempt::succeeded`] counts a failure.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    account: String,
    address: String,
    resolved: bool,
}

impl Attempt<'_> {
    pub fn succeeded(mut self) {
        self.resolved = true;
        self.limiter.finish(&self, false);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.limiter.finish(self, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(i: usize) -> (String, String) {
        (format!("account:{i}"), "ip:1.2.3.4".to_owned())
    }

    #[test]
    fn five_failures_lock_the_account_and_the_address() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES {
            let (a, ip) = keys(0);
            drop(l.begin(a, ip).unwrap()); // dropped unresolved = failed
        }
        let (a, ip) = keys(0);
        assert!(
            matches!(l.begin(a, ip), Err(Error::RateLimited { retry_after_s }) if retry_after_s > 800)
        );
        let (a, ip) = keys(1);
        assert!(l.begin(a, ip).is_err(), "the address is locked too");
        assert!(l.begin("account:1".into(), "ip:5.6.7.8".into()).is_ok());
    }

    #[test]
    fn concurrent_guesses_at_one_account_are_bounded() {
        let l = LoginLimiter::default();
        let held: Vec<_> = (0..MAX_FAILURES)
            .map(|i| l.begin("account:x".into(), format!("ip:{i}")).unwrap())
            .collect();
        assert!(matches!(
            l.begin("account:x".into(), "ip:9".into()),
            Err(Error::RateLimited { retry_after_s: 1 })
        ));
        for a in held {
            a.succeeded();
        }
        assert!(
            l.begin("account:x".into(), "ip:9".into()).is_ok(),
            "successes free the slots"
        );
    }

    #[test]
    fn many_users_behind_one_address_log_in_together() {
        let l = LoginLimiter::default();
        let held: Vec<_> = (0..ADDRESS_IN_FLIGHT)
            .map(|i| l.begin(format!("account:{i}"), "ip:nat".into()).unwrap())
            .collect();
        assert!(l.begin("account:last".into(), "ip:nat".into()).is_err());
        for a in held {
            a.succeeded();
        }
        assert!(l.begin("account:last".into(), "ip:nat".into()).is_ok());
    }
}
