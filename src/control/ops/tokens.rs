//! Tokens: API tokens (bearer credentials for the JSON API, with an expiry, listed and
//! revocable) and environment join tokens (what a cloned node enrolls with: short-lived,
//! counted uses). Both are random, shown once, and stored as sha256 hashes.

use base64::Engine;
use sha2::Digest;
use uuid::Uuid;

use super::{Outcome, invalid};
use crate::control::AppState;
use crate::control::db;

pub const API_TOKEN_DAYS_DEFAULT: i32 = 30;
pub const API_TOKEN_DAYS_MAX: i32 = 365;
pub const JOIN_TOKEN_HOURS_DEFAULT: i32 = 1;
pub const JOIN_TOKEN_HOURS_MAX: i32 = 24;
pub const JOIN_TOKEN_USES_MAX: i32 = 100;

pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::fill(&mut b[..]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

pub fn token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A label typed by a client: at most 100 characters, no control characters.
fn check_label(name: &str, default: &str) -> Result<String, String> {
    let name = if name.trim().is_empty() { default } else { name.trim() };
    if name.chars().count() > 100 {
        return Err("at most 100 characters".into());
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(name.to_owned())
}

/// A new API token for `user`, valid `valid_days`: the token (shown once) and its row.
pub async fn create_api_token(st: &AppState, user: Uuid, name: &str, valid_days: Option<i32>) -> anyhow::Result<Outcome<(String, db::users::ApiTokenRow)>> {
    let name = match check_label(name, "api") {
        Ok(n) => n,
        Err(e) => return invalid("name", e),
    };
    let days = valid_days.unwrap_or(API_TOKEN_DAYS_DEFAULT);
    if !(1..=API_TOKEN_DAYS_MAX).contains(&days) {
        return invalid("valid_days", format!("a whole number of days from 1 to {API_TOKEN_DAYS_MAX}"));
    }
    let token = format!("fsa_{}", random_token(32));
    let row = db::users::create_token(&st.pool, &token_hash(&token), user, &name, days).await?;
    Ok(Outcome::Done((token, row)))
}

/// A new join token for the environment: the token (shown once) and its row.
pub async fn create_join_token(st: &AppState, env: Uuid, name: &str, valid_hours: Option<i32>, max_uses: Option<i32>) -> anyhow::Result<Outcome<(String, db::join_tokens::JoinTokenRow)>> {
    let name = match check_label(name, "join token") {
        Ok(n) => n,
        Err(e) => return invalid("name", e),
    };
    let hours = valid_hours.unwrap_or(JOIN_TOKEN_HOURS_DEFAULT);
    if !(1..=JOIN_TOKEN_HOURS_MAX).contains(&hours) {
        return invalid("valid_hours", format!("a whole number of hours from 1 to {JOIN_TOKEN_HOURS_MAX}"));
    }
    let uses = max_uses.unwrap_or(1);
    if !(1..=JOIN_TOKEN_USES_MAX).contains(&uses) {
        return invalid("max_uses", format!("a whole number of clones from 1 to {JOIN_TOKEN_USES_MAX}"));
    }
    let token = format!("fsj_{}", random_token(24));
    let row = db::join_tokens::create(&st.pool, env, &name, &token_hash(&token), hours, uses).await?;
    db::add_event(&st.pool, Some(env), &format!("join token {name:?} created: valid until {} UTC, for {uses} clone(s)", row.expires_at.replace_nanosecond(0).unwrap_or(row.expires_at))).await?;
    Ok(Outcome::Done((token, row)))
}

/// Revokes a join token; its environment, or None if there is no such token.
pub async fn revoke_join_token(st: &AppState, id: Uuid) -> anyhow::Result<Option<Uuid>> {
    let env = db::join_tokens::revoke(&st.pool, id).await?;
    if let Some(env) = env {
        db::add_event(&st.pool, Some(env), "a join token was revoked").await?;
    }
    Ok(env)
}

/// An optional whole number from a form or JSON field; Err (the message for the field)
/// when present but not a number.
pub fn parse_int(v: Option<&String>) -> Result<Option<i32>, String> {
    match v.map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| format!("{s:?} is not a whole number")),
    }
}
