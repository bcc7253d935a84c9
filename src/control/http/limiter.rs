//! Logins that withstand strangers (the dashboard form and `POST /api/v1/tokens`).
//!
//! - Password hashing (argon2id, 19 MiB each) runs behind a gate of one permit per CPU;
//!   a few requests may wait briefly, the rest get 429 at once, so a flood of logins
//!   cannot exhaust memory or the blocking pool.
//! - Failed logins are counted per client address and per user name in Postgres (shared
//!   by every `serve` process). After [`IP_FREE`] failures an address waits 1 s, then
//!   2 s, 4 s ... up to 15 min before a password is checked again; after [`USER_FREE`]
//!   failures a user name waits 1 s doubling up to 5 min. A locked request gets 429 with
//!   `Retry-After` and costs no hashing. Every failure and lock is logged.
//! - The per-user lock does not apply to addresses the user logged in from before
//!   (`login_trusted`), so strangers guessing from elsewhere cannot lock the operator out.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use uuid::Uuid;

use super::Error;
use crate::control::AppState;
use crate::control::db;

/// Failures an address may make before it is slowed down.
pub const IP_FREE: i32 = 5;
const IP_MAX_LOCK_S: f64 = 900.0;
/// Failures a user name may collect (from anywhere) before it is slowed down.
pub const USER_FREE: i32 = 10;
const USER_MAX_LOCK_S: f64 = 300.0;
/// Failures older than this are forgotten.
const FORGET_S: f64 = 3600.0;
/// How long a login may wait for the hashing gate before it gets 429.
const GATE_WAIT: Duration = Duration::from_secs(5);

/// At most one password hash per CPU at a time; a bounded number waiting.
pub struct HashGate {
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl HashGate {
    pub fn new(parallel: usize) -> HashGate {
        let parallel = parallel.max(1);
        HashGate { permits: Semaphore::new(parallel), waiting: AtomicUsize::new(0), max_waiting: parallel * 4 }
    }

    pub fn for_this_machine() -> HashGate {
        HashGate::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }

    /// Runs `f` (a password hash) on the blocking pool once a permit is free.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let busy = || Error::TooMany { message: "too many logins at once; try again in a few seconds".into(), retry_after: 2 };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let permit = tokio::time::timeout(GATE_WAIT, self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(Ok(_permit)) = permit else { return Err(busy()) };
        tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(anyhow::anyhow!("password hashing: {e}")))
    }
}

pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    use argon2::password_hash::PasswordVerifier;
    argon2::Argon2::default().verify_password(password.as_bytes(), hash).is_ok()
}

/// A PHC string for unknown users, so they cost the same work as known ones.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2lGcSk4vnR0kD1Qy2C8IhqGAb8M6XFaiO9ZYJ4fQ2vM";

fn ip_key(ip: IpAddr) -> String {
    format!("ip:{ip}")
}

fn user_key(username: &str) -> String {
    format!("user:{}", username.chars().take(100).collect::<String>())
}

fn locked(what: &str, seconds: f64) -> Error {
    let s = seconds.ceil().max(1.0) as u64;
    Error::TooMany { message: format!("too many failed logins {what}; try again in {s} s"), retry_after: s }
}

/// Checks a user name and password from `ip`: the user's id when they match, None when
/// they do not, 429 while the address or the user name is locked or the gate is full.
pub async fn check_login(st: &AppState, ip: IpAddr, username: &str, password: &str) -> Result<Option<Uuid>, Error> {
    if let Some(s) = db::logins::locked_for(&st.pool, &ip_key(ip)).await? {
        tracing::warn!(client = %ip, username, "login refused: the address is locked for {s:.0} s after failed logins");
        return Err(locked("from your address", s));
    }
    if let Some(s) = db::logins::locked_for(&st.pool, &user_key(username)).await?
        && !db::logins::trusted(&st.pool, username, &ip.to_string()).await?
    {
        tracing::warn!(client = %ip, username, "login refused: the user name is locked for {s:.0} s after failed logins");
        return Err(locked("for this user", s));
    }
    let user = db::users::by_name(&st.pool, username).await?;
    let (pw, hash) = (password.to_owned(), user.as_ref().map(|u| u.password_hash.clone()).unwrap_or_else(|| DUMMY_HASH.into()));
    let ok = st.gate.run(move || verify_blocking(&pw, &hash)).await? && user.is_some();
    if let (true, Some(u)) = (ok, user) {
        db::logins::clear(&st.pool, &ip_key(ip)).await?;
        db::logins::clear(&st.pool, &user_key(username)).await?;
        db::logins::trust(&st.pool, username, &ip.to_string()).await?;
        return Ok(Some(u.app_user_id));
    }
    let (n_ip, lock_ip) = db::logins::record_failure(&st.pool, &ip_key(ip), IP_FREE, 1.0, IP_MAX_LOCK_S, FORGET_S).await?;
    let (n_user, lock_user) = db::logins::record_failure(&st.pool, &user_key(username), USER_FREE, 1.0, USER_MAX_LOCK_S, FORGET_S).await?;
    tracing::warn!(client = %ip, username, failures_from_address = n_ip, failures_for_user = n_user, address_locked_s = lock_ip, user_locked_s = lock_user, "failed login");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_gate_refuses_beyond_its_queue() {
        let gate = std::sync::Arc::new(HashGate::new(1));
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let mut running = Vec::new();
        for _ in 0..5 {
            let (g, rx) = (gate.clone(), rx.clone());
            running.push(tokio::spawn(async move { g.run(move || rx.lock().unwrap().recv().ok()).await.is_ok() }));
        }
        while gate.waiting.load(Ordering::SeqCst) < 4 {
            tokio::task::yield_now().await;
        }
        // One running, four waiting: the sixth is refused at once.
        assert!(matches!(gate.run(|| ()).await, Err(Error::TooMany { .. })));
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        for r in running {
            assert!(r.await.unwrap());
        }
    }

    #[test]
    fn hashes_verify() {
        let h = hash_password_blocking("correct horse battery").unwrap();
        assert!(verify_blocking("correct horse battery", &h) && !verify_blocking("wrong", &h));
        assert!(!verify_blocking("x", DUMMY_HASH));
    }
}
