//! Verify and repair (issue 14, item 5). Verify compares the nodes' trees as they are on
//! disk: each agent walks and hashes its folder (`/v1/report/digests`, per-directory
//! digests), then the directories that differ are compared entry by entry
//! (`/v1/report/files`); a difference must still be there a few seconds later to be listed
//! (changes in flight are not differences). Repair makes the nodes agree by the normal
//! rules: every node re-reads the differing paths (content changed behind an agent's back
//! becomes a local change, the newest version wins as always) and rescans its folder; then
//! the run waits for the nodes to settle and verifies again.
//!
//! Runs are rows (`sync_check`), queued by the dashboard, the API (`POST
//! /api/v1/environments/{id}/verify|repair`, answering the run's id) or the schedule
//! (`serve --verify-every-hours`, default daily), claimed like jobs by any `serve` process.

pub mod compare;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::compare::{Difference, MAX_PATHS};
use super::AppState;
use super::agent_api::{AgentApi, FileFacts, RehashRequest};
use super::db::{self, checks::CheckRow};
use super::health::{SyncState, bytes};
use super::state::Health;

/// How long one agent may take to walk and hash its folder.
const DIGEST_TIMEOUT: Duration = Duration::from_secs(600);
const FILES_TIMEOUT: Duration = Duration::from_secs(120);
/// A difference must persist this long to be listed.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a repair waits for the nodes to agree.
const REPAIR_WAIT: Duration = Duration::from_secs(180);

/// What a verify found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Verified {
    pub agree: bool,
    /// One sentence.
    pub summary: String,
    pub compared: Vec<String>,
    /// Nodes that could not be compared, with why.
    pub skipped: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub differences: Vec<Difference>,
    /// More differing paths than listed.
    pub truncated: bool,
    pub took_ms: u64,
}

/// Claims and runs verify and repair runs until `shutdown`, one at a time per process.
pub async fn runner(st: AppState, stale_seconds: u32, shutdown: CancellationToken) {
    loop {
        match db::checks::claim_next(&st.pool, &st.worker, stale_seconds).await {
            Ok(Some(row)) => run(&st, row, stale_seconds).await,
            Ok(None) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = st.wake_jobs.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a verify run");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn run(st: &AppState, row: CheckRow, stale_seconds: u32) {
    let id = row.sync_check_id;
    let (pool, worker) = (st.pool.clone(), st.worker.clone());
    let keepalive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs((stale_seconds / 3).max(1) as u64)).await;
            if !db::checks::touch(&pool, id, &worker, &serde_json::json!({"summary": "running"})).await.unwrap_or(true) {
                return;
            }
        }
    });
    let short = id.simple().to_string()[..8].to_owned();
    let outcome = match row.kind.as_str() {
        "repair" => repair(st, row.environment_id).await,
        _ => verify(st, row.environment_id).await.map(|v| serde_json::to_value(v).unwrap_or_default()),
    };
    keepalive.abort();
    let (result, error) = match outcome {
        Ok(v) => (v, None),
        Err((v, e)) => (v, Some(e)),
    };
    let summary = result["summary"].as_str().unwrap_or("").to_owned();
    let _ = db::checks::finish(&st.pool, id, &st.worker, &result, error.as_deref()).await;
    let msg = match &error {
        None => format!("{} {short}: {summary}", row.kind),
        Some(e) => format!("{} {short} failed: {e}", row.kind),
    };
    let _ = db::add_event(&st.pool, Some(row.environment_id), &msg).await;
}

type RunResult<T> = Result<T, (serde_json::Value, String)>;

fn failed<T>(msg: impl Into<String>) -> RunResult<T> {
    let m = msg.into();
    Err((serde_json::json!({"summary": m}), m))
}

/// The reachable nodes' agents (name, api); the others as skipped lines.
async fn agents(st: &AppState, env_id: Uuid) -> RunResult<(Vec<(String, AgentApi)>, Vec<String>)> {
    let Ok(Some(s)) = super::ops::status::load(st, env_id).await else { return failed("the environment is gone") };
    if s.inst.is_none() {
        return failed("the add-on is not installed on this environment");
    }
    let client = match super::jobs::install::agent_client(st, &s.env) {
        Ok(c) => c,
        Err(e) => return failed(format!("no client certificate for the environment: {e}")),
    };
    let (mut up, mut skipped) = (Vec::new(), Vec::new());
    for (n, ns) in s.nodes.iter().zip(&s.node_sync) {
        if n.agent_state.leaving() || ns.state == SyncState::NotInstalled {
            continue;
        }
        if ns.reachable && n.health == Health::Up {
            up.push((n.name.clone(), AgentApi::new(client.clone(), &n.address, n.agent_port)));
        } else {
            skipped.push(format!("{}: {}", n.name, ns.label));
        }
    }
    Ok((up, skipped))
}

