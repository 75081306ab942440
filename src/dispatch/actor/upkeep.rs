//! The dispatcher's upkeep: the periodic tick (staleness, grace periods, retries), fleet
//! updates, batched position writes, and the background work it spawns.

use std::time::{Duration, Instant};

use chrono::Utc;
use uuid::Uuid;

use super::{Driver, FLEET_EVERY, RETRY_AFTER, State};
use crate::dispatch::{DriverState, OrderChanged};
use crate::domain::{Action, Actor, DriverId, GeoPoint, OrderId, OrderStatus};
use crate::realtime::Topic;
use crate::service::orders::TransitionRequest;
use crate::store;

/// An assignment not reported back within this long releases its driver.
pub(super) const RESERVATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl State {
    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        // Assignments whose commit never reported back (a task that died, a commit stuck in
        // the database): the driver is free again and the order waits again. Should the
        // commit land later after all, its `assigned` event puts the state right.
        let expired: Vec<(OrderId, DriverId)> = self
            .inflight
            .iter()
            .filter(|(_, (_, since))| now.duration_since(*since) >= RESERVATION_TIMEOUT)
            .map(|(o, (d, _))| (*o, *d))
            .collect();
        for (order, driver) in expired {
            metrics::counter!("hub_dispatch_reservations_expired_total").increment(1);
            tracing::warn!(%order, %driver, "assignment never reported back; releasing the driver");
            self.assign_done(order, driver, Err(super::AssignFailure::Transient));
        }
        // Drivers whose last location is too old go offline; free ones leave the index.
        let ids: Vec<DriverId> = self.drivers.keys().copied().collect();
        for id in &ids {
            let Some(d) = self.drivers.get(id) else {
                continue;
            };
            let online = self.is_online(d, now);
            let stale_in_index = d.indexed_at.is_some() && !self.is_free(d, now);
            let unblocked = d.blocked_until.is_some_and(|t| now >= t);
            if (online == d.offline_since.is_some()) || stale_in_index || unblocked {
                if unblocked && let Some(d) = self.drivers.get_mut(id) {
                    d.blocked_until = None;
                }
                self.refresh(*id);
            }
        }
        // Drivers offline past the grace period while holding an order.
        let grace: Vec<(DriverId, OrderId)> = self
            .drivers
            .iter()
            .filter_map(|(id, d)| {
                let order = d.order?;
                let since = d.offline_since?;
                (now.duration_since(since) >= self.grace
                    && d.handled_loss != Some(order)
                    && d.loss_retry_at.is_none_or(|t| now >= t))
                .then_some((*id, order))
            })
            .collect();
        for (driver, order) in grace {
            if let Some(d) = self.drivers.get_mut(&driver) {
                d.handled_loss = Some(order);
            }
            self.spawn_lost(driver, order);
        }
        // Orders whose retry time has come.
        let due: Vec<OrderId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.retry_at.is_some_and(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(w) = self.waiting.get_mut(&id) {
                w.retry_at = None;
            }
            self.try_dispatch(id);
        }
        for id in ids {
            self.publish_fleet(id);
        }
        let every = Duration::from_secs(self.hub.config.position_flush_s.max(1));
        if now.duration_since(self.last_flush) >= every
            && let Some(write) = self.flush_positions()
        {
            tokio::spawn(write);
        }
        let reconcile_every = Duration::from_secs(self.hub.config.dispatch_reconcile_s.max(1));
        if now.duration_since(self.last_reconcile) >= reconcile_every {
            self.last_reconcile = now;
            self.spawn_reconcile();
        }
    }

    /// Reads the `ready` orders from Postgres and hands them back as [`super::Control::Reconcile`].
    fn spawn_reconcile(&self) {
        let hub = self.hub.clone();
        tokio::spawn(async move {
            match store::fleet::ready_orders(&hub.db).await {
                Ok(rows) => {
                    let ready = rows
                        .into_iter()
                        .filter_map(|r| {
                            let shop = GeoPoint::new(r.shop_lat, r.shop_lng).ok()?;
                            Some((OrderId(r.id), r.version, shop))
                        })
                        .collect();
                    hub.dispatch.reconcile(ready).await;
                }
                Err(e) => tracing::warn!(error = %e, "dispatcher reconciliation read failed"),
            }
        });
    }

    /// Adds the `ready` orders the queue lacks. Never removes: a change the read did not see
    /// yet may already be on its way, and a stale entry only costs a failed assignment.
    pub(super) fn reconcile(&mut self, ready: Vec<(OrderId, i32, GeoPoint)>) {
        let mut added = 0u64;
        for (id, version, shop) in ready {
            let known = self.waiting.contains_key(&id)
                || self.inflight.contains_key(&id)
                || self.waiting_parked.contains_key(&id);
            if !known {
                self.enqueue(id, version, shop);
                self.try_dispatch(id);
                added += 1;
            }
        }
        if added > 0 {
            metrics::counter!("hub_dispatch_reconciled_total").increment(added);
            tracing::warn!(
                added,
                "dispatcher reconciliation found ready orders missing from its queue"
            );
        }
    }

    pub(super) fn spawn_shop_lookup(&self, mut c: OrderChanged) {
        let hub = self.hub.clone();
        c.previous_driver = None; // already handled
        tokio::spawn(async move {
            loop {
                match hub.shop_position(c.shop_id).await {
                    Ok(Some(p)) => {
                        c.shop_pos = Some(p);
                        hub.dispatch.order_changed(c).await;
                        return;
                    }
                    Ok(None) => return, // shops are never deleted; nothing to dispatch from
                    Err(e) => {
                        tracing::warn!(error = %e, order = %c.id, "shop lookup failed; retrying")
                    }
                }
                tokio::select! {
                    _ = hub.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
            }
        });
    }

    /// A driver offline past the grace period: before pickup the order goes back to the queue
    /// (`unassign`); after pickup it is not silently reassigned — `driver_lost` is recorded.
    pub(super) fn spawn_lost(&self, driver: DriverId, order: OrderId) {
        let hub = self.hub.clone();
        tokio::spawn(async move {
            let current = match hub.get_order(Actor::SYSTEM, order).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, %order, "could not read order of a lost driver");
                    hub.dispatch.loss_handled(driver, order, false).await;
                    return;
                }
            };
            let action = match (current.status, current.driver_id == Some(driver)) {
                (OrderStatus::Assigned, true) => Action::Unassign,
                (OrderStatus::PickedUp, true) => Action::ReportDriverLost,
                _ => return hub.dispatch.loss_handled(driver, order, true).await,
            };
            let req = TransitionRequest {
                action,
                expected_version: current.version,
                otp: None,
                reason: Some("driver offline past the grace period".into()),
            };
            let ok = match hub.transition(Actor::SYSTEM, order, req).await {
                Ok(_) => {
                    tracing::info!(%order, %driver, ?action, "driver lost");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, %order, "could not handle a lost driver; will retry");
                    false
                }
            };
            hub.dispatch.loss_handled(driver, order, ok).await;
        });
    }

    /// Reads the name of a driver the dispatcher met only now (created after it started).
    pub(super) fn spawn_name_lookup(&self, driver: DriverId) {
        let hub = self.hub.clone();
        tokio::spawn(async move {
            match store::accounts::driver_name(&hub.db, driver.0).await {
                Ok(Some(name)) => hub.dispatch.driver_named(driver, name).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, %driver, "could not read a driver's name"),
            }
        });
    }

    pub(super) fn driver_state(&self, id: DriverId, d: &Driver, now: Instant) -> DriverState {
        let state = if !self.is_online(d, now) {
            "offline"
        } else if d.order.is_some() || d.reserved.is_some() {
            "busy"
        } else if !d.available {
            "unavailable"
        } else {
            "free"
        };
        // The job's leg holds whether or not the driver is online right now.
        let leg = match (d.order, d.reserved) {
            (Some(_), _) if d.picked_up => Some("carrying"),
            (Some(_), _) | (None, Some(_)) => Some("to_shop"),
            (None, None) => None,
        };
        DriverState {
            id,
            name: d.name.clone(),
            lat: d.pos.map(|p| p.lat),
            lng: d.pos.map(|p| p.lng),
            state,
            order_id: d.order.or(d.reserved),
            leg,
            at: Utc::now(),
        }
    }

    /// Sends a driver's state to `fleet`, at most once per second per driver.
    pub(super) fn publish_fleet(&mut self, id: DriverId) {
        let now = Instant::now();
        let Some(d) = self.drivers.get(&id) else {
            return;
        };
        if !d.fleet_dirty
            || d.last_fleet
                .is_some_and(|t| now.duration_since(t) < FLEET_EVERY)
        {
            return;
        }
        // In a cluster the watchers may be on other nodes: the bus always gets it.
        if self.hub.broker.is_distributed() || self.hub.registry.subscriber_count(Topic::Fleet) > 0
        {
            let state = self.driver_state(id, d, now);
            if let Ok(json) = serde_json::to_string(&state) {
                let text = format!(r#"{{"type":"driver","topic":"fleet","driver":{json}}}"#);
                self.hub.broker.publish_fleet(text.into());
            }
        }
        if let Some(d) = self.drivers.get_mut(&id) {
            d.fleet_dirty = false;
            d.last_fleet = Some(now);
        }
    }

    /// Takes the positions that changed since the last flush and returns the one statement
    /// that writes them (the caller spawns it, or awaits it on shutdown).
    pub(super) fn flush_positions(
        &mut self,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        self.last_flush = Instant::now();
        let now = Utc::now();
        let (mut ids, mut lats, mut lngs, mut ats) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, d) in self.drivers.iter_mut() {
            if !d.pos_dirty {
                continue;
            }
            d.pos_dirty = false;
            if let Some(p) = d.pos {
                ids.push(id.0);
                lats.push(p.lat);
                lngs.push(p.lng);
                ats.push(now);
            }
        }
        if ids.is_empty() {
            return None;
        }
        let db = self.hub.db.clone();
        Some(async move {
            let ids: Vec<Uuid> = ids;
            if let Err(e) = store::fleet::save_positions(&db, &ids, &lats, &lngs, &ats).await {
                tracing::warn!(error = %e, "could not save driver positions");
            }
        })
    }
}
