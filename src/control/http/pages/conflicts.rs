//! The conflict center: every conflict copy in the environment (asked of the agents), with
//! the path, the time of the losing version, which node lost, sizes and which nodes hold
//! it, and the actions per copy and for the selected ones: keep the winner (delete the
//! copy), restore the copy as the file, keep both under a chosen name. An agent carries
//! each out as a local change, so every node follows.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use uuid::Uuid;

use super::human_bytes;
use crate::control::AppState;
use crate::control::agent_api::ResolveAction;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::ops;

pub struct ConflictRowView {
    pub copy: String,
    /// The copy's path as the forms send it: hex of its bytes, so a name holding a newline
    /// (sent as CRLF by browsers) or any other character comes back exactly as it is.
    pub key: String,
    pub original: String,
    pub loser: String,
    pub time: String,
    pub copy_size: String,
    pub winner: String,
    pub on_nodes: String,
    pub keep_name: String,
}

#[derive(askama::Template)]
#[template(path = "environments/conflicts.html")]
pub struct ConflictsPage {
    pub user: CurrentUser,
    pub env_id: Uuid,
    pub env_name: String,
    pub conflicts: Vec<ConflictRowView>,
    pub unreachable: Vec<String>,
    /// What the last action did, one line per copy.
    pub results: Vec<(bool, String)>,
}

fn when_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t).map(super::when).unwrap_or_default()
}

async fn page(st: &AppState, user: CurrentUser, id: Uuid, results: Vec<(bool, String)>) -> Result<Response, Error> {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let list = ops::conflicts::list(st, id).await?.unwrap_or_default();
    let conflicts = list
        .conflicts
        .into_iter()
        .map(|c| ConflictRowView {
            keep_name: ops::conflicts::default_keep_name(&c.copy.path),
            original: c.copy.original.clone().unwrap_or_else(|| "(cannot be told from the name)".into()),
            loser: if c.copy.loser_node.is_empty() { "this node's write that raced a delete".into() } else { c.copy.loser_node.clone() },
            time: when_unix(c.copy.copy_mtime),
            copy_size: human_bytes(c.copy.copy_size),
            winner: match (c.copy.winner_size, c.copy.winner_mtime, &c.copy.winner_by) {
                (Some(s), Some(t), Some(by)) => format!("{} by {by}, {}", human_bytes(s), when_unix(t)),
                (Some(s), _, _) => human_bytes(s),
                _ => "gone".into(),
            },
            on_nodes: c.on_nodes.join(", "),
            key: hex::encode(&c.copy.path),
            copy: c.copy.path,
        })
        .collect();
    render(&ConflictsPage { user, env_id: id, env_name: env.name, conflicts, unreachable: list.unreachable, results })
}

pub async fn show(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Error> {
    let results = match (q.get("done"), q.get("failed")) {
        (Some(d), f) => vec![(true, format!("{d} action(s) done; every node follows within seconds{}", f.map(|f| format!(", {f} refused (see the events)")).unwrap_or_default()))],
        _ => Vec::new(),
    };
    page(&st, user, id, results).await
}

/// `copy` (one or more), `action` and, for keep both, `name` (several checkboxes share the
/// name `copy`, so the form is read as a list of pairs).
pub async fn resolve(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(pairs): Form<Vec<(String, String)>>) -> Result<Response, Error> {
    let form: HashMap<String, String> = pairs.iter().cloned().collect();
    user.check_csrf(&form)?;
    let copies = pairs
        .iter()
        .filter(|(k, _)| k == "copy")
        .map(|(_, v)| {
            hex::decode(v)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| Error::BadRequest("a conflict copy was sent in a form this page did not make (expected the hex of its path)".into()))
        })
        .collect::<Result<Vec<String>, Error>>()?;
    let action = form.get("action").and_then(|a| ResolveAction::parse(a)).ok_or_else(|| Error::BadRequest("choose an action: keep_winner, restore_copy or keep_both".into()))?;
    if copies.is_empty() {
        return page(&st, user, id, vec![(false, "select at least one conflict copy".into())]).await;
    }
    let done = ops::conflicts::resolve(&st, id, &copies, action, form.get("name").map(String::as_str), &user.username).await?.ok_or_else(|| not_found("environment"))?;
    if done.iter().all(|r| r.done) {
        return Ok(Redirect::to(&format!("/environments/{id}/conflicts?done={}", done.len())).into_response());
    }
    let lines = done.into_iter().map(|r| (r.done, if r.done { format!("{} (on {}): {}", r.copy, r.node, r.message) } else { format!("{}: not done: {}", r.copy, r.message) })).collect();
    page(&st, user, id, lines).await
}
