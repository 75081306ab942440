//! Buyers: a socket per buyer subscribed to `buyer:<id>` that timestamps every order message
//! (the "transition → buyer has it" latencies), and the order generator that places orders over
//! REST at a fixed total rate, each with a fresh `Idempotency-Key` (reused by its retries), and
//! hands the OTP to the drivers through the shared map.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use uuid::Uuid;

use crate::backoff::Retry;
use crate::cli::BBox;
use crate::metrics::{Metrics, Violation};
use crate::proto::{Event, Order};
use crate::rest::Rest;
use crate::setup::{Acct, ShopAcct};
use crate::shard::OtpShare;
use crate::ws::{Actor, Outbox, TopicKind, stopped};

/// A buyer's socket. It sends nothing after subscribing; it only observes.
pub struct Buyer {
    id: Uuid,
    metrics: Arc<Metrics>,
}

impl Buyer {
    pub fn new(id: Uuid, metrics: Arc<Metrics>) -> Self {
        Buyer { id, metrics }
    }
}

impl Actor for Buyer {
    type Cmd = ();

    fn topic_kind(&self) -> TopicKind {
        TopicKind::EveryEvent
    }

    fn on_subscribed(&mut self, _orders: &[Order], _out: &mut Outbox<()>) {}

    fn on_order(&mut self, event: &Event, order: &Order, _out: &mut Outbox<()>) {
        let now = Instant::now();
        if order.buyer_id.is_some_and(|b| b != self.id) {
            let me = self.id;
            self.metrics.violation(Violation::Misrouted, || {
                format!("order {} of another buyer on buyer:{me}", order.id)
            });
            return;
        }
        self.metrics.buyer_saw(order.id, event.kind, now);
    }
}

#[derive(Deserialize)]
struct Placed {
    order: Order,
    otp: String,
}

/// Places orders for random (buyer, shop) pairs at a fixed total rate.
pub struct OrderGen {
    pub rest: Arc<Rest>,
    pub metrics: Arc<Metrics>,
    pub shops: Arc<Vec<ShopAcct>>,
    pub buyers: Arc<Vec<Acct>>,
    pub bbox: BBox,
    pub radius_km: f64,
    pub max_inflight: usize,
    /// The other shards of the run, told each order's OTP (their drivers may deliver it).
    pub share: Option<Arc<OtpShare>>,
}

/// Pacing resolution of the generator.
const PACE: Duration = Duration::from_millis(10);
/// How long the generator waits for its last requests after the load phase.
const INFLIGHT_GRACE: Duration = Duration::from_secs(15);

impl OrderGen {
    /// Place `rate` orders per second for `duration` (or until `stop`). When
    /// `max_inflight` requests are outstanding, due orders are counted as skipped rather
    /// than queued, so a slow hub shows up as a lower achieved rate, not as harness backlog.
    pub async fn run(self, rate: f64, duration: Duration, mut stop: watch::Receiver<bool>) {
        if rate <= 0.0 || self.shops.is_empty() || self.buyers.is_empty() {
            return;
        }
        let this = Arc::new(self);
        let inflight = Arc::new(Semaphore::new(this.max_inflight));
        let start = Instant::now();
        let mut issued: u64 = 0;
        let mut pace = tokio::time::interval(PACE);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = pace.tick() => {}
                _ = stopped(&mut stop) => break,
            }
            let elapsed = start.elapsed();
            if elapsed >= duration {
                break;
            }
            let due = (rate * elapsed.as_secs_f64()) as u64;
            while issued < due {
                issued += 1;
                match inflight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let g = this.clone();
                        tokio::spawn(async move {
                            g.place_one().await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        this.metrics.orders_skipped.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        // let the requests in flight finish (bounded)
        let all = this.max_inflight as u32;
        let _ = tokio::time::timeout(INFLIGHT_GRACE, inflight.acquire_many(all)).await;
    }

    /// A random order: the index of the buyer who places it, and the body.
    fn order_body(&self) -> (usize, serde_json::Value) {
        let mut rng = rand::thread_rng();
        let buyer = rng.gen_range(0..self.buyers.len());
        let shop = &self.shops[rng.gen_range(0..self.shops.len())];
        let lines = rng.gen_range(1..=shop.products.len().min(3));
        let chosen: Vec<Uuid> = shop
            .products
            .choose_multiple(&mut rng, lines)
            .copied()
            .collect();
        let items: Vec<_> = chosen
            .iter()
            .map(|p| json!({"product_id": p, "quantity": rng.gen_range(1..=3)}))
            .collect();
        let (lat, lng) = near(&mut rng, shop.lat, shop.lng, self.radius_km, self.bbox);
        let body = json!({
            "shop_id": shop.id,
            "items": items,
            "delivery": {"lat": lat, "lng": lng,
                         "address": format!("Lieferweg {}", rng.gen_range(1..=999))},
            "payment": "cod",
        });
        (buyer, body)
    }

    async fn place_one(&self) {
        let (buyer, body) = self.order_body();
        let token = self.buyers[buyer].token.as_str();
        let key = Uuid::new_v4().to_string();
        let sent = Instant::now();
        // Retried on no answer, 429 and 503 (honouring Retry-After) with the same key: the hub
        // never creates a second order for it, and answers a retry of a request that did
        // create one with that order (200, an idempotent replay).
        let result = self
            .rest
            .retrying(Retry::ORDER, || {
                self.rest
                    .post::<Placed>("/api/orders", Some(token), &body, Some(&key))
            })
            .await;
        match result {
            Ok((status, placed)) => {
                self.metrics.order_post.record(sent.elapsed());
                if let Some(share) = &self.share {
                    share.publish(placed.order.id, &placed.otp);
                }
                self.metrics.order_placed(
                    &placed.order,
                    placed.otp,
                    sent,
                    status == 200,
                    buyer as u32,
                );
            }
            Err(_) => {
                self.metrics.orders_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// A random point within `radius_km` of (`lat`, `lng`), clamped into `bbox`.
pub fn near(rng: &mut impl Rng, lat: f64, lng: f64, radius_km: f64, bbox: BBox) -> (f64, f64) {
    let r = radius_km * rng.gen_range(0.0f64..=1.0).sqrt();
    let theta = rng.gen_range(0.0..std::f64::consts::TAU);
    let dlat = r * theta.cos() / 111.32;
    let dlng = r * theta.sin() / (111.32 * lat.to_radians().cos().max(0.01));
    bbox.clamp(lat + dlat, lng + dlng)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_points_stay_near_and_inside() {
        let bbox = BBox {
            min_lat: 52.42,
            min_lng: 13.25,
            max_lat: 52.60,
            max_lng: 13.55,
        };
        let mut rng = rand::thread_rng();
        for _ in 0..1000 {
            let (lat, lng) = near(&mut rng, 52.5, 13.4, 3.0, bbox);
            assert!((bbox.min_lat..=bbox.max_lat).contains(&lat));
            assert!((bbox.min_lng..=bbox.max_lng).contains(&lng));
            let dy = (lat - 52.5) * 111.32;
            let dx = (lng - 13.4) * 111.32 * 52.5f64.to_radians().cos();
            assert!((dx * dx + dy * dy).sqrt() <= 3.0 + 1e-6);
        }
    }
}
