//! The node agent: keeps one folder identical on every node of an environment.
//!
//! ```text
//!  inotify ──watch──▶ Hint ──▶ batch (delay, write-quiet) ──▶ scan ──▶ index.commit ──┐
//!                                                                                       │ seq
//!  peer A ◀── POST /v1/changes long-poll (pages of entries + small blobs) ◀── server ◀─┘
//!  peer A ──▶ peers task ──▶ Event::Page ──▶ apply: decide ─▶ journal ─▶ write / rename / delete
//!                                                     └─▶ need ─▶ transfer (file|delta) ─▶ Event::Fetched
//! ```
//!
//! One event loop (`Agent::run_loop`) owns the index writes, the batcher and every change
//! to the sync root; peer tasks, fetches and the HTTP server talk to it through `Event`s.
//! A change applied from a peer is recorded in the index with the peer's version and the
//! inode it landed on, so when inotify reports it the scanner finds nothing new: applied
//! changes are never announced again as local ones.

pub mod admin;
pub mod apply;
pub mod batch;
pub mod config;
mod echo;
pub mod enroll;
pub mod exclude;
pub mod feed;
pub mod hold;
pub mod identity;
pub mod index;
pub mod inspect;
pub mod link;
pub mod listener;
mod local;
pub mod lsyncd_log;
pub(crate) mod memory;
pub mod peers;
pub mod refusals;
pub mod report;
pub mod root;
pub mod scan;
pub mod server;
pub mod status;
pub mod transfer;
pub mod versions;
mod view;
pub mod watch;
mod writers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use self::batch::Batcher;
use self::config::Settings;
use self::exclude::Excludes;
use self::index::{Index, Need};
use self::lsyncd_log::LsyncdLog;
use self::root::SyncRoot;
use self::scan::Target;
use self::status::Status;
use self::watch::{Hint, WatchShared};
use crate::protocol::RelPath;
use crate::protocol::wire::ChangesResponse;

/// Everything that can wake the event loop besides file-system hints and timers.
pub enum Event {
    /// A page of a peer's changes; `done` is answered once it is processed.
    Page {
        peer: String,
        page: ChangesResponse,
        done: oneshot::Sender<anyhow::Result<()>>,
    },
    /// A content fetch finished (into a temp file) or failed.
    Fetched {
        need: Need,
        result: anyhow::Result<transfer::Fetched>,
    },
    Admin(AdminCmd, oneshot::Sender<String>),
    /// Restores and mass-delete decisions; answered with a JSON body or an error message.
    Safety(SafetyCmd, oneshot::Sender<Result<String, String>>),
}

/// Operator commands of the safety nets (`admin`), with their `protocol::versions` bodies.
#[derive(Debug, Clone)]
pub enum SafetyCmd {
    Restore(crate::protocol::versions::RestoreRequest),
    ConfirmHold(Option<String>),
    RejectHold(Option<String>),
}

#[derive(Debug, Clone, Copy)]
pub enum AdminCmd {
    Reload,
    Revert,
    Rescan,
    ConfirmEmpty,
    Pause(bool),
}

