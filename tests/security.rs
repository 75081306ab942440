//! Security hardening, tried as an attacker would: no order event reaches a refused subscriber,
//! hashing memory stays bounded under a burst, a stranger cannot lock the right person out,
//! caps answer clearly, and revocation ends live sockets.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{ADMIN, TestHub, Ws, config};
use serde_json::{Value, json};
use sqlx::PgPool;

/// A REST client whose connections leave from `ip` (a loopback address: 127.0.0.0/8).
fn client_from(ip: &str) -> reqwest::Client {
    let ip: IpAddr = ip.parse().unwrap();
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

async fn login_from(hub: &TestHub, ip: &str, role: &str, id: &str, code: &str) -> (u16, Value) {
    let resp = client_from(ip)
        .post(format!("{}/api/auth/login", hub.base))
        .json(&json!({"role": role, "account_id": id, "code": code}))
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn wrong(code: &str) -> String {
    if code == "00000000" {
        "00000001"
    } else {
        "00000000"
    }
    .to_owned()
}

async fn new_shop(hub: &TestHub) -> (String, String) {
    let v = hub
        .ok(
            "POST",
            "/api/admin/shops",
            Some(ADMIN),
            Some(json!({"name": "S", "lat": 1.0, "lng": 2.0})),
        )
        .await;
    (
        v["shop"]["id"].as_str().unwrap().to_owned(),
        v["login_code"].as_str().unwrap().to_owned(),
    )
}

async fn new_driver(hub: &TestHub) -> (String, String) {
    let v = hub
        .ok(
            "POST",
            "/api/admin/drivers",
            Some(ADMIN),
            Some(json!({"name": "D"})),
        )
        .await;
    (
        v["driver"]["id"].as_str().unwrap().to_owned(),
        v["login_code"].as_str().unwrap().to_owned(),
    )
}

#[sqlx::test]
async fn a_stranger_resubscribing_to_an_order_never_receives_its_messages(db: PgPool) {
    let hub = TestHub::start(db).await;
    let p = hub.party().await;
    let (_, stranger) = hub.buyer().await;
    // Twelve sockets of one stranger, each re-subscribing 40 times a second: together their
    // check windows cover most of the time, so every event is likely to fall into one.
    const SPIES: usize = 12;
    for round in 0..3 {
        let (o, otp) = hub
            .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
            .await;
        let id = o["id"].as_str().unwrap().to_owned();
        let stop = tokio_util::sync::CancellationToken::new();
        let mut spies = Vec::new();
        for k in 0..SPIES {
            let mut spy = hub.socket(&stranger).await;
            let (topic, stop) = (format!("order:{id}"), stop.clone());
            spies.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2 * k as u64)).await;
                let mut n = 0;
                while !stop.is_cancelled() {
                    spy.send(json!({"type": "subscribe", "topic": topic, "ref": n}))
                        .await;
                    n += 1;
                    let pace = tokio::time::sleep(Duration::from_millis(25));
                    tokio::pin!(pace);
                    loop {
                        tokio::select! {
                            _ = &mut pace => break,
                            v = spy.next_json_within(Duration::from_millis(25)) => if v.is_none() { break },
                        }
                    }
                }
                // Drain what is still in flight.
                while spy.next_json_within(Duration::from_millis(300)).await.is_some() {}
                (n, spy.seen)
            }));
        }
        // The lifecycle runs meanwhile, with pauses so that subscribes interleave.
        let pause = Duration::from_millis(60);
        for (action, v) in [("accept", 1), ("mark_ready", 2)] {
            tokio::time::sleep(pause).await;
            let (s, _) = hub.transition(&p.vendor, &id, action, v, None).await;
            assert_eq!(s, 200, "{action}");
        }
        hub.wait_status(&p.vendor, &id, "assigned").await;
        tokio::time::sleep(pause).await;
        let (s, _) = hub
            .transition(&p.driver_token, &id, "pick_up", 4, None)
            .await;
        assert_eq!(s, 200);
        tokio::time::sleep(pause).await;
        let (s, _) = hub
            .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
            .await;
        assert_eq!(s, 200);
        tokio::time::sleep(pause).await;
        stop.cancel();
        let (mut sent, mut refusals) = (0, 0);
        for spy in spies {
            let (n, seen) = spy.await.unwrap();
            sent += n;
            let leaked: Vec<&Value> = seen
                .iter()
                .filter(|v| v["type"] != "error" && v["type"] != "welcome")
                .collect();
            assert!(leaked.is_empty(), "round {round}: leaked {leaked:?}");
            refusals += seen.iter().filter(|v| v["code"] == "forbidden").count();
        }
        assert!(sent > 100, "round {round}: only {sent} subscribes");
        assert_eq!(refusals, sent, "round {round}: every subscribe is refused");
    }
}

