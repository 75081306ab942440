//! The dispatcher over real sockets and a real Postgres.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{TestHub, Ws, rand_in};
use serde_json::{Value, json};
use sqlx::PgPool;

/// Degrees of latitude for `m` metres.
fn north(m: f64) -> f64 {
    m / 111_195.0
}

struct OnlineDriver {
    id: String,
    token: String,
    ws: Ws,
}

async fn online_driver(hub: &TestHub, lat: f64, lng: f64) -> OnlineDriver {
    let (id, token) = hub.driver().await;
    let mut ws = hub.socket(&token).await;
    ws.subscribe(&format!("driver:{id}")).await;
    ws.send(json!({"type": "location", "lat": lat, "lng": lng}))
        .await;
    OnlineDriver { id, token, ws }
}

/// A shop somewhere random (far from other tests' data), with its vendor and a buyer.
struct Shop {
    id: String,
    vendor: String,
    product: String,
    buyer: String,
    lat: f64,
    lng: f64,
}

async fn shop(hub: &TestHub) -> Shop {
    let (lat, lng) = (rand_in(-50.0, 50.0), rand_in(-150.0, 150.0));
    let (id, vendor, product) = hub.shop(lat, lng).await;
    let (_, buyer) = hub.buyer().await;
    Shop {
        id,
        vendor,
        product,
        buyer,
        lat,
        lng,
    }
}

/// Places an order and marks it ready; returns its id.
async fn ready_order(hub: &TestHub, s: &Shop) -> String {
    let (o, _) = hub
        .order(&s.buyer, &s.id, &s.product, s.lat + 0.002, s.lng)
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    assert_eq!(
        hub.transition(&s.vendor, &id, "accept", 1, None).await.0,
        200
    );
    assert_eq!(
        hub.transition(&s.vendor, &id, "mark_ready", 2, None)
            .await
            .0,
        200
    );
    id
}

async fn assigned_to(ws: &mut Ws, order: &str) -> Value {
    ws.until("assigned", |v| {
        v["event"]["kind"] == "assigned" && v["order"]["id"] == order
    })
    .await
}

/// Gives the dispatcher a moment to take in locations sent just before.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

#[sqlx::test]
async fn vendor_marks_ready_and_the_nearest_driver_gets_it_then_the_next_after_a_decline(
    db: PgPool,
) {
    let hub = TestHub::start(db).await;
    let s = shop(&hub).await;
    let mut far = online_driver(&hub, s.lat + north(2_000.0), s.lng).await;
    let mut near = online_driver(&hub, s.lat + north(300.0), s.lng).await;
    let mut mid = online_driver(&hub, s.lat - north(1_000.0), s.lng).await;
    settle().await;
    let id = ready_order(&hub, &s).await;
    let a = assigned_to(&mut near.ws, &id).await;
    assert_eq!(a["order"]["driver_id"], near.id.as_str());
    // While it is theirs, the driver may follow the order's own topic.
    assert_eq!(
        near.ws.subscribe(&format!("order:{id}")).await["type"],
        "snapshot"
    );
    let d = a["event"]["payload"]["distance_m"].as_i64().unwrap();
    assert!((280..=320).contains(&d), "distance {d}");
    // Decline: the next nearest gets it.
    near.ws.send(json!({"type": "transition", "ref": "d", "order_id": id, "action": "decline", "expected_version": 4})).await;
    let ack = near.ws.until("ack", |v| v["ref"] == "d").await;
    assert_eq!(ack["order"]["status"], "ready");
    let a = assigned_to(&mut mid.ws, &id).await;
    assert_eq!(a["order"]["version"], 6);
    // The driver who declined hears of the decline, and of nothing after it.
    while let Some(v) = near.ws.next_json_within(Duration::from_millis(300)).await {
        assert!(
            v["order"]["version"].as_i64().unwrap_or(0) <= 5,
            "leaked to the decliner: {v}"
        );
    }
    // And again: never back to the driver who declined.
    mid.ws.send(json!({"type": "transition", "ref": "d", "order_id": id, "action": "decline", "expected_version": 6})).await;
    let a = assigned_to(&mut far.ws, &id).await;
    assert_eq!(a["order"]["driver_id"], far.id.as_str());
    far.ws.send(json!({"type": "transition", "ref": "d", "order_id": id, "action": "decline", "expected_version": 8})).await;
    far.ws.until("ack", |v| v["ref"] == "d").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let o = hub
        .ok("GET", &format!("/api/orders/{id}"), Some(&s.vendor), None)
        .await;
    assert_eq!(
        (o["status"].as_str(), o["version"].as_i64()),
        (Some("ready"), Some(9)),
        "everyone declined: it waits"
    );
    let _ = (near.token, mid.token, far.token);
}

