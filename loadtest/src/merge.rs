//! `loadtest merge FILE...`: one report from the `--json` reports of a run's shards.
//!
//! Counts are summed (sockets, messages, orders, events, retries, errors, failovers, the
//! correctness counters); latency percentiles are computed from the sum of the shards'
//! histograms, which every report carries (`histograms`), never averaged. Rates per second are
//! summed too (the shards ran side by side, which the start line of `--shard-dir` sees to).
//! The `--strict` checks are made again on the sums, so the exit status is the one a single
//! run with these figures would have had.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::cli::MergeArgs;
use crate::drain::Verdict;
use crate::metrics::{decode_histogram, new_histogram};
use crate::report::{
    self, ConfigEcho, Failovers, MessageFigures, OrderFigures, ProcFigures, Report, RetryFigures,
    Sample, SocketFigures, StrictInput,
};

/// How many violation examples the merged report keeps.
const MAX_EXAMPLES: usize = 20;

/// Run `loadtest merge`.
pub fn main(m: &MergeArgs) -> ExitCode {
    match run(m) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(m: &MergeArgs) -> Result<ExitCode> {
    let mut reports = Vec::with_capacity(m.files.len());
    for path in &m.files {
        reports.push(read_report(path)?);
    }
    let merged = merge(&reports)?;
    let mut stdout = std::io::stdout().lock();
    merged.print(&mut stdout).context("writing the report")?;
    drop(stdout);
    if let Some(path) = &m.json {
        crate::create_parent(path)?;
        crate::write_json(path, &merged)?;
    }
    Ok(crate::exit_status(&merged))
}

/// Read one shard's `--json` report.
pub fn read_report(path: &std::path::Path) -> Result<Report> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let r: Report = serde_json::from_reader(BufReader::new(f))
        .with_context(|| format!("reading {} (a report of loadtest --json)", path.display()))?;
    if r.histograms.is_empty() {
        bail!(
            "{} holds no histograms (written by an older loadtest?); it cannot be merged",
            path.display()
        );
    }
    Ok(r)
}

