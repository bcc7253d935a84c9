//! SSH to nodes: the only module that imports `openssh` (which drives the system's `ssh`
//! client over a ControlMaster connection). It owns host-key pinning: the first contact
//! records the node's key (`ssh-keyscan`), every later connection uses a per-node
//! known_hosts file holding only that key with `StrictHostKeyChecking=yes`, and a changed
//! key is refused before authenticating, with both fingerprints in the error.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

/// Why talking to a node failed; job steps turn each into advice for the operator.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {addr}: {reason}. Check that the node is up, the address and SSH port are right, and no firewall blocks it")]
    Unreachable { addr: String, reason: String },
    #[error(
        "the host key of {addr} has CHANGED: pinned {pinned}, now offered {offered}. If the node was reinstalled on purpose, forget the pinned key (node page → Forget host key) and retry; otherwise someone may be impersonating it"
    )]
    HostKeyChanged { addr: String, pinned: String, offered: String },
    #[error("{addr} refused our SSH key for user {user}: {reason}. Add the control plane's public key (shown on the dashboard) to ~{user}/.ssh/authorized_keys on the node")]
    AuthFailed { addr: String, user: String, reason: String },
    #[error("command failed with {status}: {stderr_tail}")]
    CommandFailed { status: String, stderr_tail: String },
    #[error("ssh: {0}")]
    Other(String),
}

/// Where and as whom to log in, and the pinned host key line (None before first contact).
#[derive(Clone, Debug)]
pub struct Target {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub pinned: Option<String>,
}

impl Target {
    fn addr(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }
}

/// A logged-in connection to one node.
pub struct Conn {
    session: Session,
    _dir: tempfile::TempDir,
}

/// Opens (TCP) the SSH port, within 5 s.
pub async fn reachable(t: &Target) -> Result<(), SshError> {
    let addr = t.addr();
    let sock = addr.to_socket_addrs().map_err(|e| SshError::Unreachable { addr: addr.clone(), reason: e.to_string() })?.next();
    let Some(sock) = sock else { return Err(SshError::Unreachable { addr, reason: "address does not resolve".into() }) };
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(sock)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(SshError::Unreachable { addr, reason: e.to_string() }),
        Err(_) => Err(SshError::Unreachable { addr, reason: "no answer within 5 s".into() }),
    }
}

