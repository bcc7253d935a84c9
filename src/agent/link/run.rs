//! Carrying the link: while paired, the leader (the lowest node name among this node and
//! the local peers it is connected to) pulls the other environment's changes into the
//! event loop with the one changes client (`peers::ask`), under the peer name `@<address>`.
//! Its local peers get them through the ordinary mesh, which is the relay. If the
//! configured remote node stays unreachable, the leader moves to the other environment's
//! other nodes (learned at pairing). A link that keeps failing checks by pairing again
//! whether the other side changed its password; a throttled answer ("busy") is not a
//! refusal and never drops the pairing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Link, PairError};
use crate::agent::Event;
use crate::agent::index::Index;
use crate::agent::peers::ask;
use crate::agent::status::LinkState;
use crate::protocol::wire::ChangesQuery;

/// The configured remote node is given this long before the link moves to another node.
const FAILOVER_AFTER: Duration = Duration::from_secs(30);
/// After the other side refused the password, ask again this often (it may be fixed there).
const MISMATCH_RETRY: Duration = Duration::from_secs(30);

impl Link {
    /// The node with the lowest name among this one and the local peers it is connected to
    /// carries the link.
    fn is_leader(&self) -> bool {
        let st = self.status.lock().expect("BUG: poisoned");
        st.peers.iter().filter(|(n, p)| !n.starts_with('@') && !p.removed && p.connected).all(|(n, _)| self.me.as_str() < n.as_str())
    }

