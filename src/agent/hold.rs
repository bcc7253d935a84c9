//! The mass-delete hold: a node's deletions are applied here once its batch of deletions is
//! complete, and a batch that deletes too much at once is held for an operator, like the
//! empty-root guard on the sending side.
//!
//! A peer's deletion of something this node has (decided `Apply` in `apply_entry`) is not
//! carried out at once: it becomes a need, not scheduled, in the *run* of the node that made
//! the deletion (its author, so relayed copies of the same deletions join the same run). A
//! run is complete [`SETTLE`] after its last deletion arrived, across pages and peers, or
//! [`MAX_RUN`] after its first (a node that keeps deleting is judged by window). Then
//! it is applied in one go, children first, unless it deletes more than `[mass_delete]`
//! allows (`max_files`, or `max_percent` of the tree's files from `min_files` on). Deletions
//! that are halves of a move do not count and are applied: a large move spans pages, its new
//! names first, so a deleted file whose content arrived from the same node under another
//! name in the last minute, and is still there outside the run, was moved (each arrival
//! excuses one deletion; a tree of duplicates deleted together excuses nothing).
//!
//! A held run deletes nothing: `lsyncd.status` and `/v1/status` say how many, from which
//! node, since when, with a few paths, until `filesync ctl hold confirm` applies it or
//! `hold reject` turns it back: this node announces the held files and directories again as
//! its own, with versions that supersede the deletions, so by the normal rules they come
//! back on the node that deleted them and on every other (their holds dissolve).
//!
//! What is blocked meanwhile: only that node's deletions (later ones, moves included, join the held run). Its new files
//! and edits, everyone else's changes, and newer versions of held paths (which replace the held deletion) are applied as
//! usual; peer progress advances (held deletions are recorded needs). Runs are persisted in `<state_dir>/holds.json`
//! (written before the page that starts one is recorded), so a restart keeps a hold held and a confirmed one applying.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Agent;
use super::index::{Batch, Need, Stored};
use super::scan::Target;
use crate::protocol::versions::{HeldDeletes, HoldResponse};
use crate::protocol::{Entry, EntryKind, NodeId, RelPath};

/// How long after a node's last deletion its run is considered complete.
pub const SETTLE: Duration = Duration::from_secs(2);
/// A run is complete this long after its first deletion at the latest (a node that keeps
/// deleting is judged by what it deletes in this window).
pub const MAX_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum State {
    Settling,
    Held,
    /// Being applied (a confirm or a settled run interrupted by a crash resumes).
    Releasing,
}

#[derive(Debug, Serialize, Deserialize)]
struct Run {
    node: NodeId,
    name: String,
    state: State,
    since: i64,
    #[serde(skip)]
    last: Option<Instant>,
    #[serde(skip)]
    first: Option<Instant>,
    /// The held paths and what each is (from the needs).
    #[serde(skip)]
    paths: BTreeMap<RelPath, EntryKind>,
}

impl Run {
    fn files(&self) -> usize {
        self.paths.values().filter(|k| **k != EntryKind::Dir).count()
    }

    /// When a settling run is complete.
    fn due(&self) -> Option<Instant> {
        match (self.last, self.first) {
            (Some(l), Some(f)) => Some((l + SETTLE).min(f + MAX_RUN)),
            (l, f) => l.map(|t| t + SETTLE).or(f.map(|t| t + MAX_RUN)),
        }
    }

    /// A few of its paths, files first.
    fn sample(&self, n: usize) -> Vec<String> {
        let files = self.paths.iter().filter(|(_, k)| **k != EntryKind::Dir);
        let dirs = self.paths.iter().filter(|(_, k)| **k == EntryKind::Dir);
        files.chain(dirs).take(n).map(|(p, _)| p.to_string()).collect()
    }
}

#[derive(Default)]
pub struct Holds {
    runs: BTreeMap<NodeId, Run>,
    /// Set while a release applies deletions (the gate lets them through).
    releasing: bool,
    /// Content that arrived from each node in the last [`ARRIVALS`], and where (see
    /// `moved_paths`); `arrivals` counts them, `pruned` is when old ones were last dropped.
    arrived: HashMap<(NodeId, [u8; 32]), Arrivals>,
    arrivals: usize,
    pruned: Option<Instant>,
}

/// When and where one content arrived from one node.
type Arrivals = Vec<(Instant, RelPath)>;

