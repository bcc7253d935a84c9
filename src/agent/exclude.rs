//! What is never synced: the agent's own `lsyncd/` folder and temp files always, plus the
//! user's glob patterns. A pattern without `/` matches a file name anywhere (rsync's rule,
//! e.g. `*.swp`); one with `/` matches the path from the root, and its whole subtree
//! (`cache/` and `cache/**` both exclude the folder and everything in it).

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::root::is_temp_name;
use crate::protocol::RelPath;

#[derive(Clone)]
pub struct Excludes {
    names: GlobSet,
    paths: GlobSet,
    /// Top-level paths always excluded (the agent's own folders when they sit in the root).
    fixed: Vec<String>,
}

impl Excludes {
    pub fn new(patterns: &[String], fixed: Vec<String>) -> anyhow::Result<Excludes> {
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let p = p.trim_start_matches('/');
            if let Some(dir) = p.strip_suffix('/') {
                paths.add(Glob::new(dir)?);
                paths.add(Glob::new(&format!("{dir}/**"))?);
            } else if p.contains('/') {
                paths.add(Glob::new(p)?);
                paths.add(Glob::new(&format!("{p}/**"))?);
            } else {
                names.add(Glob::new(p)?);
            }
        }
        Ok(Excludes { names: names.build()?, paths: paths.build()?, fixed })
    }

    pub fn is_excluded(&self, p: &RelPath) -> bool {
        let s = p.as_str();
        if self.fixed.iter().any(|f| s == f || (s.starts_with(f.as_str()) && s.as_bytes()[f.len()] == b'/')) {
            return true;
        }
        if s.split('/').any(|c| is_temp_name(c) || self.names.is_match(c)) {
            return true;
        }
        self.paths.is_match(s)
    }

    pub fn describe(&self) -> Vec<String> {
        self.fixed.iter().map(|f| format!("{f}/")).chain(std::iter::once(".filesync.*.tmp".to_owned())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(patterns: &[&str], path: &str, excluded: bool) {
        let e = Excludes::new(&patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["lsyncd".into()]).unwrap();
        assert_eq!(e.is_excluded(&RelPath::parse(path).unwrap()), excluded, "{patterns:?} {path}");
    }

    #[test]
    fn exclude_rules() {
        check(&[], "lsyncd", true);
        check(&[], "lsyncd/var/log/lsyncd.log", true);
        check(&[], "lsyncd2/x", false);
        check(&[], "a/.filesync.photo.jpg.1234abcd.tmp", true);
        check(&["*.swp"], "a/b/.x.swp", true);
        check(&["*.swp"], "a/b/x.swpx", false);
        check(&["cache/"], "cache", true);
        check(&["cache/"], "cache/a/b", true);
        check(&["cache/"], "x/cache", false);
        check(&["wp-content/cache"], "wp-content/cache/page.html", true);
        check(&["tmp*"], "up/tmp123/file", true);
    }
}
