//! Login and sign-up limiting. The policy and its arithmetic are in `docs/security.md`; in
//! short, a failed login counts against three keys:
//!
//! - the **pair** (account, address): 5 failures per 15 minutes and 20 per 24 hours. This is
//!   what a typo hits; it never blocks the same account elsewhere nor another account here.
//! - the **address**: [`LoginPolicy::address_failures`] per 15 minutes (high: an office behind
//!   one NAT shares it) and at most [`ADDRESS_IN_FLIGHT`] checks at once.
//! - the **account**, across all addresses: [`LoginPolicy::account_budget`] failures per 24
//!   hours. It bounds what an attacker with many addresses gets, and it does not apply to
//!   addresses *trusted* for the account (a success there within 30 days, at most
//!   [`TRUSTED_PER_ACCOUNT`] of them), so a stranger's failures never lock the right person out
//!   on their own address.
//!
//! An attempt is registered *before* the code is checked, so concurrent guesses cannot slip past
//! a count, and resolved afterwards; an attempt that is dropped unresolved (an error, or the
//! client hanging up mid-check) counts as a failure, unless the hub abandons it because it
//! never checked the code (busy, database down).
//!
//! Memory is bounded: account keys exist only for real accounts; address and pair keys are
//! created only for attempts that are let through, capped at [`LoginPolicy::max_keys`] each,
//! and the least recently used go first — except the pair keys of trusted addresses, which are
//! what bounds guesses from them. Evicting any other key can only hand an attacker back
//! guesses that the account budget (never evicted) still bounds.
//!
//! Counters are sliding-window estimates over two fixed windows (O(1) memory per key): in any
//! fixed window a key never exceeds its limit.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::domain::Role;
use crate::error::Error;

pub const PAIR_FAILURES: u32 = 5;
pub const PAIR_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const PAIR_DAILY_FAILURES: u32 = 20;
pub const DAY: Duration = Duration::from_secs(24 * 60 * 60);
pub const ADDRESS_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const ADDRESS_IN_FLIGHT: u32 = 32;
pub const TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 60 * 60);
pub const TRUSTED_PER_ACCOUNT: usize = 4;
pub const SIGNUP_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Expired keys are swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The knobs of the login policy (see `Config`).
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    /// Failures per account per 24 h from addresses not trusted for it.
    pub account_budget: u32,
    /// Failures per address per 15 min, across accounts.
    pub address_failures: u32,
    /// Most address keys and most pair keys kept (each).
    pub max_keys: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            account_budget: 200,
            address_failures: 100,
            max_keys: 100_000,
        }
    }
}

pub type AccountKey = (Role, Uuid);
type PairKey = (AccountKey, IpKey);

/// A client address as the limiter sees it: IPv4 as is, IPv6 by its /64 (one host usually
/// owns a whole /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(u128);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> Self {
        // IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d.
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey(u32::from(v4) as u128),
            IpAddr::V6(v6) => IpKey((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
        }
    }
}

/// A sliding-window estimate over two fixed windows.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    prev: u32,
    curr: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            prev: 0,
            curr: 0,
        }
    }

    fn roll(&mut self, now: Instant, w: Duration) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= 2 * w {
            *self = Self::new(now);
        } else if elapsed >= w {
            self.prev = self.curr;
            self.curr = 0;
            self.start += w;
        }
    }

    fn estimate(&mut self, now: Instant, w: Duration) -> f64 {
        self.roll(now, w);
        let into = now.saturating_duration_since(self.start).as_secs_f64() / w.as_secs_f64();
        self.prev as f64 * (1.0 - into).max(0.0) + self.curr as f64
    }

    /// Seconds until the estimate drops below `limit` (at least 1).
    fn retry_after(&mut self, now: Instant, w: Duration, limit: u32) -> u64 {
        self.roll(now, w);
        let into = now.saturating_duration_since(self.start).as_secs_f64();
        let w_s = w.as_secs_f64();
        let secs = if self.curr >= limit {
            // This window is full; in the next one `curr` becomes `prev` and decays:
            // curr·(1 − t/w) < limit  ⇔  t > w·(1 − limit/curr).
            (w_s - into) + w_s * (1.0 - f64::from(limit) / f64::from(self.curr))
        } else if self.prev == 0 {
            0.0 // only attempts in progress stand in the way
        } else {
            // prev·(1 − t/w) + curr < limit  ⇔  t > w·(1 − (limit − curr)/prev)
            let t = w_s * (1.0 - f64::from(limit - self.curr) / f64::from(self.prev));
            (t - into).max(0.0)
        };
        (secs.ceil() as u64).max(1)
    }

    fn add(&mut self, now: Instant, w: Duration) {
        self.roll(now, w);
        self.curr += 1;
    }

    fn idle(&self, now: Instant, w: Duration) -> bool {
        now.saturating_duration_since(self.start) >= 2 * w
    }
}

