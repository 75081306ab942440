//! A small cache of live sessions, so that an authenticated request does not read its session
//! row from Postgres every time.
//!
//! Revocation is pushed to it: logout, an admin's revoke and a code rotation drop the entries
//! concerned on this node before they answer, and on every other node through the cluster's
//! bus (`cluster::control::Revoke`). Two bounds cover what a push cannot reach, such as a row
//! changed by hand or a node cut off from the bus: an entry is trusted for [`TTL`] at most, and
//! never past the session's own expiry. A read that raced a revocation is not cached: every
//! revocation bumps a generation, and a read stores its result only if the generation did not
//! move while it ran.
//!
//! Sockets keep checking Postgres itself after attaching (`Hub::session_live`): that check
//! closes the race between a handshake and a logout, so it must see the row.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use dashmap::DashMap;
use uuid::Uuid;

use crate::domain::{Actor, Role};

/// How long a cached session is believed without asking Postgres again.
pub const TTL: Duration = Duration::from_secs(10);

/// Sessions cached at most; beyond it the cache starts afresh.
const MAX: usize = 100_000;

#[derive(Clone)]
struct Entry {
    actor: Actor,
    expires_at: chrono::DateTime<Utc>,
    cached_at: Instant,
}

#[derive(Default)]
pub struct SessionCache {
    map: DashMap<String, Entry>,
    generation: AtomicU64,
}

impl SessionCache {
    /// The generation to hand back to [`SessionCache::insert`] after reading Postgres.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The cached session of a token hash, if it is fresh and not expired.
    pub fn get(&self, token_hash: &str) -> Option<(Actor, chrono::DateTime<Utc>)> {
        let e = self.map.get(token_hash)?.clone();
        if e.cached_at.elapsed() < TTL && e.expires_at > Utc::now() {
            metrics::counter!("hub_session_cache_hits_total").increment(1);
            Some((e.actor, e.expires_at))
        } else {
            self.map.remove(token_hash);
            None
        }
    }

    /// Caches a session read from Postgres, unless a revocation happened since `generation`.
    pub fn insert(
        &self,
        generation: u64,
        token_hash: &str,
        actor: Actor,
        expires_at: chrono::DateTime<Utc>,
    ) {
        if self.map.len() >= MAX {
            self.map.clear();
        }
        self.map.insert(
            token_hash.to_owned(),
            Entry {
                actor,
                expires_at,
                cached_at: Instant::now(),
            },
        );
        // Checked after inserting: a revocation that ran in between has bumped the generation
        // (before or after its removal), and then this entry goes again.
        if self.generation() != generation {
            self.map.remove(token_hash);
        }
    }

    /// Drops one token's session.
    pub fn revoke_token(&self, token_hash: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.remove(token_hash);
    }

    /// Drops every session of an account.
    pub fn revoke_account(&self, role: Role, id: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map
            .retain(|_, e| !(e.actor.role == role && e.actor.id == Some(id)));
    }

    /// Forgets every session (after revocations may have been missed).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(id: Uuid) -> Actor {
        Actor {
            role: Role::Vendor,
            id: Some(id),
        }
    }

    #[test]
    fn revocations_drop_entries_and_a_read_that_raced_one_is_not_kept() {
        let c = SessionCache::default();
        let id = Uuid::now_v7();
        let later = Utc::now() + chrono::Duration::hours(1);
        let g = c.generation();
        c.insert(g, "t1", vendor(id), later);
        assert!(c.get("t1").is_some());
        c.revoke_token("t1");
        assert!(c.get("t1").is_none());

        // A read that began before a revocation is not cached.
        let g = c.generation();
        c.revoke_account(Role::Vendor, id);
        c.insert(g, "t2", vendor(id), later);
        assert!(c.get("t2").is_none());

        // An account's revocation drops all of its tokens, and no one else's.
        let g = c.generation();
        c.insert(g, "t3", vendor(id), later);
        c.insert(g, "t4", vendor(Uuid::now_v7()), later);
        c.revoke_account(Role::Vendor, id);
        assert!(c.get("t3").is_none());
        assert!(c.get("t4").is_some());
    }

    #[test]
    fn an_expired_session_is_never_served() {
        let c = SessionCache::default();
        let g = c.generation();
        c.insert(
            g,
            "t",
            vendor(Uuid::now_v7()),
            Utc::now() - chrono::Duration::seconds(1),
        );
        assert!(c.get("t").is_none());
        assert!(c.is_empty());
    }
}