/// The node's current ed25519 host key line, as `ssh-keyscan` prints it.
pub async fn keyscan(t: &Target) -> Result<String, SshError> {
    let out = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", "5", "-t", "ed25519", "-p", &t.port.to_string(), &t.address])
        .output()
        .await
        .map_err(|e| SshError::Other(format!("cannot run ssh-keyscan (apt-get install -y openssh-client): {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.starts_with('#') && l.split_whitespace().count() >= 3)
        .map(str::to_owned)
        .ok_or_else(|| SshError::Unreachable { addr: t.addr(), reason: format!("no SSH host key offered ({})", String::from_utf8_lossy(&out.stderr).trim()) })
}

/// `SHA256:...` fingerprint of a known_hosts line.
pub async fn fingerprint(line: &str) -> String {
    let key: Vec<&str> = line.split_whitespace().skip(1).take(2).collect();
    let Ok(mut child) = tokio::process::Command::new("ssh-keygen").args(["-l", "-f", "-"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn() else {
        return "?".into();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(format!("{}\n", key.join(" ")).as_bytes()).await;
    }
    match child.wait_with_output().await {
        Ok(o) => String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).unwrap_or("?").to_owned(),
        Err(_) => "?".into(),
    }
}

fn key_part(line: &str) -> String {
    line.split_whitespace().skip(1).take(2).collect::<Vec<_>>().join(" ")
}

/// Compares the node's offered key with the pinned one. Returns the offered line, and
/// whether it is new (to be pinned by the caller).
pub async fn check_host_key(t: &Target) -> Result<(String, bool), SshError> {
    let offered = keyscan(t).await?;
    match &t.pinned {
        None => Ok((offered, true)),
        Some(p) if key_part(p) == key_part(&offered) => Ok((offered, false)),
        Some(p) => Err(SshError::HostKeyChanged { addr: t.addr(), pinned: fingerprint(p).await, offered: fingerprint(&offered).await }),
    }
}

/// Logs in with the control plane's key, accepting only the pinned host key.
pub async fn connect(t: &Target, keyfile: &Path, pinned_line: &str) -> Result<Conn, SshError> {
    let dir = tempfile::Builder::new().prefix("filesync-ssh-").tempdir().map_err(|e| SshError::Other(e.to_string()))?;
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, format!("{}\n", pinned_line.trim())).map_err(|e| SshError::Other(e.to_string()))?;
    let mut b = SessionBuilder::default();
    b.user(t.user.clone())
        .port(t.port)
        .keyfile(keyfile)
        .known_hosts_check(KnownHosts::Strict)
        .user_known_hosts_file(&kh)
        .config_file("/dev/null")
        .connect_timeout(Duration::from_secs(10))
        .control_directory(dir.path());
    match b.connect(&t.address).await {
        Ok(session) => Ok(Conn { session, _dir: dir }),
        Err(e) => {
            let mut reason = format!("{e}");
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                reason.push_str(&format!(": {s}"));
                src = s.source();
            }
            Err(SshError::AuthFailed { addr: t.addr(), user: t.user.clone(), reason })
        }
    }
}

pub struct Output {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Conn {
    /// Runs `script` with `sh -c` on the node.
    pub async fn sh(&self, script: &str) -> Result<Output, SshError> {
        let out = self.session.command("sh").arg("-c").arg(script).output().await.map_err(|e| SshError::Other(e.to_string()))?;
        Ok(Output { status: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr: String::from_utf8_lossy(&out.stderr).into_owned() })
    }

    /// Runs `script` and fails unless it exits 0.
    pub async fn sh_ok(&self, script: &str) -> Result<String, SshError> {
        let o = self.sh(script).await?;
        if o.status != 0 {
            let tail: String = o.stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            return Err(SshError::CommandFailed { status: format!("exit code {}", o.status), stderr_tail: if tail.is_empty() { o.stdout } else { tail } });
        }
        Ok(o.stdout)
    }

    /// Writes `data` to `path` on the node through a temp file and a rename, with `mode`.
    pub async fn upload(&self, path: &str, data: &[u8], mode: u32) -> Result<(), SshError> {
        // Written beside the target and renamed into place; a failed write (disk full, read-only,
        // broken connection) removes its temp file, so nothing half-written is left behind.
        let script = format!(
            "umask 077 && mkdir -p \"$(dirname \"$1\")\" && {{ cat > \"$1.tmp\" && chmod {mode:o} \"$1.tmp\" && mv -f \"$1.tmp\" \"$1\"; }} || {{ rc=$?; cat >/dev/null; rm -f \"$1.tmp\"; exit $rc; }}"
        );
        let mut child = self
            .session
            .command("sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| SshError::Other(e.to_string()))?;
        if let Some(mut stdin) = child.stdin().take() {
            stdin.write_all(data).await.map_err(|e| SshError::Other(format!("upload of {path} broke off: {e}")))?;
            stdin.shutdown().await.map_err(|e| SshError::Other(e.to_string()))?;
        }
        let out = child.wait_with_output().await.map_err(|e| SshError::Other(e.to_string()))?;
        if !out.status.success() {
            return Err(SshError::CommandFailed { status: format!("{}", out.status), stderr_tail: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// Creates the control plane's ed25519 key pair; returns (private, public) OpenSSH text.
pub async fn generate_keypair() -> anyhow::Result<(String, String)> {
    let dir = tempfile::tempdir()?;
    let p = dir.path().join("id");
    let st = tokio::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "filesync-control-plane", "-f"]).arg(&p).status().await?;
    anyhow::ensure!(st.success(), "ssh-keygen failed");
    Ok((std::fs::read_to_string(&p)?, std::fs::read_to_string(p.with_extension("pub"))?))
}

/// Writes the private key where `ssh` can use it (mode 0600, in a private runtime dir).
pub fn write_keyfile(dir: &Path, private: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join("id_ed25519");
    crate::pki::write_private(&p, private)?;
    Ok(p)
}
