//! The agent's HTTP surface, reachable only over mutual TLS (see `listener`):
//! `POST /v1/changes` (the replication long-poll, in `feed`), `GET /v1/file` and `POST /v1/delta`
//! (content), `GET /v1/status` (JSON), `GET /healthz`, `GET /metrics` (Prometheus),
//! `GET /v1/versions` (kept versions, JSON), `POST /v1/admin/{reload,revert,rescan,
//! confirm-empty,pause,resume}`, and the JSON commands `POST /v1/admin/restore` and
//! `POST /v1/admin/hold/{confirm,reject}` (bodies in `protocol::versions`) for `filesync ctl`
//! and the control plane. Every path a peer sends is parsed into a `RelPath` first; a
//! hostile one is refused with 400 and logged.
//!
//! A certificate from the environment's CA proves membership, not a role. Who may do what
//! is decided by the certificate's name ([`Access`]): the admin routes only for the
//! control plane (`pki::CONTROL_PLANE_NAME`) and this node's own certificate (`filesync
//! ctl`); the replication routes only for the nodes in the *current* peer list; status and
//! metrics for both. Anything else is 403 with the reason, logged once a minute per name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::sync::{mpsc, oneshot};

use super::index::Index;
use super::listener::PeerName;
use super::lsyncd_log::LsyncdLog;
use super::refusals::Refusals;
use super::root::SyncRoot;
use super::status::Status;
use super::transfer::MAX_RSYNC_DELTA_FILE;
use super::{AdminCmd, Event, SafetyCmd};
use crate::pki::CONTROL_PLANE_NAME;
use crate::protocol::versions::{HoldRequest, RestoreRequest, VersionQuery};
use crate::protocol::wire::CONTENT_CHANGED;
use crate::protocol::{EntryKind, RelPath};

#[derive(Clone)]
pub struct AppState {
    pub index: Arc<Index>,
    pub root: SyncRoot,
    pub node_name: String,
    pub status: Arc<Mutex<Status>>,
    /// Wakes the event loop to rewrite `lsyncd.status` after a change of `status` made here.
    pub status_dirty: Arc<tokio::sync::Notify>,
    pub log: Arc<LsyncdLog>,
    pub events: mpsc::Sender<Event>,
    pub paused: Arc<std::sync::atomic::AtomicBool>,
    /// Inline relayed content too (the link port: the other environment has none of it).
    pub inline_relayed: bool,
    /// This node's `folder_id` (empty if unset); asks from another folder are refused.
    pub folder: String,
    /// Who may use which route on the peer port; `None` on the link port, where a
    /// certificate from the paired environment's pinned CA is the authorisation.
    pub access: Option<Access>,
    /// The dashboard's reports and conflict actions (`agent::report`).
    pub report: Arc<super::report::Report>,
    /// The versions' records (listed by `GET /v1/versions`); `None` when none are kept.
    pub versions: Option<Arc<super::versions::Store>>,
    /// The last catch-up page built, shared by peers asking for it at once (`feed`).
    pub pages: Arc<super::feed::PageCache>,
}

/// The peer port's routes, each checked against [`Access`].
pub fn router(state: AppState) -> Router {
    let access = state.access.clone().expect("BUG: the peer port needs its access rules");
    Router::new()
        .route("/v1/changes", post(super::feed::changes))
        .route("/v1/file", get(file))
        .route("/v1/delta", post(delta))
        .route("/v1/status", get(status))
        .route("/v1/inspect", get(inspect))
        .route("/v1/versions", get(list_versions))
        .route("/v1/admin/restore", post(restore))
        .route("/v1/admin/hold/{action}", post(hold))
        .route("/v1/admin/{cmd}", post(admin))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .merge(super::report::routes::routes())
        .layer(axum::middleware::from_fn_with_state(access, authorize))
        .with_state(state)
}

