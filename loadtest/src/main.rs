//! `loadtest`: a load and correctness harness for dispatch-hub. It talks to a running hub only
//! through the public REST API and socket protocol: setup over REST, one task per socket for
//! vendors, drivers and buyers, orders placed over REST at a fixed rate; it measures latencies
//! with hdrhistogram, checks the protocol's ordering guarantees, samples the hub's RSS and CPU,
//! and reports a table, JSON and a PNG plot.
//!
//! Run phases: setup → ramp-up (sockets open) → load (`--duration`) → drain → stop → check
//! (which placed orders are unfinished, asked of the hub) → report.
//!
//! A cluster is driven through several `--url`s ([`nodes`]); a run too big for one process is
//! split into shards ([`shard`]), whose reports `loadtest merge` combines ([`merge`]), or which
//! `--processes` starts and merges itself ([`spawn`]).

mod actors;
mod backoff;
mod cli;
mod drain;
mod merge;
mod metrics;
mod nodes;
mod plot;
mod proto;
mod report;
mod rest;
mod setup;
mod shard;
mod spawn;
mod sysinfo;
mod ws;

use std::collections::{BTreeMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use crate::actors::buyer::{Buyer, OrderGen};
use crate::actors::driver::{Driver, DriverParams};
use crate::actors::vendor::Vendor;
use crate::cli::{Args, Command};
use crate::metrics::{Metrics, Phase, Violation};
use crate::proto::Kind;
use crate::report::{
    ConfigEcho, Failovers, MessageFigures, OrderFigures, ProcFigures, Report, RetryFigures,
    SocketFigures, StrictInput,
};
use crate::rest::Rest;
use crate::setup::{Acct, Setup};
use crate::shard::{Line, OtpShare, Waited};
use crate::ws::{Net, Node, SocketSpec, run_socket};

/// Exit status when a correctness counter is not zero.
const EXIT_VIOLATION: u8 = 3;
/// Exit status when `--strict` liveness checks failed.
const EXIT_STRICT: u8 = 4;
/// File descriptors kept free for everything that is not a socket to the hub.
const FD_RESERVE: u64 = 64;
/// Longest extra wait, after the ramp-up, for the last sockets to connect.
const CONNECT_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for socket tasks to close after the stop signal.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// During the drain, when the sockets have heard of no order finishing for this long, the
/// orders they still hold are asked of the hub (they may have finished unheard).
const DRAIN_STALL: Duration = Duration::from_secs(1);
/// Longest wait, after this shard's setup, for the other shards to finish theirs.
const START_LINE_WAIT: Duration = Duration::from_secs(600);
/// Longest wait, past this shard's drain time, for the other shards to finish their drains
/// (they started together, so they normally end within a second of each other).
const END_LINE_GRACE: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Merge(m)) = &args.command {
        return merge::main(m);
    }
    let args = match args.finish() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shard_dir = args.shard_dir.clone().zip(args.shard);
    let outcome = match args.processes {
        Some(n) => rt.block_on(spawn::run(args, n)),
        None => rt.block_on(run(args)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some((dir, shard)) = shard_dir {
                shard::mark_failed(&dir, shard);
            }
            ExitCode::from(1)
        }
    }
}

/// Resolve `--url` and insist on a loopback address: this tool never sends traffic elsewhere.
async fn resolve_hub(url: &str) -> Result<(SocketAddr, String)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("--url must be an http:// URL");
    }
    let host = parsed.host_str().context("--url has no host")?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let host_port = if host.contains(':') {
        format!("[{}]:{port}", host.trim_matches(['[', ']']))
    } else {
        format!("{host}:{port}")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("--url must point at a loopback address (127.0.0.0/8 or ::1), got {addrs:?}");
    }
    let hub = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .unwrap_or(addrs[0]);
    let mut ws_url = parsed.clone();
    ws_url
        .set_scheme("ws")
        .map_err(|_| anyhow::anyhow!("cannot derive the ws:// URL"))?;
    let path = format!("{}/ws", parsed.path().trim_end_matches('/'));
    ws_url.set_path(&path);
    Ok((hub, ws_url.to_string()))
}

