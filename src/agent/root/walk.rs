//! Listing a subtree of the sync root through directory descriptors: each directory is
//! opened from its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY` and each entry is
//! `fstatat`ed without following links, so a directory swapped for a symlink while the
//! scanner walks never leads it outside the root. Names that cannot be synced (not UTF-8)
//! are reported, lossily, instead of being skipped in silence.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use super::beneath::{self, err};
use super::{DiskMeta, RootError, SyncRoot};
use crate::protocol::{EntryKind, RelPath};

/// A directory whose turn in the walk has not come: open already (where it starts), or to
/// be opened by name from its parent.
enum Pending {
    Open(OwnedFd),
    Sub(Rc<OwnedFd>, Vec<u8>),
}

/// What a walk found.
#[derive(Default, Debug)]
pub struct Walked {
    /// Every syncable entry under the start (the start itself included), with its metadata.
    pub items: Vec<(RelPath, DiskMeta)>,
    /// Entries that cannot be synced because their name is not valid UTF-8 (shown lossily).
    pub unsyncable: Vec<String>,
    /// Directories that could not be read.
    pub errors: Vec<String>,
    /// Subtrees whose listing is not complete (a directory or an entry that could not be
    /// opened, listed or stat-ed for another reason than being gone; `None`: the whole
    /// start): what is missing under them was not seen, it is not known to be deleted.
    pub incomplete: Vec<Option<RelPath>>,
    /// Directories listed but gone (moved away, replaced) when their turn came to be read:
    /// reported as listed, nothing under them seen. Not an error (the move's own events
    /// bring a scan that sees both its halves), but nothing under them is known deleted
    /// either: a scan that took them for deleted announced a folder renamed during a full
    /// scan as a mass delete.
    pub raced: Vec<RelPath>,
}

/// Errors that mean a path is not there as a directory: gone, or replaced by a file or a
/// symlink. Any other (out of descriptors or memory, I/O error, permission) leaves a walk
/// incomplete.
fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP))
}

/// The entries of `dir` (not `.` and `..`) with their `lstat`, names as UTF-8 where they
/// are; used for temp sweeps.
pub(super) fn entries(dir: &OwnedFd) -> Vec<(String, rustix::fs::Stat)> {
    raw_entries(dir).0.into_iter().filter_map(|(n, s)| Some((String::from_utf8(n).ok()?, s?))).collect()
}

/// A name as listed, with its `lstat` (`None`: gone since it was listed).
type RawEntry = (Vec<u8>, Option<rustix::fs::Stat>);

/// The entries of `dir` with their `lstat` (`None`: gone since it was listed), and the
/// first error that made the list incomplete (listing, or an `lstat` failing otherwise).
fn raw_entries(dir: &OwnedFd) -> (Vec<RawEntry>, Option<std::io::Error>) {
    let mut out = Vec::new();
    let mut d = match rustix::fs::Dir::read_from(dir) {
        Ok(d) => d,
        Err(e) => return (out, Some(err(e))),
    };
    let mut first = None;
    while let Some(e) = d.read() {
        let e = match e {
            Ok(e) => e,
            Err(e) => return (out, Some(err(e))),
        };
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let st = match rustix::fs::statat(dir, e.file_name(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(st),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => {
                first.get_or_insert(err(e));
                continue;
            }
        };
        out.push((name.to_vec(), st));
    }
    (out, first)
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
            None => beneath::open_dir(&root, "").map_err(|e| self.unsafe_root(e))?,
            Some(p) => {
                let unread = |out: &mut Walked, e: std::io::Error| {
                    if gone(&e) {
                        out.raced.push(p.clone());
                    } else {
                        out.errors.push(format!("{p}: {e}"));
                        out.incomplete.push(Some(p.clone()));
                    }
                };
                let (dir, name) = beneath::parent_of(p);
                let pfd = match beneath::open_dir(&root, &dir) {
                    Ok(Some(fd)) => fd,
                    Ok(None) => return Ok(out),
                    Err(e) => {
                        unread(&mut out, e);
                        return Ok(out);
                    }
                };
                let st = match beneath::stat_at(&pfd, name) {
                    Ok(Some(st)) => st,
                    Ok(None) => return Ok(out),
                    Err(e) => {
                        unread(&mut out, e);
                        return Ok(out);
                    }
                };
                let Some(meta) = DiskMeta::from_stat(&st) else { return Ok(out) };
                let is_dir = meta.kind == EntryKind::Dir;
                each(p.clone(), meta);
                if !is_dir {
                    return Ok(out);
                }
                match beneath::open_entry(&pfd, name, true) {
                    Ok(fd) => Some(fd),
                    Err(e) => {
                        unread(&mut out, e);
                        return Ok(out);
                    }
                }
            }
        };
        let Some(first) = first else { return Ok(out) };
        // Depth first; a directory is opened when its turn comes, from its parent's
        // descriptor, which stays open while any of its subdirectories wait: a walk holds
        // one descriptor per level, not one per directory waiting (a folder with more
        // subdirectories than the agent had descriptors to spare was never read whole).
        let mut stack: Vec<(Option<RelPath>, Pending)> = vec![(start.cloned(), Pending::Open(first))];
        while let Some((dir_rel, pending)) = stack.pop() {
            let fd = match pending {
                Pending::Open(fd) => Rc::new(fd),
                Pending::Sub(parent, name) => match rustix::fs::openat(
                    &*parent,
                    std::ffi::OsStr::from_bytes(&name),
                    rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                ) {
                    Ok(sub) => Rc::new(sub),
                    // (moved away or replaced by a link or a file since it was listed: its
                    // events bring the scan back)
                    Err(e) if gone(&err(e)) => {
                        out.raced.push(dir_rel.expect("only subdirectories wait to be opened"));
                        continue;
                    }
                    Err(e) => {
                        let rel = dir_rel.expect("only subdirectories wait to be opened");
                        out.errors.push(format!("{rel}: {}", err(e)));
                        out.incomplete.push(Some(rel));
                        continue;
                    }
                },
            };
            let (entries, failed) = raw_entries(&fd);
            if let Some(e) = failed {
                out.errors.push(format!("{}: {e}", dir_rel.as_ref().map_or("the sync folder", |d| d.as_str())));
                out.incomplete.push(dir_rel.clone());
            }
            for (name, st) in entries {
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
                let Some(st) = st else {
                    // (gone since it was listed: a folder renamed in place must not be
                    // taken for deleted with its subtree; its events bring the scan back)
                    out.raced.push(rel);
                    continue;
                };
                let Some(meta) = DiskMeta::from_stat(&st) else { continue };
                if meta.kind == EntryKind::Dir {
                    stack.push((Some(rel.clone()), Pending::Sub(Rc::clone(&fd), name)));
                }
                each(rel, meta);
            }
        }
        Ok(out)
    }
}