/// Serves the peer port until `shutdown`, within `listener::LIMITS`; the addresses of the
/// current peers (and `own_ip`, for `filesync ctl`) are not counted as strangers.
pub async fn serve(listener: tokio::net::TcpListener, tls: Arc<rustls::ServerConfig>, app: Router, access: Access, own_ip: IpAddr, shutdown: tokio_util::sync::CancellationToken) {
    use super::listener::{self, Gate, LIMITS};
    let a = access.clone();
    let gate = Gate::new(LIMITS, Arc::new(move |ip| ip == own_ip || a.known_ip(ip)), access.refusals.clone());
    listener::serve(
        listener,
        gate,
        move || tls.clone(),
        None,
        shutdown,
        move |conn| {
            let app = app.clone();
            async move {
                // Mutual TLS is required here, so a certificate was verified; one without a
                // name gets nothing but the open routes.
                let name = conn.peer_name().unwrap_or_else(|| "?".into());
                conn.serve_http(app, name).await
            }
        },
    )
    .await;
}

/// Who may use which route, by certificate name. The peer list is the agent's current
/// one: each peer task holds a [`Grant`] for its peer, so a reload that drops a node
/// revokes it at once (see `peers::spawn`).
#[derive(Clone)]
pub struct Access {
    me: Arc<str>,
    /// Peer name → (its address, grants held).
    peers: Arc<RwLock<HashMap<String, (IpAddr, usize)>>>,
    refusals: Arc<Refusals>,
}

/// A peer's place in the peer list; dropping it (the peer task ends) removes the peer.
pub struct Grant {
    access: Access,
    name: String,
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut p = self.access.peers.write().expect("BUG: poisoned");
        if let Some((_, n)) = p.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.name);
            }
        }
    }
}

/// The kinds of route, as far as authorisation goes.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum RouteClass {
    Admin,
    Observe,
    Replicate,
    Open,
}

impl RouteClass {
    /// Anything not named here counts as replication: a route added later is closed to
    /// non-peers until it is classified.
    pub fn of(path: &str) -> RouteClass {
        match path {
            "/healthz" => RouteClass::Open,
            p if p.starts_with("/v1/admin/") || p == "/v1/inspect" => RouteClass::Admin,
            // Acting, and reading the whole folder (a verify's digests, file facts) or the
            // log: the control plane's business, not a peer's (a stolen peer certificate
            // must not make a node hash its whole tree back to back).
            "/v1/report/resolve" | "/v1/report/rehash" | "/v1/report/digests" | "/v1/report/files" | "/v1/report/log" => RouteClass::Admin,
            "/v1/status" | "/metrics" | "/v1/versions" => RouteClass::Observe,
            p if p == "/v1/report" || p.starts_with("/v1/report/") => RouteClass::Observe,
            _ => RouteClass::Replicate,
        }
    }
}

impl Access {
    pub fn new(me: &str, refusals: Arc<Refusals>) -> Access {
        Access { me: me.into(), peers: Arc::default(), refusals }
    }

    /// Adds `name` (at `ip`) to the peer list for as long as the grant lives.
    pub fn grant(&self, name: &str, ip: IpAddr) -> Grant {
        let mut p = self.peers.write().expect("BUG: poisoned");
        let e = p.entry(name.to_owned()).or_insert((ip, 0));
        e.0 = ip;
        e.1 += 1;
        Grant { access: self.clone(), name: name.to_owned() }
    }

    pub fn is_peer(&self, name: &str) -> bool {
        self.peers.read().expect("BUG: poisoned").contains_key(name)
    }

    /// Whether `ip` is a peer's address or this node's (their connections are not counted
    /// as strangers').
    pub fn known_ip(&self, ip: IpAddr) -> bool {
        self.peers.read().expect("BUG: poisoned").values().any(|(a, _)| *a == ip)
    }

    /// `Err(reason)` when `name` may not use routes of `class`.
    pub fn check(&self, class: RouteClass, name: &str) -> Result<(), String> {
        let control = name == CONTROL_PLANE_NAME;
        let me = name == &*self.me;
        match class {
            RouteClass::Open => Ok(()),
            RouteClass::Admin if control || me => Ok(()),
            RouteClass::Admin => Err(format!("certificate {name:?} may not run admin commands: only the control plane ({CONTROL_PLANE_NAME}) and this node's own certificate may")),
            RouteClass::Observe if control || me || self.is_peer(name) => Ok(()),
            RouteClass::Observe => Err(format!("certificate {name:?} is neither a peer of this node nor the control plane: status refused")),
            RouteClass::Replicate if self.is_peer(name) => Ok(()),
            RouteClass::Replicate => Err(format!("certificate {name:?} is not in this node's peer list: replication refused")),
        }
    }