/// Resident and peak resident size of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[sqlx::test]
async fn hashing_memory_stays_bounded_under_a_burst_of_logins_and_creations(db: PgPool) {
    let mut c = config();
    c.login_hash_kib = 19_456; // the default
    let hub = TestHub::start_with(db, c).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let the workers free their buffers
    let (base, _) = rss_kib();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib().0);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let mut calls = Vec::new();
    for i in 0..500 {
        // Logins from 16 addresses so that the per-address limit is not what stops them.
        let client = client_from(&format!("127.0.0.{}", 2 + i % 16));
        let url = format!("{}/api/auth/login", hub.base);
        // Unknown accounts cost a full verification too (timing must not reveal them).
        let body = json!({"role": "vendor", "account_id": uuid::Uuid::now_v7(),
                          "code": format!("{i:08}")});
        calls.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }));
        let http = hub.http.clone();
        let url = format!("{}/api/admin/drivers", hub.base);
        calls.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(ADMIN)
                .json(&json!({"name": format!("Burst {i}")}))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for c in calls {
        let (status, retry) = c.await.unwrap();
        assert!(
            matches!(status, 201 | 401 | 429 | 503),
            "unexpected status {status}"
        );
        if matches!(status, 429 | 503) {
            assert!(retry, "{status} without Retry-After");
        }
        *counts.entry(status).or_insert(0) += 1;
    }
    let burst = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (after, _) = rss_kib();
    eprintln!(
        "hash burst: {counts:?} in {burst:?}; RSS baseline {} MiB, peak {} MiB, 10 s after {} MiB",
        base / 1024,
        peak / 1024,
        after / 1024
    );
    assert!(
        counts.get(&201).copied().unwrap_or(0) > 0,
        "some creations ran"
    );
    assert!(
        counts.get(&503).copied().unwrap_or(0) > 0,
        "the queue refused some"
    );
    // Two workers × 19 MiB is the budget; the rest is sockets, buffers and test clients.
    assert!(
        peak.saturating_sub(base) < 256 * 1024,
        "peak grew by {} MiB",
        (peak - base) / 1024
    );
    assert!(
        after.saturating_sub(base) < 64 * 1024,
        "RSS stayed {} MiB above baseline",
        (after - base) / 1024
    );
    // The hub is healthy afterwards.
    let (s, _) = hub.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200);
}

#[sqlx::test]
async fn a_strangers_failures_do_not_lock_out_the_right_person(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (shop, code) = new_shop(&hub).await;
    for _ in 0..5 {
        let (s, _) = login_from(&hub, "127.0.0.2", "vendor", &shop, &wrong(&code)).await;
        assert_eq!(s, 401);
    }
    let (s, v) = login_from(&hub, "127.0.0.2", "vendor", &shop, &code).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    let (s, v) = login_from(&hub, "127.0.0.3", "vendor", &shop, &code).await;
    assert_eq!(s, 200, "the right code from another address: {v}");

    // Typos on one account do not block another account behind the same address.
    let (other, other_code) = new_shop(&hub).await;
    let (s, v) = login_from(&hub, "127.0.0.2", "vendor", &other, &other_code).await;
    assert_eq!(s, 200, "another account from the same address: {v}");
}

