//! Heartbeats: every `--heartbeat-seconds`, one `filesync serve` process asks every
//! installed agent for its `/v1/status` and its report summary over mutual TLS and records
//! them on the node row (last heartbeat, tree digest, replication lag, health), so the
//! dashboard shows live agent state without anyone opening a page. Every node with an
//! agent is asked, whatever its last job said: health (`up`/`down`) is kept apart from the
//! job's result. An agent that stops answering turns `unreachable` (one event in the
//! timeline), and back to `running` when it answers again. The report summary brings the
//! agent's new file changes, its conflict count and what it still has to fetch; one sample
//! per node goes to the charts (`reports`). After polling, each environment's state is
//! decided once (`health::assess`): when its nodes start or stop differing, an event says
//! so; new and resolved conflict copies get events too; due verifications are queued.
//!
//! The same round retries nodes held `paused` on an old sync path (see `jobs::phases`):
//! once their SSH port answers, a reconfigure is queued (with backoff between failures).
//! It also forgets old failed-login records.
//!
//! Several processes may share the database: a round runs only in the process that takes
//! the Postgres advisory lock [`LOCK_KEY`], so agents are not polled once per process.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod reports;

use super::AppState;
use super::agent_api::{AgentApi, AgentStatus, LinkState};
use super::db;
use super::state::{AgentState, Health, InstallState, JobKind};

/// `pg_try_advisory_lock` key of the heartbeat round ("fs" "hb").
pub const LOCK_KEY: i64 = 0x6673_6862;

/// How long one agent may take to answer before it counts as unreachable.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(st: AppState, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = round(&st).await {
            tracing::warn!(error = %e, "heartbeat round failed");
        }
    }
}

async fn round(st: &AppState) -> anyhow::Result<()> {
    let mut conn = st.pool.acquire().await?;
    let mine = db::try_advisory_lock(&mut conn, LOCK_KEY).await?;
    if !mine {
        return Ok(());
    }
    let result = poll_all(st).await;
    let flagged = result.as_ref().cloned().unwrap_or_default();
    if let Err(e) = reports::environments(st, &flagged).await {
        tracing::warn!(error = %e, "environment pass of the heartbeat round failed");
    }
    let _ = db::logins::forget_old(&st.pool, db::logins::FORGET_AFTER_S).await;
    db::advisory_unlock(&mut conn, LOCK_KEY).await?;
    result.map(|_| ())
}

/// Polls every node with an agent; returns the environments whose conflict copies changed.
async fn poll_all(st: &AppState) -> anyhow::Result<Vec<uuid::Uuid>> {
    let nodes = db::nodes::monitored(&st.pool).await?;
    let polls = nodes.into_iter().map(|(node, env_id)| async move {
        let Ok(Some(env)) = db::environments::get(&st.pool, env_id).await else { return None };
        let mut conflicts_changed = false;
        let answer = match crate::control::jobs::install::agent_client(st, &env) {
            Ok(client) => AgentApi::new(client, &node.address, node.agent_port).status(STATUS_TIMEOUT).await,
            Err(e) => Err(format!("no client certificate for the environment: {e}")),
        };
        match answer {
            Ok(status) => {
                let _ = db::nodes::record_heartbeat(&st.pool, node.node_id, &status).await;
                if let Some(msg) = link_change(&node.name, node.status(), &status) {
                    let _ = db::add_event(&st.pool, Some(env_id), &msg).await;
                }
                let _ = db::nodes::transition_state(&st.pool, node.node_id, AgentState::Unreachable, AgentState::Running).await;
                if node.health == Health::Down {
                    let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: the agent answers again", node.name)).await;
                }
                conflicts_changed = reports::after_heartbeat(st, &env, &node, &status).await;
            }
            Err(why) => {
                let _ = db::nodes::record_no_answer(&st.pool, node.node_id, &why).await;
                let _ = db::nodes::transition_state(&st.pool, node.node_id, AgentState::Running, AgentState::Unreachable).await;
                if node.health == Health::Up {
                    let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: the agent stopped answering ({why}); its log is still readable over SSH", node.name)).await;
                }
            }
        }
        if node.agent_state == AgentState::Paused {
            retry_held(st, env_id, &node).await;
        }
        conflicts_changed.then_some(env_id)
    });
    let mut flagged: Vec<uuid::Uuid> = futures::future::join_all(polls).await.into_iter().flatten().collect();
    flagged.sort();
    flagged.dedup();
    Ok(flagged)
}

