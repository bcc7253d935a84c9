//! Applying a peer's changes: a page of entries is checked against the disk, ordered
//! (parents first, deletions last, renames matched by content), and each entry is decided
//! (`apply::decide`) and carried out through `SyncRoot`, or queued as a need when its
//! content must be fetched. Conflict copies and kind changes are made here.
#![allow(clippy::too_many_arguments)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::apply::{Decision, decide};
use super::index::{Need, Progress, Stored};
use super::root::RootError;
use super::scan::{self, Target};
use super::watch::HintKind;
use super::Agent;
use crate::protocol::wire::ChangesResponse;
use crate::protocol::{Entry, EntryKind, RelPath};

impl Agent {
    /// Applies one page of a peer's changes, then records the progress through its log.
    pub(super) fn process_page(&mut self, peer: &str, page: ChangesResponse) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut blobs: HashMap<[u8; 32], Vec<u8>> = page.blobs.into_iter().map(|b| (b.hash, b.data)).collect();
        let mut entries: Vec<Entry> = Vec::with_capacity(page.entries.len());
        for (_, e) in page.entries {
            if self.excludes.is_excluded(&e.path) {
                continue;
            }
            entries.push(e);
        }
        // Bring the index up to date for these paths first, so a local change that is still
        // waiting for its batch is seen as what it is (and may conflict).
        let mut targets = Vec::new();
        for e in &entries {
            if let Some(t) = self.batcher.take_path(&e.path) {
                targets.push(t);
                continue;
            }
            let stored = self.index.get(&e.path)?;
            let disk = self.root.stat(&e.path).ok().flatten();
            if !self.disk_matches(stored.as_ref(), disk.as_ref()) {
                targets.push(Target::Path { path: e.path.clone(), recursive: false });
            }
        }
        if !targets.is_empty() {
            self.local_batch(targets, "before applying peer changes")?;
        }
        let (mut live, mut dead): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| !e.deleted);
        live.sort_by(|a, b| a.path.cmp(&b.path));
        dead.sort_by(|a, b| b.path.cmp(&a.path));
        // Files deleted in this page whose content reappears under another name: renames.
        let mut rename_src: HashMap<[u8; 32], Vec<RelPath>> = HashMap::new();
        for d in &dead {
            if let Some(s) = self.index.get(&d.path)?
                && !s.entry.deleted && s.entry.kind == EntryKind::File && d.version.compare(&s.entry.version) == crate::protocol::VersionOrdering::Newer {
                    rename_src.entry(s.entry.hash).or_default().push(d.path.clone());
                }
        }
        let mut commits: Vec<(Entry, u64)> = Vec::new();
        self.root.defer_dir_syncs();
        let n = live.len() + dead.len();
        let mut lags = Vec::new();
        let now_ns = scan::now_ns();
        // Inline content is written to temp files first and made durable together (one
        // write-back per page instead of an fsync per file) before any reaches its name,
        // all before the deletions, which may remove the directories they were written in.
        let originals: HashMap<RelPath, Entry> = live.iter().filter(|r| r.kind == EntryKind::File && blobs.contains_key(&r.hash)).map(|r| (r.path.clone(), r.clone())).collect();
        self.root.defer_writes();
        for r in live {
            if r.kind == EntryKind::File && r.modified_by == page.node_id && now_ns - r.mtime_ns < 60_000_000_000 && now_ns >= r.mtime_ns {
                lags.push(((now_ns - r.mtime_ns) / 1_000_000) as u64);
            }
            if let Err(e) = self.apply_one(peer, r, &mut blobs, &mut rename_src, &mut commits) {
                self.root.discard_writes();
                self.root.sync_dirty_dirs();
                return Err(e);
            }
        }
        let finished = self.root.finish_writes();
        if !finished.written.is_empty() {
            // Deferred writes were committed with inode 0: give each its real inode.
            let inos: HashMap<&RelPath, u64> = finished.written.iter().map(|(p, i)| (p, *i)).collect();
            for (e, ino) in commits.iter_mut() {
                if let Some(i) = inos.get(&e.path) {
                    *ino = *i;
                }
            }
        }
        for (path, err) in finished.failed {
            commits.retain(|(e, _)| e.path != path);
            let msg = err.to_string();
            self.error(format!("cannot apply change from {peer}: {msg}; will retry"));
            if let Some(r) = originals.get(&path) {
                let need = Need { entry: r.clone(), source: peer.to_owned(), attempts: 1, last_error: Some(msg), force: false, copy_of: None };
                self.index.put_need(&need)?;
                self.retry_at.insert(path, Instant::now() + Duration::from_secs(2));
            }
        }
        for r in dead {
            if let Err(e) = self.apply_one(peer, r, &mut blobs, &mut rename_src, &mut commits) {
                self.root.sync_dirty_dirs();
                return Err(e);
            }
        }
        // Directories are made durable before the page is recorded as applied.
        self.root.sync_dirty_dirs();
        let applied = commits.len();
        self.index.commit_with_progress(commits, Some((peer, Progress { index_id: page.index_id, seq: page.last_seq })))?;
        if let Some(l) = lags.iter().max() {
            self.lag.insert(peer.to_owned(), *l);
        }
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.counters.applied += applied as u64;
        let p = st.peers.entry(peer.to_owned()).or_default();
        p.their_seq_processed = page.last_seq;
        if let Some(l) = lags.iter().max() {
            p.lag_ms = Some(*l);
        }
        drop(st);
        if applied > 0 {
            self.log.normal(format!("applied {applied} of {n} change(s) from {peer} in {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0));
        }
        Ok(())
    }

    pub(super) fn defer(&mut self, r: Entry, peer: &str, why: String) -> anyhow::Result<()> {
        let need = Need { entry: r, source: peer.to_owned(), attempts: 0, last_error: Some(why), force: false, copy_of: None };
        self.index.put_need(&need)?;
        self.retry_at.insert(need.entry.path.clone(), Instant::now() + Duration::from_secs(2));
        Ok(())
    }

    pub(super) fn apply_one(
        &mut self,
        peer: &str,
        r: Entry,
        blobs: &mut HashMap<[u8; 32], Vec<u8>>,
        rename_src: &mut HashMap<[u8; 32], Vec<RelPath>>,
        commits: &mut Vec<(Entry, u64)>,
    ) -> anyhow::Result<()> {
        if self.batcher.is_writing(&r.path) {
            tracing::debug!(path = %r.path, from = peer, "deferred: local write in progress");
            let p = r.path.clone();
            return self.defer(r, peer, format!("{p}: a local write is in progress; applying after it completes"));
        }
        if self.s.receive_only && self.local_mods.contains(&r.path) {
            return Ok(());
        }
        // A version that supersedes a pending fetch replaces it (it is applied or re-queued below).
        if let Some(n) = self.index.get_need(&r.path)?
            && matches!(r.version.compare(&n.entry.version), crate::protocol::VersionOrdering::Newer | crate::protocol::VersionOrdering::Equal) && !n.force {
                self.index.remove_need(&r.path)?;
            }
        let local = self.index.get(&r.path)?;
        let decision = decide(local.as_ref().map(|s| &s.entry), &r, self.index.node_id);
        tracing::debug!(path = %r.path, from = peer, remote = ?r.version, remote_deleted = r.deleted, local = ?local.as_ref().map(|s| (&s.entry.version, s.entry.deleted)), ?decision, "remote change");
        let res = match decision {
            Decision::Ignore => return Ok(()),
            Decision::KeepLocal { version, loser_copy } => {
                let l = local.expect("BUG: a conflict needs a local entry");
                let mut e = l.entry.clone();
                e.version = version;
                commits.push((e, l.ino));
                self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
                match &loser_copy {
                    Some(c) => self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept this node's version, {}'s saved as {c}", r.path, r.modified_by_name, r.modified_by_name)),
                    None => self.log.warn(format!("Conflict: {} was deleted on {} while it changed here; kept it", r.path, r.modified_by_name)),
                }
                match loser_copy {
                    None => Ok(()),
                    Some(copy) => self.keep_loser(peer, &r, copy, blobs),
                }
            }
            Decision::Merge { version, meta_from_remote } => {
                let l = local.expect("BUG: merge needs a local entry");
                let mut e = if meta_from_remote { r.clone() } else { l.entry.clone() };
                e.version = version;
                if meta_from_remote && !e.deleted {
                    self.set_meta(&e)
                } else {
                    Ok(l.ino)
                }
                .map(|ino| commits.push((e, ino)))
            }
            Decision::Apply { version, conflict_copy, conflict } => {
                let mut e = r.clone();
                e.version = version;
                let local_live = local.as_ref().filter(|s| !s.entry.deleted);
                if r.deleted {
                    match self.root.remove(&r.path) {
                        Ok(emptied) => {
                            if !emptied {
                                // Unannounced local files keep the directory: scan it again so
                                // they (and the directory) flow back out; nothing is lost.
                                self.batcher.add(r.path.clone(), HintKind::Tree, Instant::now());
                            }
                            commits.push((e, 0));
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                } else if r.kind == EntryKind::File && local_live.is_some_and(|l| l.entry.kind == EntryKind::File && l.entry.hash == r.hash) && conflict_copy.is_none() {
                    self.set_meta(&e).map(|ino| commits.push((e, ino)))
                } else if r.kind == EntryKind::File && r.size > 0 && !blobs.contains_key(&r.hash) && rename_src.get(&r.hash).is_none_or(|v| v.is_empty()) {
                    // Content must be fetched: the decision is taken again when it arrives.
                    let need = Need { entry: r, source: peer.to_owned(), attempts: 0, last_error: None, force: false, copy_of: None };
                    self.index.put_need(&need)?;
                    self.retry_at.insert(need.entry.path.clone(), Instant::now());
                    return Ok(());
                } else {
                    if conflict {
                        self.note_conflict(&r, conflict_copy.as_ref(), peer);
                    }
                    let prep = self.prepare_slot(&r.path, r.kind, local_live, conflict_copy.as_ref());
                    match prep {
                        Err(err) => Err(err),
                        Ok(()) => {
                            let res = match r.kind {
                                EntryKind::Dir => self.root.mkdir(&r.path, r.mode),
                                EntryKind::Symlink => self.root.symlink(&r.path, &r.target, r.mtime_ns),
                                EntryKind::File => {
                                    if let Some(data) = blobs.get(&r.hash) {
                                        let len = data.len() as u64;
                                        let res = self.root.write_atomic(&r.path, data, r.mode, r.mtime_ns);
                                        if res.is_ok() {
                                            self.status.lock().expect("BUG: poisoned").counters.bytes_received += len;
                                        }
                                        res
                                    } else if r.size == 0 {
                                        self.root.write_atomic(&r.path, &[], r.mode, r.mtime_ns)
                                    } else {
                                        let src = rename_src.get_mut(&r.hash).and_then(|v| v.pop()).expect("BUG: checked above");
                                        self.status.lock().expect("BUG: poisoned").counters.renames += 1;
                                        self.root.rename(&src, &r.path).and_then(|_| self.set_meta(&r))
                                    }
                                }
                            };
                            res.map(|ino| commits.push((e, ino)))
                        }
                    }
                }
            }
        };
        if let Err(err) = res {
            match err {
                RootError::Escapes { .. } => {
                    self.error(format!("refused change from {peer}: {err}"));
                    self.status.lock().expect("BUG: poisoned").counters.refused += 1;
                }
                other => {
                    let msg = other.to_string();
                    self.error(format!("cannot apply change from {peer}: {msg}; will retry"));
                    let need = Need { entry: r, source: peer.to_owned(), attempts: 1, last_error: Some(msg), force: false, copy_of: None };
                    self.index.put_need(&need)?;
                    self.retry_at.insert(need.entry.path.clone(), Instant::now() + Duration::from_secs(2));
                }
            }
        }
        let _ = blobs;
        Ok(())
    }

    /// Saves a losing remote version under its conflict-copy name, from the page's inline
    /// content or by fetching it; the scanner then announces the copy as a new file.
    pub(super) fn keep_loser(&mut self, peer: &str, r: &Entry, copy: RelPath, blobs: &HashMap<[u8; 32], Vec<u8>>) -> Result<(), RootError> {
        if self.root.stat(&copy)?.is_some() {
            return Ok(());
        }
        match r.kind {
            EntryKind::Symlink => {
                self.root.symlink(&copy, &r.target, r.mtime_ns)?;
            }
            _ if r.size == 0 || blobs.contains_key(&r.hash) => {
                let data = blobs.get(&r.hash).map(Vec::as_slice).unwrap_or(&[]);
                self.root.write_atomic(&copy, data, r.mode, r.mtime_ns)?;
            }
            _ => {
                let mut entry = r.clone();
                entry.path = copy.clone();
                let need = Need { entry, source: peer.to_owned(), attempts: 0, last_error: None, force: false, copy_of: Some(r.path.clone()) };
                if let Err(e) = self.index.put_need(&need) {
                    self.error(format!("cannot queue conflict copy {copy}: {e:#}"));
                }
                self.retry_at.insert(copy, Instant::now());
                return Ok(());
            }
        }
        self.batcher.add(copy, HintKind::Tree, Instant::now());
        Ok(())
    }

    pub(super) fn note_conflict(&self, winner: &Entry, copy: Option<&RelPath>, peer: &str) {
        self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
        let kept = match copy {
            Some(c) => format!("this node's version saved as {c}"),
            None => "this node's version was a deletion".to_owned(),
        };
        self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept {}'s version (via {peer}), {kept}", winner.path, winner.modified_by_name, winner.modified_by_name));
    }

    /// Makes room for a new version at `path`: moves the losing local content to its
    /// conflict copy, or removes a local item of another kind that the new version replaces.
    pub(super) fn prepare_slot(&mut self, path: &RelPath, kind: EntryKind, local: Option<&Stored>, conflict_copy: Option<&RelPath>) -> Result<(), RootError> {
        if let Some(copy) = conflict_copy {
            if self.root.stat(path)?.is_some() {
                self.root.rename(path, copy)?;
                self.batcher.add(copy.clone(), HintKind::Tree, Instant::now());
            }
            return Ok(());
        }
        let _ = local;
        match self.root.stat(path)? {
            Some(d) if d.kind == kind => Ok(()),
            // A directory is replaced only once it is empty (its children's deletions come
            // in the same page or later; the item is retried until then).
            Some(d) if d.kind == EntryKind::Dir => {
                if self.root.remove(path)? {
                    Ok(())
                } else {
                    Err(RootError::Io { path: path.clone(), source: std::io::Error::other("a non-empty directory is in the way") })
                }
            }
            // A file or link that a newer version replaces by another kind.
            Some(_) if kind == EntryKind::Dir => self.root.remove(path).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Sets mode (and mtime for files and links) of an existing path; returns its inode.
    pub(super) fn set_meta(&self, e: &Entry) -> Result<u64, RootError> {
        if e.kind != EntryKind::Symlink {
            self.root.set_mode(&e.path, e.mode)?;
        }
        if e.kind == EntryKind::File {
            self.root.set_mtime(&e.path, e.mtime_ns)?;
        }
        Ok(self.root.stat(&e.path)?.map(|d| d.ino).unwrap_or(0))
    }

}
