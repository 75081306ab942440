//! The REST side of the harness: one pooled HTTP client for the whole run, every failed call
//! counted under `http:<status>:<code>`, and the bounded retry of calls the hub answered with
//! "try again" (no answer, 429, 503), which waits at least what `Retry-After` says.
//!
//! With several nodes (`--url` more than once) requests go round-robin over them, one step per
//! request (retries included), and a request whose node is gone is sent once more, at once, to
//! the next node when that is safe ([`nodes::rest_failover`]).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::RequestBuilder;
use serde::de::DeserializeOwned;

use crate::backoff::{self, Retry};
use crate::metrics::Metrics;
use crate::nodes::{self, RoundRobin};
use crate::proto::RestError;

/// Whole-request timeout for REST calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A failed REST call.
#[derive(Debug, Clone)]
pub struct RestFailure {
    /// HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// The error body's `code`, or a transport error label.
    pub code: String,
    /// `Retry-After` (header, or the body's `retry_after_s`) of a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl RestFailure {
    /// Worth retrying: no response, 429 or 503.
    pub fn retriable(&self) -> bool {
        matches!(self.status, None | Some(429) | Some(503))
    }

    /// The key it is counted under: `http:<status>:<code>`, or `http:<label>` without a
    /// response.
    pub fn key(&self) -> String {
        match self.status {
            Some(s) => format!("http:{s}:{}", self.code),
            None => format!("http:{}", self.code),
        }
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
    /// The nodes' base URLs, in `--url` order (at least one).
    bases: Vec<String>,
    next: RoundRobin,
    metrics: Arc<Metrics>,
}

impl Rest {
    /// A client for the nodes at `bases`, keeping at most `pool` idle connections in all.
    pub fn new(bases: &[String], pool: usize, metrics: Arc<Metrics>) -> Result<Self> {
        if bases.is_empty() {
            bail!("no hub URL");
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(pool.div_ceil(bases.len()))
            .pool_idle_timeout(Duration::from_secs(30))
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Rest {
            client,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            next: RoundRobin::default(),
            metrics,
        })
    }

    /// `GET /healthz` must answer 200, on every node.
    pub async fn health(&self) -> Result<()> {
        for base in &self.bases {
            let url = format!("{base}/healthz");
            let resp = self
                .client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("the hub does not answer at {url}"))?;
            if !resp.status().is_success() {
                bail!("{url} answered {}", resp.status());
            }
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
        let build = |base: &str| {
            let req = self.client.post(format!("{base}{path}")).json(body);
            match idempotency_key {
                Some(k) => req.header("Idempotency-Key", k),
                None => req,
            }
        };
        self.send(build, token, idempotency_key.is_some()).await
    }

    /// GET `path`; like [`Rest::post`].
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<(u16, T), RestFailure> {
        let build = |base: &str| self.client.get(format!("{base}{path}"));
        self.send(build, token, true).await
    }

    /// Send the request `build` makes for a node's base URL to the next node in turn; when
    /// that node is gone, once more to the node after it if [`nodes::rest_failover`] allows
    /// (`idempotent`: sending the request twice is harmless).
    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> RequestBuilder,
        token: Option<&str>,
        idempotent: bool,
    ) -> Result<(u16, T), RestFailure> {
        let n = self.bases.len();
        let first = self.next.pick(n);
        match self.attempt(build(&self.bases[first]), token).await {
            Err(f) if n > 1 && f.status.is_none() && nodes::rest_failover(&f.code, idempotent) => {
                self.metrics.rest_failovers.fetch_add(1, Relaxed);
                let next = nodes::next_node(first, n);
                self.attempt(build(&self.bases[next]), token).await
            }
            r => r,
        }
    }

