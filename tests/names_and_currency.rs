//! What people see: drivers sign in with their phone number, orders and the fleet carry
//! names (not ids), and the hub says which currency its amounts are in.

mod common;

use common::{ADMIN, TestHub};
use dispatch_hub::config::parse_currency;
use serde_json::{Value, json};
use sqlx::PgPool;

async fn create_driver(hub: &TestHub, name: &str, phone: &str) -> (u16, Value) {
    hub.call(
        "POST",
        "/api/admin/drivers",
        Some(ADMIN),
        Some(json!({"name": name, "phone": phone})),
    )
    .await
}

async fn login(hub: &TestHub, body: Value) -> (u16, Value) {
    hub.call("POST", "/api/auth/login", None, Some(body)).await
}

#[sqlx::test]
async fn drivers_sign_in_with_their_phone_number_or_their_id(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (s, created) = create_driver(&hub, "Ada", "+49 30 555 1001").await;
    assert_eq!(s, 201, "{created}");
    let id = created["driver"]["id"].as_str().unwrap().to_owned();
    let code = created["login_code"].as_str().unwrap().to_owned();

    // The number as the driver types it: separators and spacing do not matter.
    for phone in ["+49 30 555 1001", "+49 (30) 555-1001", "4930 5551001"] {
        let (s, t) = login(
            &hub,
            json!({"role": "driver", "phone": phone, "code": code}),
        )
        .await;
        assert_eq!(s, 200, "{phone}: {t}");
        assert_eq!(t["role"], "driver");
        assert_eq!(t["subject_id"], id.as_str());
        let me = hub.ok("GET", "/api/me", t["token"].as_str(), None).await;
        assert_eq!(me["name"], "Ada", "{me}");
    }
    // Existing clients keep signing in with the id.
    let token = hub.login("driver", &id, &code).await;
    assert!(!token.is_empty());

    // A number nobody has answers exactly like a wrong code.
    let (s, unknown) = login(
        &hub,
        json!({"role": "driver", "phone": "+49 30 555 9999", "code": code}),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(unknown["error"]["code"], "unauthorized");
    let (s, wrong) = login(
        &hub,
        json!({"role": "driver", "phone": "+49 30 555 1001", "code": "000000"}),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(wrong["error"]["message"], unknown["error"]["message"]);

    // Malformed requests name what is wrong.
    for body in [
        json!({"role": "vendor", "phone": "+49 30 555 1001", "code": code}),
        json!({"role": "driver", "phone": "+49 30 555 1001", "account_id": id, "code": code}),
        json!({"role": "driver", "code": code}),
        json!({"role": "driver", "phone": "no number", "code": code}),
    ] {
        let (s, e) = login(&hub, body.clone()).await;
        assert_eq!(s, 422, "{body} -> {e}");
        assert_eq!(e["error"]["code"], "validation_failed");
    }

    // Two drivers cannot share a number (compared by digits), and a number must look like one.
    let (s, e) = create_driver(&hub, "Ada again", "+49 (30) 555-1001").await;
    assert_eq!(s, 422, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("phone"));
    let (s, _) = create_driver(&hub, "Bo", "call me maybe").await;
    assert_eq!(s, 422);
    // Drivers without a phone are still fine, as many as you like.
    for name in ["No phone 1", "No phone 2"] {
        let (s, e) = hub
            .call(
                "POST",
                "/api/admin/drivers",
                Some(ADMIN),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(s, 201, "{e}");
    }
}

#[sqlx::test]
async fn failed_phone_logins_count_against_the_drivers_account(db: PgPool) {
    let hub = TestHub::start(db).await;
    let (_, created) = create_driver(&hub, "Cy", "+49 30 555 1003").await;
    let id = created["driver"]["id"].as_str().unwrap().to_owned();
    let code = created["login_code"].as_str().unwrap().to_owned();
    for _ in 0..5 {
        let (s, _) = login(
            &hub,
            json!({"role": "driver", "phone": "+49 30 555 1003", "code": "000000"}),
        )
        .await;
        assert_eq!(s, 401);
    }
    // The account is now limited, whichever way it is named.
    let (s, _) = login(
        &hub,
        json!({"role": "driver", "account_id": id, "code": code}),
    )
    .await;
    assert_eq!(s, 429);
}

#[sqlx::test]
async fn the_hubs_currency_is_public_and_configurable(db: PgPool) {
    let mut config = common::config();
    config.currency = "CHF".into();
    let hub = TestHub::start_with(db, config).await;
    let c = hub.ok("GET", "/api/config", None, None).await;
    assert_eq!(c, json!({"currency": "CHF"}));

    assert_eq!(parse_currency("EUR").as_deref(), Ok("EUR"));
    for bad in ["eur", "EURO", "E1R", "", "€"] {
        assert!(parse_currency(bad).is_err(), "{bad:?} was accepted");
    }
    if std::env::var_os("HUB_CURRENCY").is_none() {
        assert_eq!(common::config().currency, "EUR", "the default currency");
    }
}

#[sqlx::test]
async fn orders_and_the_fleet_carry_names(db: PgPool) {
    let hub = TestHub::start(db).await;
    let mut admin = hub.socket(ADMIN).await;
    admin.subscribe("fleet").await;
    let mut p = hub.party().await;
    p.driver_ws.subscribe(&format!("driver:{}", p.driver)).await;

    let (o, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    assert_eq!(o["shop_name"], "Shop");
    assert_eq!(o["buyer_name"], "Bea");
    assert_eq!(o["driver_name"], Value::Null);

    let id = o["id"].as_str().unwrap().to_owned();
    hub.transition(&p.vendor, &id, "accept", 1, None).await;
    hub.transition(&p.vendor, &id, "mark_ready", 2, None).await;
    let assigned = p
        .driver_ws
        .until("assigned", |v| v["event"]["kind"] == "assigned")
        .await;
    assert_eq!(assigned["order"]["driver_name"], "Dee", "{assigned}");
    assert_eq!(assigned["order"]["buyer_name"], "Bea");
    let seen = hub.wait_status(&p.buyer_token, &id, "assigned").await;
    assert_eq!(seen["driver_name"], "Dee");

    // The fleet names the driver and says which leg of the job they are on.
    let state = admin
        .until("the driver heading to the shop", |v| {
            v["type"] == "driver"
                && v["driver"]["id"] == p.driver.as_str()
                && v["driver"]["leg"] == "to_shop"
        })
        .await;
    assert_eq!(state["driver"]["name"], "Dee", "{state}");
    assert_eq!(state["driver"]["state"], "busy");
    let (s, _) = hub
        .transition(&p.driver_token, &id, "pick_up", 4, None)
        .await;
    assert_eq!(s, 200);
    admin
        .until("the driver carrying the order", |v| {
            v["type"] == "driver"
                && v["driver"]["id"] == p.driver.as_str()
                && v["driver"]["leg"] == "carrying"
        })
        .await;

    // A fresh fleet snapshot names every driver.
    let mut again = hub.socket(ADMIN).await;
    let snap = again.subscribe("fleet").await;
    let me = snap["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == p.driver.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["name"], "Dee", "{snap}");
    assert_eq!(me["leg"], "carrying");
}
