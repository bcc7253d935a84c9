//! `filesync inspect`: what a node's index knows about one path (versions, origin,
//! tombstone, pending fetch, journal) and its progress through each peer. Served by the
//! running agent on `GET /v1/inspect` (its index is locked while it runs), or read from a
//! stopped agent's state dir.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::index::Index;
use crate::protocol::{RelPath, VersionVector};

fn vv(v: &VersionVector) -> BTreeMap<String, u64> {
    v.counters().iter().map(|(n, c)| (format!("{n:016x}"), *c)).collect()
}

/// The report for `path`.
pub fn report(index: &Index, path: &RelPath) -> anyhow::Result<Value> {
    let entry = index.get(path)?;
    let need = index.get_need(path)?;
    let journal = index.journal()?.into_iter().find(|e| &e.path == path);
    Ok(json!({
        "node_id": format!("{:016x}", index.node_id),
        "index_id": index.index_id,
        "last_seq": index.last_seq(),
        "peer_progress": index.all_progress()?.into_iter().map(|(p, g)| (p, json!({"index_id": g.index_id, "seq": g.seq}))).collect::<BTreeMap<_, _>>(),
        "entry": entry.map(|s| json!({
            "seq": s.seq, "ino": s.ino, "deleted": s.entry.deleted, "kind": format!("{:?}", s.entry.kind),
            "size": s.entry.size, "mode": format!("{:o}", s.entry.mode), "mtime_ns": s.entry.mtime_ns, "hash": hex::encode(s.entry.hash),
            "version": vv(&s.entry.version), "origin": vv(&s.entry.origin), "modified_by": s.entry.modified_by_name,
        })),
        "pending_fetch": need.map(|n| json!({"source": n.source, "attempts": n.attempts, "last_error": n.last_error, "version": vv(&n.entry.version), "conflict_copy_of": n.copy_of.map(|p| p.to_string())})),
        "journal": journal.map(|e| json!({"version": vv(&e.version), "deleted": e.deleted})),
    }))
}
