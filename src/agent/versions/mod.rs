//! Versions: what a peer's change replaces or deletes on this node is kept, by rename, in
//! `<state_dir>/versions/` (root only, 0700, outside the sync folder and the web root), with
//! its path, time, size, mode, mtime, BLAKE3 and the node whose change displaced it, and can
//! be restored (`restore`). Every node keeps what the others' changes took from it, so a
//! delete or overwrite made on node 1 is recoverable from nodes 2..N; the writer's own old
//! content is gone before its watcher sees the change, so a single node keeps nothing.
//!
//! ```text
//!  apply_entry ── root.displacing(path, cause) ── swap / delete ── bury: rename into data/<id>
//!                                                                      │ (grace period: a write
//!  flush (before the index records the change): record, durably ◀──────┘  into it is rescued)
//!  reap (grace over) ── settle: keep (record settled) or drop ── retention: age, cap, free space
//! ```
//!
//! Layout: `data/<id:016x>` (the content, renamed in, never written) and `records.redb`
//! (`store`). Crash rules (kill -9 between any two steps): content only ever arrives by
//! rename, so there is never half a version; a record is durable before the index records
//! the change that displaced its file; at start-up (`recover`) a record without its file is
//! dropped, a file without a record is matched to the index entry that still names its
//! inode (the change was not recorded yet) or removed, and a version written to during its
//! interrupted grace period is rescued as a conflict copy. The current files are never
//! touched by any of this.
//!
//! Retention (`retain`), oldest first: past `max_age`, over the cap (`max_bytes`, or
//! `max_percent_of_free` of the free space counting what versions use), over
//! [`MAX_COUNT`]. Below `min_free_percent` free space no new version is kept, and the status
//! says so.

mod recover;
mod restore;
mod select;
mod store;

use std::sync::Arc;

use anyhow::Context;

pub use self::store::{Record, Store};
use super::Agent;
use super::config::{Settings, VersionSettings};
use super::lsyncd_log::LsyncdLog;
use super::root::{Cause, Grave, SyncRoot};
use crate::protocol::versions::{Cause as CauseKind, MAX_LIST, VersionInfo, VersionList, VersionQuery, VersionsSummary};
use crate::protocol::{Entry, EntryKind, RelPath};

/// The most versions kept, whatever their size (empty files cost a record each).
pub const MAX_COUNT: usize = 1_000_000;

/// The versions area of one agent.
pub struct Versions {
    pub settings: VersionSettings,
    /// `None` when versions are not kept (then `disabled` says why).
    pub store: Option<Arc<Store>>,
    disabled: Option<String>,
    count: u64,
    bytes: u64,
    cap: u64,
    /// When the oldest kept version was kept (ns since the epoch): the status shows it, and
    /// it passes `max_age` first.
    oldest_ns: Option<i64>,
    stopped: Option<String>,
}

/// Why a remote version is about to displace what is at its path (`local` is the index's
/// entry, which the decision saw on disk).
pub fn cause_of(r: &Entry, local: Option<&super::index::Stored>) -> Cause {
    let hash = local.filter(|l| !l.entry.deleted && l.entry.kind == EntryKind::File).map(|l| l.entry.hash);
    Cause { by: r.modified_by_name.clone(), kind: if r.deleted { CauseKind::Deleted } else { CauseKind::Replaced }, hash, new_hash: (!r.deleted && r.kind == EntryKind::File).then_some(r.hash) }
}

fn record_of(g: &Grave) -> Record {
    Record {
        path: g.path.to_string(),
        kept_at_ns: g.at_ns,
        size: g.meta.size,
        mtime_ns: g.meta.mtime_ns,
        mode: g.meta.mode,
        hash: g.cause.hash,
        new_hash: g.cause.new_hash,
        by: g.cause.by.clone(),
        cause: g.cause.kind,
        ino: g.meta.ino,
        ctime_ns: g.meta.ctime_ns,
        disk_bytes: g.meta.size.div_ceil(4096) * 4096,
        settled: false,
    }
}

impl Versions {
    /// A versions area that keeps nothing, for `reason`.
    pub fn off(settings: VersionSettings, reason: &str) -> Versions {
        Versions { settings, store: None, disabled: Some(reason.to_owned()), count: 0, bytes: 0, cap: 0, oldest_ns: None, stopped: None }
    }

    pub fn on(settings: VersionSettings, store: Store) -> Versions {
        Versions { settings, store: Some(Arc::new(store)), disabled: None, count: 0, bytes: 0, cap: 0, oldest_ns: None, stopped: None }
    }

