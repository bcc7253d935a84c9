//! Dashboard pages (askama). Handlers build view models from rows; templates only loop
//! and print (escaped by askama; `|safe` is never used on user or node data).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::actions::{self, Outcome};
use super::auth::CurrentUser;
use super::{Error, ago, not_found, render};
use crate::control::AppState;
use crate::control::db;
use crate::control::manifest::FieldErrors;

pub struct EnvView {
    pub id: Uuid,
    pub name: String,
    pub webroot: String,
}

#[derive(askama::Template)]
#[template(path = "environments/list.html")]
pub struct EnvironmentListPage {
    pub user: CurrentUser,
    pub envs: Vec<EnvView>,
    pub errors: FieldErrors,
    pub public_key: String,
}

impl EnvironmentListPage {
    fn err(&self, f: &str) -> String {
        self.errors.get(f).cloned().unwrap_or_default()
    }
}

pub async fn environments_list(State(st): State<AppState>, user: CurrentUser) -> Result<Response, Error> {
    list_page(&st, user, FieldErrors::new()).await
}

async fn list_page(st: &AppState, user: CurrentUser, errors: FieldErrors) -> Result<Response, Error> {
    let envs = db::environments::list(&st.pool).await?.into_iter().map(|e| EnvView { id: e.environment_id, name: e.name, webroot: e.webroot }).collect();
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut r = render(&EnvironmentListPage { user, envs, errors, public_key: st.ssh_public_key.clone() })?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn environment_create(State(st): State<AppState>, user: CurrentUser, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    match actions::create_environment(&st, get("name"), get("webroot")).await? {
        Outcome::Done(id) => Ok(Redirect::to(&format!("/environments/{id}")).into_response()),
        Outcome::Invalid(e) => list_page(&st, user, e).await,
    }
}

pub struct NodeView {
    pub id: Uuid,
    pub name: String,
    pub address: String,
    pub ssh: String,
    pub webroot: String,
    pub agent_state: String,
    pub heartbeat: String,
    /// The largest replication lag the agent measured from its peers' last changes.
    pub lag: String,
    pub digest: String,
    pub host_key: String,
}

/// The cross-environment link of a two-environment installation, as the nodes reported it
/// in their last heartbeat (`link` in `/v1/status`).
pub struct LinkView {
    /// The other environment's address from the add-on settings.
    pub remote: String,
    pub nodes: Vec<LinkNodeView>,
    /// One line for the whole environment ("connected through web1", ...).
    pub summary: String,
}

pub struct LinkNodeView {
    pub name: String,
    pub state: String,
    pub role: String,
    pub remote: String,
    pub serving_node: String,
    pub last_exchange: String,
    pub latency: String,
    pub bytes_in: String,
    pub bytes_out: String,
    pub error: String,
}

/// Builds the link table from node rows (pure: the heartbeat already stored the status).
pub fn link_view(remote: &str, rows: &[db::NodeRow]) -> LinkView {
    let nodes: Vec<LinkNodeView> = rows
        .iter()
        .filter(|n| !actions::leaving(n))
        .map(|n| {
            let l = n.last_status.as_ref().and_then(|s| s.get("link")).filter(|l| l.is_object());
            let Some(l) = l else {
                let state = if n.last_status.is_some() { "no link (agent without link support, or not configured yet)" } else { "no report yet" };
                return LinkNodeView {
                    name: n.name.clone(),
                    state: state.into(),
                    role: String::new(),
                    remote: String::new(),
                    serving_node: String::new(),
                    last_exchange: String::new(),
                    latency: String::new(),
                    bytes_in: String::new(),
                    bytes_out: String::new(),
                    error: String::new(),
                };
            };
            let text = |k: &str| l.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let leader = l.get("leader").and_then(|v| v.as_bool()).unwrap_or(false);
            let state = text("state");
            let role = if leader {
                "carries the link".to_owned()
            } else if state == "standby" {
                "standby (another node carries the link)".to_owned()
            } else {
                String::new()
            };
            LinkNodeView {
                name: n.name.clone(),
                state,
                role,
                remote: text("remote"),
                serving_node: text("serving_node"),
                last_exchange: l.get("last_exchange").and_then(|v| v.as_i64()).and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()).map(|t| ago(Some(t))).unwrap_or_else(|| "never".into()),
                latency: l.get("latency_ms").and_then(|v| v.as_f64()).map(|ms| format!("{ms:.0} ms")).unwrap_or_default(),
                bytes_in: l.get("bytes_in").and_then(|v| v.as_u64()).map(human_bytes).unwrap_or_default(),
                bytes_out: l.get("bytes_out").and_then(|v| v.as_u64()).map(human_bytes).unwrap_or_default(),
                error: text("error"),
            }
        })
        .collect();
    let carrier = nodes.iter().find(|n| n.state == "connected" && n.role == "carries the link");
    let summary = if let Some(c) = carrier {
        if c.serving_node.is_empty() { format!("connected through {}", c.name) } else { format!("connected through {} (with {} on the other side)", c.name, c.serving_node) }
    } else if let Some(r) = nodes.iter().find(|n| n.state == "refused") {
        format!("refused: {}", if r.error.is_empty() { "the two environments were given different passwords" } else { &r.error })
    } else if let Some(p) = nodes.iter().find(|n| n.state == "pairing") {
        format!("pairing ({})", p.name)
    } else if let Some(u) = nodes.iter().find(|n| n.state == "unreachable") {
        format!("not connected: {}", if u.error.is_empty() { format!("no answer from {remote}") } else { u.error.clone() })
    } else {
        "no node reports the link yet".into()
    };
    LinkView { remote: remote.to_owned(), nodes, summary }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

pub struct FieldView {
    pub name: String,
    pub kind: String,
    pub caption: String,
    pub value: String,
    pub tooltip: String,
    pub error: String,
    pub required: bool,
    pub choices: Vec<(String, String, bool)>,
    pub show_if: String,
    pub hidden: bool,
}

pub struct StepView {
    pub name: String,
    pub status: String,
    pub output: String,
}

pub struct JobView {
    pub node_name: String,
    pub kind: String,
    pub state: String,
    pub error: String,
    pub steps: Vec<StepView>,
}

#[derive(askama::Template)]
#[template(path = "environments/show.html")]
pub struct EnvironmentPage {
    pub user: CurrentUser,
    pub id: Uuid,
    pub name: String,
    pub webroot: String,
    pub nodes: Vec<NodeView>,
    pub installation: String,
    /// Sync of the layer is paused (around a redeploy).
    pub paused: bool,
    /// A join token just created: shown this once.
    pub new_join_token: String,
    pub join_tokens: Vec<JoinTokenView>,
    pub agree: String,
    pub dialog: Vec<FieldView>,
    pub addon_name: String,
    pub addon_description: String,
    pub node_errors: FieldErrors,
    pub frag: JobsData,
    pub events: Vec<(String, String)>,
    /// Two-environment installations only.
    pub link: Option<LinkView>,
}

impl EnvironmentPage {
    fn node_err(&self, f: &str) -> String {
        self.node_errors.get(f).cloned().unwrap_or_default()
    }
}

#[derive(askama::Template)]
#[template(path = "environments/jobs.html")]
pub struct JobsFragment {
    pub frag: JobsData,
}

pub struct JobsData {
    pub jobs: Vec<JobView>,
    pub summary: String,
}

async fn jobs_fragment(st: &AppState, env: Uuid) -> Result<JobsData, Error> {
    let jobs: Vec<JobView> = db::jobs::latest_per_node(&st.pool, env)
        .await?
        .into_iter()
        .map(|j| JobView {
            node_name: j.node_name,
            kind: j.kind,
            state: j.state,
            error: j.error.unwrap_or_default(),
            steps: j
                .steps
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| StepView {
                            name: s["name"].as_str().unwrap_or("").into(),
                            status: s["status"].as_str().unwrap_or("").into(),
                            output: s["output"].as_str().unwrap_or("").into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    let summary = if jobs.is_empty() {
        String::new()
    } else if jobs.iter().any(|j| j.state == "queued" || j.state == "running") {
        "in progress".into()
    } else if jobs.iter().any(|j| j.state == "failed") {
        format!("failed on {} of {} nodes: see each node's reason below", jobs.iter().filter(|j| j.state == "failed").count(), jobs.len())
    } else {
        format!("succeeded on all {} nodes", jobs.len())
    };
    Ok(JobsData { jobs, summary })
}

/// The install dialog's fields with their current values. `current` is the stored settings
/// or a re-rendered submission; a password field's value is always empty.
fn dialog_fields(manifest: &crate::control::manifest::Manifest, env_name: &str, node_names: &[&str], current: &HashMap<String, String>, dialog_errors: &FieldErrors, password_stored: bool) -> Vec<FieldView> {
    manifest
        .settings
        .iter()
        .map(|f| {
            let value = match f.kind.as_str() {
                "environment" => env_name.to_owned(),
                "nodes" => node_names.join(", "),
                "password" => String::new(),
                _ => current.get(&f.name).cloned().or_else(|| f.default.clone()).unwrap_or_default(),
            };
            FieldView {
                choices: f.values.iter().map(|c| (c.value.clone(), c.caption.clone(), c.value == value)).collect(),
                show_if: f.show_if.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                hidden: !manifest.visible(f, current),
                name: f.name.clone(),
                kind: f.kind.clone(),
                caption: f.caption.clone(),
                tooltip: if f.kind == "password" && password_stored {
                    "A shared password is stored (never shown). Leave this empty to keep it, or type a new one in both environments.".into()
                } else {
                    f.tooltip.clone().unwrap_or_default()
                },
                error: dialog_errors.get(&f.name).cloned().unwrap_or_default(),
                required: f.required,
                value,
            }
        })
        .collect()
}

pub async fn environment_show(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    show_page(&st, user, id, HashMap::new(), FieldErrors::new(), FieldErrors::new(), String::new()).await
}

async fn show_page(st: &AppState, user: CurrentUser, id: Uuid, values: HashMap<String, String>, dialog_errors: FieldErrors, node_errors: FieldErrors, new_join_token: String) -> Result<Response, Error> {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, id).await?;
    let rows = db::environments::nodes(&st.pool, layer).await?;
    let inst = db::environments::installation(&st.pool, layer).await?;
    let digests: Vec<String> = rows.iter().filter_map(|n| n.last_status.as_ref()?.get("tree_digest")?.as_str().map(str::to_owned)).collect();
    let agree = if digests.len() == rows.len() && !rows.is_empty() && digests.iter().all(|d| d == &digests[0]) { "all nodes agree (same tree digest at last check)".into() } else { String::new() };
    let nodes = rows
        .iter()
        .map(|n| NodeView {
            id: n.node_id,
            name: n.name.clone(),
            address: n.address.clone(),
            ssh: format!("{}@{}:{}", n.ssh_user, n.address, n.ssh_port),
            webroot: n.webroot.clone(),
            agent_state: n.agent_state.clone(),
            heartbeat: ago(n.last_heartbeat_at),
            lag: n
                .last_status
                .as_ref()
                .and_then(|s| s.get("peers")?.as_object()?.values().filter_map(|p| p.get("lag_ms")?.as_u64()).max())
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_default(),
            digest: n.last_status.as_ref().and_then(|s| s.get("tree_digest")?.as_str().map(|d| d.chars().take(12).collect())).unwrap_or_default(),
            host_key: n.host_key_fingerprint.clone().unwrap_or_else(|| "not pinned yet".into()),
        })
        .collect();
    let stored_address = inst.as_ref().and_then(|i| i.settings.get("address")?.as_str().map(str::to_owned)).unwrap_or_default();
    let password_stored = inst.as_ref().is_some_and(|i| i.password_secret.is_some());
    let current: HashMap<String, String> = match &inst {
        Some(i) if values.is_empty() => [("mode", i.mode.clone()), ("path", i.sync_path.clone()), ("delay", i.delay_seconds.to_string()), ("address", stored_address.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        // A re-rendered submission: everything as typed but the password, which is dropped
        // here so no later change can echo it back into the page.
        _ => values.into_iter().filter(|(k, _)| st.manifest.field(k).is_none_or(|f| f.kind != "password")).collect(),
    };
    let link = match &inst {
        Some(i) if i.mode == "two_envs" => Some(link_view(&stored_address, &rows)),
        _ => None,
    };
    let node_names: Vec<&str> = rows.iter().map(|n| n.name.as_str()).collect();
    let dialog = dialog_fields(&st.manifest, &env.name, &node_names, &current, &dialog_errors, password_stored);
    let events = db::recent_events(&st.pool, id).await?.into_iter().map(|e| (ago(Some(e.created_at)), e.message)).collect();
    let status = if dialog_errors.is_empty() && node_errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let page = EnvironmentPage {
        user,
        id,
        name: env.name,
        webroot: env.webroot,
        nodes,
        paused: db::environments::layer_paused(&st.pool, layer).await?,
        new_join_token,
        join_tokens: db::join_tokens::list(&st.pool, id)
            .await?
            .into_iter()
            .map(|t| JoinTokenView {
                id: t.join_token_id,
                name: t.name,
                expires: t.expires_at.date().to_string(),
                uses: t.uses,
                state: if t.revoked_at.is_some() { "revoked".into() } else if t.expires_at < time::OffsetDateTime::now_utc() { "expired".into() } else { "valid".into() },
            })
            .collect(),
        installation: inst.map(|i| format!("{} (path {}, delay {} s)", i.state, i.sync_path, i.delay_seconds)).unwrap_or_default(),
        agree,
        dialog,
        addon_name: st.manifest.name.clone(),
        addon_description: st.manifest.description.clone(),
        node_errors,
        frag: jobs_fragment(st, id).await?,
        events,
        link,
    };
    let mut r = render(&page)?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn environment_jobs_fragment(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    render(&JobsFragment { frag: jobs_fragment(&st, id).await? })
}

pub async fn node_add(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    match actions::add_node(&st, &env, &f).await? {
        Outcome::Done(_) => Ok(Redirect::to(&format!("/environments/{id}")).into_response()),
        Outcome::Invalid(e) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), e, String::new()).await,
    }
}

pub async fn install_submit(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    match actions::submit_install(&st, id, &f).await? {
        Outcome::Done(_) => Ok(Redirect::to(&format!("/environments/{id}#progress")).into_response()),
        Outcome::Invalid(e) => show_page(&st, user, id, f, e, FieldErrors::new(), String::new()).await,
    }
}

pub async fn uninstall_submit(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    actions::submit_uninstall(&st, id).await?;
    Ok(Redirect::to(&format!("/environments/{id}#progress")).into_response())
}

pub struct JoinTokenView {
    pub id: Uuid,
    pub name: String,
    pub expires: String,
    pub uses: i32,
    pub state: String,
}

pub async fn join_token_create(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let hours = f.get("valid_hours").and_then(|h| h.trim().parse::<i32>().ok()).unwrap_or(0);
    match actions::create_join_token(&st, id, f.get("name").map(String::as_str).unwrap_or(""), hours).await? {
        Outcome::Done((token, _)) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), FieldErrors::new(), token).await,
        Outcome::Invalid(e) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), e, String::new()).await,
    }
}

