//! Verify's view of the sync folder as it is on disk, not as the index remembers it: every
//! file is read and hashed (a change made behind the agent's back, with its size and mtime
//! put back, shows), and each directory gets two digests: `own` over its direct entries
//! (name, kind, permission bits, size, file mtime, content or link target) and `tree` over
//! everything below it. Directory mtimes are left out (they are not replicated). Nodes
//! whose root `tree` digests are equal hold the same tree; where they differ, the
//! directories whose `own` digests differ are listed file by file ([`file_facts`]).

use std::collections::BTreeMap;
use std::time::Instant;

use super::Report;
use crate::agent::index::Index;
use crate::agent::root::{DiskMeta, SyncRoot, hash_file};
use crate::protocol::report::{DirDigest, DirDigests, FileFact, FileFacts};
use crate::protocol::{EntryKind, RelPath};

fn kind_byte(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 1,
        EntryKind::Dir => 2,
        EntryKind::Symlink => 3,
    }
}

/// The content hash of one entry: BLAKE3 of a file's bytes or a link's target; zero for a
/// directory. `Err` when it cannot be read or changed while being read.
fn content_hash(root: &SyncRoot, p: &RelPath, m: &DiskMeta) -> Result<[u8; 32], String> {
    match m.kind {
        EntryKind::Dir => Ok([0; 32]),
        EntryKind::Symlink => root.read_link(p).map(|t| *blake3::hash(t.as_bytes()).as_bytes()).map_err(|e| e.to_string()),
        EntryKind::File => match hash_file(root, p) {
            Ok((h, after)) if after.size == m.size && after.mtime_ns == m.mtime_ns => Ok(h),
            Ok(_) => Err(format!("{p}: changed while it was read")),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// What one entry contributes to its directory's `own` digest.
fn leaf(name: &str, m: &DiskMeta, hash: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(name.len() + 64);
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(name.as_bytes());
    b.push(kind_byte(m.kind));
    b.extend_from_slice(&m.mode.to_le_bytes());
    if m.kind != EntryKind::Dir {
        b.extend_from_slice(&m.size.to_le_bytes());
        b.extend_from_slice(&m.mtime_ns.to_le_bytes());
    }
    b.extend_from_slice(hash);
    b
}

fn hex16(h: blake3::Hash) -> String {
    hex::encode(&h.as_bytes()[..16])
}

fn dir_of(p: &RelPath) -> String {
    p.parent().map(|d| d.to_string()).unwrap_or_default()
}

impl Report {
    /// Walks and hashes the whole folder (skipping what is never synced).
    pub fn digests(&self, root: &SyncRoot) -> anyhow::Result<DirDigests> {
        let t0 = Instant::now();
        let walked = root.walk(None, &|p| self.excludes.is_excluded(p))?;
        let mut out = DirDigests { node: self.node.clone(), errors: walked.errors, ..DirDigests::default() };
        out.errors.extend(walked.unsyncable.into_iter().map(|n| format!("{n}: the name is not valid UTF-8 (not synced)")));
        // dir -> [(name, leaf bytes)], and every directory (so empty ones get digests too).
        let mut children: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        children.insert(String::new(), Vec::new());
        for (p, m) in &walked.items {
            let hash = match content_hash(root, p, m) {
                Ok(h) => h,
                Err(e) => {
                    out.errors.push(e);
                    // Unreadable: counted as differing (a digest no other node can have).
                    *blake3::hash(format!("unreadable {}", self.node).as_bytes()).as_bytes()
                }
            };
            if m.kind == EntryKind::File {
                out.files += 1;
                out.bytes += m.size;
            }
            if m.kind == EntryKind::Dir {
                children.entry(p.to_string()).or_default();
            }
            children.entry(dir_of(p)).or_default().push((p.file_name().to_owned(), leaf(p.file_name(), m, &hash)));
        }
        // Children before parents: longer paths first, so every subdirectory's tree digest
        // exists when its parent is done.
        let mut dirs: Vec<String> = children.keys().cloned().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(if d.is_empty() { 0 } else { d.matches('/').count() + 1 }));
        let mut trees: BTreeMap<String, String> = BTreeMap::new();
        for d in dirs {
            let mut kids = children.remove(&d).unwrap_or_default();
            kids.sort_by(|a, b| a.0.cmp(&b.0));
            let mut own = blake3::Hasher::new();
            let mut tree = blake3::Hasher::new();
            for (name, bytes) in &kids {
                own.update(bytes);
                let full = if d.is_empty() { name.clone() } else { format!("{d}/{name}") };
                if let Some(sub) = trees.get(&full) {
                    tree.update(&(name.len() as u32).to_le_bytes());
                    tree.update(name.as_bytes());
                    tree.update(sub.as_bytes());
                }
            }
            let own = hex16(own.finalize());
            tree.update(own.as_bytes());
            let tree = hex16(tree.finalize());
            trees.insert(d.clone(), tree.clone());
            out.dirs.insert(d, DirDigest { own, tree });
        }
        out.took_ms = t0.elapsed().as_millis() as u64;
        Ok(out)
    }

    /// The direct entries of `dir` (`""`: the root) as found on disk, each hashed, with
    /// whether the index records the same content.
    pub fn file_facts(&self, root: &SyncRoot, index: &Index, dir: &str) -> anyhow::Result<FileFacts> {
        let start = if dir.is_empty() { None } else { Some(RelPath::parse(dir).map_err(|e| anyhow::anyhow!("directory {dir:?}: {e}"))?) };
        if start.as_ref().is_some_and(|d| self.excludes.is_excluded(d)) {
            anyhow::bail!("{dir} is excluded from sync");
        }
        let walked = root.walk(start.as_ref(), &|p| self.excludes.is_excluded(p))?;
        let direct: Vec<&(RelPath, DiskMeta)> = walked.items.iter().filter(|(p, _)| Some(p) != start.as_ref() && dir_of(p) == dir).collect();
        let known = index.get_many(direct.iter().map(|(p, _)| p))?;
        let mut entries = Vec::with_capacity(direct.len());
        for ((p, m), k) in direct.into_iter().zip(known) {
            let hash = content_hash(root, p, m);
            let indexed = match (&hash, k.as_ref().map(|s| &s.entry).filter(|e| !e.deleted)) {
                (Ok(h), Some(e)) => e.kind == m.kind && (m.kind == EntryKind::Dir || e.hash == *h),
                _ => false,
            };
            entries.push(FileFact {
                path: p.to_string(),
                entry: super::kind_name(m.kind).to_owned(),
                size: m.size,
                mtime_ns: if m.kind == EntryKind::Dir { 0 } else { m.mtime_ns },
                mode: m.mode,
                hash: match hash {
                    Ok(h) if m.kind != EntryKind::Dir => hex::encode(h),
                    Ok(_) => String::new(),
                    Err(e) => format!("unreadable: {e}"),
                },
                indexed,
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(FileFacts { node: self.node.clone(), dir: dir.to_owned(), entries })
    }
}
