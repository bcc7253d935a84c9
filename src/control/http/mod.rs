//! HTTP: the server-rendered dashboard (askama, behind login, CSRF token on every form)
//! and the JSON API under `/api/v1` (bearer API tokens). Both call the same `actions`.

pub mod actions;
pub mod api;
pub mod auth;
pub mod pages;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use super::AppState;

/// Embedded so the release stays one file; include_str! over rust-embed because it is one
/// small file and needs no extra crate.
const APP_JS: &str = include_str!("../../../static/app.js");
const APP_CSS: &str = include_str!("../../../static/app.css");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout))
        .route("/", get(pages::environments_list))
        .route("/environments", post(pages::environment_create))
        .route("/environments/{id}", get(pages::environment_show))
        .route("/environments/{id}/jobs", get(pages::environment_jobs_fragment))
        .route("/environments/{id}/nodes", post(pages::node_add))
        .route("/environments/{id}/install", post(pages::install_submit))
        .route("/environments/{id}/uninstall", post(pages::uninstall_submit))
        .route("/environments/{id}/pause", post(pages::pause_submit))
        .route("/environments/{id}/join-tokens", post(pages::join_token_create))
        .route("/join-tokens/{id}/revoke", post(pages::join_token_revoke))
        .route("/environments/{id}/resume", post(pages::resume_submit))
        .route("/nodes/{id}/remove", post(pages::node_remove))
        .route("/nodes/{id}/forget-host-key", post(pages::node_forget_key))
        .route("/nodes/{id}/logs", get(pages::node_logs))
        .route("/nodes/{id}/logs/live", get(pages::node_logs_fragment))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], APP_JS) }))
        .route("/static/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css")], APP_CSS) }))
        .nest("/api/v1", api::router())
        .with_state(state)
}

/// Errors of handlers: a status and a message (HTML-escaped by the page, JSON for the API).
#[derive(Debug)]
pub struct Error(pub StatusCode, pub String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        tracing::error!(error = %e, "request failed");
        Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = format!("<!doctype html><title>{0}</title><h1>{0}</h1><p>{1}</p>", self.0, escape(&self.1));
        (self.0, Html(body)).into_response()
    }
}

pub fn not_found(what: &str) -> Error {
    Error(StatusCode::NOT_FOUND, format!("{what} not found"))
}

/// askama ≥ 0.13 has no axum integration: render to `Html`, or a 500 on a template error.
pub fn render<T: askama::Template>(t: &T) -> Result<Response, Error> {
    Ok(Html(t.render().map_err(|e| Error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?).into_response())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

/// "3 s ago" for the dashboard (templates do no formatting logic).
pub fn ago(t: Option<time::OffsetDateTime>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
            if s < 120 { format!("{s} s ago") } else if s < 7200 { format!("{} min ago", s / 60) } else { format!("{} h ago", s / 3600) }
        }
    }
}
