//! The outbound path: watch hints go to the batcher, due batches are scanned, and what the
//! scanner found is committed as new local versions (which peers then page through). Files
//! still being written are held here, names that cannot be synced are reported, and a write
//! through one name of a hard-linked file makes its other names be scanned.

use std::time::{Duration, Instant};

use super::index::Stored;
use super::root::DiskMeta;
use super::scan::{self, Scanner, Target};
use super::watch::{Hint, HintKind};
use super::{Agent, NEW_DIR_RECHECKS, echo, writers};
use crate::protocol::{EntryKind, RelPath};

/// The first full scan after one that could not read part of the tree (see `Agent::unread`).
const UNREAD_RETRY: Duration = Duration::from_secs(5);
const UNREAD_RETRY_MAX: Duration = Duration::from_secs(600);

impl Agent {
    pub(super) fn on_hint(&mut self, h: Hint) {
        let now = Instant::now();
        match h {
            Hint::Path(p, k) => {
                tracing::trace!(path = %p, kind = ?k, "hint");
                if k == HintKind::Tree {
                    self.rechecks.insert(p.clone(), (now + NEW_DIR_RECHECKS[0], 1));
                }
                if self.echoes.is_twin(&p) && k == HintKind::MovedTo {
                    return;
                }
                if self.is_echo(&p, k, now) {
                    tracing::trace!(path = %p, "echo of a peer's version: nothing to scan");
                    if k == HintKind::MovedTo {
                        self.echoes.renamed_onto(&p);
                    }
                    return;
                }
                self.batcher.add(p, k, now)
            }
            Hint::Unsyncable(full) => {
                let name = full.strip_prefix(&self.s.root).unwrap_or(&full).to_string_lossy().into_owned();
                if std::fs::symlink_metadata(&full).is_ok() {
                    self.note_unsyncable(false, std::slice::from_ref(&name));
                } else {
                    self.unsyncable.remove(&name);
                }
            }
            Hint::Rescan(reason) => {
                self.warn(reason.clone());
                let mut st = self.status.lock().expect("BUG: poisoned");
                if !st.warnings.contains(&reason) {
                    st.warnings.push(reason);
                }
                drop(st);
                self.batcher.add_root(now);
            }
        }
    }

    /// Whether a watch event is this agent's own write of a peer's version coming back (see
    /// `echo`): a path recorded from a peer lately, not queued already, where the disk at and
    /// below it is exactly what the index holds. Writes in progress never are. A directory
    /// that is an echo and was moved into place (the watcher adds watches for it, as for a
    /// new one) gets the new directory's looks (`NEW_DIR_RECHECKS`); one whose attributes
    /// changed was watched already and gets none (giving them to every directory a page
    /// touched made an idle agent walk its whole tree 1 s and 10 s after a catch-up).
    fn is_echo(&mut self, p: &RelPath, k: HintKind, now: Instant) -> bool {
        if k == HintKind::Writing || self.batcher.holds(p) || !self.echoes.recent(p, now) {
            return false;
        }
        match self.as_indexed(p, matches!(k, HintKind::Tree | HintKind::MovedTo)) {
            Some(dir) => {
                if dir && k == HintKind::MovedTo {
                    self.rechecks.entry(p.clone()).or_insert((now + NEW_DIR_RECHECKS[0], 1));
                }
                true
            }
            None => false,
        }
    }

    /// A new directory's look (`rechecks`): anything the index does not explain is queued
    /// for a scan. Returns the next look, if any, whatever this one found: a file written
    /// in the directory after this look's scan and before the watcher has added the
    /// directory's watch gives no event either.
    pub(super) fn recheck(&mut self, p: RelPath, next: usize, now: Instant) -> Option<(Instant, usize)> {
        let later = NEW_DIR_RECHECKS.get(next).map(|d| (now + *d - NEW_DIR_RECHECKS[next - 1], next + 1));
        if self.batcher.holds(&p) || self.as_indexed(&p, true).is_none() {
            self.batcher.add(p, HintKind::Tree, now);
        }
        later
    }

