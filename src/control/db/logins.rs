//! Login throttling state, shared by every `filesync serve` process (see
//! `control::http::limiter` for the policy): failures per key and the time until which a
//! key is locked, and the addresses each user logged in from successfully.

use sqlx::PgPool;

/// Failures older than this (seconds) are forgotten.
pub const FORGET_AFTER_S: f64 = 3600.0;

/// How long `key` must still wait before a password is checked, if it is locked.
pub async fn locked_for(db: &PgPool, key: &str) -> sqlx::Result<Option<f64>> {
    sqlx::query_scalar::<_, f64>("select extract(epoch from locked_until - now())::float8 from login_throttle where throttle_key = $1 and locked_until > now()").bind(key).fetch_optional(db).await
}

/// Counts a failure for `key`; failures older than `forget_s` seconds start over. Once
/// `free` failures are reached, the key is locked for `base_s * 2^(failures - free)`
/// seconds, at most `max_s`. Returns (failures, seconds locked).
pub async fn record_failure(db: &PgPool, key: &str, free: i32, base_s: f64, max_s: f64, forget_s: f64) -> sqlx::Result<(i32, f64)> {
    // The new failure count is spelled out twice (SET cannot read its own result).
    sqlx::query_as::<_, (i32, f64)>(
        "insert into login_throttle as t (throttle_key, failures, locked_until, last_failure_at)
         values ($1, 1, case when 1 >= $2 then now() + make_interval(secs => least($4, $3)) end, now())
         on conflict (throttle_key) do update set
           failures = case when t.last_failure_at < now() - make_interval(secs => $5) then 1 else t.failures + 1 end,
           locked_until = case when (case when t.last_failure_at < now() - make_interval(secs => $5) then 1 else t.failures + 1 end) >= $2
             then now() + make_interval(secs => least($4, $3 * power(2, (case when t.last_failure_at < now() - make_interval(secs => $5) then 1 else t.failures + 1 end) - $2)))
             else null end,
           last_failure_at = now()
         returning failures, coalesce(extract(epoch from locked_until - now())::float8, 0)",
    )
    .bind(key)
    .bind(free)
    .bind(base_s)
    .bind(max_s)
    .bind(forget_s)
    .fetch_one(db)
    .await
}

pub async fn clear(db: &PgPool, key: &str) -> sqlx::Result<()> {
    sqlx::query("delete from login_throttle where throttle_key = $1").bind(key).execute(db).await?;
    Ok(())
}

pub async fn trust(db: &PgPool, username: &str, address: &str) -> sqlx::Result<()> {
    sqlx::query("insert into login_trusted (username, address) values ($1, $2) on conflict (username, address) do update set last_success_at = now()").bind(username).bind(address).execute(db).await?;
    Ok(())
}

/// Whether `username` logged in from `address` within the last 30 days.
pub async fn trusted(db: &PgPool, username: &str, address: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar::<_, bool>("select exists (select 1 from login_trusted where username = $1 and address = $2 and last_success_at > now() - interval '30 days')")
        .bind(username)
        .bind(address)
        .fetch_one(db)
        .await
}

/// Forgets failures older than `forget_s` seconds whose lock has passed (keeps the table
/// small however many user names strangers try).
pub async fn forget_old(db: &PgPool, forget_s: f64) -> sqlx::Result<u64> {
    let r = sqlx::query("delete from login_throttle where last_failure_at < now() - make_interval(secs => $1) and (locked_until is null or locked_until < now())").bind(forget_s).execute(db).await?;
    Ok(r.rows_affected())
}
