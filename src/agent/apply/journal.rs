//! Recovery of applied-but-unrecorded changes: after a kill -9 (or a page that failed half
//! way) some of a peer's versions may have reached their names while the index still
//! describes the old state. Left alone, the start-up scan would announce them as this
//! node's own edits, with versions that beat the peer's later deletes ("edit beats delete"):
//! deleted directories came back on every node.
//!
//! Before the start-up scan (and after a failed page) every journalled entry and every
//! need is checked against the index and the disk: where it is newer than what the index
//! holds and the disk holds exactly that version (a deletion:
//! nothing there; a file: same size and BLAKE3; a link: same target; a directory: a
//! directory), it is recorded as applied, with its peer's version. What did not reach the
//! disk is dropped from the journal (the page was not recorded, so it is asked again) or
//! stays a need. Crash points considered: before the journal is durable (nothing touched),
//! between the journal and the first rename, between renames, between the last rename
//! and the page's record (all recovered here), after the record (journal already empty).

use super::super::Agent;
use crate::agent::index::Batch;
use crate::agent::root::hash_file;
use crate::protocol::{Entry, EntryKind, VersionOrdering};

impl Agent {
    /// Records, as the peer's versions, what the disk shows was applied but not recorded.
    pub(in crate::agent) fn reconcile(&mut self, why: &str) -> anyhow::Result<usize> {
        let mut batch = Batch { clear_journal: true, ..Batch::default() };
        for e in self.index.journal()? {
            // Only a version newer than what the index holds is recorded (a journalled one
            // always is: it was decided against the index it would replace).
            if self.against_index(&e)? != VersionOrdering::Newer {
                continue;
            }
            if let Some(ino) = self.disk_holds(&e) {
                batch.commits.push((e, ino));
            }
        }
        for n in self.index.needs()? {
            if n.copy_of.is_some() || batch.commits.iter().any(|(e, _)| e.path == n.entry.path) {
                continue;
            }
            match self.against_index(&n.entry)? {
                VersionOrdering::Older | VersionOrdering::Equal if !n.force => {
                    batch.remove_needs.push(n.entry.path.clone());
                    continue;
                }
                // A need decided before a local change that the index now holds (a held
                // deletion, a fetch in flight when the node was killed): the disk matching it
                // proves nothing (the user may have deleted the file too), and recording it
                // would replace this node's own announced version with one that does not
                // include it. It stays a need and is decided again against the index.
                VersionOrdering::Concurrent if !n.force => continue,
                _ => {}
            }
            if let Some(ino) = self.disk_holds(&n.entry) {
                batch.remove_needs.push(n.entry.path.clone());
                batch.commits.push((n.entry, ino));
            }
        }
        let n = batch.commits.len();
        self.index.apply(batch)?;
        if n > 0 {
            self.log.normal(format!("{why}: {n} change(s) from peers had reached the disk without being recorded; recorded them as the peers' versions"));
        }
        Ok(n)
    }

    /// How `e`'s version compares with what the index holds for its path (`Newer` when it
    /// holds nothing).
    fn against_index(&self, e: &Entry) -> anyhow::Result<VersionOrdering> {
        Ok(self.index.get(&e.path)?.map_or(VersionOrdering::Newer, |s| e.version.compare(&s.entry.version)))
    }

    /// The inode at `e`'s path if the disk holds exactly `e` (0 for a deletion).
    fn disk_holds(&self, e: &Entry) -> Option<u64> {
        let disk = self.root.stat(&e.path).ok()?;
        match (e.deleted, disk) {
            (true, None) => Some(0),
            (true, Some(_)) | (false, None) => None,
            (false, Some(d)) if d.kind != e.kind => None,
            (false, Some(d)) => match e.kind {
                EntryKind::Dir => Some(d.ino),
                EntryKind::Symlink => (self.root.read_link(&e.path).ok()? == e.target).then_some(d.ino),
                EntryKind::File => (d.size == e.size && hash_file(&self.root, &e.path).ok()?.0 == e.hash).then_some(d.ino),
            },
        }
    }
}
