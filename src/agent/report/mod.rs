//! What the dashboard reads from an agent, beside `/v1/status`: a bounded list of recent
//! file changes (created, changed, renamed, deleted, conflict copies, with the node each
//! came from), the conflict copies in the index, per-directory digests of the disk for
//! verify (`digests`), the end of `lsyncd.log`; and the operator's actions on conflict
//! copies (`resolve`) and re-hash requests for repair. Routes are in `routes`.
//!
//! The event loop calls [`Report::record`] with every batch of versions it is about to
//! commit (local changes, a peer's page, an applied need) and [`Report::take_rehash`] at the
//! start of every scan; HTTP handlers read the rest behind a short-held mutex. Nothing here
//! writes the index except `take_rehash` (on the event loop), and nothing changes the sync
//! folder except `resolve`, through `agent::root`, like any local user would.

pub mod digests;
pub mod resolve;
pub mod routes;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::exclude::Excludes;
use super::index::{Index, Stored};
use super::lsyncd_log::LsyncdLog;
use crate::protocol::conflict::is_conflict_copy;
use crate::protocol::report::{ChangeKind, NodeReport, REPORT_CHANGES, RecentChange};
use crate::protocol::{Entry, EntryKind, RelPath};

/// How many recent changes an agent keeps.
pub const CAPACITY: usize = 1000;
/// Paths named in `lsyncd.log` per page of a peer's changes.
const NAMED: usize = 10;

pub struct Report {
    pub node: String,
    pub run_id: u64,
    pub excludes: Excludes,
    pub log_dir: PathBuf,
    /// Where the paths a peer's changes touched are named (one line per page).
    log: Arc<LsyncdLog>,
    inner: Mutex<Inner>,
    /// One verify walk at a time (each reads every file).
    pub(crate) verify_gate: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Inner {
    ring: VecDeque<RecentChange>,
    last_seq: u64,
    /// A conflict copy was committed or deleted since `conflicts` was counted.
    conflicts_dirty: bool,
    conflicts: u64,
    conflicts_rev: u64,
    /// Paths whose next scan must read the content again (repair).
    rehash: Vec<RelPath>,
}

fn kind_name(k: EntryKind) -> &'static str {
    match k {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
    }
}

/// A short digest of a version, the same on every node that holds it.
fn version_key(e: &Entry) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&postcard::to_allocvec(&e.version).unwrap_or_default());
    h.update(&[u8::from(e.deleted)]);
    h.update(&e.hash);
    hex::encode(&h.finalize().as_bytes()[..6])
}

/// What each committed version means to a person, given what the index held before:
/// creations, changes, deletions, conflict copies, and a deletion plus a creation of the
/// same content in one batch as one rename. Versions that change nothing visible (two
/// nodes' identical content merged) are left out.
pub fn classify<'a>(before: &[Option<Stored>], commits: &'a [(Entry, u64)]) -> Vec<(ChangeKind, &'a Entry, Option<String>)> {
    // (kind, index into commits, renamed from)
    let mut out: Vec<(ChangeKind, usize, Option<String>)> = Vec::new();
    for (i, ((e, _), prev)) in commits.iter().zip(before).enumerate() {
        let prev = prev.as_ref().map(|s| &s.entry).filter(|p| !p.deleted);
        let kind = match (e.deleted, prev) {
            (true, None) => continue,
            (true, Some(_)) => ChangeKind::Deleted,
            (false, Some(p)) if p.same_state(e) => continue,
            (false, Some(p)) if p.kind == e.kind => ChangeKind::Changed,
            (false, _) if is_conflict_copy(e.path.file_name()) => ChangeKind::Conflict,
            (false, _) => ChangeKind::Created,
        };
        out.push((kind, i, None));
    }
    // A deleted file whose content was created elsewhere in the same batch: a rename.
    let mut deleted: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (pos, (kind, i, _)) in out.iter().enumerate() {
        if let (ChangeKind::Deleted, Some(p)) = (kind, &before[*i])
            && p.entry.kind == EntryKind::File
        {
            deleted.entry(p.entry.hash).or_default().push(pos);
        }
    }
    let mut gone = Vec::new();
    for pos in 0..out.len() {
        let e = &commits[out[pos].1].0;
        if out[pos].0 == ChangeKind::Created
            && e.kind == EntryKind::File
            && let Some(d) = deleted.get_mut(&e.hash).and_then(Vec::pop)
        {
            out[pos] = (ChangeKind::Renamed, out[pos].1, Some(commits[out[d].1].0.path.to_string()));
            gone.push(d);
        }
    }
    gone.sort_unstable();
    for d in gone.into_iter().rev() {
        out.remove(d);
    }
    out.into_iter().map(|(k, i, f)| (k, &commits[i].0, f)).collect()
}

