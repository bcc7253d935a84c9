//! Users, browser sessions and API tokens. Tokens are stored as sha256 hashes only.

use sqlx::PgPool;
use uuid::Uuid;

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct UserRow {
    pub app_user_id: Uuid,
    pub username: String,
    pub password_hash: String,
}

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct SessionRow {
    pub app_user_id: Uuid,
    pub username: String,
    pub csrf_token: String,
}

/// An API token as listed (never the token itself).
#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct ApiTokenRow {
    pub api_token_id: Uuid,
    pub name: String,
    #[serde(serialize_with = "super::ts")]
    pub created_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts")]
    pub expires_at: time::OffsetDateTime,
    #[serde(serialize_with = "super::ts_opt")]
    pub revoked_at: Option<time::OffsetDateTime>,
    #[serde(serialize_with = "super::ts_opt")]
    pub last_used_at: Option<time::OffsetDateTime>,
}

pub async fn count(db: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar::<_, i64>("select count(*) from app_user").fetch_one(db).await
}

/// Creates the user unless the name is taken; true when created.
pub async fn create(db: &PgPool, username: &str, password_hash: &str) -> sqlx::Result<bool> {
    let r = sqlx::query("insert into app_user (app_user_id, username, password_hash) values ($1, $2, $3) on conflict (username) do nothing")
        .bind(Uuid::new_v4())
        .bind(username)
        .bind(password_hash)
        .execute(db)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn by_name(db: &PgPool, username: &str) -> sqlx::Result<Option<UserRow>> {
    sqlx::query_as::<_, UserRow>("select app_user_id, username, password_hash from app_user where username = $1").bind(username).fetch_optional(db).await
}

pub async fn create_session(db: &PgPool, token_hash: &str, user: Uuid, csrf: &str) -> sqlx::Result<()> {
    sqlx::query("insert into session (session_token_hash, app_user_id, csrf_token, expires_at) values ($1, $2, $3, now() + interval '12 hours')")
        .bind(token_hash)
        .bind(user)
        .bind(csrf)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn session(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<SessionRow>> {
    sqlx::query_as::<_, SessionRow>("select s.app_user_id, u.username, s.csrf_token from session s join app_user u using (app_user_id) where s.session_token_hash = $1 and s.expires_at > now()")
        .bind(token_hash)
        .fetch_optional(db)
        .await
}

pub async fn delete_session(db: &PgPool, token_hash: &str) -> sqlx::Result<()> {
    sqlx::query("delete from session where session_token_hash = $1").bind(token_hash).execute(db).await?;
    Ok(())
}

/// A new API token valid for `valid_days`; returns its row.
pub async fn create_token(db: &PgPool, token_hash: &str, user: Uuid, name: &str, valid_days: i32) -> sqlx::Result<ApiTokenRow> {
    sqlx::query_as::<_, ApiTokenRow>(
        "insert into api_token (api_token_id, token_hash, app_user_id, name, expires_at) values ($1, $2, $3, $4, now() + make_interval(days => $5))
         returning api_token_id, name, created_at, expires_at, revoked_at, last_used_at",
    )
    .bind(Uuid::new_v4())
    .bind(token_hash)
    .bind(user)
    .bind(name)
    .bind(valid_days)
    .fetch_one(db)
    .await
}

/// The user a bearer token belongs to, if it is neither expired nor revoked; records the use.
pub async fn token_user(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as::<_, (Uuid, String)>(
        "update api_token t set last_used_at = now() from app_user u
         where t.token_hash = $1 and u.app_user_id = t.app_user_id and t.revoked_at is null and t.expires_at > now()
         returning u.app_user_id, u.username",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

pub async fn list_tokens(db: &PgPool, user: Uuid) -> sqlx::Result<Vec<ApiTokenRow>> {
    sqlx::query_as::<_, ApiTokenRow>("select api_token_id, name, created_at, expires_at, revoked_at, last_used_at from api_token where app_user_id = $1 order by created_at desc")
        .bind(user)
        .fetch_all(db)
        .await
}

/// Revokes one of the user's tokens; false when the user has no such token.
pub async fn revoke_token(db: &PgPool, user: Uuid, id: Uuid) -> sqlx::Result<bool> {
    let r = sqlx::query("update api_token set revoked_at = coalesce(revoked_at, now()) where api_token_id = $1 and app_user_id = $2").bind(id).bind(user).execute(db).await?;
    Ok(r.rows_affected() == 1)
}
