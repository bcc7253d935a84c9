//! The control plane as a client of the agents' routes (mutual TLS, with the environment's
//! `filesync-control-plane` certificate): the typed `/v1/status` report, `/healthz`, and
//! the admin commands. Every call has a deadline; errors are sentences for the dashboard.
//!
//! `AgentStatus` mirrors the agent's `/v1/status` JSON (a public format, see
//! ARCHITECTURE.md); unknown fields are ignored and missing ones default, so an agent of
//! another version still reports what both know.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An admin command on `/v1/admin/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCommand {
    Pause,
    Resume,
    Reload,
    Rescan,
}

impl AdminCommand {
    pub fn path(self) -> &'static str {
        match self {
            AdminCommand::Pause => "/v1/admin/pause",
            AdminCommand::Resume => "/v1/admin/resume",
            AdminCommand::Reload => "/v1/admin/reload",
            AdminCommand::Rescan => "/v1/admin/rescan",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub address: String,
    pub connected: bool,
    pub last_sync: Option<i64>,
    pub last_error: Option<String>,
    pub their_seq_processed: u64,
    pub our_seq_acked: u64,
    pub peer_pending: u64,
    pub peer_error: Option<String>,
    pub lag_ms: Option<u64>,
    pub removed: bool,
}

/// The state of the cross-environment link as one node reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Pairing,
    Connected,
    Standby,
    Refused,
    Unreachable,
    /// A state this control plane does not know (a newer agent).
    #[default]
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkStatus {
    pub state: LinkState,
    pub leader: bool,
    pub remote: String,
    pub serving_node: Option<String>,
    pub last_exchange: Option<i64>,
    pub latency_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub error: Option<String>,
}

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

/// An agent's `/v1/status` report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    pub node_name: String,
    pub node_id: String,
    pub root: String,
    pub folder_id: Option<String>,
    pub delay_s: u64,
    pub receive_only: bool,
    pub paused: bool,
    pub started_at: i64,
    pub startup_complete: bool,
    pub last_seq: u64,
    pub pending_local: u64,
    pub writing: u64,
    pub pending_remote: u64,
    pub pending_errors: Vec<String>,
    pub watches: u64,
    pub warnings: Vec<String>,
    pub held_deletes: u64,
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

/// One agent, reached with the environment's client certificate.
pub struct AgentApi {
    client: reqwest::Client,
    base: String,
}

/// `host:port` for a URL: IPv6 addresses go in brackets.
pub fn url_host(address: &str, port: i32) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

impl AgentApi {
    pub fn new(client: reqwest::Client, address: &str, port: i32) -> AgentApi {
        AgentApi { client, base: format!("https://{}", url_host(address, port)) }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn status(&self, timeout: Duration) -> Result<AgentStatus, String> {
        let url = format!("{}/v1/status", self.base);
        let r = self.client.get(&url).timeout(timeout).send().await.map_err(|e| format!("no answer from {}: {e}", self.base))?;
        if !r.status().is_success() {
            return Err(format!("{url} answered {}", r.status()));
        }
        r.json().await.map_err(|e| format!("{url} answered something that is not status JSON: {e}"))
    }

    pub async fn healthz(&self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/healthz", self.base);
        match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn admin(&self, cmd: AdminCommand, timeout: Duration) -> Result<(), String> {
        match self.client.post(format!("{}{}", self.base, cmd.path())).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the agent answered {}", r.status())),
            Err(e) => Err(format!("no answer from {} ({e})", self.base)),
        }
    }
}

/// The IP address an agent listens on and its peers connect to. Agents take socket
/// addresses only, so a node added by host name is resolved here (the first IPv4 address,
/// else the first address), with a clear message when it does not resolve.
pub async fn resolve_ip(address: &str) -> Result<std::net::IpAddr, String> {
    if let Ok(ip) = address.parse::<std::net::IpAddr>() {
        return Ok(ip);
    }
    let found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host((address, 0))).await;
    let addrs: Vec<std::net::IpAddr> = match found {
        Ok(Ok(a)) => a.map(|s| s.ip()).collect(),
        Ok(Err(e)) => return Err(format!("{address} does not resolve ({e}); use the node's IP address or fix its DNS name")),
        Err(_) => return Err(format!("{address} did not resolve within 5 s; use the node's IP address or fix its DNS name")),
    };
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| format!("{address} resolves to no address; use the node's IP address"))
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
        assert_eq!(url_host("::1", 7755), "[::1]:7755");
        assert_eq!(url_host("web1.example", 7755), "web1.example:7755");
    }
}
