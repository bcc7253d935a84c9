//! TLS material loaded for use: rustls configs from PEM files (a node's or the control
//! plane's certificate and key, the environment's CA), the HTTP/2 clients every agent and
//! the control plane use to reach agents, the liveness of those connections, the bounded
//! read of an answer, and the name a verified certificate carries.
//! rustls with the `ring` provider (no C toolchain needed beyond ring's own).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Where a party's TLS files are: `[tls]` in `agent.toml` (the shared contract).
pub use crate::protocol::agent_toml::TlsConfig as TlsFiles;

pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data = std::fs::read(p).with_context(|| format!("cannot read certificate {}", p.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.with_context(|| format!("{} is not a PEM certificate", p.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", p.display());
    Ok(certs)
}

pub fn load_key(p: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let data = std::fs::read(p).with_context(|| format!("cannot read key {}", p.display()))?;
    rustls_pemfile::private_key(&mut data.as_slice()).with_context(|| format!("{} is not a PEM private key", p.display()))?.with_context(|| format!("{} holds no private key", p.display()))
}

/// Trust roots from PEM text (a CA the other environment sent, or a file's content).
pub fn roots_from_pem(pem: &str) -> anyhow::Result<RootCertStore> {
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut pem.as_bytes()).collect();
    let certs = certs.context("not a PEM certificate")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate");
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).context("not a usable CA certificate")?;
    }
    Ok(roots)
}

pub fn roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).with_context(|| format!("{} is not a usable CA certificate", ca.display()))?;
    }
    Ok(roots)
}

/// A server that requires a client certificate chaining to `tls.ca`.
pub fn server_config(tls: &TlsFiles) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots(&tls.ca)?)).build()?;
    let mut cfg = ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?).context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

pub fn client_config(tls: &TlsFiles) -> anyhow::Result<ClientConfig> {
    let mut cfg =
        ClientConfig::builder().with_root_certificates(roots(&tls.ca)?).with_client_auth_cert(load_certs(&tls.cert)?, load_key(&tls.key)?).context("node certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Liveness of connections between parties, in two layers.
///
/// A lost network (packets dropped: a partition, a node powered off) is noticed by the
/// kernel, without waking the process: TCP keep-alive probes after [`PROBE_AFTER`] of
/// silence, one every [`PROBE_EVERY`], and the connection is failed once nothing has been
/// acknowledged for [`DEAD_AFTER`] (which also bounds data left unacknowledged mid-transfer).
/// A peer shows as disconnected about 7 s after its packets stop arriving.
///
/// A peer whose kernel still answers but whose process is hung (stopped, deadlocked) is
/// noticed by an HTTP/2 PING every [`PING_EVERY`] on a quiet connection, failed if
/// unanswered for [`PING_TIMEOUT`]: within a minute. These are the only wake-ups of an idle
/// connection; before, PINGs every 4 s did both jobs and woke every agent 15 times a minute
/// per connection.
pub const PROBE_AFTER: Duration = Duration::from_secs(3);
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
pub const DEAD_AFTER: Duration = Duration::from_secs(7);
pub const PING_EVERY: Duration = Duration::from_secs(45);
pub const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Gives an accepted connection the same kernel liveness as the clients' (see above), so a
/// server notices a vanished client and frees what its requests hold.
pub fn keep_alive(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(PROBE_AFTER).with_interval(PROBE_EVERY).with_retries(3))?;
    sock.set_tcp_user_timeout(Some(DEAD_AFTER))
}

/// Flow-control windows and frame size of an HTTP/2 client. The window is how much the
/// other side may send before this side reads (memory this side may be made to hold per
/// stream and per connection); the frame size is the largest single DATA frame.
struct Windows {
    stream: u32,
    connection: u32,
    frame: u32,
}

/// Agent to agent: file contents move in bulk, so the windows cover a few milliseconds of a
/// fast link and frames are large (fewer headers, fewer wake-ups per MiB). A peer that
/// never reads leaves at most `connection` bytes buffered here.
const BULK: Windows = Windows { stream: 8 << 20, connection: 16 << 20, frame: 256 << 10 };

/// Control plane to agent: answers are small (lists, logs, status), and an agent is not
/// trusted to decide how much of the control plane's memory it fills, so the windows stay
/// small: 1 MiB per answer and 2 MiB per connection before the control plane reads.
const CONTROL: Windows = Windows { stream: 1 << 20, connection: 2 << 20, frame: 16 << 10 };

/// An HTTP client for the control plane's requests to agents: HTTP/2 over mutual TLS,
/// pooled connections, small windows.
pub fn http_client(tls: &TlsFiles) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(tls, None, &CONTROL)?.build()?)
}

/// An agent's client to its peers, with outgoing connections bound to `local` (an agent
/// binds to the address it listens on, so its peers see it arrive from the address they
/// know it by) and windows sized for moving files.
pub fn http_client_from(tls: &TlsFiles, local: Option<std::net::IpAddr>) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(tls, local, &BULK)?.build()?)
}

fn client_builder(tls: &TlsFiles, local: Option<std::net::IpAddr>, win: &Windows) -> anyhow::Result<reqwest::ClientBuilder> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client_config(tls)?)
        .local_address(local.filter(|ip| !ip.is_unspecified()))
        .connect_timeout(Duration::from_secs(5))
        // Liveness (see `PROBE_AFTER`): the kernel's probes for a lost network, a rare PING
        // for a hung process; a failed connection fails its requests (a peer's long-poll),
        // and the peer is shown disconnected.
        .tcp_keepalive(PROBE_AFTER)
        .tcp_keepalive_interval(PROBE_EVERY)
        .tcp_keepalive_retries(3)
        .tcp_user_timeout(DEAD_AFTER)
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .http2_initial_stream_window_size(win.stream)
        .http2_initial_connection_window_size(win.connection)
        .http2_max_frame_size(win.frame)
        .pool_idle_timeout(None))
}

/// The subject CN of a DER certificate (already verified by rustls).
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    cert.subject().iter_common_name().next()?.as_str().ok().map(str::to_owned)
}

/// The innermost cause of a request's failure ("Connection refused (os error 111)"), not
/// reqwest's outer "error sending request for url".
pub fn describe(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = s.to_string();
        src = s.source();
    }
    msg
}

/// Reads an answer's body, refusing (and no longer reading) one larger than `limit`: what
/// the other side sends never decides how much memory this side spends.
pub async fn read_limited(resp: reqwest::Response, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use futures::StreamExt;
    if let Some(n) = resp.content_length()
        && n > limit
    {
        anyhow::bail!("{what} of {n} bytes is larger than the limit of {limit} bytes; refused");
    }
    let mut out = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit) as usize);
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| anyhow::anyhow!("{what} broke off: {}", describe(&e)))?;
        if (out.len() + chunk.len()) as u64 > limit {
            anyhow::bail!("{what} is larger than the limit of {limit} bytes; refused (stopped reading)");
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
