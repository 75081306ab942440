//! Orders and their versioned event log. A transition is one transaction: the optimistic
//! `UPDATE … WHERE version = expected`, the event row with the new version, and on delivery the
//! commission row. Nothing outside this transaction learns of the change before it commits.
//! Transitions are written by [`write`]: one statement per transition, or one for a group of
//! them (group commit).

mod write;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{Actor, BuyerId, DriverId, EventKind, OrderId, OrderStatus, Role, ShopId};
use crate::service::views::{ActorView, Delivery, EventView, OrderItem, OrderView, Payment};

/// The columns of [`Row`], as a literal so that `concat!` can build static statements.
macro_rules! order_cols {
    () => {
        "id, number, shop_id, buyer_id, driver_id, status, version, items, total_cents,
    delivery_lat, delivery_lng, delivery_address, payment_type, payment_status, otp_hash,
    otp_failed_attempts, request_hash, created_at, updated_at,
    (SELECT name FROM shops WHERE shops.id = orders.shop_id) AS shop_name,
    (SELECT name FROM buyers WHERE buyers.id = orders.buyer_id) AS buyer_name,
    (SELECT name FROM drivers WHERE drivers.id = orders.driver_id) AS driver_name"
    };
}

const COLS: &str = order_cols!();

pub use write::{Write, WriteError, Writer, Written, apply, apply_batch};

#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    number: i64,
    shop_id: Uuid,
    buyer_id: Uuid,
    driver_id: Option<Uuid>,
    status: String,
    version: i32,
    items: sqlx::types::Json<Vec<OrderItem>>,
    total_cents: i64,
    delivery_lat: f64,
    delivery_lng: f64,
    delivery_address: String,
    payment_type: String,
    payment_status: String,
    otp_hash: String,
    otp_failed_attempts: i32,
    request_hash: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    shop_name: Option<String>,
    buyer_name: Option<String>,
    driver_name: Option<String>,
}

/// An order as stored: the client view plus the secrets that never leave the hub.
#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub view: OrderView,
    pub otp_hash: String,
    pub otp_failed_attempts: i32,
    pub request_hash: Option<String>,
}

impl TryFrom<Row> for OrderRecord {
    type Error = sqlx::Error;
    fn try_from(r: Row) -> Result<Self, sqlx::Error> {
        let status = OrderStatus::parse(&r.status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {}", r.status).into()))?;
        Ok(OrderRecord {
            view: OrderView {
                id: OrderId(r.id),
                number: r.number,
                shop_id: ShopId(r.shop_id),
                shop_name: r.shop_name.unwrap_or_default(),
                buyer_id: BuyerId(r.buyer_id),
                buyer_name: r.buyer_name.unwrap_or_default(),
                driver_id: r.driver_id.map(DriverId),
                driver_name: r.driver_name,
                status,
                version: r.version,
                items: r.items.0,
                total_cents: r.total_cents,
                delivery: Delivery {
                    lat: r.delivery_lat,
                    lng: r.delivery_lng,
                    address: r.delivery_address,
                },
                payment: Payment {
                    kind: r.payment_type,
                    status: r.payment_status,
                },
                created_at: r.created_at,
                updated_at: r.updated_at,
            },
            otp_hash: r.otp_hash,
            otp_failed_attempts: r.otp_failed_attempts,
            request_hash: r.request_hash,
        })
    }
}

fn records(rows: Vec<Row>) -> sqlx::Result<Vec<OrderRecord>> {
    rows.into_iter().map(OrderRecord::try_from).collect()
}

pub struct NewOrder<'a> {
    pub id: OrderId,
    pub shop_id: ShopId,
    pub buyer_id: BuyerId,
    pub items: &'a [OrderItem],
    pub total_cents: i64,
    pub delivery: &'a Delivery,
    pub otp_hash: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
}

/// What `insert_order` did.
pub enum Inserted {
    Created(OrderRecord, EventView),
    /// The buyer already placed an order with this idempotency key.
    Existing(OrderRecord),
}

