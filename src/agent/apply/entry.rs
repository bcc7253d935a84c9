//! Carrying out one decision about one remote version, whatever brought it: a page, a
//! retried need, or fetched content. Every destructive step names the disk state the
//! decision was taken on (`Expect`); a local change that lands meanwhile makes the step
//! fail with `Changed`, the path is rescanned and the item decided again, so a local write
//! is never overwritten and the conflict rule sees it.

use std::time::Instant;

use super::decide::{Decision, decide};
use crate::agent::Agent;
use crate::agent::index::{Need, Stored};
use crate::agent::root::durable::Pending;
use crate::agent::root::{DiskMeta, Expect, Removed, RootError, TempFile};
use crate::agent::watch::HintKind;
use crate::protocol::{Entry, EntryKind, RelPath};

/// The content a decision may need for a file.
pub(in crate::agent) enum Content {
    /// Nothing at hand: fetched if the decision needs it.
    None,
    /// The bytes (inline in a page).
    Bytes(Vec<u8>),
    /// A fetched, verified temp file next to the path.
    Temp(TempFile),
    /// The same content at another path of this page, which the page deletes (a rename),
    /// and the state that path is expected in.
    Move(RelPath, Expect),
}

/// What one applied item leaves to record.
pub(in crate::agent) enum Done {
    /// Record this version with this inode.
    Record(Entry, u64),
    /// Write this file (in the page's durable batch), then record the entry with the inode
    /// it got; `None`: a conflict copy, announced by the next scan instead.
    Write(Pending, Option<Entry>),
    /// Record this need (content to fetch, or an item to retry).
    Queue(Need),
}

