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
    /// Works on a stopped agent's state dir.
    Inspect {
        /// The agent's state dir (holds index.redb).
        #[arg(long)]
        state_dir: PathBuf,
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
        Command::Inspect { state_dir, path } => {
            let index = crate::agent::index::Index::open(&state_dir)?;
            let p = crate::protocol::RelPath::parse(&path)?;
            let entry = index.get(&p)?;
            let need = index.get_need(&p)?;
            let v = serde_json::json!({
                "node_id": format!("{:016x}", index.node_id),
                "index_id": index.index_id,
                "last_seq": index.last_seq(),
                "peer_progress": index.all_progress()?.into_iter().map(|(p, g)| (p, serde_json::json!({"index_id": g.index_id, "seq": g.seq}))).collect::<std::collections::BTreeMap<_, _>>(),
                "entry": entry.map(|s| serde_json::json!({"seq": s.seq, "ino": s.ino, "deleted": s.entry.deleted, "kind": format!("{:?}", s.entry.kind), "size": s.entry.size, "hash": hex::encode(s.entry.hash), "version": s.entry.version.counters().iter().map(|(n, c)| (format!("{n:016x}"), *c)).collect::<std::collections::BTreeMap<_, _>>(), "modified_by": s.entry.modified_by_name})),
                "pending_fetch": need.map(|n| serde_json::json!({"source": n.source, "attempts": n.attempts, "last_error": n.last_error})),
            });
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
    crate::agent::tls::install_crypto_provider();
    let s = Settings::load(config)?;
    let client = crate::agent::tls::http_client(&s.tls)?;
    let (method, path) = match command {
        "status" => ("GET", "/v1/status".to_owned()),
        "reload" | "rescan" | "revert" | "confirm-empty" | "pause" | "resume" => ("POST", format!("/v1/admin/{command}")),
        other => anyhow::bail!("unknown ctl command {other:?}; use status, reload, rescan, revert, confirm-empty, pause or resume"),
    };
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
