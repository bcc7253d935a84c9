//! The agent's live state as users see it: `lsyncd.status` (rewritten when what it says
//! changes; lsyncd's shape plus peers, versions and held deletions) and the Prometheus text
//! on `/metrics`, rendered from the `/v1/status` report (`protocol::status`, the contract
//! with the control plane). The event loop and the peer tasks update one `Status` behind a
//! short-held mutex; renderers take a snapshot. `lsyncd.status` is written through
//! the verified log directory (`private_fs`), mode 0640.

use std::fmt::Write as _;
use std::path::Path;

use time::OffsetDateTime;

use super::lsyncd_log::timestamp;
pub use crate::protocol::status::{AgentStatus as Status, LinkState, LinkStatus, PeerStatus};

impl Status {
    /// `lsyncd.status` without its first line (the time it was written).
    pub fn render_lsyncd_status(&self) -> String {
        let now = OffsetDateTime::now_utc();
        let mut s = String::new();
        let _ = writeln!(s, "Sync1 source={}/", self.root);
        let _ = writeln!(s, "Node: {} ({}){}", self.node_name, if self.receive_only { "receive-only" } else { "send-receive" }, if self.paused { ", PAUSED" } else { "" });
        let _ = writeln!(s, "There are {} delays", self.pending_local);
        if self.writing > 0 {
            let _ = writeln!(s, "  {} file(s) still being written, held until closed", self.writing);
        }
        let _ = writeln!(s, "There are {} pending remote changes", self.pending_remote);
        for e in &self.pending_errors {
            let _ = writeln!(s, "  waiting: {e}");
        }
        if self.held_deletes > 0 {
            let _ = writeln!(s, "HOLDING {} deletes: the sync root looks empty or unmounted; nothing is deleted on peers", self.held_deletes);
        }
        for h in self.mass_delete_holds.iter().filter(|h| h.state == "held") {
            let since = timestamp(OffsetDateTime::from_unix_timestamp(h.since).unwrap_or(now));
            let _ = writeln!(s, "HOLDING {} deletes from {} since {since} ({} entries with directories): more than this node accepts at once; nothing was deleted here", h.files, h.from, h.entries);
            let _ = writeln!(s, "  e.g. {}", h.sample.join(", "));
            let _ = writeln!(s, "  apply them: filesync ctl --config <agent.toml> hold confirm --from {}; bring the files back everywhere: ... hold reject --from {}", h.from, h.from);
        }
        if self.unsyncable_count > 0 {
            let _ = writeln!(s, "NOT SYNCED: {} name(s) that are not valid UTF-8 (rename them):", self.unsyncable_count);
            for n in &self.unsyncable {
                let _ = writeln!(s, "  {n}");
            }
        }
        for (peer, why) in &self.foreign_folders {
            let _ = writeln!(s, "REFUSED peer {peer}: {why}");
        }
        let _ = writeln!(s, "Tree: {} files, {} directories, {} symlinks, {} bytes, digest {}", self.files, self.dirs, self.symlinks, self.bytes, self.tree_digest);
        let v = &self.versions;
        if v.enabled {
            let _ = writeln!(
                s,
                "Versions: {} kept, {} bytes (cap {} bytes, kept for {}){}",
                v.count,
                v.bytes,
                v.cap_bytes,
                super::versions::age(v.max_age_secs),
                if v.keeping { "" } else { ", NOT KEEPING NEW ONES" }
            );
        }
        if let Some(why) = &v.stopped {
            let _ = writeln!(s, "{}{why}", if v.enabled { "  " } else { "Versions: none kept: " });
        }
        let _ = writeln!(s, "Excluding:");
        for e in &self.excludes {
            let _ = writeln!(s, "  {e}");
        }
        let _ = writeln!(s, "\nPeers:");
        for (name, p) in &self.peers {
            // `@…` are the other environment's nodes: the link line below describes them.
            if p.removed || name.starts_with('@') {
                continue;
            }
            let state = if p.connected { "connected" } else { "disconnected" };
            let last = p.last_sync.map(|t| timestamp(OffsetDateTime::from_unix_timestamp(t).unwrap_or(now))).unwrap_or_else(|| "never".into());
            let _ = write!(s, "  {name} {} {state}, last sync {last}", p.address);
            if let Some(l) = p.lag_ms {
                let _ = write!(s, ", lag {l} ms");
            }
            if p.peer_pending > 0 {
                let _ = write!(s, ", {} change(s) not yet written there", p.peer_pending);
            }
            let _ = writeln!(s);
            if let Some(e) = &p.last_error {
                let _ = writeln!(s, "    error: {e}");
            }
            if let Some(e) = &p.peer_error {
                let _ = writeln!(s, "    peer reports: {e}");
            }
        }
        if let Some(l) = &self.link {
            let last = l.last_exchange.map(|t| timestamp(OffsetDateTime::from_unix_timestamp(t).unwrap_or(now))).unwrap_or_else(|| "never".into());
            let _ = write!(s, "\nLink to the other environment ({}): {}{}", l.remote, l.state, if l.leader { ", carried by this node" } else { "" });
            if let Some(n) = &l.serving_node {
                let _ = write!(s, ", with {n}");
            }
            let _ = write!(s, ", last exchange {last}");
            if let Some(ms) = l.latency_ms {
                let _ = write!(s, ", latency {ms:.0} ms");
            }
            let _ = writeln!(s, ", {} bytes in, {} bytes out", l.bytes_in, l.bytes_out);
            if let Some(e) = &l.error {
                let _ = writeln!(s, "    error: {e}");
            }
        }
        if !self.local_modifications.is_empty() {
            let _ = writeln!(s, "\nLocal modifications (receive-only, not sent; revert with `filesync ctl revert`):");
            for m in self.local_modifications.iter().take(100) {
                let _ = writeln!(s, "  {m}");
            }
        }
        for w in &self.warnings {
            let _ = writeln!(s, "\nWARNING: {w}");
        }
        let _ = writeln!(s, "\nInotify watching {} directories", self.watches);
        s
    }