impl Agent {
    /// Decides `r` against the local state (`local` from the index, `disk` as seen after the
    /// pre-scan) and carries the decision out. Only index failures are errors; a file
    /// system failure becomes a need to retry (or, for a refusal, a log line).
    pub(in crate::agent) fn apply_entry(&mut self, source: &str, r: Entry, local: Option<&Stored>, disk: Option<DiskMeta>, content: Content, force: bool) -> anyhow::Result<Vec<Done>> {
        let decision = if force { Decision::Apply { version: r.version.clone(), conflict_copy: None, conflict: false } } else { decide(local.map(|s| &s.entry), &r, self.index.node_id) };
        tracing::debug!(path = %r.path, from = source, remote = ?r.version, remote_deleted = r.deleted, local = ?local.map(|s| (&s.entry.version, s.entry.deleted)), ?decision, "remote change");
        let expect = Expect::from_disk(disk.clone());
        let mut out = Vec::new();
        match decision {
            Decision::Ignore => {}
            Decision::KeepLocal { version, loser_copy } => {
                let l = local.expect("BUG: a conflict needs a local entry");
                let mut e = l.entry.clone();
                e.version = version;
                if let Some(copy) = &loser_copy {
                    self.count_conflict();
                    self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept this node's version, {}'s saved as {copy}", r.path, r.modified_by_name, r.modified_by_name));
                    let kept = self.keep_loser(source, &r, copy.clone(), content);
                    // Our version claims to supersede theirs only once their content is safe
                    // here: while the copy is still to be fetched, every node that holds the
                    // losing content keeps deciding by the winner rule and keeps it as a copy
                    // itself (see `supersede_kept_loser`).
                    if !kept.iter().any(|d| matches!(d, Done::Queue(_))) {
                        out.push(Done::Record(e, l.ino));
                    }
                    out.extend(kept);
                    return Ok(out);
                }
                out.push(Done::Record(e, l.ino));
                if r.deleted && !l.entry.deleted {
                    self.count_conflict();
                    self.log.warn(format!("Conflict: {} was deleted on {} while it changed here; kept it", r.path, r.modified_by_name));
                }
            }
            Decision::Merge { version, meta_from_remote } => {
                let l = local.expect("BUG: merge needs a local entry");
                let mut e = if meta_from_remote { r.clone() } else { l.entry.clone() };
                e.version = version;
                e.origin = l.entry.origin.merged(&r.origin);
                if meta_from_remote && !e.deleted {
                    match self.root.set_meta(&e.path, e.kind, e.mode, e.mtime_ns, &expect) {
                        Ok(ino) => out.push(Done::Record(e, ino)),
                        Err(err) => out.extend(self.failed(source, r, err)),
                    }
                } else {
                    out.push(Done::Record(e, l.ino));
                }
            }
            Decision::Apply { version, conflict_copy, conflict } => {
                let mut e = r.clone();
                e.version = version;
                let local_live = local.filter(|s| !s.entry.deleted);
                // What this replaces or deletes is kept as a version, with why (`versions`).
                // (A forced revert replaces a local modification the index does not describe.)
                self.root.displacing(&r.path, crate::agent::versions::cause_of(&r, local.filter(|_| !force)));
                self.note_arrival(&r);
                if r.deleted {
                    // A deletion waits for the rest of its node's batch, or an operator (`hold`).
                    if let Some(need) = self.hold_deletion(source, &r) {
                        out.push(Done::Queue(need));
                        return Ok(out);
                    }
                    match self.root.remove(&r.path, &expect) {
                        Ok(Removed::Gone) => out.push(Done::Record(e, 0)),
                        Ok(Removed::NotEmpty) => out.push(Done::Queue(self.dir_not_empty(source, r))),
                        Err(err) => out.extend(self.failed(source, r, err)),
                    }
                    return Ok(out);
                }
                if r.kind == EntryKind::File && conflict_copy.is_none() && !force && local_live.is_some_and(|l| l.entry.kind == EntryKind::File && l.entry.hash == r.hash) {
                    match self.root.set_meta(&r.path, r.kind, r.mode, r.mtime_ns, &expect) {
                        Ok(ino) => out.push(Done::Record(e, ino)),
                        Err(err) => out.extend(self.failed(source, r, err)),
                    }
                    return Ok(out);
                }
                if r.kind == EntryKind::File && r.size > 0 && matches!(content, Content::None) {
                    // The content must be fetched; the decision is taken again when it arrives.
                    out.push(Done::Queue(Need { entry: r, source: source.to_owned(), attempts: 0, last_error: None, force, copy_of: None }));
                    return Ok(out);
                }
                if conflict {
                    self.note_conflict(&r, conflict_copy.as_ref(), source);
                }
                let expect = match self.prepare_slot(&r.path, r.kind, disk, conflict_copy.as_ref()) {
                    Ok(x) => x,
                    Err(err) => {
                        out.extend(self.failed(source, r, err));
                        return Ok(out);
                    }
                };
                let res = match (r.kind, content) {
                    (EntryKind::Dir, _) => self.root.mkdir(&r.path, r.mode),
                    (EntryKind::Symlink, _) => self.root.symlink(&r.path, &r.target, r.mtime_ns, &expect),
                    (EntryKind::File, Content::Bytes(data)) => {
                        self.status.lock().expect("BUG: poisoned").counters.bytes_received += data.len() as u64;
                        out.push(Done::Write(Pending { path: r.path.clone(), data, mode: r.mode, mtime_ns: r.mtime_ns, expect }, Some(e)));
                        return Ok(out);
                    }
                    (EntryKind::File, Content::None) => {
                        out.push(Done::Write(Pending { path: r.path.clone(), data: Vec::new(), mode: r.mode, mtime_ns: r.mtime_ns, expect }, Some(e)));
                        return Ok(out);
                    }
                    (EntryKind::File, Content::Temp(mut tmp)) => {
                        tmp.finish(r.mode, r.mtime_ns).and_then(|_| tmp.sync()).map_err(|err| RootError::io(&r.path, err)).and_then(|_| self.root.install(tmp, &expect))
                    }
                    (EntryKind::File, Content::Move(src, src_expect)) => {
                        self.status.lock().expect("BUG: poisoned").counters.renames += 1;
                        self.root.rename(&src, &r.path, &src_expect).and_then(|_| self.root.set_meta(&r.path, r.kind, r.mode, r.mtime_ns, &Expect::Anything))
                    }
                };
                match res {
                    Ok(ino) => out.push(Done::Record(e, ino)),
                    Err(err) => out.extend(self.failed(source, r, err)),
                }
            }
        }
        Ok(out)
    }

    /// Saves a losing remote version under its conflict-copy name, from the content at hand
    /// or by fetching it; the scanner then announces the copy as a new file.
    fn keep_loser(&mut self, source: &str, r: &Entry, copy: RelPath, content: Content) -> Vec<Done> {
        match (r.kind, content) {
            (EntryKind::Symlink, _) => {
                match self.root.symlink(&copy, &r.target, r.mtime_ns, &Expect::Absent) {
                    Ok(_) | Err(RootError::Changed { .. }) => self.batcher.add(copy, HintKind::Tree, Instant::now()),
                    Err(err) => self.error(format!("cannot keep conflict copy {copy}: {err}")),
                }
                Vec::new()
            }
            (_, Content::Bytes(data)) => vec![Done::Write(Pending { path: copy, data, mode: r.mode, mtime_ns: r.mtime_ns, expect: Expect::Absent }, None)],
            (_, Content::None) if r.size == 0 => vec![Done::Write(Pending { path: copy, data: Vec::new(), mode: r.mode, mtime_ns: r.mtime_ns, expect: Expect::Absent }, None)],
            (_, Content::Temp(tmp)) => {
                if self.install_copy(&copy, tmp, r) {
                    return Vec::new();
                }
                vec![Done::Queue(copy_need(r, copy, source, Some("the conflict copy could not be written".into())))]
            }
            // Not written: fetched (again) later.
            _ => vec![Done::Queue(copy_need(r, copy, source, None))],
        }
    }

