//! The watcher's echo of this agent's own writes. Every file a peer's version put on disk
//! comes back as an inotify event (the temp file's rename onto its name, an unlink, a move
//! into the graveyard). Queued like a user's change, such an event counted as a "local
//! change not sent" until the batch delay passed and a scan found nothing: while sync was
//! paused it stayed queued, and the dashboard called the node out of sync with a local
//! change it never had. It also cost every receiver a scan per received file.
//!
//! Paths recorded from a peer are remembered here for [`WINDOW`]. An event for one of them
//! is dropped when the disk at and below it shows exactly what the index holds, by the
//! scanner's own rule ([`scan::indexed_as`]): the scan the event would have caused would
//! have found nothing. Anything else (a user's write, chmod, rename or delete since; a file
//! created in a directory we just made; a path being written) goes to the batcher as before,
//! so nothing a user does is ever dropped. A new directory, ours or a user's (created, or
//! ours moved into place), is looked at again 1 s and 10 s after it appeared
//! (`NEW_DIR_RECHECKS`: files created in it before the watcher added its watch give no
//! event); each look is the same comparison, and anything it does not explain is scanned.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::index::Stored;
use super::root::DiskMeta;
use super::scan;
use crate::protocol::{Entry, EntryKind, RelPath};

/// How long after it was recorded a path's events are compared with the index. Its events
/// arrive within milliseconds; the window only bounds the memory.
pub const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Echoes {
    at: HashMap<RelPath, Instant>,
    order: VecDeque<(Instant, RelPath)>,
    /// The last event was an echo, a rename onto this path. notify reports a rename twice
    /// in a row (its "to" half, then the pair), so every installed file came back as two
    /// events and was compared twice; the second says nothing the first did not.
    twin: Option<RelPath>,
}

impl Echoes {
    /// Remembers the paths of versions just recorded from a peer.
    pub fn note(&mut self, commits: &[(Entry, u64)], now: Instant) {
        self.expire(now);
        for (e, _) in commits {
            self.at.insert(e.path.clone(), now);
            self.order.push_back((now, e.path.clone()));
        }
    }

    /// Whether an event for `p` may be an echo (worth comparing the disk with the index).
    pub fn recent(&mut self, p: &RelPath, now: Instant) -> bool {
        self.expire(now);
        self.at.contains_key(p)
    }

    /// Whether a rename onto `p` is the twin of the echo just before it (see `twin`); any
    /// path event in between ends the pair.
    pub fn is_twin(&mut self, p: &RelPath) -> bool {
        self.twin.take().is_some_and(|t| &t == p)
    }

    /// The echo just found was a rename onto `p`: its twin may follow.
    pub fn renamed_onto(&mut self, p: &RelPath) {
        self.twin = Some(p.clone());
    }

    /// Forgets every path (their memory too), once a burst is over.
    pub fn clear(&mut self) {
        *self = Echoes::default();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.at.len()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((t, _)) = self.order.front()
            && now.duration_since(*t) > WINDOW
        {
            let (t, p) = self.order.pop_front().expect("BUG: front just seen");
            // (a path noted again later keeps its later time)
            if self.at.get(&p) == Some(&t) {
                self.at.remove(&p);
            }
        }
        if self.at.is_empty() && self.order.capacity() > 64 {
            // A catch-up of thousands of files leaves nothing behind at rest.
            self.at = HashMap::new();
            self.order = VecDeque::new();
        }
    }
}

/// Index entries beyond which a subtree is left to the scan (the check runs on the
/// agent's main thread, between events).
pub const MAX_TREE: usize = 2_000;

