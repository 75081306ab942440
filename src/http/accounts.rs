//! Admin creation of shops and drivers, code rotation and revocation, login, logout, buyer
//! sign-up, `me`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::extract::{ApiJson, ApiPath, Auth, BearerToken, ClientIp, IsAdmin};
use crate::domain::Role;
use crate::error::Result;
use crate::service::Hub;
use crate::service::auth::LoginRequest;
use crate::service::catalog::{NewDriverRequest, NewShopRequest};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/admin/shops", post(create_shop))
        .route("/admin/drivers", post(create_driver))
        .route("/admin/shops/{id}/login-code", post(rotate_shop_code))
        .route("/admin/drivers/{id}/login-code", post(rotate_driver_code))
        .route("/admin/sessions/revoke", post(revoke))
        .route("/admin/debug/crash-dispatcher", post(crash_dispatcher))
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .route("/buyers", post(sign_up))
        .route("/me", get(me))
}

async fn create_shop(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiJson(req): ApiJson<NewShopRequest>,
) -> Result<impl IntoResponse> {
    let (shop, code) = hub.create_shop(actor, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"shop": shop, "login_code": code})),
    ))
}

async fn create_driver(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiJson(req): ApiJson<NewDriverRequest>,
) -> Result<impl IntoResponse> {
    let (driver, code) = hub.create_driver(actor, req).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"driver": driver, "login_code": code})),
    ))
}

async fn rotate_shop_code(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<uuid::Uuid>,
) -> Result<impl IntoResponse> {
    let (code, expires_at) = hub.admin_rotate_login_code(actor, Role::Vendor, id).await?;
    Ok(Json(json!({"login_code": code, "expires_at": expires_at})))
}

async fn rotate_driver_code(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiPath(id): ApiPath<uuid::Uuid>,
) -> Result<impl IntoResponse> {
    let (code, expires_at) = hub.admin_rotate_login_code(actor, Role::Driver, id).await?;
    Ok(Json(json!({"login_code": code, "expires_at": expires_at})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    role: Role,
    subject_id: uuid::Uuid,
}

async fn revoke(
    State(hub): State<Arc<Hub>>,
    Auth(actor): Auth,
    ApiJson(req): ApiJson<Revoke>,
) -> Result<impl IntoResponse> {
    let (sessions, sockets) = hub.revoke_account(actor, req.role, req.subject_id).await?;
    Ok(Json(
        json!({"sessions_revoked": sessions, "sockets_closed": sockets}),
    ))
}

/// Fault injection for tests; a 404 unless the hub runs with `HUB_DEBUG_FAULTS`.
async fn crash_dispatcher(State(hub): State<Arc<Hub>>, Auth(actor): Auth) -> Result<StatusCode> {
    if !hub.config.debug_faults {
        return Err(crate::error::Error::NotFound);
    }
    if actor.role != Role::Admin {
        return Err(crate::error::Error::Forbidden("admin only".into()));
    }
    hub.dispatch.crash().await;
    Ok(StatusCode::ACCEPTED)
}

async fn login(
    State(hub): State<Arc<Hub>>,
    ClientIp(client): ClientIp,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<impl IntoResponse> {
    Ok(Json(hub.login(req, client).await?))
}

async fn logout(
    State(hub): State<Arc<Hub>>,
    BearerToken(token): BearerToken,
) -> Result<StatusCode> {
    hub.logout(&token).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignUp {
    name: String,
    phone: String,
}

async fn sign_up(
    State(hub): State<Arc<Hub>>,
    ClientIp(client): ClientIp,
    IsAdmin(by_admin): IsAdmin,
    ApiJson(req): ApiJson<SignUp>,
) -> Result<impl IntoResponse> {
    let (buyer, t) = hub
        .sign_up_buyer(&req.name, &req.phone, client, by_admin)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "buyer": buyer, "token": t.token, "role": t.role,
            "subject_id": t.subject_id, "expires_at": t.expires_at,
        })),
    ))
}

async fn me(State(hub): State<Arc<Hub>>, Auth(actor): Auth) -> Result<impl IntoResponse> {
    Ok(Json(hub.me(actor).await?))
}
