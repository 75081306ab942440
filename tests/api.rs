//! The REST API against a real hub and a real Postgres.

mod common;

use common::{ADMIN, TestHub};
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test]
async fn health_and_readiness_answer(db: PgPool) {
    let hub = TestHub::start(db).await;
    assert_eq!(hub.ok("GET", "/healthz", None, None).await["status"], "ok");
    assert_eq!(
        hub.ok("GET", "/readyz", None, None).await["status"],
        "ready"
    );
    let (s, v) = hub.call("GET", "/api/nope", None, None).await;
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));
}

#[sqlx::test]
async fn admin_routes_need_the_admin_token(db: PgPool) {
    let hub = TestHub::start(db).await;
    let body = json!({"name": "S", "lat": 1.0, "lng": 2.0});
    let (s, v) = hub
        .call("POST", "/api/admin/shops", None, Some(body.clone()))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (s, _) = hub
        .call(
            "POST",
            "/api/admin/shops",
            Some("wrong"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 401);
    let (_, buyer) = hub.buyer().await;
    let (s, v) = hub
        .call("POST", "/api/admin/shops", Some(&buyer), Some(body))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = hub
        .call(
            "POST",
            "/api/admin/shops",
            Some(ADMIN),
            Some(json!({"name": "S", "lat": 91.0, "lng": 2.0})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let (s, v) = hub
        .call(
            "POST",
            "/api/admin/shops",
            Some(ADMIN),
            Some(json!({"name": "S\u{0000}", "lat": 1.0, "lng": 2.0})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("validation_failed")),
        "NUL is refused, not a 500"
    );
    let (s, _) = hub
        .call(
            "POST",
            "/api/buyers",
            None,
            Some(json!({"name": "B\u{0000}", "phone": "12345"})),
        )
        .await;
    assert_eq!(s, 422);
    let (s, v) = hub
        .call("POST", "/api/auth/logout", Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "the admin token is not revocable"
    );
}

#[sqlx::test]
async fn login_codes_are_stored_hashed_and_tokens_work(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let v = hub
        .ok(
            "POST",
            "/api/admin/drivers",
            Some(ADMIN),
            Some(json!({"name": "D"})),
        )
        .await;
    let code = v["login_code"].as_str().unwrap();
    assert_eq!(code.len(), 8);
    let stored: String = sqlx::query_scalar("SELECT login_code_hash FROM drivers")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$") && !stored.contains(code));
    let id = v["driver"]["id"].as_str().unwrap();
    let t = hub
        .ok(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"role": "driver", "account_id": id, "code": code})),
        )
        .await;
    let token = t["token"].as_str().unwrap();
    assert!(token.len() >= 43, "256-bit token");
    let me = hub.ok("GET", "/api/me", Some(token), None).await;
    assert_eq!(
        (me["role"].as_str(), me["subject_id"].as_str()),
        (Some("driver"), Some(id))
    );
    let stored: String = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_ne!(stored, token);
    let (s, _) = hub
        .call("POST", "/api/auth/logout", Some(token), None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = hub.call("GET", "/api/me", Some(token), None).await;
    assert_eq!(s, 401);
}

#[sqlx::test]
async fn failed_logins_are_rate_limited_per_account(db: PgPool) {
    let hub = TestHub::start(db).await;
    let v = hub
        .ok(
            "POST",
            "/api/admin/shops",
            Some(ADMIN),
            Some(json!({"name": "S", "lat": 1.0, "lng": 2.0})),
        )
        .await;
    let id = v["shop"]["id"].as_str().unwrap();
    let good = v["login_code"].as_str().unwrap();
    let wrong = if good == "000000" { "000001" } else { "000000" };
    for _ in 0..5 {
        let (s, v) = hub
            .call(
                "POST",
                "/api/auth/login",
                None,
                Some(json!({"role": "vendor", "account_id": id, "code": wrong})),
            )
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    let resp = hub
        .http
        .post(format!("{}/api/auth/login", hub.base))
        .json(&json!({"role": "vendor", "account_id": id, "code": good}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
}

#[sqlx::test]
async fn only_the_shops_vendor_adds_products(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop_a, vendor_a, _) = hub.shop(1.0, 1.0).await;
    let (_, vendor_b, _) = hub.shop(2.0, 2.0).await;
    let body = json!({"name": "Tea", "price_cents": 250});
    let (s, _) = hub
        .call(
            "POST",
            &format!("/api/shops/{shop_a}/products"),
            Some(&vendor_b),
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = hub
        .call(
            "POST",
            &format!("/api/shops/{shop_a}/products"),
            Some(&vendor_a),
            Some(body),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = hub
        .call(
            "POST",
            &format!("/api/shops/{shop_a}/products"),
            Some(&vendor_a),
            Some(json!({"name": "X", "price_cents": -1})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("validation_failed"))
    );
    let list = hub
        .ok("GET", &format!("/api/shops/{shop_a}/products"), None, None)
        .await;
    assert_eq!(list["products"].as_array().unwrap().len(), 2);
    let (s, _) = hub
        .call(
            "GET",
            "/api/shops/00000000-0000-7000-8000-000000000000/products",
            None,
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[sqlx::test]
async fn order_input_is_validated_and_priced_by_the_hub(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, vendor, product) = hub.shop(52.5, 13.4).await;
    let (other_shop, _, other_product) = hub.shop(48.1, 11.5).await;
    let inactive = hub
        .ok(
            "POST",
            &format!("/api/shops/{shop}/products"),
            Some(&vendor),
            Some(json!({"name": "Old", "price_cents": 1, "active": false})),
        )
        .await["id"]
        .clone();
    let (_, buyer) = hub.buyer().await;
    let base = json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 3}],
                      "delivery": {"lat": 52.51, "lng": 13.41, "address": "A 1"}, "payment": "cod"});
    let cases: Vec<(&str, Value, u16)> = vec![
        (
            "quantity 0",
            json!({"items": [{"product_id": product, "quantity": 0}]}),
            422,
        ),
        (
            "quantity 101",
            json!({"items": [{"product_id": product, "quantity": 101}]}),
            422,
        ),
        ("no lines", json!({"items": []}), 422),
        (
            "51 lines",
            json!({"items": vec![json!({"product_id": product, "quantity": 1}); 51]}),
            422,
        ),
        (
            "unknown product",
            json!({"items": [{"product_id": "00000000-0000-7000-8000-000000000000", "quantity": 1}]}),
            422,
        ),
        (
            "inactive product",
            json!({"items": [{"product_id": inactive, "quantity": 1}]}),
            422,
        ),
        (
            "other shop's product",
            json!({"items": [{"product_id": other_product, "quantity": 1}]}),
            422,
        ),
        (
            "lat out of range",
            json!({"delivery": {"lat": 95.0, "lng": 13.41, "address": "A 1"}}),
            422,
        ),
        (
            "empty address",
            json!({"delivery": {"lat": 52.0, "lng": 13.41, "address": "  "}}),
            422,
        ),
        (
            "unknown shop",
            json!({"shop_id": "00000000-0000-7000-8000-000000000000"}),
            422,
        ),
        ("payment", json!({"payment": "card"}), 422),
        ("client price", json!({"total_cents": 1}), 400),
        ("wrong type", json!({"items": "lots"}), 400),
        ("bad uuid", json!({"shop_id": "nope"}), 400),
    ];
    for (name, patch, want) in cases {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = hub
            .call("POST", "/api/orders", Some(&buyer), Some(body))
            .await;
        assert_eq!(s, want, "{name}: {v}");
        assert!(v["error"]["code"].is_string(), "{name}: {v}");
    }
    let _ = other_shop;
    let v = hub
        .ok("POST", "/api/orders", Some(&buyer), Some(base))
        .await;
    assert_eq!(v["order"]["total_cents"], 1500);
    assert_eq!(v["order"]["items"][0]["name"], "Soup");
    assert_eq!(v["order"]["status"], "pending");
    assert_eq!(v["order"]["version"], 1);
    assert_eq!(v["otp"].as_str().unwrap().len(), 6);
    // A vendor may not order.
    let (s, _) = hub
        .call(
            "POST",
            "/api/orders",
            Some(&vendor),
            Some(
                json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 1}],
        "delivery": {"lat": 1.0, "lng": 1.0, "address": "x"}, "payment": "cod"}),
            ),
        )
        .await;
    assert_eq!(s, 403);
}

