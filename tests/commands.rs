//! Socket commands run beside the session loop: while one waits on a slow database, the
//! socket keeps receiving live messages and answering pings, and is never closed as a laggard.

mod common;

use std::time::Duration;

use common::{TestHub, config};
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test]
async fn a_command_stuck_on_the_database_does_not_stop_the_outbound_queue(db: PgPool) {
    let mut c = config();
    c.ws_queue = 8; // a socket more than 8 messages behind is closed with 4408
    let hub = TestHub::start_with(db.clone(), c).await;
    let p = hub.party().await;
    let (x, _) = hub
        .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
        .await;
    let x = x["id"].as_str().unwrap().to_owned();
    let mut vendor_ws = hub.socket(&p.vendor).await;
    vendor_ws.subscribe(&format!("shop:{}", p.shop)).await;

    // Another session holds order X's row: the vendor's `accept` of X waits on it.
    let mut blocker = db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM orders WHERE id = $1::uuid FOR UPDATE")
        .bind(&x)
        .execute(&mut *blocker)
        .await
        .unwrap();
    vendor_ws
        .send(json!({"type": "transition", "ref": "stuck", "order_id": x,
                     "action": "accept", "expected_version": 1}))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Meanwhile 20 orders are placed (20 `created` messages, more than the queue holds), and
    // the socket answers a ping.
    let mut placed = Vec::new();
    for _ in 0..20 {
        let (o, _) = hub
            .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
            .await;
        placed.push(o["id"].as_str().unwrap().to_owned());
    }
    vendor_ws.send(json!({"type": "ping"})).await;
    vendor_ws.until("pong", |v| v["type"] == "pong").await;
    let all_created = |seen: &[serde_json::Value]| {
        placed.iter().all(|id| {
            seen.iter()
                .any(|v| v["type"] == "order" && v["order"]["id"] == *id)
        })
    };
    while !all_created(&vendor_ws.seen) {
        vendor_ws
            .next_json()
            .await
            .expect("every created message arrives while the command waits");
    }
    assert!(
        !vendor_ws.seen.iter().any(|v| v["ref"] == "stuck"),
        "the stuck command has not been answered yet"
    );
    // Released: the command completes and its answer arrives, in order with the rest.
    blocker.rollback().await.unwrap();
    let ack = vendor_ws.until("ack", |v| v["ref"] == "stuck").await;
    assert_eq!(
        (ack["type"].as_str(), ack["order"]["version"].as_i64()),
        (Some("ack"), Some(2))
    );

    // Commands keep their order: two transitions of one order sent back to back both succeed.
    let y = placed[0].clone();
    vendor_ws
        .send(json!({"type": "transition", "ref": "a", "order_id": y, "action": "accept", "expected_version": 1}))
        .await;
    vendor_ws
        .send(json!({"type": "transition", "ref": "b", "order_id": y, "action": "mark_ready", "expected_version": 2}))
        .await;
    while !vendor_ws.seen.iter().any(|v| v["ref"] == "b") {
        vendor_ws.next_json().await.expect("both answers arrive");
    }
    let find = |r: &str| {
        vendor_ws
            .seen
            .iter()
            .find(|v| v["ref"] == r)
            .cloned()
            .unwrap()
    };
    let (a, b) = (find("a"), find("b"));
    assert_eq!(
        (a["type"].as_str(), b["type"].as_str()),
        (Some("ack"), Some("ack")),
        "{a} {b}"
    );
}
