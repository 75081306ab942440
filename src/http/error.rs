//! Errors as HTTP responses: `{"error": {"code", "message", …}}` with the variant's status.
//! Extractor rejections (bad JSON, bad path or query) are mapped here too, so that no client
//! input ever produces a plain-text or 500 answer.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(e) = &self {
            tracing::error!(error = ?e, "internal error");
        }
        let status = self.status();
        let mut body = self.body();
        if matches!(self, Error::Internal(_)) {
            body.insert("message".into(), "internal error".into());
        }
        let mut resp = (status, Json(serde_json::json!({ "error": body }))).into_response();
        let retry_after_s = self.retry_after_s();
        if retry_after_s > 0
            && let Ok(v) = HeaderValue::from_str(&retry_after_s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<JsonRejection> for Error {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Error::PayloadTooLarge;
        }
        Error::BadRequest(r.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(r: PathRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for Error {
    fn from(r: QueryRejection) -> Self {
        Error::BadRequest(r.body_text())
    }
}
