//! `filesync demo`: the first-run experience. Creates a CA and three nodes under one
//! folder (each with its own webroot), starts three agents on 127.0.0.2-4 as child
//! processes, and tells the user where to drop a file. Ctrl-C stops them.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::DemoArgs;

pub const DEMO_PORT: u16 = 7755;

pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
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
        let mut cfg = format!(
            "node_name = \"{name}\"\nlisten = \"{ip}:{DEMO_PORT}\"\nroot = \"{}\"\ndelay = {}\nwrite_quiet = 2\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            root.display(),
            args.delay,
            pki.join("ca.pem").display(),
            home.join("tls/node.pem").display(),
            home.join("tls/node.key").display()
        );
        for (peer, pip) in nodes.iter().filter(|(n, _)| n != name) {
            cfg.push_str(&format!("\n[[peers]]\nname = \"{peer}\"\naddress = \"{pip}:{DEMO_PORT}\"\n"));
        }
        let cfg_path = home.join("agent.toml");
        std::fs::write(&cfg_path, cfg)?;
        let child = tokio::process::Command::new(&exe)
            .arg("agent")
            .arg("--config")
            .arg(&cfg_path)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start an agent")?;
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
