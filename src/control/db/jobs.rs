//! The job queue. Jobs are claimed with `for update skip locked`, so several `filesync
//! serve` processes share one queue; a running job whose heartbeat is older than
//! the stale limit (`filesync serve --job-stale-seconds`) belonged to a worker that died and
//! is claimed again. A worker writes to a job only while the claim is still its own.

use sqlx::PgPool;
use uuid::Uuid;

use crate::control::state::{JobKind, JobState};

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub job_id: Uuid,
    pub node_id: Option<Uuid>,
    pub node_name: String,
    pub environment_id: Uuid,
    pub kind: JobKind,
    pub state: JobState,
    pub attempts: i32,
    pub steps: serde_json::Value,
    pub error: Option<String>,
    #[serde(serialize_with = "super::ts")]
    pub created_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts_opt")]
    pub finished_at: Option<time::OffsetDateTime>,
}

macro_rules! job_cols {
    () => {
        "job_id, node_id, node_name, environment_id, kind, state, attempts, steps, error, created_at, finished_at"
    };
}

pub async fn enqueue(db: &PgPool, environment_id: Uuid, node_id: Uuid, node_name: &str, kind: JobKind) -> sqlx::Result<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query("insert into job (job_id, node_id, node_name, environment_id, kind) values ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(node_id)
        .bind(node_name)
        .bind(environment_id)
        .bind(kind)
        .execute(db)
        .await?;
    Ok(id)
}

/// Claims the oldest runnable job, or returns None when the queue is empty.
pub async fn claim_next(db: &PgPool, worker: &str, stale_seconds: u32) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as::<_, JobRow>(concat!(
        "update job set state = 'running', claimed_by = $1, heartbeat_at = now(), attempts = attempts + 1
         where job_id = (
           select job_id from job
           where (state = 'queued' or (state = 'running' and heartbeat_at < now() - make_interval(secs => $2)))
             and not exists (select 1 from job other where other.node_id = job.node_id and other.job_id <> job.job_id
                             and other.state = 'running' and other.heartbeat_at >= now() - make_interval(secs => $2))
           order by created_at
           for update skip locked
           limit 1)
         returning ",
        job_cols!()
    ))
    .bind(worker)
    .bind(stale_seconds as f64)
    .fetch_optional(db)
    .await
}

/// Saves the step log and refreshes the heartbeat, so the claim stays ours.
pub async fn save_steps(db: &PgPool, job_id: Uuid, worker: &str, steps: &serde_json::Value) -> sqlx::Result<()> {
    sqlx::query("update job set steps = $2, heartbeat_at = now() where job_id = $1 and claimed_by = $3").bind(job_id).bind(steps).bind(worker).execute(db).await?;
    Ok(())
}

/// Keeps a long step's claim fresh; false once another worker has taken the job over.
pub async fn touch(db: &PgPool, job_id: Uuid, worker: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("update job set heartbeat_at = now() where job_id = $1 and claimed_by = $2 and state = 'running'").bind(job_id).bind(worker).execute(db).await?;
    Ok(r.rows_affected() == 1)
}

pub async fn finish(db: &PgPool, job_id: Uuid, worker: &str, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update job set state = $2, error = $3, finished_at = now() where job_id = $1 and claimed_by = $4")
        .bind(job_id)
        .bind(if error.is_some() { JobState::Failed } else { JobState::Succeeded })
        .bind(error)
        .bind(worker)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get(db: &PgPool, job_id: Uuid) -> sqlx::Result<Option<JobRow>> {
    sqlx::query_as::<_, JobRow>(concat!("select ", job_cols!(), " from job where job_id = $1")).bind(job_id).fetch_optional(db).await
}

/// The latest job of each node of the environment (what the dashboard shows as progress).
pub async fn latest_per_node(db: &PgPool, environment_id: Uuid) -> sqlx::Result<Vec<JobRow>> {
    sqlx::query_as::<_, JobRow>(concat!("select distinct on (node_name) ", job_cols!(), " from job where environment_id = $1 order by node_name, created_at desc"))
        .bind(environment_id)
        .fetch_all(db)
        .await
}

/// Whether the node already has a job waiting to start (it will read the latest settings
/// when it runs, so a second one would add nothing).
pub async fn node_has_queued(db: &PgPool, node_id: Uuid, kind: JobKind) -> sqlx::Result<bool> {
    sqlx::query_scalar::<_, bool>("select exists (select 1 from job where node_id = $1 and kind = $2 and state = 'queued')").bind(node_id).bind(kind).fetch_one(db).await
}

/// Whether the node already has a queued or running job (a second one would race it).
pub async fn node_busy(db: &PgPool, node_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar::<_, bool>("select exists (select 1 from job where node_id = $1 and state in ('queued', 'running'))").bind(node_id).fetch_one(db).await
}

/// How many of the node's jobs failed since its last success (for retry backoff), and how
/// long ago its latest job finished.
pub async fn failures_since_success(db: &PgPool, node_id: Uuid) -> sqlx::Result<(i64, Option<f64>)> {
    sqlx::query_as::<_, (i64, Option<f64>)>(
        "select (select count(*) from job j where j.node_id = $1 and j.state = 'failed'
                   and j.created_at > coalesce((select max(created_at) from job s where s.node_id = $1 and s.state = 'succeeded'), '-infinity')),
                (select extract(epoch from now() - max(finished_at))::float8 from job where node_id = $1)",
    )
    .bind(node_id)
    .fetch_one(db)
    .await
}
