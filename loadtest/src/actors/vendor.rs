//! A shop's vendor: subscribed to `shop:<id>`, accepts every new order at once and marks it
//! ready after the preparation time, both with socket `transition` commands.
//!
//! The shop topic carries every event of the shop's orders in commit order, so this actor is
//! also where the run-wide per-order checks (double assignment, final status) are fed from.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::Book;
use crate::metrics::{Metrics, Violation};
use crate::proto::{Action, Event, Kind, Order, Status};
use crate::ws::{Actor, Outbox, TopicKind};

/// A deferred vendor action.
#[derive(Debug)]
pub enum VendorCmd {
    MarkReady(Uuid),
}

pub struct Vendor {
    shop: Uuid,
    prep: Duration,
    metrics: Arc<Metrics>,
    book: Book,
    /// (order, action) pairs already retried once after a `version_conflict`.
    retried: HashSet<(Uuid, Action)>,
}

impl Vendor {
    pub fn new(shop: Uuid, prep: Duration, metrics: Arc<Metrics>) -> Self {
        Vendor {
            shop,
            prep,
            metrics,
            book: Book::default(),
            retried: HashSet::new(),
        }
    }

    fn act_on(&mut self, id: Uuid, out: &mut Outbox<VendorCmd>) {
        let Some(h) = self.book.get(id) else { return };
        match h.status {
            Status::Pending => out.transition(id, Action::Accept, h.version, None),
            Status::Accepted => out.after(self.prep, VendorCmd::MarkReady(id)),
            _ => {}
        }
    }
}

impl Actor for Vendor {
    type Cmd = VendorCmd;

    fn topic_kind(&self) -> TopicKind {
        TopicKind::EveryEvent
    }

    fn on_subscribed(&mut self, orders: &[Order], out: &mut Outbox<VendorCmd>) {
        // After a reconnect the snapshot tells what is still to do.
        for o in orders {
            self.metrics.shop_snapshot_order(o);
            self.book.apply(o);
            self.act_on(o.id, out);
        }
    }

    fn on_order(&mut self, event: &Event, order: &Order, out: &mut Outbox<VendorCmd>) {
        let now = Instant::now();
        if order.shop_id.is_some_and(|s| s != self.shop) {
            self.metrics.violation(Violation::Misrouted, || {
                format!("order {} of another shop on shop:{}", order.id, self.shop)
            });
            return;
        }
        self.metrics.shop_event(event, order);
        self.book.apply(order);
        match event.kind {
            Kind::Created => {
                self.metrics.vendor_saw_created(order.id, now);
                out.transition(order.id, Action::Accept, order.version, None);
            }
            Kind::Accepted => out.after(self.prep, VendorCmd::MarkReady(order.id)),
            _ if order.status.is_final() => {
                self.book.forget(order.id);
                self.retried.remove(&(order.id, Action::Accept));
                self.retried.remove(&(order.id, Action::MarkReady));
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, cmd: VendorCmd, out: &mut Outbox<VendorCmd>) {
        let VendorCmd::MarkReady(id) = cmd;
        if let Some(h) = self.book.get(id)
            && h.status == Status::Accepted
        {
            out.transition(id, Action::MarkReady, h.version, None);
        }
    }

    fn on_ack(&mut self, order: &Order, _out: &mut Outbox<VendorCmd>) {
        self.book.apply(order);
    }

    fn on_retry(&mut self, action: Action, id: Uuid, out: &mut Outbox<VendorCmd>) {
        let Some(h) = self.book.get(id) else { return };
        match (action, h.status) {
            (Action::Accept, Status::Pending) | (Action::MarkReady, Status::Accepted) => {
                out.transition(id, action, h.version, None);
            }
            _ => {}
        }
    }

    fn on_transition_error(
        &mut self,
        action: Action,
        id: Uuid,
        code: &str,
        current: Option<&Order>,
        out: &mut Outbox<VendorCmd>,
    ) {
        let Some(cur) = current else { return };
        self.book.apply(cur);
        // A version conflict means our view was behind: decide again once from the hub's state.
        if code == "version_conflict" && self.retried.insert((id, action)) {
            match (action, cur.status) {
                (Action::Accept, Status::Pending) | (Action::MarkReady, Status::Accepted) => {
                    out.transition(id, action, cur.version, None);
                }
                _ => {}
            }
        }
    }
}
