//! The durable batch writer: many small files (a peer's page of inline content) written to
//! temp files from a few threads, made durable together, and only then installed under
//! their names, each against its own expectation.
//!
//! Making small files durable one fsync at a time costs a journal commit each (about 1 ms
//! per file on a VM disk, which dominated an initial sync); collected, they are written back
//! together: one `syncfs` from [`SYNCFS_MIN`] files on, parallel fsyncs below (the journal
//! groups concurrent commits). The order of the guarantee is unchanged: no name points at
//! content that is not durable.

use std::io::{self, Write};

use super::dirs::Dirs;
use super::{Expect, RootError, SyncRoot, TempFile};
use crate::protocol::RelPath;

/// From this many files on, one `syncfs` of the root's file system writes them back.
pub const SYNCFS_MIN: usize = 64;
/// Threads that create and write the temp files of one batch.
const WRITE_THREADS: usize = 4;

/// One file to write.
pub struct Pending {
    pub path: RelPath,
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime_ns: i64,
    pub expect: Expect,
}

impl SyncRoot {
    /// Writes every file, makes them all durable, installs each (in the given order) and
    /// returns, in the same order, each one's new inode or why it was not installed (its
    /// path then holds what it held before, and no temp file is left).
    pub fn write_batch(&self, pending: Vec<Pending>) -> Vec<(RelPath, Result<u64, RootError>)> {
        if pending.is_empty() {
            return Vec::new();
        }
        let threads = pending.len().div_ceil(32).clamp(1, WRITE_THREADS);
        let chunk = pending.len().div_ceil(threads);
        // One chunk (up to 32 files, every page of a single change) is written right here: a
        // thread started and joined per page was a clone and two context switches per change.
        // The files of each chunk, or, if its writer panicked, an error for each of them.
        let write_chunk = |c: &[Pending]| -> Vec<Result<TempFile, RootError>> {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut dirs = Dirs::default();
                c.iter().map(|p| self.write_temp(p, &mut dirs)).collect()
            }))
            .unwrap_or_else(|_| c.iter().map(|p| Err(RootError::Io { path: p.path.clone(), source: io::Error::other("writer panicked") })).collect())
        };
        let written: Vec<Result<TempFile, RootError>> = if threads == 1 {
            write_chunk(&pending)
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = pending.chunks(chunk).map(|c| s.spawn(move || write_chunk(c))).collect();
                handles.into_iter().flat_map(|h| h.join().expect("BUG: a writer's panic is caught inside it")).collect()
            })
        };
        // Durability: one write-back of the file system for a big batch, else per file.
        let ok: Vec<&TempFile> = written.iter().filter_map(|w| w.as_ref().ok()).collect();
        let synced: Vec<io::Result<()>> = if ok.len() >= SYNCFS_MIN && self.syncfs().is_ok() { ok.iter().map(|_| Ok(())).collect() } else { fsync_parallel(&ok) };
        let mut synced = synced.into_iter();
        let mut out = Vec::with_capacity(written.len());
        let mut dirs = Dirs::default();
        for (w, p) in written.into_iter().zip(pending) {
            let r = match w {
                Err(e) => Err(e),
                Ok(tmp) => match synced.next().expect("BUG: one result per written file") {
                    Err(e) => Err(RootError::io(&p.path, e)),
                    Ok(()) => self.install_in(tmp, &p.expect, &mut dirs),
                },
            };
            out.push((p.path, r));
        }
        out
    }

    fn write_temp(&self, p: &Pending, dirs: &mut Dirs) -> Result<TempFile, RootError> {
        let mut tmp = self.create_temp_in(&p.path, dirs)?;
        tmp.file().write_all(&p.data).map_err(|e| RootError::io(&p.path, e))?;
        tmp.finish_in(p.mode, p.mtime_ns, dirs).map_err(|e| RootError::io(&p.path, e))?;
        Ok(tmp)
    }
}

/// fsyncs the files from a few threads at once: concurrent fsyncs share journal commits.
fn fsync_parallel(files: &[&TempFile]) -> Vec<io::Result<()>> {
    if files.len() <= 1 {
        return files.iter().map(|f| f.sync()).collect();
    }
    let threads = files.len().min(16);
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = files.chunks(chunk).map(|c| (c.len(), s.spawn(move || c.iter().map(|f| f.sync()).collect::<Vec<_>>()))).collect();
        handles.into_iter().flat_map(|(n, h)| h.join().unwrap_or_else(|_| (0..n).map(|_| Err(io::Error::other("fsync thread panicked"))).collect())).collect()
    })
}
