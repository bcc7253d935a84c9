//! The control plane, `filesync serve`: a dashboard and JSON API over PostgreSQL, and a job
//! runner that installs, reconfigures and uninstalls agents on nodes over SSH.
//!
//! It keeps no state outside Postgres: its SSH key, every environment's CA, sessions, jobs
//! and their step logs are rows, so several `filesync serve` processes can share one
//! database behind a load balancer. Files it writes (the SSH key for `ssh`, client
//! certificates for calling agents) are copies in a private runtime directory.

pub mod db;
pub mod http;
pub mod jobs;
pub mod manifest;
pub mod monitor;
pub mod secrets;
pub mod ssh;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::manifest::Manifest;
use self::secrets::Secrets;

/// `filesync serve` options. Secrets come from the environment, never from argv.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address for the dashboard and API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FILESYNC_LISTEN")]
    pub listen: SocketAddr,
    /// PostgreSQL URL. Without it, an embedded PostgreSQL is started in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded PostgreSQL keeps its data (only without DATABASE_URL).
    #[arg(long, default_value = "/var/lib/filesync", env = "FILESYNC_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The executable installed on nodes as the agent (default: this very binary).
    #[arg(long, env = "FILESYNC_AGENT_BINARY")]
    pub agent_binary: Option<PathBuf>,
    /// How many nodes are installed at once by this process (installs mostly wait on SSH
    /// and on the agents' start-up, so this can exceed the CPU count).
    #[arg(long, default_value_t = 8)]
    pub parallel_installs: usize,
    /// How often the agents' status is polled for the dashboard (heartbeats).
    #[arg(long, default_value_t = 10, env = "FILESYNC_HEARTBEAT_SECONDS")]
    pub heartbeat_seconds: u64,
    /// A running job whose worker has not reported for this long is taken over by another
    /// `filesync serve` process (its worker is presumed dead).
    #[arg(long, default_value_t = 60, env = "FILESYNC_JOB_STALE_SECONDS")]
    pub job_stale_seconds: u32,
    /// The first admin's password, from FILESYNC_ADMIN_PASSWORD (never argv).
    #[arg(skip)]
    pub admin_password: Option<String>,
}

/// What every handler and job can reach: small on purpose.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub manifest: Arc<Manifest>,
    pub secrets: Secrets,
    pub ssh_keyfile: PathBuf,
    pub ssh_public_key: String,
    pub agent: Arc<jobs::AgentBinary>,
    pub runtime_dir: Arc<tempfile::TempDir>,
    pub worker: String,
    pub wake_jobs: Arc<tokio::sync::Notify>,
}

/// Runs `filesync serve` until `shutdown`, on a database that is already reachable.
pub async fn serve(args: ServeArgs, pool: PgPool, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::pki::tls::install_crypto_provider();
    let secrets = Secrets::from_env();
    let manifest = Arc::new(Manifest::load()?);
    bootstrap_admin(&pool, args.admin_password.clone()).await?;
    let runtime_dir = Arc::new(tempfile::Builder::new().prefix("filesync-serve-").tempdir()?);
    let (private, public) = ssh_key(&pool, &secrets).await?;
    let ssh_keyfile = ssh::write_keyfile(runtime_dir.path(), &private)?;
    let exe = match &args.agent_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot locate this executable to install it as the agent")?,
    };
    let agent = Arc::new(jobs::AgentBinary::load(&exe)?);
    let state = AppState {
        pool,
        manifest,
        secrets,
        ssh_keyfile,
        ssh_public_key: public.trim().to_owned(),
        agent,
        runtime_dir,
        worker: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
        wake_jobs: Arc::new(tokio::sync::Notify::new()),
    };
    let runner = tokio::spawn(jobs::runner(state.clone(), args.parallel_installs.max(1), args.job_stale_seconds.max(5), shutdown.clone()));
    let monitor = tokio::spawn(monitor::run(state.clone(), std::time::Duration::from_secs(args.heartbeat_seconds.max(1)), shutdown.clone()));
    let app = http::router(state);
    let s = shutdown.clone();
    axum::serve(listener, app).with_graceful_shutdown(async move { s.cancelled().await }).await?;
    runner.abort();
    monitor.abort();
    Ok(())
}

/// The first admin: from FILESYNC_ADMIN_PASSWORD, or a generated password printed once.
async fn bootstrap_admin(pool: &PgPool, password: Option<String>) -> anyhow::Result<()> {
    if db::users::count(pool).await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) => (p, false),
        None => (http::auth::random_token(12), true),
    };
    let hash = http::auth::hash_password(password.clone()).await?;
    if db::users::create(pool, "admin", &hash).await? && generated {
        println!("filesync: created user admin with password {password} (shown once; set FILESYNC_ADMIN_PASSWORD to choose it)");
    }
    Ok(())
}

/// The control plane's SSH key pair, created on first start and shared by every process.
async fn ssh_key(pool: &PgPool, secrets: &Secrets) -> anyhow::Result<(String, String)> {
    if let (Some(k), Some(p)) = (db::get_secret(pool, "ssh_private_key").await?, db::get_secret(pool, "ssh_public_key").await?) {
        return Ok((secrets.open(&k)?, p));
    }
    let (private, public) = ssh::generate_keypair().await?;
    let stored = db::put_secret_once(pool, "ssh_private_key", &secrets.seal(&private)?).await?;
    let won = secrets.open(&stored)? == private;
    if won {
        db::put_secret_once(pool, "ssh_public_key", &public).await?;
        return Ok((private, public));
    }
    // Another process created the key first: use its pair (its public key may lag a moment).
    for _ in 0..50 {
        if let Some(p) = db::get_secret(pool, "ssh_public_key").await? {
            return Ok((secrets.open(&stored)?, p));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the control plane's SSH key is half-created in the database; retry")
}

/// The public key nodes must authorize (used by `demo` and tests before nodes exist).
pub async fn ensure_ssh_public_key(pool: &PgPool) -> anyhow::Result<String> {
    Ok(ssh_key(pool, &Secrets::from_env()).await?.1.trim().to_owned())
}

/// Connects to DATABASE_URL, or starts the embedded PostgreSQL in `data_dir`.
pub async fn database(args: &ServeArgs) -> anyhow::Result<(PgPool, Option<crate::sandbox::Postgres>)> {
    if let Some(url) = &args.database_url {
        return Ok((db::connect(url).await?, None));
    }
    let pg = crate::sandbox::Postgres::start(&args.data_dir.join("postgres"), true)?;
    pg.create_database("filesync")?;
    let pool = db::connect(&pg.url("filesync")).await?;
    Ok((pool, Some(pg)))
}
