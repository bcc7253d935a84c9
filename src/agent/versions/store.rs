//! The versions' records, in their own redb file (`<state_dir>/versions/records.redb`, mode
//! 0600, opened through `private_fs`): one record per version, keyed by its id (which names
//! its content file and grows with time, so key order is age order). A record is written
//! when its file is displaced, durably before the change that displaced it is recorded in
//! the index, and marked `settled` when the grace period ends; the content is only ever
//! renamed, so a record never describes half a file (see `recover` for the crash rules).

use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::protocol::versions::{Cause, VersionInfo};

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("versions");

/// What is known about one version.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub path: String,
    /// When it was displaced (Unix ns; also its id).
    pub kept_at_ns: i64,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub hash: Option<[u8; 32]>,
    /// The content that replaced it (for a replacement or a restore).
    pub new_hash: Option<[u8; 32]>,
    pub by: String,
    pub cause: Cause,
    /// Its state when displaced: a later change means a writer reached it (see `graveyard`).
    pub ino: u64,
    pub ctime_ns: i64,
    /// Allocated bytes (estimated from the size until settled).
    pub disk_bytes: u64,
    /// Its grace period is over.
    pub settled: bool,
}

impl Record {
    pub fn info(&self, id: u64) -> VersionInfo {
        VersionInfo {
            id,
            path: self.path.clone(),
            kept_at: self.kept_at_ns.div_euclid(1_000_000_000),
            size: self.size,
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            hash: self.hash.map(hex::encode),
            by: self.by.clone(),
            cause: self.cause,
            settled: self.settled,
        }
    }
}

pub struct Store {
    db: Database,
}

fn encode(r: &Record) -> Vec<u8> {
    postcard::to_allocvec(r).expect("BUG: records always serialize")
}

impl Store {
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        let file = crate::private_fs::PrivateDir::state(dir)?.open_rw("records.redb").with_context(|| format!("cannot open {}", dir.join("records.redb").display()))?;
        let db = Database::builder()
            .set_cache_size(2 * 1024 * 1024)
            .create_with_backend(redb::backends::FileBackend::new(file)?)
            .with_context(|| format!("cannot open the versions records in {}", dir.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        Ok(Store { db })
    }

    /// Writes records (new or updated) in one transaction; `durable` waits for the disk.
    pub fn put(&self, items: &[(u64, Record)], durable: bool) -> anyhow::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        {
            let mut t = txn.open_table(RECORDS)?;
            for (id, r) in items {
                t.insert(*id, encode(r).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes records. Not urgent: a record whose content is gone is dropped at start-up.
    pub fn remove(&self, ids: &[u64]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut t = txn.open_table(RECORDS)?;
            for id in ids {
                t.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.db.begin_write()?.commit()?;
        Ok(())
    }

    pub fn get(&self, id: u64) -> anyhow::Result<Option<Record>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        Ok(match t.get(id)? {
            Some(v) => Some(postcard::from_bytes(v.value())?),
            None => None,
        })
    }

    /// Every record, oldest first.
    pub fn all(&self) -> anyhow::Result<Vec<(u64, Record)>> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            match postcard::from_bytes(v.value()) {
                Ok(r) => out.push((k.value(), r)),
                Err(e) => tracing::warn!(id = k.value(), error = %e, "unreadable version record skipped"),
            }
        }
        Ok(out)
    }
}
