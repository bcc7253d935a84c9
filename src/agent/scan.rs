//! The scanner: watch events are hints, the scanner decides what changed. It compares what
//! is on disk under the given paths with the index and produces new versions: changed files
//! are hashed (unless size, mtime, mode and inode match the index), vanished paths become
//! tombstones, and a file that moved keeps its hash without being re-read (matched by
//! inode). A file that changes while it is being hashed, or that a process still has open
//! for writing (`held`), is reported as unstable and scanned again later, whatever asked for
//! the scan (watcher, new directory, pre-apply, periodic rescan), so a half-written upload is
//! never announced. Deletions are produced children first, so a peer paging through them
//! never meets a directory's deletion before its content's.

use std::collections::{BTreeMap, HashMap};

use super::exclude::Excludes;
use super::index::{Index, Stored};
use super::root::{DiskMeta, RootError, SyncRoot, hash_files};
use crate::protocol::{Entry, EntryKind, NodeId, RelPath};

/// A scope to scan: one path, or a whole subtree.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Root,
    Path { path: RelPath, recursive: bool },
}

#[derive(Default, Debug)]
pub struct Outcome {
    /// New versions to commit, with the inode seen on disk.
    pub changes: Vec<(Entry, u64)>,
    /// Same content and metadata, new inode only: no new version.
    pub inode_updates: Vec<(RelPath, u64)>,
    /// Files that changed while being read; scan again later.
    pub unstable: Vec<RelPath>,
    /// Per-path errors (unreadable file, ...).
    pub errors: Vec<String>,
    /// Deletions that were held back because the root looked unmounted or emptied.
    pub held_deletes: usize,
    /// Directories seen (for the status: "watching N directories").
    pub dirs_seen: usize,
    /// Entries whose names cannot be synced (not valid UTF-8), shown lossily.
    pub unsyncable: Vec<String>,
    /// Files with more than one name whose content changed: their other names (same
    /// inode) must be scanned too.
    pub linked_inodes: Vec<u64>,
    /// Subtrees that could not be read completely (`None`: the whole root): nothing under
    /// them is taken for deleted.
    pub unread: Vec<Option<RelPath>>,
    /// Directories the walk listed but found gone when it came to read them (see
    /// `Walked::raced`): nothing at or under them is taken for deleted by this scan.
    pub raced: Vec<RelPath>,
}

/// A path whose new version is being worked out: its content's hash, link target and
/// metadata once known (`None`: a file still to hash).
struct Todo {
    path: RelPath,
    m: DiskMeta,
    known: Option<Stored>,
    content: Option<([u8; 32], String, DiskMeta)>,
}

pub struct Scanner<'a> {
    pub root: &'a SyncRoot,
    pub index: &'a Index,
    pub excludes: &'a Excludes,
    pub node_id: NodeId,
    pub node_name: &'a str,
    /// Refuse to turn a whole emptied root into deletions (DESIGN: unmounted volume guard).
    pub guard_empty_root: bool,
    /// Whether a file is still being written (the batcher saw writes without a close, or a
    /// process has it open for writing): not announced yet.
    pub held: &'a dyn Fn(&RelPath, &DiskMeta) -> bool,
    /// Whether a file was written to since its last scan: its content is hashed again
    /// whatever its size, mtime and inode say.
    pub written: &'a dyn Fn(&RelPath) -> bool,
}

