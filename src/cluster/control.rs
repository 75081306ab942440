//! What nodes tell each other besides events: dispatcher inputs forwarded to the leader, the
//! leader's fleet snapshot, a new leader's announcement, logouts and login outcomes.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dispatch::OrderChanged;
use crate::domain::{DriverId, GeoPoint, Role};
use crate::realtime::registry::ConnId;
use crate::service::Hub;
use crate::service::limiter::Shared;

/// An input of the dispatcher, sent by a node that does not hold the lease to the one that does.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Forward {
    Order(OrderChanged),
    Connected { driver: DriverId, conn: ConnId },
    Disconnected { driver: DriverId, conn: ConnId },
    Availability { driver: DriverId, available: bool },
    Location { driver: DriverId, at: GeoPoint },
}

/// A new leader, announced on `<p>.leader`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Announce {
    pub node_id: i64,
    pub epoch: i64,
}

/// Sockets to close on every node: those of one token, or all of an account's (with its login
/// budget reset when its code was rotated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoke {
    pub role: Role,
    pub id: Uuid,
    pub token_hash: Option<String>,
    pub code_rotated: bool,
}

pub const DISPATCH: &str = "dispatch";
pub const FLEET: &str = "fleet";
pub const LEADER: &str = "leader";
pub const REVOKE: &str = "revoke";
pub const LOGIN: &str = "login";

impl Hub {
    /// Sends a control message to the other nodes (no-op in a single process).
    pub(crate) fn tell_cluster<T: Serialize>(&self, name: &str, msg: &T) {
        let Some(bus) = &self.cluster.bus else {
            return;
        };
        match serde_json::to_vec(msg) {
            Ok(v) => {
                bus.send(bus.subject(name), Bytes::from(v));
            }
            Err(e) => tracing::error!(error = %e, "control message not serialized"),
        }
    }

    /// Closes sockets here and on every other node.
    pub(crate) fn revoke_everywhere(&self, r: Revoke) -> usize {
        self.tell_cluster(REVOKE, &r);
        self.revoke_here(&r)
    }

    fn revoke_here(&self, r: &Revoke) -> usize {
        if r.code_rotated {
            self.limiter.code_rotated((r.role, r.id));
        }
        match &r.token_hash {
            Some(h) => self.sessions.revoke_token(h),
            None => self.sessions.revoke_account(r.role, r.id),
        }
        match &r.token_hash {
            Some(h) => self.conns.revoke_token((r.role, r.id), h),
            None => self.conns.revoke_account((r.role, r.id)),
        }
    }

    /// Closes (4401) the sockets on this node whose sessions are no longer live in Postgres, and
    /// drops the session cache: for a node that may have missed revocations (its bus was down).
    /// Returns how many sockets it closed.
    pub async fn recheck_sockets(&self) -> crate::error::Result<usize> {
        self.sessions.clear();
        let live = self.conns.live_tokens();
        let mut closed = 0;
        for chunk in live.chunks(10_000) {
            let hashes: Vec<String> = chunk.iter().map(|(_, h)| h.clone()).collect();
            let still: std::collections::HashSet<String> =
                crate::store::accounts::live_sessions(&self.db, &hashes)
                    .await?
                    .into_iter()
                    .collect();
            for (account, hash) in chunk {
                if !still.contains(hash) {
                    closed += self.conns.revoke_token(*account, hash);
                }
            }
        }
        if closed > 0 {
            tracing::warn!(
                closed,
                "sockets of sessions revoked while the bus was away closed"
            );
        }
        Ok(closed)
    }

    /// Re-announces this node's connected drivers to the dispatcher (after a new leader).
    pub(crate) async fn announce_drivers(&self) {
        for s in self.conns.live_of_role(Role::Driver) {
            let d = DriverId(s.id);
            self.dispatch.driver_connected(d, s.conn).await;
            if !s.available {
                self.dispatch.driver_availability(d, false).await;
            }
            // Only a location fresh enough to count (the leader cannot tell its age).
            if let Some((p, at)) = s.location
                && at.elapsed() < std::time::Duration::from_secs(self.config.driver_stale_s)
            {
                self.dispatch.driver_location(d, p);
            }
        }
    }
}

