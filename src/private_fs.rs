//! The process's own files: the agent's log and state directories and the keys `pki`
//! writes. The agent runs as root next to a webroot that the web application's user can
//! write, so nothing here trusts a path below the configured location:
//!
//! - A directory is opened one component at a time relative to its parent's descriptor,
//!   with `O_NOFOLLOW`; each one must be a real directory owned by this process's user.
//!   A symlink, a file or a directory owned by someone else in its place is not followed:
//!   it is moved aside (`<name>.refused-<unix time>`, a symlink is simply removed), the
//!   reason is reported (see [`take_notices`]) and a fresh directory is made. Its mode is
//!   set on the descriptor (`fchmod`).
//! - Files are opened relative to that directory's descriptor with `O_NOFOLLOW` (and
//!   `O_NONBLOCK`, so a FIFO cannot hang the agent) and must be regular files owned by this
//!   user with one link; anything else in their place is removed and reported, never
//!   written through. Writes that replace a file go to `<name>.tmp` created with
//!   `O_CREAT | O_EXCL` (a planted name is removed first), are synced, then `renameat`
//!   into place inside the same directory.
//!
//! Which components the agent owns follows from the product's layout: for the add-on's
//! `<webroot>/lsyncd/var/{log,state}` those are `lsyncd`, `var` and the last one (the web
//! user may write `<webroot>`, so the chain starts there); for any other configured
//! directory only the last component (its parent is the administrator's choice).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// The agent's log directory: readable by everyone who expects `lsyncd.log` there.
pub const LOG_DIR_MODE: u32 = 0o755;
/// `lsyncd.log` and `lsyncd.status`: the owner and its group only.
pub const LOG_FILE_MODE: u32 = 0o640;
/// The state directory (index, identity, pairing) and everything in it.
pub const STATE_DIR_MODE: u32 = 0o700;
pub const STATE_FILE_MODE: u32 = 0o600;
/// `lsyncd/` and `lsyncd/var/` of the add-on's layout.
const PARENT_MODE: u32 = 0o755;
/// State files are small; a larger one is not ours.
const MAX_READ: u64 = 16 << 20;

static NOTICES: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[cfg(test)]
thread_local! {
    /// The same reports, per thread, for unit tests (the global queue is shared by tests
    /// running in parallel).
    static TEST_NOTICES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Reports something unsafe that was found and dealt with: on stderr at once, and queued
/// for `lsyncd.log` (the log writer drains the queue, see [`take_notices`]).
fn notice(msg: String) {
    eprintln!("filesync: {msg}");
    tracing::warn!("{msg}");
    #[cfg(test)]
    TEST_NOTICES.with(|t| t.borrow_mut().push(msg.clone()));
    let mut q = NOTICES.lock().expect("BUG: poisoned");
    if q.len() < 100 {
        q.push(msg);
    }
}

/// Takes the reports queued since the last call (for `lsyncd.log`).
pub fn take_notices() -> Vec<String> {
    std::mem::take(&mut *NOTICES.lock().expect("BUG: poisoned"))
}

fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A directory this process owns, held by its descriptor: every operation is relative to
/// it, so renaming or replacing a parent on disk afterwards changes nothing here.
pub struct PrivateDir {
    fd: OwnedFd,
    path: PathBuf,
    file_mode: u32,
}

impl std::fmt::Debug for PrivateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateDir({})", self.path.display())
    }
}

impl PrivateDir {
    /// The agent's log directory (`lsyncd.log`, `lsyncd.status`).
    pub fn log(dir: &Path) -> anyhow::Result<PrivateDir> {
        PrivateDir::open(dir, LOG_DIR_MODE, LOG_FILE_MODE)
    }

    /// The agent's state directory.
    pub fn state(dir: &Path) -> anyhow::Result<PrivateDir> {
        PrivateDir::open(dir, STATE_DIR_MODE, STATE_FILE_MODE)
    }

