//! The dispatcher: one task that owns the free-driver R-tree, the queue of orders waiting for
//! a driver, and every decision to assign. It is an actor — the only writer of assignments,
//! fed by channels — so its hot path takes no locks and a driver cannot be assigned twice by
//! construction. Assignments are still committed through the ordinary transition path (the
//! database's one-active-order-per-driver index stays as the safety net).

mod actor;
pub mod index;
pub mod sweeper;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::Cluster;
use crate::cluster::control::Forward;
use crate::domain::{DriverId, EventKind, GeoPoint, OrderId, OrderStatus, ShopId};
use crate::realtime::registry::ConnId;
use crate::service::Hub;

pub use actor::spawn;

/// A committed order change, as the dispatcher needs to know it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OrderChanged {
    pub id: OrderId,
    pub version: i32,
    pub shop_id: ShopId,
    pub status: OrderStatus,
    pub kind: EventKind,
    pub driver_id: Option<DriverId>,
    pub previous_driver: Option<DriverId>,
    /// The shop's position, given when the order became `ready`.
    pub shop_pos: Option<GeoPoint>,
}

/// A driver as the `fleet` topic shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DriverState {
    pub id: DriverId,
    /// The driver's name (null until the dispatcher has read it).
    pub name: Option<String>,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub state: &'static str,
    pub order_id: Option<OrderId>,
    /// While `busy`: `to_shop` (assigned, heading to the shop) or `carrying` (picked up).
    pub leg: Option<&'static str>,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub(crate) enum Control {
    Order(OrderChanged),
    Connected(DriverId, ConnId),
    Disconnected(DriverId, ConnId),
    Availability(DriverId, bool),
    /// A driver's name, read after they connected.
    Named(DriverId, String),
    Assigned {
        order: OrderId,
        driver: DriverId,
        result: Result<(), AssignFailure>,
    },
    Fleet(oneshot::Sender<Vec<DriverState>>),
    /// A grace-period action finished (`ok == false`: retry on a later tick).
    LossHandled {
        driver: DriverId,
        order: OrderId,
        ok: bool,
    },
    Start(Arc<Hub>),
    /// The `ready` orders in Postgres (id, version, shop position), read periodically: any the
    /// queue lacks are added (a missed change, a commit of unknown outcome).
    Reconcile(Vec<(OrderId, i32, GeoPoint)>),
    /// Debug builds of faults only (`HUB_DEBUG_FAULTS`): make the actor panic, to test its
    /// supervision.
    Crash,
}

/// Whether the dispatcher is up: its state rebuilt from Postgres, and its loop turning.
#[derive(Debug, Default)]
pub struct DispatchHealth {
    ready: std::sync::atomic::AtomicBool,
    /// Milliseconds since [`DispatchHealth::epoch`] at the loop's last turn.
    heartbeat_ms: std::sync::atomic::AtomicU64,
    epoch: std::sync::OnceLock<std::time::Instant>,
}

/// The loop turns at least every tick (250 ms); this long without a turn means it is stuck.
pub const STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

impl DispatchHealth {
    fn now_ms(&self) -> u64 {
        let epoch = self.epoch.get_or_init(std::time::Instant::now);
        epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.beat();
        self.ready
            .store(ready, std::sync::atomic::Ordering::Release);
        metrics::gauge!("hub_dispatch_ready").set(if ready { 1.0 } else { 0.0 });
    }

    pub(crate) fn beat(&self) {
        let now = self.now_ms();
        self.heartbeat_ms
            .store(now, std::sync::atomic::Ordering::Release);
    }

    /// Ready, and the loop turned recently.
    pub fn is_ready(&self) -> bool {
        let last = self.heartbeat_ms.load(std::sync::atomic::Ordering::Acquire);
        self.ready.load(std::sync::atomic::Ordering::Acquire)
            && self.now_ms().saturating_sub(last) < STUCK_AFTER.as_millis() as u64
    }
}

#[derive(Debug)]
pub(crate) enum AssignFailure {
    /// The order is no longer `ready` at this version (it holds the current status, version).
    Moved(Option<(OrderStatus, i32)>),
    /// The database said the driver already has an active order.
    DriverBusy,
    /// Anything transient: retry later.
    Transient,
}

pub(crate) struct Location(DriverId, GeoPoint);

/// Control messages queued for the dispatcher at most; senders wait (backpressure) beyond it.
const CONTROL_QUEUE: usize = 65_536;

/// The sending side of the dispatcher. Control messages are never dropped (a sender waits when
/// the queue is full; the actor itself never sends to it, so it cannot wait on itself);
/// locations are lossy under overload (the next one a driver sends supersedes it anyway).
///
/// In a cluster, the inputs that come from sockets and commits (order changes, driver
/// presence, locations) go to whichever node holds the dispatcher's lease: this node's actor
/// when it does, the bus otherwise (see [`crate::cluster::control::Forward`]).
#[derive(Clone)]
pub struct DispatchHandle {
    control: mpsc::Sender<Control>,
    locations: mpsc::Sender<Location>,
    pub health: Arc<DispatchHealth>,
    cluster: Arc<Cluster>,
}

impl DispatchHandle {
    /// Whether inputs go to this node's actor (false: to the leader, over the bus).
    fn here(&self) -> bool {
        self.cluster.is_leader()
    }

