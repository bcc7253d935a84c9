//! Heartbeats: every `--heartbeat-seconds`, one `filesync serve` process asks every
//! installed agent for its `/v1/status` over mutual TLS and records it on the node row
//! (last heartbeat, tree digest, replication lag), so the dashboard shows live agent state
//! without anyone opening a page. An agent that stops answering turns `unreachable` (one
//! event in the timeline), and back to `running` when it answers again.
//!
//! Several processes may share the database: a round runs only in the process that takes
//! the Postgres advisory lock [`LOCK_KEY`], so agents are not polled once per process.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db;

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
    db::advisory_unlock(&mut conn, LOCK_KEY).await?;
    result
}

async fn poll_all(st: &AppState) -> anyhow::Result<()> {
    let nodes = db::environments::monitored_nodes(&st.pool).await?;
    let polls = nodes.into_iter().map(|(node, env_id)| async move {
        let Ok(Some(env)) = db::environments::get(&st.pool, env_id).await else { return };
        let answer = match crate::control::jobs::install::agent_client(st, &env) {
            Ok(client) => fetch_status(&client, &node).await,
            Err(e) => Err(format!("no client certificate for the environment: {e}")),
        };
        match answer {
            Ok(status) => {
                let _ = db::environments::record_heartbeat(&st.pool, node.node_id, &status).await;
                if let Some(msg) = link_change(&node.name, node.last_status.as_ref(), &status) {
                    let _ = db::add_event(&st.pool, Some(env_id), &msg).await;
                }
                if db::environments::transition_agent_state(&st.pool, node.node_id, "unreachable", "running").await.unwrap_or(false) {
                    let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: the agent answers again", node.name)).await;
                }
            }
            Err(why) => {
                if db::environments::transition_agent_state(&st.pool, node.node_id, "running", "unreachable").await.unwrap_or(false) {
                    let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: the agent stopped answering ({why}); its log is still readable over SSH", node.name)).await;
                }
            }
        }
    });
    futures::future::join_all(polls).await;
    Ok(())
}

async fn fetch_status(client: &reqwest::Client, node: &db::NodeRow) -> Result<serde_json::Value, String> {
    let url = format!("https://{}:{}/v1/status", node.address, node.agent_port);
    let r = client.get(&url).timeout(STATUS_TIMEOUT).send().await.map_err(|e| format!("no answer from {}:{}: {e}", node.address, node.agent_port))?;
    if !r.status().is_success() {
        return Err(format!("{url} answered {}", r.status()));
    }
    r.json().await.map_err(|e| format!("{url} answered something that is not status JSON: {e}"))
}

/// A timeline line when a node's cross-environment link became connected or refused, or
/// stopped being connected (not for every pairing/unreachable retry, which would flood the
/// timeline while the other side is down).
fn link_change(node: &str, old: Option<&serde_json::Value>, new: &serde_json::Value) -> Option<String> {
    let state = |s: Option<&serde_json::Value>| s.and_then(|s| s.get("link")?.get("state")?.as_str().map(str::to_owned));
    let (before, after) = (state(old), state(Some(new)));
    if before == after {
        return None;
    }
    let after = after?;
    let error = new.get("link").and_then(|l| l.get("error")?.as_str().map(str::to_owned));
    let remote = new.get("link").and_then(|l| l.get("remote")?.as_str()).unwrap_or("the other environment");
    match (before.as_deref(), after.as_str()) {
        (_, "connected") => Some(format!("{node}: cross-environment link to {remote} connected")),
        (_, "refused") => Some(format!("{node}: cross-environment link to {remote} refused: {}", error.as_deref().unwrap_or("the passwords differ"))),
        (Some("connected"), other) => Some(format!("{node}: cross-environment link to {remote} no longer connected ({other}{})", error.map(|e| format!(": {e}")).unwrap_or_default())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn link_changes_worth_a_timeline_line() {
        let st = |state: &str, error: Option<&str>| json!({"link": {"state": state, "remote": "203.0.113.7:7756", "error": error}});
        let f = super::link_change;
        assert_eq!(f("web1", Some(&st("pairing", None)), &st("connected", None)).as_deref(), Some("web1: cross-environment link to 203.0.113.7:7756 connected"));
        assert_eq!(f("web1", None, &st("refused", Some("the other environment refused the password"))).as_deref(), Some("web1: cross-environment link to 203.0.113.7:7756 refused: the other environment refused the password"));
        assert!(f("web1", Some(&st("connected", None)), &st("unreachable", Some("no answer"))).unwrap().contains("no longer connected (unreachable: no answer)"));
        assert_eq!(f("web1", Some(&st("connected", None)), &st("connected", None)), None);
        assert_eq!(f("web1", Some(&st("pairing", None)), &st("unreachable", None)), None);
        assert_eq!(f("web1", Some(&json!({"link": null})), &json!({"link": null})), None);
    }
}
