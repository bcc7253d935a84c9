//! The agent's TOML config, validated once into `Settings` so later code never re-checks.
//! Unknown keys are errors that name the key; every error says what to fix.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// The config file's structs are the contract shared with the control plane, which writes
/// them with the `toml` serializer (see `protocol::agent_toml`).
pub use crate::protocol::agent_toml::{AgentToml as AgentConfig, LinkConfig, MassDeleteConfig, PeerConfig, TlsConfig, VersionsConfig};

/// Validated `[versions]`.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSettings {
    pub keep: bool,
    pub max_age: Duration,
    /// A fixed size cap; without it the cap is `max_percent_of_free` of the free space
    /// (counting what versions use).
    pub max_bytes: Option<u64>,
    pub max_percent_of_free: u8,
    /// Below this much free space (percent of the file system) no new version is kept.
    pub min_free_percent: u8,
}

impl Default for VersionSettings {
    fn default() -> VersionSettings {
        VersionSettings { keep: true, max_age: Duration::from_secs(7 * 86_400), max_bytes: None, max_percent_of_free: 10, min_free_percent: 5 }
    }
}

/// Validated `[mass_delete]`: a run of deletions from one node is held when it deletes more
/// than `max_files` files, or more than `max_percent` of the tree's files and at least
/// `min_files`. Zero turns a rule off; both off applies deletions at once.
#[derive(Debug, Clone, PartialEq)]
pub struct MassDelete {
    pub max_files: usize,
    pub max_percent: u8,
    pub min_files: usize,
}

impl Default for MassDelete {
    fn default() -> MassDelete {
        MassDelete { max_files: 1000, max_percent: 30, min_files: 100 }
    }
}

impl MassDelete {
    pub fn enabled(&self) -> bool {
        self.max_files > 0 || self.max_percent > 0
    }

    /// Whether deleting `files` of a tree of `tree_files` files is too much at once.
    pub fn exceeded(&self, files: usize, tree_files: u64) -> bool {
        (self.max_files > 0 && files > self.max_files) || (self.max_percent > 0 && files >= self.min_files.max(1) && files as u128 * 100 > self.max_percent as u128 * tree_files as u128)
    }

    /// The rule in words, for messages.
    pub fn describe(&self) -> String {
        match (self.max_files, self.max_percent) {
            (0, p) => format!("more than {p}% of the tree's files (from {} files on)", self.min_files),
            (n, 0) => format!("more than {n} files"),
            (n, p) => format!("more than {n} files, or more than {p}% of the tree's files (from {} files on)", self.min_files),
        }
    }
}

/// `"7d"`, `"12h"`, `"30m"`, `"90s"` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration: use a whole number and a unit, e.g. \"7d\", \"12h\", \"30m\" or \"90s\""))?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        u => return Err(format!("{s:?}: unknown unit {u:?}; use s, m, h or d")),
    };
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("{s:?} is too long"))
}

fn versions_settings(c: &VersionsConfig) -> anyhow::Result<VersionSettings> {
    let d = VersionSettings::default();
    let max_age = match &c.max_age {
        None => d.max_age,
        Some(a) => parse_duration(a).map_err(|e| anyhow::anyhow!("versions.max_age = {e}"))?,
    };
    if max_age < Duration::from_secs(1) || max_age > Duration::from_secs(3650 * 86_400) {
        bail!("versions.max_age: must be from 1 s to 3650 days");
    }
    let max_percent_of_free = c.max_percent_of_free.unwrap_or(d.max_percent_of_free);
    let min_free_percent = c.min_free_percent.unwrap_or(d.min_free_percent);
    if !(1..=90).contains(&max_percent_of_free) {
        bail!("versions.max_percent_of_free = {max_percent_of_free}: must be from 1 to 90 (percent of the free space versions may use)");
    }
    if min_free_percent > 50 {
        bail!("versions.min_free_percent = {min_free_percent}: must be from 0 to 50 (no new version is kept while less space is free)");
    }
    Ok(VersionSettings { keep: c.keep.unwrap_or(true), max_age, max_bytes: c.max_bytes, max_percent_of_free, min_free_percent })
}

