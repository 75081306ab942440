//! Running as one node of several. Postgres stays the truth and holds the dispatcher's lease;
//! NATS ([`bus`]) carries committed events to the other nodes' sockets and the control traffic
//! between nodes. Without `HUB_NATS_URL` the hub is a cluster of one: the in-process broker,
//! and this node always dispatches (no lease, no epoch) — the embedded default.
//!
//! What lives here: this node's identity (its row in `cluster_nodes`, the high bits of every
//! connection id it hands out), who dispatches ([`Leadership`], kept by [`lease`]), and the
//! heartbeat that `GET /api/admin/cluster` reads. See `docs/cluster.md`.

pub mod bus;
pub mod control;
pub mod lease;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::service::Hub;
use crate::store::cluster as store;

/// Who dispatches, as this node knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Another node (or nobody, for a moment) holds the lease.
    Follower,
    /// This node dispatches; `epoch` fences its assignments (`None` in a single process).
    Leader { epoch: Option<i64> },
}

pub struct Cluster {
    /// This node's row in `cluster_nodes` (0 for a hub that never registered: tools, tests).
    pub node_id: i64,
    pub node_name: String,
    /// The bus, in cluster mode.
    pub bus: Option<Arc<bus::NatsBus>>,
    leadership: watch::Sender<Leadership>,
}

/// Bits of a connection id below the node id: 2^40 connections per node lifetime.
pub const CONN_ID_BITS: u32 = 40;

impl Cluster {
    /// A single process: always the dispatcher, no bus.
    pub fn single(node_id: i64, node_name: String) -> Self {
        Self {
            node_id,
            node_name,
            bus: None,
            leadership: watch::Sender::new(Leadership::Leader { epoch: None }),
        }
    }

    /// A cluster member: a follower until [`lease`] takes the lease.
    pub fn member(node_id: i64, node_name: String, bus: Arc<bus::NatsBus>) -> Self {
        Self {
            node_id,
            node_name,
            bus: Some(bus),
            leadership: watch::Sender::new(Leadership::Follower),
        }
    }

    /// The first connection id of this node (ids count up from it).
    pub fn first_conn_id(&self) -> u64 {
        (self.node_id.max(0) as u64) << CONN_ID_BITS
    }

    pub fn is_clustered(&self) -> bool {
        self.bus.is_some()
    }

    pub fn is_leader(&self) -> bool {
        matches!(*self.leadership.borrow(), Leadership::Leader { .. })
    }

    pub fn leadership(&self) -> Leadership {
        *self.leadership.borrow()
    }

    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    pub(crate) fn set_leadership(&self, l: Leadership) {
        let (leader, epoch) = match l {
            Leadership::Leader { epoch } => (1.0, epoch.unwrap_or(0) as f64),
            Leadership::Follower => (0.0, 0.0),
        };
        metrics::gauge!("hub_cluster_leader").set(leader);
        if leader > 0.0 {
            metrics::gauge!("hub_cluster_epoch").set(epoch);
        }
        self.leadership.send_replace(l);
    }
}

/// Registers this node in `cluster_nodes` and returns its id.
pub async fn register(db: &PgPool, name: &str) -> sqlx::Result<i64> {
    store::register_node(db, name).await
}

/// How often a node writes its heartbeat; a node unseen for [`LIVE_WITHIN`] is not listed.
const HEARTBEAT: Duration = Duration::from_secs(1);
pub const LIVE_WITHIN: Duration = Duration::from_secs(5);

/// Writes this node's heartbeat and socket count every second; marks it stopped on shutdown.
pub fn spawn_heartbeat(hub: Arc<Hub>) {
    if hub.cluster.node_id == 0 {
        return;
    }
    tokio::spawn(async move {
        let id = hub.cluster.node_id;
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = hub.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if crate::store::health::check().is_err() {
                continue;
            }
            let sockets = hub.conns.open() as i32;
            if let Err(e) = store::heartbeat(&hub.db, id, sockets).await {
                tracing::debug!(error = %e, "heartbeat not written");
            }
        }
        let _ = store::mark_stopped(&hub.db, id).await;
    });
}

/// `GET /api/admin/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub node_id: i64,
    pub node_name: String,
    /// `single` (no bus) or `nats`.
    pub mode: &'static str,
    pub bus_connected: bool,
    pub nodes: Vec<NodeView>,
    pub leader: Option<LeaderView>,
}

pub use store::NodeRow as NodeView;

#[derive(Debug, Serialize)]
pub struct LeaderView {
    pub node_id: Option<i64>,
    /// The lease's epoch (`null` in a single process, which dispatches without a lease).
    pub epoch: Option<i64>,
    pub acquired_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Hub {
    pub async fn cluster_view(&self) -> crate::error::Result<ClusterView> {
        let c = &self.cluster;
        let mut nodes = store::live_nodes(&self.db, LIVE_WITHIN.as_secs_f64()).await?;
        // This node's own count is the live one.
        if let Some(me) = nodes.iter_mut().find(|n| n.id == c.node_id) {
            me.sockets = self.conns.open() as i32;
        }
        let leader = if c.is_clustered() {
            store::lease(&self.db).await?.filter(|r| r.1.is_some()).map(
                |(epoch, node_id, acquired_at)| LeaderView {
                    node_id,
                    epoch: Some(epoch),
                    acquired_at,
                },
            )
        } else {
            Some(LeaderView {
                node_id: Some(c.node_id),
                epoch: None,
                acquired_at: None,
            })
        };
        Ok(ClusterView {
            node_id: c.node_id,
            node_name: c.node_name.clone(),
            mode: if c.is_clustered() { "nats" } else { "single" },
            bus_connected: c.bus.as_ref().is_none_or(|b| b.is_connected()),
            nodes,
            leader,
        })
    }
}
