//! The setup phase: creates shops (with products), drivers and buyers over REST and logs
//! everyone in, with bounded concurrency. Transient failures (no answer, 429, 503) are retried
//! with [`Retry::SETUP`], honouring `Retry-After`.

use std::future::Future;
use std::ops::Range;

use anyhow::{Result, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use rand::Rng;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::backoff::Retry;
use crate::cli::BBox;
use crate::rest::{Rest, RestFailure};

/// A shop, logged in as its vendor.
#[derive(Debug, Clone)]
pub struct ShopAcct {
    pub id: Uuid,
    pub token: String,
    pub lat: f64,
    pub lng: f64,
    pub products: Vec<Uuid>,
}

/// A driver or buyer account and its token.
#[derive(Debug, Clone)]
pub struct Acct {
    pub id: Uuid,
    pub token: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: Uuid,
}

#[derive(Deserialize)]
struct CreatedShop {
    shop: IdOnly,
    login_code: String,
}

#[derive(Deserialize)]
struct CreatedDriver {
    driver: IdOnly,
    login_code: String,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Deserialize)]
struct CreatedBuyer {
    buyer: IdOnly,
    token: String,
}

/// Run `make(i)` for `0..n` with at most `concurrency` in flight; keep the successes.
async fn bounded<T, F, Fut>(
    what: &str,
    n: usize,
    concurrency: usize,
    pb: &ProgressBar,
    make: F,
) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, RestFailure>>,
{
    pb.set_length(n as u64);
    pb.set_position(0);
    pb.set_message(format!("creating {what}"));
    let results: Vec<Result<T, RestFailure>> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = make(i);
            async move {
                let r = fut.await;
                pb.inc(1);
                r
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let total = results.len();
    let mut ok = Vec::with_capacity(total);
    let mut first_err = None;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        let failed = total - ok.len();
        if ok.is_empty() {
            bail!("creating {what} failed for all {total} ({e})");
        }
        pb.println(format!(
            "warning: {failed} of {total} {what} could not be created (first error: {e})"
        ));
    }
    Ok(ok)
}

/// Everything the account-creating calls share. Accounts are numbered by their index in the
/// whole run (a shard creates only its slice), so that the shards of a run never share a
/// name or a phone number.
pub struct Setup<'a> {
    pub rest: &'a Rest,
    /// Distinguishes this run's (and shard's) accounts from earlier runs' in the hub's lists.
    /// Starts with 8 hex digits.
    pub tag: String,
    pub concurrency: usize,
    pub pb: ProgressBar,
}

impl Setup<'_> {
    /// Create the shops numbered `range` inside `bbox` (10 % margin), log in as each shop's
    /// vendor and add `products` products to each.
    pub async fn shops(
        &self,
        admin: &str,
        range: Range<usize>,
        products: u32,
        bbox: BBox,
    ) -> Result<Vec<ShopAcct>> {
        let first = range.start;
        let (rest, tag) = (self.rest, self.tag.as_str());
        let (mlat, mlng) = (
            (bbox.max_lat - bbox.min_lat) * 0.1,
            (bbox.max_lng - bbox.min_lng) * 0.1,
        );
        bounded("shops", range.len(), self.concurrency, &self.pb, |i| async move {
            let i = first + i;
            let (lat, lng) = {
                let mut rng = rand::thread_rng();
                (
                    rng.gen_range(bbox.min_lat + mlat..=bbox.max_lat - mlat),
                    rng.gen_range(bbox.min_lng + mlng..=bbox.max_lng - mlng),
                )
            };
            let body = json!({"name": format!("Loadtest shop {tag}-{i}"), "lat": lat, "lng": lng,
                              "address": format!("Teststraße {}", i + 1)});
            let (_, created): (_, CreatedShop) = rest
                .retrying(Retry::SETUP, || {
                    rest.post("/api/admin/shops", Some(admin), &body, None)
                })
                .await?;
            let id = created.shop.id;
            let login = json!({"role": "vendor", "account_id": id, "code": created.login_code});
            let (_, l): (_, Login) = rest
                .retrying(Retry::SETUP, || {
                    rest.post("/api/auth/login", None, &login, None)
                })
                .await?;
            let mut ids = Vec::with_capacity(products as usize);
            for k in 0..products {
                let price = 150 + 50 * ((i as u32 + k) % 30);
                let body = json!({"name": format!("Item {}", k + 1), "price_cents": price});
                let path = format!("/api/shops/{id}/products");
                let (_, p): (_, IdOnly) = rest
                    .retrying(Retry::SETUP, || {
                        rest.post(&path, Some(&l.token), &body, None)
                    })
                    .await?;
                ids.push(p.id);
            }
            Ok(ShopAcct {
                id,
                token: l.token,
                lat,
                lng,
                products: ids,
            })
        })
        .await
    }

    /// Create the drivers numbered `range` through the admin API and log each in.
    pub async fn drivers(&self, admin: &str, range: Range<usize>) -> Result<Vec<Acct>> {
        let (rest, tag) = (self.rest, self.tag.as_str());
        let (first, n) = (range.start, range.len());
        bounded("drivers", n, self.concurrency, &self.pb, |i| async move {
            let i = first + i;
            // Drivers' phone numbers are unique hub-wide (at most 15 digits): 8 digits of the
            // run's tag and 7 of the driver's index.
            let run = u32::from_str_radix(tag.get(..8).unwrap_or("0"), 16).unwrap_or(0);
            let body = json!({"name": format!("Loadtest driver {tag}-{i}"),
                              "phone": format!("+{:08} {i:07}", run % 100_000_000)});
            let (_, created): (_, CreatedDriver) = rest
                .retrying(Retry::SETUP, || {
                    rest.post("/api/admin/drivers", Some(admin), &body, None)
                })
                .await?;
            let id = created.driver.id;
            let login = json!({"role": "driver", "account_id": id, "code": created.login_code});
            let (_, l): (_, Login) = rest
                .retrying(Retry::SETUP, || {
                    rest.post("/api/auth/login", None, &login, None)
                })
                .await?;
            Ok(Acct { id, token: l.token })
        })
        .await
    }

    /// Sign up the buyers numbered `range` (`POST /api/buyers` returns the token directly).
    /// With the admin token the hub's per-address sign-up limit does not apply.
    pub async fn buyers(&self, admin: Option<&str>, range: Range<usize>) -> Result<Vec<Acct>> {
        let (rest, tag) = (self.rest, self.tag.as_str());
        let (first, n) = (range.start, range.len());
        bounded("buyers", n, self.concurrency, &self.pb, |i| async move {
            let i = first + i;
            let body = json!({"name": format!("Loadtest buyer {tag}-{i}"),
                              "phone": format!("+49 30 {i:07}")});
            let (_, b): (_, CreatedBuyer) = rest
                .retrying(Retry::SETUP, || {
                    rest.post("/api/buyers", admin, &body, None)
                })
                .await?;
            Ok(Acct {
                id: b.buyer.id,
                token: b.token,
            })
        })
        .await
    }
}
