//! The contract of the safety nets between an agent and whoever operates it (`filesync ctl`
//! today, the control plane over its mutual-TLS client later): the JSON bodies of
//! `GET /v1/versions`, `POST /v1/admin/restore`, `POST /v1/admin/hold/{confirm,reject}`, and
//! the `versions` and `mass_delete_holds` fields of `/v1/status`. Times are Unix seconds
//! (UTC); paths are relative to the sync root, `""` meaning the whole tree. Plain values
//! only, so both sides share one definition.

use serde::{Deserialize, Serialize};

/// Why a version was kept: what happened to the content that was at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A peer's newer content replaced it.
    Replaced,
    /// A peer's deletion removed it.
    Deleted,
    /// An operator's restore replaced it (so a restore can be undone too).
    Restored,
    /// Something else took it off its name (a receive-only node's revert).
    Other,
}

impl Cause {
    pub fn word(self) -> &'static str {
        match self {
            Cause::Replaced => "replaced",
            Cause::Deleted => "deleted",
            Cause::Restored => "restored over",
            Cause::Other => "removed",
        }
    }
}

/// `GET /v1/versions` query: which versions to list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionQuery {
    /// A file or folder; absent or `""`: the whole tree.
    #[serde(default)]
    pub path: Option<String>,
    /// Only versions kept because their path was deleted.
    #[serde(default)]
    pub deleted: bool,
    /// Only versions kept at or after this time.
    #[serde(default)]
    pub from: Option<i64>,
    /// Only versions kept at or before this time.
    #[serde(default)]
    pub to: Option<i64>,
    /// At most this many, newest first (default and ceiling [`MAX_LIST`]).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// The most versions one listing returns.
pub const MAX_LIST: usize = 5_000;

/// One kept version of one path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VersionInfo {
    /// Names the version in a restore.
    pub id: u64,
    pub path: String,
    /// When it was taken off its name.
    pub kept_at: i64,
    pub size: u64,
    /// Its modification time, in nanoseconds (restored as it was).
    pub mtime_ns: i64,
    /// Permission bits.
    pub mode: u32,
    /// BLAKE3 of the content, hex.
    pub hash: Option<String>,
    /// The node whose change took it off its name.
    pub by: String,
    pub cause: Cause,
    /// False during its first seconds (a write through a descriptor opened before it was
    /// replaced may still reach it; it is not counted in the totals yet).
    #[serde(default)]
    pub settled: bool,
}

/// Totals of the versions area, in `/v1/status` and every listing.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionsSummary {
    /// Whether this node keeps versions at all (`[versions] keep`, and a state dir on the
    /// sync root's file system).
    pub enabled: bool,
    pub count: u64,
    /// Disk space the kept versions use (allocated blocks, as `du` counts them).
    pub bytes: u64,
    /// The size cap in force now.
    pub cap_bytes: u64,
    pub max_age_secs: u64,
    pub oldest: Option<i64>,
    /// False while new versions are not kept; `stopped` says why.
    pub keeping: bool,
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionList {
    pub versions: Vec<VersionInfo>,
    /// How many matched (more than listed when `truncated`).
    pub matched: usize,
    pub truncated: bool,
    pub summary: VersionsSummary,
}

/// `POST /v1/admin/restore`. Without `id`, `at` or a deletion window: a file path gets its
/// newest version back; a folder gets back every file under it whose newest version is a
/// deletion (the whole tree, `""`, needs `at` or a deletion window).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreRequest {
    /// A file or folder; `""`: the whole tree.
    #[serde(default)]
    pub path: String,
    /// Exactly this version.
    #[serde(default)]
    pub id: Option<u64>,
    /// Each file as it was at this time (the content it had then, if it changed since).
    #[serde(default)]
    pub at: Option<i64>,
    /// Files deleted between these times (inclusive), each with its content before the
    /// deletion.
    #[serde(default)]
    pub deleted_from: Option<i64>,
    #[serde(default)]
    pub deleted_to: Option<i64>,
    /// Replace a file even if it changed since its newest version here (its current content
    /// is kept as a version first). Without it such a file is restored beside it.
    #[serde(default)]
    pub replace: bool,
    /// Only say what would be done.
    #[serde(default)]
    pub dry_run: bool,
}

/// What one restored version became.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restored {
    pub id: u64,
    /// The path the version was kept from.
    pub path: String,
    /// Where its content was written: `path`, or a `.restored-` name beside it.
    pub written_to: String,
    /// The current content was replaced (and is now a version itself).
    pub replaced: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestoreResponse {
    pub restored: Vec<Restored>,
    pub skipped: Vec<Skipped>,
    pub dry_run: bool,
    pub message: String,
}

/// `POST /v1/admin/hold/{confirm,reject}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HoldRequest {
    /// The node whose deletions are held; may be left out while only one is.
    #[serde(default)]
    pub from: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HoldResponse {
    pub from: String,
    /// Deletions applied (confirm) or turned back (reject).
    pub entries: usize,
    pub message: String,
}

/// A run of deletions from one node that is not applied yet.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HeldDeletes {
    /// The node that made the deletions.
    pub from: String,
    /// `held` (waits for an operator) or `settling` (collecting the rest of the batch for a
    /// moment before applying it).
    pub state: String,
    pub since: i64,
    /// Files and links among them (what the threshold counts), and every entry.
    pub files: usize,
    pub entries: usize,
    /// A few of the paths.
    pub sample: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_accept_missing_fields() {
        let r: RestoreRequest = serde_json::from_str(r#"{"path":"a/b.txt"}"#).unwrap();
        assert_eq!(r, RestoreRequest { path: "a/b.txt".into(), ..RestoreRequest::default() });
        let h: HoldRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(h.from, None);
        assert_eq!(serde_json::to_string(&Cause::Deleted).unwrap(), "\"deleted\"");
    }
}
