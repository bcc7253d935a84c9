//! The needs queue: content accepted from peers that must still be fetched. Starts fetches
//! (bounded), and when one reports back decides again against the current local state
//! before writing, so a late result never overwrites a newer version.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::apply::{Decision, decide};
use super::index::Need;
use super::scan::Target;
use super::watch::HintKind;
use super::{Agent, Event, transfer};
use crate::protocol::{EntryKind, RelPath};

impl Agent {
    pub(super) fn start_due_fetches(&mut self) {
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
            // Already have this version or a newer one (it arrived another way): done.
            let local = self.index.get(&path).ok().flatten();
            let done = match &need.copy_of {
                Some(_) => self.root.stat(&path).ok().flatten().is_some() || need.attempts >= 20,
                None => !need.force && matches!(decide(local.as_ref().map(|s| &s.entry), &need.entry, self.index.node_id), Decision::Ignore | Decision::KeepLocal { .. }),
            };
            if done {
                tracing::debug!(path = %path, "need already satisfied");
                if need.copy_of.is_some() && need.attempts >= 20 {
                    self.error(format!("giving up on conflict copy {path}: no peer still has that version ({})", need.last_error.clone().unwrap_or_default()));
                }
                let _ = self.index.remove_need(&path);
                continue;
            }
            // Small or empty content, directories, links and deletions need no transfer:
            // re-offer them to the applier as a one-entry page.
            if need.copy_of.is_none() && (need.entry.deleted || need.entry.kind != EntryKind::File || need.entry.size == 0) {
                drop(permit);
                let _ = self.index.remove_need(&path);
                let mut commits = Vec::new();
                let src = need.source.clone();
                if let Err(e) = self.apply_one(&src, need.entry, &mut HashMap::new(), &mut HashMap::new(), &mut commits).and_then(|_| self.index.commit(commits).map(|_| ())) {
                    self.error(format!("{e:#}"));
                }
                continue;
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
            let base = self.index.get(&path).ok().flatten().filter(|s| {
                !s.entry.deleted && s.entry.kind == EntryKind::File && s.entry.size >= transfer::DELTA_MIN && need.entry.size >= transfer::DELTA_MIN
            }).map(|s| s.entry.path);
            let base = if need.copy_of.is_some() { None } else { base };
            let mut wanted = need.entry.clone();
            if let Some(orig) = &need.copy_of {
                wanted.path = orig.clone();
            }
            let root = self.root.clone();
            let tx = self.events.clone();
            tokio::spawn(async move {
                let mut result = Err(anyhow::anyhow!("no peer is connected to fetch it from"));
                for (client, a, remote) in &sources {
                    result = transfer::fetch(client, a, &root, &wanted, base.clone()).await;
                    if let Ok(f) = &result {
                        if *remote && let Some(l) = &link {
                            l.count_in(f.wire_bytes);
                        }
                        break;
                    }
                }
                drop(permit);
                let _ = tx.send(Event::Fetched { need, result }).await;
            });
        }
    }

