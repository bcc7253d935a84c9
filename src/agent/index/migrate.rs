//! Upgrading an index written by an older agent, once, at open.
//!
//! Format 1 (agents before 2026-11-29) stored entries without `origin` and kept special
//! mode bits. Format 2 gives every entry `origin = version` (each old version is treated as
//! the one that made its content, which only ever leads to a conflict copy too many, never
//! one too few) and masks modes to the permission bits.

use redb::{Database, ReadableTable};
use serde::Deserialize;
#[cfg(test)]
use serde::Serialize;

use super::{DIGEST, ENTRIES, JOURNAL, META, NEEDS, Need, Stored, decode, encode, entry_digest};
use crate::protocol::{Entry, EntryKind, NodeId, RelPath, VersionVector};

#[derive(Deserialize)]
struct EntryV1 {
    path: RelPath,
    kind: EntryKind,
    deleted: bool,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    hash: [u8; 32],
    target: String,
    version: VersionVector,
    modified_by: NodeId,
    modified_by_name: String,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Entry {
        Entry {
            path: e.path,
            kind: e.kind,
            deleted: e.deleted,
            size: e.size,
            mtime_ns: e.mtime_ns,
            mode: e.mode & 0o777,
            hash: e.hash,
            target: e.target,
            origin: e.version.clone(),
            version: e.version,
            modified_by: e.modified_by,
            modified_by_name: e.modified_by_name,
        }
    }
}

#[derive(Deserialize)]
struct StoredV1 {
    entry: EntryV1,
    seq: u64,
    ino: u64,
}

#[derive(Deserialize)]
struct NeedV1 {
    entry: EntryV1,
    source: String,
    attempts: u32,
    last_error: Option<String>,
    force: bool,
    copy_of: Option<RelPath>,
}

/// Brings the file to `format`; a new file is simply marked.
pub(super) fn upgrade(db: &Database, format: u64) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let have = meta.get("format")?.map(|v| v.value());
        let fresh = meta.get("node_id")?.is_none();
        if have == Some(format) {
            return Ok(());
        }
        if let Some(v) = have.filter(|v| *v > format) {
            anyhow::bail!("the index was written by a newer filesync (format {v}, this one reads {format}); upgrade the agent");
        }
        meta.insert("format", format)?;
        drop(meta);
        if !fresh {
            let mut entries = txn.open_table(ENTRIES)?;
            let old: Vec<(String, Vec<u8>)> = entries.iter()?.map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value().to_vec()))).collect::<Result<_, _>>()?;
            let mut digest = 0u128;
            for (k, v) in old {
                let s: StoredV1 = decode(&v)?;
                let s = Stored { entry: s.entry.into(), seq: s.seq, ino: s.ino };
                digest = digest.wrapping_add(entry_digest(&s.entry));
                entries.insert(k.as_str(), encode(&s).as_slice())?;
            }
            txn.open_table(DIGEST)?.insert("tree", digest)?;
            let mut needs = txn.open_table(NEEDS)?;
            let old: Vec<(String, Vec<u8>)> = needs.iter()?.map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value().to_vec()))).collect::<Result<_, _>>()?;
            for (k, v) in old {
                let n: NeedV1 = decode(&v)?;
                let n = Need { entry: n.entry.into(), source: n.source, attempts: n.attempts, last_error: n.last_error, force: n.force, copy_of: n.copy_of };
                needs.insert(k.as_str(), encode(&n).as_slice())?;
            }
        }
        txn.open_table(JOURNAL)?;
    }
    txn.commit()?;
    Ok(())
}

/// Encodes an entry the way format 1 did (for the migration test).
#[cfg(test)]
pub(super) fn encode_v1(s: &Stored) -> Vec<u8> {
    #[derive(Serialize)]
    struct E<'a> {
        path: &'a RelPath,
        kind: EntryKind,
        deleted: bool,
        size: u64,
        mtime_ns: i64,
        mode: u32,
        hash: [u8; 32],
        target: &'a str,
        version: &'a VersionVector,
        modified_by: NodeId,
        modified_by_name: &'a str,
    }
    #[derive(Serialize)]
    struct S<'a> {
        entry: E<'a>,
        seq: u64,
        ino: u64,
    }
    let e = &s.entry;
    encode(&S {
        entry: E {
            path: &e.path,
            kind: e.kind,
            deleted: e.deleted,
            size: e.size,
            mtime_ns: e.mtime_ns,
            mode: e.mode,
            hash: e.hash,
            target: &e.target,
            version: &e.version,
            modified_by: e.modified_by,
            modified_by_name: &e.modified_by_name,
        },
        seq: s.seq,
        ino: s.ino,
    })
}
