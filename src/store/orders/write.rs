//! Writing transitions: one statement per transition, and group commit.
//!
//! A transition is a single data-modifying statement — the versioned `UPDATE`, the event
//! `INSERT` and, on delivery, the commission `INSERT` — sent in one round trip and committed on
//! its own (autocommit: the statement is the transaction). The same statement takes arrays, so
//! that transitions of different orders arriving together are written by one statement, one
//! transaction and one WAL flush ([`Writer`]). Every row carries its own version check: an
//! order whose version moved on is simply not updated (its caller gets
//! [`WriteError::Conflict`]), which cannot fail the others.
//!
//! The one failure that aborts a statement is a constraint, above all
//! `orders_one_active_per_driver_idx` (a driver already holds an active order). The statement
//! checks that index's condition itself before updating, so a busy driver is reported for its
//! row alone; the index stays the guarantee for what the check cannot see (another transaction
//! assigning the same driver concurrently, or two rows of one group naming the same driver).
//! When that happens the group's statement fails as a whole — Postgres rolled it all back — and
//! each transition is written again on its own, so every caller gets exactly the answer it
//! would have had alone. Savepoints would do the same inside one transaction, at two extra
//! round trips per transition on the common path; the check costs one index probe.

use std::sync::Arc;

use dashmap::DashMap;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{Executor as _, FromRow, PgConnection, PgPool, Postgres, Row as _};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use super::{OrderRecord, Row, get};
use crate::domain::order::{DriverChange, Plan};
use crate::domain::{Actor, OrderId, OrderStatus};
use crate::service::views::EventView;

/// A transition to write.
pub struct Write {
    pub order_id: OrderId,
    pub expected_version: i32,
    pub plan: Plan,
    pub actor: Actor,
    pub payload: serde_json::Value,
    /// Commission for the driver, recorded when the transition delivers the order.
    pub commission_cents: Option<i64>,
    /// The dispatcher lease's epoch this transition was decided under: it is written only if
    /// `dispatch_lease` is still at that epoch (read FOR SHARE, so a new leader's epoch bump
    /// waits for it, or it sees the bump). `None`: not fenced.
    pub fence: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The order is not at `expected_version` (it holds the current order, if it exists).
    #[error("version conflict")]
    Conflict(Option<Box<OrderRecord>>),
    /// The driver already holds an active order (the partial unique index said no).
    #[error("driver already holds an active order")]
    DriverBusy,
    /// A delivery of an order whose OTP is locked (five wrong tries).
    #[error("the order's OTP is locked")]
    OtpLocked,
    /// The transition was fenced by a dispatcher lease epoch that is no longer current.
    #[error("the dispatcher lease moved on")]
    Fenced,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// The order at its new version and the event that was appended.
pub type Written = (OrderRecord, EventView);

/// The statement: `$1…$11` are parallel arrays, one element per transition. The `UPDATE`
/// touches each order by primary key, at most once (callers never put one order in a group
/// twice). `lease` is read (and share-locked) only when some transition is fenced.
const APPLY: &str = "WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::int4[], $5::uuid[],
                         $6::text[], $7::text[], $8::uuid[], $9::jsonb[], $10::int8[],
                         $11::int8[])
        WITH ORDINALITY AS t(id, expected, to_status, driver_mode, new_driver,
                             kind, actor_role, actor_id, payload, commission, fence, slot)
),
lease AS MATERIALIZED (
    SELECT epoch FROM dispatch_lease
    WHERE id = 1 AND EXISTS (SELECT 1 FROM i WHERE i.fence IS NOT NULL)
    FOR SHARE
),
c AS (
    SELECT i.*,
           (i.driver_mode = 1 AND i.to_status IN ('assigned', 'picked_up') AND EXISTS (
               SELECT 1 FROM orders x
               WHERE x.driver_id = i.new_driver AND x.status IN ('assigned', 'picked_up')
                 AND x.id <> i.id)) AS busy,
           (i.fence IS NOT NULL
               AND i.fence IS DISTINCT FROM (SELECT epoch FROM lease)) AS fenced
    FROM i
),
u AS (
    UPDATE orders o SET
        status = c.to_status,
        version = o.version + 1,
        driver_id = CASE c.driver_mode WHEN 0 THEN o.driver_id WHEN 1 THEN c.new_driver ELSE NULL END,
        ready_at = CASE WHEN c.to_status = 'ready' THEN COALESCE(o.ready_at, now()) ELSE o.ready_at END,
        payment_status = CASE WHEN c.to_status = 'delivered' THEN 'collected' ELSE o.payment_status END,
        updated_at = now()
    FROM c
    WHERE o.id = c.id AND o.version = c.expected AND NOT c.busy AND NOT c.fenced
      -- A delivery needs an OTP that is not locked (five wrong tries, as record_otp_failure
      -- counts them), whatever the caller last saw of the counter.
      AND (c.to_status <> 'delivered' OR o.otp_failed_attempts < 5)
    RETURNING o.*, c.slot, c.kind, c.actor_role, c.actor_id, c.payload, c.commission
),
e AS (
    INSERT INTO order_events (order_id, version, kind, actor_role, actor_id, payload, created_at)
    SELECT id, version, kind, actor_role, actor_id, payload, updated_at FROM u
),
m AS (
    INSERT INTO commissions (order_id, driver_id, amount_cents)
    SELECT id, driver_id, commission FROM u
    WHERE status = 'delivered' AND commission IS NOT NULL AND driver_id IS NOT NULL
)
SELECT c.slot, u.id IS NOT NULL AS written, c.fenced,
    -- A busy driver is the answer only when the version matched (else it is a conflict).
    c.busy AND (SELECT version FROM orders x WHERE x.id = c.id) = c.expected AS busy,
    u.id, u.number, u.shop_id, u.buyer_id, u.driver_id, u.status, u.version, u.items,
    u.total_cents, u.delivery_lat, u.delivery_lng, u.delivery_address, u.payment_type,
    u.payment_status, u.otp_hash, u.otp_failed_attempts, u.request_hash, u.created_at,
    u.updated_at,
    (SELECT name FROM shops WHERE shops.id = u.shop_id) AS shop_name,
    (SELECT name FROM buyers WHERE buyers.id = u.buyer_id) AS buyer_name,
    (SELECT name FROM drivers WHERE drivers.id = u.driver_id) AS driver_name