    fn forward(&self, f: Forward) {
        if let Some(bus) = &self.cluster.bus {
            match serde_json::to_vec(&f) {
                Ok(v) => {
                    bus.send(
                        bus.subject(crate::cluster::control::DISPATCH),
                        bytes::Bytes::from(v),
                    );
                }
                Err(e) => tracing::error!(error = %e, "dispatcher input not serialized"),
            }
        }
    }

    /// An input forwarded by another node (this node holds the lease).
    pub(crate) async fn take_forwarded(&self, f: Forward) {
        let m = match f {
            Forward::Order(c) => Control::Order(c),
            Forward::Connected { driver, conn } => Control::Connected(driver, conn),
            Forward::Disconnected { driver, conn } => Control::Disconnected(driver, conn),
            Forward::Availability { driver, available } => Control::Availability(driver, available),
            Forward::Location { driver, at } => {
                let _ = self.locations.try_send(Location(driver, at));
                return;
            }
        };
        let _ = self.control.send(m).await;
    }

    pub async fn order_changed(&self, c: OrderChanged) {
        if self.here() {
            let _ = self.control.send(Control::Order(c)).await;
        } else {
            self.forward(Forward::Order(c));
        }
    }

    pub async fn driver_connected(&self, driver: DriverId, conn: ConnId) {
        if self.here() {
            let _ = self.control.send(Control::Connected(driver, conn)).await;
        } else {
            self.forward(Forward::Connected { driver, conn });
        }
    }

    pub async fn driver_disconnected(&self, driver: DriverId, conn: ConnId) {
        if self.here() {
            let _ = self.control.send(Control::Disconnected(driver, conn)).await;
        } else {
            self.forward(Forward::Disconnected { driver, conn });
        }
    }

    pub async fn driver_availability(&self, driver: DriverId, available: bool) {
        if self.here() {
            let _ = self
                .control
                .send(Control::Availability(driver, available))
                .await;
        } else {
            self.forward(Forward::Availability { driver, available });
        }
    }

    pub(crate) async fn driver_named(&self, d: DriverId, name: String) {
        let _ = self.control.send(Control::Named(d, name)).await;
    }

    /// Returns false when the location was dropped because the dispatcher is overloaded.
    pub fn driver_location(&self, d: DriverId, at: GeoPoint) -> bool {
        if self.here() {
            self.locations.try_send(Location(d, at)).is_ok()
        } else {
            self.forward(Forward::Location { driver: d, at });
            true
        }
    }

    pub(crate) async fn loss_handled(&self, driver: DriverId, order: OrderId, ok: bool) {
        let _ = self
            .control
            .send(Control::LossHandled { driver, order, ok })
            .await;
    }

    pub(crate) async fn reconcile(&self, ready: Vec<(OrderId, i32, GeoPoint)>) {
        let _ = self.control.send(Control::Reconcile(ready)).await;
    }

    pub(crate) async fn assigned(
        &self,
        order: OrderId,
        driver: DriverId,
        result: Result<(), AssignFailure>,
    ) {
        let _ = self
            .control
            .send(Control::Assigned {
                order,
                driver,
                result,
            })
            .await;
    }

    /// Every known driver's state, for the `fleet` snapshot (asked of the leader in a
    /// cluster; empty if it does not answer within 2 s).
    pub async fn fleet(&self) -> serde_json::Value {
        if !self.here() {
            let Some(bus) = &self.cluster.bus else {
                return serde_json::Value::Array(Vec::new());
            };
            let asked = bus
                .client()
                .request(
                    bus.subject(crate::cluster::control::FLEET),
                    bytes::Bytes::new(),
                )
                .await;
            return match asked {
                Ok(m) => serde_json::from_slice(&m.payload)
                    .unwrap_or(serde_json::Value::Array(Vec::new())),
                Err(e) => {
                    tracing::warn!(error = %e, "the leader did not send its fleet");
                    serde_json::Value::Array(Vec::new())
                }
            };
        }
        serde_json::to_value(self.fleet_here().await).unwrap_or_default()
    }

    /// This node's dispatcher's drivers (empty when it does not dispatch).
    pub(crate) async fn fleet_here(&self) -> Vec<DriverState> {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Fleet(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Makes the actor panic (only reachable with `HUB_DEBUG_FAULTS`).
    pub async fn crash(&self) {
        let _ = self.control.send(Control::Crash).await;
    }

    /// Hands the dispatcher the hub it works for; it then rebuilds its state from Postgres.
    pub async fn start(&self, hub: Arc<Hub>) {
        let _ = self.control.send(Control::Start(hub)).await;
    }
}

/// Creates the channels; [`spawn`] runs the actor on the receiving ends.
pub fn channel(cluster: Arc<Cluster>) -> (DispatchHandle, Receivers) {
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (locations, locations_rx) = mpsc::channel(65_536);
    let health = Arc::new(DispatchHealth::default());
    (
        DispatchHandle {
            control,
            locations,
            health: health.clone(),
            cluster,
        },
        Receivers {
            control: control_rx,
            locations: locations_rx,
            health,
        },
    )
}

pub struct Receivers {
    control: mpsc::Receiver<Control>,
    locations: mpsc::Receiver<Location>,
    health: Arc<DispatchHealth>,
}
