//! Crash recovery: the real binary is killed with SIGKILL mid-flow and started again on the
//! same database. No transition it acknowledged may be lost; no driver may end up with two
//! active orders; every order's event log stays gapless; waiting orders are dispatched again.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::process::{Proc, db_url_for, free_port, wait_for};
use common::{ADMIN, TestHub, Ws};
use serde_json::{Value, json};
use sqlx::PgPool;

struct World {
    shop: String,
    vendor: String,
    product: String,
    buyer: String,
    drivers: HashMap<String, String>, // id -> token
    otps: HashMap<String, String>,
    /// Every transition the hub acknowledged: (order, version, status).
    acked: Vec<(String, i64, String)>,
}

/// One step of everyone's work: vendors accept and ready, drivers pick up and deliver.
async fn work(hub: &TestHub, w: &mut World, place: bool) -> usize {
    if place {
        let body = json!({"shop_id": w.shop, "items": [{"product_id": w.product, "quantity": 1}],
                          "delivery": {"lat": 0.001, "lng": 0.001, "address": "R 1"}, "payment": "cod"});
        let (s, v) = hub
            .call("POST", "/api/orders", Some(&w.buyer), Some(body))
            .await;
        if s == 201 {
            let id = v["order"]["id"].as_str().unwrap().to_owned();
            w.otps
                .insert(id.clone(), v["otp"].as_str().unwrap().to_owned());
            w.acked.push((id, 1, "pending".into()));
        }
    }
    let (s, list) = hub
        .call("GET", "/api/orders?limit=100", Some(ADMIN), None)
        .await;
    if s != 200 {
        return usize::MAX;
    }
    let mut active = 0;
    for o in list["orders"].as_array().unwrap() {
        let id = o["id"].as_str().unwrap();
        let version = o["version"].as_i64().unwrap();
        let status = o["status"].as_str().unwrap();
        let driver = o["driver_id"]
            .as_str()
            .and_then(|d| w.drivers.get(d))
            .cloned();
        let (token, action) = match (status, driver) {
            ("pending", _) => (w.vendor.clone(), "accept"),
            ("accepted", _) => (w.vendor.clone(), "mark_ready"),
            ("assigned", Some(t)) => (t, "pick_up"),
            ("picked_up", Some(t)) => (t, "deliver"),
            ("ready", _) => {
                active += 1;
                continue;
            }
            _ => continue,
        };
        active += 1;
        let otp = w.otps.get(id).cloned();
        let (s, v) = hub
            .transition(
                &token,
                id,
                action,
                version,
                otp.as_deref().filter(|_| action == "deliver"),
            )
            .await;
        if s == 200 {
            w.acked.push((
                id.to_owned(),
                v["version"].as_i64().unwrap(),
                v["status"].as_str().unwrap().to_owned(),
            ));
        }
    }
    active
}

async fn drivers_online(hub: &TestHub, w: &World) -> Vec<Ws> {
    let mut socks = Vec::new();
    for (i, token) in w.drivers.values().enumerate() {
        let mut ws = hub.socket(token).await;
        ws.send(json!({"type": "location", "lat": 0.0005 * i as f64, "lng": 0.0}))
            .await;
        socks.push(ws);
    }
    socks
}

/// A hub in a process of its own on `db`, ready: (client, process, database url, bind, base).
async fn hub_process(db: &PgPool) -> (TestHub, Proc, String, String, String) {
    dispatch_hub::store::MIGRATOR.run(db).await.unwrap();
    let url = db_url_for(db);
    let bind = format!("127.0.0.1:{}", free_port());
    let base = format!("http://{bind}");
    let proc = Proc::spawn(&url, &bind, &[]);
    let hub = TestHub {
        running: None,
        base: base.clone(),
        ws_url: format!("ws://{bind}/ws"),
        http: reqwest::Client::new(),
    };
    wait_for(&hub.http, &base, "/readyz").await;
    (hub, proc, url, bind, base)
}

