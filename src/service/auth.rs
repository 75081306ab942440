//! Who is calling: login codes (Argon2id), bearer tokens (256-bit random, stored as SHA-256),
//! buyer sign-up, OTPs, and the failed-login limiter.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use hmac::{Hmac, Mac};
use rand::{Rng, RngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::Hub;
use crate::domain::{Actor, OrderId, Role};
use crate::error::{Error, Result};
use crate::store::accounts;

/// Failed logins allowed per account and per client address in one window.
pub const MAX_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Wrong OTPs allowed before an order's OTP locks.
pub const MAX_OTP_ATTEMPTS: i32 = 5;

/// Secrets held in memory only.
pub struct Secrets {
    admin_token_sha: Option<[u8; 32]>,
    otp_key: [u8; 32],
    login_params: Params,
    /// A hash of a random code, verified against for unknown accounts.
    dummy_hash: String,
}

impl Secrets {
    pub fn new(admin_token: Option<&str>, secret: Option<&str>, login_hash_kib: u32) -> Self {
        let otp_key = match secret {
            Some(s) => Sha256::digest(format!("dispatch-hub otp key\0{s}").as_bytes()).into(),
            None => {
                tracing::warn!(
                    "HUB_SECRET is not set: OTPs of orders placed before a restart cannot be re-issued on idempotent retries"
                );
                let mut k = [0u8; 32];
                OsRng.fill_bytes(&mut k);
                k
            }
        };
        let login_params =
            Params::new(login_hash_kib.max(8), 2, 1, None).unwrap_or_else(|_| Params::default());
        let dummy_hash = {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::new(Algorithm::Argon2id, Version::V0x13, login_params.clone())
                .hash_password(new_code().as_bytes(), &salt)
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        Self {
            dummy_hash,
            admin_token_sha: admin_token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            otp_key,
            login_params,
        }
    }

    pub fn is_admin_token(&self, token: &str) -> bool {
        match &self.admin_token_sha {
            Some(want) => {
                let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
                bool::from(got.ct_eq(want))
            }
            None => false,
        }
    }

    pub fn admin_enabled(&self) -> bool {
        self.admin_token_sha.is_some()
    }

    /// What is hashed for an OTP: the code keyed by the server secret, so that a stolen
    /// database alone cannot be brute-forced over the 10⁶ possible codes.
    pub fn otp_material(&self, otp: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.otp_key) else {
            return otp.to_owned();
        };
        mac.update(b"otp-hash\0");
        mac.update(otp.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The order's 6-digit OTP, derived from the server secret so that the database holds only
    /// its hash and an idempotent retry can still hand the buyer the same code.
    pub fn otp_for(&self, order: OrderId) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.otp_key) else {
            return "000000".into(); // unreachable: HMAC takes keys of any length
        };
        mac.update(order.0.as_bytes());
        let out = mac.finalize().into_bytes();
        let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) % 1_000_000;
        format!("{n:06}")
    }
}

/// A fresh uniformly random 6-digit code.
pub fn new_code() -> String {
    format!("{:06}", OsRng.gen_range(0..1_000_000u32))
}

/// A fresh bearer token and the SHA-256 (hex) under which it is stored.
pub fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Is this a 6-digit code?
pub fn is_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The key of a client address for the limiter: IPv6 clients by their /64, since one host
/// usually owns a whole /64.
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Argon2id hash of a short code, computed off the async runtime.
pub async fn hash_code(code: String, params: Params) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(code.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::internal(anyhow::anyhow!("argon2: {e}")))
    })
    .await
    .map_err(Error::internal)?
}

/// Checks a code against its Argon2id hash, off the async runtime.
pub async fn verify_code(hash: String, code: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| Error::internal(anyhow::anyhow!("stored hash: {e}")))?;
        Ok(Argon2::default()
            .verify_password(code.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(Error::internal)?
}

/// Argon2id parameters for OTPs: cheap enough for hundreds of orders per second (each order
/// hashes once and verifies once). What is hashed is the OTP keyed by the server secret
/// ([`Secrets::otp_material`]), so a stolen database alone cannot be brute-forced whatever
/// these costs; Argon2 is the second line should the secret leak too.
pub fn otp_params() -> Params {
    Params::new(256, 1, 1, None).unwrap_or_else(|_| Params::default())
}

/// Counts failed logins per key (an account or a client address) in a sliding window.
///
/// An attempt is counted *before* the code is checked and refunded if it was right, so that
/// many concurrent guesses cannot all slip through between the check and the count.
#[derive(Default)]
pub struct LoginLimiter {
    failures: DashMap<String, VecDeque<Instant>>,
}

/// Above this many keys, expired ones are swept on the next attempt.
const SWEEP_ABOVE: usize = 10_000;

impl LoginLimiter {
    /// Refuses with `RateLimited` when the account or the address has used up its failures;
    /// otherwise counts an attempt against the account right away (so concurrent guesses at
    /// one account cannot all slip through) and returns it. The address is charged only when
    /// the attempt fails, so many users behind one address can log in at once.
    pub fn begin(&self, account: String, address: String) -> Result<Attempt> {
        let now = Instant::now();
        if self.failures.len() > SWEEP_ABOVE {
            self.failures.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) <= FAILURE_WINDOW)
            });
        }
        if let Some(mut q) = self.failures.get_mut(&address) {
            Self::expire(&mut q, now);
            if q.len() >= MAX_FAILURES {
                return Err(Self::limited(&q, now));
            }
        }
        let mut q = self.failures.entry(account.clone()).or_default();
        Self::expire(&mut q, now);
        if q.len() >= MAX_FAILURES {
            return Err(Self::limited(&q, now));
        }
        q.push_back(now);
        Ok(Attempt { account, address })
    }

    fn expire(q: &mut VecDeque<Instant>, now: Instant) {
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > FAILURE_WINDOW)
        {
            q.pop_front();
        }
    }

    fn limited(q: &VecDeque<Instant>, now: Instant) -> Error {
        let oldest = q.front().copied().unwrap_or(now);
        let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(oldest));
        Error::RateLimited {
            retry_after_s: wait.as_secs().max(1),
        }
    }

    /// The code was right: the account's attempt is taken back.
    pub fn succeeded(&self, a: Attempt) {
        if let Some(mut q) = self.failures.get_mut(&a.account) {
            q.pop_back();
        }
    }

    /// The code was wrong: the address is charged too.
    pub fn failed(&self, a: Attempt) {
        self.failures
            .entry(a.address)
            .or_default()
            .push_back(Instant::now());
    }
}

