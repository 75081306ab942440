//! The HTTP front door: axum routers, one file per resource. Handlers only translate between
//! HTTP and the service; every decision lives in `service`.

mod accounts;
mod cluster;
mod config;
pub mod error;
pub mod extract;
mod orders;
mod shops;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::service_fn;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;

use crate::error::Error;
use crate::realtime::protocol::MAX_TEXT;
use crate::service::Hub;
use crate::store::health;

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(
    hub: Arc<Hub>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Router {
    let api = Router::new()
        .merge(accounts::routes())
        .merge(cluster::routes())
        .merge(config::routes())
        .merge(shops::routes())
        .merge(orders::routes())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(fail_fast));
    let web = ServeDir::new(&hub.config.web_dir)
        .append_index_html_on_directories(true)
        .not_found_service(service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(Error::NotFound.into_response())
        }));
    Router::new()
        .nest("/api", api)
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.map(|h| h.render()).unwrap_or_default() }
            }),
        )
        .route("/ws", get(ws))
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .fallback_service(web)
        .layer(TraceLayer::new_for_http())
        .with_state(hub)
}

/// While Postgres is known to be down, API requests answer 503 at once instead of waiting for
/// a pool timeout (see `store::health`).
async fn fail_fast(req: Request, next: Next) -> Response {
    match health::check() {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Ready when Postgres answers (within a second), the bus is connected (in a cluster), and
/// the dispatcher runs (on the node that holds its lease).
async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    if let Err(e) = health::check() {
        return e.into_response();
    }
    if !hub.broker.is_up() {
        return Error::Unavailable.into_response();
    }
    if hub.cluster.is_leader() && !hub.dispatch.health.is_ready() {
        return Error::Unavailable.into_response();
    }
    match tokio::time::timeout(health::PROBE_TIMEOUT, crate::store::ping(&hub.db)).await {
        Ok(Ok(())) => Json(serde_json::json!({"status": "ready"})).into_response(),
        _ => Error::Unavailable.into_response(),
    }
}

async fn ws(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return Error::BadRequest("expected a WebSocket upgrade".into()).into_response();
    };
    if hub.shutdown.is_cancelled() {
        return Error::Unavailable.into_response();
    }
    // Caps are checked before the upgrade: a refused client gets a 503 with the error body.
    let admission = match hub.conns.admit() {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let tasks = hub.tasks.clone();
    upgrade
        // Frames between 16 KiB and this hard cap are refused with close 1009 by the session.
        .max_message_size(4 * MAX_TEXT)
        .max_frame_size(4 * MAX_TEXT)
        .write_buffer_size(0)
        // Clients send small frames; the 128 KiB default would cost that much per socket.
        .read_buffer_size(4 * 1024)
        .on_upgrade(move |socket| {
            tasks.track_future(crate::realtime::session::run(hub, socket, peer, admission))
        })
}
