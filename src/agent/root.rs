//! `SyncRoot`: the only code that creates, writes, renames or deletes inside the sync folder.
//!
//! Every operation takes a validated `RelPath` and first checks that each parent component
//! is a real directory, not a symlink, so nothing is ever written outside the root even if a
//! peer or a local user plants a link (`uploads -> /etc`). Writes go to a temp file in the
//! target's directory, are fsynced, get their mode and mtime, and are renamed into place,
//! so readers never see half a file; the directory is fsynced after the rename.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::protocol::{EntryKind, RelPath};

/// Temp files are named `.filesync.<name>.<random>.tmp`; the watcher and scanner skip them.
pub const TEMP_PREFIX: &str = ".filesync.";
pub const TEMP_SUFFIX: &str = ".tmp";

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: parent {parent} is a symlink or not a directory; refusing to write through it")]
    Escapes { path: RelPath, parent: String },
    #[error("{path}: disk full (ENOSPC) on this node")]
    DiskFull { path: RelPath },
    #[error("{path}: permission denied")]
    Permission { path: RelPath },
    #[error("{path}: {source}")]
    Io { path: RelPath, source: io::Error },
}

impl RootError {
    fn io(path: &RelPath, e: io::Error) -> RootError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => RootError::DiskFull { path: path.clone() },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => RootError::Permission { path: path.clone() },
            _ => RootError::Io { path: path.clone(), source: e },
        }
    }
}

/// What the scanner and the applier see of one path on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMeta {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    pub ino: u64,
}

impl DiskMeta {
    pub fn from_fs(m: &fs::Metadata) -> Option<DiskMeta> {
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            EntryKind::Symlink
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else {
            return None; // sockets, fifos and devices are not synced
        };
        Some(DiskMeta {
            kind,
            size: if kind == EntryKind::File { m.len() } else { 0 },
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            mode: if kind == EntryKind::Symlink { 0o777 } else { m.mode() & 0o7777 },
            ino: m.ino(),
        })
    }
}

#[derive(Clone)]
pub struct SyncRoot {
    root: PathBuf,
    /// While set, directories written into are collected here and fsynced once by
    /// `sync_dirty_dirs` instead of after every rename (one fsync per directory per page).
    deferred_dirs: std::sync::Arc<std::sync::Mutex<Option<std::collections::HashSet<PathBuf>>>>,
    /// While set, `write_atomic` leaves its finished temp files here; `finish_writes` makes
    /// them durable together and only then renames them into place (see `Deferred`).
    deferred_writes: std::sync::Arc<std::sync::Mutex<Option<Deferred>>>,
}

/// A write collected between `defer_writes` and `finish_writes`.
struct Pending {
    path: RelPath,
    data: Vec<u8>,
    mode: u32,
    mtime_ns: i64,
}

/// A temp file whose content is complete (mode and mtime set) but not yet durable nor
/// renamed over its target. The descriptor is kept only when the file is fsynced by itself.
struct Written {
    path: RelPath,
    tmp: PathBuf,
    file: Option<File>,
    ino: u64,
}

/// Writes collected between `defer_writes` and `finish_writes`. Making many small files
/// durable one fsync at a time costs a journal commit each (about 1 ms per file on a VM
/// disk, which dominated an initial sync); collected, they are written from a few threads
/// and written back together. The order of the guarantee is unchanged: no name points at
/// content that is not durable.
#[derive(Default)]
struct Deferred {
    pending: Vec<Pending>,
}

/// From this many files on, one `syncfs` of the root's file system writes them back in one
/// go; below it, the files are fsynced in parallel (the journal groups the commits).
const SYNCFS_MIN: usize = 64;
/// Threads that create and write the temp files of one batch.
const WRITE_THREADS: usize = 4;

/// What `finish_writes` did: the inode each written path now has, and the failures (whose
/// targets were left untouched).
#[derive(Default)]
pub struct Finished {
    pub written: Vec<(RelPath, u64)>,
    pub failed: Vec<(RelPath, RootError)>,
}

impl SyncRoot {
    pub fn new(root: PathBuf) -> SyncRoot {
        SyncRoot { root, deferred_dirs: Default::default(), deferred_writes: Default::default() }
    }

    /// Starts collecting `write_atomic`s: they return inode 0, and the file appears under
    /// its name (with its real inode in `Finished::written`) at `finish_writes`.
    pub fn defer_writes(&self) {
        *self.deferred_writes.lock().expect("BUG: poisoned") = Some(Deferred::default());
    }

    /// Drops every collected write (their targets stay untouched) and stops deferring.
    pub fn discard_writes(&self) {
        self.deferred_writes.lock().expect("BUG: poisoned").take();
    }

