//! Shops, drivers, buyers and sessions (login tokens, stored as SHA-256 hashes).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Role;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Shop {
    pub id: Uuid,
    pub name: String,
    pub lat: f64,
    pub lng: f64,
    pub address: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Driver {
    pub id: Uuid,
    pub name: String,
    pub phone: String,
    pub last_lat: Option<f64>,
    pub last_lng: Option<f64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Buyer {
    pub id: Uuid,
    pub name: String,
    pub phone: String,
    pub created_at: DateTime<Utc>,
}

pub struct NewShop<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub lat: f64,
    pub lng: f64,
    pub address: &'a str,
    pub code_hash: &'a str,
    pub code_expires_at: DateTime<Utc>,
}

pub async fn insert_shop(db: &PgPool, s: NewShop<'_>) -> sqlx::Result<Shop> {
    sqlx::query_as(
        "INSERT INTO shops (id, name, lat, lng, address, login_code_hash, login_code_expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         RETURNING id, name, lat, lng, address, created_at",
    )
    .bind(s.id)
    .bind(s.name)
    .bind(s.lat)
    .bind(s.lng)
    .bind(s.address)
    .bind(s.code_hash)
    .bind(s.code_expires_at)
    .fetch_one(db)
    .await
}

pub async fn insert_driver(
    db: &PgPool,
    id: Uuid,
    name: &str,
    phone: &str,
    code_hash: &str,
    code_expires_at: DateTime<Utc>,
) -> sqlx::Result<Driver> {
    sqlx::query_as(
        "INSERT INTO drivers (id, name, phone, login_code_hash, login_code_expires_at)
         VALUES ($1, $2, $3, $4, $5)
         RETURNING id, name, phone, last_lat, last_lng, created_at",
    )
    .bind(id)
    .bind(name)
    .bind(phone)
    .bind(code_hash)
    .bind(code_expires_at)
    .fetch_one(db)
    .await
}

pub async fn insert_buyer(db: &PgPool, id: Uuid, name: &str, phone: &str) -> sqlx::Result<Buyer> {
    sqlx::query_as(
        "INSERT INTO buyers (id, name, phone) VALUES ($1, $2, $3)
         RETURNING id, name, phone, created_at",
    )
    .bind(id)
    .bind(name)
    .bind(phone)
    .fetch_one(db)
    .await
}

pub async fn list_shops(db: &PgPool) -> sqlx::Result<Vec<Shop>> {
    sqlx::query_as("SELECT id, name, lat, lng, address, created_at FROM shops ORDER BY name, id")
        .fetch_all(db)
        .await
}

