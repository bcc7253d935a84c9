//! The safety nets as API routes: the versions kept across an environment (merged from
//! every reachable agent), a restore carried out by one agent, and the mass deletes held
//! on the nodes with their confirm and reject (`ops::versions`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiResult;
use crate::control::AppState;
use crate::control::agent_api::RestoreRequest;
use crate::control::http::auth::ApiUser;
use crate::control::http::{Error, not_found};
use crate::control::ops::{self, FieldErrors, versions::parse_time};

fn invalid(field: &str, msg: impl Into<String>) -> Error {
    Error::Invalid(FieldErrors::from([(field.to_owned(), msg.into())]))
}

/// Every version the reachable agents keep that matches the query, newest first, one row
/// per content with the nodes that keep it (`holders`: node and id), each node's totals,
/// and the nodes that could not be asked.
pub async fn list(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>, Query(q): Query<HashMap<String, String>>) -> ApiResult {
    let q = ops::versions::query(&q).map_err(Error::Invalid)?;
    let v = ops::versions::list(&st, id, &q).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(v).into_response())
}

/// `{"path", "id", "node", "at", "deleted_from", "deleted_to", "replace", "dry_run"}`: one
/// agent restores (the named node, required with `id`; else the one whose dry run restores
/// the most). 200 with the node and the agent's answer (`restored` with where each went,
/// a `.restored-` name beside a file changed since; `skipped`; `message`).
pub async fn restore(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    let time = |k: &str| -> Result<Option<i64>, Error> {
        match &b[k] {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_i64().map(Some).ok_or_else(|| invalid(k, "Unix seconds, a whole number")),
            Value::String(s) => parse_time(k, s).map_err(|e| invalid(k, e)),
            _ => Err(invalid(k, "a time: Unix seconds or 2026-11-30T10:15 (UTC)")),
        }
    };
    let version = match &b["id"] {
        Value::Null => None,
        v => Some(v.as_u64().ok_or_else(|| invalid("id", "a version id (a whole number)"))?),
    };
    let req = RestoreRequest {
        path: b["path"].as_str().unwrap_or("").trim().trim_matches('/').to_owned(),
        id: version,
        at: time("at")?,
        deleted_from: time("deleted_from")?,
        deleted_to: time("deleted_to")?,
        replace: b["replace"].as_bool().unwrap_or(false),
        dry_run: b["dry_run"].as_bool().unwrap_or(false),
    };
    match ops::versions::restore(&st, id, &req, b["node"].as_str(), &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("environment"))? {
        Ok(done) => Ok(Json(json!({"result": done})).into_response()),
        Err(why) => Err(Error::Unprocessable(why)),
    }
}

/// The mass deletes held on the environment's nodes (from their last status): who made
/// each, how many files, since when, a few paths, and which nodes hold it.
pub async fn holds(State(st): State<AppState>, _u: ApiUser, Path(id): Path<Uuid>) -> ApiResult {
    let s = ops::status::load(&st, id).await?.ok_or_else(|| not_found("environment"))?;
    Ok(Json(json!({"holds": ops::holds::held(&s)})).into_response())
}

async fn decide(st: AppState, u: ApiUser, id: Uuid, b: Value, confirm: bool) -> ApiResult {
    let from = b["from"].as_str().filter(|f| !f.trim().is_empty()).ok_or_else(|| invalid("from", "name the node whose deletions are held"))?;
    match ops::holds::decide_hold(&st, id, from, confirm, &format!("{} (API)", u.username)).await?.ok_or_else(|| not_found("environment"))? {
        Ok(r) => Ok(Json(json!({"result": r})).into_response()),
        Err(why) => Err(Error::Unprocessable(why)),
    }
}

/// `{"from": "node1"}`: applies node1's held deletions on every node holding them.
pub async fn confirm(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    decide(st, u, id, b, true).await
}

/// `{"from": "node1"}`: turns node1's held deletions back: the files come back on node1
/// too, and the other holds dissolve.
pub async fn reject(State(st): State<AppState>, u: ApiUser, Path(id): Path<Uuid>, Json(b): Json<Value>) -> ApiResult {
    decide(st, u, id, b, false).await
}
