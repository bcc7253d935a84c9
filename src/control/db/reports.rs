//! What the monitor keeps from the agents' reports: recent file changes (the newest
//! [`KEEP_CHANGES`] per environment), the conflict copies seen (for events and the API)
//! and one lag/throughput sample per node per heartbeat (for the charts, trimmed by age).

use sqlx::PgPool;
use uuid::Uuid;

use crate::control::agent_api::RecentChange;

/// Recent changes kept per environment.
pub const KEEP_CHANGES: i64 = 2000;

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct ChangeRow {
    pub node_name: String,
    #[serde(serialize_with = "super::ts")]
    pub recorded_at: time::OffsetDateTime,
    pub path: String,
    pub kind: String,
    pub entry: String,
    /// The node that made the change.
    pub origin: String,
    /// The peer the recording node got it from (null: made there).
    pub via: Option<String>,
    pub size: i64,
    pub from_path: Option<String>,
    pub version: String,
}

/// Stores changes one node reported (in its order).
pub async fn add_changes(db: &PgPool, env: Uuid, node_id: Uuid, node_name: &str, changes: &[RecentChange]) -> sqlx::Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for c in changes {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(c.at_ms as i128 * 1_000_000).unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        sqlx::query("insert into file_change (environment_id, node_id, node_name, recorded_at, path, kind, entry, origin, via, size, from_path, version, content) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
            .bind(env)
            .bind(node_id)
            .bind(node_name)
            .bind(at)
            .bind(&c.path)
            .bind(c.kind.as_str())
            .bind(&c.entry)
            .bind(&c.origin)
            .bind(&c.via)
            .bind(c.size as i64)
            .bind(&c.from_path)
            .bind(&c.version)
            .bind(&c.content)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Deletes all but the newest [`KEEP_CHANGES`] changes of the environment.
pub async fn trim_changes(db: &PgPool, env: Uuid) -> sqlx::Result<()> {
    sqlx::query("delete from file_change where environment_id = $1 and file_change_id < (select coalesce(min(file_change_id), 0) from (select file_change_id from file_change where environment_id = $1 order by file_change_id desc limit $2) newest)")
        .bind(env)
        .bind(KEEP_CHANGES)
        .execute(db)
        .await?;
    Ok(())
}

/// The environment's newest changes, each change once (as the first node recorded it):
/// every node records the same change, the author as made there, the others as received.
/// A conflict copy is made by each node that held a losing version: listed once per name;
/// a content several nodes recorded with versions of their own (each resolving one
/// conflict) is listed once per author.
pub async fn environment_changes(db: &PgPool, env: Uuid, limit: i64) -> sqlx::Result<Vec<ChangeRow>> {
    sqlx::query_as::<_, ChangeRow>(
        "select node_name, recorded_at, path, kind, entry, origin, via, size, from_path, version from (
           select distinct on (path, kind, origin, (case when kind = 'conflict' then '' when content = '' then version else content end)) *, file_change_id as id from file_change where environment_id = $1
           order by path, kind, origin, (case when kind = 'conflict' then '' when content = '' then version else content end), (via is not null), file_change_id) firsts
         order by recorded_at desc, id desc limit $2",
    )
    .bind(env)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// One node's newest changes, as it recorded them.
pub async fn node_changes(db: &PgPool, node_id: Uuid, limit: i64) -> sqlx::Result<Vec<ChangeRow>> {
    sqlx::query_as::<_, ChangeRow>("select node_name, recorded_at, path, kind, entry, origin, via, size, from_path, version from file_change where node_id = $1 order by file_change_id desc limit $2")
        .bind(node_id)
        .bind(limit)
        .fetch_all(db)
        .await
}

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct ConflictRow {
    pub path: String,
    pub original: Option<String>,
    pub loser_node: String,
    #[serde(serialize_with = "super::ts")]
    pub first_seen_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts_opt")]
    pub resolved_at: Option<time::OffsetDateTime>,
}

/// Conflict copies seen and not resolved.
pub async fn open_conflicts(db: &PgPool, env: Uuid) -> sqlx::Result<Vec<ConflictRow>> {
    sqlx::query_as::<_, ConflictRow>("select path, original, loser_node, first_seen_at, resolved_at from conflict where environment_id = $1 and resolved_at is null order by first_seen_at desc, path")
        .bind(env)
        .fetch_all(db)
        .await
}

/// Records a copy as seen (again); true when it is new (or had been resolved).
pub async fn conflict_seen(db: &PgPool, env: Uuid, path: &str, original: Option<&str>, loser: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "insert into conflict (environment_id, path, original, loser_node) values ($1, $2, $3, $4)
         on conflict (environment_id, path) do update set resolved_at = null, first_seen_at = now() where conflict.resolved_at is not null",
    )
    .bind(env)
    .bind(path)
    .bind(original)
    .bind(loser)
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn conflict_gone(db: &PgPool, env: Uuid, path: &str) -> sqlx::Result<()> {
    sqlx::query("update conflict set resolved_at = now() where environment_id = $1 and path = $2 and resolved_at is null").bind(env).bind(path).execute(db).await?;
    Ok(())
}

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct SampleRow {
    pub node_id: Uuid,
    #[serde(serialize_with = "super::ts")]
    pub sampled_at: time::OffsetDateTime,
    pub lag_ms: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub pending: i64,
}

pub async fn add_sample(db: &PgPool, node_id: Uuid, lag_ms: Option<u64>, bytes_in: u64, bytes_out: u64, pending: u64) -> sqlx::Result<()> {
    sqlx::query("insert into node_sample (node_id, lag_ms, bytes_in, bytes_out, pending) values ($1, $2, $3, $4, $5) on conflict do nothing")
        .bind(node_id)
        .bind(lag_ms.map(|l| l as i64))
        .bind(bytes_in as i64)
        .bind(bytes_out as i64)
        .bind(pending as i64)
        .execute(db)
        .await?;
    Ok(())
}

/// Samples of the layer's nodes from the last `seconds`, oldest first.
pub async fn samples(db: &PgPool, layer_id: Uuid, seconds: f64) -> sqlx::Result<Vec<SampleRow>> {
    sqlx::query_as::<_, SampleRow>(
        "select s.node_id, s.sampled_at, s.lag_ms, s.bytes_in, s.bytes_out, s.pending from node_sample s join node n using (node_id)
         where n.layer_id = $1 and s.sampled_at > now() - make_interval(secs => $2) order by s.sampled_at",
    )
    .bind(layer_id)
    .bind(seconds)
    .fetch_all(db)
    .await
}

/// The node's two newest samples (for its current throughput), newest first.
pub async fn last_samples(db: &PgPool, node_id: Uuid) -> sqlx::Result<Vec<SampleRow>> {
    sqlx::query_as::<_, SampleRow>("select node_id, sampled_at, lag_ms, bytes_in, bytes_out, pending from node_sample where node_id = $1 order by sampled_at desc limit 2")
        .bind(node_id)
        .fetch_all(db)
        .await
}

/// Deletes samples older than `days`.
pub async fn trim_samples(db: &PgPool, days: f64) -> sqlx::Result<u64> {
    Ok(sqlx::query("delete from node_sample where sampled_at < now() - make_interval(secs => $1)").bind(days * 86400.0).execute(db).await?.rows_affected())
}