    pub(super) fn refuse(&self, name: &str, why: &str) -> (StatusCode, String) {
        self.refusals.note(&format!("certificate {name:?}"), "request", why);
        (StatusCode::FORBIDDEN, why.to_owned())
    }
}

async fn authorize(State(access): State<Access>, Extension(peer): Extension<PeerName>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match access.check(RouteClass::of(req.uri().path()), &peer.0) {
        Ok(()) => next.run(req).await,
        Err(why) => access.refuse(&peer.0, &why).into_response(),
    }
}

/// The routes the other environment may use on the link port: replication only, no
/// status, metrics or admin commands.
pub fn link_router(state: AppState) -> Router {
    Router::new().route("/v1/changes", post(super::feed::changes)).route("/v1/file", get(file)).route("/v1/delta", post(delta)).route("/healthz", get(|| async { "ok" })).with_state(state)
}

pub(super) type HttpResult<T> = Result<T, (StatusCode, String)>;

pub(super) fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

#[derive(serde::Deserialize)]
struct ContentQuery {
    path: String,
    hash: String,
}

/// Parses and checks a content request: the path must be valid, and the index must hold
/// exactly that content for it now.
fn check_content(app: &AppState, peer: &PeerName, q: &ContentQuery) -> HttpResult<(RelPath, [u8; 32])> {
    let path = RelPath::parse(&q.path).map_err(|e| {
        app.log.warn(format!("refused request from {} for path {:?}: {e}", peer.0, q.path));
        app.status.lock().expect("BUG: poisoned").counters.refused += 1;
        (StatusCode::BAD_REQUEST, format!("refused path: {e}"))
    })?;
    let hash: [u8; 32] = hex::decode(&q.hash).ok().and_then(|h| h.try_into().ok()).ok_or((StatusCode::BAD_REQUEST, "bad hash".to_owned()))?;
    let stored = app.index.get(&path).map_err(internal)?;
    match stored {
        Some(s) if !s.entry.deleted && s.entry.kind == EntryKind::File && s.entry.hash == hash => Ok((path, hash)),
        _ => Err((StatusCode::CONFLICT, CONTENT_CHANGED.to_owned())),
    }
}

async fn file(State(app): State<AppState>, Extension(peer): Extension<PeerName>, Query(q): Query<ContentQuery>) -> HttpResult<Response> {
    let (path, _) = check_content(&app, &peer, &q)?;
    let f = app.root.open_read(&path).map_err(|_| (StatusCode::CONFLICT, CONTENT_CHANGED.to_owned()))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    app.status.lock().expect("BUG: poisoned").counters.bytes_sent += len;
    Response::builder().header("content-type", "application/octet-stream").header("content-length", len).body(Body::from_stream(read_chunks(f, len))).map_err(internal)
}

