//! Shared test harness: a real hub on an ephemeral port against the fresh database that
//! `#[sqlx::test]` hands each test, a REST client, and a WebSocket client.
#![allow(dead_code)]

pub mod process;

use std::time::Duration;

use dispatch_hub::app::{self, RunningHub};
use dispatch_hub::config::Config;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const ADMIN: &str = "test-admin-token";
pub const WAIT: Duration = Duration::from_secs(10);

/// A test configuration: ephemeral port, cheap login hashing, a fixed secret.
pub fn config() -> Config {
    let mut c = Config::from_env();
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.admin_token = Some(ADMIN.into());
    c.secret = Some("test-secret".into());
    c.login_hash_kib = 64;
    c.db_max_connections = 16;
    // The suites sign up many buyers from one address; the throttle has tests of its own.
    c.signups_per_address_h = 1_000_000;
    c
}

pub struct TestHub {
    pub running: Option<RunningHub>,
    pub base: String,
    pub ws_url: String,
    pub http: reqwest::Client,
}

impl TestHub {
    pub async fn start(db: PgPool) -> Self {
        Self::start_with(db, config()).await
    }

    pub async fn start_with(db: PgPool, config: Config) -> Self {
        let running = app::start(config, db).await.expect("hub starts");
        let base = format!("http://{}", running.addr);
        let ws_url = format!("ws://{}/ws", running.addr);
        Self {
            running: Some(running),
            base,
            ws_url,
            http: reqwest::Client::new(),
        }
    }

    pub fn hub(&self) -> &std::sync::Arc<dispatch_hub::service::Hub> {
        &self.running.as_ref().unwrap().hub
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Sends a request; returns (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method.parse().unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        // A transport failure (the hub died mid-request) reads as status 0.
        let Ok(resp) = req.send().await else {
            return (0, Value::Null);
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path} -> {status} {v}"
        );
        v
    }

    /// A shop at (lat, lng) with one product; returns (shop_id, vendor_token, product_id).
    pub async fn shop(&self, lat: f64, lng: f64) -> (String, String, String) {
        let v = self
            .ok(
                "POST",
                "/api/admin/shops",
                Some(ADMIN),
                Some(json!({"name": "Shop", "lat": lat, "lng": lng})),
            )
            .await;
        let id = v["shop"]["id"].as_str().unwrap().to_owned();
        let code = v["login_code"].as_str().unwrap().to_owned();
        let token = self.login("vendor", &id, &code).await;
        let p = self
            .ok(
                "POST",
                &format!("/api/shops/{id}/products"),
                Some(&token),
                Some(json!({"name": "Soup", "price_cents": 500})),
            )
            .await;
        (id, token, p["id"].as_str().unwrap().to_owned())
    }

    /// Logs a vendor (shop id) or driver in with a login code; returns the token.
    pub async fn login(&self, role: &str, account_id: &str, code: &str) -> String {
        let body = json!({"role": role, "account_id": account_id, "code": code});
        let t = self.ok("POST", "/api/auth/login", None, Some(body)).await;
        t["token"].as_str().unwrap().to_owned()
    }

    /// A driver; returns (driver_id, token).
    pub async fn driver(&self) -> (String, String) {
        let v = self
            .ok(
                "POST",
                "/api/admin/drivers",
                Some(ADMIN),
                Some(json!({"name": "Dee"})),
            )
            .await;
        let id = v["driver"]["id"].as_str().unwrap().to_owned();
        let code = v["login_code"].as_str().unwrap().to_owned();
        let token = self.login("driver", &id, &code).await;
        (id, token)
    }

