//! HTTP: the server-rendered dashboard (askama, behind login, CSRF token on every form)
//! and the JSON API under `/api/v1` (bearer API tokens). Both call the same `ops`.
//! Every response carries the security headers of [`security_headers`]; every error is
//! one [`Error`] (JSON under `/api`).

pub mod api;
pub mod auth;
pub mod error;
pub mod limiter;
pub mod pages;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

pub use error::{Error, not_found};

use super::AppState;

/// Embedded so the release stays one file; include_str! over rust-embed because it is two
/// small files and needs no extra crate.
const APP_JS: &str = include_str!("../../../static/app.js");
const APP_CSS: &str = include_str!("../../../static/app.css");
const FAVICON: &str = include_str!("../../../static/favicon.svg");

/// Scripts and styles only from the dashboard itself (there is no inline script or
/// style), no framing (one-click buttons cannot be clickjacked), forms only to itself.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router(state: AppState) -> Router {
    use pages::{changes, conflicts, environment as env, live, nodes, tokens, versions};
    // Every form's URL also answers GET (a reload of a page a refused form rendered) by
    // going back to the page, instead of 405.
    Router::new()
        .route("/login", get(auth::login_page).post(auth::login_submit))
        .route("/logout", post(auth::logout).get(|| async { Redirect::to("/") }))
        .route("/", get(pages::environments_list))
        .route("/environments", post(pages::environment_create).get(|| async { Redirect::to("/") }))
        .route("/environments/{id}", get(env::show))
        .route("/environments/{id}/live", get(live::live))
        .route("/environments/{id}/jobs", get(env::jobs))
        .route("/environments/{id}/checks", get(pages::checks_fragment))
        .route("/environments/{id}/path-test", get(pages::path_test))
        .route("/environments/{id}/changes", get(changes::environment))
        .route("/environments/{id}/conflicts", get(conflicts::show).post(conflicts::resolve))
        .route("/environments/{id}/versions", get(versions::show))
        .route("/environments/{id}/versions/restore", post(versions::restore).get(versions::back))
        .route("/environments/{id}/holds/{verb}", post(versions::hold).get(versions::hold_back))
        .route("/environments/{id}/nodes", post(env::node_add).get(env::back_to_page))
        .route("/environments/{id}/install", post(env::install).get(env::back_to_page))
        .route("/environments/{id}/uninstall", post(env::uninstall).get(env::back_to_page))
        .route("/environments/{id}/pause", post(env::pause).get(env::back_to_page))
        .route("/environments/{id}/resume", post(env::resume).get(env::back_to_page))
        .route("/environments/{id}/verify", post(env::verify).get(env::back_to_page))
        .route("/environments/{id}/repair", post(env::repair).get(env::back_to_page))
        .route("/environments/{id}/join-tokens", post(env::join_token_create).get(env::back_to_page))
        .route("/join-tokens/{id}/revoke", post(env::join_token_revoke))
        .route("/nodes/{id}/remove", post(env::node_remove).get(env::node_back))
        .route("/nodes/{id}/forget-host-key", post(env::node_forget_key).get(env::node_back))
        .route("/nodes/{id}/retry", post(env::node_retry).get(env::node_back))
        .route("/nodes/{id}/changes", get(changes::node))
        .route("/nodes/{id}/logs", get(nodes::logs))
        .route("/nodes/{id}/logs/live", get(nodes::logs_fragment))
        .route("/nodes/{id}/logs/download", get(nodes::download))
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}/revoke", post(tokens::revoke))
        .route("/static/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
        .route("/static/app.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }))
        .route("/static/favicon.svg", get(|| async { ([(header::CONTENT_TYPE, "image/svg+xml"), (header::CACHE_CONTROL, "max-age=86400")], FAVICON) }))
        .route("/favicon.ico", get(|| async { Redirect::permanent("/static/favicon.svg") }))
        .nest("/api/v1", api::router().layer(middleware::from_fn(error::json_errors)))
        .fallback(|| async { not_found("page") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(middleware::from_fn(error::html_errors))
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