    /// Writes every collected file to a temp file (from a few threads), makes them all
    /// durable, renames each into place, and stops deferring.
    pub fn finish_writes(&self) -> Finished {
        let d = self.deferred_writes.lock().expect("BUG: poisoned").take();
        let pending = d.map(|d| d.pending).unwrap_or_default();
        let mut out = Finished::default();
        if pending.is_empty() {
            return out;
        }
        let keep_fds = pending.len() < SYNCFS_MIN;
        let threads = pending.len().div_ceil(32).clamp(1, WRITE_THREADS);
        let chunk = pending.len().div_ceil(threads);
        let results: Vec<Result<Written, (RelPath, RootError)>> = std::thread::scope(|s| {
            let handles: Vec<_> = pending.chunks(chunk).map(|c| (c, s.spawn(move || c.iter().map(|p| self.write_temp(p, keep_fds)).collect::<Vec<_>>()))).collect();
            handles
                .into_iter()
                .flat_map(|(c, h)| {
                    h.join().unwrap_or_else(|_| c.iter().map(|p| Err((p.path.clone(), RootError::Io { path: p.path.clone(), source: io::Error::other("writer thread panicked") }))).collect())
                })
                .collect()
        });
        let mut written = Vec::with_capacity(results.len());
        for r in results {
            match r {
                Ok(w) => written.push(w),
                Err(f) => out.failed.push(f),
            }
        }
        // Durability: one write-back of the file system for a big batch, else per file.
        let synced: Vec<io::Result<()>> = if !keep_fds && File::open(&self.root).and_then(|d| syncfs(&d)).is_ok() {
            written.iter().map(|_| Ok(())).collect()
        } else {
            fsync_parallel(&written)
        };
        for (w, r) in written.into_iter().zip(synced) {
            let Written { path, tmp, file, ino } = w;
            drop(file);
            match r.and_then(|_| self.rename_into_place(&tmp, &path)) {
                Ok(()) => out.written.push((path, ino)),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    out.failed.push((path.clone(), RootError::io(&path, e)));
                }
            }
        }
        out
    }

    fn write_temp(&self, p: &Pending, keep_fd: bool) -> Result<Written, (RelPath, RootError)> {
        let (mut f, tmp) = self.create_temp(&p.path).map_err(|e| (p.path.clone(), e))?;
        let res = (|| {
            f.write_all(&p.data)?;
            f.set_permissions(fs::Permissions::from_mode(p.mode & 0o7777))?;
            f.set_modified(to_systime(p.mtime_ns))?;
            f.metadata().map(|m| m.ino())
        })();
        match res {
            Ok(ino) => Ok(Written { path: p.path.clone(), tmp, file: if keep_fd { Some(f) } else { None }, ino }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err((p.path.clone(), RootError::io(&p.path, e)))
            }
        }
    }

    fn rename_into_place(&self, tmp: &Path, p: &RelPath) -> io::Result<()> {
        self.check_parents(p).map_err(io::Error::other)?;
        if let Ok(m) = fs::symlink_metadata(self.full(p))
            && m.is_dir() {
                return Err(io::Error::other("a directory is in the way"));
            }
        fs::rename(tmp, self.full(p))?;
        self.sync_parent(p);
        Ok(())
    }

    /// Starts collecting directories to fsync instead of syncing each one at once.
    pub fn defer_dir_syncs(&self) {
        *self.deferred_dirs.lock().expect("BUG: poisoned") = Some(Default::default());
    }

    /// fsyncs every directory written into since `defer_dir_syncs`, and stops deferring.
    pub fn sync_dirty_dirs(&self) {
        let dirs = self.deferred_dirs.lock().expect("BUG: poisoned").take();
        for d in dirs.into_iter().flatten() {
            sync_dir(&d);
        }
    }

    fn sync_parent(&self, p: &RelPath) {
        let dir = self.full(p).parent().expect("BUG: parent exists").to_owned();
        let mut guard = self.deferred_dirs.lock().expect("BUG: poisoned");
        match guard.as_mut() {
            Some(set) => {
                set.insert(dir);
            }
            None => {
                drop(guard);
                sync_dir(&dir);
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn full(&self, p: &RelPath) -> PathBuf {
        p.to_fs(&self.root)
    }

    /// Checks that every parent of `p` is a real directory inside the root (or missing).
    fn check_parents(&self, p: &RelPath) -> Result<(), RootError> {
        let mut cur = self.root.clone();
        let comps: Vec<&str> = p.as_str().split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Err(RootError::Escapes { path: p.clone(), parent: cur.display().to_string() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(RootError::io(p, e)),
            }
        }
        Ok(())
    }

    /// Metadata of `p` without following a final symlink, or `None` if it does not exist
    /// (or lies behind a symlinked parent, which counts as outside the root).
    pub fn stat(&self, p: &RelPath) -> Result<Option<DiskMeta>, RootError> {
        if self.check_parents(p).is_err() {
            return Ok(None);
        }
        match fs::symlink_metadata(self.full(p)) {
            Ok(m) => Ok(DiskMeta::from_fs(&m)),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(RootError::io(p, e)),
        }
    }

    /// Creates the missing parents of `p` as directories (mode 0755).
    pub fn ensure_parents(&self, p: &RelPath) -> Result<(), RootError> {
        self.check_parents(p)?;
        if let Some(parent) = p.parent() {
            let full = self.full(&parent);
            if !full.is_dir() {
                fs::create_dir_all(&full).map_err(|e| RootError::io(p, e))?;
                self.check_parents(p)?;
            }
        }
        Ok(())
    }

    /// Opens a new temp file next to `p` for content about to replace it.
    pub fn create_temp(&self, p: &RelPath) -> Result<(File, PathBuf), RootError> {
        self.ensure_parents(p)?;
        let dir = self.full(p).parent().expect("BUG: a RelPath always has a parent on disk").to_owned();
        let name = p.file_name();
        let short: String = name.chars().take(100).collect();
        for _ in 0..8 {
            let tmp = dir.join(format!("{TEMP_PREFIX}{short}.{:08x}{TEMP_SUFFIX}", rand::random::<u32>()));
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
                Ok(f) => return Ok((f, tmp)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RootError::io(p, e)),
            }
        }
        Err(RootError::Io { path: p.clone(), source: io::Error::other("could not pick a temp file name") })
    }

    /// fsyncs a finished temp file, sets mode and mtime, renames it over `p` and fsyncs the
    /// directory. Returns the new inode. On error the temp file is removed.
    pub fn commit_temp(&self, file: File, tmp: &Path, p: &RelPath, mode: u32, mtime_ns: i64) -> Result<u64, RootError> {
        let res = (|| {
            file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
            file.set_modified(to_systime(mtime_ns))?;
            file.sync_all()?;
            drop(file);
            self.rename_into_place(tmp, p)?;
            Ok(fs::symlink_metadata(self.full(p))?.ino())
        })();
        if res.is_err() {
            let _ = fs::remove_file(tmp);
        }
        res.map_err(|e| RootError::io(p, e))
    }

    /// Writes `data` to `p` atomically (small files that arrive inline). While writes are
    /// deferred (`defer_writes`), the file reaches its name at `finish_writes`.
    pub fn write_atomic(&self, p: &RelPath, data: &[u8], mode: u32, mtime_ns: i64) -> Result<u64, RootError> {
        if let Some(d) = self.deferred_writes.lock().expect("BUG: poisoned").as_mut() {
            d.pending.push(Pending { path: p.clone(), data: data.to_vec(), mode, mtime_ns });
            return Ok(0);
        }
        let (mut f, tmp) = self.create_temp(p)?;
        if let Err(e) = f.write_all(data) {
            let _ = fs::remove_file(&tmp);
            return Err(RootError::io(p, e));
        }
        self.commit_temp(f, &tmp, p, mode, mtime_ns)
    }

    pub fn mkdir(&self, p: &RelPath, mode: u32) -> Result<u64, RootError> {
        self.ensure_parents(p)?;
        let full = self.full(p);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(RootError::Io { path: p.clone(), source: io::Error::other("a file is in the way") }),
            Err(_) => fs::create_dir(&full).map_err(|e| RootError::io(p, e))?,
        }
        fs::set_permissions(&full, fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| RootError::io(p, e))?;
        Ok(fs::symlink_metadata(&full).map_err(|e| RootError::io(p, e))?.ino())
    }

    pub fn set_mode(&self, p: &RelPath, mode: u32) -> Result<(), RootError> {
        self.check_parents(p)?;
        fs::set_permissions(self.full(p), fs::Permissions::from_mode(mode & 0o7777)).map_err(|e| RootError::io(p, e))
    }

    /// Sets a file's modification time by path (`utimensat`, a final symlink not followed).
    /// The access time is set too (to now): the kernel reports a change of the modification
    /// time alone as IN_MODIFY, which the watcher takes for a write in progress and which
    /// would hold back remote changes to the path; both times together are IN_ATTRIB.
    pub fn set_mtime(&self, p: &RelPath, mtime_ns: i64) -> Result<(), RootError> {
        use rustix::fs::{AtFlags, CWD, Timestamps, UTIME_NOW, utimensat};
        self.check_parents(p)?;
        let times = Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: UTIME_NOW },
            last_modification: rustix::fs::Timespec { tv_sec: mtime_ns.div_euclid(1_000_000_000), tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _ },
        };
        utimensat(CWD, self.full(p), &times, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| RootError::io(p, io::Error::from(e)))
    }

    /// Creates (or replaces) a symlink. The link is never followed.
    pub fn symlink(&self, p: &RelPath, target: &str, mtime_ns: i64) -> Result<u64, RootError> {
        self.ensure_parents(p)?;
        let full = self.full(p);
        let tmp = full.with_file_name(format!("{TEMP_PREFIX}{}.{:08x}{TEMP_SUFFIX}", p.file_name().chars().take(100).collect::<String>(), rand::random::<u32>()));
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| RootError::io(p, e))?;
        let t = filetime::FileTime::from_unix_time(mtime_ns.div_euclid(1_000_000_000), mtime_ns.rem_euclid(1_000_000_000) as u32);
        let _ = filetime::set_symlink_file_times(&tmp, t, t);
        if let Ok(m) = fs::symlink_metadata(&full)
            && m.is_dir() {
                let _ = fs::remove_file(&tmp);
                return Err(RootError::Io { path: p.clone(), source: io::Error::other("a directory is in the way") });
            }
        fs::rename(&tmp, &full).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            RootError::io(p, e)
        })?;
        Ok(fs::symlink_metadata(&full).map_err(|e| RootError::io(p, e))?.ino())
    }

    /// Removes a file or link, or an empty directory. A directory that still holds entries
    /// is left in place (`Ok(false)`): they are changes this node has not announced yet.
    pub fn remove(&self, p: &RelPath) -> Result<bool, RootError> {
        self.check_parents(p)?;
        let full = self.full(p);
        let m = match fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(RootError::io(p, e)),
        };
        let r = if m.is_dir() {
            // Our own leftover temp files do not keep a directory alive.
            if let Ok(rd) = fs::read_dir(&full) {
                for e in rd.flatten() {
                    if e.file_name().to_str().is_some_and(is_temp_name) {
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
            match fs::remove_dir(&full) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => return Ok(false),
                r => r,
            }
        } else {
            fs::remove_file(&full)
        };
        r.map_err(|e| RootError::io(p, e))?;
        Ok(true)
    }

    /// Renames within the root (local conflict copies, and remote renames).
    pub fn rename(&self, from: &RelPath, to: &RelPath) -> Result<(), RootError> {
        self.check_parents(from)?;
        self.ensure_parents(to)?;
        fs::rename(self.full(from), self.full(to)).map_err(|e| RootError::io(to, e))
    }

    pub fn read_link(&self, p: &RelPath) -> Result<String, RootError> {
        self.check_parents(p)?;
        let t = fs::read_link(self.full(p)).map_err(|e| RootError::io(p, e))?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// Opens a regular file for reading without following a final symlink.
    pub fn open_read(&self, p: &RelPath) -> Result<File, RootError> {
        self.check_parents(p)?;
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.full(p))
            .map_err(|e| RootError::io(p, e))
    }
}

