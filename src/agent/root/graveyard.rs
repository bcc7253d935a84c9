//! Displaced files: what a replacement or a deletion takes off a name is moved (renamed, never
//! copied) into a private directory next to the agent's state, root only, outside the synced
//! folder and the web root: `<state_dir>/versions/data` when versions are kept (see
//! `agent::versions`), else `<state_dir>/displaced`. It stays there for a grace period: a
//! process that opened the file just before the swap and writes to it afterwards writes into
//! this inode; when the grace period ends such a write is found (size, mtime or ctime moved)
//! and the content is put back next to its old name as a conflict copy named for this node,
//! instead of vanishing with the inode. What is left untouched is then unlinked, or, in the
//! versions area, handed to the keeper (`take_settled`), which keeps it as a version or
//! drops it (`drop_version`).
//!
//! Each displaced file is named by an id (`{id:016x}`, increasing with time) and remembers
//! why it was displaced (`Cause`: which node's change, replaced or deleted, the content's
//! hash when the index knew it), noted by the inbound path just before it acts
//! (`displacing`). The keeper records new ones (`take_graves`) before the change that
//! displaced them is recorded in the index. Where the sync folder is on another file system
//! than the state dir, a displaced file is unlinked at once (no grace, no versions).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags, RenameFlags};

use super::beneath::{self, stat_at};
use super::{DiskMeta, SyncRoot, is_temp_name, walk};
use crate::protocol::RelPath;
use crate::protocol::conflict::rescue_copy_path;
use crate::protocol::versions::Cause as CauseKind;

/// How long a displaced file is kept before it is unlinked or kept as a version.
pub const GRACE: Duration = Duration::from_secs(5);

/// Why a file is taken off its name.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// The node whose change it is.
    pub by: String,
    pub kind: CauseKind,
    /// BLAKE3 of the displaced content, when the index knew it (it was what the decision saw).
    pub hash: Option<[u8; 32]>,
    /// BLAKE3 of the content that replaced it.
    pub new_hash: Option<[u8; 32]>,
}

impl Default for Cause {
    fn default() -> Cause {
        Cause { by: String::new(), kind: CauseKind::Other, hash: None, new_hash: None }
    }
}

/// A displaced file as the keeper sees it.
#[derive(Debug, Clone)]
pub struct Grave {
    /// Its name in the graveyard (`{id:016x}`).
    pub id: u64,
    /// The name it had in the sync folder.
    pub path: RelPath,
    /// Its state right after it was moved aside (the move itself changed its ctime).
    pub meta: DiskMeta,
    pub cause: Cause,
    /// When it was displaced (Unix ns).
    pub at_ns: i64,
}

struct Buried {
    grave: Grave,
    until: Instant,
    /// Handed to the keeper by `take_graves`.
    reported: bool,
}

#[derive(Default)]
struct Inner {
    buried: Vec<Buried>,
    causes: HashMap<RelPath, Cause>,
    /// Kept versions whose grace period ended untouched, for the keeper.
    settled: Vec<Grave>,
    /// Ids that were rescued as conflict copies (no longer versions).
    rescued: Vec<u64>,
}

/// The graveyard of one `SyncRoot`.
#[derive(Default)]
pub(super) struct Graveyard {
    dir: Option<OwnedFd>,
    /// Whether files that end their grace untouched are kept (the versions area) or unlinked.
    keeps: bool,
    inner: Mutex<Inner>,
    last_id: AtomicU64,
}

/// Opens (creating it, mode 0700, never through a link) a private directory.
fn open_dir(dir: &Path) -> std::io::Result<OwnedFd> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => std::fs::remove_file(dir)?,
        Err(_) => {}
    }
    let _ = std::fs::create_dir(dir);
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(beneath::err)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700)).map_err(beneath::err)?;
    Ok(fd)
}

fn same_fs(a: &OwnedFd, b: Option<&OwnedFd>) -> bool {
    match (rustix::fs::fstat(a), b.map(rustix::fs::fstat)) {
        (Ok(x), Some(Ok(y))) => x.st_dev == y.st_dev,
        _ => false,
    }
}

