//! Unit tests of the index against a temp dir.

use super::*;
use crate::protocol::VersionVector;

fn entry(path: &str, mode: u32) -> Entry {
    let v = VersionVector::new().bumped(7);
    Entry {
        path: RelPath::parse(path).unwrap(),
        kind: EntryKind::File,
        deleted: false,
        size: 3,
        mtime_ns: 1,
        mode,
        hash: [9; 32],
        target: String::new(),
        origin: v.clone(),
        version: v,
        modified_by: 7,
        modified_by_name: "n7".into(),
    }
}

#[test]
fn a_format_1_index_is_migrated_in_place() {
    let d = tempfile::tempdir().unwrap();
    {
        let db = Database::create(d.path().join("index.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("node_id", 5).unwrap();
            meta.insert("index_id", 6).unwrap();
            meta.insert("last_seq", 1).unwrap();
            let s = Stored { entry: entry("a.txt", 0o4755), seq: 1, ino: 42 };
            txn.open_table(ENTRIES).unwrap().insert("a.txt", migrate::encode_v1(&s).as_slice()).unwrap();
            txn.open_table(BY_SEQ).unwrap().insert(1, "a.txt").unwrap();
        }
        txn.commit().unwrap();
    }
    let idx = Index::open(d.path()).unwrap();
    assert_eq!((idx.node_id, idx.index_id, idx.last_seq()), (5, 6, 1));
    let s = idx.get(&RelPath::parse("a.txt").unwrap()).unwrap().unwrap();
    assert_eq!(s.entry.mode, 0o755, "special bits dropped");
    assert_eq!(s.entry.origin, s.entry.version);
    assert_eq!(s.ino, 42);
    assert_ne!(idx.summary().unwrap().digest, 0);
    drop(idx);
    // A second open changes nothing.
    let idx = Index::open(d.path()).unwrap();
    assert_eq!(idx.get(&RelPath::parse("a.txt").unwrap()).unwrap().unwrap().entry.mode, 0o755);
}

#[test]
fn a_page_batch_is_all_or_nothing_and_clears_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let idx = Index::open(d.path()).unwrap();
    idx.journal_put(&[entry("j1", 0o644), entry("j2", 0o644)]).unwrap();
    assert_eq!(idx.journal().unwrap().len(), 2);
    let need = Need { entry: entry("big.bin", 0o644), source: "n2".into(), attempts: 0, last_error: None, force: false, copy_of: None };
    let stored = idx
        .apply(Batch { commits: vec![(entry("j1", 0o644), 11)], put_needs: vec![need], remove_needs: vec![], progress: Some(("n2".into(), Progress { index_id: 3, seq: 99 })), clear_journal: true })
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(idx.journal().unwrap().is_empty());
    assert_eq!(idx.needs().unwrap().len(), 1);
    assert_eq!(idx.progress("n2").unwrap().seq, 99);
    assert_eq!(idx.needs_under(&RelPath::parse("big.bin").unwrap()).unwrap(), 0);
    drop(idx);
    let idx = Index::open(d.path()).unwrap();
    assert_eq!(idx.needs().unwrap().len(), 1, "durable");
}

/// Only a batch that moves a peer's progress and nothing else skips the fsync; anything that
/// records a version, a need or clears a journal with entries in it is durable.
#[test]
fn only_a_progress_only_batch_is_committed_lazily() {
    let d = tempfile::tempdir().unwrap();
    let idx = Index::open(d.path()).unwrap();
    let progress = || Some(("n2".to_owned(), Progress { index_id: 3, seq: 5 }));
    let lazy = |b: &Batch| {
        let txn = idx.db.begin_write().unwrap();
        let r = queue::only_progress(&txn, b).unwrap();
        txn.abort().unwrap();
        r
    };
    assert!(lazy(&Batch { progress: progress(), clear_journal: true, ..Default::default() }), "an empty journal to clear");
    assert!(!lazy(&Batch { commits: vec![(entry("a", 0o644), 1)], progress: progress(), ..Default::default() }));
    assert!(!lazy(&Batch { remove_needs: vec![RelPath::parse("a").unwrap()], progress: progress(), ..Default::default() }));
    idx.journal_put(&[entry("j", 0o644)]).unwrap();
    assert!(!lazy(&Batch { progress: progress(), clear_journal: true, ..Default::default() }), "a journal with entries is cleared durably");
    idx.apply(Batch { progress: progress(), clear_journal: true, ..Default::default() }).unwrap();
    assert!(!idx.dirty.load(Ordering::SeqCst), "that commit was durable");
    idx.apply(Batch { progress: Some(("n2".to_owned(), Progress { index_id: 3, seq: 6 })), clear_journal: true, ..Default::default() }).unwrap();
    assert!(idx.dirty.load(Ordering::SeqCst), "a progress-only commit leaves the index to be flushed");
    assert_eq!(idx.progress("n2").unwrap().seq, 6);
}

