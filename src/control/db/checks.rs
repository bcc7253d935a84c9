//! Verify and repair runs (`sync_check`): queued by an operator, the API or the schedule,
//! claimed like jobs (`for update skip locked`, a stale claim is taken over), with the
//! comparison's result as JSON.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct CheckRow {
    pub sync_check_id: Uuid,
    pub environment_id: Uuid,
    /// `verify` or `repair`.
    pub kind: String,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub state: String,
    pub requested_by: String,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    #[serde(serialize_with = "super::ts")]
    pub created_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts_opt")]
    pub finished_at: Option<time::OffsetDateTime>,
}

macro_rules! check_cols {
    () => {
        "sync_check_id, environment_id, kind, state, requested_by, result, error, created_at, finished_at"
    };
}

/// Queues a run unless one of that kind is already queued for the environment; returns the
/// queued run's id.
pub async fn enqueue(db: &PgPool, env: Uuid, kind: &str, by: &str) -> sqlx::Result<Uuid> {
    let mut tx = db.begin().await?;
    super::advisory_xact_lock(&mut tx, 0x6673_636b).await?;
    if let Some(id) =
        sqlx::query_scalar::<_, Uuid>("select sync_check_id from sync_check where environment_id = $1 and kind = $2 and state = 'queued'").bind(env).bind(kind).fetch_optional(&mut *tx).await?
    {
        tx.commit().await?;
        return Ok(id);
    }
    let id = Uuid::new_v4();
    sqlx::query("insert into sync_check (sync_check_id, environment_id, kind, requested_by) values ($1, $2, $3, $4)").bind(id).bind(env).bind(kind).bind(by).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(id)
}

/// Claims the oldest runnable run (one per environment at a time).
pub async fn claim_next(db: &PgPool, worker: &str, stale_seconds: u32) -> sqlx::Result<Option<CheckRow>> {
    sqlx::query_as::<_, CheckRow>(concat!(
        "update sync_check set state = 'running', claimed_by = $1, heartbeat_at = now()
         where sync_check_id = (
           select sync_check_id from sync_check c
           where (state = 'queued' or (state = 'running' and heartbeat_at < now() - make_interval(secs => $2)))
             and not exists (select 1 from sync_check o where o.environment_id = c.environment_id and o.sync_check_id <> c.sync_check_id
                             and o.state = 'running' and o.heartbeat_at >= now() - make_interval(secs => $2))
           order by created_at
           for update skip locked
           limit 1)
         returning ",
        check_cols!()
    ))
    .bind(worker)
    .bind(stale_seconds as f64)
    .fetch_optional(db)
    .await
}

/// Keeps a claim fresh and saves the progress so far; false once another worker took it.
pub async fn touch(db: &PgPool, id: Uuid, worker: &str, progress: &serde_json::Value) -> sqlx::Result<bool> {
    let r = sqlx::query("update sync_check set heartbeat_at = now(), result = $3 where sync_check_id = $1 and claimed_by = $2 and state = 'running'")
        .bind(id)
        .bind(worker)
        .bind(progress)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn finish(db: &PgPool, id: Uuid, worker: &str, result: &serde_json::Value, error: Option<&str>) -> sqlx::Result<()> {
    sqlx::query("update sync_check set state = $3, result = $4, error = $5, finished_at = now() where sync_check_id = $1 and claimed_by = $2")
        .bind(id)
        .bind(worker)
        .bind(if error.is_some() { "failed" } else { "succeeded" })
        .bind(result)
        .bind(error)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get(db: &PgPool, id: Uuid) -> sqlx::Result<Option<CheckRow>> {
    sqlx::query_as::<_, CheckRow>(concat!("select ", check_cols!(), " from sync_check where sync_check_id = $1")).bind(id).fetch_optional(db).await
}

/// The environment's newest runs, newest first.
pub async fn recent(db: &PgPool, env: Uuid, limit: i64) -> sqlx::Result<Vec<CheckRow>> {
    sqlx::query_as::<_, CheckRow>(concat!("select ", check_cols!(), " from sync_check where environment_id = $1 order by created_at desc limit $2")).bind(env).bind(limit).fetch_all(db).await
}

/// Installed environments whose last verify was queued more than `hours` ago (or never, the
/// installation being older than that).
pub async fn due_for_verify(db: &PgPool, hours: f64) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar::<_, Uuid>(
        "select l.environment_id from installation i join layer l using (layer_id)
         where i.state = 'installed' and i.created_at < now() - make_interval(secs => $1)
           and not exists (select 1 from sync_check c where c.environment_id = l.environment_id and c.kind = 'verify'
                           and c.created_at > now() - make_interval(secs => $1))",
    )
    .bind(hours * 3600.0)
    .fetch_all(db)
    .await
}
