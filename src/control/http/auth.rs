//! Login, sessions, CSRF and API tokens. Sessions are server-side rows keyed by the
//! sha256 of a random cookie token (HttpOnly, SameSite=Lax); each session has its own CSRF
//! token that every form must echo (403 otherwise). The login form, before any session,
//! uses a double-submit cookie. Passwords are argon2id (hashed off the async runtime).

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::Engine;
use sha2::Digest;

use super::{Error, render};
use crate::control::AppState;
use crate::control::db;

pub const SESSION_COOKIE: &str = "filesync_session";
const LOGIN_CSRF_COOKIE: &str = "filesync_login_csrf";

pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordHasher;
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
    .await?
}

pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::PasswordVerifier;
        argon2::Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Checks a username and password; the user's id when they match.
pub async fn check_login(st: &AppState, username: &str, password: &str) -> Result<Option<uuid::Uuid>, Error> {
    let Some(u) = db::users::by_name(&st.pool, username).await? else {
        // Same work for unknown users, so timing does not reveal which names exist.
        let _ = verify_password(password.to_owned(), "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2lGcSk4vnR0kD1Qy2C8IhqGAb8M6XFaiO9ZYJ4fQ2vM".into()).await;
        return Ok(None);
    };
    Ok(verify_password(password.to_owned(), u.password_hash).await.then_some(u.app_user_id))
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
    pub username: String,
    pub csrf: String,
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(tok) = cookie(&parts.headers, SESSION_COOKIE)
            && let Ok(Some(s)) = db::users::session(&st.pool, &token_hash(&tok)).await
        {
            return Ok(CurrentUser { username: s.username, csrf: s.csrf_token });
        }
        Err(Redirect::to("/login").into_response())
    }
}

impl CurrentUser {
    /// Every state-changing form carries the session's CSRF token; without it: 403.
    pub fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), Error> {
        match form.get("csrf") {
            Some(t) if constant_eq(t, &self.csrf) => Ok(()),
            _ => Err(Error(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the page and try again".into())),
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
}

pub async fn login_page() -> Result<Response, Error> {
    let csrf = random_token(18);
    let mut r = render(&LoginPage { csrf: csrf.clone(), error: None, username: String::new() })?;
    r.headers_mut().append(header::SET_COOKIE, format!("{LOGIN_CSRF_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict").parse()?);
    Ok(r)
}

pub async fn login_submit(State(st): State<AppState>, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    let want = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if want.is_empty() || !f.get("csrf").is_some_and(|c| constant_eq(c, &want)) {
        return Err(Error(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the login page".into()));
    }
    let username = f.get("username").cloned().unwrap_or_default();
    let password = f.get("password").cloned().unwrap_or_default();
    let Some(user) = check_login(&st, &username, &password).await? else {
        let mut r = render(&LoginPage { csrf: want, error: Some("Wrong user name or password.".into()), username })?;
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(r);
    };
    let token = random_token(32);
    db::users::create_session(&st.pool, &token_hash(&token), user, &random_token(24)).await?;
    let mut r = Redirect::to("/").into_response();
    r.headers_mut().append(header::SET_COOKIE, format!("{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age=43200").parse()?);
    Ok(r)
}

pub async fn logout(State(st): State<AppState>, user: CurrentUser, headers: HeaderMap, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    if let Some(tok) = cookie(&headers, SESSION_COOKIE) {
        db::users::delete_session(&st.pool, &token_hash(&tok)).await?;
    }
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(header::SET_COOKIE, format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0").parse()?);
    Ok(r)
}

/// A caller of the JSON API, authenticated by `Authorization: Bearer <token>`.
pub struct ApiUser(pub String);

impl FromRequestParts<AppState> for ApiUser {
    type Rejection = Response;
    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let tok = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        if let Some(tok) = tok
            && let Ok(Some(u)) = db::users::token_user(&st.pool, &token_hash(tok)).await
        {
            return Ok(ApiUser(u));
        }
        Err((StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": "missing or invalid API token (Authorization: Bearer <token>)"}))).into_response())
    }
}
