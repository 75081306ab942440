//! Version gaps, in a cluster. Events of one order committed on different nodes travel the bus
//! from different publishers, so a socket can receive version 7 before version 6. Never
//! applying an older version after a newer one is the session's `sent` check; not *silently
//! missing* one is this: a version that skips one is parked for [`WAIT`], delivered as soon as
//! the missing one arrives, and if it does not, the order is read back from Postgres and its
//! current version delivered instead (a client that holds it holds the truth; see
//! `docs/cluster.md`).
//!
//! It applies to topics that carry every version of an order (shop, buyer, order, fleet); a
//! driver's view skips versions by design (they follow an order only while it is theirs).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;

use super::super::topic::Topic;
use crate::domain::OrderId;

/// How long a version that skips one waits for the missing one before the order is read back.
pub(super) const WAIT: Duration = Duration::from_millis(200);

/// Orders with a gap at most per socket; beyond it the newest version is delivered as is.
const MAX_GAPS: usize = 256;

#[derive(Default)]
pub(super) struct Gaps {
    map: HashMap<OrderId, Gap>,
}

struct Gap {
    topic: Topic,
    parked: BTreeMap<i32, (Utf8Bytes, bool)>,
    deadline: Instant,
    refetching: bool,
}

impl Gaps {
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Parks a version that skips one; false when too many orders have gaps already.
    pub(super) fn park(
        &mut self,
        order: OrderId,
        version: i32,
        topic: Topic,
        text: Utf8Bytes,
        is_final: bool,
    ) -> bool {
        if !self.map.contains_key(&order) && self.map.len() >= MAX_GAPS {
            return false;
        }
        metrics::counter!("hub_version_gaps_total").increment(1);
        let g = self.map.entry(order).or_insert_with(|| Gap {
            topic,
            parked: BTreeMap::new(),
            deadline: Instant::now() + WAIT,
            refetching: false,
        });
        g.parked.insert(version, (text, is_final));
        true
    }

    /// The earliest deadline of a gap not being read back yet.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.map
            .values()
            .filter(|g| !g.refetching)
            .map(|g| g.deadline)
            .min()
    }

    /// Gaps whose wait is over (now being read back), with the topic to answer on.
    pub(super) fn due(&mut self, now: Instant) -> Vec<(OrderId, Topic)> {
        let mut out = Vec::new();
        for (id, g) in &mut self.map {
            if !g.refetching && g.deadline <= now {
                g.refetching = true;
                out.push((*id, g.topic));
            }
        }
        out
    }

    /// After `sent` went out for an order: drops its parked versions up to it and returns the
    /// next one if it follows directly.
    pub(super) fn take_next(
        &mut self,
        order: OrderId,
        sent: i32,
    ) -> Option<(i32, Utf8Bytes, bool)> {
        let g = self.map.get_mut(&order)?;
        while let Some(entry) = g.parked.first_entry() {
            if *entry.key() <= sent {
                entry.remove();
            } else {
                break;
            }
        }
        let next = match g.parked.first_entry() {
            Some(e) if *e.key() == sent + 1 => {
                let (v, (t, f)) = e.remove_entry();
                Some((v, t, f))
            }
            _ => None,
        };
        if g.parked.is_empty() && !g.refetching {
            self.map.remove(&order);
        }
        next
    }

    /// The read-back of `order` is done: what is still parked waits again (or goes out, with
    /// `give_up`, in order).
    pub(super) fn refetched(
        &mut self,
        order: OrderId,
        give_up: bool,
    ) -> Vec<(i32, Utf8Bytes, bool)> {
        let Some(g) = self.map.get_mut(&order) else {
            return Vec::new();
        };
        g.refetching = false;
        g.deadline = Instant::now() + WAIT;
        if give_up || g.parked.is_empty() {
            let g = self.map.remove(&order);
            return g
                .map(|g| g.parked.into_iter().map(|(v, (t, f))| (v, t, f)).collect())
                .unwrap_or_default();
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_versions_come_out_in_order_once_the_gap_fills() {
        let o = OrderId(uuid::Uuid::now_v7());
        let mut g = Gaps::default();
        assert!(g.park(o, 7, Topic::Fleet, "7".into(), false));
        assert!(g.park(o, 8, Topic::Fleet, "8".into(), false));
        assert!(g.next_deadline().is_some());
        // 5 went out: 7 does not follow yet.
        assert!(g.take_next(o, 5).is_none());
        // 6 went out: 7 then 8 follow, and the gap is gone.
        assert_eq!(g.take_next(o, 6).map(|n| n.0), Some(7));
        assert_eq!(g.take_next(o, 7).map(|n| n.0), Some(8));
        assert!(g.take_next(o, 8).is_none());
        assert!(g.is_empty());
    }

    #[test]
    fn a_gap_that_does_not_fill_is_read_back() {
        let o = OrderId(uuid::Uuid::now_v7());
        let mut g = Gaps::default();
        g.park(o, 9, Topic::Fleet, "9".into(), false);
        assert!(g.due(Instant::now()).is_empty());
        let due = g.due(Instant::now() + WAIT);
        assert_eq!(due.len(), 1);
        // Being read back: no deadline to wait for.
        assert!(g.next_deadline().is_none());
        // The read-back delivered version 9: nothing parked is left.
        assert!(g.take_next(o, 9).is_none());
        assert!(g.refetched(o, false).is_empty());
        assert!(g.is_empty());
    }
}
