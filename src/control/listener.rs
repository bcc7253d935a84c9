//! The dashboard's and API's accept loop, built to face strangers: a cap on connections in
//! total and per client address (over the cap a connection is closed at once), deadlines
//! for the TLS handshake, for the first byte of the request and for its headers (an idle
//! or slow-loris connection is closed), a deadline for the whole request, and TLS (rustls)
//! when configured. One request per connection (HTTP/1.1 without keep-alive), so no
//! connection idles between requests. Each request learns its client address
//! (`ConnectInfo`) for login throttling.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub per_address: usize,
    /// Time to send a request's headers (from the connection's start or the previous
    /// response).
    pub header_timeout: Duration,
    /// Time to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time for a whole request, body and handler included.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_connections: 512, per_address: 64, header_timeout: Duration::from_secs(10), handshake_timeout: Duration::from_secs(10), request_timeout: Duration::from_secs(60) }
    }
}

/// Open connections per client address; an entry goes away with its last connection.
#[derive(Default)]
struct Counts {
    total: usize,
    per: HashMap<IpAddr, usize>,
}

struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().expect("BUG: poisoned");
        c.total -= 1;
        if let Some(n) = c.per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per.remove(&self.ip);
            }
        }
    }
}

fn take_slot(counts: &Arc<Mutex<Counts>>, ip: IpAddr, limits: &Limits) -> Option<Slot> {
    let mut c = counts.lock().expect("BUG: poisoned");
    let mine = c.per.get(&ip).copied().unwrap_or(0);
    if c.total >= limits.max_connections || mine >= limits.per_address {
        return None;
    }
    c.total += 1;
    *c.per.entry(ip).or_default() += 1;
    Some(Slot { counts: counts.clone(), ip })
}

/// Serves `app` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<Arc<rustls::ServerConfig>>, limits: Limits, shutdown: CancellationToken) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let acceptor = tls.map(TlsAcceptor::from);
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(slot) = take_slot(&counts, peer.ip(), &limits) else {
            if refused_logged.elapsed() > Duration::from_secs(10) {
                tracing::warn!(client = %peer.ip(), "connection limit reached ({} in total, {} per address): closing new connections", limits.max_connections, limits.per_address);
                refused_logged = std::time::Instant::now();
            }
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor, limits, shutdown) = (app.clone(), acceptor.clone(), limits.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                Some(a) => match tokio::time::timeout(limits.handshake_timeout, a.accept(tcp)).await {
                    Ok(Ok(s)) => connection(FirstByte::new(s, limits.header_timeout), peer, app, &limits, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(client = %peer, "TLS handshake timed out"),
                },
                None => connection(FirstByte::new(tcp, limits.header_timeout), peer, app, &limits, shutdown).await,
            }
        });
    }
}

async fn connection<S>(stream: S, peer: SocketAddr, app: Router, limits: &Limits, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let request_timeout = limits.request_timeout;
    let svc = tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            match tokio::time::timeout(request_timeout, app.oneshot(req.map(axum::body::Body::new))).await {
                Ok(r) => r,
                Err(_) => Ok((StatusCode::REQUEST_TIMEOUT, "the request took too long").into_response()),
            }
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout).keep_alive(false).max_buf_size(64 * 1024);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(svc));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r { tracing::debug!(client = %peer, error = %e, "connection ended") },
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// A stream that fails its reads when no byte at all arrived within a deadline (hyper's
/// header deadline starts only with the first byte).
struct FirstByte<S> {
    inner: S,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstByte<S> {
    fn new(inner: S, within: Duration) -> FirstByte<S> {
        FirstByte { inner, deadline: Some(Box::pin(tokio::time::sleep(within))) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstByte<S> {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self.deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired { Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no request within the deadline"))) } else { Poll::Pending }
            }
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstByte<S> {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_returned() {
        let counts = Arc::new(Mutex::new(Counts::default()));
        let limits = Limits { max_connections: 3, per_address: 2, ..Limits::default() };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = take_slot(&counts, a, &limits).unwrap();
        let _s2 = take_slot(&counts, a, &limits).unwrap();
        assert!(take_slot(&counts, a, &limits).is_none(), "a third from one address");
        let _s3 = take_slot(&counts, b, &limits).unwrap();
        assert!(take_slot(&counts, b, &limits).is_none(), "over the total");
        drop(s1);
        assert!(take_slot(&counts, a, &limits).is_some());
    }
}
