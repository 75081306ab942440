//! The simulated participants: vendors (one socket per shop), drivers (one socket each) and
//! buyers (one socket each, plus the order generator that places orders over REST).
//!
//! Every actor keeps a [`Book`] of the orders it knows, updated with the client version rule
//! from snapshots, order messages, acks and the `order` carried by `version_conflict` /
//! `invalid_transition` errors; transitions are sent with `expected_version` = the version in
//! the book at the moment the frame is built.

pub mod buyer;
pub mod driver;
pub mod vendor;

use std::collections::HashMap;

use uuid::Uuid;

use crate::proto::{Order, Status};

/// What an actor holds about one order.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub status: Status,
    pub version: u64,
    pub driver: Option<Uuid>,
}

/// The orders an actor holds, newest version wins.
#[derive(Debug, Default)]
pub struct Book {
    orders: HashMap<Uuid, Held>,
}

impl Book {
    /// Apply `order` if its version is newer than the one held; returns whether it was.
    pub fn apply(&mut self, order: &Order) -> bool {
        let held = Held {
            status: order.status,
            version: order.version,
            driver: order.driver_id,
        };
        match self.orders.get_mut(&order.id) {
            Some(h) if h.version >= order.version => false,
            Some(h) => {
                *h = held;
                true
            }
            None => {
                self.orders.insert(order.id, held);
                true
            }
        }
    }

    pub fn get(&self, id: Uuid) -> Option<Held> {
        self.orders.get(&id).copied()
    }

    /// Forget an order that reached a final status (keeps long runs bounded).
    pub fn forget(&mut self, id: Uuid) {
        self.orders.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn book_keeps_newest() {
        let id = Uuid::new_v4();
        let o = |status, version| Order {
            id,
            shop_id: None,
            buyer_id: None,
            driver_id: None,
            status,
            version,
        };
        let mut b = Book::default();
        assert!(b.apply(&o(Status::Accepted, 2)));
        assert!(!b.apply(&o(Status::Pending, 1)));
        assert!(!b.apply(&o(Status::Accepted, 2)));
        assert_eq!(b.get(id).unwrap().status, Status::Accepted);
        assert!(b.apply(&o(Status::Ready, 3)));
        assert_eq!(b.get(id).unwrap().version, 3);
        b.forget(id);
        assert!(b.get(id).is_none());
    }
}
