//! The add-on on a layer: install or reconfigure (the dialog, validated against the
//! manifest), uninstall, pause and resume.
//!
//! A change of the sync path is one coordinated operation (issue 11, item 12): the
//! installation starts a new generation (part of every agent's `folder_id`) and enters
//! `changing path`; every node is paused over mutual TLS; then every node is reconfigured
//! (its job re-pauses the agent it restarted); when the last job has ended the runner
//! resumes every node that reached the new generation (`jobs::phases`). A node that could
//! not be reached stays paused, shown as `paused`, and is reconfigured and resumed when it
//! answers again. Nothing in the old folder is deleted or moved.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::{Outcome, invalid};
use crate::control::AppState;
use crate::control::agent_api::{AdminCommand, AgentApi};
use crate::control::db::{self, NodeRow, environments::NewInstallation};
use crate::control::manifest::Settings;
use crate::control::secrets::Place;
use crate::control::state::{AgentState, InstallState, JobKind, Mode};

/// How long one agent may take to answer pause or resume.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Queues a job of `kind` on every node of the layer that is not leaving (and has none of
/// that kind waiting: it will read the latest settings when it runs).
pub async fn enqueue_all(st: &AppState, env: Uuid, layer: Uuid, kind: JobKind) -> anyhow::Result<Vec<Uuid>> {
    let mut ids = Vec::new();
    for n in db::nodes::list(&st.pool, layer).await?.into_iter().filter(|n| !n.agent_state.leaving()) {
        if db::jobs::node_has_queued(&st.pool, n.node_id, kind).await? {
            continue;
        }
        ids.push(db::jobs::enqueue(&st.pool, env, n.node_id, &n.name, kind).await?);
    }
    st.wake_jobs.notify_waiters();
    Ok(ids)
}

/// Sends `cmd` to each node's agent at once; one line per node that did not take it.
pub async fn command_all(st: &AppState, env: &db::EnvironmentRow, nodes: &[NodeRow], cmd: AdminCommand) -> anyhow::Result<Vec<(Uuid, String)>> {
    let client = crate::control::jobs::install::agent_client(st, env)?;
    let calls = nodes.iter().map(|n| {
        let api = AgentApi::new(client.clone(), &n.address, n.agent_port);
        async move { api.admin(cmd, ADMIN_TIMEOUT).await.err().map(|e| (n.node_id, format!("{}: {e}", n.name))) }
    });
    Ok(futures::future::join_all(calls).await.into_iter().flatten().collect())
}

/// Pause or resume sync on every node of the layer (around a redeploy). Returns one line
/// per node that could not be reached; None when there is no such environment.
pub async fn set_paused(st: &AppState, env_id: Uuid, paused: bool, by: &str) -> anyhow::Result<Option<Vec<String>>> {
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return Ok(None) };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    db::environments::set_layer_paused(&st.pool, layer, paused, by).await?;
    // Nodes held paused for a sync path change stay paused on resume.
    let nodes: Vec<NodeRow> = db::nodes::list(&st.pool, layer)
        .await?
        .into_iter()
        .filter(|n| matches!(n.agent_state, AgentState::Running | AgentState::Unreachable) || (paused && n.agent_state == AgentState::Paused))
        .collect();
    let failures: Vec<String> = command_all(st, &env, &nodes, if paused { AdminCommand::Pause } else { AdminCommand::Resume }).await?.into_iter().map(|(_, e)| e).collect();
    let mut msg = format!("sync {} on {} node(s) by {by}", if paused { "paused" } else { "resumed" }, nodes.len() - failures.len());
    if !failures.is_empty() {
        msg.push_str(&format!("; not reached: {}", failures.join("; ")));
    }
    db::add_event(&st.pool, Some(env_id), &msg).await?;
    Ok(Some(failures))
}

