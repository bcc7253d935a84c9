//! What is accepted but not settled: needs and the apply journal.
//!
//! A **need** is an item accepted from a peer that is not written yet (content to fetch, a
//! failure to retry). It is recorded before the peer's progress advances past it, and it
//! doubles as the journal of a single item: the need is durable before its content reaches
//! its name, so after a crash the content found at the name is recognised as the peer's
//! version, not announced as a local edit (`agent::apply::journal`).
//!
//! The **journal** holds the entries a page is about to apply, written durably before the
//! first of them touches the disk and cleared in the transaction that records the page.

use std::sync::atomic::Ordering;

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{Batch, Index, JOURNAL, NEEDS, decode, encode};
use crate::protocol::{Entry, RelPath};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Need {
    pub entry: Entry,
    pub source: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Write the content whatever the local version (a receive-only node's revert).
    pub force: bool,
    /// Set for a losing version's content that this node keeps as a conflict copy:
    /// `entry.path` is the copy's name, this is the path the content is fetched by.
    pub copy_of: Option<RelPath>,
}

pub(super) fn apply_in(txn: &WriteTransaction, b: &Batch) -> anyhow::Result<()> {
    if !b.put_needs.is_empty() || !b.remove_needs.is_empty() {
        let mut t = txn.open_table(NEEDS)?;
        for p in &b.remove_needs {
            t.remove(p.as_str())?;
        }
        for n in &b.put_needs {
            t.insert(n.entry.path.as_str(), encode(n).as_slice())?;
        }
    }
    if b.clear_journal {
        txn.open_table(JOURNAL)?.retain(|_, _| false)?;
    }
    Ok(())
}

/// Whether `b` only moves a peer's progress on: a page that changed nothing here (the usual
/// case is a peer relaying a version this node already has, which in a mesh of n nodes
/// happens n - 2 times per change). Such a commit needs no fsync of its own: lost in a
/// crash, the page is asked again and changes nothing again.
pub(super) fn only_progress(txn: &WriteTransaction, b: &Batch) -> anyhow::Result<bool> {
    use redb::ReadableTableMetadata;
    Ok(b.commits.is_empty() && b.put_needs.is_empty() && b.remove_needs.is_empty() && (!b.clear_journal || txn.open_table(JOURNAL)?.is_empty()?))
}

impl Index {
    /// Records a need (or its new attempt count) without an fsync of its own: it becomes
    /// durable with the next durable commit, or with `flush` before its content is written.
    pub fn put_need(&self, need: &Need) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        txn.open_table(NEEDS)?.insert(need.entry.path.as_str(), encode(need).as_slice())?;
        txn.commit()?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Removing a need is not urgent either: a need that reappears after a crash is found
    /// satisfied and dropped.
    pub fn remove_need(&self, path: &RelPath) -> anyhow::Result<()> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        txn.open_table(NEEDS)?.remove(path.as_str())?;
        txn.commit()?;
        self.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Makes every write so far durable (one empty durable commit, only if needed).
    pub fn flush(&self) -> anyhow::Result<()> {
        if self.dirty.swap(false, Ordering::SeqCst) {
            self.db.begin_write()?.commit()?;
        }
        Ok(())
    }

    pub fn get_need(&self, path: &RelPath) -> anyhow::Result<Option<Need>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(NEEDS)?;
        Ok(match t.get(path.as_str())? {
            Some(v) => Some(decode(v.value())?),
            None => None,
        })
    }

    pub fn needs(&self) -> anyhow::Result<Vec<Need>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(NEEDS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// Needs at or below `dir`.
    pub fn needs_under(&self, dir: &RelPath) -> anyhow::Result<usize> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(NEEDS)?;
        let lo = format!("{}/", dir.as_str());
        let hi = format!("{}0", dir.as_str());
        Ok(t.range(lo.as_str()..hi.as_str())?.count())
    }

    /// Records, durably, the entries a page is about to apply.
    pub fn journal_put(&self, planned: &[Entry]) -> anyhow::Result<()> {
        if planned.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(JOURNAL)?;
            for e in planned {
                t.insert(e.path.as_str(), encode(e).as_slice())?;
            }
        }
        txn.commit()?;
        self.dirty.store(false, Ordering::SeqCst);
        Ok(())
    }

    pub fn journal(&self) -> anyhow::Result<Vec<Entry>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(JOURNAL)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }
}
