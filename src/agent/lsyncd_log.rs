//! `lsyncd.log`: the product's human-readable log, in the same place and the same line
//! shape as lsyncd's (`Sat Nov 22 10:15:02 2026 Normal: ...`), so users and the dashboard
//! find it where they always looked: `<webroot>/lsyncd/var/log/lsyncd.log`. It rotates by
//! size on its own (`lsyncd.log.1` .. `.3`). This is a public format: lines start with the
//! timestamp, then the level (`Normal`, `Warn`, `Error`), a colon and the message.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::macros::format_description;

use crate::private_fs::{PrivateDir, take_notices};

const NAME: &str = "lsyncd.log";
/// How often the log dir is checked to still be the one at its path.
const RECHECK: Duration = Duration::from_secs(60);

/// The log, written through its verified directory (see `private_fs`): the file is
/// opened without following links, rotation renames inside the directory's descriptor,
/// and whatever unsafe thing `private_fs` found and removed is reported here.
pub struct LsyncdLog {
    path: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

struct Inner {
    dir: PrivateDir,
    checked: Instant,
    file: Option<(File, u64)>,
}

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Normal,
    Warn,
    Error,
}

impl LsyncdLog {
    /// Opens `<dir>/lsyncd.log`, creating and verifying `dir` (see `private_fs`): a start-up
    /// error says why the directory cannot be made safe.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<LsyncdLog> {
        let d = PrivateDir::log(dir).map_err(|e| anyhow::anyhow!("cannot use log dir {}: {e:#}", dir.display()))?;
        let f = d.open_append(NAME).map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.join(NAME).display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let log = LsyncdLog { path: dir.join(NAME), max_bytes, inner: Mutex::new(Inner { dir: d, checked: Instant::now(), file: Some((f, len)) }) };
        log.write_notices();
        Ok(log)
    }

    pub fn normal(&self, msg: impl AsRef<str>) {
        self.write(Level::Normal, msg.as_ref());
    }
    pub fn warn(&self, msg: impl AsRef<str>) {
        self.write(Level::Warn, msg.as_ref());
    }
    pub fn error(&self, msg: impl AsRef<str>) {
        self.write(Level::Error, msg.as_ref());
    }

    pub fn write(&self, level: Level, msg: &str) {
        self.write_line(level, msg);
        self.write_notices();
    }

    /// Reports of unsafe things found in the agent's own directories, as warnings.
    fn write_notices(&self) {
        for n in take_notices() {
            self.write_line(Level::Warn, &n);
        }
    }

    fn write_line(&self, level: Level, msg: &str) {
        match level {
            Level::Normal => tracing::debug!("{msg}"),
            Level::Warn => tracing::debug!("{msg}"),
            Level::Error => tracing::warn!("{msg}"),
        }
        let line = format!("{} {:?}: {}\n", timestamp(OffsetDateTime::now_utc()), level, msg.replace('\n', " "));
        let mut g = self.inner.lock().expect("BUG: poisoned");
        // The directory can be renamed away by whoever may write its parent: check now and
        // then that the path still leads to it, and move to a fresh, verified one if not.
        if g.checked.elapsed() >= RECHECK {
            g.checked = Instant::now();
            if !g.dir.still_at_path()
                && let Ok(d) = PrivateDir::log(self.path.parent().unwrap_or(Path::new(".")))
            {
                g.dir = d;
                g.file = None;
            }
        }
        let rotate = g.file.as_ref().is_some_and(|(_, len)| len + line.len() as u64 > self.max_bytes);
        if rotate {
            g.file = None;
            for i in (1..3).rev() {
                let _ = g.dir.rename(&format!("{NAME}.{i}"), &format!("{NAME}.{}", i + 1));
            }
            let _ = g.dir.rename(NAME, &format!("{NAME}.1"));
        }
        if g.file.is_none()
            && let Ok(f) = g.dir.open_append(NAME)
        {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            g.file = Some((f, len));
        }
        if let Some((f, len)) = g.file.as_mut()
            && f.write_all(line.as_bytes()).is_ok()
        {
            *len += line.len() as u64;
        }
    }

    /// Replaces `name` in the log directory atomically (`lsyncd.status`).
    pub fn write_file(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let r = self.inner.lock().expect("BUG: poisoned").dir.write_atomic(name, data, false);
        self.write_notices();
        r
    }
}

/// lsyncd's timestamp shape: `Sat Nov 22 10:15:02 2026` (UTC).
pub fn timestamp(t: OffsetDateTime) -> String {
    t.format(format_description!("[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] [year]")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_by_size_and_keeps_three_generations() {
        let dir = tempfile::tempdir().unwrap();
        let log = LsyncdLog::open(dir.path(), 2000).unwrap();
        for i in 0..400 {
            log.normal(format!("line {i} with some padding to fill the file"));
        }
        let cur = std::fs::metadata(dir.path().join("lsyncd.log")).unwrap().len();
        assert!(cur <= 2000, "current log is {cur} bytes");
        for g in 1..=3 {
            assert!(dir.path().join(format!("lsyncd.log.{g}")).exists(), "generation {g} missing");
            let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join(format!("lsyncd.log.{g}"))).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o640);
        }
        assert!(!dir.path().join("lsyncd.log.4").exists(), "more than three generations kept");
        let text = std::fs::read_to_string(dir.path().join("lsyncd.log")).unwrap();
        assert!(text.lines().last().unwrap().ends_with("Normal: line 399 with some padding to fill the file"), "{text}");
    }
}
