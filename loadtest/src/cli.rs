//! Command-line flags of the `loadtest` binary (clap derive), the `--smoke` preset, and the
//! small value parsers (bounding box, durations) they use.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::shard::{Shard, Slices};

/// Drive a running dispatch-hub through its public REST API and WebSocket protocol, measure
/// latencies and check the ordering guarantees of the socket protocol.
///
/// Two modes:
///
/// * lifecycle (default): create shops, products, drivers and buyers, open one socket per
///   actor, place orders at `--rate` per second and let simulated vendors and drivers move every
///   order through pending → accepted → ready → assigned → picked_up → delivered;
///
/// * `--connections-only`: create `--sockets` buyers and just hold that many authenticated,
///   subscribed sockets for `--duration` seconds.
///
/// A cluster of hub nodes: give `--url` once per node. Past one process's open files: split
/// the run with `--shard i/n` into n processes (or let `--processes n` start them), then
/// `loadtest merge` their `--json` reports.
///
/// Exit status: 0 on success, 1 on a fatal error (hub unreachable, setup failed), 2 on bad
/// flags, 3 if any correctness counter is not zero, 4 if `--strict` checks failed.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadtest",
    version,
    about,
    long_about,
    max_term_width = 100,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Base URL of a hub node; give it once per node of a cluster. Only loopback addresses are
    /// accepted.
    ///
    /// Socket k of the run (shops, then drivers, then buyers) starts on node
    /// k mod n; REST requests go round-robin, one node per request. A socket whose node is
    /// gone (connection refused or reset, closed without a closing handshake, or 1001)
    /// reconnects to the next node in the list; a REST request that got no answer because its
    /// node is gone is sent once more to the next node if that is safe (the connection was
    /// never made, or the request is a GET or carries an Idempotency-Key, as orders do).
    /// Both are counted as failovers, not failures.
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub urls: Vec<String>,

    /// Admin token the hub was started with; needed to create shops and drivers.
    #[arg(long, env = "HUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Number of shops to create (one vendor socket each, subscribed to `shop:<id>`).
    #[arg(long, default_value_t = 20)]
    pub shops: usize,

    /// Products created per shop (as that shop's vendor).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub products_per_shop: u32,

    /// Number of drivers to create (one socket each, subscribed to `driver:<id>`).
    #[arg(long, default_value_t = 200)]
    pub drivers: usize,

    /// Number of buyer accounts (one socket each, subscribed to `buyer:<id>`).
    #[arg(long, default_value_t = 500)]
    pub buyers: usize,

    /// Orders per second placed in total across all buyers (POST /api/orders).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,

    /// Seconds of load after the ramp-up (orders are placed, or sockets held, for this long).
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    pub duration: Duration,

    /// Seconds over which the sockets are opened, evenly spread.
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    pub ramp_up: Duration,

    /// Longest wait after `--duration` for orders in flight to reach a final status. Whether
    /// they did is then asked of the hub (`GET /api/orders/{id}` for every placed order).
    #[arg(long, default_value = "5", value_parser = parse_duration)]
    pub drain: Duration,

    /// City bounding box `minlat,minlng,maxlat,maxlng`; shops, drivers and delivery points
    /// stay inside it.
    #[arg(long, default_value = "52.42,13.25,52.60,13.55", value_parser = parse_bbox)]
    pub bbox: BBox,

    /// How often each driver sends its position (random walk inside the bbox).
    /// Accepts `2`, `2s`, `500ms`.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub location_interval: Duration,

    /// Vendor preparation time between accepting an order and marking it ready.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub prep: Duration,

    /// Driver reaction time: pick_up, decline and deliver are sent after a random delay
    /// between this value and twice it.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub driver_delay: Duration,

    /// Probability (0..=1) that a driver declines an assigned order instead of picking it up.
    #[arg(long, default_value_t = 0.02, value_parser = parse_probability)]
    pub decline_rate: f64,

    /// Maximum distance of a delivery point from its shop, in km.
    #[arg(long, default_value_t = 3.0)]
    pub delivery_radius_km: f64,

    /// Only open `--sockets` authenticated buyer sockets (subscribed to `buyer:<id>`), hold
    /// them for `--duration` and report connects/s and hub RSS per socket. No orders.
    #[arg(long)]
    pub connections_only: bool,

    /// Number of sockets in `--connections-only` mode.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,

    /// Number of loopback source addresses (127.0.0.1, 127.0.0.2, …) the sockets are spread
    /// over, so that no source address runs out of ephemeral ports.
    /// Default: ceil(sockets / 20000) + 1.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_ips: Option<u8>,

    /// REST requests in flight during setup (creating accounts, logins, products) and while
    /// the drain asks the hub about the placed orders.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,

    /// WebSocket handshakes (connect, auth, subscribe) in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Order requests in flight at once; when reached, further orders of that second are
    /// counted as skipped instead of queued.
    #[arg(long, default_value_t = 256)]
    pub max_inflight_orders: usize,

    /// Consecutive failed attempts after which a socket stops reconnecting (exponential
    /// backoff with jitter between them). A session that authenticated, subscribed and stayed
    /// up for 10 s resets the count.
    #[arg(long, default_value_t = 5)]
    pub max_reconnects: u32,

    /// Process id of the hub; its RSS and CPU are sampled every second from /proc.
    #[arg(long)]
    pub hub_pid: Option<u32>,

    /// Write every figure of the run as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draw dispatch latency p50/p99 and placed→vendor p99 per second into this PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,

    /// No progress bar (it is also hidden when stdout is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,

    /// Also fail (exit 4) unless the hub says every placed order reached a final status by the
    /// end of the drain, at least one order was delivered, and no socket gave up.
    #[arg(long)]
    pub strict: bool,

    /// Small, quick preset for a test suite: 3 shops, 20 drivers, 50 buyers, 5 orders/s for
    /// 5 s, 1 s ramp-up, `--strict`. Explicit flags given with it are overridden.
    #[arg(long)]
    pub smoke: bool,

    /// Run only shard i of a run split into n processes (`2/3`), for more sockets than one
    /// process may open.
    ///
    /// The shard runs the i-th of n equal slices of the shops, drivers and buyers (or of
    /// `--sockets`), each created by this process with names of its own, and places
    /// `--rate`/n orders per second. The other flags are the whole run's and must be the same
    /// for every shard. Needs `--shard-dir`; write the report with
    /// `--json` and combine the shards' reports with `loadtest merge`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// A fresh directory the shards of one run share, to start and stop together.
    ///
    /// A shard opens its sockets once every shard has finished its setup, and closes them once
    /// every shard's orders are final (its drivers may be carrying other shards' orders: the
    /// hub dispatches any free driver); the shards pass each other their orders' OTPs through
    /// files there.
    #[arg(long, value_name = "DIR")]
    pub shard_dir: Option<PathBuf>,

    /// Split the run into n shards and run each as a child process of this one
    /// (`--shard i/n`), then print the merged report.
    ///
    /// `--json` writes the merged report; the shards' own reports and tables stay in
    /// `--shard-dir` (default: a new directory under the system's temporary directory).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub processes: Option<u32>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Combine the `--json` reports of a run's shards into one report.
    ///
    /// Counts are summed; latency percentiles come from the shards' histograms added together.
    /// The exit status is what one unsharded run with these figures would give (3 if a
    /// correctness counter is not zero, 4 if the `--strict` checks fail on the sums).
    Merge(MergeArgs),
}

