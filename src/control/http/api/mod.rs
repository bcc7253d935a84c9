//! The JSON API under /api/v1: everything the dashboard does, for automation. Every route
//! but `POST /tokens` (which takes a user name and password) and `POST /enroll` (which takes
//! an environment's join token, for cloned nodes) needs a bearer API token. Errors are
//! JSON (`{"error": ...}`, plus `"errors"` per field for 422), see `http::error`.

mod dashboard;
mod tokens;
pub mod versions;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::ApiUser;
use super::{Error, not_found};
use crate::control::AppState;
use crate::control::db;
use crate::control::ops::{self, Outcome};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", delete(tokens::revoke))
        .route("/ssh-key", get(ssh_key))
        .route("/environments", get(list).post(create))
        .route("/environments/{id}", get(show))
        .route("/environments/{id}/nodes", post(add_node))
        .route("/environments/{id}/install", post(install))
        .route("/environments/{id}/uninstall", post(uninstall))
        .route("/environments/{id}/pause", post(pause))
        .route("/environments/{id}/resume", post(resume))
        .route("/environments/{id}/events/{event}", post(platform_event))
        .route("/environments/{id}/join-tokens", get(tokens::list_join).post(tokens::create_join))
        .route("/join-tokens/{id}", delete(tokens::revoke_join))
        .route("/enroll", post(tokens::enroll))
        .route("/environments/{id}/conflicts", get(dashboard::conflicts))
        .route("/environments/{id}/conflicts/resolve", post(dashboard::resolve))
        .route("/environments/{id}/changes", get(dashboard::environment_changes))
        .route("/environments/{id}/verify", post(dashboard::verify))
        .route("/environments/{id}/repair", post(dashboard::repair))
        .route("/environments/{id}/checks", get(dashboard::checks))
        .route("/environments/{id}/samples", get(dashboard::samples))
        .route("/environments/{id}/versions", get(versions::list))
        .route("/environments/{id}/versions/restore", post(versions::restore))
        .route("/environments/{id}/holds", get(versions::holds))
        .route("/environments/{id}/holds/confirm", post(versions::confirm))
        .route("/environments/{id}/holds/reject", post(versions::reject))
        .route("/checks/{id}", get(dashboard::check))
        .route("/nodes/{id}", delete(remove_node))
        .route("/nodes/{id}/logs", get(logs))
        .route("/nodes/{id}/changes", get(dashboard::node_changes))
        .route("/nodes/{id}/retry", post(dashboard::retry))
        .route("/nodes/{id}/forget-host-key", post(dashboard::forget_host_key))
        .route("/jobs/{id}", get(job))
        .fallback(|| async { not_found("API route") })
}

type ApiResult = Result<Response, Error>;

/// A JSON object's values as strings (numbers and booleans as written), as forms send them.
fn fields(v: &Value) -> HashMap<String, String> {
    v.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() }))).collect()).unwrap_or_default()
}

fn outcome<T: serde::Serialize>(o: Outcome<T>, ok: StatusCode) -> ApiResult {
    match o {
        Outcome::Done(v) => Ok((ok, Json(json!({"result": v}))).into_response()),
        Outcome::Invalid(e) => Err(Error::Invalid(e)),
    }
}

async fn ssh_key(State(st): State<AppState>, _u: ApiUser) -> ApiResult {
    Ok(Json(json!({"public_key": st.ssh_public_key})).into_response())
}

async fn list(State(st): State<AppState>, _u: ApiUser) -> ApiResult {
    Ok(Json(db::environments::list(&st.pool).await?).into_response())
}

async fn create(State(st): State<AppState>, _u: ApiUser, Json(b): Json<Value>) -> ApiResult {
    let f = fields(&b);
    outcome(ops::environments::create(&st, f.get("name").map(String::as_str).unwrap_or(""), f.get("webroot").map(String::as_str).unwrap_or("")).await?, StatusCode::CREATED)
}

