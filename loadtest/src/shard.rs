//! Running one load test as several processes (`--shard i/n`), to hold more sockets than one
//! process may open files.
//!
//! Each shard runs the i-th of n equal slices of the actors (or of the `--connections-only`
//! sockets), with accounts of its own, and places `rate / n` orders per second. The shards of
//! one run share a directory (`--shard-dir`) for two things:
//!
//! * a start line: each shard leaves `ready-<i>-of-<n>` there once its accounts exist and opens
//!   its sockets only when every shard has, so that their load phases overlap;
//! * an end line: each shard leaves `drained-<i>-of-<n>` once its own orders are final (or its
//!   drain time is up) and closes its sockets only when every shard has, because its drivers
//!   may be carrying another shard's orders;
//! * the delivery codes: the hub may dispatch a driver of one shard to an order that a buyer of
//!   another shard placed, and only that buyer learnt the order's OTP. Each shard appends
//!   `<order id> <otp>` lines to `otp-<i>-of-<n>.txt` and reads the other shards' files into
//!   its own hand-over map, which its drivers already wait on.
//!
//! A shard refuses a directory that already holds its own files (a fresh directory per run).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

use crate::metrics::{Metrics, lock};

/// Most shards a run may be split into.
pub const MAX_SHARDS: u32 = 1000;
/// How often the start line and the other shards' OTP files are looked at.
const POLL: Duration = Duration::from_millis(50);

/// This process's part of a run: shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole run in one process.
    pub const WHOLE: Shard = Shard { index: 1, count: 1 };

    /// This shard's slice of `0..total`: the `index`-th of `count` contiguous slices whose
    /// sizes differ by at most one and which together cover `0..total` exactly.
    pub fn slice(&self, total: usize) -> Range<usize> {
        let at = |k: u32| (total as u128 * k as u128 / self.count as u128) as usize;
        at(self.index - 1)..at(self.index)
    }

    /// `i/n`, as given on the command line.
    pub fn label(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }

    fn file(&self, dir: &Path, what: &str, index: u32) -> PathBuf {
        dir.join(format!("{what}-{index}-of-{}", self.count))
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `i/n` with `1 <= i <= n <= MAX_SHARDS`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("not a shard: {s:?} (expected i/n, e.g. 2/3)"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("not a shard: {s:?} (expected i/n, e.g. 2/3)"))
        };
        let (index, count) = (num(i)?, num(n)?);
        if count == 0 || count > MAX_SHARDS {
            return Err(format!(
                "the shard count must be between 1 and {MAX_SHARDS}"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "shard {index}/{count}: the index must be between 1 and {count}"
            ));
        }
        Ok(Shard { index, count })
    }
}

/// This shard's slices of the run's actors, as ranges of the whole run's indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slices {
    pub shops: Range<usize>,
    pub drivers: Range<usize>,
    pub buyers: Range<usize>,
}

impl Slices {
    pub fn of(shard: Shard, shops: usize, drivers: usize, buyers: usize) -> Self {
        Slices {
            shops: shard.slice(shops),
            drivers: shard.slice(drivers),
            buyers: shard.slice(buyers),
        }
    }
}

/// Refuse a directory that already holds this shard's files (from an earlier run).
pub fn check_fresh(dir: &Path, shard: Shard) -> Result<()> {
    for f in [
        shard.file(dir, Line::Start.file(), shard.index),
        shard.file(dir, Line::End.file(), shard.index),
        shard.file(dir, "failed", shard.index),
        shard.file(dir, "otp", shard.index).with_extension("txt"),
    ] {
        if f.exists() {
            bail!(
                "{} is left from an earlier run: use a fresh --shard-dir for every run",
                f.display()
            );
        }
    }
    Ok(())
}

/// The lines the shards of a run wait at for each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// Setup done: every shard's accounts exist; the sockets open after it.
    Start,
    /// Drain done: every shard's own orders are final (or its drain time is up). A shard keeps
    /// its sockets until then, because its drivers may be delivering other shards' orders.
    End,
}

