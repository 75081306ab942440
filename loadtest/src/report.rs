//! Per-second sampling (timeline + live progress line), and the final report: a table on
//! stdout and, with `--json`, every figure as JSON.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cli::{Args, BBox};
use crate::drain::Verdict;
use crate::metrics::{HistSummary, Metrics, Phase};
use crate::proto::Kind;
use crate::sysinfo::{ProcReading, clock_ticks_per_sec, cpu_percent, read_proc};
use crate::ws::stopped;

const MIB: f64 = 1024.0 * 1024.0;

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the sockets started opening.
    pub t_s: f64,
    pub phase: Phase,
    pub sockets_open: i64,
    pub connects_per_s: f64,
    pub msgs_in_per_s: f64,
    pub msgs_out_per_s: f64,
    pub orders_per_s: f64,
    pub dispatch_count: u64,
    pub dispatch_p50_ms: Option<f64>,
    pub dispatch_p99_ms: Option<f64>,
    pub placed_to_vendor_p99_ms: Option<f64>,
    pub hub_rss_mib: Option<f64>,
    pub hub_cpu_pct: Option<f64>,
    pub harness_rss_mib: Option<f64>,
    pub harness_cpu_pct: Option<f64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}{unit}"))
}

/// Sample every second until `stop`; drives the progress line. Returns the timeline.
pub async fn sample_loop(
    metrics: Arc<Metrics>,
    hub_pid: Option<u32>,
    pb: ProgressBar,
    mut stop: watch::Receiver<bool>,
) -> Vec<Sample> {
    let t0 = Instant::now();
    let tps = clock_ticks_per_sec();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let counters = |m: &Metrics| {
        [
            m.connects_ok.load(Relaxed),
            m.msgs_in.load(Relaxed),
            m.msgs_out.load(Relaxed),
            m.orders_placed.load(Relaxed),
        ]
    };
    let mut last = counters(&metrics);
    let mut last_at = Instant::now();
    let mut hub_prev: Option<ProcReading> = hub_pid.and_then(|p| read_proc(Some(p)).ok());
    let mut own_prev: Option<ProcReading> = read_proc(None).ok();
    let mut samples = Vec::new();
    // bounded: one sample per second, and the run itself is bounded in time
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => break,
        }
        let now = Instant::now();
        let secs = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;
        let cur = counters(&metrics);
        let rate = |i: usize| (cur[i] - last[i]) as f64 / secs;
        let d = metrics.win_dispatch.take();
        let p = metrics.win_placed_to_vendor.take();
        let q = |h: &hdrhistogram::Histogram<u64>, x: f64| {
            (!h.is_empty()).then(|| ms(h.value_at_quantile(x)))
        };
        let hub_now = hub_pid.and_then(|pid| read_proc(Some(pid)).ok());
        let own_now = read_proc(None).ok();
        let cpu = |prev: &Option<ProcReading>, now: &Option<ProcReading>| match (prev, now) {
            (Some(a), Some(b)) => cpu_percent(a, b, tps),
            _ => None,
        };
        let s = Sample {
            t_s: now.duration_since(t0).as_secs_f64(),
            phase: metrics.phase(),
            sockets_open: metrics.sockets_open.load(Relaxed),
            connects_per_s: rate(0),
            msgs_in_per_s: rate(1),
            msgs_out_per_s: rate(2),
            orders_per_s: rate(3),
            dispatch_count: d.len(),
            dispatch_p50_ms: q(&d, 0.5),
            dispatch_p99_ms: q(&d, 0.99),
            placed_to_vendor_p99_ms: q(&p, 0.99),
            hub_rss_mib: hub_now.map(|r| r.rss_bytes as f64 / MIB),
            hub_cpu_pct: cpu(&hub_prev, &hub_now),
            harness_rss_mib: own_now.map(|r| r.rss_bytes as f64 / MIB),
            harness_cpu_pct: cpu(&own_prev, &own_now),
        };
        pb.set_message(format!(
            "{} | sockets {}/{} | orders/s {:.0} | msgs/s {:.0} | dispatch p99 {} | hub {} {}",
            s.phase.as_str(),
            s.sockets_open,
            metrics.sockets_target.load(Relaxed),
            s.orders_per_s,
            s.msgs_in_per_s,
            fmt_opt(s.dispatch_p99_ms, "ms"),
            fmt_opt(s.hub_rss_mib, "MiB"),
            fmt_opt(s.hub_cpu_pct, "%"),
        ));
        samples.push(s);
        last = cur;
        if hub_now.is_some() {
            hub_prev = hub_now;
        }
        if own_now.is_some() {
            own_prev = own_now;
        }
    }
    samples
}

