//! A node's log view: the end of `lsyncd.log` (live: the page follows the newest line
//! unless the reader scrolled up, can pause, filter by level, search and download), its
//! `lsyncd.status`, and the agent's status rendered as tables. Everything is read from the
//! agent over its own mutual-TLS port when it answers (no SSH round trip per refresh);
//! over SSH when it does not, so the log of a stopped agent is still readable.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use uuid::Uuid;

use super::{ago, human_bytes};
use crate::control::AppState;
use crate::control::agent_api::{AgentApi, AgentStatus};
use crate::control::db;
use crate::control::http::auth::CurrentUser;
use crate::control::http::{Error, not_found, render};

/// Lines shown (and followed) in the view.
const VIEW_LINES: usize = 500;
/// Lines in a download from the agent (over SSH the whole current file is sent).
const DOWNLOAD_LINES: usize = crate::protocol::report::MAX_LOG_LINES;
const AGENT_TIMEOUT: Duration = Duration::from_secs(3);

pub struct LogLine {
    pub text: String,
    /// `normal`, `warn` or `error`.
    pub level: String,
}

pub struct PeerView {
    pub name: String,
    pub address: String,
    pub state: String,
    pub last_sync: String,
    pub lag: String,
    pub behind: String,
    pub error: String,
}

/// The agent's `/v1/status`, as a reader wants it.
pub struct AgentView {
    pub facts: Vec<(String, String)>,
    pub peers: Vec<PeerView>,
    pub warnings: Vec<String>,
}

pub struct LogView {
    pub lines: Vec<LogLine>,
    pub status: String,
    pub agent: Option<AgentView>,
    /// Where the log came from: "the agent (mutual TLS)" or "SSH (the agent does not answer)".
    pub source: String,
    pub error: String,
    /// The typed status, for the API.
    pub agent_status: Option<AgentStatus>,
}

fn level_of(line: &str) -> &'static str {
    let rest = line.get(24..).unwrap_or(line);
    if rest.starts_with(" Error:") || line.contains(" Error: ") {
        "error"
    } else if rest.starts_with(" Warn:") || line.contains(" Warn: ") {
        "warn"
    } else {
        "normal"
    }
}

fn unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t).map(|t| ago(Some(t))).unwrap_or_else(|_| "never".into())
}

