//! Orders: place, read, list, the event log, transitions; and driver commissions.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::domain::{DriverId, OrderId, OrderStatus, Role};
use crate::error::{Error, Result};
use crate::service::Hub;
use crate::service::orders::{NewOrderRequest, TransitionRequest};
use crate::store;

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/{id}", get(one))
        .route("/orders/{id}/events", get(events))
        .route("/orders/{id}/transitions", post(transition))
        .route("/drivers/me/commissions", get(commissions))
}

async fn place(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NewOrderRequest>,
) -> Result<impl IntoResponse> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::BadRequest("Idempotency-Key must be visible ASCII".into()))?,
        ),
        None => None,
    };
    let (placed, created) = hub.place_order(actor, key, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(placed)))
}

async fn one(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<OrderId>,
) -> Result<impl IntoResponse> {
    Ok(Json(hub.get_order(actor, id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

async fn list(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<impl IntoResponse> {
    let status = match q.status.as_deref() {
        Some(s) => Some(
            OrderStatus::parse(s)
                .ok_or_else(|| Error::BadRequest(format!("unknown status {s:?}")))?,
        ),
        None => None,
    };
    let cursor = match q.cursor.as_deref() {
        Some(c) => Some(
            c.parse::<OrderId>()
                .map_err(|_| Error::BadRequest("bad cursor".into()))?,
        ),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(Error::BadRequest("limit must be in 1..=100".into()));
    }
    let (orders, next) = hub.list_orders(actor, status, cursor, limit).await?;
    Ok(Json(json!({"orders": orders, "next_cursor": next})))
}

async fn events(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<OrderId>,
) -> Result<impl IntoResponse> {
    Ok(Json(json!({"events": hub.order_events(actor, id).await?})))
}

async fn transition(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<OrderId>,
    ApiJson(req): ApiJson<TransitionRequest>,
) -> Result<impl IntoResponse> {
    Ok(Json(hub.transition(actor, id, req).await?))
}

async fn commissions(State(hub): State<Arc<Hub>>, Auth(actor): Auth) -> Result<impl IntoResponse> {
    let (Role::Driver, Some(id)) = (actor.role, actor.id) else {
        return Err(Error::Forbidden("drivers only".into()));
    };
    let list = store::orders::commissions(&hub.db, DriverId(id)).await?;
    let total: i64 = list.iter().map(|c| c.amount_cents).sum();
    Ok(Json(json!({"commissions": list, "total_cents": total})))
}
