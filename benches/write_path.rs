//! The write path on its own: durable transitions per second through the service (no HTTP, no
//! sockets), against the real Postgres.
//!
//! `cargo bench --bench write_path -- [--orders N] [--concurrency 32,64] [--group 1,64]
//! [--pool 32]` — figures are recorded in docs/benchmarks.md, beside pgbench running the same
//! one-row update plus one-row insert (`benches/pgbench/`).
//!
//! Each run gets a fresh database (`hub_write_bench` next to `DATABASE_URL`'s), a hub with its
//! dispatcher (nobody is online, so it assigns nothing itself), and `concurrency` workers. Each
//! worker owns one driver and walks its share of the orders, one at a time, through accept,
//! mark_ready, assign, pick_up and deliver (with the OTP) — five transitions per order, each
//! acknowledged only after its commit (`synchronous_commit` stays on). Orders are placed
//! before the clock starts (the placement rate is shown too). A run ends by checking that
//! every order was delivered with a gapless log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dispatch_hub::app;
use dispatch_hub::config::Config;
use dispatch_hub::domain::{
    Action, Actor, BuyerId, DriverId, OrderId, OrderStatus, ProductId, Role, ShopId,
};
use dispatch_hub::service::Hub;
use dispatch_hub::service::orders::{
    NewOrderLine, NewOrderRequest, SystemInput, TransitionRequest,
};
use dispatch_hub::service::views::Delivery;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;
use uuid::Uuid;

const SHOPS: usize = 50;
const BUYERS: usize = 200;
const DB_NAME: &str = "hub_write_bench";

struct Args {
    orders: usize,
    concurrency: Vec<usize>,
    groups: Vec<usize>,
    pool: u32,
    url: String,
}