    /// A buyer; returns (buyer_id, token).
    pub async fn buyer(&self) -> (String, String) {
        let v = self
            .ok(
                "POST",
                "/api/buyers",
                None,
                Some(json!({"name": "Bea", "phone": "+49 30 1"})),
            )
            .await;
        (
            v["buyer"]["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Places an order of 2 × product near the shop; returns (order JSON, otp).
    pub async fn order(
        &self,
        buyer: &str,
        shop: &str,
        product: &str,
        lat: f64,
        lng: f64,
    ) -> (Value, String) {
        let body = json!({
            "shop_id": shop,
            "items": [{"product_id": product, "quantity": 2}],
            "delivery": {"lat": lat, "lng": lng, "address": "Test street 1"},
            "payment": "cod"
        });
        let v = self
            .ok("POST", "/api/orders", Some(buyer), Some(body))
            .await;
        (v["order"].clone(), v["otp"].as_str().unwrap().to_owned())
    }

    pub async fn transition(
        &self,
        token: &str,
        order: &str,
        action: &str,
        version: i64,
        otp: Option<&str>,
    ) -> (u16, Value) {
        let mut body = json!({"action": action, "expected_version": version});
        if let Some(o) = otp {
            body["otp"] = json!(o);
        }
        self.call(
            "POST",
            &format!("/api/orders/{order}/transitions"),
            Some(token),
            Some(body),
        )
        .await
    }

    pub async fn socket(&self, token: &str) -> Ws {
        let mut ws = Ws::connect(&self.ws_url).await;
        ws.send(json!({"type": "auth", "token": token})).await;
        let w = ws.next_json().await.expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        ws
    }
}

pub struct Ws {
    pub inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every JSON frame received so far, in order.
    pub seen: Vec<Value>,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (inner, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connects");
        Self {
            inner,
            seen: Vec::new(),
        }
    }

    /// Connects with a tiny receive buffer, like a phone on a bad network that stops reading.
    pub async fn connect_small_buffer(url: &str) -> Self {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr.parse().unwrap()).await.unwrap();
        let (inner, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("ws connects");
        Self {
            inner,
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.inner
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: Message) -> bool {
        self.inner.send(m).await.is_ok()
    }

    /// The next text frame as JSON, or `None` on close or after [`WAIT`].
    pub async fn next_json(&mut self) -> Option<Value> {
        self.next_json_within(WAIT).await
    }

    pub async fn next_json_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let m = tokio::time::timeout_at(deadline, self.inner.next())
                .await
                .ok()??;
            match m.ok()? {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).ok()?;
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Reads until a frame matches; panics after [`WAIT`].
    pub async fn until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        loop {
            let v = self
                .next_json()
                .await
                .unwrap_or_else(|| panic!("no frame matching {what}"));
            if f(&v) {
                return v;
            }
        }
    }

    /// Subscribes and returns the snapshot frame.
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        self.send(json!({"type": "subscribe", "topic": topic, "ref": topic}))
            .await;
        self.until("snapshot", |v| {
            v["ref"] == topic && (v["type"] == "snapshot" || v["type"] == "error")
        })
        .await
    }

    /// Waits for the close frame and returns its code.
    pub async fn close_code(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(f.code.into()),
                Ok(Some(Ok(Message::Close(None)))) => return Some(1005),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }
}

impl Ws {
    /// The (order, version, kind) of every `order` frame received so far.
    pub fn orders_seen(&self) -> Vec<(String, i64, String)> {
        self.seen.iter().filter_map(order_msg).collect()
    }

    /// Reads until an `order` frame of `kind` has been received (now or before).
    pub async fn until_kind(&mut self, kind: &str) {
        while !self.orders_seen().iter().any(|m| m.2 == kind) {
            self.next_json()
                .await
                .unwrap_or_else(|| panic!("socket ended before {kind}"));
        }
    }
}

/// The `order` messages' (kind, version) of one order, in arrival order.
pub fn order_msg(v: &Value) -> Option<(String, i64, String)> {
    (v["type"] == "order").then(|| {
        (
            v["order"]["id"].as_str().unwrap_or_default().to_owned(),
            v["order"]["version"].as_i64().unwrap_or(-1),
            v["event"]["kind"].as_str().unwrap_or_default().to_owned(),
        )
    })
}

/// A whole party: shop + vendor, an online driver next to the shop, a buyer.
pub struct Party {
    pub shop: String,
    pub vendor: String,
    pub product: String,
    pub driver: String,
    pub driver_token: String,
    pub driver_ws: Ws,
    pub buyer: String,
    pub buyer_token: String,
    pub lat: f64,
    pub lng: f64,
}

impl TestHub {
    /// Sets up a party at a random place on Earth (so tests never share drivers' range).
    pub async fn party(&self) -> Party {
        let lat = rand_in(-60.0, 60.0);
        let lng = rand_in(-170.0, 170.0);
        let (shop, vendor, product) = self.shop(lat, lng).await;
        let (driver, driver_token) = self.driver().await;
        let mut driver_ws = self.socket(&driver_token).await;
        driver_ws
            .send(json!({"type": "location", "lat": lat + 0.001, "lng": lng}))
            .await;
        let (buyer, buyer_token) = self.buyer().await;
        Party {
            shop,
            vendor,
            product,
            driver,
            driver_token,
            driver_ws,
            buyer,
            buyer_token,
            lat,
            lng,
        }
    }

    /// Places an order and walks it to `assigned`; returns (order id, otp).
    pub async fn assigned_order(&self, p: &Party) -> (String, String) {
        let (o, otp) = self
            .order(&p.buyer_token, &p.shop, &p.product, p.lat + 0.01, p.lng)
            .await;
        let id = o["id"].as_str().unwrap().to_owned();
        let (s, _) = self.transition(&p.vendor, &id, "accept", 1, None).await;
        assert_eq!(s, 200);
        let (s, _) = self.transition(&p.vendor, &id, "mark_ready", 2, None).await;
        assert_eq!(s, 200);
        self.wait_status(&p.vendor, &id, "assigned").await;
        (id, otp)
    }

    /// Polls the order until it has `status`; panics after [`WAIT`].
    pub async fn wait_status(&self, token: &str, id: &str, status: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, o) = self
                .call("GET", &format!("/api/orders/{id}"), Some(token), None)
                .await;
            if o["status"] == status {
                return o;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {id} never became {status}: {o}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

pub fn rand_in(lo: f64, hi: f64) -> f64 {
    use rand::Rng;
    rand::thread_rng().gen_range(lo..hi)
}
