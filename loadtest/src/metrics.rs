//! Shared, lock-light state of one run: counters, latency histograms (hdrhistogram, µs), the
//! correctness counters, and the in-process hand-over maps that tie a send on one socket (or a
//! REST call) to the arrival of its consequence on another socket.
//!
//! Latencies whose two ends can arrive in either order (the REST response of `POST /api/orders`
//! may come back after the vendor socket already saw `created`) go through a *rendezvous* map:
//! whichever side comes second records the difference.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::proto::{Action, Event, Kind, Order, Status};

/// Highest latency a histogram keeps exactly (one hour, in µs); larger values saturate.
const HIST_MAX_US: u64 = 3_600_000_000;
/// How many violation descriptions are kept for the final report.
const MAX_EXAMPLES: usize = 20;

/// A histogram of durations in microseconds behind a short-held mutex.
pub struct Hist(Mutex<Histogram<u64>>);

impl Hist {
    pub fn new() -> Self {
        Hist(Mutex::new(new_histogram()))
    }

    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).max(1);
        lock(&self.0).saturating_record(us);
    }

    /// A copy of the histogram so far.
    pub fn snapshot(&self) -> Histogram<u64> {
        lock(&self.0).clone()
    }

    /// The histogram so far, leaving an empty one behind (per-second windows).
    pub fn take(&self) -> Histogram<u64> {
        std::mem::replace(&mut *lock(&self.0), new_histogram())
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// A histogram as text: `value:count` pairs of its non-empty buckets, separated by spaces,
/// each value (µs) the highest one its bucket holds (so recording it again lands in the same
/// bucket of a histogram with [`new_histogram`]'s bounds: the percentiles come out the same).
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    h.iter_recorded()
        .map(|v| format!("{}:{}", v.value_iterated_to(), v.count_at_value()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Read back what [`encode_histogram`] wrote.
pub fn decode_histogram(text: &str) -> Result<Histogram<u64>, String> {
    let mut h = new_histogram();
    for pair in text.split_whitespace() {
        let parsed = pair
            .split_once(':')
            .and_then(|(v, n)| Some((v.parse::<u64>().ok()?, n.parse::<u64>().ok()?)));
        let Some((value, count)) = parsed else {
            return Err(format!("not a value:count pair: {pair:?}"));
        };
        h.record_n(value, count)
            .map_err(|_| format!("value out of the histogram's range: {value}"))?;
    }
    Ok(h)
}

/// Lock a mutex, ignoring poisoning (a panicking recorder must not hide the figures).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The correctness properties the run checks; each must stay at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Violation {
    /// A socket received a version of an order lower than or equal to one it already had.
    StaleOrDuplicate,
    /// A shop or buyer socket skipped a version of an order it had already seen.
    Gap,
    /// An `assigned` event for an order whose previous driver was never released.
    DoubleAssignment,
    /// A driver socket got a second active order while holding one.
    DriverTwoOrders,
    /// `event.version` differs from `order.version` in one message.
    EventVersionMismatch,
    /// An order message arrived on a topic it does not belong to.
    Misrouted,
    /// After the drain, `GET /api/orders/{id}` answered an older version of an order than a
    /// shop socket had already received, or another status than the final one it had seen.
    HubBehindSockets,
}

impl Violation {
    pub const ALL: [Violation; 7] = [
        Violation::StaleOrDuplicate,
        Violation::Gap,
        Violation::DoubleAssignment,
        Violation::DriverTwoOrders,
        Violation::EventVersionMismatch,
        Violation::Misrouted,
        Violation::HubBehindSockets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Violation::StaleOrDuplicate => "stale_or_duplicate",
            Violation::Gap => "gap",
            Violation::DoubleAssignment => "double_assignment",
            Violation::DriverTwoOrders => "driver_two_orders",
            Violation::EventVersionMismatch => "event_version_mismatch",
            Violation::Misrouted => "misrouted",
            Violation::HubBehindSockets => "hub_behind_sockets",
        }
    }
}

/// Phase of the run, shown in the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Setup = 0,
    RampUp = 1,
    Load = 2,
    Drain = 3,
    Done = 4,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Setup => "setup",
            Phase::RampUp => "ramp-up",
            Phase::Load => "load",
            Phase::Drain => "drain",
            Phase::Done => "done",
        }
    }

    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Setup,
            1 => Phase::RampUp,
            2 => Phase::Load,
            3 => Phase::Drain,
            _ => Phase::Done,
        }
    }
}

/// One side of a rendezvous.
#[derive(Debug, Clone, Copy)]
enum Side {
    Sent(Instant),
    Arrived(Instant),
}

