//! One task per socket: connect from a chosen loopback source address, authenticate, subscribe
//! to one topic, then select over incoming frames, the actor's timers, an optional periodic
//! tick and the stop signal. Reconnects with exponential backoff and jitter, a bounded number of
//! times.
//!
//! The loop also enforces the client-side version rule per connection and counts the
//! correctness violations that can be seen from a single socket (stale/duplicate versions and,
//! on topics that carry every event, gaps).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use uuid::Uuid;

use crate::metrics::{Metrics, Violation};
use crate::proto::{
    Action, ClientMsg, Event, Order, ServerMsg, parse_transition_ref, transition_ref,
};

type Ws = WebSocketStream<TcpStream>;

/// Connect + upgrade + auth + subscribe + snapshot must finish within this.
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a closing socket waits for the hub's close answer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where and how sockets connect; shared by all socket tasks.
pub struct Net {
    pub hub: SocketAddr,
    pub ws_url: String,
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
}

enum Frame {
    Plain(String),
    Transition {
        json: String,
        order: Uuid,
        action: Action,
    },
}

struct Timer<C> {
    at: Instant,
    seq: u64,
    cmd: C,
}

impl<C> PartialEq for Timer<C> {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl<C> Eq for Timer<C> {}
impl<C> PartialOrd for Timer<C> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<C> Ord for Timer<C> {
    // reversed: BinaryHeap is a max-heap and the earliest timer must come out first
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// Frames to send and timers to run, filled by an [`Actor`]'s callbacks. Timers outlive a
/// reconnect; unsent frames do not.
pub struct Outbox<C> {
    frames: Vec<Frame>,
    timers: BinaryHeap<Timer<C>>,
    seq: u64,
}

impl<C> Outbox<C> {
    pub fn new() -> Self {
        Outbox {
            frames: Vec::new(),
            timers: BinaryHeap::new(),
            seq: 0,
        }
    }

    pub fn send(&mut self, msg: &ClientMsg<'_>) {
        self.frames.push(Frame::Plain(msg.to_json()));
    }

    /// Send a `transition`; its send time is recorded when the frame is written.
    pub fn transition(&mut self, order: Uuid, action: Action, expected: u64, otp: Option<&str>) {
        let reference = transition_ref(action, order);
        let json = ClientMsg::Transition {
            reference: &reference,
            order_id: order,
            action,
            expected_version: expected,
            otp,
        }
        .to_json();
        self.frames.push(Frame::Transition {
            json,
            order,
            action,
        });
    }

    /// Run `cmd` through [`Actor::on_timer`] after `delay`.
    pub fn after(&mut self, delay: Duration, cmd: C) {
        self.seq += 1;
        self.timers.push(Timer {
            at: Instant::now() + delay,
            seq: self.seq,
            cmd,
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.at)
    }

    fn pop_due(&mut self, now: Instant) -> Vec<C> {
        let mut due = Vec::new();
        while self.timers.peek().is_some_and(|t| t.at <= now) {
            if let Some(t) = self.timers.pop() {
                due.push(t.cmd);
            }
        }
        due
    }
}

impl<C> Default for Outbox<C> {
    fn default() -> Self {
        Self::new()
    }
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
    let mut failures = 0u32;
    let mut connected_before = false;
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
                r = timeout(OPEN_TIMEOUT, open(&net, &metrics, &spec)) => {
                    r.unwrap_or_else(|_| Err("connect:timeout".into())).map(|ok| (ok, t0.elapsed()))
                }
                _ = stopped(&mut stop) => return,
            }
        };
        match opened {
            Ok(((ws, orders), took)) => {
                metrics.connected(took, connected_before);
                connected_before = true;
                let end = session(ws, orders, &mut actor, &mut out, &metrics, &mut stop).await;
                metrics.disconnected();
                match end {
                    None => return,
                    Some(reason) => metrics.error(reason),
                }
            }
            Err(reason) => metrics.error(reason),
        }
        failures += 1;
        if failures > net.max_reconnects {
            metrics.gave_up.fetch_add(1, Relaxed);
            return;
        }
        let base = Duration::from_millis(500)
            .saturating_mul(1 << (failures - 1).min(6))
            .min(Duration::from_secs(30));
        let backoff = base.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// Connect, upgrade, authenticate and subscribe. Returns the socket and its snapshot, or an
/// error key for the error table.
async fn open(net: &Net, metrics: &Metrics, spec: &SocketSpec) -> Result<(Ws, Vec<Order>), String> {
    let sock = if net.hub.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("connect:socket:{:?}", e.kind()))?;
    if let Some(ip) = spec.source {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("connect:bind:{:?}", e.kind()))?;
    }
    let stream = sock
        .connect(net.hub)
        .await
        .map_err(|e| format!("connect:tcp:{:?}", e.kind()))?;
    let _ = stream.set_nodelay(true);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(net.ws_url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(|e| format!("connect:upgrade:{}", short_ws_error(&e)))?;
    send_text(&mut ws, ClientMsg::Auth { token: &spec.token }.to_json())
        .await
        .map_err(|e| format!("connect:auth_send:{e}"))?;
    metrics.msgs_out.fetch_add(1, Relaxed);
    match next_msg(&mut ws, metrics).await? {
        ServerMsg::Welcome => {}
        ServerMsg::Error { code, .. } => return Err(format!("connect:auth:{code}")),
        _ => return Err("connect:auth:unexpected_frame".into()),
    }
    let sub = ClientMsg::Subscribe {
        topic: &spec.topic,
        reference: "sub",
    };
    send_text(&mut ws, sub.to_json())
        .await
        .map_err(|e| format!("connect:subscribe_send:{e}"))?;
    metrics.msgs_out.fetch_add(1, Relaxed);
    // Only the snapshot (or an error) can answer a single subscribe; skip anything else
    // (a pong, say), but not forever.
    for _ in 0..16 {
        match next_msg(&mut ws, metrics).await? {
            ServerMsg::Snapshot { orders } => return Ok((ws, orders)),
            ServerMsg::Error { code, .. } => return Err(format!("connect:subscribe:{code}")),
            _ => {}
        }
    }
    Err("connect:subscribe:no_snapshot".into())
}

async fn send_text(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::text(text))
        .await
        .map_err(|e| short_ws_error(&e))
}

