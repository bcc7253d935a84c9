//! What happens when a job ends: the node's state follows the job, a scale-in ends, the
//! installation's state follows all of its nodes' jobs, and a sync path change ends with
//! every node that reached the new generation resumed (issue 11, item 12).
//!
//! A node that could not be brought to the new path stays `paused` on the old one. Its
//! agent, if it answers, was paused before the change began and is not resumed, so it
//! neither applies nor serves anything meanwhile. The heartbeat loop
//! (`monitor::retry_held`) queues a reconfigure when its SSH port answers again; when that
//! job succeeds the node is resumed here.

use std::time::Duration;

use uuid::Uuid;

use crate::control::AppState;
use crate::control::agent_api::{AdminCommand, AgentApi};
use crate::control::db::{self, JobRow, NodeRow};
use crate::control::state::{AgentState, InstallState, JobKind, JobState};

/// Sets the node's state from its job's result.
pub async fn after_job(st: &AppState, job: &JobRow, node: &NodeRow, result: &Result<(), String>) {
    if job.kind == JobKind::Uninstall && node.agent_state == AgentState::Removing {
        // The end of a scale-in: forget the node, or mark it gone if it was unreachable.
        let msg = match result {
            Ok(()) => {
                let _ = db::nodes::remove(&st.pool, node.node_id).await;
                format!("scale in: node {} uninstalled and removed", node.name)
            }
            Err(e) => {
                let _ = db::nodes::set_state(&st.pool, node.node_id, AgentState::Gone).await;
                format!("scale in: node {} could not be uninstalled ({e}); marked gone and never contacted again (remove it again to delete the row)", node.name)
            }
        };
        let _ = db::add_event(&st.pool, Some(job.environment_id), &msg).await;
        return;
    }
    // A job that ends after its node started leaving (scale-in) does not bring it back.
    if node.agent_state.leaving() {
        return;
    }
    let inst = db::environments::installation(&st.pool, node.layer_id).await.ok().flatten();
    let changing = inst.as_ref().is_some_and(|i| i.state == InstallState::ChangingPath);
    let current = inst.as_ref().is_some_and(|i| node.config_generation >= i.generation);
    let state = match (result, job.kind) {
        (_, JobKind::Uninstall) if result.is_ok() => AgentState::NotInstalled,
        // During a path change every node stays paused until all jobs ended.
        _ if changing && job.kind != JobKind::Uninstall => AgentState::Paused,
        // A node held paused on an old path stays so until it has the current one.
        _ if node.agent_state == AgentState::Paused && !current => AgentState::Paused,
        (Err(_), _) => AgentState::Failed,
        (Ok(()), _) if node.agent_state == AgentState::Paused => {
            let layer_paused = db::environments::layer_paused(&st.pool, node.layer_id).await.unwrap_or(false);
            if !layer_paused && let Err(e) = resume(st, job.environment_id, node).await {
                let _ =
                    db::add_event(&st.pool, Some(job.environment_id), &format!("{}: reached the current sync path, but could not be resumed ({e}); resume sync on the environment page", node.name))
                        .await;
                AgentState::Paused
            } else {
                let _ = db::add_event(&st.pool, Some(job.environment_id), &format!("{}: reconfigured for the current sync path; sync resumed on it", node.name)).await;
                AgentState::Running
            }
        }
        (Ok(()), _) => AgentState::Running,
    };
    let _ = db::nodes::set_state(&st.pool, node.node_id, state).await;
}

async fn resume(st: &AppState, env_id: Uuid, node: &NodeRow) -> Result<(), String> {
    let env = db::environments::get(&st.pool, env_id).await.map_err(|e| e.to_string())?.ok_or("the environment was removed")?;
    let client = super::install::agent_client(st, &env).map_err(|e| e.to_string())?;
    AgentApi::new(client, &node.address, node.agent_port).admin(AdminCommand::Resume, Duration::from_secs(5)).await
}

