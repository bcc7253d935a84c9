//! What the dashboard and the API both do: create environments, add and remove nodes,
//! submit the add-on dialog (validated against the manifest), queue jobs.

use std::collections::HashMap;

use uuid::Uuid;

use super::Error;
use crate::control::AppState;
use crate::control::db::{self, environments::NewEnvironment, environments::NewInstallation, environments::NewNode};
use crate::control::manifest::{FieldErrors, check_address};

pub enum Outcome<T> {
    Done(T),
    Invalid(FieldErrors),
}

fn invalid<T>(field: &str, msg: impl Into<String>) -> Result<Outcome<T>, Error> {
    Ok(Outcome::Invalid([(field.to_owned(), msg.into())].into_iter().collect()))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Creates an environment with its own CA and a client certificate for the control plane.
pub async fn create_environment(st: &AppState, name: &str, webroot: &str) -> Result<Outcome<Uuid>, Error> {
    let name = name.trim();
    if !valid_name(name) {
        return invalid("name", "use 1-63 letters, digits, - or _");
    }
    let webroot = if webroot.trim().is_empty() { "/var/www/webroot" } else { webroot.trim() };
    if !webroot.starts_with('/') || webroot.contains("..") {
        return invalid("webroot", "must be an absolute path");
    }
    let ca = crate::pki::new_ca(&format!("filesync CA for {name}"))?;
    let client = crate::pki::issue(&ca, "filesync-control-plane", &[], &[])?;
    let id = db::environments::create(
        &st.pool,
        NewEnvironment {
            name,
            webroot,
            ca_cert_pem: &ca.cert_pem,
            ca_key_secret: &st.secrets.seal(&ca.key_pem)?,
            client_cert_pem: &client.cert_pem,
            client_key_secret: &st.secrets.seal(&client.key_pem)?,
        },
    )
    .await?;
    match id {
        Some(id) => {
            db::add_event(&st.pool, Some(id), &format!("environment {name} created")).await?;
            Ok(Outcome::Done(id))
        }
        None => invalid("name", format!("an environment named {name} exists")),
    }
}

/// Adds a node from form or JSON fields: name, address, ssh_port, ssh_user, webroot,
/// install_prefix, agent_port (all but name and address have defaults).
pub async fn add_node(st: &AppState, env: &db::EnvironmentRow, f: &HashMap<String, String>) -> Result<Outcome<Uuid>, Error> {
    let get = |k: &str| f.get(k).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let mut errors = FieldErrors::new();
    let name = get("name").unwrap_or_default();
    if !valid_name(&name) {
        errors.insert("name".into(), "use 1-63 letters, digits, - or _".into());
    }
    let address = get("address").unwrap_or_default();
    if let Err(e) = check_address(&format!("{address}:22")) {
        errors.insert("address".into(), e);
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
    if !ssh_user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        errors.insert("ssh_user".into(), "not a valid user name".into());
    }
    let webroot = get("webroot").unwrap_or_else(|| env.webroot.clone());
    let prefix = get("install_prefix").unwrap_or_else(|| "/opt/filesync".into());
    for (k, v) in [("webroot", &webroot), ("install_prefix", &prefix)] {
        if !v.starts_with('/') || v.contains("..") || v.contains('\'') || v.chars().any(char::is_control) {
            errors.insert(k.into(), "must be an absolute path without .. or quotes".into());
        }
    }
    if !errors.is_empty() {
        return Ok(Outcome::Invalid(errors));
    }
    let layer = db::environments::cp_layer(&st.pool, env.environment_id).await?;
    let new = NewNode { name: &name, address: &address, ssh_port, ssh_user: &ssh_user, webroot: &webroot, install_prefix: &prefix, agent_port };
    let Some(id) = db::environments::add_node(&st.pool, layer, new).await? else {
        return invalid("name", format!("a node named {name} exists in this environment"));
    };
    db::add_event(&st.pool, Some(env.environment_id), &format!("node {name} ({address}) added")).await?;
    // Topology scaling (DESIGN.md requirement 3): with the add-on installed, the new node
    // gets the agent and every other node learns about it.
    if db::environments::installation(&st.pool, layer).await?.is_some() {
        enqueue_all(st, env.environment_id, layer, "install").await?;
    }
    Ok(Outcome::Done(id))
}

pub async fn remove_node(st: &AppState, node_id: Uuid) -> Result<Option<Uuid>, Error> {
    let Some(node) = db::environments::node(&st.pool, node_id).await? else { return Ok(None) };
    let env = db::environments::node_environment(&st.pool, node_id).await?.ok_or_else(|| super::not_found("environment"))?;
    db::environments::remove_node(&st.pool, node_id).await?;
    db::add_event(&st.pool, Some(env), &format!("node {} removed", node.name)).await?;
    if db::environments::installation(&st.pool, node.layer_id).await?.is_some() {
        enqueue_all(st, env, node.layer_id, "reconfigure").await?;
    }
    Ok(Some(env))
}

async fn enqueue_all(st: &AppState, env: Uuid, layer: Uuid, kind: &str) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::new();
    for n in db::environments::nodes(&st.pool, layer).await? {
        ids.push(db::jobs::enqueue(&st.pool, env, n.node_id, &n.name, kind).await?);
    }
    st.wake_jobs.notify_waiters();
    Ok(ids)
}

/// Install or reconfigure: validates against the manifest, stores the settings, queues one
/// job per node of the layer.
pub async fn submit_install(st: &AppState, env: Uuid, values: &HashMap<String, String>) -> Result<Outcome<Vec<Uuid>>, Error> {
    let s = match st.manifest.validate(values) {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::Invalid(e)),
    };
    let layer = db::environments::cp_layer(&st.pool, env).await?;
    let nodes = db::environments::nodes(&st.pool, layer).await?;
    if nodes.is_empty() {
        return invalid("nodes", "this environment has no nodes yet: add nodes first");
    }
    if s.mode == "two_envs" {
        return invalid("mode", "two-environment sync needs the cross-environment link, which this version does not have yet");
    }
    let existing = db::environments::installation(&st.pool, layer).await?;
    let kind = if existing.is_some() { "reconfigure" } else { "install" };
    let settings = serde_json::json!({"mode": s.mode, "path": s.path, "delay": s.delay, "address": s.address});
    let password_secret = match &s.password {
        Some(p) => Some(st.secrets.seal(p)?),
        None => None,
    };
    let new = NewInstallation { mode: &s.mode, sync_path: &s.path, delay_seconds: s.delay as i32, settings, password_secret };
    db::environments::upsert_installation(&st.pool, layer, new, "installing").await?;
    db::add_event(&st.pool, Some(env), &format!("{kind}: path {} delay {} s", s.path, s.delay)).await?;
    Ok(Outcome::Done(enqueue_all(st, env, layer, kind).await?))
}

pub async fn submit_uninstall(st: &AppState, env: Uuid) -> Result<Vec<Uuid>, Error> {
    let layer = db::environments::cp_layer(&st.pool, env).await?;
    db::environments::set_installation_state(&st.pool, layer, "uninstalling").await?;
    db::add_event(&st.pool, Some(env), "uninstall").await?;
    enqueue_all(st, env, layer, "uninstall").await
}
