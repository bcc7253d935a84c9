//! Bodies agents exchange over their mutually authenticated HTTP/2 link (postcard-encoded).
//!
//! Replication is a long-poll: a peer asks `GET /v1/changes?since=N` and the node answers
//! with every index entry whose local sequence number is above `N` (its own changes and
//! the ones it applied from others, so changes are relayed), plus the content of small
//! files it changed itself inline. With nothing new it holds the request until something
//! changes. On (re)connect the same request is the anti-entropy catch-up.

use serde::{Deserialize, Serialize};

use super::{Entry, NodeId};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesQuery {
    /// Highest sequence number of this node the asker has processed.
    pub since: u64,
    /// The asker's view of this node's index incarnation; a mismatch restarts from 0.
    pub index_id: u64,
    /// How long the node may hold the request when it has nothing newer (milliseconds).
    pub wait_ms: u64,
    /// Items the asker has accepted but not yet written (reported in this node's status).
    pub pending: u64,
    /// The asker's node name, for this node's status and log.
    pub from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangesResponse {
    pub node_id: NodeId,
    pub node_name: String,
    pub index_id: u64,
    /// (sequence number, entry), ascending.
    pub entries: Vec<(u64, Entry)>,
    /// Content of small files, keyed by their BLAKE3 hash.
    pub blobs: Vec<Blob>,
    /// The highest sequence the asker may record after processing this page.
    pub last_seq: u64,
    /// More pages are waiting; ask again at once.
    pub more: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Blob {
    pub hash: [u8; 32],
    pub data: Vec<u8>,
}

/// Why a content request could not be served.
pub const CONTENT_CHANGED: &str = "content changed since it was announced";
