//! The agent's config file (`agent.toml`) as a typed contract: the agent deserializes it
//! (`agent::config` validates it into `Settings`), and the control plane, the demo and the
//! tests build it from these structs and write it with the `toml` serializer, so a quote,
//! a backslash or a tab in a path or password can never produce a file the agent reads
//! differently (or cannot read). Plain data: no IO.
//!
//! `folder_id` identifies the folder a node syncs: `<environment uuid>:<sync path>:<generation>`
//! when written by the control plane (the generation grows each time the sync path changes).
//! Agents compare it with their peers' and with the one their index was built for.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The config file as written by a user or by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentToml {
    /// This node's name: unique among the peers, used in logs and conflict copy names.
    pub node_name: String,
    /// Address the agent listens on for its peers (and the control plane).
    pub listen: SocketAddr,
    /// The sync folder.
    pub root: PathBuf,
    /// Which folder this is (environment, sync path, generation); absent for hand-written
    /// configs of standalone agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder_id: Option<String>,
    /// Where the index lives (default: `<root>/../lsyncd/var/state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Where `lsyncd.log` and `lsyncd.status` are written (default: `<root>/../lsyncd/var/log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
    /// Seconds to collect changes before sending them (lsyncd's `delay`; 0 = at once).
    #[serde(default = "default_delay")]
    pub delay: u64,
    /// A file with write events but no close is shipped after this many quiet seconds.
    #[serde(default = "default_write_quiet")]
    pub write_quiet: u64,
    /// Queued changes that flush a batch before `delay` is over (lsyncd's `maxDelays`).
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Glob patterns (relative to the root) that are never synced.
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Never send local changes; list them as local modifications instead.
    #[serde(default)]
    pub receive_only: bool,
    /// `lsyncd.log` is rotated when it grows past this many bytes.
    #[serde(default = "default_log_max")]
    pub log_max_bytes: u64,
    /// Seconds between full rescans that catch anything the watcher missed (0 = never).
    #[serde(default = "default_rescan")]
    pub rescan_interval: u64,
    pub tls: TlsConfig,
    #[serde(default, rename = "peers")]
    pub peers: Vec<PeerConfig>,
    /// Cross-environment link (two-environment mode); absent in one-environment mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkConfig>,
    /// What peers' changes replace or delete is kept as versions (`agent::versions`).
    #[serde(default, skip_serializing_if = "VersionsConfig::is_default")]
    pub versions: VersionsConfig,
    /// A peer's batch that deletes too much at once is held (`agent::hold`).
    #[serde(default, skip_serializing_if = "MassDeleteConfig::is_default")]
    pub mass_delete: MassDeleteConfig,
}

/// `[versions]`: keeping what peers' changes replace or delete; absent keys take the
/// agent's defaults (`agent::config::VersionSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<bool>,
    /// `"7d"`, `"12h"`, `"30m"` or `"90s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent_of_free: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_percent: Option<u8>,
}

impl VersionsConfig {
    pub fn is_default(&self) -> bool {
        *self == VersionsConfig::default()
    }
}

/// `[mass_delete]`: when a peer's deletions are held for an operator; absent keys take the
/// agent's defaults (`agent::config::MassDelete`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MassDeleteConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_files: Option<usize>,
}

impl MassDeleteConfig {
    pub fn is_default(&self) -> bool {
        *self == MassDeleteConfig::default()
    }
}

/// `[link]`: keep this folder identical with another environment's as well.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// This node's cross-environment port (pairing and replication with the other side).
    pub listen: SocketAddr,
    /// `host:port` of the link port of any node in the other environment.
    pub remote: String,
    /// The shared password; the same on both sides. Never sent, not even hashed (SPAKE2).
    pub password: String,
}

impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig").field("listen", &self.listen).field("remote", &self.remote).field("password", &"<redacted>").finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate (PEM) that signed every peer's certificate.
    pub ca: PathBuf,
    /// This node's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    pub address: SocketAddr,
}