/// The flags of the run, echoed into the report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// The first `--url`.
    pub url: String,
    /// Every `--url`, in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// `i/n` when this process ran one shard of a run (`--shard`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The number of shard reports this one was merged from (`loadtest merge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_shards: Option<usize>,
    #[serde(default)]
    pub strict: bool,
    pub connections_only: bool,
    pub shops: usize,
    pub drivers: usize,
    pub buyers: usize,
    pub sockets: usize,
    pub rate: f64,
    pub duration_s: f64,
    pub ramp_up_s: f64,
    pub drain_s: f64,
    pub bbox: BBox,
    pub location_interval_s: f64,
    pub prep_s: f64,
    pub driver_delay_s: f64,
    pub decline_rate: f64,
    pub source_ips: u8,
}

impl ConfigEcho {
    /// The flags, with this process's accounts and sockets (its shard's, when sharded) and
    /// order rate.
    pub fn from_args(a: &Args, shops: usize, drivers: usize, buyers: usize) -> Self {
        ConfigEcho {
            url: a.urls.first().cloned().unwrap_or_default(),
            urls: a.urls.clone(),
            shard: a.shard.map(|s| s.label()),
            merged_shards: None,
            strict: a.strict,
            connections_only: a.connections_only,
            shops,
            drivers,
            buyers,
            sockets: a.shard_sockets(),
            rate: a.shard_rate(),
            duration_s: a.duration.as_secs_f64(),
            ramp_up_s: a.ramp_up.as_secs_f64(),
            drain_s: a.drain.as_secs_f64(),
            bbox: a.bbox,
            location_interval_s: a.location_interval.as_secs_f64(),
            prep_s: a.prep.as_secs_f64(),
            driver_delay_s: a.driver_delay.as_secs_f64(),
            decline_rate: a.decline_rate,
            source_ips: a.source_ip_count(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SocketFigures {
    pub target: u64,
    pub peak_held: i64,
    pub held_at_end_of_load: i64,
    pub connects_ok: u64,
    pub reconnects: u64,
    pub gave_up: u64,
    /// From the first connect attempt to the last socket's first successful connect.
    pub connect_window_s: f64,
    pub connects_per_s: f64,
    pub connect_latency: HistSummary,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageFigures {
    pub received: u64,
    pub sent: u64,
    pub received_per_s_load: f64,
    pub sent_per_s_load: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OrderFigures {
    pub placed: u64,
    pub replayed: u64,
    pub failed: u64,
    pub skipped: u64,
    pub placed_per_s: f64,
    /// Placed orders the hub says are still active after the drain (`after_drain.unfinished`).
    pub unfinished_after_drain: usize,
    /// What the sockets saw of the placed orders beside what the hub says.
    pub after_drain: Verdict,
    /// Events seen on the shop topics (every event of every order once).
    pub events: BTreeMap<String, u64>,
}

/// Calls retried after the hub said "try again", by the error they answered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RetryFigures {
    pub total: u64,
    /// Retries by cause: `http:<status>:<code>`, `http:<transport>`, `ws:<code>`.
    pub by_cause: BTreeMap<String, u64>,
    /// Retriable failures that stood: no retry left, or `Retry-After` longer than the harness
    /// waits.
    pub given_up: BTreeMap<String, u64>,
}

impl RetryFigures {
    pub fn new(by_cause: BTreeMap<String, u64>, given_up: BTreeMap<String, u64>) -> Self {
        RetryFigures {
            total: by_cause.values().sum(),
            by_cause,
            given_up,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProcFigures {
    pub baseline_rss_mib: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub rss_under_load_mib: Option<f64>,
    pub rss_per_socket_kib: Option<f64>,
    pub rss_delta_per_socket_kib: Option<f64>,
    pub cpu_avg_load_pct: Option<f64>,
    pub cpu_peak_pct: Option<f64>,
}

impl ProcFigures {
    /// Figures of one process from the timeline; `pick` selects its (rss, cpu) columns.
    pub fn from_samples(
        samples: &[Sample],
        baseline: Option<u64>,
        sockets: i64,
        pick: impl Fn(&Sample) -> (Option<f64>, Option<f64>),
    ) -> Self {
        let load: Vec<&Sample> = samples.iter().filter(|s| s.phase == Phase::Load).collect();
        let peak = samples.iter().filter_map(|s| pick(s).0).fold(None, max_opt);
        let under_load = load.iter().rev().find_map(|s| pick(s).0);
        let cpu_load: Vec<f64> = load.iter().filter_map(|s| pick(s).1).collect();
        let cpu_avg =
            (!cpu_load.is_empty()).then(|| cpu_load.iter().sum::<f64>() / cpu_load.len() as f64);
        let cpu_peak = samples.iter().filter_map(|s| pick(s).1).fold(None, max_opt);
        let baseline_mib = baseline.map(|b| b as f64 / MIB);
        let per_socket = |v: f64| (sockets > 0).then(|| v * 1024.0 / sockets as f64);
        ProcFigures {
            baseline_rss_mib: baseline_mib,
            peak_rss_mib: peak,
            rss_under_load_mib: under_load,
            rss_per_socket_kib: under_load.and_then(per_socket),
            rss_delta_per_socket_kib: under_load
                .zip(baseline_mib)
                .and_then(|(l, b)| per_socket(l - b)),
            cpu_avg_load_pct: cpu_avg,
            cpu_peak_pct: cpu_peak,
        }
    }
}

fn max_opt(acc: Option<f64>, v: f64) -> Option<f64> {
    Some(acc.map_or(v, |a| a.max(v)))
}

/// Attempts sent to the next node because a node was gone (see [`crate::nodes`]). Not
/// failures: a cluster losing a node is what they are about.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failovers {
    /// Socket reconnects that went to the next node.
    pub socket_failovers: u64,
    /// REST requests sent once more to the next node.
    pub rest_failovers: u64,
}

/// Everything the run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub config: ConfigEcho,
    pub sockets: SocketFigures,
    #[serde(default)]
    pub failovers: Failovers,
    pub messages: MessageFigures,
    pub orders: OrderFigures,
    pub retries: RetryFigures,
    /// Latency histograms (µs): placed_to_vendor, dispatch (mark_ready sent → driver has
    /// `assigned`), redispatch (decline sent → next `assigned`), `<kind>_to_buyer`, connect,
    /// order_post.
    pub latency: BTreeMap<String, HistSummary>,
    pub hub: Option<ProcFigures>,
    pub harness: ProcFigures,
    pub errors: BTreeMap<String, u64>,
    pub correctness: BTreeMap<String, u64>,
    pub violation_examples: Vec<String>,
    pub correct: bool,
    /// Reasons `--strict` failed (empty when it passed or was not asked for).
    pub strict_failures: Vec<String>,
    pub timeline: Vec<Sample>,
    /// The latency histograms themselves, under the keys of `latency`, each as
    /// [`metrics::encode_histogram`](crate::metrics::encode_histogram) writes it, so that
    /// `loadtest merge` computes true percentiles over several shards.
    #[serde(default)]
    pub histograms: BTreeMap<String, String>,
}

/// The latency histograms of a run, under their report keys.
pub fn histograms(m: &Metrics) -> BTreeMap<String, Histogram<u64>> {
    let mut l = BTreeMap::new();
    l.insert("placed_to_vendor".into(), m.placed_to_vendor.snapshot());
    l.insert("dispatch".into(), m.dispatch.snapshot());
    l.insert("redispatch".into(), m.redispatch.snapshot());
    for (kind, h) in &m.to_buyer {
        l.insert(format!("{}_to_buyer", kind.as_str()), h.snapshot());
    }
    l.insert("connect".into(), m.connect.snapshot());
    l.insert("order_post".into(), m.order_post.snapshot());
    l
}

/// The summaries of `hists`, for the report's `latency`.
pub fn latencies(hists: &BTreeMap<String, Histogram<u64>>) -> BTreeMap<String, HistSummary> {
    hists
        .iter()
        .map(|(k, h)| (k.clone(), HistSummary::of(h)))
        .collect()
}

/// The figures `--strict` looks at, from one run or the sum of a run's shards.
#[derive(Debug, Clone, Copy)]
pub struct StrictInput {
    pub connections_only: bool,
    pub rate: f64,
    pub gave_up: u64,
    pub held_at_end: i64,
    pub target: u64,
    pub placed: u64,
    pub delivered: u64,
    pub unfinished: usize,
    pub unverified: usize,
}

/// Why `--strict` fails the run (empty: it passes).
pub fn strict_failures(s: StrictInput) -> Vec<String> {
    let mut failures = Vec::new();
    if s.gave_up > 0 {
        failures.push(format!("{} sockets gave up reconnecting", s.gave_up));
    }
    if (s.held_at_end.max(0) as u64) < s.target {
        failures.push(format!(
            "only {} of {} sockets were held at the end of the load",
            s.held_at_end, s.target
        ));
    }
    if !s.connections_only && s.rate > 0.0 {
        if s.placed == 0 {
            failures.push("no order was placed".into());
        } else if s.delivered == 0 {
            failures.push("no order was delivered".into());
        }
        if s.unfinished > 0 {
            failures.push(format!(
                "{} placed orders did not reach a final status (the hub's answer)",
                s.unfinished
            ));
        }
        if s.unverified > 0 {
            failures.push(format!(
                "the hub could not be asked about {} placed orders",
                s.unverified
            ));
        }
    }
    failures
}

/// Labels of the latency rows, in table order.
fn latency_rows() -> Vec<(String, &'static str)> {
    let mut rows = vec![
        (
            "placed_to_vendor".to_string(),
            "order placed -> vendor has `created`",
        ),
        (
            "dispatch".to_string(),
            "mark_ready sent -> driver has `assigned`",
        ),
        ("redispatch".to_string(), "decline sent -> next `assigned`"),
    ];
    let label = |k: Kind| match k {
        Kind::Created => "order placed -> buyer has `created`",
        Kind::Accepted => "accept sent -> buyer has it",
        Kind::Ready => "mark_ready sent -> buyer has it",
        Kind::PickedUp => "pick_up sent -> buyer has it",
        Kind::Delivered => "deliver sent -> buyer has it",
        Kind::Declined => "decline sent -> buyer has it",
        _ => "other",
    };
    for k in crate::metrics::BUYER_KINDS {
        rows.push((format!("{}_to_buyer", k.as_str()), label(k)));
    }
    rows.push(("connect".into(), "socket connect+auth+subscribe"));
    rows.push(("order_post".into(), "POST /api/orders round trip"));
    rows
}

impl Report {
    /// The final table.
    pub fn print(&self, w: &mut impl Write) -> std::io::Result<()> {
        let c = &self.config;
        writeln!(w, "\n=== dispatch-hub load test ===")?;
        if c.connections_only {
            writeln!(
                w,
                "mode: connections-only, {} sockets, hold {:.0}s, ramp-up {:.0}s, {} source IPs",
                c.sockets, c.duration_s, c.ramp_up_s, c.source_ips
            )?;
        } else {
            writeln!(
                w,
                "mode: lifecycle, {} shops, {} drivers, {} buyers, {} orders/s for {:.0}s (ramp-up {:.0}s, {} source IPs)",
                c.shops, c.drivers, c.buyers, c.rate, c.duration_s, c.ramp_up_s, c.source_ips
            )?;
        }
        if c.urls.len() > 1 {
            writeln!(
                w,
                "nodes: {} (socket k on node k mod {}, REST round-robin)",
                c.urls.join(", "),
                c.urls.len()
            )?;
        }
        if let Some(shard) = &c.shard {
            writeln!(
                w,
                "shard {shard}: the figures are this process's slice only"
            )?;
        }
        if let Some(n) = c.merged_shards {
            writeln!(
                w,
                "merged from {n} shard reports: counts summed, latencies from the merged histograms"
            )?;
        }
        let s = &self.sockets;
        writeln!(
            w,
            "\nsockets: target {}, peak held {}, held at end of load {}, connects {} ({:.0}/s over {:.1}s), reconnects {}, gave up {}",
            s.target,
            s.peak_held,
            s.held_at_end_of_load,
            s.connects_ok,
            s.connects_per_s,
            s.connect_window_s,
            s.reconnects,
            s.gave_up
        )?;
        let f = &self.failovers;
        if c.urls.len() > 1 || f.socket_failovers + f.rest_failovers > 0 {
            writeln!(
                w,
                "failovers to the next node: socket reconnects {}, REST requests {}",
                f.socket_failovers, f.rest_failovers
            )?;
        }
        let m = &self.messages;
        writeln!(
            w,
            "messages: received {} ({:.0}/s under load), sent {} ({:.0}/s under load)",
            m.received, m.received_per_s_load, m.sent, m.sent_per_s_load
        )?;
        if !c.connections_only {
            let o = &self.orders;
            writeln!(
                w,
                "orders: placed {} ({:.1}/s), idempotent replays {}, failed {}, skipped {}",
                o.placed, o.placed_per_s, o.replayed, o.failed, o.skipped
            )?;
            let d = &o.after_drain;
            let by_status: Vec<String> = d
                .unfinished_by_status
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(
                w,
                "after the drain: unfinished {}{} per the hub (asked {}, answered {}, no answer {}); \
                 the sockets saw {} unfinished, {} of them finished unseen",
                o.unfinished_after_drain,
                if by_status.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by_status.join(", "))
                },
                d.asked,
                d.answered,
                d.unverified,
                d.unfinished_on_sockets,
                d.finished_unseen
            )?;
            let ev: Vec<String> = o
                .events
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(
                w,
                "events (shop topics): {}",
                if ev.is_empty() {
                    "-".into()
                } else {
                    ev.join(", ")
                }
            )?;
        }
        writeln!(
            w,
            "\n{:<42} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for (key, label) in latency_rows() {
            let Some(h) = self.latency.get(&key) else {
                continue;
            };
            if h.count == 0 {
                if !c.connections_only || key == "connect" {
                    writeln!(w, "{label:<42} {:>8}", 0)?;
                }
                continue;
            }
            writeln!(
                w,
                "{label:<42} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                h.count,
                ms(h.p50_us),
                ms(h.p90_us),
                ms(h.p99_us),
                ms(h.p999_us),
                ms(h.max_us)
            )?;
        }
        let proc_line = |name: &str, p: &ProcFigures| {
            format!(
                "{name}: RSS baseline {} peak {} under load {} | per socket {} (delta {}) | CPU avg {} peak {}",
                fmt_opt(p.baseline_rss_mib, " MiB"),
                fmt_opt(p.peak_rss_mib, " MiB"),
                fmt_opt(p.rss_under_load_mib, " MiB"),
                fmt_opt(p.rss_per_socket_kib, " KiB"),
                fmt_opt(p.rss_delta_per_socket_kib, " KiB"),
                fmt_opt(p.cpu_avg_load_pct, "%"),
                fmt_opt(p.cpu_peak_pct, "%")
            )
        };
        writeln!(w)?;
        match &self.hub {
            Some(h) => writeln!(w, "{}", proc_line("hub", h))?,
            None => writeln!(w, "hub: not sampled (pass --hub-pid)")?,
        }
        writeln!(w, "{}", proc_line("harness", &self.harness))?;
        let r = &self.retries;
        let causes = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(w, "\nretries: {}", r.total)?;
        if r.total > 0 {
            write!(w, " ({})", causes(&r.by_cause))?;
        }
        if r.given_up.is_empty() {
            writeln!(w, "; none given up")?;
        } else {
            writeln!(w, "; given up: {}", causes(&r.given_up))?;
        }
        if self.errors.is_empty() {
            writeln!(w, "errors: none")?;
        } else {
            writeln!(w, "errors by code:")?;
            for (k, n) in &self.errors {
                writeln!(w, "  {k:<40} {n}")?;
            }
        }
        writeln!(w, "\ncorrectness (all must be 0):")?;
        for (k, n) in &self.correctness {
            writeln!(
                w,
                "  {k:<40} {n}{}",
                if *n > 0 { "   <-- VIOLATED" } else { "" }
            )?;
        }
        for e in &self.violation_examples {
            writeln!(w, "  e.g. {e}")?;
        }
        if !self.strict_failures.is_empty() {
            writeln!(w, "\nstrict checks failed:")?;
            for r in &self.strict_failures {
                writeln!(w, "  {r}")?;
            }
        }
        writeln!(
            w,
            "\nresult: {}",
            if self.correct && self.strict_failures.is_empty() {
                "OK"
            } else {
                "FAILED"
            }
        )?;
        Ok(())
    }
}
