//! The hub as a cluster: several nodes on one Postgres and one NATS server. Nodes run in this
//! process (each a full hub with its own port, registry, bus connection and dispatcher), except
//! in the failover test, whose leader must die by SIGKILL and so runs as a process of its own.
//!
//! Needs NATS: `HUB_TEST_NATS_URL`, else `nats://127.0.0.1:4222` (`scripts/test.sh` starts a
//! server there when none runs). Each test's nodes form a cluster named after its database,
//! so tests running side by side never hear each other.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::process::{Proc, db_url_for, free_port, wait_for};
use common::{ADMIN, TestHub, Ws, order_msg};
use serde_json::{Value, json};
use sqlx::PgPool;

fn nats_url() -> String {
    let url = std::env::var("HUB_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url.trim_start_matches("nats://").to_owned();
    assert!(
        std::net::TcpStream::connect(&addr).is_ok(),
        "no NATS server at {url}: run scripts/ensure-nats.sh (scripts/test.sh does)"
    );
    url
}

fn db_name(db: &PgPool) -> String {
    db.connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned()
}

fn node_config(db: &PgPool, name: &str) -> dispatch_hub::config::Config {
    let mut c = common::config();
    c.nats_url = Some(nats_url());
    c.cluster_name = format!("test_{}", db_name(db));
    c.node_name = Some(name.into());
    c.lease_poll_ms = 100;
    // Three nodes per test, two tests at a time, on one Postgres of 100 connections.
    c.db_max_connections = 6;
    c
}

/// Three in-process nodes of one cluster, once one of them holds the dispatcher's lease.
async fn three_nodes(db: &PgPool) -> Vec<TestHub> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(TestHub::start_with(db.clone(), node_config(db, &format!("n{i}"))).await);
    }
    wait_for_leader(&nodes[0], 0).await;
    nodes
}