fn name_of(id: u64) -> String {
    format!("{id:016x}")
}

impl Graveyard {
    /// The displaced-files directory `dir` (what a crash left there is dealt with by
    /// `recover_displaced` at start-up); `None` inside when it is on another file system
    /// than `root`.
    pub(super) fn open(dir: &Path, root: Option<&OwnedFd>) -> std::io::Result<Graveyard> {
        let fd = open_dir(dir)?;
        Ok(Graveyard { dir: same_fs(&fd, root).then_some(fd), ..Graveyard::default() })
    }

    fn new_id(&self) -> u64 {
        let now = crate::agent::scan::now_ns().max(0) as u64;
        let prev = self.last_id.fetch_max(now, Ordering::SeqCst);
        if prev >= now { self.last_id.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
    }
}

impl SyncRoot {
    /// Keeps displaced files in `dir` (the versions area's data directory, not emptied: its
    /// files are versions) instead of the displaced-files directory. Refused when `dir` is on
    /// another file system than the sync root (a rename could not get the file there).
    pub fn keep_displaced_in(mut self, dir: &Path) -> std::io::Result<SyncRoot> {
        let fd = open_dir(dir)?;
        if !same_fs(&fd, self.root_fd().ok().as_ref()) {
            return Err(std::io::Error::other(format!("{} is on another file system than the sync root", dir.display())));
        }
        self.graveyard = std::sync::Arc::new(Graveyard { dir: Some(fd), keeps: true, ..Graveyard::default() });
        Ok(self)
    }

    /// Whether displaced files go through the versions area.
    pub fn keeps_versions(&self) -> bool {
        self.graveyard.keeps && self.graveyard.dir.is_some()
    }

    /// Notes why `path` is about to be displaced (the next `bury` of it takes this cause).
    pub fn displacing(&self, path: &RelPath, cause: Cause) {
        if self.graveyard.dir.is_some() {
            self.graveyard.inner.lock().expect("BUG: poisoned").causes.insert(path.clone(), cause);
        }
    }

