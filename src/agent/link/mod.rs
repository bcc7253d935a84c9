//! The cross-environment link (two-environment mode): pairing with a shared password, then
//! replication with the other environment over mutual TLS.
//!
//! Every node of an environment with a `[link]` section listens on a second port, the link
//! port, served by the same accept loop and limits as the peer port (`listener`). On it:
//! - **Pairing** (TLS with ALPN `filesync-pair/1`, no client certificate): SPAKE2 over the
//!   shared password, the client proving it first, every confirmation bound to this TLS
//!   session; the CAs and node lists are exchanged only once both sides proved the password
//!   (`pairing`, pure). Each side pins the other's CA (`<state_dir>/link-pairing.json`,
//!   mode 0600, with a salted tag of the password so a changed password drops the
//!   pairing). Guesses are throttled per source address with a global ceiling, the other
//!   environment's known addresses on their own budget (`throttle`); `session` runs the
//!   exchange over the wire.
//! - **Replication** (ALPN h2, client certificate from the paired CA): the same
//!   `/v1/changes`, `/v1/file`, `/v1/delta` routes as inside an environment, nothing else.
//!   Unpaired, no certificate is served at all.
//!
//! One node per environment carries the link (`run`): the lowest node name among itself
//! and the local peers it is connected to pulls the other side's changes like a peer,
//! under the peer name `@<address>`; its local peers get them through the ordinary mesh.

mod pairing;
mod run;
mod session;
mod throttle;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use rustls::ServerConfig;
use rustls::server::danger::ClientCertVerifier;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::config::{LinkConfig, Settings, TlsConfig};
use super::listener::{self, ByteCounters, Conn, Gate, LIMITS, Refusals};
use super::lsyncd_log::LsyncdLog;
use super::status::{LinkState, LinkStatus, Status};
use crate::private_fs::PrivateDir;

pub use pairing::{PairError, Remote, password_tag};
pub use session::attempt_pairing;
pub use throttle::time_for_guesses;

const PAIRING_FILE: &str = "link-pairing.json";

