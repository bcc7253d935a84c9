//! The persistent index of the sync root, in redb (a pure-Rust, crash-safe embedded B-tree
//! store, chosen over sled for its stable file format and over SQLite for needing no C).
//!
//! Tables: every path's latest `Entry` (tombstones included) with the local facts needed to
//! skip re-hashing (inode), a sequence log (`seq -> path`) that peers page through, the
//! items accepted from peers but not yet written (`needs`, see `queue`), the apply journal
//! (`queue`), per-peer progress, and meta (node id, index id, format). The tree digest and
//! the live counts (files, directories, symlinks, bytes) are kept up to date by every commit
//! in the `digest` table, so the status never walks the index; `counted_seq` says up to
//! which sequence they are right, and an index written without them (an older agent) is
//! counted once at open. Only
//! the agent's event loop writes; the HTTP handlers read concurrently through redb's MVCC.

mod lookup;
mod migrate;
mod queue;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::queue::Need;
use crate::protocol::{Entry, EntryKind, NodeId, RelPath};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const BY_SEQ: TableDefinition<u64, &str> = TableDefinition::new("by_seq");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DIGEST: TableDefinition<&str, u128> = TableDefinition::new("digest");
const PROGRESS: TableDefinition<&str, &[u8]> = TableDefinition::new("peer_progress");
const NEEDS: TableDefinition<&str, &[u8]> = TableDefinition::new("needs");
/// Entries of a page being applied, recorded before the first file of the page reaches its
/// name (see `queue` and `agent::apply::journal`).
const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");

/// Version of the records' encoding (meta key `format`); older files are migrated at open.
const FORMAT: u64 = 2;

/// An entry as stored: the replicated `Entry` plus facts only this node cares about.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stored {
    pub entry: Entry,
    pub seq: u64,
    /// Inode of the file on this node when it was last scanned or written.
    pub ino: u64,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Progress {
    pub index_id: u64,
    pub seq: u64,
}

pub struct Index {
    db: Database,
    pub node_id: NodeId,
    pub index_id: u64,
    seq_tx: watch::Sender<u64>,
    /// The sequence of the last commit holding a version this node made (see `feed`).
    own_tx: watch::Sender<u64>,
    /// Set by writes made without an fsync of their own (needs); `flush` makes them durable.
    dirty: AtomicBool,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    /// Order-independent digest of every live path's content and metadata: two nodes with
    /// the same digest hold the same tree.
    pub digest: u128,
}

/// What one page (or one applied need) changes in the index, in one transaction.
#[derive(Default)]
pub struct Batch {
    /// New versions, each with the inode it has on this node.
    pub commits: Vec<(Entry, u64)>,
    /// Needs to record (content to fetch, items to retry).
    pub put_needs: Vec<Need>,
    /// Needs that are settled.
    pub remove_needs: Vec<RelPath>,
    /// Progress through a peer's log.
    pub progress: Option<(String, Progress)>,
    /// Empty the apply journal.
    pub clear_journal: bool,
}

impl Index {
    pub fn open(dir: &Path) -> anyhow::Result<Index> {
        let path = dir.join("index.redb");
        // Opened through the verified state dir: mode 0600, never through a link (`private_fs`).
        let file = crate::private_fs::PrivateDir::state(dir)?.open_rw("index.redb").with_context(|| format!("cannot open index {}", path.display()))?;
        let db = Database::builder()
            .set_cache_size(2 * 1024 * 1024)
            .create_with_backend(redb::backends::FileBackend::new(file)?)
            .with_context(|| format!("cannot open index {} (is another agent running on it? `filesync inspect --config <agent.toml>` asks a running agent)", path.display()))?;
        migrate::upgrade(&db, FORMAT)?;
        let txn = db.begin_write()?;
        let (node_id, index_id, last_seq);
        {
            let mut meta = txn.open_table(META)?;
            let mut get_or_init = |k: &str| -> anyhow::Result<u64> {
                if let Some(v) = meta.get(k)? {
                    return Ok(v.value());
                }
                let v = rand::random::<u64>() >> 1 | 1;
                meta.insert(k, v)?;
                Ok(v)
            };
            node_id = get_or_init("node_id")?;
            index_id = get_or_init("index_id")?;
            last_seq = meta.get("last_seq")?.map(|v| v.value()).unwrap_or(0);
            txn.open_table(ENTRIES)?;
            txn.open_table(BY_SEQ)?;
            txn.open_table(DIGEST)?;
            txn.open_table(PROGRESS)?;
            txn.open_table(NEEDS)?;
            txn.open_table(JOURNAL)?;
            recount_if_stale(&txn, last_seq)?;
        }
        txn.commit()?;
        let (seq_tx, _) = watch::channel(last_seq);
        let (own_tx, _) = watch::channel(last_seq);
        Ok(Index { db, node_id, index_id, seq_tx, own_tx, dirty: AtomicBool::new(false) })
    }

    pub fn last_seq(&self) -> u64 {
        *self.seq_tx.borrow()
    }

