//! The replication feed, `POST /v1/changes`: a peer's long-poll for this node's changes
//! after the sequence number it has processed. Answered at once when there is something
//! new (a page of at most `PAGE_ENTRIES` entries, small content of this node's own inline up
//! to `INLINE_BUDGET`), else when something is committed, else at the asker's wait. A page
//! holding only versions the asker already has from their author waits a moment first
//! ([`RELAY_HOLD`]): the relays of a mesh leave the path of the change they repeat.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::listener::PeerName;
use super::root::read_verified;
use super::server::{AppState, HttpResult, RouteClass, internal};
use super::transfer::{INLINE_BUDGET, INLINE_MAX, PAGE_ENTRIES};
use crate::protocol::EntryKind;
use crate::protocol::wire::{Blob, ChangesQuery, ChangesResponse, PROTOCOL, PROTOCOL_HEADER, same_folder};

pub(super) async fn changes(State(app): State<AppState>, Extension(peer): Extension<PeerName>, headers: axum::http::HeaderMap, body: Bytes) -> HttpResult<Response> {
    let proto = headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1);
    if proto != PROTOCOL {
        return Err((StatusCode::CONFLICT, format!("{} speaks filesync protocol {proto}, this node {PROTOCOL}: upgrade every node to the same filesync version", peer.0)));
    }
    let q: ChangesQuery = postcard::from_bytes(&body).map_err(|e| (StatusCode::BAD_REQUEST, format!("bad changes query: {e}")))?;
    if !same_folder(&q.folder, &app.folder) {
        let msg = format!("{} syncs another folder ({:?}; this node syncs {:?}): refused", peer.0, q.folder, app.folder);
        if app.status.lock().expect("BUG: poisoned").foreign_folders.insert(peer.0.clone(), msg.clone()).as_ref() != Some(&msg) {
            app.status_dirty.notify_one();
        }
        return Err((StatusCode::CONFLICT, msg));
    }
    let since = if q.index_id == app.index.index_id { q.since } else { 0 };
    {
        let mut st = app.status.lock().expect("BUG: poisoned");
        let p = st.peers.entry(peer.0.clone()).or_default();
        p.our_seq_acked = since;
        // What lsyncd.status says about the asker (its backlog, its error) is rewritten by
        // the event loop, which nothing else wakes when only this changes.
        let shown = p.peer_pending != q.pending || p.peer_error.is_some();
        p.peer_pending = q.pending;
        p.peer_error = None;
        if shown {
            app.status_dirty.notify_one();
        }
    }
    let mut rx = app.index.subscribe();
    let mut own = app.index.subscribe_own();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms).min(super::peers::LONG_POLL);
    let mut hold_until: Option<tokio::time::Instant> = None;
    loop {
        // A long-poll outlives a reload: a node dropped from the peer list meanwhile gets
        // nothing more.
        if let Some(a) = &app.access
            && let Err(why) = a.check(RouteClass::Replicate, &peer.0)
        {
            return Err(a.refuse(&peer.0, &why));
        }
        let paused = app.paused.load(std::sync::atomic::Ordering::SeqCst);
        if !paused {
            let seq = *rx.borrow();
            let page = match built(&app, since, seq).await? {
                Built::Shared(body, bytes) => {
                    app.status.lock().expect("BUG: poisoned").counters.bytes_sent += bytes;
                    return Ok(([("content-type", "application/octet-stream")], body).into_response());
                }
                Built::Page(page) => page,
            };
            let now = tokio::time::Instant::now();
            if !page.entries.is_empty() && !page.more && now < deadline && only_relays_it_has(&app, &peer.0, &page) {
                let until = *hold_until.get_or_insert((now + RELAY_HOLD).min(deadline));
                if now < until {
                    // A version of this node's own ends the hold; other commits (more relays)
                    // do not rebuild the page each time: it is built once more when the hold
                    // runs out, with everything committed meanwhile. (`own` has seen every
                    // commit of this node's own up to this page's build or before.)
                    tokio::select! {
                        r = own.changed() => if r.is_err() { return Err(internal("agent is shutting down")) },
                        _ = tokio::time::sleep_until(until) => {},
                    }
                    continue;
                }
            }
            if !page.entries.is_empty() || now >= deadline {
                tracing::debug!(to = %peer.0, since, n = page.entries.len(), last_seq = page.last_seq, seqs = ?page.entries.iter().map(|(s, _)| *s).collect::<Vec<_>>(), "serving page");
                let bytes: u64 = page.blobs.iter().map(|b| b.data.len() as u64).sum();
                app.status.lock().expect("BUG: poisoned").counters.bytes_sent += bytes;
                let body = postcard::to_allocvec(&page).map_err(internal)?;
                return Ok(([("content-type", "application/octet-stream")], body).into_response());
            }
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { return Err(internal("agent is shutting down")) },
            _ = tokio::time::sleep_until(deadline) => {
                if paused {
                    let page = ChangesResponse { node_id: app.index.node_id, node_name: app.node_name.clone(), index_id: app.index.index_id, entries: vec![], blobs: vec![], last_seq: since, more: false, folder: app.folder.clone() };
                    return Ok(postcard::to_allocvec(&page).map_err(internal)?.into_response());
                }
            },
        }
    }
}

/// A page for an asker this far behind (in sequence numbers) is a catch-up page: built under
/// [`PageCache`]'s lock and kept a moment for the next asker of the same page.
const SHARE_BACKLOG: u64 = 1000;
/// How long a built catch-up page is kept for another asker of the same page.
const SHARE_FOR: Duration = Duration::from_secs(2);

