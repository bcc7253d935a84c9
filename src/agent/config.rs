//! The agent's TOML config, validated once into `Settings` so later code never re-checks.
//! Unknown keys are errors that name the key; every error says what to fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// The config file's structs are the contract shared with the control plane, which writes
/// them with the `toml` serializer (see `protocol::agent_toml`).
pub use crate::protocol::agent_toml::{AgentToml as AgentConfig, LinkConfig, PeerConfig, TlsConfig};

/// Validated settings the agent runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub delay: Duration,
    pub write_quiet: Duration,
    pub max_batch: usize,
    pub excludes: Vec<String>,
    pub receive_only: bool,
    pub log_max_bytes: u64,
    pub rescan_interval: Option<Duration>,
    pub tls: TlsConfig,
    pub peers: Vec<PeerConfig>,
    pub link: Option<LinkConfig>,
    /// Which folder this is (`<environment>:<sync path>:<generation>` from the control
    /// plane); empty if unset.
    pub folder_id: String,
    pub config_path: Option<PathBuf>,
}

pub const MAX_DELAY_SECS: u64 = 86_400;

impl Settings {
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read agent config {}", path.display()))?;
        let mut s = Settings::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .with_context(|| format!("invalid agent config {}", path.display()))?;
        s.config_path = Some(path.to_owned());
        Ok(s)
    }

    /// Parses and validates; relative paths are taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Settings> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message().trim()).context(describe_toml_error(&e, text)))?;
        if c.node_name.is_empty()
            || c.node_name.len() > 63
            || !c.node_name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
        {
            bail!("node_name {:?}: use 1-63 letters, digits, '-', '_' or '.'", c.node_name);
        }
        if c.delay > MAX_DELAY_SECS {
            bail!("delay = {}: must be a whole number of seconds from 0 to {MAX_DELAY_SECS}", c.delay);
        }
        if c.max_batch == 0 {
            bail!("max_batch = 0: must be at least 1 (lsyncd's default maxDelays is 1000)");
        }
        let abs = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };
        let root = abs(&c.root);
        if !root.is_dir() {
            bail!("root = {:?}: no such directory; create it or fix the path", root.display().to_string());
        }
        let root = root.canonicalize().with_context(|| format!("root = {}", root.display()))?;
        let lsyncd = root.parent().unwrap_or(&root).join("lsyncd");
        let state_dir = c.state_dir.as_deref().map(abs).unwrap_or_else(|| lsyncd.join("var/state"));
        let log_dir = c.log_dir.as_deref().map(abs).unwrap_or_else(|| lsyncd.join("var/log"));
        for pat in &c.excludes {
            globset::Glob::new(pat).map_err(|e| anyhow::anyhow!("excludes: pattern {pat:?} is not a valid glob: {e}"))?;
        }
        let mut names = std::collections::HashSet::new();
        for p in &c.peers {
            if p.name == c.node_name {
                bail!("peers: {:?} is this node's own name; list only the other nodes", p.name);
            }
            if !names.insert(&p.name) {
                bail!("peers: {:?} is listed twice", p.name);
            }
        }
        if let Some(l) = &c.link {
            if l.password.is_empty() {
                bail!("link.password is empty: both environments must be given the same password (there is no default)");
            }
            if l.remote.rsplit_once(':').and_then(|(h, p)| (!h.is_empty()).then_some(p)).and_then(|p| p.parse::<u16>().ok()).is_none() {
                bail!("link.remote = {:?}: use host:port of the link port of a node in the other environment, e.g. \"203.0.113.7:7756\"", l.remote);
            }
            if l.listen == c.listen {
                bail!("link.listen = {}: must differ from listen (the link port is a separate port)", l.listen);
            }
        }
        if let Some(f) = &c.folder_id
            && (f.is_empty() || f.len() > 512 || f.chars().any(char::is_control))
        {
            bail!("folder_id = {f:?}: use 1-512 printable characters (the control plane writes it; leave it out when running agents by hand)");
        }
        let tls = TlsConfig { ca: abs(&c.tls.ca), cert: abs(&c.tls.cert), key: abs(&c.tls.key) };
        for (key, p) in [("tls.ca", &tls.ca), ("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
            if !p.is_file() {
                bail!("{key} = {:?}: no such file (create certificates with `filesync ca init` and `filesync ca issue`)", p.display().to_string());
            }
        }
        Ok(Settings {
            node_name: c.node_name,
            listen: c.listen,
            root,
            state_dir,
            log_dir,
            delay: Duration::from_secs(c.delay),
            write_quiet: Duration::from_secs(c.write_quiet.max(1)),
            max_batch: c.max_batch,
            excludes: c.excludes,
            receive_only: c.receive_only,
            log_max_bytes: c.log_max_bytes.max(64 * 1024),
            rescan_interval: (c.rescan_interval > 0).then(|| Duration::from_secs(c.rescan_interval)),
            tls,
            peers: c.peers,
            link: c.link,
            folder_id: c.folder_id.unwrap_or_default(),
            config_path: None,
        })
    }
}

