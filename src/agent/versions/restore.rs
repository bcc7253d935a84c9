//! Restoring versions: each chosen version (`select`) is written back through `SyncRoot`
//! (temp file, fsync, atomic install, its mtime and mode as they were) and scanned at once,
//! so the restore is an ordinary local change of this node: it replicates to every node and
//! follows the conflict rules there.
//!
//! Nothing is overwritten silently. A version goes back under its own name when nothing is
//! there, or when what is there is exactly the content that last displaced a version of
//! that path here (so this node can give it back too: it is displaced by the restore and
//! kept as a version). Anything else at the path — a file recreated after a deletion, a
//! change made since, a directory — stays, and the version is written beside it as
//! `name.restored-YYYYMMDD-HHMMSS.ext` (unless the request says `replace`, which still keeps
//! the current content as a version). A receive-only node refuses: its changes are never
//! sent.

use std::io::{Read, Write};

use super::select::{self, Pick};
use crate::agent::Agent;
use crate::agent::root::{Cause, Expect, RootError};
use crate::agent::scan::Target;
use crate::protocol::versions::{Cause as CauseKind, RestoreRequest, RestoreResponse, Restored, Skipped};
use crate::protocol::{EntryKind, RelPath};

/// Where one version goes.
struct Plan {
    to: RelPath,
    expect: Expect,
    replaced: bool,
    /// The current content's hash, when it is replaced (for its own version record).
    current: Option<[u8; 32]>,
}

impl Agent {
    pub(in crate::agent) fn restore(&mut self, req: RestoreRequest) -> Result<RestoreResponse, String> {
        if self.s.receive_only {
            return Err("this node is receive-only: a restore here would never reach the other nodes; restore on a send-receive node".into());
        }
        let Some(store) = self.versions.store.clone() else {
            return Err(format!("this node keeps no versions ({})", self.versions.summary().stopped.unwrap_or_default()));
        };
        let all = store.all().map_err(|e| format!("cannot read the versions records: {e:#}"))?;
        let picks = select::select(&all, &req)?;
        let mut resp = RestoreResponse { dry_run: req.dry_run, ..RestoreResponse::default() };
        let mut targets = Vec::new();
        for p in &picks {
            let Some(path) = Agent::version_path(p.rec) else { continue };
            let plan = match self.plan(&path, p, req.replace) {
                Ok(Some(plan)) => plan,
                Ok(None) => {
                    resp.skipped.push(Skipped { path: path.to_string(), reason: "already holds this content".into() });
                    continue;
                }
                Err(why) => {
                    resp.skipped.push(Skipped { path: path.to_string(), reason: why });
                    continue;
                }
            };
            if !req.dry_run {
                if let Err(e) = self.write_version(p, &path, &plan) {
                    resp.skipped.push(Skipped { path: path.to_string(), reason: e });
                    continue;
                }
                targets.push(Target::Path { path: plan.to.clone(), recursive: false });
            }
            resp.restored.push(Restored { id: p.id, path: path.to_string(), written_to: plan.to.to_string(), replaced: plan.replaced });
        }
        if !req.dry_run && !targets.is_empty() {
            // The replaced contents are versions now, recorded before the scan records the restore.
            self.flush_versions();
            if let Err(e) = self.local_batch(targets, "restore") {
                self.error(format!("restore: scanning the restored files failed: {e:#}; they are sent with the next scan"));
            }
        }
        let beside = resp.restored.iter().filter(|r| r.written_to != r.path).count();
        resp.message = format!(
            "{}{} file(s) restored{}, {} skipped{}",
            if req.dry_run { "dry run: " } else { "" },
            resp.restored.len(),
            if beside > 0 { format!(" ({beside} beside a newer file under a .restored- name)") } else { String::new() },
            resp.skipped.len(),
            if req.dry_run || resp.restored.is_empty() { "" } else { "; they replicate to every node as this node's changes" }
        );
        if !req.dry_run {
            self.log.normal(format!("restore of {:?} by an operator: {}", req.path, resp.message));
        }
        Ok(resp)
    }

    /// Where `p` goes: `None` when the path already holds exactly its content.
    fn plan(&mut self, path: &RelPath, p: &Pick, replace: bool) -> Result<Option<Plan>, String> {
        let disk = self.root.stat(path).map_err(|e| e.to_string())?;
        let Some(d) = disk else { return Ok(Some(Plan { to: path.clone(), expect: Expect::Absent, replaced: false, current: None })) };
        let local = self.index.get(path).map_err(|e| format!("{e:#}"))?;
        let current = local.as_ref().filter(|l| d.kind == EntryKind::File && self.disk_matches(Some(l), Some(&d))).map(|l| l.entry.hash);
        if current.is_some() && current == p.rec.hash {
            return Ok(None);
        }
        // The current content is what last displaced a version here: this node keeps it.
        let explained = current.is_some() && p.newest.cause != CauseKind::Deleted && p.newest.new_hash == current;
        if d.kind == EntryKind::File && (explained || replace) {
            return Ok(Some(Plan { to: path.clone(), expect: Expect::Is(d), replaced: true, current }));
        }
        for n in 1..100 {
            let to = select::beside(path, p.rec.kept_at_ns, n);
            let Some(there) = self.root.stat(&to).map_err(|e| e.to_string())? else {
                return Ok(Some(Plan { to, expect: Expect::Absent, replaced: false, current: None }));
            };
            let same = self.index.get(&to).map_err(|e| format!("{e:#}"))?.filter(|s| self.disk_matches(Some(s), Some(&there))).is_some_and(|s| Some(s.entry.hash) == p.rec.hash);
            if same {
                return Err(format!("already restored as {to}"));
            }
        }
        Err("no free name beside it".into())
    }

    /// Copies a version into place, checking its hash on the way.
    fn write_version(&mut self, p: &Pick, path: &RelPath, plan: &Plan) -> Result<(), String> {
        let mut src = self.root.open_version(p.id).map_err(|e| format!("version {} cannot be read: {e}", p.id))?;
        let mut tmp = self.root.create_temp(&plan.to).map_err(|e| e.to_string())?;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = src.read(&mut buf).map_err(|e| format!("version {} cannot be read: {e}", p.id))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.file().write_all(&buf[..n]).map_err(|e| RootError::io(&plan.to, e).to_string())?;
        }
        if p.rec.hash.is_some_and(|want| want != *h.finalize().as_bytes()) {
            return Err(format!("version {} no longer holds the content it was kept with; not restored", p.id));
        }
        tmp.finish(p.rec.mode, p.rec.mtime_ns).and_then(|_| tmp.sync()).map_err(|e| RootError::io(&plan.to, e).to_string())?;
        if plan.replaced {
            self.root.displacing(path, Cause { by: self.s.node_name.clone(), kind: CauseKind::Restored, hash: plan.current, new_hash: p.rec.hash });
        }
        match self.root.install(tmp, &plan.expect) {
            Ok(_) => Ok(()),
            Err(RootError::Changed { .. }) => Err("changed on this node while it was being restored; nothing was overwritten (try again)".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}
