//! The cluster's tables: node registrations and heartbeats (`cluster_nodes`) and the
//! dispatcher's lease (an advisory lock held on a dedicated connection, and `dispatch_lease`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// The advisory lock's key ("dispatch" in ASCII); advisory locks are per database.
const LEASE_LOCK_KEY: i64 = 0x6469_7370_6174_6368;

/// A node as `GET /api/admin/cluster` lists it.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct NodeRow {
    pub id: i64,
    pub name: String,
    pub sockets: i32,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

/// Registers a node and returns its id.
pub async fn register_node(db: &PgPool, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("INSERT INTO cluster_nodes (name) VALUES ($1) RETURNING id")
        .bind(name)
        .fetch_one(db)
        .await
}

pub async fn heartbeat(db: &PgPool, id: i64, sockets: i32) -> sqlx::Result<()> {
    sqlx::query("UPDATE cluster_nodes SET seen_at = now(), sockets = $2 WHERE id = $1")
        .bind(id)
        .bind(sockets)
        .execute(db)
        .await
        .map(|_| ())
}

pub async fn mark_stopped(db: &PgPool, id: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE cluster_nodes SET stopped_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(|_| ())
}

/// Nodes not stopped whose heartbeat is younger than `within_s`.
pub async fn live_nodes(db: &PgPool, within_s: f64) -> sqlx::Result<Vec<NodeRow>> {
    sqlx::query_as(
        "SELECT id, name, sockets, started_at, seen_at FROM cluster_nodes
         WHERE stopped_at IS NULL AND seen_at > now() - make_interval(secs => $1)
         ORDER BY id",
    )
    .bind(within_s)
    .fetch_all(db)
    .await
}

/// The lease row: (epoch, holder node, when it was taken).
pub async fn lease(db: &PgPool) -> sqlx::Result<Option<(i64, Option<i64>, Option<DateTime<Utc>>)>> {
    sqlx::query_as("SELECT epoch, node_id, acquired_at FROM dispatch_lease WHERE id = 1")
        .fetch_optional(db)
        .await
}

/// Makes Postgres end the lease session (and so drop its lock) after `ms` of idleness.
pub async fn set_idle_timeout(conn: &mut PgConnection, ms: u128) -> sqlx::Result<()> {
    sqlx::query(&format!("SET idle_session_timeout = {ms}"))
        .execute(conn)
        .await
        .map(|_| ())
}

pub async fn ping(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(conn).await.map(|_| ())
}

/// Tries the lease's lock on this connection (held until the session ends).
pub async fn try_lease_lock(conn: &mut PgConnection) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEASE_LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// Bumps the epoch for `node` (which holds the lock) and records it; returns the new epoch.
pub async fn bump_epoch(conn: &mut PgConnection, node: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "WITH u AS (
             UPDATE dispatch_lease SET epoch = epoch + 1, node_id = $1, acquired_at = now()
             WHERE id = 1 RETURNING epoch, node_id, acquired_at)
         INSERT INTO dispatch_lease_history (epoch, node_id, acquired_at)
         SELECT epoch, node_id, acquired_at FROM u RETURNING epoch",
    )
    .bind(node)
    .fetch_one(conn)
    .await
}
