//! What the dispatcher reads on start (to rebuild its state) and writes in batches (driver
//! positions).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ReadyOrder {
    pub id: Uuid,
    pub version: i32,
    pub shop_lat: f64,
    pub shop_lng: f64,
    pub ready_at: Option<DateTime<Utc>>,
}

/// Orders waiting for a driver, oldest ready first.
pub async fn ready_orders(db: &PgPool) -> sqlx::Result<Vec<ReadyOrder>> {
    sqlx::query_as(
        "SELECT o.id, o.version, s.lat AS shop_lat, s.lng AS shop_lng, o.ready_at
         FROM orders o JOIN shops s ON s.id = o.shop_id
         WHERE o.status = 'ready' ORDER BY o.ready_at NULLS FIRST, o.id",
    )
    .fetch_all(db)
    .await
}

/// (order, driver, status) of every order that holds a driver right now.
pub async fn busy_drivers(db: &PgPool) -> sqlx::Result<Vec<(Uuid, Uuid, String)>> {
    sqlx::query_as(
        "SELECT id, driver_id, status FROM orders
         WHERE status IN ('assigned', 'picked_up') AND driver_id IS NOT NULL",
    )
    .fetch_all(db)
    .await
}

/// (order, driver) pairs of declines on orders that are still waiting or assigned.
pub async fn declines(db: &PgPool) -> sqlx::Result<Vec<(Uuid, Uuid)>> {
    sqlx::query_as(
        "SELECT e.order_id, (e.payload->>'driver_id')::uuid
         FROM order_events e JOIN orders o ON o.id = e.order_id
         WHERE o.status IN ('ready', 'assigned') AND e.kind = 'declined'
           AND e.payload ? 'driver_id'",
    )
    .fetch_all(db)
    .await
}

/// Every driver with their name and the last position the hub persisted.
pub async fn drivers(db: &PgPool) -> sqlx::Result<Vec<(Uuid, String, Option<f64>, Option<f64>)>> {
    sqlx::query_as("SELECT id, name, last_lat, last_lng FROM drivers")
        .fetch_all(db)
        .await
}

/// Writes a batch of driver positions in one statement.
pub async fn save_positions(
    db: &PgPool,
    ids: &[Uuid],
    lats: &[f64],
    lngs: &[f64],
    at: &[DateTime<Utc>],
) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "UPDATE drivers d SET last_lat = v.lat, last_lng = v.lng, last_seen_at = v.at
         FROM UNNEST($1::uuid[], $2::float8[], $3::float8[], $4::timestamptz[]) AS v(id, lat, lng, at)
         WHERE d.id = v.id",
    )
    .bind(ids)
    .bind(lats)
    .bind(lngs)
    .bind(at)
    .execute(db)
    .await?;
    Ok(r.rows_affected())
}
