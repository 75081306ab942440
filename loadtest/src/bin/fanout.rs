//! Fan-out benchmark: a city control room. `--watchers` admin sockets follow `fleet` while
//! `--drivers` drivers each send a location every second; every driver state the hub pushes to
//! `fleet` goes to every watcher. Each watcher measures every update's age on arrival (arrival
//! time minus the `at` the hub stamped when it published it; hub and harness share the
//! machine's clock) and counts them; the hub's CPU and memory are read from /proc.
//!
//! ```sh
//! target/release/fanout --url http://127.0.0.1:8080 --admin-token … --drivers 1000 \
//!     --watchers 200 --duration 30 --hub-pid $HUB_PID
//! ```
//!
//! Talks to the hub only through its public API, and only to loopback addresses.

#[path = "../sysinfo.rs"]
#[allow(dead_code)]
mod sysinfo;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    about = "Fleet fan-out benchmark against a running hub"
)]
struct Args {
    /// The hub's base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The hub's admin token.
    #[arg(long, env = "HUB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// Drivers sending a location every second.
    #[arg(long, default_value_t = 1000)]
    drivers: usize,
    /// Admin sockets subscribed to `fleet`.
    #[arg(long, default_value_t = 200)]
    watchers: usize,
    /// Seconds measured (after a warm-up of 5 s).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// The hub's process id, for its CPU and memory.
    #[arg(long)]
    hub_pid: Option<u32>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let host = args
        .url
        .strip_prefix("http://")
        .context("--url must be http://…")?
        .trim_end_matches('/')
        .to_owned();
    if !(host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")) {
        bail!("fanout only talks to loopback addresses");
    }
    raise_nofile();
    let http = reqwest::Client::new();
    let ws_url = format!("ws://{host}/ws");
    let tag: u32 = rand::thread_rng().r#gen();

    eprintln!("creating and logging in {} drivers…", args.drivers);
    let tokens = create_drivers(&http, &args, tag).await?;

    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));

    eprintln!("opening {} watchers on fleet…", args.watchers);
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut ws = connect(&ws_url, &args.admin_token).await?;
        send(
            &mut ws,
            json!({"type": "subscribe", "topic": "fleet", "ref": "f"}),
        )
        .await?;
        let (measuring, stop, received) = (measuring.clone(), stop.clone(), received.clone());
        watchers.push(tokio::spawn(async move {
            let mut ages = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
            while !stop.load(Ordering::Relaxed) {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(500), ws.next()).await
                else {
                    continue;
                };
                let Message::Text(t) = m else { continue };
                if !measuring.load(Ordering::Relaxed) || !t.contains(r#""type":"driver""#) {
                    continue;
                }
                // The harness shares the machine with the hub: read only the `at` stamp rather
                // than parsing 200,000 messages a second as JSON.
                let now = chrono_now_us();
                if let Some(at) = stamp(&t).and_then(parse_rfc3339_us) {
                    let age = now.saturating_sub(at).max(1);
                    if let Some(h) = ages.as_mut() {
                        let _ = h.record(age);
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
            }
            ages
        }));
    }

    eprintln!("drivers start moving…");
    let mut drivers = Vec::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let mut ws = connect(&ws_url, &token).await?;
        let stop = stop.clone();
        drivers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::SmallRng::from_entropy();
            let (mut lat, mut lng) = (
                52.45 + rng.gen_range(0.0..0.1),
                13.30 + rng.gen_range(0.0..0.2),
            );
            // Spread the drivers' ticks over the second.
            tokio::time::sleep(Duration::from_millis((i % 1000) as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                lat += rng.gen_range(-0.0005..0.0005);
                lng += rng.gen_range(-0.0005..0.0005);
                let msg = json!({"type": "location", "lat": lat, "lng": lng});
                if ws
                    .send(Message::Text(msg.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
                // Drain what the hub sends drivers (pings, nothing else here).
                while let Ok(Some(_)) =
                    tokio::time::timeout(Duration::from_millis(1), ws.next()).await
                {
                }
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = args.hub_pid.and_then(|p| sysinfo::read_proc(Some(p)).ok());
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let after = args.hub_pid.and_then(|p| sysinfo::read_proc(Some(p)).ok());
    let delivered = received.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);

    let mut ages = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for w in watchers {
        if let Ok(Some(h)) = w.await {
            ages.add(&h)?;
        }
    }
    for d in drivers {
        let _ = d.await;
    }
    let ms = |q: f64| ages.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "fan-out: {} drivers × 1 location/s, {} watchers on fleet, {:.0} s measured",
        args.drivers, args.watchers, elapsed
    );
    println!(
        "delivered: {delivered} driver updates = {:.0} messages/s (ideal {} /s)",
        delivered as f64 / elapsed,
        args.drivers * args.watchers
    );
    println!(
        "age on arrival: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ages.max() as f64 / 1000.0
    );
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = (a.cpu_ticks - b.cpu_ticks) as f64
            / sysinfo::clock_ticks_per_sec()
            / a.at.duration_since(b.at).as_secs_f64()
            * 100.0;
        println!(
            "hub: CPU {cpu:.0} % of one core, RSS {} MiB",
            a.rss_bytes / (1024 * 1024)
        );
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .context("socket connect")?;
    send(&mut ws, json!({"type": "auth", "token": token})).await?;
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) -> Result<()> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .context("socket send")
}

