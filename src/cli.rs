//! The command line: `filesync agent | ca | ctl | inspect | serve | demo`. Each
//! subcommand's arguments are documented with the command (`serve`'s in `control`,
//! `demo`'s in `demo`) and become its `--help`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::agent::config::Settings;

#[derive(Parser)]
#[command(name = "filesync", version, about = "Keeps a folder identical on several nodes (the File Synchronization add-on, done right).")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the node agent: watch the sync folder and replicate it with every peer.
    Agent(AgentArgs),
    /// Create a CA and node certificates for standalone agents.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Talk to a running agent (status, reload, revert, ...), using its own config.
    Ctl(CtlArgs),
    /// Print what an agent's index knows about a path (versions, tombstones, pending fetch).
    /// With `--config` it asks the running agent (or reads its state dir if it is stopped);
    /// with `--state-dir` it reads a stopped agent's index.
    Inspect {
        /// The agent's config file.
        #[arg(long, conflicts_with = "state_dir", required_unless_present = "state_dir")]
        config: Option<PathBuf>,
        /// The agent's state dir (holds index.redb).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The path relative to the sync root.
        path: String,
    },
    /// The control plane: dashboard, JSON API and installer over PostgreSQL.
    Serve(crate::control::ServeArgs),
    /// First run: embedded PostgreSQL, the control plane, and three sshd nodes on 127.0.0.11-13
    /// ready for a one-click install (`--agents-only`: just three local agents syncing).
    Demo(crate::demo::DemoArgs),
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Agent config file (TOML). See `--print-example-config`.
    #[arg(long, short, required_unless_present = "print_example_config")]
    pub config: Option<PathBuf>,
    /// Override the config's `delay` (seconds).
    #[arg(long)]
    pub delay: Option<u64>,
    /// Print a complete, commented example config and exit.
    #[arg(long)]
    pub print_example_config: bool,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create `ca.pem` and `ca.key` in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "filesync CA")]
        name: String,
    },
    /// Issue `NAME.pem` and `NAME.key` in DIR, signed by DIR's CA, valid for the given addresses.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        /// IP address the node is reached at (repeatable).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// DNS name the node is reached at (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
}

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The agent's config file (its address and certificate are used to connect).
    #[arg(long, short)]
    pub config: PathBuf,
    /// status | reload | rescan | revert | confirm-empty | pause | resume
    pub command: String,
}

/// Secrets `serve` takes from the environment. They are removed from the process
/// environment at start, so no child (PostgreSQL, ssh) inherits them.
#[derive(Default)]
pub struct EnvSecrets {
    pub secret_key: Option<String>,
    pub admin_password: Option<String>,
}

