//! The cross-environment link (two-environment mode): pairing with a shared password, then
//! replication with the other environment over mutual TLS.
//!
//! Every node of an environment with a `[link]` section listens on a second port, the link
//! port. On it:
//! - **Pairing** (TLS with ALPN `filesync-pair/1`, no client certificate): SPAKE2 over the
//!   shared password, so the password never crosses the wire and a listener or a man in the
//!   middle gets one online guess per attempt, nothing to test offline. Both sides confirm
//!   the SPAKE2 key with a MAC over a transcript that includes the TLS exporter of *this*
//!   TLS session, so a relay that terminates TLS on each side fails the confirmation. The
//!   confirmed exchange carries each environment's CA certificate; each side pins the
//!   other's (`<state_dir>/link-pairing.json`, mode 0600, with a salted tag of the password
//!   so a changed password drops the pairing). Failed attempts are rate-limited.
//! - **Replication** (ALPN h2, client certificate from the paired CA): the same
//!   `/v1/changes`, `/v1/file`, `/v1/delta` routes as inside an environment, nothing else.
//!
//! One node per environment carries the link (the *leader*: the lowest node name among
//! itself and the local peers it is connected to) and pulls the other side's changes like
//! a peer, under the peer name `@<address>`. The changes it applies enter its index and
//! reach its local peers through the ordinary mesh, which is the relay; the other side
//! pulls from this environment the same way. If the configured remote node stays
//! unreachable, the leader moves to the other environment's other nodes (learned at
//! pairing, assumed to use the same port offset from their agent port).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::{LinkConfig, Settings, TlsConfig};
use super::index::Index;
use super::lsyncd_log::LsyncdLog;
use super::status::{LinkStatus, Status};
use super::tls::{PeerName, common_name};
use super::Event;
use crate::protocol::wire::{ChangesQuery, ChangesResponse};

const PAIR_ALPN: &[u8] = b"filesync-pair/1";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-filesync-link-pairing";
/// The configured remote node is given this long before the link moves to another node.
const FAILOVER_AFTER: Duration = Duration::from_secs(30);
/// After the other side refused the password, ask again this often (it may be fixed there).
const MISMATCH_RETRY: Duration = Duration::from_secs(30);
/// Failed pairings accepted per minute on a link port; more are refused unanswered.
const MAX_FAILURES_PER_MINUTE: usize = 5;
const PAIRING_FILE: &str = "link-pairing.json";

/// Messages of the pairing exchange, length-prefixed JSON frames.
#[derive(Serialize, Deserialize, Debug)]
enum PairMsg {
    Hello { version: u32, spake: Vec<u8>, ca_pem: String, nodes: Vec<String> },
    Reply { spake: Vec<u8>, ca_pem: String, nodes: Vec<String>, confirm: [u8; 32] },
    Refused { reason: String },
    /// The client's confirmation, or `None` when the server's did not verify.
    Confirm { confirm: Option<[u8; 32]> },
    Done { ok: bool },
}

/// What pairing left on disk: the other environment's CA, its nodes' link addresses, and
/// a salted tag of the password it was paired with.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Pairing {
    remote_ca_pem: String,
    remote_nodes: Vec<String>,
    salt: String,
    tag: String,
}

#[derive(Debug)]
enum PairError {
    /// The passwords differ (said in words by the caller's side).
    Mismatch,
    Refused(String),
    Unreachable(String),
}

pub struct Link {
    cfg: LinkConfig,
    me: String,
    agent_listen: SocketAddr,
    tls: TlsConfig,
    own_ca_pem: String,
    pairing: Mutex<Option<Pairing>>,
    /// Addresses of the other side's nodes, kept when a pairing is dropped.
    known_remote: Mutex<Vec<String>>,
    server: Mutex<Arc<ServerConfig>>,
    client: Mutex<Option<reqwest::Client>>,
    status: Arc<Mutex<Status>>,
    log: Arc<LsyncdLog>,
    failures: Mutex<VecDeque<Instant>>,
    pair_lock: tokio::sync::Mutex<()>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    state_path: PathBuf,
}

