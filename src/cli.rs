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
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Commands for a running agent. Times (`--at`, `--since`, ...) are Unix seconds, a UTC date
/// and time (`2026-01-31T14:05:00Z`, `2026-01-31 14:05`, `2026-01-31`), or an age (`30m`,
/// `2h`, `3d`: that long ago).
#[derive(Subcommand)]
pub enum CtlCommand {
    /// Print the agent's status (JSON).
    Status,
    /// Re-read the peer list, the delay and the [versions] and [mass_delete] settings.
    Reload,
    /// Scan the whole tree now.
    Rescan,
    /// Receive-only nodes: put back the cluster's version of every local modification.
    Revert,
    /// The sync root really was emptied: send its deletes.
    ConfirmEmpty,
    Pause,
    Resume,
    /// List the versions this node kept (what peers' changes replaced or deleted), newest first.
    Versions {
        /// A file or folder (default: everything).
        path: Option<String>,
        /// Only versions of deleted files.
        #[arg(long)]
        deleted: bool,
        /// Only versions kept at or after this time.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only versions kept at or before this time.
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Restore versions kept on this node. The restore is a change made on this node: it
    /// replicates to every node. A file gets its newest version (or --version, or --at);
    /// a folder gets back the files deleted there (or --at, or those deleted in a window);
    /// everything needs --at or --deleted-since. A path that holds something newer keeps it: the version is written
    /// beside it as NAME.restored-<time>.EXT (unless --replace).
    Restore {
        /// A file or folder (default: everything).
        #[arg(default_value = "")]
        path: String,
        /// Exactly this version (an id from `versions`).
        #[arg(long = "version")]
        id: Option<u64>,
        /// As it was at this time.
        #[arg(long, value_parser = parse_time, conflicts_with_all = ["id", "deleted_since"])]
        at: Option<i64>,
        /// Files deleted from this time on (with --deleted-until, default now).
        #[arg(long, value_parser = parse_time, conflicts_with = "id")]
        deleted_since: Option<i64>,
        #[arg(long, value_parser = parse_time, requires = "deleted_since")]
        deleted_until: Option<i64>,
        /// Replace the current file even if it changed since (it is kept as a version).
        #[arg(long)]
        replace: bool,
        /// Only show what would be restored.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show the peers' deletions held here, or confirm or reject a held mass delete.
    Hold {
        #[command(subcommand)]
        action: Option<HoldAction>,
    },
}

#[derive(Subcommand)]
pub enum HoldAction {
    /// Apply the held deletions here.
    Confirm {
        /// The node whose deletions are held (needed only when several are).
        #[arg(long)]
        from: Option<String>,
    },
    /// Do not delete: this node sends the held files back as its own, so they come back on
    /// the node that deleted them and on every other node.
    Reject {
        #[arg(long)]
        from: Option<String>,
    },
}

/// Unix seconds, `YYYY-MM-DD[( |T)HH:MM[:SS]][Z]` in UTC, or an age (`30m`, `2h`, `3d`).
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if s.ends_with(['s', 'm', 'h', 'd']) && s[..s.len() - 1].chars().all(|c| c.is_ascii_digit()) {
        return crate::agent::config::parse_duration(s).map(|d| now - d.as_secs() as i64);
    }
    let bad = || format!("{s:?}: use Unix seconds, a UTC time like 2026-01-31T14:05:00Z (or 2026-01-31), or an age like 30m, 2h, 3d");
    let t = s.trim_end_matches('Z');
    let (date, clock) = t.split_once(['T', ' ']).unwrap_or((t, "00:00:00"));
    let d: Vec<&str> = date.split('-').collect();
    let c: Vec<&str> = clock.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&c.len()) {
        return Err(bad());
    }
    let num = |x: &str| x.parse::<i32>().map_err(|_| bad());
    let month = time::Month::try_from(num(d[1])? as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(num(d[0])?, month, num(d[2])? as u8).map_err(|_| bad())?;
    let clock = time::Time::from_hms(num(c[0])? as u8, num(c[1])? as u8, c.get(2).map_or(Ok(0), |x| num(x))? as u8).map_err(|_| bad())?;
    Ok(date.with_time(clock).assume_utc().unix_timestamp())
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
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "filesync=warn".into())).with_writer(std::io::stderr).init();
    if matches!(cli.command, Command::Agent(_)) {
        crate::agent::memory::one_heap();
    }
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
            let out = ctl(&c.config, c.command).await?;
            println!("{}", out.trim_end());
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

