//! Extractors: JSON, path and query that reject with our error shape, and the bearer-token
//! principal.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::domain::Actor;
use crate::error::Error;
use crate::service::Hub;

/// `axum::Json` with our rejection.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Path` with our rejection.
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(Error))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with our rejection.
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(Error))]
pub struct ApiQuery<T>(pub T);

/// The bearer token of the request, unchecked.
pub struct BearerToken(pub String);

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Error::Unauthorized("missing Authorization: Bearer token".into()))?;
        let value = header
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed Authorization header".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::Unauthorized("expected Authorization: Bearer <token>".into()))?;
        Ok(BearerToken(token.to_owned()))
    }
}

/// The authenticated caller.
pub struct Auth(pub Actor);

impl FromRequestParts<Arc<Hub>> for Auth {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Error> {
        let BearerToken(token) = BearerToken::from_request_parts(parts, hub).await?;
        Ok(Auth(hub.authenticate(&token).await?))
    }
}

/// Whether the request carries the admin token (no database lookup; anything else is `false`).
pub struct IsAdmin(pub bool);

impl FromRequestParts<Arc<Hub>> for IsAdmin {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Error> {
        let admin = match BearerToken::from_request_parts(parts, hub).await {
            Ok(BearerToken(t)) => hub.secrets.is_admin_token(&t),
            Err(_) => false,
        };
        Ok(IsAdmin(admin))
    }
}
