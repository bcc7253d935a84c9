//! The dashboard's half of a heartbeat round. Per node that answered: its report summary
//! (new file changes into `file_change`, conflict count, content to fetch) and one chart
//! sample. Per environment afterwards: its state decided once by `health::assess` (events
//! when the nodes start or stop differing), conflict copies reconciled with the agents'
//! list (events for new and resolved ones), old changes and samples trimmed, and a verify
//! queued when the schedule says so.

use std::time::Duration;

use uuid::Uuid;

use crate::control::AppState;
use crate::control::agent_api::{AgentApi, AgentStatus};
use crate::control::db::{self, EnvironmentRow, NodeRow};
use crate::control::health::SyncState;
use crate::control::state::Health;
use crate::protocol::report::REPORT_CHANGES;

const REPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// After a node answered its status: reads its report summary and records a sample.
/// Returns whether its conflict copies changed since the last heartbeat.
pub async fn after_heartbeat(st: &AppState, env: &EnvironmentRow, node: &NodeRow, status: &AgentStatus) -> bool {
    let Ok(client) = crate::control::jobs::install::agent_client(st, env) else { return false };
    let api = AgentApi::new(client, &node.address, node.agent_port);
    let prev = node.report();
    let (run, since) = prev.map(|r| (r.run_id, r.last_change)).unwrap_or((0, 0));
    let mut changed = false;
    let mut pending = status.pending_local + status.writing + status.pending_remote;
    match api.report(run, since, REPORT_TIMEOUT).await {
        Ok(r) => {
            if let Err(e) = db::reports::add_changes(&st.pool, env.environment_id, node.node_id, &node.name, &r.changes[..r.changes.len().min(REPORT_CHANGES)]).await {
                // (an agent sends at most REPORT_CHANGES; one that sends more is cut there)
                tracing::warn!(node = %node.name, error = %e, "cannot store recent changes");
            }
            changed = prev.is_none_or(|p| p.run_id != r.run_id || p.conflicts_rev != r.conflicts_rev || p.conflicts != r.conflicts);
            pending = pending.max(r.pending_files);
            let _ = db::nodes::record_report(&st.pool, node.node_id, &r).await;
        }
        // An agent of an earlier version has no report routes: its status still counts.
        Err(e) => tracing::debug!(node = %node.name, error = %e, "no report summary"),
    }
    // The lag sample only when the node applied something since the last heartbeat: the
    // agent keeps its last measurement, which says nothing once everything is synced.
    let applied = node.status().is_none_or(|p| p.counters.applied != status.counters.applied);
    let lag = status.max_lag_ms().filter(|_| applied);
    let _ = db::reports::add_sample(&st.pool, node.node_id, lag, status.counters.bytes_received, status.counters.bytes_sent, pending).await;
    changed
}

/// The per-environment pass after every node was polled.
pub async fn environments(st: &AppState, conflicts_changed: &[Uuid]) -> anyhow::Result<()> {
    for env in db::environments::list(&st.pool).await? {
        let id = env.environment_id;
        let Some(s) = crate::control::ops::status::load(st, id).await? else { continue };
        if s.inst.is_none() {
            continue;
        }
        let differ = s.sync.state == SyncState::OutOfSync;
        if db::environments::set_out_of_sync(&st.pool, s.layer.layer_id, differ).await? {
            let msg = if differ { s.sync.headline.clone() } else { "in sync again: every idle node has the same tree digest".to_owned() };
            db::add_event(&st.pool, Some(id), &msg).await?;
        }
        let open = db::reports::open_conflicts(&st.pool, id).await?.len() as u64;
        let reported = s.nodes.iter().filter(|n| n.health == Health::Up).filter_map(|n| n.report().map(|r| r.conflicts)).max();
        if conflicts_changed.contains(&id) || reported.is_some_and(|r| r != open) {
            reconcile_conflicts(st, &env, &s.nodes).await;
        }
        db::reports::trim_changes(&st.pool, id).await?;
    }
    db::reports::trim_samples(&st.pool, st.sample_retention_days).await?;
    if st.verify_every_hours > 0.0 {
        for env in db::checks::due_for_verify(&st.pool, st.verify_every_hours).await? {
            let check = db::checks::enqueue(&st.pool, env, "verify", "the daily schedule").await?;
            db::add_event(&st.pool, Some(env), &format!("verify {} queued by the schedule (every {} h)", &check.simple().to_string()[..8], st.verify_every_hours)).await?;
        }
    }
    Ok(())
}

/// Brings the `conflict` table in line with the conflict copies of the first node that
/// lists them (copies replicate, so every node converges to the same list); an event per
/// copy that appeared or went away.
async fn reconcile_conflicts(st: &AppState, env: &EnvironmentRow, nodes: &[NodeRow]) {
    let Ok(client) = crate::control::jobs::install::agent_client(st, env) else { return };
    let id = env.environment_id;
    for n in nodes.iter().filter(|n| n.health == Health::Up) {
        let Ok(list) = AgentApi::new(client.clone(), &n.address, n.agent_port).conflicts(REPORT_TIMEOUT).await else { continue };
        let Ok(known) = db::reports::open_conflicts(&st.pool, id).await else { return };
        for c in &list.conflicts {
            if db::reports::conflict_seen(&st.pool, id, &c.path, c.original.as_deref(), &c.loser_node).await.unwrap_or(false) {
                let what = match (&c.original, c.loser_node.as_str()) {
                    (Some(o), "") => format!("conflict on {o}: the other version is kept as {}", c.path),
                    (Some(o), loser) => format!("conflict on {o}: {loser}'s version lost and is kept as {}", c.path),
                    (None, _) => format!("conflict copy {}", c.path),
                };
                let _ = db::add_event(&st.pool, Some(id), &format!("{what} (see the conflict center)")).await;
            }
        }
        // Only a complete list can tell that a copy is gone.
        if list.total as usize == list.conflicts.len() {
            for k in known.iter().filter(|k| !list.conflicts.iter().any(|c| c.path == k.path)) {
                let _ = db::reports::conflict_gone(&st.pool, id, &k.path).await;
                let _ = db::add_event(&st.pool, Some(id), &format!("conflict copy {} is gone (resolved)", k.path)).await;
            }
        }
        return;
    }
}
