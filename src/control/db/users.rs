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
    sqlx::query_as::<_, SessionRow>(
        "select s.app_user_id, u.username, s.csrf_token from session s join app_user u using (app_user_id) where s.session_token_hash = $1 and s.expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await
}

pub async fn delete_session(db: &PgPool, token_hash: &str) -> sqlx::Result<()> {
    sqlx::query("delete from session where session_token_hash = $1").bind(token_hash).execute(db).await?;
    Ok(())
}

pub async fn create_token(db: &PgPool, token_hash: &str, user: Uuid, name: &str) -> sqlx::Result<()> {
    sqlx::query("insert into api_token (api_token_id, token_hash, app_user_id, name) values ($1, $2, $3, $4)")
        .bind(Uuid::new_v4())
        .bind(token_hash)
        .bind(user)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

/// The user a bearer token belongs to.
pub async fn token_user(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar::<_, String>("select u.username from api_token t join app_user u using (app_user_id) where t.token_hash = $1")
        .bind(token_hash)
        .fetch_optional(db)
        .await
}
