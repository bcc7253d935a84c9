//! The job runner: claims jobs from Postgres (`for update skip locked`, so several serve
//! processes share the queue), runs at most N at once (a semaphore), and records each
//! step's result in the job's step log as it happens, which the dashboard polls.

pub mod install;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db::{self, JobRow};

/// The executable installed on nodes, read once: its bytes and sha256.
pub struct AgentBinary {
    pub bytes: Vec<u8>,
    pub sha256: String,
}

impl AgentBinary {
    pub fn load(path: &Path) -> anyhow::Result<AgentBinary> {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read the agent binary {}: {e}", path.display()))?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Ok(AgentBinary { bytes, sha256 })
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct Step {
    pub name: String,
    /// running | ok | changed | failed
    pub status: String,
    pub output: String,
}

/// The live step log of one job, saved after every change.
pub struct StepLog {
    pub job_id: uuid::Uuid,
    pub steps: Vec<Step>,
    pool: sqlx::PgPool,
    worker: String,
}

/// A step's outcome: Ok((changed, output)) or Err(what failed and what to do).
pub type StepResult = Result<(bool, String), String>;

impl StepLog {
    async fn save(&self) {
        let v = serde_json::to_value(&self.steps).unwrap_or_default();
        if let Err(e) = db::jobs::save_steps(&self.pool, self.job_id, &self.worker, &v).await {
            tracing::warn!(job.id = %self.job_id, error = %e, "cannot save step log");
        }
    }

    /// Runs one named step, recording running → ok/changed/failed with its output.
    pub async fn run(&mut self, name: &str, f: impl std::future::Future<Output = StepResult>) -> Result<bool, String> {
        self.steps.push(Step { name: name.into(), status: "running".into(), output: String::new() });
        self.save().await;
        let r = f.await;
        let last = self.steps.last_mut().expect("BUG: step just pushed");
        let out = match &r {
            Ok((changed, out)) => {
                last.status = if *changed { "changed" } else { "ok" }.into();
                last.output = out.clone();
                Ok(*changed)
            }
            Err(e) => {
                last.status = "failed".into();
                last.output = e.clone();
                Err(format!("{name}: {e}"))
            }
        };
        self.save().await;
        out
    }
}

/// Claims and runs jobs until `shutdown`, at most `parallel` at a time.
pub async fn runner(state: AppState, parallel: usize, stale_seconds: u32, shutdown: CancellationToken) {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = sem.clone().acquire_owned() => p.expect("BUG: semaphore closed"),
        };
        match db::jobs::claim_next(&state.pool, &state.worker, stale_seconds).await {
            Ok(Some(job)) => {
                let st = state.clone();
                tokio::spawn(async move {
                    // The claim is refreshed well within the stale limit while the job runs.
                    let (pool, worker, id) = (st.pool.clone(), st.worker.clone(), job.job_id);
                    let keepalive = tokio::spawn(async move {
                        let every = Duration::from_secs((stale_seconds / 3).max(1) as u64);
                        loop {
                            tokio::time::sleep(every).await;
                            if !db::jobs::touch(&pool, id, &worker).await.unwrap_or(true) {
                                return;
                            }
                        }
                    });
                    run_job(&st, job).await;
                    keepalive.abort();
                    drop(permit);
                });
            }
            Ok(None) => {
                drop(permit);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = state.wake_jobs.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
            Err(e) => {
                drop(permit);
                tracing::warn!(error = %e, "cannot claim a job");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[tracing::instrument(skip_all, fields(job.id = %job.job_id, node.name = %job.node_name, job.kind = %job.kind))]
async fn run_job(st: &AppState, job: JobRow) {
    let mut log = StepLog { job_id: job.job_id, steps: Vec::new(), pool: st.pool.clone(), worker: st.worker.clone() };
    let result = match job.kind.as_str() {
        "install" | "reconfigure" => install::install(st, &job, &mut log).await,
        "uninstall" => install::uninstall(st, &job, &mut log).await,
        "verify" => install::verify(st, &job, &mut log).await,
        other => Err(format!("unknown job kind {other}")),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "job failed");
    }
    let _ = db::jobs::finish(&st.pool, job.job_id, &st.worker, result.as_ref().err().map(String::as_str)).await;
    if let Some(node_id) = job.node_id
        && job.kind == "uninstall"
        && let Ok(Some(node)) = db::environments::node(&st.pool, node_id).await
        && node.agent_state == crate::control::http::actions::REMOVING
    {
        // The end of a scale-in: forget the node, or mark it gone if it was unreachable.
        let msg = match &result {
            Ok(()) => {
                let _ = db::environments::remove_node(&st.pool, node_id).await;
                format!("scale in: node {} uninstalled and removed", node.name)
            }
            Err(e) => {
                let _ = db::environments::set_agent_state(&st.pool, node_id, crate::control::http::actions::GONE).await;
                format!("scale in: node {} could not be uninstalled ({e}); marked gone and never contacted again (remove it again to delete the row)", node.name)
            }
        };
        let _ = db::add_event(&st.pool, Some(job.environment_id), &msg).await;
        refresh_installation_state(st, job.environment_id).await;
        return;
    }
    // A job that ends after its node started leaving (scale-in) does not bring it back.
    let leaving = match job.node_id {
        Some(id) => db::environments::node(&st.pool, id).await.ok().flatten().is_some_and(|n| crate::control::http::actions::leaving(&n)),
        None => false,
    };
    if let Some(node_id) = job.node_id.filter(|_| !leaving) {
        let state = match (&result, job.kind.as_str()) {
            (Ok(()), "uninstall") => "not installed",
            (Ok(()), _) => "running",
            (Err(_), _) => "failed",
        };
        let _ = db::environments::set_agent_state(&st.pool, node_id, state).await;
    }
    refresh_installation_state(st, job.environment_id).await;
}

/// The installation is `installed` when every node's latest job succeeded, `failed` when
/// one failed, and goes away when every node was uninstalled.
async fn refresh_installation_state(st: &AppState, env: uuid::Uuid) {
    let Ok(layer) = db::environments::cp_layer(&st.pool, env).await else { return };
    let Ok(latest) = db::jobs::latest_per_node(&st.pool, env).await else { return };
    let nodes: Vec<_> = db::environments::nodes(&st.pool, layer).await.unwrap_or_default().into_iter().filter(|n| !crate::control::http::actions::leaving(n)).collect();
    let latest: Vec<_> = latest.into_iter().filter(|j| nodes.iter().any(|n| Some(n.node_id) == j.node_id)).collect();
    if latest.iter().any(|j| j.state == "queued" || j.state == "running") {
        return;
    }
    let state = if latest.iter().any(|j| j.state == "failed") {
        "failed"
    } else if !latest.is_empty() && latest.iter().all(|j| j.kind == "uninstall") {
        let _ = db::environments::delete_installation(&st.pool, layer).await;
        return;
    } else {
        "installed"
    };
    let _ = db::environments::set_installation_state(&st.pool, layer, state).await;
}
