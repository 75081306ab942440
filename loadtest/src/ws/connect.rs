//! Opening one socket: TCP connect from a chosen loopback source address, WebSocket upgrade,
//! `auth` → `welcome`, `subscribe` → `snapshot`. Failures become keys for the error table
//! (`connect:<stage>:<reason>`), with the `Retry-After` of a refused upgrade.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Net, SocketSpec};
use crate::metrics::Metrics;
use crate::nodes;
use crate::proto::{ClientMsg, Order, ServerMsg};

pub(super) type Ws = WebSocketStream<TcpStream>;

/// Small buffers: thousands of mostly idle sockets must stay cheap.
fn ws_config() -> WebSocketConfig {
    let mut c = WebSocketConfig::default();
    c.read_buffer_size = 4 * 1024;
    c.write_buffer_size = 0;
    c.max_write_buffer_size = 1 << 20;
    c.max_message_size = Some(16 << 20);
    c.max_frame_size = Some(16 << 20);
    c
}

/// Why a socket could not be opened.
#[derive(Debug)]
pub(super) struct OpenError {
    /// The key for the error table (`connect:<stage>:<reason>`).
    pub(super) key: String,
    /// `Retry-After` of a 503 answer to the upgrade (`too_many_connections`).
    pub(super) retry_after: Option<Duration>,
    /// The node is gone (see [`crate::nodes`]): try the next one.
    pub(super) node_down: bool,
}

impl OpenError {
    fn down(key: String, node_down: bool) -> Self {
        OpenError {
            key,
            retry_after: None,
            node_down,
        }
    }

    fn ws(stage: &str, e: &tokio_tungstenite::tungstenite::Error) -> Self {
        OpenError::down(
            format!("connect:{stage}:{}", short_ws_error(e)),
            nodes::ws_down(e),
        )
    }
}

impl From<String> for OpenError {
    fn from(key: String) -> Self {
        OpenError::down(key, false)
    }
}

impl From<&str> for OpenError {
    fn from(key: &str) -> Self {
        key.to_string().into()
    }
}

/// Connect to `net.nodes[node]`, upgrade, authenticate and subscribe. Returns the socket and
/// its snapshot, or why not.
pub(super) async fn open(
    net: &Net,
    node: usize,
    metrics: &Metrics,
    spec: &SocketSpec,
) -> Result<(Ws, Vec<Order>), OpenError> {
    let Some(hub) = net.nodes.get(node) else {
        return Err("connect:no_node".into());
    };
    let sock = if hub.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("connect:socket:{:?}", e.kind()))?;
    if let Some(ip) = spec.source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("connect:bind:{:?}", e.kind()))?;
    }
    let stream = sock.connect(hub.addr).await.map_err(|e| {
        OpenError::down(
            format!("connect:tcp:{:?}", e.kind()),
            nodes::io_down(e.kind()),
        )
    })?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(hub.ws_url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(|e| OpenError {
                retry_after: upgrade_retry_after(&e),
                ..OpenError::ws("upgrade", &e)
            })?;
    send_text(&mut ws, ClientMsg::Auth { token: &spec.token }.to_json())
        .await
        .map_err(|e| OpenError::ws("auth_send", &e))?;
    metrics.msgs_out.fetch_add(1, Relaxed);
    match next_msg(&mut ws, metrics).await? {
        ServerMsg::Welcome => {}
        ServerMsg::Error { code, .. } => return Err(format!("connect:auth:{code}").into()),
        _ => return Err("connect:auth:unexpected_frame".into()),
    }
    let sub = ClientMsg::Subscribe {
        topic: &spec.topic,
        reference: "sub",
    };
    send_text(&mut ws, sub.to_json())
        .await
        .map_err(|e| OpenError::ws("subscribe_send", &e))?;
    metrics.msgs_out.fetch_add(1, Relaxed);
    // Only the snapshot (or an error) can answer a single subscribe; skip anything else
    // (a pong, say), but not forever.
    for _ in 0..16 {
        match next_msg(&mut ws, metrics).await? {
            ServerMsg::Snapshot { orders } => return Ok((ws, orders)),
            ServerMsg::Error { code, .. } => return Err(format!("connect:subscribe:{code}").into()),
            _ => {}
        }
    }
    Err("connect:subscribe:no_snapshot".into())
}

/// The `Retry-After` (seconds) of an HTTP answer that refused the upgrade.
fn upgrade_retry_after(e: &tokio_tungstenite::tungstenite::Error) -> Option<Duration> {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
        _ => None,
    }
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    ws.send(Message::text(text)).await
}

/// The next JSON frame during the handshake phase.
async fn next_msg(ws: &mut Ws, metrics: &Metrics) -> Result<ServerMsg, OpenError> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                metrics.msgs_in.fetch_add(1, Relaxed);
                return serde_json::from_str(&t).map_err(|_| "connect:bad_json".into());
            }
            Some(Ok(Message::Close(f))) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                let key = format!("connect:closed:{code}");
                return Err(OpenError::down(key, nodes::close_down(code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(OpenError::ws("read", &e)),
            None => return Err(OpenError::down("connect:eof".into(), true)),
        }
    }
}

pub(super) fn short_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => format!("io_{:?}", io.kind()),
        E::Http(resp) => format!("http_{}", resp.status().as_u16()),
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        E::Protocol(_) => "protocol".into(),
        E::Capacity(_) => "capacity".into(),
        _ => "other".into(),
    }
}
