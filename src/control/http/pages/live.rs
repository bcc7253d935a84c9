//! The live part of the environment page: the sync state in words (from `ops::status`,
//! the same function the API and the events use), the node table with each node's own
//! state, health, last job and versions kept, the mass deletes held for an operator
//! (confirm / reject), and the cross-environment link. The page polls
//! `/environments/{id}/live` and swaps this fragment in when it changed, so the header,
//! badges and rows follow the agents without a reload.

use axum::extract::{Path, State};
use axum::response::Response;
use uuid::Uuid;

use super::ago;
use super::link::{LinkView, link_view};
use crate::control::AppState;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::ops::status::EnvStatus;
use crate::control::state::{AgentState, InstallState, JobState, Mode};

pub struct NodeView {
    pub id: Uuid,
    pub name: String,
    pub address: String,
    pub ssh: String,
    pub webroot: String,
    /// What the node's last job left it as (`running`, `failed`, `paused`, ...).
    pub agent_state: String,
    pub state_class: String,
    /// Why the state is what it is, when that is not obvious (a node held paused).
    pub state_note: String,
    /// The sync state in words, and as a class.
    pub sync: String,
    pub sync_class: String,
    /// Whether the agent answers.
    pub health: String,
    /// The last job's failure, if it failed.
    pub job_note: String,
    pub can_retry: bool,
    pub heartbeat: String,
    pub lag: String,
    pub digest: String,
    pub digest_full: String,
    pub host_key: String,
    pub host_key_full: String,
    pub conflicts: u64,
    /// Versions kept on the node: "12 · 3.4 MiB", "off", ...; the details as a title.
    pub versions: String,
    pub versions_title: String,
}

/// A mass delete held on some nodes, with what the operator decides.
pub struct HoldRowView {
    pub from: String,
    pub files: usize,
    pub entries: usize,
    pub since: String,
    pub on_nodes: String,
    pub sample: String,
}

pub struct LiveData {
    pub id: Uuid,
    pub state: String,
    pub state_class: String,
    pub headline: String,
    pub installation: String,
    pub installed: bool,
    pub paused: bool,
    pub nodes: Vec<NodeView>,
    pub conflicts: u64,
    pub link: Option<LinkView>,
    pub addon_name: String,
    pub webroot: String,
    pub holds: Vec<HoldRowView>,
    /// The safety nets' settings in words (empty when not installed).
    pub safety: String,
}

/// The versions cell of a node's row, from its last status.
fn versions_cell(n: &crate::control::db::NodeRow) -> (String, String) {
    let Some(v) = n.status().map(|s| &s.versions) else {
        return (String::new(), String::new());
    };
    if !v.enabled {
        return ("off".into(), v.stopped.clone().unwrap_or_else(|| "versions are off".into()));
    }
    let text = format!("{} · {}", v.count, super::human_bytes(v.bytes));
    let mut title = format!(
        "{} version(s) use {} of a {} cap; kept {}",
        v.count,
        super::human_bytes(v.bytes),
        super::human_bytes(v.cap_bytes),
        if v.max_age_secs >= 86_400 && v.max_age_secs % 86_400 == 0 { format!("{} day(s)", v.max_age_secs / 86_400) } else { crate::control::health::span(v.max_age_secs) }
    );
    if let Some(why) = &v.stopped {
        title.push_str(&format!("; not keeping new versions: {why}"));
        return (format!("{text} (not keeping)"), title);
    }
    (text, title)
}

/// `SHA256:AbCdEf…WxYz` for a fingerprint too long for a table.
pub fn short_fingerprint(fp: &str) -> String {
    match fp.strip_prefix("SHA256:") {
        Some(b) if b.chars().count() > 12 => format!("SHA256:{}…{}", b.chars().take(6).collect::<String>(), b.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect::<String>()),
        _ => fp.to_owned(),
    }
}

/// The installation in words; a failure on some nodes only is "degraded", not "failed".
fn installation_words(s: &EnvStatus) -> String {
    let Some(i) = &s.inst else { return String::new() };
    let jobs: Vec<_> = s.jobs.iter().filter(|j| s.nodes.iter().any(|n| Some(n.node_id) == j.node_id && !n.agent_state.leaving())).collect();
    let failed: Vec<&str> = jobs.iter().filter(|j| j.state == JobState::Failed).map(|j| j.node_name.as_str()).collect();
    let state = match i.state {
        InstallState::Failed if !failed.is_empty() && failed.len() < jobs.len() => format!("degraded (the last job failed on {})", failed.join(", ")),
        InstallState::Failed if !failed.is_empty() => format!("failed on every node ({})", failed.join(", ")),
        InstallState::Failed => "degraded (a node is held on the old sync path)".to_owned(),
        other => other.to_string(),
    };
    let mode = if i.mode == Mode::TwoEnvs { ", two environments" } else { "" };
    format!("{state} (path {}, delay {} s{mode})", i.sync_path, i.delay_seconds)
}

