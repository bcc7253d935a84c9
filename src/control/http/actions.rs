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

/// A node's fields from a form or JSON: name, address, ssh_port, ssh_user, webroot,
/// install_prefix, agent_port (all but name and address have defaults).
fn validate_node(env: &db::EnvironmentRow, f: &HashMap<String, String>) -> Result<(String, String, i32, String, String, String, i32), FieldErrors> {
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
    if errors.is_empty() { Ok((name, address, ssh_port, ssh_user, webroot, prefix, agent_port)) } else { Err(errors) }
}

/// Adds one node (the dashboard's form); see [`add_nodes`].
pub async fn add_node(st: &AppState, env: &db::EnvironmentRow, f: &HashMap<String, String>) -> Result<Outcome<Uuid>, Error> {
    Ok(match add_nodes(st, env, std::slice::from_ref(f)).await? {
        Outcome::Done(ids) => Outcome::Done(ids[0]),
        Outcome::Invalid(e) => Outcome::Invalid(e.into_iter().map(|(k, v)| (k.split_once('.').map(|(_, k)| k.to_owned()).unwrap_or(k), v)).collect()),
    })
}

/// Scale out (DESIGN.md requirement 3): adds nodes to the environment's layer, all or none
/// (errors are keyed `<index>.<field>`). With the add-on installed, the new nodes get the
/// agent and every existing agent reloads its peer list without restarting.
pub async fn add_nodes(st: &AppState, env: &db::EnvironmentRow, list: &[HashMap<String, String>]) -> Result<Outcome<Vec<Uuid>>, Error> {
    if list.is_empty() {
        return invalid("nodes", "no nodes given");
    }
    let mut valid = Vec::new();
    let mut errors = FieldErrors::new();
    for (i, f) in list.iter().enumerate() {
        match validate_node(env, f) {
            Ok(v) => valid.push(v),
            Err(e) => errors.extend(e.into_iter().map(|(k, v)| (format!("{i}.{k}"), v))),
        }
    }
    if !errors.is_empty() {
        return Ok(Outcome::Invalid(errors));
    }
    let layer = db::environments::cp_layer(&st.pool, env.environment_id).await?;
    let news: Vec<NewNode> = valid
        .iter()
        .map(|(name, address, ssh_port, ssh_user, webroot, prefix, agent_port)| NewNode { name, address, ssh_port: *ssh_port, ssh_user, webroot, install_prefix: prefix, agent_port: *agent_port })
        .collect();
    let ids = match db::environments::add_nodes(&st.pool, layer, &news).await? {
        Ok(ids) => ids,
        Err(dup) => return invalid("name", format!("a node named {dup} exists in this environment")),
    };
    let names: Vec<String> = valid.iter().map(|v| format!("{} ({})", v.0, v.1)).collect();
    let what = if names.len() == 1 { format!("node {} added", names[0]) } else { format!("scale out: {} nodes added: {}", names.len(), names.join(", ")) };
    db::add_event(&st.pool, Some(env.environment_id), &what).await?;
    if db::environments::installation(&st.pool, layer).await?.is_some() {
        let jobs = enqueue_all(st, env.environment_id, layer, "install").await?;
        db::add_event(&st.pool, Some(env.environment_id), &format!("{} install jobs queued: the new nodes get the agent, the others reload their peers", jobs.len())).await?;
    }
    Ok(Outcome::Done(ids))
}

