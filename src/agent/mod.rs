//! The node agent: keeps one folder identical on every node of an environment.
//!
//! ```text
//!  inotify ──watch──▶ Hint ──▶ batch (delay, write-quiet) ──▶ scan ──▶ index.commit ──┐
//!                                                                                       │ seq
//!  peer A ◀── POST /v1/changes long-poll (pages of entries + small blobs) ◀── server ◀─┘
//!  peer A ──▶ peers task ──▶ Event::Page ──▶ apply: decide ─▶ write / rename / delete
//!                                                     └─▶ need ─▶ transfer (file|delta) ─▶ Event::Fetched
//! ```
//!
//! One event loop (`Agent::run_loop`) owns the index writes, the batcher and every change
//! to the sync root; peer tasks, fetches and the HTTP server talk to it through `Event`s.
//! A change applied from a peer is recorded in the index with the peer's version and the
//! inode it landed on, so when inotify reports it the scanner finds nothing new: applied
//! changes are never announced again as local ones.

pub mod apply;
pub mod batch;
pub mod config;
pub mod exclude;
pub mod index;
pub mod lsyncd_log;
pub mod peers;
pub mod root;
pub mod scan;
pub mod server;
pub mod status;
pub mod tls;
pub mod transfer;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::apply::{Decision, decide};
use self::batch::Batcher;
use self::config::Settings;
use self::exclude::Excludes;
use self::index::{Index, Need, Progress, Stored};
use self::lsyncd_log::LsyncdLog;
use self::root::{DiskMeta, RootError, SyncRoot};
use self::scan::{Scanner, Target};
use self::status::Status;
use self::watch::{Hint, HintKind, WatchShared};
use crate::protocol::wire::ChangesResponse;
use crate::protocol::{Entry, EntryKind, RelPath};

/// Everything that can wake the event loop besides file-system hints and timers.
pub enum Event {
    /// A page of a peer's changes; `done` is answered once it is processed.
    Page { peer: String, page: ChangesResponse, done: oneshot::Sender<anyhow::Result<()>> },
    /// A content fetch finished (into a temp file) or failed.
    Fetched { need: Need, result: anyhow::Result<transfer::Fetched> },
    Admin(AdminCmd, oneshot::Sender<String>),
}

#[derive(Debug, Clone, Copy)]
pub enum AdminCmd {
    Reload,
    Revert,
    Rescan,
    ConfirmEmpty,
    Pause(bool),
}

const MAX_PARALLEL_FETCHES: usize = 4;

struct Agent {
    s: Settings,
    root: SyncRoot,
    index: Arc<Index>,
    excludes: Excludes,
    log: Arc<LsyncdLog>,
    status: Arc<Mutex<Status>>,
    batcher: Batcher,
    client: reqwest::Client,
    peer_ctx: Arc<peers::PeerCtx>,
    links: HashMap<String, peers::PeerLink>,
    events: mpsc::Sender<Event>,
    fetching: HashSet<RelPath>,
    retry_at: BTreeMap<RelPath, Instant>,
    fetch_sem: Arc<Semaphore>,
    allow_empty_root: bool,
    held_deletes: usize,
    paused: Arc<AtomicBool>,
    local_mods: BTreeSet<RelPath>,
    shutdown: CancellationToken,
    summary_seq: Option<u64>,
    lag: HashMap<String, u64>,
}

