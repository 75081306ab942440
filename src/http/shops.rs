//! Shops and their products.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use uuid::Uuid;

use super::extract::{ApiJson, ApiPath, Auth};
use crate::error::Result;
use crate::service::Hub;
use crate::service::catalog::NewProductRequest;
use crate::store::accounts;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/shops", get(list_shops))
        .route("/shops/{id}/products", get(list_products).post(add_product))
}

async fn list_shops(State(hub): State<Arc<Hub>>) -> Result<impl IntoResponse> {
    Ok(Json(json!({"shops": accounts::list_shops(&hub.db).await?})))
}

async fn list_products(
    State(hub): State<Arc<Hub>>,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<impl IntoResponse> {
    Ok(Json(json!({"products": hub.list_products(id).await?})))
}

async fn add_product(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(req): ApiJson<NewProductRequest>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(hub.add_product(actor, id, req).await?),
    ))
}