FROM c LEFT JOIN u ON u.slot = c.slot
ORDER BY c.slot";

/// One row of [`APPLY`]'s answer: the transition's slot, and the order if it was written.
struct Outcome {
    slot: i64,
    busy: bool,
    fenced: bool,
    row: Option<Row>,
}

impl<'r> FromRow<'r, PgRow> for Outcome {
    fn from_row(r: &'r PgRow) -> sqlx::Result<Self> {
        let written: bool = r.try_get("written")?;
        Ok(Outcome {
            slot: r.try_get("slot")?,
            busy: r.try_get::<Option<bool>, _>("busy")?.unwrap_or(false),
            fenced: r.try_get("fenced")?,
            row: if written {
                Some(Row::from_row(r)?)
            } else {
                None
            },
        })
    }
}

/// Writes one transition in one statement (one round trip, its own transaction).
pub async fn apply(db: &PgPool, w: Write) -> Result<Written, WriteError> {
    let mut conn = db.acquire().await?;
    apply_on(&mut conn, w).await
}

async fn apply_on(conn: &mut PgConnection, w: Write) -> Result<Written, WriteError> {
    let mut out = apply_batch(conn, vec![w]).await;
    out.pop()
        .unwrap_or(Err(WriteError::Db(sqlx::Error::WorkerCrashed)))
}

