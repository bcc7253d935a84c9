//! Comparing the nodes' trees, without IO: first the per-directory digests (equal root
//! `tree` digests: nothing to look at), then, for the directories whose direct entries
//! differ, each entry across nodes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::control::agent_api::{DirDigests, FileFacts};
use crate::control::health::bytes;

/// Most directories looked at file by file in one run.
pub const MAX_DIRS: usize = 50;
/// Most differing paths listed in one result.
pub const MAX_PATHS: usize = 200;

/// Directories whose direct entries differ between the nodes (or that some node lacks),
/// shallowest first, at most [`MAX_DIRS`]. Empty when every root digest is the same.
pub fn differing_dirs(digests: &[DirDigests]) -> Vec<String> {
    let roots: BTreeSet<&str> = digests.iter().map(|d| d.dirs.get("").map(|r| r.tree.as_str()).unwrap_or("")).collect();
    if roots.len() <= 1 && digests.iter().all(|d| d.errors.is_empty()) {
        return Vec::new();
    }
    let all: BTreeSet<&String> = digests.iter().flat_map(|d| d.dirs.keys()).collect();
    let mut out: Vec<String> = all
        .into_iter()
        .filter(|dir| {
            let owns: BTreeSet<Option<&str>> = digests.iter().map(|d| d.dirs.get(*dir).map(|x| x.own.as_str())).collect();
            owns.len() > 1
        })
        .cloned()
        .collect();
    // A directory missing on a node shows in its parent's own digest; list the parent.
    let missing_somewhere = |dir: &str| digests.iter().any(|d| !d.dirs.contains_key(dir));
    let listed = out.clone();
    out.retain(|dir| match dir.rfind('/') {
        _ if dir.is_empty() => true,
        Some(i) => !missing_somewhere(dir) || !listed.iter().any(|o| o == &dir[..i]),
        None => !missing_somewhere(dir) || !listed.iter().any(|o| o.is_empty()),
    });
    out.sort_by_key(|d| (d.matches('/').count() + usize::from(!d.is_empty()), d.clone()));
    out.truncate(MAX_DIRS);
    out
}

/// One path that is not the same everywhere: what each node has there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub path: String,
    /// Node → what it holds, in words ("file, 12 B, mtime ..., content 3fa9c01b", "missing").
    pub nodes: BTreeMap<String, String>,
    /// Nodes whose disk holds content their index does not record: changed behind the
    /// agent's back (or not scanned yet).
    pub not_indexed: Vec<String>,
}

fn describe(f: &crate::control::agent_api::FileFacts, path: &str) -> Option<String> {
    let e = f.entries.iter().find(|e| e.path == path)?;
    Some(match e.entry.as_str() {
        "dir" => format!("directory, mode {:o}", e.mode),
        "symlink" => format!("symlink, target hash {}", e.hash.get(..8).unwrap_or(&e.hash)),
        _ => {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(e.mtime_ns as i128).map(|t| crate::control::health::clock(t, time::OffsetDateTime::UNIX_EPOCH)).unwrap_or_default();
            format!("file, {}, mode {:o}, modified {t}, content {}", bytes(e.size), e.mode, e.hash.get(..8).unwrap_or(&e.hash))
        }
    })
}

/// What is compared of one entry: kind, size, mtime, mode, content hash.
type Facts<'a> = (&'a str, u64, i64, u32, &'a str);

/// The entries of one directory that differ between the nodes that have it.
pub fn differing_entries(lists: &[FileFacts]) -> Vec<Difference> {
    let paths: BTreeSet<&String> = lists.iter().flat_map(|l| l.entries.iter().map(|e| &e.path)).collect();
    let mut out = Vec::new();
    for p in paths {
        let views: Vec<Option<Facts>> = lists.iter().map(|l| l.entries.iter().find(|e| &e.path == p).map(|e| (e.entry.as_str(), e.size, e.mtime_ns, e.mode, e.hash.as_str()))).collect();
        let distinct: BTreeSet<&Option<Facts>> = views.iter().collect();
        let unreadable = views.iter().flatten().any(|v| v.4.starts_with("unreadable"));
        if distinct.len() <= 1 && !unreadable {
            continue;
        }
        let nodes = lists.iter().map(|l| (l.node.clone(), describe(l, p).unwrap_or_else(|| "missing".into()))).collect();
        let not_indexed = lists.iter().filter(|l| l.entries.iter().any(|e| &e.path == p && !e.indexed)).map(|l| l.node.clone()).collect();
        out.push(Difference { path: p.clone(), nodes, not_indexed });
    }
    out
}

/// Paths in both lists (a difference seen twice a few seconds apart is not one in flight).
pub fn persistent(first: &[Difference], second: Vec<Difference>) -> Vec<Difference> {
    second.into_iter().filter(|d| first.iter().any(|f| f.path == d.path)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::agent_api::DirDigests;
    use crate::protocol::report::{DirDigest, FileFact};

    fn digests(node: &str, dirs: &[(&str, &str, &str)]) -> DirDigests {
        DirDigests { node: node.into(), dirs: dirs.iter().map(|(d, o, t)| (d.to_string(), DirDigest { own: o.to_string(), tree: t.to_string() })).collect(), ..DirDigests::default() }
    }

    fn fact(path: &str, hash: &str, indexed: bool) -> FileFact {
        FileFact { path: path.into(), entry: "file".into(), size: 5, mtime_ns: 1_795_342_502_000_000_000, mode: 0o644, hash: hash.into(), indexed }
    }

    #[test]
    fn equal_roots_need_no_further_look_and_differing_ones_name_the_directories() {
        let a = digests("n1", &[("", "r", "T"), ("a", "x", "X"), ("a/b", "y", "Y")]);
        assert!(differing_dirs(&[a.clone(), a.clone()]).is_empty());
        let b = digests("n2", &[("", "r", "T2"), ("a", "x", "X2"), ("a/b", "y2", "Y2")]);
        assert_eq!(differing_dirs(&[a.clone(), b]), ["a/b"]);
        // A directory missing on one node is listed through its parent.
        let c = digests("n3", &[("", "r", "T3"), ("a", "x3", "X3")]);
        assert_eq!(differing_dirs(&[a, c]), ["a"]);
    }

    #[test]
    fn entries_differing_in_content_or_presence_are_listed_with_what_each_node_has() {
        let l1 = FileFacts { node: "node1".into(), dir: "".into(), entries: vec![fact("same.txt", "aa", true), fact("hello.txt", "bbbbbbbbbb", true)] };
        let l2 = FileFacts { node: "node2".into(), dir: "".into(), entries: vec![fact("same.txt", "aa", true), fact("hello.txt", "cccccccccc", false), fact("extra.txt", "dd", true)] };
        let d = differing_entries(&[l1, l2]);
        assert_eq!(d.iter().map(|d| d.path.as_str()).collect::<Vec<_>>(), ["extra.txt", "hello.txt"]);
        assert_eq!(d[0].nodes["node1"], "missing");
        assert!(d[1].nodes["node2"].contains("content cccccccc") && d[1].nodes["node1"].contains("content bbbbbbbb"), "{:?}", d[1]);
        assert_eq!(d[1].not_indexed, ["node2"]);
        assert_eq!(persistent(&d, vec![d[1].clone()]).len(), 1);
    }
}