#[sqlx::test]
async fn oversized_and_malformed_bodies_get_json_errors(db: PgPool) {
    let hub = TestHub::start(db).await;
    let big = "x".repeat(70 * 1024);
    let resp = hub
        .http
        .post(format!("{}/api/buyers", hub.base))
        .header("content-type", "application/json")
        .body(format!(r#"{{"name":"{big}","phone":"123"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "payload_too_large"
    );
    let resp = hub
        .http
        .post(format!("{}/api/buyers", hub.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "bad_request"
    );
    let (s, v) = hub
        .call("GET", "/api/orders/not-a-uuid", Some(ADMIN), None)
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (s, _) = hub
        .call("GET", "/api/orders?limit=0", Some(ADMIN), None)
        .await;
    assert_eq!(s, 400);
}

#[sqlx::test]
async fn idempotency_key_returns_the_same_order(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let (shop, _, product) = hub.shop(10.0, 10.0).await;
    let (_, buyer) = hub.buyer().await;
    let body = json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 1}],
                      "delivery": {"lat": 10.01, "lng": 10.0, "address": "B 2"}, "payment": "cod"});
    let send = |b: Value| {
        hub.http
            .post(format!("{}/api/orders", hub.base))
            .bearer_auth(&buyer)
            .header("idempotency-key", "key-1")
            .json(&b)
            .send()
    };
    // Ten concurrent retries: one order.
    let resps = futures::future::join_all((0..10).map(|_| send(body.clone()))).await;
    let mut statuses = Vec::new();
    let mut ids = std::collections::HashSet::new();
    let mut otps = std::collections::HashSet::new();
    for r in resps {
        let r = r.unwrap();
        statuses.push(r.status().as_u16());
        let v: Value = r.json().await.unwrap();
        ids.insert(v["order"]["id"].as_str().unwrap().to_owned());
        otps.insert(v["otp"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(otps.len(), 1, "a retry hands back the same OTP");
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 9);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Same key, different request.
    let mut other = body.clone();
    other["items"][0]["quantity"] = json!(2);
    let r = send(other).await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "idempotency_conflict"
    );
}

