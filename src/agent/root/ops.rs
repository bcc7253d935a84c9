//! Creating directories, deleting, renaming and setting metadata inside the root, each
//! against the state it expects to find.

use std::io;

use rustix::fs::{Mode, RenameFlags};

use super::beneath::{self, err, os, stat_at};
use super::{DiskMeta, Expect, Removed, RootError, SyncRoot, temp_name, times};
use crate::protocol::{EntryKind, RelPath};

impl SyncRoot {
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
            super::graveyard::remove_temps_in(&sub);
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
            self.bury(&dir, &aside, p);
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
}
