//! A driver: subscribed to `driver:<id>`, sends a `location` at once and then every
//! `--location-interval` on a random walk inside the bounding box. On an `assigned` order it
//! picks up after a short random delay (or, with probability `--decline-rate`, declines), then
//! delivers with the OTP the buyer handed over in-process.
//!
//! The driver topic carries every event of an order while it is assigned to this driver, in
//! commit order, so "a driver holding two active orders" is checked here race-free.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::Book;
use crate::cli::BBox;
use crate::metrics::{Metrics, Violation};
use crate::proto::{Action, ClientMsg, Event, Kind, Order, Status};
use crate::ws::{Actor, Outbox, TopicKind};

/// Longest a driver waits for the OTP to show up in the hand-over map (it is filled when the
/// buyer's `POST /api/orders` returns, which normally happened long before).
const OTP_WAIT_STEPS: u8 = 25;
const OTP_WAIT_STEP: Duration = Duration::from_millis(200);
/// Largest random-walk step per location update, in degrees (~100 m).
const WALK_STEP_DEG: f64 = 0.0009;
/// Retries of a refused transition per order (each needs a newer version from the hub).
const MAX_RETRIES: u8 = 3;

/// A deferred driver action.
#[derive(Debug)]
pub enum DriverCmd {
    PickUp(Uuid),
    Decline(Uuid),
    Deliver(Uuid, u8),
}

/// Behaviour knobs shared by all drivers.
#[derive(Debug, Clone, Copy)]
pub struct DriverParams {
    pub bbox: BBox,
    pub location_interval: Duration,
    pub delay: Duration,
    pub decline_rate: f64,
}

pub struct Driver {
    id: Uuid,
    params: DriverParams,
    metrics: Arc<Metrics>,
    book: Book,
    pos: (f64, f64),
    rng: SmallRng,
    /// The active order the hub gave this driver, from this socket's own events.
    active: Option<Uuid>,
    retries: HashMap<Uuid, u8>,
}

impl Driver {
    pub fn new(id: Uuid, params: DriverParams, metrics: Arc<Metrics>) -> Self {
        let mut rng = SmallRng::from_entropy();
        let b = params.bbox;
        let pos = (
            rng.gen_range(b.min_lat..=b.max_lat),
            rng.gen_range(b.min_lng..=b.max_lng),
        );
        Driver {
            id,
            params,
            metrics,
            book: Book::default(),
            pos,
            rng,
            active: None,
            retries: HashMap::new(),
        }
    }

    fn delay(&mut self) -> Duration {
        let d = self.params.delay;
        d + d.mul_f64(self.rng.gen_range(0.0..=1.0))
    }

    fn send_location(&mut self, out: &mut Outbox<DriverCmd>) {
        let (lat, lng) = self.pos;
        out.send(&ClientMsg::Location { lat, lng });
    }

    fn walk(&mut self) {
        let (lat, lng) = self.pos;
        let dlat = self.rng.gen_range(-WALK_STEP_DEG..=WALK_STEP_DEG);
        let dlng = self.rng.gen_range(-WALK_STEP_DEG..=WALK_STEP_DEG) * 1.6;
        self.pos = self.params.bbox.clamp(lat + dlat, lng + dlng);
    }

    /// An order was (re)assigned to this driver: decide what to do with it.
    fn react(&mut self, id: Uuid, out: &mut Outbox<DriverCmd>) {
        let d = self.delay();
        if self.rng.gen_bool(self.params.decline_rate) {
            out.after(d, DriverCmd::Decline(id));
        } else {
            out.after(d, DriverCmd::PickUp(id));
        }
    }

    fn mine(&self, id: Uuid, status: Status) -> Option<u64> {
        self.book
            .get(id)
            .filter(|h| h.status == status && h.driver == Some(self.id))
            .map(|h| h.version)
    }

    fn take_active(&mut self, id: Uuid, version: u64) {
        if let Some(other) = self.active.filter(|a| *a != id) {
            let me = self.id;
            self.metrics.violation(Violation::DriverTwoOrders, || {
                format!("driver {me} got order {id} (v{version}) while holding {other}")
            });
        }
        self.active = Some(id);
    }
}

impl Actor for Driver {
    type Cmd = DriverCmd;