/// The environment with `sync` (its state as `health::assess` decides it, the same as the
/// dashboard), its nodes (see README, "The node object"), installation, latest jobs,
/// events and join tokens.
async fn show(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let s = ops::status::load(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    let mut installation = serde_json::to_value(&s.inst).unwrap_or(Value::Null);
    if let (Some(i), Some(o)) = (&s.inst, installation.as_object_mut()) {
        // Whether a shared password is stored; the password itself is never sent back.
        o.insert("password_set".into(), Value::Bool(i.password_secret.is_some()));
    }
    let nodes: Vec<Value> = s.nodes.iter().zip(&s.node_sync).map(|(n, ns)| node_json(n, Some(ns), s.job_of(n))).collect();
    Ok(Json(json!({
        "environment": s.env,
        "sync": s.sync,
        "nodes": nodes,
        "installation": installation,
        "jobs": s.jobs,
        "events": db::recent_events(&st.pool, id).await?,
        "join_tokens": db::join_tokens::list(&st.pool, id).await?,
    }))
    .into_response())
}

/// A node row with `link` (the cross-environment link as the node last reported it; null
/// in one-environment mode or before a report), `sync` (its state in words), `last_job`
/// (kind, state, error: apart from the agent's health) and `report` (its last report
/// summary without the changes).
fn node_json(n: &db::NodeRow, sync: Option<&crate::control::health::NodeSync>, job: Option<&db::JobRow>) -> Value {
    let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("link".into(), n.status().and_then(|s| s.link.as_ref()).map(|l| serde_json::to_value(l).unwrap_or(Value::Null)).unwrap_or(Value::Null));
        o.insert("sync".into(), sync.map(|s| serde_json::to_value(s).unwrap_or(Value::Null)).unwrap_or(Value::Null));
        o.insert("last_job".into(), job.map(|j| json!({"job_id": j.job_id, "kind": j.kind, "state": j.state, "error": j.error, "finished_at": j.finished_at.map(|t| t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())})).unwrap_or(Value::Null));
        o.insert(
            "report".into(),
            n.report().map(|r| json!({"conflicts": r.conflicts, "pending_files": r.pending_files, "pending_bytes": r.pending_bytes, "last_change": r.last_change})).unwrap_or(Value::Null),
        );
    }
    v
}

/// One node as an object, or many (scale out) as an array or `{"nodes": [...]}`; many
/// answer with the list of new node ids. `jobs` lists the jobs this queued (installs on
/// the new nodes, peer-list reloads on the others; empty without the add-on).
async fn add_node(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let t0 = time::OffsetDateTime::now_utc();
    let r = match node_list(&b) {
        None => outcome(ops::nodes::add_node(&st, &env, &fields(&b)).await?, StatusCode::CREATED),
        Some(list) => outcome(ops::nodes::add_nodes(&st, &env, &list).await?, StatusCode::CREATED),
    }?;
    with_jobs(&st, id, t0, r).await
}

/// Adds `jobs`: the environment's jobs queued since `t0` (by the request that answered `r`).
async fn with_jobs(st: &AppState, env: Uuid, t0: time::OffsetDateTime, r: Response) -> ApiResult {
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let jobs: Vec<Uuid> = db::jobs::latest_per_node(&st.pool, env).await?.into_iter().filter(|j| j.created_at >= t0).map(|j| j.job_id).collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("jobs".into(), json!(jobs));
    }
    Ok((status, Json(v)).into_response())
}

fn node_list(b: &Value) -> Option<Vec<HashMap<String, String>>> {
    let arr = b.as_array().or_else(|| b.get("nodes")?.as_array())?;
    Some(arr.iter().map(fields).collect())
}

async fn pause(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    paused(st, id, true, &format!("{} (API)", u.username)).await
}

async fn resume(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    paused(st, id, false, &format!("{} (API)", u.username)).await
}

async fn paused(st: AppState, id: Uuid, on: bool, by: &str) -> ApiResult {
    let failures = ops::install::set_paused(&st, id, on, by).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(json!({"result": if on { "paused" } else { "resumed" }, "not_reached": failures})).into_response())
}