    /// One request to one node.
    async fn attempt<T: DeserializeOwned>(
        &self,
        mut req: RequestBuilder,
        token: Option<&str>,
    ) -> Result<(u16, T), RestFailure> {
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let fail = |f: RestFailure| {
            self.metrics.error(f.key());
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
        let header_wait = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (code, body_wait) = match resp.json::<RestError>().await {
            Ok(b) => (b.error.code, b.error.retry_after_s),
            Err(_) => ("no_error_body".into(), None),
        };
        Err(fail(RestFailure {
            status: Some(status),
            code,
            retry_after: header_wait.or(body_wait).map(Duration::from_secs),
        }))
    }

    /// Run `call` until it succeeds, fails in a way a retry cannot fix, or `policy` is spent.
    /// Every retry is counted under the failure's key in the report's retries, every
    /// retriable failure that is not retried any more under the retries given up.
    pub async fn retrying<T, F, Fut>(&self, policy: Retry, mut call: F) -> Result<T, RestFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, RestFailure>>,
    {
        let mut n = 0;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) if e.retriable() => {
                    n += 1;
                    match policy.delay(n, backoff::jitter(), e.retry_after) {
                        Some(wait) => {
                            self.metrics.retried(e.key());
                            tokio::time::sleep(wait).await;
                        }
                        None => {
                            self.metrics.retry_exhausted(e.key());
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A one-shot-per-connection HTTP server answering with `answers` in turn and reporting
    /// each request's head.
    async fn fake_hub(answers: Vec<&'static str>) -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for answer in answers {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // the head, then as much body as Content-Length says
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                tx.send(head).unwrap();
                sock.write_all(answer.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            }
        });
        (base, rx)
    }

    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\n\
        retry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 64\r\n\r\n\
        {\"error\":{\"code\":\"unavailable\",\"message\":\"x\",\"retry_after_s\":1}}";
    const CREATED: &str = "HTTP/1.1 201 Created\r\nconnection: close\r\n\
        content-type: application/json\r\ncontent-length: 8\r\n\r\n{\"n\":42}";
    const INVALID: &str = "HTTP/1.1 422 Unprocessable Entity\r\nconnection: close\r\n\
        content-type: application/json\r\ncontent-length: 52\r\n\r\n\
        {\"error\":{\"code\":\"validation_failed\",\"message\":\"x\"}}";

    #[derive(serde::Deserialize)]
    struct N {
        n: u32,
    }

    #[tokio::test]
    async fn a_503_is_retried_after_retry_after_with_the_same_idempotency_key() {
        let (base, mut heads) = fake_hub(vec![UNAVAILABLE, CREATED]).await;
        let metrics = Arc::new(Metrics::new());
        let rest = Rest::new(&[base], 4, metrics.clone()).unwrap();
        let body = json!({"x": 1});
        let started = tokio::time::Instant::now();
        let (status, got) = rest
            .retrying(Retry::ORDER, || {
                rest.post::<N>("/api/orders", Some("tok"), &body, Some("key-1"))
            })
            .await
            .unwrap();
        assert_eq!((status, got.n), (201, 42));
        assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After");
        for _ in 0..2 {
            let head = heads.recv().await.unwrap();
            assert!(head.starts_with("post /api/orders "));
            assert!(head.contains("idempotency-key: key-1\r\n"), "{head}");
        }
        assert_eq!(metrics.retries().get("http:503:unavailable"), Some(&1));
        assert_eq!(metrics.errors().get("http:503:unavailable"), Some(&1));
        assert!(metrics.retries_exhausted().is_empty());
    }

    /// A loopback base URL nothing listens on.
    async fn dead_node() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    /// A node that reads `n` requests and closes each connection without an answer (it died
    /// while the request was in flight); reports each request's head.
    async fn dying_node(n: usize) -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for _ in 0..n {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let got = sock.read(&mut buf).await.unwrap();
                tx.send(String::from_utf8_lossy(&buf[..got]).to_lowercase())
                    .unwrap();
                drop(sock);
            }
        });
        (base, rx)
    }

    #[tokio::test]
    async fn requests_go_round_robin_over_the_nodes() {
        let (a, mut on_a) = fake_hub(vec![CREATED, CREATED]).await;
        let (b, mut on_b) = fake_hub(vec![CREATED]).await;
        let rest = Rest::new(&[a, b], 4, Arc::new(Metrics::new())).unwrap();
        for path in ["/api/orders/1", "/api/orders/2", "/api/orders/3"] {
            let (_, got) = rest.get::<N>(path, None).await.unwrap();
            assert_eq!(got.n, 42);
        }
        assert!(on_a.recv().await.unwrap().starts_with("get /api/orders/1 "));
        assert!(on_b.recv().await.unwrap().starts_with("get /api/orders/2 "));
        assert!(on_a.recv().await.unwrap().starts_with("get /api/orders/3 "));
    }

