//! Live sockets: real WebSockets against a real hub and Postgres.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{ADMIN, TestHub, Ws, order_msg};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_tungstenite::tungstenite::Message;

#[sqlx::test]
async fn every_party_sees_every_transition_once_and_in_order(db: PgPool) {
    let hub = TestHub::start(db).await;
    let mut p = hub.party().await;
    let mut vendor = hub.socket(&p.vendor).await;
    assert_eq!(
        vendor.subscribe(&format!("shop:{}", p.shop)).await["orders"],
        json!([])
    );
    let mut buyer = hub.socket(&p.buyer_token).await;
    buyer.subscribe(&format!("buyer:{}", p.buyer)).await;
    p.driver_ws.subscribe(&format!("driver:{}", p.driver)).await;

    // Placed over REST, accepted and readied over the vendor's socket.
    let (o, otp) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    let created = vendor.until("created", |v| v["type"] == "order").await;
    // Overlapping topics: the order also on its own topic — still each version once.
    let snap = vendor.subscribe(&format!("order:{id}")).await;
    assert_eq!(snap["orders"][0]["version"], 1);
    assert_eq!(
        (
            created["event"]["kind"].as_str(),
            created["order"]["version"].as_i64()
        ),
        (Some("created"), Some(1))
    );
    vendor.send(json!({"type": "transition", "ref": "a", "order_id": id, "action": "accept", "expected_version": 1})).await;
    let ack = vendor.until("ack a", |v| v["ref"] == "a").await;
    assert_eq!(
        (ack["type"].as_str(), ack["order"]["version"].as_i64()),
        (Some("ack"), Some(2))
    );
    vendor.send(json!({"type": "transition", "ref": "r", "order_id": id, "action": "mark_ready", "expected_version": 2})).await;
    vendor.until("ack r", |v| v["ref"] == "r").await;

    // The dispatcher assigns the only driver; the driver works the order over its socket.
    let assigned = p
        .driver_ws
        .until("assigned", |v| v["event"]["kind"] == "assigned")
        .await;
    assert_eq!(assigned["order"]["driver_id"], p.driver.as_str());
    assert_eq!(assigned["order"]["version"], 4);
    p.driver_ws.send(json!({"type": "transition", "ref": "p", "order_id": id, "action": "pick_up", "expected_version": 4})).await;
    p.driver_ws.until("ack p", |v| v["ref"] == "p").await;
    // A wrong OTP over the socket gets the REST code.
    p.driver_ws.send(json!({"type": "transition", "ref": "x", "order_id": id, "action": "deliver", "expected_version": 5, "otp": "abc"})).await;
    let err = p.driver_ws.until("error x", |v| v["ref"] == "x").await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("invalid_otp"))
    );
    // Delivered over REST: sockets hear it all the same.
    let (s, _) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!(s, 200);

    let want: Vec<(i64, &str)> = vec![
        (1, "created"),
        (2, "accepted"),
        (3, "ready"),
        (4, "assigned"),
        (5, "picked_up"),
        (6, "delivered"),
    ];
    for ws in [&mut vendor, &mut buyer] {
        ws.until_kind("delivered").await;
        let got: Vec<(i64, String)> = ws.orders_seen().into_iter().map(|m| (m.1, m.2)).collect();
        let want: Vec<(i64, String)> = want.iter().map(|(v, k)| (*v, k.to_string())).collect();
        assert_eq!(got, want);
    }
    // The driver saw the order from its assignment on, once each.
    p.driver_ws.until_kind("delivered").await;
    let got: Vec<i64> = p.driver_ws.orders_seen().iter().map(|m| m.1).collect();
    assert_eq!(got, vec![4, 5, 6]);
    // Nothing more arrives: no duplicates.
    assert!(
        vendor
            .next_json_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[sqlx::test]
async fn snapshot_plus_live_events_hold_every_version_exactly_once(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, vendor, product) = hub.shop(-33.9, 151.2).await; // no driver anywhere near
    let (_, buyer) = hub.buyer().await;
    let n = 25;
    // Subscribers join at different moments while the writer commits.
    let writer = {
        let (base, http, vendor, buyer, shop, product) = (
            hub.base.clone(),
            hub.http.clone(),
            vendor.clone(),
            buyer.clone(),
            shop.clone(),
            product.clone(),
        );
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..n {
                let body = json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 1}],
                                  "delivery": {"lat": -33.9, "lng": 151.21, "address": "C 3"}, "payment": "cod"});
                let v: Value = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&buyer)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let id = v["order"]["id"].as_str().unwrap().to_owned();
                for (action, version) in [("accept", 1), ("mark_ready", 2)] {
                    let r = http
                        .post(format!("{base}/api/orders/{id}/transitions"))
                        .bearer_auth(&vendor)
                        .json(&json!({"action": action, "expected_version": version}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 200);
                }
                ids.push(id);
            }
            ids
        })
    };
    let mut subs = Vec::new();
    for delay_ms in [0u64, 40, 90, 160, 250] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let mut ws = hub.socket(&vendor).await;
        let snap = ws.subscribe(&format!("shop:{shop}")).await;
        subs.push((ws, snap));
    }
    let ids = writer.await.unwrap();
    for (mut ws, snap) in subs {
        let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
        for o in snap["orders"].as_array().unwrap() {
            seen.entry(o["id"].as_str().unwrap().to_owned())
                .or_default()
                .push(o["version"].as_i64().unwrap());
        }
        while !ids
            .iter()
            .all(|id| seen.get(id).and_then(|v| v.last()) == Some(&3))
        {
            let v = ws.next_json().await.expect("events keep coming");
            if let Some((id, version, _)) = order_msg(&v) {
                seen.entry(id).or_default().push(version);
            }
        }
        for id in &ids {
            let v = &seen[id];
            let start = v[0];
            let expected: Vec<i64> = (start..=3).collect();
            assert_eq!(v, &expected, "order {id}: every version once, in order");
        }
    }
}

