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
    let current: HashMap<String, String> = match &inst {
        Some(i) if values.is_empty() => [("mode", i.mode.clone()), ("path", i.sync_path.clone()), ("delay", i.delay_seconds.to_string())].into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        _ => values,
    };
    let dialog = st
        .manifest
        .settings
        .iter()
        .map(|f| {
            let value = match f.kind.as_str() {
                "environment" => env.name.clone(),
                "nodes" => rows.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", "),
                "password" => String::new(),
                _ => current.get(&f.name).cloned().or_else(|| f.default.clone()).unwrap_or_default(),
            };
            FieldView {
                choices: f.values.iter().map(|c| (c.value.clone(), c.caption.clone(), c.value == value)).collect(),
                show_if: f.show_if.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                hidden: !st.manifest.visible(f, &current),
                name: f.name.clone(),
                kind: f.kind.clone(),
                caption: f.caption.clone(),
                tooltip: f.tooltip.clone().unwrap_or_default(),
                error: dialog_errors.get(&f.name).cloned().unwrap_or_default(),
                required: f.required,
                value,
            }
        })
        .collect();
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
