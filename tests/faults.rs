//! Faults answered clearly: every error in the JSON shape (404 and 405 included), a binary
//! flood closed like any other flood, and database errors classified (an outage is
//! `unavailable`, a constraint its own code, never a 500 for what a client can cause).

mod common;

use std::time::Duration;

use common::{TestHub, Ws};
use dispatch_hub::error::Error;
use serde_json::json;
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

#[sqlx::test]
async fn method_not_allowed_and_unknown_paths_answer_in_json(db: PgPool) {
    let hub = TestHub::start(db).await;
    for (method, path) in [
        ("DELETE", "/api/orders"),
        ("POST", "/api/me"),
        ("PUT", "/api/shops"),
        ("POST", "/readyz"),
    ] {
        let (s, v) = hub.call(method, path, None, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path}: {v}"
        );
    }
    for path in ["/api/nope", "/no-such-page.html", "/js/nope.js"] {
        let (s, v) = hub.call("GET", path, None, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{path}: {v}"
        );
    }
}

#[sqlx::test]
async fn a_binary_frame_flood_is_closed_with_4429(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (_, token) = hub.buyer().await;
    let mut ws = hub.socket(&token).await;
    for _ in 0..2_000 {
        if !ws.send_raw(Message::Binary(vec![1, 2, 3].into())).await {
            break; // the hub already closed
        }
    }
    let mut unsupported = 0;
    let code = loop {
        match tokio::time::timeout(common::WAIT, futures::StreamExt::next(&mut ws.inner)).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some(u16::from(f.code)),
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains("unsupported_frame") {
                    unsupported += 1;
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break None,
        }
    };
    assert_eq!(code, Some(4429));
    assert!(
        unsupported <= 60,
        "{unsupported} binary frames were answered"
    );
}

#[sqlx::test]
async fn an_administrator_shutdown_of_the_connection_is_an_outage_not_a_bug(db: PgPool) {
    // A backend terminated by an administrator (SQLSTATE 57P01), as when Postgres stops.
    let mut conn = db.acquire().await.unwrap();
    let e = sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert!(dispatch_hub::error::is_outage(&e), "{e:?}");
    let mapped = Error::from(e);
    assert_eq!(
        (mapped.code(), mapped.status().as_u16()),
        ("unavailable", 503)
    );
    assert!(mapped.body().contains_key("retry_after_s"));
    drop(conn);
    // The probe sees the database answer and clears the outage by itself.
    let hub = TestHub::start(db.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = hub.call("GET", "/readyz", None, None).await;
        if s == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A constraint the client can trip is its own code, not `internal`.
    let e = sqlx::query("INSERT INTO buyers (id, name, phone) VALUES (gen_random_uuid(), '', 'x')")
        .execute(&db)
        .await
        .unwrap_err();
    assert!(!dispatch_hub::error::is_outage(&e));
    let mapped = Error::from(e);
    assert_eq!(
        (mapped.code(), mapped.status().as_u16()),
        ("constraint_violation", 409)
    );
    // Sockets keep working throughout.
    let (_, token) = hub.buyer().await;
    let mut ws: Ws = hub.socket(&token).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await.unwrap()["type"], "pong");
}

/// An admin's transition with a reason, which must succeed; returns the order.
async fn admin_transition(
    hub: &TestHub,
    id: &str,
    action: &str,
    version: i64,
    reason: &str,
) -> serde_json::Value {
    let body = json!({"action": action, "expected_version": version, "reason": reason});
    let path = format!("/api/orders/{id}/transitions");
    hub.ok("POST", &path, Some(common::ADMIN), Some(body)).await
}