    /// Opens `dir`, creating what is missing, verifying every component the agent owns
    /// (see the module doc) and setting `mode` on the last one. Files created in it get
    /// `file_mode`.
    pub fn open(dir: &Path, mode: u32, file_mode: u32) -> anyhow::Result<PrivateDir> {
        let (anchor, owned) = split_owned(dir);
        if owned.is_empty() {
            anyhow::bail!("{} cannot be the agent's own directory (it has no name)", dir.display());
        }
        std::fs::create_dir_all(&anchor).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", anchor.display()))?;
        let mut fd = rustix::fs::open(&anchor, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", anchor.display()))?;
        let mut path = anchor;
        for (i, name) in owned.iter().enumerate() {
            let want = if i + 1 == owned.len() { mode } else { PARENT_MODE };
            path.push(name);
            fd = own_subdir(&fd, name, &path, want).map_err(|e| anyhow::anyhow!("cannot make {} safe for the agent: {e}", path.display()))?;
        }
        Ok(PrivateDir { fd, path, file_mode })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this descriptor is still the directory found at its path (the path can be
    /// renamed away by whoever may write its parent).
    pub fn still_at_path(&self) -> bool {
        match (rustix::fs::fstat(&self.fd), rustix::fs::lstat(&self.path)) {
            (Ok(a), Ok(b)) => a.st_dev == b.st_dev && a.st_ino == b.st_ino,
            _ => false,
        }
    }

    /// Opens `name` for appending, creating it; see the module doc for what is refused.
    pub fn open_append(&self, name: &str) -> io::Result<File> {
        self.open_file(name, OFlags::WRONLY | OFlags::APPEND)
    }

    /// Opens `name` for reading and writing, creating it (the index).
    pub fn open_rw(&self, name: &str) -> io::Result<File> {
        self.open_file(name, OFlags::RDWR)
    }

    fn open_file(&self, name: &str, access: OFlags) -> io::Result<File> {
        let flags = access | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        for _ in 0..3 {
            match rustix::fs::openat(&self.fd, name, flags, Mode::from_raw_mode(self.file_mode)) {
                Ok(fd) => match self.check_file(&fd) {
                    Ok(()) => return Ok(File::from(fd)),
                    Err(why) => self.clear(name, &why)?,
                },
                Err(e) if e == Errno::LOOP || e == Errno::NXIO || e == Errno::ISDIR => self.clear(name, &self.describe(name))?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(io::Error::other(format!("{} keeps being replaced; refusing to open it", self.path.join(name).display())))
    }

    /// A regular file of ours with one link; also sets the file mode on it.
    fn check_file(&self, fd: &OwnedFd) -> Result<(), String> {
        let st = rustix::fs::fstat(fd).map_err(|e| e.to_string())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err("it is not a regular file".into());
        }
        if st.st_uid != euid() {
            return Err(format!("it is owned by uid {}, not by this agent (uid {})", st.st_uid, euid()));
        }
        if st.st_nlink != 1 {
            return Err(format!("it has {} hard links (one may be another file of the system)", st.st_nlink));
        }
        if st.st_mode & 0o7777 != self.file_mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(self.file_mode)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// What is at `name`, in words, for a report.
    fn describe(&self, name: &str) -> String {
        match rustix::fs::readlinkat(&self.fd, name, Vec::new()) {
            Ok(target) => format!("it is a symlink to {}", String::from_utf8_lossy(target.as_bytes())),
            Err(_) => "it is not a regular file".into(),
        }
    }

    /// Removes whatever is at `name` (a directory is moved aside) and reports why.
    fn clear(&self, name: &str, why: &str) -> io::Result<()> {
        let full = self.path.join(name);
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let aside = format!("{name}.refused-{}", unix_now());
            rustix::fs::renameat(&self.fd, name, &self.fd, aside.as_str())?;
            notice(format!("refused to use {}: {why}; moved it aside to {aside} (never followed)", full.display()));
        } else {
            rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?;
            notice(format!("refused to use {}: {why}; removed it (never followed or written through)", full.display()));
        }
        Ok(())
    }

    /// Replaces `name` with `data`: `<name>.tmp` created exclusively, written, synced and
    /// renamed over `name` within this directory. `durable` also syncs the directory.
    pub fn write_atomic(&self, name: &str, data: &[u8], durable: bool) -> io::Result<()> {
        let tmp = format!("{name}.tmp");
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(self.file_mode);
        let fd = match rustix::fs::openat(&self.fd, tmp.as_str(), flags, mode) {
            Ok(fd) => fd,
            Err(Errno::EXIST) => {
                // A temp name left by a crash, or planted: never reused, never followed.
                let st = rustix::fs::statat(&self.fd, tmp.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_uid == euid() && st.st_nlink == 1 {
                    rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty())?;
                } else {
                    let why = self.describe(&tmp);
                    self.clear(&tmp, &why)?;
                }
                rustix::fs::openat(&self.fd, tmp.as_str(), flags, mode)?
            }
            Err(e) => return Err(e.into()),
        };
        rustix::fs::fchmod(&fd, mode)?;
        let mut f = File::from(fd);
        let r = f.write_all(data).and_then(|_| if durable { f.sync_all() } else { Ok(()) });
        if let Err(e) = r {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), AtFlags::empty());
            return Err(e);
        }
        drop(f);
        rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
        if durable {
            rustix::fs::fsync(&self.fd)?;
        }
        Ok(())
    }

    /// Reads `name`, or `None` when it does not exist. Anything but a regular file of ours
    /// is removed and reported instead of read.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) if e == Errno::LOOP || e == Errno::ISDIR => {
                self.clear(name, &self.describe(name))?;
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(why) = self.check_file(&fd) {
            self.clear(name, &why)?;
            return Ok(None);
        }
        let mut data = Vec::new();
        File::from(fd).take(MAX_READ).read_to_end(&mut data)?;
        Ok(Some(data))
    }

    /// Removes `name` if it exists (a symlink is removed, not followed).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Renames `from` to `to` within this directory (log rotation). A missing `from` is
    /// fine; a symlink at `from` is removed and reported instead of being carried along.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        match rustix::fs::statat(&self.fd, from, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(st) if st.st_mode & libc::S_IFMT != libc::S_IFREG => {
                let why = self.describe(from);
                return self.clear(from, &why);
            }
            Ok(_) => {}
        }
        rustix::fs::renameat(&self.fd, from, &self.fd, to)?;
        Ok(())
    }
}

