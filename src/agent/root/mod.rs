//! `SyncRoot`: the only code that creates, writes, renames or deletes inside the sync folder.
//!
//! Paths are resolved beneath the root without following symlinks (`beneath`), so nothing is
//! read or written outside the root even if a peer or a local user plants a link
//! (`uploads -> /etc`) or swaps a directory for one between a check and a use.
//!
//! Content never overwrites what it was not meant to: every replacement names the state it
//! expects to replace (`Expect`). New content is written to a temp file in the target's
//! directory, made durable, and swapped into place with `renameat2(RENAME_EXCHANGE)`; the
//! displaced file is then compared with the expectation (inode, size, mtime, ctime) and, if
//! a local write got there first, swapped back and reported as `RootError::Changed`, so the
//! caller rescans and applies the conflict rule instead of losing the write. Creating a name
//! that should be free uses `RENAME_NOREPLACE`; deleting renames the file aside first and
//! checks it the same way. Replicated modes carry permission bits only (`& 0o777`): a
//! setuid bit from a peer never reaches the disk, and new entries take the owner and group
//! of their directory (so the web application that owns the folder can still change them).
//!
//! `durable` is the batch writer used while a peer's page is applied; `walk` lists a
//! subtree through directory descriptors for the scanner.

mod beneath;
mod dirs;
pub mod durable;
mod graveyard;
mod hash;
mod ops;
pub mod sink;
mod temp;
pub mod walk;

pub use self::graveyard::{Cause, GRACE, Grave};
pub use self::hash::{hash_file, hash_files, read_verified};
pub use self::temp::TempFile;

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{OFlags, Timespec, Timestamps, UTIME_NOW};

use self::beneath::{err, os, parent_of, stat_at};
use crate::protocol::{EntryKind, RelPath};

/// Temp files are named `.filesync.<up to 40 bytes of the name>.<random>.tmp`: at most 63
/// bytes whatever the real name, so every valid name has one. The watcher and scanner skip
/// them.
pub const TEMP_PREFIX: &str = ".filesync.";
pub const TEMP_SUFFIX: &str = ".tmp";
const TEMP_NAME_BYTES: usize = 40;

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX)
}

/// A temp name next to `name` (same directory).
pub fn temp_name(name: &str) -> String {
    let mut cut = name.len().min(TEMP_NAME_BYTES);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{TEMP_PREFIX}{}.{:08x}{TEMP_SUFFIX}", &name[..cut], rand::random::<u32>())
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{path}: {parent} is a symlink or not a directory; refusing to go through it")]
    Escapes { path: RelPath, parent: String },
    #[error("the sync root {0} cannot be opened: {1}")]
    RootUnsafe(String, String),
    #[error("{path}: changed on this node while a peer's version was being written; the local change is kept and compared again")]
    Changed { path: RelPath },
    #[error("{path}: a directory is in the way")]
    DirInTheWay { path: RelPath },
    #[error("{path}: disk full (ENOSPC) on this node")]
    DiskFull { path: RelPath },
    #[error("{path}: permission denied")]
    Permission { path: RelPath },
    #[error("{path}: {source}")]
    Io { path: RelPath, source: io::Error },
}

impl RootError {
    pub fn io(path: &RelPath, e: io::Error) -> RootError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => RootError::DiskFull { path: path.clone() },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => RootError::Permission { path: path.clone() },
            _ => RootError::Io { path: path.clone(), source: e },
        }
    }

    /// A refusal for safety reasons: retrying will not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, RootError::Escapes { .. })
    }
}

/// What the scanner and the applier see of one path on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMeta {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime_ns: i64,
    /// Permission bits only (`& 0o777`); `0o777` for symlinks.
    pub mode: u32,
    pub ino: u64,
    /// Status change time: moves with every write, chmod, link and rename, even when the
    /// mtime is put back, so it tells a local change from the state a decision saw.
    pub ctime_ns: i64,
    pub nlink: u64,
}

impl DiskMeta {
    pub fn from_stat(s: &rustix::fs::Stat) -> Option<DiskMeta> {
        let ft = rustix::fs::FileType::from_raw_mode(s.st_mode);
        let kind = match ft {
            rustix::fs::FileType::Symlink => EntryKind::Symlink,
            rustix::fs::FileType::Directory => EntryKind::Dir,
            rustix::fs::FileType::RegularFile => EntryKind::File,
            _ => return None, // sockets, fifos and devices are not synced
        };
        Some(DiskMeta {
            kind,
            size: if kind == EntryKind::File { s.st_size as u64 } else { 0 },
            mtime_ns: s.st_mtime * 1_000_000_000 + s.st_mtime_nsec as i64,
            mode: if kind == EntryKind::Symlink { 0o777 } else { s.st_mode & 0o777 },
            ino: s.st_ino,
            ctime_ns: s.st_ctime * 1_000_000_000 + s.st_ctime_nsec as i64,
            nlink: s.st_nlink,
        })
    }

