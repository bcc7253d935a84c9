//! Applying a peer's page: local changes of its paths are scanned first (so a change still
//! waiting for its batch is seen as what it is, and may conflict), every entry is decided,
//! the entries the page will record are journalled durably, then the page is carried out
//! (parents first, inline content as one durable batch, deletions last, renames matched by
//! content) and recorded with its needs and the peer's progress in one transaction.

use std::collections::HashMap;
use std::time::Instant;

use super::decide::{Decision, decide};
use super::entry::{Content, Done};
use crate::agent::Agent;
use crate::agent::index::{Batch, Need, Progress, Stored};
use crate::agent::root::durable::Pending;
use crate::agent::root::{DiskMeta, Expect, Lookups};
use crate::agent::scan::{self, Target};
use crate::protocol::wire::ChangesResponse;
use crate::protocol::{Entry, EntryKind, RelPath, VersionOrdering};

/// One item of a page with the local state it is decided against.
struct Item {
    r: Entry,
    local: Option<Stored>,
    disk: Option<DiskMeta>,
    held: bool,
}

/// Writes collected for the page's durable batch, with what to record for each.
#[derive(Default)]
pub(super) struct Writes {
    pending: Vec<Pending>,
    then: Vec<(Option<Entry>, Entry)>,
}

impl Writes {
    /// A file to write; `record` once written (`None`: a conflict copy); `remote` is the
    /// version it came with, retried if the write fails.
    pub(super) fn push(&mut self, p: Pending, record: Option<Entry>, remote: Entry) {
        self.pending.push(p);
        self.then.push((record, remote));
    }
}

impl Agent {
    /// Applies one page of a peer's changes, then records the progress through its log.
    pub(in crate::agent) fn process_page(&mut self, peer: &str, page: ChangesResponse) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let blobs: HashMap<[u8; 32], Vec<u8>> = page.blobs.into_iter().map(|b| (b.hash, b.data)).collect();
        let entries: Vec<Entry> = page.entries.into_iter().map(|(_, e)| e).filter(|e| !self.excludes.is_excluded(&e.path)).collect();
        // A version this node has already (equal to or older than its own) with nothing
        // pending for its path changes nothing, whatever the disk holds (a local change not
        // scanned yet only makes the local version newer): skipped before any disk work. These
        // are a mesh's relays, and every node's own changes coming back from its peers.
        let mut news = Vec::with_capacity(entries.len());
        for r in entries {
            let local = self.index.get(&r.path)?;
            let need = self.index.get_need(&r.path)?;
            if need.is_none() && local.as_ref().is_some_and(|l| matches!(r.version.compare(&l.entry.version), VersionOrdering::Equal | VersionOrdering::Older)) {
                continue;
            }
            news.push((r, local, need));
        }
        let paths: Vec<RelPath> = news.iter().map(|(r, _, _)| r.path.clone()).collect();
        // What the pre-scan saw on disk, if it scanned nothing (else everything is read again).
        let mut seen = self.prescan(&paths)?;
        let mut items = Vec::with_capacity(news.len());
        let mut batch = Batch::default();
        for (r, local, need) in news {
            let (local, need, disk) = match seen.as_mut().and_then(|m| m.remove(&r.path)) {
                Some(disk) => (local, need, disk),
                None => (self.index.get(&r.path)?, self.index.get_need(&r.path)?, self.root.stat(&r.path).ok().flatten()),
            };
            if let Some(n) = need
                && !n.force
                && (matches!(r.version.compare(&n.entry.version), VersionOrdering::Newer | VersionOrdering::Equal) || n.copy_of.is_some())
            {
                // A newer version supersedes the pending one (decided below, or queued again);
                // a conflict copy announced by the node that held the losing content replaces
                // this node's own attempt to make it (same name, same content).
                batch.remove_needs.push(r.path.clone());
            }
            items.push(Item { r, local, disk, held: false });
        }
        // Files this page would replace or delete that a process has open for writing wait
        // (only looked up when the page may touch an existing file: /proc is read then, every
        // fd of every process). A version this node already has (a peer relaying it, n - 2
        // times per change in a mesh of n) is ignored whatever is open: on 10 nodes, reading
        // /proc for those relays took a third of the machine's CPU.
        let may_replace = |i: &Item| {
            i.disk.as_ref().is_some_and(|d| d.kind == EntryKind::File)
                && i.local.as_ref().is_none_or(|l| !matches!(i.r.version.compare(&l.entry.version), VersionOrdering::Equal | VersionOrdering::Older))
        };
        let writers = self.writers_if(items.iter().any(may_replace));
        for i in &mut items {
            i.held =
                self.batcher.is_writing(&i.r.path) || !self.disk_matches(i.local.as_ref(), i.disk.as_ref()) || i.disk.as_ref().is_some_and(|d| d.kind == EntryKind::File && writers.contains(&d.ino));
        }
        let (mut live, mut dead): (Vec<Item>, Vec<Item>) = items.into_iter().partition(|i| !i.r.deleted);
        live.sort_by(|a, b| a.r.path.cmp(&b.r.path));
        dead.sort_by(|a, b| b.r.path.cmp(&a.r.path));

