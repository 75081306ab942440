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
    #[error("this method is not allowed here")]
    MethodNotAllowed,
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
    #[error("the driver already holds an active order")]
    DriverBusy,
    #[error("the request conflicts with stored data ({constraint})")]
    Constraint { constraint: String },
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
    /// Only the dispatcher meets it: its lease moved on before its assignment committed.
    #[error("this node no longer holds the dispatcher's lease")]
    NotLeader,
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
            Error::MethodNotAllowed => "method_not_allowed",
            Error::VersionConflict { .. } => "version_conflict",
            Error::InvalidTransition { .. } => "invalid_transition",
            Error::IdempotencyConflict => "idempotency_conflict",
            Error::PayloadTooLarge => "payload_too_large",
            Error::Validation(_) => "validation_failed",
            Error::DriverBusy => "driver_busy",
            Error::Constraint { .. } => "constraint_violation",
            Error::InvalidOtp { .. } => "invalid_otp",
            Error::OtpLocked => "otp_locked",
            Error::RateLimited { .. } => "rate_limited",
            Error::Unavailable => "unavailable",
            Error::Busy { .. } => "busy",
            Error::TooManyConnections => "too_many_connections",
            Error::LoginCodeExpired => "login_code_expired",
            Error::NotLeader => "not_leader",
            Error::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::VersionConflict { .. }
            | Error::InvalidTransition { .. }
            | Error::IdempotencyConflict
            | Error::DriverBusy
            | Error::Constraint { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Validation(_) | Error::InvalidOtp { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::OtpLocked => StatusCode::LOCKED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable
            | Error::Busy { .. }
            | Error::TooManyConnections
            | Error::NotLeader => StatusCode::SERVICE_UNAVAILABLE,
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

/// Is this database error an outage (the server or the path to it is gone, shutting down or
/// out of connections) rather than something about the statement?
pub fn is_outage(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P: operator intervention (admin/crash shutdown,
            // cannot connect now); 53: insufficient resources (too many connections, disk
            // full, out of memory); 58: system error (I/O); 55000: "database is not currently
            // accepting connections" (seen while Postgres stops); 25006: read-only transaction
            // (a standby after a failover). Serialization failures (40xxx) are not outages.
            c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c.starts_with("58")
                || c == "55000"
                || c == "25006"
        }),
        _ => false,
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_outage(&e) {
            tracing::warn!(error = %e, "database unavailable");
            // A pool timeout under load is not an outage of Postgres itself.
            if !matches!(e, sqlx::Error::PoolTimedOut) {
                crate::store::health::report_outage();
            }
            return Error::Unavailable;
        }
        if let sqlx::Error::Database(db) = &e
            && db.code().is_some_and(|c| c.starts_with("23"))
        {
            // An integrity constraint the service did not anticipate: the client's request
            // conflicts with stored data; not a bug in the hub, but worth a log line.
            let constraint = db.constraint().unwrap_or("unnamed").to_owned();
            tracing::warn!(error = %e, %constraint, "constraint violation");
            return Error::Constraint { constraint };
        }
        Error::Internal(e.into())
    }
}
