//! Resolving paths beneath the sync root without ever following a symlink, and the few
//! descriptor-relative system calls the rest of `root` is built from.
//!
//! Every operation starts from a fresh descriptor of the root, opened by its canonical path
//! with `RESOLVE_NO_SYMLINKS` (so a web user who swaps the root, or any directory above it,
//! for a symlink gets a refusal instead of a sync folder in `/etc`), then opens the target's
//! parent with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: the kernel refuses any
//! symlink or `..` on the way, atomically, so a symlink planted between a check and a use
//! cannot redirect the write. The final component is then used through `*at` calls with
//! `AT_SYMLINK_NOFOLLOW` / `O_NOFOLLOW` on that parent descriptor.
//!
//! `openat2` (Linux 5.6+) was chosen over `cap-std` because the agent needs descriptor-level
//! control that cap-std hides: `renameat2` with `RENAME_EXCHANGE` / `RENAME_NOREPLACE` inside
//! one held parent, `fstat` of a displaced file, `fchown` to the parent's owner, `syncfs`.
//! Where `openat2` is missing (old kernels) the same guarantee comes from a walk that opens
//! one component at a time with `O_NOFOLLOW | O_DIRECTORY`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::protocol::RelPath;

/// Set once `openat2` answered ENOSYS: the per-component walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

pub(super) fn err(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens the root directory by its canonical path, refusing any symlink on the way.
pub(super) fn open_root(canonical: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(rustix::fs::CWD, canonical, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            r => return r.map_err(err),
        }
    }
    // Walk from `/`, one component at a time, never following a link.
    let mut cur = rustix::fs::open("/", flags, Mode::empty()).map_err(err)?;
    for c in canonical.components().skip(1) {
        cur = rustix::fs::openat(&cur, c.as_os_str(), flags | OFlags::NOFOLLOW, Mode::empty()).map_err(err)?;
    }
    Ok(cur)
}

/// Opens the directory `rel` (a `/`-separated path, `""` for the root itself) beneath
/// `root`, refusing symlinks and escapes. `Ok(None)` if a component does not exist.
pub(super) fn open_dir(root: &OwnedFd, rel: &str) -> io::Result<Option<OwnedFd>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    if rel.is_empty() {
        return rustix::fs::openat(root, ".", flags, Mode::empty()).map(Some).map_err(err);
    }
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match rustix::fs::openat2(root, rel, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS) {
            Ok(fd) => return Ok(Some(fd)),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            Err(e) => return Err(err(e)),
        }
    }
    let mut cur: Option<OwnedFd> = None;
    for c in rel.split('/') {
        let at = cur.as_ref().unwrap_or(root);
        match rustix::fs::openat(at, c, flags, Mode::empty()) {
            Ok(fd) => cur = Some(fd),
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(err(e)),
        }
    }
    Ok(cur)
}

/// Whether an error from `open_dir` means "a symlink or a non-directory is in the way".
pub(super) fn is_escape(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EXDEV))
}

/// The parent directory of `p` beneath the root and `p`'s last component.
pub(super) fn parent_of(p: &RelPath) -> (String, &str) {
    match p.as_str().rsplit_once('/') {
        Some((dir, name)) => (dir.to_owned(), name),
        None => (String::new(), p.as_str()),
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `Ok(None)` if it does not exist.
pub(super) fn stat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(s) => Ok(Some(s)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(err(e)),
    }
}

/// Renames inside (or between) held directories with `renameat2` flags.
pub(super) fn rename_at(from_dir: &OwnedFd, from: &str, to_dir: &OwnedFd, to: &str, flags: rustix::fs::RenameFlags) -> io::Result<()> {
    rustix::fs::renameat_with(from_dir, from, to_dir, to, flags).map_err(err)
}

pub(super) fn unlink_at(dir: &OwnedFd, name: &str, is_dir: bool) -> io::Result<()> {
    let flags = if is_dir { AtFlags::REMOVEDIR } else { AtFlags::empty() };
    rustix::fs::unlinkat(dir, name, flags).map_err(err)
}

/// Opens an existing entry of `dir` without following a final symlink: regular files for
/// reading (non-blocking, so a FIFO swapped in cannot hang the agent), directories as
/// directories. The caller checks the type with `fstat`.
pub(super) fn open_entry(dir: &OwnedFd, name: &str, directory: bool) -> io::Result<OwnedFd> {
    let mut flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if directory {
        flags |= OFlags::DIRECTORY;
    }
    rustix::fs::openat(dir, name, flags, Mode::empty()).map_err(err)
}

/// Owner and group new entries in `dir` get: the directory's own (so files a peer sends
/// stay writable by the web application that owns the folder). `None` when the agent does
/// not run as root and cannot choose.
pub(super) fn owner_for(dir: &OwnedFd) -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    rustix::fs::fstat(dir).ok().map(|s| (s.st_uid, s.st_gid))
}

pub(super) fn chown_fd(fd: impl AsFd, owner: Option<(u32, u32)>) -> io::Result<()> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::fchown(fd, Some(u), Some(g))?;
    }
    Ok(())
}

/// Whether the agent runs as root (and so chooses owners).
pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A name as bytes for the `*at` calls (names come from validated `RelPath`s).
pub(super) fn os(name: &str) -> &OsStr {
    OsStr::from_bytes(name.as_bytes())
}

/// The canonical form of the configured root (symlinks resolved once, at start-up: the
/// administrator's configuration may point through a link; later swaps are refused).
pub(super) fn canonical(root: &Path) -> PathBuf {
    std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned())
}
