//! The service layer: what the dashboard and the API both do (create environments, add and
//! remove nodes, submit the add-on dialog, pause and resume, join tokens, enrollment),
//! with the validation of everything a client sends. `http` calls it; it calls `db`, the
//! job queue and the agents; nothing here knows about HTTP.

pub mod checks;
pub mod conflicts;
pub mod enroll;
pub mod environments;
pub mod holds;
pub mod install;
pub mod nodes;
pub mod path_test;
pub mod status;
pub mod tokens;
pub mod versions;

pub use crate::control::manifest::FieldErrors;

/// A submission either did what was asked or is refused field by field (422).
pub enum Outcome<T> {
    Done(T),
    Invalid(FieldErrors),
}

impl<T> Outcome<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        match self {
            Outcome::Done(t) => Outcome::Done(f(t)),
            Outcome::Invalid(e) => Outcome::Invalid(e),
        }
    }
}

pub fn invalid<T>(field: &str, msg: impl Into<String>) -> anyhow::Result<Outcome<T>> {
    Ok(Outcome::Invalid([(field.to_owned(), msg.into())].into_iter().collect()))
}

/// The name of the control plane's own client certificate in every environment; agents
/// trust it for their admin routes, so no node may carry it.
pub const CONTROL_PLANE_NAME: &str = "filesync-control-plane";

/// Environment and node names: 1-63 letters, digits, `-` or `_`.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err("use 1-63 letters, digits, - or _".into());
    }
    if s.eq_ignore_ascii_case(CONTROL_PLANE_NAME) {
        return Err(format!("{CONTROL_PLANE_NAME} is reserved (the control plane's own certificate name)"));
    }
    Ok(())
}

/// A webroot or install prefix: an absolute path of letters, digits, `.`, `_`, `-` and `/`,
/// with at least `min_depth` components and no `.` or `..` component (it is written into
/// shell commands, a systemd unit and agent.toml, and the uninstall removes the prefix).
/// Returns it normalized (no doubled or trailing `/`).
pub fn check_abs_path(v: &str, min_depth: usize) -> Result<String, String> {
    const ALLOWED: &str = "use an absolute path of letters, digits, '.', '_', '-' and '/'";
    if !v.starts_with('/') || v.len() > 200 || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
        return Err(ALLOWED.into());
    }
    let parts: Vec<&str> = v.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("must not contain . or .. components".into());
    }
    if parts.len() < min_depth {
        return Err(format!("must be at least {min_depth} directories deep (it must not be a system directory)"));
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_limited_to_a_safe_set() {
        assert!(check_name("web-1_a").is_ok());
        for bad in ["", "a b", "a\"b", "x".repeat(64).as_str(), "filesync-control-plane", "FileSync-Control-Plane"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_abs_path("/opt//filesync/", 2).unwrap(), "/opt/filesync");
        for bad in ["opt/filesync", "/x/sh -c \"touch /tmp/pwned\" /x/y", "/opt/a\"b", "/opt/a'b", "/opt/a\\b", "/opt/%h", "/opt/$x", "/opt/../etc", "/opt/./x", "/", "/opt", "/opt/a\tb", "/opt/a\nb"]
        {
            assert!(check_abs_path(bad, 2).is_err(), "{bad:?}");
        }
        assert!(check_abs_path("/var", 1).is_ok());
    }
}