/// Record `side` for `key`; when the other side is already there, return the latency.
fn meet<K: Hash + Eq>(map: &DashMap<K, Side>, key: K, side: Side) -> Option<Duration> {
    match map.entry(key) {
        Entry::Occupied(mut e) => match (*e.get(), side) {
            (Side::Sent(s), Side::Arrived(a)) | (Side::Arrived(a), Side::Sent(s)) => {
                e.remove();
                Some(a.saturating_duration_since(s))
            }
            _ => {
                e.insert(side);
                None
            }
        },
        Entry::Vacant(v) => {
            v.insert(side);
            None
        }
    }
}

/// Event kinds whose "sent → buyer socket has it" latency is measured: the ones the harness
/// itself causes (`created` by the REST call, the rest by socket transitions).
pub const BUYER_KINDS: [Kind; 6] = [
    Kind::Created,
    Kind::Accepted,
    Kind::Ready,
    Kind::PickedUp,
    Kind::Delivered,
    Kind::Declined,
];

/// The newest state of an order the shop sockets have seen (or `POST /api/orders` returned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub status: Status,
    pub version: u64,
}

/// All shared state of a run.
pub struct Metrics {
    pub started: Instant,
    phase: AtomicU8,

    // sockets
    pub sockets_target: AtomicU64,
    pub sockets_open: AtomicI64,
    pub sockets_peak: AtomicI64,
    pub connects_ok: AtomicU64,
    pub reconnects: AtomicU64,
    pub gave_up: AtomicU64,
    /// Reconnects sent to the next node because the socket's node was gone.
    pub socket_failovers: AtomicU64,
    /// REST requests sent once more to the next node because their node was gone.
    pub rest_failovers: AtomicU64,
    /// µs since `started` of the first connect attempt and of the last socket's first
    /// successful connect.
    pub first_connect_start_us: AtomicU64,
    pub last_connect_done_us: AtomicU64,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,

    // orders
    pub orders_placed: AtomicU64,
    pub orders_replayed: AtomicU64,
    pub orders_failed: AtomicU64,
    pub orders_skipped: AtomicU64,
    pub shop_events: [AtomicU64; 13],

    errors: Mutex<BTreeMap<String, u64>>,
    /// Retries by cause (`http:503:unavailable`, `ws:unavailable`, …) and retriable failures
    /// that were not retried any more (budget spent, or `Retry-After` too long).
    retries: Mutex<BTreeMap<String, u64>>,
    retries_exhausted: Mutex<BTreeMap<String, u64>>,
    violations: [AtomicU64; 7],
    examples: Mutex<Vec<String>>,

    // latencies
    pub placed_to_vendor: Hist,
    pub dispatch: Hist,
    pub redispatch: Hist,
    pub to_buyer: HashMap<Kind, Hist>,
    pub connect: Hist,
    pub order_post: Hist,
    pub win_dispatch: Hist,
    pub win_placed_to_vendor: Hist,

