//! The Versions page of an environment: what the agents keep of files other nodes' changes
//! replaced or deleted (merged across nodes, filtered by path, deleted only and time),
//! each node's totals, and restores: one version, or a folder / everything deleted in a
//! time window, each carried out by one agent (every node follows), with what the agent
//! answered (a file changed since is restored beside it, never overwritten unless asked).
//! Also the confirm and reject forms of a held mass delete (shown on the environment page).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::human_bytes;
use crate::control::AppState;
use crate::control::agent_api::{RestoreRequest, VersionQuery};
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::ops::{self, FieldErrors};
use crate::control::safety::SafetySettings;

/// At most this many versions per node on the page (the API can ask for more).
const PAGE_LIMIT: usize = 500;

pub struct VersionRowView {
    pub path: String,
    pub kept_at: String,
    pub size: String,
    pub cause: String,
    pub cause_class: String,
    pub by: String,
    pub on_nodes: String,
    pub settled: bool,
    /// The node and id a restore of this row uses.
    pub node: String,
    pub id: u64,
}

pub struct NodeTotalsView {
    pub node: String,
    pub count: String,
    pub bytes: String,
    pub cap: String,
    pub state: String,
}

#[derive(askama::Template)]
#[template(path = "environments/versions.html")]
pub struct VersionsPage {
    pub user: CurrentUser,
    pub env_id: Uuid,
    pub env_name: String,
    pub settings: String,
    pub rows: Vec<VersionRowView>,
    pub nodes: Vec<NodeTotalsView>,
    pub node_names: Vec<String>,
    pub unreachable: Vec<String>,
    pub truncated: bool,
    /// The filter as typed.
    pub f_path: String,
    pub f_deleted: bool,
    pub f_from: String,
    pub f_to: String,
    pub errors: FieldErrors,
    /// What the last restore did: (ok, line).
    pub results: Vec<(bool, String)>,
}

impl VersionsPage {
    fn err(&self, f: &str) -> String {
        self.errors.get(f).cloned().unwrap_or_default()
    }
}

/// "2026-11-30 10:15:07 UTC".
fn when_secs(t: i64) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(t).ok().and_then(|t| t.format(&f).ok()).unwrap_or_default()
}

async fn page(st: &AppState, user: CurrentUser, id: Uuid, filter: &HashMap<String, String>, results: Vec<(bool, String)>) -> Result<Response, Error> {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, id).await?;
    let settings = db::environments::installation(&st.pool, layer).await?.map(|i| SafetySettings::from_stored(&i.settings).words()).unwrap_or_else(|| "not installed".into());
    let (q, errors) = match ops::versions::query(filter) {
        Ok(q) => (q, FieldErrors::new()),
        Err(e) => (VersionQuery::default(), e),
    };
    let q = VersionQuery { limit: q.limit.or(Some(PAGE_LIMIT)), ..q };
    let view = if errors.is_empty() { ops::versions::list(st, id, &q).await?.unwrap_or_default() } else { Default::default() };
    let rows = view
        .versions
        .iter()
        .map(|v| VersionRowView {
            path: v.path.clone(),
            kept_at: when_secs(v.kept_at),
            size: human_bytes(v.size),
            cause: v.cause.word().to_owned(),
            cause_class: format!("{:?}", v.cause).to_lowercase(),
            by: v.by.clone(),
            on_nodes: v.holders.iter().map(|h| h.node.as_str()).collect::<Vec<_>>().join(", "),
            settled: v.settled,
            node: v.holders[0].node.clone(),
            id: v.holders[0].id,
        })
        .collect();
    let nodes: Vec<NodeTotalsView> = view
        .nodes
        .iter()
        .map(|n| {
            let s = &n.summary;
            NodeTotalsView {
                node: n.node.clone(),
                count: s.count.to_string(),
                bytes: human_bytes(s.bytes),
                cap: if s.enabled { human_bytes(s.cap_bytes) } else { "-".into() },
                state: match (&s.stopped, s.enabled, s.keeping) {
                    (Some(why), _, _) => format!("not keeping new versions: {why}"),
                    (None, false, _) => "versions off".into(),
                    (None, true, false) => "not keeping new versions".into(),
                    (None, true, true) => "keeping".into(),
                },
            }
        })
        .collect();
    let get = |k: &str| filter.get(k).cloned().unwrap_or_default();
    render(&VersionsPage {
        user,
        env_id: id,
        env_name: env.name,
        settings,
        rows,
        node_names: nodes.iter().map(|n| n.node.clone()).collect(),
        truncated: view.nodes.iter().any(|n| n.truncated),
        nodes,
        unreachable: view.unreachable,
        f_path: get("path"),
        f_deleted: filter.get("deleted").is_some_and(|d| !d.is_empty()),
        f_from: get("from"),
        f_to: get("to"),
        errors,
        results,
    })
}

