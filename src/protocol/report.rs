//! The agent's report routes as typed bodies: what the dashboard reads from each agent
//! (recent file changes, conflict copies, per-directory digests and file facts for verify,
//! the tail of `lsyncd.log`) and the operator actions it asks an agent to carry out
//! (resolve a conflict, re-hash paths). The agent serves them (`agent::report`), the control
//! plane reads them (`control::agent_api`); both use these structs, so the contract has one
//! home. Plain values and pure functions only.
//!
//! Routes (mutual TLS on the agent port): `GET /v1/report?since=N` ([`NodeReport`]),
//! `GET /v1/report/changes` ([`RecentChanges`]), `GET /v1/report/conflicts` ([`Conflicts`]),
//! `GET /v1/report/digests` ([`DirDigests`]), `GET /v1/report/files?dir=D` ([`FileFacts`]),
//! `GET /v1/report/log?lines=N` ([`LogTail`]), `GET /v1/report/excluded?path=P`
//! ([`PathTest`]); and the admin routes `POST /v1/report/resolve` ([`ResolveRequest`] →
//! [`ResolveResult`]) and `POST /v1/report/rehash` ([`RehashRequest`] → [`RehashResult`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::conflict::is_conflict_copy;

/// What happened to a path, as the recent-changes list says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Created,
    Changed,
    Renamed,
    Deleted,
    /// A conflict copy appeared: two nodes changed the path at once; one version kept the
    /// name, the other is kept under this copy's name.
    Conflict,
    /// A kind this reader does not know (a newer agent).
    #[serde(other)]
    Other,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Changed => "changed",
            ChangeKind::Renamed => "renamed",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Conflict => "conflict",
            ChangeKind::Other => "other",
        }
    }
}

/// One file change recorded by one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentChange {
    /// Position in this agent's change list (grows by one per change, from 1 at start-up).
    pub seq: u64,
    /// When this agent recorded it (Unix milliseconds).
    pub at_ms: i64,
    pub path: String,
    pub kind: ChangeKind,
    /// `file`, `dir` or `symlink`.
    pub entry: String,
    /// The node that made the change (its author).
    pub origin: String,
    /// The peer it arrived from; `None` when it was made on this node.
    #[serde(default)]
    pub via: Option<String>,
    pub size: u64,
    /// For a rename: the path it had before.
    #[serde(default)]
    pub from_path: Option<String>,
    /// A short digest of the version: the same change carries the same one on every node.
    pub version: String,
    /// The start of the content's hash (empty for deletions and directories): nodes that
    /// resolved one conflict each record their own version of the same content.
    #[serde(default)]
    pub content: String,
}

/// `GET /v1/report/changes`: this agent's most recent changes, newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecentChanges {
    pub node: String,
    pub changes: Vec<RecentChange>,
    /// How many changes the agent keeps.
    pub capacity: usize,
}

/// `GET /v1/report?since=N`: the cheap summary the control plane reads with every heartbeat,
/// with the changes recorded after `since` (at most [`REPORT_CHANGES`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeReport {
    pub node: String,
    /// Random per agent process: a new one means the change list restarted at 1.
    pub run_id: u64,
    /// The newest change's `seq` (0 before any).
    pub last_change: u64,
    pub changes: Vec<RecentChange>,
    /// Conflict copies in the index, and a number that changes whenever that set does.
    pub conflicts: u64,
    pub conflicts_rev: u64,
    /// Content still to fetch from peers (accepted, not written yet).
    pub pending_files: u64,
    pub pending_bytes: u64,
}

/// Most changes one summary carries; the rest come with the next heartbeat.
pub const REPORT_CHANGES: usize = 500;

/// One conflict copy and the file it is a copy of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictCopy {
    /// The copy's path (`name.sync-conflict-...ext`).
    pub path: String,
    /// The path whose losing version this is (the winner's name), when it can be told from
    /// the copy's name (a shortened long name cannot).
    pub original: Option<String>,
    /// The node that made the losing version (from the copy's name).
    pub loser_node: String,
    pub copy_size: u64,
    /// The losing version's modification time (Unix seconds).
    pub copy_mtime: i64,
    /// The winner as this node holds it now (None: the original name is gone or unknown).
    pub winner_size: Option<u64>,
    pub winner_mtime: Option<i64>,
    pub winner_by: Option<String>,
}