/// Flags of `loadtest merge`.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// The shards' reports (`--json` of each shard), all n of one run.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Also write the merged report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl Args {
    /// Apply the `--smoke` preset and check the flags that clap cannot check alone.
    pub fn finish(mut self) -> Result<Self> {
        if self.smoke {
            self.shops = 3;
            self.drivers = 20;
            self.buyers = 50;
            self.rate = 5.0;
            self.duration = Duration::from_secs(5);
            self.ramp_up = Duration::from_secs(1);
            self.connections_only = false;
            self.strict = true;
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            bail!("--rate must be a finite number >= 0");
        }
        if !(self.delivery_radius_km.is_finite() && self.delivery_radius_km >= 0.0) {
            bail!("--delivery-radius-km must be a finite number >= 0");
        }
        if self.location_interval < Duration::from_millis(100) {
            bail!("--location-interval below 100ms would trip the hub's message rate limit");
        }
        if self.setup_concurrency == 0 || self.connect_concurrency == 0 {
            bail!("--setup-concurrency and --connect-concurrency must be at least 1");
        }
        if self.max_inflight_orders == 0 {
            bail!("--max-inflight-orders must be at least 1");
        }
        if self.urls.is_empty() {
            bail!("--url needs a value");
        }
        if self.shard.is_some() && self.processes.is_some() {
            bail!("--shard and --processes exclude each other (--processes passes --shard)");
        }
        if self.processes.is_some() && self.plot.is_some() {
            bail!("--plot is not drawn for --processes; plot a single shard's run instead");
        }
        let n = self.shard.map(|s| s.count).or(self.processes).unwrap_or(1) as usize;
        if self.shard.is_some_and(|s| s.count > 1) && self.shard_dir.is_none() {
            bail!("--shard needs --shard-dir (a fresh directory every shard of the run shares)");
        }
        if self.connections_only {
            if self.sockets == 0 {
                bail!("--connections-only needs --sockets > 0");
            }
            if self.sockets < n {
                bail!("{n} shards need --sockets >= {n}");
            }
        } else {
            if self.shops == 0 || self.drivers == 0 || self.buyers == 0 {
                bail!("a lifecycle run needs --shops, --drivers and --buyers > 0");
            }
            if self.shops.min(self.drivers).min(self.buyers) < n {
                bail!("{n} shards need at least {n} each of --shops, --drivers and --buyers");
            }
            if self.admin_token.as_deref().unwrap_or("").is_empty() {
                bail!("a lifecycle run needs --admin-token (or HUB_ADMIN_TOKEN)");
            }
        }
        Ok(self)
    }

    /// Total sockets the run opens (all shards together).
    pub fn total_sockets(&self) -> usize {
        if self.connections_only {
            self.sockets
        } else {
            self.shops + self.drivers + self.buyers
        }
    }

    /// This process's shard (the whole run when not sharded).
    pub fn shard_or_whole(&self) -> Shard {
        self.shard.unwrap_or(Shard::WHOLE)
    }

    /// This shard's slices of the shops, drivers and buyers (lifecycle) or, as `buyers`, of
    /// the `--connections-only` sockets.
    pub fn slices(&self) -> Slices {
        let shard = self.shard_or_whole();
        if self.connections_only {
            Slices::of(shard, 0, 0, self.sockets)
        } else {
            Slices::of(shard, self.shops, self.drivers, self.buyers)
        }
    }

    /// Sockets this process opens.
    pub fn shard_sockets(&self) -> usize {
        let s = self.slices();
        s.shops.len() + s.drivers.len() + s.buyers.len()
    }

    /// Orders per second this process places.
    pub fn shard_rate(&self) -> f64 {
        self.rate / f64::from(self.shard_or_whole().count)
    }

    /// Number of loopback source addresses to use (for the whole run: the shards spread their
    /// sockets over the same addresses, by their index in the whole run).
    pub fn source_ip_count(&self) -> u8 {
        match self.source_ips {
            Some(n) => n,
            None => (self.total_sockets().div_ceil(20_000) + 1).min(250) as u8,
        }
    }
}