#[sqlx::test]
async fn kill_dash_nine_mid_flow_loses_nothing_committed(db: PgPool) {
    let (hub, mut proc, url, bind, base) = hub_process(&db).await;

    let (shop, vendor, product) = hub.shop(0.0, 0.0).await;
    let (_, buyer) = hub.buyer().await;
    let mut drivers = HashMap::new();
    for _ in 0..4 {
        let (id, token) = hub.driver().await;
        drivers.insert(id, token);
    }
    let mut w = World {
        shop,
        vendor,
        product,
        buyer,
        drivers,
        otps: HashMap::new(),
        acked: Vec::new(),
    };
    let socks = drivers_online(&hub, &w).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Work for a while, then pull the plug in the middle of it.
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        proc.kill9();
        proc
    });
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_500);
    while tokio::time::Instant::now() < deadline {
        work(&hub, &mut w, true).await;
    }
    let proc = killer.await.unwrap();
    drop(socks);
    let before = w.acked.len();
    assert!(
        before > 10,
        "the flow did some work before the crash ({before})"
    );

    // Start again on the same database; drivers reconnect.
    drop(proc);
    let _proc = Proc::spawn(&url, &bind, &[]);
    wait_for(&hub.http, &base, "/readyz").await;
    let _socks = drivers_online(&hub, &w).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let active = work(&hub, &mut w, false).await;
        if active == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{active} orders still active after restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Nothing acknowledged was lost.
    for (order, version, status) in &w.acked {
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT kind FROM order_events WHERE order_id = $1::uuid AND version = $2",
        )
        .bind(order)
        .bind(*version as i32)
        .fetch_optional(&db)
        .await
        .unwrap();
        let expected = match status.as_str() {
            "pending" => "created",
            "ready" => "ready",
            s => s,
        };
        assert_eq!(
            kind.as_deref(),
            Some(expected),
            "acked {order} v{version} {status}"
        );
    }
    // Every log is gapless and matches its order's version.
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.version <> (SELECT count(*) FROM order_events e WHERE e.order_id = o.id)
            OR o.version <> (SELECT max(version) FROM order_events e WHERE e.order_id = o.id)")
        .fetch_one(&db).await.unwrap();
    assert_eq!(bad, 0);
    // Everything was delivered, each by one driver, with one commission each.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM orders GROUP BY status")
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].0, "delivered");
    let c: i64 = sqlx::query_scalar("SELECT count(*) FROM commissions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(c, rows[0].1);
    // No driver was ever given a second order while holding one: replay the log.
    let events: Vec<(uuid::Uuid, String, Value)> = sqlx::query_as(
        "SELECT order_id, kind, payload FROM order_events ORDER BY created_at, order_id, version",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    let mut holding: HashMap<String, uuid::Uuid> = HashMap::new();
    let mut driver_of: HashMap<uuid::Uuid, String> = HashMap::new();
    for (order, kind, payload) in events {
        match kind.as_str() {
            "assigned" => {
                let d = payload["driver_id"].as_str().unwrap().to_owned();
                assert!(
                    !holding.contains_key(&d),
                    "driver {d} got a second active order"
                );
                assert!(
                    !driver_of.contains_key(&order),
                    "order {order} got a second driver"
                );
                holding.insert(d.clone(), order);
                driver_of.insert(order, d);
            }
            "declined" | "unassigned" | "delivered" | "delivery_failed" => {
                if let Some(d) = driver_of.remove(&order) {
                    holding.remove(&d);
                }
            }
            _ => {}
        }
    }
}

/// The hub writes transitions of different orders in groups (one statement, one commit). A
/// kill while groups are in flight must lose nothing it acknowledged and leave no group half
/// written: every log stays gapless.
#[sqlx::test]
async fn kill_dash_nine_mid_group_commit_loses_nothing_acknowledged(db: PgPool) {
    let (hub, mut proc, url, bind, base) = hub_process(&db).await;
    let (shop, vendor, product) = hub.shop(0.0, 0.0).await;
    let (_, buyer) = hub.buyer().await;
    let mut orders = Vec::new();
    for _ in 0..160 {
        let (o, _) = hub.order(&buyer, &shop, &product, 0.001, 0.001).await;
        orders.push(o["id"].as_str().unwrap().to_owned());
    }

    // 32 clients at once, each walking its orders to `ready`; the kill lands mid-stream.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, i64, String)>::new()));
    let cut_off = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for share in orders.chunks(orders.len() / 32) {
        let (http, base, vendor, share) = (
            hub.http.clone(),
            base.clone(),
            vendor.clone(),
            share.to_vec(),
        );
        let (acked, cut_off) = (acked.clone(), cut_off.clone());
        clients.push(tokio::spawn(async move {
            for id in share {
                for (action, version) in [("accept", 1), ("mark_ready", 2)] {
                    let sent = http
                        .post(format!("{base}/api/orders/{id}/transitions"))
                        .bearer_auth(&vendor)
                        .json(&json!({"action": action, "expected_version": version}))
                        .send()
                        .await;
                    let Ok(r) = sent else {
                        // In flight when the hub died: its outcome is unknown to this client.
                        cut_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    };
                    let Ok(v) = r.json::<Value>().await else {
                        cut_off.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    };
                    let Some(status) = v["status"].as_str() else {
                        return;
                    };
                    acked.lock().unwrap().push((
                        id.clone(),
                        v["version"].as_i64().unwrap(),
                        status.to_owned(),
                    ));
                }
            }
        }));
    }
    // Pull the plug once the stream is well under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 60 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proc.kill9();
    for c in clients {
        c.await.unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let cut_off = cut_off.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        !acked.is_empty() && cut_off > 0,
        "the kill landed mid-stream ({} acknowledged, {cut_off} in flight)",
        acked.len()
    );

    // Start again: everything acknowledged is there, and every log is whole.
    drop(proc);
    let _proc = Proc::spawn(&url, &bind, &[]);
    wait_for(&hub.http, &base, "/readyz").await;
    for (order, version, status) in &acked {
        let kind: Option<String> = sqlx::query_scalar(
            "SELECT kind FROM order_events WHERE order_id = $1::uuid AND version = $2",
        )
        .bind(order)
        .bind(*version as i32)
        .fetch_optional(&db)
        .await
        .unwrap();
        assert_eq!(
            kind.as_deref(),
            Some(status.as_str()),
            "acked {order} v{version}"
        );
    }
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders o WHERE o.version <> (SELECT count(*) FROM order_events e WHERE e.order_id = o.id)
            OR o.version <> (SELECT max(version) FROM order_events e WHERE e.order_id = o.id)
            OR o.status <> (SELECT CASE e.kind WHEN 'created' THEN 'pending' ELSE e.kind END
                            FROM order_events e WHERE e.order_id = o.id AND e.version = o.version)",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(bad, 0, "every order's row and log agree");
    // And the restarted hub carries on from wherever each order stopped.
    for id in &orders {
        let (_, o) = hub
            .call("GET", &format!("/api/orders/{id}"), Some(&vendor), None)
            .await;
        let mut version = o["version"].as_i64().unwrap();
        for (from, action) in [("pending", "accept"), ("accepted", "mark_ready")] {
            let (_, o) = hub
                .call("GET", &format!("/api/orders/{id}"), Some(&vendor), None)
                .await;
            if o["status"] == from {
                let (s, _) = hub.transition(&vendor, id, action, version, None).await;
                assert_eq!(s, 200, "{action} {id} after the restart");
                version += 1;
            }
        }
    }
    let not_ready: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE status <> 'ready'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(not_ready, 0);
}