/// Waits until `GET /api/admin/cluster` names a leader with an epoch above `after`; returns
/// (leader node id, epoch).
async fn wait_for_leader(node: &TestHub, after: i64) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = node
            .call("GET", "/api/admin/cluster", Some(ADMIN), None)
            .await;
        if s == 200
            && let (Some(id), Some(epoch)) = (
                v["leader"]["node_id"].as_i64(),
                v["leader"]["epoch"].as_i64(),
            )
            && epoch > after
        {
            return (id, epoch);
        }
        assert!(
            Instant::now() < deadline,
            "no leader after epoch {after}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The versions of `order` this socket received, in arrival order.
fn versions_of(ws: &Ws, order: &str) -> Vec<i64> {
    ws.seen
        .iter()
        .filter_map(order_msg)
        .filter(|(id, _, _)| id == order)
        .map(|(_, v, _)| v)
        .collect()
}

/// Reads until the socket has carried `version` of `order`.
async fn until_version(ws: &mut Ws, order: &str, version: i64) {
    while !versions_of(ws, order).contains(&version) {
        ws.next_json()
            .await
            .unwrap_or_else(|| panic!("socket ended before version {version} of {order}"));
    }
}

#[sqlx::test]
async fn a_delivery_across_three_nodes_reaches_every_socket_once_and_in_order(db: PgPool) {
    let nodes = three_nodes(&db).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);

    let (shop, vendor, product) = n1.shop(52.5, 13.4).await;
    let (driver, driver_token) = n1.driver().await;
    let (buyer, buyer_token) = n1.buyer().await;

    // Buyer on node 1, vendor on node 2, driver on node 3.
    let mut buyer_ws = n1.socket(&buyer_token).await;
    assert_eq!(
        buyer_ws.subscribe(&format!("buyer:{buyer}")).await["type"],
        "snapshot"
    );
    let mut vendor_ws = n2.socket(&vendor).await;
    assert_eq!(
        vendor_ws.subscribe(&format!("shop:{shop}")).await["type"],
        "snapshot"
    );
    let mut driver_ws = n3.socket(&driver_token).await;
    assert_eq!(
        driver_ws.subscribe(&format!("driver:{driver}")).await["type"],
        "snapshot"
    );
    driver_ws
        .send(json!({"type": "location", "lat": 52.501, "lng": 13.4}))
        .await;

    let (o, otp) = n1.order(&buyer_token, &shop, &product, 52.51, 13.4).await;
    let id = o["id"].as_str().unwrap().to_owned();
    until_version(&mut vendor_ws, &id, 1).await;
    let (s, _) = n2.transition(&vendor, &id, "accept", 1, None).await;
    assert_eq!(s, 200);
    let (s, _) = n2.transition(&vendor, &id, "mark_ready", 2, None).await;
    assert_eq!(s, 200);
    // The dispatcher (on whichever node leads) assigns the driver, whose socket is on node 3.
    until_version(&mut driver_ws, &id, 4).await;
    let (s, _) = n3.transition(&driver_token, &id, "pick_up", 4, None).await;
    assert_eq!(s, 200);
    let (s, v) = n3
        .transition(&driver_token, &id, "deliver", 5, Some(&otp))
        .await;
    assert_eq!(s, 200, "{v}");

    until_version(&mut buyer_ws, &id, 6).await;
    until_version(&mut vendor_ws, &id, 6).await;
    until_version(&mut driver_ws, &id, 6).await;
    // A moment for any late duplicate to show.
    for ws in [&mut buyer_ws, &mut vendor_ws, &mut driver_ws] {
        while ws
            .next_json_within(Duration::from_millis(300))
            .await
            .is_some()
        {}
    }
    assert_eq!(versions_of(&buyer_ws, &id), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(versions_of(&vendor_ws, &id), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(versions_of(&driver_ws, &id), vec![4, 5, 6]);
    let kinds: Vec<String> = buyer_ws.orders_seen().into_iter().map(|m| m.2).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "accepted",
            "ready",
            "assigned",
            "picked_up",
            "delivered"
        ]
    );

    // The cluster as an admin sees it: three live nodes, one leader with an epoch.
    let view = n2.ok("GET", "/api/admin/cluster", Some(ADMIN), None).await;
    assert_eq!(view["mode"], "nats");
    assert_eq!(view["bus_connected"], true);
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
    assert!(view["leader"]["epoch"].as_i64() >= Some(1), "{view}");
    let ids: Vec<i64> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_i64())
        .collect();
    assert!(ids.contains(&view["leader"]["node_id"].as_i64().unwrap()));
    // Only a leader dispatches: exactly one node has the lease.
    let leaders = nodes.iter().filter(|n| n.hub().cluster.is_leader()).count();
    assert_eq!(leaders, 1);
    // Connection ids are unique across nodes (each carries its node's id).
    let first: Vec<u64> = nodes
        .iter()
        .map(|n| n.hub().cluster.first_conn_id())
        .collect();
    assert!(first[0] != first[1] && first[1] != first[2] && first[0] != first[2]);
}

#[sqlx::test]
async fn racing_transitions_through_two_nodes_reach_a_third_in_order(db: PgPool) {
    let nodes = three_nodes(&db).await;
    let (n1, n2, n3) = (&nodes[0], &nodes[1], &nodes[2]);
    let (shop, vendor, product) = n1.shop(-33.9, 18.4).await;
    let (_, buyer) = n1.buyer().await;
    let mut watcher = n3.socket(&vendor).await;
    assert_eq!(
        watcher.subscribe(&format!("shop:{shop}")).await["type"],
        "snapshot"
    );
    let mut admin = n3.socket(ADMIN).await;
    assert_eq!(admin.subscribe("fleet").await["type"], "snapshot");

    const ORDERS: usize = 24;
    let mut ids = Vec::new();
    for _ in 0..ORDERS {
        let (o, _) = n1.order(&buyer, &shop, &product, -33.91, 18.4).await;
        ids.push(o["id"].as_str().unwrap().to_owned());
    }
    // Every order is walked accept → mark_ready → cancel (admin) by two nodes at once: each
    // step is tried through node 1 and node 2 together; one wins, the other conflicts.
    let steps = [
        ("accept", vendor.clone()),
        ("mark_ready", vendor.clone()),
        ("cancel", ADMIN.to_owned()),
    ];
    let walk = |id: String| {
        let steps = steps.clone();
        async move {
            let mut version = 1;
            for (action, token) in steps {
                let body = json!({"action": action, "expected_version": version, "reason": "race"});
                let path = format!("/api/orders/{id}/transitions");
                let (a, b) = tokio::join!(
                    n1.call("POST", &path, Some(&token), Some(body.clone())),
                    n2.call("POST", &path, Some(&token), Some(body)),
                );
                let won: Vec<&(u16, Value)> = [&a, &b].into_iter().filter(|r| r.0 == 200).collect();
                assert_eq!(won.len(), 1, "one winner per step: {a:?} {b:?}");
                let lost = if a.0 == 200 { &b } else { &a };
                assert_eq!(lost.0, 409, "the loser conflicts: {lost:?}");
                version = won[0].1["version"].as_i64().unwrap();
            }
            version
        }
    };
    let finals = futures::future::join_all(ids.iter().cloned().map(walk)).await;
    assert!(finals.iter().all(|v| *v == 4));

    for ws in [&mut watcher, &mut admin] {
        for id in &ids {
            until_version(ws, id, 4).await;
        }
        while ws
            .next_json_within(Duration::from_millis(300))
            .await
            .is_some()
        {}
        for id in &ids {
            let seen = versions_of(ws, id);
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "versions of {id} not strictly increasing: {seen:?}"
            );
            assert_eq!(seen.last(), Some(&4), "{id}: {seen:?}");
            // Read back only when a version went missing for good; none did here, so every
            // version arrived (the gap check waits for a late one).
            assert_eq!(seen, vec![1, 2, 3, 4], "{id}");
        }
    }
}