    /// Same file in the same state (a directory only needs to be the same directory).
    pub fn same_state(&self, other: &DiskMeta) -> bool {
        self.kind == other.kind && self.ino == other.ino && (self.kind == EntryKind::Dir || (self.size == other.size && self.mtime_ns == other.mtime_ns && self.ctime_ns == other.ctime_ns))
    }
}

/// The state a destructive operation expects to find at its path.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Nothing there: the operation must not replace anything.
    Absent,
    /// Exactly this (same inode, size, mtime and ctime).
    Is(DiskMeta),
    /// Whatever is there (only for the agent's own temp and conflict-copy names).
    Anything,
}

impl Expect {
    pub fn from_disk(d: Option<DiskMeta>) -> Expect {
        match d {
            None => Expect::Absent,
            Some(m) => Expect::Is(m),
        }
    }

    pub fn matches(&self, now: Option<&DiskMeta>) -> bool {
        match (self, now) {
            (Expect::Anything, _) => true,
            (Expect::Absent, None) => true,
            (Expect::Is(want), Some(now)) => want.same_state(now),
            _ => false,
        }
    }

    /// `matches` for a file the agent itself just renamed (which moved its ctime): same
    /// inode, size and mtime.
    fn matches_moved(&self, now: Option<&DiskMeta>) -> bool {
        match (self, now) {
            (Expect::Is(want), Some(now)) => want.kind == now.kind && want.ino == now.ino && (want.kind == EntryKind::Dir || (want.size == now.size && want.mtime_ns == now.mtime_ns)),
            _ => self.matches(now),
        }
    }
}

/// How `remove` ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Removed {
    /// The path no longer exists.
    Gone,
    /// A directory that still holds entries was left in place: they are changes this node
    /// has not announced yet, or deletions still to come.
    NotEmpty,
}

/// Directories looked up for a run of `stat_in`s (see `dirs`), missing ones included.
#[derive(Default)]
pub struct Lookups(dirs::Dirs);

#[derive(Clone)]
pub struct SyncRoot {
    root: PathBuf,
    canonical: PathBuf,
    /// While set, directories written into are collected here and fsynced once by
    /// `sync_dirty_dirs` instead of after every rename (one fsync per directory per page).
    deferred_dirs: Arc<Mutex<Option<std::collections::BTreeSet<String>>>>,
    /// Files taken off their names, kept for a grace period (see `graveyard`); without
    /// its directory they are unlinked at once.
    graveyard: Arc<graveyard::Graveyard>,
}

impl SyncRoot {
    pub fn new(root: PathBuf) -> SyncRoot {
        let canonical = beneath::canonical(&root);
        SyncRoot { root, canonical, deferred_dirs: Default::default(), graveyard: Default::default() }
    }

    /// Keeps displaced files in `dir` (private, next to the agent's state) for a grace period
    /// before unlinking them; ignored when `dir` is on another file system than the root.
    pub fn with_graveyard(mut self, dir: &Path) -> io::Result<SyncRoot> {
        self.graveyard = Arc::new(graveyard::Graveyard::open(dir, self.root_fd().ok().as_ref())?);
        Ok(self)
    }

    /// The root as configured (for messages).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The root with symlinks resolved (as it was at start-up).
    pub fn canonical(&self) -> &Path {
        &self.canonical
    }

    fn root_fd(&self) -> Result<OwnedFd, RootError> {
        beneath::open_root(&self.canonical).map_err(|e| self.unsafe_root(e))
    }