/// `GET /v1/report/conflicts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conflicts {
    pub node: String,
    /// At most [`MAX_CONFLICTS`], by path.
    pub conflicts: Vec<ConflictCopy>,
    pub total: u64,
}

pub const MAX_CONFLICTS: usize = 2000;

/// What to do with a conflict copy. Each is an ordinary local change on the node asked,
/// which replicates to every node by the normal rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveAction {
    /// Keep the winner: the copy is deleted (everywhere).
    KeepWinner,
    /// The copy's content becomes the file again (the winner's content is replaced).
    RestoreCopy,
    /// Keep both: the copy is renamed to a name of the operator's choice.
    KeepBoth,
}

impl ResolveAction {
    pub fn parse(s: &str) -> Option<ResolveAction> {
        match s {
            "keep_winner" => Some(ResolveAction::KeepWinner),
            "restore_copy" => Some(ResolveAction::RestoreCopy),
            "keep_both" => Some(ResolveAction::KeepBoth),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResolveAction::KeepWinner => "keep_winner",
            ResolveAction::RestoreCopy => "restore_copy",
            ResolveAction::KeepBoth => "keep_both",
        }
    }
}

/// `POST /v1/report/resolve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveRequest {
    pub copy: String,
    pub action: ResolveAction,
    /// For `keep_both`: the new path of the copy (relative to the sync root).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveResult {
    pub done: bool,
    /// What was done, or why not, in words.
    pub message: String,
}

/// One directory's digests: `own` covers its direct entries (names, kinds, content,
/// modes, file mtimes), `tree` everything below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirDigest {
    pub own: String,
    pub tree: String,
}

/// `GET /v1/report/digests`: per-directory digests of the sync folder as it is on disk
/// (every file read and hashed, so a change the agent never saw counts too). `""` is the
/// root.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DirDigests {
    pub node: String,
    pub dirs: BTreeMap<String, DirDigest>,
    pub files: u64,
    pub bytes: u64,
    /// Entries that could not be read (they count as differing).
    pub errors: Vec<String>,
    pub took_ms: u64,
}

/// One entry as found on disk, for comparing a directory between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileFact {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub entry: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub mode: u32,
    /// BLAKE3 of the content (files) or the target (links), hex; empty for directories.
    pub hash: String,
    /// Whether the index records this same content (false: changed behind the agent's back,
    /// or not announced yet).
    pub indexed: bool,
}

/// `GET /v1/report/files?dir=D`: the direct entries of one directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileFacts {
    pub node: String,
    pub dir: String,
    pub entries: Vec<FileFact>,
}

/// `POST /v1/report/rehash`: read these paths again on the next scan, whatever their size
/// and mtime say (content changed behind the agent's back is then announced as a local
/// change, by the normal rules). An empty list means every file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehashRequest {
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RehashResult {
    /// Paths that will be read again.
    pub queued: u64,
    pub message: String,
}

/// `GET /v1/report/log?lines=N`: the end of `lsyncd.log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTail {
    pub node: String,
    pub lines: Vec<String>,
    /// The log's size in bytes (the rotated files not counted).
    pub size: u64,
    /// `lsyncd.status` as last written.
    #[serde(default)]
    pub status: String,
}

/// Most lines one log request returns.
pub const MAX_LOG_LINES: usize = 5000;

/// `GET /v1/report/excluded?path=P`: whether the agent would sync `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTest {
    pub path: String,
    pub synced: bool,
    /// Why not, in words (the pattern or rule), or why it is synced.
    pub reason: String,
}

