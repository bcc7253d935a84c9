//! Queuing verify and repair runs (see `control::checks`) and nodes' single-node actions
//! the dashboard and the API share: retry a node's failed job, forget its pinned host key.

use uuid::Uuid;

use crate::control::AppState;
use crate::control::db;
use crate::control::state::JobKind;

/// `verify` or `repair`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Verify,
    Repair,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Verify => "verify",
            CheckKind::Repair => "repair",
        }
    }
}

/// Queues a run (or returns the one already queued); None when there is no such environment.
pub async fn queue(st: &AppState, env: Uuid, kind: CheckKind, by: &str) -> anyhow::Result<Option<Uuid>> {
    if db::environments::get(&st.pool, env).await?.is_none() {
        return Ok(None);
    }
    let id = db::checks::enqueue(&st.pool, env, kind.as_str(), by).await?;
    db::add_event(&st.pool, Some(env), &format!("{} {} queued by {by}", kind.as_str(), &id.simple().to_string()[..8])).await?;
    st.wake_jobs.notify_waiters();
    Ok(Some(id))
}

/// Retries one node: its install (if it never got a configuration) or a reconfigure.
/// Returns (environment, job id), or why not; None when there is no such node.
pub async fn retry_node(st: &AppState, node_id: Uuid, by: &str) -> anyhow::Result<Option<Result<(Uuid, Uuid), String>>> {
    let Some(node) = db::nodes::get(&st.pool, node_id).await? else { return Ok(None) };
    let Some(env) = db::nodes::environment_of(&st.pool, node_id).await? else { return Ok(None) };
    if node.agent_state.leaving() {
        return Ok(Some(Err(format!("{} is leaving the environment", node.name))));
    }
    if db::environments::installation(&st.pool, node.layer_id).await?.is_none() {
        return Ok(Some(Err("the add-on is not installed on this environment: install it first".into())));
    }
    if db::jobs::node_busy(&st.pool, node_id).await? {
        return Ok(Some(Err(format!("{} already has a job queued or running", node.name))));
    }
    let kind = if node.config_generation == 0 { JobKind::Install } else { JobKind::Reconfigure };
    let job = db::jobs::enqueue(&st.pool, env, node_id, &node.name, kind).await?;
    db::add_event(&st.pool, Some(env), &format!("{}: {kind} retried by {by}", node.name)).await?;
    st.wake_jobs.notify_waiters();
    Ok(Some(Ok((env, job))))
}

/// Forgets a node's pinned host key (it was reinstalled on purpose); returns its
/// environment, None when there is no such node.
pub async fn forget_host_key(st: &AppState, node_id: Uuid, by: &str) -> anyhow::Result<Option<Uuid>> {
    let Some(node) = db::nodes::get(&st.pool, node_id).await? else { return Ok(None) };
    let Some(env) = db::nodes::environment_of(&st.pool, node_id).await? else { return Ok(None) };
    db::nodes::unpin_host_key(&st.pool, node_id).await?;
    db::add_event(&st.pool, Some(env), &format!("{}: its pinned host key was forgotten by {by}; the next job pins the key it finds", node.name)).await?;
    Ok(Some(env))
}
