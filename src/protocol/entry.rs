//! `Entry`: what the index knows about one path, and what peers exchange about it.

use serde::{Deserialize, Serialize};

use super::{RelPath, VersionVector};

/// A node's identity in version vectors: random, created with the node's index.
pub type NodeId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
    /// A tombstone: the path was deleted at this version. Kept so an offline node cannot
    /// bring the path back.
    pub deleted: bool,
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch (files and symlinks).
    pub mtime_ns: i64,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// BLAKE3 of the content for files; of the target for symlinks; zero for directories.
    pub hash: [u8; 32],
    /// Symlink target, verbatim. Never followed by the agent.
    pub target: String,
    pub version: VersionVector,
    /// The node that made this version, by id and by name (the name goes into conflict
    /// copy names so every node derives the same one).
    pub modified_by: NodeId,
    pub modified_by_name: String,
    /// The version at which this content (or this deletion) was made: set by the scan that
    /// found new content, kept by conflict resolutions and metadata-only changes, adopted
    /// with the content by a node that takes another's version. A concurrent version whose
    /// author had already seen our content (`our.origin` seen by `theirs.version`)
    /// supersedes it without a conflict copy.
    pub origin: VersionVector,
}

impl Entry {
    /// Same content and kind (ignoring metadata and versions): two such versions never
    /// need a conflict copy.
    pub fn same_content(&self, other: &Entry) -> bool {
        self.deleted == other.deleted && (self.deleted || (self.kind == other.kind && self.hash == other.hash && self.target == other.target))
    }

    /// Same content and same replicated metadata.
    pub fn same_state(&self, other: &Entry) -> bool {
        self.same_content(other) && (self.deleted || (self.mode == other.mode && (self.kind == EntryKind::Dir || self.mtime_ns == other.mtime_ns)))
    }

    pub fn short_hash(&self) -> String {
        hex::encode(&self.hash[..6])
    }
}