/// How long an arrival can excuse a deletion as the other half of a move, and at most how
/// many are remembered.
const ARRIVALS: Duration = Duration::from_secs(60);
const MAX_ARRIVALS: usize = 200_000;

fn is_run_member(runs: &BTreeMap<NodeId, Run>, e: &Entry) -> bool {
    e.deleted && runs.get(&e.modified_by).is_some_and(|r| r.state != State::Releasing)
}

impl Holds {
    fn note_arrival(&mut self, node: NodeId, hash: [u8; 32], path: &RelPath) {
        let now = Instant::now();
        if self.arrivals >= MAX_ARRIVALS || self.pruned.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
            self.arrived.retain(|_, v| {
                v.retain(|(t, _)| now.duration_since(*t) <= ARRIVALS);
                !v.is_empty()
            });
            self.arrivals = self.arrived.values().map(Vec::len).sum();
            self.pruned = Some(now);
            if self.arrivals >= MAX_ARRIVALS {
                return;
            }
        }
        self.arrived.entry((node, hash)).or_default().push((now, path.clone()));
        self.arrivals += 1;
    }

    /// Whether `e` (a need's entry) waits in a run and must not be scheduled.
    pub fn holds(&self, e: &Entry) -> bool {
        !self.releasing && is_run_member(&self.runs, e)
    }

    /// When the next settling run is due.
    pub fn next_wake(&self) -> Option<Instant> {
        self.runs.values().filter(|r| r.state == State::Settling).filter_map(Run::due).min()
    }
}

