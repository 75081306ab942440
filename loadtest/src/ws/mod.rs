//! One task per socket: connect from a chosen loopback source address, authenticate, subscribe
//! to one topic, then select over incoming frames, the actor's timers, an optional periodic
//! tick and the stop signal. Reconnects with exponential backoff and jitter; `--max-reconnects`
//! bounds consecutive failures, and a session that stayed up for
//! [`STABLE_SESSION`](crate::backoff::STABLE_SESSION) starts the count afresh
//! ([`Reconnect`]).
//!
//! A `transition` the hub answers with `unavailable` or `internal` (the protocol's "retry") is
//! retried here with [`Retry::COMMAND`]: the loop owns the budget and the backoff, the actor
//! decides from what it holds by then whether the command still applies
//! ([`Actor::on_retry`]).
//!
//! The loop also enforces the client-side version rule per connection and counts the
//! correctness violations that can be seen from a single socket (stale/duplicate versions and,
//! on topics that carry every event, gaps).

mod connect;
mod outbox;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::backoff::{self, Reconnect};
use crate::metrics::{Metrics, Violation};
use crate::nodes;
use crate::proto::{Action, Event, Order, ServerMsg, parse_transition_ref};
use connect::{Ws, open, short_ws_error};
pub use outbox::Outbox;
use outbox::{Due, flush};

/// Connect + upgrade + auth + subscribe + snapshot must finish within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a closing socket waits for the hub's close answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One hub node: where its sockets connect.
#[derive(Debug, Clone)]
pub struct Node {
    pub addr: SocketAddr,
    pub ws_url: String,
}

pub struct Net {
    /// The nodes, in `--url` order (at least one).
    pub nodes: Vec<Node>,
    pub sources: Vec<IpAddr>,
    pub connect_permits: Semaphore,
    pub max_reconnects: u32,
}

impl Net {
    /// The source address for the `i`-th socket (round-robin).
    pub fn source(&self, i: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[i % self.sources.len()])
        }
    }
}

/// What a topic delivers, for the gap check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    /// `shop:` and `buyer:` carry every event of their orders.
    EveryEvent,
    /// `driver:` carries an order only while it is assigned to the driver.
    WhileAssigned,
}

/// What to connect as and to.
pub struct SocketSpec {
    pub token: String,
    pub topic: String,
    pub source: Option<IpAddr>,
    /// The node (index into [`Net::nodes`]) of the first connection.
    pub node: usize,
}

/// Why a session ended, or an attempt to open one failed.
#[derive(Debug)]
pub(crate) struct Lost {
    /// The key for the error table.
    pub(crate) key: String,
    /// The node is gone (refused, reset, closed without a closing handshake, or 1001): the
    /// next attempt goes to the next node.
    pub(crate) node_down: bool,
}

impl Lost {
    fn new(key: impl Into<String>, node_down: bool) -> Self {
        Lost {
            key: key.into(),
            node_down,
        }
    }
}

/// The behaviour behind one socket. All callbacks are synchronous; anything to send or to do
/// later goes into the [`Outbox`].
pub trait Actor: Send + 'static {
    /// A deferred action of this actor (run by the socket task when its time comes).
    type Cmd: Send + 'static;

    fn topic_kind(&self) -> TopicKind;

    /// Period of [`Actor::on_tick`], if any.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Subscribed; `orders` is the snapshot.
    fn on_subscribed(&mut self, orders: &[Order], out: &mut Outbox<Self::Cmd>);

    fn on_tick(&mut self, _out: &mut Outbox<Self::Cmd>) {}

    /// An `order` message that passed the version rule.
    fn on_order(&mut self, event: &Event, order: &Order, out: &mut Outbox<Self::Cmd>);

    fn on_timer(&mut self, _cmd: Self::Cmd, _out: &mut Outbox<Self::Cmd>) {}

    fn on_ack(&mut self, _order: &Order, _out: &mut Outbox<Self::Cmd>) {}

    /// The hub refused a transition this actor sent. `current` is the order's state when the
    /// error carries it.
    fn on_transition_error(
        &mut self,
        _action: Action,
        _order: Uuid,
        _code: &str,
        _current: Option<&Order>,
        _out: &mut Outbox<Self::Cmd>,
    ) {
    }

    /// Time to send `action` on `order` again: the hub answered it with `unavailable` or
    /// `internal`. Send it (with the version held now) only if it still applies.
    fn on_retry(&mut self, _action: Action, _order: Uuid, _out: &mut Outbox<Self::Cmd>) {}
}