/// One report from the reports of a run's shards (all of them, each once).
pub fn merge(reports: &[Report]) -> Result<Report> {
    let Some(first) = reports.first() else {
        bail!("nothing to merge");
    };
    let labels: Vec<String> = reports
        .iter()
        .filter_map(|r| r.config.shard.clone())
        .collect();
    if !labels.is_empty() && labels.len() != reports.len() {
        bail!("some of the reports are of shards and some are not");
    }
    crate::shard::check_complete(&labels)?;

    let sum = |f: &dyn Fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let sum_f = |f: &dyn Fn(&Report) -> f64| reports.iter().map(f).sum::<f64>();
    let sum_n = |f: &dyn Fn(&Report) -> usize| reports.iter().map(f).sum::<usize>();
    let sum_i = |f: &dyn Fn(&Report) -> i64| reports.iter().map(f).sum::<i64>();

    let mut hists: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    for r in reports {
        for (key, text) in &r.histograms {
            let h = decode_histogram(text).map_err(|e| anyhow::anyhow!("histogram {key}: {e}"))?;
            hists
                .entry(key.clone())
                .or_insert_with(new_histogram)
                .add(&h)
                .map_err(|e| anyhow::anyhow!("histogram {key}: {e:?}"))?;
        }
    }
    let latency = report::latencies(&hists);

    let mut config = ConfigEcho {
        shard: None,
        merged_shards: Some(reports.len()),
        strict: reports.iter().any(|r| r.config.strict),
        shops: sum_n(&|r| r.config.shops),
        drivers: sum_n(&|r| r.config.drivers),
        buyers: sum_n(&|r| r.config.buyers),
        sockets: sum_n(&|r| r.config.sockets),
        rate: sum_f(&|r| r.config.rate),
        source_ips: reports
            .iter()
            .map(|r| r.config.source_ips)
            .max()
            .unwrap_or(1),
        ..first.config.clone()
    };
    for r in reports {
        for u in &r.config.urls {
            if !config.urls.contains(u) {
                config.urls.push(u.clone());
            }
        }
    }

    let held_at_end = sum_i(&|r| r.sockets.held_at_end_of_load);
    let sockets = SocketFigures {
        target: sum(&|r| r.sockets.target),
        peak_held: sum_i(&|r| r.sockets.peak_held),
        held_at_end_of_load: held_at_end,
        connects_ok: sum(&|r| r.sockets.connects_ok),
        reconnects: sum(&|r| r.sockets.reconnects),
        gave_up: sum(&|r| r.sockets.gave_up),
        connect_window_s: reports
            .iter()
            .map(|r| r.sockets.connect_window_s)
            .fold(0.0, f64::max),
        connects_per_s: sum_f(&|r| r.sockets.connects_per_s),
        connect_latency: latency.get("connect").cloned().unwrap_or_default(),
    };
    let failovers = Failovers {
        socket_failovers: sum(&|r| r.failovers.socket_failovers),
        rest_failovers: sum(&|r| r.failovers.rest_failovers),
    };
    let messages = MessageFigures {
        received: sum(&|r| r.messages.received),
        sent: sum(&|r| r.messages.sent),
        received_per_s_load: sum_f(&|r| r.messages.received_per_s_load),
        sent_per_s_load: sum_f(&|r| r.messages.sent_per_s_load),
    };
    let mut after_drain = Verdict::default();
    for r in reports {
        let v = &r.orders.after_drain;
        after_drain.asked += v.asked;
        after_drain.answered += v.answered;
        after_drain.unverified += v.unverified;
        after_drain.unfinished += v.unfinished;
        add_into(
            &mut after_drain.unfinished_by_status,
            &v.unfinished_by_status,
        );
        after_drain.unfinished_on_sockets += v.unfinished_on_sockets;
        after_drain.finished_unseen += v.finished_unseen;
        after_drain
            .hub_behind_sockets
            .extend(v.hub_behind_sockets.iter().cloned());
    }
    let mut events = BTreeMap::new();
    let (mut by_cause, mut given_up, mut errors, mut correctness) = (
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
        BTreeMap::new(),
    );
    let mut violation_examples = Vec::new();
    for r in reports {
        add_into(&mut events, &r.orders.events);
        add_into(&mut by_cause, &r.retries.by_cause);
        add_into(&mut given_up, &r.retries.given_up);
        add_into(&mut errors, &r.errors);
        add_into(&mut correctness, &r.correctness);
        let from = r.config.shard.as_deref().map(|s| format!("[shard {s}] "));
        for e in &r.violation_examples {
            if violation_examples.len() < MAX_EXAMPLES {
                violation_examples.push(format!("{}{e}", from.as_deref().unwrap_or("")));
            }
        }
    }
    let orders = OrderFigures {
        placed: sum(&|r| r.orders.placed),
        replayed: sum(&|r| r.orders.replayed),
        failed: sum(&|r| r.orders.failed),
        skipped: sum(&|r| r.orders.skipped),
        placed_per_s: sum_f(&|r| r.orders.placed_per_s),
        unfinished_after_drain: sum_n(&|r| r.orders.unfinished_after_drain),
        after_drain,
        events,
    };
    let correct = correctness.values().all(|n| *n == 0);
    let strict_failures = if config.strict {
        report::strict_failures(StrictInput {
            connections_only: config.connections_only,
            rate: config.rate,
            gave_up: sockets.gave_up,
            held_at_end,
            target: sockets.target,
            placed: orders.placed,
            delivered: orders.events.get("delivered").copied().unwrap_or(0),
            unfinished: orders.unfinished_after_drain,
            unverified: orders.after_drain.unverified,
        })
    } else {
        Vec::new()
    };
    // Every shard sampled the same hub process; its per-socket figures are over all sockets.
    let hub = reports.iter().find_map(|r| r.hub.clone()).map(|h| {
        let per_socket = |v: f64| (held_at_end > 0).then(|| v * 1024.0 / held_at_end as f64);
        ProcFigures {
            rss_per_socket_kib: h.rss_under_load_mib.and_then(per_socket),
            rss_delta_per_socket_kib: h
                .rss_under_load_mib
                .zip(h.baseline_rss_mib)
                .and_then(|(l, b)| per_socket(l - b)),
            ..h
        }
    });
    // The shards are separate processes: the harness is their sum.
    let harness_sum =
        |f: &dyn Fn(&ProcFigures) -> Option<f64>| sum_opt(reports.iter().map(|r| f(&r.harness)));
    let harness = ProcFigures {
        baseline_rss_mib: harness_sum(&|p| p.baseline_rss_mib),
        peak_rss_mib: harness_sum(&|p| p.peak_rss_mib),
        rss_under_load_mib: harness_sum(&|p| p.rss_under_load_mib),
        rss_per_socket_kib: None,
        rss_delta_per_socket_kib: None,
        cpu_avg_load_pct: harness_sum(&|p| p.cpu_avg_load_pct),
        cpu_peak_pct: harness_sum(&|p| p.cpu_peak_pct),
    };
    Ok(Report {
        config,
        sockets,
        failovers,
        messages,
        orders,
        retries: RetryFigures::new(by_cause, given_up),
        latency,
        hub,
        harness,
        errors,
        correctness,
        violation_examples,
        correct,
        strict_failures,
        timeline: merge_timelines(reports),
        histograms: hists
            .iter()
            .map(|(k, h)| (k.clone(), crate::metrics::encode_histogram(h)))
            .collect(),
    })
}

