//! Shops, drivers and products: the admin's and vendors' setup work.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Hub;
use super::auth::new_code;
use super::login_account::check_driver_phone;
use crate::domain::{Actor, GeoPoint, Role};
use crate::error::{Error, Result};
use crate::store::{accounts, catalog};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewShopRequest {
    pub name: String,
    pub lat: f64,
    pub lng: f64,
    #[serde(default)]
    pub address: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDriverRequest {
    pub name: String,
    #[serde(default)]
    pub phone: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProductRequest {
    pub name: String,
    pub price_cents: i64,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// `GET /api/me`: who the caller is, with the name a page shows for them.
#[derive(Debug, Serialize)]
pub struct Me {
    pub role: Role,
    pub subject_id: Option<Uuid>,
    /// The shop's name (vendor), the driver's or the buyer's; null for admin.
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Created<T> {
    #[serde(flatten)]
    pub record: T,
    pub login_code: String,
}

pub fn check_name(name: &str) -> Result<&str> {
    super::text("name", name, 1, 120)
}

/// Two drivers cannot share a phone number: it is what they sign in with.
fn phone_taken(e: sqlx::Error) -> Error {
    if crate::store::is_unique_violation(&e, "drivers_phone_digits_idx") {
        Error::validation("phone: another driver already has this phone number")
    } else {
        e.into()
    }
}

fn require_admin(actor: Actor) -> Result<()> {
    if actor.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden("admin only".into()))
    }
}

impl Hub {
    pub async fn create_shop(
        &self,
        actor: Actor,
        req: NewShopRequest,
    ) -> Result<(accounts::Shop, String)> {
        require_admin(actor)?;
        let name = check_name(&req.name)?;
        let pos = GeoPoint::new(req.lat, req.lng).map_err(|e| Error::validation(e.to_string()))?;
        let address = super::text("address", &req.address, 0, 300)?;
        let code = new_code();
        let hash = self.hashing.hash(code.clone(), self.login_params()).await?;
        let shop = accounts::insert_shop(
            &self.db,
            accounts::NewShop {
                id: Uuid::now_v7(),
                name,
                lat: pos.lat,
                lng: pos.lng,
                address,
                code_hash: &hash,
                code_expires_at: self.login_code_expiry(),
            },
        )
        .await?;
        Ok((shop, code))
    }

    pub async fn create_driver(
        &self,
        actor: Actor,
        req: NewDriverRequest,
    ) -> Result<(accounts::Driver, String)> {
        require_admin(actor)?;
        let name = check_name(&req.name)?;
        let phone = super::text("phone", &req.phone, 0, 32)?;
        if !phone.is_empty() {
            check_driver_phone(phone)?;
        }
        let code = new_code();
        let hash = self.hashing.hash(code.clone(), self.login_params()).await?;
        let expires = self.login_code_expiry();
        let driver = accounts::insert_driver(&self.db, Uuid::now_v7(), name, phone, &hash, expires)
            .await
            .map_err(phone_taken)?;
        Ok((driver, code))
    }

    /// Gives a driver a phone number to sign in with (used by `seed-demo`).
    pub async fn set_driver_phone(&self, id: Uuid, phone: &str) -> Result<()> {
        check_driver_phone(phone)?;
        accounts::set_driver_phone(&self.db, id, phone)
            .await
            .map_err(phone_taken)
    }

    pub async fn me(&self, actor: Actor) -> Result<Me> {
        let name = match actor.id {
            Some(id) => accounts::account_name(&self.db, actor.role, id).await?,
            None => None,
        };
        Ok(Me {
            role: actor.role,
            subject_id: actor.id,
            name,
        })
    }

    /// When a login code issued now expires.
    pub fn login_code_expiry(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(i64::from(self.config.login_code_ttl_d.max(1)))
    }

    /// Gives an existing shop or driver a new login code, revokes its sessions and ends its
    /// live sockets. `NotFound` when there is no such account.
    pub async fn rotate_login_code(&self, role: Role, id: Uuid) -> Result<(String, DateTime<Utc>)> {
        if !matches!(role, Role::Vendor | Role::Driver) {
            return Err(Error::validation(
                "only vendors and drivers have login codes",
            ));
        }
        let code = new_code();
        let hash = self.hashing.hash(code.clone(), self.login_params()).await?;
        let expires = self.login_code_expiry();
        if !accounts::rotate_login_code(&self.db, role, id, &hash, expires).await? {
            return Err(Error::NotFound);
        }
        let closed = self.revoke_everywhere(crate::cluster::control::Revoke {
            role,
            id,
            token_hash: None,
            code_rotated: true,
        });
        tracing::info!(role = role.as_str(), subject = %id, closed, "login code rotated");
        Ok((code, expires))
    }

    /// The admin's code rotation (`POST /api/admin/{shops|drivers}/{id}/login-code`).
    pub async fn admin_rotate_login_code(
        &self,
        actor: Actor,
        role: Role,
        id: Uuid,
    ) -> Result<(String, DateTime<Utc>)> {
        require_admin(actor)?;
        self.rotate_login_code(role, id).await
    }

    pub async fn add_product(
        &self,
        actor: Actor,
        shop_id: Uuid,
        req: NewProductRequest,
    ) -> Result<catalog::Product> {
        let allowed =
            actor.role == Role::Admin || (actor.role == Role::Vendor && actor.id == Some(shop_id));
        if !allowed {
            return Err(Error::Forbidden(
                "only this shop's vendor may add products".into(),
            ));
        }
        let name = check_name(&req.name)?;
        if !(0..=10_000_000).contains(&req.price_cents) {
            return Err(Error::validation("price_cents must be in 0..=10000000"));
        }
        if accounts::get_shop(&self.db, shop_id).await?.is_none() {
            return Err(Error::NotFound);
        }
        Ok(catalog::insert_product(&self.db, shop_id, name, req.price_cents, req.active).await?)
    }

    pub async fn list_products(&self, shop_id: Uuid) -> Result<Vec<catalog::Product>> {
        if accounts::get_shop(&self.db, shop_id).await?.is_none() {
            return Err(Error::NotFound);
        }
        Ok(catalog::list_active(&self.db, shop_id).await?)
    }
}
