//! Displaced files: what a replacement or a deletion takes off a name is moved into a
//! private directory next to the agent's state (`<state_dir>/displaced`, root only, outside
//! the synced folder and the web root) and kept there for a grace period before it is
//! unlinked. A process that opened the file just before the swap and writes to it afterwards
//! writes into this inode; when the grace period ends such a write is found (size, mtime or
//! ctime moved) and the content is put back next to its old name as a conflict copy named for
//! this node, instead of vanishing with the inode. Where the sync folder is on another file
//! system than the state dir, a displaced file is unlinked at once (no grace).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, RenameFlags};

use super::beneath::{self, stat_at};
use super::{DiskMeta, SyncRoot, is_temp_name, walk};
use crate::protocol::RelPath;
use crate::protocol::conflict::rescue_copy_path;

/// A displaced file waiting for its grace period to end.
pub(super) struct Buried {
    /// Its name in the graveyard directory.
    name: String,
    /// The name it had in the sync folder.
    path: RelPath,
    /// Its state right after it was moved aside.
    meta: DiskMeta,
    until: Instant,
}

/// How long a displaced file is kept before it is unlinked.
pub const GRACE: Duration = Duration::from_secs(5);

/// Opens (creating it, mode 0700) the graveyard directory and empties it: what a crash left
/// there was displaced before the crash and its grace period is over.
pub(super) fn open(dir: &Path) -> std::io::Result<Arc<OwnedFd>> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => std::fs::remove_file(dir)?,
        Err(_) => {}
    }
    let _ = std::fs::create_dir(dir);
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(beneath::err)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(beneath::err)?;
    for (name, _) in walk::entries(&fd) {
        let _ = beneath::unlink_at(&fd, &name, false);
    }
    Ok(Arc::new(fd))
}

impl SyncRoot {
    /// Takes `name` (in `dir`, which held `path`) off the folder: into the graveyard for the
    /// grace period, or unlinked at once when there is none.
    pub(super) fn bury(&self, dir: &OwnedFd, name: &str, path: &RelPath) {
        if let Some(g) = &self.graveyard_dir {
            let grave = format!("{:016x}", rand::random::<u64>());
            if beneath::rename_at(dir, name, g, &grave, RenameFlags::NOREPLACE).is_ok() {
                // Its state once in the graveyard (the move itself changed its ctime).
                match stat_at(g, &grave).ok().flatten().and_then(|s| DiskMeta::from_stat(&s)) {
                    Some(meta) => self.graveyard.lock().expect("BUG: poisoned").push(Buried { name: grave, path: path.clone(), meta, until: Instant::now() + GRACE }),
                    None => {
                        let _ = beneath::unlink_at(g, &grave, false);
                    }
                }
                return;
            }
        }
        let _ = beneath::unlink_at(dir, name, false);
    }

    /// When the next displaced file's grace period ends.
    pub fn next_reap(&self) -> Option<Instant> {
        self.graveyard.lock().expect("BUG: poisoned").iter().map(|b| b.until).min()
    }

    /// Unlinks displaced files whose grace period is over (all of them with `all`); those
    /// written to meanwhile are put back as conflict copies, returned for the scanner.
    pub fn reap(&self, all: bool, node: &str) -> Vec<RelPath> {
        let Some(g) = &self.graveyard_dir else { return Vec::new() };
        let now = Instant::now();
        let due: Vec<Buried> = {
            let mut list = self.graveyard.lock().expect("BUG: poisoned");
            let (due, keep): (Vec<Buried>, Vec<Buried>) = list.drain(..).partition(|b| all || b.until <= now);
            *list = keep;
            due
        };
        let mut rescued = Vec::new();
        for b in due {
            let Some(now_meta) = stat_at(g, &b.name).ok().flatten().and_then(|s| DiskMeta::from_stat(&s)) else { continue };
            if !now_meta.same_state(&b.meta) {
                let copy = rescue_copy_path(&b.path, node, crate::agent::scan::now_ns(), rand::random());
                if let Ok((dir, name)) = self.parent_created(&copy)
                    && beneath::rename_at(g, &b.name, &dir, &name, RenameFlags::NOREPLACE).is_ok()
                {
                    rescued.push(copy);
                    continue;
                }
            }
            let _ = beneath::unlink_at(g, &b.name, false);
        }
        rescued
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
}

/// Removes our temp files directly inside `dir`; returns how many.
pub(super) fn remove_temps_in(dir: &OwnedFd) -> usize {
    let mut n = 0;
    for (name, st) in walk::entries(dir) {
        if is_temp_name(&name) && rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory && beneath::unlink_at(dir, &name, false).is_ok() {
            n += 1;
        }
    }
    n
}
