//! Commits whose outcome is unknown. When the connection fails around a COMMIT (Postgres
//! stopped, the network dropped), the transaction may have committed or not, and the caller
//! got `unavailable`. If it did commit, nobody published it, and the dispatcher never heard of
//! it (a `ready` order would be invisible to it until the next restart).
//!
//! The service hands such a transition to this task, which re-reads the order once Postgres
//! answers, under the order's lock: if the order is at exactly the version the transition
//! would have written, it committed — its event is published and the dispatcher told, as if
//! the commit had answered. If the order is still at the old version, nothing happened. If a
//! later transition already moved it on, the lost version is in the event log and snapshots
//! but is not published late (publishing it after a newer version would break publish order).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Hub;
use crate::domain::{DriverId, OrderId};
use crate::store::orders as store;

/// A transition that may or may not have committed.
#[derive(Debug, Clone, Copy)]
pub struct Ambiguous {
    pub order: OrderId,
    /// The version the transition would have written.
    pub version: i32,
    /// The order's driver before the transition.
    pub previous_driver: Option<DriverId>,
}

/// Waiting ambiguous transitions at most (beyond that they are only logged).
pub const QUEUE: usize = 4096;
/// How long one is retried before it is given up (logged).
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

pub fn channel() -> (mpsc::Sender<Ambiguous>, mpsc::Receiver<Ambiguous>) {
    mpsc::channel(QUEUE)
}

/// Runs until shutdown, resolving each ambiguous transition in arrival order.
pub fn spawn(hub: Arc<Hub>, mut rx: mpsc::Receiver<Ambiguous>) {
    let shutdown = hub.shutdown.clone();
    tokio::spawn(async move {
        loop {
            let a = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = rx.recv() => match a { Some(a) => a, None => break },
            };
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_millis(200);
            loop {
                match hub.resolve(a).await {
                    Ok(()) => break,
                    // Only an outage is worth waiting out; anything else will not change.
                    Err(e @ crate::error::Error::Unavailable)
                        if started.elapsed() < GIVE_UP_AFTER =>
                    {
                        tracing::debug!(error = %e, order = %a.order, "ambiguous commit not resolved yet");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, order = %a.order, version = a.version,
                            "gave up resolving an ambiguous commit");
                        break;
                    }
                }
            }
        }
    });
}

impl Hub {
    /// Queues a transition whose commit outcome is unknown (the service does, when the
    /// connection fails around a write).
    pub fn commit_unknown(&self, a: Ambiguous) {
        metrics::counter!("hub_commits_ambiguous_total").increment(1);
        self.unresolved.insert(a.order, ());
        if self.ambiguous.try_send(a).is_err() {
            tracing::error!(order = %a.order, "ambiguous-commit queue full; the order is reconciled on the next restart");
        }
    }

    async fn resolve(&self, a: Ambiguous) -> crate::error::Result<()> {
        crate::store::health::check()?;
        let guard = self.lock_order(a.order).await;
        // A later transition of the order committed and published since: it carried the order
        // on (and publishing this one now would repeat or reorder what clients got).
        if !self.unresolved.contains_key(&a.order) {
            return Ok(());
        }
        let Some(rec) = store::get(&self.db, a.order).await? else {
            self.unresolved.remove(&a.order);
            return Ok(());
        };
        let o = rec.view;
        self.unresolved.remove(&a.order);
        if o.version < a.version {
            tracing::info!(order = %a.order, version = a.version, "ambiguous commit had not landed");
            return Ok(());
        }
        if o.version > a.version {
            tracing::warn!(order = %a.order, version = a.version, current = o.version,
                "ambiguous commit had landed but was superseded; not published late");
            metrics::counter!("hub_commits_recovered_total", "published" => "no").increment(1);
            return Ok(());
        }
        let events = store::events(&self.db, a.order).await?;
        let Some(ev) = events.into_iter().find(|e| e.version == a.version) else {
            return Ok(());
        };
        tracing::warn!(order = %a.order, version = a.version, "ambiguous commit had landed; publishing it now");
        metrics::counter!("hub_commits_recovered_total", "published" => "yes").increment(1);
        self.after_commit(guard, &o, &ev, a.previous_driver).await;
        Ok(())
    }
}
