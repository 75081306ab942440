//! After the load: which of the orders this run placed are unfinished, decided by the hub.
//!
//! The sockets cannot tell. A shop socket that was reconnecting when one of its orders was
//! delivered never hears of it: the new snapshot lists active orders only, so the socket's view
//! keeps the order at its last active status for ever. The hub can: the drain asks it,
//! `GET /api/orders/{id}` with the token of the buyer who placed the order, at most
//! `concurrency` requests at once, each retried on no answer and 503 (honouring
//! `Retry-After`), within an overall deadline. The [`Verdict`] sets what the sockets saw beside
//! what the hub says; only the hub's answer decides "unfinished".
//!
//! The answers are also a check: every order message a socket received was committed before it
//! was sent, so the hub must never answer an older version of an order than a socket already
//! had, nor another status than a final one a socket saw (counted as `hub_behind_sockets`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use crate::backoff::Retry;
use crate::metrics::Seen;
use crate::proto::Order;
use crate::rest::Rest;

/// What the hub answered about each order asked: `None` when it could not be asked (no
/// answer after the retries, an error, or the deadline came first).
pub type Answers = HashMap<Uuid, Option<Order>>;

/// Ask the hub about `orders` (id and a token that may see it), at most `concurrency` at once,
/// until `deadline`.
pub async fn ask_hub(
    rest: &Rest,
    orders: Vec<(Uuid, String)>,
    concurrency: usize,
    deadline: Instant,
) -> Answers {
    let mut answers: Answers = orders.iter().map(|(id, _)| (*id, None)).collect();
    let mut replies = futures::stream::iter(orders)
        .map(|(id, token)| async move {
            let path = format!("/api/orders/{id}");
            let r = rest
                .retrying(Retry::CHECK, || rest.get::<Order>(&path, Some(&token)))
                .await;
            (id, r.ok().map(|(_, o)| o))
        })
        .buffer_unordered(concurrency.max(1));
    // past the deadline the orders not answered yet stay `None`
    while let Ok(Some((id, answer))) = tokio::time::timeout_at(deadline, replies.next()).await {
        answers.insert(id, answer);
    }
    answers
}

/// The sockets' view of the placed orders beside the hub's.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Orders this run placed and the drain asked about.
    pub asked: usize,
    /// Orders the hub answered about.
    pub answered: usize,
    /// Orders the hub could not be asked about (counted as a `--strict` failure).
    pub unverified: usize,
    /// Orders still active according to the hub: **the** unfinished count.
    pub unfinished: usize,
    /// The hub's status of each of those.
    pub unfinished_by_status: BTreeMap<String, usize>,
    /// Orders the shop sockets never saw reach a final status.
    pub unfinished_on_sockets: usize,
    /// Of those, the ones the hub says are final (finished while a socket was not listening).
    pub finished_unseen: usize,
    /// Orders where the hub is behind what a socket saw (a correctness violation each).
    pub hub_behind_sockets: Vec<String>,
}

/// Set the sockets' view of every placed order (`seen`) beside the hub's `answers`.
pub fn judge(seen: &[(Uuid, Seen)], answers: &Answers) -> Verdict {
    let mut v = Verdict {
        asked: seen.len(),
        ..Verdict::default()
    };
    for (id, s) in seen {
        let socket_final = s.status.is_final();
        if !socket_final {
            v.unfinished_on_sockets += 1;
        }
        let Some(Some(hub)) = answers.get(id) else {
            v.unverified += 1;
            continue;
        };
        v.answered += 1;
        if hub.status.is_final() {
            if !socket_final {
                v.finished_unseen += 1;
            }
        } else {
            v.unfinished += 1;
            *v.unfinished_by_status
                .entry(hub.status.as_str().to_string())
                .or_insert(0) += 1;
        }
        if hub.version < s.version || (socket_final && hub.status != s.status) {
            v.hub_behind_sockets.push(format!(
                "order {id}: the hub answers v{} ({}) after a socket had v{} ({})",
                hub.version,
                hub.status.as_str(),
                s.version,
                s.status.as_str()
            ));
        }
    }
    v
}

/// How long the final check may take at most; what is not answered by then is unverified.
pub const CHECK_BUDGET: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Status;

    fn seen(status: Status, version: u64) -> Seen {
        Seen { status, version }
    }

    fn hub(id: Uuid, status: Status, version: u64) -> Option<Order> {
        Some(Order {
            id,
            shop_id: None,
            buyer_id: None,
            driver_id: None,
            status,
            version,
        })
    }

    #[test]
    fn the_hub_decides_what_is_unfinished() {
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        let seen_by_sockets = vec![
            // delivered while the shop socket was reconnecting: the socket still holds v5
            (ids[0], seen(Status::PickedUp, 5)),
            // seen delivered, and delivered
            (ids[1], seen(Status::Delivered, 6)),
            // really stuck
            (ids[2], seen(Status::Ready, 3)),
            // the sockets are behind, and so is the order
            (ids[3], seen(Status::Accepted, 2)),
            // never answered
            (ids[4], seen(Status::Assigned, 4)),
        ];
        let answers: Answers = [
            (ids[0], hub(ids[0], Status::Delivered, 6)),
            (ids[1], hub(ids[1], Status::Delivered, 6)),
            (ids[2], hub(ids[2], Status::Ready, 3)),
            (ids[3], hub(ids[3], Status::Assigned, 4)),
            (ids[4], None),
        ]
        .into_iter()
        .collect();
        let v = judge(&seen_by_sockets, &answers);
        assert_eq!(v.asked, 5);
        assert_eq!(v.answered, 4);
        assert_eq!(v.unverified, 1);
        assert_eq!(v.unfinished_on_sockets, 4);
        assert_eq!(v.finished_unseen, 1);
        assert_eq!(v.unfinished, 2);
        assert_eq!(v.unfinished_by_status.get("ready"), Some(&1));
        assert_eq!(v.unfinished_by_status.get("assigned"), Some(&1));
        assert!(v.hub_behind_sockets.is_empty());
    }

    #[test]
    fn an_order_missing_from_the_answers_is_unverified() {
        let id = Uuid::new_v4();
        let v = judge(&[(id, seen(Status::Delivered, 6))], &Answers::new());
        assert_eq!(
            (v.asked, v.answered, v.unverified, v.unfinished),
            (1, 0, 1, 0)
        );
        assert_eq!(v.unfinished_on_sockets, 0);
    }

    #[test]
    fn the_hub_behind_a_socket_is_flagged() {
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let seen_by_sockets = vec![
            (a, seen(Status::Delivered, 6)),
            (b, seen(Status::PickedUp, 5)),
            (c, seen(Status::Cancelled, 2)),
        ];
        let answers: Answers = [
            // a socket saw it delivered, the hub says it is still picked up
            (a, hub(a, Status::PickedUp, 5)),
            // an older version than a socket had
            (b, hub(b, Status::Assigned, 4)),
            // a different final status at a newer version
            (c, hub(c, Status::Delivered, 6)),
        ]
        .into_iter()
        .collect();
        let v = judge(&seen_by_sockets, &answers);
        assert_eq!(v.hub_behind_sockets.len(), 3);
        assert_eq!(v.unfinished, 2);
        assert!(v.hub_behind_sockets[0].contains("v5 (picked_up)"));
    }
}
