//! The NATS broker: committed events to every node, and the subjects nodes talk on.
//!
//! Subjects (all under the cluster's prefix, `HUB_CLUSTER`):
//! - `<p>.t.<topic>` — an event for a socket topic (`<p>.t.shop:<id>`, `<p>.t.fleet`, …). A
//!   node subscribes to one only while it has local subscribers to the topic ([`NatsBus::watch`]
//!   confirms the subscription with a round trip to the server before the snapshot is read).
//! - `<p>.dispatch` — driver presence and order changes, forwarded to the dispatcher's leader.
//! - `<p>.fleet` — request/reply: the leader's fleet snapshot.
//! - `<p>.leader` — a new leader's announcement; every node re-announces its drivers.
//! - `<p>.revoke`, `<p>.login` — logouts and login outcomes, applied on every node.
//!
//! The connection does not echo a node's own messages back to it: a node delivers to its own
//! sockets directly (before the bus), and handles its own control messages in place.
//!
//! Publishing never waits: messages go through a bounded queue to one task that writes them to
//! the connection in order (so one node's events for an order leave in commit order). A full
//! queue (the bus down for long) drops and counts (`hub_bus_dropped_total`); receivers then see
//! a version gap and refetch (see `docs/cluster.md`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::connection::State;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use crate::error::Error;
use crate::realtime::registry::{OrderMessage, Outbound, Registry};
use crate::realtime::{Broker, Topic};

/// Messages waiting for the bus at most.
const OUT_QUEUE: usize = 65_536;

/// How long a subscription may take to be confirmed by the server before the socket's
/// `subscribe` answers `unavailable`.
const WATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct NatsBus {
    client: async_nats::Client,
    prefix: String,
    registry: Arc<Registry>,
    out: mpsc::Sender<(String, Bytes)>,
    watches: Mutex<HashMap<Topic, Watch>>,
    /// Bumped each time the connection comes back after a loss (nodes then re-announce their
    /// drivers: an announcement of a new leader may have passed them by).
    reconnects: watch::Sender<u64>,
}

/// An order event older than this when it arrives (a backlog sent after a bus outage) is
/// dropped: sockets may have forgotten the order's newer versions by then.
const MAX_AGE_MS: u64 = 30_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Watch {
    refs: usize,
    /// `None` while the first watcher is subscribing; then whether it worked.
    subscribed: watch::Receiver<Option<bool>>,
    reader: Option<AbortHandle>,
}

