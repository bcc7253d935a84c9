//! The conflict rule: which of two concurrent versions keeps the name, and what the loser's
//! conflict copy is called. Every node evaluates the same pure function on the same inputs,
//! so every node picks the same winner and the same copy name.

use time::OffsetDateTime;

use super::{Entry, EntryKind, RelPath};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Local,
    Remote,
}

/// Decides between two concurrent versions of one path.
///
/// In order: an existing path beats a deletion (nothing an upload wrote is lost); a directory
/// beats a file or link (a tree is never replaced by a file); the newer mtime wins; then the
/// higher node id; then the higher content hash, so the order is total.
pub fn winner(local: &Entry, remote: &Entry) -> Winner {
    use std::cmp::Ordering::*;
    let key = |e: &Entry| (!e.deleted, e.kind == EntryKind::Dir && !e.deleted, e.mtime_ns, e.modified_by, e.hash);
    match key(local).cmp(&key(remote)) {
        Greater | Equal => Winner::Local,
        Less => Winner::Remote,
    }
}

/// `photo.jpg` → `photo.sync-conflict-20261122-101502-node2-3fa9c01b.jpg`, from the losing
/// version's mtime (UTC), the name of the node that made it and the start of its content
/// hash, so two losing versions never share a copy (even within one second, from one
/// node), and one losing version gets the same name on every node. Always a valid name of
/// at most 255 bytes: the stem is shortened, and an "extension" too long to be one is not
/// kept apart.
pub fn conflict_copy_path(path: &RelPath, loser: &Entry) -> RelPath {
    let ts = OffsetDateTime::from_unix_timestamp_nanos(loser.mtime_ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let stamp = format!("{:04}{:02}{:02}-{:02}{:02}{:02}", ts.year(), u8::from(ts.month()), ts.day(), ts.hour(), ts.minute(), ts.second());
    let node = safe_node(&loser.modified_by_name);
    copy_name(path, loser.kind == EntryKind::File, &format!("{stamp}-{node}-{}", hex::encode(&loser.hash[..4])))
}

/// The name under which content a local write made while a peer's version replaced it is
/// kept (the write lost a race with the swap; see `agent::root`). `tag` tells two apart.
pub fn rescue_copy_path(path: &RelPath, node: &str, now_ns: i64, tag: u32) -> RelPath {
    let ts = OffsetDateTime::from_unix_timestamp_nanos(now_ns as i128).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let stamp = format!("{:04}{:02}{:02}-{:02}{:02}{:02}", ts.year(), u8::from(ts.month()), ts.day(), ts.hour(), ts.minute(), ts.second());
    copy_name(path, true, &format!("{stamp}-{}-{tag:08x}", safe_node(node)))
}

fn safe_node(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).take(40).collect()
}

/// Longest extension kept after the conflict marker (`.jpeg`, `.tar.gz`'s `.gz`, ...).
const MAX_EXT: usize = 16;

fn copy_name(path: &RelPath, has_ext: bool, tail: &str) -> RelPath {
    let name = path.file_name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && has_ext && name.len() - i <= MAX_EXT => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let suffix = format!(".sync-conflict-{tail}{ext}");
    let room = super::path::MAX_COMPONENT.saturating_sub(suffix.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    path.with_file_name(&format!("{}{}", &stem[..cut], suffix)).or_else(|_| path.with_file_name(&suffix)).or_else(|_| RelPath::parse(&format!("sync-conflict-{tail}"))).unwrap_or_else(|_| path.clone())
}

pub fn is_conflict_copy(name: &str) -> bool {
    name.contains(".sync-conflict-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::VersionVector;

    fn e(kind: EntryKind, deleted: bool, mtime_s: i64, by: u64, hash: u8) -> Entry {
        Entry {
            path: RelPath::parse("photo.jpg").unwrap(),
            kind,
            deleted,
            size: 1,
            mtime_ns: mtime_s * 1_000_000_000,
            mode: 0o644,
            hash: [hash; 32],
            target: String::new(),
            version: VersionVector::new(),
            modified_by: by,
            modified_by_name: format!("node{by}"),
            origin: VersionVector::new(),
        }
    }

    /// Each pair: the first must win, whichever side it is on.
    #[test]
    fn winner_table_both_directions() {
        use EntryKind::*;
        let table = [
            (e(File, false, 10, 1, 1), e(File, true, 20, 2, 0)),
            (e(Dir, false, 10, 1, 0), e(File, false, 20, 2, 1)),
            (e(File, false, 20, 1, 1), e(File, false, 10, 2, 2)),
            (e(File, false, 10, 2, 1), e(File, false, 10, 1, 2)),
            (e(File, false, 10, 1, 2), e(File, false, 10, 1, 1)),
        ];
        for (w, l) in table {
            assert_eq!(winner(&w, &l), Winner::Local, "{w:?} should beat {l:?}");
            assert_eq!(winner(&l, &w), Winner::Remote, "{w:?} should beat {l:?}");
        }
    }

    #[test]
    fn conflict_copy_name_keeps_extension_and_names_node() {
        let mut l = e(EntryKind::File, false, 0, 2, 1);
        l.mtime_ns = 1_795_342_502_000_000_000; // 2026-11-22 10:15:02 UTC
        let p = conflict_copy_path(&RelPath::parse("up/photo.jpg").unwrap(), &l);
        assert_eq!(p.as_str(), "up/photo.sync-conflict-20261122-101502-node2-01010101.jpg");
        let long = RelPath::parse(&"a".repeat(255)).unwrap();
        assert!(conflict_copy_path(&long, &l).as_str().len() <= 255);
    }

    #[test]
    fn conflict_copy_names_are_unique_per_content_and_always_fit() {
        let mut a = e(EntryKind::File, false, 100, 2, 1);
        let mut b = a.clone();
        b.hash = [2; 32];
        let path = RelPath::parse("doc.txt").unwrap();
        assert_ne!(conflict_copy_path(&path, &a), conflict_copy_path(&path, &b), "same second, same node, different content");
        // Every shape of name: huge stems, huge "extensions", multi-byte characters, dots.
        let names = [
            format!("a.{}", "x".repeat(250)),
            "資料".repeat(40) + ".pdf",
            "😀".repeat(63) + "abc",
            format!("{}.{}", "é".repeat(100), "ü".repeat(20)),
            ".hidden".to_owned(),
            "noext".to_owned(),
            format!(".{}", "z".repeat(254)),
        ];
        for n in names {
            let p = RelPath::parse(&format!("d/{n}")).unwrap();
            for kind in [EntryKind::File, EntryKind::Symlink] {
                a.kind = kind;
                a.modified_by_name = "n".repeat(300);
                let c = conflict_copy_path(&p, &a);
                assert!(c.file_name().len() <= 255 && c.as_str().starts_with("d/") && c != p, "{n} -> {c}");
                assert!(is_conflict_copy(c.file_name()), "{c}");
            }
        }
        let r = rescue_copy_path(&RelPath::parse(&"b".repeat(255)).unwrap(), "node1", 0, 7);
        assert!(r.file_name().len() <= 255 && is_conflict_copy(r.file_name()));
    }
}