    /// Resolves whenever the sequence advances; used by long-polling peers.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.seq_tx.subscribe()
    }

    /// Resolves whenever a commit holds a version this node made: a page of relays waits for
    /// that (or its hold running out), not for every commit.
    pub fn subscribe_own(&self) -> watch::Receiver<u64> {
        self.own_tx.subscribe()
    }

    /// Wakes every long-poll as if something had been committed (they look again): on
    /// resume, what was committed during a pause would otherwise wait for the next commit
    /// or the asker's 240-s wait.
    pub fn wake_feeds(&self) {
        self.seq_tx.send_modify(|_| {});
    }

    pub fn get(&self, path: &RelPath) -> anyhow::Result<Option<Stored>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        Ok(match t.get(path.as_str())? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        })
    }

    /// Every stored entry at or below `dir` (or the whole index for `None`).
    pub fn under(&self, dir: Option<&RelPath>) -> anyhow::Result<Vec<Stored>> {
        if let Some(d) = dir {
            return Ok(self.under_at_most(d, usize::MAX)?.unwrap_or_default());
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// `under(Some(dir))`, or `None` as soon as it holds more than `limit` entries (a caller
    /// that only looks at small subtrees never decodes a large one).
    pub fn under_at_most(&self, dir: &RelPath, limit: usize) -> anyhow::Result<Option<Vec<Stored>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        if let Some(v) = t.get(dir.as_str())? {
            out.push(decode(v.value())?);
        }
        let lo = format!("{}/", dir.as_str());
        let hi = format!("{}0", dir.as_str());
        for item in t.range(lo.as_str()..hi.as_str())? {
            if out.len() == limit {
                return Ok(None);
            }
            out.push(decode(item?.1.value())?);
        }
        Ok(Some(out))
    }

    /// Writes entries in one transaction, giving each a new sequence number, and wakes the
    /// long-polling peers. Returns the stored forms.
    pub fn commit(&self, items: Vec<(Entry, u64)>) -> anyhow::Result<Vec<Stored>> {
        self.apply(Batch { commits: items, ..Batch::default() })
    }

    /// Applies a `Batch` in one durable transaction: never progress without the entries and
    /// needs it covers, never a need without the journal cleared in the same breath.
    pub fn apply(&self, b: Batch) -> anyhow::Result<Vec<Stored>> {
        if b.commits.is_empty() && b.put_needs.is_empty() && b.remove_needs.is_empty() && b.progress.is_none() && !b.clear_journal {
            return Ok(Vec::new());
        }
        let mut txn = self.db.begin_write()?;
        let lazy = queue::only_progress(&txn, &b)?;
        if lazy {
            txn.set_durability(redb::Durability::None)?;
        }
        if let Some((peer, p)) = &b.progress {
            txn.open_table(PROGRESS)?.insert(peer.as_str(), encode(p).as_slice())?;
        }
        queue::apply_in(&txn, &b)?;
        let stored = self.commit_in(&txn, b.commits)?;
        txn.commit()?;
        self.dirty.store(lazy, Ordering::SeqCst);
        if let Some(last) = stored.last() {
            if stored.iter().any(|s| s.entry.modified_by == self.node_id) {
                self.own_tx.send_replace(last.seq);
            }
            self.seq_tx.send_replace(last.seq);
        }
        Ok(stored)
    }

    fn commit_in(&self, txn: &WriteTransaction, items: Vec<(Entry, u64)>) -> anyhow::Result<Vec<Stored>> {
        let mut stored = Vec::with_capacity(items.len());
        if items.is_empty() {
            return Ok(stored);
        }
        let mut seq = self.last_seq();
        let mut entries = txn.open_table(ENTRIES)?;
        let mut by_seq = txn.open_table(BY_SEQ)?;
        let mut dig = txn.open_table(DIGEST)?;
        let mut digest = dig.get("tree")?.map(|v| v.value()).unwrap_or(0);
        let mut counts = [0u128; 4];
        for (c, k) in counts.iter_mut().zip(COUNT_KEYS) {
            *c = dig.get(k)?.map(|v| v.value()).unwrap_or(0);
        }
        for (entry, ino) in items {
            let key = entry.path.as_str().to_owned();
            if let Some(old) = entries.get(key.as_str())? {
                let old: Stored = decode(old.value())?;
                by_seq.remove(old.seq)?;
                digest = digest.wrapping_sub(entry_digest(&old.entry));
                for (c, d) in counts.iter_mut().zip(counts_of(&old.entry)) {
                    *c = c.wrapping_sub(d);
                }
            }
            seq += 1;
            digest = digest.wrapping_add(entry_digest(&entry));
            for (c, d) in counts.iter_mut().zip(counts_of(&entry)) {
                *c = c.wrapping_add(d);
            }
            let s = Stored { entry, seq, ino };
            entries.insert(key.as_str(), encode(&s).as_slice())?;
            by_seq.insert(seq, key.as_str())?;
            stored.push(s);
        }
        dig.insert("tree", digest)?;
        for (c, k) in counts.iter().zip(COUNT_KEYS) {
            dig.insert(k, *c)?;
        }
        dig.insert("counted_seq", u128::from(seq))?;
        txn.open_table(META)?.insert("last_seq", seq)?;
        Ok(stored)
    }

    /// Updates only the local inode of an entry (no new version, no new sequence).
    pub fn set_ino(&self, path: &RelPath, ino: u64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let cur = entries.get(path.as_str())?.map(|v| decode::<Stored>(v.value()));
            if let Some(Ok(mut s)) = cur {
                s.ino = ino;
                entries.insert(path.as_str(), encode(&s).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Entries whose sequence is above `since`, ascending, at most `limit`.
    pub fn changes_since(&self, since: u64, limit: usize) -> anyhow::Result<Vec<(u64, Entry)>> {
        let txn = self.db.begin_read()?;
        let by_seq = txn.open_table(BY_SEQ)?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in by_seq.range(since + 1..)? {
            let (seq, path) = item?;
            if let Some(v) = entries.get(path.value())? {
                let s: Stored = decode(v.value())?;
                out.push((seq.value(), s.entry));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The live counts and the digest, as the last commit left them (no walk of the index).
    pub fn summary(&self) -> anyhow::Result<Summary> {
        let txn = self.db.begin_read()?;
        let dig = txn.open_table(DIGEST)?;
        let get = |k: &str| -> anyhow::Result<u128> { Ok(dig.get(k)?.map(|v| v.value()).unwrap_or(0)) };
        let n = |k: &str| -> anyhow::Result<u64> { Ok(u64::try_from(get(k)?).unwrap_or(u64::MAX)) };
        Ok(Summary { files: n("files")?, dirs: n("dirs")?, symlinks: n("symlinks")?, bytes: n("bytes")?, digest: get("tree")? })
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    pub fn len(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ENTRIES)?.len()?)
    }

    pub fn progress(&self, peer: &str) -> anyhow::Result<Progress> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PROGRESS)?;
        Ok(match t.get(peer)? {
            Some(v) => decode(v.value())?,
            None => Progress::default(),
        })
    }

    /// Every peer's recorded progress (for `filesync inspect`).
    pub fn all_progress(&self) -> anyhow::Result<Vec<(String, Progress)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(PROGRESS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    pub fn get_meta(&self, key: &str) -> anyhow::Result<Option<u64>> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(key)?.map(|v| v.value()))
    }

    pub fn set_meta(&self, key: &str, value: u64) -> anyhow::Result<()> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }
}

/// The live counts kept beside the digest, in the order of [`counts_of`].
const COUNT_KEYS: [&str; 4] = ["files", "dirs", "symlinks", "bytes"];

/// What one entry adds to the live counts: a file, a directory or a symlink, and its bytes.
fn counts_of(e: &Entry) -> [u128; 4] {
    match (e.deleted, e.kind) {
        (true, _) => [0; 4],
        (false, EntryKind::File) => [1, 0, 0, u128::from(e.size)],
        (false, EntryKind::Dir) => [0, 1, 0, 0],
        (false, EntryKind::Symlink) => [0, 0, 1, 0],
    }
}

/// Counts the live entries once when the stored counts do not match the sequence (a new
/// index, or one last written by an agent that did not keep them).
fn recount_if_stale(txn: &WriteTransaction, last_seq: u64) -> anyhow::Result<()> {
    let mut dig = txn.open_table(DIGEST)?;
    if dig.get("counted_seq")?.map(|v| v.value()) == Some(u128::from(last_seq)) {
        return Ok(());
    }
    let mut counts = [0u128; 4];
    for item in txn.open_table(ENTRIES)?.iter()? {
        let st: Stored = decode(item?.1.value())?;
        for (c, d) in counts.iter_mut().zip(counts_of(&st.entry)) {
            *c += d;
        }
    }
    for (c, k) in counts.iter().zip(COUNT_KEYS) {
        dig.insert(k, *c)?;
    }
    dig.insert("counted_seq", u128::from(last_seq))?;
    Ok(())
}

fn entry_digest(e: &Entry) -> u128 {
    if e.deleted {
        return 0;
    }
    let mut h = blake3::Hasher::new();
    h.update(e.path.as_str().as_bytes());
    h.update(&[e.kind as u8]);
    h.update(&e.hash);
    h.update(e.target.as_bytes());
    h.update(&e.mode.to_le_bytes());
    if e.kind != EntryKind::Dir {
        h.update(&e.mtime_ns.to_le_bytes());
    }
    let out = h.finalize();
    u128::from_le_bytes(out.as_bytes()[..16].try_into().expect("BUG: 16 bytes"))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("BUG: index values always serialize")
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> anyhow::Result<T> {
    postcard::from_bytes(b).context("index record is corrupt; delete the state dir to rebuild it from peers")
}

#[cfg(test)]
mod tests;
