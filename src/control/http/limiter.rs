//! Logins that withstand strangers (the dashboard form and `POST /api/v1/tokens`).
//!
//! - Password hashing (argon2id, 19 MiB each) runs on a few dedicated threads (one per
//!   CPU), each reusing one block of memory; a few requests may wait briefly, the rest get
//!   429 at once, so a flood of logins cannot exhaust memory or threads.
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
const FORGET_S: f64 = db::logins::FORGET_AFTER_S;
/// How long a login may wait for the hashing gate before it gets 429.
const GATE_WAIT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

/// At most one password hash per hashing thread at a time; a bounded number waiting.
pub struct HashGate {
    jobs: std::sync::mpsc::SyncSender<Job>,
    permits: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl HashGate {
    pub fn new(threads: usize) -> HashGate {
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(threads);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("filesync-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .expect("BUG: cannot start a password hashing thread");
        }
        HashGate { jobs: tx, permits: Semaphore::new(threads), waiting: AtomicUsize::new(0), max_waiting: threads * 4 }
    }

    pub fn for_this_machine() -> HashGate {
        HashGate::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))
    }

    /// Runs `f` (a password hash) on a hashing thread once one is free.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
        let busy = || Error::TooMany { message: "too many logins at once; try again in a few seconds".into(), retry_after: 2 };
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(busy());
        }
        let permit = tokio::time::timeout(GATE_WAIT, self.permits.acquire()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(Ok(_permit)) = permit else { return Err(busy()) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A permit is held, so a thread is free or about to be: this does not block long.
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .map_err(|_| Error::Internal(anyhow::anyhow!("the password hashing threads stopped")))?;
        rx.await.map_err(|_| Error::Internal(anyhow::anyhow!("password hashing failed")))
    }
}

pub fn hash_password_blocking(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::PasswordHasher;
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    argon2::Argon2::default().hash_password_with_salt(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| anyhow::anyhow!("argon2: {e}"))
}

thread_local! {
    /// The hashing thread's argon2 memory, allocated once and reused: freeing and
    /// allocating 19 MiB per login made the allocator keep hundreds of MiB around.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Checks `password` against a PHC string (argon2id as written by
/// [`hash_password_blocking`]) in this thread's reused memory.
fn verify_blocking(password: &str, phc: &str) -> bool {
    let Ok(h) = argon2::PasswordHash::new(phc) else { return false };
    let (Some(salt), Some(expected)) = (&h.salt, &h.hash) else { return false };
    let (Ok(params), Ok(alg)) = (argon2::Params::try_from(&h), argon2::Algorithm::try_from(h.algorithm.as_str())) else { return false };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let n = params.block_count();
    let mut out = vec![0u8; expected.as_ref().len()];
    let hashed = BLOCKS.with(|b| {
        let mut blocks = b.borrow_mut();
        if blocks.len() < n {
            blocks.resize(n, argon2::Block::new());
        }
        argon2::Argon2::new(alg, version, params).hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..n]).is_ok()
    });
    hashed && out.len() == expected.as_ref().len() && out.iter().zip(expected.as_ref()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
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
    // Longer passwords are never set; checking them would only cost time.
    let password = if password.len() > 1024 { "" } else { password };
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
        // Unknown users cost a whole hash too: the dummy is a valid argon2id PHC string.
        let dummy = argon2::PasswordHash::new(DUMMY_HASH).unwrap();
        assert!(argon2::Params::try_from(&dummy).is_ok() && dummy.salt.is_some() && dummy.hash.is_some());
        assert!(!verify_blocking("x", DUMMY_HASH));
    }
}