#[derive(Debug)]
struct Counter {
    windows: [Window; 2],
    in_flight: u32,
    last: Instant,
}

impl Counter {
    fn new(now: Instant) -> Self {
        Self {
            windows: [Window::new(now); 2],
            in_flight: 0,
            last: now,
        }
    }
}

/// A map of counters that keeps at most `cap` keys, dropping the least recently used.
struct Bounded<K> {
    map: HashMap<K, Counter>,
    cap: usize,
}

impl<K: Eq + Hash + Copy> Bounded<K> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(16),
        }
    }

    fn get(&mut self, k: K, now: Instant) -> &mut Counter {
        self.get_keeping(k, now, |_| false)
    }

    /// The counter of `k`, created if need be; when the map is full, the least recently used
    /// keys go first, except those `keep` protects.
    fn get_keeping(&mut self, k: K, now: Instant, keep: impl Fn(&K) -> bool) -> &mut Counter {
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            self.evict(keep);
        }
        let c = self.map.entry(k).or_insert_with(|| Counter::new(now));
        c.last = now;
        c
    }

    /// The counter of `k` if there is one (looking never creates a key).
    fn peek(&mut self, k: &K) -> Option<&mut Counter> {
        self.map.get_mut(k)
    }

    /// Drops the least recently used quarter (never a key with an attempt in progress, nor one
    /// `keep` protects).
    fn evict(&mut self, keep: impl Fn(&K) -> bool) {
        let mut lasts: Vec<Instant> = self.map.values().map(|c| c.last).collect();
        let k = lasts.len() / 4;
        let (_, cutoff, _) = lasts.select_nth_unstable(k);
        let cutoff = *cutoff;
        self.map
            .retain(|key, c| c.in_flight > 0 || c.last > cutoff || keep(key));
        metrics::counter!("hub_limiter_evictions_total").increment(1);
    }

    fn sweep(&mut self, now: Instant, longest: Duration) {
        self.map
            .retain(|_, c| c.in_flight > 0 || !c.windows.iter().all(|w| w.idle(now, longest)));
    }
}

struct State {
    accounts: HashMap<AccountKey, Counter>,
    addresses: Bounded<IpKey>,
    pairs: Bounded<PairKey>,
    /// Addresses with a recent success, per account (most recent last).
    trusted: HashMap<AccountKey, Vec<(IpKey, Instant)>>,
    last_sweep: Instant,
}

pub struct LoginLimiter {
    policy: LoginPolicy,
    state: Mutex<State>,
    /// Told of every failure and success, to share them with the other nodes of a cluster.
    peers: std::sync::OnceLock<SharedSink>,
}

type SharedSink = Box<dyn Fn(Shared) + Send + Sync>;

/// A login outcome as the nodes of a cluster share it: each node counts the others' failures
/// (and trusts their successes' addresses) as if they had happened to it.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Shared {
    pub account: AccountKey,
    pub exists: bool,
    /// The address as [`IpKey`] keys it.
    pub ip: u128,
    pub failed: bool,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        Self::new(LoginPolicy::default())
    }
}

fn limited(retry_after_s: u64) -> Error {
    metrics::counter!("hub_login_limited_total").increment(1);
    Error::RateLimited { retry_after_s }
}