pub fn to_systime(mtime_ns: i64) -> SystemTime {
    if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(mtime_ns.unsigned_abs())
    }
}

/// One write-back of the whole file system `f` lives on (errors included, Linux 5.8+).
fn syncfs(f: &File) -> io::Result<()> {
    rustix::fs::syncfs(f).map_err(io::Error::from)
}

/// fsyncs the files from a few threads at once: concurrent fsyncs share journal commits.
fn fsync_parallel(pending: &[Written]) -> Vec<io::Result<()>> {
    fn sync(w: &Written) -> io::Result<()> {
        match &w.file {
            Some(f) => f.sync_all(),
            None => File::open(&w.tmp)?.sync_all(),
        }
    }
    if pending.len() == 1 {
        return vec![sync(&pending[0])];
    }
    let threads = pending.len().min(16);
    let chunk = pending.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = pending.chunks(chunk).map(|c| (c.len(), s.spawn(move || c.iter().map(sync).collect::<Vec<_>>()))).collect();
        handles
            .into_iter()
            .flat_map(|(n, h)| h.join().unwrap_or_else(|_| (0..n).map(|_| Err(io::Error::other("fsync thread panicked"))).collect()))
            .collect()
    })
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// BLAKE3 of a file's content, read through `open_read`; also returns the metadata seen
/// after hashing so callers can tell whether the file changed while it was being read.
pub fn hash_file(root: &SyncRoot, p: &RelPath) -> Result<([u8; 32], DiskMeta), RootError> {
    let mut f = root.open_read(p)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f).map_err(|e| RootError::io(p, e))?;
    let m = f.metadata().map_err(|e| RootError::io(p, e))?;
    let meta = DiskMeta::from_fs(&m).ok_or_else(|| RootError::Io { path: p.clone(), source: io::Error::other("not a regular file") })?;
    Ok((*h.finalize().as_bytes(), meta))
}
