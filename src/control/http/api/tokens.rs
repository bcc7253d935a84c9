//! Credentials over the API: API tokens (`POST /tokens` with a user name and password,
//! throttled like the login form; list and revoke with a token) and environment join
//! tokens, and the enrollment of cloned nodes with a join token.

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{ApiResult, fields, outcome};
use crate::control::AppState;
use crate::control::db;
use crate::control::http::auth::ApiUser;
use crate::control::http::{Error, limiter, not_found};
use crate::control::ops::{self, Outcome, tokens::parse_int};

#[derive(Deserialize)]
pub struct NewToken {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    valid_days: Option<i32>,
}

pub async fn create(State(st): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Json(b): Json<NewToken>) -> ApiResult {
    let Some(uid) = limiter::check_login(&st, peer.ip(), &b.username, &b.password).await? else {
        return Err(Error::Unauthorized("wrong user name or password".into()));
    };
    match ops::tokens::create_api_token(&st, uid, &b.name, b.valid_days).await? {
        Outcome::Done((token, row)) => Ok((StatusCode::CREATED, Json(json!({"token": token, "api_token": row, "note": "shown once; store it now"}))).into_response()),
        Outcome::Invalid(e) => Err(Error::Invalid(e)),
    }
}

pub async fn list(State(st): State<AppState>, u: ApiUser) -> ApiResult {
    Ok(Json(db::users::list_tokens(&st.pool, u.user_id).await?).into_response())
}

pub async fn revoke(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    if !db::users::revoke_token(&st.pool, u.user_id, id).await? {
        return Err(not_found("API token"));
    }
    tracing::warn!(user = u.username, token = %id, "API token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn list_join(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok(Json(db::join_tokens::list(&st.pool, id).await?).into_response())
}

pub async fn create_join(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<serde_json::Value>) -> ApiResult {
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let f = fields(&b);
    let number = |k: &str| parse_int(f.get(k)).map_err(|e| Error::Invalid([(k.to_owned(), e)].into_iter().collect()));
    let (hours, uses) = (number("valid_hours")?, number("max_uses")?);
    match ops::tokens::create_join_token(&st, id, f.get("name").map(String::as_str).unwrap_or(""), hours, uses).await? {
        Outcome::Done((token, row)) => Ok((StatusCode::CREATED, Json(json!({"token": token, "join_token": row, "note": "shown once; give it to the platform's clone hook"}))).into_response()),
        Outcome::Invalid(e) => outcome::<()>(Outcome::Invalid(e), StatusCode::OK),
    }
}

pub async fn revoke_join(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    ops::tokens::revoke_join_token(&st, id).await?.ok_or_else(|| not_found("join token"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A cloned node's agent enrolling itself with a join token (no API token: the join token
/// is the credential). 403 with the reason when the token does not allow it.
pub async fn enroll(State(st): State<AppState>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Json(r): Json<ops::enroll::EnrollRequest>) -> Result<Response, Error> {
    match ops::enroll::enroll(&st, &r).await? {
        Ok(done) => Ok((StatusCode::CREATED, Json(done)).into_response()),
        Err(ops::enroll::Refusal::Refused(why)) => {
            tracing::warn!(client = %peer, address = %r.address, clone_of = %r.clone_of, "enrollment refused: {why}");
            // Slows down guessing; tokens carry 192 random bits anyway.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            Err(Error::Forbidden(why))
        }
        Err(ops::enroll::Refusal::Invalid(why)) => {
            tracing::warn!(client = %peer, address = %r.address, clone_of = %r.clone_of, "enrollment refused: {why}");
            Err(Error::Unprocessable(why))
        }
    }
}
