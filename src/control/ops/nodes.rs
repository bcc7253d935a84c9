//! Nodes: validation of what a client sends for a node, scale out (DESIGN.md requirement 3:
//! add nodes, all or none; with the add-on installed the new nodes get the agent and every
//! existing agent reloads its peer list without restarting) and scale in.

use std::collections::HashMap;

use uuid::Uuid;

use super::{FieldErrors, Outcome, check_abs_path, check_name, invalid};
use crate::control::AppState;
use crate::control::db::{self, nodes::NewNode};
use crate::control::manifest::check_address;
use crate::control::state::{AgentState, JobKind};

/// A node's fields after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFields {
    pub name: String,
    pub address: String,
    pub ssh_port: i32,
    pub ssh_user: String,
    pub webroot: String,
    pub install_prefix: String,
    pub agent_port: i32,
}

/// Checks a node's fields from a form or JSON: name, address, ssh_port, ssh_user, webroot,
/// install_prefix, agent_port (all but name and address have defaults). A host name must
/// resolve (agents are given IP addresses; see `agent_api::resolve_ip`).
pub async fn validate(env: &db::EnvironmentRow, f: &HashMap<String, String>) -> Result<NodeFields, FieldErrors> {
    let get = |k: &str| f.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let mut errors = FieldErrors::new();
    let name = get("name").unwrap_or_default();
    if let Err(e) = check_name(&name) {
        errors.insert("name".into(), e);
    }
    let address = get("address").unwrap_or_default();
    match check_address(&format!("{}:22", if address.contains(':') && !address.starts_with('[') { format!("[{address}]") } else { address.clone() })) {
        Err(e) => {
            errors.insert("address".into(), e);
        }
        Ok(()) => {
            if let Err(e) = crate::control::agent_api::resolve_ip(&address).await {
                errors.insert("address".into(), e);
            }
        }
    }
    let port = |k: &str, d: i32, errors: &mut FieldErrors| match get(k).map(|p| p.parse::<u16>()) {
        None => d,
        Some(Ok(p)) if p > 0 => p as i32,
        _ => {
            errors.insert(k.into(), "must be a port number from 1 to 65535".into());
            d
        }
    };
    let ssh_port = port("ssh_port", 22, &mut errors);
    let agent_port = port("agent_port", 7755, &mut errors);
    let ssh_user = get("ssh_user").unwrap_or_else(|| "root".into());
    if ssh_user.len() > 32 || !ssh_user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') || ssh_user.starts_with('-') {
        errors.insert("ssh_user".into(), "not a valid user name".into());
    }
    let webroot = check_abs_path(&get("webroot").unwrap_or_else(|| env.webroot.clone()), 1).unwrap_or_else(|e| {
        errors.insert("webroot".into(), e);
        String::new()
    });
    let install_prefix = check_abs_path(&get("install_prefix").unwrap_or_else(|| "/opt/filesync".into()), 2).unwrap_or_else(|e| {
        errors.insert("install_prefix".into(), e);
        String::new()
    });
    if errors.is_empty() { Ok(NodeFields { name, address, ssh_port, ssh_user, webroot, install_prefix, agent_port }) } else { Err(errors) }
}

/// Adds one node (the dashboard's form); see [`add_nodes`].
pub async fn add_node(st: &AppState, env: &db::EnvironmentRow, f: &HashMap<String, String>) -> anyhow::Result<Outcome<Uuid>> {
    Ok(match add_nodes(st, env, std::slice::from_ref(f)).await? {
        Outcome::Done(ids) => Outcome::Done(ids[0]),
        Outcome::Invalid(e) => Outcome::Invalid(e.into_iter().map(|(k, v)| (k.split_once('.').map(|(_, k)| k.to_owned()).unwrap_or(k), v)).collect()),
    })
}

/// Scale out: adds nodes to the environment's layer, all or none (errors are keyed
/// `<index>.<field>`).
pub async fn add_nodes(st: &AppState, env: &db::EnvironmentRow, list: &[HashMap<String, String>]) -> anyhow::Result<Outcome<Vec<Uuid>>> {
    if list.is_empty() {
        return invalid("nodes", "no nodes given");
    }
    let mut valid = Vec::new();
    let mut errors = FieldErrors::new();
    for (i, f) in list.iter().enumerate() {
        match validate(env, f).await {
            Ok(v) => valid.push(v),
            Err(e) => errors.extend(e.into_iter().map(|(k, v)| (format!("{i}.{k}"), v))),
        }
    }
    if !errors.is_empty() {
        return Ok(Outcome::Invalid(errors));
    }
    Ok(insert(st, env, &valid, None).await?.map(|ids| ids.into_iter().collect()))
}

