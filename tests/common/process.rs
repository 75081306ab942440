//! A hub in a process of its own (the real binary), for the tests that kill it with SIGKILL.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;

use super::{ADMIN, TestHub};

pub struct Proc {
    child: Child,
    pub base: String,
}

impl Proc {
    /// Starts `dispatch-hub serve` on `db_url`, listening on `bind`, with the test settings
    /// and `env` on top.
    pub fn spawn(db_url: &str, bind: &str, env: &[(&str, String)]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_dispatch-hub"))
            .arg("serve")
            .env("DATABASE_URL", db_url)
            .env("HUB_BIND", bind)
            .env("HUB_ADMIN_TOKEN", ADMIN)
            .env("HUB_SECRET", "process-secret")
            .env("HUB_LOGIN_HASH_KIB", "64")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("hub binary starts");
        Self {
            child,
            base: format!("http://{bind}"),
        }
    }

    /// A client of this process (a `TestHub` that runs nothing itself).
    pub fn client(&self) -> TestHub {
        TestHub {
            running: None,
            base: self.base.clone(),
            ws_url: format!("{}/ws", self.base.replace("http://", "ws://")),
            http: reqwest::Client::new(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL on Unix
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The URL of the database `#[sqlx::test]` made for this test (for a process of its own).
pub fn db_url_for(db: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let name = db
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h.to_owned(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let root = head
        .rsplit_once('/')
        .map(|(r, _)| r.to_owned())
        .unwrap_or(head);
    format!("{root}/{name}{query}")
}

/// Waits until `path` (`/readyz`, `/healthz`) answers 2xx; panics after 10 s.
pub async fn wait_for(client: &reqwest::Client, base: &str, path: &str) {
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}{path}")).send().await
            && r.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("hub at {base} did not answer {path}");
}
