//! Group commit: transitions of different orders written by one statement and one commit.
//! Each gets its own answer — a stale version or a busy driver fails that transition alone —
//! and the log stays gapless.

mod common;

use common::TestHub;
use dispatch_hub::domain::order::{DriverChange, Plan};
use dispatch_hub::domain::{Actor, DriverId, EventKind, OrderId, OrderStatus, Role};
use dispatch_hub::store::orders::{self as store, Write, WriteError, Written};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

fn id(s: &str) -> Uuid {
    s.parse().unwrap()
}

fn write(
    order: Uuid,
    expected: i32,
    to: OrderStatus,
    kind: EventKind,
    driver: DriverChange,
) -> Write {
    Write {
        order_id: OrderId(order),
        expected_version: expected,
        plan: Plan { to, kind, driver },
        actor: Actor::SYSTEM,
        payload: json!({}),
        commission_cents: (to == OrderStatus::Delivered).then_some(321),
        fence: None,
    }
}

fn assign(order: Uuid, expected: i32, driver: Uuid) -> Write {
    write(
        order,
        expected,
        OrderStatus::Assigned,
        EventKind::Assigned,
        DriverChange::Set(DriverId(driver)),
    )
}

fn version(r: &Result<Written, WriteError>) -> i32 {
    match r {
        Ok((rec, ev)) => {
            assert_eq!(rec.view.version, ev.version);
            rec.view.version
        }
        Err(e) => panic!("expected a write, got {e:?}"),
    }
}

async fn gapless(db: &PgPool) {
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o
         WHERE o.version <> (SELECT count(*) FROM order_events e WHERE e.order_id = o.id)
            OR o.version <> (SELECT max(version) FROM order_events e WHERE e.order_id = o.id)",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(
        bad, 0,
        "every log is gapless and ends at its order's version"
    );
}

