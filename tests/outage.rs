//! Postgres stopped for 30 s under load, on a cluster of the test's own (another port, never
//! the shared one): no 500s, `/readyz` and REST answer 503 within a second, sockets stay open
//! and get `unavailable`, and after the restart the hub recovers by itself and every
//! acknowledged order is still there and can be finished.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestHub, config};
use serde_json::{Value, json};

/// A Postgres cluster of this test's own, dropped at the end.
struct PrivatePg {
    version: String,
    name: String,
    port: u16,
}

fn run(args: &[&str]) {
    // The postmaster must not inherit the test runner's pipes (it would keep them open).
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the Debian postgresql-common tools are needed)",
                args[0]
            )
        });
    assert!(status.success(), "{args:?} failed: {status}");
}

impl PrivatePg {
    fn create() -> Self {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("a Debian PostgreSQL installation")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .expect("a PostgreSQL version");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let name = format!("dh_outage_{}_{port}", std::process::id());
        let p = port.to_string();
        run(&[
            "pg_createcluster",
            &version,
            &name,
            "-p",
            &p,
            "--start",
            "--",
            "--auth=trust",
        ]);
        Self {
            version,
            name,
            port,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn stop(&self) {
        run(&[
            "pg_ctlcluster",
            &self.version,
            &self.name,
            "stop",
            "-m",
            "fast",
        ]);
    }

    fn start(&self) {
        run(&["pg_ctlcluster", &self.version, &self.name, "start"]);
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster")
            .args(["--stop", &self.version, &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[derive(Debug, Clone)]
struct Answer {
    what: &'static str,
    status: u16,
    code: Option<String>,
    took: Duration,
    db_down: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_30_s_under_load() {
    let pg = PrivatePg::create();
    let pool = dispatch_hub::store::connect(&pg.url(), 8).await.unwrap();
    let hub = TestHub::start_with(pool, config()).await;
    let p = hub.party().await;
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let (o, _) = hub
            .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
            .await;
        acknowledged.push(o["id"].as_str().unwrap().to_owned());
    }
    let mut buyer_ws = hub.socket(&p.buyer_token).await;
    let snap = buyer_ws.subscribe(&format!("buyer:{}", p.buyer)).await;
    assert_eq!(snap["type"], "snapshot");

    // Load: orders and readiness probes every 50 ms, throughout.
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_load = tokio_util::sync::CancellationToken::new();
    let load = {
        let (answers, down, stop) = (answers.clone(), down.clone(), stop_load.clone());
        let (base, http, token) = (hub.base.clone(), hub.http.clone(), p.buyer_token.clone());
        let body = json!({
            "shop_id": p.shop, "items": [{"product_id": p.product, "quantity": 1}],
            "delivery": {"lat": p.lat + 0.01, "lng": p.lng, "address": "Test street 1"},
            "payment": "cod"
        });
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                let db_down = down.load(std::sync::atomic::Ordering::Relaxed);
                let t = Instant::now();
                let r = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("outage-{n}"))
                    .json(&body)
                    .send()
                    .await;
                let (status, v) = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        (s, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (0, Value::Null),
                };
                answers.lock().unwrap().push(Answer {
                    what: "order",
                    status,
                    code: v["error"]["code"].as_str().map(str::to_owned),
                    took: t.elapsed(),
                    db_down,
                });
                if status == 201
                    && let Some(id) = v["order"]["id"].as_str()
                {
                    answers.lock().unwrap().push(Answer {
                        what: "ack",
                        status,
                        code: Some(id.to_owned()),
                        took: Duration::ZERO,
                        db_down,
                    });
                }
                let t = Instant::now();
                let status = match http.get(format!("{base}/readyz")).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                answers.lock().unwrap().push(Answer {
                    what: "readyz",
                    status,
                    code: None,
                    took: t.elapsed(),
                    db_down,
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.stop();
    let stopped = Instant::now();
    // Give the hub a moment to notice (a failed call or its probe), then everything is fast.
    tokio::time::sleep(Duration::from_secs(2)).await;
    down.store(true, std::sync::atomic::Ordering::Relaxed);

    let t = Instant::now();
    let (s, v) = hub.call("GET", "/readyz", None, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("unavailable")));
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    let t = Instant::now();
    let (s, v) = hub
        .call(
            "GET",
            &format!("/api/orders/{}", acknowledged[0]),
            Some(&p.buyer_token),
            None,
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("unavailable")));
    assert!(t.elapsed() < Duration::from_secs(1));
    // The socket stays open and answers `unavailable` to a command.
    buyer_ws
        .send(
            json!({"type": "transition", "ref": "c1", "order_id": acknowledged[0],
                     "action": "cancel", "expected_version": 1}),
        )
        .await;
    let e = buyer_ws.until("reply", |v| v["ref"] == "c1").await;
    assert_eq!(e["code"], "unavailable", "{e}");
    buyer_ws.send(json!({"type": "ping"})).await;
    assert_eq!(
        buyer_ws.until("pong", |v| v["type"] == "pong").await["type"],
        "pong"
    );

    // Down for 30 s in all.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed())).await;
    down.store(false, std::sync::atomic::Ordering::Relaxed);
    pg.start();
    let restarted = Instant::now();
    loop {
        let (s, _) = hub.call("GET", "/readyz", None, None).await;
        if s == 200 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "the hub did not recover by itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recovered_after = restarted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_load.cancel();
    load.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let bad: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.what != "ack" && !matches!(a.status, 200 | 201 | 503))
        .collect();
    assert!(bad.is_empty(), "answers other than 200/201/503: {bad:?}");
    let slow: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.db_down && a.took > Duration::from_secs(1))
        .collect();
    assert!(slow.is_empty(), "slow answers while down: {slow:?}");
    let refused = answers
        .iter()
        .filter(|a| a.db_down && a.status == 503)
        .count();
    assert!(refused > 50, "only {refused} refusals while down");
    assert!(
        answers
            .iter()
            .filter(|a| a.status == 503 && a.what == "order")
            .all(|a| a.code.as_deref() == Some("unavailable")),
        "503s carry the unavailable code"
    );
    eprintln!(
        "outage: {} answers, {refused} fast 503s while down, recovered {recovered_after:?} after restart",
        answers.len()
    );

    // Every acknowledged order survived and can reach a final state.
    acknowledged.extend(
        answers
            .iter()
            .filter(|a| a.what == "ack")
            .filter_map(|a| a.code.clone()),
    );
    for id in &acknowledged {
        let o = hub
            .ok(
                "GET",
                &format!("/api/orders/{id}"),
                Some(&p.buyer_token),
                None,
            )
            .await;
        let v = o["version"].as_i64().unwrap();
        let (s, o) = hub.transition(&p.buyer_token, id, "cancel", v, None).await;
        assert_eq!((s, o["status"].as_str()), (200, Some("cancelled")), "{o}");
    }
    drop(hub);
}