impl NatsBus {
    /// Connects (retrying in the background if the server is not up yet: `/readyz` says 503
    /// meanwhile) and starts the publishing task.
    pub async fn connect(
        url: &str,
        prefix: &str,
        node_name: &str,
        registry: Arc<Registry>,
    ) -> Result<Arc<Self>, async_nats::ConnectError> {
        let reconnects = watch::Sender::new(0u64);
        let on_event = reconnects.clone();
        let client = async_nats::ConnectOptions::new()
            .name(format!("dispatch-hub {node_name}"))
            .no_echo()
            .retry_on_initial_connect()
            .request_timeout(Some(std::time::Duration::from_secs(2)))
            .event_callback(move |e| {
                let on_event = on_event.clone();
                async move {
                    match e {
                        async_nats::Event::Connected => {
                            tracing::info!("bus connected");
                            on_event.send_modify(|n| *n += 1);
                        }
                        async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                        other => tracing::debug!(event = %other, "bus event"),
                    }
                }
            })
            .connect(url)
            .await?;
        let (out, mut out_rx) = mpsc::channel::<(String, Bytes)>(OUT_QUEUE);
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some((subject, payload)) = out_rx.recv().await {
                if let Err(e) = publisher.publish(subject, payload).await {
                    metrics::counter!("hub_bus_dropped_total").increment(1);
                    tracing::debug!(error = %e, "bus publish failed");
                }
            }
        });
        Ok(Arc::new(Self {
            client,
            prefix: prefix.to_owned(),
            registry,
            out,
            watches: Mutex::new(HashMap::new()),
            reconnects,
        }))
    }

    /// Changes each time the connection is (re-)established.
    pub fn watch_connects(&self) -> watch::Receiver<u64> {
        self.reconnects.subscribe()
    }

    /// A round trip through the server: a request nobody answers comes back as "no
    /// responders" once the server has processed everything this connection sent before it
    /// (the server handles one connection's operations in order) — a subscription included.
    /// (`Client::flush` only writes the buffer out.)
    async fn round_trip(&self) -> Result<(), Error> {
        let subject = format!("{}.rtt.{}", self.prefix, uuid::Uuid::now_v7().simple());
        match self.client.request(subject, Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "bus round trip failed");
                Err(Error::Unavailable)
            }
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// `<prefix>.<name>`.
    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    fn topic_subject(&self, topic: Topic) -> String {
        format!("{}.t.{topic}", self.prefix)
    }

    /// Queues a message for the bus without waiting; false when it had to be dropped.
    pub fn send(&self, subject: String, payload: Bytes) -> bool {
        match self.out.try_send((subject, payload)) {
            Ok(()) => {
                metrics::counter!("hub_bus_published_total").increment(1);
                true
            }
            Err(_) => {
                metrics::counter!("hub_bus_dropped_total").increment(1);
                false
            }
        }
    }

    async fn subscribe(&self, topic: Topic) -> Result<(), Error> {
        let sub = self
            .client
            .subscribe(self.topic_subject(topic))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, %topic, "bus subscribe failed");
                Error::Unavailable
            })?;
        let registry = self.registry.clone();
        let reader = tokio::spawn(read_topic(topic, sub, registry)).abort_handle();
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        match watches.get_mut(&topic) {
            Some(w) if w.reader.is_none() => w.reader = Some(reader),
            // Every watcher left while this one subscribed.
            _ => reader.abort(),
        }
        Ok(())
    }
}

/// Delivers what the bus brings for one topic to this node's subscribers of it.
async fn read_topic(topic: Topic, mut sub: async_nats::Subscriber, registry: Arc<Registry>) {
    while let Some(m) = sub.next().await {
        metrics::counter!("hub_bus_received_total").increment(1);
        match decode(&m.payload) {
            Some(Received::Order(msg, sent_ms)) => {
                if now_ms().saturating_sub(sent_ms) > MAX_AGE_MS {
                    metrics::counter!("hub_bus_stale_dropped_total").increment(1);
                    continue;
                }
                registry.deliver_order(topic, &msg);
            }
            Some(Received::Text(text)) => {
                registry.publish(topic, &Outbound::Text(text));
            }
            None => {
                tracing::warn!(%topic, "undecodable bus message dropped");
            }
        }
    }
}

enum Received {
    /// The event, and when it was published (ms since the epoch).
    Order(OrderMessage, u64),
    Text(Utf8Bytes),
}

/// The header of an order event on the bus.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head<M> {
    #[serde(flatten)]
    m: M,
    /// Published at, in ms since the epoch.
    sent_ms: u64,
}

/// An order event on the bus: `o` + [`Head`] as JSON + `\n` + its body. A text message: `t`
/// + the text.
fn encode_order(m: &OrderMessage) -> Option<Bytes> {
    let head = serde_json::to_vec(&Head {
        m,
        sent_ms: now_ms(),
    })
    .ok()?;
    let mut buf = Vec::with_capacity(2 + head.len() + m.body.len());
    buf.push(b'o');
    buf.extend_from_slice(&head);
    buf.push(b'\n');
    buf.extend_from_slice(m.body.as_bytes());
    Some(Bytes::from(buf))
}

fn decode(payload: &[u8]) -> Option<Received> {
    match payload.split_first()? {
        (b'o', rest) => {
            let nl = rest.iter().position(|b| *b == b'\n')?;
            let head: Head<OrderMessage> = serde_json::from_slice(&rest[..nl]).ok()?;
            let mut m = head.m;
            m.body = std::str::from_utf8(&rest[nl + 1..]).ok()?.to_owned();
            Some(Received::Order(m, head.sent_ms))
        }
        (b't', rest) => Some(Received::Text(
            std::str::from_utf8(rest).ok()?.to_owned().into(),
        )),
        _ => None,
    }
}