    /// Takes `name` (in `dir`, which held `path`) off the folder: into the graveyard for the
    /// grace period, or unlinked at once when there is none.
    pub(super) fn bury(&self, dir: &OwnedFd, name: &str, path: &RelPath) {
        let g = &self.graveyard;
        if let Some(gd) = &g.dir {
            let cause = g.inner.lock().expect("BUG: poisoned").causes.remove(path).unwrap_or_default();
            for _ in 0..4 {
                let id = g.new_id();
                match beneath::rename_at(dir, name, gd, &name_of(id), RenameFlags::NOREPLACE) {
                    Ok(()) => {
                        match stat_at(gd, &name_of(id)).ok().flatten().and_then(|s| DiskMeta::from_stat(&s)) {
                            Some(meta) => {
                                let grave = Grave { id, path: path.clone(), meta, cause, at_ns: crate::agent::scan::now_ns() };
                                g.inner.lock().expect("BUG: poisoned").buried.push(Buried { grave, until: Instant::now() + GRACE, reported: false });
                            }
                            None => {
                                let _ = beneath::unlink_at(gd, &name_of(id), false);
                            }
                        }
                        return;
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                    Err(_) => break,
                }
            }
        }
        let _ = beneath::unlink_at(dir, name, false);
    }

    /// Files displaced since the last call (for the keeper to record), and forgets causes
    /// noted for paths that were not displaced after all.
    pub fn take_graves(&self) -> Vec<Grave> {
        let mut inner = self.graveyard.inner.lock().expect("BUG: poisoned");
        inner.causes.clear();
        inner
            .buried
            .iter_mut()
            .filter(|b| !b.reported)
            .map(|b| {
                b.reported = true;
                b.grave.clone()
            })
            .collect()
    }

    /// Versions whose grace period ended untouched, and ids rescued as conflict copies, since
    /// the last call.
    pub fn take_settled(&self) -> (Vec<Grave>, Vec<u64>) {
        let mut inner = self.graveyard.inner.lock().expect("BUG: poisoned");
        (std::mem::take(&mut inner.settled), std::mem::take(&mut inner.rescued))
    }

    /// When the next displaced file's grace period ends.
    pub fn next_reap(&self) -> Option<Instant> {
        self.graveyard.inner.lock().expect("BUG: poisoned").buried.iter().map(|b| b.until).min()
    }

    /// Ends the grace period of displaced files whose time is up (all of them with `all`):
    /// those written to meanwhile are put back as conflict copies, returned for the scanner;
    /// the others are unlinked, or left to the keeper in the versions area.
    pub fn reap(&self, all: bool, node: &str) -> Vec<crate::protocol::RelPath> {
        let g = &self.graveyard;
        let Some(gd) = &g.dir else { return Vec::new() };
        let now = Instant::now();
        let due: Vec<Buried> = {
            let mut inner = g.inner.lock().expect("BUG: poisoned");
            let (due, keep): (Vec<Buried>, Vec<Buried>) = inner.buried.drain(..).partition(|b| all || b.until <= now);
            inner.buried = keep;
            due
        };
        let mut rescued = Vec::new();
        for b in due {
            let name = name_of(b.grave.id);
            let Some(now_meta) = stat_at(gd, &name).ok().flatten().and_then(|s| DiskMeta::from_stat(&s)) else { continue };
            if !now_meta.same_state(&b.grave.meta) {
                if let Some(copy) = self.rescue(gd, &name, &b.grave.path, node) {
                    rescued.push(copy);
                    g.inner.lock().expect("BUG: poisoned").rescued.push(b.grave.id);
                    continue;
                }
                if g.keeps {
                    // Kept with what it holds now; its recorded hash no longer applies.
                    let mut grave = b.grave;
                    grave.meta = now_meta;
                    grave.cause.hash = None;
                    g.inner.lock().expect("BUG: poisoned").settled.push(grave);
                    continue;
                }
            } else if g.keeps {
                g.inner.lock().expect("BUG: poisoned").settled.push(b.grave);
                continue;
            }
            let _ = beneath::unlink_at(gd, &name, false);
        }
        rescued
    }

    /// Puts `name` (in the graveyard) back beside `path` as a conflict copy named for `node`.
    fn rescue(&self, gd: &OwnedFd, name: &str, path: &RelPath, node: &str) -> Option<RelPath> {
        let copy = rescue_copy_path(path, node, crate::agent::scan::now_ns(), rand::random());
        let (dir, cname) = self.parent_created(&copy).ok()?;
        beneath::rename_at(gd, name, &dir, &cname, RenameFlags::NOREPLACE).ok()?;
        self.sync_dir_of(&copy);
        Some(copy)
    }

    /// The ids in the versions area, each with its state and allocated bytes (for the
    /// keeper's recovery and accounting).
    pub fn version_files(&self) -> Vec<(u64, DiskMeta, u64)> {
        let Some(gd) = self.graveyard.dir.as_ref().filter(|_| self.graveyard.keeps) else { return Vec::new() };
        let mut out = Vec::new();
        for (name, st) in walk::entries(gd) {
            match (u64::from_str_radix(&name, 16), DiskMeta::from_stat(&st)) {
                (Ok(id), Some(m)) if name.len() == 16 && m.kind == crate::protocol::EntryKind::File => out.push((id, m, st.st_blocks as u64 * 512)),
                // Not a version: nothing else belongs here.
                _ => {
                    let _ = beneath::unlink_at(gd, &name, rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory);
                }
            }
        }
        if let Some(max) = out.iter().map(|(id, _, _)| *id).max() {
            self.graveyard.last_id.fetch_max(max, Ordering::SeqCst);
        }
        out
    }

    /// State and allocated bytes of one version, `None` if it is gone.
    pub fn version_stat(&self, id: u64) -> Option<(DiskMeta, u64)> {
        let gd = self.graveyard.dir.as_ref()?;
        let st = stat_at(gd, &name_of(id)).ok().flatten()?;
        Some((DiskMeta::from_stat(&st)?, st.st_blocks as u64 * 512))
    }

    /// Opens a version for reading (never through a link, never blocking on a FIFO).
    pub fn open_version(&self, id: u64) -> std::io::Result<File> {
        let gd = self.graveyard.dir.as_ref().ok_or_else(|| std::io::Error::other("no versions area"))?;
        let fd = beneath::open_entry(gd, &name_of(id), false)?;
        rustix::fs::fcntl_setfl(&fd, OFlags::RDONLY).map_err(beneath::err)?;
        Ok(File::from(fd))
    }

    /// Removes a version's content.
    pub fn drop_version(&self, id: u64) {
        if let Some(gd) = &self.graveyard.dir {
            let _ = beneath::unlink_at(gd, &name_of(id), false);
        }
    }

    /// Start-up, before anything is displaced: ends what a crash left in the displaced-files
    /// directory `dir` (not the versions area). A file `written_after` names a path for (a
    /// writer reached it after it was displaced, so the index never saw its content) is put
    /// back beside that path as a conflict copy; the rest was displaced content the index
    /// knew and is unlinked. Returns the copies.
    pub fn recover_displaced(&self, dir: &Path, node: &str, written_after: &dyn Fn(&DiskMeta) -> Option<RelPath>) -> Vec<RelPath> {
        let Ok(fd) = open_dir(dir) else { return Vec::new() };
        let mut copies = Vec::new();
        for (name, st) in walk::entries(&fd) {
            let meta = DiskMeta::from_stat(&st).filter(|m| m.kind == crate::protocol::EntryKind::File);
            if let Some(path) = meta.as_ref().and_then(written_after)
                && let Some(copy) = self.rescue(&fd, &name, &path, node)
            {
                copies.push(copy);
                continue;
            }
            let _ = beneath::unlink_at(&fd, &name, rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory);
        }
        copies
    }

    /// Puts a version that was written to after it was displaced back beside `path` as a
    /// conflict copy (recovery after a crash during its grace period).
    pub fn rescue_version(&self, id: u64, path: &RelPath, node: &str) -> Option<RelPath> {
        let gd = self.graveyard.dir.as_ref()?;
        self.rescue(gd, &name_of(id), path, node)
    }

    /// Free and total bytes of the file system the versions live on.
    pub fn versions_fs_space(&self) -> Option<(u64, u64)> {
        let gd = self.graveyard.dir.as_ref()?;
        let s = rustix::fs::fstatvfs(gd).ok()?;
        Some((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
    }

    /// Makes the versions area's renames durable.
    pub fn sync_versions_dir(&self) {
        if let Some(gd) = &self.graveyard.dir {
            let _ = rustix::fs::fsync(gd);
        }
    }

    /// Removes every temp file of ours in the tree (left by a crash; their targets were
    /// never touched). Returns how many.
    pub fn sweep_temps(&self) -> usize {
        self.sweep_temps_keeping(&|_| false).0
    }

    /// `sweep_temps`, except that a temp file `adopt` recognises (content a replacement or a
    /// deletion had just moved aside when the agent stopped, before it reached the
    /// graveyard) goes into the versions area, where start-up recovery records it. Returns
    /// how many were removed and how many kept.
    pub fn sweep_temps_keeping(&self, adopt: &dyn Fn(&DiskMeta) -> bool) -> (usize, usize) {
        let (mut n, mut kept) = (0, 0);
        let Ok(root) = self.root_fd() else { return (0, 0) };
        let gd = self.graveyard.dir.as_ref().filter(|_| self.graveyard.keeps);
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            if let Some(gd) = gd {
                for (name, st) in walk::entries(&d) {
                    if is_temp_name(&name)
                        && DiskMeta::from_stat(&st).is_some_and(|m| m.kind == crate::protocol::EntryKind::File && adopt(&m))
                        && beneath::rename_at(&d, &name, gd, &name_of(self.graveyard.new_id()), RenameFlags::NOREPLACE).is_ok()
                    {
                        kept += 1;
                    }
                }
            }
            n += remove_temps_in(&d);
            for (name, st) in walk::entries(&d) {
                if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
                    && let Ok(sub) = beneath::open_entry(&d, &name, true)
                {
                    stack.push(sub);
                }
            }
        }
        (n, kept)
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