/// Install or reconfigure: validates against the manifest, stores the settings, queues one
/// job per node of the layer. In two-environment mode the shared password is sealed and
/// kept apart from the settings; it is never shown back (not in the API, the dialog or
/// events). A reconfigure that leaves the password empty keeps the stored one.
pub async fn submit(st: &AppState, env_id: Uuid, values: &HashMap<String, String>) -> anyhow::Result<Option<Outcome<Vec<Uuid>>>> {
    let Some(env) = db::environments::get(&st.pool, env_id).await? else { return Ok(None) };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let existing = db::environments::installation(&st.pool, layer).await?;
    let stored = existing.as_ref().and_then(|i| i.password_secret.clone());
    let s = match st.manifest.validate_with(values, stored.is_some()) {
        Ok(s) => s,
        Err(e) => return Ok(Some(Outcome::Invalid(e))),
    };
    let nodes = db::nodes::list(&st.pool, layer).await?;
    if nodes.is_empty() {
        return invalid("nodes", "this environment has no nodes yet: add nodes first").map(Some);
    }
    if existing.as_ref().is_some_and(|i| i.state == InstallState::ChangingPath) {
        return invalid("path", "a change of the sync path is still in progress; wait until every node has been reconfigured").map(Some);
    }
    let mode = Mode::parse(&s.mode).unwrap_or(Mode::OneEnv);
    let place = Place::installation_password(layer);
    let (password_secret, password_note) = match (&s.password, &stored) {
        _ if mode != Mode::TwoEnvs => (None, None),
        (Some(p), Some(old)) if st.secrets.open(old, &place).is_ok_and(|o| &o == p) => (stored.clone(), Some(PasswordNote::Unchanged)),
        (Some(p), old) => (Some(st.secrets.seal(p, &place)?), Some(if old.is_some() { PasswordNote::Changed } else { PasswordNote::Set })),
        (None, old) => (old.clone(), Some(PasswordNote::Unchanged)),
    };
    let old_path = existing.as_ref().map(|i| i.sync_path.clone()).filter(|p| *p != s.path);
    let kind = if existing.is_some() { JobKind::Reconfigure } else { JobKind::Install };
    let state = if old_path.is_some() { InstallState::ChangingPath } else { InstallState::Installing };
    let new = NewInstallation { mode, sync_path: &s.path, delay_seconds: s.delay as i32, settings: settings_json(&s), password_secret };
    let row = db::environments::upsert_installation(&st.pool, layer, new, state).await?;
    db::add_event(&st.pool, Some(env_id), &install_event(kind, &s, password_note)).await?;
    if let Some(old) = old_path {
        db::add_event(
            &st.pool,
            Some(env_id),
            &format!("sync path change {old} -> {} (generation {}): pausing every node, then reconfiguring, then resuming; nothing in {old} is deleted or moved", s.path, row.generation),
        )
        .await?;
        let held: Vec<NodeRow> = nodes.into_iter().filter(|n| n.agent_state.has_agent()).collect();
        let failures = command_all(st, &env, &held, AdminCommand::Pause).await?;
        let mut msg = format!("paused {} of {} node(s) for the path change", held.len() - failures.len(), held.len());
        if !failures.is_empty() {
            msg.push_str(&format!("; not reached over mutual TLS: {}", failures.iter().map(|(_, e)| e.as_str()).collect::<Vec<_>>().join("; ")));
        }
        db::add_event(&st.pool, Some(env_id), &msg).await?;
    }
    Ok(Some(Outcome::Done(enqueue_all(st, env_id, layer, kind).await?)))
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
fn settings_json(s: &Settings) -> serde_json::Value {
    let mut v = serde_json::json!({"mode": s.mode, "path": s.path, "delay": s.delay, "address": s.address});
    if let Some(o) = v.as_object_mut() {
        s.safety.to_stored(o);
    }
    v
}

fn install_event(kind: JobKind, s: &Settings, pw: Option<PasswordNote>) -> String {
    let mut m = format!("{kind}: path {} delay {} s", s.path, s.delay);
    if s.safety != crate::control::safety::SafetySettings::default() {
        m.push_str(&format!(", {}", s.safety.words()));
    }
    if s.mode == Mode::TwoEnvs.as_str() {
        m.push_str(&format!(", two environments: linked with {}", s.address.as_deref().unwrap_or("?")));
        match pw {
            Some(PasswordNote::Set) => m.push_str(", shared password set"),
            Some(PasswordNote::Changed) => m.push_str(", shared password changed (the other environment needs the same new password)"),
            Some(PasswordNote::Unchanged) | None => m.push_str(", shared password unchanged"),
        }
    }
    m
}

/// None when there is no such environment.
pub async fn uninstall(st: &AppState, env: Uuid) -> anyhow::Result<Option<Vec<Uuid>>> {
    if db::environments::get(&st.pool, env).await?.is_none() {
        return Ok(None);
    }
    let layer = db::environments::cp_layer(&st.pool, env).await?;
    db::environments::set_installation_state(&st.pool, layer, InstallState::Uninstalling).await?;
    db::add_event(&st.pool, Some(env), "uninstall").await?;
    Ok(Some(enqueue_all(st, env, layer, JobKind::Uninstall).await?))
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
            let e = install_event(JobKind::Install, &s, note);
            assert!(!e.contains("s3cret") && e.contains("203.0.113.7:7756"), "{e}");
        }
        assert_eq!(install_event(JobKind::Install, &m.validate(&HashMap::new()).unwrap(), None), "install: path ROOT delay 10 s");
    }

    #[test]
    fn the_dialog_validates_the_fields_with_clear_errors() {
        let m = crate::control::manifest::Manifest::load().unwrap();
        use crate::control::safety::SafetySettings;
        let form = |kv: &[(&str, &str)]| -> std::collections::HashMap<String, String> { kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() };
        assert_eq!(m.validate(&form(&[])).unwrap().safety, SafetySettings::default());
        let e = m.validate(&form(&[("versions_max_age_days", "0"), ("versions_max_mb", "lots"), ("mass_delete_files", "-1"), ("mass_delete_percent", "101")])).unwrap_err();
        assert!(e["versions_max_age_days"].contains("from 1 to 3650"), "{e:?}");
        assert!(e["versions_max_mb"].contains("whole number of MiB"), "{e:?}");
        assert!(e["mass_delete_files"].contains("from 0 to"), "{e:?}");
        assert!(e["mass_delete_percent"].contains("from 0 to 100"), "{e:?}");
        // With versions off their details are hidden: not checked, defaults kept.
        let s = m.validate(&form(&[("versions_keep", "off"), ("versions_max_age_days", "0"), ("mass_delete_files", "20")])).unwrap();
        assert_eq!(s.safety, SafetySettings { keep: false, mass_files: 20, ..SafetySettings::default() });
        let e = m.validate(&form(&[("versions_keep", "maybe")])).unwrap_err();
        assert!(e["versions_keep"].contains("on, off"), "{e:?}");
    }
}