/// What a file is served in: 1 MiB read on a blocking thread straight into the buffer that
/// goes out (a `tokio::fs::File` reads into its own buffer and copies from there). At most
/// `len` bytes; a file that shrinks meanwhile ends short, and the asker's hash check
/// refuses it.
fn read_chunks(f: std::fs::File, len: u64) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    const CHUNK: u64 = 1 << 20;
    futures::stream::try_unfold((f, len), |(f, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(CHUNK);
        let (f, buf) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut buf = Vec::with_capacity(n as usize);
            std::io::Read::read_to_end(&mut std::io::Read::take(&f, n), &mut buf)?;
            Ok((f, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        if buf.is_empty() {
            return Ok(None);
        }
        let left = left - buf.len() as u64;
        Ok(Some((Bytes::from(buf), (f, left))))
    })
}

async fn delta(State(app): State<AppState>, Extension(peer): Extension<PeerName>, Query(q): Query<ContentQuery>, body: Bytes) -> HttpResult<Response> {
    let (path, hash) = check_content(&app, &peer, &q)?;
    let root = app.root.clone();
    let out = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, (StatusCode, String)> {
        let mut f = root.open_read(&path).map_err(|_| (StatusCode::CONFLICT, CONTENT_CHANGED.to_owned()))?;
        if let Some(sig) = body.strip_prefix(super::transfer::BLOCKS_MAGIC.as_slice()) {
            let sig = postcard::from_bytes(sig).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad block list: {e}")))?;
            let diff = super::transfer::block_diff(&mut f, &sig).map_err(internal)?;
            return diff.ok_or((StatusCode::UNPROCESSABLE_ENTITY, "mostly different: ask for an rsync delta".to_owned())).and_then(|d| postcard::to_allocvec(&d).map_err(internal));
        }
        // An rsync delta holds the whole file in memory, a few at a time: larger files go
        // by changed blocks or whole (the asker falls back by itself).
        let len = f.metadata().map_err(internal)?.len();
        if len > MAX_RSYNC_DELTA_FILE {
            return Err((StatusCode::UNPROCESSABLE_ENTITY, format!("{len} bytes is too large for an rsync delta; fetch it whole")));
        }
        let _permit = RSYNC_DELTAS.try_acquire().map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "too many rsync deltas at once; fetch it whole".to_owned()))?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).map_err(internal)?;
        // No hash check here: the receiver verifies the rebuilt file's BLAKE3 and refuses a
        // mismatch (content that changed meanwhile), which saves reading the file twice.
        let _ = hash;
        let sig = fast_rsync::Signature::deserialize(body.to_vec()).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad signature: {e}")))?;
        let mut out = Vec::new();
        fast_rsync::diff(&sig.index(), &data, &mut out).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad signature: {e}")))?;
        Ok(out)
    })
    .await
    .map_err(internal)??;
    app.status.lock().expect("BUG: poisoned").counters.bytes_sent += out.len() as u64;
    Ok(out.into_response())
}

/// rsync deltas computed at once (each holds its file in memory).
static RSYNC_DELTAS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

#[derive(serde::Deserialize)]
struct InspectQuery {
    path: String,
}

/// `filesync inspect` against a running agent (its index cannot be opened by another process).
async fn inspect(State(app): State<AppState>, Query(q): Query<InspectQuery>) -> HttpResult<Response> {
    let path = RelPath::parse(&q.path).map_err(|e| (StatusCode::BAD_REQUEST, format!("path {:?}: {e}", q.path)))?;
    let index = app.index.clone();
    let v = tokio::task::spawn_blocking(move || super::inspect::report(&index, &path)).await.map_err(internal)?.map_err(internal)?;
    Ok(axum::Json(v).into_response())
}

async fn status(State(app): State<AppState>) -> Response {
    let st = app.status.lock().expect("BUG: poisoned").clone();
    axum::Json(st).into_response()
}

async fn metrics(State(app): State<AppState>) -> Response {
    let text = app.status.lock().expect("BUG: poisoned").metrics();
    ([("content-type", "text/plain; version=0.0.4")], text).into_response()
}

async fn admin(State(app): State<AppState>, Extension(peer): Extension<PeerName>, UrlPath(cmd): UrlPath<String>, Query(args): Query<HashMap<String, String>>) -> HttpResult<String> {
    let cmd = match cmd.as_str() {
        "reload" => AdminCmd::Reload,
        "revert" => AdminCmd::Revert,
        "rescan" => AdminCmd::Rescan,
        "confirm-empty" => AdminCmd::ConfirmEmpty,
        "pause" => AdminCmd::Pause(true),
        "resume" => AdminCmd::Pause(false),
        other => return Err((StatusCode::NOT_FOUND, format!("unknown admin command {other:?}"))),
    };
    let _ = args;
    app.log.normal(format!("admin command {cmd:?} from {}", peer.0));
    let (tx, rx) = oneshot::channel();
    app.events.send(Event::Admin(cmd, tx)).await.map_err(|_| internal("agent is shutting down"))?;
    rx.await.map_err(|_| internal("agent is shutting down"))
}