pub fn agent_view(s: &AgentStatus) -> AgentView {
    let yes = |b: bool| if b { "yes".to_owned() } else { "no".to_owned() };
    let mut facts = vec![
        ("Node".to_owned(), s.node_name.clone()),
        ("Sync folder".to_owned(), s.root.clone()),
        ("Folder id".to_owned(), s.folder_id.clone()),
        ("Paused".to_owned(), yes(s.paused)),
        ("Receive only".to_owned(), yes(s.receive_only)),
        ("Started".to_owned(), unix(s.started_at)),
        ("Delay".to_owned(), format!("{} s", s.delay_s)),
        ("Tree".to_owned(), format!("{} files, {} directories, {} symlinks, {}", s.files, s.dirs, s.symlinks, human_bytes(s.bytes))),
        ("Tree digest".to_owned(), s.tree_digest.clone()),
        ("Local changes waiting".to_owned(), format!("{} (+{} still being written)", s.pending_local, s.writing)),
        ("Remote changes to write".to_owned(), s.pending_remote.to_string()),
        ("Watched directories".to_owned(), s.watches.to_string()),
        (
            "Counters".to_owned(),
            format!(
                "{} local changes, {} applied, {} received, {} sent, {} conflicts, {} errors, {} refused",
                s.counters.local_changes,
                s.counters.applied,
                human_bytes(s.counters.bytes_received),
                human_bytes(s.counters.bytes_sent),
                s.counters.conflicts,
                s.counters.errors,
                s.counters.refused
            ),
        ),
    ];
    if s.held_deletes > 0 {
        facts.push(("Deletes held".to_owned(), format!("{} (the sync root looks empty or unmounted)", s.held_deletes)));
    }
    if let Some(l) = &s.link {
        let state = serde_json::to_value(l.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        facts.push(("Cross-environment link".to_owned(), format!("{state} with {}{}", l.remote, l.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())));
    }
    let peers = s
        .peers
        .iter()
        .filter(|(n, p)| !p.removed && !n.starts_with('@'))
        .map(|(n, p)| PeerView {
            name: n.clone(),
            address: p.address.clone(),
            state: if p.connected { "connected".into() } else { "disconnected".into() },
            last_sync: p.last_sync.map(unix).unwrap_or_else(|| "never".into()),
            lag: p.lag_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
            behind: if p.peer_pending > 0 { format!("{} change(s) not yet written there", p.peer_pending) } else { String::new() },
            error: p.last_error.clone().or(p.peer_error.clone()).unwrap_or_default(),
        })
        .collect();
    let mut warnings = s.warnings.clone();
    warnings.extend(s.pending_errors.iter().map(|e| format!("waiting: {e}")));
    warnings.extend(s.foreign_folders.values().cloned());
    AgentView { facts, peers, warnings }
}

/// The log, its status file and the agent's status: from the agent when it answers, else
/// the files over SSH.
pub async fn log_view(st: &AppState, node: &db::NodeRow, lines: usize) -> LogView {
    let api = match db::nodes::environment_of(&st.pool, node.node_id).await {
        Ok(Some(env_id)) => match db::environments::get(&st.pool, env_id).await {
            Ok(Some(env)) => crate::control::jobs::install::agent_client(st, &env).ok().map(|c| AgentApi::new(c, &node.address, node.agent_port)),
            _ => None,
        },
        _ => None,
    };
    let mut view = LogView { lines: Vec::new(), status: String::new(), agent: None, source: String::new(), error: String::new(), agent_status: None };
    if let Some(api) = &api {
        let (tail, status) = tokio::join!(api.log_tail(lines, AGENT_TIMEOUT), api.status(AGENT_TIMEOUT));
        if let Ok(s) = status {
            let _ = db::nodes::record_heartbeat(&st.pool, node.node_id, &s).await;
            view.agent = Some(agent_view(&s));
            view.agent_status = Some(s);
        }
        if let Ok(t) = tail {
            view.lines = t.lines.into_iter().map(|l| LogLine { level: level_of(&l).into(), text: l }).collect();
            view.status = t.status;
            view.source = "the agent, over its own mutual-TLS port".into();
            return view;
        }
    }
    match crate::control::jobs::install::read_logs(st, node, lines).await {
        Ok((l, s)) => {
            view.lines = l.lines().map(|l| LogLine { level: level_of(l).into(), text: l.to_owned() }).collect();
            view.status = s;
            view.source = "SSH (the agent does not answer)".into();
        }
        Err(e) => view.error = format!("cannot read the log files: the agent does not answer and SSH failed: {e}"),
    }
    if view.error.is_empty() && view.lines.is_empty() {
        view.error = "lsyncd.log is empty or missing".into();
    }
    view
}

#[derive(askama::Template)]
#[template(path = "nodes/logs.html")]
pub struct NodeLogsPage {
    pub user: CurrentUser,
    pub id: Uuid,
    pub env_id: Uuid,
    pub name: String,
    pub address: String,
    pub view: LogView,
}

#[derive(askama::Template)]
#[template(path = "nodes/logs_live.html")]
pub struct LogsFragment {
    pub view: LogView,
}

pub async fn logs(State(st): State<AppState>, user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let env_id = db::nodes::environment_of(&st.pool, id).await?.ok_or_else(|| not_found("environment"))?;
    let view = log_view(&st, &node, VIEW_LINES).await;
    render(&NodeLogsPage { user, id, env_id, name: node.name, address: node.address, view })
}

pub async fn logs_fragment(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    render(&LogsFragment { view: log_view(&st, &node, VIEW_LINES).await })
}

/// `lsyncd.log` as a file (the newest lines the agent gives, or the whole file over SSH).
pub async fn download(State(st): State<AppState>, _user: CurrentUser, Path(id): Path<Uuid>) -> Result<Response, Error> {
    let node = db::nodes::get(&st.pool, id).await?.ok_or_else(|| not_found("node"))?;
    let v = log_view(&st, &node, DOWNLOAD_LINES).await;
    if !v.error.is_empty() && v.lines.is_empty() {
        return Err(Error::Unprocessable(v.error));
    }
    let mut text: String = v.lines.iter().map(|l| format!("{}\n", l.text)).collect();
    if text.is_empty() {
        text.push('\n');
    }
    let disposition = format!("attachment; filename=\"{}-lsyncd.log\"", node.name);
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()), (header::CONTENT_DISPOSITION, disposition)], text).into_response())
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_levels_come_from_the_line_shape() {
        assert_eq!(super::level_of("Mon Nov 23 01:10:49 2026 Normal: startup complete"), "normal");
        assert_eq!(super::level_of("Mon Nov 23 01:10:49 2026 Warn: peer node2 disconnected"), "warn");
        assert_eq!(super::level_of("Mon Nov 23 01:10:49 2026 Error: disk full"), "error");
    }
}
