//! A cloned node enrolling itself (DESIGN.md requirement 3, "cloned node").
//!
//! When [`super::identity`] finds that this state dir was copied from node X on another
//! machine, the agent does not start as X (it would present X's certificate and replay X's
//! history). Instead it reads `enroll.toml` next to its config (written by the platform's
//! clone hook):
//!
//! ```toml
//! control_plane = "https://filesync.example.com"
//! token = "fsj_..."              # an environment join token from the dashboard
//! address = "10.0.0.7"           # optional: how peers reach this node
//! ```
//!
//! and asks the control plane to enroll it (`POST /api/v1/enroll`), retrying every few
//! seconds with the reason in lsyncd.log while the token is refused. Once enrolled it waits:
//! the control plane installs the node under its new name and certificate and restarts it.

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::config::Settings;
use super::lsyncd_log::LsyncdLog;

/// In the state dir once the control plane accepted the enrollment: holds the new name.
pub const MARKER: &str = "enrolled";
pub const ENROLL_FILE: &str = "enroll.toml";
const RETRY: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
struct EnrollFile {
    control_plane: String,
    token: String,
    #[serde(default)]
    address: Option<String>,
}

fn enroll_file(s: &Settings) -> PathBuf {
    s.config_path.as_deref().and_then(Path::parent).unwrap_or(Path::new(".")).join(ENROLL_FILE)
}

/// Runs instead of the agent on a clone of node `of`, until shutdown.
pub async fn as_clone(s: &Settings, log: &LsyncdLog, of: &str, shutdown: CancellationToken) -> anyhow::Result<()> {
    log.error(format!(
        "this node's state was copied from node {of} on another machine (a clone): it will not act as {of}; enrolling as a new node with the control plane (or, if this really is {of} after a disk move, remove {} and restart)",
        s.state_dir.join("identity.toml").display()
    ));
    let mut last_error = String::new();
    loop {
        let state = crate::private_fs::PrivateDir::state(&s.state_dir)?;
        if let Some(name) = state.read(MARKER)? {
            let name = String::from_utf8_lossy(&name);
            log.normal(format!("enrolled as {}; waiting for the control plane to install this node's own configuration and certificate", name.trim()));
            shutdown.cancelled().await;
            return Ok(());
        }
        match try_enroll(s, of).await {
            Ok(name) => {
                state.write_atomic(MARKER, name.as_bytes(), true)?;
                continue;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_error {
                    log.error(format!("cannot enroll this clone of {of}: {msg}; retrying every {} s", RETRY.as_secs()));
                    last_error = msg;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn try_enroll(s: &Settings, of: &str) -> anyhow::Result<String> {
    let path = enroll_file(s);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no {}: the platform's clone hook should write control_plane = \"<URL>\" and token = \"<join token from the environment page>\" there", path.display()))?;
    let f: EnrollFile = toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    let base = f.control_plane.trim_end_matches('/');
    let address = match f.address {
        Some(a) => a,
        None => local_address_towards(base).with_context(|| format!("cannot tell this node's address; set address = \"...\" in {}", path.display()))?.to_string(),
    };
    let webroot = s.log_dir.ancestors().nth(3).unwrap_or(&s.log_dir).display().to_string();
    let prefix = s.config_path.as_deref().and_then(Path::parent).unwrap_or(Path::new("/opt/filesync")).display().to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let body = serde_json::json!({"token": f.token.trim(), "clone_of": of, "address": address, "webroot": webroot, "install_prefix": prefix, "hostname": host});
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v1/enroll"))
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .with_context(|| format!("no answer from the control plane at {base}"))?;
    let status = r.status();
    let body = crate::pki::tls::read_limited(r, 16 * 1024 * 1024, "the enrollment answer").await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let why = v["error"].as_str().unwrap_or("no reason given");
        anyhow::bail!("the control plane refused ({status}): {why}");
    }
    Ok(v["name"].as_str().context("the control plane's answer names no node")?.to_owned())
}

/// The local address the kernel would use to reach the control plane (no packet is sent).
fn local_address_towards(url: &str) -> anyhow::Result<IpAddr> {
    let u = reqwest::Url::parse(url)?;
    let host = u.host_str().context("the control plane URL has no host")?;
    let port = u.port_or_known_default().unwrap_or(443);
    let sock = UdpSocket::bind(("0.0.0.0", 0))?;
    sock.connect((host, port))?;
    Ok(sock.local_addr()?.ip())
}