/// Runs an agent until `shutdown` is cancelled. Fails only on critical errors: the root
/// missing at start, the index unusable, the port taken.
pub async fn run(s: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let log = Arc::new(LsyncdLog::open(&s.log_dir, s.log_max_bytes)?);
    log.normal(format!("filesync {} agent {} starting: root {}, delay {} s, {} peer(s)", env!("CARGO_PKG_VERSION"), s.node_name, s.root.display(), s.delay.as_secs(), s.peers.len()));
    let index = Arc::new(Index::open(&s.state_dir).inspect_err(|e| log.error(format!("{e:#}")))?);
    let listener = TcpListener::bind(s.listen).await.with_context(|| format!("cannot listen on {} (is another agent or program using it?)", s.listen)).inspect_err(|e| log.error(format!("{e:#}")))?;
    let server_tls = tls::server_config(&s.tls).inspect_err(|e| log.error(format!("{e:#}")))?;
    let client = tls::http_client(&s.tls)?;

    let mut fixed = Vec::new();
    for dir in [s.root.parent().map(|p| p.join("lsyncd")), Some(s.log_dir.clone()), Some(s.state_dir.clone())].into_iter().flatten() {
        if let Ok(rel) = RelPath::from_fs(&s.root, &dir) {
            fixed.push(rel.as_str().to_owned());
        }
    }
    if !fixed.iter().any(|f| f == "lsyncd") {
        fixed.push("lsyncd".to_owned());
    }
    let excludes = Excludes::new(&s.excludes, fixed)?;

    let status = Arc::new(Mutex::new(Status {
        node_name: s.node_name.clone(),
        node_id: format!("{:016x}", index.node_id),
        root: s.root.display().to_string(),
        delay_s: s.delay.as_secs(),
        receive_only: s.receive_only,
        started_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        excludes: excludes.describe().into_iter().chain(s.excludes.iter().cloned()).collect(),
        ..Status::default()
    }));

    let (ev_tx, mut ev_rx) = mpsc::channel::<Event>(64);
    let (hint_tx, mut hint_rx) = mpsc::channel::<Hint>(65_536);
    let wshared = Arc::new(WatchShared { overflowed: AtomicBool::new(false), wake: tokio::sync::Notify::new(), warning: Mutex::new(None) });
    let _watcher = match watch::start(s.root.clone(), excludes.clone(), hint_tx, wshared.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            log.warn(format!("{e:#}"));
            status.lock().expect("BUG: poisoned").warnings.push(format!("{e:#}"));
            None
        }
    };

    let peer_ctx = Arc::new(peers::PeerCtx { me: s.node_name.clone(), client: client.clone(), index: index.clone(), events: ev_tx.clone(), status: status.clone(), log: log.clone() });
    let paused = Arc::new(AtomicBool::new(false));
    let mut agent = Agent {
        root: SyncRoot::new(s.root.clone()),
        batcher: Batcher::new(s.delay, s.write_quiet, s.max_batch),
        s,
        index,
        excludes,
        log,
        status,
        client,
        peer_ctx,
        links: HashMap::new(),
        events: ev_tx.clone(),
        fetching: HashSet::new(),
        retry_at: BTreeMap::new(),
        fetch_sem: Arc::new(Semaphore::new(MAX_PARALLEL_FETCHES)),
        allow_empty_root: false,
        held_deletes: 0,
        paused: paused.clone(),
        local_mods: BTreeSet::new(),
        shutdown: shutdown.clone(),
        summary_seq: None,
        lag: HashMap::new(),
    };

    // Temp files left by a crash are garbage: the real names were never touched.
    let mut stale = 0;
    for e in walkdir::WalkDir::new(&agent.s.root).into_iter().flatten() {
        if e.file_name().to_str().is_some_and(root::is_temp_name) && std::fs::remove_file(e.path()).is_ok() {
            stale += 1;
        }
    }
    if stale > 0 {
        agent.log.normal(format!("removed {stale} temp file(s) left by an interrupted transfer"));
    }
    // Start-up: a full scan against the persistent index (unchanged files are not re-hashed).
    let t0 = Instant::now();
    let before = agent.index.len()?;
    agent.local_batch(vec![Target::Root], "startup scan")?;
    for n in agent.index.needs()? {
        agent.retry_at.insert(n.entry.path.clone(), Instant::now());
    }
    agent.log.normal(format!("startup scan: {} entries in the index ({} before), {:.0} ms", agent.index.len()?, before, t0.elapsed().as_secs_f64() * 1000.0));

    let app = server::router(server::AppState {
        index: agent.index.clone(),
        root: agent.root.clone(),
        node_name: agent.s.node_name.clone(),
        status: agent.status.clone(),
        log: agent.log.clone(),
        events: ev_tx.clone(),
        paused,
    });
    let log2 = agent.log.clone();
    let st2 = agent.status.clone();
    let on_refused: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |m: String| {
        log2.warn(&m);
        st2.lock().expect("BUG: poisoned").counters.refused += 1;
    });
    tokio::spawn(tls::serve(listener, server_tls, app, shutdown.clone(), on_refused));
    let peers = agent.s.peers.clone();
    for p in peers {
        agent.add_peer(p.name, p.address.to_string());
    }
    agent.refresh_status();
    agent.status.lock().expect("BUG: poisoned").startup_complete = true;
    agent.log.normal(format!("startup complete: listening on {}", agent.s.listen));

    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    let rescan_every = agent.s.rescan_interval;
    let mut next_rescan = rescan_every.map(|d| Instant::now() + d);
    // Without a complete set of inotify watches the tree is polled instead (never silence).
    let poll_every = agent.s.delay.max(Duration::from_secs(10));
    let mut polling = false;

    loop {
        let now = Instant::now();
        // Retries are due only when a fetch slot is free; a finished fetch wakes the loop.
        let retry = if agent.fetch_sem.available_permits() > 0 { agent.retry_at.values().min().copied() } else { None };
        let mut wake = [agent.batcher.deadline(), retry, next_rescan].into_iter().flatten().min().unwrap_or(now + Duration::from_secs(3600));
        if wake < now {
            wake = now;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            h = hint_rx.recv() => {
                if let Some(h) = h {
                    agent.on_hint(h);
                    while let Ok(h) = hint_rx.try_recv() {
                        agent.on_hint(h);
                    }
                }
            }
            _ = wshared.wake.notified() => {}
            ev = ev_rx.recv() => match ev {
                Some(Event::Page { peer, page, done }) => {
                    let r = agent.process_page(&peer, page);
                    if let Err(e) = &r {
                        agent.error(format!("applying changes from {peer}: {e:#}"));
                    }
                    let _ = done.send(r);
                }
                Some(Event::Fetched { need, result }) => {
                    if let Err(e) = agent.on_fetched(need, result) {
                        agent.error(format!("{e:#}"));
                    }
                }
                Some(Event::Admin(cmd, reply)) => {
                    let msg = agent.admin(cmd);
                    let _ = reply.send(msg);
                }
                None => break,
            },
            _ = hup.recv() => { agent.admin(AdminCmd::Reload); }
            _ = status_tick.tick() => agent.refresh_status(),
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
        let degraded = _watcher.is_none() || wshared.warning.lock().expect("BUG: poisoned").is_some();
        if degraded && !polling {
            polling = true;
            agent.warn(format!("file watching is incomplete; rescanning the tree every {} s until the agent is restarted with enough inotify watches", poll_every.as_secs()));
            next_rescan = Some(Instant::now() + poll_every);
        }
        if wshared.overflowed.swap(false, Ordering::SeqCst) {
            agent.warn("file-system events arrived faster than they could be queued; rescanning the whole tree".into());
            agent.batcher.add_root(Instant::now());
        }
        if let Some(t) = next_rescan {
            if Instant::now() >= t {
                agent.batcher.add_root(Instant::now());
                next_rescan = if polling { Some(Instant::now() + poll_every) } else { rescan_every.map(|d| Instant::now() + d) };
            }
        }
        if !agent.paused.load(Ordering::SeqCst) {
            let due = agent.batcher.take_due(Instant::now());
            if !due.is_empty() {
                if let Err(e) = agent.local_batch(due, "batch") {
                    agent.error(format!("scan failed: {e:#}"));
                }
            }
        }
        agent.start_due_fetches();
    }
    agent.log.normal("shutting down (signal received); pending changes stay in the index and are sent on the next start");
    for l in agent.links.values() {
        l.cancel.cancel();
    }
    agent.refresh_status();
    Ok(())
}