impl Link {
    pub fn new(s: &Settings, cfg: LinkConfig, status: Arc<Mutex<Status>>, log: Arc<LsyncdLog>) -> anyhow::Result<Arc<Link>> {
        let own_ca_pem = std::fs::read_to_string(&s.tls.ca).with_context(|| format!("cannot read {}", s.tls.ca.display()))?;
        let state_path = s.state_dir.join(PAIRING_FILE);
        let mut pairing: Option<Pairing> = match std::fs::read_to_string(&state_path) {
            Ok(t) => serde_json::from_str(&t).ok(),
            Err(_) => None,
        };
        if let Some(p) = &pairing
            && password_tag(&cfg.password, &p.salt) != p.tag
        {
            log.warn("the link password changed: the pairing with the other environment is dropped; pairing again with the new password");
            let _ = std::fs::remove_file(&state_path);
            pairing = None;
        }
        let known = pairing.as_ref().map(|p| p.remote_nodes.clone()).unwrap_or_default();
        let link = Arc::new(Link {
            server: Mutex::new(server_config(&s.tls, None)?),
            client: Mutex::new(None),
            cfg,
            me: s.node_name.clone(),
            agent_listen: s.listen,
            tls: s.tls.clone(),
            own_ca_pem,
            pairing: Mutex::new(None),
            known_remote: Mutex::new(known),
            status,
            log,
            failures: Mutex::new(VecDeque::new()),
            pair_lock: tokio::sync::Mutex::new(()),
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: Arc::new(AtomicU64::new(0)),
            state_path,
        });
        link.set_status(|l| {
            l.remote = link.cfg.remote.clone();
            l.state = "pairing".into();
        });
        if let Some(p) = pairing {
            link.install_pairing(p, false)?;
        }
        Ok(link)
    }

    /// The client for the other environment's link ports, once paired.
    pub fn client(&self) -> Option<reqwest::Client> {
        self.client.lock().expect("BUG: poisoned").clone()
    }

    /// Content fetched from the other side, for the bytes-in counter.
    pub fn count_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    fn paired(&self) -> bool {
        self.pairing.lock().expect("BUG: poisoned").is_some()
    }

    fn set_status(&self, f: impl FnOnce(&mut LinkStatus)) {
        let mut st = self.status.lock().expect("BUG: poisoned");
        let l = st.link.get_or_insert_with(LinkStatus::default);
        f(l);
        l.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        l.bytes_out = self.bytes_out.load(Ordering::Relaxed);
    }

    fn install_pairing(&self, p: Pairing, save: bool) -> anyhow::Result<()> {
        let roots = roots_from_pem(&p.remote_ca_pem)?;
        *self.server.lock().expect("BUG: poisoned") = server_config(&self.tls, Some(roots.clone()))?;
        *self.client.lock().expect("BUG: poisoned") = Some(link_client(&self.tls, roots)?);
        if save {
            crate::pki::write_private(&self.state_path, &serde_json::to_string_pretty(&p)?)?;
        }
        *self.known_remote.lock().expect("BUG: poisoned") = p.remote_nodes.clone();
        *self.pairing.lock().expect("BUG: poisoned") = Some(p);
        Ok(())
    }

    fn drop_pairing(&self, why: &str) {
        if self.pairing.lock().expect("BUG: poisoned").take().is_none() {
            return;
        }
        self.log.warn(format!("link: {why}; the pairing is dropped and nothing is exchanged until pairing succeeds again"));
        let _ = std::fs::remove_file(&self.state_path);
        *self.client.lock().expect("BUG: poisoned") = None;
        if let Ok(c) = server_config(&self.tls, None) {
            *self.server.lock().expect("BUG: poisoned") = c;
        }
    }

    /// Link addresses of this environment's nodes (this one and its peers), for the other side's failover.
    fn own_nodes(&self) -> Vec<String> {
        let offset = i32::from(self.cfg.listen.port()) - i32::from(self.agent_listen.port());
        let mut out = vec![self.cfg.listen.to_string()];
        let st = self.status.lock().expect("BUG: poisoned");
        for (name, p) in &st.peers {
            if name.starts_with('@') || p.removed {
                continue;
            }
            if let Ok(a) = p.address.parse::<SocketAddr>() {
                let port = i32::from(a.port()) + offset;
                if let Ok(port) = u16::try_from(port) {
                    out.push(SocketAddr::new(a.ip(), port).to_string());
                }
            }
        }
        out
    }

