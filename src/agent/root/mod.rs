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
pub mod durable;
pub mod walk;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags, RenameFlags, Timespec, Timestamps, UTIME_NOW};

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
    #[error("the sync root {0} cannot be opened safely (a symlink was put in its place, or it is gone)")]
    RootUnsafe(String),
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
        self.kind == other.kind
            && self.ino == other.ino
            && (self.kind == EntryKind::Dir || (self.size == other.size && self.mtime_ns == other.mtime_ns && self.ctime_ns == other.ctime_ns))
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

/// A temp file next to its target, created `O_EXCL | O_NOFOLLOW` in a held directory.
/// Dropped without being installed, it is removed at once (through the directory
/// descriptor, so even if the user moved the directory meanwhile).
pub struct TempFile {
    pub path: RelPath,
    dir: OwnedFd,
    name: String,
    pub file: File,
    armed: bool,
}

impl TempFile {
    /// Sets permission bits, owner (the target's if it is a file, else its directory's) and
    /// mtime on the temp file, ready to be made durable and installed.
    pub fn finish(&mut self, mode: u32, mtime_ns: i64) -> io::Result<()> {
        let target = parent_of(&self.path).1.to_owned();
        let owner = match stat_at(&self.dir, &target)? {
            Some(s) if rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::RegularFile && beneath::is_root() => Some((s.st_uid, s.st_gid)),
            _ => beneath::owner_for(&self.dir),
        };
        beneath::chown_fd(&self.file, owner)?;
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(mode & 0o777)).map_err(err)?;
        rustix::fs::futimens(&self.file, &times(mtime_ns)).map_err(err)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    pub fn ino(&self) -> io::Result<u64> {
        rustix::fs::fstat(&self.file).map(|s| s.st_ino).map_err(err)
    }

