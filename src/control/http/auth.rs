//! Login, sessions, CSRF and API tokens. Sessions are server-side rows keyed by the
//! sha256 of a random cookie token (HttpOnly, SameSite=Lax; under TLS also `Secure` with
//! the `__Host-` prefix); each session has its own CSRF token that every form must echo
//! (403 otherwise). The login form, before any session, uses a double-submit cookie.
//! Password checks go through `limiter` (hashing gate, backoff per address and user).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::{Error, render};
use crate::control::AppState;
use crate::control::db;
use crate::control::ops::tokens::{random_token, token_hash};

/// The session and login-CSRF cookie names: `__Host-` prefixed under TLS (the browser then
/// only accepts them with `Secure`, `Path=/` and no `Domain`).
fn names(tls: bool) -> (&'static str, &'static str) {
    if tls { ("__Host-filesync_session", "__Host-filesync_login_csrf") } else { ("filesync_session", "filesync_login_csrf") }
}

fn set_cookie(st: &AppState, name: &str, value: &str, extra: &str) -> String {
    let secure = if st.tls { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly{secure}; {extra}")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// A logged-in browser session. Pages without one redirect to /login.
#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub user_id: uuid::Uuid,
    pub username: String,
    pub csrf: String,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(tok) = cookie(&parts.headers, names(st.tls).0) {
            match db::users::session(&st.pool, &token_hash(&tok)).await {
                Ok(Some(s)) => return Ok(CurrentUser { user_id: s.app_user_id, username: s.username, csrf: s.csrf_token }),
                Ok(None) => {}
                Err(e) => return Err(Error::from(e).into_response()),
            }
        }
        // Back to the page asked for after logging in (GETs only: a form's POST cannot be
        // replayed).
        let next = (parts.method == axum::http::Method::GET).then(|| parts.uri.path_and_query().map(|p| p.as_str().to_owned())).flatten().filter(|p| safe_next(p) && p != "/");
        Err(Redirect::to(&match next {
            Some(n) => format!("/login?next={}", crate::control::agent_api::url_encode(&n)),
            None => "/login".to_owned(),
        })
        .into_response())
    }
}

/// A page to return to after logging in: a path on this site only (no `//host`, no
/// backslash, no scheme), so the login form cannot send anyone elsewhere.
pub fn safe_next(p: &str) -> bool {
    p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') && !p.contains("://") && p.len() < 2048 && !p.chars().any(char::is_control)
}

impl CurrentUser {
    /// Every state-changing form carries the session's CSRF token; without it: 403.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), Error> {
        match form.get("csrf") {
            Some(t) if constant_eq(t, &self.csrf) => Ok(()),
            _ => Err(Error::Forbidden("missing or wrong CSRF token: reload the page and try again".into())),
        }
    }
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(askama::Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub csrf: String,
    pub error: Option<String>,
    pub username: String,
    /// Where to go after logging in.
    pub next: String,
}

pub async fn login_page(State(st): State<AppState>, axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>) -> Result<Response, Error> {
    let csrf = random_token(18);
    let next = q.get("next").filter(|n| safe_next(n)).cloned().unwrap_or_default();
    let mut r = render(&LoginPage { csrf: csrf.clone(), error: None, username: String::new(), next })?;
    r.headers_mut().append(header::SET_COOKIE, set_cookie(&st, names(st.tls).1, &csrf, "SameSite=Strict").parse()?);
    Ok(r)
}

pub async fn login_submit(State(st): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    let want = cookie(&headers, names(st.tls).1).unwrap_or_default();
    if want.is_empty() || !f.get("csrf").is_some_and(|c| constant_eq(c, &want)) {
        return Err(Error::Forbidden("missing or wrong CSRF token: reload the login page".into()));
    }
    let username = f.get("username").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let next = f.get("next").filter(|n| safe_next(n)).cloned().unwrap_or_default();
    let refused = |msg: String, status: StatusCode, username: String| -> Result<Response, Error> {
        let mut r = render(&LoginPage { csrf: want.clone(), error: Some(msg), username, next: next.clone() })?;
        *r.status_mut() = status;
        Ok(r)
    };
    let user = match super::limiter::check_login(&st, peer.ip(), &username, &password).await {
        Ok(Some(u)) => u,
        Ok(None) => return refused("Wrong user name or password.".into(), StatusCode::UNAUTHORIZED, username),
        Err(Error::TooMany { message, retry_after }) => {
            let mut r = refused(format!("{}.", capitalize(&message)), StatusCode::TOO_MANY_REQUESTS, username)?;
            r.headers_mut().insert(header::RETRY_AFTER, retry_after.into());
            return Ok(r);
        }
        Err(e) => return Err(e),
    };
    let token = random_token(32);
    db::users::create_session(&st.pool, &token_hash(&token), user, &random_token(24)).await?;
    let mut r = Redirect::to(if next.is_empty() { "/" } else { &next }).into_response();
    r.headers_mut().append(header::SET_COOKIE, set_cookie(&st, names(st.tls).0, &token, "SameSite=Lax; Max-Age=43200").parse()?);
    Ok(r)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

pub async fn logout(State(st): State<AppState>, user: CurrentUser, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    if let Some(tok) = cookie(&headers, names(st.tls).0) {
        db::users::delete_session(&st.pool, &token_hash(&tok)).await?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(header::SET_COOKIE, set_cookie(&st, names(st.tls).0, "", "SameSite=Lax; Max-Age=0").parse()?);
    Ok(r)
}

/// A caller of the JSON API, authenticated by `Authorization: Bearer <token>` (a token
/// that is neither expired nor revoked).
pub struct ApiUser {
    pub user_id: uuid::Uuid,
    pub username: String,
}

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let tok = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if let Some(tok) = tok
            && let Some((user_id, username)) = db::users::token_user(&st.pool, &token_hash(tok)).await?
        {
            return Ok(ApiUser { user_id, username });
        }
        Err(Error::Unauthorized("missing, invalid, expired or revoked API token (Authorization: Bearer <token>)".into()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_pages_of_this_site_are_returned_to_after_login() {
        for ok in ["/environments/x", "/nodes/y/logs?z=1", "/"] {
            assert!(super::safe_next(ok), "{ok}");
        }
        for bad in ["//evil.example/x", "https://evil.example", "/\\evil", "evil", "/a\nb", "/x?u=http://y"] {
            assert!(!super::safe_next(bad), "{bad}");
        }
    }
}