impl LoginLimiter {
    pub fn new(policy: LoginPolicy) -> Self {
        let now = Instant::now();
        Self {
            policy,
            peers: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                accounts: HashMap::new(),
                addresses: Bounded::new(policy.max_keys),
                pairs: Bounded::new(policy.max_keys),
                trusted: HashMap::new(),
                last_sweep: now,
            }),
        }
    }

    /// Registers an attempt at `account` (None when no such account exists: only the address
    /// and the pair count then) from `address`, or refuses with `RateLimited`.
    pub fn begin(
        &self,
        account: AccountKey,
        exists: bool,
        address: IpAddr,
    ) -> Result<Attempt<'_>, Error> {
        let now = Instant::now();
        let ip = IpKey::from(address);
        let pair_key = (account, ip);
        let p = self.policy;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(st.last_sweep) >= SWEEP_EVERY {
            st.last_sweep = now;
            st.addresses.sweep(now, ADDRESS_WINDOW);
            st.pairs.sweep(now, DAY);
            st.accounts
                .retain(|_, c| c.in_flight > 0 || !c.windows[0].idle(now, DAY));
            st.trusted.retain(|_, v| {
                v.retain(|(_, t)| now.duration_since(*t) < TRUSTED_FOR);
                !v.is_empty()
            });
        }
        let trusted = st.trusted.get(&account).is_some_and(|v| {
            v.iter()
                .any(|(a, t)| *a == ip && now.duration_since(*t) < TRUSTED_FOR)
        });

        // Looking creates no key: a refused attempt costs the limiter no memory.
        if let Some(addr) = st.addresses.peek(&ip) {
            if addr.in_flight >= ADDRESS_IN_FLIGHT {
                return Err(limited(1));
            }
            let used = addr.windows[0].estimate(now, ADDRESS_WINDOW) + f64::from(addr.in_flight);
            if used >= f64::from(p.address_failures) {
                return Err(limited(addr.windows[0].retry_after(
                    now,
                    ADDRESS_WINDOW,
                    p.address_failures,
                )));
            }
        }
        if let Some(pair) = st.pairs.peek(&pair_key) {
            let short = pair.windows[0].estimate(now, PAIR_WINDOW) + f64::from(pair.in_flight);
            if short >= f64::from(PAIR_FAILURES) {
                return Err(limited(pair.windows[0].retry_after(
                    now,
                    PAIR_WINDOW,
                    PAIR_FAILURES,
                )));
            }
            if pair.windows[1].estimate(now, DAY) + f64::from(pair.in_flight)
                >= f64::from(PAIR_DAILY_FAILURES)
            {
                return Err(limited(pair.windows[1].retry_after(
                    now,
                    DAY,
                    PAIR_DAILY_FAILURES,
                )));
            }
        }
        if exists {
            let acc = st
                .accounts
                .entry(account)
                .or_insert_with(|| Counter::new(now));
            let used = acc.windows[0].estimate(now, DAY) + f64::from(acc.in_flight);
            if !trusted && used >= f64::from(p.account_budget) {
                return Err(limited(acc.windows[0].retry_after(
                    now,
                    DAY,
                    p.account_budget,
                )));
            }
            acc.in_flight += 1;
        }
        let State {
            addresses,
            pairs,
            trusted: trusted_map,
            ..
        } = &mut *st;
        addresses.get(ip, now).in_flight += 1;
        // A trusted address's pair counter is what bounds guesses from it (it is exempt from
        // the account budget), so eviction never drops it.
        let is_trusted = |k: &PairKey| {
            trusted_map
                .get(&k.0)
                .is_some_and(|v| v.iter().any(|(a, _)| *a == k.1))
        };
        pairs.get_keeping(pair_key, now, is_trusted).in_flight += 1;
        Ok(Attempt {
            limiter: self,
            account,
            exists,
            ip,
            resolved: false,
        })
    }

    /// Shares this node's outcomes through `f` (a cluster's bus).
    pub fn share_with(&self, f: SharedSink) {
        let _ = self.peers.set(f);
    }

    /// Counts an outcome another node saw.
    pub fn apply_shared(&self, o: Shared) {
        let outcome = if o.failed {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        self.record(o.account, o.exists, IpKey(o.ip), outcome, false);
    }

    fn finish(&self, a: &Attempt<'_>, outcome: Outcome) {
        self.record(a.account, a.exists, a.ip, outcome, true);
        if outcome != Outcome::Abandoned
            && let Some(peers) = self.peers.get()
        {
            peers(Shared {
                account: a.account,
                exists: a.exists,
                ip: a.ip.0,
                failed: outcome == Outcome::Failed,
            });
        }
    }

    /// Counts an outcome: `ours` when it ends an attempt in flight on this node, otherwise
    /// another node's (shared through the cluster's bus).
    fn record(&self, account: AccountKey, exists: bool, ip: IpKey, outcome: Outcome, ours: bool) {
        let now = Instant::now();
        let failed = outcome == Outcome::Failed;
        let in_flight = u32::from(ours);
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if exists {
            match st.accounts.get_mut(&account) {
                Some(acc) => {
                    acc.in_flight = acc.in_flight.saturating_sub(in_flight);
                    if failed {
                        acc.windows[0].add(now, DAY);
                    }
                }
                None if failed => {
                    let mut c = Counter::new(now);
                    c.windows[0].add(now, DAY);
                    st.accounts.insert(account, c);
                }
                None => {}
            }
        }
        if ours || failed {
            let addr = st.addresses.get(ip, now);
            addr.in_flight = addr.in_flight.saturating_sub(in_flight);
            // (This may create the pair key again if it was evicted meanwhile — only keys
            // with no attempt in flight are evicted, so that cannot happen to one of ours.)
            if failed {
                addr.windows[0].add(now, ADDRESS_WINDOW);
            }
            let pair = st.pairs.get((account, ip), now);
            pair.in_flight = pair.in_flight.saturating_sub(in_flight);
            if failed {
                pair.windows[0].add(now, PAIR_WINDOW);
                pair.windows[1].add(now, DAY);
            }
        }
        if outcome == Outcome::Succeeded {
            let list = st.trusted.entry(account).or_default();
            list.retain(|(i, _)| *i != ip);
            list.push((ip, now));
            if list.len() > TRUSTED_PER_ACCOUNT {
                list.remove(0);
            }
        }
    }

    /// The account's code was rotated: guesses at the old code are worthless now, so its
    /// budget starts afresh; its trusted addresses are forgotten (one may be whoever the old
    /// code leaked to).
    pub fn code_rotated(&self, account: AccountKey) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.trusted.remove(&account);
        if let Some(acc) = st.accounts.get_mut(&account) {
            acc.windows = [Window::new(Instant::now()); 2];
        }
    }

    /// Keys held now: (accounts, addresses, pairs).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (
            st.accounts.len(),
            st.addresses.map.len(),
            st.pairs.map.len(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    Abandoned,
}

