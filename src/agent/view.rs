//! What the agent shows the outside about itself: the status behind `lsyncd.status`,
//! `/v1/status` and `/metrics`, refreshed from the index and the queues a second after
//! something happened, and written to `lsyncd.status` only when what it says changed (an
//! idle agent touches no file); peers joining and leaving it; and the index opened for the
//! folder the agent syncs.

use anyhow::Context;

use super::config::Settings;
use super::index::Index;
use super::lsyncd_log::LsyncdLog;
use super::status::Status;
use super::{Agent, peers, watch};

/// Opens the index; one built for another folder (the root or `folder_id` changed, e.g. the
/// sync path was changed from `uploads` to `ROOT`) is discarded and rebuilt by scanning, so
/// the old folder's files are never announced as deleted from the new one.
pub(super) fn open_index(s: &Settings, log: &LsyncdLog) -> anyhow::Result<Index> {
    let mut h = blake3::Hasher::new();
    h.update(s.root.as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(s.folder_id.as_bytes());
    let key = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("BUG: 8 bytes")) >> 1;
    let index = Index::open(&s.state_dir)?;
    match index.get_meta("folder")? {
        Some(k) if k == key => Ok(index),
        Some(_) => {
            log.warn(format!(
                "the sync folder changed since the index was built (now {} {:?}): the index is rebuilt by scanning; no file is deleted or announced as deleted",
                s.root.display(),
                s.folder_id
            ));
            drop(index);
            crate::private_fs::PrivateDir::state(&s.state_dir)?.remove("index.redb").context("cannot remove the old index")?;
            let index = Index::open(&s.state_dir)?;
            index.set_meta("folder", key)?;
            Ok(index)
        }
        None => {
            index.set_meta("folder", key)?;
            Ok(index)
        }
    }
}

impl Agent {
    pub(super) fn add_peer(&mut self, name: String, address: String) {
        let link = peers::spawn(self.peer_ctx.clone(), name.clone(), address.clone(), &self.shutdown);
        // What was processed before a restart counts from the start: a peer with nothing new
        // sends no page, and the status would say 0 of its changes processed until it did.
        let processed = self.index.progress(&name).map(|p| p.seq).unwrap_or(0);
        let mut st = self.status.lock().expect("BUG: poisoned");
        let p = st.peers.entry(name.clone()).or_default();
        p.their_seq_processed = p.their_seq_processed.max(processed);
        p.address = address;
        p.removed = false;
        drop(st);
        self.links.insert(name, link);
    }

    pub(super) fn remove_peer(&mut self, name: &str) {
        if let Some(l) = self.links.remove(name) {
            l.cancel.cancel();
        }
        if let Some(p) = self.status.lock().expect("BUG: poisoned").peers.get_mut(name) {
            p.removed = true;
            p.connected = false;
        }
    }

    pub(super) fn refresh_status(&mut self) {
        let seq = self.index.last_seq();
        let summary = if self.summary_seq != Some(seq) {
            self.summary_seq = Some(seq);
            self.index.summary().ok()
        } else {
            None
        };
        let needs = self.index.needs().unwrap_or_default();
        self.refresh_holds(&needs);
        let mut st = self.status.lock().expect("BUG: poisoned");
        st.last_seq = seq;
        st.pending_local = self.batcher.len() as u64;
        st.writing = self.batcher.writing() as u64;
        st.pending_remote = needs.len() as u64;
        let backlog = needs.len() as u64;
        self.peer_ctx.pending.send_if_modified(|v| std::mem::replace(v, backlog) != backlog);
        st.pending_errors = needs.iter().filter_map(|n| n.last_error.clone()).take(5).collect();
        st.held_deletes = self.held_deletes as u64;
        st.unsyncable = self.unsyncable.iter().take(20).cloned().collect();
        st.unsyncable_count = self.unsyncable.len() as u64;
        st.local_modifications = self.local_mods.iter().map(|p| p.to_string()).collect();
        if let Some(s) = summary {
            st.files = s.files;
            st.dirs = s.dirs;
            st.symlinks = s.symlinks;
            st.bytes = s.bytes;
            st.tree_digest = format!("{:032x}", s.digest);
            st.watches = watch::watch_count() as u64;
        }
        for (peer, lag) in &self.lag {
            if let Some(p) = st.peers.get_mut(peer) {
                p.lag_ms = Some(*lag);
            }
        }
        // Written only when what it says changed: an idle agent touches no file.
        let body = st.render_lsyncd_status();
        drop(st);
        if self.status_written.as_deref() != Some(body.as_str()) {
            match Status::write_lsyncd_status(&self.s.log_dir, &body) {
                Ok(()) => self.status_written = Some(body),
                Err(e) => tracing::warn!(error = %e, "cannot write lsyncd.status"),
            }
        }
    }
}
