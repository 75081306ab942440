//! The application: every use case the REST routes and socket commands share. A transition
//! walks one way — authorize → one store transaction → publish to sockets → tell the
//! dispatcher — and both front doors call the same function, so there is one code path.

pub mod auth;
pub mod catalog;
pub mod hashing;
pub mod limiter;
pub mod login_account;
pub mod orders;
pub mod reconcile;
pub mod sessions;
pub mod views;

use std::sync::Arc;

use dashmap::DashMap;
use sqlx::PgPool;
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::dispatch::DispatchHandle;
use crate::domain::{GeoPoint, OrderId, ShopId};
use crate::realtime::conns::Connections;
use crate::realtime::registry::{ConnId, Subscriber};
use crate::realtime::{Broker, Registry, Topic};

/// Trims a client-supplied text field and checks its length (in characters) and that it holds
/// no control characters (Postgres refuses NUL, and none belong in a name or an address).
pub fn text<'a>(field: &str, s: &'a str, min: usize, max: usize) -> crate::error::Result<&'a str> {
    let t = s.trim();
    let n = t.chars().count();
    if n < min || n > max {
        return Err(crate::error::Error::validation(format!(
            "{field} must be {min} to {max} characters"
        )));
    }
    if t.chars().any(char::is_control) {
        return Err(crate::error::Error::validation(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(t)
}

/// Number of stripes of the per-order lock.
const ORDER_LOCK_STRIPES: usize = 4096;

/// The shared state of one running hub.
pub struct Hub {
    pub db: PgPool,
    pub config: Arc<Config>,
    pub registry: Arc<Registry>,
    /// Where committed events go: this node's registry, and in a cluster the bus.
    pub broker: Arc<dyn Broker>,
    /// This node's place in the cluster (a cluster of one without `HUB_NATS_URL`).
    pub cluster: Arc<Cluster>,
    pub dispatch: DispatchHandle,
    pub secrets: auth::Secrets,
    pub limiter: limiter::LoginLimiter,
    pub signups: limiter::SignupLimiter,
    /// Writes transitions, grouping those that arrive together into one commit.
    pub writer: crate::store::orders::Writer,
    /// Every Argon2id hash and check of a login code runs here (fixed threads and memory).
    pub hashing: hashing::HashPool,
    /// Socket caps and the live sockets of each account (for revocation).
    pub conns: Connections,
    /// Live sessions, so that a request need not read its session row (revocation is pushed).
    pub sessions: sessions::SessionCache,
    /// Transitions whose commit outcome is unknown, for [`reconcile`].
    ambiguous: tokio::sync::mpsc::Sender<reconcile::Ambiguous>,
    /// Orders with a commit of unknown outcome still to resolve; a later successful commit of
    /// the order (which publishes) takes it off.
    unresolved: DashMap<OrderId, ()>,
    /// Cancelled when the hub shuts down.
    pub shutdown: CancellationToken,
    /// Socket sessions and background tasks, awaited on shutdown.
    pub tasks: TaskTracker,
    order_locks: Vec<Mutex<()>>,
    shop_positions: DashMap<ShopId, GeoPoint>,
}

impl Hub {
    /// The hub, and the receiving end of its ambiguous-commit queue (for [`reconcile::spawn`]).
    pub fn new(
        db: PgPool,
        config: Arc<Config>,
        (registry, broker, cluster): (Arc<Registry>, Arc<dyn Broker>, Arc<Cluster>),
        dispatch: DispatchHandle,
    ) -> (Self, tokio::sync::mpsc::Receiver<reconcile::Ambiguous>) {
        let (ambiguous, ambiguous_rx) = reconcile::channel();
        let secrets = auth::Secrets::new(
            config.admin_token.as_deref(),
            config.secret.as_deref(),
            config.login_hash_kib,
        );
        let limiter = limiter::LoginLimiter::new(limiter::LoginPolicy {
            account_budget: config.login_account_budget,
            address_failures: config.login_address_failures,
            ..limiter::LoginPolicy::default()
        });
        let signups = limiter::SignupLimiter::new(config.signups_per_address_h, 100_000);
        let hashing = hashing::HashPool::new(config.hash_workers, config.hash_queue);
        let conns = Connections::new(
            config.effective_max_connections(),
            config.max_unauthenticated,
            config.max_sockets_per_account,
        );
        let writer =
            crate::store::orders::Writer::new(&db, config.write_group, config.db_max_connections);
        let hub = Self {
            ambiguous,
            unresolved: DashMap::new(),
            db,
            writer,
            config,
            registry,
            broker,
            cluster,
            dispatch,
            secrets,
            limiter,
            signups,
            hashing,
            conns,
            sessions: sessions::SessionCache::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            order_locks: (0..ORDER_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            shop_positions: DashMap::new(),
        };
        (hub, ambiguous_rx)
    }

    /// Serializes commit-and-publish per order. Two transitions of one order can never both
    /// commit (optimistic versioning) — but without this lock the publish of the earlier one
    /// could overtake the later one between commit and fan-out. Holding the stripe from read to
    /// publish makes publish order equal commit order.
    pub async fn lock_order(&self, id: OrderId) -> MutexGuard<'_, ()> {
        let stripe = (id.0.as_u128() as usize) % ORDER_LOCK_STRIPES;
        self.order_locks[stripe].lock().await
    }

    /// Registers a socket for a topic on this node and, the first time, on the bus; resolves
    /// once events committed from now on will reach it. False when it already was.
    pub async fn subscribe(
        &self,
        topic: Topic,
        conn: ConnId,
        sub: Subscriber,
    ) -> crate::error::Result<bool> {
        let fresh = self.registry.subscribe(topic, conn, sub);
        if fresh && let Err(e) = self.broker.watch(topic).await {
            // Unwatches only if the socket is still registered (a socket that closed meanwhile
            // already did): one unwatch per registration, whatever the interleaving.
            self.unsubscribe(topic, conn);
            return Err(e);
        }
        Ok(fresh)
    }

    /// Undoes [`Hub::subscribe`].
    pub fn unsubscribe(&self, topic: Topic, conn: ConnId) -> bool {
        let removed = self.registry.unsubscribe(topic, conn);
        if removed {
            self.broker.unwatch(topic);
        }
        removed
    }

    /// A shop's position (shops do not move, so it is cached after the first read).
    pub async fn shop_position(&self, shop: ShopId) -> crate::error::Result<Option<GeoPoint>> {
        if let Some(p) = self.shop_positions.get(&shop) {
            return Ok(Some(*p));
        }
        let Some(s) = crate::store::accounts::get_shop(&self.db, shop.0).await? else {
            return Ok(None);
        };
        let p = GeoPoint {
            lat: s.lat,
            lng: s.lng,
        };
        self.shop_positions.insert(shop, p);
        Ok(Some(p))
    }
}
