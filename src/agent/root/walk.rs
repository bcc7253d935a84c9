//! Listing a subtree of the sync root through directory descriptors: each directory is
//! opened from its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY` and each entry is
//! `fstatat`ed without following links, so a directory swapped for a symlink while the
//! scanner walks never leads it outside the root. Names that cannot be synced (not UTF-8)
//! are reported, lossily, instead of being skipped in silence.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use super::beneath::{self, err};
use super::{DiskMeta, RootError, SyncRoot};
use crate::protocol::{EntryKind, RelPath};

/// What a walk found.
#[derive(Default, Debug)]
pub struct Walked {
    /// Every syncable entry under the start (the start itself included), with its metadata.
    pub items: Vec<(RelPath, DiskMeta)>,
    /// Entries that cannot be synced because their name is not valid UTF-8 (shown lossily).
    pub unsyncable: Vec<String>,
    /// Directories that could not be read.
    pub errors: Vec<String>,
}

/// The entries of `dir` (not `.` and `..`) with their `lstat`, names as UTF-8 where they
/// are; used for temp sweeps.
pub(super) fn entries(dir: &OwnedFd) -> Vec<(String, rustix::fs::Stat)> {
    raw_entries(dir).into_iter().filter_map(|(n, s)| Some((String::from_utf8(n).ok()?, s?))).collect()
}

fn raw_entries(dir: &OwnedFd) -> Vec<(Vec<u8>, Option<rustix::fs::Stat>)> {
    let mut out = Vec::new();
    let Ok(mut d) = rustix::fs::Dir::read_from(dir) else { return out };
    while let Some(Ok(e)) = d.read() {
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let st = rustix::fs::statat(dir, e.file_name(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok();
        out.push((name.to_vec(), st));
    }
    out
}

impl SyncRoot {
    /// Walks `start` (the whole root for `None`) without following symlinks. `skip` prunes
    /// excluded paths (and their subtrees).
    pub fn walk(&self, start: Option<&RelPath>, skip: &dyn Fn(&RelPath) -> bool) -> Result<Walked, RootError> {
        let mut items = Vec::new();
        let mut w = self.walk_each(start, skip, &mut |p, m| items.push((p, m)))?;
        w.items = items;
        Ok(w)
    }

    /// `walk`, handing each entry to `each` as it is found instead of collecting them (a
    /// full scan of a large tree then holds one copy of it, not two). The returned
    /// `Walked` has no items.
    pub fn walk_each(&self, start: Option<&RelPath>, skip: &dyn Fn(&RelPath) -> bool, each: &mut dyn FnMut(RelPath, DiskMeta)) -> Result<Walked, RootError> {
        let mut out = Walked::default();
        let root = self.root_fd()?;
        let first = match start {
            None => beneath::open_dir(&root, "").map_err(|e| RootError::RootUnsafe(format!("{}: {e}", self.root.display())))?,
            Some(p) => {
                let (dir, name) = beneath::parent_of(p);
                let Some(pfd) = beneath::open_dir(&root, &dir).ok().flatten() else { return Ok(out) };
                let Some(st) = beneath::stat_at(&pfd, name).ok().flatten() else { return Ok(out) };
                let Some(meta) = DiskMeta::from_stat(&st) else { return Ok(out) };
                let is_dir = meta.kind == EntryKind::Dir;
                each(p.clone(), meta);
                if !is_dir {
                    return Ok(out);
                }
                match beneath::open_entry(&pfd, name, true) {
                    Ok(fd) => Some(fd),
                    Err(_) => return Ok(out),
                }
            }
        };
        let Some(first) = first else { return Ok(out) };
        let mut stack: Vec<(Option<RelPath>, OwnedFd)> = vec![(start.cloned(), first)];
        while let Some((dir_rel, fd)) = stack.pop() {
            for (name, st) in raw_entries(&fd) {
                let Ok(name_s) = std::str::from_utf8(&name) else {
                    let lossy = String::from_utf8_lossy(&name);
                    out.unsyncable.push(match &dir_rel {
                        Some(d) => format!("{d}/{lossy}"),
                        None => lossy.into_owned(),
                    });
                    continue;
                };
                let rel = match &dir_rel {
                    Some(d) => format!("{d}/{name_s}"),
                    None => name_s.to_owned(),
                };
                let Ok(rel) = RelPath::parse(&rel) else {
                    out.unsyncable.push(rel);
                    continue;
                };
                if skip(&rel) {
                    continue;
                }
                let Some(st) = st else { continue };
                let Some(meta) = DiskMeta::from_stat(&st) else { continue };
                if meta.kind == EntryKind::Dir {
                    match rustix::fs::openat(
                        &fd,
                        std::ffi::OsStr::from_bytes(&name),
                        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    ) {
                        Ok(sub) => stack.push((Some(rel.clone()), sub)),
                        Err(rustix::io::Errno::NOENT) => continue,
                        Err(e) => out.errors.push(format!("{rel}: {}", err(e))),
                    }
                }
                each(rel, meta);
            }
        }
        Ok(out)
    }
}