    /// Writes `lsyncd.status` (the time, then `body` from `render_lsyncd_status`).
    pub fn write_lsyncd_status(dir: &Path, body: &str) -> std::io::Result<()> {
        let text = format!("Lsyncd status report at {}\n\n{body}", timestamp(OffsetDateTime::now_utc()));
        // Through the verified log dir: `lsyncd.status.tmp` is created exclusively and never
        // followed, then renamed over `lsyncd.status` inside the directory (`private_fs`).
        let d = crate::private_fs::PrivateDir::log(dir).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        d.write_atomic("lsyncd.status", text.as_bytes(), false)
    }

    pub fn metrics(&self) -> String {
        let mut s = String::new();
        let mut m = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(s, "# HELP filesync_{name} {help}\n# TYPE filesync_{name} {kind}\n{v}");
        };
        let c = &self.counters;
        m("pending_local_changes", "Local changes waiting for the batch delay.", "gauge", format!("filesync_pending_local_changes {}", self.pending_local));
        m("pending_remote_changes", "Remote changes accepted but not yet written.", "gauge", format!("filesync_pending_remote_changes {}", self.pending_remote));
        m("watches", "Directories watched with inotify.", "gauge", format!("filesync_watches {}", self.watches));
        m("files", "Files in the synced tree.", "gauge", format!("filesync_files {}", self.files));
        m("conflicts_total", "Conflicts resolved with a conflict copy.", "counter", format!("filesync_conflicts_total {}", c.conflicts));
        m("bytes_received_total", "File content bytes received from peers.", "counter", format!("filesync_bytes_received_total {}", c.bytes_received));
        m("bytes_sent_total", "File content bytes sent to peers.", "counter", format!("filesync_bytes_sent_total {}", c.bytes_sent));
        m("applied_total", "Remote changes written to disk.", "counter", format!("filesync_applied_total {}", c.applied));
        m("local_changes_total", "Local changes announced to peers.", "counter", format!("filesync_local_changes_total {}", c.local_changes));
        m("errors_total", "Errors logged.", "counter", format!("filesync_errors_total {}", c.errors));
        m("versions", "Versions kept on this node.", "gauge", format!("filesync_versions {}", self.versions.count));
        m("versions_bytes", "Disk space the kept versions use.", "gauge", format!("filesync_versions_bytes {}", self.versions.bytes));
        m("versions_keeping", "Whether new versions are kept (0: disabled or stopped for free space).", "gauge", format!("filesync_versions_keeping {}", u8::from(self.versions.keeping)));
        let held: String = self.mass_delete_holds.iter().map(|h| format!("filesync_held_deletes{{from=\"{}\",state=\"{}\"}} {}\n", h.from, h.state, h.entries)).collect();
        m("held_deletes", "Peers' deletions waiting here (held for an operator, or settling).", "gauge", held.trim_end().to_owned());
        let mut up = String::new();
        let mut lag = String::new();
        for (name, p) in self.peers.iter().filter(|(_, p)| !p.removed) {
            let _ = writeln!(up, "filesync_peer_connected{{peer=\"{name}\"}} {}", u8::from(p.connected));
            if let Some(l) = p.lag_ms {
                let _ = writeln!(lag, "filesync_replication_lag_seconds{{peer=\"{name}\"}} {}", l as f64 / 1000.0);
            }
        }
        m("peer_connected", "Whether the link to a peer is up.", "gauge", up.trim_end().to_owned());
        m("replication_lag_seconds", "Time from a change's commit on the peer to its write here.", "gauge", lag.trim_end().to_owned());
        s
    }
}