        // Decide everything once and journal what will be recorded, before anything is touched.
        let me = self.index.node_id;
        let mut decisions: HashMap<RelPath, Decision> = HashMap::new();
        let mut planned = Vec::new();
        for i in live.iter().chain(dead.iter()).filter(|i| !i.held) {
            let d = decide(i.local.as_ref().map(|s| &s.entry), &i.r, me);
            match &d {
                Decision::Apply { version, .. } => {
                    let mut e = i.r.clone();
                    e.version = version.clone();
                    planned.push(e);
                }
                Decision::Merge { version, meta_from_remote } => {
                    let mut e = if *meta_from_remote { i.r.clone() } else { i.local.as_ref().expect("BUG: merge needs a local entry").entry.clone() };
                    e.version = version.clone();
                    planned.push(e);
                }
                _ => {}
            }
            decisions.insert(i.r.path.clone(), d);
        }
        self.index.journal_put(&planned)?;

        // Files deleted in this page whose content reappears under another name: renames.
        let mut moves: HashMap<[u8; 32], Vec<(RelPath, Expect)>> = HashMap::new();
        for d in &dead {
            if let (Some(l), Some(disk)) = (&d.local, &d.disk)
                && !l.entry.deleted
                && l.entry.kind == EntryKind::File
                && matches!(decisions.get(&d.r.path), Some(Decision::Apply { .. }))
            {
                moves.entry(l.entry.hash).or_default().push((d.r.path.clone(), Expect::Is(disk.clone())));
            }
        }

