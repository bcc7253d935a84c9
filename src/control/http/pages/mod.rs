//! Dashboard pages (askama). Handlers build view models from rows; templates only loop
//! and print (escaped by askama; `|safe` is never used on user or node data).
//! `environment` is the environment page and its forms, `link` its cross-environment
//! table, `nodes` a node's log view, `tokens` the API tokens page.

pub mod environment;
pub mod link;
pub mod nodes;
pub mod tokens;

use std::collections::HashMap;

use axum::Form;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::auth::CurrentUser;
use super::{Error, render};
use crate::control::AppState;
use crate::control::db;
use crate::control::ops::{self, FieldErrors, Outcome};

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

/// A date and time to the minute, UTC.
pub fn when(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub struct EnvView {
    pub id: Uuid,
    pub name: String,
    pub webroot: String,
}

#[derive(askama::Template)]
#[template(path = "environments/list.html")]
pub struct EnvironmentListPage {
    pub user: CurrentUser,
    pub envs: Vec<EnvView>,
    pub errors: FieldErrors,
    pub public_key: String,
}

impl EnvironmentListPage {
    fn err(&self, f: &str) -> String {
        self.errors.get(f).cloned().unwrap_or_default()
    }
}

pub async fn environments_list(State(st): State<AppState>, user: CurrentUser) -> Result<Response, Error> {
    list_page(&st, user, FieldErrors::new()).await
}

async fn list_page(st: &AppState, user: CurrentUser, errors: FieldErrors) -> Result<Response, Error> {
    let envs = db::environments::list(&st.pool).await?.into_iter().map(|e| EnvView { id: e.environment_id, name: e.name, webroot: e.webroot }).collect();
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut r = render(&EnvironmentListPage { user, envs, errors, public_key: st.ssh_public_key.clone() })?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn environment_create(State(st): State<AppState>, user: CurrentUser, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    match ops::environments::create(&st, get("name"), get("webroot")).await? {
        Outcome::Done(id) => Ok(Redirect::to(&format!("/environments/{id}")).into_response()),
        Outcome::Invalid(e) => list_page(&st, user, e).await,
    }
}