impl Scanner<'_> {
    pub fn scan(&self, targets: &[Target]) -> anyhow::Result<Outcome> {
        let mut out = Outcome::default();
        // What is on disk, and which index entries are in scope (candidates for deletion).
        let mut disk: BTreeMap<RelPath, DiskMeta> = BTreeMap::new();
        let mut scope: BTreeMap<RelPath, Stored> = BTreeMap::new();
        let mut full_root = false;
        for t in targets {
            match t {
                Target::Root => {
                    full_root = true;
                    self.walk(None, &mut disk, &mut out)?;
                    for s in self.index.under(None)? {
                        scope.insert(s.entry.path.clone(), s);
                    }
                }
                Target::Path { path, recursive } => {
                    if self.excludes.is_excluded(path) {
                        continue;
                    }
                    let meta = match self.root.stat(path) {
                        Ok(m) => m,
                        Err(e) => {
                            // (looked at again with the whole tree: see `Agent::unread`)
                            out.errors.push(e.to_string());
                            out.unread.push(Some(path.clone()));
                            continue;
                        }
                    };
                    let known = self.index.get(path)?;
                    match meta {
                        Some(m) if m.kind == EntryKind::Dir => {
                            let new_dir = !known.as_ref().is_some_and(|k| !k.entry.deleted && k.entry.kind == EntryKind::Dir);
                            if *recursive || new_dir {
                                self.walk(Some(path), &mut disk, &mut out)?;
                                for s in self.index.under(Some(path))? {
                                    scope.insert(s.entry.path.clone(), s);
                                }
                            } else {
                                disk.insert(path.clone(), m);
                                if let Some(k) = known {
                                    scope.insert(path.clone(), k);
                                }
                            }
                        }
                        Some(m) => {
                            disk.insert(path.clone(), m);
                            // A file that replaced a directory: the old subtree is gone.
                            for s in self.index.under(Some(path))? {
                                scope.insert(s.entry.path.clone(), s);
                            }
                        }
                        None => {
                            for s in self.index.under(Some(path))? {
                                scope.insert(s.entry.path.clone(), s);
                            }
                        }
                    }
                    // Parents that the index does not know yet (created before their watch).
                    let mut parent = path.parent();
                    while let Some(p) = parent {
                        if self.index.get(&p)?.is_some_and(|s| !s.entry.deleted) {
                            break;
                        }
                        if let Ok(Some(m)) = self.root.stat(&p) {
                            disk.entry(p.clone()).or_insert(m);
                        }
                        parent = p.parent();
                    }
                }
            }
        }

        // Deletions: in scope, live in the index, not on disk; children before parents.
        // (never under a directory that could not be read: out of descriptors, say, a
        // subtree missing from the walk would have been deleted on every node)
        let unread = |p: &RelPath| out.unread.iter().any(|d| d.as_ref().is_none_or(|d| p.starts_with(d))) || out.raced.iter().any(|d| p.starts_with(d));
        let mut deleted: Vec<Stored> =
            scope.into_values().rev().filter(|s| !s.entry.deleted && !disk.contains_key(&s.entry.path) && !self.excludes.is_excluded(&s.entry.path) && !unread(&s.entry.path)).collect();
        if full_root && self.guard_empty_root && disk.is_empty() && !deleted.is_empty() {
            out.held_deletes = deleted.len();
            deleted.clear();
        }
        // Moved files keep their hash: index them by (inode, size, mtime).
        // (not one written to since: its content may have changed under the same stat)
        let moved: HashMap<(u64, u64, i64), [u8; 32]> =
            deleted.iter().filter(|s| s.entry.kind == EntryKind::File && !(self.written)(&s.entry.path)).map(|s| ((s.ino, s.entry.size, s.entry.mtime_ns), s.entry.hash)).collect();

        // What can be decided without reading content; the files whose content must be
        // hashed are hashed together afterwards (on several threads when there is enough).
        let mut todo: Vec<Todo> = Vec::new();
        for (path, m) in disk {
            let known = self.index.get(&path)?;
            let live = known.as_ref().filter(|k| !k.entry.deleted);
            let written = m.kind == EntryKind::File && (self.written)(&path);
            if live.is_some_and(|k| indexed_as(k, &m)) && !written {
                continue;
            }
            if m.kind == EntryKind::File && (self.held)(&path, &m) {
                out.unstable.push(path);
                continue;
            }
            let content = match m.kind {
                EntryKind::Dir => Some(([0u8; 32], String::new(), m.clone())),
                EntryKind::Symlink => match self.root.read_link(&path) {
                    Ok(t) => Some((*blake3::hash(t.as_bytes()).as_bytes(), t, m.clone())),
                    Err(e) => {
                        out.errors.push(e.to_string());
                        continue;
                    }
                },
                EntryKind::File if written => None,
                EntryKind::File => moved
                    .get(&(m.ino, m.size, m.mtime_ns))
                    .copied()
                    .or_else(|| live.filter(|k| k.ino == m.ino && k.entry.size == m.size && k.entry.mtime_ns == m.mtime_ns && k.entry.kind == EntryKind::File).map(|k| k.entry.hash))
                    .map(|h| (h, String::new(), m.clone())),
            };
            todo.push(Todo { path, m, known, content });
        }
        let hashed = {
            let files: Vec<(&RelPath, u64)> = todo.iter().filter(|t| t.content.is_none()).map(|t| (&t.path, t.m.size)).collect();
            hash_files(self.root, &files)
        };
        let mut hashed = hashed.into_iter();
        for Todo { path, m, known, content } in todo {
            let live = known.as_ref().filter(|k| !k.entry.deleted);
            let (hash, target, meta) = match content {
                Some(c) => c,
                None => match hashed.next().expect("BUG: one result per file to hash") {
                    Ok((h, after)) if after.size == m.size && after.mtime_ns == m.mtime_ns => (h, String::new(), after),
                    Ok(_) => {
                        out.unstable.push(path);
                        continue;
                    }
                    Err(RootError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        out.errors.push(e.to_string());
                        continue;
                    }
                },
            };
            if let Some(k) = live {
                let e = &k.entry;
                if e.kind == meta.kind && e.hash == hash && e.target == target && e.mode == meta.mode && (meta.kind == EntryKind::Dir || e.mtime_ns == meta.mtime_ns) {
                    out.inode_updates.push((path, meta.ino));
                    continue;
                }
            }
            let base = known.as_ref().map(|k| k.entry.version.clone()).unwrap_or_default();
            let version = base.bumped(self.node_id);
            // New content gets a new origin; a metadata-only change keeps the content's.
            let origin = match live {
                Some(k) if k.entry.kind == meta.kind && k.entry.hash == hash && k.entry.target == target => k.entry.origin.clone(),
                _ => version.clone(),
            };
            if meta.kind == EntryKind::File && meta.nlink > 1 && live.is_none_or(|k| k.entry.hash != hash) {
                out.linked_inodes.push(meta.ino);
            }
            out.changes.push((
                Entry {
                    path,
                    kind: meta.kind,
                    deleted: false,
                    size: meta.size,
                    mtime_ns: meta.mtime_ns,
                    mode: meta.mode,
                    hash,
                    target,
                    version,
                    modified_by: self.node_id,
                    modified_by_name: self.node_name.to_owned(),
                    origin,
                },
                meta.ino,
            ));
        }
        for s in deleted {
            out.changes.push((self.tombstone(&s.entry), 0));
        }
        Ok(out)
    }

    pub fn tombstone(&self, e: &Entry) -> Entry {
        let version = e.version.bumped(self.node_id);
        Entry {
            origin: version.clone(),
            path: e.path.clone(),
            kind: e.kind,
            deleted: true,
            size: 0,
            mtime_ns: now_ns(),
            mode: e.mode,
            hash: [0; 32],
            target: String::new(),
            version,
            modified_by: self.node_id,
            modified_by_name: self.node_name.to_owned(),
        }
    }

    fn walk(&self, dir: Option<&RelPath>, disk: &mut BTreeMap<RelPath, DiskMeta>, out: &mut Outcome) -> anyhow::Result<()> {
        let mut dirs = 0;
        let w = self.root.walk_each(dir, &|p| self.excludes.is_excluded(p), &mut |p, m| {
            if m.kind == EntryKind::Dir {
                dirs += 1;
            }
            disk.insert(p, m);
        })?;
        out.dirs_seen += dirs;
        out.errors.extend(w.errors.into_iter().map(|e| format!("scan: {e}")));
        out.unread.extend(w.incomplete);
        out.raced.extend(w.raced);
        out.unsyncable.extend(w.unsyncable);
        Ok(())
    }
}

/// The scan's rule for "unchanged since indexed": same kind and permissions, and for files
/// and symlinks the same size, mtime and inode (a file replaced by another keeps neither).
pub fn indexed_as(k: &Stored, m: &DiskMeta) -> bool {
    let e = &k.entry;
    e.kind == m.kind && e.mode == m.mode && (m.kind == EntryKind::Dir || (e.size == m.size && e.mtime_ns == m.mtime_ns && k.ino == m.ino))
}

pub fn now_ns() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64
}
