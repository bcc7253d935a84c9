//! `lsyncd.log`: the product's human-readable log, in the same place and the same line
//! shape as lsyncd's (`Sat Nov 22 10:15:02 2026 Normal: ...`), so users and the dashboard
//! find it where they always looked: `<webroot>/lsyncd/var/log/lsyncd.log`. It rotates by
//! size on its own (`lsyncd.log.1` .. `.3`). This is a public format: lines start with the
//! timestamp, then the level (`Normal`, `Warn`, `Error`), a colon and the message.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use time::OffsetDateTime;
use time::macros::format_description;

pub struct LsyncdLog {
    path: PathBuf,
    max_bytes: u64,
    file: Mutex<Option<(File, u64)>>,
}

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Normal,
    Warn,
    Error,
}

impl LsyncdLog {
    pub fn open(dir: &std::path::Path, max_bytes: u64) -> anyhow::Result<LsyncdLog> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create log dir {}: {e}", dir.display()))?;
        let log = LsyncdLog { path: dir.join("lsyncd.log"), max_bytes, file: Mutex::new(None) };
        log.reopen()?;
        Ok(log)
    }

    fn reopen(&self) -> anyhow::Result<()> {
        let f = OpenOptions::new().create(true).append(true).open(&self.path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.path.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        *self.file.lock().expect("BUG: poisoned") = Some((f, len));
        Ok(())
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
        match level {
            Level::Normal => tracing::debug!("{msg}"),
            Level::Warn => tracing::debug!("{msg}"),
            Level::Error => tracing::warn!("{msg}"),
        }
        let line = format!("{} {:?}: {}\n", timestamp(OffsetDateTime::now_utc()), level, msg.replace('\n', " "));
        let mut guard = self.file.lock().expect("BUG: poisoned");
        let rotate = guard.as_ref().is_some_and(|(_, len)| len + line.len() as u64 > self.max_bytes);
        if rotate {
            *guard = None;
            for i in (1..3).rev() {
                let _ = std::fs::rename(self.path.with_extension(format!("log.{i}")), self.path.with_extension(format!("log.{}", i + 1)));
            }
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            if let Ok(f) = OpenOptions::new().create(true).append(true).open(&self.path) {
                *guard = Some((f, 0));
            }
        }
        if let Some((f, len)) = guard.as_mut()
            && f.write_all(line.as_bytes()).is_ok() {
                *len += line.len() as u64;
            }
    }
}

/// lsyncd's timestamp shape: `Sat Nov 22 10:15:02 2026` (UTC).
pub fn timestamp(t: OffsetDateTime) -> String {
    t.format(format_description!("[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] [year]"))
        .unwrap_or_default()
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
        }
        assert!(!dir.path().join("lsyncd.log.4").exists(), "more than three generations kept");
        let text = std::fs::read_to_string(dir.path().join("lsyncd.log")).unwrap();
        assert!(text.lines().last().unwrap().ends_with("Normal: line 399 with some padding to fill the file"), "{text}");
    }
}
