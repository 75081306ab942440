//! Placing orders and moving them through the state machine.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::Hub;
use super::auth::MAX_OTP_ATTEMPTS;
use super::views::{Delivery, EventView, OrderItem, OrderView};
use crate::dispatch::OrderChanged;
use crate::domain::order::{self, TransitionError};
use crate::domain::{
    Action, Actor, BuyerId, DriverId, GeoPoint, OrderId, OrderStatus, Parties, ProductId, Role,
    ShopId,
};
use crate::error::{Error, Result};
use crate::realtime::OrderMessage;
use crate::store::orders::{self as store, Inserted, Scope, WriteError};
use crate::store::{accounts, catalog};

pub const MAX_LINES: usize = 50;
pub const MAX_QUANTITY: i32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrderLine {
    pub product_id: ProductId,
    pub quantity: i32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrderRequest {
    pub shop_id: ShopId,
    pub items: Vec<NewOrderLine>,
    pub delivery: Delivery,
    pub payment: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRequest {
    pub action: Action,
    pub expected_version: i32,
    #[serde(default)]
    pub otp: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PlacedOrder {
    pub order: OrderView,
    /// `None` only on a retry after a restart without `HUB_SECRET`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otp: Option<String>,
}

/// Extra facts the dispatcher supplies with its own transitions.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemInput {
    pub assign_to: Option<DriverId>,
    pub distance_m: Option<f64>,
    /// For `dispatch_delayed`: how long the order has waited for a driver.
    pub waited_s: Option<u64>,
    /// For `assign` in a cluster: the dispatcher lease's epoch it was decided under. The write
    /// commits only while the lease is still at that epoch.
    pub epoch: Option<i64>,
}

/// May this actor see this order at all? Everyone else gets 404, never 403.
pub fn visible(actor: Actor, o: &OrderView) -> bool {
    match actor.role {
        Role::Admin | Role::System => true,
        Role::Buyer => actor.id == Some(o.buyer_id.0),
        Role::Vendor => actor.id == Some(o.shop_id.0),
        Role::Driver => actor.id.is_some() && o.driver_id.map(|d| d.0) == actor.id,
    }
}

fn request_hash(req: &NewOrderRequest) -> String {
    let canonical = serde_json::to_vec(req).unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

impl Hub {
    pub async fn place_order(
        &self,
        actor: Actor,
        idempotency_key: Option<&str>,
        req: NewOrderRequest,
    ) -> Result<(PlacedOrder, bool)> {
        let (Role::Buyer, Some(buyer)) = (actor.role, actor.id) else {
            return Err(Error::Forbidden("only buyers place orders".into()));
        };
        if let Some(k) = idempotency_key
            && (k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::BadRequest(
                "Idempotency-Key must be 1 to 128 visible ASCII characters".into(),
            ));
        }
        if req.payment != "cod" {
            return Err(Error::validation("payment must be \"cod\""));
        }
        if req.items.is_empty() || req.items.len() > MAX_LINES {
            return Err(Error::validation(format!(
                "items must have 1 to {MAX_LINES} lines"
            )));
        }
        for l in &req.items {
            if !(1..=MAX_QUANTITY).contains(&l.quantity) {
                return Err(Error::validation(format!(
                    "quantity must be in 1..={MAX_QUANTITY}"
                )));
            }
        }
        GeoPoint::new(req.delivery.lat, req.delivery.lng)
            .map_err(|e| Error::validation(format!("delivery: {e}")))?;
        let address = super::text("delivery.address", &req.delivery.address, 1, 300)?;
        if accounts::get_shop(&self.db, req.shop_id.0).await?.is_none() {
            return Err(Error::validation("shop_id: no such shop"));
        }
        let ids: Vec<Uuid> = req.items.iter().map(|l| l.product_id.0).collect();
        let products: HashMap<Uuid, catalog::Product> = catalog::by_ids(&self.db, &ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let mut items = Vec::with_capacity(req.items.len());
        let mut total: i64 = 0;
        for l in &req.items {
            let p = products
                .get(&l.product_id.0)
                .filter(|p| p.active && p.shop_id == req.shop_id.0)
                .ok_or_else(|| {
                    Error::validation(format!(
                        "product {} is unknown, inactive or of another shop",
                        l.product_id
                    ))
                })?;
            total += p.price_cents * i64::from(l.quantity);
            items.push(OrderItem {
                product_id: l.product_id,
                name: p.name.clone(),
                unit_price_cents: p.price_cents,
                quantity: l.quantity,
            });
        }

        let id = OrderId::new();
        let otp = self.secrets.otp_for(id);
        let otp_hash = self.secrets.otp_tag(id);
        let delivery = Delivery {
            lat: req.delivery.lat,
            lng: req.delivery.lng,
            address: address.to_owned(),
        };
        let rhash = request_hash(&req);
        let guard = self.lock_order(id).await;
        let inserted = store::insert_order(
            &self.db,
            store::NewOrder {
                id,
                shop_id: req.shop_id,
                buyer_id: BuyerId(buyer),
                items: &items,
                total_cents: total,
                delivery: &delivery,
                otp_hash: &otp_hash,
                idempotency_key,
                request_hash: &rhash,
            },
        )
        .await?;
        match inserted {
            Inserted::Created(rec, ev) => {
                self.writer.remember(&rec);
                self.after_commit(guard, &rec.view, &ev, None).await;
                Ok((
                    PlacedOrder {
                        order: rec.view,
                        otp: Some(otp),
                    },
                    true,
                ))
            }
            Inserted::Existing(rec) => {
                if rec.request_hash.as_deref() != Some(rhash.as_str()) {
                    return Err(Error::IdempotencyConflict);
                }
                let otp = self
                    .secrets
                    .otp_is_current(rec.view.id, &rec.otp_hash)
                    .await?
                    .then(|| self.secrets.otp_for(rec.view.id));
                Ok((
                    PlacedOrder {
                        order: rec.view,
                        otp,
                    },
                    false,
                ))
            }
        }
    }

    pub async fn get_order(&self, actor: Actor, id: OrderId) -> Result<OrderView> {
        match store::get(&self.db, id).await? {
            Some(rec) if visible(actor, &rec.view) => Ok(rec.view),
            _ => Err(Error::NotFound),
        }
    }

    pub async fn order_events(&self, actor: Actor, id: OrderId) -> Result<Vec<EventView>> {
        self.get_order(actor, id).await?;
        Ok(store::events(&self.db, id).await?)
    }

    pub async fn list_orders(
        &self,
        actor: Actor,
        status: Option<OrderStatus>,
        before: Option<OrderId>,
        limit: i64,
    ) -> Result<(Vec<OrderView>, Option<OrderId>)> {
        let scope = match (actor.role, actor.id) {
            (Role::Admin | Role::System, _) => Scope::All,
            (Role::Buyer, Some(id)) => Scope::Buyer(BuyerId(id)),
            (Role::Vendor, Some(id)) => Scope::Shop(ShopId(id)),
            (Role::Driver, Some(id)) => Scope::Driver(DriverId(id)),
            _ => return Err(Error::Forbidden("no order scope".into())),
        };
        let limit = limit.clamp(1, 100);
        let mut page = store::list(&self.db, scope, status, before, limit + 1).await?;
        let next = if page.len() as i64 > limit {
            page.truncate(limit as usize);
            page.last().map(|o| o.view.id)
        } else {
            None
        };
        Ok((page.into_iter().map(|r| r.view).collect(), next))
    }

    /// Applies a client's transition (REST or socket).
    pub async fn transition(
        &self,
        actor: Actor,
        id: OrderId,
        req: TransitionRequest,
    ) -> Result<OrderView> {
        self.transition_with(actor, id, req, SystemInput::default())
            .await
    }

    /// The one transition path: authorize, check the version, (for `deliver`) check the OTP,
    /// commit the update and its event in one transaction, then publish and tell the
    /// dispatcher.
    pub async fn transition_with(
        &self,
        actor: Actor,
        id: OrderId,
        req: TransitionRequest,
        sys: SystemInput,
    ) -> Result<OrderView> {
        if let Some(r) = &req.reason {
            super::text("reason", r, 0, 300)?;
        }
        // The admin's interventions are recorded with why (the event's payload carries it).
        let admin_exit = matches!(
            req.action,
            Action::Cancel | Action::FailDelivery | Action::Unassign
        );
        if actor.role == crate::domain::Role::Admin
            && admin_exit
            && req.reason.as_deref().is_none_or(|r| r.trim().is_empty())
        {
            return Err(Error::validation("an admin must give a reason"));
        }
        let guard = self.lock_order(id).await;
        // The order as of the version the client names, without a read when this hub wrote
        // that version itself.
        let rec = self
            .writer
            .get_at(id, req.expected_version)
            .await?
            .ok_or(Error::NotFound)?;
        if !visible(actor, &rec.view) {
            return Err(Error::NotFound);
        }
        let o = &rec.view;
        let parties = Parties {
            shop_id: o.shop_id,
            buyer_id: o.buyer_id,
            driver_id: o.driver_id,
        };
        let planned = order::plan(o.status, req.action, actor, parties, sys.assign_to);
        if let Err(TransitionError::Forbidden { .. }) = planned {
            return Err(Error::Forbidden(format!(
                "a {} may not {} this order",
                actor.role.as_str(),
                serde_json::to_value(req.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )));
        }
        if req.expected_version != o.version {
            return Err(Error::VersionConflict {
                expected: req.expected_version,
                current: Box::new(rec.view),
            });
        }
        let plan = match planned {
            Ok(p) => p,
            Err(e @ TransitionError::Invalid { .. }) => {
                return Err(Error::InvalidTransition {
                    message: e.to_string(),
                    current: Box::new(rec.view),
                });
            }
            Err(e) => return Err(Error::internal(e)),
        };

        if req.action == Action::Deliver {
            if rec.otp_failed_attempts >= MAX_OTP_ATTEMPTS {
                return Err(Error::OtpLocked);
            }
            // Recomputed and compared in constant time (see docs/security.md): nothing slow
            // happens under the order's lock.
            if !self
                .secrets
                .otp_matches(id, req.otp.as_deref().unwrap_or_default())
            {
                let failures = store::record_otp_failure(&self.db, id).await?;
                self.writer.forget(id);
                if failures >= MAX_OTP_ATTEMPTS {
                    return Err(Error::OtpLocked);
                }
                return Err(Error::InvalidOtp {
                    attempts_left: MAX_OTP_ATTEMPTS - failures,
                });
            }
        }

        let previous_driver = o.driver_id;
        let mut payload = serde_json::Map::new();
        if let Some(r) = req
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
        {
            payload.insert("reason".into(), r.into());
        }
        match req.action {
            Action::Assign => {
                if let Some(d) = sys.assign_to {
                    payload.insert("driver_id".into(), d.to_string().into());
                }
                if let Some(m) = sys.distance_m {
                    payload.insert("distance_m".into(), (m.round() as i64).into());
                }
                if let Some(e) = sys.epoch {
                    payload.insert("epoch".into(), e.into());
                }
            }
            Action::ReportDispatchDelayed => {
                if let Some(w) = sys.waited_s {
                    payload.insert("waited_s".into(), w.into());
                }
            }
            Action::Decline | Action::Unassign | Action::ReportDriverLost => {
                if let Some(d) = previous_driver {
                    payload.insert("driver_id".into(), d.to_string().into());
                }
            }
            _ => {}
        }
        let commission_cents = (plan.to == OrderStatus::Delivered)
            .then(|| self.config.commission_cents(o.total_cents));
        let written = self
            .writer
            .apply(store::Write {
                order_id: id,
                expected_version: req.expected_version,
                plan,
                actor,
                payload: payload.into(),
                commission_cents,
                fence: sys.epoch.filter(|_| req.action == Action::Assign),
            })
            .await;
        let (rec, ev) = match written {
            Ok(w) => w,
            // The row changed behind this hub's back (the read above may have been skipped):
            // the current order is shown only to whoever may still see it.
            Err(WriteError::Conflict(Some(cur))) if !visible(actor, &cur.view) => {
                return Err(Error::NotFound);
            }
            Err(WriteError::Conflict(Some(cur))) => {
                return Err(Error::VersionConflict {
                    expected: req.expected_version,
                    current: Box::new(cur.view),
                });
            }
            Err(WriteError::Conflict(None)) => return Err(Error::NotFound),
            Err(WriteError::DriverBusy) => return Err(Error::DriverBusy),
            Err(WriteError::Fenced) => return Err(Error::NotLeader),
            Err(WriteError::OtpLocked) => return Err(Error::OtpLocked),
            Err(WriteError::Db(e)) => {
                // A lost connection around the COMMIT leaves its outcome unknown.
                if crate::error::is_outage(&e) && !matches!(e, sqlx::Error::PoolTimedOut) {
                    self.commit_unknown(super::reconcile::Ambiguous {
                        order: id,
                        version: req.expected_version + 1,
                        previous_driver,
                    });
                }
                return Err(e.into());
            }
        };
        self.after_commit(guard, &rec.view, &ev, previous_driver)
            .await;
        Ok(rec.view)
    }

    /// The order's current version as the message its last event was published as (for a
    /// socket that saw a version gap; see `realtime::session::gaps`). `None` if it cannot be
    /// read.
    pub async fn current_message(&self, id: OrderId) -> Option<OrderMessage> {
        let rec = store::get(&self.db, id).await.ok()??;
        let ev = store::event_at(&self.db, id, rec.view.version)
            .await
            .ok()??;
        OrderMessage::encode(&rec.view, &ev, None)
    }

    /// Publishes a committed event to every socket topic it belongs to, then lets go of the
    /// order's lock and tells the dispatcher. Publishing happens under the lock, so publish
    /// order is commit order; the dispatcher's queue is bounded and a send may wait on it, so
    /// that happens after (in lock order still: a send that does not wait follows the release
    /// without a yield, and waiting senders are served first come, first served).
    pub(super) async fn after_commit(
        &self,
        guard: tokio::sync::MutexGuard<'_, ()>,
        o: &OrderView,
        ev: &EventView,
        previous_driver: Option<DriverId>,
    ) {
        let shop_pos = if o.status == OrderStatus::Ready {
            self.shop_position(o.shop_id).await.ok().flatten()
        } else {
            None
        };
        if !self.unresolved.is_empty() {
            self.unresolved.remove(&o.id);
        }
        if let Some(m) = OrderMessage::encode(o, ev, previous_driver) {
            self.broker.publish_order(&m);
        }
        metrics::counter!("hub_transitions_total", "kind" => ev.kind.as_str()).increment(1);
        drop(guard);
        self.dispatch
            .order_changed(OrderChanged {
                id: o.id,
                version: o.version,
                shop_id: o.shop_id,
                status: o.status,
                kind: ev.kind,
                driver_id: o.driver_id,
                previous_driver,
                shop_pos,
            })
            .await;
    }
}
