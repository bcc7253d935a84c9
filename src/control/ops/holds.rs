//! The mass deletes the agents hold for an operator (issue 15): read from the nodes' last
//! status (the same facts as the rest of the page), confirmed on every node that holds
//! them, or rejected on one (it re-announces the files, so they come back on the node that
//! deleted them, and the other nodes' holds dissolve when the files reach them). The agents
//! decide what their hold does (`agent::hold`); each node's answer becomes an event.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::status::EnvStatus;
use crate::control::AppState;
use crate::control::agent_api::{AgentApi, HoldRequest};
use crate::control::db;

/// A decision may apply or re-announce thousands of entries.
const DECIDE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A mass delete one node made, held on the nodes that received it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeldView {
    pub from: String,
    pub since: i64,
    /// The largest count any holder reports (holders may be a moment apart).
    pub files: usize,
    pub entries: usize,
    pub sample: Vec<String>,
    pub on_nodes: Vec<String>,
}

/// The mass deletes held on the environment's nodes, from their last status.
pub fn held(s: &EnvStatus) -> Vec<HeldView> {
    let mut by_from: BTreeMap<String, HeldView> = BTreeMap::new();
    for n in s.nodes.iter().filter(|n| !n.agent_state.leaving()) {
        let Some(st) = n.status() else { continue };
        for h in st.mass_delete_holds.iter().filter(|h| h.state == "held") {
            let v = by_from.entry(h.from.clone()).or_insert_with(|| HeldView { from: h.from.clone(), since: h.since, files: 0, entries: 0, sample: h.sample.clone(), on_nodes: Vec::new() });
            v.since = v.since.min(h.since);
            v.files = v.files.max(h.files);
            v.entries = v.entries.max(h.entries);
            v.on_nodes.push(n.name.clone());
        }
    }
    by_from.into_values().collect()
}

/// One node's answer to a hold decision.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HoldOutcome {
    pub node: String,
    pub done: bool,
    pub message: String,
}

/// Confirm (apply the deletions on every node holding them) or reject (bring the files
/// back everywhere, from one node holding them) the mass delete `from` made. Err is a
/// sentence; None when there is no such environment.
pub async fn decide_hold(st: &AppState, env_id: Uuid, from: &str, confirm: bool, by: &str) -> anyhow::Result<Option<Result<Vec<HoldOutcome>, String>>> {
    let Some(s) = super::status::load(st, env_id).await? else {
        return Ok(None);
    };
    let Some(h) = held(&s).into_iter().find(|h| h.from == from) else {
        return Ok(Some(Err(format!("no node holds a mass delete from {from} (already confirmed or rejected?)"))));
    };
    let client = crate::control::jobs::install::agent_client(st, &s.env)?;
    let req = HoldRequest { from: Some(from.to_owned()) };
    let verb = if confirm { "confirmed" } else { "rejected" };
    let mut out = Vec::new();
    for name in &h.on_nodes {
        let Some(n) = s.nodes.iter().find(|n| &n.name == name) else {
            continue;
        };
        let api = AgentApi::new(client.clone(), &n.address, n.agent_port);
        let r = api.hold(confirm, &req, DECIDE_TIMEOUT).await;
        let done = r.is_ok();
        let message = match r {
            Ok(r) => r.message,
            Err(e) => e,
        };
        db::add_event(&st.pool, Some(env_id), &format!("mass delete from {from} {verb} by {by} on {name}{}: {message}", if done { "" } else { " not done" })).await?;
        out.push(HoldOutcome { node: name.clone(), done, message });
        // One rejection re-announces the files; the other holds dissolve when they arrive.
        if done && !confirm {
            break;
        }
    }
    Ok(Some(Ok(out)))
}
