//! `filesync demo`: the first-run experience. By default: an embedded PostgreSQL, the
//! control plane on 127.0.0.1:8080, and an environment of three real sshd nodes on
//! 127.0.0.11-13 (each with its own webroot) registered through the JSON API, so a newcomer
//! logs in, clicks Install and watches files replicate. `--agents-only` keeps the older
//! demo: a CA and three agents on 127.0.0.2-4 as child processes, no control plane.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::protocol::agent_toml::{AgentToml, PeerConfig, TlsConfig};

pub const DEMO_PORT: u16 = 7755;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo's nodes live (default: /tmp/filesync-demo).
    #[arg(long, default_value = "/tmp/filesync-demo")]
    pub dir: PathBuf,
    /// Batch delay in seconds for the demo agents.
    #[arg(long, default_value_t = 1)]
    pub delay: u64,
    /// The old demo: three agents on 127.0.0.2-4 without control plane, SSH or database.
    #[arg(long)]
    pub agents_only: bool,
    /// Dashboard address of the control-plane demo.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// How many sshd nodes the control-plane demo starts (on 127.0.0.11 and up).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=200))]
    pub nodes: u8,
    /// Also write the demo's URL, environment id and login as JSON to this file (for scripts
    /// such as the benchmark; the file is mode 0600 because it holds the password).
    #[arg(long)]
    pub info_file: Option<PathBuf>,
}

