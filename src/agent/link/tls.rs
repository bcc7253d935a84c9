//! TLS for the link port: the server side (this node's certificate; clients present a
//! certificate from the paired environment's pinned CA, or none to pair), the HTTP client
//! for the other environment (servers must chain to the pinned CA), and the pairing
//! connector (any server certificate: the password, bound to the TLS exporter, is the
//! identity there).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::net::{TcpSocket, TcpStream};

use super::pairing::ALPN as PAIR_ALPN;
use crate::pki::tls::{TlsFiles, load_certs, load_key, provider, roots};

/// The link port's TLS. Paired, client certificates must chain to the other environment's
/// CA (`remote`); unpaired, rustls is given this environment's CA only because it needs a
/// root: the link port serves no certificate-holder until it is paired (see `Link::serve`).
pub fn server_config(tls: &TlsFiles, remote: Option<RootCertStore>) -> anyhow::Result<Arc<ServerConfig>> {
    let roots = match remote {
        Some(r) => r,
        None => roots(&tls.ca)?,
    };
    let verifier = WebPkiClientVerifier::builder(Arc::new(roots)).allow_unauthenticated().build()?;
    let mut cfg = ServerConfig::builder().with_client_cert_verifier(verifier).with_single_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), PAIR_ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The HTTP client for the other environment: this node's certificate, and servers must
/// chain to the paired CA. Host names are not checked: the other side may be reached
/// through a NAT or relay address its certificates do not name; the pinned CA is the
/// identity. Connections leave from `local` unless it is unspecified.
pub fn link_client(tls: &TlsFiles, remote: RootCertStore, local: IpAddr) -> anyhow::Result<reqwest::Client> {
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(remote), provider()).build()?;
    let mut cfg = ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(PinnedCa(inner))).with_client_auth_cert(load_certs(&tls.cert)?, load_key(&tls.key)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .local_address(Some(local).filter(|ip| !ip.is_unspecified()))
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

/// The TLS connector for pairing (no client certificate, any server certificate).
pub fn pairing_connector() -> tokio_rustls::TlsConnector {
    let mut cfg = ClientConfig::builder().dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCert(provider()))).with_no_client_auth();
    cfg.alpn_protocols = vec![PAIR_ALPN.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TCP connection to `addr` leaving from `local` (unless unspecified), so the other side
/// sees this node's own address.
pub async fn connect_from(local: IpAddr, addr: &str) -> std::io::Result<TcpStream> {
    let target: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr).await?.next().ok_or_else(|| std::io::Error::other(format!("{addr} does not resolve")))?,
    };
    if local.is_unspecified() || local.is_ipv4() != target.is_ipv4() {
        return TcpStream::connect(target).await;
    }
    let sock = if target.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.bind(SocketAddr::new(local, 0))?;
    sock.connect(target).await
}

/// The server name to send when pairing with `addr` (`host:port`).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(addr).to_owned();
    ServerName::try_from(host).map_err(|e| e.to_string())
}

/// Chain to the pinned CA required; the name in the certificate is not compared.
#[derive(Debug)]
struct PinnedCa(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
