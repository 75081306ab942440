//! Every knob of the hub in one struct: a CLI flag, its environment variable, its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432/dispatch_hub"
    )]
    pub database_url: String,

    /// Address the HTTP/WebSocket server listens on.
    #[arg(
        long,
        env = "HUB_BIND",
        global = true,
        default_value = "127.0.0.1:8080"
    )]
    pub bind: SocketAddr,

    /// Bearer token of the admin API and the `fleet` topic. Without it the admin API is off.
    #[arg(long, env = "HUB_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Server secret from which order OTPs are derived (so that an idempotent retry can return
    /// the same OTP while the database holds only a keyed tag of it). When unset, a secret is
    /// generated once and kept in the database: OTPs survive restarts, but a database dump then
    /// reveals them. Set it in production.
    #[arg(long, env = "HUB_SECRET", global = true, hide_env_values = true)]
    pub secret: Option<String>,

    /// Lifetime of login and buyer tokens, in hours.
    #[arg(long, env = "HUB_SESSION_TTL_H", global = true, default_value_t = 720)]
    pub session_ttl_h: i64,

    /// Flat part of the driver's commission per delivered order, in cents.
    #[arg(
        long,
        env = "HUB_COMMISSION_FLAT_CENTS",
        global = true,
        default_value_t = 200
    )]
    pub commission_flat_cents: i64,

    /// Percent of the order total added to the driver's commission (e.g. 5 or 2.5).
    #[arg(
        long,
        env = "HUB_COMMISSION_PERCENT",
        global = true,
        default_value_t = 5.0
    )]
    pub commission_percent: f64,

    /// Only free drivers within this great-circle distance of the shop are dispatched.
    #[arg(
        long,
        env = "HUB_DISPATCH_MAX_KM",
        global = true,
        default_value_t = 10.0
    )]
    pub dispatch_max_km: f64,

    /// A driver offline while assigned (not yet picked up) is unassigned after this many seconds.
    #[arg(long, env = "HUB_DRIVER_GRACE_S", global = true, default_value_t = 60)]
    pub driver_grace_s: u64,

    /// A driver who sent no location for this many seconds counts as offline.
    #[arg(long, env = "HUB_DRIVER_STALE_S", global = true, default_value_t = 60)]
    pub driver_stale_s: u64,

    /// A pending order not accepted within this many seconds is cancelled (`vendor_timeout`).
    #[arg(
        long,
        env = "HUB_ACCEPT_TIMEOUT_S",
        global = true,
        default_value_t = 300
    )]
    pub accept_timeout_s: u64,

    /// A `ready` order that has waited this many seconds for a driver is reported to its shop
    /// and the fleet (a `dispatch_delayed` event); it stays in the dispatch queue.
    #[arg(long, env = "HUB_READY_ALERT_S", global = true, default_value_t = 120)]
    pub ready_alert_s: u64,

    /// The dispatcher compares its queue with the `ready` orders in Postgres this often, in
    /// seconds, and adds any it lacks.
    #[arg(
        long,
        env = "HUB_DISPATCH_RECONCILE_S",
        global = true,
        default_value_t = 30
    )]
    pub dispatch_reconcile_s: u64,

    /// Driver positions are written to Postgres at most this often per driver, in seconds.
    #[arg(long, env = "HUB_POSITION_FLUSH_S", global = true, default_value_t = 5)]
    pub position_flush_s: u64,

    /// Outbound queue length per socket; a client further behind is closed with 4408.
    #[arg(long, env = "HUB_WS_QUEUE", global = true, default_value_t = 1024)]
    pub ws_queue: usize,

    /// Seconds between server WebSocket pings.
    #[arg(long, env = "HUB_WS_PING_S", global = true, default_value_t = 20)]
    pub ws_ping_s: u64,

    /// A socket silent for this many seconds is closed (4000).
    #[arg(long, env = "HUB_WS_IDLE_S", global = true, default_value_t = 60)]
    pub ws_idle_s: u64,

    /// Seconds a new socket has to send `auth`.
    #[arg(
        long,
        env = "HUB_WS_AUTH_TIMEOUT_S",
        global = true,
        default_value_t = 10
    )]
    pub ws_auth_timeout_s: u64,

    /// Maximum Postgres connections in the pool.
    #[arg(
        long,
        env = "HUB_DB_MAX_CONNECTIONS",
        global = true,
        default_value_t = 32
    )]
    pub db_max_connections: u32,

    /// Most transitions written by one statement and one commit (group commit: transitions of
    /// different orders that arrive together share a WAL flush). 1 writes each on its own.
    /// Transitions read and write on connections of their own, up to `HUB_DB_MAX_CONNECTIONS`
    /// besides the pool's.
    #[arg(long, env = "HUB_WRITE_GROUP", global = true, default_value_t = 64)]
    pub write_group: usize,

    /// Argon2id memory cost (KiB) for login codes.
    #[arg(
        long,
        env = "HUB_LOGIN_HASH_KIB",
        global = true,
        default_value_t = 19_456
    )]
    pub login_hash_kib: u32,

    /// Login codes expire this many days after they are issued (admins rotate them).
    #[arg(
        long,
        env = "HUB_LOGIN_CODE_TTL_D",
        global = true,
        default_value_t = 90
    )]
    pub login_code_ttl_d: u32,

    /// Failed logins per account per 24 h from addresses not trusted for it (see
    /// docs/security.md for the arithmetic behind the default).
    #[arg(
        long,
        env = "HUB_LOGIN_ACCOUNT_BUDGET",
        global = true,
        default_value_t = 200
    )]
    pub login_account_budget: u32,

    /// Failed logins per client address per 15 min, across accounts.
    #[arg(
        long,
        env = "HUB_LOGIN_ADDRESS_FAILURES",
        global = true,
        default_value_t = 100
    )]
    pub login_address_failures: u32,

    /// Threads that hash and verify login codes (each holds `HUB_LOGIN_HASH_KIB` while busy).
    #[arg(long, env = "HUB_HASH_WORKERS", global = true, default_value_t = 2)]
    pub hash_workers: usize,

    /// Hashing jobs that may wait for a worker; beyond them callers get 503 `busy`.
    #[arg(long, env = "HUB_HASH_QUEUE", global = true, default_value_t = 64)]
    pub hash_queue: usize,

    /// Buyer sign-ups per client address per hour (the admin token is exempt).
    #[arg(
        long,
        env = "HUB_SIGNUPS_PER_ADDRESS_H",
        global = true,
        default_value_t = 20
    )]
    pub signups_per_address_h: u32,

    /// Most sockets open at once; 0 = the open-file limit minus 1,000 (for the database pool,
    /// files and headroom). Upgrades beyond it get 503 `too_many_connections`.
    #[arg(long, env = "HUB_MAX_CONNECTIONS", global = true, default_value_t = 0)]
    pub max_connections: usize,

    /// Most sockets that have not authenticated yet; upgrades beyond it get 503.
    #[arg(
        long,
        env = "HUB_MAX_UNAUTHENTICATED",
        global = true,
        default_value_t = 1024
    )]
    pub max_unauthenticated: usize,

    /// Most sockets per vendor, driver or buyer account (the admin token is exempt); the next
    /// one is closed with 4409.
    #[arg(
        long,
        env = "HUB_MAX_SOCKETS_PER_ACCOUNT",
        global = true,
        default_value_t = 16
    )]
    pub max_sockets_per_account: usize,

    /// Currency of every amount (ISO 4217 code, 3 uppercase letters); amounts are integer
    /// hundredths of it (`*_cents`). Clients read it from `GET /api/config`.
    #[arg(
        long,
        env = "HUB_CURRENCY",
        global = true,
        default_value = "EUR",
        value_parser = parse_currency
    )]
    pub currency: String,

    /// Enables fault injection for tests (`POST /api/admin/debug/crash-dispatcher`). Never in
    /// production.
    #[arg(
        long,
        env = "HUB_DEBUG_FAULTS",
        global = true,
        default_value_t = false,
        hide = true
    )]
    pub debug_faults: bool,

    /// NATS server that makes this hub a cluster member (e.g. `nats://127.0.0.1:4222`): events
    /// reach sockets on every node, one node at a time dispatches (leased through Postgres).
    /// Unset (the default): a single process with an in-process bus.
    #[arg(long, env = "HUB_NATS_URL", global = true)]
    pub nats_url: Option<String>,

    /// Name of the cluster: the prefix of its NATS subjects. Nodes with the same database and
    /// the same name form one cluster.
    #[arg(long, env = "HUB_CLUSTER", global = true, default_value = "hub")]
    pub cluster_name: String,

    /// This node's name in `GET /api/admin/cluster` (default: its listening address).
    #[arg(long, env = "HUB_NODE_NAME", global = true)]
    pub node_name: Option<String>,

    /// How often a node that does not hold the dispatcher's lease tries to take it, and the
    /// holder checks its lease connection, in milliseconds.
    #[arg(long, env = "HUB_LEASE_POLL_MS", global = true, default_value_t = 250)]
    pub lease_poll_ms: u64,

    /// Addresses of load balancers in front of the hub (comma-separated). For requests from
    /// them the client's address, for the per-address login and sign-up limits, is the last
    /// address of `X-Forwarded-For`. Empty: the TCP peer is the client.
    #[arg(
        long,
        env = "HUB_TRUSTED_PROXIES",
        global = true,
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,

    /// Folder of the web demo served at `/`.
    #[arg(long, env = "HUB_WEB_DIR", global = true, default_value = "web-demo")]
    pub web_dir: PathBuf,

    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "HUB_LOG_JSON", global = true, default_value_t = false)]
    pub log_json: bool,
}

/// A currency code as ISO 4217 writes it: exactly three uppercase ASCII letters.
pub fn parse_currency(s: &str) -> Result<String, String> {
    if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a currency code: use 3 uppercase letters, e.g. EUR"
        ))
    }
}

impl Config {
    /// Defaults with environment overrides, as the CLI would build them without flags.
    pub fn from_env() -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: Config,
        }
        <Wrapper as clap::Parser>::parse_from(["dispatch-hub"]).config
    }

    /// The socket cap in force: `max_connections`, or the open-file limit minus 1,000.
    pub fn effective_max_connections(&self) -> usize {
        if self.max_connections > 0 {
            return self.max_connections;
        }
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        (soft as usize).saturating_sub(1_000).max(64)
    }

    /// Commission for a delivered order of `total_cents`, rounded down.
    pub fn commission_cents(&self, total_cents: i64) -> i64 {
        let bp = (self.commission_percent * 100.0).round().max(0.0) as i64;
        self.commission_flat_cents.max(0) + total_cents * bp / 10_000
    }
}