/// A latitude/longitude rectangle.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BBox {
    pub min_lat: f64,
    pub min_lng: f64,
    pub max_lat: f64,
    pub max_lng: f64,
}

impl BBox {
    /// Clamp a point into the box.
    pub fn clamp(&self, lat: f64, lng: f64) -> (f64, f64) {
        (
            lat.clamp(self.min_lat, self.max_lat),
            lng.clamp(self.min_lng, self.max_lng),
        )
    }
}

fn parse_bbox(s: &str) -> Result<BBox, String> {
    let parts: Vec<f64> = s
        .split(',')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bbox: {e}"))?;
    let [min_lat, min_lng, max_lat, max_lng] = parts[..] else {
        return Err("bbox needs four numbers: minlat,minlng,maxlat,maxlng".into());
    };
    let finite = parts.iter().all(|v| v.is_finite());
    if !finite
        || !(-90.0..=90.0).contains(&min_lat)
        || !(-90.0..=90.0).contains(&max_lat)
        || !(-180.0..=180.0).contains(&min_lng)
        || !(-180.0..=180.0).contains(&max_lng)
    {
        return Err("bbox coordinates out of range".into());
    }
    if min_lat >= max_lat || min_lng >= max_lng {
        return Err("bbox needs minlat < maxlat and minlng < maxlng".into());
    }
    Ok(BBox {
        min_lat,
        min_lng,
        max_lat,
        max_lng,
    })
}

