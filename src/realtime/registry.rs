//! The topic registry: which connection listens to which topic, and the publisher that hands
//! each of them the same pre-serialized bytes without ever waiting on a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::topic::Topic;
use crate::domain::{BuyerId, DriverId, OrderId, ShopId};
use crate::service::views::{EventView, OrderView};

pub type ConnId = u64;

/// What a connection's queue carries. Cloning is cheap: the text is reference-counted.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An order event: the session drops it unless `version` is newer than what it already sent.
    Order {
        order_id: OrderId,
        version: i32,
        is_final: bool,
        text: Utf8Bytes,
    },
    /// Anything else (fleet driver states).
    Text(Utf8Bytes),
}

/// One connection's end of the fan-out. Every message carries the topic it was published on,
/// so that the session can drop what belongs to a topic it has not been granted (a refused
/// subscription never delivers a message of its topic, even one queued during the check).
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub tx: mpsc::Sender<(Topic, Outbound)>,
    /// Cancelled when the queue overflowed; the session then closes with 4408.
    pub lagged: CancellationToken,
    /// Set for driver sessions: an `order:` topic reaches a driver only while the order is
    /// theirs (or in the event that takes it away).
    pub driver: Option<DriverId>,
}

#[derive(Default)]
pub struct Registry {
    topics: DashMap<Topic, HashMap<ConnId, Subscriber>>,
    next_conn: AtomicU64,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose connection ids count up from `first` (a cluster node's ids carry its
    /// node id in their high bits, so they are unique across nodes).
    pub fn with_first_conn_id(first: u64) -> Self {
        Self {
            topics: DashMap::new(),
            next_conn: AtomicU64::new(first),
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `conn` for `topic`; returns false when it already was.
    pub fn subscribe(&self, topic: Topic, conn: ConnId, sub: Subscriber) -> bool {
        let added = self
            .topics
            .entry(topic)
            .or_default()
            .insert(conn, sub)
            .is_none();
        if added {
            metrics::gauge!("hub_subscriptions").increment(1.0);
        }
        added
    }

    pub fn unsubscribe(&self, topic: Topic, conn: ConnId) -> bool {
        let removed = match self.topics.get_mut(&topic) {
            Some(mut subs) => subs.remove(&conn).is_some(),
            None => false,
        };
        if removed {
            metrics::gauge!("hub_subscriptions").decrement(1.0);
            self.topics.remove_if(&topic, |_, subs| subs.is_empty());
        }
        removed
    }

    pub fn subscriber_count(&self, topic: Topic) -> usize {
        self.topics.get(&topic).map(|s| s.len()).unwrap_or(0)
    }

    /// Hands `msg` to this node's subscribers of `topic` without waiting. Returns how many
    /// took it.
    pub fn publish(&self, topic: Topic, msg: &Outbound) -> usize {
        self.publish_to(topic, msg, |_| true)
    }

    /// Like [`Registry::publish`], for the subscribers `keep` accepts.
    pub(crate) fn publish_to(
        &self,
        topic: Topic,
        msg: &Outbound,
        keep: impl Fn(&Subscriber) -> bool,
    ) -> usize {
        let Some(subs) = self.topics.get(&topic) else {
            return 0;
        };
        let mut delivered = 0;
        for sub in subs.values().filter(|s| keep(s)) {
            match sub.tx.try_send((topic, msg.clone())) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !sub.lagged.is_cancelled() {
                        metrics::counter!("hub_slow_consumers_total").increment(1);
                    }
                    sub.lagged.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        metrics::counter!("hub_messages_delivered_total").increment(delivered as u64);
        delivered
    }

    /// Publishes a committed order event to every topic it belongs to on this node.
    pub fn publish_order(&self, m: &OrderMessage) {
        metrics::counter!("hub_events_published_total").increment(1);
        for topic in m.topics() {
            self.deliver_order(topic, m);
        }
    }

    /// Hands a committed order event to this node's subscribers of one of its topics (the
    /// message only adds that topic's envelope to the bytes serialized once).
    pub fn deliver_order(&self, topic: Topic, m: &OrderMessage) -> usize {
        if self.subscriber_count(topic) == 0 {
            return 0;
        }
        let msg = Outbound::Order {
            order_id: m.order_id,
            version: m.version,
            is_final: m.is_final,
            text: m.text_for(topic).into(),
        };
        // A driver who lost the order no longer follows it on its `order:` topic.
        self.publish_to(topic, &msg, |s| match (topic, s.driver) {
            (Topic::Order(_), Some(d)) => m.driver_id == Some(d) || m.extra_driver == Some(d),
            _ => true,
        })
    }
}

/// A committed order event, serialized once: every topic's message is its envelope around the
/// same `body`, and a cluster node sends `body` and these fields over the bus as they are.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OrderMessage {
    pub order_id: OrderId,
    pub version: i32,
    pub is_final: bool,
    pub shop_id: ShopId,
    pub buyer_id: BuyerId,
    pub driver_id: Option<DriverId>,
    /// The driver the order was just taken from (they see the event that takes it away).
    pub extra_driver: Option<DriverId>,
    /// `"event":{…},"order":{…}`.
    #[serde(skip)]
    pub body: String,
}

impl OrderMessage {
    /// `None` only if serialization fails (it does not for these types).
    pub fn encode(o: &OrderView, ev: &EventView, extra_driver: Option<DriverId>) -> Option<Self> {
        let (Ok(order_json), Ok(event_json)) = (
            serde_json::to_string(o),
            serde_json::to_string(&WireEvent::from(ev)),
        ) else {
            tracing::error!(order = %o.id, "could not serialize an order event");
            return None;
        };
        Some(Self {
            order_id: o.id,
            version: o.version,
            is_final: o.status.is_final(),
            shop_id: o.shop_id,
            buyer_id: o.buyer_id,
            driver_id: o.driver_id,
            extra_driver: extra_driver.filter(|d| Some(*d) != o.driver_id),
            body: format!(r#""event":{event_json},"order":{order_json}"#),
        })
    }

    /// The topics the event is published on: the shop, the buyer, the order, `fleet`, the
    /// driver holding it and the one it was just taken from.
    pub fn topics(&self) -> impl Iterator<Item = Topic> + use<> {
        [
            Some(Topic::Shop(self.shop_id)),
            Some(Topic::Buyer(self.buyer_id)),
            Some(Topic::Order(self.order_id)),
            Some(Topic::Fleet),
            self.driver_id.map(Topic::Driver),
            self.extra_driver.map(Topic::Driver),
        ]
        .into_iter()
        .flatten()
    }

    /// The `order` message as `topic`'s subscribers receive it.
    pub fn text_for(&self, topic: Topic) -> String {
        format!(r#"{{"type":"order","topic":"{topic}",{}}}"#, self.body)
    }
}

/// The `event` object of an `order` message.
#[derive(serde::Serialize)]
struct WireEvent<'a> {
    kind: crate::domain::EventKind,
    version: i32,
    actor: &'a crate::service::views::ActorView,
    payload: &'a serde_json::Value,
    at: chrono::DateTime<chrono::Utc>,
}

impl<'a> From<&'a EventView> for WireEvent<'a> {
    fn from(e: &'a EventView) -> Self {
        Self {
            kind: e.kind,
            version: e.version,
            actor: &e.actor,
            payload: &e.payload,
            at: e.at,
        }
    }
}
