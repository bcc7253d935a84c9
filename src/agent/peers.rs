//! One task per peer that keeps a long-poll open to it (`POST /v1/changes`), hands every
//! page to the event loop and waits until the loop has processed it before handing over the
//! next. While a page that says more follow is being applied, the next one is already asked
//! for (catch-up is pipelined); it is used only if the page was applied and the recorded
//! progress is where the early ask started, otherwise it is dropped and asked again. A
//! connect after a failure is the anti-entropy catch-up: the ask starts from the
//! last sequence number processed, which is persisted with the index. Failures back off
//! from 200 ms to 10 s; connect and disconnect are logged once each, not per retry.
//!
//! A peer task also holds the peer's place in the peer list the server authorises
//! ([`super::server::Grant`]): the task and the authorisation end together, so a reload
//! that removes a node revokes its certificate at once. [`ask`] is the one changes client,
//! used by the peer tasks and by the cross-environment link.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Event;
use super::index::Index;
use super::lsyncd_log::LsyncdLog;
use super::server::{Access, Grant};
use super::status::Status;
use super::transfer::{MAX_PAGE_BYTES, decode_page, read_limited};
use crate::protocol::wire::{ChangesQuery, ChangesResponse};

/// How long a caught-up ask is held by the peer when nothing changes. Long: an idle mesh
/// wakes for nothing (liveness is HTTP/2 PINGs every few seconds, see `pki::tls`), and the
/// peer answers at once when something changes.
pub const LONG_POLL: Duration = Duration::from_secs(240);

pub struct PeerLink {
    pub name: String,
    pub address: String,
    pub cancel: CancellationToken,
    /// This peer's authorisation on this node's server, dropped with the link.
    _grant: Grant,
}

pub struct PeerCtx {
    /// Woken when a peer's state in the status changes (the event loop rewrites the status).
    pub dirty: Arc<tokio::sync::Notify>,
    /// This node's backlog (items accepted but not written), reported to every peer.
    pub pending: tokio::sync::watch::Sender<u64>,
    pub me: String,
    /// This node's `folder_id` (empty if unset).
    pub folder: String,
    pub client: reqwest::Client,
    pub index: Arc<Index>,
    pub events: mpsc::Sender<Event>,
    pub status: Arc<Mutex<Status>>,
    pub log: Arc<LsyncdLog>,
    /// Who may use this node's routes; each peer task holds its peer's grant.
    pub access: Access,
}

pub fn spawn(ctx: Arc<PeerCtx>, name: String, address: String, parent: &CancellationToken) -> PeerLink {
    let cancel = parent.child_token();
    let ip = address.parse::<std::net::SocketAddr>().map(|a| a.ip()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let grant = ctx.access.grant(&name, ip);
    let link = PeerLink { name: name.clone(), address: address.clone(), cancel: cancel.clone(), _grant: grant };
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = run(ctx, name, address) => {}
        }
    });
    link
}