    fn topic_kind(&self) -> TopicKind {
        TopicKind::WhileAssigned
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.params.location_interval)
    }

    fn on_subscribed(&mut self, orders: &[Order], out: &mut Outbox<DriverCmd>) {
        self.send_location(out);
        // A fresh connection: its snapshot is the whole truth about what this driver holds.
        self.active = None;
        for o in orders {
            self.book.apply(o);
            match o.status {
                Status::Assigned => {
                    self.take_active(o.id, o.version);
                    self.react(o.id, out);
                }
                Status::PickedUp => {
                    self.take_active(o.id, o.version);
                    let d = self.delay();
                    out.after(d, DriverCmd::Deliver(o.id, 0));
                }
                _ => {}
            }
        }
    }

    fn on_tick(&mut self, out: &mut Outbox<DriverCmd>) {
        self.walk();
        self.send_location(out);
    }

    fn on_order(&mut self, event: &Event, order: &Order, out: &mut Outbox<DriverCmd>) {
        let now = Instant::now();
        let about = match event.kind {
            Kind::Declined | Kind::Unassigned => event.payload.as_ref().and_then(|p| p.driver_id),
            _ => order.driver_id,
        };
        if about.is_some_and(|d| d != self.id) {
            let me = self.id;
            self.metrics.violation(Violation::Misrouted, || {
                format!(
                    "{} of order {} for driver {:?} on driver:{me}",
                    event.kind.as_str(),
                    order.id,
                    about
                )
            });
            return;
        }
        self.book.apply(order);
        match event.kind {
            Kind::Assigned => {
                self.take_active(order.id, order.version);
                self.metrics.driver_assigned(order.id, now);
                self.react(order.id, out);
            }
            Kind::PickedUp => {
                let d = self.delay();
                out.after(d, DriverCmd::Deliver(order.id, 0));
            }
            Kind::Delivered | Kind::DeliveryFailed | Kind::Declined | Kind::Unassigned => {
                if self.active == Some(order.id) {
                    self.active = None;
                }
                self.book.forget(order.id);
                self.retries.remove(&order.id);
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cmd: DriverCmd, out: &mut Outbox<DriverCmd>) {
        match cmd {
            DriverCmd::PickUp(id) => {
                if let Some(v) = self.mine(id, Status::Assigned) {
                    out.transition(id, Action::PickUp, v, None);
                }
            }
            DriverCmd::Decline(id) => {
                if let Some(v) = self.mine(id, Status::Assigned) {
                    out.transition(id, Action::Decline, v, None);
                }
            }
            DriverCmd::Deliver(id, waited) => {
                let Some(v) = self.mine(id, Status::PickedUp) else {
                    return;
                };
                let otp = self.metrics.otps.get(&id).map(|o| o.value().clone());
                match otp {
                    Some(otp) => out.transition(id, Action::Deliver, v, Some(&otp)),
                    None if waited < OTP_WAIT_STEPS => {
                        out.after(OTP_WAIT_STEP, DriverCmd::Deliver(id, waited + 1));
                    }
                    None => {
                        self.metrics.error("harness:otp_missing");
                        out.transition(id, Action::FailDelivery, v, None);
                    }
                }
            }
        }
    }

    fn on_ack(&mut self, order: &Order, _out: &mut Outbox<DriverCmd>) {
        self.book.apply(order);
    }

    fn on_retry(&mut self, action: Action, id: Uuid, out: &mut Outbox<DriverCmd>) {
        // the same checks as the first time: the order must still be ours, in the same state
        match action {
            Action::PickUp => self.on_timer(DriverCmd::PickUp(id), out),
            Action::Decline => self.on_timer(DriverCmd::Decline(id), out),
            Action::Deliver => self.on_timer(DriverCmd::Deliver(id, 0), out),
            Action::FailDelivery => {
                if let Some(v) = self.mine(id, Status::PickedUp) {
                    out.transition(id, Action::FailDelivery, v, None);
                }
            }
            Action::Accept | Action::MarkReady => {}
        }
    }

    fn on_transition_error(
        &mut self,
        action: Action,
        id: Uuid,
        code: &str,
        current: Option<&Order>,
        out: &mut Outbox<DriverCmd>,
    ) {
        if let Some(cur) = current {
            self.book.apply(cur);
        }
        let tries = self.retries.entry(id).or_insert(0);
        *tries += 1;
        if *tries > MAX_RETRIES {
            return;
        }
        match (action, code) {
            // our view was behind but the order is still ours in the same state: try again
            (Action::PickUp | Action::Decline, "version_conflict") => {
                if let Some(v) = self.mine(id, Status::Assigned) {
                    out.transition(id, action, v, None);
                }
            }
            (Action::Deliver, "version_conflict") if self.mine(id, Status::PickedUp).is_some() => {
                out.after(Duration::ZERO, DriverCmd::Deliver(id, 0));
            }
            // the OTP cannot be used any more: report the failed delivery
            (Action::Deliver, "otp_locked") => {
                if let Some(v) = self.mine(id, Status::PickedUp) {
                    out.transition(id, Action::FailDelivery, v, None);
                }
            }
            _ => {}
        }
    }
}