    /// Pairs if needed, and while this node is the leader pulls the other environment's
    /// changes into the event loop, until `shutdown`.
    pub async fn run(self: Arc<Self>, index: Arc<Index>, events: mpsc::Sender<Event>, shutdown: CancellationToken) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = self.run_inner(index, events) => {}
        }
    }

    async fn run_inner(&self, index: Arc<Index>, events: mpsc::Sender<Event>) {
        let mut target = 0usize;
        let mut connected = false;
        let mut failing_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(200);
        let mut next_ping = Instant::now();
        let mut last_state = LinkState::Unknown;
        let mut failures = 0u32;
        loop {
            let cands = self.candidates();
            target %= cands.len().max(1);
            let addr = cands[target].clone();
            if !self.paired() {
                connected = false;
                self.set_status(|l| l.state = if l.state == LinkState::Refused { LinkState::Refused } else { LinkState::Pairing });
                match self.pair_with(&addr, false).await {
                    Ok(()) => {
                        self.log.normal(format!("link: paired with the other environment at {addr}; its CA is pinned"));
                        self.set_status(|l| {
                            l.state = LinkState::Paired;
                            l.error = None;
                        });
                        failing_since = None;
                        backoff = Duration::from_millis(200);
                    }
                    Err(PairError::Mismatch) => {
                        let msg = format!("the other environment ({addr}) refused the password: the two environments were given different passwords. Set the same password on both sides");
                        self.log.error(format!("link: {msg}"));
                        self.set_status(|l| {
                            l.state = LinkState::Refused;
                            l.error = Some(msg);
                        });
                        tokio::time::sleep(MISMATCH_RETRY).await;
                    }
                    Err(PairError::Refused(reason)) => {
                        let msg = format!("the other environment ({addr}) refused to pair: {reason}");
                        self.log.error(format!("link: {msg}"));
                        self.set_status(|l| {
                            l.state = LinkState::Refused;
                            l.error = Some(msg);
                        });
                        tokio::time::sleep(MISMATCH_RETRY).await;
                    }
                    Err(PairError::Busy(wait)) => {
                        // The other side throttles pairing (someone is guessing there); ask
                        // again when it says, without calling this a refusal.
                        let msg = format!("the other environment ({addr}) is busy with other pairing attempts; trying again in {wait} s");
                        self.set_status(|l| l.error = Some(msg));
                        tokio::time::sleep(Duration::from_secs(wait.clamp(1, 300))).await;
                    }
                    Err(PairError::Unreachable(e)) => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        let msg = format!("no answer from {addr} for {} s: {e}", since.elapsed().as_secs());
                        self.set_status(|l| {
                            if l.state != LinkState::Refused {
                                l.state = LinkState::Unreachable;
                            }
                            l.error = Some(msg);
                        });
                        if since.elapsed() >= FAILOVER_AFTER && cands.len() > 1 {
                            target += 1;
                            failing_since = None;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
                continue;
            }
            if !self.is_leader() {
                connected = false;
                self.set_status(|l| {
                    l.leader = false;
                    l.state = LinkState::Standby;
                    l.serving_node = None;
                });
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let Some(client) = self.client() else { continue };
            let key = format!("@{addr}");
            if next_ping <= Instant::now() {
                next_ping = Instant::now() + Duration::from_secs(30);
                let t0 = Instant::now();
                if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), client.get(format!("https://{addr}/healthz")).send()).await
                    && r.status().is_success()
                {
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    self.set_status(|l| l.latency_ms = Some((ms * 10.0).round() / 10.0));
                }
            }
            let progress = match index.progress(&key) {
                Ok(p) => p,
                Err(e) => {
                    self.log.error(format!("link: cannot read progress: {e}"));
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            let wait_ms = if connected { 15_000 } else { 0 };
            let q = ChangesQuery { since: progress.seq, index_id: progress.index_id, wait_ms, pending: 0, from: self.me.clone(), folder: String::new() };
            match ask(&client, &addr, &q, Duration::from_secs(20)).await {
                Ok((page, len)) => {
                    failures = 0;
                    self.count_in(len);
                    if !connected {
                        connected = true;
                        self.log.normal(format!("link: connected to {} of the other environment ({addr}); catching up from its change #{}", page.node_name, progress.seq));
                    }
                    failing_since = None;
                    backoff = Duration::from_millis(200);
                    let node = page.node_name.clone();
                    self.set_status(|l| {
                        l.state = LinkState::Connected;
                        l.leader = true;
                        l.serving_node = Some(node);
                        l.error = None;
                        l.last_exchange = Some(time::OffsetDateTime::now_utc().unix_timestamp());
                    });
                    let resync = page.index_id != progress.index_id;
                    if page.entries.is_empty() && !resync {
                        continue;
                    }
                    let (tx, rx) = oneshot::channel();
                    if events.send(Event::Page { peer: key.clone(), page, done: tx }).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            self.log.error(format!("link: could not process changes from {addr}: {e:#}"));
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(_) => return,
                    }
                }
                Err(e) => {
                    let was = connected;
                    connected = false;
                    failures += 1;
                    // The other side may have changed its password or CA, which shows as a
                    // refused handshake (or a plain disconnect): pair again to find out.
                    if is_trust_error(&e) || failures.is_multiple_of(3) {
                        match self.pair_with(&addr, true).await {
                            Ok(()) => {
                                self.log.normal(format!("link: paired again with {addr} after: {e}"));
                                continue;
                            }
                            Err(PairError::Mismatch) => {
                                self.drop_pairing(&format!("{addr} no longer accepts this environment's password"));
                                let msg = format!("the other environment ({addr}) refused the password: its password was changed. Set the same password on both sides");
                                self.log.error(format!("link: {msg}"));
                                self.set_status(|l| {
                                    l.state = LinkState::Refused;
                                    l.error = Some(msg);
                                });
                                continue;
                            }
                            Err(PairError::Refused(reason)) => {
                                self.drop_pairing(&format!("{addr} refused to pair again: {reason}"));
                                self.set_status(|l| {
                                    l.state = LinkState::Refused;
                                    l.error = Some(format!("the other environment ({addr}) refused to pair: {reason}"));
                                });
                                continue;
                            }
                            Err(PairError::Unreachable(_) | PairError::Busy(_)) => {}
                        }
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let msg = format!("no answer from {addr} for {} s: {e}", since.elapsed().as_secs());
                    if was || last_state != LinkState::Unreachable {
                        self.log.warn(format!("link: {msg}; retrying"));
                    }
                    last_state = LinkState::Unreachable;
                    self.set_status(|l| {
                        l.state = LinkState::Unreachable;
                        l.error = Some(msg);
                    });
                    if since.elapsed() >= FAILOVER_AFTER && cands.len() > 1 {
                        target += 1;
                        failing_since = None;
                        self.log.warn(format!("link: moving to {} of the other environment", cands[target % cands.len()]));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            last_state = LinkState::Connected;
        }
    }
}

/// TLS errors that mean the other side's trust changed (not a network problem).
fn is_trust_error(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    ["UnknownCA", "UnknownIssuer", "BadCertificate", "CertificateUnknown", "CertificateRequired", "invalid peer certificate"].iter().any(|k| s.contains(k))
}
