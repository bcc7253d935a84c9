//! Dashboard pages (askama). Handlers build view models from rows; templates only loop
//! and print (escaped by askama; `|safe` is never used on user or node data).
//! `environment` is the environment page and its forms, `live` its polled status and node
//! table, `dialog` the add-on dialog, `link` the cross-environment table, `changes` the
//! recent changes, `conflicts` the conflict center, `checks` verify and repair results,
//! `charts` the SVG pictures, `nodes` a node's log view, `tokens` the API tokens page,
//! `versions` the kept versions and restores (and the held mass deletes' decisions).

pub mod changes;
pub mod charts;
pub mod checks;
pub mod conflicts;
pub mod dialog;
pub mod environment;
pub mod link;
pub mod live;
pub mod nodes;
pub mod tokens;
pub mod versions;

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::auth::CurrentUser;
use super::{Error, not_found, render};
use crate::control::AppState;
use crate::control::db;
use crate::control::ops::{self, FieldErrors, Outcome};

/// "3 s ago" for the dashboard (templates do no formatting logic).
pub fn ago(t: Option<time::OffsetDateTime>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
            if s < 120 {
                format!("{s} s ago")
            } else if s < 7200 {
                format!("{} min ago", s / 60)
            } else {
                format!("{} h ago", s / 3600)
            }
        }
    }
}

/// A date and time to the minute, UTC.
pub fn when(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC).format(&f).unwrap_or_default()
}

/// "12.0 MiB" (the status function's wording, so pages and headlines agree).
pub fn human_bytes(b: u64) -> String {
    crate::control::health::bytes(b)
}

pub struct EnvView {
    pub id: Uuid,
    pub name: String,
    pub webroot: String,
    /// The sync state (`health::SyncState`) in words and as a class, and its sentence.
    pub state: String,
    pub state_class: String,
    pub headline: String,
    pub nodes: usize,
}

#[derive(askama::Template)]
#[template(path = "environments/list.html")]
pub struct EnvironmentListPage {
    pub user: CurrentUser,
    pub envs: Vec<EnvView>,
    pub errors: FieldErrors,
    pub public_key: String,
    /// The new-environment form as typed (after a refusal) or its defaults.
    pub name: String,
    pub webroot: String,
}

impl EnvironmentListPage {
    fn err(&self, f: &str) -> String {
        self.errors.get(f).cloned().unwrap_or_default()
    }
}

pub async fn environments_list(State(st): State<AppState>, user: CurrentUser) -> Result<Response, Error> {
    list_page(&st, user, FieldErrors::new(), String::new(), "/var/www/webroot".into()).await
}

async fn list_page(st: &AppState, user: CurrentUser, errors: FieldErrors, name: String, webroot: String) -> Result<Response, Error> {
    let mut envs = Vec::new();
    for e in db::environments::list(&st.pool).await? {
        let Some(s) = ops::status::load(st, e.environment_id).await? else { continue };
        envs.push(EnvView {
            id: e.environment_id,
            name: e.name,
            webroot: e.webroot,
            state: s.sync.state.as_str().into(),
            state_class: s.sync.state.class(),
            headline: s.sync.headline,
            nodes: s.nodes.len(),
        });
    }
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut r = render(&EnvironmentListPage { user, envs, errors, public_key: st.ssh_public_key.clone(), name, webroot })?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn environment_create(State(st): State<AppState>, user: CurrentUser, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    match ops::environments::create(&st, get("name"), get("webroot")).await? {
        Outcome::Done(id) => Ok(Redirect::to(&format!("/environments/{id}")).into_response()),
        Outcome::Invalid(e) => list_page(&st, user, e, get("name").to_owned(), get("webroot").to_owned()).await,
    }
}

#[derive(askama::Template)]
#[template(path = "environments/checks.html")]
pub struct ChecksFragment {
    pub checks: Vec<checks::CheckView>,
}

/// The verify and repair results, polled by the environment page while a run is going.
pub async fn checks_fragment(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let checks = db::checks::recent(&st.pool, id, 3).await?.into_iter().map(checks::view).collect();
    render(&ChecksFragment { checks })
}

#[derive(askama::Template)]
#[template(path = "environments/path_test.html")]
pub struct PathTestFragment {
    pub synced: bool,
    pub message: String,
}

/// "Would this path be synced?" for the install dialog: inside the sync path (the stored
/// one, or the one typed in the dialog), and not excluded by the agents' own rules (asked
/// of an agent when one answers).
pub async fn path_test(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Error> {
    let s = ops::status::load(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    let sync_path = q.get("sync_path").filter(|p| !p.trim().is_empty()).cloned().or_else(|| s.inst.as_ref().map(|i| i.sync_path.clone())).unwrap_or_else(|| "ROOT".into());
    let asked = q.get("path").map(|p| p.trim().trim_start_matches('/').to_owned()).unwrap_or_default();
    let (synced, message) = match ops::path_test::test(&st, &s, &sync_path, &asked).await {
        Ok((synced, message)) => (synced, message),
        Err(e) => (false, e),
    };
    render(&PathTestFragment { synced, message })
}
