//! A node's log view: `lsyncd.log` (live) and `lsyncd.status` read over SSH (so they work
//! with the agent down), and the agent's own status over mutual TLS when it answers.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use uuid::Uuid;

use crate::control::AppState;
use crate::control::agent_api::AgentApi;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};

pub struct LogView {
    pub log: String,
    pub status: String,
    pub agent_status: String,
    pub error: String,
}

pub async fn log_view(st: &AppState, node: &db::NodeRow) -> LogView {
    let (log, status, mut error) = match crate::control::jobs::install::read_logs(st, node, 200).await {
        Ok((l, s)) => (l, s, String::new()),
        Err(e) => (String::new(), String::new(), format!("cannot read the log files over SSH: {e}")),
    };
    let mut agent_status = String::new();
    if let Ok(Some(env_id)) = db::nodes::environment_of(&st.pool, node.node_id).await
        && let Ok(Some(env)) = db::environments::get(&st.pool, env_id).await
        && let Ok(client) = crate::control::jobs::install::agent_client(st, &env)
    {
        match AgentApi::new(client, &node.address, node.agent_port).status(Duration::from_secs(3)).await {
            Ok(s) => {
                let _ = db::nodes::record_heartbeat(&st.pool, node.node_id, &s).await;
                agent_status = serde_json::to_string_pretty(&s).unwrap_or_default();
            }
            Err(e) if e.starts_with("no answer") => agent_status = "(the agent does not answer; the files above are read over SSH)".into(),
            Err(e) => agent_status = format!("({e})"),
        }
    }
    if error.is_empty() && log.is_empty() {
        error = "lsyncd.log is empty or missing".into();
    }
    LogView { log, status, agent_status, error }
}

#[derive(askama::Template)]
#[template(path = "nodes/logs.html")]
pub struct NodeLogsPage {
    pub user: CurrentUser,
    pub id: Uuid,
    pub env_id: Uuid,
    pub name: String,
    pub address: String,
    pub view: LogView,
}

#[derive(askama::Template)]
#[template(path = "nodes/logs_live.html")]
pub struct LogsFragment {
    pub view: LogView,
}

pub async fn logs(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let env_id = db::nodes::environment_of(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let view = log_view(&st, &node).await;
    render(&NodeLogsPage { user, id, env_id, name: node.name, address: node.address, view })
}

pub async fn logs_fragment(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    render(&LogsFragment { view: log_view(&st, &node).await })
}