    /// The node with the lowest name among this one and the local peers it is connected to
    /// carries the link.
    fn is_leader(&self) -> bool {
        let st = self.status.lock().expect("BUG: poisoned");
        st.peers.iter().filter(|(n, p)| !n.starts_with('@') && !p.removed && p.connected).all(|(n, _)| self.me.as_str() < n.as_str())
    }

    fn candidates(&self) -> Vec<String> {
        let mut out = vec![self.cfg.remote.clone()];
        for a in self.known_remote.lock().expect("BUG: poisoned").iter() {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    fn note_failure(&self) {
        let mut f = self.failures.lock().expect("BUG: poisoned");
        f.push_back(Instant::now());
    }

    /// `Some(seconds to wait)` while too many pairings failed in the last minute.
    fn rate_limited(&self) -> Option<u64> {
        let mut f = self.failures.lock().expect("BUG: poisoned");
        while f.front().is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            f.pop_front();
        }
        (f.len() >= MAX_FAILURES_PER_MINUTE).then(|| 60u64.saturating_sub(f.front().map_or(0, |t| t.elapsed().as_secs())).max(1))
    }

    /// Serves the link port until `shutdown`: pairing for clients without a certificate,
    /// replication (`app`) for clients with one from the paired CA.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, app: axum::Router, shutdown: CancellationToken) {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "link accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let tcp = Counted { inner: tcp, read: self.bytes_in.clone(), written: self.bytes_out.clone() };
            let acceptor = tokio_rustls::TlsAcceptor::from(self.server.lock().expect("BUG: poisoned").clone());
            let me = self.clone();
            let app = app.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        me.log.warn(format!("link: refused TLS connection from {addr}: {e}"));
                        return;
                    }
                    Err(_) => return,
                };
                let (_, conn) = tls.get_ref();
                if conn.alpn_protocol() == Some(PAIR_ALPN) {
                    me.pair_server(tls, addr).await;
                    return;
                }
                let Some(cn) = conn.peer_certificates().and_then(|c| c.first()).and_then(common_name) else {
                    me.log.warn(format!("link: refused a connection from {addr} without a certificate of the paired environment (it must pair first)"));
                    return;
                };
                let app = app.layer(axum::Extension(PeerName(format!("@{cn}"))));
                let svc = hyper_util::service::TowerToHyperService::new(app);
                let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                    }
                }
            });
        }
    }

    async fn pair_server<S: AsyncRead + AsyncWrite + Unpin>(&self, mut tls: tokio_rustls::server::TlsStream<S>, addr: SocketAddr) {
        if let Some(wait) = self.rate_limited() {
            let reason = format!("too many pairing attempts with a wrong password; try again in {wait} s");
            let _ = write_msg(&mut tls, &PairMsg::Refused { reason }).await;
            return;
        }
        let exporter = match tls.get_ref().1.export_keying_material([0u8; 32], EXPORTER_LABEL, None) {
            Ok(x) => x,
            Err(e) => {
                self.log.warn(format!("link: pairing with {addr} failed: {e}"));
                return;
            }
        };
        // No lock here: this node may be pairing as a client with the same peer at this
        // very moment, and each side must answer the other meanwhile.
        let r = tokio::time::timeout(Duration::from_secs(15), async {
            let PairMsg::Hello { version, spake: msg_a, ca_pem: their_ca, nodes: their_nodes } = read_msg(&mut tls).await? else { bail!("expected a pairing hello") };
            if version != 1 {
                write_msg(&mut tls, &PairMsg::Refused { reason: format!("pairing protocol version {version} is not supported (this node speaks 1); upgrade both environments") }).await?;
                bail!("the other environment speaks pairing protocol {version}");
            }
            roots_from_pem(&their_ca).context("the other environment sent an unusable CA certificate")?;
            if their_ca.trim() == self.own_ca_pem.trim() {
                write_msg(&mut tls, &PairMsg::Refused { reason: "this address is a node of your own environment; name a node of the other environment".into() }).await?;
                bail!("{addr} is a node of this same environment");
            }
            let (spake, msg_b) = Spake2::<Ed25519Group>::start_b(&Password::new(self.cfg.password.as_bytes()), &Identity::new(b"filesync-link-client"), &Identity::new(b"filesync-link-server"));
            let key = spake.finish(&msg_a).map_err(|e| anyhow!("bad pairing message: {e:?}"))?;
            let our_nodes = self.own_nodes();
            let t = transcript(&exporter, &msg_a, &msg_b, &their_ca, &self.own_ca_pem, &their_nodes, &our_nodes);
            write_msg(&mut tls, &PairMsg::Reply { spake: msg_b, ca_pem: self.own_ca_pem.clone(), nodes: our_nodes, confirm: confirm(&key, "server", &t) }).await?;
            // A client whose password differs says so (`None`) and may close at once.
            let ok = match read_msg(&mut tls).await {
                Ok(PairMsg::Confirm { confirm: Some(c) }) => blake3::Hash::from(c) == blake3::Hash::from(confirm(&key, "client", &t)),
                Ok(PairMsg::Confirm { confirm: None }) => false,
                Ok(_) => bail!("expected a pairing confirmation"),
                Err(e) => return Err(e.context("the other side left before confirming (its password probably differs)")),
            };
            let _ = write_msg(&mut tls, &PairMsg::Done { ok }).await;
            let _ = tls.shutdown().await;
            Ok((ok, their_ca, their_nodes))
        })
        .await;
        match r {
            Ok(Ok((true, their_ca, their_nodes))) => {
                let salt = hex::encode(rand::random::<[u8; 16]>());
                let p = Pairing { remote_ca_pem: their_ca, remote_nodes: their_nodes, tag: password_tag(&self.cfg.password, &salt), salt };
                match self.install_pairing(p, true) {
                    Ok(()) => {
                        self.log.normal(format!("link: paired with the other environment (asked by {addr}); its CA is pinned"));
                        self.set_status(|l| {
                            l.error = None;
                            if l.state == "pairing" || l.state == "refused" {
                                l.state = "paired".into();
                            }
                        });
                    }
                    Err(e) => self.log.error(format!("link: cannot keep the pairing with {addr}: {e:#}")),
                }
            }
            Ok(Ok((false, _, _))) => {
                self.note_failure();
                let msg = format!("a node of the other environment ({addr}) tried to pair with a different password; refused. Give both environments the same password");
                self.log.error(format!("link: {msg}"));
                let paired = self.paired();
                self.set_status(|l| {
                    if !paired {
                        l.state = "refused".into();
                    }
                    l.error = Some(msg);
                });
            }
            Ok(Err(e)) => self.log.warn(format!("link: pairing with {addr} failed: {e:#}")),
            Err(_) => self.log.warn(format!("link: pairing with {addr} timed out")),
        }
    }

    /// Pairs with the link port at `addr` as the client.
    /// `force` pairs again even when paired: the check that the other side still accepts
    /// the password (after the link failed for a while).
    async fn pair_with(&self, addr: &str, force: bool) -> Result<(), PairError> {
        let _guard = self.pair_lock.lock().await;
        if self.paired() && !force {
            return Ok(());
        }
        let unreachable = |e: &dyn std::fmt::Display| PairError::Unreachable(format!("{e}"));
        let host = addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(addr).to_owned();
        let name = ServerName::try_from(host).map_err(|e| unreachable(&e))?;
        let mut cfg = ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider()))).with_no_client_auth();
        cfg.alpn_protocols = vec![PAIR_ALPN.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let r = tokio::time::timeout(Duration::from_secs(15), async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| unreachable(&e))?;
            let _ = tcp.set_nodelay(true);
            let tcp = Counted { inner: tcp, read: self.bytes_in.clone(), written: self.bytes_out.clone() };
            let mut tls = connector.connect(name, tcp).await.map_err(|e| unreachable(&e))?;
            let exporter = tls.get_ref().1.export_keying_material([0u8; 32], EXPORTER_LABEL, None).map_err(|e| unreachable(&e))?;
            let (spake, msg_a) = Spake2::<Ed25519Group>::start_a(&Password::new(self.cfg.password.as_bytes()), &Identity::new(b"filesync-link-client"), &Identity::new(b"filesync-link-server"));
            let our_nodes = self.own_nodes();
            write_msg(&mut tls, &PairMsg::Hello { version: 1, spake: msg_a.clone(), ca_pem: self.own_ca_pem.clone(), nodes: our_nodes.clone() }).await.map_err(|e| unreachable(&e))?;
            let (msg_b, their_ca, their_nodes, their_confirm) = match read_msg(&mut tls).await.map_err(|e| unreachable(&e))? {
                PairMsg::Reply { spake, ca_pem, nodes, confirm } => (spake, ca_pem, nodes, confirm),
                PairMsg::Refused { reason } => return Err(PairError::Refused(reason)),
                other => return Err(unreachable(&format!("unexpected pairing message {other:?}"))),
            };
            roots_from_pem(&their_ca).map_err(|e| PairError::Refused(format!("the other environment sent an unusable CA certificate: {e:#}")))?;
            let key = spake.finish(&msg_b).map_err(|e| PairError::Refused(format!("bad pairing message: {e:?}")))?;
            let t = transcript(&exporter, &msg_a, &msg_b, &self.own_ca_pem, &their_ca, &our_nodes, &their_nodes);
            if blake3::Hash::from(their_confirm) != blake3::Hash::from(confirm(&key, "server", &t)) {
                let _ = write_msg(&mut tls, &PairMsg::Confirm { confirm: None }).await;
                return Err(PairError::Mismatch);
            }
            write_msg(&mut tls, &PairMsg::Confirm { confirm: Some(confirm(&key, "client", &t)) }).await.map_err(|e| unreachable(&e))?;
            match read_msg(&mut tls).await.map_err(|e| unreachable(&e))? {
                PairMsg::Done { ok: true } => {}
                _ => return Err(PairError::Mismatch),
            }
            let salt = hex::encode(rand::random::<[u8; 16]>());
            let p = Pairing { remote_ca_pem: their_ca, remote_nodes: their_nodes, tag: password_tag(&self.cfg.password, &salt), salt };
            self.install_pairing(p, true).map_err(|e| PairError::Refused(format!("{e:#}")))?;
            Ok(())
        })
        .await;
        r.unwrap_or_else(|_| Err(PairError::Unreachable(format!("no pairing answer from {addr} within 15 s"))))
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
        let mut last_state = String::new();
        let mut failures = 0u32;
        loop {
            let cands = self.candidates();
            target %= cands.len().max(1);
            let addr = cands[target].clone();
            if !self.paired() {
                connected = false;
                self.set_status(|l| l.state = if l.state == "refused" { "refused".into() } else { "pairing".into() });
                match self.pair_with(&addr, false).await {
                    Ok(()) => {
                        self.log.normal(format!("link: paired with the other environment at {addr}; its CA is pinned"));
                        self.set_status(|l| {
                            l.state = "paired".into();
                            l.error = None;
                        });
                        failing_since = None;
                        backoff = Duration::from_millis(200);
                    }
                    Err(PairError::Mismatch) => {
                        let msg = format!("the other environment ({addr}) refused the password: the two environments were given different passwords. Set the same password on both sides");
                        self.log.error(format!("link: {msg}"));
                        self.set_status(|l| {
                            l.state = "refused".into();
                            l.error = Some(msg);
                        });
                        tokio::time::sleep(MISMATCH_RETRY).await;
                    }
                    Err(PairError::Refused(reason)) => {
                        let msg = format!("the other environment ({addr}) refused to pair: {reason}");
                        self.log.error(format!("link: {msg}"));
                        self.set_status(|l| {
                            l.state = "refused".into();
                            l.error = Some(msg);
                        });
                        tokio::time::sleep(MISMATCH_RETRY).await;
                    }
                    Err(PairError::Unreachable(e)) => {
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        let msg = format!("no answer from {addr} for {} s: {e}", since.elapsed().as_secs());
                        self.set_status(|l| {
                            if l.state != "refused" {
                                l.state = "unreachable".into();
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
                    l.state = "standby".into();
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
            match ask(&client, &addr, &q).await {
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
                        l.state = "connected".into();
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
                    if is_trust_error(&e) || failures % 3 == 0 {
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
                                    l.state = "refused".into();
                                    l.error = Some(msg);
                                });
                                continue;
                            }
                            Err(PairError::Refused(reason)) => {
                                self.drop_pairing(&format!("{addr} refused to pair again: {reason}"));
                                self.set_status(|l| {
                                    l.state = "refused".into();
                                    l.error = Some(format!("the other environment ({addr}) refused to pair: {reason}"));
                                });
                                continue;
                            }
                            Err(PairError::Unreachable(_)) => {}
                        }
                    }
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    let msg = format!("no answer from {addr} for {} s: {e}", since.elapsed().as_secs());
                    if was || last_state != "unreachable" {
                        self.log.warn(format!("link: {msg}; retrying"));
                    }
                    last_state = "unreachable".into();
                    self.set_status(|l| {
                        l.state = "unreachable".into();
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
            last_state = "connected".into();
        }
    }
}

async fn ask(client: &reqwest::Client, addr: &str, q: &ChangesQuery) -> anyhow::Result<(ChangesResponse, u64)> {
    let body = postcard::to_allocvec(q)?;
    let resp = client
        .post(format!("https://{addr}/v1/changes"))
        .timeout(Duration::from_millis(q.wait_ms + 20_000))
        .header(crate::protocol::wire::PROTOCOL_HEADER, crate::protocol::wire::PROTOCOL.to_string())
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow!("{}", super::peers::describe(&e)))?;
    if !resp.status().is_success() {
        let st = resp.status();
        bail!("answered {st}: {}", resp.text().await.unwrap_or_default().trim());
    }
    let bytes = resp.bytes().await.map_err(|e| anyhow!("{}", super::peers::describe(&e)))?;
    Ok((postcard::from_bytes(&bytes)?, bytes.len() as u64))
}

/// TLS errors that mean the other side's trust changed (not a network problem).
fn is_trust_error(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    ["UnknownCA", "UnknownIssuer", "BadCertificate", "CertificateUnknown", "CertificateRequired", "invalid peer certificate"].iter().any(|k| s.contains(k))
}

fn transcript(exporter: &[u8], msg_a: &[u8], msg_b: &[u8], ca_client: &str, ca_server: &str, nodes_client: &[String], nodes_server: &[String]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("filesync link pairing transcript v1");
    for part in [exporter, msg_a, msg_b, ca_client.as_bytes(), ca_server.as_bytes(), nodes_client.join("\n").as_bytes(), nodes_server.join("\n").as_bytes()] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part);
    }
    *h.finalize().as_bytes()
}