    pub(super) fn on_fetched(&mut self, mut need: Need, result: anyhow::Result<transfer::Fetched>) -> anyhow::Result<()> {
        let path = need.entry.path.clone();
        self.fetching.remove(&path);
        // A newer version may have replaced this need while the fetch was in flight: then
        // this result is stale and the newer need (already queued) decides.
        let current = self.index.get_need(&path)?.is_some_and(|n| n.entry.version == need.entry.version && n.entry.hash == need.entry.hash);
        if !current {
            if let Ok(f) = &result {
                let _ = std::fs::remove_file(&f.tmp);
            }
            self.retry_at.entry(path).or_insert_with(Instant::now);
            return Ok(());
        }
        let f = match result {
            Ok(f) => f,
            Err(e) => {
                need.attempts += 1;
                let msg = format!("{path}: {e:#}");
                if need.attempts == 1 || need.attempts.is_multiple_of(10) {
                    self.warn(format!("fetch failed (attempt {}): {msg}", need.attempts));
                }
                need.last_error = Some(msg);
                self.index.put_need(&need)?;
                let backoff = Duration::from_millis(500 * 2u64.pow(need.attempts.min(7)));
                self.retry_at.insert(path, Instant::now() + backoff.min(Duration::from_secs(60)));
                return Ok(());
            }
        };
        let discard = |f: transfer::Fetched| {
            let _ = std::fs::remove_file(&f.tmp);
        };
        if need.copy_of.is_some() {
            self.index.remove_need(&path)?;
            if self.root.stat(&path).ok().flatten().is_some() {
                discard(f);
                return Ok(());
            }
            let tmp = f.tmp.clone();
            match self.root.commit_temp(f.file, &tmp, &path, need.entry.mode, need.entry.mtime_ns) {
                Ok(_) => {
                    self.log.normal(format!("saved conflict copy {path} ({} bytes from {})", f.wire_bytes, need.source));
                    self.batcher.add(path, HintKind::Tree, Instant::now());
                }
                Err(e) => {
                    need.attempts += 1;
                    need.last_error = Some(e.to_string());
                    self.index.put_need(&need)?;
                    self.retry_at.insert(path, Instant::now() + Duration::from_secs(5));
                }
            }
            return Ok(());
        }
        if self.batcher.is_writing(&path) {
            discard(f);
            need.last_error = Some(format!("{path}: a local write is in progress"));
            self.index.put_need(&need)?;
            self.retry_at.insert(path, Instant::now() + Duration::from_secs(2));
            return Ok(());
        }
        // Re-check against the disk: a local change may have landed meanwhile.
        let mut local = self.index.get(&path)?;
        let disk = self.root.stat(&path).ok().flatten();
        if !self.disk_matches(local.as_ref(), disk.as_ref()) && !need.force {
            self.local_batch(vec![Target::Path { path: path.clone(), recursive: false }], "before writing fetched content")?;
            local = self.index.get(&path)?;
        }
        let decision = if need.force {
            Decision::Apply { version: need.entry.version.clone(), conflict_copy: None, conflict: false }
        } else {
            decide(local.as_ref().map(|s| &s.entry), &need.entry, self.index.node_id)
        };
        let r = need.entry.clone();
        match decision {
            Decision::Ignore | Decision::Merge { .. } | Decision::KeepLocal { .. } => {
                discard(f);
                self.index.remove_need(&path)?;
                if let Decision::Merge { .. } | Decision::KeepLocal { .. } = decision {
                    let mut commits = Vec::new();
                    self.apply_one(&need.source, r, &mut HashMap::new(), &mut HashMap::new(), &mut commits)?;
                    self.index.commit(commits)?;
                }
            }
            Decision::Apply { version, conflict_copy, conflict } => {
                if conflict {
                    self.note_conflict(&r, conflict_copy.as_ref(), &need.source);
                }
                let local_live = local.as_ref().filter(|s| !s.entry.deleted).cloned();
                let wire = f.wire_bytes;
                let delta = f.delta;
                let res = self.prepare_slot(&path, r.kind, local_live.as_ref(), conflict_copy.as_ref()).and_then(|_| {
                    let tmp = f.tmp.clone();
                    self.root.commit_temp(f.file, &tmp, &path, r.mode, r.mtime_ns)
                });
                match res {
                    Ok(ino) => {
                        let mut e = r;
                        e.version = version;
                        self.index.commit(vec![(e, ino)])?;
                        self.index.remove_need(&path)?;
                        let mut st = self.status.lock().expect("BUG: poisoned");
                        st.counters.applied += 1;
                        st.counters.bytes_received += wire;
                        if delta {
                            st.counters.delta_transfers += 1;
                        }
                        drop(st);
                        self.log.normal(format!("received {path} from {} ({} bytes on the wire{})", need.source, wire, if delta { ", delta" } else { "" }));
                        if need.force {
                            self.local_mods.remove(&path);
                        }
                    }
                    Err(e) => {
                        need.attempts += 1;
                        need.last_error = Some(e.to_string());
                        self.error(format!("cannot write {path}: {e}; will retry"));
                        self.index.put_need(&need)?;
                        self.retry_at.insert(path, Instant::now() + Duration::from_secs(5));
                    }
                }
            }
        }
        Ok(())
    }

}
