//! Deciding what to do with a version received from a peer (pure), given the local entry.
//!
//! Newer replaces, older or equal is ignored, concurrent is a conflict: identical content
//! merges silently; otherwise the winner (see `protocol::conflict`) keeps the name on
//! every node and the node that holds the losing content renames it to a conflict copy
//! before writing the winner. The written version is the merge of both vectors advanced by
//! the resolving node, so a resolved state never shares a version with another state; two
//! nodes that resolve the same conflict reach identical content, which then merges silently.

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
            match w {
                Winner::Local => Decision::KeepLocal {
                    version: merged.bumped(me),
                    loser_copy: (!remote.deleted && remote.kind != crate::protocol::EntryKind::Dir).then(|| conflict_copy_path(&remote.path, remote)),
                },
                Winner::Remote => Decision::Apply {
                    version: merged.bumped(me),
                    conflict_copy: (!l.deleted && l.kind != crate::protocol::EntryKind::Dir).then(|| conflict_copy_path(&l.path, l)),
                    conflict: true,
                },
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
            version: v,
            modified_by: by,
            modified_by_name: format!("n{by}"),
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
                assert!(c.as_str().contains("sync-conflict") && c.as_str().ends_with("-n1.txt"), "{c}");
                assert_eq!(version, a.version.merged(&b.version).bumped(9));
            }
            d => panic!("{d:?}"),
        }
        // On node 2 (local b, remote a): b wins; a is kept as the same conflict copy.
        match decide(Some(&b), &a, 9) {
            Decision::KeepLocal { loser_copy: Some(c), version } => {
                assert!(c.as_str().ends_with("-n1.txt"), "{c}");
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
}
