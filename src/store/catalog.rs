//! Products of shops.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Product {
    pub id: Uuid,
    pub shop_id: Uuid,
    pub name: String,
    pub price_cents: i64,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

const COLS: &str = "id, shop_id, name, price_cents, active, created_at";

pub async fn insert_product(
    db: &PgPool,
    shop_id: Uuid,
    name: &str,
    price_cents: i64,
    active: bool,
) -> sqlx::Result<Product> {
    let sql = format!(
        "INSERT INTO products (id, shop_id, name, price_cents, active) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLS}"
    );
    sqlx::query_as(&sql)
        .bind(Uuid::now_v7())
        .bind(shop_id)
        .bind(name)
        .bind(price_cents)
        .bind(active)
        .fetch_one(db)
        .await
}

pub async fn list_active(db: &PgPool, shop_id: Uuid) -> sqlx::Result<Vec<Product>> {
    let sql =
        format!("SELECT {COLS} FROM products WHERE shop_id = $1 AND active ORDER BY name, id");
    sqlx::query_as(&sql).bind(shop_id).fetch_all(db).await
}

/// The products with these ids (of any shop, active or not); the caller validates.
pub async fn by_ids(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<Product>> {
    let sql = format!("SELECT {COLS} FROM products WHERE id = ANY($1)");
    sqlx::query_as(&sql).bind(ids).fetch_all(db).await
}