/// The last full catch-up page served, encoded, for a moment. When several peers catch up
/// from this node at once (a new environment: every other node starts from change 0), each
/// asks for the same pages at about the same time; each page read and hashed its up to 32 MiB
/// of inline content again for every asker. Keyed by where the page starts, the index's last
/// sequence number when it was built (any commit since makes a new page) and whether relayed
/// content goes inline (the link port's pages differ). A page that is not full is never
/// shared: those are the live path, and a relay's hold depends on the asker.
#[derive(Default)]
pub struct PageCache(tokio::sync::Mutex<Option<SharedPage>>);

pub struct SharedPage {
    key: (u64, u64, bool),
    body: Bytes,
    bytes: u64,
    built: std::time::Instant,
}

enum Built {
    /// An encoded catch-up page and the inline bytes it carries.
    Shared(Bytes, u64),
    Page(ChangesResponse),
}

/// The page after `since`, the index being at `seq`: a catch-up page another asker was just
/// given, or a new one (kept for the next asker if it is a full catch-up page).
async fn built(app: &AppState, since: u64, seq: u64) -> HttpResult<Built> {
    let build = |app: &AppState| {
        let app = app.clone();
        async move { tokio::task::spawn_blocking(move || build_page(&app, since)).await.map_err(internal)?.map_err(internal) }
    };
    if seq.saturating_sub(since) < SHARE_BACKLOG {
        return build(app).await.map(Built::Page);
    }
    // Held while building: a second asker of the same page waits for it instead of building it too.
    let mut slot = app.pages.0.lock().await;
    let key = (since, seq, app.inline_relayed);
    if let Some(s) = slot.as_ref().filter(|s| s.key == key && s.built.elapsed() < SHARE_FOR) {
        tracing::debug!(since, seq, "serving a catch-up page built for another asker");
        return Ok(Built::Shared(s.body.clone(), s.bytes));
    }
    let page = build(app).await?;
    if !page.more {
        return Ok(Built::Page(page));
    }
    let bytes: u64 = page.blobs.iter().map(|b| b.data.len() as u64).sum();
    let body = Bytes::from(postcard::to_allocvec(&page).map_err(internal)?);
    let built = std::time::Instant::now();
    *slot = Some(SharedPage { key, body: body.clone(), bytes, built });
    // Not kept beyond its moment: an idle agent holds no page.
    let pages = app.pages.clone();
    tokio::spawn(async move {
        tokio::time::sleep(SHARE_FOR).await;
        let mut slot = pages.0.lock().await;
        if slot.as_ref().is_some_and(|s| s.built == built) {
            *slot = None;
        }
    });
    Ok(Built::Shared(body, bytes))
}

/// How long a page holding only relayed versions the asker has itself (see
/// [`only_relays_it_has`]) waits before it is answered. In a mesh every node that applies a
/// change offers it to its n - 2 other peers, who had it straight from its author: on one
/// machine with 20 nodes those pages took the cores from the receivers still applying.
/// Held, they leave the change's path and several changes travel in one page; a change of
/// this node's own ends the wait at once.
pub const RELAY_HOLD: Duration = Duration::from_millis(250);

/// Whether every entry of `page` is a version the asker made or had straight from its
/// author: made by the asker, or by a peer this node is connected to now (in a mesh, the
/// asker is too). A relay matters where the asker cannot reach the author (across the link,
/// through a partition); those travel at once, and so does anything this node made.
fn only_relays_it_has(app: &AppState, asker: &str, page: &ChangesResponse) -> bool {
    // A page with a change of this node's own (the change's path) goes without looking further.
    if app.inline_relayed || page.entries.iter().any(|(_, e)| e.modified_by == app.index.node_id) {
        return false;
    }
    let st = app.status.lock().expect("BUG: poisoned");
    let direct: std::collections::HashSet<u64> = st.peers.iter().filter(|(name, p)| !p.removed && (p.connected || name.as_str() == asker)).filter_map(|(_, p)| p.node_id).collect();
    page.entries.iter().all(|(_, e)| direct.contains(&e.modified_by))
}

fn build_page(app: &AppState, since: u64) -> anyhow::Result<ChangesResponse> {
    let mut entries = app.index.changes_since(since, PAGE_ENTRIES)?;
    let mut more = entries.len() >= PAGE_ENTRIES;
    let mut blobs = Vec::new();
    let mut budget = INLINE_BUDGET;
    let mut seen = std::collections::HashSet::new();
    let mut cut = None;
    let mut wanted = Vec::new();
    for (i, (_, e)) in entries.iter().enumerate() {
        // Only content this node changed itself travels inline: relayed versions are
        // usually already on the asker, and it can fetch the rest. Across environments
        // nothing is on the asker yet, so everything small travels inline.
        if e.deleted || e.kind != EntryKind::File || (e.modified_by != app.index.node_id && !app.inline_relayed) || e.size > INLINE_MAX || !seen.insert(e.hash) {
            continue;
        }
        // The page ends where the inline budget does: the rest comes inline with the next
        // page instead of costing a request per file.
        if e.size > budget {
            cut = Some(i);
            break;
        }
        budget -= e.size;
        wanted.push((&e.path, e.size, e.hash));
    }
    // Read and checked against its entry's hash (a file changed since it was indexed is not
    // sent; the asker fetches it), on several threads for a full page.
    for ((_, _, hash), data) in wanted.iter().zip(read_verified(&app.root, &wanted)) {
        if let Some(data) = data {
            blobs.push(Blob { hash: *hash, data });
        }
    }
    if let Some(i) = cut.filter(|i| *i > 0) {
        entries.truncate(i);
        more = true;
    }
    let last_seq = entries.last().map(|(s, _)| *s).unwrap_or(since);
    Ok(ChangesResponse { node_id: app.index.node_id, node_name: app.node_name.clone(), index_id: app.index.index_id, entries, blobs, last_seq, more, folder: app.folder.clone() })
}