#[sqlx::test]
async fn subscriptions_are_authorized_per_role_and_subject(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop_a, vendor_a, product) = hub.shop(1.0, 1.0).await;
    let (shop_b, _, _) = hub.shop(2.0, 2.0).await;
    let (driver_d, driver) = hub.driver().await;
    let (driver_e, _) = hub.driver().await;
    let (buyer_b, buyer) = hub.buyer().await;
    let (buyer_c, other_buyer) = hub.buyer().await;
    let (mine, _) = hub.order(&buyer, &shop_a, &product, 1.01, 1.0).await;
    let (theirs, _) = hub.order(&other_buyer, &shop_a, &product, 1.01, 1.0).await;
    let mine = mine["id"].as_str().unwrap().to_owned();
    let theirs = theirs["id"].as_str().unwrap().to_owned();
    let topics = [
        format!("shop:{shop_a}"),
        format!("shop:{shop_b}"),
        format!("driver:{driver_d}"),
        format!("driver:{driver_e}"),
        format!("buyer:{buyer_b}"),
        format!("buyer:{buyer_c}"),
        format!("order:{mine}"),
        "fleet".to_owned(),
        "order:00000000-0000-7000-8000-000000000000".to_owned(),
    ];
    // Which topics each principal may subscribe to (by index above).
    let matrix: [(&str, &str, &[usize]); 4] = [
        ("admin", ADMIN, &[0, 1, 2, 3, 4, 5, 6, 7]),
        ("vendor A", &vendor_a, &[0, 6]),
        ("driver D", &driver, &[2]),
        ("buyer B", &buyer, &[4, 6]),
    ];
    for (who, token, allowed) in matrix {
        let mut ws = hub.socket(token).await;
        for (i, t) in topics.iter().enumerate() {
            let v = ws.subscribe(t).await;
            if allowed.contains(&i) {
                assert_eq!(v["type"], "snapshot", "{who} on {t}: {v}");
            } else {
                assert_eq!(
                    (v["type"].as_str(), v["code"].as_str()),
                    (Some("error"), Some("forbidden")),
                    "{who} on {t}"
                );
            }
        }
        let v = ws.subscribe(&format!("order:{theirs}")).await;
        let expect_ok = who == "admin" || who == "vendor A";
        assert_eq!(
            v["type"] == "snapshot",
            expect_ok,
            "{who} on the other buyer's order"
        );
        for bad in ["shop:xyz", "nope", "order:", "fleet:1"] {
            let v = ws.subscribe(bad).await;
            assert_eq!(v["code"], "bad_topic", "{bad}");
        }
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(
            ws.until("pong", |v| v["type"] == "pong").await["type"],
            "pong",
            "still open"
        );
    }
}