impl Report {
    pub fn new(node: &str, excludes: Excludes, log: Arc<LsyncdLog>, log_dir: PathBuf) -> Report {
        Report {
            node: node.to_owned(),
            run_id: rand::random::<u64>() >> 12,
            excludes,
            log_dir,
            log,
            inner: Mutex::new(Inner { conflicts_dirty: true, ..Inner::default() }),
            verify_gate: tokio::sync::Semaphore::new(1),
        }
    }

    /// Records versions about to be committed (`via`: the peer they came from, `None` for
    /// local changes). Called by the event loop before the commit, so the index still shows
    /// what each path was; only the newest [`CAPACITY`] changes are looked at.
    pub fn record(&self, index: &Index, via: Option<&str>, commits: &[(Entry, u64)]) {
        self.record_named(index, via, commits, false);
    }

    /// [`Report::record`] for a peer's page: `lsyncd.log` also names what it did.
    pub fn record_page(&self, index: &Index, peer: &str, commits: &[(Entry, u64)]) {
        self.record_named(index, Some(peer), commits, true);
    }

    fn record_named(&self, index: &Index, via: Option<&str>, commits: &[(Entry, u64)], name_in_log: bool) {
        let commits = &commits[commits.len().saturating_sub(CAPACITY)..];
        if commits.is_empty() {
            return;
        }
        let before = match index.get_many(commits.iter().map(|(e, _)| &e.path)) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the index for the recent-changes list");
                return;
            }
        };
        let at_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let touches_conflicts = commits.iter().any(|(e, _)| is_conflict_copy(e.path.file_name()));
        let classified = classify(&before, commits);
        if let Some(peer) = via.filter(|_| name_in_log)
            && !classified.is_empty()
        {
            // The receiver's log names what a peer's changes did (the first few; the
            // dashboard's recent changes have them all).
            let names: Vec<String> = classified.iter().take(NAMED).map(|(k, e, _)| format!("{} {}", k.as_str(), e.path)).collect();
            let more = classified.len().saturating_sub(NAMED);
            let tail = if more > 0 { format!(" and {more} more (all in the dashboard's recent changes)") } else { String::new() };
            self.log.normal(format!("from {peer}: {}{tail}", names.join(", ")));
        }
        let mut g = self.inner.lock().expect("BUG: poisoned");
        if touches_conflicts {
            g.conflicts_dirty = true;
        }
        for (kind, e, from_path) in classified {
            g.last_seq += 1;
            let change = RecentChange {
                seq: g.last_seq,
                at_ms,
                path: e.path.to_string(),
                kind,
                entry: kind_name(e.kind).to_owned(),
                origin: if via.is_none() { self.node.clone() } else { e.modified_by_name.clone() },
                via: via.map(str::to_owned),
                size: if e.deleted { 0 } else { e.size },
                from_path,
                version: version_key(e),
                content: if e.deleted || e.kind == EntryKind::Dir { String::new() } else { hex::encode(&e.hash[..6]) },
            };
            g.ring.push_back(change);
            if g.ring.len() > CAPACITY {
                g.ring.pop_front();
            }
        }
    }

    /// The newest `n` changes, oldest first.
    pub fn recent(&self, n: usize) -> Vec<RecentChange> {
        let g = self.inner.lock().expect("BUG: poisoned");
        g.ring.iter().skip(g.ring.len().saturating_sub(n)).cloned().collect()
    }

    /// The summary for one heartbeat: changes after `since` (of run `run`; another run's
    /// position means from the start), the conflict count (recounted when a conflict copy
    /// came or went) and what is still to fetch.
    pub fn summary(&self, index: &Index, run: u64, since: u64) -> anyhow::Result<NodeReport> {
        let since = if run == self.run_id { since } else { 0 };
        let dirty = std::mem::take(&mut self.inner.lock().expect("BUG: poisoned").conflicts_dirty);
        if dirty {
            // Counted outside the lock; a copy committed meanwhile marks it dirty again.
            let (_, n) = index.conflict_copies(0)?;
            let mut g = self.inner.lock().expect("BUG: poisoned");
            if g.conflicts != n {
                g.conflicts_rev += 1;
            }
            g.conflicts = n;
        }
        let needs = index.needs()?;
        let g = self.inner.lock().expect("BUG: poisoned");
        let changes: Vec<RecentChange> = g.ring.iter().filter(|c| c.seq > since).take(REPORT_CHANGES).cloned().collect();
        Ok(NodeReport {
            node: self.node.clone(),
            run_id: self.run_id,
            last_change: g.last_seq,
            changes,
            conflicts: g.conflicts,
            conflicts_rev: g.conflicts_rev,
            pending_files: needs.len() as u64,
            pending_bytes: needs.iter().filter(|n| !n.entry.deleted).map(|n| n.entry.size).sum(),
        })
    }

    /// Asks that `paths` be read again by the next scan (repair).
    pub fn request_rehash(&self, paths: Vec<RelPath>) {
        self.inner.lock().expect("BUG: poisoned").rehash.extend(paths);
    }

    /// On the event loop, before a scan: forgets the recorded inode of every path asked
    /// for, so the scanner reads its content again instead of trusting size and mtime.
    pub fn take_rehash(&self, index: &Index) {
        let paths = std::mem::take(&mut self.inner.lock().expect("BUG: poisoned").rehash);
        for p in paths {
            if let Err(e) = index.set_ino(&p, 0) {
                tracing::warn!(path = %p, error = %e, "cannot mark a path for re-reading");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::VersionVector;

    fn entry(path: &str, kind: EntryKind, deleted: bool, hash: u8) -> Entry {
        Entry {
            path: RelPath::parse(path).unwrap(),
            kind,
            deleted,
            size: 3,
            mtime_ns: 7,
            mode: 0o644,
            hash: [hash; 32],
            target: String::new(),
            version: VersionVector::new().bumped(1),
            modified_by: 1,
            modified_by_name: "node1".into(),
            origin: VersionVector::new(),
        }
    }

    fn stored(e: Entry) -> Option<Stored> {
        Some(Stored { entry: e, seq: 1, ino: 1 })
    }

    #[test]
    fn batches_read_as_people_describe_them() {
        use EntryKind::*;
        let commits = vec![
            (entry("new.txt", File, false, 1), 1),
            (entry("edited.txt", File, false, 2), 2),
            (entry("gone.txt", File, true, 0), 0),
            (entry("moved/to.txt", File, false, 9), 3),
            (entry("from.txt", File, true, 0), 0),
            (entry("a.sync-conflict-20261122-101502-node2-01020304.txt", File, false, 5), 4),
            (entry("same.txt", File, false, 6), 5),
            (entry("never-had.txt", File, true, 0), 0),
        ];
        let before = vec![
            None,
            stored(entry("edited.txt", File, false, 1)),
            stored(entry("gone.txt", File, false, 3)),
            None,
            stored(entry("from.txt", File, false, 9)),
            None,
            stored(entry("same.txt", File, false, 6)),
            None,
        ];
        let got: Vec<(ChangeKind, String, Option<String>)> = classify(&before, &commits).into_iter().map(|(k, e, f)| (k, e.path.to_string(), f)).collect();
        assert_eq!(
            got,
            vec![
                (ChangeKind::Created, "new.txt".into(), None),
                (ChangeKind::Changed, "edited.txt".into(), None),
                (ChangeKind::Deleted, "gone.txt".into(), None),
                (ChangeKind::Renamed, "moved/to.txt".into(), Some("from.txt".into())),
                (ChangeKind::Conflict, "a.sync-conflict-20261122-101502-node2-01020304.txt".into(), None),
            ]
        );
    }
}
