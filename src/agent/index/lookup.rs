//! Read-only helpers for the dashboard's reports (`agent::report`): several paths looked up
//! in one read transaction, and the conflict copies the index holds. They only read, so
//! HTTP handlers may call them beside the event loop (redb MVCC).

use redb::{ReadableDatabase, ReadableTable};

use super::{ENTRIES, Index, Stored, decode};
use crate::protocol::RelPath;
use crate::protocol::conflict::is_conflict_copy;

impl Index {
    /// What the index holds for each of `paths`, in order, read in one transaction.
    pub fn get_many<'a>(&self, paths: impl IntoIterator<Item = &'a RelPath>) -> anyhow::Result<Vec<Option<Stored>>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for p in paths {
            out.push(match t.get(p.as_str())? {
                Some(v) => Some(decode(v.value())?),
                None => None,
            });
        }
        Ok(out)
    }

    /// Live entries whose name marks a conflict copy (at most `limit`, by path), and how
    /// many there are in all.
    pub fn conflict_copies(&self, limit: usize) -> anyhow::Result<(Vec<Stored>, u64)> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let (mut out, mut total) = (Vec::new(), 0u64);
        for item in t.iter()? {
            let (k, v) = item?;
            let name = k.value().rsplit('/').next().unwrap_or("");
            if !is_conflict_copy(name) {
                continue;
            }
            let s: Stored = decode(v.value())?;
            if s.entry.deleted {
                continue;
            }
            total += 1;
            if out.len() < limit {
                out.push(s);
            }
        }
        Ok((out, total))
    }
}