    pub fn summary(&self) -> VersionsSummary {
        VersionsSummary {
            enabled: self.store.is_some(),
            count: self.count,
            bytes: self.bytes,
            cap_bytes: self.cap,
            max_age_secs: self.settings.max_age.as_secs(),
            oldest: self.oldest_ns.map(|t| t.div_euclid(1_000_000_000)),
            keeping: self.store.is_some() && self.stopped.is_none(),
            stopped: self.disabled.clone().or_else(|| self.stopped.clone()),
        }
    }

    /// Records the files displaced since the last call, durably: called before the index
    /// records the change that displaced them.
    pub fn flush(&mut self, root: &SyncRoot) -> anyhow::Result<()> {
        let graves = root.take_graves();
        let Some(store) = &self.store else { return Ok(()) };
        // Only regular files are kept (a displaced link is dropped when its grace ends).
        let items: Vec<(u64, Record)> = graves.iter().filter(|g| g.meta.kind == EntryKind::File).map(|g| (g.id, record_of(g))).collect();
        if items.is_empty() {
            return Ok(());
        }
        root.sync_versions_dir();
        store.put(&items, true)?;
        Ok(())
    }

    /// Ends the grace period of versions whose time is up: each is kept (its record
    /// settled, its hash computed if the index did not know it) or, while keeping is
    /// stopped or it alone is over the cap, dropped; then retention runs.
    pub fn settle(&mut self, root: &SyncRoot) -> anyhow::Result<()> {
        let (settled, rescued) = root.take_settled();
        let Some(store) = self.store.clone() else {
            settled.iter().for_each(|g| root.drop_version(g.id));
            return Ok(());
        };
        if settled.is_empty() && rescued.is_empty() {
            return Ok(());
        }
        // Free space is looked at when a version is about to be kept, not on a timer.
        self.check_space(root, self.bytes);
        self.remove(root, &rescued)?;
        let mut updates = Vec::new();
        let mut dropped = Vec::new();
        for g in settled {
            let Some(mut rec) = store.get(g.id)? else {
                root.drop_version(g.id);
                continue;
            };
            let Some((meta, blocks)) = root.version_stat(g.id) else {
                dropped.push(g.id);
                continue;
            };
            if self.stopped.is_some() || meta.size > self.cap || meta.nlink > 1 || meta.kind != EntryKind::File {
                // Not kept: no room, or it still has another name in the folder (a hard link).
                dropped.push(g.id);
                continue;
            }
            if rec.hash.is_none() || g.cause.hash.is_none() {
                rec.hash = hash_version(root, g.id);
            }
            (rec.size, rec.mtime_ns, rec.mode, rec.ino, rec.ctime_ns) = (meta.size, meta.mtime_ns, meta.mode, meta.ino, meta.ctime_ns);
            rec.disk_bytes = blocks;
            rec.settled = true;
            updates.push((g.id, rec));
        }
        store.put(&updates, false)?;
        self.remove(root, &dropped)?;
        self.retain(root)
    }

    /// Removes versions (records first, then content).
    fn remove(&mut self, root: &SyncRoot, ids: &[u64]) -> anyhow::Result<()> {
        let Some(store) = &self.store else { return Ok(()) };
        store.remove(ids)?;
        for id in ids {
            root.drop_version(*id);
        }
        Ok(())
    }

    /// Retention, oldest first: past the age, over the cap or the count; and whether new
    /// versions may be kept (free space). Recounts the totals (of settled versions: those
    /// still in their grace period are not versions yet) from the records.
    pub fn retain(&mut self, root: &SyncRoot) -> anyhow::Result<()> {
        let Some(store) = self.store.clone() else { return Ok(()) };
        let all: Vec<(u64, Record)> = store.all()?.into_iter().filter(|(_, r)| r.settled).collect();
        let used: u64 = all.iter().map(|(_, r)| r.disk_bytes).sum();
        self.check_space(root, used);
        let too_old = super::scan::now_ns() - self.max_age_ns();
        let (mut bytes, mut count) = (used, all.len());
        let mut gone = Vec::new();
        for (id, r) in &all {
            if r.kept_at_ns < too_old || bytes > self.cap || count > MAX_COUNT {
                gone.push(*id);
                bytes = bytes.saturating_sub(r.disk_bytes);
                count -= 1;
            }
        }
        store.remove(&gone)?;
        for id in &gone {
            root.drop_version(*id);
        }
        self.count = count as u64;
        self.bytes = bytes;
        let gone_set: std::collections::HashSet<u64> = gone.iter().copied().collect();
        self.oldest_ns = all.iter().filter(|(id, _)| !gone_set.contains(id)).map(|(_, r)| r.kept_at_ns).min();
        Ok(())
    }

    fn max_age_ns(&self) -> i64 {
        self.settings.max_age.as_nanos().min(i64::MAX as u128) as i64
    }

