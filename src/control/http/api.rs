//! The JSON API under /api/v1: everything the dashboard does, for automation. Every route
//! but `POST /tokens` (which takes a user name and password) and `POST /enroll` (which takes
//! an environment's join token, for cloned nodes) needs a bearer API token.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use super::actions::{self, Outcome};
use super::auth::{self, ApiUser};
use crate::control::AppState;
use crate::control::db;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", post(create_token))
        .route("/ssh-key", get(ssh_key))
        .route("/environments", get(list).post(create))
        .route("/environments/{id}", get(show))
        .route("/environments/{id}/nodes", post(add_node))
        .route("/environments/{id}/install", post(install))
        .route("/environments/{id}/uninstall", post(uninstall))
        .route("/environments/{id}/pause", post(pause))
        .route("/environments/{id}/resume", post(resume))
        .route("/environments/{id}/events/{event}", post(platform_event))
        .route("/environments/{id}/join-tokens", get(list_join_tokens).post(create_join_token))
        .route("/join-tokens/{id}", delete(revoke_join_token))
        .route("/enroll", post(enroll))
        .route("/nodes/{id}", delete(remove_node))
        .route("/nodes/{id}/logs", get(logs))
        .route("/jobs/{id}", get(job))
}

type ApiResult = Result<Response, super::Error>;

fn err(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"error": msg}))).into_response()
}

fn fields(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() }))).collect())
        .unwrap_or_default()
}

fn outcome<T: serde::Serialize>(o: Outcome<T>, ok: StatusCode) -> Response {
    match o {
        Outcome::Done(v) => (ok, Json(json!({"result": v}))).into_response(),
        Outcome::Invalid(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"errors": e}))).into_response(),
    }
}

async fn create_token(State(st): State<AppState>, Json(b): Json<Value>) -> ApiResult {
    let f = fields(&b);
    let user = f.get("username").cloned().unwrap_or_default();
    let Some(uid) = auth::check_login(&st, &user, f.get("password").map(String::as_str).unwrap_or("")).await? else {
        return Ok(err(StatusCode::UNAUTHORIZED, "wrong user name or password"));
    };
    let token = auth::random_token(32);
    db::users::create_token(&st.pool, &auth::token_hash(&token), uid, f.get("name").map(String::as_str).unwrap_or("api")).await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token, "note": "shown once; store it now"}))).into_response())
}

async fn ssh_key(State(st): State<AppState>, _u: ApiUser) -> ApiResult {
    Ok(Json(json!({"public_key": st.ssh_public_key})).into_response())
}

async fn list(State(st): State<AppState>, _u: ApiUser) -> ApiResult {
    Ok(Json(db::environments::list(&st.pool).await?).into_response())
}

async fn create(State(st): State<AppState>, _u: ApiUser, Json(b): Json<Value>) -> ApiResult {
    let f = fields(&b);
    let o = actions::create_environment(&st, f.get("name").map(String::as_str).unwrap_or(""), f.get("webroot").map(String::as_str).unwrap_or("")).await?;
    Ok(outcome(o, StatusCode::CREATED))
}

async fn show(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let Some(env) = db::environments::get(&st.pool, id).await? else { return Ok(err(StatusCode::NOT_FOUND, "no such environment")) };
    let layer = db::environments::cp_layer(&st.pool, id).await?;
    let inst = db::environments::installation(&st.pool, layer).await?;
    let mut installation = serde_json::to_value(&inst).unwrap_or(Value::Null);
    if let (Some(i), Some(o)) = (&inst, installation.as_object_mut()) {
        // Whether a shared password is stored; the password itself is never sent back.
        o.insert("password_set".into(), Value::Bool(i.password_secret.is_some()));
    }
    Ok(Json(json!({
        "environment": env,
        "nodes": db::environments::nodes(&st.pool, layer).await?.iter().map(node_json).collect::<Vec<_>>(),
        "installation": installation,
        "jobs": db::jobs::latest_per_node(&st.pool, id).await?,
        "events": db::recent_events(&st.pool, id).await?,
        "join_tokens": db::join_tokens::list(&st.pool, id).await?,
    }))
    .into_response())
}

/// A node row with `link`: the cross-environment link as the node last reported it (the
/// `link` object of its `/v1/status`, null in one-environment mode or before a report).
fn node_json(n: &db::NodeRow) -> Value {
    let mut v = serde_json::to_value(n).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("link".into(), n.last_status.as_ref().and_then(|s| s.get("link")).cloned().unwrap_or(Value::Null));
    }
    v
}

/// One node as an object, or many (scale out) as an array or `{"nodes": [...]}`; many
/// answer with the list of new node ids.
async fn add_node(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    let Some(env) = db::environments::get(&st.pool, id).await? else { return Ok(err(StatusCode::NOT_FOUND, "no such environment")) };
    match node_list(&b) {
        None => Ok(outcome(actions::add_node(&st, &env, &fields(&b)).await?, StatusCode::CREATED)),
        Some(list) => Ok(outcome(actions::add_nodes(&st, &env, &list).await?, StatusCode::CREATED)),
    }
}

fn node_list(b: &Value) -> Option<Vec<HashMap<String, String>>> {
    let arr = b.as_array().or_else(|| b.get("nodes")?.as_array())?;
    Some(arr.iter().map(fields).collect())
}

async fn pause(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    paused(st, id, true).await
}

async fn resume(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    paused(st, id, false).await
}

async fn paused(st: AppState, id: Uuid, on: bool) -> ApiResult {
    if db::environments::get(&st.pool, id).await?.is_none() {
        return Ok(err(StatusCode::NOT_FOUND, "no such environment"));
    }
    let failures = actions::set_paused(&st, id, on).await?;
    Ok(Json(json!({"result": if on { "paused" } else { "resumed" }, "not_reached": failures})).into_response())
}