/// Parse `30`, `30s`, `1.5s`, `500ms` or `2m` into a duration (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 30, 30s or 500ms)"))?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * scale))
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("not a number: {s:?}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 1".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn bbox() {
        let b = parse_bbox("52.42,13.25,52.60,13.55").unwrap();
        assert_eq!(b.min_lat, 52.42);
        assert!(parse_bbox("1,2,3").is_err());
        assert!(parse_bbox("52.6,13.25,52.42,13.55").is_err());
        assert_eq!(b.clamp(60.0, 0.0), (52.60, 13.25));
    }

    fn args(extra: &[&str]) -> Result<Args> {
        let mut v = vec!["loadtest", "--admin-token", "t"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v)?.finish()
    }

    #[test]
    fn one_url_by_default_and_as_many_as_given() {
        let a = args(&[]).unwrap();
        assert_eq!(a.urls, ["http://127.0.0.1:8080"]);
        let a = args(&[
            "--url",
            "http://127.0.0.1:8081",
            "--url",
            "http://[::1]:8082",
        ])
        .unwrap();
        assert_eq!(a.urls, ["http://127.0.0.1:8081", "http://[::1]:8082"]);
    }

    #[test]
    fn a_run_without_shard_is_the_whole_run() {
        let a = args(&["--rate", "30"]).unwrap();
        assert_eq!(a.shard_or_whole(), Shard::WHOLE);
        assert_eq!(a.slices(), Slices::of(Shard::WHOLE, 20, 200, 500));
        assert_eq!(a.shard_sockets(), a.total_sockets());
        assert_eq!(a.shard_rate(), 30.0);
    }

    #[test]
    fn a_shard_runs_its_slice_at_its_share_of_the_rate() {
        let dir = ["--shard-dir", "d"];
        let a = args(&[&["--shard", "2/3", "--rate", "30"][..], &dir].concat()).unwrap();
        assert_eq!(a.shard, Some(Shard { index: 2, count: 3 }));
        let s = a.slices();
        assert_eq!((s.shops, s.drivers, s.buyers), (6..13, 66..133, 166..333));
        assert_eq!(a.shard_sockets(), 7 + 67 + 167);
        assert_eq!(a.total_sockets(), 720);
        assert_eq!(a.shard_rate(), 10.0);
        let a = args(
            &[
                &["--connections-only", "--sockets", "1000", "--shard", "3/3"][..],
                &dir,
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(a.slices().buyers, 666..1000);
        assert_eq!(a.shard_sockets(), 334);
        // one shard of one needs no directory
        assert!(args(&["--shard", "1/1"]).is_ok());
    }

    #[test]
    fn shard_flags_that_cannot_work_are_refused() {
        assert!(args(&["--shard", "0/3"]).is_err());
        assert!(args(&["--shard", "2/3"]).is_err(), "no --shard-dir");
        let dir = ["--shard-dir", "d"];
        assert!(args(&[&["--shard", "1/3", "--processes", "3"][..], &dir].concat()).is_err());
        assert!(args(&[&["--shard", "1/3", "--shops", "2"][..], &dir].concat()).is_err());
        assert!(args(&["--processes", "4", "--shops", "3"]).is_err());
        assert!(args(&["--processes", "2", "--plot", "x.png"]).is_err());
        assert!(args(&["--processes", "0"]).is_err());
    }

    #[test]
    fn merge_is_a_subcommand() {
        let a = Args::try_parse_from(["loadtest", "merge", "a.json", "b.json", "--json", "m.json"])
            .unwrap();
        let Some(Command::Merge(m)) = a.command else {
            panic!("not parsed as merge: {:?}", a.command);
        };
        assert_eq!(m.files, [PathBuf::from("a.json"), PathBuf::from("b.json")]);
        assert_eq!(m.json, Some(PathBuf::from("m.json")));
        assert!(
            Args::try_parse_from(["loadtest", "merge"]).is_err(),
            "no files"
        );
        assert!(Args::try_parse_from(["loadtest", "--rate", "5", "merge", "a.json"]).is_err());
    }

    #[test]
    fn smoke_preset() {
        let a = Args::parse_from(["loadtest", "--smoke", "--admin-token", "t"])
            .finish()
            .unwrap();
        assert_eq!((a.shops, a.drivers, a.buyers), (3, 20, 50));
        assert!(a.strict);
        assert_eq!(a.total_sockets(), 73);
        assert_eq!(a.source_ip_count(), 2);
    }
}