/// Takes the secrets out of the environment (and DATABASE_URL, which may hold a password;
/// clap has already read it into the arguments).
#[allow(unsafe_code)]
fn take_secret_env() -> EnvSecrets {
    let take = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let s = EnvSecrets { secret_key: take("FILESYNC_SECRET_KEY"), admin_password: take("FILESYNC_ADMIN_PASSWORD") };
    for k in ["FILESYNC_SECRET_KEY", "FILESYNC_ADMIN_PASSWORD", "DATABASE_URL"] {
        // SAFETY: called at the top of `main`, before the tokio runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(k) };
    }
    s
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let secrets = take_secret_env();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "filesync=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("BUG: cannot start the tokio runtime");
    match rt.block_on(dispatch(cli, secrets)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filesync: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli, secrets: EnvSecrets) -> anyhow::Result<()> {
    match cli.command {
        Command::Agent(a) => {
            if a.print_example_config {
                print!("{}", crate::agent::config::EXAMPLE);
                return Ok(());
            }
            let path = a.config.expect("BUG: clap requires --config");
            let mut s = Settings::load(&path)?;
            if let Some(d) = a.delay {
                s.delay = std::time::Duration::from_secs(d);
            }
            let shutdown = shutdown_on_signals();
            crate::agent::run(s, shutdown).await
        }
        Command::Ca(CaCommand::Init { dir, name }) => {
            anyhow::ensure!(!dir.join("ca.key").exists(), "{} already holds a CA; refusing to overwrite it", dir.display());
            let ca = crate::pki::new_ca(&name)?;
            crate::pki::write_private(&dir.join("ca.pem"), &ca.cert_pem)?;
            crate::pki::write_private(&dir.join("ca.key"), &ca.key_pem)?;
            println!("created {} and {}", dir.join("ca.pem").display(), dir.join("ca.key").display());
            Ok(())
        }
        Command::Ca(CaCommand::Issue { dir, name, ips, dns }) => {
            let ca = crate::pki::load_ca(&dir)?;
            let cert = crate::pki::issue(&ca, &name, &ips, &dns)?;
            crate::pki::write_private(&dir.join(format!("{name}.pem")), &cert.cert_pem)?;
            crate::pki::write_private(&dir.join(format!("{name}.key")), &cert.key_pem)?;
            println!("created {}.pem and {}.key in {}", name, name, dir.display());
            Ok(())
        }
        Command::Ctl(c) => {
            let out = ctl(&c.config, &c.command).await?;
            println!("{out}");
            Ok(())
        }
        Command::Inspect { config, state_dir, path } => {
            let p = crate::protocol::RelPath::parse(&path)?;
            let v = match (config, state_dir) {
                (Some(cfg), _) => match ctl_get(&cfg, &format!("/v1/inspect?path={}", crate::agent::transfer::urlencode(p.as_str()))).await {
                    Ok(text) => serde_json::from_str(&text)?,
                    Err(e) if e.to_string().contains("is it running?") => {
                        let s = Settings::load(&cfg)?;
                        inspect_stopped(&s.state_dir, &p)?
                    }
                    Err(e) => return Err(e),
                },
                (None, Some(dir)) => inspect_stopped(&dir, &p)?,
                (None, None) => unreachable!("clap requires one"),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Serve(mut a) => {
            a.admin_password = secrets.admin_password;
            a.secret_key = secrets.secret_key;
            let (pool, _pg) = crate::control::database(&a).await?;
            let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("cannot listen on {}", a.listen))?;
            crate::control::serve(a, pool, listener, shutdown_on_signals()).await
        }
        Command::Demo(d) if d.agents_only => crate::demo::agents_only(d, shutdown_on_signals()).await,
        Command::Demo(d) => crate::demo::run(d, shutdown_on_signals()).await,
    }
}

/// Sends one control command to the agent described by `config`, over its own mTLS.
pub async fn ctl(config: &std::path::Path, command: &str) -> anyhow::Result<String> {
    let (method, path) = match command {
        "status" => ("GET", "/v1/status".to_owned()),
        "reload" | "rescan" | "revert" | "confirm-empty" | "pause" | "resume" => ("POST", format!("/v1/admin/{command}")),
        other => anyhow::bail!("unknown ctl command {other:?}; use status, reload, rescan, revert, confirm-empty, pause or resume"),
    };
    agent_request(config, method, &path).await
}

async fn ctl_get(config: &std::path::Path, path: &str) -> anyhow::Result<String> {
    agent_request(config, "GET", path).await
}

/// Reads a stopped agent's index. Opening it verifies the state dir as the agent's own and
/// repairs what is not (private_fs): only as the user that owns it, never someone else's.
fn inspect_stopped(state_dir: &std::path::Path, p: &crate::protocol::RelPath) -> anyhow::Result<serde_json::Value> {
    crate::private_fs::ensure_owned_by_me(state_dir)?;
    crate::agent::inspect::report(&crate::agent::index::Index::open(state_dir)?, p)
}

async fn agent_request(config: &std::path::Path, method: &str, path: &str) -> anyhow::Result<String> {
    crate::pki::tls::install_crypto_provider();
    let s = Settings::load(config)?;
    // From the agent's own address: its connection limits count it as known, not as a stranger.
    let client = crate::pki::tls::http_client_from(&s.tls, Some(s.listen.ip()))?;
    let url = format!("https://{}{}", s.listen, path);
    let req = if method == "GET" { client.get(&url) } else { client.post(&url) };
    let resp = req.send().await.with_context(|| format!("cannot reach the agent at {} (is it running?)", s.listen))?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "agent answered {status}: {text}");
    Ok(text)
}

/// A token cancelled on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("BUG: cannot install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        t.cancel();
    });
    token
}