/// Opens (creating if needed) `name` under `parent` as a directory owned by this user with
/// `mode`, replacing whatever unsafe thing is there.
fn own_subdir(parent: &OwnedFd, name: &OsStr, path: &Path, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    for _ in 0..4 {
        match rustix::fs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if st.st_uid != euid() {
                    move_aside(parent, name, path, &format!("it is owned by uid {}, not by this agent (uid {})", st.st_uid, euid()))?;
                    continue;
                }
                if st.st_mode & 0o7777 != mode {
                    if st.st_mode & 0o022 != 0 {
                        notice(format!("{} was writable by others (mode {:o}); set to {mode:o}", path.display(), st.st_mode & 0o7777));
                    }
                    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
                }
                return Ok(fd);
            }
            Err(Errno::NOENT) => match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(mode)) {
                Ok(()) | Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            },
            Err(e) if e == Errno::LOOP || e == Errno::NOTDIR => {
                let why = match rustix::fs::readlinkat(parent, name, Vec::new()) {
                    Ok(t) => format!("it is a symlink to {}", String::from_utf8_lossy(t.as_bytes())),
                    Err(_) => "it is not a directory".into(),
                };
                move_aside(parent, name, path, &why)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other("it keeps being replaced"))
}

fn move_aside(parent: &OwnedFd, name: &OsStr, path: &Path, why: &str) -> io::Result<()> {
    let st = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
        notice(format!("refused to use {}: {why}; removed the link (never followed) and created the directory", path.display()));
    } else {
        let mut aside = name.to_os_string();
        aside.push(format!(".refused-{}", unix_now()));
        rustix::fs::renameat(parent, name, parent, aside.as_os_str())?;
        notice(format!("refused to use {}: {why}; moved it aside to {} and created a fresh directory", path.display(), Path::new(&aside).display()));
    }
    Ok(())
}

