//! Snapshots of a sync root (path, kind, size, content hash, mode, mtime, link target) to
//! compare nodes; the agent's own folders and temp files are left out.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub kind: char,
    pub size: u64,
    pub hash: String,
    pub mode: u32,
    /// Files and links only (directory mtimes change as children change).
    pub mtime_ns: i64,
    pub target: String,
}

pub type Tree = BTreeMap<String, Item>;

pub fn snapshot(root: &Path) -> Tree {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).follow_links(false).min_depth(1) {
        let Ok(e) = e else { continue };
        let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel == "lsyncd" || rel.starts_with("lsyncd/") || e.file_name().to_string_lossy().starts_with(".filesync.") {
            continue;
        }
        let Ok(m) = e.path().symlink_metadata() else { continue };
        let ft = m.file_type();
        let (kind, hash, target) = if ft.is_symlink() {
            ('l', String::new(), std::fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default())
        } else if ft.is_dir() {
            ('d', String::new(), String::new())
        } else {
            let data = std::fs::read(e.path()).unwrap_or_default();
            ('f', blake3::hash(&data).to_hex().to_string(), String::new())
        };
        out.insert(
            rel,
            Item {
                kind,
                size: if kind == 'f' { m.len() } else { 0 },
                hash,
                mode: if kind == 'l' { 0 } else { m.mode() & 0o7777 },
                mtime_ns: if kind == 'd' { 0 } else { m.mtime() * 1_000_000_000 + m.mtime_nsec() },
                target,
            },
        );
    }
    out
}

/// Differences between two trees, as readable lines (empty when identical).
pub fn diff(a_name: &str, a: &Tree, b_name: &str, b: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push(format!("{k}: only on {a_name}")),
            Some(w) if w != v => out.push(format!("{k}: {a_name} {v:?} vs {b_name} {w:?}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(format!("{k}: only on {b_name}"));
        }
    }
    out
}