/// Writes transitions of different orders in one statement (one transaction, one WAL flush)
/// and returns each one's result, in order. One transition's conflict or busy driver does not
/// fail the others. The caller must not put one order in twice.
pub async fn apply_batch(
    conn: &mut PgConnection,
    writes: Vec<Write>,
) -> Vec<Result<Written, WriteError>> {
    let n = writes.len();
    let outcomes: Vec<Outcome> = match statement(&mut *conn, &writes).await {
        Ok(o) if o.len() == n => o,
        Ok(o) => {
            let e = sqlx::Error::Protocol(format!("{} answers for {n} transitions", o.len()));
            return fail_all(e, n);
        }
        Err(e) if n == 1 => {
            return vec![Err(
                if super::super::is_unique_violation(&e, "orders_one_active_per_driver_idx") {
                    WriteError::DriverBusy
                } else {
                    WriteError::Db(e)
                },
            )];
        }
        // Postgres refused the statement and rolled it back: nothing of the group was written,
        // so each transition can be written on its own and get its own answer.
        Err(e) if rolled_back(&e) => {
            tracing::debug!(error = %e, transitions = n, "group write refused; writing one by one");
            let mut out = Vec::with_capacity(n);
            for w in writes {
                out.push(Box::pin(apply_on(&mut *conn, w)).await);
            }
            return out;
        }
        // The connection failed: the group may or may not have committed. Every caller gets
        // the error (as it would have alone), never a guess.
        Err(e) => return fail_all(e, n),
    };
    let mut out = Vec::with_capacity(n);
    for (w, o) in writes.into_iter().zip(outcomes) {
        debug_assert_eq!(o.slot as usize, out.len() + 1);
        out.push(match o.row {
            Some(row) => match OrderRecord::try_from(row) {
                Ok(rec) => {
                    let ev = EventView {
                        version: rec.view.version,
                        kind: w.plan.kind,
                        actor: w.actor.into(),
                        payload: w.payload,
                        at: rec.view.updated_at,
                    };
                    Ok((rec, ev))
                }
                Err(e) => Err(WriteError::Db(e)),
            },
            None if o.fenced => Err(WriteError::Fenced),
            None if o.busy => Err(WriteError::DriverBusy),
            None => match get(&mut *conn, w.order_id).await {
                Ok(Some(cur))
                    if cur.view.version == w.expected_version
                        && w.plan.to == OrderStatus::Delivered
                        && cur.otp_failed_attempts >= 5 =>
                {
                    Err(WriteError::OtpLocked)
                }
                Ok(cur) => Err(WriteError::Conflict(cur.map(Box::new))),
                Err(e) => Err(WriteError::Db(e)),
            },
        });
    }
    out
}

async fn statement(conn: &mut PgConnection, writes: &[Write]) -> sqlx::Result<Vec<Outcome>> {
    let n = writes.len();
    let mut ids = Vec::with_capacity(n);
    let mut expected = Vec::with_capacity(n);
    let mut to_status = Vec::with_capacity(n);
    let mut driver_mode = Vec::with_capacity(n);
    let mut new_driver: Vec<Option<Uuid>> = Vec::with_capacity(n);
    let mut kind = Vec::with_capacity(n);
    let mut actor_role = Vec::with_capacity(n);
    let mut actor_id = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut commission = Vec::with_capacity(n);
    let mut fence = Vec::with_capacity(n);
    for w in writes {
        fence.push(w.fence);
        let (mode, driver) = driver_change(&w.plan);
        ids.push(w.order_id.0);
        expected.push(w.expected_version);
        to_status.push(w.plan.to.as_str());
        driver_mode.push(mode);
        new_driver.push(driver);
        kind.push(w.plan.kind.as_str());
        actor_role.push(w.actor.role.as_str());
        actor_id.push(w.actor.id);
        payload.push(&w.payload);
        commission.push(
            w.commission_cents
                .filter(|_| w.plan.to == OrderStatus::Delivered),
        );
    }
    sqlx::query_as(APPLY)
        .bind(ids)
        .bind(expected)
        .bind(to_status)
        .bind(driver_mode)
        .bind(new_driver)
        .bind(kind)
        .bind(actor_role)
        .bind(actor_id)
        .bind(payload)
        .bind(commission)
        .bind(fence)
        .fetch_all(conn)
        .await
}

/// `(0, None)` keeps the driver, `(1, Some(d))` sets it, `(2, None)` clears it.
fn driver_change(plan: &Plan) -> (i32, Option<Uuid>) {
    match plan.driver {
        DriverChange::Keep => (0, None),
        DriverChange::Set(d) => (1, Some(d.0)),
        DriverChange::Clear => (2, None),
    }
}

/// Did Postgres refuse the statement itself (so that its transaction certainly rolled back)?
/// Integrity constraints (23), data exceptions (22) and rollbacks it chose (40: serialization,
/// deadlock). Anything else — a lost connection, a shutdown — may have struck after the commit.
fn rolled_back(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("23") || c.starts_with("22") || c.starts_with("40")),
        _ => false,
    }
}

