//! REST side of the harness: one pooled HTTP client, error accounting by status and code, and
//! the setup phase that creates shops (with products), drivers and buyers and logs everyone in,
//! with bounded concurrency.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use rand::Rng;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use uuid::Uuid;

use crate::cli::BBox;
use crate::metrics::Metrics;
use crate::proto::RestError;

/// Whole-request timeout for REST calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of one setup call when the hub answers 429/503 or the request fails in transit.
const SETUP_ATTEMPTS: u32 = 4;

/// A failed REST call.
#[derive(Debug, Clone)]
pub struct RestFailure {
    /// HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// The error body's `code`, or a transport error label.
    pub code: String,
    /// `Retry-After` of a 429.
    pub retry_after: Option<Duration>,
}

impl RestFailure {
    /// Worth retrying: no response, 429 or 503.
    pub fn retriable(&self) -> bool {
        matches!(self.status, None | Some(429) | Some(503))
    }
}

impl fmt::Display for RestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s} {}", self.code),
            None => write!(f, "request failed: {}", self.code),
        }
    }
}

/// The shared HTTP client (one connection pool for the whole run).
pub struct Rest {
    client: reqwest::Client,
    base: String,
    metrics: Arc<Metrics>,
}

impl Rest {
    pub fn new(base: &str, pool: usize, metrics: Arc<Metrics>) -> Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(Duration::from_secs(30))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Rest {
            client,
            base: base.trim_end_matches('/').to_string(),
            metrics,
        })
    }

    /// `GET /healthz` must answer 200.
    pub async fn health(&self) -> Result<()> {
        let url = format!("{}/healthz", self.base);
        let resp = self
            .client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("the hub does not answer at {url}"))?;
        if !resp.status().is_success() {
            bail!("{url} answered {}", resp.status());
        }
        Ok(())
    }

    /// POST a JSON body; a 2xx answer is decoded as `T`, anything else is counted under
    /// `http:<status>:<code>` and returned as a [`RestFailure`].
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, T), RestFailure> {
        let mut req = self.client.post(format!("{}{path}", self.base)).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        let fail = |f: RestFailure| {
            let key = match f.status {
                Some(s) => format!("http:{s}:{}", f.code),
                None => format!("http:{}", f.code),
            };
            self.metrics.error(key);
            f
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                let code = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "transport"
                };
                return Err(fail(RestFailure {
                    status: None,
                    code: code.into(),
                    retry_after: None,
                }));
            }
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return match resp.json::<T>().await {
                Ok(v) => Ok((status, v)),
                Err(_) => Err(fail(RestFailure {
                    status: Some(status),
                    code: "undecodable_body".into(),
                    retry_after: None,
                })),
            };
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let code = match resp.json::<RestError>().await {
            Ok(b) => b.error.code,
            Err(_) => "no_error_body".into(),
        };
        Err(fail(RestFailure {
            status: Some(status),
            code,
            retry_after,
        }))
    }
}

/// Retry a setup call on transient failures, with a short, bounded backoff.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, RestFailure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RestFailure>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retriable() && attempt < SETUP_ATTEMPTS => {
                let wait = e
                    .retry_after
                    .unwrap_or(Duration::from_millis(250 << attempt))
                    .min(Duration::from_secs(5));
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

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

/// Everything the account-creating calls share.
pub struct Setup<'a> {
    pub rest: &'a Rest,
    /// Distinguishes this run's accounts from earlier runs' in the hub's lists.
    pub tag: String,
    pub concurrency: usize,
    pub pb: ProgressBar,
}

impl Setup<'_> {
    /// Create `n` shops inside `bbox` (10 % margin), log in as each shop's vendor and add
    /// `products` products to each.
    pub async fn shops(
        &self,
        admin: &str,
        n: usize,
        products: u32,
        bbox: BBox,
    ) -> Result<Vec<ShopAcct>> {
        let (rest, tag) = (self.rest, self.tag.as_str());
        let (mlat, mlng) = (
            (bbox.max_lat - bbox.min_lat) * 0.1,
            (bbox.max_lng - bbox.min_lng) * 0.1,
        );
        bounded("shops", n, self.concurrency, &self.pb, |i| async move {
            let (lat, lng) = {
                let mut rng = rand::thread_rng();
                (
                    rng.gen_range(bbox.min_lat + mlat..=bbox.max_lat - mlat),
                    rng.gen_range(bbox.min_lng + mlng..=bbox.max_lng - mlng),
                )
            };
            let body = json!({"name": format!("Loadtest shop {tag}-{i}"), "lat": lat, "lng": lng,
                              "address": format!("Teststraße {}", i + 1)});
            let (_, created): (_, CreatedShop) =
                retry(|| rest.post("/api/admin/shops", Some(admin), &body, None)).await?;
            let id = created.shop.id;
            let login = json!({"role": "vendor", "account_id": id, "code": created.login_code});
            let (_, l): (_, Login) =
                retry(|| rest.post("/api/auth/login", None, &login, None)).await?;
            let mut ids = Vec::with_capacity(products as usize);
            for k in 0..products {
                let price = 150 + 50 * ((i as u32 + k) % 30);
                let body = json!({"name": format!("Item {}", k + 1), "price_cents": price});
                let path = format!("/api/shops/{id}/products");
                let (_, p): (_, IdOnly) =
                    retry(|| rest.post(&path, Some(&l.token), &body, None)).await?;
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

    /// Create `n` drivers through the admin API and log each in.
    pub async fn drivers(&self, admin: &str, n: usize) -> Result<Vec<Acct>> {
        let (rest, tag) = (self.rest, self.tag.as_str());
        bounded("drivers", n, self.concurrency, &self.pb, |i| async move {
            // Drivers' phone numbers are unique hub-wide (at most 15 digits): 8 digits of the
            // run's tag and 7 of the driver's index.
            let run = u32::from_str_radix(tag.get(..8).unwrap_or("0"), 16).unwrap_or(0);
            let body = json!({"name": format!("Loadtest driver {tag}-{i}"),
                              "phone": format!("+{:08} {i:07}", run % 100_000_000)});
            let (_, created): (_, CreatedDriver) =
                retry(|| rest.post("/api/admin/drivers", Some(admin), &body, None)).await?;
            let id = created.driver.id;
            let login = json!({"role": "driver", "account_id": id, "code": created.login_code});
            let (_, l): (_, Login) =
                retry(|| rest.post("/api/auth/login", None, &login, None)).await?;
            Ok(Acct { id, token: l.token })
        })
        .await
    }

    /// Sign up `n` buyers (`POST /api/buyers` returns the token directly). With the admin
    /// token the hub's per-address sign-up limit does not apply.
    pub async fn buyers(&self, admin: Option<&str>, n: usize) -> Result<Vec<Acct>> {
        let (rest, tag) = (self.rest, self.tag.as_str());
        bounded("buyers", n, self.concurrency, &self.pb, |i| async move {
            let body = json!({"name": format!("Loadtest buyer {tag}-{i}"),
                              "phone": format!("+49 30 {i:07}")});
            let (_, b): (_, CreatedBuyer) =
                retry(|| rest.post("/api/buyers", admin, &body, None)).await?;
            Ok(Acct {
                id: b.buyer.id,
                token: b.token,
            })
        })
        .await
    }
}
