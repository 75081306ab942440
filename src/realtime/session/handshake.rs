//! The first seconds and the last of a socket: the `auth` handshake, and closing with a code
//! the client can read.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};

use super::super::protocol::{ClientMsg, MAX_TEXT, close};
use super::{CLOSE_WAIT, Exit};
use crate::domain::Actor;
use crate::error::Error;
use crate::service::Hub;
use crate::service::auth::SessionInfo;

pub(super) async fn handshake(
    hub: &Hub,
    socket: &mut WebSocket,
) -> Result<(Actor, Option<SessionInfo>), Exit> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(hub.config.ws_auth_timeout_s);
    let unauthorized = |why| Some((close::UNAUTHORIZED, why));
    let first = loop {
        let next = tokio::select! {
            n = tokio::time::timeout_at(deadline, socket.recv()) => n,
            _ = hub.shutdown.cancelled() => return Err(Some((close::GOING_AWAY, "hub shutting down"))),
        };
        match next {
            Err(_) => return Err(unauthorized("auth timeout")),
            // The peer is gone: there is no one to send a close frame to.
            Ok(None | Some(Err(_))) => return Err(None),
            Ok(Some(Ok(Message::Text(t)))) => break t,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => return Err(unauthorized("first message must be auth")),
        }
    };
    if first.len() > MAX_TEXT {
        return Err(unauthorized("auth message too large"));
    }
    let Ok(ClientMsg::Auth { token }) = ClientMsg::parse(&first) else {
        return Err(unauthorized("first message must be auth"));
    };
    if crate::store::health::is_down() && !hub.secrets.is_admin_token(&token) {
        return Err(Some((close::UNAVAILABLE, "hub unavailable, retry")));
    }
    hub.authenticate_session(&token).await.map_err(|e| match e {
        Error::Unavailable | Error::Internal(_) => {
            Some((close::UNAVAILABLE, "hub unavailable, retry"))
        }
        _ => unauthorized("bad token"),
    })
}

/// Did reading fail because the frame was over the hard size cap?
pub(super) fn too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    matches!(
        e.into_inner().downcast_ref::<WsError>(),
        Some(WsError::Capacity(_))
    )
}

pub(super) async fn close_with(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = tokio::time::timeout(CLOSE_WAIT, socket.send(Message::Close(Some(frame)))).await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    // Wait briefly for the peer's close reply, discarding what it still sends: dropping a
    // socket with unread input makes the kernel answer with a reset, which can destroy the
    // close frame (and its code) before the client reads it.
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}