impl Agent {
    fn error(&self, msg: String) {
        self.log.error(&msg);
        self.status.lock().expect("BUG: poisoned").counters.errors += 1;
    }

    fn warn(&self, msg: String) {
        self.log.warn(&msg);
    }

    fn on_hint(&mut self, h: Hint) {
        let now = Instant::now();
        match h {
            Hint::Path(p, k) => self.batcher.add(p, k, now),
            Hint::Rescan(reason) => {
                self.warn(reason.clone());
                let mut st = self.status.lock().expect("BUG: poisoned");
                if !st.warnings.contains(&reason) {
                    st.warnings.push(reason);
                }
                drop(st);
                self.batcher.add_root(now);
            }
        }
    }

    fn scanner(&self) -> Scanner<'_> {
        Scanner {
            root: &self.root,
            index: &self.index,
            excludes: &self.excludes,
            node_id: self.index.node_id,
            node_name: &self.s.node_name,
            guard_empty_root: !self.allow_empty_root,
        }
    }

    /// Scans the targets and commits what changed as new local versions.
    fn local_batch(&mut self, targets: Vec<Target>, why: &str) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let full = targets.contains(&Target::Root);
        let out = tokio::task::block_in_place(|| self.scanner().scan(&targets))?;
        for (e, _) in &out.changes {
            tracing::debug!(path = %e.path, version = ?e.version, deleted = e.deleted, why, "local change");
        }
        for p in out.unstable {
            self.batcher.add(p, HintKind::Writing, Instant::now());
        }
        for e in &out.errors {
            self.error(e.clone());
        }
        for (p, ino) in &out.inode_updates {
            self.index.set_ino(p, *ino)?;
        }
        if full {
            if out.held_deletes > 0 {
                if self.held_deletes != out.held_deletes {
                    self.error(format!(
                        "sync root {} is empty but the index lists {} entries: holding all deletes (is a volume unmounted?). If you really emptied it, run `filesync ctl --config <agent.toml> confirm-empty`",
                        self.s.root.display(),
                        out.held_deletes
                    ));
                }
            } else if self.held_deletes > 0 {
                self.log.normal("sync root has content again; no longer holding deletes");
            }
            self.held_deletes = out.held_deletes;
            self.allow_empty_root = false;
        }
        if out.changes.is_empty() {
            return Ok(());
        }
        if self.s.receive_only {
            if full {
                self.local_mods.clear();
            }
            for (e, _) in &out.changes {
                self.local_mods.insert(e.path.clone());
            }
            return Ok(());
        }
        let (mut files, mut dirs, mut links, mut dels, mut bytes) = (0, 0, 0, 0, 0u64);
        for (e, _) in &out.changes {
            match (e.deleted, e.kind) {
                (true, _) => dels += 1,
                (false, EntryKind::File) => {
                    files += 1;
                    bytes += e.size;
                }
                (false, EntryKind::Dir) => dirs += 1,
                (false, EntryKind::Symlink) => links += 1,
            }
        }
        let n = out.changes.len();
        let sample: Vec<String> = out.changes.iter().take(3).map(|(e, _)| e.path.to_string()).collect();
        self.index.commit(out.changes)?;
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.counters.batches += 1;
        st.counters.local_changes += n as u64;
        drop(st);
        self.log.normal(format!(
            "{why}: {n} local change(s): {files} file(s) ({bytes} bytes), {dirs} dir(s), {links} symlink(s), {dels} delete(s) [{}{}] in {:.1} ms",
            sample.join(", "),
            if n > 3 { ", ..." } else { "" },
            t0.elapsed().as_secs_f64() * 1000.0
        ));
        Ok(())
    }

    fn add_peer(&mut self, name: String, address: String) {
        let link = peers::spawn(self.peer_ctx.clone(), name.clone(), address.clone(), &self.shutdown);
        let mut st = self.status.lock().expect("BUG: poisoned");
        let p = st.peers.entry(name.clone()).or_default();
        p.address = address;
        p.removed = false;
        drop(st);
        self.links.insert(name, link);
    }

    fn remove_peer(&mut self, name: &str) {
        if let Some(l) = self.links.remove(name) {
            l.cancel.cancel();
        }
        if let Some(p) = self.status.lock().expect("BUG: poisoned").peers.get_mut(name) {
            p.removed = true;
            p.connected = false;
        }
    }

    /// Whether the disk still shows what the index recorded for `path`.
    fn disk_matches(&self, stored: Option<&Stored>, disk: Option<&DiskMeta>) -> bool {
        match (stored.filter(|s| !s.entry.deleted), disk) {
            (None, None) => true,
            (Some(s), Some(d)) => {
                s.entry.kind == d.kind
                    && s.entry.mode == d.mode
                    && (d.kind == EntryKind::Dir || (s.entry.size == d.size && s.entry.mtime_ns == d.mtime_ns && s.ino == d.ino))
            }
            _ => false,
        }
    }

    /// Applies one page of a peer's changes, then records the progress through its log.
    fn process_page(&mut self, peer: &str, page: ChangesResponse) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut blobs: HashMap<[u8; 32], Vec<u8>> = page.blobs.into_iter().map(|b| (b.hash, b.data)).collect();
        let mut entries: Vec<Entry> = Vec::with_capacity(page.entries.len());
        for (_, e) in page.entries {
            if self.excludes.is_excluded(&e.path) {
                continue;
            }
            entries.push(e);
        }
        // Bring the index up to date for these paths first, so a local change that is still
        // waiting for its batch is seen as what it is (and may conflict).
        let mut targets = Vec::new();
        for e in &entries {
            if let Some(t) = self.batcher.take_path(&e.path) {
                targets.push(t);
                continue;
            }
            let stored = self.index.get(&e.path)?;
            let disk = self.root.stat(&e.path).ok().flatten();
            if !self.disk_matches(stored.as_ref(), disk.as_ref()) {
                targets.push(Target::Path { path: e.path.clone(), recursive: false });
            }
        }
        if !targets.is_empty() {
            self.local_batch(targets, "before applying peer changes")?;
        }
        let (mut live, mut dead): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| !e.deleted);
        live.sort_by(|a, b| a.path.cmp(&b.path));
        dead.sort_by(|a, b| b.path.cmp(&a.path));
        // Files deleted in this page whose content reappears under another name: renames.
        let mut rename_src: HashMap<[u8; 32], Vec<RelPath>> = HashMap::new();
        for d in &dead {
            if let Some(s) = self.index.get(&d.path)? {
                if !s.entry.deleted && s.entry.kind == EntryKind::File && d.version.compare(&s.entry.version) == crate::protocol::VersionOrdering::Newer {
                    rename_src.entry(s.entry.hash).or_default().push(d.path.clone());
                }
            }
        }
        let mut commits: Vec<(Entry, u64)> = Vec::new();
        let n = live.len() + dead.len();
        let mut lags = Vec::new();
        let now_ns = scan::now_ns();
        for r in live.into_iter().chain(dead) {
            if !r.deleted && r.kind == EntryKind::File && r.modified_by == page.node_id && now_ns - r.mtime_ns < 60_000_000_000 && now_ns >= r.mtime_ns {
                lags.push(((now_ns - r.mtime_ns) / 1_000_000) as u64);
            }
            self.apply_one(peer, r, &mut blobs, &mut rename_src, &mut commits)?;
        }
        let applied = commits.len();
        self.index.commit_with_progress(commits, Some((peer, Progress { index_id: page.index_id, seq: page.last_seq })))?;
        if let Some(l) = lags.iter().max() {
            self.lag.insert(peer.to_owned(), *l);
        }
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.counters.applied += applied as u64;
        let p = st.peers.entry(peer.to_owned()).or_default();
        p.their_seq_processed = page.last_seq;
        if let Some(l) = lags.iter().max() {
            p.lag_ms = Some(*l);
        }
        drop(st);
        if applied > 0 {
            self.log.normal(format!("applied {applied} of {n} change(s) from {peer} in {:.1} ms", t0.elapsed().as_secs_f64() * 1000.0));
        }
        Ok(())
    }

    fn defer(&mut self, r: Entry, peer: &str, why: String) -> anyhow::Result<()> {
        let need = Need { entry: r, source: peer.to_owned(), attempts: 0, last_error: Some(why), force: false, copy_of: None };
        self.index.put_need(&need)?;
        self.retry_at.insert(need.entry.path.clone(), Instant::now() + Duration::from_secs(2));
        Ok(())
    }

    fn apply_one(
        &mut self,
        peer: &str,
        r: Entry,
        blobs: &mut HashMap<[u8; 32], Vec<u8>>,
        rename_src: &mut HashMap<[u8; 32], Vec<RelPath>>,
        commits: &mut Vec<(Entry, u64)>,
    ) -> anyhow::Result<()> {
        if self.batcher.is_writing(&r.path) {
            tracing::debug!(path = %r.path, from = peer, "deferred: local write in progress");
            let p = r.path.clone();
            return self.defer(r, peer, format!("{p}: a local write is in progress; applying after it completes"));
        }
        if self.s.receive_only && self.local_mods.contains(&r.path) {
            return Ok(());
        }
        // A version that supersedes a pending fetch replaces it (it is applied or re-queued below).
        if let Some(n) = self.index.get_need(&r.path)? {
            if matches!(r.version.compare(&n.entry.version), crate::protocol::VersionOrdering::Newer | crate::protocol::VersionOrdering::Equal) && !n.force {
                self.index.remove_need(&r.path)?;
            }
        }
        let local = self.index.get(&r.path)?;
        let decision = decide(local.as_ref().map(|s| &s.entry), &r, self.index.node_id);
        tracing::debug!(path = %r.path, from = peer, remote = ?r.version, remote_deleted = r.deleted, local = ?local.as_ref().map(|s| (&s.entry.version, s.entry.deleted)), ?decision, "remote change");
        let res = match decision {
            Decision::Ignore => return Ok(()),
            Decision::KeepLocal { version, loser_copy } => {
                let l = local.expect("BUG: a conflict needs a local entry");
                let mut e = l.entry.clone();
                e.version = version;
                commits.push((e, l.ino));
                self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
                match &loser_copy {
                    Some(c) => self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept this node's version, {}'s saved as {c}", r.path, r.modified_by_name, r.modified_by_name)),
                    None => self.log.warn(format!("Conflict: {} was deleted on {} while it changed here; kept it", r.path, r.modified_by_name)),
                }
                match loser_copy {
                    None => Ok(()),
                    Some(copy) => self.keep_loser(peer, &r, copy, blobs),
                }
            }
            Decision::Merge { version, meta_from_remote } => {
                let l = local.expect("BUG: merge needs a local entry");
                let mut e = if meta_from_remote { r.clone() } else { l.entry.clone() };
                e.version = version;
                if meta_from_remote && !e.deleted {
                    self.set_meta(&e)
                } else {
                    Ok(l.ino)
                }
                .map(|ino| commits.push((e, ino)))
            }
            Decision::Apply { version, conflict_copy, conflict } => {
                let mut e = r.clone();
                e.version = version;
                let local_live = local.as_ref().filter(|s| !s.entry.deleted);
                if r.deleted {
                    match self.root.remove(&r.path) {
                        Ok(emptied) => {
                            if !emptied {
                                // Unannounced local files keep the directory: scan it again so
                                // they (and the directory) flow back out; nothing is lost.
                                self.batcher.add(r.path.clone(), HintKind::Tree, Instant::now());
                            }
                            commits.push((e, 0));
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                } else if r.kind == EntryKind::File && local_live.is_some_and(|l| l.entry.kind == EntryKind::File && l.entry.hash == r.hash) && conflict_copy.is_none() {
                    self.set_meta(&e).map(|ino| commits.push((e, ino)))
                } else if r.kind == EntryKind::File && r.size > 0 && !blobs.contains_key(&r.hash) && !rename_src.get(&r.hash).is_some_and(|v| !v.is_empty()) {
                    // Content must be fetched: the decision is taken again when it arrives.
                    let need = Need { entry: r, source: peer.to_owned(), attempts: 0, last_error: None, force: false, copy_of: None };
                    self.index.put_need(&need)?;
                    self.retry_at.insert(need.entry.path.clone(), Instant::now());
                    return Ok(());
                } else {
                    if conflict {
                        self.note_conflict(&r, conflict_copy.as_ref(), peer);
                    }
                    let prep = self.prepare_slot(&r.path, r.kind, local_live, conflict_copy.as_ref());
                    match prep {
                        Err(err) => Err(err),
                        Ok(()) => {
                            let res = match r.kind {
                                EntryKind::Dir => self.root.mkdir(&r.path, r.mode),
                                EntryKind::Symlink => self.root.symlink(&r.path, &r.target, r.mtime_ns),
                                EntryKind::File => {
                                    if let Some(data) = blobs.get(&r.hash) {
                                        let len = data.len() as u64;
                                        let res = self.root.write_atomic(&r.path, data, r.mode, r.mtime_ns);
                                        if res.is_ok() {
                                            self.status.lock().expect("BUG: poisoned").counters.bytes_received += len;
                                        }
                                        res
                                    } else if r.size == 0 {
                                        self.root.write_atomic(&r.path, &[], r.mode, r.mtime_ns)
                                    } else {
                                        let src = rename_src.get_mut(&r.hash).and_then(|v| v.pop()).expect("BUG: checked above");
                                        self.status.lock().expect("BUG: poisoned").counters.renames += 1;
                                        self.root.rename(&src, &r.path).and_then(|_| self.set_meta(&r))
                                    }
                                }
                            };
                            res.map(|ino| commits.push((e, ino)))
                        }
                    }
                }
            }
        };
        if let Err(err) = res {
            match err {
                RootError::Escapes { .. } => {
                    self.error(format!("refused change from {peer}: {err}"));
                    self.status.lock().expect("BUG: poisoned").counters.refused += 1;
                }
                other => {
                    let msg = other.to_string();
                    self.error(format!("cannot apply change from {peer}: {msg}; will retry"));
                    let need = Need { entry: r, source: peer.to_owned(), attempts: 1, last_error: Some(msg), force: false, copy_of: None };
                    self.index.put_need(&need)?;
                    self.retry_at.insert(need.entry.path.clone(), Instant::now() + Duration::from_secs(2));
                }
            }
        }
        let _ = blobs;
        Ok(())
    }

    /// Saves a losing remote version under its conflict-copy name, from the page's inline
    /// content or by fetching it; the scanner then announces the copy as a new file.
    fn keep_loser(&mut self, peer: &str, r: &Entry, copy: RelPath, blobs: &HashMap<[u8; 32], Vec<u8>>) -> Result<(), RootError> {
        if self.root.stat(&copy)?.is_some() {
            return Ok(());
        }
        match r.kind {
            EntryKind::Symlink => {
                self.root.symlink(&copy, &r.target, r.mtime_ns)?;
            }
            _ if r.size == 0 || blobs.contains_key(&r.hash) => {
                let data = blobs.get(&r.hash).map(Vec::as_slice).unwrap_or(&[]);
                self.root.write_atomic(&copy, data, r.mode, r.mtime_ns)?;
            }
            _ => {
                let mut entry = r.clone();
                entry.path = copy.clone();
                let need = Need { entry, source: peer.to_owned(), attempts: 0, last_error: None, force: false, copy_of: Some(r.path.clone()) };
                if let Err(e) = self.index.put_need(&need) {
                    self.error(format!("cannot queue conflict copy {copy}: {e:#}"));
                }
                self.retry_at.insert(copy, Instant::now());
                return Ok(());
            }
        }
        self.batcher.add(copy, HintKind::Tree, Instant::now());
        Ok(())
    }

    fn note_conflict(&self, winner: &Entry, copy: Option<&RelPath>, peer: &str) {
        self.status.lock().expect("BUG: poisoned").counters.conflicts += 1;
        let kept = match copy {
            Some(c) => format!("this node's version saved as {c}"),
            None => "this node's version was a deletion".to_owned(),
        };
        self.log.warn(format!("Conflict: {} was changed here and on {} at the same time; kept {}'s version (via {peer}), {kept}", winner.path, winner.modified_by_name, winner.modified_by_name));
    }

    /// Makes room for a new version at `path`: moves the losing local content to its
    /// conflict copy, or removes a local item of another kind that the new version replaces.
    fn prepare_slot(&mut self, path: &RelPath, kind: EntryKind, local: Option<&Stored>, conflict_copy: Option<&RelPath>) -> Result<(), RootError> {
        if let Some(copy) = conflict_copy {
            if self.root.stat(path)?.is_some() {
                self.root.rename(path, copy)?;
                self.batcher.add(copy.clone(), HintKind::Tree, Instant::now());
            }
            return Ok(());
        }
        let _ = local;
        match self.root.stat(path)? {
            Some(d) if d.kind == kind => Ok(()),
            // A directory is replaced only once it is empty (its children's deletions come
            // in the same page or later; the item is retried until then).
            Some(d) if d.kind == EntryKind::Dir => {
                if self.root.remove(path)? {
                    Ok(())
                } else {
                    Err(RootError::Io { path: path.clone(), source: std::io::Error::other("a non-empty directory is in the way") })
                }
            }
            // A file or link that a newer version replaces by another kind.
            Some(_) if kind == EntryKind::Dir => self.root.remove(path).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Sets mode (and mtime for files and links) of an existing path; returns its inode.
    fn set_meta(&self, e: &Entry) -> Result<u64, RootError> {
        let full = self.root.full(&e.path);
        if e.kind != EntryKind::Symlink {
            self.root.set_mode(&e.path, e.mode)?;
        }
        if e.kind == EntryKind::File {
            let t = filetime::FileTime::from_unix_time(e.mtime_ns.div_euclid(1_000_000_000), e.mtime_ns.rem_euclid(1_000_000_000) as u32);
            filetime::set_file_mtime(&full, t).map_err(|err| RootError::Io { path: e.path.clone(), source: err })?;
        }
        Ok(self.root.stat(&e.path)?.map(|d| d.ino).unwrap_or(0))
    }

    fn start_due_fetches(&mut self) {
        let now = Instant::now();
        let due: Vec<RelPath> = self.retry_at.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
        for path in due {
            if self.fetching.contains(&path) {
                // Looked at again when the fetch in flight reports back.
                self.retry_at.remove(&path);
                continue;
            }
            let Ok(permit) = self.fetch_sem.clone().try_acquire_owned() else { break };
            self.retry_at.remove(&path);
            let Ok(Some(need)) = self.index.get_need(&path) else { continue };
            // Already have this version or a newer one (it arrived another way): done.
            let local = self.index.get(&path).ok().flatten();
            let done = match &need.copy_of {
                Some(_) => self.root.stat(&path).ok().flatten().is_some() || need.attempts >= 20,
                None => !need.force && matches!(decide(local.as_ref().map(|s| &s.entry), &need.entry, self.index.node_id), Decision::Ignore | Decision::KeepLocal { .. }),
            };
            if done {
                tracing::debug!(path = %path, "need already satisfied");
                if need.copy_of.is_some() && need.attempts >= 20 {
                    self.error(format!("giving up on conflict copy {path}: no peer still has that version ({})", need.last_error.clone().unwrap_or_default()));
                }
                let _ = self.index.remove_need(&path);
                continue;
            }
            // Small or empty content, directories, links and deletions need no transfer:
            // re-offer them to the applier as a one-entry page.
            if need.copy_of.is_none() && (need.entry.deleted || need.entry.kind != EntryKind::File || need.entry.size == 0) {
                drop(permit);
                let _ = self.index.remove_need(&path);
                let mut commits = Vec::new();
                let src = need.source.clone();
                if let Err(e) = self.apply_one(&src, need.entry, &mut HashMap::new(), &mut HashMap::new(), &mut commits).and_then(|_| self.index.commit(commits).map(|_| ())) {
                    self.error(format!("{e:#}"));
                }
                continue;
            }
            self.fetching.insert(path.clone());
            let mut addrs: Vec<String> = Vec::new();
            if let Some(l) = self.links.get(&need.source) {
                addrs.push(l.address.clone());
            }
            addrs.extend(self.links.values().filter(|l| l.name != need.source).map(|l| l.address.clone()));
            let base = self.index.get(&path).ok().flatten().filter(|s| {
                !s.entry.deleted && s.entry.kind == EntryKind::File && s.entry.size >= transfer::DELTA_MIN && need.entry.size >= transfer::DELTA_MIN
            }).map(|s| s.entry.path);
            let base = if need.copy_of.is_some() { None } else { base };
            let mut wanted = need.entry.clone();
            if let Some(orig) = &need.copy_of {
                wanted.path = orig.clone();
            }
            let client = self.client.clone();
            let root = self.root.clone();
            let tx = self.events.clone();
            tokio::spawn(async move {
                let mut result = Err(anyhow::anyhow!("no peer is connected to fetch it from"));
                for a in &addrs {
                    result = transfer::fetch(&client, a, &root, &wanted, base.clone()).await;
                    if result.is_ok() {
                        break;
                    }
                }
                drop(permit);
                let _ = tx.send(Event::Fetched { need, result }).await;
            });
        }
    }

    fn on_fetched(&mut self, mut need: Need, result: anyhow::Result<transfer::Fetched>) -> anyhow::Result<()> {
        let path = need.entry.path.clone();
        self.fetching.remove(&path);
        // A newer version may have replaced this need while the fetch was in flight: then
        // this result is stale and the newer need (already queued) decides.
        let current = self.index.get_need(&path)?.is_some_and(|n| n.entry.version == need.entry.version && n.entry.hash == need.entry.hash);
        if !current {
            if let Ok(f) = &result {
                let _ = std::fs::remove_file(&f.tmp);
            }
            self.retry_at.entry(path).or_insert_with(Instant::now);
            return Ok(());
        }
        let f = match result {
            Ok(f) => f,
            Err(e) => {
                need.attempts += 1;
                let msg = format!("{path}: {e:#}");
                if need.attempts == 1 || need.attempts % 10 == 0 {
                    self.warn(format!("fetch failed (attempt {}): {msg}", need.attempts));
                }
                need.last_error = Some(msg);
                self.index.put_need(&need)?;
                let backoff = Duration::from_millis(500 * 2u64.pow(need.attempts.min(7)));
                self.retry_at.insert(path, Instant::now() + backoff.min(Duration::from_secs(60)));
                return Ok(());
            }
        };
        let discard = |f: transfer::Fetched| {
            let _ = std::fs::remove_file(&f.tmp);
        };
        if need.copy_of.is_some() {
            self.index.remove_need(&path)?;
            if self.root.stat(&path).ok().flatten().is_some() {
                discard(f);
                return Ok(());
            }
            let tmp = f.tmp.clone();
            match self.root.commit_temp(f.file, &tmp, &path, need.entry.mode, need.entry.mtime_ns) {
                Ok(_) => {
                    self.log.normal(format!("saved conflict copy {path} ({} bytes from {})", f.wire_bytes, need.source));
                    self.batcher.add(path, HintKind::Tree, Instant::now());
                }
                Err(e) => {
                    need.attempts += 1;
                    need.last_error = Some(e.to_string());
                    self.index.put_need(&need)?;
                    self.retry_at.insert(path, Instant::now() + Duration::from_secs(5));
                }
            }
            return Ok(());
        }
        if self.batcher.is_writing(&path) {
            discard(f);
            need.last_error = Some(format!("{path}: a local write is in progress"));
            self.index.put_need(&need)?;
            self.retry_at.insert(path, Instant::now() + Duration::from_secs(2));
            return Ok(());
        }
        // Re-check against the disk: a local change may have landed meanwhile.
        let mut local = self.index.get(&path)?;
        let disk = self.root.stat(&path).ok().flatten();
        if !self.disk_matches(local.as_ref(), disk.as_ref()) && !need.force {
            self.local_batch(vec![Target::Path { path: path.clone(), recursive: false }], "before writing fetched content")?;
            local = self.index.get(&path)?;
        }
        let decision = if need.force {
            Decision::Apply { version: need.entry.version.clone(), conflict_copy: None, conflict: false }
        } else {
            decide(local.as_ref().map(|s| &s.entry), &need.entry, self.index.node_id)
        };
        let r = need.entry.clone();
        match decision {
            Decision::Ignore | Decision::Merge { .. } | Decision::KeepLocal { .. } => {
                discard(f);
                self.index.remove_need(&path)?;
                if let Decision::Merge { .. } | Decision::KeepLocal { .. } = decision {
                    let mut commits = Vec::new();
                    self.apply_one(&need.source, r, &mut HashMap::new(), &mut HashMap::new(), &mut commits)?;
                    self.index.commit(commits)?;
                }
            }
            Decision::Apply { version, conflict_copy, conflict } => {
                if conflict {
                    self.note_conflict(&r, conflict_copy.as_ref(), &need.source);
                }
                let local_live = local.as_ref().filter(|s| !s.entry.deleted).cloned();
                let wire = f.wire_bytes;
                let delta = f.delta;
                let res = self.prepare_slot(&path, r.kind, local_live.as_ref(), conflict_copy.as_ref()).and_then(|_| {
                    let tmp = f.tmp.clone();
                    self.root.commit_temp(f.file, &tmp, &path, r.mode, r.mtime_ns)
                });
                match res {
                    Ok(ino) => {
                        let mut e = r;
                        e.version = version;
                        self.index.commit(vec![(e, ino)])?;
                        self.index.remove_need(&path)?;
                        let mut st = self.status.lock().expect("BUG: poisoned");
                        st.counters.applied += 1;
                        st.counters.bytes_received += wire;
                        if delta {
                            st.counters.delta_transfers += 1;
                        }
                        drop(st);
                        self.log.normal(format!("received {path} from {} ({} bytes on the wire{})", need.source, wire, if delta { ", delta" } else { "" }));
                        if need.force {
                            self.local_mods.remove(&path);
                        }
                    }
                    Err(e) => {
                        need.attempts += 1;
                        need.last_error = Some(e.to_string());
                        self.error(format!("cannot write {path}: {e}; will retry"));
                        self.index.put_need(&need)?;
                        self.retry_at.insert(path, Instant::now() + Duration::from_secs(5));
                    }
                }
            }
        }
        Ok(())
    }

    fn admin(&mut self, cmd: AdminCmd) -> String {
        match cmd {
            AdminCmd::Rescan => {
                self.batcher.add_root(Instant::now());
                "rescan queued".into()
            }
            AdminCmd::ConfirmEmpty => {
                self.allow_empty_root = true;
                self.batcher.add_root(Instant::now());
                self.log.warn("operator confirmed the empty sync root: deletes will be sent to peers");
                "confirmed: the empty root's deletes will be sent".into()
            }
            AdminCmd::Pause(p) => {
                self.paused.store(p, Ordering::SeqCst);
                self.status.lock().expect("BUG: poisoned").paused = p;
                self.log.normal(if p { "sync paused" } else { "sync resumed" });
                if p { "paused".into() } else { "resumed".into() }
            }
            AdminCmd::Reload => match self.s.config_path.clone().map(|p| Settings::load(&p)) {
                None => "no config file to reload".into(),
                Some(Err(e)) => {
                    let msg = format!("reload failed, keeping the running configuration: {e:#}");
                    self.error(msg.clone());
                    msg
                }
                Some(Ok(new)) => {
                    let old: HashMap<String, String> = self.links.values().map(|l| (l.name.clone(), l.address.clone())).collect();
                    let wanted: HashMap<String, String> = new.peers.iter().map(|p| (p.name.clone(), p.address.to_string())).collect();
                    let mut added = Vec::new();
                    let mut removed = Vec::new();
                    for (n, a) in &old {
                        if wanted.get(n) != Some(a) {
                            self.remove_peer(n);
                            removed.push(n.clone());
                        }
                    }
                    for (n, a) in &wanted {
                        if old.get(n) != Some(a) {
                            self.add_peer(n.clone(), a.clone());
                            added.push(n.clone());
                        }
                    }
                    self.batcher.set_delay(new.delay);
                    self.s.delay = new.delay;
                    self.s.peers = new.peers;
                    self.status.lock().expect("BUG: poisoned").delay_s = new.delay.as_secs();
                    let msg = format!("reloaded: peers added {added:?}, removed {removed:?}, delay {} s; pending changes kept", new.delay.as_secs());
                    self.log.normal(&msg);
                    msg
                }
            },
            AdminCmd::Revert => {
                if !self.s.receive_only {
                    return "revert applies to receive-only nodes only".into();
                }
                let mods: Vec<RelPath> = self.local_mods.iter().cloned().collect();
                let mut n = 0;
                for p in mods.iter().rev() {
                    let stored = self.index.get(p).ok().flatten().filter(|s| !s.entry.deleted);
                    let r = match stored {
                        None => {
                            let full = self.root.full(p);
                            match std::fs::symlink_metadata(&full) {
                                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&full).map_err(|e| e.to_string()),
                                Ok(_) => std::fs::remove_file(&full).map_err(|e| e.to_string()),
                                Err(_) => Ok(()),
                            }
                        }
                        Some(s) => match s.entry.kind {
                            EntryKind::Dir => self.root.mkdir(p, s.entry.mode).map(|_| ()).map_err(|e| e.to_string()),
                            EntryKind::Symlink => self.root.symlink(p, &s.entry.target, s.entry.mtime_ns).map(|_| ()).map_err(|e| e.to_string()),
                            EntryKind::File => {
                                let need = Need { entry: s.entry.clone(), source: self.links.keys().next().cloned().unwrap_or_default(), attempts: 0, last_error: None, force: true, copy_of: None };
                                let _ = self.index.put_need(&need);
                                self.retry_at.insert(p.clone(), Instant::now());
                                Ok(())
                            }
                        },
                    };
                    match r {
                        Ok(()) => n += 1,
                        Err(e) => self.error(format!("revert {p}: {e}")),
                    }
                }
                for p in &mods {
                    if self.index.get(p).ok().flatten().is_none_or(|s| s.entry.kind != EntryKind::File || s.entry.deleted) {
                        self.local_mods.remove(p);
                    }
                }
                let msg = format!("reverting {n} local modification(s) to the cluster's version");
                self.log.normal(&msg);
                msg
            }
        }
    }

    fn refresh_status(&mut self) {
        let seq = self.index.last_seq();
        let summary = if self.summary_seq != Some(seq) {
            self.summary_seq = Some(seq);
            self.index.summary().ok()
        } else {
            None
        };
        let needs = self.index.needs().unwrap_or_default();
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.last_seq = seq;
        st.pending_local = self.batcher.len();
        st.writing = self.batcher.writing();
        st.pending_remote = needs.len();
        st.pending_errors = needs.iter().filter_map(|n| n.last_error.clone()).take(5).collect();
        st.held_deletes = self.held_deletes;
        st.local_modifications = self.local_mods.iter().map(|p| p.to_string()).collect();
        if let Some(s) = summary {
            st.files = s.files;
            st.dirs = s.dirs;
            st.symlinks = s.symlinks;
            st.bytes = s.bytes;
            st.tree_digest = format!("{:032x}", s.digest);
            st.watches = watch::watch_count();
        }
        for (peer, lag) in &self.lag {
            if let Some(p) = st.peers.get_mut(peer) {
                p.lag_ms = Some(*lag);
            }
        }
        if let Err(e) = st.write_lsyncd_status(&self.s.log_dir) {
            tracing::warn!(error = %e, "cannot write lsyncd.status");
        }
    }
}