    /// Removes the temp file now.
    pub fn discard(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if self.armed {
            self.armed = false;
            let _ = beneath::unlink_at(&self.dir, &self.name, false);
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        self.remove();
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

#[derive(Clone)]
pub struct SyncRoot {
    root: PathBuf,
    canonical: PathBuf,
    /// While set, directories written into are collected here and fsynced once by
    /// `sync_dirty_dirs` instead of after every rename (one fsync per directory per page).
    deferred_dirs: Arc<Mutex<Option<std::collections::BTreeSet<String>>>>,
}

impl SyncRoot {
    pub fn new(root: PathBuf) -> SyncRoot {
        let canonical = beneath::canonical(&root);
        SyncRoot { root, canonical, deferred_dirs: Default::default() }
    }

    /// The root as configured (for messages).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The root with symlinks resolved (as it was at start-up).
    pub fn canonical(&self) -> &Path {
        &self.canonical
    }

    /// Removes `p` and everything below it (files whatever their state: only for a
    /// receive-only node's revert of its own local additions). Returns how many entries.
    pub fn remove_tree(&self, p: &RelPath) -> Result<usize, RootError> {
        let mut items = self.walk(Some(p), &|_| false)?.items;
        items.sort_by(|a, b| b.0.cmp(&a.0));
        let mut n = 0;
        for (q, _) in items {
            if self.remove(&q, &Expect::Anything)? == Removed::Gone {
                n += 1;
            }
        }
        Ok(n)
    }

    fn root_fd(&self) -> Result<OwnedFd, RootError> {
        beneath::open_root(&self.canonical).map_err(|_| RootError::RootUnsafe(self.root.display().to_string()))
    }

    /// The directory `dir` (`""` = the root), `None` if it does not exist.
    fn dir(&self, dir: &str, for_path: &RelPath) -> Result<Option<OwnedFd>, RootError> {
        let root = self.root_fd()?;
        beneath::open_dir(&root, dir).map_err(|e| {
            if beneath::is_escape(&e) {
                RootError::Escapes { path: for_path.clone(), parent: dir.to_owned() }
            } else {
                RootError::io(for_path, e)
            }
        })
    }

    /// `p`'s parent directory and last component; `None` if the parent does not exist.
    fn parent(&self, p: &RelPath) -> Result<Option<(OwnedFd, String)>, RootError> {
        let (dir, name) = parent_of(p);
        Ok(self.dir(&dir, p)?.map(|fd| (fd, name.to_owned())))
    }

    /// `p`'s parent directory, created (with the owner of its own parent) if missing.
    fn parent_created(&self, p: &RelPath) -> Result<(OwnedFd, String), RootError> {
        if let Some(x) = self.parent(p)? {
            return Ok(x);
        }
        let parent = p.parent().expect("BUG: a top-level path's parent is the root, which exists");
        self.mkdir(&parent, 0o755)?;
        self.parent(p)?.ok_or_else(|| RootError::Io { path: p.clone(), source: io::Error::other("its directory vanished while it was being created") })
    }

    /// Metadata of `p` without following a final symlink, or `None` if it does not exist
    /// (or lies behind a symlinked parent, which counts as outside the root).
    pub fn stat(&self, p: &RelPath) -> Result<Option<DiskMeta>, RootError> {
        let Some((dir, name)) = (match self.parent(p) {
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

    /// Opens a new temp file next to `p` (its directory is created if missing).
    pub fn create_temp(&self, p: &RelPath) -> Result<TempFile, RootError> {
        let (dir, name) = self.parent_created(p)?;
        for _ in 0..8 {
            let tmp = temp_name(&name);
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&dir, os(&tmp), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok(TempFile { path: p.clone(), dir, name: tmp, file: File::from(fd), armed: true }),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(RootError::io(p, err(e))),
            }
        }
        Err(RootError::Io { path: p.clone(), source: io::Error::other("could not pick a temp file name") })
    }

    /// Puts a finished, durable temp file at its path if the path is still in the state
    /// `expect` names; returns the new inode. On `Changed` (and any error) the temp file is
    /// removed and whatever is at the path stays.
    pub fn install(&self, mut tmp: TempFile, expect: &Expect) -> Result<u64, RootError> {
        let p = tmp.path.clone();
        let ino = tmp.ino().map_err(|e| RootError::io(&p, e))?;
        // The directory the temp file was made in must still be the one at the path's place
        // (the user may have moved it meanwhile).
        let (dir, name) = self.parent(&p)?.ok_or_else(|| RootError::Changed { path: p.clone() })?;
        if !same_inode(&dir, &tmp.dir) {
            return Err(RootError::Changed { path: p.clone() });
        }
        self.swap_in(&tmp.dir, &tmp.name, &name, &p, expect)?;
        tmp.armed = false;
        drop(dir);
        self.sync_dir_of(&p);
        Ok(ino)
    }

    /// `install`, under another name in the temp file's directory (a conflict copy of the
    /// content fetched for its original).
    pub fn install_at(&self, mut tmp: TempFile, at: &RelPath, expect: &Expect) -> Result<u64, RootError> {
        if at.parent() != tmp.path.parent() {
            return Err(RootError::Io { path: at.clone(), source: io::Error::other("a temp file is only installed in its own directory") });
        }
        tmp.path = at.clone();
        self.install(tmp, expect)
    }

    /// Moves `from_name` (in `dir`) to `name`, if what is at `name` is what `expect` says;
    /// otherwise leaves both as they were and returns `Changed`.
    fn swap_in(&self, dir: &OwnedFd, from_name: &str, name: &str, p: &RelPath, expect: &Expect) -> Result<(), RootError> {
        let now = stat_at(dir, name).map_err(|e| RootError::io(p, e))?;
        let now_meta = now.as_ref().and_then(DiskMeta::from_stat);
        if now.is_some() && now_meta.as_ref().is_some_and(|m| m.kind == EntryKind::Dir) {
            return Err(RootError::DirInTheWay { path: p.clone() });
        }
        if now.is_some() && now_meta.is_none() {
            // A FIFO, socket or device the user made: never replaced by a peer's file.
            return Err(RootError::Changed { path: p.clone() });
        }
        if !expect.matches(now_meta.as_ref()) {
            return Err(RootError::Changed { path: p.clone() });
        }
        if now.is_none() {
            return match beneath::rename_at(dir, from_name, dir, name, RenameFlags::NOREPLACE) {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(RootError::Changed { path: p.clone() }),
                Err(e) => Err(RootError::io(p, e)),
            };
        }
        // Swap, then look at what came out: if it is not what the decision saw, swap back.
        match beneath::rename_at(dir, from_name, dir, name, RenameFlags::EXCHANGE) {
            Ok(()) => {
                let out = stat_at(dir, from_name).ok().flatten().and_then(|s| DiskMeta::from_stat(&s));
                if expect.matches_moved(out.as_ref()) {
                    let _ = beneath::unlink_at(dir, from_name, false);
                    Ok(())
                } else {
                    beneath::rename_at(dir, from_name, dir, name, RenameFlags::EXCHANGE).map_err(|e| RootError::io(p, e))?;
                    Err(RootError::Changed { path: p.clone() })
                }
            }
            // A file system without RENAME_EXCHANGE: check, then replace.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => beneath::rename_at(dir, from_name, dir, name, RenameFlags::empty()).map_err(|e| RootError::io(p, e)),
            Err(e) => Err(RootError::io(p, e)),
        }
    }

    /// Writes `data` to `p` durably and atomically (temp, fsync, install).
    pub fn write_file(&self, p: &RelPath, data: &[u8], mode: u32, mtime_ns: i64, expect: &Expect) -> Result<u64, RootError> {
        let mut tmp = self.create_temp(p)?;
        tmp.file.write_all(data).map_err(|e| RootError::io(p, e))?;
        tmp.finish(mode, mtime_ns).map_err(|e| RootError::io(p, e))?;
        tmp.sync().map_err(|e| RootError::io(p, e))?;
        self.install(tmp, expect)
    }

    /// Creates (or replaces) a symlink; the link is never followed.
    pub fn symlink(&self, p: &RelPath, target: &str, mtime_ns: i64, expect: &Expect) -> Result<u64, RootError> {
        let (dir, name) = self.parent_created(p)?;
        let tmp = temp_name(&name);
        rustix::fs::symlinkat(os(target), &dir, os(&tmp)).map_err(|e| RootError::io(p, err(e)))?;
        let _ = rustix::fs::utimensat(&dir, os(&tmp), &times(mtime_ns), rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
        if let Err(e) = self.swap_in(&dir, &tmp, &name, p, expect) {
            let _ = beneath::unlink_at(&dir, &tmp, false);
            return Err(e);
        }
        self.sync_dir_of(p);
        stat_at(&dir, &name).map_err(|e| RootError::io(p, e))?.map(|s| s.st_ino).ok_or_else(|| RootError::Changed { path: p.clone() })
    }

    /// Creates a directory (and missing parents) with the owner of its parent; an existing
    /// directory only gets the mode. Returns its inode.
    pub fn mkdir(&self, p: &RelPath, mode: u32) -> Result<u64, RootError> {
        let (dir, name) = self.parent_created(p)?;
        match rustix::fs::mkdirat(&dir, os(&name), Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                let fd = beneath::open_entry(&dir, &name, true).map_err(|e| RootError::io(p, e))?;
                beneath::chown_fd(&fd, beneath::owner_for(&dir)).map_err(|e| RootError::io(p, e))?;
                self.sync_dir_of(p);
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(RootError::io(p, err(e))),
        }
        let fd = match beneath::open_entry(&dir, &name, true) {
            Ok(fd) => fd,
            Err(e) if beneath::is_escape(&e) => return Err(RootError::Io { path: p.clone(), source: io::Error::other("a file is in the way") }),
            Err(e) => return Err(RootError::io(p, e)),
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(|e| RootError::io(p, err(e)))?;
        rustix::fs::fstat(&fd).map(|s| s.st_ino).map_err(|e| RootError::io(p, err(e)))
    }

    /// Removes a file or link that is still what `expect` says (else `Changed`, and it stays),
    /// or an empty directory (our own temp files inside do not keep it alive).
    pub fn remove(&self, p: &RelPath, expect: &Expect) -> Result<Removed, RootError> {
        let Some((dir, name)) = self.parent(p)? else { return Ok(Removed::Gone) };
        let Some(now) = stat_at(&dir, &name).map_err(|e| RootError::io(p, e))? else { return Ok(Removed::Gone) };
        let meta = DiskMeta::from_stat(&now);
        if meta.as_ref().is_some_and(|m| m.kind == EntryKind::Dir) {
            let sub = beneath::open_entry(&dir, &name, true).map_err(|e| RootError::io(p, e))?;
            remove_temps_in(&sub);
            return match beneath::unlink_at(&dir, &name, true) {
                Ok(()) => {
                    self.sync_dir_of(p);
                    Ok(Removed::Gone)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(Removed::NotEmpty),
                Err(e) => Err(RootError::io(p, e)),
            };
        }
        if meta.is_none() {
            // A FIFO, socket or device: not synced, so not ours to delete.
            return if matches!(expect, Expect::Is(_)) { Err(RootError::Changed { path: p.clone() }) } else { Ok(Removed::Gone) };
        }
        if !expect.matches(meta.as_ref()) {
            return Err(RootError::Changed { path: p.clone() });
        }
        // Aside first, then check what was moved: a write that landed in between is put back.
        let aside = temp_name(&name);
        beneath::rename_at(&dir, &name, &dir, &aside, RenameFlags::NOREPLACE).map_err(|e| RootError::io(p, e))?;
        let out = stat_at(&dir, &aside).ok().flatten().and_then(|s| DiskMeta::from_stat(&s));
        if expect.matches_moved(out.as_ref()) {
            let _ = beneath::unlink_at(&dir, &aside, false);
            self.sync_dir_of(p);
            return Ok(Removed::Gone);
        }
        match beneath::rename_at(&dir, &aside, &dir, &name, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            // Someone created the name again meanwhile: keep the changed file beside it.
            Err(_) => {
                let keep = format!("{name}.sync-conflict-kept-{:08x}", rand::random::<u32>());
                let _ = beneath::rename_at(&dir, &aside, &dir, &keep, RenameFlags::NOREPLACE);
            }
        }
        Err(RootError::Changed { path: p.clone() })
    }

    /// Renames within the root (a peer's rename, or local content moved to its conflict
    /// copy). `from` must still be what `expect` says; `to` must be free.
    pub fn rename(&self, from: &RelPath, to: &RelPath, expect: &Expect) -> Result<u64, RootError> {
        let (fdir, fname) = self.parent(from)?.ok_or_else(|| RootError::Changed { path: from.clone() })?;
        let now = stat_at(&fdir, &fname).map_err(|e| RootError::io(from, e))?.and_then(|s| DiskMeta::from_stat(&s));
        if now.is_none() || !expect.matches(now.as_ref()) {
            return Err(RootError::Changed { path: from.clone() });
        }
        let (tdir, tname) = self.parent_created(to)?;
        match beneath::rename_at(&fdir, &fname, &tdir, &tname, RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(RootError::Changed { path: to.clone() }),
            Err(e) => return Err(RootError::io(to, e)),
        }
        self.sync_dir_of(from);
        self.sync_dir_of(to);
        Ok(now.map(|m| m.ino).unwrap_or(0))
    }

    /// Sets the permission bits (and the mtime of files and links) of `p` if it is still
    /// what `expect` says; returns its inode.
    pub fn set_meta(&self, p: &RelPath, kind: EntryKind, mode: u32, mtime_ns: i64, expect: &Expect) -> Result<u64, RootError> {
        let (dir, name) = self.parent(p)?.ok_or_else(|| RootError::Changed { path: p.clone() })?;
        if kind == EntryKind::Symlink {
            let now = stat_at(&dir, &name).map_err(|e| RootError::io(p, e))?.and_then(|s| DiskMeta::from_stat(&s));
            if !expect.matches(now.as_ref()) || now.as_ref().is_none_or(|m| m.kind != EntryKind::Symlink) {
                return Err(RootError::Changed { path: p.clone() });
            }
            rustix::fs::utimensat(&dir, os(&name), &times(mtime_ns), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map_err(|e| RootError::io(p, err(e)))?;
            return Ok(now.map(|m| m.ino).unwrap_or(0));
        }
        let fd = match beneath::open_entry(&dir, &name, kind == EntryKind::Dir) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound || beneath::is_escape(&e) => return Err(RootError::Changed { path: p.clone() }),
            Err(e) => return Err(RootError::io(p, e)),
        };
        let now = rustix::fs::fstat(&fd).ok().and_then(|s| DiskMeta::from_stat(&s));
        if !expect.matches(now.as_ref()) || now.as_ref().is_none_or(|m| m.kind != kind) {
            return Err(RootError::Changed { path: p.clone() });
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777)).map_err(|e| RootError::io(p, err(e)))?;
        if kind == EntryKind::File {
            rustix::fs::futimens(&fd, &times(mtime_ns)).map_err(|e| RootError::io(p, err(e)))?;
        }
        Ok(now.map(|m| m.ino).unwrap_or(0))
    }

    /// Removes every temp file of ours in the tree (left by a crash; their targets were
    /// never touched). Returns how many.
    pub fn sweep_temps(&self) -> usize {
        let mut n = 0;
        let Ok(root) = self.root_fd() else { return 0 };
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            n += remove_temps_in(&d);
            for (name, st) in walk::entries(&d) {
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
                    && let Ok(sub) = beneath::open_entry(&d, &name, true)
                {
                    stack.push(sub);
                }
            }
        }
        n
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

/// Removes our temp files directly inside `dir`; returns how many.
fn remove_temps_in(dir: &OwnedFd) -> usize {
    let mut n = 0;
    for (name, st) in walk::entries(dir) {
        if is_temp_name(&name) && rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory && beneath::unlink_at(dir, &name, false).is_ok() {
            n += 1;
        }
    }
    n
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
    Timestamps {
        last_access: Timespec { tv_sec: 0, tv_nsec: UTIME_NOW },
        last_modification: Timespec { tv_sec: mtime_ns.div_euclid(1_000_000_000), tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _ },
    }
}

pub fn to_systime(mtime_ns: i64) -> SystemTime {
    if mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(mtime_ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(mtime_ns.unsigned_abs())
    }
}

/// BLAKE3 of a file's content, read through `open_read`; also returns the metadata seen
/// after hashing so callers can tell whether the file changed while it was being read.
pub fn hash_file(root: &SyncRoot, p: &RelPath) -> Result<([u8; 32], DiskMeta), RootError> {
    let mut f = root.open_read(p)?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f).map_err(|e| RootError::io(p, e))?;
    let st = rustix::fs::fstat(&f).map_err(|e| RootError::io(p, err(e)))?;
    let meta = DiskMeta::from_stat(&st).ok_or_else(|| RootError::Io { path: p.clone(), source: io::Error::other("not a regular file") })?;
    Ok((*h.finalize().as_bytes(), meta))
}

#[cfg(test)]
mod tests;
