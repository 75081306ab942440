//! The broker: where a committed event goes after the commit. Like centrifuge's `Broker`, it is
//! a seam with an in-process implementation (the default: this node's registry is the whole
//! world) and a NATS one (`crate::cluster::bus`: this node's registry, and every other node's
//! through the bus). The service publishes through it; sessions tell it which topics they
//! follow, so that a cluster node listens on the bus only for topics it has subscribers for.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use futures::future::BoxFuture;

use super::registry::{OrderMessage, Outbound, Registry};
use super::topic::Topic;
use crate::error::Error;

pub trait Broker: Send + Sync {
    /// A committed order event, to every subscriber of its topics wherever they are. Never
    /// waits on a socket or on the bus.
    fn publish_order(&self, m: &OrderMessage);

    /// A driver state for the `fleet` topic.
    fn publish_fleet(&self, text: Utf8Bytes);

    /// Starts listening for `topic` on behalf of one more local subscriber. Resolves once
    /// everything published after it will be received, so a snapshot read afterwards leaves
    /// no gap. Every call counts one watcher, even one that fails: each is matched by exactly
    /// one [`Broker::unwatch`].
    fn watch(&self, topic: Topic) -> BoxFuture<'_, Result<(), Error>>;

    /// One local subscriber of `topic` fewer.
    fn unwatch(&self, topic: Topic);

    /// Whether events can reach other nodes right now (always, in process).
    fn is_up(&self) -> bool;

    /// Whether events may arrive from other nodes (and so out of commit order, see
    /// `docs/cluster.md`): sessions then hold back a version that skips one.
    fn is_distributed(&self) -> bool;
}

/// The in-process broker: one node, one registry. Publishing in commit order (the service
/// holds the order's lock from commit to publish) is delivery in commit order.
pub struct LocalBroker {
    registry: Arc<Registry>,
}

impl LocalBroker {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl Broker for LocalBroker {
    fn publish_order(&self, m: &OrderMessage) {
        self.registry.publish_order(m);
    }

    fn publish_fleet(&self, text: Utf8Bytes) {
        self.registry.publish(Topic::Fleet, &Outbound::Text(text));
    }

    fn watch(&self, _topic: Topic) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }

    fn unwatch(&self, _topic: Topic) {}

    fn is_up(&self) -> bool {
        true
    }

    fn is_distributed(&self) -> bool {
        false
    }
}