/// Is this socket error code the protocol's "could not complete the command; retry"?
pub fn retriable_code(code: &str) -> bool {
    matches!(code, "unavailable" | "internal")
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn maybe_tick(tick: &mut Option<Interval>) {
    match tick {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Run one socket until `stop`, reconnecting when the hub closes it.
pub async fn run_socket<A: Actor>(
    net: Arc<Net>,
    metrics: Arc<Metrics>,
    spec: SocketSpec,
    mut actor: A,
    start_at: Instant,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = sleep_until(start_at) => {}
        _ = stopped(&mut stop) => return,
    }
    let mut out = Outbox::new();
    let mut budget = Reconnect::new(net.max_reconnects);
    let mut connected_before = false;
    let mut node = spec.node % net.nodes.len().max(1);
    loop {
        if *stop.borrow() {
            return;
        }
        let opened = {
            let Ok(_permit) = net.connect_permits.acquire().await else {
                return;
            };
            let t0 = Instant::now();
            metrics.connect_started(t0.into_std());
            tokio::select! {
                r = timeout(OPEN_TIMEOUT, open(&net, node, &metrics, &spec)) => {
                    r.unwrap_or_else(|_| Err("connect:timeout".into())).map(|ok| (ok, t0.elapsed()))
                }
                _ = stopped(&mut stop) => return,
            }
        };
        let mut retry_after = None;
        let node_down = match opened {
            Ok(((ws, orders), took)) => {
                metrics.connected(took, connected_before);
                connected_before = true;
                let up = Instant::now();
                let end = session(ws, orders, &mut actor, &mut out, &metrics, &mut stop).await;
                metrics.disconnected();
                let Some(lost) = end else {
                    return;
                };
                metrics.error(lost.key);
                budget.session_ended(up.elapsed());
                lost.node_down
            }
            Err(e) => {
                metrics.error(e.key);
                retry_after = e.retry_after;
                e.node_down
            }
        };
        if node_down && net.nodes.len() > 1 {
            node = nodes::next_node(node, net.nodes.len());
            metrics.socket_failovers.fetch_add(1, Relaxed);
        }
        let Some(backoff) = budget.failed(backoff::jitter(), retry_after) else {
            metrics.gave_up.fetch_add(1, Relaxed);
            return;
        };
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// One connected, subscribed session. Returns `None` when stopped, or why it was lost.
async fn session<A: Actor>(
    mut ws: Ws,
    snapshot: Vec<Order>,
    actor: &mut A,
    out: &mut Outbox<A::Cmd>,
    metrics: &Metrics,
    stop: &mut watch::Receiver<bool>,
) -> Option<Lost> {
    let every_event = actor.topic_kind() == TopicKind::EveryEvent;
    // the highest version this connection has received per order
    let mut seen: HashMap<Uuid, u64> = HashMap::with_capacity(snapshot.len());
    for o in &snapshot {
        if let Some(prev) = seen.insert(o.id, o.version) {
            metrics.violation(Violation::StaleOrDuplicate, || {
                format!(
                    "snapshot lists order {} twice (v{prev}, v{})",
                    o.id, o.version
                )
            });
        }
    }
    out.frames.clear();
    actor.on_subscribed(&snapshot, out);
    drop(snapshot);
    let mut tick = actor.tick_every().map(|d| {
        let mut i = tokio::time::interval_at(Instant::now() + d, d);
        i.set_missed_tick_behavior(MissedTickBehavior::Delay);
        i
    });
    loop {
        if let Err(e) = flush(&mut ws, out, metrics).await {
            out.frames.clear();
            return Some(e);
        }
        let deadline = out.next_deadline();
        tokio::select! {
            _ = stopped(stop) => {
                let _ = timeout(CLOSE_TIMEOUT, ws.close(None)).await;
                return None;
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    metrics.msgs_in.fetch_add(1, Relaxed);
                    handle_text(&text, every_event, &mut seen, actor, out, metrics);
                }
                Some(Ok(Message::Close(f))) => {
                    let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                    out.frames.clear();
                    return Some(Lost::new(format!("close:{code}"), nodes::close_down(code)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    out.frames.clear();
                    let key = format!("socket:read:{}", short_ws_error(&e));
                    return Some(Lost::new(key, nodes::ws_down(&e)));
                }
                None => {
                    out.frames.clear();
                    return Some(Lost::new("socket:eof", true));
                }
            },
            _ = maybe_tick(&mut tick) => actor.on_tick(out),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                for due in out.pop_due(Instant::now()) {
                    match due {
                        Due::Actor(cmd) => actor.on_timer(cmd, out),
                        Due::Retry(order, action) => actor.on_retry(action, order, out),
                    }
                }
            }
        }
    }
}

fn handle_text<A: Actor>(
    text: &str,
    every_event: bool,
    seen: &mut HashMap<Uuid, u64>,
    actor: &mut A,
    out: &mut Outbox<A::Cmd>,
    metrics: &Metrics,
) {
    let msg: ServerMsg = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(_) => {
            metrics.error("socket:bad_json");
            return;
        }
    };
    match msg {
        ServerMsg::Order { event, order } => {
            if event.version != order.version {
                metrics.violation(Violation::EventVersionMismatch, || {
                    format!(
                        "order {}: event v{} carries order v{}",
                        order.id, event.version, order.version
                    )
                });
            }
            let v = order.version;
            match seen.get_mut(&order.id) {
                Some(prev) if v <= *prev => {
                    let p = *prev;
                    metrics.violation(Violation::StaleOrDuplicate, || {
                        format!(
                            "order {}: got v{v} ({}) after v{p} on the same socket",
                            order.id,
                            event.kind.as_str()
                        )
                    });
                    return; // the version rule: never apply it
                }
                Some(prev) => {
                    if every_event && v > *prev + 1 {
                        let p = *prev;
                        metrics.violation(Violation::Gap, || {
                            format!(
                                "order {}: v{p} then v{v} ({}) on the same socket",
                                order.id,
                                event.kind.as_str()
                            )
                        });
                    }
                    *prev = v;
                }
                None => {
                    seen.insert(order.id, v);
                }
            }
            if order.status.is_final() {
                out.finished(order.id);
            }
            actor.on_order(&event, &order, out);
        }
        ServerMsg::Ack { reference, order } => {
            if let Some((action, id)) = reference.as_deref().and_then(parse_transition_ref) {
                out.settled(id, action);
            }
            actor.on_ack(&order, out);
        }
        ServerMsg::Error {
            reference,
            code,
            order,
            retry_after_s,
        } => {
            let key = format!("ws:{code}");
            metrics.error(key.as_str());
            if let Some((action, id)) = reference.as_deref().and_then(parse_transition_ref) {
                metrics.transition_failed(id, action);
                if retriable_code(&code) {
                    let wait = retry_after_s.map(Duration::from_secs);
                    if out.schedule_retry(id, action, backoff::jitter(), wait) {
                        metrics.retried(key);
                        return;
                    }
                    metrics.retry_exhausted(key);
                } else {
                    out.settled(id, action);
                }
                actor.on_transition_error(action, id, &code, order.as_ref(), out);
            }
        }
        ServerMsg::Snapshot { .. } | ServerMsg::Welcome | ServerMsg::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::vendor::Vendor;
    use futures::SinkExt;
    use serde_json::{Value, json};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::mpsc;
    use tokio_tungstenite::WebSocketStream;

    fn net(hub: SocketAddr, max_reconnects: u32) -> Arc<Net> {
        cluster(&[hub], max_reconnects)
    }

    fn cluster(hubs: &[SocketAddr], max_reconnects: u32) -> Arc<Net> {
        Arc::new(Net {
            nodes: hubs
                .iter()
                .map(|hub| Node {
                    addr: *hub,
                    ws_url: format!("ws://{hub}/ws"),
                })
                .collect(),
            sources: Vec::new(),
            connect_permits: Semaphore::new(4),
            max_reconnects,
        })
    }

    fn spec() -> SocketSpec {
        SocketSpec {
            token: "tok".into(),
            topic: "shop:x".into(),
            source: None,
            node: 0,
        }
    }

    async fn recv_json(ws: &mut WebSocketStream<TcpStream>) -> Value {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                _ => continue,
            }
        }
    }

    async fn send_json(ws: &mut WebSocketStream<TcpStream>, v: Value) {
        ws.send(Message::text(v.to_string())).await.unwrap();
    }

    #[tokio::test]
    async fn a_transition_answered_unavailable_is_retried() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = listener.local_addr().unwrap();
        let order = Uuid::new_v4();
        let pending = json!({"id": order, "status": "pending", "version": 1});
        // the hub: a snapshot with one pending order; the first `accept` is answered
        // `unavailable`, the second acked. Returns the transitions it received.
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            assert_eq!(recv_json(&mut ws).await["type"], "auth");
            send_json(&mut ws, json!({"type": "welcome", "role": "vendor"})).await;
            assert_eq!(recv_json(&mut ws).await["type"], "subscribe");
            send_json(&mut ws, json!({"type": "snapshot", "orders": [pending]})).await;
            let first = recv_json(&mut ws).await;
            send_json(
                &mut ws,
                json!({"type": "error", "ref": first["ref"],
                "code": "unavailable", "message": "database unavailable"}),
            )
            .await;
            let second = recv_json(&mut ws).await;
            let accepted = json!({"id": order, "status": "accepted", "version": 2});
            send_json(
                &mut ws,
                json!({"type": "ack", "ref": second["ref"], "order": accepted}),
            )
            .await;
            (first, second, ws)
        });
        let metrics = Arc::new(Metrics::new());
        let (stop_tx, stop_rx) = watch::channel(false);
        let actor = Vendor::new(Uuid::new_v4(), Duration::from_secs(60), metrics.clone());
        let socket = tokio::spawn(run_socket(
            net(hub, 0),
            metrics.clone(),
            spec(),
            actor,
            Instant::now(),
            stop_rx,
        ));
        let (first, second, _ws) = timeout(Duration::from_secs(10), server)
            .await
            .expect("the socket retried in time")
            .unwrap();
        assert_eq!(first["action"], "accept");
        assert_eq!(second["action"], "accept");
        assert_eq!(second["expected_version"], 1);
        assert_eq!(second["ref"], first["ref"]);
        let _ = stop_tx.send(true);
        timeout(Duration::from_secs(5), socket)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(metrics.retries().get("ws:unavailable"), Some(&1));
        assert_eq!(metrics.errors().get("ws:unavailable"), Some(&1));
    }

    /// What a fake node does with each socket it accepts, in turn.
    #[derive(Clone, Copy)]
    enum Then {
        /// Welcome it, send an empty snapshot, then drop the TCP connection without a closing
        /// handshake (the node died).
        Die,
        /// Welcome it, send an empty snapshot and keep it.
        Hold,
    }

    /// A node that treats the sockets it accepts as `script` says; reports each subscribed
    /// socket with its position in the script.
    async fn fake_node(script: Vec<Then>) -> (SocketAddr, mpsc::UnboundedReceiver<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for (n, then) in script.into_iter().enumerate() {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                assert_eq!(recv_json(&mut ws).await["type"], "auth");
                send_json(&mut ws, json!({"type": "welcome", "role": "vendor"})).await;
                assert_eq!(recv_json(&mut ws).await["type"], "subscribe");
                send_json(&mut ws, json!({"type": "snapshot", "orders": []})).await;
                let _ = tx.send(n);
                match then {
                    Then::Die => drop(ws),
                    Then::Hold => held.push(ws),
                }
            }
            std::future::pending::<()>().await;
        });
        (addr, rx)
    }

    /// A loopback address nothing listens on.
    async fn dead_node() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    /// Run one socket on `net` until `done` holds for the metrics, then stop it.
    async fn run_until(net: Arc<Net>, metrics: Arc<Metrics>, done: impl Fn(&Metrics) -> bool) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let actor = Vendor::new(Uuid::new_v4(), Duration::from_secs(60), metrics.clone());
        let socket = tokio::spawn(run_socket(
            net,
            metrics.clone(),
            spec(),
            actor,
            Instant::now(),
            stop_rx,
        ));
        timeout(Duration::from_secs(10), async {
            while !done(&metrics) {
                sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("in time");
        let _ = stop_tx.send(true);
        timeout(Duration::from_secs(5), socket)
            .await
            .unwrap()
            .unwrap();
    }

    fn connects(m: &Metrics) -> u64 {
        m.connects_ok.load(Relaxed)
    }

    #[tokio::test]
    async fn a_socket_whose_node_refuses_connects_to_the_next_node() {
        let dead = dead_node().await;
        let (live, mut on_live) = fake_node(vec![Then::Hold]).await;
        let metrics = Arc::new(Metrics::new());
        run_until(cluster(&[dead, live], 3), metrics.clone(), |m| {
            connects(m) == 1
        })
        .await;
        assert_eq!(on_live.recv().await, Some(0));
        assert_eq!(metrics.socket_failovers.load(Relaxed), 1);
        assert_eq!(
            metrics.errors().get("connect:tcp:ConnectionRefused"),
            Some(&1)
        );
        assert_eq!(metrics.gave_up.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn a_socket_whose_node_dies_reconnects_to_the_next_node() {
        let (a, mut on_a) = fake_node(vec![Then::Die]).await;
        let (b, mut on_b) = fake_node(vec![Then::Hold]).await;
        let metrics = Arc::new(Metrics::new());
        run_until(cluster(&[a, b], 3), metrics.clone(), |m| connects(m) == 2).await;
        assert_eq!(on_a.recv().await, Some(0));
        assert_eq!(on_b.recv().await, Some(0));
        assert_eq!(metrics.socket_failovers.load(Relaxed), 1);
        assert_eq!(metrics.reconnects.load(Relaxed), 1);
        let errors = metrics.errors();
        assert!(
            errors.keys().any(|k| k.starts_with("socket:read:")),
            "{errors:?}"
        );
    }

    #[tokio::test]
    async fn with_one_node_a_socket_reconnects_to_it_without_a_failover() {
        let (a, mut on_a) = fake_node(vec![Then::Die, Then::Hold]).await;
        let metrics = Arc::new(Metrics::new());
        run_until(net(a, 3), metrics.clone(), |m| connects(m) == 2).await;
        assert_eq!(on_a.recv().await, Some(0));
        assert_eq!(on_a.recv().await, Some(1));
        assert_eq!(metrics.socket_failovers.load(Relaxed), 0);
        assert_eq!(metrics.reconnects.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_socket_gives_up_after_max_reconnects_consecutive_failures() {
        // a hub that accepts every socket and closes it right after `welcome`
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                n += 1;
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let _ = recv_json(&mut ws).await;
                send_json(&mut ws, json!({"type": "welcome", "role": "vendor"})).await;
                let _ = ws.close(None).await;
                if n == 3 {
                    return n;
                }
            }
        });
        let metrics = Arc::new(Metrics::new());
        let (_stop_tx, stop_rx) = watch::channel(false);
        let actor = Vendor::new(Uuid::new_v4(), Duration::from_secs(60), metrics.clone());
        // 2 reconnects after the first failure: 3 attempts, ~0.75-2.25 s of backoff
        timeout(
            Duration::from_secs(10),
            run_socket(
                net(hub, 2),
                metrics.clone(),
                spec(),
                actor,
                Instant::now(),
                stop_rx,
            ),
        )
        .await
        .expect("the socket gave up");
        assert_eq!(server.await.unwrap(), 3);
        assert_eq!(metrics.gave_up.load(Relaxed), 1);
        assert_eq!(metrics.connects_ok.load(Relaxed), 0);
    }
}
