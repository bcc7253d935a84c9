//! The control plane as a client of the agents' routes (mutual TLS, with the environment's
//! `filesync-control-plane` certificate): the typed `/v1/status` report, `/healthz`, the
//! admin commands, and the safety nets' routes (versions, restore, mass-delete holds).
//! Every answer is read with a limit (`MAX_*_BYTES`, through `pki::tls::read_limited`). Every call has a deadline; errors are sentences for the dashboard.
//!
//! `AgentStatus` is the agent's `/v1/status` (`protocol::status`, shared with the agent);
//! unknown fields are ignored and missing ones default, so an agent of another version
//! still reports what both know.

use std::time::Duration;

use serde::Serialize;

pub use crate::protocol::report::{
    ConflictCopy, Conflicts, DirDigests, FileFacts, LogTail, NodeReport, PathTest, RecentChange, RehashRequest, RehashResult, ResolveAction, ResolveRequest, ResolveResult,
};
pub use crate::protocol::status::{AgentStatus, Counters, LinkState, LinkStatus, PeerStatus};
pub use crate::protocol::versions::{HeldDeletes, HoldRequest, HoldResponse, RestoreRequest, RestoreResponse, VersionList, VersionQuery, VersionsSummary};

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
        let r = self.client.get(&url).timeout(timeout).send().await.map_err(|e| format!("no answer from {}: {}", self.base, why(&e, timeout)))?;
        if !r.status().is_success() {
            return Err(format!("{url} answered {}", r.status()));
        }
        let body = crate::pki::tls::read_limited(r, MAX_STATUS_BYTES, "the status").await.map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url} answered something that is not status JSON: {e}"))
    }

    pub async fn healthz(&self, timeout: Duration) -> Result<(), String> {
        let url = format!("{}/healthz", self.base);
        match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A report route's JSON body (`protocol::report`), read up to [`MAX_REPORT_BYTES`].
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path_and_query: &str, timeout: Duration) -> Result<T, String> {
        self.get_json_limited(path_and_query, timeout, MAX_REPORT_BYTES).await
    }

    /// A report route's JSON body, read up to `limit` bytes.
    pub async fn get_json_limited<T: serde::de::DeserializeOwned>(&self, path_and_query: &str, timeout: Duration, limit: u64) -> Result<T, String> {
        let url = format!("{}{path_and_query}", self.base);
        let r = self.client.get(&url).timeout(timeout).send().await.map_err(|e| format!("no answer from {}: {}", self.base, why(&e, timeout)))?;
        json_answer(&url, r, limit).await
    }

    /// Posts a JSON body to a report route and reads its JSON answer.
    pub async fn post_json<B: Serialize, T: serde::de::DeserializeOwned>(&self, path: &str, body: &B, timeout: Duration) -> Result<T, String> {
        let url = format!("{}{path}", self.base);
        let r = self.client.post(&url).json(body).timeout(timeout).send().await.map_err(|e| format!("no answer from {}: {}", self.base, why(&e, timeout)))?;
        json_answer(&url, r, MAX_REPORT_BYTES).await
    }

    pub async fn report(&self, run: u64, since: u64, timeout: Duration) -> Result<NodeReport, String> {
        self.get_json(&format!("/v1/report?run={run}&since={since}"), timeout).await
    }

    pub async fn conflicts(&self, timeout: Duration) -> Result<Conflicts, String> {
        self.get_json("/v1/report/conflicts", timeout).await
    }

    pub async fn resolve(&self, req: &ResolveRequest, timeout: Duration) -> Result<ResolveResult, String> {
        self.post_json("/v1/report/resolve", req, timeout).await
    }

    pub async fn digests(&self, timeout: Duration) -> Result<DirDigests, String> {
        self.get_json_limited("/v1/report/digests", timeout, MAX_TREE_BYTES).await
    }

    pub async fn files(&self, dir: &str, timeout: Duration) -> Result<FileFacts, String> {
        let q: String = url_encode(dir);
        self.get_json_limited(&format!("/v1/report/files?dir={q}"), timeout, MAX_TREE_BYTES).await
    }

    pub async fn rehash(&self, req: &RehashRequest, timeout: Duration) -> Result<RehashResult, String> {
        self.post_json("/v1/report/rehash", req, timeout).await
    }

    pub async fn log_tail(&self, lines: usize, timeout: Duration) -> Result<LogTail, String> {
        self.get_json_limited(&format!("/v1/report/log?lines={lines}"), timeout, MAX_LOG_BYTES).await
    }

    pub async fn path_test(&self, path: &str, timeout: Duration) -> Result<PathTest, String> {
        self.get_json(&format!("/v1/report/excluded?path={}", url_encode(path)), timeout).await
    }

    /// `GET /v1/versions`: the versions this node keeps that match `q`.
    pub async fn versions(&self, q: &VersionQuery, timeout: Duration) -> Result<VersionList, String> {
        let mut query = Vec::new();
        if let Some(p) = q.path.as_deref().filter(|p| !p.is_empty()) {
            query.push(format!("path={}", url_encode(p)));
        }
        if q.deleted {
            query.push("deleted=true".into());
        }
        if let Some(t) = q.from {
            query.push(format!("from={t}"));
        }
        if let Some(t) = q.to {
            query.push(format!("to={t}"));
        }
        if let Some(l) = q.limit {
            query.push(format!("limit={l}"));
        }
        self.get_json_limited(&format!("/v1/versions?{}", query.join("&")), timeout, MAX_TREE_BYTES).await
    }

    /// `POST /v1/admin/restore`.
    pub async fn restore(&self, req: &RestoreRequest, timeout: Duration) -> Result<RestoreResponse, String> {
        self.post_json("/v1/admin/restore", req, timeout).await
    }

    /// `POST /v1/admin/hold/confirm` (apply) or `/reject` (bring the files back).
    pub async fn hold(&self, confirm: bool, req: &HoldRequest, timeout: Duration) -> Result<HoldResponse, String> {
        let verb = if confirm { "confirm" } else { "reject" };
        self.post_json(&format!("/v1/admin/hold/{verb}"), req, timeout).await
    }

    pub async fn admin(&self, cmd: AdminCommand, timeout: Duration) -> Result<(), String> {
        match self.client.post(format!("{}{}", self.base, cmd.path())).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the agent answered {}", r.status())),
            Err(e) => Err(format!("no answer from {} ({e})", self.base)),
        }
    }
}

