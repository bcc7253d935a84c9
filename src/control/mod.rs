//! The control plane, `filesync serve`: a dashboard and JSON API over PostgreSQL, and a job
//! runner that installs, reconfigures and uninstalls agents on nodes over SSH.
//!
//! It keeps no state outside Postgres: its SSH key, every environment's CA, sessions, jobs
//! and their step logs are rows, so several `filesync serve` processes can share one
//! database behind a load balancer. Files it writes (the SSH key for `ssh`, client
//! certificates for calling agents) are copies in a private runtime directory.
//!
//! Layers, top to bottom: `http` (dashboard, API, errors, login throttling) → `ops` (what
//! both do) → `jobs` (the runner and the install steps) and `agent_api` (calls to agents)
//! → `db`, `ssh`, `secrets`, `state`. `listener` and `tls` serve `http` to strangers.

pub mod agent_api;
pub mod checks;
pub mod db;
pub mod health;
pub mod http;
pub mod jobs;
pub mod listener;
pub mod manifest;
pub mod monitor;
pub mod ops;
pub mod safety;
pub mod secrets;
pub mod ssh;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::manifest::Manifest;
use self::secrets::{Place, Secrets};

/// The shortest first-admin password accepted.
pub const MIN_ADMIN_PASSWORD: usize = 12;

/// `filesync serve` options. Secrets come from the environment, never from argv.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address for the dashboard and API.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FILESYNC_LISTEN")]
    pub listen: SocketAddr,
    /// TLS for the dashboard and API: auto (plain HTTP on a loopback address, TLS
    /// elsewhere), on, or off (only behind a TLS-terminating proxy).
    #[arg(long, value_enum, default_value = "auto", env = "FILESYNC_TLS")]
    pub tls: tls::TlsMode,
    /// The dashboard's certificate chain (PEM); without it a self-signed certificate is
    /// made on first start and its fingerprint printed.
    #[arg(long, env = "FILESYNC_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "FILESYNC_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PostgreSQL URL. Without it, an embedded PostgreSQL is started in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Where the embedded PostgreSQL keeps its data (only without DATABASE_URL), and the
    /// default place of the secret key file.
    #[arg(long, default_value = "/var/lib/filesync", env = "FILESYNC_DATA_DIR")]
    pub data_dir: PathBuf,
    /// The key that seals secrets at rest, when FILESYNC_SECRET_KEY is not set (created,
    /// mode 0600, on first start; default <data-dir>/secret.key). Back it up with the
    /// database: without it the CA keys, SSH key and link passwords cannot be opened.
    #[arg(long, env = "FILESYNC_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
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
    /// Open connections to the dashboard and API, in total and per client address.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request's headers (slow clients are disconnected).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Every installed environment is verified (its nodes' trees compared) this often;
    /// 0 turns the schedule off.
    #[arg(long, default_value_t = 24.0, env = "FILESYNC_VERIFY_EVERY_HOURS")]
    pub verify_every_hours: f64,
    /// Lag and throughput samples (one per node per heartbeat) are kept this long.
    #[arg(long, default_value_t = 7.0, env = "FILESYNC_SAMPLE_RETENTION_DAYS")]
    pub sample_retention_days: f64,
    /// The first admin's password, from FILESYNC_ADMIN_PASSWORD (never argv).
    #[arg(skip)]
    pub admin_password: Option<String>,
    /// The passphrase sealing secrets, from FILESYNC_SECRET_KEY (never argv).
    #[arg(skip)]
    pub secret_key: Option<String>,
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
    /// The dashboard is served over TLS (cookies get `Secure` and `__Host-`; HSTS).
    pub tls: bool,
    /// Bounds concurrent password hashing.
    pub gate: Arc<http::limiter::HashGate>,
    /// How often agents are polled (their status is stale after a few periods).
    pub heartbeat: std::time::Duration,
    /// The verify schedule (0: off) and how long samples are kept.
    pub verify_every_hours: f64,
    pub sample_retention_days: f64,
}

/// The passphrase sealing secrets: FILESYNC_SECRET_KEY, else the key file (created on
/// first start, and said so).
pub fn secret_passphrase(args: &ServeArgs) -> anyhow::Result<String> {
    if let Some(k) = args.secret_key.clone().filter(|k| !k.is_empty()) {
        return Ok(k);
    }
    let path = args.secret_key_file.clone().unwrap_or_else(|| args.data_dir.join("secret.key"));
    let (key, created) = secrets::key_file(&path)?;
    if created {
        println!(
            "filesync serve: created the secret key {} (mode 0600); back it up with the database: without it the CA keys, SSH key and link passwords stored there cannot be opened",
            path.display()
        );
    }
    Ok(key)
}