/// Add the counts of `from` into `into`.
fn add_into<N: Copy + std::ops::AddAssign + Default>(
    into: &mut BTreeMap<String, N>,
    from: &BTreeMap<String, N>,
) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += *n;
    }
}

/// The sum of the values present, if any is.
fn sum_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values
        .flatten()
        .fold(None, |acc, v| Some(acc.unwrap_or(0.0) + v))
}

/// Second k of the merged run: second k of every shard, counts and rates summed. Per-second
/// percentiles cannot be merged from percentiles and are left out (each shard's report has
/// its own); the hub's columns are the first shard's that sampled it.
fn merge_timelines(reports: &[Report]) -> Vec<Sample> {
    let len = reports.iter().map(|r| r.timeline.len()).max().unwrap_or(0);
    (0..len)
        .filter_map(|k| {
            let at: Vec<&Sample> = reports.iter().filter_map(|r| r.timeline.get(k)).collect();
            let first = at.first()?;
            let hub = at.iter().find(|s| s.hub_rss_mib.is_some()).unwrap_or(first);
            Some(Sample {
                t_s: at.iter().map(|s| s.t_s).fold(0.0, f64::max),
                phase: first.phase,
                sockets_open: at.iter().map(|s| s.sockets_open).sum(),
                connects_per_s: at.iter().map(|s| s.connects_per_s).sum(),
                msgs_in_per_s: at.iter().map(|s| s.msgs_in_per_s).sum(),
                msgs_out_per_s: at.iter().map(|s| s.msgs_out_per_s).sum(),
                orders_per_s: at.iter().map(|s| s.orders_per_s).sum(),
                dispatch_count: at.iter().map(|s| s.dispatch_count).sum(),
                dispatch_p50_ms: None,
                dispatch_p99_ms: None,
                placed_to_vendor_p99_ms: None,
                hub_rss_mib: hub.hub_rss_mib,
                hub_cpu_pct: hub.hub_cpu_pct,
                harness_rss_mib: sum_opt(at.iter().map(|s| s.harness_rss_mib)),
                harness_cpu_pct: sum_opt(at.iter().map(|s| s.harness_cpu_pct)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{HistSummary, encode_histogram};
    use rand::{Rng, SeedableRng};

    /// A shard's report with latencies `dispatch` and `connect` (µs), some counts and one
    /// correctness counter.
    fn shard_report(label: &str, dispatch: &[u64], connect: &[u64], gap: u64) -> Report {
        let hist = |values: &[u64]| {
            let mut h = new_histogram();
            for v in values {
                h.record(*v).unwrap();
            }
            h
        };
        let hists: BTreeMap<String, Histogram<u64>> = [
            ("dispatch".to_string(), hist(dispatch)),
            ("connect".to_string(), hist(connect)),
        ]
        .into_iter()
        .collect();
        let n = dispatch.len() as u64;
        Report {
            config: ConfigEcho {
                url: "http://127.0.0.1:8081".into(),
                urls: vec!["http://127.0.0.1:8081".into()],
                shard: Some(label.into()),
                strict: true,
                shops: 2,
                drivers: 10,
                buyers: 20,
                sockets: 32,
                rate: 10.0,
                ..ConfigEcho::default()
            },
            sockets: SocketFigures {
                target: 32,
                peak_held: 32,
                held_at_end_of_load: 32,
                connects_ok: connect.len() as u64,
                connects_per_s: 100.0,
                ..SocketFigures::default()
            },
            failovers: Failovers {
                socket_failovers: 1,
                rest_failovers: 2,
            },
            messages: MessageFigures::default(),
            orders: OrderFigures {
                placed: n,
                events: [("delivered".to_string(), n)].into_iter().collect(),
                ..OrderFigures::default()
            },
            retries: RetryFigures::new(
                [("http:503:unavailable".to_string(), 1)].into(),
                BTreeMap::new(),
            ),
            latency: report::latencies(&hists),
            hub: None,
            harness: ProcFigures::default(),
            errors: [("close:1001".to_string(), 3)].into(),
            correctness: [("gap".to_string(), gap), ("misrouted".to_string(), 0)].into(),
            violation_examples: Vec::new(),
            correct: gap == 0,
            strict_failures: Vec::new(),
            timeline: Vec::new(),
            histograms: hists
                .iter()
                .map(|(k, h)| (k.clone(), encode_histogram(h)))
                .collect(),
        }
    }

    /// Through JSON and back, as `merge` reads the files.
    fn round_trip(r: &Report) -> Report {
        serde_json::from_str(&serde_json::to_string_pretty(r).unwrap()).unwrap()
    }

    #[test]
    fn merged_percentiles_are_those_of_one_histogram_of_all_values() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        // two shards with different latency distributions: averaging their percentiles would
        // be far off
        let fast: Vec<u64> = (0..5000).map(|_| rng.gen_range(500..5_000)).collect();
        let slow: Vec<u64> = (0..1000)
            .map(|_| rng.gen_range(20_000..2_000_000))
            .collect();
        let connects: Vec<u64> = (0..300).map(|_| rng.gen_range(100..90_000)).collect();
        let (c1, c2) = connects.split_at(100);
        let one = round_trip(&shard_report("1/2", &fast, c1, 0));
        let two = round_trip(&shard_report("2/2", &slow, c2, 0));
        let merged = merge(&[one, two]).unwrap();

        let mut all = new_histogram();
        for v in fast.iter().chain(&slow) {
            all.record(*v).unwrap();
        }
        let expected = HistSummary::of(&all);
        assert_eq!(merged.latency["dispatch"], expected);
        assert_eq!(merged.latency["dispatch"].count, 6000);
        // p99 lies in the slow shard's range, p50 in the fast one's
        assert!(expected.p99_us > 20_000 && expected.p50_us < 5_000);
        let mut all_connects = new_histogram();
        for v in &connects {
            all_connects.record(*v).unwrap();
        }
        assert_eq!(merged.latency["connect"], HistSummary::of(&all_connects));
        assert_eq!(
            merged.sockets.connect_latency,
            HistSummary::of(&all_connects)
        );
        // and the merged report's own histograms say the same
        let again = decode_histogram(&merged.histograms["dispatch"]).unwrap();
        assert_eq!(HistSummary::of(&again), expected);
    }

    #[test]
    fn counters_are_summed_and_strict_is_judged_on_the_sums() {
        let one = round_trip(&shard_report("1/2", &[1000, 2000], &[10], 0));
        let two = round_trip(&shard_report("2/2", &[3000], &[20, 30], 0));
        let merged = merge(&[one.clone(), two.clone()]).unwrap();
        assert_eq!(merged.config.merged_shards, Some(2));
        assert_eq!(merged.config.shard, None);
        assert_eq!(
            (
                merged.config.shops,
                merged.config.drivers,
                merged.config.buyers
            ),
            (4, 20, 40)
        );
        assert_eq!(merged.config.rate, 20.0);
        assert_eq!(merged.sockets.target, 64);
        assert_eq!(merged.sockets.held_at_end_of_load, 64);
        assert_eq!(merged.sockets.connects_ok, 3);
        assert_eq!(merged.sockets.connects_per_s, 200.0);
        assert_eq!(merged.orders.placed, 3);
        assert_eq!(merged.orders.events["delivered"], 3);
        assert_eq!(
            merged.failovers,
            Failovers {
                socket_failovers: 2,
                rest_failovers: 4
            }
        );
        assert_eq!(merged.retries.total, 2);
        assert_eq!(merged.errors["close:1001"], 6);
        assert!(merged.correct);
        assert!(merged.strict_failures.is_empty());
        assert_eq!(crate::exit_status(&merged), ExitCode::SUCCESS);

        // a correctness counter of one shard makes the merged run fail with 3
        let bad = round_trip(&shard_report("2/2", &[3000], &[20], 2));
        let merged = merge(&[one.clone(), bad]).unwrap();
        assert_eq!(merged.correctness["gap"], 2);
        assert_eq!(merged.correctness["misrouted"], 0);
        assert!(!merged.correct);
        assert_eq!(crate::exit_status(&merged), ExitCode::from(3));

        // a shard that did not hold its sockets fails --strict for the whole run (4)
        let mut short = two.clone();
        short.sockets.held_at_end_of_load = 30;
        let merged = merge(&[one.clone(), short]).unwrap();
        assert_eq!(
            merged.strict_failures.len(),
            1,
            "{:?}",
            merged.strict_failures
        );
        assert!(merged.strict_failures[0].contains("62 of 64"));
        assert_eq!(crate::exit_status(&merged), ExitCode::from(4));
    }

    #[test]
    fn only_a_complete_set_of_shards_is_merged() {
        let one = shard_report("1/3", &[1000], &[10], 0);
        let two = shard_report("2/3", &[1000], &[10], 0);
        assert!(merge(&[one.clone(), two.clone()]).is_err());
        assert!(merge(&[one.clone(), one.clone()]).is_err());
        let mut unsharded = two.clone();
        unsharded.config.shard = None;
        assert!(merge(&[one, unsharded]).is_err());
        assert!(merge(&[]).is_err());
    }

    #[test]
    fn a_histogram_survives_its_text_form() {
        let mut h = new_histogram();
        for v in [1, 2, 999, 1000, 1001, 123_456, 3_600_000_000] {
            h.record_n(v, 3).unwrap();
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        assert!(decode_histogram("").unwrap().is_empty());
        for bad in ["12", "a:1", "1:b", "1:2:3", "99999999999999:1"] {
            assert!(decode_histogram(bad).is_err(), "{bad:?}");
        }
    }
}