/// Scale in: the node leaves the peer lists at once (its peers reload without it); the
/// node itself is uninstalled if reachable and forgotten either way (`gone` when it could
/// not be reached). Without the add-on it is simply deleted.
pub async fn remove_node(st: &AppState, node_id: Uuid) -> Result<Option<Uuid>, Error> {
    let Some(node) = db::environments::node(&st.pool, node_id).await? else { return Ok(None) };
    let env = db::environments::node_environment(&st.pool, node_id).await?.ok_or_else(|| super::not_found("environment"))?;
    if node.agent_state == REMOVING {
        return Ok(Some(env));
    }
    if db::environments::installation(&st.pool, node.layer_id).await?.is_none() || node.agent_state == "not installed" || node.agent_state == GONE {
        db::environments::remove_node(&st.pool, node_id).await?;
        db::add_event(&st.pool, Some(env), &format!("node {} removed", node.name)).await?;
        return Ok(Some(env));
    }
    db::environments::set_agent_state(&st.pool, node_id, REMOVING).await?;
    db::add_event(&st.pool, Some(env), &format!("scale in: node {} is leaving; its peers drop it now, then it is uninstalled", node.name)).await?;
    db::jobs::enqueue(&st.pool, env, node_id, &node.name, "uninstall").await?;
    enqueue_all(st, env, node.layer_id, "reconfigure").await?;
    Ok(Some(env))
}

/// The agent state of a node that is being removed: not a peer any more, not monitored.
pub const REMOVING: &str = "removing";
/// A removed node that could not be reached to uninstall it: never contacted again.
pub const GONE: &str = "gone";

/// Whether the node is leaving or has left the layer (no peer, no job, no heartbeat).
pub fn leaving(n: &db::NodeRow) -> bool {
    n.agent_state == REMOVING || n.agent_state == GONE
}

/// Pause or resume sync on every node of the layer (around a redeploy): asks each agent
/// over mutual TLS. Returns one line per node that could not be reached.
pub async fn set_paused(st: &AppState, env_id: Uuid, paused: bool) -> Result<Vec<String>, Error> {
    let env = db::environments::get(&st.pool, env_id).await?.ok_or_else(|| super::not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let client = crate::control::jobs::install::agent_client(st, &env)?;
    let cmd = if paused { "pause" } else { "resume" };
    let nodes: Vec<_> = db::environments::nodes(&st.pool, layer).await?.into_iter().filter(|n| n.agent_state == "running" || n.agent_state == "unreachable").collect();
    let calls = nodes.iter().map(|n| {
        let client = client.clone();
        async move {
            let url = format!("https://{}:{}/v1/admin/{cmd}", n.address, n.agent_port);
            match client.post(&url).timeout(std::time::Duration::from_secs(5)).send().await {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("{}: the agent answered {}", n.name, r.status())),
                Err(e) => Some(format!("{}: no answer from {}:{} ({e})", n.name, n.address, n.agent_port)),
            }
        }
    });
    let failures: Vec<String> = futures::future::join_all(calls).await.into_iter().flatten().collect();
    db::environments::set_layer_paused(&st.pool, layer, paused).await?;
    let mut msg = format!("sync {} on {} node(s)", if paused { "paused" } else { "resumed" }, nodes.len() - failures.len());
    if !failures.is_empty() {
        msg.push_str(&format!("; not reached: {}", failures.join("; ")));
    }
    db::add_event(&st.pool, Some(env_id), &msg).await?;
    Ok(failures)
}

async fn enqueue_all(st: &AppState, env: Uuid, layer: Uuid, kind: &str) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::new();
    for n in db::environments::nodes(&st.pool, layer).await?.into_iter().filter(|n| !leaving(n)) {
        if db::jobs::node_has_queued(&st.pool, n.node_id, kind).await? {
            continue;
        }
        ids.push(db::jobs::enqueue(&st.pool, env, n.node_id, &n.name, kind).await?);
    }
    st.wake_jobs.notify_waiters();
    Ok(ids)
}