/// The name a conflict copy is a copy of, and the node that made the losing version, from
/// the copy's file name: `photo.sync-conflict-20261122-101502-node2-3fa9c01b.jpg` →
/// (`photo.jpg`, `node2`); `a.txt.sync-conflict-kept-0a1b2c3d` → (`a.txt`, ``). `None` for
/// a name that is not a conflict copy. The directory part is kept.
pub fn conflict_original(copy: &str) -> Option<(String, String)> {
    let (dir, name) = match copy.rfind('/') {
        Some(i) => (&copy[..=i], &copy[i + 1..]),
        None => ("", copy),
    };
    if !is_conflict_copy(name) {
        return None;
    }
    let at = name.find(".sync-conflict-")?;
    let (stem, rest) = (&name[..at], &name[at + ".sync-conflict-".len()..]);
    if let Some(tag) = rest.strip_prefix("kept-") {
        // `remove` keeps a file written while it was being deleted as `<name>.sync-conflict-kept-<8 hex>`.
        let ok = tag.len() == 8 && tag.bytes().all(|b| b.is_ascii_hexdigit());
        return ok.then(|| (format!("{dir}{stem}"), String::new()));
    }
    // `<YYYYMMDD>-<HHMMSS>-<node>-<8 hex><ext>`; the node name may contain `-`.
    let (tail, ext) = match rest.find('.') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let parts: Vec<&str> = tail.split('-').collect();
    if parts.len() < 4 || parts[0].len() != 8 || parts[1].len() != 6 || !parts[0].bytes().chain(parts[1].bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hash = parts[parts.len() - 1];
    if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let node = parts[2..parts.len() - 1].join("-");
    if stem.is_empty() && ext.is_empty() {
        return None;
    }
    Some((format!("{dir}{stem}{ext}"), node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::conflict::{conflict_copy_path, rescue_copy_path};
    use crate::protocol::{Entry, EntryKind, RelPath, VersionVector};

    #[test]
    fn the_original_of_every_copy_name_the_agent_makes() {
        let mut e = Entry {
            path: RelPath::parse("up/photo.jpg").unwrap(),
            kind: EntryKind::File,
            deleted: false,
            size: 1,
            mtime_ns: 1_795_342_502_000_000_000,
            mode: 0o644,
            hash: [0xab; 32],
            target: String::new(),
            version: VersionVector::new(),
            modified_by: 2,
            modified_by_name: "web-2".into(),
            origin: VersionVector::new(),
        };
        for (path, want) in [("up/photo.jpg", "up/photo.jpg"), ("hello.txt", "hello.txt"), ("noext", "noext"), ("d/.hidden", "d/.hidden"), ("a.tar.gz", "a.tar.gz")] {
            let p = RelPath::parse(path).unwrap();
            e.path = p.clone();
            let c = conflict_copy_path(&p, &e);
            assert_eq!(conflict_original(c.as_str()), Some((want.to_owned(), "web-2".to_owned())), "{c}");
        }
        let r = rescue_copy_path(&RelPath::parse("x/notes.md").unwrap(), "node1", 1_795_342_502_000_000_000, 7);
        assert_eq!(conflict_original(r.as_str()), Some(("x/notes.md".into(), "node1".into())));
        assert_eq!(conflict_original("a.txt.sync-conflict-kept-0a1b2c3d"), Some(("a.txt".into(), String::new())));
        for not in ["a.txt", "a.sync-conflict-x.txt", "a.sync-conflict-20261122-101502-n-zz.txt", "sync-conflict-20261122-101502-n-01020304", "a.sync-conflict-kept-1"] {
            assert_eq!(conflict_original(not), None, "{not}");
        }
    }

    #[test]
    fn bodies_of_a_newer_agent_still_parse() {
        let v = serde_json::json!({"node": "n1", "run_id": 3, "changes": [{"seq": 1, "at_ms": 5, "path": "a", "kind": "teleported", "entry": "file", "origin": "n2", "size": 1, "version": "v"}], "brand_new": 1});
        let r: NodeReport = serde_json::from_value(v).unwrap();
        assert_eq!((r.run_id, r.changes[0].kind, r.changes[0].via.as_deref()), (3, ChangeKind::Other, None));
        assert_eq!(ResolveAction::parse(ResolveAction::RestoreCopy.as_str()), Some(ResolveAction::RestoreCopy));
    }
}
