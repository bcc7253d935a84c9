//! The safety nets' settings of an installation (issue 15): whether the agents keep
//! versions, for how long and up to what size, and when a peer's mass delete is held for
//! an operator. The install dialog's fields (validated by `manifest`), their place in the
//! installation's stored settings (JSON, beside mode, path and delay), the `[versions]` and
//! `[mass_delete]` sections of `agent.toml` (through `protocol::agent_toml`, only values
//! that differ from the agent's defaults), and the words on the environment page. Pure.

use serde_json::Value;

use crate::protocol::agent_toml::{AgentToml, MassDeleteConfig, VersionsConfig};

/// The agent's defaults (`agent::config::VersionSettings` and `MassDelete`).
pub const DEFAULT_MAX_AGE_DAYS: u32 = 7;
pub const DEFAULT_MASS_FILES: u64 = 1000;
pub const DEFAULT_MASS_PERCENT: u8 = 30;
/// Without a cap, versions may use this share of the free space (the agent's default).
pub const DEFAULT_PERCENT_OF_FREE: u8 = 10;

/// The dialog's field names, as in `manifest/file-sync.toml`.
pub const FIELDS: [&str; 5] = ["versions_keep", "versions_max_age_days", "versions_max_mb", "mass_delete_files", "mass_delete_percent"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetySettings {
    pub keep: bool,
    pub max_age_days: u32,
    /// A fixed cap per node in MiB; 0: a share of the free space.
    pub max_mb: u64,
    /// Hold a run deleting more than this many files (0: rule off).
    pub mass_files: u64,
    /// ... or more than this percent of the tree's files (0: rule off).
    pub mass_percent: u8,
}

impl Default for SafetySettings {
    fn default() -> SafetySettings {
        SafetySettings { keep: true, max_age_days: DEFAULT_MAX_AGE_DAYS, max_mb: 0, mass_files: DEFAULT_MASS_FILES, mass_percent: DEFAULT_MASS_PERCENT }
    }
}

impl SafetySettings {
    /// From values the manifest has validated (ranges included); `get` answers a field's
    /// value as submitted, or its default; a hidden field (the versions' details while
    /// versions are off) is not asked.
    pub fn from_values(get: impl Fn(&str) -> Option<String>) -> SafetySettings {
        let d = SafetySettings::default();
        let keep = get("versions_keep").is_none_or(|v| v != "off");
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        SafetySettings {
            keep,
            max_age_days: if keep { num("versions_max_age_days").map(|n| n as u32).unwrap_or(d.max_age_days) } else { d.max_age_days },
            max_mb: if keep { num("versions_max_mb").unwrap_or(d.max_mb) } else { d.max_mb },
            mass_files: num("mass_delete_files").unwrap_or(d.mass_files),
            mass_percent: num("mass_delete_percent").map(|n| n.min(100) as u8).unwrap_or(d.mass_percent),
        }
    }

    /// As stored in the installation's settings; an installation stored before these
    /// settings existed has the defaults.
    pub fn from_stored(settings: &Value) -> SafetySettings {
        SafetySettings::from_values(|k| match settings.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_owned()),
            v => Some(v.to_string()),
        })
    }

    /// The keys stored beside mode, path and delay.
    pub fn to_stored(&self, o: &mut serde_json::Map<String, Value>) {
        o.insert("versions_keep".into(), Value::from(if self.keep { "on" } else { "off" }));
        o.insert("versions_max_age_days".into(), Value::from(self.max_age_days));
        o.insert("versions_max_mb".into(), Value::from(self.max_mb));
        o.insert("mass_delete_files".into(), Value::from(self.mass_files));
        o.insert("mass_delete_percent".into(), Value::from(self.mass_percent));
    }

    /// The dialog's values for a reconfigure.
    pub fn dialog_values(&self) -> Vec<(String, String)> {
        let mut o = serde_json::Map::new();
        self.to_stored(&mut o);
        o.into_iter().map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or(v.to_string()))).collect()
    }

    /// `[versions]` and `[mass_delete]` of `agent.toml`: only what differs from the agent's
    /// defaults (an installation at the defaults writes neither section).
    pub fn apply(&self, c: &mut AgentToml) {
        let d = SafetySettings::default();
        c.versions = VersionsConfig {
            keep: (!self.keep).then_some(false),
            max_age: (self.keep && self.max_age_days != d.max_age_days).then(|| format!("{}d", self.max_age_days)),
            max_bytes: (self.keep && self.max_mb > 0).then(|| self.max_mb.saturating_mul(1 << 20)),
            ..VersionsConfig::default()
        };
        c.mass_delete = MassDeleteConfig {
            max_files: (self.mass_files != d.mass_files).then(|| usize::try_from(self.mass_files).unwrap_or(usize::MAX)),
            max_percent: (self.mass_percent != d.mass_percent).then_some(self.mass_percent),
            ..MassDeleteConfig::default()
        };
    }

    /// For the environment page: "versions kept 7 days (up to 10% of the free space); mass
    /// deletes held above 1000 files or 30% of the files".
    pub fn words(&self) -> String {
        let versions = if self.keep {
            let cap = if self.max_mb > 0 { format!("up to {} MiB per node", self.max_mb) } else { format!("up to {DEFAULT_PERCENT_OF_FREE}% of the free space") };
            format!("versions kept {} day{} ({cap})", self.max_age_days, if self.max_age_days == 1 { "" } else { "s" })
        } else {
            "no versions kept".to_owned()
        };
        let hold = match (self.mass_files, self.mass_percent) {
            (0, 0) => "mass deletes applied at once (no hold)".to_owned(),
            (n, 0) => format!("mass deletes held above {n} files"),
            (0, p) => format!("mass deletes held above {p}% of the files"),
            (n, p) => format!("mass deletes held above {n} files or {p}% of the files"),
        };
        format!("{versions}; {hold}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_of(s: &SafetySettings) -> String {
        let tls = crate::protocol::agent_toml::TlsConfig { ca: "/a".into(), cert: "/b".into(), key: "/c".into() };
        let mut c = AgentToml::new("web1", "127.0.0.1:7755".parse().unwrap(), "/r", tls);
        s.apply(&mut c);
        c.to_toml("").unwrap()
    }

    #[test]
    fn defaults_write_nothing_and_custom_values_reach_agent_toml() {
        let text = toml_of(&SafetySettings::default());
        assert!(!text.contains("[versions]") && !text.contains("[mass_delete]"), "{text}");
        let s = SafetySettings { keep: true, max_age_days: 3, max_mb: 50, mass_files: 20, mass_percent: 0 };
        let back = AgentToml::from_toml(&toml_of(&s)).unwrap();
        assert_eq!(back.versions.max_age.as_deref(), Some("3d"));
        assert_eq!(back.versions.max_bytes, Some(50 << 20));
        assert_eq!(back.versions.keep, None);
        assert_eq!((back.mass_delete.max_files, back.mass_delete.max_percent), (Some(20), Some(0)));
        let off = SafetySettings { keep: false, max_age_days: 3, ..SafetySettings::default() };
        let back = AgentToml::from_toml(&toml_of(&off)).unwrap();
        assert_eq!((back.versions.keep, back.versions.max_age), (Some(false), None));
    }

    #[test]
    fn stored_settings_round_trip_and_old_installations_get_the_defaults() {
        let s = SafetySettings { keep: false, max_age_days: 30, max_mb: 0, mass_files: 0, mass_percent: 5 };
        let mut o = serde_json::Map::new();
        s.to_stored(&mut o);
        // Hidden while versions are off, the details keep their defaults.
        assert_eq!(SafetySettings::from_stored(&Value::Object(o)), SafetySettings { max_age_days: 7, ..s });
        assert_eq!(SafetySettings::from_stored(&serde_json::json!({"mode": "one_env", "path": "ROOT"})), SafetySettings::default());
        assert_eq!(SafetySettings::default().words(), "versions kept 7 days (up to 10% of the free space); mass deletes held above 1000 files or 30% of the files");
    }
}
