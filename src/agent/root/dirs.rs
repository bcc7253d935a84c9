//! Directories of one batch, each resolved once. A page of a thousand files in a few
//! directories opened the root by its canonical path and the file's directory beneath it
//! twice per file (to create the temp file, and again to check before installing it), and
//! `fstat`ed the directory for the owner of every new file: ten of the receiver's system
//! calls per file. `Dirs` holds each directory of the batch once, opened exactly as
//! `SyncRoot::dir` does (`openat2` beneath the root, no symlinks), and its owner.
//!
//! Held descriptors give nothing away: a temp file was already written through a held
//! descriptor of its directory, and if the user moves that directory meanwhile the file
//! lands where the directory now is (inside whatever the user could write to) and is
//! never installed in it; before installing, `verify` resolves each directory by its path
//! once more and compares the inode (`install` did that per file). Nothing is cached
//! across batches, and a directory that does not exist is remembered as missing only by
//! `Lookups`, which only reads. Two write threads that opened the same path as different
//! directories (the user replaced it between their opens) may see one of them refused as
//! `Changed`; it is retried like any other.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use super::beneath::{self, parent_of};
use super::{RootError, SyncRoot, dir_beneath, same_inode};
use crate::protocol::RelPath;

#[derive(Default)]
pub(super) struct Dirs {
    root: Option<OwnedFd>,
    open: HashMap<String, Arc<OwnedFd>>,
    owners: HashMap<String, Option<(u32, u32)>>,
    verified: HashMap<String, Still>,
    /// Only for reads (`parent_or_none`).
    missing: std::collections::HashSet<String>,
}

/// How a held directory compares with what its path now leads to.
enum Still {
    Same,
    /// Moved, removed or replaced: what was written in it is not installed.
    Moved,
    /// Resolving the path failed (an errno; a symlink in the way is an escape).
    Failed(i32),
}

impl Dirs {
    fn root(&mut self, r: &SyncRoot) -> Result<&OwnedFd, RootError> {
        if self.root.is_none() {
            self.root = Some(r.root_fd()?);
        }
        Ok(self.root.as_ref().expect("BUG: set above"))
    }

    /// `p`'s directory (held) and last component; `None` if the directory does not exist.
    pub(super) fn parent(&mut self, r: &SyncRoot, p: &RelPath) -> Result<Option<(Arc<OwnedFd>, String)>, RootError> {
        let (dir, name) = parent_of(p);
        if let Some(fd) = self.open.get(&dir) {
            return Ok(Some((fd.clone(), name.to_owned())));
        }
        let Some(fd) = dir_beneath(self.root(r)?, &dir, p)? else { return Ok(None) };
        let fd = Arc::new(fd);
        self.open.insert(dir, fd.clone());
        Ok(Some((fd, name.to_owned())))
    }

    /// `parent` for reads: a directory found missing stays missing for this `Dirs`.
    pub(super) fn parent_or_none(&mut self, r: &SyncRoot, p: &RelPath) -> Result<Option<(Arc<OwnedFd>, String)>, RootError> {
        let dir = parent_of(p).0;
        if self.missing.contains(&dir) {
            return Ok(None);
        }
        let found = self.parent(r, p)?;
        if found.is_none() {
            self.missing.insert(dir);
        }
        Ok(found)
    }

    /// `parent`, with the directory created (as `SyncRoot::mkdir` does) if missing.
    pub(super) fn parent_created(&mut self, r: &SyncRoot, p: &RelPath) -> Result<(Arc<OwnedFd>, String), RootError> {
        if let Some(x) = self.parent(r, p)? {
            return Ok(x);
        }
        let parent = p.parent().expect("BUG: a top-level path's parent is the root, which exists");
        r.mkdir(&parent, 0o755)?;
        self.parent(r, p)?.ok_or_else(|| RootError::Io { path: p.clone(), source: std::io::Error::other("its directory vanished while it was being created") })
    }

    /// The owner new entries of `p`'s directory get (`beneath::owner_for`), looked up once.
    pub(super) fn owner(&mut self, p: &RelPath, dir: &OwnedFd) -> Option<(u32, u32)> {
        let key = parent_of(p).0;
        *self.owners.entry(key).or_insert_with(|| beneath::owner_for(dir))
    }

    /// Whether the directory held for `p` is still the one at its path (resolved afresh
    /// once per batch, before its installs).
    pub(super) fn verify(&mut self, r: &SyncRoot, p: &RelPath, held: &OwnedFd) -> Result<(), RootError> {
        let dir = parent_of(p).0;
        if !self.verified.contains_key(&dir) {
            let root = r.root_fd()?;
            let still = match beneath::open_dir(&root, &dir) {
                Ok(Some(now)) if same_inode(&now, held) => Still::Same,
                Ok(_) => Still::Moved,
                Err(e) => Still::Failed(e.raw_os_error().unwrap_or(libc::EIO)),
            };
            self.verified.insert(dir.clone(), still);
        }
        match self.verified.get(&dir).expect("BUG: inserted above") {
            Still::Same => Ok(()),
            Still::Moved => Err(RootError::Changed { path: p.clone() }),
            Still::Failed(errno) => {
                let e = std::io::Error::from_raw_os_error(*errno);
                Err(if beneath::is_escape(&e) { RootError::Escapes { path: p.clone(), parent: dir } } else { RootError::io(p, e) })
            }
        }
    }
}