/// Creates the drivers through the admin API and logs each in (retrying `busy` and 429 as
/// their `Retry-After` says); returns their tokens.
async fn create_drivers(http: &reqwest::Client, args: &Args, tag: u32) -> Result<Vec<String>> {
    let url = args.url.trim_end_matches('/').to_owned();
    let results = futures::stream::iter(0..args.drivers)
        .map(|i| {
            let (http, url, admin) = (http.clone(), url.clone(), args.admin_token.clone());
            async move {
                let body = json!({"name": format!("Fanout {tag}-{i}"),
                                  "phone": format!("+49 170 {:04}{:05}", tag % 10_000, i)});
                let created = post(
                    &http,
                    &format!("{url}/api/admin/drivers"),
                    Some(&admin),
                    &body,
                )
                .await?;
                let login = json!({"role": "driver", "account_id": created["driver"]["id"],
                                   "code": created["login_code"]});
                let t = post(&http, &format!("{url}/api/auth/login"), None, &login).await?;
                t["token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("login answered no token")
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Result<String>>>()
        .await;
    results.into_iter().collect()
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Value> {
    for _ in 0..20 {
        let mut req = http.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        if status == 429 || status == 503 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1u64);
            tokio::time::sleep(Duration::from_secs(wait.min(10))).await;
            continue;
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            bail!("{url} answered {status}: {v}");
        }
        return Ok(v);
    }
    bail!("{url}: gave up after 20 retries")
}

/// The `"at":"…"` stamp of a `driver` message (the driver state's only `at` field).
fn stamp(text: &str) -> Option<&str> {
    let start = text.find(r#""at":""#)? + 6;
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Microseconds since the Unix epoch, now.
fn chrono_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `2026-12-02T01:14:05.241372395Z` → microseconds since the Unix epoch (UTC only).
fn parse_rfc3339_us(s: &str) -> Option<u64> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let micros: i64 = format!("{:0<6}", &frac[..frac.len().min(6)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_hubs_timestamps() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(
            parse_rfc3339_us("2026-12-02T01:14:05.241372395Z"),
            Some(1_796_174_045_241_372)
        );
        assert_eq!(parse_rfc3339_us("garbage"), None);
        let msg =
            r#"{"type":"driver","topic":"fleet","driver":{"at":"1970-01-01T00:00:02Z","id":"x"}}"#;
        assert_eq!(stamp(msg).and_then(parse_rfc3339_us), Some(2_000_000));
    }
}
