//! The wire protocol: client messages (tagged by `type`) and helpers that build the hub's
//! replies. `docs/protocol.md` is the contract; keep the two in step.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::domain::{Action, OrderId};
use crate::error::Error;

/// Close codes (see docs/protocol.md).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const UNAVAILABLE: u16 = 1011;
    pub const IDLE: u16 = 4000;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const TOO_SLOW: u16 = 4408;
    pub const TOO_MANY_SOCKETS: u16 = 4409;
    pub const FLOODING: u16 = 4429;
}

/// Largest text frame a client may send.
pub const MAX_TEXT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    Auth {
        token: String,
    },
    Subscribe {
        topic: String,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Unsubscribe {
        topic: String,
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
    },
    Transition {
        #[serde(default, rename = "ref")]
        reference: Option<Value>,
        order_id: OrderId,
        action: Action,
        expected_version: i32,
        #[serde(default)]
        otp: Option<String>,
        #[serde(default)]
        reason: Option<String>,
    },
    Ping,
    Location {
        lat: f64,
        lng: f64,
    },
    Availability {
        available: bool,
    },
}

impl ClientMsg {
    /// Parses a text frame; the error message says what was wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Only short strings and numbers are echoed back as `ref`.
pub fn clean_ref(r: Option<Value>) -> Value {
    match r {
        Some(Value::String(s)) if s.len() <= 64 => Value::String(s),
        Some(Value::Number(n)) => Value::Number(n),
        _ => Value::Null,
    }
}

pub fn error_frame(reference: &Value, code: &str, message: &str) -> String {
    json!({"type": "error", "ref": reference, "code": code, "message": message}).to_string()
}

/// An application error as a socket `error` frame, with the same code as REST.
pub fn error_from(reference: &Value, e: &Error) -> String {
    let mut body = e.body();
    body.insert("type".into(), "error".into());
    body.insert("ref".into(), reference.clone());
    if matches!(e, Error::Internal(_)) {
        body.insert("message".into(), "internal error".into());
    }
    Value::Object(body).to_string()
}