#[sqlx::test]
async fn one_group_answers_each_transition_for_itself(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    // Nobody is online, so the dispatcher leaves ready orders alone.
    let (shop, vendor, product) = hub.shop(-40.0, 100.0).await;
    let (_, buyer) = hub.buyer().await;
    let mut orders = Vec::new();
    for i in 0..7 {
        let (o, _) = hub.order(&buyer, &shop, &product, -40.01, 100.0).await;
        let oid = o["id"].as_str().unwrap().to_owned();
        if i >= 2 {
            hub.transition(&vendor, &oid, "accept", 1, None).await;
            let (s, _) = hub.transition(&vendor, &oid, "mark_ready", 2, None).await;
            assert_eq!(s, 200);
        }
        orders.push(id(&oid));
    }
    let d: Vec<Uuid> = {
        let mut d = Vec::new();
        for _ in 0..3 {
            d.push(id(&hub.driver().await.0));
        }
        d
    };
    // Driver 0 already holds order 2.
    version(&store::apply(&db, assign(orders[2], 3, d[0])).await);
    let mut conn = db.acquire().await.unwrap();

    // Group A: a move, a stale version, a busy driver, an assignment, an unknown order.
    let results = store::apply_batch(
        &mut conn,
        vec![
            write(
                orders[0],
                1,
                OrderStatus::Accepted,
                EventKind::Accepted,
                DriverChange::Keep,
            ),
            write(
                orders[1],
                7,
                OrderStatus::Accepted,
                EventKind::Accepted,
                DriverChange::Keep,
            ),
            assign(orders[3], 3, d[0]),
            assign(orders[4], 3, d[1]),
            write(
                Uuid::now_v7(),
                1,
                OrderStatus::Accepted,
                EventKind::Accepted,
                DriverChange::Keep,
            ),
        ],
    )
    .await;
    assert_eq!(version(&results[0]), 2);
    match &results[1] {
        Err(WriteError::Conflict(Some(cur))) => assert_eq!(cur.view.version, 1),
        r => panic!("stale version: {r:?}"),
    }
    assert!(
        matches!(results[2], Err(WriteError::DriverBusy)),
        "{:?}",
        results[2]
    );
    assert_eq!(version(&results[3]), 4);
    assert!(
        matches!(results[4], Err(WriteError::Conflict(None))),
        "{:?}",
        results[4]
    );

    // Group B: two orders for one free driver (the statement's check cannot see it, the index
    // refuses it): one gets the driver, the other hears DriverBusy, and the rest of the group
    // is written all the same. A ready order's `ready_at` is set.
    let results = store::apply_batch(
        &mut conn,
        vec![
            write(
                orders[0],
                2,
                OrderStatus::Ready,
                EventKind::Ready,
                DriverChange::Keep,
            ),
            assign(orders[5], 3, d[2]),
            assign(orders[6], 3, d[2]),
            write(
                orders[4],
                4,
                OrderStatus::PickedUp,
                EventKind::PickedUp,
                DriverChange::Keep,
            ),
        ],
    )
    .await;
    assert_eq!(version(&results[0]), 3);
    let (won, lost) = match (&results[1], &results[2]) {
        (Ok(_), Err(WriteError::DriverBusy)) => (orders[5], orders[6]),
        (Err(WriteError::DriverBusy), Ok(_)) => (orders[6], orders[5]),
        r => panic!("one driver, two orders: {r:?}"),
    };
    assert_eq!(version(&results[3]), 5);
    let ready_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT ready_at FROM orders WHERE id = $1")
            .bind(orders[0])
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(ready_at.is_some());

    // Group C: a delivery records its commission and collects the payment in the same commit.
    let results = store::apply_batch(
        &mut conn,
        vec![
            write(
                orders[4],
                5,
                OrderStatus::Delivered,
                EventKind::Delivered,
                DriverChange::Keep,
            ),
            write(
                won,
                4,
                OrderStatus::PickedUp,
                EventKind::PickedUp,
                DriverChange::Keep,
            ),
        ],
    )
    .await;
    let (rec, ev) = results[0].as_ref().unwrap();
    assert_eq!((rec.view.version, ev.kind), (6, EventKind::Delivered));
    assert_eq!(rec.view.payment.status, "collected");
    assert_eq!(ev.actor.role, Role::System);
    assert_eq!(version(&results[1]), 5);
    let commission: (Uuid, i64) =
        sqlx::query_as("SELECT driver_id, amount_cents FROM commissions WHERE order_id = $1")
            .bind(orders[4])
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(commission, (d[1], 321));

    let lost_version: i32 = sqlx::query_scalar("SELECT version FROM orders WHERE id = $1")
        .bind(lost)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(lost_version, 3, "the refused assignment left no trace");
    gapless(&db).await;
}

#[sqlx::test]
async fn racing_transitions_of_many_orders_have_one_winner_each(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let (shop, vendor, product) = hub.shop(-41.0, 101.0).await;
    let (_, buyer) = hub.buyer().await;
    let mut ids = Vec::new();
    for _ in 0..24 {
        let (o, _) = hub.order(&buyer, &shop, &product, -41.01, 101.0).await;
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    // Every order accepted three times at once: the writes of different orders share groups,
    // those of one order compete.
    let tasks = ids.iter().flat_map(|oid| {
        (0..3).map(|_| {
            let (http, base, vendor, oid) = (
                hub.http.clone(),
                hub.base.clone(),
                vendor.clone(),
                oid.clone(),
            );
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/api/orders/{oid}/transitions"))
                    .bearer_auth(vendor)
                    .json(&json!({"action": "accept", "expected_version": 1}))
                    .send()
                    .await
                    .unwrap();
                (oid, r.status().as_u16())
            })
        })
    });
    let results: Vec<(String, u16)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    for oid in &ids {
        let mut statuses: Vec<u16> = results
            .iter()
            .filter(|(o, _)| o == oid)
            .map(|(_, s)| *s)
            .collect();
        statuses.sort();
        assert_eq!(statuses, vec![200, 409, 409], "order {oid}");
    }
    let accepted: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'accepted' AND version = 2")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(accepted, ids.len() as i64);
    gapless(&db).await;
}
