//! Optimistic concurrency: many writers, one winner, a gapless log.

mod common;

use common::TestHub;
use serde_json::json;
use sqlx::PgPool;

#[sqlx::test]
async fn fifty_racing_accepts_have_exactly_one_winner(db: PgPool) {
    let hub = TestHub::start(db.clone()).await;
    let (shop, vendor, product) = hub.shop(5.0, 5.0).await;
    let (_, buyer) = hub.buyer().await;
    let (o, _) = hub.order(&buyer, &shop, &product, 5.01, 5.0).await;
    let id = o["id"].as_str().unwrap().to_owned();
    let tasks = (0..50).map(|_| {
        let (http, base, vendor, id) = (
            hub.http.clone(),
            hub.base.clone(),
            vendor.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            let r = http
                .post(format!("{base}/api/orders/{id}/transitions"))
                .bearer_auth(vendor)
                .json(&json!({"action": "accept", "expected_version": 1}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body)
        })
    });
    let results: Vec<_> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let wins = results.iter().filter(|(s, _)| *s == 200).count();
    let conflicts = results
        .iter()
        .filter(|(s, b)| *s == 409 && b["error"]["code"] == "version_conflict")
        .count();
    assert_eq!(
        (wins, conflicts),
        (1, 49),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM order_events WHERE order_id = $1::uuid ORDER BY version",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(versions, vec![1, 2], "no gap, no duplicate");
    let v: i32 = sqlx::query_scalar("SELECT version FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(v, 2);
}
