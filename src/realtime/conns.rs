//! Who holds a socket: the caps on sockets (in total, not yet authenticated, per account) and
//! the live sockets of every account, so that logout, a code rotation or an admin's revoke can
//! end them at once.
//!
//! Admission happens before the WebSocket upgrade (a refused client gets a 503 with the JSON
//! error body, never a half-open socket); the per-account cap after authentication (close
//! 4409). Revocation cancels a socket's token: its session loop watches it first, so a revoked
//! socket runs no further command and closes with 4401 at once.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::registry::ConnId;
use crate::domain::Role;
use crate::error::Error;

pub type AccountKey = (Role, Uuid);

/// A live socket as the dispatcher's re-announce needs it.
#[derive(Debug, Clone, Copy)]
pub struct LiveSocket {
    pub id: Uuid,
    pub conn: ConnId,
    pub available: bool,
    /// The last location sent on it, and when.
    pub location: Option<(crate::domain::GeoPoint, std::time::Instant)>,
}

struct Live {
    token_hash: String,
    revoke: CancellationToken,
    /// A driver's own availability as last sent on this socket (for a dispatcher rebuilt
    /// while the socket stays open).
    available: bool,
    /// A driver's last location sent on this socket, and when (re-announced with it).
    location: Option<(crate::domain::GeoPoint, std::time::Instant)>,
}

/// The permits a socket holds: one of the total, and one of the unauthenticated until it
/// authenticates.
pub struct Admission {
    _total: OwnedSemaphorePermit,
    unauthenticated: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// The socket authenticated: it no longer counts as unauthenticated.
    pub fn authenticated(&mut self) {
        self.unauthenticated = None;
    }
}

pub struct Connections {
    total: Arc<Semaphore>,
    max_total: usize,
    unauthenticated: Arc<Semaphore>,
    per_account: usize,
    accounts: DashMap<AccountKey, HashMap<ConnId, Live>>,
}

impl Connections {
    pub fn new(max_total: usize, max_unauthenticated: usize, per_account: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(max_total.max(1))),
            max_total: max_total.max(1),
            unauthenticated: Arc::new(Semaphore::new(max_unauthenticated.max(1))),
            per_account: per_account.max(1),
            accounts: DashMap::new(),
        }
    }

    /// Takes a slot for a new socket, or refuses with 503 `too_many_connections`.
    pub fn admit(&self) -> Result<Admission, Error> {
        let Ok(total) = self.total.clone().try_acquire_owned() else {
            metrics::counter!("hub_connections_refused_total", "reason" => "total").increment(1);
            return Err(Error::TooManyConnections);
        };
        let Ok(unauth) = self.unauthenticated.clone().try_acquire_owned() else {
            metrics::counter!("hub_connections_refused_total", "reason" => "unauthenticated")
                .increment(1);
            return Err(Error::TooManyConnections);
        };
        Ok(Admission {
            _total: total,
            unauthenticated: Some(unauth),
        })
    }

    /// Sockets open now (admitted and not yet closed).
    pub fn open(&self) -> usize {
        self.max_total - self.total.available_permits()
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Records an authenticated socket of `account`; `None` when the account already holds
    /// as many sockets as it may.
    pub fn attach(
        &self,
        account: AccountKey,
        conn: ConnId,
        token_hash: String,
    ) -> Option<CancellationToken> {
        let mut live = self.accounts.entry(account).or_default();
        if live.len() >= self.per_account {
            metrics::counter!("hub_connections_refused_total", "reason" => "per_account")
                .increment(1);
            return None;
        }
        let revoke = CancellationToken::new();
        live.insert(
            conn,
            Live {
                token_hash,
                revoke: revoke.clone(),
                available: true,
                location: None,
            },
        );
        Some(revoke)
    }

    pub fn detach(&self, account: AccountKey, conn: ConnId) {
        if let Some(mut live) = self.accounts.get_mut(&account) {
            live.remove(&conn);
        }
        self.accounts.remove_if(&account, |_, live| live.is_empty());
    }

    /// Every live socket of accounts with this role, with the availability and location last
    /// sent on it (for the dispatcher's re-announce after a restart or a change of leader).
    pub fn live_of_role(&self, role: Role) -> Vec<LiveSocket> {
        self.accounts
            .iter()
            .filter(|e| e.key().0 == role)
            .flat_map(|e| {
                let id = e.key().1;
                e.value()
                    .iter()
                    .map(move |(c, l)| LiveSocket {
                        id,
                        conn: *c,
                        available: l.available,
                        location: l.location,
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Records a driver's location as sent on one socket.
    pub fn set_location(&self, account: AccountKey, conn: ConnId, at: crate::domain::GeoPoint) {
        if let Some(mut live) = self.accounts.get_mut(&account)
            && let Some(l) = live.get_mut(&conn)
        {
            l.location = Some((at, std::time::Instant::now()));
        }
    }

    /// Records a driver's availability as sent on one socket.
    pub fn set_available(&self, account: AccountKey, conn: ConnId, available: bool) {
        if let Some(mut live) = self.accounts.get_mut(&account)
            && let Some(l) = live.get_mut(&conn)
        {
            l.available = available;
        }
    }

    /// Ends the sockets authenticated with this token; returns how many.
    pub fn revoke_token(&self, account: AccountKey, token_hash: &str) -> usize {
        self.revoke_where(account, |l| l.token_hash == token_hash)
    }

    /// Ends every socket of the account; returns how many.
    pub fn revoke_account(&self, account: AccountKey) -> usize {
        self.revoke_where(account, |_| true)
    }

    /// Every live socket's account and token hash (for re-checking them against Postgres).
    pub fn live_tokens(&self) -> Vec<(AccountKey, String)> {
        let mut out = Vec::new();
        for e in self.accounts.iter() {
            for l in e.value().values() {
                out.push((*e.key(), l.token_hash.clone()));
            }
        }
        out
    }

    fn revoke_where(&self, account: AccountKey, hit: impl Fn(&Live) -> bool) -> usize {
        let Some(live) = self.accounts.get(&account) else {
            return 0;
        };
        let mut n = 0;
        for l in live.values().filter(|l| hit(l)) {
            l.revoke.cancel();
            n += 1;
        }
        metrics::counter!("hub_sockets_revoked_total").increment(n as u64);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_free_again() {
        let c = Connections::new(2, 1, 1);
        let mut a = c.admit().unwrap();
        assert!(c.admit().is_err(), "one unauthenticated at a time");
        a.authenticated();
        let b = c.admit().unwrap();
        assert!(matches!(c.admit(), Err(Error::TooManyConnections)));
        assert_eq!(c.open(), 2);
        drop(b);
        assert!(c.admit().is_ok());
        let acc = (Role::Driver, Uuid::from_u128(1));
        let t = c.attach(acc, 1, "h1".into()).unwrap();
        assert!(
            c.attach(acc, 2, "h2".into()).is_none(),
            "one socket per account"
        );
        assert_eq!(c.revoke_token(acc, "other"), 0);
        assert_eq!(c.revoke_token(acc, "h1"), 1);
        assert!(t.is_cancelled());
        c.detach(acc, 1);
        assert!(c.attach(acc, 2, "h2".into()).is_some());
    }
}
