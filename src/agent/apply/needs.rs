//! The needs queue: items accepted from peers that are not written yet. Content is fetched
//! (bounded parallelism, every connected peer tried), failures back off to a minute, and
//! every item, when its turn comes, goes through the same pre-scan, decision and
//! `apply_entry` as a page item, so a late result never overwrites a newer version and a
//! loser is kept as a conflict copy, not dropped.

use std::time::Instant;

use super::decide::{Decision, decide};
use super::entry::{Content, Done};
use super::page::Writes;
use crate::agent::index::{Batch, Need};
use crate::agent::{Agent, Event, transfer};
use crate::protocol::{EntryKind, RelPath};

impl Agent {
    pub(in crate::agent) fn start_due_fetches(&mut self) {
        let now = Instant::now();
        let due: Vec<RelPath> = self.retry_at.iter().filter(|(_, t)| **t <= now).map(|(p, _)| p.clone()).collect();
        for path in due {
            if self.fetching.contains(&path) {
                // Looked at again when the fetch in flight reports back.
                self.retry_at.remove(&path);
                continue;
            }
            let Ok(Some(need)) = self.index.get_need(&path) else {
                self.retry_at.remove(&path);
                continue;
            };
            // Content from the other environment crosses a WAN: many more requests in
            // flight (one HTTP/2 connection) keep its round trips from adding up.
            let sem = if need.source.starts_with('@') { &self.link_fetch_sem } else { &self.fetch_sem };
            let Ok(permit) = sem.clone().try_acquire_owned() else { break };
            self.retry_at.remove(&path);
            if need.copy_of.is_some() {
                if self.root.stat(&path).ok().flatten().is_some() {
                    // The copy is there already (the same version, kept by an earlier try).
                    let _ = self.index.remove_need(&path);
                    if let Err(e) = self.supersede_kept_loser(&need) {
                        self.error(format!("{e:#}"));
                    }
                    continue;
                }
            } else {
                let local = self.index.get(&path).ok().flatten();
                let decision = if need.force { None } else { Some(decide(local.as_ref().map(|s| &s.entry), &need.entry, self.index.node_id)) };
                if decision == Some(Decision::Ignore) {
                    tracing::debug!(path = %path, "need already satisfied");
                    let _ = self.index.remove_need(&path);
                    continue;
                }
                // Directories, links, deletions, empty files, and versions whose content is
                // not needed (same content here, or ours wins without a copy) need no
                // transfer: decided and applied at once.
                // A forced need (a receive-only node's revert) is fetched whatever the index says:
                // the disk holds a local modification the index does not describe.
                let needs_content = need.entry.kind == EntryKind::File
                    && !need.entry.deleted
                    && need.entry.size > 0
                    && (need.force
                        || (!local.as_ref().is_some_and(|l| !l.entry.deleted && l.entry.hash == need.entry.hash) && !matches!(decision, Some(Decision::KeepLocal { loser_copy: None, .. }))));
                if !needs_content {
                    drop(permit);
                    if let Err(e) = self.apply_need(need, Content::None) {
                        self.error(format!("{e:#}"));
                    }
                    continue;
                }
            }
            self.fetching.insert(path.clone());
            // The node that announced it first (the other environment's node for `@addr`
            // sources, through the link client), then every local peer.
            let mut sources: Vec<(reqwest::Client, String, bool)> = Vec::new();
            if let Some(addr) = need.source.strip_prefix('@')
                && let Some(c) = self.link.as_ref().and_then(|l| l.client())
            {
                sources.push((c, addr.to_owned(), true));
            }
            if let Some(l) = self.links.get(&need.source) {
                sources.push((self.client.clone(), l.address.clone(), false));
            }
            sources.extend(self.links.values().filter(|l| l.name != need.source).map(|l| (self.client.clone(), l.address.clone(), false)));
            let link = self.link.clone();
            let base = self
                .index
                .get(&path)
                .ok()
                .flatten()
                .filter(|s| need.copy_of.is_none() && !s.entry.deleted && s.entry.kind == EntryKind::File && s.entry.size >= transfer::DELTA_MIN && need.entry.size >= transfer::DELTA_MIN)
                .map(|s| s.entry.path);
            let mut wanted = need.entry.clone();
            if let Some(orig) = &need.copy_of {
                wanted.path = orig.clone();
            }
            let dest = need.entry.path.clone();
            let root = self.root.clone();
            let tx = self.events.clone();
            tokio::spawn(async move {
                let mut result = Err(anyhow::anyhow!("no peer is connected to fetch it from"));
                for (client, a, remote) in &sources {
                    result = transfer::fetch(client, a, &root, &wanted, &dest, base.clone()).await;
                    match &result {
                        Ok(f) => {
                            if *remote && let Some(l) = &link {
                                l.count_in(f.wire_bytes);
                            }
                            break;
                        }
                        // Our own disk failing: another peer will not help.
                        Err(e) if e.downcast_ref::<crate::agent::root::RootError>().is_some() => break,
                        Err(_) => {}
                    }
                }
                drop(permit);
                let _ = tx.send(Event::Fetched { need, result }).await;
            });
        }
    }

