//! The job runner: claims jobs from Postgres (`for update skip locked`, so several serve
//! processes share the queue), runs at most N at once (a semaphore), and records each
//! step's result in the job's step log as it happens, which the dashboard polls.

pub mod config;
pub mod install;
pub mod phases;
pub mod supervise;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::AppState;
use super::db::{self, JobRow};
use super::state::JobKind;

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
    pub status: StepStatus,
    pub output: String,
}

/// The live step log of one job, saved after every change.
pub struct StepLog {
    pub job_id: uuid::Uuid,
    pub steps: Vec<Step>,
    pool: sqlx::PgPool,
    worker: String,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Running,
    Ok,
    Changed,
    Failed,
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
        self.steps.push(Step { name: name.into(), status: StepStatus::Running, output: String::new() });
        self.save().await;
        let r = f.await;
        let last = self.steps.last_mut().expect("BUG: step just pushed");
        let out = match &r {
            Ok((changed, out)) => {
                last.status = if *changed { StepStatus::Changed } else { StepStatus::Ok };
                last.output = out.clone();
                Ok(*changed)
            }
            Err(e) => {
                last.status = StepStatus::Failed;
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
    let result = match job.kind {
        JobKind::Install | JobKind::Reconfigure => install::install(st, &job, &mut log).await,
        JobKind::Uninstall => install::uninstall(st, &job, &mut log).await,
        JobKind::Verify => install::verify(st, &job, &mut log).await,
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "job failed");
    }
    let _ = db::jobs::finish(&st.pool, job.job_id, &st.worker, result.as_ref().err().map(String::as_str)).await;
    if let Some(node_id) = job.node_id
        && let Ok(Some(node)) = db::nodes::get(&st.pool, node_id).await
    {
        phases::after_job(st, &job, &node, &result).await;
    }
    phases::refresh_installation(st, job.environment_id).await;
}
