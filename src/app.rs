//! Wiring: build the hub from a config and a pool, start the dispatcher, the sweeper and the
//! server, and shut it all down in order.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

use crate::cluster::{self, Cluster};
use crate::config::Config;
use crate::realtime::{Broker, LocalBroker, Registry};
use crate::service::Hub;
use crate::{dispatch, http, store};

/// A running hub: its address, its state, and the server task.
pub struct RunningHub {
    pub addr: SocketAddr,
    pub hub: Arc<Hub>,
    server: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
}

/// The process-wide Prometheus recorder (installed once, shared by every hub in the process).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .clone()
}

/// Builds the shared state of a single process without serving (for `seed-demo` and tests of
/// the service), and starts the task that resolves commits of unknown outcome.
pub fn build_hub(config: Arc<Config>, db: PgPool) -> (Arc<Hub>, dispatch::Receivers) {
    let registry = Arc::new(Registry::new());
    let broker = Arc::new(LocalBroker::new(registry.clone()));
    let cluster = Arc::new(Cluster::single(0, "local".into()));
    assemble(config, db, (registry, broker, cluster))
}

fn assemble(
    config: Arc<Config>,
    db: PgPool,
    parts: (Arc<Registry>, Arc<dyn Broker>, Arc<Cluster>),
) -> (Arc<Hub>, dispatch::Receivers) {
    let (handle, receivers) = dispatch::channel(parts.2.clone());
    let (hub, ambiguous) = Hub::new(db, config, parts, handle);
    let hub = Arc::new(hub);
    crate::service::reconcile::spawn(hub.clone(), ambiguous);
    (hub, receivers)
}

/// This node's registry, broker and cluster membership: registered in `cluster_nodes` (its id
/// prefixes its connection ids), on the bus when `HUB_NATS_URL` is set.
async fn join(
    config: &Config,
    db: &PgPool,
) -> anyhow::Result<(Arc<Registry>, Arc<dyn Broker>, Arc<Cluster>)> {
    let name = config
        .node_name
        .clone()
        .unwrap_or_else(|| config.bind.to_string());
    let node_id = cluster::register(db, &name).await?;
    let first = (node_id.max(0) as u64) << cluster::CONN_ID_BITS;
    let registry = Arc::new(Registry::with_first_conn_id(first));
    Ok(match &config.nats_url {
        None => (
            registry.clone(),
            Arc::new(LocalBroker::new(registry)),
            Arc::new(Cluster::single(node_id, name)),
        ),
        Some(url) => {
            let bus =
                cluster::bus::NatsBus::connect(url, &config.cluster_name, &name, registry.clone())
                    .await?;
            tracing::info!(node = node_id, %url, cluster = %config.cluster_name, "joining the cluster");
            (
                registry,
                bus.clone(),
                Arc::new(Cluster::member(node_id, name, bus)),
            )
        }
    })
}

/// Migrates, then starts the dispatcher, the timeout sweeper and the HTTP/WebSocket server.
pub async fn start(config: Config, db: PgPool) -> anyhow::Result<RunningHub> {
    store::MIGRATOR.run(&db).await?;
    let metrics = metrics_handle();
    let mut config = config;
    if config.secret.is_none() {
        tracing::warn!(
            "HUB_SECRET is not set: using a generated secret stored in the database; set HUB_SECRET so that a database dump alone cannot reveal OTPs"
        );
        let fresh = crate::service::auth::new_token().0;
        config.secret = Some(store::accounts::secret_or_create(&db, "otp", &fresh).await?);
    }
    let config = Arc::new(config);
    let parts = join(&config, &db).await?;
    let (hub, receivers) = assemble(config.clone(), db, parts);
    let dispatcher = dispatch::spawn(receivers);
    hub.dispatch.start(hub.clone()).await;
    if hub.cluster.is_clustered() {
        cluster::control::spawn(hub.clone()).await?;
        cluster::lease::spawn(hub.clone());
    }
    cluster::spawn_heartbeat(hub.clone());
    // Serve once the dispatcher has rebuilt its state (it normally takes milliseconds); if it
    // cannot yet (Postgres slow), serve anyway — /readyz says 503 until it has. (A cluster
    // node serves at once: another node may hold the lease.)
    let rebuilt = async {
        if hub.cluster.is_clustered() {
            return;
        }
        while !hub.dispatch.health.is_ready() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), rebuilt)
        .await
        .is_err()
    {
        tracing::warn!("dispatcher not rebuilt after 10 s; serving, /readyz says 503 until it is");
    }
    dispatch::sweeper::spawn(hub.clone());
    crate::service::auth::spawn_session_sweeper(hub.clone());
    store::health::spawn_probe(hub.db.clone(), hub.shutdown.clone());

    let socket = if config.bind.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(config.bind)?;
    let listener = socket.listen(4096)?;
    let addr = listener.local_addr()?;
    let app = http::router(hub.clone(), metrics);
    let shutdown = hub.shutdown.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "server stopped");
        }
    });
    tracing::info!(%addr, "dispatch-hub listening");
    Ok(RunningHub {
        addr,
        hub,
        server,
        dispatcher,
    })
}

impl RunningHub {
    /// Stops accepting, closes every socket with 1001 (a command still running finishes beside it),
    /// waits for the sessions and background writes, then returns.
    pub async fn shutdown(self) {
        self.hub.shutdown.cancel();
        let _ = self.server.await;
        self.hub.tasks.close();
        self.hub.tasks.wait().await;
        let _ = self.dispatcher.await;
        self.hub.db.close().await;
    }

    /// Runs until Ctrl-C or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