/// The installation is `installed` when every node's latest job succeeded, `failed` when
/// one failed, and goes away when every node was uninstalled. A path change ends here.
pub async fn refresh_installation(st: &AppState, env: Uuid) {
    let Ok(layer) = db::environments::cp_layer(&st.pool, env).await else { return };
    let Ok(Some(inst)) = db::environments::installation(&st.pool, layer).await else { return };
    let Ok(latest) = db::jobs::latest_per_node(&st.pool, env).await else { return };
    let nodes: Vec<NodeRow> = db::nodes::list(&st.pool, layer).await.unwrap_or_default().into_iter().filter(|n| !n.agent_state.leaving()).collect();
    let latest: Vec<JobRow> = latest.into_iter().filter(|j| nodes.iter().any(|n| Some(n.node_id) == j.node_id)).collect();
    if latest.iter().any(|j| !j.state.finished()) {
        return;
    }
    if inst.state == InstallState::ChangingPath {
        finish_path_change(st, env, layer, &inst, &nodes, &latest).await;
        return;
    }
    let state = if latest.iter().any(|j| j.state == JobState::Failed) || nodes.iter().any(|n| n.agent_state == AgentState::Paused && n.config_generation < inst.generation) {
        InstallState::Failed
    } else if !latest.is_empty() && latest.iter().all(|j| j.kind == JobKind::Uninstall) {
        let _ = db::environments::delete_installation(&st.pool, layer).await;
        return;
    } else {
        InstallState::Installed
    };
    let _ = db::environments::set_installation_state(&st.pool, layer, state).await;
}

/// Every job of a path change has ended: resume the nodes at the new generation, keep the
/// others paused. Exactly one process does this (a conditional state change).
async fn finish_path_change(st: &AppState, env_id: Uuid, layer: Uuid, inst: &db::InstallationRow, nodes: &[NodeRow], latest: &[JobRow]) {
    let (ready, behind): (Vec<&NodeRow>, Vec<&NodeRow>) = nodes.iter().partition(|n| n.config_generation >= inst.generation);
    let done = if behind.is_empty() { InstallState::Installed } else { InstallState::Failed };
    if !db::environments::transition_installation(&st.pool, layer, InstallState::ChangingPath, done).await.unwrap_or(false) {
        return;
    }
    let layer_paused = db::environments::layer_paused(&st.pool, layer).await.unwrap_or(false);
    let mut resumed = Vec::new();
    for n in &ready {
        if layer_paused {
            let _ = db::nodes::set_state(&st.pool, n.node_id, AgentState::Running).await;
            continue;
        }
        match resume(st, env_id, n).await {
            Ok(()) => {
                let _ = db::nodes::set_state(&st.pool, n.node_id, AgentState::Running).await;
                resumed.push(n.name.clone());
            }
            Err(e) => {
                let _ = db::add_event(&st.pool, Some(env_id), &format!("{}: has the new sync path but could not be resumed ({e}); it stays paused", n.name)).await;
            }
        }
    }
    for n in &behind {
        let why = latest.iter().find(|j| j.node_id == Some(n.node_id)).and_then(|j| j.error.clone()).unwrap_or_else(|| "no job reached it".into());
        let _ = db::nodes::set_state(&st.pool, n.node_id, AgentState::Paused).await;
        let _ = db::add_event(
            &st.pool,
            Some(env_id),
            &format!("{}: could not be reconfigured for the new sync path ({why}); it stays paused on the old path, and is reconfigured and resumed when it can be reached again", n.name),
        )
        .await;
    }
    let mut msg = format!("sync path change to {} done: {} node(s) resumed on the new path", inst.sync_path, resumed.len());
    if layer_paused {
        msg.push_str(" (the layer is paused: resume it to sync)");
    }
    if !behind.is_empty() {
        msg.push_str(&format!("; paused on the old path: {}", behind.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")));
    }
    let _ = db::add_event(&st.pool, Some(env_id), &msg).await;
}
