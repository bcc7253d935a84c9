//! Sandbox nodes: one real `/usr/sbin/sshd -D` per node on its own 127.0.x.y address, with
//! its own host key, an AuthorizedKeysFile holding the control plane's public key, and a
//! per-node directory holding its webroot and its install prefix (sandbox nodes share one
//! filesystem, so every node's files live under its own folder).
//!
//! Layout of a node directory: `sshd/` (config, host key, authorized_keys, log),
//! `webroot/ROOT` (what users sync), `opt/filesync` (where the installer puts the agent).
//!
//! A node can also see the machine through its own eyes: with a `view`, its sshd (and so
//! everything started over SSH) runs in a private mount and host-name namespace where each
//! given path shows one of the node's own directories. That is how a node cloned from
//! another one is simulated: it has the original's paths and host name layout, on its
//! own disk, with its own host name (`unshare`, `nsenter`; root only).

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::run;

#[derive(Clone, Debug)]
pub struct SshNodeSpec {
    pub name: String,
    pub ip: IpAddr,
    pub port: u16,
    /// The node's own directory (created).
    pub dir: PathBuf,
    /// OpenSSH public key line allowed to log in as root.
    pub authorized_key: String,
    /// (path inside the node, the node's own directory shown there): a private view of
    /// the filesystem, for a node with another node's paths (a clone). Empty: none.
    pub view: Vec<(PathBuf, PathBuf)>,
}

pub struct SshNode {
    pub spec: SshNodeSpec,
    child: Option<Child>,
}

impl SshNode {
    pub fn start(spec: SshNodeSpec) -> anyhow::Result<SshNode> {
        let sshd_dir = spec.dir.join("sshd");
        std::fs::create_dir_all(&sshd_dir)?;
        std::fs::create_dir_all(spec.dir.join("webroot/ROOT"))?;
        std::fs::create_dir_all("/run/sshd").context("cannot create sshd's privilege separation directory /run/sshd")?;
        let key = sshd_dir.join("ssh_host_ed25519_key");
        if !key.exists() {
            run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", &spec.name, "-f"]).arg(&key))?;
        }
        std::fs::write(sshd_dir.join("authorized_keys"), format!("{}\n", spec.authorized_key.trim()))?;
        let listen = SocketAddr::new(spec.ip, spec.port);
        let cfg = format!(
            "ListenAddress {listen}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\nMaxStartups 100:30:200\nMaxSessions 100\nSubsystem sftp internal-sftp\n",
            key.display(),
            sshd_dir.join("authorized_keys").display()
        );
        std::fs::write(sshd_dir.join("sshd_config"), cfg)?;
        let mut node = SshNode { spec, child: None };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let sshd_dir = self.spec.dir.join("sshd");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(sshd_dir.join("sshd.log"))?;
        let mut cmd = if self.spec.view.is_empty() {
            Command::new("/usr/sbin/sshd")
        } else {
            let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
            let mut script = String::from("set -e; ");
            for (inside, own) in &self.spec.view {
                std::fs::create_dir_all(own)?;
                std::fs::create_dir_all(inside)?;
                script.push_str(&format!("mount --bind {} {}; ", q(own), q(inside)));
            }
            script.push_str(&format!("hostname {}; exec /usr/sbin/sshd \"$@\"", q(Path::new(&self.spec.name))));
            let mut c = Command::new("unshare");
            c.args(["--mount", "--uts", "--propagation", "private", "--", "sh", "-c"]).arg(script).arg("sh");
            c
        };
        let child = cmd
            .args(["-D", "-e", "-f"])
            .arg(sshd_dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start /usr/sbin/sshd (install it: apt-get install -y openssh-server)")?;
        self.child = Some(child);
        let addr = SocketAddr::new(self.spec.ip, self.spec.port);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                anyhow::bail!("sshd for {} exited ({st}): {}", self.spec.name, std::fs::read_to_string(sshd_dir.join("sshd.log")).unwrap_or_default());
            }
            anyhow::ensure!(Instant::now() < deadline, "sshd for {} is not listening on {addr}", self.spec.name);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops sshd (the node becomes unreachable); agents it started keep running.
    pub fn stop_sshd(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart_sshd(&mut self) -> anyhow::Result<()> {
        self.stop_sshd();
        self.spawn()
    }

    /// Replaces the host key and restarts sshd: what a reinstalled (or impersonated) node looks like.
    pub fn regenerate_host_key(&mut self) -> anyhow::Result<()> {
        let key = self.spec.dir.join("sshd/ssh_host_ed25519_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", &self.spec.name, "-f"]).arg(&key))?;
        self.restart_sshd()
    }

    /// Replaces the authorized key (e.g. with a stranger's, to have authentication refused).
    pub fn set_authorized_key(&self, line: &str) -> anyhow::Result<()> {
        std::fs::write(self.spec.dir.join("sshd/authorized_keys"), format!("{}\n", line.trim()))?;
        Ok(())
    }

    /// A command that runs inside this node's view of the machine (its mount and host-name
    /// namespace when it has a `view`), as if started over SSH.
    pub fn command(&self, program: &str) -> Command {
        match (&self.child, self.spec.view.is_empty()) {
            (Some(c), false) => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["--target", &c.id().to_string(), "--mount", "--uts", "--"]).arg(program);
                cmd
            }
            _ => Command::new(program),
        }
    }

    pub fn webroot(&self) -> PathBuf {
        self.spec.dir.join("webroot")
    }

    /// Where the installer should put the agent on this node.
    pub fn install_prefix(&self) -> PathBuf {
        self.spec.dir.join("opt/filesync")
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    /// Stops an agent the installer started under this node's prefix (and its watchdog).
    pub fn kill_agent(&self) {
        let p = self.install_prefix();
        let _ = std::fs::write(p.join("stopped"), b"");
        for f in ["watchdog.pid", "agent.pid"] {
            if let Ok(pid) = std::fs::read_to_string(p.join(f)) {
                let _ = Command::new("kill").arg("-KILL").arg(pid.trim()).stderr(Stdio::null()).status();
            }
        }
        // The pid files may be gone already (a test removed the node's directory first):
        // the watchdog and the agent name the prefix on their command lines.
        let _ = Command::new("pkill").arg("-KILL").arg("-f").arg(format!("{}/", p.display())).stderr(Stdio::null()).status();
    }
}

impl Drop for SshNode {
    fn drop(&mut self) {
        self.kill_agent();
        self.stop_sshd();
    }
}
