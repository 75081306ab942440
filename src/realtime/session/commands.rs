//! The socket's command worker: the commands that wait on Postgres (`subscribe`,
//! `unsubscribe`, `transition`) run here, one at a time and in the order they arrived, beside
//! the session loop — so that while a transition waits on a slow database the loop keeps
//! draining the outbound queue and answering pings. (While a `subscribe` is in flight the loop
//! holds outbound messages back — bounded by the socket's queue — to keep versions in order.)
//!
//! The worker owns nothing of the session's state; it tells the loop what happened
//! ([`Done`]), and the loop applies it in order (granting a topic, marking the snapshot's
//! versions as sent, then releasing the messages it held back).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::super::protocol::{error_frame, error_from};
use super::super::registry::{ConnId, Subscriber};
use super::super::topic::Topic;
use crate::domain::{Actor, OrderId};
use crate::error::Error;
use crate::service::Hub;
use crate::service::orders::{TransitionRequest, visible};
use crate::service::views::OrderView;
use crate::store::orders::{self as store, Scope};

/// Commands waiting for the worker at most; the next one is answered `busy`.
pub(super) const QUEUE: usize = 32;

pub(super) enum Command {
    /// Already parsed and authorized by role; the worker registers, reads and checks.
    Subscribe {
        topic: Topic,
        reference: Value,
    },
    Unsubscribe {
        topic: Topic,
        reference: Value,
    },
    Transition {
        reference: Value,
        order_id: OrderId,
        req: TransitionRequest,
    },
}

pub(super) enum Done {
    /// A frame to send as it is (an `ack`, an `error`).
    Reply(String),
    /// The topic is registered and its snapshot read: grant it, mark `versions` as sent, send
    /// `frame`, then what was held back for the topic.
    Subscribed {
        topic: Topic,
        frame: String,
        /// (order, version, final) of every order in the snapshot.
        versions: Vec<(OrderId, i32, bool)>,
        /// Whether this registered the socket anew (to undo it if the loop is gone).
        fresh: bool,
    },
    /// The subscription was refused or failed: drop what was held back, send the error.
    Refused {
        topic: Topic,
        frame: String,
    },
    Unsubscribed {
        topic: Topic,
        frame: String,
    },
}

/// What the worker needs of its socket.
pub(super) struct Worker {
    pub hub: Arc<Hub>,
    pub actor: Actor,
    pub conn: ConnId,
    pub sub: Subscriber,
    pub revoked: CancellationToken,
}

impl Worker {
    /// Runs commands until the loop hangs up. A subscription whose result can no longer be
    /// delivered is undone here, so no registration outlives its socket.
    /// (Commands and answers travel boxed: a channel keeps a block of slots per socket, and
    /// pointer-sized slots keep that small with thousands of sockets.)
    pub(super) async fn run(
        self,
        mut commands: mpsc::Receiver<Box<Command>>,
        done: mpsc::Sender<Box<Done>>,
    ) {
        while let Some(c) = commands.recv().await {
            // A revoked token runs nothing more (the loop is closing with 4401), and nothing
            // runs for a socket that is gone.
            if self.revoked.is_cancelled() || done.is_closed() {
                break;
            }
            // Boxed: an idle worker then holds only its small receive state, not the largest
            // command future (per-socket memory, with thousands of sockets).
            let d = Box::pin(self.execute(*c)).await;
            if let Err(mpsc::error::SendError(d)) = done.send(Box::new(d)).await {
                self.undo(*d);
                break;
            }
        }
    }

    /// Unregisters a subscription the loop will never learn of.
    pub(super) fn undo(&self, d: Done) {
        if let Done::Subscribed {
            topic, fresh: true, ..
        } = d
        {
            self.hub.unsubscribe(topic, self.conn);
        }
    }

    async fn execute(&self, c: Command) -> Done {
        let reference = match &c {
            Command::Subscribe { reference, .. }
            | Command::Unsubscribe { reference, .. }
            | Command::Transition { reference, .. } => reference.clone(),
        };
        // While Postgres is known to be down, answer at once.
        if !matches!(c, Command::Unsubscribe { .. })
            && let Err(e) = crate::store::health::check()
        {
            let frame = error_from(&reference, &e);
            return match c {
                Command::Subscribe { topic, .. } => Done::Refused { topic, frame },
                _ => Done::Reply(frame),
            };
        }
        match c {
            Command::Subscribe { topic, reference } => self.subscribe(topic, &reference).await,
            Command::Unsubscribe { topic, reference } => {
                self.hub.unsubscribe(topic, self.conn);
                let frame =
                    json!({"type": "unsubscribed", "topic": topic.to_string(), "ref": reference})
                        .to_string();
                Done::Unsubscribed { topic, frame }
            }
            Command::Transition {
                reference,
                order_id,
                req,
            } => match self.hub.transition(self.actor, order_id, req).await {
                Ok(order) => Done::Reply(
                    json!({"type": "ack", "ref": reference, "order": order}).to_string(),
                ),
                Err(e) => Done::Reply(error_from(&reference, &e)),
            },
        }
    }

    /// Registers first (here and, in a cluster, on the bus), then reads the snapshot: nothing
    /// committed in between can be missed.
    async fn subscribe(&self, topic: Topic, r: &Value) -> Done {
        let fresh = match self.hub.subscribe(topic, self.conn, self.sub.clone()).await {
            Ok(f) => f,
            Err(e) => {
                return Done::Refused {
                    topic,
                    frame: error_from(r, &e),
                };
            }
        };
        let refused = |frame: String| {
            if fresh {
                self.hub.unsubscribe(topic, self.conn);
            }
            Done::Refused { topic, frame }
        };
        let (orders, drivers) = match self.read_snapshot(topic).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return refused(error_frame(
                    r,
                    "forbidden",
                    &format!("you may not subscribe to {topic}"),
                ));
            }
            Err(e) => return refused(error_from(r, &e)),
        };
        let versions = orders
            .iter()
            .map(|o| (o.id, o.version, o.status.is_final()))
            .collect();
        let mut frame =
            json!({"type": "snapshot", "topic": topic.to_string(), "ref": r, "orders": orders});
        if let Some(d) = drivers {
            frame["drivers"] = d;
        }
        Done::Subscribed {
            topic,
            frame: frame.to_string(),
            versions,
            fresh,
        }
    }

    /// The snapshot of a topic, or `None` when the caller may not see it.
    async fn read_snapshot(
        &self,
        topic: Topic,
    ) -> Result<Option<(Vec<OrderView>, Option<Value>)>, Error> {
        let db = &self.hub.db;
        let orders = match topic {
            Topic::Shop(s) => store::active(db, Scope::Shop(s)).await?,
            Topic::Buyer(b) => store::active(db, Scope::Buyer(b)).await?,
            Topic::Driver(d) => store::active(db, Scope::Driver(d)).await?,
            Topic::Fleet => store::active(db, Scope::All).await?,
            Topic::Order(id) => match store::get(db, id).await? {
                Some(o) if visible(self.actor, &o.view) => vec![o],
                _ => return Ok(None),
            },
        };
        let drivers = if topic == Topic::Fleet {
            Some(self.hub.dispatch.fleet().await)
        } else {
            None
        };
        Ok(Some((
            orders.into_iter().map(|o| o.view).collect(),
            drivers,
        )))
    }
}