/// Runs `filesync serve` until `shutdown`, on a database that is already reachable.
pub async fn serve(args: ServeArgs, pool: PgPool, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::pki::tls::install_crypto_provider();
    let secrets = Secrets::init(&pool, &secret_passphrase(&args)?).await?;
    if db::is_superuser(&pool).await? {
        eprintln!("filesync serve: WARNING: connected to PostgreSQL as a superuser; use a role that only owns the filesync database (a superuser can read the server's files)");
    }
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
    let addr = listener.local_addr()?;
    let dashboard = tls::setup(args.tls, args.tls_cert.as_deref(), args.tls_key.as_deref(), addr, &pool, &secrets).await?;
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
        tls: dashboard.is_some(),
        gate: Arc::new(http::limiter::HashGate::for_this_machine()),
        heartbeat: std::time::Duration::from_secs(args.heartbeat_seconds.max(1)),
        verify_every_hours: args.verify_every_hours.max(0.0),
        sample_retention_days: args.sample_retention_days.max(0.01),
    };
    println!("filesync serve: listening on {}://{addr}", if state.tls { "https" } else { "http" });
    if let Some(d) = &dashboard {
        println!("filesync serve: TLS with a {}", d.describe);
    }
    let runner = tokio::spawn(jobs::runner(state.clone(), args.parallel_installs.max(1), args.job_stale_seconds.max(5), shutdown.clone()));
    let monitor = tokio::spawn(monitor::run(state.clone(), std::time::Duration::from_secs(args.heartbeat_seconds.max(1)), shutdown.clone()));
    let checks = tokio::spawn(checks::runner(state.clone(), args.job_stale_seconds.max(5), shutdown.clone()));
    let limits = listener::Limits {
        max_connections: args.max_connections.max(1),
        per_address: args.max_connections_per_address.max(1),
        header_timeout: std::time::Duration::from_secs(args.header_timeout_seconds.max(1)),
        ..listener::Limits::default()
    };
    listener::serve(listener, http::router(state), dashboard.map(|d| d.config), limits, shutdown).await;
    runner.abort();
    monitor.abort();
    checks.abort();
    Ok(())
}

/// The first admin: from FILESYNC_ADMIN_PASSWORD (at least [`MIN_ADMIN_PASSWORD`]
/// characters), or a generated password printed once.
async fn bootstrap_admin(pool: &PgPool, password: Option<String>) -> anyhow::Result<()> {
    if db::users::count(pool).await? > 0 {
        return Ok(());
    }
    let (password, generated) = match password {
        Some(p) if p.chars().count() < MIN_ADMIN_PASSWORD => anyhow::bail!("FILESYNC_ADMIN_PASSWORD is too short: use at least {MIN_ADMIN_PASSWORD} characters"),
        Some(p) => (p, false),
        None => (ops::tokens::random_token(12), true),
    };
    let p = password.clone();
    let hash = tokio::task::spawn_blocking(move || http::limiter::hash_password_blocking(&p)).await??;
    if db::users::create(pool, "admin", &hash).await? && generated {
        println!("filesync: created user admin with password {password} (shown once; set FILESYNC_ADMIN_PASSWORD to choose it)");
    }
    Ok(())
}

/// The control plane's SSH key pair, created on first start and shared by every process.
async fn ssh_key(pool: &PgPool, secrets: &Secrets) -> anyhow::Result<(String, String)> {
    let place = Place::setting("ssh_private_key");
    if let (Some(k), Some(p)) = (db::get_secret(pool, "ssh_private_key").await?, db::get_secret(pool, "ssh_public_key").await?) {
        return Ok((secrets.open(&k, &place)?, p));
    }
    let (private, public) = ssh::generate_keypair().await?;
    let stored = db::put_secret_once(pool, "ssh_private_key", &secrets.seal(&private, &place)?).await?;
    let won = secrets.open(&stored, &place)? == private;
    if won {
        db::put_secret_once(pool, "ssh_public_key", &public).await?;
        return Ok((private, public));
    }
    // Another process created the key first: use its pair (its public key may lag a moment).
    for _ in 0..50 {
        if let Some(p) = db::get_secret(pool, "ssh_public_key").await? {
            return Ok((secrets.open(&stored, &place)?, p));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the control plane's SSH key is half-created in the database; retry")
}

/// The public key nodes must authorize (used by `demo` before nodes exist).
pub async fn ensure_ssh_public_key(pool: &PgPool, passphrase: &str) -> anyhow::Result<String> {
    let secrets = Secrets::init(pool, passphrase).await?;
    Ok(ssh_key(pool, &secrets).await?.1.trim().to_owned())
}

/// Connects to DATABASE_URL, or starts the embedded PostgreSQL in `data_dir` (durable,
/// the application connecting as the non-superuser role `filesync`).
pub async fn database(args: &ServeArgs) -> anyhow::Result<(PgPool, Option<crate::sandbox::Postgres>)> {
    if let Some(url) = &args.database_url {
        return Ok((db::connect(url).await?, None));
    }
    let pg = crate::sandbox::Postgres::start(&args.data_dir.join("postgres"), true, true)?;
    let url = pg.create_app_database("filesync", "filesync")?;
    let pool = db::connect(&url).await?;
    Ok((pool, Some(pg)))
}