/// `GET /v1/versions?path=&deleted=&from=&to=&limit=`: the kept versions, newest first.
async fn list_versions(State(app): State<AppState>, Query(q): Query<VersionQuery>) -> HttpResult<Response> {
    let summary = app.status.lock().expect("BUG: poisoned").versions.clone();
    let store = app.versions.clone();
    let list = tokio::task::spawn_blocking(move || super::versions::list(store.as_deref(), &q, summary)).await.map_err(internal)?.map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    Ok(axum::Json(list).into_response())
}

async fn restore(State(app): State<AppState>, Extension(peer): Extension<PeerName>, body: Bytes) -> HttpResult<Response> {
    let req: RestoreRequest = serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad restore request: {e}")))?;
    app.log.normal(format!("admin command restore {:?} from {}", req.path, peer.0));
    safety(&app, SafetyCmd::Restore(req)).await
}

async fn hold(State(app): State<AppState>, Extension(peer): Extension<PeerName>, UrlPath(action): UrlPath<String>, body: Bytes) -> HttpResult<Response> {
    let req: HoldRequest = if body.is_empty() { HoldRequest::default() } else { serde_json::from_slice(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad hold request: {e}")))? };
    let cmd = match action.as_str() {
        "confirm" => SafetyCmd::ConfirmHold(req.from),
        "reject" => SafetyCmd::RejectHold(req.from),
        other => return Err((StatusCode::NOT_FOUND, format!("unknown hold action {other:?}: use confirm or reject"))),
    };
    app.log.normal(format!("admin command hold {action} from {}", peer.0));
    safety(&app, cmd).await
}

/// Runs a safety command in the event loop; its refusals are 409 with the reason.
async fn safety(app: &AppState, cmd: SafetyCmd) -> HttpResult<Response> {
    let (tx, rx) = oneshot::channel();
    app.events.send(Event::Safety(cmd, tx)).await.map_err(|_| internal("agent is shutting down"))?;
    match rx.await.map_err(|_| internal("agent is shutting down"))? {
        Ok(json) => Ok(([("content-type", "application/json")], json).into_response()),
        Err(why) => Err((StatusCode::CONFLICT, why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_authorised_by_certificate_name() {
        let access = Access::new("node1", Refusals::new(Arc::new(|_| {}), Arc::new(|| {})));
        let grant = access.grant("node2", "10.0.0.2".parse().unwrap());
        let table = [
            ("/v1/admin/pause", [false, true, true, false]),
            ("/v1/report/resolve", [false, true, true, false]),
            ("/v1/report/conflicts", [true, true, true, false]),
            ("/v1/report/digests", [false, true, true, false]),
            ("/v1/report/files", [false, true, true, false]),
            ("/v1/report/log", [false, true, true, false]),
            ("/v1/admin/restore", [false, true, true, false]),
            ("/v1/admin/hold/confirm", [false, true, true, false]),
            ("/v1/versions", [true, true, true, false]),
            ("/v1/status", [true, true, true, false]),
            ("/metrics", [true, true, true, false]),
            ("/v1/changes", [true, false, false, false]),
            ("/v1/file", [true, false, false, false]),
            ("/v1/something-new", [true, false, false, false]),
            ("/healthz", [true, true, true, true]),
        ];
        for (path, allowed) in table {
            for (name, want) in ["node2", CONTROL_PLANE_NAME, "node1", "stranger"].into_iter().zip(allowed) {
                assert_eq!(access.check(RouteClass::of(path), name).is_ok(), want, "{name} on {path}");
            }
        }
        assert!(access.known_ip("10.0.0.2".parse().unwrap()));
        // Dropping the peer's grant (a reload without it) revokes it at once.
        drop(grant);
        assert!(access.check(RouteClass::Replicate, "node2").is_err());
        assert!(!access.known_ip("10.0.0.2".parse().unwrap()));
    }
}