    /// Whether the disk at and below `p` is exactly what the index holds there (by the
    /// scanner's rule, directories also by inode): `Some(whether it is a directory)`. Any
    /// error reading it, or more than `echo::MAX_TREE` entries, is `None` (scan it).
    /// `deep`: for an event that makes the batcher scan the subtree (a directory that
    /// appeared); any other event for a directory the index knows is scanned, and so
    /// compared, as that directory alone (its attributes: a page that made a directory
    /// changed them twice, and each walked it).
    fn as_indexed(&self, p: &RelPath, deep: bool) -> Option<bool> {
        let now = self.root.stat(p).ok()?;
        if !deep
            && let Some(m) = now.as_ref().filter(|m| m.kind == EntryKind::Dir)
            && let Some(known) = self.index.get(p).ok()?.filter(|k| !k.entry.deleted && k.entry.kind == EntryKind::Dir)
        {
            return echo::matches(p, std::slice::from_ref(&known), &[(p.clone(), m.clone())]).then_some(true);
        }
        let known = self.index.under_at_most(p, echo::MAX_TREE).ok()??;
        let disk = match now {
            Some(m) if m.kind == EntryKind::Dir => {
                let w = self.root.walk(Some(p), &|q| self.excludes.is_excluded(q)).ok()?;
                if !w.errors.is_empty() || !w.unsyncable.is_empty() || !w.incomplete.is_empty() || !w.raced.is_empty() {
                    return None;
                }
                w.items
            }
            Some(m) => vec![(p.clone(), m)],
            None => Vec::new(),
        };
        let dir = disk.first().is_some_and(|(_, m)| m.kind == EntryKind::Dir);
        echo::matches(p, &known, &disk).then_some(dir)
    }

    /// After a scan that could not read `n` subtrees or paths (out of descriptors, an I/O
    /// error), or failed as a whole: nothing under them was taken for deleted or recorded,
    /// and nothing will be until the tree is read again, so a full scan comes after
    /// `UNREAD_RETRY`, doubled for each scan in a row that could not read it, at most
    /// `UNREAD_RETRY_MAX` apart. A full scan that read everything ends the streak.
    pub(super) fn unread(&mut self, n: usize, full: bool) {
        if n == 0 {
            if full {
                self.unread_streak = 0;
            }
            return;
        }
        let wait = UNREAD_RETRY.saturating_mul(1 << self.unread_streak.min(8)).min(UNREAD_RETRY_MAX);
        self.unread_streak += 1;
        self.rescan_soon = Some(Instant::now() + wait);
        self.warn(format!("scan: {n} folder(s) could not be read (see the errors above); nothing in them is taken for deleted, and the whole tree is scanned again in {} s", wait.as_secs()));
    }