/// Records validated nodes (refusing an address and agent port another node has) and, with
/// the add-on installed, queues the installs.
pub(crate) async fn insert(st: &AppState, env: &db::EnvironmentRow, valid: &[NodeFields], enrolled: Option<(Uuid, &str)>) -> anyhow::Result<Outcome<Vec<Uuid>>> {
    let layer = db::environments::cp_layer(&st.pool, env.environment_id).await?;
    let existing = db::nodes::list(&st.pool, layer).await?;
    for (i, v) in valid.iter().enumerate() {
        let taken = existing.iter().filter(|n| n.agent_state != AgentState::Gone).map(|n| (&n.name, &n.address, n.agent_port)).chain(valid[..i].iter().map(|o| (&o.name, &o.address, o.agent_port)));
        for (other, address, port) in taken {
            if *address == v.address && port == v.agent_port {
                let key = if valid.len() > 1 || enrolled.is_none() { format!("{i}.address") } else { "address".into() };
                return invalid(&key, format!("{}:{} is already the address of node {other}", v.address, v.agent_port));
            }
        }
    }
    let news: Vec<NewNode> = valid
        .iter()
        .map(|v| NewNode {
            name: &v.name,
            address: &v.address,
            ssh_port: v.ssh_port,
            ssh_user: &v.ssh_user,
            webroot: &v.webroot,
            install_prefix: &v.install_prefix,
            agent_port: v.agent_port,
            enrolled,
        })
        .collect();
    let ids = match db::nodes::add(&st.pool, layer, &news).await? {
        Ok(ids) => ids,
        Err(dup) => return invalid("name", format!("a node named {dup} exists in this environment")),
    };
    if enrolled.is_none() {
        let names: Vec<String> = valid.iter().map(|v| format!("{} ({})", v.name, v.address)).collect();
        let what = if names.len() == 1 { format!("node {} added", names[0]) } else { format!("scale out: {} nodes added: {}", names.len(), names.join(", ")) };
        db::add_event(&st.pool, Some(env.environment_id), &what).await?;
    }
    if db::environments::installation(&st.pool, layer).await?.is_some() {
        let jobs = super::install::enqueue_all(st, env.environment_id, layer, JobKind::Install).await?;
        db::add_event(&st.pool, Some(env.environment_id), &format!("{} install jobs queued: the new nodes get the agent, the others reload their peers", jobs.len())).await?;
    }
    Ok(Outcome::Done(ids))
}

/// Scale in: the node leaves the peer lists at once (its peers reload without it); the
/// node itself is uninstalled if reachable and forgotten either way (`gone` when it could
/// not be reached). Without the add-on it is simply deleted. None: no such node.
pub async fn remove_node(st: &AppState, node_id: Uuid) -> anyhow::Result<Option<Uuid>> {
    let Some(node) = db::nodes::get(&st.pool, node_id).await? else { return Ok(None) };
    let Some(env) = db::nodes::environment_of(&st.pool, node_id).await? else { return Ok(None) };
    if node.agent_state == AgentState::Removing {
        return Ok(Some(env));
    }
    if db::environments::installation(&st.pool, node.layer_id).await?.is_none() || matches!(node.agent_state, AgentState::NotInstalled | AgentState::Gone) {
        db::nodes::remove(&st.pool, node_id).await?;
        db::add_event(&st.pool, Some(env), &format!("node {} removed", node.name)).await?;
        return Ok(Some(env));
    }
    db::nodes::set_state(&st.pool, node_id, AgentState::Removing).await?;
    db::add_event(&st.pool, Some(env), &format!("scale in: node {} is leaving; its peers drop it now, then it is uninstalled", node.name)).await?;
    db::jobs::enqueue(&st.pool, env, node_id, &node.name, JobKind::Uninstall).await?;
    super::install::enqueue_all(st, env, node.layer_id, JobKind::Reconfigure).await?;
    Ok(Some(env))
}
