//! Socket snapshots against a realistic population: each scope's snapshot statement, exactly as
//! `store::orders` runs it, is planned on its partial index over active orders (migration 0005),
//! never on a scan of the order history, and returns exactly the scope's active orders.
//!
//! The ignored `snapshot_timings_before_and_after` measures the statements at scale:
//! `cargo nextest run --test snapshot_plans --run-ignored only --no-capture`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use dispatch_hub::domain::{BuyerId, DriverId, OrderStatus, ShopId};
use dispatch_hub::store::orders::{self, Scope};
use futures::StreamExt;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

/// How many of each the population holds. Orders are numbered oldest first: `finished` ones
/// (delivered, cancelled, rejected, failed), then `waiting` ones (pending, accepted, ready), then
/// one assigned or picked-up order for each of the first `with_driver` drivers. Shop 1 is a big
/// one and takes a tenth of the orders; the others share the rest evenly.
struct Population {
    shops: i32,
    buyers: i32,
    drivers: i32,
    finished: i32,
    waiting: i32,
    with_driver: i32,
}

/// A few thousand finished orders and a few hundred active ones.
const SMALL: Population = Population {
    shops: 50,
    buyers: 500,
    drivers: 60,
    finished: 5_000,
    waiting: 300,
    with_driver: 40,
};

// The population's ids: the kind in the fourth group, the number in the last.
fn shop(n: i32) -> Uuid {
    id(0x8000, n)
}
fn buyer(n: i32) -> Uuid {
    id(0x9000, n)
}
fn driver(n: i32) -> Uuid {
    id(0xa000, n)
}
fn id(kind: u128, n: i32) -> Uuid {
    Uuid::from_u128((0x4000 << 64) | (kind << 48) | n as u128)
}

async fn populate(db: &PgPool, p: &Population) {
    let run = |sql: &'static str, binds: Vec<i32>| async move {
        let mut q = sqlx::query(sql);
        for b in binds {
            q = q.bind(b);
        }
        q.execute(db).await.expect("population loads");
    };
    run(
        "INSERT INTO shops (id, name, lat, lng, login_code_hash, login_code_expires_at)
         SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Shop ' || g,
                52.5, 13.4, 'x', now() + interval '30 days'
         FROM generate_series(1, $1) g",
        vec![p.shops],
    )
    .await;
    run(
        "INSERT INTO buyers (id, name, phone)
         SELECT ('00000000-0000-4000-9000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Buyer ' || g,
                '+49 30 ' || g
         FROM generate_series(1, $1) g",
        vec![p.buyers],
    )
    .await;
    run(
        "INSERT INTO drivers (id, name, login_code_hash, login_code_expires_at)
         SELECT ('00000000-0000-4000-a000-' || lpad(to_hex(g), 12, '0'))::uuid, 'Driver ' || g,
                'x', now() + interval '30 days'
         FROM generate_series(1, $1) g",
        vec![p.drivers],
    )
    .await;
    // Order ids rise with g, as UUIDv7 ids rise with time. Statuses follow g % 10 and shops
    // g / 10, so the big shop gets every status; buyers and drivers are spread by a hash of g.
    // The CHECK constraints hold: a
    // driver exactly on assigned, picked-up, delivered and failed orders, and at most one
    // assigned or picked-up order per driver.
    run(
        "INSERT INTO orders (id, shop_id, buyer_id, driver_id, status, version, items,
             total_cents, delivery_lat, delivery_lng, delivery_address, payment_type,
             payment_status, otp_hash, created_at, updated_at)
         SELECT (lpad(to_hex(g), 12, '0') || '70008' || lpad(to_hex(g), 15, '0'))::uuid,
                ('00000000-0000-4000-8000-' || lpad(to_hex(shop), 12, '0'))::uuid,
                ('00000000-0000-4000-9000-' || lpad(to_hex(buyer), 12, '0'))::uuid,
                CASE WHEN status IN ('assigned', 'picked_up', 'delivered', 'delivery_failed')
                     THEN ('00000000-0000-4000-a000-' || lpad(to_hex(drv), 12, '0'))::uuid END,
                status, 3,
                '[{\"product_id\": \"00000000-0000-4000-b000-000000000001\", \"name\": \"Soup\",
                   \"unit_price_cents\": 500, \"quantity\": 2}]',
                1000, 52.5, 13.4, 'Test street 1', 'cod',
                CASE WHEN status = 'delivered' THEN 'collected' ELSE 'pending' END, 'x',
                now() - ($6 - g) * interval '10 seconds', now() - ($6 - g) * interval '10 seconds'
         FROM (
             SELECT g,
                    CASE WHEN g / 10 % 10 = 0 THEN 1 ELSE 2 + g % ($1 - 1) END AS shop,
                    1 + (hashint4(g)::bigint + 2147483648) % $2 AS buyer,
                    CASE WHEN g > $4 + $5 THEN g - $4 - $5
                         ELSE 1 + (hashint4(-g)::bigint + 2147483648) % $3 END AS drv,
                    CASE WHEN g <= $4 THEN (ARRAY['cancelled', 'rejected', 'delivery_failed',
                             'delivered', 'delivered', 'delivered', 'delivered', 'delivered',
                             'delivered', 'delivered'])[1 + g % 10]
                         WHEN g <= $4 + $5 THEN (ARRAY['pending', 'accepted', 'ready'])[1 + g % 3]
                         ELSE (ARRAY['assigned', 'picked_up'])[1 + g % 2] END AS status
             FROM generate_series(1, $6) g
         ) o",
        vec![
            p.shops,
            p.buyers,
            p.drivers,
            p.finished,
            p.waiting,
            p.finished + p.waiting + p.with_driver,
        ],
    )
    .await;
    sqlx::query("ANALYZE").execute(db).await.unwrap();
}