/// A platform's topology event (`after-scale-out`, `before-redeploy`, ...): does what the
/// manifest's `[events]` table maps it to. Body: `{"nodes": [...]}` with node objects for
/// scale_out and node names for scale_in; nothing for pause/resume.
async fn platform_event(State(st): State<AppState>, _u: ApiUser, Path((id, event)): Path<(Uuid, String)>, body: Option<Json<Value>>) -> ApiResult {
    let Some(env) = db::environments::get(&st.pool, id).await? else { return Ok(err(StatusCode::NOT_FOUND, "no such environment")) };
    let Some(action) = st.manifest.events.get(&event).cloned() else {
        let known: Vec<&String> = st.manifest.events.keys().collect();
        return Ok(err(StatusCode::NOT_FOUND, &format!("the add-on does not handle event {event:?}; it handles {known:?}")));
    };
    let b = body.map(|Json(b)| b).unwrap_or(Value::Null);
    db::add_event(&st.pool, Some(id), &format!("platform event {event} -> {action}")).await?;
    match action.as_str() {
        "scale_out" => {
            let Some(list) = node_list(&b) else { return Ok(err(StatusCode::UNPROCESSABLE_ENTITY, "scale_out needs {\"nodes\": [{\"name\": ..., \"address\": ...}, ...]}")) };
            Ok(outcome(actions::add_nodes(&st, &env, &list).await?, StatusCode::ACCEPTED))
        }
        "scale_in" => {
            let names: Vec<String> = b.get("nodes").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default();
            if names.is_empty() {
                return Ok(err(StatusCode::UNPROCESSABLE_ENTITY, "scale_in needs {\"nodes\": [\"name\", ...]}"));
            }
            let layer = db::environments::cp_layer(&st.pool, id).await?;
            let nodes = db::environments::nodes(&st.pool, layer).await?;
            let mut removed = Vec::new();
            for name in &names {
                let Some(n) = nodes.iter().find(|n| &n.name == name) else { return Ok(err(StatusCode::UNPROCESSABLE_ENTITY, &format!("no node named {name} in this environment"))) };
                actions::remove_node(&st, n.node_id).await?;
                removed.push(n.node_id);
            }
            Ok((StatusCode::ACCEPTED, Json(json!({"result": removed}))).into_response())
        }
        "pause" => paused(st, id, true).await,
        "resume" => paused(st, id, false).await,
        other => Ok(err(StatusCode::INTERNAL_SERVER_ERROR, &format!("the manifest maps {event} to {other}, which this version does not implement"))),
    }
}

async fn remove_node(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    match actions::remove_node(&st, id).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Ok(err(StatusCode::NOT_FOUND, "no such node")),
    }
}

async fn install(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    if db::environments::get(&st.pool, id).await?.is_none() {
        return Ok(err(StatusCode::NOT_FOUND, "no such environment"));
    }
    Ok(outcome(actions::submit_install(&st, id, &fields(&b)).await?, StatusCode::ACCEPTED))
}

async fn uninstall(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(json!({"result": actions::submit_uninstall(&st, id).await?}))).into_response())
}

async fn job(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    match db::jobs::get(&st.pool, id).await? {
        Some(j) => Ok(Json(j).into_response()),
        None => Ok(err(StatusCode::NOT_FOUND, "no such job")),
    }
}

async fn logs(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let Some(node) = db::environments::node(&st.pool, id).await? else { return Ok(err(StatusCode::NOT_FOUND, "no such node")) };
    let v = super::pages::node_log_view(&st, &node).await;
    Ok(Json(json!({"log": v.log, "status": v.status, "agent_status": v.agent_status, "error": v.error})).into_response())
}

async fn list_join_tokens(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok(Json(db::join_tokens::list(&st.pool, id).await?).into_response())
}

async fn create_join_token(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    if db::environments::get(&st.pool, id).await?.is_none() {
        return Ok(err(StatusCode::NOT_FOUND, "no such environment"));
    }
    let f = fields(&b);
    let hours = match f.get("valid_hours").map(|h| h.parse::<i32>()) {
        None => 24,
        Some(Ok(h)) => h,
        Some(Err(_)) => 0,
    };
    Ok(match actions::create_join_token(&st, id, f.get("name").map(String::as_str).unwrap_or(""), hours).await? {
        Outcome::Done((token, row)) => (StatusCode::CREATED, Json(json!({"token": token, "join_token": row, "note": "shown once; give it to the platform's clone hook"}))).into_response(),
        Outcome::Invalid(e) => (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"errors": e}))).into_response(),
    })
}

async fn revoke_join_token(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    match db::join_tokens::revoke(&st.pool, id).await? {
        Some(env) => {
            db::add_event(&st.pool, Some(env), "a join token was revoked").await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Ok(err(StatusCode::NOT_FOUND, "no such join token")),
    }
}

/// A cloned node's agent enrolling itself with a join token (no API token: the join token
/// is the credential). 403 with the reason when the token is unknown, revoked or expired.
async fn enroll(State(st): State<AppState>, Json(r): Json<actions::EnrollRequest>) -> ApiResult {
    Ok(match actions::enroll(&st, &r).await? {
        Ok((id, name)) => (StatusCode::CREATED, Json(json!({"node_id": id, "name": name}))).into_response(),
        Err(actions::EnrollError::Refused(why)) => {
            tracing::warn!(address = %r.address, clone_of = %r.clone_of, "enrollment refused: {why}");
            // Slows down guessing; tokens carry 192 random bits anyway.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            err(StatusCode::FORBIDDEN, &why)
        }
        Err(actions::EnrollError::Invalid(why)) => err(StatusCode::UNPROCESSABLE_ENTITY, &why),
    })
}