/// Inserts the order at version 1 with its `created` event, or returns the order this buyer
/// already placed with the same idempotency key.
pub async fn insert_order(db: &PgPool, o: NewOrder<'_>) -> sqlx::Result<Inserted> {
    let mut tx = db.begin().await?;
    let sql = format!(
        "INSERT INTO orders (id, shop_id, buyer_id, status, version, items, total_cents,
             delivery_lat, delivery_lng, delivery_address, payment_type, payment_status,
             otp_hash, idempotency_key, request_hash)
         VALUES ($1, $2, $3, 'pending', 1, $4, $5, $6, $7, $8, 'cod', 'pending', $9, $10, $11)
         ON CONFLICT (buyer_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING {COLS}"
    );
    let row: Option<Row> = sqlx::query_as(&sql)
        .bind(o.id.0)
        .bind(o.shop_id.0)
        .bind(o.buyer_id.0)
        .bind(sqlx::types::Json(o.items))
        .bind(o.total_cents)
        .bind(o.delivery.lat)
        .bind(o.delivery.lng)
        .bind(&o.delivery.address)
        .bind(o.otp_hash)
        .bind(o.idempotency_key)
        .bind(o.request_hash)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        let sql = format!("SELECT {COLS} FROM orders WHERE buyer_id = $1 AND idempotency_key = $2");
        let row: Row = sqlx::query_as(&sql)
            .bind(o.buyer_id.0)
            .bind(o.idempotency_key)
            .fetch_one(db)
            .await?;
        return Ok(Inserted::Existing(row.try_into()?));
    };
    let rec = OrderRecord::try_from(row)?;
    let actor = Actor {
        role: Role::Buyer,
        id: Some(o.buyer_id.0),
    };
    let ev = insert_event(
        &mut tx,
        &rec,
        EventKind::Created,
        actor,
        serde_json::json!({}),
    )
    .await?;
    tx.commit().await?;
    Ok(Inserted::Created(rec, ev))
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    rec: &OrderRecord,
    kind: EventKind,
    actor: Actor,
    payload: serde_json::Value,
) -> sqlx::Result<EventView> {
    sqlx::query(
        "INSERT INTO order_events (order_id, version, kind, actor_role, actor_id, payload, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(rec.view.id.0)
    .bind(rec.view.version)
    .bind(kind.as_str())
    .bind(actor.role.as_str())
    .bind(actor.id)
    .bind(&payload)
    .bind(rec.view.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(EventView {
        version: rec.view.version,
        kind,
        actor: actor.into(),
        payload,
        at: rec.view.updated_at,
    })
}

pub async fn get<'c>(
    db: impl sqlx::PgExecutor<'c>,
    id: OrderId,
) -> sqlx::Result<Option<OrderRecord>> {
    const SQL: &str = concat!("SELECT ", order_cols!(), " FROM orders WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(SQL).bind(id.0).fetch_optional(db).await?;
    row.map(OrderRecord::try_from).transpose()
}

/// Counts one wrong OTP and returns the number of failures so far (at most 5).
pub async fn record_otp_failure(db: &PgPool, id: OrderId) -> sqlx::Result<i32> {
    sqlx::query_scalar(
        "UPDATE orders SET otp_failed_attempts = LEAST(otp_failed_attempts + 1, 5)
         WHERE id = $1 RETURNING otp_failed_attempts",
    )
    .bind(id.0)
    .fetch_one(db)
    .await
}

/// Whose orders a listing or snapshot covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    All,
    Shop(ShopId),
    Buyer(BuyerId),
    Driver(DriverId),
}

impl Scope {
    fn binds(self) -> (Option<Uuid>, Option<Uuid>, Option<Uuid>) {
        match self {
            Scope::All => (None, None, None),
            Scope::Shop(s) => (Some(s.0), None, None),
            Scope::Buyer(b) => (None, Some(b.0), None),
            Scope::Driver(d) => (None, None, Some(d.0)),
        }
    }
}

/// A page of orders, newest first, strictly older than `before` when given.
pub async fn list(
    db: &PgPool,
    scope: Scope,
    status: Option<OrderStatus>,
    before: Option<OrderId>,
    limit: i64,
) -> sqlx::Result<Vec<OrderRecord>> {
    let (shop, buyer, driver) = scope.binds();
    let sql = format!(
        "SELECT {COLS} FROM orders
         WHERE ($1::uuid IS NULL OR shop_id = $1) AND ($2::uuid IS NULL OR buyer_id = $2)
           AND ($3::uuid IS NULL OR driver_id = $3) AND ($4::text IS NULL OR status = $4)
           AND ($5::uuid IS NULL OR id < $5)
         ORDER BY id DESC LIMIT $6"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(shop)
        .bind(buyer)
        .bind(driver)
        .bind(status.map(|s| s.as_str()))
        .bind(before.map(|b| b.0))
        .bind(limit)
        .fetch_all(db)
        .await?;
    records(rows)
}

/// The snapshot statement of a scope: its active orders, oldest first, at most 10,000.
///
/// One statement per scope, each with a literal status list and a plain equality, so that
/// Postgres proves the predicate of a partial index over active orders
/// (`migrations/0005_snapshot_indexes.sql`) for any bound id, in custom and generic plans
/// alike. A bound status array or an `$n IS NULL OR …` filter would defeat that.
/// `tests/snapshot_plans.rs` checks the plan of each.
pub fn active_sql(scope: Scope) -> &'static str {
    match scope {
        Scope::All => concat!(
            "SELECT ",
            order_cols!(),
            " FROM orders
         WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up')
         ORDER BY id LIMIT 10000"
        ),
        Scope::Shop(_) => concat!(
            "SELECT ",
            order_cols!(),
            " FROM orders
         WHERE shop_id = $1 AND status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up')
         ORDER BY id LIMIT 10000"
        ),
        Scope::Buyer(_) => concat!(
            "SELECT ",
            order_cols!(),
            " FROM orders
         WHERE buyer_id = $1 AND status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up')
         ORDER BY id LIMIT 10000"
        ),
        // Of the active statuses only these two carry a driver (a CHECK constraint says so),
        // so this is "active and the driver's", and it matches the predicate of
        // orders_one_active_per_driver_idx — which also makes it one row at most, so there is
        // nothing to order (an ORDER BY id would tempt the planner onto the driver's whole
        // history in `orders_driver_idx`, which is already in id order).
        Scope::Driver(_) => concat!(
            "SELECT ",
            order_cols!(),
            " FROM orders
         WHERE driver_id = $1 AND status IN ('assigned', 'picked_up')"
        ),
    }
}

/// The active orders in a scope (for snapshots), oldest first.
pub async fn active(db: &PgPool, scope: Scope) -> sqlx::Result<Vec<OrderRecord>> {
    let query = sqlx::query_as::<_, Row>(active_sql(scope));
    let query = match scope {
        Scope::All => query,
        Scope::Shop(s) => query.bind(s.0),
        Scope::Buyer(b) => query.bind(b.0),
        Scope::Driver(d) => query.bind(d.0),
    };
    records(query.fetch_all(db).await?)
}

type EventRow = (
    i32,
    String,
    String,
    Option<Uuid>,
    serde_json::Value,
    DateTime<Utc>,
);

/// One event of an order, by version.
pub async fn event_at(db: &PgPool, id: OrderId, version: i32) -> sqlx::Result<Option<EventView>> {
    let row: Option<EventRow> = sqlx::query_as(
        "SELECT version, kind, actor_role, actor_id, payload, created_at
             FROM order_events WHERE order_id = $1 AND version = $2",
    )
    .bind(id.0)
    .bind(version)
    .fetch_optional(db)
    .await?;
    row.map(event_view).transpose()
}

pub async fn events(db: &PgPool, id: OrderId) -> sqlx::Result<Vec<EventView>> {
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT version, kind, actor_role, actor_id, payload, created_at
             FROM order_events WHERE order_id = $1 ORDER BY version",
    )
    .bind(id.0)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(event_view).collect()
}