impl Line {
    fn file(self) -> &'static str {
        match self {
            Line::Start => "ready",
            Line::End => "drained",
        }
    }
}

/// How waiting at a line ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// Every shard got there.
    All,
    /// The deadline came first; these shards (`i/n`) had not got there.
    Missing(Vec<String>),
    /// This shard (`i/n`) stopped with an error and will not get there.
    Failed(String),
    /// Ctrl-C.
    Interrupted,
}

/// Tell the other shards that this one stopped with an error, so that they do not wait for it
/// at a line (best effort: nothing more can be done if even this fails).
pub fn mark_failed(dir: &Path, shard: Shard) {
    let _ = File::create(shard.file(dir, "failed", shard.index));
}

/// Leave this shard's mark at `line`, then wait until every shard of the run has (or until
/// `deadline`, or Ctrl-C).
pub async fn wait_at(
    dir: &Path,
    shard: Shard,
    line: Line,
    deadline: Instant,
    interrupted: &mut watch::Receiver<bool>,
) -> Result<Waited> {
    create_new(&shard.file(dir, line.file(), shard.index))?;
    let mut waiting: Vec<u32> = (1..=shard.count).collect();
    loop {
        waiting.retain(|i| !shard.file(dir, line.file(), *i).exists());
        if waiting.is_empty() {
            return Ok(Waited::All);
        }
        if let Some(i) = waiting
            .iter()
            .find(|i| shard.file(dir, "failed", **i).exists())
        {
            return Ok(Waited::Failed(format!("{i}/{}", shard.count)));
        }
        if Instant::now() >= deadline {
            let missing = waiting
                .iter()
                .map(|i| format!("{i}/{}", shard.count))
                .collect();
            return Ok(Waited::Missing(missing));
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = crate::ws::stopped(interrupted) => return Ok(Waited::Interrupted),
        }
    }
}

/// Create `path`, which must not exist yet: a file left by an earlier run in the same
/// directory would let this run start early or read stale codes.
fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (use a fresh --shard-dir for every run)",
                path.display()
            )
        })
}

