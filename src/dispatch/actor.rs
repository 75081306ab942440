//! The dispatcher actor's state and loop. Everything here runs on one task; database work is
//! spawned and reports back through the control channel, so the loop never waits on Postgres.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

mod upkeep;

use super::index::DriverIndex;
use super::{AssignFailure, Control, Location, OrderChanged, Receivers};
use crate::cluster::Leadership;
use crate::domain::{Action, Actor, DriverId, EventKind, GeoPoint, OrderId, OrderStatus};
use crate::error::Error;
use crate::realtime::registry::ConnId;
use crate::service::Hub;
use crate::service::orders::{SystemInput, TransitionRequest};
use crate::store;

const TICK: Duration = Duration::from_millis(250);
const FLEET_EVERY: Duration = Duration::from_secs(1);
const RETRY_AFTER: Duration = Duration::from_secs(1);
const BUSY_COOLDOWN: Duration = Duration::from_secs(5);
const OFFER_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Driver {
    /// For the fleet view; read from Postgres on recovery or when the driver connects.
    name: Option<String>,
    name_asked: bool,
    pos: Option<GeoPoint>,
    /// The position the driver is indexed at, when it is in the free index.
    indexed_at: Option<GeoPoint>,
    conns: HashSet<ConnId>,
    available: bool,
    last_seen: Option<Instant>,
    offline_since: Option<Instant>,
    /// The active order (assigned or picked up).
    order: Option<OrderId>,
    picked_up: bool,
    /// An assignment to this driver is being committed.
    reserved: Option<OrderId>,
    /// A grace-period action (unassign / driver_lost) was started for this order.
    handled_loss: Option<OrderId>,
    loss_retry_at: Option<Instant>,
    /// When this free driver was last offered the waiting queue (a scan of it).
    last_offer: Option<Instant>,
    blocked_until: Option<Instant>,
    fleet_dirty: bool,
    last_fleet: Option<Instant>,
    pos_dirty: bool,
}

struct Waiting {
    version: i32,
    shop: GeoPoint,
    seq: u64,
    retry_at: Option<Instant>,
}

struct State {
    hub: Arc<Hub>,
    /// The lease's epoch this dispatcher decides under (`None` in a single process): every
    /// assignment it commits is fenced by it.
    epoch: Option<i64>,
    max_m: f64,
    stale: Duration,
    grace: Duration,
    drivers: HashMap<DriverId, Driver>,
    index: DriverIndex,
    /// Orders waiting for a driver, by arrival; `queue` orders them oldest first.
    waiting: HashMap<OrderId, Waiting>,
    queue: BTreeMap<u64, OrderId>,
    next_seq: u64,
    /// Assignments being committed, and when each started.
    inflight: HashMap<OrderId, (DriverId, Instant)>,
    declined: HashMap<OrderId, HashSet<DriverId>>,
    /// (version, shop, queue position) of orders whose assignment is being committed.
    waiting_parked: HashMap<OrderId, (i32, GeoPoint, u64)>,
    last_flush: Instant,
    last_reconcile: Instant,
    /// The newest version seen of each active order (to drop changes that arrive late).
    seen: HashMap<OrderId, i32>,
}

/// Active orders whose newest version the dispatcher remembers at most (beyond it, it forgets
/// them all and starts again: a late change is then handled as before, by version checks in
/// the write).
const MAX_SEEN: usize = 500_000;

/// Runs the dispatcher until the hub shuts down. It waits for [`super::DispatchHandle::start`].
pub fn spawn(rx: Receivers) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(rx))
}

async fn run(mut rx: Receivers) {
    // Wait for the hub; messages that arrive before it are replayed after recovery.
    let mut early = Vec::new();
    let hub = loop {
        match rx.control.recv().await {
            Some(Control::Start(hub)) => break hub,
            Some(other) => early.push(other),
            None => return,
        }
    };
    let mut leadership = hub.cluster.watch_leadership();
    loop {
        // In a cluster, this node dispatches only while it holds the lease.
        let Some(epoch) = await_lease(&hub, &mut rx, &mut leadership, &mut early).await else {
            return;
        };
        if !lead(&hub, &mut rx, &mut leadership, &mut early, epoch).await {
            return;
        }
        tracing::warn!(?epoch, "dispatcher lease lost; this node stops dispatching");
    }
}

