//! The order state machine: which action moves an order from which status to which, and who
//! may perform it. Pure: the store applies a [`Plan`] in one transaction, the service decides
//! who the actor is, and this module decides whether the move is legal.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ids::{BuyerId, DriverId, ShopId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Vendor,
    Driver,
    Admin,
    /// The hub itself: the dispatcher and the timeout sweeper.
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Vendor => "vendor",
            Role::Driver => "driver",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "buyer" => Role::Buyer,
            "vendor" => Role::Vendor,
            "driver" => Role::Driver,
            "admin" => Role::Admin,
            "system" => Role::System,
            _ => return None,
        })
    }
}

/// Who performs an action: a role and, except for admin and system, the subject's id
/// (a buyer id, a shop id for vendors, a driver id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub role: Role,
    pub id: Option<Uuid>,
}

impl Actor {
    pub const SYSTEM: Actor = Actor {
        role: Role::System,
        id: None,
    };
    pub const ADMIN: Actor = Actor {
        role: Role::Admin,
        id: None,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Accepted,
    Rejected,
    Cancelled,
    Ready,
    Assigned,
    PickedUp,
    Delivered,
    DeliveryFailed,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::Pending,
        OrderStatus::Accepted,
        OrderStatus::Rejected,
        OrderStatus::Cancelled,
        OrderStatus::Ready,
        OrderStatus::Assigned,
        OrderStatus::PickedUp,
        OrderStatus::Delivered,
        OrderStatus::DeliveryFailed,
    ];
    pub const ACTIVE: [&'static str; 5] = ["pending", "accepted", "ready", "assigned", "picked_up"];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Accepted => "accepted",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Ready => "ready",
            OrderStatus::Assigned => "assigned",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::Delivered => "delivered",
            OrderStatus::DeliveryFailed => "delivery_failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Final statuses never change again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Rejected
                | OrderStatus::Cancelled
                | OrderStatus::Delivered
                | OrderStatus::DeliveryFailed
        )
    }

    /// A driver is attached exactly in these statuses.
    pub fn has_driver(self) -> bool {
        matches!(
            self,
            OrderStatus::Assigned
                | OrderStatus::PickedUp
                | OrderStatus::Delivered
                | OrderStatus::DeliveryFailed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Accept,
    Reject,
    Cancel,
    MarkReady,
    Assign,
    Decline,
    Unassign,
    PickUp,
    Deliver,
    FailDelivery,
    ReportDriverLost,
    /// The dispatcher found no driver for a `ready` order within `HUB_READY_ALERT_S`.
    ReportDispatchDelayed,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::Accept,
        Action::Reject,
        Action::Cancel,
        Action::MarkReady,
        Action::Assign,
        Action::Decline,
        Action::Unassign,
        Action::PickUp,
        Action::Deliver,
        Action::FailDelivery,
        Action::ReportDriverLost,
        Action::ReportDispatchDelayed,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Accepted,
    Rejected,
    Cancelled,
    Ready,
    Assigned,
    Declined,
    Unassigned,
    PickedUp,
    Delivered,
    DeliveryFailed,
    DriverLost,
    DispatchDelayed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Accepted => "accepted",
            EventKind::Rejected => "rejected",
            EventKind::Cancelled => "cancelled",
            EventKind::Ready => "ready",
            EventKind::Assigned => "assigned",
            EventKind::Declined => "declined",
            EventKind::Unassigned => "unassigned",
            EventKind::PickedUp => "picked_up",
            EventKind::Delivered => "delivered",
            EventKind::DeliveryFailed => "delivery_failed",
            EventKind::DriverLost => "driver_lost",
            EventKind::DispatchDelayed => "dispatch_delayed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        use EventKind::*;
        [
            Created,
            Accepted,
            Rejected,
            Cancelled,
            Ready,
            Assigned,
            Declined,
            Unassigned,
            PickedUp,
            Delivered,
            DeliveryFailed,
            DriverLost,
            DispatchDelayed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The parties of an order, needed to decide who may act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parties {
    pub shop_id: ShopId,
    pub buyer_id: BuyerId,
    pub driver_id: Option<DriverId>,
}

/// What happens to the order's driver in a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChange {
    Keep,
    Set(DriverId),
    Clear,
}

/// A legal transition, ready to be written: new status, the event to append, the driver change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub to: OrderStatus,
    pub kind: EventKind,
    pub driver: DriverChange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// This actor may never perform this action on this order.
    #[error("{role} may not {action:?} this order", role = .role.as_str())]
    Forbidden { role: Role, action: Action },
    /// The actor may, but not from the order's current status.
    #[error("cannot {action:?} an order that is {from}", from = .from.as_str())]
    Invalid { from: OrderStatus, action: Action },
    /// `assign` names no driver.
    #[error("assign needs a driver")]
    MissingDriver,
}

/// Decides whether `actor` may perform `action` on an order in `status` with these `parties`.
/// `assign_to` is the driver for [`Action::Assign`] and ignored otherwise.
///
/// The check runs in two steps so that errors are honest: first *who* (forbidden whatever the
/// status), then *when* (allowed for this actor, but not from this status).
pub fn plan(
    status: OrderStatus,
    action: Action,
    actor: Actor,
    parties: Parties,
    assign_to: Option<DriverId>,
) -> Result<Plan, TransitionError> {
    use Action::*;
    use OrderStatus::*;

    let is_vendor = actor.role == Role::Vendor && actor.id == Some(parties.shop_id.0);
    let is_buyer = actor.role == Role::Buyer && actor.id == Some(parties.buyer_id.0);
    let is_driver = actor.role == Role::Driver
        && actor.id.is_some()
        && parties.driver_id.map(|d| d.0) == actor.id;
    let is_system = actor.role == Role::System;
    let is_admin = actor.role == Role::Admin;

    let allowed = match action {
        Accept | Reject | MarkReady => is_vendor,
        Cancel => is_vendor || is_buyer || is_system || is_admin,
        Assign | ReportDriverLost | ReportDispatchDelayed => is_system,
        Unassign => is_system || is_admin,
        Decline | PickUp | Deliver => is_driver,
        FailDelivery => is_driver || is_admin,
    };
    if !allowed {
        return Err(TransitionError::Forbidden {
            role: actor.role,
            action,
        });
    }

    let (to, kind, driver) = match (status, action) {
        (Pending, Accept) => (Accepted, EventKind::Accepted, DriverChange::Keep),
        (Pending, Reject) => (Rejected, EventKind::Rejected, DriverChange::Keep),
        (Pending | Accepted, Cancel) => (Cancelled, EventKind::Cancelled, DriverChange::Keep),
        // The admin's exits: every non-final order can be cancelled or failed, and an order
        // whose driver is gone can go back to dispatch.
        (Ready | Assigned | PickedUp, Cancel) if is_admin => {
            (Cancelled, EventKind::Cancelled, DriverChange::Clear)
        }
        (Assigned, FailDelivery) if is_admin => (
            DeliveryFailed,
            EventKind::DeliveryFailed,
            DriverChange::Keep,
        ),
        (PickedUp, Unassign) if is_admin => (Ready, EventKind::Unassigned, DriverChange::Clear),
        (Accepted, MarkReady) => (Ready, EventKind::Ready, DriverChange::Keep),
        (Ready, Assign) => {
            let d = assign_to.ok_or(TransitionError::MissingDriver)?;
            (Assigned, EventKind::Assigned, DriverChange::Set(d))
        }
        (Assigned, Decline) => (Ready, EventKind::Declined, DriverChange::Clear),
        (Assigned, Unassign) => (Ready, EventKind::Unassigned, DriverChange::Clear),
        (Assigned, PickUp) => (PickedUp, EventKind::PickedUp, DriverChange::Keep),
        (PickedUp, Deliver) => (Delivered, EventKind::Delivered, DriverChange::Keep),
        (PickedUp, FailDelivery) => (
            DeliveryFailed,
            EventKind::DeliveryFailed,
            DriverChange::Keep,
        ),
        (PickedUp, ReportDriverLost) => (PickedUp, EventKind::DriverLost, DriverChange::Keep),
        (Ready, ReportDispatchDelayed) => (Ready, EventKind::DispatchDelayed, DriverChange::Keep),
        (from, action) => return Err(TransitionError::Invalid { from, action }),
    };
    Ok(Plan { to, kind, driver })
}

#[cfg(test)]
mod tests;