fn describe_toml_error(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = text[..start].matches('\n').count() + 1;
            let src = text.lines().nth(line - 1).unwrap_or("").trim();
            // The line may hold the link password: never repeat it in an error.
            if src.to_ascii_lowercase().contains("password") {
                format!("line {line} (the password line; not repeated here)")
            } else {
                format!("line {line} (`{src}`)")
            }
        }
        None => "config".to_owned(),
    }
}

/// A complete example, printed by `filesync agent --print-example-config` and shown in the README.
pub const EXAMPLE: &str = r#"# filesync agent configuration (TOML)
node_name = "web1"                      # unique among peers
listen = "10.0.0.11:7755"               # address peers and the control plane connect to
root = "/var/www/webroot/ROOT"          # the sync folder
# folder_id = "..."                     # written by the control plane: environment, sync path, generation
# state_dir = "/var/www/webroot/lsyncd/var/state"   # index (default shown)
# log_dir = "/var/www/webroot/lsyncd/var/log"       # lsyncd.log and lsyncd.status (default shown)
delay = 10                              # seconds to collect changes before sending (0 = at once)
write_quiet = 5                         # ship a file still open for writing after 5 quiet seconds
max_batch = 1000                        # this many queued changes flush early
excludes = ["cache/**", "*.swp"]        # globs relative to root, never synced
receive_only = false                    # true: never send local changes (workers)
log_max_bytes = 10485760                # rotate lsyncd.log past 10 MiB
rescan_interval = 3600                  # full rescan every hour (0 = never)
# folder_id = "shop-prod:uploads:1"     # written by the control plane: peers of another folder are refused

[tls]
ca = "/etc/filesync/ca.pem"
cert = "/etc/filesync/node.pem"
key = "/etc/filesync/node.key"

# Two-environment mode only: also keep this folder identical with another environment.
# [link]
# listen = "10.0.0.11:7756"             # this node's cross-environment port
# remote = "203.0.113.7:7756"           # link port of any node in the other environment
# password = "the same on both sides"   # never sent over the wire (SPAKE2 pairing)

[[peers]]
name = "web2"
address = "10.0.0.12:7755"

[[peers]]
name = "web3"
address = "10.0.0.13:7755"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_password_never_appears_in_debug_output_or_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        for f in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let base = format!("node_name = \"n1\"\nlisten = \"127.0.0.1:7755\"\nroot = \"{}\"\n[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n", dir.path().join("root").display());
        let s = Settings::parse(&format!("{base}[link]\nlisten = \"127.0.0.1:7756\"\nremote = \"10.0.0.1:7756\"\npassword = \"hunter2-secret\"\n"), dir.path()).unwrap();
        let dump = format!("{s:?}");
        assert!(dump.contains("<redacted>") && !dump.contains("hunter2-secret"), "{dump}");
        let e = Settings::parse(&format!("{base}[link]\nlisten = \"127.0.0.1:7756\"\nremote = \"10.0.0.1:7756\"\npassword = \"hunter2-secret\n"), dir.path()).unwrap_err();
        let msg = format!("{e:#}");
        assert!(!msg.contains("hunter2-secret") && msg.contains("password line"), "{msg}");
    }
}