#[sqlx::test]
async fn with_no_free_driver_the_order_waits_until_one_appears(db: PgPool) {
    let hub = TestHub::start(db).await;
    let s = shop(&hub).await;
    // A driver out of range (20 km) and one off shift do not count.
    let mut out_of_range = online_driver(&hub, s.lat + north(20_000.0), s.lng).await;
    let mut off_shift = online_driver(&hub, s.lat + north(100.0), s.lng).await;
    off_shift
        .ws
        .send(json!({"type": "availability", "available": false}))
        .await;
    off_shift
        .ws
        .until("availability", |v| v["type"] == "availability")
        .await;
    settle().await;
    let id = ready_order(&hub, &s).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let o = hub
        .ok("GET", &format!("/api/orders/{id}"), Some(&s.vendor), None)
        .await;
    assert_eq!(o["status"], "ready");
    // Moving into range makes the driver a candidate.
    out_of_range
        .ws
        .send(json!({"type": "location", "lat": s.lat + north(5_000.0), "lng": s.lng}))
        .await;
    let a = assigned_to(&mut out_of_range.ws, &id).await;
    assert_eq!(a["order"]["driver_id"], out_of_range.id.as_str());
    // A second order waits for the off-shift driver to come back.
    let id2 = ready_order(&hub, &s).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hub.ok("GET", &format!("/api/orders/{id2}"), Some(&s.vendor), None)
            .await["status"],
        "ready"
    );
    off_shift
        .ws
        .send(json!({"type": "availability", "available": true}))
        .await;
    let a = assigned_to(&mut off_shift.ws, &id2).await;
    assert_eq!(a["order"]["driver_id"], off_shift.id.as_str());
}