/// Install or reconfigure: validates against the manifest, stores the settings, queues one
/// job per node of the layer. In two-environment mode the shared password is sealed with
/// the control plane's secret key and kept apart from the settings; it is never shown back
/// (not in the API, not in the dialog, not in events). A reconfigure that leaves the
/// password empty keeps the stored one.
pub async fn submit_install(st: &AppState, env: Uuid, values: &HashMap<String, String>) -> Result<Outcome<Vec<Uuid>>, Error> {
    let layer = db::environments::cp_layer(&st.pool, env).await?;
    let existing = db::environments::installation(&st.pool, layer).await?;
    let stored = existing.as_ref().and_then(|i| i.password_secret.clone());
    let s = match st.manifest.validate_with(values, stored.is_some()) {
        Ok(s) => s,
        Err(e) => return Ok(Outcome::Invalid(e)),
    };
    let nodes = db::environments::nodes(&st.pool, layer).await?;
    if nodes.is_empty() {
        return invalid("nodes", "this environment has no nodes yet: add nodes first");
    }
    let kind = if existing.is_some() { "reconfigure" } else { "install" };
    let settings = settings_json(&s);
    let (password_secret, password_note) = match (&s.password, &stored) {
        _ if s.mode != "two_envs" => (None, None),
        (Some(p), Some(old)) if st.secrets.open(old).is_ok_and(|o| &o == p) => (stored.clone(), Some(PasswordNote::Unchanged)),
        (Some(p), old) => (Some(st.secrets.seal(p)?), Some(if old.is_some() { PasswordNote::Changed } else { PasswordNote::Set })),
        (None, old) => (old.clone(), Some(PasswordNote::Unchanged)),
    };
    let new = NewInstallation { mode: &s.mode, sync_path: &s.path, delay_seconds: s.delay as i32, settings, password_secret };
    db::environments::upsert_installation(&st.pool, layer, new, "installing").await?;
    db::add_event(&st.pool, Some(env), &install_event(kind, &s, password_note)).await?;
    Ok(Outcome::Done(enqueue_all(st, env, layer, kind).await?))
}

/// What happened to the shared password in a submission (for the event line, which never
/// carries the password itself).
#[derive(Clone, Copy, Debug, PartialEq)]
enum PasswordNote {
    Set,
    Changed,
    Unchanged,
}

/// The installation's settings as stored and shown by the API: everything but the password.
fn settings_json(s: &crate::control::manifest::Settings) -> serde_json::Value {
    serde_json::json!({"mode": s.mode, "path": s.path, "delay": s.delay, "address": s.address})
}

fn install_event(kind: &str, s: &crate::control::manifest::Settings, pw: Option<PasswordNote>) -> String {
    let mut m = format!("{kind}: path {} delay {} s", s.path, s.delay);
    if s.mode == "two_envs" {
        m.push_str(&format!(", two environments: linked with {}", s.address.as_deref().unwrap_or("?")));
        match pw {
            Some(PasswordNote::Set) => m.push_str(", shared password set"),
            Some(PasswordNote::Changed) => m.push_str(", shared password changed (the other environment needs the same new password)"),
            Some(PasswordNote::Unchanged) | None => m.push_str(", shared password unchanged"),
        }
    }
    m
}

pub async fn submit_uninstall(st: &AppState, env: Uuid) -> Result<Vec<Uuid>, Error> {
    let layer = db::environments::cp_layer(&st.pool, env).await?;
    db::environments::set_installation_state(&st.pool, layer, "uninstalling").await?;
    db::add_event(&st.pool, Some(env), "uninstall").await?;
    enqueue_all(st, env, layer, "uninstall").await
}

/// A new join token for the environment: returns the token (shown once) and its row.
pub async fn create_join_token(st: &AppState, env: Uuid, name: &str, valid_hours: i32) -> Result<Outcome<(String, db::join_tokens::JoinTokenRow)>, Error> {
    let name = if name.trim().is_empty() { "join token" } else { name.trim() };
    if name.len() > 100 {
        return invalid("name", "at most 100 characters");
    }
    if !(1..=24 * 30).contains(&valid_hours) {
        return invalid("valid_hours", "a whole number of hours from 1 to 720");
    }
    let token = format!("fsj_{}", super::auth::random_token(24));
    let row = db::join_tokens::create(&st.pool, env, name, &super::auth::token_hash(&token), valid_hours).await?;
    db::add_event(&st.pool, Some(env), &format!("join token {name:?} created, valid until {}", row.expires_at.date())).await?;
    Ok(Outcome::Done((token, row)))
}

/// What a cloned node's agent sends to enroll itself.
#[derive(serde::Deserialize, Debug)]
pub struct EnrollRequest {
    pub token: String,
    /// The node name found in the copied config (the node it was cloned from).
    pub clone_of: String,
    pub address: String,
    pub webroot: String,
    pub install_prefix: String,
    #[serde(default)]
    pub hostname: String,
}

