//! The safety nets from the control plane (issue 15): the versions every agent keeps of
//! what peers' changes replaced or deleted, merged across the environment (the same
//! content kept by several nodes is one row naming each node and its id there), restores
//! carried out by one agent that keeps the version (an ordinary local change there, which
//! every node follows). Nothing here writes a file: the agents do
//! (`agent::versions::restore`), by their own rules. The held mass deletes are `holds`.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use super::FieldErrors;
use super::status::ASK_TIMEOUT;
use crate::control::AppState;
use crate::control::agent_api::{AgentApi, RestoreRequest, RestoreResponse, VersionList, VersionQuery, VersionsSummary};
use crate::control::db::{self, NodeRow};
use crate::control::state::Health;
use crate::protocol::versions::{Cause, MAX_LIST};

/// A restore writes and scans files; a large folder takes longer than a question.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);
/// Versions of one path with the same content, by the same node and cause, kept within
/// this many seconds of each other on different nodes are one row.
const SAME_EVENT_SECS: i64 = 120;

/// One node's id of a version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Holder {
    pub node: String,
    pub id: u64,
}

/// One kept version as the environment sees it: the nodes that keep it and their ids.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct VersionRow {
    pub path: String,
    /// When it was taken off its name (the earliest of its holders).
    pub kept_at: i64,
    pub size: u64,
    pub mtime_ns: i64,
    pub hash: Option<String>,
    /// The node whose change replaced or deleted it.
    pub by: String,
    pub cause: Cause,
    pub settled: bool,
    pub holders: Vec<Holder>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct NodeVersions {
    pub node: String,
    pub summary: VersionsSummary,
    pub matched: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VersionsView {
    /// Newest first.
    pub versions: Vec<VersionRow>,
    /// Each node asked, with its totals.
    pub nodes: Vec<NodeVersions>,
    pub unreachable: Vec<String>,
}

/// Merges the nodes' listings: the same content of the same path, kept for the same
/// cause of the same node's change within [`SAME_EVENT_SECS`] of each other, is one row.
pub fn merge(answers: Vec<(String, VersionList)>) -> Vec<VersionRow> {
    let mut all: Vec<(String, crate::protocol::versions::VersionInfo)> = answers.into_iter().flat_map(|(node, l)| l.versions.into_iter().map(move |v| (node.clone(), v))).collect();
    all.sort_by(|(an, a), (bn, b)| (&a.path, &a.hash, &a.by, a.cause as u8, a.kept_at, an).cmp(&(&b.path, &b.hash, &b.by, b.cause as u8, b.kept_at, bn)));
    let mut rows: Vec<(VersionRow, i64)> = Vec::new();
    for (node, v) in all {
        if let Some((last, newest)) = rows.last_mut() {
            let same = last.path == v.path
                && last.hash == v.hash
                && last.hash.is_some()
                && last.by == v.by
                && last.cause == v.cause
                && v.kept_at - *newest <= SAME_EVENT_SECS
                && !last.holders.iter().any(|h| h.node == node);
            if same {
                last.holders.push(Holder { node, id: v.id });
                last.settled &= v.settled;
                *newest = v.kept_at;
                continue;
            }
        }
        rows.push((
            VersionRow { holders: vec![Holder { node, id: v.id }], path: v.path, kept_at: v.kept_at, size: v.size, mtime_ns: v.mtime_ns, hash: v.hash, by: v.by, cause: v.cause, settled: v.settled },
            v.kept_at,
        ));
    }
    // Holders in name order, whichever node kept its copy first (what the page lists).
    let mut rows: Vec<VersionRow> = rows
        .into_iter()
        .map(|(mut r, _)| {
            r.holders.sort_by(|a, b| a.node.cmp(&b.node));
            r
        })
        .collect();
    rows.sort_by(|a, b| b.kept_at.cmp(&a.kept_at).then(a.path.cmp(&b.path)));
    rows
}

/// The nodes worth asking: an agent is installed, or one answered lately.
async fn agents(st: &AppState, env_id: Uuid) -> anyhow::Result<Option<(db::EnvironmentRow, Vec<NodeRow>)>> {
    let Some(env) = db::environments::get(&st.pool, env_id).await? else {
        return Ok(None);
    };
    let layer = db::environments::cp_layer(&st.pool, env_id).await?;
    let nodes = db::nodes::list(&st.pool, layer).await?.into_iter().filter(|n| !n.agent_state.leaving() && (n.agent_state.has_agent() || n.health == Health::Up)).collect();
    Ok(Some((env, nodes)))
}

/// Asks every reachable agent for its versions matching `q`; None when there is no such
/// environment.
pub async fn list(st: &AppState, env_id: Uuid, q: &VersionQuery) -> anyhow::Result<Option<VersionsView>> {
    let Some((env, nodes)) = agents(st, env_id).await? else {
        return Ok(None);
    };
    let mut out = VersionsView::default();
    if nodes.is_empty() {
        return Ok(Some(out));
    }
    let client = crate::control::jobs::install::agent_client(st, &env)?;
    let answers = futures::future::join_all(nodes.iter().map(|n| {
        let api = AgentApi::new(client.clone(), &n.address, n.agent_port);
        async move { api.versions(q, ASK_TIMEOUT).await }
    }))
    .await;
    let mut lists = Vec::new();
    for (n, a) in nodes.iter().zip(answers) {
        match a {
            Ok(l) => {
                out.nodes.push(NodeVersions { node: n.name.clone(), summary: l.summary.clone(), matched: l.matched, truncated: l.truncated });
                lists.push((n.name.clone(), l));
            }
            Err(e) => out.unreachable.push(format!("{}: {e}", n.name)),
        }
    }
    out.versions = merge(lists);
    Ok(Some(out))
}

/// What a restore did, and on which node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreDone {
    pub node: String,
    #[serde(flatten)]
    pub response: RestoreResponse,
}