/// The next JSON frame during the handshake phase.
async fn next_msg(ws: &mut Ws, metrics: &Metrics) -> Result<ServerMsg, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                metrics.msgs_in.fetch_add(1, Relaxed);
                return serde_json::from_str(&t).map_err(|_| "connect:bad_json".to_string());
            }
            Some(Ok(Message::Close(f))) => {
                let code = f.map(|f| u16::from(f.code)).unwrap_or(1005);
                return Err(format!("connect:closed:{code}"));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("connect:read:{}", short_ws_error(&e))),
            None => return Err("connect:eof".into()),
        }
    }
}

fn short_ws_error(e: &tokio_tungstenite::tungstenite::Error) -> String {
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

/// Write the outbox's frames; transitions get their send time recorded just before the write.
async fn flush<C>(ws: &mut Ws, out: &mut Outbox<C>, metrics: &Metrics) -> Result<(), String> {
    if out.frames.is_empty() {
        return Ok(());
    }
    let n = out.frames.len() as u64;
    for frame in out.frames.drain(..) {
        let json = match frame {
            Frame::Plain(json) => json,
            Frame::Transition {
                json,
                order,
                action,
            } => {
                metrics.transition_sent(order, action, std::time::Instant::now());
                json
            }
        };
        ws.feed(Message::text(json))
            .await
            .map_err(|e| format!("socket:write:{}", short_ws_error(&e)))?;
    }
    ws.flush()
        .await
        .map_err(|e| format!("socket:write:{}", short_ws_error(&e)))?;
    metrics.msgs_out.fetch_add(n, Relaxed);
    Ok(())
}

/// One connected, subscribed session. Returns `None` when stopped, or the reason it was lost.
async fn session<A: Actor>(
    mut ws: Ws,
    snapshot: Vec<Order>,
    actor: &mut A,
    out: &mut Outbox<A::Cmd>,
    metrics: &Metrics,
    stop: &mut watch::Receiver<bool>,
) -> Option<String> {
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
                    return Some(format!("close:{code}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    out.frames.clear();
                    return Some(format!("socket:read:{}", short_ws_error(&e)));
                }
                None => {
                    out.frames.clear();
                    return Some("socket:eof".into());
                }
            },
            _ = maybe_tick(&mut tick) => actor.on_tick(out),
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                for cmd in out.pop_due(Instant::now()) {
                    actor.on_timer(cmd, out);
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
            actor.on_order(&event, &order, out);
        }
        ServerMsg::Ack { order, .. } => actor.on_ack(&order, out),
        ServerMsg::Error {
            reference,
            code,
            order,
        } => {
            metrics.error(format!("ws:{code}"));
            if let Some((action, id)) = reference.as_deref().and_then(parse_transition_ref) {
                metrics.transition_failed(id, action);
                actor.on_transition_error(action, id, &code, order.as_ref(), out);
            }
        }
        ServerMsg::Snapshot { .. } | ServerMsg::Welcome | ServerMsg::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_pop_in_time_order() {
        let mut out: Outbox<u32> = Outbox::new();
        out.after(Duration::from_millis(30), 3);
        out.after(Duration::from_millis(10), 1);
        out.after(Duration::from_millis(20), 2);
        out.after(Duration::from_millis(10), 11);
        let due = out.pop_due(Instant::now() + Duration::from_millis(25));
        assert_eq!(due, vec![1, 11, 2]);
        assert!(out.next_deadline().is_some());
        assert_eq!(
            out.pop_due(Instant::now() + Duration::from_secs(1)),
            vec![3]
        );
        assert!(out.next_deadline().is_none());
    }
}