fn confirm(key: &[u8], side: &str, transcript: &[u8; 32]) -> [u8; 32] {
    let k = blake3::derive_key(&format!("filesync link pairing confirm {side}"), key);
    *blake3::keyed_hash(&k, transcript).as_bytes()
}

/// A salted tag of the password kept with the pairing, to notice a changed password.
fn password_tag(password: &str, salt: &str) -> String {
    let k = blake3::derive_key("filesync link password tag v1", salt.as_bytes());
    blake3::keyed_hash(&k, password.as_bytes()).to_hex().to_string()
}

async fn write_msg<W: AsyncWrite + Unpin>(w: &mut W, m: &PairMsg) -> anyhow::Result<()> {
    let body = serde_json::to_vec(m)?;
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

async fn read_msg<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<PairMsg> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.context("the other side closed the pairing connection")?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(len <= 1 << 20, "pairing message of {len} bytes is too large");
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots_from_pem(pem: &str) -> anyhow::Result<RootCertStore> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.context("not a PEM certificate")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate");
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).context("not a usable CA certificate")?;
    }
    Ok(roots)
}

/// The link port's TLS: this node's certificate; clients either present a certificate from
/// the paired CA (replication) or none (pairing only). Unpaired, only this environment's CA
/// is trusted, which the replication routes treat like any client.
fn server_config(tls: &TlsConfig, remote: Option<RootCertStore>) -> anyhow::Result<Arc<ServerConfig>> {
    let roots = match remote {
        Some(r) => r,
        None => roots_from_pem(&std::fs::read_to_string(&tls.ca)?)?,
    };
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build()?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut std::fs::read(&tls.cert)?.as_slice()).collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&tls.key)?.as_slice())?.context("no private key")?;
    let mut cfg = ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(certs?, key).context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), PAIR_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The HTTP client for the other environment: this node's certificate, and servers must