/// A node held paused on an older sync path: queue a reconfigure once its SSH port answers
/// and the backoff after its last failures (5 s doubling, at most 5 min) has passed.
async fn retry_held(st: &AppState, env_id: uuid::Uuid, node: &db::NodeRow) {
    let Ok(Some(inst)) = db::environments::installation(&st.pool, node.layer_id).await else { return };
    if inst.state == InstallState::ChangingPath || node.config_generation >= inst.generation {
        return;
    }
    if db::jobs::node_busy(&st.pool, node.node_id).await.unwrap_or(true) {
        return;
    }
    let Ok((failures, since_last)) = db::jobs::failures_since_success(&st.pool, node.node_id).await else { return };
    let wait = (5.0 * 2f64.powi(failures.min(6) as i32)).min(300.0);
    if since_last.is_some_and(|s| s < wait) {
        return;
    }
    let t = crate::control::ssh::Target { address: node.address.clone(), port: node.ssh_port as u16, user: node.ssh_user.clone(), pinned: None };
    if crate::control::ssh::reachable(&t).await.is_err() {
        return;
    }
    if db::jobs::enqueue(&st.pool, env_id, node.node_id, &node.name, JobKind::Reconfigure).await.is_ok() {
        let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: its SSH port answers again; reconfiguring it for the sync path {}", node.name, inst.sync_path)).await;
        st.wake_jobs.notify_waiters();
    }
}

/// A timeline line when a node's cross-environment link became connected or refused, or
/// stopped being connected (not for every pairing/unreachable retry, which would flood the
/// timeline while the other side is down).
fn link_change(node: &str, old: Option<&AgentStatus>, new: &AgentStatus) -> Option<String> {
    let state = |s: Option<&AgentStatus>| s.and_then(|s| s.link.as_ref()).map(|l| l.state);
    let (before, after) = (state(old), state(Some(new)));
    if before == after {
        return None;
    }
    let after = after?;
    let link = new.link.as_ref()?;
    let error = link.error.clone();
    let remote = if link.remote.is_empty() { "the other environment" } else { link.remote.as_str() };
    match (before, after) {
        (_, LinkState::Connected) => Some(format!("{node}: cross-environment link to {remote} connected")),
        (_, LinkState::Refused) => Some(format!("{node}: cross-environment link to {remote} refused: {}", error.as_deref().unwrap_or("the passwords differ"))),
        (Some(LinkState::Connected), other) => Some(format!("{node}: cross-environment link to {remote} no longer connected ({other}{})", error.map(|e| format!(": {e}")).unwrap_or_default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(v: serde_json::Value) -> AgentStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn link_changes_worth_a_timeline_line() {
        let s = |state: &str, error: Option<&str>| st(serde_json::json!({"link": {"state": state, "remote": "203.0.113.7:7756", "error": error}}));
        let f = link_change;
        assert_eq!(f("web1", Some(&s("pairing", None)), &s("connected", None)).as_deref(), Some("web1: cross-environment link to 203.0.113.7:7756 connected"));
        assert_eq!(
            f("web1", None, &s("refused", Some("the other environment refused the password"))).as_deref(),
            Some("web1: cross-environment link to 203.0.113.7:7756 refused: the other environment refused the password")
        );
        assert!(f("web1", Some(&s("connected", None)), &s("unreachable", Some("no answer"))).unwrap().contains("no longer connected (unreachable: no answer)"));
        assert_eq!(f("web1", Some(&s("connected", None)), &s("connected", None)), None);
        assert_eq!(f("web1", Some(&s("pairing", None)), &s("unreachable", None)), None);
        assert_eq!(f("web1", Some(&st(serde_json::json!({"link": null}))), &st(serde_json::json!({"link": null}))), None);
    }
}
