//! TLS for the dashboard and the API (rustls): the operator's certificate and key
//! (`--tls-cert`, `--tls-key`), or a self-signed certificate made on first start and kept
//! in the database (key sealed), so every `serve` process presents the same one; its
//! SHA-256 fingerprint is printed at start for the operator to check in the browser.
//!
//! `--tls auto` (the default) serves plain HTTP only on a loopback address and TLS
//! everywhere else; `--tls off` is for a TLS-terminating proxy in front.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use sqlx::PgPool;

use super::db;
use super::secrets::{Place, Secrets};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// HTTP on a loopback address, TLS (self-signed unless --tls-cert) elsewhere.
    Auto,
    /// Always TLS: the --tls-cert/--tls-key pair, or a self-signed certificate.
    On,
    /// Plain HTTP (behind a TLS-terminating proxy only).
    Off,
}

/// The server config, and a line describing the certificate for the start-up message.
pub struct Dashboard {
    pub config: Arc<rustls::ServerConfig>,
    pub describe: String,
}

/// `AB:CD:...`: the SHA-256 fingerprint of a DER certificate, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

fn certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes()).collect::<Result<_, _>>().context("not a PEM certificate")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in the PEM text");
    Ok(certs)
}

fn key(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut pem.as_bytes()).context("not a PEM private key")?.context("no private key in the PEM text")
}

fn config(cert_pem: &str, key_pem: &str) -> anyhow::Result<(Arc<rustls::ServerConfig>, String)> {
    let chain = certs(cert_pem)?;
    let fp = fingerprint(chain[0].as_ref());
    let mut cfg = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key(key_pem)?).context("the certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), fp))
}

/// The TLS setup for `listen`, or None for plain HTTP.
pub async fn setup(mode: TlsMode, cert: Option<&Path>, key_file: Option<&Path>, listen: SocketAddr, pool: &PgPool, secrets: &Secrets) -> anyhow::Result<Option<Dashboard>> {
    let wanted = match mode {
        TlsMode::Off => false,
        TlsMode::On => true,
        TlsMode::Auto => cert.is_some() || !listen.ip().is_loopback(),
    };
    if !wanted {
        if !listen.ip().is_loopback() {
            eprintln!("filesync serve: WARNING: plain HTTP on {listen}: passwords, cookies and tokens cross the network in clear unless a TLS proxy is in front");
        }
        return Ok(None);
    }
    if let (Some(c), Some(k)) = (cert, key_file) {
        let cert_pem = std::fs::read_to_string(c).with_context(|| format!("cannot read --tls-cert {}", c.display()))?;
        let key_pem = std::fs::read_to_string(k).with_context(|| format!("cannot read --tls-key {}", k.display()))?;
        let (config, fp) = config(&cert_pem, &key_pem).with_context(|| format!("--tls-cert {} / --tls-key {}", c.display(), k.display()))?;
        return Ok(Some(Dashboard { config, describe: format!("certificate {} (SHA-256 {fp})", c.display()) }));
    }
    anyhow::ensure!(cert.is_none() && key_file.is_none(), "give both --tls-cert and --tls-key, or neither (for a self-signed certificate)");
    let (cert_pem, key_pem) = self_signed(pool, secrets).await?;
    let (config, fp) = config(&cert_pem, &key_pem)?;
    Ok(Some(Dashboard { config, describe: format!("self-signed certificate, SHA-256 fingerprint {fp} (check it in the browser)") }))
}

/// The stored self-signed certificate, created on first use (one for every process).
async fn self_signed(pool: &PgPool, secrets: &Secrets) -> anyhow::Result<(String, String)> {
    let place = Place::setting("dashboard_tls_key");
    if let (Some(c), Some(k)) = (db::get_secret(pool, "dashboard_tls_cert").await?, db::get_secret(pool, "dashboard_tls_key").await?) {
        return Ok((c, secrets.open(&k, &place)?));
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned();
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
        names.push(host);
    }
    let made = rcgen::generate_simple_self_signed(names)?;
    let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
    // Another process may have stored its pair first: the key decides, then its certificate.
    let stored_key = secrets.open(&db::put_secret_once(pool, "dashboard_tls_key", &secrets.seal(&key_pem, &place)?).await?, &place)?;
    if stored_key == key_pem {
        db::put_secret_once(pool, "dashboard_tls_cert", &cert_pem).await?;
        return Ok((cert_pem, key_pem));
    }
    for _ in 0..50 {
        if let Some(c) = db::get_secret(pool, "dashboard_tls_cert").await? {
            return Ok((c, stored_key));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("the dashboard's certificate is half-created in the database; retry")
}