/// Carries out `req` on one node: `node` if named (an `id` names a version on one node, so
/// it needs the node), else the reachable node whose dry run restores the most. Err is a
/// sentence for the operator; None when there is no such environment.
pub async fn restore(st: &AppState, env_id: Uuid, req: &RestoreRequest, node: Option<&str>, by: &str) -> anyhow::Result<Option<Result<RestoreDone, String>>> {
    let Some((env, nodes)) = agents(st, env_id).await? else {
        return Ok(None);
    };
    let client = crate::control::jobs::install::agent_client(st, &env)?;
    let api = |n: &NodeRow| AgentApi::new(client.clone(), &n.address, n.agent_port);
    let chosen: &NodeRow = match node.filter(|n| !n.is_empty()) {
        Some(name) => match nodes.iter().find(|n| n.name == name) {
            Some(n) => n,
            None => {
                return Ok(Some(Err(format!("{name} is not a node of this environment with an agent"))));
            }
        },
        None if req.id.is_some() => {
            return Ok(Some(Err("a version id belongs to one node: name the node that keeps it".into())));
        }
        None => {
            let dry = RestoreRequest { dry_run: true, ..req.clone() };
            let answers = futures::future::join_all(nodes.iter().map(|n| {
                let a = api(n);
                let dry = dry.clone();
                async move { a.restore(&dry, ASK_TIMEOUT).await }
            }))
            .await;
            let best = nodes.iter().zip(&answers).filter_map(|(n, a)| a.as_ref().ok().map(|r| (n, r.restored.len()))).max_by_key(|(n, count)| (*count, std::cmp::Reverse(n.name.clone())));
            match best {
                Some((n, _)) => n,
                None => {
                    let why: Vec<String> = nodes.iter().zip(answers).filter_map(|(n, a)| a.err().map(|e| format!("{}: {e}", n.name))).collect();
                    return Ok(Some(Err(if why.is_empty() { "no node has an agent to ask".into() } else { format!("no node could restore it: {}", why.join("; ")) })));
                }
            }
        }
    };
    let what = describe(req);
    match api(chosen).restore(req, RESTORE_TIMEOUT).await {
        Ok(response) => {
            if !response.dry_run {
                db::add_event(&st.pool, Some(env_id), &format!("restore of {what} by {by} on {}: {}", chosen.name, response.message)).await?;
            }
            Ok(Some(Ok(RestoreDone { node: chosen.name.clone(), response })))
        }
        Err(e) => {
            db::add_event(&st.pool, Some(env_id), &format!("restore of {what} by {by} on {} failed: {e}", chosen.name)).await?;
            Ok(Some(Err(format!("{}: {e}", chosen.name))))
        }
    }
}

/// "docs/a.txt (version 12)", "everything deleted under up/ between ... and ...".
pub fn describe(r: &RestoreRequest) -> String {
    let path = if r.path.is_empty() { "the whole folder".to_owned() } else { r.path.clone() };
    let when = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map(|t| crate::control::health::clock(t, time::OffsetDateTime::now_utc())).unwrap_or_else(|_| t.to_string());
    match (r.id, r.at, r.deleted_from, r.deleted_to) {
        (Some(id), ..) => format!("{path} (version {id})"),
        (None, Some(at), ..) => format!("{path} as it was at {}", when(at)),
        (None, None, None, None) => path,
        (None, None, f, t) => format!("what was deleted under {path} between {} and {}", f.map(when).unwrap_or_else(|| "the oldest version".into()), t.map(when).unwrap_or_else(|| "now".into())),
    }
}

