//! Operator commands sent to a running agent (`filesync ctl`, SIGHUP, the control plane):
//! reload the peer list, delay and the safety settings, rescan, confirm an emptied root,
//! pause and resume, revert a receive-only node's local modifications, and the safety nets'
//! commands (restore versions, confirm or reject a held mass delete), whose JSON bodies are
//! `protocol::versions`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::config::Settings;
use super::index::Need;
use super::root::Expect;
use super::{AdminCmd, Agent, SafetyCmd};
use crate::protocol::{EntryKind, RelPath};

impl Agent {
    /// A restore or a decision on a held mass delete; `Ok` carries the JSON answer.
    pub(super) fn safety(&mut self, cmd: SafetyCmd) -> Result<String, String> {
        fn json(v: impl serde::Serialize) -> String {
            serde_json::to_string(&v).expect("BUG: answers always serialize")
        }
        match cmd {
            SafetyCmd::Restore(req) => self.restore(req).map(json),
            SafetyCmd::ConfirmHold(from) => self.confirm_hold(from.as_deref()).map(json),
            SafetyCmd::RejectHold(from) => self.reject_hold(from.as_deref()).map(json),
        }
    }

    pub(super) fn admin(&mut self, cmd: AdminCmd) -> String {
        match cmd {
            AdminCmd::Rescan => {
                self.batcher.add_root(Instant::now());
                "rescan queued".into()
            }
            AdminCmd::ConfirmEmpty => {
                self.allow_empty_root = true;
                self.batcher.add_root(Instant::now());
                self.log.warn("operator confirmed the empty sync root: deletes will be sent to peers");
                "confirmed: the empty root's deletes will be sent".into()
            }
            AdminCmd::Pause(p) => {
                self.paused.store(p, Ordering::SeqCst);
                self.status.lock().expect("BUG: poisoned").paused = p;
                self.log.normal(if p { "sync paused" } else { "sync resumed" });
                if !p {
                    self.index.wake_feeds();
                }
                if p { "paused".into() } else { "resumed".into() }
            }
            AdminCmd::Reload => match self.s.config_path.clone().map(|p| Settings::load(&p)) {
                None => "no config file to reload".into(),
                Some(Err(e)) => {
                    let msg = format!("reload failed, keeping the running configuration: {e:#}");
                    self.error(msg.clone());
                    msg
                }
                Some(Ok(new)) => {
                    let old: HashMap<String, String> = self.links.values().map(|l| (l.name.clone(), l.address.clone())).collect();
                    let wanted: HashMap<String, String> = new.peers.iter().map(|p| (p.name.clone(), p.address.to_string())).collect();
                    let mut added = Vec::new();
                    let mut removed = Vec::new();
                    for (n, a) in &old {
                        if wanted.get(n) != Some(a) {
                            self.remove_peer(n);
                            removed.push(n.clone());
                        }
                    }
                    for (n, a) in &wanted {
                        if old.get(n) != Some(a) {
                            self.add_peer(n.clone(), a.clone());
                            added.push(n.clone());
                        }
                    }
                    self.batcher.set_delay(new.delay);
                    self.s.delay = new.delay;
                    self.s.peers = new.peers;
                    // Retention and the hold threshold take effect now; switching versions
                    // on or off needs a restart.
                    self.versions.settings = new.versions.clone();
                    self.s.versions = new.versions;
                    self.s.mass_delete = new.mass_delete;
                    self.status.lock().expect("BUG: poisoned").delay_s = new.delay.as_secs();
                    let msg = format!("reloaded: peers added {added:?}, removed {removed:?}, delay {} s; pending changes kept", new.delay.as_secs());
                    self.log.normal(&msg);
                    msg
                }
            },
            AdminCmd::Revert => {
                if !self.s.receive_only {
                    return "revert applies to receive-only nodes only".into();
                }
                let mods: Vec<RelPath> = self.local_mods.iter().cloned().collect();
                let mut n = 0;
                for p in mods.iter().rev() {
                    let stored = self.index.get(p).ok().flatten().filter(|s| !s.entry.deleted);
                    let disk = self.root.stat(p).ok().flatten();
                    let r = match stored {
                        None => self.root.remove_tree(p).map(|_| ()).map_err(|e| e.to_string()),
                        Some(s) => match s.entry.kind {
                            EntryKind::Dir => self.root.mkdir(p, s.entry.mode).map(|_| ()).map_err(|e| e.to_string()),
                            EntryKind::Symlink => self.root.symlink(p, &s.entry.target, s.entry.mtime_ns, &Expect::from_disk(disk)).map(|_| ()).map_err(|e| e.to_string()),
                            EntryKind::File => {
                                let need = Need { entry: s.entry.clone(), source: self.links.keys().next().cloned().unwrap_or_default(), attempts: 0, last_error: None, force: true, copy_of: None };
                                let _ = self.index.put_need(&need);
                                self.retry_at.insert(p.clone(), Instant::now());
                                Ok(())
                            }
                        },
                    };
                    match r {
                        Ok(()) => n += 1,
                        Err(e) => self.error(format!("revert {p}: {e}")),
                    }
                }
                for p in &mods {
                    if self.index.get(p).ok().flatten().is_none_or(|s| s.entry.kind != EntryKind::File || s.entry.deleted) {
                        self.local_mods.remove(p);
                    }
                }
                let msg = format!("reverting {n} local modification(s) to the cluster's version");
                self.log.normal(&msg);
                msg
            }
        }
    }
}
