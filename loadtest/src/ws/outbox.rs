//! What an actor wants done on its socket: frames to send (transitions get their send time
//! recorded when written) and timers, both the actor's own commands and the retries of
//! transitions the hub answered with `unavailable`/`internal`, with their budgets.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::SinkExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::Lost;
use super::connect::{Ws, short_ws_error};
use crate::backoff::Retry;
use crate::metrics::Metrics;
use crate::proto::{Action, ClientMsg, transition_ref};

pub(super) enum Frame {
    Plain(String),
    Transition {
        json: String,
        order: Uuid,
        action: Action,
    },
}

/// What a timer runs: an actor's command, or a retry of a transition.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due<C> {
    Actor(C),
    Retry(Uuid, Action),
}

struct Timer<C> {
    at: Instant,
    seq: u64,
    cmd: Due<C>,
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

/// Frames to send and timers to run, filled by an [`Actor`]'s callbacks. Timers (and the
/// retry budgets of transitions) outlive a reconnect; unsent frames do not.
pub struct Outbox<C> {
    pub(super) frames: Vec<Frame>,
    timers: BinaryHeap<Timer<C>>,
    seq: u64,
    /// Retries spent per (order, action) after `unavailable`/`internal`; an entry goes when
    /// the hub acks or refuses the command, when the budget is spent, or when the order is
    /// final.
    retries: HashMap<(Uuid, Action), u32>,
}

impl<C> Outbox<C> {
    pub fn new() -> Self {
        Outbox {
            frames: Vec::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            retries: HashMap::new(),
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
        self.at(delay, Due::Actor(cmd));
    }

    fn at(&mut self, delay: Duration, cmd: Due<C>) {
        self.seq += 1;
        self.timers.push(Timer {
            at: Instant::now() + delay,
            seq: self.seq,
            cmd,
        });
    }

    /// The hub answered `action` on `order` with a retriable error: schedule retry number
    /// n+1 after the backoff (never sooner than `retry_after`). Returns false when no retry
    /// is left.
    pub(super) fn schedule_retry(
        &mut self,
        order: Uuid,
        action: Action,
        jitter: f64,
        retry_after: Option<Duration>,
    ) -> bool {
        let n = self.retries.entry((order, action)).or_insert(0);
        *n += 1;
        match Retry::COMMAND.delay(*n, jitter, retry_after) {
            Some(wait) => {
                self.at(wait, Due::Retry(order, action));
                true
            }
            None => {
                self.retries.remove(&(order, action));
                false
            }
        }
    }

    /// The hub settled `action` on `order` (ack or a refusal): its retry budget is done.
    pub(super) fn settled(&mut self, order: Uuid, action: Action) {
        if !self.retries.is_empty() {
            self.retries.remove(&(order, action));
        }
    }

    /// `order` is final: no command on it will be retried any more.
    pub(super) fn finished(&mut self, order: Uuid) {
        if !self.retries.is_empty() {
            for a in Action::ALL {
                self.retries.remove(&(order, a));
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.at)
    }

    pub(super) fn pop_due(&mut self, now: Instant) -> Vec<Due<C>> {
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

/// A failed write: the key for the error table, and whether it says the node is gone.
fn write_lost(e: tokio_tungstenite::tungstenite::Error) -> Lost {
    Lost::new(
        format!("socket:write:{}", short_ws_error(&e)),
        crate::nodes::ws_down(&e),
    )
}

/// Write the outbox's frames; transitions get their send time recorded just before the write.
pub(super) async fn flush<C>(
    ws: &mut Ws,
    out: &mut Outbox<C>,
    metrics: &Metrics,
) -> Result<(), Lost> {
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
        ws.feed(Message::text(json)).await.map_err(write_lost)?;
    }
    ws.flush().await.map_err(write_lost)?;
    metrics.msgs_out.fetch_add(n, Relaxed);
    Ok(())
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
        assert_eq!(due, vec![Due::Actor(1), Due::Actor(11), Due::Actor(2)]);
        assert!(out.next_deadline().is_some());
        assert_eq!(
            out.pop_due(Instant::now() + Duration::from_secs(1)),
            vec![Due::Actor(3)]
        );
        assert!(out.next_deadline().is_none());
    }

    #[test]
    fn transition_retries_are_bounded_and_reset_when_settled() {
        let mut out: Outbox<()> = Outbox::new();
        let o = Uuid::new_v4();
        for _ in 0..Retry::COMMAND.retries {
            assert!(out.schedule_retry(o, Action::Accept, 1.0, None));
        }
        assert!(!out.schedule_retry(o, Action::Accept, 1.0, None));
        assert!(out.retries.is_empty());
        let due = out.pop_due(Instant::now() + Duration::from_secs(60));
        assert_eq!(due.len(), Retry::COMMAND.retries as usize);
        assert!(due.iter().all(|d| *d == Due::Retry(o, Action::Accept)));
        // an ack gives the command a fresh budget next time
        assert!(out.schedule_retry(o, Action::MarkReady, 1.0, None));
        out.settled(o, Action::MarkReady);
        assert!(out.retries.is_empty());
        // a final order forgets every budget of its own, and only those
        let other = Uuid::new_v4();
        assert!(out.schedule_retry(o, Action::PickUp, 1.0, None));
        assert!(out.schedule_retry(other, Action::PickUp, 1.0, None));
        out.finished(o);
        assert_eq!(out.retries.len(), 1);
        assert!(out.retries.contains_key(&(other, Action::PickUp)));
    }

    #[test]
    fn transition_retry_waits_for_retry_after() {
        let mut out: Outbox<()> = Outbox::new();
        let o = Uuid::new_v4();
        let before = Instant::now();
        assert!(out.schedule_retry(o, Action::Deliver, 0.5, Some(Duration::from_secs(2))));
        assert!(out.next_deadline().unwrap() >= before + Duration::from_secs(2));
        assert!(
            out.pop_due(Instant::now() + Duration::from_millis(1900))
                .is_empty()
        );
    }
}