#[sqlx::test]
async fn orders_are_visible_only_to_their_parties(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, vendor, product) = hub.shop(20.0, 20.0).await;
    let (_, other_vendor, _) = hub.shop(21.0, 21.0).await;
    let (_, buyer) = hub.buyer().await;
    let (_, stranger) = hub.buyer().await;
    let (_, driver) = hub.driver().await;
    let (o, _) = hub.order(&buyer, &shop, &product, 20.01, 20.0).await;
    let id = o["id"].as_str().unwrap();
    for t in [&buyer, &vendor] {
        assert_eq!(
            hub.ok("GET", &format!("/api/orders/{id}"), Some(t), None)
                .await["id"],
            id
        );
    }
    hub.ok("GET", &format!("/api/orders/{id}"), Some(ADMIN), None)
        .await;
    for t in [&stranger, &other_vendor, &driver] {
        let (s, v) = hub
            .call("GET", &format!("/api/orders/{id}"), Some(t), None)
            .await;
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
        let (s, _) = hub
            .call("GET", &format!("/api/orders/{id}/events"), Some(t), None)
            .await;
        assert_eq!(s, 404);
        let (s, _) = hub.transition(t, id, "accept", 1, None).await;
        assert_eq!(s, 404, "a stranger's transition does not reveal the order");
    }
    // Visible, but the wrong role for the action: 403.
    let (s, v) = hub.transition(&buyer, id, "accept", 1, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, _) = hub.call("GET", "/api/orders", None, None).await;
    assert_eq!(s, 401);
    assert_eq!(
        hub.ok("GET", "/api/orders", Some(&stranger), None).await["orders"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[sqlx::test]
async fn listing_pages_with_a_cursor(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, vendor, product) = hub.shop(30.0, 30.0).await;
    let (_, buyer) = hub.buyer().await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(
            hub.order(&buyer, &shop, &product, 30.01, 30.0).await.0["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    placed.reverse(); // newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/orders?limit=2&cursor={c}"),
            None => "/api/orders?limit=2".to_owned(),
        };
        let page = hub.ok("GET", &path, Some(&vendor), None).await;
        seen.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, placed);
    let pending = hub
        .ok("GET", "/api/orders?status=accepted", Some(&buyer), None)
        .await;
    assert_eq!(pending["orders"].as_array().unwrap().len(), 0);
    let (s, _) = hub
        .call("GET", "/api/orders?status=bogus", Some(&buyer), None)
        .await;
    assert_eq!(s, 400);
}

#[sqlx::test]
async fn stale_versions_and_illegal_moves_are_409_with_the_current_order(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, vendor, product) = hub.shop(40.0, 40.0).await;
    let (_, buyer) = hub.buyer().await;
    let (o, _) = hub.order(&buyer, &shop, &product, 40.01, 40.0).await;
    let id = o["id"].as_str().unwrap();
    let (s, v) = hub.transition(&vendor, id, "accept", 1, None).await;
    assert_eq!(
        (s, v["version"].as_i64(), v["status"].as_str()),
        (200, Some(2), Some("accepted"))
    );
    let (s, v) = hub.transition(&vendor, id, "mark_ready", 1, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("version_conflict"))
    );
    assert_eq!(v["error"]["order"]["version"], 2);
    let (s, v) = hub.transition(&vendor, id, "reject", 2, None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("invalid_transition"))
    );
    assert_eq!(v["error"]["order"]["status"], "accepted");
    let (s, v) = hub.transition(&buyer, id, "cancel", 2, None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("cancelled")));
    let (s, _) = hub.transition(&buyer, id, "cancel", 3, None).await;
    assert_eq!(s, 409);
    let (s, v) = hub
        .call(
            "POST",
            &format!("/api/orders/{id}/transitions"),
            Some(&vendor),
            Some(json!({"action": "fly", "expected_version": 3})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let ev = hub
        .ok(
            "GET",
            &format!("/api/orders/{id}/events"),
            Some(&buyer),
            None,
        )
        .await;
    let kinds: Vec<(i64, String)> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_i64().unwrap(),
                e["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (1, "created".into()),
            (2, "accepted".into()),
            (3, "cancelled".into())
        ]
    );
}

