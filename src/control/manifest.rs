//! The add-on manifest (`manifest/file-sync.toml`, embedded in the binary so a release
//! stays one file): the field model of the install dialog, and server-side validation of a
//! submission against it. Errors are per field so the dialog shows them next to the field.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use super::safety::SafetySettings;

pub const SOURCE: &str = include_str!("../../manifest/file-sync.toml");

/// What a platform event can trigger (see `[events]` in the manifest).
pub const EVENT_ACTIONS: &[&str] = &["scale_out", "scale_in", "pause", "resume"];

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub version: String,
    pub description: String,
    pub targets: Targets,
    pub events: BTreeMap<String, String>,
    pub settings: Vec<Field>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Targets {
    pub layers: Vec<String>,
    pub node_types: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Field {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub caption: String,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub tooltip: Option<String>,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    /// What an integer counts, for messages (default: seconds).
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub values: Vec<Choice>,
    /// Shown (and validated) only when every named field has the given value.
    #[serde(default)]
    pub show_if: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Choice {
    pub value: String,
    pub caption: String,
}

/// A submission that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: String,
    /// Normalized, relative to the webroot, never empty, never escaping it.
    pub path: String,
    pub delay: u32,
    pub address: Option<String>,
    pub password: Option<String>,
    /// Versions and the mass-delete hold.
    pub safety: SafetySettings,
}

pub type FieldErrors = BTreeMap<String, String>;

impl Manifest {
    pub fn load() -> anyhow::Result<Manifest> {
        let m: Manifest = toml::from_str(SOURCE).map_err(|e| anyhow::anyhow!("manifest/file-sync.toml is invalid: {e}"))?;
        for (event, action) in &m.events {
            anyhow::ensure!(EVENT_ACTIONS.contains(&action.as_str()), "manifest/file-sync.toml: event {event:?} names unknown action {action:?} (known: {EVENT_ACTIONS:?})");
        }
        Ok(m)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.settings.iter().find(|f| f.name == name)
    }

    /// Whether `f` is visible for the values submitted (its `show_if` holds).
    pub fn visible(&self, f: &Field, values: &HashMap<String, String>) -> bool {
        f.show_if.iter().all(|(k, v)| {
            let cur = values.get(k).cloned().or_else(|| self.field(k).and_then(|d| d.default.clone())).unwrap_or_default();
            &cur == v
        })
    }

    /// Validates a submission field by field. Hidden fields are ignored; `environment` and
    /// `nodes` are fixed by the page the dialog was opened from.
    pub fn validate(&self, values: &HashMap<String, String>) -> Result<Settings, FieldErrors> {
        self.validate_with(values, false)
    }

    /// Like [`Manifest::validate`]; with `password_stored` (a reconfigure of an installation
    /// that already has a shared password) an empty password field keeps the stored one and
    /// `Settings::password` is None. A password is never defaulted otherwise, and is taken
    /// as typed (not trimmed): both environments must hold exactly the same bytes.
    pub fn validate_with(&self, values: &HashMap<String, String>, password_stored: bool) -> Result<Settings, FieldErrors> {
        let mut errors = FieldErrors::new();
        let get = |name: &str| values.get(name).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        let password = || values.get("password").filter(|p| !p.trim().is_empty()).cloned();
        for f in &self.settings {
            if !self.visible(f, values) || matches!(f.kind.as_str(), "environment" | "nodes") {
                continue;
            }
            // A field left out takes its default; one sent empty (a cleared dialog field) is
            // empty, and refused when required: it never silently becomes the default.
            let v = if f.kind == "password" {
                password()
            } else if values.contains_key(&f.name) {
                get(&f.name)
            } else {
                f.default.clone()
            };
            let Some(v) = v else {
                if f.kind == "password" && password_stored {
                    continue;
                }
                if f.required {
                    errors.insert(f.name.clone(), format!("{} is required", f.caption));
                }
                continue;
            };
            if let Err(e) = check_field(f, &v) {
                errors.insert(f.name.clone(), e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mode = get("mode").or_else(|| self.field("mode").and_then(|f| f.default.clone())).unwrap_or_else(|| "one_env".into());
        let two = mode == "two_envs";
        Ok(Settings {
            path: normalize_path(&get("path").or_else(|| self.field("path").and_then(|f| f.default.clone())).unwrap_or_default()).unwrap_or_default(),
            delay: get("delay").or_else(|| self.field("delay").and_then(|f| f.default.clone())).and_then(|d| d.parse().ok()).unwrap_or(10),
            address: if two { get("address") } else { None },
            password: if two { password() } else { None },
            safety: SafetySettings::from_values(|k| get(k).or_else(|| self.field(k).and_then(|f| f.default.clone()))),
            mode,
        })
    }
}

fn check_field(f: &Field, v: &str) -> Result<(), String> {
    match f.kind.as_str() {
        "radio" => {
            if f.values.iter().any(|c| c.value == v) {
                Ok(())
            } else {
                Err(format!("choose one of: {}", f.values.iter().map(|c| c.value.as_str()).collect::<Vec<_>>().join(", ")))
            }
        }
        "integer" => {
            let n: i64 = v.parse().map_err(|_| format!("{v:?} is not a whole number of {}", f.unit.as_deref().unwrap_or("seconds")))?;
            if f.min.is_some_and(|m| n < m) || f.max.is_some_and(|m| n > m) {
                return Err(format!("must be from {} to {}", f.min.unwrap_or(i64::MIN), f.max.unwrap_or(i64::MAX)));
            }
            Ok(())
        }
        "string" if f.name == "path" => normalize_path(v).map(|_| ()),
        "address" => check_address(v),
        "password" => {
            if v.chars().count() < 8 {
                Err("use at least 8 characters".into())
            } else if v.len() > 1024 {
                Err("use at most 1024 bytes".into())
            } else if v.contains('\0') {
                Err("must not contain a NUL character".into())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Normalizes a sync path relative to the webroot, refusing anything that could leave it.
pub fn normalize_path(p: &str) -> Result<String, String> {
    if p.starts_with('/') {
        return Err("must be relative to the webroot (no leading /)".into());
    }
    if p.contains('\0') || p.contains('\\') || p.chars().any(char::is_control) {
        return Err("contains characters that are not allowed in a path".into());
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("must stay inside the webroot (no ..)".into()),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err("must name a folder inside the webroot".into());
    }
    if parts[0] == "lsyncd" {
        return Err("lsyncd/ holds the agent's own logs and state and cannot be synchronized".into());
    }
    Ok(parts.join("/"))
}

/// `host:port`, where host is an IP address (IPv6 in brackets) or a DNS name, and port is
/// 1-65535.
pub fn check_address(v: &str) -> Result<(), String> {
    if let Ok(a) = v.parse::<std::net::SocketAddr>() {
        return if a.port() == 0 { Err("port 0 is not a port a node listens on; use 1-65535".into()) } else { Ok(()) };
    }
    let Some((host, port)) = v.rsplit_once(':') else { return Err("use host:port, e.g. 203.0.113.7:7756 (the link port of a node there: its agent port + 1)".into()) };
    match port.parse::<u16>() {
        Ok(0) => return Err("port 0 is not a port a node listens on; use 1-65535".into()),
        Ok(_) => {}
        Err(_) => return Err(format!("{port:?} is not a port number (1-65535)")),
    }
    if host.contains(':') {
        return Err(format!("{host:?}: write an IPv6 address in brackets, e.g. [2001:db8::7]:7756"));
    }
    if !host.is_empty() && host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    let ok = !host.is_empty() && host.len() <= 253 && host.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') && !l.starts_with('-'));
    if ok { Ok(()) } else { Err(format!("{host:?} is not an IP address or host name")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn manifest_parses_and_defaults_apply() {
        let m = Manifest::load().unwrap();
        let s = m.validate(&form(&[])).unwrap();
        assert_eq!((s.mode.as_str(), s.path.as_str(), s.delay), ("one_env", "ROOT", 10));
    }

    #[test]
    fn bad_fields_are_reported_per_field() {
        let m = Manifest::load().unwrap();
        let e = m.validate(&form(&[("path", "../etc"), ("delay", "1.5")])).unwrap_err();
        assert!(e["path"].contains("inside the webroot"));
        assert!(e["delay"].contains("whole number"));
        let e = m.validate(&form(&[("delay", "3601"), ("path", "/etc")])).unwrap_err();
        assert!(e["delay"].contains("0 to 3600"));
        assert!(e["path"].contains("relative"));
    }

    #[test]
    fn a_required_field_sent_empty_is_refused_not_defaulted() {
        let m = Manifest::load().unwrap();
        let e = m.validate(&form(&[("path", "  "), ("delay", "")])).unwrap_err();
        assert!(e["path"].contains("required") && e["delay"].contains("required"), "{e:?}");
        // Left out entirely (an API client), the defaults apply.
        assert_eq!(m.validate(&form(&[])).unwrap().path, "ROOT");
    }

    #[test]
    fn two_envs_fields_are_required_only_in_that_mode() {
        let m = Manifest::load().unwrap();
        assert!(m.validate(&form(&[("mode", "one_env"), ("address", "nonsense")])).is_ok());
        let e = m.validate(&form(&[("mode", "two_envs"), ("address", "bad host:x")])).unwrap_err();
        assert!(e.contains_key("address") && e.contains_key("password"));
        let s = m.validate(&form(&[("mode", "two_envs"), ("address", "db.example.com:7755"), ("password", "correct horse")])).unwrap();
        assert_eq!(s.address.as_deref(), Some("db.example.com:7755"));
    }

    #[test]
    fn two_envs_without_a_password_is_refused_next_to_the_field() {
        let m = Manifest::load().unwrap();
        for pw in [None, Some(""), Some("   ")] {
            let mut f = form(&[("mode", "two_envs"), ("address", "203.0.113.7:7756")]);
            if let Some(pw) = pw {
                f.insert("password".into(), pw.into());
            }
            let e = m.validate(&f).unwrap_err();
            assert_eq!(e.keys().collect::<Vec<_>>(), ["password"], "{pw:?}: {e:?}");
            assert!(e["password"].contains("required"), "{e:?}");
        }
        let e = m.validate(&form(&[("mode", "two_envs"), ("address", "203.0.113.7:7756"), ("password", "short")])).unwrap_err();
        assert!(e["password"].contains("at least 8"));
        // The error message never repeats the password.
        assert!(!e["password"].contains("short"));
    }

    #[test]
    fn a_stored_password_may_be_kept_on_reconfigure() {
        let m = Manifest::load().unwrap();
        let f = form(&[("mode", "two_envs"), ("address", "203.0.113.7:7756")]);
        let s = m.validate_with(&f, true).unwrap();
        assert_eq!((s.mode.as_str(), s.password.as_deref()), ("two_envs", None));
        // A new one replaces it, taken exactly as typed.
        let f = form(&[("mode", "two_envs"), ("address", "203.0.113.7:7756"), ("password", " new \"pass\"\\word ")]);
        assert_eq!(m.validate_with(&f, true).unwrap().password.as_deref(), Some(" new \"pass\"\\word "));
        // Switching to one environment drops the password.
        assert_eq!(m.validate_with(&form(&[("mode", "one_env"), ("password", "whatever123")]), true).unwrap().password, None);
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for ok in ["203.0.113.7:7756", "db.example.com:7755", "node-2:1", "[2001:db8::7]:7756", "localhost:65535"] {
            assert!(check_address(ok).is_ok(), "{ok}");
        }
        for bad in
            ["203.0.113.7", "203.0.113.7:", "203.0.113.7:0", "203.0.113.7:65536", "203.0.113.7:x", ":7755", "2001:db8::7:7756", "bad host:7755", "-x.example:1", "999.1.1.1:7755", "a..b:1", "a_b:1"]
        {
            assert!(check_address(bad).is_err(), "{bad}");
        }
        let m = Manifest::load().unwrap();
        let e = m.validate(&form(&[("mode", "two_envs"), ("address", "203.0.113.7"), ("password", "correct horse")])).unwrap_err();
        assert_eq!(e.keys().collect::<Vec<_>>(), ["address"]);
        assert!(e["address"].contains("host:port"), "{e:?}");
    }

    #[test]
    fn paths_normalize_inside_the_webroot() {
        assert_eq!(normalize_path("ROOT//wp-content/./uploads/").unwrap(), "ROOT/wp-content/uploads");
        for bad in ["", "/", "a/../..", "lsyncd/var", "a\0b"] {
            assert!(normalize_path(bad).is_err(), "{bad:?}");
        }
    }
}
