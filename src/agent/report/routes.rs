//! The report routes on the agent port (see `protocol::report` for the bodies). Reads are
//! `Observe` (the control plane, this node, its peers), the two actions `Admin` (the
//! control plane and this node only); `server::RouteClass::of` classifies them. Work that
//! reads many files runs off the async threads, and verify walks one at a time.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::agent::server::AppState;
use crate::agent::{AdminCmd, Event};
use crate::protocol::RelPath;
use crate::protocol::report::{
    ConflictCopy, Conflicts, DirDigests, FileFacts, LogTail, MAX_CONFLICTS, MAX_LOG_LINES, NodeReport, PathTest, RecentChanges, RehashRequest, RehashResult, ResolveRequest, ResolveResult,
    conflict_original,
};

type Answer<T> = Result<Json<T>, (StatusCode, String)>;

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/report", get(summary))
        .route("/v1/report/changes", get(changes))
        .route("/v1/report/conflicts", get(conflicts))
        .route("/v1/report/digests", get(digests))
        .route("/v1/report/files", get(files))
        .route("/v1/report/log", get(log))
        .route("/v1/report/excluded", get(excluded))
        .route("/v1/report/resolve", post(resolve))
        .route("/v1/report/rehash", post(rehash))
}

fn num(q: &HashMap<String, String>, k: &str) -> u64 {
    q.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

async fn summary(State(app): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Answer<NodeReport> {
    let (run, since) = (num(&q, "run"), num(&q, "since"));
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.report.summary(&a.index, run, since)).await.map_err(internal)?.map(Json).map_err(internal)
}

async fn changes(State(app): State<AppState>) -> Json<RecentChanges> {
    Json(RecentChanges { node: app.report.node.clone(), changes: app.report.recent(super::CAPACITY), capacity: super::CAPACITY })
}

async fn conflicts(State(app): State<AppState>) -> Answer<Conflicts> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Conflicts> {
        let (copies, total) = a.index.conflict_copies(MAX_CONFLICTS)?;
        let originals: Vec<Option<(String, String)>> = copies.iter().map(|s| conflict_original(s.entry.path.as_str())).collect();
        let paths: Vec<RelPath> = originals.iter().map(|o| o.as_ref().and_then(|(p, _)| RelPath::parse(p).ok()).unwrap_or_else(|| RelPath::parse("-").expect("BUG: a valid name"))).collect();
        let winners = a.index.get_many(paths.iter())?;
        let conflicts = copies
            .into_iter()
            .zip(originals)
            .zip(winners)
            .map(|((c, o), w)| {
                let w = w.filter(|w| o.is_some() && !w.entry.deleted).map(|w| w.entry);
                ConflictCopy {
                    path: c.entry.path.to_string(),
                    loser_node: o.as_ref().map(|(_, n)| n.clone()).unwrap_or_default(),
                    original: o.map(|(p, _)| p),
                    copy_size: c.entry.size,
                    copy_mtime: c.entry.mtime_ns.div_euclid(1_000_000_000),
                    winner_size: w.as_ref().map(|w| w.size),
                    winner_mtime: w.as_ref().map(|w| w.mtime_ns.div_euclid(1_000_000_000)),
                    winner_by: w.map(|w| w.modified_by_name),
                }
            })
            .collect();
        Ok(Conflicts { node: a.report.node.clone(), conflicts, total })
    })
    .await
    .map_err(internal)?
    .map(Json)
    .map_err(internal)
}

async fn digests(State(app): State<AppState>) -> Answer<DirDigests> {
    let _permit = app.report.verify_gate.acquire().await.map_err(internal)?;
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.report.digests(&a.root)).await.map_err(internal)?.map(Json).map_err(internal)
}

async fn files(State(app): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Answer<FileFacts> {
    let dir = q.get("dir").cloned().unwrap_or_default();
    let _permit = app.report.verify_gate.acquire().await.map_err(internal)?;
    let a = app.clone();
    tokio::task::spawn_blocking(move || a.report.file_facts(&a.root, &a.index, &dir)).await.map_err(internal)?.map(Json).map_err(|e| (StatusCode::BAD_REQUEST, format!("{e:#}")))
}

async fn log(State(app): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Answer<LogTail> {
    let lines = (num(&q, "lines") as usize).clamp(1, MAX_LOG_LINES);
    let a = app.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<LogTail> {
        let dir = crate::private_fs::PrivateDir::log(&a.report.log_dir)?;
        let data = dir.read("lsyncd.log")?.unwrap_or_default();
        let status = String::from_utf8_lossy(&dir.read("lsyncd.status")?.unwrap_or_default()).into_owned();
        let text = String::from_utf8_lossy(&data);
        let all: Vec<&str> = text.lines().collect();
        Ok(LogTail { node: a.report.node.clone(), lines: all[all.len().saturating_sub(lines)..].iter().map(|l| (*l).to_owned()).collect(), size: data.len() as u64, status })
    })
    .await
    .map_err(internal)?
    .map(Json)
    .map_err(internal)
}

async fn excluded(State(app): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Answer<PathTest> {
    let raw = q.get("path").map(|p| p.trim().trim_start_matches('/').to_owned()).unwrap_or_default();
    let path = RelPath::parse(&raw).map_err(|e| (StatusCode::BAD_REQUEST, format!("{raw:?}: {e}")))?;
    let synced = !app.report.excludes.is_excluded(&path);
    let reason = if synced { "no exclude pattern matches it".to_owned() } else { "excluded: it matches an exclude pattern, is a temp file, or is in the agent's own lsyncd/ folder".to_owned() };
    Ok(Json(PathTest { path: path.to_string(), synced, reason }))
}

async fn resolve(State(app): State<AppState>, Json(req): Json<ResolveRequest>) -> Answer<ResolveResult> {
    let a = app.clone();
    let r = tokio::task::spawn_blocking(move || a.report.resolve(&a.root, &req)).await.map_err(internal)?;
    let line = format!("conflict resolved by an operator: {}", r.message);
    if r.done {
        app.log.normal(line);
    } else {
        app.log.warn(format!("conflict action refused: {}", r.message));
    }
    Ok(Json(r))
}

async fn rehash(State(app): State<AppState>, Json(req): Json<RehashRequest>) -> Answer<RehashResult> {
    let mut paths = Vec::new();
    for p in &req.paths {
        let p = RelPath::parse(p).map_err(|e| (StatusCode::BAD_REQUEST, format!("{p:?}: {e}")))?;
        if !app.report.excludes.is_excluded(&p) {
            paths.push(p);
        }
    }
    let n = paths.len() as u64;
    app.report.request_rehash(paths);
    // A rescan of the whole folder runs the scan that reads them (and catches anything else
    // the watcher missed); the event loop answers once it is queued.
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.events.send(Event::Admin(AdminCmd::Rescan, tx)).await.map_err(|_| internal("agent is shutting down"))?;
    let _ = rx.await;
    let message = format!("{n} path(s) will be read again; full rescan queued");
    app.log.normal(format!("repair asked by the control plane: {message}"));
    Ok(Json(RehashResult { queued: n, message }))
}