fn list(v: &str) -> Vec<usize> {
    v.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn args() -> Args {
    let mut a = Args {
        orders: 6_000,
        concurrency: vec![32],
        groups: vec![1, 64],
        pool: 32,
        url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        // `cargo bench` passes `--bench`; anything unknown is ignored.
        let mut val = || it.next().unwrap_or_default();
        match k.as_str() {
            "--orders" => a.orders = val().parse().expect("--orders N"),
            "--concurrency" => a.concurrency = list(&val()),
            "--group" => a.groups = list(&val()),
            "--pool" => a.pool = val().parse().expect("--pool N"),
            _ => {}
        }
    }
    a
}

struct Fixture {
    shops: Vec<(ShopId, ProductId)>,
    buyers: Vec<BuyerId>,
    drivers: Vec<DriverId>,
}

async fn fresh_database(url: &str) -> PgConnectOptions {
    let opts: PgConnectOptions = url.parse().expect("DATABASE_URL");
    let admin = opts.clone().database("postgres");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect_with(&admin)
        .await
        .expect("connect to Postgres");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {DB_NAME}"))
        .execute(&mut conn)
        .await
        .unwrap();
    opts.database(DB_NAME)
}

async fn seed(db: &PgPool, drivers: usize) -> Fixture {
    let shops: Vec<(ShopId, ProductId)> = (0..SHOPS)
        .map(|_| (ShopId(Uuid::now_v7()), ProductId(Uuid::now_v7())))
        .collect();
    let shop_ids: Vec<Uuid> = shops.iter().map(|s| s.0.0).collect();
    let product_ids: Vec<Uuid> = shops.iter().map(|s| s.1.0).collect();
    sqlx::query(
        "INSERT INTO shops (id, name, lat, lng, login_code_hash, login_code_expires_at)
         SELECT id, 'Shop ' || n, 52.4 + n * 0.001, 13.3, 'x', now() + interval '1 day'
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(&shop_ids)
    .execute(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO products (id, shop_id, name, price_cents)
         SELECT p, s, 'Soup', 500 FROM unnest($1::uuid[], $2::uuid[]) AS t(p, s)",
    )
    .bind(&product_ids)
    .bind(&shop_ids)
    .execute(db)
    .await
    .unwrap();
    let buyers: Vec<BuyerId> = (0..BUYERS).map(|_| BuyerId(Uuid::now_v7())).collect();
    sqlx::query(
        "INSERT INTO buyers (id, name, phone)
         SELECT id, 'Buyer ' || n, '+49 30 ' || n FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(buyers.iter().map(|b| b.0).collect::<Vec<_>>())
    .execute(db)
    .await
    .unwrap();
    let drivers: Vec<DriverId> = (0..drivers).map(|_| DriverId(Uuid::now_v7())).collect();
    sqlx::query(
        "INSERT INTO drivers (id, name, login_code_hash, login_code_expires_at)
         SELECT id, 'Driver ' || n, 'x', now() + interval '1 day'
         FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n)",
    )
    .bind(drivers.iter().map(|d| d.0).collect::<Vec<_>>())
    .execute(db)
    .await
    .unwrap();
    Fixture {
        shops,
        buyers,
        drivers,
    }
}

/// An order to walk: its id, shop and OTP.
struct Placed {
    id: OrderId,
    shop: ShopId,
    otp: String,
}

async fn place(hub: &Hub, f: &Fixture, i: usize) -> Placed {
    let (shop, product) = f.shops[i % f.shops.len()];
    let buyer = f.buyers[i % f.buyers.len()];
    let req = NewOrderRequest {
        shop_id: shop,
        items: vec![NewOrderLine {
            product_id: product,
            quantity: 1,
        }],
        delivery: Delivery {
            lat: 52.41,
            lng: 13.31,
            address: "Bench street 1".into(),
        },
        payment: "cod".into(),
    };
    let actor = Actor {
        role: Role::Buyer,
        id: Some(buyer.0),
    };
    let (placed, _) = hub.place_order(actor, None, req).await.expect("place");
    Placed {
        id: placed.order.id,
        shop,
        otp: placed.otp.expect("otp"),
    }
}

/// Walks one order through its five transitions; returns each one's latency.
async fn walk(hub: &Hub, o: &Placed, driver: DriverId, lat: &mut Vec<Duration>) {
    let vendor = Actor {
        role: Role::Vendor,
        id: Some(o.shop.0),
    };
    let drv = Actor {
        role: Role::Driver,
        id: Some(driver.0),
    };
    let steps = [
        (vendor, Action::Accept, None),
        (vendor, Action::MarkReady, None),
        (Actor::SYSTEM, Action::Assign, Some(driver)),
        (drv, Action::PickUp, None),
        (drv, Action::Deliver, None),
    ];
    for (version, (actor, action, assign_to)) in (1..).zip(steps) {
        let req = TransitionRequest {
            action,
            expected_version: version,
            otp: (action == Action::Deliver).then(|| o.otp.clone()),
            reason: None,
        };
        let sys = SystemInput {
            assign_to,
            ..SystemInput::default()
        };
        let t = Instant::now();
        let view = hub
            .transition_with(actor, o.id, req, sys)
            .await
            .unwrap_or_else(|e| panic!("{action:?} of {} at v{version}: {e:?}", o.id));
        lat.push(t.elapsed());
        assert_eq!(view.version, version + 1);
    }
}

/// WAL syncs and commits so far (the whole cluster: anything else running counts too).
async fn wal_and_commits(db: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT wal_sync FROM pg_stat_wal),
                (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) — utime and stime are 14th and 15th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds used so far by this process and by the Postgres backends serving its database.
async fn cpu_so_far(db: &PgPool) -> (f64, f64) {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(db)
            .await
            .unwrap();
    let pg = pids.iter().map(|p| cpu_secs(&p.to_string())).sum();
    (cpu_secs("self"), pg)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

struct Figures {
    placed_per_s: f64,
    transitions: usize,
    secs: f64,
    p50: f64,
    p99: f64,
    wal_syncs_per_tr: f64,
    /// CPU µs per transition: this process (hub and workers), and the database's backends.
    hub_us: f64,
    pg_us: f64,
}

async fn run(a: &Args, group: usize, concurrency: usize) -> Figures {
    let opts = fresh_database(&a.url).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(a.pool)
        .connect_with(opts)
        .await
        .expect("pool");
    dispatch_hub::store::MIGRATOR.run(&db).await.unwrap();
    let f = Arc::new(seed(&db, concurrency).await);
    let mut config = Config::from_env();
    config.secret = Some("write-path-bench".into());
    config.write_group = group;
    // Nobody is online: keep the dispatcher's timers (a driver offline past the grace
    // period, a ready order waiting too long, a pending order never accepted) out of the run.
    config.driver_grace_s = 86_400;
    config.ready_alert_s = 86_400;
    config.accept_timeout_s = 86_400;
    let (hub, receivers) = app::build_hub(Arc::new(config), db.clone());
    let dispatcher = dispatch_hub::dispatch::spawn(receivers);
    hub.dispatch.start(hub.clone()).await;

    // Place every order first (through the service, concurrently).
    let t = Instant::now();
    let mut placers = Vec::new();
    for w in 0..concurrency {
        let (hub, f) = (hub.clone(), f.clone());
        let n = a.orders;
        placers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in (w..n).step_by(concurrency) {
                mine.push(place(&hub, &f, i).await);
            }
            mine
        }));
    }
    let mut shares = Vec::new();
    for p in placers {
        shares.push(p.await.unwrap());
    }
    let placed_per_s = a.orders as f64 / t.elapsed().as_secs_f64();
    sqlx::query("VACUUM ANALYZE").execute(&db).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&db).await.unwrap();

    // The measured phase: every worker walks its orders, one at a time.
    let (wal0, _) = wal_and_commits(&db).await;
    let (hub0, pg0) = cpu_so_far(&db).await;
    let t = Instant::now();
    let mut workers = Vec::new();
    for (w, mine) in shares.into_iter().enumerate() {
        let hub = hub.clone();
        let driver = f.drivers[w];
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(mine.len() * 5);
            for o in &mine {
                walk(&hub, o, driver, &mut lat).await;
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(a.orders * 5);
    for w in workers {
        lat.extend(w.await.unwrap());
    }
    let secs = t.elapsed().as_secs_f64();
    let (hub1, pg1) = cpu_so_far(&db).await;
    let (wal1, _) = wal_and_commits(&db).await;
    lat.sort();

    let (delivered, bad): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'delivered'),
                count(*) FILTER (WHERE version <> 6
                    OR version <> (SELECT count(*) FROM order_events e WHERE e.order_id = o.id))
         FROM orders o",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        (delivered, bad),
        (a.orders as i64, 0),
        "every order delivered, logs gapless"
    );
    let status: String = sqlx::query_scalar("SELECT DISTINCT status FROM orders")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, OrderStatus::Delivered.as_str());

    hub.shutdown.cancel();
    drop(hub);
    let _ = dispatcher.await;
    db.close().await;
    Figures {
        placed_per_s,
        transitions: lat.len(),
        secs,
        p50: pct(&lat, 0.50),
        p99: pct(&lat, 0.99),
        wal_syncs_per_tr: (wal1 - wal0) as f64 / lat.len() as f64,
        hub_us: (hub1 - hub0) * 1e6 / lat.len() as f64,
        pg_us: (pg1 - pg0) * 1e6 / lat.len() as f64,
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "{} orders × 5 transitions per run; pool {} connections",
        a.orders, a.pool
    );
    println!(
        "| group | concurrency | placed/s | transitions | seconds | transitions/s | p50 ms | p99 ms | WAL syncs per transition | CPU µs per transition: hub + harness | Postgres backends |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &a.concurrency {
        for &g in &a.groups {
            let f = rt.block_on(run(&a, g, c));
            println!(
                "| {g} | {c} | {:.0} | {} | {:.1} | **{:.0}** | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
                f.placed_per_s,
                f.transitions,
                f.secs,
                f.transitions as f64 / f.secs,
                f.p50,
                f.p99,
                f.wal_syncs_per_tr,
                f.hub_us,
                f.pg_us
            );
        }
    }
}