    /// Why the root could not be opened, in words: a symlink or a file in its place, gone,
    /// or the error itself (out of descriptors is not a swapped root).
    fn unsafe_root(&self, e: io::Error) -> RootError {
        let why = match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => format!("a symlink or a file was put in its place, or in place of a folder above it ({e}); it is not followed"),
            Some(libc::ENOENT) => format!("it is gone ({e})"),
            _ => e.to_string(),
        };
        RootError::RootUnsafe(self.root.display().to_string(), why)
    }

    /// The directory `dir` (`""` = the root), `None` if it does not exist.
    fn dir(&self, dir: &str, for_path: &RelPath) -> Result<Option<OwnedFd>, RootError> {
        dir_beneath(&self.root_fd()?, dir, for_path)
    }

    /// `p`'s parent directory and last component; `None` if the parent does not exist.
    fn parent(&self, p: &RelPath) -> Result<Option<(OwnedFd, String)>, RootError> {
        let (dir, name) = parent_of(p);
        Ok(self.dir(&dir, p)?.map(|fd| (fd, name.to_owned())))
    }

    /// `p`'s parent directory, created (with the owner of its own parent) if missing.
    fn parent_created(&self, p: &RelPath) -> Result<(Arc<OwnedFd>, String), RootError> {
        dirs::Dirs::default().parent_created(self, p)
    }

    /// Metadata of `p` without following a final symlink, or `None` if it does not exist
    /// (or lies behind a symlinked parent, which counts as outside the root).
    pub fn stat(&self, p: &RelPath) -> Result<Option<DiskMeta>, RootError> {
        self.stat_in(p, &mut Lookups::default())
    }

    /// `stat`, through directories resolved once for all the lookups of `l` (a snapshot:
    /// for reads only, the agent changing nothing meanwhile).
    pub fn stat_in(&self, p: &RelPath, l: &mut Lookups) -> Result<Option<DiskMeta>, RootError> {
        let Some((dir, name)) = (match l.0.parent_or_none(self, p) {
            Err(RootError::Escapes { .. }) => return Ok(None),
            r => r?,
        }) else {
            return Ok(None);
        };
        match stat_at(&dir, &name) {
            Ok(s) => Ok(s.as_ref().and_then(DiskMeta::from_stat)),
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
            Err(e) => Err(RootError::io(p, e)),
        }
    }

    /// Opens a regular file for reading, never following a symlink and never blocking on a
    /// FIFO swapped in for it.
    pub fn open_read(&self, p: &RelPath) -> Result<File, RootError> {
        let (dir, name) = self.parent(p)?.ok_or_else(|| RootError::io(p, io::Error::from(io::ErrorKind::NotFound)))?;
        let fd = beneath::open_entry(&dir, &name, false).map_err(|e| RootError::io(p, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| RootError::io(p, err(e)))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return Err(RootError::Io { path: p.clone(), source: io::Error::other("not a regular file") });
        }
        // Back to blocking reads for a regular file.
        rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY).map_err(|e| RootError::io(p, err(e)))?;
        Ok(File::from(fd))
    }

    pub fn read_link(&self, p: &RelPath) -> Result<String, RootError> {
        let (dir, name) = self.parent(p)?.ok_or_else(|| RootError::io(p, io::Error::from(io::ErrorKind::NotFound)))?;
        let t = rustix::fs::readlinkat(&dir, os(&name), Vec::new()).map_err(|e| RootError::io(p, err(e)))?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// Starts collecting directories to fsync instead of syncing each one at once.
    pub fn defer_dir_syncs(&self) {
        *self.deferred_dirs.lock().expect("BUG: poisoned") = Some(Default::default());
    }

    /// fsyncs every directory written into since `defer_dir_syncs`, and stops deferring.
    pub fn sync_dirty_dirs(&self) {
        let dirs = self.deferred_dirs.lock().expect("BUG: poisoned").take();
        for d in dirs.into_iter().flatten() {
            self.sync_dir(&d);
        }
    }

    fn sync_dir_of(&self, p: &RelPath) {
        let dir = parent_of(p).0;
        let mut guard = self.deferred_dirs.lock().expect("BUG: poisoned");
        match guard.as_mut() {
            Some(set) => {
                set.insert(dir);
            }
            None => {
                drop(guard);
                self.sync_dir(&dir);
            }
        }
    }

    fn sync_dir(&self, dir: &str) {
        if let Ok(root) = self.root_fd()
            && let Ok(Some(fd)) = beneath::open_dir(&root, dir)
        {
            let _ = rustix::fs::fsync(&fd);
        }
    }

    /// One write-back of the whole file system the root lives on.
    pub fn syncfs(&self) -> io::Result<()> {
        let fd = self.root_fd().map_err(io::Error::other)?;
        rustix::fs::syncfs(&fd).map_err(err)
    }
}

/// The directory `dir` beneath the root descriptor `root` (`None` if it does not exist); a
/// symlink or file in the way is a refusal for `for_path`.
fn dir_beneath(root: &OwnedFd, dir: &str, for_path: &RelPath) -> Result<Option<OwnedFd>, RootError> {
    beneath::open_dir(root, dir).map_err(|e| if beneath::is_escape(&e) { RootError::Escapes { path: for_path.clone(), parent: dir.to_owned() } } else { RootError::io(for_path, e) })
}

fn same_inode(a: &OwnedFd, b: &OwnedFd) -> bool {
    match (rustix::fs::fstat(a), rustix::fs::fstat(b)) {
        (Ok(x), Ok(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

/// The modification time to set, with the access time set to now: the kernel reports a
/// change of the modification time alone as IN_MODIFY, which the watcher takes for a write
/// in progress; both times together are IN_ATTRIB.
fn times(mtime_ns: i64) -> Timestamps {
    Timestamps { last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_NOW }, last_modification: Timespec { tv_sec: mtime_ns.div_euclid(1_000_000_000), tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _ } }
}

pub fn to_systime(mtime_ns: i64) -> SystemTime {
    if mtime_ns >= 0 { UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64) } else { UNIX_EPOCH - Duration::from_nanos(mtime_ns.unsigned_abs()) }
}

#[cfg(test)]
mod tests;