/// The final statuses, from the domain rather than from the SQL under test.
fn finished_statuses() -> Vec<&'static str> {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// The plan Postgres makes for a prepared `sql` executed with `args` (like `('…')`, or empty),
/// with `plan_cache_mode` set to `mode`. sqlx prepares every statement, and after five runs on
/// a connection Postgres may switch it to a generic plan that cannot see the bound values, so
/// both custom and generic plans matter.
async fn plan(conn: &mut PgConnection, sql: &str, args: &str, mode: &str) -> Value {
    let mut out = explain(conn, sql, args, mode, "FORMAT JSON", 1).await;
    out.remove(0)["Plan"].take()
}

/// `EXPLAIN (options)` of the prepared statement, `times` times; the JSON of each.
async fn explain(
    conn: &mut PgConnection,
    sql: &str,
    args: &str,
    mode: &str,
    options: &str,
    times: usize,
) -> Vec<Value> {
    sqlx::raw_sql(&format!(
        "SET plan_cache_mode = {mode}; PREPARE snapshot_plan AS {sql}"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let mut out = Vec::with_capacity(times);
    for _ in 0..times {
        let row = sqlx::raw_sql(&format!("EXPLAIN ({options}) EXECUTE snapshot_plan{args}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        out.push(row.get::<Value, _>(0)[0].take());
    }
    sqlx::raw_sql("DEALLOCATE snapshot_plan; RESET plan_cache_mode")
        .execute(&mut *conn)
        .await
        .unwrap();
    out
}

/// Every node of a plan tree.
fn nodes(plan: &Value) -> Vec<&Value> {
    let mut out = vec![plan];
    if let Some(children) = plan["Plans"].as_array() {
        out.extend(children.iter().flat_map(nodes));
    }
    out
}

/// Whose orders a scope covers.
fn owner(scope: Scope) -> Option<Uuid> {
    match scope {
        Scope::All => None,
        Scope::Shop(ShopId(id)) | Scope::Buyer(BuyerId(id)) | Scope::Driver(DriverId(id)) => {
            Some(id)
        }
    }
}

/// The arguments of `EXECUTE` for a scope's statement: the new one, or `BEFORE_0005`.
fn execute_args(scope: Scope, before: bool) -> String {
    match (owner(scope), before) {
        (None, false) => String::new(),
        (Some(id), false) => format!("('{id}')"),
        (None, true) => "(NULL, NULL, NULL)".to_owned(),
        (Some(id), true) => match scope {
            Scope::Shop(_) => format!("('{id}', NULL, NULL)"),
            Scope::Buyer(_) => format!("(NULL, '{id}', NULL)"),
            _ => format!("(NULL, NULL, '{id}')"),
        },
    }
}

/// Asserts that the plan reads `orders` through exactly one index, one of `allowed`, and
/// never scans the table (index names of `orders` all start with `orders_`).
fn assert_planned_on(plan: &Value, allowed: &[&str], what: &str) {
    let nodes = nodes(plan);
    assert!(
        !nodes
            .iter()
            .any(|n| n["Node Type"] == "Seq Scan" && n["Relation Name"] == "orders"),
        "{what} scans orders: {plan:#}"
    );
    let indexes: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| {
            matches!(
                n["Node Type"].as_str(),
                Some("Index Scan" | "Index Only Scan" | "Bitmap Index Scan")
            )
        })
        .filter_map(|n| n["Index Name"].as_str())
        // Only how `orders` is read: the name look-ups use the other tables' primary keys.
        .filter(|name| name.starts_with("orders_"))
        .collect();
    assert!(
        indexes.len() == 1 && allowed.contains(indexes.first().unwrap()),
        "{what} is planned on {indexes:?}, not on one of {allowed:?}: {plan:#}"
    );
}

/// The buyer of the newest waiting order: one with active orders and a history.
async fn busy_buyer(db: &PgPool) -> Uuid {
    sqlx::query_scalar(
        "SELECT buyer_id FROM orders WHERE status = 'pending' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[sqlx::test]
async fn each_snapshot_is_planned_on_its_active_order_index(db: PgPool) {
    populate(&db, &SMALL).await;
    let buyer = busy_buyer(&db).await;
    let cases = [
        (
            "a shop",
            Scope::Shop(ShopId(shop(2))),
            vec!["orders_shop_active_idx"],
        ),
        // A shop that takes a tenth of all orders may be read through the fleet's index in
        // id order rather than through its own; either way only active orders are read.
        (
            "the big shop",
            Scope::Shop(ShopId(shop(1))),
            vec!["orders_shop_active_idx", "orders_active_id_idx"],
        ),
        (
            "a buyer",
            Scope::Buyer(BuyerId(buyer)),
            vec!["orders_buyer_active_idx"],
        ),
        (
            "a driver",
            Scope::Driver(DriverId(driver(1))),
            vec!["orders_one_active_per_driver_idx"],
        ),
        ("the fleet", Scope::All, vec!["orders_active_id_idx"]),
    ];
    let mut conn = db.acquire().await.unwrap();
    for (what, scope, allowed) in cases {
        let args = execute_args(scope, false);
        for mode in ["force_custom_plan", "force_generic_plan"] {
            let p = plan(&mut conn, orders::active_sql(scope), &args, mode).await;
            assert_planned_on(&p, &allowed, &format!("{what} ({mode})"));
        }
    }
}

/// Checks one scope's snapshot against an independent reading of the table: the orders whose
/// `owner` column is `id` (all orders when `None`) and whose status is not final, oldest first.
/// Returns how many there are.
async fn check_snapshot(db: &PgPool, scope: Scope, owner: Option<(&str, Uuid)>) -> usize {
    let got = orders::active(db, scope).await.unwrap();
    let expected: Vec<Uuid> = match owner {
        Some((column, id)) => sqlx::query_scalar(&format!(
            "SELECT id FROM orders WHERE {column} = $1 AND status <> ALL($2) ORDER BY id"
        ))
        .bind(id)
        .bind(finished_statuses())
        .fetch_all(db)
        .await
        .unwrap(),
        None => sqlx::query_scalar("SELECT id FROM orders WHERE status <> ALL($1) ORDER BY id")
            .bind(finished_statuses())
            .fetch_all(db)
            .await
            .unwrap(),
    };
    let got_ids: Vec<Uuid> = got.iter().map(|o| o.view.id.0).collect();
    assert_eq!(got_ids, expected, "{scope:?}");
    for o in &got {
        let v = &o.view;
        assert!(!v.status.is_final(), "{scope:?} holds {:?}", v.status);
        let owned = match scope {
            Scope::All => true,
            Scope::Shop(s) => v.shop_id == s,
            Scope::Buyer(b) => v.buyer_id == b,
            Scope::Driver(d) => v.driver_id == Some(d),
        };
        assert!(owned, "{scope:?} holds an order of someone else: {v:?}");
    }
    got.len()
}

/// How many orders `column` = `id` has in all.
async fn history(db: &PgPool, column: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM orders WHERE {column} = $1"))
        .bind(id)
        .fetch_one(db)
        .await
        .unwrap()
}

#[sqlx::test]
async fn snapshots_hold_the_active_orders_of_their_scope_only(db: PgPool) {
    let p = SMALL;
    populate(&db, &p).await;

    for n in [1, 2, 3] {
        let active = check_snapshot(
            &db,
            Scope::Shop(ShopId(shop(n))),
            Some(("shop_id", shop(n))),
        )
        .await;
        assert!(active > 0 && (active as i64) < history(&db, "shop_id", shop(n)).await);
    }

    let b = busy_buyer(&db).await;
    let active = check_snapshot(&db, Scope::Buyer(BuyerId(b)), Some(("buyer_id", b))).await;
    assert!(active > 0 && (active as i64) < history(&db, "buyer_id", b).await);

    // Driver 1 holds one order now and has delivered others; the last driver only has history.
    let d = driver(1);
    let active = check_snapshot(&db, Scope::Driver(DriverId(d)), Some(("driver_id", d))).await;
    assert!(active == 1 && history(&db, "driver_id", d).await > 1);
    let d = driver(p.drivers);
    let active = check_snapshot(&db, Scope::Driver(DriverId(d)), Some(("driver_id", d))).await;
    assert!(active == 0 && history(&db, "driver_id", d).await > 0);

    let active = check_snapshot(&db, Scope::All, None).await;
    assert_eq!(active as i32, p.waiting + p.with_driver);
}

/// The snapshot statement before migration 0005, kept to measure against: one statement for
/// every scope, the owner filters switched off by NULLs.
const BEFORE_0005: &str = "SELECT id, number, shop_id, buyer_id, driver_id, status, version,
    items, total_cents, delivery_lat, delivery_lng, delivery_address, payment_type,
    payment_status, otp_hash, otp_failed_attempts, request_hash, created_at, updated_at
    FROM orders
    WHERE status IN ('pending', 'accepted', 'ready', 'assigned', 'picked_up')
      AND ($1::uuid IS NULL OR shop_id = $1) AND ($2::uuid IS NULL OR buyer_id = $2)
      AND ($3::uuid IS NULL OR driver_id = $3)
    ORDER BY id LIMIT 10000";

/// Runs one snapshot, old or new statement, as the hub does (prepared, cached per connection)
/// and returns the row count. Rows are not decoded: both statements pay the same for that.
async fn snapshot<'c>(e: impl sqlx::PgExecutor<'c>, scope: Scope, before: bool) -> usize {
    let owner = owner(scope);
    let rows = if before {
        let pick = |on: bool| owner.filter(|_| on);
        sqlx::query(BEFORE_0005)
            .bind(pick(matches!(scope, Scope::Shop(_))))
            .bind(pick(matches!(scope, Scope::Buyer(_))))
            .bind(pick(matches!(scope, Scope::Driver(_))))
            .fetch_all(e)
            .await
    } else {
        let q = sqlx::query(orders::active_sql(scope));
        match owner {
            Some(id) => q.bind(id),
            None => q,
        }
        .fetch_all(e)
        .await
    };
    rows.unwrap().len()
}

/// Times `runs` snapshots, one after another on one connection, cycling through `scopes`
/// after an untimed pass over them; returns a table row.
async fn time_snapshots(
    conn: &mut PgConnection,
    what: &str,
    scopes: &[Scope],
    runs: usize,
    before: bool,
) -> String {
    for s in scopes.iter().take(runs) {
        snapshot(&mut *conn, *s, before).await;
    }
    let mut took = Vec::with_capacity(runs);
    let mut rows = 0;
    for s in scopes.iter().cycle().take(runs) {
        let t = Instant::now();
        rows += snapshot(&mut *conn, *s, before).await;
        took.push(t.elapsed());
    }
    took.sort();
    let mean = took.iter().sum::<Duration>() / runs as u32;
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    format!(
        "| {what} | {runs} | {:.1} | {:.0} | {:.0} | {:.0} |",
        rows as f64 / runs as f64,
        us(mean),
        us(took[runs / 2]),
        us(took[runs * 95 / 100]),
    )
}

/// Measures every scope's snapshot at scale with the statement and indexes of this change,
/// then with the statement and indexes from before it (the 0005 indexes dropped).
/// `SNAPSHOT_BENCH_FINISHED` sets the number of finished orders (default 200,000).
#[sqlx::test]
#[ignore = "a measurement: loads 200,000 orders and takes minutes"]
async fn snapshot_timings_before_and_after(
    pool_opts: sqlx::postgres::PgPoolOptions,
    connect_opts: sqlx::postgres::PgConnectOptions,
) {
    const CONCURRENCY: usize = 16;
    let db = pool_opts
        .max_connections(CONCURRENCY as u32)
        .connect_with(connect_opts)
        .await
        .unwrap();
    let p = Population {
        shops: 500,
        buyers: 50_000,
        drivers: 2_000,
        finished: std::env::var("SNAPSHOT_BENCH_FINISHED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000),
        waiting: 3_000,
        with_driver: 2_000,
    };
    let t = Instant::now();
    populate(&db, &p).await;
    println!(
        "population: {} finished and {} active orders of {} shops (shop 1 takes a tenth), \
         {} buyers, {} drivers; loaded in {:.1?}",
        p.finished,
        p.waiting + p.with_driver,
        p.shops,
        p.buyers,
        p.drivers,
        t.elapsed()
    );

    let shops: Vec<Scope> = (2..=p.shops)
        .map(|n| Scope::Shop(ShopId(shop(n))))
        .collect();
    let big_shop = [Scope::Shop(ShopId(shop(1)))];
    let active_buyers: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT buyer_id FROM orders WHERE status <> ALL($1) ORDER BY buyer_id",
    )
    .bind(finished_statuses())
    .fetch_all(&db)
    .await
    .unwrap();
    let buyers: Vec<Scope> = active_buyers
        .iter()
        .map(|b| Scope::Buyer(BuyerId(*b)))
        .collect();
    let drivers: Vec<Scope> = (1..=p.drivers)
        .map(|n| Scope::Driver(DriverId(driver(n))))
        .collect();
    // A restart: every socket re-subscribes at once. 1,000 vendor sockets (two per shop),
    // every driver, and 16,000 buyers of whom those with active orders come first.
    let mut storm: Vec<Scope> = Vec::new();
    storm.extend((1..=p.shops).flat_map(|n| [Scope::Shop(ShopId(shop(n))); 2]));
    storm.extend(drivers.iter().copied());
    let idle_buyers = (1..=p.buyers)
        .map(buyer)
        .filter(|b| !active_buyers.contains(b))
        .map(|b| Scope::Buyer(BuyerId(b)));
    storm.extend(buyers.iter().copied().chain(idle_buyers).take(16_000));

    for before in [false, true] {
        if before {
            sqlx::raw_sql(
                "DROP INDEX orders_shop_active_idx, orders_buyer_active_idx, orders_active_id_idx;
                 ANALYZE orders",
            )
            .execute(&db)
            .await
            .unwrap();
        }
        println!(
            "\n{}\n| snapshot | runs | rows | mean µs | p50 µs | p95 µs |\n|---|---|---|---|---|---|",
            if before {
                "before (one statement with IS NULL OR filters, 0001 indexes)"
            } else {
                "after (a statement per scope, 0005 indexes)"
            }
        );
        let mut conn = db.acquire().await.unwrap();
        for (what, scopes, runs) in [
            ("shop (499 shops in turn)", &shops[..], 2_000),
            ("big shop (a tenth of all orders)", &big_shop[..], 500),
            (
                "buyer (buyers with active orders in turn)",
                &buyers[..],
                2_000,
            ),
            ("driver (each holding one order)", &drivers[..], 2_000),
            ("fleet", &[Scope::All][..], 200),
        ] {
            println!(
                "{}",
                time_snapshots(&mut conn, what, scopes, runs, before).await
            );
        }
        println!(
            "\nserver ms: the median execution time of 21 EXPLAIN ANALYZE, first owner of each list\n\
             | snapshot | custom plan | server ms | generic plan | server ms |\n|---|---|---|---|---|"
        );
        for (what, scope) in [
            ("shop", shops[0]),
            ("big shop", big_shop[0]),
            ("buyer", buyers[0]),
            ("driver", drivers[0]),
            ("fleet", Scope::All),
        ] {
            let sql = if before {
                BEFORE_0005
            } else {
                orders::active_sql(scope)
            };
            let args = execute_args(scope, before);
            let mut row = format!("| {what} |");
            for mode in ["force_custom_plan", "force_generic_plan"] {
                let runs = explain(&mut conn, sql, &args, mode, "ANALYZE, FORMAT JSON", 21).await;
                let scans: Vec<String> = nodes(&runs[0]["Plan"])
                    .iter()
                    .filter_map(|n| {
                        let kind = n["Node Type"].as_str()?;
                        kind.contains("Scan")
                            .then(|| match n["Index Name"].as_str() {
                                Some(i) => format!("{kind} on {i}"),
                                None => kind.to_owned(),
                            })
                    })
                    .collect();
                let mut ms: Vec<f64> = runs
                    .iter()
                    .map(|r| r["Execution Time"].as_f64().unwrap())
                    .collect();
                ms.sort_by(f64::total_cmp);
                row += &format!(" {} | {:.3} |", scans.join(" + "), ms[ms.len() / 2]);
            }
            println!("{row}");
        }
        drop(conn);

        let t = Instant::now();
        let rows: usize = futures::stream::iter(storm.iter().copied())
            .map(|s| snapshot(&db, s, before))
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<usize>>()
            .await
            .into_iter()
            .sum();
        println!(
            "restart: {} snapshots ({rows} orders) over {CONCURRENCY} connections in {:.2?}",
            storm.len(),
            t.elapsed()
        );
    }
}
