//! Recent changes: the last file changes with the node each came from, per environment
//! (each change once) and per node (as that node recorded it, with the peer it came
//! through). The agents record them (`agent::report`); the heartbeat keeps them in Postgres.

use axum::extract::{Path, State};
use axum::response::Response;
use uuid::Uuid;

use super::{ago, human_bytes};
use crate::control::AppState;
use crate::control::db::{self, reports::ChangeRow};
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};

/// Rows on the full lists.
const LIST: i64 = 200;

pub struct ChangeView {
    pub when: String,
    pub at: String,
    pub path: String,
    pub kind: String,
    pub entry: String,
    /// The node that made the change.
    pub origin: String,
    /// "made here" or "from node1" (per-node lists).
    pub via: String,
    pub recorded_by: String,
    pub size: String,
    pub from_path: String,
}

pub fn view(r: ChangeRow) -> ChangeView {
    ChangeView {
        when: ago(Some(r.recorded_at)),
        at: super::when(r.recorded_at),
        path: r.path,
        kind: r.kind,
        entry: r.entry,
        origin: r.origin,
        via: match r.via {
            None => "made here".into(),
            Some(v) if v.starts_with('@') => format!("from the other environment ({})", &v[1..]),
            Some(v) => format!("from {v}"),
        },
        recorded_by: r.node_name,
        size: if r.size > 0 { human_bytes(r.size as u64) } else { String::new() },
        from_path: r.from_path.unwrap_or_default(),
    }
}

#[derive(askama::Template)]
#[template(path = "environments/changes.html")]
pub struct ChangesPage {
    pub user: CurrentUser,
    pub env_id: Uuid,
    pub env_name: String,
    /// Set on a node's list.
    pub node: Option<String>,
    pub changes: Vec<ChangeView>,
}

pub async fn environment(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let changes = db::reports::environment_changes(&st.pool, id, LIST).await?.into_iter().map(view).collect();
    render(&ChangesPage { user, env_id: id, env_name: env.name, node: None, changes })
}

pub async fn node(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let env_id = db::nodes::environment_of(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let env = db::environments::get(&st.pool, env_id).await?.ok_or_else(|| not_found("environment"))?;
    let changes = db::reports::node_changes(&st.pool, id, LIST).await?.into_iter().map(view).collect();
    render(&ChangesPage { user, env_id, env_name: env.name, node: Some(node.name), changes })
}