pub async fn join_token_revoke(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::join_tokens::revoke(&st.pool, id).await?.ok_or_else(|| not_found("join token"))?;
    db::add_event(&st.pool, Some(env), "a join token was revoked").await?;
    Ok(Redirect::to(&format!("/environments/{env}")).into_response())
}

pub async fn pause_submit(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    actions::set_paused(&st, id, true).await?;
    Ok(Redirect::to(&format!("/environments/{id}")).into_response())
}

pub async fn resume_submit(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    actions::set_paused(&st, id, false).await?;
    Ok(Redirect::to(&format!("/environments/{id}")).into_response())
}

pub async fn node_remove(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = actions::remove_node(&st, id).await?.ok_or_else(|| not_found("node"))?;
    Ok(Redirect::to(&format!("/environments/{env}")).into_response())
}

pub async fn node_forget_key(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::environments::node_environment(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    db::environments::unpin_host_key(&st.pool, id).await?;
    db::add_event(&st.pool, Some(env), "a node's pinned host key was forgotten by an operator").await?;
    Ok(Redirect::to(&format!("/environments/{env}")).into_response())
}

pub struct LogView {
    pub log: String,
    pub status: String,
    pub agent_status: String,
    pub error: String,
}

/// The node's lsyncd.log tail and lsyncd.status over SSH (works with the agent down), and
/// the agent's /v1/status over mutual TLS when it answers.
pub async fn node_log_view(st: &AppState, node: &db::NodeRow) -> LogView {
    let (log, status, mut error) = match crate::control::jobs::install::read_logs(st, node, 200).await {
        Ok((l, s)) => (l, s, String::new()),
        Err(e) => (String::new(), String::new(), format!("cannot read the log files over SSH: {e}")),
    };
    let mut agent_status = String::new();
    if let Ok(Some(env_id)) = db::environments::node_environment(&st.pool, node.node_id).await
        && let Ok(Some(env)) = db::environments::get(&st.pool, env_id).await
        && let Ok(client) = crate::control::jobs::install::agent_client(st, &env)
    {
        let url = format!("https://{}:{}/v1/status", node.address, node.agent_port);
        match client.get(&url).timeout(std::time::Duration::from_secs(3)).send().await {
            Ok(r) => match r.json::<serde_json::Value>().await {
                Ok(v) => {
                    let _ = db::environments::record_heartbeat(&st.pool, node.node_id, &v).await;
                    agent_status = serde_json::to_string_pretty(&v).unwrap_or_default();
                }
                Err(e) => agent_status = format!("(agent answered something that is not status JSON: {e})"),
            },
            Err(_) => agent_status = "(the agent does not answer; the files above are read over SSH)".into(),
        }
    }
    if error.is_empty() && log.is_empty() {
        error = "lsyncd.log is empty or missing".into();
    }
    LogView { log, status, agent_status, error }
}

#[derive(askama::Template)]
#[template(path = "nodes/logs.html")]
pub struct NodeLogsPage {
    pub user: CurrentUser,
    pub id: Uuid,
    pub env_id: Uuid,
    pub name: String,
    pub address: String,
    pub view: LogView,
}

#[derive(askama::Template)]
#[template(path = "nodes/logs_live.html")]
pub struct LogsFragment {
    pub view: LogView,
}

pub async fn node_logs(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::environments::node(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let env_id = db::environments::node_environment(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let view = node_log_view(&st, &node).await;
    render(&NodeLogsPage { user, id, env_id, name: node.name, address: node.address, view })
}

pub async fn node_logs_fragment(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::environments::node(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    render(&LogsFragment { view: node_log_view(&st, &node).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, status: Option<serde_json::Value>) -> db::NodeRow {
        db::NodeRow {
            node_id: Uuid::new_v4(),
            layer_id: Uuid::nil(),
            name: name.into(),
            address: "10.0.0.1".into(),
            ssh_port: 22,
            ssh_user: "root".into(),
            webroot: "/w".into(),
            install_prefix: "/p".into(),
            agent_port: 7755,
            host_key: None,
            host_key_fingerprint: None,
            agent_state: "running".into(),
            last_heartbeat_at: None,
            last_status: status,
        }
    }

    #[test]
    fn link_table_in_words() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let rows = vec![
            node("web1", Some(serde_json::json!({"link": {"state": "connected", "leader": true, "remote": "203.0.113.7:7756", "serving_node": "ams1", "last_exchange": now - 5, "latency_ms": 81.4, "bytes_in": 2048, "bytes_out": 3 * 1024 * 1024, "error": null}}))),
            node("web2", Some(serde_json::json!({"link": {"state": "standby", "leader": false, "remote": "203.0.113.7:7756", "serving_node": null, "last_exchange": null, "latency_ms": null, "bytes_in": 0, "bytes_out": 0, "error": null}}))),
            node("web3", None),
            node("web4", Some(serde_json::json!({"link": null}))),
        ];
        let v = link_view("203.0.113.7:7756", &rows);
        assert_eq!(v.summary, "connected through web1 (with ams1 on the other side)");
        let w1 = &v.nodes[0];
        assert_eq!((w1.state.as_str(), w1.role.as_str(), w1.latency.as_str(), w1.bytes_in.as_str(), w1.bytes_out.as_str()), ("connected", "carries the link", "81 ms", "2.0 KiB", "3.0 MiB"));
        assert!(w1.last_exchange.ends_with("s ago"), "{}", w1.last_exchange);
        assert_eq!((v.nodes[1].role.as_str(), v.nodes[1].last_exchange.as_str()), ("standby (another node carries the link)", "never"));
        assert_eq!(v.nodes[2].state, "no report yet");
        assert!(v.nodes[3].state.starts_with("no link"));

        let refused = vec![node("web1", Some(serde_json::json!({"link": {"state": "refused", "leader": true, "remote": "x:1", "bytes_in": 0, "bytes_out": 0, "error": "the other environment refused the password"}})))];
        assert_eq!(link_view("x:1", &refused).summary, "refused: the other environment refused the password");
    }

    #[test]
    fn the_rerendered_dialog_never_shows_the_password_and_node_text_is_escaped() {
        let m = crate::control::manifest::Manifest::load().unwrap();
        let pw = "Sup3r-secret-pass\"<>";
        let submitted: HashMap<String, String> = [("mode", "two_envs"), ("address", "203.0.113.7"), ("password", pw), ("path", "ROOT")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let errors = m.validate(&submitted).unwrap_err();
        assert!(errors.contains_key("address"));
        let dialog = dialog_fields(&m, "env", &["web1"], &submitted, &errors, true);
        let rows = vec![node(
            "web1",
            Some(serde_json::json!({"link": {"state": "refused", "leader": true, "remote": "<b>x</b>:1", "bytes_in": 0, "bytes_out": 0, "error": "the other side said <script>alert(1)</script>"}})),
        )];
        let page = EnvironmentPage {
            user: CurrentUser { username: "admin".into(), csrf: "c".into() },
            id: Uuid::nil(),
            name: "env".into(),
            webroot: "/w".into(),
            nodes: vec![],
            installation: "installed (path ROOT, delay 10 s)".into(),
            paused: false,
            new_join_token: String::new(),
            join_tokens: vec![],
            agree: String::new(),
            dialog,
            addon_name: "File Synchronization".into(),
            addon_description: String::new(),
            node_errors: FieldErrors::new(),
            frag: JobsData { jobs: vec![], summary: String::new() },
            events: vec![],
            link: Some(link_view("<b>x</b>:1", &rows)),
        };
        let html = askama::Template::render(&page).unwrap();
        assert!(!html.contains("Sup3r-secret"), "the password was echoed into the page");
        assert!(html.contains("id=\"error-address\""), "{html}");
        assert!(html.contains("A shared password is stored"));
        // The typed address is kept for correction; node text is escaped.
        assert!(html.contains("value=\"203.0.113.7\""));
        assert!(html.contains("Cross-environment link") && html.contains("&#60;script&#62;alert(1)&#60;/script&#62;") && !html.contains("<script>alert"));
        assert!(html.contains("&#60;b&#62;x&#60;/b&#62;:1") && !html.contains("<b>x</b>"));
    }
}
