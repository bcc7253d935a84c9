//! The API tokens page: the logged-in user's tokens (name, created, expires, last used,
//! state), a form to create one (shown once) and Revoke buttons.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::{ago, when};
use crate::control::AppState;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::ops::{self, FieldErrors, Outcome, tokens::parse_int};

pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub created: String,
    pub expires: String,
    pub last_used: String,
    pub state: String,
}

#[derive(askama::Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub user: CurrentUser,
    pub tokens: Vec<TokenView>,
    pub new_token: String,
    pub errors: FieldErrors,
    pub default_days: i32,
    pub max_days: i32,
}

impl TokensPage {
    fn err(&self, f: &str) -> String {
        self.errors.get(f).cloned().unwrap_or_default()
    }
}

async fn page(st: &AppState, user: CurrentUser, new_token: String, errors: FieldErrors) -> Result<Response, Error> {
    let now = time::OffsetDateTime::now_utc();
    let tokens = db::users::list_tokens(&st.pool, user.user_id)
        .await?
        .into_iter()
        .map(|t| TokenView {
            id: t.api_token_id,
            name: t.name,
            created: when(t.created_at),
            expires: when(t.expires_at),
            last_used: ago(t.last_used_at),
            state: if t.revoked_at.is_some() {
                "revoked".into()
            } else if t.expires_at < now {
                "expired".into()
            } else {
                "valid".into()
            },
        })
        .collect();
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut r = render(&TokensPage { user, tokens, new_token, errors, default_days: ops::tokens::API_TOKEN_DAYS_DEFAULT, max_days: ops::tokens::API_TOKEN_DAYS_MAX })?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn list(State(st): State<AppState>, user: CurrentUser) -> Result<Response, Error> {
    page(&st, user, String::new(), FieldErrors::new()).await
}

pub async fn create(State(st): State<AppState>, user: CurrentUser, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let days = match parse_int(f.get("valid_days")) {
        Ok(d) => d,
        Err(e) => return page(&st, user, String::new(), [("valid_days".to_owned(), e)].into_iter().collect()).await,
    };
    match ops::tokens::create_api_token(&st, user.user_id, f.get("name").map(String::as_str).unwrap_or(""), days).await? {
        Outcome::Done((token, _)) => page(&st, user, token, FieldErrors::new()).await,
        Outcome::Invalid(e) => page(&st, user, String::new(), e).await,
    }
}

pub async fn revoke(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    if !db::users::revoke_token(&st.pool, user.user_id, id).await? {
        return Err(not_found("API token"));
    }
    Ok(Redirect::to("/tokens").into_response())
}