pub fn default_delay() -> u64 {
    10
}
pub fn default_write_quiet() -> u64 {
    5
}
pub fn default_max_batch() -> usize {
    1000
}
pub fn default_log_max() -> u64 {
    10 * 1024 * 1024
}
pub fn default_rescan() -> u64 {
    3600
}

impl AgentToml {
    /// A config with every optional key at its default.
    pub fn new(node_name: impl Into<String>, listen: SocketAddr, root: impl Into<PathBuf>, tls: TlsConfig) -> AgentToml {
        AgentToml {
            node_name: node_name.into(),
            listen,
            root: root.into(),
            folder_id: None,
            state_dir: None,
            log_dir: None,
            delay: default_delay(),
            write_quiet: default_write_quiet(),
            max_batch: default_max_batch(),
            excludes: Vec::new(),
            receive_only: false,
            log_max_bytes: default_log_max(),
            rescan_interval: default_rescan(),
            tls,
            peers: Vec::new(),
            link: None,
            versions: VersionsConfig::default(),
            mass_delete: MassDeleteConfig::default(),
        }
    }

    /// The file's text, with `header` as leading `#` comment lines.
    pub fn to_toml(&self, header: &str) -> Result<String, toml::ser::Error> {
        let body = toml::to_string(self)?;
        let mut out = String::new();
        for line in header.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str(&body);
        Ok(out)
    }

    pub fn from_toml(text: &str) -> Result<AgentToml, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentToml {
        let tls = TlsConfig { ca: "/opt/fs/tls/ca.pem".into(), cert: "/opt/fs/tls/node.pem".into(), key: "/opt/fs/tls/node.key".into() };
        let mut c = AgentToml::new("web1", "10.0.0.11:7755".parse().unwrap(), "/var/www/webroot/ROOT", tls);
        c.peers.push(PeerConfig { name: "web2".into(), address: "10.0.0.12:7755".parse().unwrap() });
        c
    }

    #[test]
    fn odd_characters_round_trip_byte_for_byte() {
        for odd in ["a \"quoted\" dir", "back\\slash", "tab\there", "new\nline", "unicode \u{e9}\u{1F511}", "'single'", "ends\\"] {
            let mut c = sample();
            c.root = format!("/var/www/{odd}/ROOT").into();
            c.folder_id = Some(format!("00000000-0000-0000-0000-000000000000:{odd}:3"));
            c.link = Some(LinkConfig { listen: "10.0.0.11:7756".parse().unwrap(), remote: "203.0.113.7:7756".into(), password: odd.into() });
            c.versions.max_age = Some(format!("7d{odd}"));
            c.mass_delete.max_files = Some(5);
            let text = c.to_toml("Written by a test\nsecond line").unwrap();
            let back = AgentToml::from_toml(&text).unwrap_or_else(|e| panic!("{odd:?}: {e}\n{text}"));
            assert_eq!(back, c, "{text}");
            assert!(text.starts_with("# Written by a test\n# second line\n"));
        }
    }

    #[test]
    fn defaults_are_omitted_optionals_and_unknown_keys_refused() {
        let text = sample().to_toml("").unwrap();
        assert!(!text.contains("folder_id") && !text.contains("state_dir") && !text.contains("[link]") && !text.contains("[versions]") && !text.contains("[mass_delete]"), "{text}");
        let parsed = AgentToml::from_toml(&text).unwrap();
        assert_eq!(parsed.delay, 10);
        let e = AgentToml::from_toml(&format!("surprise = 1\n{text}")).unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
    }

    #[test]
    fn the_debug_form_hides_the_link_password() {
        let l = LinkConfig { listen: "10.0.0.11:7756".parse().unwrap(), remote: "x:1".into(), password: "hunter2-secret".into() };
        assert!(!format!("{l:?}").contains("hunter2"));
    }
}