    #[tokio::test]
    async fn an_order_to_a_dead_node_is_sent_to_the_next_node() {
        let dead = dead_node().await;
        let (live, mut heads) = fake_hub(vec![CREATED]).await;
        let metrics = Arc::new(Metrics::new());
        let rest = Rest::new(&[dead, live], 4, metrics.clone()).unwrap();
        let (status, got) = rest
            .post::<N>("/api/orders", Some("tok"), &json!({"x": 1}), Some("key-9"))
            .await
            .unwrap();
        assert_eq!((status, got.n), (201, 42));
        assert!(
            heads
                .recv()
                .await
                .unwrap()
                .contains("idempotency-key: key-9\r\n")
        );
        assert_eq!(metrics.rest_failovers.load(Relaxed), 1);
        assert_eq!(metrics.errors().get("http:connect"), Some(&1));
        assert!(metrics.retries().is_empty(), "a failover is not a retry");
    }

    #[tokio::test]
    async fn only_a_request_safe_to_repeat_is_resent_after_its_node_died_mid_request() {
        let (dying, mut on_dying) = dying_node(2).await;
        let (live, mut on_live) = fake_hub(vec![CREATED]).await;
        let metrics = Arc::new(Metrics::new());
        let rest = Rest::new(&[dying, live], 4, metrics.clone()).unwrap();
        // a POST without an Idempotency-Key may have been applied: not sent again
        let e = rest
            .post::<N>("/api/admin/shops", Some("tok"), &json!({"x": 1}), None)
            .await
            .err()
            .unwrap();
        assert_eq!((e.status, e.code.as_str()), (None, "transport"));
        assert!(
            on_dying
                .recv()
                .await
                .unwrap()
                .starts_with("post /api/admin/shops ")
        );
        assert_eq!(metrics.rest_failovers.load(Relaxed), 0);
        // the round-robin moves on: the next request goes to the live node, so spend its
        // turn there, then a GET that reaches the dying node goes on to the live one
        rest.next.pick(2);
        let (_, got) = rest.get::<N>("/api/orders/7", Some("tok")).await.unwrap();
        assert_eq!(got.n, 42);
        assert!(
            on_dying
                .recv()
                .await
                .unwrap()
                .starts_with("get /api/orders/7 ")
        );
        assert!(
            on_live
                .recv()
                .await
                .unwrap()
                .starts_with("get /api/orders/7 ")
        );
        assert_eq!(metrics.rest_failovers.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let (base, _heads) = fake_hub(vec![INVALID, CREATED]).await;
        let metrics = Arc::new(Metrics::new());
        let rest = Rest::new(&[base], 4, metrics.clone()).unwrap();
        let e = rest
            .retrying(Retry::ORDER, || rest.get::<N>("/api/orders/x", Some("tok")))
            .await
            .err()
            .unwrap();
        assert_eq!(
            (e.status, e.code.as_str()),
            (Some(422), "validation_failed")
        );
        assert!(metrics.retries().is_empty());
    }

    #[tokio::test]
    async fn no_retry_when_the_hub_asks_for_too_long_a_wait() {
        let (base, _heads) = fake_hub(vec![UNAVAILABLE]).await;
        let metrics = Arc::new(Metrics::new());
        let rest = Rest::new(&[base], 4, metrics.clone()).unwrap();
        let impatient = Retry {
            longest_wait: Duration::from_millis(500),
            ..Retry::ORDER
        };
        let e = rest
            .retrying(impatient, || rest.get::<N>("/api/orders/x", None))
            .await
            .err()
            .unwrap();
        assert_eq!(e.retry_after, Some(Duration::from_secs(1)));
        assert!(metrics.retries().is_empty());
        assert_eq!(
            metrics.retries_exhausted().get("http:503:unavailable"),
            Some(&1)
        );
    }
}
