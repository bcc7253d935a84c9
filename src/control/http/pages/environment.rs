//! The environment page (nodes, the add-on dialog rendered from the manifest, join tokens,
//! live job progress, events) and the forms it posts.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::link::{LinkView, link_view};
use super::{ago, when};
use crate::control::AppState;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::manifest::Manifest;
use crate::control::ops::{self, FieldErrors, Outcome, tokens::parse_int};
use crate::control::state::{AgentState, JobState, Mode};

pub struct NodeView {
    pub id: Uuid,
    pub name: String,
    pub address: String,
    pub ssh: String,
    pub webroot: String,
    pub agent_state: String,
    /// The state as a CSS class name.
    pub state_class: String,
    /// Why the state is what it is, when that is not obvious (a node held paused).
    pub state_note: String,
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

pub struct JoinTokenView {
    pub id: Uuid,
    pub name: String,
    pub expires: String,
    pub uses: String,
    pub state: String,
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
    let rows = db::jobs::latest_per_node(&st.pool, env).await?;
    let summary = if rows.is_empty() {
        String::new()
    } else if rows.iter().any(|j| !j.state.finished()) {
        "in progress".into()
    } else if rows.iter().any(|j| j.state == JobState::Failed) {
        format!("failed on {} of {} nodes: see each node's reason below", rows.iter().filter(|j| j.state == JobState::Failed).count(), rows.len())
    } else {
        format!("succeeded on all {} nodes", rows.len())
    };
    let jobs = rows
        .into_iter()
        .map(|j| JobView {
            node_name: j.node_name,
            kind: j.kind.to_string(),
            state: j.state.to_string(),
            error: j.error.unwrap_or_default(),
            steps: j
                .steps
                .as_array()
                .map(|a| a.iter().map(|s| StepView { name: s["name"].as_str().unwrap_or("").into(), status: s["status"].as_str().unwrap_or("").into(), output: s["output"].as_str().unwrap_or("").into() }).collect())
                .unwrap_or_default(),
        })
        .collect();
    Ok(JobsData { jobs, summary })
}

/// The install dialog's fields with their current values. `current` is the stored settings
/// or a re-rendered submission; a password field's value is always empty.
pub(crate) fn dialog_fields(manifest: &Manifest, env_name: &str, node_names: &[&str], current: &HashMap<String, String>, dialog_errors: &FieldErrors, password_stored: bool) -> Vec<FieldView> {
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

pub async fn show(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    show_page(&st, user, id, HashMap::new(), FieldErrors::new(), FieldErrors::new(), String::new()).await
}

async fn show_page(st: &AppState, user: CurrentUser, id: Uuid, values: HashMap<String, String>, dialog_errors: FieldErrors, node_errors: FieldErrors, new_join_token: String) -> Result<Response, Error> {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, id).await?;
    let rows = db::nodes::list(&st.pool, layer).await?;
    let inst = db::environments::installation(&st.pool, layer).await?;
    let digests: Vec<&str> = rows.iter().filter_map(|n| n.status().map(|s| s.tree_digest.as_str()).filter(|d| !d.is_empty())).collect();
    let agree = if digests.len() == rows.len() && !rows.is_empty() && digests.iter().all(|d| *d == digests[0]) { "all nodes agree (same tree digest at last check)".into() } else { String::new() };
    let generation = inst.as_ref().map(|i| i.generation).unwrap_or(0);
    let nodes = rows
        .iter()
        .map(|n| NodeView {
            id: n.node_id,
            name: n.name.clone(),
            address: n.address.clone(),
            ssh: format!("{}@{}:{}", n.ssh_user, n.address, n.ssh_port),
            webroot: n.webroot.clone(),
            agent_state: n.agent_state.to_string(),
            state_class: n.agent_state.as_str().replace(' ', "-"),
            state_note: if n.agent_state == AgentState::Paused && n.config_generation < generation { "on the old sync path until a reconfigure reaches it".into() } else { String::new() },
            heartbeat: ago(n.last_heartbeat_at),
            lag: n.status().and_then(|s| s.max_lag_ms()).map(|ms| format!("{ms} ms")).unwrap_or_default(),
            digest: n.status().map(|s| s.tree_digest.chars().take(12).collect()).unwrap_or_default(),
            host_key: n.host_key_fingerprint.clone().unwrap_or_else(|| "not pinned yet".into()),
        })
        .collect();
    let stored_address = inst.as_ref().and_then(|i| i.settings.get("address")?.as_str().map(str::to_owned)).unwrap_or_default();
    let password_stored = inst.as_ref().is_some_and(|i| i.password_secret.is_some());
    let current: HashMap<String, String> = match &inst {
        Some(i) if values.is_empty() => [("mode", i.mode.to_string()), ("path", i.sync_path.clone()), ("delay", i.delay_seconds.to_string()), ("address", stored_address.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        // A re-rendered submission: everything as typed but the password, which is dropped
        // here so no later change can echo it back into the page.
        _ => values.into_iter().filter(|(k, _)| st.manifest.field(k).is_none_or(|f| f.kind != "password")).collect(),
    };
    let link = match &inst {
        Some(i) if i.mode == Mode::TwoEnvs => Some(link_view(&stored_address, &rows)),
        _ => None,
    };
    let node_names: Vec<&str> = rows.iter().map(|n| n.name.as_str()).collect();
    let dialog = dialog_fields(&st.manifest, &env.name, &node_names, &current, &dialog_errors, password_stored);
    let events = db::recent_events(&st.pool, id).await?.into_iter().map(|e| (ago(Some(e.created_at)), e.message)).collect();
    let status = if dialog_errors.is_empty() && node_errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let now = time::OffsetDateTime::now_utc();
    let join_tokens = db::join_tokens::list(&st.pool, id)
        .await?
        .into_iter()
        .map(|t| JoinTokenView {
            id: t.join_token_id,
            name: t.name,
            expires: when(t.expires_at),
            uses: format!("{} of {}", t.uses, t.max_uses),
            state: if t.revoked_at.is_some() {
                "revoked".into()
            } else if t.expires_at < now {
                "expired".into()
            } else if t.uses >= t.max_uses {
                "spent".into()
            } else {
                "valid".into()
            },
        })
        .collect();
    let page = EnvironmentPage {
        user,
        id,
        name: env.name,
        webroot: env.webroot,
        nodes,
        paused: db::environments::layer_paused(&st.pool, layer).await?,
        new_join_token,
        join_tokens,
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

pub async fn jobs(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    render(&JobsFragment { frag: jobs_fragment(&st, id).await? })
}

fn back(id: Uuid) -> Response {
    Redirect::to(&format!("/environments/{id}")).into_response()
}

pub async fn node_add(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    match ops::nodes::add_node(&st, &env, &f).await? {
        Outcome::Done(_) => Ok(back(id)),
        Outcome::Invalid(e) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), e, String::new()).await,
    }
}

pub async fn install(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    match ops::install::submit(&st, id, &f).await?.ok_or_else(|| not_found("environment"))? {
        Outcome::Done(_) => Ok(Redirect::to(&format!("/environments/{id}#progress")).into_response()),
        Outcome::Invalid(e) => show_page(&st, user, id, f, e, FieldErrors::new(), String::new()).await,
    }
}

pub async fn uninstall(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::uninstall(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Redirect::to(&format!("/environments/{id}#progress")).into_response())
}

pub async fn join_token_create(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let (hours, uses) = match (parse_int(f.get("valid_hours")), parse_int(f.get("max_uses"))) {
        (Ok(h), Ok(u)) => (h, u),
        (h, u) => {
            let e = [("valid_hours", h.err()), ("max_uses", u.err())].into_iter().filter_map(|(k, e)| Some((k.to_owned(), e?))).collect();
            return show_page(&st, user, id, HashMap::new(), FieldErrors::new(), e, String::new()).await;
        }
    };
    match ops::tokens::create_join_token(&st, id, f.get("name").map(String::as_str).unwrap_or(""), hours, uses).await? {
        Outcome::Done((token, _)) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), FieldErrors::new(), token).await,
        Outcome::Invalid(e) => show_page(&st, user, id, HashMap::new(), FieldErrors::new(), e, String::new()).await,
    }
}

pub async fn join_token_revoke(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = ops::tokens::revoke_join_token(&st, id).await?.ok_or_else(|| not_found("join token"))?;
    Ok(back(env))
}

pub async fn pause(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::set_paused(&st, id, true).await?.ok_or_else(|| not_found("environment"))?;
    Ok(back(id))
}

pub async fn resume(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::set_paused(&st, id, false).await?.ok_or_else(|| not_found("environment"))?;
    Ok(back(id))
}

pub async fn node_remove(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = ops::nodes::remove_node(&st, id).await?.ok_or_else(|| not_found("node"))?;
    Ok(back(env))
}

pub async fn node_forget_key(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::nodes::environment_of(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    db::nodes::unpin_host_key(&st.pool, id).await?;
    db::add_event(&st.pool, Some(env), "a node's pinned host key was forgotten by an operator").await?;
    Ok(back(env))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::http::pages::link::tests::node;

    #[test]
    fn the_rerendered_dialog_never_shows_the_password_and_node_text_is_escaped() {
        let m = Manifest::load().unwrap();
        let pw = "Sup3r-secret-pass\"<>";
        let submitted: HashMap<String, String> = [("mode", "two_envs"), ("address", "203.0.113.7"), ("password", pw), ("path", "ROOT")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let errors = m.validate(&submitted).unwrap_err();
        assert!(errors.contains_key("address"));
        let dialog = dialog_fields(&m, "env", &["web1"], &submitted, &errors, true);
        let rows = vec![node("web1", Some(serde_json::json!({"link": {"state": "refused", "leader": true, "remote": "<b>x</b>:1", "bytes_in": 0, "bytes_out": 0, "error": "the other side said <script>alert(1)</script>"}})))];
        let page = EnvironmentPage {
            user: CurrentUser { user_id: Uuid::nil(), username: "admin".into(), csrf: "c".into() },
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