impl Broker for NatsBus {
    fn publish_order(&self, m: &OrderMessage) {
        self.registry.publish_order(m);
        let Some(payload) = encode_order(m) else {
            return;
        };
        for topic in m.topics() {
            self.send(self.topic_subject(topic), payload.clone());
        }
    }

    fn publish_fleet(&self, text: Utf8Bytes) {
        self.registry
            .publish(Topic::Fleet, &Outbound::Text(text.clone()));
        let mut buf = Vec::with_capacity(1 + text.len());
        buf.push(b't');
        buf.extend_from_slice(text.as_bytes());
        self.send(self.topic_subject(Topic::Fleet), Bytes::from(buf));
    }

    fn watch(&self, topic: Topic) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            // The first watcher subscribes; the others wait until its SUB is queued. Then each
            // flushes: the server has the subscription once its PONG is back.
            let (first, mut subscribed) = {
                let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
                match watches.get_mut(&topic) {
                    Some(w) => {
                        w.refs += 1;
                        (None, w.subscribed.clone())
                    }
                    None => {
                        let (tx, rx) = watch::channel(None);
                        watches.insert(
                            topic,
                            Watch {
                                refs: 1,
                                subscribed: rx.clone(),
                                reader: None,
                            },
                        );
                        (Some(tx), rx)
                    }
                }
            };
            let confirmed = async {
                match first {
                    Some(tx) => {
                        let r = self.subscribe(topic).await;
                        tx.send_replace(Some(r.is_ok()));
                        r?;
                    }
                    None => match subscribed.wait_for(Option::is_some).await {
                        Ok(v) if *v == Some(true) => {}
                        _ => return Err(Error::Unavailable),
                    },
                }
                self.round_trip().await
            };
            // (A first watcher that times out leaves `subscribed` at `None`; the next
            // watchers time out too, and the entry goes with the last of them.)
            // On failure the caller unregisters the socket, which unwatches (once).
            match tokio::time::timeout(WATCH_TIMEOUT, confirmed).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(%topic, "bus subscription not confirmed in time");
                    Err(Error::Unavailable)
                }
            }
        })
    }

    fn unwatch(&self, topic: Topic) {
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = watches.get_mut(&topic) {
            w.refs = w.refs.saturating_sub(1);
            if w.refs == 0 {
                if let Some(r) = w.reader.take() {
                    r.abort();
                }
                watches.remove(&topic);
            }
        }
        metrics::gauge!("hub_bus_subscriptions").set(watches.len() as f64);
    }

    fn is_up(&self) -> bool {
        self.is_connected()
    }

    fn is_distributed(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BuyerId, DriverId, OrderId, ShopId};

    #[test]
    fn an_order_message_survives_the_bus_encoding() {
        let m = OrderMessage {
            order_id: OrderId(uuid::Uuid::now_v7()),
            version: 7,
            is_final: false,
            shop_id: ShopId(uuid::Uuid::now_v7()),
            buyer_id: BuyerId(uuid::Uuid::now_v7()),
            driver_id: Some(DriverId(uuid::Uuid::now_v7())),
            extra_driver: None,
            body: r#""event":{"a":"x\ny"},"order":{}"#.into(),
        };
        let Some(Received::Order(back, sent_ms)) = encode_order(&m).and_then(|b| decode(&b)) else {
            panic!("not decoded as an order");
        };
        assert!(now_ms().saturating_sub(sent_ms) < 1_000);
        assert_eq!(back.order_id, m.order_id);
        assert_eq!(back.version, 7);
        assert_eq!(back.driver_id, m.driver_id);
        assert_eq!(back.body, m.body);
        assert!(decode(b"").is_none());
        assert!(decode(b"o{not json}\n").is_none());
        assert!(matches!(decode(b"thello"), Some(Received::Text(_))));
    }
}