    /// Scans the targets and commits what changed as new local versions.
    pub(super) fn local_batch(&mut self, targets: Vec<Target>, why: &str) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let full = targets.contains(&Target::Root);
        self.report.take_rehash(&self.index);
        // A file is held while the batcher saw writes without a close, or while a process
        // has it open for writing and it changed within the write-quiet period. /proc (every
        // fd of every process: about 3 ms per batch with the test VM's 66 processes, more on a
        // busy server) is not read for a file whose last event was a close after writing: its
        // writer is done. (A second process still writing it gets its own events, and its
        // content ships after its own close.)
        let writers = std::cell::OnceCell::new();
        let quiet_ns = self.s.write_quiet.as_nanos() as i64;
        let now = scan::now_ns();
        let batcher = &self.batcher;
        let root = &self.root;
        let held = |p: &RelPath, m: &DiskMeta| {
            batcher.is_writing(p) || (now - m.mtime_ns < quiet_ns && !batcher.was_closed(p) && writers.get_or_init(|| writers::open_for_write(root.canonical())).contains(&m.ino))
        };
        let scanner = Scanner {
            root: &self.root,
            index: &self.index,
            excludes: &self.excludes,
            node_id: self.index.node_id,
            node_name: &self.s.node_name,
            guard_empty_root: !self.allow_empty_root,
            held: &held,
            written: &|p| batcher.was_written(p),
        };
        let out = tokio::task::block_in_place(|| scanner.scan(&targets));
        // A written file this scan could not read is marked for reading in the index (its
        // inode forgotten): the full scan that retries it compares stat only, and a
        // same-size rewrite with its mtime put back left the stat as indexed.
        let not_read: Vec<RelPath> = self.batcher.written_taken().filter(|p| out.as_ref().map_or(true, |o| o.unread.iter().any(|d| d.as_ref().is_none_or(|d| p.starts_with(d))))).cloned().collect();
        self.batcher.forget_closed();
        for p in not_read {
            if let Err(e) = self.index.set_ino(&p, 0) {
                self.error(format!("{p}: cannot mark it to be read again: {e:#}"));
            }
        }
        let out = out?;
        // (the errors first: the retry's warning refers to them as above)
        for e in &out.errors {
            self.error(e.clone());
        }
        self.unread(out.unread.len(), full);
        self.note_unsyncable(full, &out.unsyncable);
        if !out.linked_inodes.is_empty() {
            self.rescan_other_names(&out.linked_inodes, &out.changes)?;
        }
        for (e, _) in &out.changes {
            tracing::debug!(path = %e.path, version = ?e.version, deleted = e.deleted, why, "local change");
        }
        for p in out.unstable {
            // A path the batcher already holds keeps its timer: a scan asked for by a peer's
            // change must not restart the quiet period it is waiting for.
            if !self.batcher.is_writing(&p) {
                self.batcher.add(p, HintKind::Writing, Instant::now());
            }
        }
        for (p, ino) in &out.inode_updates {
            self.index.set_ino(p, *ino)?;
        }
        if full {
            if out.held_deletes > 0 {
                if self.held_deletes != out.held_deletes {
                    self.error(format!(
                        "sync root {} is empty but the index lists {} entries: holding all deletes (is a volume unmounted?). If you really emptied it, run `filesync ctl --config <agent.toml> confirm-empty`",
                        self.s.root.display(),
                        out.held_deletes
                    ));
                }
            } else if self.held_deletes > 0 {
                self.log.normal("sync root has content again; no longer holding deletes");
            }
            self.held_deletes = out.held_deletes;
            self.allow_empty_root = false;
        }
        if out.changes.is_empty() {
            return Ok(());
        }
        if self.s.receive_only {
            if full {
                self.local_mods.clear();
            }
            for (e, _) in &out.changes {
                self.local_mods.insert(e.path.clone());
            }
            return Ok(());
        }
        let (mut files, mut dirs, mut links, mut dels, mut bytes) = (0, 0, 0, 0, 0u64);
        for (e, _) in &out.changes {
            match (e.deleted, e.kind) {
                (true, _) => dels += 1,
                (false, EntryKind::File) => {
                    files += 1;
                    bytes += e.size;
                }
                (false, EntryKind::Dir) => dirs += 1,
                (false, EntryKind::Symlink) => links += 1,
            }
        }
        let n = out.changes.len();
        let sample: Vec<String> = out.changes.iter().take(3).map(|(e, _)| e.path.to_string()).collect();
        self.report.record(&self.index, None, &out.changes);
        self.index.commit(out.changes)?;
        if n >= super::memory::BURST {
            self.trim_soon();
        }
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.counters.batches += 1;
        st.counters.local_changes += n as u64;
        drop(st);
        self.log.normal(format!(
            "{why}: {n} local change(s): {files} file(s) ({bytes} bytes), {dirs} dir(s), {links} symlink(s), {dels} delete(s) [{}{}] in {:.1} ms",
            sample.join(", "),
            if n > 3 { ", ..." } else { "" },
            t0.elapsed().as_secs_f64() * 1000.0
        ));
        Ok(())
    }

    /// Reports names that cannot be synced, each once, in the log and the status.
    pub(super) fn note_unsyncable(&mut self, full: bool, found: &[String]) {
        for n in found {
            if !self.unsyncable.contains(n) {
                self.log.warn(format!("not synced: {n:?}: the name is not valid UTF-8; rename it to sync it"));
            }
        }
        if full {
            self.unsyncable = found.iter().cloned().collect();
        } else {
            self.unsyncable.extend(found.iter().cloned());
        }
    }

    /// A write through one name of a hard-linked file changes its other names too: they are
    /// scanned as well (each name is replicated as a file of its own).
    pub(super) fn rescan_other_names(&mut self, inodes: &[u64], changed: &[(crate::protocol::Entry, u64)]) -> anyhow::Result<()> {
        let now = Instant::now();
        for s in self.index.under(None)? {
            if !s.entry.deleted && s.entry.kind == EntryKind::File && inodes.contains(&s.ino) && !changed.iter().any(|(e, _)| e.path == s.entry.path) {
                self.batcher.add(s.entry.path, HintKind::Changed, now);
            }
        }
        Ok(())
    }

    /// Inodes under the root that a process has open for writing (only looked up when
    /// `wanted`: it reads /proc).
    pub(super) fn writers_if(&self, wanted: bool) -> std::collections::HashSet<u64> {
        if wanted { writers::open_for_write(self.root.canonical()) } else { Default::default() }
    }

    /// Whether the disk still shows what the index recorded for `path`.
    pub(super) fn disk_matches(&self, stored: Option<&Stored>, disk: Option<&DiskMeta>) -> bool {
        match (stored.filter(|s| !s.entry.deleted), disk) {
            (None, None) => true,
            (Some(s), Some(d)) => s.entry.kind == d.kind && s.entry.mode == d.mode && (d.kind == EntryKind::Dir || (s.entry.size == d.size && s.entry.mtime_ns == d.mtime_ns && s.ino == d.ino)),
            _ => false,
        }
    }
}
