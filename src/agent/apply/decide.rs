//! Deciding what to do with a version received from a peer (pure), given the local entry.
//!
//! Newer replaces, older or equal is ignored, concurrent is a conflict: identical content
//! merges silently; otherwise the winner (see `protocol::conflict`) keeps the name on
//! every node and the node that holds the losing content renames it to a conflict copy
//! before writing the winner. The written version is the merge of both vectors advanced by
//! the resolving node, so a resolved state never shares a version with another state; two
//! nodes that resolve the same conflict reach identical content, which then merges silently.
//!
//! Before the winner rule, ancestry: a concurrent version whose author had already seen our
//! content (our `origin` is seen by their version) simply supersedes it, and one whose
//! content we had already seen and replaced is simply kept out, both without a conflict
//! copy. Without this, a node that resolved "deleted here, edited there" with its own
//! counter would see every later edit from the other side as a new conflict and keep copies
//! of that side's own older content.

use crate::protocol::conflict::{Winner, conflict_copy_path, winner};
use crate::protocol::{Entry, RelPath, VersionOrdering, VersionVector};

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// We already have this version or a newer one, or ours wins the conflict.
    Ignore,
    /// Write the remote version (with `version`); first move the local content to
    /// `conflict_copy` if it is set.
    Apply { version: VersionVector, conflict_copy: Option<RelPath>, conflict: bool },
    /// Ours wins a conflict: keep our content under `version` (which dominates both) and
    /// keep the remote content as the conflict copy `loser_copy`, so nothing is lost and
    /// every node settles on the same state.
    KeepLocal { version: VersionVector, loser_copy: Option<RelPath> },
    /// Concurrent versions with the same content: record the merged version and the
    /// winner's metadata; no conflict copy.
    Merge { version: VersionVector, meta_from_remote: bool },
}