/// The group's error for each of its `n` callers: the first gets the original, the others a
/// copy that classifies the same way (an outage stays an outage).
fn fail_all(e: sqlx::Error, n: usize) -> Vec<Result<Written, WriteError>> {
    let mut out: Vec<_> = (1..n).map(|_| Err(WriteError::Db(copy(&e)))).collect();
    out.insert(0, Err(WriteError::Db(e)));
    out
}

fn copy(e: &sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
        sqlx::Error::PoolClosed => sqlx::Error::PoolClosed,
        sqlx::Error::WorkerCrashed => sqlx::Error::WorkerCrashed,
        sqlx::Error::Protocol(m) => sqlx::Error::Protocol(m.clone()),
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(io.kind(), io.to_string())),
        other => sqlx::Error::Io(std::io::Error::other(other.to_string())),
    }
}

/// Transitions waiting for the writer at most; beyond it callers wait their turn.
const QUEUE: usize = 4096;

/// Statements in flight at once with group commit: while one group waits for its WAL flush,
/// the next one executes.
const WRITERS: usize = 2;

struct Job {
    write: Write,
    reply: oneshot::Sender<Result<Written, WriteError>>,
}

/// Writes transitions, on connections of its own.
///
/// With a group size of 1 every transition is its own statement on its caller's task.
/// Otherwise [`WRITERS`] tasks write: each takes whatever transitions are queued (up to the
/// group size), writes them with one statement, and only then answers each caller — so nobody
/// hears of a transition before the commit that holds it.
///
/// Its connections plan [`APPLY`] once (`plan_cache_mode = force_generic_plan`): left to
/// choose, Postgres re-plans it on every execution (a plan for 100 rows, its guess for an
/// array parameter, never looks cheaper than a plan for the actual one), and planning it
/// costs several times what executing it does. The generic plan walks the group by primary
/// key whatever its size.
///
/// It also remembers the row of each active order as its last transition (or read) left it,
/// so that the next transition of that order, if it names that version, needs no read: the
/// row at a given version is the row every transition of that version saw. Any other
/// version is read from Postgres, and the write's own version check stays the guarantee —
/// a row changed behind the hub's back makes the write a conflict, answered from a fresh
/// read.
pub struct Writer {
    pool: PgPool,
    queue: Option<mpsc::Sender<Job>>,
    recent: DashMap<OrderId, OrderRecord>,
}

/// Active orders whose rows the writer remembers at most (beyond it, new ones are read).
const REMEMBERED: usize = 32_768;

