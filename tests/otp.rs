//! Delivery OTPs are checked by recomputing them; orders placed when the hub still stored an
//! Argon2id hash of the OTP keep working.

mod common;

use argon2::password_hash::{PasswordHasher, SaltString};
use common::TestHub;
use serde_json::{Value, json};
use sqlx::PgPool;

#[sqlx::test]
async fn an_order_with_an_argon2_otp_hash_still_retries_and_delivers(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let p = hub.party().await;
    let body = json!({"shop_id": p.shop, "items": [{"product_id": p.product, "quantity": 1}],
                      "delivery": {"lat": p.lat + 0.01, "lng": p.lng, "address": "O 1"},
                      "payment": "cod"});
    let place = || async {
        let r = hub
            .http
            .post(format!("{}/api/orders", hub.base))
            .bearer_auth(&p.buyer_token)
            .header("idempotency-key", "legacy-1")
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    let first = place().await;
    let id = first["order"]["id"].as_str().unwrap().to_owned();
    let otp = first["otp"].as_str().unwrap().to_owned();
    let tag: String = sqlx::query_scalar("SELECT otp_hash FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(
        tag.starts_with("hmac-sha256$") && !tag.contains(&otp),
        "{tag}"
    );

    // Make it an order of the old kind: an Argon2id hash of the secret-keyed OTP.
    let material = hub.hub().secrets.otp_material(&otp);
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let legacy = argon2::Argon2::default()
        .hash_password(material.as_bytes(), &salt)
        .unwrap()
        .to_string();
    sqlx::query("UPDATE orders SET otp_hash = $2 WHERE id = $1::uuid")
        .bind(&id)
        .bind(&legacy)
        .execute(&db)
        .await
        .unwrap();

    let again = place().await;
    assert_eq!(again["order"]["id"], id.as_str());
    assert_eq!(
        again["otp"],
        otp.as_str(),
        "a retry still hands back the OTP"
    );

    let (s, _) = hub.transition(&p.vendor, &id, "accept", 1, None).await;
    assert_eq!(s, 200);
    let (s, _) = hub.transition(&p.vendor, &id, "mark_ready", 2, None).await;
    assert_eq!(s, 200);
    hub.wait_status(&p.vendor, &id, "assigned").await;
    let (s, _) = hub
        .transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    let wrong = if otp == "000000" { "000001" } else { "000000" };
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(wrong))
        .await;
    assert_eq!((s, v["error"]["attempts_left"].as_i64()), (422, Some(4)));
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("delivered")), "{v}");
}

#[sqlx::test]
async fn a_tag_from_another_secret_means_no_otp_on_retry(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let (shop, _, product) = hub.shop(20.0, 20.0).await;
    let (_, buyer) = hub.buyer().await;
    let body = json!({"shop_id": shop, "items": [{"product_id": product, "quantity": 1}],
                      "delivery": {"lat": 20.01, "lng": 20.0, "address": "O 2"}, "payment": "cod"});
    let place = || async {
        let r = hub
            .http
            .post(format!("{}/api/orders", hub.base))
            .bearer_auth(&buyer)
            .header("idempotency-key", "other-secret")
            .json(&body)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    let first = place().await;
    assert!(first["otp"].is_string());
    // As if the order had been placed under another secret.
    sqlx::query("UPDATE orders SET otp_hash = 'hmac-sha256$' || repeat('0', 64)")
        .execute(&db)
        .await
        .unwrap();
    let again = place().await;
    assert_eq!(again["order"]["id"], first["order"]["id"]);
    assert!(again.get("otp").is_none(), "{again}");
}

/// The hub skips the read when it wrote the version a transition names; the OTP lock holds
/// even when the counter was raised where this hub could not see it.
#[sqlx::test]
async fn a_lock_counted_elsewhere_still_stops_the_delivery(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let p = hub.party().await;
    let (id, otp) = hub.assigned_order(&p).await;
    let (s, _) = hub
        .transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    sqlx::query("UPDATE orders SET otp_failed_attempts = 5 WHERE id = $1::uuid")
        .bind(&id)
        .execute(&db)
        .await
        .unwrap();
    let (s, v) = hub
        .transition(&p.driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (423, Some("otp_locked")));
    let status: String = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "picked_up");
}