impl Agent {
    /// Loads the runs a previous process left (start-up, before needs are scheduled).
    pub(super) fn load_holds(&mut self) -> anyhow::Result<()> {
        let dir = crate::private_fs::PrivateDir::state(&self.s.state_dir)?;
        let runs: Vec<Run> = match dir.read("holds.json")? {
            Some(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                self.log.warn(format!("holds.json is unreadable ({e}); the waiting deletions are checked again as new batches"));
                Vec::new()
            }),
            None => Vec::new(),
        };
        for mut r in runs {
            (r.first, r.last) = (Some(Instant::now()), Some(Instant::now()));
            self.holds.runs.insert(r.node, r);
        }
        // Waiting deletions of a node without a run (an unreadable holds.json, or retries
        // from before) are a batch to check again, never applied unchecked.
        let needs = self.index.needs()?;
        for n in needs.iter().filter(|n| self.s.mass_delete.enabled() && n.entry.deleted && n.copy_of.is_none()) {
            self.holds.runs.entry(n.entry.modified_by).or_insert_with(|| Run {
                node: n.entry.modified_by,
                name: n.entry.modified_by_name.clone(),
                state: State::Settling,
                since: time::OffsetDateTime::now_utc().unix_timestamp(),
                last: Some(Instant::now()),
                first: Some(Instant::now()),
                paths: BTreeMap::new(),
            });
        }
        self.refresh_holds(&needs);
        Ok(())
    }

    fn save_holds(&self) -> anyhow::Result<()> {
        let runs: Vec<&Run> = self.holds.runs.values().collect();
        crate::private_fs::PrivateDir::state(&self.s.state_dir)?.write_atomic("holds.json", &serde_json::to_vec(&runs)?, true)?;
        Ok(())
    }

    /// The gate in `apply_entry`: a deletion of something this node has waits in its
    /// author's run; returns the need that holds it, or `None` to apply it now.
    pub(super) fn hold_deletion(&mut self, source: &str, r: &Entry) -> Option<Need> {
        if !self.s.mass_delete.enabled() || self.holds.releasing {
            return None;
        }
        let disk = self.root.stat(&r.path).ok().flatten()?;
        if let std::collections::btree_map::Entry::Vacant(v) = self.holds.runs.entry(r.modified_by) {
            v.insert(Run {
                node: r.modified_by,
                name: r.modified_by_name.clone(),
                state: State::Settling,
                since: time::OffsetDateTime::now_utc().unix_timestamp(),
                last: None,
                first: Some(Instant::now()),
                paths: BTreeMap::new(),
            });
            if let Err(e) = self.save_holds() {
                // Without a durable record a restart would apply the run unchecked: apply now.
                self.holds.runs.remove(&r.modified_by);
                self.error(format!("cannot record pending deletions ({e:#}); applying {} at once", r.path));
                return None;
            }
        }
        let run = self.holds.runs.get_mut(&r.modified_by).expect("BUG: inserted above");
        if run.state == State::Releasing {
            return None;
        }
        run.paths.insert(r.path.clone(), disk.kind);
        run.last = Some(Instant::now());
        let who = &r.modified_by_name;
        let why = match run.state {
            State::Held => format!("{}: held with the rest of {who}'s mass delete; `filesync ctl hold confirm` or `hold reject`", r.path),
            _ => format!("{}: {who}'s deletions are applied together once its batch is complete", r.path),
        };
        Some(Need { entry: r.clone(), source: source.to_owned(), attempts: 0, last_error: Some(why), force: false, copy_of: None })
    }

    /// Decides settled runs (applied, or held when they delete too much) and resumes
    /// interrupted releases; called by the event loop after every event.
    pub(super) fn tick_holds(&mut self) {
        let now = Instant::now();
        let nodes: Vec<NodeId> = self.holds.runs.keys().copied().collect();
        for node in nodes {
            let Some(run) = self.holds.runs.get(&node) else { continue };
            let result = match run.state {
                State::Settling if run.due().is_none_or(|t| now >= t) => self.settle_run(node),
                State::Releasing => self.release(node, None).map(|_| ()),
                _ => continue,
            };
            if let Err(e) = result {
                self.error(format!("applying deletions from {node:016x}: {e:#}"));
            }
            self.publish_holds();
        }
    }

    /// A run whose batch is complete: applied, or held if it deletes too much; deletions
    /// that are halves of a move are applied and do not count.
    fn settle_run(&mut self, node: NodeId) -> anyhow::Result<()> {
        let tree = {
            let st = self.status.lock().expect("BUG: poisoned");
            st.files + st.symlinks
        };
        // Exactly what waits now (deletions replaced by newer versions have left).
        let paths = self.run_needs(node, None)?.into_iter().map(|n| (n.entry.path, n.entry.kind)).collect();
        self.holds.runs.get_mut(&node).expect("BUG: checked by the caller").paths = paths;
        let files = self.holds.runs[&node].files();
        if !self.s.mass_delete.exceeded(files, tree) {
            return self.release(node, None).map(|_| ());
        }
        let moved = self.moved_paths(node)?;
        let counted = files - moved.len();
        if !self.s.mass_delete.exceeded(counted, tree) {
            return self.release(node, None).map(|_| ());
        }
        if !moved.is_empty() {
            self.release(node, Some(moved))?;
        }
        let run = self.holds.runs.get_mut(&node).expect("BUG: checked above");
        run.state = State::Held;
        let (name, entries) = (run.name.clone(), run.paths.len());
        let sample = run.sample(3);
        self.save_holds()?;
        self.error(format!(
            "HOLDING {counted} deletes from {name} ({entries} entries, e.g. {}): it deleted {} at once; nothing is deleted here. Apply them with `filesync ctl --config <agent.toml> hold confirm`, or bring the files back on every node with `hold reject`",
            sample.join(", "),
            self.s.mass_delete.describe()
        ));
        Ok(())
    }

    /// Files of `node`'s settled run whose content (as this node's index knows it) arrived
    /// from `node` under another name in the last minute and is still there, outside the
    /// run: halves of a move (a large move spans pages, its new names first). Each arrival
    /// excuses one deletion, and files deleted in the same run excuse none, so deleting a
    /// tree of duplicates, even just uploaded, is still counted.
    fn moved_paths(&mut self, node: NodeId) -> anyhow::Result<HashSet<RelPath>> {
        let run_paths = std::mem::take(&mut self.holds.runs.get_mut(&node).expect("BUG: known run").paths);
        let mut moved = HashSet::new();
        for (p, _) in run_paths.iter().filter(|(_, k)| **k == EntryKind::File) {
            let Some(hash) = self.index.get(p)?.filter(|s| !s.entry.deleted).map(|s| s.entry.hash) else { continue };
            let Some(cands) = self.holds.arrived.get(&(node, hash)) else { continue };
            let mut found = None;
            for (i, (t, q)) in cands.iter().enumerate() {
                if q == p || run_paths.contains_key(q) || t.elapsed() > ARRIVALS {
                    continue;
                }
                let lives = self.index.get(q)?.is_some_and(|s| !s.entry.deleted && s.entry.hash == hash) || self.index.get_need(q)?.is_some_and(|n| !n.entry.deleted && n.entry.hash == hash);
                if lives {
                    found = Some(i);
                    break;
                }
            }
            if let Some(i) = found {
                self.holds.arrived.get_mut(&(node, hash)).expect("BUG: found above").swap_remove(i);
                moved.insert(p.clone());
            }
        }
        self.holds.runs.get_mut(&node).expect("BUG: known run").paths = run_paths;
        Ok(moved)
    }

    /// Notes new content arriving from a node (its half of a possible move, see `hold`).
    pub(super) fn note_arrival(&mut self, r: &Entry) {
        if self.s.mass_delete.enabled() && !r.deleted && r.kind == EntryKind::File {
            self.holds.note_arrival(r.modified_by, r.hash, &r.path);
        }
    }

    /// The needs that are `node`'s waiting deletions (all, or those in `only`).
    fn run_needs(&self, node: NodeId, only: Option<&HashSet<RelPath>>) -> anyhow::Result<Vec<Need>> {
        let mut v: Vec<Need> =
            self.index.needs()?.into_iter().filter(|n| n.entry.deleted && n.entry.modified_by == node && n.copy_of.is_none() && only.is_none_or(|o| o.contains(&n.entry.path))).collect();
        v.sort_by(|a, b| b.entry.path.cmp(&a.entry.path));
        Ok(v)
    }

    /// Applies `node`'s waiting deletions (children first, one transaction), each decided
    /// again against what is here now (a local edit meanwhile still beats the deletion).
    fn release(&mut self, node: NodeId, only: Option<HashSet<RelPath>>) -> anyhow::Result<usize> {
        let run = self.holds.runs.get_mut(&node).expect("BUG: releasing a known run");
        let name = run.name.clone();
        match &only {
            Some(o) => run.paths.retain(|p, _| !o.contains(p)),
            // A confirmed hold resumes after a crash; a settling run would settle again anyway.
            None if run.state == State::Held => {
                run.state = State::Releasing;
                self.save_holds()?;
            }
            None => run.state = State::Releasing,
        }
        let needs = self.run_needs(node, only.as_ref())?;
        let paths: Vec<RelPath> = needs.iter().map(|n| n.entry.path.clone()).collect();
        self.prescan(&paths)?;
        let writers = self.writers_if(!needs.is_empty());
        self.holds.releasing = true;
        self.root.defer_dir_syncs();
        let mut batch = Batch::default();
        let mut later = Vec::new();
        let mut result = Ok(());
        for n in needs {
            let local: Option<Stored> = self.index.get(&n.entry.path)?;
            let disk = self.root.stat(&n.entry.path).ok().flatten();
            if self.batcher.is_writing(&n.entry.path) || !self.disk_matches(local.as_ref(), disk.as_ref()) || disk.as_ref().is_some_and(|d| writers.contains(&d.ino)) {
                later.push(n);
                continue;
            }
            let path = n.entry.path.clone();
            match self.apply_entry(&n.source.clone(), n.entry, local.as_ref(), disk, super::apply::Content::None, false) {
                Ok(done) => {
                    batch.remove_needs.push(path);
                    for d in done {
                        match d {
                            super::apply::Done::Record(e, ino) => batch.commits.push((e, ino)),
                            super::apply::Done::Queue(q) => batch.put_needs.push(q),
                            super::apply::Done::Write(..) => {}
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.holds.releasing = false;
        self.root.sync_dirty_dirs();
        self.flush_versions();
        let applied = batch.commits.len();
        let queued: Vec<Need> = batch.put_needs.iter().cloned().chain(later).collect();
        self.record_received(&name, &batch.commits, true);
        self.index.apply(batch)?;
        result?;
        if only.is_none() {
            self.holds.runs.remove(&node);
            self.save_holds()?;
        }
        for n in &queued {
            self.schedule(n);
        }
        if applied > 0 {
            self.status.lock().expect("BUG: poisoned").counters.applied += applied as u64;
            self.log.normal(format!("applied {applied} deletion(s) from {name}"));
        }
        Ok(applied)
    }

    /// The run of `from` (a node name), or the only held one.
    fn held_run(&self, from: Option<&str>) -> Result<NodeId, String> {
        let held: Vec<&Run> = self.holds.runs.values().filter(|r| r.state == State::Held).collect();
        match (from, held.as_slice()) {
            (_, []) => Err("no deletions are held on this node".into()),
            (None, [r]) => Ok(r.node),
            (None, _) => Err(format!("deletions from several nodes are held ({}); say which with --from", held.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "))),
            (Some(f), _) => held
                .iter()
                .find(|r| r.name == f)
                .map(|r| r.node)
                .ok_or_else(|| format!("no deletions from {f:?} are held here (held: {})", held.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", "))),
        }
    }

    /// `hold confirm`: applies the held deletions.
    pub(super) fn confirm_hold(&mut self, from: Option<&str>) -> Result<HoldResponse, String> {
        let node = self.held_run(from)?;
        let name = self.holds.runs[&node].name.clone();
        self.log.warn(format!("operator confirmed the mass delete from {name}: applying it"));
        let n = self.release(node, None).map_err(|e| format!("{e:#}"))?;
        self.publish_holds();
        Ok(HoldResponse { from: name.clone(), entries: n, message: format!("applied {n} deletion(s) from {name}") })
    }

    /// `hold reject`: the held files and directories are announced again as this node's,
    /// superseding the deletions everywhere.
    pub(super) fn reject_hold(&mut self, from: Option<&str>) -> Result<HoldResponse, String> {
        if self.s.receive_only {
            return Err("this node is receive-only and cannot send its files back; reject on a send-receive node (its files come back everywhere, which also resolves this hold) or confirm".into());
        }
        let node = self.held_run(from)?;
        let name = self.holds.runs[&node].name.clone();
        let needs = self.run_needs(node, None).map_err(|e| format!("{e:#}"))?;
        let (me, me_name) = (self.index.node_id, self.s.node_name.clone());
        let mut batch = Batch::default();
        let mut rescan = Vec::new();
        for n in needs {
            let local = self.index.get(&n.entry.path).map_err(|e| format!("{e:#}"))?.filter(|l| !l.entry.deleted);
            let disk = self.root.stat(&n.entry.path).ok().flatten();
            match local {
                Some(l) if self.disk_matches(Some(&l), disk.as_ref()) => {
                    let mut e = l.entry.clone();
                    e.version = l.entry.version.merged(&n.entry.version).bumped(me);
                    e.origin = e.version.clone();
                    (e.modified_by, e.modified_by_name) = (me, me_name.clone());
                    batch.commits.push((e, l.ino));
                }
                _ if disk.is_some() => rescan.push(Target::Path { path: n.entry.path.clone(), recursive: false }),
                _ => {}
            }
            batch.remove_needs.push(n.entry.path);
        }
        let n = batch.commits.len() + rescan.len();
        self.index.apply(batch).map_err(|e| format!("{e:#}"))?;
        if !rescan.is_empty() {
            self.local_batch(rescan, "hold reject").map_err(|e| format!("{e:#}"))?;
        }
        self.holds.runs.remove(&node);
        self.save_holds().map_err(|e| format!("{e:#}"))?;
        self.publish_holds();
        let msg = format!("rejected the mass delete from {name}: {n} file(s) and directories announced again from this node; they come back on {name} and every other node");
        self.log.warn(format!("operator {msg}"));
        Ok(HoldResponse { from: name, entries: n, message: msg })
    }

    /// Rebuilds each run's paths from the needs (a newer version of a held path replaced its
    /// deletion), ends empty runs, and fills the status.
    pub(super) fn refresh_holds(&mut self, needs: &[Need]) {
        for run in self.holds.runs.values_mut() {
            run.paths = needs.iter().filter(|n| n.entry.deleted && n.entry.modified_by == run.node && n.copy_of.is_none()).map(|n| (n.entry.path.clone(), n.entry.kind)).collect();
        }
        let empty: Vec<(NodeId, String, State)> = self.holds.runs.values().filter(|r| r.paths.is_empty() && r.state != State::Settling).map(|r| (r.node, r.name.clone(), r.state)).collect();
        for (node, name, state) in &empty {
            self.holds.runs.remove(node);
            if *state == State::Held {
                self.log.normal(format!("the held deletions from {name} are resolved: every held path changed since (restored or replaced elsewhere)"));
            }
        }
        if !empty.is_empty()
            && let Err(e) = self.save_holds()
        {
            self.error(format!("cannot record pending deletions: {e:#}"));
        }
        self.publish_holds();
    }

    /// The runs in the status.
    fn publish_holds(&self) {
        let list = self
            .holds
            .runs
            .values()
            .filter(|r| !r.paths.is_empty())
            .map(|r| HeldDeletes {
                from: r.name.clone(),
                state: match r.state {
                    State::Held => "held",
                    State::Settling => "settling",
                    State::Releasing => "applying",
                }
                .into(),
                since: r.since,
                files: r.files(),
                entries: r.paths.len(),
                sample: r.sample(5),
            })
            .collect();
        self.status.lock().expect("BUG: poisoned").mass_delete_holds = list;
    }
}
