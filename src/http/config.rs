//! `GET /api/config`: the hub's settings a client needs to show things right (public).

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::service::Hub;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new().route("/config", get(public_config))
}

async fn public_config(State(hub): State<Arc<Hub>>) -> impl IntoResponse {
    Json(json!({"currency": hub.config.currency}))
}