/// Sleep, but wake early on Ctrl-C. Returns false when interrupted.
async fn wait(d: Duration, interrupted: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = sleep(d) => !*interrupted.borrow(),
        _ = ws::stopped(interrupted) => false,
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    // ---- limits and addresses
    let nofile = sysinfo::raise_nofile_limit().context("raising RLIMIT_NOFILE")?;
    let sockets = args.shard_sockets() as u64;
    let needed = sockets + (args.setup_concurrency + args.max_inflight_orders) as u64 + FD_RESERVE;
    if needed > nofile {
        bail!(
            "{sockets} sockets plus REST connections need about {needed} file descriptors, \
             but this process may open only {nofile}; lower --sockets (or the actor counts), \
             --max-inflight-orders or --setup-concurrency"
        );
    }
    let mut nodes = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let (addr, ws_url) = resolve_hub(url).await?;
        nodes.push(Node { addr, ws_url });
    }
    let sources: Vec<IpAddr> = if nodes.iter().all(|n| n.addr.is_ipv4()) {
        (1..=args.source_ip_count())
            .map(|k| IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)))
            .collect()
    } else {
        Vec::new()
    };
    let net = Arc::new(Net {
        nodes,
        sources,
        connect_permits: Semaphore::new(args.connect_concurrency),
        max_reconnects: args.max_reconnects,
    });
    let metrics = Arc::new(Metrics::new());
    let pool = args.setup_concurrency.max(args.max_inflight_orders);
    let rest = Arc::new(Rest::new(&args.urls, pool, metrics.clone())?);
    rest.health().await?;
    let shard = args.shard_or_whole();
    let slices = args.slices();
    if let Some(dir) = &args.shard_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        shard::check_fresh(dir, shard)?;
    }
    let share = match &args.shard_dir {
        Some(dir) if !args.connections_only && shard.count > 1 => {
            Some(Arc::new(OtpShare::start(dir, shard, metrics.clone())?))
        }
        _ => None,
    };

    let (int_tx, mut interrupted) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = int_tx.send(true);
        }
    });

    // ---- setup
    let visible = !args.quiet && std::io::stdout().is_terminal();
    let pb = if visible {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{msg:20} [{bar:40}] {pos}/{len} ({elapsed})")
                .expect("static template")
                .progress_chars("=> "),
        )
    } else {
        ProgressBar::hidden()
    };
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let setup = Setup {
        rest: &rest,
        tag: if shard.count > 1 {
            format!("{run_tag}-{}of{}", shard.index, shard.count)
        } else {
            run_tag
        },
        concurrency: args.setup_concurrency,
        pb: pb.clone(),
    };
    let setup_started = Instant::now();
    let (shops, drivers, buyers) = if args.connections_only {
        (
            Vec::new(),
            Vec::new(),
            setup
                .buyers(args.admin_token.as_deref(), slices.buyers.clone())
                .await?,
        )
    } else {
        let admin = args.admin_token.as_deref().unwrap_or_default();
        let shops = setup
            .shops(
                admin,
                slices.shops.clone(),
                args.products_per_shop,
                args.bbox,
            )
            .await?;
        let drivers = setup.drivers(admin, slices.drivers.clone()).await?;
        let buyers = setup.buyers(Some(admin), slices.buyers.clone()).await?;
        (shops, drivers, buyers)
    };
    if !args.quiet {
        eprintln!(
            "setup: {} shops, {} drivers, {} buyers in {:.1}s",
            shops.len(),
            drivers.len(),
            buyers.len(),
            setup_started.elapsed().as_secs_f64()
        );
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .expect("static template"),
    );
    pb.reset_elapsed();
    if visible {
        pb.enable_steady_tick(Duration::from_millis(250));
    }
    if let Some(dir) = &args.shard_dir {
        pb.set_message("waiting for the other shards to finish their setup");
        let deadline = Instant::now() + START_LINE_WAIT;
        match shard::wait_at(dir, shard, Line::Start, deadline, &mut interrupted).await? {
            Waited::All => {}
            Waited::Missing(m) => {
                pb.finish_and_clear();
                bail!("shards {} did not finish their setup in time", m.join(", "));
            }
            Waited::Failed(other) => {
                pb.finish_and_clear();
                bail!("shard {other} failed; this one stops too");
            }
            Waited::Interrupted => {
                pb.finish_and_clear();
                bail!("interrupted while waiting for the other shards");
            }
        }
    }
    pb.set_message("opening sockets");

    // ---- sockets
    let hub_baseline = args
        .hub_pid
        .and_then(|p| sysinfo::read_proc(Some(p)).ok())
        .map(|r| r.rss_bytes);
    let (sampler_tx, sampler_rx) = watch::channel(false);
    let sampler = tokio::spawn(report::sample_loop(
        metrics.clone(),
        args.hub_pid,
        pb.clone(),
        sampler_rx,
    ));
    let total = shops.len() + drivers.len() + buyers.len();
    metrics.sockets_target.store(total as u64, Relaxed);
    metrics.set_phase(Phase::RampUp);
    let (stop_tx, stop_rx) = watch::channel(false);
    let ramp_start = Instant::now();
    let start_at = |i: usize| ramp_start + args.ramp_up.mul_f64(i as f64 / total.max(1) as f64);
    // Socket k of the whole run (shops, then drivers, then buyers, across the shards) uses
    // source address k mod m and starts on node k mod n.
    let (first_driver, first_buyer) = if args.connections_only {
        (0, 0)
    } else {
        (args.shops, args.shops + args.drivers)
    };
    let node_of = |k: usize| nodes::first_node(k, net.nodes.len());
    let mut tasks = JoinSet::new();
    let mut i = 0usize;
    for (j, s) in shops.iter().enumerate() {
        let k = slices.shops.start + j;
        let spec = SocketSpec {
            token: s.token.clone(),
            topic: format!("shop:{}", s.id),
            source: net.source(k),
            node: node_of(k),
        };
        let actor = Vendor::new(s.id, args.prep, metrics.clone());
        tasks.spawn(run_socket(
            net.clone(),
            metrics.clone(),
            spec,
            actor,
            start_at(i),
            stop_rx.clone(),
        ));
        i += 1;
    }
    let params = DriverParams {
        bbox: args.bbox,
        location_interval: args.location_interval,
        delay: args.driver_delay,
        decline_rate: args.decline_rate,
    };
    for (j, d) in drivers.iter().enumerate() {
        let k = first_driver + slices.drivers.start + j;
        let spec = SocketSpec {
            token: d.token.clone(),
            topic: format!("driver:{}", d.id),
            source: net.source(k),
            node: node_of(k),
        };
        let actor = Driver::new(d.id, params, metrics.clone());
        tasks.spawn(run_socket(
            net.clone(),
            metrics.clone(),
            spec,
            actor,
            start_at(i),
            stop_rx.clone(),
        ));
        i += 1;
    }
    for (j, b) in buyers.iter().enumerate() {
        let k = first_buyer + slices.buyers.start + j;
        let spec = SocketSpec {
            token: b.token.clone(),
            topic: format!("buyer:{}", b.id),
            source: net.source(k),
            node: node_of(k),
        };
        let actor = Buyer::new(b.id, metrics.clone());
        tasks.spawn(run_socket(
            net.clone(),
            metrics.clone(),
            spec,
            actor,
            start_at(i),
            stop_rx.clone(),
        ));
        i += 1;
    }
    let mut go_on = wait(args.ramp_up, &mut interrupted).await;
    let grace_end = Instant::now() + CONNECT_GRACE;
    while go_on && Instant::now() < grace_end {
        let settled =
            metrics.sockets_open.load(Relaxed).max(0) as u64 + metrics.gave_up.load(Relaxed);
        if settled >= total as u64 {
            break;
        }
        go_on = wait(Duration::from_millis(100), &mut interrupted).await;
    }

    // ---- load
    metrics.set_phase(Phase::Load);
    let load_started = Instant::now();
    let placed_before = metrics.orders_placed.load(Relaxed);
    let generator = (!args.connections_only && go_on).then(|| {
        let g = OrderGen {
            rest: rest.clone(),
            metrics: metrics.clone(),
            shops: Arc::new(shops.clone()),
            buyers: Arc::new(buyers.clone()),
            bbox: args.bbox,
            radius_km: args.delivery_radius_km,
            max_inflight: args.max_inflight_orders,
            share: share.clone(),
        };
        tokio::spawn(g.run(args.shard_rate(), args.duration, stop_rx.clone()))
    });
    if go_on {
        go_on = wait(args.duration, &mut interrupted).await;
    }
    let load_secs = load_started.elapsed().as_secs_f64().max(1e-3);
    let held_at_end = metrics.sockets_open.load(Relaxed);

    // ---- drain: let orders in flight finish
    metrics.set_phase(Phase::Drain);
    let drain_end = Instant::now() + args.drain;
    if let Some(g) = generator {
        let _ = tokio::time::timeout(args.drain, g).await;
    }
    let token_of = |id: uuid::Uuid| {
        let b = metrics.placed_by(id)? as usize;
        buyers.get(b).map(|a: &Acct| (id, a.token.clone()))
    };
    // Orders the hub already said are final although no socket saw it.
    let mut hub_final: HashSet<uuid::Uuid> = HashSet::new();
    let (mut open_before, mut progress_at) = (usize::MAX, Instant::now());
    while go_on && !args.connections_only && Instant::now() < drain_end {
        let open: Vec<uuid::Uuid> = metrics
            .unfinished_on_sockets()
            .into_iter()
            .filter(|id| !hub_final.contains(id))
            .collect();
        if open.is_empty() {
            break;
        }
        if open.len() < open_before {
            (open_before, progress_at) = (open.len(), Instant::now());
        } else if progress_at.elapsed() >= DRAIN_STALL {
            let asked = open.iter().filter_map(|id| token_of(*id)).collect();
            let answers = drain::ask_hub(&rest, asked, args.setup_concurrency, drain_end).await;
            hub_final.extend(
                answers
                    .into_iter()
                    .filter(|(_, a)| a.as_ref().is_some_and(|o| o.status.is_final()))
                    .map(|(id, _)| id),
            );
            (open_before, progress_at) = (usize::MAX, Instant::now());
            continue;
        }
        go_on = wait(Duration::from_millis(100), &mut interrupted).await;
    }

    // ---- the other shards' drains: this shard's drivers may be carrying their orders
    if let Some(dir) = &args.shard_dir {
        pb.set_message("waiting for the other shards to drain");
        let deadline = drain_end.max(Instant::now()) + END_LINE_GRACE;
        match shard::wait_at(dir, shard, Line::End, deadline, &mut interrupted).await? {
            Waited::Missing(m) => pb.println(format!(
                "warning: shards {} did not finish their drain in time",
                m.join(", ")
            )),
            Waited::Failed(other) => pb.println(format!("warning: shard {other} failed")),
            Waited::All | Waited::Interrupted => {}
        }
    }

    // ---- stop
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    if let Some(s) = &share {
        s.stop();
    }
    metrics.set_phase(Phase::Done);
    let _ = sampler_tx.send(true);
    let timeline = sampler.await.unwrap_or_default();

    // ---- check: the hub, not the sockets, says which placed orders are unfinished
    let verdict = if args.connections_only {
        drain::Verdict::default()
    } else {
        pb.set_message("asking the hub about every placed order");
        let placed = metrics.placed_orders();
        let asked = placed
            .iter()
            .filter_map(|(id, b, _)| {
                buyers
                    .get(*b as usize)
                    .map(|a: &Acct| (*id, a.token.clone()))
            })
            .collect();
        let deadline = Instant::now() + drain::CHECK_BUDGET;
        let ask = drain::ask_hub(&rest, asked, args.setup_concurrency, deadline);
        let answers = tokio::select! {
            a = ask => a,
            _ = ws::stopped(&mut interrupted) => drain::Answers::new(),
        };
        let seen: Vec<_> = placed.iter().map(|(id, _, s)| (*id, *s)).collect();
        let v = drain::judge(&seen, &answers);
        for e in &v.hub_behind_sockets {
            metrics.violation(Violation::HubBehindSockets, || e.clone());
        }
        v
    };
    pb.finish_and_clear();

    // ---- report
    let placed = metrics.orders_placed.load(Relaxed) - placed_before;
    let connects = metrics.connects_ok.load(Relaxed);
    let reconnects = metrics.reconnects.load(Relaxed);
    let first = metrics.first_connect_start_us.load(Relaxed);
    let last = metrics.last_connect_done_us.load(Relaxed);
    let window = if last > first && first != u64::MAX {
        (last - first) as f64 / 1e6
    } else {
        0.0
    };
    let load_samples: Vec<_> = timeline.iter().filter(|s| s.phase == Phase::Load).collect();
    let mean = |f: fn(&report::Sample) -> f64| {
        if load_samples.is_empty() {
            0.0
        } else {
            load_samples.iter().map(|s| f(s)).sum::<f64>() / load_samples.len() as f64
        }
    };
    let correctness: BTreeMap<String, u64> = metrics
        .violations()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    let correct = correctness.values().all(|n| *n == 0);
    let events: BTreeMap<String, u64> = metrics
        .shop_event_counts()
        .into_iter()
        .map(|(k, n)| (k.to_string(), n))
        .collect();
    let unfinished = verdict.unfinished;
    let gave_up = metrics.gave_up.load(Relaxed);
    let strict_failures = if args.strict {
        report::strict_failures(StrictInput {
            connections_only: args.connections_only,
            rate: args.shard_rate(),
            gave_up,
            held_at_end,
            target: total as u64,
            placed,
            delivered: events.get(Kind::Delivered.as_str()).copied().unwrap_or(0),
            unfinished,
            unverified: verdict.unverified,
        })
    } else {
        Vec::new()
    };
    let hists = report::histograms(&metrics);
    let rep = Report {
        config: ConfigEcho::from_args(&args, shops.len(), drivers.len(), buyers.len()),
        sockets: SocketFigures {
            target: total as u64,
            peak_held: metrics.sockets_peak.load(Relaxed),
            held_at_end_of_load: held_at_end,
            connects_ok: connects,
            reconnects,
            gave_up,
            connect_window_s: window,
            connects_per_s: if window > 0.0 {
                (connects - reconnects) as f64 / window
            } else {
                0.0
            },
            connect_latency: metrics::HistSummary::of(&metrics.connect.snapshot()),
        },
        failovers: Failovers {
            socket_failovers: metrics.socket_failovers.load(Relaxed),
            rest_failovers: metrics.rest_failovers.load(Relaxed),
        },
        messages: MessageFigures {
            received: metrics.msgs_in.load(Relaxed),
            sent: metrics.msgs_out.load(Relaxed),
            received_per_s_load: mean(|s| s.msgs_in_per_s),
            sent_per_s_load: mean(|s| s.msgs_out_per_s),
        },
        orders: OrderFigures {
            placed,
            replayed: metrics.orders_replayed.load(Relaxed),
            failed: metrics.orders_failed.load(Relaxed),
            skipped: metrics.orders_skipped.load(Relaxed),
            placed_per_s: placed as f64 / load_secs,
            unfinished_after_drain: unfinished,
            after_drain: verdict,
            events,
        },
        retries: RetryFigures::new(metrics.retries(), metrics.retries_exhausted()),
        latency: report::latencies(&hists),
        hub: args.hub_pid.map(|_| {
            ProcFigures::from_samples(&timeline, hub_baseline, held_at_end, |s| {
                (s.hub_rss_mib, s.hub_cpu_pct)
            })
        }),
        harness: ProcFigures::from_samples(&timeline, None, held_at_end, |s| {
            (s.harness_rss_mib, s.harness_cpu_pct)
        }),
        errors: metrics.errors(),
        correctness,
        violation_examples: metrics.violation_examples(),
        correct,
        strict_failures,
        timeline,
        histograms: hists
            .iter()
            .map(|(k, h)| (k.clone(), metrics::encode_histogram(h)))
            .collect(),
    };
    let mut stdout = std::io::stdout().lock();
    rep.print(&mut stdout).context("writing the report")?;
    drop(stdout);
    for path in [&args.json, &args.plot].into_iter().flatten() {
        create_parent(path)?;
    }
    if let Some(path) = &args.json {
        write_json(path, &rep)?;
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &rep.timeline, args.connections_only)?;
    }
    Ok(exit_status(&rep))
}

/// Create the folder `path` goes into, if it has one.
fn create_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Write `rep` as JSON to `path`.
fn write_json(path: &Path, rep: &Report) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(f);
    serde_json::to_writer_pretty(&mut w, rep)
        .with_context(|| format!("writing {}", path.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))
}

/// The exit status a report calls for (saying why on stderr): correctness first, then
/// `--strict`.
fn exit_status(rep: &Report) -> ExitCode {
    if !rep.correct {
        let which: Vec<&str> = Violation::ALL
            .iter()
            .map(|v| v.as_str())
            .filter(|k| rep.correctness.get(*k).is_some_and(|n| *n > 0))
            .collect();
        eprintln!("correctness violated: {}", which.join(", "));
        return ExitCode::from(EXIT_VIOLATION);
    }
    if !rep.strict_failures.is_empty() {
        eprintln!("strict checks failed: {}", rep.strict_failures.join("; "));
        return ExitCode::from(EXIT_STRICT);
    }
    ExitCode::SUCCESS
}
