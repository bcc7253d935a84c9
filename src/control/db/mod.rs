//! All SQL of the control plane lives in this module and its children; every query binds
//! its parameters (no SQL is ever built from user input). Queries are runtime-checked
//! (`query_as::<_, Row>`) so a build needs no database; the integration tests run every
//! one of them against a real PostgreSQL.

pub mod checks;
pub mod environments;
pub mod jobs;
pub mod join_tokens;
pub mod logins;
pub mod nodes;
pub mod reports;
pub mod users;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use environments::{EnvironmentRow, InstallationRow};
pub use jobs::JobRow;
pub use nodes::NodeRow;

/// Connects and applies the migrations in `migrations/` (embedded at build time).
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to PostgreSQL ({e}); check DATABASE_URL"))?;
    sqlx::migrate!().run(&pool).await?;
    Ok(pool)
}

/// Whether this connection's role is a PostgreSQL superuser (it should not be: a
/// superuser can read the server's files and its processes' environment).
pub async fn is_superuser(db: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar::<_, bool>("select rolsuper from pg_roles where rolname = current_user").fetch_one(db).await
}

pub async fn get_secret(db: &PgPool, name: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar::<_, String>("select value from control_secret where name = $1").bind(name).fetch_optional(db).await
}

/// Replaces a secret row (used by the one-time re-sealing of secrets).
pub async fn replace_secret(db: &mut sqlx::PgConnection, name: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("update control_secret set value = $2 where name = $1").bind(name).bind(value).execute(db).await?;
    Ok(())
}

/// Sets a control-plane setting row, replacing its value.
pub async fn set_secret(db: &mut sqlx::PgConnection, name: &str, value: &str) -> sqlx::Result<()> {
    sqlx::query("insert into control_secret (name, value) values ($1, $2) on conflict (name) do update set value = excluded.value").bind(name).bind(value).execute(db).await?;
    Ok(())
}

/// Takes a transaction-level advisory lock (released at commit or rollback).
pub async fn advisory_xact_lock(db: &mut sqlx::PgConnection, key: i64) -> sqlx::Result<()> {
    sqlx::query("select pg_advisory_xact_lock($1)").bind(key).execute(db).await?;
    Ok(())
}

/// Every control-plane secret row, as (name, value).
pub async fn all_secrets(db: &PgPool) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query_as::<_, (String, String)>("select name, value from control_secret order by name").fetch_all(db).await
}

/// Stores `value` unless another process stored one first; returns the value that won.
pub async fn put_secret_once(db: &PgPool, name: &str, value: &str) -> sqlx::Result<String> {
    sqlx::query("insert into control_secret (name, value) values ($1, $2) on conflict (name) do nothing").bind(name).bind(value).execute(db).await?;
    Ok(get_secret(db, name).await?.unwrap_or_default())
}

pub async fn add_event(db: &PgPool, environment_id: Option<uuid::Uuid>, message: &str) -> sqlx::Result<()> {
    sqlx::query("insert into event (environment_id, message) values ($1, $2)").bind(environment_id).bind(message).execute(db).await?;
    Ok(())
}

#[derive(sqlx::FromRow, Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub message: String,
    #[serde(serialize_with = "ts")]
    pub created_at: time::OffsetDateTime,
}

pub async fn recent_events(db: &PgPool, environment_id: uuid::Uuid) -> sqlx::Result<Vec<EventRow>> {
    sqlx::query_as::<_, EventRow>("select message, created_at from event where environment_id = $1 order by event_id desc limit 20").bind(environment_id).fetch_all(db).await
}

/// Timestamps go out as RFC 3339 strings in the API.
pub fn ts<S: serde::Serializer>(t: &time::OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default())
}

pub fn ts_opt<S: serde::Serializer>(t: &Option<time::OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => ts(t, s),
        None => s.serialize_none(),
    }
}

/// Takes a session-level advisory lock on this connection if nobody holds it.
pub async fn try_advisory_lock(conn: &mut sqlx::PgConnection, key: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("select pg_try_advisory_lock($1)").bind(key).fetch_one(conn).await
}

pub async fn advisory_unlock(conn: &mut sqlx::PgConnection, key: i64) -> sqlx::Result<()> {
    sqlx::query("select pg_advisory_unlock($1)").bind(key).execute(conn).await?;
    Ok(())
}