/// Fails unless `dir` exists as a real directory owned by this process's user (tools that
/// open the agent's state, like `filesync inspect`, must not repair someone else's).
pub fn ensure_owned_by_me(dir: &Path) -> anyhow::Result<()> {
    let st = rustix::fs::lstat(dir).map_err(|e| anyhow::anyhow!("cannot use {}: {e}", dir.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    if st.st_uid != euid() {
        anyhow::bail!("{} belongs to uid {}; run this as that user (this is uid {})", dir.display(), st.st_uid, euid());
    }
    Ok(())
}

/// Splits `dir` into the part the administrator chose (trusted as configured) and the
/// components the agent owns (verified one by one).
fn split_owned(dir: &Path) -> (PathBuf, Vec<std::ffi::OsString>) {
    let comps: Vec<&OsStr> = dir.iter().collect();
    let n = comps.len();
    let layout = n >= 4 && comps[n - 3] == "lsyncd" && comps[n - 2] == "var" && (comps[n - 1] == "log" || comps[n - 1] == "state");
    let owned = if layout { 3 } else { 1.min(n) };
    let anchor: PathBuf = comps[..n - owned].iter().collect();
    let anchor = if anchor.as_os_str().is_empty() { PathBuf::from(".") } else { anchor };
    (anchor, comps[n - owned..].iter().map(|c| c.to_os_string()).collect())
}

/// Writes `contents` to `path` readable only by its owner: `<name>.tmp` created
/// exclusively without following links, synced, renamed into place. The parent directory
/// is created (0700) if missing and opened as configured (for keys and certificates).
pub fn write_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| anyhow::anyhow!("{} names no file", path.display()))?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let fd = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.display()))?;
    let d = PrivateDir { fd, path: dir.to_owned(), file_mode: STATE_FILE_MODE };
    let name = name.to_str().ok_or_else(|| anyhow::anyhow!("{} is not valid UTF-8", path.display()))?;
    d.write_atomic(name, contents, true).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::CWD;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn layout_components_are_owned_from_the_webroot() {
        let (a, o) = split_owned(Path::new("/var/www/webroot/lsyncd/var/log"));
        assert_eq!(a, Path::new("/var/www/webroot"));
        assert_eq!(o, ["lsyncd", "var", "log"]);
        let (a, o) = split_owned(Path::new("/srv/filesync/state"));
        assert_eq!(a, Path::new("/srv/filesync"));
        assert_eq!(o, ["state"]);
    }

    #[test]
    fn planted_links_are_removed_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let web = t.path().join("webroot");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"precious").unwrap();
        // The web user made `lsyncd` a link to a directory elsewhere.
        std::fs::create_dir_all(&web).unwrap();
        symlink(&outside, web.join("lsyncd")).unwrap();
        let d = PrivateDir::log(&web.join("lsyncd/var/log")).unwrap();
        assert!(std::fs::symlink_metadata(web.join("lsyncd")).unwrap().is_dir());
        assert!(!outside.join("var").exists(), "created through the link");
        assert_eq!(std::fs::metadata(web.join("lsyncd/var/log")).unwrap().permissions().mode() & 0o7777, LOG_DIR_MODE);
        // Links at the file names and at the temp name.
        symlink(outside.join("victim"), web.join("lsyncd/var/log/lsyncd.status.tmp")).unwrap();
        symlink(outside.join("victim"), web.join("lsyncd/var/log/lsyncd.log")).unwrap();
        symlink(outside.join("victim"), web.join("lsyncd/var/log/lsyncd.log.1")).unwrap();
        d.write_atomic("lsyncd.status", b"status", false).unwrap();
        d.open_append("lsyncd.log").unwrap().write_all(b"line\n").unwrap();
        d.rename("lsyncd.log.1", "lsyncd.log.2").unwrap();
        assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
        assert_eq!(std::fs::read(web.join("lsyncd/var/log/lsyncd.status")).unwrap(), b"status");
        let m = std::fs::metadata(web.join("lsyncd/var/log/lsyncd.log")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.nlink()), (LOG_FILE_MODE, 1));
        let notes = TEST_NOTICES.with(|t| t.borrow().join("\n"));
        assert!(notes.contains("lsyncd.status.tmp") && notes.contains("symlink to"), "{notes}");
    }

    #[test]
    fn hard_links_and_fifos_are_not_written() {
        let t = tempfile::tempdir().unwrap();
        let d = PrivateDir::state(&t.path().join("state")).unwrap();
        assert_eq!(std::fs::metadata(t.path().join("state")).unwrap().permissions().mode() & 0o7777, STATE_DIR_MODE);
        std::fs::write(t.path().join("victim"), b"precious").unwrap();
        std::fs::hard_link(t.path().join("victim"), t.path().join("state/index.redb")).unwrap();
        d.open_rw("index.redb").unwrap().write_all(b"db").unwrap();
        assert_eq!(std::fs::read(t.path().join("victim")).unwrap(), b"precious");
        rustix::fs::mknodat(CWD, t.path().join("state/fifo").as_path(), rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        assert_eq!(d.read("fifo").unwrap(), None);
        d.write_atomic("identity.toml", b"x", true).unwrap();
        assert_eq!(d.read("identity.toml").unwrap().unwrap(), b"x");
        assert_eq!(std::fs::metadata(t.path().join("state/identity.toml")).unwrap().permissions().mode() & 0o7777, STATE_FILE_MODE);
    }
}