const MAX_PARALLEL_FETCHES: usize = 8;
/// Fetches from the other environment in flight at once (see `fetch`).
const MAX_PARALLEL_LINK_FETCHES: usize = 64;
/// Status changes reported by peer tasks are written at most this often.
const STATUS_DEBOUNCE: Duration = Duration::from_secs(1);
/// When after a directory appeared it is looked at again (see `Agent::rechecks`): notify
/// adds a new directory's watch only after it has handed out the events it read with it,
/// which takes longer on a busy machine.
const NEW_DIR_RECHECKS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(10)];

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
    /// New directories to look at again after they appeared (when, and which of
    /// `NEW_DIR_RECHECKS` is next): files created in one before the watcher had added its
    /// watch give no event, and the first scan may have run before they existed
    /// (`mkdir -p d && cp many d/`). A look that the index does not explain queues a scan.
    rechecks: BTreeMap<RelPath, (Instant, usize)>,
    /// A scan could not read part of the tree: the whole tree is scanned again then (and
    /// how many scans in a row could not, for the back-off; see `Agent::unread`).
    rescan_soon: Option<Instant>,
    unread_streak: u32,
    /// Paths recorded from peers lately, whose watch events may be our own writes.
    echoes: echo::Echoes,
    fetch_sem: Arc<Semaphore>,
    link_fetch_sem: Arc<Semaphore>,
    allow_empty_root: bool,
    held_deletes: usize,
    paused: Arc<AtomicBool>,
    local_mods: BTreeSet<RelPath>,
    shutdown: CancellationToken,
    summary_seq: Option<u64>,
    lag: HashMap<String, u64>,
    /// The cross-environment link, in two-environment mode.
    link: Option<Arc<link::Link>>,
    /// Names found in the root that cannot be synced (not valid UTF-8), as last seen.
    unsyncable: BTreeSet<String>,
    /// Recent changes, conflicts and repair requests for the dashboard (`report`).
    report: Arc<report::Report>,
    /// What `lsyncd.status` says now (without its time line), to rewrite it only on change.
    status_written: Option<String>,
    /// Peer tasks and the link changed the status: refresh it by then (debounced).
    status_due: Option<Instant>,
    /// When to give freed memory back (`memory::TRIM_AFTER` after the last burst).
    trim_due: Option<Instant>,
    /// What peers' changes displaced here, kept for restores.
    versions: versions::Versions,
    /// Peers' deletions waiting for the rest of their batch, or for an operator.
    holds: hold::Holds,
    /// When versions retention (age, size, free space) last ran.
    versions_checked: Instant,
}