/// A login attempt in progress. Dropping it without [`Attempt::succeeded`] or
/// [`Attempt::abandon`] counts a failure.
pub struct Attempt<'a> {
    limiter: &'a LoginLimiter,
    account: AccountKey,
    exists: bool,
    ip: IpKey,
    resolved: bool,
}

impl Attempt<'_> {
    /// The code was right: no failure, and the address becomes trusted for the account.
    pub fn succeeded(mut self) {
        self.resolved = true;
        self.limiter.finish(&self, Outcome::Succeeded);
    }

    /// The code was never checked (the hub was busy or the database down): no failure.
    pub fn abandon(mut self) {
        self.resolved = true;
        self.limiter.finish(&self, Outcome::Abandoned);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.limiter.finish(self, Outcome::Failed);
        }
    }
}

/// Buyer sign-ups per client address per hour.
pub struct SignupLimiter {
    per_hour: u32,
    state: Mutex<Bounded<IpKey>>,
}

impl SignupLimiter {
    pub fn new(per_hour: u32, max_keys: usize) -> Self {
        Self {
            per_hour,
            state: Mutex::new(Bounded::new(max_keys)),
        }
    }

    /// Counts one sign-up from `address`, or refuses with `RateLimited`.
    pub fn check(&self, address: IpAddr) -> Result<(), Error> {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let c = st.get(IpKey::from(address), now);
        if c.windows[0].estimate(now, SIGNUP_WINDOW) >= f64::from(self.per_hour) {
            let retry = c.windows[0].retry_after(now, SIGNUP_WINDOW, self.per_hour);
            metrics::counter!("hub_signups_limited_total").increment(1);
            return Err(Error::RateLimited {
                retry_after_s: retry,
            });
        }
        c.windows[0].add(now, SIGNUP_WINDOW);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(i: u128) -> AccountKey {
        (Role::Vendor, Uuid::from_u128(i))
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn five_failures_lock_the_pair_only() {
        let l = LoginLimiter::default();
        for _ in 0..PAIR_FAILURES {
            drop(l.begin(acc(0), true, ip("10.0.0.1")).unwrap()); // unresolved = failed
        }
        assert!(matches!(
            l.begin(acc(0), true, ip("10.0.0.1")),
            Err(Error::RateLimited { retry_after_s }) if retry_after_s > 800
        ));
        assert!(
            l.begin(acc(0), true, ip("10.0.0.2")).is_ok(),
            "same account, other address"
        );
        assert!(
            l.begin(acc(1), true, ip("10.0.0.1")).is_ok(),
            "same address, other account"
        );
    }

    #[test]
    fn the_account_budget_stops_many_addresses_but_not_a_trusted_one() {
        let l = LoginLimiter::new(LoginPolicy {
            account_budget: 10,
            ..LoginPolicy::default()
        });
        l.begin(acc(7), true, ip("192.168.1.1"))
            .unwrap()
            .succeeded();
        for i in 0..10 {
            drop(l.begin(acc(7), true, ip(&format!("10.1.{i}.1"))).unwrap());
        }
        assert!(
            l.begin(acc(7), true, ip("10.2.0.1")).is_err(),
            "budget spent"
        );
        assert!(
            l.begin(acc(7), true, ip("192.168.1.1")).is_ok(),
            "trusted address"
        );
    }

    #[test]
    fn concurrent_guesses_at_one_pair_are_bounded() {
        let l = LoginLimiter::default();
        let held: Vec<_> = (0..PAIR_FAILURES)
            .map(|_| l.begin(acc(3), true, ip("10.0.0.3")).unwrap())
            .collect();
        assert!(l.begin(acc(3), true, ip("10.0.0.3")).is_err());
        for a in held {
            a.abandon();
        }
        assert!(
            l.begin(acc(3), true, ip("10.0.0.3")).is_ok(),
            "abandoned attempts cost nothing"
        );
    }

    #[test]
    fn many_users_behind_one_address_log_in_together() {
        let l = LoginLimiter::default();
        let held: Vec<_> = (0..ADDRESS_IN_FLIGHT)
            .map(|i| l.begin(acc(100 + i as u128), true, ip("10.9.9.9")).unwrap())
            .collect();
        assert!(l.begin(acc(99), true, ip("10.9.9.9")).is_err());
        for a in held {
            a.succeeded();
        }
        assert!(l.begin(acc(99), true, ip("10.9.9.9")).is_ok());
    }

    #[test]
    fn keys_stay_bounded() {
        let l = LoginLimiter::new(LoginPolicy {
            max_keys: 100,
            ..LoginPolicy::default()
        });
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            drop(l.begin(acc(5), false, IpAddr::V4(a)).unwrap());
        }
        let (accounts, addresses, pairs) = l.sizes();
        assert_eq!(accounts, 0, "unknown accounts are not tracked");
        assert!(addresses <= 100 && pairs <= 100, "{addresses} {pairs}");
    }

    #[test]
    fn a_spray_of_new_keys_never_evicts_a_trusted_pair() {
        let l = LoginLimiter::new(LoginPolicy {
            max_keys: 100,
            ..LoginPolicy::default()
        });
        l.begin(acc(1), true, ip("10.7.7.7")).unwrap().succeeded();
        for _ in 0..4 {
            drop(l.begin(acc(1), true, ip("10.7.7.7")).unwrap());
        }
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0x0b00_0000 + i);
            drop(
                l.begin(acc(1000 + u128::from(i)), false, IpAddr::V4(a))
                    .unwrap(),
            );
        }
        drop(l.begin(acc(1), true, ip("10.7.7.7")).unwrap());
        assert!(
            l.begin(acc(1), true, ip("10.7.7.7")).is_err(),
            "the trusted pair still remembers its failures"
        );
    }

    #[test]
    fn attempts_in_flight_count_against_the_address() {
        let l = LoginLimiter::new(LoginPolicy {
            address_failures: 10,
            ..LoginPolicy::default()
        });
        for i in 0..8u128 {
            drop(l.begin(acc(200 + i), true, ip("10.8.8.8")).unwrap());
        }
        let held: Vec<_> = (0..2u128)
            .map(|i| l.begin(acc(300 + i), true, ip("10.8.8.8")).unwrap())
            .collect();
        assert!(l.begin(acc(400), true, ip("10.8.8.8")).is_err());
        drop(held);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(
            IpKey::from(ip("2001:db8:1:2::1")),
            IpKey::from(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            IpKey::from(ip("2001:db8:1:2::1")),
            IpKey::from(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            IpKey::from(ip("::ffff:10.0.0.1")),
            IpKey::from(ip("10.0.0.1"))
        );
    }

    #[test]
    fn signups_per_address_are_limited() {
        let s = SignupLimiter::new(3, 100);
        for _ in 0..3 {
            s.check(ip("10.0.0.1")).unwrap();
        }
        assert!(s.check(ip("10.0.0.1")).is_err());
        assert!(s.check(ip("10.0.0.2")).is_ok());
    }
}