    /// The cap (when it is a share of the free space) and whether new versions may be kept,
    /// from the state dir's free space now, with `used` bytes in settled versions.
    fn check_space(&mut self, root: &SyncRoot, used: u64) {
        let (free, total) = root.versions_fs_space().unwrap_or((u64::MAX / 4, u64::MAX / 2));
        self.cap = self.settings.max_bytes.unwrap_or_else(|| ((free as u128 + used as u128) * self.settings.max_percent_of_free as u128 / 100) as u64);
        let free_pct = if total > 0 { free as u128 * 100 / total as u128 } else { 100 };
        self.stopped = (free_pct < self.settings.min_free_percent as u128)
            .then(|| format!("not keeping new versions: only {free_pct}% of the state dir's file system is free (versions.min_free_percent = {})", self.settings.min_free_percent));
    }

    /// How long until retention has something to do without a new change: the oldest
    /// version's expiry; the free space, every [`SPACE_RECHECK`] while versions are kept
    /// (the cap may be a share of it) or [`STOPPED_RECHECK`] while none may be kept.
    pub fn next_check(&self, checked: std::time::Instant) -> Option<std::time::Instant> {
        let space = if self.stopped.is_some() { Some(checked + STOPPED_RECHECK) } else { (self.count > 0).then(|| checked + SPACE_RECHECK) };
        let expiry = self.oldest_ns.map(|kept| kept.saturating_add(self.max_age_ns())).map(|at| {
            // A second late, so that the version is past its age when retention runs.
            let wait = u64::try_from(at.saturating_add(1_000_000_000).saturating_sub(super::scan::now_ns())).unwrap_or(0);
            std::time::Instant::now() + std::time::Duration::from_nanos(wait)
        });
        space.into_iter().chain(expiry).min()
    }
}

/// While versions are kept, the free space (their cap may be a share of it) is looked at this
/// often besides before each new version.
pub const SPACE_RECHECK: std::time::Duration = std::time::Duration::from_secs(300);
/// While no new version may be kept for lack of space, the free space is looked at this often.
pub const STOPPED_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// BLAKE3 of a version's content.
fn hash_version(root: &SyncRoot, id: u64) -> Option<[u8; 32]> {
    let mut f = root.open_version(id).ok()?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut f).ok()?;
    Some(*h.finalize().as_bytes())
}

/// Lists versions for `GET /v1/versions`, newest first.
pub fn list(store: Option<&Store>, q: &VersionQuery, summary: VersionsSummary) -> Result<VersionList, String> {
    let scope = select::scope(q.path.as_deref().unwrap_or(""))?;
    let Some(store) = store else { return Ok(VersionList { summary, ..VersionList::default() }) };
    let all = store.all().map_err(|e| format!("cannot read the versions records: {e:#}"))?;
    let limit = q.limit.unwrap_or(MAX_LIST).min(MAX_LIST);
    let matching: Vec<VersionInfo> = all
        .iter()
        .rev()
        .filter(|(_, r)| select::in_scope(scope.as_ref(), &r.path))
        .filter(|(_, r)| !q.deleted || r.cause == CauseKind::Deleted)
        .filter(|(_, r)| q.from.is_none_or(|f| r.kept_at_ns.div_euclid(1_000_000_000) >= f) && q.to.is_none_or(|t| r.kept_at_ns.div_euclid(1_000_000_000) <= t))
        .map(|(id, r)| r.info(*id))
        .collect();
    let matched = matching.len();
    Ok(VersionList { truncated: matched > limit, versions: matching.into_iter().take(limit).collect(), matched, summary })
}

/// The sync root with its graveyard, and the versions area (kept in `<state_dir>/versions`
/// when `[versions] keep` and the state dir shares the root's file system).
pub(super) fn open(s: &Settings, log: &LsyncdLog) -> anyhow::Result<(SyncRoot, Versions)> {
    let root = SyncRoot::new(s.root.clone()).with_graveyard(&s.state_dir.join("displaced")).context("cannot create the displaced-files directory in the state dir")?;
    if !s.versions.keep {
        return Ok((root, Versions::off(s.versions.clone(), "versions.keep = false in agent.toml")));
    }
    let dir = s.state_dir.join("versions");
    let store = match Store::open(&dir) {
        Ok(st) => st,
        Err(e) => {
            let why = format!("versions are not kept: {e:#}");
            log.error(&why);
            return Ok((root, Versions::off(s.versions.clone(), &why)));
        }
    };
    match root.clone().keep_displaced_in(&dir.join("data")) {
        Ok(r) => Ok((r, Versions::on(s.versions.clone(), store))),
        Err(e) => {
            let why = format!("versions are not kept: {e} (a version is kept by a rename; put the state dir on the sync root's file system)");
            log.warn(&why);
            Ok((root, Versions::off(s.versions.clone(), &why)))
        }
    }
}