/// Waits until this node holds the dispatcher's lease and returns its epoch (`None`: shut
/// down). Inputs that reach the actor meanwhile are dropped (the leader has its own), except
/// those that arrive once the lease is ours: they are kept for after the rebuild.
async fn await_lease(
    hub: &Arc<Hub>,
    rx: &mut Receivers,
    leadership: &mut tokio::sync::watch::Receiver<Leadership>,
    early: &mut Vec<Control>,
) -> Option<Option<i64>> {
    loop {
        if let Leadership::Leader { epoch } = *leadership.borrow_and_update() {
            return Some(epoch);
        }
        rx.health.set_ready(false);
        tokio::select! {
            _ = hub.shutdown.cancelled() => return None,
            changed = leadership.changed() => if changed.is_err() { return None },
            m = rx.control.recv() => match m {
                None => return None,
                Some(m) if hub.cluster.is_leader() => early.push(m),
                Some(Control::Fleet(reply)) => { let _ = reply.send(Vec::new()); }
                Some(_) => {}
            },
            Some(_) = rx.locations.recv() => {}
        }
    }
}

/// Dispatches under `epoch` until the lease is lost (false: the hub shut down).
///
/// The supervisor: a handler that panics costs the message that caused it, never the
/// dispatcher — its state is rebuilt from Postgres (plus the drivers connected right now) and
/// the loop goes on with the same channels, so nothing queued is lost.
async fn lead(
    hub: &Arc<Hub>,
    rx: &mut Receivers,
    leadership: &mut tokio::sync::watch::Receiver<Leadership>,
    early: &mut Vec<Control>,
    epoch: Option<i64>,
) -> bool {
    let health = rx.health.clone();
    let mut restarts = 0u64;
    loop {
        health.set_ready(false);
        let Some(mut st) = State::rebuilt(hub.clone(), epoch).await else {
            return false; // shut down while rebuilding
        };
        if restarts > 0 || hub.cluster.is_clustered() {
            // Drivers' sockets outlived the old state (or were announced to another leader):
            // announce this node's again; the other nodes do the same on the announcement.
            for s in hub.conns.live_of_role(crate::domain::Role::Driver) {
                st.control(Control::Connected(DriverId(s.id), s.conn));
                if !s.available {
                    st.control(Control::Availability(DriverId(s.id), false));
                }
                if let Some((p, at)) = s.location {
                    st.location_at(DriverId(s.id), p, at);
                }
            }
        }
        for m in early.drain(..) {
            st.control(m);
        }
        health.set_ready(true);
        match serve(&mut st, rx, leadership).await {
            Served::Deposed => {
                health.set_ready(false);
                return true;
            }
            Served::Stopped => {
                if let Some(last) = st.flush_positions() {
                    last.await;
                }
                return false;
            }
            Served::Panicked => {
                restarts += 1;
                metrics::counter!("hub_dispatch_restarts_total").increment(1);
                tracing::error!(
                    restarts,
                    "dispatcher panicked; rebuilding its state from Postgres"
                );
                // A panic that repeats on the rebuilt state must not become a tight loop.
                let pause = Duration::from_millis(200 * restarts.min(25));
                tokio::select! {
                    _ = hub.shutdown.cancelled() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

enum Served {
    Stopped,
    Panicked,
    /// The lease moved on: this node must not dispatch any more.
    Deposed,
}

/// The actor's loop. Every handler is synchronous, so a panic is caught right here.
async fn serve(
    st: &mut State,
    rx: &mut Receivers,
    leadership: &mut tokio::sync::watch::Receiver<Leadership>,
) -> Served {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let shutdown = st.hub.shutdown.clone();
    loop {
        rx.health.beat();
        let handled = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Served::Stopped,
            _ = leadership.changed() => {
                if *leadership.borrow_and_update() != (Leadership::Leader { epoch: st.epoch }) {
                    return Served::Deposed;
                }
                Ok(())
            }
            m = rx.control.recv() => match m {
                Some(m) => catch_unwind(AssertUnwindSafe(|| st.control(m))),
                None => return Served::Stopped,
            },
            Some(Location(d, p)) = rx.locations.recv() => {
                catch_unwind(AssertUnwindSafe(|| st.location(d, p)))
            }
            _ = tick.tick() => {
                metrics::gauge!("hub_dispatch_waiting").set(st.waiting.len() as f64);
                metrics::gauge!("hub_dispatch_control_queue").set(rx.control.len() as f64);
                catch_unwind(AssertUnwindSafe(|| st.tick()))
            }
        };
        if handled.is_err() {
            return Served::Panicked;
        }
    }
}

impl State {
    /// A fresh state rebuilt from Postgres; retries until Postgres answers (without its state
    /// the dispatcher would treat busy drivers as free and forget waiting orders). `None` when
    /// the hub shuts down meanwhile.
    async fn rebuilt(hub: Arc<Hub>, epoch: Option<i64>) -> Option<State> {
        loop {
            let mut st = State {
                epoch,
                max_m: hub.config.dispatch_max_km * 1000.0,
                stale: Duration::from_secs(hub.config.driver_stale_s),
                grace: Duration::from_secs(hub.config.driver_grace_s),
                hub: hub.clone(),
                drivers: HashMap::new(),
                index: DriverIndex::new(),
                waiting: HashMap::new(),
                queue: BTreeMap::new(),
                next_seq: 0,
                inflight: HashMap::new(),
                declined: HashMap::new(),
                waiting_parked: HashMap::new(),
                last_flush: Instant::now(),
                last_reconcile: Instant::now(),
                seen: HashMap::new(),
            };
            match st.recover().await {
                Ok(()) => return Some(st),
                Err(e) => {
                    tracing::error!(error = %e, "dispatcher could not rebuild its state from Postgres; retrying");
                }
            }
            tokio::select! {
                _ = hub.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    }

    async fn recover(&mut self) -> Result<(), sqlx::Error> {
        let db = self.hub.db.clone();
        let now = Instant::now();
        for (id, name, lat, lng) in store::fleet::drivers(&db).await? {
            let pos = match (lat, lng) {
                (Some(lat), Some(lng)) => GeoPoint::new(lat, lng).ok(),
                _ => None,
            };
            self.drivers.insert(
                DriverId(id),
                Driver {
                    name: Some(name),
                    pos,
                    available: true,
                    offline_since: Some(now),
                    ..Driver::default()
                },
            );
        }
        for (order, driver, status) in store::fleet::busy_drivers(&db).await? {
            let d = self.drivers.entry(DriverId(driver)).or_default();
            d.order = Some(OrderId(order));
            d.picked_up = status == "picked_up";
            d.offline_since.get_or_insert(now);
        }
        for (order, driver) in store::fleet::declines(&db).await? {
            self.declined
                .entry(OrderId(order))
                .or_default()
                .insert(DriverId(driver));
        }
        let ready = store::fleet::ready_orders(&db).await?;
        let n = ready.len();
        for r in ready {
            if let Ok(shop) = GeoPoint::new(r.shop_lat, r.shop_lng) {
                self.enqueue(OrderId(r.id), r.version, shop);
                self.seen.insert(OrderId(r.id), r.version);
            }
        }
        tracing::info!(
            drivers = self.drivers.len(),
            waiting = n,
            "dispatcher recovered"
        );
        Ok(())
    }

    fn control(&mut self, m: Control) {
        match m {
            Control::Order(c) => self.order_changed(c),
            Control::Connected(d, conn) => {
                let drv = self.drivers.entry(d).or_default();
                if drv.conns.is_empty() {
                    drv.available = true;
                }
                drv.conns.insert(conn);
                if drv.name.is_none() && !drv.name_asked {
                    drv.name_asked = true;
                    self.spawn_name_lookup(d);
                }
                self.refresh(d);
            }
            Control::Named(d, name) => {
                self.drivers.entry(d).or_default().name = Some(name);
                self.refresh(d);
            }
            Control::Disconnected(d, conn) => {
                if let Some(drv) = self.drivers.get_mut(&d) {
                    drv.conns.remove(&conn);
                }
                self.refresh(d);
            }
            Control::Availability(d, available) => {
                self.drivers.entry(d).or_default().available = available;
                self.refresh(d);
            }
            Control::Assigned {
                order,
                driver,
                result,
            } => self.assign_done(order, driver, result),
            Control::Reconcile(ready) => self.reconcile(ready),
            Control::Crash => panic!("dispatcher crash requested (HUB_DEBUG_FAULTS)"),
            Control::Fleet(reply) => {
                let now = Instant::now();
                let states = self
                    .drivers
                    .iter()
                    .map(|(id, d)| self.driver_state(*id, d, now))
                    .collect();
                let _ = reply.send(states);
            }
            Control::Start(_) => {}
            Control::LossHandled { driver, order, ok } => {
                if let Some(d) = self.drivers.get_mut(&driver)
                    && !ok
                    && d.handled_loss == Some(order)
                {
                    d.handled_loss = None;
                    d.loss_retry_at = Some(Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    fn order_changed(&mut self, c: OrderChanged) {
        // Changes can arrive out of commit order (from different nodes of a cluster, or senders
        // racing for a full queue): one older than what was seen of the order is stale.
        if self.seen.get(&c.id).is_some_and(|v| *v >= c.version) {
            metrics::counter!("hub_dispatch_stale_changes_total").increment(1);
            return;
        }
        if c.status.is_final() {
            self.seen.remove(&c.id);
        } else {
            if self.seen.len() >= MAX_SEEN {
                self.seen.clear();
            }
            self.seen.insert(c.id, c.version);
        }
        // Whatever the change, the order is no longer waiting at its old version.
        let was_waiting = self.dequeue(c.id);
        match c.status {
            OrderStatus::Ready => {
                if let Some(prev) = c.previous_driver {
                    if c.kind == EventKind::Declined {
                        self.declined.entry(c.id).or_default().insert(prev);
                    }
                    self.release(prev, c.id);
                }
                // Reported delayed while its assignment is being committed: that attempt
                // fails on the version and puts the order back in its place, at this version.
                if c.kind == EventKind::DispatchDelayed
                    && let Some(parked) = self.waiting_parked.get_mut(&c.id)
                {
                    parked.0 = c.version;
                    return;
                }
                match c.shop_pos {
                    Some(shop) => {
                        match (c.kind, was_waiting) {
                            // Still the same wait: it keeps its place in the queue.
                            (EventKind::DispatchDelayed, Some(w)) => {
                                self.enqueue_at(c.id, c.version, shop, w.seq)
                            }
                            _ => self.enqueue(c.id, c.version, shop),
                        }
                        self.try_dispatch(c.id);
                    }
                    // The shop's position could not be read: look it up again, then come back.
                    None => self.spawn_shop_lookup(c),
                }
            }
            OrderStatus::Assigned => {
                self.inflight.remove(&c.id);
                self.waiting_parked.remove(&c.id);
                if let Some(d) = c.driver_id {
                    let drv = self.drivers.entry(d).or_default();
                    drv.reserved = None;
                    drv.order = Some(c.id);
                    drv.picked_up = false;
                    drv.handled_loss = None;
                    self.refresh(d);
                }
            }
            OrderStatus::PickedUp => {
                if let Some(d) = c.driver_id.and_then(|d| self.drivers.get_mut(&d)) {
                    d.order = Some(c.id);
                    d.picked_up = true;
                    d.fleet_dirty = true;
                }
            }
            OrderStatus::Delivered | OrderStatus::DeliveryFailed => {
                self.declined.remove(&c.id);
                if let Some(d) = c.driver_id {
                    self.release(d, c.id);
                }
            }
            OrderStatus::Pending
            | OrderStatus::Accepted
            | OrderStatus::Rejected
            | OrderStatus::Cancelled => {
                self.declined.remove(&c.id);
                // An admin may cancel an order a driver holds: the driver is free again.
                if let Some(prev) = c.previous_driver {
                    self.release(prev, c.id);
                }
            }
        }
    }

    /// The driver no longer holds `order`.
    fn release(&mut self, d: DriverId, order: OrderId) {
        if let Some(drv) = self.drivers.get_mut(&d) {
            if drv.order == Some(order) {
                drv.order = None;
                drv.picked_up = false;
                drv.handled_loss = None;
            }
            self.refresh(d);
        }
    }

    fn enqueue(&mut self, id: OrderId, version: i32, shop: GeoPoint) {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.enqueue_at(id, version, shop, seq);
    }

    fn enqueue_at(&mut self, id: OrderId, version: i32, shop: GeoPoint, seq: u64) {
        // One place in the queue per order.
        self.dequeue(id);
        self.queue.insert(seq, id);
        self.waiting.insert(
            id,
            Waiting {
                version,
                shop,
                seq,
                retry_at: None,
            },
        );
        metrics::gauge!("hub_dispatch_waiting").set(self.waiting.len() as f64);
    }

    fn dequeue(&mut self, id: OrderId) -> Option<Waiting> {
        let w = self.waiting.remove(&id)?;
        self.queue.remove(&w.seq);
        metrics::gauge!("hub_dispatch_waiting").set(self.waiting.len() as f64);
        Some(w)
    }

    fn is_online(&self, d: &Driver, now: Instant) -> bool {
        !d.conns.is_empty()
            && d.last_seen
                .is_some_and(|t| now.duration_since(t) < self.stale)
    }

    fn is_free(&self, d: &Driver, now: Instant) -> bool {
        self.is_online(d, now)
            && d.available
            && d.order.is_none()
            && d.reserved.is_none()
            && d.pos.is_some()
            && d.blocked_until.is_none_or(|t| now >= t)
    }

    /// Brings a driver's index membership and online bookkeeping in line with its state, and
    /// offers a newly free driver to the waiting orders.
    fn refresh(&mut self, id: DriverId) {
        let now = Instant::now();
        let Some(d) = self.drivers.get(&id) else {
            return;
        };
        let online = self.is_online(d, now);
        let free = self.is_free(d, now);
        let was_indexed = d.indexed_at;
        let pos = d.pos;
        let Some(d) = self.drivers.get_mut(&id) else {
            return;
        };
        if online {
            d.offline_since = None;
        } else if d.offline_since.is_none() {
            d.offline_since = Some(now);
        }
        d.fleet_dirty = true;
        match (free, was_indexed, pos) {
            (true, Some(old), Some(new)) if old != new => {
                self.index.relocate(id, old, new);
                d.indexed_at = Some(new);
            }
            (true, None, Some(new)) => {
                self.index.insert(id, new);
                d.indexed_at = Some(new);
            }
            (false, Some(old), _) => {
                self.index.remove(id, old);
                d.indexed_at = None;
            }
            _ => {}
        }
        // A newly free driver is offered the queue at once; a moving one at most once a
        // second, so that location updates cannot turn into a queue scan each.
        let offer_due = was_indexed.is_none()
            || d.last_offer
                .is_none_or(|t| now.duration_since(t) >= OFFER_EVERY);
        if free && !self.waiting.is_empty() && offer_due {
            d.last_offer = Some(now);
            self.offer_driver(id);
        }
        self.publish_fleet(id);
    }

    fn location(&mut self, id: DriverId, p: GeoPoint) {
        self.location_at(id, p, Instant::now());
    }

    /// A location the driver sent at `at` (a re-announced one may be old: it counts as old).
    fn location_at(&mut self, id: DriverId, p: GeoPoint, at: Instant) {
        let d = self.drivers.entry(id).or_default();
        d.pos = Some(p);
        d.last_seen = Some(at);
        d.pos_dirty = true;
        self.refresh(id);
    }

    /// The oldest waiting order within range that this driver has not declined gets them.
    fn offer_driver(&mut self, id: DriverId) {
        let Some(pos) = self.drivers.get(&id).and_then(|d| d.indexed_at) else {
            return;
        };
        let now = Instant::now();
        let pick = self.queue.values().copied().find(|o| {
            let Some(w) = self.waiting.get(o) else {
                return false;
            };
            w.retry_at.is_none_or(|t| now >= t)
                && !self.declined.get(o).is_some_and(|s| s.contains(&id))
                && w.shop.haversine_m(pos) <= self.max_m
        });
        if let Some(order) = pick {
            let dist = self.waiting.get(&order).map(|w| w.shop.haversine_m(pos));
            self.assign(order, id, dist.unwrap_or(0.0));
        }
    }

    /// Finds the nearest free driver for a waiting order and starts the assignment.
    fn try_dispatch(&mut self, order: OrderId) {
        let Some(w) = self.waiting.get(&order) else {
            return;
        };
        if w.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let declined = self.declined.get(&order);
        let found = self.index.nearest(w.shop, self.max_m, |d| {
            declined.is_some_and(|s| s.contains(&d))
        });
        if let Some((driver, dist)) = found {
            self.assign(order, driver, dist);
        }
    }

    /// Reserves the driver (out of the free index) and commits `ready → assigned` off-loop.
    fn assign(&mut self, order: OrderId, driver: DriverId, distance_m: f64) {
        let Some(w) = self.dequeue(order) else { return };
        if let Some(d) = self.drivers.get_mut(&driver) {
            d.reserved = Some(order);
        }
        self.inflight.insert(order, (driver, Instant::now()));
        self.refresh(driver);
        // Keep what we need to put the order back if the commit fails.
        self.waiting_parked
            .insert(order, (w.version, w.shop, w.seq));
        let hub = self.hub.clone();
        let version = w.version;
        let epoch = self.epoch;
        let started = Instant::now();
        tokio::spawn(async move {
            let req = TransitionRequest {
                action: Action::Assign,
                expected_version: version,
                otp: None,
                reason: None,
            };
            let sys = SystemInput {
                assign_to: Some(driver),
                distance_m: Some(distance_m),
                waited_s: None,
                epoch,
            };
            let result = match hub.transition_with(Actor::SYSTEM, order, req, sys).await {
                Ok(_) => Ok(()),
                Err(Error::VersionConflict { current, .. })
                | Err(Error::InvalidTransition { current, .. }) => Err(AssignFailure::Moved(Some(
                    (current.status, current.version),
                ))),
                Err(Error::NotFound) => Err(AssignFailure::Moved(None)),
                Err(Error::DriverBusy) => Err(AssignFailure::DriverBusy),
                Err(e) => {
                    tracing::warn!(error = %e, %order, "assignment failed; will retry");
                    Err(AssignFailure::Transient)
                }
            };
            metrics::histogram!("hub_dispatch_commit_seconds")
                .record(started.elapsed().as_secs_f64());
            hub.dispatch.assigned(order, driver, result).await;
        });
    }

    fn assign_done(&mut self, order: OrderId, driver: DriverId, result: Result<(), AssignFailure>) {
        if self.inflight.get(&order).map(|f| f.0) != Some(driver) {
            // A late answer for a reservation that already expired (the order may be with
            // another attempt by now): only this driver's own reservation is undone.
            if result.is_err()
                && let Some(d) = self.drivers.get_mut(&driver)
                && d.reserved == Some(order)
            {
                d.reserved = None;
                self.refresh(driver);
            }
            return;
        }
        let parked = self.waiting_parked.remove(&order);
        let Err(failure) = result else { return };
        // The commit did not happen: the driver is free again, the order waits again.
        if self.inflight.get(&order).map(|f| f.0) == Some(driver) {
            self.inflight.remove(&order);
        }
        let now = Instant::now();
        if let Some(d) = self.drivers.get_mut(&driver)
            && d.reserved == Some(order)
        {
            d.reserved = None;
            if matches!(failure, AssignFailure::DriverBusy) {
                d.blocked_until = Some(now + BUSY_COOLDOWN);
            }
        }
        if let Some((version, shop, seq)) = parked {
            match failure {
                AssignFailure::Moved(Some((OrderStatus::Ready, v))) => {
                    self.enqueue_at(order, v, shop, seq)
                }
                AssignFailure::Moved(_) => {}
                AssignFailure::DriverBusy => self.enqueue_at(order, version, shop, seq),
                AssignFailure::Transient => {
                    self.enqueue_at(order, version, shop, seq);
                    if let Some(w) = self.waiting.get_mut(&order) {
                        w.retry_at = Some(now + RETRY_AFTER);
                    }
                }
            }
        }
        self.refresh(driver);
        self.try_dispatch(order);
    }
}