pub async fn show(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Error> {
    page(&st, user, id, &q, Vec::new()).await
}

/// A restore from the page: one version (`node` and `id`), or everything deleted under
/// `path` (between `deleted_from` and `deleted_to` when given). `f_*` carry the filter back.
pub async fn restore(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let filter: HashMap<String, String> = f.iter().filter_map(|(k, v)| Some((k.strip_prefix("f_")?.to_owned(), v.clone()))).collect();
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    let mut errors = Vec::new();
    let mut time = |k: &str| match ops::versions::parse_time(k, get(k)) {
        Ok(t) => t,
        Err(e) => {
            errors.push((false, e));
            None
        }
    };
    let (deleted_from, deleted_to) = (time("deleted_from"), time("deleted_to"));
    let version = match get("id") {
        "" => None,
        v => match v.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push((false, format!("{v:?} is not a version id")));
                None
            }
        },
    };
    if !errors.is_empty() {
        return page(&st, user, id, &filter, errors).await;
    }
    let req = RestoreRequest { path: get("path").trim_matches('/').to_owned(), id: version, deleted_from, deleted_to, replace: !get("replace").is_empty(), ..RestoreRequest::default() };
    let what = ops::versions::describe(&req);
    let results = match ops::versions::restore(&st, id, &req, Some(get("node")).filter(|n| !n.is_empty()), &user.username).await?.ok_or_else(|| not_found("environment"))? {
        Err(why) => vec![(false, format!("Restore of {what} not done: {why}"))],
        Ok(done) => {
            let r = &done.response;
            let mut lines = vec![(!r.restored.is_empty(), format!("{} (done by {})", r.message, done.node))];
            for x in &r.restored {
                lines.push((
                    true,
                    if x.written_to == x.path {
                        format!("{} restored{}", x.path, if x.replaced { " (what was there is kept as a version)" } else { "" })
                    } else {
                        format!("{} was changed or recreated since: nothing was overwritten, the version was written beside it as {}", x.path, x.written_to)
                    },
                ));
            }
            for x in &r.skipped {
                lines.push((false, format!("{}: not restored: {}", x.path, x.reason)));
            }
            lines
        }
    };
    page(&st, user, id, &filter, results).await
}

pub async fn back(Path(id): Path<Uuid>) -> Response {
    Redirect::to(&format!("/environments/{id}/versions")).into_response()
}

/// Confirm or reject a held mass delete (`from`), then back to the environment page, which
/// says so; each node's answer is in the events.
pub async fn hold(State(st): State<AppState>, user: CurrentUser, Path((id, verb)): Path<(Uuid, String)>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let confirm = match verb.as_str() {
        "confirm" => true,
        "reject" => false,
        _ => return Err(not_found("page")),
    };
    let from = f.get("from").map(|s| s.trim()).unwrap_or("");
    if from.is_empty() {
        return Err(Error::BadRequest("name the node whose deletions are held".into()));
    }
    let out = ops::holds::decide_hold(&st, id, from, confirm, &user.username).await?.ok_or_else(|| not_found("environment"))?.map_err(Error::Unprocessable)?;
    let ok = out.iter().any(|o| o.done);
    let done = match (confirm, ok) {
        (true, true) => "hold-confirmed",
        (false, true) => "hold-rejected",
        _ => "hold-failed",
    };
    Ok(Redirect::to(&format!("/environments/{id}?done={done}#holds")).into_response())
}

pub async fn hold_back(Path((id, _)): Path<(Uuid, String)>) -> Response {
    Redirect::to(&format!("/environments/{id}")).into_response()
}