pub async fn live_data(st: &AppState, s: &EnvStatus) -> Result<LiveData, Error> {
    let generation = s.inst.as_ref().map(|i| i.generation).unwrap_or(0);
    // The largest lag measured while the node applied something in the last 10 minutes.
    let samples = db::reports::samples(&st.pool, s.layer.layer_id, 600.0).await?;
    let nodes = s
        .nodes
        .iter()
        .zip(&s.node_sync)
        .map(|(n, ns)| {
            let lag = samples.iter().filter(|x| x.node_id == n.node_id).filter_map(|x| x.lag_ms).max();
            let job = s.job_of(n);
            let fp = n.host_key_fingerprint.clone().unwrap_or_else(|| "not pinned yet".into());
            let digest_full = n.status().map(|x| x.tree_digest.clone()).unwrap_or_default();
            NodeView {
                id: n.node_id,
                name: n.name.clone(),
                address: n.address.clone(),
                ssh: format!("{}@{}:{}", n.ssh_user, n.address, n.ssh_port),
                webroot: n.webroot.clone(),
                agent_state: n.agent_state.to_string(),
                state_class: n.agent_state.as_str().replace(' ', "-"),
                state_note: if n.agent_state == AgentState::Paused && n.config_generation < generation { "on the old sync path until a reconfigure reaches it".into() } else { String::new() },
                sync: ns.label.clone(),
                sync_class: ns.state.class(),
                health: match n.health {
                    crate::control::state::Health::Up if ns.reachable => "agent answers".into(),
                    crate::control::state::Health::Unknown => "not asked yet".into(),
                    _ => "agent does not answer".into(),
                },
                job_note: ns.job_note.clone(),
                can_retry: job.is_some_and(|j| j.state == JobState::Failed) && s.inst.is_some() && !n.agent_state.leaving(),
                heartbeat: ago(n.last_heartbeat_at),
                lag: lag.map(|l| format!("{l} ms")).unwrap_or_else(|| "idle".into()),
                digest: digest_full.chars().take(8).collect(),
                digest_full,
                host_key: short_fingerprint(&fp),
                host_key_full: fp,
                conflicts: n.report().map(|r| r.conflicts).unwrap_or(0),
                versions: versions_cell(n).0,
                versions_title: versions_cell(n).1,
            }
        })
        .collect::<Vec<_>>();
    let stored_address = s.inst.as_ref().and_then(|i| i.settings.get("address")?.as_str().map(str::to_owned)).unwrap_or_default();
    let link = match &s.inst {
        Some(i) if i.mode == Mode::TwoEnvs => Some(link_view(&stored_address, &s.nodes)),
        _ => None,
    };
    let now = time::OffsetDateTime::now_utc();
    let holds = crate::control::ops::holds::held(s)
        .into_iter()
        .map(|h| HoldRowView {
            since: time::OffsetDateTime::from_unix_timestamp(h.since).map(|t| crate::control::health::clock(t, now)).unwrap_or_default(),
            on_nodes: h.on_nodes.join(", "),
            sample: h.sample.join(", "),
            from: h.from,
            files: h.files,
            entries: h.entries,
        })
        .collect();
    Ok(LiveData {
        holds,
        safety: s.inst.as_ref().map(|i| crate::control::safety::SafetySettings::from_stored(&i.settings).words()).unwrap_or_default(),
        id: s.env.environment_id,
        state: s.sync.state.as_str().to_owned(),
        state_class: s.sync.state.class(),
        headline: s.sync.headline.clone(),
        installation: installation_words(s),
        installed: s.inst.is_some(),
        paused: s.layer.paused,
        conflicts: nodes.iter().map(|n| n.conflicts).max().unwrap_or(0),
        nodes,
        link,
        addon_name: st.manifest.name.clone(),
        webroot: s.env.webroot.clone(),
    })
}

#[derive(askama::Template)]
#[template(path = "environments/live.html")]
pub struct LiveFragment {
    pub user: CurrentUser,
    pub live: LiveData,
}

pub async fn live(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let s = crate::control::ops::status::load(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    render(&LiveFragment { user, live: live_data(&st, &s).await? })
}
