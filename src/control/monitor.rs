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