/// Compares the reachable nodes' trees.
pub async fn verify(st: &AppState, env_id: Uuid) -> RunResult<Verified> {
    let t0 = Instant::now();
    let (agents, skipped) = agents(st, env_id).await?;
    if agents.len() < 2 {
        return failed(format!("fewer than two nodes answer, nothing to compare ({})", skipped.join("; ")));
    }
    let answers = futures::future::join_all(agents.iter().map(|(_, a)| a.digests(DIGEST_TIMEOUT))).await;
    let mut digests = Vec::new();
    for ((name, _), a) in agents.iter().zip(answers) {
        match a {
            Ok(d) => digests.push(d),
            Err(e) => return failed(format!("{name} could not walk its folder: {e}")),
        }
    }
    let (files, size) = (digests[0].files, digests[0].bytes);
    let mut v = Verified { compared: agents.iter().map(|(n, _)| n.clone()).collect(), skipped, files, bytes: size, ..Verified::default() };
    let dirs = compare::differing_dirs(&digests);
    let mut diffs = list_differences(&agents, &dirs).await?;
    if !diffs.is_empty() {
        // Changes in flight settle within seconds; differences that stay are listed.
        tokio::time::sleep(SETTLE).await;
        diffs = compare::persistent(&diffs, list_differences(&agents, &dirs).await?);
    }
    let errors: Vec<String> = digests.iter().flat_map(|d| d.errors.iter().map(move |e| format!("{}: {e}", d.node))).collect();
    v.truncated = diffs.len() > MAX_PATHS;
    diffs.truncate(MAX_PATHS);
    v.agree = diffs.is_empty() && errors.is_empty();
    v.took_ms = t0.elapsed().as_millis() as u64;
    let nodes = v.compared.join(", ");
    v.summary = if v.agree {
        format!("{nodes} hold the same {files} file(s) ({}), checked in {:.1} s", bytes(size), t0.elapsed().as_secs_f64())
    } else if diffs.is_empty() {
        format!("could not read everything: {}", errors.join("; "))
    } else {
        let list: Vec<&str> = diffs.iter().take(5).map(|d| d.path.as_str()).collect();
        format!("{} path(s) differ between {nodes}: {}{}", diffs.len(), list.join(", "), if diffs.len() > 5 || v.truncated { ", ..." } else { "" })
    };
    if !v.skipped.is_empty() {
        v.summary.push_str(&format!(" (not compared: {})", v.skipped.join("; ")));
    }
    v.differences = diffs;
    Ok(v)
}

async fn list_differences(agents: &[(String, AgentApi)], dirs: &[String]) -> RunResult<Vec<Difference>> {
    let mut out = Vec::new();
    for dir in dirs {
        let answers = futures::future::join_all(agents.iter().map(|(_, a)| a.files(dir, FILES_TIMEOUT))).await;
        let lists: Vec<FileFacts> = answers.into_iter().filter_map(Result::ok).collect();
        if lists.len() < 2 {
            continue;
        }
        out.extend(compare::differing_entries(&lists));
    }
    Ok(out)
}

/// Makes the nodes agree: every node re-reads the differing paths and rescans; then the run
/// waits for the nodes to be idle and in agreement, and verifies again.
async fn repair(st: &AppState, env_id: Uuid) -> RunResult<serde_json::Value> {
    let before = verify(st, env_id).await?;
    if before.agree {
        let summary = format!("nothing to repair: {}", before.summary);
        return Ok(serde_json::json!({"summary": summary, "before": before, "after": before}));
    }
    let (agents, _) = agents(st, env_id).await?;
    let paths: Vec<String> = before.differences.iter().map(|d| d.path.clone()).collect();
    let req = RehashRequest { paths };
    for (name, a) in &agents {
        if let Err(e) = a.rehash(&req, Duration::from_secs(30)).await {
            return Err((serde_json::json!({"summary": format!("{name} did not take the repair: {e}"), "before": before}), format!("{name} did not take the repair: {e}")));
        }
    }
    // Wait until the environment is up to date again (not syncing), then compare.
    let deadline = Instant::now() + REPAIR_WAIT;
    let mut settled_since: Option<Instant> = None;
    loop {
        let state = super::ops::status::load(st, env_id).await.ok().flatten().map(|s| s.sync.state);
        let idle = matches!(state, Some(SyncState::UpToDate | SyncState::OutOfSync | SyncState::Degraded | SyncState::Paused));
        settled_since = if idle { settled_since.or(Some(Instant::now())) } else { None };
        if settled_since.is_some_and(|t| t.elapsed() >= st.heartbeat * 2) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = verify(st, env_id).await?;
    let summary = if after.agree { format!("repaired {} path(s); {}", before.differences.len(), after.summary) } else { format!("still different after the repair: {}", after.summary) };
    let v = serde_json::json!({"summary": summary, "before": before, "after": after});
    if after.agree { Ok(v) } else { Err((v, summary)) }
}
