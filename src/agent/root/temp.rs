//! Temp files and installing content: a temp file is created `O_EXCL | O_NOFOLLOW` in the
//! held directory of its target, written, made durable, and swapped into place only if the
//! target is still in the state the decision saw (see the module above).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags, RenameFlags};

use super::beneath::{self, err, os, parent_of, stat_at};
use super::dirs::Dirs;
use super::{DiskMeta, Expect, RootError, SyncRoot, temp_name, times};
use crate::protocol::{EntryKind, RelPath};

/// A temp file next to its target, created `O_EXCL | O_NOFOLLOW` in a held directory.
/// Dropped without being installed, it is removed at once (through the directory
/// descriptor, so even if the user moved the directory meanwhile). It is closed before it
/// is renamed onto its name: closed after, its close-after-write event named the target,
/// and every received file came back from the watcher once more.
pub struct TempFile {
    pub path: RelPath,
    dir: Arc<OwnedFd>,
    name: String,
    /// Open until installed.
    file: Option<File>,
    armed: bool,
}

impl TempFile {
    /// Sets permission bits, owner (the target's if it is a file, else its directory's) and
    /// mtime on the temp file, ready to be made durable and installed.
    pub fn finish(&mut self, mode: u32, mtime_ns: i64) -> io::Result<()> {
        self.finish_in(mode, mtime_ns, &mut Dirs::default())
    }

    /// `finish`, with the directory's owner looked up once per batch (`dirs`).
    pub(super) fn finish_in(&mut self, mode: u32, mtime_ns: i64, dirs: &mut Dirs) -> io::Result<()> {
        let target = parent_of(&self.path).1.to_owned();
        let owner = match stat_at(&self.dir, &target)? {
            Some(s) if rustix::fs::FileType::from_raw_mode(s.st_mode) == rustix::fs::FileType::RegularFile && beneath::is_root() => Some((s.st_uid, s.st_gid)),
            _ => dirs.owner(&self.path, &self.dir),
        };
        beneath::chown_fd(self.file(), owner)?;
        rustix::fs::fchmod(self.file(), Mode::from_raw_mode(mode & 0o777)).map_err(err)?;
        rustix::fs::futimens(self.file(), &times(mtime_ns)).map_err(err)
    }

    /// The open temp file.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("BUG: a temp file is open until it is installed")
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file().sync_all()
    }

    pub fn ino(&self) -> io::Result<u64> {
        rustix::fs::fstat(self.file()).map(|s| s.st_ino).map_err(err)
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

impl SyncRoot {
    /// Opens a new temp file next to `p` (its directory is created if missing).
    pub fn create_temp(&self, p: &RelPath) -> Result<TempFile, RootError> {
        self.create_temp_in(p, &mut Dirs::default())
    }

    /// `create_temp`, in a directory resolved once per batch (`dirs`).
    pub(super) fn create_temp_in(&self, p: &RelPath, dirs: &mut Dirs) -> Result<TempFile, RootError> {
        let (dir, name) = dirs.parent_created(self, p)?;
        for _ in 0..8 {
            let tmp = temp_name(&name);
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(&dir, os(&tmp), flags, Mode::from_raw_mode(0o600)) {
                Ok(fd) => return Ok(TempFile { path: p.clone(), dir, name: tmp, file: Some(File::from(fd)), armed: true }),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(RootError::io(p, err(e))),
            }
        }
        Err(RootError::Io { path: p.clone(), source: io::Error::other("could not pick a temp file name") })
    }

    /// Puts a finished, durable temp file at its path if the path is still in the state
    /// `expect` names; returns the new inode. On `Changed` (and any error) the temp file is
    /// removed and whatever is at the path stays.
    pub fn install(&self, tmp: TempFile, expect: &Expect) -> Result<u64, RootError> {
        self.install_in(tmp, expect, &mut Dirs::default())
    }

    /// `install`, with the directory checked once per batch (`dirs`).
    pub(super) fn install_in(&self, mut tmp: TempFile, expect: &Expect, dirs: &mut Dirs) -> Result<u64, RootError> {
        let p = tmp.path.clone();
        let ino = tmp.ino().map_err(|e| RootError::io(&p, e))?;
        // The directory the temp file was made in must still be the one at the path's place
        // (the user may have moved it meanwhile).
        dirs.verify(self, &p, &tmp.dir)?;
        let name = parent_of(&p).1.to_owned();
        tmp.file = None;
        self.swap_in(&tmp.dir, &tmp.name, &name, &p, expect)?;
        tmp.armed = false;
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
                    self.bury(dir, from_name, p);
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
        tmp.file().write_all(data).map_err(|e| RootError::io(p, e))?;
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
}
