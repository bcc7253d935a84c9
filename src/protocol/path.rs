//! `RelPath`: the only path type that crosses the wire or reaches the sync root.
//!
//! A `RelPath` is relative, `/`-separated, normalized and free of anything that could leave
//! the root: no `..`, no `.`, no empty components, no absolute prefix, no NUL, no component
//! over 255 bytes and no path over 4096 bytes. Peer input is hostile until it has been
//! parsed into this type (DESIGN.md requirement 2, "hostile paths").

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Longest file name Linux accepts (NAME_MAX).
pub const MAX_COMPONENT: usize = 255;
/// Longest path Linux accepts (PATH_MAX).
pub const MAX_PATH: usize = 4096;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is absolute")]
    Absolute,
    #[error("path contains a '..' component")]
    DotDot,
    #[error("path contains a '.' or empty component")]
    DotOrEmpty,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path component is longer than {MAX_COMPONENT} bytes")]
    ComponentTooLong,
    #[error("path is longer than {MAX_PATH} bytes")]
    TooLong,
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("path is outside the sync root")]
    OutsideRoot,
}

impl RelPath {
    /// Parses a `/`-separated relative path received from a peer or typed by a user.
    pub fn parse(s: &str) -> Result<RelPath, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if s.contains('\0') {
            return Err(PathError::Nul);
        }
        if s.starts_with('/') {
            return Err(PathError::Absolute);
        }
        for comp in s.split('/') {
            match comp {
                ".." => return Err(PathError::DotDot),
                "" | "." => return Err(PathError::DotOrEmpty),
                c if c.len() > MAX_COMPONENT => return Err(PathError::ComponentTooLong),
                _ => {}
            }
        }
        Ok(RelPath(s.to_owned()))
    }

    /// The path of `full` relative to `root`, for paths the watcher or scanner found on disk.
    pub fn from_fs(root: &Path, full: &Path) -> Result<RelPath, PathError> {
        let rel = full.strip_prefix(root).map_err(|_| PathError::OutsideRoot)?;
        let mut out = String::new();
        for comp in rel.components() {
            match comp {
                Component::Normal(c) => {
                    let c = c.to_str().ok_or(PathError::NotUtf8)?;
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(c);
                }
                Component::CurDir => {}
                Component::ParentDir => return Err(PathError::DotDot),
                Component::RootDir | Component::Prefix(_) => return Err(PathError::Absolute),
            }
        }
        RelPath::parse(&out)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Joins onto the sync root. Safe because a `RelPath` cannot contain `..` or a root.
    pub fn to_fs(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    pub fn parent(&self) -> Option<RelPath> {
        self.0.rfind('/').map(|i| RelPath(self.0[..i].to_owned()))
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.as_bytes()[other.0.len()] == b'/')
    }

    pub fn depth(&self) -> usize {
        self.0.bytes().filter(|b| *b == b'/').count() + 1
    }

    /// A sibling with the same parent and a different file name.
    pub fn with_file_name(&self, name: &str) -> Result<RelPath, PathError> {
        match self.parent() {
            Some(p) => RelPath::parse(&format!("{}/{}", p.0, name)),
            None => RelPath::parse(name),
        }
    }

    pub fn join(&self, name: &str) -> Result<RelPath, PathError> {
        RelPath::parse(&format!("{}/{}", self.0, name))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Result<&str, PathError>) {
        assert_eq!(RelPath::parse(input).as_ref().map(|p| p.as_str()), expected.as_ref().map(|s| *s));
    }

    #[test]
    fn parse_accepts_plain_relative_paths() {
        check("a", Ok("a"));
        check("a/b/c.jpg", Ok("a/b/c.jpg"));
        check("..a/b..", Ok("..a/b.."));
        check("<script>.png", Ok("<script>.png"));
    }

    #[test]
    fn parse_refuses_hostile_paths() {
        check("", Err(PathError::Empty));
        check("/etc/passwd", Err(PathError::Absolute));
        check("../x", Err(PathError::DotDot));
        check("a/../../x", Err(PathError::DotDot));
        check("a/./b", Err(PathError::DotOrEmpty));
        check("a//b", Err(PathError::DotOrEmpty));
        check("a/", Err(PathError::DotOrEmpty));
        check("a\0b", Err(PathError::Nul));
        check(&"x".repeat(256), Err(PathError::ComponentTooLong));
        check(&"x/".repeat(2100), Err(PathError::TooLong));
    }

    #[test]
    fn deserialize_validates() {
        let bad: Result<RelPath, _> = serde_json::from_str("\"../../etc/shadow\"");
        assert!(bad.is_err());
    }

    #[test]
    fn starts_with_respects_component_boundaries() {
        let a = RelPath::parse("dir/sub").unwrap();
        assert!(a.starts_with(&RelPath::parse("dir").unwrap()));
        assert!(!RelPath::parse("dir2/x").unwrap().starts_with(&RelPath::parse("dir").unwrap()));
    }

    #[test]
    fn from_fs_strips_root() {
        let p = RelPath::from_fs(Path::new("/r"), Path::new("/r/a/b")).unwrap();
        assert_eq!(p.as_str(), "a/b");
        assert_eq!(RelPath::from_fs(Path::new("/r"), Path::new("/x/a")), Err(PathError::OutsideRoot));
    }
}
