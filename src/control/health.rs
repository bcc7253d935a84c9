//! The one place that decides what the dashboard, the API and the event timeline say about
//! an environment's sync: [`assess`] takes fresh facts (heartbeat age, whether the agent
//! answers, paused, changes pending both ways, tree digests, the last job) and returns
//! each node's state and the environment's, with the sentence to show. Pure: no IO.
//!
//! Rules. A node is reachable only if its last heartbeat answered and is recent (at most
//! three heartbeat periods old). It is syncing while it has local changes not sent
//! (`pending_local`, `writing`), content to fetch (`pending_remote`) or a reachable peer's
//! changes it has not processed (the peer's `last_seq` above what it processed of that
//! peer). Tree digests are compared only between idle reachable nodes; different digests
//! mean the nodes differ. A paused node holding local changes differs from the others
//! too (its digest does not include them yet). The last job's result is reported beside
//! the sync state, never instead of it: a node whose reconfigure failed but whose agent
//! answers is in sync or not like any other.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::OffsetDateTime;

use crate::control::agent_api::{AgentStatus, NodeReport};
use crate::control::state::{AgentState, Health, InstallState, JobKind, JobState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    NotInstalled,
    Installing,
    UpToDate,
    Syncing,
    Paused,
    OutOfSync,
    Degraded,
    Unreachable,
    Error,
    Leaving,
}

impl SyncState {
    /// The words (also the CSS class, with `-` for spaces).
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::NotInstalled => "not installed",
            SyncState::Installing => "installing",
            SyncState::UpToDate => "up to date",
            SyncState::Syncing => "syncing",
            SyncState::Paused => "paused",
            SyncState::OutOfSync => "out of sync",
            SyncState::Degraded => "degraded",
            SyncState::Unreachable => "unreachable",
            SyncState::Error => "error",
            SyncState::Leaving => "leaving",
        }
    }

    pub fn class(self) -> String {
        self.as_str().replace(' ', "-")
    }
}

/// The last job of a node, as far as the status goes.
#[derive(Debug, Clone, Copy)]
pub struct LastJob<'a> {
    pub kind: JobKind,
    pub state: JobState,
    pub error: Option<&'a str>,
}

/// What is known about one node.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    pub name: &'a str,
    pub lifecycle: AgentState,
    pub health: Health,
    pub health_error: Option<&'a str>,
    pub last_heartbeat: Option<OffsetDateTime>,
    pub status: Option<&'a AgentStatus>,
    pub report: Option<&'a NodeReport>,
    pub last_job: Option<LastJob<'a>>,
    /// An agent was configured on it once (config generation above 0).
    pub configured: bool,
    /// Held paused on an older sync path.
    pub held: bool,
    /// Recent receive rate (bytes/s), for an ETA.
    pub rate: Option<f64>,
}