/// Sends one control command to the agent described by `config`, over its own mTLS, and
/// returns what to print.
pub async fn ctl(config: &std::path::Path, command: CtlCommand) -> anyhow::Result<String> {
    use crate::protocol::versions::{HoldRequest, HoldResponse, RestoreRequest, RestoreResponse, VersionList};
    let simple = |c: &str| format!("/v1/admin/{c}");
    match command {
        CtlCommand::Status => ctl_get(config, "/v1/status").await,
        CtlCommand::Reload => agent_request(config, "POST", &simple("reload"), None).await,
        CtlCommand::Rescan => agent_request(config, "POST", &simple("rescan"), None).await,
        CtlCommand::Revert => agent_request(config, "POST", &simple("revert"), None).await,
        CtlCommand::ConfirmEmpty => agent_request(config, "POST", &simple("confirm-empty"), None).await,
        CtlCommand::Pause => agent_request(config, "POST", &simple("pause"), None).await,
        CtlCommand::Resume => agent_request(config, "POST", &simple("resume"), None).await,
        CtlCommand::Versions { path, deleted, since, until, limit, json } => {
            let mut q = format!("/v1/versions?limit={limit}&deleted={deleted}");
            if let Some(p) = &path {
                q.push_str(&format!("&path={}", crate::agent::transfer::urlencode(p)));
            }
            for (k, v) in [("from", since), ("to", until)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={v}"));
                }
            }
            let text = ctl_get(config, &q).await?;
            if json {
                return Ok(text);
            }
            Ok(crate::agent::versions::describe_list(&serde_json::from_str::<VersionList>(&text)?))
        }
        CtlCommand::Restore { path, id, at, deleted_since, deleted_until, replace, dry_run, json } => {
            let deleted_to = deleted_since.map(|_| deleted_until.unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp()));
            let req = RestoreRequest { path, id, at, deleted_from: deleted_since, deleted_to, replace, dry_run };
            let text = agent_request(config, "POST", "/v1/admin/restore", Some(serde_json::to_string(&req)?)).await?;
            if json {
                return Ok(text);
            }
            let r: RestoreResponse = serde_json::from_str(&text)?;
            let mut out = String::new();
            for x in &r.restored {
                let how = if x.written_to != x.path {
                    format!(" beside a newer file, as {}", x.written_to)
                } else if x.replaced {
                    " (its current content is kept as a version)".into()
                } else {
                    String::new()
                };
                out.push_str(&format!("{} {} (version {}){how}\n", if r.dry_run { "would restore" } else { "restored" }, x.path, x.id));
            }
            for x in &r.skipped {
                out.push_str(&format!("skipped {}: {}\n", x.path, x.reason));
            }
            out.push_str(&r.message);
            Ok(out)
        }
        CtlCommand::Hold { action: None } => {
            let st: serde_json::Value = serde_json::from_str(&ctl_get(config, "/v1/status").await?)?;
            let holds: Vec<crate::protocol::versions::HeldDeletes> = serde_json::from_value(st["mass_delete_holds"].clone()).unwrap_or_default();
            if holds.is_empty() {
                return Ok("no deletions are waiting on this node".into());
            }
            let when = |t: i64| {
                let t = time::OffsetDateTime::from_unix_timestamp(t).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
            };
            Ok(holds
                .iter()
                .map(|h| format!("{} deletions from {} ({} files, {} entries) since {}, e.g. {}", h.state, h.from, h.files, h.entries, when(h.since), h.sample.join(", ")))
                .collect::<Vec<_>>()
                .join("\n"))
        }
        CtlCommand::Hold { action: Some(a) } => {
            let (verb, from) = match a {
                HoldAction::Confirm { from } => ("confirm", from),
                HoldAction::Reject { from } => ("reject", from),
            };
            let text = agent_request(config, "POST", &format!("/v1/admin/hold/{verb}"), Some(serde_json::to_string(&HoldRequest { from })?)).await?;
            Ok(serde_json::from_str::<HoldResponse>(&text)?.message)
        }
    }
}

async fn ctl_get(config: &std::path::Path, path: &str) -> anyhow::Result<String> {
    agent_request(config, "GET", path, None).await
}

/// Reads a stopped agent's index. Opening it verifies the state dir as the agent's own and
/// repairs what is not (private_fs): only as the user that owns it, never someone else's.
fn inspect_stopped(state_dir: &std::path::Path, p: &crate::protocol::RelPath) -> anyhow::Result<serde_json::Value> {
    crate::private_fs::ensure_owned_by_me(state_dir)?;
    crate::agent::inspect::report(&crate::agent::index::Index::open(state_dir)?, p)
}

async fn agent_request(config: &std::path::Path, method: &str, path: &str, json: Option<String>) -> anyhow::Result<String> {
    crate::pki::tls::install_crypto_provider();
    let s = Settings::load(config)?;
    // From the agent's own address: its connection limits count it as known, not as a stranger.
    let client = crate::pki::tls::http_client_from(&s.tls, Some(s.listen.ip()))?;
    let url = format!("https://{}{}", s.listen, path);
    let mut req = if method == "GET" { client.get(&url) } else { client.post(&url) };
    if let Some(body) = json {
        req = req.header("content-type", "application/json").body(body);
    }
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