#[sqlx::test]
async fn a_client_that_never_reads_cannot_hold_back_the_others(db: PgPool) {
    let mut cfg = common::config();
    cfg.ws_queue = 64;
    let hub = TestHub::start_with(db, cfg).await;
    let (shop, vendor, _) = hub.shop(3.0, 3.0).await;
    let topic = format!("shop:{shop}");
    let mut laggard = Ws::connect_small_buffer(&hub.ws_url).await;
    laggard.send(json!({"type": "auth", "token": vendor})).await;
    assert_eq!(laggard.next_json().await.unwrap()["type"], "welcome");
    laggard.subscribe(&topic).await;
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut ws = hub.socket(&vendor).await;
        ws.subscribe(&topic).await;
        readers.push(ws);
    }
    let registry = hub.hub().registry.clone();
    let t = dispatch_hub::realtime::Topic::parse(&topic).unwrap();
    assert_eq!(registry.subscriber_count(t), 3);
    let total = 10_000usize;
    let pad = "x".repeat(2_000);
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            let text = format!(r#"{{"type":"test","seq":{i},"pad":"{pad}"}}"#);
            registry.publish(t, &dispatch_hub::realtime::Outbound::Text(text.into()));
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
    });
    let mut handles = Vec::new();
    for mut ws in readers {
        handles.push(tokio::spawn(async move {
            let mut next = 0usize;
            while next < total {
                let v = ws.next_json().await.expect("reader keeps receiving");
                if v["type"] == "test" {
                    assert_eq!(
                        v["seq"].as_u64().unwrap() as usize,
                        next,
                        "in order, none lost"
                    );
                    next += 1;
                }
            }
            (next, ws)
        }));
    }
    publisher.await.unwrap();
    let mut readers = Vec::new();
    for h in handles {
        let (n, ws) = h.await.unwrap();
        assert_eq!(n, total);
        readers.push(ws); // keep them connected
    }
    // The laggard was cut loose: no longer subscribed, its queue freed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hub.hub().registry.subscriber_count(t) != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "laggard still registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = 0usize;
    let mut code = None;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut laggard.inner),
        )
        .await
        {
            Ok(Some(Ok(Message::Text(_)))) => got += 1,
            Ok(Some(Ok(Message::Close(f)))) => {
                code = f.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    assert!(
        got < total,
        "the laggard did not get everything buffered ({got})"
    );
    assert!(
        code.is_none() || code == Some(4408),
        "closed with 4408 or dropped: {code:?}"
    );
}

#[sqlx::test]
async fn bad_input_gets_the_documented_answer(db: PgPool) {
    let mut cfg = common::config();
    cfg.ws_auth_timeout_s = 1;
    let hub = TestHub::start_with(db, cfg).await;
    let (_, buyer) = hub.buyer().await;

    // Not authenticating first, a bad token, or nothing at all: 4401.
    let mut ws = Ws::connect(&hub.ws_url).await;
    ws.send(json!({"type": "subscribe", "topic": "fleet"}))
        .await;
    assert_eq!(ws.close_code().await, Some(4401));
    let mut ws = Ws::connect(&hub.ws_url).await;
    ws.send(json!({"type": "auth", "token": "nope"})).await;
    assert_eq!(ws.close_code().await, Some(4401));
    let mut ws = Ws::connect(&hub.ws_url).await;
    assert_eq!(ws.close_code().await, Some(4401), "auth timeout");

    let mut ws = hub.socket(&buyer).await;
    assert!(ws.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await);
    assert_eq!(ws.next_json().await.unwrap()["code"], "unsupported_frame");
    assert!(ws.send_raw(Message::Text("{not json".into())).await);
    assert_eq!(ws.next_json().await.unwrap()["code"], "bad_request");
    ws.send(json!({"type": "teleport"})).await;
    assert_eq!(ws.next_json().await.unwrap()["code"], "bad_request");
    ws.send(json!({"type": "transition", "order_id": "x"}))
        .await;
    assert_eq!(ws.next_json().await.unwrap()["code"], "bad_request");
    ws.send(json!({"type": "location", "lat": 1.0, "lng": 2.0}))
        .await;
    assert_eq!(
        ws.next_json().await.unwrap()["code"],
        "forbidden",
        "buyers send no locations"
    );
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(
        ws.next_json().await.unwrap()["type"],
        "pong",
        "still open after errors"
    );
    // Over 16 KiB: 1009.
    assert!(
        ws.send_raw(Message::Text("x".repeat(20 * 1024).into()))
            .await
    );
    assert_eq!(ws.close_code().await, Some(1009));
    let mut ws = hub.socket(&buyer).await;
    assert!(
        ws.send_raw(Message::Text("y".repeat(200 * 1024).into()))
            .await
    );
    assert_eq!(ws.close_code().await, Some(1009), "over the hard cap too");

    // Flooding: a warning, then 4429.
    let mut ws = hub.socket(&buyer).await;
    for _ in 0..200 {
        if !ws
            .send_raw(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
        {
            break;
        }
    }
    let mut warned = false;
    let code = loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut ws.inner),
        )
        .await
        {
            Ok(Some(Ok(Message::Text(t)))) => warned |= t.contains("rate_limited"),
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close: {other:?}"),
        }
    };
    assert!(warned);
    assert_eq!(code, Some(4429));
}

#[sqlx::test]
async fn silent_clients_are_closed_and_shutdown_says_going_away(db: PgPool) {
    let mut cfg = common::config();
    cfg.ws_ping_s = 1;
    cfg.ws_idle_s = 2;
    let mut hub = TestHub::start_with(db, cfg).await;
    let (_, buyer) = hub.buyer().await;
    let mut idle = hub.socket(&buyer).await;
    // Reading nothing means answering no pings.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(idle.close_code().await, Some(4000));

    let mut live = hub.socket(&buyer).await;
    live.subscribe(&format!("buyer:{}", buyer_id(&hub, &buyer).await))
        .await;
    hub.stop().await;
    assert_eq!(live.close_code().await, Some(1001));
}

async fn buyer_id(hub: &TestHub, token: &str) -> String {
    hub.ok("GET", "/api/me", Some(token), None).await["subject_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[sqlx::test]
async fn metrics_count_connections_and_events(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (_, buyer) = hub.buyer().await;
    let _ws = hub.socket(&buyer).await;
    let text = hub
        .http
        .get(format!("{}/metrics", hub.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let names: BTreeMap<&str, ()> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .map(|n| (n, ()))
        .collect();
    assert!(names.contains_key("hub_connections"), "{text}");
}
