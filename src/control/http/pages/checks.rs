//! Verify and repair runs as the environment page shows them: what was compared, what
//! differs on which node (and whether an agent's index knew about it), when and by whom.

use super::ago;
use crate::control::checks::Verified;
use crate::control::db::checks::CheckRow;

pub struct DiffView {
    pub path: String,
    pub nodes: Vec<(String, String)>,
    pub not_indexed: String,
}

pub struct CheckView {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub by: String,
    pub when: String,
    pub summary: String,
    pub differences: Vec<DiffView>,
    /// For a repair: what differed before it.
    pub repaired: Vec<String>,
}

fn diffs(v: &Verified) -> Vec<DiffView> {
    v.differences
        .iter()
        .map(|d| DiffView {
            path: d.path.clone(),
            nodes: d.nodes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            not_indexed: if d.not_indexed.is_empty() { String::new() } else { format!("changed behind the agent's back (or not scanned yet) on {}", d.not_indexed.join(", ")) },
        })
        .collect()
}

pub fn view(r: CheckRow) -> CheckView {
    let result = r.result.clone().unwrap_or_default();
    let summary = result["summary"]
        .as_str()
        .map(str::to_owned)
        .or(r.error.clone())
        .unwrap_or_else(|| if r.state == "queued" { "waiting to start".into() } else { "running: every node reads and hashes its folder".into() });
    let (differences, repaired) = if r.kind == "repair" {
        let after: Option<Verified> = serde_json::from_value(result["after"].clone()).ok();
        let before: Option<Verified> = serde_json::from_value(result["before"].clone()).ok();
        (after.as_ref().map(diffs).unwrap_or_default(), before.map(|b| b.differences.into_iter().map(|d| d.path).collect()).unwrap_or_default())
    } else {
        (serde_json::from_value::<Verified>(result).ok().as_ref().map(diffs).unwrap_or_default(), Vec::new())
    };
    CheckView { id: r.sync_check_id.simple().to_string()[..8].to_owned(), kind: r.kind, state: r.state, by: r.requested_by, when: ago(Some(r.created_at)), summary, differences, repaired }
}