/// What is known about the environment.
#[derive(Debug, Clone, Copy)]
pub struct EnvFacts<'a> {
    pub installation: Option<InstallState>,
    pub paused_at: Option<OffsetDateTime>,
    pub paused_by: Option<&'a str>,
    pub paused: bool,
    pub out_of_sync_since: Option<OffsetDateTime>,
    pub heartbeat: Duration,
    pub now: OffsetDateTime,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeSync {
    pub name: String,
    pub state: SyncState,
    /// The state in words: "syncing 45 files (12.0 MiB), about 20 s left".
    pub label: String,
    pub pending_files: u64,
    pub pending_bytes: u64,
    pub eta_seconds: Option<u64>,
    /// For a node out of sync: the nodes it differs from.
    pub differs_from: Vec<String>,
    /// Whether the agent answers (apart from the last job).
    pub reachable: bool,
    /// The last job's result in words ("reconfigure failed: ..."), empty when it succeeded.
    pub job_note: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvSync {
    pub state: SyncState,
    /// One sentence for the header.
    pub headline: String,
    pub differing: Vec<String>,
    pub unreachable: Vec<String>,
    pub syncing: Vec<String>,
    pub errors: Vec<String>,
    pub paused: bool,
    #[serde(serialize_with = "crate::control::db::ts_opt")]
    pub paused_at: Option<OffsetDateTime>,
    pub paused_by: Option<String>,
    #[serde(serialize_with = "crate::control::db::ts_opt")]
    pub out_of_sync_since: Option<OffsetDateTime>,
}

/// "12.0 MiB".
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// "45 s", "3 min", "2 h".
pub fn span(s: u64) -> String {
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

/// "12:01 UTC" today, else "2026-11-22 12:01 UTC".
pub fn clock(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    if t.date() == now.to_offset(time::UtcOffset::UTC).date() { format!("{:02}:{:02} UTC", t.hour(), t.minute()) } else { format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute()) }
}

fn names(v: &[String]) -> String {
    match v.len() {
        0 => String::new(),
        1 => v[0].clone(),
        _ => format!("{} and {}", v[..v.len() - 1].join(", "), v[v.len() - 1]),
    }
}

/// Per node: reachable, and how much it still has to do (local and inbound files).
/// `settling`: a peer already processed more of this node's changes than this node's own
/// report counts (its status is refreshed every few seconds), so its digest is older than
/// what it holds: not compared until the next report.
struct Work {
    up: bool,
    local: u64,
    inbound: u64,
    settling: bool,
}

impl Work {
    fn idle(&self) -> bool {
        self.local == 0 && self.inbound == 0 && !self.settling
    }
}

fn work(n: &NodeFacts, all: &[NodeFacts], env: &EnvFacts) -> Work {
    let fresh = n.last_heartbeat.is_some_and(|t| (env.now - t).whole_milliseconds() <= (env.heartbeat.as_millis() as i128 * 3).max(15_000));
    let up = n.health == Health::Up && fresh && n.status.is_some();
    let Some(s) = n.status.filter(|_| up) else { return Work { up, local: 0, inbound: 0, settling: false } };
    let mut inbound = s.pending_remote;
    let mut settling = false;
    for p in all.iter().filter(|p| p.name != n.name && p.health == Health::Up && !p.lifecycle.leaving()) {
        let Some(ps) = p.status else { continue };
        if let Some(mine) = s.peers.get(p.name).filter(|m| !m.removed) {
            inbound += ps.last_seq.saturating_sub(mine.their_seq_processed);
        }
        if ps.peers.get(n.name).is_some_and(|theirs| !theirs.removed && theirs.their_seq_processed > s.last_seq) {
            settling = true;
        }
    }
    Work { up, local: s.pending_local + s.writing, inbound, settling }
}

/// Decides every node's state and the environment's from the facts.
pub fn assess(env: &EnvFacts, nodes: &[NodeFacts]) -> (EnvSync, Vec<NodeSync>) {
    let works: Vec<Work> = nodes.iter().map(|n| work(n, nodes, env)).collect();
    let paused_note = match (env.paused_at, env.paused_by) {
        (Some(t), Some(by)) => format!("since {} by {by}", clock(t, env.now)),
        (Some(t), None) => format!("since {}", clock(t, env.now)),
        _ => String::new(),
    };

    // Idle reachable nodes, grouped by tree digest; paused nodes holding unsent changes.
    let mut groups: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut unsent: Vec<String> = Vec::new();
    for (n, w) in nodes.iter().zip(&works) {
        // A node held on an old sync path holds another folder: nothing to compare.
        let Some(s) = n.status.filter(|_| w.up && !n.lifecycle.leaving() && !n.held) else { continue };
        if s.paused && w.local > 0 {
            unsent.push(n.name.to_owned());
        } else if w.idle() && !s.tree_digest.is_empty() {
            groups.entry(s.tree_digest.as_str()).or_default().push(n.name.to_owned());
        }
    }
    let largest = groups.values().map(Vec::len).max().unwrap_or(0);
    let majority: Vec<String> = if groups.values().filter(|g| g.len() == largest).count() == 1 { groups.values().find(|g| g.len() == largest).cloned().unwrap_or_default() } else { Vec::new() };
    let compared: usize = groups.values().map(Vec::len).sum::<usize>() + unsent.len();
    let mut differing: Vec<String> = if groups.len() > 1 { groups.values().filter(|g| **g != majority).flatten().cloned().collect() } else { Vec::new() };
    if compared > 1 || (!unsent.is_empty() && nodes.iter().filter(|n| !n.lifecycle.leaving()).count() > 1) {
        differing.extend(unsent.iter().cloned());
    }
    differing.sort();
    differing.dedup();

    // Nodes the control plane holds paused on an old sync path: the others refusing them
    // (another folder) is expected, not an error.
    let held: Vec<&str> = nodes.iter().filter(|n| n.held).map(|n| n.name).collect();
    let mut out = Vec::with_capacity(nodes.len());
    let (mut unreachable, mut syncing, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for (n, w) in nodes.iter().zip(&works) {
        let job_note = match n.last_job {
            Some(j) if j.state == JobState::Failed => format!("last {} failed: {}", j.kind, j.error.unwrap_or("no reason recorded")),
            _ => String::new(),
        };
        let job_running = n.last_job.is_some_and(|j| !j.state.finished());
        let mut ns = NodeSync {
            name: n.name.to_owned(),
            state: SyncState::UpToDate,
            label: String::new(),
            pending_files: w.local + w.inbound,
            pending_bytes: 0,
            eta_seconds: None,
            differs_from: Vec::new(),
            reachable: w.up,
            job_note,
        };
        let (state, label) = if n.lifecycle.leaving() {
            (SyncState::Leaving, "leaving the environment".to_owned())
        } else if n.lifecycle == AgentState::NotInstalled && !w.up {
            if job_running { (SyncState::Installing, "installing".to_owned()) } else { (SyncState::NotInstalled, "not installed".to_owned()) }
        } else if !w.up {
            if !n.configured && job_running {
                (SyncState::Installing, "installing".to_owned())
            } else if !n.configured && n.lifecycle == AgentState::Failed {
                (SyncState::Error, "not running: the install did not finish".to_owned())
            } else {
                let age = n.last_heartbeat.map(|t| span((env.now - t).whole_seconds().max(0) as u64));
                let why = n.health_error.map(|e| format!(" ({e})")).unwrap_or_default();
                (
                    SyncState::Unreachable,
                    match age {
                        Some(a) => format!("unreachable: no answer for {a}{why}"),
                        None => format!("unreachable: never answered{why}"),
                    },
                )
            }
        } else {
            let s = n.status.expect("BUG: reachable without a status");
            let pending_bytes = n.report.map(|r| r.pending_bytes).unwrap_or(0);
            ns.pending_bytes = pending_bytes;
            let problems: Vec<String> = [(s.held_deletes > 0).then(|| format!("holding {} deletes: the sync root looks empty or unmounted", s.held_deletes)), holds::held_mass_deletes(s, env.now), {
                let foreign: Vec<&str> = s.foreign_folders.keys().map(String::as_str).filter(|k| !held.contains(k)).collect();
                (!foreign.is_empty()).then(|| format!("refusing peers that sync another folder: {}", foreign.join(", ")))
            }]
            .into_iter()
            .flatten()
            .collect();
            if s.paused {
                let what = if n.held {
                    "paused on the old sync path until a reconfigure reaches it".to_owned()
                } else if paused_note.is_empty() {
                    "paused".to_owned()
                } else {
                    format!("paused {paused_note}")
                };
                let label = if w.local > 0 { format!("{what}; {} local change(s) not sent", w.local) } else { what };
                (SyncState::Paused, label)
            } else if !problems.is_empty() {
                (SyncState::Error, format!("error: {}", problems.join("; ")))
            } else if w.local + w.inbound > 0 {
                ns.eta_seconds = n.rate.filter(|r| *r > 1.0 && pending_bytes > 0).map(|r| (pending_bytes as f64 / r).ceil() as u64);
                let size = if pending_bytes > 0 { format!(" ({})", bytes(pending_bytes)) } else { String::new() };
                let eta = ns.eta_seconds.map(|s| format!(", about {} left", span(s.max(1)))).unwrap_or_default();
                (SyncState::Syncing, format!("syncing {} file(s){size}{eta}", w.local + w.inbound))
            } else if w.settling {
                (SyncState::Syncing, "syncing: its latest changes are reaching the other nodes".to_owned())
            } else {
                (SyncState::UpToDate, "up to date".to_owned())
            }
        };
        ns.state = state;
        ns.label = label;
        if differing.contains(&ns.name) && matches!(ns.state, SyncState::UpToDate | SyncState::Paused) {
            ns.differs_from = nodes.iter().zip(&works).filter(|(o, ow)| o.name != n.name && ow.up && !differing.contains(&o.name.to_owned())).map(|(o, _)| o.name.to_owned()).collect();
            if ns.differs_from.is_empty() {
                ns.differs_from = differing.iter().filter(|d| **d != ns.name).cloned().collect();
            }
            let base = if ns.state == SyncState::Paused { format!("{}; ", ns.label) } else { String::new() };
            ns.label = format!("{base}out of sync: differs from {}", names(&ns.differs_from));
            ns.state = SyncState::OutOfSync;
        }
        match ns.state {
            SyncState::Unreachable => unreachable.push(ns.name.clone()),
            SyncState::Syncing => syncing.push(ns.name.clone()),
            SyncState::Error => errors.push(format!("{}: {}", ns.name, ns.label.trim_start_matches("error: "))),
            _ => {}
        }
        out.push(ns);
    }

    let active: Vec<&NodeSync> = out.iter().filter(|n| !matches!(n.state, SyncState::Leaving)).collect();
    let up: Vec<&&NodeSync> = active.iter().filter(|n| n.reachable).collect();
    let installing = matches!(env.installation, Some(InstallState::Installing | InstallState::ChangingPath | InstallState::Uninstalling)) && out.iter().any(|n| n.state == SyncState::Installing)
        || nodes.iter().any(|n| n.last_job.is_some_and(|j| !j.state.finished()));
    let since = env.out_of_sync_since.map(|t| format!(" since {}", clock(t, env.now))).unwrap_or_default();
    let (state, headline) = if env.installation.is_none() && up.is_empty() {
        (SyncState::NotInstalled, if installing { "Installing".to_owned() } else { "Not installed".to_owned() })
    } else if !differing.is_empty() {
        let pause = if env.paused { format!(" (sync paused {paused_note})") } else { String::new() };
        let others: Vec<String> = up.iter().map(|n| n.name.clone()).filter(|n| !differing.contains(n)).collect();
        let text = if !unsent.is_empty() && unsent.len() == differing.len() {
            format!("{} hold{} changes the other nodes do not have", names(&differing), if differing.len() == 1 { "s" } else { "" })
        } else if others.is_empty() {
            format!("{} all hold different trees", names(&differing))
        } else {
            format!("{} differ{} from {}", names(&differing), if differing.len() == 1 { "s" } else { "" }, names(&others))
        };
        (SyncState::OutOfSync, format!("Out of sync{since}{pause}: {text}"))
    } else if installing {
        (SyncState::Installing, "Installing or reconfiguring: see Progress".to_owned())
    } else if up.is_empty() && !active.is_empty() {
        (SyncState::Error, format!("No agent answers ({} node(s) unreachable or not running)", active.len()))
    } else if !errors.is_empty() {
        (SyncState::Error, format!("Error: {}", errors.join("; ")))
    } else if !unreachable.is_empty() || !held.is_empty() || active.iter().any(|n| n.state == SyncState::NotInstalled) {
        let missing: Vec<String> = active.iter().filter(|n| !n.reachable || held.contains(&n.name.as_str())).map(|n| format!("{} {}", n.name, n.label)).collect();
        let rest = active.len() - missing.len();
        (SyncState::Degraded, format!("Degraded: {}; the other {rest} node(s) are in sync", missing.join("; ")))
    } else if env.paused {
        let when = if paused_note.is_empty() { String::new() } else { format!(" {paused_note}") };
        (SyncState::Paused, format!("Paused{when}: no changes are sent or applied until sync is resumed"))
    } else if !syncing.is_empty() {
        let files: u64 = out.iter().map(|n| n.pending_files).sum::<u64>().max(1);
        let b: u64 = out.iter().map(|n| n.pending_bytes).sum();
        let eta = out.iter().filter_map(|n| n.eta_seconds).max().map(|s| format!(", about {} left", span(s.max(1)))).unwrap_or_default();
        let size = if b > 0 { format!(" ({})", bytes(b)) } else { String::new() };
        (SyncState::Syncing, format!("Syncing: {files} file(s){size} to go on {}{eta}", names(&syncing)))
    } else {
        (SyncState::UpToDate, format!("Up to date: all {} node(s) hold the same files", up.len()))
    };
    let env_sync = EnvSync {
        state,
        headline,
        differing,
        unreachable,
        syncing,
        errors,
        paused: env.paused,
        paused_at: env.paused_at,
        paused_by: env.paused_by.map(str::to_owned),
        out_of_sync_since: env.out_of_sync_since,
    };
    (env_sync, out)
}

mod holds;

#[cfg(test)]
mod tests;
