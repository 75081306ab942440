//! Who is calling: login codes (Argon2id), bearer tokens (256-bit random, stored as SHA-256),
//! buyer sign-up, OTPs (an HMAC of the order id, recomputed to check), and the failed-login
//! limiter.

use std::net::IpAddr;

use crate::cluster::control::Revoke;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use chrono::{DateTime, Utc};
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

/// Wrong OTPs allowed before an order's OTP locks.
pub const MAX_OTP_ATTEMPTS: i32 = 5;

/// How an OTP tag in `orders.otp_hash` begins (older rows hold an Argon2id hash, `$argon2id$…`).
pub const OTP_TAG_PREFIX: &str = "hmac-sha256$";

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
                // Only reached when the hub is built without `app::start` (which always
                // resolves a secret): OTPs then last as long as this process.
                tracing::warn!("no server secret: OTPs will not verify after a restart");
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

    /// The code keyed by the server secret. Orders placed before OTPs were checked by
    /// recomputing them stored an Argon2id hash of this; newer orders store it as their tag
    /// ([`Secrets::otp_tag`]).
    pub fn otp_material(&self, otp: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.otp_key) else {
            return otp.to_owned();
        };
        mac.update(b"otp-hash\0");
        mac.update(otp.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// The order's 6-digit OTP, derived from the server secret so that the database need not
    /// hold it and an idempotent retry can still hand the buyer the same code.
    pub fn otp_for(&self, order: OrderId) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.otp_key) else {
            return "000000".into(); // unreachable: HMAC takes keys of any length
        };
        mac.update(order.0.as_bytes());
        let out = mac.finalize().into_bytes();
        let n = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) % 1_000_000;
        format!("{n:06}")
    }

    /// Is `code` this order's OTP? Recomputes it and compares in constant time: no hash to
    /// verify, no blocking pool. Holds for every order whose OTP was issued under the current
    /// secret, whatever its row stores in `otp_hash`.
    pub fn otp_matches(&self, order: OrderId, code: &str) -> bool {
        is_code(code) && bool::from(self.otp_for(order).as_bytes().ct_eq(code.as_bytes()))
    }

    /// What a new order stores in `otp_hash`: a tag of its OTP keyed by the server secret. It
    /// reveals nothing without the secret and is not needed to check a delivery; it only tells
    /// an idempotent retry whether the OTP was issued under the current secret.
    pub fn otp_tag(&self, order: OrderId) -> String {
        format!(
            "{OTP_TAG_PREFIX}{}",
            self.otp_material(&self.otp_for(order))
        )
    }

    /// Was this order's OTP issued under the current secret (so `otp_for` gives the buyer's
    /// code)? `stored` is the row's `otp_hash`: a tag for new orders, an Argon2id hash for
    /// orders placed before tags (checked on the blocking pool; only retries of such orders
    /// come here).
    pub async fn otp_is_current(&self, order: OrderId, stored: &str) -> Result<bool> {
        if stored.starts_with(OTP_TAG_PREFIX) {
            return Ok(bool::from(
                self.otp_tag(order).as_bytes().ct_eq(stored.as_bytes()),
            ));
        }
        verify_code(stored.to_owned(), self.otp_material(&self.otp_for(order))).await
    }
}

/// Digits of a login code (see docs/security.md for why eight).
pub const LOGIN_CODE_DIGITS: usize = 8;

