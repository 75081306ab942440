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

/// The client's address for the per-address limits: the TCP peer, or — when the peer is one
/// of `HUB_TRUSTED_PROXIES` (a load balancer that appends the client's address to
/// `X-Forwarded-For`, as HAProxy's `option forwardfor` does) — the last address in that header.
/// Only the last entry is taken: the ones before it are whatever the client sent.
pub struct ClientIp(pub std::net::IpAddr);

impl FromRequestParts<Arc<Hub>> for ClientIp {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Error> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .ok_or_else(|| Error::internal(anyhow::anyhow!("no peer address")))?;
        Ok(ClientIp(client_ip(
            peer,
            &hub.config.trusted_proxies,
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        )))
    }
}

/// The rule of [`ClientIp`]: a trusted peer's last `X-Forwarded-For` address, else the peer.
pub fn client_ip<'a>(
    peer: std::net::IpAddr,
    trusted: &[std::net::IpAddr],
    forwarded: impl Iterator<Item = &'a str>,
) -> std::net::IpAddr {
    if !trusted.contains(&peer.to_canonical()) {
        return peer;
    }
    forwarded
        .flat_map(|h| h.split(','))
        .last()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::client_ip;
    use std::net::IpAddr;

    #[test]
    fn only_a_trusted_proxy_names_the_client() {
        let proxy: IpAddr = "127.0.0.9".parse().unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let trusted = [proxy];
        // The client's own header comes first; the proxy appended the real address last.
        let hdr = ["198.51.100.1, 203.0.113.7"];
        assert_eq!(client_ip(proxy, &trusted, hdr.into_iter()), client);
        // Split over two headers: still the last.
        let two = ["198.51.100.1", "203.0.113.7"];
        assert_eq!(client_ip(proxy, &trusted, two.into_iter()), client);
        // Anyone else's header is ignored.
        assert_eq!(client_ip(client, &trusted, hdr.into_iter()), client);
        // A trusted peer with no (or a garbled) header is itself.
        assert_eq!(client_ip(proxy, &trusted, std::iter::empty()), proxy);
        assert_eq!(client_ip(proxy, &trusted, ["nonsense"].into_iter()), proxy);
    }
}