/// A counted login attempt.
pub struct Attempt {
    account: String,
    address: String,
}

/// Argon2id verifications of login codes running at once (each uses `HUB_LOGIN_HASH_KIB`).
pub const LOGIN_VERIFY_SLOTS: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub role: Role,
    pub account_id: Uuid,
    pub code: String,
}

#[derive(Debug, Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub role: Role,
    pub subject_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl Hub {
    /// Resolves a bearer token to the acting principal.
    pub async fn authenticate(&self, token: &str) -> Result<Actor> {
        if token.is_empty() || token.len() > 512 {
            return Err(Error::Unauthorized("invalid token".into()));
        }
        if self.secrets.is_admin_token(token) {
            return Ok(Actor::ADMIN);
        }
        let found = accounts::find_session(&self.db, &token_hash(token)).await?;
        let Some((role, subject)) = found else {
            return Err(Error::Unauthorized(
                "invalid, expired or revoked token".into(),
            ));
        };
        let role = Role::parse(&role).ok_or_else(|| Error::Unauthorized("invalid token".into()))?;
        Ok(Actor {
            role,
            id: Some(subject),
        })
    }

    async fn issue_token(&self, role: Role, subject: Uuid) -> Result<TokenResponse> {
        let (token, hash) = new_token();
        let expires_at = Utc::now() + chrono::Duration::hours(self.config.session_ttl_h.max(1));
        accounts::insert_session(&self.db, &hash, role, subject, expires_at).await?;
        Ok(TokenResponse {
            token,
            role,
            subject_id: subject,
            expires_at,
        })
    }

    pub async fn login(&self, req: LoginRequest, client: IpAddr) -> Result<TokenResponse> {
        if !matches!(req.role, Role::Vendor | Role::Driver) {
            return Err(Error::validation("role must be vendor or driver"));
        }
        let attempt = self.limiter.begin(
            format!("account:{}", req.account_id),
            format!("ip:{}", ip_key(client)),
        )?;
        let stored = accounts::login_code_hash(&self.db, req.role, req.account_id).await?;
        // Unknown accounts and malformed codes cost one verification too, so that timing does
        // not tell which accounts exist.
        let known = stored.is_some() && is_code(&req.code);
        let hash = stored.unwrap_or_else(|| self.secrets.dummy_hash.clone());
        let ok = {
            let _slot = self.login_slots.acquire().await.map_err(Error::internal)?;
            verify_code(hash, req.code).await?
        };
        if !(ok && known) {
            self.limiter.failed(attempt);
            return Err(Error::Unauthorized("unknown account or wrong code".into()));
        }
        self.limiter.succeeded(attempt);
        self.issue_token(req.role, req.account_id).await
    }

    pub async fn logout(&self, token: &str) -> Result<()> {
        if self.secrets.is_admin_token(token) {
            return Err(Error::BadRequest(
                "the admin token is configured, not issued; it cannot be revoked".into(),
            ));
        }
        accounts::revoke_session(&self.db, &token_hash(token)).await?;
        Ok(())
    }

    pub async fn sign_up_buyer(
        &self,
        name: &str,
        phone: &str,
    ) -> Result<(accounts::Buyer, TokenResponse)> {
        let name = super::text("name", name, 1, 120)?;
        let phone = super::text("phone", phone, 3, 32)?;
        let buyer = accounts::insert_buyer(&self.db, Uuid::now_v7(), name, phone).await?;
        let token = self.issue_token(Role::Buyer, buyer.id).await?;
        Ok((buyer, token))
    }

    pub fn login_params(&self) -> Params {
        self.secrets.login_params.clone()
    }
}