pub async fn get_shop(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Shop>> {
    sqlx::query_as("SELECT id, name, lat, lng, address, created_at FROM shops WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn find_shop_by_name(db: &PgPool, name: &str) -> sqlx::Result<Option<Shop>> {
    sqlx::query_as("SELECT id, name, lat, lng, address, created_at FROM shops WHERE name = $1")
        .bind(name)
        .fetch_optional(db)
        .await
}

pub async fn find_driver_by_name(db: &PgPool, name: &str) -> sqlx::Result<Option<Driver>> {
    sqlx::query_as(
        "SELECT id, name, phone, last_lat, last_lng, created_at FROM drivers WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db)
    .await
}

/// The driver whose phone number has these digits (`digits` as `service::login_account`
/// normalizes them; the expression matches `drivers_phone_digits_idx`, so it is an index hit).
pub async fn driver_id_by_phone(db: &PgPool, digits: &str) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar(
        "SELECT id FROM drivers WHERE NULLIF(regexp_replace(phone, '[^0-9]', '', 'g'), '') = $1",
    )
    .bind(digits)
    .fetch_optional(db)
    .await
}

pub async fn set_driver_phone(db: &PgPool, id: Uuid, phone: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE drivers SET phone = $2 WHERE id = $1")
        .bind(id)
        .bind(phone)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn driver_name(db: &PgPool, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT name FROM drivers WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The display name of a shop (vendor), driver or buyer.
pub async fn account_name(db: &PgPool, role: Role, id: Uuid) -> sqlx::Result<Option<String>> {
    let sql = match role {
        Role::Vendor => "SELECT name FROM shops WHERE id = $1",
        Role::Driver => "SELECT name FROM drivers WHERE id = $1",
        Role::Buyer => "SELECT name FROM buyers WHERE id = $1",
        Role::Admin | Role::System => return Ok(None),
    };
    sqlx::query_scalar(sql).bind(id).fetch_optional(db).await
}

/// The login-code hash of a vendor's shop or a driver, and when the code expires.
pub async fn login_code_hash(
    db: &PgPool,
    role: Role,
    id: Uuid,
) -> sqlx::Result<Option<(String, DateTime<Utc>)>> {
    let sql = match role {
        Role::Vendor => "SELECT login_code_hash, login_code_expires_at FROM shops WHERE id = $1",
        Role::Driver => "SELECT login_code_hash, login_code_expires_at FROM drivers WHERE id = $1",
        _ => return Ok(None),
    };
    sqlx::query_as(sql).bind(id).fetch_optional(db).await
}

/// Replaces an account's login code and revokes every session it has, in one transaction.
/// Returns false when there is no such account.
pub async fn rotate_login_code(
    db: &PgPool,
    role: Role,
    id: Uuid,
    hash: &str,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let sql = match role {
        Role::Vendor => {
            "UPDATE shops SET login_code_hash = $2, login_code_expires_at = $3 WHERE id = $1"
        }
        Role::Driver => {
            "UPDATE drivers SET login_code_hash = $2, login_code_expires_at = $3 WHERE id = $1"
        }
        _ => return Ok(false),
    };
    let mut tx = db.begin().await?;
    let found = sqlx::query(sql)
        .bind(id)
        .bind(hash)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    revoke_sessions_of(&mut *tx, role, id).await?;
    tx.commit().await?;
    Ok(found)
}

/// Revokes every live session of an account; returns how many.
pub async fn revoke_sessions_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    role: Role,
    subject: Uuid,
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = now()
         WHERE role = $1 AND subject_id = $2 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(role.as_str())
    .bind(subject)
    .execute(db)
    .await?
    .rows_affected())
}

/// Deletes sessions that expired, or were revoked, more than `grace` ago; returns how many.
pub async fn delete_stale_sessions(db: &PgPool, grace: chrono::Duration) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM sessions WHERE expires_at < now() - $1::interval
                              OR revoked_at < now() - $1::interval",
    )
    .bind(grace)
    .execute(db)
    .await?
    .rows_affected())
}

pub async fn insert_session(
    db: &PgPool,
    token_hash: &str,
    role: Role,
    subject: Uuid,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO sessions (token_hash, role, subject_id, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(role.as_str())
    .bind(subject)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Inserts a vendor's or driver's session only while `code_hash` is still the account's login
/// code. The account row is share-locked, so a rotation running at the same moment either
/// waits for this insert (and then revokes the new session with the others) or makes it see
/// the new code and insert nothing. False when the code was replaced.
pub async fn insert_session_if_code(
    db: &PgPool,
    token_hash: &str,
    (role, subject): (Role, Uuid),
    expires_at: DateTime<Utc>,
    code_hash: &str,
) -> sqlx::Result<bool> {
    let sql = match role {
        Role::Vendor => {
            "INSERT INTO sessions (token_hash, role, subject_id, expires_at)
             SELECT $1, $2, $3, $4 FROM shops WHERE id = $3 AND login_code_hash = $5 FOR SHARE"
        }
        Role::Driver => {
            "INSERT INTO sessions (token_hash, role, subject_id, expires_at)
             SELECT $1, $2, $3, $4 FROM drivers WHERE id = $3 AND login_code_hash = $5 FOR SHARE"
        }
        _ => return Ok(false),
    };
    Ok(sqlx::query(sql)
        .bind(token_hash)
        .bind(role.as_str())
        .bind(subject)
        .bind(expires_at)
        .bind(code_hash)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}

/// A live (not expired, not revoked) session: its role, subject and expiry.
pub async fn find_session(
    db: &PgPool,
    token_hash: &str,
) -> sqlx::Result<Option<(String, Uuid, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT role, subject_id, expires_at FROM sessions
         WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

/// Of these token hashes, those whose sessions are still live (not revoked, not expired).
pub async fn live_sessions(db: &PgPool, token_hashes: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT token_hash FROM sessions
         WHERE token_hash = ANY($1) AND revoked_at IS NULL AND expires_at > now()",
    )
    .bind(token_hashes)
    .fetch_all(db)
    .await
}

pub async fn revoke_session(db: &PgPool, token_hash: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .execute(db)
    .await?;
    Ok(())
}

/// The stored secret `name`, created with `fresh` on first use (first writer wins).
pub async fn secret_or_create(db: &PgPool, name: &str, fresh: &str) -> sqlx::Result<String> {
    sqlx::query(
        "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(fresh)
    .execute(db)
    .await?;
    sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(db)
        .await
}