/// A platform's topology event (`after-scale-out`, `before-redeploy`, ...): does what the
/// manifest's `[events]` table maps it to. Body: `{"nodes": [...]}` with node objects for
/// scale_out and node names for scale_in; nothing for pause/resume.
async fn platform_event(State(st): State<AppState>, _u: ApiUser, Path((id, event)): Path<(Uuid, String)>, body: Option<Json<Value>>) -> ApiResult {
    let env = db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let Some(action) = st.manifest.events.get(&event).cloned() else {
        let known: Vec<&String> = st.manifest.events.keys().collect();
        return Err(Error::NotFound(format!("the add-on does not handle event {event:?}; it handles {known:?}")));
    };
    let b = body.map(|Json(b)| b).unwrap_or(Value::Null);
    db::add_event(&st.pool, Some(id), &format!("platform event {event} -> {action}")).await?;
    let invalid = |m: &str| Error::Unprocessable(m.to_owned());
    match action.as_str() {
        "scale_out" => {
            let list = node_list(&b).ok_or_else(|| invalid("scale_out needs {\"nodes\": [{\"name\": ..., \"address\": ...}, ...]}"))?;
            let t0 = time::OffsetDateTime::now_utc();
            let r = outcome(ops::nodes::add_nodes(&st, &env, &list).await?, StatusCode::ACCEPTED)?;
            with_jobs(&st, id, t0, r).await
        }
        "scale_in" => {
            let names: Vec<String> = b.get("nodes").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if names.is_empty() {
                return Err(invalid("scale_in needs {\"nodes\": [\"name\", ...]}"));
            }
            let layer = db::environments::cp_layer(&st.pool, id).await?;
            let nodes = db::nodes::list(&st.pool, layer).await?;
            let t0 = time::OffsetDateTime::now_utc();
            let mut removed = Vec::new();
            for name in &names {
                let n = nodes.iter().find(|n| &n.name == name).ok_or_else(|| invalid(&format!("no node named {name} in this environment")))?;
                ops::nodes::remove_node(&st, n.node_id).await?;
                removed.push(n.node_id);
            }
            with_jobs(&st, id, t0, (StatusCode::ACCEPTED, Json(json!({"result": removed}))).into_response()).await
        }
        "pause" => paused(st, id, true, &format!("platform event {event}")).await,
        "resume" => paused(st, id, false, &format!("platform event {event}")).await,
        other => Err(Error::Internal(anyhow::anyhow!("the manifest maps {event} to {other}, which this version does not implement"))),
    }
}

/// Scale in one node: 202 with the jobs queued (its uninstall, its peers' reloads).
async fn remove_node(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let t0 = time::OffsetDateTime::now_utc();
    let env = ops::nodes::remove_node(&st, id).await?.ok_or_else(|| not_found("node"))?;
    with_jobs(&st, env, t0, (StatusCode::ACCEPTED, Json(json!({"result": id}))).into_response()).await
}

async fn install(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    outcome(ops::install::submit(&st, id, &fields(&b)).await?.ok_or_else(|| not_found("environment"))?, StatusCode::ACCEPTED)
}

async fn uninstall(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let jobs = ops::install::uninstall(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"result": jobs}))).into_response())
}

async fn job(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok(Json(db::jobs::get(&st.pool, id).await?.ok_or_else(|| not_found("job"))?).into_response())
}

/// The end of `lsyncd.log` (`?lines=N`, default 200), `lsyncd.status` and the agent's
/// status as an object (null when the agent does not answer), with where they came from.
async fn logs(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let lines = q.get("lines").and_then(|l| l.parse::<usize>().ok()).unwrap_or(200).clamp(1, crate::protocol::report::MAX_LOG_LINES);
    let v = super::pages::nodes::log_view(&st, &node, lines).await;
    let log: String = v.lines.iter().map(|l| format!("{}\n", l.text)).collect();
    Ok(Json(json!({"log": log, "status": v.status, "agent_status": v.agent_status, "source": v.source, "error": v.error})).into_response())
}