/// A fresh uniformly random login code of [`LOGIN_CODE_DIGITS`] digits.
pub fn new_code() -> String {
    format!("{:08}", OsRng.gen_range(0..100_000_000u32))
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

/// Is this a 6-digit code (an order's OTP)?
pub fn is_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Could this be a login code? Codes issued before eight digits were 6 digits long.
pub fn is_login_code(s: &str) -> bool {
    (6..=12).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Checks a code against its Argon2id hash, off the async runtime (OTPs of orders placed
/// before tags).
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub role: Role,
    /// The shop id (vendor) or the driver id; a driver may give `phone` instead.
    #[serde(default)]
    pub account_id: Option<Uuid>,
    #[serde(default)]
    pub phone: Option<String>,
    pub code: String,
}

/// What a socket remembers of the token it authenticated with.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
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
        Ok(self.authenticate_session(token).await?.0)
    }

    /// Like [`Hub::authenticate`], with the session it came from (`None` for the admin token).
    pub async fn authenticate_session(&self, token: &str) -> Result<(Actor, Option<SessionInfo>)> {
        if token.is_empty() || token.len() > 512 {
            return Err(Error::Unauthorized("invalid token".into()));
        }
        if self.secrets.is_admin_token(token) {
            return Ok((Actor::ADMIN, None));
        }
        let hash = token_hash(token);
        if let Some((actor, expires_at)) = self.sessions.get(&hash) {
            let info = SessionInfo {
                token_hash: hash,
                expires_at,
            };
            return Ok((actor, Some(info)));
        }
        let generation = self.sessions.generation();
        let found = accounts::find_session(&self.db, &hash).await?;
        let Some((role, subject, expires_at)) = found else {
            return Err(Error::Unauthorized(
                "invalid, expired or revoked token".into(),
            ));
        };
        let role = Role::parse(&role).ok_or_else(|| Error::Unauthorized("invalid token".into()))?;
        let actor = Actor {
            role,
            id: Some(subject),
        };
        self.sessions.insert(generation, &hash, actor, expires_at);
        let info = SessionInfo {
            token_hash: hash,
            expires_at,
        };
        Ok((actor, Some(info)))
    }

    /// Is the session of this token hash still live (not revoked, not expired)?
    pub async fn session_live(&self, token_hash: &str) -> Result<bool> {
        Ok(accounts::find_session(&self.db, token_hash)
            .await?
            .is_some())
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

    /// Logs a vendor or driver in with a login code, under the limits of
    /// [`super::limiter`]: the account is looked up first (only real accounts have a budget),
    /// then the attempt is registered, then the code is checked on the hashing pool.
    pub async fn login(&self, req: LoginRequest, client: IpAddr) -> Result<TokenResponse> {
        let req = self.resolve_login(req).await?;
        if !matches!(req.role, Role::Vendor | Role::Driver) {
            return Err(Error::validation("role must be vendor or driver"));
        }
        let account = (req.role, req.account_id);
        let stored = accounts::login_code_hash(&self.db, req.role, req.account_id).await?;
        let attempt = self.limiter.begin(account, stored.is_some(), client)?;
        // From here on, leaving early (the client hanging up) counts as a failure; the hub
        // abandons the attempt only when it never checked the code.
        // Unknown accounts and malformed codes cost one verification too, so that timing does
        // not tell which accounts exist.
        let known = stored.is_some() && is_login_code(&req.code);
        let (hash, expires_at) = match stored {
            Some((h, e)) => (h, Some(e)),
            None => (self.secrets.dummy_hash.clone(), None),
        };
        let checked_hash = hash.clone();
        let ok = match self.hashing.verify(hash, req.code).await {
            Ok(ok) => ok,
            Err(e @ (Error::Busy { .. } | Error::Unavailable)) => {
                attempt.abandon();
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if !(ok && known) {
            return Err(Error::Unauthorized("unknown account or wrong code".into()));
        }
        // The right code, but too old: not a guess, and not a login either.
        if expires_at.is_some_and(|e| e <= Utc::now()) {
            attempt.abandon();
            return Err(Error::LoginCodeExpired);
        }
        // The session is written only if the code checked is still the account's code: a login
        // in flight when an admin rotates the code must not outlive the rotation.
        let (token, token_hash) = new_token();
        let expires_at = Utc::now() + chrono::Duration::hours(self.config.session_ttl_h.max(1));
        let issued = accounts::insert_session_if_code(
            &self.db,
            &token_hash,
            (req.role, req.account_id),
            expires_at,
            &checked_hash,
        )
        .await;
        match issued {
            Ok(true) => attempt.succeeded(),
            Ok(false) => {
                attempt.abandon();
                return Err(Error::Unauthorized(
                    "the login code was just replaced".into(),
                ));
            }
            Err(e) => {
                attempt.abandon();
                return Err(e.into());
            }
        }
        Ok(TokenResponse {
            token,
            role: req.role,
            subject_id: req.account_id,
            expires_at,
        })
    }

    /// Revokes a token and ends the sockets that authenticated with it.
    pub async fn logout(&self, token: &str) -> Result<()> {
        if self.secrets.is_admin_token(token) {
            return Err(Error::BadRequest(
                "the admin token is configured, not issued; it cannot be revoked".into(),
            ));
        }
        let (actor, session) = self.authenticate_session(token).await?;
        accounts::revoke_session(&self.db, &token_hash(token)).await?;
        if let (Some(id), Some(s)) = (actor.id, session) {
            self.revoke_everywhere(Revoke {
                role: actor.role,
                id,
                token_hash: Some(s.token_hash),
                code_rotated: false,
            });
        }
        Ok(())
    }

    /// Admin: revokes every session of an account and ends its live sockets.
    /// Returns (sessions revoked, sockets closed).
    pub async fn revoke_account(&self, actor: Actor, role: Role, id: Uuid) -> Result<(u64, usize)> {
        if actor.role != Role::Admin {
            return Err(Error::Forbidden("admin only".into()));
        }
        if !matches!(role, Role::Vendor | Role::Driver | Role::Buyer) {
            return Err(Error::validation("role must be vendor, driver or buyer"));
        }
        let revoked = accounts::revoke_sessions_of(&self.db, role, id).await?;
        let closed = self.revoke_everywhere(Revoke {
            role,
            id,
            token_hash: None,
            code_rotated: false,
        });
        tracing::info!(role = role.as_str(), subject = %id, revoked, closed, "account sessions revoked");
        Ok((revoked, closed))
    }

    pub async fn sign_up_buyer(
        &self,
        name: &str,
        phone: &str,
        client: IpAddr,
        by_admin: bool,
    ) -> Result<(accounts::Buyer, TokenResponse)> {
        let name = super::text("name", name, 1, 120)?;
        let phone = super::text("phone", phone, 3, 32)?;
        if !by_admin {
            self.signups.check(client)?;
        }
        let buyer = accounts::insert_buyer(&self.db, Uuid::now_v7(), name, phone).await?;
        let token = self.issue_token(Role::Buyer, buyer.id).await?;
        Ok((buyer, token))
    }

    pub fn login_params(&self) -> Params {
        self.secrets.login_params.clone()
    }
}

/// How often expired and revoked sessions are deleted (the first sweep runs at start).
pub const SESSION_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes sessions that expired or were revoked more than a day ago, at start and then every
/// [`SESSION_SWEEP_EVERY`], so the `sessions` table holds live tokens and a day of history.
pub fn spawn_session_sweeper(hub: std::sync::Arc<Hub>) {
    let shutdown = hub.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SESSION_SWEEP_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Once per cluster: on the node that dispatches.
            if !hub.cluster.is_leader() {
                continue;
            }
            match accounts::delete_stale_sessions(&hub.db, chrono::Duration::days(1)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "stale sessions deleted"),
                Err(e) => tracing::warn!(error = %e, "session sweep failed"),
            }
        }
    });
}