/// Whether the disk under a path (`disk`: the path and, for a directory, everything below
/// it, from a walk that did not follow links) is exactly what the index holds there
/// (`known`: `Index::under`): every live entry on disk as indexed, nothing on disk the index
/// does not hold live. The scan of that path would find nothing to record. A path the index
/// does not know is never an echo.
pub fn matches(p: &RelPath, known: &[Stored], disk: &[(RelPath, DiskMeta)]) -> bool {
    if !known.iter().any(|k| &k.entry.path == p) {
        return false;
    }
    let live: HashMap<&RelPath, &Stored> = known.iter().filter(|k| !k.entry.deleted).map(|k| (&k.entry.path, k)).collect();
    // (directories also by inode, which the scan does not compare: one put in another's
    // place is new to the watcher, and files may be in it that no event announced)
    live.len() == disk.len() && disk.iter().all(|(q, m)| live.get(q).is_some_and(|k| scan::indexed_as(k, m) && (m.kind != EntryKind::Dir || k.ino == m.ino)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(path: &str, kind: EntryKind, deleted: bool) -> Stored {
        let entry = Entry {
            path: RelPath::parse(path).unwrap(),
            kind,
            deleted,
            size: 5,
            mtime_ns: 1_000,
            mode: 0o644,
            hash: [1; 32],
            target: String::new(),
            version: crate::protocol::VersionVector::new().bumped(1),
            modified_by: 1,
            modified_by_name: "node1".into(),
            origin: crate::protocol::VersionVector::new(),
        };
        Stored { entry, seq: 1, ino: 7 }
    }

    fn disk(kind: EntryKind) -> DiskMeta {
        DiskMeta { kind, size: 5, mtime_ns: 1_000, mode: 0o644, ino: 7, ctime_ns: 2_000, nlink: 1 }
    }

    fn at(path: &str, kind: EntryKind) -> (RelPath, DiskMeta) {
        (RelPath::parse(path).unwrap(), disk(kind))
    }

    #[test]
    fn only_what_the_index_holds_is_an_echo() {
        let a = RelPath::parse("a.txt").unwrap();
        let f = [stored("a.txt", EntryKind::File, false)];
        assert!(matches(&a, &f, &[at("a.txt", EntryKind::File)]));
        // A user's write (size, mtime), chmod, or replacement (inode) since: not an echo.
        for m in [
            DiskMeta { size: 6, ..disk(EntryKind::File) },
            DiskMeta { mtime_ns: 1_001, ..disk(EntryKind::File) },
            DiskMeta { mode: 0o600, ..disk(EntryKind::File) },
            DiskMeta { ino: 8, ..disk(EntryKind::File) },
        ] {
            assert!(!matches(&a, &f, &[(a.clone(), m.clone())]), "{m:?}");
        }
        // Deleted and gone: an echo; deleted but back, or live and gone: not.
        let d = [stored("a.txt", EntryKind::File, true)];
        assert!(matches(&a, &d, &[]));
        assert!(!matches(&a, &d, &[at("a.txt", EntryKind::File)]));
        assert!(!matches(&a, &f, &[]));
        // Unknown paths are always scanned.
        assert!(!matches(&a, &[], &[at("a.txt", EntryKind::File)]));
        assert!(!matches(&a, &[], &[]));
    }

    #[test]
    fn a_directory_is_an_echo_only_with_exactly_its_indexed_contents() {
        let d = RelPath::parse("d").unwrap();
        let known = [stored("d", EntryKind::Dir, false), stored("d/a", EntryKind::File, false), stored("d/gone", EntryKind::File, true)];
        let same = [at("d", EntryKind::Dir), at("d/a", EntryKind::File)];
        assert!(matches(&d, &known, &same));
        // A file the user created in it (before its watch existed), a deleted one back, or
        // an indexed one missing: the scan must run.
        assert!(!matches(&d, &known, &[at("d", EntryKind::Dir), at("d/a", EntryKind::File), at("d/new", EntryKind::File)]));
        assert!(!matches(&d, &known, &[at("d", EntryKind::Dir), at("d/a", EntryKind::File), at("d/gone", EntryKind::File)]));
        assert!(!matches(&d, &known, &[at("d", EntryKind::Dir)]));
        // The directory replaced by a file, or by another directory with the same contents.
        assert!(!matches(&d, &known, &[at("d", EntryKind::File), at("d/a", EntryKind::File)]));
        assert!(!matches(&d, &known, &[(d.clone(), DiskMeta { ino: 9, ..disk(EntryKind::Dir) }), at("d/a", EntryKind::File)]));
    }

    #[test]
    fn a_rename_twin_is_recognised_once_and_only_right_after_its_echo() {
        let (a, b) = (RelPath::parse("a").unwrap(), RelPath::parse("b").unwrap());
        let mut e = Echoes::default();
        assert!(!e.is_twin(&a), "no echo yet");
        e.renamed_onto(&a);
        assert!(e.is_twin(&a));
        assert!(!e.is_twin(&a), "a third event for the same path is compared again");
        e.renamed_onto(&a);
        assert!(!e.is_twin(&b), "another path in between ends the pair");
        assert!(!e.is_twin(&a));
    }

    #[test]
    fn paths_are_remembered_for_the_window_and_then_forgotten() {
        let t0 = Instant::now();
        let mut e = Echoes::default();
        let f = stored("a.txt", EntryKind::File, false).entry;
        let dir = stored("d", EntryKind::Dir, false).entry;
        e.note(&[(f.clone(), 7), (dir.clone(), 8)], t0);
        assert!(e.recent(&f.path, t0 + Duration::from_secs(1)));
        assert!(e.recent(&dir.path, t0 + Duration::from_secs(1)));
        // Noted again later: kept from the later time.
        e.note(&[(f.clone(), 7)], t0 + Duration::from_secs(5));
        assert!(e.recent(&f.path, t0 + WINDOW + Duration::from_secs(1)));
        assert!(!e.recent(&dir.path, t0 + WINDOW + Duration::from_secs(1)));
        assert!(!e.recent(&f.path, t0 + Duration::from_secs(5) + WINDOW + Duration::from_secs(1)));
        assert_eq!(e.len(), 0);
    }
}