fn event_view((version, kind, role, actor_id, payload, at): EventRow) -> sqlx::Result<EventView> {
    let kind = EventKind::parse(&kind)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown kind {kind}").into()))?;
    let role = Role::parse(&role)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown role {role}").into()))?;
    Ok(EventView {
        version,
        kind,
        actor: ActorView { role, id: actor_id },
        payload,
        at,
    })
}

/// Pending orders created before `cutoff` (for the vendor-timeout sweeper).
pub async fn pending_before(
    db: &PgPool,
    cutoff: DateTime<Utc>,
) -> sqlx::Result<Vec<(OrderId, i32)>> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT id, version FROM orders WHERE status = 'pending' AND created_at < $1
         ORDER BY created_at LIMIT 500",
    )
    .bind(cutoff)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|(id, v)| (OrderId(id), v)).collect())
}

/// `ready` orders that became ready before `cutoff` and were never reported as delayed.
pub async fn ready_unreported_before(
    db: &PgPool,
    cutoff: DateTime<Utc>,
) -> sqlx::Result<Vec<(OrderId, i32, DateTime<Utc>)>> {
    let rows: Vec<(Uuid, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT o.id, o.version, o.ready_at FROM orders o
         WHERE o.status = 'ready' AND o.ready_at < $1
           AND NOT EXISTS (SELECT 1 FROM order_events e
                           WHERE e.order_id = o.id AND e.kind = 'dispatch_delayed')
         ORDER BY o.ready_at LIMIT 500",
    )
    .bind(cutoff)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, v, at)| (OrderId(id), v, at))
        .collect())
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Commission {
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub created_at: DateTime<Utc>,
}

pub async fn commissions(db: &PgPool, driver: DriverId) -> sqlx::Result<Vec<Commission>> {
    sqlx::query_as(
        "SELECT order_id, amount_cents, created_at FROM commissions
         WHERE driver_id = $1 ORDER BY created_at DESC LIMIT 1000",
    )
    .bind(driver.0)
    .fetch_all(db)
    .await
}