#[sqlx::test]
async fn login_failures_count_across_nodes_and_logout_reaches_every_node(db: PgPool) {
    let nodes = three_nodes(&db).await;
    let v = nodes[0]
        .ok(
            "POST",
            "/api/admin/drivers",
            Some(ADMIN),
            Some(json!({"name": "Ria"})),
        )
        .await;
    let id = v["driver"]["id"].as_str().unwrap().to_owned();
    let code = v["login_code"].as_str().unwrap().to_owned();
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };

    // Five wrong codes from one address, spread over the three nodes...
    for i in 0..5 {
        let body = json!({"role": "driver", "account_id": id, "code": wrong});
        let (s, v) = nodes[i % 3]
            .call("POST", "/api/auth/login", None, Some(body))
            .await;
        assert_eq!(s, 401, "attempt {i}: {v}");
        // The bus carries the failure to the other nodes (a round trip on loopback).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...are five: the pair limit (5 per 15 min) holds on every node, even for the right code.
    for node in &nodes {
        let body = json!({"role": "driver", "account_id": id, "code": code});
        let (s, v) = node.call("POST", "/api/auth/login", None, Some(body)).await;
        assert_eq!(s, 429, "{v}");
        assert_eq!(v["error"]["code"], "rate_limited");
    }

    // Logout through node 1 closes the token's socket on node 2.
    let (_, buyer_token) = nodes[0].buyer().await;
    let mut ws = nodes[1].socket(&buyer_token).await;
    let started = Instant::now();
    let (s, v) = nodes[0]
        .call("POST", "/api/auth/logout", Some(&buyer_token), None)
        .await;
    assert!((200..300).contains(&s), "{s} {v}");
    assert_eq!(ws.close_code().await, Some(4401));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[sqlx::test]
async fn a_node_that_cannot_reach_nats_is_not_ready(db: PgPool) {
    let mut c = node_config(&db, "cut-off");
    // Nothing listens on port 1.
    c.nats_url = Some("nats://127.0.0.1:1".into());
    let node = TestHub::start_with(db.clone(), c).await;
    let r = node
        .http
        .get(format!("{}/readyz", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "unavailable");
    // It never takes the dispatcher's lease either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!node.hub().cluster.is_leader());
}

#[sqlx::test]
async fn an_assignment_under_an_old_epoch_never_commits(db: PgPool) {
    use dispatch_hub::domain::order::{DriverChange, Plan};
    use dispatch_hub::domain::{Actor, DriverId, EventKind, OrderId, OrderStatus};
    use dispatch_hub::store::orders::{Write, WriteError, apply};

    let hub = TestHub::start(db.clone()).await;
    let (shop, vendor, product) = hub.shop(10.0, 10.0).await;
    let (driver, _) = hub.driver().await;
    let (_, buyer) = hub.buyer().await;
    let (o, _) = hub.order(&buyer, &shop, &product, 10.01, 10.0).await;
    let id = o["id"].as_str().unwrap().to_owned();
    hub.transition(&vendor, &id, "accept", 1, None).await;
    hub.transition(&vendor, &id, "mark_ready", 2, None).await;
    // A new leader took the lease: the epoch moved from 7 to 8.
    sqlx::query("UPDATE dispatch_lease SET epoch = 8 WHERE id = 1")
        .execute(&db)
        .await
        .unwrap();
    let assign = |fence| Write {
        order_id: OrderId(id.parse().unwrap()),
        expected_version: 3,
        plan: Plan {
            to: OrderStatus::Assigned,
            kind: EventKind::Assigned,
            driver: DriverChange::Set(DriverId(driver.parse().unwrap())),
        },
        actor: Actor::SYSTEM,
        payload: json!({}),
        commission_cents: None,
        fence: Some(fence),
    };
    assert!(matches!(
        apply(&db, assign(7)).await,
        Err(WriteError::Fenced)
    ));
    let (v,): (i32,) = sqlx::query_as("SELECT version FROM orders WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(v, 3, "the fenced write changed nothing");
    let (rec, _) = apply(&db, assign(8))
        .await
        .expect("the current epoch commits");
    assert_eq!(rec.view.version, 4);
}

// ---------------------------------------------------------------------------------------------
// Failover: nodes as processes, so that the leader can die by SIGKILL.

/// A node in a process of its own, polling the lease every `poll_ms`.
fn node_process(db_url: &str, cluster: &str, name: &str, poll_ms: u64) -> Proc {
    let bind = format!("127.0.0.1:{}", free_port());
    Proc::spawn(
        db_url,
        &bind,
        &[
            ("HUB_NATS_URL", nats_url()),
            ("HUB_CLUSTER", cluster.to_owned()),
            ("HUB_NODE_NAME", name.to_owned()),
            ("HUB_LEASE_POLL_MS", poll_ms.to_string()),
            ("HUB_SIGNUPS_PER_ADDRESS_H", "100000".into()),
            // Three nodes per test, two tests at a time, on one Postgres of 100 connections.
            ("HUB_DB_MAX_CONNECTIONS", "6".into()),
        ],
    )
}

async fn wait_healthy(hub: &TestHub) {
    wait_for(&hub.http, &hub.base, "/healthz").await;
}

#[sqlx::test]
async fn kill_dash_nine_of_the_leader_fails_over_within_five_seconds(db: PgPool) {
    dispatch_hub::store::MIGRATOR.run(&db).await.unwrap();
    let url = db_url_for(&db);
    let cluster = format!("test_{}", db_name(&db));
    let mut procs: Vec<Proc> = (1..=3)
        .map(|i| node_process(&url, &cluster, &format!("p{i}"), 100))
        .collect();
    let clients: Vec<TestHub> = procs.iter().map(Proc::client).collect();
    for c in &clients {
        wait_healthy(c).await;
    }
    let (leader_id, epoch) = wait_for_leader(&clients[0], 0).await;
    let view = clients[0]
        .ok("GET", "/api/admin/cluster", Some(ADMIN), None)
        .await;
    let names: HashMap<i64, String> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_i64().unwrap(),
                n["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let leader = names[&leader_id]
        .trim_start_matches('p')
        .parse::<usize>()
        .unwrap()
        - 1;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let f0 = &clients[followers[0]];

    // Drivers online on the followers (their sockets outlive the leader), shops everywhere.
    const DRIVERS: usize = 30;
    let mut driver_socks = Vec::new();
    for i in 0..DRIVERS {
        let node = &clients[followers[i % 2]];
        let (_, token) = node.driver().await;
        let mut ws = node.socket(&token).await;
        ws.send(json!({"type": "location", "lat": 1.0 + 0.0001 * i as f64, "lng": 1.0}))
            .await;
        driver_socks.push(ws);
    }
    let (shop, vendor, product) = f0.shop(1.0, 1.0).await;
    let (_, buyer) = f0.buyer().await;

    // Orders marked ready one by one, every 100 ms, through the followers; the leader dies
    // after the first ten.
    let mut ready = Vec::new();
    let mut killed_at = None;
    for i in 0..25 {
        if i == 10 {
            procs[leader].kill9();
            killed_at = Some(chrono::Utc::now());
        }
        let node = &clients[followers[i % 2]];
        let (o, _) = node.order(&buyer, &shop, &product, 1.001, 1.0).await;
        let id = o["id"].as_str().unwrap().to_owned();
        assert_eq!(
            node.transition(&vendor, &id, "accept", 1, None).await.0,
            200
        );
        assert_eq!(
            node.transition(&vendor, &id, "mark_ready", 2, None).await.0,
            200
        );
        ready.push(id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = killed_at.unwrap();

    // A new leader within 5 s of the kill.
    let (new_leader, new_epoch) = wait_for_leader(f0, epoch).await;
    assert_ne!(new_leader, leader_id);
    let (took,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT acquired_at FROM dispatch_lease_history WHERE epoch = $1")
            .bind(new_epoch)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(
        took - killed_at < chrono::Duration::seconds(5),
        "lease taken {} ms after the kill",
        (took - killed_at).num_milliseconds()
    );
    // Every ready order is assigned afterwards.
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in &ready {
        loop {
            let (_, o) = f0
                .call("GET", &format!("/api/orders/{id}"), Some(ADMIN), None)
                .await;
            if o["status"] == "assigned" {
                break;
            }
            assert!(Instant::now() < deadline, "order {id} never assigned: {o}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The first assignment under the new epoch came within 5 s of the kill.
    let (first,): (Option<chrono::DateTime<chrono::Utc>>,) = sqlx::query_as(
        "SELECT min(created_at) FROM order_events
         WHERE kind = 'assigned' AND (payload->>'epoch')::int8 = $1",
    )
    .bind(new_epoch)
    .fetch_one(&db)
    .await
    .unwrap();
    let first = first.expect("the new leader assigned");
    eprintln!(
        "failover: lease taken {} ms after the kill, first assignment {} ms after it",
        (took - killed_at).num_milliseconds(),
        (first - killed_at).num_milliseconds()
    );
    assert!(
        first - killed_at < chrono::Duration::seconds(5),
        "first assignment {} ms after the kill",
        (first - killed_at).num_milliseconds()
    );

    // No driver with two active orders; every assignment carries the epoch it was decided
    // under, and epochs never go backwards in commit order.
    let (doubled,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM (SELECT driver_id FROM orders WHERE status IN ('assigned', 'picked_up')
                               GROUP BY driver_id HAVING count(*) > 1) d",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(doubled, 0);
    // Every assignment carries the epoch it was decided under (the write checked it against
    // the lease); those of orders marked ready after the kill were all decided by the new
    // leader, the others by one of the two.
    for (i, id) in ready.iter().enumerate() {
        let (e,): (Option<i64>,) = sqlx::query_as(
            "SELECT (payload->>'epoch')::int8 FROM order_events
             WHERE order_id = $1::uuid AND kind = 'assigned'",
        )
        .bind(id)
        .fetch_one(&db)
        .await
        .unwrap();
        let e = e.expect("every assignment is fenced");
        if i >= 10 {
            assert!(
                e >= new_epoch,
                "order {i} assigned under epoch {e} after the kill"
            );
        } else {
            assert!(e == epoch || e >= new_epoch, "order {i}: epoch {e}");
        }
    }
    drop(driver_socks);
}

/// The failover figures of docs/benchmarks.md (not a check: run it on purpose):
/// `cargo nextest run --test cluster --run-ignored only --no-capture failover_timings`.
/// Ten times: kill -9 the leader, mark an order ready through a follower at once, and measure
/// how long until another node holds the lease and until that order is assigned; then start a
/// fresh node in place of the dead one. Nodes poll the lease every 250 ms (the default).
#[sqlx::test]
#[ignore]
async fn failover_timings(db: PgPool) {
    dispatch_hub::store::MIGRATOR.run(&db).await.unwrap();
    let url = db_url_for(&db);
    let cluster = format!("test_{}", db_name(&db));
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| node_process(&url, &cluster, &format!("p{i}"), 250))
        .collect();
    let mut names: Vec<String> = (0..3).map(|i| format!("p{i}")).collect();
    for p in &procs {
        wait_healthy(&p.client()).await;
    }
    let (_, mut epoch) = wait_for_leader(&procs[0].client(), 0).await;
    const RUNS: usize = 10;
    let (mut lease_ms, mut assign_ms) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let view = procs[0].client();
        let view = if let (200, v) = view
            .call("GET", "/api/admin/cluster", Some(ADMIN), None)
            .await
        {
            v
        } else {
            procs[1]
                .client()
                .ok("GET", "/api/admin/cluster", Some(ADMIN), None)
                .await
        };
        let leader_id = view["leader"]["node_id"].as_i64().unwrap();
        let leader_name = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"].as_i64() == Some(leader_id))
            .and_then(|n| n["name"].as_str())
            .unwrap()
            .to_owned();
        let leader = names.iter().position(|n| *n == leader_name).unwrap();
        let follower = procs[(leader + 1) % 3].client();
        // A free driver on a follower, and an accepted order near it.
        let (_, token) = follower.driver().await;
        let mut ws = follower.socket(&token).await;
        let (lat, lng) = (common::rand_in(-50.0, 50.0), common::rand_in(-150.0, 150.0));
        ws.send(json!({"type": "location", "lat": lat, "lng": lng}))
            .await;
        let (shop, vendor, product) = follower.shop(lat, lng).await;
        let (_, buyer) = follower.buyer().await;
        let (o, _) = follower
            .order(&buyer, &shop, &product, lat + 0.001, lng)
            .await;
        let id = o["id"].as_str().unwrap().to_owned();
        assert_eq!(
            follower.transition(&vendor, &id, "accept", 1, None).await.0,
            200
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        procs[leader].kill9();
        let killed_at = chrono::Utc::now();
        assert_eq!(
            follower
                .transition(&vendor, &id, "mark_ready", 2, None)
                .await
                .0,
            200
        );
        let (_, new_epoch) = wait_for_leader(&follower, epoch).await;
        follower.wait_status(&vendor, &id, "assigned").await;
        let (took, assigned): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
            sqlx::query_as(
                "SELECT (SELECT acquired_at FROM dispatch_lease_history WHERE epoch = $2),
                        created_at
                 FROM order_events WHERE order_id = $1::uuid AND kind = 'assigned'",
            )
            .bind(&id)
            .bind(new_epoch)
            .fetch_one(&db)
            .await
            .unwrap();
        lease_ms.push((took - killed_at).num_milliseconds());
        assign_ms.push((assigned - killed_at).num_milliseconds());
        eprintln!(
            "run {run}: lease taken after {} ms, first assignment after {} ms (epoch {new_epoch})",
            lease_ms[run], assign_ms[run]
        );
        epoch = new_epoch;
        drop(ws);
        // A fresh node in place of the dead one.
        names[leader] = format!("p{}", 3 + run);
        procs[leader] = node_process(&url, &cluster, &names[leader], 250);
        wait_healthy(&procs[leader].client()).await;
    }
    lease_ms.sort_unstable();
    assign_ms.sort_unstable();
    eprintln!(
        "lease taken: min {} / median {} / max {} ms; first assignment: min {} / median {} / max {} ms",
        lease_ms[0],
        lease_ms[RUNS / 2],
        lease_ms[RUNS - 1],
        assign_ms[0],
        assign_ms[RUNS / 2],
        assign_ms[RUNS - 1]
    );
}

#[sqlx::test]
async fn a_node_that_missed_a_revocation_closes_the_socket_when_it_rechecks(db: PgPool) {
    let nodes = three_nodes(&db).await;
    let (buyer_id, buyer) = nodes[0].buyer().await;
    let (_, other) = nodes[0].buyer().await;
    let mut ws = nodes[1].socket(&buyer).await;
    let mut kept = nodes[1].socket(&other).await;
    // The token is used once through node 2, so that node 2 has its session cached.
    assert_eq!(
        nodes[1].call("GET", "/api/me", Some(&buyer), None).await.0,
        200
    );
    // Revoked behind node 2's back: as if the logout's message had not reached it (its bus
    // was down), or the row had been changed by hand.
    sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE role = 'buyer' AND subject_id = $1::uuid",
    )
    .bind(&buyer_id)
    .execute(&db)
    .await
    .unwrap();
    // What node 2 does when its bus comes back.
    let closed = nodes[1].hub().recheck_sockets().await.unwrap();
    assert_eq!(closed, 1);
    assert_eq!(ws.close_code().await, Some(4401));
    // The cache is gone with it: the token is refused at once.
    assert_eq!(
        nodes[1].call("GET", "/api/me", Some(&buyer), None).await.0,
        401
    );
    // The other buyer's socket stays.
    kept.send(json!({"type": "ping"})).await;
    assert_eq!(kept.next_json().await.unwrap()["type"], "pong");
}