pub async fn agents_only(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pki = dir.join("pki");
    if !pki.join("ca.key").exists() {
        let ca = crate::pki::new_ca("filesync demo CA")?;
        crate::pki::write_private(&pki.join("ca.pem"), &ca.cert_pem)?;
        crate::pki::write_private(&pki.join("ca.key"), &ca.key_pem)?;
    }
    let ca = crate::pki::load_ca(&pki)?;
    let nodes: Vec<(String, IpAddr)> = (1..=3).map(|i| (format!("node{i}"), format!("127.0.0.{}", i + 1).parse().expect("BUG: literal IP"))).collect();
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for (name, ip) in &nodes {
        let home = dir.join(name);
        let root = home.join("webroot/ROOT");
        std::fs::create_dir_all(&root)?;
        let cert = crate::pki::issue(&ca, name, &[*ip], &[])?;
        crate::pki::write_private(&home.join("tls/node.pem"), &cert.cert_pem)?;
        crate::pki::write_private(&home.join("tls/node.key"), &cert.key_pem)?;
        let tls = TlsConfig { ca: pki.join("ca.pem"), cert: home.join("tls/node.pem"), key: home.join("tls/node.key") };
        let mut cfg = AgentToml::new(name.as_str(), std::net::SocketAddr::new(*ip, DEMO_PORT), &root, tls);
        cfg.delay = args.delay;
        cfg.write_quiet = 2;
        cfg.peers = nodes.iter().filter(|(n, _)| n != name).map(|(peer, pip)| PeerConfig { name: peer.clone(), address: std::net::SocketAddr::new(*pip, DEMO_PORT) }).collect();
        let cfg = cfg.to_toml("filesync demo agent")?;
        let cfg_path = home.join("agent.toml");
        std::fs::write(&cfg_path, cfg)?;
        let child = tokio::process::Command::new(&exe).arg("agent").arg("--config").arg(&cfg_path).kill_on_drop(true).spawn().context("cannot start an agent")?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (name, _) in &nodes {
        let log = dir.join(name).join("webroot/lsyncd/var/log/lsyncd.log");
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|s| s.contains("startup complete")) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not start within 20 s; see {}", log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("filesync demo: 3 agents running (delay {} s), full mesh over mutual TLS on 127.0.0.2-4:{DEMO_PORT}", args.delay);
    for (name, ip) in &nodes {
        println!("  {name} ({ip}): {}", dir.join(name).join("webroot/ROOT").display());
    }
    println!();
    println!("Drop a file into one of them and watch it appear in the others, e.g.:");
    println!("  echo hello > {}/node1/webroot/ROOT/hello.txt; sleep 2; cat {}/node3/webroot/ROOT/hello.txt", dir.display(), dir.display());
    println!("Logs and status: {}/node1/webroot/lsyncd/var/log/lsyncd.log and lsyncd.status", dir.display());
    println!("Press Ctrl-C to stop.");
    shutdown.cancelled().await;
    for c in &mut children {
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    Ok(())
}

/// The control-plane demo.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::pki::tls::install_crypto_provider();
    let dir = args.dir.clone();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The demo's database is throwaway: fast settings, and a fresh secret key each run.
    let pg = crate::sandbox::Postgres::start(&dir.join("postgres"), false, false)?;
    let db_url = pg.create_app_database("filesync", "filesync")?;
    let pool = crate::control::db::connect(&db_url).await?;
    let secret_key = crate::control::ops::tokens::random_token(32);
    let public_key = crate::control::ensure_ssh_public_key(&pool, &secret_key).await?;
    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let spec = crate::sandbox::SshNodeSpec {
            name: format!("node{i}"),
            ip: IpAddr::from([127, 0, 0, 10 + i]),
            port: 2222,
            dir: dir.join(format!("node{i}")),
            authorized_key: public_key.clone(),
            view: Vec::new(),
        };
        nodes.push(tokio::task::spawn_blocking(move || crate::sandbox::SshNode::start(spec)).await??);
    }
    let password = crate::control::ops::tokens::random_token(12);
    let serve_args = crate::control::ServeArgs {
        listen: args.listen,
        tls: crate::control::tls::TlsMode::Auto,
        tls_cert: None,
        tls_key: None,
        database_url: Some(db_url),
        data_dir: dir.clone(),
        secret_key_file: None,
        agent_binary: None,
        parallel_installs: 8,
        heartbeat_seconds: 5,
        job_stale_seconds: 60,
        max_connections: 512,
        max_connections_per_address: 64,
        header_timeout_seconds: 10,
        verify_every_hours: 24.0,
        sample_retention_days: 7.0,
        admin_password: Some(password.clone()),
        secret_key: Some(secret_key),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {} (use --listen)", args.listen))?;
    anyhow::ensure!(listener.local_addr()?.ip().is_loopback(), "the demo serves plain HTTP and listens on loopback addresses only (--listen 127.0.0.1:8080)");
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(crate::control::serve(serve_args, pool, listener, shutdown.clone()));
    // Register the environment and nodes through the public API, as automation would.
    let http = reqwest::Client::new();
    let mut token = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while token.is_none() {
        anyhow::ensure!(Instant::now() < deadline, "the control plane did not start");
        if let Ok(r) = http.post(format!("{url}/api/v1/tokens")).json(&serde_json::json!({"username": "admin", "password": password, "name": "demo"})).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            token = v["token"].as_str().map(str::to_owned);
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let token = token.expect("BUG: loop ends with a token");
    let env: serde_json::Value =
        http.post(format!("{url}/api/v1/environments")).bearer_auth(&token).json(&serde_json::json!({"name": "demo", "webroot": "/var/www/webroot"})).send().await?.json().await?;
    let env_id = env["result"].as_str().context("cannot create the demo environment")?.to_owned();
    for n in &nodes {
        let body = serde_json::json!({
            "name": n.spec.name, "address": n.spec.ip.to_string(), "ssh_port": n.spec.port.to_string(),
            "webroot": n.webroot().display().to_string(), "install_prefix": n.install_prefix().display().to_string(),
        });
        let r = http.post(format!("{url}/api/v1/environments/{env_id}/nodes")).bearer_auth(&token).json(&body).send().await?;
        anyhow::ensure!(r.status().is_success(), "cannot add {}: {}", n.spec.name, r.text().await?);
    }
    if let Some(f) = &args.info_file {
        let info = serde_json::json!({"url": url, "environment_id": env_id, "username": "admin", "password": password, "nodes": nodes.iter().map(|n| serde_json::json!({"name": n.spec.name, "address": n.spec.ip.to_string(), "webroot": n.webroot()})).collect::<Vec<_>>()});
        crate::pki::write_private(f, &serde_json::to_string_pretty(&info)?)?;
    }
    println!("filesync demo: control plane at {url}/environments/{env_id}");
    println!("  log in as admin / {password}");
    println!("  environment \"demo\": {} nodes (real sshd on 127.0.0.11-{}:2222), webroots {}/nodeN/webroot", args.nodes, 10 + args.nodes as u32, dir.display());
    println!();
    println!("Open the environment, keep path ROOT and click Install. Then drop a file on one node:");
    println!("  echo hello > {}/node1/webroot/ROOT/hello.txt; sleep 12; cat {}/node3/webroot/ROOT/hello.txt", dir.display(), dir.display());
    println!("and open a node's Logs page to watch lsyncd.log. Press Ctrl-C to stop everything.");
    let r = server.await?;
    drop(nodes);
    drop(pg);
    r
}