/// Why a request got no answer, in a few words: a timeout, a refused connection, or the
/// innermost cause (reqwest's own text repeats the URL).
pub fn why(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", timeout.as_secs());
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let text = cause.to_string();
    if text.contains("Connection refused") { "connection refused (is the agent running?)".into() } else { text }
}

// What an agent sends is read up to these sizes and no further (a hostile or broken agent
// must not decide how much memory the control plane spends, nor what every page loads).
/// `/v1/status` (its lists are capped by the agent: a real one is a few KiB per peer).
pub const MAX_STATUS_BYTES: u64 = 1024 * 1024;
/// A report, the conflict list, a resolve or rehash answer.
pub const MAX_REPORT_BYTES: u64 = 4 * 1024 * 1024;
/// The log tail (at most 5,000 lines).
pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;
/// A verify's per-directory digests, one directory's file facts, a versions listing (5,000 at most).
pub const MAX_TREE_BYTES: u64 = 64 * 1024 * 1024;

/// A report route's answer: its JSON on success, else the status and the first 300
/// characters of what it said. The body is read up to `limit` bytes, never more.
async fn json_answer<T: serde::de::DeserializeOwned>(url: &str, r: reqwest::Response, limit: u64) -> Result<T, String> {
    let status = r.status();
    if !status.is_success() {
        let text = crate::pki::tls::read_limited(r, 64 * 1024, "the error answer").await.unwrap_or_default();
        return Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&text).chars().take(300).collect::<String>()));
    }
    let body = crate::pki::tls::read_limited(r, limit, "the answer").await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} answered something unexpected: {e}"))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn url_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
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
    fn url_hosts_bracket_ipv6() {
        assert_eq!(url_host("::1", 7755), "[::1]:7755");
        assert_eq!(url_host("web1.example", 7755), "web1.example:7755");
    }
}
