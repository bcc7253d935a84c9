//! The environment page (the live status and node table from `live`, the add-on dialog
//! from `dialog`, recent changes, verify and repair, charts, join tokens, live job
//! progress, events) and the forms it posts. Every form that fails validation re-renders
//! the page with what was typed; a GET on a form's URL (a reload after an error) comes
//! back to the page instead of answering 405.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::charts::{self, Charts};
use super::dialog::{FieldView, dialog_fields, error_summary};
use super::live::{LiveData, live_data};
use super::{ago, changes, checks, when};
use crate::control::AppState;
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};
use crate::control::ops::{self, FieldErrors, Outcome, tokens::parse_int};
use crate::control::safety::SafetySettings;
use crate::control::state::JobState;

pub struct StepView {
    pub name: String,
    /// `running`, `ok`, `changed` or `failed` (the CSS class).
    pub status: String,
    /// The status in words: `changed` reads "done".
    pub word: String,
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

/// The Add-node form: what was typed (after a refusal) or defaults taken from the nodes the
/// environment already has (their common SSH port, user, webroot and install prefix).
pub struct NodeForm {
    pub name: String,
    pub address: String,
    pub ssh_port: String,
    pub ssh_user: String,
    pub webroot: String,
    pub install_prefix: String,
}

#[derive(askama::Template)]
#[template(path = "environments/show.html")]
pub struct EnvironmentPage {
    pub user: CurrentUser,
    pub id: Uuid,
    pub name: String,
    pub webroot: String,
    pub live: LiveData,
    /// A confirmation after a form was accepted ("Install queued ...").
    pub notice: String,
    /// A join token just created: shown this once.
    pub new_join_token: String,
    pub join_tokens: Vec<JoinTokenView>,
    pub dialog: Vec<FieldView>,
    pub dialog_summary: Vec<(String, String, String)>,
    pub dialog_open: bool,
    pub addon_name: String,
    pub addon_description: String,
    pub node_form: NodeForm,
    pub node_errors: FieldErrors,
    pub frag: JobsData,
    pub events: Vec<(String, String)>,
    pub changes: Vec<changes::ChangeView>,
    pub checks: Vec<checks::CheckView>,
    pub charts: Charts,
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

/// A step's status in words: `changed` reads "done" (the step did something).
fn step_word(s: &str) -> String {
    match s {
        "changed" => "done".into(),
        other => other.into(),
    }
}

async fn jobs_fragment(st: &AppState, env: Uuid) -> Result<JobsData, Error> {
    let rows = db::jobs::latest_per_node(&st.pool, env).await?;
    let failed: Vec<&str> = rows.iter().filter(|j| j.state == JobState::Failed).map(|j| j.node_name.as_str()).collect();
    let summary = if rows.is_empty() {
        String::new()
    } else if rows.iter().any(|j| !j.state.finished()) {
        "in progress".into()
    } else if !failed.is_empty() && failed.len() < rows.len() {
        format!("degraded: succeeded on {} of {} nodes, failed on {} (see the reason below; Retry on the node's row)", rows.len() - failed.len(), rows.len(), failed.join(", "))
    } else if !failed.is_empty() {
        format!("failed on all {} nodes: see each node's reason below", rows.len())
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
                .map(|a| {
                    a.iter()
                        .map(|s| StepView {
                            name: s["name"].as_str().unwrap_or("").into(),
                            status: s["status"].as_str().unwrap_or("").into(),
                            word: step_word(s["status"].as_str().unwrap_or("")),
                            output: s["output"].as_str().unwrap_or("").into(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(JobsData { jobs, summary })
}

/// The Add-node defaults: what every existing node has in common, else the usual values.
fn node_defaults(env_webroot: &str, rows: &[db::NodeRow], typed: &HashMap<String, String>) -> NodeForm {
    let common = |f: &dyn Fn(&db::NodeRow) -> String, fallback: &str| -> String {
        let mut vals: Vec<String> = rows.iter().filter(|n| !n.agent_state.leaving()).map(f).collect();
        vals.dedup();
        if vals.len() == 1 { vals.remove(0) } else { fallback.to_owned() }
    };
    let get = |k: &str, d: String| typed.get(k).cloned().unwrap_or(d);
    NodeForm {
        name: get("name", String::new()),
        address: get("address", String::new()),
        ssh_port: get("ssh_port", common(&|n| n.ssh_port.to_string(), "22")),
        ssh_user: get("ssh_user", common(&|n| n.ssh_user.clone(), "root")),
        webroot: get("webroot", common(&|n| n.webroot.clone(), env_webroot)),
        install_prefix: get("install_prefix", common(&|n| n.install_prefix.clone(), "/opt/filesync")),
    }
}

/// What a page render carries besides the environment itself.
#[derive(Default)]
struct Extra {
    values: HashMap<String, String>,
    dialog_errors: FieldErrors,
    node_values: HashMap<String, String>,
    node_errors: FieldErrors,
    new_join_token: String,
    notice: String,
}

pub async fn show(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> Result<Response, Error> {
    let notice = match q.get("done").map(String::as_str) {
        Some("install") => "Install queued on every node: each node's steps show under Progress as they run. On each node the agent logs to <webroot>/lsyncd/var/log/lsyncd.log and rewrites lsyncd.status every 5 s (both readable from the node's Logs).".to_owned(),
        Some("reconfigure") => "Reconfigure queued on every node: see Progress. Each node's lsyncd.log and lsyncd.status (its Logs) say what the agent did.".to_owned(),
        Some("uninstall") => "Uninstall queued on every node: the agents stop; synced files and lsyncd.log stay.".to_owned(),
        Some("node") => "Node added. With the add-on installed it gets the agent now (see Progress) and the other agents reload their peer lists.".to_owned(),
        Some("retry") => "Retry queued: see Progress.".to_owned(),
        Some("verify") => "Verify queued: the result shows under Verify and repair.".to_owned(),
        Some("repair") => "Repair queued: the result shows under Verify and repair.".to_owned(),
        Some("hold-confirmed") => "Mass delete confirmed: the nodes apply the deletions now (each node's answer is in Events).".to_owned(),
        Some("hold-rejected") => "Mass delete rejected: the files come back on the node that deleted them, and the other nodes let go of the hold (each node's answer is in Events).".to_owned(),
        Some("hold-failed") => "The decision on the mass delete was not carried out: see Events for each node's answer.".to_owned(),
        _ => String::new(),
    };
    show_page(&st, user, id, Extra { notice, ..Extra::default() }).await
}

async fn show_page(st: &AppState, user: CurrentUser, id: Uuid, x: Extra) -> Result<Response, Error> {
    let s = ops::status::load(st, id).await?.ok_or_else(|| not_found("environment"))?;
    let inst = s.inst.clone();
    let stored_address = inst.as_ref().and_then(|i| i.settings.get("address")?.as_str().map(str::to_owned)).unwrap_or_default();
    let password_stored = inst.as_ref().is_some_and(|i| i.password_secret.is_some());
    let current: HashMap<String, String> = match &inst {
        Some(i) if x.values.is_empty() => [("mode", i.mode.to_string()), ("path", i.sync_path.clone()), ("delay", i.delay_seconds.to_string()), ("address", stored_address.clone())]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .chain(SafetySettings::from_stored(&i.settings).dialog_values())
            .collect(),
        // A re-rendered submission: everything as typed but the password, which is dropped
        // here so no later change can echo it back into the page.
        _ => x.values.into_iter().filter(|(k, _)| st.manifest.field(k).is_none_or(|f| f.kind != "password")).collect(),
    };
    let node_names: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    let dialog = dialog_fields(&st.manifest, &s.env.name, &node_names, &current, &x.dialog_errors, password_stored);
    let dialog_summary = error_summary(&dialog, &x.dialog_errors);
    let events = db::recent_events(&st.pool, id).await?.into_iter().map(|e| (ago(Some(e.created_at)), e.message)).collect();
    let status = if x.dialog_errors.is_empty() && x.node_errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
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
    let changes = db::reports::environment_changes(&st.pool, id, 10).await?.into_iter().map(changes::view).collect();
    let checks = db::checks::recent(&st.pool, id, 3).await?.into_iter().map(checks::view).collect();
    let charts = charts::build(st, &s).await?;
    let page = EnvironmentPage {
        user,
        id,
        name: s.env.name.clone(),
        webroot: s.env.webroot.clone(),
        live: live_data(st, &s).await?,
        notice: x.notice,
        new_join_token: x.new_join_token,
        join_tokens,
        dialog_open: !x.dialog_errors.is_empty(),
        dialog,
        dialog_summary,
        addon_name: st.manifest.name.clone(),
        addon_description: st.manifest.description.clone(),
        node_form: node_defaults(&s.env.webroot, &s.nodes, &x.node_values),
        node_errors: x.node_errors,
        frag: jobs_fragment(st, id).await?,
        events,
        changes,
        checks,
        charts,
    };
    let mut r = render(&page)?;
    *r.status_mut() = status;
    Ok(r)
}

pub async fn jobs(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    render(&JobsFragment { frag: jobs_fragment(&st, id).await? })
}

fn back(id: Uuid, done: &str) -> Response {
    let q = if done.is_empty() { String::new() } else { format!("?done={done}") };
    Redirect::to(&format!("/environments/{id}{q}")).into_response()
}

/// A GET on a form's URL (a reload of the page a refused form rendered): back to the page.
pub async fn back_to_page(Path(id): Path<Uuid>) -> Response {
    back(id, "")
}

pub async fn node_add(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    match ops::nodes::add_node(&st, &env, &f).await? {
        Outcome::Done(_) => Ok(back(id, "node")),
        Outcome::Invalid(e) => show_page(&st, user, id, Extra { node_values: f.into_iter().filter(|(k, _)| k != "csrf").collect(), node_errors: e, ..Extra::default() }).await,
    }
}

pub async fn install(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let layer = db::environments::cp_layer(&st.pool, id).await.ok();
    let existed = match layer {
        Some(l) => db::environments::installation(&st.pool, l).await?.is_some(),
        None => false,
    };
    match ops::install::submit(&st, id, &f).await?.ok_or_else(|| not_found("environment"))? {
        Outcome::Done(_) => Ok(Redirect::to(&format!("/environments/{id}?done={}#progress", if existed { "reconfigure" } else { "install" })).into_response()),
        Outcome::Invalid(e) => show_page(&st, user, id, Extra { values: f, dialog_errors: e, ..Extra::default() }).await,
    }
}

pub async fn uninstall(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::uninstall(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Redirect::to(&format!("/environments/{id}?done=uninstall#progress")).into_response())
}

pub async fn join_token_create(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let (hours, uses) = match (parse_int(f.get("valid_hours")), parse_int(f.get("max_uses"))) {
        (Ok(h), Ok(u)) => (h, u),
        (h, u) => {
            let e = [("valid_hours", h.err()), ("max_uses", u.err())].into_iter().filter_map(|(k, e)| Some((k.to_owned(), e?))).collect();
            return show_page(&st, user, id, Extra { node_errors: e, ..Extra::default() }).await;
        }
    };
    match ops::tokens::create_join_token(&st, id, f.get("name").map(String::as_str).unwrap_or(""), hours, uses).await? {
        Outcome::Done((token, _)) => show_page(&st, user, id, Extra { new_join_token: token, ..Extra::default() }).await,
        Outcome::Invalid(e) => show_page(&st, user, id, Extra { node_errors: e, ..Extra::default() }).await,
    }
}

pub async fn join_token_revoke(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = ops::tokens::revoke_join_token(&st, id).await?.ok_or_else(|| not_found("join token"))?;
    Ok(back(env, ""))
}

pub async fn pause(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::set_paused(&st, id, true, &user.username).await?.ok_or_else(|| not_found("environment"))?;
    Ok(back(id, ""))
}

pub async fn resume(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::install::set_paused(&st, id, false, &user.username).await?.ok_or_else(|| not_found("environment"))?;
    Ok(back(id, ""))
}

pub async fn node_remove(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = ops::nodes::remove_node(&st, id).await?.ok_or_else(|| not_found("node"))?;
    Ok(back(env, ""))
}

pub async fn node_forget_key(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    let env = ops::checks::forget_host_key(&st, id, &user.username).await?.ok_or_else(|| not_found("node"))?;
    Ok(back(env, ""))
}

pub async fn node_retry(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    match ops::checks::retry_node(&st, id, &user.username).await?.ok_or_else(|| not_found("node"))? {
        Ok((env, _)) => Ok(Redirect::to(&format!("/environments/{env}?done=retry#progress")).into_response()),
        Err(why) => Err(Error::Unprocessable(why)),
    }
}

/// A GET on a node's form URL: back to its environment's page.
pub async fn node_back(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let env = db::nodes::environment_of(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    Ok(back(env, ""))
}

pub async fn verify(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::checks::queue(&st, id, ops::checks::CheckKind::Verify, &user.username).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Redirect::to(&format!("/environments/{id}?done=verify#verify")).into_response())
}

pub async fn repair(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>, Form(f): Form<HashMap<String, String>>) -> Result<Response, Error> {
    user.check_csrf(&f)?;
    ops::checks::queue(&st, id, ops::checks::CheckKind::Repair, &user.username).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Redirect::to(&format!("/environments/{id}?done=repair#verify")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::http::pages::link::{link_view, tests::node};
    use crate::control::manifest::Manifest;

    #[test]
    fn the_rerendered_dialog_never_shows_the_password_and_node_text_is_escaped() {
        let m = Manifest::load().unwrap();
        let pw = "Sup3r-secret-pass\"<>";
        let submitted: HashMap<String, String> =
            [("mode", "two_envs"), ("address", "203.0.113.7"), ("password", pw), ("path", "ROOT")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        let errors = m.validate(&submitted).unwrap_err();
        assert!(errors.contains_key("address"));
        let dialog = dialog_fields(&m, "env", &["web1"], &submitted, &errors, true);
        let rows = vec![node(
            "web1",
            Some(serde_json::json!({"link": {"state": "refused", "leader": true, "remote": "<b>x</b>:1", "bytes_in": 0, "bytes_out": 0, "error": "the other side said <script>alert(1)</script>"}})),
        )];
        let live = LiveData {
            id: Uuid::nil(),
            state: "up to date".into(),
            state_class: "up-to-date".into(),
            headline: "Up to date".into(),
            installation: "installed (path ROOT, delay 10 s)".into(),
            installed: true,
            paused: false,
            nodes: vec![],
            conflicts: 0,
            link: Some(link_view("<b>x</b>:1", &rows)),
            addon_name: "File Synchronization".into(),
            webroot: "/w".into(),
            holds: vec![super::super::live::HoldRowView {
                from: "<b>x</b>:1".into(),
                files: 25,
                entries: 26,
                since: "10:00 UTC".into(),
                on_nodes: "web2".into(),
                sample: "<script>alert(1)</script>".into(),
            }],
            safety: "versions kept 7 days".into(),
        };
        let page = EnvironmentPage {
            user: CurrentUser { user_id: Uuid::nil(), username: "admin".into(), csrf: "c".into() },
            id: Uuid::nil(),
            name: "env".into(),
            webroot: "/w".into(),
            live,
            notice: String::new(),
            new_join_token: String::new(),
            join_tokens: vec![],
            dialog_summary: error_summary(&dialog, &errors),
            dialog_open: true,
            dialog,
            addon_name: "File Synchronization".into(),
            addon_description: String::new(),
            node_form: node_defaults("/w", &[], &HashMap::new()),
            node_errors: FieldErrors::new(),
            frag: JobsData { jobs: vec![], summary: String::new() },
            events: vec![],
            changes: vec![],
            checks: vec![],
            charts: Charts::default(),
        };
        let html = askama::Template::render(&page).unwrap();
        assert!(!html.contains("Sup3r-secret"), "the password was echoed into the page");
        assert!(html.contains("id=\"error-address\""), "{html}");
        assert!(html.contains("A shared password is stored"));
        // The typed address is kept for correction, the error is summarised on top with a
        // link to the field; node text is escaped.
        assert!(html.contains("value=\"203.0.113.7\""));
        assert!(html.contains("href=\"#field-address\""), "{html}");
        assert!(html.contains("Cross-environment link") && html.contains("&#60;script&#62;alert(1)&#60;/script&#62;") && !html.contains("<script>alert"));
        assert!(html.contains("&#60;b&#62;x&#60;/b&#62;:1") && !html.contains("<b>x</b>"));
    }

    #[test]
    fn add_node_defaults_come_from_the_existing_nodes() {
        let mut a = node("web1", None);
        a.ssh_port = 2222;
        a.install_prefix = "/srv/fs".into();
        let mut b = node("web2", None);
        b.ssh_port = 2222;
        b.install_prefix = "/srv/fs".into();
        b.webroot = "/other".into();
        let f = node_defaults("/var/www/webroot", &[a, b], &HashMap::new());
        assert_eq!((f.ssh_port.as_str(), f.install_prefix.as_str(), f.webroot.as_str()), ("2222", "/srv/fs", "/var/www/webroot"));
        let typed: HashMap<String, String> = [("name".to_owned(), "web3".to_owned()), ("ssh_port".to_owned(), "x".to_owned())].into();
        let f = node_defaults("/w", &[], &typed);
        assert_eq!((f.name.as_str(), f.ssh_port.as_str(), f.install_prefix.as_str()), ("web3", "x", "/opt/filesync"));
    }
}
