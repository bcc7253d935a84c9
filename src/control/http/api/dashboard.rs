//! The dashboard's views as API routes: conflicts (list, resolve), recent changes (per
//! environment, per node), verify and repair runs (queue, list, read), lag and throughput
//! samples, and per-node actions (retry its failed job, forget its pinned host key).
//! Every route that queues work answers 202 with the id of what it queued (`job`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiResult;
use crate::control::AppState;
use crate::control::agent_api::ResolveAction;
use crate::control::db;
use crate::control::http::auth::ApiUser;
use crate::control::http::{Error, not_found};
use crate::control::ops::{self, checks::CheckKind};

fn limit(q: &HashMap<String, String>, default: i64) -> i64 {
    q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(default).clamp(1, db::reports::KEEP_CHANGES)
}

/// Every conflict copy, with the nodes that hold it (asked of the agents), and the
/// unreachable nodes that could not be asked.
pub async fn conflicts(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let list = ops::conflicts::list(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(json!({"conflicts": list.conflicts, "asked": list.asked, "unreachable": list.unreachable, "seen": db::reports::open_conflicts(&st.pool, id).await?})).into_response())
}

/// `{"copies": [...], "action": "keep_winner" | "restore_copy" | "keep_both", "name": ...}`:
/// each copy is resolved by one agent that holds it; the answer says what happened to each.
pub async fn resolve(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    let copies: Vec<String> = match (&b["copies"], &b["copy"]) {
        (Value::Array(a), _) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        (_, Value::String(c)) => vec![c.clone()],
        _ => Vec::new(),
    };
    if copies.is_empty() {
        return Err(Error::Invalid([("copies".to_owned(), "name at least one conflict copy (its path)".to_owned())].into()));
    }
    let Some(action) = b["action"].as_str().and_then(ResolveAction::parse) else {
        return Err(Error::Invalid([("action".to_owned(), "one of keep_winner, restore_copy, keep_both".to_owned())].into()));
    };
    let r = ops::conflicts::resolve(&st, id, &copies, action, b["name"].as_str(), &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(json!({"result": r})).into_response())
}

/// The newest file changes of the environment, each once (`?limit=`, default 100).
pub async fn environment_changes(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(json!({"changes": db::reports::environment_changes(&st.pool, id, limit(&q, 100)).await?})).into_response())
}

/// One node's newest file changes as it recorded them (`via`: the peer it came from).
pub async fn node_changes(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    Ok(Json(json!({"changes": db::reports::node_changes(&st.pool, id, limit(&q, 100)).await?})).into_response())
}

async fn queue(st: AppState, u: ApiUser, id: Uuid, kind: CheckKind) -> ApiResult {
    let check = ops::checks::queue(&st, id, kind, &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("environment"))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"job": check, "result": check}))).into_response())
}

pub async fn verify(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    queue(st, u, id, CheckKind::Verify).await
}

pub async fn repair(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    queue(st, u, id, CheckKind::Repair).await
}

/// The environment's newest verify and repair runs.
pub async fn checks(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok(Json(json!({"checks": db::checks::recent(&st.pool, id, 20).await?})).into_response())
}

/// One verify or repair run: `state` and, once it ended, `result` (`agree`, `summary`,
/// `differences` with what each node holds) or `error`.
pub async fn check(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    Ok(Json(db::checks::get(&st.pool, id).await?.ok_or_else(|| not_found("verify run"))?).into_response())
}

/// Lag and throughput samples of the last `?seconds=` (default 3600), oldest first.
pub async fn samples(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    db::environments::get(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let layer = db::environments::cp_layer(&st.pool, id).await?;
    let secs = q.get("seconds").and_then(|s| s.parse::<f64>().ok()).unwrap_or(3600.0).clamp(1.0, 31.0 * 86400.0);
    Ok(Json(json!({"samples": db::reports::samples(&st.pool, layer, secs).await?})).into_response())
}

/// Retries a node's failed job (an install if it never got a configuration, else a
/// reconfigure): 202 with the job's id.
pub async fn retry(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    match ops::checks::retry_node(&st, id, &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("node"))? {
        Ok((_, job)) => Ok((StatusCode::ACCEPTED, Json(json!({"job": job, "result": job}))).into_response()),
        Err(why) => Err(Error::Unprocessable(why)),
    }
}

/// Forgets a node's pinned host key (the node was reinstalled on purpose).
pub async fn forget_host_key(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    ops::checks::forget_host_key(&st, id, &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("node"))?;
    Ok(Json(json!({"result": "forgotten"})).into_response())
}