/// The counts in the status come from the commits, not from a walk of the index: after
/// new files, a directory, a symlink, an overwrite and a delete they equal a walk; an index
/// whose counts lag its sequence (written by an agent that did not keep them) is counted
/// again at open.
#[test]
fn live_counts_follow_every_commit_and_a_stale_index_is_recounted_at_open() {
    let walk = |idx: &Index| -> [u64; 4] {
        let txn = idx.db.begin_read().unwrap();
        let mut c = [0u64; 4];
        for item in txn.open_table(ENTRIES).unwrap().iter().unwrap() {
            let st: Stored = decode(item.unwrap().1.value()).unwrap();
            for (a, b) in c.iter_mut().zip(counts_of(&st.entry)) {
                *a += b as u64;
            }
        }
        c
    };
    let counts = |idx: &Index| {
        let s = idx.summary().unwrap();
        [s.files, s.dirs, s.symlinks, s.bytes]
    };
    let d = tempfile::tempdir().unwrap();
    let idx = Index::open(d.path()).unwrap();
    assert_eq!(counts(&idx), [0; 4]);
    let commit = |es: Vec<Entry>| {
        idx.apply(Batch { commits: es.into_iter().map(|e| (e, 1)).collect(), ..Default::default() }).unwrap();
    };
    let dir = Entry { kind: EntryKind::Dir, size: 0, ..entry("d", 0o755) };
    let link = Entry { kind: EntryKind::Symlink, size: 0, target: "a".into(), ..entry("d/l", 0o777) };
    commit(vec![entry("a", 0o644), entry("d/b", 0o644), dir, link.clone()]);
    assert_eq!(counts(&idx), [2, 1, 1, 6]);
    commit(vec![Entry { size: 1000, ..entry("a", 0o644) }]);
    assert_eq!(counts(&idx), [2, 1, 1, 1003], "an overwrite changes the bytes, not the count");
    commit(vec![Entry { deleted: true, size: 0, ..entry("d/b", 0o644) }, Entry { deleted: true, ..link }]);
    assert_eq!(counts(&idx), [1, 1, 0, 1000], "tombstones count for nothing");
    assert_eq!(counts(&idx), walk(&idx));
    // An older agent wrote an entry without touching the counts.
    {
        let txn = idx.db.begin_write().unwrap();
        let s = Stored { entry: entry("new", 0o644), seq: idx.last_seq() + 1, ino: 1 };
        txn.open_table(ENTRIES).unwrap().insert("new", encode(&s).as_slice()).unwrap();
        txn.open_table(META).unwrap().insert("last_seq", s.seq).unwrap();
        txn.commit().unwrap();
    }
    drop(idx);
    let idx = Index::open(d.path()).unwrap();
    assert_eq!(counts(&idx), [2, 1, 0, 1003]);
    assert_eq!(counts(&idx), walk(&idx));
}

#[test]
fn only_a_commit_holding_a_version_of_this_nodes_own_wakes_the_own_channel() {
    let d = tempfile::tempdir().unwrap();
    let idx = Index::open(d.path()).unwrap();
    let mut all = idx.subscribe();
    let mut own = idx.subscribe_own();
    // A peer's version (node 7) advances the sequence only.
    idx.commit(vec![(entry("theirs.txt", 0o644), 1)]).unwrap();
    assert!(all.has_changed().unwrap());
    assert!(!own.has_changed().unwrap(), "a relayed version woke the own channel");
    all.borrow_and_update();
    // A version made here wakes both.
    let mut mine = entry("mine.txt", 0o644);
    mine.modified_by = idx.node_id;
    mine.version = VersionVector::new().bumped(idx.node_id);
    idx.commit(vec![(mine, 2)]).unwrap();
    assert!(all.has_changed().unwrap() && own.has_changed().unwrap());
    assert_eq!(*own.borrow_and_update(), idx.last_seq());
}
