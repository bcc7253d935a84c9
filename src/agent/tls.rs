//! Mutual TLS for agent links: the server requires a client certificate signed by the
//! environment's CA, the client presents its own and verifies the server's against the
//! same CA. rustls with the `ring` provider (no C toolchain needed beyond ring's own).
//! The accept loop hands each connection's verified peer name to the HTTP handlers.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::config::TlsConfig;

/// The common name of the certificate a peer presented, after the CA verified it.
#[derive(Clone, Debug)]
pub struct PeerName(pub String);

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn load_certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(p).with_context(|| format!("cannot read certificate {}", p.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.with_context(|| format!("{} is not a PEM certificate", p.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", p.display());
    Ok(certs)
}

fn load_key(p: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(p).with_context(|| format!("cannot read key {}", p.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .with_context(|| format!("{} is not a PEM private key", p.display()))?
        .with_context(|| format!("{} holds no private key", p.display()))
}

fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    Ok(roots)
}

pub fn server_config(tls: &TlsConfig) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots(&tls.ca)?)).build()?;
    let mut cfg = ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)
        .context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn client_config(tls: &TlsConfig) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots(&tls.ca)?)
        .with_client_auth_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)
        .context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An HTTP client for talking to peers: HTTP/2 over mutual TLS, pooled connections.
pub fn http_client(tls: &TlsConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client_config(tls)?)
        .connect_timeout(std::time::Duration::from_secs(5))
        .http2_keep_alive_interval(std::time::Duration::from_secs(15))
        .http2_keep_alive_timeout(std::time::Duration::from_secs(10))
        .http2_keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .pool_idle_timeout(None)
        .build()?)
}

/// Serves `app` over mutual TLS on `listener` until `shutdown`. Handshake failures (no
/// certificate, wrong CA) are reported through `on_refused` and the connection is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    app: axum::Router,
    shutdown: CancellationToken,
    on_refused: Arc<dyn Fn(String) + Send + Sync>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let shutdown = shutdown.clone();
        let on_refused = on_refused.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    on_refused(format!("refused TLS connection from {addr}: {e}"));
                    return;
                }
                Err(_) => {
                    on_refused(format!("refused TLS connection from {addr}: handshake timed out"));
                    return;
                }
            };
            let name = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c))
                .unwrap_or_else(|| "?".into());
            let app = app.layer(axum::Extension(PeerName(name)));
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// The subject CN of a DER certificate (already verified by rustls).
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}