/// Why an enrollment was refused, in words for both logs.
pub enum EnrollError {
    Refused(String),
    Invalid(String),
}

/// Enrolls a cloned node: checks the join token, records the clone as a new node of the
/// environment (its own name, address and, through the install job, its own certificate),
/// and queues installs so it gets its identity and every peer learns about it.
pub async fn enroll(st: &AppState, r: &EnrollRequest) -> Result<Result<(Uuid, String), EnrollError>, Error> {
    let Some((tok, expired)) = db::join_tokens::by_hash(&st.pool, &super::auth::token_hash(r.token.trim())).await? else {
        return Ok(Err(EnrollError::Refused("the join token is not valid for any environment (check it on the environment page)".into())));
    };
    if let Some(at) = tok.revoked_at {
        return Ok(Err(EnrollError::Refused(format!("the join token {:?} was revoked at {at}; create a new one on the environment page", tok.name))));
    }
    if expired {
        return Ok(Err(EnrollError::Refused(format!("the join token {:?} expired at {}; create a new one on the environment page", tok.name, tok.expires_at))));
    }
    let env_id = tok.environment_id;
    let env = db::environments::get(&st.pool, env_id).await?.ok_or_else(|| super::not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let nodes = db::environments::nodes(&st.pool, layer).await?;
    let Some(original) = nodes.iter().find(|n| n.name == r.clone_of) else {
        return Ok(Err(EnrollError::Invalid(format!("environment {} has no node {:?} to be a clone of", env.name, r.clone_of))));
    };
    if let Some(same) = nodes.iter().find(|n| n.address == r.address && n.install_prefix == r.install_prefix && n.webroot == r.webroot) {
        // The agent asked again (a restart before its install job ran): same answer.
        return Ok(Ok((same.node_id, same.name.clone())));
    }
    let name = format!("{}-clone-{}", r.clone_of.chars().take(50).collect::<String>(), &uuid::Uuid::new_v4().simple().to_string()[..4]);
    let f: HashMap<String, String> = [
        ("name", name.clone()),
        ("address", r.address.clone()),
        ("ssh_port", original.ssh_port.to_string()),
        ("ssh_user", original.ssh_user.clone()),
        ("agent_port", original.agent_port.to_string()),
        ("webroot", r.webroot.clone()),
        ("install_prefix", r.install_prefix.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    match add_nodes(st, &env, &[f]).await? {
        Outcome::Done(ids) => {
            db::join_tokens::used(&st.pool, tok.join_token_id).await?;
            let host = if r.hostname.is_empty() { String::new() } else { format!(", host {}", r.hostname) };
            db::add_event(&st.pool, Some(env_id), &format!("clone of {} enrolled as {name} ({}{host}) with join token {:?}", r.clone_of, r.address, tok.name)).await?;
            Ok(Ok((ids[0], name)))
        }
        Outcome::Invalid(e) => Ok(Err(EnrollError::Invalid(e.into_iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_stays_out_of_settings_and_events() {
        let m = crate::control::manifest::Manifest::load().unwrap();
        let pw = "s3cret \"quoted\" \\ pass";
        let f: HashMap<String, String> = [("mode", "two_envs"), ("address", "203.0.113.7:7756"), ("password", pw)].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let s = m.validate(&f).unwrap();
        assert_eq!(s.password.as_deref(), Some(pw));
        let json = settings_json(&s).to_string();
        assert!(!json.contains("s3cret") && json.contains("203.0.113.7:7756"), "{json}");
        for note in [Some(PasswordNote::Set), Some(PasswordNote::Changed), Some(PasswordNote::Unchanged), None] {
            let e = install_event("install", &s, note);
            assert!(!e.contains("s3cret") && e.contains("203.0.113.7:7756"), "{e}");
        }
        assert_eq!(install_event("install", &m.validate(&HashMap::new()).unwrap(), None), "install: path ROOT delay 10 s");
    }
}