fn mass_delete_settings(c: &MassDeleteConfig) -> anyhow::Result<MassDelete> {
    let d = MassDelete::default();
    let m = MassDelete { max_files: c.max_files.unwrap_or(d.max_files), max_percent: c.max_percent.unwrap_or(d.max_percent), min_files: c.min_files.unwrap_or(d.min_files) };
    if m.max_percent > 100 {
        bail!("mass_delete.max_percent = {}: must be from 0 (off) to 100", m.max_percent);
    }
    Ok(m)
}

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
    pub versions: VersionSettings,
    pub mass_delete: MassDelete,
    pub config_path: Option<PathBuf>,
}

pub const MAX_DELAY_SECS: u64 = 86_400;

impl Settings {
    pub fn load(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read agent config {}", path.display()))?;
        let mut s = Settings::parse(&text, path.parent().unwrap_or(Path::new("."))).with_context(|| format!("invalid agent config {}", path.display()))?;
        s.config_path = Some(path.to_owned());
        Ok(s)
    }

    /// Parses and validates; relative paths are taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Settings> {
        let c: AgentConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message().trim()).context(describe_toml_error(&e, text)))?;
        if c.node_name.is_empty() || c.node_name.len() > 63 || !c.node_name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.') {
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
        let versions = versions_settings(&c.versions)?;
        let mass_delete = mass_delete_settings(&c.mass_delete)?;
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
            versions,
            mass_delete,
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
            if src.to_ascii_lowercase().contains("password") { format!("line {line} (the password line; not repeated here)") } else { format!("line {line} (`{src}`)") }
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

# What peers' changes replace or delete here is kept (outside the web root, in
# <state_dir>/versions) and can be restored with `filesync ctl restore`.
[versions]
keep = true                             # false: keep nothing
max_age = "7d"                          # versions older than this are removed ("12h", "30m", "90s")
# max_bytes = 10737418240               # size cap; default: max_percent_of_free of the free space
max_percent_of_free = 10                # cap as a share of the free space (counting what versions use)
min_free_percent = 5                    # below this much free space, no new version is kept

# A peer's deletions are applied once its batch is complete (2 s after the last one, 10 s
# after the first at most); a batch
# that deletes too much is held here until `filesync ctl hold confirm` or `hold reject`.
[mass_delete]
max_files = 1000                        # hold a batch deleting more files than this (0 = no limit)
max_percent = 30                        # ... or more than this share of the tree's files (0 = no limit)
min_files = 100                         # the share counts from this many files on

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
    fn safety_settings_are_validated_with_the_key_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        for f in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        let base = format!("node_name = \"n1\"\nlisten = \"127.0.0.1:7755\"\nroot = \"{}\"\n", dir.path().join("root").display());
        let tls = "[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let s = Settings::parse(&format!("{base}{tls}"), dir.path()).unwrap();
        assert_eq!((s.versions.clone(), s.mass_delete.clone()), (VersionSettings::default(), MassDelete::default()));
        let s = Settings::parse(&format!("{base}[versions]\nmax_age = \"90s\"\nmax_bytes = 1000\n[mass_delete]\nmax_files = 0\nmax_percent = 0\n{tls}"), dir.path()).unwrap();
        assert_eq!(s.versions.max_age, Duration::from_secs(90));
        assert!(!s.mass_delete.enabled());
        for (bad, want) in [
            ("[versions]\nmax_age = \"7 weeks\"\n", "versions.max_age"),
            ("[versions]\nmax_percent_of_free = 0\n", "versions.max_percent_of_free"),
            ("[mass_delete]\nmax_percent = 101\n", "mass_delete.max_percent"),
            ("[versions]\nkeeep = true\n", "keeep"),
        ] {
            let e = format!("{:#}", Settings::parse(&format!("{base}{bad}{tls}"), dir.path()).unwrap_err());
            assert!(e.contains(want), "{bad}: {e}");
        }
        let m = MassDelete::default();
        assert!(!m.exceeded(1000, 100_000) && m.exceeded(1001, 100_000));
        assert!(!m.exceeded(99, 100) && m.exceeded(100, 300) && !m.exceeded(100, 400), "30% counts from 100 files on");
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
    }

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
