//! "Would this path be synced?": a path relative to the webroot is synced when it lies in
//! the sync path, is not the agents' own `lsyncd/` folder or a temp file, and matches no
//! exclude pattern. The last part is asked of a reachable agent (it applies its real
//! rules); without one, only the fixed rules are checked, and the answer says so.

use crate::control::AppState;
use crate::control::agent_api::AgentApi;
use crate::control::manifest::normalize_path;
use crate::control::ops::status::{ASK_TIMEOUT, EnvStatus};
use crate::control::state::Health;

/// (synced, why), or why the question cannot be answered.
pub async fn test(st: &AppState, s: &EnvStatus, sync_path: &str, path: &str) -> Result<(bool, String), String> {
    let sync = normalize_path(sync_path).map_err(|e| format!("the sync path {sync_path:?} {e}"))?;
    if path.is_empty() {
        return Err("type a path relative to the webroot, e.g. ROOT/wp-content/uploads/photo.jpg".into());
    }
    let p = normalize_path(path).map_err(|e| format!("{path:?} {e}"))?;
    let Some(rel) = p.strip_prefix(&sync).and_then(|r| if r.is_empty() { Some("") } else { r.strip_prefix('/') }) else {
        return Ok((false, format!("{p} is outside the sync path {sync}")));
    };
    if rel.is_empty() {
        return Ok((true, format!("{p} is the sync folder itself")));
    }
    if rel.split('/').any(|c| c.starts_with(".filesync.") && c.ends_with(".tmp")) {
        return Ok((false, format!("{rel} is an agent's temp file name")));
    }
    let up = s.nodes.iter().find(|n| n.health == Health::Up);
    if let (Some(n), Ok(client)) = (up, crate::control::jobs::install::agent_client(st, &s.env)) {
        match AgentApi::new(client, &n.address, n.agent_port).path_test(rel, ASK_TIMEOUT).await {
            Ok(t) if t.synced => return Ok((true, format!("{p} is in the sync path and no exclude pattern of {} matches it", n.name))),
            Ok(t) => return Ok((false, format!("{p}: {} (asked {})", t.reason, n.name))),
            Err(_) => {}
        }
    }
    Ok((true, format!("{p} is in the sync path {sync} (no agent answered, so exclude patterns were not checked)")))
}