#[sqlx::test]
async fn the_account_budget_across_many_addresses_ends_in_429(db: PgPool) {
    let mut c = config();
    c.login_account_budget = 12;
    let hub = TestHub::start_with(db, c).await;
    let (driver, code) = new_driver(&hub).await;
    // The driver's own address becomes trusted by logging in.
    let (s, _) = login_from(&hub, "127.0.0.9", "driver", &driver, &code).await;
    assert_eq!(s, 200);
    let mut failures = 0;
    let mut refused_at = None;
    'outer: for a in 10..40 {
        let ip = format!("127.0.0.{a}");
        for _ in 0..5 {
            let (s, v) = login_from(&hub, &ip, "driver", &driver, &wrong(&code)).await;
            match s {
                401 => failures += 1,
                429 => {
                    assert_eq!(v["error"]["code"], "rate_limited");
                    if failures >= 12 {
                        refused_at = Some(ip);
                        break 'outer;
                    }
                    break; // this pair is spent; next address
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
    }
    let fresh = refused_at.expect("the budget must end in 429");
    assert_eq!(failures, 12, "exactly the budget was spent");
    // Even the right code from an untrusted address is refused now…
    let (s, _) = login_from(&hub, &fresh, "driver", &driver, &code).await;
    assert_eq!(s, 429);
    // …but the driver's own address still works.
    let (s, v) = login_from(&hub, "127.0.0.9", "driver", &driver, &code).await;
    assert_eq!(s, 200, "{v}");
}

#[sqlx::test]
async fn codes_expire_and_rotate(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let (driver, code) = new_driver(&hub).await;
    assert_eq!(code.len(), 8, "login codes are 8 digits");
    let token = hub.login("driver", &driver, &code).await;
    let mut ws = hub.socket(&token).await;
    // An admin rotates the code: the old one stops working, the live socket is closed.
    let started = Instant::now();
    let v = hub
        .ok(
            "POST",
            &format!("/api/admin/drivers/{driver}/login-code"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(ws.close_code().await, Some(4401));
    assert!(started.elapsed() < Duration::from_secs(1));
    let fresh = v["login_code"].as_str().unwrap().to_owned();
    assert!(v["expires_at"].is_string());
    let (s, _) = hub.call("GET", "/api/me", Some(&token), None).await;
    assert_eq!(s, 401, "the rotation revoked the old token");
    let (s, _) = login_from(&hub, "127.0.0.5", "driver", &driver, &code).await;
    assert_eq!(s, 401);
    let (s, _) = login_from(&hub, "127.0.0.5", "driver", &driver, &fresh).await;
    assert_eq!(s, 200);
    // An expired code is refused with its own code, even when right.
    sqlx::query("UPDATE drivers SET login_code_expires_at = now() - interval '1 minute'")
        .execute(&db)
        .await
        .unwrap();
    let (s, v) = login_from(&hub, "127.0.0.5", "driver", &driver, &fresh).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (401, Some("login_code_expired"))
    );
    // Rotating an unknown account is a 404; a non-admin is refused.
    let (s, _) = hub
        .call(
            "POST",
            &format!("/api/admin/shops/{}/login-code", uuid::Uuid::now_v7()),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(s, 404);
}

#[sqlx::test]
async fn logout_and_admin_revoke_close_live_sockets_within_a_second(db: PgPool) {
    let hub = TestHub::start(db).await;
    let p = hub.party().await;
    // Logout closes the sockets of that token only.
    let (driver, code) = new_driver(&hub).await;
    let first = hub.login("driver", &driver, &code).await;
    let second = hub.login("driver", &driver, &code).await;
    let mut a = hub.socket(&first).await;
    let mut b = hub.socket(&second).await;
    let started = Instant::now();
    let (s, _) = hub
        .call("POST", "/api/auth/logout", Some(&first), None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(a.close_code().await, Some(4401));
    assert!(started.elapsed() < Duration::from_secs(1));
    // The revoked socket can do nothing more; the other token's socket still works.
    b.send(json!({"type": "ping"})).await;
    assert_eq!(b.next_json().await.unwrap()["type"], "pong");

    // An admin's revoke closes every socket of the account.
    let mut v1 = hub.socket(&p.vendor).await;
    let mut v2 = hub.socket(&p.vendor).await;
    let started = Instant::now();
    let r = hub
        .ok(
            "POST",
            "/api/admin/sessions/revoke",
            Some(ADMIN),
            Some(json!({"role": "vendor", "subject_id": p.shop})),
        )
        .await;
    assert_eq!(r["sockets_closed"], 2);
    assert_eq!(v1.close_code().await, Some(4401));
    assert_eq!(v2.close_code().await, Some(4401));
    assert!(started.elapsed() < Duration::from_secs(1));
    let (s, _) = hub.call("GET", "/api/me", Some(&p.vendor), None).await;
    assert_eq!(s, 401);
    // Only the admin may revoke.
    let (s, _) = hub
        .call(
            "POST",
            "/api/admin/sessions/revoke",
            Some(&p.buyer_token),
            Some(json!({"role": "vendor", "subject_id": p.shop})),
        )
        .await;
    assert_eq!(s, 403);
}

/// Upgrades a socket by hand; returns the HTTP status and body when the upgrade is refused.
async fn refused_upgrade(hub: &TestHub) -> Option<(u16, Value)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match tokio_tungstenite::connect_async(&hub.ws_url).await {
        Ok(_) => None,
        Err(WsError::Http(resp)) => {
            let status = resp.status().as_u16();
            let body = resp
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            Some((status, body))
        }
        Err(e) => panic!("unexpected upgrade error {e}"),
    }
}

#[sqlx::test]
async fn socket_caps_answer_clearly_and_the_hub_stays_healthy(db: PgPool) {
    let mut c = config();
    c.max_connections = 4;
    c.max_unauthenticated = 2;
    c.max_sockets_per_account = 2;
    let hub = TestHub::start_with(db, c).await;
    let (_, token) = hub.buyer().await;
    // Two sockets that never authenticate fill the unauthenticated cap.
    let idle1 = Ws::connect(&hub.ws_url).await;
    let idle2 = Ws::connect(&hub.ws_url).await;
    let (s, v) = refused_upgrade(&hub)
        .await
        .expect("third unauthenticated is refused");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("too_many_connections"))
    );
    drop((idle1, idle2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Per account: the third socket of one account is closed with 4409.
    let a = hub.socket(&token).await;
    let b = hub.socket(&token).await;
    let mut third = Ws::connect(&hub.ws_url).await;
    third.send(json!({"type": "auth", "token": token})).await;
    assert_eq!(third.close_code().await, Some(4409));
    drop(third);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // In total: four open sockets, the fifth upgrade is refused.
    let (_, other) = hub.buyer().await;
    let c1 = hub.socket(&other).await;
    let c2 = hub.socket(&other).await;
    let (s, v) = refused_upgrade(&hub)
        .await
        .expect("fifth socket is refused");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("too_many_connections"))
    );
    let (s, _) = hub.call("GET", "/readyz", None, None).await;
    assert_eq!(s, 200, "REST still answers");
    drop((a, b, c1));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = hub.socket(&token).await;
    again.send(json!({"type": "ping"})).await;
    assert_eq!(again.next_json().await.unwrap()["type"], "pong");
    drop(c2);
}

#[sqlx::test]
async fn buyer_sign_ups_are_limited_per_address(db: PgPool) {
    let mut c = config();
    c.signups_per_address_h = 3;
    let hub = TestHub::start_with(db, c).await;
    let client = client_from("127.0.0.7");
    let url = format!("{}/api/buyers", hub.base);
    let body = json!({"name": "B", "phone": "+49 30 1"});
    for _ in 0..3 {
        let r = client.post(&url).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("retry-after").is_some());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    // Another address, and the admin, are not held back.
    let r = client_from("127.0.0.8")
        .post(&url)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = client
        .post(&url)
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

#[sqlx::test]
async fn expired_sessions_are_deleted(db: PgPool) {
    dispatch_hub::store::MIGRATOR.run(&db).await.unwrap();
    sqlx::query(
        "INSERT INTO sessions (token_hash, role, subject_id, expires_at)
         VALUES ('old', 'buyer', gen_random_uuid(), now() - interval '2 days'),
                ('live', 'buyer', gen_random_uuid(), now() + interval '2 days')",
    )
    .execute(&db)
    .await
    .unwrap();
    let _hub = TestHub::start(db.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM sessions")
            .fetch_all(&db)
            .await
            .unwrap();
        if left == ["live"] {
            break;
        }
        assert!(Instant::now() < deadline, "sessions left: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
