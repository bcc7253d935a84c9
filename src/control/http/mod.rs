//! HTTP: the server-rendered dashboard (askama, behind login, CSRF token on every form)
//! and the JSON API under `/api/v1` (bearer API tokens). Both call the same `ops`.
//! Every response carries the security headers of [`security_headers`]; every error is
//! one [`Error`] (JSON under `/api`).

pub mod api;
pub mod auth;
pub mod error;
pub mod limiter;
pub mod pages;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

pub use error::{Error, not_found};

use super::AppState;

/// Embedded so the release stays one file; include_str! over rust-embed because it is two
/// small files and needs no extra crate.
const APP_JS: &str = include_str!("../../../static/app.js");
const APP_CSS: &str = include_str!("../../../static/app.css");

/// Scripts and styles only from the dashboard itself (there is no inline script or
/// style), no framing (one-click buttons cannot be clickjacked), forms only to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AppState) -> Router {
    use pages::{environment as env, nodes, tokens};
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout))
        .route("/", get(pages::environments_list))
        .route("/environments", post(pages::environment_create))
        .route("/environments/{id}", get(env::show))
        .route("/environments/{id}/jobs", get(env::jobs))
        .route("/environments/{id}/nodes", post(env::node_add))
        .route("/environments/{id}/install", post(env::install))
        .route("/environments/{id}/uninstall", post(env::uninstall))
        .route("/environments/{id}/pause", post(env::pause))
        .route("/environments/{id}/resume", post(env::resume))
        .route("/environments/{id}/join-tokens", post(env::join_token_create))
        .route("/join-tokens/{id}/revoke", post(env::join_token_revoke))
        .route("/nodes/{id}/remove", post(env::node_remove))
        .route("/nodes/{id}/forget-host-key", post(env::node_forget_key))
        .route("/nodes/{id}/logs", get(nodes::logs))
        .route("/nodes/{id}/logs/live", get(nodes::logs_fragment))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}/revoke", post(tokens::revoke))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
        .route("/static/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }))
        .nest("/api/v1", api::router().layer(middleware::from_fn(error::json_errors)))
        .fallback(|| async { not_found("page") })
        .layer(middleware::from_fn_with_state(state.clone(), security_headers))
        .with_state(state)
}

/// Headers on every response: CSP with `frame-ancestors 'none'` (and the older
/// X-Frame-Options), `nosniff`, no referrer, no caching of pages, and HSTS under TLS.
async fn security_headers(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let mut set = |k: HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(header::CONTENT_SECURITY_POLICY, CSP);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    set(HeaderName::from_static("cross-origin-opener-policy"), "same-origin");
    if st.tls {
        set(header::STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// askama ≥ 0.13 has no axum integration: render to `Html`, or a 500 on a template error.
pub fn render<T: askama::Template>(t: &T) -> Result<Response, Error> {
    Ok(Html(t.render()?).into_response())
}
