//! The one TLS accept loop, used by the peer port and the link port, with the limits that
//! keep a stranger from exhausting the agent:
//!
//! - connections per source address (`per_source`, or `per_known_source` for the addresses
//!   of this node's peers) and in total for all other addresses (`strangers`); a
//!   connection over a limit is closed at once, before any TLS work;
//! - the TLS handshake must finish within `handshake`, HTTP/1 request headers within
//!   `header_read`; at most `max_streams` concurrent HTTP/2 requests per connection;
//! - a connection with no request for `idle` is closed (gracefully: a response still
//!   streaming finishes);
//! - refusals are counted and logged through [`Refusals`] (at most one line per source
//!   a minute).
//!
//! After the handshake the port decides what a connection gets (`handle`): the peer port
//! serves its HTTP routes with the verified certificate name as [`PeerName`], the link
//! port also runs pairing on it.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

pub use super::refusals::Refusals;
use crate::pki::tls::common_name;

/// The common name of the certificate a peer presented, after the CA verified it.
#[derive(Clone, Debug)]
pub struct PeerName(pub String);

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub per_source: usize,
    pub per_known_source: usize,
    pub strangers: usize,
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
    pub max_streams: u32,
}

/// Both ports. A peer keeps one HTTP/2 connection (its long-poll and fetches multiplexed),
/// the control plane one or two; 128 strangers at once stay far below the 1024 descriptors
/// a service gets by default, whatever the peers hold.
pub const LIMITS: Limits =
    Limits { per_source: 16, per_known_source: 64, strangers: 128, handshake: Duration::from_secs(5), header_read: Duration::from_secs(10), idle: Duration::from_secs(120), max_streams: 128 };

/// Which addresses are known (a peer's): they have their own per-address budget and do
/// not count against the strangers' total.
pub type Known = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// Admits connections within the limits.
pub struct Gate {
    limits: Limits,
    known: Known,
    refusals: Arc<Refusals>,
    /// Open connections per source address, and how many of all are strangers'.
    open: Mutex<(HashMap<IpAddr, usize>, usize)>,
}

/// A connection's place within the limits, given back when it is dropped.
pub struct Slot {
    gate: Arc<Gate>,
    ip: IpAddr,
    stranger: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().expect("BUG: poisoned");
        if let Some(n) = open.0.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.0.remove(&self.ip);
            }
        }
        if self.stranger {
            open.1 -= 1;
        }
    }
}

impl Gate {
    pub fn new(limits: Limits, known: Known, refusals: Arc<Refusals>) -> Arc<Gate> {
        raise_fd_limit();
        Arc::new(Gate { limits, known, refusals, open: Mutex::new((HashMap::new(), 0)) })
    }

    pub fn refusals(&self) -> &Arc<Refusals> {
        &self.refusals
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, String> {
        let known = (self.known)(ip);
        let mut open = self.open.lock().expect("BUG: poisoned");
        let here = open.0.get(&ip).copied().unwrap_or(0);
        let cap = if known { self.limits.per_known_source } else { self.limits.per_source };
        if here >= cap {
            return Err(format!("{here} connections from this address are open already (limit {cap})"));
        }
        if !known && open.1 >= self.limits.strangers {
            return Err(format!("{} connections from unknown addresses are open already (limit {})", open.1, self.limits.strangers));
        }
        *open.0.entry(ip).or_default() += 1;
        if !known {
            open.1 += 1;
        }
        Ok(Slot { gate: self.clone(), ip, stranger: !known })
    }
}

/// Bytes counters for a port (the link reports them in its status).
#[derive(Clone, Default)]
pub struct ByteCounters {
    pub read: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

/// An accepted, handshaken connection, handed to the port's `handle`.
pub struct Conn {
    pub tls: TlsStream<Counted<TcpStream>>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    limits: Limits,
    refusals: Arc<Refusals>,
    _slot: Slot,
}

impl Conn {
    /// The verified client certificate's common name, if the client presented one.
    pub fn peer_name(&self) -> Option<String> {
        self.tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(common_name)
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.tls.get_ref().1.alpn_protocol()
    }

    /// The stream, its address, the port's refusals and the connection's place within the
    /// limits (keep it as long as the connection is used).
    pub fn into_parts(self) -> (TlsStream<Counted<TcpStream>>, SocketAddr, Arc<Refusals>, Slot) {
        (self.tls, self.addr, self.refusals, self._slot)
    }

    /// Refuses the connection, logged through the aggregated refusals.
    pub fn refuse(self, why: &str) {
        self.refusals.note(&self.addr.ip().to_string(), "connection", why);
    }

