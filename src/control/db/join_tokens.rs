//! Join tokens: what a cloned node presents to enroll itself (hashed like API tokens).

use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct JoinTokenRow {
    pub join_token_id: Uuid,
    pub environment_id: Uuid,
    pub name: String,
    #[serde(serialize_with = "super::ts")]
    pub created_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts")]
    pub expires_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts_opt")]
    pub revoked_at: Option<time::OffsetDateTime>,
    pub uses: i32,
}

const COLS: &str = "join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses";

pub async fn create(db: &PgPool, environment_id: Uuid, name: &str, token_hash: &str, valid_hours: i32) -> sqlx::Result<JoinTokenRow> {
    let _ = COLS;
    sqlx::query_as::<_, JoinTokenRow>(
        "insert into join_token (join_token_id, environment_id, name, token_hash, expires_at) values ($1, $2, $3, $4, now() + make_interval(hours => $5))
         returning join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses",
    )
    .bind(Uuid::new_v4())
    .bind(environment_id)
    .bind(name)
    .bind(token_hash)
    .bind(valid_hours)
    .fetch_one(db)
    .await
}

pub async fn by_hash(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<(JoinTokenRow, bool)>> {
    let row: Option<(Uuid, Uuid, String, time::OffsetDateTime, time::OffsetDateTime, Option<time::OffsetDateTime>, i32, bool)> = sqlx::query_as(
        "select join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses, expires_at < now() from join_token where token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses, expired)| {
        (JoinTokenRow { join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses }, expired)
    }))
}

pub async fn used(db: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update join_token set uses = uses + 1 where join_token_id = $1").bind(id).execute(db).await?;
    Ok(())
}

pub async fn list(db: &PgPool, environment_id: Uuid) -> sqlx::Result<Vec<JoinTokenRow>> {
    sqlx::query_as::<_, JoinTokenRow>("select join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses from join_token where environment_id = $1 order by created_at desc")
        .bind(environment_id)
        .fetch_all(db)
        .await
}

/// Revokes a token; returns its environment, or None if there is no such token.
pub async fn revoke(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("update join_token set revoked_at = coalesce(revoked_at, now()) where join_token_id = $1 returning environment_id").bind(id).fetch_optional(db).await
}