impl Agent {
    /// Records newly displaced files (before the index records what displaced them).
    pub(super) fn flush_versions(&mut self) {
        if let Err(e) = self.versions.flush(&self.root) {
            self.error(format!("cannot record versions: {e:#}"));
        }
    }

    /// Ends grace periods: rescued conflict copies are announced, the rest kept or dropped.
    pub(super) fn reap(&mut self, all: bool) {
        self.flush_versions();
        for copy in self.root.reap(all, &self.s.node_name) {
            self.log.warn(format!("Conflict: a local write landed in a file after a peer's version had replaced it; the written content is kept as {copy}"));
            self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
            self.batcher.add(copy, super::watch::HintKind::Tree, std::time::Instant::now());
        }
        let was = self.versions.summary().stopped;
        if let Err(e) = self.versions.settle(&self.root) {
            self.error(format!("cannot keep versions: {e:#}"));
        }
        self.note_versions_state(was);
    }

    /// When retention must run without a new change (see `Versions::next_check`).
    pub(super) fn versions_recheck(&self) -> Option<std::time::Instant> {
        self.versions.next_check(self.versions_checked)
    }

    /// Periodic retention (age, free space), and the totals in the status.
    pub(super) fn versions_tick(&mut self) {
        let was = self.versions.summary().stopped;
        if let Err(e) = self.versions.retain(&self.root) {
            self.error(format!("cannot apply versions retention: {e:#}"));
        }
        self.note_versions_state(was);
    }

    fn note_versions_state(&mut self, was: Option<String>) {
        let now = self.versions.summary();
        if now.stopped != was && now.enabled {
            match &now.stopped {
                Some(why) => self.warn(why.clone()),
                None => self.log.normal("keeping versions again: enough free space"),
            }
        }
        self.status.lock().expect("BUG: poisoned").versions = now;
    }

    /// Start-up: sweeps temp files and finishes what a crash interrupted in the versions
    /// area (see `recover`).
    pub(super) fn recover_versions(&mut self) -> anyhow::Result<()> {
        let by_ino = recover::live_inodes(&self.index)?;
        let mut rescued = self.root.recover_displaced(&self.s.state_dir.join("displaced"), &self.s.node_name, &|m| recover::written_after(&by_ino, m));
        let (stale, caught) = self.root.sweep_temps_keeping(&|m| recover::explains(&by_ino, m).is_some());
        if stale > 0 {
            self.log.normal(format!("removed {stale} temp file(s) left by an interrupted transfer"));
        }
        if caught > 0 {
            tracing::debug!(caught, "displaced files caught at their temp names");
        }
        rescued.extend(recover::recover(self, &by_ino)?);
        for copy in rescued {
            self.log.warn(format!("Conflict: a write reached a replaced file before the agent stopped; the written content is kept as {copy}"));
            self.batcher.add(copy, super::watch::HintKind::Tree, std::time::Instant::now());
        }
        self.versions_tick();
        Ok(())
    }

    /// The path a version was kept from, parsed.
    pub(super) fn version_path(r: &Record) -> Option<RelPath> {
        RelPath::parse(&r.path).ok()
    }
}

/// `filesync ctl versions` as a table.
pub fn describe_list(l: &VersionList) -> String {
    let mut out = format!("{:<20} {:<19} {:>12} {:<12} {:<13} PATH\n", "VERSION", "KEPT (UTC)", "SIZE", "BY", "WHY");
    for v in &l.versions {
        let t = time::OffsetDateTime::from_unix_timestamp(v.kept_at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let when = format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
        let why = format!("{}{}", v.cause.word(), if v.settled { "" } else { "*" });
        out.push_str(&format!("{:<20} {when:<19} {:>12} {:<12} {why:<13} {}\n", v.id, v.size, v.by, v.path));
    }
    let s = &l.summary;
    out.push_str(&format!("{} of {} matching version(s) listed{}; ", l.versions.len(), l.matched, if l.truncated { " (use --limit for more)" } else { "" }));
    if l.versions.iter().any(|v| !v.settled) {
        out.push_str("* = displaced in the last few seconds, not counted yet; ");
    }
    if s.enabled {
        out.push_str(&format!("{} kept on this node, {} bytes (cap {} bytes, kept for {})", s.count, s.bytes, s.cap_bytes, age(s.max_age_secs)));
    }
    if let Some(why) = &s.stopped {
        out.push_str(&format!("; {why}"));
    }
    out
}

/// `604800` → `7d`, `90` → `90s`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