/// A time as an operator gives it: Unix seconds, RFC 3339 (`2026-11-30T10:15:00Z`), or
/// the dashboard's `2026-11-30T10:15` (UTC, to the minute or second). Empty: None.
pub fn parse_time(field: &str, v: &str) -> Result<Option<i64>, String> {
    use time::format_description::well_known::Rfc3339;
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    if let Ok(n) = v.parse::<i64>() {
        return Ok(Some(n));
    }
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(Some(t.unix_timestamp()));
    }
    let minutes = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
    let seconds = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(v, &minutes)
        .or_else(|_| time::PrimitiveDateTime::parse(v, &seconds))
        .map(|t| Some(t.assume_utc().unix_timestamp()))
        .map_err(|_| format!("{field}: {v:?} is not a time; use 2026-11-30T10:15 (UTC), RFC 3339 or Unix seconds"))
}

/// `?path=&deleted=true&from=&to=&limit=` as the agents take it; times as
/// [`parse_time`] reads them; errors per field.
pub fn query(q: &HashMap<String, String>) -> Result<VersionQuery, FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut time = |k: &str| match parse_time(k, q.get(k).map(String::as_str).unwrap_or("")) {
        Ok(t) => t,
        Err(e) => {
            errors.insert(k.to_owned(), e);
            None
        }
    };
    let (from, to) = (time("from"), time("to"));
    let limit = match q.get("limit").map(|l| l.trim()).filter(|l| !l.is_empty()) {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_LIST).contains(&n) => Some(n),
            _ => {
                errors.insert("limit".into(), format!("{l:?}: a whole number from 1 to {MAX_LIST}"));
                None
            }
        },
    };
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        errors.insert("to".into(), "must not be before from".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(VersionQuery {
        path: q.get("path").map(|p| p.trim().trim_matches('/').to_owned()).filter(|p| !p.is_empty()),
        deleted: q.get("deleted").is_some_and(|d| matches!(d.as_str(), "true" | "1" | "on" | "yes")),
        from,
        to,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::versions::VersionInfo;

    fn v(id: u64, path: &str, kept_at: i64, hash: &str, cause: Cause) -> VersionInfo {
        VersionInfo { id, path: path.into(), kept_at, size: 5, mtime_ns: 1, mode: 0o644, hash: Some(hash.into()), by: "node1".into(), cause, settled: true }
    }

    fn list(v: Vec<VersionInfo>) -> VersionList {
        VersionList { matched: v.len(), versions: v, ..VersionList::default() }
    }

    #[test]
    fn one_deletion_kept_on_several_nodes_is_one_row_naming_each_node() {
        let rows = merge(vec![
            ("node2".into(), list(vec![v(4, "a.txt", 1000, "h1", Cause::Deleted), v(3, "a.txt", 500, "h0", Cause::Replaced)])),
            (
                "node3".into(),
                list(vec![
                    v(9, "a.txt", 1001, "h1", Cause::Deleted),
                    // The same content deleted again much later is another event.
                    v(12, "a.txt", 5000, "h1", Cause::Deleted),
                ]),
            ),
        ]);
        let summary: Vec<(i64, Vec<(&str, u64)>)> = rows.iter().map(|r| (r.kept_at, r.holders.iter().map(|h| (h.node.as_str(), h.id)).collect())).collect();
        assert_eq!(summary, vec![(5000, vec![("node3", 12)]), (1000, vec![("node2", 4), ("node3", 9)]), (500, vec![("node2", 3)]),]);
        // Holders are listed by name even when the later name kept its copy first.
        let rows = merge(vec![("node2".into(), list(vec![v(4, "b.txt", 1002, "h2", Cause::Deleted)])), ("node3".into(), list(vec![v(9, "b.txt", 1001, "h2", Cause::Deleted)]))]);
        assert_eq!(rows[0].holders.iter().map(|h| h.node.as_str()).collect::<Vec<_>>(), ["node2", "node3"]);
    }

    #[test]
    fn times_are_read_in_the_forms_an_operator_types() {
        assert_eq!(parse_time("from", ""), Ok(None));
        assert_eq!(parse_time("from", "1700000000"), Ok(Some(1_700_000_000)));
        assert_eq!(parse_time("from", "2023-11-14T22:13"), Ok(Some(1_700_000_000 - 20)));
        assert_eq!(parse_time("from", "2023-11-14T23:13:20+01:00"), Ok(Some(1_700_000_000)));
        let e = parse_time("from", "yesterday").unwrap_err();
        assert!(e.starts_with("from: \"yesterday\" is not a time"), "{e}");
    }

    #[test]
    fn restores_are_described_in_words() {
        let r = RestoreRequest { path: "up".into(), deleted_from: Some(0), ..RestoreRequest::default() };
        assert!(describe(&r).starts_with("what was deleted under up between"));
        assert_eq!(describe(&RestoreRequest { path: "a.txt".into(), id: Some(7), ..RestoreRequest::default() }), "a.txt (version 7)");
    }
}
