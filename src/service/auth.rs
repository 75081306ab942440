//! Who is calling: login codes (Argon2id), bearer tokens (256-bit random, stored as SHA-256),
//! buyer sign-up, OTPs, and the failed-login limiter.

use std::net::IpAddr;

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
    // IPv4 clients of a dual-stack listener arrive as ::ffff:a.b.c.d.
    match ip.to_canonical() {
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

/// Argon2id verifications of login codes running at once (each uses `HUB_LOGIN_HASH_KIB`).
pub const LOGIN_VERIFY_SLOTS: usize = 4;

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
        let req = self.resolve_login(req).await?;
        if !matches!(req.role, Role::Vendor | Role::Driver) {
            return Err(Error::validation("role must be vendor or driver"));
        }
        let attempt = self.limiter.begin(
            format!("account:{}", req.account_id),
            format!("ip:{}", ip_key(client)),
        )?;
        // From here on, leaving early (an error, or the client hanging up) counts as a failure.
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
            return Err(Error::Unauthorized("unknown account or wrong code".into()));
        }
        attempt.succeeded();
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