pub fn decide(local: Option<&Entry>, remote: &Entry, me: crate::protocol::NodeId) -> Decision {
    let Some(l) = local else {
        return Decision::Apply { version: remote.version.clone(), conflict_copy: None, conflict: false };
    };
    match remote.version.compare(&l.version) {
        VersionOrdering::Equal | VersionOrdering::Older => Decision::Ignore,
        VersionOrdering::Newer => Decision::Apply { version: remote.version.clone(), conflict_copy: None, conflict: false },
        VersionOrdering::Concurrent => {
            let merged = l.version.merged(&remote.version);
            let w = winner(l, remote);
            if l.same_content(remote) {
                return Decision::Merge { version: merged, meta_from_remote: w == Winner::Remote };
            }
            let they_saw_ours = l.origin.seen_by(&remote.version);
            let we_saw_theirs = remote.origin.seen_by(&l.version);
            if they_saw_ours && !we_saw_theirs {
                return Decision::Apply { version: merged.bumped(me), conflict_copy: None, conflict: false };
            }
            if we_saw_theirs && !they_saw_ours {
                return Decision::KeepLocal { version: merged.bumped(me), loser_copy: None };
            }
            match w {
                Winner::Local => Decision::KeepLocal {
                    version: merged.bumped(me),
                    loser_copy: (!remote.deleted && remote.kind != crate::protocol::EntryKind::Dir).then(|| conflict_copy_path(&remote.path, remote)),
                },
                Winner::Remote => {
                    Decision::Apply { version: merged.bumped(me), conflict_copy: (!l.deleted && l.kind != crate::protocol::EntryKind::Dir).then(|| conflict_copy_path(&l.path, l)), conflict: true }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EntryKind;

    fn e(by: u64, counters: &[(u64, u64)], hash: u8, mtime: i64, deleted: bool) -> Entry {
        let mut v = VersionVector::new();
        for &(n, c) in counters {
            for _ in 0..c {
                v = v.bumped(n);
            }
        }
        Entry {
            path: RelPath::parse("a.txt").unwrap(),
            kind: EntryKind::File,
            deleted,
            size: 1,
            mtime_ns: mtime,
            mode: 0o644,
            hash: [hash; 32],
            target: String::new(),
            version: v.clone(),
            modified_by: by,
            modified_by_name: format!("n{by}"),
            origin: v,
        }
    }

    #[test]
    fn newer_applies_older_ignored() {
        let old = e(1, &[(1, 1)], 1, 10, false);
        let new = e(2, &[(1, 1), (2, 1)], 2, 20, false);
        assert!(matches!(decide(Some(&old), &new, 9), Decision::Apply { conflict: false, .. }));
        assert_eq!(decide(Some(&new), &old, 9), Decision::Ignore);
        assert_eq!(decide(Some(&new), &new, 9), Decision::Ignore);
        assert!(matches!(decide(None, &new, 9), Decision::Apply { .. }));
    }

    #[test]
    fn concurrent_same_content_merges() {
        let a = e(1, &[(1, 1)], 7, 10, false);
        let b = e(2, &[(2, 1)], 7, 20, false);
        match decide(Some(&a), &b, 9) {
            Decision::Merge { version, meta_from_remote } => {
                assert!(meta_from_remote);
                assert_eq!(version, a.version.merged(&b.version));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn concurrent_conflict_is_resolved_the_same_on_both_sides() {
        let a = e(1, &[(1, 1)], 1, 10, false);
        let b = e(2, &[(2, 1)], 2, 20, false); // newer mtime wins
        // On node 1 (local a, remote b): b wins, a becomes the conflict copy.
        match decide(Some(&a), &b, 9) {
            Decision::Apply { conflict_copy: Some(c), conflict: true, version } => {
                assert!(c.as_str().contains("sync-conflict") && c.as_str().ends_with(".txt") && c.as_str().contains("-n1-"), "{c}");
                assert_eq!(version, a.version.merged(&b.version).bumped(9));
            }
            d => panic!("{d:?}"),
        }
        // On node 2 (local b, remote a): b wins; a is kept as the same conflict copy.
        match decide(Some(&b), &a, 9) {
            Decision::KeepLocal { loser_copy: Some(c), version } => {
                assert!(c.as_str().contains("-n1-"), "{c}");
                assert_eq!(version, a.version.merged(&b.version).bumped(9));
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn edit_beats_concurrent_delete() {
        let edit = e(1, &[(1, 2)], 1, 10, false);
        let del = e(2, &[(1, 1), (2, 1)], 0, 99, true);
        assert!(matches!(decide(Some(&edit), &del, 9), Decision::KeepLocal { loser_copy: None, .. }));
        assert!(matches!(decide(Some(&del), &edit, 9), Decision::Apply { conflict_copy: None, .. }));
    }

    /// Node 2 deletes P while node 1 keeps appending to it: node 2 takes each append
    /// without a conflict copy of node 1's own older content, and node 1 keeps its content
    /// against node 2's relayed resolutions, also without a copy.
    #[test]
    fn later_edits_after_a_resolution_are_not_conflicts() {
        let (n1, n2) = (1, 2);
        let a = e(n1, &[(n1, 1)], 1, 10, false);
        let del = e(n2, &[(n1, 1), (n2, 1)], 0, 20, true);
        let b = e(n1, &[(n1, 2)], 2, 30, false);
        let c = e(n1, &[(n1, 3)], 3, 40, false);
        assert!(matches!(decide(Some(&a), &del, n2), Decision::Apply { .. }));
        // On node 2: the delete meets the first append: edit beats delete, no copy.
        let Decision::Apply { version, conflict_copy: None, .. } = decide(Some(&del), &b, n2) else { panic!() };
        let mut on2 = b.clone();
        on2.version = version;
        // The next append descends from the content node 2 now holds: applied, no copy.
        assert_eq!(decide(Some(&on2), &c, n2), Decision::Apply { version: on2.version.merged(&c.version).bumped(n2), conflict_copy: None, conflict: false });
        // On node 1 (holding c): node 2's resolution carries b's content, which c replaced.
        assert_eq!(decide(Some(&c), &on2, n1), Decision::KeepLocal { version: c.version.merged(&on2.version).bumped(n1), loser_copy: None });
        // A real conflict is still one: neither side saw the other's content.
        let x = e(n2, &[(n1, 1), (n2, 2)], 9, 50, false);
        assert!(matches!(decide(Some(&c), &x, n1), Decision::Apply { conflict_copy: Some(_), conflict: true, .. }));
    }

    /// A delete made by someone who saw exactly this content wins over a version that only
    /// differs by a resolution counter.
    #[test]
    fn a_delete_of_seen_content_is_not_undone_by_a_resolution() {
        let mut kept = e(1, &[(1, 1), (3, 1)], 1, 10, false);
        kept.origin = VersionVector::new().bumped(1);
        let del = e(2, &[(1, 1), (2, 1)], 0, 5, true);
        assert!(matches!(decide(Some(&kept), &del, 9), Decision::Apply { conflict_copy: None, conflict: false, .. }));
    }
}