    /// Serves `app` on this connection with `name` as its [`PeerName`] until the client
    /// leaves, it stays idle, or shutdown.
    pub async fn serve_http(self, app: axum::Router, name: String) {
        let activity = Arc::new(Activity { in_flight: AtomicUsize::new(0), last: Mutex::new(Instant::now()) });
        let a = activity.clone();
        let app = app.layer(axum::Extension(PeerName(name))).layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let a = a.clone();
            async move {
                a.in_flight.fetch_add(1, Ordering::SeqCst);
                *a.last.lock().expect("BUG: poisoned") = Instant::now();
                let r = next.run(req).await;
                a.in_flight.fetch_sub(1, Ordering::SeqCst);
                *a.last.lock().expect("BUG: poisoned") = Instant::now();
                r
            }
        }));
        let svc = hyper_util::service::TowerToHyperService::new(app);
        let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        builder.http1().timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(self.limits.header_read).max_buf_size(64 * 1024);
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .max_concurrent_streams(self.limits.max_streams)
            .max_header_list_size(64 * 1024)
            .max_send_buf_size(4 << 20)
            // A hung client (its kernel still answers the keep-alive probes set at accept):
            // PINGed as rarely as the clients PING (`pki::tls::PING_EVERY`).
            .keep_alive_interval(crate::pki::tls::PING_EVERY)
            .keep_alive_timeout(crate::pki::tls::PING_TIMEOUT);
        let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(self.tls), svc);
        tokio::pin!(conn);
        let idle = self.limits.idle;
        let idle_for = || {
            let last = *activity.last.lock().expect("BUG: poisoned");
            if activity.in_flight.load(Ordering::SeqCst) == 0 { last.elapsed() } else { Duration::ZERO }
        };
        loop {
            // Woken only when the connection could have become idle: `idle` after its last
            // request ended (a connection with a request in flight, like a peer's long-poll,
            // is looked at again after `idle`).
            let check_in = idle.saturating_sub(idle_for()).max(Duration::from_millis(100));
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = self.shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                    return;
                }
                _ = tokio::time::sleep(check_in) => {
                    if idle_for() >= idle {
                        // Responses still streaming finish; no new request is taken.
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                        return;
                    }
                }
            }
        }
    }
}

struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// Accepts on `listener` until `shutdown`: each connection within the gate's limits gets
/// a TLS handshake with the current `tls()` config (within the handshake limit) and is
/// then given to `handle`.
pub async fn serve<H, Fut>(listener: TcpListener, gate: Arc<Gate>, tls: impl Fn() -> Arc<ServerConfig> + Send + 'static, counters: Option<ByteCounters>, shutdown: CancellationToken, handle: H)
where
    H: Fn(Conn) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors or similar: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match gate.admit(addr.ip()) {
            Ok(s) => s,
            Err(why) => {
                drop(tcp);
                gate.refusals.note(&addr.ip().to_string(), "connection", &why);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::pki::tls::keep_alive(&tcp) {
            tracing::warn!(error = %e, "could not set TCP keep-alive on an accepted connection");
        }
        let tcp = Counted { inner: tcp, counters: counters.clone() };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls());
        let (handle, shutdown, limits, refusals) = (handle.clone(), shutdown.clone(), gate.limits, gate.refusals.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return refusals.note(&addr.ip().to_string(), "connection", &format!("TLS handshake failed: {e}")),
                Err(_) => return refusals.note(&addr.ip().to_string(), "connection", &format!("no TLS handshake within {} s", limits.handshake.as_secs())),
            };
            handle(Conn { tls, addr, shutdown, limits, refusals, _slot: slot }).await;
        });
    }
}

/// Lets the agent use every descriptor its hard limit allows (a service's soft limit is
/// often 1024), once per process.
fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut l = getrlimit(Resource::Nofile);
        if let Some(max) = l.maximum
            && l.current.is_some_and(|c| c < max)
        {
            l.current = Some(max.min(1 << 20));
            let _ = setrlimit(Resource::Nofile, l);
        }
    });
}

/// A stream that counts the bytes read and written through it (TLS records included).
pub struct Counted<S> {
    pub inner: S,
    pub counters: Option<ByteCounters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(c) = &self.counters {
            c.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(c)) = (&r, &self.counters) {
            c.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_share_a_total_and_known_peers_keep_their_own_budget() {
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let limits = Limits { per_source: 2, per_known_source: 3, strangers: 3, ..LIMITS };
        let gate = Gate::new(limits, Arc::new(move |ip| ip == peer), Refusals::new(Arc::new(|_| {}), Arc::new(|| {})));
        let a: IpAddr = "10.9.9.1".parse().unwrap();
        let b: IpAddr = "10.9.9.2".parse().unwrap();
        let s1 = gate.admit(a).unwrap();
        let _s2 = gate.admit(a).unwrap();
        assert!(gate.admit(a).is_err(), "per-source limit");
        let _s3 = gate.admit(b).unwrap();
        assert!(gate.admit(b).is_err(), "strangers' total");
        // The peer is not affected by the strangers, and has its own cap.
        let p: Vec<Slot> = (0..3).map(|_| gate.admit(peer).unwrap()).collect();
        assert!(gate.admit(peer).is_err());
        drop(s1);
        assert!(gate.admit(b).is_ok(), "a closed connection frees its place");
        drop(p);
        assert!(gate.admit(peer).is_ok());
    }
}
