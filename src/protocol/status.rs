//! The agent's `/v1/status` report: one contract for the agent, which fills it (its event
//! loop and peer tasks update one value behind a mutex) and serves it as JSON, and for the
//! control plane, which reads it on every heartbeat. A public format (see ARCHITECTURE.md):
//! every struct takes `#[serde(default)]` and ignores unknown fields, so an agent and a
//! control plane of different versions still share what both know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::versions::{HeldDeletes, VersionsSummary};

/// One peer as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub address: String,
    /// The peer's node id, from its answers (`None` until it answered once).
    pub node_id: Option<u64>,
    pub connected: bool,
    /// Last time a page of this peer's changes was fully processed here (Unix seconds).
    pub last_sync: Option<i64>,
    pub last_error: Option<String>,
    /// Highest of the peer's sequence numbers processed here.
    pub their_seq_processed: u64,
    /// Highest of our sequence numbers the peer reported processing, and its backlog.
    pub our_seq_acked: u64,
    pub peer_pending: u64,
    pub peer_error: Option<String>,
    /// Median-ish recent replication lag from the peer's commit to our write (ms).
    pub lag_ms: Option<u64>,
    /// Dropped from the peer list by a reload (kept for its counters).
    pub removed: bool,
}

/// The state of the cross-environment link as one node reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Proving the shared password to the other environment.
    Pairing,
    /// Paired; the link session is being set up.
    Paired,
    Connected,
    /// Another node of this environment carries the link.
    Standby,
    /// The passwords differ.
    Refused,
    Unreachable,
    /// A state this reader does not know (a newer agent).
    #[default]
    #[serde(other)]
    Unknown,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Pairing => "pairing",
            LinkState::Paired => "paired",
            LinkState::Connected => "connected",
            LinkState::Standby => "standby",
            LinkState::Refused => "refused",
            LinkState::Unreachable => "unreachable",
            LinkState::Unknown => "unknown",
        })
    }
}

/// The cross-environment link as this node sees it (two-environment mode).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    pub state: LinkState,
    /// Whether this node carries the link for its environment.
    pub leader: bool,
    /// The address configured for the other environment.
    pub remote: String,
    /// The other environment's node this one exchanges with now.
    pub serving_node: Option<String>,
    pub last_exchange: Option<i64>,
    pub latency_ms: Option<f64>,
    /// Bytes over the link port and the link client (TLS payload), each way.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What is wrong, in words.
    pub error: Option<String>,
}

/// Totals since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    pub batches: u64,
    pub local_changes: u64,
    pub applied: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub refused: u64,
    pub delta_transfers: u64,
    pub renames: u64,
}

/// An agent's `/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    pub node_name: String,
    pub node_id: String,
    pub root: String,
    /// The folder identity peers must share (empty when agents are run by hand without one).
    pub folder_id: String,
    pub delay_s: u64,
    pub receive_only: bool,
    pub paused: bool,
    pub started_at: i64,
    pub startup_complete: bool,
    pub last_seq: u64,
    /// Local changes waiting for the batch delay.
    pub pending_local: u64,
    /// Files held because a process is still writing them.
    pub writing: u64,
    /// Remote changes accepted but not written yet.
    pub pending_remote: u64,
    pub pending_errors: Vec<String>,
    pub watches: u64,
    pub warnings: Vec<String>,
    /// Deletions held by the empty-root guard.
    pub held_deletes: u64,
    /// Peers' deletions waiting here: runs settling for a moment, and mass deletes held
    /// for an operator (`state == "held"`).
    pub mass_delete_holds: Vec<HeldDeletes>,
    /// The versions area's totals.
    pub versions: VersionsSummary,
    /// Names that cannot be synced (not UTF-8), shown lossily; at most a few.
    pub unsyncable: Vec<String>,
    pub unsyncable_count: u64,
    /// Peers refused because they sync another folder, by name, with the reason.
    pub foreign_folders: BTreeMap<String, String>,
    /// A receive-only node's local modifications (not sent).
    pub local_modifications: Vec<String>,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub tree_digest: String,
    pub excludes: Vec<String>,
    pub peers: BTreeMap<String, PeerStatus>,
    pub link: Option<LinkStatus>,
    pub counters: Counters,
}

impl AgentStatus {
    /// The largest replication lag measured from the peers.
    pub fn max_lag_ms(&self) -> Option<u64> {
        self.peers.values().filter_map(|p| p.lag_ms).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_of_any_agent_version_parses() {
        let v = serde_json::json!({
            "node_name": "web1", "files": 3, "tree_digest": "abc", "something_new": {"x": 1},
            "peers": {"web2": {"address": "10.0.0.12:7755", "connected": true, "lag_ms": 12}, "web3": {"lag_ms": 40}},
            "link": {"state": "connected", "leader": true, "remote": "x:1", "bytes_in": 1},
        });
        let s: AgentStatus = serde_json::from_value(v).unwrap();
        assert_eq!((s.node_name.as_str(), s.files, s.max_lag_ms()), ("web1", 3, Some(40)));
        assert_eq!(s.link.as_ref().unwrap().state, LinkState::Connected);
        let s: AgentStatus = serde_json::from_value(serde_json::json!({"link": {"state": "brand-new"}})).unwrap();
        assert_eq!(s.link.unwrap().state, LinkState::Unknown);
    }

    #[test]
    fn what_the_agent_writes_the_control_plane_reads_back_unchanged() {
        let mut s = AgentStatus { node_name: "n1".into(), pending_local: 3, unsyncable: vec!["a\u{fffd}".into()], ..AgentStatus::default() };
        s.peers.insert("n2".into(), PeerStatus { connected: true, lag_ms: Some(5), ..PeerStatus::default() });
        s.link = Some(LinkStatus { state: LinkState::Paired, ..LinkStatus::default() });
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"state\":\"paired\""), "{json}");
        assert_eq!(serde_json::from_str::<AgentStatus>(&json).unwrap(), s);
        assert_eq!(LinkState::Standby.to_string(), "standby");
    }
}