impl Writer {
    /// `connections` bounds the writer's own connections: transitions' reads, and their writes
    /// when each is written on its own (`group` ≤ 1); with group commit each writer task holds
    /// one of them. Its tasks and connections end when `db` is closed.
    pub fn new(db: &PgPool, group: usize, connections: u32) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(WRITERS as u32 + 1))
            .min_connections(0)
            // A broken connection shows on the write itself, which reports it; checking each
            // connection before use would cost a round trip per write.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET plan_cache_mode = force_generic_plan")
                        .await
                        .map(|_| ())
                })
            })
            .connect_lazy_with(db.connect_options().as_ref().clone());
        let queue = (group > 1).then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..WRITERS {
                tokio::spawn(run(pool.clone(), rx.clone(), group));
            }
            tx
        });
        let (main, own) = (db.clone(), pool.clone());
        tokio::spawn(async move {
            main.close_event().await;
            own.close().await;
        });
        Self {
            pool,
            queue,
            recent: DashMap::new(),
        }
    }

    /// Reads an order from Postgres for a transition (on the writer's connections).
    pub async fn get(&self, id: OrderId) -> sqlx::Result<Option<OrderRecord>> {
        let rec = get(&self.pool, id).await?;
        match &rec {
            Some(r) => self.remember(r),
            None => self.forget(id),
        }
        Ok(rec)
    }

    /// The order as a transition that expects `version` sees it: remembered, when the last
    /// row this hub saw of it is at that version; read from Postgres otherwise. The caller
    /// holds the order's lock. (The OTP attempts counter changes without a new version: the
    /// hub forgets the row when it counts a wrong OTP, and the write itself refuses to deliver
    /// an order whose OTP is locked.)
    pub async fn get_at(&self, id: OrderId, version: i32) -> sqlx::Result<Option<OrderRecord>> {
        if let Some(r) = self.recent.get(&id).filter(|r| r.view.version == version) {
            return Ok(Some(r.clone()));
        }
        self.get(id).await
    }

    /// Remembers an order's row (a new order's, say), while it is active.
    pub fn remember(&self, rec: &OrderRecord) {
        let id = rec.view.id;
        if rec.view.status.is_final() {
            self.recent.remove(&id);
        } else if let Some(mut r) = self.recent.get_mut(&id) {
            *r = rec.clone();
        } else if self.recent.len() < REMEMBERED {
            self.recent.insert(id, rec.clone());
        }
    }

    /// Forgets an order's row (it changed without a transition: a wrong OTP was counted).
    pub fn forget(&self, id: OrderId) {
        self.recent.remove(&id);
    }

    /// Writes one transition and returns once it is committed (or failed).
    pub async fn apply(&self, w: Write) -> Result<Written, WriteError> {
        let id = w.order_id;
        let result = match &self.queue {
            None => apply(&self.pool, w).await,
            Some(queue) => {
                let (reply, answer) = oneshot::channel();
                if queue.send(Job { write: w, reply }).await.is_err() {
                    return Err(WriteError::Db(sqlx::Error::PoolClosed));
                }
                // No answer means the writer stopped mid-group: the write may or may not be
                // committed.
                answer
                    .await
                    .unwrap_or(Err(WriteError::Db(sqlx::Error::WorkerCrashed)))
            }
        };
        match &result {
            Ok((rec, _)) => self.remember(rec),
            Err(WriteError::Conflict(Some(cur))) => self.remember(cur),
            // The version did not change, but the OTP counter did behind this hub's back.
            Err(WriteError::OtpLocked) => self.forget(id),
            // The row did not change.
            Err(WriteError::DriverBusy | WriteError::Fenced) => {}
            // Gone, or unknown whether it changed.
            Err(WriteError::Conflict(None) | WriteError::Db(_)) => self.forget(id),
        }
        result
    }
}

async fn run(pool: PgPool, rx: Arc<Mutex<mpsc::Receiver<Job>>>, group: usize) {
    let mut jobs: Vec<Job> = Vec::with_capacity(group);
    let mut later: Vec<Job> = Vec::new();
    // Held from group to group: handing a connection back to the pool and taking it again
    // costs two round trips (sqlx checks it both ways).
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        {
            // One writer at a time takes from the queue; the other is writing meanwhile.
            let mut rx = tokio::select! {
                rx = rx.lock() => rx,
                _ = pool.close_event() => break,
            };
            if jobs.is_empty() {
                let received = tokio::select! {
                    n = rx.recv_many(&mut jobs, group) => n,
                    _ = pool.close_event() => break,
                };
                if received == 0 {
                    break;
                }
            } else {
                // Holding a transition left from the last group: add what else is queued,
                // without waiting.
                while jobs.len() < group {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
            }
        }
        // One order at most once per group (its lock makes a second one rare: only a caller
        // that gave up can leave one behind); the second waits for the next group.
        let mut seen = std::collections::HashSet::with_capacity(jobs.len());
        let (now, rest): (Vec<Job>, Vec<Job>) =
            jobs.drain(..).partition(|j| seen.insert(j.write.order_id));
        later.extend(rest);
        let (writes, replies): (Vec<Write>, Vec<_>) =
            now.into_iter().map(|j| (j.write, j.reply)).unzip();
        metrics::histogram!("hub_write_group_size").record(writes.len() as f64);
        let results = match conn.as_mut() {
            Some(c) => apply_batch(c, writes).await,
            None => match pool.acquire().await {
                Ok(c) => apply_batch(conn.insert(c), writes).await,
                Err(e) => fail_all(e, writes.len()),
            },
        };
        // After anything but a clean answer the connection may be broken: take a fresh one.
        if results.iter().any(|r| matches!(r, Err(WriteError::Db(_)))) {
            conn = None;
        }
        for (reply, r) in replies.into_iter().zip(results) {
            let _ = reply.send(r);
        }
        jobs.append(&mut later);
    }
}