        self.root.defer_dir_syncs();
        let n = live.len() + dead.len();
        let mut lags = Vec::new();
        let now_ns = scan::now_ns();
        let mut writes = Writes::default();
        let mut result = Ok(());
        for i in live {
            if i.r.kind == EntryKind::File && i.r.modified_by == page.node_id && now_ns - i.r.mtime_ns < 60_000_000_000 && now_ns >= i.r.mtime_ns {
                lags.push(((now_ns - i.r.mtime_ns) / 1_000_000) as u64);
            }
            let content = match (blobs.get(&i.r.hash), decisions.get(&i.r.path)) {
                _ if i.r.kind != EntryKind::File => Content::None,
                (Some(b), _) => Content::Bytes(b.clone()),
                (None, Some(Decision::Apply { conflict_copy: None, .. })) if i.local.as_ref().is_none_or(|l| l.entry.deleted || l.entry.hash != i.r.hash) => {
                    match moves.get_mut(&i.r.hash).and_then(Vec::pop) {
                        Some((src, expect)) => Content::Move(src, expect),
                        None => Content::None,
                    }
                }
                _ => Content::None,
            };
            result = self.page_item(peer, i, content, &mut batch, &mut writes);
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            // Inline content reaches its names only once all of it is durable, and before the
            // deletions, which may remove the directories it was written in.
            self.finish_writes(peer, writes, &mut batch);
            let mut more = Writes::default();
            for i in dead {
                result = self.page_item(peer, i, Content::None, &mut batch, &mut more);
                if result.is_err() {
                    break;
                }
            }
            self.finish_writes(peer, more, &mut batch);
        }
        // Directories are made durable before the page is recorded as applied.
        self.root.sync_dirty_dirs();
        if let Err(e) = result {
            // What reached the disk is recognised from the journal; the page is asked again.
            self.reconcile("after a failed page")?;
            return Err(e);
        }
        // What the page displaced is recorded as versions before the page is recorded.
        self.flush_versions();
        let applied = batch.commits.len();
        let queued = batch.put_needs.clone();
        batch.progress = Some((peer.to_owned(), Progress { index_id: page.index_id, seq: page.last_seq }));
        batch.clear_journal = true;
        self.record_received(peer, &batch.commits, true);
        self.index.apply(batch)?;
        for need in &queued {
            self.schedule(need);
        }
        let lag = lags.iter().max().copied();
        if let Some(l) = lag {
            self.lag.insert(peer.to_owned(), l);
        }
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.counters.applied += applied as u64;
        let p = st.peers.entry(peer.to_owned()).or_default();
        p.their_seq_processed = page.last_seq;
        if lag.is_some() {
            p.lag_ms = lag;
        }
        drop(st);
        if applied > 0 {
            self.log.normal(format!("applied {applied} of {n} change(s) from {peer} in {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0));
        }
        Ok(())
    }

    /// One item of a page: held back while a local write is in progress, else applied.
    fn page_item(&mut self, peer: &str, i: Item, content: Content, batch: &mut Batch, writes: &mut Writes) -> anyhow::Result<()> {
        if i.held {
            tracing::debug!(path = %i.r.path, from = peer, "deferred: local write in progress");
            let p = i.r.path.clone();
            batch.put_needs.push(Need {
                entry: i.r,
                source: peer.to_owned(),
                attempts: 1,
                last_error: Some(format!("{p}: a local write is in progress; applying after it completes")),
                force: false,
                copy_of: None,
            });
            return Ok(());
        }
        if self.s.receive_only && self.local_mods.contains(&i.r.path) {
            return Ok(());
        }
        let r = i.r.clone();
        let done = self.apply_entry(peer, i.r, i.local.as_ref(), i.disk, content, false)?;
        for d in done {
            match d {
                Done::Record(e, ino) => batch.commits.push((e, ino)),
                Done::Queue(need) => batch.put_needs.push(need),
                Done::Write(p, e) => writes.push(p, e, r.clone()),
            }
        }
        Ok(())
    }

    /// Writes the collected files as one durable batch and records each.
    pub(super) fn finish_writes(&mut self, peer: &str, writes: Writes, batch: &mut Batch) {
        let results = self.root.write_batch(writes.pending);
        for ((path, res), (then, remote)) in results.into_iter().zip(writes.then) {
            match (res, then) {
                (Ok(ino), Some(e)) => batch.commits.push((e, ino)),
                (Ok(_), None) => self.batcher.add(path, crate::agent::watch::HintKind::Tree, Instant::now()),
                (Err(err), Some(_)) => batch.put_needs.extend(self.failed(peer, remote, err).and_then(|d| match d {
                    Done::Queue(n) => Some(n),
                    _ => None,
                })),
                // A conflict copy that could not be written: fetch it again later; our version
                // does not claim to supersede the losing one until it is here.
                (Err(err), None) => {
                    batch.commits.retain(|(e, _)| e.path != remote.path);
                    batch.put_needs.push(super::entry::copy_need(&remote, path, peer, Some(err.to_string())));
                }
            }
        }
    }

    /// Scans the local changes of `paths` that the index does not know yet (pending in the
    /// batcher, or on disk but not recorded), so decisions see them. Returns what it found on
    /// disk for each path if it scanned nothing (a scan may change other paths' entries too).
    pub(in crate::agent) fn prescan(&mut self, paths: &[RelPath]) -> anyhow::Result<Option<HashMap<RelPath, Option<DiskMeta>>>> {
        let mut targets = Vec::new();
        let mut seen = HashMap::with_capacity(paths.len());
        let mut dirs = Lookups::default();
        for p in paths {
            if seen.contains_key(p) {
                continue;
            }
            if let Some(t) = self.batcher.take_path(p) {
                targets.push(t);
                seen.insert(p.clone(), None);
                continue;
            }
            let stored = self.index.get(p)?;
            let disk = self.root.stat_in(p, &mut dirs).ok().flatten();
            if !self.disk_matches(stored.as_ref(), disk.as_ref()) {
                targets.push(Target::Path { path: p.clone(), recursive: false });
            }
            seen.insert(p.clone(), disk);
        }
        if targets.is_empty() {
            return Ok(Some(seen));
        }
        // (the directories held for the lookups are closed before the scan needs descriptors)
        drop(dirs);
        self.local_batch(targets, "before applying peer changes")?;
        Ok(None)
    }
}