/// What pairing left on disk: the other environment's CA, its nodes' link addresses, and
/// a salted tag of the password it was paired with.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Pairing {
    remote_ca_pem: String,
    remote_nodes: Vec<String>,
    salt: String,
    tag: String,
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
    /// Checks a client certificate against the pinned CA (`None` unpaired).
    pinned: Mutex<Option<Arc<dyn ClientCertVerifier>>>,
    client: Mutex<Option<reqwest::Client>>,
    status: Arc<Mutex<Status>>,
    /// Wakes the agent's loop to rewrite `lsyncd.status` (nothing polls the link's state).
    dirty: Arc<tokio::sync::Notify>,
    log: Arc<LsyncdLog>,
    throttle: Mutex<throttle::Throttle>,
    pair_lock: tokio::sync::Mutex<()>,
    bytes: ByteCounters,
    state_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("cfg", &self.cfg).field("me", &self.me).finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(s: &Settings, cfg: LinkConfig, status: Arc<Mutex<Status>>, dirty: Arc<tokio::sync::Notify>, log: Arc<LsyncdLog>) -> anyhow::Result<Arc<Link>> {
        let own_ca_pem = std::fs::read_to_string(&s.tls.ca).with_context(|| format!("cannot read {}", s.tls.ca.display()))?;
        let dir = PrivateDir::state(&s.state_dir)?;
        let mut pairing: Option<Pairing> = dir.read(PAIRING_FILE)?.and_then(|t| serde_json::from_slice(&t).ok());
        if let Some(p) = &pairing
            && password_tag(&cfg.password, &p.salt) != p.tag
        {
            log.warn("the link password changed: the pairing with the other environment is dropped; pairing again with the new password");
            let _ = dir.remove(PAIRING_FILE);
            pairing = None;
        }
        let known = pairing.as_ref().map(|p| p.remote_nodes.clone()).unwrap_or_default();
        let link = Arc::new(Link {
            server: Mutex::new(tls::server_config(&s.tls, None)?),
            pinned: Mutex::new(None),
            client: Mutex::new(None),
            cfg,
            me: s.node_name.clone(),
            agent_listen: s.listen,
            tls: s.tls.clone(),
            own_ca_pem,
            pairing: Mutex::new(None),
            known_remote: Mutex::new(known),
            status,
            dirty,
            log,
            throttle: Mutex::new(throttle::Throttle::new(Instant::now())),
            pair_lock: tokio::sync::Mutex::new(()),
            bytes: ByteCounters::default(),
            state_dir: s.state_dir.clone(),
        });
        link.set_status(|l| {
            l.remote = link.cfg.remote.clone();
            l.state = LinkState::Pairing;
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
        self.bytes.read.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn paired(&self) -> bool {
        self.pairing.lock().expect("BUG: poisoned").is_some()
    }

    fn set_status(&self, f: impl FnOnce(&mut LinkStatus)) {
        let mut st = self.status.lock().expect("BUG: poisoned");
        let l = st.link.get_or_insert_with(LinkStatus::default);
        f(l);
        l.bytes_in = self.bytes.read.load(std::sync::atomic::Ordering::Relaxed);
        l.bytes_out = self.bytes.written.load(std::sync::atomic::Ordering::Relaxed);
        drop(st);
        self.dirty.notify_one();
    }

    /// Pins the other environment: its CA for the link port and the link client.
    fn install_pairing(&self, p: Pairing, save: bool) -> anyhow::Result<()> {
        let roots = crate::pki::tls::roots_from_pem(&p.remote_ca_pem)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots.clone())).build()?;
        *self.server.lock().expect("BUG: poisoned") = tls::server_config(&self.tls, Some(roots.clone()))?;
        *self.client.lock().expect("BUG: poisoned") = Some(tls::link_client(&self.tls, roots, self.source_ip())?);
        if save {
            PrivateDir::state(&self.state_dir)?.write_atomic(PAIRING_FILE, serde_json::to_string_pretty(&p)?.as_bytes(), true)?;
        }
        *self.pinned.lock().expect("BUG: poisoned") = Some(verifier);
        *self.known_remote.lock().expect("BUG: poisoned") = p.remote_nodes.clone();
        *self.pairing.lock().expect("BUG: poisoned") = Some(p);
        Ok(())
    }

    fn keep_pairing(&self, remote: pairing::Remote) -> anyhow::Result<()> {
        let salt = hex::encode(rand::random::<[u8; 16]>());
        let p = Pairing { remote_ca_pem: remote.ca_pem, remote_nodes: remote.nodes, tag: password_tag(&self.cfg.password, &salt), salt };
        self.install_pairing(p, true)
    }

    fn drop_pairing(&self, why: &str) {
        if self.pairing.lock().expect("BUG: poisoned").take().is_none() {
            return;
        }
        self.log.warn(format!("link: {why}; the pairing is dropped and nothing is exchanged until pairing succeeds again"));
        if let Ok(d) = PrivateDir::state(&self.state_dir) {
            let _ = d.remove(PAIRING_FILE);
        }
        *self.pinned.lock().expect("BUG: poisoned") = None;
        *self.client.lock().expect("BUG: poisoned") = None;
        if let Ok(c) = tls::server_config(&self.tls, None) {
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
            if let Ok(a) = p.address.parse::<SocketAddr>()
                && let Ok(port) = u16::try_from(i32::from(a.port()) + offset)
            {
                out.push(SocketAddr::new(a.ip(), port).to_string());
            }
        }
        out
    }

    /// The configured remote and the other environment's nodes learned at pairing.
    fn candidates(&self) -> Vec<String> {
        let mut out = vec![self.cfg.remote.clone()];
        for a in self.known_remote.lock().expect("BUG: poisoned").iter() {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The address connections to the other environment leave from: the kernel's choice,
    /// except for a loopback link address (both environments on one host), where the link
    /// address itself is used so the other side recognises this node's connections. Across
    /// networks the other side may see a NAT's address anyway, and binding a private
    /// address could make the connection unroutable.
    fn source_ip(&self) -> IpAddr {
        let ip = self.cfg.listen.ip();
        if ip.is_loopback() { ip } else { std::net::Ipv4Addr::UNSPECIFIED.into() }
    }

    /// Whether `ip` is one of the other environment's known node addresses (its pairing
    /// attempts have their own budget; see `throttle`).
    fn known_ip(&self, ip: IpAddr) -> bool {
        self.candidates().iter().any(|a| a.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).and_then(|h| h.parse::<IpAddr>().ok()) == Some(ip))
    }

    /// Serves the link port until `shutdown`: pairing for clients without a certificate,
    /// replication (`app`) for clients with one from the paired CA.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, app: axum::Router, shutdown: CancellationToken) {
        let log = self.log.clone();
        let status = self.status.clone();
        let refusals = Refusals::new(Arc::new(move |m: String| log.warn(format!("link: {m}"))), Arc::new(move || status.lock().expect("BUG: poisoned").counters.refused += 1));
        let me = self.clone();
        let gate = Gate::new(LIMITS, Arc::new(move |ip| me.known_ip(ip)), refusals);
        let me = self.clone();
        let tls = move || me.server.lock().expect("BUG: poisoned").clone();
        let me = self.clone();
        listener::serve(listener, gate, tls, Some(self.bytes.clone()), shutdown, move |conn| {
            let (me, app) = (me.clone(), app.clone());
            async move { me.on_conn(conn, app).await }
        })
        .await;
    }

    async fn on_conn(self: Arc<Self>, conn: Conn, app: axum::Router) {
        if conn.alpn() == Some(pairing::ALPN) {
            return self.pair_server(conn).await;
        }
        let cert = conn.tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
        let pinned = self.pinned.lock().expect("BUG: poisoned").clone();
        match (cert, pinned, conn.peer_name()) {
            // Checked again here: the handshake may have begun before the pairing changed.
            (Some(cert), Some(v), Some(cn)) if v.verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now()).is_ok() => conn.serve_http(app, format!("@{cn}")).await,
            (Some(_), _, _) => conn.refuse("its certificate is not from the paired environment's CA"),
            (None, _, _) => conn.refuse("no certificate of the paired environment (it must pair first)"),
        }
    }
}
