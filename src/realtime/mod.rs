//! The live half of the hub: topics, the registry that fans committed events out to sockets,
//! the wire protocol, and one session task per socket.
//!
//! Fan-out rules: an event is serialized once per topic and the same bytes are shared by every
//! subscriber; publishing never awaits a socket (each connection has a bounded queue, and a
//! connection whose queue is full is closed with 4408 instead of slowing anyone down).

pub mod broker;
pub mod conns;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod topic;

pub use broker::{Broker, LocalBroker};
pub use registry::{OrderMessage, Outbound, Registry};
pub use topic::Topic;