#[sqlx::test]
async fn two_orders_and_one_driver_the_second_waits_for_the_first_delivery(db: PgPool) {
    let hub = TestHub::start(db).await;
    let s = shop(&hub).await;
    let mut d = online_driver(&hub, s.lat, s.lng).await;
    settle().await;
    let mut otps = HashMap::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (o, otp) = hub.order(&s.buyer, &s.id, &s.product, s.lat, s.lng).await;
        let id = o["id"].as_str().unwrap().to_owned();
        hub.transition(&s.vendor, &id, "accept", 1, None).await;
        otps.insert(id.clone(), otp);
        ids.push(id);
    }
    // Both ready at once.
    let (a, b) = tokio::join!(
        hub.transition(&s.vendor, &ids[0], "mark_ready", 2, None),
        hub.transition(&s.vendor, &ids[1], "mark_ready", 2, None)
    );
    assert_eq!((a.0, b.0), (200, 200));
    let got =
        d.ws.until("assigned", |v| v["event"]["kind"] == "assigned")
            .await;
    let now = got["order"]["id"].as_str().unwrap().to_owned();
    let later = ids.iter().find(|i| **i != now).unwrap().clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hub.ok(
            "GET",
            &format!("/api/orders/{later}"),
            Some(&s.vendor),
            None
        )
        .await["status"],
        "ready"
    );
    assert_eq!(
        hub.transition(&d.token, &now, "pick_up", 4, None).await.0,
        200
    );
    assert_eq!(
        hub.transition(&d.token, &now, "deliver", 5, Some(&otps[&now]))
            .await
            .0,
        200
    );
    let a = assigned_to(&mut d.ws, &later).await;
    assert_eq!(a["order"]["driver_id"], d.id.as_str());
}
#[sqlx::test]
async fn two_hundred_ready_orders_and_fifty_drivers_never_double_assign(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let s = shop(&hub).await;
    let mut drivers = Vec::new();
    for i in 0..50 {
        drivers.push(online_driver(&hub, s.lat + north(10.0 * i as f64), s.lng).await);
    }
    settle().await;
    let mut ids = Vec::new();
    for _ in 0..200 {
        let (o, _) = hub.order(&s.buyer, &s.id, &s.product, s.lat, s.lng).await;
        let id = o["id"].as_str().unwrap().to_owned();
        hub.transition(&s.vendor, &id, "accept", 1, None).await;
        ids.push(id);
    }
    let readies = ids
        .iter()
        .map(|id| hub.transition(&s.vendor, id, "mark_ready", 2, None));
    for (status, v) in futures::future::join_all(readies).await {
        assert_eq!(status, 200, "{v}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status = 'assigned'")
            .fetch_one(&db)
            .await
            .unwrap();
        if n == 50 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {n} assigned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows: Vec<(String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT status, driver_id FROM orders")
            .fetch_all(&db)
            .await
            .unwrap();
    let assigned: Vec<uuid::Uuid> = rows
        .iter()
        .filter(|r| r.0 == "assigned")
        .filter_map(|r| r.1)
        .collect();
    assert_eq!(assigned.len(), 50);
    assert_eq!(
        assigned.iter().collect::<HashSet<_>>().len(),
        50,
        "no driver twice"
    );
    assert_eq!(
        rows.iter().filter(|r| r.0 == "ready").count(),
        150,
        "the rest wait"
    );
    // Each driver heard of exactly one assignment.
    let mut per_driver: HashMap<String, usize> = HashMap::new();
    for d in &mut drivers {
        while let Some(v) = d.ws.next_json_within(Duration::from_millis(100)).await {
            if v["event"]["kind"] == "assigned" {
                *per_driver.entry(d.id.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(per_driver.len(), 50);
    assert!(per_driver.values().all(|n| *n == 1));
    // Every assignment event is in the log once.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM order_events WHERE kind = 'assigned'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 50);
}

#[sqlx::test]
async fn a_driver_offline_past_the_grace_period_loses_the_order_before_pickup_only(db: PgPool) {
    let mut cfg = common::config();
    cfg.driver_grace_s = 1;
    let hub = TestHub::start_with(db.clone(), cfg).await;
    let s = shop(&hub).await;
    let mut first = online_driver(&hub, s.lat + north(100.0), s.lng).await;
    settle().await;
    let id = ready_order(&hub, &s).await;
    assigned_to(&mut first.ws, &id).await;
    let mut second = online_driver(&hub, s.lat + north(900.0), s.lng).await;
    settle().await;
    drop(first.ws); // the phone dies before pickup
    let a = assigned_to(&mut second.ws, &id).await;
    assert_eq!(
        a["order"]["version"], 6,
        "unassigned (5), then assigned again (6)"
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM order_events WHERE order_id = $1::uuid ORDER BY version",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            "created",
            "accepted",
            "ready",
            "assigned",
            "unassigned",
            "assigned"
        ]
    );

    // After pickup the order is not silently reassigned: driver_lost is recorded.
    let mut vendor_ws = hub.socket(&s.vendor).await;
    vendor_ws.subscribe(&format!("shop:{}", s.id)).await;
    assert_eq!(
        hub.transition(&second.token, &id, "pick_up", 6, None)
            .await
            .0,
        200
    );
    drop(second.ws);
    let lost = vendor_ws
        .until("driver_lost", |v| v["event"]["kind"] == "driver_lost")
        .await;
    assert_eq!(lost["order"]["status"], "picked_up");
    assert_eq!(lost["order"]["driver_id"], second.id.as_str());
    assert_eq!(lost["event"]["payload"]["driver_id"], second.id.as_str());
}

#[sqlx::test]
async fn a_pending_order_the_vendor_ignores_is_cancelled_with_vendor_timeout(db: PgPool) {
    let mut cfg = common::config();
    cfg.accept_timeout_s = 1;
    let hub = TestHub::start_with(db, cfg).await;
    let s = shop(&hub).await;
    let mut buyer_ws = hub.socket(&s.buyer).await;
    let me = hub.ok("GET", "/api/me", Some(&s.buyer), None).await;
    buyer_ws
        .subscribe(&format!("buyer:{}", me["subject_id"].as_str().unwrap()))
        .await;
    let (o, _) = hub.order(&s.buyer, &s.id, &s.product, s.lat, s.lng).await;
    let (accepted, _) = hub.order(&s.buyer, &s.id, &s.product, s.lat, s.lng).await;
    hub.transition(
        &s.vendor,
        accepted["id"].as_str().unwrap(),
        "accept",
        1,
        None,
    )
    .await;
    let c = buyer_ws
        .until("cancelled", |v| v["event"]["kind"] == "cancelled")
        .await;
    assert_eq!(c["order"]["id"], o["id"]);
    assert_eq!(c["event"]["payload"]["reason"], "vendor_timeout");
    assert_eq!(c["event"]["actor"]["role"], "system");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let a = hub
        .ok(
            "GET",
            &format!("/api/orders/{}", accepted["id"].as_str().unwrap()),
            Some(&s.buyer),
            None,
        )
        .await;
    assert_eq!(a["status"], "accepted", "accepted orders are left alone");
}

#[sqlx::test]
async fn drivers_who_stop_reporting_are_not_dispatched_and_fleet_sees_them(db: PgPool) {
    let mut cfg = common::config();
    cfg.driver_stale_s = 2;
    let hub = TestHub::start_with(db, cfg).await;
    let s = shop(&hub).await;
    let mut fleet = hub.socket(common::ADMIN).await;
    fleet.subscribe("fleet").await;
    let mut d = online_driver(&hub, s.lat, s.lng).await;
    let v = fleet
        .until("driver", |v| {
            v["type"] == "driver"
                && v["driver"]["id"] == d.id.as_str()
                && v["driver"]["state"] == "free"
        })
        .await;
    assert!((v["driver"]["lat"].as_f64().unwrap() - s.lat).abs() < 1e-9);
    fleet
        .until("offline", |v| {
            v["type"] == "driver"
                && v["driver"]["id"] == d.id.as_str()
                && v["driver"]["state"] == "offline"
        })
        .await;
    let id = ready_order(&hub, &s).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        hub.ok("GET", &format!("/api/orders/{id}"), Some(&s.vendor), None)
            .await["status"],
        "ready"
    );
    d.ws.send(json!({"type": "location", "lat": s.lat, "lng": s.lng}))
        .await;
    assigned_to(&mut d.ws, &id).await;
    // Bad locations get an error frame.
    d.ws.send(json!({"type": "location", "lat": 123.0, "lng": 0.0}))
        .await;
    d.ws.until("bad_location", |v| v["code"] == "bad_location")
        .await;
}
