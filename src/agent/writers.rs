//! Which files under the sync root some process has open for writing, read from /proc: a
//! file in a directory created just before (whose watch came after the first writes) or one
//! written by a process that keeps it open shows no close event yet, and is held like one
//! the watcher saw being written. Looked up only when a recently modified file is about to
//! be announced or replaced.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Inode numbers of regular files below `root` (canonical) open for writing by any other
/// process this agent can see.
pub fn open_for_write(root: &Path) -> HashSet<u64> {
    let mut out = HashSet::new();
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else { continue };
            if !target.starts_with(root) {
                continue;
            }
            let info = std::fs::read_to_string(p.path().join("fdinfo").join(fd.file_name())).unwrap_or_default();
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).and_then(|f| u32::from_str_radix(f.trim(), 8).ok()).unwrap_or(0);
            if flags & (libc::O_WRONLY | libc::O_RDWR) as u32 == 0 {
                continue;
            }
            if let Ok(m) = std::fs::metadata(fd.path())
                && m.is_file()
            {
                out.insert(m.ino());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    /// A file held open for writing by another process is found; once closed it is not.
    #[test]
    fn a_writer_in_another_process_is_seen() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(d.path()).unwrap();
        let f = root.join("upload.bin");
        std::fs::write(&f, b"").unwrap();
        let ino = std::fs::metadata(&f).unwrap().ino();
        let mut child = std::process::Command::new("sh").arg("-c").arg(format!("exec 3>>'{}'; exec sleep 30", f.display())).spawn().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !super::open_for_write(&root).contains(&ino) {
            assert!(std::time::Instant::now() < deadline, "writer not seen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!super::open_for_write(&root).contains(&ino));
    }
}
