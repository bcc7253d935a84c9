//! Start-up recovery of the versions area, before the journal's reconcile and the start-up
//! scan. A kill -9 can stop the agent between any two steps of keeping a version:
//!
//! - moved aside (a temp name in the folder) but not into `data/` yet: the temp sweep moves
//!   it there when the index explains it (below), else removes it like any temp file.
//! - displaced (renamed into `data/`), not recorded yet: the change that displaced it was
//!   not recorded in the index either (records are flushed first), so the index still names
//!   the file's inode at its path: it is recorded from that entry (path, hash; the node
//!   from the journal or the need that was being applied). A file whose inode the index
//!   names with another size or mtime was written after the swap by a process that had it
//!   open: it goes back beside its path as a conflict copy. A file no entry names is removed.
//! - the same for the displaced-files directory used when versions are not kept.
//! - recorded, grace period not over: if its size, mtime or ctime moved, a writer reached it
//!   after the swap: it is put back beside its path as a conflict copy; else it is settled.
//! - a record whose file is gone (its removal was under way): the record is dropped.
//!
//! Content is never written in place, so no step leaves half a version, and nothing here
//! touches the current files of the sync folder.

use std::collections::HashMap;

use super::store::Record;
use crate::agent::Agent;
use crate::agent::index::Stored;
use crate::agent::root::DiskMeta;
use crate::protocol::EntryKind;
use crate::protocol::RelPath;
use crate::protocol::versions::Cause;

/// Live files of the index by inode: what a displaced file without a record can only be.
pub(super) fn live_inodes(index: &crate::agent::index::Index) -> anyhow::Result<HashMap<u64, Stored>> {
    Ok(index.under(None)?.into_iter().filter(|s| !s.entry.deleted && s.entry.kind == EntryKind::File).map(|s| (s.ino, s)).collect())
}

/// The index entry a displaced file (by its state) was taken from, if any.
pub(super) fn explains<'a>(by_ino: &'a HashMap<u64, Stored>, m: &DiskMeta) -> Option<&'a Stored> {
    by_ino.get(&m.ino).filter(|s| s.entry.size == m.size && s.entry.mtime_ns == m.mtime_ns)
}

/// The path of the index entry a displaced file was taken from when its content is not what
/// the index recorded: a writer that had it open reached it after the swap, and the agent
/// stopped before the grace period could notice. That content exists nowhere else.
pub(super) fn written_after(by_ino: &HashMap<u64, Stored>, m: &DiskMeta) -> Option<RelPath> {
    by_ino.get(&m.ino).filter(|_| explains(by_ino, m).is_none()).map(|s| s.entry.path.clone())
}

/// Returns the conflict copies it put back in the folder.
pub(super) fn recover(a: &mut Agent, by_ino: &HashMap<u64, Stored>) -> anyhow::Result<Vec<RelPath>> {
    let Some(store) = a.versions.store.clone() else { return Ok(Vec::new()) };
    let mut files: HashMap<u64, (DiskMeta, u64)> = a.root.version_files().into_iter().map(|(id, m, b)| (id, (m, b))).collect();
    let mut rescued = Vec::new();
    let mut updates = Vec::new();
    let mut dropped = Vec::new();
    for (id, mut r) in store.all()? {
        let Some((meta, blocks)) = files.remove(&id) else {
            dropped.push(id);
            continue;
        };
        if !r.settled {
            let untouched = meta.ino == r.ino && meta.size == r.size && meta.mtime_ns == r.mtime_ns && meta.ctime_ns == r.ctime_ns;
            if !untouched {
                if let Some(path) = Agent::version_path(&r)
                    && let Some(copy) = a.root.rescue_version(id, &path, &a.s.node_name)
                {
                    rescued.push(copy);
                    dropped.push(id);
                    continue;
                }
                r.hash = None;
            }
            r.settled = true;
        }
        if r.hash.is_none() {
            r.hash = super::hash_version(&a.root, id);
        }
        (r.size, r.mtime_ns, r.disk_bytes) = (meta.size, meta.mtime_ns, blocks);
        updates.push((id, r));
    }
    // Files without a record: displaced by a change the index had not recorded yet.
    let mut adopted = 0;
    if !files.is_empty() {
        let pending: HashMap<String, (String, bool)> =
            a.index.journal()?.into_iter().chain(a.index.needs()?.into_iter().map(|n| n.entry)).map(|e| (e.path.to_string(), (e.modified_by_name, e.deleted))).collect();
        for (id, (meta, blocks)) in files {
            match explains(by_ino, &meta) {
                Some(s) => {
                    let (by, deleted) = pending.get(s.entry.path.as_str()).cloned().unwrap_or_default();
                    updates.push((
                        id,
                        Record {
                            path: s.entry.path.to_string(),
                            kept_at_ns: id as i64,
                            size: meta.size,
                            mtime_ns: meta.mtime_ns,
                            mode: meta.mode,
                            hash: Some(s.entry.hash),
                            new_hash: None,
                            by,
                            cause: if deleted { Cause::Deleted } else { Cause::Replaced },
                            ino: meta.ino,
                            ctime_ns: meta.ctime_ns,
                            disk_bytes: blocks,
                            settled: true,
                        },
                    ));
                    adopted += 1;
                }
                None => match written_after(by_ino, &meta).and_then(|path| a.root.rescue_version(id, &path, &a.s.node_name)) {
                    Some(copy) => rescued.push(copy),
                    None => a.root.drop_version(id),
                },
            }
        }
    }
    store.put(&updates, true)?;
    store.remove(&dropped)?;
    for id in &dropped {
        a.root.drop_version(*id);
    }
    store.flush()?;
    if adopted > 0 {
        a.log.normal(format!("start-up: kept {adopted} file(s) displaced just before the agent stopped as versions"));
    }
    Ok(rescued)
}