/// Wires the limiter to the bus and listens on the control subjects until shutdown.
pub async fn spawn(hub: Arc<Hub>) -> Result<(), async_nats::SubscribeError> {
    let Some(bus) = hub.cluster.bus.clone() else {
        return Ok(());
    };
    {
        let weak = Arc::downgrade(&hub);
        hub.limiter.share_with(Box::new(move |s: Shared| {
            if let Some(hub) = weak.upgrade() {
                hub.tell_cluster(LOGIN, &s);
            }
        }));
    }
    let client = bus.client().clone();
    let mut subs = Vec::new();
    for name in [DISPATCH, FLEET, LEADER, REVOKE, LOGIN] {
        let sub = client.subscribe(bus.subject(name)).await?;
        subs.push(sub.map(move |m| (name, m)).boxed());
    }
    let mut all = futures::stream::select_all(subs);
    // A node that was not a follower, or not on the bus, when a new leader announced itself
    // never heard it: it re-announces its drivers whenever it becomes a follower and whenever
    // the bus comes back (the leader's dispatcher takes a repeated `connected` as it is). When
    // the bus comes back it also re-checks its sockets' sessions: a logout elsewhere may have
    // passed it by.
    {
        let hub = hub.clone();
        let mut connects = bus.watch_connects();
        let mut leadership = hub.cluster.watch_leadership();
        tokio::spawn(async move {
            loop {
                let reconnected = tokio::select! {
                    _ = hub.shutdown.cancelled() => return,
                    r = connects.changed() => if r.is_err() { return } else { true },
                    r = leadership.changed() => if r.is_err() { return } else { false },
                };
                if reconnected && let Err(e) = hub.recheck_sockets().await {
                    tracing::warn!(error = %e, "sockets not re-checked after the bus came back");
                }
                if !hub.cluster.is_leader() {
                    hub.announce_drivers().await;
                }
            }
        });
    }
    tokio::spawn(async move {
        loop {
            let (name, m) = tokio::select! {
                _ = hub.shutdown.cancelled() => return,
                m = all.next() => match m { Some(m) => m, None => return },
            };
            handle(&hub, name, m).await;
        }
    });
    Ok(())
}

async fn handle(hub: &Arc<Hub>, name: &'static str, m: async_nats::Message) {
    metrics::counter!("hub_bus_control_received_total", "subject" => name).increment(1);
    match name {
        DISPATCH => {
            // Only the leader's dispatcher takes inputs; a follower drops what reached it in a
            // change of leader (the new one rebuilds from Postgres and re-announcements).
            if !hub.cluster.is_leader() {
                return;
            }
            match serde_json::from_slice::<Forward>(&m.payload) {
                Ok(f) => hub.dispatch.take_forwarded(f).await,
                Err(e) => tracing::warn!(error = %e, "undecodable dispatcher input"),
            }
        }
        FLEET => {
            let Some(reply) = m.reply else { return };
            if !hub.cluster.is_leader() {
                return;
            }
            // Beside the loop: a dispatcher busy rebuilding must not hold up the other subjects.
            let hub = hub.clone();
            tokio::spawn(async move {
                let fleet = hub.dispatch.fleet_here().await;
                if let (Ok(v), Some(bus)) = (serde_json::to_vec(&fleet), &hub.cluster.bus) {
                    let _ = bus.client().publish(reply, Bytes::from(v)).await;
                }
            });
        }
        LEADER => match serde_json::from_slice::<Announce>(&m.payload) {
            Ok(a) => {
                tracing::info!(
                    leader = a.node_id,
                    epoch = a.epoch,
                    "new dispatcher leader; re-announcing drivers"
                );
                if !hub.cluster.is_leader() {
                    hub.announce_drivers().await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable leader announcement"),
        },
        REVOKE => match serde_json::from_slice::<Revoke>(&m.payload) {
            Ok(r) => {
                hub.revoke_here(&r);
            }
            Err(e) => tracing::warn!(error = %e, "undecodable revocation"),
        },
        LOGIN => match serde_json::from_slice::<Shared>(&m.payload) {
            Ok(s) => hub.limiter.apply_shared(s),
            Err(e) => tracing::warn!(error = %e, "undecodable login outcome"),
        },
        _ => {}
    }
}
