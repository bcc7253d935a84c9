//! The one error type of every handler (dashboard and API). Client errors carry a message
//! meant for the client; an internal error (a database failure, a bug) is logged with a
//! short reference and the client gets only that reference, never the cause's text.
//!
//! Responses are HTML pages; under `/api` the [`json_errors`] layer turns every error
//! response (this type's, and axum's own rejections such as a malformed JSON body) into
//! `{"error": "..."}` (plus `"errors": {field: message}` for 422).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use crate::control::ops::FieldErrors;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: the request cannot be understood.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid login or token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a refused credential or CSRF token.
    #[error("{0}")]
    Forbidden(String),
    /// 404: says what was not found.
    #[error("{0}")]
    NotFound(String),
    /// 422: the request is understood but cannot be honoured.
    #[error("{0}")]
    Unprocessable(String),
    /// 422: per-field errors.
    #[error("some fields are invalid")]
    Invalid(FieldErrors),
    /// 429: try again after `retry_after` seconds.
    #[error("{message}")]
    TooMany { message: String, retry_after: u64 },
    /// 500: logged; the client sees a reference only.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

pub fn not_found(what: &str) -> Error {
    Error::NotFound(format!("{what} not found"))
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<askama::Error> for Error {
    fn from(e: askama::Error) -> Self {
        Error::Internal(anyhow::Error::new(e).context("template"))
    }
}

impl From<axum::http::header::InvalidHeaderValue> for Error {
    fn from(e: axum::http::header::InvalidHeaderValue) -> Self {
        Error::Internal(anyhow::Error::new(e).context("header"))
    }
}

/// What an error response says, kept in its extensions for the `/api` JSON layer.
#[derive(Clone, Debug)]
pub struct PublicError {
    pub message: String,
    pub fields: Option<FieldErrors>,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Invalid(_) | Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn public(&self) -> PublicError {
        match self {
            Error::Internal(e) => {
                let reference = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
                tracing::error!(error = format!("{e:#}"), reference, "request failed");
                PublicError { message: format!("internal error (reference {reference}); the control plane's log has the details"), fields: None }
            }
            Error::Invalid(f) => PublicError { message: self.to_string(), fields: Some(f.clone()) },
            other => PublicError { message: other.to_string(), fields: None },
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let public = self.public();
        let mut text = escape(&public.message);
        for (k, v) in public.fields.iter().flatten() {
            text.push_str(&format!("<br>{}: {}", escape(k), escape(v)));
        }
        let body = format!("<!doctype html><title>{0}</title><h1>{0}</h1><p>{1}</p>", status, text);
        let mut r = (status, Html(body)).into_response();
        if let Error::TooMany { retry_after, .. } = self {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
        }
        r.extensions_mut().insert(public);
        r
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// Under `/api`: every error response becomes JSON, whoever produced it.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let public = match parts.extensions.remove::<PublicError>() {
        Some(p) => p,
        None => {
            // axum's own rejections (bad JSON, bad path parameter, wrong method) say what
            // is wrong with the request in plain text; keep that text.
            let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes).trim().to_owned();
            PublicError { message: if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text }, fields: None }
        }
    };
    let mut v = json!({"error": public.message});
    if let Some(f) = public.fields {
        v["errors"] = json!(f);
    }
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_hide_their_cause() {
        let e = Error::from(anyhow::anyhow!("relation \"secret_table\" does not exist at character 15"));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let public = r.extensions().get::<PublicError>().unwrap().clone();
        assert!(public.message.starts_with("internal error (reference "), "{}", public.message);
        let body = axum::body::to_bytes(r.into_body(), 10_000).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(!body.contains("secret_table") && !body.contains("character 15"), "{body}");
    }

    #[tokio::test]
    async fn client_errors_say_what_is_wrong_and_escape_it() {
        let r = Error::BadRequest("<b>bad</b>".into()).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = String::from_utf8_lossy(&axum::body::to_bytes(r.into_body(), 10_000).await.unwrap()).into_owned();
        assert!(body.contains("&lt;b&gt;bad&lt;/b&gt;") && !body.contains("<b>bad"), "{body}");
        let r = Error::TooMany { message: "slow down".into(), retry_after: 7 }.into_response();
        assert_eq!((r.status().as_u16(), r.headers()[header::RETRY_AFTER].to_str().unwrap()), (429, "7"));
    }
}