    // hand-over maps
    pub otps: DashMap<Uuid, String>,
    placed_rv: DashMap<Uuid, Side>,
    buyer_rv: DashMap<(Uuid, Kind), Side>,
    dispatch_start: DashMap<Uuid, (Instant, bool)>,
    order_driver: DashMap<Uuid, Uuid>,
    order_status: DashMap<Uuid, Seen>,
    /// Every order this run placed → index of the buyer who placed it (the drain asks the hub
    /// about each order with that buyer's token).
    order_buyer: DashMap<Uuid, u32>,
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            phase: AtomicU8::new(Phase::Setup as u8),
            sockets_target: AtomicU64::new(0),
            sockets_open: AtomicI64::new(0),
            sockets_peak: AtomicI64::new(0),
            connects_ok: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            socket_failovers: AtomicU64::new(0),
            rest_failovers: AtomicU64::new(0),
            first_connect_start_us: AtomicU64::new(u64::MAX),
            last_connect_done_us: AtomicU64::new(0),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            orders_placed: AtomicU64::new(0),
            orders_replayed: AtomicU64::new(0),
            orders_failed: AtomicU64::new(0),
            orders_skipped: AtomicU64::new(0),
            shop_events: Default::default(),
            errors: Mutex::new(BTreeMap::new()),
            retries: Mutex::new(BTreeMap::new()),
            retries_exhausted: Mutex::new(BTreeMap::new()),
            violations: Default::default(),
            examples: Mutex::new(Vec::new()),
            placed_to_vendor: Hist::new(),
            dispatch: Hist::new(),
            redispatch: Hist::new(),
            to_buyer: BUYER_KINDS.iter().map(|k| (*k, Hist::new())).collect(),
            connect: Hist::new(),
            order_post: Hist::new(),
            win_dispatch: Hist::new(),
            win_placed_to_vendor: Hist::new(),
            otps: DashMap::new(),
            placed_rv: DashMap::new(),
            buyer_rv: DashMap::new(),
            dispatch_start: DashMap::new(),
            order_driver: DashMap::new(),
            order_status: DashMap::new(),
            order_buyer: DashMap::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Relaxed);
    }

    fn since_start_us(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_micros() as u64
    }

    // ---- errors and violations -------------------------------------------------------------

    /// Count one error under `key` (`ws:<code>`, `http:<status>:<code>`, `close:<code>`, …).
    pub fn error(&self, key: impl Into<String>) {
        *lock(&self.errors).entry(key.into()).or_insert(0) += 1;
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    /// A call is being retried after a failure counted under `cause`.
    pub fn retried(&self, cause: impl Into<String>) {
        *lock(&self.retries).entry(cause.into()).or_insert(0) += 1;
    }

    /// A retriable failure counted under `cause` is final: no retry is left.
    pub fn retry_exhausted(&self, cause: impl Into<String>) {
        *lock(&self.retries_exhausted)
            .entry(cause.into())
            .or_insert(0) += 1;
    }

    pub fn retries(&self) -> BTreeMap<String, u64> {
        lock(&self.retries).clone()
    }

    pub fn retries_exhausted(&self) -> BTreeMap<String, u64> {
        lock(&self.retries_exhausted).clone()
    }

    pub fn violation(&self, v: Violation, detail: impl FnOnce() -> String) {
        self.violations[v as usize].fetch_add(1, Relaxed);
        let mut ex = lock(&self.examples);
        if ex.len() < MAX_EXAMPLES {
            ex.push(format!("{}: {}", v.as_str(), detail()));
        }
    }

    pub fn violations(&self) -> BTreeMap<&'static str, u64> {
        Violation::ALL
            .iter()
            .map(|v| (v.as_str(), self.violations[*v as usize].load(Relaxed)))
            .collect()
    }

    pub fn violation_examples(&self) -> Vec<String> {
        lock(&self.examples).clone()
    }

    // ---- sockets ---------------------------------------------------------------------------

    pub fn connect_started(&self, at: Instant) {
        self.first_connect_start_us
            .fetch_min(self.since_start_us(at), Relaxed);
    }

    pub fn connected(&self, took: Duration, reconnect: bool) {
        self.connect.record(took);
        self.connects_ok.fetch_add(1, Relaxed);
        if reconnect {
            self.reconnects.fetch_add(1, Relaxed);
        } else {
            // the connect rate is about first connects: a reconnect late in the run must not
            // stretch its window
            self.last_connect_done_us
                .fetch_max(self.since_start_us(Instant::now()), Relaxed);
        }
        let open = self.sockets_open.fetch_add(1, Relaxed) + 1;
        self.sockets_peak.fetch_max(open, Relaxed);
    }

    pub fn disconnected(&self) {
        self.sockets_open.fetch_sub(1, Relaxed);
    }

    // ---- order lifecycle hand-overs --------------------------------------------------------

    /// `POST /api/orders` answered with an order, placed by the buyer with index `buyer`;
    /// `sent` is when the first attempt was sent. `replay`: the answer was an idempotent
    /// replay (200), i.e. an earlier attempt with the same key had created the order and its
    /// answer was lost. Either way it is one order placed.
    pub fn order_placed(
        &self,
        order: &Order,
        otp: String,
        sent: Instant,
        replay: bool,
        buyer: u32,
    ) {
        self.orders_placed.fetch_add(1, Relaxed);
        if replay {
            self.orders_replayed.fetch_add(1, Relaxed);
        }
        self.otps.insert(order.id, otp);
        self.order_buyer.insert(order.id, buyer);
        self.see(order);
        if let Some(d) = meet(&self.placed_rv, order.id, Side::Sent(sent)) {
            self.placed_to_vendor.record(d);
            self.win_placed_to_vendor.record(d);
        }
        self.buyer_meet(order.id, Kind::Created, Side::Sent(sent));
    }

    /// A vendor socket received the `created` event of an order.
    pub fn vendor_saw_created(&self, order: Uuid, at: Instant) {
        if let Some(d) = meet(&self.placed_rv, order, Side::Arrived(at)) {
            self.placed_to_vendor.record(d);
            self.win_placed_to_vendor.record(d);
        }
    }

    /// A buyer socket received an order message of `kind`.
    pub fn buyer_saw(&self, order: Uuid, kind: Kind, at: Instant) {
        if BUYER_KINDS.contains(&kind) {
            self.buyer_meet(order, kind, Side::Arrived(at));
        }
    }

    fn buyer_meet(&self, order: Uuid, kind: Kind, side: Side) {
        if let Some(d) = meet(&self.buyer_rv, (order, kind), side)
            && let Some(h) = self.to_buyer.get(&kind)
        {
            h.record(d);
        }
    }

    /// A transition frame was written to a socket at `at`.
    pub fn transition_sent(&self, order: Uuid, action: Action, at: Instant) {
        self.buyer_meet(order, action.kind(), Side::Sent(at));
        match action {
            Action::MarkReady => {
                self.dispatch_start.insert(order, (at, false));
            }
            Action::Decline => {
                self.dispatch_start.insert(order, (at, true));
            }
            _ => {}
        }
    }

    /// The hub answered a transition with an `error`: forget its pending measurements.
    pub fn transition_failed(&self, order: Uuid, action: Action) {
        self.buyer_rv
            .remove_if(&(order, action.kind()), |_, s| matches!(s, Side::Sent(_)));
        if matches!(action, Action::MarkReady | Action::Decline) {
            self.dispatch_start.remove(&order);
        }
    }

    /// A driver socket received `assigned` for `order`.
    pub fn driver_assigned(&self, order: Uuid, at: Instant) {
        if let Some((_, (start, redispatch))) = self.dispatch_start.remove(&order) {
            let d = at.saturating_duration_since(start);
            if redispatch {
                self.redispatch.record(d);
            } else {
                self.dispatch.record(d);
                self.win_dispatch.record(d);
            }
        }
    }

    // ---- the shop topic's view: every event of every order, in commit order ----------------

    /// An order from a shop snapshot.
    pub fn shop_snapshot_order(&self, order: &Order) {
        self.see(order);
        match (order.status, order.driver_id) {
            (Status::Assigned | Status::PickedUp, Some(d)) => {
                self.order_driver.insert(order.id, d);
            }
            _ => {
                self.order_driver.remove(&order.id);
            }
        }
    }

    /// An order message on a shop topic (each event of an order reaches exactly one shop
    /// socket, in commit order, so the per-order checks here are race-free).
    pub fn shop_event(&self, event: &Event, order: &Order) {
        self.shop_events[event.kind as usize].fetch_add(1, Relaxed);
        self.see(order);
        match event.kind {
            Kind::Assigned => {
                let driver = event
                    .payload
                    .as_ref()
                    .and_then(|p| p.driver_id)
                    .or(order.driver_id);
                if let Some(driver) = driver
                    && let Some(prev) = self.order_driver.insert(order.id, driver)
                {
                    self.violation(Violation::DoubleAssignment, || {
                        format!(
                            "order {} assigned to {driver} (v{}) while still assigned to {prev}",
                            order.id, order.version
                        )
                    });
                }
            }
            Kind::Declined | Kind::Unassigned => {
                self.order_driver.remove(&order.id);
            }
            _ if order.status.is_final() => {
                self.order_driver.remove(&order.id);
            }
            _ => {}
        }
    }

    /// Keep the newest version of `order` in the sockets' view.
    fn see(&self, order: &Order) {
        let seen = Seen {
            status: order.status,
            version: order.version,
        };
        self.order_status
            .entry(order.id)
            .and_modify(|s| {
                if seen.version > s.version {
                    *s = seen;
                }
            })
            .or_insert(seen);
    }

    /// Orders placed by this run that the shop sockets have not seen reach a final status.
    /// Not the verdict on them: a socket that was reconnecting when an order finished never
    /// hears of it (snapshots list active orders only), so the drain asks the hub.
    pub fn unfinished_on_sockets(&self) -> Vec<Uuid> {
        self.order_status
            .iter()
            .filter(|e| !e.value().status.is_final() && self.order_buyer.contains_key(e.key()))
            .map(|e| *e.key())
            .collect()
    }

    /// Every order this run placed: its id, the buyer (index) who placed it, and the newest
    /// state the sockets saw.
    pub fn placed_orders(&self) -> Vec<(Uuid, u32, Seen)> {
        self.order_buyer
            .iter()
            .filter_map(|e| {
                let seen = *self.order_status.get(e.key())?;
                Some((*e.key(), *e.value(), seen))
            })
            .collect()
    }

    /// The buyer (index) who placed `order`, if this run placed it.
    pub fn placed_by(&self, order: Uuid) -> Option<u32> {
        self.order_buyer.get(&order).map(|b| *b)
    }

    pub fn shop_event_counts(&self) -> BTreeMap<&'static str, u64> {
        Kind::ALL
            .iter()
            .map(|k| (k.as_str(), self.shop_events[*k as usize].load(Relaxed)))
            .collect()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl HistSummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Payload;

    fn order(id: Uuid, status: Status, version: u64, driver: Option<Uuid>) -> Order {
        Order {
            id,
            shop_id: None,
            buyer_id: None,
            driver_id: driver,
            status,
            version,
        }
    }

    #[test]
    fn rendezvous_in_either_order() {
        let m = Metrics::new();
        let t0 = Instant::now();
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        // socket first, REST response second
        m.vendor_saw_created(a, t0 + Duration::from_millis(5));
        m.order_placed(
            &order(a, Status::Pending, 1, None),
            "1".into(),
            t0,
            false,
            0,
        );
        // REST response first, socket second
        m.order_placed(&order(b, Status::Pending, 1, None), "2".into(), t0, true, 1);
        m.vendor_saw_created(b, t0 + Duration::from_millis(7));
        let h = m.placed_to_vendor.snapshot();
        assert_eq!(h.len(), 2);
        assert!(h.max() >= 6_900 && h.max() <= 7_100);
        assert!(m.placed_rv.is_empty());
        // a replay is still one order placed
        assert_eq!(m.orders_placed.load(Relaxed), 2);
        assert_eq!(m.orders_replayed.load(Relaxed), 1);
        assert_eq!(m.placed_by(b), Some(1));
    }

    #[test]
    fn socket_view_keeps_the_newest_version() {
        let m = Metrics::new();
        let (a, b, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t0 = Instant::now();
        // the shop socket saw `accepted` before POST /api/orders returned v1
        m.shop_snapshot_order(&order(a, Status::Accepted, 2, None));
        m.order_placed(
            &order(a, Status::Pending, 1, None),
            "1".into(),
            t0,
            false,
            3,
        );
        m.order_placed(
            &order(b, Status::Pending, 1, None),
            "2".into(),
            t0,
            false,
            4,
        );
        m.shop_snapshot_order(&order(b, Status::Delivered, 6, None));
        // an order this run did not place is not its business
        m.shop_snapshot_order(&order(other, Status::Ready, 3, None));
        assert_eq!(m.unfinished_on_sockets(), vec![a]);
        let mut placed = m.placed_orders();
        placed.sort_by_key(|p| p.1);
        assert_eq!(placed.len(), 2);
        assert_eq!(
            placed[0],
            (
                a,
                3,
                Seen {
                    status: Status::Accepted,
                    version: 2
                }
            )
        );
        assert_eq!(placed[1].2.status, Status::Delivered);
    }

    #[test]
    fn dispatch_and_failed_transitions() {
        let m = Metrics::new();
        let o = Uuid::new_v4();
        let t0 = Instant::now();
        m.transition_sent(o, Action::MarkReady, t0);
        m.driver_assigned(o, t0 + Duration::from_millis(3));
        assert_eq!(m.dispatch.snapshot().len(), 1);
        m.transition_sent(o, Action::Decline, t0);
        m.transition_failed(o, Action::Decline);
        m.driver_assigned(o, t0 + Duration::from_millis(3));
        assert_eq!(m.redispatch.snapshot().len(), 0);
        assert!(!m.buyer_rv.contains_key(&(o, Kind::Declined)));
        assert!(m.buyer_rv.contains_key(&(o, Kind::Ready)));
    }

    #[test]
    fn double_assignment_detected_and_cleared() {
        let m = Metrics::new();
        let o = Uuid::new_v4();
        let (d1, d2) = (Uuid::new_v4(), Uuid::new_v4());
        let ev = |kind, version, driver| Event {
            kind,
            version,
            payload: Some(Payload {
                driver_id: Some(driver),
            }),
        };
        m.shop_event(
            &ev(Kind::Assigned, 4, d1),
            &order(o, Status::Assigned, 4, Some(d1)),
        );
        m.shop_event(
            &ev(Kind::Declined, 5, d1),
            &order(o, Status::Ready, 5, None),
        );
        m.shop_event(
            &ev(Kind::Assigned, 6, d2),
            &order(o, Status::Assigned, 6, Some(d2)),
        );
        assert_eq!(m.violations()["double_assignment"], 0);
        m.shop_event(
            &ev(Kind::Assigned, 7, d1),
            &order(o, Status::Assigned, 7, Some(d1)),
        );
        assert_eq!(m.violations()["double_assignment"], 1);
        assert_eq!(m.violation_examples().len(), 1);
    }
}
