//! # dispatch-hub
//!
//! A real-time dispatch hub for hyperlocal delivery. Vendors, drivers and buyers hold one
//! WebSocket each; orders move `pending → accepted → ready → assigned → picked_up → delivered`
//! (with reject, cancel, decline and failure branches); the moment an order is ready, the
//! dispatcher assigns the nearest free driver.
//!
//! Data walks one way: **request → service → store (one transaction) → broker → sockets**.
//!
//! - [`domain`]: pure types and rules — the order state machine, ids, geography. No I/O.
//! - [`store`]: every SQL statement. A transition is one transaction that bumps the order's
//!   `version` and appends the matching event.
//! - [`service`]: the use cases, shared by REST and socket commands (one code path). It holds a
//!   per-order lock from read to publish so that publish order equals commit order.
//! - [`realtime`]: topics, the fan-out registry (serialize once, never wait on a socket) and the
//!   per-socket session.
//! - [`dispatch`]: the dispatcher actor — the only owner of the free-driver R-tree and the only
//!   writer of assignments — and the vendor-timeout sweeper.
//! - [`http`]: axum routes, extractors, the error → response mapping.
//! - [`cluster`]: running as one node of several — the NATS broker, the dispatcher's lease
//!   (one leader, fenced by an epoch), and what nodes tell each other. Without `HUB_NATS_URL`
//!   the hub is a cluster of one.
//! - [`app`]: wiring and graceful shutdown; [`config`]: every knob.

pub mod app;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod http;
pub mod realtime;
pub mod seed;
pub mod service;
pub mod store;