async fn run(ctx: Arc<PeerCtx>, name: String, address: String) {
    let mut backoff = Duration::from_millis(200);
    let mut connected = false;
    let mut failures = 0u32;
    let mut prefetched: Option<(u64, u64, ChangesResponse)> = None;
    loop {
        let progress = match ctx.index.progress(&name) {
            Ok(p) => p,
            Err(e) => {
                ctx.log.error(format!("peer {name}: cannot read progress: {e}"));
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        // Our backlog travels with each ask; when it changes while a long-poll waits, the
        // ask is made again at once, so the peer's view of it is never minutes old.
        let mut backlog = ctx.pending.subscribe();
        let pending = *backlog.borrow_and_update();
        // The first ask after (re)connecting returns at once, so the link is known to be up.
        let wait_ms = if connected { LONG_POLL.as_millis() as u64 } else { 0 };
        let q = ChangesQuery { since: progress.seq, index_id: progress.index_id, wait_ms, pending, from: ctx.me.clone(), folder: ctx.folder.clone() };
        let res = match prefetched.take() {
            Some((since, index_id, page)) if since == progress.seq && index_id == progress.index_id => Ok(page),
            _ if wait_ms > 0 => tokio::select! {
                r = ask(&ctx.client, &address, &q, Duration::from_secs(15)) => r.map(|(p, _)| p),
                _ = backlog.changed() => continue,
            },
            _ => ask(&ctx.client, &address, &q, Duration::from_secs(15)).await.map(|(p, _)| p),
        };
        match res {
            Ok(page) if !crate::protocol::wire::same_folder(&page.folder, &ctx.folder) => {
                let msg = format!("syncs another folder ({:?}; this node syncs {:?}): refusing its changes", page.folder, ctx.folder);
                if connected || failures == 0 {
                    ctx.log.error(format!("peer {name} ({address}) {msg}"));
                }
                connected = false;
                failures += 1;
                ctx.status.lock().expect("BUG: poisoned").foreign_folders.insert(name.clone(), msg.clone());
                set(&ctx, &name, &address, |p| {
                    p.connected = false;
                    p.last_error = Some(msg.clone());
                });
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(page) => {
                ctx.status.lock().expect("BUG: poisoned").foreign_folders.remove(&name);
                if !connected {
                    connected = true;
                    ctx.log.normal(format!("peer {name} ({address}) connected; catching up from its change #{}", progress.seq));
                    set(&ctx, &name, &address, |p| {
                        p.connected = true;
                        p.node_id = Some(page.node_id);
                        p.last_error = None;
                    });
                }
                failures = 0;
                backoff = Duration::from_millis(200);
                let resync = page.index_id != progress.index_id;
                if page.entries.is_empty() && !resync {
                    set(&ctx, &name, &address, |p| p.last_sync = Some(time::OffsetDateTime::now_utc().unix_timestamp()));
                    continue;
                }
                // More pages are waiting: ask for the next while this one is applied.
                let next = page.more.then(|| ChangesQuery { since: page.last_seq, index_id: page.index_id, wait_ms: 0, pending, from: ctx.me.clone(), folder: ctx.folder.clone() });
                let (tx, rx) = oneshot::channel();
                if ctx.events.send(Event::Page { peer: name.clone(), page, done: tx }).await.is_err() {
                    return;
                }
                let (done, early) = match next {
                    Some(q) => {
                        let (done, early) = tokio::join!(rx, ask(&ctx.client, &address, &q, Duration::from_secs(15)));
                        (done, early.ok().map(|(p, _)| (q.since, q.index_id, p)))
                    }
                    None => (rx.await, None),
                };
                match done {
                    Ok(Ok(())) => {
                        prefetched = early;
                        set(&ctx, &name, &address, |p| p.last_sync = Some(time::OffsetDateTime::now_utc().unix_timestamp()))
                    }
                    Ok(Err(e)) => {
                        ctx.log.error(format!("peer {name}: could not process changes: {e:#}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(_) => return,
                }
            }
            Err(e) => {
                failures += 1;
                let msg = format!("{e:#}");
                if connected {
                    ctx.log.warn(format!("peer {name} ({address}) disconnected: {msg}"));
                } else if failures == 1 {
                    ctx.log.warn(format!("peer {name} ({address}) not reachable: {msg}; retrying in the background"));
                }
                connected = false;
                set(&ctx, &name, &address, |p| {
                    p.connected = false;
                    p.last_error = Some(msg.clone());
                });
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn set(ctx: &PeerCtx, name: &str, address: &str, f: impl FnOnce(&mut super::status::PeerStatus)) {
    let mut st = ctx.status.lock().expect("BUG: poisoned");
    let p = st.peers.entry(name.to_owned()).or_default();
    p.address = address.to_owned();
    p.removed = false;
    f(p);
    ctx.dirty.notify_one();
}

/// Asks `address` for its changes after `q.since` (holding up to `q.wait_ms`), with `slack`
/// more for the answer to arrive. Returns the page and its size on the wire. The answer
/// is read with a limit and its entries counted before they are decoded.
pub async fn ask(client: &reqwest::Client, address: &str, q: &ChangesQuery, slack: Duration) -> anyhow::Result<(ChangesResponse, u64)> {
    let body = postcard::to_allocvec(q)?;
    let resp = client
        .post(format!("https://{address}/v1/changes"))
        .timeout(Duration::from_millis(q.wait_ms) + slack)
        .header(crate::protocol::wire::PROTOCOL_HEADER, crate::protocol::wire::PROTOCOL.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
    if !resp.status().is_success() {
        let st = resp.status();
        let text = read_limited(resp, 64 * 1024, "error answer").await.unwrap_or_default();
        anyhow::bail!("answered {st}: {}", String::from_utf8_lossy(&text).trim());
    }
    let bytes = read_limited(resp, MAX_PAGE_BYTES, "page of changes").await?;
    Ok((decode_page(&bytes)?, bytes.len() as u64))
}

pub use crate::pki::tls::describe;
