//! The dispatcher's lease: exactly one node of a cluster dispatches.
//!
//! The lease is a session-level advisory lock held on a dedicated Postgres connection. Whoever
//! takes it bumps `dispatch_lease.epoch` in the same breath and dispatches under that epoch;
//! every assignment it writes is fenced by the epoch (see `store::orders::write`), so a node
//! that lost the lease without knowing it yet — paused, cut off — can never commit one.
//!
//! Failover: a leader that dies (even by kill -9) closes its connection, Postgres drops the
//! lock at once, and the next node to poll (every `HUB_LEASE_POLL_MS`) takes it, bumps the
//! epoch, rebuilds the dispatcher from Postgres and announces itself on the bus, upon which
//! every node re-announces its connected drivers. A leader that cannot reach Postgres on its
//! lease connection (or the bus) for a poll steps down on its own.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::Leadership;
use super::control::{Announce, LEADER};
use crate::service::Hub;
use crate::store::cluster as store;

/// Keeps trying to take the lease while this node runs; holds it until shutdown or until its
/// connection fails.
pub fn spawn(hub: Arc<Hub>) {
    tokio::spawn(async move {
        let poll = Duration::from_millis(hub.config.lease_poll_ms.max(20));
        let opts = hub.db.connect_options().as_ref().clone();
        loop {
            if hub.shutdown.is_cancelled() {
                break;
            }
            let conn = tokio::time::timeout(poll * 8, PgConnection::connect_with(&opts)).await;
            match conn {
                Ok(Ok(mut conn)) => {
                    // If this node goes silent (a partition, a pause), Postgres ends the
                    // session — and drops the lock — after a few polls' idleness, instead of
                    // waiting hours for TCP keepalive. Fencing makes that safe.
                    if let Err(e) = store::set_idle_timeout(&mut conn, poll.as_millis() * 8).await {
                        tracing::debug!(error = %e, "idle_session_timeout not set");
                    }
                    hold(&hub, &mut conn, poll).await;
                    step_down(&hub);
                    let _ = tokio::time::timeout(poll, conn.close()).await;
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "lease connection failed"),
                Err(_) => tracing::debug!("lease connection timed out"),
            }
            tokio::select! {
                _ = hub.shutdown.cancelled() => break,
                _ = tokio::time::sleep(poll) => {}
            }
        }
        step_down(&hub);
    });
}

fn step_down(hub: &Hub) {
    if hub.cluster.is_leader() {
        tracing::warn!(node = hub.cluster.node_id, "giving up the dispatcher lease");
        hub.cluster.set_leadership(Leadership::Follower);
    }
}

/// Polls on one connection: takes the lease when it is free, then checks the connection while
/// holding it. Returns when the connection fails, the bus is lost, or the hub shuts down.
async fn hold(hub: &Hub, conn: &mut PgConnection, poll: Duration) {
    let bus_up = || hub.cluster.bus.as_ref().is_none_or(|b| b.is_connected());
    loop {
        let step = async {
            if hub.cluster.is_leader() {
                // Still ours as long as the connection that holds the lock answers.
                store::ping(conn).await
            } else if !bus_up() {
                // A node cut off from the bus could not hear its drivers: do not lead.
                Ok(())
            } else {
                take(hub, conn).await
            }
        };
        match tokio::time::timeout(poll * 4, step).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "lease connection failed");
                return;
            }
            Err(_) => {
                tracing::warn!("lease connection stopped answering");
                return;
            }
        }
        if hub.cluster.is_leader() && !bus_up() {
            tracing::warn!("bus lost while holding the dispatcher lease");
            return;
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// Tries the lock; when it is ours, bumps the epoch and becomes the leader.
async fn take(hub: &Hub, conn: &mut PgConnection) -> sqlx::Result<()> {
    if !store::try_lease_lock(conn).await? {
        return Ok(());
    }
    let epoch = store::bump_epoch(conn, hub.cluster.node_id).await?;
    tracing::info!(
        node = hub.cluster.node_id,
        epoch,
        "took the dispatcher lease"
    );
    metrics::counter!("hub_cluster_lease_taken_total").increment(1);
    hub.cluster
        .set_leadership(Leadership::Leader { epoch: Some(epoch) });
    hub.tell_cluster(
        LEADER,
        &Announce {
            node_id: hub.cluster.node_id,
            epoch,
        },
    );
    Ok(())
}
