//! Join tokens: what a cloned node presents to enroll itself (hashed like API tokens).
//! A token is tied to one environment, expires, and enrolls at most `max_uses` clones;
//! a use is taken atomically, so two clones racing for the last use cannot both win.

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
    pub max_uses: i32,
}

macro_rules! cols {
    () => {
        "join_token_id, environment_id, name, created_at, expires_at, revoked_at, uses, max_uses"
    };
}

pub async fn create(db: &PgPool, environment_id: Uuid, name: &str, token_hash: &str, valid_hours: i32, max_uses: i32) -> sqlx::Result<JoinTokenRow> {
    sqlx::query_as::<_, JoinTokenRow>(concat!(
        "insert into join_token (join_token_id, environment_id, name, token_hash, expires_at, max_uses) values ($1, $2, $3, $4, now() + make_interval(hours => $5), $6) returning ",
        cols!()
    ))
    .bind(Uuid::new_v4())
    .bind(environment_id)
    .bind(name)
    .bind(token_hash)
    .bind(valid_hours)
    .bind(max_uses)
    .fetch_one(db)
    .await
}

/// The token with this hash, and whether it has expired.
pub async fn by_hash(db: &PgPool, token_hash: &str) -> sqlx::Result<Option<(JoinTokenRow, bool)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        token: JoinTokenRow,
        expired: bool,
    }
    let row = sqlx::query_as::<_, Row>(concat!("select ", cols!(), ", expires_at < now() as expired from join_token where token_hash = $1")).bind(token_hash).fetch_optional(db).await?;
    Ok(row.map(|r| (r.token, r.expired)))
}

/// Takes one use of the token if it is still valid; false when it is spent, expired or
/// revoked (checked in the same statement).
pub async fn take_use(db: &PgPool, id: Uuid) -> sqlx::Result<bool> {
    let r = sqlx::query("update join_token set uses = uses + 1 where join_token_id = $1 and uses < max_uses and revoked_at is null and expires_at > now()").bind(id).execute(db).await?;
    Ok(r.rows_affected() == 1)
}

/// Gives a use back (the enrollment it was taken for was refused afterwards).
pub async fn give_back(db: &PgPool, id: Uuid) -> sqlx::Result<()> {
    sqlx::query("update join_token set uses = greatest(uses - 1, 0) where join_token_id = $1").bind(id).execute(db).await?;
    Ok(())
}

pub async fn list(db: &PgPool, environment_id: Uuid) -> sqlx::Result<Vec<JoinTokenRow>> {
    sqlx::query_as::<_, JoinTokenRow>(concat!("select ", cols!(), " from join_token where environment_id = $1 order by created_at desc")).bind(environment_id).fetch_all(db).await
}

/// Revokes a token; returns its environment, or None if there is no such token.
pub async fn revoke(db: &PgPool, id: Uuid) -> sqlx::Result<Option<Uuid>> {
    sqlx::query_scalar("update join_token set revoked_at = coalesce(revoked_at, now()) where join_token_id = $1 returning environment_id").bind(id).fetch_optional(db).await
}
