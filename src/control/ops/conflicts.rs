//! The conflict center: every conflict copy of an environment, as its agents report them
//! (each reachable agent is asked; copies replicate, so they usually agree), and the
//! operator's decisions, carried out by one agent that holds the copy as an ordinary local
//! change (it replicates to every node by the normal rules; see `agent::report::resolve`).

use std::collections::BTreeMap;

use uuid::Uuid;

use super::status::ASK_TIMEOUT;
use crate::control::AppState;
use crate::control::agent_api::{AgentApi, ConflictCopy, ResolveAction, ResolveRequest, ResolveResult};
use crate::control::db;
use crate::control::state::Health;

/// One copy with the nodes that hold it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConflictView {
    #[serde(flatten)]
    pub copy: ConflictCopy,
    pub on_nodes: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConflictList {
    pub conflicts: Vec<ConflictView>,
    /// Nodes asked, and the ones that could not be (with why).
    pub asked: Vec<String>,
    pub unreachable: Vec<String>,
}

/// Asks every reachable agent of the environment; None when there is no such environment.
pub async fn list(st: &AppState, env_id: Uuid) -> anyhow::Result<Option<ConflictList>> {
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return Ok(None) };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let nodes: Vec<db::NodeRow> = db::nodes::list(&st.pool, layer).await?.into_iter().filter(|n| n.agent_state.has_agent() || n.health == Health::Up).collect();
    let mut out = ConflictList::default();
    if nodes.is_empty() {
        return Ok(Some(out));
    }
    let client = crate::control::jobs::install::agent_client(st, &env)?;
    let answers = futures::future::join_all(nodes.iter().map(|n| {
        let api = AgentApi::new(client.clone(), &n.address, n.agent_port);
        async move { api.conflicts(ASK_TIMEOUT).await }
    }))
    .await;
    let mut by_path: BTreeMap<String, ConflictView> = BTreeMap::new();
    for (n, a) in nodes.iter().zip(answers) {
        match a {
            Ok(list) => {
                out.asked.push(n.name.clone());
                for c in list.conflicts {
                    by_path.entry(c.path.clone()).or_insert_with(|| ConflictView { copy: c, on_nodes: Vec::new() }).on_nodes.push(n.name.clone());
                }
            }
            Err(e) => out.unreachable.push(format!("{}: {e}", n.name)),
        }
    }
    out.conflicts = by_path.into_values().collect();
    Ok(Some(out))
}

/// The name "keep both" gives a copy when the operator named none:
/// `photo.sync-conflict-20261122-101502-node2-3fa9c01b.jpg` → `photo.node2-20261122-101502.jpg`.
pub fn default_keep_name(copy: &str) -> String {
    let name = copy.rsplit('/').next().unwrap_or(copy);
    let Some(at) = name.find(".sync-conflict-") else { return format!("{name}.kept") };
    let stem = &name[..at];
    let rest = &name[at + ".sync-conflict-".len()..];
    let (tail, ext) = match rest.find('.') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let parts: Vec<&str> = tail.split('-').collect();
    let label = if parts.len() >= 4 { format!("{}-{}-{}", parts[2..parts.len() - 1].join("-"), parts[0], parts[1]) } else { tail.to_owned() };
    format!("{stem}.{label}{ext}")
}

/// What happened to one copy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Resolution {
    pub copy: String,
    /// The node that carried it out (empty when none could).
    pub node: String,
    pub done: bool,
    pub message: String,
}

/// Carries out `action` on each copy, each on the first reachable node that holds it.
/// `name` is the new name for "keep both" of a single copy (a default name otherwise).
/// None when there is no such environment.
pub async fn resolve(st: &AppState, env_id: Uuid, copies: &[String], action: ResolveAction, name: Option<&str>, by: &str) -> anyhow::Result<Option<Vec<Resolution>>> {
    let Some(current) = list(st, env_id).await? else { return Ok(None) };
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return Ok(None) };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let nodes = db::nodes::list(&st.pool, layer).await?;
    let client = crate::control::jobs::install::agent_client(st, &env)?;
    let mut out = Vec::new();
    for copy in copies {
        let Some(c) = current.conflicts.iter().find(|c| &c.copy.path == copy) else {
            out.push(Resolution { copy: copy.clone(), node: String::new(), done: false, message: format!("no reachable node holds {copy} (already resolved?)") });
            continue;
        };
        let new_name = match action {
            ResolveAction::KeepBoth => Some(name.filter(|n| !n.trim().is_empty() && copies.len() == 1).map(str::to_owned).unwrap_or_else(|| default_keep_name(copy))),
            _ => None,
        };
        let req = ResolveRequest { copy: copy.clone(), action, name: new_name };
        let mut result = ResolveResult { done: false, message: "no node holding it answered".into() };
        let mut by_node = String::new();
        for holder in &c.on_nodes {
            let Some(n) = nodes.iter().find(|n| &n.name == holder) else { continue };
            match AgentApi::new(client.clone(), &n.address, n.agent_port).resolve(&req, ASK_TIMEOUT).await {
                Ok(r) => {
                    result = r;
                    by_node = n.name.clone();
                    break;
                }
                Err(e) => result.message = format!("{}: {e}", n.name),
            }
        }
        let verb = match action {
            ResolveAction::KeepWinner => "keep the winner",
            ResolveAction::RestoreCopy => "restore the copy",
            ResolveAction::KeepBoth => "keep both",
        };
        let line = if result.done { format!("conflict {copy}: {verb} by {by}: {}", result.message) } else { format!("conflict {copy}: {verb} by {by} not done: {}", result.message) };
        db::add_event(&st.pool, Some(env_id), &line).await?;
        out.push(Resolution { copy: copy.clone(), node: by_node, done: result.done, message: result.message });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    #[test]
    fn keep_both_names_say_whose_version_it_was() {
        assert_eq!(super::default_keep_name("up/photo.sync-conflict-20261122-101502-web-2-3fa9c01b.jpg"), "photo.web-2-20261122-101502.jpg");
        assert_eq!(super::default_keep_name("notes.sync-conflict-20261122-101502-node1-00000007"), "notes.node1-20261122-101502");
    }
}