    pub(in crate::agent) fn on_fetched(&mut self, mut need: Need, result: anyhow::Result<transfer::Fetched>) -> anyhow::Result<()> {
        let path = need.entry.path.clone();
        self.fetching.remove(&path);
        // A newer version may have replaced this need while the fetch was in flight: then
        // this result is stale (its temp file goes with it) and the newer need decides.
        let current = self.index.get_need(&path)?.is_some_and(|n| n.entry.version == need.entry.version && n.entry.hash == need.entry.hash);
        if !current {
            self.retry_at.entry(path).or_insert_with(Instant::now);
            return Ok(());
        }
        let f = match result {
            Ok(f) => f,
            Err(e) if need.copy_of.is_some() && format!("{e:#}").contains(crate::protocol::wire::CONTENT_CHANGED) => {
                // No peer holds that losing version under its original name any more: a node
                // that held it kept it as a conflict copy and announces it, or its own node
                // replaced it. Our version never claimed to supersede it (see
                // `supersede_kept_loser`), so no node replaces it without keeping a copy.
                tracing::debug!(path = %path, "conflict copy left to the node that kept the losing version");
                self.index.remove_need(&path)?;
                return Ok(());
            }
            Err(e) => {
                need.attempts += 1;
                let msg = format!("{path}: {e:#}");
                if need.attempts == 1 || need.attempts.is_multiple_of(10) {
                    self.warn(format!("fetch failed (attempt {}): {msg}", need.attempts));
                }
                need.last_error = Some(msg);
                self.index.put_need(&need)?;
                self.schedule(&need);
                return Ok(());
            }
        };
        let (wire, delta) = (f.wire_bytes, f.delta);
        if need.copy_of.is_some() {
            self.index.remove_need(&path)?;
            let r = need.entry.clone();
            if self.install_copy(&path, f.tmp, &r) {
                self.supersede_kept_loser(&need)?;
            }
            self.log.normal(format!("saved conflict copy {path} ({wire} bytes from {})", need.source));
            return Ok(());
        }
        let source = need.source.clone();
        let applied = self.apply_need(need, Content::Temp(f.tmp))?;
        if applied {
            let mut st = self.status.lock().expect("BUG: poisoned");
            st.counters.bytes_received += wire;
            if delta {
                st.counters.delta_transfers += 1;
            }
            drop(st);
            self.log.normal(format!("received {path} from {source} ({wire} bytes on the wire{})", if delta { ", delta" } else { "" }));
        }
        Ok(())
    }

    /// The losing version of a conflict this node won is now safe here as the conflict copy
    /// `need` fetched: our version at the original path is recorded as superseding it
    /// (merged and advanced), so nodes that still hold the losing content under that name
    /// replace it without another copy. Nothing is recorded if the path changed meanwhile
    /// so that the conflict no longer goes our way.
    pub(in crate::agent) fn supersede_kept_loser(&mut self, need: &Need) -> anyhow::Result<()> {
        let Some(orig) = &need.copy_of else { return Ok(()) };
        let Some(local) = self.index.get(orig)? else { return Ok(()) };
        let mut remote = need.entry.clone();
        remote.path = orig.clone();
        if let Decision::KeepLocal { version, .. } = decide(Some(&local.entry), &remote, self.index.node_id) {
            let mut e = local.entry.clone();
            e.version = version;
            self.index.apply(Batch { commits: vec![(e, local.ino)], ..Batch::default() })?;
        }
        Ok(())
    }

    /// Decides a need again against the current local state and carries it out; returns
    /// whether its version was recorded.
    pub(in crate::agent) fn apply_need(&mut self, need: Need, content: Content) -> anyhow::Result<bool> {
        let path = need.entry.path.clone();
        // A revert replaces the local modification on purpose: no pre-scan of it.
        if !need.force {
            self.prescan(std::slice::from_ref(&path))?;
        }
        let local = self.index.get(&path)?;
        let disk = self.root.stat(&path).ok().flatten();
        let writing = self.batcher.is_writing(&path)
            || (!need.force && !self.disk_matches(local.as_ref(), disk.as_ref()))
            || (disk.as_ref().is_some_and(|d| d.kind == EntryKind::File) && self.writers_if(true).contains(&disk.as_ref().map_or(0, |d| d.ino)));
        if writing {
            let mut need = need;
            need.attempts = need.attempts.max(1);
            need.last_error = Some(format!("{path}: a local write is in progress; applying after it completes"));
            self.index.put_need(&need)?;
            self.schedule(&need);
            return Ok(false);
        }
        if self.s.receive_only && !need.force && self.local_mods.contains(&path) {
            return Ok(false);
        }
        // The need is the journal of this item: durable before its content reaches the name.
        self.index.flush()?;
        let (source, force, remote) = (need.source.clone(), need.force, need.entry.clone());
        let done = self.apply_entry(&source, need.entry, local.as_ref(), disk, content, force)?;
        let mut batch = Batch { remove_needs: vec![path.clone()], ..Batch::default() };
        let mut writes = Writes::default();
        for d in done {
            match d {
                Done::Record(e, ino) => batch.commits.push((e, ino)),
                Done::Queue(n) => batch.put_needs.push(n),
                Done::Write(p, e) => writes.push(p, e, remote.clone()),
            }
        }
        self.finish_writes(&source, writes, &mut batch);
        let recorded = batch.commits.iter().any(|(e, _)| e.path == path);
        let queued = batch.put_needs.clone();
        self.record_received(&source, &batch.commits, false);
        self.flush_versions();
        self.index.apply(batch)?;
        for n in &queued {
            self.schedule(n);
        }
        if recorded {
            self.status.lock().expect("BUG: poisoned").counters.applied += 1;
            if force {
                self.local_mods.remove(&path);
            }
        }
        Ok(recorded)
    }
}