/// chain to the paired CA. Host names are not checked: the other side may be reached
/// through a NAT or relay address its certificates do not name; the pinned CA is the identity.
fn link_client(tls: &TlsConfig, remote: RootCertStore) -> anyhow::Result<reqwest::Client> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(remote), provider()).build()?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut std::fs::read(&tls.cert)?.as_slice()).collect();
    let key = rustls_pemfile::private_key(&mut std::fs::read(&tls.key)?.as_slice())?.context("no private key")?;
    let mut cfg = ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(PinnedCa(inner))).with_client_auth_cert(certs?, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .connect_timeout(Duration::from_secs(10))
        // A WAN has a large bandwidth-delay product: HTTP/2's default 64 KiB windows would
        // cap a 160 ms round trip at about 400 KiB/s per connection.
        .http2_initial_stream_window_size(16 * 1024 * 1024)
        .http2_initial_connection_window_size(64 * 1024 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(15))
        .http2_keep_alive_timeout(Duration::from_secs(20))
        .http2_keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .build()?)
}

/// Chain to the pinned CA required; the name in the certificate is not compared.
#[derive(Debug)]
struct PinnedCa(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(&self, end_entity: &CertificateDer<'_>, intermediates: &[CertificateDer<'_>], server_name: &ServerName<'_>, ocsp: &[u8], now: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Pairing accepts any server certificate: who is on the other end is established by the
/// password (SPAKE2) bound to this TLS session's exporter, not by a CA we do not know yet.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: &ServerName<'_>, _: &[u8], _: UnixTime) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A stream that counts the bytes read and written through it (TLS records included).
struct Counted<S> {
    inner: S,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_depend_on_the_password_and_the_tls_session() {
        let run = |pw_a: &str, pw_b: &str, exp_a: [u8; 32], exp_b: [u8; 32]| {
            let (a, msg_a) = Spake2::<Ed25519Group>::start_a(&Password::new(pw_a.as_bytes()), &Identity::new(b"filesync-link-client"), &Identity::new(b"filesync-link-server"));
            let (b, msg_b) = Spake2::<Ed25519Group>::start_b(&Password::new(pw_b.as_bytes()), &Identity::new(b"filesync-link-client"), &Identity::new(b"filesync-link-server"));
            let ka = a.finish(&msg_b).unwrap();
            let kb = b.finish(&msg_a).unwrap();
            let n: Vec<String> = vec!["10.0.0.1:7756".into()];
            let ta = transcript(&exp_a, &msg_a, &msg_b, "caA", "caB", &n, &n);
            let tb = transcript(&exp_b, &msg_a, &msg_b, "caA", "caB", &n, &n);
            confirm(&ka, "server", &ta) == confirm(&kb, "server", &tb)
        };
        assert!(run("same", "same", [1; 32], [1; 32]));
        assert!(!run("same", "other", [1; 32], [1; 32]), "different passwords must not confirm");
        assert!(!run("same", "same", [1; 32], [2; 32]), "a relay between two TLS sessions must not confirm");
    }

    #[test]
    fn password_tag_is_salted_and_notices_a_change() {
        assert_eq!(password_tag("pw", "s1"), password_tag("pw", "s1"));
        assert_ne!(password_tag("pw", "s1"), password_tag("pw2", "s1"));
        assert_ne!(password_tag("pw", "s1"), password_tag("pw", "s2"));
        assert!(!password_tag("pw", "s1").contains("pw"));
    }
}
