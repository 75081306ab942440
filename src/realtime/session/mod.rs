//! One task per socket: the auth handshake, then a loop that reads client frames, drains the
//! connection's bounded outbound queue, pings, and watches for lag, idleness and shutdown.
//!
//! Commands that wait on Postgres (`subscribe`, `unsubscribe`, `transition`) run beside the
//! loop in a worker ([`commands`]), one at a time and in order, so a slow database never stops
//! the loop from draining the outbound queue.
//!
//! Snapshot-then-live without a gap: on `subscribe` the worker registers in the registry
//! *first*, then reads the snapshot from Postgres. From the moment a `subscribe` is queued until
//! its answer is applied, the loop holds back *every* outbound message (not only that topic's:
//! a message of another topic could carry a newer version of an order than the snapshot), and
//! replays them after the snapshot through the granted-topic filter; `sent` (the newest version
//! this socket has carried per order) drops those the snapshot already covered, and also
//! duplicates from overlapping topics. Transitions never hold delivery back.
//!
//! All-or-nothing subscriptions: every queued message carries the topic it was published on,
//! and the loop forwards it only if this socket has been *granted* that topic. A subscription
//! is granted only after the snapshot read has authorized it, so a refused subscriber never
//! sees a message of the topic, not even one committed during the check.
//!
//! Revocation: the socket's token is registered with [`super::conns::Connections`]; logout, a code rotation
//! or an admin's revoke cancels it, and the loop (which watches it before anything else)
//! closes with 4401 without running another command.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod commands;
mod gaps;
mod handshake;

use handshake::{close_with, handshake, too_big};

use commands::{Command, Done, Worker};

use super::conns::Admission;
use super::protocol::{ClientMsg, MAX_TEXT, clean_ref, close, error_frame, error_from};
use super::registry::{ConnId, OrderMessage, Outbound, Subscriber};
use super::topic::Topic;
use crate::domain::{Actor, DriverId, GeoPoint, OrderId, Role};
use crate::error::Error;
use crate::service::Hub;
use crate::service::auth::SessionInfo;
use crate::service::orders::TransitionRequest;

const MAX_TOPICS: usize = 64;
/// Inbound rate limit: a bucket of 50 messages refilled at 50 per second.
const RATE: f64 = 50.0;
/// Messages over the limit tolerated (after the `rate_limited` warning) before closing.
const MAX_EXCESS: u32 = 50;
/// A frame that cannot be written within this long means the peer is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing waits for the close frame to go out, and then for the peer's reply.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a final order's last version is remembered (to drop late duplicates).
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// An order read back after a version gap: (order, topic, its current message if readable).
type Resynced = (OrderId, Topic, Option<OrderMessage>);