#[sqlx::test]
async fn delivery_needs_the_otp_and_locks_after_five_wrong_tries(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let p = hub.party().await;
    let (id, otp) = hub.assigned_order(&p).await;
    let wrong = if otp == "000000" { "000001" } else { "000000" };
    let (s, _) = hub
        .transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(wrong))
        .await;
    assert_eq!(
        (
            s,
            v["error"]["code"].as_str(),
            v["error"]["attempts_left"].as_i64()
        ),
        (422, Some("invalid_otp"), Some(4))
    );
    for _ in 0..3 {
        let (s, _) = hub
            .transition(&p.driver_token, &id, "deliver", 5, Some(wrong))
            .await;
        assert_eq!(s, 422);
    }
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some("12"))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (423, Some("otp_locked")));
    let (s, _) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!(s, 423, "even the right OTP cannot deliver a locked order");
    let (s, v) = hub
        .transition(&p.driver_token, &id, "fail_delivery", 5, None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("delivery_failed")));
    let stored: String = sqlx::query_scalar("SELECT otp_hash FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(stored.starts_with("hmac-sha256$") && !stored.contains(&otp));
}

#[sqlx::test]
async fn delivery_records_the_drivers_commission(db: PgPool) {
    let mut cfg = common::config();
    cfg.commission_flat_cents = 150;
    cfg.commission_percent = 10.0;
    let hub = TestHub::start_with(db.clone(), cfg).await;
    let p = hub.party().await;
    let (id, otp) = hub.assigned_order(&p).await;
    hub.transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!(
        (s, v["status"].as_str(), v["payment"]["status"].as_str()),
        (200, Some("delivered"), Some("collected"))
    );
    let c = hub
        .ok(
            "GET",
            "/api/drivers/me/commissions",
            Some(&p.driver_token),
            None,
        )
        .await;
    // 2 × 500 cents = 1000; 150 + 10 % = 250.
    assert_eq!(c["total_cents"], 250);
    assert_eq!(c["commissions"][0]["order_id"], id.as_str());
    let (s, _) = hub
        .call(
            "GET",
            "/api/drivers/me/commissions",
            Some(&p.buyer_token),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let ev = hub
        .ok(
            "GET",
            &format!("/api/orders/{id}/events"),
            Some(&p.vendor),
            None,
        )
        .await;
    let versions: Vec<i64> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>());
    assert_eq!(ev["events"][3]["kind"], "assigned");
    assert!(ev["events"][3]["payload"]["distance_m"].as_i64().unwrap() > 0);
}

#[sqlx::test]
async fn without_hub_secret_otps_survive_a_restart(db: PgPool) {
    let mut cfg = common::config();
    cfg.secret = None;
    let mut hub = TestHub::start_with(db.clone(), cfg.clone()).await;
    let (shop, _, product) = hub.shop(11.0, 11.0).await;
    let (_, buyer) = hub.buyer().await;
    let body = json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 1}],
                      "delivery": {"lat": 11.0, "lng": 11.0, "address": "D 4"}, "payment": "cod"});
    let place = |hub: &TestHub| {
        hub.http
            .post(format!("{}/api/orders", hub.base))
            .bearer_auth(&buyer)
            .header("idempotency-key", "restart-key")
            .json(&body)
            .send()
    };
    let first: Value = place(&hub).await.unwrap().json().await.unwrap();
    hub.stop().await; // closes its pool: the next hub gets a new one on the same database
    let opts = (*db.connect_options()).clone();
    let db2 = sqlx::postgres::PgPoolOptions::new()
        .connect_with(opts)
        .await
        .unwrap();
    let hub = TestHub::start_with(db2, cfg).await;
    let r = place(&hub).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["order"]["id"], first["order"]["id"]);
    assert_eq!(again["otp"], first["otp"], "the generated secret was kept");
}