/// Runs an agent until `shutdown` is cancelled. Fails only on critical errors: the root
/// missing at start, the index unusable, the port taken.
pub async fn run(s: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    crate::pki::tls::install_crypto_provider();
    let log = Arc::new(LsyncdLog::open(&s.log_dir, s.log_max_bytes)?);
    log.normal(format!("filesync {} agent {} starting: root {}, delay {} s, {} peer(s)", env!("CARGO_PKG_VERSION"), s.node_name, s.root.display(), s.delay.as_secs(), s.peers.len()));
    match identity::check(&s).inspect_err(|e| log.error(format!("{e:#}")))? {
        identity::Identity::Same => {}
        identity::Identity::Fresh => identity::record(&s)?,
        identity::Identity::Renamed { was } => {
            log.warn(format!("the state dir belonged to node {was}; this node is now {}: its index is rebuilt from a scan (files are kept and reconciled with the peers)", s.node_name));
            identity::reset_state(&s)?;
            identity::record(&s)?;
        }
        identity::Identity::Clone { of } => return enroll::as_clone(&s, &log, &of, shutdown).await,
    }
    let index = Arc::new(view::open_index(&s, &log).inspect_err(|e| log.error(format!("{e:#}")))?);
    let listener = TcpListener::bind(s.listen).await.with_context(|| format!("cannot listen on {} (is another agent or program using it?)", s.listen)).inspect_err(|e| log.error(format!("{e:#}")))?;
    let server_tls = crate::pki::tls::server_config(&s.tls).inspect_err(|e| log.error(format!("{e:#}")))?;
    let client = crate::pki::tls::http_client_from(&s.tls, Some(s.listen.ip()))?;

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
        folder_id: s.folder_id.clone(),
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

    // Whoever changes what the status says outside the loop (peer tasks, the link) wakes it.
    let status_dirty = Arc::new(tokio::sync::Notify::new());
    let link = match s.link.clone() {
        Some(cfg) => Some(link::Link::new(&s, cfg, status.clone(), status_dirty.clone(), log.clone()).inspect_err(|e| log.error(format!("{e:#}")))?),
        None => None,
    };
    let link_listener = match &s.link {
        Some(l) => Some(
            TcpListener::bind(l.listen).await.with_context(|| format!("cannot listen on the link port {} (is another program using it?)", l.listen)).inspect_err(|e| log.error(format!("{e:#}")))?,
        ),
        None => None,
    };
    // Who may use this node's routes: peers hold grants while their tasks run (`server::Access`).
    let (log2, st2) = (log.clone(), status.clone());
    let refusals = refusals::Refusals::new(Arc::new(move |m: String| log2.warn(m)), Arc::new(move || st2.lock().expect("BUG: poisoned").counters.refused += 1));
    let access = server::Access::new(&s.node_name, refusals);
    let peer_ctx = Arc::new(peers::PeerCtx {
        dirty: status_dirty.clone(),
        pending: tokio::sync::watch::Sender::new(0),
        me: s.node_name.clone(),
        folder: s.folder_id.clone(),
        client: client.clone(),
        index: index.clone(),
        events: ev_tx.clone(),
        status: status.clone(),
        log: log.clone(),
        access: access.clone(),
    });
    let paused = Arc::new(AtomicBool::new(false));
    let (s_node_name, excludes_for_report, s_log_dir, log_for_report) = (s.node_name.clone(), excludes.clone(), s.log_dir.clone(), log.clone());
    let (root, versions) = versions::open(&s, &log)?;
    let mut agent = Agent {
        root,
        versions,
        holds: hold::Holds::default(),
        versions_checked: Instant::now(),
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
        rechecks: BTreeMap::new(),
        rescan_soon: None,
        unread_streak: 0,
        echoes: Default::default(),
        fetch_sem: Arc::new(Semaphore::new(MAX_PARALLEL_FETCHES)),
        link_fetch_sem: Arc::new(Semaphore::new(MAX_PARALLEL_LINK_FETCHES)),
        allow_empty_root: false,
        held_deletes: 0,
        paused: paused.clone(),
        local_mods: BTreeSet::new(),
        shutdown: shutdown.clone(),
        summary_seq: None,
        lag: HashMap::new(),
        link,
        unsyncable: BTreeSet::new(),
        report: Arc::new(report::Report::new(&s_node_name, excludes_for_report, log_for_report, s_log_dir)),
        status_written: None,
        status_due: None,
        trim_due: None,
    };

    // Temp files left by a crash are garbage (the real names were never touched), except
    // content a crash caught on its way to the versions area; versions a crash interrupted
    // are finished while the index still describes the old state.
    agent.recover_versions()?;
    // What a peer's page put on disk before a crash is the peer's, not a local edit.
    agent.reconcile("start-up")?;
    agent.load_holds()?;
    // Start-up: a full scan against the persistent index (unchanged files are not re-hashed).
    let t0 = Instant::now();
    let before = agent.index.len()?;
    agent.local_batch(vec![Target::Root], "startup scan")?;
    for n in agent.index.needs()? {
        if !agent.holds.holds(&n.entry) {
            agent.retry_at.insert(n.entry.path.clone(), Instant::now());
        }
    }
    agent.log.normal(format!("startup scan: {} entries in the index ({} before), {:.0} ms", agent.index.len()?, before, t0.elapsed().as_secs_f64() * 1000.0));
    agent.trim_soon();

    let app_state = server::AppState {
        index: agent.index.clone(),
        root: agent.root.clone(),
        node_name: agent.s.node_name.clone(),
        status: agent.status.clone(),
        status_dirty: status_dirty.clone(),
        log: agent.log.clone(),
        events: ev_tx.clone(),
        paused,
        inline_relayed: false,
        folder: agent.s.folder_id.clone(),
        access: Some(access.clone()),
        report: agent.report.clone(),
        versions: agent.versions.store.clone(),
        pages: Default::default(),
    };
    if let (Some(link), Some(listener)) = (agent.link.clone(), link_listener) {
        let link_app = server::link_router(server::AppState { inline_relayed: true, access: None, ..app_state.clone() });
        tokio::spawn(link.clone().serve(listener, link_app, shutdown.clone()));
        tokio::spawn(link.run(agent.index.clone(), ev_tx.clone(), shutdown.clone()));
    }
    let app = server::router(app_state);
    tokio::spawn(server::serve(listener, server_tls, app, access, agent.s.listen.ip(), shutdown.clone()));
    let peers = agent.s.peers.clone();
    for p in peers {
        agent.add_peer(p.name, p.address.to_string());
    }
    agent.refresh_status();
    agent.status.lock().expect("BUG: poisoned").startup_complete = true;
    match &agent.s.link {
        Some(l) => agent.log.normal(format!("startup complete: listening on {}, link port {} (other environment: {})", agent.s.listen, l.listen, l.remote)),
        None => agent.log.normal(format!("startup complete: listening on {}", agent.s.listen)),
    }

    // No periodic tick: every timer below is a deadline something set (an idle agent sleeps
    // until a change, a peer or a version's expiry wakes it).
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let rescan_every = agent.s.rescan_interval;
    let mut next_rescan = rescan_every.map(|d| Instant::now() + d);
    // Without a complete set of inotify watches the tree is polled instead (never silence).
    let poll_every = agent.s.delay.max(Duration::from_secs(10));
    let mut polling = false;

    loop {
        let now = Instant::now();
        // Retries are due only when a fetch slot is free; a finished fetch wakes the loop.
        let retry = if agent.fetch_sem.available_permits() > 0 && agent.link_fetch_sem.available_permits() > 0 { agent.retry_at.values().min().copied() } else { None };
        let recheck = agent.rechecks.values().map(|(t, _)| *t).min();
        if let Some(t) = agent.rescan_soon.take() {
            next_rescan = Some(next_rescan.map_or(t, |n| n.min(t)));
        }
        let mut wake = [agent.batcher.deadline(), retry, next_rescan, recheck, agent.root.next_reap(), agent.status_due, agent.holds.next_wake(), agent.versions_recheck(), agent.trim_due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        if wake < now {
            wake = now;
        }
        // Whether this turn handled something that may change what the status says.
        let mut touched = true;
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
                    let big = page.entries.len() >= memory::BURST;
                    let r = agent.process_page(&peer, page);
                    if big {
                        agent.trim_soon();
                    }
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
                Some(Event::Safety(cmd, reply)) => {
                    let r = agent.safety(cmd);
                    let _ = reply.send(r);
                }
                None => break,
            },
            _ = hup.recv() => { agent.admin(AdminCmd::Reload); }
            _ = status_dirty.notified() => { agent.status_due.get_or_insert(Instant::now() + STATUS_DEBOUNCE); }
            _ = tokio::time::sleep_until(wake.into()) => touched = agent.status_due.is_none_or(|t| t > Instant::now()),
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
        if let Some(t) = next_rescan
            && Instant::now() >= t
        {
            agent.batcher.add_root(Instant::now());
            next_rescan = if polling { Some(Instant::now() + poll_every) } else { rescan_every.map(|d| Instant::now() + d) };
        }
        agent.reap(false);
        agent.tick_holds();
        if agent.versions_recheck().is_some_and(|t| t <= Instant::now()) {
            agent.versions_tick();
            agent.versions_checked = Instant::now();
        }
        if agent.trim_due.is_some_and(|t| t <= Instant::now()) {
            agent.trim_due = None;
            // (the burst's echoes came within milliseconds; its paths need not stay)
            agent.echoes.clear();
            memory::give_back();
        }
        let now = Instant::now();
        let due_rechecks: Vec<(RelPath, usize)> = agent.rechecks.iter().filter(|(_, (t, _))| *t <= now).map(|(p, (_, n))| (p.clone(), *n)).collect();
        for (p, n) in due_rechecks {
            agent.rechecks.remove(&p);
            if let Some(next) = agent.recheck(p.clone(), n, now) {
                agent.rechecks.insert(p, next);
            }
        }
        if !agent.paused.load(Ordering::SeqCst) {
            let due = agent.batcher.take_due(Instant::now());
            if !due.is_empty()
                && let Err(e) = agent.local_batch(due, "batch")
            {
                agent.error(format!("scan failed: {e:#}"));
                // (what the batch held is found again by scanning everything)
                agent.unread(1, false);
            }
        }
        agent.start_due_fetches();
        // Whatever happened may have changed what the status says (it is written only if
        // so). Last, after the batch: a refresh before it, on a turn where a hint won the
        // race against the status timer, said "2 delays" until the next change (no tick
        // rewrites it).
        let now = Instant::now();
        if touched {
            agent.status_due.get_or_insert(now + STATUS_DEBOUNCE);
        }
        if agent.status_due.is_some_and(|t| t <= now) {
            agent.status_due = None;
            agent.refresh_status();
        }
    }
    agent.reap(true);
    agent.log.normal("shutting down (signal received); pending changes stay in the index and are sent on the next start");
    for l in agent.links.values() {
        l.cancel.cancel();
    }
    agent.refresh_status();
    Ok(())
}

impl Agent {
    /// Gives freed memory back `memory::TRIM_AFTER` after this burst, unless another comes.
    fn trim_soon(&mut self) {
        self.trim_due = Some(Instant::now() + memory::TRIM_AFTER);
    }

    fn error(&self, msg: String) {
        self.log.error(&msg);
        self.status.lock().expect("BUG: poisoned").counters.errors += 1;
    }

    fn warn(&self, msg: String) {
        self.log.warn(&msg);
    }
}