/// The OTP exchange between the shards of a run (see the module docs). A thread appends this
/// shard's codes to its file and reads the other shards' files every [`POLL`].
pub struct OtpShare {
    tx: std::sync::Mutex<Option<mpsc::Sender<(Uuid, String)>>>,
    stop: Arc<AtomicBool>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl OtpShare {
    pub fn start(dir: &Path, shard: Shard, metrics: Arc<Metrics>) -> Result<Self> {
        let own = create_new(&shard.file(dir, "otp", shard.index).with_extension("txt"))?;
        let peers: Vec<PathBuf> = (1..=shard.count)
            .filter(|i| *i != shard.index)
            .map(|i| shard.file(dir, "otp", i).with_extension("txt"))
            .collect();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("otp-share".into())
            .spawn(move || exchange(own, rx, peers, &metrics, &flag))
            .context("starting the OTP exchange")?;
        Ok(OtpShare {
            tx: std::sync::Mutex::new(Some(tx)),
            stop,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// Tell the other shards the OTP of an order a buyer of this shard placed.
    pub fn publish(&self, order: Uuid, otp: &str) {
        if let Some(tx) = lock(&self.tx).as_ref() {
            let _ = tx.send((order, otp.to_string()));
        }
    }

    /// Write what is queued and stop.
    pub fn stop(&self) {
        lock(&self.tx).take();
        self.stop.store(true, Relaxed);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

impl Drop for OtpShare {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The exchange thread: until `stop`, append this shard's codes to `own` and read the lines
/// the peers added since the last look.
fn exchange(
    mut own: File,
    rx: mpsc::Receiver<(Uuid, String)>,
    peers: Vec<PathBuf>,
    metrics: &Metrics,
    stop: &AtomicBool,
) {
    let mut readers: Vec<PeerFile> = peers.into_iter().map(PeerFile::new).collect();
    let mut failed_write = false;
    loop {
        let last = stop.load(Relaxed);
        let mut batch = String::new();
        while let Ok((id, otp)) = rx.try_recv() {
            batch.push_str(&format!("{id} {otp}\n"));
        }
        if !batch.is_empty() && own.write_all(batch.as_bytes()).is_err() && !failed_write {
            failed_write = true;
            metrics.error("harness:otp_share_write");
        }
        for r in &mut readers {
            for (id, otp) in r.read_new(metrics) {
                metrics.otps.entry(id).or_insert(otp);
            }
        }
        if last {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// Another shard's OTP file, read as it grows.
struct PeerFile {
    path: PathBuf,
    file: Option<File>,
    /// An incomplete last line, kept until its newline arrives.
    carry: Vec<u8>,
}

impl PeerFile {
    fn new(path: PathBuf) -> Self {
        PeerFile {
            path,
            file: None,
            carry: Vec::new(),
        }
    }

    /// The complete lines added since the last call (none while the file does not exist).
    fn read_new(&mut self, metrics: &Metrics) -> Vec<(Uuid, String)> {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(f) = self.file.as_mut() else {
            return Vec::new();
        };
        if f.read_to_end(&mut self.carry).is_err() {
            return Vec::new();
        }
        let Some(end) = self.carry.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.carry.split_off(end + 1);
        let lines = std::mem::replace(&mut self.carry, rest);
        parse_lines(&lines, metrics)
    }
}

/// `<uuid> <otp>` lines; a malformed one is counted and skipped.
fn parse_lines(bytes: &[u8], metrics: &Metrics) -> Vec<(Uuid, String)> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let parsed = l
                .split_once(' ')
                .and_then(|(id, otp)| Some((Uuid::parse_str(id).ok()?, otp.trim().to_string())))
                .filter(|(_, otp)| !otp.is_empty());
            if parsed.is_none() {
                metrics.error("harness:otp_share_bad_line");
            }
            parsed
        })
        .collect()
}

/// The shards whose indexes `labels` (`i/n` each) name, checked for one run: the same `n`
/// everywhere, no shard twice, all `n` present.
pub fn check_complete(labels: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    let mut count = None;
    for l in labels {
        let s: Shard = l.parse().map_err(|e: String| anyhow::anyhow!(e))?;
        let n = *count.get_or_insert(s.count);
        if n != s.count {
            bail!("the reports come from runs split differently ({l} beside shards of {n})");
        }
        if !seen.insert(s.index) {
            bail!("shard {l} is given twice");
        }
    }
    if let Some(n) = count
        && seen.len() != n as usize
    {
        let missing: Vec<String> = (1..=n)
            .filter(|i| !seen.contains(i))
            .map(|i| format!("{i}/{n}"))
            .collect();
        bail!("the reports of shards {} are missing", missing.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_parser_accepts_i_of_n_only() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(" 1 / 1 ".parse(), Ok(Shard::WHOLE));
        for bad in [
            "", "2", "0/3", "4/3", "1/0", "a/3", "2/b", "-1/3", "1/3/4", "1/1001",
        ] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(Shard { index: 2, count: 3 }.label(), "2/3");
    }

    #[test]
    fn slices_cover_everything_once_and_differ_by_at_most_one() {
        for total in [0usize, 1, 2, 5, 7, 10, 1000, 15_001] {
            for count in 1..=7u32 {
                let slices: Vec<Range<usize>> = (1..=count)
                    .map(|index| Shard { index, count }.slice(total))
                    .collect();
                assert_eq!(slices[0].start, 0);
                assert_eq!(slices[slices.len() - 1].end, total);
                for w in slices.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "contiguous, no overlap");
                }
                let sizes: Vec<usize> = slices.iter().map(|r| r.len()).collect();
                let (min, max) = (sizes.iter().min(), sizes.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{sizes:?}");
            }
        }
        assert_eq!(Shard { index: 2, count: 3 }.slice(10), 3..6);
        assert_eq!(Shard { index: 3, count: 3 }.slice(10), 6..10);
        assert_eq!(Shard::WHOLE.slice(42), 0..42);
        let s = Slices::of(Shard { index: 1, count: 2 }, 3, 20, 50);
        assert_eq!((s.shops, s.drivers, s.buyers), (0..1, 0..10, 0..25));
    }

    #[test]
    fn complete_sets_of_shards() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_complete(&l(&["2/3", "1/3", "3/3"])).is_ok());
        assert!(check_complete(&l(&["1/3", "3/3"])).is_err());
        assert!(check_complete(&l(&["1/2", "1/2"])).is_err());
        assert!(check_complete(&l(&["1/2", "2/3"])).is_err());
    }

    fn scratch_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("loadtest-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn shards_exchange_otps_through_the_directory() {
        let dir = scratch_dir();
        let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        let one = OtpShare::start(&dir, Shard { index: 1, count: 2 }, m1.clone()).unwrap();
        let two = OtpShare::start(&dir, Shard { index: 2, count: 2 }, m2.clone()).unwrap();
        // a second run in the same directory is refused
        assert!(OtpShare::start(&dir, Shard { index: 1, count: 2 }, m1.clone()).is_err());
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        one.publish(a, "123456");
        two.publish(b, "654321");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while (m2.otps.get(&a).is_none() || m1.otps.get(&b).is_none())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(POLL);
        }
        one.stop();
        two.stop();
        assert_eq!(m2.otps.get(&a).map(|o| o.clone()), Some("123456".into()));
        assert_eq!(m1.otps.get(&b).map(|o| o.clone()), Some("654321".into()));
        // a shard does not read its own file back as a peer's
        assert!(m1.otps.get(&a).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_line_is_read_only_once_it_is_complete() {
        let dir = scratch_dir();
        let path = dir.join("otp-2-of-2.txt");
        let m = Metrics::new();
        let mut peer = PeerFile::new(path.clone());
        assert!(peer.read_new(&m).is_empty(), "no file yet");
        let mut f = create_new(&path).unwrap();
        let id = Uuid::new_v4();
        write!(f, "{id} 12").unwrap();
        assert!(peer.read_new(&m).is_empty());
        writeln!(f, "3456\nnot a line").unwrap();
        assert_eq!(peer.read_new(&m), vec![(id, "123456".to_string())]);
        writeln!(f).unwrap();
        assert!(peer.read_new(&m).is_empty());
        assert_eq!(m.errors().get("harness:otp_share_bad_line"), Some(&1));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_line_waits_for_every_shard() {
        let dir = scratch_dir();
        let (tx, mut rx) = watch::channel(false);
        let soon = Instant::now() + Duration::from_millis(300);
        let (one, two) = (Shard { index: 1, count: 2 }, Shard { index: 2, count: 2 });
        let waited = wait_at(&dir, one, Line::Start, soon, &mut rx)
            .await
            .unwrap();
        assert_eq!(waited, Waited::Missing(vec!["2/2".into()]));
        let later = Instant::now() + Duration::from_secs(5);
        let waited = wait_at(&dir, two, Line::Start, later, &mut rx)
            .await
            .unwrap();
        assert_eq!(waited, Waited::All);
        // each line is its own; a shard cannot pass one twice (a reused directory)
        assert!(
            wait_at(&dir, two, Line::Start, later, &mut rx)
                .await
                .is_err()
        );
        assert!(check_fresh(&dir, two).is_err());
        // a shard that failed is not waited for
        let three = (Shard { index: 1, count: 3 }, Shard { index: 3, count: 3 });
        mark_failed(&dir, three.1);
        let waited = wait_at(&dir, three.0, Line::Start, later, &mut rx)
            .await
            .unwrap();
        assert_eq!(waited, Waited::Failed("3/3".into()));
        let _ = tx.send(true);
        let waited = wait_at(&dir, two, Line::End, later, &mut rx).await.unwrap();
        assert_eq!(waited, Waited::Interrupted);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
