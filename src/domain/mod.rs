//! The pure core: the order state machine, ids, geography. No I/O, no async, no SQL —
//! everything here is deterministic and unit-tested without a database.

pub mod geo;
pub mod ids;
pub mod order;

pub use geo::GeoPoint;
pub use ids::{BuyerId, DriverId, OrderId, ProductId, ShopId};
pub use order::{Action, Actor, EventKind, OrderStatus, Parties, Plan, Role, TransitionError};