#[sqlx::test]
async fn an_admin_can_end_or_hand_back_any_non_final_order(db: PgPool) {
    use common::ADMIN;
    let hub = TestHub::start(db).await;
    let mut p = hub.party().await;
    let mut vendor_ws = hub.socket(&p.vendor).await;
    vendor_ws.subscribe(&format!("shop:{}", p.shop)).await;

    // A picked-up order whose driver is lost goes back to dispatch…
    let (id, _) = hub.assigned_order(&p).await;
    let (s, _) = hub
        .transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = hub.transition(ADMIN, &id, "unassign", 5, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "a reason is required"
    );
    let o = admin_transition(&hub, &id, "unassign", 5, "driver unreachable").await;
    assert_eq!(
        (o["status"].as_str(), o["version"].as_i64()),
        (Some("ready"), Some(6))
    );
    let ev = vendor_ws
        .until("unassigned", |v| v["event"]["kind"] == "unassigned")
        .await;
    assert_eq!(ev["event"]["payload"]["reason"], "driver unreachable");
    // …and the dispatcher assigns it again (the only driver is free once more).
    hub.wait_status(&p.vendor, &id, "assigned").await;

    // An assigned order can be failed by the admin; the driver is freed.
    let o = admin_transition(&hub, &id, "fail_delivery", 7, "shop closed").await;
    assert_eq!(o["status"], "delivery_failed");

    // A picked-up order can be cancelled by the admin; the driver takes the next order.
    let (id2, _) = hub.assigned_order(&p).await;
    let (s, _) = hub
        .transition(&p.driver_token, &id2, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    let o = admin_transition(&hub, &id2, "cancel", 5, "buyer called it off").await;
    assert_eq!(
        (o["status"].as_str(), o["driver_id"].as_str()),
        (Some("cancelled"), None)
    );
    let (id3, _) = hub.assigned_order(&p).await;
    let o = hub.wait_status(&p.vendor, &id3, "assigned").await;
    assert_eq!(o["driver_id"].as_str(), Some(p.driver.as_str()));
    // Final orders stay final.
    let body = json!({"action": "cancel", "expected_version": 8, "reason": "again"});
    let (s, v) = hub
        .call(
            "POST",
            &format!("/api/orders/{id}/transitions"),
            Some(ADMIN),
            Some(body),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    p.driver_ws.seen.clear();
}

#[sqlx::test]
async fn a_crashed_dispatcher_is_rebuilt_and_keeps_dispatching(db: PgPool) {
    use common::{ADMIN, config};
    let mut c = config();
    c.debug_faults = true;
    let hub = TestHub::start_with(db, c).await;
    let mut p = hub.party().await;
    let (first, _) = hub.assigned_order(&p).await;
    let (s, _) = hub
        .transition(&p.driver_token, &first, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);

    let (s, _) = hub
        .call(
            "POST",
            "/api/admin/debug/crash-dispatcher",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 202);
    // Ready again once the state is rebuilt from Postgres.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (s, _) = hub.call("GET", "/readyz", None, None).await;
        if s == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The rebuilt dispatcher knows the driver is busy (from Postgres) and still connected (the
    // re-announce): once the first order is delivered, the next one goes to them.
    let (second, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let second = second["id"].as_str().unwrap().to_owned();
    for (action, v) in [("accept", 1), ("mark_ready", 2)] {
        let (s, _) = hub.transition(&p.vendor, &second, action, v, None).await;
        assert_eq!(s, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, o) = hub
        .call(
            "GET",
            &format!("/api/orders/{second}"),
            Some(&p.vendor),
            None,
        )
        .await;
    assert_eq!(
        o["status"], "ready",
        "the busy driver must not get a second order"
    );
    admin_transition(&hub, &first, "fail_delivery", 5, "test").await;
    // A rebuilt dispatcher counts a driver online again at their next location (a driver app
    // sends one every few seconds).
    p.driver_ws
        .send(json!({"type": "location", "lat": p.lat + 0.001, "lng": p.lng}))
        .await;
    let o = hub.wait_status(&p.vendor, &second, "assigned").await;
    assert_eq!(o["driver_id"].as_str(), Some(p.driver.as_str()));
    // Without the debug flag the endpoint does not exist.
    let plain = TestHub::start(hub.hub().db.clone()).await;
    let (s, _) = plain
        .call(
            "POST",
            "/api/admin/debug/crash-dispatcher",
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[sqlx::test]
async fn a_commit_whose_answer_was_lost_is_published_once_postgres_answers(db: PgPool) {
    use dispatch_hub::domain::OrderId;
    use dispatch_hub::service::reconcile::Ambiguous;
    let hub = TestHub::start(db.clone()).await;
    let p = hub.party().await;
    let mut vendor_ws = hub.socket(&p.vendor).await;
    vendor_ws.subscribe(&format!("shop:{}", p.shop)).await;
    let (o, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    let (s, _) = hub.transition(&p.vendor, &id, "accept", 1, None).await;
    assert_eq!(s, 200);
    // `mark_ready` committed, but its answer never reached the hub: nothing was published and
    // the dispatcher never heard of it.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "UPDATE orders SET status = 'ready', version = 3, ready_at = now() WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO order_events (order_id, version, kind, actor_role, actor_id)
         VALUES ($1::uuid, 3, 'ready', 'vendor', $2::uuid)",
    )
    .bind(&id)
    .bind(&p.shop)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let order = OrderId(id.parse().unwrap());
    hub.hub().commit_unknown(Ambiguous {
        order,
        version: 3,
        previous_driver: None,
    });
    let ev = vendor_ws
        .until("ready", |v| v["event"]["kind"] == "ready")
        .await;
    assert_eq!(ev["order"]["version"], 3);
    // The dispatcher heard of it too: the party's driver gets the order.
    vendor_ws
        .until("assigned", |v| v["event"]["kind"] == "assigned")
        .await;
    // An outcome that did not land (the order is still at the old version) publishes nothing.
    hub.hub().commit_unknown(Ambiguous {
        order,
        version: 99,
        previous_driver: None,
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let versions: Vec<i64> = vendor_ws
        .orders_seen()
        .iter()
        .filter(|m| m.0 == id)
        .map(|m| m.1)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4], "every version once, in order");
}

#[sqlx::test]
async fn a_ready_order_without_a_driver_is_reported_and_stays_dispatchable(db: PgPool) {
    use common::{ADMIN, config};
    let mut c = config();
    c.ready_alert_s = 1;
    let hub = TestHub::start_with(db, c).await;
    let mut p = hub.party().await;
    // The only driver is off shift.
    p.driver_ws
        .send(json!({"type": "availability", "available": false}))
        .await;
    p.driver_ws
        .until("availability", |v| v["type"] == "availability")
        .await;
    let mut vendor_ws = hub.socket(&p.vendor).await;
    vendor_ws.subscribe(&format!("shop:{}", p.shop)).await;
    let mut fleet = hub.socket(ADMIN).await;
    fleet.subscribe("fleet").await;
    let (o, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    for (action, v) in [("accept", 1), ("mark_ready", 2)] {
        let (s, _) = hub.transition(&p.vendor, &id, action, v, None).await;
        assert_eq!(s, 200);
    }
    let ev = vendor_ws
        .until("dispatch_delayed", |v| {
            v["event"]["kind"] == "dispatch_delayed"
        })
        .await;
    assert_eq!(
        (
            ev["order"]["status"].as_str(),
            ev["order"]["version"].as_i64()
        ),
        (Some("ready"), Some(4))
    );
    assert!(ev["event"]["payload"]["waited_s"].as_u64().is_some());
    fleet
        .until("fleet sees it", |v| {
            v["event"]["kind"] == "dispatch_delayed"
        })
        .await;
    // Reported once only.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let (_, events) = hub
        .call(
            "GET",
            &format!("/api/orders/{id}/events"),
            Some(&p.vendor),
            None,
        )
        .await;
    let delayed = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .map(|a| a.iter().filter(|e| e["kind"] == "dispatch_delayed").count())
        .unwrap_or(0);
    assert_eq!(delayed, 1, "{events}");
    // Still dispatchable: the driver comes back on shift and gets it.
    p.driver_ws
        .send(json!({"type": "availability", "available": true}))
        .await;
    let o = hub.wait_status(&p.vendor, &id, "assigned").await;
    assert_eq!(o["version"], 5);
}

#[sqlx::test]
async fn the_dispatcher_reconciles_its_queue_with_postgres(db: PgPool) {
    use common::config;
    let mut c = config();
    c.dispatch_reconcile_s = 1;
    let hub = TestHub::start_with(db.clone(), c).await;
    let p = hub.party().await;
    let (o, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    // The order became ready behind the dispatcher's back (a change it never heard of).
    sqlx::query(
        "WITH o AS (UPDATE orders SET status = 'ready', version = 2, ready_at = now()
                    WHERE id = $1::uuid RETURNING id)
         INSERT INTO order_events (order_id, version, kind, actor_role)
         SELECT id, 2, 'ready', 'system' FROM o",
    )
    .bind(&id)
    .execute(&db)
    .await
    .unwrap();
    let o = hub.wait_status(&p.vendor, &id, "assigned").await;
    assert_eq!(o["driver_id"].as_str(), Some(p.driver.as_str()));
}