/// Why the loop ended: a close frame to send, or nothing (the peer is gone).
type Exit = Option<(u16, &'static str)>;

struct Session {
    hub: Arc<Hub>,
    actor: Actor,
    conn: ConnId,
    sub: Subscriber,
    /// Topics granted to this socket: only their messages are forwarded.
    topics: HashSet<Topic>,
    /// Subscribes queued or running in the worker, per topic.
    subscribing: HashMap<Topic, usize>,
    /// Outbound messages held back while any subscribe is in flight, in arrival order.
    held: std::collections::VecDeque<(Topic, Outbound)>,
    /// To the command worker.
    commands: mpsc::Sender<Box<Command>>,
    /// Cancelled when the token is revoked (never, for the admin token).
    revoked: CancellationToken,
    /// When the token expires (none for the admin token).
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Newest version sent per order on this socket; for final orders also when it became
    /// final, so the entry can be dropped once no late copy can arrive any more.
    sent: HashMap<OrderId, (i32, Option<Instant>)>,
    /// In a cluster (and not for drivers): versions that skip one, waiting (see [`gaps`]).
    gap_checks: bool,
    gaps: gaps::Gaps,
    /// Orders read back after a gap come back on this channel, made on the first gap (a
    /// channel per socket costs memory that most sockets never need).
    resync_tx: Option<mpsc::Sender<Box<Resynced>>>,
    tokens: f64,
    refilled: Instant,
    excess: u32,
}

pub async fn run(hub: Arc<Hub>, mut socket: WebSocket, peer: SocketAddr, mut admission: Admission) {
    metrics::gauge!("hub_connections").increment(1.0);
    let exit = authenticated(&hub, &mut socket, peer, &mut admission).await;
    if let Some((code, reason)) = exit {
        close_with(&mut socket, code, reason).await;
    }
    metrics::gauge!("hub_connections").decrement(1.0);
    drop(admission);
}

/// The life of a socket after the upgrade; returns the close to send.
async fn authenticated(
    hub: &Arc<Hub>,
    socket: &mut WebSocket,
    peer: SocketAddr,
    admission: &mut Admission,
) -> Exit {
    let (actor, session) = match handshake(hub, socket).await {
        Ok(a) => a,
        Err(exit) => return exit,
    };
    admission.authenticated();
    let conn = hub.registry.next_conn_id();
    let account = actor
        .id
        .filter(|_| session.is_some())
        .map(|id| (actor.role, id));
    let revoked = match (account, &session) {
        (Some(key), Some(s)) => match hub.conns.attach(key, conn, s.token_hash.clone()) {
            Some(t) => t,
            None => {
                return Some((close::TOO_MANY_SOCKETS, "too many sockets for this account"));
            }
        },
        _ => CancellationToken::new(),
    };
    // Attached first, then checked again: a logout that commits after the handshake's check
    // either finds this socket attached, or is seen here.
    if let (Some(key), Some(s)) = (account, &session) {
        let live = hub.session_live(&s.token_hash).await;
        if !matches!(live, Ok(true)) {
            hub.conns.detach(key, conn);
            return Some(match live {
                Ok(_) => (close::UNAUTHORIZED, "token revoked"),
                Err(_) => (close::UNAVAILABLE, "hub unavailable, retry"),
            });
        }
    }
    let exit = serve(hub, socket, peer, (actor, account), session, conn, revoked).await;
    if let Some(key) = account {
        hub.conns.detach(key, conn);
    }
    exit
}

async fn serve(
    hub: &Arc<Hub>,
    socket: &mut WebSocket,
    peer: SocketAddr,
    (actor, account): (Actor, Option<super::conns::AccountKey>),
    session: Option<SessionInfo>,
    conn: u64,
    revoked: CancellationToken,
) -> Exit {
    let welcome = json!({"type": "welcome", "role": actor.role, "subject_id": actor.id});
    let greeting = socket.send(Message::Text(welcome.to_string().into()));
    if !matches!(
        tokio::time::timeout(WRITE_TIMEOUT, greeting).await,
        Ok(Ok(()))
    ) {
        return None;
    }
    let (tx, rx) = mpsc::channel(hub.config.ws_queue.max(1));
    let (commands, commands_rx) = mpsc::channel(commands::QUEUE);
    let (done_tx, mut done) = mpsc::channel(commands::QUEUE);
    let sub = Subscriber {
        tx,
        lagged: CancellationToken::new(),
        driver: (actor.role == Role::Driver)
            .then_some(actor.id.map(DriverId))
            .flatten(),
    };
    let worker = Worker {
        hub: hub.clone(),
        actor,
        conn,
        sub: sub.clone(),
        revoked: revoked.clone(),
    };
    hub.tasks.spawn(worker.run(commands_rx, done_tx));
    let mut s = Session {
        conn,
        sub,
        hub: hub.clone(),
        actor,
        topics: HashSet::new(),
        subscribing: HashMap::new(),
        held: std::collections::VecDeque::new(),
        commands,
        revoked,
        expires_at: session.map(|s| s.expires_at),
        sent: HashMap::new(),
        gap_checks: hub.broker.is_distributed() && actor.role != Role::Driver,
        gaps: gaps::Gaps::default(),
        resync_tx: None,
        tokens: RATE,
        refilled: Instant::now(),
        excess: 0,
    };
    let driver = (actor.role == Role::Driver)
        .then(|| actor.id.map(DriverId))
        .flatten();
    if let Some(d) = driver {
        hub.dispatch.driver_connected(d, s.conn).await;
    }
    tracing::debug!(conn = s.conn, %peer, role = actor.role.as_str(), "socket authenticated");
    let exit = s.run_loop(socket, rx, &mut done).await;
    // Hang up on the worker; subscriptions it reports from now on are undone (by it, or here
    // for those already reported).
    done.close();
    while let Ok(d) = done.try_recv() {
        if let Done::Subscribed { topic, .. } = *d {
            s.topics.insert(topic);
        }
    }
    let in_flight: Vec<Topic> = s.subscribing.keys().copied().collect();
    for t in s.topics.drain().chain(in_flight) {
        hub.unsubscribe(t, s.conn);
    }
    // Detached before the dispatcher hears of the disconnect, so that a dispatcher rebuilt in
    // between does not re-announce this socket.
    if let Some(key) = account {
        hub.conns.detach(key, conn);
    }
    if let Some(d) = driver {
        hub.dispatch.driver_disconnected(d, s.conn).await;
    }
    exit
}

impl Session {
    async fn run_loop(
        &mut self,
        socket: &mut WebSocket,
        mut rx: mpsc::Receiver<(Topic, Outbound)>,
        done: &mut mpsc::Receiver<Box<Done>>,
    ) -> Exit {
        let cfg = self.hub.config.clone();
        let mut ping = tokio::time::interval(Duration::from_secs(cfg.ws_ping_s.max(1)));
        ping.reset();
        let idle = Duration::from_secs(cfg.ws_idle_s.max(1));
        let mut last_heard = Instant::now();
        let shutdown = self.hub.shutdown.clone();
        let lagged = self.sub.lagged.clone();
        let revoked = self.revoked.clone();
        let mut resync: Option<mpsc::Receiver<Box<Resynced>>> = None;
        loop {
            let gap_deadline = self.gaps.next_deadline();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Some((close::GOING_AWAY, "hub shutting down")),
                _ = revoked.cancelled() => return Some((close::UNAUTHORIZED, "token revoked")),
                _ = lagged.cancelled() => {
                    metrics::counter!("hub_closed_slow_total").increment(1);
                    return Some((close::TOO_SLOW, "too slow: outbound queue overflowed"));
                }
                frame = socket.recv() => {
                    last_heard = Instant::now();
                    let frame = match frame {
                        None => return None,
                        Some(Err(e)) => return too_big(e).then_some((close::TOO_BIG, "message over 16 KiB")),
                        Some(Ok(Message::Close(_))) => return Some((close::NORMAL, "bye")),
                        Some(Ok(f)) => f,
                    };
                    // Every frame counts against the rate limit, whatever its kind.
                    if let Some(exit) = self.limit(socket).await {
                        return exit;
                    }
                    if !self.within_limit() {
                        continue;
                    }
                    match frame {
                        Message::Text(t) => {
                            if t.len() > MAX_TEXT {
                                return Some((close::TOO_BIG, "message over 16 KiB"));
                            }
                            if let Err(exit) = self.handle(socket, &t).await {
                                return exit.or_else(|| self.failed_send_exit());
                            }
                        }
                        Message::Binary(_) => {
                            let e = error_frame(&Value::Null, "unsupported_frame", "binary frames are not supported");
                            if self.send(socket, e).await.is_err() { return self.failed_send_exit(); }
                        }
                        _ => {} // ping / pong
                    }
                }
                d = done.recv() => {
                    // The worker is gone (it panicked): say so rather than vanish.
                    let Some(d) = d else { return Some((close::UNAVAILABLE, "internal error")) };
                    if self.apply(socket, *d).await.is_err() {
                        return self.failed_send_exit();
                    }
                }
                _ = tokio::time::sleep_until(gap_deadline.unwrap_or_else(Instant::now).into()), if gap_deadline.is_some() => {
                    if resync.is_none() {
                        let (tx, rx) = mpsc::channel(16);
                        self.resync_tx = Some(tx);
                        resync = Some(rx);
                    }
                    self.read_back_gaps();
                }
                Some(r) = async { resync.as_mut()?.recv().await }, if resync.is_some() => {
                    let (order, topic, current) = *r;
                    if self.resynced(socket, order, topic, current).await.is_err() {
                        return self.failed_send_exit();
                    }
                }
                out = rx.recv() => {
                    let (topic, out) = out?;
                    if !self.subscribing.is_empty() {
                        // A snapshot is being read: hold everything back (bounded like the queue).
                        if self.held.len() >= self.hub.config.ws_queue.max(1) {
                            self.sub.lagged.cancel();
                        }
                        self.held.push_back((topic, out));
                        continue;
                    }
                    if self.forward_granted(socket, topic, out).await.is_err() {
                        return self.failed_send_exit();
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= idle {
                        return Some((close::IDLE, "idle"));
                    }
                    if self.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
                        return Some((close::UNAUTHORIZED, "token expired"));
                    }
                    self.prune_sent();
                    if self.send_msg(socket, Message::Ping(Default::default())).await.is_err() { return None; }
                }
            }
        }
    }

    /// Forwards a message of a granted topic; one of any other topic was queued while a refused
    /// (or dropped) subscription was open, and is never sent.
    async fn forward_granted(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        out: Outbound,
    ) -> Result<(), ()> {
        if self.topics.contains(&topic) {
            self.forward(socket, topic, out).await
        } else {
            Ok(())
        }
    }

    /// One subscribe of `topic` is answered; when none is left in flight, the messages held
    /// back meanwhile go out (or are dropped) as if they had just arrived.
    async fn subscribe_done(&mut self, socket: &mut WebSocket, topic: Topic) -> Result<(), ()> {
        if let Some(n) = self.subscribing.get_mut(&topic) {
            *n -= 1;
            if *n == 0 {
                self.subscribing.remove(&topic);
            }
        }
        while self.subscribing.is_empty()
            && let Some((t, out)) = self.held.pop_front()
        {
            self.forward_granted(socket, t, out).await?;
        }
        Ok(())
    }

    /// Sends one queued message unless this socket already carried its version (or a newer one).
    /// In a cluster, a version that skips one waits for it (see [`gaps`]).
    async fn forward(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        out: Outbound,
    ) -> Result<(), ()> {
        let text = match out {
            Outbound::Order {
                order_id,
                version,
                is_final,
                text,
            } => {
                // (An order this socket has not carried yet starts at version 1: it was not in
                // the snapshot, so it was created since.)
                if self.gap_checks && !matches!(topic, Topic::Driver(_)) {
                    let prev = self.sent.get(&order_id).map(|e| e.0).unwrap_or(0);
                    if version > prev + 1
                        && self
                            .gaps
                            .park(order_id, version, topic, text.clone(), is_final)
                    {
                        return Ok(());
                    }
                }
                if !self.mark_sent(order_id, version, is_final) {
                    return Ok(());
                }
                self.send_frame(socket, text).await?;
                return self.send_following(socket, order_id, version).await;
            }
            Outbound::Text(text) => text,
        };
        self.send_frame(socket, text).await
    }

    async fn send_frame(
        &mut self,
        socket: &mut WebSocket,
        text: axum::extract::ws::Utf8Bytes,
    ) -> Result<(), ()> {
        // A socket that cannot take a frame must not hold us past the lag signal.
        self.send_msg(socket, Message::Text(text)).await?;
        metrics::counter!("hub_frames_sent_total").increment(1);
        Ok(())
    }

    /// After `version` of an order went out: the parked versions that now follow, in order.
    async fn send_following(
        &mut self,
        socket: &mut WebSocket,
        order: OrderId,
        mut version: i32,
    ) -> Result<(), ()> {
        if self.gaps.is_empty() {
            return Ok(());
        }
        while let Some((v, text, is_final)) = self.gaps.take_next(order, version) {
            if self.mark_sent(order, v, is_final) {
                self.send_frame(socket, text).await?;
            }
            version = v;
        }
        Ok(())
    }

    /// Reads back the orders whose gap did not fill in time.
    fn read_back_gaps(&mut self) {
        let Some(tx) = &self.resync_tx else { return };
        for (order, topic) in self.gaps.due(Instant::now()) {
            metrics::counter!("hub_version_gap_reads_total").increment(1);
            let hub = self.hub.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let current = hub.current_message(order).await;
                let _ = tx.send(Box::new((order, topic, current))).await;
            });
        }
    }

    /// An order read back after a gap: its current version goes out if it is newer than what
    /// this socket carried, then whatever parked version follows; if it could not be read, the
    /// parked versions go out as they are.
    async fn resynced(
        &mut self,
        socket: &mut WebSocket,
        order: OrderId,
        topic: Topic,
        current: Option<OrderMessage>,
    ) -> Result<(), ()> {
        let give_up = current.is_none();
        if let Some(m) = current
            && self.mark_sent(order, m.version, m.is_final)
        {
            self.send_frame(socket, m.text_for(topic).into()).await?;
        }
        let sent = self.sent.get(&order).map(|e| e.0).unwrap_or(0);
        self.send_following(socket, order, sent).await?;
        for (v, text, is_final) in self.gaps.refetched(order, give_up) {
            if self.mark_sent(order, v, is_final) {
                self.send_frame(socket, text).await?;
            }
        }
        Ok(())
    }

    /// Applies what the worker did, in the order it did it.
    async fn apply(&mut self, socket: &mut WebSocket, d: Done) -> Result<(), ()> {
        match d {
            Done::Reply(frame) => self.send(socket, frame).await,
            Done::Subscribed {
                topic,
                frame,
                versions,
                ..
            } => {
                self.topics.insert(topic);
                for (id, version, is_final) in versions {
                    self.mark_sent(id, version, is_final);
                }
                self.send(socket, frame).await?;
                self.subscribe_done(socket, topic).await
            }
            Done::Refused { topic, frame } => {
                self.send(socket, frame).await?;
                self.subscribe_done(socket, topic).await
            }
            Done::Unsubscribed { topic, frame } => {
                self.topics.remove(&topic);
                self.send(socket, frame).await
            }
        }
    }

    /// Queues a command for the worker; when too many wait, answers `busy` instead.
    fn enqueue(&mut self, c: Command) -> Option<String> {
        let subscribing = match &c {
            Command::Subscribe { topic, .. } => Some(*topic),
            _ => None,
        };
        match self.commands.try_send(Box::new(c)) {
            Ok(()) => {
                if let Some(t) = subscribing {
                    *self.subscribing.entry(t).or_default() += 1;
                }
                None
            }
            Err(mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c)) => {
                let reference = match &*c {
                    Command::Subscribe { reference, .. }
                    | Command::Unsubscribe { reference, .. }
                    | Command::Transition { reference, .. } => reference.clone(),
                };
                Some(error_from(&reference, &Error::Busy { retry_after_s: 1 }))
            }
        }
    }

    /// The close to send after a write failed: lag and shutdown have their own codes; anything
    /// else means the peer is gone.
    fn failed_send_exit(&self) -> Exit {
        if self.sub.lagged.is_cancelled() {
            metrics::counter!("hub_closed_slow_total").increment(1);
            Some((close::TOO_SLOW, "too slow: outbound queue overflowed"))
        } else if self.hub.shutdown.is_cancelled() {
            Some((close::GOING_AWAY, "hub shutting down"))
        } else {
            None
        }
    }

    /// Records that `version` of an order goes out on this socket; false when it (or a newer
    /// one) already did.
    fn mark_sent(&mut self, id: OrderId, version: i32, is_final: bool) -> bool {
        let prev = self.sent.get(&id).map(|e| e.0).unwrap_or(0);
        if version <= prev {
            return false;
        }
        self.sent.insert(id, (version, is_final.then(Instant::now)));
        true
    }

    /// Forgets final orders long enough ago that no copy of them can still be queued.
    fn prune_sent(&mut self) {
        self.sent
            .retain(|_, (_, done)| done.is_none_or(|t| t.elapsed() < TOMBSTONE_TTL));
    }

    async fn send(&self, socket: &mut WebSocket, text: String) -> Result<(), ()> {
        self.send_msg(socket, Message::Text(text.into())).await
    }

    /// Sends one frame, giving up when the client is too slow, the hub shuts down, or the write
    /// does not complete within [`WRITE_TIMEOUT`] — a session never hangs on a dead peer.
    async fn send_msg(&self, socket: &mut WebSocket, msg: Message) -> Result<(), ()> {
        tokio::select! {
            r = socket.send(msg) => r.map_err(|_| ()),
            _ = self.sub.lagged.cancelled() => Err(()),
            _ = self.hub.shutdown.cancelled() => Err(()),
            _ = tokio::time::sleep(WRITE_TIMEOUT) => Err(()),
        }
    }

    /// Token bucket. Returns an exit when the client keeps flooding after the warning.
    async fn limit(&mut self, socket: &mut WebSocket) -> Option<Exit> {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * RATE).min(RATE);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            if self.tokens >= RATE / 2.0 {
                self.excess = 0;
            }
            return None;
        }
        self.excess += 1;
        metrics::counter!("hub_rate_limited_total").increment(1);
        if self.excess > MAX_EXCESS {
            return Some(Some((close::FLOODING, "rate limit exceeded")));
        }
        if self.excess == 1 {
            let e = error_frame(
                &Value::Null,
                "rate_limited",
                "more than 50 messages per second; slow down",
            );
            if self.send(socket, e).await.is_err() {
                return Some(None);
            }
        }
        None
    }

    /// False while the client is over the rate limit: its messages are dropped unanswered.
    fn within_limit(&self) -> bool {
        self.excess == 0
    }

    /// Handles one client message. `Err` ends the session.
    async fn handle(&mut self, socket: &mut WebSocket, text: &str) -> Result<(), Exit> {
        let msg = match ClientMsg::parse(text) {
            Ok(m) => m,
            Err(why) => {
                let e = error_frame(&Value::Null, "bad_request", &why);
                return self.send(socket, e).await.map_err(|_| None);
            }
        };
        let reply = match msg {
            ClientMsg::Auth { .. } => {
                error_frame(&Value::Null, "bad_request", "already authenticated")
            }
            ClientMsg::Ping => r#"{"type":"pong"}"#.to_owned(),
            ClientMsg::Subscribe { topic, reference } => {
                let r = clean_ref(reference);
                match self.admit_subscription(&topic) {
                    Ok(t) => {
                        match self.enqueue(Command::Subscribe {
                            topic: t,
                            reference: r,
                        }) {
                            None => return Ok(()),
                            Some(busy) => busy,
                        }
                    }
                    Err((code, msg)) => error_frame(&r, code, &msg),
                }
            }
            ClientMsg::Unsubscribe { topic, reference } => {
                let r = clean_ref(reference);
                match Topic::parse(&topic) {
                    Some(t) => match self.enqueue(Command::Unsubscribe {
                        topic: t,
                        reference: r,
                    }) {
                        None => return Ok(()),
                        Some(busy) => busy,
                    },
                    None => error_frame(&r, "bad_topic", "unknown topic"),
                }
            }
            ClientMsg::Transition {
                reference,
                order_id,
                action,
                expected_version,
                otp,
                reason,
            } => {
                let req = TransitionRequest {
                    action,
                    expected_version,
                    otp,
                    reason,
                };
                match self.enqueue(Command::Transition {
                    reference: clean_ref(reference),
                    order_id,
                    req,
                }) {
                    None => return Ok(()),
                    Some(busy) => busy,
                }
            }
            ClientMsg::Location { lat, lng } => {
                let Some(d) = self.driver() else {
                    return self
                        .send(
                            socket,
                            error_frame(&Value::Null, "forbidden", "only drivers send locations"),
                        )
                        .await
                        .map_err(|_| None);
                };
                match GeoPoint::new(lat, lng) {
                    Ok(p) => {
                        self.hub
                            .conns
                            .set_location((Role::Driver, d.0), self.conn, p);
                        self.hub.dispatch.driver_location(d, p);
                        return Ok(());
                    }
                    Err(e) => error_frame(&Value::Null, "bad_location", &e.to_string()),
                }
            }
            ClientMsg::Availability { available } => match self.driver() {
                Some(d) => {
                    self.hub
                        .conns
                        .set_available((Role::Driver, d.0), self.conn, available);
                    self.hub.dispatch.driver_availability(d, available).await;
                    json!({"type": "availability", "available": available}).to_string()
                }
                None => error_frame(&Value::Null, "forbidden", "only drivers set availability"),
            },
        };
        self.send(socket, reply).await.map_err(|_| None)
    }

    fn driver(&self) -> Option<DriverId> {
        (self.actor.role == Role::Driver)
            .then_some(self.actor.id.map(DriverId))
            .flatten()
    }

    /// The checks that need no database: the topic parses, this role and subject may have it,
    /// and the socket has room for it. (An `order:` topic is decided by the worker, from the
    /// order itself.)
    fn admit_subscription(&self, raw: &str) -> Result<Topic, (&'static str, String)> {
        let topic = Topic::parse(raw).ok_or(("bad_topic", format!("unknown topic {raw:?}")))?;
        let a = self.actor;
        let is_admin = a.role == Role::Admin;
        let own = |role: Role, id: uuid::Uuid| is_admin || (a.role == role && a.id == Some(id));
        let allowed = match topic {
            Topic::Shop(s) => own(Role::Vendor, s.0),
            Topic::Driver(d) => own(Role::Driver, d.0),
            Topic::Buyer(b) => own(Role::Buyer, b.0),
            Topic::Fleet => is_admin,
            Topic::Order(_) => true,
        };
        if !allowed {
            return Err(("forbidden", format!("you may not subscribe to {raw}")));
        }
        let held = self.topics.len() + self.subscribing.len();
        if !self.topics.contains(&topic)
            && !self.subscribing.contains_key(&topic)
            && held >= MAX_TOPICS
        {
            return Err((
                "bad_request",
                format!("at most {MAX_TOPICS} topics per connection"),
            ));
        }
        Ok(topic)
    }
}
