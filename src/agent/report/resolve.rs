//! The operator's decisions on conflict copies, carried out on this node as ordinary local
//! changes through `agent::root` (the watcher sees them and the scanner announces them, so
//! every node follows by the normal rules):
//!
//! - keep the winner: the copy is deleted;
//! - restore the copy: the winner's file is taken off its name (kept in the displaced-files
//!   grace period like any replaced file) and the copy is renamed to that name;
//! - keep both: the copy is renamed to a name of the operator's choice.
//!
//! Each step names the state it expects (`root::Expect`), so a file changed meanwhile is
//! never deleted or overwritten: the action is refused with the reason instead.

use super::Report;
use crate::agent::root::{Expect, Removed, SyncRoot};
use crate::protocol::conflict::is_conflict_copy;
use crate::protocol::report::{ResolveAction, ResolveRequest, ResolveResult, conflict_original};
use crate::protocol::{EntryKind, RelPath};

fn refused(message: impl Into<String>) -> ResolveResult {
    ResolveResult { done: false, message: message.into() }
}

fn done(message: impl Into<String>) -> ResolveResult {
    ResolveResult { done: true, message: message.into() }
}

impl Report {
    /// Carries out one decision; the result says what was done or why not, in words.
    pub fn resolve(&self, root: &SyncRoot, req: &ResolveRequest) -> ResolveResult {
        let copy = match RelPath::parse(&req.copy) {
            Ok(p) if is_conflict_copy(p.file_name()) && !self.excludes.is_excluded(&p) => p,
            Ok(_) => return refused(format!("{} is not a conflict copy", req.copy)),
            Err(e) => return refused(format!("{:?}: {e}", req.copy)),
        };
        let meta = match root.stat(&copy) {
            Ok(Some(m)) if m.kind != EntryKind::Dir => m,
            Ok(Some(_)) => return refused(format!("{copy} is a directory, not a conflict copy")),
            Ok(None) => return refused(format!("{copy} is not on {} (already resolved?)", self.node)),
            Err(e) => return refused(e.to_string()),
        };
        match req.action {
            ResolveAction::KeepWinner => match root.remove(&copy, &Expect::Is(meta)) {
                Ok(_) => done(format!("deleted {copy} on {}; every node deletes it", self.node)),
                Err(e) => refused(format!("cannot delete {copy}: {e}")),
            },
            ResolveAction::RestoreCopy => {
                let Some(original) = conflict_original(copy.as_str()).and_then(|(o, _)| RelPath::parse(&o).ok()) else {
                    return refused(format!("the original name of {copy} cannot be told from it (a shortened long name); use keep both with the name you want"));
                };
                if self.excludes.is_excluded(&original) {
                    return refused(format!("{original} is excluded from sync"));
                }
                match root.stat(&original) {
                    Ok(Some(w)) if w.kind == EntryKind::Dir => return refused(format!("{original} is a directory now; use keep both with another name")),
                    Ok(Some(w)) => match root.remove(&original, &Expect::Is(w)) {
                        Ok(Removed::Gone) => {}
                        Ok(Removed::NotEmpty) => return refused(format!("{original} is a directory now")),
                        Err(e) => return refused(format!("{original} changed meanwhile, nothing was done ({e})")),
                    },
                    Ok(None) => {}
                    Err(e) => return refused(e.to_string()),
                }
                match root.rename(&copy, &original, &Expect::Is(meta)) {
                    Ok(_) => done(format!("restored {copy} as {original} on {}; every node gets it (the winner's content was replaced)", self.node)),
                    Err(e) => refused(format!("the winner {original} was removed but {copy} could not be renamed to it ({e}); the copy is still there")),
                }
            }
            ResolveAction::KeepBoth => {
                let Some(name) = req.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) else {
                    return refused("keep both needs the new name of the copy");
                };
                // A bare file name stays in the copy's directory.
                let target = if name.contains('/') { RelPath::parse(name) } else { copy.with_file_name(name) };
                let target = match target {
                    Ok(t) if self.excludes.is_excluded(&t) => return refused(format!("{t} would not be synced (excluded); choose another name")),
                    Ok(t) => t,
                    Err(e) => return refused(format!("{name:?}: {e}")),
                };
                match root.rename(&copy, &target, &Expect::Is(meta)) {
                    Ok(_) => done(format!("renamed {copy} to {target} on {}; every node follows", self.node)),
                    Err(e) => refused(format!("cannot rename {copy} to {target}: {e} (is the name taken?)")),
                }
            }
        }
    }
}
