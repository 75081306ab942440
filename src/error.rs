//! The one error type of the application. Every variant maps to an HTTP status and a stable
//! snake_case `code`; the socket protocol uses the same codes.

use axum::http::StatusCode;

use crate::service::views::OrderView;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("order is at version {}, not {expected}", .current.version)]
    VersionConflict {
        expected: i32,
        current: Box<OrderView>,
    },
    #[error("{message}")]
    InvalidTransition {
        message: String,
        current: Box<OrderView>,
    },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyConflict,
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("{0}")]
    Validation(String),
    #[error("wrong OTP; {attempts_left} attempts left")]
    InvalidOtp { attempts_left: i32 },
    #[error("too many wrong OTPs; this order can no longer be delivered with an OTP")]
    OtpLocked,
    #[error("too many attempts; retry in {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("the database is unavailable")]
    Unavailable,
    #[error("the hub is busy; retry in {retry_after_s} s")]
    Busy { retry_after_s: u64 },
    #[error("the hub holds as many sockets as it may; retry later")]
    TooManyConnections,
    #[error("this login code has expired; ask an admin for a new one")]
    LoginCodeExpired,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound => "not_found",
            Error::VersionConflict { .. } => "version_conflict",
            Error::InvalidTransition { .. } => "invalid_transition",
            Error::IdempotencyConflict => "idempotency_conflict",
            Error::PayloadTooLarge => "payload_too_large",
            Error::Validation(_) => "validation_failed",
            Error::InvalidOtp { .. } => "invalid_otp",
            Error::OtpLocked => "otp_locked",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable => "unavailable",
            Error::Busy { .. } => "busy",
            Error::TooManyConnections => "too_many_connections",
            Error::LoginCodeExpired => "login_code_expired",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::VersionConflict { .. }
            | Error::InvalidTransition { .. }
            | Error::IdempotencyConflict => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Validation(_) | Error::InvalidOtp { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::OtpLocked => StatusCode::LOCKED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable | Error::Busy { .. } | Error::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::LoginCodeExpired => StatusCode::UNAUTHORIZED,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON object clients see under `error` (REST) or inline (socket `error` frames).
    pub fn body(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("code".into(), self.code().into());
        m.insert("message".into(), self.to_string().into());
        match self {
            Error::VersionConflict { current, .. } | Error::InvalidTransition { current, .. } => {
                if let Ok(v) = serde_json::to_value(current) {
                    m.insert("order".into(), v);
                }
            }
            Error::InvalidOtp { attempts_left } => {
                m.insert("attempts_left".into(), (*attempts_left).into());
            }
            Error::RateLimited { .. }
            | Error::Busy { .. }
            | Error::Unavailable
            | Error::TooManyConnections => {
                m.insert("retry_after_s".into(), self.retry_after_s().into());
            }
            _ => {}
        }
        m
    }

    /// Seconds a client should wait before retrying, for the errors that invite a retry.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Error::RateLimited { retry_after_s } | Error::Busy { retry_after_s } => *retry_after_s,
            Error::Unavailable => 1,
            Error::TooManyConnections => 5,
            _ => 0,
        }
    }

    pub fn validation(msg: impl Into<String>) -> Self {
        Error::Validation(msg.into())
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Error::Internal(e.into())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %e, "database unavailable");
                Error::Unavailable
            }
            other => Error::Internal(other.into()),
        }
    }
}