    /// Puts fetched content under a conflict-copy name (never over an existing file: a copy
    /// of that name holds the same version already). Returns whether the copy is there.
    pub(super) fn install_copy(&mut self, copy: &RelPath, mut tmp: TempFile, r: &Entry) -> bool {
        let res = tmp.finish(r.mode, r.mtime_ns).and_then(|_| tmp.sync()).map_err(|e| RootError::io(copy, e)).and_then(|_| self.root.install_at(tmp, copy, &Expect::Absent));
        match res {
            Ok(_) | Err(RootError::Changed { .. }) => {
                self.batcher.add(copy.clone(), HintKind::Tree, Instant::now());
                true
            }
            Err(err) => {
                self.error(format!("cannot keep conflict copy {copy}: {err}"));
                false
            }
        }
    }

    pub(super) fn note_conflict(&self, winner: &Entry, copy: Option<&RelPath>, peer: &str) {
        self.count_conflict();
        let kept = match copy {
            Some(c) => format!("this node's version saved as {c}"),
            None => "this node's version was a deletion".to_owned(),
        };
        self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept {}'s version (via {peer}), {kept}", winner.path, winner.modified_by_name, winner.modified_by_name));
    }

    fn count_conflict(&self) {
        self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
    }

    /// Makes room for a new version at `path` and returns what the write may replace: moves
    /// the losing local content to its conflict copy, or removes a local item of another
    /// kind that the new version replaces.
    fn prepare_slot(&mut self, path: &RelPath, kind: EntryKind, disk: Option<DiskMeta>, conflict_copy: Option<&RelPath>) -> Result<Expect, RootError> {
        let Some(d) = disk else { return Ok(Expect::Absent) };
        if let Some(copy) = conflict_copy {
            let seen = Expect::Is(d);
            let mut name = copy.clone();
            for n in 2..10 {
                match self.root.rename(path, &name, &seen) {
                    Ok(_) => {
                        self.batcher.add(name, HintKind::Tree, Instant::now());
                        return Ok(Expect::Absent);
                    }
                    // The copy's name is taken (by an earlier copy of the same content, or by
                    // the user): take the next one.
                    Err(RootError::Changed { path: p }) if p == name => {
                        name = path.with_file_name(&format!("{}-{n}", copy.file_name())).unwrap_or_else(|_| copy.clone());
                    }
                    Err(e) => return Err(e),
                }
            }
            return Err(RootError::Changed { path: path.clone() });
        }
        match (d.kind, kind) {
            (a, b) if a == b && a == EntryKind::Dir => Ok(Expect::Anything),
            // A directory is replaced only once it is empty (its children's deletions come
            // in the same page or later; the item is retried until then).
            (EntryKind::Dir, _) => match self.root.remove(path, &Expect::Anything)? {
                Removed::Gone => Ok(Expect::Absent),
                Removed::NotEmpty => Err(RootError::DirInTheWay { path: path.clone() }),
            },
            (_, EntryKind::Dir) => self.root.remove(path, &Expect::Is(d)).map(|_| Expect::Absent),
            _ => Ok(Expect::Is(d)),
        }
    }

    /// A remote delete of a directory that still has entries here: retried while the
    /// deletions of its content are still on their way; its content, if it stays, flows
    /// back out through the scanner (edit beats delete).
    fn dir_not_empty(&mut self, source: &str, r: Entry) -> Need {
        let p = r.path.clone();
        Need { entry: r, source: source.to_owned(), attempts: 1, last_error: Some(format!("{p}: directory not empty yet; deleting it once its content is gone")), force: false, copy_of: None }
    }

    /// What a file-system failure turns into: a need to retry (after a rescan of the path
    /// when a local change got in the way), or a refusal in the log.
    pub(super) fn failed(&mut self, source: &str, r: Entry, err: RootError) -> Option<Done> {
        let attempts = self.index.get_need(&r.path).ok().flatten().map_or(0, |n| n.attempts) + 1;
        match &err {
            RootError::Escapes { .. } => {
                self.error(format!("refused change from {source}: {err}"));
                self.status.lock().expect("BUG: poisoned").counters.refused += 1;
                return None;
            }
            RootError::Changed { .. } => {
                self.log.normal(format!("{err} ({}'s version via {source})", r.modified_by_name));
                self.batcher.add(r.path.clone(), HintKind::Changed, Instant::now());
            }
            _ => self.error(format!("cannot apply change from {source}: {err}; will retry")),
        }
        Some(Done::Queue(Need { entry: r, source: source.to_owned(), attempts, last_error: Some(err.to_string()), force: false, copy_of: None }))
    }
}

/// The need that fetches the losing version `r` into its conflict copy `copy` (again, after
/// `error`).
pub(super) fn copy_need(r: &Entry, copy: RelPath, source: &str, error: Option<String>) -> Need {
    let mut entry = r.clone();
    entry.path = copy;
    Need { entry, source: source.to_owned(), attempts: u32::from(error.is_some()), last_error: error, force: false, copy_of: Some(r.path.clone()) }
}
