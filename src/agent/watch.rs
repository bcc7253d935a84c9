//! The bridge from inotify (through the `notify` crate) to the agent's event loop.
//!
//! The notify callback runs on notify's thread: it turns each event into `Hint`s on paths
//! relative to the root and `try_send`s them into a bounded channel. A full channel never
//! drops information: it sets the `overflowed` flag, which the event loop turns into a full
//! rescan. Queue overflow (IN_Q_OVERFLOW) and watch-limit errors do the same, with a
//! warning that names `fs.inotify.max_user_watches`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{Notify, mpsc};

use super::exclude::Excludes;
use crate::protocol::RelPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintKind {
    /// Data is being written and the file is not closed yet: wait for close or quiet.
    Writing,
    /// The file was closed after writing: ready to ship.
    Closed,
    /// Metadata, removal, rename: ready to ship.
    Changed,
    /// A directory appeared (created or moved in): scan it recursively.
    Tree,
    /// The first half of a rename: the name is gone, its new name is expected at once.
    /// The batch waits briefly for it so both halves travel together (and the receivers
    /// can apply a rename instead of a delete plus a new file).
    MovedFrom,
    /// The second half of a rename: scanned recursively, and releases the wait.
    MovedTo,
}

#[derive(Debug)]
pub enum Hint {
    Path(RelPath, HintKind),
    /// Events were lost or cannot be trusted; the reason goes to the log.
    Rescan(String),
    /// Something happened to an entry whose name cannot be synced (not UTF-8): its full
    /// path, for the log and the status.
    Unsyncable(PathBuf),
}

pub struct FsWatcher {
    _watcher: RecommendedWatcher,
}

pub struct WatchShared {
    pub overflowed: AtomicBool,
    pub wake: Notify,
    pub warning: std::sync::Mutex<Option<String>>,
}

pub fn start(root: PathBuf, excludes: Excludes, tx: mpsc::Sender<Hint>, shared: Arc<WatchShared>) -> anyhow::Result<FsWatcher> {
    let cb_root = root.clone();
    let cb_shared = shared.clone();
    // Only what changes content, names and metadata, and a close after writing, are asked
    // of the kernel: not opens nor read-only closes (every read of the folder, by the web
    // server or this agent's own hashing, would wake this thread, and a start-up scan of
    // 20,000 files overflowed the kernel's queue and cost a second full scan).
    let config = notify::Config::default().with_event_kinds(notify::EventKindMask::CORE | notify::EventKindMask::ACCESS_CLOSE);
    let mut watcher = RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| {
            let send = |h: Hint| {
                if tx.try_send(h).is_err() {
                    cb_shared.overflowed.store(true, Ordering::SeqCst);
                    cb_shared.wake.notify_one();
                }
            };
            match res {
                Ok(ev) => {
                    if ev.need_rescan() {
                        send(Hint::Rescan("the kernel's inotify event queue overflowed (fs.inotify.max_queued_events); rescanning".into()));
                        return;
                    }
                    for (i, kind) in classify(&ev).into_iter().enumerate() {
                        let Some(path) = ev.paths.get(i) else { break };
                        let Some(kind) = kind else { continue };
                        match RelPath::from_fs(&cb_root, path) {
                            Ok(rel) if !excludes.is_excluded(&rel) => send(Hint::Path(rel, refine(path, kind))),
                            Err(crate::protocol::PathError::NotUtf8) => send(Hint::Unsyncable(path.clone())),
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    let msg = describe_error(&e);
                    *cb_shared.warning.lock().expect("BUG: poisoned") = Some(msg.clone());
                    send(Hint::Rescan(msg));
                }
            }
        },
        config,
    )?;
    watcher.watch(&root, RecursiveMode::Recursive).map_err(|e| anyhow::anyhow!(describe_error(&e)))?;
    Ok(FsWatcher { _watcher: watcher })
}

/// What each of the event's paths means (renames carry two).
fn classify(ev: &notify::Event) -> Vec<Option<HintKind>> {
    use HintKind::*;
    match &ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => vec![Some(Closed)],
        EventKind::Access(_) => vec![None],
        EventKind::Create(CreateKind::Folder) => vec![Some(Tree)],
        EventKind::Create(_) => vec![Some(Writing)],
        EventKind::Modify(ModifyKind::Data(_)) => vec![Some(Writing)],
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => vec![Some(Changed), Some(MovedTo)],
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => vec![Some(MovedTo)],
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => vec![Some(MovedFrom)],
        EventKind::Modify(ModifyKind::Name(_)) => vec![Some(Changed)],
        EventKind::Modify(_) => vec![Some(Changed)],
        EventKind::Remove(_) => vec![Some(Changed)],
        EventKind::Any | EventKind::Other => vec![Some(Changed)],
    }
}

/// A created symlink never gets a close-after-write; it is complete at once.
fn refine(path: &Path, kind: HintKind) -> HintKind {
    if kind == HintKind::Writing
        && let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_symlink()
    {
        return HintKind::Changed;
    }
    kind
}

/// Turns notify's errors into text that says what to do (after watchexec's habit).
pub fn describe_error(e: &notify::Error) -> String {
    let limit = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "?".into());
    match &e.kind {
        notify::ErrorKind::MaxFilesWatch => format!(
            "inotify watch limit reached (fs.inotify.max_user_watches = {limit}); falling back to periodic rescans. Raise it: sysctl -w fs.inotify.max_user_watches=524288 (and persist it in /etc/sysctl.d/)"
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) => format!(
            "inotify watch limit reached (fs.inotify.max_user_watches = {limit}); falling back to periodic rescans. Raise it: sysctl -w fs.inotify.max_user_watches=524288 (and persist it in /etc/sysctl.d/)"
        ),
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => {
            "too many inotify instances (fs.inotify.max_user_instances); falling back to periodic rescans. Raise it: sysctl -w fs.inotify.max_user_instances=1024".into()
        }
        _ => format!("file watcher error: {e}; rescanning"),
    }
}

/// Number of directories inotify watches (for `lsyncd.status`), read from the fd info of
/// our inotify descriptors only: the fd table is told apart by link targets (a readlink
/// each), because formatting the fd info of every socket and epoll descriptor on each
/// status refresh was a tenth of a receiving agent's system time on a 10-node mesh.
pub fn watch_count() -> usize {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        for e in rd.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:inotify")
                && let Ok(s) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", e.file_name().to_string_lossy()))
            {
                n += s.lines().filter(|l| l.starts_with("inotify wd:")).count();
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn watch_count_counts_the_watches_of_every_inotify_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["a", "b", "c"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        let mut w = notify::recommended_watcher(|_: notify::Result<notify::Event>| {}).unwrap();
        notify::Watcher::watch(&mut w, dir.path(), notify::RecursiveMode::Recursive).unwrap();
        // The root and its three directories (other tests may hold watchers of their own).
        assert!(super::watch_count() >= 4, "{}", super::watch_count());
        drop(w);
    }

    #[test]
    fn watch_limit_error_names_the_sysctl_and_the_fix() {
        let e = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        let msg = super::describe_error(&e);
        assert!(msg.contains("fs.inotify.max_user_watches") && msg.contains("sysctl -w") && msg.contains("rescans"), "{msg}");
        let e = notify::Error::io(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(super::describe_error(&e).contains("max_user_watches"));
    }
}
